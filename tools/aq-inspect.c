/* aq-inspect: print what a GGUF file holds - header, metadata, tensor table and totals - in the
   spirit of llama.cpp's gguf-dump.  Nothing is loaded but the file's own tables (the reader
   validates them on open), so it also works on models the runtime cannot run. */
#define AWQ_QUEST_IMPLEMENTATION
#include "../awq_quest.h"
#include "tool_util.h"

#define MAX_STR 60 /* bytes of a string shown before it is cut with "..." */

static void usage(FILE *f) {
    fprintf(f,
            "usage: aq-inspect FILE.gguf [options]\n"
            "  --max-array N   array elements shown per metadata value (default 8)\n"
            "  --no-tensors    skip the tensor table (the totals are still printed)\n"
            "  -h, --help      this text\n");
}

/* Optionally quoted, with control bytes escaped so a hostile key cannot mess up the terminal.  Bytes >= 0x80
   pass through, since vocabularies are UTF-8 (SentencePiece's U+2581 is in most tokens). */
static void print_str(aq_str s, int quote) {
    uint64_t i, n = s.len > MAX_STR ? MAX_STR : s.len;
    while (n < s.len && n > 0 && ((unsigned char)s.ptr[n] & 0xc0) == 0x80) n--; /* whole UTF-8 chars */
    if (quote) putchar('"');
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') printf("\\n");
        else if (c == '\t') printf("\\t");
        else if (c == '\r') printf("\\r");
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c);
    }
    if (quote) putchar('"');
    if (n < s.len) printf("...");
}

/* Element i of an array value (a scalar is passed as a one-element array, see print_value). */
static void print_elem(const aq_gguf_kv *kv, uint64_t i) {
    switch (kv->elem_type) {
    case AQ_GGUF_STRING: print_str(kv->strs[i], 1); break;
    case AQ_GGUF_BOOL: printf("%s", aq_gguf_arr_int(kv, i) ? "true" : "false"); break;
    case AQ_GGUF_F32: case AQ_GGUF_F64: printf("%g", aq_gguf_arr_float(kv, i)); break;
    case AQ_GGUF_U64: { /* arr_int stops at INT64_MAX */
        uint64_t u;
        memcpy(&u, kv->data + i * 8, 8);
        printf("%llu", (unsigned long long)u);
        break;
    }
    default: printf("%lld", (long long)aq_gguf_arr_int(kv, i)); break;
    }
}

static void print_value(const aq_gguf_kv *kv, uint64_t max_array) {
    uint64_t i;
    if (kv->type != AQ_GGUF_ARRAY) {
        /* the array accessors also decode scalars when given a one-element array view */
        aq_gguf_kv one = *kv;
        one.type = AQ_GGUF_ARRAY;
        print_elem(&one, 0);
        return;
    }
    printf("[%llu x %s]", (unsigned long long)kv->count, aq_gguf_type_name(kv->elem_type));
    if (kv->elem_type == AQ_GGUF_ARRAY) {
        /* the first inner header is enough to tell what the nesting holds */
        if (kv->count > 0) {
            uint32_t et; uint64_t n;
            memcpy(&et, kv->data, 4); memcpy(&n, kv->data + 4, 8);
            printf(" of [%llu x %s], ...", (unsigned long long)n, aq_gguf_type_name(et));
        }
        return;
    }
    for (i = 0; i < kv->count && i < max_array; i++) {
        printf(i ? ", " : " ");
        print_elem(kv, i);
    }
    if (kv->count > max_array) printf(max_array ? ", ..." : " ...");
}

