/* tool_parse.h: a model's raw output split into content, reasoning and tool
 * calls, incrementally, in the model family's own call syntax.
 *
 *     spud_call_syntax syn = spud_call_syntax_detect(template_text);
 *     spud_out_parser *p;
 *     spud_out_parser_opts o = {.syntax = syn, .tools = true, .reasoning = true,
 *                               .in_reasoning = prompt_ends_inside_think};
 *     spud_out_parser_new(&o, &p);
 *     for each decoded piece:  spud_out_parser_feed(p, piece, len, on_event, ud);
 *     at the end:              spud_out_parser_finish(p, on_event, ud);
 *     spud_out_parser_free(p);
 *
 * Events come in output order. Text that may still turn out to be the start
 * of call syntax or of a reasoning marker is held back until it is decided,
 * so call syntax never reaches CONTENT, however the output is cut into
 * pieces (one byte at a time gives the same events, concatenated, as the
 * whole text at once). For each call: CALL_BEGIN (index from 0, name), then
 * zero or more CALL_ARGS fragments whose concatenation is the arguments as
 * JSON text (an object; "{}" when the model gave none), then CALL_END.
 *
 * Syntaxes:
 *   HERMES   <tool_call>{"name": "f", "arguments": {...}}</tool_call>   (Hermes 2 Pro, Qwen 2.5 / 3)
 *   LLAMA3   {"name": "f", "parameters": {...}}  or  <|python_tag|>{...}  (Llama 3.1-3.3)
 *   MISTRAL  [TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]
 *            and [TOOL_CALLS]f[ARGS]{...}                                (Mistral, Nemo, newer)
 *   DEEPSEEK <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f
 *            ```json\n{...}\n```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>  (DeepSeek V3 / R1)
 *   HARMONY  <|channel|>commentary to=functions.f <|constrain|>json<|message|>{...}<|call|>
 *            (gpt-oss; the analysis channel is reasoning, final is content)
 *   GENERIC  {"tool_calls": [{"name": "f", "arguments": {...}}]} or {"name":..,"arguments":..}
 *            (models whose template names no syntax; found anywhere in the output, as
 *            tool_choice auto's lazy grammar lets text come first)
 * A bare JSON object (LLAMA3, GENERIC) is a call only with a plain name
 * ([A-Za-z0-9_.-]{1,64}) and its arguments: {"name": "Bob"} stays text.
 * Reasoning: <think>...</think> (Qwen3, DeepSeek R1 and others; MISTRAL also
 * [THINK]...[/THINK], Magistral) when opts.reasoning; harmony's analysis
 * channel always.
 *
 * A call that never completes (output cut by max_tokens) is not reported as
 * a call: finish() emits its text as CONTENT, so nothing is lost.
 *
 * Malformed calls: text after a call marker that does not follow the syntax,
 * or arguments that are not one valid JSON object (checked when the object
 * closes), make the call text so far CONTENT, and parsing goes on after it.
 * Arguments stream as they are generated, so such a call (or one cut by
 * max_tokens) may already have had its CALL_BEGIN and CALL_ARGS: a
 * CALL_BEGIN with no CALL_END before the next CALL_BEGIN or the end of the
 * output is a call abandoned this way; drop it (its index is not reused).
 * Whitespace that is only layout is dropped: right before and after a call,
 * after </think>, and at both ends of a think block.
 * Memory: at most 1 MiB of one call or held-back text; beyond, feed()
 * fails with SPUD_ERR_RANGE.
 */
#ifndef SPUD_TOOL_PARSE_H
#define SPUD_TOOL_PARSE_H

#include <stdbool.h>
#include <stddef.h>

#include "core.h"

typedef enum {
    SPUD_CALLS_GENERIC,
    SPUD_CALLS_HERMES,
    SPUD_CALLS_LLAMA3,
    SPUD_CALLS_MISTRAL,
    SPUD_CALLS_DEEPSEEK,
    SPUD_CALLS_HARMONY,
} spud_call_syntax;

/* The syntax a chat template's text uses (NULL or no marker: GENERIC). */
spud_call_syntax spud_call_syntax_detect(const char *chat_template);
/* "generic", "hermes", "llama3", "mistral", "deepseek", "harmony". */
const char *spud_call_syntax_name(spud_call_syntax s);

typedef enum {
    SPUD_OUT_CONTENT,
    SPUD_OUT_REASONING,
    SPUD_OUT_CALL_BEGIN,
    SPUD_OUT_CALL_ARGS,
    SPUD_OUT_CALL_END,
} spud_out_kind;

typedef struct {
    spud_out_kind kind;
    int index;        /* CALL_*: the call's index in this output */
    const char *name; /* CALL_BEGIN: the function name (NUL-terminated) */
    const char *text; /* CONTENT, REASONING, CALL_ARGS: the fragment (not NUL-terminated) */
    size_t len;
} spud_out_event;

typedef void (*spud_out_event_fn)(void *ud, const spud_out_event *ev);

typedef struct {
    spud_call_syntax syntax;
    bool tools;        /* false: never parse calls (tool_choice none, no tools): all text is content */
    bool reasoning;    /* split <think>...</think> into REASONING */
    bool in_reasoning; /* the prompt already opened a think block: output starts as reasoning */
} spud_out_parser_opts;

typedef struct spud_out_parser spud_out_parser;

spud_status spud_out_parser_new(const spud_out_parser_opts *opts, spud_out_parser **out);
spud_status spud_out_parser_feed(spud_out_parser *p, const char *text, size_t len, spud_out_event_fn fn, void *ud);
spud_status spud_out_parser_finish(spud_out_parser *p, spud_out_event_fn fn, void *ud);
void spud_out_parser_free(spud_out_parser *p);

#endif
