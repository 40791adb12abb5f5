/* aq-gpu-check: the GPU path against the CPU, and its speed, in one run (tools/gpu-check.sh runs
   it on the GPU machine).  Three parts:
     1. every kernel on fresh random inputs against a CPU reference in double precision:
        int4 / OliVe / f16 GEMV (decode), the same as prompt GEMMs, and attention (append, page bounds,
        Quest score and top-k, sparse and dense paged attention, merge) for several shapes, and
        the decode step's argmax and sampler's draw;
     2. whole models teacher-forced over the same tokens of real text on GPU and CPU: prompt
        batches and then decode steps, next-token argmax agreement and logit differences, and
        greedy and sampled text (the draw on the device);
     3. one timing table: GEMV vs cuBLAS on Llama-2-7B shapes, dense vs Quest attention at 32K,
        and the whole decode step of a Llama-2-7B-shape int4 model, with where its time goes;
        apart (--part gqa), the decode step of a model with grouped KV heads (Llama-3-8B's shape).
   The same checks run without a GPU on tests/cuda_emu (make test-cuda-emu).
   Exit status 1 when a check fails. */
#define AWQ_QUEST_IMPLEMENTATION
#include "../awq_quest.h"
#include "tool_util.h"

#ifndef AQ_CUDA
#error "aq-gpu-check needs the CUDA build: make cuda"
#endif

static int failures;

static void usage(FILE *f) {
    fprintf(f,
            "usage: aq-gpu-check [options]\n"
            "  --shared DIR       the shared data folder (models/stories260K.gguf, text/tinystories-valid.txt)\n"
            "                     (default: " AQ_SHARED_DIR ")\n"
            "  --model PATH       a quantized model to run teacher-forced too (e.g. stories260K through aq-quantize\n"
            "                     --method rtn or olive); up to 4\n"
            "  --model-7b PATH    a Llama-2-7B-shape int4 model for the decode-step timing (aq-synth --type aq4_g128)\n"
            "  --model-gqa PATH   a model with grouped KV heads (aq-synth --preset llama3-8b) for the gqa part\n"
            "  --tokens N         teacher-forced tokens per model (default 2000)\n"
            "  --part P           run one part: kernels, models or timing (default: all three); separate\n"
            "                     processes keep a fault in one part (a bad address poisons the CUDA\n"
            "                     context) from hiding the others.  decode: only the decode-step timings;\n"
            "                     gqa: the --model-gqa model's decode step at 32K, dense and Quest\n"
            "  --decode-ctx N     only the decode-step timings at context N (e.g. under compute-sanitizer)\n"
            "  --short            timing: two GEMV shapes, the attention, and the decode step in graphs\n"
            "                     at 4K dense and 32K, with the 32K Quest step's profile\n"
            "  --no-one-grid      leave out Quest in one grid (an experiment), its checks and its timing\n"
            "  -h, --help         this text\n");
}

static uint64_t rng = 88172645463325252ull;
static float uniform(void) {   /* [-1, 1) */
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)(rng >> 40) / (float)(1 << 23) - 1.0f;
}