int main(int argc, char **argv) {
    const char *path = NULL;
    uint64_t max_array = 8, type_bytes[AQ_TYPE_COUNT + 1] = {0}, total_bytes = 0; /* [AQ_TYPE_COUNT]: AQ4 or OVP */
    int64_t type_count[AQ_TYPE_COUNT + 1] = {0}, total_elems = 0, i;
    uint32_t qtype = 0;
    int show_tensors = 1, t, ai;
    char err[512], b1[32];
    aq_gguf *g;

    for (ai = 1; ai < argc; ai++) {
        const char *a = argv[ai];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--max-array")) {
            const char *v = tool_arg("aq-inspect", argc, argv, &ai);
            max_array = (uint64_t)tool_number("aq-inspect", a, v, 0, 1e9);
        } else if (!strcmp(a, "--no-tensors")) show_tensors = 0;
        else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "aq-inspect: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (path) {
            fprintf(stderr, "aq-inspect: one file at a time ('%s' and '%s')\n", path, a);
            return 2;
        } else path = a;
    }
    if (!path) { fprintf(stderr, "aq-inspect: no file given\n"); usage(stderr); return 2; }

    g = aq_gguf_open(path, err, sizeof err);
    if (!g) { fprintf(stderr, "aq-inspect: %s\n", err); return 1; }

    printf("file:        %s\n", aq_gguf_path(g));
    printf("version:     GGUF v%u\n", aq_gguf_version(g));
    printf("file size:   %llu bytes (%s)\n", (unsigned long long)aq_gguf_file_size(g),
           tool_bytes((double)aq_gguf_file_size(g), b1, sizeof b1));
    printf("alignment:   %llu\n", (unsigned long long)aq_gguf_alignment(g));
    printf("data offset: %llu\n", (unsigned long long)aq_gguf_data_offset(g));
    printf("metadata:    %lld keys\n", (long long)aq_gguf_n_kv(g));
    printf("tensors:     %lld\n", (long long)aq_gguf_n_tensors(g));

    printf("\n%5s  %-42s %-7s %s\n", "#", "key", "type", "value");
    for (i = 0; i < aq_gguf_n_kv(g); i++) {
        const aq_gguf_kv *kv = aq_gguf_kv_at(g, i);
        printf("%5lld  ", (long long)i);
        print_str(kv->key, 0);
        printf("%*s %-7s ", kv->key.len < 42 ? (int)(42 - kv->key.len) : 0, "", aq_gguf_type_name(kv->type));
        print_value(kv, max_array);
        putchar('\n');
    }

    {   /* AQ4 (int4) and OVP (OliVe) matrices are stored as I8 bytes, described by aq.quantization.* keys */
        aq_str format;
        int64_t group;
        if (aq_gguf_get_str(g, "aq.quantization.format", &format) == 1 && format.len == 3 &&
            aq_gguf_get_int(g, "aq.quantization.group_size", &group) == 1)
            qtype = !memcmp(format.ptr, "aq4", 3) ? aq_type_aq4(group) : !memcmp(format.ptr, "ovp", 3) ? aq_type_ovp(group) : 0;
    }
    if (show_tensors) printf("\n%5s  %-32s %-8s %-24s %14s %14s\n", "#", "tensor", "type", "shape", "file offset", "bytes");
    for (i = 0; i < aq_gguf_n_tensors(g); i++) {
        const aq_gguf_tensor *te = aq_gguf_tensor_at(g, i);
        char shape[96];
        int len = 0;
        uint32_t d;
        for (d = 0; d < te->n_dims; d++)
            len += snprintf(shape + len, sizeof shape - (size_t)len, d ? " x %lld" : "%lld", (long long)te->ne[d]);
        int is_q = qtype && te->type == AQ_TYPE_I8 && te->n_dims == 2 && te->ne[0] % aq_type_block_bytes(qtype) == 0;
        if (show_tensors)
            printf("%5lld  %-32s %-8s %-24s %14llu %14llu\n", (long long)i, te->name, is_q ? aq_type_name(qtype) : aq_type_name(te->type),
                   shape, (unsigned long long)(aq_gguf_data_offset(g) + te->offset), (unsigned long long)te->nbytes);
        /* the reader only accepts known types, so te->type indexes the tables */
        type_count[is_q ? AQ_TYPE_COUNT : te->type]++;
        type_bytes[is_q ? AQ_TYPE_COUNT : te->type] += te->nbytes;
        total_bytes += te->nbytes;
        /* an AQ4 or OVP row of ne[0] bytes holds ne[0] / block_bytes groups (the last padded) */
        total_elems += is_q ? te->ne[0] / aq_type_block_bytes(qtype) * aq_type_block_size(qtype) * te->ne[1] : aq_tensor_n_elements(te);
    }

    printf("\ntotals: %lld tensors, %lld elements, %llu bytes (%s)\n", (long long)aq_gguf_n_tensors(g),
           (long long)total_elems, (unsigned long long)total_bytes, tool_bytes((double)total_bytes, b1, sizeof b1));
    for (t = 0; t <= AQ_TYPE_COUNT; t++)
        if (type_count[t])
            printf("  %-8s %5lld tensors %14llu bytes (%s)\n", t == AQ_TYPE_COUNT ? aq_type_name(qtype) : aq_type_name((uint32_t)t), (long long)type_count[t],
                   (unsigned long long)type_bytes[t], tool_bytes((double)type_bytes[t], b1, sizeof b1));
    if (total_elems > 0) printf("  average %.3f bits per weight\n", 8.0 * (double)total_bytes / (double)total_elems);
    aq_gguf_close(g);
    return 0;
}
