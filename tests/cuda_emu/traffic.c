/* tests/cuda_emu/traffic.c - what one decode step's kernels load from device memory, counted by
   the CPU emulation of CUDA (cuda_emu.h counts every __ldg and cp.async, the kernels' streams,
   per named allocation), against what the GPU path's design says a step reads:
     - every weight matrix's bytes once (the one pass over the weights the GEMVs promise), the
       token embedding's aside (one row, read by the embedding kernel);
     - dense attention: each KV head's keys and values once for all the query heads that share
       them (GQA), and no more;
     - Quest: per KV head, the page bounds of the complete pages once (the score; f16, or 8-bit
       codes), and the keys
       and values of budget / page_size - 1 complete pages and the current page once; the
       first quest_dense_layers layers dense;
   all in 16-byte loads; and the only copies between host and device are the weights, once,
   with the model's first session, and then per step the token and its position in and the
   next token out, greedy or sampled.  A GPU's decode step takes at least these bytes over its
   bandwidth, so a kernel that reads a page once per query head, or a weight twice, fails here
   before it costs device minutes.  Also that aqc_profile_step times every stage of a step.
   usage: traffic MODEL.gguf (a GQA model: aq-synth --kv-heads) */
#define AWQ_QUEST_IMPLEMENTATION
#include "../../awq_quest.h"

typedef struct { unsigned long long loaded, loads, narrow, allocated; } aqe_traffic;
void aqe_traffic_reset(void);
void aqe_traffic_get(const char *name, aqe_traffic *out);

static int passed, failed;

/* The copies in one direction ("copies to the host", "copies to the device") must be `want`
   bytes in `calls` copies. */
static void expect_copies(const char *what, const char *name, unsigned long long want, unsigned long long calls) {
    aqe_traffic t;
    aqe_traffic_get(name, &t);
    const int ok = t.loaded == want && t.loads == calls;
    printf("  %-44s %11llu bytes in %8llu copies, design %llu bytes in %llu  %s\n", what, t.loaded, t.loads, want, calls,
           ok ? "ok" : "FAIL");
    if (ok) passed++;
    else failed++;
}

/* The loads from the allocations named `name` must be `want` bytes, in 16-byte loads. */
static void expect(const char *what, const char *name, unsigned long long want) {
    aqe_traffic t;
    aqe_traffic_get(name, &t);
    const int ok = t.loaded == want && t.narrow == 0;
    printf("  %-44s %11llu bytes in %8llu loads (%llu narrower than 16 bytes), design %11llu  %s\n", what, t.loaded, t.loads,
           t.narrow, want, ok ? "ok" : "FAIL");
    if (ok) passed++;
    else failed++;
}

/* One greedy decode step at position ctx after a random cache of ctx positions, then one sampled
   on the device (its copies only); budget 0 = dense; bits: Quest's bounds, 16 or 8 (whose f16
   scales, an eighth of the codes' bytes, are plain loads and not counted). */
static void check_step(aq_model *m, int ctx, int budget, int dense_layers, int bits) {
    const aq_config *c = aq_model_config(m);
    aq_session_params p = aq_session_default_params();
    aq_session *s;
    aqe_traffic weights;
    char err[512];
    unsigned long long kv = 0, bounds = 0;
    const unsigned long long key_bytes = (unsigned long long)c->head_dim * 2 * 2;   /* f16 key and value */
    const int P = 16, keys = ctx + 1;
    int32_t next;
    int l;
    p.backend = AQ_BACKEND_CUDA;
    p.n_ctx = ctx + 64;
    p.page_size = P;
    p.quest_budget = budget;
    p.quest_dense_layers = dense_layers;
    p.quest_bounds = bits;
    s = aq_session_new(m, &p, err, sizeof err);
    if (!s || aq_session_backend(s) != AQ_BACKEND_CUDA || aq__session_fill_random(s, ctx, 5, err, sizeof err)) {
        printf("  step at %d: %s  FAIL\n", ctx, s ? aq_session_backend_note(s) : err);
        failed++;
        aq_session_free(s);
        return;
    }
    aqe_traffic_reset();
    if (aq_eval_greedy(s, 1, &next, err, sizeof err)) {
        printf("  step at %d: %s  FAIL\n", ctx, err);
        failed++;
        aq_session_free(s);
        return;
    }
    for (l = 0; l < c->n_layers; l++) {
        if (!budget || l < dense_layers || keys <= budget) {
            kv += (unsigned long long)c->n_kv_heads * keys * key_bytes;
        } else {
            kv += (unsigned long long)c->n_kv_heads * ((budget / P - 1) * P + ctx % P + 1) * key_bytes;
            bounds += (unsigned long long)c->n_kv_heads * (ctx / P) * c->head_dim * 2 * (bits / 8);   /* min and max */
        }
    }
    printf(" one decode step at %d positions, %s (%d layers, %d query heads on %d KV heads of %d):\n", ctx,
           budget ? "Quest" : "dense", c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim);
    if (budget)
        printf("   budget %d, the first %d layer%s dense, %d-bit bounds\n", budget, dense_layers, dense_layers == 1 ? "" : "s", bits);
    aqe_traffic_get("a weight matrix", &weights);   /* the embedding table is the output's when tied */
    expect("weights (all but the token embedding)", "a weight matrix",
           weights.allocated - (c->tied_output ? 0ull : (unsigned long long)c->n_vocab * c->n_embd * 2));
    expect("KV cache", "the KV cache", kv);
    expect("Quest page bounds", "the Quest page bounds", bounds);
    /* the decode loop keeps everything on the device: in, the token and its position; out, the
       next token, greedy or sampled */
    expect_copies("greedy step, copies to the device", "copies to the device", 8, 1);
    expect_copies("greedy step, copies to the host", "copies to the host", 4, 1);
    {
        aq_sampler_params sp = aq_sampler_default_params();
        aq_sampler *smp = aq_sampler_new(&sp, c->n_vocab);
        aqe_traffic_reset();
        if (!smp || aq_eval_sample(s, smp, next, &next, err, sizeof err)) {
            printf("  sampled step at %d: %s  FAIL\n", ctx + 1, smp ? err : "out of memory");
            failed++;
        } else {
            expect_copies("sampled step, copies to the device", "copies to the device", 8, 1);
            expect_copies("sampled step, copies to the host", "copies to the host", 4, 1);
        }
        aq_sampler_free(smp);
    }
    aq_session_free(s);
}

