/* A minimal test harness: RUN(fn) runs one test, CHECK records a failure and carries on.
   The runner prints one line per test and ends with "N passed, N failed". */
#ifndef AQ_TEST_H
#define AQ_TEST_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef AQ_SHARED_DIR
#define AQ_SHARED_DIR "../shared"
#endif
#ifndef AQ_BIN_DIR
#define AQ_BIN_DIR "."
#endif

typedef struct {
    int passed, failed, current_failed;
    const char *filter;
    char tmpdir[64];
} test_state;

static test_state T;

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            printf("    %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);            \
            T.current_failed = 1;                                                          \
        }                                                                                  \
    } while (0)

#define CHECKF(cond, ...)                                                                  \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            printf("    %s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);            \
            printf(__VA_ARGS__);                                                           \
            printf("\n");                                                                  \
            T.current_failed = 1;                                                          \
        }                                                                                  \
    } while (0)

#define RUN(fn) run_test(#fn, fn)

/* A test that hangs (a deadlock, say) fails the run instead of stalling CI. */
static const char *running_test;
static void test_timed_out(int sig) {
    char msg[256];
    int n = snprintf(msg, sizeof msg, "FAIL %s: no result after 300 s\n%d passed, %d failed\n", running_test, T.passed, T.failed + 1);
    (void)sig;
    if (write(1, msg, (size_t)n) < 0) _exit(1);
    _exit(1);
}

static void run_test(const char *name, void (*fn)(void)) {
    double t0;
    if (T.filter && !strstr(name, T.filter)) return;
    T.current_failed = 0;
    running_test = name;
    signal(SIGALRM, test_timed_out);
    alarm(300);
    t0 = aq_time_seconds();
    fn();
    alarm(0);
    printf("%s %s (%.2f s)\n", T.current_failed ? "FAIL" : "ok  ", name, aq_time_seconds() - t0);
    fflush(stdout);
    if (T.current_failed) T.failed++;
    else T.passed++;
}

/* ../shared/<rel>, or $AQ_SHARED/<rel> */
static const char *shared_path(const char *rel) {
    static char buf[8][512];
    static int next;
    const char *root = getenv("AQ_SHARED") ? getenv("AQ_SHARED") : AQ_SHARED_DIR;
    char *b = buf[next++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", root, rel);
    return b;
}

static const char *tmp_path(const char *name) {
    static char buf[8][512];
    static int next;
    char *b = buf[next++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", T.tmpdir, name);
    return b;
}

/* Whole file in memory (caller frees); NULL if unreadable. */
static unsigned char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    unsigned char *p;
    long n;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    p = (unsigned char *)malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) { free(p); p = NULL; }
    fclose(f);
    if (p) p[n] = 0;
    *size = (size_t)n;
    return p;
}

static int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(data, 1, n, f) == n;
    if (f && fclose(f) != 0) ok = 0;
    return ok ? 0 : -1;
}

/* Runs a shell command, captures up to cap-1 bytes of its stdout; returns the exit code. */
static int run_cmd(const char *cmd, char *out, size_t cap) {
    char full[4096];
    FILE *p;
    size_t n = 0;
    int status;
    snprintf(full, sizeof full, "%s", cmd);
    p = popen(full, "r");
    if (!p) return -1;
    if (out && cap) {
        size_t k;
        while (n + 1 < cap && (k = fread(out + n, 1, cap - 1 - n, p)) > 0) n += k;
        out[n] = 0;
    }
    { char sink[4096]; while (fread(sink, 1, sizeof sink, p) > 0) {} }
    status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Deterministic pseudo-random numbers for test data. */
static uint64_t test_rng = 88172645463325252ull;
static uint64_t rnd_u64(void) {
    test_rng ^= test_rng << 13;
    test_rng ^= test_rng >> 7;
    test_rng ^= test_rng << 17;
    return test_rng;
}
static float rnd_uniform(float lo, float hi) { return lo + (hi - lo) * (float)(rnd_u64() >> 40) / 16777216.0f; }
#endif
