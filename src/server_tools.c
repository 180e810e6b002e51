/* server_tools.c: what a request asks its output to be: response_format /
 * text.format (JSON Schema, any JSON object), a GBNF `grammar`, and tools with
 * tool_choice, turned into one grammar for the engine (json_schema.h,
 * tool_grammar.h, grammar.h). Every error is a 400 whose param is the path
 * of the offending field. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "json_schema.h"
#include "tool_parse.h"
#include "server_int.h"
#include "tool_grammar.h"

void srv_constraint_free(srv_constraint *c) {
    spud_free(c->gbnf);
    spud_free(c->trigger);
    c->gbnf = c->trigger = NULL;
}

static json_object *get(json_object *o, const char *key) {
    json_object *v = NULL;
    if (!o || !json_object_object_get_ex(o, key, &v)) return NULL;
    return v;
}

static const char *type_name(json_object *v) {
    switch (json_object_get_type(v)) {
    case json_type_null: return "null";
    case json_type_boolean: return "a boolean";
    case json_type_int:
    case json_type_double: return "a number";
    case json_type_string: return "a string";
    case json_type_array: return "an array";
    default: return "an object";
    }
}

/* A schema compiled to GBNF (or checked only, when gbnf is NULL). */
static bool compile_schema(json_object *schema, bool strict, const char *param, char **gbnf, srv_error *e) {
    char *g = NULL;
    spud_status st = spud_json_schema_obj_to_gbnf(schema, strict, &g);
    if (st == SPUD_ERR_NOMEM) return srv_fail(e, 500, "", "out of memory");
    if (st) return srv_fail(e, 400, param, "'%s' is not a schema this server can enforce: %s", param, spud_last_error());
    if (gbnf)
        *gbnf = g;
    else
        spud_free(g);
    return true;
}

bool srv_parse_format(json_object *fmt, const char *param, bool responses, srv_constraint *c, srv_error *e) {
    char p[160];
    if (!fmt || json_object_is_type(fmt, json_type_null)) return true;
    if (!json_object_is_type(fmt, json_type_object))
        return srv_fail(e, 400, param, "'%s' must be an object, not %s", param, type_name(fmt));
    json_object *type = get(fmt, "type");
    snprintf(p, sizeof p, "%s.type", param);
    if (!type || !json_object_is_type(type, json_type_string))
        return srv_fail(e, 400, p, "'%s' must be \"text\", \"json_object\" or \"json_schema\"", p);
    const char *ty = json_object_get_string(type);
    if (!strcmp(ty, "text")) return true;
    if (!strcmp(ty, "json_object")) {
        if (spud_json_schema_any_object_gbnf(&c->gbnf)) return srv_fail(e, 500, "", "%s", spud_last_error());
        snprintf(c->param, sizeof c->param, "%s", param);
        return true;
    }
    if (strcmp(ty, "json_schema"))
        return srv_fail(e, 400, p, "'%s' must be \"text\", \"json_object\" or \"json_schema\" (got \"%s\")", p, ty);
    /* chat: {"type", "json_schema": {"name", "schema", "strict"}}; responses: the same fields inline */
    json_object *js = fmt;
    char base[96];
    snprintf(base, sizeof base, "%s", param);
    if (!responses) {
        js = get(fmt, "json_schema");
        snprintf(base, sizeof base, "%s.json_schema", param);
        if (!js || !json_object_is_type(js, json_type_object))
            return srv_fail(e, 400, base, "'%s' must be an object with 'name' and 'schema'", base);
    }
    json_object *name = get(js, "name"), *schema = get(js, "schema"), *strict = get(js, "strict");
    if (name && !json_object_is_type(name, json_type_string)) {
        snprintf(p, sizeof p, "%s.name", base);
        return srv_fail(e, 400, p, "'%s' must be a string", p);
    }
    if (strict && !json_object_is_type(strict, json_type_boolean) && !json_object_is_type(strict, json_type_null)) {
        snprintf(p, sizeof p, "%s.strict", base);
        return srv_fail(e, 400, p, "'%s' must be a boolean", p);
    }
    snprintf(p, sizeof p, "%s.schema", base);
    if (!schema || json_object_is_type(schema, json_type_null))
        return srv_fail(e, 400, p, "'%s' is required for a json_schema format", p);
    if (!json_object_is_type(schema, json_type_object) && !json_object_is_type(schema, json_type_boolean))
        return srv_fail(e, 400, p, "'%s' must be a JSON Schema object, not %s", p, type_name(schema));
    bool is_strict = strict && json_object_is_type(strict, json_type_boolean) && json_object_get_boolean(strict);
    if (!compile_schema(schema, is_strict, p, &c->gbnf, e)) return false;
    snprintf(c->param, sizeof c->param, "%s", p);
    return true;
}

