/* test_grammar.c: the GBNF parser and matcher (grammar.h).
 *
 * - match tables: hand-written strings each grammar must match fully, as a
 *   prefix only, or refuse (UTF-8 validity included);
 * - malformed grammars: the message names the line and column;
 * - masks on real vocabularies (GPT-2 byte-level BPE, Llama 2 SentencePiece
 *   with byte tokens) against a reference that walks each token's bytes on a
 *   second matcher (no trie, no mask cache), along random walks, also with a
 *   DFA budget so small that every call rebuilds the tables;
 * - end of generation only when complete; lazy grammars and triggers; token
 *   references and control tokens; ambiguity and size limits; every
 *   allocation failure. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "gguf.h"
#include "grammar.h"
#include "tokenizer.h"

#define VOCAB_DIR SPUD_SHARED_DIR "/vocab"

static spud_grammar *parse_ok(const char *text) {
    spud_grammar *g = NULL;
    spud_status st = spud_grammar_parse(text, strlen(text), &g);
    cr_assert_eq(st, SPUD_OK, "grammar %s: %s", text, spud_last_error());
    return g;
}

/* A vocabulary of the 256 single bytes, then extra pieces (flags may be NULL). */
static spud_grammar_vocab *byte_vocab(const char *const *extra, size_t n_extra, const uint8_t *extra_flags) {
    size_t n = 256 + n_extra;
    const char **pieces = malloc(n * sizeof *pieces);
    size_t *lens = malloc(n * sizeof *lens);
    uint8_t *flags = calloc(n, 1);
    static char bytes[256];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        pieces[i] = &bytes[i];
        lens[i] = 1;
    }
    for (size_t i = 0; i < n_extra; i++) {
        pieces[256 + i] = extra[i];
        lens[256 + i] = strlen(extra[i]);
        flags[256 + i] = extra_flags ? extra_flags[i] : 0;
    }
    spud_grammar_vocab *v = NULL;
    cr_assert_eq(spud_grammar_vocab_new((int32_t)n, pieces, lens, flags, &v), SPUD_OK, "%s", spud_last_error());
    free(pieces);
    free(lens);
    free(flags);
    return v;
}

enum { REFUSE = 0, PREFIX = 1, FULL = 2 };

/* How g matches text: refused, a prefix of a match, or a full match. */
static int match(const spud_grammar *g, const spud_grammar_vocab *v, const char *text, size_t len) {
    spud_grammar_state *s;
    cr_assert_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_OK, "%s", spud_last_error());
    int r = spud_grammar_accept_bytes(s, text, len) != SPUD_OK ? REFUSE : spud_grammar_is_complete(s) ? FULL : PREFIX;
    spud_grammar_state_free(s);
    return r;
}

typedef struct {
    const char *grammar;
    const char *full[8], *prefix[8], *refuse[8];
} match_case;

