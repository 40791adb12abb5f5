/* The test suite: one translation unit, so the tests can reach the library's private kernels
   (aq__*) and hold each SIMD path to its scalar reference.
   Usage: run_tests [substring]   runs the tests whose name contains substring. */
#define AWQ_QUEST_IMPLEMENTATION
#include "../awq_quest.h"
#include "test.h"
#include "../tools/tool_util.h"

#include "test_kernels.c"
#include "test_gguf.c"
#include "test_tokenizer.c"
#include "test_model.c"
#include "test_sampler.c"
#include "test_tools.c"
#include "test_quantize.c"
#include "test_quest.c"
#include "test_olive.c"
#include "test_gpu.c"

int main(int argc, char **argv) {
    char cmd[128];
    FILE *probe;
    T.filter = argc > 1 ? argv[1] : NULL;
    snprintf(T.tmpdir, sizeof T.tmpdir, "/tmp/aq_test_XXXXXX");
    if (!mkdtemp(T.tmpdir)) { perror("mkdtemp"); return 1; }
    probe = fopen(shared_path("models/stories260K.gguf"), "rb");
    if (probe) fclose(probe);
    else {
        printf("cannot read %s: run the tests from the repository root, next to ../shared (or set AQ_SHARED)\n",
               shared_path("models/stories260K.gguf"));
        return 1;
    }
    kernel_tests();
    gguf_tests();
    tokenizer_tests();
    model_tests();
    sampler_tests();
    tool_tests();
    quantize_tests();
    quest_tests();
    olive_tests();
    gpu_tests();
    snprintf(cmd, sizeof cmd, "rm -rf %s", T.tmpdir);
    if (system(cmd) != 0) printf("could not remove %s\n", T.tmpdir);
    printf("%d passed, %d failed\n", T.passed, T.failed);
    return T.failed ? 1 : 0;
}
