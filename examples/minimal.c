/* minimal: load a model, complete a prompt, print it.  Build: see the Makefile (one C file,
   link -lopenblas -lm -pthread).  Usage: minimal MODEL.gguf ["prompt"] */
#define AWQ_QUEST_IMPLEMENTATION
#include "../awq_quest.h"

static int print_piece(const char *piece, size_t len, void *user) {
    (void)user;
    fwrite(piece, 1, len, stdout);
    return 0; /* nonzero would stop generation */
}

int main(int argc, char **argv) {
    char err[512];
    aq_model *model;
    aq_session *session;
    aq_sampler *sampler;
    aq_sampler_params sampling = aq_sampler_default_params(); /* temperature 0.8, top-k 40, ... */
    if (argc < 2) { fprintf(stderr, "usage: minimal MODEL.gguf [prompt]\n"); return 2; }

    model = aq_model_load(argv[1], err, sizeof err);
    if (!model) { fprintf(stderr, "%s\n", err); return 1; }
    session = aq_session_new(model, NULL, err, sizeof err); /* NULL: default parameters */
    if (!session) { fprintf(stderr, "%s\n", err); return 1; }
    sampler = aq_sampler_new(&sampling, aq_model_config(model)->n_vocab);

    if (aq_generate(session, sampler, argc > 2 ? argv[2] : "Once upon a time", 100, print_piece, NULL, NULL, err, sizeof err))
        fprintf(stderr, "\n%s\n", err);
    printf("\n");

    aq_sampler_free(sampler);
    aq_session_free(session);
    aq_model_free(model);
    return 0;
}
