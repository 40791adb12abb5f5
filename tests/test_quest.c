/* Quest: the bound, the page kernels against their references, selection + sparse attention
   against a brute-force reference at page boundaries (GQA and MHA, f32 and f16 KV, split
   lists), bit-identity with dense attention when the budget covers the context, and fidelity. */

static void test_quest_bound_holds(void) {
    float keys[16][64], q[8 * 64], kmin[64], kmax[64];
    int trial, bad = 0, simd = aq__detect_simd();
    for (trial = 0; trial < 500; trial++) {
        int nh = 1 + trial % 8, i, j, h;
        for (i = 0; i < 64; i++) { kmin[i] = FLT_MAX; kmax[i] = -FLT_MAX; }
        for (j = 0; j < 16; j++)
            for (i = 0; i < 64; i++) {
                keys[j][i] = rnd_uniform(-2, 2) * (i % 7 == 0 ? 5.0f : 1.0f);
                kmin[i] = fminf(kmin[i], keys[j][i]);
                kmax[i] = fmaxf(kmax[i], keys[j][i]);
            }
        for (i = 0; i < nh * 64; i++) q[i] = rnd_uniform(-1, 1);
        for (j = 0; j < 16; j++) {
            float dot = 0, bound_ref = aq__page_bound_ref(kmin, kmax, q, nh, 64), A[64], B[64], bound;
            aq__bound_coeffs(q, nh, 64, A, B);   /* the two-dot-product form the selection uses */
            bound = aq__dot(A, kmax, 64, simd) + aq__dot(B, kmin, 64, simd);
            for (h = 0; h < nh; h++)
                for (i = 0; i < 64; i++) dot += q[h * 64 + i] * keys[j][i];   /* summed over the group */
            bad += dot > bound_ref + 1e-4f || fabsf(bound - bound_ref) > 1e-4f * (1 + fabsf(bound_ref));
        }
    }
    CHECKF(bad == 0, "%d violations", bad);
}

/* The stored bounds (f16, and 8-bit for complete pages) enclose every key of their page,
   whatever the rounding. */
static void test_stored_bounds_enclose_keys(void) {
    char err[256];
    aq_model *m = load_model(stories());
    aq_session_params p = aq_session_default_params();
    aq_session *s;
    int kv, bits, bad = 0, l, pos, kvh, i;
    if (!m) return;
    for (bits = 8; bits <= 16; bits += 8)
        for (kv = 0; kv < 2; kv++) {
            p.kv_type = kv; p.n_ctx = 100; p.quest_bounds = bits;
            s = aq_session_new(m, &p, err, sizeof err);
            aq__session_fill_random(s, 100, 3, err, sizeof err);
            for (l = 0; l < 5; l++)
                for (pos = 0; pos < (bits == 8 ? 96 : 100); pos++)   /* 8 bits: complete pages only */
                    for (kvh = 0; kvh < 4; kvh++) {
                        const char *page = aq__page(s, l, pos / 16);
                        float kmin[8], kmax[8];
                        aq__bounds_decode(aq__bounds(s, l, pos / 16, kvh), bits, 8, kmin, kmax);
                        for (i = 0; i < 8; i++) {
                            size_t at = ((size_t)kvh * 8 + i) * 16 + pos % 16;
                            float key = kv ? aq_f16_to_f32(aq__rd16(page + 2 * at)) : ((const float *)page)[at];
                            bad += key < kmin[i] || key > kmax[i];
                        }
                    }
            aq_session_free(s);
        }
    CHECKF(bad == 0, "%d keys outside their page's bounds", bad);
    CHECK(aq_f16_to_f32(aq__f16_directed(0.1f, 0)) <= 0.1f && aq_f16_to_f32(aq__f16_directed(0.1f, 1)) >= 0.1f);
    CHECK(aq_f16_to_f32(aq__f16_directed(-1e-9f, 0)) < 0 && aq_f16_to_f32(aq__f16_directed(1e-9f, 1)) > 0);
    aq_model_free(m);
}

/* 8-bit bounds: outward, within one step of the box, the smallest scale that holds the block,
   also for zeros, tiny, huge and ragged (head_dim 12: a block of 8) boxes; the page bound from
   the record, scalar and SIMD, against the dequantized box in double. */
