/* The GPU path's host side, which needs no GPU: the int4 repacking the CUDA kernels read (checked
   through a C model of the kernel's dequantization), greedy steps, and the CUDA backend's
   fallback to the CPU.  The kernels themselves are checked on a GPU by tools/gpu-check.sh. */

/* What aqc_gemv_4bit_kernel<AQC_INT4> makes of element e of a packed row, step by step as the
   kernel does it: pair s = (e % 8) / 2 comes from the word (s = 0, 1) or the word shifted right
   by 8 (s = 2, 3), masked with 0x000f000f (even s) or 0x00f000f0 (odd s, 16 times too large),
   OR-ed into the mantissa of f16 1024.0 (0x6400) and read back as f16; then minus 1032, or times
   1/16 minus 72, gives q - 8, and the value is (q - 8) * scale + (offset + 8 * scale). */
static float gpu_int4_value(const uint32_t *codes, const uint16_t *scales, const uint16_t *mins, int64_t group, int64_t e) {
    const int s = (int)(e % 8) / 2;
    const uint32_t word = codes[e / 8] >> (s < 2 ? 0 : 8);
    const uint32_t bits = (word & (s % 2 ? 0x00f000f0u : 0x000f000fu)) | 0x64006400u;
    const float v = aq_f16_to_f32((uint16_t)(e % 2 ? bits >> 16 : bits & 0xffffu));
    const float centred = s % 2 ? v * (1.0f / 16.0f) - 72.0f : v - 1032.0f;
    const float d = aq_f16_to_f32(scales[e / group]), m = aq_f16_to_f32(mins[e / group]);
    return centred * d + (m + 8.0f * d);
}

/* The int4 layouts' tests: every int4 type, at widths that leave a partial group. */
static const uint32_t int4_types[4] = {AQ_TYPE_Q4_1, AQ_TYPE_AQ4_G32, AQ_TYPE_AQ4_G64, AQ_TYPE_AQ4_G128};
static const int64_t int4_widths[4] = {96, 100, 200, 300};

/* Uniform in [-1, 1) from a 64-bit LCG. */
static float lcg_uniform(uint64_t *seed) {
    *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((int64_t)(*seed >> 40) - (1 << 23)) / (float)(1 << 23);
}

/* rows random rows (row r scaled by r + 1) quantized to type into data, and w describing them. */
static void random_quantized_rows(uint32_t type, int64_t rows, int64_t cols, uint64_t *seed, uint8_t *data, aq_weight *w) {
    const size_t row_bytes = (size_t)aq_type_row_bytes(type, cols);
    float *src = (float *)malloc(sizeof(float) * (size_t)cols);
    int64_t r, e;
    for (r = 0; r < rows; r++) {
        for (e = 0; e < cols; e++) src[e] = lcg_uniform(seed) * (float)(r + 1);
        CHECK(aq_quantize_row(type, src, data + r * row_bytes, cols) == 0);
    }
    w->type = type; w->rows = rows; w->cols = cols; w->row_bytes = row_bytes; w->data = data; w->name = "test";
    free(src);
}

static void test_gpu_int4_packing_decodes_like_the_cpu(void) {
    const uint32_t *types = int4_types;
    const int64_t *widths = int4_widths, rows = 5;
    uint64_t seed = 7;
    int t;
    for (t = 0; t < 4; t++) {
        const int64_t cols = widths[t], group = aq__int4_group(types[t]), kp = (cols + group - 1) / group * group;
        const size_t row_bytes = (size_t)aq_type_row_bytes(types[t], cols);
        uint8_t *data = (uint8_t *)malloc(row_bytes * rows);
        float *ref = (float *)malloc(sizeof(float) * (size_t)cols);
        uint32_t *codes = (uint32_t *)calloc((size_t)(kp / 8), 4);
        uint16_t *scales = (uint16_t *)calloc((size_t)(kp / group), 2), *mins = (uint16_t *)calloc((size_t)(kp / group), 2);
        aq_weight w;
        int64_t r, e;
        int bad = 0;
        random_quantized_rows(types[t], rows, cols, &seed, data, &w);
        for (r = 0; r < rows; r++) {
            aq__gpu_pack_int4_row(&w, r, group, codes, scales, mins);
            CHECK(aq_dequantize_row(types[t], data + r * row_bytes, ref, cols) == 0);
            for (e = 0; e < cols; e++)
                if (fabsf(gpu_int4_value(codes, scales, mins, group, e) - ref[e]) > 1e-6f * (1.0f + fabsf(ref[e]))) bad++;
        }
        CHECKF(bad == 0, "%s: %d of %lld values differ", aq_type_name(types[t]), bad, (long long)(rows * cols));
        free(data); free(ref); free(codes); free(scales); free(mins);
    }
}

