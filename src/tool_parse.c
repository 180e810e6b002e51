/* tool_parse.c: a model's output split into content, reasoning and tool calls
 * (spud_out_parser_* and spud_call_syntax_* in tool_parse.h).
 *
 * The parser is a byte-driven state machine: every decision depends only on
 * the bytes seen so far, never on where a piece ended, which is what makes
 * one byte at a time give the same events (concatenated) as the whole text.
 * Bytes that may still be a marker are held in `hold`; bytes of a call in
 * progress are kept in `raw` so that a call that turns out malformed, or
 * never ends, is given back as content.
 *
 * Whitespace around syntax is layout, not text: the whitespace right before
 * a call, the whitespace right after a call or a </think>, and the
 * whitespace at both ends of a think block are dropped. Everything else
 * reaches CONTENT or REASONING byte for byte.
 */
#define _GNU_SOURCE /* memmem */
#include "tool_parse.h"

#include <json-c/json.h>
#include <string.h>

#define CAP_TEXT (1u << 20) /* the most a call (or a held-back run) may take */
#define CAP_HDR 1024u       /* harmony header, deepseek head, mistral name */
#define CAP_NAME 256u
#define CAP_WS 4096u   /* whitespace held back at most; then released */
#define CAP_OUT 65536u /* coalesced output flushed beyond this */
#define MAX_DEPTH 256

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

/* ---- JSON value scanner: strings, escapes, nesting; no full validation ---- */

enum { JS_MORE, JS_END, JS_END_BEFORE, JS_ERR };

typedef struct {
    int depth;
    bool started, in_str, esc, scalar;
    char stack[MAX_DEPTH];
} jscan;

