/* awq_quest.h - run Llama-family models from GGUF files, in one C header.

   USAGE
     In exactly one C or C++ file of your program:
         #define AWQ_QUEST_IMPLEMENTATION
         #include "awq_quest.h"
     everywhere else just #include "awq_quest.h".  Include it first in the implementation file
     (it selects POSIX declarations), compile with -pthread, link -lm, and either -lopenblas or
     define AQ_NO_BLAS for the plain C matrix multiply.  stb_ds.h (Debian libstb-dev,
     /usr/include/stb) must be on the include path.

   THE TEN-LINE PROGRAM
         char err[256];
         aq_model *m = aq_model_load("stories260K.gguf", err, sizeof err);   // NULL + message on error
         aq_session_params sp = aq_session_default_params();                 // threads, context, ...
         aq_session *s = aq_session_new(m, &sp, err, sizeof err);
         aq_sampler_params pp = aq_sampler_default_params();                 // temperature 0 = greedy
         aq_sampler *smp = aq_sampler_new(&pp, aq_model_config(m)->n_vocab);
         aq_generate(s, smp, "Once upon a time", 100, print_piece, NULL, NULL, err, sizeof err);
         aq_sampler_free(smp); aq_session_free(s); aq_model_free(m);

   WHAT IS WHERE (sections of the implementation, in data-flow order)
     utilities -> GGUF reader -> GGUF writer -> tensor types (OVP among them) -> thread pool ->
     kernels -> tokenizer -> model -> GPU upload -> session (KV cache, forward pass, or the GPU's)
     -> sampler -> generate.  The CUDA kernels themselves live in kernels/ (see its README).

   OPTIONS (define before the implementation)
     AQ_MALLOC(n) / AQ_REALLOC(p,n) / AQ_FREE(p)   allocator (default: libc)
     AQ_NO_BLAS                                    no OpenBLAS: plain C GEMM for prompts
     AQ_NO_AVX512                                  use at most the AVX2 kernels
     AQ_KEEP_BLAS_THREADS                          do not set OpenBLAS to one thread (see aq_session_new)
     AQ_STB_DS_ALREADY_IMPLEMENTED                 your program compiles stb_ds's implementation itself
     AQ_CUDA                                       the GPU backend: link build/cuda/aq_cuda.o (make cuda),
                                                   -lcudart -lcublas and -lstdc++

   CONVENTIONS
     Every call that can fail takes (char *err, size_t err_len); on failure it returns NULL or a
     negative number and writes a message naming the file, tensor, key or argument (err may be
     NULL).  The library never prints and never exits.  A loaded aq_model is read-only: any
     number of sessions, on any threads, may share it.  Little-endian hosts only (as GGUF).
*/
#ifndef AWQ_QUEST_H
#define AWQ_QUEST_H

#if defined(AWQ_QUEST_IMPLEMENTATION) && !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE)
#define _POSIX_C_SOURCE 200809L /* mmap, clock_gettime, pthreads under -std=c99 */
#endif

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AQ_VERSION "0.1.0"
#define AQ_MAX_NAME 64 /* longest tensor name GGUF allows, in bytes */

/* ======================================================================================
   Tensor element types.  The ids are ggml's, so files stay readable by llama.cpp's tools.
   On the CPU a Llama weight may be F32, F16, BF16, Q8_0, Q4_0, Q4_1, or the project's AQ4 and
   OVP types below; the reader knows the block sizes of the other ggml types (so it can open and
   describe such files) but the model loader refuses them with a message naming the tensor and
   the type.
   ====================================================================================== */
typedef enum {
    AQ_TYPE_F32 = 0, AQ_TYPE_F16 = 1, AQ_TYPE_Q4_0 = 2, AQ_TYPE_Q4_1 = 3,
    AQ_TYPE_Q5_0 = 6, AQ_TYPE_Q5_1 = 7, AQ_TYPE_Q8_0 = 8, AQ_TYPE_Q8_1 = 9,
    AQ_TYPE_Q2_K = 10, AQ_TYPE_Q3_K = 11, AQ_TYPE_Q4_K = 12, AQ_TYPE_Q5_K = 13,
    AQ_TYPE_Q6_K = 14, AQ_TYPE_Q8_K = 15, AQ_TYPE_IQ2_XXS = 16, AQ_TYPE_IQ2_XS = 17,
    AQ_TYPE_IQ3_XXS = 18, AQ_TYPE_IQ1_S = 19, AQ_TYPE_IQ4_NL = 20, AQ_TYPE_IQ3_S = 21,
    AQ_TYPE_IQ2_S = 22, AQ_TYPE_IQ4_XS = 23, AQ_TYPE_I8 = 24, AQ_TYPE_I16 = 25,
    AQ_TYPE_I32 = 26, AQ_TYPE_I64 = 27, AQ_TYPE_F64 = 28, AQ_TYPE_IQ1_M = 29,
    AQ_TYPE_BF16 = 30, AQ_TYPE_TQ1_0 = 34, AQ_TYPE_TQ2_0 = 35, AQ_TYPE_MXFP4 = 39,
    AQ_TYPE_COUNT = 40,
    /* The project's own int4 packing ("AQ4"), for group sizes ggml has no type for and for rows
       whose width is not a multiple of the group.  A row is ceil(cols / G) groups, each
       {f16 scale d, f16 offset m, G/2 bytes of 4-bit codes q}, w = q*d + m; the codes come in
       32-value sub-blocks in Q4_1's nibble order (byte j: value j in the low nibble, j+16 in the
       high one), so a group of 32 is byte for byte a Q4_1 block.  The last group is zero-padded.
       In a GGUF file such a tensor is stored as I8 bytes, ne = {row bytes, rows}, and described
       by the keys aq.quantization.format = "aq4" and aq.quantization.group_size = G. */
    AQ_TYPE_AQ4_G32 = 1032, AQ_TYPE_AQ4_G64 = 1064, AQ_TYPE_AQ4_G128 = 1128,
    /* OliVe's outlier-victim pairs ("OVP", ../shared/docs/olive.md), 4 bits per weight.  A row is
       ceil(cols / G) groups, each {f16 d, f16 m, G/2 bytes}; byte j holds the pair (element 2j in
       the low nibble, element 2j+1 in the high one); the last group is zero-padded.  Element value
       = v * |d| + m.  The sign bit of d picks the group's normal grid: d >= 0 int4, d < 0 flint4
       (writers pick one grid per tensor, by lower squared error).  A 4-bit code is a sign (bit 3)
       and a 3-bit field f:
         normal int4:    |v| = f                                  (0..7)
         normal flint4:  |v| = {0, 1, 2, 3, 4, 6, 8, 16}[f]
         outlier int4:   |v| = (2 + (f & 1)) << ((f >> 1) + 2)     {12, 16, 24, 32, 48, 64, 96} for f = 1..7
         outlier flint4: |v| = (2 + (f & 1)) << ((f >> 1) + 3)     {24, 32, 48, 64, 96, 128, 192}
       (an outlier's field is exponent e = f >> 1 and mantissa bit f & 1, never 0).  Code 1000b is
       never a normal value: it marks the victim.  A byte (lo, hi) decodes as
         hi == 1000b:  v0 = outlier(lo), v1 = 0
         lo == 1000b:  v0 = 0,           v1 = outlier(hi)
         otherwise:    v0 = normal(lo),  v1 = normal(hi)
       and a byte with both nibbles 1000b (never written) as two zeros.  In a GGUF file it is stored
       like AQ4, as I8 bytes with ne = {row bytes, rows}, with aq.quantization.format = "ovp". */
    AQ_TYPE_OVP_G32 = 2032, AQ_TYPE_OVP_G64 = 2064, AQ_TYPE_OVP_G128 = 2128
} aq_type;

const char *aq_type_name(uint32_t type);          /* "Q4_1"; "unknown" for ids ggml never used */
int64_t     aq_type_block_size(uint32_t type);    /* elements per block; 0 if unknown */
int64_t     aq_type_block_bytes(uint32_t type);   /* bytes per block; 0 if unknown */
int64_t     aq_type_row_bytes(uint32_t type, int64_t n); /* bytes of n elements; -1 if not whole blocks
                                                            (AQ4 types pad the last group instead) */
int         aq_type_cpu_supported(uint32_t type); /* usable as a weight by the CPU kernels */
uint32_t    aq_type_aq4(int64_t group);           /* AQ_TYPE_AQ4_G<group>, or 0 if there is none */
uint32_t    aq_type_ovp(int64_t group);           /* AQ_TYPE_OVP_G<group>, or 0 if there is none */
int64_t     aq_type_group(uint32_t type);         /* G of an AQ4 or OVP type, 0 for any other */

/* Conversions and row codecs.  quantize/dequantize work on the CPU-supported types; n must be a
   multiple of the type's block size (any n for AQ4).  They return 0, or -1 for an unsupported type
   or bad n.  Q4_1 and AQ4 use AWQ's asymmetric quantizer: per group, delta = (max - min) / 15,
   zero = round(-min / delta), q = clamp(round(w / delta) + zero, 0, 15), m = -zero * delta.
   OVP rows are quantized as aq_quantize_ovp does a one-row matrix (AQ_OVP_AUTO). */
float    aq_f16_to_f32(uint16_t h);
uint16_t aq_f32_to_f16(float f);                  /* round to nearest even */
float    aq_bf16_to_f32(uint16_t h);
uint16_t aq_f32_to_bf16(float f);                 /* round to nearest even */
int aq_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n);
int aq_quantize_row(uint32_t type, const float *src, void *dst, int64_t n);

/* OVP quantizer for a rows x cols matrix (row-major floats; rows of aq_type_row_bytes(type, cols)
   bytes at dst).  flags: the normal grid, AQ_OVP_INT4 or AQ_OVP_FLINT4, or AQ_OVP_AUTO to encode
   with both and keep the one with the lower total squared error (one grid for the whole matrix);
   or'ed with AQ_OVP_SYMMETRIC for m = 0 (plain OliVe).  Per group it picks the offset m and the
   scale by squared error of the encoded result (see the implementation's OVP section).  Returns
   the grid used (AQ_OVP_INT4 / AQ_OVP_FLINT4), or -1 for a bad type, size or flag, or out of
   memory.  sse, if not NULL, receives the sum of squared errors of the result. */
enum { AQ_OVP_AUTO = 0, AQ_OVP_INT4 = 1, AQ_OVP_FLINT4 = 2, AQ_OVP_SYMMETRIC = 4 };
int aq_quantize_ovp(uint32_t type, const float *src, void *dst, int64_t rows, int64_t cols, int flags, double *sse);

/* ======================================================================================
   GGUF reader.  The file is memory-mapped and validated completely on open (every count, length,
   offset and size is checked against the file), so afterwards every pointer handed out is safe to
   read.  Tensor data stays in the mapping; strings are (pointer, length) views into it.
   ====================================================================================== */
enum {
    AQ_GGUF_U8 = 0, AQ_GGUF_I8 = 1, AQ_GGUF_U16 = 2, AQ_GGUF_I16 = 3, AQ_GGUF_U32 = 4,
    AQ_GGUF_I32 = 5, AQ_GGUF_F32 = 6, AQ_GGUF_BOOL = 7, AQ_GGUF_STRING = 8, AQ_GGUF_ARRAY = 9,
    AQ_GGUF_U64 = 10, AQ_GGUF_I64 = 11, AQ_GGUF_F64 = 12, AQ_GGUF_TYPE_COUNT = 13
};

typedef struct {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;
} aq_str;

typedef struct {
    aq_str key;
    uint32_t type;        /* AQ_GGUF_* */
    uint32_t elem_type;   /* arrays: type of the elements; otherwise == type */
    uint64_t count;       /* arrays: number of elements; otherwise 1 */
    const uint8_t *data;  /* the value's bytes as stored (arrays: from the first element) */
    uint64_t nbytes;      /* size of those bytes */
    const aq_str *strs;   /* strings: strs[0]; arrays of strings: one per element; else NULL */
} aq_gguf_kv;

typedef struct {
    char name[AQ_MAX_NAME + 1];
    uint32_t type;        /* aq_type */
    uint32_t n_dims;      /* 1..4 */
    int64_t ne[4];        /* ne[0] is contiguous: a Linear [out, in] has ne = {in, out}; unused = 1 */
    uint64_t offset;      /* from the start of the data section */
    uint64_t nbytes;
    const void *data;     /* inside the mapping */
} aq_gguf_tensor;

typedef struct aq_gguf aq_gguf;

aq_gguf *aq_gguf_open(const char *path, char *err, size_t err_len);
/* Parses a GGUF image already in memory (not copied: it must outlive the aq_gguf). */
aq_gguf *aq_gguf_open_memory(const void *data, size_t size, const char *name, char *err, size_t err_len);
void     aq_gguf_close(aq_gguf *g);

const char *aq_gguf_path(const aq_gguf *g);
uint32_t aq_gguf_version(const aq_gguf *g);
uint64_t aq_gguf_alignment(const aq_gguf *g);
uint64_t aq_gguf_data_offset(const aq_gguf *g);   /* file offset of the data section */
uint64_t aq_gguf_file_size(const aq_gguf *g);

int64_t aq_gguf_n_kv(const aq_gguf *g);
const aq_gguf_kv *aq_gguf_kv_at(const aq_gguf *g, int64_t i);
const aq_gguf_kv *aq_gguf_find_kv(const aq_gguf *g, const char *key); /* NULL if absent */

/* Typed accessors: 1 = found and converted, 0 = absent, -1 = present with an incompatible type
   (or an integer that does not fit).  get_int takes any integer width and bool; get_float takes
   f32, f64 and integers. */
int aq_gguf_get_int(const aq_gguf *g, const char *key, int64_t *out);
int aq_gguf_get_float(const aq_gguf *g, const char *key, double *out);
int aq_gguf_get_str(const aq_gguf *g, const char *key, aq_str *out);
int aq_gguf_get_bool(const aq_gguf *g, const char *key, int *out);
const char *aq_gguf_type_name(uint32_t value_type); /* "u32", "string", ... */

/* Element i of an array value, converted (0 if i is out of range or the type does not convert). */
int64_t aq_gguf_arr_int(const aq_gguf_kv *kv, uint64_t i);
double  aq_gguf_arr_float(const aq_gguf_kv *kv, uint64_t i);

int64_t aq_gguf_n_tensors(const aq_gguf *g);
const aq_gguf_tensor *aq_gguf_tensor_at(const aq_gguf *g, int64_t i);
const aq_gguf_tensor *aq_gguf_find_tensor(const aq_gguf *g, const char *name);
int64_t aq_tensor_n_elements(const aq_gguf_tensor *t);

/* ======================================================================================
   GGUF writer.  Collect metadata and tensor infos, then either write everything at once
   (aq_gguf_writer_save: every tensor added with its data) or stream it (begin, then append the
   tensors' bytes in the order they were added, then end) so that files larger than memory can be
   written.  Alignment is taken from a general.alignment value if one is set, else 32; padding
   between tensors is zero bytes.  A key set twice keeps its first position and the last value.
   ====================================================================================== */
typedef struct aq_gguf_writer aq_gguf_writer;

aq_gguf_writer *aq_gguf_writer_new(void);
void aq_gguf_writer_free(aq_gguf_writer *w);
int  aq_gguf_writer_set_u32(aq_gguf_writer *w, const char *key, uint32_t v);
int  aq_gguf_writer_set_i32(aq_gguf_writer *w, const char *key, int32_t v);
int  aq_gguf_writer_set_u64(aq_gguf_writer *w, const char *key, uint64_t v);
int  aq_gguf_writer_set_f32(aq_gguf_writer *w, const char *key, float v);
int  aq_gguf_writer_set_bool(aq_gguf_writer *w, const char *key, int v);
int  aq_gguf_writer_set_str(aq_gguf_writer *w, const char *key, const char *v);
/* Array of fixed-size elements (any type but STRING and ARRAY), count elements at elems. */
int  aq_gguf_writer_set_arr(aq_gguf_writer *w, const char *key, uint32_t elem_type, const void *elems, uint64_t count);
int  aq_gguf_writer_set_arr_str(aq_gguf_writer *w, const char *key, const aq_str *strs, uint64_t count);
/* Copies a value read from another file as is (nested arrays included). */
int  aq_gguf_writer_copy_kv(aq_gguf_writer *w, const aq_gguf_kv *kv);
/* data may be NULL when the file is streamed.  Returns the tensor's index, or -1 (bad shape/type). */
int64_t aq_gguf_writer_add_tensor(aq_gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                                  const int64_t *ne, const void *data);
int  aq_gguf_writer_save(aq_gguf_writer *w, const char *path, char *err, size_t err_len);
int  aq_gguf_writer_begin(aq_gguf_writer *w, const char *path, char *err, size_t err_len);
int  aq_gguf_writer_append(aq_gguf_writer *w, const void *bytes, size_t n, char *err, size_t err_len);
int  aq_gguf_writer_end(aq_gguf_writer *w, char *err, size_t err_len);

/* ======================================================================================
   Tokenizer: SentencePiece-style BPE over the GGUF vocabulary ("llama" tokenizer model), as
   llama.cpp does it: optional space prefix, spaces as U+2581, greedy highest-score merges
   (leftmost on ties), byte-fallback tokens for anything the vocabulary lacks.
   ====================================================================================== */
typedef struct aq_vocab aq_vocab;

enum { AQ_TOKEN_NORMAL = 1, AQ_TOKEN_UNKNOWN = 2, AQ_TOKEN_CONTROL = 3, AQ_TOKEN_USER_DEFINED = 4,
       AQ_TOKEN_UNUSED = 5, AQ_TOKEN_BYTE = 6 };

aq_vocab *aq_vocab_load(const aq_gguf *g, char *err, size_t err_len); /* copies what it needs */
void      aq_vocab_free(aq_vocab *v);
int32_t   aq_vocab_size(const aq_vocab *v);
int32_t   aq_vocab_bos(const aq_vocab *v);        /* -1 if the vocabulary has none */
int32_t   aq_vocab_eos(const aq_vocab *v);
int       aq_vocab_add_bos(const aq_vocab *v);    /* tokenizer.ggml.add_bos_token (default 1) */
const char *aq_token_text(const aq_vocab *v, int32_t id);    /* as stored, NUL-terminated; NULL if bad id */
int       aq_token_type(const aq_vocab *v, int32_t id);
float     aq_token_score(const aq_vocab *v, int32_t id);
int32_t   aq_token_lookup(const aq_vocab *v, const char *text, size_t len); /* -1 if absent */
/* Tokenizes len bytes of text.  Writes at most cap ids and returns how many the text needs (call
   again with a bigger buffer if that is more than cap), like snprintf. */
int aq_tokenize(const aq_vocab *v, const char *text, size_t len, int add_bos, int32_t *ids, int cap);
/* The bytes a token stands for: U+2581 becomes a space, <0xXX> its byte, control tokens nothing.
   Returns the length (bytes written: at most cap, not NUL-terminated), like aq_tokenize. */
int aq_token_to_piece(const aq_vocab *v, int32_t id, char *buf, int cap);

/* ======================================================================================
   Model: configuration from the metadata, weights as typed views into the mapping, vocabulary.
   general.architecture must be "llama" (Llama 1/2/3, TinyLlama, Mistral, llama2.c stories).
   ====================================================================================== */
typedef struct {
    int32_t n_vocab, n_embd, n_layers, n_heads, n_kv_heads, head_dim, n_rot, n_ff, n_ctx_train;
    float rms_eps, rope_base;
    int tied_output;      /* no output.weight: logits use token_embd.weight */
} aq_config;

/* One weight matrix: rows = outputs, cols = inputs; row r is row_bytes bytes at data + r*row_bytes. */
typedef struct {
    uint32_t type;
    int64_t rows, cols;
    size_t row_bytes;
    const void *data;
    const char *name;
} aq_weight;

typedef struct aq_model aq_model;

aq_model *aq_model_load(const char *path, char *err, size_t err_len);
void      aq_model_free(aq_model *m);
const aq_config *aq_model_config(const aq_model *m);
const aq_vocab  *aq_model_vocab(const aq_model *m);
const aq_gguf   *aq_model_gguf(const aq_model *m);
uint64_t  aq_model_weight_bytes(const aq_model *m);   /* bytes of all weights one decode step reads */

/* ======================================================================================
   Session: one conversation over a shared model.  Owns the KV cache (paged: page_size tokens per
   page, pages allocated as the context grows), the scratch buffers and a small thread pool whose
   workers spin briefly and then sleep, so that it does not collapse when the machine is busy.
   ====================================================================================== */
enum { AQ_KV_F32 = 0, AQ_KV_F16 = 1 };
enum { AQ_BACKEND_CPU = 0, AQ_BACKEND_CUDA = 1 };

typedef struct {
    int n_threads;          /* 0 = number of online CPUs */
    int n_ctx;              /* tokens the session can hold (may exceed the trained context);
                               0 = the model's trained context.  KV memory grows page by page. */
    int page_size;          /* KV cache page, tokens; 0 = 16 */
    int n_batch;            /* prompt tokens evaluated per batch; 0 = 256 */
    int kv_type;            /* AQ_KV_F32 (default) or AQ_KV_F16 (half the bytes a long decode reads) */
    /* Quest: each decode step reads, per KV head, only the quest_budget / page_size pages whose
       keys can score highest for the current query (the current page always).  Prompts and the
       first quest_dense_layers layers stay dense, as does any step whose context fits the budget. */
    int quest_budget;       /* tokens; 0 = dense attention (default) */
    int quest_dense_layers; /* default 2 */
    int quest_per_head;     /* 1: every query head selects its own pages (reads more); 0: one
                               selection per KV head, bounds summed over its query heads */
    int quest_bounds;       /* bits per stored key bound: 16 (f16, default; 0 means 16) or 8
                               (int8 with an f16 scale per 16, still rounded outwards, so still
                               bounds: a selection reads 0.56x the bytes, the pages' bounds are
                               looser by at most 1/127 of their 16-value block's largest value) */
    int window;             /* baseline instead of Quest: attend only the last `window` positions,
                               in the same layers Quest would select in; 0 = off */
    /* AQ_BACKEND_CUDA runs the session on the GPU (build with AQ_CUDA and link
       build/cuda/aq_cuda.o; see README).  The model's weights are uploaded on the first such
       session (int4 and OliVe kept in 4 bits, everything else as f16), and the KV cache there is
       f16 whatever kv_type says.  When there is no usable GPU, or an option the GPU path lacks
       (window, quest_per_head) is set, the session runs on the CPU and aq_session_backend_note
       says why. */
    int backend;
    int no_cuda_graph;      /* GPU: launch the decode step kernel by kernel, not as a CUDA graph */
} aq_session_params;

/* Decode counters, for benchmarks: time in attention (selection included) and in selection. */
typedef struct {
    int64_t decode_steps, pages_scored, pages_read;
    double attention_seconds, selection_seconds;
} aq_session_stats;

typedef struct aq_session aq_session;

aq_session_params aq_session_default_params(void);
/* With OpenBLAS, the first session sets OpenBLAS to one thread (openblas_set_num_threads(1)),
   because the session's own pool runs one sgemm tile per thread; define AQ_KEEP_BLAS_THREADS to
   keep your program's setting. */
aq_session *aq_session_new(const aq_model *m, const aq_session_params *p, char *err, size_t err_len);
void        aq_session_free(aq_session *s);
int         aq_session_pos(const aq_session *s);     /* tokens in the KV cache */
int         aq_session_n_ctx(const aq_session *s);
int         aq_session_n_threads(const aq_session *s);
void        aq_session_reset(aq_session *s);         /* forget the context (keeps the memory) */
void        aq_session_get_stats(const aq_session *s, aq_session_stats *out);
void        aq_session_reset_stats(aq_session *s);
uint64_t    aq_session_kv_bytes(const aq_session *s);  /* KV cache memory allocated so far */
int         aq_session_backend(const aq_session *s);   /* the backend in use: AQ_BACKEND_* */
const char *aq_session_backend_note(const aq_session *s); /* the GPU's name, or why the CPU runs */
/* Appends n tokens at the current position and runs the model over them: one batched pass
   (matrix-matrix products) when n > 1, a matrix-vector pass when n == 1.  logits, if not NULL,
   receives n_vocab floats for the last token.  Returns 0, or -1 with a message. */
int aq_eval(aq_session *s, const int32_t *ids, int n, float *logits, char *err, size_t err_len);
/* Same, but logits receives n * n_vocab floats: the next-token logits after every input token. */
int aq_eval_all(aq_session *s, const int32_t *ids, int n, float *logits, char *err, size_t err_len);
/* One decode step of greedy generation: evaluates token and stores the most likely next token
   (the lowest id among equal logits) in *next.  On the GPU the logits stay on the device and the
   token is the only thing copied back.  Returns 0, or -1 with a message. */
int aq_eval_greedy(aq_session *s, int32_t token, int32_t *next, char *err, size_t err_len);

/* ======================================================================================
   Sampler.  Order: repetition penalty over the last repeat_last_n accepted tokens, then greedy
   argmax if temperature <= 0, else temperature, top-k, top-p (nucleus), min-p (relative to the
   most likely token), and a draw from a seeded RNG.  Same seed, same logits -> same tokens.
   ====================================================================================== */
typedef struct {
    float temperature;     /* 0 = greedy (default 0.8) */
    int   top_k;           /* 0 = off (default 40) */
    float top_p;           /* 1 = off (default 0.95) */
    float min_p;           /* 0 = off (default 0.05) */
    float repeat_penalty;  /* 1 = off (default 1.0) */
    int   repeat_last_n;   /* default 64 */
    uint64_t seed;         /* default 42 */
} aq_sampler_params;

typedef struct aq_sampler aq_sampler;

aq_sampler_params aq_sampler_default_params(void);
aq_sampler *aq_sampler_new(const aq_sampler_params *p, int32_t n_vocab);
void    aq_sampler_free(aq_sampler *s);
void    aq_sampler_accept(aq_sampler *s, int32_t token);   /* remember for the repetition penalty */
int32_t aq_sampler_sample(aq_sampler *s, const float *logits);
void    aq_sampler_reset(aq_sampler *s);                  /* forget history, reseed */

/* One decode step of sampled generation: evaluates token and draws the next one exactly as
   aq_sampler_sample would from the logits (the same RNG draws; it does not call
   aq_sampler_accept).  On the GPU, when there is no repetition penalty and top_k is in
   [1, 1024] (or the sampler is greedy), the draw happens on the device and the token is the only
   thing copied back; otherwise the logits come back and the CPU samples. */
int aq_eval_sample(aq_session *s, aq_sampler *smp, int32_t token, int32_t *next, char *err, size_t err_len);

/* ======================================================================================
   Generate: tokenize the prompt (with BOS if the vocabulary wants it), evaluate it as one batch,
   then sample up to n_predict tokens, stopping at EOS.  Each piece of text goes to on_piece as it
   is produced (the prompt's own text first); on_piece returns nonzero to stop early.  The space
   SentencePiece puts before the first word is dropped.
   ====================================================================================== */
typedef int (*aq_piece_fn)(const char *piece, size_t len, void *user);

typedef struct {
    int n_prompt, n_generated;
    double prefill_seconds, decode_seconds;
} aq_generate_stats;

int aq_generate(aq_session *s, aq_sampler *smp, const char *prompt, int n_predict,
                aq_piece_fn on_piece, void *user, aq_generate_stats *stats, char *err, size_t err_len);

double aq_time_seconds(void); /* monotonic clock, for the tools' timings */

#ifdef __cplusplus
}
#endif
#endif /* AWQ_QUEST_H */

/* ====================================================================================== */
/*                                    IMPLEMENTATION                                      */
/* ====================================================================================== */
#ifdef AWQ_QUEST_IMPLEMENTATION
#ifndef AQ__IMPLEMENTED
#define AQ__IMPLEMENTED

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__) || defined(__clang__)
#define AQ__PREFETCH(p) __builtin_prefetch(p)
#else
#define AQ__PREFETCH(p) ((void)(p))
#endif

/* Helpers some programs use and others do not (the tools share the library's kernels). */
#if defined(__GNUC__) || defined(__clang__)
#define AQ__MAYBE_UNUSED __attribute__((unused))
#else
#define AQ__MAYBE_UNUSED
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define AQ__X86 1
#include <immintrin.h>
#define AQ__AVX2 __attribute__((target("avx2,fma,f16c")))
#define AQ__AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#else
#define AQ__X86 0
#endif

#ifndef AQ_NO_BLAS
#include <cblas.h>
#endif

#if !defined(AQ_MALLOC) && !defined(AQ_REALLOC) && !defined(AQ_FREE)
#define AQ_MALLOC(n) malloc(n)
#define AQ_REALLOC(p, n) realloc(p, n)
#define AQ_FREE(p) free(p)
#elif !defined(AQ_MALLOC) || !defined(AQ_REALLOC) || !defined(AQ_FREE)
#error "define all of AQ_MALLOC, AQ_REALLOC and AQ_FREE, or none"
#endif

/* stb_ds supplies the growable arrays; short names stay off so they cannot clash with yours. */
#define STBDS_NO_SHORT_NAMES
#define STBDS_REALLOC(ctx, p, n) AQ_REALLOC(p, n)
#define STBDS_FREE(ctx, p) AQ_FREE(p)
#if !defined(AQ_STB_DS_ALREADY_IMPLEMENTED) && !defined(STB_DS_IMPLEMENTATION)
#define STB_DS_IMPLEMENTATION
#endif
#include "stb_ds.h"

#ifdef AQ_CUDA
#include "kernels/aq_cuda.h"
#endif

/* ---------------------------------------------------------------------------------------
   Utilities: error messages, allocation that cannot overflow, time.
   --------------------------------------------------------------------------------------- */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 3, 4)))
#endif
static void aq__err(char *err, size_t err_len, const char *fmt, ...) {
    va_list ap;
    if (!err || err_len == 0) return;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/* calloc-like: zeroed, and NULL (not a short buffer) when count * size overflows. */
static void *aq__calloc(size_t count, size_t size) {
    void *p;
    if (size && count > SIZE_MAX / size) return NULL;
    p = AQ_MALLOC(count * size > 0 ? count * size : 1);
    if (p) memset(p, 0, count * size);
    return p;
}

static char *aq__strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = (char *)AQ_MALLOC(n);
    if (p) memcpy(p, s, n);
    return p;
}

double aq_time_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* FNV-1a, for the name tables (GGUF keys, tensor names, vocabulary). */
static uint32_t aq__hash(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static int aq__str_eq(aq_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.ptr, c, n) == 0;
}

/* Which SIMD kernels this CPU can run; decided once per model load (no global state). */
enum { AQ__SIMD_SCALAR = 0, AQ__SIMD_AVX2 = 1, AQ__SIMD_AVX512 = 2 };
static int aq__detect_simd(void) {
#if AQ__X86
    __builtin_cpu_init();
#ifndef AQ_NO_AVX512
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        return AQ__SIMD_AVX512;
#endif
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return AQ__SIMD_AVX2;
#endif
    return AQ__SIMD_SCALAR;
}

/* ---------------------------------------------------------------------------------------
   Tensor types and element conversions.  The block table is ggml's; it lets the reader check
   the size of any tensor, even of types the kernels cannot use.
   --------------------------------------------------------------------------------------- */
typedef struct { const char *name; int64_t block_size, block_bytes; } aq__type_info;

static const aq__type_info aq__types[AQ_TYPE_COUNT] = {
    {"F32", 1, 4}, {"F16", 1, 2}, {"Q4_0", 32, 18}, {"Q4_1", 32, 20}, {"Q4_2(removed)", 0, 0},
    {"Q4_3(removed)", 0, 0}, {"Q5_0", 32, 22}, {"Q5_1", 32, 24}, {"Q8_0", 32, 34}, {"Q8_1", 32, 36},
    {"Q2_K", 256, 84}, {"Q3_K", 256, 110}, {"Q4_K", 256, 144}, {"Q5_K", 256, 176},
    {"Q6_K", 256, 210}, {"Q8_K", 256, 292}, {"IQ2_XXS", 256, 66}, {"IQ2_XS", 256, 74},
    {"IQ3_XXS", 256, 98}, {"IQ1_S", 256, 50}, {"IQ4_NL", 32, 18}, {"IQ3_S", 256, 110},
    {"IQ2_S", 256, 82}, {"IQ4_XS", 256, 136}, {"I8", 1, 1}, {"I16", 1, 2}, {"I32", 1, 4},
    {"I64", 1, 8}, {"F64", 1, 8}, {"IQ1_M", 256, 56}, {"BF16", 1, 2},
    {"Q4_0_4_4(removed)", 0, 0}, {"Q4_0_4_8(removed)", 0, 0}, {"Q4_0_8_8(removed)", 0, 0},
    {"TQ1_0", 256, 54}, {"TQ2_0", 256, 66}, {"IQ4_NL_4_4(removed)", 0, 0},
    {"IQ4_NL_4_8(removed)", 0, 0}, {"IQ4_NL_8_8(removed)", 0, 0}, {"MXFP4", 32, 17},
};

/* Group size of an AQ4 type, 0 for any other type. */
static int64_t aq__aq4_group(uint32_t type) {
    return type == AQ_TYPE_AQ4_G32 || type == AQ_TYPE_AQ4_G64 || type == AQ_TYPE_AQ4_G128 ? (int64_t)type - 1000 : 0;
}

/* Group size of an OVP type, 0 for any other type. */
static int64_t aq__ovp_group(uint32_t type) {
    return type == AQ_TYPE_OVP_G32 || type == AQ_TYPE_OVP_G64 || type == AQ_TYPE_OVP_G128 ? (int64_t)type - 2000 : 0;
}

uint32_t aq_type_aq4(int64_t group) {
    return group == 32 ? AQ_TYPE_AQ4_G32 : group == 64 ? AQ_TYPE_AQ4_G64 : group == 128 ? AQ_TYPE_AQ4_G128 : 0;
}

uint32_t aq_type_ovp(int64_t group) {
    return group == 32 ? AQ_TYPE_OVP_G32 : group == 64 ? AQ_TYPE_OVP_G64 : group == 128 ? AQ_TYPE_OVP_G128 : 0;
}