static const match_case match_cases[] = {
    {"root ::= \"abc\"", {"abc"}, {"", "a", "ab"}, {"abd", "abcd", "b", "ABC"}},
    {"root ::= [a-c]+ \"x\"?", {"a", "abc", "cx", "bbbbx"}, {""}, {"x", "d", "axx", "ax "}},
    {"root ::= [^a-z]",
     {"A", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\n", "\x7F", "\xF4\x8F\xBF\xBF"},
     {"", "\xC3", "\xF0\x9F", "\xF0\x9F\x98"},
     /* a, invalid continuation, surrogate, overlong, stray bytes, beyond U+10FFFF */
     {"a", "\xC3\x28", "\xED\xA0\x80", "\xC0\x80", "\xFF", "\x80", "\xF4\x90\x80\x80", "AB"}},
    {"root ::= .{2,3}", {"ab", "\xC3\xA9\xC3\xA9", "abc", "\n\t "}, {"a", "\xC3\xA9"}, {"abcd", "\xED\xBF\xBF", "\xC1\xBF"}},
    {"root ::= \"a\"{2} \"b\"{0,2} \"c\"{1,}", {"aac", "aabbccc", "aabc"}, {"a", "aa", "aab", "aabb"}, {"ac", "aabbbc", "aab c"}},
    {"root ::= \"a\"{,3}", {"", "a", "aaa"}, {}, {"aaaa", "b"}},
    {"root ::= p*\np ::= \"(\" p* \")\"", {"", "()", "(())()", "((()))"}, {"(", "((", "(()", "()("}, {")", "())", "(()))", "(a)"}},
    {"root ::= item (\",\" root)?\nitem ::= [0-9]+", {"1", "1,22,333"}, {"1,", ""}, {",1", "1,,2", "1 ,2"}},
    {"root ::= \"\\x41\\u00e9\\U0001F600\\n\\t\\\\\\\"\" [\\]\\-]",
     {"A\xC3\xA9\xF0\x9F\x98\x80\n\t\\\"]", "A\xC3\xA9\xF0\x9F\x98\x80\n\t\\\"-"}, {"A"}, {"A\xC3\xA9\xF0\x9F\x98\x80\n\t\\\"a"}},
    {"# header comment\nroot ::= a | # trailing comment\n  b\na ::= \"A\" # c\nb ::= (\n  \"B\"\n  | \"C\" )\n",
     {"A", "B", "C"}, {""}, {"AB", "D"}},
    {"root ::= \"x\" e \"y\"\ne ::= | \"e\"", {"xy", "xey"}, {"x", "xe"}, {"xee", "y"}},
    {"root ::= (\"ab\" | \"a\") \"bc\"", {"abbc", "abc"}, {"ab", "abb"}, {"ac", "abcc"}},
    {"root ::= ( [0-9] | [a-f] ){4} ( \"-\" root )?", {"00af", "0123-abcd-ffff"}, {"012", "0123-"}, {"012g", "-"}},
    {"root ::= [\\x00-\\x1F\"\\\\]", {"\"", "\\", "\x01"}, {""}, {"a", " "}},
    {"root ::= [a-zA-Z_] [a-zA-Z0-9_]*  ws \"=\" ws [0-9]+\nws ::= [ \\t]*", {"x=1", "_a1 \t= 42"}, {"x ", "x="}, {"1x=1", "x==1"}},
};

Test(grammar, match_tables) {
    spud_grammar_vocab *v = byte_vocab(NULL, 0, NULL);
    for (size_t i = 0; i < sizeof match_cases / sizeof match_cases[0]; i++) {
        const match_case *c = &match_cases[i];
        spud_grammar *g = parse_ok(c->grammar);
        for (int k = 0; k < 8; k++) {
            if (c->full[k])
                cr_expect_eq(match(g, v, c->full[k], strlen(c->full[k])), FULL, "%s: '%s' should match", c->grammar, c->full[k]);
            if (c->prefix[k])
                cr_expect_eq(match(g, v, c->prefix[k], strlen(c->prefix[k])), PREFIX, "%s: '%s' should be a prefix",
                             c->grammar, c->prefix[k]);
            if (c->refuse[k])
                cr_expect_eq(match(g, v, c->refuse[k], strlen(c->refuse[k])), REFUSE, "%s: '%s' should be refused",
                             c->grammar, c->refuse[k]);
        }
        spud_grammar_free(g);
    }
    spud_grammar_vocab_free(v);
}

Test(grammar, nul_bytes_and_all_bytes) {
    spud_grammar_vocab *v = byte_vocab(NULL, 0, NULL);
    spud_grammar *g = parse_ok("root ::= [\\x00-\\x7F]*");
    char all[128];
    for (int i = 0; i < 128; i++) all[i] = (char)i;
    cr_expect_eq(match(g, v, all, 128), FULL);
    cr_expect_eq(match(g, v, "\x80", 1), REFUSE);
    spud_grammar_free(g);
    spud_grammar_vocab_free(v);
}

typedef struct {
    const char *grammar, *error;
} bad_case;

static const bad_case bad_cases[] = {
    {"root ::= \"abc", "line 1, column 10: unterminated string literal"},
    {"root ::= foo", "line 1, column 10: undefined rule 'foo'"},
    {"root ::= [z-a]", "line 1, column 13: character range is backwards"},
    {"root ::= root \"a\" | \"b\"", "line 1, column 1: left recursion: root -> root"},
    {"root ::= a\na ::= b \"x\"\nb ::= c\nc ::= a | \"y\"", "line 2, column 1: left recursion: a -> b -> c -> a"},
    {"root ::= a\na ::= e a \"x\" | \"y\"\ne ::= \"\" | \"e\"", "line 2, column 1: left recursion: a -> a"},
    {"a ::= \"x\"", "grammar: no 'root' rule"},
    {"root ::= \"a\" )", "line 1, column 14: unexpected ')'"},
    {"root ::= ( \"a\"", "line 1, column 10: expecting ')' to close this '('"},
    {"root ::= \"a\"{3,1}", "line 1, column 13: repetition {3,1} has max below min"},
    {"root ::= \"\\q\"", "line 1, column 11: unknown escape '\\q'"},
    {"root ::= x\nx ::= \"a\" x", "line 2, column 1: rule 'x' can never finish"},
    {"root ::= []", "line 1, column 10: character class matches no character"},
    {"root ::= [\\uD800-\\uDFFF]", "line 1, column 10: character class matches no character"},
    {"# comment\nroot ::= item+\n\nitem ::= \"a\" | * \"b\"", "line 4, column 16: '*' with nothing before it"},
    {"root ::= \"a\"\nroot ::= \"b\"", "line 2, column 1: rule 'root' is defined twice"},
    {"root := \"a\"", "line 1, column 6: expecting '::=' after rule name 'root'"},
    {"root ::= \"a\" \"b\" ::= \"c\"", "line 1, column 18: unexpected ':'"},
    {"root ::= <[12]", "line 1, column 10: expecting a token id"},
    {"root ::= <>", "line 1, column 10: expecting a token"},
    {"root ::= \"\\x4\"", "line 1, column 11: expecting 2 hex digits after '\\x'"},
    {"root ::= \"\\U00110000\"", "line 1, column 11: code point U+110000 is beyond U+10FFFF"},
    {"root ::= \"\\uD800\"", "line 1, column 10: surrogate code point U+D800 in a literal"},
    {"root ::= \"a\"{2", "line 1, column 13: expecting '}' to close this '{'"},
    {"root ::= \"a\"{200000}", "repetition count above 100000"},
    {"root ::= \"\xC3\x28\"", "line 1, column 11: invalid UTF-8"},
    {"root ::= (\"a\"{1000}){1000}{10}", "would exceed"},
    {"", "grammar: no 'root' rule"},
    {"\n\n  # only a comment\n", "grammar: no 'root' rule"},
};

Test(grammar, malformed) {
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        spud_grammar *g = (spud_grammar *)1;
        spud_status st = spud_grammar_parse(bad_cases[i].grammar, strlen(bad_cases[i].grammar), &g);
        cr_expect_neq(st, SPUD_OK, "'%s' parsed", bad_cases[i].grammar);
        cr_expect_null(g);
        cr_expect(strstr(spud_last_error(), bad_cases[i].error) != NULL, "'%s': got '%s', want '%s'",
                  bad_cases[i].grammar, spud_last_error(), bad_cases[i].error);
    }
    /* Nesting too deep for the parser is an error, not a stack overflow. */
    char deep[2000];
    size_t n = (size_t)snprintf(deep, sizeof deep, "root ::= ");
    for (int i = 0; i < 500; i++) deep[n++] = '(';
    deep[n] = 0;
    spud_grammar *g;
    cr_expect_eq(spud_grammar_parse(deep, n, &g), SPUD_ERR_FORMAT);
    cr_expect(strstr(spud_last_error(), "nested too deeply"), "%s", spud_last_error());
}