bool srv_parse_grammar(json_object *body, srv_constraint *c, srv_error *e) {
    json_object *g = get(body, "grammar");
    if (!g || json_object_is_type(g, json_type_null)) return true;
    if (!json_object_is_type(g, json_type_string))
        return srv_fail(e, 400, "grammar", "'grammar' must be a string (GBNF), not %s", type_name(g));
    if (json_object_get_string_len(g) == 0) return true; /* llama-server treats "" as no grammar */
    if (c->gbnf)
        return srv_fail(e, 400, "grammar", "give either 'grammar' or a JSON 'response_format', not both");
    c->gbnf = spud_strndup(json_object_get_string(g), (size_t)json_object_get_string_len(g));
    if (!c->gbnf) return srv_fail(e, 500, "", "out of memory");
    snprintf(c->param, sizeof c->param, "grammar");
    c->user_grammar = true;
    return true;
}

/* ---- tools ---- */

static bool name_ok(const char *s, size_t n) {
    if (n == 0 || n > 64) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
              ch == '-'))
            return false;
    }
    return true;
}

/* The function object of chat tool i (responses: the tool itself was reshaped
 * by the caller; rp names the original fields). */
bool srv_parse_tools(spud_server *s, json_object *tools, json_object *tool_choice, bool parallel, bool responses,
                     srv_constraint *c, srv_error *e) {
    char p[160];
    size_t n = tools ? json_object_array_length(tools) : 0;
    bool any_strict = false;
    c->tools = n > 0;
    for (size_t i = 0; i < n; i++) {
        json_object *t = json_object_array_get_idx(tools, i), *type, *fn, *name, *params, *strict;
        const char *fp = responses ? "" : ".function"; /* where name / parameters live in the request */
        snprintf(p, sizeof p, "tools[%zu]", i);
        if (!json_object_is_type(t, json_type_object)) return srv_fail(e, 400, p, "'%s' must be an object", p);
        type = get(t, "type");
        if (!type || !json_object_is_type(type, json_type_string) || strcmp(json_object_get_string(type), "function")) {
            snprintf(p, sizeof p, "tools[%zu].type", i);
            return srv_fail(e, 400, p, "'%s' must be \"function\" (the only kind of tool this server runs)", p);
        }
        fn = get(t, "function");
        if (!fn || !json_object_is_type(fn, json_type_object)) {
            snprintf(p, sizeof p, "tools[%zu]%s", i, responses ? ".name" : ".function");
            return srv_fail(e, 400, p, "'%s' is required", p);
        }
        name = get(fn, "name");
        snprintf(p, sizeof p, "tools[%zu]%s.name", i, fp);
        if (!name || !json_object_is_type(name, json_type_string))
            return srv_fail(e, 400, p, "'%s' is required: every tool needs a name", p);
        const char *nm = json_object_get_string(name);
        if (!name_ok(nm, (size_t)json_object_get_string_len(name)))
            return srv_fail(e, 400, p, "'%s' (\"%.64s\") must be 1 to 64 of a-z, A-Z, 0-9, _ and -", p, nm);
        for (size_t k = 0; k < i; k++) {
            json_object *o = get(get(json_object_array_get_idx(tools, k), "function"), "name");
            if (o && !strcmp(json_object_get_string(o), nm))
                return srv_fail(e, 400, p, "'%s': two tools are named \"%s\"", p, nm);
        }
        strict = get(fn, "strict");
        if (strict && !json_object_is_type(strict, json_type_null) && !json_object_is_type(strict, json_type_boolean)) {
            snprintf(p, sizeof p, "tools[%zu]%s.strict", i, fp);
            return srv_fail(e, 400, p, "'%s' must be a boolean", p);
        }
        bool is_strict = strict && json_object_is_type(strict, json_type_boolean) && json_object_get_boolean(strict);
        any_strict |= is_strict;
        params = get(fn, "parameters");
        snprintf(p, sizeof p, "tools[%zu]%s.parameters", i, fp);
        if (params && !json_object_is_type(params, json_type_null)) {
            if (!json_object_is_type(params, json_type_object))
                return srv_fail(e, 400, p, "'%s' must be a JSON Schema object, not %s", p, type_name(params));
            if (!compile_schema(params, is_strict, p, NULL, e)) return false;
        }
    }

    /* tool_choice: "auto" | "none" | "required" | {"type": "function", "function": {"name"}} (chat)
     * or {"type": "function", "name"} (responses) */
    spud_tool_choice choice = SPUD_TOOL_CHOICE_AUTO;
    const char *fname = NULL;
    if (tool_choice && !json_object_is_type(tool_choice, json_type_null)) {
        if (json_object_is_type(tool_choice, json_type_string)) {
            const char *v = json_object_get_string(tool_choice);
            if (spud_tool_choice_parse(v, &choice) || choice == SPUD_TOOL_CHOICE_FUNCTION)
                return srv_fail(e, 400, "tool_choice",
                                "'tool_choice' must be \"auto\", \"none\", \"required\" or a function object "
                                "(got \"%.64s\")", v);
        } else if (json_object_is_type(tool_choice, json_type_object)) {
            json_object *type = get(tool_choice, "type"), *fo = get(tool_choice, "function");
            json_object *nm = responses ? get(tool_choice, "name") : get(fo, "name");
            if (!nm && !responses) nm = get(tool_choice, "name");
            if (!nm && responses) nm = get(fo, "name");
            if (!type || !json_object_is_type(type, json_type_string) || strcmp(json_object_get_string(type), "function") ||
                !nm || !json_object_is_type(nm, json_type_string))
                return srv_fail(e, 400, "tool_choice",
                                responses ? "'tool_choice' as an object must be {\"type\": \"function\", \"name\": ...}"
                                          : "'tool_choice' as an object must be {\"type\": \"function\", "
                                            "\"function\": {\"name\": ...}}");
            fname = json_object_get_string(nm);
            choice = SPUD_TOOL_CHOICE_FUNCTION;
            bool found = false;
            for (size_t i = 0; i < n && !found; i++) {
                json_object *o = get(get(json_object_array_get_idx(tools, i), "function"), "name");
                found = o && !strcmp(json_object_get_string(o), fname);
            }
            if (!found)
                return srv_fail(e, 400, "tool_choice", "'tool_choice' names the function \"%.64s\", which is not in 'tools'",
                                fname);
        } else {
            return srv_fail(e, 400, "tool_choice", "'tool_choice' must be a string or an object, not %s",
                            type_name(tool_choice));
        }
    }
    if (n == 0 && (choice == SPUD_TOOL_CHOICE_REQUIRED || choice == SPUD_TOOL_CHOICE_FUNCTION))
        return srv_fail(e, 400, "tool_choice", "'tool_choice' asks for a tool call, but 'tools' is empty or absent");
    c->choice = choice;
    c->syntax = s->call_syntax;
    c->parallel = parallel;
    if (choice == SPUD_TOOL_CHOICE_NONE) c->tools = false; /* no calls: the output is all content */
    /* Enforce by grammar: required, a named function, and strict tools under auto (lazily). */
    bool enforce = n > 0 && (choice == SPUD_TOOL_CHOICE_REQUIRED || choice == SPUD_TOOL_CHOICE_FUNCTION ||
                             (choice == SPUD_TOOL_CHOICE_AUTO && any_strict));
    if (!enforce) return true;
    if (c->gbnf) {
        if (choice == SPUD_TOOL_CHOICE_AUTO) return true; /* the response format wins; calls are parsed, not forced */
        return srv_fail(e, 400, "tool_choice",
                        "'tool_choice' forces a tool call; it cannot be combined with '%s'", c->param);
    }
    spud_tool_grammar tg;
    spud_status st = spud_tool_grammar_build(tools, s->tool_format, choice, fname, parallel, s->model->tok, false, &tg);
    if (st == SPUD_ERR_NOMEM) return srv_fail(e, 500, "", "out of memory");
    if (st) return srv_fail(e, 400, "tools", "'tools': %s", spud_last_error());
    c->gbnf = tg.gbnf;
    c->trigger = tg.trigger;
    snprintf(c->param, sizeof c->param, "tools");
    return true;
}

