/* core.h: status codes, error messages, allocation, logging, timing.
 *
 * Every fallible library function returns spud_status. On failure it has
 * recorded a one-line, human-readable message (thread-local) that the caller
 * reads with spud_last_error(). Library code never exits.
 */
#ifndef SPUD_CORE_H
#define SPUD_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spud.h" /* spud_status */

/* Record a formatted error message and return `st` (so: `return spud_errorf(...)`). */
spud_status spud_errorf(spud_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefix the current error message with "prefix: " (adds context on the way up). */
spud_status spud_error_wrap(spud_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* All library allocation goes through these. A test can make the Nth call
 * (counting from now) and every later one fail with spud_alloc_fail_after(n);
 * n < 0 turns failure injection off. */
void *spud_malloc(size_t n);
void *spud_calloc(size_t count, size_t size);
void *spud_realloc(void *p, size_t n);
void *spud_aligned_alloc(size_t align, size_t n); /* free with spud_free */
void spud_free(void *p);
char *spud_strndup(const char *s, size_t n);
void spud_alloc_fail_after(long n);

/* Overflow-checked size arithmetic: return false on overflow. */
static inline bool spud_mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool spud_add_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* Monotonic wall time in seconds. */
double spud_time_s(void);

/* Logging to stderr; level from SPUD_LOG (error, warn, info, debug), default warn. */
enum { SPUD_LOG_ERROR = 0, SPUD_LOG_WARN, SPUD_LOG_INFO, SPUD_LOG_DEBUG };
void spud_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Read a whole file into memory (NUL-terminated; *len excludes the NUL). */
spud_status spud_read_file(const char *path, char **data, size_t *len);

#endif