/* ---- masks on real vocabularies ---- */

typedef struct {
    spud_gguf *g;
    spud_tokenizer *t;
    spud_grammar_vocab *v;
} real_vocab;

static real_vocab open_vocab(const char *name) {
    real_vocab r = {0};
    char path[512];
    snprintf(path, sizeof path, "%s/%s", VOCAB_DIR, name);
    cr_assert_eq(spud_gguf_open(path, &r.g), SPUD_OK, "%s: %s", path, spud_last_error());
    cr_assert_eq(spud_tok_load(r.g, &r.t), SPUD_OK, "%s: %s", path, spud_last_error());
    cr_assert_eq(spud_grammar_vocab_from_tokenizer(r.t, &r.v), SPUD_OK, "%s", spud_last_error());
    return r;
}

static void close_vocab(real_vocab *r) {
    spud_grammar_vocab_free(r->v);
    spud_tok_free(r->t);
    spud_gguf_close(r->g);
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static const char *json_gbnf =
    "root   ::= object\n"
    "value  ::= object | array | string | number | (\"true\" | \"false\" | \"null\") ws\n"
    "object ::= \"{\" ws ( string \":\" ws value (\",\" ws string \":\" ws value)* )? \"}\" ws\n"
    "array  ::= \"[\" ws ( value (\",\" ws value)* )? \"]\" ws\n"
    "string ::= \"\\\"\" ( [^\"\\\\\\x7F\\x00-\\x1F] | \"\\\\\" ([\"\\\\bfnrt] | \"u\" [0-9a-fA-F]{4}) )* \"\\\"\" ws\n"
    "number ::= (\"-\"? ([0-9] | [1-9] [0-9]{0,15})) (\".\" [0-9]+)? ([eE] [-+]? [0-9] [1-9]?)? ws\n"
    "ws ::= | \" \" | \"\\n\" [ \\t]{0,20}\n";

static const char *mask_grammars[] = {
    NULL, /* json_gbnf */
    "root ::= \"SELECT \" cols \" FROM \" [a-z]+ (\" WHERE \" [a-z]+ \" = \" [0-9]+)? \";\"\n"
    "cols ::= \"*\" | [a-z]+ (\", \" [a-z]+)*",
    "root ::= ( [^\\x00-\\x7F] | [0-9] )+ \"!\"",  /* non-ASCII: byte tokens mid-character */
    "root ::= p+\np ::= \"(\" p* \")\" | \"[\" p* \"]\"",
    "root ::= \"The answer is \" ( \"yes\" | \"no\" ) \".\"",
};

/* Along random walks, the trie mask must equal a token-by-token check on a
 * second matcher. budget: the first matcher's DFA budget (0: default). */
static void check_masks(real_vocab *rv, size_t budget, int walks, int steps, uint64_t seed) {
    int32_t n = spud_grammar_vocab_n(rv->v);
    uint32_t *bits = malloc(((size_t)n + 31) / 32 * 4);
    int32_t *allowed = malloc((size_t)n * sizeof *allowed);
    float *logits = malloc((size_t)n * sizeof *logits);
    for (size_t gi = 0; gi < sizeof mask_grammars / sizeof mask_grammars[0]; gi++) {
        const char *text = mask_grammars[gi] ? mask_grammars[gi] : json_gbnf;
        spud_grammar *g = parse_ok(text);
        for (int w = 0; w < walks; w++) {
            spud_grammar_state *a, *b;
            cr_assert_eq(spud_grammar_state_new(g, rv->v, NULL, 0, &a), SPUD_OK);
            cr_assert_eq(spud_grammar_state_new(g, rv->v, NULL, 0, &b), SPUD_OK);
            if (budget) spud_grammar_state_set_budget(a, budget);
            for (int step = 0; step < steps; step++) {
                spud_status st = spud_grammar_mask(a, bits);
                if (st == SPUD_ERR_RANGE) break; /* this vocabulary cannot spell any continuation */
                cr_assert_eq(st, SPUD_OK, "%s", spud_last_error());
                int32_t na = 0, n_eog = 0;
                for (int32_t id = 0; id < n; id++) {
                    bool bit = (bits[id >> 5] >> (id & 31)) & 1;
                    bool ref = spud_grammar_allows(b, id);
                    cr_assert_eq(bit, ref, "grammar %zu walk %d step %d: token %d: mask %d, reference %d", gi, w, step,
                                 id, bit, ref);
                    if (bit && spud_tok_is_eog(rv->t, id)) n_eog++;
                    if (bit && !spud_tok_is_eog(rv->t, id)) allowed[na++] = id;
                }
                cr_assert_eq(n_eog > 0, spud_grammar_is_complete(a), "EOG offered iff complete");
                for (int32_t id = 0; id < n; id++) logits[id] = 1.0f;
                cr_assert_eq(spud_grammar_apply(a, logits, n), SPUD_OK);
                for (int32_t id = 0; id < n; id++)
                    cr_assert_eq(isinf(logits[id]) != 0, !((bits[id >> 5] >> (id & 31)) & 1));
                if (na == 0) {
                    cr_assert(spud_grammar_is_finished(a));
                    break;
                }
                int32_t t = allowed[rng_next(&seed) % (uint64_t)na];
                cr_assert_eq(spud_grammar_accept(a, t), SPUD_OK, "%s", spud_last_error());
                cr_assert_eq(spud_grammar_accept(b, t), SPUD_OK, "%s", spud_last_error());
            }
            spud_grammar_state_free(a);
            spud_grammar_state_free(b);
        }
        spud_grammar_free(g);
    }
    free(bits);
    free(allowed);
    free(logits);
}

Test(grammar, masks_gpt2, .timeout = 600) {
    real_vocab rv = open_vocab("ggml-vocab-gpt-2.gguf");
    check_masks(&rv, 0, 3, 40, 1);
    close_vocab(&rv);
}

Test(grammar, masks_spm_byte_tokens, .timeout = 600) {
    real_vocab rv = open_vocab("ggml-vocab-llama-spm.gguf");
    check_masks(&rv, 0, 3, 40, 2);
    close_vocab(&rv);
}

Test(grammar, masks_with_tables_rebuilt_every_step, .timeout = 600) {
    real_vocab rv = open_vocab("ggml-vocab-gpt-2.gguf");
    check_masks(&rv, 1, 1, 25, 3);
    close_vocab(&rv);
}

Test(grammar, end_of_generation) {
    real_vocab rv = open_vocab("ggml-vocab-gpt-2.gguf");
    int32_t n = spud_grammar_vocab_n(rv.v), eos = spud_tok_eos(rv.t);
    cr_assert(eos >= 0 && spud_tok_is_eog(rv.t, eos));
    uint32_t *bits = malloc(((size_t)n + 31) / 32 * 4);
    spud_grammar *g = parse_ok("root ::= \"ab\" \"c\"?");
    spud_grammar_state *s;
    cr_assert_eq(spud_grammar_state_new(g, rv.v, NULL, 0, &s), SPUD_OK);
    cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK);
    cr_expect_eq((bits[eos >> 5] >> (eos & 31)) & 1, 0u, "EOG before the grammar is complete");
    cr_expect(!spud_grammar_allows(s, eos));
    cr_expect_eq(spud_grammar_accept(s, eos), SPUD_ERR_INVALID);
    cr_assert_eq(spud_grammar_accept_bytes(s, "ab", 2), SPUD_OK);
    cr_assert(spud_grammar_is_complete(s) && !spud_grammar_is_finished(s));
    cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK);
    cr_expect_eq((bits[eos >> 5] >> (eos & 31)) & 1, 1u, "EOG once complete");
    cr_assert_eq(spud_grammar_accept_bytes(s, "c", 1), SPUD_OK);
    cr_assert(spud_grammar_is_finished(s), "complete and nothing can follow");
    cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK);
    for (int32_t id = 0; id < n; id++)
        cr_assert_eq((bits[id >> 5] >> (id & 31)) & 1, (uint32_t)spud_tok_is_eog(rv.t, id), "token %d", id);
    cr_assert_eq(spud_grammar_accept(s, eos), SPUD_OK);
    cr_expect_eq(spud_grammar_mask(s, bits), SPUD_ERR_INVALID, "nothing after the end");
    cr_expect_eq(spud_grammar_accept_bytes(s, "x", 1), SPUD_ERR_INVALID);
    spud_grammar_state_reset(s);
    cr_assert_eq(spud_grammar_accept_bytes(s, "abc", 3), SPUD_OK, "reset starts over");
    /* A refused token leaves the state as it was. */
    spud_grammar_state_reset(s);
    cr_assert_eq(spud_grammar_accept_bytes(s, "a", 1), SPUD_OK);
    cr_expect_eq(spud_grammar_accept_bytes(s, "x", 1), SPUD_ERR_INVALID);
    cr_expect_eq(spud_grammar_accept_bytes(s, "b", 1), SPUD_OK);
    spud_grammar_state_free(s);
    spud_grammar_free(g);
    free(bits);
    close_vocab(&rv);
}