int64_t aq_type_group(uint32_t type) { return aq__aq4_group(type) ? aq__aq4_group(type) : aq__ovp_group(type); }

const char *aq_type_name(uint32_t type) {
    if (aq__aq4_group(type)) return type == AQ_TYPE_AQ4_G32 ? "AQ4_G32" : type == AQ_TYPE_AQ4_G64 ? "AQ4_G64" : "AQ4_G128";
    if (aq__ovp_group(type)) return type == AQ_TYPE_OVP_G32 ? "OVP_G32" : type == AQ_TYPE_OVP_G64 ? "OVP_G64" : "OVP_G128";
    return type < AQ_TYPE_COUNT ? aq__types[type].name : "unknown";
}
int64_t aq_type_block_size(uint32_t type) {
    return aq_type_group(type) ? aq_type_group(type) : type < AQ_TYPE_COUNT ? aq__types[type].block_size : 0;
}
int64_t aq_type_block_bytes(uint32_t type) {
    return aq_type_group(type) ? 4 + aq_type_group(type) / 2 : type < AQ_TYPE_COUNT ? aq__types[type].block_bytes : 0;
}

int64_t aq_type_row_bytes(uint32_t type, int64_t n) {
    int64_t bs = aq_type_block_size(type), bb = aq_type_block_bytes(type);
    if (aq_type_group(type) && n >= 0) n = (n + bs - 1) / bs * bs;
    if (bs <= 0 || n < 0 || n % bs != 0 || n / bs > INT64_MAX / bb) return -1;
    return n / bs * bb;
}

int aq_type_cpu_supported(uint32_t type) {
    return type == AQ_TYPE_F32 || type == AQ_TYPE_F16 || type == AQ_TYPE_BF16 || type == AQ_TYPE_Q8_0 ||
           type == AQ_TYPE_Q4_0 || type == AQ_TYPE_Q4_1 || aq_type_group(type);
}

/* The int4 types with an offset: Q4_1 is AQ4 with groups of 32. */
static int64_t aq__int4_group(uint32_t type) { return type == AQ_TYPE_Q4_1 ? 32 : aq__aq4_group(type); }

static float aq__bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t aq__f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

float aq_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) return aq__bits_to_f32(sign | 0x7f800000u | (mant << 13)); /* inf, nan */
    if (exp == 0) {                                      /* zero or subnormal: mant * 2^-24 */
        float f = (float)mant * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    return aq__bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t aq_f32_to_f16(float f) {
    uint32_t u = aq__f32_to_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);            /* nan stays nan */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);           /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {                                             /* below 2^-14: subnormal */
        /* adding 0.5 makes the FPU round the value to a multiple of 2^-24, to nearest even */
        float r = aq__bits_to_f32(a) + 0.5f;
        return (uint16_t)(sign | (aq__f32_to_bits(r) - 0x3f000000u));
    }
    a += 0xc8000fffu + ((a >> 13) & 1u);                               /* rebias, round to even */
    return (uint16_t)(sign | (a >> 13));
}

float aq_bf16_to_f32(uint16_t h) { return aq__bits_to_f32((uint32_t)h << 16); }

uint16_t aq_f32_to_bf16(float f) {
    uint32_t u = aq__f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet nan */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Little-endian loads that do not care about alignment. */
static uint16_t aq__rd16(const void *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t aq__rd32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t aq__rd64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ---------------------------------------------------------------------------------------
   GGUF reader.  Owns the mapping, the parsed metadata and the tensor table.  Everything read
   from the file goes through a bounds-checked cursor, every size is computed with overflow
   checks, and counts are compared with the bytes left before anything is allocated, so a
   truncated or hostile file ends in an error message, never in a read past the mapping.
   --------------------------------------------------------------------------------------- */
struct aq_gguf {
    const uint8_t *base;
    uint64_t size;
    int mapped;               /* base came from mmap and is unmapped on close */
    char *path;
    uint32_t version;
    uint64_t alignment, data_offset;
    int64_t n_kv, n_tensors;
    aq_gguf_kv *kvs;
    aq_gguf_tensor *tensors;
    aq_str *strings;          /* storage behind every kv's strs */
    int64_t *kv_index, *tensor_index; /* name tables: open addressing, index + 1, 0 = empty */
    uint64_t kv_mask, tensor_mask;
};

typedef struct {
    const uint8_t *base, *p, *end;
    const char *path;
    char *err;
    size_t err_len;
} aq__cursor;

#define AQ__GGUF_MAX_DEPTH 4  /* nesting of arrays of arrays */

static int aq__need(aq__cursor *c, uint64_t n, const char *what) {
    if ((uint64_t)(c->end - c->p) < n) {
        aq__err(c->err, c->err_len, "%s: truncated file: %s needs %llu bytes at offset %llu, %llu left",
                c->path, what, (unsigned long long)n, (unsigned long long)(c->p - c->base),
                (unsigned long long)(c->end - c->p));
        return -1;
    }
    return 0;
}

static int aq__read_u32(aq__cursor *c, uint32_t *v, const char *what) {
    if (aq__need(c, 4, what)) return -1;
    *v = aq__rd32(c->p); c->p += 4;
    return 0;
}

static int aq__read_u64(aq__cursor *c, uint64_t *v, const char *what) {
    if (aq__need(c, 8, what)) return -1;
    *v = aq__rd64(c->p); c->p += 8;
    return 0;
}

static int aq__read_str(aq__cursor *c, aq_str *s, const char *what) {
    uint64_t n;
    if (aq__read_u64(c, &n, what)) return -1;
    if ((uint64_t)(c->end - c->p) < n) {
        aq__err(c->err, c->err_len, "%s: %s has length %llu but only %llu bytes are left in the file",
                c->path, what, (unsigned long long)n, (unsigned long long)(c->end - c->p));
        return -1;
    }
    s->ptr = (const char *)c->p; s->len = n;
    c->p += n;
    return 0;
}

static uint64_t aq__gguf_scalar_size(uint32_t type) {
    static const uint8_t size[AQ_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return type < AQ_GGUF_TYPE_COUNT ? size[type] : 0;
}

const char *aq_gguf_type_name(uint32_t t) {
    static const char *names[AQ_GGUF_TYPE_COUNT] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                                    "bool", "string", "array", "u64", "i64", "f64"};
    return t < AQ_GGUF_TYPE_COUNT ? names[t] : "invalid";
}

/* Skips (and validates) one value of the given type; used for arrays nested inside arrays. */
static int aq__skip_value(aq__cursor *c, uint32_t type, int depth, const char *key) {
    char what[160];
    snprintf(what, sizeof what, "value of key '%.100s'", key);
    if (type == AQ_GGUF_STRING) { aq_str s; return aq__read_str(c, &s, what); }
    if (type == AQ_GGUF_ARRAY) {
        uint32_t et; uint64_t n, i, es;
        if (depth >= AQ__GGUF_MAX_DEPTH) {
            aq__err(c->err, c->err_len, "%s: key '%.100s': arrays nested deeper than %d", c->path, key, AQ__GGUF_MAX_DEPTH);
            return -1;
        }
        if (aq__read_u32(c, &et, what) || aq__read_u64(c, &n, what)) return -1;
        es = aq__gguf_scalar_size(et);
        if (et >= AQ_GGUF_TYPE_COUNT) {
            aq__err(c->err, c->err_len, "%s: key '%.100s': invalid array element type %u", c->path, key, et);
            return -1;
        }
        if (es) {
            if (n > (uint64_t)(c->end - c->p) / es) {
                aq__err(c->err, c->err_len, "%s: key '%.100s': array of %llu %s elements is larger than the file",
                        c->path, key, (unsigned long long)n, aq_gguf_type_name(et));
                return -1;
            }
            c->p += n * es;
            return 0;
        }
        if (n > (uint64_t)(c->end - c->p) / 8) {
            aq__err(c->err, c->err_len, "%s: key '%.100s': array count %llu is larger than the file allows",
                    c->path, key, (unsigned long long)n);
            return -1;
        }
        for (i = 0; i < n; i++)
            if (aq__skip_value(c, et, depth + 1, key)) return -1;
        return 0;
    }
    if (!aq__gguf_scalar_size(type)) {
        aq__err(c->err, c->err_len, "%s: key '%.100s': invalid value type %u", c->path, key, type);
        return -1;
    }
    if (aq__need(c, aq__gguf_scalar_size(type), what)) return -1;
    c->p += aq__gguf_scalar_size(type);
    return 0;
}

/* Reads one metadata value into kv.  Strings and arrays of strings get their (ptr, len) views
   stored in *strs, a stb_ds array that grows as needed (kv->strs is fixed up once parsing ends). */
static int aq__read_kv_value(aq__cursor *c, aq_gguf_kv *kv, aq_str **strs, char *key) {
    const uint8_t *start;
    kv->elem_type = kv->type;
    kv->count = 1;
    if (kv->type == AQ_GGUF_STRING) {
        aq_str s;
        start = c->p;
        if (aq__read_str(c, &s, "string value")) return -1;
        kv->data = start; kv->nbytes = (uint64_t)(c->p - start);
        kv->strs = (const aq_str *)(uintptr_t)(stbds_arrlen(*strs) + 1); /* index + 1, fixed up later */
        stbds_arrput(*strs, s);
        return 0;
    }
    if (kv->type == AQ_GGUF_ARRAY) {
        uint32_t et; uint64_t n, i;
        if (aq__read_u32(c, &et, "array element type") || aq__read_u64(c, &n, "array count")) return -1;
        kv->elem_type = et; kv->count = n;
        start = c->p;
        if (et == AQ_GGUF_STRING) {
            if (n > (uint64_t)(c->end - c->p) / 8) {
                aq__err(c->err, c->err_len, "%s: key '%.100s': %llu strings cannot fit in the %llu bytes left",
                        c->path, key, (unsigned long long)n, (unsigned long long)(c->end - c->p));
                return -1;
            }
            kv->strs = (const aq_str *)(uintptr_t)(stbds_arrlen(*strs) + 1);
            for (i = 0; i < n; i++) {
                aq_str s;
                if (aq__read_str(c, &s, "string in an array")) return -1;
                stbds_arrput(*strs, s);
            }
        } else {
            c->p -= 12; /* let the generic skipper validate the whole array */
            if (aq__skip_value(c, AQ_GGUF_ARRAY, 0, key)) return -1;
        }
        kv->data = start; kv->nbytes = (uint64_t)(c->p - start);
        return 0;
    }
    start = c->p;
    if (aq__skip_value(c, kv->type, 0, key)) return -1;
    kv->data = start; kv->nbytes = (uint64_t)(c->p - start);
    return 0;
}

/* Name tables make duplicate checks and lookups O(1), so a file with a huge number of entries
   cannot make opening it quadratic. */
static aq_str aq__gguf_name(const aq_gguf *g, int tensors, int64_t i) {
    aq_str s;
    if (!tensors) return g->kvs[i].key;
    s.ptr = g->tensors[i].name;
    s.len = strlen(g->tensors[i].name);
    return s;
}

static int64_t *aq__index_new(int64_t n, uint64_t *mask) {
    uint64_t cap = 2;
    while (cap < 2 * (uint64_t)n) cap <<= 1;
    *mask = cap - 1;
    return (int64_t *)aq__calloc((size_t)cap, sizeof(int64_t));
}

static int64_t aq__index_find(const aq_gguf *g, int tensors, const char *s, size_t len) {
    const int64_t *tab = tensors ? g->tensor_index : g->kv_index;
    uint64_t mask = tensors ? g->tensor_mask : g->kv_mask, h;
    if (!tab) return -1;
    for (h = aq__hash(s, len) & mask;; h = (h + 1) & mask) {
        int64_t i = tab[h] - 1;
        aq_str name;
        if (i < 0) return -1;
        name = aq__gguf_name(g, tensors, i);
        if (name.len == len && !memcmp(name.ptr, s, len)) return i;
    }
}

/* Adds entry i; returns the index of an earlier entry with the same name, or -1. */
static int64_t aq__index_add(aq_gguf *g, int tensors, int64_t i) {
    int64_t *tab = tensors ? g->tensor_index : g->kv_index;
    uint64_t mask = tensors ? g->tensor_mask : g->kv_mask, h;
    aq_str name = aq__gguf_name(g, tensors, i);
    int64_t prev = aq__index_find(g, tensors, name.ptr, (size_t)name.len);
    if (prev >= 0) return prev;
    for (h = aq__hash(name.ptr, (size_t)name.len) & mask; tab[h]; h = (h + 1) & mask) {}
    tab[h] = i + 1;
    return -1;
}

static aq_gguf *aq__gguf_parse(aq_gguf *g, char *err, size_t err_len) {
    aq__cursor c;
    aq_str *strs = NULL;
    uint32_t magic;
    uint64_t n_tensors, n_kv, i, data_start;
    const char *path = g->path;
    int64_t k;

    c.base = c.p = g->base; c.end = g->base + g->size; c.path = path; c.err = err; c.err_len = err_len;
    if (g->size < 4) { aq__err(err, err_len, "%s: file is %llu bytes, too small for GGUF", path, (unsigned long long)g->size); goto fail; }
    magic = aq__rd32(g->base);
    if (magic != 0x46554747u) { /* "GGUF" */
        aq__err(err, err_len, "%s: not a GGUF file (magic bytes %02x %02x %02x %02x, expected \"GGUF\")", path,
                g->base[0], g->base[1], g->base[2], g->base[3]);
        goto fail;
    }
    c.p += 4;
    if (aq__read_u32(&c, &g->version, "version")) goto fail;
    if (g->version == 0x03000000u || g->version == 0x02000000u) {
        aq__err(err, err_len, "%s: big-endian GGUF files are not supported", path); goto fail;
    }
    if (g->version < 2 || g->version > 3) {
        aq__err(err, err_len, "%s: GGUF version %u is not supported (only 2 and 3)", path, g->version); goto fail;
    }
    if (aq__read_u64(&c, &n_tensors, "tensor count") || aq__read_u64(&c, &n_kv, "metadata count")) goto fail;
    /* each metadata entry takes at least 13 bytes and each tensor info at least 32 */
    if (n_kv > (uint64_t)(c.end - c.p) / 13) {
        aq__err(err, err_len, "%s: header claims %llu metadata entries, more than the file can hold", path, (unsigned long long)n_kv);
        goto fail;
    }
    if (n_tensors > (uint64_t)(c.end - c.p) / 32) {
        aq__err(err, err_len, "%s: header claims %llu tensors, more than the file can hold", path, (unsigned long long)n_tensors);
        goto fail;
    }
    g->kvs = (aq_gguf_kv *)aq__calloc((size_t)n_kv, sizeof *g->kvs);
    g->tensors = (aq_gguf_tensor *)aq__calloc((size_t)n_tensors, sizeof *g->tensors);
    g->kv_index = aq__index_new((int64_t)n_kv, &g->kv_mask);
    g->tensor_index = aq__index_new((int64_t)n_tensors, &g->tensor_mask);
    if (!g->kvs || !g->tensors || !g->kv_index || !g->tensor_index) { aq__err(err, err_len, "%s: out of memory", path); goto fail; }

    g->alignment = 32;
    for (i = 0; i < n_kv; i++) {
        aq_gguf_kv *kv = &g->kvs[i];
        char key[128];
        if (aq__read_str(&c, &kv->key, "metadata key")) goto fail;
        snprintf(key, sizeof key, "%.*s", (int)(kv->key.len < 100 ? kv->key.len : 100), kv->key.ptr);
        if (kv->key.len == 0) { aq__err(err, err_len, "%s: metadata entry %llu has an empty key", path, (unsigned long long)i); goto fail; }
        if (aq__index_add(g, 0, (int64_t)i) >= 0) {
            aq__err(err, err_len, "%s: metadata key '%s' appears twice", path, key);
            goto fail;
        }
        if (aq__read_u32(&c, &kv->type, "metadata value type")) goto fail;
        if (kv->type >= AQ_GGUF_TYPE_COUNT) {
            aq__err(err, err_len, "%s: key '%s' has invalid value type %u", path, key, kv->type);
            goto fail;
        }
        if (aq__read_kv_value(&c, kv, &strs, key)) goto fail;
        g->n_kv = (int64_t)i + 1;
        if (aq__str_eq(kv->key, "general.alignment")) {
            uint64_t a;
            if (kv->type == AQ_GGUF_U32) a = aq__rd32(kv->data);
            else if (kv->type == AQ_GGUF_U64) a = aq__rd64(kv->data);
            else { aq__err(err, err_len, "%s: general.alignment has type %s, expected u32", path, aq_gguf_type_name(kv->type)); goto fail; }
            if (a == 0 || (a & (a - 1)) || a > (1u << 20)) {
                aq__err(err, err_len, "%s: general.alignment %llu is not a power of two up to 1 MiB", path, (unsigned long long)a);
                goto fail;
            }
            g->alignment = a;
        }
    }
    /* string views are now final: turn the stored indices into pointers */
    g->strings = strs; strs = NULL;
    for (k = 0; k < g->n_kv; k++)
        if (g->kvs[k].strs) g->kvs[k].strs = g->strings + ((uintptr_t)g->kvs[k].strs - 1);

    for (i = 0; i < n_tensors; i++) {
        aq_gguf_tensor *t = &g->tensors[i];
        aq_str name;
        uint32_t d;
        int64_t n = 1;
        if (aq__read_str(&c, &name, "tensor name")) goto fail;
        if (name.len == 0 || name.len > AQ_MAX_NAME) {
            aq__err(err, err_len, "%s: tensor %llu has a name of %llu bytes (1..%d allowed)", path,
                    (unsigned long long)i, (unsigned long long)name.len, AQ_MAX_NAME);
            goto fail;
        }
        memcpy(t->name, name.ptr, name.len); t->name[name.len] = 0;
        if (strlen(t->name) != name.len) { aq__err(err, err_len, "%s: tensor %llu name contains a NUL byte", path, (unsigned long long)i); goto fail; }
        if (aq__index_add(g, 1, (int64_t)i) >= 0) { aq__err(err, err_len, "%s: tensor '%s' appears twice", path, t->name); goto fail; }
        if (aq__read_u32(&c, &t->n_dims, "tensor dimension count")) goto fail;
        if (t->n_dims < 1 || t->n_dims > 4) {
            aq__err(err, err_len, "%s: tensor '%s' has %u dimensions (1..4 allowed)", path, t->name, t->n_dims);
            goto fail;
        }
        for (d = 0; d < 4; d++) t->ne[d] = 1;
        for (d = 0; d < t->n_dims; d++) {
            uint64_t v;
            if (aq__read_u64(&c, &v, "tensor dimension")) goto fail;
            if (v > (uint64_t)INT64_MAX || (n && v && (int64_t)v > INT64_MAX / n)) {
                aq__err(err, err_len, "%s: tensor '%s': dimensions overflow a 64-bit element count", path, t->name);
                goto fail;
            }
            t->ne[d] = (int64_t)v;
            n *= (int64_t)v;
        }
        if (aq__read_u32(&c, &t->type, "tensor type") || aq__read_u64(&c, &t->offset, "tensor offset")) goto fail;
        if (aq_type_block_size(t->type) == 0) {
            aq__err(err, err_len, "%s: tensor '%s' has unknown type id %u", path, t->name, t->type);
            goto fail;
        }
        if (t->ne[0] % aq_type_block_size(t->type) != 0) {
            aq__err(err, err_len, "%s: tensor '%s': row length %lld is not a multiple of the %s block size %lld",
                    path, t->name, (long long)t->ne[0], aq_type_name(t->type), (long long)aq_type_block_size(t->type));
            goto fail;
        }
        {
            int64_t rb = aq_type_row_bytes(t->type, t->ne[0]), rows = t->ne[0] ? n / t->ne[0] : 0;
            if (rb < 0 || (rows && rb > INT64_MAX / rows)) {
                aq__err(err, err_len, "%s: tensor '%s': byte size overflows", path, t->name);
                goto fail;
            }
            t->nbytes = (uint64_t)(rb * rows);
        }
        if (t->offset % g->alignment) {
            aq__err(err, err_len, "%s: tensor '%s': offset %llu is not a multiple of the alignment %llu", path,
                    t->name, (unsigned long long)t->offset, (unsigned long long)g->alignment);
            goto fail;
        }
    }
    g->n_tensors = (int64_t)n_tensors;

    data_start = (uint64_t)(c.p - g->base);
    data_start = (data_start + g->alignment - 1) / g->alignment * g->alignment;
    if (n_tensors > 0 && data_start > g->size) {
        aq__err(err, err_len, "%s: truncated file: the data section would start at %llu, past the end (%llu bytes)",
                path, (unsigned long long)data_start, (unsigned long long)g->size);
        goto fail;
    }
    g->data_offset = data_start < g->size ? data_start : g->size; /* no tensors: possibly no padding */
    for (k = 0; k < g->n_tensors; k++) {
        aq_gguf_tensor *t = &g->tensors[k];
        uint64_t room = g->size > data_start ? g->size - data_start : 0;
        uint64_t align = t->type == AQ_TYPE_F32 || t->type == AQ_TYPE_I32 ? 4 :
                         t->type == AQ_TYPE_F64 || t->type == AQ_TYPE_I64 ? 8 :
                         t->type == AQ_TYPE_I8 ? 1 : 2;
        if (t->offset > room || t->nbytes > room - t->offset) {
            aq__err(err, err_len, "%s: tensor '%s': data at offset %llu + %llu bytes goes past the end of the file (%llu bytes)",
                    path, t->name, (unsigned long long)(data_start + t->offset), (unsigned long long)t->nbytes,
                    (unsigned long long)g->size);
            goto fail;
        }
        if ((data_start + t->offset) % align) {
            aq__err(err, err_len, "%s: tensor '%s': data at file offset %llu is misaligned for %s", path, t->name,
                    (unsigned long long)(data_start + t->offset), aq_type_name(t->type));
            goto fail;
        }
        t->data = g->base + data_start + t->offset;
    }
    return g;
fail:
    stbds_arrfree(strs);
    aq_gguf_close(g);
    return NULL;
}

aq_gguf *aq_gguf_open_memory(const void *data, size_t size, const char *name, char *err, size_t err_len) {
    aq_gguf *g = (aq_gguf *)aq__calloc(1, sizeof *g);
    if (!g) { aq__err(err, err_len, "out of memory"); return NULL; }
    g->base = (const uint8_t *)data;
    g->size = size;
    g->path = aq__strdup(name ? name : "<memory>");
    if (!g->path) { AQ_FREE(g); aq__err(err, err_len, "out of memory"); return NULL; }
    return aq__gguf_parse(g, err, err_len);
}

aq_gguf *aq_gguf_open(const char *path, char *err, size_t err_len) {
    struct stat st;
    void *map;
    aq_gguf *g;
    int fd = open(path, O_RDONLY);
    if (fd < 0) { aq__err(err, err_len, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        aq__err(err, err_len, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_size < 4) {
        aq__err(err, err_len, "%s: file is %lld bytes, too small for GGUF", path, (long long)st.st_size);
        close(fd);
        return NULL;
    }
    map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) { aq__err(err, err_len, "%s: mmap failed: %s", path, strerror(errno)); return NULL; }
    g = (aq_gguf *)aq__calloc(1, sizeof *g);
    if (g) g->path = aq__strdup(path);
    if (!g || !g->path) {
        if (g) AQ_FREE(g);
        munmap(map, (size_t)st.st_size);
        aq__err(err, err_len, "%s: out of memory", path);
        return NULL;
    }
    g->base = (const uint8_t *)map;
    g->size = (uint64_t)st.st_size;
    g->mapped = 1;
    return aq__gguf_parse(g, err, err_len);
}

void aq_gguf_close(aq_gguf *g) {
    if (!g) return;
    if (g->mapped) munmap((void *)(uintptr_t)g->base, (size_t)g->size);
    stbds_arrfree(g->strings);
    AQ_FREE(g->kv_index);
    AQ_FREE(g->tensor_index);
    AQ_FREE(g->kvs);
    AQ_FREE(g->tensors);
    AQ_FREE(g->path);
    AQ_FREE(g);
}

const char *aq_gguf_path(const aq_gguf *g) { return g->path; }
uint32_t aq_gguf_version(const aq_gguf *g) { return g->version; }
uint64_t aq_gguf_alignment(const aq_gguf *g) { return g->alignment; }
uint64_t aq_gguf_data_offset(const aq_gguf *g) { return g->data_offset; }
uint64_t aq_gguf_file_size(const aq_gguf *g) { return g->size; }
int64_t aq_gguf_n_kv(const aq_gguf *g) { return g->n_kv; }
int64_t aq_gguf_n_tensors(const aq_gguf *g) { return g->n_tensors; }

const aq_gguf_kv *aq_gguf_kv_at(const aq_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? &g->kvs[i] : NULL;
}

const aq_gguf_kv *aq_gguf_find_kv(const aq_gguf *g, const char *key) {
    int64_t i = aq__index_find(g, 0, key, strlen(key));
    return i >= 0 ? &g->kvs[i] : NULL;
}

const aq_gguf_tensor *aq_gguf_tensor_at(const aq_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const aq_gguf_tensor *aq_gguf_find_tensor(const aq_gguf *g, const char *name) {
    int64_t i = aq__index_find(g, 1, name, strlen(name));
    return i >= 0 ? &g->tensors[i] : NULL;
}

int64_t aq_tensor_n_elements(const aq_gguf_tensor *t) { return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]; }

/* One scalar of an integer type at p, as int64 (0 = ok, -1 = not an integer or too large). */
static int aq__scalar_int(uint32_t type, const uint8_t *p, int64_t *out) {
    switch (type) {
    case AQ_GGUF_U8: case AQ_GGUF_BOOL: *out = p[0]; return 0;
    case AQ_GGUF_I8: *out = (int8_t)p[0]; return 0;
    case AQ_GGUF_U16: *out = aq__rd16(p); return 0;
    case AQ_GGUF_I16: *out = (int16_t)aq__rd16(p); return 0;
    case AQ_GGUF_U32: *out = aq__rd32(p); return 0;
    case AQ_GGUF_I32: *out = (int32_t)aq__rd32(p); return 0;
    case AQ_GGUF_I64: *out = (int64_t)aq__rd64(p); return 0;
    case AQ_GGUF_U64: {
        uint64_t v = aq__rd64(p);
        if (v > (uint64_t)INT64_MAX) return -1;
        *out = (int64_t)v;
        return 0;
    }
    default: return -1;
    }
}

static int aq__scalar_float(uint32_t type, const uint8_t *p, double *out) {
    int64_t i;
    if (type == AQ_GGUF_F32) { *out = aq__bits_to_f32(aq__rd32(p)); return 0; }
    if (type == AQ_GGUF_F64) { uint64_t u = aq__rd64(p); memcpy(out, &u, 8); return 0; }
    if (aq__scalar_int(type, p, &i) == 0) { *out = (double)i; return 0; }
    return -1;
}

int aq_gguf_get_int(const aq_gguf *g, const char *key, int64_t *out) {
    const aq_gguf_kv *kv = aq_gguf_find_kv(g, key);
    if (!kv) return 0;
    return aq__scalar_int(kv->type, kv->data, out) == 0 ? 1 : -1;
}

int aq_gguf_get_float(const aq_gguf *g, const char *key, double *out) {
    const aq_gguf_kv *kv = aq_gguf_find_kv(g, key);
    if (!kv) return 0;
    return kv->type != AQ_GGUF_BOOL && aq__scalar_float(kv->type, kv->data, out) == 0 ? 1 : -1;
}

int aq_gguf_get_str(const aq_gguf *g, const char *key, aq_str *out) {
    const aq_gguf_kv *kv = aq_gguf_find_kv(g, key);
    if (!kv) return 0;
    if (kv->type != AQ_GGUF_STRING) return -1;
    *out = kv->strs[0];
    return 1;
}

int aq_gguf_get_bool(const aq_gguf *g, const char *key, int *out) {
    int64_t v;
    int r = aq_gguf_get_int(g, key, &v);
    if (r == 1) *out = v != 0;
    return r;
}

int64_t aq_gguf_arr_int(const aq_gguf_kv *kv, uint64_t i) {
    int64_t v = 0;
    uint64_t es = aq__gguf_scalar_size(kv->elem_type);
    if (kv->type != AQ_GGUF_ARRAY || !es || i >= kv->count || aq__scalar_int(kv->elem_type, kv->data + i * es, &v)) return 0;
    return v;
}

double aq_gguf_arr_float(const aq_gguf_kv *kv, uint64_t i) {
    double v = 0;
    uint64_t es = aq__gguf_scalar_size(kv->elem_type);
    if (kv->type != AQ_GGUF_ARRAY || !es || i >= kv->count || aq__scalar_float(kv->elem_type, kv->data + i * es, &v)) return 0;
    return v;
}

/* ---------------------------------------------------------------------------------------
   GGUF writer.  Each metadata value is serialized when it is set (type + value bytes, keyed
   by name); tensor offsets are assigned when writing begins.  Tensor bytes are then streamed in
   declaration order with zero padding to the alignment after each tensor.
   --------------------------------------------------------------------------------------- */
typedef struct {
    char *key;
    uint8_t *blob; /* stb_ds array: value type, then the value as GGUF stores it */
} aq__wkv;

typedef struct {
    char name[AQ_MAX_NAME + 1];
    uint32_t type, n_dims;
    int64_t ne[4];
    uint64_t nbytes, offset;
    const void *data;
} aq__wtensor;

typedef struct { char *key; ptrdiff_t value; } aq__name_map; /* stb_ds string map: name -> index */

struct aq_gguf_writer {
    aq__wkv *kvs;           /* stb_ds array */
    aq__wtensor *tensors;   /* stb_ds array */
    aq__name_map *kv_map, *tensor_map;
    FILE *f;
    char *path;
    uint64_t alignment;
    int64_t cur;            /* tensor being streamed */
    uint64_t cur_written;   /* its bytes written so far */
};

static void aq__put(uint8_t **buf, const void *p, size_t n) {
    size_t old = (size_t)stbds_arrlen(*buf);
    stbds_arrsetlen(*buf, old + n);
    memcpy(*buf + old, p, n);
}
static void aq__put_u32(uint8_t **buf, uint32_t v) { aq__put(buf, &v, 4); }
static void aq__put_u64(uint8_t **buf, uint64_t v) { aq__put(buf, &v, 8); }
static void aq__put_str(uint8_t **buf, const char *s, uint64_t n) { aq__put_u64(buf, n); aq__put(buf, s, (size_t)n); }

aq_gguf_writer *aq_gguf_writer_new(void) {
    aq_gguf_writer *w = (aq_gguf_writer *)aq__calloc(1, sizeof(aq_gguf_writer));
    if (!w) return NULL;
    stbds_sh_new_strdup(w->kv_map);
    stbds_sh_new_strdup(w->tensor_map);
    return w;
}

void aq_gguf_writer_free(aq_gguf_writer *w) {
    ptrdiff_t i;
    if (!w) return;
    for (i = 0; i < stbds_arrlen(w->kvs); i++) { AQ_FREE(w->kvs[i].key); stbds_arrfree(w->kvs[i].blob); }
    stbds_arrfree(w->kvs);
    stbds_arrfree(w->tensors);
    stbds_shfree(w->kv_map);
    stbds_shfree(w->tensor_map);
    if (w->f) fclose(w->f);
    AQ_FREE(w->path);
    AQ_FREE(w);
}

/* Takes ownership of blob. */
static int aq__writer_put_kv(aq_gguf_writer *w, const char *key, uint8_t *blob) {
    ptrdiff_t i;
    aq__wkv kv;
    if (!key || !*key) { stbds_arrfree(blob); return -1; }
    i = stbds_shgeti(w->kv_map, key);
    if (i >= 0) {
        i = w->kv_map[i].value;
        stbds_arrfree(w->kvs[i].blob);
        w->kvs[i].blob = blob;
        return 0;
    }
    stbds_shput(w->kv_map, key, stbds_arrlen(w->kvs));
    kv.key = aq__strdup(key);
    kv.blob = blob;
    if (!kv.key) { stbds_arrfree(blob); return -1; }
    stbds_arrput(w->kvs, kv);
    return 0;
}

static int aq__writer_set_scalar(aq_gguf_writer *w, const char *key, uint32_t type, const void *v) {
    uint8_t *blob = NULL;
    aq__put_u32(&blob, type);
    aq__put(&blob, v, (size_t)aq__gguf_scalar_size(type));
    return aq__writer_put_kv(w, key, blob);
}

int aq_gguf_writer_set_u32(aq_gguf_writer *w, const char *key, uint32_t v) { return aq__writer_set_scalar(w, key, AQ_GGUF_U32, &v); }
int aq_gguf_writer_set_i32(aq_gguf_writer *w, const char *key, int32_t v) { return aq__writer_set_scalar(w, key, AQ_GGUF_I32, &v); }
int aq_gguf_writer_set_u64(aq_gguf_writer *w, const char *key, uint64_t v) { return aq__writer_set_scalar(w, key, AQ_GGUF_U64, &v); }
int aq_gguf_writer_set_f32(aq_gguf_writer *w, const char *key, float v) { return aq__writer_set_scalar(w, key, AQ_GGUF_F32, &v); }
int aq_gguf_writer_set_bool(aq_gguf_writer *w, const char *key, int v) {
    uint8_t b = v ? 1 : 0;
    return aq__writer_set_scalar(w, key, AQ_GGUF_BOOL, &b);
}

int aq_gguf_writer_set_str(aq_gguf_writer *w, const char *key, const char *v) {
    uint8_t *blob = NULL;
    aq__put_u32(&blob, AQ_GGUF_STRING);
    aq__put_str(&blob, v, strlen(v));
    return aq__writer_put_kv(w, key, blob);
}

int aq_gguf_writer_set_arr(aq_gguf_writer *w, const char *key, uint32_t elem_type, const void *elems, uint64_t count) {
    uint8_t *blob = NULL;
    uint64_t es = aq__gguf_scalar_size(elem_type);
    if (!es || (count && !elems) || count > SIZE_MAX / es) return -1;
    aq__put_u32(&blob, AQ_GGUF_ARRAY);
    aq__put_u32(&blob, elem_type);
    aq__put_u64(&blob, count);
    if (count) aq__put(&blob, elems, (size_t)(count * es));
    return aq__writer_put_kv(w, key, blob);
}

int aq_gguf_writer_set_arr_str(aq_gguf_writer *w, const char *key, const aq_str *strs, uint64_t count) {
    uint8_t *blob = NULL;
    uint64_t i;
    if (count && !strs) return -1;
    aq__put_u32(&blob, AQ_GGUF_ARRAY);
    aq__put_u32(&blob, AQ_GGUF_STRING);
    aq__put_u64(&blob, count);
    for (i = 0; i < count; i++) aq__put_str(&blob, strs[i].ptr, strs[i].len);
    return aq__writer_put_kv(w, key, blob);
}

int aq_gguf_writer_copy_kv(aq_gguf_writer *w, const aq_gguf_kv *kv) {
    uint8_t *blob = NULL;
    char key[1024];
    if (kv->key.len >= sizeof key) return -1;
    memcpy(key, kv->key.ptr, kv->key.len); key[kv->key.len] = 0;
    aq__put_u32(&blob, kv->type);
    if (kv->type == AQ_GGUF_ARRAY) { aq__put_u32(&blob, kv->elem_type); aq__put_u64(&blob, kv->count); }
    aq__put(&blob, kv->data, (size_t)kv->nbytes);
    return aq__writer_put_kv(w, key, blob);
}

int64_t aq_gguf_writer_add_tensor(aq_gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                                  const int64_t *ne, const void *data) {
    aq__wtensor t;
    int64_t rows = 1, rb;
    uint32_t d;
    if (!name || strlen(name) == 0 || strlen(name) > AQ_MAX_NAME || n_dims < 1 || n_dims > 4 || w->f ||
        stbds_shgeti(w->tensor_map, name) >= 0)
        return -1;
    memset(&t, 0, sizeof t);
    strcpy(t.name, name);
    t.type = type; t.n_dims = n_dims; t.data = data;
    for (d = 0; d < 4; d++) t.ne[d] = d < n_dims ? ne[d] : 1;
    for (d = 1; d < 4; d++) {
        if (t.ne[d] < 0 || (t.ne[d] && rows > INT64_MAX / t.ne[d])) return -1;
        rows *= t.ne[d];
    }
    rb = aq_type_row_bytes(type, t.ne[0]);
    if (rb < 0 || (rows && rb > INT64_MAX / rows)) return -1;
    t.nbytes = (uint64_t)(rb * rows);
    stbds_shput(w->tensor_map, name, stbds_arrlen(w->tensors));
    stbds_arrput(w->tensors, t);
    return (int64_t)stbds_arrlen(w->tensors) - 1;
}

static int aq__writer_io(aq_gguf_writer *w, const void *p, size_t n, char *err, size_t err_len) {
    if (n && fwrite(p, 1, n, w->f) != n) {
        aq__err(err, err_len, "%s: write failed: %s", w->path, strerror(errno));
        return -1;
    }
    return 0;
}

static int aq__writer_pad(aq_gguf_writer *w, uint64_t n, char *err, size_t err_len) {
    static const uint8_t zeros[64] = {0};
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        if (aq__writer_io(w, zeros, k, err, err_len)) return -1;
        n -= k;
    }
    return 0;
}

/* Moves past every tensor whose bytes are complete, writing its padding. */
static int aq__writer_advance(aq_gguf_writer *w, char *err, size_t err_len) {
    while (w->cur < (int64_t)stbds_arrlen(w->tensors) && w->cur_written == w->tensors[w->cur].nbytes) {
        uint64_t n = w->tensors[w->cur].nbytes;
        if (aq__writer_pad(w, (w->alignment - n % w->alignment) % w->alignment, err, err_len)) return -1;
        w->cur++;
        w->cur_written = 0;
    }
    return 0;
}

int aq_gguf_writer_begin(aq_gguf_writer *w, const char *path, char *err, size_t err_len) {
    uint8_t *head = NULL;
    uint64_t off = 0;
    ptrdiff_t i;
    int rc;
    if (w->f) { aq__err(err, err_len, "%s: writer already started", path); return -1; }
    w->alignment = 32;
    for (i = 0; i < stbds_arrlen(w->kvs); i++)
        if (!strcmp(w->kvs[i].key, "general.alignment")) {
            uint32_t type = aq__rd32(w->kvs[i].blob);
            uint64_t a = type == AQ_GGUF_U32 ? aq__rd32(w->kvs[i].blob + 4) : type == AQ_GGUF_U64 ? aq__rd64(w->kvs[i].blob + 4) : 0;
            if (a == 0 || (a & (a - 1)) || a > (1u << 20)) {
                aq__err(err, err_len, "%s: general.alignment must be a power of two up to 1 MiB", path);
                return -1;
            }
            w->alignment = a;
        }
    aq__put_u32(&head, 0x46554747u);
    aq__put_u32(&head, 3);
    aq__put_u64(&head, (uint64_t)stbds_arrlen(w->tensors));
    aq__put_u64(&head, (uint64_t)stbds_arrlen(w->kvs));
    for (i = 0; i < stbds_arrlen(w->kvs); i++) {
        aq__put_str(&head, w->kvs[i].key, strlen(w->kvs[i].key));
        aq__put(&head, w->kvs[i].blob, (size_t)stbds_arrlen(w->kvs[i].blob));
    }
    for (i = 0; i < stbds_arrlen(w->tensors); i++) {
        aq__wtensor *t = &w->tensors[i];
        uint32_t d;
        t->offset = off;
        off += (t->nbytes + w->alignment - 1) / w->alignment * w->alignment;
        aq__put_str(&head, t->name, strlen(t->name));
        aq__put_u32(&head, t->n_dims);
        for (d = 0; d < t->n_dims; d++) aq__put_u64(&head, (uint64_t)t->ne[d]);
        aq__put_u32(&head, t->type);
        aq__put_u64(&head, t->offset);
    }
    AQ_FREE(w->path);
    w->path = aq__strdup(path);
    w->f = fopen(path, "wb");
    if (!w->f || !w->path) {
        aq__err(err, err_len, "%s: cannot create: %s", path, strerror(errno));
        stbds_arrfree(head);
        return -1;
    }
    rc = aq__writer_io(w, head, (size_t)stbds_arrlen(head), err, err_len);
    if (!rc && stbds_arrlen(w->tensors)) /* like llama.cpp, no padding when no data follows */
        rc = aq__writer_pad(w, (w->alignment - (uint64_t)stbds_arrlen(head) % w->alignment) % w->alignment, err, err_len);
    stbds_arrfree(head);
    w->cur = 0;
    w->cur_written = 0;
    if (!rc) rc = aq__writer_advance(w, err, err_len);
    return rc;
}

int aq_gguf_writer_append(aq_gguf_writer *w, const void *bytes, size_t n, char *err, size_t err_len) {
    const uint8_t *p = (const uint8_t *)bytes;
    if (!w->f) { aq__err(err, err_len, "gguf writer: append before begin"); return -1; }
    while (n) {
        uint64_t left, k;
        if (w->cur >= (int64_t)stbds_arrlen(w->tensors)) {
            aq__err(err, err_len, "%s: %llu more bytes than the declared tensors hold", w->path, (unsigned long long)n);
            return -1;
        }
        left = w->tensors[w->cur].nbytes - w->cur_written;
        k = n < left ? n : left;
        if (aq__writer_io(w, p, (size_t)k, err, err_len)) return -1;
        w->cur_written += k; p += k; n -= (size_t)k;
        if (aq__writer_advance(w, err, err_len)) return -1;
    }
    return 0;
}

int aq_gguf_writer_end(aq_gguf_writer *w, char *err, size_t err_len) {
    int rc = 0;
    if (!w->f) { aq__err(err, err_len, "gguf writer: end before begin"); return -1; }
    if (w->cur < (int64_t)stbds_arrlen(w->tensors)) {
        aq__err(err, err_len, "%s: tensor '%s' is missing %llu bytes", w->path, w->tensors[w->cur].name,
                (unsigned long long)(w->tensors[w->cur].nbytes - w->cur_written));
        rc = -1;
    }
    if (fclose(w->f) != 0 && !rc) { aq__err(err, err_len, "%s: write failed: %s", w->path, strerror(errno)); rc = -1; }
    w->f = NULL;
    return rc;
}

int aq_gguf_writer_save(aq_gguf_writer *w, const char *path, char *err, size_t err_len) {
    ptrdiff_t i;
    for (i = 0; i < stbds_arrlen(w->tensors); i++)
        if (!w->tensors[i].data && w->tensors[i].nbytes) {
            aq__err(err, err_len, "%s: tensor '%s' was added without data", path, w->tensors[i].name);
            return -1;
        }
    if (aq_gguf_writer_begin(w, path, err, err_len)) return -1;
    for (i = 0; i < stbds_arrlen(w->tensors); i++)
        if (aq_gguf_writer_append(w, w->tensors[i].data, (size_t)w->tensors[i].nbytes, err, err_len)) {
            fclose(w->f);
            w->f = NULL;
            return -1;
        }
    return aq_gguf_writer_end(w, err, err_len);
}

/* ---------------------------------------------------------------------------------------
   OVP: OliVe's outlier-victim pairs (the format is described at AQ_TYPE_OVP_G32).
   Decoding is a lookup per nibble in two 8-entry magnitude tables, the outlier one chosen when
   the partner nibble is the victim marker 1000b, which is also how the SIMD kernels do it.

   The encoder works group by group.  For an offset m and a scale s (both as stored, f16), each
   pair is encoded in the cheapest of three ways by squared error: two normals (rounded to the
   nearest normal magnitude, clamped), the first as an outlier (nearest outlier magnitude) with
   the second as victim, or the other way round.  That is OliVe's pair rule with the threshold
   set by the error instead of by "rounds beyond the normal range": a value just past the normal
   range (8..9 in int4 steps) is closer to the clamped 7 than to the smallest outlier 12, and
   making it an outlier would also throw its partner away.  When both values of a pair are far
   out, the larger one is kept, since dropping it costs more.
   Scale: alpha0 = |mu| + 3 sigma of the group's offset-free values (= max(|mu+3s|, |mu-3s|)),
   s = alpha0 * r / 7 (int4) or / 16 (flint4) for 16 values of r from 0.75 to 2.5, and the
   encoding with the lowest squared error wins; then (s, m) are refitted to the codes.  Offset:
   see aq__ovp_offsets.
   --------------------------------------------------------------------------------------- */

/* |v| for a 4-bit code: [grid: 0 int4, 1 flint4][0 normal, 1 outlier][code]; the sign bit is
   ignored, so the marker 1000b reads as normal 0 (the victim).  The outlier field 0 is never
   written; reading it as 0 makes a 1000b/1000b byte decode to zeros.  16 entries per table, so
   the SIMD kernels use the same tables as pshufb operands. */
static const uint8_t aq__ovp_mag[2][2][16] = {
    {{0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7}, {0, 12, 16, 24, 32, 48, 64, 96, 0, 12, 16, 24, 32, 48, 64, 96}},
    {{0, 1, 2, 3, 4, 6, 8, 16, 0, 1, 2, 3, 4, 6, 8, 16}, {0, 24, 32, 48, 64, 96, 128, 192, 0, 24, 32, 48, 64, 96, 128, 192}},
};

#define AQ__OVP_STEPS 16       /* scale candidates per group and offset */

/* The two values of one byte, in units of the group's scale. */
static void aq__ovp_pair(int flint, unsigned byte, int *v0, int *v1) {
    unsigned lo = byte & 15, hi = byte >> 4;
    int m0 = aq__ovp_mag[flint][hi == 8][lo], m1 = aq__ovp_mag[flint][lo == 8][hi];
    *v0 = lo & 8 ? -m0 : m0;
    *v1 = hi & 8 ? -m1 : m1;
}

static void aq__ovp_dequantize_row(int64_t G, const uint8_t *b, float *dst, int64_t n) {
    int64_t g, j;
    for (g = 0; g * G < n; g++, b += 4 + G / 2) {
        uint16_t dh = aq__rd16(b);
        float d = aq_f16_to_f32((uint16_t)(dh & 0x7fff)), m = aq_f16_to_f32(aq__rd16(b + 2));
        for (j = 0; j < G / 2; j++) {
            int64_t at = g * G + 2 * j;
            int v0, v1;
            aq__ovp_pair(dh >> 15, b[4 + j], &v0, &v1);
            if (at < n) dst[at] = (float)v0 * d + m;
            if (at + 1 < n) dst[at + 1] = (float)v1 * d + m;
        }
    }
}

#if AQ__X86
/* One of the magnitude tables in every 128-bit lane. */
AQ__AVX2 static __m256i aq__ovp_table_avx2(int flint, int outlier) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)aq__ovp_mag[flint][outlier]));
}