bool srv_constraint_compile(srv_constraint *c, spud_engine_req_params *p, srv_error *e) {
    p->grammar = NULL;
    p->n_triggers = 0;
    if (!c->gbnf) return true;
    spud_grammar *g;
    spud_status st = spud_grammar_parse(c->gbnf, strlen(c->gbnf), &g);
    if (st == SPUD_ERR_NOMEM) return srv_fail(e, 500, "", "out of memory");
    if (st) return srv_fail(e, 400, c->param, "'%s': %s", c->param, spud_last_error());
    p->grammar = g;
    c->trig[0] = c->trigger;
    p->triggers = c->trig;
    p->n_triggers = c->trigger ? 1 : 0;
    return true;
}

/* ---- the output, parsed back ---- */

bool srv_buf_add(srv_buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *t = spud_realloc(b->p, cap);
        if (!t) return false;
        b->p = t;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return true;
}

static void call_clear(srv_call *k) {
    spud_free(k->name);
    spud_free(k->args.p);
    memset(k, 0, sizeof *k);
}

void srv_choice_free_parse(srv_choice *ch) {
    spud_out_parser_free(ch->parser);
    ch->parser = NULL;
    spud_free(ch->content.p);
    spud_free(ch->reasoning.p);
    for (int32_t i = 0; i < ch->n_calls; i++) call_clear(&ch->calls[i]);
    spud_free(ch->calls);
}