static int32_t piece_id(const spud_grammar_vocab *v, const char *const *extra, size_t n_extra, const char *piece) {
    (void)v;
    for (size_t i = 0; i < n_extra; i++)
        if (!strcmp(extra[i], piece)) return (int32_t)(256 + i);
    cr_assert_fail("no piece '%s'", piece);
    return -1;
}

static bool bit_of(const uint32_t *bits, int32_t id) { return (bits[id >> 5] >> (id & 31)) & 1; }

Test(grammar, lazy_trigger) {
    static const char *extra[] = {"hello ", "<tool_call>", "<tool_call>{", "<tool_call>?", "<to",
                                  "ol_call>",  "ol_call>{",  "ol_call>?",   "}",   "<eos>"};
    uint8_t flags[10] = {0};
    flags[9] = SPUD_GRAMMAR_TOK_EOG | SPUD_GRAMMAR_TOK_CONTROL;
    spud_grammar_vocab *v = byte_vocab(extra, 10, flags);
    int32_t n = spud_grammar_vocab_n(v);
    uint32_t *bits = malloc(((size_t)n + 31) / 32 * 4);
#define ID(p) piece_id(v, extra, 10, p)
    spud_grammar *g = parse_ok("root ::= ws \"{\" [a-z]* \"}\"\nws ::= \" \"?"); /* what follows the trigger */
    const char *trig[] = {"<tool_call>"};
    spud_grammar_state *s;
    cr_assert_eq(spud_grammar_state_new(g, v, trig, 1, &s), SPUD_OK, "%s", spud_last_error());
    cr_assert(!spud_grammar_is_active(s));
    cr_assert(spud_grammar_is_complete(s), "free text may end");
    cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK);
    cr_expect(bit_of(bits, ID("hello ")) && bit_of(bits, ID("<eos>")) && bit_of(bits, ID("<tool_call>")));
    cr_expect(bit_of(bits, ID("<tool_call>{")));
    cr_expect(!bit_of(bits, ID("<tool_call>?")), "a trigger followed by text the grammar refuses");
    cr_expect(bit_of(bits, ID("ol_call>?")), "no trigger yet: nothing to refuse");
    cr_assert_eq(spud_grammar_accept(s, ID("hello ")), SPUD_OK);
    cr_assert_eq(spud_grammar_accept(s, ID("<to")), SPUD_OK);
    cr_assert(!spud_grammar_is_active(s));
    cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK);
    cr_expect(!bit_of(bits, ID("ol_call>?")), "completes the trigger across tokens, then '?'");
    cr_expect(bit_of(bits, ID("ol_call>{")) && bit_of(bits, ID("ol_call>")));
    cr_expect(!spud_grammar_allows(s, ID("ol_call>?")));
    cr_expect_eq(spud_grammar_accept(s, ID("ol_call>?")), SPUD_ERR_INVALID);
    cr_assert_eq(spud_grammar_accept(s, ID("ol_call>{")), SPUD_OK);
    cr_assert(spud_grammar_is_active(s), "triggered");
    cr_assert(!spud_grammar_is_complete(s));
    cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK);
    cr_expect(!bit_of(bits, ID("<eos>")) && !bit_of(bits, ID("hello ")) && bit_of(bits, 'a') && bit_of(bits, '}'));
    cr_assert_eq(spud_grammar_accept_bytes(s, "ab}", 3), SPUD_OK);
    cr_assert(spud_grammar_is_finished(s));
    cr_assert_eq(spud_grammar_accept(s, ID("<eos>")), SPUD_OK);
    /* Reset: waiting again; a trigger token with its continuation in one piece. */
    spud_grammar_state_reset(s);
    cr_assert(!spud_grammar_is_active(s));
    cr_assert_eq(spud_grammar_accept(s, ID("<tool_call>")), SPUD_OK);
    cr_assert(spud_grammar_is_active(s));
    cr_assert_eq(spud_grammar_accept_bytes(s, " {}", 3), SPUD_OK);
    cr_assert(spud_grammar_is_finished(s));
    /* End of generation while waiting: fine. */
    spud_grammar_state_reset(s);
    cr_assert_eq(spud_grammar_accept(s, ID("<eos>")), SPUD_OK);
    cr_expect_eq(spud_grammar_mask(s, bits), SPUD_ERR_INVALID);
    spud_grammar_state_free(s);
    /* Apply while waiting: only the refused trigger completions get -inf. */
    cr_assert_eq(spud_grammar_state_new(g, v, trig, 1, &s), SPUD_OK);
    float *logits = calloc((size_t)n, sizeof *logits);
    cr_assert_eq(spud_grammar_apply(s, logits, n), SPUD_OK);
    for (int32_t id = 0; id < n; id++) cr_assert_eq(isinf(logits[id]) != 0, id == ID("<tool_call>?"), "token %d", id);
    free(logits);
    spud_grammar_state_free(s);
    const char *empty[] = {""};
    cr_expect_eq(spud_grammar_state_new(g, v, empty, 1, &s), SPUD_ERR_INVALID);
