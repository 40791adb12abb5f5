/* OliVe's outlier-victim pairs (OVP): the pair code against the format as the header documents
   it, hand-made pairs through the encoder, the encoder's output on heavy-tailed data, every SIMD
   kernel against the scalar one, and OVP models written by aq-quantize and aq-synth. */

/* The format's definition, written out apart from the library's tables. */
static int spec_normal(int flint, int code) {
    static const int flint4[8] = {0, 1, 2, 3, 4, 6, 8, 16};
    int f = code & 7, mag = flint ? flint4[f] : f;
    return code & 8 ? -mag : mag;
}

static int spec_outlier(int flint, int code) {
    int f = code & 7, mag = f ? (2 + (f & 1)) << ((f >> 1) + (flint ? 3 : 2)) : 0;
    return code & 8 ? -mag : mag;
}

static void spec_pair(int flint, int byte, int *v0, int *v1) {
    int lo = byte & 15, hi = byte >> 4;
    if (lo == 8 && hi == 8) { *v0 = 0; *v1 = 0; }
    else if (hi == 8) { *v0 = spec_outlier(flint, lo); *v1 = 0; }
    else if (lo == 8) { *v0 = 0; *v1 = spec_outlier(flint, hi); }
    else { *v0 = spec_normal(flint, lo); *v1 = spec_normal(flint, hi); }
}

