/* grammar.h: grammar-constrained decoding (GBNF).
 *
 * A GBNF grammar (llama.cpp's format, see below) is compiled once into a
 * byte-level pushdown automaton. A matcher state follows one sequence's output
 * and gives, before each sampling step, the set of tokens whose bytes the
 * grammar can still accept; end-of-generation tokens are allowed only when
 * the output so far is a complete match of `root`.
 *
 * Usage (per sequence; error handling shortened):
 *
 *     spud_grammar *g;                  // immutable: share it between sequences
 *     spud_grammar_parse(text, len, &g);
 *     spud_grammar_vocab *v;            // once per model (0.3 s for 150K tokens), shareable
 *     spud_grammar_vocab_from_tokenizer(model->tok, &v);
 *     spud_grammar_state *gs;           // one per sequence
 *     spud_grammar_state_new(g, v, NULL, 0, &gs);
 *     for (;;) {
 *         memcpy(work, logits, n_vocab * sizeof(float));
 *         spud_grammar_apply(gs, work, n_vocab);        // disallowed -> -INFINITY
 *         int32_t t = spud_sampler_sample(smp, work, n_vocab);
 *         if (spud_token_is_eog(model, t)) break;       // only offered once complete
 *         spud_grammar_accept(gs, t);
 *         spud_sampler_accept(smp, t);
 *         ...decode t...
 *     }
 *
 * Grammar text (as llama.cpp's grammars/README.md describes it):
 *
 *     root  ::= "{" ws pair ("," ws pair)* "}"     # comments run to the end of a line
 *     pair  ::= [a-z]+ ws ":" ws ( num | "null" )
 *     num   ::= "-"? [0-9]{1,10}
 *     ws    ::= [ \t\n]*
 *
 * Literals "..." and classes [...] / [^...] are over Unicode code points
 * (escapes \n \r \t \\ \" \[ \] \- \xHH \uHHHH \UHHHHHHHH; \xHH is a code
 * point, not a raw byte); `.` is any code point; ( ) group; | alternates;
 * postfix * + ? {m} {m,} {m,n} {,n}. A rule ends at the end of its line
 * unless inside parentheses or right after `|`. Output is always valid UTF-8
 * (surrogates are never produced). Token references (llama.cpp's syntax):
 * <[123]> matches exactly token 123, and <think> the one token whose text is
 * "<think>", brackets included (control tokens such as <|im_end|> too); they
 * are resolved when a state is made. Text never matches a control token.
 * Refused with a message giving line and column: syntax errors, undefined
 * rules, no `root`, left recursion (a rule that can reach itself without
 * consuming input), a rule that can never finish, an empty class, a grammar
 * whose automaton would exceed SPUD_GRAMMAR_MAX_NODES.
 *
 * Cost: the matcher's states are canonical sets of interned stacks, built
 * lazily into a DFA (state x byte class -> state) that lives in the matcher.
 * A mask walks the vocabulary's token trie (tokens sorted by bytes, laid out
 * in preorder with subtree-skip links) with one table lookup per trie node,
 * skipping every subtree whose prefix the grammar rejects; the mask of each
 * DFA state is cached, so a repeated state (inside a string, say) costs a
 * copy. Caches are bounded (SPUD_GRAMMAR_STATE_BUDGET, see
 * spud_grammar_state_set_budget) and rebuilt when full. A state's first
 * mask over a whole 150K vocabulary costs about 1.5 ms of one core; most
 * steps reuse a cached mask (bench/grammar_mask.sh measures it).
 *
 * Lazy grammars (tool_choice "auto"): a state made with trigger words allows
 * every token until one of the words appears in the output (control tokens
 * count with their text); from then on the grammar matches the text AFTER the
 * trigger. While waiting, a token that would complete a trigger followed by
 * bytes the grammar rejects is masked.
 *
 * Thread safety: spud_grammar and spud_grammar_vocab are immutable after
 * construction and may be shared by any number of threads; a
 * spud_grammar_state belongs to one thread at a time.
 */
#ifndef SPUD_GRAMMAR_H
#define SPUD_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "tokenizer.h"

#define SPUD_GRAMMAR_MAX_NODES (4u << 20)     /* automaton nodes per grammar */
#define SPUD_GRAMMAR_MAX_TEXT (64u << 20)     /* bytes of grammar text */
#define SPUD_GRAMMAR_STATE_BUDGET (96u << 20) /* bytes of lazily built DFA per state */

typedef struct spud_grammar spud_grammar;
typedef struct spud_grammar_vocab spud_grammar_vocab;
typedef struct spud_grammar_state spud_grammar_state;