#undef ID
    spud_grammar_free(g);
    spud_grammar_vocab_free(v);
    free(bits);
}

Test(grammar, token_references_and_control_tokens) {
    static const char *extra[] = {"<|tool|>", "<|end|>", "<think>", "x"};
    uint8_t flags[4] = {SPUD_GRAMMAR_TOK_CONTROL, SPUD_GRAMMAR_TOK_CONTROL | SPUD_GRAMMAR_TOK_EOG, 0, 0};
    spud_grammar_vocab *v = byte_vocab(extra, 4, flags);
    int32_t n = spud_grammar_vocab_n(v), tool = 256, end = 257, think = 258;
    uint32_t *bits = malloc(((size_t)n + 31) / 32 * 4);
    /* By text (brackets included) and by id. */
    spud_grammar *g = parse_ok("root ::= <|tool|> \"x\" | <[258]> \"y\" | \"z\"");
    spud_grammar_state *s;
    cr_assert_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_OK, "%s", spud_last_error());
    cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK);
    for (int32_t id = 0; id < n; id++)
        cr_assert_eq(bit_of(bits, id), id == tool || id == think || id == 'z', "token %d", id);
    cr_assert_eq(spud_grammar_accept(s, tool), SPUD_OK);
    cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK);
    for (int32_t id = 0; id < n; id++) cr_assert_eq(bit_of(bits, id), id == 'x' || id == 259, "token %d", id);
    cr_assert_eq(spud_grammar_accept(s, 259), SPUD_OK);
    cr_assert(spud_grammar_is_finished(s));
    cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK);
    for (int32_t id = 0; id < n; id++) cr_assert_eq(bit_of(bits, id), id == end, "only the EOG token: %d", id);
    spud_grammar_state_free(s);
    spud_grammar_free(g);
    /* Text never matches a control token, even with the same characters. */
    g = parse_ok("root ::= \"<|tool|>\"");
    cr_assert_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_OK);
    cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK);
    cr_expect(!bit_of(bits, tool) && bit_of(bits, '<'));
    cr_expect_eq(spud_grammar_accept(s, tool), SPUD_ERR_INVALID);
    spud_grammar_state_free(s);
    spud_grammar_free(g);
    /* A non-control token: its bytes may also be spelled by other tokens. */
    g = parse_ok("root ::= \"<think>\"");
    cr_assert_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_OK);
    cr_assert_eq(spud_grammar_mask(s, bits), SPUD_OK);
    cr_expect(bit_of(bits, think) && bit_of(bits, '<'));
    spud_grammar_state_free(s);
    spud_grammar_free(g);
    /* Unknown references fail when the state is made. */
    g = parse_ok("root ::= <|nope|>");
    cr_expect_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_ERR_NOT_FOUND);
    cr_expect(strstr(spud_last_error(), "<|nope|>"), "%s", spud_last_error());
    spud_grammar_free(g);
    g = parse_ok("root ::= <[100000]>");
    cr_expect_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_ERR_NOT_FOUND);
    spud_grammar_free(g);
    spud_grammar_vocab_free(v);
    free(bits);
}