/* Student-t with 3 degrees of freedom: heavy tails, like the outliers of real weights. */
static float rnd_gauss(void) {
    float u = rnd_uniform(1e-7f, 1.0f), v = rnd_uniform(0.0f, 1.0f);
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static float rnd_t3(void) {
    float z = rnd_gauss(), c = 0;
    int k;
    for (k = 0; k < 3; k++) { float g = rnd_gauss(); c += g * g; }
    return z / sqrtf(c / 3.0f);
}

static void test_ovp_types_and_pair_decoding(void) {
    unsigned char row[8 * 20];
    float got[256], simd[256];
    int flint, byte, bad = 0, g, j;
    CHECK(!strcmp(aq_type_name(AQ_TYPE_OVP_G128), "OVP_G128") && !strcmp(aq_type_name(AQ_TYPE_OVP_G32), "OVP_G32"));
    CHECK(aq_type_ovp(64) == AQ_TYPE_OVP_G64 && aq_type_ovp(48) == 0 && aq_type_group(AQ_TYPE_OVP_G32) == 32);
    CHECK(aq_type_group(AQ_TYPE_AQ4_G64) == 64 && aq_type_group(AQ_TYPE_Q4_1) == 0);
    CHECK(aq_type_row_bytes(AQ_TYPE_OVP_G128, 172) == 2 * 68 && aq_type_row_bytes(AQ_TYPE_OVP_G32, 64) == 2 * 20);
    CHECK(aq_type_cpu_supported(AQ_TYPE_OVP_G64));
    /* every byte, both grids */
    for (flint = 0; flint < 2; flint++)
        for (byte = 0; byte < 256; byte++) {
            int v0, v1, w0, w1;
            aq__ovp_pair(flint, (unsigned)byte, &v0, &v1);
            spec_pair(flint, byte, &w0, &w1);
            bad += v0 != w0 || v1 != w1;
        }
    CHECKF(bad == 0, "%d bytes decode differently from the format", bad);
    /* the same through the row dequantizer: 8 groups of 32 hold all 256 bytes, grids alternating,
       with scales and offsets that make v * |d| + m exact in floats */
    for (g = 0; g < 8; g++) {
        uint16_t d = aq_f32_to_f16(g % 2 ? -0.5f : 0.25f), m = aq_f32_to_f16(0.125f * (float)(g - 3));
        memcpy(row + 20 * g, &d, 2);
        memcpy(row + 20 * g + 2, &m, 2);
        for (j = 0; j < 16; j++) row[20 * g + 4 + j] = (unsigned char)(16 * (g * 2 + j / 8) + (j % 8) * 2 + (j >= 8));
    }
    {   /* the byte layout above is a permutation of 0..255 */
        int seen[256] = {0}, dup = 0;
        for (g = 0; g < 8; g++)
            for (j = 0; j < 16; j++) dup += seen[row[20 * g + 4 + j]]++ != 0;
        CHECK(dup == 0);
    }
    CHECK(aq__dequantize_row(AQ_TYPE_OVP_G32, row, got, 256, AQ__SIMD_SCALAR) == 0);
    CHECK(aq_dequantize_row(AQ_TYPE_OVP_G32, row, simd, 256) == 0);
    bad = 0;
    for (g = 0; g < 8; g++)
        for (j = 0; j < 16; j++) {
            int v0, v1;
            float d = g % 2 ? 0.5f : 0.25f, m = 0.125f * (float)(g - 3);
            spec_pair(g % 2, row[20 * g + 4 + j], &v0, &v1);
            bad += got[32 * g + 2 * j] != (float)v0 * d + m || got[32 * g + 2 * j + 1] != (float)v1 * d + m;
            bad += simd[32 * g + 2 * j] != got[32 * g + 2 * j] || simd[32 * g + 2 * j + 1] != got[32 * g + 2 * j + 1];
        }
    CHECKF(bad == 0, "%d values dequantize wrongly", bad);
}

/* Pairs through the encoder at scale 1: which value becomes the outlier, the victim, clamping. */
static void test_ovp_hand_made_pairs(void) {
    static const struct { int flint; float a, b, m; int v0, v1; } cases[] = {
        {0, 48, 1, 0, 48, 0},           /* outlier first, its partner the victim */
        {0, 1, -48, 0, 0, -48},         /* outlier second */
        {0, 40, -100, 0, 0, -96},       /* both outliers: the larger is kept (clamped to the largest outlier) */
        {0, -100, 40, 0, -96, 0},
        {0, 0, 0, 0, 0, 0},
        {0, 7, -7, 0, 7, -7},           /* the normal range's ends */
        {0, 8.4f, 2, 0, 7, 2},          /* just past it: clamping costs less than an outlier (12) and a victim */
        {0, 10.6f, 0.2f, 0, 12, 0},     /* nearer 12 than 7, and the partner is nearly 0 */
        {0, 1e6f, 3, 0, 96, 0},         /* far out: the largest outlier */
        {0, -1e6f, -1e6f, 0, -96, 0},
        {0, 58, 11, 10, 48, 0},         /* with an offset: 58 - 10 = 48; the victim decodes to m = 10 */
        {1, 150, 3, 0, 128, 0},         /* flint4 */
        {1, 5.2f, 11, 0, 6, 8},
        {1, 19, 1, 0, 16, 1},
        {1, 23, 0.1f, 0, 24, 0},
        {1, 0.4f, -1000, 0, 0, -192},
    };
    aq__ovp_grid t[2];
    size_t i;
    aq__ovp_grid_init(&t[0], 0);
    aq__ovp_grid_init(&t[1], 1);
    for (i = 0; i < sizeof cases / sizeof *cases; i++) {
        float x[2];
        unsigned char code;
        int v0, v1, outlier;
        double sse, want;
        x[0] = cases[i].a; x[1] = cases[i].b;
        sse = aq__ovp_encode_group(&t[cases[i].flint], x, 2, 2, 1.0f, cases[i].m, &code, DBL_MAX);
        aq__ovp_pair(cases[i].flint, code, &v0, &v1);
        CHECKF(v0 == cases[i].v0 && v1 == cases[i].v1, "case %d: (%g, %g) encoded as (%d, %d), expected (%d, %d)", (int)i, x[0], x[1], v0,
               v1, cases[i].v0, cases[i].v1);
        want = ((double)x[0] - (v0 + cases[i].m)) * (x[0] - (v0 + cases[i].m)) + ((double)x[1] - (v1 + cases[i].m)) * (x[1] - (v1 + cases[i].m));
        CHECKF(fabs(sse - want) <= 1e-6 * want + 1e-6, "case %d: error %g, expected %g", (int)i, sse, want);
        outlier = abs(v0) > (cases[i].flint ? 16 : 7) || abs(v1) > (cases[i].flint ? 16 : 7);
        CHECK(code != 0x88 && (!outlier || (code & 15) == 8 || (code >> 4) == 8)); /* an outlier's partner is the marker */
    }
    {   /* an odd length: the padding is the victim of an outlier, and code 0 beside a normal */
        float x = 48, y = -3;
        unsigned char code;
        aq__ovp_encode_group(&t[0], &x, 1, 2, 1.0f, 0.0f, &code, DBL_MAX);
        CHECK(code == (5 | 8 << 4));   /* 48 = (2 + 1) << (2 + 2): field 5 */
        aq__ovp_encode_group(&t[0], &y, 1, 2, 1.0f, 0.0f, &code, DBL_MAX);
        CHECK(code == (8 | 3));
    }
}

/* A row with a few outliers among spread-out values, through the public row codec: the
   outliers survive, their partners decode to the offset, the other values are rounded to the
   group's step (or clamped), and the error is far below int4's.  (With more or clustered
   outliers, covering them with normals can cost less than victims and the outlier grid's coarse
   steps, and the encoder rightly does that.) */
static void test_ovp_row_round_trip(void) {
    float x[160], y[160], z[160], d, m;
    unsigned char row[256], aq4[256];
    double e_ovp = 0, e_aq4 = 0;
    int i, flint, bad = 0;
    for (i = 0; i < 160; i++) x[i] = 0.05f * sinf(1.7f * (float)i);
    x[10] = 0.5f;                    /* outlier first in its pair (10, 11) */
    x[21] = -0.5f;                   /* outlier second in (20, 21) */
    /* int4 normals reach only 7 steps, so the large values must be outliers (flint4's reach 16
       steps, and AUTO may cover them with normals) */
    CHECK(aq_quantize_ovp(AQ_TYPE_OVP_G128, x, row, 1, 160, AQ_OVP_INT4, NULL) == AQ_OVP_INT4);
    CHECK(aq_dequantize_row(AQ_TYPE_OVP_G128, row, y, 160) == 0);
    d = aq_f16_to_f32((uint16_t)(aq__rd16(row) & 0x7fff));
    m = aq_f16_to_f32(aq__rd16(row + 2));
    CHECKF(fabsf(y[10] - 0.5f) < 0.1f && y[11] == m, "(%g, %g), m %g", y[10], y[11], m);
    CHECKF(y[20] == m && fabsf(y[21] + 0.5f) < 0.1f, "(%g, %g), m %g", y[20], y[21], m);
    for (i = 0; i < 128; i++) { /* the first group's normals: within half a step unless clamped */
        float q = fabsf(x[i] - m) / d;
        if (i == 10 || i == 11 || i == 20 || i == 21 || q > 7.5f) continue;
        bad += fabsf(x[i] - y[i]) > 0.5f * d * 1.001f;
    }
    CHECKF(bad == 0, "%d values not rounded to the nearest step %g", bad, d);
    CHECK(aq_quantize_row(AQ_TYPE_OVP_G128, x, row, 160) == 0);  /* the grid of lower error */
    CHECK(aq_dequantize_row(AQ_TYPE_OVP_G128, row, y, 160) == 0);
    aq_quantize_row(AQ_TYPE_AQ4_G128, x, aq4, 160);
    aq_dequantize_row(AQ_TYPE_AQ4_G128, aq4, z, 160);
    for (i = 0; i < 160; i++) {
        e_ovp += (double)(x[i] - y[i]) * (x[i] - y[i]);
        e_aq4 += (double)(x[i] - z[i]) * (x[i] - z[i]);
    }
    CHECKF(e_ovp < 0.5 * e_aq4, "squared error: OVP %g, int4 %g", e_ovp, e_aq4);
    /* the second group's 32 values leave 48 padding bytes of code 0 */
    for (i = 4 + 16; i < 68; i++) CHECK(row[68 + i] == 0);
    /* both grids on request; d's sign bit says which */
    for (flint = 0; flint < 2; flint++) {
        CHECK(aq_quantize_ovp(AQ_TYPE_OVP_G64, x, row, 1, 100, flint ? AQ_OVP_FLINT4 : AQ_OVP_INT4, NULL) == (flint ? AQ_OVP_FLINT4 : AQ_OVP_INT4));
        CHECK((aq__rd16(row) >> 15) == flint && (aq__rd16(row + 36) >> 15) == flint);   /* 2 groups of 64 */
    }
    /* constant and zero rows */
    for (i = 0; i < 100; i++) x[i] = 0.3f;
    aq_quantize_row(AQ_TYPE_OVP_G32, x, row, 100);
    aq_dequantize_row(AQ_TYPE_OVP_G32, row, y, 100);
    for (i = 0; i < 100; i++) CHECK(fabsf(y[i] - 0.3f) < 1e-3f);
    memset(x, 0, sizeof x);
    aq_quantize_row(AQ_TYPE_OVP_G128, x, row, 100);
    aq_dequantize_row(AQ_TYPE_OVP_G128, row, y, 100);
    for (i = 0; i < 100; i++) CHECK(y[i] == 0.0f);
    CHECK(aq_quantize_ovp(AQ_TYPE_AQ4_G64, x, row, 1, 100, 0, NULL) == -1 && aq_quantize_ovp(AQ_TYPE_OVP_G64, x, row, 1, 100, 3, NULL) == -1);
}

/* Heavy-tailed rows with every grid option: each decoded value is v * |d| + m with v in the grid
   (victims and zeros included), no byte is 1000b/1000b, the padding is code 0, the reported
   error is the real one, AUTO keeps the better grid, and OVP beats int4 on such data. */
static void test_ovp_encoder_outputs_lie_on_the_grid(void) {
    static const int64_t lengths[] = {64, 100, 172, 256};
    static const int flags[] = {AQ_OVP_INT4, AQ_OVP_FLINT4, AQ_OVP_INT4 | AQ_OVP_SYMMETRIC, AQ_OVP_FLINT4 | AQ_OVP_SYMMETRIC, AQ_OVP_AUTO};
    enum { ROWS = 8, MAXC = 256 };
    float *x = (float *)malloc(sizeof(float) * ROWS * MAXC), *y = (float *)malloc(sizeof(float) * MAXC);
    unsigned char *q = (unsigned char *)malloc(ROWS * 200), *q2 = (unsigned char *)malloc(ROWS * 200);
    int gi, fi, bad_value = 0, bad_byte = 0, bad_sse = 0, bad_pad = 0, bad_sym = 0;
    size_t li;
    for (gi = 0; gi < 3; gi++)
        for (li = 0; li < sizeof lengths / sizeof *lengths; li++) {
            int64_t G = 32 << gi, n = lengths[li], rb = aq_type_row_bytes(aq_type_ovp(G), n), r, i, j;
            uint32_t type = aq_type_ovp(G);
            double sse[5];
            for (i = 0; i < ROWS * n; i++) x[i] = 0.02f * rnd_t3();
            for (fi = 0; fi < 5; fi++) {
                double real = 0;
                int grid = aq_quantize_ovp(type, x, q, ROWS, n, flags[fi], &sse[fi]);
                CHECK(grid == (fi < 4 ? (flags[fi] & 3) : sse[0] <= sse[1] ? AQ_OVP_INT4 : AQ_OVP_FLINT4));
                for (r = 0; r < ROWS; r++) {
                    const unsigned char *b = q + r * rb;
                    aq_dequantize_row(type, b, y, n);
                    for (i = 0; i < n; i++) real += (double)(x[r * n + i] - y[i]) * (x[r * n + i] - y[i]);
                    for (j = 0; j * G < n; j++, b += 4 + G / 2) {
                        uint16_t dh = aq__rd16(b);
                        int fl = dh >> 15, k;
                        float d = aq_f16_to_f32((uint16_t)(dh & 0x7fff)), m = aq_f16_to_f32(aq__rd16(b + 2));
                        int64_t len = n - j * G < G ? n - j * G : G;
                        bad_sym += (flags[fi] & AQ_OVP_SYMMETRIC) && m != 0.0f;
                        bad_byte += fl != (grid == AQ_OVP_FLINT4);
                        for (k = 0; k < G / 2; k++) {
                            int v[2], e;
                            bad_byte += b[4 + k] == 0x88;
                            if (2 * k >= len) { bad_pad += b[4 + k] != 0; continue; }
                            spec_pair(fl, b[4 + k], &v[0], &v[1]);
                            for (e = 0; e < 2 && 2 * k + e < len; e++) {
                                float got = y[j * G + 2 * k + e], u = d > 0 ? (got - m) / d : 0.0f;
                                int vi = (int)lrintf(u), a = abs(vi), on_grid = 0, f;
                                for (f = 0; f < 8; f++) on_grid |= a == abs(spec_normal(fl, f)) || a == abs(spec_outlier(fl, f));
                                bad_value += got != (float)v[e] * d + m || fabsf(u - (float)vi) > 1e-3f || !on_grid;
                                /* an outlier-only magnitude sits beside a victim */
                                if (a > (fl ? 16 : 7)) bad_value += v[1 - e] != 0;
                            }
                        }
                    }
                }
                bad_sse += fabs(real - sse[fi]) > 1e-3 * real + 1e-12;
                if (fi == 4) { /* AUTO: the bytes of the better fixed grid */
                    aq_quantize_ovp(type, x, q2, ROWS, n, grid, NULL);
                    CHECK(memcmp(q, q2, (size_t)(ROWS * rb)) == 0);
                }
            }
            CHECKF(sse[4] <= sse[2] && sse[4] <= sse[3], "G %lld n %lld: offsets %g, symmetric %g / %g", (long long)G, (long long)n, sse[4],
                   sse[2], sse[3]);
            if (n == 256 && G >= 64) { /* on Student-t data OVP clearly beats int4 */
                double e4 = 0;
                for (r = 0; r < ROWS; r++) {
                    aq_quantize_row(aq_type_aq4(G), x + r * n, q2, n);
                    aq_dequantize_row(aq_type_aq4(G), q2, y, n);
                    for (i = 0; i < n; i++) e4 += (double)(x[r * n + i] - y[i]) * (x[r * n + i] - y[i]);
                }
                CHECKF(sse[4] < 0.8 * e4, "G %lld: OVP %g vs int4 %g", (long long)G, sse[4], e4);
            }
        }
    CHECKF(bad_value == 0 && bad_byte == 0 && bad_sse == 0 && bad_pad == 0 && bad_sym == 0,
           "%d values off the grid, %d bad bytes or grids, %d wrong errors, %d padding bytes, %d offsets with m = 0 asked", bad_value,
           bad_byte, bad_sse, bad_pad, bad_sym);
    free(x); free(y); free(q); free(q2);
}

/* Every SIMD level of the OVP kernels equals the scalar one (integer sums are exact), on rows of
   random bytes (every byte value, 1000b/1000b too, both grids) and on encoded rows; the scalar
   kernel is within the int8 rounding of x of the float dot product; SIMD dequantization equals
   the scalar one bit for bit. */
static void test_ovp_kernels_match_reference(void) {
    static const int64_t lengths[] = {32, 64, 96, 100, 128, 172, 200, 256, 384, 2048, 5632};
    float *x = (float *)malloc(sizeof(float) * 5632), *deq = (float *)malloc(sizeof(float) * 5632), *deq2 = (float *)malloc(sizeof(float) * 5632);
    float *w = (float *)malloc(sizeof(float) * 5632);
    unsigned char *row = (unsigned char *)malloc(5632);
    char *mem = (char *)malloc(aq__x8_bytes(5632));
    aq__x8 x8;
    int simd = aq__detect_simd(), gi, kind, level, i;
    size_t li;
    aq__x8_init(&x8, mem, 5632);
    for (gi = 0; gi < 3; gi++)
        for (li = 0; li < sizeof lengths / sizeof *lengths; li++)
            for (kind = 0; kind < 2; kind++) {
                int64_t G = 32 << gi, n = lengths[li], rb = aq_type_row_bytes(aq_type_ovp(G), n), g;
                uint32_t type = aq_type_ovp(G);
                float ref, direct, mag = 0;
                for (i = 0; i < n; i++) x[i] = rnd_uniform(-1, 1) * (i % 13 == 0 ? 6.0f : 1.0f);
                if (kind == 0) { /* random bytes and headers: the first 256 bytes of codes are 0..255 */
                    int c = 0;
                    for (g = 0; g * G < n; g++) {
                        unsigned char *b = row + g * (4 + G / 2);
                        uint16_t d = aq_f32_to_f16(rnd_uniform(0.001f, 0.01f) * (rnd_u64() & 1 ? -1.0f : 1.0f)), m = aq_f32_to_f16(rnd_uniform(-0.01f, 0.01f));
                        memcpy(b, &d, 2);
                        memcpy(b + 2, &m, 2);
                        for (i = 0; i < G / 2; i++, c++) b[4 + i] = (unsigned char)(c < 256 ? c : (int)(rnd_u64() & 255));
                    }
                } else {
                    for (i = 0; i < n; i++) w[i] = 0.05f * rnd_t3();
                    CHECK(aq_quantize_row(type, w, row, n) == 0);
                }
                CHECK(aq__dequantize_row(type, row, deq, n, AQ__SIMD_SCALAR) == 0);
                for (level = AQ__SIMD_AVX2; level <= simd; level++) {
                    aq__dequantize_row(type, row, deq2, n, level);
                    CHECKF(memcmp(deq, deq2, sizeof(float) * (size_t)n) == 0, "G=%lld n=%lld level %d: SIMD dequantization differs",
                           (long long)G, (long long)n, level);
                }
                for (i = 0; i < n; i++) mag += fabsf(deq[i] * x[i]);
                aq__x8_quantize(x, n, G, &x8);
                ref = aq__dot_ovp_x8_ref(row, &x8);
                direct = aq__dot_f32_ref(deq, x, n);
                CHECKF(fabsf(ref - direct) <= 0.02f * mag + 1e-6f, "G=%lld n=%lld: int8 activations %g vs float %g", (long long)G, (long long)n,
                       ref, direct);
                for (level = AQ__SIMD_AVX2; level <= simd; level++) {
                    float fast = aq__row_dot_ovp_x8_for(level)(row, &x8);
                    CHECKF(fabsf(fast - ref) <= 1e-5f * mag + 1e-6f, "G=%lld n=%lld kind %d simd level %d: %g vs scalar %g", (long long)G,
                           (long long)n, kind, level, fast, ref);
                }
                (void)rb;
            }
    free(x); free(deq); free(deq2); free(w); free(row); free(mem);
}

/* A copy of a GGUF file with one string or u32 key replaced (for the loader's error messages). */
static const char *rewrite_key(const char *src_path, const char *name, const char *key, const char *str, uint32_t u32) {
    char err[256];
    aq_gguf *src = aq_gguf_open(src_path, err, sizeof err);
    aq_gguf_writer *w = aq_gguf_writer_new();
    const char *path = tmp_path(name);
    int64_t i;
    if (!src) { CHECKF(0, "%s", err); aq_gguf_writer_free(w); return path; }
    for (i = 0; i < aq_gguf_n_kv(src); i++) {
        const aq_gguf_kv *kv = aq_gguf_kv_at(src, i);
        if (!aq__str_eq(kv->key, key)) aq_gguf_writer_copy_kv(w, kv);
    }
    if (str) aq_gguf_writer_set_str(w, key, str);
    else aq_gguf_writer_set_u32(w, key, u32);
    for (i = 0; i < aq_gguf_n_tensors(src); i++) {
        const aq_gguf_tensor *t = aq_gguf_tensor_at(src, i);
        aq_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data);
    }
    CHECKF(aq_gguf_writer_save(w, path, err, sizeof err) == 0, "%s", err);
    aq_gguf_writer_free(w);
    aq_gguf_close(src);
    return path;
}

