/* Tokenizer: llama.cpp's own test vectors for the Llama SentencePiece vocabulary, exactly; and
   round trips and byte fallback on the stories260K vocabulary. */

static aq_vocab *load_vocab(const char *rel, aq_gguf **g) {
    char err[256];
    aq_vocab *v;
    *g = aq_gguf_open(shared_path(rel), err, sizeof err);
    if (!*g) { CHECKF(0, "%s", err); return NULL; }
    v = aq_vocab_load(*g, err, sizeof err);
    CHECKF(v != NULL, "%s", err);
    return v;
}

static void test_tokenizer_llama_spm_vectors(void) {
    const char *sep = "\n__ggml_vocab_test__\n";
    size_t n_inp, n_out;
    char *inp = (char *)read_file(shared_path("models/ggml-vocab-llama-spm.gguf.inp"), &n_inp);
    char *out = (char *)read_file(shared_path("models/ggml-vocab-llama-spm.gguf.out"), &n_out);
    char *p = inp, *o = out;
    int cases = 0, bad = 0;
    aq_gguf *g;
    aq_vocab *v = load_vocab("models/ggml-vocab-llama-spm.gguf", &g);
    CHECK(inp && out && v);
    if (!inp || !out || !v) goto done;
    CHECK(aq_vocab_size(v) == 32000 && aq_vocab_bos(v) == 1 && aq_vocab_eos(v) == 2);
    for (;;) {
        char *end = strstr(p, sep), *line_end = strchr(o, '\n');
        char got[8192];
        int32_t ids[1024];
        int k, j, len = 0;
        if (!end || !line_end) break;
        *line_end = 0;
        k = aq_tokenize(v, p, (size_t)(end - p), 0, ids, 1024);
        got[0] = 0;
        for (j = 0; j < k && j < 1024; j++) len += snprintf(got + len, sizeof got - (size_t)len, " %d", ids[j]);
        if (strcmp(got, o)) {
            bad++;
            printf("    input [%.*s]\n     got:%s\n    want:%s\n", (int)(end - p), p, got, o);
        }
        cases++;
        p = end + strlen(sep);
        o = line_end + 1;
    }
    CHECKF(cases == 46 && bad == 0, "%d of %d cases differ", bad, cases);
done:
    free(inp); free(out);
    aq_vocab_free(v);
    aq_gguf_close(g);
}

static void test_tokenizer_round_trip_real_text(void) {
    size_t n, i;
    char *text = (char *)read_file(shared_path("text/tinystories-valid.txt"), &n);
    aq_gguf *g;
    aq_vocab *v = load_vocab("models/stories260K.gguf", &g);
    int32_t *ids;
    char *back;
    int k, len = 0, j;
    size_t span = 20000;
    if (!text || !v) { CHECK(0); free(text); aq_vocab_free(v); aq_gguf_close(g); return; }
    if (span > n) span = n;
    ids = (int32_t *)malloc(sizeof(int32_t) * (span + 1));
    back = (char *)malloc(span + 16);
    k = aq_tokenize(v, text, span, 1, ids, (int)span + 1);
    CHECK(k > 1 && k < (int)span / 2 && ids[0] == aq_vocab_bos(v)); /* BPE compresses real text */
    CHECK(aq_tokenize(v, text, span, 1, ids, 3) == k);           /* too small a buffer: same count */
    for (j = 1; j < k; j++) {
        char piece[64];
        int pl = aq_token_to_piece(v, ids[j], piece, sizeof piece);
        if (len + pl <= (int)span + 1) memcpy(back + len, piece, (size_t)pl);
        len += pl;
    }
    /* the text comes back with the space SentencePiece put in front */
    CHECK(len == (int)span + 1 && back[0] == ' ' && memcmp(back + 1, text, span) == 0);
    for (i = 0; i < (size_t)k; i++) CHECK(ids[i] >= 0 && ids[i] < 512);
    free(ids); free(back); free(text);
    aq_vocab_free(v);
    aq_gguf_close(g);
}

static void test_tokenizer_byte_fallback(void) {
    const char *text = "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82";  /* CJK and an emoji: not in the 512 tokens */
    aq_gguf *g;
    aq_vocab *v = load_vocab("models/stories260K.gguf", &g);
    int32_t ids[64];
    char back[128];
    int k, j, len = 0, bytes = 0;
    if (!v) return;
    k = aq_tokenize(v, text, strlen(text), 0, ids, 64);
    for (j = 0; j < k; j++) {
        bytes += aq_token_type(v, ids[j]) == AQ_TOKEN_BYTE;
        len += aq_token_to_piece(v, ids[j], back + len, (int)sizeof back - len);
    }
    CHECK(bytes == 10);
    CHECK(len == (int)strlen(text) + 1 && back[0] == ' ' && memcmp(back + 1, text, strlen(text)) == 0);
    CHECK(aq_tokenize(v, "", 0, 1, ids, 64) == 1 && ids[0] == aq_vocab_bos(v));
    CHECK(aq_tokenize(v, "", 0, 0, ids, 64) == 0);
    CHECK(aq_token_lookup(v, "<s>", 3) == 1);
    CHECK(aq_token_to_piece(v, aq_vocab_bos(v), back, 16) == 0);  /* control tokens print nothing */
    aq_vocab_free(v);
    aq_gguf_close(g);
}

static void tokenizer_tests(void) {
    RUN(test_tokenizer_llama_spm_vectors);
    RUN(test_tokenizer_round_trip_real_text);
    RUN(test_tokenizer_byte_fallback);
}
