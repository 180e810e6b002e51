/* fuzz_tool_parse.c: libFuzzer target for the output parser (tool_parse.h).
 *
 * Input: one options byte (syntax = byte % 6, then bits: tools, reasoning,
 * in_reasoning), one byte that seeds the piece sizes, then the model output.
 * The output is parsed three ways: whole, one byte at a time, and in pieces
 * of pseudo-random sizes. The oracle: the three event streams, neighbouring
 * fragments of one kind joined, are identical; CALL_ARGS and CALL_END belong
 * to the last CALL_BEGIN; every ended call has a name and arguments that are
 * exactly one JSON object.
 *
 *   CC=clang cmake -B build-fuzz -DSPUD_FUZZ=ON -DSPUD_SANITIZE=ON && ninja -C build-fuzz fuzz_tool_parse
 *   build-fuzz/fuzz_tool_parse -max_len=2048 -timeout=10 -rss_limit_mb=2048 fuzz/corpus/tool_parse
 */
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool_parse.h"

#define CHECK(cond)                                                                                        \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "fuzz_tool_parse.c:%d: check failed: %s\n", __LINE__, #cond);                  \
            abort();                                                                                       \
        }                                                                                                  \
    } while (0)

typedef struct {
    char *norm;
    size_t n, cap;
    int last_kind, last_index;
    int open;        /* index of the call begun and not ended, or -1 */
    char *args;      /* its arguments so far */
    size_t args_n;
    int n_begin, n_end;
} rec;

static void add(char **b, size_t *n, size_t *cap, const char *s, size_t k) {
    if (*n + k + 1 > *cap) {
        *cap = (*n + k + 1) * 2;
        *b = realloc(*b, *cap);
        CHECK(*b);
    }
    memcpy(*b + *n, s, k);
    *n += k;
    (*b)[*n] = 0;
}

static void on_event(void *ud, const spud_out_event *ev) {
    rec *r = ud;
    bool text = ev->kind == SPUD_OUT_CONTENT || ev->kind == SPUD_OUT_REASONING || ev->kind == SPUD_OUT_CALL_ARGS;
    if (text) CHECK(ev->len > 0 && ev->text);
    if (!(text && r->last_kind == (int)ev->kind && r->last_index == ev->index)) {
        char tag[128];
        snprintf(tag, sizeof tag, "\n[%d:%d%s%.80s]", (int)ev->kind, ev->index, ev->name ? " " : "",
                 ev->name ? ev->name : "");
        add(&r->norm, &r->n, &r->cap, tag, strlen(tag));
    }
    r->last_kind = (int)ev->kind;
    r->last_index = ev->index;
    if (text) add(&r->norm, &r->n, &r->cap, ev->text, ev->len);
    switch (ev->kind) {
    case SPUD_OUT_CALL_BEGIN:
        CHECK(ev->name && ev->name[0]);
        CHECK(ev->index == r->n_begin); /* abandoned calls keep their index */
        r->n_begin++;
        r->open = ev->index;
        r->args_n = 0;
        break;
    case SPUD_OUT_CALL_ARGS: {
        CHECK(r->open == ev->index);
        r->args = realloc(r->args, r->args_n + ev->len + 1);
        CHECK(r->args);
        memcpy(r->args + r->args_n, ev->text, ev->len);
        r->args_n += ev->len;
        r->args[r->args_n] = 0;
        break;
    }
    case SPUD_OUT_CALL_END: {
        CHECK(r->open == ev->index);
        json_tokener *tk = json_tokener_new();
        json_tokener_set_flags(tk, JSON_TOKENER_STRICT);
        json_object *v = json_tokener_parse_ex(tk, r->args ? r->args : "", (int)r->args_n);
        CHECK(v && json_object_is_type(v, json_type_object));
        CHECK((size_t)json_tokener_get_parse_end(tk) == r->args_n);
        json_object_put(v);
        json_tokener_free(tk);
        r->open = -1;
        r->n_end++;
        break;
    }
    default:
        r->open = -1; /* text after a begun call: it was abandoned */
        break;
    }
}

static spud_status parse(const spud_out_parser_opts *o, const char *s, size_t n, int mode, unsigned seed, rec *r) {
    memset(r, 0, sizeof *r);
    r->last_kind = -1;
    r->open = -1;
    spud_out_parser *p = NULL;
    CHECK(spud_out_parser_new(o, &p) == SPUD_OK);
    spud_status st = SPUD_OK;
    size_t i = 0;
    while (i < n && !st) {
        size_t k = mode == 0 ? n : mode == 1 ? 1 : 1 + (seed = seed * 1103515245u + 12345u) % 13;
        if (k > n - i) k = n - i;
        st = spud_out_parser_feed(p, s + i, k, on_event, r);
        i += k;
    }
    if (!st) st = spud_out_parser_finish(p, on_event, r);
    spud_out_parser_free(p);
    return st;
}

static void rec_free(rec *r) {
    free(r->norm);
    free(r->args);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    spud_out_parser_opts o = {.syntax = (spud_call_syntax)(data[0] % 6),
                              .tools = (data[0] / 6) & 1,
                              .reasoning = (data[0] / 12) & 1,
                              .in_reasoning = (data[0] / 24) & 1};
    unsigned seed = data[1];
    const char *s = (const char *)data + 2;
    size_t n = size - 2;
    rec whole, bytes, pieces;
    spud_status a = parse(&o, s, n, 0, seed, &whole);
    spud_status b = parse(&o, s, n, 1, seed, &bytes);
    spud_status c = parse(&o, s, n, 2, seed, &pieces);
    CHECK(a == b && b == c);
    if (!a) {
        CHECK(whole.n == bytes.n && (!whole.n || !memcmp(whole.norm, bytes.norm, whole.n)));
        CHECK(whole.n == pieces.n && (!whole.n || !memcmp(whole.norm, pieces.norm, whole.n)));
        CHECK(whole.n_end <= whole.n_begin);
    }
    rec_free(&whole);
    rec_free(&bytes);
    rec_free(&pieces);
    return 0;
}
