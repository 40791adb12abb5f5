/* cuda_emu.h - just enough of CUDA, on the CPU, to run kernels/aq_cuda.cu's kernels and checks
   without a GPU (make test-cuda-emu, which runs tests/cuda_emu/run; kernels/README.md).

   Each GPU thread of a block is a fiber on the one host thread, and blocks run one after
   another.  A fiber runs until it reaches a barrier or a warp collective (shuffle, ballot, match,
   __syncwarp, aq_cuda.cu's mma.sync and ldmatrix) and then yields; a barrier completes when every
   thread of the block that has not exited has reached it, a collective when all 32 lanes of the
   warp have.  So race-free kernels compute what they compute on a GPU, in the same order within
   each thread, with f16 arithmetic rounded as the GPU rounds it (one rounding per operation,
   ties to even).

   Some races show: threads resume, and blocks run, in a shuffled order, and warps stall
   (AQE_SCHEDULE below); a cp.async copy lands only at its wait; ldmatrix reads each lane's row
   as the lane arrives; and fresh device memory is all ones.  What it cannot show: speed, and
   the rest of the memory model (every write is visible at once, programmatic launches do
   nothing, and streams run in issue order).

   It counts the bytes the kernels' streams (__ldg, cp.async) load from each named allocation,
   and the copies between host and device, for tests/cuda_emu/traffic.c, and stops a run whose
   stream load leaves its allocation.

   Not a general CUDA emulator: it has what aq_cuda.cu uses and stops with a message on anything
   else it is asked for. */
#ifndef AQ_CUDA_EMU_H
#define AQ_CUDA_EMU_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <ucontext.h>
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#endif
#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

/* ---- qualifiers ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static   /* blocks run one at a time: a static is the block's shared memory */
#define AQC_DYNAMIC_SHARED(type, name) type *name = (type *)aqe::dynamic_shared()

using std::max;
using std::min;

/* ---- vector types ---- */
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { uint4 v = {x, y, z, w}; return v; }
static inline float2 make_float2(float x, float y) { float2 v = {x, y}; return v; }
static inline float4 make_float4(float x, float y, float z, float w) { float4 v = {x, y, z, w}; return v; }

/* ---- f16 ---- */
struct __half { uint16_t bits; };
struct alignas(4) __half2 { __half x, y; };
typedef __half2 half2;

