/* aq_cuda.h - the C ABI of awq_quest's CUDA kernels (kernels/aq_cuda.cu).

   awq_quest.h compiled with AQ_CUDA calls these; nothing here needs the CUDA headers, so the
   header stays plain C.  Every call that can fail returns NULL or -1 and writes a message into
   (err, err_len).  The objects own device memory; a session owns a CUDA stream and a cuBLAS
   handle and must be used from one host thread at a time.

   WEIGHT LAYOUT ON THE GPU (the host repacks the file's tensors into it once, at upload)
     AQC_INT4: rows x cols_padded 4-bit codes, cols padded to a whole number of groups with zero
     codes.  Row r is cols_padded / 8 uint32 words; word i holds elements 8i..8i+7 with element
     8i + e in nibble n where e = {0, 2, 4, 6, 1, 3, 5, 7}[n] (so (word >> 4s) & 0x000f000f puts
     elements 2s and 2s+1 in the low bits of the two halves of a half2: AWQ's mantissa trick).
     scales and mins are f16 [rows][cols_padded / group]; w = q * scale + min (the file's AQ4
     and Q4_1 blocks carry exactly this pair).
     AQC_OVP: OliVe outlier-victim pairs, rows x cols_padded / 2 bytes, byte j of a row holding
     elements 2j (low nibble) and 2j+1 (high nibble); scales and mins as for int4, where a scale's
     sign bit picks the group's normal grid (0: int4, 1: flint4) and w = v * |scale| + min, with
     (v[2j], v[2j+1]) = ovp_table[grid][byte], the decoder's own table handed over by the host.
     AQC_F16: rows x cols_padded halves, cols padded to a multiple of 32 with zeros.
   Several matrices with the same input (q/k/v, gate/up) are uploaded as one, stacked by rows. */
#ifndef AQ_CUDA_H
#define AQ_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { AQC_F16 = 0, AQC_INT4 = 1, AQC_OVP = 2 };

typedef struct {
    int format;                     /* AQC_F16 or AQC_INT4 */
    int64_t rows, cols;             /* cols as the model sees it (before padding) */
    int64_t cols_padded, group;     /* group: int4 and OVP (32, 64 or 128) */
    const void *data;               /* host memory, layout above */
    const uint16_t *scales, *mins;  /* int4 and OVP */
    const float *ovp_table;         /* OVP: [2 grids][256 bytes][2 values] */
} aqc_weight;

typedef struct {
    int n_vocab, n_embd, n_layers, n_heads, n_kv_heads, head_dim, n_rot, n_ff;
    float rms_eps, rope_base;
} aqc_config;

/* Per-layer slots for aqc_model_set_weight; layer -1 takes AQC_TOK_EMBD (must be AQC_F16) and
   AQC_OUTPUT. */
enum { AQC_QKV = 0, AQC_WO = 1, AQC_GATE_UP = 2, AQC_DOWN = 3, AQC_TOK_EMBD = 4, AQC_OUTPUT = 5 };
/* Norm slots: per layer AQC_ATTN_NORM, AQC_FFN_NORM; layer -1 AQC_OUTPUT_NORM. */
enum { AQC_ATTN_NORM = 0, AQC_FFN_NORM = 1, AQC_OUTPUT_NORM = 2 };

typedef struct aqc_model aqc_model;
typedef struct aqc_session aqc_session;

/* 0 and the name of device 0, or -1 and why there is no usable one (no driver, no device, a
   device older than sm_80). */
int aqc_device_name(char *name, size_t name_len, char *err, size_t err_len);

aqc_model *aqc_model_new(const aqc_config *c, char *err, size_t err_len);
void       aqc_model_free(aqc_model *m);
int        aqc_model_set_weight(aqc_model *m, int layer, int slot, const aqc_weight *w, char *err, size_t err_len);
int        aqc_model_set_norm(aqc_model *m, int layer, int slot, const float *w, char *err, size_t err_len);
/* Output shares the embedding table (tied models). */
int        aqc_model_tie_output(aqc_model *m, char *err, size_t err_len);
uint64_t   aqc_model_bytes(const aqc_model *m);   /* device memory the weights take */

typedef struct {
    int n_ctx, page_size, n_batch;
    int quest_budget;        /* tokens; 0 = dense */
    int quest_dense_layers;
    int quest_bounds;        /* bits per stored key bound: 16 or 8 (awq_quest.h's quest_bounds) */
    int use_graph;           /* capture the decode step in a CUDA graph */
} aqc_session_config;

