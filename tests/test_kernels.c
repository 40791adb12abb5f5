/* Kernels: conversions, row codecs, every SIMD row-dot against its scalar reference and against
   dequantize-then-f32, GEMM against GEMV, and the thread pool's bookkeeping. */

#if AQ__X86
AQ__AVX2 static uint16_t hw_f32_to_f16(float f) { return (uint16_t)_cvtss_sh(f, 0); }
#endif

static void test_f16_conversions(void) {
    uint32_t h;
    int bad = 0;
    /* every half value survives f16 -> f32 -> f16 (NaNs stay NaN) */
    for (h = 0; h < 65536; h++) {
        float f = aq_f16_to_f32((uint16_t)h);
        uint16_t back = aq_f32_to_f16(f);
        if (f != f) bad += (back & 0x7c00) != 0x7c00 || !(back & 0x3ff);
        else bad += back != h;
    }
    CHECKF(bad == 0, "%d half values did not round-trip", bad);
#if AQ__X86
    if (__builtin_cpu_supports("f16c")) {
        int i, mismatch = 0;
        for (i = 0; i < 1000000; i++) {
            uint32_t u = (uint32_t)rnd_u64();
            float f;
            memcpy(&f, &u, 4);
            if (i % 2) f = rnd_uniform(-70000.0f, 70000.0f) * (i % 3 ? 1.0f : 1e-6f);
            if (f != f) continue;
            mismatch += hw_f32_to_f16(f) != aq_f32_to_f16(f);
        }
        CHECKF(mismatch == 0, "%d of 1e6 floats round differently from the F16C instruction", mismatch);
    }
#endif
    CHECK(aq_f32_to_f16(65519.0f) == 0x7bff && aq_f32_to_f16(65520.0f) == 0x7c00);
    CHECK(aq_f32_to_bf16(1.0f) == 0x3f80 && aq_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(aq_f32_to_bf16(aq_bf16_to_f32(0x3f81) + 1e-9f) == 0x3f81);
    /* 1 + 2^-8 is halfway between two bf16 values: rounds to the even one */
    CHECK(aq_f32_to_bf16(1.00390625f) == 0x3f80 && aq_f32_to_bf16(1.01171875f) == 0x3f82);
}

static const uint32_t cpu_types[] = {AQ_TYPE_F32, AQ_TYPE_F16, AQ_TYPE_BF16, AQ_TYPE_Q8_0, AQ_TYPE_Q4_0};
static const uint32_t gemm_types[] = {AQ_TYPE_F32, AQ_TYPE_F16, AQ_TYPE_BF16, AQ_TYPE_Q8_0, AQ_TYPE_Q4_0, AQ_TYPE_Q4_1,
                                      AQ_TYPE_AQ4_G64, AQ_TYPE_AQ4_G128, AQ_TYPE_OVP_G32, AQ_TYPE_OVP_G64, AQ_TYPE_OVP_G128};

static void test_quantize_roundtrip(void) {
    float x[256], y[256];
    unsigned char buf[1024];
    size_t t;
    int i;
    for (i = 0; i < 256; i++) x[i] = rnd_uniform(-2.0f, 2.0f);
    for (t = 0; t < sizeof cpu_types / sizeof *cpu_types; t++) {
        uint32_t type = cpu_types[t];
        float max_err = 0, bound;
        CHECK(aq_quantize_row(type, x, buf, 256) == 0);
        CHECK(aq_dequantize_row(type, buf, y, 256) == 0);
        for (i = 0; i < 256; i++) max_err = fabsf(x[i] - y[i]) > max_err ? fabsf(x[i] - y[i]) : max_err;
        /* half a quantization step: range/2 over 2^bits levels (plus the f16 scale's rounding) */
        bound = type == AQ_TYPE_F32 ? 0 : type == AQ_TYPE_F16 ? 1e-3f : type == AQ_TYPE_BF16 ? 8e-3f :
                type == AQ_TYPE_Q8_0 ? 2.0f / 127 * 0.51f : type == AQ_TYPE_Q4_1 ? 4.0f / 15 * 0.51f : 2.0f / 8 * 1.01f;
        CHECKF(max_err <= bound, "%s: max error %g > %g", aq_type_name(type), max_err, bound);
    }
    CHECK(aq_quantize_row(AQ_TYPE_Q4_0, x, buf, 31) == -1);   /* not a whole block */
    CHECK(aq_quantize_row(AQ_TYPE_Q4_K, x, buf, 256) == -1);  /* not a CPU type */
}

static void test_row_dots_match_reference(void) {
    static const int64_t lengths[] = {32, 64, 96, 160, 2048, 4128};
    static const int64_t float_lengths[] = {1, 7, 8, 31, 33, 100};
    float x[4128], w[4128], deq[4128];
    unsigned char row[4128 * 4];
    size_t t, li;
    int simd = aq__detect_simd(), i;
    for (t = 0; t < sizeof cpu_types / sizeof *cpu_types; t++) {
        uint32_t type = cpu_types[t];
        for (li = 0; li < 12; li++) {
            int64_t n = li < 6 ? lengths[li] : float_lengths[li - 6];
            float ref, fast, direct, tol, mag = 0;
            if (li >= 6 && aq_type_block_size(type) != 1) continue;
            for (i = 0; i < n; i++) { x[i] = rnd_uniform(-1, 1); w[i] = rnd_uniform(-1, 1) * (i % 17 == 0 ? 8.0f : 1.0f); }
            aq_quantize_row(type, w, row, n);
            aq_dequantize_row(type, row, deq, n);
            for (i = 0; i < n; i++) mag += fabsf(deq[i] * x[i]);
            int level;
            ref = aq__row_dot_for(type, AQ__SIMD_SCALAR)(row, x, n);
            direct = aq__dot_f32_ref(deq, x, n);
            tol = 1e-5f * mag + 1e-6f;
            CHECKF(fabsf(ref - direct) <= tol, "%s n=%lld: scalar %g vs dequantized %g", aq_type_name(type), (long long)n, ref, direct);
            for (level = AQ__SIMD_AVX2; level <= simd; level++) { /* every SIMD level this CPU has */
                fast = aq__row_dot_for(type, level)(row, x, n);
                CHECKF(fabsf(fast - ref) <= tol, "%s n=%lld simd level %d: %g vs scalar %g", aq_type_name(type), (long long)n,
                       level, fast, ref);
            }
        }
    }
    /* the f32 helpers used by attention */
    for (i = 0; i < 100; i++) { x[i] = rnd_uniform(-1, 1); w[i] = rnd_uniform(-1, 1); deq[i] = w[i]; }
    CHECK(fabsf(aq__dot(x, w, 100, simd) - aq__dot(x, w, 100, AQ__SIMD_SCALAR)) < 1e-4f);
    aq__axpy(0.5f, x, w, 100, simd);
    aq__axpy(0.5f, x, deq, 100, AQ__SIMD_SCALAR);
    for (i = 0; i < 100; i++) CHECK(fabsf(w[i] - deq[i]) < 1e-6f);
}

/* int4 rows against int8 activations: every SIMD level equals the scalar int8 kernel (integer
   sums are exact), and the scalar kernel is within the int8 rounding of x of the float dot of the
   dequantized row, far below the error of the 4-bit weights themselves. */
static void test_int4_kernels_match_reference(void) {
    static const int64_t groups[] = {32, 64, 128};
    static const int64_t lengths[] = {32, 64, 172, 256, 2048, 5632, 100};
    float x[5632], w[5632], deq[5632];
    unsigned char row[5632];
    char *mem = (char *)malloc(aq__x8_bytes(5632));
    aq__x8 x8;
    size_t gi, li;
    int simd = aq__detect_simd(), i, level;
    aq__x8_init(&x8, mem, 5632);
    for (gi = 0; gi < 3; gi++)
        for (li = 0; li < sizeof lengths / sizeof *lengths; li++) {
            int64_t G = groups[gi], n = lengths[li];
            uint32_t type = aq_type_aq4(G);
            float ref, direct, mag = 0, wq_err = 0;
            for (i = 0; i < n; i++) { x[i] = rnd_uniform(-1, 1) * (i % 13 == 0 ? 6.0f : 1.0f); w[i] = rnd_uniform(-0.1f, 0.1f); }
            CHECK(aq_quantize_row(type, w, row, n) == 0);
            aq_dequantize_row(type, row, deq, n);
            for (i = 0; i < n; i++) { mag += fabsf(deq[i] * x[i]); wq_err += fabsf((deq[i] - w[i]) * x[i]); }
            aq__x8_quantize(x, n, G, &x8);
            ref = aq__dot_int4_x8_ref(row, &x8);
            direct = aq__dot_f32_ref(deq, x, n);
            CHECKF(fabsf(ref - direct) <= 0.02f * mag && fabsf(ref - direct) < 0.25f * wq_err + 1e-6f,
                   "G=%lld n=%lld: int8 activations %g vs float %g (weight rounding error %g)", (long long)G, (long long)n, ref,
                   direct, wq_err);
            for (level = AQ__SIMD_AVX2; level <= simd; level++) {
                float fast = aq__row_dot_x8_for(G, level)(row, &x8);
                CHECKF(fabsf(fast - ref) <= 1e-5f * mag + 1e-6f, "G=%lld n=%lld simd level %d: %g vs scalar %g", (long long)G,
                       (long long)n, level, fast, ref);
            }
            if (G == 32 && n % 32 == 0) { /* a group of 32 is a Q4_1 block */
                unsigned char q41[5632];
                aq_quantize_row(AQ_TYPE_Q4_1, w, q41, n);
                CHECK(memcmp(q41, row, (size_t)aq_type_row_bytes(AQ_TYPE_Q4_1, n)) == 0);
            }
        }
    CHECK(aq_type_row_bytes(AQ_TYPE_AQ4_G128, 172) == 2 * 68 && aq_type_row_bytes(AQ_TYPE_AQ4_G32, 172) == 6 * 20);
    free(mem);
}

static void test_gemm_matches_gemv(void) {
    const int64_t rows = 150, cols = 96, n = 7; /* rows and tokens not multiples of 4, cols not of 64 */
    int simd = aq__detect_simd(), threads;
    size_t t;
    float *x = (float *)malloc(n * cols * 4), *w = (float *)malloc(rows * cols * 4);
    float *y = (float *)malloc(n * rows * 4), *ref = (float *)malloc(rows * 4);
    float *scratch = (float *)malloc(4 * AQ__TILE_ROWS * cols * 4);
    char *x8_mem = (char *)malloc(aq__x8_bytes(cols));
    int8_t *xq = (int8_t *)malloc(n * (cols + 128));
    float *xs = (float *)malloc(sizeof(float) * n * (cols / 32 + 2)), *xsum = (float *)malloc(sizeof(float) * n * (cols / 32 + 2));
    int gemm8_runs = 0;
    aq__x8 x8;
    unsigned char *q = (unsigned char *)malloc(rows * cols * 4);
    int64_t i, r;
    aq__x8_init(&x8, x8_mem, cols);
    for (i = 0; i < n * cols; i++) x[i] = rnd_uniform(-1, 1);
    for (i = 0; i < rows * cols; i++) w[i] = rnd_uniform(-1, 1);
    for (threads = 1; threads <= 3; threads += 2) {
        aq__pool *pool = aq__pool_new(threads);
        for (t = 0; t < sizeof gemm_types / sizeof *gemm_types; t++) {
            aq_weight wt;
            float max_diff = 0, tol;
            wt.type = gemm_types[t]; wt.rows = rows; wt.cols = cols; wt.name = "test";
            wt.row_bytes = (size_t)aq_type_row_bytes(wt.type, cols);
            for (r = 0; r < rows; r++) aq_quantize_row(wt.type, w + r * cols, q + r * wt.row_bytes, cols);
            wt.data = q;
            aq__gemm(pool, simd, &wt, x, n, y, scratch, cols);
            for (i = 0; i < n; i++) {
                const aq_weight *wp = &wt;
                aq__gemv(pool, simd, 1, &wp, x + i * cols, &ref, &x8);
                for (r = 0; r < rows; r++) max_diff = fmaxf(max_diff, fabsf(ref[r] - y[i * rows + r]));
            }
            tol = aq__x8_group(wt.type) ? 0.15f : 1e-4f; /* int4 and OVP GEMV round x to int8 (outputs are ~3) */
            CHECKF(max_diff < tol, "%s, %d threads: gemm and gemv differ by %g", aq_type_name(wt.type), threads, max_diff);
            /* the int8-activation prompt GEMM quantizes x as GEMV does: they agree closely */
            if (aq__gemm8(pool, simd, &wt, x, n, y, xq, xs, xsum, (char *)scratch, AQ__TILE_ROWS * cols * 4) == 0) {
                max_diff = 0;
                for (i = 0; i < n; i++) {
                    const aq_weight *wp = &wt;
                    aq__gemv(pool, simd, 1, &wp, x + i * cols, &ref, &x8);
                    for (r = 0; r < rows; r++) max_diff = fmaxf(max_diff, fabsf(ref[r] - y[i * rows + r]));
                }
                CHECKF(max_diff < 1e-4f, "%s, %d threads: int8 gemm and gemv differ by %g", aq_type_name(wt.type), threads, max_diff);
                gemm8_runs++;
            }
        }
        aq__pool_free(pool);
    }
    CHECK(gemm8_runs == (simd >= AQ__SIMD_AVX512 ? 4 : 0));  /* AQ4_G64 and _G128, with 1 and 3 threads */
    free(x); free(w); free(y); free(ref); free(scratch); free(q); free(x8_mem); free(xq); free(xs); free(xsum);
}

typedef struct { int *hits; int64_t calls; } pool_count;

static void pool_count_task(void *ctx, int64_t begin, int64_t end, int thread) {
    pool_count *c = (pool_count *)ctx;
    int64_t i;
    (void)thread;
    for (i = begin; i < end; i++) __atomic_add_fetch(&c->hits[i], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&c->calls, 1, __ATOMIC_RELAXED);
}

static void test_pool_runs_every_item_once(void) {
    static int hits[5000];
    int threads, job, bad = 0;
    for (threads = 1; threads <= 4; threads++) {
        aq__pool *pool = aq__pool_new(threads);
        CHECK(pool != NULL);
        /* many short jobs back to back, with more threads than cores: workers get preempted
           between reading a ticket and claiming from it */
        for (job = 0; job < 20000; job++) {
            int64_t n = 1 + (int64_t)(rnd_u64() % (job % 2 ? 5000 : 40)), grain = 1 + (int64_t)(rnd_u64() % 64), i;
            pool_count c;
            c.hits = hits; c.calls = 0;
            memset(hits, 0, sizeof hits);
            aq__pool_run(pool, n, grain, pool_count_task, &c);
            for (i = 0; i < n; i++) bad += hits[i] != 1;
            bad += c.calls > (n + grain - 1) / grain;
            if (job % 400 == 0) { struct timespec ts = {0, 300000}; nanosleep(&ts, NULL); } /* let the workers sleep now and then */
        }
        aq__pool_free(pool);
    }
    CHECKF(bad == 0, "%d items run a wrong number of times", bad);
}

static void kernel_tests(void) {
    RUN(test_f16_conversions);
    RUN(test_quantize_roundtrip);
    RUN(test_row_dots_match_reference);
    RUN(test_int4_kernels_match_reference);
    RUN(test_gemm_matches_gemv);
    RUN(test_pool_runs_every_item_once);
}