/* aq-quantize --method olive / awq+olive on stories260K: the file, loading, prompts against
   decode, agreement with f32, perplexity on held-out text, and the loader's refusals. */
static void test_olive_models(void) {
    char err[512], cmd[1024];
    static char out[1 << 16];
    aq_gguf *g;
    aq_model *m, *ref = load_model(stories());
    aq_str str;
    int64_t v;
    double p_fp, p_rtn, p_ovp, p_sym, p_awq;
    int32_t ids[200];
    int n, V;
    float *want;
    if (!ref) return;
    n = real_tokens(ref, ids, 200);
    V = aq_model_config(ref)->n_vocab;
    want = logits_of(ref, ids, n, 2, 16, 256, 0);
    CHECK(quantize(tmp_path("ovp64.gguf"), "--method olive --group 64") == 0);
    g = aq_gguf_open(tmp_path("ovp64.gguf"), err, sizeof err);
    CHECKF(g != NULL, "%s", err);
    if (g) {
        const aq_gguf_tensor *q = aq_gguf_find_tensor(g, "blk.0.attn_q.weight"), *d = aq_gguf_find_tensor(g, "blk.0.ffn_down.weight");
        CHECK(q && q->type == AQ_TYPE_I8 && q->ne[0] == 36 && q->ne[1] == 64);
        CHECK(d && d->type == AQ_TYPE_I8 && d->ne[0] == 3 * 36 && d->ne[1] == 64);   /* 172 wide: padded */
        CHECK(aq_gguf_get_str(g, "aq.quantization.format", &str) == 1 && aq__str_eq(str, "ovp"));
        CHECK(aq_gguf_get_str(g, "aq.quantization.method", &str) == 1 && aq__str_eq(str, "olive"));
        CHECK(aq_gguf_get_int(g, "aq.quantization.group_size", &v) == 1 && v == 64);
        CHECK(aq_gguf_find_tensor(g, "token_embd.weight")->type == AQ_TYPE_F32);
    }
    aq_gguf_close(g);
    m = aq_model_load(tmp_path("ovp64.gguf"), err, sizeof err);
    CHECKF(m && m->layers[0].wq.type == AQ_TYPE_OVP_G64 && m->layers[4].w_down.type == AQ_TYPE_OVP_G64, "%s", err);
    if (m) {
        /* prompts (dequantized tiles, sgemm) and decode (int8 GEMV kernels) agree, and both agree
           with f32 about as well as int4 does */
        float *batched = logits_of(m, ids, n, 2, 16, 256, 0), *decoded = logits_of(m, ids, n, 2, 16, 256, 1);
        char *text = greedy_text(m, 2, "Once upon a time", 30);
        int a1 = top1_agreement(batched, decoded, n, V), a2 = top1_agreement(want, batched, n, V);
        printf("    OVP g64 top-1 agreement: prompt vs decode %d/%d, with f32 %d/%d\n", a1, n, a2, n);
        CHECKF(a1 >= 0.9 * n && a2 >= 0.75 * n, "top-1 agreement %d and %d of %d", a1, a2, n);
        CHECK(strlen(text) > 40);
        free(text); free(batched); free(decoded);
    }
    aq_model_free(m);
    snprintf(cmd, sizeof cmd, "%s/tools/aq-inspect %s", AQ_BIN_DIR, tmp_path("ovp64.gguf"));
    CHECK(run_cmd(cmd, out, sizeof out) == 0 && strstr(out, "OVP_G64"));

    /* quality on held-out text: OVP with offsets beats plain rounding to int4 and symmetric OVP,
       and AWQ's search with OVP as the quantizer improves it further */
    CHECK(quantize(tmp_path("ovpsym64.gguf"), "--method olive --group 64 --no-offset") == 0);
    CHECK(quantize(tmp_path("awqovp64.gguf"), "--method awq+olive --group 64") == 0);
    CHECK(quantize(tmp_path("rtn64o.gguf"), "--method rtn --group 64") == 0);
    p_fp = perplexity_of(stories(), 4096);
    p_rtn = perplexity_of(tmp_path("rtn64o.gguf"), 4096);
    p_ovp = perplexity_of(tmp_path("ovp64.gguf"), 4096);
    p_sym = perplexity_of(tmp_path("ovpsym64.gguf"), 4096);
    p_awq = perplexity_of(tmp_path("awqovp64.gguf"), 4096);
    printf("    group 64: f32 %.4f, RTN int4 %.4f, OVP m=0 %.4f, OVP %.4f, AWQ+OVP %.4f\n", p_fp, p_rtn, p_sym, p_ovp, p_awq);
    CHECK(p_fp < p_awq && p_awq < p_ovp && p_ovp < p_rtn && p_ovp < p_sym);
    g = aq_gguf_open(tmp_path("awqovp64.gguf"), err, sizeof err);
    CHECK(g && aq_gguf_get_str(g, "aq.quantization.method", &str) == 1 && aq__str_eq(str, "awq+olive"));
    aq_gguf_close(g);
    m = aq_model_load(tmp_path("ovpsym64.gguf"), err, sizeof err);
    if (m) { /* m = 0 in every group */
        const aq_weight *wd = &m->layers[2].w_down;   /* 172 wide: 3 groups per row */
        int64_t r, k, nonzero = 0;
        for (r = 0; r < wd->rows; r++)
            for (k = 0; k < 3; k++) nonzero += aq__rd16((const uint8_t *)wd->data + r * wd->row_bytes + k * 36 + 2) != 0;
        CHECK(nonzero == 0);
    }
    aq_model_free(m);

    /* the embedding and output as OVP too */
    CHECK(quantize(tmp_path("ovp32o.gguf"), "--method olive --group 32 --quantize-output") == 0);
    m = aq_model_load(tmp_path("ovp32o.gguf"), err, sizeof err);
    CHECKF(m && m->tok_embd.type == AQ_TYPE_OVP_G32 && m->output.type == AQ_TYPE_OVP_G32, "%s", err);
    if (m) { char *text = greedy_text(m, 2, "Once upon a time", 20); CHECK(strlen(text) > 30); free(text); }
    aq_model_free(m);

    /* unknown formats and group sizes are refused, naming the file and the key */
    m = aq_model_load(rewrite_key(tmp_path("ovp64.gguf"), "ovq.gguf", "aq.quantization.format", "ovq", 0), err, sizeof err);
    CHECKF(!m && strstr(err, "ovq.gguf") && strstr(err, "aq.quantization.format") && strstr(err, "'ovq'"), "%s", err);
    aq_model_free(m);
    m = aq_model_load(rewrite_key(tmp_path("ovp64.gguf"), "g48.gguf", "aq.quantization.group_size", NULL, 48), err, sizeof err);
    CHECKF(!m && strstr(err, "g48.gguf") && strstr(err, "aq.quantization.group_size"), "%s", err);
    aq_model_free(m);
    m = aq_model_load(rewrite_key(tmp_path("ovp64.gguf"), "g128.gguf", "aq.quantization.group_size", NULL, 128), err, sizeof err);
    CHECKF(!m && strstr(err, "blk.0.attn_q.weight"), "%s", err); /* 64-wide groups read as 128: the row bytes do not match */
    aq_model_free(m);
    snprintf(cmd, sizeof cmd, "%s/tools/aq-quantize %s %s --method rtn --no-offset 2>&1", AQ_BIN_DIR, stories(), tmp_path("x.gguf"));
    CHECK(run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "--no-offset"));
    snprintf(cmd, sizeof cmd, "%s/tools/aq-quantize %s %s --method olive+ 2>&1", AQ_BIN_DIR, stories(), tmp_path("x.gguf"));
    CHECK(run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "olive+"));
    free(want);
    aq_model_free(ref);
}