static void test_bounds8(void) {
    static const int dims[] = {8, 12, 64, 128};
    float kmin[128], kmax[128], lo[128], hi[128], coef[256];
    uint8_t record[2 * 128 + 2 * 16];
    int trial, bad = 0, bad_dot = 0, simd = aq__detect_simd();
    for (trial = 0; trial < 400; trial++) {
        const int hd = dims[trial % 4], kind = trial / 4 % 5;
        aq__attn_kernels ref = aq__attn_kernels_for(0, 16, hd);
        int i, b;
        double want = 0;
        for (i = 0; i < hd; i++) {
            float a = rnd_uniform(-2, 2) * (i % 13 == 0 ? 8.0f : 1.0f), c = rnd_uniform(-2, 2);
            if (kind == 1) a = c = 0.0f;                           /* a block of zeros */
            if (kind == 2) { a *= 1e-6f; c *= 1e-6f; }             /* scales below f16's normal range */
            if (kind == 3 && i == 0) { a = -3e7f; c = 2e7f; }      /* past what int8 x f16 can hold */
            if (kind == 4) c = a;                                  /* one key: min = max */
            kmin[i] = a < c ? a : c;
            kmax[i] = a < c ? c : a;
        }
        aq__bounds8_quantize(kmin, kmax, hd, record);
        aq__bounds_decode(record, 8, hd, lo, hi);
        for (i = 0; i < hd; i++) bad += !(lo[i] <= kmin[i]) || !(hi[i] >= kmax[i]);
        for (b = 0; b * 16 < 2 * hd; b++) {   /* the scale: 127 d holds the block, the f16 below it does not */
            uint16_t dh = aq__rd16(record + 2 * hd + 2 * b);
            float d = aq_f16_to_f32(dh), amax = 0;
            for (i = b * 16; i < 2 * hd && i < b * 16 + 16; i++) {
                float x = i < hd ? kmin[i] : kmax[i - hd], got = i < hd ? lo[i] : hi[i - hd];
                amax = fabsf(x) > amax ? fabsf(x) : amax;
                if (d <= 65504.0f) bad += fabsf(got - x) > d;   /* within one step */
            }
            bad += amax <= 127.0f * 65504.0f && (127.0f * d < amax || (dh > 0 && 127.0f * aq_f16_to_f32((uint16_t)(dh - 1)) >= amax));
        }
        if (kind == 3) continue;   /* infinite bounds: no finite score to compare */
        for (i = 0; i < 2 * hd; i++) coef[i] = rnd_uniform(-1, 1);
        for (i = 0; i < hd; i++) want += (double)coef[i] * lo[i] + (double)coef[hd + i] * hi[i];
        {   /* every SIMD level this CPU has (AVX2 and AVX-512 twins), and the scalar reference */
            int level;
            for (level = 0; level <= simd; level++) {
                float got = aq__attn_kernels_for(level, 16, hd).bound8(record, coef, hd);
                bad_dot += fabs(got - want) > 1e-4 * (1 + fabs(want));
                if (hd % 8) bad_dot += got != ref.bound8(record, coef, hd);   /* ragged: the scalar reference */
            }
        }
    }
    CHECKF(bad == 0, "%d bound or scale violations", bad);
    CHECKF(bad_dot == 0, "%d page bounds off", bad_dot);
}

static void test_page_kernels_match_reference(void) {
    float kt[64 * 16], v[16 * 64], q[8 * 64], w[8 * 16], s1[8 * 16], s2[8 * 16], o1[8 * 64], o2[8 * 64], x1[40], x2[40];
    uint16_t kt16[64 * 16], v16[16 * 64];
    int simd = aq__detect_simd(), i, e;
    aq__attn_kernels kn = aq__attn_kernels_for(simd, 16, 64);
    for (i = 0; i < 64 * 16; i++) { kt[i] = rnd_uniform(-1, 1); v[i] = rnd_uniform(-1, 1); kt16[i] = aq_f32_to_f16(kt[i]); v16[i] = aq_f32_to_f16(v[i]); }
    for (i = 0; i < 8 * 64; i++) q[i] = rnd_uniform(-1, 1);
    for (i = 0; i < 8 * 16; i++) w[i] = rnd_uniform(0, 1);
    for (e = 0; e < 2; e++) {
        const void *K = e ? (const void *)kt16 : (const void *)kt, *V = e ? (const void *)v16 : (const void *)v;
        size_t elem = e ? 2 : 4;
        aq__page_scores_ref(K, elem, q, 8, 64, 16, 0.125f, s1);
        kn.scores(K, elem, q, 8, 64, 16, 0.125f, s2);
        for (i = 0; i < 8 * 16; i++) CHECK(fabsf(s1[i] - s2[i]) < 1e-5f);
        memset(o1, 0, sizeof o1); memset(o2, 0, sizeof o2);
        aq__page_values_ref(V, elem, w, 8, 64, 16, 3, 13, o1);
        kn.values(V, elem, w, 8, 64, 16, 3, 13, o2);
        for (i = 0; i < 8 * 64; i++) CHECK(fabsf(o1[i] - o2[i]) < 1e-5f);
    }
    for (i = 0; i < 40; i++) x1[i] = x2[i] = rnd_uniform(-80, 0);
    CHECK(fabsf(aq__exp_sum_ref(x1, 37, 1.0f) - kn.exp_sum(x2, 37, 1.0f)) < 1e-6f);
    for (i = 0; i < 37; i++) CHECKF(fabsf(x1[i] - x2[i]) <= 2e-7f * x1[i] + 1e-30f, "exp %g vs %g", x2[i], x1[i]);
}

