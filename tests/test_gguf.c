/* GGUF: reading the real model, typed accessors, the writer (round trip, streaming), and a
   battery of malformed files derived from the real model that must all fail cleanly. */

static void test_gguf_reads_stories(void) {
    char err[256];
    aq_gguf *g = aq_gguf_open(shared_path("models/stories260K.gguf"), err, sizeof err);
    aq_str s;
    int64_t v;
    double f;
    const aq_gguf_kv *tokens;
    const aq_gguf_tensor *t;
    CHECKF(g != NULL, "%s", err);
    if (!g) return;
    CHECK(aq_gguf_version(g) == 3);
    CHECK(aq_gguf_n_tensors(g) == 48);
    CHECK(aq_gguf_alignment(g) == 32);
    CHECK(aq_gguf_get_str(g, "general.architecture", &s) == 1 && aq__str_eq(s, "llama"));
    CHECK(aq_gguf_get_int(g, "llama.embedding_length", &v) == 1 && v == 64);
    CHECK(aq_gguf_get_int(g, "tokenizer.ggml.seperator_token_id", &v) == 1 && v == 0xFFFFFFFFll); /* the misspelled key */
    CHECK(aq_gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", &f) == 1 && fabs(f - 1e-5) < 1e-9);
    CHECK(aq_gguf_get_int(g, "general.architecture", &v) == -1);
    CHECK(aq_gguf_get_int(g, "no.such.key", &v) == 0);
    tokens = aq_gguf_find_kv(g, "tokenizer.ggml.tokens");
    CHECK(tokens && tokens->type == AQ_GGUF_ARRAY && tokens->elem_type == AQ_GGUF_STRING && tokens->count == 512);
    if (tokens) CHECK(aq__str_eq(tokens->strs[1], "<s>"));
    t = aq_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    CHECK(t && t->type == AQ_TYPE_F32 && t->n_dims == 2 && t->ne[0] == 172 && t->ne[1] == 64 && t->nbytes == 172 * 64 * 4);
    aq_gguf_close(g);
}

static void test_gguf_int_accessors_take_any_width(void) {
    char err[256];
    aq_gguf_writer *w = aq_gguf_writer_new();
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int64_t i64 = -5000000000ll, v;
    double f64 = 2.5, f;
    uint64_t big = 0xF000000000000000ull;
    const char *path = tmp_path("widths.gguf");
    aq_gguf *g;
    int b;
    aq_gguf_writer_set_arr(w, "u8", AQ_GGUF_U8, &u8, 1); /* arrays, then replaced by scalars below */
    aq__writer_set_scalar(w, "u8", AQ_GGUF_U8, &u8);
    aq__writer_set_scalar(w, "i8", AQ_GGUF_I8, &i8);
    aq__writer_set_scalar(w, "u16", AQ_GGUF_U16, &u16);
    aq__writer_set_scalar(w, "i16", AQ_GGUF_I16, &i16);
    aq_gguf_writer_set_u32(w, "u32", 4000000000u);
    aq_gguf_writer_set_i32(w, "i32", -2000000000);
    aq_gguf_writer_set_u64(w, "u64", 123456789012ull);
    aq__writer_set_scalar(w, "i64", AQ_GGUF_I64, &i64);
    aq_gguf_writer_set_u64(w, "big", big);
    aq_gguf_writer_set_bool(w, "flag", 1);
    aq_gguf_writer_set_f32(w, "f32", 0.25f);
    aq__writer_set_scalar(w, "f64", AQ_GGUF_F64, &f64);
    aq_gguf_writer_set_str(w, "str", "hello");
    CHECKF(aq_gguf_writer_save(w, path, err, sizeof err) == 0, "%s", err);
    aq_gguf_writer_free(w);
    g = aq_gguf_open(path, err, sizeof err);
    CHECKF(g != NULL, "%s", err);
    if (!g) return;
    CHECK(aq_gguf_n_kv(g) == 13);
    CHECK(aq_gguf_get_int(g, "u8", &v) == 1 && v == 200);
    CHECK(aq_gguf_get_int(g, "i8", &v) == 1 && v == -100);
    CHECK(aq_gguf_get_int(g, "u16", &v) == 1 && v == 60000);
    CHECK(aq_gguf_get_int(g, "i16", &v) == 1 && v == -30000);
    CHECK(aq_gguf_get_int(g, "u32", &v) == 1 && v == 4000000000ll);
    CHECK(aq_gguf_get_int(g, "i32", &v) == 1 && v == -2000000000);
    CHECK(aq_gguf_get_int(g, "u64", &v) == 1 && v == 123456789012ll);
    CHECK(aq_gguf_get_int(g, "i64", &v) == 1 && v == i64);
    CHECK(aq_gguf_get_int(g, "big", &v) == -1); /* does not fit an int64 */
    CHECK(aq_gguf_get_bool(g, "flag", &b) == 1 && b == 1);
    CHECK(aq_gguf_get_int(g, "f32", &v) == -1);
    CHECK(aq_gguf_get_float(g, "f32", &f) == 1 && f == 0.25);
    CHECK(aq_gguf_get_float(g, "f64", &f) == 1 && f == 2.5);
    CHECK(aq_gguf_get_float(g, "u16", &f) == 1 && f == 60000);
    CHECK(aq_gguf_get_float(g, "str", &f) == -1);
    aq_gguf_close(g);
}

/* Copies every key and tensor of src into a writer. */
static aq_gguf_writer *copy_of(const aq_gguf *src) {
    aq_gguf_writer *w = aq_gguf_writer_new();
    int64_t i;
    for (i = 0; i < aq_gguf_n_kv(src); i++) aq_gguf_writer_copy_kv(w, aq_gguf_kv_at(src, i));
    for (i = 0; i < aq_gguf_n_tensors(src); i++) {
        const aq_gguf_tensor *t = aq_gguf_tensor_at(src, i);
        aq_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data);
    }
    return w;
}