const char *srv_choice_finish(const srv_choice *ch) {
    if (ch->finish == SPUD_FINISH_STOP && ch->n_calls > 0) return "tool_calls";
    return srv_finish_name(ch->finish);
}

json_object *srv_choice_calls_json(const srv_choice *ch) {
    if (!ch->n_calls) return NULL;
    json_object *calls = json_object_new_array();
    for (int32_t k = 0; k < ch->n_calls; k++) {
        json_object *tc = json_object_new_object(), *fn = json_object_new_object();
        json_object_object_add(tc, "id", json_object_new_string(ch->calls[k].id));
        json_object_object_add(tc, "type", json_object_new_string("function"));
        json_object_object_add(fn, "name", json_object_new_string(ch->calls[k].name));
        json_object_object_add(fn, "arguments", srv_json_string_lossy(ch->calls[k].args.p, ch->calls[k].args.n));
        json_object_object_add(tc, "function", fn);
        json_object_array_add(calls, tc);
    }
    return calls;
}

bool srv_parse_effort(json_object *o, const char *key, const char *param, srv_constraint *c, srv_error *e) {
    static const struct {
        const char *name;
        int32_t chars;
    } levels[] = {{"none", 0}, {"minimal", 0}, {"low", 1024}, {"medium", 8192}, {"high", 32768}};
    json_object *v = NULL;
    c->think_max = 8192;
    if (!o || !json_object_object_get_ex(o, key, &v) || !v) return true;
    const char *name = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (!strcmp(name, levels[i].name)) {
            c->think_max = levels[i].chars;
            return true;
        }
    return srv_fail(e, 400, param, "'%s' must be one of none, minimal, low, medium, high", param);
}

/* Copy grammar g, its rule `root` renamed `to` wherever it appears as a name (outside
 * literals, classes, token references and comments). */
