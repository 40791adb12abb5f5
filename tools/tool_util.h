/* Small helpers the command-line tools share: argument parsing that names the bad argument,
   and human-readable sizes.  Include after awq_quest.h. */
#ifndef AQ_TOOL_UTIL_H
#define AQ_TOOL_UTIL_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The value after option argv[*i], or exits with a message if there is none. */
static const char *tool_arg(const char *prog, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "%s: option %s needs a value (see --help)\n", prog, argv[*i]);
        exit(2);
    }
    return argv[++*i];
}

/* A number in [lo, hi], or exits with a message naming the option. */
static double tool_number(const char *prog, const char *opt, const char *s, double lo, double hi) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "%s: %s needs a number in [%g, %g], got '%s'\n", prog, opt, lo, hi, s);
        exit(2);
    }
    return v;
}

static const char *tool_bytes(double b, char *buf, size_t n) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) { b /= 1024; u++; }
    snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", b, unit[u]);
    return buf;
}
#endif