static int same_gguf(const aq_gguf *a, const aq_gguf *b) {
    int64_t i;
    if (aq_gguf_n_kv(a) != aq_gguf_n_kv(b) || aq_gguf_n_tensors(a) != aq_gguf_n_tensors(b)) return 0;
    for (i = 0; i < aq_gguf_n_kv(a); i++) {
        const aq_gguf_kv *x = aq_gguf_kv_at(a, i), *y = aq_gguf_kv_at(b, i);
        if (x->key.len != y->key.len || memcmp(x->key.ptr, y->key.ptr, x->key.len) || x->type != y->type ||
            x->elem_type != y->elem_type || x->count != y->count || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes))
            return 0;
    }
    for (i = 0; i < aq_gguf_n_tensors(a); i++) {
        const aq_gguf_tensor *x = aq_gguf_tensor_at(a, i), *y = aq_gguf_tensor_at(b, i);
        if (strcmp(x->name, y->name) || x->type != y->type || x->n_dims != y->n_dims || memcmp(x->ne, y->ne, sizeof x->ne) ||
            x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes))
            return 0;
    }
    return 1;
}

static void test_gguf_round_trip(void) {
    static const char *files[] = {"models/stories260K.gguf", "models/ggml-vocab-llama-spm.gguf"};
    int f;
    for (f = 0; f < 2; f++) {
        char err[256];
        const char *src_path = shared_path(files[f]), *out = tmp_path("roundtrip.gguf");
        aq_gguf *a = aq_gguf_open(src_path, err, sizeof err), *b;
        aq_gguf_writer *w;
        unsigned char *x, *y;
        size_t nx, ny;
        CHECKF(a != NULL, "%s", err);
        if (!a) return;
        w = copy_of(a);
        CHECKF(aq_gguf_writer_save(w, out, err, sizeof err) == 0, "%s", err);
        aq_gguf_writer_free(w);
        b = aq_gguf_open(out, err, sizeof err);
        CHECKF(b != NULL, "%s", err);
        if (b) CHECK(same_gguf(a, b));
        /* llama.cpp's writer and ours lay the file out the same way: identical bytes */
        x = read_file(src_path, &nx);
        y = read_file(out, &ny);
        CHECKF(x && y && nx == ny && memcmp(x, y, nx) == 0, "%s", files[f]);
        free(x); free(y);
        aq_gguf_close(b);
        aq_gguf_close(a);
    }
}