/* A group's |d| and m as floats (d's sign bit selects the grid, not the sign of the scale). */
AQ__AVX2 static __m128 aq__ovp_header(const uint8_t *b) {
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)(aq__rd32(b) & 0xffff7fffu)));
}

/* A row of OVP to floats, 64 values per step, for the prompt path's weight tiles: the same
   decode as aq__ovp_step_avx2, then v * |d| + m as the scalar code computes it (no FMA, so the
   two agree bit for bit). */
AQ__AVX2 static void aq__ovp_dequantize_row_avx2(int64_t G, const uint8_t *b, float *dst, int64_t n) {
    const __m256i m15 = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8), sign = _mm256_set1_epi32((int)0x80000000u);
    const __m256i norm[2] = {aq__ovp_table_avx2(0, 0), aq__ovp_table_avx2(1, 0)}, out[2] = {aq__ovp_table_avx2(0, 1), aq__ovp_table_avx2(1, 1)};
    uint8_t mag[64], nib[64];
    float tmp[64];
    int64_t g, k, c;
    for (g = 0; g * G < n; g++, b += 4 + G / 2) {
        unsigned f = aq__rd16(b) >> 15;
        __m128 h = aq__ovp_header(b);
        __m256 d = _mm256_set1_ps(_mm_cvtss_f32(h)), m = _mm256_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(h)));
        for (k = 0; k < G && g * G + k < n; k += 64) {
            /* a group of 32 has 16 code bytes: the upper lane decodes zeros, which are not stored */
            __m256i v = G == 32 ? _mm256_inserti128_si256(_mm256_setzero_si256(), _mm_loadu_si128((const __m128i *)(b + 4)), 0)
                                : _mm256_loadu_si256((const __m256i *)(b + 4 + k / 2));
            __m256i lo = _mm256_and_si256(v, m15), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m15);
            __m256i mag0 = _mm256_blendv_epi8(_mm256_shuffle_epi8(norm[f], lo), _mm256_shuffle_epi8(out[f], lo), _mm256_cmpeq_epi8(hi, eight));
            __m256i mag1 = _mm256_blendv_epi8(_mm256_shuffle_epi8(norm[f], hi), _mm256_shuffle_epi8(out[f], hi), _mm256_cmpeq_epi8(lo, eight));
            __m256i ma = _mm256_unpacklo_epi8(mag0, mag1), mb = _mm256_unpackhi_epi8(mag0, mag1);
            __m256i na = _mm256_unpacklo_epi8(lo, hi), nb = _mm256_unpackhi_epi8(lo, hi);
            int64_t at = g * G + k, len = n - at < (G < 64 ? G : 64) ? n - at : (G < 64 ? G : 64);
            float *o = len == 64 ? dst + at : tmp;
            /* the lanes hold values [0-15 | 32-47] and [16-31 | 48-63]: back to element order */
            _mm256_storeu_si256((__m256i *)mag, _mm256_permute2x128_si256(ma, mb, 0x20));
            _mm256_storeu_si256((__m256i *)(mag + 32), _mm256_permute2x128_si256(ma, mb, 0x31));
            _mm256_storeu_si256((__m256i *)nib, _mm256_permute2x128_si256(na, nb, 0x20));
            _mm256_storeu_si256((__m256i *)(nib + 32), _mm256_permute2x128_si256(na, nb, 0x31));
            for (c = 0; c < 64; c += 8) {
                __m256 val = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(mag + c))));
                __m256i sg = _mm256_and_si256(_mm256_slli_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(nib + c))), 28), sign);
                val = _mm256_xor_ps(val, _mm256_castsi256_ps(sg));
                _mm256_storeu_ps(o + c, _mm256_add_ps(_mm256_mul_ps(val, d), m));
            }
            if (len < 64) memcpy(dst + at, tmp, sizeof(float) * (size_t)len);
        }
    }
}

#endif

/* Rounding to a grid.  Every midpoint between consecutive normal magnitudes is a multiple of
   1/2, so the nearest normal of |q| is a lookup at floor(2|q|); outliers are rare and count the
   midpoints below |q|.  A pair whose values are both at most `fast` (halfway between the largest
   normal and the smallest outlier) is always best as two normals: the first value's clamped
   normal is then at least as close as any outlier, and the partner's normal at least as close as
   the victim's 0. */
#define AQ__OVP_NLUT 25
typedef struct { uint8_t nlut[AQ__OVP_NLUT]; float outlier[6], fast; int flint; } aq__ovp_grid;

static void aq__ovp_grid_init(aq__ovp_grid *t, int flint) {
    int k, i;
    t->flint = flint;
    for (i = 0; i < AQ__OVP_NLUT; i++) { /* |q| in [i/2, (i+1)/2): above the midpoint k when i/2 >= it */
        uint8_t f = 0;
        for (k = 0; k < 7; k++) f = (uint8_t)(f + (i >= aq__ovp_mag[flint][0][k] + aq__ovp_mag[flint][0][k + 1]));
        t->nlut[i] = f;
    }
    for (k = 0; k < 6; k++) t->outlier[k] = 0.5f * (float)(aq__ovp_mag[flint][1][k + 1] + aq__ovp_mag[flint][1][k + 2]);
    t->fast = 0.5f * (float)(aq__ovp_mag[flint][0][7] + aq__ovp_mag[flint][1][1]);
}

static unsigned aq__ovp_round_normal(const aq__ovp_grid *t, float aq) {
    return t->nlut[aq < 0.5f * (AQ__OVP_NLUT - 1) ? (int)(2.0f * aq) : AQ__OVP_NLUT - 1];
}

/* One value's three candidates at scale s (inv = 1/s) and offset m: normal code, outlier code,
   and the squared errors of the normal, the outlier and the victim (decoded as m). */
typedef struct { uint8_t normal, outlier; float en, eo, ez; } aq__ovp_choice;

static aq__ovp_choice aq__ovp_value(const aq__ovp_grid *t, float x, float s, float inv, float m) {
    aq__ovp_choice c;
    float y = x - m, q = fabsf(y) * inv, e;
    unsigned neg = y < 0 ? 8u : 0u, fn = aq__ovp_round_normal(t, q), fo = 1, k;
    int vn = aq__ovp_mag[t->flint][0][fn], vo;
    for (k = 0; k < 6; k++) fo += q > t->outlier[k];
    vo = aq__ovp_mag[t->flint][1][fo];
    c.normal = (uint8_t)(fn ? neg | fn : 0);   /* a normal zero is 0000b, never the marker */
    c.outlier = (uint8_t)(neg | fo);
    /* the errors of the values exactly as the decoder computes them: v * s + m */
    e = x - ((float)(neg ? -vn : vn) * s + m); c.en = e * e;
    e = x - ((float)(neg ? -vo : vo) * s + m); c.eo = e * e;
    e = x - m; c.ez = e * e;
    return c;
}

/* Encodes len values (a group; codes for G) at scale s > 0 and offset m; returns the squared
   error, or as soon as it exceeds limit, something above limit (the codes are then partial).
   Padding past len is code 0, or the victim of the last value. */
static double aq__ovp_encode_group(const aq__ovp_grid *t, const float *x, int64_t len, int64_t G, float s, float m, uint8_t *codes,
                                   double limit) {
    double sse = 0;
    float inv = 1.0f / s, vs[8];
    int64_t j;
    /* the normal values times s, as the decoder computes them ((float)v * s, exact under negation) */
    for (j = 0; j < 8; j++) vs[j] = (float)aq__ovp_mag[t->flint][0][j] * s;
    for (j = 0; j < G / 2; j++) {
        aq__ovp_choice a, b;
        float both, first, second;
        if (2 * j >= len) { codes[j] = 0; continue; }
        if (2 * j + 1 < len) {
            float ya = x[2 * j] - m, yb = x[2 * j + 1] - m, qa = fabsf(ya) * inv, qb = fabsf(yb) * inv;
            if (qa <= t->fast && qb <= t->fast) {
                unsigned fa = aq__ovp_round_normal(t, qa), fb = aq__ovp_round_normal(t, qb);
                float ea = x[2 * j] - ((ya < 0 ? -vs[fa] : vs[fa]) + m), eb = x[2 * j + 1] - ((yb < 0 ? -vs[fb] : vs[fb]) + m);
                codes[j] = (uint8_t)((fa ? (ya < 0 ? 8u : 0u) | fa : 0u) | (fb ? (yb < 0 ? 8u : 0u) | fb : 0u) << 4);
                sse += ea * ea + eb * eb;
                if (sse > limit) return sse;
                continue;
            }
            b = aq__ovp_value(t, x[2 * j + 1], s, inv, m);
        } else { b.normal = 0; b.outlier = 0; b.en = b.ez = 0; b.eo = FLT_MAX; }   /* padding is never an outlier */
        a = aq__ovp_value(t, x[2 * j], s, inv, m);
        both = a.en + b.en; first = a.eo + b.ez; second = a.ez + b.eo;
        if (both <= first && both <= second) { codes[j] = (uint8_t)(a.normal | b.normal << 4); sse += both; }
        else if (first <= second) { codes[j] = (uint8_t)(a.outlier | 8 << 4); sse += first; }
        else { codes[j] = (uint8_t)(8 | b.outlier << 4); sse += second; }
        if (sse > limit) return sse;
    }
    return sse;
}

