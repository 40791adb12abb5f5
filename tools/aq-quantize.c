/* aq-quantize: 4-bit weights for a Llama GGUF.  int4 by plain round-to-nearest (--method rtn) or
   by AWQ (--method awq, the default): activation-aware per-channel scales found on calibration
   text, folded into the preceding operation, then a clipping search (../shared/docs/awq.md).
   Or OliVe's outlier-victim pairs (OVP, ../shared/docs/olive.md): --method olive encodes the
   weights as they are, --method awq+olive runs the AWQ search below with OVP as the quantizer.

   The algorithm, per decoder layer, on calibration activations of the full-precision model:
     1. run the layer in f32 and keep the input of every linear and the two block outputs;
     2. for each scaling group - attn_norm -> q,k,v; v -> o (when there is no GQA);
        ffn_norm -> gate,up; up -> down - try s = mean|x|^alpha for alpha = 0, 1/20, ..., 19/20,
        quantize W*diag(s), undo the scale, and keep the s whose block output is closest (MSE)
        to the f32 one; alpha = 0 is plain rounding, so AWQ never does worse on the calibration data;
     3. fold 1/s into the preceding norm (or rows of v / up) and s into the group's columns;
     4. clip every linear but q and k: per output row and group, the clamp (of 10 tried) that
        minimizes the error of X . (Q(w) - w) over 512 sampled tokens;
     5. quantize, and move on with the f32 layer's output as the next layer's input.
   Matrices are quantized with groups of --group values along the input dimension: for int4, Q4_1
   blocks at group 32 when the row width allows (llama.cpp runs those files), the AQ4 packing
   otherwise; for OliVe, the OVP packing, with the normal grid (int4 or flint4) of each matrix
   chosen by the lower squared error of the written weights.

   --mse-demo measures only the weight reconstruction error of the quantizers (RTN int4, OVP
   without and with offsets) on heavy-tailed and Gaussian random matrices, and on the input
   model's matrices when one is given. */
#define AWQ_QUEST_IMPLEMENTATION
#include "../awq_quest.h"
#include "tool_util.h"

#ifndef AQ_SHARED_DIR
#define AQ_SHARED_DIR "../shared"
#endif

static void usage(FILE *f) {
    fprintf(f,
            "usage: aq-quantize IN.gguf OUT.gguf [options]\n"
            "       aq-quantize --mse-demo [IN.gguf] [--group G] [-t N]\n"
            "  --method M           awq: int4 with activation-aware scaling + clipping (the default)\n"
            "                       rtn: int4 by plain round-to-nearest\n"
            "                       olive: OliVe outlier-victim pairs (OVP), 4 bits per weight\n"
            "                       awq+olive: AWQ's scaling + clipping search with OVP as the quantizer\n"
            "  --group 32|64|128    values per scale/offset along the input dimension (default 128)\n"
            "  --no-offset          olive, awq+olive: m = 0 in every group (plain symmetric OliVe, for comparison)\n"
            "  --calib FILE.txt     calibration text for awq and awq+olive (documents separated by <|endoftext|> lines)\n"
            "  --calib-tokens N     calibration tokens (default 8192)\n"
            "  --calib-seq L        calibration sequence length (default 512, at most the trained context)\n"
            "  --loss-tokens N      tokens (whole sequences) the scale search's loss is measured on\n"
            "                       (default 2048; the channel statistics use all calibration tokens)\n"
            "  --quantize-output    also quantize token_embd and output (kept as they are by default)\n"
            "  --mse-demo           no output file: print the relative weight error sum (w - Q(w))^2 / sum w^2\n"
            "                       of RTN int4, OVP with m = 0 and OVP with offsets on 1024 x 4096 random\n"
            "                       matrices (Student-t with 3 degrees of freedom, and Gaussian), and on the\n"
            "                       matrices of IN.gguf if given; every group size unless --group is given\n"
            "  -t N                 threads (default: all cores)\n"
            "  -h, --help           this text\n");
}

/* ---- f32 building blocks on the thread pool ---- */

typedef struct {
    aq__pool *pool;
    int simd, n_threads;
    float *scratch;          /* per thread, for the tasks below */
    int64_t scratch_floats;
    int n_ovp, n_flint;      /* OVP matrices written, and how many of them with flint4 normals */
    int ovp_sym;             /* AQ_OVP_SYMMETRIC for --no-offset, else 0 */
} ctx_t;

typedef struct { float *w; int64_t rows, cols; } mat;

/* Y[n][W.rows] = X[n][W.cols] * W^T */
static void matmul(ctx_t *c, const mat *W, const float *X, int64_t n, float *Y) {
    aq_weight w;
    w.type = AQ_TYPE_F32; w.rows = W->rows; w.cols = W->cols; w.row_bytes = (size_t)W->cols * 4; w.data = W->w; w.name = "";
    aq__gemm(c->pool, c->simd, &w, X, n, Y, NULL, 0);
}

static void rmsnorm_rows(float *out, const float *x, const float *w, int64_t n, int64_t dim, float eps) {
    int64_t t;
    for (t = 0; t < n; t++) aq__rmsnorm(out + t * dim, x + t * dim, w, dim, eps);
}

/* Causal attention within each sequence of L tokens: q [n][n_heads*hd], k, v [n][n_kv*hd]. */
typedef struct {
    ctx_t *c;
    const aq_config *cfg;
    const float *q, *k, *v;
    float *out;
    int64_t L;
} attn_job;

static void attn_task(void *p, int64_t begin, int64_t end, int thread) {
    const attn_job *j = (const attn_job *)p;
    const aq_config *cfg = j->cfg;
    int64_t hd = cfg->head_dim, qd = (int64_t)cfg->n_heads * hd, kvd = (int64_t)cfg->n_kv_heads * hd, item, t, u;
    float *att = j->c->scratch + (size_t)thread * j->c->scratch_floats, scale = sqrtf((float)hd);
    for (item = begin; item < end; item++) {
        int64_t seq = item / cfg->n_heads, h = item % cfg->n_heads, kvh = h / (cfg->n_heads / cfg->n_kv_heads);
        const float *K = j->k + seq * j->L * kvd + kvh * hd, *V = j->v + seq * j->L * kvd + kvh * hd;
        for (t = 0; t < j->L; t++) {
            const float *q = j->q + (seq * j->L + t) * qd + h * hd;
            float *o = j->out + (seq * j->L + t) * qd + h * hd;
            for (u = 0; u <= t; u++) att[u] = aq__dot(q, K + u * kvd, hd, j->c->simd) / scale;
            aq__softmax(att, t + 1);
            memset(o, 0, sizeof(float) * (size_t)hd);
            for (u = 0; u <= t; u++) aq__axpy(att[u], V + u * kvd, o, hd, j->c->simd);
        }
    }
}

