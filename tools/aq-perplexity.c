/* aq-perplexity: how well a model predicts a text.  The text is split into documents at
   "<|endoftext|>" lines, each document starts with BOS, and the token stream is cut into
   non-overlapping windows of --ctx tokens, each evaluated from an empty context; every token
   after a window's first is scored.  The last line is "perplexity: <value>". */
#define AWQ_QUEST_IMPLEMENTATION
#include "../awq_quest.h"
#include "tool_util.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: aq-perplexity MODEL.gguf TEXT.txt [options]\n"
            "  --ctx N          window length (default: the model's trained context, at most 2048)\n"
            "  --max-tokens N   evaluate only the first N tokens of the text (default: all)\n"
            "  -t N             threads (default: all cores)\n"
            "  -h, --help       this text\n");
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *text_path = NULL;
    int64_t max_tokens = 0, n_tokens, pos, scored = 0;
    int ctx = 0, threads = 0, i, n_windows = 0;
    double nll = 0.0, t0;
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
    V = aq_model_config(m)->n_vocab;
    logits = (float *)malloc(sizeof(float) * (size_t)ctx * (size_t)V);
    if (!logits) { fprintf(stderr, "aq-perplexity: out of memory\n"); return 1; }
    t0 = aq_time_seconds();
    for (pos = 0; pos + 1 < n_tokens; pos += ctx) {
        int len = n_tokens - pos < ctx ? (int)(n_tokens - pos) : ctx, t;
        aq_session_reset(s);
        if (aq_eval_all(s, ids + pos, len, logits, err, sizeof err)) { fprintf(stderr, "aq-perplexity: %s\n", err); return 1; }
        for (t = 0; t + 1 < len; t++) { /* log-softmax of the next token, in double */
            const float *l = logits + (size_t)t * V;
            float max = l[0];
            double sum = 0.0;
            int k;
            for (k = 1; k < V; k++) max = l[k] > max ? l[k] : max;
            for (k = 0; k < V; k++) sum += exp((double)(l[k] - max));
            nll += log(sum) - (double)(l[ids[pos + t + 1]] - max);
            scored++;
        }
        n_windows++;
        fprintf(stderr, "\rwindow %d: %lld tokens scored, perplexity %.4f, %.1f s", n_windows, (long long)scored, exp(nll / scored),
                aq_time_seconds() - t0);
    }
    fprintf(stderr, "\n");
    printf("model: %s\ntext: %s (%lld tokens)\nwindows: %d of up to %d tokens; tokens scored: %lld\n", model_path, text_path,
           (long long)n_tokens, n_windows, ctx, (long long)scored);
    printf("perplexity: %.4f\n", exp(nll / scored));
    free(logits);
    free(ids);
    aq_session_free(s);
    aq_model_free(m);
    return 0;
}
