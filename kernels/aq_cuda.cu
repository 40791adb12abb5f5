/* aq_cuda.cu - awq_quest's GPU path: the decode step and prompt batches of a Llama model on one
   NVIDIA GPU (sm_80 and newer), behind the C ABI in aq_cuda.h.

   What is where, in data-flow order:
     activation prep   RMSNorm / SwiGLU / plain copy of a float vector into the f16 input of the
                       next matrix product, with per-32 chunk scales and sums (see gemv below)
     matrix products   int4 GEMV (AWQ's fp16-mantissa dequantization, 16-byte loads, one pass
                       over the weights), f16 GEMV, and for prompts int4 -> f16 dequantization
                       into a cuBLAS GEMM
     KV cache          paged f16 cache, RoPE + append, per-page key bounds recomputed on append
     Quest             bound scores, top-k page selection (radix select, ties to the lower page),
                       sparse paged attention split over pages (flash-decoding), merge
     step              embedding, the layers, logits, argmax; the decode step can be replayed
                       from a CUDA graph because every kernel reads the position from device
                       memory instead of taking it as an argument. */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cublas_v2.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <type_traits>
#include <vector>

#include "aq_cuda.h"

/* ---- errors ---- */

static void aqc__err(char *err, size_t err_len, const char *fmt, ...) {
    va_list ap;
    if (!err || !err_len) return;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

static int aqc__cuda_failed(cudaError_t e, const char *what, char *err, size_t err_len) {
    if (e == cudaSuccess) return 0;
    aqc__err(err, err_len, "CUDA: %s: %s", what, cudaGetErrorString(e));
    return 1;
}

/* Every CUDA call and every launch is checked (a launch through cudaGetLastError). */
#define AQC_STR2(x) #x
#define AQC_STR(x) AQC_STR2(x)
#define AQC_TRY(call) do { if (aqc__cuda_failed((call), #call " (aq_cuda.cu:" AQC_STR(__LINE__) ")", err, err_len)) return -1; } while (0)
#define AQC_TRY_BLAS(call) do { cublasStatus_t st_ = (call); \
    if (st_ != CUBLAS_STATUS_SUCCESS) { aqc__err(err, err_len, "cuBLAS: %s: status %d", #call, (int)st_); return -1; } } while (0)

/* Positions of the small per-session state block in device memory. */
enum { AQC_TOKEN = 0, AQC_POS = 1, AQC_NEXT = 2, AQC_STATE_INTS = 4 };

/* ---- launches ---- */

/* Launches kernel<<<grid, block, smem, st>>>(args), as a programmatic dependent launch when pdl
   is set (the caller checks that the device is sm_90 or newer). */
template <typename... KArgs, typename... Args>
static cudaError_t aqc__launch(bool pdl, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                               Args... args) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1] = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, ((KArgs)args)...);
}

/* ---- device helpers ---- */

/* A kernel's dynamic shared memory (tests/cuda_emu defines its own). */
#ifndef AQC_DYNAMIC_SHARED
#define AQC_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

/* Programmatic dependent launch, device side.  aqc__let_next_start lets the next kernel of the
   stream be scheduled (its blocks then wait in aqc__wait_prior); aqc__wait_prior returns once the
   kernel before this one has finished and its writes are visible.  A kernel must wait before it
   reads anything an earlier kernel of the step wrote and before it writes anything at all (the
   kernel before may still be reading it).  Without a programmatic launch, and before sm_90, both
   do nothing. */
__device__ __forceinline__ void aqc__let_next_start(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void aqc__wait_prior(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* The start of a kernel with nothing to do before its wait. */
__device__ __forceinline__ void aqc__enter(void) {
    aqc__let_next_start();
    aqc__wait_prior();
}

__device__ __forceinline__ float aqc__warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float aqc__warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block; red holds 32 floats.  Every thread gets the result. */
__device__ float aqc__block_sum(float v, float *red) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = (blockDim.x + 31) / 32;
    v = aqc__warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < n_warps ? red[lane] : 0.0f;
    return aqc__warp_sum(v);
}

__device__ __forceinline__ half2 aqc__bits_to_half2(uint32_t u) {
    half2 h;
    memcpy(&h, &u, 4);
    return h;
}

/* log2 of a power of two: the kernels' group sizes and head dimensions are powers of two, and a
   shift costs one instruction where a division by a variable costs ~20 */
__device__ __forceinline__ int aqc__log2(int power_of_two) { return __ffs(power_of_two) - 1; }

/* (x & mask) | bits as one LOP3: a LOP3 takes one immediate, so with both constants written
   into the code nvcc emits two (the int4 GEMV's SASS, kernels/NOTES.md); as register operands
   of PTX's lop3 they fit one. */
__device__ __forceinline__ uint32_t aqc__and_or(uint32_t x, uint32_t mask, uint32_t bits) {
#ifdef __CUDA_ARCH__
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(x), "r"(mask), "r"(bits));   /* 0xea: (a & b) | c */
    return r;
#else
    return (x & mask) | bits;
#endif
}

/* Tensor cores (sm_80 and newer), for the GQA attention: mma.sync m16n8k16 (f16 in, f32
   accumulated), ldmatrix and cp.async.  tests/cuda_emu defines AQC_EMULATED_MMA and versions of
   its own, written from the PTX ISA's fragment layouts, which are (g = lane / 4, t = lane % 4, a
   register holding two f16, the lower column in its low half):
     A, 16 x 16 row-major: a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]
     B, 16 x 8:            b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
     C and D, 16 x 8, f32: c[0], c[1] = C[g][2t, 2t+1], c[2], c[3] = C[g+8][2t, 2t+1]
   ldmatrix x4: lane l points at row l % 8 of 8 x 8 matrix l / 8 (16 bytes a row) and receives
   r[i] = M_i[g][2t..2t+1]; with .trans, (M_i[2t][g], M_i[2t+1][g]). */
#ifndef AQC_EMULATED_MMA
__device__ __forceinline__ void aqc__mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void aqc__ldmatrix_x4(uint32_t r[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((uint32_t)__cvta_generic_to_shared(row)));
}
__device__ __forceinline__ void aqc__ldmatrix_x4_trans(uint32_t r[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((uint32_t)__cvta_generic_to_shared(row)));
}
__device__ __forceinline__ void aqc__cp_async16(void *smem, const void *global) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((uint32_t)__cvta_generic_to_shared(smem)), "l"(global) : "memory");
}
__device__ __forceinline__ void aqc__cp_async_commit(void) { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void aqc__cp_async_wait(void) { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
#endif

/* ---- activation prep ----
   The GEMV kernels read their input as f16 in chunks of 32 values, each divided by its chunk's
   largest magnitude (so products with 4-bit codes summed in f16 cannot overflow, whatever the
   activations' range), plus each chunk's scale and the sum of its unscaled values (for the
   weights' per-group offsets).  The prompt path wants plain f16 (scaled = 0).  Blocks (chunks,
   token): a warp per chunk, and blocks enough for the width, because one block alone takes
   microseconds on a vector this long; each block of a token works out the RMSNorm factor itself
   (re-reading the vector from L2 costs less than a second kernel).  Mode: RMSNorm with weights
   `norm`, SwiGLU silu(gate) * in, or a copy. */
#define AQC_PREP_THREADS 1024

/* 1 / RMS of the token's vector, worked out by every block that needs it. */
__device__ float aqc__prep_rms_inverse(const float *x, int n, float eps, float *red) {
    float ss = 0.0f;
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += x[i] * x[i];
    ss = aqc__block_sum(ss, red);
    return 1.0f / sqrtf(ss / (float)n + eps);
}

/* A warp's chunk of the prep, lane i holding the chunk's value i, v: store(value, scale, sum) on
   every lane, the value divided by the chunk's largest magnitude (scaled) or as it is, scale that
   magnitude (or 1), sum the sum of the chunk's unscaled values. */
template <class Store>
__device__ __forceinline__ void aqc__prep_chunk(float v, int scaled, Store store) {
    const float amax = aqc__warp_max(fabsf(v)), sum = aqc__warp_sum(v);
    const float scale = scaled && amax > 0.0f ? amax : 1.0f;
    store(__float2half(v / scale), scale, sum);
}

__global__ void __launch_bounds__(AQC_PREP_THREADS)
aqc_prep_kernel(const float *in, const float *gate, int64_t ld_in, const float *norm, int n, int kp,
                float eps, int scaled, __half *xh, float *xscale, float *xsum, int64_t ld_out) {
    __shared__ float red[32];
    const int token = blockIdx.y, lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    const int first = blockIdx.x * n_warps + warp;   /* the warp's first chunk (with enough blocks, its only one) */
    aqc__let_next_start();
    /* the norm's weights were written before the step: requested before the wait, so that their
       latency hides behind the previous kernel's tail */
    const float first_norm = norm && first * 32 + lane < n ? norm[first * 32 + lane] : 0.0f;
    aqc__wait_prior();
    const float *x = in + (size_t)token * ld_in;
    const float *g = gate ? gate + (size_t)token * ld_in : NULL;
    __half *out = xh + (size_t)token * ld_out;
    float *os = xscale + (size_t)token * (ld_out / 32), *osum = xsum + (size_t)token * (ld_out / 32);
    const float inv = norm ? aqc__prep_rms_inverse(x, n, eps, red) : 1.0f;
    for (int c = first; c < kp / 32; c += gridDim.x * n_warps) {
        const int i = c * 32 + lane;
        float v = 0.0f;
        if (i < n) {
            v = x[i];
            if (norm) v = (c == first ? first_norm : norm[i]) * (inv * v);
            if (g) v = g[i] / (1.0f + expf(-g[i])) * v;
        }
        aqc__prep_chunk(v, scaled, [&](__half h, float scale, float sum) {
            out[i] = h;
            if (lane == 0) { os[c] = scale; osum[c] = sum; }
        });
    }
}

/* ---- matrix products ---- */

#define AQC_GEMV_WARPS 4
#define AQC_GEMV_STAGE 4   /* 16-byte loads per lane per pipeline stage */
#define AQC_GEMV_BLOCKS_PER_SM 5   /* the persistent grid; the launch bounds keep registers to fit it */

/* Decode GEMVs are a single pass over the weights.  Each warp owns rows in a grid-stride loop
   and works through a row in stages of AQC_GEMV_STAGE 16-byte loads per lane, issuing the next
   stage's loads (possibly the next row's) before it computes the current one: with a grid sized
   to the machine there is no tail of short-lived blocks, and a warp never waits for memory with
   nothing else requested.  Keeping more in flight (two rows per warp; a cp.async ring three
   stages deep) measured slower on an H100 (kernels/NOTES.md). */
__device__ __forceinline__ void aqc__gemv_next(int &row, int &c0, int loads_per_stage, int n_vec, int warps_total) {
    c0 += 32 * loads_per_stage;
    if (c0 >= n_vec) { c0 = 0; row += warps_total; }
}

/* 4-bit GEMV (int4 and OliVe): a lane's 16-byte load is a chunk of 32 codes.  Per chunk of 32:
   y += scale * xscale * sum(v * x') + min * sum(x), the sum over pairs in f16.
   int4: a code q becomes the f16 1024 + q by OR-ing it into the mantissa of 1024.0 (0x6400),
   then q - 8 exactly by one f16 subtraction or FMA: one logic op and two f16 ops per pair.
   OliVe: a byte is a pair of elements, decoded through the weight's 2 x 256-entry table of f16
   pairs (exact: the values are small integers) held in shared memory; the sign of a group's scale
   picks the table.  The table comes from the host's decoder, so the GPU cannot disagree with the
   CPU about what a byte means.
   A chunk needs 64 bytes of x per lane, lanes 64 bytes apart: read from global memory that is
   16 cache lines per warp load.  So each block first copies x into shared memory, the four
   16-byte pieces of chunk c at c * 4 + (piece ^ ((c >> 1) & 3)): the eight lanes of a quarter
   warp then hit eight different 16-byte bank groups.  The first stage of weights is requested
   before the copy, so the copy costs no memory latency of its own. */
struct aqc__stage4 {
    uint4 w[AQC_GEMV_STAGE];
    __half d[AQC_GEMV_STAGE], m[AQC_GEMV_STAGE];
};

__device__ __forceinline__ int aqc__x_slot(int c, int piece) { return c * 4 + (piece ^ ((c >> 1) & 3)); }

/* The codes of a 4-bit weight lie row by row ([rows][kp / 32] chunks of 16 bytes), or, with
   STAGES (an experiment, int4 only: aqc__weight_to_stages), stage by stage: every row's first
   stage of 32 * AQC_GEMV_STAGE chunks, then every row's second, and so on (a short last stage as
   short).  Rows of one stage are the same either way.  Stage by stage, the chunks that the warps
   request at about the same time (the same stage of neighbouring rows) are neighbours in memory,
   and a full stage's 2 KB start on a 2 KB boundary; row by row, rows of 11008 columns put them
   5504 bytes apart, starting anywhere on a 128-byte boundary.  A template parameter, so that
   the kernel the step runs stays the one measured. */
template <int FORMAT, bool STAGES = false>
__global__ void __launch_bounds__(AQC_GEMV_WARPS * 32, AQC_GEMV_BLOCKS_PER_SM)
aqc_gemv_4bit_kernel(const uint4 *__restrict__ codes, const __half *__restrict__ scales, const __half *__restrict__ mins,
                     const half2 *__restrict__ table, int rows, int kp, int group, const __half *__restrict__ xh,
                     const float *__restrict__ xscale, const float *__restrict__ xsum, float *y, int accumulate) {
    AQC_DYNAMIC_SHARED(uint4, x_sm);   /* x: kp / 8 f16 pieces, swizzled (aqc__x_slot) */
    __shared__ uint4 lut4[FORMAT == AQC_OVP ? 128 : 1];   /* OliVe: 512 half2 (uint4 for 16-byte copies) */
    const half2 *lut = (const half2 *)lut4;
    const int lane = threadIdx.x % 32, warps_total = gridDim.x * AQC_GEMV_WARPS;
    /* groups are 32, 64 or 128 (checked at upload): a chunk's group is a shift away, where a
       division by a variable cost ~40 instructions per load (kernels/NOTES.md) */
    const int n_chunks = kp / 32, group_shift = aqc__log2(group / 32), n_groups = kp / group;
    const uint4 *x4 = (const uint4 *)xh;
    int row = blockIdx.x * AQC_GEMV_WARPS + threadIdx.x / 32, c0 = 0;
    aqc__stage4 cur, nxt;
    /* a stage: AQC_GEMV_STAGE loads of row r from chunk c on (c a multiple of 128), load u of
       lane at chunk c + lane + 32u, whose group is (c + lane) >> group_shift plus u groups_per_32:
       the addresses are the first load's plus constants.  A stage inside the row (all but a
       short last one) loads without a test per load, which lets the compiler share the address
       arithmetic among them. */
    const int groups_per_32 = 32 >> group_shift;
    auto load = [&](aqc__stage4 &st, int r, int c) {
        const int cl = c + lane;
        const uint4 *w = STAGES ? codes + (size_t)c * rows + (size_t)r * min(32 * AQC_GEMV_STAGE, n_chunks - c) + lane
                                : codes + (size_t)r * n_chunks + cl;
        const size_t g = (size_t)r * n_groups + (cl >> group_shift);
        const __half *d = scales + g, *m = mins + g;
        auto load_one = [&](int u) {
            st.w[u] = __ldg(w + 32 * u);
            st.d[u] = d[u * groups_per_32];
            st.m[u] = m[u * groups_per_32];
        };
        if (c + 32 * AQC_GEMV_STAGE <= n_chunks) {   /* the same on every lane */
#pragma unroll
            for (int u = 0; u < AQC_GEMV_STAGE; u++) load_one(u);
        } else {
#pragma unroll
            for (int u = 0; u < AQC_GEMV_STAGE; u++)
                if (cl + 32 * u < n_chunks) load_one(u);
        }
    };
    aqc__let_next_start();
    /* weights: written before the step, safe to read before the wait */
    if (row < rows) load(cur, row, c0);
    aqc__wait_prior();
    /* cp.async: every piece requested before any lands.  A loop of loads and stores waited for
       each load, ~11 trips to L2 in a row for an x of 11008 (kernels/NOTES.md). */
    for (int i = threadIdx.x; i < kp / 8; i += blockDim.x) aqc__cp_async16(&x_sm[aqc__x_slot(i / 4, i % 4)], x4 + i);
    if (FORMAT == AQC_OVP)
        for (int i = threadIdx.x; i < 128; i += blockDim.x) aqc__cp_async16(&lut4[i], (const uint4 *)table + i);
    aqc__cp_async_commit();
    aqc__cp_async_wait<0>();
    __syncthreads();
    /* chunk c's share of its row's sum: scale * xscale * sum(v * x') + min * sum(x), the sum
       over pairs in f16, from load u of stage st */
    auto chunk_sum = [&](const aqc__stage4 &st, int u, int c) -> float {
        const uint32_t words[4] = {st.w[u].x, st.w[u].y, st.w[u].z, st.w[u].w};
        const float d = __half2float(st.d[u]), m = __half2float(st.m[u]);
        const float2 xs = make_float2(xscale[c], xsum[c]);   /* (scale, sum) of x's chunk */
        if (FORMAT == AQC_INT4) {
            /* AWQ's dequantization, centred: a word's nibbles (0,4) and (2,6) are OR-ed into
               1024.0 as they stand, (1,5) and (3,7) in place, 16 times too large, and scaled back
               by the FMA that subtracts; every pair comes out as q - 8 exactly.  Centred codes
               keep the chunk's 32 products summed in f16 small, so one conversion per chunk
               does; the 8 comes back through the offset: y += d*xs*sum((q-8)x') + (m+8d)*sum(x). */
            const half2 bias_lo = __float2half2_rn(1032.0f), sixteenth = __float2half2_rn(1.0f / 16.0f),
                        bias_hi = __float2half2_rn(-72.0f);
            half2 s2 = __float2half2_rn(0.0f);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const uint4 xv = x_sm[aqc__x_slot(c, j)];
                const half2 *xp = (const half2 *)&xv;
                const uint32_t lo = words[j], hi = words[j] >> 8;
                s2 = __hfma2(__hsub2(aqc__bits_to_half2(aqc__and_or(lo, 0x000f000fu, 0x64006400u)), bias_lo), xp[0], s2);
                s2 = __hfma2(__hfma2(aqc__bits_to_half2(aqc__and_or(lo, 0x00f000f0u, 0x64006400u)), sixteenth, bias_hi), xp[1], s2);
                s2 = __hfma2(__hsub2(aqc__bits_to_half2(aqc__and_or(hi, 0x000f000fu, 0x64006400u)), bias_lo), xp[2], s2);
                s2 = __hfma2(__hfma2(aqc__bits_to_half2(aqc__and_or(hi, 0x00f000f0u, 0x64006400u)), sixteenth, bias_hi), xp[3], s2);
            }
            const float2 f = __half22float2(s2);
            return d * xs.x * (f.x + f.y) + (m + 8.0f * d) * xs.y;
        } else {
            const half2 *t = lut + ((__half_as_ushort(st.d[u]) & 0x8000u) ? 256 : 0);
            float qx = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const uint4 xv = x_sm[aqc__x_slot(c, j)];
                const half2 *xp = (const half2 *)&xv;
                half2 s2 = __float2half2_rn(0.0f);
#pragma unroll
                for (int q = 0; q < 4; q++) s2 = __hfma2(t[(words[j] >> (8 * q)) & 255u], xp[q], s2);
                const float2 f = __half22float2(s2);
                qx += f.x + f.y;
            }
            return fabsf(d) * xs.x * qx + m * xs.y;
        }
    };
    /* a stage: request the next one into `ahead`, add up `now`; false once the warp's rows are
       done.  The stages alternate between cur and nxt (the loop runs it twice a turn), so that
       no registers are copied from one to the other: ~30 moves a stage in call 4's SASS. */
    float acc = 0.0f;
    auto stage = [&](const aqc__stage4 &now, aqc__stage4 &ahead) -> bool {
        int next_row = row, next_c0 = c0;
        aqc__gemv_next(next_row, next_c0, AQC_GEMV_STAGE, n_chunks, warps_total);
        if (next_row < rows) load(ahead, next_row, next_c0);
#pragma unroll
        for (int u = 0; u < AQC_GEMV_STAGE; u++) {
            const int c = c0 + 32 * u + lane;
            if (c >= n_chunks) break;
            acc += chunk_sum(now, u, c);
        }
        if (next_row != row) {
            acc = aqc__warp_sum(acc);
            if (lane == 0) y[row] = accumulate ? y[row] + acc : acc;
            acc = 0.0f;
        }
        row = next_row;
        c0 = next_c0;
        return row < rows;
    };
    if (row >= rows) return;
    while (stage(cur, nxt) && stage(nxt, cur)) {}
}

/* f16 GEMV: the same pipeline, a lane's 16-byte load is 8 weights, f32 arithmetic. */
__global__ void __launch_bounds__(AQC_GEMV_WARPS * 32, AQC_GEMV_BLOCKS_PER_SM)
aqc_gemv_f16_kernel(const uint4 *__restrict__ w16, int rows, int kp, const __half *__restrict__ xh,
                    const float *__restrict__ xscale, float *y, int accumulate) {
    const int lane = threadIdx.x % 32, warps_total = gridDim.x * AQC_GEMV_WARPS, n_vec = kp / 8;
    const uint4 *x4 = (const uint4 *)xh;
    int row = blockIdx.x * AQC_GEMV_WARPS + threadIdx.x / 32, c0 = 0;
    uint4 cur[2 * AQC_GEMV_STAGE], nxt[2 * AQC_GEMV_STAGE];   /* 8 weights a load: twice the loads per stage */
    auto load = [&](uint4 *st, int r, int base) {
#pragma unroll
        for (int u = 0; u < 2 * AQC_GEMV_STAGE; u++) {
            const int c = base + 32 * u + lane;
            if (c < n_vec) st[u] = __ldg(w16 + (size_t)r * n_vec + c);
        }
    };
    aqc__let_next_start();
    if (row < rows) load(cur, row, 0);
    aqc__wait_prior();
    if (row >= rows) return;
    float acc = 0.0f;
    for (;;) {
        int next_row = row, next_c0 = c0;
        aqc__gemv_next(next_row, next_c0, 2 * AQC_GEMV_STAGE, n_vec, warps_total);
        if (next_row < rows) load(nxt, next_row, next_c0);
#pragma unroll
        for (int u = 0; u < 2 * AQC_GEMV_STAGE; u++) {
            const int c = c0 + 32 * u + lane;
            if (c >= n_vec) break;
            uint4 xv = x4[c];
            const half2 *wp = (const half2 *)&cur[u], *xp = (const half2 *)&xv;
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float2 a = __half22float2(wp[i]), b = __half22float2(xp[i]);
                s += a.x * b.x + a.y * b.y;
            }
            acc += s * xscale[c / 4];
        }
        if (next_row != row) {
            acc = aqc__warp_sum(acc);
            if (lane == 0) y[row] = accumulate ? y[row] + acc : acc;
            acc = 0.0f;
        }
        if (next_row >= rows) break;
#pragma unroll
        for (int u = 0; u < 2 * AQC_GEMV_STAGE; u++) cur[u] = nxt[u];
        row = next_row;
        c0 = next_c0;
    }
}

/* Prompt path: an OliVe matrix as f16, one thread per byte (pair). */
__global__ void aqc_dequant_ovp_kernel(const uint8_t *codes, const __half *scales, const __half *mins, const half2 *table,
                                       int64_t n_bytes, int kp, int group, __half *out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_bytes) return;
    int64_t row = i / (kp / 2);
    int col = (int)(i % (kp / 2)) * 2;
    __half s = scales[row * (kp / group) + col / group];
    float d = fabsf(__half2float(s)), m = __half2float(mins[row * (kp / group) + col / group]);
    float2 v = __half22float2(table[((__half_as_ushort(s) & 0x8000u) ? 256 : 0) + codes[i]]);
    out[row * kp + col] = __float2half(v.x * d + m);
    out[row * kp + col + 1] = __float2half(v.y * d + m);
}

/* Prompt path: the int4 matrix as f16, one thread per 8 codes. */
__global__ void aqc_dequant_int4_kernel(const uint32_t *codes, const __half *scales, const __half *mins, int64_t n_words,
                                        int kp, int group, __half *out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_words) return;
    int64_t row = i / (kp / 8);
    int col = (int)(i % (kp / 8)) * 8, gi = col / group;
    float d = __half2float(scales[row * (kp / group) + gi]), m = __half2float(mins[row * (kp / group) + gi]);
    uint32_t word = codes[i];
    __half *o = out + row * kp + col;
#pragma unroll
    for (int e = 0; e < 8; e++) {
        int nibble = (e & 1) ? 4 + e / 2 : e / 2;
        o[e] = __float2half((float)((word >> (4 * nibble)) & 15u) * d + m);
    }
}

/* ---- embedding ---- */

__global__ void aqc_embed_kernel(const __half *table, int64_t ld, int dim, const int *ids, float *x) {
    aqc__enter();
    const __half *row = table + (size_t)ids[blockIdx.x] * ld;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) x[(size_t)blockIdx.x * dim + i] = __half2float(row[i]);
}

#define AQC_MAX_HD 256   /* head_dim: a power of two from 8 (checked at model load) */

/* ---- KV cache ----
   Layout per layer: [page][kv head][K: page_size x head_dim | V: page_size x head_dim] f16, so a
   page of one head is two contiguous blocks.  Bounds per layer (aqc__bounds): [kv head][page]
   [min | max] f16 over head_dim (keys are stored as f16, so their bounds are exact); or, with
   8-bit bounds, the same as int8 codes, then apart from them an f16 scale per 16 codes, written
   once per page when its last slot is, from its keys, by awq_quest.h's aq__bounds8_quantize
   arithmetic (so that the GPU and the CPU select alike). */
