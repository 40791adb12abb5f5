/* aq-perplexity: how well a model predicts a text.  The text is split into documents at
   "<|endoftext|>" lines, each document starts with BOS, and the token stream is cut into
   non-overlapping windows of --ctx tokens, each evaluated from an empty context; every token
   after a window's first is scored.  The last line is "perplexity: <value>".

   With --quest-budget or --window the text is evaluated in decode mode, one token at a time as
   generation attends (a prompt would be dense and hide the effect), next to a dense decode of the
   same tokens: the output adds the top-1 agreement with dense decoding and the mean KL divergence
   KL(dense || sparse) of the next-token distribution. */
#define AWQ_QUEST_IMPLEMENTATION
#include "../awq_quest.h"
#include "tool_util.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: aq-perplexity MODEL.gguf TEXT.txt [options]\n"
            "  --ctx N          window length (default: the model's trained context, at most 2048)\n"
            "  --max-tokens N   evaluate only the first N tokens of the text (default: all)\n"
            "  -t N             threads (default: all cores)\n"
            "  --quest-budget N Quest attention with a budget of N tokens (decode mode, compared with dense)\n"
            "  --window N       attend only the last N tokens instead: the baseline (decode mode)\n"
            "  --quest-per-head one selection per query head instead of per KV head\n"
            "  --quest-bounds N bits per stored key bound, 16 (f16, default) or 8\n"
            "  --dense-layers N first N layers stay dense with --quest-budget / --window (default 2)\n"
            "  --page N         KV page size in tokens (default 16)\n"
            "  --kv f32|f16     KV cache type (default f32)\n"
            "  --gpu            run on the GPU (a `make cuda` build; falls back to the CPU, saying why)\n"
            "  -h, --help       this text\n");
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *text_path = NULL;
    int64_t max_tokens = 0, n_tokens, pos, scored = 0;
    int ctx = 0, threads = 0, i, n_windows = 0, agree = 0;
    double nll = 0.0, nll_dense = 0.0, kl = 0.0, t0;
    aq_session *dense = NULL;
    float *dense_logits = NULL;
    char err[512];
    aq_session_params sp = aq_session_default_params();
    aq_model *m;
    aq_session *s;
    int32_t *ids;
    float *logits;
    int V;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--ctx")) ctx = (int)tool_number("aq-perplexity", a, tool_arg("aq-perplexity", argc, argv, &i), 2, 1 << 20);
        else if (!strcmp(a, "--max-tokens")) max_tokens = (int64_t)tool_number("aq-perplexity", a, tool_arg("aq-perplexity", argc, argv, &i), 2, 1e12);
        else if (!strcmp(a, "-t")) threads = (int)tool_number("aq-perplexity", a, tool_arg("aq-perplexity", argc, argv, &i), 1, 512);
        else if (!strcmp(a, "--quest-budget")) sp.quest_budget = (int)tool_number("aq-perplexity", a, tool_arg("aq-perplexity", argc, argv, &i), 1, 1 << 24);
        else if (!strcmp(a, "--window")) sp.window = (int)tool_number("aq-perplexity", a, tool_arg("aq-perplexity", argc, argv, &i), 1, 1 << 24);
        else if (!strcmp(a, "--quest-per-head")) sp.quest_per_head = 1;
        else if (!strcmp(a, "--quest-bounds")) sp.quest_bounds = (int)tool_number("aq-perplexity", a, tool_arg("aq-perplexity", argc, argv, &i), 8, 16);
        else if (!strcmp(a, "--gpu")) sp.backend = AQ_BACKEND_CUDA;
        else if (!strcmp(a, "--dense-layers")) sp.quest_dense_layers = (int)tool_number("aq-perplexity", a, tool_arg("aq-perplexity", argc, argv, &i), 0, 1024);
        else if (!strcmp(a, "--page")) sp.page_size = (int)tool_number("aq-perplexity", a, tool_arg("aq-perplexity", argc, argv, &i), 1, 4096);
        else if (!strcmp(a, "--kv")) {
            const char *v = tool_arg("aq-perplexity", argc, argv, &i);
            if (strcmp(v, "f32") && strcmp(v, "f16")) { fprintf(stderr, "aq-perplexity: --kv must be f32 or f16, got '%s'\n", v); return 2; }
            sp.kv_type = strcmp(v, "f16") ? AQ_KV_F32 : AQ_KV_F16;
        }
        else if (a[0] == '-') { fprintf(stderr, "aq-perplexity: unknown argument '%s'\n", a); usage(stderr); return 2; }
        else if (!model_path) model_path = a;
        else if (!text_path) text_path = a;
        else { fprintf(stderr, "aq-perplexity: unexpected argument '%s'\n", a); usage(stderr); return 2; }
    }
    if (!model_path || !text_path) { fprintf(stderr, "aq-perplexity: need a model and a text file\n"); usage(stderr); return 2; }
    m = aq_model_load(model_path, err, sizeof err);
    if (!m) { fprintf(stderr, "aq-perplexity: %s\n", err); return 1; }
    if (!ctx) ctx = aq_model_config(m)->n_ctx_train < 2048 ? aq_model_config(m)->n_ctx_train : 2048;
    ids = tool_tokenize_documents("aq-perplexity", aq_model_vocab(m), text_path, max_tokens, &n_tokens);
    if (n_tokens < 2) { fprintf(stderr, "aq-perplexity: %s has fewer than 2 tokens\n", text_path); return 1; }
    sp.n_threads = threads;
    sp.n_ctx = ctx;
    sp.n_batch = ctx;
    s = aq_session_new(m, &sp, err, sizeof err);
    if (!s) { fprintf(stderr, "aq-perplexity: %s\n", err); return 1; }
    if (sp.backend == AQ_BACKEND_CUDA) fprintf(stderr, "backend: %s\n", aq_session_backend_note(s));
    V = aq_model_config(m)->n_vocab;
    logits = (float *)malloc(sizeof(float) * (size_t)ctx * (size_t)V);
    if (!logits) { fprintf(stderr, "aq-perplexity: out of memory\n"); return 1; }
    if (sp.quest_budget || sp.window) {   /* decode mode, with a dense decode alongside */
        aq_session_params dp = sp;
        dp.quest_budget = dp.window = 0;
        dense = aq_session_new(m, &dp, err, sizeof err);
        dense_logits = (float *)malloc(sizeof(float) * (size_t)ctx * (size_t)V);
        if (!dense || !dense_logits) { fprintf(stderr, "aq-perplexity: %s\n", dense ? "out of memory" : err); return 1; }
    }
    t0 = aq_time_seconds();
    for (pos = 0; pos + 1 < n_tokens; pos += ctx) {
        int len = n_tokens - pos < ctx ? (int)(n_tokens - pos) : ctx, t;
        aq_session_reset(s);
        if (dense) {
            aq_session_reset(dense);
            for (t = 0; t < len; t++)
                if (aq_eval(s, ids + pos + t, 1, logits + (size_t)t * V, err, sizeof err) ||
                    aq_eval(dense, ids + pos + t, 1, dense_logits + (size_t)t * V, err, sizeof err)) {
                    fprintf(stderr, "aq-perplexity: %s\n", err);
                    return 1;
                }
        } else if (aq_eval_all(s, ids + pos, len, logits, err, sizeof err)) { fprintf(stderr, "aq-perplexity: %s\n", err); return 1; }
        for (t = 0; t + 1 < len; t++) { /* log-softmax of the next token, in double */
            double lse = tool_log_sum_exp(logits + (size_t)t * V, V);
            nll += lse - (double)logits[(size_t)t * V + ids[pos + t + 1]];
            scored++;
            if (dense) {
                const float *l = logits + (size_t)t * V, *d = dense_logits + (size_t)t * V;
                double dlse = tool_log_sum_exp(d, V);
                int k, a = 0, b = 0;
                nll_dense += dlse - (double)d[ids[pos + t + 1]];
                for (k = 0; k < V; k++) {
                    double pd = exp((double)d[k] - dlse);
                    kl += pd * (((double)d[k] - dlse) - ((double)l[k] - lse));
                    if (l[k] > l[a]) a = k;
                    if (d[k] > d[b]) b = k;
                }
                agree += a == b;
            }
        }
        n_windows++;
        fprintf(stderr, "\rwindow %d: %lld tokens scored, perplexity %.4f, %.1f s", n_windows, (long long)scored, exp(nll / scored),
                aq_time_seconds() - t0);
    }
    fprintf(stderr, "\n");
    printf("model: %s\ntext: %s (%lld tokens)\nwindows: %d of up to %d tokens; tokens scored: %lld\n", model_path, text_path,
           (long long)n_tokens, n_windows, ctx, (long long)scored);
    if (dense) {
        printf("mode: decode, %s %d, first %d layers dense, KV %s, page %d", sp.quest_budget ? "quest budget" : "window",
               sp.quest_budget ? sp.quest_budget : sp.window, sp.quest_dense_layers, sp.kv_type == AQ_KV_F16 ? "f16" : "f32", sp.page_size);
        if (sp.quest_budget) printf(", %d-bit bounds", sp.quest_bounds ? sp.quest_bounds : 16);
        printf("\n");
        printf("dense decode perplexity: %.4f\n", exp(nll_dense / scored));
        printf("top-1 agreement with dense: %.2f%%\n", 100.0 * agree / scored);
        printf("mean KL(dense || this): %.5f\n", kl / scored);
        aq_session_free(dense);
        free(dense_logits);
    }
    printf("perplexity: %.4f\n", exp(nll / scored));
    free(logits);
    free(ids);
    aq_session_free(s);
    aq_model_free(m);
    return 0;
}
