/* Small helpers the command-line tools share: argument parsing that names the bad argument,
   and human-readable sizes.  Include after awq_quest.h. */
#ifndef AQ_TOOL_UTIL_H
#define AQ_TOOL_UTIL_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every helper is static and each program uses some of them. */
#define TOOL_FN static __attribute__((unused))

/* The value after option argv[*i], or exits with a message if there is none. */
TOOL_FN const char *tool_arg(const char *prog, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "%s: option %s needs a value (see --help)\n", prog, argv[*i]);
        exit(2);
    }
    return argv[++*i];
}

/* A number in [lo, hi], or exits with a message naming the option. */
TOOL_FN double tool_number(const char *prog, const char *opt, const char *s, double lo, double hi) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "%s: %s needs a number in [%g, %g], got '%s'\n", prog, opt, lo, hi, s);
        exit(2);
    }
    return v;
}

TOOL_FN const char *tool_bytes(double b, char *buf, size_t n) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) { b /= 1024; u++; }
    snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", b, unit[u]);
    return buf;
}

/* log(sum(exp(x))), in double. */
TOOL_FN double tool_log_sum_exp(const float *x, int n) {
    float max = x[0];
    double sum = 0.0;
    int k;
    for (k = 1; k < n; k++) max = x[k] > max ? x[k] : max;
    for (k = 0; k < n; k++) sum += exp((double)(x[k] - max));
    return (double)max + log(sum);
}

/* Reads a text file and tokenizes it as documents separated by "<|endoftext|>" lines: each
   document (trimmed of surrounding newlines) becomes BOS + its tokens, and the documents are
   concatenated.  Stops after max_tokens (0 = all).  Returns a malloc'd array and sets *n, or
   exits with a message naming the file. */
TOOL_FN int32_t *tool_tokenize_documents(const char *prog, const aq_vocab *v, const char *path, int64_t max_tokens, int64_t *n) {
    FILE *f = fopen(path, "rb");
    char *text, *doc;
    long size;
    int64_t cap = 1 << 16, len = 0;
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)cap);
    if (!f) { fprintf(stderr, "%s: cannot open %s\n", prog, path); exit(1); }
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = (char *)malloc((size_t)size + 1);
    if (!text || !ids || fread(text, 1, (size_t)size, f) != (size_t)size) { fprintf(stderr, "%s: cannot read %s\n", prog, path); exit(1); }
    fclose(f);
    text[size] = 0;
    for (doc = text; *doc && (max_tokens == 0 || len < max_tokens);) {
        char *end = strstr(doc, "<|endoftext|>"), *next = end ? end + 13 : doc + strlen(doc);
        int k;
        if (!end) end = doc + strlen(doc);
        while (doc < end && (*doc == '\n' || *doc == '\r')) doc++;
        while (end > doc && (end[-1] == '\n' || end[-1] == '\r')) end--;
        if (end > doc) {
            k = aq_tokenize(v, doc, (size_t)(end - doc), aq_vocab_add_bos(v), NULL, 0);
            while (len + k > cap) { cap *= 2; ids = (int32_t *)realloc(ids, sizeof(int32_t) * (size_t)cap); }
            if (!ids || k < 0) { fprintf(stderr, "%s: out of memory tokenizing %s\n", prog, path); exit(1); }
            aq_tokenize(v, doc, (size_t)(end - doc), aq_vocab_add_bos(v), ids + len, k);
            len += k;
        }
        doc = next;
    }
    free(text);
    if (max_tokens && len > max_tokens) len = max_tokens;
    *n = len;
    return ids;
}
#endif
