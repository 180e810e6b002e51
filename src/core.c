/* core.c: errors, allocation with failure injection, logging, timing, file reading. */
#include "core.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char err_buf[1024] = "no error";

spud_status spud_errorf(spud_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return st;
}

spud_status spud_error_wrap(spud_status st, const char *fmt, ...) {
    char msg[sizeof err_buf];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
    /* msg = prefix + ": " + old message, cut to fit */
    size_t old_len = strlen(err_buf);
    if (len + 2 < sizeof msg) {
        memcpy(msg + len, ": ", 2);
        len += 2;
        size_t k = old_len < sizeof msg - 1 - len ? old_len : sizeof msg - 1 - len;
        memcpy(msg + len, err_buf, k);
        len += k;
    }
    msg[len] = '\0';
    memcpy(err_buf, msg, len + 1);
    return st;
}

const char *spud_last_error(void) { return err_buf; }

const char *spud_status_name(spud_status st) {
    switch (st) {
    case SPUD_OK: return "ok";
    case SPUD_ERR_IO: return "i/o error";
    case SPUD_ERR_FORMAT: return "format error";
    case SPUD_ERR_NOMEM: return "out of memory";
    case SPUD_ERR_INVALID: return "invalid argument";
    case SPUD_ERR_UNSUPPORTED: return "unsupported";
    case SPUD_ERR_NOT_FOUND: return "not found";
    case SPUD_ERR_RANGE: return "out of range";
    }
    return "unknown status";
}

/* Failure injection: number of allocations left before they start failing (-1: never). */
static atomic_long alloc_budget = -1;

void spud_alloc_fail_after(long n) { atomic_store(&alloc_budget, n < 0 ? -1 : n); }

static bool alloc_allowed(void) {
    long b = atomic_load(&alloc_budget);
    while (b >= 0) {
        if (b == 0) return false;
        if (atomic_compare_exchange_weak(&alloc_budget, &b, b - 1)) return true;
    }
    return true;
}

void *spud_malloc(size_t n) {
    if (!alloc_allowed()) return NULL;
    return malloc(n ? n : 1);
}

void *spud_calloc(size_t count, size_t size) {
    if (!alloc_allowed()) return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}

void *spud_realloc(void *p, size_t n) {
    if (!alloc_allowed()) return NULL;
    return realloc(p, n ? n : 1);
}

void *spud_aligned_alloc(size_t align, size_t n) {
    void *p = NULL;
    if (!alloc_allowed()) return NULL;
    if (posix_memalign(&p, align, n ? n : 1) != 0) return NULL;
    return p;
}

void spud_free(void *p) { free(p); }

char *spud_strndup(const char *s, size_t n) {
    char *d = spud_malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

double spud_time_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int log_level(void) {
    static int level = -1;
    if (level < 0) {
        const char *e = getenv("SPUD_LOG");
        level = SPUD_LOG_WARN;
        if (e) {
            if (!strcmp(e, "error")) level = SPUD_LOG_ERROR;
            else if (!strcmp(e, "info")) level = SPUD_LOG_INFO;
            else if (!strcmp(e, "debug")) level = SPUD_LOG_DEBUG;
        }
    }
    return level;
}

void spud_log(int level, const char *fmt, ...) {
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (level > log_level()) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "spud: %s: ", names[level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

spud_status spud_read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;
    if (!f) return spud_errorf(SPUD_ERR_IO, "%s: %s", path, strerror(errno));
    for (;;) {
        if (n + 4096 + 1 > cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            char *nb = spud_realloc(buf, ncap);
            if (!nb) {
                spud_free(buf);
                fclose(f);
                return spud_errorf(SPUD_ERR_NOMEM, "%s: out of memory reading file", path);
            }
            buf = nb;
            cap = ncap;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    if (ferror(f)) {
        spud_free(buf);
        fclose(f);
        return spud_errorf(SPUD_ERR_IO, "%s: read error", path);
    }
    fclose(f);
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return SPUD_OK;
}