/* What aqc_gemv_4bit_kernel<AQC_OVP> makes of a packed OVP row: byte j through the table picked
   by the sign of the group's scale, times |scale|, plus the offset. */
static void test_gpu_ovp_packing_decodes_like_the_cpu(void) {
    const uint32_t types[3] = {AQ_TYPE_OVP_G32, AQ_TYPE_OVP_G64, AQ_TYPE_OVP_G128};
    const int64_t widths[3] = {100, 200, 300}, rows = 4;
    float table[2 * 256 * 2];
    uint64_t seed = 11;
    int t;
    aq__gpu_ovp_table(table);
    for (t = 0; t < 3; t++) {
        const int64_t cols = widths[t], group = aq_type_group(types[t]), kp = (cols + group - 1) / group * group;
        const size_t row_bytes = (size_t)aq_type_row_bytes(types[t], cols);
        uint8_t *data = (uint8_t *)malloc(row_bytes * rows), *codes = (uint8_t *)calloc((size_t)(kp / 2), 1);
        float *src = (float *)malloc(sizeof(float) * (size_t)(cols * rows)), *ref = (float *)malloc(sizeof(float) * (size_t)cols);
        uint16_t *scales = (uint16_t *)calloc((size_t)(kp / group), 2), *mins = (uint16_t *)calloc((size_t)(kp / group), 2);
        aq_weight w;
        int64_t r, e;
        int bad = 0, grid;
        for (e = 0; e < cols * rows; e++) {   /* heavy-tailed, so outliers and victims occur */
            double u;
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            u = ((double)(seed >> 11) + 0.5) / 9007199254740992.0;
            src[e] = (float)(0.02 * tan(3.14159265358979 * (u - 0.5)));
        }
        for (grid = AQ_OVP_INT4; grid <= AQ_OVP_FLINT4; grid++) {
            CHECK(aq_quantize_ovp(types[t], src, data, rows, cols, grid, NULL) == grid);
            w.type = types[t]; w.rows = rows; w.cols = cols; w.row_bytes = row_bytes; w.data = data; w.name = "test";
            for (r = 0; r < rows; r++) {
                aq__gpu_pack_ovp_row(&w, r, group, codes, scales, mins);
                CHECK(aq_dequantize_row(types[t], data + r * row_bytes, ref, cols) == 0);
                for (e = 0; e < cols; e++) {
                    const float *v = table + (((scales[e / group] & 0x8000) ? 256 : 0) + codes[e / 2]) * 2;
                    float got = v[e % 2] * fabsf(aq_f16_to_f32(scales[e / group])) + aq_f16_to_f32(mins[e / group]);
                    if (fabsf(got - ref[e]) > 1e-5f * (1.0f + fabsf(ref[e]))) bad++;
                }
            }
        }
        CHECKF(bad == 0, "%s: %d values differ", aq_type_name(types[t]), bad);
        free(data); free(codes); free(src); free(ref); free(scales); free(mins);
    }
}

/* aq_eval_greedy is aq_eval plus an argmax that keeps the lowest id among equal logits. */
static void test_eval_greedy_is_the_argmax(void) {
    char err[512];
    aq_model *m = load_model(stories());
    aq_session *a, *b;
    const int32_t prompt[3] = {1, 403, 407};
    float *logits;
    int32_t tok_a, tok_b, i, k, best;
    if (!m) return;
    a = new_session(m, 2, 0, 0, 0);
    b = new_session(m, 2, 0, 0, 0);
    logits = (float *)malloc(sizeof(float) * 512);
    CHECK(a && b && aq_eval(a, prompt, 3, logits, err, sizeof err) == 0 && aq_eval(b, prompt, 3, NULL, err, sizeof err) == 0);
    for (best = 0, k = 1; k < 512; k++) best = logits[k] > logits[best] ? k : best;
    tok_a = tok_b = best;
    for (i = 0; i < 20; i++) {
        CHECK(aq_eval(a, &tok_a, 1, logits, err, sizeof err) == 0);
        for (best = 0, k = 1; k < 512; k++) best = logits[k] > logits[best] ? k : best;
        tok_a = best;
        CHECKF(aq_eval_greedy(b, tok_b, &tok_b, err, sizeof err) == 0, "%s", err);
        CHECKF(tok_a == tok_b, "step %d: %d vs %d", i, tok_a, tok_b);
    }
    CHECK(aq_eval_greedy(b, 512, &tok_b, err, sizeof err) == -1 && strstr(err, "512"));
    free(logits);
    aq_session_free(a);
    aq_session_free(b);
    aq_model_free(m);
}

/* aq_eval_sample draws what aq_eval + aq_sampler_sample would, with the same RNG draws, for
   sampled, greedy and penalised settings. */
