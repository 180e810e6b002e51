/* tool_grammar.h: grammars for tool calls in a model family's call syntax.
 *
 *     spud_tool_grammar tg;
 *     spud_tool_grammar_build(tools, SPUD_TOOL_FORMAT_HERMES, SPUD_TOOL_CHOICE_AUTO, NULL, true,
 *                             model->tok, true, &tg);
 *     spud_grammar_parse(tg.gbnf, strlen(tg.gbnf), &g);
 *     const char *trig[1] = {tg.trigger};
 *     spud_grammar_state_new(g, vocab, trig, tg.trigger ? 1 : 0, &state); // lazy for auto
 *     ...
 *     spud_tool_grammar_free(&tg);
 *
 * tools: an OpenAI "tools" array ([{"type": "function", "function": {"name",
 * "description", "parameters"}}]; bare function objects are accepted too).
 * Names must match [A-Za-z0-9_-]{1,64} and be unique; "parameters" is a JSON
 * Schema (absent: no arguments, {}) compiled by json_schema.h.
 *
 * Call syntax per format (whitespace between the JSON tokens is free):
 *   HERMES  (Hermes 2 Pro, Qwen 2.5 / 3):
 *           <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>
 *           (parallel: several, separated by whitespace)
 *   LLAMA3  (Llama 3.1 / 3.2 / 3.3 JSON calls):
 *           {"name": "f", "parameters": {...}}                (one call)
 *   MISTRAL (Mistral / Mixtral / Nemo):
 *           [TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]
 *   DEEPSEEK (DeepSeek V3 / R1):
 *           <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f
 *           ```json\n{...}\n```<｜tool▁call▁end｜>[\n<｜tool▁call▁begin｜>...]<｜tool▁calls▁end｜>
 *   HARMONY (gpt-oss):
 *           <|channel|>commentary to=functions.f <|constrain|>json<|message|>{...}<|call|>
 *           (parallel: more calls follow as <|start|>assistant<|channel|>commentary ...)
 *   GENERIC (templates that name no syntax):
 *           {"name": "f", "arguments": {...}}
 *           (parallel: {"tool_calls": [{"name": ..., "arguments": ...}, ...]})
 * Markers (<tool_call>, </tool_call>, [TOOL_CALLS], DeepSeek's and harmony's) become token
 * references (<[id]>) when `tok` has a single token with exactly that text,
 * so a model emits its special token, else literal text.
 *
 * tool_choice:
 *   REQUIRED  root = one call (or several if parallel): no free text.
 *   FUNCTION  the same, restricted to the function `name`.
 *   AUTO      lazy: free text until the trigger (the call's first marker:
 *             "<tool_call>", "{\"name\"", "[TOOL_CALLS]", "<｜tool▁calls▁begin｜>",
 *             "to=functions."); root matches
 *             what follows the trigger (see grammar.h's lazy grammars).
 *   NONE      no grammar (gbnf NULL): do not constrain.
 */
#ifndef SPUD_TOOL_GRAMMAR_H
#define SPUD_TOOL_GRAMMAR_H

#include <stdbool.h>

#include "core.h"
#include "tokenizer.h"
#include "tool_parse.h"

struct json_object;

typedef enum {
    SPUD_TOOL_FORMAT_HERMES,
    SPUD_TOOL_FORMAT_LLAMA3,
    SPUD_TOOL_FORMAT_MISTRAL,
    SPUD_TOOL_FORMAT_DEEPSEEK,
    SPUD_TOOL_FORMAT_HARMONY,
    SPUD_TOOL_FORMAT_GENERIC,
} spud_tool_format;

typedef enum {
    SPUD_TOOL_CHOICE_AUTO,
    SPUD_TOOL_CHOICE_REQUIRED,
    SPUD_TOOL_CHOICE_NONE,
    SPUD_TOOL_CHOICE_FUNCTION,
} spud_tool_choice;

typedef struct {
    char *gbnf;    /* NULL for SPUD_TOOL_CHOICE_NONE */
    char *trigger; /* AUTO: the trigger word of the lazy grammar; else NULL */
} spud_tool_grammar;

/* "hermes" (also "qwen"), "llama3", "mistral", "deepseek", "harmony", "generic". */
spud_status spud_tool_format_parse(const char *name, spud_tool_format *out);
/* The grammar format that forces calls in the syntax the output parser reads. */
spud_tool_format spud_tool_format_for_syntax(spud_call_syntax s);
/* "auto", "required", "none" (a function name is SPUD_TOOL_CHOICE_FUNCTION). */
spud_status spud_tool_choice_parse(const char *name, spud_tool_choice *out);

/* Build the grammar. function: the name for SPUD_TOOL_CHOICE_FUNCTION.
 * tok may be NULL (markers stay text). strict: as in json_schema.h. Errors
 * name the tool ("tools[2] (get_weather): json schema: /properties/x: ..."). */
spud_status spud_tool_grammar_build(struct json_object *tools, spud_tool_format fmt, spud_tool_choice choice,
                                    const char *function, bool parallel, const spud_tokenizer *tok, bool strict,
                                    spud_tool_grammar *out);
void spud_tool_grammar_free(spud_tool_grammar *t);

#endif