/* The median of n values (a copy is partly sorted in v): quickselect. */
static float aq__median(float *v, int64_t n) {
    int64_t lo = 0, hi = n - 1, k = n / 2, i, j;
    float lower;
    while (lo < hi) {
        float pivot = v[lo + (hi - lo) / 2], t;
        i = lo; j = hi;
        while (i <= j) {
            while (v[i] < pivot) i++;
            while (v[j] > pivot) j--;
            if (i <= j) { t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else break;
    }
    if (n % 2) return v[k];
    for (lower = v[0], i = 1; i < k; i++) lower = v[i] > lower ? v[i] : lower;   /* v[0..k) hold the lower half */
    return 0.5f * (lower + v[k]);
}

/* The offsets a group tries, as f16 values: the mid-range, the mean, the median and 0; returns
   how many.  Each is best on some groups: the mean and median center the bulk of a skewed group,
   the mid-range centers its extremes, and 0 keeps a symmetric group symmetric.  On stories260K
   at group 64 (perplexity on the first 131072 validation tokens, all refitted as below), the
   best of the four gave 5.01, the mean alone 5.19 and no offset 5.25; RTN int4 gives 5.12.  The
   mid-range comes first because it wins most often, so the search's early exit cuts more. */
static int aq__ovp_offsets(const float *x, int64_t len, int symmetric, float *m) {
    float copy[128], mn = x[0], mx = x[0];
    double sum = 0;
    int64_t i;
    m[0] = 0.0f;
    if (symmetric) return 1;
    for (i = 0; i < len; i++) { mn = x[i] < mn ? x[i] : mn; mx = x[i] > mx ? x[i] : mx; sum += x[i]; copy[i] = x[i]; }
    m[0] = aq_f16_to_f32(aq_f32_to_f16(0.5f * (mn + mx)));
    m[1] = aq_f16_to_f32(aq_f32_to_f16((float)(sum / (double)len)));
    m[2] = aq_f16_to_f32(aq_f32_to_f16(aq__median(copy, len)));
    m[3] = 0.0f;
    return 4;
}

/* The least-squares scale and offset for fixed codes: min over (s, m) of sum (x - v s - m)^2
   (m = 0 when symmetric).  Returns 0, or -1 when the codes do not determine a positive scale. */
static int aq__ovp_refit(const aq__ovp_grid *t, const float *x, int64_t len, const uint8_t *codes, int symmetric, float *s, float *m) {
    double sv = 0, svv = 0, sx = 0, sxv = 0, det, ns, nm;
    int64_t j;
    for (j = 0; j < len; j++) {
        int v[2];
        aq__ovp_pair(t->flint, codes[j / 2], &v[0], &v[1]);
        sv += v[j & 1]; svv += (double)v[j & 1] * v[j & 1]; sx += x[j]; sxv += (double)x[j] * v[j & 1];
    }
    det = (double)len * svv - sv * sv;
    if (symmetric) { ns = svv > 0 ? sxv / svv : 0; nm = 0; }
    else if (det > 0) { ns = ((double)len * sxv - sv * sx) / det; nm = (sx - ns * sv) / (double)len; }
    else return -1;
    if (!(ns > 0) || ns > 65504.0 || !(fabs(nm) < 65504.0)) return -1;
    *s = (float)ns;
    *m = (float)nm;
    return 0;
}

/* Encodes one group (header and codes) with the best offset and scale; returns its squared error.
   After the search, the scale and offset are refitted by least squares to the chosen codes and
   the group re-encoded, up to 3 times while that lowers the error: on stories260K this took
   group-64 perplexity from 5.11 to 5.01 (first 131072 validation tokens). */
static double aq__ovp_quantize_group(const aq__ovp_grid *t, const float *x, int64_t len, int64_t G, int symmetric, uint8_t *b,
                                     uint8_t *tmp) {
    float offsets[4], best_m = 0.0f;
    double best = -1;
    uint16_t best_d = 0, mh, prev;
    int n_off = aq__ovp_offsets(x, len, symmetric, offsets), o, k;
    int64_t i;
    memset(b + 4, 0, (size_t)G / 2);
    for (o = 0; o < n_off; o++) {
        float m = offsets[o];
        double mu = 0, var = 0, alpha0;
        for (i = 0; i < len; i++) mu += x[i] - m;
        mu /= (double)len;
        for (i = 0; i < len; i++) var += (x[i] - m - mu) * (x[i] - m - mu);
        alpha0 = fabs(mu) + 3.0 * sqrt(var / (double)len);
        if (!(alpha0 > 0)) {                    /* every value equals m: all codes 0 */
            double sse = 0;
            for (i = 0; i < len; i++) sse += (double)(x[i] - m) * (x[i] - m);
            if (best < 0 || sse < best) { best = sse; best_m = m; best_d = 0; memset(b + 4, 0, (size_t)G / 2); }
            continue;
        }
        for (k = 0, prev = 0; k < AQ__OVP_STEPS; k++) {
            double r = 0.75 + 1.75 * k / (AQ__OVP_STEPS - 1), sse;
            uint16_t dh = aq_f32_to_f16((float)(alpha0 * r / (t->flint ? 16.0 : 7.0)));
            float s = aq_f16_to_f32(dh);
            if (!(s > 0) || dh >= 0x7c00 || dh == prev) continue;  /* underflows or overflows f16, or tried */
            prev = dh;
            sse = aq__ovp_encode_group(t, x, len, G, s, m, tmp, best < 0 ? DBL_MAX : best);
            if (best < 0 || sse < best) { best = sse; best_m = m; best_d = dh; memcpy(b + 4, tmp, (size_t)G / 2); }
        }
    }
    for (k = 0; k < 3 && best > 0 && best_d; k++) {
        float s, m;
        double sse;
        uint16_t dh;
        if (aq__ovp_refit(t, x, len, b + 4, symmetric, &s, &m)) break;
        dh = aq_f32_to_f16(s);
        s = aq_f16_to_f32(dh);
        m = aq_f16_to_f32(aq_f32_to_f16(m));
        if (!(s > 0) || dh >= 0x7c00) break;
        sse = aq__ovp_encode_group(t, x, len, G, s, m, tmp, best);
        if (!(sse < best)) break;
        best = sse; best_m = m; best_d = dh; memcpy(b + 4, tmp, (size_t)G / 2);
    }
    if (best < 0) {                             /* no usable scale (|x| beyond f16): zeros */
        best = 0;
        for (i = 0; i < len; i++) best += (double)x[i] * x[i];
    }
    best_d = (uint16_t)(best_d | (t->flint ? 0x8000u : 0u));
    mh = aq_f32_to_f16(best_m);
    memcpy(b, &best_d, 2);
    memcpy(b + 2, &mh, 2);
    return best;
}

static double aq__ovp_quantize_row(const aq__ovp_grid *t, int64_t G, const float *x, uint8_t *b, int64_t n, int symmetric) {
    uint8_t tmp[64];
    double sse = 0;
    int64_t g;
    for (g = 0; g * G < n; g++, b += 4 + G / 2)
        sse += aq__ovp_quantize_group(t, x + g * G, n - g * G < G ? n - g * G : G, G, symmetric, b, tmp);
    return sse;
}

int aq_quantize_ovp(uint32_t type, const float *src, void *dst, int64_t rows, int64_t cols, int flags, double *sse) {
    int64_t G = aq__ovp_group(type), rb = aq_type_row_bytes(type, cols), r;
    int grid = flags & 3, symmetric = (flags & AQ_OVP_SYMMETRIC) != 0, flint;
    double err[2] = {0, 0};
    uint8_t *other;
    aq__ovp_grid t[2];
    if (!G || rb < 0 || rows < 0 || grid == 3 || (flags & ~7)) return -1;
    aq__ovp_grid_init(&t[0], 0);
    aq__ovp_grid_init(&t[1], 1);
    if (grid != AQ_OVP_AUTO) {
        flint = grid == AQ_OVP_FLINT4;
        for (r = 0; r < rows; r++) err[0] += aq__ovp_quantize_row(&t[flint], G, src + r * cols, (uint8_t *)dst + r * rb, cols, symmetric);
        if (sse) *sse = err[0];
        return grid;
    }
    other = (uint8_t *)aq__calloc((size_t)rows, (size_t)rb);
    if (!other && rows && rb) return -1;
    for (r = 0; r < rows; r++) {
        err[0] += aq__ovp_quantize_row(&t[0], G, src + r * cols, (uint8_t *)dst + r * rb, cols, symmetric);
        err[1] += aq__ovp_quantize_row(&t[1], G, src + r * cols, other + r * rb, cols, symmetric);
    }
    flint = err[1] < err[0];
    if (flint) memcpy(dst, other, (size_t)rows * (size_t)rb);
    AQ_FREE(other);
    if (sse) *sse = err[flint];
    return flint ? AQ_OVP_FLINT4 : AQ_OVP_INT4;
}

/* ---------------------------------------------------------------------------------------
   Row codecs.  A row of any CPU type expands to floats here (embedding lookups, prompt tiles
   for sgemm) and packs back (tests, tools).  Block layouts are ggml's:
     Q8_0: f16 d, i8 q[32]            x = q*d
     Q4_0: f16 d, u8 q[16]            x[j] = (lo(q[j]) - 8)*d, x[j+16] = (hi(q[j]) - 8)*d
     Q4_1: f16 d, f16 m, u8 q[16]     x[j] = lo(q[j])*d + m,   x[j+16] = hi(q[j])*d + m
   --------------------------------------------------------------------------------------- */
static void aq__f16_row_ref(const uint16_t *src, float *dst, int64_t n) {
    int64_t i;
    for (i = 0; i < n; i++) dst[i] = aq_f16_to_f32(aq__rd16(src + i));
}

#if AQ__X86
AQ__AVX2 static void aq__f16_row_avx2(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    aq__f16_row_ref(src + i, dst + i, n - i);
}
#endif

static int aq__dequantize_row(uint32_t type, const void *src, float *dst, int64_t n, int simd) {
    const uint8_t *b = (const uint8_t *)src;
    int64_t i, j;
    if (aq_type_row_bytes(type, n) < 0 || !aq_type_cpu_supported(type)) return -1;
    if (aq__ovp_group(type)) {
#if AQ__X86
        if (simd >= AQ__SIMD_AVX2) { aq__ovp_dequantize_row_avx2(aq__ovp_group(type), b, dst, n); return 0; }
#endif
        aq__ovp_dequantize_row(aq__ovp_group(type), b, dst, n);
        return 0;
    }
    switch (type) {
    case AQ_TYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case AQ_TYPE_F16:
#if AQ__X86
        if (simd >= AQ__SIMD_AVX2) { aq__f16_row_avx2((const uint16_t *)src, dst, n); break; }
#endif
        aq__f16_row_ref((const uint16_t *)src, dst, n);
        break;
    case AQ_TYPE_BF16:
        for (i = 0; i < n; i++) dst[i] = aq_bf16_to_f32(aq__rd16(b + 2 * i));
        break;
    case AQ_TYPE_Q8_0:
        for (i = 0; i < n / 32; i++, b += 34) {
            float d = aq_f16_to_f32(aq__rd16(b));
            for (j = 0; j < 32; j++) dst[i * 32 + j] = (float)(int8_t)b[2 + j] * d;
        }
        break;
    case AQ_TYPE_Q4_0:
        for (i = 0; i < n / 32; i++, b += 18) {
            float d = aq_f16_to_f32(aq__rd16(b));
            for (j = 0; j < 16; j++) {
                dst[i * 32 + j] = (float)((b[2 + j] & 15) - 8) * d;
                dst[i * 32 + j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
            }
        }
        break;
    default: { /* Q4_1 and AQ4: groups of G, 32-value sub-blocks */
        int64_t G = aq__int4_group(type), g, k;
        for (g = 0; g * G < n; g++, b += 4 + G / 2) {
            float d = aq_f16_to_f32(aq__rd16(b)), m = aq_f16_to_f32(aq__rd16(b + 2));
            for (k = 0; k < G / 32; k++)
                for (j = 0; j < 16; j++) {
                    int64_t at = g * G + k * 32 + j;
                    if (at < n) dst[at] = (float)(b[4 + 16 * k + j] & 15) * d + m;
                    if (at + 16 < n) dst[at + 16] = (float)(b[4 + 16 * k + j] >> 4) * d + m;
                }
        }
        break;
    }
    }
    return 0;
}

int aq_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n) {
    return aq__dequantize_row(type, src, dst, n, aq__detect_simd());
}

/* Quantizers are ggml's reference rounding, so files we write dequantize as llama.cpp expects. */
int aq_quantize_row(uint32_t type, const float *src, void *dst, int64_t n) {
    uint8_t *b = (uint8_t *)dst;
    int64_t i, j;
    if (aq_type_row_bytes(type, n) < 0 || !aq_type_cpu_supported(type)) return -1;
    if (aq__ovp_group(type)) return aq_quantize_ovp(type, src, dst, 1, n, AQ_OVP_AUTO, NULL) < 0 ? -1 : 0;
    switch (type) {
    case AQ_TYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case AQ_TYPE_F16:
        for (i = 0; i < n; i++) { uint16_t h = aq_f32_to_f16(src[i]); memcpy(b + 2 * i, &h, 2); }
        break;
    case AQ_TYPE_BF16:
        for (i = 0; i < n; i++) { uint16_t h = aq_f32_to_bf16(src[i]); memcpy(b + 2 * i, &h, 2); }
        break;
    case AQ_TYPE_Q8_0:
        for (i = 0; i < n / 32; i++, b += 34) {
            const float *x = src + i * 32;
            float amax = 0, d, id;
            uint16_t dh;
            for (j = 0; j < 32; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
            d = amax / 127.0f; id = d != 0.0f ? 1.0f / d : 0.0f;
            dh = aq_f32_to_f16(d); memcpy(b, &dh, 2);
            for (j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
        }
        break;
    case AQ_TYPE_Q4_0:
        for (i = 0; i < n / 32; i++, b += 18) {
            const float *x = src + i * 32;
            float amax = 0, max = 0, d, id;
            uint16_t dh;
            for (j = 0; j < 32; j++) if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
            d = max / -8.0f; id = d != 0.0f ? 1.0f / d : 0.0f;
            dh = aq_f32_to_f16(d); memcpy(b, &dh, 2);
            for (j = 0; j < 16; j++) {
                int lo = (int)(x[j] * id + 8.5f), hi = (int)(x[j + 16] * id + 8.5f);
                lo = lo > 15 ? 15 : lo; hi = hi > 15 ? 15 : hi;
                b[2 + j] = (uint8_t)(lo | (hi << 4));
            }
        }
        break;
    default: { /* Q4_1 and AQ4: AWQ's asymmetric quantizer per group of G */
        int64_t G = aq__int4_group(type), g, k;
        for (g = 0; g * G < n; g++, b += 4 + G / 2) {
            const float *x = src + g * G;
            int64_t len = n - g * G < G ? n - g * G : G;
            float mn = x[0], mx = x[0], delta, zero;
            uint16_t dh, mh;
            for (j = 1; j < len; j++) { mn = x[j] < mn ? x[j] : mn; mx = x[j] > mx ? x[j] : mx; }
            delta = (mx - mn > 1e-5f ? mx - mn : 1e-5f) / 15.0f;
            zero = roundf(-mn / delta);
            zero = zero < 0 ? 0 : zero > 15 ? 15 : zero;
            dh = aq_f32_to_f16(delta); mh = aq_f32_to_f16(-zero * delta);
            memcpy(b, &dh, 2); memcpy(b + 2, &mh, 2);
            memset(b + 4, 0, (size_t)G / 2);   /* padding past n stays code 0 */
            for (k = 0; k < G / 32; k++)
                for (j = 0; j < 32 && k * 32 + j < len; j++) {
                    float q = roundf(x[k * 32 + j] / delta) + zero;
                    int qi = q < 0 ? 0 : q > 15 ? 15 : (int)q;
                    b[4 + 16 * k + (j & 15)] |= (uint8_t)(j < 16 ? qi : qi << 4);
                }
        }
        break;
    }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------
   Thread pool.  Persistent workers; a job is a range of items that threads claim in chunks with
   a compare-and-swap on one 64-bit ticket (job generation << 32 | next item), so a thread the OS
   has descheduled simply claims nothing and the others finish its share: the caller waits for
   items, not for threads.  Generations are even while a job runs and odd while the caller writes
   the next job's fields, so a thread still holding an old ticket cannot claim items of a job
   whose fields it read half-written.  Waiting (for work, or for the last chunk) spins briefly,
   then yields, then sleeps on a condition variable: a busy machine is not burned, and the thread
   everyone waits for gets the core.
   --------------------------------------------------------------------------------------- */
typedef void (*aq__task_fn)(void *ctx, int64_t begin, int64_t end, int thread);

typedef struct aq__pool aq__pool;
typedef struct { aq__pool *pool; int index; } aq__worker_arg;

struct aq__pool {
    int n_threads;                  /* including the caller */
    pthread_t *threads;
    aq__worker_arg *args;
    pthread_mutex_t mutex;
    pthread_cond_t wake, finished;
    /* the current job: written by the caller before it publishes the ticket */
    aq__task_fn fn;
    void *ctx;
    int64_t n_items, grain;
    uint64_t ticket;                /* atomic */
    int64_t done;                   /* atomic: items finished in the current job */
    int sleepers;                   /* atomic: workers blocked on wake */
    int stop;                       /* atomic */
    uint32_t gen;                   /* caller only: the current (even) generation */
};

/* Measured on a 2-core machine with another process keeping one core busy: yielding after a
   few microseconds is what keeps 2 threads at least as fast as 1 there (spinning on pause alone
   for 20-50 us lost 2-9%), while idle 2-thread decode is as fast as with pure spinning. */
#define AQ__PAUSE_SECONDS 5e-6      /* spin on pause this long, */
#define AQ__SPIN_SECONDS 100e-6     /* then yield the core until this long, then sleep */

/* One round of waiting: returns 1 once the thread has waited long enough that it should sleep.
   First it spins on the pause instruction (a job usually follows within microseconds), then
   it yields the core, so that under contention the thread everyone waits for can run. */
static int aq__backoff(int *spins, double t0) {
    double waited;
    if (++*spins & 15) {
#if AQ__X86
        __builtin_ia32_pause();
#endif
        return 0;
    }
    waited = aq_time_seconds() - t0;
    if (waited >= AQ__SPIN_SECONDS) return 1;
    if (waited >= AQ__PAUSE_SECONDS) sched_yield();
    return 0;
}

#define AQ__LOAD(p) __atomic_load_n(p, __ATOMIC_ACQUIRE)
#define AQ__STORE(p, v) __atomic_store_n(p, v, __ATOMIC_SEQ_CST)

/* Claims and runs chunks of job `gen` until none is left. */
static void aq__pool_work(aq__pool *p, uint32_t gen, int thread) {
    for (;;) {
        uint64_t t = AQ__LOAD(&p->ticket);
        int64_t next = (int64_t)(uint32_t)t, n, end;
        aq__task_fn fn;
        void *ctx;
        if ((uint32_t)(t >> 32) != gen) return;
        fn = (aq__task_fn)__atomic_load_n(&p->fn, __ATOMIC_RELAXED);
        ctx = __atomic_load_n(&p->ctx, __ATOMIC_RELAXED);
        n = __atomic_load_n(&p->n_items, __ATOMIC_RELAXED);
        end = next + __atomic_load_n(&p->grain, __ATOMIC_RELAXED);
        if (next >= n) return;
        if (end > n) end = n;
        /* the CAS fails if another thread claimed first or a new job began: then the job
           fields read above may be stale, so nothing is run with them */
        if (!__atomic_compare_exchange_n(&p->ticket, &t, ((uint64_t)gen << 32) | (uint64_t)end, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;
        fn(ctx, next, end, thread);
        if (__atomic_add_fetch(&p->done, end - next, __ATOMIC_ACQ_REL) == n) {
            pthread_mutex_lock(&p->mutex);
            pthread_cond_signal(&p->finished);
            pthread_mutex_unlock(&p->mutex);
        }
    }
}

static void *aq__pool_main(void *arg) {
    aq__worker_arg *a = (aq__worker_arg *)arg;
    aq__pool *p = a->pool;
    uint32_t seen = 0;
    for (;;) {
        uint32_t gen;
        int spins = 0;
        double t0 = aq_time_seconds();
        while (((gen = (uint32_t)(AQ__LOAD(&p->ticket) >> 32)) == seen || (gen & 1)) && !AQ__LOAD(&p->stop)) {
            if (!aq__backoff(&spins, t0)) continue;
            pthread_mutex_lock(&p->mutex);
            __atomic_add_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
            while (((gen = (uint32_t)(AQ__LOAD(&p->ticket) >> 32)) == seen || (gen & 1)) && !AQ__LOAD(&p->stop))
                pthread_cond_wait(&p->wake, &p->mutex);
            __atomic_sub_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&p->mutex);
        }
        if (AQ__LOAD(&p->stop)) break;
        seen = gen;
        aq__pool_work(p, gen, a->index);
    }
    return NULL;
}

static void aq__pool_free(aq__pool *p) {
    int i;
    if (!p) return;
    pthread_mutex_lock(&p->mutex);
    AQ__STORE(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mutex);
    for (i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mutex);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->finished);
    AQ_FREE(p->threads);
    AQ_FREE(p->args);
    AQ_FREE(p);
}

static aq__pool *aq__pool_new(int n_threads) {
    int i;
    aq__pool *p = (aq__pool *)aq__calloc(1, sizeof *p);
    if (!p) return NULL;
#if !defined(AQ_NO_BLAS) && !defined(AQ_KEEP_BLAS_THREADS) && defined(OPENBLAS_THREAD)
    openblas_set_num_threads(1); /* each pool thread runs its own sgemm tiles */
#endif
    p->threads = (pthread_t *)aq__calloc((size_t)n_threads, sizeof *p->threads);
    p->args = (aq__worker_arg *)aq__calloc((size_t)n_threads, sizeof *p->args);
    if (!p->threads || !p->args) { AQ_FREE(p->threads); AQ_FREE(p->args); AQ_FREE(p); return NULL; }
    pthread_mutex_init(&p->mutex, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->finished, NULL);
    p->n_threads = 1;
    for (i = 1; i < n_threads; i++) {
        p->args[i].pool = p;
        p->args[i].index = i;
        if (pthread_create(&p->threads[i], NULL, aq__pool_main, &p->args[i]) != 0) break;
        p->n_threads = i + 1;
    }
    if (p->n_threads != n_threads) { aq__pool_free(p); return NULL; }
    return p;
}

/* Runs fn over items [0, n) in chunks of `grain`, on all threads; returns when all are done. */
static void aq__pool_run(aq__pool *p, int64_t n, int64_t grain, aq__task_fn fn, void *ctx) {
    int spins;
    double t0;
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (!p || p->n_threads <= 1 || n <= grain) { fn(ctx, 0, n, 0); return; }
    p->gen += 2;
    AQ__STORE(&p->ticket, ((uint64_t)(p->gen - 1) << 32) | 0xffffffffu); /* old tickets are void now */
    __atomic_store_n(&p->fn, fn, __ATOMIC_RELAXED);
    __atomic_store_n(&p->ctx, ctx, __ATOMIC_RELAXED);
    __atomic_store_n(&p->n_items, n, __ATOMIC_RELAXED);
    __atomic_store_n(&p->grain, grain, __ATOMIC_RELAXED);
    __atomic_store_n(&p->done, 0, __ATOMIC_RELAXED);
    AQ__STORE(&p->ticket, (uint64_t)p->gen << 32);
    if (__atomic_load_n(&p->sleepers, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&p->mutex);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mutex);
    }
    aq__pool_work(p, p->gen, 0);
    t0 = aq_time_seconds();
    spins = 0;
    do {
        if (AQ__LOAD(&p->done) == n) return;
    } while (!aq__backoff(&spins, t0));
    pthread_mutex_lock(&p->mutex);
    while (AQ__LOAD(&p->done) != n) pthread_cond_wait(&p->finished, &p->mutex);
    pthread_mutex_unlock(&p->mutex);
}

/* ---------------------------------------------------------------------------------------
   Kernels.  Every matrix product goes through one dispatch on the weight type, with two entry
   points: GEMV (one token: a dot product per weight row, threads split the rows) and GEMM (a
   batch of tokens: weight tiles expanded to f32, then sgemm).  Each row-dot kernel has a scalar
   reference right next to its AVX2 (and, for f16/f32, AVX-512) twins; the tests hold every SIMD
   level the CPU has to the reference.
   --------------------------------------------------------------------------------------- */
typedef float (*aq__row_dot_fn)(const void *row, const float *x, int64_t n);

static float aq__dot_f32_ref(const void *row, const float *x, int64_t n) {
    const float *w = (const float *)row;
    float sum = 0.0f;
    int64_t i;
    for (i = 0; i < n; i++) sum += w[i] * x[i];
    return sum;
}

static float aq__dot_f16_ref(const void *row, const float *x, int64_t n) {
    const uint8_t *w = (const uint8_t *)row;
    float sum = 0.0f;
    int64_t i;
    for (i = 0; i < n; i++) sum += aq_f16_to_f32(aq__rd16(w + 2 * i)) * x[i];
    return sum;
}

static float aq__dot_bf16_ref(const void *row, const float *x, int64_t n) {
    const uint8_t *w = (const uint8_t *)row;
    float sum = 0.0f;
    int64_t i;
    for (i = 0; i < n; i++) sum += aq_bf16_to_f32(aq__rd16(w + 2 * i)) * x[i];
    return sum;
}

static float aq__dot_q8_0_ref(const void *row, const float *x, int64_t n) {
    const uint8_t *b = (const uint8_t *)row;
    float sum = 0.0f;
    int64_t i, j;
    for (i = 0; i < n / 32; i++, b += 34, x += 32) {
        float s = 0.0f;
        for (j = 0; j < 32; j++) s += (float)(int8_t)b[2 + j] * x[j];
        sum += s * aq_f16_to_f32(aq__rd16(b));
    }
    return sum;
}

static float aq__dot_q4_0_ref(const void *row, const float *x, int64_t n) {
    const uint8_t *b = (const uint8_t *)row;
    float sum = 0.0f;
    int64_t i, j;
    for (i = 0; i < n / 32; i++, b += 18, x += 32) {
        float s = 0.0f;
        for (j = 0; j < 16; j++) s += (float)((b[2 + j] & 15) - 8) * x[j] + (float)((b[2 + j] >> 4) - 8) * x[j + 16];
        sum += s * aq_f16_to_f32(aq__rd16(b));
    }
    return sum;
}

#if AQ__X86
AQ__AVX2 static float aq__hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AQ__AVX2 static float aq__dot_f32_avx2(const void *row, const float *x, int64_t n) {
    const float *w = (const float *)row;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    return aq__hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) + aq__dot_f32_ref(w + i, x + i, n - i);
}

AQ__AVX2 static __m256 aq__load_f16x8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
AQ__AVX2 static __m256 aq__load_bf16x8(const uint8_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

AQ__AVX2 static float aq__dot_f16_avx2(const void *row, const float *x, int64_t n) {
    const uint8_t *w = (const uint8_t *)row;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(aq__load_f16x8(w + 2 * i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(aq__load_f16x8(w + 2 * i + 16), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(aq__load_f16x8(w + 2 * i + 32), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(aq__load_f16x8(w + 2 * i + 48), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(aq__load_f16x8(w + 2 * i), _mm256_loadu_ps(x + i), a0);
    return aq__hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) + aq__dot_f16_ref(w + 2 * i, x + i, n - i);
}

/* AVX-512: twice the lanes per instruction, which is what lets f16 rows (one convert per
   load) keep up with memory; the tails go through the AVX2 kernels. */
AQ__AVX512 static float aq__dot_f32_avx512(const void *row, const float *x, int64_t n) {
    const float *w = (const float *)row;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + aq__dot_f32_avx2(w + i, x + i, n - i);
}

AQ__AVX512 static float aq__dot_f16_avx512(const void *row, const float *x, int64_t n) {
    const uint8_t *w = (const uint8_t *)row;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * i))), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * i + 32))), _mm512_loadu_ps(x + i + 16), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + aq__dot_f16_avx2(w + 2 * i, x + i, n - i);
}

AQ__AVX2 static float aq__dot_bf16_avx2(const void *row, const float *x, int64_t n) {
    const uint8_t *w = (const uint8_t *)row;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(aq__load_bf16x8(w + 2 * i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(aq__load_bf16x8(w + 2 * i + 16), _mm256_loadu_ps(x + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(aq__load_bf16x8(w + 2 * i), _mm256_loadu_ps(x + i), a0);
    return aq__hsum_avx2(_mm256_add_ps(a0, a1)) + aq__dot_bf16_ref(w + 2 * i, x + i, n - i);
}

AQ__AVX2 static float aq__f16_avx2(const uint8_t *p) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(aq__rd16(p)))); }

/* 8 int8 at p as floats */
AQ__AVX2 static __m256 aq__i8x8(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

AQ__AVX2 static float aq__dot_q8_0_avx2(const void *row, const float *x, int64_t n) {
    const uint8_t *b = (const uint8_t *)row;
    __m256 acc = _mm256_setzero_ps();
    int64_t i;
    for (i = 0; i < n / 32; i++, b += 34, x += 32) {
        __m256 s = _mm256_mul_ps(aq__i8x8(b + 2), _mm256_loadu_ps(x));
        s = _mm256_fmadd_ps(aq__i8x8(b + 10), _mm256_loadu_ps(x + 8), s);
        s = _mm256_fmadd_ps(aq__i8x8(b + 18), _mm256_loadu_ps(x + 16), s);
        s = _mm256_fmadd_ps(aq__i8x8(b + 26), _mm256_loadu_ps(x + 24), s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(aq__f16_avx2(b)), s, acc);
    }
    return aq__hsum_avx2(acc);
}

/* The 32 nibbles of a Q4 block as four vectors of 8 floats (block order: lows, then highs). */
AQ__AVX2 static void aq__nibbles_avx2(const uint8_t *qs, __m256 q[4]) {
    __m128i v = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(15);
    __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    q[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    q[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    q[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    q[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

AQ__AVX2 static float aq__dot_q4_0_avx2(const void *row, const float *x, int64_t n) {
    const uint8_t *b = (const uint8_t *)row;
    const __m256 eight = _mm256_set1_ps(8.0f);
    __m256 acc = _mm256_setzero_ps(), q[4], s;
    int64_t i, k;
    for (i = 0; i < n / 32; i++, b += 18, x += 32) {
        aq__nibbles_avx2(b + 2, q);
        s = _mm256_setzero_ps();
        for (k = 0; k < 4; k++) s = _mm256_fmadd_ps(_mm256_sub_ps(q[k], eight), _mm256_loadu_ps(x + 8 * k), s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(aq__f16_avx2(b)), s, acc);
    }
    return aq__hsum_avx2(acc);
}

AQ__AVX2 static void aq__axpy_avx2(float a, const float *x, float *y, int64_t n) {
    __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}
#endif

static aq__row_dot_fn aq__row_dot_for(uint32_t type, int simd) {
#if AQ__X86
    if (simd >= AQ__SIMD_AVX512) switch (type) {
        case AQ_TYPE_F32: return aq__dot_f32_avx512;
        case AQ_TYPE_F16: return aq__dot_f16_avx512;
        }
    if (simd >= AQ__SIMD_AVX2) switch (type) {
        case AQ_TYPE_F32: return aq__dot_f32_avx2;
        case AQ_TYPE_F16: return aq__dot_f16_avx2;
        case AQ_TYPE_BF16: return aq__dot_bf16_avx2;
        case AQ_TYPE_Q8_0: return aq__dot_q8_0_avx2;
        case AQ_TYPE_Q4_0: return aq__dot_q4_0_avx2;
        }
#endif
    (void)simd;
    switch (type) {
    case AQ_TYPE_F32: return aq__dot_f32_ref;
    case AQ_TYPE_F16: return aq__dot_f16_ref;
    case AQ_TYPE_BF16: return aq__dot_bf16_ref;
    case AQ_TYPE_Q8_0: return aq__dot_q8_0_ref;
    case AQ_TYPE_Q4_0: return aq__dot_q4_0_ref;
    }
    return NULL;
}

/* int4 rows (Q4_1, AQ4) against int8 activations.  x is quantized once per matrix-vector
   product, per group of the weight's group size (scale = max|x| / 127, zero-padded to whole
   groups), so that a row's dot product is integer arithmetic on the 4-bit codes:
       dot(w, x) = sum_g d_g * sx_g * <q_g, xq_g> + m_g * sum(x_g)
   with sum(x_g) taken from the unquantized x.  The int8 rounding of x costs far less accuracy
   than the 4-bit weights themselves, and it lets the inner loop run on integer dot-product
   instructions (maddubs on AVX2, VNNI's dpbusd on AVX-512) instead of a float per weight. */
typedef struct {
    int64_t group, n_groups;
    int8_t *q;       /* n_groups * group */
    float *scale;    /* per group */
    float *sum;      /* per group */
} aq__x8;

/* Memory for an aq__x8 of up to n values at any group size >= 32. */
static size_t aq__x8_bytes(int64_t n) { return (size_t)(n + 128) + 2 * sizeof(float) * (size_t)(n / 32 + 2); }

static void aq__x8_init(aq__x8 *x8, void *mem, int64_t n) {
    x8->q = (int8_t *)mem;
    x8->scale = (float *)((char *)mem + ((n + 128 + 15) / 16) * 16);
    x8->sum = x8->scale + n / 32 + 2;
    x8->group = x8->n_groups = 0;
}

static void aq__x8_quantize(const float *x, int64_t n, int64_t group, aq__x8 *x8) {
    int64_t g, i;
    x8->group = group;
    x8->n_groups = (n + group - 1) / group;
    for (g = 0; g < x8->n_groups; g++) {
        const float *xg = x + g * group;
        int64_t len = n - g * group < group ? n - g * group : group;
        float amax = 0.0f, sum = 0.0f, inv;
        for (i = 0; i < len; i++) { amax = fabsf(xg[i]) > amax ? fabsf(xg[i]) : amax; sum += xg[i]; }
        x8->scale[g] = amax / 127.0f;
        x8->sum[g] = sum;
        inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (i = 0; i < group; i++) x8->q[g * group + i] = i < len ? (int8_t)lrintf(xg[i] * inv) : 0;
    }
}

typedef float (*aq__row_dot_x8_fn)(const void *row, const aq__x8 *x);

static float aq__dot_int4_x8_ref(const void *row, const aq__x8 *x) {
    const uint8_t *b = (const uint8_t *)row;
    const int8_t *xq = x->q;
    int64_t G = x->group, g, k, j;
    float sum = 0.0f;
    for (g = 0; g < x->n_groups; g++, b += 4 + G / 2) {
        int32_t isum = 0;
        for (k = 0; k < G / 32; k++, xq += 32)
            for (j = 0; j < 16; j++) isum += (b[4 + 16 * k + j] & 15) * xq[j] + (b[4 + 16 * k + j] >> 4) * xq[j + 16];
        sum += aq_f16_to_f32(aq__rd16(b)) * x->scale[g] * (float)isum + aq_f16_to_f32(aq__rd16(b + 2)) * x->sum[g];
    }
    return sum;
}

#if AQ__X86
/* A group's (d, m) header as two floats, with F16C (the scalar conversion is a function call
   with branches, which at one group per 128 weights was a quarter of the decode time). */
AQ__AVX2 static __m128 aq__group_header(const uint8_t *b) {
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)aq__rd32(b)));
}

AQ__AVX2 static float aq__dot_int4_x8_avx2(const void *row, const aq__x8 *x) {
    const uint8_t *b = (const uint8_t *)row;
    const int8_t *xq = x->q;
    const __m128i mask = _mm_set1_epi8(15);
    const __m256i ones = _mm256_set1_epi16(1);
    int64_t G = x->group, g, k;
    __m256 acc = _mm256_setzero_ps();
    float offset = 0.0f;
    for (g = 0; g < x->n_groups; g++, b += 4 + G / 2) {
        __m256i isum = _mm256_setzero_si256();
        for (k = 0; k < G / 32; k++, xq += 32) {
            __m128i v = _mm_loadu_si128((const __m128i *)(b + 4 + 16 * k));
            __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), mask), _mm_and_si128(v, mask));
            __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)xq)); /* at most 2*15*127 */
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, ones));
        }
        {
            __m128 dm = aq__group_header(b);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(_mm_cvtss_f32(dm) * x->scale[g]), acc);
            offset += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * x->sum[g];
        }
    }
    return aq__hsum_avx2(acc) + offset;
}

/* Groups of 64 or more: 64 codes per step; the two sub-blocks' low nibbles (values 0-15 and
   32-47) and high nibbles (16-31, 48-63) fill one register, matched by reordering x's lanes.
   Each step's dpbusd starts from zero and even and odd groups use separate accumulators, so no
   long chain of dependent instructions keeps the loads of the next rows waiting. */
AQ__AVX512 static __m512i aq__int4_step_avx512(const uint8_t *codes, const int8_t *xq) {
    const __m256i mask = _mm256_set1_epi8(15);
    __m256i v = _mm256_loadu_si256((const __m256i *)codes);
    __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, mask)),
                                   _mm256_and_si256(_mm256_srli_epi16(v, 4), mask), 1);
    __m512i xv = _mm512_loadu_si512((const void *)xq);
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_shuffle_i64x2(xv, xv, _MM_SHUFFLE(3, 1, 2, 0)));
}

AQ__AVX512 static float aq__dot_int4_x8_avx512(const void *row, const aq__x8 *x) {
    const uint8_t *b = (const uint8_t *)row;
    const int8_t *xq = x->q;
    int64_t G = x->group, g, k;
    __m512 acc[2];
    float offset = 0.0f;
    acc[0] = acc[1] = _mm512_setzero_ps();
    for (g = 0; g < x->n_groups; g++, b += 4 + G / 2, xq += G) {
        __m512i isum = aq__int4_step_avx512(b + 4, xq);
        __m128 dm = aq__group_header(b);
        for (k = 64; k < G; k += 64) isum = _mm512_add_epi32(isum, aq__int4_step_avx512(b + 4 + k / 2, xq + k));
        acc[g & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(_mm_cvtss_f32(dm) * x->scale[g]), acc[g & 1]);
        offset += _mm_cvtss_f32(_mm_movehdup_ps(dm)) * x->sum[g];
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) + offset;
}
#endif

static aq__row_dot_x8_fn aq__row_dot_x8_for(int64_t group, int simd) {
#if AQ__X86
    if (simd >= AQ__SIMD_AVX512 && group % 64 == 0) return aq__dot_int4_x8_avx512;
    if (simd >= AQ__SIMD_AVX2) return aq__dot_int4_x8_avx2;
#endif
    (void)group; (void)simd;
    return aq__dot_int4_x8_ref;
}

/* OVP rows against int8 activations, with the same shape as the int4 kernels:
       dot(w, x) = sum_g |d_g| * sx_g * <v_g, xq_g> + m_g * sum(x_g)
   where v are the decoded pair values (|v| <= 192).  The SIMD kernels decode 32 bytes (64
   values) per 256-bit step: per nibble a pshufb in the normal and in the outlier magnitude table,
   the outlier one where the partner nibble is 1000b.  Magnitudes reach 192, beyond int8, so they
   are the unsigned operand of maddubs / dpbusd and the codes' signs go onto x instead.  A pair
   holds at most one outlier and its victim is 0, so maddubs's 16-bit pair sums (at most
   192 * 127) never saturate. */
static float aq__dot_ovp_x8_ref(const void *row, const aq__x8 *x) {
    const uint8_t *b = (const uint8_t *)row;
    const int8_t *xq = x->q;
    int64_t G = x->group, g, j;
    float sum = 0.0f;
    for (g = 0; g < x->n_groups; g++, b += 4 + G / 2, xq += G) {
        uint16_t dh = aq__rd16(b);
        int32_t isum = 0;
        for (j = 0; j < G / 2; j++) {
            int v0, v1;
            aq__ovp_pair(dh >> 15, b[4 + j], &v0, &v1);
            isum += v0 * xq[2 * j] + v1 * xq[2 * j + 1];
        }
        sum += aq_f16_to_f32((uint16_t)(dh & 0x7fff)) * x->scale[g] * (float)isum + aq_f16_to_f32(aq__rd16(b + 2)) * x->sum[g];
    }
    return sum;
}

#if AQ__X86
/* 64 values: v = 32 code bytes (16 per 128-bit lane), x0 = x[0..31], x1 = x[32..63].  Each
   128-bit lane of the result sums the values of its lane's 16 bytes. */
AQ__AVX2 static __m256i aq__ovp_step_avx2(__m256i v, __m256i x0, __m256i x1, __m256i norm, __m256i out) {
    const __m256i m15 = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    __m256i lo = _mm256_and_si256(v, m15), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m15);
    __m256i mag0 = _mm256_blendv_epi8(_mm256_shuffle_epi8(norm, lo), _mm256_shuffle_epi8(out, lo), _mm256_cmpeq_epi8(hi, eight));
    __m256i mag1 = _mm256_blendv_epi8(_mm256_shuffle_epi8(norm, hi), _mm256_shuffle_epi8(out, hi), _mm256_cmpeq_epi8(lo, eight));
    /* unpacking puts the pairs back in element order within each lane: the low half of lane L
       holds values 32L..32L+15, the high half 32L+16..32L+31; x's lanes are regrouped to match */
    __m256i ma = _mm256_unpacklo_epi8(mag0, mag1), mb = _mm256_unpackhi_epi8(mag0, mag1);
    /* a nibble shifted to the top of its byte is negative exactly when its sign bit is set; it
       is 0 only for code 0000b, whose value is 0 anyway */
    __m256i sa = _mm256_slli_epi16(_mm256_unpacklo_epi8(lo, hi), 4), sb = _mm256_slli_epi16(_mm256_unpackhi_epi8(lo, hi), 4);
    __m256i xa = _mm256_sign_epi8(_mm256_permute2x128_si256(x0, x1, 0x20), sa);
    __m256i xb = _mm256_sign_epi8(_mm256_permute2x128_si256(x0, x1, 0x31), sb);
    return _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(ma, xa), ones), _mm256_madd_epi16(_mm256_maddubs_epi16(mb, xb), ones));
}

AQ__AVX2 static float aq__dot_ovp_x8_avx2(const void *row, const aq__x8 *x) {
    const __m256i norm[2] = {aq__ovp_table_avx2(0, 0), aq__ovp_table_avx2(1, 0)}, out[2] = {aq__ovp_table_avx2(0, 1), aq__ovp_table_avx2(1, 1)};
    const uint8_t *b = (const uint8_t *)row;
    const int8_t *xq = x->q;
    int64_t G = x->group, g, k;
    __m256 acc = _mm256_setzero_ps();
    float offset = 0.0f;
    if (G == 32) { /* two groups per step, one per 128-bit lane */
        for (g = 0; g < x->n_groups; g += 2, b += 2 * 20, xq += 64) {
            int two = g + 1 < x->n_groups;
            unsigned f0 = aq__rd16(b) >> 15, f1 = two ? aq__rd16(b + 20) >> 15 : f0;
            __m128 h0 = aq__ovp_header(b), h1 = two ? aq__ovp_header(b + 20) : _mm_setzero_ps();
            __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b + 4))),
                                                two ? _mm_loadu_si128((const __m128i *)(b + 24)) : _mm_setzero_si128(), 1);
            __m256i x0 = _mm256_loadu_si256((const __m256i *)xq), x1 = two ? _mm256_loadu_si256((const __m256i *)(xq + 32)) : _mm256_setzero_si256();
            __m256i nt = f0 == f1 ? norm[f0] : _mm256_blend_epi32(norm[f0], norm[f1], 0xf0);
            __m256i ot = f0 == f1 ? out[f0] : _mm256_blend_epi32(out[f0], out[f1], 0xf0);
            __m256i isum = aq__ovp_step_avx2(v, x0, x1, nt, ot);
            __m256 sc = _mm256_set_m128(_mm_set1_ps(_mm_cvtss_f32(h1) * (two ? x->scale[g + 1] : 0.0f)),
                                        _mm_set1_ps(_mm_cvtss_f32(h0) * x->scale[g]));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sc, acc);
            offset += _mm_cvtss_f32(_mm_movehdup_ps(h0)) * x->sum[g] + (two ? _mm_cvtss_f32(_mm_movehdup_ps(h1)) * x->sum[g + 1] : 0.0f);
        }
        return aq__hsum_avx2(acc) + offset;
    }
    for (g = 0; g < x->n_groups; g++, b += 4 + G / 2) {
        unsigned f = aq__rd16(b) >> 15;
        __m128 h = aq__ovp_header(b);
        __m256i isum = _mm256_setzero_si256();
        for (k = 0; k < G; k += 64, xq += 64)
            isum = _mm256_add_epi32(isum, aq__ovp_step_avx2(_mm256_loadu_si256((const __m256i *)(b + 4 + k / 2)),
                                                            _mm256_loadu_si256((const __m256i *)xq),
                                                            _mm256_loadu_si256((const __m256i *)(xq + 32)), norm[f], out[f]));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(_mm_cvtss_f32(h) * x->scale[g]), acc);
        offset += _mm_cvtss_f32(_mm_movehdup_ps(h)) * x->sum[g];
    }
    return aq__hsum_avx2(acc) + offset;
}

/* 128 values per step: v = 64 code bytes, x0 = x[0..63], x1 = x[64..127].  As in the AVX2 step,
   each 128-bit lane of the result sums its lane's 16 bytes; signs come from a mask that
   negates x, since there is no 512-bit sign instruction. */