struct aqc__bounds {
    unsigned char *base;   /* the layer's; NULL: none to update */
    int bits, n_kv, hd, max_pages;
    __host__ __device__ size_t record(int kvh, int page) const { return (size_t)kvh * max_pages + page; }
    __host__ __device__ __half *f16(int kvh, int page) const { return (__half *)base + record(kvh, page) * 2 * hd; }
    __host__ __device__ int8_t *codes(int kvh, int page) const { return (int8_t *)base + record(kvh, page) * 2 * hd; }
    __host__ __device__ __half *scales(int kvh, int page) const {
        return (__half *)(base + (size_t)n_kv * max_pages * 2 * hd) + record(kvh, page) * (hd / 8);
    }
};
static size_t aqc__bounds_layer_bytes(int bits, int n_kv, int hd, int max_pages) {
    return (size_t)n_kv * max_pages * (bits == 8 ? 2 * hd + hd / 4 : 4 * hd);
}
static aqc__bounds aqc__bounds_of(void *all, int layer, int bits, int n_kv, int hd, int max_pages) {
    aqc__bounds b = {(unsigned char *)all + aqc__bounds_layer_bytes(bits, n_kv, hd, max_pages) * layer, bits, n_kv, hd, max_pages};
    return b;
}

/* The 8-bit record of one page (kvh, page) from its box in shared memory, box[2 * hd] = [kmin |
   kmax], by the calling block, a thread per 16 values: as aq__bounds8_quantize, operation for
   operation (the smallest f16 scale d with 127 d >= the block's largest magnitude, then each
   code rounded outwards and corrected by one where the quotient's rounding crossed over). */
__device__ __noinline__ void aqc__bounds8_page(const float *box, const aqc__bounds &b, int kvh, int page) {
    const int hd = b.hd;
    for (int blk = threadIdx.x; blk < hd / 8; blk += blockDim.x) {
        float amax = 0.0f;
        for (int e = 0; e < 16; e++) amax = fmaxf(amax, fabsf(box[16 * blk + e]));
        const float want = amax / 127.0f;
        unsigned short dh = __half_as_ushort(__float2half(want));
        if (__half2float(__ushort_as_half(dh)) < want) dh++;   /* rounded up: the f16 above */
        if (__half2float(__ushort_as_half(dh)) * 127.0f < amax) dh++;
        const float d = __half2float(__ushort_as_half(dh));
        union { int8_t c[16]; uint4 u; } out;
        for (int e = 0; e < 16; e++) {
            const int i = 16 * blk + e;
            const bool up = i >= hd;
            const float x = box[i];
            float c = 0.0f;
            if (d > 65504.0f) c = up ? 127.0f : -127.0f;
            else if (d > 0.0f) {
                c = up ? ceilf(x / d) : floorf(x / d);
                if (up ? c * d < x : c * d > x) c += up ? 1.0f : -1.0f;
                c = c > 127.0f ? 127.0f : c < -127.0f ? -127.0f : c;
            }
            out.c[e] = (int8_t)c;
        }
        *((uint4 *)b.codes(kvh, page) + blk) = out.u;
        b.scales(kvh, page)[blk] = __ushort_as_half(dh);
    }
}

/* RoPE on q and k, then k and v into the cache: block (head, token), the query heads first, then
   the KV heads (which also append), a thread per pair of dimensions (one block per token, its
   threads each working out ~10 accurate sines and cosines in turn, took four times as long on an
   H100).  A decode step (one token, bounds.base given) also updates its page's key bounds in
   place, which for one new key is a min and a max (f16), or, with 8-bit bounds, quantizes the
   page's box once its last slot is written: the bounds kernel then has nothing left to do. */
__global__ void aqc_rope_append_kernel(float *qkv, int qkv_dim, int n_heads, int n_kv, int hd, int n_rot, float rope_base,
                                       const int *pos_ptr, __half *kv_layer, int page_size, aqc__bounds bounds) {
    __shared__ float box[2 * AQC_MAX_HD];   /* 8-bit bounds: the completed page's [kmin | kmax] */
    aqc__enter();
    const int h = blockIdx.x, t = blockIdx.y, pos = *pos_ptr + t, half_rot = n_rot / 2;
    const int page = pos / page_size, slot = pos % page_size, kvh = h - n_heads;
    float *vec = qkv + (size_t)t * qkv_dim + (size_t)h * hd;   /* q heads, then k heads, adjacent */
    for (int j = threadIdx.x; j < hd / 2; j += blockDim.x) {
        float x0 = vec[2 * j], x1 = vec[2 * j + 1];
        if (j < half_rot) {
            const float angle = (float)pos * (1.0f / powf(rope_base, (float)(2 * j) / (float)n_rot));
            const float c = cosf(angle), s = sinf(angle), r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
            x0 = r0;
            x1 = r1;
        }
        vec[2 * j] = x0;
        vec[2 * j + 1] = x1;
        if (kvh < 0) continue;
        const float *v = qkv + (size_t)t * qkv_dim + (size_t)(n_heads + n_kv + kvh) * hd;
        __half *base = kv_layer + ((size_t)page * n_kv + kvh) * 2 * page_size * hd;
        const float xs[2] = {x0, x1};
        for (int e = 0; e < 2; e++) {
            const int d = 2 * j + e;
            const __half key = __float2half(xs[e]);
            base[(size_t)slot * hd + d] = key;
            base[(size_t)(page_size + slot) * hd + d] = __float2half(v[d]);
            if (bounds.base && bounds.bits == 16) {
                __half *b = bounds.f16(kvh, page);
                b[d] = slot == 0 || __hlt(key, b[d]) ? key : b[d];
                b[hd + d] = slot == 0 || __hgt(key, b[hd + d]) ? key : b[hd + d];
            }
            if (bounds.base && bounds.bits == 8 && slot == page_size - 1) {   /* the page's box, from every key (its own included) */
                float lo = INFINITY, hi = -INFINITY;
                for (int j = 0; j < page_size; j++) {
                    const float x = __half2float(base[(size_t)j * hd + d]);
                    lo = fminf(lo, x);
                    hi = fmaxf(hi, x);
                }
                box[d] = lo;
                box[hd + d] = hi;
            }
        }
    }
    if (bounds.base && bounds.bits == 8 && kvh >= 0 && slot == page_size - 1) {   /* the same for the whole block */
        __syncthreads();
        aqc__bounds8_page(box, bounds, kvh, page);
    }
}

/* Bounds of the pages holding positions *pos .. *pos + n_tokens - 1: block (kv head, page).
   8-bit bounds are written for complete pages only (an incomplete one is never scored, and the
   append that completes it writes them). */
__global__ void aqc_page_bounds_kernel(const __half *kv_layer, aqc__bounds bounds, int page_size, const int *pos_ptr, int n_tokens) {
    __shared__ float box[2 * AQC_MAX_HD];
    aqc__enter();
    const int kvh = blockIdx.x, first = *pos_ptr, last = first + n_tokens - 1, n_kv = bounds.n_kv, hd = bounds.hd;
    const int page = first / page_size + blockIdx.y;
    if (page > last / page_size) return;
    const int filled = min(page_size, last + 1 - page * page_size);
    if (bounds.bits == 8 && filled < page_size) return;
    const __half *K = kv_layer + ((size_t)page * n_kv + kvh) * 2 * page_size * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        __half lo = K[d], hi = K[d];
        for (int j = 1; j < filled; j++) {
            __half v = K[(size_t)j * hd + d];
            lo = __hlt(v, lo) ? v : lo;
            hi = __hgt(v, hi) ? v : hi;
        }
        if (bounds.bits == 16) {
            __half *b = bounds.f16(kvh, page);
            b[d] = lo;
            b[hd + d] = hi;
        } else {
            box[d] = __half2float(lo);
            box[hd + d] = __half2float(hi);
        }
    }
    if (bounds.bits == 8) {
        __syncthreads();
        aqc__bounds8_page(box, bounds, kvh, page);
    }
}

/* ---- Quest ----
   The bound of a page for the query heads of one KV head is sum_d A_d kmax_d + B_d kmin_d with
   A_d = sum_h max(q_hd, 0), B_d = sum_h min(q_hd, 0): the largest q.k any key inside the page's
   box could give, summed over the heads that will read it (the CPU path's aq__bound_coeffs).
   Steps whose context fits the budget stay dense: the score kernel does nothing and the top-k
   kernel lists every page. */
#define AQC_SCORE_WARPS 4
#define AQC_SCORE_PAGES 8
#define AQC_SCORE_BLOCKS_PER_SM 6   /* 80 registers, as the f16 score kernel measured on the H100 had */

/* The coefficient of channel d's kmin (B_d) or kmax (A_d) in a page's bound, for the query heads
   of one KV head (qk: their queries). */
__device__ __forceinline__ float aqc__bound_coef(const float *qk, int group, int hd, int d, bool is_max) {
    float total = 0.0f, magnitude = 0.0f;
    for (int h = 0; h < group; h++) {
        const float x = qk[(size_t)h * hd + d];
        total += x;
        magnitude += fabsf(x);
    }
    return 0.5f * (is_max ? total + magnitude : total - magnitude);
}

/* Block bx of n_bx's share of KV head kvh's n_complete page scores (the blocks stride over the
   pages), from f16 bounds (BITS 16) or 8-bit ones (8). */
template <int BITS>
__device__ __forceinline__ void aqc__score_pages(int bx, int n_bx, int kvh, const float *q, const aqc__bounds &bounds, int n_heads,
                                                 int n_complete, float *scores) {
    const int n_kv = bounds.n_kv, hd = bounds.hd, max_pages = bounds.max_pages, group = n_heads / n_kv;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const float *qk = q + (size_t)kvh * group * hd;
    if (BITS == 16) {
        /* a page's bounds are 2 * hd f16 [min | max], hd / 4 16-byte loads; a warp loads
           AQC_SCORE_PAGES pages at once, and only then works out the coefficients of its lanes' 8
           values from the queries (no shared memory, no barrier in front of the loads) */
        const int n_vec = hd / 4;
        const __half *head = bounds.f16(kvh, 0);
        for (int p0 = (bx * AQC_SCORE_WARPS + warp) * AQC_SCORE_PAGES; p0 < n_complete; p0 += n_bx * AQC_SCORE_WARPS * AQC_SCORE_PAGES) {
            float sum[AQC_SCORE_PAGES];
#pragma unroll
            for (int u = 0; u < AQC_SCORE_PAGES; u++) sum[u] = 0.0f;
            for (int v = lane; v < n_vec; v += 32) {
                uint4 raw[AQC_SCORE_PAGES];
#pragma unroll
                for (int u = 0; u < AQC_SCORE_PAGES; u++)
                    raw[u] = p0 + u < n_complete ? __ldg((const uint4 *)(head + (size_t)(p0 + u) * 2 * hd) + v) : make_uint4(0, 0, 0, 0);
                const int d0 = (8 * v) % hd;   /* the 8 values are all kmin's or all kmax's */
                const bool is_max = 8 * v >= hd;
                float coef[8];
#pragma unroll
                for (int e = 0; e < 8; e++) coef[e] = aqc__bound_coef(qk, group, hd, d0 + e, is_max);
#pragma unroll
                for (int u = 0; u < AQC_SCORE_PAGES; u++) {
                    const half2 *h2 = (const half2 *)&raw[u];
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float2 f = __half22float2(h2[e]);
                        sum[u] += f.x * coef[2 * e] + f.y * coef[2 * e + 1];
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < AQC_SCORE_PAGES; u++) {
                const float t = aqc__warp_sum(sum[u]);
                if (lane == 0 && p0 + u < n_complete) scores[(size_t)kvh * max_pages + p0 + u] = t;
            }
        }
    } else {
        /* a page's codes are hd / 8 16-byte pieces (head_dim a power of two: they divide a warp),
           each with its scale; lane l takes piece l % pieces of the pages it loads, loads of
           AQC_SCORE_PAGES pages a round (32 at head_dim 8), so its 16 coefficients are worked out
           once; the lanes of a page then add up their pieces */
        const int pieces = hd / 8, loads = max(1, AQC_SCORE_PAGES * pieces / 32), round = loads * 32 / pieces, v = lane % pieces;
        float coef[16];
#pragma unroll
        for (int e = 0; e < 16; e++) coef[e] = aqc__bound_coef(qk, group, hd, (16 * v + e) % hd, 16 * v + e >= hd);
        constexpr int MAX_LOADS = AQC_SCORE_PAGES * (AQC_MAX_HD / 8) / 32;
        for (int p0 = (bx * AQC_SCORE_WARPS + warp) * round; p0 < n_complete; p0 += n_bx * AQC_SCORE_WARPS * round) {
            uint4 raw[MAX_LOADS];
            float scale[MAX_LOADS];
#pragma unroll
            for (int u = 0; u < MAX_LOADS; u++) {
                const int page = p0 + (u * 32 + lane) / pieces;
                raw[u] = make_uint4(0, 0, 0, 0);
                scale[u] = 0.0f;
                if (u < loads && page < n_complete) {
                    raw[u] = __ldg((const uint4 *)bounds.codes(kvh, page) + v);
                    scale[u] = __half2float(bounds.scales(kvh, page)[v]);
                }
            }
#pragma unroll
            for (int u = 0; u < MAX_LOADS; u++) {
                if (u >= loads) break;   /* the same on every lane */
                const int8_t *c = (const int8_t *)&raw[u];
                float t = 0.0f;
#pragma unroll
                for (int e = 0; e < 16; e++) t += coef[e] * (float)c[e];
                t *= scale[u];
                for (int o = pieces / 2; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
                const int page = p0 + (u * 32 + lane) / pieces;
                if (v == 0 && page < n_complete) scores[(size_t)kvh * max_pages + page] = t;
            }
        }
    }
}

template <int BITS>
__global__ void __launch_bounds__(AQC_SCORE_WARPS * 32, AQC_SCORE_BLOCKS_PER_SM)
aqc_quest_score_kernel(const float *q, aqc__bounds bounds, int n_heads, int page_size, int budget, const int *pos_ptr,
                                       float *scores) {
    aqc__enter();
    const int pos = *pos_ptr;
    if (pos + 1 <= budget) return;
    aqc__score_pages<BITS>(blockIdx.x, gridDim.x, blockIdx.y, q, bounds, n_heads, pos / page_size, scores);
}

__device__ __forceinline__ uint32_t aqc__order_key(float f) {   /* larger float, larger key */
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

__device__ __forceinline__ int aqc__warp_inclusive_scan(int v) {
    const int lane = threadIdx.x % 32;
    for (int o = 1; o < 32; o <<= 1) {
        int t = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += t;
    }
    return v;
}

/* Exclusive prefix sum over the block in thread order; warp_tot holds 32 ints. */
__device__ int aqc__block_exclusive_scan(int v, int *warp_tot) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = (blockDim.x + 31) / 32;
    const int incl = aqc__warp_inclusive_scan(v);
    if (lane == 31) warp_tot[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        int t = lane < n_warps ? warp_tot[lane] : 0, ti = aqc__warp_inclusive_scan(t);
        warp_tot[lane] = ti - t;
    }
    __syncthreads();
    const int r = incl - v + warp_tot[warp];
    __syncthreads();
    return r;
}

#define AQC_TOPK_THREADS 1024
#define AQC_TOPK_CACHE 8   /* Quest's page scores kept in registers up to 8192 pages (128K tokens at 16) */

/* The k largest of vals[0..n) (0 < k <= n), ties to the lower index, written to out in
   ascending index order.  Every thread of the block calls it.  A radix select (passes over 8
   bits of an order-preserving key) narrows the keys down to those sharing the k-th largest key's
   high bits; then block scans place the keys above it and the first ties equal to it.  Each pass is a chain of barriers, and the selection is on the
   critical path of every Quest layer, so there are as few as can be: with the keys in registers
   the first pass starts at the highest bit where they differ (alike scores share their sign and
   most of their exponent), and any pass stops the select when the bucket it picked holds exactly
   the keys still wanted (they are all taken, whatever their low bits).  Typically that is two
   passes where a full select takes four; the keys read per pass skip the first step, which would
   cost a pass over memory of its own.  CACHE > 0 keeps each thread's keys in registers
   (n <= CACHE * blockDim.x), so that the passes read memory once; CACHE = 0 reads vals in every
   pass.  Used for Quest's pages (cached) and the sampler's top-k over the vocabulary.
   Cached, a thread's keys are the CACHE in a row from thread * CACHE, so that one block scan of
   each thread's counts places them all; read per pass, those at r * blockDim + thread (coalesced
   loads), placed a round, and a scan, at a time. */
template <int CACHE>
__device__ void aqc__block_top_k(const float *vals, int n, int k, int *out) {
    __shared__ int hist[256];
    __shared__ int scan[32];
    __shared__ uint32_t s_prefix;
    __shared__ int s_k, s_exact;
    const int tid = threadIdx.x, nt = blockDim.x, lane = tid % 32;
    const int rounds = (n + nt - 1) / nt;   /* read per pass (CACHE = 0): rounds of nt keys */
    auto index = [&](int r) { return CACHE ? tid * CACHE + r : r * nt + tid; };
    /* from L2 (__ldcg): the values may have been written by other blocks of this same grid
       (aqc_quest_select_kernel), which no L1 would know of */
    auto key_at = [&](int i) { return i < n ? aqc__order_key(__ldcg(vals + i)) : 0u; };
    uint32_t cache[CACHE ? CACHE : 1];
    if (CACHE) {
#pragma unroll
        for (int r = 0; r < (CACHE ? CACHE : 1); r++) cache[r] = key_at(index(r));
    }
    /* f(r, key) for every round r, the key from the registers or from memory; every thread calls
       f as often as every other (f may hold warp collectives), also for indices past n */
    auto for_each_key = [&](auto f) {
        if (CACHE) {
#pragma unroll
            for (int r = 0; r < (CACHE ? CACHE : 1); r++) f(r, cache[r]);
        } else
            for (int r = 0; r < rounds; r++) f(r, key_at(index(r)));
    };
    /* the key's bits from `low` up are settled: every key wanted has (key & mask) >= prefix */
    uint32_t prefix = 0, mask = 0;
    int low = 32;
    if (CACHE) {
        __shared__ uint32_t s_min[32], s_max[32];
        uint32_t lo_key = 0xffffffffu, hi_key = 0u;
        auto warp_min_max = [&]() {
            for (int o = 16; o > 0; o >>= 1) {
                lo_key = min(lo_key, __shfl_xor_sync(0xffffffffu, lo_key, o));
                hi_key = max(hi_key, __shfl_xor_sync(0xffffffffu, hi_key, o));
            }
        };
        for_each_key([&](int r, uint32_t key) {
            if (index(r) < n) { lo_key = min(lo_key, key); hi_key = max(hi_key, key); }
        });
        warp_min_max();
        if (lane == 0) { s_min[tid / 32] = lo_key; s_max[tid / 32] = hi_key; }
        __syncthreads();
        const bool has_warp = lane < (nt + 31) / 32;   /* every warp reduces the warps' results itself */
        lo_key = has_warp ? s_min[lane] : 0xffffffffu;
        hi_key = has_warp ? s_max[lane] : 0u;
        warp_min_max();
        low = lo_key == hi_key ? 0 : 32 - __clz((int)(lo_key ^ hi_key));   /* above bit `low`, every key is alike */
        mask = low == 32 ? 0u : 0xffffffffu << low;
        prefix = hi_key & mask;
    }
    while (low > 0) {
        const int width = low < 8 ? low : 8;
        low -= width;
        for (int i = tid; i < 256; i += nt) hist[i] = 0;
        __syncthreads();
        /* scores are alike, so most keys of a pass share a bucket: one atomic per bucket per warp
           (lanes with the same bucket found by __match_any_sync), not one per key */
        auto bucket_of = [&](int r, uint32_t key) {   /* 0xffffffff: past the end, or outside the prefix */
            return index(r) < n && (key & mask) == prefix ? (key >> low) & ((1u << width) - 1u) : 0xffffffffu;
        };
        auto add = [&](uint32_t bucket, unsigned peers) {
            if (bucket != 0xffffffffu && lane == __ffs(peers) - 1) atomicAdd(&hist[bucket], __popc(peers));
        };
        if (CACHE) {   /* every match first: they do not wait for one another, where each atomic waits for its match */
            uint32_t bucket[CACHE ? CACHE : 1];
            unsigned peers[CACHE ? CACHE : 1];
#pragma unroll
            for (int r = 0; r < (CACHE ? CACHE : 1); r++) bucket[r] = bucket_of(r, cache[r]);
#pragma unroll
            for (int r = 0; r < (CACHE ? CACHE : 1); r++) peers[r] = __match_any_sync(0xffffffffu, bucket[r]);
#pragma unroll
            for (int r = 0; r < (CACHE ? CACHE : 1); r++) add(bucket[r], peers[r]);
        } else
            for (int r = 0; r < rounds; r++) {
                const uint32_t bucket = bucket_of(r, key_at(index(r)));
                add(bucket, __match_any_sync(0xffffffffu, bucket));
            }
        __syncthreads();
        if (tid < 32) {   /* from the top bucket down, find the one holding the k-th key: lane l sums 8 buckets */
            const int top = 255 - 8 * tid;
            int local = 0;
            for (int j = 0; j < 8; j++) local += hist[top - j];
            const int incl = aqc__warp_inclusive_scan(local);
            const int owner = __ffs(__ballot_sync(0xffffffffu, incl >= k)) - 1;
            if (tid == owner) {
                int cum = incl - local, b = top;
                for (int j = 0; j < 7; j++, b--) {
                    if (cum + hist[b] >= k) break;
                    cum += hist[b];
                }
                s_prefix = prefix | ((uint32_t)b << low);
                s_k = k - cum;
                s_exact = hist[b] == k - cum;
            }
        }
        __syncthreads();
        prefix = s_prefix;
        k = s_k;
        mask |= ((1u << width) - 1u) << low;
        const bool exact = s_exact;
        __syncthreads();
        if (exact) break;   /* the bucket's keys are exactly the ones still wanted */
    }
    /* Every key whose bits under the mask are above prefix is taken, and the first k of those
       equal to it, in index order (when the select stopped early, all of them).  A key's place
       in out is the number of keys above before it plus that of ties before it, at most k; a
       scan counts both (above in the low 16 bits, ties in the high). */
    auto above_at = [&](int r, uint32_t key) { return index(r) < n && (key & mask) > prefix; };
    auto tie_at = [&](int r, uint32_t key) { return index(r) < n && (key & mask) == prefix; };
    if (CACHE) {   /* a thread's keys in a row: one scan of their counts */
        int n_above = 0, n_tie = 0;
        for_each_key([&](int r, uint32_t key) { n_above += above_at(r, key); n_tie += tie_at(r, key); });
        const int before = aqc__block_exclusive_scan(n_above | (n_tie << 16), scan);
        int above_before = before & 0xffff, ties_before = before >> 16;
        for_each_key([&](int r, uint32_t key) {
            const int above = above_at(r, key), tie = tie_at(r, key);
            if (above || (tie && ties_before < k)) out[above_before + min(ties_before, k)] = index(r);
            above_before += above;
            ties_before += tie;
        });
        return;
    }
    /* read per pass: a scan per round of nt keys */
    int written = 0, ties_seen = 0;
    auto place = [&](int r, uint32_t key) {
        const int i = index(r);
        const int above = above_at(r, key), tie = tie_at(r, key);
        const int before = aqc__block_exclusive_scan(above | (tie << 16), scan);
        const int ties_left = max(0, k - ties_seen), tie_before = before >> 16;
        if (above || (tie && tie_before < ties_left)) out[written + (before & 0xffff) + min(tie_before, ties_left)] = i;
        const int n_above = __syncthreads_count(above), n_tie = __syncthreads_count(tie);
        written += n_above + min(n_tie, ties_left);
        ties_seen += n_tie;
    };
    for_each_key(place);
}

/* Every page up to the last, in order (a context within the budget), by the calling block. */
__device__ void aqc__list_every_page(int last, int *out, int *len) {
    for (int i = threadIdx.x; i <= last; i += blockDim.x) out[i] = i;
    if (threadIdx.x == 0) *len = last + 1;
}

/* The budget / page_size - 1 complete pages of a KV head with the highest scores, in ascending
   page order, then the current page, by the calling block (CACHE scores a thread in registers
   where they fit, else read per pass). */
template <int CACHE>
__device__ void aqc__pick_pages(const float *head_scores, int last, int page_size, int budget, int *out, int *len) {
    const int keep = budget / page_size - 1;
    if (last <= CACHE * (int)blockDim.x) aqc__block_top_k<CACHE>(head_scores, last, keep, out);
    else aqc__block_top_k<0>(head_scores, last, keep, out);
    if (threadIdx.x == 0) {
        out[keep] = last;
        *len = keep + 1;
    }
}

/* Per KV head, aqc__pick_pages (or every page, within the budget).  The block is as small as
   holds max_pages in registers (aqc__topk_threads): the selection is a chain of barriers, each
   cheaper with fewer warps. */
__global__ void __launch_bounds__(AQC_TOPK_THREADS, 1)
aqc_quest_topk_kernel(const float *scores, int max_pages, int page_size, int budget, const int *pos_ptr, int *lists, int *list_len) {
    aqc__enter();
    const int kvh = blockIdx.x, pos = *pos_ptr, last = pos / page_size;
    int *out = lists + (size_t)kvh * max_pages;
    if (pos + 1 <= budget) aqc__list_every_page(last, out, list_len + kvh);
    else aqc__pick_pages<AQC_TOPK_CACHE>(scores + (size_t)kvh * max_pages, last, page_size, budget, out, list_len + kvh);
}

/* A scoring block of the one-kernel selections (aqc_quest_select_kernel, aqc_quest_onepass_kernel):
   its share bx of n_bx of KV head kvh's page scores, then, if it is the last of the head's blocks
   to finish (a ticket from done[kvh], which it sets back to 0 for the next launch), the head's
   page list, as aqc_quest_topk_kernel makes it (or every page, within the budget), with its 128
   threads.  Returns, on every thread, whether it made the list. */
#define AQC_SELECT_CACHE 16   /* 2048 pages over 128 threads */
template <int BITS>
__device__ bool aqc__score_then_pick(int bx, int n_bx, int kvh, const float *q, const aqc__bounds &bounds, int n_heads, int page_size,
                                     int budget, int pos, float *scores, unsigned *done, int *lists, int *list_len) {
    __shared__ int s_last;
    const int last = pos / page_size, max_pages = bounds.max_pages;
    if (pos + 1 > budget) aqc__score_pages<BITS>(bx, n_bx, kvh, q, bounds, n_heads, last, scores);
    __threadfence();   /* this block's scores reach L2 before its ticket is taken */
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(done + kvh, 1u) == (unsigned)n_bx - 1;
    __syncthreads();
    if (!s_last) return false;
    __threadfence();   /* the other blocks' scores, seen through their tickets */
    int *out = lists + (size_t)kvh * max_pages;
    if (pos + 1 <= budget) aqc__list_every_page(last, out, list_len + kvh);
    else aqc__pick_pages<AQC_SELECT_CACHE>(scores + (size_t)kvh * max_pages, last, page_size, budget, out, list_len + kvh);
    if (threadIdx.x == 0) done[kvh] = 0;
    return true;
}

/* Quest's score and top-k in one grid, an experiment timed beside the two kernels (the timing
   part; kernels/NOTES.md, tenth session): the score kernel's blocks, the last of each KV head
   selecting (aqc__score_then_pick) where the two kernels hand over at a kernel boundary.  The
   same lists as the two kernels' (checked). */
template <int BITS>
__global__ void __launch_bounds__(AQC_SCORE_WARPS * 32, AQC_SCORE_BLOCKS_PER_SM)
aqc_quest_select_kernel(const float *q, aqc__bounds bounds, int n_heads, int page_size, int budget, const int *pos_ptr, float *scores,
                        unsigned *done, int *lists, int *list_len) {
    aqc__enter();
    aqc__score_then_pick<BITS>(blockIdx.x, gridDim.x, blockIdx.y, q, bounds, n_heads, page_size, budget, *pos_ptr, scores, done, lists,
                               list_len);
}

/* ---- attention ----
   Block (KV head, split, token): the split's share of the page list, warps taking pages in turn.
   A key's head_dim values are head_dim / 8 lanes' 16-byte loads, so one warp instruction reads
   32 / (head_dim / 8) whole keys (two for head_dim 128): K and V come straight from the cache
   in 512-byte rows and every query head of the group uses them (GQA reads a page once).  Each
   lane keeps an online softmax over its keys; the warps' states are merged in shared memory and
   the block writes (max, sum, unnormalized output) per head for the merge, a kernel of its own
   that makes each head's output from its splits' partial softmaxes.  (Doing the merge in the
   last block of a KV head to finish, found by an atomic counter, measured slower on an H100:
   kernels/NOTES.md.) */
#define AQC_ATT_WARPS 4
#define AQC_MAX_SPLITS 256
#define AQC_MAX_GROUP 8   /* query heads per KV head */

/* A split's record for the merge, per query head: its max score m, its softmax sum l, two floats
   of padding (so that the output is 16-byte aligned for the merge's vector loads), then its
   unnormalized output [hd]. */
#define AQC_PARTIAL_PAD 4
__host__ __device__ constexpr int aqc__partial_floats(int hd) { return hd + AQC_PARTIAL_PAD; }

/* A block's share of a KV head's page list: list indices [begin, end) of split `split`, and the
   page at index i (the list: dense, every page up to the last; or Quest's). */
struct aqc__split_pages {
    const int *list;
    int begin, end;
    __device__ aqc__split_pages(const int *lists, const int *list_len, int kvh, int max_pages, int last, int split, int splits) {
        list = lists ? lists + (size_t)kvh * max_pages : NULL;
        /* from L2 (__ldcg): in aqc_quest_onepass_kernel another block of the same grid wrote it */
        const int n = !lists ? last + 1 : __ldcg(list_len + kvh);
        /* in 32 bits (pages times at most AQC_MAX_SPLITS stay far below 2^32): a 64-bit division
           is a call of ~100 instructions at the head of every block */
        begin = (int)((unsigned)n * (unsigned)split / (unsigned)splits);
        end = (int)((unsigned)n * (unsigned)(split + 1) / (unsigned)splits);
    }
    __device__ int page(int i) const { return !list ? i : __ldcg(list + i); }
};

/* The end of an attention block: the warps' partial softmaxes (m, l and the unnormalized output
   of each of the group's heads, in sm_m[warp][h], sm_l[warp][h] and sm_acc[warp][h][hd], MAXG
   heads apart) merged into the block's, written to partial. */
template <int MAXG>
__device__ void aqc__attention_finish(int kvh, int split, int splits, int t, int n_kv, int hd, int group, const float *sm_acc,
                                      const float (*sm_m)[MAXG], const float (*sm_l)[MAXG], float *partial) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < group * hd; idx += blockDim.x) {
        const int h = idx / hd, d = idx % hd;
        float M = -INFINITY, L = 0.0f, O = 0.0f;
        for (int w = 0; w < AQC_ATT_WARPS; w++) M = fmaxf(M, sm_m[w][h]);
        if (M != -INFINITY)
            for (int w = 0; w < AQC_ATT_WARPS; w++) {
                if (sm_m[w][h] == -INFINITY) continue;
                float f = __expf(sm_m[w][h] - M);
                L += sm_l[w][h] * f;
                O += sm_acc[((size_t)w * MAXG + h) * hd + d] * f;
            }
        float *out = partial + ((((size_t)t * n_kv + kvh) * splits + split) * group + h) * aqc__partial_floats(hd);
        out[AQC_PARTIAL_PAD + d] = O;
        if (d == 0) { out[0] = M; out[1] = L; }
    }
}