/* aq-synth writes AQ4 and OVP models from random codes: they load, run with finite logits, have
   valid pairs and zero padding, and the same arguments give the same bytes. */
static void test_synth_ovp_and_aq4(void) {
    static const char *types[2] = {"ovp_g64", "aq4_g128"};
    const char *args = "--dim 128 --layers 2 --heads 4 --kv-heads 2 --ff 200 --ctx 128 --seed 3";
    char cmd[2048], out[256], err[256], name[32];
    int t;
    for (t = 0; t < 2; t++) {
        aq_model *m;
        int rep;
        for (rep = 0; rep < 2; rep++) {
            snprintf(name, sizeof name, "synth-%s-%d.gguf", types[t], rep);
            snprintf(cmd, sizeof cmd, "%s/tools/aq-synth %s --type %s --vocab %s -o %s 2>/dev/null", AQ_BIN_DIR, args, types[t],
                     shared_path("models/ggml-vocab-llama-spm.gguf"), tmp_path(name));
            CHECK(run_cmd(cmd, out, sizeof out) == 0);
        }
        {
            size_t na, nb;
            unsigned char *a, *b;
            snprintf(name, sizeof name, "synth-%s-0.gguf", types[t]);
            a = read_file(tmp_path(name), &na);
            snprintf(name, sizeof name, "synth-%s-1.gguf", types[t]);
            b = read_file(tmp_path(name), &nb);
            CHECK(a && b && na == nb && memcmp(a, b, na) == 0);
            free(a); free(b);
        }
        m = aq_model_load(tmp_path(name), err, sizeof err);
        CHECKF(m != NULL, "%s", err);
        if (!m) continue;
        CHECK(m->layers[1].w_down.type == (t == 0 ? AQ_TYPE_OVP_G64 : AQ_TYPE_AQ4_G128) && m->tok_embd.type == AQ_TYPE_F16);
        if (t == 0) { /* every pair valid, the padding of the 200-wide rows code 0 */
            const aq_weight *wd = &m->layers[0].w_down;
            int64_t r, j, bad = 0, outliers = 0;
            for (r = 0; r < wd->rows; r++) {
                const uint8_t *b = (const uint8_t *)wd->data + r * wd->row_bytes;
                for (j = 0; j < 4 * 32; j++) {
                    uint8_t c = b[(j / 32) * 36 + 4 + j % 32];
                    bad += c == 0x88 || ((c & 15) == 8 && (c >> 4) == 0) || ((c >> 4) == 8 && (c & 15) == 0); /* no empty outlier */
                    bad += j >= 100 && c != 0;                                                             /* 200 values = 100 bytes */
                    outliers += (c & 15) == 8 || (c >> 4) == 8;
                }
            }
            CHECKF(bad == 0 && outliers > 0, "%lld bad bytes, %lld outlier pairs", (long long)bad, (long long)outliers);
        }
        {   /* activations stay finite through the random layers, and a prompt matches decode */
            int32_t ids[8] = {1, 15043, 3186, 29892, 920, 526, 366, 29973};
            int V = aq_model_config(m)->n_vocab, i, finite = 1;
            float *batched = logits_of(m, ids, 8, 2, 16, 64, 0), *decoded = logits_of(m, ids, 8, 2, 16, 64, 1);
            float lo = batched[0], hi = batched[0];
            for (i = 0; i < 8 * V; i++) {
                finite &= isfinite(batched[i]) && isfinite(decoded[i]);
                lo = batched[i] < lo ? batched[i] : lo;
                hi = batched[i] > hi ? batched[i] : hi;
            }
            CHECKF(finite && hi > lo && top1_agreement(batched, decoded, 8, V) >= 6, "%s: logits in [%g, %g]", types[t], lo, hi);
            free(batched); free(decoded);
        }
        aq_model_free(m);
    }
}