/* The weights go up once, with the model's first CUDA session; a second session copies nothing. */
static void check_upload(aq_model *m) {
    aq_session_params p = aq_session_default_params();
    char err[512];
    int i;
    p.backend = AQ_BACKEND_CUDA;
    p.n_ctx = 4096;
    printf(" sessions on the model:\n");
    for (i = 0; i < 2; i++) {
        aqe_traffic copies, weights;
        aq_session *s;
        int ok;
        aqe_traffic_reset();
        s = aq_session_new(m, &p, err, sizeof err);
        aqe_traffic_get("copies to the device", &copies);
        aqe_traffic_get("a weight matrix", &weights);
        ok = s && aq_session_backend(s) == AQ_BACKEND_CUDA && (i == 0 ? copies.loaded >= weights.allocated : copies.loaded == 0);
        printf("  %-44s %11llu bytes in %8llu copies, design %s%llu  %s\n",
               i == 0 ? "first session, copies to the device" : "second session, copies to the device", copies.loaded, copies.loads,
               i == 0 ? "at least the weights' " : "", i == 0 ? weights.allocated : 0ull, ok ? "ok" : "FAIL");
        if (ok) passed++;
        else failed++;
        aq_session_free(s);
    }
}

/* aqc_profile_step (aq-gpu-check's breakdown of a step on the GPU): its events must be nodes of
   the captured step, each per-layer stage seen once per layer, and every stage timed. */
static void check_profile(aq_model *m, int ctx, int budget, int dense_layers) {
    const aq_config *c = aq_model_config(m);
    aq_session_params p = aq_session_default_params();
    aqc_profile_entry e[32];
    char err[512];
    int n, i, ok = 1, qkv_calls = 0, quest_calls = 0;
    aq_session *s;
    p.backend = AQ_BACKEND_CUDA;
    p.n_ctx = ctx + 64;
    p.quest_budget = budget;
    p.quest_dense_layers = dense_layers;
    s = aq_session_new(m, &p, err, sizeof err);
    if (!s || aq_session_backend(s) != AQ_BACKEND_CUDA || aq__session_fill_random(s, ctx, 5, err, sizeof err) ||
        (n = aqc_profile_step(s->cuda, 1, ctx, e, 32, err, sizeof err)) < 0) {
        printf("  profile at %d: %s  FAIL\n", ctx, s && aq_session_backend(s) != AQ_BACKEND_CUDA ? aq_session_backend_note(s) : err);
        failed++;
        aq_session_free(s);
        return;
    }
    for (i = 0; i < n; i++) {
        if (!(e[i].us > 0.0) || e[i].calls < 1) ok = 0;
        if (!strcmp(e[i].name, "q, k, v")) qkv_calls = e[i].calls;
        if (!strcmp(e[i].name, "Quest selection")) quest_calls = e[i].calls;
    }
    ok = ok && n > 0 && qkv_calls == c->n_layers && quest_calls == c->n_layers - dense_layers;
    printf(" profile of a step at %d positions, Quest %d: %d stages, \"q, k, v\" %d times, \"Quest selection\" %d, "
           "design %d and %d, every stage timed  %s\n", ctx, budget, n, qkv_calls, quest_calls, c->n_layers, c->n_layers - dense_layers,
           ok ? "ok" : "FAIL");
    if (ok) passed++;
    else failed++;
    aq_session_free(s);
}

int main(int argc, char **argv) {
    char err[512];
    aq_model *m;
    if (argc != 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(argc == 2 ? stdout : stderr, "usage: traffic MODEL.gguf (a GQA model from aq-synth --kv-heads)\n");
        return argc == 2 ? 0 : 2;
    }
    if (!(m = aq_model_load(argv[1], err, sizeof err))) {
        fprintf(stderr, "traffic: %s\n", err);
        return 1;
    }
    printf("decode-step loads against the design\n");
    check_upload(m);
    check_step(m, 3000, 0, 0, 16);
    check_step(m, 3000, 512, 1, 16);
    check_step(m, 3000, 512, 1, 8);
    check_step(m, 300, 512, 1, 16);   /* the context fits the budget: dense */
    check_profile(m, 3000, 512, 1);
    aq_model_free(m);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
