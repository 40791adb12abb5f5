/* The command-line programs: help, argument errors, inspection, and the synthetic model writer. */

static void test_tools_help_and_bad_arguments(void) {
    static const char *progs[] = {"examples/generate", "tools/aq-inspect", "tools/aq-synth", "tools/aq-bench",
                                  "tools/aq-perplexity", "tools/aq-quantize"};
    char cmd[1024], out[8192];
    size_t i;
    for (i = 0; i < sizeof progs / sizeof *progs; i++) {
        snprintf(cmd, sizeof cmd, "%s/%s --help", AQ_BIN_DIR, progs[i]);
        CHECKF(run_cmd(cmd, out, sizeof out) == 0 && strstr(out, "usage"), "%s --help", progs[i]);
        snprintf(cmd, sizeof cmd, "%s/%s --no-such-option 2>&1", AQ_BIN_DIR, progs[i]);
        CHECKF(run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "--no-such-option"), "%s: %s", progs[i], out);
    }
    snprintf(cmd, sizeof cmd, "%s/examples/generate -m %s -t zero 2>&1", AQ_BIN_DIR, stories());
    CHECK(run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "-t"));
    snprintf(cmd, sizeof cmd, "%s/examples/generate -m /no/such/model.gguf 2>&1", AQ_BIN_DIR);
    CHECK(run_cmd(cmd, out, sizeof out) == 1 && strstr(out, "/no/such/model.gguf"));
}

static void test_inspect(void) {
    char cmd[1024];
    static char out[1 << 16];
    size_t n;
    unsigned char *bytes;
    snprintf(cmd, sizeof cmd, "%s/tools/aq-inspect %s", AQ_BIN_DIR, stories());
    CHECK(run_cmd(cmd, out, sizeof out) == 0);
    CHECK(strstr(out, "llama.embedding_length") && strstr(out, "blk.4.ffn_down.weight") && strstr(out, "tokenizer.ggml.tokens"));
    /* a truncated file: exit 1 and a message naming the file */
    bytes = read_file(stories(), &n);
    write_file(tmp_path("cut.gguf"), bytes, n / 2);
    free(bytes);
    snprintf(cmd, sizeof cmd, "%s/tools/aq-inspect %s 2>&1", AQ_BIN_DIR, tmp_path("cut.gguf"));
    CHECK(run_cmd(cmd, out, sizeof out) == 1 && strstr(out, "cut.gguf"));
}

static void test_synth_writes_loadable_deterministic_models(void) {
    char cmd[2048], out[4096], err[256];
    size_t na, nb;
    unsigned char *a, *b;
    aq_model *m;
    const char *args = "--dim 128 --layers 2 --heads 4 --kv-heads 2 --ff 256 --ctx 128 --seed 5";
    snprintf(cmd, sizeof cmd, "%s/tools/aq-synth %s --type f16 --vocab %s -o %s 2>/dev/null", AQ_BIN_DIR, args,
             shared_path("models/ggml-vocab-llama-spm.gguf"), tmp_path("synth1.gguf"));
    CHECK(run_cmd(cmd, out, sizeof out) == 0);
    snprintf(cmd, sizeof cmd, "%s/tools/aq-synth %s --type f16 --vocab %s -o %s 2>/dev/null", AQ_BIN_DIR, args,
             shared_path("models/ggml-vocab-llama-spm.gguf"), tmp_path("synth2.gguf"));
    CHECK(run_cmd(cmd, out, sizeof out) == 0);
    a = read_file(tmp_path("synth1.gguf"), &na);
    b = read_file(tmp_path("synth2.gguf"), &nb);
    CHECK(a && b && na == nb && memcmp(a, b, na) == 0);
    free(a); free(b);
    m = aq_model_load(tmp_path("synth1.gguf"), err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    if (m) {
        const aq_config *c = aq_model_config(m);
        char *text;
        CHECK(c->n_embd == 128 && c->n_layers == 2 && c->n_kv_heads == 2 && c->n_vocab == 32000 && c->n_ctx_train == 128);
        text = greedy_text(m, 2, "Hello", 16);
        CHECK(text && strncmp(text, "Hello", 5) == 0);
        free(text);
        aq_model_free(m);
    }
    /* a padded vocabulary and a quantized type */
    snprintf(cmd, sizeof cmd, "%s/tools/aq-synth %s --type q4_1 --vocab-size 32100 --vocab %s -o %s 2>/dev/null", AQ_BIN_DIR, args,
             shared_path("models/ggml-vocab-llama-spm.gguf"), tmp_path("synth3.gguf"));
    CHECK(run_cmd(cmd, out, sizeof out) == 0);
    m = aq_model_load(tmp_path("synth3.gguf"), err, sizeof err);
    CHECKF(m && aq_model_config(m)->n_vocab == 32100 && aq_token_type(aq_model_vocab(m), 32050) == AQ_TOKEN_UNUSED, "%s", err);
    aq_model_free(m);
    snprintf(cmd, sizeof cmd, "%s/tools/aq-synth --dim 100 --layers 1 --heads 3 --ff 64 -o %s 2>&1", AQ_BIN_DIR, tmp_path("bad.gguf"));
    CHECK(run_cmd(cmd, out, sizeof out) == 2);
}

static void tool_tests(void) {
    RUN(test_tools_help_and_bad_arguments);
    RUN(test_inspect);
    RUN(test_synth_writes_loadable_deterministic_models);
}
