/* aq-bench: prefill and decode speed of one or more models, measured side by side in one run,
   next to the machine's measured memory read bandwidth (decode reads every weight once per
   token, so bandwidth is its roofline).  --contention repeats decode with 1 and N threads while
   another process keeps one core busy, the situation of a library inside someone's app.
   --quest times long-context decode steps, dense against Quest budgets, over KV caches filled
   with random keys and values (the real layout, without paying for the prompts). */
#define AWQ_QUEST_IMPLEMENTATION
#include "../awq_quest.h"
#include "tool_util.h"
#include <signal.h>
#include <sys/wait.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: aq-bench -m MODEL.gguf [-m MODEL2.gguf ...] [options]\n"
            "  -t N            threads (default 2)\n"
            "  -p N            prompt tokens for the prefill measurement (default 256)\n"
            "  -n N            decode tokens to time, best of 3 runs (default 32)\n"
            "  --contention    also decode with 1 and N threads while a busy process runs\n"
            "  --bandwidth-mib N  buffer for the bandwidth measurement (default 1024)\n"
            "  --quest          long-context decode: dense vs Quest, per context and budget, instead\n"
            "  --contexts LIST  with --quest: context lengths (default 4096,8192,16384,32768)\n"
            "  --budgets LIST   with --quest: token budgets (default 512,1024,2048,4096)\n"
            "  --kv f32|f16|both  with --quest: KV cache types (default both)\n"
            "  --quest-bounds 16|8|both  with --quest: bits per stored key bound (default 16)\n"
            "  --csv FILE       with --quest: also write the table as CSV\n"
            "  --dense-layers N with --quest: first N layers stay dense (default 2, as in sessions)\n"
            "  -h, --help      this text\n");
}

typedef struct { const float *buf; int64_t n; double *partial; int simd; } bw_job;

/* Reads 64 KiB chunks with the library's own f32 row kernel (dotted with a cached vector), so
   the bandwidth is measured the way a decode step reads weights. */
static void bw_task(void *ctx, int64_t begin, int64_t end, int thread) {
    const bw_job *j = (const bw_job *)ctx;
    static const float ones[1 << 14] = {0};
    aq__row_dot_fn dot = aq__row_dot_for(AQ_TYPE_F32, j->simd);
    int64_t c;
    double s = 0;
    for (c = begin; c < end; c++) s += dot(j->buf + (c << 14), ones, 1 << 14);
    j->partial[thread] += s;
}

/* Best of 5 passes of a threaded streaming read, in GB/s (1e9 bytes). */
static double read_bandwidth(int threads, size_t mib) {
    int64_t n = (int64_t)mib << 18, chunks = n >> 14, i;
    float *buf = (float *)malloc((size_t)n * sizeof(float));
    double best = 0, partial[512] = {0};
    aq__pool *pool = aq__pool_new(threads);
    bw_job j;
    int rep;
    if (!buf || !pool) { fprintf(stderr, "aq-bench: out of memory for the bandwidth buffer\n"); exit(1); }
    for (i = 0; i < n; i++) buf[i] = (float)(i & 7);
    j.buf = buf; j.n = n; j.partial = partial; j.simd = aq__detect_simd();
    for (rep = 0; rep < 5; rep++) {
        double t0 = aq_time_seconds(), dt;
        aq__pool_run(pool, chunks, 16, bw_task, &j);
        dt = aq_time_seconds() - t0;
        if ((double)n * 4 / dt / 1e9 > best) best = (double)n * 4 / dt / 1e9;
    }
    if (partial[0] == 12345.0) printf(" "); /* keep the sums alive */
    aq__pool_free(pool);
    free(buf);
    return best;
}

