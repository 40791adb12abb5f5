/* selftest.cpp - does the CUDA emulation show the races it claims to (cuda_emu.h, "Some races
   show")?  Each case is a small kernel written twice: correct, and with one synchronization
   left out.  Under the default schedule (shuffle), the correct one must give the right answer in
   every block and the broken one a wrong answer in at least one, or the emulation's race
   checks would pass kernels that a GPU gets wrong.  Run by tests/cuda_emu/run; prints
   "N passed, N failed". */
#include "cuda_emu.h"

static int n_passed, n_failed;
static const int BLOCKS = 64, THREADS = 256;

/* sum of 0..n-1 (plus 1000 a round) over the block, SUM_ROUNDS times in a row through the same
   32 floats; the broken one leaves out the barrier that keeps a warp from writing its next sum
   over a sum another warp has yet to read (write after read) */
static const int SUM_ROUNDS = 4;
template <bool BROKEN>
__global__ void sum_rounds(float *out) {
    __shared__ float red[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    float total = 0.0f;
    for (int round = 0; round < SUM_ROUNDS; round++) {
        float v = (float)(threadIdx.x + round * 1000);
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (!BROKEN || round == 0) __syncthreads();
        if (lane == 0) red[warp] = v;
        __syncthreads();
        v = lane < n_warps ? red[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        total += v;
    }
    if (threadIdx.x == 0) out[blockIdx.x] = total;
}

/* every thread reads its neighbour's value from shared memory; the broken one has no barrier
   between the writes and the reads (read after write) */
template <bool BROKEN>
__global__ void neighbour(float *out) {
    __shared__ float v[THREADS];
    v[threadIdx.x] = (float)(threadIdx.x * 3 + blockIdx.x);
    if (!BROKEN) __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = v[(threadIdx.x + 1) % blockDim.x];
}

/* 16 bytes per thread copied to shared memory with cp.async, then a neighbour's read; the
   broken one reads before waiting for its copy */
template <bool BROKEN>
__global__ void async_copy(const uint4 *in, uint4 *out) {
    __shared__ uint4 tile[THREADS];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = make_uint4(0, 0, 0, 0);
    __syncthreads();
    aqc__cp_async16(&tile[threadIdx.x], &in[i]);
    aqc__cp_async_commit();
    if (!BROKEN) aqc__cp_async_wait<0>();
    __syncthreads();
    out[i] = tile[(threadIdx.x + 1) % blockDim.x];
    aqc__cp_async_wait<0>();
}

/* each thread writes a 16-byte row of shared memory (eight equal f16 bits: its number), and
   its warp loads the rows with ldmatrix, each lane giving the address of the next lane's row;
   the broken one has no __syncwarp between the writes and the ldmatrix (read after write) */
template <bool BROKEN>
__global__ void ldmatrix_rows(uint32_t *out) {
    __shared__ uint4 rows[THREADS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const unsigned mine = (blockIdx.x * THREADS + threadIdx.x) * 0x10001u;
    rows[threadIdx.x] = make_uint4(mine, mine, mine, mine);
    if (!BROKEN) __syncwarp();
    uint32_t r[4];
    aqc__ldmatrix_x4(r, &rows[warp * 32 + (lane + 1) % 32]);
    for (int i = 0; i < 4; i++) out[(blockIdx.x * THREADS + threadIdx.x) * 4 + i] = r[i];
}

/* each block adds 1 to what the block before it left; the broken one takes blockIdx as its
   place, counting on blocks to run in index order, which no GPU promises.  The correct one
   takes a ticket as it starts (on a GPU it would also wait for its predecessor's flag: the
   emulation runs blocks one after another, so the flag is always set) */
template <bool BROKEN>
__global__ void chain(int *cells, int *ticket) {
    __shared__ int s_b;
    if (threadIdx.x == 0) s_b = BROKEN ? (int)blockIdx.x : atomicAdd(ticket, 1);
    __syncthreads();
    if (threadIdx.x == 0) cells[s_b + 1] = cells[s_b] + 1;
}

static void check(const char *name, bool broken, int wrong) {
    const bool ok = broken ? wrong > 0 : wrong == 0;
    printf("  %-60s %3d wrong  %s\n", name, wrong, ok ? "ok" : "FAIL");
    if (ok) n_passed++;
    else n_failed++;
}

template <class... Exp, class... Act>
static void launch(void (*kernel)(Exp...), int blocks, Act... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(blocks);
    cfg.blockDim = dim3(THREADS);
    cudaLaunchKernelEx(&cfg, kernel, args...);
}

template <bool BROKEN>
static void run_cases(void) {
    const char *tag = BROKEN ? "broken" : "correct";
    char name[96];
    float *out;
    cudaMalloc((void **)&out, sizeof(float) * BLOCKS * THREADS);

    launch(sum_rounds<BROKEN>, BLOCKS, out);
    const float want = (float)(THREADS * (THREADS - 1) / 2 * SUM_ROUNDS + THREADS * 1000 * (SUM_ROUNDS * (SUM_ROUNDS - 1) / 2));
    int wrong = 0;
    for (int b = 0; b < BLOCKS; b++) wrong += out[b] != want;
    snprintf(name, sizeof name, "a block's sum %d times, %s (write after read)", SUM_ROUNDS, tag);
    check(name, BROKEN, wrong);

    launch(neighbour<BROKEN>, BLOCKS, out);
    wrong = 0;
    for (int b = 0; b < BLOCKS; b++)
        for (int t = 0; t < THREADS; t++) wrong += out[b * THREADS + t] != (float)((t + 1) % THREADS * 3 + b);
    snprintf(name, sizeof name, "a neighbour's value, %s (read after write)", tag);
    check(name, BROKEN, wrong);

    uint4 *in, *copied;
    cudaMalloc((void **)&in, sizeof(uint4) * BLOCKS * THREADS);
    cudaMalloc((void **)&copied, sizeof(uint4) * BLOCKS * THREADS);
    for (int i = 0; i < BLOCKS * THREADS; i++) in[i] = make_uint4(i, i + 1, i + 2, i + 3);
    launch(async_copy<BROKEN>, BLOCKS, (const uint4 *)in, copied);
    wrong = 0;
    for (int b = 0; b < BLOCKS; b++)
        for (int t = 0; t < THREADS; t++) wrong += copied[b * THREADS + t].y != (unsigned)(b * THREADS + (t + 1) % THREADS + 1);
    snprintf(name, sizeof name, "cp.async, %s (read before the wait)", tag);
    check(name, BROKEN, wrong);

    /* ldmatrix: lane l's register i holds both halves of a column of matrix i's row l / 4,
       the row whose address lane 8 i + l / 4 gave */
    uint32_t *frags = (uint32_t *)copied;
    launch(ldmatrix_rows<BROKEN>, BLOCKS, frags);
    wrong = 0;
    for (int b = 0; b < BLOCKS; b++)
        for (int t = 0; t < THREADS; t++)
            for (int i = 0; i < 4; i++) {
                const int writer = t / 32 * 32 + (8 * i + t % 32 / 4 + 1) % 32;
                wrong += frags[(b * THREADS + t) * 4 + i] != (uint32_t)(b * THREADS + writer) * 0x10001u;
            }
    snprintf(name, sizeof name, "ldmatrix of rows the warp wrote, %s (no __syncwarp)", tag);
    check(name, BROKEN, wrong);

    int *cells;
    cudaMalloc((void **)&cells, sizeof(int) * (BLOCKS + 2));
    cells[0] = 0;
    cells[BLOCKS + 1] = 0;   /* the ticket */
    launch(chain<BROKEN>, BLOCKS, cells, cells + BLOCKS + 1);
    wrong = 0;
    for (int b = 0; b <= BLOCKS; b++) wrong += cells[b] != b;
    snprintf(name, sizeof name, "blocks in a chain, %s (launch order)", tag);
    check(name, BROKEN, wrong);

    cudaFree(out);
    cudaFree(in);
    cudaFree(copied);
    cudaFree(cells);
}

int main(void) {
    if (aqe::schedule_mode() != aqe::SCHEDULE_SHUFFLE) {
        fprintf(stderr, "selftest: run it under AQE_SCHEDULE=shuffle (the default)\n");
        return 2;
    }
    printf("the CUDA emulation's race checks (tests/cuda_emu/selftest.cpp)\n");
    run_cases<false>();
    run_cases<true>();

    int *fresh;
    cudaMalloc((void **)&fresh, 4096);
    int wrong = 0;
    for (int i = 0; i < 1024; i++) wrong += fresh[i] != -1;
    cudaFree(fresh);
    check("fresh device memory is all ones", false, wrong);

    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