Test(grammar, empty_grammar) {
    /* Found by fuzzing: a root that matches only the empty string. */
    spud_grammar_vocab *v = byte_vocab(NULL, 0, NULL);
    spud_grammar *g = parse_ok("root ::=");
    cr_expect_eq(match(g, v, "", 0), FULL);
    cr_expect_eq(match(g, v, "a", 1), REFUSE);
    spud_grammar_state *s;
    cr_assert_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_OK);
    cr_expect(spud_grammar_is_finished(s));
    uint32_t bits[8];
    cr_expect_eq(spud_grammar_mask(s, bits), SPUD_ERR_RANGE, "no EOG token in this vocabulary: nothing to offer");
    spud_grammar_state_free(s);
    spud_grammar_free(g);
    spud_grammar_vocab_free(v);
}

Test(grammar, no_token_can_continue) {
    /* A vocabulary without the byte the grammar needs. */
    const char *pieces[] = {"a", "b"};
    size_t lens[] = {1, 1};
    spud_grammar_vocab *v;
    cr_assert_eq(spud_grammar_vocab_new(2, pieces, lens, NULL, &v), SPUD_OK);
    spud_grammar *g = parse_ok("root ::= \"c\"");
    spud_grammar_state *s;
    cr_assert_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_OK);
    uint32_t bits[1];
    cr_expect_eq(spud_grammar_mask(s, bits), SPUD_ERR_RANGE);
    float logits[2] = {0, 0};
    cr_expect_eq(spud_grammar_apply(s, logits, 2), SPUD_ERR_RANGE);
    cr_expect_eq(spud_grammar_apply(s, logits, 3), SPUD_ERR_INVALID, "wrong logits count");
    spud_grammar_state_free(s);
    spud_grammar_free(g);
    spud_grammar_vocab_free(v);
}