/* aq-quantize --mse-demo: on Student-t(3) weights OVP with offsets is clearly better than int4. */
static void test_mse_demo(void) {
    char cmd[512];
    static char out[8192];
    const char *line;
    double rtn = 0, sym = 0, off = 0;
    snprintf(cmd, sizeof cmd, "%s/tools/aq-quantize --mse-demo --group 128 -t 2", AQ_BIN_DIR);
    CHECK(run_cmd(cmd, out, sizeof out) == 0);
    line = strstr(out, "student-t(3) 1024x4096");
    CHECKF(line && sscanf(line, "student-t(3) 1024x4096 128 %lf %lf [%*[^]]] %lf", &rtn, &sym, &off) == 3, "%s", out);
    printf("    Student-t(3), group 128: relative error RTN int4 %.4g, OVP m=0 %.4g, OVP %.4g\n", rtn, sym, off);
    CHECK(off > 0 && off < 0.7 * rtn && sym < rtn);
    CHECK(strstr(out, "gaussian 1024x4096"));
}

static void olive_tests(void) {
    RUN(test_ovp_types_and_pair_decoding);
    RUN(test_ovp_hand_made_pairs);
    RUN(test_ovp_row_round_trip);
    RUN(test_ovp_encoder_outputs_lie_on_the_grid);
    RUN(test_ovp_kernels_match_reference);
    RUN(test_olive_models);
    RUN(test_synth_ovp_and_aq4);
    RUN(test_mse_demo);
}