/* Block (kvh, split of splits, token t) of the attention. */
template <int MAXG>
__device__ void aqc__attention_block(int kvh, int split, int splits, int t, const __half *kv_layer, const int *lists,
                                     const int *list_len, int max_pages, const float *qkv, int qkv_dim, int n_kv, int hd,
                                     int page_size, int group, float scale, const int *pos_ptr, float *partial) {
    AQC_DYNAMIC_SHARED(float, sm_acc);   /* [warps][MAXG][hd] */
    __shared__ float sm_m[AQC_ATT_WARPS][MAXG], sm_l[AQC_ATT_WARPS][MAXG];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int pos = *pos_ptr + t, last = pos / page_size, last_valid = pos - last * page_size + 1;   /* keys in the last page */
    const aqc__split_pages pages(lists, list_len, kvh, max_pages, last, split, splits);
    const int begin = pages.begin, end = pages.end;
    /* head_dim is a power of two (8 to 256, checked at model load): shifts, not divisions */
    const int cpk_shift = aqc__log2(hd / 8), cpk = 1 << cpk_shift, keys_per_step = 32 >> cpk_shift, part = lane & (cpk - 1),
              key_in_step = lane >> cpk_shift;
    const float *q = qkv + (size_t)t * qkv_dim + (size_t)kvh * group * hd;
    float qr[MAXG][8], acc[MAXG][8], m[MAXG], l[MAXG];
#pragma unroll
    for (int h = 0; h < MAXG; h++) {
#pragma unroll
        for (int e = 0; e < 8; e++) {
            qr[h][e] = h < group ? q[(size_t)h * hd + part * 8 + e] * scale : 0.0f;
            acc[h][e] = 0.0f;
        }
        m[h] = -INFINITY;
        l[h] = 0.0f;
    }
    /* the warp's work is its pages' steps of 2 * keys_per_step keys; the loads of the next step
       (the next page's first, through the page id read a page ahead) are issued before the
       current step is computed, so that every warp keeps two steps of loads in flight */
    const int steps_per_page = (page_size + 2 * keys_per_step - 1) >> (6 - cpk_shift);   /* 2 * keys_per_step = 64 >> cpk_shift */
    auto page_at = [&](int i) { return i < end ? pages.page(i) : 0; };
    auto fetch = [&](int page, int step, uint4 *raw, bool &va, bool &vb) {
        const int n_valid = page == last ? last_valid : page_size;
        const __half *K = kv_layer + ((size_t)page * n_kv + kvh) * 2 * page_size * hd, *V = K + (size_t)page_size * hd;
        const int ja = step * 2 * keys_per_step + key_in_step, jb = ja + keys_per_step;
        va = ja < n_valid;
        vb = jb < n_valid;
        raw[0] = raw[1] = raw[2] = raw[3] = make_uint4(0, 0, 0, 0);
        if (va) {
            raw[0] = __ldg((const uint4 *)(K + (size_t)ja * hd + part * 8));
            raw[1] = __ldg((const uint4 *)(V + (size_t)ja * hd + part * 8));
        }
        if (vb) {
            raw[2] = __ldg((const uint4 *)(K + (size_t)jb * hd + part * 8));
            raw[3] = __ldg((const uint4 *)(V + (size_t)jb * hd + part * 8));
        }
    };
    int i = begin + warp, step = 0, page = page_at(i), next_page = page_at(i + AQC_ATT_WARPS);
    uint4 raw[4], nraw[4];
    bool va = false, vb = false;
    if (i < end) fetch(page, 0, raw, va, vb);
    while (i < end) {
        int ni = i, nstep = step + 1, npage = page;
        bool nva = false, nvb = false;
        if (nstep == steps_per_page) { nstep = 0; ni = i + AQC_ATT_WARPS; npage = next_page; }
        if (ni < end) fetch(npage, nstep, nraw, nva, nvb);
        if (nstep == 0) next_page = page_at(ni + AQC_ATT_WARPS);
        {
            float f[4][8];   /* K of a, V of a, K of b, V of b */
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const half2 *h2 = (const half2 *)&raw[r];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float2 a = __half22float2(h2[e]);
                    f[r][2 * e] = a.x;
                    f[r][2 * e + 1] = a.y;
                }
            }
#pragma unroll
            for (int h = 0; h < MAXG; h++) {
                if (h >= group) break;
                float sa = 0.0f, sb = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    sa += qr[h][e] * f[0][e];
                    sb += qr[h][e] * f[2][e];
                }
                for (int o = cpk / 2; o > 0; o >>= 1) {
                    sa += __shfl_xor_sync(0xffffffffu, sa, o);
                    sb += __shfl_xor_sync(0xffffffffu, sb, o);
                }
                sa = va ? sa : -INFINITY;
                sb = vb ? sb : -INFINITY;
                float step_max = fmaxf(sa, sb);
                for (int o = cpk; o < 32; o <<= 1) step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, o));
                const float m_new = fmaxf(m[h], step_max);
                if (m_new == -INFINITY) continue;   /* same on every lane */
                const float corr = __expf(m[h] - m_new), pa = va ? __expf(sa - m_new) : 0.0f, pb = vb ? __expf(sb - m_new) : 0.0f;
                l[h] = l[h] * corr + (part == 0 ? pa + pb : 0.0f);
#pragma unroll
                for (int e = 0; e < 8; e++) acc[h][e] = acc[h][e] * corr + pa * f[1][e] + pb * f[3][e];
                m[h] = m_new;
            }
        }
#pragma unroll
        for (int r = 0; r < 4; r++) raw[r] = nraw[r];
        va = nva;
        vb = nvb;
        i = ni;
        step = nstep;
        page = npage;
    }
    /* lanes holding the same dimensions (same part) add up; lane 0 has the warp's sums.  A warp
       that had no page (a short context's splits, the same on every lane) only says so: the
       block's merge skips a warp whose max is -inf, and at head_dim 8 the sums are 45 shuffles
       a head */
    const bool had_pages = begin + warp < end;
#pragma unroll
    for (int h = 0; h < MAXG; h++) {
        if (had_pages) {
            for (int o = cpk; o < 32; o <<= 1)
#pragma unroll
                for (int e = 0; e < 8; e++) acc[h][e] += __shfl_xor_sync(0xffffffffu, acc[h][e], o);
            l[h] = aqc__warp_sum(l[h]);
        }
        if (h < group) {
            if (had_pages && key_in_step == 0)
#pragma unroll
                for (int e = 0; e < 8; e++) sm_acc[((size_t)warp * MAXG + h) * hd + part * 8 + e] = acc[h][e];
            if (lane == 0) { sm_m[warp][h] = m[h]; sm_l[warp][h] = l[h]; }
        }
    }
    aqc__attention_finish<MAXG>(kvh, split, splits, t, n_kv, hd, group, sm_acc, sm_m, sm_l, partial);
}

/* The attention block of a KV head shared by 2 to 8 query heads (head_dim 64 or 128,
   pages a multiple of 16), on tensor cores, as the shape of the work asks: per 16 keys the
   scores of all the group's heads are one 16 x 16 by 16 x 16 product (S = Q K^T, rows the query
   heads, unused rows zero), and their softmax-weighted values another (O += P V), where the
   other kernel spends four shuffles per key and head.  Each warp takes the split's pages in turn
   and copies 16 keys at a time (K and V, 8 KB at head_dim 128) into shared memory with cp.async,
   one tile ahead; rows past the context are zeros.  A row of a tile is 16-byte pieces at
   piece ^ (key % 8), so that ldmatrix's eight rows hit eight bank groups.
   f16 inputs would round q and the probabilities p to 11 bits; each is split into an f16 part
   and an f16 remainder (two products each), which keeps the products as exact as f32
   arithmetic.  The fragments line up as in FlashAttention-2: S's accumulator layout is P's
   operand layout, so p never leaves its registers. */
#define AQC_ATT_TC 0          /* the attention kernels' MAXG for this path */
#define AQC_TC_HEADS 8        /* query heads per KV head it takes */
#define AQC_TC_MAX_HD 128

/* Dynamic shared memory of the tensor-core block: two tiles per warp, or the warps' outputs. */
static size_t aqc__attention_tc_shared(int hd) {
    const size_t tiles = (size_t)AQC_ATT_WARPS * 2 * 2 * 16 * hd * sizeof(__half), outs = (size_t)AQC_ATT_WARPS * AQC_TC_HEADS * hd * 4;
    return tiles > outs ? tiles : outs;
}

__device__ __forceinline__ uint32_t aqc__half2_bits(half2 h) {
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}

/* (hi, lo): x0, x1 as f16, and what that rounding left out, as f16. */
__device__ __forceinline__ void aqc__split_f16(float x0, float x1, uint32_t *hi, uint32_t *lo) {
    const half2 h = __floats2half2_rn(x0, x1);
    const float2 f = __half22float2(h);
    *hi = aqc__half2_bits(h);
    *lo = aqc__half2_bits(__floats2half2_rn(x0 - f.x, x1 - f.y));
}