static bool rename_root(srv_buf *out, const char *g, const char *to) {
    size_t n = strlen(g);
    for (size_t i = 0; i < n;) {
        char ch = g[i];
        size_t j = i + 1;
        if (ch == '"' || ch == '[' || ch == '<') { /* literal, class, token reference: copy as is */
            char end = ch == '"' ? '"' : ch == '[' ? ']' : '>';
            while (j < n && g[j] != end) j += g[j] == '\\' && j + 1 < n ? 2 : 1;
            if (j < n) j++;
        } else if (ch == '#') {
            while (j < n && g[j] != '\n') j++;
        } else if (isalnum((unsigned char)ch) || ch == '-' || ch == '_') {
            while (j < n && (isalnum((unsigned char)g[j]) || g[j] == '-' || g[j] == '_')) j++;
            if (j - i == 4 && !memcmp(g + i, "root", 4)) {
                if (!srv_buf_add(out, to, strlen(to))) return false;
                i = j;
                continue;
            }
        }
        if (!srv_buf_add(out, g + i, j - i)) return false;
        i = j;
    }
    return true;
}

/* A literal or class character, escaped for GBNF. */
static void gbnf_char(char *out, char ch) {
    if (strchr("\\\"[]-^", ch)) {
        out[0] = '\\';
        out[1] = ch;
        out[2] = 0;
    } else {
        out[0] = ch;
        out[1] = 0;
    }
}

/* Append text as the inside of a GBNF literal. */
static bool lit_add(srv_buf *b, const char *t, size_t n) {
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        if (t[i] == '"' || t[i] == '\\') ok = srv_buf_add(b, "\\", 1);
        ok = ok && srv_buf_add(b, t + i, 1);
    }
    return ok;
}

/* The grammar that may think first:
 *   root ::= thought{0,max} CLOSE [ \n]{0,3} answer            (the prompt opened the block)
 *   root ::= (OPEN thought{0,max} CLOSE [ \n]{0,3})? answer     (the model may open one)
 * Text without the close marker M (whose first character does not occur
 * again in it) is a run of chunks: a character other than M[0], or M[0]
 * followed by a proper prefix of M's rest and a character that leaves the
 * match (M[0] itself restarts it). The text may not end with a proper prefix
 * of M. The bound counts chunks: characters, a few more around M[0]. */
static char *think_grammar(const char *answer, const char *open, const char *close, int32_t max) {
    size_t L = strlen(close);
    if (L < 2 || strchr(close + 1, close[0])) return NULL;
    srv_buf b = {0};
    char m0[3], mj[3], line[64];
    gbnf_char(m0, close[0]);
    bool ok = srv_buf_add(&b, open ? "root ::= (\"" : "root ::= ", open ? 11 : 9);
    if (open) ok = ok && lit_add(&b, open, strlen(open)) && srv_buf_add(&b, "\" ", 2);
    if (max > 0) {
        snprintf(line, sizeof line, "spud-think-chunk{0,%d} ", (int)max);
        ok = ok && srv_buf_add(&b, line, strlen(line));
    }
    ok = ok && srv_buf_add(&b, "\"", 1) && lit_add(&b, close, L) && srv_buf_add(&b, "\" [ \\n]{0,3}", 12);
    ok = ok && srv_buf_add(&b, open ? ")? spud-answer\n" : " spud-answer\n", open ? 15 : 13);
    if (max > 0) {
        snprintf(line, sizeof line, "spud-think-chunk ::= [^%s] | [%s] (", m0, m0);
        ok = ok && srv_buf_add(&b, line, strlen(line));
        /* restarts: M[1..j) M[0]; ends: M[1..j) and a character neither M[j] nor M[0] (j = 1 .. L-1) */
        for (int pass = 0; pass < 2 && ok; pass++) {
            for (size_t j = 1; j < L && ok; j++) {
                if (j > 1) ok = srv_buf_add(&b, " | \"", 4) && lit_add(&b, close + 1, j - 1) && srv_buf_add(&b, "\"", 1);
                gbnf_char(mj, close[j]);
                if (pass == 0)
                    snprintf(line, sizeof line, " [%s]", m0);
                else
                    snprintf(line, sizeof line, " [^%s%s]", mj, m0);
                ok = ok && srv_buf_add(&b, line, strlen(line));
            }
            if (pass == 0) ok = ok && srv_buf_add(&b, " )* (", 5);
        }
        ok = ok && srv_buf_add(&b, " )\n", 3);
    }
    ok = ok && rename_root(&b, answer, "spud-answer");
    if (!ok) {
        spud_free(b.p);
        return NULL;
    }
    return b.p;
}