AQ__AVX512 static __m512i aq__ovp_step_avx512(__m512i v, __m512i x0, __m512i x1, __m512i norm, __m512i out) {
    const __m512i m15 = _mm512_set1_epi8(15), eight = _mm512_set1_epi8(8), zero = _mm512_setzero_si512();
    __m512i lo = _mm512_and_si512(v, m15), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m15);
    __m512i mag0 = _mm512_mask_blend_epi8(_mm512_cmpeq_epi8_mask(hi, eight), _mm512_shuffle_epi8(norm, lo), _mm512_shuffle_epi8(out, lo));
    __m512i mag1 = _mm512_mask_blend_epi8(_mm512_cmpeq_epi8_mask(lo, eight), _mm512_shuffle_epi8(norm, hi), _mm512_shuffle_epi8(out, hi));
    __m512i ma = _mm512_unpacklo_epi8(mag0, mag1), mb = _mm512_unpackhi_epi8(mag0, mag1);
    __mmask64 na = _mm512_test_epi8_mask(_mm512_unpacklo_epi8(lo, hi), eight), nb = _mm512_test_epi8_mask(_mm512_unpackhi_epi8(lo, hi), eight);
    /* lane L of ma holds values 32L..32L+15 (16-byte chunk 2L of x), of mb chunk 2L+1 */
    __m512i xa = _mm512_shuffle_i64x2(x0, x1, _MM_SHUFFLE(2, 0, 2, 0)), xb = _mm512_shuffle_i64x2(x0, x1, _MM_SHUFFLE(3, 1, 3, 1));
    xa = _mm512_mask_sub_epi8(xa, na, zero, xa);
    xb = _mm512_mask_sub_epi8(xb, nb, zero, xb);
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, ma, xa), mb, xb);
}

/* One group's header: *s = |d| * sx, *m_sum = m * sum(x), and the grid (0xff for flint4, else 0,
   as a mask over 64-bit lanes). */
AQ__AVX512 static __mmask8 aq__ovp_group_avx512(const uint8_t *b, const aq__x8 *x, int64_t g, float *s, float *m_sum) {
    uint32_t h = aq__rd32(b);
    __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(h & 0xffff7fffu)));
    *s = _mm_cvtss_f32(dm) * x->scale[g];
    *m_sum = _mm_cvtss_f32(_mm_movehdup_ps(dm)) * x->sum[g];
    return (__mmask8)(0u - ((h >> 15) & 1u));
}

/* x's values g*G + [0, n) of a step (n < 128 at the end of a row: x is quantized only that far). */
AQ__AVX512 static void aq__ovp_x_tail_avx512(const int8_t *xq, int64_t n, __m512i *x0, __m512i *x1) {
    *x0 = _mm512_maskz_loadu_epi8(n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1), xq);
    *x1 = n > 64 ? _mm512_maskz_loadu_epi8(((__mmask64)1 << (n - 64)) - 1, xq + 64) : _mm512_setzero_si512();
}

/* 128 values per step: one group of 128, two of 64 or four of 32, each 128-bit lane of the step
   taking its group's scale and grid. */
AQ__AVX512 static float aq__dot_ovp_x8_avx512(const void *row, const aq__x8 *x) {
    const __m512i n4 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)aq__ovp_mag[0][0]));
    const __m512i o4 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)aq__ovp_mag[0][1]));
    const __m512i nf = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)aq__ovp_mag[1][0]));
    const __m512i of = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)aq__ovp_mag[1][1]));
    const uint8_t *b = (const uint8_t *)row;
    const int8_t *xq = x->q;
    const int64_t G = x->group, gb = 4 + G / 2, ng = x->n_groups;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    float offset = 0.0f, s0, s1, s2, s3, m0, m1, m2, m3;
    int64_t g;
    if (G == 128) {
        for (g = 0; g < ng; g++, b += gb, xq += 128) {
            __mmask8 f = aq__ovp_group_avx512(b, x, g, &s0, &m0);
            __m512i isum = aq__ovp_step_avx512(_mm512_loadu_si512((const void *)(b + 4)), _mm512_loadu_si512((const void *)xq),
                                               _mm512_loadu_si512((const void *)(xq + 64)), _mm512_mask_mov_epi64(n4, f, nf),
                                               _mm512_mask_mov_epi64(o4, f, of));
            /* even and odd groups accumulate apart: two short dependency chains */
            if (g & 1) acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(s0), acc1);
            else acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(s0), acc0);
            offset += m0;
        }
    } else if (G == 64) {
        for (g = 0; g < ng; g += 2, b += 2 * gb, xq += 128) {
            int two = g + 1 < ng;
            __mmask8 f0 = aq__ovp_group_avx512(b, x, g, &s0, &m0), f1 = two ? aq__ovp_group_avx512(b + gb, x, g + 1, &s1, &m1) : 0;
            __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b + 4))),
                                           two ? _mm256_loadu_si256((const __m256i *)(b + 4 + gb)) : _mm256_setzero_si256(), 1);
            __mmask8 f = (__mmask8)((f0 & 0x0f) | (f1 & 0xf0));
            __m512i x0, x1, isum;
            if (two) { x0 = _mm512_loadu_si512((const void *)xq); x1 = _mm512_loadu_si512((const void *)(xq + 64)); }
            else { x0 = _mm512_loadu_si512((const void *)xq); x1 = _mm512_setzero_si512(); s1 = 0; m1 = 0; }
            isum = aq__ovp_step_avx512(v, x0, x1, _mm512_mask_mov_epi64(n4, f, nf), _mm512_mask_mov_epi64(o4, f, of));
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mask_mov_ps(_mm512_set1_ps(s0), 0xff00, _mm512_set1_ps(s1)), acc0);
            offset += m0 + m1;
        }
    } else {
        const __m512i lane_of = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        for (g = 0; g < ng; g += 4, b += 4 * gb, xq += 128) {
            int64_t k = ng - g < 4 ? ng - g : 4;
            __mmask8 f = (__mmask8)(aq__ovp_group_avx512(b, x, g, &s0, &m0) & 0x03);
            __m512i v = _mm512_inserti32x4(_mm512_setzero_si512(), _mm_loadu_si128((const __m128i *)(b + 4)), 0), x0, x1, isum;
            s1 = s2 = s3 = m1 = m2 = m3 = 0;
            if (k > 1) { f = (__mmask8)(f | (aq__ovp_group_avx512(b + gb, x, g + 1, &s1, &m1) & 0x0c)); v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(b + 4 + gb)), 1); }
            if (k > 2) { f = (__mmask8)(f | (aq__ovp_group_avx512(b + 2 * gb, x, g + 2, &s2, &m2) & 0x30)); v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(b + 4 + 2 * gb)), 2); }
            if (k > 3) { f = (__mmask8)(f | (aq__ovp_group_avx512(b + 3 * gb, x, g + 3, &s3, &m3) & 0xc0)); v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(b + 4 + 3 * gb)), 3); }
            if (k == 4) { x0 = _mm512_loadu_si512((const void *)xq); x1 = _mm512_loadu_si512((const void *)(xq + 64)); }
            else aq__ovp_x_tail_avx512(xq, k * 32, &x0, &x1);
            isum = aq__ovp_step_avx512(v, x0, x1, _mm512_mask_mov_epi64(n4, f, nf), _mm512_mask_mov_epi64(o4, f, of));
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_permutexvar_ps(lane_of, _mm512_castps128_ps512(_mm_setr_ps(s0, s1, s2, s3))), acc0);
            offset += m0 + m1 + m2 + m3;
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + offset;
}
#endif

static aq__row_dot_x8_fn aq__row_dot_ovp_x8_for(int simd) {
#if AQ__X86
    if (simd >= AQ__SIMD_AVX512) return aq__dot_ovp_x8_avx512;
    if (simd >= AQ__SIMD_AVX2) return aq__dot_ovp_x8_avx2;
#endif
    (void)simd;
    return aq__dot_ovp_x8_ref;
}

/* The group size x must be quantized at for a weight type (int4 and OVP), 0 for float kernels. */
static int64_t aq__x8_group(uint32_t type) { return aq__int4_group(type) ? aq__int4_group(type) : aq__ovp_group(type); }

AQ__MAYBE_UNUSED static float aq__dot(const float *a, const float *b, int64_t n, int simd) {
#if AQ__X86
    if (simd >= AQ__SIMD_AVX2) return aq__dot_f32_avx2(a, b, n);
#endif
    (void)simd;
    return aq__dot_f32_ref(a, b, n);
}

/* y += a * x */
AQ__MAYBE_UNUSED static void aq__axpy(float a, const float *x, float *y, int64_t n, int simd) {
    int64_t i;
#if AQ__X86
    if (simd >= AQ__SIMD_AVX2) { aq__axpy_avx2(a, x, y, n); return; }
#endif
    (void)simd;
    for (i = 0; i < n; i++) y[i] += a * x[i];
}

static void aq__rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    float ss = 0.0f;
    int64_t i;
    for (i = 0; i < n; i++) ss += x[i] * x[i];
    ss = 1.0f / sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) out[i] = w[i] * (ss * x[i]);
}

AQ__MAYBE_UNUSED static void aq__softmax(float *x, int64_t n) {
    float max = x[0], sum = 0.0f;
    int64_t i;
    for (i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    for (i = 0; i < n; i++) { x[i] = expf(x[i] - max); sum += x[i]; }
    for (i = 0; i < n; i++) x[i] /= sum;
}

/* GEMV over several weights that read the same input (q,k,v or gate,up): one job, one sync. */
typedef struct {
    const aq_weight *w[3];
    float *out[3];
    const aq__x8 *x8[3];   /* int4 weights: x quantized for their group size */
    int n_w;
    const float *x;
    int simd;
} aq__gemv_job;

static void aq__gemv_task(void *ctx, int64_t begin, int64_t end, int thread) {
    const aq__gemv_job *j = (const aq__gemv_job *)ctx;
    int64_t r, base = 0;
    int k;
    (void)thread;
    for (k = 0; k < j->n_w; k++) {
        const aq_weight *w = j->w[k];
        int64_t lo = begin > base ? begin - base : 0, hi = end - base < w->rows ? end - base : w->rows;
        const uint8_t *data = (const uint8_t *)w->data;
        if (j->x8[k]) {
            aq__row_dot_x8_fn dot = aq__ovp_group(w->type) ? aq__row_dot_ovp_x8_for(j->simd) : aq__row_dot_x8_for(j->x8[k]->group, j->simd);
            for (r = lo; r < hi; r++) j->out[k][r] = dot(data + (size_t)r * w->row_bytes, j->x8[k]);
        } else {
            aq__row_dot_fn dot = aq__row_dot_for(w->type, j->simd);
            for (r = lo; r < hi; r++) j->out[k][r] = dot(data + (size_t)r * w->row_bytes, j->x, w->cols);
        }
        base += w->rows;
    }
}

/* Rows per chunk: about 256 KiB of weights, and at least 4 chunks per thread. */
static int64_t aq__grain(int64_t rows, size_t row_bytes, int n_threads) {
    int64_t g = (int64_t)((256u << 10) / (row_bytes ? row_bytes : 1)), per = (rows + 4 * n_threads - 1) / (4 * n_threads);
    if (g > per) g = per;
    return g < 1 ? 1 : g;
}

/* x8 supplies one aq__x8 per weight (used only by int4 and OVP weights, which all take the same x). */
static void aq__gemv(aq__pool *pool, int simd, int n_w, const aq_weight *const *w, const float *x, float *const *out,
                     aq__x8 *x8) {
    aq__gemv_job j;
    int64_t rows = 0;
    int k, prev;
    memset(&j, 0, sizeof j);
    for (k = 0; k < n_w; k++) {
        int64_t group = aq__x8_group(w[k]->type);
        j.w[k] = w[k]; j.out[k] = out[k]; rows += w[k]->rows;
        if (!group) continue;
        for (prev = 0; prev < k; prev++) /* q, k and v usually share one quantized x */
            if (j.x8[prev] && j.x8[prev]->group == group) j.x8[k] = j.x8[prev];
        if (!j.x8[k]) { aq__x8_quantize(x, w[k]->cols, group, &x8[k]); j.x8[k] = &x8[k]; }
    }
    j.n_w = n_w; j.x = x; j.simd = simd;
    if ((uint64_t)rows * w[0]->row_bytes < (64u << 10)) { aq__gemv_task(&j, 0, rows, 0); return; } /* not worth waking threads */
    aq__pool_run(pool, rows, aq__grain(rows, w[0]->row_bytes, pool ? pool->n_threads : 1), aq__gemv_task, &j);
}

/* GEMM: Y[n][rows] = X[n][cols] * W^T, over tiles of weight rows.  A tile of a non-f32 type is
   expanded into the thread's scratch first; with OpenBLAS each tile is one sgemm call. */
#define AQ__TILE_ROWS 64

/* C[m][n] = A[m][k] * B[n][k]^T (row-major, leading dimensions given): OpenBLAS's sgemm, or a
   plain loop of dot products when built with AQ_NO_BLAS.  Single-threaded: callers split work. */
static void aq__sgemm_nt(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb,
                         float *c, int64_t ldc, int simd) {
#ifndef AQ_NO_BLAS
    (void)simd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0f, a, (int)lda, b, (int)ldb, 0.0f, c, (int)ldc);
#else
    int64_t i, j;
    for (i = 0; i < m; i++)
        for (j = 0; j < n; j++) c[i * ldc + j] = aq__dot(a + i * lda, b + j * ldb, k, simd);
#endif
}

typedef struct {
    const aq_weight *w;
    const float *x;
    float *y;
    int64_t n;
    float *scratch;        /* per thread: AQ__TILE_ROWS * scratch_cols floats */
    int64_t scratch_cols;
    int simd;
} aq__gemm_job;

static void aq__gemm_task(void *ctx, int64_t begin, int64_t end, int thread) {
    const aq__gemm_job *j = (const aq__gemm_job *)ctx;
    const aq_weight *w = j->w;
    int64_t tile, r, K = w->cols;
    for (tile = begin; tile < end; tile++) {
        int64_t r0 = tile * AQ__TILE_ROWS, nr = w->rows - r0 < AQ__TILE_ROWS ? w->rows - r0 : AQ__TILE_ROWS;
        const float *wt;
        if (w->type == AQ_TYPE_F32) wt = (const float *)w->data + r0 * K;
        else {
            float *buf = j->scratch + (size_t)thread * AQ__TILE_ROWS * (size_t)j->scratch_cols;
            for (r = 0; r < nr; r++)
                aq__dequantize_row(w->type, (const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes, buf + r * K, K, j->simd);
            wt = buf;
        }
        aq__sgemm_nt(j->n, nr, K, j->x, K, wt, K, j->y + r0, w->rows, j->simd);
    }
}

static void aq__gemm(aq__pool *pool, int simd, const aq_weight *w, const float *x, int64_t n, float *y,
                     float *scratch, int64_t scratch_cols) {
    aq__gemm_job j;
    int64_t tiles = (w->rows + AQ__TILE_ROWS - 1) / AQ__TILE_ROWS;
    j.w = w; j.x = x; j.y = y; j.n = n; j.scratch = scratch; j.scratch_cols = scratch_cols; j.simd = simd;
    aq__pool_run(pool, tiles, 1, aq__gemm_task, &j);
}

/* Prompt GEMM for int4 weights with int8 activations (AVX-512 VNNI, groups of 64 or 128): the
   faster alternative to expanding int4 tiles to f32 for sgemm.  Each token's x is quantized once
   per matrix, like GEMV's, and every 64 of its values are stored in the lane order of an
   unpacked 64-code step, [0-15, 32-47, 16-31, 48-63].  A task unpacks 4 weight rows into bytes
   once, then walks the tokens 4 at a time: 16 float accumulators, each group adding
   d * sx * dpbusd(codes, x) to them; the offset terms m * sum(x) are added at the end. */
typedef struct {
    const aq_weight *w;
    int64_t group, n, kp, n_groups;     /* kp = n_groups * group */
    const float *x;                     /* [n][cols] */
    int8_t *xq;                         /* [n][kp] */
    float *xs, *xsum;                   /* [n][n_groups] */
    float *y;                           /* [n][rows] */
    char *scratch;                      /* per thread: 4 * (kp + 2 * n_groups * 4) bytes at least */
    size_t scratch_bytes;
} aq__gemm8_job;

static void aq__gemm8_quantize_task(void *ctx, int64_t begin, int64_t end, int thread) {
    const aq__gemm8_job *j = (const aq__gemm8_job *)ctx;
    int64_t t, c, i;
    int8_t tmp[64];
    (void)thread;
    for (t = begin; t < end; t++) {
        aq__x8 x8;
        x8.q = j->xq + t * j->kp; x8.scale = j->xs + t * j->n_groups; x8.sum = j->xsum + t * j->n_groups;
        aq__x8_quantize(j->x + t * j->w->cols, j->w->cols, j->group, &x8);
        for (c = 0; c < j->kp; c += 64) {
            memcpy(tmp, x8.q + c, 64);
            for (i = 0; i < 16; i++) {
                x8.q[c + 16 + i] = tmp[32 + i];
                x8.q[c + 32 + i] = tmp[16 + i];
            }
        }
    }
}

#if AQ__X86
AQ__AVX512 __attribute__((always_inline)) static inline void aq__gemm8_rows(const aq__gemm8_job *j, int64_t r0, uint8_t *q, float *d, float *m, const int64_t G) {
    const aq_weight *w = j->w;
    const int64_t ng = j->n_groups, kp = j->kp;
    const __m256i mask = _mm256_set1_epi8(15);
    int64_t r, t, t0, g, k;
    for (r = 0; r < 4; r++) { /* unpack: rows past the end repeat the last one and are not stored */
        const uint8_t *b = (const uint8_t *)w->data + (size_t)(r0 + r < w->rows ? r0 + r : w->rows - 1) * w->row_bytes;
        for (g = 0; g < ng; g++, b += 4 + G / 2) {
            __m128 dm = aq__group_header(b);
            d[r * ng + g] = _mm_cvtss_f32(dm);
            m[r * ng + g] = _mm_cvtss_f32(_mm_movehdup_ps(dm));
            for (k = 0; k < G; k += 64) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(b + 4 + k / 2));
                _mm256_storeu_si256((__m256i *)(q + r * kp + g * G + k), _mm256_and_si256(v, mask));
                _mm256_storeu_si256((__m256i *)(q + r * kp + g * G + k + 32), _mm256_and_si256(_mm256_srli_epi16(v, 4), mask));
            }
        }
    }
    for (t0 = 0; t0 < j->n; t0 += 4) {
        const int8_t *xt[4];
        const float *st[4];
        __m512 acc[4][4];
#pragma GCC unroll 4
        for (t = 0; t < 4; t++) {
            int64_t tt = t0 + t < j->n ? t0 + t : j->n - 1;
            xt[t] = j->xq + tt * kp;
            st[t] = j->xs + tt * ng;
            for (r = 0; r < 4; r++) acc[r][t] = _mm512_setzero_ps();
        }
        for (g = 0; g < ng; g++) {
            __m512i w0[4], w1[4];
#pragma GCC unroll 4
            for (r = 0; r < 4; r++) {
                w0[r] = _mm512_loadu_si512((const void *)(q + r * kp + g * G));
                w1[r] = G == 128 ? _mm512_loadu_si512((const void *)(q + r * kp + g * G + 64)) : w0[r];
            }
#pragma GCC unroll 4
            for (t = 0; t < 4; t++) {
                __m512i x0 = _mm512_loadu_si512((const void *)(xt[t] + g * G));
                __m512i x1 = G == 128 ? _mm512_loadu_si512((const void *)(xt[t] + g * G + 64)) : x0;
#pragma GCC unroll 4
                for (r = 0; r < 4; r++) {
                    __m512i i = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0[r], x0);
                    if (G == 128) i = _mm512_dpbusd_epi32(i, w1[r], x1);
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_set1_ps(d[r * ng + g] * st[t][g]), acc[r][t]);
                }
            }
        }
        for (r = 0; r < 4 && r0 + r < w->rows; r++)
            for (t = 0; t < 4 && t0 + t < j->n; t++) j->y[(t0 + t) * w->rows + r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
    }
    /* the offsets: y[t][r] += sum_g m[r][g] * sum(x_t, g), one small product for all tokens */
    for (t0 = 0; t0 < j->n; t0 += 64) {
        int64_t nt = j->n - t0 < 64 ? j->n - t0 : 64, nr = w->rows - r0 < 4 ? w->rows - r0 : 4;
        float off[64 * 4];
        aq__sgemm_nt(nt, nr, ng, j->xsum + t0 * ng, ng, m, ng, off, nr, AQ__SIMD_AVX512);
        for (t = 0; t < nt; t++)
            for (r = 0; r < nr; r++) j->y[(t0 + t) * w->rows + r0 + r] += off[t * nr + r];
    }
}

AQ__AVX512 static void aq__gemm8_task(void *ctx, int64_t begin, int64_t end, int thread) {
    const aq__gemm8_job *j = (const aq__gemm8_job *)ctx;
    uint8_t *q = (uint8_t *)j->scratch + (size_t)thread * j->scratch_bytes;
    float *d = (float *)(q + 4 * j->kp), *m = d + 4 * j->n_groups;
    int64_t blk;
    for (blk = begin; blk < end; blk++) {
        if (j->group == 128) aq__gemm8_rows(j, blk * 4, q, d, m, 128);
        else aq__gemm8_rows(j, blk * 4, q, d, m, 64);
    }
}
#endif

/* Returns 0 when it ran, -1 when this CPU or weight needs the f32 path instead. */
static int aq__gemm8(aq__pool *pool, int simd, const aq_weight *w, const float *x, int64_t n, float *y, int8_t *xq, float *xs,
                     float *xsum, char *scratch, size_t scratch_bytes) {
    aq__gemm8_job j;
    int64_t G = aq__int4_group(w->type);
    if (simd < AQ__SIMD_AVX512 || G == 0 || G % 64 != 0 || !xq) return -1;
#if AQ__X86
    j.w = w; j.group = G; j.n = n; j.n_groups = (w->cols + G - 1) / G; j.kp = j.n_groups * G;
    j.x = x; j.xq = xq; j.xs = xs; j.xsum = xsum; j.y = y; j.scratch = scratch; j.scratch_bytes = scratch_bytes;
    aq__pool_run(pool, n, 4, aq__gemm8_quantize_task, &j);
    aq__pool_run(pool, (w->rows + 3) / 4, 4, aq__gemm8_task, &j);
    return 0;
#else
    (void)pool; (void)x; (void)y; (void)xs; (void)xsum; (void)scratch; (void)scratch_bytes;
    return -1;
#endif
}

/* Candidates ranked by value, then by id: the sampler's tokens, Quest's pages. */
typedef struct { float logit; int32_t id; } aq__cand;