typedef struct {
    const aq_config *cfg;
    int64_t L;
    float *rope;     /* [L][n_rot] (cos, sin) pairs */
    /* scratch for n tokens */
    float *q, *k, *v;
} attn_buf;

/* att = attention(x; Wq, Wk, Wv) over n tokens (whole sequences); out = att * Wo^T if Wo. */
static void attention_block(ctx_t *c, attn_buf *b, const float *x, int64_t n, const mat *Wq, const mat *Wk, const mat *Wv,
                            const mat *Wo, float *att, float *out) {
    const aq_config *cfg = b->cfg;
    int64_t t, qd = (int64_t)cfg->n_heads * cfg->head_dim, kvd = (int64_t)cfg->n_kv_heads * cfg->head_dim;
    attn_job j;
    matmul(c, Wq, x, n, b->q);
    matmul(c, Wk, x, n, b->k);
    matmul(c, Wv, x, n, b->v);
    for (t = 0; t < n; t++) {
        const float *r = b->rope + (t % b->L) * cfg->n_rot;
        aq__rope(b->q + t * qd, cfg->n_heads, cfg->head_dim, cfg->n_rot, r);
        aq__rope(b->k + t * kvd, cfg->n_kv_heads, cfg->head_dim, cfg->n_rot, r);
    }
    j.c = c; j.cfg = cfg; j.q = b->q; j.k = b->k; j.v = b->v; j.out = att; j.L = b->L;
    aq__pool_run(c->pool, n / b->L * cfg->n_heads, 1, attn_task, &j);
    if (Wo) matmul(c, Wo, att, n, out);
}

/* a = silu(x Wg^T) * (x Wu^T); out = a Wd^T.  g is scratch [n][ff]. */
static void mlp_block(ctx_t *c, const float *x, int64_t n, const mat *Wg, const mat *Wu, const mat *Wd, float *g, float *a,
                      float *out) {
    int64_t i;
    matmul(c, Wg, x, n, g);
    matmul(c, Wu, x, n, a);
    for (i = 0; i < n * Wg->rows; i++) a[i] *= g[i] / (1.0f + expf(-g[i]));
    matmul(c, Wd, a, n, out);
}

/* ---- quantization ---- */

/* What a matrix is quantized with: an AQ4 type (AWQ's asymmetric int4), or an OVP type with one
   normal grid (AQ_OVP_INT4 or AQ_OVP_FLINT4) for the whole matrix. */
typedef struct { uint32_t type; int ovp_flags; } quantizer;   /* ovp_flags: the grid, | AQ_OVP_SYMMETRIC */

static void quantize_row_with(const quantizer *q, const float *x, uint8_t *bytes, int64_t n) {
    if (aq__ovp_group(q->type)) aq_quantize_ovp(q->type, x, bytes, 1, n, q->ovp_flags, NULL);
    else aq_quantize_row(q->type, x, bytes, n);
}

/* OVP with both grids on the pool, rows in fixed chunks and the chunks' errors summed in order,
   so the result does not depend on the thread count. */
#define OVP_ROWS 8
typedef struct {
    const float *w;
    int64_t rows, cols;
    uint32_t type;
    int flags;             /* AQ_OVP_SYMMETRIC or 0 */
    uint8_t *bytes[2];     /* int4, flint4 */
    double *sse;           /* [chunk][2] */
} ovp_job;

static void ovp_task(void *p, int64_t begin, int64_t end, int thread) {
    const ovp_job *j = (const ovp_job *)p;
    int64_t item, rb = aq_type_row_bytes(j->type, j->cols);
    (void)thread;
    for (item = begin; item < end; item++) {
        int64_t r0 = item * OVP_ROWS, nr = j->rows - r0 < OVP_ROWS ? j->rows - r0 : OVP_ROWS;
        aq_quantize_ovp(j->type, j->w + r0 * j->cols, j->bytes[0] + r0 * rb, nr, j->cols, AQ_OVP_INT4 | j->flags, &j->sse[2 * item]);
        aq_quantize_ovp(j->type, j->w + r0 * j->cols, j->bytes[1] + r0 * rb, nr, j->cols, AQ_OVP_FLINT4 | j->flags, &j->sse[2 * item + 1]);
    }
}

/* Encodes a rows x cols matrix as OVP with the normal grid of lower total squared error, as
   aq_quantize_ovp's AQ_OVP_AUTO does, but on all threads.  Writes the bytes to dst (if not NULL)
   and the error to *sse (if not NULL); returns the grid. */
static int ovp_encode(ctx_t *c, const float *w, int64_t rows, int64_t cols, uint32_t type, int flags, uint8_t *dst, double *sse) {
    int64_t chunks = (rows + OVP_ROWS - 1) / OVP_ROWS, rb = aq_type_row_bytes(type, cols), i;
    double err[2] = {0, 0};
    ovp_job j;
    int flint;
    j.w = w; j.rows = rows; j.cols = cols; j.type = type; j.flags = flags;
    j.bytes[0] = (uint8_t *)malloc((size_t)(rows * rb) + 1);
    j.bytes[1] = (uint8_t *)malloc((size_t)(rows * rb) + 1);
    j.sse = (double *)malloc(sizeof(double) * 2 * (size_t)chunks + 1);
    if (!j.bytes[0] || !j.bytes[1] || !j.sse) { fprintf(stderr, "aq-quantize: out of memory\n"); exit(1); }
    aq__pool_run(c->pool, chunks, 1, ovp_task, &j);
    for (i = 0; i < chunks; i++) { err[0] += j.sse[2 * i]; err[1] += j.sse[2 * i + 1]; }
    flint = err[1] < err[0];
    if (dst) memcpy(dst, j.bytes[flint], (size_t)(rows * rb));
    if (sse) *sse = err[flint];
    free(j.bytes[0]); free(j.bytes[1]); free(j.sse);
    return flint ? AQ_OVP_FLINT4 : AQ_OVP_INT4;
}

typedef struct {
    ctx_t *c;
    const mat *src;
    mat *dst;
    const float *s;       /* per input column, or NULL */
    quantizer q;
} fq_job;