Test(grammar, ambiguity_limit) {
    /* Each 'a' doubles the stacks: the state refuses to grow without bound. */
    spud_grammar_vocab *v = byte_vocab(NULL, 0, NULL);
    spud_grammar *g = parse_ok("root ::= s\ns ::= \"a\" s \"b\" | \"a\" s \"c\" | \"\"");
    spud_grammar_state *s;
    cr_assert_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_OK);
    spud_status st = SPUD_OK;
    int i = 0;
    for (; i < 40 && st == SPUD_OK; i++) st = spud_grammar_accept_bytes(s, "a", 1);
    cr_expect_eq(st, SPUD_ERR_RANGE, "got %s after %d bytes", spud_status_name(st), i);
    cr_expect(strstr(spud_last_error(), "ambiguous"), "%s", spud_last_error());
    spud_grammar_state_free(s);
    spud_grammar_free(g);
    spud_grammar_vocab_free(v);
}

Test(grammar, deep_recursion_and_long_output) {
    /* Deep nesting grows the stack; long flat lists must not (tail calls). */
    spud_grammar_vocab *v = byte_vocab(NULL, 0, NULL);
    spud_grammar *g = parse_ok("root ::= p\np ::= \"(\" p? \")\" | list\nlist ::= \"x\" list?");
    spud_grammar_state *s;
    cr_assert_eq(spud_grammar_state_new(g, v, NULL, 0, &s), SPUD_OK);
    spud_grammar_state_set_budget(s, 64 << 10); /* also rebuilds its tables many times */
    for (int i = 0; i < 3000; i++) cr_assert_eq(spud_grammar_accept_bytes(s, "(", 1), SPUD_OK, "%s", spud_last_error());
    for (int i = 0; i < 100000; i++) cr_assert_eq(spud_grammar_accept_bytes(s, "x", 1), SPUD_OK, "%s", spud_last_error());
    for (int i = 0; i < 3000; i++) cr_assert_eq(spud_grammar_accept_bytes(s, ")", 1), SPUD_OK, "%s", spud_last_error());
    cr_expect(spud_grammar_is_complete(s));
    cr_expect_eq(spud_grammar_accept_bytes(s, ")", 1), SPUD_ERR_INVALID);
    spud_grammar_state_free(s);
    spud_grammar_free(g);
    spud_grammar_vocab_free(v);
}