namespace aqe {
/* Exact, by bits: every f16 is an f32 (the model checks convert hundreds of millions). */
static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 31u, man = h & 1023u;
    uint32_t u;
    if (exp == 31) u = sign | 0x7f800000u | (man << 13);     /* inf, NaN (payload kept, as the GPU does) */
    else if (exp) u = sign | ((exp + 112u) << 23) | (man << 13);   /* normal: rebias 15 -> 127 */
    else {
        float f = (float)man * 0x1p-24f;   /* subnormal: exact, a power-of-two scale */
        memcpy(&u, &f, 4);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Nearest f16, ties to even, from a double (which holds a product or a sum of two f16 values
   exactly, so that an emulated f16 FMA rounds once, as the GPU's does).  By bits: the double's
   53-bit significand shifted down to the f16 step at its exponent (2^(e - 10), 2^-24 for
   subnormals), rounded to even on the bits shifted out. */
static inline uint16_t double_to_half(double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    const uint16_t sign = (u >> 63) ? 0x8000u : 0u;
    const int biased_exp = (int)((u >> 52) & 2047u);
    if (biased_exp == 2047 && (u & 0xfffffffffffffull)) return 0x7e00u;   /* NaN */
    d = fabs(d);
    if (d >= 65520.0) return sign | 0x7c00u;   /* 65504 is the largest; from halfway to 65536 up: inf */
    const int e = biased_exp - 1023;           /* d in [2^e, 2^(e+1)) */
    if (biased_exp == 0 || e < -26) return sign;   /* under half of 2^-24: zero */
    int step_exp = std::max(e - 10, -24);      /* 11 significant bits; subnormals' step is 2^-24 */
    const uint64_t significand = (u & 0xfffffffffffffull) | (1ull << 52);
    const int shift = 52 - e + step_exp;       /* 42 .. 54 */
    uint64_t n = significand >> shift;
    const uint64_t rest = significand & ((1ull << shift) - 1), half = 1ull << (shift - 1);
    if (rest > half || (rest == half && (n & 1))) n++;
    if (n >= 2048) { n >>= 1; step_exp++; }   /* rounded up to the next power of two (n was 2048: even) */
    const int biased = step_exp + 25;          /* value n * 2^step_exp, n in [1024, 2048) when normal */
    if (biased >= 31) return sign | 0x7c00u;
    if (n < 1024) return sign | (uint16_t)n;   /* subnormal (step_exp == -24) */
    return sign | (uint16_t)((biased << 10) | ((unsigned)n - 1024u));
}
}  // namespace aqe

static inline __half __float2half(float f) { __half h = {aqe::double_to_half(f)}; return h; }
static inline float __half2float(__half h) { return aqe::half_to_float(h.bits); }
static inline unsigned short __half_as_ushort(__half h) { return h.bits; }
static inline __half __ushort_as_half(unsigned short u) { __half h = {u}; return h; }
static inline __half2 __floats2half2_rn(float a, float b) { __half2 v = {__float2half(a), __float2half(b)}; return v; }
static inline __half2 __float2half2_rn(float a) { return __floats2half2_rn(a, a); }
static inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
static inline __half aqe_fma(__half a, __half b, __half c) {
    __half r = {aqe::double_to_half((double)__half2float(a) * (double)__half2float(b) + (double)__half2float(c))};
    return r;
}
static inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { __half2 r = {aqe_fma(a.x, b.x, c.x), aqe_fma(a.y, b.y, c.y)}; return r; }
static inline __half2 __hsub2(__half2 a, __half2 b) {
    __half2 r = {{aqe::double_to_half((double)__half2float(a.x) - __half2float(b.x))},
                 {aqe::double_to_half((double)__half2float(a.y) - __half2float(b.y))}};
    return r;
}
static inline bool __hlt(__half a, __half b) { return __half2float(a) < __half2float(b); }
static inline bool __hgt(__half a, __half b) { return __half2float(a) > __half2float(b); }

/* ---- scalar intrinsics ---- */
#define __expf(x) expf(x)   /* glibc declares a __expf of its own */
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline int __popc(unsigned v) { return __builtin_popcount(v); }
static inline int __ffs(unsigned v) { return __builtin_ffs((int)v); }
static inline int __clz(int v) { return v ? __builtin_clz((unsigned)v) : 32; }
namespace aqe {
static inline void count_load(const void *p, size_t bytes);
[[noreturn]] static inline void die(const char *what);
}
/* __ldg and cp.async are the kernels' streams (weights, KV pages, page bounds): their loads are
   counted per allocation (traffic, below) */
template <class T> static inline T __ldg(const T *p) {
    aqe::count_load(p, sizeof(T));
    return *p;
}
template <class T> static inline T __ldcg(const T *p) { return *p; }
/* blocks run one after another: every write is seen by the blocks after it */
static inline void __threadfence(void) {}
/* no other thread runs between a fiber's yields: plain read-modify-writes are atomic */
template <class T> static inline T atomicAdd(T *p, T v) { T old = *p; *p = old + v; return old; }
template <class T> static inline T atomicExch(T *p, T v) { T old = *p; *p = v; return old; }
/* a block that spins on a flag: since blocks run one after another, the flag is set by then or
   never will be; the clock runs fast so that a wait meant to trap after seconds traps after
   thousands of turns */
static inline void __nanosleep(unsigned) {}
static inline long long clock64(void) {
    static thread_local long long now = 0;
    return now += 1ll << 20;
}
[[noreturn]] static inline void __trap(void) { aqe::die("__trap: a kernel trapped"); }

/* ---- threads, blocks, barriers, warps ---- */
/* The built-in variables: one fiber runs at a time, and the scheduler sets threadIdx to its
   thread before it resumes it. */
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

/* Switching fibers: on x86-64 a switch of the six callee-saved registers and the stack pointer
   (glibc's swapcontext also saves the signal mask, a system call per switch, which made the
   model checks ten times slower); elsewhere ucontext. */
#if defined(__x86_64__) && defined(__linux__)
#define AQE_FAST_SWITCH 1
extern "C" void aqe_switch(void **save_sp, void *to_sp);
__asm__(".text\n"
        ".globl aqe_switch\n"
        ".type aqe_switch, @function\n"
        "aqe_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".size aqe_switch, .-aqe_switch\n");
#else
#define AQE_FAST_SWITCH 0
#endif

namespace aqe {
[[noreturn]] static inline void die(const char *what) {
    fprintf(stderr, "cuda_emu: %s\n", what);
    abort();
}

/* cp.async: a copy lands only when its thread waits for its group (aqc__cp_async_wait), the
   latest a GPU may land it, so that a read before the wait sees the old contents. */
struct AsyncCopy { void *dst; const void *src; };

struct Fiber {
#if AQE_FAST_SWITCH
    void *sp;         /* the saved stack pointer */
#else
    ucontext_t ctx;
#endif
    dim3 tid;
    int lane, warp;
    bool done;
    unsigned collective;   /* how many warp collectives this thread has entered */
    enum { RUNNING, AT_BARRIER, AT_COLLECTIVE } waits;   /* what it waits for, and which: */
    unsigned wait_token;   /* the barrier's generation, or the collective's parity */
    std::vector<AsyncCopy> async_open;                 /* issued since the last commit */
    std::vector<std::vector<AsyncCopy>> async_groups;  /* committed, oldest first */
};

/* The order threads resume in, each pass of the scheduler, and the order a grid's blocks run
   in: AQE_SCHEDULE=forward (by index), reverse, or shuffle (the default, from AQE_SEED: each
   pass the warps in a fresh order and each warp's lanes in a fresh one of a cheap kind, and
   each grid's blocks in a fresh order).  A thread runs from one barrier or warp collective
   to the next before another resumes, so a read of shared memory that another thread writes
   without a barrier between sees the write in one order and misses it in the other; between
   blocks, likewise for a block that reads what another block writes without a flag.  Checks
   that compare a result with a reference, or one run with the next, then fail. */
enum Schedule { SCHEDULE_FORWARD, SCHEDULE_REVERSE, SCHEDULE_SHUFFLE };
inline Schedule schedule_mode(void) {
    static const Schedule mode = [] {
        const char *s = getenv("AQE_SCHEDULE");
        if (!s || !*s || !strcmp(s, "shuffle")) return SCHEDULE_SHUFFLE;
        if (!strcmp(s, "forward")) return SCHEDULE_FORWARD;
        if (!strcmp(s, "reverse")) return SCHEDULE_REVERSE;
        fprintf(stderr, "cuda_emu: AQE_SCHEDULE=%s: want forward, reverse or shuffle\n", s);
        exit(2);
    }();
    return mode;
}
inline uint64_t schedule_rng = [] {
    const char *s = getenv("AQE_SEED");
    return s && *s ? strtoull(s, NULL, 0) * 2 + 1 : 0x9e3779b97f4a7c15ull;
}();
/* a number in [0, n), xorshift64* */
inline unsigned schedule_random(unsigned n) {
    schedule_rng ^= schedule_rng >> 12;
    schedule_rng ^= schedule_rng << 25;
    schedule_rng ^= schedule_rng >> 27;
    return (unsigned)((schedule_rng * 0x2545f4914f6cdd1dull >> 33) % n);
}
/* order[0..n) = 0..n-1 in the schedule's order */
inline void schedule_order(std::vector<int> &order, int n) {
    order.resize(n);
    const Schedule mode = schedule_mode();
    for (int i = 0; i < n; i++) order[i] = mode == SCHEDULE_REVERSE ? n - 1 - i : i;
    if (mode == SCHEDULE_SHUFFLE)
        for (int i = n - 1; i > 0; i--) std::swap(order[i], order[schedule_random((unsigned)i + 1)]);   /* Fisher-Yates */
}

struct Warp {
    uint64_t value[2][32];   /* a collective's values, by parity of its number */
    int arrived[2];
};

struct Block {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<char> stacks, shared;
    ucontext_t scheduler;
    void *scheduler_sp;
    int n_threads, exited, barrier_arrived;
    unsigned barrier_gen;
    long long barrier_sum[2];
    const std::function<void()> *body;
    unsigned long long events;   /* arrivals and exits: a pass without any is a deadlock */
};

inline Block block;
inline Fiber *current;
static const size_t stack_bytes = 64 * 1024;

inline void *dynamic_shared(void) { return block.shared.data(); }

inline void yield(void) {
#if AQE_FAST_SWITCH
    aqe_switch(&current->sp, block.scheduler_sp);
#else
    swapcontext(&current->ctx, &block.scheduler);
#endif
}

inline void fiber_main(void) {
    (*block.body)();
    current->done = true;
    block.exited++;
    block.events++;
#if AQE_FAST_SWITCH
    void *unused;
    aqe_switch(&unused, block.scheduler_sp);   /* never resumed */
    die("a finished thread was resumed");
#endif
}   /* (ucontext) returns to the scheduler through uc_link */

/* Every thread of the block that has not exited is at the barrier. */
inline bool barrier_reached(const Block &b) { return b.barrier_arrived == b.n_threads - b.exited; }

/* __syncthreads: every thread of the block that has not exited, with the sum of their preds. */
inline long long barrier(long long pred) {
    Block &b = block;
    const unsigned gen = b.barrier_gen, parity = gen & 1;
    b.barrier_sum[parity] += pred;
    b.barrier_arrived++;
    b.events++;
    current->waits = Fiber::AT_BARRIER;
    current->wait_token = gen;
    while (b.barrier_gen == gen) {
        if (barrier_reached(b)) {
            b.barrier_arrived = 0;
            b.barrier_sum[parity ^ 1] = 0;   /* the next barrier's, free: everyone has left the one before */
            b.barrier_gen++;
            b.events++;
            break;
        }
        yield();
    }
    current->waits = Fiber::RUNNING;
    return b.barrier_sum[parity];
}

/* A warp collective: every lane puts in a value, and gets all 32. */
inline const uint64_t *warp_exchange(uint64_t mine) {
    Fiber *f = current;
    Warp &w = block.warps[f->warp];
    const unsigned parity = f->collective & 1;
    w.value[parity][f->lane] = mine;
    if (++w.arrived[parity] == 32) w.arrived[parity ^ 1] = 0;   /* the collective before is read by all: its parity is free */
    block.events++;
    f->waits = Fiber::AT_COLLECTIVE;
    f->wait_token = parity;
    while (w.arrived[parity] < 32) yield();
    f->waits = Fiber::RUNNING;
    f->collective++;
    return w.value[parity];
}

/* Whether resuming f would get it anywhere: a thread waiting at a barrier or a collective
   that has not completed would only yield again (under shuffle and stalls, most of the
   scheduler's resumes, without this). */
inline bool can_run(const Fiber &f) {
    const Block &b = block;
    switch (f.waits) {
    case Fiber::AT_BARRIER: return b.barrier_gen != f.wait_token || barrier_reached(b);
    case Fiber::AT_COLLECTIVE: return b.warps[f.warp].arrived[f.wait_token] >= 32;
    default: return true;
    }
}

/* Runs body for every thread of a block, blockIdx = idx. */
inline void run_block(dim3 idx, dim3 bdim, size_t shared_bytes, const std::function<void()> &body) {
    Block &b = block;
    const int n = (int)(bdim.x * bdim.y * bdim.z);
    if (n % 32) die("blocks must be whole warps");
    blockIdx = idx;
    b.n_threads = n;
    b.exited = 0;
    b.barrier_arrived = 0;
    b.barrier_gen = 0;
    b.barrier_sum[0] = b.barrier_sum[1] = 0;
    b.body = &body;
    b.fibers.assign(n, Fiber());
    b.warps.assign(n / 32, Warp());
    if (b.stacks.size() < (size_t)n * stack_bytes) {   /* nothing on them to keep */
        std::vector<char>().swap(b.stacks);
        b.stacks.resize((size_t)n * stack_bytes);
    }
    b.shared.assign(shared_bytes ? shared_bytes : 1, (char)0xa5);   /* not zero: as on a GPU, nothing to rely on */
    for (int i = 0; i < n; i++) {
        Fiber &f = b.fibers[i];
        f.tid = dim3(i % bdim.x, (i / bdim.x) % bdim.y, i / (bdim.x * bdim.y));
        f.lane = i % 32;
        f.warp = i / 32;
        f.done = false;
        f.collective = 0;
        f.waits = Fiber::RUNNING;
        char *stack = b.stacks.data() + (size_t)i * stack_bytes;
#ifdef __SANITIZE_ADDRESS__
        ASAN_UNPOISON_MEMORY_REGION(stack, stack_bytes);   /* the last block's threads left their frames' redzones */
#endif
#if AQE_FAST_SWITCH
        /* what aqe_switch pops when it first switches in: six registers, then fiber_main as the
           return address; 16-byte aligned so that fiber_main starts as if called */
        uintptr_t top = ((uintptr_t)(stack + stack_bytes) & ~(uintptr_t)15) - 64;
        void **frame = (void **)top;
        for (int r = 0; r < 6; r++) frame[r] = NULL;
        frame[6] = (void *)&fiber_main;
        frame[7] = NULL;
        f.sp = frame;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stack;
        f.ctx.uc_stack.ss_size = stack_bytes;
        f.ctx.uc_link = &b.scheduler;
        makecontext(&f.ctx, fiber_main, 0);
#endif
    }
    /* Under shuffle, warps also stall, as warps drift apart on a GPU: each pass a running warp
       stops, with odds 1 in 8, for 16 to 47 passes, while the others run on.  So a thread that
       overwrites shared memory another warp has yet to read (a barrier missing before a
       buffer's reuse) gets there first.  (Odds and lengths: the ones of those tried that
       selftest.cpp's write-after-read case caught most often.)  A pass in which nothing
       arrives anywhere ends the stalls; a full pass in which nothing arrives is a deadlock. */
    const Schedule mode = schedule_mode();
    const int n_warps = n / 32;
    std::vector<int> warp_order, stalled(n_warps, 0);
    bool full = true;
    for (;;) {
        const unsigned long long before = b.events;
        int live = 0;
        schedule_order(warp_order, n_warps);
        for (int w : warp_order) {
            if (mode == SCHEDULE_SHUFFLE)
                stalled[w] = full ? 0 : stalled[w] ? stalled[w] - 1 : schedule_random(8) ? 0 : 16 + (int)schedule_random(32);
            /* lanes in the order of lane ^ flip: any two lanes meet in either order, equally often */
            const int flip = mode == SCHEDULE_SHUFFLE ? (int)schedule_random(32) : mode == SCHEDULE_REVERSE ? 31 : 0;
            for (int l = 0; l < 32; l++) {
                Fiber &f = b.fibers[32 * w + (l ^ flip)];
                if (f.done) continue;
                if (stalled[w] || !can_run(f)) { live++; continue; }
                current = &f;
                threadIdx = f.tid;
#if AQE_FAST_SWITCH
                aqe_switch(&b.scheduler_sp, f.sp);
#else
                swapcontext(&b.scheduler, &f.ctx);
#endif
                live += !f.done;
            }
        }
        if (!live) break;
        if (b.events == before) {
            if (full) die("deadlock: threads wait at a barrier or a warp collective that the others never reach");
            full = true;
        } else {
            full = false;
        }
    }
    current = NULL;
}

inline void run_grid(dim3 grid, dim3 bdim, size_t shared_bytes, const std::function<void()> &body) {
    gridDim = grid;
    blockDim = bdim;
    std::vector<int> order;
    schedule_order(order, (int)(grid.x * grid.y * grid.z));
    for (int i : order) run_block(dim3(i % grid.x, i / grid.x % grid.y, i / (grid.x * grid.y)), bdim, shared_bytes, body);
}
}  // namespace aqe

static inline void __syncthreads(void) { aqe::barrier(0); }
static inline int __syncthreads_count(int pred) { return (int)aqe::barrier(pred != 0); }

template <class T> static inline uint64_t aqe_bits(T v) { uint64_t u = 0; memcpy(&u, &v, sizeof v); return u; }
template <class T> static inline T aqe_from_bits(uint64_t u) { T v; memcpy(&v, &u, sizeof v); return v; }

template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    if (mask != 0xffffffffu) aqe::die("only full-warp shuffles");
    const uint64_t *all = aqe::warp_exchange(aqe_bits(v));
    const int src = aqe::current->lane ^ lane_mask;
    return src < 32 ? aqe_from_bits<T>(all[src]) : v;
}
template <class T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta) {
    if (mask != 0xffffffffu) aqe::die("only full-warp shuffles");
    const uint64_t *all = aqe::warp_exchange(aqe_bits(v));
    const int src = aqe::current->lane - (int)delta;
    return src >= 0 ? aqe_from_bits<T>(all[src]) : v;
}
static inline unsigned __ballot_sync(unsigned mask, int pred) {
    if (mask != 0xffffffffu) aqe::die("only full-warp ballots");
    const uint64_t *all = aqe::warp_exchange(pred != 0);
    unsigned r = 0;
    for (int l = 0; l < 32; l++) r |= (all[l] ? 1u : 0u) << l;
    return r;
}
static inline unsigned __match_any_sync(unsigned mask, unsigned v) {
    if (mask != 0xffffffffu) aqe::die("only full-warp matches");
    const uint64_t *all = aqe::warp_exchange(v);
    unsigned r = 0;
    for (int l = 0; l < 32; l++) r |= (all[l] == v ? 1u : 0u) << l;
    return r;
}

static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) aqe::die("only full-warp __syncwarp");
    aqe::warp_exchange(0);
}

