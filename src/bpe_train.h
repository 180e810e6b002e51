/* bpe_train.h: learn a small byte-level BPE vocabulary (GPT-2 style) from text.
 *
 * Used by `spud gen-model` to give random-weight models a real tokenizer:
 * ids 0..255 are the 256 bytes (in GPT-2's byte-to-unicode form, id b = byte b),
 * then one token per learned merge, in merge order. Training is the textbook
 * greedy loop: split the text into words the way the tokenizer's pre-split
 * regex would (so no merge crosses a word boundary; a word carries its leading
 * space), count adjacent symbol pairs over all words, merge the most frequent
 * pair (ties: the pair of smaller ids), repeat. Deterministic: same text, same
 * pre-split and same limit give the same vocabulary on any machine.
 *
 * Invariants of the result (what a GGUF BPE loader relies on): every merge
 * "A B" has A, B and AB in the vocabulary, AB's id is greater than A's and B's,
 * and token texts are unique. A pair whose concatenation already is a token
 * (reachable by another segmentation) is never merged.
 */
#ifndef SPUD_BPE_TRAIN_H
#define SPUD_BPE_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "core.h"

/* How text is split into words before merging (the tokenizer.ggml.pre the
 * vocabulary is meant for). Bytes >= 0x80 count as letters. */
typedef enum {
    SPUD_BPE_PRE_GPT2 = 0, /* 's|'t|..| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    SPUD_BPE_PRE_QWEN2,    /* letters may take one leading non-letter; digits one by one */
} spud_bpe_pre;

typedef struct {
    uint32_t n_tokens; /* 256 + n_merges */
    char **tokens;     /* NUL-terminated texts in GPT-2 byte-to-unicode form */
    uint32_t n_merges;
    char **merges; /* "A B" (token texts joined by one space); merge i made token 256 + i */
} spud_bpe_vocab;

/* Learn at most max_merges merges from text[0..len). Stops early when no pair
 * is left to merge (every word is one token). On failure *out is empty. */
spud_status spud_bpe_train(const char *text, size_t len, spud_bpe_pre pre, uint32_t max_merges,
                           spud_bpe_vocab *out);
void spud_bpe_vocab_free(spud_bpe_vocab *v);

/* Length of the pre-split word that starts at text[0] (>= 1 when n >= 1). */
size_t spud_bpe_pre_split(const char *text, size_t n, spud_bpe_pre pre);

/* The built-in training text: a few KB of English prose (NUL-terminated, ASCII). */
extern const char spud_bpe_default_text[];

#endif