/* Every allocation failure gives SPUD_ERR_NOMEM (or succeeds), never a crash or a leak. */
static spud_status oom_scenario(void) {
    static const char *extra[] = {"{\"", "\":", "true", "<tool_call>", "<e>"};
    static const uint8_t xflags[] = {0, 0, 0, 0, SPUD_GRAMMAR_TOK_EOG | SPUD_GRAMMAR_TOK_CONTROL};
    const char *pieces[261];
    size_t lens[261];
    uint8_t flags[261] = {0};
    static char bytes[256];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        pieces[i] = &bytes[i];
        lens[i] = 1;
    }
    for (int i = 0; i < 5; i++) {
        pieces[256 + i] = extra[i];
        lens[256 + i] = strlen(extra[i]);
        flags[256 + i] = xflags[i];
    }
    spud_grammar *g = NULL;
    spud_grammar_vocab *v = NULL;
    spud_grammar_state *s = NULL, *lazy = NULL;
    uint32_t bits[(261 + 31) / 32];
    float logits[261] = {0};
    const char *trig[] = {"<tool_call>"};
    spud_status st;
    if ((st = spud_grammar_parse(json_gbnf, strlen(json_gbnf), &g))) goto done;
    if ((st = spud_grammar_vocab_new(261, pieces, lens, flags, &v))) goto done;
    if ((st = spud_grammar_state_new(g, v, NULL, 0, &s))) goto done;
    if ((st = spud_grammar_mask(s, bits))) goto done;
    if ((st = spud_grammar_accept(s, 256))) goto done;
    if ((st = spud_grammar_accept_bytes(s, "ab", 2))) goto done;
    if ((st = spud_grammar_accept(s, 257))) goto done;
    if ((st = spud_grammar_apply(s, logits, 261))) goto done;
    (void)spud_grammar_allows(s, 258);
    if ((st = spud_grammar_accept(s, 258))) goto done;
    if ((st = spud_grammar_state_new(g, v, trig, 1, &lazy))) goto done;
    if ((st = spud_grammar_mask(lazy, bits))) goto done;
    if ((st = spud_grammar_accept(lazy, 259))) goto done;
    st = spud_grammar_accept_bytes(lazy, "{}", 2);
done:
    spud_grammar_state_free(s);
    spud_grammar_state_free(lazy);
    spud_grammar_vocab_free(v);
    spud_grammar_free(g);
    return st;
}

Test(grammar, allocation_failures, .timeout = 600) {
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