static void test_eval_sample_is_the_sampler(void) {
    char err[512];
    aq_model *m = load_model(stories());
    const float temps[3] = {0.8f, 0.0f, 0.7f}, penalties[3] = {1.0f, 1.0f, 1.3f};
    const int32_t prompt[3] = {1, 403, 407};
    float *logits = (float *)malloc(sizeof(float) * 512);
    int c, i;
    if (!m) { free(logits); return; }
    for (c = 0; c < 3; c++) {
        aq_session *a = new_session(m, 2, 0, 0, 0), *b = new_session(m, 2, 0, 0, 0);
        aq_sampler_params sp = aq_sampler_default_params();
        aq_sampler *sa, *sb;
        int32_t ta, tb;
        sp.temperature = temps[c];
        sp.repeat_penalty = penalties[c];
        sp.seed = 1234 + (uint64_t)c;
        sa = aq_sampler_new(&sp, 512);
        sb = aq_sampler_new(&sp, 512);
        CHECK(a && b && aq_eval(a, prompt, 3, logits, err, sizeof err) == 0 && aq_eval(b, prompt, 3, NULL, err, sizeof err) == 0);
        ta = tb = aq_sampler_sample(sa, logits);
        aq_sampler_sample(sb, logits);   /* keep the two RNGs in step */
        for (i = 0; i < 30; i++) {
            aq_sampler_accept(sa, ta);
            aq_sampler_accept(sb, tb);
            CHECK(aq_eval(a, &ta, 1, logits, err, sizeof err) == 0);
            ta = aq_sampler_sample(sa, logits);
            CHECKF(aq_eval_sample(b, sb, tb, &tb, err, sizeof err) == 0, "%s", err);
            CHECKF(ta == tb, "setting %d, step %d: %d vs %d", c, i, ta, tb);
        }
        aq_sampler_free(sa);
        aq_sampler_free(sb);
        aq_session_free(a);
        aq_session_free(b);
    }
    free(logits);
    aq_model_free(m);
}

/* Asking for the GPU never fails the session: without one (this build, or this machine) it runs on
   the CPU, says why, and computes exactly what a CPU session does. */
static void test_gpu_backend_falls_back_with_a_reason(void) {
    char err[512];
    aq_model *m = load_model(stories());
    aq_session_params p = aq_session_default_params();
    aq_session *gpu, *cpu;
    const int32_t prompt[4] = {1, 403, 407, 261};
    float *lg, *lc;
    int i, same = 1;
    if (!m) return;
    p.n_threads = 2;
    p.backend = AQ_BACKEND_CUDA;
    gpu = aq_session_new(m, &p, err, sizeof err);
    p.backend = AQ_BACKEND_CPU;
    cpu = aq_session_new(m, &p, err, sizeof err);
    CHECK(gpu && cpu && aq_session_backend(cpu) == AQ_BACKEND_CPU && strcmp(aq_session_backend_note(cpu), "CPU") == 0);
    if (!gpu || !cpu) { aq_session_free(gpu); aq_session_free(cpu); aq_model_free(m); return; }
    printf("    backend: %s\n", aq_session_backend_note(gpu));
    lg = (float *)malloc(sizeof(float) * 4 * 512);
    lc = (float *)malloc(sizeof(float) * 4 * 512);
    CHECK(aq_eval_all(gpu, prompt, 4, lg, err, sizeof err) == 0 && aq_eval_all(cpu, prompt, 4, lc, err, sizeof err) == 0);
    if (aq_session_backend(gpu) == AQ_BACKEND_CPU) {
        CHECKF(strncmp(aq_session_backend_note(gpu), "CPU: ", 5) == 0 && strlen(aq_session_backend_note(gpu)) > 12, "%s",
               aq_session_backend_note(gpu));
        CHECK(memcmp(lg, lc, sizeof(float) * 4 * 512) == 0);
    } else {   /* a GPU is here: f16 arithmetic, so close rather than equal */
        for (i = 0; i < 4 * 512; i++) same &= fabsf(lg[i] - lc[i]) < 0.05f * (1.0f + fabsf(lc[i]));
        CHECK(same);
    }
#ifdef AQ_CUDA
    aq_session_free(gpu);
    p.backend = AQ_BACKEND_CUDA;
    p.window = 64;
    gpu = aq_session_new(m, &p, err, sizeof err);
    CHECK(gpu && aq_session_backend(gpu) == AQ_BACKEND_CPU && strstr(aq_session_backend_note(gpu), "window"));
#endif
    free(lg);
    free(lc);
    aq_session_free(gpu);
    aq_session_free(cpu);
    aq_model_free(m);
}

static void gpu_tests(void) {
    RUN(test_gpu_int4_packing_decodes_like_the_cpu);
    RUN(test_gpu_ovp_packing_decodes_like_the_cpu);
    RUN(test_eval_greedy_is_the_argmax);
    RUN(test_eval_sample_is_the_sampler);
    RUN(test_gpu_backend_falls_back_with_a_reason);
}
