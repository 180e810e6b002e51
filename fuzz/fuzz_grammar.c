/* fuzz_grammar.c: libFuzzer target for the GBNF parser, the JSON Schema
 * compiler and the matcher.
 *
 * Input: one mode byte, then a text, optionally followed by a NUL byte and
 * "walk" bytes that choose tokens. Mode (first byte % 4):
 *   0  the text is GBNF;
 *   1  the text is a JSON Schema (strict), 2 the same without strict mode;
 *   3  GBNF, matched lazily after the trigger word "<go>".
 * Any text must be refused with a one-line message or compile. A schema that
 * compiles must give GBNF that parses (else abort: a compiler bug). Then a
 * walk over a small vocabulary: at each step the mask must offer a token (or
 * say none can continue), every offered token must be accepted, a refused
 * token must leave the state unchanged, and end of generation must be
 * offered whenever the grammar is complete. A schema's output that ends
 * complete must be one JSON value (json-c parses all of it).
 *
 *   CC=clang cmake -B build-fuzz -DSPUD_FUZZ=ON -DSPUD_SANITIZE=ON && ninja -C build-fuzz fuzz_grammar
 *   build-fuzz/fuzz_grammar -max_len=4096 -timeout=10 -rss_limit_mb=2048 fuzz/corpus/grammar
 */
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"
#include "json_schema.h"

/* An invariant: on failure, say which, then abort (the fuzzer keeps the input). */
#define CHECK(cond)                                                                                        \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "fuzz_grammar.c:%d: check failed: %s (%s)\n", __LINE__, #cond, spud_last_error()); \
            abort();                                                                                       \
        }                                                                                                  \
    } while (0)

#define N_EXTRA 12
static const char *extra[N_EXTRA] = {"{\"", "\":", "\", \"", "true", "null", "12", "\xC3\xA9", "\xE2\x82",
                                     "\xAC", "<go>", "<|ctl|>", "<|end|>"};
static const uint8_t extra_flags[N_EXTRA] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, SPUD_GRAMMAR_TOK_CONTROL,
                                             SPUD_GRAMMAR_TOK_CONTROL | SPUD_GRAMMAR_TOK_EOG};
#define N_VOCAB (256 + N_EXTRA)
#define EOG_ID (N_VOCAB - 1)

static spud_grammar_vocab *vocab;
static size_t piece_len[N_VOCAB];
static const char *piece[N_VOCAB];

static void make_vocab(void) {
    static char bytes[256];
    uint8_t flags[N_VOCAB] = {0};
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        piece[i] = &bytes[i];
        piece_len[i] = 1;
    }
    for (int i = 0; i < N_EXTRA; i++) {
        piece[256 + i] = extra[i];
        piece_len[256 + i] = strlen(extra[i]);
        flags[256 + i] = extra_flags[i];
    }
    CHECK(!(spud_grammar_vocab_new(N_VOCAB, piece, piece_len, flags, &vocab)));
}

static void check_message(void) {
    const char *m = spud_last_error();
    CHECK(!(!*m || strchr(m, '\n')));
}

static bool bit(const uint32_t *bits, int id) { return (bits[id >> 5] >> (id & 31)) & 1; }

/* A walk of up to 64 tokens chosen by walk[]; out collects the bytes. */
static void walk_grammar(const spud_grammar *g, bool lazy, const uint8_t *walk, size_t n_walk, bool json_output) {
    const char *trig[1] = {"<go>"};
    spud_grammar_state *s;
    spud_status st = spud_grammar_state_new(g, vocab, trig, lazy ? 1 : 0, &s);
    if (st) {
        check_message();
        return;
    }
    uint32_t bits[(N_VOCAB + 31) / 32], bits2[(N_VOCAB + 31) / 32];
    char out[4096];
    size_t n_out = 0;
    for (size_t step = 0; step < 64; step++) {
        st = spud_grammar_mask(s, bits);
        if (st) { /* no token can continue, or too ambiguous */
            CHECK(!(st != SPUD_ERR_RANGE && st != SPUD_ERR_NOMEM));
            check_message();
            break;
        }
        CHECK(!(spud_grammar_is_complete(s) && !bit(bits, EOG_ID))); /* (a <|end|> reference may offer it earlier) */
        int allowed[N_VOCAB], na = 0;
        for (int id = 0; id < N_VOCAB; id++)
            if (bit(bits, id)) allowed[na++] = id;
        CHECK(!(na == 0));
        uint8_t r = step < n_walk ? walk[step] : 0;
        /* Now and then try a refused token: it must change nothing. */
        if (r & 0x80) {
            int id = r & 0x7F;
            if (!bit(bits, id)) {
                CHECK(!(spud_grammar_allows(s, id)));
                CHECK(!(spud_grammar_accept(s, id) != SPUD_ERR_INVALID));
                CHECK(!(spud_grammar_mask(s, bits2) || memcmp(bits, bits2, sizeof bits)));
            }
        }
        int t = allowed[r % na];
        CHECK(!(!spud_grammar_allows(s, t)));
        if (t == EOG_ID) {
            CHECK(!(spud_grammar_accept(s, t)));
            if (json_output && spud_grammar_is_active(s)) {
                json_tokener *tk = json_tokener_new_ex(256);
                json_object *o = json_tokener_parse_ex(tk, out, (int)n_out);
                enum json_tokener_error e = json_tokener_get_error(tk);
                size_t off = tk->char_offset;
                if (e == json_tokener_continue) { /* a bare number or literal: a space ends it */
                    json_object_put(o);
                    o = json_tokener_parse_ex(tk, " ", 1);
                    e = json_tokener_get_error(tk);
                    off = n_out;
                }
                json_tokener_free(tk);
                json_object_put(o);
                CHECK(!(e != json_tokener_success || off != n_out)); /* the grammar made invalid JSON */
            }
            break;
        }
        st = spud_grammar_accept(s, t);
        if (st) {
            CHECK(!(st != SPUD_ERR_RANGE && st != SPUD_ERR_NOMEM));
            check_message();
            break;
        }
        if (spud_grammar_is_active(s) && n_out + piece_len[t] <= sizeof out) {
            memcpy(out + n_out, piece[t], piece_len[t]);
            n_out += piece_len[t];
        } else if (spud_grammar_is_active(s)) {
            json_output = false; /* too long to check */
        }
    }
    spud_grammar_state_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!vocab) make_vocab();
    if (size < 1) return 0;
    int mode = data[0] % 4;
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    const char *nul = memchr(text, '\0', n);
    size_t tlen = nul ? (size_t)(nul - text) : n;
    const uint8_t *walk = nul ? (const uint8_t *)nul + 1 : NULL;
    size_t n_walk = nul ? n - tlen - 1 : 0;
    char *gbnf = NULL;
    const char *gtext = text;
    size_t glen = tlen;
    if (mode == 1 || mode == 2) {
        spud_status st = spud_json_schema_to_gbnf(text, tlen, mode == 1, &gbnf);
        if (st) {
            check_message();
            return 0;
        }
        gtext = gbnf;
        glen = strlen(gbnf);
    }
    spud_grammar *g = NULL;
    spud_status st = spud_grammar_parse(gtext, glen, &g);
    if (st) {
        CHECK(!(gbnf)); /* the schema compiler wrote a grammar that does not parse */
        check_message();
        return 0;
    }
    if (spud_grammar_n_nodes(g) < 200000) walk_grammar(g, mode == 3, walk, n_walk, gbnf != NULL);
    spud_grammar_free(g);
    spud_free(gbnf);
    return 0;
}
