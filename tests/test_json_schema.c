/* test_json_schema.c: JSON Schema -> GBNF (json_schema.h) and tool-call grammars (tool_grammar.h).
 *
 * - every case of tests/structured/schemas.json compiles, and its grammar
 *   accepts the listed valid examples and refuses the invalid ones (the
 *   script test checks those lists against ajv);
 * - integer and decimal bounds: over grids of values, the grammar accepts
 *   exactly the numbers within the bounds (exact decimal arithmetic here);
 * - patterns: on random strings, the grammar agrees with PCRE2 (an
 *   independent regex engine) on whether the pattern matches, and with
 *   minLength/maxLength every accepted string also has a valid length;
 * - bad schemas: status and message (keyword and JSON pointer); non-strict mode;
 * - tool calls in the Hermes, Llama 3 and Mistral syntaxes, with markers as
 *   special tokens of a real (written here) SentencePiece vocabulary;
 * - allocation failures. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <criterion/criterion.h>
#include <json-c/json.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "gguf.h"
#include "grammar.h"
#include "json_schema.h"
#include "tokenizer.h"
#include "tool_grammar.h"

static spud_grammar_vocab *bytes_vocab(void) {
    static char bytes[256];
    const char *pieces[256];
    size_t lens[256];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        pieces[i] = &bytes[i];
        lens[i] = 1;
    }
    spud_grammar_vocab *v;
    cr_assert_eq(spud_grammar_vocab_new(256, pieces, lens, NULL, &v), SPUD_OK);
    return v;
}

static spud_grammar *compile_schema(const char *json, bool strict) {
    char *gbnf = NULL;
    spud_status st = spud_json_schema_to_gbnf(json, strlen(json), strict, &gbnf);
    cr_assert_eq(st, SPUD_OK, "schema %s: %s", json, spud_last_error());
    spud_grammar *g = NULL;
    st = spud_grammar_parse(gbnf, strlen(gbnf), &g);
    cr_assert_eq(st, SPUD_OK, "the grammar of %s does not parse: %s\n%s", json, spud_last_error(), gbnf);
    spud_free(gbnf);
    return g;
}

/* Whether g matches all of text. */
static bool full_match(const spud_grammar *g, const spud_grammar_vocab *v, const char *text, size_t len) {
    spud_grammar_state *s;
    cr_assert_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_OK, "%s", spud_last_error());
    bool ok = spud_grammar_accept_bytes(s, text, len) == SPUD_OK && spud_grammar_is_complete(s);
    spud_grammar_state_free(s);
    return ok;
}

static bool matches(const spud_grammar *g, const spud_grammar_vocab *v, const char *text) {
    return full_match(g, v, text, strlen(text));
}

/* ---- the suite's schemas and examples ---- */