static int argmax(const float *x, int n) {
    int i, b = 0;
    for (i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

/* Seconds per decoded token, greedy, after a short warm-up. */
static double decode_seconds(const aq_model *m, int threads, const int32_t *prompt, int n_prompt, int n_decode) {
    char err[512];
    aq_session_params sp = aq_session_default_params();
    aq_session *s;
    float *logits = (float *)malloc(sizeof(float) * (size_t)aq_model_config(m)->n_vocab);
    int32_t tok;
    double t0, dt;
    int i;
    sp.n_threads = threads;
    sp.n_ctx = n_prompt + n_decode + 8;
    s = aq_session_new(m, &sp, err, sizeof err);
    if (!s || aq_eval(s, prompt, n_prompt, logits, err, sizeof err)) { fprintf(stderr, "aq-bench: %s\n", err); exit(1); }
    for (i = 0; i < 2; i++) {
        tok = argmax(logits, aq_model_config(m)->n_vocab);
        if (aq_eval(s, &tok, 1, logits, err, sizeof err)) { fprintf(stderr, "aq-bench: %s\n", err); exit(1); }
    }
    t0 = aq_time_seconds();
    for (i = 0; i < n_decode; i++) {
        tok = argmax(logits, aq_model_config(m)->n_vocab);
        if (aq_eval(s, &tok, 1, logits, err, sizeof err)) { fprintf(stderr, "aq-bench: %s\n", err); exit(1); }
    }
    dt = (aq_time_seconds() - t0) / n_decode;
    aq_session_free(s);
    free(logits);
    return dt;
}

static double prefill_seconds(const aq_model *m, int threads, const int32_t *prompt, int n_prompt) {
    char err[512];
    aq_session_params sp = aq_session_default_params();
    aq_session *s;
    double t0, dt;
    sp.n_threads = threads;
    sp.n_ctx = n_prompt;
    sp.n_batch = n_prompt;
    s = aq_session_new(m, &sp, err, sizeof err);
    if (!s) { fprintf(stderr, "aq-bench: %s\n", err); exit(1); }
    t0 = aq_time_seconds();
    if (aq_eval(s, prompt, n_prompt, NULL, err, sizeof err)) { fprintf(stderr, "aq-bench: %s\n", err); exit(1); }
    dt = aq_time_seconds() - t0;
    aq_session_free(s);
    return dt;
}

static pid_t start_busy_process(void) {
    pid_t pid = fork();
    if (pid == 0) {
        volatile uint64_t x = 0;
        for (;;) x++;
    }
    return pid;
}

static void stop_busy_process(pid_t pid) {
    if (pid > 0) { kill(pid, SIGKILL); waitpid(pid, NULL, 0); }
}

/* Comma-separated positive integers into out (at most 16); returns the count or exits. */
static int int_list(const char *opt, const char *s, int *out) {
    int n = 0;
    char *end;
    while (*s && n < 16) {
        long v = strtol(s, &end, 10);
        if (end == s || v <= 0 || (*end && *end != ',')) { fprintf(stderr, "aq-bench: %s needs numbers like 512,1024, got '%s'\n", opt, s); exit(2); }
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
    }
    return n;
}

/* Per context and KV type: one random-filled session; per mode, the best of 3 runs of n steps. */
static void quest_bench(const aq_model *m, int threads, int n_steps, const int *ctxs, int n_ctx, const int *budgets, int n_budgets,
                        int kv_mask, int bounds_mask, int dense_layers, const char *csv_path) {
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    int kv, ci, bi, bits, i, rep;
    if (csv_path && !csv) { fprintf(stderr, "aq-bench: cannot write %s\n", csv_path); exit(1); }
    if (csv) fprintf(csv, "kv,context,budget,bounds,step_ms,attention_ms,selection_ms,tok_per_s,attention_speedup,step_speedup\n");
    printf("%-4s %8s %8s %6s %10s %13s %13s %9s %13s %12s\n", "kv", "context", "budget", "bounds", "step ms", "attention ms",
           "selection ms", "tok/s", "attn speedup", "step speedup");
    for (kv = 0; kv < 2; kv++) {
        if (!(kv_mask & (1 << kv))) continue;
        for (ci = 0; ci < n_ctx; ci++) {
            char err[512];
            double dense_step = 0, dense_attn = 0;
            for (bi = -1; bi < n_budgets; bi++)
                for (bits = 16; bits >= 8; bits -= 8) {
                    aq_session_params sp = aq_session_default_params();
                    aq_session *s;
                    aq_session_stats st;
                    float *logits = (float *)malloc(sizeof(float) * (size_t)aq_model_config(m)->n_vocab);
                    double best_step = 1e30, best_attn = 0, best_sel = 0;
                    int32_t tok = 3;
                    if (bi < 0 ? bits == 8 : !(bounds_mask & (bits == 16 ? 1 : 2))) { free(logits); continue; }   /* dense: once */
                    sp.quest_bounds = bits;
                    sp.n_threads = threads; sp.n_ctx = ctxs[ci] + n_steps + 8; sp.kv_type = kv ? AQ_KV_F16 : AQ_KV_F32;
                    sp.quest_budget = bi < 0 ? 0 : budgets[bi];
                    sp.quest_dense_layers = dense_layers;
                    s = aq_session_new(m, &sp, err, sizeof err);
                    if (!s) { fprintf(stderr, "aq-bench: %s\n", err); exit(1); }
                    fprintf(stderr, "kv %s, context %d, %s: filling the cache\n", kv ? "f16" : "f32", ctxs[ci], bi < 0 ? "dense" : "quest");
                    if (aq__session_fill_random(s, ctxs[ci], 1, err, sizeof err)) { fprintf(stderr, "aq-bench: %s\n", err); exit(1); }
                    for (rep = 0; rep < 3; rep++) {
                        double t0;
                        s->pos = ctxs[ci];   /* the same context for every run */
                        aq_session_reset_stats(s);
                        t0 = aq_time_seconds();
                        for (i = 0; i < n_steps; i++)
                            if (aq_eval(s, &tok, 1, logits, err, sizeof err)) { fprintf(stderr, "aq-bench: %s\n", err); exit(1); }
                        aq_session_get_stats(s, &st);
                        if ((aq_time_seconds() - t0) / n_steps < best_step) {
                            best_step = (aq_time_seconds() - t0) / n_steps;
                            best_attn = st.attention_seconds / n_steps;
                            best_sel = st.selection_seconds / n_steps;
                        }
                    }
                    if (bi < 0) { dense_step = best_step; dense_attn = best_attn; }
                    printf("%-4s %8d %8s %6s %10.2f %13.2f %13.3f %9.2f %12.2fx %11.2fx\n", kv ? "f16" : "f32", ctxs[ci],
                           bi < 0 ? "dense" : (snprintf(err, sizeof err, "%d", budgets[bi]), err), bi < 0 ? "" : bits == 8 ? "8" : "16",
                           best_step * 1e3, best_attn * 1e3, best_sel * 1e3, 1.0 / best_step, dense_attn / best_attn, dense_step / best_step);
                    fflush(stdout);
                    if (csv)
                        fprintf(csv, "%s,%d,%d,%d,%.4f,%.4f,%.4f,%.3f,%.3f,%.3f\n", kv ? "f16" : "f32", ctxs[ci], bi < 0 ? 0 : budgets[bi],
                                bi < 0 ? 0 : bits, best_step * 1e3, best_attn * 1e3, best_sel * 1e3, 1.0 / best_step, dense_attn / best_attn,
                                dense_step / best_step);
                    free(logits);
                    aq_session_free(s);
                }
        }
    }
    if (csv) fclose(csv);
}

int main(int argc, char **argv) {
    const char *models[8];
    int n_models = 0, threads = 2, n_prompt = 256, n_decode = 32, contention = 0, quest = 0, i, k, kv_mask = 3, bounds_mask = 1;
    int ctxs[16] = {4096, 8192, 16384, 32768}, budgets[16] = {512, 1024, 2048, 4096}, n_ctxs = 4, n_budgets = 4;
    const char *csv = NULL;
    int dense_layers = 2;
    size_t bw_mib = 1024;
    double bw;
    char b1[32];
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-m")) {
            if (n_models == 8) { fprintf(stderr, "aq-bench: at most 8 models\n"); return 2; }
            models[n_models++] = tool_arg("aq-bench", argc, argv, &i);
        } else if (!strcmp(a, "-t")) threads = (int)tool_number("aq-bench", a, tool_arg("aq-bench", argc, argv, &i), 1, 512);
        else if (!strcmp(a, "-p")) n_prompt = (int)tool_number("aq-bench", a, tool_arg("aq-bench", argc, argv, &i), 1, 65536);
        else if (!strcmp(a, "-n")) n_decode = (int)tool_number("aq-bench", a, tool_arg("aq-bench", argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "--contention")) contention = 1;
        else if (!strcmp(a, "--quest")) quest = 1;
        else if (!strcmp(a, "--contexts")) n_ctxs = int_list(a, tool_arg("aq-bench", argc, argv, &i), ctxs);
        else if (!strcmp(a, "--budgets")) n_budgets = int_list(a, tool_arg("aq-bench", argc, argv, &i), budgets);
        else if (!strcmp(a, "--csv")) csv = tool_arg("aq-bench", argc, argv, &i);
        else if (!strcmp(a, "--dense-layers")) dense_layers = (int)tool_number("aq-bench", a, tool_arg("aq-bench", argc, argv, &i), 0, 1024);
        else if (!strcmp(a, "--kv")) {
            const char *v = tool_arg("aq-bench", argc, argv, &i);
            kv_mask = !strcmp(v, "f32") ? 1 : !strcmp(v, "f16") ? 2 : !strcmp(v, "both") ? 3 : 0;
            if (!kv_mask) { fprintf(stderr, "aq-bench: --kv must be f32, f16 or both, got '%s'\n", v); return 2; }
        }
        else if (!strcmp(a, "--quest-bounds")) {
            const char *v = tool_arg("aq-bench", argc, argv, &i);
            bounds_mask = !strcmp(v, "16") ? 1 : !strcmp(v, "8") ? 2 : !strcmp(v, "both") ? 3 : 0;
            if (!bounds_mask) { fprintf(stderr, "aq-bench: --quest-bounds must be 16, 8 or both, got '%s'\n", v); return 2; }
        }
        else if (!strcmp(a, "--bandwidth-mib")) bw_mib = (size_t)tool_number("aq-bench", a, tool_arg("aq-bench", argc, argv, &i), 64, 1 << 16);
        else { fprintf(stderr, "aq-bench: unknown argument '%s'\n", a); usage(stderr); return 2; }
    }
    if (!n_models) { fprintf(stderr, "aq-bench: no model given (-m FILE)\n"); usage(stderr); return 2; }
    if (quest) {
        char err[512];
        aq_model *m = aq_model_load(models[0], err, sizeof err);
        if (!m) { fprintf(stderr, "aq-bench: %s\n", err); return 1; }
        printf("model: %s, %d threads, %d decode steps per run (best of 3), KV caches filled with random keys, first %d layers dense\n",
               models[0], threads, n_decode, dense_layers);
        quest_bench(m, threads, n_decode, ctxs, n_ctxs, budgets, n_budgets, kv_mask, bounds_mask, dense_layers, csv);
        aq_model_free(m);
        return 0;
    }

    /* The host's bandwidth drifts over minutes, so each model's decode is compared with a probe
       taken right before it; both are the best of several tries. */
    printf("%-36s %10s %12s %12s %10s %12s %10s %10s\n", "model", "weights", "prefill t/s", "decode t/s", "ms/token",
           "weights GB/s", "probe GB/s", "roofline");
    for (k = 0; k < n_models; k++) {
        char err[512];
        aq_model *m = aq_model_load(models[k], err, sizeof err);
        const aq_config *c;
        int32_t *prompt;
        double pf, dec;
        const char *name = strrchr(models[k], '/') ? strrchr(models[k], '/') + 1 : models[k];
        if (!m) { fprintf(stderr, "aq-bench: %s\n", err); return 1; }
        c = aq_model_config(m);
        if (n_prompt + n_decode + 8 > c->n_ctx_train) fprintf(stderr, "aq-bench: note: %s is run past its trained context\n", name);
        prompt = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_prompt);
        for (i = 0; i < n_prompt; i++) prompt[i] = i == 0 && aq_vocab_bos(aq_model_vocab(m)) >= 0 ? aq_vocab_bos(aq_model_vocab(m))
                                                                                                  : 3 + (int32_t)((i * 7919u) % (uint32_t)(c->n_vocab - 3));
        fprintf(stderr, "%s: warming up (reading the weights once)\n", name);
        decode_seconds(m, threads, prompt, 1, 1);
        fprintf(stderr, "%s: prefill of %d tokens\n", name, n_prompt);
        pf = prefill_seconds(m, threads, prompt, n_prompt);
        fprintf(stderr, "%s: decode of %d tokens\n", name, n_decode);
        bw = read_bandwidth(threads, bw_mib);
        dec = decode_seconds(m, threads, prompt, 16, n_decode);
        for (i = 0; i < 2; i++) {
            double again = decode_seconds(m, threads, prompt, 16, n_decode);
            dec = again < dec ? again : dec;
        }
        printf("%-36s %10s %12.1f %12.2f %10.1f %12.1f %10.1f %9.0f%%\n", name, tool_bytes((double)aq_model_weight_bytes(m), b1, sizeof b1),
               n_prompt / pf, 1.0 / dec, dec * 1e3, (double)aq_model_weight_bytes(m) / dec / 1e9, bw,
               100.0 * (double)aq_model_weight_bytes(m) / dec / 1e9 / bw);
        fflush(stdout);
        if (contention) {
            double idle1, idle_n, busy1, busy_n;
            pid_t busy;
            idle1 = decode_seconds(m, 1, prompt, 16, n_decode);
            idle_n = decode_seconds(m, threads, prompt, 16, n_decode);
            busy = start_busy_process();
            busy1 = decode_seconds(m, 1, prompt, 16, n_decode);
            busy_n = decode_seconds(m, threads, prompt, 16, n_decode);
            stop_busy_process(busy);
            printf("  contention (decode tok/s)   idle: -t 1 %.2f, -t %d %.2f   one core busy: -t 1 %.2f, -t %d %.2f   (-t %d / -t 1 busy: %.2fx)\n",
                   1 / idle1, threads, 1 / idle_n, 1 / busy1, threads, 1 / busy_n, threads, busy1 / busy_n);
            fflush(stdout);
        }
        free(prompt);
        aq_model_free(m);
    }
    return 0;
}
