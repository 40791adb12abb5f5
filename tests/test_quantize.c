/* aq-quantize and the int4 files it writes: types and keys in the file, loading, and AWQ beating
   round-to-nearest on held-out text (a small slice, to keep the suite fast). */

/* Perplexity of the first n tokens of the validation stories, in windows of 256. */
static double perplexity_of(const char *path, int64_t n_tokens) {
    char err[512];
    aq_model *m = aq_model_load(path, err, sizeof err);
    aq_session *s;
    aq_session_params sp = aq_session_default_params();
    int32_t *ids;
    float *logits;
    int64_t n, pos, scored = 0;
    double nll = 0;
    int V;
    if (!m) { CHECKF(0, "%s", err); return 1e9; }
    V = aq_model_config(m)->n_vocab;
    ids = tool_tokenize_documents("test", aq_model_vocab(m), shared_path("text/tinystories-valid.txt"), n_tokens, &n);
    sp.n_ctx = 256; sp.n_batch = 256; sp.n_threads = 2;
    s = aq_session_new(m, &sp, err, sizeof err);
    logits = (float *)malloc(sizeof(float) * 256 * (size_t)V);
    for (pos = 0; pos + 1 < n; pos += 256) {
        int len = n - pos < 256 ? (int)(n - pos) : 256, t, k;
        aq_session_reset(s);
        CHECK(aq_eval_all(s, ids + pos, len, logits, err, sizeof err) == 0);
        for (t = 0; t + 1 < len; t++, scored++) {
            const float *l = logits + (size_t)t * V;
            double sum = 0;
            for (k = 0; k < V; k++) sum += exp((double)l[k]);
            nll += log(sum) - l[ids[pos + t + 1]];
        }
    }
    free(logits); free(ids);
    aq_session_free(s);
    aq_model_free(m);
    return exp(nll / (double)scored);
}

static int quantize(const char *out, const char *args) {
    char cmd[2048], buf[256];
    snprintf(cmd, sizeof cmd, "%s/tools/aq-quantize %s %s %s --calib %s --calib-tokens 2048 --calib-seq 256 2>/dev/null", AQ_BIN_DIR,
             stories(), out, args, shared_path("text/tinystories-train.txt"));
    return run_cmd(cmd, buf, sizeof buf);
}

static void test_quantized_files_are_valid_gguf(void) {
    char err[512];
    aq_gguf *g;
    aq_model *m;
    int64_t v;
    aq_str str;
    CHECK(quantize(tmp_path("q32.gguf"), "--method rtn --group 32") == 0);
    g = aq_gguf_open(tmp_path("q32.gguf"), err, sizeof err);
    CHECKF(g != NULL, "%s", err);
    if (g) {
        const aq_gguf_tensor *q = aq_gguf_find_tensor(g, "blk.0.attn_q.weight"), *d = aq_gguf_find_tensor(g, "blk.0.ffn_down.weight");
        CHECK(q && q->type == AQ_TYPE_Q4_1 && q->ne[0] == 64);                       /* llama.cpp's own block */
        CHECK(d && d->type == AQ_TYPE_I8 && d->ne[0] == 6 * 20 && d->ne[1] == 64);   /* 172 wide: AQ4, padded */
        CHECK(aq_gguf_get_int(g, "aq.quantization.group_size", &v) == 1 && v == 32);
        CHECK(aq_gguf_get_str(g, "aq.quantization.method", &str) == 1 && aq__str_eq(str, "rtn"));
        CHECK(aq_gguf_find_tensor(g, "token_embd.weight")->type == AQ_TYPE_F32);   /* kept as in the input */
    }
    aq_gguf_close(g);
    m = aq_model_load(tmp_path("q32.gguf"), err, sizeof err);
    CHECKF(m && m->layers[0].w_down.type == AQ_TYPE_AQ4_G32 && m->layers[0].wq.type == AQ_TYPE_Q4_1, "%s", err);
    if (m) { char *text = greedy_text(m, 2, "Once upon a time", 30); CHECK(strlen(text) > 40); free(text); }
    aq_model_free(m);
    /* --quantize-output quantizes the embedding too; a bad --group is refused */
    CHECK(quantize(tmp_path("q128o.gguf"), "--method rtn --group 128 --quantize-output") == 0);
    m = aq_model_load(tmp_path("q128o.gguf"), err, sizeof err);
    CHECKF(m && m->tok_embd.type == AQ_TYPE_AQ4_G128 && m->output.type == AQ_TYPE_AQ4_G128, "%s", err);
    if (m) {
        /* a prompt (int8 GEMM on AVX-512 VNNI, else f32 tiles) agrees with token-by-token decode.
           Not to 1e-3 as in f32: rounding activations to int8 makes the output a step function of
           its input, so last-bit differences (FMA or not, summation order) occasionally move a
           value across a rounding boundary, and such changes travel through the layers. */
        int32_t ids[100];
        int n = real_tokens(m, ids, 100), V = aq_model_config(m)->n_vocab, i, k, agree = 0;
        float *batched = logits_of(m, ids, n, 2, 16, 256, 0), *decoded = logits_of(m, ids, n, 2, 16, 256, 1);
        double diff = 0, mag = 0;
        for (i = 0; i < n; i++) {
            int a = 0, b = 0;
            for (k = 0; k < V; k++) {
                diff += fabsf(batched[i * V + k] - decoded[i * V + k]);
                mag += fabsf(decoded[i * V + k]);
                if (batched[i * V + k] > batched[i * V + a]) a = k;
                if (decoded[i * V + k] > decoded[i * V + b]) b = k;
            }
            agree += a == b;
        }
        CHECKF(agree >= 0.9 * n && diff < 0.1 * mag, "top-1 agreement %d/%d, mean |diff| %g, mean |logit| %g", agree, n,
               diff / n / V, mag / n / V);
        free(batched); free(decoded);
    }
    aq_model_free(m);
    CHECK(quantize(tmp_path("bad.gguf"), "--group 48") == 2);
}

static void test_awq_beats_rtn(void) {
    static const int groups[] = {32, 64};
    int i;
    double fp = perplexity_of(stories(), 4096);
    for (i = 0; i < 2; i++) {
        char args[64], rtn[64], awq[64];
        double p_rtn, p_awq;
        snprintf(rtn, sizeof rtn, "rtn%d.gguf", groups[i]);
        snprintf(awq, sizeof awq, "awq%d.gguf", groups[i]);
        snprintf(args, sizeof args, "--method rtn --group %d", groups[i]);
        CHECK(quantize(tmp_path(rtn), args) == 0);
        snprintf(args, sizeof args, "--method awq --group %d", groups[i]);
        CHECK(quantize(tmp_path(awq), args) == 0);
        p_rtn = perplexity_of(tmp_path(rtn), 4096);
        p_awq = perplexity_of(tmp_path(awq), 4096);
        printf("    group %d: f32 %.4f, RTN %.4f, AWQ %.4f\n", groups[i], fp, p_rtn, p_awq);
        CHECK(fp < p_awq && p_awq < p_rtn);
    }
}

static void quantize_tests(void) {
    RUN(test_quantized_files_are_valid_gguf);
    RUN(test_awq_beats_rtn);
}