Test(json_schema, suite_examples, .timeout = 300) {
    json_object *cases = json_object_from_file(SPUD_SOURCE_DIR "/tests/structured/schemas.json");
    cr_assert_not_null(cases, "tests/structured/schemas.json");
    spud_grammar_vocab *v = bytes_vocab();
    size_t n_ex = 0;
    for (size_t i = 0; i < json_object_array_length(cases); i++) {
        json_object *c = json_object_array_get_idx(cases, i), *name, *schema, *list;
        json_object_object_get_ex(c, "name", &name);
        json_object_object_get_ex(c, "schema", &schema);
        char *gbnf = NULL;
        spud_status st = spud_json_schema_obj_to_gbnf(schema, true, &gbnf);
        cr_assert_eq(st, SPUD_OK, "%s: %s", json_object_get_string(name), spud_last_error());
        spud_grammar *g = NULL;
        cr_assert_eq(spud_grammar_parse(gbnf, strlen(gbnf), &g), SPUD_OK, "%s: %s\n%s", json_object_get_string(name),
                     spud_last_error(), gbnf);
        for (int valid = 0; valid < 2; valid++) {
            if (!json_object_object_get_ex(c, valid ? "valid" : "invalid", &list)) continue;
            for (size_t k = 0; k < json_object_array_length(list); k++) {
                json_object *ex = json_object_array_get_idx(list, k);
                const char *text = json_object_is_type(ex, json_type_string) &&
                                           !strncmp(json_object_get_string(ex), "RAW:", 4)
                                       ? json_object_get_string(ex) + 4
                                       : json_object_to_json_string_ext(ex, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
                cr_expect_eq(matches(g, v, text), valid, "%s: %s example %s", json_object_get_string(name),
                             valid ? "valid" : "invalid", text);
                n_ex++;
            }
        }
        spud_grammar_free(g);
        spud_free(gbnf);
    }
    cr_expect_gt(json_object_array_length(cases), 50u);
    cr_log_info("%zu examples", n_ex);
    json_object_put(cases);
    spud_grammar_vocab_free(v);
}

/* ---- numbers ---- */

static uint64_t rng(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

Test(json_schema, integer_ranges, .timeout = 300) {
    spud_grammar_vocab *v = bytes_vocab();
    uint64_t seed = 7;
    for (int t = 0; t < 60; t++) {
        /* bounds of 1 to 5 digits, either sign, inclusive or exclusive, sometimes one-sided */
        int64_t scale = (int64_t[]){10, 100, 1000, 100000}[rng(&seed) % 4];
        int64_t a = (int64_t)(rng(&seed) % (uint64_t)(2 * scale)) - scale, b = a + (int64_t)(rng(&seed) % (uint64_t)scale);
        int kind = (int)(rng(&seed) % 6);
        bool has_lo = kind != 4, has_hi = kind != 5, lo_x = kind == 1 || kind == 3, hi_x = kind == 2 || kind == 3;
        if (lo_x && hi_x && b - a < 2) b = a + 2;
        char schema[256];
        int n = snprintf(schema, sizeof schema, "{\"type\":\"integer\"");
        if (has_lo) n += snprintf(schema + n, sizeof schema - (size_t)n, ",\"%s\":%lld", lo_x ? "exclusiveMinimum" : "minimum", (long long)a);
        if (has_hi) n += snprintf(schema + n, sizeof schema - (size_t)n, ",\"%s\":%lld", hi_x ? "exclusiveMaximum" : "maximum", (long long)b);
        snprintf(schema + n, sizeof schema - (size_t)n, "}");
        int64_t first = has_lo ? (lo_x ? a + 1 : a) : INT64_MIN, last = has_hi ? (hi_x ? b - 1 : b) : INT64_MAX;
        if (first > last) { /* no integer: refused */
            char *gbnf = NULL;
            cr_expect_eq(spud_json_schema_to_gbnf(schema, strlen(schema), true, &gbnf), SPUD_ERR_FORMAT, "%s", schema);
            spud_free(gbnf);
            continue;
        }
        spud_grammar *g = compile_schema(schema, true);
        int64_t from = has_lo ? a - 40 : b - 300, to = has_hi ? b + 40 : a + 300;
        for (int64_t x = from; x <= to; x++) {
            bool in = (!has_lo || (lo_x ? x > a : x >= a)) && (!has_hi || (hi_x ? x < b : x <= b));
            char text[32];
            snprintf(text, sizeof text, "%lld", (long long)x);
            cr_assert_eq(matches(g, v, text), in, "%s: %s", schema, text);
        }
        cr_assert(!matches(g, v, "-0") || !has_lo || a <= 0, "%s: -0", schema);
        cr_assert(!matches(g, v, "007"), "%s: leading zeros", schema);
        cr_assert(!matches(g, v, "1.0"), "%s: a fraction", schema);
        spud_grammar_free(g);
    }
    spud_grammar_vocab_free(v);
}

/* value of a decimal string in thousandths, or INT64_MIN if it has more than 3 fraction digits
 * that are not zeros (then the caller compares with a tolerance-free rule: see below) */
static bool thousandths(const char *s, int64_t *out) {
    int64_t sign = 1, ip = 0, fp = 0;
    int fd = 0;
    if (*s == '-') sign = -1, s++;
    while (*s >= '0' && *s <= '9') ip = ip * 10 + (*s++ - '0');
    if (*s == '.') {
        s++;
        while (*s >= '0' && *s <= '9') {
            if (fd < 3) {
                fp = fp * 10 + (*s - '0');
            } else if (*s != '0') {
                return false;
            }
            fd++;
            s++;
        }
    }
    for (; fd < 3; fd++) fp *= 10;
    *out = sign * (ip * 1000 + fp);
    return true;
}

Test(json_schema, decimal_ranges, .timeout = 300) {
    spud_grammar_vocab *v = bytes_vocab();
    uint64_t seed = 11;
    for (int t = 0; t < 60; t++) {
        /* bounds in hundredths within +-20, so thousandths grids of +-25 cover them */
        int64_t a = (int64_t)(rng(&seed) % 4001) - 2000, b = a + (int64_t)(rng(&seed) % 1500);
        a *= 10, b *= 10; /* in thousandths */
        int kind = (int)(rng(&seed) % 6);
        bool has_lo = kind != 4, has_hi = kind != 5, lo_x = kind == 1 || kind == 3, hi_x = kind == 2 || kind == 3;
        if (a == b && (lo_x || hi_x)) b += 10;
        char schema[256];
        int n = snprintf(schema, sizeof schema, "{\"type\":\"number\"");
        if (has_lo) n += snprintf(schema + n, sizeof schema - (size_t)n, ",\"%s\":%.2f", lo_x ? "exclusiveMinimum" : "minimum", (double)a / 1000);
        if (has_hi) n += snprintf(schema + n, sizeof schema - (size_t)n, ",\"%s\":%.2f", hi_x ? "exclusiveMaximum" : "maximum", (double)b / 1000);
        snprintf(schema + n, sizeof schema - (size_t)n, "}");
        spud_grammar *g = compile_schema(schema, true);
        for (int64_t x = (has_lo ? a : b) - 2500; x <= (has_hi ? b : a) + 2500; x += (int64_t)(rng(&seed) % 7) + 1) {
            bool in = (!has_lo || (lo_x ? x > a : x >= a)) && (!has_hi || (hi_x ? x < b : x <= b));
            /* canonical form, then with trailing zeros, then without the integer part's zero */
            char forms[3][40];
            int64_t m = x < 0 ? -x : x;
            snprintf(forms[0], sizeof forms[0], "%s%lld.%03lld", x < 0 ? "-" : "", (long long)(m / 1000), (long long)(m % 1000));
            char *e = forms[0] + strlen(forms[0]);
            while (e[-1] == '0') *--e = 0;
            if (e[-1] == '.') *--e = 0;
            if (!strcmp(forms[0], "-0")) strcpy(forms[0], "0");
            snprintf(forms[1], sizeof forms[1], "%s%lld.%03lld0", x < 0 ? "-" : "", (long long)(m / 1000), (long long)(m % 1000));
            snprintf(forms[2], sizeof forms[2], "%s.%03lld", x < 0 ? "-" : "", (long long)(m % 1000));
            for (int f = 0; f < 3; f++) {
                bool ok = matches(g, v, forms[f]);
                int64_t val;
                if (ok) {
                    cr_assert(thousandths(forms[f], &val) && val == x);
                    cr_assert(in, "%s accepts %s, outside the bounds", schema, forms[f]);
                }
                if (f == 0) cr_assert_eq(ok, in, "%s: %s", schema, forms[f]); /* canonical forms: exactly */
                if (f == 2) cr_assert(!ok, "%s: %s has no integer digit", schema, forms[f]);
            }
        }
        spud_grammar_free(g);
    }
    spud_grammar_vocab_free(v);
}

/* ---- patterns against PCRE2 ---- */

/* JSON string literal of s in the one escape form spud's grammars produce. */
static void json_quote(const char *s, size_t n, char *out) {
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c == '\n') {
            out[o++] = '\\', out[o++] = 'n';
        } else if (c == '\t') {
            out[o++] = '\\', out[o++] = 't';
        } else if (c < 0x20) {
            o += (size_t)sprintf(out + o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    out[o] = 0;
}

typedef struct {
    const char *pattern, *alphabet;
    int min_len, max_len; /* -1: no such keyword */
} pattern_case;

static const pattern_case pattern_cases[] = {
    {"^[A-Z]{2,3}-[0-9]+$", "AZ-09x", -1, -1},
    {"ab", "abc", -1, -1},
    {"^(ab|a)(bc)?$", "abc", -1, -1},
    {"^a*b?a+$", "ab", -1, -1},
    {"^\\d{2}\\.\\w+\\s?$", "0.a_ Z\t", -1, -1},
    {"^[^a-c]+x$", "abxd\"\\", -1, -1},
    {"^(x|yz)*$", "xyz", -1, -1},
    {"[\"\\\\]{2}", "\"\\a", -1, -1},
    {"^a.c$", "abc\n", -1, -1},
    {"^(?:ab){1,3}c{0,2}$", "abc", -1, -1},
    {"^[a-z]+$", "abz1", 2, 4},
    {"ab", "abx", -1, 5},
    {"^x[0-9]*y?$", "x0y", 3, 6},
    {"^(ab)+c?$", "abc", 3, 5},
};

Test(json_schema, patterns_vs_pcre2, .timeout = 300) {
    spud_grammar_vocab *v = bytes_vocab();
    uint64_t seed = 5;
    for (size_t i = 0; i < sizeof pattern_cases / sizeof pattern_cases[0]; i++) {
        const pattern_case *c = &pattern_cases[i];
        json_object *so = json_object_new_object();
        json_object_object_add(so, "type", json_object_new_string("string"));
        json_object_object_add(so, "pattern", json_object_new_string(c->pattern));
        if (c->min_len >= 0) json_object_object_add(so, "minLength", json_object_new_int(c->min_len));
        if (c->max_len >= 0) json_object_object_add(so, "maxLength", json_object_new_int(c->max_len));
        const char *schema = json_object_to_json_string(so);
        spud_grammar *g = compile_schema(schema, true);
        int err;
        PCRE2_SIZE eoff;
        /* ECMAScript semantics: $ only at the very end (PCRE2 also matches before a final newline) */
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)c->pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_DOLLAR_ENDONLY,
                                       &err, &eoff, NULL);
        cr_assert_not_null(re, "%s", c->pattern);
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
        size_t na = strlen(c->alphabet);
        int n_match = 0;
        for (int t = 0; t < 3000; t++) {
            char s[16], q[128];
            size_t len = rng(&seed) % 9;
            for (size_t k = 0; k < len; k++) s[k] = c->alphabet[rng(&seed) % na];
            s[len] = 0;
            json_quote(s, len, q);
            bool re_ok = pcre2_match(re, (PCRE2_SPTR)s, len, 0, 0, md, NULL) >= 0;
            bool len_ok = (c->min_len < 0 || (int)len >= c->min_len) && (c->max_len < 0 || (int)len <= c->max_len);
            bool g_ok = matches(g, v, q);
            if (g_ok) cr_assert(re_ok && len_ok, "%s accepts %s", schema, q);
            if (c->min_len < 0 && c->max_len < 0) cr_assert_eq(g_ok, re_ok, "%s: %s (pcre2 %d)", schema, q, re_ok);
            n_match += g_ok;
        }
        cr_expect_gt(n_match, 0, "%s: no random string matched", schema);
        pcre2_match_data_free(md);
        pcre2_code_free(re);
        json_object_put(so);
        spud_grammar_free(g);
    }
    spud_grammar_vocab_free(v);
}

/* ---- bad schemas ---- */

Test(json_schema, bad_schemas) {
    json_object *cases = json_object_from_file(SPUD_SOURCE_DIR "/tests/structured/bad_schemas.json");
    cr_assert_not_null(cases);
    for (size_t i = 0; i < json_object_array_length(cases); i++) {
        json_object *c = json_object_array_get_idx(cases, i), *raw, *schema, *error, *so, *status;
        json_object_object_get_ex(c, "error", &error);
        json_object_object_get_ex(c, "status", &status);
        const char *text = json_object_object_get_ex(c, "raw", &raw)
                               ? json_object_get_string(raw)
                               : (json_object_object_get_ex(c, "schema", &schema),
                                  json_object_to_json_string_ext(schema, JSON_C_TO_STRING_PLAIN));
        bool strict_only = json_object_object_get_ex(c, "strict_only", &so) && json_object_get_boolean(so);
        char *gbnf = NULL;
        spud_status st = spud_json_schema_to_gbnf(text, strlen(text), true, &gbnf);
        cr_expect_neq(st, SPUD_OK, "%s compiled", text);
        cr_expect_null(gbnf);
        cr_expect(strstr(spud_last_error(), json_object_get_string(error)) != NULL, "%s: got '%s', want '%s'", text,
                  spud_last_error(), json_object_get_string(error));
        const char *sn = json_object_get_string(status);
        spud_status want = !strcmp(sn, "unsupported") ? SPUD_ERR_UNSUPPORTED : !strcmp(sn, "range") ? SPUD_ERR_RANGE : SPUD_ERR_FORMAT;
        cr_expect_eq(st, want, "%s: status %s, want %s", text, spud_status_name(st), spud_status_name(want));
        st = spud_json_schema_to_gbnf(text, strlen(text), false, &gbnf);
        if (strict_only) {
            cr_expect_eq(st, SPUD_OK, "%s without strict mode: %s", text, spud_last_error());
            spud_grammar *g = NULL;
            cr_expect_eq(spud_grammar_parse(gbnf, strlen(gbnf), &g), SPUD_OK, "%s", spud_last_error());
            spud_grammar_free(g);
        } else {
            cr_expect_neq(st, SPUD_OK, "%s without strict mode", text);
        }
        spud_free(gbnf);
    }
    json_object_put(cases);
}

Test(json_schema, messages_and_utf8) {
    /* Found by fuzzing: strings that are not UTF-8 (json-c passes them through) and
     * keys with control characters (the message must stay on one line). */
    static const char *bad_utf8 = "{\"enum\": [\"ok\", \"r\xF4\"]}";
    char *gbnf = NULL;
    cr_expect_eq(spud_json_schema_to_gbnf(bad_utf8, strlen(bad_utf8), true, &gbnf), SPUD_ERR_FORMAT);
    cr_expect(strstr(spud_last_error(), "/enum/1: a string is not valid UTF-8"), "%s", spud_last_error());
    static const char *bad_key = "{\"properties\": {\"a\\nb\": {\"not\": {}}}}";
    cr_expect_eq(spud_json_schema_to_gbnf(bad_key, strlen(bad_key), true, &gbnf), SPUD_ERR_UNSUPPORTED);
    cr_expect(strstr(spud_last_error(), "/properties/a\\nb: unsupported keyword 'not'"), "%s", spud_last_error());
    cr_expect_null(strchr(spud_last_error(), '\n'));
    static const char *literal = "true";
    cr_expect_eq(spud_json_schema_to_gbnf(literal, strlen(literal), true, &gbnf), SPUD_OK, "a bare literal: %s", spud_last_error());
    spud_free(gbnf);
    static const char *incomplete = "{\"type\": \"string\"";
    cr_expect_eq(spud_json_schema_to_gbnf(incomplete, strlen(incomplete), true, &gbnf), SPUD_ERR_FORMAT);
}

Test(json_schema, json_object_mode) {
    char *gbnf;
    cr_assert_eq(spud_json_schema_any_object_gbnf(&gbnf), SPUD_OK);
    spud_grammar *g;
    cr_assert_eq(spud_grammar_parse(gbnf, strlen(gbnf), &g), SPUD_OK, "%s", spud_last_error());
    spud_grammar_vocab *v = bytes_vocab();
    cr_expect(matches(g, v, "{}"));
    cr_expect(matches(g, v, "{\"a\": [1, {\"b\": null}], \"c\": \"\\u00e9\"}"));
    cr_expect(!matches(g, v, "[]"));
    cr_expect(!matches(g, v, "{} "), "nothing after the value");
    cr_expect(!matches(g, v, "{\"a\":}"));
    spud_grammar_free(g);
    spud_grammar_vocab_free(v);
    spud_free(gbnf);
}

Test(json_schema, recursion_and_refs) {
    spud_grammar_vocab *v = bytes_vocab();
    spud_grammar *g = compile_schema(
        "{\"$defs\":{\"n\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},"
        "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/n\"}}},\"required\":[\"v\"],"
        "\"additionalProperties\":false}},\"$ref\":\"#/$defs/n\"}",
        true);
    cr_expect(matches(g, v, "{\"v\":1}"));
    cr_expect(matches(g, v, "{\"v\":1,\"kids\":[{\"v\":2,\"kids\":[{\"v\":3},{\"v\":4}]}]}"));
    cr_expect(!matches(g, v, "{\"v\":1,\"kids\":[{}]}"));
    cr_expect(!matches(g, v, "{\"kids\":[]}"));
    spud_grammar_free(g);
    /* JSON pointer escapes and percent-encoding in $ref */
    g = compile_schema("{\"$defs\":{\"a/b\":{\"const\":1},\"c~d\":{\"const\":2},\"e f\":{\"const\":3}},\"type\":\"array\","
                       "\"prefixItems\":[{\"$ref\":\"#/$defs/a~1b\"},{\"$ref\":\"#/$defs/c~0d\"},{\"$ref\":\"#/$defs/e%20f\"}],"
                       "\"items\":false}",
                       true);
    cr_expect(matches(g, v, "[1,2,3]"));
    cr_expect(!matches(g, v, "[1,2]"));
    spud_grammar_free(g);
    spud_grammar_vocab_free(v);
}

/* ---- tool calls ---- */

static const char *tools_json =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{\"city\":{\"type\":\"string\",\"maxLength\":20},\"unit\":{\"enum\":[\"c\",\"f\"]}},"
    "\"required\":[\"city\"],\"additionalProperties\":false}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"ping\"}}]";

static spud_grammar *tool_grammar(spud_tool_format fmt, spud_tool_choice choice, const char *fn, bool parallel,
                                  const spud_tokenizer *tok, char **trigger) {
    json_object *tools = json_tokener_parse(tools_json);
    spud_tool_grammar tg;
    cr_assert_eq(spud_tool_grammar_build(tools, fmt, choice, fn, parallel, tok, true, &tg), SPUD_OK, "%s", spud_last_error());
    json_object_put(tools);
    spud_grammar *g = NULL;
    cr_assert_eq(spud_grammar_parse(tg.gbnf, strlen(tg.gbnf), &g), SPUD_OK, "%s\n%s", spud_last_error(), tg.gbnf);
    if (trigger) {
        *trigger = tg.trigger;
        tg.trigger = NULL;
    }
    spud_tool_grammar_free(&tg);
    return g;
}

Test(tool_grammar, call_syntaxes) {
    spud_grammar_vocab *v = bytes_vocab();
    spud_grammar *g = tool_grammar(SPUD_TOOL_FORMAT_HERMES, SPUD_TOOL_CHOICE_REQUIRED, NULL, false, NULL, NULL);
    const char *call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>";
    cr_expect(matches(g, v, call));
    cr_expect(matches(g, v, "<tool_call>{\"name\":\"ping\",\"arguments\":{}}</tool_call>"));
    cr_expect(!matches(g, v, "<tool_call>{\"name\":\"pong\",\"arguments\":{}}</tool_call>"), "undeclared function");
    cr_expect(!matches(g, v, "<tool_call>{\"name\":\"ping\",\"arguments\":{\"x\":1}}</tool_call>"), "bad arguments");
    cr_expect(!matches(g, v, "<tool_call>{\"name\":\"get_weather\",\"arguments\":{}}</tool_call>"), "missing required");
    cr_expect(!matches(g, v, "Sure! <tool_call>{\"name\":\"ping\",\"arguments\":{}}</tool_call>"), "no free text when required");
    char two[600];
    snprintf(two, sizeof two, "%s\n%s", call, call);
    cr_expect(!matches(g, v, two), "one call without parallel calls");
    spud_grammar_free(g);
    g = tool_grammar(SPUD_TOOL_FORMAT_HERMES, SPUD_TOOL_CHOICE_REQUIRED, NULL, true, NULL, NULL);
    cr_expect(matches(g, v, two));
    spud_grammar_free(g);
    /* named function */
    g = tool_grammar(SPUD_TOOL_FORMAT_HERMES, SPUD_TOOL_CHOICE_FUNCTION, "ping", false, NULL, NULL);
    cr_expect(!matches(g, v, call));
    cr_expect(matches(g, v, "<tool_call>{\"name\":\"ping\",\"arguments\":{}}</tool_call>"));
    spud_grammar_free(g);
    /* Llama 3: "parameters", one call */
    g = tool_grammar(SPUD_TOOL_FORMAT_LLAMA3, SPUD_TOOL_CHOICE_REQUIRED, NULL, false, NULL, NULL);
    cr_expect(matches(g, v, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}"));
    cr_expect(!matches(g, v, "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}"));
    spud_grammar_free(g);
    /* Mistral: [TOOL_CALLS] and a list */
    g = tool_grammar(SPUD_TOOL_FORMAT_MISTRAL, SPUD_TOOL_CHOICE_REQUIRED, NULL, true, NULL, NULL);
    cr_expect(matches(g, v, "[TOOL_CALLS][{\"name\": \"ping\", \"arguments\": {}}, {\"name\":\"get_weather\",\"arguments\":{\"city\":\"\"}}]"));
    cr_expect(!matches(g, v, "[TOOL_CALLS][]"));
    cr_expect(!matches(g, v, "[{\"name\": \"ping\", \"arguments\": {}}]"));
    spud_grammar_free(g);
    /* auto: the grammar matches what follows the trigger */
    char *trigger = NULL;
    g = tool_grammar(SPUD_TOOL_FORMAT_HERMES, SPUD_TOOL_CHOICE_AUTO, NULL, false, NULL, &trigger);
    cr_expect_str_eq(trigger, "<tool_call>");
    cr_expect(matches(g, v, "\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>"));
    spud_free(trigger);
    spud_grammar_free(g);
    g = tool_grammar(SPUD_TOOL_FORMAT_LLAMA3, SPUD_TOOL_CHOICE_AUTO, NULL, false, NULL, &trigger);
    cr_expect_str_eq(trigger, "{\"name\"");
    cr_expect(matches(g, v, ": \"ping\", \"parameters\": {}}"));
    spud_free(trigger);
    spud_grammar_free(g);
    /* none: no grammar */
    json_object *tools = json_tokener_parse(tools_json);
    spud_tool_grammar tg;
    cr_assert_eq(spud_tool_grammar_build(tools, SPUD_TOOL_FORMAT_HERMES, SPUD_TOOL_CHOICE_NONE, NULL, false, NULL, true, &tg), SPUD_OK);
    cr_expect_null(tg.gbnf);
    /* errors */
    cr_expect_eq(spud_tool_grammar_build(tools, SPUD_TOOL_FORMAT_HERMES, SPUD_TOOL_CHOICE_FUNCTION, "nope", false, NULL, true, &tg), SPUD_ERR_INVALID);
    cr_expect(strstr(spud_last_error(), "'nope'"), "%s", spud_last_error());
    json_object_put(tools);
    static const char *bad[][2] = {
        {"[]", "non-empty array"},
        {"[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}]", "function.name"},
        {"[{\"type\":\"code\"}]", "only tools of type \"function\""},
        {"[{\"name\":\"f\"},{\"name\":\"f\"}]", "declared twice"},
        {"[{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{\"x\":{\"not\":{}}}}}]",
         "tools[0] (f): json schema: /properties/x: unsupported keyword 'not'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tools = json_tokener_parse(bad[i][0]);
        cr_expect_neq(spud_tool_grammar_build(tools, SPUD_TOOL_FORMAT_HERMES, SPUD_TOOL_CHOICE_REQUIRED, NULL, false, NULL, true, &tg), SPUD_OK);
        cr_expect(strstr(spud_last_error(), bad[i][1]), "%s: %s", bad[i][0], spud_last_error());
        json_object_put(tools);
    }
    spud_grammar_vocab_free(v);
}

/* A SentencePiece vocabulary with byte tokens and tool-call markers as
 * special tokens, written to a GGUF and loaded by the tokenizer. */
static void write_marker_vocab(const char *path) {
    enum { N = 3 + 256 + 5 };
    const char *toks[N];
    char bytes[256][8];
    int32_t types[N];
    float scores[N];
    toks[0] = "<unk>", toks[1] = "<s>", toks[2] = "</s>";
    types[0] = 2, types[1] = 3, types[2] = 3;
    for (int i = 0; i < 256; i++) {
        snprintf(bytes[i], sizeof bytes[i], "<0x%02X>", i);
        toks[3 + i] = bytes[i];
        types[3 + i] = 6;
    }
    const char *extra[] = {"<tool_call>", "</tool_call>", "[TOOL_CALLS]", "\xE2\x96\x81", "<|im_end|>"};
    int32_t xtypes[] = {4, 4, 3, 1, 3};
    for (int i = 0; i < 5; i++) {
        toks[259 + i] = extra[i];
        types[259 + i] = xtypes[i];
    }
    for (int i = 0; i < N; i++) scores[i] = -(float)i;
    spud_gguf_writer *w = spud_gguf_writer_new();
    cr_assert_not_null(w);
    cr_assert_eq(spud_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama"), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, N), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", SPUD_GGUF_INT32, types, N), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_arr(w, "tokenizer.ggml.scores", SPUD_GGUF_FLOAT32, scores, N), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_write(w, path), SPUD_OK, "%s", spud_last_error());
    spud_gguf_writer_free(w);
}

Test(tool_grammar, special_token_markers_and_lazy_auto) {
    char path[] = "/tmp/spud-test-markers-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    write_marker_vocab(path);
    spud_gguf *gg;
    spud_tokenizer *tok;
    cr_assert_eq(spud_gguf_open(path, &gg), SPUD_OK, "%s", spud_last_error());
    cr_assert_eq(spud_tok_load(gg, &tok), SPUD_OK, "%s", spud_last_error());
    spud_grammar_vocab *v;
    cr_assert_eq(spud_grammar_vocab_from_tokenizer(tok, &v), SPUD_OK);
    int32_t open_id = 259, close_id = 260, tc_id = 261;
    /* Mistral, required: the control token [TOOL_CALLS] is the only way to start. */
    spud_grammar *g = tool_grammar(SPUD_TOOL_FORMAT_MISTRAL, SPUD_TOOL_CHOICE_REQUIRED, NULL, false, tok, NULL);
    spud_grammar_state *s;
    cr_assert_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_OK, "%s", spud_last_error());
    cr_expect(spud_grammar_allows(s, tc_id));
    cr_expect(!spud_grammar_allows(s, 3 + '['), "not spelled in text");
    cr_assert_eq(spud_grammar_accept(s, tc_id), SPUD_OK);
    const char *body = "[{\"name\":\"ping\",\"arguments\":{}}]";
    cr_assert_eq(spud_grammar_accept_bytes(s, body, strlen(body)), SPUD_OK, "%s", spud_last_error());
    cr_expect(spud_grammar_is_finished(s));
    spud_grammar_state_free(s);
    spud_grammar_free(g);
    /* Hermes, auto: free text, then the <tool_call> token triggers the grammar. */
    char *trigger;
    g = tool_grammar(SPUD_TOOL_FORMAT_HERMES, SPUD_TOOL_CHOICE_AUTO, NULL, true, tok, &trigger);
    const char *trig[] = {trigger};
    cr_assert_eq(spud_grammar_state_new(g, v, trig, 1, &s), SPUD_OK, "%s", spud_last_error());
    cr_assert_eq(spud_grammar_accept_bytes(s, "Let me check. ", 14), SPUD_OK);
    cr_expect(!spud_grammar_is_active(s));
    cr_assert_eq(spud_grammar_accept(s, open_id), SPUD_OK);
    cr_expect(spud_grammar_is_active(s));
    const char *args = "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n";
    cr_assert_eq(spud_grammar_accept_bytes(s, args, strlen(args)), SPUD_OK, "%s", spud_last_error());
    cr_expect(!spud_grammar_allows(s, 3 + '<'), "the closing marker is the special token");
    cr_assert_eq(spud_grammar_accept(s, close_id), SPUD_OK, "%s", spud_last_error());
    cr_expect(spud_grammar_is_complete(s));
    cr_expect(spud_grammar_allows(s, 2), "</s> once complete");
    cr_assert_eq(spud_grammar_accept(s, open_id), SPUD_OK, "a second call (parallel)");
    spud_grammar_state_free(s);
    spud_free(trigger);
    spud_grammar_free(g);
    spud_grammar_vocab_free(v);
    spud_tok_free(tok);
    spud_gguf_close(gg);
    unlink(path);
}

/* ---- allocation failures ---- */

static spud_status oom_scenario(void) {
    static const char *schema =
        "{\"type\":\"object\",\"$defs\":{\"p\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"number\","
        "\"minimum\":-1.5,\"exclusiveMaximum\":20}},\"required\":[\"x\"]}},\"properties\":{\"a\":{\"$ref\":\"#/$defs/p\"},"
        "\"b\":{\"type\":\"string\",\"pattern\":\"^[a-z]+(-[0-9]{2})?$\",\"maxLength\":9},\"c\":{\"oneOf\":[{\"type\":\"null\"},"
        "{\"type\":\"array\",\"items\":{\"enum\":[1,\"x\"]},\"maxItems\":3}]},\"d\":{\"allOf\":[{\"type\":\"integer\"},{\"minimum\":3}]},"
        "\"e\":{\"type\":\"string\",\"format\":\"date-time\"}},\"additionalProperties\":{\"type\":\"boolean\"}}";
    char *gbnf = NULL;
    spud_status st = spud_json_schema_to_gbnf(schema, strlen(schema), true, &gbnf);
    spud_free(gbnf);
    if (st) return st;
    json_object *tools = json_tokener_parse(tools_json);
    spud_tool_grammar tg;
    st = spud_tool_grammar_build(tools, SPUD_TOOL_FORMAT_HERMES, SPUD_TOOL_CHOICE_AUTO, NULL, true, NULL, true, &tg);
    json_object_put(tools);
    if (!st) spud_tool_grammar_free(&tg);
    return st;
}

Test(json_schema, allocation_failures, .timeout = 300) {
    cr_assert_eq(oom_scenario(), SPUD_OK, "%s", spud_last_error());
    long n = 0;
    for (;; n++) {
        spud_alloc_fail_after(n);
        spud_status st = oom_scenario();
        spud_alloc_fail_after(-1);
        if (st == SPUD_OK) break;
        cr_assert_eq(st, SPUD_ERR_NOMEM, "failure %ld: %s (%s)", n, spud_status_name(st), spud_last_error());
        cr_assert(n < 1000000);
    }
    cr_log_info("allocation failures tried: %ld", n);
}
