/* Model and forward pass: the exact greedy text of the reference implementation, prefill against
   decode, invariance to threads / batch / page size, sessions sharing one model across threads,
   every CPU weight type, and the loader's errors for inconsistent files and mutated metadata. */

static const char *stories(void) { return shared_path("models/stories260K.gguf"); }

static aq_model *load_model(const char *path) {
    char err[512];
    aq_model *m = aq_model_load(path, err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    return m;
}

static aq_session *new_session(const aq_model *m, int threads, int n_ctx, int page, int batch) {
    char err[512];
    aq_session_params p = aq_session_default_params();
    aq_session *s;
    p.n_threads = threads; p.n_ctx = n_ctx; p.page_size = page; p.n_batch = batch;
    s = aq_session_new(m, &p, err, sizeof err);
    CHECKF(s != NULL, "%s", err);
    return s;
}

typedef struct { char *buf; size_t len, cap; } text_buf;

static int append_piece(const char *piece, size_t len, void *user) {
    text_buf *t = (text_buf *)user;
    if (t->len + len + 1 > t->cap) {
        t->cap = (t->len + len + 1) * 2;
        t->buf = (char *)realloc(t->buf, t->cap);
    }
    memcpy(t->buf + t->len, piece, len);
    t->len += len;
    t->buf[t->len] = 0;
    return 0;
}

/* Greedy text from BOS (or a prompt) through the public API. */
static char *greedy_text(const aq_model *m, int threads, const char *prompt, int n) {
    char err[512];
    aq_session *s = new_session(m, threads, 0, 0, 0);
    aq_sampler_params sp = aq_sampler_default_params();
    aq_sampler *smp;
    text_buf t = {NULL, 0, 0};
    sp.temperature = 0;
    smp = aq_sampler_new(&sp, aq_model_config(m)->n_vocab);
    append_piece("", 0, &t);
    if (s && aq_generate(s, smp, prompt, n, append_piece, &t, NULL, err, sizeof err)) CHECKF(0, "%s", err);
    aq_sampler_free(smp);
    aq_session_free(s);
    return t.buf;
}

static void test_model_config_from_metadata(void) {
    aq_model *m = load_model(stories());
    const aq_config *c;
    if (!m) return;
    c = aq_model_config(m);
    CHECK(c->n_embd == 64 && c->n_layers == 5 && c->n_heads == 8 && c->n_kv_heads == 4 && c->head_dim == 8);
    CHECK(c->n_ff == 172 && c->n_vocab == 512 && c->n_ctx_train == 2048 && c->n_rot == 8);
    CHECK(c->rope_base == 10000.0f && fabsf(c->rms_eps - 1e-5f) < 1e-12f && !c->tied_output);
    aq_model_free(m);
}

static void test_greedy_matches_reference_exactly(void) {
    size_t n;
    char *want = (char *)read_file(shared_path("models/stories260K.greedy256.txt"), &n);
    aq_model *m = load_model(stories());
    char *got;
    if (!m || !want) { CHECK(0); free(want); aq_model_free(m); return; }
    got = greedy_text(m, 2, "", 256);
    /* the reference ends its output with a newline */
    CHECKF(strlen(got) + 1 == n && memcmp(got, want, n - 1) == 0, "got:\n%s", got);
    free(got);
    free(want);
    aq_model_free(m);
}

static void test_generate_cli_prints_reference(void) {
    char cmd[1024], out[256];
    size_t n1, n2;
    unsigned char *a, *b;
    snprintf(cmd, sizeof cmd, "%s/examples/generate -m %s --temp 0 -n 256 > %s 2>/dev/null", AQ_BIN_DIR, stories(),
             tmp_path("greedy.txt"));
    CHECK(run_cmd(cmd, out, sizeof out) == 0);
    a = read_file(tmp_path("greedy.txt"), &n1);
    b = read_file(shared_path("models/stories260K.greedy256.txt"), &n2);
    CHECK(a && b && n1 == n2 && memcmp(a, b, n1) == 0);
    free(a); free(b);
    /* with a prompt it continues the prompt */
    snprintf(cmd, sizeof cmd, "%s/examples/generate -m %s -p 'Lily and Tom went' --temp 0 -n 20 2>/dev/null", AQ_BIN_DIR, stories());
    CHECK(run_cmd(cmd, out, sizeof out) == 0 && strncmp(out, "Lily and Tom went", 17) == 0 && strlen(out) > 40);
}

/* Token ids of some held-out text. */
static int real_tokens(const aq_model *m, int32_t *ids, int n) {
    size_t len;
    char *text = (char *)read_file(shared_path("text/tinystories-valid.txt"), &len);
    int k = aq_tokenize(aq_model_vocab(m), text, len > 4000 ? 4000 : len, 1, ids, n);
    free(text);
    return k < n ? k : n;
}

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float d = 0;
    size_t i;
    for (i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

/* Logits after every token, from one eval_all (batched) or token by token. */
static float *logits_of(const aq_model *m, const int32_t *ids, int n, int threads, int page, int batch, int one_by_one) {
    char err[512];
    int V = aq_model_config(m)->n_vocab, i;
    float *out = (float *)malloc(sizeof(float) * (size_t)n * V);
    aq_session *s = new_session(m, threads, 0, page, batch);
    if (!s) return out;
    if (one_by_one) {
        for (i = 0; i < n; i++) CHECKF(aq_eval(s, ids + i, 1, out + (size_t)i * V, err, sizeof err) == 0, "%s", err);
    } else
        CHECKF(aq_eval_all(s, ids, n, out, err, sizeof err) == 0, "%s", err);
    aq_session_free(s);
    return out;
}

static void test_prefill_matches_decode(void) {
    aq_model *m = load_model(stories());
    int32_t ids[160];
    int n, V;
    float *batched, *decoded, *small_batches, *last;
    char err[256];
    aq_session *s;
    if (!m) return;
    n = real_tokens(m, ids, 160);
    V = aq_model_config(m)->n_vocab;
    batched = logits_of(m, ids, n, 2, 16, 256, 0);
    decoded = logits_of(m, ids, n, 2, 16, 256, 1);
    small_batches = logits_of(m, ids, n, 2, 16, 7, 0);
    CHECKF(max_abs_diff(batched, decoded, (size_t)n * V) < 1e-3f, "diff %g", max_abs_diff(batched, decoded, (size_t)n * V));
    CHECKF(max_abs_diff(batched, small_batches, (size_t)n * V) < 1e-3f, "diff %g", max_abs_diff(batched, small_batches, (size_t)n * V));
    /* aq_eval returns the last token's row of aq_eval_all (by GEMV instead of GEMM) */
    last = (float *)malloc(sizeof(float) * V);
    s = new_session(m, 2, 0, 0, 0);
    CHECK(aq_eval(s, ids, n, last, err, sizeof err) == 0 && aq_session_pos(s) == n);
    CHECK(max_abs_diff(last, batched + (size_t)(n - 1) * V, V) < 1e-4f);
    aq_session_free(s);
    free(last); free(batched); free(decoded); free(small_batches);
    aq_model_free(m);
}

static void test_results_do_not_depend_on_threads_or_pages(void) { /* bit for bit across threads */
    aq_model *m = load_model(stories());
    int32_t ids[80];
    int n, V;
    float *ref, *other;
    static const int pages[] = {1, 5, 64};
    size_t i;
    if (!m) return;
    n = real_tokens(m, ids, 80);
    V = aq_model_config(m)->n_vocab;
    ref = logits_of(m, ids, n, 1, 16, 256, 1);
    other = logits_of(m, ids, n, 3, 16, 256, 1);
    CHECK(memcmp(ref, other, sizeof(float) * n * V) == 0);
    free(other);
    for (i = 0; i < 3; i++) {
        other = logits_of(m, ids, n, 2, pages[i], 256, 1);   /* pages change only the summation order */
        CHECKF(max_abs_diff(ref, other, (size_t)n * V) < 1e-4f, "page size %d: %g", pages[i], max_abs_diff(ref, other, (size_t)n * V));
        free(other);
    }
    free(ref);
    ref = logits_of(m, ids, n, 1, 16, 256, 0);
    other = logits_of(m, ids, n, 2, 16, 256, 0);
    CHECK(memcmp(ref, other, sizeof(float) * n * V) == 0);
    free(ref); free(other);
    aq_model_free(m);
}

static void test_session_limits_and_pages(void) {
    char err[256];
    aq_model *m = load_model(stories());
    aq_session *s;
    int32_t ids[40];
    int i, used = 0;
    if (!m) return;
    s = new_session(m, 1, 32, 16, 0);
    for (i = 0; i < 40; i++) ids[i] = 100 + i;
    CHECK(aq_eval(s, ids, 20, NULL, err, sizeof err) == 0);
    for (i = 0; i < s->max_pages; i++) used += s->pages[i] != NULL;   /* layer 0 */
    CHECK(s->max_pages == 2 && used == 2);
    CHECK(aq_eval(s, ids, 13, NULL, err, sizeof err) == -1 && strstr(err, "context full"));
    CHECK(aq_session_pos(s) == 20);
    ids[0] = 512;
    CHECK(aq_eval(s, ids, 1, NULL, err, sizeof err) == -1 && strstr(err, "512"));
    ids[0] = 100;
    CHECK(aq_eval(s, ids, 0, NULL, err, sizeof err) == -1);
    aq_session_reset(s);
    CHECK(aq_session_pos(s) == 0 && aq_eval(s, ids, 32, NULL, err, sizeof err) == 0);
    aq_session_free(s);
    {
        aq_session_params p = aq_session_default_params();
        p.n_threads = -1;
        CHECK(aq_session_new(m, &p, err, sizeof err) == NULL && strstr(err, "n_threads"));
    }
    aq_model_free(m);
}

typedef struct { const aq_model *m; char *text; } gen_thread;

static void *gen_thread_main(void *arg) {
    gen_thread *g = (gen_thread *)arg;
    g->text = greedy_text(g->m, 1, "One day", 120);
    return NULL;
}

static void test_sessions_share_a_model_across_threads(void) {
    aq_model *m = load_model(stories());
    pthread_t th[4];
    gen_thread g[4];
    char *ref;
    int i;
    if (!m) return;
    ref = greedy_text(m, 1, "One day", 120);
    for (i = 0; i < 4; i++) { g[i].m = m; g[i].text = NULL; pthread_create(&th[i], NULL, gen_thread_main, &g[i]); }
    for (i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(g[i].text && strcmp(g[i].text, ref) == 0);
        free(g[i].text);
    }
    free(ref);
    aq_model_free(m);
}

/* ---- variants of the real model, written with the GGUF writer ---- */

typedef struct {
    const char *drop_key, *drop_tensor, *retype_tensor;
    uint32_t retype;
    uint32_t matrix_type, norm_type;   /* convert every matrix / norm vector (0 = keep F32) */
    void (*edit)(aq_gguf_writer *w);
} variant;

static const char *write_variant(const char *name, const variant *v) {
    char err[256];
    aq_gguf *src = aq_gguf_open(stories(), err, sizeof err);
    aq_gguf_writer *w = aq_gguf_writer_new();
    void *owned[64];
    int n_owned = 0;
    int64_t i, r;
    const char *path = tmp_path(name);
    for (i = 0; i < aq_gguf_n_kv(src); i++) {
        const aq_gguf_kv *kv = aq_gguf_kv_at(src, i);
        if (v->drop_key && aq__str_eq(kv->key, v->drop_key)) continue;
        aq_gguf_writer_copy_kv(w, kv);
    }
    if (v->edit) v->edit(w);
    for (i = 0; i < aq_gguf_n_tensors(src); i++) {
        const aq_gguf_tensor *t = aq_gguf_tensor_at(src, i);
        uint32_t type = t->n_dims == 2 ? v->matrix_type : v->norm_type;
        const void *data = t->data;
        if (v->drop_tensor && !strcmp(t->name, v->drop_tensor)) continue;
        if (v->retype_tensor && !strcmp(t->name, v->retype_tensor)) type = v->retype;
        if (t->ne[0] % aq_type_block_size(type)) type = AQ_TYPE_F16; /* 172-wide ffn_down */
        if (type != AQ_TYPE_F32) {
            int64_t rb = aq_type_row_bytes(type, t->ne[0]);
            unsigned char *q = (unsigned char *)calloc((size_t)(rb * t->ne[1]), 1);
            if (aq_type_cpu_supported(type))
                for (r = 0; r < t->ne[1]; r++) aq_quantize_row(type, (const float *)t->data + r * t->ne[0], q + r * rb, t->ne[0]);
            owned[n_owned++] = q;
            data = q;
        }
        aq_gguf_writer_add_tensor(w, t->name, type, t->n_dims, t->ne, data);
    }
    CHECKF(aq_gguf_writer_save(w, path, err, sizeof err) == 0, "%s", err);
    aq_gguf_writer_free(w);
    for (i = 0; i < n_owned; i++) free(owned[i]);
    aq_gguf_close(src);
    return path;
}

static void test_weight_types_agree_with_f32(void) {
    static const uint32_t types[] = {AQ_TYPE_F16, AQ_TYPE_BF16, AQ_TYPE_Q8_0, AQ_TYPE_Q4_1, AQ_TYPE_Q4_0};
    static const float min_agree[] = {0.99f, 0.97f, 0.97f, 0.75f, 0.6f};
    aq_model *ref = load_model(stories());
    int32_t ids[200];
    int n, V, i, t;
    float *want;
    if (!ref) return;
    n = real_tokens(ref, ids, 200);
    V = aq_model_config(ref)->n_vocab;
    want = logits_of(ref, ids, n, 2, 16, 256, 0);
    for (t = 0; t < 5; t++) {
        variant v;
        char name[64];
        aq_model *m;
        float *got;
        int agree = 0;
        memset(&v, 0, sizeof v);
        v.matrix_type = types[t];
        v.norm_type = t == 0 ? AQ_TYPE_F16 : AQ_TYPE_F32; /* norms converted at load in one variant */
        snprintf(name, sizeof name, "stories-%s.gguf", aq_type_name(types[t]));
        m = load_model(write_variant(name, &v));
        if (!m) continue;
        got = logits_of(m, ids, n, 2, 16, 256, 0);
        for (i = 0; i < n; i++) {
            int a = 0, b = 0, j;
            for (j = 1; j < V; j++) {
                if (want[(size_t)i * V + j] > want[(size_t)i * V + a]) a = j;
                if (got[(size_t)i * V + j] > got[(size_t)i * V + b]) b = j;
            }
            agree += a == b;
        }
        CHECKF(agree >= min_agree[t] * n, "%s: top-1 agreement %d/%d", aq_type_name(types[t]), agree, n);
        printf("    %-5s top-1 agreement with f32: %d/%d\n", aq_type_name(types[t]), agree, n);
        free(got);
        aq_model_free(m);
    }
    free(want);
    aq_model_free(ref);
}

static void edit_ff100(aq_gguf_writer *w) { aq_gguf_writer_set_u32(w, "llama.feed_forward_length", 100); }
static void edit_heads7(aq_gguf_writer *w) { aq_gguf_writer_set_u32(w, "llama.attention.head_count", 7); }
static void edit_arch(aq_gguf_writer *w) { aq_gguf_writer_set_str(w, "general.architecture", "gpt2"); }
static void edit_layers6(aq_gguf_writer *w) { aq_gguf_writer_set_u32(w, "llama.block_count", 6); }
static void edit_layers_str(aq_gguf_writer *w) { aq_gguf_writer_set_str(w, "llama.block_count", "5"); }
static void edit_kv8(aq_gguf_writer *w) { aq_gguf_writer_set_u32(w, "llama.attention.head_count_kv", 8); }
static void edit_vocab600(aq_gguf_writer *w) { aq_gguf_writer_set_u32(w, "llama.vocab_size", 600); }
static void edit_tok_model(aq_gguf_writer *w) { aq_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2"); }
static void edit_ctx0(aq_gguf_writer *w) { aq_gguf_writer_set_u32(w, "llama.context_length", 0); }
static void edit_layers_u64(aq_gguf_writer *w) { aq_gguf_writer_set_u64(w, "llama.block_count", 5); }
static void edit_layers_i32(aq_gguf_writer *w) { aq_gguf_writer_set_i32(w, "llama.block_count", 5); }

static void test_loader_rejects_inconsistent_models(void) {
    static const struct { const char *drop_key, *drop_tensor, *retype_tensor; uint32_t retype; void (*edit)(aq_gguf_writer *); const char *want; } cases[] = {
        {NULL, "blk.3.ffn_up.weight", NULL, 0, NULL, "missing tensor 'blk.3.ffn_up.weight'"},
        {"llama.block_count", NULL, NULL, 0, NULL, "missing required key 'llama.block_count'"},
        {NULL, NULL, NULL, 0, edit_ff100, "'blk.0.ffn_gate.weight' has shape [64, 172], expected [64, 100]"},
        {NULL, NULL, NULL, 0, edit_heads7, "not a multiple of the head count 7"},
        {NULL, NULL, NULL, 0, edit_arch, "architecture 'gpt2' is not supported"},
        {NULL, NULL, "blk.0.attn_q.weight", AQ_TYPE_Q5_0, NULL, "'blk.0.attn_q.weight' has type Q5_0"},
        {NULL, NULL, NULL, 0, edit_layers6, "missing tensor 'blk.5.attn_norm.weight'"},
        {NULL, NULL, NULL, 0, edit_layers_str, "'llama.block_count' has type string, expected an integer"},
        {NULL, NULL, NULL, 0, edit_kv8, "'blk.0.attn_k.weight' has shape [64, 32], expected [64, 64]"},
        {"tokenizer.ggml.tokens", NULL, NULL, 0, NULL, "tokenizer.ggml.tokens"},
        {NULL, NULL, NULL, 0, edit_vocab600, "llama.vocab_size is 600 but the vocabulary has 512"},
        {NULL, NULL, NULL, 0, edit_tok_model, "tokenizer.ggml.model 'gpt2' is not supported"},
        {NULL, NULL, NULL, 0, edit_ctx0, "'llama.context_length' = 0 is out of range"},
        {NULL, "output_norm.weight", NULL, 0, NULL, "missing tensor 'output_norm.weight'"},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof *cases; i++) {
        variant v;
        char err[512] = "", name[32];
        aq_model *m;
        memset(&v, 0, sizeof v);
        v.drop_key = cases[i].drop_key; v.drop_tensor = cases[i].drop_tensor;
        v.retype_tensor = cases[i].retype_tensor; v.retype = cases[i].retype; v.edit = cases[i].edit;
        snprintf(name, sizeof name, "bad%d.gguf", (int)i);
        m = aq_model_load(write_variant(name, &v), err, sizeof err);
        CHECKF(m == NULL && strstr(err, cases[i].want) && strstr(err, name), "case %d: expected '%s', got '%s'", (int)i,
               cases[i].want, err);
        aq_model_free(m);
    }
    {   /* integer widths other than u32, and a tied output, are fine */
        variant v;
        aq_model *m;
        memset(&v, 0, sizeof v);
        v.edit = edit_layers_u64;
        m = load_model(write_variant("u64.gguf", &v));
        aq_model_free(m);
        v.edit = edit_layers_i32;
        v.drop_tensor = "output.weight";
        m = load_model(write_variant("tied.gguf", &v));
        if (m) {
            char *got = greedy_text(m, 1, "", 60), *want;
            aq_model *ref = load_model(stories());
            want = greedy_text(ref, 1, "", 60);
            CHECK(aq_model_config(m)->tied_output && strcmp(got, want) == 0); /* the stored output equals the embedding */
            free(got); free(want);
            aq_model_free(ref);
        }
        aq_model_free(m);
    }
}

/* Mutants of stories260K's metadata: bits flipped, and numbers that break the shape (0, -1, 2^31,
   ...) written over the values of the keys a model's shape comes from.  Each is refused with a
   message that names the file, or loads and then decodes (dense, or Quest in pages of 8): never
   a crash or a bad read (test-asan runs this under the sanitizers too). */
static uint64_t next_u64(uint64_t *x) {   /* xorshift64 */
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void test_loader_survives_mutated_metadata(void) {
    static const char *keys[] = {"llama.embedding_length", "llama.block_count", "llama.attention.head_count",
                                 "llama.attention.head_count_kv", "llama.feed_forward_length", "llama.rope.dimension_count",
                                 "llama.context_length", "llama.vocab_size", "tokenizer.ggml.bos_token_id",
                                 "tokenizer.ggml.eos_token_id", "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base"};
    static const uint32_t numbers[] = {0, 1, 2, 3, 7, 8, 63, 64, 65, 255, 256, 511, 512, 4096, 65536, 0x7fffffffu, 0x80000000u,
                                       0xffffffffu, 0x7f800000u /* +inf as f32 */, 0xbf800000u /* -1.0f */};
    size_t size = 0;
    unsigned char *orig = read_file(stories(), &size), *mutant = (unsigned char *)malloc(size ? size : 1);
    uint64_t rng = 0x9e3779b97f4a7c15ull, meta_end;
    int i, loaded = 0, decoded = 0, unnamed = 0;
    char err[512];
    aq_gguf *g = aq_gguf_open(stories(), err, sizeof err);
    CHECKF(orig && g, "%s", err);
    if (!orig || !g) { free(orig); free(mutant); aq_gguf_close(g); return; }
    meta_end = aq_gguf_data_offset(g);   /* the header, metadata and tensor infos */
    aq_gguf_close(g);
    for (i = 0; i < 300; i++) {
        const char *path = tmp_path("mutant.gguf");
        aq_model *m;
        FILE *f;
        memcpy(mutant, orig, size);
        if (i % 2 == 0) {   /* one to four flipped bits */
            int k, flips = 1 + (int)(next_u64(&rng) % 4);
            for (k = 0; k < flips; k++) mutant[next_u64(&rng) % meta_end] ^= (unsigned char)(1u << (next_u64(&rng) % 8));
        } else {   /* a number over a shape key's value (it follows the key and its 4-byte type) */
            const char *key = keys[next_u64(&rng) % (sizeof keys / sizeof *keys)];
            const uint32_t x = numbers[next_u64(&rng) % (sizeof numbers / sizeof *numbers)];
            size_t o, kl = strlen(key);
            for (o = 0; o + kl + 8 <= meta_end; o++)
                if (!memcmp(mutant + o, key, kl)) { memcpy(mutant + o + kl + 4, &x, 4); break; }
        }
        f = fopen(path, "wb");
        CHECK(f && fwrite(mutant, 1, size, f) == size);
        if (f) fclose(f);
        m = aq_model_load(path, err, sizeof err);
        if (!m) { unnamed += strstr(err, "mutant.gguf") == NULL; continue; }
        loaded++;
        {
            aq_session_params p = aq_session_default_params();
            aq_session *s;
            p.n_threads = 1 + i % 2; p.n_ctx = 64;
            if (i % 4 == 1) { p.quest_budget = 16; p.page_size = 8; p.quest_dense_layers = 0; }
            s = aq_session_new(m, &p, err, sizeof err);
            if (s) {
                int32_t ids[16], next = 0, k, n = aq_tokenize(aq_model_vocab(m), "Once upon a time there", 22, 1, ids, 16);
                int ok = n > 0 && n <= 16 && aq_eval(s, ids, n, NULL, err, sizeof err) == 0;
                for (k = 0; ok && k < 20; k++) ok = aq_eval_greedy(s, k ? next : ids[n - 1], &next, err, sizeof err) == 0;
                decoded += ok;
            }
            aq_session_free(s);
        }
        aq_model_free(m);
    }
    CHECKF(unnamed == 0, "%d refusals do not name the file", unnamed);
    CHECKF(loaded > 30 && loaded < 270 && decoded > 0, "%d of 300 mutants loaded, %d decoded: the mutations miss", loaded, decoded);
    free(orig);
    free(mutant);
}

static void model_tests(void) {
    RUN(test_model_config_from_metadata);
    RUN(test_greedy_matches_reference_exactly);
    RUN(test_generate_cli_prints_reference);
    RUN(test_prefill_matches_decode);
    RUN(test_results_do_not_depend_on_threads_or_pages);
    RUN(test_session_limits_and_pages);
    RUN(test_sessions_share_a_model_across_threads);
    RUN(test_weight_types_agree_with_f32);
    RUN(test_loader_rejects_inconsistent_models);
    RUN(test_loader_survives_mutated_metadata);
}