/* ---- tensor cores: aq_cuda.cu's wrappers of mma.sync m16n8k16, ldmatrix and cp.async, from the
   PTX ISA's fragment layouts (aq_cuda.cu states them), each a warp collective ---- */
#define AQC_EMULATED_MMA 1
static inline float aqe_half_bits(uint32_t u, int high) { return aqe::half_to_float((uint16_t)(high ? u >> 16 : u)); }
static inline void aqc__mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    const uint64_t *all = aqe::warp_exchange((uint64_t)a[0] | (uint64_t)a[1] << 32);
    uint32_t a01[32][2], a23[32][2], bb[32][2];
    for (int l = 0; l < 32; l++) { a01[l][0] = (uint32_t)all[l]; a01[l][1] = (uint32_t)(all[l] >> 32); }
    all = aqe::warp_exchange((uint64_t)a[2] | (uint64_t)a[3] << 32);
    for (int l = 0; l < 32; l++) { a23[l][0] = (uint32_t)all[l]; a23[l][1] = (uint32_t)(all[l] >> 32); }
    all = aqe::warp_exchange((uint64_t)b[0] | (uint64_t)b[1] << 32);
    for (int l = 0; l < 32; l++) { bb[l][0] = (uint32_t)all[l]; bb[l][1] = (uint32_t)(all[l] >> 32); }
    /* this lane's rows of A (g, g + 8) and columns of B (2t, 2t + 1) only: the products and
       their order are those of the whole matrices' */
    const int g = aqe::current->lane / 4, t = aqe::current->lane % 4;
    float A[2][16], B[2][16];
    for (int q = 0; q < 4; q++)
        for (int e = 0; e < 2; e++)
            for (int r = 0; r < 2; r++) {
                A[r][2 * q + e] = aqe_half_bits(a01[4 * g + q][r], e);
                A[r][2 * q + 8 + e] = aqe_half_bits(a23[4 * g + q][r], e);
                B[r][2 * q + e] = aqe_half_bits(bb[4 * (2 * t + r) + q][0], e);
                B[r][2 * q + 8 + e] = aqe_half_bits(bb[4 * (2 * t + r) + q][1], e);
            }
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 2; c++) {
            float sum = d[2 * r + c];
            for (int k = 0; k < 16; k++) sum += A[r][k] * B[c][k];
            d[2 * r + c] = sum;
        }
}
/* Each lane's row is read as the lane arrives, not once all 32 have: a row another lane wrote
   with no __syncwarp (or barrier) between its write and this read may not be there yet. */