/* Duplicate checks and lookups are hashed: 200k entries open in well under a second. */
static void test_gguf_many_entries_open_fast(void) {
    char err[256], name[32];
    aq_gguf_writer *w = aq_gguf_writer_new();
    float one = 1.0f;
    int64_t ne[1] = {1};
    int i;
    double t0;
    aq_gguf *g;
    for (i = 0; i < 100000; i++) {
        snprintf(name, sizeof name, "key.%d", i);
        aq_gguf_writer_set_u32(w, name, (uint32_t)i);
        snprintf(name, sizeof name, "t.%d", i);
        aq_gguf_writer_add_tensor(w, name, AQ_TYPE_F32, 1, ne, &one);
    }
    CHECKF(aq_gguf_writer_save(w, tmp_path("many.gguf"), err, sizeof err) == 0, "%s", err);
    aq_gguf_writer_free(w);
    t0 = aq_time_seconds();
    g = aq_gguf_open(tmp_path("many.gguf"), err, sizeof err);
    CHECKF(g && aq_time_seconds() - t0 < 1.0, "%s, %.2f s", g ? "" : err, aq_time_seconds() - t0);
    if (g) CHECK(aq_gguf_find_tensor(g, "t.99999") == aq_gguf_tensor_at(g, 99999) && aq_gguf_find_kv(g, "key.5") == aq_gguf_kv_at(g, 5));
    aq_gguf_close(g);
}

static void test_gguf_streaming_writer(void) {
    char err[256];
    aq_gguf *a = aq_gguf_open(shared_path("models/stories260K.gguf"), err, sizeof err), *b;
    aq_gguf_writer *w = aq_gguf_writer_new();
    int64_t i;
    size_t pos, chunk = 1000;
    unsigned char *all = NULL;
    size_t total = 0;
    const char *out = tmp_path("streamed.gguf");
    if (!a) { CHECKF(0, "%s", err); aq_gguf_writer_free(w); return; }
    aq_gguf_writer_set_u32(w, "general.alignment", 64);
    for (i = 0; i < aq_gguf_n_kv(a); i++) aq_gguf_writer_copy_kv(w, aq_gguf_kv_at(a, i));
    for (i = 0; i < aq_gguf_n_tensors(a); i++) {
        const aq_gguf_tensor *t = aq_gguf_tensor_at(a, i);
        aq_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, NULL);
        all = (unsigned char *)realloc(all, total + t->nbytes);
        memcpy(all + total, t->data, t->nbytes);
        total += t->nbytes;
    }
    CHECK(aq_gguf_writer_save(w, out, err, sizeof err) == -1 && strstr(err, "without data")); /* save needs data */
    CHECKF(aq_gguf_writer_begin(w, out, err, sizeof err) == 0, "%s", err);
    for (pos = 0; pos < total; pos += chunk) /* chunks that straddle tensor boundaries */
        CHECK(aq_gguf_writer_append(w, all + pos, total - pos < chunk ? total - pos : chunk, err, sizeof err) == 0);
    CHECK(aq_gguf_writer_append(w, all, 1, err, sizeof err) == -1 && strstr(err, "more bytes"));
    CHECKF(aq_gguf_writer_end(w, err, sizeof err) == 0, "%s", err);
    aq_gguf_writer_free(w);
    b = aq_gguf_open(out, err, sizeof err);
    CHECKF(b != NULL, "%s", err);
    if (b) {
        CHECK(aq_gguf_alignment(b) == 64 && aq_gguf_data_offset(b) % 64 == 0);
        for (i = 0; i < aq_gguf_n_tensors(b); i++) {
            const aq_gguf_tensor *x = aq_gguf_tensor_at(a, i), *y = aq_gguf_tensor_at(b, i);
            CHECK(y->offset % 64 == 0 && !strcmp(x->name, y->name) && x->nbytes == y->nbytes && !memcmp(x->data, y->data, x->nbytes));
        }
    }
    /* a stream that ends early names the tensor that is short */
    w = copy_of(a);
    CHECK(aq_gguf_writer_begin(w, tmp_path("short.gguf"), err, sizeof err) == 0);
    CHECK(aq_gguf_writer_append(w, all, 100, err, sizeof err) == 0);
    CHECK(aq_gguf_writer_end(w, err, sizeof err) == -1 && strstr(err, "token_embd.weight"));
    aq_gguf_writer_free(w);
    /* invalid tensors are refused when added */
    w = aq_gguf_writer_new();
    {
        int64_t ne[2] = {31, 4}, ne5[4] = {32, 1, 1, 1};
        CHECK(aq_gguf_writer_add_tensor(w, "q", AQ_TYPE_Q4_0, 2, ne, NULL) == -1);   /* 31 is not whole blocks */
        CHECK(aq_gguf_writer_add_tensor(w, "a", AQ_TYPE_F32, 5, ne5, NULL) == -1);   /* 5 dims */
        CHECK(aq_gguf_writer_add_tensor(w, "a", AQ_TYPE_F32, 1, ne5, NULL) == 0);
        CHECK(aq_gguf_writer_add_tensor(w, "a", AQ_TYPE_F32, 1, ne5, NULL) == -1);   /* duplicate name */
    }
    aq_gguf_writer_free(w);
    free(all);
    aq_gguf_close(b);
    aq_gguf_close(a);
}

