/* fuzz_jinja.c: libFuzzer target for the Jinja parser and renderer.
 *
 * Input: a template, optionally followed by a NUL byte and a JSON object of
 * variables (a fixed conversation with tools is used when that part is absent
 * or not an object). Any input must be rejected or rendered within the bounds
 * below, with no crash, no read outside the input (ASan), no unbounded time
 * or memory, and an error message of exactly one non-empty line.
 *
 *   CC=clang cmake -B build-jinja-fuzz -DSPUD_FUZZ=ON -DSPUD_SANITIZE=ON && ninja -C build-jinja-fuzz fuzz_jinja
 *   build-jinja-fuzz/fuzz_jinja -max_len=8192 -timeout=10 fuzz/corpus/jinja ../shared/templates
 * Crashes go to tests/regress/jinja/, which test_jinja replays.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jinja.h"

static const char default_vars[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"user\", \"content\": "
    "\"hi {{ x }} \\u00e9\"}, {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": "
    "\"call12345\", \"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {\"a\": "
    "[1, 2.5, null, true]}}}]}, {\"role\": \"tool\", \"tool_call_id\": \"call12345\", \"content\": "
    "\"42\"}], \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": "
    "\"d\", \"parameters\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"array\"}}}}}], "
    "\"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}";

static json_object *defaults;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *src = (const char *)data;
    const char *nul = memchr(src, '\0', size);
    size_t tlen = nul ? (size_t)(nul - src) : size;
    json_object *vars = NULL;
    if (!defaults) defaults = json_tokener_parse(default_vars);
    if (nul) {
        json_tokener *tk = json_tokener_new_ex(64);
        vars = json_tokener_parse_ex(tk, nul + 1, (int)(size - tlen - 1));
        json_tokener_free(tk);
        if (vars && json_object_get_type(vars) != json_type_object) {
            json_object_put(vars);
            vars = NULL;
        }
    }
    spud_jinja_template *t;
    if (spud_jinja_parse(src, tlen, &t) != SPUD_OK) {
        const char *msg = spud_last_error();
        if (!msg[0] || strchr(msg, '\n')) abort();
        json_object_put(vars);
        return 0;
    }
    spud_jinja_opts o = {.max_steps = 200000, .max_output = 1 << 20, .max_memory = 64 << 20,
                         .now = 1721001600, .now_set = true};
    char *out = NULL;
    size_t n = 0;
    spud_status st = spud_jinja_render(t, vars ? vars : defaults, &o, &out, &n);
    if (st == SPUD_OK) {
        if (!out || out[n] != '\0' || n > o.max_output) abort();
    } else {
        const char *msg = spud_last_error();
        if (!msg[0] || strchr(msg, '\n') || out) abort();
    }
    /* a second render of the same parse must agree (templates are immutable), also
       when it tracks taint: the same text, and a 0/1 mask with one byte per byte */
    static const char *const trusted[] = {"bos_token", "eos_token", NULL};
    o.trusted = trusted;
    char *out2 = NULL;
    size_t n2 = 0;
    uint8_t *taint = NULL;
    spud_status st2 = spud_jinja_render_taint(t, vars ? vars : defaults, &o, &out2, &n2, &taint);
    if (st2 != st && st != SPUD_ERR_NOMEM && st2 != SPUD_ERR_NOMEM) abort();
    if (st == SPUD_OK && st2 == SPUD_OK) {
        if (n2 != n || memcmp(out, out2, n) || !taint) abort();
        for (size_t i = 0; i < n; i++)
            if (taint[i] > 1) abort();
    }
    spud_free(out);
    spud_free(out2);
    spud_free(taint);
    spud_jinja_free(t);
    json_object_put(vars);
    return 0;
}