static inline void aqe_ldmatrix(uint32_t r[4], const void *row, bool trans) {
    uint64_t mine[2];
    uint16_t rows[32][8];
    memcpy(mine, row, 16);
    const uint64_t *all = aqe::warp_exchange(mine[0]);
    for (int l = 0; l < 32; l++) memcpy(rows[l], &all[l], 8);
    all = aqe::warp_exchange(mine[1]);
    for (int l = 0; l < 32; l++) memcpy(rows[l] + 4, &all[l], 8);
    const int g = aqe::current->lane / 4, t = aqe::current->lane % 4;
    for (int i = 0; i < 4; i++) {
        const uint16_t lo = trans ? rows[8 * i + 2 * t][g] : rows[8 * i + g][2 * t];
        const uint16_t hi = trans ? rows[8 * i + 2 * t + 1][g] : rows[8 * i + g][2 * t + 1];
        r[i] = (uint32_t)lo | (uint32_t)hi << 16;
    }
}
static inline void aqc__ldmatrix_x4(uint32_t r[4], const void *row) { aqe_ldmatrix(r, row, false); }
static inline void aqc__ldmatrix_x4_trans(uint32_t r[4], const void *row) { aqe_ldmatrix(r, row, true); }
static inline void aqc__cp_async16(void *smem, const void *global) {
    aqe::count_load(global, 16);
    aqe::current->async_open.push_back({smem, global});
}
static inline void aqc__cp_async_commit(void) {
    aqe::Fiber *f = aqe::current;
    f->async_groups.push_back(std::move(f->async_open));
    f->async_open.clear();
}
/* every committed group but the newest N lands */
template <int N> static inline void aqc__cp_async_wait(void) {
    std::vector<std::vector<aqe::AsyncCopy>> &groups = aqe::current->async_groups;
    while (groups.size() > (size_t)N) {
        for (const aqe::AsyncCopy &c : groups.front()) memcpy(c.dst, c.src, 16);
        groups.erase(groups.begin());
    }
}