__device__ void aqc__attention_block_tc(int kvh, int split, int splits, int t, const __half *kv_layer, const int *lists,
                                        const int *list_len, int max_pages, const float *qkv, int qkv_dim, int n_kv, int hd,
                                        int page_size, int group, float scale, const int *pos_ptr, float *partial) {
    AQC_DYNAMIC_SHARED(uint4, tiles);   /* [warps][2][K, V][16 keys][hd / 8 pieces]; after the loop, [warps][heads][hd] f32 */
    __shared__ float sm_m[AQC_ATT_WARPS][AQC_TC_HEADS], sm_l[AQC_ATT_WARPS][AQC_TC_HEADS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int pos = *pos_ptr + t, last = pos / page_size, last_valid = pos - last * page_size + 1;   /* keys in the last page */
    const aqc__split_pages pages(lists, list_len, kvh, max_pages, last, split, splits);
    const int pieces = hd / 8, k_steps = hd / 16;
    /* q (scaled) as the A operand, row g = query head g of the group: per k-step its columns 2t..
       and 2t+8.. (rows g+8 are heads past 8: zero) */
    const float *q = qkv + (size_t)t * qkv_dim + (size_t)kvh * group * hd;
    uint32_t q_hi[AQC_TC_MAX_HD / 16][2], q_lo[AQC_TC_MAX_HD / 16][2];
#pragma unroll
    for (int ks = 0; ks < AQC_TC_MAX_HD / 16; ks++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int d = 16 * ks + 8 * half + 2 * tq;
            const bool real = g < group && ks < k_steps;
            aqc__split_f16(real ? q[(size_t)g * hd + d] * scale : 0.0f, real ? q[(size_t)g * hd + d + 1] * scale : 0.0f, &q_hi[ks][half],
                           &q_lo[ks][half]);
        }
    float o[AQC_TC_MAX_HD / 8][4], m = -INFINITY, l = 0.0f;   /* o[n-tile]: dims 8j + 2t, +1 of head g (and unused rows) */
#pragma unroll
    for (int j = 0; j < AQC_TC_MAX_HD / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    uint4 *buf = tiles + (size_t)warp * 2 * 2 * 16 * pieces;
    auto slot = [&](int key, int piece) { return key * pieces + (piece ^ (key & 7)); };
    /* A lane copies the same 16-byte piece of every (32 / pieces)-th key: pieces is 8 or 16, so
       no division (one per copy by a variable cost ~20 instructions each, more than the copies). */
    const int pieces_shift = aqc__log2(pieces), my_piece = lane & (pieces - 1), key_step = 32 >> pieces_shift;
    /* the warp's next tile: list index i, first key k0; the tiles of its pages in turn */
    int next_i = pages.begin + warp, next_k0 = 0;
    /* the next tile into buffer b: its number of keys in the context (0: none) */
    auto issue = [&](int b) {
        const int i = next_i, k0 = next_k0;
        next_k0 += 16;
        if (next_k0 == page_size) { next_k0 = 0; next_i += AQC_ATT_WARPS; }
        if (i >= pages.end) return 0;
        const int page = pages.page(i);
        const int n_valid = (page == last ? last_valid : page_size) - k0;
        if (n_valid <= 0) return 0;
        const __half *K = kv_layer + ((size_t)page * n_kv + kvh) * 2 * page_size * hd + (size_t)k0 * hd, *V = K + (size_t)page_size * hd;
        uint4 *dst = buf + (size_t)b * 2 * 16 * pieces;
        for (int key = lane >> pieces_shift; key < 16; key += key_step) {
            const int s = slot(key, my_piece);
            if (key < n_valid) {
                aqc__cp_async16(dst + s, K + (size_t)key * hd + my_piece * 8);
                aqc__cp_async16(dst + 16 * pieces + s, V + (size_t)key * hd + my_piece * 8);
            } else {
                dst[s] = make_uint4(0, 0, 0, 0);
                dst[16 * pieces + s] = make_uint4(0, 0, 0, 0);
            }
        }
        return n_valid < 16 ? n_valid : 16;
    };
    int valid = issue(0);
    aqc__cp_async_commit();
    for (int j = 0; valid; j++) {
        const int next = issue((j + 1) & 1);
        aqc__cp_async_commit();
        if (next) aqc__cp_async_wait<1>();
        else aqc__cp_async_wait<0>();
        __syncwarp();
        const uint4 *Kt = buf + (size_t)(j & 1) * 2 * 16 * pieces, *Vt = Kt + 16 * pieces;
        const int mi = lane / 8;
        /* S = Q K^T: n-tile 0 keys 0-7, n-tile 1 keys 8-15; ldmatrix's four matrices are (keys
           0-7, 8-15) x (the k-step's two 8-dim pieces) */
        /* q's f16 part and its remainder go to separate accumulators: four chains of k_steps
           products, not two of twice that, each product waiting for the one before it */
        float sc[2][2][4] = {};   /* [n-tile][hi, lo] */
#pragma unroll
        for (int ks = 0; ks < AQC_TC_MAX_HD / 16; ks++) {
            if (ks >= k_steps) break;
            uint32_t r[4];
            aqc__ldmatrix_x4(r, Kt + slot(8 * (mi >> 1) + lane % 8, 2 * ks + (mi & 1)));
            const uint32_t hi[4] = {q_hi[ks][0], 0u, q_hi[ks][1], 0u}, lo[4] = {q_lo[ks][0], 0u, q_lo[ks][1], 0u};
            const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
            aqc__mma_16816(sc[0][0], hi, b0);
            aqc__mma_16816(sc[0][1], lo, b0);
            aqc__mma_16816(sc[1][0], hi, b1);
            aqc__mma_16816(sc[1][1], lo, b1);
        }
        /* online softmax of head g over keys 2t, 2t+1, 2t+8, 2t+9 (the four lanes of a row hold the 16) */
        float x[4] = {sc[0][0][0] + sc[0][1][0], sc[0][0][1] + sc[0][1][1], sc[1][0][0] + sc[1][1][0], sc[1][0][1] + sc[1][1][1]}, p[4];
        float mx = -INFINITY;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            if (2 * tq + (e & 1) + 8 * (e >> 1) >= valid) x[e] = -INFINITY;
            mx = fmaxf(mx, x[e]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m, mx);   /* finite: a tile's first key is in the context */
        const float corr = __expf(m - m_new);
#pragma unroll
        for (int e = 0; e < 4; e++) p[e] = __expf(x[e] - m_new);
        l = l * corr + (p[0] + p[1]) + (p[2] + p[3]);
        m = m_new;
        uint32_t p_hi[4] = {0u, 0u, 0u, 0u}, p_lo[4] = {0u, 0u, 0u, 0u};
        aqc__split_f16(p[0], p[1], &p_hi[0], &p_lo[0]);
        aqc__split_f16(p[2], p[3], &p_hi[2], &p_lo[2]);
        /* O += P V: ldmatrix.trans's four matrices are (keys 0-7, 8-15) x (n-tiles jn, jn+1) */
#pragma unroll
        for (int jn = 0; jn < AQC_TC_MAX_HD / 8; jn += 2) {
            if (jn >= pieces) break;
            uint32_t r[4];
            aqc__ldmatrix_x4_trans(r, Vt + slot(8 * (mi & 1) + lane % 8, jn + (mi >> 1)));
            const uint32_t b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
            o[jn][0] *= corr;
            o[jn][1] *= corr;
            o[jn + 1][0] *= corr;
            o[jn + 1][1] *= corr;
            aqc__mma_16816(o[jn], p_hi, b0);
            aqc__mma_16816(o[jn], p_lo, b0);
            aqc__mma_16816(o[jn + 1], p_hi, b1);
            aqc__mma_16816(o[jn + 1], p_lo, b1);
        }
        __syncwarp();   /* the buffer is refilled two tiles on */
        valid = next;
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    __syncthreads();   /* every warp is done with its tiles: the memory takes the outputs */
    float *sm_acc = (float *)tiles;
    if (g < group) {
#pragma unroll
        for (int jn = 0; jn < AQC_TC_MAX_HD / 8; jn++) {
            if (jn >= pieces) break;
            sm_acc[((size_t)warp * AQC_TC_HEADS + g) * hd + 8 * jn + 2 * tq] = o[jn][0];
            sm_acc[((size_t)warp * AQC_TC_HEADS + g) * hd + 8 * jn + 2 * tq + 1] = o[jn][1];
        }
        if (tq == 0) { sm_m[warp][g] = m; sm_l[warp][g] = l; }
    }
    aqc__attention_finish<AQC_TC_HEADS>(kvh, split, splits, t, n_kv, hd, group, sm_acc, sm_m, sm_l, partial);
}

/* Block (kvh, split, t): through the tensor-core path (MAXG AQC_ATT_TC) or the other. */
template <int MAXG>
__global__ void __launch_bounds__(AQC_ATT_WARPS * 32)
aqc_attention_kernel(const __half *kv_layer, const int *lists, const int *list_len, int max_pages, const float *qkv,
                     int qkv_dim, int n_kv, int hd, int page_size, int group, float scale, const int *pos_ptr, float *partial) {
    aqc__enter();
    if constexpr (MAXG == AQC_ATT_TC)
        aqc__attention_block_tc(blockIdx.x, blockIdx.y, gridDim.y, blockIdx.z, kv_layer, lists, list_len, max_pages, qkv, qkv_dim, n_kv,
                                hd, page_size, group, scale, pos_ptr, partial);
    else
        aqc__attention_block<MAXG>(blockIdx.x, blockIdx.y, gridDim.y, blockIdx.z, kv_layer, lists, list_len, max_pages, qkv, qkv_dim,
                                   n_kv, hd, page_size, group, scale, pos_ptr, partial);
}

/* Quest's selection and sparse attention in one grid, an experiment timed beside the kernels a
   step launches (kernels/NOTES.md, eleventh session; the seventh session's variant 64 did the
   same with the kernels of its day, 10% faster at 32 KV heads and 12% slower at 8).  Blocks
   take tickets as they start: the first select_blocks per KV head score pages
   (aqc__score_pages), the last of a head's to finish selects (aqc__pick_pages, or lists every
   page within the budget) and raises the head's flag; the others are the attention's (KV head,
   split) blocks, which wait for their head's flag and then run aqc__attention_block.  A block
   waits only for blocks that started before it, so the grid cannot deadlock however few of its
   blocks are resident; a wait of seconds traps (a fault, not a hang).  The merge follows as its
   own kernel.  sync: AQC_ONEPASS_SYNC(n_kv) zeros, left zeros (the last attention block of a head
   lowers its flag, the grid's last block resets the tickets).  MAXG: the register attention (1,
   4 or 8), whose scoring blocks keep the occupancy of the score kernel, or the tensor-core one
   (AQC_ATT_TC: the step's own for grouped KV heads, but its 64 KB of shared memory a block are
   every scoring block's too, which halves how many fit).  8-bit bounds only (the case that could
   make 6x; each instance is a long compile for every architecture). */
#define AQC_ONEPASS_SYNC(n_kv) (2 + 3 * (n_kv))   /* tickets, blocks finished, then per KV head: scorers done, flag, readers done */
template <int MAXG>
__global__ void __launch_bounds__(AQC_ATT_WARPS * 32, MAXG == 1 ? AQC_SCORE_BLOCKS_PER_SM : 1)   /* one head: the two kernels' 6 a multiprocessor */
aqc_quest_onepass_kernel(const float *qkv, int qkv_dim, aqc__bounds bounds, const __half *kv_layer, int n_heads, int page_size,
                         int budget, const int *pos_ptr, float *scores, unsigned *sync, int *lists, int *list_len, int select_blocks,
                         int splits, float scale, float *partial) {
    static_assert(AQC_ATT_WARPS == AQC_SCORE_WARPS, "one block size for both roles");
    __shared__ unsigned s_ticket;
    aqc__enter();
    const int n_kv = bounds.n_kv, max_pages = bounds.max_pages, pos = *pos_ptr;
    unsigned *tickets = sync, *finished = sync + 1, *done = sync + 2, *ready = done + n_kv, *readers = ready + n_kv;
    if (threadIdx.x == 0) s_ticket = atomicAdd(tickets, 1u);
    __syncthreads();
    const int t = (int)s_ticket;
    if (t < n_kv * select_blocks) {
        const int kvh = t / select_blocks;
        if (aqc__score_then_pick<8>(t % select_blocks, select_blocks, kvh, qkv, bounds, n_heads, page_size, budget, pos, scores, done,
                                    lists, list_len)) {
            __threadfence();   /* the list reaches L2 before the flag */
            __syncthreads();
            if (threadIdx.x == 0) atomicExch(ready + kvh, 1u);
        }
    } else {
        const int a = t - n_kv * select_blocks, kvh = a / splits, split = a % splits;
        if (threadIdx.x == 0) {
            const long long start = clock64();
            while (atomicAdd(ready + kvh, 0u) == 0u) {
                __nanosleep(128);
                if (clock64() - start > (1ll << 32)) __trap();   /* ~2 s: the flag is never coming */
            }
            __threadfence();
        }
        __syncthreads();
        if constexpr (MAXG == AQC_ATT_TC)
            aqc__attention_block_tc(kvh, split, splits, 0, kv_layer, lists, list_len, max_pages, qkv, qkv_dim, n_kv, bounds.hd, page_size,
                                    n_heads / n_kv, scale, pos_ptr, partial);
        else
            aqc__attention_block<MAXG>(kvh, split, splits, 0, kv_layer, lists, list_len, max_pages, qkv, qkv_dim, n_kv, bounds.hd,
                                       page_size, n_heads / n_kv, scale, pos_ptr, partial);
        __syncthreads();   /* every thread is past its reads of the list */
        if (threadIdx.x == 0 && atomicAdd(readers + kvh, 1u) == (unsigned)splits - 1) {
            readers[kvh] = 0;
            atomicExch(ready + kvh, 0u);
        }
    }
    if (threadIdx.x == 0 && atomicAdd(finished, 1u) == gridDim.x - 1) {
        *finished = 0;
        *tickets = 0;
    }
}

/* Block (query head, token): the head's output from its splits' records (partial, [token][KV
   head][split][query head of the group][aqc__partial_floats(hd)]).  The merge is on the critical
   path of every attention, and what it costs is round trips to L2 (the partials come from the
   attention kernel through L2), so a block per query head spreads it over AQC_MERGE_THREADS
   threads: warp 0 finds the max and the softmax sum (one load per split and lane, up to
   AQC_MAX_SPLITS); then thread (slice, quad) sums output values 4 quad .. 4 quad + 3 over splits
   slice, slice + slices, ..., each split's weight worked out again beside its load, so that the
   loads of a sum do not wait for one another; the slices' sums are added in slice order, so the
   result is the same every run.  With a hundred splits that is a few round trips where a thread
   per four values summing every split needed a dozen.
   With xh (a decode step, head_dim a multiple of 32) the block also preps the head's outputs as
   the o projection's input (aqc__prep_chunk, as aqc_prep_kernel would, chunk by chunk: the
   chunks of a head are its own), and the prep kernel of that GEMV goes. */
#define AQC_MERGE_THREADS 256
#define AQC_MERGE_AHEAD 4   /* a thread's records requested before the head's max is known (16 splits: all of them) */
__global__ void __launch_bounds__(AQC_MERGE_THREADS) aqc_attention_merge_kernel(const float *partial, int n_kv, int group, int hd,
                                                                                 int splits, float *out, int64_t out_stride, __half *xh,
                                                                                 float *xscale, float *xsum) {
    __shared__ float head_stats[2];
    __shared__ float4 slice_sums[AQC_MERGE_THREADS];
    constexpr int PER_LANE = AQC_MAX_SPLITS / 32;
    aqc__enter();
    const int head = blockIdx.x, t = blockIdx.y, rec = aqc__partial_floats(hd);
    const size_t stride = (size_t)group * rec;
    const float *base = partial + ((size_t)t * n_kv + head / group) * splits * stride + (size_t)(head % group) * rec;
    float *o = out + (size_t)t * out_stride + (size_t)head * hd;
    /* thread (slice, quad) sums four output values over every slices-th split from `slice`; the
       first AQC_MERGE_AHEAD of its splits' records are requested here, before the head's max is
       known, so that their trip to L2 overlaps warp 0's */
    const int quads_shift = aqc__log2(hd / 4), quads = 1 << quads_shift;   /* head_dim is a power of two */
    const int slices = (int)blockDim.x >= 2 * quads ? (int)blockDim.x >> quads_shift : 1;
    const int quad = threadIdx.x & (quads - 1), slice = threadIdx.x >> quads_shift;
    const bool summing = (int)threadIdx.x < quads * slices;
    float ahead_m[AQC_MERGE_AHEAD];
    float4 ahead_v[AQC_MERGE_AHEAD];
#pragma unroll
    for (int k = 0; k < AQC_MERGE_AHEAD; k++) {
        const int sp = slice + k * slices;
        ahead_m[k] = -INFINITY;
        ahead_v[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (summing && sp < splits) {
            ahead_m[k] = __ldcg(base + sp * stride);
            ahead_v[k] = __ldcg((const float4 *)(base + sp * stride + AQC_PARTIAL_PAD + 4 * quad));
        }
    }
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        float m[PER_LANE], l[PER_LANE], M = -INFINITY, L = 0.0f;
#pragma unroll
        for (int j = 0; j < PER_LANE; j++) {
            const int sp = lane + 32 * j;
            m[j] = sp < splits ? __ldcg(base + sp * stride) : -INFINITY;
            l[j] = sp < splits ? __ldcg(base + sp * stride + 1) : 0.0f;
            M = fmaxf(M, m[j]);
        }
        M = aqc__warp_max(M);
#pragma unroll
        for (int j = 0; j < PER_LANE; j++)
            if (m[j] != -INFINITY) L += __expf(m[j] - M) * l[j];
        L = aqc__warp_sum(L);
        if (lane == 0) { head_stats[0] = M; head_stats[1] = L; }
    }
    __syncthreads();
    const float M = head_stats[0], L = head_stats[1];
    if (summing) {
        float4 O = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        auto add = [&](float m, float4 v) {
            const float f = m == -INFINITY ? 0.0f : __expf(m - M);
            O.x += f * v.x;
            O.y += f * v.y;
            O.z += f * v.z;
            O.w += f * v.w;
        };
#pragma unroll
        for (int k = 0; k < AQC_MERGE_AHEAD; k++) add(ahead_m[k], ahead_v[k]);   /* splits past the end add zero */
#pragma unroll 4
        for (int sp = slice + AQC_MERGE_AHEAD * slices; sp < splits; sp += slices)
            add(__ldcg(base + sp * stride), __ldcg((const float4 *)(base + sp * stride + AQC_PARTIAL_PAD + 4 * quad)));
        if (slices > 1) slice_sums[threadIdx.x] = O;
        else *(float4 *)(o + 4 * quad) = make_float4(O.x / L, O.y / L, O.z / L, O.w / L);
    }
    if (slices > 1) {
        __syncthreads();
        for (int quad = threadIdx.x; quad < quads; quad += blockDim.x) {
            float4 O = slice_sums[quad];
            for (int sl = 1; sl < slices; sl++) {
                const float4 v = slice_sums[sl * quads + quad];
                O.x += v.x;
                O.y += v.y;
                O.z += v.z;
                O.w += v.w;
            }
            *(float4 *)(o + 4 * quad) = make_float4(O.x / L, O.y / L, O.z / L, O.w / L);
        }
    }
    if (!xh) return;
    __syncthreads();   /* the head's outputs, written above, are what the prep reads */
    const int lane = threadIdx.x % 32, first = head * hd / 32;
    for (int c = threadIdx.x / 32; c < hd / 32; c += blockDim.x / 32)
        aqc__prep_chunk(o[c * 32 + lane], 1, [&](__half h, float scale, float sum) {
            xh[(size_t)(first + c) * 32 + lane] = h;
            if (lane == 0) { xscale[first + c] = scale; xsum[first + c] = sum; }
        });
}

/* ---- sampling side ---- */

/* The argmax's and the sampler's block over n logits: the smallest power of two of threads
   that covers them, 32 to 1024 (the argmax's tree needs a power of two; a 512-token vocabulary
   takes 512 threads, not 1024 of which half would only wait at the barriers). */
static int aqc__vocab_threads(int n) {
    int threads = 32;
    while (threads < n && threads < 1024) threads *= 2;
    return threads;
}

/* Index of the largest logit (the lowest index among equals), into state[AQC_NEXT]; a block of
   aqc__vocab_threads(n) threads. */
__global__ void aqc_argmax_kernel(const float *logits, int n, int *state) {
    __shared__ float best_v[1024];
    __shared__ int best_i[1024];
    aqc__enter();
    float v = -INFINITY;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (logits[i] > v) { v = logits[i]; idx = i; }
    best_v[threadIdx.x] = v;
    best_i[threadIdx.x] = idx;
    __syncthreads();
    for (int off = blockDim.x / 2; off > 0; off >>= 1) {
        if ((int)threadIdx.x < off) {
            float ov = best_v[threadIdx.x + off];
            int oi = best_i[threadIdx.x + off];
            if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
                best_v[threadIdx.x] = ov;
                best_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) state[AQC_NEXT] = best_i[0] == 0x7fffffff ? 0 : best_i[0];
}

/* A draw with the CPU sampler's rules (aq_sampler_sample without the repetition penalty): the
   top_k largest logits (ties to the lower id), sorted, softmax at the temperature, cut by top_p
   and then by min_p, and the token where the uniform r (the host sampler's own RNG draw) falls
   in the cumulative probabilities.  One block; top_k <= AQC_SAMPLE_MAX_K. */
#define AQC_SAMPLE_MAX_K 1024
__global__ void __launch_bounds__(AQC_TOPK_THREADS, 1)
aqc_sample_kernel(const float *logits, int n, float temperature, int top_k, float top_p, float min_p, float r, int *state) {
    __shared__ int cand[AQC_SAMPLE_MAX_K], sorted_id[AQC_SAMPLE_MAX_K];
    __shared__ float sorted_p[AQC_SAMPLE_MAX_K];
    aqc__enter();
    aqc__block_top_k<0>(logits, n, top_k, cand);
    __syncthreads();
    for (int i = threadIdx.x; i < top_k; i += blockDim.x) {   /* rank sort: descending, ties by id */
        const float v = logits[cand[i]];
        int rank = 0;
        for (int j = 0; j < top_k; j++) {
            const float u = logits[cand[j]];
            rank += u > v || (u == v && cand[j] < cand[i]);
        }
        sorted_p[rank] = v / temperature;
        sorted_id[rank] = cand[i];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int m = top_k, i;
        float mx = sorted_p[0], sum = 0.0f;
        for (i = 0; i < m; i++) { sorted_p[i] = expf(sorted_p[i] - mx); sum += sorted_p[i]; }
        for (i = 0; i < m; i++) sorted_p[i] /= sum;
        if (top_p < 1.0f) {
            float cum = 0.0f;
            for (i = 0; i < m; i++) {
                cum += sorted_p[i];
                if (cum >= top_p) { m = i + 1; break; }
            }
        }
        if (min_p > 0.0f) {
            const float floor_p = min_p * sorted_p[0];
            for (i = 1; i < m; i++)
                if (sorted_p[i] < floor_p) { m = i; break; }
        }
        sum = 0.0f;
        for (i = 0; i < m; i++) sum += sorted_p[i];
        r *= sum;
        for (i = 0; i < m - 1; i++) {
            r -= sorted_p[i];
            if (r < 0.0f) break;
        }
        state[AQC_NEXT] = sorted_id[i];
    }
}

/* Benchmarks: a kernel that does nothing but take its turn (the cost of a launch and its
   boundary with the kernel before). */
__global__ void aqc_empty_kernel(void) { aqc__enter(); }

/* Benchmarks and checks: uniform values in [-1, 1) from a counter-based hash. */
__global__ void aqc_fill_random_kernel(__half *dst, int64_t n, uint64_t seed) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        uint64_t z = seed + (uint64_t)i * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        dst[i] = __float2half((float)(z >> 40) / (float)(1ull << 23) - 1.0f);
    }
}

static cudaError_t aqc__fill_random(__half *dst, int64_t n, uint64_t seed, cudaStream_t st) {
    const int64_t blocks = std::min<int64_t>(2048, std::max<int64_t>(1, (n + 255) / 256));
    return aqc__launch(false, aqc_fill_random_kernel, dim3((unsigned)blocks), dim3(256), 0, st, dst, n, seed);
}

/* ======================================================================================
   Host side: device objects, upload, the forward pass.
   ====================================================================================== */

struct aqc__weight {
    int format;
    int64_t rows, cols, kp, group;
    void *data;
    __half *scales, *mins;
    half2 *lut;                  /* OVP: [2][256] decoded pairs */
    bool stage_major;            /* int4 codes stage by stage (aqc__weight_to_stages; an experiment, decode GEMVs only) */
};

struct aqc_model {
    aqc_config c;
    aqc__weight tok_embd, output;
    int output_tied;
    std::vector<aqc__weight> qkv, wo, gate_up, down;
    std::vector<float *> attn_norm, ffn_norm;
    float *output_norm;
    uint64_t bytes;
};

struct aqc_session {
    const aqc_model *m;
    aqc_session_config c;
    cudaStream_t stream;
    cublasHandle_t blas;
    int max_pages, splits, quest_splits, n_sms, qkv_dim;   /* splits: dense attention's; quest_splits: over a selection */
    int64_t x_ld;                /* row stride of the prepped activations (widest padded input) */
    __half *kv;                  /* all layers */
    unsigned char *bounds;       /* all layers (aqc__bounds_of) */
    size_t kv_layer_elems, bounds_layer_bytes;
    float *scores;               /* [n_kv][max_pages] */
    int *lists, *list_len;       /* [n_kv][max_pages], [n_kv] */
    unsigned *onepass_sync;      /* aqc_quest_onepass_kernel's, zeros (AQC_ONEPASS_SYNC) */
    bool quest_one_grid;         /* aqc_session_set_quest_one_grid */
    bool pdl;                    /* programmatic dependent launches (sm_90 and newer) */
    float *partial;
    float *x, *qkv, *att, *hb, *logits;
    __half *xh;
    float *xscale, *xsum;
    __half *wtmp;                /* a dequantized int4 matrix for prompt GEMMs */
    int *state, *ids;
    int *host_state;             /* pinned: token and position in, next token out */
    cudaGraphExec_t graph;
    int graph_ready;
    struct aqc__profile *prof;   /* aqc_profile_step's events, kept for its next call */
};

/* aqc_profile_step's events: one after each stage of a step, named by the stage. */
struct aqc__profile {
    std::vector<cudaEvent_t> events;
    std::vector<const char *> names;
    size_t used;
    bool on;   /* while aqc_profile_step captures its step */
    ~aqc__profile() { for (size_t i = 0; i < events.size(); i++) cudaEventDestroy(events[i]); }
};

/* An event after the stage `name` while aqc_profile_step captures its step (p may be NULL). */
static int aqc__mark(aqc__profile *p, cudaStream_t st, const char *name, char *err, size_t err_len) {
    if (!p || !p->on) return 0;
    if (p->used == p->events.size()) {
        cudaEvent_t e;
        AQC_TRY(cudaEventCreate(&e));
        p->events.push_back(e);
        p->names.push_back(name);
    }
    p->names[p->used] = name;
    /* External: a node of the captured graph (a plain record in a capture only orders it) */
    AQC_TRY(cudaEventRecordWithFlags(p->events[p->used++], st, cudaEventRecordExternal));
    return 0;
}

static int aqc__malloc(void **p, size_t bytes, const char *what, char *err, size_t err_len) {
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *p = NULL;
        aqc__err(err, err_len, "CUDA: cannot allocate %.1f MiB of device memory for %s: %s", (double)bytes / 1048576.0, what,
                 cudaGetErrorString(e));
        return -1;
    }
#ifdef AQE_NAME_ALLOCATION
    AQE_NAME_ALLOCATION(*p, what);   /* tests/cuda_emu counts the kernels' loads from each kind of buffer */
#endif
    return 0;
}

static void aqc__weight_free(aqc__weight *w) {
    cudaFree(w->data);
    cudaFree(w->scales);
    cudaFree(w->mins);
    cudaFree(w->lut);
    memset(w, 0, sizeof *w);
}

static int aqc__weight_upload(aqc__weight *dst, const aqc_weight *w, char *err, size_t err_len) {
    size_t data_bytes;
    if (w->format == AQC_INT4 || w->format == AQC_OVP) {
        if ((w->group != 32 && w->group != 64 && w->group != 128) || w->cols_padded % w->group || w->cols_padded < w->cols ||
            (w->format == AQC_OVP && !w->ovp_table)) {
            aqc__err(err, err_len, "4-bit weight: group %lld (must be 32, 64 or 128) and padded width %lld do not fit", (long long)w->group,
                     (long long)w->cols_padded);
            return -1;
        }
        data_bytes = (size_t)w->rows * (size_t)w->cols_padded / 2;
    } else if (w->format == AQC_F16) {
        if (w->cols_padded % 32 || w->cols_padded < w->cols) {
            aqc__err(err, err_len, "f16 weight: padded width %lld is not a multiple of 32", (long long)w->cols_padded);
            return -1;
        }
        data_bytes = (size_t)w->rows * (size_t)w->cols_padded * 2;
    } else {
        aqc__err(err, err_len, "unknown weight format %d", w->format);
        return -1;
    }
    aqc__weight_free(dst);
    dst->format = w->format;
    dst->rows = w->rows;
    dst->cols = w->cols;
    dst->kp = w->cols_padded;
    dst->group = w->group;
    if (aqc__malloc(&dst->data, data_bytes, "a weight matrix", err, err_len)) return -1;
    AQC_TRY(cudaMemcpy(dst->data, w->data, data_bytes, cudaMemcpyHostToDevice));
    if (w->format == AQC_OVP) {
        half2 lut[512];
        for (int i = 0; i < 512; i++) lut[i] = __floats2half2_rn(w->ovp_table[2 * i], w->ovp_table[2 * i + 1]);
        if (aqc__malloc((void **)&dst->lut, sizeof lut, "the OliVe table", err, err_len)) return -1;
        AQC_TRY(cudaMemcpy(dst->lut, lut, sizeof lut, cudaMemcpyHostToDevice));
    }
    if (w->format != AQC_F16) {
        size_t sb = (size_t)w->rows * (size_t)(w->cols_padded / w->group) * 2;
        if (aqc__malloc((void **)&dst->scales, sb, "int4 scales", err, err_len) ||
            aqc__malloc((void **)&dst->mins, sb, "int4 offsets", err, err_len))
            return -1;
        AQC_TRY(cudaMemcpy(dst->scales, w->scales, sb, cudaMemcpyHostToDevice));
        AQC_TRY(cudaMemcpy(dst->mins, w->mins, sb, cudaMemcpyHostToDevice));
    }
    return 0;
}

/* Chunk c of row r (row by row) to its place stage by stage (aqc_gemv_4bit_kernel). */
__global__ void aqc_codes_to_stages_kernel(const uint4 *src, uint4 *dst, int64_t rows, int n_chunks) {
    const int stage_chunks = 32 * AQC_GEMV_STAGE;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * n_chunks; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / n_chunks;
        const int c = (int)(i % n_chunks), c0 = c - c % stage_chunks;
        dst[(int64_t)c0 * rows + r * min(stage_chunks, n_chunks - c0) + (c - c0)] = src[i];
    }
}

/* A 4-bit weight's codes, uploaded row by row, rearranged stage by stage (an experiment). */
static int aqc__weight_to_stages(aqc__weight *w, char *err, size_t err_len) {
    if (w->format != AQC_INT4) { aqc__err(err, err_len, "stage by stage: int4 weights only"); return -1; }
    const size_t bytes = (size_t)w->rows * (size_t)w->kp / 2;
    void *dst = NULL;
    if (aqc__malloc(&dst, bytes, "a weight matrix", err, err_len)) return -1;
    if (aqc__cuda_failed(aqc__launch(false, aqc_codes_to_stages_kernel, dim3(1024), dim3(256), 0, 0, (const uint4 *)w->data,
                                     (uint4 *)dst, w->rows, (int)(w->kp / 32)), "codes to stages", err, err_len) ||
        aqc__cuda_failed(cudaDeviceSynchronize(), "codes to stages", err, err_len)) {
        cudaFree(dst);
        return -1;
    }
    cudaFree(w->data);
    w->data = dst;
    w->stage_major = true;
    return 0;
}

static uint64_t aqc__weight_bytes(const aqc__weight *w) {
    if (!w->data) return 0;
    return w->format != AQC_F16 ? (uint64_t)w->rows * w->kp / 2 + 2 * (uint64_t)w->rows * (w->kp / w->group) * 2
                                : (uint64_t)w->rows * w->kp * 2;
}

extern "C" int aqc_device_name(char *name, size_t name_len, char *err, size_t err_len) {
    int n = 0;
    cudaDeviceProp prop;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) { aqc__err(err, err_len, "no usable CUDA device: %s", cudaGetErrorString(e)); return -1; }
    if (n == 0) { aqc__err(err, err_len, "no CUDA device"); return -1; }
    AQC_TRY(cudaGetDeviceProperties(&prop, 0));
    if (prop.major < 8) {
        aqc__err(err, err_len, "%s is compute capability %d.%d; the kernels need 8.0 or newer", prop.name, prop.major, prop.minor);
        return -1;
    }
    if (name && name_len) snprintf(name, name_len, "%s (sm_%d%d, %.0f GiB)", prop.name, prop.major, prop.minor,
                                   (double)prop.totalGlobalMem / 1073741824.0);
    return 0;
}

extern "C" aqc_model *aqc_model_new(const aqc_config *c, char *err, size_t err_len) {
    aqc_model *m;
    if (c->head_dim <= 0 || c->head_dim % 8 || (32 % (c->head_dim / 8)) || c->head_dim > AQC_MAX_HD) {
        aqc__err(err, err_len, "the GPU path needs head_dim 8, 16, 32, 64, 128 or 256 (this model has %d)", c->head_dim);
        return NULL;
    }
    if (c->n_heads / c->n_kv_heads > AQC_MAX_GROUP) {
        aqc__err(err, err_len, "the GPU path handles up to 8 query heads per KV head (this model has %d)", c->n_heads / c->n_kv_heads);
        return NULL;
    }
    m = new aqc_model();
    m->c = *c;
    m->qkv.resize(c->n_layers); m->wo.resize(c->n_layers); m->gate_up.resize(c->n_layers); m->down.resize(c->n_layers);
    m->attn_norm.assign(c->n_layers, (float *)NULL);
    m->ffn_norm.assign(c->n_layers, (float *)NULL);
    m->output_norm = NULL;
    memset(&m->tok_embd, 0, sizeof m->tok_embd);
    memset(&m->output, 0, sizeof m->output);
    m->output_tied = 0;
    m->bytes = 0;
    for (int l = 0; l < c->n_layers; l++) {
        memset(&m->qkv[l], 0, sizeof(aqc__weight)); memset(&m->wo[l], 0, sizeof(aqc__weight));
        memset(&m->gate_up[l], 0, sizeof(aqc__weight)); memset(&m->down[l], 0, sizeof(aqc__weight));
    }
    return m;
}

extern "C" void aqc_model_free(aqc_model *m) {
    if (!m) return;
    for (int l = 0; l < m->c.n_layers; l++) {
        aqc__weight_free(&m->qkv[l]); aqc__weight_free(&m->wo[l]); aqc__weight_free(&m->gate_up[l]); aqc__weight_free(&m->down[l]);
        cudaFree(m->attn_norm[l]);
        cudaFree(m->ffn_norm[l]);
    }
    aqc__weight_free(&m->tok_embd);
    if (!m->output_tied) aqc__weight_free(&m->output);
    cudaFree(m->output_norm);
    delete m;
}