static int aq__cand_desc(const void *a, const void *b) {
    const aq__cand *x = (const aq__cand *)a, *y = (const aq__cand *)b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Moves the k largest candidates to the front (unordered): quickselect, O(n) on average. */
static void aq__select_top(aq__cand *c, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        aq__cand pivot = c[lo + (hi - lo) / 2], t;
        int i = lo, j = hi;
        while (i <= j) {
            while (aq__cand_desc(&c[i], &pivot) < 0) i++;
            while (aq__cand_desc(&c[j], &pivot) > 0) j--;
            if (i <= j) { t = c[i]; c[i] = c[j]; c[j] = t; i++; j--; }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

/* ---------------------------------------------------------------------------------------
   Tokenizer.  Owns a copy of the vocabulary (texts, scores, types) and a read-only hash table
   from text to id.  The table is ours rather than stb_ds's because lookups are by (pointer,
   length) of a substring, and stb_ds's lookup macros write to the table, which would make a
   model shared between threads unsafe to tokenize with.
   --------------------------------------------------------------------------------------- */
struct aq_vocab {
    int32_t n;
    char **text;          /* NUL-terminated, into arena */
    uint32_t *len;
    float *score;
    uint8_t *type;
    char *arena;
    int32_t *table;       /* open addressing: id + 1, 0 = empty */
    uint32_t table_mask;
    int32_t byte_token[256];
    int32_t bos, eos, unk;
    int add_bos, add_space_prefix;
};

int32_t aq_token_lookup(const aq_vocab *v, const char *s, size_t n) {
    uint32_t i = aq__hash(s, n) & v->table_mask;
    for (;; i = (i + 1) & v->table_mask) {
        int32_t id = v->table[i] - 1;
        if (id < 0) return -1;
        if (v->len[id] == n && memcmp(v->text[id], s, n) == 0) return id;
    }
}

void aq_vocab_free(aq_vocab *v) {
    if (!v) return;
    AQ_FREE(v->text); AQ_FREE(v->len); AQ_FREE(v->score); AQ_FREE(v->type);
    AQ_FREE(v->arena); AQ_FREE(v->table);
    AQ_FREE(v);
}

static int32_t aq__vocab_id_key(const aq_gguf *g, const char *key, int32_t n, int32_t fallback) {
    int64_t id;
    if (aq_gguf_get_int(g, key, &id) != 1 || id < 0 || id >= n) return fallback;
    return (int32_t)id;
}

aq_vocab *aq_vocab_load(const aq_gguf *g, char *err, size_t err_len) {
    const aq_gguf_kv *tokens = aq_gguf_find_kv(g, "tokenizer.ggml.tokens");
    const aq_gguf_kv *scores = aq_gguf_find_kv(g, "tokenizer.ggml.scores");
    const aq_gguf_kv *types = aq_gguf_find_kv(g, "tokenizer.ggml.token_type");
    const char *path = aq_gguf_path(g);
    aq_str model;
    aq_vocab *v;
    uint64_t total = 0, i;
    uint32_t cap = 1;
    char *p;
    int flag;

    if (aq_gguf_get_str(g, "tokenizer.ggml.model", &model) != 1) {
        aq__err(err, err_len, "%s: missing string key tokenizer.ggml.model", path);
        return NULL;
    }
    if (!aq__str_eq(model, "llama")) {
        aq__err(err, err_len, "%s: tokenizer.ggml.model '%.*s' is not supported (only 'llama', SentencePiece BPE)", path,
                (int)(model.len < 40 ? model.len : 40), model.ptr);
        return NULL;
    }
    if (!tokens || tokens->type != AQ_GGUF_ARRAY || tokens->elem_type != AQ_GGUF_STRING) {
        aq__err(err, err_len, "%s: missing array of strings tokenizer.ggml.tokens", path);
        return NULL;
    }
    if (tokens->count == 0 || tokens->count > (1u << 24)) {
        aq__err(err, err_len, "%s: tokenizer.ggml.tokens has %llu entries (1..16777216 allowed)", path, (unsigned long long)tokens->count);
        return NULL;
    }
    if (scores && (scores->type != AQ_GGUF_ARRAY || scores->count != tokens->count ||
                   (scores->elem_type != AQ_GGUF_F32 && scores->elem_type != AQ_GGUF_F64))) {
        aq__err(err, err_len, "%s: tokenizer.ggml.scores must be %llu floats", path, (unsigned long long)tokens->count);
        return NULL;
    }
    if (types && (types->type != AQ_GGUF_ARRAY || types->count != tokens->count || aq__gguf_scalar_size(types->elem_type) == 0 ||
                  types->elem_type == AQ_GGUF_F32 || types->elem_type == AQ_GGUF_F64)) {
        aq__err(err, err_len, "%s: tokenizer.ggml.token_type must be %llu integers", path, (unsigned long long)tokens->count);
        return NULL;
    }
    v = (aq_vocab *)aq__calloc(1, sizeof *v);
    if (!v) goto oom;
    v->n = (int32_t)tokens->count;
    for (i = 0; i < tokens->count; i++) total += tokens->strs[i].len + 1;
    while (cap < 2 * (uint32_t)v->n) cap <<= 1;
    v->text = (char **)aq__calloc((size_t)v->n, sizeof *v->text);
    v->len = (uint32_t *)aq__calloc((size_t)v->n, sizeof *v->len);
    v->score = (float *)aq__calloc((size_t)v->n, sizeof *v->score);
    v->type = (uint8_t *)aq__calloc((size_t)v->n, 1);
    v->arena = (char *)aq__calloc((size_t)total, 1);
    v->table = (int32_t *)aq__calloc(cap, sizeof *v->table);
    if (!v->text || !v->len || !v->score || !v->type || !v->arena || !v->table) goto oom;
    v->table_mask = cap - 1;
    for (i = 0; i < 256; i++) v->byte_token[i] = -1;
    p = v->arena;
    for (i = 0; i < tokens->count; i++) {
        aq_str s = tokens->strs[i];
        uint32_t h;
        int64_t t = types ? aq_gguf_arr_int(types, i) : (int64_t)AQ_TOKEN_NORMAL;
        if (s.len > 4096) {
            aq__err(err, err_len, "%s: token %llu is %llu bytes long", path, (unsigned long long)i, (unsigned long long)s.len);
            aq_vocab_free(v);
            return NULL;
        }
        memcpy(p, s.ptr, s.len);
        v->text[i] = p; v->len[i] = (uint32_t)s.len;
        p += s.len + 1;
        v->score[i] = scores ? (float)aq_gguf_arr_float(scores, i) : 0.0f;
        v->type[i] = (uint8_t)(t >= AQ_TOKEN_NORMAL && t <= AQ_TOKEN_BYTE ? t : (int64_t)AQ_TOKEN_NORMAL);
        /* insert; a text that appears twice maps to its last id, as in llama.cpp */
        for (h = aq__hash(s.ptr, s.len) & v->table_mask;; h = (h + 1) & v->table_mask) {
            int32_t id = v->table[h] - 1;
            if (id < 0 || (v->len[id] == s.len && !memcmp(v->text[id], s.ptr, s.len))) { v->table[h] = (int32_t)i + 1; break; }
        }
        if (v->type[i] == AQ_TOKEN_BYTE && s.len == 6 && !memcmp(s.ptr, "<0x", 3) && s.ptr[5] == '>') {
            unsigned b;
            char hex[3] = {s.ptr[3], s.ptr[4], 0};
            if (sscanf(hex, "%2x", &b) == 1) v->byte_token[b] = (int32_t)i;
        }
    }
    v->bos = aq__vocab_id_key(g, "tokenizer.ggml.bos_token_id", v->n, v->n > 1 ? 1 : -1);
    v->eos = aq__vocab_id_key(g, "tokenizer.ggml.eos_token_id", v->n, v->n > 2 ? 2 : -1);
    v->unk = aq__vocab_id_key(g, "tokenizer.ggml.unknown_token_id", v->n, 0);
    v->add_bos = aq_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &flag) == 1 ? flag : 1;
    v->add_space_prefix = aq_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &flag) == 1 ? flag : 1;
    return v;
oom:
    aq_vocab_free(v);
    aq__err(err, err_len, "%s: out of memory loading the vocabulary", path);
    return NULL;
}

int32_t aq_vocab_size(const aq_vocab *v) { return v->n; }
int32_t aq_vocab_bos(const aq_vocab *v) { return v->bos; }
int32_t aq_vocab_eos(const aq_vocab *v) { return v->eos; }
int aq_vocab_add_bos(const aq_vocab *v) { return v->add_bos; }
const char *aq_token_text(const aq_vocab *v, int32_t id) { return id >= 0 && id < v->n ? v->text[id] : NULL; }
int aq_token_type(const aq_vocab *v, int32_t id) { return id >= 0 && id < v->n ? v->type[id] : 0; }
float aq_token_score(const aq_vocab *v, int32_t id) { return id >= 0 && id < v->n ? v->score[id] : 0.0f; }

/* Symbols form a linked list over the escaped text; a bigram is a candidate merge of two
   neighbours, valid only while both still have the lengths they had when it was queued. */
typedef struct { int32_t prev, next; uint32_t start, n; } aq__symbol;
typedef struct { float score; int32_t left, right; uint32_t size; } aq__bigram;

static int aq__bigram_before(const aq__bigram *a, const aq__bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void aq__heap_push(aq__bigram **heap, aq__bigram b) {
    ptrdiff_t i = stbds_arrlen(*heap);
    stbds_arrput(*heap, b);
    while (i > 0 && aq__bigram_before(&(*heap)[i], &(*heap)[(i - 1) / 2])) {
        aq__bigram t = (*heap)[i]; (*heap)[i] = (*heap)[(i - 1) / 2]; (*heap)[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

static aq__bigram aq__heap_pop(aq__bigram *heap) {
    aq__bigram top = heap[0];
    ptrdiff_t n = stbds_arrlen(heap) - 1, i = 0;
    heap[0] = heap[n];
    stbds_arrsetlen(heap, n);
    for (;;) {
        ptrdiff_t l = 2 * i + 1, r = l + 1, m = i;
        aq__bigram t;
        if (l < n && aq__bigram_before(&heap[l], &heap[m])) m = l;
        if (r < n && aq__bigram_before(&heap[r], &heap[m])) m = r;
        if (m == i) break;
        t = heap[i]; heap[i] = heap[m]; heap[m] = t;
        i = m;
    }
    return top;
}

static void aq__try_bigram(const aq_vocab *v, const char *text, const aq__symbol *sym, int32_t left, int32_t right,
                           aq__bigram **heap) {
    aq__bigram b;
    int32_t id;
    if (left < 0 || right < 0) return;
    id = aq_token_lookup(v, text + sym[left].start, sym[left].n + sym[right].n);
    if (id < 0) return;
    b.score = v->score[id]; b.left = left; b.right = right; b.size = sym[left].n + sym[right].n;
    aq__heap_push(heap, b);
}

int aq_tokenize(const aq_vocab *v, const char *text, size_t len, int add_bos, int32_t *ids, int cap) {
    static const uint8_t utf8_len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    char *buf;
    aq__symbol *sym;
    aq__bigram *heap = NULL;
    size_t blen = 0, i;
    int32_t n_sym = 0, s;
    int n = 0;
#define AQ__EMIT(id) do { if (n < cap) ids[n] = (id); n++; } while (0)
    if (add_bos && v->bos >= 0) AQ__EMIT(v->bos);
    if (len == 0) return n;
    if (len > (size_t)INT32_MAX / 4) return -1;
    buf = (char *)AQ_MALLOC(3 * len + 3);
    sym = (aq__symbol *)AQ_MALLOC((3 * len + 3) * sizeof *sym);
    if (!buf || !sym) { AQ_FREE(buf); AQ_FREE(sym); return -1; }
    /* SentencePiece escaping: optional leading space, every space becomes U+2581 */
    if (v->add_space_prefix) { memcpy(buf, "\xe2\x96\x81", 3); blen = 3; }
    for (i = 0; i < len; i++) {
        if (text[i] == ' ') { memcpy(buf + blen, "\xe2\x96\x81", 3); blen += 3; }
        else buf[blen++] = text[i];
    }
    /* one symbol per UTF-8 character (a malformed sequence is cut at the end of the text) */
    for (i = 0; i < blen; n_sym++) {
        size_t cl = utf8_len[(uint8_t)buf[i] >> 4];
        if (cl > blen - i) cl = blen - i;
        sym[n_sym].start = (uint32_t)i; sym[n_sym].n = (uint32_t)cl;
        sym[n_sym].prev = n_sym - 1; sym[n_sym].next = i + cl < blen ? n_sym + 1 : -1;
        i += cl;
    }
    for (s = 1; s < n_sym; s++) aq__try_bigram(v, buf, sym, s - 1, s, &heap);
    while (stbds_arrlen(heap) > 0) {
        aq__bigram b = aq__heap_pop(heap);
        aq__symbol *l = &sym[b.left], *r = &sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        aq__try_bigram(v, buf, sym, l->prev, b.left, &heap);
        aq__try_bigram(v, buf, sym, b.left, l->next, &heap);
    }
    /* merges only ever form vocabulary tokens, so a symbol that is not one is a single
       character the vocabulary lacks: it falls back to byte tokens */
    for (s = 0; s != -1; s = sym[s].next) {
        int32_t id = aq_token_lookup(v, buf + sym[s].start, sym[s].n);
        if (id >= 0) { AQ__EMIT(id); continue; }
        for (i = 0; i < sym[s].n; i++) {
            int32_t bt = v->byte_token[(uint8_t)buf[sym[s].start + i]];
            AQ__EMIT(bt >= 0 ? bt : v->unk);
        }
    }
#undef AQ__EMIT
    stbds_arrfree(heap);
    AQ_FREE(buf);
    AQ_FREE(sym);
    return n;
}

int aq_token_to_piece(const aq_vocab *v, int32_t id, char *buf, int cap) {
    const char *t;
    uint32_t i, n = 0;
    if (id < 0 || id >= v->n) return 0;
    t = v->text[id];
    switch (v->type[id]) {
    case AQ_TOKEN_NORMAL:
    case AQ_TOKEN_USER_DEFINED:
        for (i = 0; i < v->len[id]; i++) {
            if (i + 2 < v->len[id] && !memcmp(t + i, "\xe2\x96\x81", 3)) {
                if ((int)n < cap) buf[n] = ' ';
                n++; i += 2;
            } else {
                if ((int)n < cap) buf[n] = t[i];
                n++;
            }
        }
        return (int)n;
    case AQ_TOKEN_BYTE:
        for (i = 0; i < 256; i++)
            if (v->byte_token[i] == id) { if (cap > 0) buf[0] = (char)i; return 1; }
        return 0;
    case AQ_TOKEN_UNKNOWN:
        if (cap >= 3) memcpy(buf, "\xe2\x96\x85", 3); /* what llama.cpp prints for <unk> */
        return 3;
    default:
        return 0; /* control and unused tokens print nothing */
    }
}

/* ---------------------------------------------------------------------------------------
   Model.  Reads the hyper-parameters from the metadata (nothing is assumed that the file can
   say), checks every tensor's presence, type and shape against them, and keeps the weights as
   typed views into the mapping.  Norm vectors are copied to f32 when stored otherwise.
   --------------------------------------------------------------------------------------- */
typedef struct {
    const float *attn_norm, *ffn_norm;
    aq_weight wq, wk, wv, wo, w_gate, w_up, w_down;
} aq__layer;

struct aq_model {
    aq_gguf *gguf;
    aq_vocab *vocab;
    aq_config cfg;
    aq_weight tok_embd, output;
    const float *output_norm;
    aq__layer *layers;
    float **owned;          /* stb_ds array of converted norm vectors */
    uint64_t weight_bytes;
    int simd;
#ifdef AQ_CUDA
    aqc_model *cuda;        /* the weights on the GPU, uploaded by the first CUDA session */
    int cuda_failed;        /* that upload failed; cuda_err says why */
    char cuda_err[256];
    pthread_mutex_t cuda_lock;
#endif
};

void aq_model_free(aq_model *m) {
    ptrdiff_t i;
    if (!m) return;
#ifdef AQ_CUDA
    aqc_model_free(m->cuda);
    pthread_mutex_destroy(&m->cuda_lock);
#endif
    for (i = 0; i < stbds_arrlen(m->owned); i++) AQ_FREE(m->owned[i]);
    stbds_arrfree(m->owned);
    AQ_FREE(m->layers);
    aq_vocab_free(m->vocab);
    aq_gguf_close(m->gguf);
    AQ_FREE(m);
}

const aq_config *aq_model_config(const aq_model *m) { return &m->cfg; }
const aq_vocab *aq_model_vocab(const aq_model *m) { return m->vocab; }
const aq_gguf *aq_model_gguf(const aq_model *m) { return m->gguf; }
uint64_t aq_model_weight_bytes(const aq_model *m) { return m->weight_bytes; }

/* A hyper-parameter: an integer key in [lo, hi]; `fallback` < 0 means required. */
static int aq__hparam(const aq_gguf *g, const char *key, int64_t lo, int64_t hi, int64_t fallback, int32_t *out,
                      char *err, size_t err_len) {
    int64_t v;
    int r = aq_gguf_get_int(g, key, &v);
    if (r == -1) {
        aq__err(err, err_len, "%s: key '%s' has type %s, expected an integer", aq_gguf_path(g), key,
                aq_gguf_type_name(aq_gguf_find_kv(g, key)->type));
        return -1;
    }
    if (r == 0) {
        if (fallback < 0) { aq__err(err, err_len, "%s: missing required key '%s'", aq_gguf_path(g), key); return -1; }
        v = fallback;
    }
    if (v < lo || v > hi) {
        aq__err(err, err_len, "%s: key '%s' = %lld is out of range [%lld, %lld]", aq_gguf_path(g), key, (long long)v,
                (long long)lo, (long long)hi);
        return -1;
    }
    *out = (int32_t)v;
    return 0;
}

static int aq__fparam(const aq_gguf *g, const char *key, double lo, double hi, double fallback, int required, float *out,
                      char *err, size_t err_len) {
    double v;
    int r = aq_gguf_get_float(g, key, &v);
    if (r == -1) { aq__err(err, err_len, "%s: key '%s' is not a number", aq_gguf_path(g), key); return -1; }
    if (r == 0) {
        if (required) { aq__err(err, err_len, "%s: missing required key '%s'", aq_gguf_path(g), key); return -1; }
        v = fallback;
    }
    if (!(v >= lo && v <= hi)) {
        aq__err(err, err_len, "%s: key '%s' = %g is out of range [%g, %g]", aq_gguf_path(g), key, v, lo, hi);
        return -1;
    }
    *out = (float)v;
    return 0;
}

/* The project type (AQ4 or OVP) this file's I8 matrices hold, from the aq.quantization.* keys:
   0 with *type = 0 when the file has no format key, -1 with a message for a format or group size
   this library does not know. */
static int aq__file_quant_type(const aq_gguf *g, uint32_t *type, char *err, size_t err_len) {
    aq_str format;
    int64_t group;
    int aq4, r = aq_gguf_get_str(g, "aq.quantization.format", &format);
    *type = 0;
    if (r == 0) return 0;
    aq4 = r == 1 && aq__str_eq(format, "aq4");
    if (!aq4 && (r != 1 || !aq__str_eq(format, "ovp"))) {
        if (r == 1)
            aq__err(err, err_len, "%s: key 'aq.quantization.format' = '%.*s' is not a format this library reads (aq4, ovp)", aq_gguf_path(g),
                    (int)(format.len < 40 ? format.len : 40), format.ptr);
        else aq__err(err, err_len, "%s: key 'aq.quantization.format' is not a string", aq_gguf_path(g));
        return -1;
    }
    if (aq_gguf_get_int(g, "aq.quantization.group_size", &group) != 1 || !aq_type_aq4(group)) {
        aq__err(err, err_len, "%s: key 'aq.quantization.group_size' is missing or not 32, 64 or 128 (format '%s')", aq_gguf_path(g),
                aq4 ? "aq4" : "ovp");
        return -1;
    }
    *type = aq4 ? aq_type_aq4(group) : aq_type_ovp(group);
    return 0;
}

/* Finds a tensor and checks it is (cols) or (cols, rows) of a CPU type; *type receives the type
   the kernels see (an AQ4 or OVP matrix is stored as I8 bytes). */
static const aq_gguf_tensor *aq__model_tensor(const aq_gguf *g, const char *name, int64_t cols, int64_t rows,
                                              uint32_t *type, char *err, size_t err_len) {
    const aq_gguf_tensor *t = aq_gguf_find_tensor(g, name);
    uint32_t want_dims = rows ? 2 : 1, qtype = 0;
    if (!t) { aq__err(err, err_len, "%s: missing tensor '%s'", aq_gguf_path(g), name); return NULL; }
    *type = t->type;
    if (t->type == AQ_TYPE_I8 && rows && aq__file_quant_type(g, &qtype, err, err_len)) return NULL;
    if (qtype) {
        *type = qtype;
        if (t->n_dims != 2 || t->ne[0] != aq_type_row_bytes(*type, cols) || t->ne[1] != rows) {
            aq__err(err, err_len, "%s: tensor '%s' holds %lld x %lld bytes, expected %lld x %lld for a [%lld, %lld] %s matrix",
                    aq_gguf_path(g), name, (long long)t->ne[0], (long long)t->ne[1], (long long)aq_type_row_bytes(*type, cols),
                    (long long)rows, (long long)cols, (long long)rows, aq_type_name(*type));
            return NULL;
        }
        return t;
    }
    if (!aq_type_cpu_supported(t->type)) {
        aq__err(err, err_len, "%s: tensor '%s' has type %s, which the CPU path does not support (F32, F16, BF16, Q8_0, Q4_0, Q4_1, AQ4, OVP)",
                aq_gguf_path(g), name, aq_type_name(t->type));
        return NULL;
    }
    if (t->n_dims != want_dims || t->ne[0] != cols || (rows && t->ne[1] != rows)) {
        aq__err(err, err_len, "%s: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld] from the hyper-parameters",
                aq_gguf_path(g), name, (long long)t->ne[0], (long long)(t->n_dims > 1 ? t->ne[1] : 1), (long long)cols,
                (long long)(rows ? rows : 1));
        return NULL;
    }
    return t;
}

static int aq__model_weight(aq_model *m, const char *name, int64_t cols, int64_t rows, aq_weight *w, char *err, size_t err_len) {
    const aq_gguf_tensor *t = aq__model_tensor(m->gguf, name, cols, rows, &w->type, err, err_len);
    if (!t) return -1;
    w->rows = rows; w->cols = cols; w->data = t->data; w->name = t->name;
    w->row_bytes = (size_t)aq_type_row_bytes(w->type, cols);
    return 0;
}

static const float *aq__model_norm(aq_model *m, const char *name, int64_t n, char *err, size_t err_len) {
    uint32_t type;
    const aq_gguf_tensor *t = aq__model_tensor(m->gguf, name, n, 0, &type, err, err_len);
    float *copy;
    if (!t) return NULL;
    if (t->type == AQ_TYPE_F32) return (const float *)t->data;
    copy = (float *)aq__calloc((size_t)n, sizeof(float));
    if (!copy || aq__dequantize_row(t->type, t->data, copy, n, m->simd)) {
        AQ_FREE(copy);
        aq__err(err, err_len, "%s: cannot convert tensor '%s'", aq_gguf_path(m->gguf), name);
        return NULL;
    }
    stbds_arrput(m->owned, copy);
    return copy;
}

aq_model *aq_model_load(const char *path, char *err, size_t err_len) {
    aq_model *m;
    aq_config *c;
    aq_gguf *g;
    aq_str arch;
    int32_t vocab_key = 0;
    int l;
    char name[AQ_MAX_NAME + 1];

    g = aq_gguf_open(path, err, err_len);
    if (!g) return NULL;
    m = (aq_model *)aq__calloc(1, sizeof *m);
    if (!m) { aq_gguf_close(g); aq__err(err, err_len, "%s: out of memory", path); return NULL; }
    m->gguf = g;
    m->simd = aq__detect_simd();
#ifdef AQ_CUDA
    pthread_mutex_init(&m->cuda_lock, NULL);
#endif
    c = &m->cfg;
    if (aq_gguf_get_str(g, "general.architecture", &arch) != 1) {
        aq__err(err, err_len, "%s: missing string key general.architecture", path);
        goto fail;
    }
    if (!aq__str_eq(arch, "llama")) {
        aq__err(err, err_len, "%s: architecture '%.*s' is not supported (only 'llama')", path, (int)(arch.len < 40 ? arch.len : 40), arch.ptr);
        goto fail;
    }
    if (aq__hparam(g, "llama.embedding_length", 1, 65536, -1, &c->n_embd, err, err_len) ||
        aq__hparam(g, "llama.block_count", 1, 1024, -1, &c->n_layers, err, err_len) ||
        aq__hparam(g, "llama.feed_forward_length", 1, 1 << 20, -1, &c->n_ff, err, err_len) ||
        aq__hparam(g, "llama.attention.head_count", 1, 1024, -1, &c->n_heads, err, err_len) ||
        aq__hparam(g, "llama.attention.head_count_kv", 1, 1024, c->n_heads, &c->n_kv_heads, err, err_len) ||
        aq__hparam(g, "llama.context_length", 1, 1 << 24, -1, &c->n_ctx_train, err, err_len) ||
        aq__fparam(g, "llama.attention.layer_norm_rms_epsilon", 0.0, 1.0, 1e-5, 1, &c->rms_eps, err, err_len) ||
        aq__fparam(g, "llama.rope.freq_base", 1.0, 1e12, 10000.0, 0, &c->rope_base, err, err_len))
        goto fail;
    if (c->n_embd % c->n_heads != 0) {
        aq__err(err, err_len, "%s: embedding length %d is not a multiple of the head count %d", path, c->n_embd, c->n_heads);
        goto fail;
    }
    if (c->n_heads % c->n_kv_heads != 0) {
        aq__err(err, err_len, "%s: head count %d is not a multiple of the KV head count %d", path, c->n_heads, c->n_kv_heads);
        goto fail;
    }
    c->head_dim = c->n_embd / c->n_heads;
    if (aq__hparam(g, "llama.rope.dimension_count", 2, c->head_dim, c->head_dim, &c->n_rot, err, err_len)) goto fail;
    if (c->n_rot % 2) { aq__err(err, err_len, "%s: llama.rope.dimension_count %d is odd", path, c->n_rot); goto fail; }

    m->vocab = aq_vocab_load(g, err, err_len);
    if (!m->vocab) goto fail;
    c->n_vocab = m->vocab->n;
    if (aq__hparam(g, "llama.vocab_size", 1, 1 << 24, c->n_vocab, &vocab_key, err, err_len)) goto fail;
    if (vocab_key != c->n_vocab) {
        aq__err(err, err_len, "%s: llama.vocab_size is %d but the vocabulary has %d tokens", path, vocab_key, c->n_vocab);
        goto fail;
    }

    if (aq__model_weight(m, "token_embd.weight", c->n_embd, c->n_vocab, &m->tok_embd, err, err_len)) goto fail;
    if (!(m->output_norm = aq__model_norm(m, "output_norm.weight", c->n_embd, err, err_len))) goto fail;
    c->tied_output = aq_gguf_find_tensor(g, "output.weight") == NULL;
    if (c->tied_output) m->output = m->tok_embd;
    else if (aq__model_weight(m, "output.weight", c->n_embd, c->n_vocab, &m->output, err, err_len)) goto fail;

    m->layers = (aq__layer *)aq__calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) { aq__err(err, err_len, "%s: out of memory", path); goto fail; }
    for (l = 0; l < c->n_layers; l++) {
        aq__layer *L = &m->layers[l];
        int64_t q_dim = (int64_t)c->n_heads * c->head_dim, kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
#define AQ__W(field, suffix, cols, rows) \
        (snprintf(name, sizeof name, "blk.%d." suffix ".weight", l), aq__model_weight(m, name, cols, rows, &L->field, err, err_len))
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        if (!(L->attn_norm = aq__model_norm(m, name, c->n_embd, err, err_len))) goto fail;
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        if (!(L->ffn_norm = aq__model_norm(m, name, c->n_embd, err, err_len))) goto fail;
        if (AQ__W(wq, "attn_q", c->n_embd, q_dim) || AQ__W(wk, "attn_k", c->n_embd, kv_dim) ||
            AQ__W(wv, "attn_v", c->n_embd, kv_dim) || AQ__W(wo, "attn_output", q_dim, c->n_embd) ||
            AQ__W(w_gate, "ffn_gate", c->n_embd, c->n_ff) || AQ__W(w_up, "ffn_up", c->n_embd, c->n_ff) ||
            AQ__W(w_down, "ffn_down", c->n_ff, c->n_embd))
            goto fail;
#undef AQ__W
        m->weight_bytes += (uint64_t)(L->wq.row_bytes * L->wq.rows + L->wk.row_bytes * L->wk.rows + L->wv.row_bytes * L->wv.rows +
                                      L->wo.row_bytes * L->wo.rows + L->w_gate.row_bytes * L->w_gate.rows +
                                      L->w_up.row_bytes * L->w_up.rows + L->w_down.row_bytes * L->w_down.rows);
    }
    m->weight_bytes += (uint64_t)(m->output.row_bytes * m->output.rows);
    return m;
fail:
    aq_model_free(m);
    return NULL;
}

/* ---------------------------------------------------------------------------------------
   GPU upload.  The CUDA kernels read int4 codes in AWQ's interleaved nibble order with the
   scales and offsets apart, and every other weight as f16 (kernels/aq_cuda.h has the layout);
   this builds that from the file's tensors, once per model, when the first CUDA session asks.
   The packing is plain C, so the tests check it on machines without a GPU.
   --------------------------------------------------------------------------------------- */

/* Row r of a Q4_1 / AQ4 weight as ceil(cols / group) * group / 8 words (element 8i + order[n] in
   nibble n of word i) and its per-group f16 scales and offsets.  In the file a 32-value
   sub-block is 16 bytes, values 0-15 in the low nibbles and 16-31 in the high ones, so word i of
   a sub-block gathers one nibble half of bytes 0-7 or 8-15. */
AQ__MAYBE_UNUSED static void aq__gpu_pack_int4_row(const aq_weight *w, int64_t r, int64_t group, uint32_t *codes, uint16_t *scales,
                                                   uint16_t *mins) {
    static const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
    int64_t n_groups = (w->cols + group - 1) / group, gi, sb;
    int i, n;
    for (gi = 0; gi < n_groups; gi++) {
        const uint8_t *b = row + gi * (4 + group / 2);
        scales[gi] = aq__rd16(b);
        mins[gi] = aq__rd16(b + 2);
        for (sb = 0; sb < group / 32; sb++) {
            const uint8_t *q = b + 4 + sb * 16;
            for (i = 0; i < 4; i++) {
                const uint8_t *half = q + (i % 2) * 8;
                int shift = (i / 2) * 4;
                uint32_t word = 0;
                for (n = 0; n < 8; n++) word |= (uint32_t)((half[order[n]] >> shift) & 15) << (4 * n);
                codes[(gi * group + sb * 32) / 8 + i] = word;
            }
        }
    }
}

/* Row r of an OVP weight: the pair bytes as they are, ceil(cols / group) * group / 2 of them,
   and the per-group f16 scales (sign bit = grid) and offsets. */
AQ__MAYBE_UNUSED static void aq__gpu_pack_ovp_row(const aq_weight *w, int64_t r, int64_t group, uint8_t *codes, uint16_t *scales,
                                                  uint16_t *mins) {
    const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
    int64_t n_groups = (w->cols + group - 1) / group, gi;
    for (gi = 0; gi < n_groups; gi++) {
        const uint8_t *b = row + gi * (4 + group / 2);
        scales[gi] = aq__rd16(b);
        mins[gi] = aq__rd16(b + 2);
        memcpy(codes + gi * group / 2, b + 4, (size_t)group / 2);
    }
}

/* The GPU's OVP table, [grid][byte][2 values], from the CPU's own pair decoder. */
AQ__MAYBE_UNUSED static void aq__gpu_ovp_table(float *table) {
    int grid, byte, v0, v1;
    for (grid = 0; grid < 2; grid++)
        for (byte = 0; byte < 256; byte++) {
            aq__ovp_pair(grid, (unsigned)byte, &v0, &v1);
            table[(grid * 256 + byte) * 2] = (float)v0;
            table[(grid * 256 + byte) * 2 + 1] = (float)v1;
        }
}

#ifdef AQ_CUDA
static void aq__gpu_weight_free(aqc_weight *d) {
    AQ_FREE((void *)d->data);
    AQ_FREE((void *)d->scales);
    AQ_FREE((void *)d->mins);
    AQ_FREE((void *)d->ovp_table);
    memset(d, 0, sizeof *d);
}

/* The GPU format of a weight type and its group size (0 for f16). */
static int aq__gpu_format(uint32_t type, int64_t *group) {
    if ((*group = aq__int4_group(type)) != 0) return AQC_INT4;
    if ((*group = aq__ovp_group(type)) != 0) return AQC_OVP;
    return AQC_F16;
}

/* n weights that read the same input, stacked by rows, in the GPU layout (host memory, freed with
   aq__gpu_weight_free): int4 or OVP when all of them are that with one group size and f16 is not
   forced, f16 otherwise. */
static int aq__gpu_pack(const aq_weight *const *w, int n, int force_f16, int simd, aqc_weight *d, char *err, size_t err_len) {
    int64_t group = 0, g, rows = 0, cols = w[0]->cols, kp, r, c, done = 0;
    int format = force_f16 ? AQC_F16 : aq__gpu_format(w[0]->type, &group), i;
    uint16_t *scales = NULL, *mins = NULL;
    float *tmp = NULL, *table = NULL;
    void *data;
    for (i = 0; i < n; i++) {
        if (aq__gpu_format(w[i]->type, &g) != format || g != group) format = AQC_F16;
        rows += w[i]->rows;
    }
    if (format == AQC_F16) group = 0;
    kp = group ? (cols + group - 1) / group * group : (cols + 31) / 32 * 32;
    if (group) {
        data = aq__calloc((size_t)(rows * kp / 2), 1);
        scales = (uint16_t *)aq__calloc((size_t)(rows * kp / group), 2);
        mins = (uint16_t *)aq__calloc((size_t)(rows * kp / group), 2);
        if (format == AQC_OVP && (table = (float *)aq__calloc(2 * 256 * 2, sizeof(float))) != NULL) aq__gpu_ovp_table(table);
    } else {
        data = aq__calloc((size_t)(rows * kp), 2);
        tmp = (float *)aq__calloc((size_t)cols, sizeof(float));
    }
    memset(d, 0, sizeof *d);
    d->format = format;
    d->ovp_table = table;
    d->rows = rows;
    d->cols = cols;
    d->cols_padded = kp;
    d->group = group;
    d->data = data;
    d->scales = scales;
    d->mins = mins;
    if (!data || (group && (!scales || !mins)) || (!group && !tmp) || (format == AQC_OVP && !table)) {
        AQ_FREE(tmp);
        aq__gpu_weight_free(d);
        aq__err(err, err_len, "out of memory packing %s for the GPU", w[0]->name);
        return -1;
    }
    for (i = 0; i < n; i++)
        for (r = 0; r < w[i]->rows; r++, done++) {
            if (format == AQC_INT4) {
                aq__gpu_pack_int4_row(w[i], r, group, (uint32_t *)data + done * kp / 8, scales + done * kp / group,
                                      mins + done * kp / group);
            } else if (format == AQC_OVP) {
                aq__gpu_pack_ovp_row(w[i], r, group, (uint8_t *)data + done * kp / 2, scales + done * kp / group,
                                     mins + done * kp / group);
            } else {
                uint16_t *out = (uint16_t *)data + done * kp;
                aq__dequantize_row(w[i]->type, (const uint8_t *)w[i]->data + (size_t)r * w[i]->row_bytes, tmp, cols, simd);
                for (c = 0; c < cols; c++) out[c] = aq_f32_to_f16(tmp[c]);
            }
        }
    AQ_FREE(tmp);
    return 0;
}

/* Packs and uploads into one GPU slot (see aq__gpu_pack). */
static int aq__cuda_upload(const aq_model *m, aqc_model *g, int layer, int slot, const aq_weight *const *w, int n, int force_f16,
                           char *err, size_t err_len) {
    aqc_weight d;
    int rc;
    if (aq__gpu_pack(w, n, force_f16, m->simd, &d, err, err_len)) return -1;
    rc = aqc_model_set_weight(g, layer, slot, &d, err, err_len);
    if (rc) {
        size_t len = err ? strlen(err) : 0;
        if (err && len + 1 < err_len) snprintf(err + len, err_len - len, " (%s)", w[0]->name);
    }
    aq__gpu_weight_free(&d);
    return rc;
}

/* The model's GPU copy, built on first use.  The model is otherwise read-only and shared between
   threads, hence the lock. */
static aqc_model *aq__cuda_model(const aq_model *model, char *err, size_t err_len) {
    aq_model *m = (aq_model *)model;
    pthread_mutex_lock(&m->cuda_lock);
    if (!m->cuda && !m->cuda_failed) {
        const aq_config *c = &m->cfg;
        char *e = m->cuda_err;
        size_t el = sizeof m->cuda_err;
        aqc_config gc;
        aqc_model *g;
        int l, ok;
        gc.n_vocab = c->n_vocab; gc.n_embd = c->n_embd; gc.n_layers = c->n_layers; gc.n_heads = c->n_heads;
        gc.n_kv_heads = c->n_kv_heads; gc.head_dim = c->head_dim; gc.n_rot = c->n_rot; gc.n_ff = c->n_ff;
        gc.rms_eps = c->rms_eps; gc.rope_base = c->rope_base;
        g = aqc_model_new(&gc, e, el);
        ok = g != NULL;
        for (l = 0; ok && l < c->n_layers; l++) {
            const aq__layer *L = &m->layers[l];
            const aq_weight *qkv[3], *gate_up[2], *wo = &L->wo, *down = &L->w_down;
            qkv[0] = &L->wq; qkv[1] = &L->wk; qkv[2] = &L->wv;
            gate_up[0] = &L->w_gate; gate_up[1] = &L->w_up;
            ok = !aq__cuda_upload(m, g, l, AQC_QKV, qkv, 3, 0, e, el) && !aq__cuda_upload(m, g, l, AQC_WO, &wo, 1, 0, e, el) &&
                 !aq__cuda_upload(m, g, l, AQC_GATE_UP, gate_up, 2, 0, e, el) &&
                 !aq__cuda_upload(m, g, l, AQC_DOWN, &down, 1, 0, e, el) &&
                 !aqc_model_set_norm(g, l, AQC_ATTN_NORM, L->attn_norm, e, el) &&
                 !aqc_model_set_norm(g, l, AQC_FFN_NORM, L->ffn_norm, e, el);
        }
        if (ok) {
            const aq_weight *embd = &m->tok_embd, *out = &m->output;
            ok = !aq__cuda_upload(m, g, -1, AQC_TOK_EMBD, &embd, 1, 1, e, el) &&
                 !(c->tied_output ? aqc_model_tie_output(g, e, el) : aq__cuda_upload(m, g, -1, AQC_OUTPUT, &out, 1, 0, e, el)) &&
                 !aqc_model_set_norm(g, -1, AQC_OUTPUT_NORM, m->output_norm, e, el);
        }
        if (ok) m->cuda = g;
        else {
            aqc_model_free(g);
            m->cuda_failed = 1;
        }
    }
    pthread_mutex_unlock(&m->cuda_lock);
    if (!m->cuda) aq__err(err, err_len, "%s", m->cuda_err);
    return m->cuda;
}
#endif

/* ---------------------------------------------------------------------------------------
   Session: KV cache, Quest page selection and the forward pass.

   KV cache.  Paged: page p of a layer holds positions [p*P, (p+1)*P), allocated when its first
   position is written.  One page is, per KV head:
     K    [head_dim][P]  the keys transposed, so one channel of all P keys is contiguous and a
                         page's scores are P-wide vector multiply-adds
     V    [P][head_dim]
   K and V are f32 or f16 (kv_type).  Quest's bounds - per page, KV head and channel, the
   smallest and largest key value as stored, updated on every append - live apart, in chunks of
   AQ__META_PAGES pages laid out [KV head][page][min, max][head_dim]: the selection scans one KV
   head's bounds of consecutive pages as one stream instead of touching every page.  They are
   f16 rounded outwards (min down, max up), so they stay bounds and cost 1/P of the page's K+V
   bytes, as in Quest's cost model.  With quest_bounds = 8 they are int8 codes with an f16 scale
   per 16 values (value = code * scale), also rounded outwards, at 0.56x the bytes: the
   selection reads every page's bounds at every step, and at 32K context that is half of what
   Quest reads.  Only complete pages are ever scored, so those are quantized once, from the
   page's keys, when the page's last slot is written.

   Attention.  Every query reads a list of spans (page, first slot, end slot).  Dense attention
   lists all pages up to the query's position.  With Quest (decode only, from layer
   quest_dense_layers on, once the context holds more than the budget), a selection job first
   scores every complete page per KV head with the upper bound
       U = sum over the KV head's query heads h, over channels i, of max(q_h[i] kmin[i], q_h[i] kmax[i])
   (U >= q.k for every key of the page; computed as two dot products, see aq__bound_coeffs), keeps the budget/P - 1 best (quickselect, not a sort)
   and adds the current page; the query heads of that KV head then read only those pages, each
   page once for all of them.  The window baseline lists the last `window` positions instead.
   Long lists are split across threads and the partial softmaxes merged.
   --------------------------------------------------------------------------------------- */
typedef struct { int32_t page, begin, end; } aq__span;   /* slots [begin, end) of a page */

#define AQ__META_PAGES 64

/* x as f16, rounded towards -inf (down) or +inf (up): the neighbour of the nearest half when
   that one lies on the wrong side of x. */
static uint16_t aq__f16_directed(float x, int up) {
    uint16_t h = aq_f32_to_f16(x);
    float back = aq_f16_to_f32(h);
    if (up ? back >= x : back <= x) return h;
    if (up) return h == 0x8000 ? 0x0001 : (h & 0x8000) ? (uint16_t)(h - 1) : (uint16_t)(h + 1);
    return h == 0x0000 ? 0x8001 : (h & 0x8000) ? (uint16_t)(h + 1) : (uint16_t)(h - 1);
}

/* Bytes of one page's bounds for one KV head: 2 * head_dim f16, or (8 bits) 2 * head_dim int8
   codes then an f16 scale per block of 16 codes. */
static size_t aq__bounds_record_bytes(int bits, int hd) {
    return bits == 8 ? 2 * (size_t)hd + 2 * (size_t)((2 * hd + 15) / 16) : 4 * (size_t)hd;
}

/* A page's box [kmin | kmax] (head_dim each) as 8-bit bounds: block b of 16 values gets the
   smallest f16 scale d with 127 d >= its largest magnitude, and each value the code c with
   c d <= kmin (rounded down) or c d >= kmax (up).  c d is exact in f32 (8 bits times 11), so
   the dequantized box holds the keys' box whatever computes with it.  kernels/aq_cuda.cu's
   aqc__bounds8_page does the same arithmetic in the same order: the GPU's records are these,
   byte for byte (checked). */
static void aq__bounds8_quantize(const float *kmin, const float *kmax, int hd, uint8_t *record) {
    int8_t *codes = (int8_t *)record;
    uint8_t *scales = record + 2 * (size_t)hd;
    int n = 2 * hd, b, i;
    for (b = 0; b * 16 < n; b++) {
        const int end = b * 16 + 16 < n ? b * 16 + 16 : n;
        float amax = 0.0f, d;
        uint16_t dh;
        for (i = b * 16; i < end; i++) {
            float x = fabsf(i < hd ? kmin[i] : kmax[i - hd]);
            amax = x > amax ? x : amax;
        }
        dh = aq__f16_directed(amax / 127.0f, 1);
        if (aq_f16_to_f32(dh) * 127.0f < amax) dh++;   /* the quotient rounded down onto an f16 */
        d = aq_f16_to_f32(dh);
        memcpy(scales + 2 * b, &dh, 2);
        for (i = b * 16; i < end; i++) {
            const int up = i >= hd;
            const float x = up ? kmax[i - hd] : kmin[i];
            float c = 0.0f;
            if (d > 65504.0f) c = up ? 127.0f : -127.0f;   /* keys past 8.3e6 (f32 cache): +-inf, still bounds */
            else if (d > 0.0f) {
                c = up ? ceilf(x / d) : floorf(x / d);
                if (up ? c * d < x : c * d > x) c += up ? 1.0f : -1.0f;
                c = c > 127.0f ? 127.0f : c < -127.0f ? -127.0f : c;   /* 127 d >= |x|: still a bound */
            }
            codes[i] = (int8_t)c;
        }
    }
}

/* The page box a stored record stands for, in f32 (tests and references). */
AQ__MAYBE_UNUSED static void aq__bounds_decode(const uint8_t *record, int bits, int hd, float *kmin, float *kmax) {
    int i;
    for (i = 0; i < 2 * hd; i++) {
        float x = bits == 8 ? (float)((const int8_t *)record)[i] * aq_f16_to_f32(aq__rd16(record + 2 * (size_t)hd + 2 * (i / 16)))
                            : aq_f16_to_f32(aq__rd16(record + 2 * (size_t)i));
        if (i < hd) kmin[i] = x;
        else kmax[i - hd] = x;
    }
}

struct aq_session {
    const aq_model *m;
    aq__pool *pool;
    aq_session_params p;       /* as given, with defaults filled in */
    int n_threads, n_ctx, page_size, n_batch, pos, max_pages;
    char **pages;              /* [n_layers * max_pages], NULL until used */
    size_t kv_elem;            /* 4 (f32) or 2 (f16) */
    size_t page_bytes, v_offset;   /* per page, then per KV head inside */
    uint8_t **meta;            /* [n_layers * meta_chunks] bounds chunks, NULL until used */
    int meta_chunks;
    size_t bounds_bytes;       /* one page's bounds for one KV head (aq__bounds) */
    float *box;                /* [kmin | kmax] of a page being quantized (quest_bounds 8) */
    /* scratch for up to n_batch tokens */
    float *x, *xb, *q, *k, *v, *att_out, *hb, *hb2;
    float *rope;               /* [n_batch][n_rot / 2] (cos, sin) pairs */
    float *att;                /* [n_threads][att_floats] scores and page buffers */
    size_t att_floats;
    float *part;               /* [n_heads * max_splits][head_dim + 2] partial softmax results */
    int max_splits;
    aq__span *spans;           /* [selection lists][max_pages]: per KV head (or query head) */
    aq__cand *cands;           /* [selection lists][max_pages]: page scores */
    float *tile;               /* [n_threads][AQ__TILE_ROWS * tile_cols] GEMM weight tiles */
    int64_t tile_cols;         /* the widest input of any matrix */
    aq__x8 x8[3];              /* int8 activations for int4 weights, one per fused GEMV slot */
    char *x8_mem;
    int8_t *xq;                /* int4 prompt GEMM: [n_batch][tile_cols + 128] quantized inputs */
    float *xs, *xsum;          /* and their [n_batch][tile_cols / 32 + 2] group scales and sums */
    aq_session_stats stats;
    int backend;               /* AQ_BACKEND_* in use */
    char backend_note[512];
    float *step_logits;        /* aq_eval_greedy / aq_eval_sample on the CPU */
#ifdef AQ_CUDA
    aqc_session *cuda;         /* when backend is AQ_BACKEND_CUDA: the forward pass runs there */
#endif
};

aq_session_params aq_session_default_params(void) {
    aq_session_params p;
    memset(&p, 0, sizeof p);
    p.page_size = 16;
    p.n_batch = 256;
    p.kv_type = AQ_KV_F32;
    p.quest_dense_layers = 2;
    return p;
}

void aq_session_free(aq_session *s) {
    int i;
    if (!s) return;
#ifdef AQ_CUDA
    aqc_session_free(s->cuda);
#endif
    AQ_FREE(s->step_logits);
    aq__pool_free(s->pool);
    if (s->pages)
        for (i = 0; i < s->m->cfg.n_layers * s->max_pages; i++) AQ_FREE(s->pages[i]);
    if (s->meta)
        for (i = 0; i < s->m->cfg.n_layers * s->meta_chunks; i++) AQ_FREE(s->meta[i]);
    AQ_FREE(s->pages);
    AQ_FREE(s->meta);
    AQ_FREE(s->box); AQ_FREE(s->x); AQ_FREE(s->xb); AQ_FREE(s->q); AQ_FREE(s->k); AQ_FREE(s->v); AQ_FREE(s->att_out);
    AQ_FREE(s->hb); AQ_FREE(s->hb2); AQ_FREE(s->rope); AQ_FREE(s->att); AQ_FREE(s->part); AQ_FREE(s->spans);
    AQ_FREE(s->cands); AQ_FREE(s->tile); AQ_FREE(s->x8_mem); AQ_FREE(s->xq); AQ_FREE(s->xs); AQ_FREE(s->xsum);
    AQ_FREE(s);
}

/* Moves the session to the GPU when asked and possible; otherwise notes why it stays. */
static void aq__session_pick_backend(aq_session *s) {
    const aq_session_params *p = &s->p;
    s->backend = AQ_BACKEND_CPU;
    if (p->backend != AQ_BACKEND_CUDA) { snprintf(s->backend_note, sizeof s->backend_note, "CPU"); return; }
#ifdef AQ_CUDA
    {
        char name[128], why[200];
        aqc_model *g;
        aqc_session_config gc;
        if (p->window || p->quest_per_head) {
            snprintf(s->backend_note, sizeof s->backend_note, "CPU: the GPU path has no %s",
                     p->window ? "window baseline" : "per-head Quest selection");
            return;
        }
        if (aqc_device_name(name, sizeof name, why, sizeof why)) {
            snprintf(s->backend_note, sizeof s->backend_note, "CPU: %s", why);
            return;
        }
        if (!(g = aq__cuda_model(s->m, why, sizeof why))) {
            snprintf(s->backend_note, sizeof s->backend_note, "CPU: uploading the model to %s failed: %s", name, why);
            return;
        }
        gc.n_ctx = s->n_ctx;
        gc.page_size = s->page_size;
        gc.n_batch = s->n_batch < 512 ? s->n_batch : 512;   /* aqc_eval splits longer inputs */
        gc.quest_budget = p->quest_budget;
        gc.quest_dense_layers = p->quest_dense_layers;
        gc.quest_bounds = p->quest_bounds;
        gc.use_graph = !p->no_cuda_graph;
        if (!(s->cuda = aqc_session_new(g, &gc, why, sizeof why))) {
            snprintf(s->backend_note, sizeof s->backend_note, "CPU: %s: %s", name, why);
            return;
        }
        s->backend = AQ_BACKEND_CUDA;
        snprintf(s->backend_note, sizeof s->backend_note, "CUDA: %s", name);
    }
#else
    snprintf(s->backend_note, sizeof s->backend_note, "CPU: this program was built without AQ_CUDA");
#endif
}

aq_session *aq_session_new(const aq_model *m, const aq_session_params *params, char *err, size_t err_len) {
    aq_session_params p = params ? *params : aq_session_default_params();
    const aq_config *c = &m->cfg;
    aq_session *s;
    size_t nb, q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim, kvh_bytes;
    int i, group = c->n_heads / c->n_kv_heads;
    if (p.n_threads < 0 || p.n_threads > 512) { aq__err(err, err_len, "n_threads %d is out of range [0, 512]", p.n_threads); return NULL; }
    if (p.n_ctx < 0 || p.n_ctx > (1 << 24)) { aq__err(err, err_len, "n_ctx %d is out of range [0, 16777216]", p.n_ctx); return NULL; }
    if (p.page_size < 0 || p.page_size > 4096) { aq__err(err, err_len, "page_size %d is out of range [1, 4096]", p.page_size); return NULL; }
    if (p.n_batch < 0 || p.n_batch > 65536) { aq__err(err, err_len, "n_batch %d is out of range [1, 65536]", p.n_batch); return NULL; }
    if (p.kv_type != AQ_KV_F32 && p.kv_type != AQ_KV_F16) { aq__err(err, err_len, "kv_type %d is neither AQ_KV_F32 nor AQ_KV_F16", p.kv_type); return NULL; }
    if (p.quest_budget < 0 || p.window < 0 || p.quest_dense_layers < 0) {
        aq__err(err, err_len, "quest_budget, window and quest_dense_layers must not be negative");
        return NULL;
    }
    if (p.quest_budget && p.window) { aq__err(err, err_len, "quest_budget and window are alternatives: set one"); return NULL; }
    if (p.quest_bounds != 0 && p.quest_bounds != 8 && p.quest_bounds != 16) {
        aq__err(err, err_len, "quest_bounds %d is neither 8 nor 16 (bits per stored key bound)", p.quest_bounds);
        return NULL;
    }
    if (p.quest_bounds == 0) p.quest_bounds = 16;
    if (p.n_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        p.n_threads = n > 0 ? (int)(n < 512 ? n : 512) : 1;
    }
    if (p.n_ctx == 0) p.n_ctx = c->n_ctx_train;
    if (p.page_size == 0) p.page_size = 16;
    if (p.n_batch == 0) p.n_batch = 256;
    if (p.quest_budget && p.quest_budget < 2 * p.page_size) {
        aq__err(err, err_len, "quest_budget %d is less than two pages of %d tokens", p.quest_budget, p.page_size);
        return NULL;
    }
    s = (aq_session *)aq__calloc(1, sizeof *s);
    if (!s) goto oom;
    s->m = m;
    s->p = p;
    s->n_threads = p.n_threads;
    s->n_ctx = p.n_ctx;
    s->page_size = p.page_size;
    s->n_batch = p.n_batch;
    s->max_pages = (p.n_ctx + p.page_size - 1) / p.page_size;
    s->kv_elem = p.kv_type == AQ_KV_F16 ? 2 : 4;
    kvh_bytes = (size_t)c->head_dim * (size_t)p.page_size * s->kv_elem;
    s->v_offset = (size_t)c->n_kv_heads * kvh_bytes;
    s->page_bytes = 2 * s->v_offset;
    s->meta_chunks = (s->max_pages + AQ__META_PAGES - 1) / AQ__META_PAGES;
    s->bounds_bytes = aq__bounds_record_bytes(p.quest_bounds, c->head_dim);
    s->tile_cols = c->n_ff > c->n_embd ? c->n_ff : c->n_embd;
    if ((int64_t)q_dim > s->tile_cols) s->tile_cols = (int64_t)q_dim;
    s->max_splits = 2 * p.n_threads < 64 ? 2 * p.n_threads : 64;
    /* a thread's attention scratch: one page's scores for `group` heads, their outputs, maxima
       and sums, and a span list */
    s->att_floats = (size_t)group * ((size_t)p.page_size + (size_t)c->head_dim + 2) + 3 * (size_t)s->max_pages + 64;
    nb = (size_t)p.n_batch;
    s->pages = (char **)aq__calloc((size_t)c->n_layers * (size_t)s->max_pages, sizeof(char *));
    s->meta = (uint8_t **)aq__calloc((size_t)c->n_layers * (size_t)s->meta_chunks, sizeof(uint8_t *));
    s->box = (float *)aq__calloc(2 * (size_t)c->head_dim, sizeof(float));
    s->x = (float *)aq__calloc(nb * (size_t)c->n_embd, sizeof(float));
    s->xb = (float *)aq__calloc(nb * (size_t)c->n_embd, sizeof(float));
    s->q = (float *)aq__calloc(nb * q_dim, sizeof(float));
    s->att_out = (float *)aq__calloc(nb * q_dim, sizeof(float));
    s->k = (float *)aq__calloc(nb * kv_dim, sizeof(float));
    s->v = (float *)aq__calloc(nb * kv_dim, sizeof(float));
    s->hb = (float *)aq__calloc(nb * (size_t)c->n_ff, sizeof(float));
    s->hb2 = (float *)aq__calloc(nb * (size_t)c->n_ff, sizeof(float));
    s->rope = (float *)aq__calloc(nb * (size_t)c->n_rot, sizeof(float));
    s->att = (float *)aq__calloc((size_t)p.n_threads * s->att_floats, sizeof(float));
    /* partial results: a decode step's (list, split, head), or a prompt thread's heads */
    s->part = (float *)aq__calloc(((size_t)c->n_heads * (size_t)s->max_splits > (size_t)p.n_threads * (size_t)group
                                       ? (size_t)c->n_heads * (size_t)s->max_splits : (size_t)p.n_threads * (size_t)group) *
                                      (size_t)(c->head_dim + 2), sizeof(float));
    s->spans = (aq__span *)aq__calloc((size_t)c->n_heads * (size_t)s->max_pages, sizeof(aq__span));
    s->cands = (aq__cand *)aq__calloc((size_t)c->n_heads * (size_t)s->max_pages, sizeof(aq__cand));
    s->tile = (float *)aq__calloc((size_t)p.n_threads * AQ__TILE_ROWS * (size_t)s->tile_cols, sizeof(float));
    s->x8_mem = (char *)aq__calloc(3, aq__x8_bytes(s->tile_cols));
    s->xq = (int8_t *)aq__calloc(nb, (size_t)s->tile_cols + 128);
    s->xs = (float *)aq__calloc(nb * (size_t)(s->tile_cols / 32 + 2), sizeof(float));
    s->xsum = (float *)aq__calloc(nb * (size_t)(s->tile_cols / 32 + 2), sizeof(float));
    if (!s->pages || !s->meta || !s->box || !s->x || !s->xb || !s->q || !s->att_out || !s->k || !s->v || !s->hb || !s->hb2 || !s->rope ||
        !s->att || !s->part || !s->spans || !s->cands || !s->tile || !s->x8_mem || !s->xq || !s->xs || !s->xsum)
        goto oom;
    for (i = 0; i < 3; i++) aq__x8_init(&s->x8[i], s->x8_mem + (size_t)i * aq__x8_bytes(s->tile_cols), s->tile_cols);
    s->pool = aq__pool_new(p.n_threads);
    if (!s->pool) { aq_session_free(s); aq__err(err, err_len, "cannot start %d threads", p.n_threads); return NULL; }
    aq__session_pick_backend(s);
    return s;
oom:
    aq_session_free(s);
    aq__err(err, err_len, "out of memory creating a session with n_ctx %d, n_batch %d, %d threads", p.n_ctx, p.n_batch, p.n_threads);
    return NULL;
}

int aq_session_pos(const aq_session *s) { return s->pos; }
int aq_session_backend(const aq_session *s) { return s->backend; }
const char *aq_session_backend_note(const aq_session *s) { return s->backend_note; }
int aq_session_n_ctx(const aq_session *s) { return s->n_ctx; }
int aq_session_n_threads(const aq_session *s) { return s->n_threads; }
void aq_session_reset(aq_session *s) { s->pos = 0; }
void aq_session_get_stats(const aq_session *s, aq_session_stats *out) { *out = s->stats; }
void aq_session_reset_stats(aq_session *s) { memset(&s->stats, 0, sizeof s->stats); }

uint64_t aq_session_kv_bytes(const aq_session *s) {
#ifdef AQ_CUDA
    if (s->cuda) return aqc_session_kv_bytes(s->cuda);
#endif
    uint64_t n = 0;
    int64_t i;
    for (i = 0; i < (int64_t)s->m->cfg.n_layers * s->max_pages; i++) n += s->pages[i] ? s->page_bytes : 0;
    for (i = 0; i < (int64_t)s->m->cfg.n_layers * s->meta_chunks; i++)
        n += s->meta[i] ? AQ__META_PAGES * (uint64_t)s->m->cfg.n_kv_heads * s->bounds_bytes : 0;
    return n;
}

/* Rotates adjacent pairs (x[2i], x[2i+1]) of each head by the angles in rope. */
static void aq__rope(float *x, int n_heads, int head_dim, int n_rot, const float *rope) {
    int h, i;
    for (h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        for (i = 0; i < n_rot / 2; i++) {
            float c = rope[2 * i], sn = rope[2 * i + 1], x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * c - x1 * sn;
            v[2 * i + 1] = x0 * sn + x1 * c;
        }
    }
}

/* ---- pages ---- */

static char *aq__page(const aq_session *s, int layer, int page) { return s->pages[(size_t)layer * s->max_pages + page]; }

/* The bounds of a page for a KV head: kmin[head_dim], then kmax[head_dim], as f16 (quest_bounds
   16) or as aq__bounds8_quantize's record (8). */
static uint8_t *aq__bounds(const aq_session *s, int layer, int page, int kvh) {
    uint8_t *chunk = s->meta[(size_t)layer * s->meta_chunks + page / AQ__META_PAGES];
    return chunk + ((size_t)kvh * AQ__META_PAGES + page % AQ__META_PAGES) * s->bounds_bytes;
}

static int aq__page_alloc(aq_session *s, int pos, char *err, size_t err_len) {
    const size_t chunk_bytes = AQ__META_PAGES * (size_t)s->m->cfg.n_kv_heads * s->bounds_bytes;
    int l, page = pos / s->page_size;
    for (l = 0; l < s->m->cfg.n_layers; l++) {
        char **data = &s->pages[(size_t)l * s->max_pages + page];
        uint8_t **meta = &s->meta[(size_t)l * s->meta_chunks + page / AQ__META_PAGES];
        if ((!*data && !(*data = (char *)aq__calloc(1, s->page_bytes))) ||
            (!*meta && !(*meta = (uint8_t *)aq__calloc(1, chunk_bytes)))) {
            aq__err(err, err_len, "out of memory growing the KV cache to %d tokens", pos + 1);
            return -1;
        }
    }
    return 0;
}

/* Stores one position's keys and values (all KV heads) and updates the page's bounds: f16 ones
   on every append, int8 ones once the page is complete. */
static void aq__kv_append(aq_session *s, int layer, int pos, const float *k, const float *v) {
    const aq_config *c = &s->m->cfg;
    int P = s->page_size, slot = pos % P, hd = c->head_dim, kvh, i;
    char *page = aq__page(s, layer, pos / P);
    for (kvh = 0; kvh < c->n_kv_heads; kvh++) {
        const float *kk = k + (size_t)kvh * hd, *vv = v + (size_t)kvh * hd;
        uint16_t *kmin = (uint16_t *)aq__bounds(s, layer, pos / P, kvh), *kmax = kmin + hd;
        size_t kbase = (size_t)kvh * hd * P, vbase = ((size_t)kvh * P + slot) * hd;
        for (i = 0; i < hd; i++) {
            float key = kk[i];
            if (s->kv_elem == 2) {
                uint16_t kh = aq_f32_to_f16(kk[i]), vh = aq_f32_to_f16(vv[i]);
                memcpy(page + (kbase + (size_t)i * P + slot) * 2, &kh, 2);
                memcpy(page + s->v_offset + (vbase + i) * 2, &vh, 2);
                key = aq_f16_to_f32(kh);   /* bounds of the keys as attention will read them */
            } else {
                ((float *)page)[kbase + (size_t)i * P + slot] = kk[i];
                ((float *)(page + s->v_offset))[vbase + i] = vv[i];
            }
            if (s->p.quest_bounds == 8) continue;
            if (slot == 0 || key < aq_f16_to_f32(kmin[i])) kmin[i] = aq__f16_directed(key, 0);
            if (slot == 0 || key > aq_f16_to_f32(kmax[i])) kmax[i] = aq__f16_directed(key, 1);
        }
        if (s->p.quest_bounds == 8 && slot == P - 1) {   /* the page is complete: its keys' box, quantized */
            float *box = s->box;
            int j;
            for (i = 0; i < hd; i++) {
                box[i] = FLT_MAX;
                box[hd + i] = -FLT_MAX;
                for (j = 0; j < P; j++) {
                    size_t at = kbase + (size_t)i * P + j;
                    float key = s->kv_elem == 2 ? aq_f16_to_f32(aq__rd16(page + 2 * at)) : ((const float *)page)[at];
                    box[i] = key < box[i] ? key : box[i];
                    box[hd + i] = key > box[hd + i] ? key : box[hd + i];
                }
            }
            aq__bounds8_quantize(box, box + hd, hd, (uint8_t *)kmin);
        }
    }
}

/* ---- page kernels: scalar references and AVX2 twins ---- */

/* scores[h][j] = scale * q_h . key_j for the P keys of a page (Kt: [hd][P], f32 or f16). */
static void aq__page_scores_ref(const void *kt, size_t elem, const float *q, int nh, int hd, int P, float scale, float *scores) {
    int h, i, j;
    for (h = 0; h < nh; h++)
        for (j = 0; j < P; j++) {
            float sum = 0.0f;
            for (i = 0; i < hd; i++) {
                size_t at = (size_t)i * P + j;
                sum += q[h * hd + i] * (elem == 2 ? aq_f16_to_f32(aq__rd16((const uint8_t *)kt + 2 * at)) : ((const float *)kt)[at]);
            }
            scores[h * P + j] = sum * scale;
        }
}

/* out_h += sum_j w[h][j] * V[j] over slots [begin, end) (V: [P][hd], f32 or f16). */
static void aq__page_values_ref(const void *v, size_t elem, const float *w, int nh, int hd, int P, int begin, int end, float *out) {
    int h, i, j;
    for (j = begin; j < end; j++)
        for (i = 0; i < hd; i++) {
            size_t at = (size_t)j * hd + i;
            float val = elem == 2 ? aq_f16_to_f32(aq__rd16((const uint8_t *)v + 2 * at)) : ((const float *)v)[at];
            for (h = 0; h < nh; h++) out[h * hd + i] += w[h * P + j] * val;
        }
}

/* Quest's bound of a page for nh query heads, as defined (the tests' reference for the faster
   form below): sum_h sum_i max(q_h[i] kmin[i], q_h[i] kmax[i]). */
AQ__MAYBE_UNUSED static float aq__page_bound_ref(const float *kmin, const float *kmax, const float *q, int nh, int hd) {
    float sum = 0.0f;
    int h, i;
    for (h = 0; h < nh; h++)
        for (i = 0; i < hd; i++) {
            float a = q[h * hd + i] * kmin[i], b = q[h * hd + i] * kmax[i];
            sum += a > b ? a : b;
        }
    return sum;
}

/* The same bound in two dot products: with c = (kmin + kmax) / 2 and r = (kmax - kmin) / 2 >= 0,
   max(q kmin, q kmax) = q c + |q| r, so summed over the heads U = A . kmax + B . kmin with
   A = (sum_h q_h + sum_h |q_h|) / 2 and B = (sum_h q_h - sum_h |q_h|) / 2, computed once per step:
   a page costs 2 * hd multiply-adds whatever the number of heads sharing it. */
static void aq__bound_coeffs(const float *q, int nh, int hd, float *A, float *B) {
    int h, i;
    for (i = 0; i < hd; i++) {
        float sum = 0.0f, abs_sum = 0.0f;
        for (h = 0; h < nh; h++) { sum += q[h * hd + i]; abs_sum += fabsf(q[h * hd + i]); }
        A[i] = 0.5f * (sum + abs_sum);
        B[i] = 0.5f * (sum - abs_sum);
    }
}

/* The bound of a page from its 8-bit record (aq__bounds8_quantize) and the coefficients
   coef = [B | A] of aq__bound_coeffs: sum_i coef[i] (code[i] scale[i / 16]), each value exact. */
static float aq__bound8_ref(const uint8_t *record, const float *coef, int hd) {
    const int8_t *codes = (const int8_t *)record;
    float sum = 0.0f;
    int i;
    for (i = 0; i < 2 * hd; i++) sum += coef[i] * ((float)codes[i] * aq_f16_to_f32(aq__rd16(record + 2 * (size_t)hd + 2 * (i / 16))));
    return sum;
}

/* x[i] = exp(x[i] - max), returns the sum */
static float aq__exp_sum_ref(float *x, int n, float max) {
    float sum = 0.0f;
    int i;
    for (i = 0; i < n; i++) { x[i] = expf(x[i] - max); sum += x[i]; }
    return sum;
}

#if AQ__X86
AQ__AVX2 static __m256 aq__load8_kv(const void *p, size_t elem, size_t at) {
    return elem == 2 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint8_t *)p + 2 * at)))
                     : _mm256_loadu_ps((const float *)p + at);
}