static bool is_ws(int c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Feed one byte of a JSON value (leading whitespace skipped by the caller).
 * JS_END: c closed the value; JS_END_BEFORE: the value (a bare scalar) ended
 * before c, which is not part of it. */
static int js_step(jscan *j, int c) {
    if (!j->started) {
        j->started = true;
        if (c == '{' || c == '[') {
            j->stack[j->depth++] = (char)c;
            return JS_MORE;
        }
        if (c == '"') {
            j->in_str = true;
            return JS_MORE;
        }
        if (c == '-' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')) {
            j->scalar = true;
            return JS_MORE;
        }
        return JS_ERR;
    }
    if (j->scalar) {
        if (c == '-' || c == '+' || c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
            (c >= 'A' && c <= 'Z'))
            return JS_MORE;
        return JS_END_BEFORE;
    }
    if (j->in_str) {
        if (j->esc) {
            j->esc = false;
        } else if (c == '\\') {
            j->esc = true;
        } else if (c == '"') {
            j->in_str = false;
            if (j->depth == 0) return JS_END;
        }
        return JS_MORE;
    }
    if (c == '"') {
        j->in_str = true;
    } else if (c == '{' || c == '[') {
        if (j->depth >= MAX_DEPTH) return JS_ERR;
        j->stack[j->depth++] = (char)c;
    } else if (c == '}' || c == ']') {
        if (j->stack[j->depth - 1] != (c == '}' ? '{' : '[')) return JS_ERR;
        if (--j->depth == 0) return JS_END;
    }
    return JS_MORE;
}

/* ---- the parser ---- */

typedef enum {
    M_TEXT, /* content or reasoning, scanning for markers */
    M_CO,   /* inside a call object {"name": .., "arguments": ..} */
    M_ARGS, /* the arguments object of a call whose name is known */
    M_POST, /* after a call (or before a list of calls): optional syntax */
    M_HDR,  /* collecting a header up to its terminator */
    M_DS_NAME, /* deepseek: the function name after <｜tool▁sep｜> */
    M_DS_PRE,  /* deepseek: whitespace and a ```json fence before the arguments */
    M_MI,      /* mistral: after [TOOL_CALLS], a list or a name */
} mode;

/* What a call object's current value is. */
enum { K_NONE, K_NAME, K_ARGS, K_FUNC, K_LIST, K_SKIP };

typedef enum {
    CO_OPEN,       /* expecting '{' */
    CO_KEY_OR_END, /* expecting a key or '}' */
    CO_KEY,        /* inside a key string */
    CO_COLON,
    CO_VALUE, /* expecting a value */
    CO_NAME,  /* inside the name string */
    CO_IN,    /* inside an arguments or skipped value (jscan) */
    CO_NEXT,  /* after a value: ',' or '}' */
} co_state;

/* Header kinds (M_HDR). */
enum { HDR_HARMONY, HDR_DS, HDR_MISTRAL };

/* Post-call literal sets (M_POST). */
enum { PS_NONE, PS_HERMES, PS_LLAMA3, PS_MI_LIST, PS_DS1, PS_DS2, PS_HARMONY, PS_GEN_LIST, PS_GEN_TAIL };
enum { PA_STAY, PA_TEXT, PA_CO, PA_DS_CALL, PA_SET };

typedef struct {
    const char *lit;
    int action, arg;
} post_alt;

#define DS_CALLS_BEGIN "<\xEF\xBD\x9Ctool\xE2\x96\x81" "calls\xE2\x96\x81" "begin\xEF\xBD\x9C>"
#define DS_CALLS_END "<\xEF\xBD\x9Ctool\xE2\x96\x81" "calls\xE2\x96\x81" "end\xEF\xBD\x9C>"
#define DS_CALL_BEGIN "<\xEF\xBD\x9Ctool\xE2\x96\x81" "call\xE2\x96\x81" "begin\xEF\xBD\x9C>"
#define DS_CALL_END "<\xEF\xBD\x9Ctool\xE2\x96\x81" "call\xE2\x96\x81" "end\xEF\xBD\x9C>"
#define DS_SEP "<\xEF\xBD\x9Ctool\xE2\x96\x81" "sep\xEF\xBD\x9C>"

static const post_alt post_sets[][4] = {
    [PS_NONE] = {{NULL, 0, 0}},
    [PS_HERMES] = {{"</tool_call>", PA_TEXT, 0}, {NULL, 0, 0}},
    [PS_LLAMA3] = {{";", PA_TEXT, 0}, {NULL, 0, 0}},
    [PS_MI_LIST] = {{",", PA_CO, 0}, {"]", PA_TEXT, 0}, {NULL, 0, 0}},
    [PS_DS1] = {{"`", PA_STAY, 0}, {DS_CALL_END, PA_SET, PS_DS2}, {NULL, 0, 0}},
    [PS_DS2] = {{DS_CALL_BEGIN, PA_DS_CALL, 0}, {DS_CALLS_END, PA_TEXT, 0}, {NULL, 0, 0}},
    [PS_HARMONY] = {{"<|call|>", PA_TEXT, 0}, {"<|end|>", PA_TEXT, 0}, {"<|return|>", PA_TEXT, 0}, {NULL, 0, 0}},
    [PS_GEN_LIST] = {{",", PA_CO, 0}, {"]", PA_SET, PS_GEN_TAIL}, {NULL, 0, 0}},
    [PS_GEN_TAIL] = {{"}", PA_TEXT, 0}, {NULL, 0, 0}},
};

/* Markers recognised in M_TEXT. */
enum {
    MK_THINK_OPEN,
    MK_THINK_CLOSE,
    MK_HERMES,
    MK_PYTAG,
    MK_BRACE,
    MK_MISTRAL,
    MK_DS_CALLS,
    MK_DS_CALL,
    MK_H_START,
    MK_H_CHANNEL,
    MK_H_END,
    MK_H_DROP,
    MK_COUNT,
};

static const char *const marker_text[] = {
    [MK_THINK_OPEN] = "<think>",     [MK_THINK_CLOSE] = "</think>", [MK_HERMES] = "<tool_call>",
    [MK_PYTAG] = "<|python_tag|>",   [MK_BRACE] = "{",              [MK_MISTRAL] = "[TOOL_CALLS]",
    [MK_DS_CALLS] = DS_CALLS_BEGIN,  [MK_DS_CALL] = DS_CALL_BEGIN,  [MK_H_START] = "<|start|>",
    [MK_H_CHANNEL] = "<|channel|>",  [MK_H_END] = NULL,             [MK_H_DROP] = NULL,
};

struct spud_out_parser {
    spud_out_parser_opts o;
    spud_status err;
    mode m;
    bool think;      /* text goes to REASONING */
    bool strip_lead; /* drop whitespace until the next other byte */
    bool harmony_call_ok;
    sbuf hold; /* M_TEXT: a possible marker prefix; M_POST: a possible literal prefix */
    sbuf ws;   /* whitespace held back (of the current text kind) */
    sbuf raw;  /* the current call's text so far, from its marker */
    sbuf args; /* the current call's arguments text */
    sbuf name;
    sbuf key;
    sbuf hdr;
    int hdr_kind;
    int post_set, post_after; /* M_POST: literal set; PS to use after the next call */
    int n_calls;
    bool begun; /* CALL_BEGIN of the current call has been emitted */
    /* call object */
    co_state co;
    int co_level, co_cur;
    bool co_candidate, co_generic, co_any_key, co_have_name, co_have_args, co_args_str, co_key_esc, co_name_esc;
    jscan js;
    /* M_DS_PRE */
    int ds_ticks;
    /* coalesced output */
    spud_out_kind out_kind;
    int out_index;
    sbuf out;
    spud_out_event_fn fn;
    void *ud;
};

static bool sb_add(spud_out_parser *p, sbuf *b, const char *s, size_t n) {
    if (p->err) return false;
    if (b->n + n > CAP_TEXT) {
        p->err = spud_errorf(SPUD_ERR_RANGE, "model output: a tool call or held-back text over %u bytes", CAP_TEXT);
        return false;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = spud_realloc(b->p, cap);
        if (!q) {
            p->err = spud_errorf(SPUD_ERR_NOMEM, "model output: out of memory");
            return false;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return true;
}

static bool sb_addc(spud_out_parser *p, sbuf *b, int c) {
    char ch = (char)c;
    return sb_add(p, b, &ch, 1);
}

static void sb_clear(sbuf *b) {
    b->n = 0;
    if (b->p) b->p[0] = 0;
}

/* ---- events ---- */

static void flush(spud_out_parser *p) {
    if (p->out.n && p->fn) {
        spud_out_event ev = {.kind = p->out_kind, .index = p->out_index, .text = p->out.p, .len = p->out.n};
        p->fn(p->ud, &ev);
    }
    sb_clear(&p->out);
}

static void emit(spud_out_parser *p, spud_out_kind kind, int index, const char *s, size_t n) {
    if (!n) return;
    if (p->out.n && (p->out_kind != kind || p->out_index != index)) flush(p);
    p->out_kind = kind;
    p->out_index = index;
    if (!sb_add(p, &p->out, s, n)) return;
    if (p->out.n >= CAP_OUT) flush(p);
}

static void emit_mark(spud_out_parser *p, spud_out_kind kind, int index, const char *name) {
    flush(p);
    if (p->fn) {
        spud_out_event ev = {.kind = kind, .index = index, .name = name};
        p->fn(p->ud, &ev);
    }
}

/* One byte of text (content or reasoning, as p->think says). */
static void emit_text(spud_out_parser *p, int c) {
    spud_out_kind kind = p->think ? SPUD_OUT_REASONING : SPUD_OUT_CONTENT;
    if (is_ws(c)) {
        if (p->strip_lead) return;
        if (p->ws.n >= CAP_WS) {
            emit(p, kind, 0, p->ws.p, p->ws.n);
            sb_clear(&p->ws);
        }
        sb_addc(p, &p->ws, c);
        return;
    }
    p->strip_lead = false;
    if (p->ws.n) {
        emit(p, kind, 0, p->ws.p, p->ws.n);
        sb_clear(&p->ws);
    }
    char ch = (char)c;
    emit(p, kind, 0, &ch, 1);
}

static void emit_text_n(spud_out_parser *p, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) emit_text(p, (unsigned char)s[i]);
}

static void begin_call(spud_out_parser *p) {
    sb_clear(&p->ws); /* whitespace before a call is layout */
    p->begun = true;
    emit_mark(p, SPUD_OUT_CALL_BEGIN, p->n_calls, p->name.p ? p->name.p : "");
}

/* The call is complete: CALL_END (after its buffered arguments when the
 * call was not streamed), then the syntax's trailing literals. */
static void end_call(spud_out_parser *p) {
    if (!p->begun) {
        begin_call(p);
        if (p->args.n)
            emit(p, SPUD_OUT_CALL_ARGS, p->n_calls, p->args.p, p->args.n);
        else
            emit(p, SPUD_OUT_CALL_ARGS, p->n_calls, "{}", 2);
    }
    emit_mark(p, SPUD_OUT_CALL_END, p->n_calls, NULL);
    p->n_calls++;
    p->begun = false;
    sb_clear(&p->raw);
    sb_clear(&p->args);
    sb_clear(&p->name);
    p->strip_lead = true;
    p->m = M_POST;
    p->post_set = p->post_after;
    sb_clear(&p->hold);
}

/* The call in progress is not a call: its text so far becomes content. The
 * byte being looked at is not consumed (the caller returns false). */
static bool fail_call(spud_out_parser *p) {
    if (p->begun) p->n_calls++; /* its index stays used: the client saw it */
    p->begun = false;
    p->m = M_TEXT;
    p->think = false;
    char *raw = p->raw.p;
    size_t n = p->raw.n;
    p->raw = (sbuf){0};
    emit_text_n(p, raw, n);
    spud_free(raw);
    sb_clear(&p->args);
    sb_clear(&p->name);
    sb_clear(&p->hold);
    return false;
}

static bool take(spud_out_parser *p, int c) {
    sb_addc(p, &p->raw, c);
    return true;
}

/* A call object; opened: its '{' is already taken (it was the marker). */
static void co_start(spud_out_parser *p, bool candidate, bool generic, bool opened, int post_after) {
    p->m = M_CO;
    p->co = opened ? CO_KEY_OR_END : CO_OPEN;
    p->co_level = opened ? 1 : 0;
    p->co_candidate = candidate;
    p->co_generic = generic;
    p->co_any_key = p->co_have_name = p->co_have_args = p->co_args_str = false;
    p->post_after = post_after;
    sb_clear(&p->args);
    sb_clear(&p->name);
}

static void post_start(spud_out_parser *p, int set, int after) {
    p->m = M_POST;
    p->post_set = set;
    p->post_after = after;
    sb_clear(&p->hold);
}

static bool valid_name(const sbuf *b) {
    if (!b->n) return false;
    for (size_t i = 0; i < b->n; i++)
        if ((unsigned char)b->p[i] < 0x21 || b->p[i] == '"' || b->p[i] == '\\') return false;
    return true;
}

/* [A-Za-z0-9_.-]{1,64}: what a bare JSON object must name to be a call. */
static bool plain_name(const sbuf *b) {
    if (!b->n || b->n > 64) return false;
    for (size_t i = 0; i < b->n; i++) {
        char c = b->p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.'))
            return false;
    }
    return true;
}

/* The arguments text is one JSON object (string form: decode it first). */
static bool args_check(spud_out_parser *p) {
    json_tokener *tk = json_tokener_new();
    if (!tk) {
        p->err = spud_errorf(SPUD_ERR_NOMEM, "model output: out of memory");
        return false;
    }
    json_tokener_set_flags(tk, JSON_TOKENER_STRICT);
    json_object *v = json_tokener_parse_ex(tk, p->args.p, (int)p->args.n);
    bool ok = v && json_tokener_get_error(tk) == json_tokener_success && (size_t)json_tokener_get_parse_end(tk) == p->args.n;
    if (ok && p->co_args_str) {
        /* "arguments": "{\"a\": 1}": the string holds the object's text */
        ok = json_object_is_type(v, json_type_string);
        if (ok) {
            size_t n = (size_t)json_object_get_string_len(v);
            const char *s = json_object_get_string(v);
            while (n && is_ws((unsigned char)*s)) s++, n--;
            while (n && is_ws((unsigned char)s[n - 1])) n--;
            char *copy = spud_strndup(s, n);
            json_object_put(v);
            json_tokener_reset(tk);
            v = NULL;
            if (!copy) {
                json_tokener_free(tk);
                p->err = spud_errorf(SPUD_ERR_NOMEM, "model output: out of memory");
                return false;
            }
            sb_clear(&p->args);
            sb_add(p, &p->args, copy, n);
            spud_free(copy);
            v = json_tokener_parse_ex(tk, p->args.p, (int)p->args.n);
            ok = v && json_tokener_get_error(tk) == json_tokener_success &&
                 (size_t)json_tokener_get_parse_end(tk) == p->args.n;
        }
    }
    ok = ok && json_object_is_type(v, json_type_object);
    json_object_put(v);
    json_tokener_free(tk);
    return ok;
}

/* ---- M_CO: one call object ---- */

static bool co_key_allowed(spud_out_parser *p) {
    const char *k = p->key.p ? p->key.p : "";
    if (!strcmp(k, "name") || !strcmp(k, "arguments") || !strcmp(k, "parameters") || !strcmp(k, "function") ||
        !strcmp(k, "type") || !strcmp(k, "id") || (p->co_generic && !strcmp(k, "tool_calls")))
        return true;
    return !p->co_candidate;
}

static bool co_step(spud_out_parser *p, int c) {
    switch (p->co) {
    case CO_OPEN:
        if (is_ws(c)) return take(p, c);
        if (c != '{') return fail_call(p);
        p->co_level = 1;
        p->co = CO_KEY_OR_END;
        return take(p, c);
    case CO_KEY_OR_END:
        if (is_ws(c)) return take(p, c);
        if (c == '"') {
            sb_clear(&p->key);
            p->co_key_esc = false;
            p->co = CO_KEY;
            return take(p, c);
        }
        if (c == '}' && p->co_any_key) {
            p->co = CO_NEXT;
            return co_step(p, c);
        }
        return fail_call(p);
    case CO_KEY:
        if (p->co_key_esc) {
            p->co_key_esc = false;
        } else if (c == '\\') {
            p->co_key_esc = true;
        } else if (c == '"') {
            p->co = CO_COLON;
            return take(p, c);
        }
        if (p->key.n >= CAP_NAME) return fail_call(p);
        sb_addc(p, &p->key, c);
        return take(p, c);
    case CO_COLON:
        if (is_ws(c)) return take(p, c);
        if (c != ':') return fail_call(p);
        if (!co_key_allowed(p)) return fail_call(p);
        {
            const char *k = p->key.p ? p->key.p : "";
            bool first = !p->co_any_key;
            p->co_any_key = true;
            if (!strcmp(k, "name"))
                p->co_cur = p->co_have_name ? K_SKIP : K_NAME;
            else if (!strcmp(k, "arguments") || !strcmp(k, "parameters"))
                p->co_cur = p->co_have_args ? K_SKIP : K_ARGS;
            else if (!strcmp(k, "function"))
                p->co_cur = K_FUNC;
            else if (!strcmp(k, "tool_calls") && p->co_generic && first && p->co_level == 1)
                p->co_cur = K_LIST;
            else
                p->co_cur = K_SKIP;
        }
        p->co = CO_VALUE;
        return take(p, c);
    case CO_VALUE:
        if (is_ws(c)) return take(p, c);
        switch (p->co_cur) {
        case K_NAME:
            if (c != '"') return fail_call(p);
            p->co = CO_NAME;
            p->co_name_esc = false;
            sb_clear(&p->name);
            return take(p, c);
        case K_FUNC:
            if (c == '{') {
                p->co_level++;
                p->co = CO_KEY_OR_END;
                return take(p, c);
            }
            p->co_cur = K_SKIP;
            break;
        case K_LIST:
            /* {"tool_calls": [ ... ]}: the list's elements are call objects */
            if (c != '[') return fail_call(p);
            take(p, c);
            co_start(p, true, false, false, PS_GEN_LIST);
            return true;
        case K_ARGS:
            if (c == '"') {
                p->co_args_str = true;
            } else if (c == '{') {
                p->co_args_str = false;
                if (p->co_have_name) begin_call(p);
            } else if (c == 'n') {
                p->co_cur = K_SKIP; /* null: no arguments */
                break;
            } else {
                return fail_call(p);
            }
            sb_clear(&p->args);
            break;
        default:
            break;
        }
        p->js = (jscan){0};
        p->co = CO_IN;
        return co_step(p, c);
    case CO_NAME:
        if (p->co_name_esc) {
            p->co_name_esc = false;
        } else if (c == '\\') {
            p->co_name_esc = true;
            return take(p, c);
        } else if (c == '"') {
            if (!valid_name(&p->name) || (p->co_candidate && !plain_name(&p->name))) return fail_call(p);
            p->co_have_name = true;
            p->co = CO_NEXT;
            return take(p, c);
        }
        if (p->name.n >= CAP_NAME) return fail_call(p);
        sb_addc(p, &p->name, c);
        return take(p, c);
    case CO_IN: {
        int r = js_step(&p->js, c);
        if (r == JS_ERR) return fail_call(p);
        if (r == JS_END_BEFORE) {
            p->co = CO_NEXT;
            return co_step(p, c);
        }
        take(p, c);
        if (p->co_cur == K_ARGS) {
            sb_addc(p, &p->args, c);
            if (p->begun) {
                char ch = (char)c;
                emit(p, SPUD_OUT_CALL_ARGS, p->n_calls, &ch, 1);
            }
        }
        if (r == JS_END) {
            if (p->co_cur == K_ARGS) {
                if (!args_check(p)) {
                    if (p->err) return true;
                    fail_call(p); /* c is in raw: it goes to content with the rest */
                    return true;
                }
                p->co_have_args = true;
            }
            p->co = CO_NEXT;
        }
        return true;
    }
    case CO_NEXT:
        if (is_ws(c)) return take(p, c);
        if (c == ',') {
            p->co = CO_KEY_OR_END;
            return take(p, c);
        }
        if (c == '}') {
            take(p, c);
            if (--p->co_level > 0) return true;
            /* a bare JSON object is a call only with both keys: {"name": "Bob"} is text */
            if (!p->co_have_name || (p->co_candidate && !p->co_have_args)) {
                fail_call(p);
                return true;
            }
            end_call(p);
            return true;
        }
        return fail_call(p);
    }
    return fail_call(p);
}

/* ---- M_ARGS: the arguments object of a call whose name is known ---- */

static bool args_step(spud_out_parser *p, int c) {
    if (!p->js.started) {
        if (is_ws(c)) return take(p, c);
        if (c != '{') return fail_call(p);
        sb_clear(&p->args);
        p->co_args_str = false;
        begin_call(p);
    }
    int r = js_step(&p->js, c);
    if (r != JS_MORE && r != JS_END) return fail_call(p);
    take(p, c);
    sb_addc(p, &p->args, c);
    char ch = (char)c;
    emit(p, SPUD_OUT_CALL_ARGS, p->n_calls, &ch, 1);
    if (r == JS_END) {
        if (!args_check(p)) {
            if (p->err) return true;
            fail_call(p);
            return true;
        }
        end_call(p);
    }
    return true;
}

static void args_start(spud_out_parser *p, int post_after) {
    p->m = M_ARGS;
    p->js = (jscan){0};
    p->post_after = post_after;
}

/* ---- M_POST: optional literals after a call ---- */

static void run(spud_out_parser *p, const char *s, size_t n);

static bool post_step(spud_out_parser *p, int c) {
    const post_alt *alts = post_sets[p->post_set];
    if (!p->hold.n && is_ws(c)) return take(p, c);
    sb_addc(p, &p->hold, c);
    take(p, c);
    bool prefix = false;
    for (int i = 0; alts[i].lit; i++) {
        size_t L = strlen(alts[i].lit);
        if (L == p->hold.n && !memcmp(alts[i].lit, p->hold.p, L)) {
            sb_clear(&p->hold);
            switch (alts[i].action) {
            case PA_STAY:
                break;
            case PA_SET:
                p->post_set = alts[i].arg;
                break;
            case PA_TEXT:
                sb_clear(&p->raw);
                p->m = M_TEXT;
                p->think = false;
                break;
            case PA_CO:
                co_start(p, p->post_set == PS_GEN_LIST, false, false, p->post_set);
                break;
            case PA_DS_CALL:
                sb_clear(&p->raw);
                sb_add(p, &p->raw, DS_CALL_BEGIN, strlen(DS_CALL_BEGIN));
                p->m = M_HDR;
                p->hdr_kind = HDR_DS;
                sb_clear(&p->hdr);
                break;
            }
            return true;
        }
        if (L > p->hold.n && !memcmp(alts[i].lit, p->hold.p, p->hold.n)) prefix = true;
    }
    if (prefix) return true;
    /* Not the syntax: the text before the held bytes is content (layout
     * whitespace after a call is dropped there), the held bytes are text
     * to scan again. */
    size_t nh = p->hold.n;
    char *held = spud_strndup(p->hold.p, nh);
    if (!held) {
        p->err = spud_errorf(SPUD_ERR_NOMEM, "model output: out of memory");
        return true;
    }
    p->raw.n -= nh;
    sb_clear(&p->hold);
    fail_call(p);
    run(p, held, nh);
    spud_free(held);
    return true;
}

/* ---- M_HDR: harmony headers, deepseek heads, mistral names ---- */

static void trim(const char **s, size_t *n) {
    while (*n && is_ws((unsigned char)**s)) (*s)++, (*n)--;
    while (*n && is_ws((unsigned char)(*s)[*n - 1])) (*n)--;
}

/* name = s trimmed (s may point into p->name itself). */
static bool set_name(spud_out_parser *p, const char *s, size_t n) {
    trim(&s, &n);
    if (!n || n > CAP_NAME) return false;
    char tmp[CAP_NAME];
    memcpy(tmp, s, n);
    sb_clear(&p->name);
    sb_add(p, &p->name, tmp, n);
    return valid_name(&p->name);
}

static bool ends_with(const sbuf *b, const char *lit) {
    size_t L = strlen(lit);
    return b->n >= L && !memcmp(b->p + b->n - L, lit, L);
}

/* A harmony header (<|start|>assistant<|channel|>X [to=R] [<|constrain|>json]) is complete. */
static bool harmony_header(spud_out_parser *p) {
    const char *h = p->hdr.p;
    size_t n = p->hdr.n - strlen("<|message|>");
    char channel[32] = "";
    const char *ch = memmem(h, n, "<|channel|>", 11);
    if (ch) {
        const char *s = ch + 11;
        size_t k = 0;
        while (s < h + n && k + 1 < sizeof channel &&
               ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_'))
            channel[k++] = *s++;
        channel[k] = 0;
    }
    const char *to = memmem(h, n, "to=", 3);
    sb_clear(&p->hold);
    if (to) {
        const char *s = to + 3, *e = s;
        while (e < h + n && !is_ws((unsigned char)*e) && *e != '<') e++;
        if (p->o.tools && (size_t)(e - s) > 10 && !memcmp(s, "functions.", 10)) {
            if (!set_name(p, s + 10, (size_t)(e - s - 10))) return false;
            args_start(p, PS_HARMONY);
            return true;
        }
        /* a built-in tool (browser, python) or calls not wanted: the body is content */
    }
    sb_clear(&p->raw);
    p->m = M_TEXT;
    p->think = !to && !strcmp(channel, "analysis");
    p->strip_lead = false;
    return true;
}

static bool hdr_step(spud_out_parser *p, int c) {
    take(p, c);
    sb_addc(p, &p->hdr, c);
    const char *term = p->hdr_kind == HDR_HARMONY ? "<|message|>" : p->hdr_kind == HDR_DS ? DS_SEP : "[ARGS]";
    if (ends_with(&p->hdr, term)) {
        size_t L = strlen(term);
        switch (p->hdr_kind) {
        case HDR_HARMONY:
            if (!harmony_header(p)) {
                fail_call(p);
            }
            return true;
        case HDR_DS:
            /* type<｜tool▁sep｜>name, or name<｜tool▁sep｜> (V3.1) */
            p->hdr.n -= L;
            p->m = M_DS_NAME;
            sb_clear(&p->name);
            return true;
        default: {
            /* mistral: name[ARGS] or name[CALL_ID]id[ARGS] */
            const char *br = memchr(p->hdr.p, '[', p->hdr.n);
            if (!set_name(p, p->hdr.p, (size_t)(br - p->hdr.p))) {
                fail_call(p);
                return true;
            }
            args_start(p, PS_NONE);
            return true;
        }
        }
    }
    if (p->hdr.n >= (p->hdr_kind == HDR_HARMONY ? CAP_HDR : CAP_NAME)) fail_call(p);
    return true;
}

static bool ds_name_step(spud_out_parser *p, int c) {
    if (c == '\n' || c == '`' || c == '{') {
        const char *s = p->name.p ? p->name.p : "";
        size_t n = p->name.n;
        trim(&s, &n);
        bool ok = n ? set_name(p, s, n) : set_name(p, p->hdr.p, p->hdr.n);
        if (!ok) return fail_call(p);
        p->m = M_DS_PRE;
        p->ds_ticks = 0;
        return c == '\n' ? take(p, c) : false;
    }
    if (p->name.n >= CAP_NAME) return fail_call(p);
    sb_addc(p, &p->name, c);
    return take(p, c);
}

static bool ds_pre_step(spud_out_parser *p, int c) {
    if (is_ws(c)) return take(p, c);
    if (c == '`') {
        p->ds_ticks++;
        return take(p, c);
    }
    if (p->ds_ticks && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) return take(p, c); /* ```json */
    if (c != '{') return fail_call(p);
    args_start(p, PS_DS1);
    return args_step(p, c);
}

static bool mi_step(spud_out_parser *p, int c) {
    if (is_ws(c)) return take(p, c);
    if (c == '[') {
        take(p, c);
        co_start(p, false, false, false, PS_MI_LIST);
        return true;
    }
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
        p->m = M_HDR;
        p->hdr_kind = HDR_MISTRAL;
        sb_clear(&p->hdr);
        return hdr_step(p, c);
    }
    return fail_call(p);
}

/* ---- M_TEXT ---- */

static bool marker_on(const spud_out_parser *p, int mk) {
    bool harmony = p->o.syntax == SPUD_CALLS_HARMONY;
    if (harmony) return mk == MK_H_START || mk == MK_H_CHANNEL || mk == MK_H_END || mk == MK_H_DROP;
    if (p->think) return mk == MK_THINK_CLOSE;
    if (mk == MK_THINK_OPEN) return p->o.reasoning;
    if (!p->o.tools) return false;
    switch (p->o.syntax) {
    case SPUD_CALLS_HERMES:
        return mk == MK_HERMES;
    case SPUD_CALLS_LLAMA3:
        return mk == MK_PYTAG || mk == MK_BRACE;
    case SPUD_CALLS_MISTRAL:
        return mk == MK_MISTRAL;
    case SPUD_CALLS_DEEPSEEK:
        return mk == MK_DS_CALLS || mk == MK_DS_CALL;
    case SPUD_CALLS_GENERIC:
        return mk == MK_BRACE;
    default:
        return false;
    }
}

/* Does marker mk (its text, or one of several) equal s, or begin with it? */
static int marker_match(const spud_out_parser *p, int mk, const char *s, size_t n, bool *prefix) {
    static const char *const h_end[] = {"<|end|>", "<|return|>", "<|call|>", NULL};
    static const char *const h_drop[] = {"<|message|>", "<|constrain|>", NULL};
    /* Magistral thinks in [THINK]...[/THINK] */
    static const char *const mi_open[] = {"<think>", "[THINK]", NULL};
    static const char *const mi_close[] = {"</think>", "[/THINK]", NULL};
    const char *one[2] = {marker_text[mk], NULL};
    bool mi = p->o.syntax == SPUD_CALLS_MISTRAL;
    const char *const *list = mk == MK_H_END                 ? h_end
                              : mk == MK_H_DROP              ? h_drop
                              : mi && mk == MK_THINK_OPEN  ? mi_open
                              : mi && mk == MK_THINK_CLOSE ? mi_close
                                                           : one;
    for (int i = 0; list[i]; i++) {
        size_t L = strlen(list[i]);
        if (L == n && !memcmp(list[i], s, n)) return 1;
        if (L > n && !memcmp(list[i], s, n)) *prefix = true;
    }
    return 0;
}

static void marker_act(spud_out_parser *p, int mk) {
    const char *text = marker_text[mk];
    switch (mk) {
    case MK_THINK_OPEN:
        sb_clear(&p->ws);
        p->think = true;
        p->strip_lead = true;
        return;
    case MK_THINK_CLOSE:
        sb_clear(&p->ws);
        p->think = false;
        p->strip_lead = true;
        return;
    case MK_H_END:
        sb_clear(&p->ws);
        p->think = false;
        return;
    case MK_H_DROP:
        return;
    case MK_H_START:
    case MK_H_CHANNEL:
        sb_clear(&p->ws);
        p->m = M_HDR;
        p->hdr_kind = HDR_HARMONY;
        sb_clear(&p->hdr);
        sb_add(p, &p->hdr, text, strlen(text));
        break;
    case MK_HERMES:
        co_start(p, false, false, false, PS_HERMES);
        break;
    case MK_PYTAG:
        co_start(p, false, false, false, PS_LLAMA3);
        break;
    case MK_BRACE:
        co_start(p, true, p->o.syntax == SPUD_CALLS_GENERIC, true,
                 p->o.syntax == SPUD_CALLS_LLAMA3 ? PS_LLAMA3 : PS_NONE);
        break;
    case MK_MISTRAL:
        p->m = M_MI;
        break;
    case MK_DS_CALLS:
        post_start(p, PS_DS2, PS_DS1);
        break;
    case MK_DS_CALL:
        p->m = M_HDR;
        p->hdr_kind = HDR_DS;
        sb_clear(&p->hdr);
        break;
    }
    sb_clear(&p->raw);
    sb_add(p, &p->raw, text, strlen(text));
}

static bool text_step(spud_out_parser *p, int c) {
    if (!p->hold.n && c != '<' && c != '{' && c != '[') {
        emit_text(p, c); /* every marker starts with one of these */
        return true;
    }
    sb_addc(p, &p->hold, c);
    while (p->hold.n && !p->err) {
        bool prefix = false;
        int full = -1;
        for (int mk = 0; mk < MK_COUNT; mk++) {
            if (!marker_on(p, mk)) continue;
            if (marker_match(p, mk, p->hold.p, p->hold.n, &prefix)) full = mk;
        }
        if (full >= 0) {
            sb_clear(&p->hold);
            marker_act(p, full);
            return true;
        }
        if (prefix) return true;
        /* the first held byte starts no marker: it is text */
        emit_text(p, (unsigned char)p->hold.p[0]);
        memmove(p->hold.p, p->hold.p + 1, p->hold.n - 1);
        p->hold.n--;
    }
    return true;
}

static bool step(spud_out_parser *p, int c) {
    switch (p->m) {
    case M_TEXT:
        return text_step(p, c);
    case M_CO:
        return co_step(p, c);
    case M_ARGS:
        return args_step(p, c);
    case M_POST:
        return post_step(p, c);
    case M_HDR:
        return hdr_step(p, c);
    case M_DS_NAME:
        return ds_name_step(p, c);
    case M_DS_PRE:
        return ds_pre_step(p, c);
    case M_MI:
        return mi_step(p, c);
    }
    return true;
}

static void run(spud_out_parser *p, const char *s, size_t n) {
    size_t i = 0;
    int tries = 0;
    while (i < n && !p->err) {
        if (step(p, (unsigned char)s[i])) {
            i++;
            tries = 0;
        } else if (++tries > 4) {
            /* a state that refuses a byte hands over to M_TEXT, which takes every byte */
            p->err = spud_errorf(SPUD_ERR_INVALID, "model output: parser stuck (a bug)");
        }
    }
}

/* ---- public ---- */

spud_call_syntax spud_call_syntax_detect(const char *t) {
    if (!t) return SPUD_CALLS_GENERIC;
    if (strstr(t, DS_CALLS_BEGIN) || strstr(t, DS_CALL_BEGIN)) return SPUD_CALLS_DEEPSEEK;
    if (strstr(t, "<|channel|>") && strstr(t, "<|message|>")) return SPUD_CALLS_HARMONY;
    if (strstr(t, "[TOOL_CALLS]")) return SPUD_CALLS_MISTRAL;
    if (strstr(t, "<tool_call>")) return SPUD_CALLS_HERMES;
    if (strstr(t, "<|python_tag|>") || (strstr(t, "<|start_header_id|>") && strstr(t, "\"parameters\"")))
        return SPUD_CALLS_LLAMA3;
    return SPUD_CALLS_GENERIC;
}

const char *spud_call_syntax_name(spud_call_syntax s) {
    switch (s) {
    case SPUD_CALLS_GENERIC:
        return "generic";
    case SPUD_CALLS_HERMES:
        return "hermes";
    case SPUD_CALLS_LLAMA3:
        return "llama3";
    case SPUD_CALLS_MISTRAL:
        return "mistral";
    case SPUD_CALLS_DEEPSEEK:
        return "deepseek";
    case SPUD_CALLS_HARMONY:
        return "harmony";
    }
    return "generic";
}

spud_status spud_out_parser_new(const spud_out_parser_opts *opts, spud_out_parser **out) {
    *out = NULL;
    if ((unsigned)opts->syntax > SPUD_CALLS_HARMONY)
        return spud_errorf(SPUD_ERR_INVALID, "output parser: unknown call syntax %d", (int)opts->syntax);
    spud_out_parser *p = spud_calloc(1, sizeof *p);
    if (!p) return spud_errorf(SPUD_ERR_NOMEM, "output parser: out of memory");
    p->o = *opts;
    p->m = M_TEXT;
    p->think = opts->in_reasoning && opts->syntax != SPUD_CALLS_HARMONY;
    p->strip_lead = p->think;
    *out = p;
    return SPUD_OK;
}

spud_status spud_out_parser_feed(spud_out_parser *p, const char *text, size_t len, spud_out_event_fn fn, void *ud) {
    if (p->err) return spud_errorf(p->err, "output parser: failed earlier");
    p->fn = fn;
    p->ud = ud;
    run(p, text, len);
    flush(p);
    return p->err;
}

spud_status spud_out_parser_finish(spud_out_parser *p, spud_out_event_fn fn, void *ud) {
    if (p->err) return spud_errorf(p->err, "output parser: failed earlier");
    p->fn = fn;
    p->ud = ud;
    if (p->m == M_TEXT) {
        char *held = p->hold.p;
        size_t n = p->hold.n;
        p->hold = (sbuf){0};
        emit_text_n(p, held, n);
        spud_free(held);
    } else {
        /* an unfinished call, or the trailing syntax of a finished one */
        fail_call(p);
    }
    if (!p->think && p->ws.n) emit(p, SPUD_OUT_CONTENT, 0, p->ws.p, p->ws.n);
    sb_clear(&p->ws);
    flush(p);
    p->m = M_TEXT;
    return p->err;
}

void spud_out_parser_free(spud_out_parser *p) {
    if (!p) return;
    sbuf *bufs[] = {&p->hold, &p->ws, &p->raw, &p->args, &p->name, &p->key, &p->hdr, &p->out};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) spud_free(bufs[i]->p);
    spud_free(p);
}