void srv_gen_set_parse(srv_gen *g, srv_constraint *c, const char *prompt, size_t prompt_len) {
    spud_server *s = g->s;
    g->popts_syntax = c->tools ? c->syntax : s->call_syntax;
    g->popts_tools = c->tools;
    g->popts_reasoning = s->thinks;
    /* a generation prompt that opens a think block: the output starts inside it */
    size_t n = prompt_len;
    while (n > 0 && (prompt[n - 1] == '\n' || prompt[n - 1] == ' ')) n--;
    g->popts_in_reasoning = s->thinks && n >= 7 &&
                            (!memcmp(prompt + n - 7, "<think>", 7) || !memcmp(prompt + n - 7, "[THINK]", 7));
    /* A JSON format or a forced call constrains the answer from its first
     * token: let the model think first, in the block the prompt opened or in
     * one it opens (a request's own GBNF grammar may spell the thinking out
     * itself; harmony's channels are not think blocks). Without such a
     * grammar, nothing of the answer is reasoning. */
    if (c->gbnf && !c->trigger && !c->user_grammar && s->thinks && g->popts_syntax != SPUD_CALLS_HARMONY) {
        bool mistral = g->popts_in_reasoning ? !memcmp(prompt + n - 7, "[THINK]", 7)
                                             : g->popts_syntax == SPUD_CALLS_MISTRAL;
        const char *open = mistral ? "[THINK]" : "<think>", *close = mistral ? "[/THINK]" : "</think>";
        char *t = NULL;
        if (g->popts_in_reasoning || c->think_max > 0)
            t = think_grammar(c->gbnf, g->popts_in_reasoning ? NULL : open, close, c->think_max);
        if (t) {
            spud_free(c->gbnf);
            c->gbnf = t;
        } else {
            g->popts_in_reasoning = false;
        }
    }
    g->parse = g->popts_tools || g->popts_reasoning;
    g->live_calls = c->tools && c->gbnf && !strcmp(c->param, "tools");
    g->one_call = !c->parallel;
}

typedef struct {
    srv_gen *g;
    int32_t c;
} feed_ctx;

/* Forget the call being parsed (abandoned, or cut short by the end). */
static void drop_open_call(srv_choice *ch) {
    if (!ch->call_open) return;
    ch->call_open = false;
    call_clear(&ch->calls[--ch->n_calls]);
}

/* A new call id: call_ and 24 hex digits, or for Mistral templates (which
 * refuse any other id when the call comes back) 9 letters and digits. */
static void call_id(const srv_gen *g, char *out, size_t cap) {
    static const char alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    if (g->popts_syntax != SPUD_CALLS_MISTRAL) {
        srv_random_id(out, cap, "call_");
        return;
    }
    uint64_t r = srv_random_u64();
    for (int i = 0; i < 9; i++, r /= 62) out[i] = alnum[r % 62];
    out[9] = 0;
}

static void emit(srv_gen *g, int32_t c, int kind, const char *text, size_t len, const srv_call *call) {
    if (g->api == API_RESPONSES) /* also when not streaming: it numbers the output items */
        srv_responses_stream_piece(g, kind, text, len, call);
    else if (g->stream)
        srv_oai_stream_piece(g, c, kind, text, len, call);
}