/* dst = Q(src * diag(s)) * diag(s)^-1, row by row (the fake quantization of the search). */
static void fq_task(void *p, int64_t begin, int64_t end, int thread) {
    const fq_job *j = (const fq_job *)p;
    int64_t r, i, cols = j->src->cols;
    float *tmp = j->c->scratch + (size_t)thread * j->c->scratch_floats;
    uint8_t *bytes = (uint8_t *)(tmp + cols);
    for (r = begin; r < end; r++) {
        const float *w = j->src->w + r * cols;
        float *o = j->dst->w + r * cols;
        for (i = 0; i < cols; i++) tmp[i] = j->s ? w[i] * j->s[i] : w[i];
        quantize_row_with(&j->q, tmp, bytes, cols);
        aq_dequantize_row(j->q.type, bytes, o, cols);
        if (j->s)
            for (i = 0; i < cols; i++) o[i] /= j->s[i];
    }
}

static void fake_quant(ctx_t *c, const mat *src, const float *s, const quantizer *q, mat *dst) {
    fq_job j;
    j.c = c; j.src = src; j.dst = dst; j.s = s; j.q = *q;
    dst->rows = src->rows; dst->cols = src->cols;
    aq__pool_run(c->pool, src->rows, 16, fq_task, &j);
}

static double mse(const float *a, const float *b, int64_t n) {
    double sum = 0;
    int64_t i;
    for (i = 0; i < n; i++) sum += (double)(a[i] - b[i]) * (a[i] - b[i]);
    return sum / (double)n;
}

/* Per-channel mean |x| over n tokens. */
static void channel_mean_abs(const float *x, int64_t n, int64_t dim, float *out) {
    int64_t t, c;
    double *acc = (double *)calloc((size_t)dim, sizeof(double));
    for (t = 0; t < n; t++)
        for (c = 0; c < dim; c++) acc[c] += fabsf(x[t * dim + c]);
    for (c = 0; c < dim; c++) out[c] = (float)(acc[c] / (double)n);
    free(acc);
}

/* s = max(mean|x|^alpha, 1e-4), normalized by sqrt(max(s) * min(s)). */
static void awq_scales(const float *mean_abs, int64_t dim, float alpha, float *s) {
    float mx = 0, mn = FLT_MAX, norm;
    int64_t c;
    for (c = 0; c < dim; c++) {
        s[c] = powf(mean_abs[c], alpha);
        if (s[c] < 1e-4f) s[c] = 1e-4f;
        mx = s[c] > mx ? s[c] : mx;
        mn = s[c] < mn ? s[c] : mn;
    }
    norm = sqrtf(mx * mn);
    for (c = 0; c < dim; c++) s[c] /= norm;
}

static void scale_columns(mat *W, const float *s, int invert) {
    int64_t r, c;
    for (r = 0; r < W->rows; r++)
        for (c = 0; c < W->cols; c++) W->w[r * W->cols + c] = invert ? W->w[r * W->cols + c] / s[c] : W->w[r * W->cols + c] * s[c];
}

static void scale_rows(mat *W, const float *s, int invert) {
    int64_t r, c;
    for (r = 0; r < W->rows; r++)
        for (c = 0; c < W->cols; c++) W->w[r * W->cols + c] = invert ? W->w[r * W->cols + c] / s[r] : W->w[r * W->cols + c] * s[r];
}

/* ---- clipping search ---- */

#define CLIP_STEPS 10       /* max|w| * (1 - i/20), i < 10 */
#define CLIP_TOKENS 512
#define CLIP_ROWS 64        /* rows per task */

typedef struct {
    ctx_t *c;
    mat *W;
    const float *X;         /* [S][cols], sampled tokens */
    int64_t S, group;
    quantizer q;
} clip_job;

/* One item = one group of columns x CLIP_ROWS rows: try the clamps, keep the best, clamp W. */
static void clip_task(void *p, int64_t begin, int64_t end, int thread) {
    const clip_job *j = (const clip_job *)p;
    int64_t G = j->group, cols = j->W->cols, row_chunks = (j->W->rows + CLIP_ROWS - 1) / CLIP_ROWS, item;
    float *xg = j->c->scratch + (size_t)thread * j->c->scratch_floats;   /* S * G */
    float *d = xg + j->S * G;                                             /* CLIP_ROWS * CLIP_STEPS * G */
    float *e = d + CLIP_ROWS * CLIP_STEPS * G;                            /* S * CLIP_ROWS * CLIP_STEPS */
    float *wc = e + j->S * CLIP_ROWS * CLIP_STEPS;                        /* G */
    uint8_t *bytes = (uint8_t *)(wc + G);
    for (item = begin; item < end; item++) {
        int64_t g = item / row_chunks, r0 = item % row_chunks * CLIP_ROWS, c0 = g * G;
        int64_t len = cols - c0 < G ? cols - c0 : G, nr = j->W->rows - r0 < CLIP_ROWS ? j->W->rows - r0 : CLIP_ROWS, t, r, i, k;
        for (t = 0; t < j->S; t++) memcpy(xg + t * len, j->X + t * cols + c0, sizeof(float) * (size_t)len);
        for (r = 0; r < nr; r++) {
            const float *w = j->W->w + (r0 + r) * cols + c0;
            float amax = 0;
            for (k = 0; k < len; k++) amax = fabsf(w[k]) > amax ? fabsf(w[k]) : amax;
            for (i = 0; i < CLIP_STEPS; i++) {
                float mv = amax * (1.0f - (float)i / 20.0f), *dd = d + (r * CLIP_STEPS + i) * len;
                for (k = 0; k < len; k++) wc[k] = w[k] > mv ? mv : w[k] < -mv ? -mv : w[k];
                quantize_row_with(&j->q, wc, bytes, len);
                aq_dequantize_row(j->q.type, bytes, dd, len);
                for (k = 0; k < len; k++) dd[k] -= w[k];
            }
        }
        /* e[t][r*STEPS+i] = X_t . (Q(clamp(w)) - w) */
        aq__sgemm_nt(j->S, nr * CLIP_STEPS, len, xg, len, d, len, e, nr * CLIP_STEPS, j->c->simd);
        for (r = 0; r < nr; r++) {
            float *w = j->W->w + (r0 + r) * cols + c0, amax = 0, mv;
            double best = -1;
            int best_i = 0;
            for (i = 0; i < CLIP_STEPS; i++) {
                double err = 0;
                for (t = 0; t < j->S; t++) err += (double)e[t * nr * CLIP_STEPS + r * CLIP_STEPS + i] * e[t * nr * CLIP_STEPS + r * CLIP_STEPS + i];
                if (best < 0 || err < best) { best = err; best_i = (int)i; }
            }
            for (k = 0; k < len; k++) amax = fabsf(w[k]) > amax ? fabsf(w[k]) : amax;
            mv = amax * (1.0f - (float)best_i / 20.0f);
            for (k = 0; k < len; k++) w[k] = w[k] > mv ? mv : w[k] < -mv ? -mv : w[k];
        }
    }
}

