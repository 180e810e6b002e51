/* chat.h: render an OpenAI-style conversation with a model's chat template.
 *
 * A GGUF chat model carries its prompt format as a Jinja template
 * (tokenizer.chat_template). spud_chat_render runs it the way Hugging Face's
 * apply_chat_template does (see jinja.h) with the variables `messages`,
 * `tools` (left undefined when NULL), `add_generation_prompt`, `bos_token`
 * and `eos_token`. A model without a template gets ChatML.
 *
 * Usage:
 *
 *     spud_chat_template *ct;
 *     spud_chat_template_from_gguf(model->gguf, &ct);     // parsed once per model
 *     int32_t *ids; size_t n;
 *     if (spud_chat_tokenize(ct, tok, messages, tools, true, false, NULL, NULL, &ids, &n)) { ... spud_last_error() ... }
 *     ... decode ids ...
 *     spud_free(ids);
 *     spud_chat_template_free(ct);
 *
 * Special tokens come only from the template: the conversation's strings
 * (content, names, tool calls, tools) are untrusted, the render tracks which
 * output bytes they became (spud_chat_render_taint, see jinja.h), and the
 * tokenizer parses control tokens only in the template's own bytes
 * (spud_tok_encode_masked). A user who types "<|im_start|>system" gets that
 * text, not the control token. Tokenizing the plain text of
 * spud_chat_render with special tokens parsed would give them the token.
 * Added tokens the vocabulary does not mark special are held to the same
 * rule when they are structural: their text appears in the template's source
 * (DeepSeek V3's "<｜User｜>", Qwen's "<think>", "<tool_call>"). Other added
 * tokens match in content too, as in Hugging Face.
 *
 * Thread safety: a spud_chat_template is immutable but for an internal,
 * locked cache (spud_chat_template_structural); renders may run at once.
 */
#ifndef SPUD_CHAT_H
#define SPUD_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#include "core.h"
#include "gguf.h"
#include "jinja.h"
#include "tokenizer.h"

typedef struct spud_chat_template spud_chat_template;

/* The ChatML template used for models that carry none. */
extern const char spud_chat_template_chatml[];

/* Parse template source (NULL: ChatML) with the given BOS / EOS token text
 * (NULL: ""). All strings are copied. */
spud_status spud_chat_template_new(const char *src, size_t len, const char *bos_token,
                                   const char *eos_token, spud_chat_template **out);
/* From GGUF metadata: tokenizer.chat_template (ChatML when absent), BOS/EOS
 * text from tokenizer.ggml.tokens at tokenizer.ggml.bos_token_id / eos_token_id. */
spud_status spud_chat_template_from_gguf(const spud_gguf *g, spud_chat_template **out);
void spud_chat_template_free(spud_chat_template *t);
/* true when the template is the built-in ChatML fallback */
bool spud_chat_template_is_default(const spud_chat_template *t);
const char *spud_chat_template_bos(const spud_chat_template *t);
const char *spud_chat_template_eos(const spud_chat_template *t);

/* Render messages (a JSON array) and tools (a JSON array, or NULL) into
 * *out (NUL-terminated, free with spud_free; *out_len may be NULL).
 * strftime_now() uses SOURCE_DATE_EPOCH (UTC) when that is set, for
 * reproducible renders, else the local time. A template error, including
 * raise_exception(), gives SPUD_ERR_INVALID with "line N: message". */
spud_status spud_chat_render_ex(const spud_chat_template *t, json_object *messages,
                                json_object *tools, bool add_generation_prompt,
                                const spud_jinja_opts *opts, char **out, size_t *out_len);
spud_status spud_chat_render(const spud_chat_template *t, json_object *messages,
                             json_object *tools, bool add_generation_prompt, char **out);
/* spud_chat_render_ex, and also *taint (NULL allowed): one byte per byte of
 * *out (free with spud_free), 1 where the byte came from messages or tools,
 * 0 where the template or the bos_token / eos_token it was given wrote it. */
spud_status spud_chat_render_taint(const spud_chat_template *t, json_object *messages,
                                   json_object *tools, bool add_generation_prompt,
                                   const spud_jinja_opts *opts, char **out, size_t *out_len,
                                   uint8_t **taint);

/* The user-defined tokens of tok that the template writes itself: *out gets
 * one byte per token id, nonzero where the token's text occurs in the
 * template's source and is not only white space (a template that assembles a
 * marker from pieces, '<｜' + 'User｜>', is not seen). For
 * spud_tok_encode_masked's structural argument. Computed on the first call
 * for each tokenizer and kept: *out stays valid until the template is freed.
 * Safe to call from several threads at once. */
spud_status spud_chat_template_structural(const spud_chat_template *t, const spud_tokenizer *tok,
                                          const uint8_t **out);

/* Render and tokenize a conversation for the model, safely: special tokens
 * are parsed only in what the template wrote (see the top of this file).
 * add_bos: put BOS first when the vocabulary asks for it (add_bos_token) and
 * the template did not write it (Hugging Face's apply_chat_template adds
 * none: pass false for that). Never EOS. *ids, and *text (the prompt, when
 * text is not NULL; len may be NULL): free with spud_free. */
spud_status spud_chat_tokenize(const spud_chat_template *t, const spud_tokenizer *tok, json_object *messages,
                               json_object *tools, bool add_generation_prompt, bool add_bos, char **text,
                               size_t *len, int32_t **ids, size_t *n_ids);

#endif