aqc_session *aqc_session_new(const aqc_model *m, const aqc_session_config *c, char *err, size_t err_len);
void         aqc_session_free(aqc_session *s);
uint64_t     aqc_session_kv_bytes(const aqc_session *s);
/* Runs n tokens at positions pos0 .. pos0+n-1 (KV cache below pos0 must be filled).  n == 1 is a
   decode step (GEMV kernels), n > 1 a prompt batch (cuBLAS).  logits (host memory, may be NULL)
   receives the last token's n_vocab logits, or every token's when all is set. */
int aqc_eval(aqc_session *s, const int32_t *ids, int n, int pos0, float *logits, int all, char *err, size_t err_len);
/* One decode step whose only copy back is the argmax token: the step of greedy generation. */
int aqc_step_greedy(aqc_session *s, int32_t token, int pos, int32_t *next, char *err, size_t err_len);
/* One decode step whose only copy back is a sampled token: aq_sampler_sample's rules without the
   repetition penalty (temperature > 0, top_k in [1, 1024], then top_p and min_p), r being the
   host sampler's uniform draw in [0, 1). */
typedef struct {
    float temperature;
    int top_k;
    float top_p, min_p;
} aqc_sampling;
int aqc_step_sample(aqc_session *s, int32_t token, int pos, const aqc_sampling *p, float r, int32_t *next, char *err, size_t err_len);
/* An experiment, for aq-gpu-check's timings: the Quest layers of later decode steps run their
   selection and sparse attention in one grid (aqc_quest_onepass_kernel, with the step's
   attention kernel) instead of three kernels, when on; needs quest_bounds 8 and a budget.
   Returns 0 or -1. */
int aqc_session_set_quest_one_grid(aqc_session *s, int on, char *err, size_t err_len);
/* Where a decode step's time goes: one step (token at pos, as aqc_step_greedy's without the argmax)
   with an event after each stage, replayed as a CUDA graph; per stage (named as "q, k, v",
   "Quest selection", ...) the number of times it ran and its total in us, in the order first
   seen.  Events between kernels keep programmatic launches from overlapping them.  Returns the
   number of entries written (at most max_entries) or -1. */
typedef struct {
    const char *name;
    int calls;
    double us;
} aqc_profile_entry;
int aqc_profile_step(aqc_session *s, int32_t token, int pos, aqc_profile_entry *out, int max_entries, char *err, size_t err_len);
/* Benchmarks: random keys and values (and their page bounds) in positions 0..n-1 of every layer. */
int aqc_session_fill_random(aqc_session *s, int n, uint64_t seed, char *err, size_t err_len);

/* ---- kernel checks and timings for tools/aq-gpu-check (host arrays in, host arrays out) ---- */

/* y[rows] = W x' through the decode path (activation prep + GEMV kernel), x' being x[cols]
   RMS-normalized with weights norm[cols] and eps where norm is given, times silu(gate[cols])
   where gate is given.  stage_major (int4 weights; an experiment): the codes rearranged on the
   device stage by stage first, as aqc_gemv_4bit_kernel describes. */
int aqc_check_gemv(const aqc_weight *w, int stage_major, const float *x, const float *gate, const float *norm, float eps, float *y,
                   char *err, size_t err_len);
/* y[n][rows] = x[n][cols] W^T through the prompt path (dequantize + cuBLAS). */
int aqc_check_gemm(const aqc_weight *w, const float *x, int n, float *y, char *err, size_t err_len);
/* One layer's attention for the queries at the last n_queries positions of the context (one: a
   decode step; more: a prompt, each query seeing the positions up to its own).  k, v:
   [n_ctx][n_kv_heads][head_dim] floats (stored to the paged f16 cache by the append kernel,
   bounds by the bounds kernel for all but the last page_size + 1 positions, which the decode
   step's append adds one at a time), q: [n_queries][n_heads][head_dim].  budget 0 = dense (Quest
   takes one query).  bounds_bits: 16 or 8, as a session's quest_bounds.  one_grid: also run
   Quest in one grid (aqc_quest_onepass_kernel, an experiment: one query, 8-bit bounds) twice,
   with the step's attention kernel and, where that is the tensor-core one, with the register
   one, and fail unless its output is the step's kernels' (bit for bit with the same attention
   kernel, else to 1e-5 of the largest value) and its merge's prep the prep kernel's.  out:
   [n_queries][n_heads][head_dim]; pages (may be NULL): [n_kv_heads][budget / page_size] the
   selected pages, ascending, current page last; bounds (may be NULL): the complete pages' bounds
   as awq_quest.h stores them, [n_kv_heads][n_ctx / page_size] records of 4 * head_dim bytes
   (f16 kmin then kmax) or, 8 bits, 2 * head_dim int8 codes then head_dim / 8 f16 scales. */