static void clip_search(ctx_t *c, mat *W, const float *X, int64_t n, int64_t group, const quantizer *q) {
    int64_t S = n < CLIP_TOKENS ? n : CLIP_TOKENS, t;
    float *xs = (float *)malloc(sizeof(float) * (size_t)(S * W->cols));
    clip_job j;
    for (t = 0; t < S; t++) memcpy(xs + t * W->cols, X + (t * n / S) * W->cols, sizeof(float) * (size_t)W->cols);
    j.c = c; j.W = W; j.X = xs; j.S = S; j.group = group; j.q = *q;
    aq__pool_run(c->pool, (W->cols + group - 1) / group * ((W->rows + CLIP_ROWS - 1) / CLIP_ROWS), 1, clip_task, &j);
    free(xs);
}

/* ---- the tool ---- */

typedef struct {
    const char *in, *out, *calib, *method;
    int awq, olive, no_offset, group, group_given, calib_seq, threads, quantize_output, mse_demo;
    int64_t calib_tokens, loss_tokens;
} options;

static const char *layer_part[9] = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"};

/* The type a matrix of this width is written as. */
static uint32_t out_type(int group, int64_t cols, int olive) {
    if (olive) return aq_type_ovp(group);
    return group == 32 && cols % 32 == 0 ? AQ_TYPE_Q4_1 : aq_type_aq4(group);
}

/* Adds a tensor to the writer: quantized matrices of AQ4 and OVP types are stored as I8 bytes. */
static void declare(aq_gguf_writer *w, const char *name, uint32_t type, int64_t cols, int64_t rows) {
    int64_t ne[2];
    if (aq_type_group(type)) { ne[0] = aq_type_row_bytes(type, cols); ne[1] = rows; aq_gguf_writer_add_tensor(w, name, AQ_TYPE_I8, 2, ne, NULL); }
    else { ne[0] = cols; ne[1] = rows; aq_gguf_writer_add_tensor(w, name, type, rows ? 2 : 1, ne, NULL); }
}

static void append_or_die(aq_gguf_writer *w, const void *p, size_t n) {
    char err[512];
    if (aq_gguf_writer_append(w, p, n, err, sizeof err)) { fprintf(stderr, "aq-quantize: %s\n", err); exit(1); }
}

static void write_quantized(ctx_t *c, aq_gguf_writer *w, const mat *W, uint32_t type) {
    int64_t rb = aq_type_row_bytes(type, W->cols), r;
    uint8_t *buf = (uint8_t *)malloc((size_t)(rb * W->rows));
    if (aq__ovp_group(type)) {
        c->n_flint += ovp_encode(c, W->w, W->rows, W->cols, type, c->ovp_sym, buf, NULL) == AQ_OVP_FLINT4;
        c->n_ovp++;
    } else
        for (r = 0; r < W->rows; r++) aq_quantize_row(type, W->w + r * W->cols, buf + r * rb, W->cols);
    append_or_die(w, buf, (size_t)(rb * W->rows));
    free(buf);
}

/* A weight of the input model as an f32 matrix. */
static mat load_f32(const aq_weight *w) {
    mat m;
    int64_t r;
    m.rows = w->rows; m.cols = w->cols;
    m.w = (float *)malloc(sizeof(float) * (size_t)(m.rows * m.cols));
    if (!m.w) { fprintf(stderr, "aq-quantize: out of memory for %s\n", w->name); exit(1); }
    for (r = 0; r < m.rows; r++) aq_dequantize_row(w->type, (const uint8_t *)w->data + r * w->row_bytes, m.w + r * m.cols, m.cols);
    return m;
}

/* Copies a tensor as it is in the input file (or quantized, for --quantize-output). */
static void write_passthrough(ctx_t *c, aq_gguf_writer *w, const aq_weight *wt, uint32_t type) {
    if (type == wt->type) append_or_die(w, wt->data, wt->row_bytes * (size_t)wt->rows);
    else {
        mat m = load_f32(wt);
        write_quantized(c, w, &m, type);
        free(m.w);
    }
}

/* ---- --mse-demo ---- */

#define DEMO_ROWS 1024
#define DEMO_COLS 4096

