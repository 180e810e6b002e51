/* server_json.c: request validation helpers, OpenAI's error JSON, ids and
 * UTF-8 clean-up for the server. Every helper that reads a field names that
 * field in its 400, so a client learns exactly what to fix. */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "server_int.h"

bool srv_fail(srv_error *e, int status, const char *param, const char *fmt, ...) {
    va_list ap;
    e->status = status;
    e->code = NULL;
    e->type = status == 401                  ? "authentication_error"
              : status == 429                ? "rate_limit_error"
              : status >= 500                ? "server_error"
              : status == 404                ? "not_found_error"
                                             : "invalid_request_error";
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    if (status == 429) e->code = "rate_limit_exceeded";
    return false;
}

json_object *srv_error_json(const srv_error *e) {
    json_object *o = json_object_new_object(), *err = json_object_new_object();
    json_object_object_add(err, "message", json_object_new_string(e->message));
    json_object_object_add(err, "type", json_object_new_string(e->type));
    json_object_object_add(err, "param", e->param[0] ? json_object_new_string(e->param) : NULL);
    json_object_object_add(err, "code", e->code ? json_object_new_string(e->code) : NULL);
    json_object_object_add(o, "error", err);
    return o;
}

static const char *type_name(json_object *v) {
    switch (json_object_get_type(v)) {
    case json_type_null: return "null";
    case json_type_boolean: return "a boolean";
    case json_type_double:
    case json_type_int: return "a number";
    case json_type_string: return "a string";
    case json_type_array: return "an array";
    case json_type_object: return "an object";
    }
    return "?";
}

static json_object *field(json_object *o, const char *key) {
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v)) return NULL;
    return v; /* NULL for a JSON null */
}

bool srv_opt_number(json_object *o, const char *key, double lo, double hi, double *out, srv_error *e) {
    json_object *v = field(o, key);
    if (!v) return true;
    if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
        return srv_fail(e, 400, key, "'%s' must be a number, not %s", key, type_name(v));
    double d = json_object_get_double(v);
    if (!isfinite(d) || d < lo || d > hi)
        return srv_fail(e, 400, key, "'%s' must be between %g and %g (got %g)", key, lo, hi, d);
    *out = d;
    return true;
}

bool srv_opt_int(json_object *o, const char *key, int64_t lo, int64_t hi, int64_t *out, srv_error *e) {
    json_object *v = field(o, key);
    if (!v) return true;
    int64_t x;
    if (json_object_is_type(v, json_type_int)) {
        x = json_object_get_int64(v);
        /* json-c clamps big integers to INT64_MIN/MAX; treat those as out of range */
    } else if (json_object_is_type(v, json_type_double)) {
        double d = json_object_get_double(v);
        if (d != floor(d) || !(fabs(d) < 9.2e18))
            return srv_fail(e, 400, key, "'%s' must be an integer (got %g)", key, d);
        x = (int64_t)d;
    } else {
        return srv_fail(e, 400, key, "'%s' must be an integer, not %s", key, type_name(v));
    }
    if (x < lo || x > hi)
        return srv_fail(e, 400, key, "'%s' must be between %lld and %lld (got %lld)", key, (long long)lo,
                        (long long)hi, (long long)x);
    *out = x;
    return true;
}

bool srv_opt_bool(json_object *o, const char *key, bool *out, srv_error *e) {
    json_object *v = field(o, key);
    if (!v) return true;
    if (!json_object_is_type(v, json_type_boolean))
        return srv_fail(e, 400, key, "'%s' must be a boolean, not %s", key, type_name(v));
    *out = json_object_get_boolean(v);
    return true;
}

bool srv_opt_string(json_object *o, const char *key, const char **out, srv_error *e) {
    json_object *v = field(o, key);
    if (!v) return true;
    if (!json_object_is_type(v, json_type_string))
        return srv_fail(e, 400, key, "'%s' must be a string, not %s", key, type_name(v));
    *out = json_object_get_string(v);
    return true;
}

json_object *srv_opt_typed(json_object *o, const char *key, json_type t, const char *what, srv_error *e,
                           bool *bad) {
    json_object *v = field(o, key);
    *bad = false;
    if (!v) return NULL;
    if (!json_object_is_type(v, t)) {
        *bad = true;
        srv_fail(e, 400, key, "'%s' must be %s, not %s", key, what, type_name(v));
        return NULL;
    }
    return v;
}

bool srv_parse_stop(json_object *o, const char *key, const char **stop, size_t *n_stop, srv_error *e) {
    json_object *v = field(o, key);
    *n_stop = 0;
    if (!v) return true;
    if (json_object_is_type(v, json_type_string)) {
        if (!json_object_get_string_len(v)) return true; /* "" stops nothing */
        if (json_object_get_string_len(v) > SPUD_ENGINE_MAX_STOP_LEN)
            return srv_fail(e, 400, key, "'%s' strings must be at most %d bytes", key,
                            SPUD_ENGINE_MAX_STOP_LEN);
        stop[(*n_stop)++] = json_object_get_string(v);
        return true;
    }
    if (!json_object_is_type(v, json_type_array))
        return srv_fail(e, 400, key, "'%s' must be a string or an array of strings, not %s", key,
                        type_name(v));
    size_t n = json_object_array_length(v);
    if (n > SPUD_ENGINE_MAX_STOP)
        return srv_fail(e, 400, key, "'%s' may hold at most %d strings (got %zu)", key,
                        SPUD_ENGINE_MAX_STOP, n);
    for (size_t i = 0; i < n; i++) {
        json_object *s = json_object_array_get_idx(v, i);
        char p[64];
        snprintf(p, sizeof p, "%s[%zu]", key, i);
        if (!json_object_is_type(s, json_type_string))
            return srv_fail(e, 400, p, "'%s' must be a string, not %s", p, type_name(s));
        if (json_object_get_string_len(s) > SPUD_ENGINE_MAX_STOP_LEN)
            return srv_fail(e, 400, p, "'%s' must be at most %d bytes", p, SPUD_ENGINE_MAX_STOP_LEN);
        if (json_object_get_string_len(s)) stop[(*n_stop)++] = json_object_get_string(s);
    }
    return true;
}

