/* tokenizer.h: text <-> token ids, loaded from a GGUF file's tokenizer.* metadata.
 *
 * Three families, chosen by tokenizer.ggml.model, matching the original
 * tokenizers (Hugging Face tokenizers, tiktoken) token for token:
 *
 *   "gpt2"   byte-level BPE: the text is split into words by the pre-tokenizer
 *            that tokenizer.ggml.pre names (GPT-2, Llama 3 / cl100k, Qwen2 with
 *            NFC, o200k / GPT-4o, DeepSeek V3, ... as llama.cpp names them), each
 *            word's bytes are merged by the rank of tokenizer.ggml.merges.
 *   "llama"  SentencePiece-style BPE: spaces become U+2581, one is prefixed when
 *            tokenizer.ggml.add_space_prefix (default true), and pieces are
 *            merged by merge rank when the file has tokenizer.ggml.merges
 *            (converted from a tokenizer.json, as Llama 2 and Gemma 3), else by
 *            token score (llama.cpp's files); unknown characters fall back to
 *            the <0xAB> byte tokens.
 *   "bert"   WordPiece (BERT, BGE): lowercase, accents stripped, split on white
 *            space and punctuation, greedy longest match; word-start tokens are
 *            spelled with a leading U+2581 (llama.cpp's form of "##").
 *
 * Special tokens: user-defined tokens (added tokens that are not special) are
 * always cut out of the text before the algorithm above runs; control (and
 * unknown-type) tokens only when the caller asks to parse special tokens, so
 * user text never produces them by default. Matching is leftmost-longest.
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
/* An added token the vocabulary does not mark special (Qwen's "<think>",
 * DeepSeek V3's "<｜User｜>"): cut out of any text, as Hugging Face does. */
bool spud_tok_is_user_defined(const spud_tokenizer *t, int32_t id);
/* A number no other tokenizer loaded in this process has: a key for caches
 * of per-vocabulary data that must not mistake a new tokenizer at a freed
 * one's address for the old one. */
uint64_t spud_tok_serial(const spud_tokenizer *t);
const char *spud_tok_model(const spud_tokenizer *t); /* "gpt2", "llama" or "bert" */
const char *spud_tok_pre(const spud_tokenizer *t);   /* pre-tokenizer name; "default" if unnamed */
/* The token's text as stored in the file (not decoded, NOT NUL-terminated);
 * NULL if id is out of range. */
const char *spud_tok_text(const spud_tokenizer *t, int32_t id, size_t *len);
/* The longest piece spud_tok_piece can return, over the whole vocabulary. */
size_t spud_tok_max_piece_len(const spud_tokenizer *t);

/* Encode text[0..len) (any bytes; NUL and invalid UTF-8 included) to ids.
 * On success *ids is always an allocation (even for zero tokens) that the
 * caller frees with spud_free; on failure *ids is NULL and *n_ids 0.
 *   add_special:   add what the metadata asks for: BOS (add_bos_token), EOS
 *                  (add_eos_token); for "bert" [CLS] before and [SEP] after
 *                  (add_bos_token, add_sep_token, both default true). Skipped
 *                  when the vocabulary has no such token.
 *   parse_special: also recognise control-token text such as "<|im_start|>".
 * Invalid UTF-8 becomes U+FFFD first, one per maximal invalid subpart (what a
 * UTF-8 decoder in replacement mode, such as JavaScript's TextDecoder or
 * Python's errors="replace", gives the reference tokenizers). Time is linear
 * in the text (O(w log w) for a single pre-tokenized word of w bytes). Memory
 * beyond the ids (4 bytes per token): copies of at most 1 MB blocks of the
 * text (UTF-8 repair, NFC; SentencePiece: of the text between two special
 * tokens, and only when it has invalid UTF-8), and about 30 bytes per byte of
 * the longest single word. */
spud_status spud_tok_encode(const spud_tokenizer *t, const char *text, size_t len,
                            bool add_special, bool parse_special, int32_t **ids, size_t *n_ids);

/* spud_tok_encode with special tokens parsed only in trusted bytes: taint
 * holds one byte per byte of text (NULL: all trusted), nonzero where the
 * byte came from untrusted input (message content). A control or unknown
 * token is recognised only where none of its bytes is tainted; tainted text
 * is encoded as parse_special = false would encode it, so "<|im_start|>"
 * typed by a user stays plain text. structural (NULL: none) holds one byte
 * per token id, nonzero for user-defined tokens that are treated like
 * control tokens here: the chat template writes them itself (DeepSeek V3's
 * "<｜User｜>", see spud_chat_template_structural). Other user-defined tokens
 * are cut out everywhere, as always. What a chat prompt is tokenized with
 * (see spud_chat_tokenize). */
spud_status spud_tok_encode_masked(const spud_tokenizer *t, const char *text, size_t len, bool add_special,
                                   const uint8_t *taint, const uint8_t *structural, int32_t **ids,
                                   size_t *n_ids);

/* Call fn for each word the model step sees, in order, without encoding:
 * the pre-tokenizer's pieces ("gpt2", after UTF-8 repair and normalization),
 * the U+2581-escaped segments ("llama"), the normalized words ("bert"). User-
 * defined tokens are cut out as in spud_tok_encode; special tokens are not
 * parsed. For tests and tools. */
spud_status spud_tok_pre_tokenize(const spud_tokenizer *t, const char *text, size_t len,
                                  void (*fn)(void *ud, const char *piece, size_t len), void *ud);

/* The raw bytes of token id: GPT-2 byte mapping undone (a character outside
 * that alphabet is copied as it is), U+2581 -> space ("llama", "bert"),
 * <0xAB> byte tokens -> the byte; control and unknown-type tokens give ""
 * unless render_special; unused/undefined-type tokens give "". Returns the full length and writes
 * min(length, cap) bytes (no NUL). Out-of-range ids give 0. */
size_t spud_tok_piece(const spud_tokenizer *t, int32_t id, bool render_special, char *buf,
                      size_t cap);

/* Decode a whole sequence to text (allocated, NUL-terminated; free with
 * spud_free): the pieces of spud_tok_piece concatenated, minus the leading
 * space that SentencePiece's prefix ("llama" with add_space_prefix) or a
 * WordPiece word start gives the first piece, as the reference decoders
 * drop it. The bytes may be invalid UTF-8 when ids split a character.
 * Out-of-range ids give SPUD_ERR_RANGE. */
spud_status spud_tok_decode(const spud_tokenizer *t, const int32_t *ids, size_t n_ids, bool render_special,
                            char **text, size_t *len);

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

/* GPT-2's byte-to-unicode form of byte b (printable Latin-1 bytes stand for
 * themselves, the other 68 for U+0100..) as UTF-8 in out, not NUL-terminated;
 * returns its length, 1 or 2. Byte-level BPE vocabularies spell tokens so. */
size_t spud_tok_gpt2_byte_utf8(uint8_t b, char out[2]);

#endif