/* ---- runtime ---- */
typedef enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorNotSupported = 801 } cudaError_t;
typedef enum { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault } cudaMemcpyKind;
enum { cudaStreamNonBlocking = 1 };
typedef enum { cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal, cudaStreamCaptureModeRelaxed } cudaStreamCaptureMode;
typedef enum { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrL2CacheSize = 38, cudaDevAttrComputeCapabilityMajor = 75 } cudaDeviceAttr;
typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;
typedef enum { cudaLaunchAttributeIgnore = 0, cudaLaunchAttributeProgrammaticStreamSerialization = 6 } cudaLaunchAttributeID;

/* A stream's work waits in its queue until something waits for the stream (below). */
struct aqe_stream {
    bool nonblocking;
    std::deque<std::function<void()>> queue;
};
struct aqe_event { double ms; bool recorded; };
struct aqe_graph { std::vector<std::function<void()>> ops; };
typedef aqe_stream *cudaStream_t;
typedef aqe_event *cudaEvent_t;
typedef aqe_graph *cudaGraph_t;
typedef aqe_graph *cudaGraphExec_t;

struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t totalGlobalMem;
};
union cudaLaunchAttributeValue {
    int programmaticStreamSerializationAllowed;
    char pad[64];
};
struct cudaLaunchAttribute {
    cudaLaunchAttributeID id;
    cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
    dim3 gridDim, blockDim;
    size_t dynamicSmemBytes;
    cudaStream_t stream;
    cudaLaunchAttribute *attrs;
    unsigned numAttrs;
};

