/* aq-synth: write a Llama GGUF with random weights and a real vocabulary, for speed benchmarks.
   The shapes are those of real models, so timings mean something, but the weights are noise, so
   the text it generates is not.  Tensors are generated and streamed a few MB at a time: the file
   can be far larger than memory (Llama-3-8B in f32 is 32 GB).  The project's 4-bit types (AQ4,
   OVP) are written as codes and scales drawn directly, without quantizing floats, so a 7B model
   takes seconds; their embedding and output matrices are F16, as aq-quantize leaves them. */
#define AWQ_QUEST_IMPLEMENTATION
#include "../awq_quest.h"
#include "tool_util.h"

#ifndef AQ_SHARED_DIR
#define AQ_SHARED_DIR "../shared"
#endif
#define DEFAULT_VOCAB AQ_SHARED_DIR "/models/ggml-vocab-llama-spm.gguf"
#define CHUNK_BYTES (4 << 20) /* floats generated per append */

typedef struct {
    const char *name;
    int dim, layers, heads, kv_heads, ff, ctx, vocab;
    double rope_base;
} shape;

static const shape presets[] = {
    {"tinyllama", 2048, 22, 32, 4, 5632, 2048, 32000, 10000},
    {"llama2-7b", 4096, 32, 32, 32, 11008, 4096, 32000, 10000},
    {"llama3-8b", 4096, 32, 32, 8, 14336, 8192, 128256, 500000},
};

static const struct { const char *name; uint32_t type; } types[] = {
    {"f32", AQ_TYPE_F32}, {"f16", AQ_TYPE_F16}, {"bf16", AQ_TYPE_BF16},
    {"q8_0", AQ_TYPE_Q8_0}, {"q4_0", AQ_TYPE_Q4_0}, {"q4_1", AQ_TYPE_Q4_1},
    {"aq4_g32", AQ_TYPE_AQ4_G32}, {"aq4_g64", AQ_TYPE_AQ4_G64}, {"aq4_g128", AQ_TYPE_AQ4_G128},
    {"ovp_g32", AQ_TYPE_OVP_G32}, {"ovp_g64", AQ_TYPE_OVP_G64}, {"ovp_g128", AQ_TYPE_OVP_G128},
};

/* One tensor to write: cols is ne[0] (the input width), rows is ne[1]; rows = 0 marks a norm
   vector (1-D, all ones). */
typedef struct {
    char name[AQ_MAX_NAME + 1];
    uint32_t type;
    int64_t cols, rows;
    int layer; /* -1 outside the blocks */
} tensor_spec;

static void usage(FILE *f) {
    fprintf(f,
            "usage: aq-synth -o OUT.gguf [options]\n"
            "  -o FILE            output file\n"
            "  --preset NAME      tinyllama | llama2-7b | llama3-8b (real shapes)\n"
            "  --dim N --layers N --heads N --ff N   shape (all required without --preset;\n"
            "                     with one, they override its values)\n"
            "  --kv-heads N       key/value heads (default: --heads)\n"
            "  --ctx N            trained context length (default 2048)\n"
            "  --rope-base X      RoPE frequency base (default 10000)\n"
            "  --vocab-size N     vocabulary size; beyond the vocab file's, <unused_N> tokens are added\n"
            "  --type T           matrix type (default f16): f32 f16 bf16 q8_0 q4_0 q4_1, or the project's\n"
            "                     aq4_g32 aq4_g64 aq4_g128 (int4) ovp_g32 ovp_g64 ovp_g128 (OliVe pairs, int4\n"
            "                     normals, 1 pair in 64 an outlier), written as random codes and scales;\n"
            "                     with these, token_embd and output are f16\n"
            "  --vocab FILE       GGUF to take the tokenizer from (default %s)\n"
            "  --seed N           random seed (default 1); same arguments, same bytes\n"
            "  -h, --help         this text\n",
            DEFAULT_VOCAB);
}

static void die_usage(const char *msg, const char *arg) {
    fprintf(stderr, "aq-synth: %s%s\n", msg, arg ? arg : "");
    exit(2);
}