/* P a multiple of 8: each channel of the page is P/8 vectors of keys, one FMA per query head.
   Heads go 4 at a time with named accumulators, so they stay in registers. */
AQ__AVX2 static void aq__page_scores_avx2(const void *kt, size_t elem, const float *q, int nh, int hd, int P, float scale, float *scores) {
    const __m256 sc = _mm256_set1_ps(scale);
    int h, i, j;
    for (j = 0; j < P; j += 8) {
        for (h = 0; h + 4 <= nh; h += 4) {
            const float *q0 = q + h * hd, *q1 = q0 + hd, *q2 = q1 + hd, *q3 = q2 + hd;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            for (i = 0; i < hd; i++) {
                __m256 k = aq__load8_kv(kt, elem, (size_t)i * P + j);
                a0 = _mm256_fmadd_ps(_mm256_set1_ps(q0[i]), k, a0);
                a1 = _mm256_fmadd_ps(_mm256_set1_ps(q1[i]), k, a1);
                a2 = _mm256_fmadd_ps(_mm256_set1_ps(q2[i]), k, a2);
                a3 = _mm256_fmadd_ps(_mm256_set1_ps(q3[i]), k, a3);
            }
            _mm256_storeu_ps(scores + h * P + j, _mm256_mul_ps(a0, sc));
            _mm256_storeu_ps(scores + (h + 1) * P + j, _mm256_mul_ps(a1, sc));
            _mm256_storeu_ps(scores + (h + 2) * P + j, _mm256_mul_ps(a2, sc));
            _mm256_storeu_ps(scores + (h + 3) * P + j, _mm256_mul_ps(a3, sc));
        }
        for (; h < nh; h++) {
            __m256 a0 = _mm256_setzero_ps();
            for (i = 0; i < hd; i++) a0 = _mm256_fmadd_ps(_mm256_set1_ps(q[h * hd + i]), aq__load8_kv(kt, elem, (size_t)i * P + j), a0);
            _mm256_storeu_ps(scores + h * P + j, _mm256_mul_ps(a0, sc));
        }
    }
}

/* hd a multiple of 8: 8 channels at a time, every slot's value vector feeding 4 heads. */
AQ__AVX2 static void aq__page_values_avx2(const void *v, size_t elem, const float *w, int nh, int hd, int P, int begin, int end, float *out) {
    int h, i, j;
    for (i = 0; i < hd; i += 8) {
        for (h = 0; h + 4 <= nh; h += 4) {
            float *o0 = out + h * hd + i, *o1 = o0 + hd, *o2 = o1 + hd, *o3 = o2 + hd;
            const float *w0 = w + h * P, *w1 = w0 + P, *w2 = w1 + P, *w3 = w2 + P;
            __m256 a0 = _mm256_loadu_ps(o0), a1 = _mm256_loadu_ps(o1), a2 = _mm256_loadu_ps(o2), a3 = _mm256_loadu_ps(o3);
            for (j = begin; j < end; j++) {
                __m256 val = aq__load8_kv(v, elem, (size_t)j * hd + i);
                a0 = _mm256_fmadd_ps(_mm256_set1_ps(w0[j]), val, a0);
                a1 = _mm256_fmadd_ps(_mm256_set1_ps(w1[j]), val, a1);
                a2 = _mm256_fmadd_ps(_mm256_set1_ps(w2[j]), val, a2);
                a3 = _mm256_fmadd_ps(_mm256_set1_ps(w3[j]), val, a3);
            }
            _mm256_storeu_ps(o0, a0); _mm256_storeu_ps(o1, a1); _mm256_storeu_ps(o2, a2); _mm256_storeu_ps(o3, a3);
        }
        for (; h < nh; h++) {
            __m256 a0 = _mm256_loadu_ps(out + h * hd + i);
            for (j = begin; j < end; j++) a0 = _mm256_fmadd_ps(_mm256_set1_ps(w[h * P + j]), aq__load8_kv(v, elem, (size_t)j * hd + i), a0);
            _mm256_storeu_ps(out + h * hd + i, a0);
        }
    }
}

/* AVX-512 twins for P == 16 (one register holds a page's scores) and hd a multiple of 16; the
   broadcasts of q and of the weights fold into the multiply-adds. */
AQ__AVX512 static __m512 aq__load16_kv(const void *p, size_t elem, size_t at) {
    return elem == 2 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint8_t *)p + 2 * at)))
                     : _mm512_loadu_ps((const float *)p + at);
}

/* Multiply-adds take 4 cycles and two can start per cycle, so 8 independent accumulators are
   needed to keep the units busy: 4 heads x 2 halves of the channels (scores), 4 heads x 2
   blocks of 16 channels (values). */
AQ__AVX512 static void aq__page_scores_avx512(const void *kt, size_t elem, const float *q, int nh, int hd, int P, float scale, float *scores) {
    const __m512 sc = _mm512_set1_ps(scale);
    int h, i, half = hd / 2;
    (void)P;
    for (h = 0; h + 4 <= nh; h += 4) {
        const float *q0 = q + h * hd, *q1 = q0 + hd, *q2 = q1 + hd, *q3 = q2 + hd;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
        for (i = 0; i < half; i++) {
            __m512 k = aq__load16_kv(kt, elem, (size_t)i * 16), l = aq__load16_kv(kt, elem, (size_t)(i + half) * 16);
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[i]), k, a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[i]), k, a1);
            a2 = _mm512_fmadd_ps(_mm512_set1_ps(q2[i]), k, a2);
            a3 = _mm512_fmadd_ps(_mm512_set1_ps(q3[i]), k, a3);
            b0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[i + half]), l, b0);
            b1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[i + half]), l, b1);
            b2 = _mm512_fmadd_ps(_mm512_set1_ps(q2[i + half]), l, b2);
            b3 = _mm512_fmadd_ps(_mm512_set1_ps(q3[i + half]), l, b3);
        }
        _mm512_storeu_ps(scores + h * 16, _mm512_mul_ps(_mm512_add_ps(a0, b0), sc));
        _mm512_storeu_ps(scores + (h + 1) * 16, _mm512_mul_ps(_mm512_add_ps(a1, b1), sc));
        _mm512_storeu_ps(scores + (h + 2) * 16, _mm512_mul_ps(_mm512_add_ps(a2, b2), sc));
        _mm512_storeu_ps(scores + (h + 3) * 16, _mm512_mul_ps(_mm512_add_ps(a3, b3), sc));
    }
    for (; h < nh; h++) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (i = 0; i < half; i++) {
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[h * hd + i]), aq__load16_kv(kt, elem, (size_t)i * 16), a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(q[h * hd + i + half]), aq__load16_kv(kt, elem, (size_t)(i + half) * 16), a1);
        }
        if (hd % 2) a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[h * hd + hd - 1]), aq__load16_kv(kt, elem, (size_t)(hd - 1) * 16), a0);
        _mm512_storeu_ps(scores + h * 16, _mm512_mul_ps(_mm512_add_ps(a0, a1), sc));
    }
}

AQ__AVX512 static void aq__page_values_avx512(const void *v, size_t elem, const float *w, int nh, int hd, int P, int begin, int end, float *out) {
    int h, i, j;
    for (i = 0; i + 32 <= hd; i += 32) {
        for (h = 0; h + 4 <= nh; h += 4) {
            float *o0 = out + h * hd + i, *o1 = o0 + hd, *o2 = o1 + hd, *o3 = o2 + hd;
            const float *w0 = w + h * P, *w1 = w0 + P, *w2 = w1 + P, *w3 = w2 + P;
            __m512 a0 = _mm512_loadu_ps(o0), a1 = _mm512_loadu_ps(o1), a2 = _mm512_loadu_ps(o2), a3 = _mm512_loadu_ps(o3);
            __m512 b0 = _mm512_loadu_ps(o0 + 16), b1 = _mm512_loadu_ps(o1 + 16), b2 = _mm512_loadu_ps(o2 + 16), b3 = _mm512_loadu_ps(o3 + 16);
            for (j = begin; j < end; j++) {
                __m512 x = aq__load16_kv(v, elem, (size_t)j * hd + i), y = aq__load16_kv(v, elem, (size_t)j * hd + i + 16);
                __m512 c0 = _mm512_set1_ps(w0[j]), c1 = _mm512_set1_ps(w1[j]), c2 = _mm512_set1_ps(w2[j]), c3 = _mm512_set1_ps(w3[j]);
                a0 = _mm512_fmadd_ps(c0, x, a0); b0 = _mm512_fmadd_ps(c0, y, b0);
                a1 = _mm512_fmadd_ps(c1, x, a1); b1 = _mm512_fmadd_ps(c1, y, b1);
                a2 = _mm512_fmadd_ps(c2, x, a2); b2 = _mm512_fmadd_ps(c2, y, b2);
                a3 = _mm512_fmadd_ps(c3, x, a3); b3 = _mm512_fmadd_ps(c3, y, b3);
            }
            _mm512_storeu_ps(o0, a0); _mm512_storeu_ps(o1, a1); _mm512_storeu_ps(o2, a2); _mm512_storeu_ps(o3, a3);
            _mm512_storeu_ps(o0 + 16, b0); _mm512_storeu_ps(o1 + 16, b1); _mm512_storeu_ps(o2 + 16, b2); _mm512_storeu_ps(o3 + 16, b3);
        }
        for (; h < nh; h++) {
            __m512 a0 = _mm512_loadu_ps(out + h * hd + i), b0 = _mm512_loadu_ps(out + h * hd + i + 16);
            for (j = begin; j < end; j++) {
                __m512 c = _mm512_set1_ps(w[h * P + j]);
                a0 = _mm512_fmadd_ps(c, aq__load16_kv(v, elem, (size_t)j * hd + i), a0);
                b0 = _mm512_fmadd_ps(c, aq__load16_kv(v, elem, (size_t)j * hd + i + 16), b0);
            }
            _mm512_storeu_ps(out + h * hd + i, a0);
            _mm512_storeu_ps(out + h * hd + i + 16, b0);
        }
    }
    for (; i < hd; i += 16)   /* a last block of 16 channels */
        for (h = 0; h < nh; h++) {
            __m512 a0 = _mm512_loadu_ps(out + h * hd + i);
            for (j = begin; j < end; j++) a0 = _mm512_fmadd_ps(_mm512_set1_ps(w[h * P + j]), aq__load16_kv(v, elem, (size_t)j * hd + i), a0);
            _mm512_storeu_ps(out + h * hd + i, a0);
        }
}

/* exp(x) for x <= 0 (softmax arguments): x = n ln2 + r with |r| <= ln2/2, exp(r) by its Taylor
   series to degree 7 (relative error below 1e-7), times 2^n through the exponent bits. */
AQ__AVX2 static __m256 aq__exp_avx2(__m256 x) {
    const __m256 ln2 = _mm256_set1_ps(0.69314718056f), log2e = _mm256_set1_ps(1.44269504089f);
    __m256 n, r, p;
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_fnmadd_ps(n, ln2, x);
    p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)));
}

AQ__AVX2 static float aq__exp_sum_avx2(float *x, int n, float max) {
    __m256 acc = _mm256_setzero_ps(), m = _mm256_set1_ps(max);
    float sum;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = aq__exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = aq__hsum_avx2(acc);
    return sum + aq__exp_sum_ref(x + i, n - i, max);
}

/* The scales of a record (hd / 8 of them, hd a multiple of 8 and at most 256) as f32. */
AQ__AVX2 static void aq__bound8_scales_avx2(const uint8_t *record, int hd, float *scales) {
    int b;
    for (b = 0; b < hd / 8; b += 8) {
        __m128i h = _mm_setzero_si128();
        memcpy(&h, record + 2 * (size_t)hd + 2 * b, 2 * (size_t)(hd / 8 - b < 8 ? hd / 8 - b : 8));
        _mm256_storeu_ps(scales + b, _mm256_cvtph_ps(h));
    }
}