/* Streams.  A GPU runs a stream's work after the call that asked for it has returned, so a host
   that reads a result before it waits for the stream reads memory nothing has written yet.  The
   emulation does the same: work on a non-blocking stream (every stream aq_cuda.cu makes) is queued
   and runs, in order, only when the host waits for that stream (cudaStreamSynchronize), for every
   stream (cudaDeviceSynchronize, cudaEventSynchronize, cudaFree, a traffic reading), or destroys
   it.  The legacy default stream (NULL) and blocking streams run at once, after the blocking
   streams' queued work, as the legacy stream waits for them and not for non-blocking ones: a
   cudaMemcpy right after a launch on a non-blocking stream copies what was there before the
   launch, as on the GPU. */
namespace aqe {
inline aqe_graph *capturing;   /* the graph a stream capture is recording into */
inline std::vector<aqe_stream *> streams;   /* the live ones, oldest first */
inline void flush(aqe_stream *s) {
    while (!s->queue.empty()) {
        std::function<void()> op = std::move(s->queue.front());
        s->queue.pop_front();
        op();
    }
}
inline void flush_all(bool nonblocking_too) {
    for (aqe_stream *s : streams)
        if (nonblocking_too || !s->nonblocking) flush(s);
}
/* a stream operation: recorded while a capture runs, queued on a non-blocking stream, done at
   once otherwise */
inline void enqueue(std::function<void()> op, aqe_stream *s) {
    if (capturing) capturing->ops.push_back(std::move(op));
    else if (s && s->nonblocking) s->queue.push_back(std::move(op));
    else {
        flush_all(false);
        op();
    }
}
inline double now_ms(void) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
const int n_sms = 4;   /* small grids: the persistent kernels' loops take many turns */
}  // namespace aqe

static inline const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }
static inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }
static inline cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
static inline cudaError_t cudaGetDevice(int *d) { *d = 0; return cudaSuccess; }
static inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "CPU emulation (tests/cuda_emu)");
    p->major = 9;
    p->multiProcessorCount = aqe::n_sms;
    p->totalGlobalMem = (size_t)16 << 30;
    return cudaSuccess;
}
static inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int) {
    switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = aqe::n_sms; return cudaSuccess;
    case cudaDevAttrL2CacheSize: *v = 1 << 20; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; return cudaSuccess;
    }
    return cudaErrorInvalidValue;
}
template <class F> static inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
/* A kernel's registers and static shared memory are the compiler's: unknown here (0).  Blocks per
   multiprocessor follow an sm_90's limits on threads, blocks and shared memory alone. */
struct cudaFuncAttributes { size_t sharedSizeBytes; int numRegs; };
template <class F> static inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, F) {
    a->sharedSizeBytes = 0;
    a->numRegs = 0;
    return cudaSuccess;
}
template <class F> static inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, F, int threads, size_t shared) {
    if (threads < 1 || threads > 1024) return cudaErrorInvalidValue;
    const size_t by_shared = shared ? (size_t)(227 << 10) / (shared + 1024) : 32;
    *blocks = (int)std::min<size_t>(std::min<size_t>(32, 2048 / threads), by_shared);
    return cudaSuccess;
}
/* Traffic: each allocation's size and name (aq_cuda.cu's aqc__malloc names it through
   AQE_NAME_ALLOCATION: "a weight matrix", "the KV cache", ...), and per name what __ldg and
   cp.async loaded from it since aqe_traffic_reset.  tests/cuda_emu/traffic.c checks a decode
   step's loads against what the kernels' designs say they read: every weight byte once, each
   KV page once for all the query heads that share it, only Quest's pages, in 16-byte loads.  A
   stream load outside every allocation, or running past one's end, stops the run. */