extern "C" int aqc_model_set_weight(aqc_model *m, int layer, int slot, const aqc_weight *w, char *err, size_t err_len) {
    const aqc_config *c = &m->c;
    aqc__weight *dst;
    int64_t rows, cols;
    if (layer < 0) {
        if (slot == AQC_TOK_EMBD) { dst = &m->tok_embd; rows = c->n_vocab; cols = c->n_embd; }
        else if (slot == AQC_OUTPUT) { dst = &m->output; rows = c->n_vocab; cols = c->n_embd; }
        else { aqc__err(err, err_len, "weight slot %d is not a model-level slot", slot); return -1; }
        if (slot == AQC_TOK_EMBD && w->format != AQC_F16) { aqc__err(err, err_len, "the embedding table must be f16"); return -1; }
    } else if (layer < c->n_layers) {
        int64_t q_dim = (int64_t)c->n_heads * c->head_dim, kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
        switch (slot) {
        case AQC_QKV: dst = &m->qkv[layer]; rows = q_dim + 2 * kv_dim; cols = c->n_embd; break;
        case AQC_WO: dst = &m->wo[layer]; rows = c->n_embd; cols = q_dim; break;
        case AQC_GATE_UP: dst = &m->gate_up[layer]; rows = 2 * (int64_t)c->n_ff; cols = c->n_embd; break;
        case AQC_DOWN: dst = &m->down[layer]; rows = c->n_embd; cols = c->n_ff; break;
        default: aqc__err(err, err_len, "weight slot %d is not a layer slot", slot); return -1;
        }
    } else {
        aqc__err(err, err_len, "layer %d is out of range [0, %d)", layer, c->n_layers);
        return -1;
    }
    if (w->rows != rows || w->cols != cols) {
        aqc__err(err, err_len, "weight (layer %d, slot %d) is %lld x %lld, the model needs %lld x %lld", layer, slot,
                 (long long)w->rows, (long long)w->cols, (long long)rows, (long long)cols);
        return -1;
    }
    m->bytes -= aqc__weight_bytes(dst);
    if (aqc__weight_upload(dst, w, err, err_len)) return -1;
    m->bytes += aqc__weight_bytes(dst);
    return 0;
}

extern "C" int aqc_model_tie_output(aqc_model *m, char *err, size_t err_len) {
    if (!m->tok_embd.data) { aqc__err(err, err_len, "tie_output: the embedding table is not uploaded yet"); return -1; }
    m->output = m->tok_embd;
    m->output_tied = 1;
    return 0;
}

extern "C" int aqc_model_set_norm(aqc_model *m, int layer, int slot, const float *w, char *err, size_t err_len) {
    float **dst;
    if (layer < 0 && slot == AQC_OUTPUT_NORM) dst = &m->output_norm;
    else if (layer >= 0 && layer < m->c.n_layers && slot == AQC_ATTN_NORM) dst = &m->attn_norm[layer];
    else if (layer >= 0 && layer < m->c.n_layers && slot == AQC_FFN_NORM) dst = &m->ffn_norm[layer];
    else { aqc__err(err, err_len, "norm (layer %d, slot %d) does not exist", layer, slot); return -1; }
    if (!*dst && aqc__malloc((void **)dst, (size_t)m->c.n_embd * 4, "a norm vector", err, err_len)) return -1;
    AQC_TRY(cudaMemcpy(*dst, w, (size_t)m->c.n_embd * 4, cudaMemcpyHostToDevice));
    return 0;
}

extern "C" uint64_t aqc_model_bytes(const aqc_model *m) { return m->bytes; }

static int aqc__model_complete(const aqc_model *m, char *err, size_t err_len) {
    if (!m->tok_embd.data || !m->output.data || !m->output_norm) { aqc__err(err, err_len, "GPU model: embedding, output or output norm missing"); return -1; }
    for (int l = 0; l < m->c.n_layers; l++)
        if (!m->qkv[l].data || !m->wo[l].data || !m->gate_up[l].data || !m->down[l].data || !m->attn_norm[l] || !m->ffn_norm[l]) {
            aqc__err(err, err_len, "GPU model: layer %d is not uploaded completely", l);
            return -1;
        }
    return 0;
}

/* ---- launches shared by the forward pass and the checks ---- */

/* The 4-bit GEMV's shared memory: x in f16. */
static size_t aqc__gemv_shared_bytes(int64_t kp) { return (size_t)kp * 2; }

/* The 4-bit GEMVs keep their input in shared memory: inputs wider than 24576 take more than the
   default 48 KB, which a kernel must be allowed before it is launched (and before a graph is
   captured). */