int aqc_check_attention(int n_ctx, int n_queries, int n_heads, int n_kv_heads, int head_dim, int page_size, int budget,
                        int bounds_bits, int one_grid, const float *k, const float *v, const float *q, float *out, int *pages,
                        uint8_t *bounds, char *err, size_t err_len);
/* The block top-k shared by Quest and the sampler: the k largest of vals[0..n) (ties to the
   lower index) in ascending index order, into out[k], through the path that reads vals in every
   pass (mode 0) or the register-cached one (mode 1, n <= 8192); mode 2, k = 1: the greedy
   decode's argmax kernel instead. */
int aqc_check_top_k(const float *vals, int n, int k, int mode, int *out, char *err, size_t err_len);
/* The sampled decode's draw, as aqc_step_sample launches it, from logits[n] and the uniform r. */
int aqc_check_sample(const float *logits, int n, const aqc_sampling *p, float r, int32_t *out, char *err, size_t err_len);

/* The decode step's kernels as it launches them for a model of head_dim, a session of max_pages
   pages per KV head and a GEMV input of kp columns: threads a block, registers a thread, shared
   memory a block (static and dynamic), and blocks resident per multiprocessor
   (cudaOccupancyMaxActiveBlocksPerMultiprocessor), for modelling grid sizes.  Returns the number
   of entries written (at most max_entries) or -1. */
typedef struct {
    const char *kernel;
    int threads, registers, shared_bytes, blocks_per_sm;
} aqc_occupancy;
int aqc_kernel_occupancy(int head_dim, int max_pages, int kp, aqc_occupancy *out, int max_entries, char *err, size_t err_len);

typedef struct {
    double int4_us, ovp_us, f16_us, cublas_us;   /* median of the GEMV on random data (int4_only: 0 but int4_us) */
    double int4_stages_us;   /* int4 with the codes stage by stage (an experiment); 0 where rows are one stage (4096 columns) */
} aqc_gemv_timing;
int aqc_time_gemv(int64_t rows, int64_t cols, int group, int iters, int int4_only, aqc_gemv_timing *t, char *err, size_t err_len);

typedef struct {
    double copy_gbps;                /* device-to-device copy, bytes read + written */
    double dense_us, dense_gbps;     /* dense paged attention, one layer, one step */
    double quest_us, select_us;      /* score + top-k + sparse attention; score + top-k alone */
    double score_us;                 /* the score kernel alone */
    double topk_us;                  /* the top-k kernel alone, over the scores in L2 */
    double select_fused_us;          /* score + top-k in one kernel (an experiment, aqc_quest_select_kernel) */
    double empty_us;                 /* a kernel that does nothing, as the others launch: the floor of any */
    double quest8_us, select8_us, score8_us, select_fused8_us;   /* the same four with 8-bit bounds */
    double onepass8_us;              /* Quest with selection and attention in one grid, then the merge (an experiment,
                                        aqc_quest_onepass_kernel; 8-bit bounds), with the step's attention kernel */
    double onepass8_register_us;     /* the same with the register attention where the step's is the tensor-core one
                                        (grouped KV heads), else 0; these two are timed only by a call with one_grid
                                        set, which times nothing else */
    int dense_splits, quest_splits;  /* the splits per KV head a dense and a Quest step use */
    double merge_us;                 /* the dense attention's merge kernel alone */
    int sweep_splits[5];             /* Quest's sparse attention alone (and its merge) at other split */
    double sweep_us[5];              /* counts per KV head; 0 where a count does not apply */
    int dense_sweep_splits[8];       /* the dense attention (and its merge) likewise */
    double dense_sweep_us[8];
} aqc_attention_timing;
int aqc_time_attention(int n_ctx, int n_heads, int n_kv_heads, int head_dim, int page_size, int budget, int iters, int one_grid,
                       aqc_attention_timing *t, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif
#endif /* AQ_CUDA_H */