namespace aqe {
struct Allocation { size_t bytes; std::string name; };
struct Tally { unsigned long long loaded, loads, narrow, allocated; };
static std::map<uintptr_t, Allocation> allocations;
static std::map<std::string, Tally> tallies;

static inline void count_load(const void *p, size_t bytes) {
    static char msg[256];
    const uintptr_t a = (uintptr_t)p;
    auto it = allocations.upper_bound(a);
    if (it == allocations.begin() || a - (--it)->first >= it->second.bytes)
        die("a stream load (__ldg, cp.async) from memory cudaMalloc did not allocate");
    if (a - it->first + bytes > it->second.bytes) {
        snprintf(msg, sizeof msg, "a %zu-byte stream load runs past the end of %s (%zu bytes)", bytes, it->second.name.c_str(),
                 it->second.bytes);
        die(msg);
    }
    Tally &t = tallies[it->second.name];
    t.loaded += bytes;
    t.loads++;
    t.narrow += bytes < 16;
}
static inline bool is_allocated(const void *p) {
    auto it = allocations.upper_bound((uintptr_t)p);
    return it != allocations.begin() && (uintptr_t)p - (--it)->first < it->second.bytes;
}
static inline void track(void *p, size_t bytes, const char *name) {
    auto it = allocations.find((uintptr_t)p);
    if (it != allocations.end()) tallies[it->second.name].allocated -= it->second.bytes;
    if (name) {
        allocations[(uintptr_t)p] = Allocation{bytes, name};
        tallies[name].allocated += bytes;
    } else if (it != allocations.end())
        allocations.erase(it);
}
/* copies between host and device, under the names "copies to the host" and "copies to the
   device" (loaded: their bytes; loads: how many) */
static inline void count_copy(cudaMemcpyKind kind, size_t bytes) {
    if (kind != cudaMemcpyHostToDevice && kind != cudaMemcpyDeviceToHost) return;
    Tally &t = tallies[kind == cudaMemcpyDeviceToHost ? "copies to the host" : "copies to the device"];
    t.loaded += bytes;
    t.loads++;
}
static inline void name_allocation(void *p, const char *name) {
    auto it = allocations.find((uintptr_t)p);
    if (it == allocations.end()) die("AQE_NAME_ALLOCATION: not a cudaMalloc pointer");
    track(p, it->second.bytes, name);
}
}  // namespace aqe

#define AQE_NAME_ALLOCATION(p, name) aqe::name_allocation((p), (name))

typedef struct { unsigned long long loaded, loads, narrow, allocated; } aqe_traffic;
extern "C" void aqe_traffic_reset(void) {
    aqe::flush_all(true);   /* what was asked for before the reset counts before it */
    for (auto &t : aqe::tallies) t.second.loaded = t.second.loads = t.second.narrow = 0;
}
/* what the kernels loaded from the allocations named `name` since the reset, in how many loads
   (narrow: under 16 bytes), and how many bytes are allocated under that name now */
extern "C" void aqe_traffic_get(const char *name, aqe_traffic *out) {
    aqe::flush_all(true);
    const aqe::Tally t = aqe::tallies[name];
    out->loaded = t.loaded;
    out->loads = t.loads;
    out->narrow = t.narrow;
    out->allocated = t.allocated;
}

/* Fresh device memory is all ones (NaN as f16 and f32, -1 as an integer): a GPU promises no
   zeros either, and a kernel that reads what nothing wrote should not pass by luck. */
static inline cudaError_t cudaMalloc(void **p, size_t n) {
#ifdef __SANITIZE_ADDRESS__
    const size_t bytes = n;   /* so that AddressSanitizer flags a read one byte past the end */
    if (posix_memalign(p, 256, bytes)) *p = NULL;
#else
    const size_t bytes = (n + 255) / 256 * 256;
    *p = aligned_alloc(256, bytes);
#endif
    if (!*p) return cudaErrorMemoryAllocation;
    memset(*p, 0xff, bytes);
    aqe::track(*p, n, "unnamed");
    return cudaSuccess;
}
static inline cudaError_t cudaFree(void *p) {
    aqe::flush_all(true);   /* cudaFree waits for the device */
    aqe::track(p, 0, NULL);
    free(p);
    return cudaSuccess;
}
static inline cudaError_t cudaMallocHost(void **p, size_t n) { return cudaMalloc(p, n); }
static inline cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }
static inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind kind) {
    aqe::flush_all(false);   /* the legacy default stream: after the blocking streams' work only */
    aqe::count_copy(kind, n);
    memcpy(d, s, n);
    return cudaSuccess;
}
static inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind kind, cudaStream_t st) {
    /* from pageable host memory (not cudaMallocHost's) the driver stages the bytes before it
       returns, so the caller may reuse its buffer at once: the bytes are taken now */
    std::shared_ptr<std::vector<unsigned char>> staged;
    if (kind == cudaMemcpyHostToDevice && !aqe::is_allocated(s) && !aqe::capturing)
        staged = std::make_shared<std::vector<unsigned char>>((const unsigned char *)s, (const unsigned char *)s + n);
    aqe::enqueue([=] {   /* counted as it runs: a copy in a CUDA graph counts at each replay */
        aqe::count_copy(kind, n);
        memcpy(d, staged ? (const void *)staged->data() : s, n);
    }, st);
    return cudaSuccess;
}
static inline cudaError_t cudaMemset(void *d, int v, size_t n) {
    aqe::flush_all(false);
    memset(d, v, n);
    return cudaSuccess;
}
static inline cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st) {
    aqe::enqueue([=] { memset(d, v, n); }, st);
    return cudaSuccess;
}
static inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    *s = new aqe_stream();
    (*s)->nonblocking = (flags & cudaStreamNonBlocking) != 0;
    aqe::streams.push_back(*s);
    return cudaSuccess;
}
static inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
    aqe::flush(s);   /* work already asked for still runs */
    aqe::streams.erase(std::find(aqe::streams.begin(), aqe::streams.end(), s));
    delete s;
    return cudaSuccess;
}
static inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (s) aqe::flush(s);
    else aqe::flush_all(false);
    return cudaSuccess;
}
static inline cudaError_t cudaDeviceSynchronize(void) { aqe::flush_all(true); return cudaSuccess; }
static inline cudaError_t cudaEventCreate(cudaEvent_t *e) { *e = new aqe_event(); (*e)->ms = 0; (*e)->recorded = false; return cudaSuccess; }
static inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
/* As CUDA does: during a stream capture a plain record only orders the capture and adds no node,
   so the event is never recorded and cannot be timed; cudaEventRecordExternal makes it a node of
   the graph, recorded each time the graph runs (and is refused outside a capture). */