/* Attention of one decode step at position pos computed from scratch from the cache contents. */
static void reference_attention(const aq_session *s, int layer, int pos, int mode, float *out) {
    const aq_config *c = &s->m->cfg;
    int P = s->page_size, hd = c->head_dim, group = c->n_heads / c->n_kv_heads, h, t, i, last = pos / P;
    int keep = s->p.quest_budget / P - 1;
    double *sc = (double *)malloc(sizeof(double) * (size_t)(pos + 1));
    char *use = (char *)malloc((size_t)(last + 1));
    for (h = 0; h < c->n_heads; h++) {
        int kvh = h / group;
        const float *q = s->q + (size_t)h * hd;
        double max = -1e300, sum = 0;
        memset(use, 0, (size_t)(last + 1));
        if (mode == AQ__ATTN_QUEST) {   /* brute force: all bounds, sorted, ties to the lower page */
            int list_first = s->p.quest_per_head ? h : kvh * group, list_n = s->p.quest_per_head ? 1 : group, p, k, r;
            for (k = 0; k < keep; k++) {
                int best = -1;
                double best_u = 0;
                for (p = 0; p < last; p++) {
                    float mn[256], mx[256];
                    double u = 0;
                    if (use[p]) continue;
                    aq__bounds_decode(aq__bounds(s, layer, p, kvh), s->p.quest_bounds, hd, mn, mx);
                    for (r = 0; r < list_n; r++)
                        for (i = 0; i < hd; i++) {
                            double a = (double)s->q[(size_t)(list_first + r) * hd + i] * mn[i];
                            double b = (double)s->q[(size_t)(list_first + r) * hd + i] * mx[i];
                            u += a > b ? a : b;
                        }
                    if (best < 0 || u > best_u + 1e-6 * fabs(best_u)) { best = p; best_u = u; }
                }
                use[best] = 1;
            }
            use[last] = 1;
        }
        for (t = 0; t <= pos; t++) {
            const char *page = aq__page(s, layer, t / P);
            double dot = 0;
            int in = mode == AQ__ATTN_DENSE || (mode == AQ__ATTN_QUEST && use[t / P]) || (mode == AQ__ATTN_WINDOW && t > pos - s->p.window);
            sc[t] = -1e300;
            if (!in) continue;
            for (i = 0; i < hd; i++) {
                size_t at = ((size_t)kvh * hd + i) * P + t % P;
                dot += q[i] * (s->kv_elem == 2 ? aq_f16_to_f32(aq__rd16(page + 2 * at)) : ((const float *)page)[at]);
            }
            sc[t] = dot / sqrt((double)hd);
            max = sc[t] > max ? sc[t] : max;
        }
        for (i = 0; i < hd; i++) out[h * hd + i] = 0;
        {
            double *o = (double *)calloc((size_t)hd, sizeof(double));
            for (t = 0; t <= pos; t++) {
                const char *page = aq__page(s, layer, t / P) + s->v_offset;
                double p_t;
                if (sc[t] <= -1e299) continue;
                p_t = exp(sc[t] - max);
                sum += p_t;
                for (i = 0; i < hd; i++) {
                    size_t at = ((size_t)kvh * P + t % P) * hd + i;
                    o[i] += p_t * (s->kv_elem == 2 ? aq_f16_to_f32(aq__rd16(page + 2 * at)) : ((const float *)page)[at]);
                }
            }
            for (i = 0; i < hd; i++) out[h * hd + i] = (float)(o[i] / sum);
            free(o);
        }
    }
    free(sc);
    free(use);
}