static void on_event(void *ud, const spud_out_event *ev) {
    feed_ctx *f = ud;
    srv_choice *ch = &f->g->ch[f->c];
    if (ch->one_done) return; /* after the one call allowed: the engine is ending the choice */
    switch (ev->kind) {
    case SPUD_OUT_CONTENT:
        if (srv_buf_add(&ch->content, ev->text, ev->len)) emit(f->g, f->c, SPUD_OUT_CONTENT, ev->text, ev->len, NULL);
        break;
    case SPUD_OUT_REASONING:
        if (srv_buf_add(&ch->reasoning, ev->text, ev->len))
            emit(f->g, f->c, SPUD_OUT_REASONING, ev->text, ev->len, NULL);
        break;
    case SPUD_OUT_CALL_BEGIN: {
        drop_open_call(ch); /* a call without its end was abandoned by the parser */
        if (f->g->one_call && ch->n_calls > 0) break; /* parallel_tool_calls false: the first call only (live calls) */
        if (ch->n_calls == ch->cap_calls) {
            int32_t cap = ch->cap_calls ? ch->cap_calls * 2 : 4;
            srv_call *t = spud_realloc(ch->calls, (size_t)cap * sizeof *t);
            if (!t) break;
            ch->calls = t;
            ch->cap_calls = cap;
        }
        srv_call *k = &ch->calls[ch->n_calls];
        memset(k, 0, sizeof *k);
        k->name = spud_strndup(ev->name, strlen(ev->name));
        if (!k->name) break;
        call_id(f->g, k->id, sizeof k->id);
        ch->n_calls++;
        ch->call_open = true;
        if (f->g->live_calls) emit(f->g, f->c, SPUD_OUT_CALL_BEGIN, NULL, 0, k);
        break;
    }
    case SPUD_OUT_CALL_ARGS: {
        if (!ch->call_open) break;
        srv_call *k = &ch->calls[ch->n_calls - 1];
        if (!srv_buf_add(&k->args, ev->text, ev->len)) {
            drop_open_call(ch);
            break;
        }
        if (f->g->live_calls) emit(f->g, f->c, SPUD_OUT_CALL_ARGS, ev->text, ev->len, k);
        break;
    }
    case SPUD_OUT_CALL_END: {
        if (!ch->call_open) break;
        srv_call *k = &ch->calls[ch->n_calls - 1];
        ch->call_open = false;
        if (!k->args.p) {
            srv_buf_add(&k->args, "{}", 2);
            if (f->g->live_calls) emit(f->g, f->c, SPUD_OUT_CALL_ARGS, "{}", 2, k);
        }
        emit(f->g, f->c, SPUD_OUT_CALL_END, NULL, 0, k);
        if (f->g->one_call && !f->g->live_calls) {
            /* parallel_tool_calls false and no grammar that stops after one
             * call: end the sequence now rather than generate more to drop */
            ch->one_done = true;
            spud_engine_req_end_choice(f->g->reqs[f->c / f->g->per_req], f->c % f->g->per_req);
        }
        break;
    }
    }
}

void srv_parse_feed(srv_gen *g, int32_t c, const char *text, size_t len, bool final) {
    srv_choice *ch = &g->ch[c];
    feed_ctx f = {g, c};
    if (ch->one_done) return;
    if (!g->parse || ch->parse_failed) {
        spud_out_event ev = {.kind = SPUD_OUT_CONTENT, .text = text, .len = len};
        if (len) on_event(&f, &ev);
        return;
    }
    if (!ch->parser) {
        spud_out_parser_opts o = {.syntax = g->popts_syntax,
                                  .tools = g->popts_tools,
                                  .reasoning = g->popts_reasoning,
                                  .in_reasoning = g->popts_in_reasoning};
        if (spud_out_parser_new(&o, &ch->parser) != SPUD_OK) {
            ch->parse_failed = true;
            srv_parse_feed(g, c, text, len, final);
            return;
        }
    }
    if (len && spud_out_parser_feed(ch->parser, text, len, on_event, &f) != SPUD_OK) {
        /* over the parser's bound: what it held is lost to the split, the rest is content */
        ch->parse_failed = true;
        spud_log(SPUD_LOG_WARN, "serve: output parser: %s; the rest of the output is content", spud_last_error());
        srv_parse_feed(g, c, text, len, final);
        return;
    }
    if (final) {
        spud_out_parser_finish(ch->parser, on_event, &f);
        drop_open_call(ch); /* a call cut short is content already (tool_parse.h) */
    }
}