enum { cudaEventRecordDefault = 0, cudaEventRecordExternal = 1 };
static inline cudaError_t cudaEventRecordWithFlags(cudaEvent_t e, cudaStream_t st = NULL, unsigned flags = 0) {
    if ((flags & cudaEventRecordExternal) && !aqe::capturing) return cudaErrorInvalidValue;
    if (aqe::capturing && !(flags & cudaEventRecordExternal)) return cudaSuccess;
    if (!aqe::capturing) e->recorded = false;   /* until the stream reaches it */
    aqe::enqueue([=] { e->ms = aqe::now_ms(); e->recorded = true; }, st);
    return cudaSuccess;
}
static inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = NULL) { return cudaEventRecordWithFlags(e, s, 0); }
/* waits for every stream, where CUDA waits for the event's stream only: a host that waits for
   the wrong event would pass here */
static inline cudaError_t cudaEventSynchronize(cudaEvent_t) { aqe::flush_all(true); return cudaSuccess; }
static inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a->recorded || !b->recorded) return cudaErrorInvalidValue;
    *ms = (float)(b->ms - a->ms);
    return cudaSuccess;
}
static inline cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
    if (aqe::capturing) return cudaErrorNotSupported;
    aqe::capturing = new aqe_graph();
    return cudaSuccess;
}
static inline cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *g) {
    *g = aqe::capturing;
    aqe::capturing = NULL;
    return *g ? cudaSuccess : cudaErrorInvalidValue;
}
static inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long = 0) {
    *e = new aqe_graph(*g);
    return cudaSuccess;
}
static inline cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t st) {
    for (size_t i = 0; i < e->ops.size(); i++) aqe::enqueue(e->ops[i], st);
    return cudaSuccess;
}
static inline cudaError_t cudaGraphDestroy(cudaGraph_t g) { delete g; return cudaSuccess; }
static inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) { delete e; return cudaSuccess; }

/* A launch: the arguments converted to the kernel's parameter types and kept by value, as the
   GPU gets them, and every block run in turn (now, or when the captured graph is launched). */
template <typename... Exp, typename... Act>
static inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t *cfg, void (*kernel)(Exp...), Act &&... args) {
    const std::tuple<Exp...> params(((Exp)args)...);
    const dim3 grid = cfg->gridDim, bdim = cfg->blockDim;
    const size_t smem = cfg->dynamicSmemBytes;
    if (grid.x * grid.y * grid.z == 0 || bdim.x * bdim.y * bdim.z == 0 || bdim.x * bdim.y * bdim.z > 1024) return cudaErrorInvalidValue;
    aqe::enqueue([=] {
        const std::function<void()> body = [&] { std::apply(kernel, params); };
        aqe::run_grid(grid, bdim, smem, body);
    }, cfg->stream);
    return cudaSuccess;
}

/* ---- cuBLAS: the one GEMM aq_cuda.cu asks for ---- */
typedef enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_SUPPORTED = 15 } cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16F = 2 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_16F = 64, CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
struct aqe_blas { cudaStream_t stream; };
typedef aqe_blas *cublasHandle_t;
static inline cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = new aqe_blas(); (*h)->stream = NULL; return CUBLAS_STATUS_SUCCESS; }
static inline cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
static inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t st) { h->stream = st; return CUBLAS_STATUS_SUCCESS; }
static inline cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t) { return CUBLAS_STATUS_SUCCESS; }
/* C = alpha op(A) op(B) + beta C, column-major, op(A) = A^T, op(B) = B, A and B f16, C f32
   (compute 32F) or f16 (compute 16F); sums in double. */
static inline cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t opa, cublasOperation_t opb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                                          int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                                          cublasGemmAlgo_t) {
    if (opa != CUBLAS_OP_T || opb != CUBLAS_OP_N || at != CUDA_R_16F || bt != CUDA_R_16F) return CUBLAS_STATUS_NOT_SUPPORTED;
    const bool c32 = ct == CUDA_R_32F && compute == CUBLAS_COMPUTE_32F, c16 = ct == CUDA_R_16F && compute == CUBLAS_COMPUTE_16F;
    if (!c32 && !c16) return CUBLAS_STATUS_NOT_SUPPORTED;
    const double al = c32 ? *(const float *)alpha : __half2float(*(const __half *)alpha);
    const double be = c32 ? *(const float *)beta : __half2float(*(const __half *)beta);
    aqe::enqueue([=] {
        const __half *a = (const __half *)A, *b = (const __half *)B;
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                double s = 0;
                for (int l = 0; l < k; l++) s += (double)__half2float(a[l + (size_t)i * lda]) * __half2float(b[l + (size_t)j * ldb]);
                if (c32) {
                    float *c = (float *)C + i + (size_t)j * ldc;
                    *c = (float)(al * s + (be != 0 ? be * *c : 0.0));
                } else {
                    __half *c = (__half *)C + i + (size_t)j * ldc;
                    *c = __float2half((float)(al * s + (be != 0 ? be * __half2float(*c) : 0.0)));
                }
            }
    }, h->stream);
    return CUBLAS_STATUS_SUCCESS;
}

#endif /* AQ_CUDA_EMU_H */