/* Random cache of L positions, a random query at position L-1, one layer's attention. */
static void check_attention_against_reference(const aq_model *m, const char *what, int L, int threads, int kv_type, int budget,
                                              int per_head, int window, int bounds) {
    char err[256];
    aq_session_params p = aq_session_default_params();
    aq_session *s;
    const aq_config *c = aq_model_config(m);
    float *want;
    int mode, i;
    p.n_threads = threads; p.n_ctx = L + 8; p.kv_type = kv_type; p.quest_budget = budget; p.quest_per_head = per_head; p.window = window;
    p.quest_bounds = bounds;
    s = aq_session_new(m, &p, err, sizeof err);
    if (!s) { CHECKF(0, "%s", err); return; }
    CHECK(aq__session_fill_random(s, L, 7 + (uint64_t)L, err, sizeof err) == 0);
    for (i = 0; i < c->n_heads * c->head_dim; i++) s->q[i] = rnd_uniform(-3, 3);
    mode = budget && L > budget ? AQ__ATTN_QUEST : window && L > window ? AQ__ATTN_WINDOW : AQ__ATTN_DENSE;
    aq__attention_decode(s, 2, L - 1);
    want = (float *)malloc(sizeof(float) * (size_t)c->n_heads * c->head_dim);
    reference_attention(s, 2, L - 1, mode, want);
    {
        float d = max_abs_diff(want, s->att_out, (size_t)c->n_heads * c->head_dim);
        CHECKF(d < 2e-4f, "%s L=%d threads=%d kv=%s budget=%d per_head=%d window=%d bounds=%d: differs by %g", what, L, threads,
               kv_type ? "f16" : "f32", budget, per_head, window, bounds, d);
    }
    free(want);
    aq_session_free(s);
}

static void test_quest_attention_matches_brute_force(void) {
    static const int lengths[] = {1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 100, 257, 600};
    char cmd[1024], out[256], err[256];
    aq_model *gqa = load_model(stories()), *mha;
    size_t i;
    int kv;
    snprintf(cmd, sizeof cmd, "%s/tools/aq-synth --dim 128 --layers 3 --heads 4 --kv-heads 4 --ff 128 --ctx 1024 --type f32 --vocab %s -o %s 2>/dev/null",
             AQ_BIN_DIR, shared_path("models/ggml-vocab-llama-spm.gguf"), tmp_path("mha.gguf"));
    CHECK(run_cmd(cmd, out, sizeof out) == 0);
    mha = aq_model_load(tmp_path("mha.gguf"), err, sizeof err);
    CHECKF(gqa && mha, "%s", err);
    if (!gqa || !mha) { aq_model_free(gqa); aq_model_free(mha); return; }
    for (i = 0; i < sizeof lengths / sizeof *lengths; i++)
        for (kv = 0; kv < 2; kv++) {
            int L = lengths[i], threads = L == 600 ? 4 : 2;   /* 600: lists split across threads */
            check_attention_against_reference(gqa, "GQA dense", L, threads, kv, 0, 0, 0, 0);
            check_attention_against_reference(gqa, "GQA quest", L, threads, kv, 32, 0, 0, 0);
            check_attention_against_reference(gqa, "GQA quest", L, threads, kv, 48, 0, 0, 0);
            check_attention_against_reference(gqa, "GQA quest, 8-bit bounds", L, threads, kv, 48, 0, 0, 8);
            check_attention_against_reference(gqa, "GQA quest per head", L, threads, kv, 64, 1, 0, 0);
            check_attention_against_reference(gqa, "GQA quest per head, 8-bit bounds", L, threads, kv, 64, 1, 0, 8);
            check_attention_against_reference(gqa, "GQA window", L, threads, kv, 0, 0, 20, 0);
            check_attention_against_reference(mha, "MHA quest", L, threads, kv, 32, 0, 0, 0);
            check_attention_against_reference(mha, "MHA quest, 8-bit bounds", L, threads, kv, 32, 0, 0, 8);
            check_attention_against_reference(mha, "MHA quest", L, threads, kv, 256, 0, 0, 0);
            check_attention_against_reference(mha, "MHA window", L, threads, kv, 0, 0, 33, 0);
        }
    aq_model_free(gqa);
    aq_model_free(mha);
}

/* Logits of decoding the tokens one at a time with the given session settings. */
static float *decode_logits(const aq_model *m, const int32_t *ids, int n, int kv_type, int budget, int window) {
    char err[256];
    aq_session_params p = aq_session_default_params();
    aq_session *s;
    int V = aq_model_config(m)->n_vocab, i;
    float *out = (float *)malloc(sizeof(float) * (size_t)n * V);
    p.n_threads = 2; p.kv_type = kv_type; p.quest_budget = budget; p.window = window;
    s = aq_session_new(m, &p, err, sizeof err);
    for (i = 0; s && i < n; i++) CHECK(aq_eval(s, ids + i, 1, out + (size_t)i * V, err, sizeof err) == 0);
    aq_session_free(s);
    return out;
}

