/* tokenizer.h: text <-> token ids, loaded from a GGUF file's tokenizer.* metadata.
 *
 * Two families, chosen by tokenizer.ggml.model, both following llama.cpp
 * (commit c392e50) so that the ids match the reference tokenizers:
 *
 *   "gpt2"   byte-level BPE: the text is split into words by the pre-tokenizer
 *            regexes that tokenizer.ggml.pre names (PCRE2), each word's bytes are
 *            mapped to GPT-2's byte-to-unicode alphabet, and the merges of
 *            tokenizer.ggml.merges are applied by rank.
 *   "llama"  SentencePiece BPE: spaces become U+2581, a space is prepended
 *            (add_space_prefix), adjacent pieces are merged by token score, and
 *            what is left unknown falls back to the <0xAB> byte tokens.
 *
 * Special tokens: user-defined tokens are always cut out of the text before
 * the algorithm above runs; control (and unknown-type) tokens only when the
 * caller asks to parse special tokens.
 *
 * Usage:
 *
 *     spud_tokenizer *t;
 *     if (spud_tok_load(gguf, &t)) { ... spud_last_error() ... }
 *     int32_t *ids; size_t n;
 *     spud_tok_encode(t, "Hello", 5, true, false, &ids, &n);
 *     char buf[256];
 *     spud_detok d;
 *     spud_detok_init(&d);
 *     for (size_t i = 0; i < n; i++)
 *         fwrite(buf, 1, spud_detok_push(&d, t, ids[i], buf, sizeof buf), stdout);
 *     fwrite(buf, 1, spud_detok_flush(&d, buf, sizeof buf), stdout);
 *     spud_free(ids);
 *     spud_tok_free(t);
 *
 * Thread safety: a loaded spud_tokenizer is immutable; any number of threads
 * may encode and decode with it at once. A spud_detok belongs to one stream.
 */
#ifndef SPUD_TOKENIZER_H
#define SPUD_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "gguf.h"

typedef struct spud_tokenizer spud_tokenizer;

/* Build a tokenizer from g's tokenizer.* metadata, validating all of it (ids
 * in range, array lengths, merges that name existing tokens, unique token
 * texts). The tokenizer keeps pointers into g: g must outlive it.
 * Unknown tokenizer models or pre-tokenizers give SPUD_ERR_UNSUPPORTED. */
spud_status spud_tok_load(const spud_gguf *g, spud_tokenizer **out);
void spud_tok_free(spud_tokenizer *t);

int32_t spud_tok_n_vocab(const spud_tokenizer *t);
int32_t spud_tok_bos(const spud_tokenizer *t); /* -1 if none */
int32_t spud_tok_eos(const spud_tokenizer *t); /* -1 if none */
bool spud_tok_add_bos(const spud_tokenizer *t);
bool spud_tok_add_eos(const spud_tokenizer *t);
/* End-of-generation tokens as llama.cpp decides them: eos, eot, eom, the FIM
 * pad/repo/file-separator tokens, and tokens spelled <|eot_id|>, <|im_end|>,
 * <|end|>, <end_of_turn>, <|endoftext|>, <|eom_id|> or <EOT>. */
bool spud_tok_is_eog(const spud_tokenizer *t, int32_t id);
bool spud_tok_is_control(const spud_tokenizer *t, int32_t id);
const char *spud_tok_model(const spud_tokenizer *t); /* "gpt2" or "llama" */
const char *spud_tok_pre(const spud_tokenizer *t);   /* pre-tokenizer name; "default" if unnamed */
/* The token's text as stored in the file (not decoded, NOT NUL-terminated);
 * NULL if id is out of range. */
const char *spud_tok_text(const spud_tokenizer *t, int32_t id, size_t *len);
/* The longest piece spud_tok_piece can return, over the whole vocabulary. */
size_t spud_tok_max_piece_len(const spud_tokenizer *t);

/* Encode text[0..len) (any bytes; NUL and invalid UTF-8 included) to ids.
 * On success *ids is always an allocation (even for zero tokens) that the
 * caller frees with spud_free; on failure *ids is NULL and *n_ids 0.
 *   add_special:   prepend BOS / append EOS where the metadata asks for it
 *                  (skipped when the vocabulary has no such token).
 *   parse_special: also recognise control-token text such as "<|im_start|>".
 * Invalid UTF-8, byte-level BPE: before pre-tokenizing, every byte that does
 * not start a structurally complete UTF-8 sequence becomes one U+FFFD (as
 * llama.cpp does); a complete sequence that is overlong, a surrogate or above
 * U+10FFFF also becomes one U+FFFD (llama.cpp re-encodes, passes or aborts on
 * those). SentencePiece: bytes are kept as they are and come out as byte
 * tokens, exactly as llama.cpp does (a byte without a <0xAB> token becomes the
 * unknown token, where llama.cpp throws). Time is O(n log n) in the text
 * length; SentencePiece text over about 1.4 GB gives SPUD_ERR_RANGE. */
spud_status spud_tok_encode(const spud_tokenizer *t, const char *text, size_t len,
                            bool add_special, bool parse_special, int32_t **ids, size_t *n_ids);

/* The raw bytes of token id: GPT-2 byte mapping undone (a character outside
 * that alphabet is copied as it is), U+2581 -> space, <0xAB> byte tokens ->
 * the byte; control and unknown-type tokens give "" unless render_special;
 * unused/undefined-type tokens give "". Returns the full length and writes
 * min(length, cap) bytes (no NUL). Out-of-range ids give 0. */
size_t spud_tok_piece(const spud_tokenizer *t, int32_t id, bool render_special, char *buf,
                      size_t cap);

/* Streaming detokenizer: feed ids one at a time, get back only complete UTF-8.
 * A character split across tokens is held back until it is complete; a byte
 * sequence that can no longer become valid UTF-8 is emitted as one U+FFFD per
 * maximal invalid subpart (the Unicode "best practice"), as soon as that is
 * certain. Control tokens are not rendered. No leading space is removed. */
typedef struct {
    char pending[8];
    int n_pending;
} spud_detok;

/* Output bound for one push of a piece of n bytes: at most 3 pending bytes plus
 * the piece, each byte at worst expanding to a 3-byte U+FFFD. */
#define SPUD_DETOK_OUT_MAX(n) (3 * ((size_t)(n) + 3))

void spud_detok_init(spud_detok *d);
/* Returns the bytes written to out. cap >= SPUD_DETOK_OUT_MAX(piece length)
 * always suffices (valid UTF-8 needs only piece length + 3); with less, output
 * that does not fit is dropped at a character boundary. */
size_t spud_detok_push(spud_detok *d, const spud_tokenizer *t, int32_t id, char *out, size_t cap);
/* End of stream: a held-back incomplete character becomes U+FFFD (<= 3 bytes). */
size_t spud_detok_flush(spud_detok *d, char *out, size_t cap);

#endif