/* splitmix64: tiny, fast and the same on every platform, so files are reproducible */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *rng) { return (double)(rng_next(rng) >> 11) / 9007199254740992.0; }

#define OVP_OUTLIER_PAIRS 64   /* one pair in this many holds an outlier */

/* One row of an AQ4 or OVP matrix drawn directly: random codes, and per group a scale with
   E[w^2] = 1 / cols (as the float matrices below), jittered by +-25%.  AQ4 codes are uniform
   in 0..15 around an offset of -7.5 d.  OVP pairs are valid ones only: with int4 normals, two
   normals of uniform field and sign, or (one pair in OVP_OUTLIER_PAIRS) an outlier beside its
   victim; the offset is a small random fraction of d. */
static void draw_group_row(uint32_t type, int64_t cols, uint8_t *b, uint64_t *rng) {
    int64_t G = aq_type_group(type), g, j;
    int ovp = aq__ovp_group(type) != 0;
    double ev2;
    if (ovp) { /* E[v^2] of the pairs drawn below: normals uniform over fields 0..7, outliers over 1..7 */
        double n2 = 0, o2 = 0;
        int f;
        for (f = 0; f < 8; f++) n2 += aq__ovp_mag[0][0][f] * aq__ovp_mag[0][0][f] / 8.0;
        for (f = 1; f < 8; f++) o2 += aq__ovp_mag[0][1][f] * aq__ovp_mag[0][1][f] / 7.0;
        ev2 = (1.0 - 1.0 / OVP_OUTLIER_PAIRS) * n2 + o2 / (2.0 * OVP_OUTLIER_PAIRS);
    } else ev2 = (16.0 * 16.0 - 1.0) / 12.0; /* (q - 7.5)^2 for q uniform in 0..15 */
    for (g = 0; g * G < cols; g++, b += 4 + G / 2) {
        float d = (float)(sqrt(1.0 / (ev2 * (double)cols)) * (0.75 + 0.5 * rng_uniform(rng)));
        uint16_t dh = aq_f32_to_f16(d), mh = aq_f32_to_f16(ovp ? (float)(0.1 * d * (rng_uniform(rng) - 0.5)) : -7.5f * d);
        memcpy(b, &dh, 2);
        memcpy(b + 2, &mh, 2);
        for (j = 0; j < G / 2; j++) {
            uint64_t r = rng_next(rng);
            if (!ovp) b[4 + j] = (uint8_t)r;
            else if (r % OVP_OUTLIER_PAIRS == 0) { /* outlier (field 1..7, random sign) and its victim 1000b */
                unsigned code = (unsigned)(1 + (r >> 8) % 7) | (unsigned)((r >> 16) & 8);
                b[4 + j] = (uint8_t)((r >> 20) & 1 ? code | 8u << 4 : 8u | code << 4);
            } else { /* two normals; a zero field is always 0000b (1000b is the marker) */
                unsigned lo = (unsigned)(r >> 8) & 15, hi = (unsigned)(r >> 12) & 15;
                if ((lo & 7) == 0) lo = 0;
                if ((hi & 7) == 0) hi = 0;
                b[4 + j] = (uint8_t)(lo | hi << 4);
            }
        }
        for (j = 0; j < G / 2; j++) { /* padding past cols: code 0, or the victim of the last value */
            int64_t at = g * G + 2 * j;
            if (at >= cols) b[4 + j] = 0;
            else if (at + 1 == cols && (b[4 + j] >> 4) != 8) b[4 + j] = (b[4 + j] & 15) == 8 ? 0 : b[4 + j] & 15;
        }
    }
}

/* Generates a tensor a chunk of rows at a time and appends it.  Matrices are uniform in [-a, a]
   with a = sqrt(3 / cols), variance 1 / cols, so a matrix-vector product keeps unit variance and
   activations neither vanish nor blow up; norm vectors are all 1. */