/* ---- grammar ---- */

/* Parse and compile GBNF text (start rule: root). Errors: SPUD_ERR_FORMAT
 * with "line L, column C: ..." for syntax and rule errors, SPUD_ERR_RANGE for
 * a grammar too large, SPUD_ERR_NOMEM. */
spud_status spud_grammar_parse(const char *text, size_t len, spud_grammar **out);
void spud_grammar_free(spud_grammar *g);
uint32_t spud_grammar_n_rules(const spud_grammar *g);
uint32_t spud_grammar_n_nodes(const spud_grammar *g);

/* ---- vocabulary (token trie) ---- */

enum {
    SPUD_GRAMMAR_TOK_EOG = 1,     /* end of generation: allowed only when complete */
    SPUD_GRAMMAR_TOK_CONTROL = 2, /* never matched by text; only by a <...> reference */
};

/* The trie of a tokenizer's tokens (spud_tok_piece bytes; control tokens and
 * empty pieces are left out of the trie, EOG tokens are spud_tok_is_eog). */
spud_status spud_grammar_vocab_from_tokenizer(const spud_tokenizer *t, spud_grammar_vocab **out);
/* The same from explicit pieces (piece i: lens[i] bytes; flags may be NULL).
 * For control tokens, pieces[i] is the token's text (what <TEXT> and trigger
 * words match); for the others, its output bytes. Copies everything. */
spud_status spud_grammar_vocab_new(int32_t n_vocab, const char *const *pieces, const size_t *lens,
                                   const uint8_t *flags, spud_grammar_vocab **out);
void spud_grammar_vocab_free(spud_grammar_vocab *v);
int32_t spud_grammar_vocab_n(const spud_grammar_vocab *v);
uint32_t spud_grammar_vocab_n_nodes(const spud_grammar_vocab *v); /* trie nodes */

/* ---- matcher state (one sequence) ---- */

/* A matcher at the start of the output. g and v must outlive it. With
 * n_triggers > 0 the grammar is lazy (see above); trigger words are non-empty.
 * Fails if a <...> token reference names no token of v. */
spud_status spud_grammar_state_new(const spud_grammar *g, const spud_grammar_vocab *v,
                                   const char *const *triggers, size_t n_triggers,
                                   spud_grammar_state **out);
void spud_grammar_state_free(spud_grammar_state *s);
/* Back to the start (waiting for a trigger again if lazy); caches are kept. */
void spud_grammar_state_reset(spud_grammar_state *s);
/* Bytes the lazily built DFA of this state may use before it is rebuilt from
 * the current state (default SPUD_GRAMMAR_STATE_BUDGET; mask caches come on
 * top, at most 32 MiB). Small budgets cost time, never correctness. */
void spud_grammar_state_set_budget(spud_grammar_state *s, size_t bytes);

/* The allowed tokens as a bitmask: bit (id % 32) of bits[id / 32], for
 * (n_vocab + 31) / 32 words. SPUD_ERR_RANGE if no token is allowed (the
 * vocabulary cannot spell any continuation), SPUD_ERR_INVALID once an
 * end-of-generation token has been accepted. */
spud_status spud_grammar_mask(spud_grammar_state *s, uint32_t *bits);
/* Set logits[id] = -INFINITY for every disallowed token (n_vocab must be the
 * vocabulary's size). Same errors as spud_grammar_mask. */
spud_status spud_grammar_apply(spud_grammar_state *s, float *logits, int32_t n_vocab);
/* Whether one token is allowed now (cheaper than a whole mask: a sampler can
 * sample unconstrained first and mask only when the token is refused; with
 * greedy or plain temperature sampling that gives the same distribution). */
bool spud_grammar_allows(spud_grammar_state *s, int32_t token);
/* Advance over a sampled token. SPUD_ERR_INVALID (state unchanged) if the
 * grammar does not allow it. */
spud_status spud_grammar_accept(spud_grammar_state *s, int32_t token);
/* Advance over raw output bytes (forced text); SPUD_ERR_INVALID if refused.
 * While a lazy grammar waits, the bytes are scanned for triggers. */
spud_status spud_grammar_accept_bytes(spud_grammar_state *s, const char *bytes, size_t n);

bool spud_grammar_is_active(const spud_grammar_state *s);   /* false while waiting for a trigger */
bool spud_grammar_is_complete(const spud_grammar_state *s); /* root matched: EOG allowed */
/* Complete and no byte may follow: only end-of-generation is allowed. */
bool spud_grammar_is_finished(const spud_grammar_state *s);

#endif