static int aqc__allow_shared_memory(int64_t max_kp, char *err, size_t err_len) {
    const int bytes = (int)aqc__gemv_shared_bytes(max_kp);
    if (bytes <= 48 * 1024) return 0;
    AQC_TRY(cudaFuncSetAttribute(aqc_gemv_4bit_kernel<AQC_INT4>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    AQC_TRY(cudaFuncSetAttribute(aqc_gemv_4bit_kernel<AQC_OVP>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    AQC_TRY(cudaFuncSetAttribute(aqc_gemv_4bit_kernel<AQC_INT4, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    return 0;
}

/* Whether the current device takes programmatic dependent launches (sm_90 and newer). */
static int aqc__device_pdl(bool *pdl, char *err, size_t err_len) {
    int device = 0, major = 0;
    AQC_TRY(cudaGetDevice(&device));
    AQC_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    *pdl = major >= 9;
    return 0;
}

/* What a matrix product's input is made from: a token's n values x, times silu(gate) (SwiGLU;
   gate may be NULL), RMS-normalized with weights norm (may be NULL) and eps. */
struct aqc__gemv_in {
    const float *x, *gate, *norm;
    int n;
    float eps;
};

/* The input of the next matrix product: f16, scaled per chunk (scaled, the decode GEMVs) or not
   (prompts). */
static int aqc__prep(cudaStream_t st, bool pdl, const float *in, const float *gate, int64_t ld_in, const float *norm, int n, int kp,
                     float eps, int scaled, int n_tokens, __half *xh, float *xscale, float *xsum, int64_t ld_out, char *err,
                     size_t err_len) {
    /* a warp per chunk, up to AQC_PREP_THREADS a block: a narrow model's vector (64 values) takes
       two warps, not 32 that would only wait at the RMS sum's barriers */
    const int chunks = kp / 32, chunks_per_block = chunks < AQC_PREP_THREADS / 32 ? chunks : AQC_PREP_THREADS / 32,
              blocks = (chunks + chunks_per_block - 1) / chunks_per_block;
    AQC_TRY(aqc__launch(pdl, aqc_prep_kernel, dim3(blocks, n_tokens), dim3(32 * chunks_per_block), 0, st, in, gate, ld_in, norm, n, kp, eps,
                        scaled, xh, xscale, xsum, ld_out));
    return 0;
}

/* y (+)= W x for a decode step, x prepped already (xh, xscale, xsum: aqc__prep). */
static int aqc__gemv(cudaStream_t st, bool pdl, const aqc__weight *w, const __half *xh, const float *xscale, const float *xsum, float *y,
                     int accumulate, char *err, size_t err_len) {
    /* persistent grid: AQC_GEMV_BLOCKS_PER_SM blocks per multiprocessor, or fewer rows */
    int device = 0, n_sms = 0;
    AQC_TRY(cudaGetDevice(&device));
    AQC_TRY(cudaDeviceGetAttribute(&n_sms, cudaDevAttrMultiProcessorCount, device));
    int64_t blocks = (w->rows + AQC_GEMV_WARPS - 1) / AQC_GEMV_WARPS;
    if (blocks > AQC_GEMV_BLOCKS_PER_SM * (int64_t)n_sms) blocks = AQC_GEMV_BLOCKS_PER_SM * (int64_t)n_sms;
    const dim3 grid((unsigned)blocks), block(AQC_GEMV_WARPS * 32);
    const uint4 *codes = (const uint4 *)w->data;
    if (w->format != AQC_F16)
        AQC_TRY(aqc__launch(pdl, w->format == AQC_OVP ? aqc_gemv_4bit_kernel<AQC_OVP>
                                 : w->stage_major     ? aqc_gemv_4bit_kernel<AQC_INT4, true>
                                                      : aqc_gemv_4bit_kernel<AQC_INT4>,
                            grid, block, aqc__gemv_shared_bytes(w->kp), st, codes, w->scales, w->mins,
                            (const half2 *)(w->format == AQC_OVP ? w->lut : NULL), (int)w->rows, (int)w->kp, (int)w->group, xh, xscale,
                            xsum, y, accumulate));
    else
        AQC_TRY(aqc__launch(pdl, aqc_gemv_f16_kernel, grid, block, 0, st, codes, (int)w->rows, (int)w->kp, xh, xscale, y, accumulate));
    return 0;
}

/* The input prep, then the GEMV, of a decode step; the prep kernel's end is marked for
   aqc_profile_step as prep_name (prof may be NULL). */
static int aqc__matvec(cudaStream_t st, bool pdl, const aqc__weight *w, const aqc__gemv_in &in, __half *xh, float *xscale, float *xsum,
                       float *y, int accumulate, aqc__profile *prof, const char *prep_name, char *err, size_t err_len) {
    if (aqc__prep(st, pdl, in.x, in.gate, 0, in.norm, in.n, (int)w->kp, in.eps, 1, 1, xh, xscale, xsum, w->kp, err, err_len) ||
        aqc__mark(prof, st, prep_name, err, err_len))
        return -1;
    return aqc__gemv(st, pdl, w, xh, xscale, xsum, y, accumulate, err, err_len);
}

/* y[n][ldy] (+)= x[n][ldx] W^T for a prompt batch: cuBLAS on f16 operands with f32 accumulation. */
static int aqc__gemm(cudaStream_t st, cublasHandle_t blas, const aqc__weight *w, __half *wtmp, const __half *xh, int64_t ldx,
                     int n, float *y, int64_t ldy, int accumulate, char *err, size_t err_len) {
    const void *a = w->data;
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    if (w->stage_major) { aqc__err(err, err_len, "a weight stored stage by stage: decode GEMVs only"); return -1; }
    if (w->format == AQC_INT4) {
        int64_t n_words = w->rows * w->kp / 8;
        AQC_TRY(aqc__launch(false, aqc_dequant_int4_kernel, dim3((unsigned)((n_words + 255) / 256)), dim3(256), 0, st,
                            (const uint32_t *)w->data, w->scales, w->mins, n_words, (int)w->kp, (int)w->group, wtmp));
        a = wtmp;
    } else if (w->format == AQC_OVP) {
        int64_t n_bytes = w->rows * w->kp / 2;
        AQC_TRY(aqc__launch(false, aqc_dequant_ovp_kernel, dim3((unsigned)((n_bytes + 255) / 256)), dim3(256), 0, st,
                            (const uint8_t *)w->data, w->scales, w->mins, w->lut, n_bytes, (int)w->kp, (int)w->group, wtmp));
        a = wtmp;
    }
    AQC_TRY_BLAS(cublasSetStream(blas, st));
    AQC_TRY_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->rows, n, (int)w->kp, &alpha, a, CUDA_R_16F, (int)w->kp,
                              xh, CUDA_R_16F, (int)ldx, &beta, y, CUDA_R_32F, (int)ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* The attention kernels' MAXG for a group of query heads per KV head: AQC_ATT_TC (tensor cores)
   for 2 to 8 heads of 64 or 128 dims in pages of a multiple of 16, else the smallest register
   path that holds the group. */
static int aqc__register_maxg(int group) { return group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8; }
static int aqc__attention_maxg(int group, int hd, int page_size) {
    if (group >= 2 && group <= AQC_TC_HEADS && (hd == 64 || hd == 128) && page_size % 16 == 0) return AQC_ATT_TC;
    return aqc__register_maxg(group);
}

/* Splits of one KV head's page list (n_pages of them) for a group of query heads per KV head,
   given how many blocks of its attention kernel fit a multiprocessor (blocks_per_sm,
   aqc__attention_blocks_per_sm).  At most one wave: for the register kernel as many blocks as fit
   every multiprocessor at once, for the tensor-core kernel three quarters of that.  A split's
   warps take its pages in turn, so a split lasts as long as the most pages one warp reads; of the
   counts up to a wave, the fewest that bring that to its least (fewer splits leave the merge less
   to do).  On an H100 at 32K (6 and 2 blocks a multiprocessor) that gives dense attention 24
   splits with 32 KV heads and with 8, and Quest 2048 (128 pages) 16: the best of the sweeps for
   all four (kernels/NOTES.md).  A count just past a wave leaves a second, nearly empty one: 28 and
   32 splits took 10 to 20% longer than 24 with 32 KV heads; 24 splits of 128 pages leave some
   warps two pages and others one. */
static int aqc__attention_splits(int n_sms, int blocks_per_sm, int n_kv, int group, int hd, int page_size, int n_pages) {
    const double per_sm = (aqc__attention_maxg(group, hd, page_size) == AQC_ATT_TC ? 0.75 : 1.0) * blocks_per_sm;
    const int wave = std::max(1, std::min(AQC_MAX_SPLITS, (int)(per_sm * n_sms / n_kv)));
    auto most_per_warp = [&](int splits) { return ((n_pages + splits - 1) / splits + AQC_ATT_WARPS - 1) / AQC_ATT_WARPS; };
    int splits = wave;
    while (splits > 1 && most_per_warp(splits - 1) == most_per_warp(wave)) splits--;
    return splits;
}

/* f(std::integral_constant<int, maxg>()): a launch of the attention kernel instantiated for maxg. */
template <class F> static cudaError_t aqc__with_maxg(int maxg, F f) {
    switch (maxg) {
    case AQC_ATT_TC: return f(std::integral_constant<int, AQC_ATT_TC>());
    case 1: return f(std::integral_constant<int, 1>());
    case 2: return f(std::integral_constant<int, 2>());
    case 4: return f(std::integral_constant<int, 4>());
    default: return f(std::integral_constant<int, 8>());
    }
}

static size_t aqc__attention_shared(int maxg, int hd) {
    return maxg == AQC_ATT_TC ? aqc__attention_tc_shared(hd) : (size_t)AQC_ATT_WARPS * maxg * hd * sizeof(float);
}

/* The tensor-core attention's two tiles per warp take more than the default 48 KB at head_dim
   128: allowed once, before any launch or capture (sessions and the checks call this). */
static int aqc__allow_attention_shared_memory(char *err, size_t err_len) {
    AQC_TRY(cudaFuncSetAttribute(aqc_attention_kernel<AQC_ATT_TC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)aqc__attention_tc_shared(AQC_TC_MAX_HD)));
    AQC_TRY(cudaFuncSetAttribute(aqc_quest_onepass_kernel<AQC_ATT_TC>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)aqc__attention_tc_shared(AQC_TC_MAX_HD)));
    return 0;
}

/* How many blocks of the attention kernel for this group fit a multiprocessor of this device. */
static int aqc__attention_blocks_per_sm(int group, int hd, int page_size, int *blocks, char *err, size_t err_len) {
    const int maxg = aqc__attention_maxg(group, hd, page_size);
    if (aqc__allow_attention_shared_memory(err, err_len)) return -1;
    AQC_TRY(aqc__with_maxg(maxg, [&](auto g) {
        return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, aqc_attention_kernel<decltype(g)::value>, AQC_ATT_WARPS * 32,
                                                             aqc__attention_shared(maxg, hd));
    }));
    if (*blocks < 1) { aqc__err(err, err_len, "attention: no block of %d query heads per KV head fits a multiprocessor", group); return -1; }
    return 0;
}

/* The next GEMV's input as aqc__prep makes it (xh, xscale, xsum), made by the merge. */
struct aqc__prepped {
    __half *xh;
    float *xscale, *xsum;
};
/* The merge of n_tokens queries' splits into out (o_in as for aqc__attention). */
static int aqc__merge(cudaStream_t st, bool pdl, const float *partial, int n_heads, int n_kv, int hd, int splits, int n_tokens, float *out,
                      int64_t out_stride, const aqc__prepped *o_in, char *err, size_t err_len) {
    if (o_in && (n_tokens != 1 || hd % 32)) { aqc__err(err, err_len, "attention: the merge preps one token of whole chunks only"); return -1; }
    AQC_TRY(aqc__launch(pdl, aqc_attention_merge_kernel, dim3(n_heads, n_tokens), dim3(AQC_MERGE_THREADS), 0, st, partial, n_kv,
                        n_heads / n_kv, hd, splits, out, out_stride, o_in ? o_in->xh : NULL, o_in ? o_in->xscale : NULL,
                        o_in ? o_in->xsum : NULL));
    return 0;
}

/* Attention of n_tokens queries over the pages in lists (NULL: every page up to the query's),
   split `splits` ways per KV head, then merged into out; o_in (may be NULL; one token, head_dim a
   multiple of 32): the merge also preps out as the next GEMV's input, scaled (aqc__prep's xh,
   xscale and xsum). */
static int aqc__attention(cudaStream_t st, bool pdl, const __half *kv_layer, const int *lists, const int *list_len, int max_pages,
                          const float *qkv, int qkv_dim, int n_heads, int n_kv, int hd, int page_size, const int *pos_ptr,
                          int n_tokens, int splits, float *partial, float *out, int64_t out_stride, const aqc__prepped *o_in,
                          char *err, size_t err_len) {
    const int group = n_heads / n_kv, maxg = aqc__attention_maxg(group, hd, page_size);
    const float scale = 1.0f / sqrtf((float)hd);
    const dim3 grid(n_kv, splits, n_tokens), block(AQC_ATT_WARPS * 32);
    const size_t shm = aqc__attention_shared(maxg, hd);
    AQC_TRY(aqc__with_maxg(maxg, [&](auto g) {
        return aqc__launch(pdl, aqc_attention_kernel<decltype(g)::value>, grid, block, shm, st, kv_layer, lists, list_len, max_pages, qkv,
                           qkv_dim, n_kv, hd, page_size, group, scale, pos_ptr, partial);
    }));
    return aqc__merge(st, pdl, partial, n_heads, n_kv, hd, splits, n_tokens, out, out_stride, o_in, err, err_len);
}

/* The cached top-k's threads for n keys: AQC_TOPK_CACHE keys a thread, whole warps, 4 to 32 of
   them (n = 2048 pages, 32K tokens: 256 threads, where 1024 held two keys each). */
static int aqc__topk_threads(int n) {
    const int warps = (n + 32 * AQC_TOPK_CACHE - 1) / (32 * AQC_TOPK_CACHE);
    return 32 * (warps < 4 ? 4 : warps > AQC_TOPK_THREADS / 32 ? AQC_TOPK_THREADS / 32 : warps);
}

/* The selection's blocks per KV head. */
static int aqc__select_blocks(int max_pages) {
    const int blocks = (max_pages + AQC_SCORE_WARPS * AQC_SCORE_PAGES - 1) / (AQC_SCORE_WARPS * AQC_SCORE_PAGES);
    return blocks < 1 ? 1 : blocks;
}

/* Quest's pages per KV head: the score kernel, then the top-k kernel (lists, list_len). */
static int aqc__quest_select(cudaStream_t st, bool pdl, const float *q, const aqc__bounds &b, int n_heads, int page_size, int budget,
                             const int *pos_ptr, float *scores, int *lists, int *list_len, char *err, size_t err_len) {
    AQC_TRY(aqc__launch(pdl, b.bits == 8 ? aqc_quest_score_kernel<8> : aqc_quest_score_kernel<16>,
                        dim3(aqc__select_blocks(b.max_pages), b.n_kv), dim3(AQC_SCORE_WARPS * 32), 0, st, q, b, n_heads, page_size, budget,
                        pos_ptr, scores));
    AQC_TRY(aqc__launch(pdl, aqc_quest_topk_kernel, dim3(b.n_kv), dim3(aqc__topk_threads(b.max_pages)), 0, st, (const float *)scores,
                        b.max_pages, page_size, budget, pos_ptr, lists, list_len));
    return 0;
}

/* The same selection in one kernel (aqc_quest_select_kernel); done: n_kv zeros, left zeros. */
static int aqc__quest_select_fused(cudaStream_t st, bool pdl, const float *q, const aqc__bounds &b, int n_heads, int page_size,
                                   int budget, const int *pos_ptr, float *scores, unsigned *done, int *lists, int *list_len, char *err,
                                   size_t err_len) {
    AQC_TRY(aqc__launch(pdl, b.bits == 8 ? aqc_quest_select_kernel<8> : aqc_quest_select_kernel<16>,
                        dim3(aqc__select_blocks(b.max_pages), b.n_kv), dim3(AQC_SCORE_WARPS * 32), 0, st, q, b, n_heads, page_size, budget,
                        pos_ptr, scores, done, lists, list_len));
    return 0;
}

/* The attention width of Quest in one grid: the step's own (aqc__attention_maxg), or with
   register_only the register kernel's, of the widths it has instances for (1, 4 and 8). */
static int aqc__onepass_maxg(int group, int hd, int page_size, bool register_only) {
    const int maxg = register_only ? aqc__register_maxg(group) : aqc__attention_maxg(group, hd, page_size);
    return maxg == 2 ? 4 : maxg;
}

/* Quest's selection and sparse attention in one grid (aqc_quest_onepass_kernel, attention width
   maxg from aqc__onepass_maxg), then the merge (o_in as for aqc__attention): the experiment beside
   aqc__quest_attention, 8-bit bounds; sync: AQC_ONEPASS_SYNC(n_kv) zeros, left zeros. */
static int aqc__quest_onepass(cudaStream_t st, bool pdl, int maxg, const float *qkv, int qkv_dim, const aqc__bounds &b,
                              const __half *kv_layer, int n_heads, int page_size, int budget, const int *pos_ptr, float *scores,
                              unsigned *sync, int *lists, int *list_len, int splits, float *partial, float *out, int64_t out_stride,
                              const aqc__prepped *o_in, char *err, size_t err_len) {
    const int select_blocks = aqc__select_blocks(b.max_pages);
    const float scale = 1.0f / sqrtf((float)b.hd);
    if (b.bits != 8) { aqc__err(err, err_len, "Quest in one grid: 8-bit bounds only"); return -1; }
    void (*kernel)(const float *, int, aqc__bounds, const __half *, int, int, int, const int *, float *, unsigned *, int *, int *, int,
                   int, float, float *) = maxg == AQC_ATT_TC ? aqc_quest_onepass_kernel<AQC_ATT_TC>
                                          : maxg == 1        ? aqc_quest_onepass_kernel<1>
                                          : maxg == 4        ? aqc_quest_onepass_kernel<4>
                                                             : aqc_quest_onepass_kernel<8>;
    AQC_TRY(aqc__launch(pdl, kernel, dim3(b.n_kv * (select_blocks + splits)), dim3(AQC_ATT_WARPS * 32), aqc__attention_shared(maxg, b.hd),
                        st, qkv, qkv_dim, b, kv_layer, n_heads, page_size, budget, pos_ptr, scores, sync, lists, list_len, select_blocks,
                        splits, scale, partial));
    return aqc__merge(st, pdl, partial, n_heads, b.n_kv, b.hd, splits, 1, out, out_stride, o_in, err, err_len);
}

/* A decode step's attention over Quest's selection of pages: aqc__quest_select, then
   aqc__attention over the lists (the selection's end marked for aqc_profile_step, prof may be
   NULL). */
static int aqc__quest_attention(cudaStream_t st, bool pdl, const float *qkv, int qkv_dim, const aqc__bounds &b, const __half *kv_layer,
                                int n_heads, int page_size, int budget, const int *pos_ptr, float *scores, int *lists, int *list_len,
                                int splits, float *partial, float *out, int64_t out_stride, const aqc__prepped *o_in, aqc__profile *prof,
                                char *err, size_t err_len) {
    return aqc__quest_select(st, pdl, qkv, b, n_heads, page_size, budget, pos_ptr, scores, lists, list_len, err, err_len) ||
                   aqc__mark(prof, st, "Quest selection", err, err_len) ||
                   aqc__attention(st, pdl, kv_layer, lists, list_len, b.max_pages, qkv, qkv_dim, n_heads, b.n_kv, b.hd, page_size,
                                  pos_ptr, 1, splits, partial, out, out_stride, o_in, err, err_len)
               ? -1 : 0;
}

/* Page bounds from scratch for the pages holding positions *pos_ptr .. + n_tokens - 1, n_pages of
   them at most (the kernel skips the rest). */
static int aqc__page_bounds(cudaStream_t st, const __half *kv_layer, const aqc__bounds &b, int page_size, const int *pos_ptr,
                            int n_tokens, int n_pages, char *err, size_t err_len) {
    AQC_TRY(aqc__launch(false, aqc_page_bounds_kernel, dim3(b.n_kv, n_pages), dim3(b.hd < 32 ? 32 : b.hd), 0, st, kv_layer, b,
                        page_size, pos_ptr, n_tokens));
    return 0;
}

/* RoPE and the cache append for n_tokens tokens (b.base: a decode step's page bounds, else NULL). */
static int aqc__rope_append(cudaStream_t st, bool pdl, float *qkv, int qkv_dim, int n_heads, int n_kv, int hd, int n_rot,
                            float rope_base, const int *pos_ptr, __half *kv_layer, int page_size, const aqc__bounds &b, int n_tokens,
                            char *err, size_t err_len) {
    AQC_TRY(aqc__launch(pdl, aqc_rope_append_kernel, dim3(n_heads + n_kv, n_tokens), dim3((hd / 2 + 31) / 32 * 32), 0, st, qkv, qkv_dim,
                        n_heads, n_kv, hd, n_rot, rope_base, pos_ptr, kv_layer, page_size, b));
    return 0;
}

/* ---- sessions ---- */

extern "C" void aqc_session_free(aqc_session *s) {
    if (!s) return;
    if (s->graph_ready) cudaGraphExecDestroy(s->graph);
    delete s->prof;
    if (s->blas) cublasDestroy(s->blas);
    if (s->stream) cudaStreamDestroy(s->stream);
    cudaFree(s->kv); cudaFree(s->bounds); cudaFree(s->scores); cudaFree(s->lists); cudaFree(s->list_len); cudaFree(s->onepass_sync);
    cudaFree(s->partial); cudaFree(s->x); cudaFree(s->qkv); cudaFree(s->att); cudaFree(s->hb); cudaFree(s->logits);
    cudaFree(s->xh); cudaFree(s->xscale); cudaFree(s->xsum); cudaFree(s->wtmp); cudaFree(s->state); cudaFree(s->ids);
    cudaFreeHost(s->host_state);
    delete s;
}

static int aqc__session_alloc(aqc_session *s, char *err, size_t err_len) {
    const aqc_model *m = s->m;
    const aqc_config *c = &m->c;
    const size_t nb = (size_t)s->c.n_batch, group = (size_t)(c->n_heads / c->n_kv_heads);
    size_t wtmp = 0, part_tokens;
    const aqc__weight *all[4];
    cudaDeviceProp prop;
    AQC_TRY(cudaGetDeviceProperties(&prop, 0));
    if (aqc__device_pdl(&s->pdl, err, err_len)) return -1;
    s->n_sms = prop.multiProcessorCount;
    s->qkv_dim = (c->n_heads + 2 * c->n_kv_heads) * c->head_dim;
    s->max_pages = (s->c.n_ctx + s->c.page_size - 1) / s->c.page_size;
    if (s->max_pages > (1 << 24)) {   /* aqc__split_pages counts pages times splits in 32 bits */
        aqc__err(err, err_len, "a context of %d tokens is more than the GPU path's %d pages", s->c.n_ctx, 1 << 24);
        return -1;
    }
    int att_blocks = 0;
    if (aqc__attention_blocks_per_sm((int)group, c->head_dim, s->c.page_size, &att_blocks, err, err_len)) return -1;
    s->splits = aqc__attention_splits(s->n_sms, att_blocks, c->n_kv_heads, (int)group, c->head_dim, s->c.page_size, s->max_pages);
    s->quest_splits = aqc__attention_splits(s->n_sms, att_blocks, c->n_kv_heads, (int)group, c->head_dim, s->c.page_size,
                                            std::min(s->c.quest_budget / s->c.page_size, s->max_pages));
    /* partials: a decode step's splits, or a prompt's tokens times their share of the splits */
    part_tokens = nb > (size_t)s->splits ? nb : (size_t)s->splits;
    s->x_ld = 32;
    for (int l = 0; l < c->n_layers; l++) {
        all[0] = &m->qkv[l]; all[1] = &m->wo[l]; all[2] = &m->gate_up[l]; all[3] = &m->down[l];
        for (int i = 0; i < 4; i++) {
            if (all[i]->kp > s->x_ld) s->x_ld = all[i]->kp;
            if (all[i]->format != AQC_F16 && (size_t)(all[i]->rows * all[i]->kp) > wtmp) wtmp = (size_t)(all[i]->rows * all[i]->kp);
        }
    }
    if (m->output.kp > s->x_ld) s->x_ld = m->output.kp;
    if (m->output.format != AQC_F16 && (size_t)(m->output.rows * m->output.kp) > wtmp) wtmp = (size_t)(m->output.rows * m->output.kp);
    s->kv_layer_elems = (size_t)s->max_pages * c->n_kv_heads * 2 * s->c.page_size * c->head_dim;
    s->bounds_layer_bytes = aqc__bounds_layer_bytes(s->c.quest_bounds, c->n_kv_heads, c->head_dim, s->max_pages);
    if (aqc__allow_shared_memory(s->x_ld, err, err_len)) return -1;   /* the attention's: aqc__attention_blocks_per_sm */
    AQC_TRY(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    AQC_TRY_BLAS(cublasCreate(&s->blas));
    if (aqc__malloc((void **)&s->kv, s->kv_layer_elems * c->n_layers * 2, "the KV cache", err, err_len) ||
        aqc__malloc((void **)&s->bounds, s->bounds_layer_bytes * c->n_layers, "the Quest page bounds", err, err_len) ||
        aqc__malloc((void **)&s->scores, (size_t)c->n_kv_heads * s->max_pages * 4, "page scores", err, err_len) ||
        aqc__malloc((void **)&s->lists, (size_t)c->n_kv_heads * s->max_pages * 4, "page lists", err, err_len) ||
        aqc__malloc((void **)&s->list_len, (size_t)c->n_kv_heads * 4, "page lists", err, err_len) ||
        aqc__malloc((void **)&s->onepass_sync, (size_t)AQC_ONEPASS_SYNC(c->n_kv_heads) * 4, "Quest's counters", err, err_len) ||
        aqc__malloc((void **)&s->partial, part_tokens * c->n_kv_heads * group * aqc__partial_floats(c->head_dim) * 4, "attention partials",
                    err, err_len) ||
        aqc__malloc((void **)&s->x, nb * c->n_embd * 4, "activations", err, err_len) ||
        aqc__malloc((void **)&s->qkv, nb * s->qkv_dim * 4, "activations", err, err_len) ||
        aqc__malloc((void **)&s->att, nb * c->n_heads * c->head_dim * 4, "activations", err, err_len) ||
        aqc__malloc((void **)&s->hb, nb * 2 * c->n_ff * 4, "activations", err, err_len) ||
        aqc__malloc((void **)&s->logits, nb * c->n_vocab * 4, "logits", err, err_len) ||
        aqc__malloc((void **)&s->xh, nb * s->x_ld * 2, "activations", err, err_len) ||
        aqc__malloc((void **)&s->xscale, nb * (s->x_ld / 32) * 4, "activations", err, err_len) ||
        aqc__malloc((void **)&s->xsum, nb * (s->x_ld / 32) * 4, "activations", err, err_len) ||
        aqc__malloc((void **)&s->wtmp, wtmp * 2, "dequantized weights for prompts", err, err_len) ||
        aqc__malloc((void **)&s->state, AQC_STATE_INTS * 4, "state", err, err_len) ||
        aqc__malloc((void **)&s->ids, nb * 4, "token ids", err, err_len))
        return -1;
    AQC_TRY(cudaMallocHost((void **)&s->host_state, AQC_STATE_INTS * 4));
    AQC_TRY(cudaMemset(s->state, 0, AQC_STATE_INTS * 4));
    AQC_TRY(cudaMemset(s->onepass_sync, 0, (size_t)AQC_ONEPASS_SYNC(c->n_kv_heads) * 4));
    AQC_TRY(cudaDeviceSynchronize());   /* the session's stream does not wait for the default stream's memsets */
    return 0;
}

extern "C" aqc_session *aqc_session_new(const aqc_model *m, const aqc_session_config *c, char *err, size_t err_len) {
    aqc_session *s;
    if (aqc__model_complete(m, err, err_len)) return NULL;
    if (c->n_ctx <= 0 || c->page_size <= 0 || c->n_batch <= 0) { aqc__err(err, err_len, "GPU session: bad n_ctx, page_size or n_batch"); return NULL; }
    if (c->quest_budget && (c->quest_budget < 2 * c->page_size)) { aqc__err(err, err_len, "GPU session: quest_budget under two pages"); return NULL; }
    if (c->quest_bounds != 8 && c->quest_bounds != 16) { aqc__err(err, err_len, "GPU session: quest_bounds %d is neither 8 nor 16", c->quest_bounds); return NULL; }
    s = new aqc_session();
    memset((void *)s, 0, sizeof *s);
    s->m = m;
    s->c = *c;
    if (aqc__session_alloc(s, err, err_len)) { aqc_session_free(s); return NULL; }
    return s;
}

extern "C" uint64_t aqc_session_kv_bytes(const aqc_session *s) {
    return ((uint64_t)s->kv_layer_elems * 2 + s->bounds_layer_bytes) * s->m->c.n_layers;
}

/* The end of a stage of the step, when a profile is being taken. */
/* Enqueues the model over n tokens whose ids are at `ids` (device) at positions state[AQC_POS]..
   Logits: none (want = 0), the last token's (1) or every token's (2), into s->logits; a decode
   step (n == 1) always computes them. */
static int aqc__forward(aqc_session *s, const int *ids, int n, int pos0, int want, char *err, size_t err_len) {
    const aqc_model *m = s->m;
    const aqc_config *c = &m->c;
    const int dim = c->n_embd, hd = c->head_dim, q_dim = c->n_heads * hd, P = s->c.page_size;
    const int *pos_ptr = s->state + AQC_POS;
    const int64_t xl = s->x_ld;
    const int pages_touched = (pos0 + n - 1) / P - pos0 / P + 1;
    const int splits = n == 1 ? s->splits : (s->splits / n > 1 ? s->splits / n : 1);
    cudaStream_t st = s->stream;
    const bool pdl = s->pdl;
    const __half *embd = (const __half *)m->tok_embd.data;

    /* out (+)= in W^T over nt tokens: the input's prep (RMSNorm, SwiGLU or a copy; inside the GEMV
       of a decode step where aqc__gemv_prep says so) and the product, each marked for
       aqc_profile_step.  ld_in: the row stride of in's vectors. */
    auto linear = [&](const aqc__weight *w, const aqc__gemv_in &in, int64_t ld_in, int nt, float *out, int64_t ldo, int accumulate,
                      const char *prep_name, const char *name) -> int {
        if (nt == 1
                ? aqc__matvec(st, pdl, w, in, s->xh, s->xscale, s->xsum, out, accumulate, s->prof, prep_name, err, err_len)
                : aqc__prep(st, pdl, in.x, in.gate, ld_in, in.norm, in.n, (int)w->kp, in.eps, 0, nt, s->xh, s->xscale, s->xsum, xl, err,
                            err_len) ||
                      aqc__mark(s->prof, st, prep_name, err, err_len) ||
                      aqc__gemm(st, s->blas, w, s->wtmp, s->xh, xl, nt, out, ldo, accumulate, err, err_len))
            return -1;
        return aqc__mark(s->prof, st, name, err, err_len);
    };
    /* each stage, then its mark for aqc_profile_step */
#define AQC_DO(call, name) do { if (call) return -1; if (aqc__mark(s->prof, st, name, err, err_len)) return -1; } while (0)

    AQC_DO(aqc__cuda_failed(aqc__launch(pdl, aqc_embed_kernel, dim3(n), dim3(256), 0, st, embd, m->tok_embd.kp, dim, ids,
                                        s->x), "embedding", err, err_len), "embedding");
    for (int l = 0; l < c->n_layers; l++) {
        __half *kv_layer = s->kv + s->kv_layer_elems * l;
        const aqc__bounds bounds = aqc__bounds_of(s->bounds, l, s->c.quest_bounds, c->n_kv_heads, hd, s->max_pages);
        aqc__bounds no_bounds = bounds;
        no_bounds.base = NULL;
        const aqc__gemv_in attn_in = {s->x, NULL, m->attn_norm[l], dim, c->rms_eps}, o_in = {s->att, NULL, NULL, q_dim, 0.0f},
                           ffn_in = {s->x, NULL, m->ffn_norm[l], dim, c->rms_eps}, down_in = {s->hb + c->n_ff, s->hb, NULL, c->n_ff, 0.0f};
        /* attention block */
        if (linear(&m->qkv[l], attn_in, dim, n, s->qkv, s->qkv_dim, 0, "RMSNorm", "q, k, v")) return -1;
        AQC_DO(aqc__rope_append(st, pdl, s->qkv, s->qkv_dim, c->n_heads, c->n_kv_heads, hd, c->n_rot, c->rope_base, pos_ptr, kv_layer,
                                P, n == 1 ? bounds : no_bounds, n, err, err_len), "RoPE, append");
        if (n > 1 && aqc__page_bounds(st, kv_layer, bounds, P, pos_ptr, n, pages_touched, err, err_len))
            return -1;   /* a prompt's pages: their bounds from scratch */
        /* a decode step's merge preps o's input itself where its chunks are whole heads' (and no
           padding past them, which another prep could have left in xh) */
        const aqc__prepped prepped = {s->xh, s->xscale, s->xsum};
        const aqc__prepped *o_prepped = n == 1 && hd % 32 == 0 && m->wo[l].kp == q_dim ? &prepped : NULL;
        if (n == 1 && s->c.quest_budget && l >= s->c.quest_dense_layers && s->quest_one_grid)
            AQC_DO(aqc__quest_onepass(st, pdl, aqc__onepass_maxg(c->n_heads / c->n_kv_heads, hd, P, false), s->qkv, s->qkv_dim, bounds,
                                      kv_layer, c->n_heads, P, s->c.quest_budget, pos_ptr, s->scores, s->onepass_sync, s->lists,
                                      s->list_len, s->quest_splits, s->partial, s->att, q_dim, o_prepped, err, err_len),
                   "attention, Quest in one grid");
        else if (n == 1 && s->c.quest_budget && l >= s->c.quest_dense_layers)
            AQC_DO(aqc__quest_attention(st, pdl, s->qkv, s->qkv_dim, bounds, kv_layer, c->n_heads, P, s->c.quest_budget, pos_ptr,
                                        s->scores, s->lists, s->list_len, s->quest_splits, s->partial, s->att, q_dim, o_prepped, s->prof,
                                        err, err_len),
                   "attention, Quest");
        else
            AQC_DO(aqc__attention(st, pdl, kv_layer, NULL, s->list_len, s->max_pages, s->qkv, s->qkv_dim, c->n_heads, c->n_kv_heads, hd,
                                  P, pos_ptr, n, splits, s->partial, s->att, q_dim, o_prepped, err, err_len),
                   "attention, dense");
        if (o_prepped) AQC_DO(aqc__gemv(st, pdl, &m->wo[l], s->xh, s->xscale, s->xsum, s->x, 1, err, err_len), "o");
        else if (linear(&m->wo[l], o_in, q_dim, n, s->x, dim, 1, "attention output prep", "o")) return -1;
        /* feed-forward block: down(silu(gate(x)) * up(x)), gate and up stacked in one matrix */
        if (linear(&m->gate_up[l], ffn_in, dim, n, s->hb, 2 * (int64_t)c->n_ff, 0, "RMSNorm", "gate, up") ||
            linear(&m->down[l], down_in, 2 * (int64_t)c->n_ff, n, s->x, dim, 1, "SwiGLU", "down"))
            return -1;
    }
    /* logits: every token's (a prompt's GEMM), or the last token's (a GEMV) */
    const aqc__gemv_in out_in = {s->x + (want == 2 ? 0 : (size_t)(n - 1) * dim), NULL, m->output_norm, dim, c->rms_eps};
    if ((want == 2 || want == 1 || n == 1) && linear(&m->output, out_in, dim, want == 2 ? n : 1, s->logits, c->n_vocab, 0, "RMSNorm", "output"))
        return -1;
#undef AQC_DO
    return 0;
}

static int aqc__set_state(aqc_session *s, int token, int pos, char *err, size_t err_len) {
    s->host_state[AQC_TOKEN] = token;
    s->host_state[AQC_POS] = pos;
    AQC_TRY(cudaMemcpyAsync(s->state, s->host_state, 2 * sizeof(int), cudaMemcpyHostToDevice, s->stream));
    return 0;
}

extern "C" int aqc_eval(aqc_session *s, const int32_t *ids, int n, int pos0, float *logits, int all, char *err, size_t err_len) {
    const int n_vocab = s->m->c.n_vocab;
    if (n <= 0 || pos0 < 0 || pos0 + n > s->c.n_ctx) {
        aqc__err(err, err_len, "GPU eval: %d tokens at position %d do not fit the context of %d", n, pos0, s->c.n_ctx);
        return -1;
    }
    for (int done = 0; done < n; done += s->c.n_batch) {
        const int nb = n - done < s->c.n_batch ? n - done : s->c.n_batch, last = done + nb == n;
        const int want = !logits || (!all && !last) ? 0 : all && nb > 1 ? 2 : 1;
        if (aqc__set_state(s, ids[done], pos0 + done, err, err_len)) return -1;
        if (nb > 1) AQC_TRY(cudaMemcpyAsync(s->ids, ids + done, (size_t)nb * 4, cudaMemcpyHostToDevice, s->stream));
        if (aqc__forward(s, nb == 1 ? s->state + AQC_TOKEN : s->ids, nb, pos0 + done, want, err, err_len)) return -1;
        if (want)
            AQC_TRY(cudaMemcpyAsync(logits + (all ? (size_t)done * n_vocab : 0), s->logits, (size_t)(want == 2 ? nb : 1) * n_vocab * 4,
                                    cudaMemcpyDeviceToHost, s->stream));
        AQC_TRY(cudaStreamSynchronize(s->stream));
    }
    return 0;
}

extern "C" int aqc_session_set_quest_one_grid(aqc_session *s, int on, char *err, size_t err_len) {
    if (on && (s->c.quest_bounds != 8 || !s->c.quest_budget)) {
        aqc__err(err, err_len, "Quest in one grid: a session with a Quest budget and 8-bit bounds only");
        return -1;
    }
    s->quest_one_grid = on != 0;
    if (s->graph_ready) {   /* captured with the other attention */
        AQC_TRY(cudaGraphExecDestroy(s->graph));
        s->graph_ready = 0;
    }
    return 0;
}

/* Enqueues one decode step up to its logits, from the captured graph when the session uses one. */
static int aqc__step(aqc_session *s, int32_t token, int pos, char *err, size_t err_len) {
    if (pos < 0 || pos >= s->c.n_ctx) { aqc__err(err, err_len, "GPU step: position %d is outside the context of %d", pos, s->c.n_ctx); return -1; }
    if (aqc__set_state(s, token, pos, err, err_len)) return -1;
    if (!s->c.use_graph) return aqc__forward(s, s->state + AQC_TOKEN, 1, pos, 1, err, err_len);
    if (!s->graph_ready) {
        cudaGraph_t g;
        AQC_TRY(cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeThreadLocal));
        if (aqc__forward(s, s->state + AQC_TOKEN, 1, pos, 1, err, err_len)) {
            cudaStreamEndCapture(s->stream, &g);
            return -1;
        }
        AQC_TRY(cudaStreamEndCapture(s->stream, &g));
        AQC_TRY(cudaGraphInstantiate(&s->graph, g, 0));
        cudaGraphDestroy(g);
        s->graph_ready = 1;
    }
    AQC_TRY(cudaGraphLaunch(s->graph, s->stream));
    return 0;
}

/* One decode step captured with its marks into a graph of its own (the marks' events become
   nodes of it, so that no host launch gap is timed), launched twice (the first warms up); each
   stage's time is from the mark before it to its own. */
extern "C" int aqc_profile_step(aqc_session *s, int32_t token, int pos, aqc_profile_entry *out, int max_entries, char *err,
                                size_t err_len) {
    cudaGraph_t g = NULL;
    cudaGraphExec_t ge = NULL;
    int n_out = 0, rc = -1;
    if (pos < 0 || pos >= s->c.n_ctx) { aqc__err(err, err_len, "GPU profile: position %d is outside the context of %d", pos, s->c.n_ctx); return -1; }
    if (aqc__set_state(s, token, pos, err, err_len)) return -1;
    if (!s->prof) s->prof = new aqc__profile();
    aqc__profile *p = s->prof;
    p->used = 0;
    while (p->events.size() < (size_t)(16 * s->m->c.n_layers + 16)) {   /* made before the capture, not in it */
        cudaEvent_t ev;
        AQC_TRY(cudaEventCreate(&ev));
        p->events.push_back(ev);
        p->names.push_back("");
    }
    AQC_TRY(cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeThreadLocal));
    p->on = true;
    const int fwd = aqc__mark(s->prof, s->stream, "start", err, err_len) || aqc__forward(s, s->state + AQC_TOKEN, 1, pos, 1, err, err_len);
    p->on = false;   /* later steps take no marks */
    const cudaError_t e = cudaStreamEndCapture(s->stream, &g);
    if (!fwd && !aqc__cuda_failed(e, "capture of a profiled step", err, err_len) &&
        !aqc__cuda_failed(cudaGraphInstantiate(&ge, g, 0), "instantiate a profiled step", err, err_len) &&
        !aqc__cuda_failed(cudaGraphLaunch(ge, s->stream), "warm-up of a profiled step", err, err_len) &&
        !aqc__cuda_failed(cudaGraphLaunch(ge, s->stream), "profiled step", err, err_len) &&
        !aqc__cuda_failed(cudaStreamSynchronize(s->stream), "profiled step", err, err_len)) {
        rc = 0;
        for (size_t i = 1; i < p->used && !rc; i++) {
            float ms = 0.0f;
            int j;
            if (aqc__cuda_failed(cudaEventElapsedTime(&ms, p->events[i - 1], p->events[i]), "profile events", err, err_len)) rc = -1;
            for (j = 0; j < n_out && strcmp(out[j].name, p->names[i]); j++) {}
            if (j == n_out) {
                if (n_out == max_entries) continue;
                out[n_out].name = p->names[i];
                out[n_out].calls = 0;
                out[n_out].us = 0.0;
                n_out++;
            }
            out[j].calls++;
            out[j].us += ms * 1000.0;
        }
    }
    if (ge) cudaGraphExecDestroy(ge);
    if (g) cudaGraphDestroy(g);
    return rc ? -1 : n_out;
}

/* The token the step's last kernel left in state[AQC_NEXT]: the only copy back. */
static int aqc__next_token(aqc_session *s, int32_t *next, char *err, size_t err_len) {
    AQC_TRY(cudaGetLastError());
    AQC_TRY(cudaMemcpyAsync(s->host_state + AQC_NEXT, s->state + AQC_NEXT, sizeof(int), cudaMemcpyDeviceToHost, s->stream));
    AQC_TRY(cudaStreamSynchronize(s->stream));
    *next = s->host_state[AQC_NEXT];
    return 0;
}

extern "C" int aqc_step_greedy(aqc_session *s, int32_t token, int pos, int32_t *next, char *err, size_t err_len) {
    if (aqc__step(s, token, pos, err, err_len)) return -1;
    AQC_TRY(aqc__launch(s->pdl, aqc_argmax_kernel, dim3(1), dim3(aqc__vocab_threads(s->m->c.n_vocab)), 0, s->stream, (const float *)s->logits,
                        s->m->c.n_vocab, s->state));
    return aqc__next_token(s, next, err, err_len);
}

extern "C" int aqc_step_sample(aqc_session *s, int32_t token, int pos, const aqc_sampling *p, float r, int32_t *next,
                               char *err, size_t err_len) {
    if (p->temperature <= 0.0f || p->top_k < 1 || p->top_k > AQC_SAMPLE_MAX_K || p->top_k > s->m->c.n_vocab) {
        aqc__err(err, err_len, "GPU sampling needs a temperature above 0 and top_k in [1, %d]", AQC_SAMPLE_MAX_K);
        return -1;
    }
    if (aqc__step(s, token, pos, err, err_len)) return -1;
    AQC_TRY(aqc__launch(s->pdl, aqc_sample_kernel, dim3(1), dim3(aqc__vocab_threads(s->m->c.n_vocab)), 0, s->stream,
                        (const float *)s->logits, s->m->c.n_vocab, p->temperature, p->top_k, p->top_p, p->min_p, r, s->state));
    return aqc__next_token(s, next, err, err_len);
}

extern "C" int aqc_session_fill_random(aqc_session *s, int n, uint64_t seed, char *err, size_t err_len) {
    const aqc_config *c = &s->m->c;
    if (n <= 0 || n > s->c.n_ctx) { aqc__err(err, err_len, "fill: %d positions do not fit the context of %d", n, s->c.n_ctx); return -1; }
    AQC_TRY(aqc__fill_random(s->kv, (int64_t)(s->kv_layer_elems * c->n_layers), seed, s->stream));
    if (aqc__set_state(s, 0, 0, err, err_len)) return -1;
    for (int l = 0; l < c->n_layers; l++) {
        if (aqc__page_bounds(s->stream, s->kv + s->kv_layer_elems * l,
                             aqc__bounds_of(s->bounds, l, s->c.quest_bounds, c->n_kv_heads, c->head_dim, s->max_pages), s->c.page_size,
                             s->state + AQC_POS, n, (n + s->c.page_size - 1) / s->c.page_size, err, err_len))
            return -1;
    }
    AQC_TRY(cudaStreamSynchronize(s->stream));
    return 0;
}

/* ======================================================================================
   Checks and timings for tools/aq-gpu-check.  Each builds what it needs, runs on the default
   stream and frees everything; a failure leaks nothing that outlives the process's context.
   ====================================================================================== */

/* A stream of the check's own: a non-blocking one, as sessions use, so that programmatic launches
   run as they do in a step. */
struct aqc__check_stream {
    cudaStream_t s;
    aqc__check_stream() : s(NULL) {}
    ~aqc__check_stream() { if (s) cudaStreamDestroy(s); }
};

/* A scope of device allocations freed together. */
struct aqc__scratch {
    std::vector<void *> ptrs;
    ~aqc__scratch() { for (size_t i = 0; i < ptrs.size(); i++) cudaFree(ptrs[i]); }
    void *get(size_t bytes, char *err, size_t err_len) {
        void *p = NULL;
        if (aqc__malloc(&p, bytes, "a check", err, err_len)) return NULL;
        ptrs.push_back(p);
        return p;
    }
};

extern "C" int aqc_check_gemv(const aqc_weight *w, int stage_major, const float *x, const float *gate, const float *norm, float eps,
                              float *y, char *err, size_t err_len) {
    if (aqc__allow_shared_memory(w->cols_padded, err, err_len)) return -1;
    aqc__scratch sc;
    aqc__weight dw;
    memset(&dw, 0, sizeof dw);
    if (aqc__weight_upload(&dw, w, err, err_len) || (stage_major && aqc__weight_to_stages(&dw, err, err_len))) {
        aqc__weight_free(&dw);
        return -1;
    }
    const size_t x_bytes = (size_t)w->cols * 4;
    float *dx = (float *)sc.get(x_bytes, err, err_len), *dy = (float *)sc.get((size_t)w->rows * 4, err, err_len);
    float *dgate = gate ? (float *)sc.get(x_bytes, err, err_len) : NULL, *dnorm = norm ? (float *)sc.get(x_bytes, err, err_len) : NULL;
    __half *xh = (__half *)sc.get((size_t)w->cols_padded * 2, err, err_len);
    float *xs = (float *)sc.get((size_t)w->cols_padded / 8, err, err_len), *xsum = (float *)sc.get((size_t)w->cols_padded / 8, err, err_len);
    const aqc__gemv_in in = {dx, dgate, dnorm, (int)w->cols, eps};
    int rc = -1;
    bool pdl = false;
    aqc__check_stream st;
    if (dx && dy && xh && xs && xsum && (dgate || !gate) && (dnorm || !norm) && !aqc__device_pdl(&pdl, err, err_len) &&
        !aqc__cuda_failed(cudaStreamCreateWithFlags(&st.s, cudaStreamNonBlocking), "a stream", err, err_len) &&
        !aqc__cuda_failed(cudaMemcpy(dx, x, x_bytes, cudaMemcpyHostToDevice), "upload x", err, err_len) &&
        (!gate || !aqc__cuda_failed(cudaMemcpy(dgate, gate, x_bytes, cudaMemcpyHostToDevice), "upload the gate", err, err_len)) &&
        (!norm || !aqc__cuda_failed(cudaMemcpy(dnorm, norm, x_bytes, cudaMemcpyHostToDevice), "upload the norm", err, err_len)) &&
        !aqc__cuda_failed(cudaMemsetAsync(dy, 0xff, (size_t)w->rows * 4, st.s), "poison y", err, err_len) &&
        !aqc__matvec(st.s, pdl, &dw, in, xh, xs, xsum, dy, 0, NULL, NULL, err, err_len) &&
        !aqc__cuda_failed(cudaStreamSynchronize(st.s), "the GEMV", err, err_len) &&
        !aqc__cuda_failed(cudaMemcpy(y, dy, (size_t)w->rows * 4, cudaMemcpyDeviceToHost), "download y", err, err_len))
        rc = 0;
    aqc__weight_free(&dw);
    return rc;
}

extern "C" int aqc_check_gemm(const aqc_weight *w, const float *x, int n, float *y, char *err, size_t err_len) {
    aqc__scratch sc;
    aqc__weight dw;
    cublasHandle_t blas;
    memset(&dw, 0, sizeof dw);
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) { aqc__err(err, err_len, "cuBLAS: cannot create a handle"); return -1; }
    int rc = -1;
    if (!aqc__weight_upload(&dw, w, err, err_len)) {
        float *dx = (float *)sc.get((size_t)n * w->cols * 4, err, err_len), *dy = (float *)sc.get((size_t)n * w->rows * 4, err, err_len);
        __half *xh = (__half *)sc.get((size_t)n * w->cols_padded * 2, err, err_len);
        float *xs = (float *)sc.get((size_t)n * w->cols_padded / 8, err, err_len);
        float *xsum = (float *)sc.get((size_t)n * w->cols_padded / 8, err, err_len);
        __half *wtmp = (__half *)sc.get((size_t)w->rows * w->cols_padded * 2, err, err_len);
        if (dx && dy && xh && xs && xsum && wtmp &&
            !aqc__cuda_failed(cudaMemcpy(dx, x, (size_t)n * w->cols * 4, cudaMemcpyHostToDevice), "upload x", err, err_len) &&
            !aqc__cuda_failed(cudaMemset(dy, 0xff, (size_t)n * w->rows * 4), "poison y", err, err_len) &&
            !aqc__prep(0, false, dx, NULL, w->cols, NULL, (int)w->cols, (int)w->cols_padded, 0.0f, 0, n, xh, xs, xsum, w->cols_padded, err,
                       err_len) &&
            !aqc__gemm(0, blas, &dw, wtmp, xh, w->cols_padded, n, dy, w->rows, 0, err, err_len) &&
            !aqc__cuda_failed(cudaMemcpy(y, dy, (size_t)n * w->rows * 4, cudaMemcpyDeviceToHost), "download y", err, err_len))
            rc = 0;
    }
    aqc__weight_free(&dw);
    cublasDestroy(blas);
    return rc;
}

/* One layer's cache for the attention check and timing: k/v appended through the real kernels. */
struct aqc__attn_rig {
    int n_ctx, n_q, n_heads, n_kv, hd, P, max_pages, qkv_dim, splits, quest_splits, n_sms, att_blocks;
    int bounds_bits;   /* what bounds holds: 16 or 8 */
    bool pdl;
    __half *kv;
    unsigned char *bounds;   /* room for f16 bounds of every layer */
    float *qkv, *scores, *partial, *out;   /* qkv, out: n_q queries */
    int *lists, *list_len, *pos;
    unsigned *done;   /* aqc_quest_select_kernel's tickets, zeros */
    unsigned *onepass_sync;   /* aqc_quest_onepass_kernel's, zeros */
    aqc__bounds layer_bounds(int layer) const { return aqc__bounds_of(bounds, layer, bounds_bits, n_kv, hd, max_pages); }
    /* the splits per KV head of a Quest step with this budget, as the forward pass takes them */
    int splits_for(int budget) const {
        return aqc__attention_splits(n_sms, att_blocks, n_kv, n_heads / n_kv, hd, P, std::min(budget / P, max_pages));
    }
};

/* A rig for n_q queries at the last positions of a context of n_ctx (n_q > 1: a prompt, dense). */
static int aqc__rig_new(aqc__attn_rig *r, aqc__scratch *sc, int n_ctx, int n_q, int n_heads, int n_kv, int hd, int P, int layers,
                        char *err, size_t err_len) {
    cudaDeviceProp prop;
    AQC_TRY(cudaGetDeviceProperties(&prop, 0));
    r->n_ctx = n_ctx; r->n_q = n_q; r->n_heads = n_heads; r->n_kv = n_kv; r->hd = hd; r->P = P;
    r->max_pages = (n_ctx + P - 1) / P;
    r->qkv_dim = (n_heads + 2 * n_kv) * hd;
    r->n_sms = prop.multiProcessorCount;
    if (aqc__attention_blocks_per_sm(n_heads / n_kv, hd, P, &r->att_blocks, err, err_len)) return -1;
    r->splits = aqc__attention_splits(r->n_sms, r->att_blocks, n_kv, n_heads / n_kv, hd, P, r->max_pages);
    r->quest_splits = 0;   /* set per budget by aqc__rig_step */
    if (aqc__device_pdl(&r->pdl, err, err_len)) return -1;
    const size_t kv_elems = (size_t)r->max_pages * n_kv * 2 * P * hd;
    r->kv = (__half *)sc->get(kv_elems * 2 * layers, err, err_len);
    r->bounds_bits = 16;
    r->bounds = (unsigned char *)sc->get(aqc__bounds_layer_bytes(16, n_kv, hd, r->max_pages) * layers, err, err_len);
    r->qkv = (float *)sc->get((size_t)n_q * r->qkv_dim * 4, err, err_len);
    r->scores = (float *)sc->get((size_t)n_kv * r->max_pages * 4, err, err_len);
    /* one query (timing): room for any split count, to time the others too */
    r->partial = (float *)sc->get((size_t)n_q * (n_q == 1 ? AQC_MAX_SPLITS : r->splits) * n_kv * (n_heads / n_kv) * aqc__partial_floats(hd) * 4,
                                  err, err_len);
    r->out = (float *)sc->get((size_t)n_q * n_heads * hd * 4, err, err_len);
    r->lists = (int *)sc->get((size_t)n_kv * r->max_pages * 4, err, err_len);
    r->list_len = (int *)sc->get((size_t)n_kv * 4, err, err_len);
    r->pos = (int *)sc->get(4, err, err_len);
    r->done = (unsigned *)sc->get((size_t)n_kv * 4, err, err_len);
    r->onepass_sync = (unsigned *)sc->get((size_t)AQC_ONEPASS_SYNC(n_kv) * 4, err, err_len);
    if (!r->kv || !r->bounds || !r->qkv || !r->scores || !r->partial || !r->out || !r->lists || !r->list_len || !r->pos || !r->done ||
        !r->onepass_sync)
        return -1;
    AQC_TRY(cudaMemset(r->done, 0, (size_t)n_kv * 4));
    AQC_TRY(cudaMemset(r->onepass_sync, 0, (size_t)AQC_ONEPASS_SYNC(n_kv) * 4));
    AQC_TRY(cudaDeviceSynchronize());   /* before any non-blocking stream uses it */
    return 0;
}

/* Attention for the queries in r->qkv at positions *r->pos .. + n_q - 1 over layer `layer` of the
   rig (Quest: one query), split as the forward pass splits them; o_in as for aqc__attention. */
static int aqc__rig_step(aqc__attn_rig *r, int layer, int budget, cudaStream_t st, char *err, size_t err_len,
                         const aqc__prepped *o_in = NULL) {
    const size_t kv_elems = (size_t)r->max_pages * r->n_kv * 2 * r->P * r->hd;
    if (budget) {
        r->quest_splits = r->splits_for(budget);
        return aqc__quest_attention(st, r->pdl, r->qkv, r->qkv_dim, r->layer_bounds(layer), r->kv + kv_elems * layer, r->n_heads, r->P,
                                    budget, r->pos, r->scores, r->lists, r->list_len, r->quest_splits, r->partial, r->out,
                                    r->n_heads * r->hd, o_in, NULL, err, err_len);
    }
    return aqc__attention(st, r->pdl, r->kv + kv_elems * layer, NULL, r->list_len, r->max_pages, r->qkv, r->qkv_dim, r->n_heads, r->n_kv,
                          r->hd, r->P, r->pos, r->n_q, r->splits / r->n_q > 1 ? r->splits / r->n_q : 1, r->partial, r->out,
                          r->n_heads * r->hd, o_in, err, err_len);
}

extern "C" int aqc_check_attention(int n_ctx, int n_queries, int n_heads, int n_kv_heads, int head_dim, int page_size, int budget,
                                   int bounds_bits, int one_grid, const float *k, const float *v, const float *q, float *out,
                                   int *pages, uint8_t *bounds_out, char *err, size_t err_len) {
    aqc__scratch sc;
    aqc__attn_rig r;
    const int kv_dim = n_kv_heads * head_dim, q_dim = n_heads * head_dim;
    if (head_dim % 8 || 32 % (head_dim / 8) || head_dim > AQC_MAX_HD || n_heads % n_kv_heads || n_heads / n_kv_heads > AQC_MAX_GROUP || n_queries < 1 ||
        n_queries > n_ctx || (budget && n_queries > 1) || (bounds_bits != 8 && bounds_bits != 16) ||
        (one_grid && (!budget || n_ctx <= budget || bounds_bits != 8))) {
        aqc__err(err, err_len, "attention check: unsupported shape");
        return -1;
    }
    if (aqc__rig_new(&r, &sc, n_ctx, n_queries, n_heads, n_kv_heads, head_dim, page_size, 1, err, err_len)) return -1;
    r.bounds_bits = bounds_bits;
    const aqc__bounds bounds = r.layer_bounds(0);
    aqc__bounds no_bounds = bounds;
    no_bounds.base = NULL;
    float *tokens = (float *)sc.get((size_t)n_ctx * r.qkv_dim * 4, err, err_len);
    int *positions = (int *)sc.get((size_t)n_ctx * 4, err, err_len);
    if (!tokens || !positions) return -1;
    {
        std::vector<int> p(n_ctx);
        for (int t = 0; t < n_ctx; t++) p[t] = t;
        AQC_TRY(cudaMemcpy(positions, p.data(), (size_t)n_ctx * 4, cudaMemcpyHostToDevice));
    }
    std::vector<float> host((size_t)n_ctx * r.qkv_dim, 0.0f);
    for (int t = 0; t < n_ctx; t++) {
        memcpy(&host[(size_t)t * r.qkv_dim + q_dim], k + (size_t)t * kv_dim, (size_t)kv_dim * 4);
        memcpy(&host[(size_t)t * r.qkv_dim + q_dim + kv_dim], v + (size_t)t * kv_dim, (size_t)kv_dim * 4);
    }
    AQC_TRY(cudaMemcpy(tokens, host.data(), host.size() * 4, cudaMemcpyHostToDevice));
    AQC_TRY(cudaMemset(r.pos, 0, 4));
    aqc__check_stream st;
    AQC_TRY(cudaStreamCreateWithFlags(&st.s, cudaStreamNonBlocking));
    AQC_TRY(cudaDeviceSynchronize());   /* the memsets above ran on the default stream, which st does not wait for */
    /* every position appended through the real kernels (no rotation: n_rot 0): all but the last
       page_size + 1 as a prompt's batch, their bounds from scratch, then those one at a time as
       decode steps append them, a page's bounds completed on the way */
    const int batch = std::max(0, n_ctx - (page_size + 1));
    if (batch && (aqc__rope_append(st.s, r.pdl, tokens, r.qkv_dim, n_heads, n_kv_heads, head_dim, 0, 10000.0f, positions, r.kv, page_size,
                                   no_bounds, batch, err, err_len) ||
                  aqc__page_bounds(st.s, r.kv, bounds, page_size, positions, batch, r.max_pages, err, err_len)))
        return -1;
    for (int t = batch; t < n_ctx; t++)
        if (aqc__rope_append(st.s, r.pdl, tokens + (size_t)t * r.qkv_dim, r.qkv_dim, n_heads, n_kv_heads, head_dim, 0, 10000.0f,
                             positions + t, r.kv, page_size, bounds, 1, err, err_len))
            return -1;
    AQC_TRY(cudaStreamSynchronize(st.s));
    if (bounds_out) {   /* the complete pages' records, as awq_quest.h lays them out */
        const size_t layer_bytes = aqc__bounds_layer_bytes(bounds_bits, n_kv_heads, head_dim, r.max_pages);
        std::vector<unsigned char> all(layer_bytes);
        AQC_TRY(cudaMemcpy(all.data(), r.bounds, layer_bytes, cudaMemcpyDeviceToHost));
        aqc__bounds hb = bounds;
        hb.base = all.data();
        const size_t record = bounds_bits == 8 ? 2 * head_dim + head_dim / 4 : 4 * head_dim;
        for (int h = 0; h < n_kv_heads; h++)
            for (int p = 0; p < n_ctx / page_size; p++) {
                uint8_t *to = bounds_out + ((size_t)h * (n_ctx / page_size) + p) * record;
                if (bounds_bits == 16) memcpy(to, hb.f16(h, p), 4 * head_dim);
                else {
                    memcpy(to, hb.codes(h, p), 2 * head_dim);
                    memcpy(to + 2 * head_dim, hb.scales(h, p), head_dim / 4);
                }
            }
    }
    const int first = n_ctx - n_queries;
    for (int t = 0; t < n_queries; t++) memcpy(&host[(size_t)t * r.qkv_dim], q + (size_t)t * q_dim, (size_t)q_dim * 4);
    AQC_TRY(cudaMemcpy(r.pos, &first, 4, cudaMemcpyHostToDevice));
    AQC_TRY(cudaMemcpy(r.qkv, host.data(), (size_t)n_queries * r.qkv_dim * 4, cudaMemcpyHostToDevice));
    AQC_TRY(cudaMemset(r.out, 0xff, (size_t)n_queries * q_dim * 4));
    AQC_TRY(cudaDeviceSynchronize());   /* the poisoned output, as above */
    /* a decode step's merge also preps the o projection's input: the same bytes as the prep
       kernel makes of the merged output (both[0] from the merge, both[1] from aqc__prep) */
    const bool prep = n_queries == 1 && head_dim % 32 == 0;
    aqc__prepped both[2];
    for (int i = 0; i < (prep ? 2 : 0); i++) {
        both[i].xh = (__half *)sc.get((size_t)q_dim * 2, err, err_len);
        both[i].xscale = (float *)sc.get((size_t)q_dim / 8, err, err_len);
        both[i].xsum = (float *)sc.get((size_t)q_dim / 8, err, err_len);
        if (!both[i].xh || !both[i].xscale || !both[i].xsum) return -1;
    }
    /* the merge's prep (both[0]) against the prep kernel's of the attention's output att_out */
    auto check_prep = [&](const float *att_out) -> int {
        if (!prep) return 0;
        if (aqc__prep(st.s, r.pdl, att_out, NULL, 0, NULL, q_dim, q_dim, 0.0f, 1, 1, both[1].xh, both[1].xscale, both[1].xsum, q_dim,
                      err, err_len))
            return -1;
        AQC_TRY(cudaStreamSynchronize(st.s));
        std::vector<unsigned char> a((size_t)q_dim * 4), b((size_t)q_dim * 4);
        const void *parts[2][3] = {{both[0].xh, both[0].xscale, both[0].xsum}, {both[1].xh, both[1].xscale, both[1].xsum}};
        const size_t bytes[3] = {(size_t)q_dim * 2, (size_t)q_dim / 8, (size_t)q_dim / 8};
        for (int k = 0; k < 3; k++) {
            AQC_TRY(cudaMemcpy(a.data(), parts[0][k], bytes[k], cudaMemcpyDeviceToHost));
            AQC_TRY(cudaMemcpy(b.data(), parts[1][k], bytes[k], cudaMemcpyDeviceToHost));
            if (memcmp(a.data(), b.data(), bytes[k])) {
                aqc__err(err, err_len, "attention check: the merge's prep of the output differs from the prep kernel's (%s)",
                         k == 0 ? "values" : k == 1 ? "scales" : "sums");
                return -1;
            }
        }
        return 0;
    };
    if (aqc__rig_step(&r, 0, budget, st.s, err, err_len, prep ? &both[0] : NULL) || check_prep(r.out)) return -1;
    AQC_TRY(cudaStreamSynchronize(st.s));
    AQC_TRY(cudaMemcpy(out, r.out, (size_t)n_queries * q_dim * 4, cudaMemcpyDeviceToHost));
    if (n_queries == 1 && !budget) {   /* as many splits as the pages allow: the merge's longest loops */
        const int many = std::min(AQC_MAX_SPLITS, std::max(1, r.max_pages / AQC_ATT_WARPS));
        float *alt = (float *)sc.get((size_t)q_dim * 4, err, err_len);
        if (!alt || aqc__attention(st.s, r.pdl, r.kv, NULL, r.list_len, r.max_pages, r.qkv, r.qkv_dim, n_heads, n_kv_heads, head_dim,
                                   page_size, r.pos, 1, many, r.partial, alt, q_dim, NULL, err, err_len))
            return -1;
        std::vector<float> b((size_t)q_dim);
        /* st does not block the default stream that cudaMemcpy runs on: without this wait the
           copy took the output before the kernels wrote it (the H100 showed it; the emulation
           now defers a non-blocking stream's work until something waits for it) */
        AQC_TRY(cudaStreamSynchronize(st.s));
        AQC_TRY(cudaMemcpy(b.data(), alt, (size_t)q_dim * 4, cudaMemcpyDeviceToHost));
        double diff = 0.0, mag = 1e-30;
        for (int i = 0; i < q_dim; i++) {
            const double d = fabs((double)out[i] - (double)b[i]);
            diff = d == d ? std::max(diff, d) : INFINITY;   /* a NaN fails, where std::max would drop it */
            mag = std::max(mag, (double)fabsf(out[i]));
        }
        if (!(diff <= 1e-5 * mag)) {
            aqc__err(err, err_len, "attention check: %d splits give another output than %d (max difference %.2e of %.2e)", many,
                     r.splits, diff, mag);
            return -1;
        }
    }
    if (budget && n_ctx > budget && n_queries == 1) {   /* the one-kernel selection lists the same pages, twice (its tickets reset) */
        const size_t list_ints = (size_t)n_kv_heads * r.max_pages;
        int *lists2 = (int *)sc.get(list_ints * 4, err, err_len), *len2 = (int *)sc.get((size_t)n_kv_heads * 4, err, err_len);
        if (!lists2 || !len2) return -1;
        std::vector<int> a(list_ints), b(list_ints), la(n_kv_heads), lb(n_kv_heads);
        AQC_TRY(cudaStreamSynchronize(st.s));
        AQC_TRY(cudaMemcpy(a.data(), r.lists, list_ints * 4, cudaMemcpyDeviceToHost));
        AQC_TRY(cudaMemcpy(la.data(), r.list_len, (size_t)n_kv_heads * 4, cudaMemcpyDeviceToHost));
        for (int run = 0; run < 2; run++) {
            AQC_TRY(cudaMemset(lists2, 0xff, list_ints * 4));
            AQC_TRY(cudaMemset(len2, 0xff, (size_t)n_kv_heads * 4));
            /* and the scores: the two kernels' are the same numbers, so a block that selected
               before the others had scored would not show otherwise */
            AQC_TRY(cudaMemset(r.scores, 0xff, (size_t)n_kv_heads * r.max_pages * 4));
            AQC_TRY(cudaDeviceSynchronize());
            if (aqc__quest_select_fused(st.s, r.pdl, r.qkv, bounds, n_heads, page_size, budget, r.pos,
                                        r.scores, r.done, lists2, len2, err, err_len))
                return -1;
            AQC_TRY(cudaStreamSynchronize(st.s));
            AQC_TRY(cudaMemcpy(b.data(), lists2, list_ints * 4, cudaMemcpyDeviceToHost));
            AQC_TRY(cudaMemcpy(lb.data(), len2, (size_t)n_kv_heads * 4, cudaMemcpyDeviceToHost));
            for (int h = 0; h < n_kv_heads; h++)
                if (la[h] != lb[h] || memcmp(&a[(size_t)h * r.max_pages], &b[(size_t)h * r.max_pages], (size_t)la[h] * 4)) {
                    aqc__err(err, err_len, "attention check: the one-kernel Quest selection lists other pages for KV head %d (run %d)", h,
                             run + 1);
                    return -1;
                }
        }
    }
    /* selection and attention in one grid: the same output, twice (its counters reset), and its
       merge's prep; with the step's attention width, and with the register kernel's where the
       step's is the tensor-core one (both are timed) */
    const int group = n_heads / n_kv_heads, step_maxg = aqc__attention_maxg(group, head_dim, page_size);
    for (int width = 0; width < (!one_grid ? 0 : step_maxg == AQC_ATT_TC ? 2 : 1); width++) {
        const int maxg = aqc__onepass_maxg(group, head_dim, page_size, width == 1);
        float *alt = (float *)sc.get((size_t)q_dim * 4, err, err_len);
        std::vector<float> b((size_t)q_dim);
        if (!alt) return -1;
        for (int run = 0; run < 2; run++) {
            AQC_TRY(cudaStreamSynchronize(st.s));
            AQC_TRY(cudaMemset(alt, 0xff, (size_t)q_dim * 4));
            AQC_TRY(cudaMemset(r.lists, 0xff, (size_t)n_kv_heads * r.max_pages * 4));
            AQC_TRY(cudaMemset(r.scores, 0xff, (size_t)n_kv_heads * r.max_pages * 4));
            for (int i = 0; i < (prep ? 2 : 0); i++) AQC_TRY(cudaMemset(both[i].xh, 0xff, (size_t)q_dim * 2));
            AQC_TRY(cudaDeviceSynchronize());
            if (aqc__quest_onepass(st.s, r.pdl, maxg, r.qkv, r.qkv_dim, bounds, r.kv, n_heads, page_size, budget, r.pos, r.scores,
                                   r.onepass_sync, r.lists, r.list_len, r.quest_splits, r.partial, alt, q_dim, prep ? &both[0] : NULL,
                                   err, err_len) ||
                check_prep(alt))
                return -1;
            AQC_TRY(cudaStreamSynchronize(st.s));
            AQC_TRY(cudaMemcpy(b.data(), alt, (size_t)q_dim * 4, cudaMemcpyDeviceToHost));
            /* bit for bit with the step's kernel (the register kernel's widths differ only in the
               heads they have room for); the tensor-core kernel and the register one round their
               own ways */
            const bool same_kernel = (maxg == AQC_ATT_TC) == (step_maxg == AQC_ATT_TC);
            double diff = 0.0, mag = 1e-30;
            for (int i = 0; i < q_dim; i++) {
                const double d = fabs((double)out[i] - (double)b[i]);
                diff = d == d ? std::max(diff, d) : INFINITY;
                mag = std::max(mag, (double)fabsf(out[i]));
            }
            if (same_kernel ? memcmp(b.data(), out, (size_t)q_dim * 4) != 0 : !(diff <= 1e-5 * mag)) {
                aqc__err(err, err_len, "attention check: Quest in one grid (%s attention) gives another output than the step's kernels "
                         "(run %d, max difference %.2e of %.2e)", maxg == AQC_ATT_TC ? "tensor-core" : "register", run + 1, diff, mag);
                return -1;
            }
        }
    }
    if (pages && budget && n_ctx > budget) {   /* a context within the budget stays dense: no list */
        const int keep = budget / page_size;
        for (int h = 0; h < n_kv_heads; h++)
            AQC_TRY(cudaMemcpy(pages + (size_t)h * keep, r.lists + (size_t)h * r.max_pages, (size_t)keep * 4, cudaMemcpyDeviceToHost));
    }
    AQC_TRY(cudaDeviceSynchronize());
    return 0;
}

template <int CACHE>
__global__ void __launch_bounds__(AQC_TOPK_THREADS, 1) aqc_top_k_check_kernel(const float *vals, int n, int k, int *out) {
    aqc__block_top_k<CACHE>(vals, n, k, out);
}

extern "C" int aqc_check_top_k(const float *vals, int n, int k, int mode, int *out, char *err, size_t err_len) {
    aqc__scratch sc;
    if (k < 1 || k > n || (mode == 1 && n > AQC_TOPK_CACHE * AQC_TOPK_THREADS) || (mode == 2 && k != 1) || mode < 0 || mode > 2) {
        aqc__err(err, err_len, "top-k check: bad n %d, k %d or mode %d", n, k, mode);
        return -1;
    }
    float *dv = (float *)sc.get((size_t)n * 4, err, err_len);
    int *dout = (int *)sc.get((size_t)(k > AQC_STATE_INTS ? k : AQC_STATE_INTS) * 4, err, err_len);
    if (!dv || !dout) return -1;
    AQC_TRY(cudaMemcpy(dv, vals, (size_t)n * 4, cudaMemcpyHostToDevice));
    if (mode == 2) {   /* the decode step's argmax, as aqc_step_greedy launches it */
        AQC_TRY(aqc__launch(false, aqc_argmax_kernel, dim3(1), dim3(aqc__vocab_threads(n)), 0, 0, (const float *)dv, n, dout));
        AQC_TRY(cudaMemcpy(out, dout + AQC_NEXT, 4, cudaMemcpyDeviceToHost));
        return 0;
    }
    const float *vals_d = dv;
    if (mode == 1)   /* as Quest launches it */
        AQC_TRY(aqc__launch(false, aqc_top_k_check_kernel<AQC_TOPK_CACHE>, dim3(1), dim3(aqc__topk_threads(n)), 0, 0, vals_d, n, k, dout));
    else AQC_TRY(aqc__launch(false, aqc_top_k_check_kernel<0>, dim3(1), dim3(AQC_TOPK_THREADS), 0, 0, vals_d, n, k, dout));
    AQC_TRY(cudaMemcpy(out, dout, (size_t)k * 4, cudaMemcpyDeviceToHost));
    return 0;
}

/* One kernel's entry for aqc_kernel_occupancy. */
template <class... KArgs>
static int aqc__occupancy_of(void (*kernel)(KArgs...), const char *name, int threads, size_t dynamic_shared, aqc_occupancy *e,
                             char *err, size_t err_len) {
    cudaFuncAttributes a;
    int blocks = 0;
    AQC_TRY(cudaFuncGetAttributes(&a, kernel));
    AQC_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, dynamic_shared));
    e->kernel = name;
    e->threads = threads;
    e->registers = a.numRegs;
    e->shared_bytes = (int)(a.sharedSizeBytes + dynamic_shared);
    e->blocks_per_sm = blocks;
    return 0;
}

