/* jinja.h: a Jinja template interpreter that renders byte for byte what
 * Python's jinja2 renders, configured as Hugging Face's apply_chat_template
 * configures it: ImmutableSandboxedEnvironment(trim_blocks=True,
 * lstrip_blocks=True, extensions=[loopcontrols]), `tojson` as
 * json.dumps(ensure_ascii=False), `raise_exception(msg)` and
 * `strftime_now(fmt)` as globals, undefined names as jinja2's default
 * Undefined.
 *
 * Usage:
 *
 *     spud_jinja_template *t;
 *     if (spud_jinja_parse(src, len, &t)) { ... spud_last_error() ... }
 *     json_object *vars = json_tokener_parse("{\"messages\": [...]}");
 *     char *out; size_t n;
 *     if (spud_jinja_render(t, vars, NULL, &out, &n)) { ... }
 *     ... spud_free(out); json_object_put(vars); spud_jinja_free(t);
 *
 * Templates are untrusted: parsing and rendering are bounded (source size,
 * nesting depth, evaluation steps, output bytes, memory) and reach nothing
 * but their inputs (no files, no environment, no Python objects). Integers
 * are 64-bit (overflow is an error, where Python would grow them).
 *
 * Thread safety: a parsed template is immutable; any number of threads may
 * render it at once (each render has its own state).
 */
#ifndef SPUD_JINJA_H
#define SPUD_JINJA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "core.h"

typedef struct spud_jinja_template spud_jinja_template;

/* Bounds on one render; a zero field takes the default. */
typedef struct {
    uint64_t max_steps;  /* evaluation steps (default 50M) */
    size_t max_output;   /* bytes of output (default 64 MiB) */
    size_t max_memory;   /* bytes of working memory (default 512 MiB) */
    int64_t now;         /* strftime_now time (seconds since the epoch, UTC);
                            used when now_set, else the local time now */
    bool now_set;
    /* Names of variables whose strings are the template's own, like the
     * template text (NULL-terminated list; NULL: none). See
     * spud_jinja_render_taint. */
    const char *const *trusted;
} spud_jinja_opts;

/* Parse a template (any bytes; it must be valid UTF-8). Syntax errors give
 * SPUD_ERR_FORMAT with "line N: message". The source is copied. */
spud_status spud_jinja_parse(const char *src, size_t len, spud_jinja_template **out);
void spud_jinja_free(spud_jinja_template *t);

/* Render with the keys of `vars` (a JSON object, or NULL) as the template's
 * variables. On success *out is a NUL-terminated allocation (free with
 * spud_free) of *out_len bytes. A runtime error or raise_exception gives
 * SPUD_ERR_INVALID, a bound exceeded SPUD_ERR_RANGE, each with "line N: ...". */
spud_status spud_jinja_render(const spud_jinja_template *t, json_object *vars,
                              const spud_jinja_opts *opts, char **out, size_t *out_len);

/* spud_jinja_render, and also *taint: an allocation (free with spud_free) of
 * *out_len bytes (at least 1), one per output byte, 1 where the byte came
 * from an untrusted variable, 0 where the template wrote it.
 *
 * Every string inside `vars` (dict keys included) is untrusted, except
 * under the top-level names in opts->trusted. Taint follows the bytes:
 * concatenation (+, ~, join, format, indent, center), slicing, indexing,
 * iteration, split, splitlines, strip/trim and removeprefix keep each
 * byte's own taint; replace does too, except that text put into a string
 * with any taint is tainted, and a tainted `old` taints the whole result;
 * operations that rewrite characters (case changes, escapes, repr, tojson)
 * and a tainted format string taint their whole result when any input byte
 * is tainted. Numbers, booleans and none carry no taint (they print only
 * digits and fixed words), nor does which branch a condition takes. */
spud_status spud_jinja_render_taint(const spud_jinja_template *t, json_object *vars,
                                    const spud_jinja_opts *opts, char **out, size_t *out_len,
                                    uint8_t **taint);

#endif