/* ---- malformed files ---- */

typedef struct {
    unsigned char *bytes;
    size_t size;
    size_t tinfo[48];       /* file offset of each tensor info (its name length) */
    size_t data_offset;
    size_t data_end;        /* end of the last tensor's bytes */
    const aq_gguf *g;
} image;

static size_t kv_value_offset(const image *im, const char *key) {
    return (size_t)(aq_gguf_find_kv(im->g, key)->data - im->bytes);
}

/* File offsets of a tensor's name bytes and of its type field. */
static size_t name_of(const image *im, const char *name) {
    int64_t i;
    for (i = 0; i < 48; i++)
        if (!strcmp(aq_gguf_tensor_at(im->g, i)->name, name)) return im->tinfo[i] + 8;
    return 0;
}
static size_t type_of(const image *im, const char *name) {
    const aq_gguf_tensor *t = aq_gguf_find_tensor(im->g, name);
    return name_of(im, name) + strlen(name) + 4 + 8 * t->n_dims;
}

static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }

/* Opens a mutated copy from memory; the open must fail with a message that names the file.
   Returns 1 if it failed cleanly. */
static int fails_cleanly(const unsigned char *bytes, size_t size, const char *what) {
    char err[512] = "";
    aq_gguf *g = aq_gguf_open_memory(bytes, size, "mutant.gguf", err, sizeof err);
    if (g) {
        printf("    malformed file accepted: %s\n", what);
        aq_gguf_close(g);
        return 0;
    }
    if (!strstr(err, "mutant.gguf")) { printf("    %s: message does not name the file: %s\n", what, err); return 0; }
    return 1;
}