static int write_tensor(aq_gguf_writer *w, const tensor_spec *t, uint64_t *rng, char *err, size_t err_len) {
    int64_t rows = t->rows ? t->rows : 1;
    int64_t chunk = CHUNK_BYTES / (t->cols * 4) > 0 ? CHUNK_BYTES / (t->cols * 4) : 1;
    size_t row_bytes = (size_t)aq_type_row_bytes(t->type, t->cols);
    float a = sqrtf(3.0f / (float)t->cols);
    float *x = (float *)malloc((size_t)(chunk * t->cols) * sizeof *x);
    uint8_t *q = (uint8_t *)malloc((size_t)chunk * row_bytes);
    int64_t r0, r, i;
    int rc = 0;
    if (!x || !q) { snprintf(err, err_len, "out of memory"); rc = -1; }
    for (r0 = 0; !rc && r0 < rows; r0 += chunk) {
        int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
        if (aq_type_group(t->type)) {
            for (r = 0; r < n; r++) draw_group_row(t->type, t->cols, q + (size_t)r * row_bytes, rng);
            rc = aq_gguf_writer_append(w, q, (size_t)n * row_bytes, err, err_len);
            continue;
        }
        for (i = 0; i < n * t->cols; i++)
            x[i] = t->rows == 0 ? 1.0f : a * ((float)(rng_next(rng) >> 40) * (2.0f / 16777216.0f) - 1.0f);
        for (r = 0; r < n && !rc; r++)
            if (aq_quantize_row(t->type, x + r * t->cols, q + (size_t)r * row_bytes, t->cols)) {
                snprintf(err, err_len, "%s: cannot convert to %s", t->name, aq_type_name(t->type));
                rc = -1;
            }
        if (!rc) rc = aq_gguf_writer_append(w, q, (size_t)n * row_bytes, err, err_len);
    }
    free(x);
    free(q);
    return rc;
}

/* Copies the tokenizer, padding tokens/scores/types with <unused_N> up to n_vocab. */
static int copy_vocab(aq_gguf_writer *w, const aq_gguf *v, int64_t n_vocab) {
    static const char *ids[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                                "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"};
    const aq_gguf_kv *model = aq_gguf_find_kv(v, "tokenizer.ggml.model");
    const aq_gguf_kv *tokens = aq_gguf_find_kv(v, "tokenizer.ggml.tokens");
    const aq_gguf_kv *scores = aq_gguf_find_kv(v, "tokenizer.ggml.scores");
    const aq_gguf_kv *ttype = aq_gguf_find_kv(v, "tokenizer.ggml.token_type");
    int64_t n_file = (int64_t)tokens->count, i;
    int rc = 0;
    size_t k;

    if (model) rc |= aq_gguf_writer_copy_kv(w, model);
    if (n_vocab == n_file) {
        rc |= aq_gguf_writer_copy_kv(w, tokens);
        if (scores) rc |= aq_gguf_writer_copy_kv(w, scores);
        if (ttype) rc |= aq_gguf_writer_copy_kv(w, ttype);
    } else {
        aq_str *strs = (aq_str *)malloc((size_t)n_vocab * sizeof *strs);
        char *names = (char *)malloc((size_t)(n_vocab - n_file) * 24);
        float *sc = (float *)malloc((size_t)n_vocab * sizeof *sc);
        int32_t *ty = (int32_t *)malloc((size_t)n_vocab * sizeof *ty);
        if (!strs || !names || !sc || !ty) rc = -1;
        for (i = 0; !rc && i < n_vocab; i++) {
            if (i < n_file) {
                strs[i] = tokens->strs[i];
                sc[i] = scores ? (float)aq_gguf_arr_float(scores, (uint64_t)i) : 0.0f;
                ty[i] = ttype ? (int32_t)aq_gguf_arr_int(ttype, (uint64_t)i) : AQ_TOKEN_NORMAL;
            } else {
                char *s = names + (i - n_file) * 24;
                strs[i].ptr = s;
                strs[i].len = (uint64_t)snprintf(s, 24, "<unused_%lld>", (long long)(i - n_file));
                sc[i] = 0.0f;
                ty[i] = AQ_TOKEN_UNUSED;
            }
        }
        if (!rc) {
            rc |= aq_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", strs, (uint64_t)n_vocab);
            rc |= aq_gguf_writer_set_arr(w, "tokenizer.ggml.scores", AQ_GGUF_F32, sc, (uint64_t)n_vocab);
            rc |= aq_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", AQ_GGUF_I32, ty, (uint64_t)n_vocab);
        }
        free(strs); free(names); free(sc); free(ty);
    }
    for (k = 0; k < sizeof ids / sizeof ids[0]; k++) {
        const aq_gguf_kv *kv = aq_gguf_find_kv(v, ids[k]);
        if (kv) rc |= aq_gguf_writer_copy_kv(w, kv);
    }
    return rc ? -1 : 0;
}

