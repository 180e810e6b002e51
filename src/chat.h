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
 *     char *prompt;
 *     if (spud_chat_render(ct, messages, tools, true, &prompt)) { ... spud_last_error() ... }
 *     ... spud_tokenize(model, prompt, strlen(prompt), false, true, ...) ...
 *     spud_free(prompt);
 *     spud_chat_template_free(ct);
 *
 * Thread safety: a spud_chat_template is immutable; renders may run at once.
 */
#ifndef SPUD_CHAT_H
#define SPUD_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#include "core.h"
#include "gguf.h"
#include "jinja.h"

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

#endif
