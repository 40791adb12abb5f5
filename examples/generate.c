/* generate: complete a prompt with a GGUF Llama model, streaming the text as it is produced.
   Prefill and decode speeds go to stderr at the end. */
#define AWQ_QUEST_IMPLEMENTATION
#include "../awq_quest.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: generate -m MODEL.gguf [options]\n"
            "  -m FILE            model (GGUF, general.architecture = llama)\n"
            "  -p TEXT            prompt (default: empty, i.e. start from BOS)\n"
            "  -n N               tokens to generate after the prompt (default 256)\n"
            "  -t N               threads (default: all cores)\n"
            "  --ctx N            context length of the session (default: the model's)\n"
            "  --quest-budget N   Quest: each decode step reads only the KV pages of N tokens that\n"
            "                     can score highest for the query (0 = dense, the default)\n"
            "  --quest-bounds N   bits per stored key bound, 16 (f16, default) or 8 (0.56x the bytes)\n"
            "  --kv f32|f16       KV cache type (default f32)\n"
            "  --gpu              run on the GPU (a `make cuda` build; falls back to the CPU, saying why)\n"
            "  --temp X           temperature, 0 = greedy (default 0.8)\n"
            "  --top-k N          keep the N most likely tokens, 0 = off (default 40)\n"
            "  --top-p X          nucleus sampling, 1 = off (default 0.95)\n"
            "  --min-p X          drop tokens below X times the top probability, 0 = off (default 0.05)\n"
            "  --repeat-penalty X penalize the last --repeat-last-n tokens, 1 = off (default 1.0)\n"
            "  --repeat-last-n N  (default 64)\n"
            "  --seed N           RNG seed (default 42)\n"
            "  -h, --help         this text\n");
}

static int print_piece(const char *piece, size_t len, void *user) {
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

/* Parses a number argument or exits with a message naming the option. */
static double number(const char *opt, const char *s, double lo, double hi) {
    char *end;
    double v = strtod(s ? s : "", &end);
    if (!s || !*s || *end || v < lo || v > hi) {
        fprintf(stderr, "generate: %s needs a number in [%g, %g], got '%s'\n", opt, lo, hi, s ? s : "");
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt = "";
    int n_predict = 256, i;
    char err[512];
    aq_session_params sp = aq_session_default_params();
    aq_sampler_params pp = aq_sampler_default_params();
    aq_generate_stats st;
    aq_model *m;
    aq_session *s;
    aq_sampler *smp;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-m") && v) { model_path = v; i++; }
        else if (!strcmp(a, "-p") && v) { prompt = v; i++; }
        else if (!strcmp(a, "-n")) { n_predict = (int)number(a, v, 0, 1 << 24); i++; }
        else if (!strcmp(a, "-t")) { sp.n_threads = (int)number(a, v, 1, 512); i++; }
        else if (!strcmp(a, "--ctx")) { sp.n_ctx = (int)number(a, v, 1, 1 << 24); i++; }
        else if (!strcmp(a, "--gpu")) sp.backend = AQ_BACKEND_CUDA;
        else if (!strcmp(a, "--quest-budget")) { sp.quest_budget = (int)number(a, v, 0, 1 << 24); i++; }
        else if (!strcmp(a, "--quest-bounds")) { sp.quest_bounds = (int)number(a, v, 8, 16); i++; }
        else if (!strcmp(a, "--kv") && v && (!strcmp(v, "f32") || !strcmp(v, "f16"))) { sp.kv_type = strcmp(v, "f16") ? AQ_KV_F32 : AQ_KV_F16; i++; }
        else if (!strcmp(a, "--temp")) { pp.temperature = (float)number(a, v, 0, 100); i++; }
        else if (!strcmp(a, "--top-k")) { pp.top_k = (int)number(a, v, 0, 1e9); i++; }
        else if (!strcmp(a, "--top-p")) { pp.top_p = (float)number(a, v, 0, 1); i++; }
        else if (!strcmp(a, "--min-p")) { pp.min_p = (float)number(a, v, 0, 1); i++; }
        else if (!strcmp(a, "--repeat-penalty")) { pp.repeat_penalty = (float)number(a, v, 0.01, 100); i++; }
        else if (!strcmp(a, "--repeat-last-n")) { pp.repeat_last_n = (int)number(a, v, 0, 1 << 20); i++; }
        else if (!strcmp(a, "--seed")) { pp.seed = (uint64_t)number(a, v, 0, 1.8e19); i++; }
        else {
            fprintf(stderr, "generate: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model_path) { fprintf(stderr, "generate: no model given (-m FILE)\n"); usage(stderr); return 2; }

    m = aq_model_load(model_path, err, sizeof err);
    if (!m) { fprintf(stderr, "generate: %s\n", err); return 1; }
    s = aq_session_new(m, &sp, err, sizeof err);
    if (!s) { fprintf(stderr, "generate: %s\n", err); aq_model_free(m); return 1; }
    if (sp.backend == AQ_BACKEND_CUDA) fprintf(stderr, "backend: %s\n", aq_session_backend_note(s));
    smp = aq_sampler_new(&pp, aq_model_config(m)->n_vocab);
    if (!smp) { fprintf(stderr, "generate: out of memory\n"); return 1; }

    if (aq_generate(s, smp, prompt, n_predict, print_piece, NULL, &st, err, sizeof err)) {
        fprintf(stderr, "\ngenerate: %s\n", err);
        return 1;
    }
    printf("\n");
    fflush(stdout); /* the text, then the timings on their own line */
    fprintf(stderr, "prefill: %d tokens in %.3f s (%.1f tok/s); decode: %d tokens in %.3f s (%.1f tok/s); %d threads\n",
            st.n_prompt, st.prefill_seconds, st.n_prompt / (st.prefill_seconds > 0 ? st.prefill_seconds : 1e-9),
            st.n_generated, st.decode_seconds, st.n_generated / (st.decode_seconds > 0 ? st.decode_seconds : 1e-9),
            aq_session_n_threads(s));
    aq_sampler_free(smp);
    aq_session_free(s);
    aq_model_free(m);
    return 0;
}
