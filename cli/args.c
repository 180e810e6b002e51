/* args.c: argument helpers shared by the subcommands. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

void cli_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "spud %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

bool cli_parse_i64(const char *cmd, const char *flag, const char *text, int64_t min, int64_t max,
                   int64_t *out) {
    char *end = NULL;
    long long v;
    if (!text) {
        cli_error(cmd, "%s needs a value", flag);
        return false;
    }
    errno = 0;
    v = strtoll(text, &end, 10);
    if (errno || end == text || *end != '\0') {
        cli_error(cmd, "bad value for %s: '%s' (expected an integer)", flag, text);
        return false;
    }
    if (v < min || v > max) {
        cli_error(cmd, "bad value for %s: %lld (allowed %lld..%lld)", flag, v, (long long)min,
                  (long long)max);
        return false;
    }
    *out = v;
    return true;
}

bool cli_parse_f32(const char *cmd, const char *flag, const char *text, float *out) {
    char *end = NULL;
    double v;
    if (!text) {
        cli_error(cmd, "%s needs a value", flag);
        return false;
    }
    errno = 0;
    v = strtod(text, &end);
    if (errno || end == text || *end != '\0' || !isfinite(v)) {
        cli_error(cmd, "bad value for %s: '%s' (expected a number)", flag, text);
        return false;
    }
    *out = (float)v;
    return true;
}