/* splitmix64, so the demo's matrices are the same everywhere */
static double demo_uniform(uint64_t *st) {
    uint64_t z = (*st += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return ((double)((z ^ (z >> 31)) >> 11) + 0.5) / 9007199254740992.0;
}

static double demo_gaussian(uint64_t *st) {
    double u = demo_uniform(st), v = demo_uniform(st);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* Student-t with nu degrees of freedom: z / sqrt(chi2_nu / nu) */
static double demo_student(uint64_t *st, int nu) {
    double z = demo_gaussian(st), chi2 = 0;
    int k;
    for (k = 0; k < nu; k++) { double g = demo_gaussian(st); chi2 += g * g; }
    return z / sqrt(chi2 / nu);
}

static void mse_demo_header(void) {
    printf("relative weight error sum (w - Q(w))^2 / sum w^2 (lower is better); OVP grid in brackets\n");
    printf("%-30s %5s %14s %22s %22s\n", "matrix", "group", "RTN int4 asym", "OVP, m = 0", "OVP + offset");
}

/* One matrix (or the sum over a model's matrices): the three quantizers' relative errors. */
typedef struct { double ss, rtn, ovp[2]; int64_t n_mats, flint[2]; } demo_acc;  /* ovp, flint: [offsets, m = 0] */

static void demo_add(ctx_t *c, demo_acc *acc, const float *w, int64_t rows, int64_t cols, int group) {
    uint32_t aq4 = aq_type_aq4(group), ovp = aq_type_ovp(group);
    int64_t rb = aq_type_row_bytes(aq4, cols), r, k;
    uint8_t *q = (uint8_t *)malloc((size_t)rb);
    float *d = (float *)malloc(sizeof(float) * (size_t)cols);
    int sym;
    for (r = 0; r < rows; r++) {
        const float *x = w + r * cols;
        aq_quantize_row(aq4, x, q, cols);
        aq_dequantize_row(aq4, q, d, cols);
        for (k = 0; k < cols; k++) { acc->rtn += (double)(x[k] - d[k]) * (x[k] - d[k]); acc->ss += (double)x[k] * x[k]; }
    }
    for (sym = 0; sym < 2; sym++) {
        double sse;
        int grid = ovp_encode(c, w, rows, cols, ovp, sym ? AQ_OVP_SYMMETRIC : 0, NULL, &sse);
        acc->ovp[sym] += sse;
        acc->flint[sym] += grid == AQ_OVP_FLINT4;
    }
    acc->n_mats++;
    free(q);
    free(d);
}

static void demo_print(const char *what, int group, const demo_acc *a) {
    char g0[32], g1[32];
    /* a model's matrices each keep their own grid: say how many chose flint4 */
    if (a->n_mats == 1) {
        snprintf(g0, sizeof g0, "%s", a->flint[1] ? "flint4" : "int4");
        snprintf(g1, sizeof g1, "%s", a->flint[0] ? "flint4" : "int4");
    } else {
        snprintf(g0, sizeof g0, "%lld/%lld flint4", (long long)a->flint[1], (long long)a->n_mats);
        snprintf(g1, sizeof g1, "%lld/%lld flint4", (long long)a->flint[0], (long long)a->n_mats);
    }
    printf("%-30s %5d %14.4e %10.4e [%-9s] %10.4e [%-9s]\n", what, group, a->rtn / a->ss, a->ovp[1] / a->ss, g0,
           a->ovp[0] / a->ss, g1);
}

static void mse_demo(ctx_t *c, const aq_model *m, int group) {
    static const char *names[2] = {"student-t(3) 1024x4096", "gaussian 1024x4096"};
    float *w = (float *)malloc(sizeof(float) * DEMO_ROWS * DEMO_COLS);
    int dist;
    int64_t i;
    if (!w) { fprintf(stderr, "aq-quantize: out of memory\n"); exit(1); }
    for (dist = 0; dist < 2; dist++) {
        uint64_t st = 42 + (uint64_t)dist;
        demo_acc acc;
        memset(&acc, 0, sizeof acc);
        for (i = 0; i < (int64_t)DEMO_ROWS * DEMO_COLS; i++) w[i] = (float)(0.02 * (dist == 0 ? demo_student(&st, 3) : demo_gaussian(&st)));
        demo_add(c, &acc, w, DEMO_ROWS, DEMO_COLS, group);
        demo_print(names[dist], group, &acc);
    }
    free(w);
    if (m) {
        demo_acc acc;
        int l, k;
        memset(&acc, 0, sizeof acc);
        for (l = 0; l < m->cfg.n_layers; l++) {
            const aq_weight *ws[7];
            const aq__layer *L = &m->layers[l];
            ws[0] = &L->wq; ws[1] = &L->wk; ws[2] = &L->wv; ws[3] = &L->wo; ws[4] = &L->w_gate; ws[5] = &L->w_up; ws[6] = &L->w_down;
            for (k = 0; k < 7; k++) {
                mat x = load_f32(ws[k]);
                demo_add(c, &acc, x.w, x.rows, x.cols, group);
                free(x.w);
            }
        }
        demo_print("the model's block matrices", group, &acc);
    }
    fflush(stdout);
}

static float *alloc_floats(int64_t n) {
    float *p = (float *)calloc((size_t)n, sizeof(float));
    if (!p) { fprintf(stderr, "aq-quantize: out of memory (%lld floats)\n", (long long)n); exit(1); }
    return p;
}

int main(int argc, char **argv) {
    options o;
    char err[512], name[128], b1[32], b2[32];
    aq_model *m;
    const aq_config *cfg;
    const aq_gguf *g;
    aq_gguf_writer *w;
    ctx_t c;
    int i, l;
    int64_t N = 0, NL = 0, dim, qd, kvd, ff, wmax, qbytes = 0, qweights = 0, kvi;
    int32_t *calib_ids = NULL;
    double t0 = aq_time_seconds();
    uint32_t embd_type, out_w_type;
    quantizer qz[7];          /* the search's quantizer for each of a layer's matrices */
    /* calibration activations */
    float *X = NULL, *xn1 = NULL, *att = NULL, *attn_out = NULL, *h = NULL, *xn2 = NULL, *a = NULL, *gbuf = NULL, *mlp_out = NULL;
    float *cand = NULL, *cand_a = NULL, *cand_att = NULL, *mean_abs = NULL, *s = NULL, *best_s = NULL;
    attn_buf ab;

    memset(&o, 0, sizeof o);
    memset(&c, 0, sizeof c);
    o.awq = 1; o.method = "awq"; o.group = 128; o.calib_tokens = 8192; o.calib_seq = 512; o.loss_tokens = 2048;
    for (i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(arg, "--method")) {
            const char *v = tool_arg("aq-quantize", argc, argv, &i);
            if (strcmp(v, "awq") && strcmp(v, "rtn") && strcmp(v, "olive") && strcmp(v, "awq+olive")) {
                fprintf(stderr, "aq-quantize: --method must be awq, rtn, olive or awq+olive, got '%s'\n", v);
                return 2;
            }
            o.method = v;
            o.awq = !strcmp(v, "awq") || !strcmp(v, "awq+olive");
            o.olive = !strcmp(v, "olive") || !strcmp(v, "awq+olive");
        } else if (!strcmp(arg, "--mse-demo")) o.mse_demo = 1;
        else if (!strcmp(arg, "--no-offset")) o.no_offset = 1;
        else if (!strcmp(arg, "--group")) {
            o.group = (int)tool_number("aq-quantize", arg, tool_arg("aq-quantize", argc, argv, &i), 32, 128);
            o.group_given = 1;
            if (!aq_type_aq4(o.group)) { fprintf(stderr, "aq-quantize: --group must be 32, 64 or 128\n"); return 2; }
        } else if (!strcmp(arg, "--calib")) o.calib = tool_arg("aq-quantize", argc, argv, &i);
        else if (!strcmp(arg, "--calib-tokens")) o.calib_tokens = (int64_t)tool_number("aq-quantize", arg, tool_arg("aq-quantize", argc, argv, &i), 1, 1 << 24);
        else if (!strcmp(arg, "--calib-seq")) o.calib_seq = (int)tool_number("aq-quantize", arg, tool_arg("aq-quantize", argc, argv, &i), 2, 1 << 16);
        else if (!strcmp(arg, "--loss-tokens")) o.loss_tokens = (int64_t)tool_number("aq-quantize", arg, tool_arg("aq-quantize", argc, argv, &i), 1, 1 << 24);
        else if (!strcmp(arg, "--quantize-output")) o.quantize_output = 1;
        else if (!strcmp(arg, "-t")) o.threads = (int)tool_number("aq-quantize", arg, tool_arg("aq-quantize", argc, argv, &i), 1, 512);
        else if (arg[0] == '-') { fprintf(stderr, "aq-quantize: unknown argument '%s'\n", arg); usage(stderr); return 2; }
        else if (!o.in) o.in = arg;
        else if (!o.out) o.out = arg;
        else { fprintf(stderr, "aq-quantize: unexpected argument '%s'\n", arg); usage(stderr); return 2; }
    }
    if (o.mse_demo) {
        int gi, groups[3] = {32, 64, 128};
        if (o.out) { fprintf(stderr, "aq-quantize: --mse-demo writes no file (unexpected argument '%s')\n", o.out); return 2; }
        m = NULL;
        if (o.in && !(m = aq_model_load(o.in, err, sizeof err))) { fprintf(stderr, "aq-quantize: %s\n", err); return 1; }
        c.n_threads = o.threads > 0 ? o.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
        if (c.n_threads < 1) c.n_threads = 1;
        c.pool = aq__pool_new(c.n_threads);
        if (!c.pool) { fprintf(stderr, "aq-quantize: cannot start %d threads\n", c.n_threads); return 1; }
        mse_demo_header();
        for (gi = 0; gi < 3; gi++)
            if (!o.group_given || groups[gi] == o.group) mse_demo(&c, m, groups[gi]);
        aq__pool_free(c.pool);
        aq_model_free(m);
        return 0;
    }
    if (!o.in || !o.out) { fprintf(stderr, "aq-quantize: need an input and an output file\n"); usage(stderr); return 2; }
    if (o.no_offset && !o.olive) { fprintf(stderr, "aq-quantize: --no-offset is for --method olive or awq+olive\n"); return 2; }
    if (o.awq && !o.calib) { fprintf(stderr, "aq-quantize: --method %s needs calibration text (--calib FILE.txt)\n", o.method); return 2; }

    m = aq_model_load(o.in, err, sizeof err);
    if (!m) { fprintf(stderr, "aq-quantize: %s\n", err); return 1; }
    cfg = aq_model_config(m);
    g = aq_model_gguf(m);
    dim = cfg->n_embd; qd = (int64_t)cfg->n_heads * cfg->head_dim; kvd = (int64_t)cfg->n_kv_heads * cfg->head_dim; ff = cfg->n_ff;
    wmax = dim > qd ? dim : qd;             /* the widest input of a scaling group */
    wmax = ff > wmax ? ff : wmax;
    embd_type = o.quantize_output ? out_type(o.group, dim, o.olive) : m->tok_embd.type;
    out_w_type = o.quantize_output ? out_type(o.group, dim, o.olive) : m->output.type;

    c.n_threads = o.threads > 0 ? o.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (c.n_threads < 1) c.n_threads = 1;
    c.pool = aq__pool_new(c.n_threads);
    c.simd = aq__detect_simd();
    c.ovp_sym = o.no_offset ? AQ_OVP_SYMMETRIC : 0;
    if (!c.pool) { fprintf(stderr, "aq-quantize: cannot start %d threads\n", c.n_threads); return 1; }
    {   /* per-thread scratch: the largest of the attention scores, a fake-quantized row, a clip item */
        int64_t G = o.group, cols = ff > dim ? ff : dim;
        c.scratch_floats = (int64_t)o.calib_seq + 2 * cols + 64;
        if (CLIP_TOKENS * G + CLIP_ROWS * CLIP_STEPS * G + CLIP_TOKENS * CLIP_ROWS * CLIP_STEPS + 2 * G + 64 > c.scratch_floats)
            c.scratch_floats = CLIP_TOKENS * G + CLIP_ROWS * CLIP_STEPS * G + CLIP_TOKENS * CLIP_ROWS * CLIP_STEPS + 2 * G + 64;
        c.scratch = alloc_floats(c.scratch_floats * c.n_threads);
    }

    if (o.awq) {
        int64_t n_ids;
        if (o.calib_seq > cfg->n_ctx_train) { fprintf(stderr, "aq-quantize: --calib-seq %d exceeds the trained context %d\n", o.calib_seq, cfg->n_ctx_train); return 2; }
        calib_ids = tool_tokenize_documents("aq-quantize", aq_model_vocab(m), o.calib, o.calib_tokens, &n_ids);
        N = n_ids / o.calib_seq * o.calib_seq;
        if (N == 0) { fprintf(stderr, "aq-quantize: %s has fewer than --calib-seq %d tokens\n", o.calib, o.calib_seq); return 1; }
        NL = o.loss_tokens ? (o.loss_tokens + o.calib_seq - 1) / o.calib_seq * o.calib_seq : N;
        if (NL > N) NL = N;
        fprintf(stderr, "calibration: %lld tokens (%lld x %d) from %s; search loss on %lld tokens\n", (long long)N,
                (long long)(N / o.calib_seq), o.calib_seq, o.calib, (long long)NL);
        X = alloc_floats(N * dim); xn1 = alloc_floats(N * dim); att = alloc_floats(N * qd); attn_out = alloc_floats(N * dim);
        h = alloc_floats(N * dim); xn2 = alloc_floats(N * dim); a = alloc_floats(N * ff); gbuf = alloc_floats(N * ff);
        mlp_out = alloc_floats(N * dim); cand = alloc_floats(NL * dim); cand_a = alloc_floats(NL * ff); cand_att = alloc_floats(NL * qd);
        mean_abs = alloc_floats(wmax); s = alloc_floats(wmax); best_s = alloc_floats(4 * wmax);
        ab.cfg = cfg; ab.L = o.calib_seq;
        ab.q = alloc_floats(N * qd); ab.k = alloc_floats(N * kvd); ab.v = alloc_floats(N * kvd);
        ab.rope = alloc_floats((int64_t)o.calib_seq * cfg->n_rot);
        for (i = 0; i < o.calib_seq; i++) {
            int k;
            for (k = 0; k < cfg->n_rot / 2; k++) {
                float angle = (float)i * (1.0f / powf(cfg->rope_base, (float)(2 * k) / (float)cfg->n_rot));
                ab.rope[i * cfg->n_rot + 2 * k] = cosf(angle);
                ab.rope[i * cfg->n_rot + 2 * k + 1] = sinf(angle);
            }
        }
        for (i = 0; i < N; i++)
            aq_dequantize_row(m->tok_embd.type, (const uint8_t *)m->tok_embd.data + (size_t)calib_ids[i] * m->tok_embd.row_bytes, X + i * dim, dim);
    }

    /* ---- the output file: metadata, then every tensor declared before any data ---- */
    w = aq_gguf_writer_new();
    for (kvi = 0; kvi < aq_gguf_n_kv(g); kvi++) {
        const aq_gguf_kv *kv = aq_gguf_kv_at(g, kvi);
        if (aq__str_eq(kv->key, "general.file_type") || (kv->key.len > 16 && !memcmp(kv->key.ptr, "aq.quantization.", 16))) continue;
        aq_gguf_writer_copy_kv(w, kv);
    }
    {
        char method[64];
        snprintf(method, sizeof method, "%s%s", o.method, o.no_offset ? " (no offset)" : "");
        aq_gguf_writer_set_str(w, "aq.quantization.method", method);
    }
    aq_gguf_writer_set_str(w, "aq.quantization.format", o.olive ? "ovp" : "aq4");
    aq_gguf_writer_set_u32(w, "aq.quantization.group_size", (uint32_t)o.group);
    aq_gguf_writer_set_u32(w, "aq.quantization.version", 1);
    if (o.awq) {
        char desc[512];
        snprintf(desc, sizeof desc, "%lld x %d tokens of %s", (long long)(N / o.calib_seq), o.calib_seq, o.calib);
        aq_gguf_writer_set_str(w, "aq.quantization.calibration", desc);
    }
    {
        int all_q41 = out_type(o.group, dim, o.olive) == AQ_TYPE_Q4_1 && out_type(o.group, qd, o.olive) == AQ_TYPE_Q4_1 &&
                      out_type(o.group, ff, o.olive) == AQ_TYPE_Q4_1;
        if (all_q41) aq_gguf_writer_set_u32(w, "general.file_type", 3); /* llama.cpp's MOSTLY_Q4_1 */
    }
    declare(w, "token_embd.weight", embd_type, dim, cfg->n_vocab);
    for (l = 0; l < cfg->n_layers; l++) {
        const int64_t cols[9] = {dim, dim, dim, dim, qd, dim, dim, dim, ff}, rows[9] = {0, qd, kvd, kvd, dim, 0, ff, ff, dim};
        for (i = 0; i < 9; i++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, layer_part[i]);
            declare(w, name, rows[i] ? out_type(o.group, cols[i], o.olive) : AQ_TYPE_F32, cols[i], rows[i]);
        }
    }
    declare(w, "output_norm.weight", AQ_TYPE_F32, dim, 0);
    if (!cfg->tied_output) declare(w, "output.weight", out_w_type, dim, cfg->n_vocab);
    if (aq_gguf_writer_begin(w, o.out, err, sizeof err)) { fprintf(stderr, "aq-quantize: %s\n", err); return 1; }
    write_passthrough(&c, w, &m->tok_embd, embd_type);

    for (l = 0; l < cfg->n_layers; l++) {
        const aq__layer *L = &m->layers[l];
        mat Wq = load_f32(&L->wq), Wk = load_f32(&L->wk), Wv = load_f32(&L->wv), Wo = load_f32(&L->wo);
        mat Wg = load_f32(&L->w_gate), Wu = load_f32(&L->w_up), Wd = load_f32(&L->w_down);
        mat *all[7];
        float *attn_norm = alloc_floats(dim), *ffn_norm = alloc_floats(dim);
        char alphas[160] = "";
        double tl = aq_time_seconds();
        memcpy(attn_norm, L->attn_norm, sizeof(float) * (size_t)dim);
        memcpy(ffn_norm, L->ffn_norm, sizeof(float) * (size_t)dim);
        all[0] = &Wq; all[1] = &Wk; all[2] = &Wv; all[3] = &Wo; all[4] = &Wg; all[5] = &Wu; all[6] = &Wd;

        for (i = 0; i < 7; i++) { /* OVP: the search keeps the grid the unscaled matrix prefers */
            qz[i].type = o.olive ? aq_type_ovp(o.group) : aq_type_aq4(o.group);
            qz[i].ovp_flags = o.awq && o.olive ? ovp_encode(&c, all[i]->w, all[i]->rows, all[i]->cols, qz[i].type, c.ovp_sym, NULL, NULL) | c.ovp_sym : 0;
        }
        if (o.awq) {
            /* 1. the f32 layer over all calibration tokens */
            mat q1, k1, v1, o1, g1, u1, d1;
            int grp, ai;
            rmsnorm_rows(xn1, X, attn_norm, N, dim, cfg->rms_eps);
            attention_block(&c, &ab, xn1, N, &Wq, &Wk, &Wv, &Wo, att, attn_out);
            for (i = 0; i < N * dim; i++) h[i] = X[i] + attn_out[i];
            rmsnorm_rows(xn2, h, ffn_norm, N, dim, cfg->rms_eps);
            mlp_block(&c, xn2, N, &Wg, &Wu, &Wd, gbuf, a, mlp_out);
            q1.w = alloc_floats(qd * dim); k1.w = alloc_floats(kvd * dim); v1.w = alloc_floats(kvd * dim); o1.w = alloc_floats(dim * qd);
            g1.w = alloc_floats(ff * dim); u1.w = alloc_floats(ff * dim); d1.w = alloc_floats(dim * ff);

            /* 2. scale search, one group at a time, all on the original f32 weights */
            for (grp = 0; grp < 4; grp++) {
                const float *xin = grp == 0 ? xn1 : grp == 1 ? att : grp == 2 ? xn2 : a;
                int64_t width = grp == 0 ? dim : grp == 1 ? qd : grp == 2 ? dim : ff;
                double best = -1;
                float best_alpha = 0;
                if (grp == 1 && cfg->n_kv_heads != cfg->n_heads) { strcat(alphas, " o -"); continue; } /* GQA: v and o do not match */
                channel_mean_abs(xin, N, width, mean_abs);
                for (ai = 0; ai < 20; ai++) {
                    float alpha = (float)ai / 20.0f;
                    double loss;
                    awq_scales(mean_abs, width, alpha, s);
                    if (grp == 0) {
                        fake_quant(&c, &Wq, s, &qz[0], &q1); fake_quant(&c, &Wk, s, &qz[1], &k1); fake_quant(&c, &Wv, s, &qz[2], &v1);
                        attention_block(&c, &ab, xn1, NL, &q1, &k1, &v1, &Wo, cand_att, cand);
                        loss = mse(cand, attn_out, NL * dim);
                    } else if (grp == 1) {
                        fake_quant(&c, &Wo, s, &qz[3], &o1);
                        matmul(&c, &o1, att, NL, cand);
                        loss = mse(cand, attn_out, NL * dim);
                    } else if (grp == 2) {
                        fake_quant(&c, &Wg, s, &qz[4], &g1); fake_quant(&c, &Wu, s, &qz[5], &u1);
                        mlp_block(&c, xn2, NL, &g1, &u1, &Wd, gbuf, cand_a, cand);
                        loss = mse(cand, mlp_out, NL * dim);
                    } else {
                        fake_quant(&c, &Wd, s, &qz[6], &d1);
                        matmul(&c, &d1, a, NL, cand);
                        loss = mse(cand, mlp_out, NL * dim);
                    }
                    if (best < 0 || loss < best) { best = loss; best_alpha = alpha; memcpy(best_s + grp * wmax, s, sizeof(float) * (size_t)width); }
                }
                snprintf(alphas + strlen(alphas), sizeof alphas - strlen(alphas), " %s %.2f", grp == 0 ? "qkv" : grp == 1 ? "o" : grp == 2 ? "gate/up" : "down", best_alpha);
            }
            free(q1.w); free(k1.w); free(v1.w); free(o1.w); free(g1.w); free(u1.w); free(d1.w);

            /* 3. fold the scales: the previous op takes 1/s, the group's columns s; the cached
               inputs are divided by s too, as the quantized model will see them */
            {
                int64_t t, ch;
                const float *s1 = best_s, *s2 = best_s + wmax, *s3 = best_s + 2 * wmax, *s4 = best_s + 3 * wmax;
                for (ch = 0; ch < dim; ch++) attn_norm[ch] /= s1[ch];
                scale_columns(&Wq, s1, 0); scale_columns(&Wk, s1, 0); scale_columns(&Wv, s1, 0);
                for (t = 0; t < N; t++) for (ch = 0; ch < dim; ch++) xn1[t * dim + ch] /= s1[ch];
                if (cfg->n_kv_heads == cfg->n_heads) {
                    scale_rows(&Wv, s2, 1); scale_columns(&Wo, s2, 0);
                    for (t = 0; t < N; t++) for (ch = 0; ch < qd; ch++) att[t * qd + ch] /= s2[ch];
                }
                for (ch = 0; ch < dim; ch++) ffn_norm[ch] /= s3[ch];
                scale_columns(&Wg, s3, 0); scale_columns(&Wu, s3, 0);
                for (t = 0; t < N; t++) for (ch = 0; ch < dim; ch++) xn2[t * dim + ch] /= s3[ch];
                scale_rows(&Wu, s4, 1); scale_columns(&Wd, s4, 0);
                for (t = 0; t < N; t++) for (ch = 0; ch < ff; ch++) a[t * ff + ch] /= s4[ch];
            }

            /* 4. clipping on every linear but q and k */
            clip_search(&c, &Wv, xn1, N, o.group, &qz[2]);
            clip_search(&c, &Wo, att, N, o.group, &qz[3]);
            clip_search(&c, &Wg, xn2, N, o.group, &qz[4]);
            clip_search(&c, &Wu, xn2, N, o.group, &qz[5]);
            clip_search(&c, &Wd, a, N, o.group, &qz[6]);

            /* 5. the next layer sees the f32 layer's output */
            for (i = 0; i < N * dim; i++) X[i] = h[i] + mlp_out[i];
        }

        append_or_die(w, attn_norm, sizeof(float) * (size_t)dim);
        for (i = 0; i < 4; i++) write_quantized(&c, w, all[i], out_type(o.group, all[i]->cols, o.olive));
        append_or_die(w, ffn_norm, sizeof(float) * (size_t)dim);
        for (i = 4; i < 7; i++) write_quantized(&c, w, all[i], out_type(o.group, all[i]->cols, o.olive));
        for (i = 0; i < 7; i++) {
            qweights += all[i]->rows * all[i]->cols;
            qbytes += aq_type_row_bytes(out_type(o.group, all[i]->cols, o.olive), all[i]->cols) * all[i]->rows;
            free(all[i]->w);
        }
        free(attn_norm); free(ffn_norm);
        fprintf(stderr, "layer %d/%d  %.1f s (total %.1f s)%s%s\n", l + 1, cfg->n_layers, aq_time_seconds() - tl,
                aq_time_seconds() - t0, o.awq ? "  alpha:" : "", alphas);
    }
    append_or_die(w, m->output_norm, sizeof(float) * (size_t)dim);
    if (!cfg->tied_output) write_passthrough(&c, w, &m->output, out_w_type);
    if (aq_gguf_writer_end(w, err, sizeof err)) { fprintf(stderr, "aq-quantize: %s\n", err); return 1; }
    aq_gguf_writer_free(w);

    {
        aq_gguf *in = aq_gguf_open(o.in, err, sizeof err), *out = aq_gguf_open(o.out, err, sizeof err);
        char grids[64] = "";
        if (c.n_ovp) snprintf(grids, sizeof grids, "; OVP normals: %d int4, %d flint4 matrices", c.n_ovp - c.n_flint, c.n_flint);
        fprintf(stderr, "%s: %s, group %d, %.1f s; %lld matrix weights at %.3f bits each%s; file %s -> %s\n", o.out,
                o.method, o.group, aq_time_seconds() - t0, (long long)qweights, 8.0 * (double)qbytes / (double)qweights, grids,
                tool_bytes((double)(in ? aq_gguf_file_size(in) : 0), b1, sizeof b1), tool_bytes((double)(out ? aq_gguf_file_size(out) : 0), b2, sizeof b2));
        aq_gguf_close(in);
        aq_gguf_close(out);
    }
    free(X); free(xn1); free(att); free(attn_out); free(h); free(xn2); free(a); free(gbuf); free(mlp_out);
    free(cand); free(cand_a); free(cand_att); free(mean_abs); free(s); free(best_s);
    if (o.awq) { free(ab.q); free(ab.k); free(ab.v); free(ab.rope); }
    free(calib_ids);
    free(c.scratch);
    aq__pool_free(c.pool);
    aq_model_free(m);
    return 0;
}