static double rel_err(const float *y, const double *ref, int64_t n) {
    double num = 0, den = 0;
    int64_t i;
    for (i = 0; i < n; i++) {
        if (!isfinite(y[i])) return INFINITY;
        num += (y[i] - ref[i]) * (y[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static void verdict(const char *what, double err, double limit) {
    int ok = err <= limit;
    printf("  %-58s rel err %.2e (limit %.0e)  %s\n", what, err, limit, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

/* ---- 1. kernels ---- */

/* A decode GEMV's input is prepped first: prep "RMSNorm" (random weights), "SwiGLU" (a random
   gate) or "copy". */
static void check_matmul(uint32_t type, int64_t rows, int64_t cols, int n_tokens, const char *prep) {
    char err[512], what[160];
    const size_t row_bytes = (size_t)aq_type_row_bytes(type, cols);
    uint8_t *data = (uint8_t *)malloc(row_bytes * (size_t)rows);
    float *w = (float *)malloc(sizeof(float) * (size_t)cols), *x = (float *)malloc(sizeof(float) * (size_t)(cols * n_tokens));
    float *y = (float *)malloc(sizeof(float) * (size_t)(rows * n_tokens));
    float *gate = NULL, *norm = NULL, *xp = (float *)malloc(sizeof(float) * (size_t)(cols * n_tokens));
    const float eps = 1e-5f;
    double *ref = (double *)calloc((size_t)(rows * n_tokens), sizeof(double));
    aq_weight wt;
    const aq_weight *wp = &wt;
    aqc_weight d;
    int64_t r, c;
    int t;
    for (r = 0; r < rows; r++) {
        for (c = 0; c < cols; c++) w[c] = 0.05f * uniform();
        if (type == AQ_TYPE_F16)
            for (c = 0; c < cols; c++) ((uint16_t *)(data + r * row_bytes))[c] = aq_f32_to_f16(w[c]);
        else
            aq_quantize_row(type, w, data + r * row_bytes, cols);
    }
    for (c = 0; c < cols * n_tokens; c++) x[c] = uniform();
    for (t = 0; t < n_tokens; t++) x[(size_t)t * cols + (t * 37) % cols] = 60.0f;   /* an activation outlier */
    memcpy(xp, x, sizeof(float) * (size_t)(cols * n_tokens));   /* x as prepped, in the GPU's order of operations */
    if (!strcmp(prep, "RMSNorm")) {
        double ss = 0;
        float inv;
        norm = (float *)malloc(sizeof(float) * (size_t)cols);
        for (c = 0; c < cols; c++) { norm[c] = 1.0f + 0.5f * uniform(); ss += (double)x[c] * x[c]; }
        inv = (float)(1.0 / sqrt(ss / (double)cols + eps));
        for (c = 0; c < cols; c++) xp[c] = norm[c] * (inv * x[c]);
    } else if (!strcmp(prep, "SwiGLU")) {
        gate = (float *)malloc(sizeof(float) * (size_t)cols);
        for (c = 0; c < cols; c++) { gate[c] = 3.0f * uniform(); xp[c] = gate[c] / (1.0f + expf(-gate[c])) * x[c]; }
    }
    for (r = 0; r < rows; r++) {
        aq_dequantize_row(type, data + r * row_bytes, w, cols);
        for (t = 0; t < n_tokens; t++)
            for (c = 0; c < cols; c++) ref[(size_t)t * rows + r] += (double)w[c] * xp[(size_t)t * cols + c];
    }
    wt.type = type; wt.rows = rows; wt.cols = cols; wt.row_bytes = row_bytes; wt.data = data; wt.name = "random";
    if (aq__gpu_pack(&wp, 1, 0, aq__detect_simd(), &d, err, sizeof err) ||
        (n_tokens == 1 ? aqc_check_gemv(&d, 0, x, gate, norm, eps, y, err, sizeof err) : aqc_check_gemm(&d, x, n_tokens, y, err, sizeof err))) {
        printf("  %s %lldx%lld: %s  FAIL\n", aq_type_name(type), (long long)rows, (long long)cols, err);
        failures++;
    } else {
        snprintf(what, sizeof what, "%s %s %lld x %lld, %s", n_tokens == 1 ? "GEMV" : "GEMM", aq_type_name(type), (long long)rows,
                 (long long)cols, n_tokens > 1 ? "7 tokens" : prep);
        verdict(what, rel_err(y, ref, rows * n_tokens), 3e-3);
        if (n_tokens == 1) {   /* the same input again: bit for bit the same output, or a race */
            float *y2 = (float *)malloc(sizeof(float) * (size_t)rows);
            err[0] = '\0';
            if (aqc_check_gemv(&d, 0, x, gate, norm, eps, y2, err, sizeof err) || memcmp(y, y2, sizeof(float) * (size_t)rows)) {
                printf("  %-58s %s  FAIL\n", "  the same GEMV again", err[0] ? err : "a different result");
                failures++;
            }
            /* rows of more than one stage (4096 columns) with the codes stage by stage (an
               experiment): the same loads from other addresses, so bit for bit the same output */
            err[0] = '\0';
            if (d.format == AQC_INT4 && d.cols_padded > 4096) {
                if (aqc_check_gemv(&d, 1, x, gate, norm, eps, y2, err, sizeof err) || memcmp(y, y2, sizeof(float) * (size_t)rows)) {
                    printf("  %-58s %s  FAIL\n", "  the same GEMV, codes stage by stage", err[0] ? err : "a different result");
                    failures++;
                } else
                    printf("  %-58s bit for bit  ok\n", "  the same GEMV, codes stage by stage (an experiment)");
            }
            free(y2);
        }
        aq__gpu_weight_free(&d);
    }
    free(data); free(w); free(x); free(y); free(ref); free(xp); free(gate); free(norm);
}

/* A group the kernels do not take (they find a chunk's group by a shift): refused at upload,
   with a message, not a wrong product. */
static void check_bad_group(void) {
    static uint8_t codes[4 * 96 / 2];
    static uint16_t scales[4], mins[4];
    const float x[96] = {0};
    float y[4];
    char err[512] = "";
    aqc_weight d;
    memset(&d, 0, sizeof d);
    d.format = AQC_INT4; d.rows = 4; d.cols = d.cols_padded = d.group = 96;
    d.data = codes; d.scales = scales; d.mins = mins;
    if (!aqc_check_gemv(&d, 0, x, NULL, NULL, 1e-5f, y, err, sizeof err) || !strstr(err, "group 96")) {
        printf("  %-58s %s  FAIL\n", "int4 weight with groups of 96 refused", err[0] ? err : "accepted");
        failures++;
    } else
        printf("  %-58s %s  ok\n", "int4 weight with groups of 96 refused", err);
}

static float f16_round(float x) { return aq_f16_to_f32(aq_f32_to_f16(x)); }

typedef struct { double score; int page; } page_score;
static int by_score_desc(const void *a, const void *b) {
    const page_score *x = (const page_score *)a, *y = (const page_score *)b;
    if (x->score != y->score) return x->score < y->score ? 1 : -1;
    return x->page - y->page;
}

/* Keys and values of n_ctx positions (f16 values, as the cache stores them), the keys with a
   per-channel bias, so that pages differ and the selection matters; queries in [-2, 2). */
static void random_attention_inputs(float *k, float *v, float *q, int n_ctx, int kv_dim, int q_floats) {
    int64_t i;
    for (i = 0; i < (int64_t)n_ctx * kv_dim; i++) {
        k[i] = f16_round(uniform() + 0.5f * sinf((float)(i % kv_dim) + (float)(i / kv_dim) * 0.01f));
        v[i] = f16_round(uniform());
    }
    for (i = 0; i < q_floats; i++) q[i] = 2.0f * uniform();
}

/* [kmin | kmax] of page p's keys for KV head kvh (k: [position][kv_dim]). */
static void page_box(const float *k, int kv_dim, int kvh, int hd, int P, int p, float *box) {
    int d, j;
    for (d = 0; d < hd; d++) {
        box[d] = INFINITY;
        box[hd + d] = -INFINITY;
        for (j = p * P; j < (p + 1) * P; j++) {
            float x = k[(size_t)j * kv_dim + kvh * hd + d];
            box[d] = x < box[d] ? x : box[d];
            box[hd + d] = x > box[hd + d] ? x : box[hd + d];
        }
    }
}

/* The attention of the queries at the last n_q positions of a context of n_ctx (one: a decode
   step, which budget > 0 puts on Quest; more: a prompt's, each query seeing the keys up to its
   own position), with Quest's bounds of `bits` (16 or 8): the complete pages' bounds byte for
   byte as the CPU stores them, the pages picked as the CPU picks them. */
static void check_attention(int n_ctx, int n_q, int n_heads, int n_kv, int hd, int P, int budget, int bits) {
    char err[512], what[160], pages_of[24];
    const int kv_dim = n_kv * hd, q_dim = n_heads * hd, group = n_heads / n_kv, n_pages = (n_ctx + P - 1) / P, keep = budget / P,
              last = (n_ctx - 1) / P;
    float *k = (float *)malloc(sizeof(float) * (size_t)n_ctx * kv_dim), *v = (float *)malloc(sizeof(float) * (size_t)n_ctx * kv_dim);
    float *q = (float *)malloc(sizeof(float) * (size_t)n_q * q_dim), *out = (float *)malloc(sizeof(float) * (size_t)n_q * q_dim);
    double *ref = (double *)calloc((size_t)n_q * q_dim, sizeof(double));
    int *pages = (int *)calloc((size_t)(n_kv * (keep ? keep : 1)), sizeof(int));
    page_score *ps = (page_score *)malloc(sizeof(page_score) * (size_t)n_pages);
    double *sc = (double *)malloc(sizeof(double) * (size_t)n_ctx);
    const size_t record = aq__bounds_record_bytes(bits, hd);
    uint8_t *bounds = (uint8_t *)malloc(record * (size_t)n_kv * (size_t)(n_ctx / P) + 1), *want = (uint8_t *)malloc(record);
    float *box = (float *)malloc(sizeof(float) * 4 * (size_t)hd);   /* kmin | kmax, then as the bounds give them back */
    int h, kvh, p, d, j, t, wrong_pages = 0, wrong_bounds = 0;
    random_attention_inputs(k, v, q, n_ctx, kv_dim, n_q * q_dim);
    if (aqc_check_attention(n_ctx, n_q, n_heads, n_kv, hd, P, budget, bits, 0, k, v, q, out, pages, bounds, err, sizeof err)) {
        printf("  attention: %s  FAIL\n", err);
        failures++;
        goto done;
    }
    {   /* the same inputs again: bit for bit the same pages and output, or a race between blocks */
        float *out2 = (float *)malloc(sizeof(float) * (size_t)n_q * q_dim);
        int *pages2 = (int *)calloc((size_t)n_kv * (keep ? keep : 1), sizeof(int));
        err[0] = '\0';
        if (aqc_check_attention(n_ctx, n_q, n_heads, n_kv, hd, P, budget, bits, 0, k, v, q, out2, pages2, NULL, err, sizeof err) ||
            memcmp(out, out2, sizeof(float) * (size_t)n_q * q_dim) ||
            (budget && n_ctx > budget && memcmp(pages, pages2, sizeof(int) * (size_t)n_kv * keep))) {
            printf("  attention ctx %d, %d heads / %d KV, the same inputs again: %s  FAIL\n", n_ctx, n_heads, n_kv,
                   err[0] ? err : "a different result");
            failures++;
        }
        free(out2);
        free(pages2);
    }
    for (kvh = 0; kvh < n_kv; kvh++)   /* each complete page's bounds, as the CPU makes them from its keys */
        for (p = 0; p < n_ctx / P; p++) {
            page_box(k, kv_dim, kvh, hd, P, p, box);
            if (bits == 8) aq__bounds8_quantize(box, box + hd, hd, want);
            else
                for (d = 0; d < 2 * hd; d++) { uint16_t x = aq_f32_to_f16(box[d]); memcpy(want + 2 * d, &x, 2); }   /* f16 keys: exact */
            wrong_bounds += memcmp(want, bounds + ((size_t)kvh * (n_ctx / P) + p) * record, record) != 0;
        }
    for (kvh = 0; kvh < n_kv; kvh++) {
        int *list = pages + (size_t)kvh * keep, n_list = keep;
        int list_dense[1] = {0};
        if (budget && n_ctx > budget) {
            /* the CPU's selection: bound scores of complete pages, best keep-1, then the current page */
            double A[256], B[256];
            for (d = 0; d < hd; d++) {
                double sum = 0, abs_sum = 0;
                for (h = 0; h < group; h++) { sum += q[(kvh * group + h) * hd + d]; abs_sum += fabs(q[(kvh * group + h) * hd + d]); }
                A[d] = 0.5 * (sum + abs_sum);
                B[d] = 0.5 * (sum - abs_sum);
            }
            for (p = 0; p < last; p++) {
                double s = 0;
                page_box(k, kv_dim, kvh, hd, P, p, box);
                if (bits == 8) {   /* the box the 8-bit bounds stand for */
                    aq__bounds8_quantize(box, box + hd, hd, want);
                    aq__bounds_decode(want, 8, hd, box, box + hd);
                }
                for (d = 0; d < hd; d++) s += A[d] * box[hd + d] + B[d] * box[d];
                ps[p].score = s;
                ps[p].page = p;
            }
            qsort(ps, (size_t)last, sizeof *ps, by_score_desc);
            for (j = 0; j < keep - 1; j++) {
                int found = 0, g;
                for (g = 0; g < keep - 1; g++) found |= list[g] == ps[j].page;
                /* a page may differ only where the scores tie to rounding */
                if (!found && fabs(ps[j].score - ps[keep - 2].score) > 1e-4 * (1 + fabs(ps[j].score))) wrong_pages++;
            }
            if (list[keep - 1] != last) wrong_pages++;
            for (j = 1; j < keep; j++)
                if (list[j] <= list[j - 1]) wrong_pages++;   /* ascending */
        } else {
            n_list = 0;
            list = list_dense;
        }
        /* reference attention over the pages the GPU read (all of them when dense), each query
           up to its own position */
        for (t = 0; t < n_q; t++)
            for (h = kvh * group; h < (kvh + 1) * group; h++) {
                const float *qh = q + (size_t)t * q_dim + h * hd;
                double *rh = ref + (size_t)t * q_dim + h * hd, mx = -INFINITY, sum = 0;
                const int end = n_ctx - n_q + t + 1;
                int n_keys = 0;
                for (p = 0; p < (n_list ? n_list : n_pages); p++) {
                    int page = n_list ? list[p] : p;
                    for (j = page * P; j < (page + 1) * P && j < end; j++) {
                        double s = 0;
                        for (d = 0; d < hd; d++) s += (double)qh[d] * k[(size_t)j * kv_dim + kvh * hd + d];
                        sc[n_keys++] = s / sqrt((double)hd);
                        mx = sc[n_keys - 1] > mx ? sc[n_keys - 1] : mx;
                    }
                }
                n_keys = 0;
                for (p = 0; p < (n_list ? n_list : n_pages); p++) {
                    int page = n_list ? list[p] : p;
                    for (j = page * P; j < (page + 1) * P && j < end; j++) {
                        double e = exp(sc[n_keys++] - mx);
                        sum += e;
                        for (d = 0; d < hd; d++) rh[d] += e * v[(size_t)j * kv_dim + kvh * hd + d];
                    }
                }
                for (d = 0; d < hd; d++) rh[d] /= sum;
            }
    }
    snprintf(pages_of, sizeof pages_of, P != 16 ? ", pages of %d" : "", P);
    snprintf(what, sizeof what, "attention %s ctx %d, %d heads / %d KV, hd %d%s%s%s", budget && n_ctx > budget ? "Quest" : "dense", n_ctx,
             n_heads, n_kv, hd, pages_of, bits == 8 ? ", 8-bit bounds" : "",
             budget && n_ctx > budget ? ", pages as the CPU picks" : n_q > 1 ? ", a prompt's queries" : "");
    if (wrong_pages) {
        printf("  %-58s %d pages differ from the CPU's selection  FAIL\n", what, wrong_pages);
        failures++;
    }
    if (wrong_bounds) {
        printf("  %-58s %d pages' bounds differ from the CPU's  FAIL\n", what, wrong_bounds);
        failures++;
    }
    verdict(what, rel_err(out, ref, (int64_t)n_q * q_dim), 1e-3);
done:
    free(k); free(v); free(q); free(out); free(ref); free(pages); free(ps); free(sc); free(bounds); free(want); free(box);
}

/* Quest in one grid (an experiment) against the step's kernels on the same inputs, 8-bit bounds:
   run apart, after every other check, because a wait that never ends traps, and a trap ends
   every later launch of the process.  The step's own output was checked above on these shapes. */
static void check_one_grid(int n_ctx, int n_heads, int n_kv, int hd, int P, int budget) {
    char err[512], what[160], pages_of[24];
    const int kv_dim = n_kv * hd, q_dim = n_heads * hd;
    float *k = (float *)malloc(sizeof(float) * (size_t)n_ctx * kv_dim), *v = (float *)malloc(sizeof(float) * (size_t)n_ctx * kv_dim);
    float *q = (float *)malloc(sizeof(float) * (size_t)q_dim), *out = (float *)malloc(sizeof(float) * (size_t)q_dim);
    random_attention_inputs(k, v, q, n_ctx, kv_dim, q_dim);
    snprintf(pages_of, sizeof pages_of, P != 16 ? ", pages of %d" : "", P);
    snprintf(what, sizeof what, "Quest in one grid, ctx %d, %d heads / %d KV, hd %d%s", n_ctx, n_heads, n_kv, hd, pages_of);
    if (aqc_check_attention(n_ctx, 1, n_heads, n_kv, hd, P, budget, 8, 1, k, v, q, out, NULL, NULL, err, sizeof err)) {
        printf("  %-58s %s  FAIL\n", what, err);
        failures++;
    } else
        printf("  %-58s the step's output, twice per attention kernel  ok\n", what);
    free(k); free(v); free(q); free(out);
}

static int by_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* the block top-k (Quest's pages, the sampler's candidates) against a sort, with many ties;
   spread 0: scores in [-8, 8) with a seventh of them tied on five values; 1: the same shape in
   [99.99, 100.01), keys alike in their first 20 bits; 2: every score equal; 3: a quarter above
   (every fourth), half tied (the odd ones), with k between: ties left out before keys taken */
static void check_top_k(int n, int k, int mode, int spread) {
    static const char *modes[3] = {"keys read per pass", "keys in registers", "the argmax kernel"};
    static const char *spreads[4] = {"", ", alike", ", all equal", ", ties at the k-th"};
    char err[512], what[128];
    float *v = (float *)malloc(sizeof(float) * (size_t)n);
    int *got = (int *)malloc(sizeof(int) * (size_t)k), *want = (int *)malloc(sizeof(int) * (size_t)k), i, wrong = 0;
    page_score *ps = (page_score *)malloc(sizeof(page_score) * (size_t)n);
    for (i = 0; i < n; i++) {
        if (spread == 0) v[i] = (i % 7 == 0) ? 0.25f * (float)(i % 5) : uniform() * 8.0f;
        else if (spread == 1) v[i] = 100.0f + ((i % 7 == 0) ? 0.002f * (float)(i % 5) : uniform() * 0.01f);
        else if (spread == 2) v[i] = -1.5f;
        else v[i] = i % 2 ? 5.0f : i % 4 ? -10.0f + uniform() : 10.0f + uniform();
        ps[i].score = v[i];
        ps[i].page = i;
    }
    qsort(ps, (size_t)n, sizeof *ps, by_score_desc);
    for (i = 0; i < k; i++) want[i] = ps[i].page;
    qsort(want, (size_t)k, sizeof *want, by_int);
    snprintf(what, sizeof what, "top-k %d of %d, %s%s", k, n, modes[mode], spreads[spread]);
    if (aqc_check_top_k(v, n, k, mode, got, err, sizeof err)) {
        printf("  %s: %s  FAIL\n", what, err);
        failures++;
    } else {
        for (i = 0; i < k; i++) wrong += got[i] != want[i];
        printf("  %-58s %d of %d indices differ from a sort  %s\n", what, wrong, k, wrong ? "FAIL" : "ok");
        if (wrong) failures++;
    }
    free(v); free(got); free(want); free(ps);
}

/* Whether the CPU sampler (sp) can draw `token` from logits[V] at the uniform r once its inputs
   move by their rounding: r and the top_p / min_p cuts by 1e-4 (the GPU's softmax rounds apart
   from the CPU's), and each logit by up to tol (the GPU's logits against the CPU's; 0 when both
   drew from the same logits).  The logits move so as to widen the token's share of the draw: the
   token up, and those ranked above it down and the rest up (so that its share starts lower), or
   the other way round (so that it ends higher).  Returns 1 when the CPU draws it as is, 2 when
   it takes a move, 0 when no move gets there. */
static int sampler_reaches(const aq_sampler_params *sp, const float *logits, int V, float r, double tol, int32_t token) {
    static const float edge = 1e-4f;
    aq_sampler_params q = *sp;
    aq_sampler *s = aq_sampler_new(sp, V);
    float *moved = (float *)malloc(sizeof(float) * (size_t)V);
    int reached = 0, dir, dr, dp, dm, i;
    if (!s || !moved) { fprintf(stderr, "aq-gpu-check: out of memory\n"); exit(1); }
    if (aq__sampler_pick(s, logits, r) == token) reached = 1;
    for (dir = 0; dir < 3 && !reached; dir++) {
        for (i = 0; i < V; i++) {
            const int above = logits[i] > logits[token] || (logits[i] == logits[token] && i < token);
            const double away = dir == 0 ? 0 : (above == (dir == 1) ? -tol : tol);
            moved[i] = (float)(logits[i] + (i == token ? tol : away));
        }
        for (dr = -1; dr <= 1 && !reached; dr++)
            for (dp = sp->top_p < 1.0f ? -1 : 0; dp <= (sp->top_p < 1.0f ? 1 : 0) && !reached; dp++)
                for (dm = sp->min_p > 0.0f ? -1 : 0; dm <= (sp->min_p > 0.0f ? 1 : 0) && !reached; dm++) {
                    const float rr = r + (float)dr * edge;
                    q.top_p = sp->top_p + (float)dp * edge;
                    q.min_p = sp->min_p + (float)dm * edge;
                    s->p = q;
                    reached = aq__sampler_pick(s, moved, rr < 0 ? 0 : rr > 0.99999994f ? 0.99999994f : rr) == token ? 2 : 0;
                }
    }
    aq_sampler_free(s);
    free(moved);
    return reached;
}

/* The sampled decode's draw (the kernel aqc_step_sample launches) against the CPU sampler on the
   same logits and draws (the first 0, the last just below 1).  spread 0: logits in [-8, 8) with
   a seventh of them tied on five values; 1: five far ahead of the rest (top_p cuts among them);
   2: on steps of 0.5 (ties everywhere, ranked by id). */
static void check_sample(int n, int spread, float temperature, int top_k, float top_p, float min_p, int draws) {
    static const char *spreads[3] = {"", ", five ahead", ", ties"};
    aq_sampler_params sp = aq_sampler_default_params();
    aqc_sampling gp;
    char err[512], what[128];
    float *v = (float *)malloc(sizeof(float) * (size_t)n);
    int i, d, wrong = 0, edges = 0;
    for (i = 0; i < n; i++) {
        if (spread == 0) v[i] = (i % 7 == 0) ? 0.25f * (float)(i % 5) : uniform() * 8.0f;
        else if (spread == 1) v[i] = i % (n / 5) == 3 ? 10.0f + uniform() : uniform() * 3.0f;
        else v[i] = 0.5f * floorf(uniform() * 6.0f);
    }
    sp.temperature = gp.temperature = temperature;
    sp.top_k = gp.top_k = top_k;
    sp.top_p = gp.top_p = top_p;
    sp.min_p = gp.min_p = min_p;
    snprintf(what, sizeof what, "sampler, %d logits, T %.1f, k %d, p %.2f, min-p %.2f%s", n, temperature, top_k, top_p, min_p,
             spreads[spread]);
    for (d = 0; d < draws; d++) {
        const float r = d == 0 ? 0.0f : d == draws - 1 ? 0.99999994f : 0.5f * (uniform() + 1.0f);
        int32_t got;
        if (aqc_check_sample(v, n, &gp, r, &got, err, sizeof err)) {
            printf("  %s: %s  FAIL\n", what, err);
            failures++;
            free(v);
            return;
        }
        switch (sampler_reaches(&sp, v, n, r, 0.0, got)) {
        case 0: wrong++; break;
        case 2: edges++; break;
        }
    }
    printf("  %-58s %d of %d draws not the CPU's (%d more at a rounding edge)  %s\n", what, wrong, draws, edges, wrong ? "FAIL" : "ok");
    if (wrong) failures++;
    free(v);
}

/* ---- 2. models ---- */

/* The CPU's int4 and OliVe kernels round their activations to int8 (per group, for integer
   dot products); the GPU keeps them in f16.  To see whether the GPU computes the model right,
   it is also compared with the CPU running the same weights dequantized to f32, which has no
   activation rounding at all.  Returns the f32 buffers to free, or NULL when there was nothing
   to dequantize. */
static float **dequantize_to_f32(aq_model *m) {
    float **owned = NULL;
    aq_weight *all[8];
    int l, i, n = 0;
    for (l = 0; l <= m->cfg.n_layers; l++) {
        aq__layer *L = l < m->cfg.n_layers ? &m->layers[l] : NULL;
        int k = 0;
        if (L) { all[k++] = &L->wq; all[k++] = &L->wk; all[k++] = &L->wv; all[k++] = &L->wo; all[k++] = &L->w_gate; all[k++] = &L->w_up; all[k++] = &L->w_down; }
        else all[k++] = &m->output;
        for (i = 0; i < k; i++) {
            aq_weight *w = all[i];
            float *d;
            int64_t r;
            if (w->type == AQ_TYPE_F32 || w->type == AQ_TYPE_F16 || w->type == AQ_TYPE_BF16) continue;
            d = (float *)malloc(sizeof(float) * (size_t)(w->rows * w->cols));
            if (!d) { fprintf(stderr, "aq-gpu-check: out of memory\n"); exit(1); }
            for (r = 0; r < w->rows; r++) aq_dequantize_row(w->type, (const uint8_t *)w->data + r * w->row_bytes, d + r * w->cols, w->cols);
            w->type = AQ_TYPE_F32;
            w->row_bytes = (size_t)w->cols * 4;
            w->data = d;
            owned = (float **)realloc(owned, sizeof(float *) * (size_t)(n + 2));
            owned[n++] = d;
            owned[n] = NULL;
        }
    }
    return owned;
}

/* Teacher-forced logits of a session over ids[0..n), in windows of `window` tokens: the first
   `prompt` as one prompt batch, the rest one decode step each.  Row t of out predicts ids[t+1]. */
static int teacher_forced(aq_session *s, const int32_t *ids, int64_t n, int window, int prompt, float *out, int V, char *err,
                          size_t err_len) {
    int64_t pos;
    int t;
    for (pos = 0; pos + 1 < n; pos += window) {
        int len = n - pos < window ? (int)(n - pos) : window, first = len < prompt ? len : prompt;
        aq_session_reset(s);
        if (aq_eval_all(s, ids + pos, first, out + (size_t)pos * V, err, err_len)) return -1;
        for (t = first; t < len; t++)
            if (aq_eval(s, ids + pos + t, 1, out + (size_t)(pos + t) * V, err, err_len)) return -1;
    }
    return 0;
}

/* Argmax agreement (fraction) of two teacher-forced logit sets, and their mean and largest
   absolute logit difference; rows whose next token lies in the next window are not scored. */
static double agreement(const float *a, const float *b, int64_t n, int window, int V, double *mean_diff, double *max_diff,
                        int64_t *n_scored) {
    int64_t pos, scored = 0, agree = 0;
    double sum = 0;
    int t, k;
    *max_diff = 0;
    for (pos = 0; pos + 1 < n; pos += window) {
        int len = n - pos < window ? (int)(n - pos) : window;
        for (t = 0; t + 1 < len; t++, scored++) {
            const float *x = a + (size_t)(pos + t) * V, *y = b + (size_t)(pos + t) * V;
            int bx = 0, by = 0;
            for (k = 0; k < V; k++) {
                double d = fabs((double)x[k] - y[k]);
                *max_diff = d > *max_diff ? d : *max_diff;
                sum += d;
                bx = x[k] > x[bx] ? k : bx;
                by = y[k] > y[by] ? k : by;
            }
            agree += bx == by;
        }
    }
    *mean_diff = sum / ((double)(scored ? scored : 1) * V);
    *n_scored = scored;
    return scored ? (double)agree / (double)scored : 0.0;
}

/* The reference's logits where the GPU's text first leaves the CPU's, at step `step`: after the
   prompt ids[0..8) and then tc[0..step).  The reference is the CPU session with the weights in
   f32 when there is one (the GPU's f16 activations are closer to it than to the CPU's int8 ones). */
static int logits_at_step(aq_session *ref, const int32_t *ids, const int32_t *tc, int step, float *logits) {
    char err[512];
    int j, ok;
    aq_session_reset(ref);
    ok = aq_eval(ref, ids, 8, logits, err, sizeof err) == 0;
    for (j = 1; ok && j <= step; j++) ok = aq_eval(ref, &tc[j - 1], 1, logits, err, sizeof err) == 0;
    return ok;
}

/* There greedy's token must be a near tie: at most tol below the reference's best logit.
   Returns 1 when it is, with the gap; 0 (a wrong argmax, or a broken cache) when not. */
static int greedy_near_tie(aq_session *ref, const int32_t *ids, const int32_t *tc, int step, int32_t gpu_token, float *logits,
                           int V, double tol, double *gap) {
    int j;
    if (!logits_at_step(ref, ids, tc, step, logits)) { *gap = INFINITY; return 0; }
    float best = logits[0];
    for (j = 1; j < V; j++) best = logits[j] > best ? logits[j] : best;
    *gap = (double)best - logits[gpu_token];
    return *gap <= tol;
}

static void check_model(const char *path, const char *text, int n_tokens, int budget, int bounds, int one_grid) {
    char err[512];
    aq_model *m = aq_model_load(path, err, sizeof err), *exact_model = NULL;
    aq_session_params p = aq_session_default_params();
    aq_session *cpu = NULL, *gpu = NULL, *exact = NULL;
    int32_t *ids = NULL;
    int64_t n = 0, scored = 0;
    float *lc = NULL, *lg = NULL, *le = NULL, **owned = NULL;
    int V, window = 500, prompt = 100, k;
    double mean_diff, max_diff, gpu_cpu, gpu_exact = 0, cpu_exact = 0, tie_tol;
    if (!m) { printf("  %s: %s  FAIL\n", path, err); failures++; return; }
    V = aq_model_config(m)->n_vocab;
    ids = tool_tokenize_documents("aq-gpu-check", aq_model_vocab(m), text, n_tokens, &n);
    p.n_ctx = window; p.n_batch = window; p.quest_budget = budget; p.quest_bounds = bounds;
    p.kv_type = AQ_KV_F16;   /* the GPU's cache is f16 whatever kv_type says: the CPU's the same, like for like */
    cpu = aq_session_new(m, &p, err, sizeof err);
    if (!budget && (exact_model = aq_model_load(path, err, sizeof err)) && (owned = dequantize_to_f32(exact_model)))
        exact = aq_session_new(exact_model, &p, err, sizeof err);
    p.backend = AQ_BACKEND_CUDA;
    gpu = aq_session_new(m, &p, err, sizeof err);
    if (!ids || !cpu || !gpu || aq_session_backend(gpu) != AQ_BACKEND_CUDA || (owned && !exact) ||
        (one_grid && aqc_session_set_quest_one_grid(gpu->cuda, 1, err, sizeof err))) {
        printf("  %s: %s  FAIL\n", path, gpu && aq_session_backend(gpu) != AQ_BACKEND_CUDA ? aq_session_backend_note(gpu) : err);
        failures++;
        goto done;
    }
    lc = (float *)malloc(sizeof(float) * (size_t)n * V);
    lg = (float *)malloc(sizeof(float) * (size_t)n * V);
    le = exact ? (float *)malloc(sizeof(float) * (size_t)n * V) : NULL;
    if (!lc || !lg || (exact && !le)) { printf("  %s: out of memory  FAIL\n", path); failures++; goto done; }
    if (teacher_forced(cpu, ids, n, window, prompt, lc, V, err, sizeof err) || teacher_forced(gpu, ids, n, window, prompt, lg, V, err, sizeof err) ||
        (exact && teacher_forced(exact, ids, n, window, prompt, le, V, err, sizeof err))) {
        printf("  %s: %s  FAIL\n", path, err);
        failures++;
        goto done;
    }
    /* A quantized model passes when the GPU agrees with either CPU run: the CPU itself or the CPU
       with the weights in f32 (the GPU's f16 activations are closer to no rounding than to the
       CPU's int8). */
    gpu_cpu = agreement(lc, lg, n, window, V, &mean_diff, &max_diff, &scored);
    tie_tol = 2 * max_diff;   /* each of the two logits off by up to the largest difference seen */
    printf("  %-40s %s%s%s%lld tokens: GPU vs CPU argmax agreement %.2f%%, |logit diff| mean %.4f max %.4f%s\n", path,
           budget ? "Quest 64, " : "", budget && bounds == 8 ? "8-bit bounds, " : "", one_grid ? "in one grid, " : "", (long long)scored,
           100 * gpu_cpu, mean_diff, max_diff, exact ? "" : gpu_cpu >= 0.99 ? "  ok" : "  FAIL");
    if (exact) {
        double md2, mx2;
        gpu_exact = agreement(le, lg, n, window, V, &mean_diff, &max_diff, &scored);
        tie_tol = 2 * max_diff;
        cpu_exact = agreement(le, lc, n, window, V, &md2, &mx2, &scored);
        printf("  %-40s GPU vs CPU with the weights in f32 (no activation rounding) %.2f%%, |logit diff| mean %.4f max %.4f  %s\n", "",
               100 * gpu_exact, mean_diff, max_diff, gpu_exact >= 0.99 || gpu_cpu >= 0.99 ? "ok" : "FAIL");
        printf("  %-40s (the CPU's int8 activations against that: %.2f%%, |logit diff| mean %.4f)\n", "", 100 * cpu_exact, md2);
        if (gpu_exact < 0.99 && gpu_cpu < 0.99) failures++;
    } else if (gpu_cpu < 0.99)
        failures++;
    {   /* greedy generation: the decode loop with the argmax on the device, a CUDA graph replayed
           128 times (with Quest too: its selection's counters must be right again every step) */
        int32_t tc[128], tg[128];
        int nc = 0, ng = 0, same = 0;
        aq_session_reset(cpu);
        aq_session_reset(gpu);
        if (aq_eval(cpu, ids, 8, lc, err, sizeof err) == 0 && aq_eval(gpu, ids, 8, lg, err, sizeof err) == 0) {
            for (k = 1, tc[0] = 0; k < V; k++) tc[0] = lc[k] > lc[tc[0]] ? k : tc[0];
            for (k = 1, tg[0] = 0; k < V; k++) tg[0] = lg[k] > lg[tg[0]] ? k : tg[0];
            for (nc = 1; nc < 128 && !aq_eval_greedy(cpu, tc[nc - 1], &tc[nc], err, sizeof err); nc++) {}
            for (ng = 1; ng < 128 && !aq_eval_greedy(gpu, tg[ng - 1], &tg[ng], err, sizeof err); ng++) {}
            while (same < nc && same < ng && tc[same] == tg[same]) same++;
        }
        if (ng == 128 && same < 128) {   /* the step where they part must be a near tie on the CPU */
            double gap;
            const int tie = greedy_near_tie(exact ? exact : cpu, ids, tc, same, tg[same], lc, V, tie_tol, &gap);
            printf("  %-40s greedy%s: first %d of 128 tokens identical to the CPU's; there the GPU's token is %.4f below the "
                   "best logit of the CPU%s (limit %.4f)%s\n", "", budget ? " with Quest" : "", same, gap,
                   exact ? " with f32 weights" : "", tie_tol, tie ? "" : "  FAIL");
            if (!tie) failures++;
        } else {
            printf("  %-40s greedy%s: first %d of 128 tokens identical to the CPU's%s\n", "", budget ? " with Quest" : "", same,
                   ng == 128 ? "" : "  FAIL");
            if (ng != 128) failures++;
        }
        if (!budget) {   /* sampled on the device (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05) against the CPU, same seed */
            aq_sampler_params sp = aq_sampler_default_params();
            aq_sampler *sc = aq_sampler_new(&sp, V), *sg = aq_sampler_new(&sp, V);
            aq_session_reset(cpu);
            aq_session_reset(gpu);
            same = 0;
            if (sc && sg && aq_eval(cpu, ids, 8, lc, err, sizeof err) == 0 && aq_eval(gpu, ids, 8, lg, err, sizeof err) == 0) {
                tc[0] = aq_sampler_sample(sc, lc);
                tg[0] = aq_sampler_sample(sg, lg);
                for (nc = 1; nc < 128 && !aq_eval_sample(cpu, sc, tc[nc - 1], &tc[nc], err, sizeof err); nc++) {}
                for (ng = 1; ng < 128 && !aq_eval_sample(gpu, sg, tg[ng - 1], &tg[ng], err, sizeof err); ng++) {}
                while (same < nc && same < ng && tc[same] == tg[same]) same++;
            }
            if (ng == 128 && same < 128) {   /* where they part, the CPU sampler must draw the GPU's token from
                                                the reference's logits moved by at most the tie limit */
                aq_sampler *replay = aq_sampler_new(&sp, V);
                float r = 0;
                int reached = 0;
                if (replay) {   /* one draw per token: the draw at step `same` is the same+1st */
                    for (k = 0; k <= same; k++) r = aq__rand01(replay);
                    aq_sampler_free(replay);
                    if (logits_at_step(exact ? exact : cpu, ids, tc, same, lc))
                        reached = sampler_reaches(&sp, lc, V, r, tie_tol, tg[same]);
                }
                printf("  %-40s sampled on the device: first %d of 128 tokens identical to the CPU's; there the CPU%s %s the "
                       "GPU's token%s (logits moved by at most %.4f)%s\n", "", same, exact ? " with f32 weights" : "",
                       reached ? "draws" : "cannot draw", reached == 1 ? " as is" : "", tie_tol, reached ? "" : "  FAIL");
                if (!reached) failures++;
            } else {
                printf("  %-40s sampled on the device: first %d of 128 tokens identical to the CPU's%s%s\n", "", same,
                       ng == 128 ? "" : ": ", ng == 128 ? "" : err);
                if (ng != 128) failures++;
            }
            aq_sampler_free(sc);
            aq_sampler_free(sg);
        }
    }
done:
    free(ids); free(lc); free(lg); free(le);
    aq_session_free(cpu);
    aq_session_free(gpu);
    aq_session_free(exact);
    aq_model_free(m);
    aq_model_free(exact_model);
    for (k = 0; owned && owned[k]; k++) free(owned[k]);
    free(owned);
}

/* ---- 3. timing ---- */

/* ms per decode step after a random KV cache of ctx positions: greedy (argmax on the device) or
   sampled (the default sampler, its draw on the device). */
/* bounds: Quest's bits per stored key bound (16 or 8) */
static void time_decode(aq_model *m, int ctx, int budget, int no_graph, int sample, int bounds, int one_grid) {
    char err[512];
    aq_session_params p = aq_session_default_params();
    aq_sampler_params spp = aq_sampler_default_params();
    aq_session *s;
    aq_sampler *smp;
    int32_t tok = 1;
    int i, steps = 24;
    double t0, ms;
    if (!sample) spp.temperature = 0.0f;
    smp = aq_sampler_new(&spp, aq_model_config(m)->n_vocab);
    p.backend = AQ_BACKEND_CUDA;
    p.n_ctx = ctx + 64;
    p.n_batch = 8;
    p.quest_budget = budget;
    p.quest_bounds = bounds;
    p.no_cuda_graph = no_graph;
    s = aq_session_new(m, &p, err, sizeof err);
    if (!smp || !s || aq_session_backend(s) != AQ_BACKEND_CUDA || aq__session_fill_random(s, ctx, 5, err, sizeof err) ||
        (one_grid && aqc_session_set_quest_one_grid(s->cuda, 1, err, sizeof err))) {
        printf("  decode step ctx %d: %s  FAIL\n", ctx, s ? (aq_session_backend(s) != AQ_BACKEND_CUDA ? aq_session_backend_note(s) : err) : err);
        failures++;
        aq_session_free(s);
        aq_sampler_free(smp);
        return;
    }
    for (i = 0; i < 4; i++)
        if (aq_eval_sample(s, smp, tok, &tok, err, sizeof err)) {
            printf("  decode step ctx %d, warm-up: %s  FAIL\n", ctx, err);
            failures++;
            aq_session_free(s);
            aq_sampler_free(smp);
            return;
        }
    t0 = aq_time_seconds();
    for (i = 0; i < steps; i++)
        if (aq_eval_sample(s, smp, tok, &tok, err, sizeof err)) { printf("  %s  FAIL\n", err); failures++; break; }
    ms = (aq_time_seconds() - t0) * 1e3 / steps;
    printf("  decode step, %5d context, %-17s %-8s %-7s %8.2f ms/token  %6.1f tok/s%s\n", ctx,
           budget ? bounds == 8 ? "Quest 2048, 8-bit" : "Quest 2048" : "dense", no_graph ? "no graph" : "graph", sample ? "sampled" : "greedy",
           ms, 1e3 / ms, one_grid ? "  (selection and attention in one grid)" : "");
    aq_session_free(s);
    aq_sampler_free(smp);
}

/* where one decode step's time goes, stage by stage (aqc_profile_step) */
static void profile_decode(aq_model *m, int ctx, int budget) {
    char err[512];
    aq_session_params p = aq_session_default_params();
    aq_session *s;
    aqc_profile_entry e[32];
    int n, i;
    double total = 0;
    p.backend = AQ_BACKEND_CUDA;
    p.n_ctx = ctx + 64;
    p.n_batch = 8;
    p.quest_budget = budget;
    s = aq_session_new(m, &p, err, sizeof err);
    if (!s || aq_session_backend(s) != AQ_BACKEND_CUDA || aq__session_fill_random(s, ctx, 5, err, sizeof err) ||
        (n = aqc_profile_step(s->cuda, 1, ctx, e, 32, err, sizeof err)) < 0) {
        printf("  profile ctx %d: %s  FAIL\n", ctx, s && aq_session_backend(s) != AQ_BACKEND_CUDA ? aq_session_backend_note(s) : err);
        failures++;
        aq_session_free(s);
        return;
    }
    for (i = 0; i < n; i++) total += e[i].us;
    printf("  one step, %d context, %s, stage by stage (an event after each stage, in a graph): %.0f us\n", ctx,
           budget ? "Quest 2048" : "dense", total);
    for (i = 0; i < n; i++)
        printf("    %-22s %4d x %7.1f us = %8.0f us  %5.1f%%\n", e[i].name, e[i].calls, e[i].us / e[i].calls, e[i].us,
               100.0 * e[i].us / total);
    aq_session_free(s);
}

/* What the decode kernels fit per multiprocessor, as a Llama-2-7B step at 32K launches them. */
static void print_occupancy(void) {
    aqc_occupancy e[16];
    char err[512];
    int n = aqc_kernel_occupancy(128, 2048, 11008, e, 16, err, sizeof err), i;
    if (n < 0) { printf("  occupancy: %s  FAIL\n", err); failures++; return; }
    printf("  occupancy (head_dim 128, 2048 pages, GEMV input 11008): kernel, threads, registers, shared bytes, blocks per SM\n");
    for (i = 0; i < n; i++)
        printf("    %-40s %5d %4d %7d %3d\n", e[i].kernel, e[i].threads, e[i].registers, e[i].shared_bytes, e[i].blocks_per_sm);
}

static void check_kernels(int one_grid) {
    printf("\n1. kernels against the CPU (fresh random inputs)\n");
    check_matmul(AQ_TYPE_AQ4_G128, 4096, 4096, 1, "RMSNorm");
    check_matmul(AQ_TYPE_AQ4_G128, 4096, 11008, 1, "SwiGLU");
    check_matmul(AQ_TYPE_AQ4_G64, 300, 200, 1, "copy");
    check_matmul(AQ_TYPE_AQ4_G128, 5, 11008, 1, "RMSNorm");   /* fewer rows than warps */
    check_matmul(AQ_TYPE_OVP_G32, 37, 4160, 1, "copy");       /* two stages a row, the second of two chunks */
    check_matmul(AQ_TYPE_AQ4_G32, 37, 4160, 1, "copy");
    check_matmul(AQ_TYPE_Q4_1, 257, 96, 1, "RMSNorm");
    check_matmul(AQ_TYPE_OVP_G128, 1024, 4096, 1, "SwiGLU");
    check_matmul(AQ_TYPE_OVP_G64, 300, 200, 1, "RMSNorm");
    check_matmul(AQ_TYPE_F16, 4096, 4096, 1, "RMSNorm");
    check_matmul(AQ_TYPE_F16, 300, 200, 1, "SwiGLU");
    check_matmul(AQ_TYPE_AQ4_G128, 1024, 4096, 7, "copy");
    check_matmul(AQ_TYPE_OVP_G32, 512, 1000, 7, "copy");
    check_matmul(AQ_TYPE_F16, 1000, 300, 7, "copy");
    check_bad_group();
    check_attention(3000, 1, 32, 32, 128, 16, 0, 16);
    check_attention(3000, 1, 32, 32, 128, 16, 512, 16);
    check_attention(2000, 1, 32, 32, 128, 16, 512, 8);
    check_attention(4001, 1, 32, 8, 128, 16, 1024, 16);
    check_attention(4001, 1, 32, 8, 128, 16, 1024, 8);
    check_attention(1000, 1, 8, 4, 8, 16, 256, 16);
    check_attention(1000, 1, 8, 4, 8, 16, 256, 8);
    check_attention(777, 1, 16, 2, 64, 16, 128, 16);
    check_attention(777, 1, 16, 2, 64, 16, 128, 8);
    check_attention(500, 1, 4, 4, 256, 32, 128, 16);
    check_attention(500, 1, 4, 4, 256, 32, 128, 8);
    check_attention(100, 1, 32, 8, 128, 16, 512, 16);   /* fits the budget: dense */
    check_attention(20000, 1, 8, 2, 64, 16, 1024, 8);  /* 1250 pages: the top-k's second round */
    check_attention(2500, 1, 64, 8, 128, 32, 1024, 16);  /* 8 heads per KV head, two 16-key tiles a page, the last page 4 keys */
    check_attention(1000, 1, 16, 8, 128, 32, 0, 16);
    check_attention(700, 9, 32, 8, 128, 16, 0, 16);     /* a prompt's queries: GQA, each query's last page partial */
    check_attention(300, 5, 16, 2, 64, 32, 0, 16);
    check_attention(500, 6, 32, 32, 128, 16, 0, 16);
    check_top_k(2047, 127, 1, 0);
    check_top_k(8192, 1000, 1, 0);
    check_top_k(8192, 1000, 1, 1);
    check_top_k(2047, 2000, 1, 1);   /* most of them: keys on both sides of the first bit that differs */
    check_top_k(300, 100, 1, 0);     /* fewer keys than the smallest block holds */
    check_top_k(5000, 64, 1, 1);     /* 640 threads */
    check_top_k(2047, 600, 1, 3);
    check_top_k(5000, 1500, 0, 3);
    check_top_k(32000, 40, 0, 0);
    check_top_k(5000, 1024, 0, 1);
    check_top_k(2048, 1, 1, 0);
    check_top_k(2000, 100, 1, 2);
    check_top_k(5000, 300, 0, 2);
    check_top_k(32000, 1, 2, 0);     /* the greedy decode's argmax: more logits than threads */
    check_top_k(32000, 1, 2, 1);
    check_top_k(1000, 1, 2, 2);      /* all equal: the lowest index */
    check_sample(32000, 0, 0.8f, 40, 0.95f, 0.05f, 6);   /* the default sampler on a Llama vocabulary */
    check_sample(32000, 2, 0.8f, 40, 0.95f, 0.05f, 6);
    check_sample(4096, 1, 0.8f, 40, 0.95f, 0.05f, 12);
    check_sample(4096, 0, 1.5f, 1024, 1.0f, 0.0f, 12);    /* the largest top-k, no cuts: every rank counts */
    check_sample(4096, 2, 1.0f, 300, 0.5f, 0.2f, 12);
    check_sample(512, 0, 0.5f, 1, 1.0f, 0.0f, 4);
    print_occupancy();
    if (!one_grid) return;
    printf("\n1b. Quest in one grid (an experiment, aqc_quest_onepass_kernel), last: a trap ends the process\n");
    check_one_grid(2000, 32, 32, 128, 16, 512);
    check_one_grid(4001, 32, 8, 128, 16, 1024);
    check_one_grid(1000, 8, 4, 8, 16, 256);
    check_one_grid(777, 16, 2, 64, 16, 128);
    check_one_grid(500, 4, 4, 256, 32, 128);
    check_one_grid(20000, 8, 2, 64, 16, 1024);
}

static void check_models(const char *shared, const char **models, int n_models, int n_tokens, int one_grid) {
    int i;
    char path[1024], text[1024];
    printf("\n2. models teacher-forced on GPU and CPU\n");
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared);
    snprintf(text, sizeof text, "%s/text/tinystories-valid.txt", shared);
    check_model(path, text, n_tokens, 0, 16, 0);
    check_model(path, text, n_tokens, 64, 16, 0);
    check_model(path, text, n_tokens, 64, 8, 0);
    for (i = 0; i < n_models; i++) check_model(models[i], text, n_tokens, 0, 16, 0);
    if (!one_grid) return;
    printf("\n2b. Quest in one grid (an experiment, aqc_quest_onepass_kernel) in the decode step, last: a trap ends the process\n");
    check_model(path, text, n_tokens, 64, 8, 1);
}

/* Bytes an int4 g128 GEMV reads: the codes, and a scale and an offset (f16) per group. */
static double int4_gemv_bytes(int64_t rows, int64_t cols) { return (double)rows * cols * (0.5 + 4.0 / 128); }

/* dense_us[0], [1]: the dense attention's time at 32 and 8 KV heads, for time_one_grid's ratios */
static void timing_table(int short_set, double dense_us[2]) {
    static const int64_t shapes[4][2] = {{12288, 4096}, {4096, 11008}, {22016, 4096}, {4096, 4096}};
    aqc_attention_timing at;
    aqc_gemv_timing gt;
    char err[512];
    int i, kv;
    printf("\n3. timing (each kernel 100 times in a CUDA graph, as a decode step runs them: the median of 5 launches;\n"
           "   matrices and caches rotated so that they come from memory, not L2)\n");
    printf("  %-16s %10s %10s %10s %10s %12s %10s\n", "GEMV", "int4 g128", "OliVe g128", "f16 (ours)", "cuBLAS f16", "int4 speedup",
           "int4 GB/s");
    for (i = 0; i < (short_set ? 2 : 4); i++) {
        if (aqc_time_gemv(shapes[i][0], shapes[i][1], 128, 100, 0, &gt, err, sizeof err)) { printf("  %s  FAIL\n", err); failures++; continue; }
        printf("  %6lld x %-7lld %8.1f us %8.1f us %8.1f us %8.1f us %11.2fx %10.0f\n", (long long)shapes[i][0], (long long)shapes[i][1],
               gt.int4_us, gt.ovp_us, gt.f16_us, gt.cublas_us, gt.cublas_us / gt.int4_us, int4_gemv_bytes(shapes[i][0], shapes[i][1]) /
               (gt.int4_us * 1e-6) / 1e9);
        if (gt.int4_stages_us > 0)
            printf("  %16s int4 with the codes stage by stage (an experiment): %.1f us, %.2fx cuBLAS, %.0f GB/s\n", "", gt.int4_stages_us,
                   gt.cublas_us / gt.int4_stages_us, int4_gemv_bytes(shapes[i][0], shapes[i][1]) / (gt.int4_stages_us * 1e-6) / 1e9);
    }
    if (!short_set) {
        /* 4096 x 11008 reads at ~1.8 TB/s where the others read at 2.2-2.4 (kernels/NOTES.md).  A
           warp's stage is 4096 columns of a row, and a row's last stage may be short: the same
           bytes in rows of other lengths tell whether the short stage, the long rows (4096 rows
           for ~2600 warps), rows that do not start on a 2 KB boundary (11008 and 5504 columns;
           then the codes stage by stage read faster) or none of these is what costs */
        static const int64_t probes[5][2] = {{4096, 12288}, {11008, 4096}, {8192, 5504}, {4096, 8192}, {4096, 10240}};
        printf("  int4 GEMV by row length (stages of 4096 columns a row):");
        for (i = 0; i < 5; i++) {
            if (aqc_time_gemv(probes[i][0], probes[i][1], 128, 100, 1, &gt, err, sizeof err)) { printf("\n  %s  FAIL\n", err); failures++; break; }
            printf("%s %lld x %lld (%.2f) %.1f us %.0f GB/s", i ? "," : "", (long long)probes[i][0], (long long)probes[i][1],
                   probes[i][1] / 4096.0, gt.int4_us, int4_gemv_bytes(probes[i][0], probes[i][1]) / (gt.int4_us * 1e-6) / 1e9);
            if (gt.int4_stages_us > 0) printf(" (stage by stage %.1f us)", gt.int4_stages_us);
        }
        printf("\n");
    }
    for (kv = 32; kv >= 8; kv -= 24) {
        if (aqc_time_attention(32768, 32, kv, 128, 16, 2048, 100, 0, &at, err, sizeof err)) { printf("  %s  FAIL\n", err); failures++; continue; }
        printf("  attention 32K, 32 heads / %2d KV: dense %7.1f us (%5.0f GB/s, %3.0f%% of copy %4.0f GB/s), Quest 2048 %6.1f us "
               "(selection %5.1f us, of which score %5.1f): %.2fx\n",
               kv, at.dense_us, at.dense_gbps, 100 * at.dense_gbps / at.copy_gbps, at.copy_gbps, at.quest_us, at.select_us, at.score_us,
               at.dense_us / at.quest_us);
        printf("    top-k alone %.1f us (the selection minus the score: %.1f); an empty kernel launched the same way %.1f us;"
               " score and top-k in one kernel %.1f us (two: %.1f)\n", at.topk_us, at.select_us - at.score_us, at.empty_us,
               at.select_fused_us, at.select_us);
        printf("    8-bit bounds: Quest 2048 %.1f us (selection %.1f, of which score %.1f; in one kernel %.1f): %.2fx\n", at.quest8_us,
               at.select8_us, at.score8_us, at.select_fused8_us, at.dense_us / at.quest8_us);
        dense_us[kv == 8] = at.dense_us;
        printf("    dense (%d splits per KV head in a step; its merge alone %.1f us):", at.dense_splits, at.merge_us);
        for (i = 0; i < 8; i++)
            if (at.dense_sweep_us[i] > 0) printf("  %d: %.1f us", at.dense_sweep_splits[i], at.dense_sweep_us[i]);
        printf("\n    Quest's sparse attention alone (%d splits per KV head in a step):", at.quest_splits);
        for (i = 0; i < 5; i++)
            if (at.sweep_us[i] > 0) printf("  %d splits %.1f us", at.sweep_splits[i], at.sweep_us[i]);
        printf("\n");
    }
}

/* Quest in one grid (an experiment) at 32K, budget 2048, 8-bit bounds: the attention alone against
   the dense times the timing table measured (dense_us: NULL, none), and the decode step of m (may
   be NULL); a part's last, as its checks are the kernels and models parts' last */
static void time_one_grid(const double *dense_us, aq_model *m) {
    aqc_attention_timing at;
    char err[512];
    int kv;
    printf("\n3b. Quest in one grid (an experiment, aqc_quest_onepass_kernel), last: a trap ends the process\n");
    for (kv = 32; kv >= 8 && dense_us; kv -= 24) {
        if (aqc_time_attention(32768, 32, kv, 128, 16, 2048, 100, 1, &at, err, sizeof err)) { printf("  %s  FAIL\n", err); failures++; return; }
        printf("  attention 32K, 32 heads / %2d KV, 8-bit bounds, selection and attention in one grid, then the merge: %.1f us "
               "(%.2fx dense)", kv, at.onepass8_us, dense_us[kv == 8] / at.onepass8_us);
        if (at.onepass8_register_us > 0)
            printf("; with the register attention instead of tensor cores %.1f us (%.2fx)", at.onepass8_register_us,
                   dense_us[kv == 8] / at.onepass8_register_us);
        printf("\n");
    }
    if (m) time_decode(m, 32768, 2048, 0, 0, 8, 1);
}

/* the whole decode step of a Llama-2-7B-shape int4 model: at 4K and 32K, dense and Quest, and
   where the 32K Quest step's time goes; decode_ctx > 0: only at that context (one dense and one
   Quest run); short_set: the graph runs and the profile only */
static void decode_table(aq_model *m, int decode_ctx, int short_set) {
    if (!m) return;
    if (decode_ctx) {
        time_decode(m, decode_ctx, 0, 1, 0, 16, 0);
        time_decode(m, decode_ctx, 2048, 1, 0, 16, 0);
    } else if (short_set) {
        time_decode(m, 4096, 0, 0, 0, 16, 0);
        time_decode(m, 32768, 0, 0, 0, 16, 0);
        time_decode(m, 32768, 2048, 0, 0, 16, 0);
        time_decode(m, 32768, 2048, 0, 0, 8, 0);
        profile_decode(m, 32768, 2048);
    } else {
        time_decode(m, 4096, 0, 1, 0, 16, 0);
        time_decode(m, 4096, 0, 0, 0, 16, 0);
        time_decode(m, 4096, 0, 0, 1, 16, 0);
        time_decode(m, 4096, 2048, 0, 0, 16, 0);
        time_decode(m, 32768, 0, 0, 0, 16, 0);
        time_decode(m, 32768, 2048, 1, 0, 16, 0);
        time_decode(m, 32768, 2048, 0, 0, 16, 0);
        time_decode(m, 32768, 2048, 0, 1, 16, 0);
        time_decode(m, 32768, 2048, 0, 0, 8, 0);
        profile_decode(m, 4096, 0);
        profile_decode(m, 32768, 2048);
    }
}

/* the decode step of a model whose query heads share KV heads (the tensor-core attention's case) */
static void gqa_table(aq_model *m) {
    const aq_config *c;
    if (!m) { printf("\n  grouped KV heads: no --model-gqa, nothing to time\n"); return; }
    c = aq_model_config(m);
    printf("\n  %d layers, %d query heads on %d KV heads of %d, feed-forward %d, vocabulary %d:\n", c->n_layers, c->n_heads,
           c->n_kv_heads, c->head_dim, c->n_ff, c->n_vocab);
    time_decode(m, 32768, 0, 0, 0, 16, 0);
    time_decode(m, 32768, 2048, 0, 0, 16, 0);
    time_decode(m, 32768, 2048, 0, 0, 8, 0);
    profile_decode(m, 32768, 2048);
}

int main(int argc, char **argv) {
    const char *shared = AQ_SHARED_DIR, *models[4], *model_7b = NULL, *model_gqa = NULL, *part = "all";
    aq_model *m7 = NULL, *mg = NULL;
    char err[512], name[256];
    int n_tokens = 2000, n_models = 0, decode_ctx = 0, short_set = 0, one_grid = 1, i;
    double dense_us[2] = {0, 0};
    setvbuf(stdout, NULL, _IOLBF, 0);   /* a part killed by its time limit still shows how far it got */
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--shared")) shared = tool_arg("aq-gpu-check", argc, argv, &i);
        else if (!strcmp(a, "--model")) {
            if (n_models == 4) { fprintf(stderr, "aq-gpu-check: at most 4 --model\n"); return 2; }
            models[n_models++] = tool_arg("aq-gpu-check", argc, argv, &i);
        }
        else if (!strcmp(a, "--decode-ctx")) decode_ctx = (int)tool_number("aq-gpu-check", a, tool_arg("aq-gpu-check", argc, argv, &i), 64, 1 << 20);
        else if (!strcmp(a, "--short")) short_set = 1;
        else if (!strcmp(a, "--no-one-grid")) one_grid = 0;
        else if (!strcmp(a, "--model-7b")) model_7b = tool_arg("aq-gpu-check", argc, argv, &i);
        else if (!strcmp(a, "--model-gqa")) model_gqa = tool_arg("aq-gpu-check", argc, argv, &i);
        else if (!strcmp(a, "--tokens")) n_tokens = (int)tool_number("aq-gpu-check", a, tool_arg("aq-gpu-check", argc, argv, &i), 10, 1e6);
        else if (!strcmp(a, "--part")) {
            part = tool_arg("aq-gpu-check", argc, argv, &i);
            if (strcmp(part, "kernels") && strcmp(part, "models") && strcmp(part, "timing") && strcmp(part, "decode") &&
                strcmp(part, "gqa") && strcmp(part, "all")) {
                fprintf(stderr, "aq-gpu-check: --part must be kernels, models, timing, decode, gqa or all, got '%s'\n", part);
                return 2;
            }
        }
        else { fprintf(stderr, "aq-gpu-check: unknown option %s\n", a); usage(stderr); return 2; }
    }
    if (aqc_device_name(name, sizeof name, err, sizeof err)) { fprintf(stderr, "aq-gpu-check: %s\n", err); return 1; }
    printf("device: %s\n", name);
    if (decode_ctx) part = "decode";
    if (model_7b && (!strcmp(part, "all") || !strcmp(part, "timing") || !strcmp(part, "decode")) &&
        !(m7 = aq_model_load(model_7b, err, sizeof err))) {
        printf("  %s  FAIL\n", err);
        failures++;
    }
    if (model_gqa && (!strcmp(part, "all") || !strcmp(part, "gqa")) && !(mg = aq_model_load(model_gqa, err, sizeof err))) {
        printf("  %s  FAIL\n", err);
        failures++;
    }
    if (!strcmp(part, "all") || !strcmp(part, "kernels")) check_kernels(one_grid);
    if (!strcmp(part, "all") || !strcmp(part, "models")) check_models(shared, models, n_models, n_tokens, one_grid);
    if (!strcmp(part, "all") || !strcmp(part, "timing")) timing_table(short_set, dense_us);
    if (!strcmp(part, "all") || !strcmp(part, "timing") || !strcmp(part, "decode")) decode_table(m7, decode_ctx, short_set);
    if ((!strcmp(part, "all") || !strcmp(part, "timing")) && one_grid) time_one_grid(dense_us, m7);
    if ((!strcmp(part, "all") || !strcmp(part, "gqa")) && one_grid && mg) time_one_grid(NULL, mg);
    if (!strcmp(part, "all") || !strcmp(part, "gqa")) gqa_table(mg);
    aq_model_free(m7);
    aq_model_free(mg);
    printf("\n%s: %d failure%s\n", failures ? "FAIL" : "ok", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