static void test_gguf_malformed_files_fail_cleanly(void) {
    char err[256];
    size_t n, i;
    image im;
    unsigned char *m;
    int cases = 0, ok = 0;
    aq_gguf *g;
    im.bytes = read_file(shared_path("models/stories260K.gguf"), &im.size);
    g = aq_gguf_open_memory(im.bytes, im.size, "orig", err, sizeof err);
    if (!g) { CHECKF(0, "%s", err); free(im.bytes); return; }
    im.g = g;
    im.data_offset = aq_gguf_data_offset(g);
    im.data_end = 0;
    {   /* tensor infos follow the last metadata value */
        const aq_gguf_kv *last = aq_gguf_kv_at(g, aq_gguf_n_kv(g) - 1);
        size_t p = (size_t)(last->data + last->nbytes - im.bytes);
        for (i = 0; i < 48; i++) {
            const aq_gguf_tensor *t = aq_gguf_tensor_at(g, (int64_t)i);
            im.tinfo[i] = p;
            p += 8 + strlen(t->name) + 4 + 8 * t->n_dims + 4 + 8;
            if (im.data_offset + t->offset + t->nbytes > im.data_end) im.data_end = im.data_offset + t->offset + t->nbytes;
        }
        CHECK(p <= im.data_offset && im.data_offset - p < 32);
    }
    m = (unsigned char *)malloc(im.size);
#define MUTANT(what, code)                                   \
    do {                                                     \
        memcpy(m, im.bytes, im.size);                        \
        n = im.size;                                         \
        code;                                                \
        cases++;                                             \
        ok += fails_cleanly(m, n, what);                     \
    } while (0)
    {
        size_t t0 = im.tinfo[0], name0 = strlen(aq_gguf_tensor_at(g, 0)->name);
        size_t dims0 = t0 + 8 + name0 + 4, type0 = dims0 + 16, off0 = type0 + 4;
        size_t tl = im.tinfo[47], namel = strlen(aq_gguf_tensor_at(g, 47)->name);
        size_t nd_l = tl + 8 + namel, offl = nd_l + 4 + 8 * aq_gguf_tensor_at(g, 47)->n_dims + 4;
        size_t tokens = kv_value_offset(&im, "tokenizer.ggml.tokens"); /* first element; header 12 bytes before */
        size_t arch = kv_value_offset(&im, "general.architecture");  /* string length field */
        MUTANT("empty", n = 0);
        MUTANT("3 bytes", n = 3);
        MUTANT("wrong magic", m[0] = 'X');
        MUTANT("version 1", put32(m + 4, 1));
        MUTANT("version 4", put32(m + 4, 4));
        MUTANT("big-endian version", put32(m + 4, 0x03000000u));
        MUTANT("truncated in the header", n = 10);
        MUTANT("absurd tensor count", put64(m + 8, 1ull << 62));
        MUTANT("absurd metadata count", put64(m + 16, 1ull << 60));
        MUTANT("absurd key length", put64(m + 24, 1ull << 40));
        MUTANT("key length one past the end", put64(m + 24, im.size - 32 + 1));
        MUTANT("invalid value type", put32(m + arch - 4, 13));
        MUTANT("absurd string length", put64(m + arch, 1ull << 50));
        MUTANT("absurd array count", put64(m + tokens - 8, 1ull << 62));
        MUTANT("invalid array element type", put32(m + tokens - 12, 77));
        MUTANT("array of strings cut by the end of file", n = tokens + 100);
        MUTANT("5 dimensions", put32(m + dims0 - 4, 5));
        MUTANT("0 dimensions", put32(m + dims0 - 4, 0));
        MUTANT("dimension product overflows", (put64(m + dims0, 1ull << 40), put64(m + dims0 + 8, 1ull << 40)));
        MUTANT("dimension beyond int64", put64(m + dims0, ~0ull));
        MUTANT("unknown tensor type", put32(m + type0, 200));
        MUTANT("removed tensor type id", put32(m + type0, 4));
        MUTANT("row length not whole blocks", put32(m + type_of(&im, "blk.0.ffn_down.weight"), AQ_TYPE_Q4_0)); /* 172 wide */
        MUTANT("offset far past the end", put64(m + offl, 1ull << 62));
        MUTANT("offset one alignment past the data", put64(m + offl, im.size - im.data_offset));
        MUTANT("misaligned offset", put64(m + off0, 1));
        MUTANT("tensor name of 0 bytes", put64(m + t0, 0));
        MUTANT("tensor name of 65 bytes", put64(m + t0, 65));
        MUTANT("tensor name with a NUL", m[t0 + 8 + 2] = 0);
        MUTANT("duplicate tensor name", memcpy(m + name_of(&im, "blk.1.attn_k.weight"), "blk.1.attn_q.weight", 19));
        MUTANT("duplicate key", memcpy(m + (size_t)(aq_gguf_find_kv(g, "tokenizer.ggml.eos_token_id")->key.ptr - (const char *)im.bytes),
                                       "tokenizer.ggml.bos_token_id", 27));
        MUTANT("data section truncated", n = im.data_end - 1);
        MUTANT("header cut inside the tensor infos", n = im.tinfo[20] + 5);
    }
#undef MUTANT
    CHECKF(ok == cases && cases >= 30, "%d of %d malformed files failed cleanly", ok, cases);
    /* every truncation point before the end of the tensor data must fail */
    {
        int bad = 0, k;
        for (k = 0; k < 300; k++) {
            size_t cut = (size_t)(rnd_u64() % im.data_end);
            if (!fails_cleanly(im.bytes, cut, "truncation")) bad++;
        }
        CHECKF(bad == 0, "%d of 300 truncated files were accepted", bad);
    }
    /* random byte flips in the header: accepted or refused, never a crash or a bad read (ASan
       watches); when refused, the message names the file */
    {
        int k, refused = 0;
        for (k = 0; k < 3000; k++) {
            char e2[512] = "";
            aq_gguf *h;
            size_t at = (size_t)(rnd_u64() % im.data_offset);
            memcpy(m, im.bytes, im.size);
            m[at] ^= (unsigned char)(1u << (rnd_u64() % 8));
            h = aq_gguf_open_memory(m, im.size, "flipped.gguf", e2, sizeof e2);
            if (!h) { refused++; CHECKF(strstr(e2, "flipped.gguf"), "message: %s", e2); }
            aq_gguf_close(h);
        }
        CHECK(refused > 100);
    }
    free(m);
    aq_gguf_close(g);
    free(im.bytes);
}

static void gguf_tests(void) {
    RUN(test_gguf_reads_stories);
    RUN(test_gguf_int_accessors_take_any_width);
    RUN(test_gguf_round_trip);
    RUN(test_gguf_many_entries_open_fast);
    RUN(test_gguf_streaming_writer);
    RUN(test_gguf_malformed_files_fail_cleanly);
}