static tensor_spec spec(const char *name, uint32_t type, int64_t cols, int64_t rows, int layer) {
    tensor_spec t;
    snprintf(t.name, sizeof t.name, "%s", name);
    t.type = type; t.cols = cols; t.rows = rows; t.layer = layer;
    return t;
}

int main(int argc, char **argv) {
    const char *out = NULL, *vocab_path = DEFAULT_VOCAB, *preset = NULL, *type_name = "f16";
    shape s = {NULL, -1, -1, -1, -1, -1, -1, -1, -1};
    uint32_t type = AQ_TYPE_F16;
    uint64_t rng = 1, written = 0;
    int64_t n_file_vocab, params = 0;
    int i, hd, n_t = 0, found, started = 0;
    char err[512], name[128], b1[32];
    double t0 = aq_time_seconds();
    const aq_gguf_kv *tokens;
    tensor_spec *ts;
    aq_gguf_writer *w;
    aq_gguf *vg;
    struct stat st;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-o")) out = tool_arg("aq-synth", argc, argv, &i);
        else if (!strcmp(a, "--preset")) preset = tool_arg("aq-synth", argc, argv, &i);
        else if (!strcmp(a, "--type")) type_name = tool_arg("aq-synth", argc, argv, &i);
        else if (!strcmp(a, "--vocab")) vocab_path = tool_arg("aq-synth", argc, argv, &i);
        else if (!strcmp(a, "--dim")) s.dim = (int)tool_number("aq-synth", a, tool_arg("aq-synth", argc, argv, &i), 1, 1 << 20);
        else if (!strcmp(a, "--layers")) s.layers = (int)tool_number("aq-synth", a, tool_arg("aq-synth", argc, argv, &i), 1, 4096);
        else if (!strcmp(a, "--heads")) s.heads = (int)tool_number("aq-synth", a, tool_arg("aq-synth", argc, argv, &i), 1, 1 << 16);
        else if (!strcmp(a, "--kv-heads")) s.kv_heads = (int)tool_number("aq-synth", a, tool_arg("aq-synth", argc, argv, &i), 1, 1 << 16);
        else if (!strcmp(a, "--ff")) s.ff = (int)tool_number("aq-synth", a, tool_arg("aq-synth", argc, argv, &i), 1, 1 << 22);
        else if (!strcmp(a, "--ctx")) s.ctx = (int)tool_number("aq-synth", a, tool_arg("aq-synth", argc, argv, &i), 1, 1 << 24);
        else if (!strcmp(a, "--vocab-size")) s.vocab = (int)tool_number("aq-synth", a, tool_arg("aq-synth", argc, argv, &i), 1, 1 << 24);
        else if (!strcmp(a, "--rope-base")) s.rope_base = tool_number("aq-synth", a, tool_arg("aq-synth", argc, argv, &i), 1, 1e12);
        else if (!strcmp(a, "--seed")) rng = (uint64_t)tool_number("aq-synth", a, tool_arg("aq-synth", argc, argv, &i), 0, 9007199254740992.0);
        else { fprintf(stderr, "aq-synth: unknown argument '%s'\n", a); usage(stderr); return 2; }
    }
    if (!out) die_usage("no output file given (-o FILE)", NULL);

    /* explicit options win over the preset's values */
    if (preset) {
        const shape *p = NULL;
        for (i = 0; i < (int)(sizeof presets / sizeof presets[0]); i++)
            if (!strcmp(preset, presets[i].name)) p = &presets[i];
        if (!p) die_usage("unknown preset (tinyllama, llama2-7b, llama3-8b): ", preset);
        if (s.dim < 0) s.dim = p->dim;
        if (s.layers < 0) s.layers = p->layers;
        if (s.heads < 0) s.heads = p->heads;
        if (s.kv_heads < 0) s.kv_heads = p->kv_heads;
        if (s.ff < 0) s.ff = p->ff;
        if (s.ctx < 0) s.ctx = p->ctx;
        if (s.vocab < 0) s.vocab = p->vocab;
        if (s.rope_base < 0) s.rope_base = p->rope_base;
    }
    if (s.dim < 0) die_usage("--dim is required without --preset", NULL);
    if (s.layers < 0) die_usage("--layers is required without --preset", NULL);
    if (s.heads < 0) die_usage("--heads is required without --preset", NULL);
    if (s.ff < 0) die_usage("--ff is required without --preset", NULL);
    if (s.kv_heads < 0) s.kv_heads = s.heads;
    if (s.ctx < 0) s.ctx = 2048;
    if (s.rope_base < 0) s.rope_base = 10000;

    for (i = 0, found = 0; i < (int)(sizeof types / sizeof types[0]); i++)
        if (!strcmp(type_name, types[i].name)) { type = types[i].type; found = 1; }
    if (!found) die_usage("unknown --type (f32, f16, bf16, q8_0, q4_0, q4_1, aq4_g32, aq4_g64, aq4_g128, ovp_g32, ovp_g64, ovp_g128): ", type_name);
    if (s.dim % s.heads) die_usage("--dim must be a multiple of --heads", NULL);
    if (s.heads % s.kv_heads) die_usage("--heads must be a multiple of --kv-heads", NULL);
    hd = s.dim / s.heads;
    if (hd % 2) die_usage("the head size (dim / heads) must be even, for RoPE", NULL);
    if (!aq_type_group(type) && aq_type_block_size(type) > 1 && (s.dim % aq_type_block_size(type) || s.ff % aq_type_block_size(type)))
        die_usage("--dim and --ff must be multiples of 32 for block types: ", type_name);

    vg = aq_gguf_open(vocab_path, err, sizeof err);
    if (!vg) { fprintf(stderr, "aq-synth: %s\n", err); return 1; }
    tokens = aq_gguf_find_kv(vg, "tokenizer.ggml.tokens");
    if (!tokens || tokens->type != AQ_GGUF_ARRAY || tokens->elem_type != AQ_GGUF_STRING) {
        fprintf(stderr, "aq-synth: %s: no tokenizer.ggml.tokens string array\n", vocab_path);
        return 1;
    }
    n_file_vocab = (int64_t)tokens->count;
    if (s.vocab < 0) s.vocab = (int)n_file_vocab;
    if (s.vocab < n_file_vocab) {
        fprintf(stderr, "aq-synth: --vocab-size %d is smaller than the %lld tokens of %s (cannot drop tokens)\n",
                s.vocab, (long long)n_file_vocab, vocab_path);
        return 2;
    }

    w = aq_gguf_writer_new();
    if (!w) { fprintf(stderr, "aq-synth: out of memory\n"); return 1; }
    snprintf(name, sizeof name, "synthetic %s %s", preset ? preset : "custom", type_name);
    if (aq_gguf_writer_set_str(w, "general.architecture", "llama") || aq_gguf_writer_set_str(w, "general.name", name) ||
        aq_gguf_writer_set_u32(w, "llama.context_length", (uint32_t)s.ctx) ||
        aq_gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)s.dim) ||
        aq_gguf_writer_set_u32(w, "llama.block_count", (uint32_t)s.layers) ||
        aq_gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)s.ff) ||
        aq_gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)s.heads) ||
        aq_gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)s.kv_heads) ||
        aq_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f) ||
        aq_gguf_writer_set_f32(w, "llama.rope.freq_base", (float)s.rope_base) ||
        aq_gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)hd) ||
        aq_gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)s.vocab) ||
        aq_gguf_writer_set_bool(w, "aq.synthetic", 1) || copy_vocab(w, vg, s.vocab) ||
        (aq_type_group(type) &&
         (aq_gguf_writer_set_str(w, "aq.quantization.format", aq_type_ovp(aq_type_group(type)) == type ? "ovp" : "aq4") ||
          aq_gguf_writer_set_u32(w, "aq.quantization.group_size", (uint32_t)aq_type_group(type)) ||
          aq_gguf_writer_set_str(w, "aq.quantization.method", "synthetic") ||
          aq_gguf_writer_set_u32(w, "aq.quantization.version", 1)))) {
        fprintf(stderr, "aq-synth: cannot build the metadata (out of memory?)\n");
        return 1;
    }

    /* the whole tensor table is declared first: the header holds every offset */
    ts = (tensor_spec *)calloc((size_t)(3 + 9 * s.layers), sizeof *ts);
    if (!ts) { fprintf(stderr, "aq-synth: out of memory\n"); return 1; }
    ts[n_t++] = spec("token_embd.weight", aq_type_group(type) ? AQ_TYPE_F16 : type, s.dim, s.vocab, -1);
    for (i = 0; i < s.layers; i++) {
        static const char *part[] = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                     "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"};
        int64_t cols[] = {s.dim, s.dim, s.dim, s.dim, (int64_t)s.heads * hd, s.dim, s.dim, s.dim, s.ff};
        int64_t rows[] = {0, (int64_t)s.heads * hd, (int64_t)s.kv_heads * hd, (int64_t)s.kv_heads * hd, s.dim,
                          0, s.ff, s.ff, s.dim};
        int p;
        for (p = 0; p < 9; p++) {
            char nm[AQ_MAX_NAME + 1];
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", i, part[p]);
            ts[n_t++] = spec(nm, rows[p] ? type : AQ_TYPE_F32, cols[p], rows[p], i);
        }
    }
    ts[n_t++] = spec("output_norm.weight", AQ_TYPE_F32, s.dim, 0, -1);
    ts[n_t++] = spec("output.weight", aq_type_group(type) ? AQ_TYPE_F16 : type, s.dim, s.vocab, -1);
    for (i = 0; i < n_t; i++) {
        int64_t ne[2] = {ts[i].cols, ts[i].rows};
        int grouped = aq_type_group(ts[i].type) != 0;   /* AQ4 / OVP: I8 bytes, {row bytes, rows} */
        if (grouped) ne[0] = aq_type_row_bytes(ts[i].type, ts[i].cols);
        if (aq_gguf_writer_add_tensor(w, ts[i].name, grouped ? AQ_TYPE_I8 : ts[i].type, ts[i].rows ? 2 : 1, ne, NULL) < 0) {
            fprintf(stderr, "aq-synth: cannot declare tensor %s\n", ts[i].name);
            return 1;
        }
        params += ts[i].cols * (ts[i].rows ? ts[i].rows : 1);
    }

    if (aq_gguf_writer_begin(w, out, err, sizeof err)) goto fail;
    started = 1;
    for (i = 0; i < n_t; i++) {
        if (write_tensor(w, &ts[i], &rng, err, sizeof err)) goto fail;
        written += (uint64_t)aq_type_row_bytes(ts[i].type, ts[i].cols) * (uint64_t)(ts[i].rows ? ts[i].rows : 1);
        if (ts[i].layer >= 0 && (i + 1 == n_t || ts[i + 1].layer != ts[i].layer))
            fprintf(stderr, "layer %d/%d, %.2f GiB written, %.1f s\n", ts[i].layer + 1, s.layers,
                    (double)written / (1 << 30), aq_time_seconds() - t0);
    }
    if (aq_gguf_writer_end(w, err, sizeof err)) goto fail;

    fprintf(stderr, "wrote %s: %lld parameters (%.3f B), %s, %.1f s\n", out, (long long)params, (double)params / 1e9,
            stat(out, &st) == 0 ? tool_bytes((double)st.st_size, b1, sizeof b1) : "?", aq_time_seconds() - t0);
    aq_gguf_writer_free(w);
    aq_gguf_close(vg);
    free(ts);
    return 0;
fail:
    fprintf(stderr, "aq-synth: %s\n", err);
    aq_gguf_writer_free(w); /* closes the file, so the partial output can go */
    if (started) remove(out);
    return 1;
}