extern "C" int aqc_kernel_occupancy(int head_dim, int max_pages, int kp, aqc_occupancy *out, int max_entries, char *err,
                                    size_t err_len) {
    aqc_occupancy all[15];
    int n = 0;
    if (head_dim < 8 || head_dim > AQC_TC_MAX_HD || max_pages < 1 || kp < 32 || kp % 32) {
        aqc__err(err, err_len, "occupancy: bad head_dim %d, max_pages %d or kp %d", head_dim, max_pages, kp);
        return -1;
    }
    if (aqc__allow_shared_memory(kp, err, err_len) || aqc__allow_attention_shared_memory(err, err_len)) return -1;
    const size_t gemv_shared = aqc__gemv_shared_bytes(kp);
    if (aqc__occupancy_of(aqc_prep_kernel, "prep (RMSNorm, SwiGLU)", AQC_PREP_THREADS, 0, &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_gemv_4bit_kernel<AQC_INT4>, "GEMV int4", AQC_GEMV_WARPS * 32, gemv_shared, &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_gemv_4bit_kernel<AQC_OVP>, "GEMV OliVe", AQC_GEMV_WARPS * 32, gemv_shared, &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_gemv_f16_kernel, "GEMV f16", AQC_GEMV_WARPS * 32, 0, &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_rope_append_kernel, "RoPE, append", (head_dim / 2 + 31) / 32 * 32, 0, &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_quest_score_kernel<16>, "Quest score", AQC_SCORE_WARPS * 32, 0, &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_quest_score_kernel<8>, "Quest score, 8-bit bounds", AQC_SCORE_WARPS * 32, 0, &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_quest_topk_kernel, "Quest top-k", aqc__topk_threads(max_pages), 0, &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_attention_kernel<1>, "attention, registers (1 head per KV)", AQC_ATT_WARPS * 32,
                          aqc__attention_shared(1, head_dim), &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_attention_kernel<AQC_ATT_TC>, "attention, tensor cores", AQC_ATT_WARPS * 32,
                          aqc__attention_shared(AQC_ATT_TC, head_dim), &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_attention_merge_kernel, "attention merge", AQC_MERGE_THREADS, 0, &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_quest_onepass_kernel<1>, "Quest in one grid, registers (1 head)", AQC_ATT_WARPS * 32,
                          aqc__attention_shared(1, head_dim), &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_quest_onepass_kernel<AQC_ATT_TC>, "Quest in one grid, tensor cores", AQC_ATT_WARPS * 32,
                          aqc__attention_shared(AQC_ATT_TC, head_dim), &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_argmax_kernel, "argmax", 1024, 0, &all[n++], err, err_len) ||
        aqc__occupancy_of(aqc_sample_kernel, "sampler", AQC_TOPK_THREADS, 0, &all[n++], err, err_len))
        return -1;
    if (n > max_entries) n = max_entries;
    memcpy(out, all, sizeof(aqc_occupancy) * (size_t)n);
    return n;
}