/* head_dim a multiple of 8 (whole blocks of 16 codes): a block's codes widened to f32 and scaled. */
AQ__AVX2 static float aq__bound8_avx2(const uint8_t *record, const float *coef, int hd) {
    float scales[32];
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int b;
    aq__bound8_scales_avx2(record, hd, scales);
    for (b = 0; b < hd / 8; b++) {
        const __m128i c16 = _mm_loadu_si128((const __m128i *)(record + 16 * b));
        const __m256 d = _mm256_set1_ps(scales[b]);
        const __m256 v0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c16)), d);
        const __m256 v1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c16, 8))), d);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(coef + 16 * b), v0, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(coef + 16 * b + 8), v1, a1);
    }
    return aq__hsum_avx2(_mm256_add_ps(a0, a1));
}

/* The same, a block of 16 codes a vector. */
AQ__AVX512 static float aq__bound8_avx512(const uint8_t *record, const float *coef, int hd) {
    float scales[32];
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int b;
    aq__bound8_scales_avx2(record, hd, scales);
    for (b = 0; b + 2 <= hd / 8; b += 2) {
        const __m512 v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(record + 16 * b)))),
                                        _mm512_set1_ps(scales[b]));
        const __m512 v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(record + 16 * b + 16)))),
                                        _mm512_set1_ps(scales[b + 1]));
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(coef + 16 * b), v0, a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(coef + 16 * b + 16), v1, a1);
    }
    if (b < hd / 8) {   /* head_dim 8: one block */
        const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(record + 16 * b)))),
                                       _mm512_set1_ps(scales[b]));
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(coef + 16 * b), v, a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
#endif

/* ---- attention over spans ---- */

typedef struct {
    void (*scores)(const void *kt, size_t elem, const float *q, int nh, int hd, int P, float scale, float *scores);
    void (*values)(const void *v, size_t elem, const float *w, int nh, int hd, int P, int begin, int end, float *out);
    float (*exp_sum)(float *x, int n, float max);
    float (*bound8)(const uint8_t *record, const float *coef, int hd);
} aq__attn_kernels;

static aq__attn_kernels aq__attn_kernels_for(int simd, int P, int hd) {
    aq__attn_kernels k;
    k.scores = aq__page_scores_ref; k.values = aq__page_values_ref; k.exp_sum = aq__exp_sum_ref; k.bound8 = aq__bound8_ref;
#if AQ__X86
    if (simd >= AQ__SIMD_AVX2) {
        if (P % 8 == 0) k.scores = aq__page_scores_avx2;
        if (hd % 8 == 0) k.values = aq__page_values_avx2;
        if (hd % 8 == 0 && hd <= 256) k.bound8 = aq__bound8_avx2;   /* whole blocks; their scales on the stack */
        k.exp_sum = aq__exp_sum_avx2;
    }
    if (simd >= AQ__SIMD_AVX512) {
        if (P == 16) k.scores = aq__page_scores_avx512;
        if (hd % 16 == 0) k.values = aq__page_values_avx512;
        if (hd % 8 == 0 && hd <= 256) k.bound8 = aq__bound8_avx512;
    }
#endif
    (void)simd; (void)P; (void)hd;
    return k;
}

/* Softmax attention of nh query heads (sharing one KV head) over spans, as a partial result:
   res[h] = {max score m, sum of exp(score - m) l, sum of exp(score - m) * v (hd floats)}.
   One pass, page by page (online softmax): a page's scores, then the running maxima, sums and
   outputs rescaled when a maximum grows, then the page's values; the next page is prefetched
   while this one is computed, since pages are separate allocations. */
static void aq__attend(const aq_session *s, const aq__attn_kernels *kn, int layer, int kvh, const float *q, int nh,
                       const aq__span *sp, int n_sp, float *scratch, float *res) {
    const aq_config *c = &s->m->cfg;
    const int P = s->page_size, hd = c->head_dim;
    const size_t kbytes = (size_t)hd * P * s->kv_elem;
    const float scale = 1.0f / sqrtf((float)hd);
    float *sc = scratch, *o = scratch + (size_t)nh * P, *m = o + (size_t)nh * hd, *l = m + nh;
    int i, h, j;
    size_t off;
    memset(o, 0, sizeof(float) * (size_t)nh * hd);
    for (h = 0; h < nh; h++) { m[h] = -FLT_MAX; l[h] = 0.0f; }
    for (i = 0; i < n_sp; i++) {
        const char *page = aq__page(s, layer, sp[i].page);
        if (i + 1 < n_sp) {
            const char *next = aq__page(s, layer, sp[i + 1].page);
            for (off = 0; off < kbytes; off += 64) {
                AQ__PREFETCH(next + (size_t)kvh * kbytes + off);
                AQ__PREFETCH(next + s->v_offset + (size_t)kvh * kbytes + off);
            }
        }
        kn->scores(page + (size_t)kvh * kbytes, s->kv_elem, q, nh, hd, P, scale, sc);
        for (h = 0; h < nh; h++) {
            float *row = sc + (size_t)h * P, max = m[h];
            for (j = sp[i].begin; j < sp[i].end; j++) max = row[j] > max ? row[j] : max;
            if (max > m[h]) {   /* a larger maximum: rescale what was summed so far */
                float f = expf(m[h] - max);
                l[h] *= f;
                for (j = 0; j < hd; j++) o[(size_t)h * hd + j] *= f;
                m[h] = max;
            }
            l[h] += kn->exp_sum(row + sp[i].begin, sp[i].end - sp[i].begin, m[h]);
        }
        kn->values(page + s->v_offset + (size_t)kvh * kbytes, s->kv_elem, sc, nh, hd, P, sp[i].begin, sp[i].end, o);
    }
    for (h = 0; h < nh; h++) {
        float *r = res + (size_t)h * (hd + 2);
        r[0] = m[h];
        r[1] = l[h];
        memcpy(r + 2, o + (size_t)h * hd, sizeof(float) * (size_t)hd);
    }
}

/* Combines n partial results (stride apart) into out = sum / l. */
static void aq__attend_merge(const float *parts, size_t stride, int n, int hd, float *out) {
    float max = -FLT_MAX, l = 0.0f;
    int i, k;
    for (i = 0; i < n; i++) max = parts[i * stride] > max ? parts[i * stride] : max;
    memset(out, 0, sizeof(float) * (size_t)hd);
    for (i = 0; i < n; i++) {
        const float *p = parts + i * stride;
        float f = expf(p[0] - max);
        l += p[1] * f;
        for (k = 0; k < hd; k++) out[k] += p[2 + k] * f;
    }
    for (k = 0; k < hd; k++) out[k] /= l;
}

/* The spans of dense attention for a query at position pos: pages 0..pos/P, the last partial. */
static int aq__dense_spans(const aq_session *s, int first_pos, int pos, aq__span *sp) {
    int P = s->page_size, p, n = 0;
    for (p = first_pos / P; p <= pos / P; p++, n++) {
        sp[n].page = p;
        sp[n].begin = p == first_pos / P ? first_pos % P : 0;
        sp[n].end = p == pos / P ? pos % P + 1 : P;
    }
    return n;
}

typedef struct {
    aq_session *s;
    int layer, pos0, n_tokens, mode;
    int n_spans;      /* decode: spans per list */
    int shared;       /* decode: every list reads s->spans (dense, window) rather than its own (Quest) */
    int splits;       /* decode: pieces per list */
    aq__attn_kernels kn;
} aq__attn_job;

enum { AQ__ATTN_DENSE, AQ__ATTN_QUEST, AQ__ATTN_WINDOW };

/* Quest selection, one list per item (a KV head, or a query head with quest_per_head). */
static void aq__select_task(void *ctx, int64_t begin, int64_t end, int thread) {
    const aq__attn_job *j = (const aq__attn_job *)ctx;
    aq_session *s = j->s;
    const aq_config *c = &s->m->cfg;
    const int P = s->page_size, hd = c->head_dim, group = c->n_heads / c->n_kv_heads, pos = j->pos0;
    const int last = pos / P, keep = s->p.quest_budget / P - 1;
    int64_t item;
    for (item = begin; item < end; item++) {
        int kvh = s->p.quest_per_head ? (int)item / group : (int)item, nh = s->p.quest_per_head ? 1 : group, p;
        const float *q = s->q + (size_t)(s->p.quest_per_head ? item : item * group) * hd;
        aq__cand *cand = s->cands + item * s->max_pages;
        aq__span *sp = s->spans + item * s->max_pages;
        float *BA = s->att + (size_t)thread * s->att_floats;   /* [B | A], matching [kmin | kmax] */
        aq__row_dot_fn dot = aq__row_dot_for(AQ_TYPE_F16, s->m->simd);
        aq__bound_coeffs(q, nh, hd, BA + hd, BA);
        for (p = 0; p < last; p++) {   /* every complete page; the current one is always read */
            const uint8_t *record = aq__bounds(s, j->layer, p, kvh);
            cand[p].id = p;
            cand[p].logit = s->p.quest_bounds == 8 ? j->kn.bound8(record, BA, hd) : dot(record, BA, 2 * hd);
        }
        aq__select_top(cand, last, keep);
        for (p = 0; p < keep; p++) sp[p].page = cand[p].id;
        /* ascending page order: the reads walk memory forwards */
        for (p = 1; p < keep; p++) {
            aq__span t = sp[p];
            int k = p;
            for (; k > 0 && sp[k - 1].page > t.page; k--) sp[k] = sp[k - 1];
            sp[k] = t;
        }
        for (p = 0; p < keep; p++) { sp[p].begin = 0; sp[p].end = P; }
        sp[keep].page = last; sp[keep].begin = 0; sp[keep].end = pos % P + 1;
    }
}

/* Items: (token, KV head) for prompts; (list, split) for a decode step, where a list is a KV
   head's span list (or a query head's, with quest_per_head) cut into `splits` pieces. */
static void aq__attn_task(void *ctx, int64_t begin, int64_t end, int thread) {
    const aq__attn_job *j = (const aq__attn_job *)ctx;
    const aq_session *s = j->s;
    const aq_config *c = &s->m->cfg;
    const int hd = c->head_dim, group = c->n_heads / c->n_kv_heads;
    const size_t q_dim = (size_t)c->n_heads * hd;
    float *scratch = s->att + (size_t)thread * s->att_floats;
    int64_t item;
    for (item = begin; item < end; item++) {
        if (j->n_tokens > 1) {   /* prompt: dense and causal, one token's group of heads */
            int t = (int)(item / c->n_kv_heads), kvh = (int)(item % c->n_kv_heads), h;
            aq__span *sp = (aq__span *)(scratch + s->att_floats - 3 * (size_t)s->max_pages - 8);
            int n_sp = aq__dense_spans(s, 0, j->pos0 + t, sp);
            float *res = s->part + (size_t)thread * (size_t)group * (hd + 2);
            aq__attend(s, &j->kn, j->layer, kvh, s->q + t * q_dim + (size_t)kvh * group * hd, group, sp, n_sp, scratch, res);
            for (h = 0; h < group; h++)
                aq__attend_merge(res + (size_t)h * (hd + 2), 0, 1, hd, s->att_out + t * q_dim + ((size_t)kvh * group + h) * hd);
        } else {
            int list = (int)(item / j->splits), split = (int)(item % j->splits);
            int per_head = j->mode == AQ__ATTN_QUEST && s->p.quest_per_head;
            int kvh = per_head ? list / group : list, nh = per_head ? 1 : group;
            int s0 = (int)((int64_t)j->n_spans * split / j->splits), s1 = (int)((int64_t)j->n_spans * (split + 1) / j->splits);
            const aq__span *sp = j->shared ? s->spans : s->spans + (size_t)list * s->max_pages;
            aq__attend(s, &j->kn, j->layer, kvh, s->q + (size_t)list * nh * hd, nh, sp + s0, s1 - s0, scratch,
                       s->part + (size_t)item * nh * (hd + 2));
        }
    }
}

/* Attention for a decode step at position pos (keys already appended). */
static void aq__attention_decode(aq_session *s, int layer, int pos) {
    const aq_config *c = &s->m->cfg;
    const int P = s->page_size, hd = c->head_dim, group = c->n_heads / c->n_kv_heads;
    aq__attn_job j;
    int lists, nh, list, h;
    double t0 = aq_time_seconds();
    memset(&j, 0, sizeof j);
    j.s = s; j.layer = layer; j.pos0 = pos; j.n_tokens = 1;
    j.kn = aq__attn_kernels_for(s->m->simd, P, hd);
    j.mode = AQ__ATTN_DENSE;
    if (layer >= s->p.quest_dense_layers && s->p.quest_budget && pos + 1 > s->p.quest_budget) j.mode = AQ__ATTN_QUEST;
    if (layer >= s->p.quest_dense_layers && s->p.window && pos + 1 > s->p.window) j.mode = AQ__ATTN_WINDOW;
    if (j.mode == AQ__ATTN_QUEST) {
        lists = s->p.quest_per_head ? c->n_heads : c->n_kv_heads;
        aq__pool_run(s->pool, lists, 1, aq__select_task, &j);
        s->stats.selection_seconds += aq_time_seconds() - t0;
        s->stats.pages_scored += (int64_t)lists * (pos / P);
        j.n_spans = s->p.quest_budget / P;
    } else {
        lists = c->n_kv_heads;
        j.shared = 1;
        j.n_spans = aq__dense_spans(s, j.mode == AQ__ATTN_WINDOW ? pos + 1 - s->p.window : 0, pos, s->spans);
    }
    nh = j.mode == AQ__ATTN_QUEST && s->p.quest_per_head ? 1 : group;
    s->stats.pages_read += (int64_t)lists * j.n_spans;
    /* split long lists so that every thread has work (few KV heads, long context) */
    j.splits = 1;
    while (j.splits * 2 <= s->max_splits && lists * j.splits < 2 * s->n_threads && j.n_spans / (j.splits * 2) >= 8) j.splits *= 2;
    aq__pool_run(s->pool, (int64_t)lists * j.splits, 1, aq__attn_task, &j);
    for (list = 0; list < lists; list++)
        for (h = 0; h < nh; h++)
            aq__attend_merge(s->part + ((size_t)list * j.splits * nh + h) * (hd + 2), (size_t)nh * (hd + 2), j.splits, hd,
                             s->att_out + ((size_t)list * nh + h) * hd);
    s->stats.attention_seconds += aq_time_seconds() - t0;
}

/* out[n][w.rows] = in[n][w.cols] * W^T, as GEMV for one token and GEMM for more. */
static void aq__matmul(aq_session *s, const aq_weight *w, const float *in, int n, float *out) {
    if (n == 1) aq__gemv(s->pool, s->m->simd, 1, &w, in, &out, s->x8);
    else if (aq__gemm8(s->pool, s->m->simd, w, in, n, out, s->xq, s->xs, s->xsum, (char *)s->tile,
                       (size_t)AQ__TILE_ROWS * (size_t)s->tile_cols * sizeof(float)))
        aq__gemm(s->pool, s->m->simd, w, in, n, out, s->tile, s->tile_cols);
}

/* One batch of at most n_batch tokens.  logits: NULL, or rows for every token (all) or the last. */
static int aq__forward_batch(aq_session *s, const int32_t *ids, int n, float *logits, int all, char *err, size_t err_len) {
    const aq_model *m = s->m;
    const aq_config *c = &m->cfg;
    const int dim = c->n_embd, hd = c->head_dim;
    const size_t q_dim = (size_t)c->n_heads * hd, kv_dim = (size_t)c->n_kv_heads * hd;
    int t, l, i, pos0 = s->pos;

    for (t = 0; t < n; t++) {
        int pos = pos0 + t;
        if (aq__page_alloc(s, pos, err, err_len)) return -1;
        aq__dequantize_row(m->tok_embd.type, (const uint8_t *)m->tok_embd.data + (size_t)ids[t] * m->tok_embd.row_bytes,
                           s->x + (size_t)t * dim, dim, m->simd);
        for (i = 0; i < c->n_rot / 2; i++) {
            float angle = (float)pos * (1.0f / powf(c->rope_base, (float)(2 * i) / (float)c->n_rot));
            s->rope[(size_t)t * c->n_rot + 2 * i] = cosf(angle);
            s->rope[(size_t)t * c->n_rot + 2 * i + 1] = sinf(angle);
        }
    }

    for (l = 0; l < c->n_layers; l++) {
        const aq__layer *L = &m->layers[l];
        /* attention block */
        for (t = 0; t < n; t++) aq__rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, L->attn_norm, dim, c->rms_eps);
        if (n == 1) {
            const aq_weight *w[3];
            float *out[3];
            w[0] = &L->wq; w[1] = &L->wk; w[2] = &L->wv;
            out[0] = s->q; out[1] = s->k; out[2] = s->v;
            aq__gemv(s->pool, m->simd, 3, w, s->xb, out, s->x8);
        } else {
            aq__matmul(s, &L->wq, s->xb, n, s->q);
            aq__matmul(s, &L->wk, s->xb, n, s->k);
            aq__matmul(s, &L->wv, s->xb, n, s->v);
        }
        for (t = 0; t < n; t++) {
            aq__rope(s->q + t * q_dim, c->n_heads, hd, c->n_rot, s->rope + (size_t)t * c->n_rot);
            aq__rope(s->k + t * kv_dim, c->n_kv_heads, hd, c->n_rot, s->rope + (size_t)t * c->n_rot);
            aq__kv_append(s, l, pos0 + t, s->k + t * kv_dim, s->v + t * kv_dim);
        }
        if (n == 1) aq__attention_decode(s, l, pos0);
        else {
            aq__attn_job aj;
            memset(&aj, 0, sizeof aj);
            aj.s = s; aj.layer = l; aj.pos0 = pos0; aj.n_tokens = n;
            aj.kn = aq__attn_kernels_for(m->simd, s->page_size, hd);
            aq__pool_run(s->pool, (int64_t)n * c->n_kv_heads, 1, aq__attn_task, &aj);
        }
        aq__matmul(s, &L->wo, s->att_out, n, s->xb);
        for (i = 0; i < n * dim; i++) s->x[i] += s->xb[i];

        /* feed-forward block: down(silu(gate(x)) * up(x)) */
        for (t = 0; t < n; t++) aq__rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, L->ffn_norm, dim, c->rms_eps);
        if (n == 1) {
            const aq_weight *w[2];
            float *out[2];
            w[0] = &L->w_gate; w[1] = &L->w_up;
            out[0] = s->hb; out[1] = s->hb2;
            aq__gemv(s->pool, m->simd, 2, w, s->xb, out, s->x8);
        } else {
            aq__matmul(s, &L->w_gate, s->xb, n, s->hb);
            aq__matmul(s, &L->w_up, s->xb, n, s->hb2);
        }
        for (i = 0; i < n * c->n_ff; i++) s->hb[i] = s->hb[i] / (1.0f + expf(-s->hb[i])) * s->hb2[i];
        aq__matmul(s, &L->w_down, s->hb, n, s->xb);
        for (i = 0; i < n * dim; i++) s->x[i] += s->xb[i];
    }
    s->pos += n;
    if (n == 1) s->stats.decode_steps++;

    if (logits) {
        int first = all ? 0 : n - 1;
        for (t = first; t < n; t++) aq__rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, m->output_norm, dim, c->rms_eps);
        aq__matmul(s, &m->output, s->xb + (size_t)first * dim, n - first, logits);
    }
    return 0;
}

static int aq__eval(aq_session *s, const int32_t *ids, int n, float *logits, int all, char *err, size_t err_len) {
    int done, i;
    if (n <= 0 || !ids) { aq__err(err, err_len, "aq_eval: no tokens given"); return -1; }
    for (i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->m->cfg.n_vocab) {
            aq__err(err, err_len, "token id %d (input %d) is out of range [0, %d)", ids[i], i, s->m->cfg.n_vocab);
            return -1;
        }
    if (n > s->n_ctx - s->pos) {
        aq__err(err, err_len, "context full: %d tokens at position %d exceed n_ctx %d", n, s->pos, s->n_ctx);
        return -1;
    }
    for (done = 0; done < n; done += s->n_batch) {
        int nb = n - done < s->n_batch ? n - done : s->n_batch, last = done + nb == n;
        float *out = all ? (logits ? logits + (size_t)done * s->m->cfg.n_vocab : NULL) : (last ? logits : NULL);
#ifdef AQ_CUDA
        if (s->cuda) {
            if (aqc_eval(s->cuda, ids + done, nb, s->pos, out, all, err, err_len)) return -1;
            s->pos += nb;
            if (nb == 1) s->stats.decode_steps++;
            continue;
        }
#endif
        if (aq__forward_batch(s, ids + done, nb, out, all, err, err_len)) return -1;
    }
    return 0;
}

int aq_eval(aq_session *s, const int32_t *ids, int n, float *logits, char *err, size_t err_len) {
    return aq__eval(s, ids, n, logits, 0, err, err_len);
}

int aq_eval_all(aq_session *s, const int32_t *ids, int n, float *logits, char *err, size_t err_len) {
    return aq__eval(s, ids, n, logits, 1, err, err_len);
}

#ifdef AQ_CUDA
/* What aq__eval checks before a GPU decode step, which does not go through it. */
static int aq__cuda_step_ok(const aq_session *s, int32_t token, char *err, size_t err_len) {
    if (token < 0 || token >= s->m->cfg.n_vocab) {
        aq__err(err, err_len, "token id %d is out of range [0, %d)", token, s->m->cfg.n_vocab);
        return 0;
    }
    if (s->pos >= s->n_ctx) { aq__err(err, err_len, "context full: position %d, n_ctx %d", s->pos, s->n_ctx); return 0; }
    return 1;
}
#endif

int aq_eval_greedy(aq_session *s, int32_t token, int32_t *next, char *err, size_t err_len) {
    int32_t i, best = 0, n_vocab = s->m->cfg.n_vocab;
#ifdef AQ_CUDA
    if (s->cuda) {
        if (!aq__cuda_step_ok(s, token, err, err_len) || aqc_step_greedy(s->cuda, token, s->pos, next, err, err_len)) return -1;
        s->pos++;
        s->stats.decode_steps++;
        return 0;
    }
#endif
    if (!s->step_logits && !(s->step_logits = (float *)aq__calloc((size_t)n_vocab, sizeof(float)))) {
        aq__err(err, err_len, "out of memory");
        return -1;
    }
    if (aq__eval(s, &token, 1, s->step_logits, 0, err, err_len)) return -1;
    for (i = 1; i < n_vocab; i++)
        if (s->step_logits[i] > s->step_logits[best]) best = i;
    *next = best;
    return 0;
}

/* Benchmarks: fills the KV cache of every layer up to n tokens with random keys and values (and
   their bounds) as if a prompt had been evaluated, without paying for the prompt.  The memory
   layout is the real one, so attention costs what it would; the selected pages are arbitrary. */
AQ__MAYBE_UNUSED static int aq__session_fill_random(aq_session *s, int n, uint64_t seed, char *err, size_t err_len) {
    const aq_config *c = &s->m->cfg;
    size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim, i;
    float *k = (float *)aq__calloc(kv_dim, sizeof(float)), *v = (float *)aq__calloc(kv_dim, sizeof(float));
    int pos, l;
#ifdef AQ_CUDA
    if (s->cuda) {
        AQ_FREE(k);
        AQ_FREE(v);
        if (aqc_session_fill_random(s->cuda, n, seed, err, err_len)) return -1;
        s->pos = n;
        return 0;
    }
#endif
    if (!k || !v || n > s->n_ctx) { AQ_FREE(k); AQ_FREE(v); aq__err(err, err_len, "cannot fill %d of %d positions", n, s->n_ctx); return -1; }
    for (pos = 0; pos < n; pos++) {
        if (aq__page_alloc(s, pos, err, err_len)) { AQ_FREE(k); AQ_FREE(v); return -1; }
        for (l = 0; l < c->n_layers; l++) {
            for (i = 0; i < kv_dim; i++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                k[i] = (float)((int64_t)(seed >> 40) - (1 << 23)) / (float)(1 << 23);
                v[i] = (float)((int64_t)((seed >> 16) & 0xffffff) - (1 << 23)) / (float)(1 << 23);
            }
            aq__kv_append(s, l, pos, k, v);
        }
    }
    s->pos = n;
    AQ_FREE(k);
    AQ_FREE(v);
    return 0;
}

/* ---------------------------------------------------------------------------------------
   Sampler.  Owns the parameters, the RNG state (xorshift64*, seeded through splitmix64 so that
   any seed, 0 included, is good) and the recent tokens the repetition penalty looks at.
   --------------------------------------------------------------------------------------- */
struct aq_sampler {
    aq_sampler_params p;
    int32_t n_vocab;
    uint64_t rng;
    int32_t *recent;         /* ring of the last repeat_last_n tokens */
    int n_recent, recent_next;
    aq__cand *cand;
};

aq_sampler_params aq_sampler_default_params(void) {
    aq_sampler_params p;
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.seed = 42;
    return p;
}

void aq_sampler_reset(aq_sampler *s) {
    uint64_t z = s->p.seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    s->rng = (z ^ (z >> 31)) | 1;
    s->n_recent = 0;
    s->recent_next = 0;
}

aq_sampler *aq_sampler_new(const aq_sampler_params *p, int32_t n_vocab) {
    aq_sampler *s;
    if (n_vocab <= 0) return NULL;
    s = (aq_sampler *)aq__calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = p ? *p : aq_sampler_default_params();
    if (s->p.repeat_last_n < 0) s->p.repeat_last_n = 0;
    s->n_vocab = n_vocab;
    s->recent = (int32_t *)aq__calloc((size_t)s->p.repeat_last_n + 1, sizeof(int32_t));
    s->cand = (aq__cand *)aq__calloc((size_t)n_vocab, sizeof(aq__cand));
    if (!s->recent || !s->cand) { aq_sampler_free(s); return NULL; }
    aq_sampler_reset(s);
    return s;
}

void aq_sampler_free(aq_sampler *s) {
    if (!s) return;
    AQ_FREE(s->recent);
    AQ_FREE(s->cand);
    AQ_FREE(s);
}

void aq_sampler_accept(aq_sampler *s, int32_t token) {
    if (s->p.repeat_last_n == 0) return;
    s->recent[s->recent_next] = token;
    s->recent_next = (s->recent_next + 1) % s->p.repeat_last_n;
    if (s->n_recent < s->p.repeat_last_n) s->n_recent++;
}

static float aq__rand01(aq_sampler *s) {
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (float)((s->rng * 0x2545f4914f6cdd1dull) >> 40) * (1.0f / 16777216.0f);
}

/* aq_sampler_sample with its uniform draw r01 in [0, 1) given: a GPU's draw is checked against it
   at draws on either side of r01 (tools/aq-gpu-check), since the two round the softmax apart. */
static int32_t aq__sampler_pick(aq_sampler *s, const float *logits, float r01) {
    aq__cand *c = s->cand;
    int n = s->n_vocab, i, j;
    float max, sum, r;
    for (i = 0; i < n; i++) { c[i].logit = logits[i]; c[i].id = i; }
    if (s->p.repeat_penalty != 1.0f && s->p.repeat_penalty > 0.0f) {
        for (i = 0; i < s->n_recent; i++) {
            int32_t id = s->recent[i];
            int seen = 0;
            for (j = 0; j < i; j++) seen |= s->recent[j] == id;
            if (seen || id < 0 || id >= n) continue;
            c[id].logit = c[id].logit > 0 ? c[id].logit / s->p.repeat_penalty : c[id].logit * s->p.repeat_penalty;
        }
    }
    if (s->p.temperature <= 0.0f) {
        int best = 0;
        for (i = 1; i < n; i++) if (c[i].logit > c[best].logit) best = i;
        return c[best].id;
    }
    for (i = 0; i < n; i++) c[i].logit /= s->p.temperature;
    if (s->p.top_k > 0 && s->p.top_k < n) {
        aq__select_top(c, n, s->p.top_k);
        n = s->p.top_k;
    }
    qsort(c, (size_t)n, sizeof *c, aq__cand_desc);
    /* probabilities (reusing logit) */
    max = c[0].logit;
    sum = 0.0f;
    for (i = 0; i < n; i++) { c[i].logit = expf(c[i].logit - max); sum += c[i].logit; }
    for (i = 0; i < n; i++) c[i].logit /= sum;
    if (s->p.top_p < 1.0f) {
        float cum = 0.0f;
        for (i = 0; i < n; i++) {
            cum += c[i].logit;
            if (cum >= s->p.top_p) { n = i + 1; break; }
        }
    }
    if (s->p.min_p > 0.0f) {
        float floor_p = s->p.min_p * c[0].logit;
        for (i = 1; i < n; i++) if (c[i].logit < floor_p) { n = i; break; }
    }
    sum = 0.0f;
    for (i = 0; i < n; i++) sum += c[i].logit;
    r = r01 * sum;
    for (i = 0; i < n - 1; i++) {
        r -= c[i].logit;
        if (r < 0.0f) break;
    }
    return c[i].id;
}

int32_t aq_sampler_sample(aq_sampler *s, const float *logits) {
    return aq__sampler_pick(s, logits, s->p.temperature <= 0.0f ? 0.0f : aq__rand01(s));
}

/* ---------------------------------------------------------------------------------------
   Generate: the prompt-to-text loop every front end needs, on top of eval and the sampler.
   --------------------------------------------------------------------------------------- */
int aq_eval_sample(aq_session *s, aq_sampler *smp, int32_t token, int32_t *next, char *err, size_t err_len) {
    const int no_penalty = smp->p.repeat_penalty == 1.0f || smp->p.repeat_penalty <= 0.0f;
    if (smp->p.temperature <= 0.0f && no_penalty) return aq_eval_greedy(s, token, next, err, err_len);
#ifdef AQ_CUDA
    if (s->cuda && no_penalty && smp->p.top_k >= 1 && smp->p.top_k <= 1024 && smp->p.top_k <= s->m->cfg.n_vocab &&
        smp->p.temperature > 0.0f) {
        aqc_sampling sp;
        if (!aq__cuda_step_ok(s, token, err, err_len)) return -1;
        sp.temperature = smp->p.temperature;
        sp.top_k = smp->p.top_k;
        sp.top_p = smp->p.top_p;
        sp.min_p = smp->p.min_p;
        if (aqc_step_sample(s->cuda, token, s->pos, &sp, aq__rand01(smp), next, err, err_len)) return -1;
        s->pos++;
        s->stats.decode_steps++;
        return 0;
    }
#endif
    if (!s->step_logits && !(s->step_logits = (float *)aq__calloc((size_t)s->m->cfg.n_vocab, sizeof(float)))) {
        aq__err(err, err_len, "out of memory");
        return -1;
    }
    if (aq_eval(s, &token, 1, s->step_logits, err, err_len)) return -1;
    *next = aq_sampler_sample(smp, s->step_logits);
    return 0;
}

static int aq__emit(const aq_vocab *v, int32_t prev, int32_t id, aq_piece_fn fn, void *user) {
    char buf[512];
    int n = aq_token_to_piece(v, id, buf, (int)sizeof buf), skip = 0;
    if (n > (int)sizeof buf) n = (int)sizeof buf;
    if (prev == v->bos && n > 0 && buf[0] == ' ') skip = 1; /* SentencePiece's space prefix */
    return fn && n - skip > 0 ? fn(buf + skip, (size_t)(n - skip), user) : 0;
}

int aq_generate(aq_session *s, aq_sampler *smp, const char *prompt, int n_predict, aq_piece_fn on_piece, void *user,
                aq_generate_stats *stats, char *err, size_t err_len) {
    const aq_vocab *v = s->m->vocab;
    size_t len = prompt ? strlen(prompt) : 0;
    int n_ids, i, stop = 0;
    int32_t *ids = NULL, prev = -1, tok;
    float *logits = NULL;
    aq_generate_stats st;
    double t0;
    memset(&st, 0, sizeof st);
    n_ids = aq_tokenize(v, prompt ? prompt : "", len, v->add_bos, NULL, 0);
    if (n_ids <= 0) {
        aq__err(err, err_len, n_ids < 0 ? "out of memory tokenizing the prompt" : "empty prompt, and the vocabulary adds no BOS token");
        return -1;
    }
    ids = (int32_t *)aq__calloc((size_t)n_ids, sizeof *ids);
    logits = (float *)aq__calloc((size_t)s->m->cfg.n_vocab, sizeof *logits);
    if (!ids || !logits) { aq__err(err, err_len, "out of memory"); goto fail; }
    aq_tokenize(v, prompt ? prompt : "", len, v->add_bos, ids, n_ids);
    st.n_prompt = n_ids;

    t0 = aq_time_seconds();
    if (aq_eval(s, ids, n_ids, logits, err, err_len)) goto fail;
    st.prefill_seconds = aq_time_seconds() - t0;
    for (i = 0; i < n_ids && !stop; i++) {
        stop = aq__emit(v, prev, ids[i], on_piece, user);
        aq_sampler_accept(smp, ids[i]);
        prev = ids[i];
    }

    t0 = aq_time_seconds();
    /* the first token comes from the prompt's logits, the others from aq_eval_sample, which on
       the GPU keeps the logits on the device */
    tok = aq_sampler_sample(smp, logits);
    for (i = 0; i < n_predict && !stop; i++) {
        if (tok == v->eos || tok == v->bos) break;    /* end of text, or the start of another */
        aq_sampler_accept(smp, tok);
        stop = aq__emit(v, prev, tok, on_piece, user);
        prev = tok;
        st.n_generated++;
        if (aq_session_pos(s) >= aq_session_n_ctx(s)) break;
        if (aq_eval_sample(s, smp, tok, &tok, err, err_len)) goto fail;
    }
    st.decode_seconds = aq_time_seconds() - t0;
    if (stats) *stats = st;
    AQ_FREE(ids);
    AQ_FREE(logits);
    return 0;
fail:
    AQ_FREE(ids);
    AQ_FREE(logits);
    return -1;
}

#endif /* AQ__IMPLEMENTED */
#endif /* AWQ_QUEST_IMPLEMENTATION */