bool srv_parse_logit_bias(json_object *o, int32_t n_vocab, spud_logit_bias **bias, size_t *n, srv_error *e) {
    bool bad;
    *bias = NULL;
    *n = 0;
    json_object *v = srv_opt_typed(o, "logit_bias", json_type_object, "an object", e, &bad);
    if (bad) return false;
    if (!v || json_object_object_length(v) == 0) return true;
    *bias = spud_calloc((size_t)json_object_object_length(v), sizeof **bias);
    if (!*bias) return srv_fail(e, 500, "", "out of memory");
    json_object_object_foreach(v, key, val) {
        char *end;
        long id = strtol(key, &end, 10);
        if (!*key || *end || id < 0 || id >= n_vocab) {
            spud_free(*bias);
            *bias = NULL;
            return srv_fail(e, 400, "logit_bias", "'logit_bias' keys must be token ids from 0 to %d (got '%s')",
                            (int)n_vocab - 1, key);
        }
        if (!val || (!json_object_is_type(val, json_type_int) && !json_object_is_type(val, json_type_double)) ||
            !(fabs(json_object_get_double(val)) <= 100)) {
            spud_free(*bias);
            *bias = NULL;
            return srv_fail(e, 400, "logit_bias", "'logit_bias' values must be numbers from -100 to 100 (token %s)",
                            key);
        }
        (*bias)[*n].token = (int32_t)id;
        (*bias)[*n].bias = (float)json_object_get_double(val);
        (*n)++;
    }
    return true;
}

bool srv_parse_sampling(json_object *body, spud_sampler_params *sp, srv_error *e) {
    double temp = 1, top_p = 1, min_p = 0, pp = 0, fp = 0, rp = 1;
    int64_t top_k = 0, seed = -1;
    if (!srv_opt_number(body, "temperature", 0, 2, &temp, e) || !srv_opt_number(body, "top_p", 0, 1, &top_p, e) ||
        !srv_opt_number(body, "min_p", 0, 1, &min_p, e) || !srv_opt_int(body, "top_k", 0, INT32_MAX, &top_k, e) ||
        !srv_opt_number(body, "presence_penalty", -2, 2, &pp, e) ||
        !srv_opt_number(body, "frequency_penalty", -2, 2, &fp, e) ||
        !srv_opt_number(body, "repetition_penalty", 0.01, 10, &rp, e) ||
        !srv_opt_int(body, "seed", INT64_MIN, INT64_MAX, &seed, e))
        return false;
    bool seeded = field(body, "seed") != NULL;
    *sp = (spud_sampler_params){
        .temp = (float)temp,
        .top_k = (int32_t)top_k,
        .top_p = (float)top_p,
        .min_p = (float)min_p,
        .repeat_penalty = (float)rp,
        .repeat_last_n = -1, /* the penalties look at everything generated */
        .freq_penalty = (float)fp,
        .presence_penalty = (float)pp,
        .seed = seeded ? (uint64_t)seed : srv_random_u64(),
    };
    return true;
}

uint64_t srv_random_u64(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) {
        static _Atomic uint64_t ctr;
        v = (uint64_t)(spud_time_s() * 1e9) ^ (ctr++ * 0x9E3779B97F4A7C15ull);
    }
    return v;
}

void srv_random_id(char *out, size_t cap, const char *prefix) {
    static const char hex[] = "0123456789abcdef";
    uint64_t a = srv_random_u64(), b = srv_random_u64();
    size_t n = (size_t)snprintf(out, cap, "%s", prefix);
    for (int i = 0; i < 24 && n + 1 < cap; i++, n++) {
        uint64_t *w = i < 16 ? &a : &b;
        out[n] = hex[*w & 15];
        *w >>= 4;
    }
    out[n < cap ? n : cap - 1] = 0;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, min = 0x10000;
    else return 0;
    if (len > n) return 0;
    unsigned cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

json_object *srv_json_string_lossy(const char *s, size_t n) {
    char stackbuf[256] = {0};
    size_t cap = 3 * n + 1;
    char *buf = cap <= sizeof stackbuf ? stackbuf : spud_malloc(cap);
    if (!buf) return json_object_new_string("");
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq((const unsigned char *)s + i, n - i);
        if (l) {
            memcpy(buf + k, s + i, l);
            k += l;
            i += l;
        } else {
            memcpy(buf + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        }
    }
    json_object *o = json_object_new_string_len(buf, (int)k);
    if (buf != stackbuf) spud_free(buf);
    return o;
}

const char *srv_json_text(json_object *o, size_t *len) {
    const char *t = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, len);
    return t ? t : "null";
}

const char *srv_finish_name(spud_finish f) {
    switch (f) {
    case SPUD_FINISH_STOP: return "stop";
    case SPUD_FINISH_LENGTH: return "length";
    default: return "stop";
    }
}