extern "C" int aqc_check_sample(const float *logits, int n, const aqc_sampling *p, float r, int32_t *out, char *err,
                                size_t err_len) {
    aqc__scratch sc;
    if (n < 1 || p->temperature <= 0.0f || p->top_k < 1 || p->top_k > AQC_SAMPLE_MAX_K || p->top_k > n) {
        aqc__err(err, err_len, "sampler check: bad n %d, temperature %g or top_k %d", n, p->temperature, p->top_k);
        return -1;
    }
    float *dv = (float *)sc.get((size_t)n * 4, err, err_len);
    int *state = (int *)sc.get((size_t)AQC_STATE_INTS * 4, err, err_len);
    if (!dv || !state) return -1;
    AQC_TRY(cudaMemcpy(dv, logits, (size_t)n * 4, cudaMemcpyHostToDevice));
    AQC_TRY(aqc__launch(false, aqc_sample_kernel, dim3(1), dim3(aqc__vocab_threads(n)), 0, 0, (const float *)dv, n, p->temperature,
                        p->top_k, p->top_p, p->min_p, r, state));
    AQC_TRY(cudaMemcpy(out, state + AQC_NEXT, 4, cudaMemcpyDeviceToHost));
    return 0;
}

static double aqc__median(std::vector<float> &v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

/* Times fn(i, stream) for i = 0 .. iters-1 as a decode step runs kernels: captured into one CUDA
   graph (so that host launch costs, which the graph removes, are not counted), launched once to
   warm up and then AQC_TIME_REPS times; the median launch over iters, in us.  Where capture
   fails (a library that cannot be captured), or with graph = false, the calls are timed back to
   back on the stream. */
#define AQC_TIME_REPS 5
template <class F>
static int aqc__time(int iters, F fn, double *us, char *err, size_t err_len, bool graph = true) {
    cudaStream_t st;
    cudaEvent_t a, b;
    cudaGraph_t g = NULL;
    cudaGraphExec_t ge = NULL;
    std::vector<float> t;
    int captured = 0;
    AQC_TRY(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    AQC_TRY(cudaEventCreate(&a));
    AQC_TRY(cudaEventCreate(&b));
    if (graph && cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
        int ok = 1;
        for (int i = 0; i < iters && ok; i++) ok = fn(i, st) == 0;
        cudaError_t e = cudaStreamEndCapture(st, &g);
        captured = ok && e == cudaSuccess && g && cudaGraphInstantiate(&ge, g, 0) == cudaSuccess;
        if (g) cudaGraphDestroy(g);
    }
    cudaGetLastError();   /* a failed capture leaves its error behind */
    for (int rep = 0; rep <= AQC_TIME_REPS; rep++) {
        float ms;
        AQC_TRY(cudaEventRecord(a, st));
        if (captured) AQC_TRY(cudaGraphLaunch(ge, st));
        else
            for (int i = 0; i < iters; i++)
                if (fn(i, st)) return -1;
        AQC_TRY(cudaEventRecord(b, st));
        AQC_TRY(cudaEventSynchronize(b));
        AQC_TRY(cudaEventElapsedTime(&ms, a, b));
        if (rep > 0) t.push_back(ms * 1000.0f / iters);   /* rep 0 warms up */
    }
    if (ge) cudaGraphExecDestroy(ge);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaStreamDestroy(st);
    *us = aqc__median(t);
    return 0;
}

extern "C" int aqc_time_gemv(int64_t rows, int64_t cols, int group, int iters, int int4_only, aqc_gemv_timing *t, char *err,
                             size_t err_len) {
    if (aqc__allow_shared_memory(cols, err, err_len)) return -1;
    aqc__scratch sc;
    cublasHandle_t blas;
    /* copies of every matrix, four times the L2 in all, so that calls in turn read device memory */
    int l2 = 0, device = 0;
    AQC_TRY(cudaGetDevice(&device));
    AQC_TRY(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
    const int copies = (int)std::min<int64_t>(64, std::max<int64_t>(4, 4 * (int64_t)l2 / (rows * cols / 2) + 1));
    const size_t n_int4 = (size_t)rows * cols / 2, n_f16 = (size_t)rows * cols, n_groups = (size_t)rows * (cols / group);
    std::vector<aqc__weight> w4(copies), wo(copies), w16(copies);
    half2 *lut = (half2 *)sc.get(512 * sizeof(half2), err, err_len);
    __half *xh = (__half *)sc.get((size_t)cols * 2, err, err_len);
    float *xs = (float *)sc.get((size_t)cols / 8, err, err_len), *xsum = (float *)sc.get((size_t)cols / 8, err, err_len);
    float *y = (float *)sc.get((size_t)rows * 4, err, err_len);
    __half *yh = (__half *)sc.get((size_t)rows * 2, err, err_len);
    if ((group != 32 && group != 64 && group != 128) || cols % group) {
        aqc__err(err, err_len, "gemv timing: group %d is not 32, 64 or 128, or cols %lld is not a multiple of it", group, (long long)cols);
        return -1;
    }
    if (!xh || !xs || !xsum || !y || !yh || !lut) return -1;
    AQC_TRY(aqc__fill_random((__half *)lut, 1024, 3, 0));
    for (int i = 0; i < copies; i++) {
        w4[i].lut = w16[i].lut = NULL;
        w4[i].format = AQC_INT4; w4[i].rows = rows; w4[i].cols = w4[i].kp = cols; w4[i].group = group;
        w16[i].format = AQC_F16; w16[i].rows = rows; w16[i].cols = w16[i].kp = cols; w16[i].group = 0;
        w16[i].scales = w16[i].mins = NULL;
        if (!(w4[i].data = sc.get(n_int4, err, err_len)) || !(w4[i].scales = (__half *)sc.get(n_groups * 2, err, err_len)) ||
            !(w4[i].mins = (__half *)sc.get(n_groups * 2, err, err_len)) ||
            (!int4_only && !(w16[i].data = sc.get(n_f16 * 2, err, err_len))))
            return -1;
        /* random codes and f16 values in [-1, 1): the scales and offsets too, scaled down */
        AQC_TRY(aqc__fill_random((__half *)w4[i].data, (int64_t)(n_int4 / 2), 11 + i, 0));
        AQC_TRY(aqc__fill_random(w4[i].scales, (int64_t)n_groups, 23 + i, 0));
        AQC_TRY(aqc__fill_random(w4[i].mins, (int64_t)n_groups, 37 + i, 0));
        if (!int4_only) AQC_TRY(aqc__fill_random((__half *)w16[i].data, (int64_t)n_f16, 41 + i, 0));
        wo[i] = w4[i];   /* the same bytes read as OliVe pairs: only the decode differs */
        wo[i].format = AQC_OVP;
        wo[i].lut = lut;
    }
    AQC_TRY(aqc__fill_random(xh, cols, 5, 0));
    AQC_TRY(aqc__fill_random(yh, rows, 6, 0));
    {
        std::vector<float> ones((size_t)cols / 32, 1.0f);
        AQC_TRY(cudaMemcpy(xs, ones.data(), ones.size() * 4, cudaMemcpyHostToDevice));
        AQC_TRY(cudaMemcpy(xsum, ones.data(), ones.size() * 4, cudaMemcpyHostToDevice));
    }
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) { aqc__err(err, err_len, "cuBLAS: cannot create a handle"); return -1; }
    {   /* a workspace of its own, so that cuBLAS allocates nothing while a graph is captured */
        const size_t ws_bytes = 32u << 20;
        void *ws = sc.get(ws_bytes, err, err_len);
        if (!ws || cublasSetWorkspace(blas, ws, ws_bytes) != CUBLAS_STATUS_SUCCESS) {
            cublasDestroy(blas);
            aqc__err(err, err_len, "cuBLAS: cannot set a workspace");
            return -1;
        }
    }
    const __half one = __float2half(1.0f), zero = __float2half(0.0f);
    bool pdl = false;
    int rc = aqc__device_pdl(&pdl, err, err_len);
    t->ovp_us = t->f16_us = t->cublas_us = t->int4_stages_us = 0.0;
    if (!rc)
        rc = aqc__time(iters, [&](int i, cudaStream_t st) { return aqc__gemv(st, pdl, &w4[i % copies], xh, xs, xsum, y, 0, err, err_len); },
                       &t->int4_us, err, err_len);
    if (!rc && cols > 32 * 32 * AQC_GEMV_STAGE) {   /* rows of more than one stage: the same bytes read as stage by stage */
        std::vector<aqc__weight> w_stages(w4);
        for (aqc__weight &w : w_stages) w.stage_major = true;
        rc = aqc__time(iters, [&](int i, cudaStream_t st) { return aqc__gemv(st, pdl, &w_stages[i % copies], xh, xs, xsum, y, 0, err, err_len); },
                       &t->int4_stages_us, err, err_len);
    }
    if (int4_only) {
        cublasDestroy(blas);
        return rc;
    }
    if (!rc)
        rc = aqc__time(iters, [&](int i, cudaStream_t st) { return aqc__gemv(st, pdl, &wo[i % copies], xh, xs, xsum, y, 0, err, err_len); },
                       &t->ovp_us, err, err_len);
    if (!rc)
        rc = aqc__time(iters, [&](int i, cudaStream_t st) { return aqc__gemv(st, pdl, &w16[i % copies], xh, xs, xsum, y, 0, err, err_len); },
                       &t->f16_us, err, err_len);
    if (!rc)
        rc = aqc__time(iters, [&](int i, cudaStream_t st) {
            cublasStatus_t st_ = cublasSetStream(blas, st);
            if (st_ == CUBLAS_STATUS_SUCCESS)
                st_ = cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, 1, (int)cols, &one, w16[i % copies].data, CUDA_R_16F,
                                   (int)cols, xh, CUDA_R_16F, (int)cols, &zero, yh, CUDA_R_16F, (int)rows, CUBLAS_COMPUTE_16F,
                                   CUBLAS_GEMM_DEFAULT);
            if (st_ != CUBLAS_STATUS_SUCCESS) { aqc__err(err, err_len, "cuBLAS GEMV: status %d", (int)st_); return -1; }
            return 0;
        }, &t->cublas_us, err, err_len);
    cublasDestroy(blas);
    return rc;
}

extern "C" int aqc_time_attention(int n_ctx, int n_heads, int n_kv_heads, int head_dim, int page_size, int budget, int iters,
                                  int one_grid, aqc_attention_timing *t, char *err, size_t err_len) {
    aqc__scratch sc;
    aqc__attn_rig r;
    const size_t layer_bytes = (size_t)((n_ctx + page_size - 1) / page_size) * n_kv_heads * 2 * page_size * head_dim * 2;
    /* enough layers that what a pass reads, dense or Quest (the selected pages and every page's
       bounds), is four times the L2: each call reads device memory, as a decode step does */
    int l2 = 0, device = 0;
    AQC_TRY(cudaGetDevice(&device));
    AQC_TRY(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
    const double quest_bytes = (double)layer_bytes * ((double)budget / n_ctx + 1.0 / page_size);
    int layers = (int)std::min(16.0, std::ceil(4.0 * l2 / std::min((double)layer_bytes, quest_bytes)));
    if (layers < 1) layers = 1;
    if (aqc__rig_new(&r, &sc, n_ctx, 1, n_heads, n_kv_heads, head_dim, page_size, layers, err, err_len)) return -1;
    const size_t kv_elems = (size_t)r.max_pages * n_kv_heads * 2 * page_size * head_dim;
    AQC_TRY(aqc__fill_random(r.kv, (int64_t)(kv_elems * layers), 99, 0));
    /* every layer's bounds from scratch, as a prompt leaves them */
    auto make_bounds = [&](int bits) {
        r.bounds_bits = bits;
        AQC_TRY(cudaMemset(r.pos, 0, 4));
        for (int l = 0; l < layers; l++)
            if (aqc__page_bounds(0, r.kv + kv_elems * l, r.layer_bounds(l), page_size, r.pos, n_ctx, r.max_pages, err, err_len)) return -1;
        int last = n_ctx - 1;
        AQC_TRY(cudaMemcpy(r.pos, &last, 4, cudaMemcpyHostToDevice));
        return 0;
    };
    if (make_bounds(16)) return -1;
    {
        std::vector<float> q((size_t)r.qkv_dim);
        uint64_t z = 12345;
        for (size_t i = 0; i < q.size(); i++) {
            z = z * 6364136223846793005ull + 1442695040888963407ull;
            q[i] = (float)((int64_t)(z >> 40) - (1 << 23)) / (float)(1 << 23);
        }
        AQC_TRY(cudaMemcpy(r.qkv, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
    }
    if (one_grid) {   /* Quest in one grid, alone (see aq_cuda.h) */
        const int group = n_heads / n_kv_heads, step_tc = aqc__attention_maxg(group, head_dim, page_size) == AQC_ATT_TC;
        r.quest_splits = r.splits_for(budget);
        if (make_bounds(8)) return -1;
        t->onepass8_register_us = 0.0;
        for (int width = 0; width < (step_tc ? 2 : 1); width++) {
            const int maxg = aqc__onepass_maxg(group, head_dim, page_size, width == 1);
            if (aqc__time(iters, [&](int i, cudaStream_t st) {
                    return aqc__quest_onepass(st, r.pdl, maxg, r.qkv, r.qkv_dim, r.layer_bounds(i % layers), r.kv + kv_elems * (i % layers),
                                              n_heads, page_size, budget, r.pos, r.scores, r.onepass_sync, r.lists, r.list_len,
                                              r.quest_splits, r.partial, r.out, n_heads * head_dim, NULL, err, err_len);
                }, width ? &t->onepass8_register_us : &t->onepass8_us, err, err_len))
                return -1;
        }
        AQC_TRY(cudaDeviceSynchronize());
        return 0;
    }
    t->onepass8_us = t->onepass8_register_us = 0.0;
    /* device-to-device copy bandwidth: the ceiling for the dense kernel (copies of 512 MB back to
       back on a stream: as copy nodes of a graph they ran slower) */
    {
        size_t bytes = 512u << 20;
        void *a = sc.get(bytes, err, err_len), *b = sc.get(bytes, err, err_len);
        double us;
        if (!a || !b) return -1;
        if (aqc__time(20, [&](int, cudaStream_t st) { return aqc__cuda_failed(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, st), "copy", err, err_len) ? -1 : 0; },
                      &us, err, err_len, false))
            return -1;
        t->copy_gbps = 2.0 * (double)bytes / (us * 1e-6) / 1e9;
    }
    if (aqc__time(iters, [&](int i, cudaStream_t st) { return aqc__rig_step(&r, i % layers, 0, st, err, err_len); }, &t->dense_us, err, err_len))
        return -1;
    t->dense_gbps = (double)layer_bytes * (double)n_ctx / (double)(r.max_pages * page_size) / (t->dense_us * 1e-6) / 1e9;
    /* Quest whole, its selection, its score kernel alone, and the selection in one kernel
       (aqc_quest_select_kernel, to weigh against the two), with the bounds of either width */
    auto time_quest = [&](double *quest_us, double *select_us, double *score_us, double *select_fused_us) {
        if (aqc__time(iters, [&](int i, cudaStream_t st) { return aqc__rig_step(&r, i % layers, budget, st, err, err_len); }, quest_us, err,
                      err_len) ||
            aqc__time(iters, [&](int i, cudaStream_t st) {
                return aqc__quest_select(st, r.pdl, r.qkv, r.layer_bounds(i % layers), n_heads, page_size, budget, r.pos, r.scores,
                                         r.lists, r.list_len, err, err_len);
            }, select_us, err, err_len) ||
            aqc__time(iters, [&](int i, cudaStream_t st) {
                const aqc__bounds b = r.layer_bounds(i % layers);
                return aqc__cuda_failed(aqc__launch(r.pdl, b.bits == 8 ? aqc_quest_score_kernel<8> : aqc_quest_score_kernel<16>,
                                                    dim3(aqc__select_blocks(r.max_pages), n_kv_heads), dim3(AQC_SCORE_WARPS * 32), 0, st,
                                                    (const float *)r.qkv, b, n_heads, page_size, budget, (const int *)r.pos, r.scores),
                                        "score kernel", err, err_len);
            }, score_us, err, err_len) ||
            aqc__time(iters, [&](int i, cudaStream_t st) {
                return aqc__quest_select_fused(st, r.pdl, r.qkv, r.layer_bounds(i % layers), n_heads, page_size, budget, r.pos, r.scores,
                                               r.done, r.lists, r.list_len, err, err_len);
            }, select_fused_us, err, err_len))
            return -1;
        return 0;
    };
    if (make_bounds(8) || time_quest(&t->quest8_us, &t->select8_us, &t->score8_us, &t->select_fused8_us) || make_bounds(16) ||
        time_quest(&t->quest_us, &t->select_us, &t->score_us, &t->select_fused_us))
        return -1;
    /* the top-k alone (what the score kernel left, from L2), and a kernel that does nothing, each
       launched as the step launches them: the selection minus the score is the top-k plus the
       boundary between the two kernels, and the empty kernel is what any boundary costs */
    if (aqc__time(iters, [&](int, cudaStream_t st) {
            return aqc__cuda_failed(aqc__launch(r.pdl, aqc_quest_topk_kernel, dim3(n_kv_heads), dim3(aqc__topk_threads(r.max_pages)), 0,
                                                st, (const float *)r.scores, r.max_pages, page_size, budget, (const int *)r.pos, r.lists,
                                                r.list_len),
                                    "top-k kernel", err, err_len);
        }, &t->topk_us, err, err_len))
        return -1;
    if (aqc__time(iters, [&](int, cudaStream_t st) {
            return aqc__cuda_failed(aqc__launch(r.pdl, aqc_empty_kernel, dim3(1), dim3(32), 0, st), "empty kernel", err, err_len);
        }, &t->empty_us, err, err_len))
        return -1;
    /* the dense attention's merge alone (over what the last dense step left) */
    t->dense_splits = r.splits;
    if (aqc__time(iters, [&](int, cudaStream_t st) {
            return aqc__merge(st, r.pdl, r.partial, n_heads, n_kv_heads, head_dim, r.splits, 1, r.out, (int64_t)n_heads * head_dim, NULL,
                              err, err_len);
        }, &t->merge_us, err, err_len))
        return -1;
    /* the dense attention at other split counts (a page per warp of a split at least) */
    static const int dense_sweep[8] = {16, 20, 24, 28, 32, 40, 48, 64};
    for (int k = 0; k < 8; k++) {
        const int splits = dense_sweep[k];
        t->dense_sweep_splits[k] = splits;
        t->dense_sweep_us[k] = 0.0;
        if (splits > AQC_MAX_SPLITS || splits * AQC_ATT_WARPS > r.max_pages) continue;
        if (aqc__time(iters, [&](int i, cudaStream_t st) {
                return aqc__attention(st, r.pdl, r.kv + kv_elems * (i % layers), NULL, r.list_len, r.max_pages, r.qkv, r.qkv_dim, n_heads,
                                      n_kv_heads, head_dim, page_size, r.pos, 1, splits, r.partial, r.out,
                                      n_heads * head_dim, NULL, err, err_len);
            }, &t->dense_sweep_us[k], err, err_len))
            return -1;
    }
    /* the sparse attention alone at other split counts, over the lists the last selection left
       (the same amount of work whichever layer's cache it reads) */
    t->quest_splits = r.quest_splits;
    static const int quest_sweep[5] = {8, 16, 24, 32, 64};
    for (int k = 0; k < 5; k++) {
        const int splits = quest_sweep[k];
        t->sweep_splits[k] = splits;
        t->sweep_us[k] = 0.0;
        if (splits > budget / page_size) continue;   /* a page per split at least */
        if (aqc__time(iters, [&](int i, cudaStream_t st) {
                return aqc__attention(st, r.pdl, r.kv + kv_elems * (i % layers), r.lists, r.list_len, r.max_pages, r.qkv, r.qkv_dim,
                                      n_heads, n_kv_heads, head_dim, page_size, r.pos, 1, splits, r.partial,
                                      r.out, n_heads * head_dim, NULL, err, err_len);
            }, &t->sweep_us[k], err, err_len))
            return -1;
    }
    AQC_TRY(cudaDeviceSynchronize());
    return 0;
}