static int top1_agreement(const float *a, const float *b, int n, int V) {
    int i, k, agree = 0;
    for (i = 0; i < n; i++) {
        int x = 0, y = 0;
        for (k = 1; k < V; k++) { if (a[i * V + k] > a[i * V + x]) x = k; if (b[i * V + k] > b[i * V + y]) y = k; }
        agree += x == y;
    }
    return agree;
}

static void test_quest_with_full_budget_is_dense(void) {
    aq_model *m = load_model(stories());
    int32_t ids[300];
    int n, V;
    float *dense, *quest, *f16, *sparse;
    if (!m) return;
    n = real_tokens(m, ids, 300);
    V = aq_model_config(m)->n_vocab;
    dense = decode_logits(m, ids, n, AQ_KV_F32, 0, 0);
    quest = decode_logits(m, ids, n, AQ_KV_F32, 512, 0);
    CHECK(memcmp(dense, quest, sizeof(float) * (size_t)n * V) == 0);   /* bit for bit */
    f16 = decode_logits(m, ids, n, AQ_KV_F16, 0, 0);
    CHECKF(top1_agreement(dense, f16, n, V) >= 0.97 * n, "f16 KV: %d/%d", top1_agreement(dense, f16, n, V), n);
    sparse = decode_logits(m, ids, n, AQ_KV_F32, 128, 0);
    CHECKF(top1_agreement(dense, sparse, n, V) >= 0.9 * n, "budget 128: %d/%d", top1_agreement(dense, sparse, n, V), n);
    free(dense); free(quest); free(f16); free(sparse);
    {   /* the session reports what it read */
        char err[256];
        aq_session_params p = aq_session_default_params();
        aq_session *s;
        aq_session_stats st;
        int i;
        p.quest_budget = 64;
        s = aq_session_new(m, &p, err, sizeof err);
        for (i = 0; i < 200; i++) aq_eval(s, ids + i, 1, NULL, err, sizeof err);
        aq_session_get_stats(s, &st);
        CHECK(st.decode_steps == 200 && st.pages_scored > 0 && st.pages_read > 0 && st.attention_seconds > 0);
        CHECK(aq_session_kv_bytes(s) > 0);
        aq_session_free(s);
        p.quest_budget = 8;   /* less than two pages */
        CHECK(aq_session_new(m, &p, err, sizeof err) == NULL && strstr(err, "quest_budget"));
        p.quest_budget = 64;
        p.quest_bounds = 4;
        CHECK(aq_session_new(m, &p, err, sizeof err) == NULL && strstr(err, "quest_bounds 4"));
    }
    aq_model_free(m);
}

/* Decode-mode perplexity over windows of 512 tokens. */
static double decode_perplexity(const aq_model *m, const int32_t *ids, int n, int budget, int window) {
    int V = aq_model_config(m)->n_vocab, w, t;
    double nll = 0;
    long scored = 0;
    for (w = 0; w + 1 < n; w += 512) {
        int len = n - w < 512 ? n - w : 512;
        float *l = decode_logits(m, ids + w, len, AQ_KV_F32, budget, window);
        for (t = 0; t + 1 < len; t++, scored++) nll += tool_log_sum_exp(l + (size_t)t * V, V) - l[(size_t)t * V + ids[w + t + 1]];
        free(l);
    }
    return exp(nll / (double)scored);
}

/* The bar: Quest beats the most-recent-tokens window at small budgets, on held-out text. */
static void test_quest_beats_window(void) {
    aq_model *m = load_model(stories());
    int64_t n;
    int32_t *ids;
    static const int budgets[] = {32, 64};
    int i;
    if (!m) return;
    ids = tool_tokenize_documents("test", aq_model_vocab(m), shared_path("text/tinystories-valid.txt"), 8192, &n);
    for (i = 0; i < 2; i++) {
        double q = decode_perplexity(m, ids, (int)n, budgets[i], 0), w = decode_perplexity(m, ids, (int)n, 0, budgets[i]);
        printf("    budget %d: quest %.4f, window %.4f\n", budgets[i], q, w);
        CHECK(q < w);
    }
    free(ids);
    aq_model_free(m);
}

static void quest_tests(void) {
    RUN(test_quest_bound_holds);
    RUN(test_stored_bounds_enclose_keys);
    RUN(test_bounds8);
    RUN(test_page_kernels_match_reference);
    RUN(test_quest_attention_matches_brute_force);
    RUN(test_quest_with_full_budget_is_dense);
    RUN(test_quest_beats_window);
}
