/* server_int.h: what the server's files share (not part of any public API).
 *
 *   server.c            HTTP plumbing: daemon, routing, auth, limits, SSE, shutdown
 *   server_json.c       request validation helpers, OpenAI error JSON, ids, UTF-8
 *   server_metrics.c    Prometheus counters and histograms
 *   server_oai.c        chat / completions: parameters, prompt, output JSON
 *   server_responses.c  the Responses API and its conversation store
 *   server_tools.c      response_format / text.format, grammar, tools and tool_choice -> one grammar
 */
#ifndef SPUD_SERVER_INT_H
#define SPUD_SERVER_INT_H

#include <json-c/json.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

#include "chat.h"
#include "model.h"
#include "server.h"
#include "tool_grammar.h"
#include "tool_parse.h"

enum { SRV_LOADING = 0, SRV_READY, SRV_DRAINING };

typedef enum {
    ROUTE_HEALTH = 0,
    ROUTE_METRICS,
    ROUTE_MODELS,
    ROUTE_CHAT,
    ROUTE_COMPLETIONS,
    ROUTE_RESPONSES,
    ROUTE_APPLY_TEMPLATE,
    ROUTE_TOKENIZE,
    ROUTE_DETOKENIZE,
    ROUTE_OTHER,
    ROUTE_N,
} srv_route;

typedef enum { API_CHAT = 0, API_COMPLETION, API_RESPONSES } srv_api;

/* An error answer: the HTTP status and OpenAI's error object. */
typedef struct {
    int status;
    const char *type; /* "invalid_request_error", "server_error", ... */
    const char *code; /* machine-readable code, or NULL */
    char param[192];  /* the offending field, "" for none */
    char message[512];
} srv_error;

/* ---- server_metrics.c ---- */

#define SRV_HIST_BUCKETS 14
typedef struct {
    double le[SRV_HIST_BUCKETS]; /* upper bounds; the last is +Inf */
    uint64_t count[SRV_HIST_BUCKETS];
    double sum;
    uint64_t n;
} srv_hist;

typedef struct {
    pthread_mutex_t mu;
    uint64_t requests[ROUTE_N][600]; /* by route and HTTP status */
    srv_hist ttft;                   /* seconds from arrival to first token */
    srv_hist tps;                    /* generated tokens per second, per request */
    uint64_t cancelled;              /* generations stopped because the client left */
} srv_metrics;

void srv_metrics_init(srv_metrics *m);
void srv_metrics_free(srv_metrics *m);
void srv_metrics_request(srv_metrics *m, srv_route route, int status);
void srv_metrics_generation(srv_metrics *m, double ttft, double tps, bool client_left);
/* Prometheus text for everything (engine stats included when e is set); NUL-terminated. */
char *srv_metrics_render(srv_metrics *m, spud_engine *e, size_t *len);
const char *srv_route_name(srv_route r);

/* ---- server_responses.c: stored conversations ---- */

typedef struct srv_store_entry srv_store_entry;
typedef struct {
    pthread_mutex_t mu;
    srv_store_entry *head, *tail; /* least recently used first */
    size_t bytes, max_bytes, n;
} srv_store;

void srv_store_init(srv_store *st, size_t max_bytes);
void srv_store_free(srv_store *st);

/* ---- the server ---- */

struct spud_server {
    spud_server_params p;
    char *host, *model_id;
    char **keys;
    size_t *key_len;
    struct MHD_Daemon *daemon;
    uint16_t port;
    atomic_int state;
    const spud_model *model;
    spud_engine *engine;
    uint32_t n_ctx;
    int32_t n_parallel;
    int64_t created;
    spud_chat_template *tmpl; /* the model's chat template; NULL: our ChatML */
    spud_call_syntax call_syntax; /* how the template writes tool calls (HERMES for ChatML) */
    spud_tool_format tool_format; /* the grammar format that writes call_syntax */
    bool thinks;                  /* the template writes <think> (or [THINK]) blocks: split reasoning_content */

    pthread_mutex_t mu; /* in_flight */
    pthread_cond_t cv;
    int in_flight;      /* generations not yet answered */

    srv_metrics metrics;
    srv_store store;
};

/* ---- one generation, streamed or not ---- */

#define SRV_MAX_PROMPTS 64 /* prompts per /v1/completions request */

/* A growable NUL-terminated byte string. */
typedef struct {
    char *p;
    size_t n, cap;
} srv_buf;
bool srv_buf_add(srv_buf *b, const char *s, size_t n); /* false: out of memory (b unchanged) */

/* One tool call parsed out of the output. */
typedef struct {
    char id[40]; /* call_... */
    char *name;
    srv_buf args; /* the arguments, JSON text */
    int32_t item_index; /* responses: its output_index */
} srv_call;

typedef struct {
    char *text; /* everything generated (NUL-terminated) */
    size_t len, cap;
    json_object *lp; /* accumulated logprobs (API-specific shape), or NULL */
    spud_finish finish;
    int32_t n_gen, n_reasoning; /* tokens generated; of which inside a think block */
    bool role_sent;
    bool end_sent;
    /* with tools or reasoning, the output parser splits `text` (tool_parse.h) */
    struct spud_out_parser *parser;
    srv_buf content, reasoning;
    srv_call *calls;   /* complete calls, then the one being parsed when call_open */
    int32_t n_calls, cap_calls;
    bool call_open;
    bool parse_failed; /* the parser gave up (too long): the rest is content */
    bool one_done;     /* parallel_tool_calls false: the first call is complete, the rest is ignored */
    int32_t item_index; /* responses: output_index of the message item, once msg_opened */
    bool msg_opened, msg_closed;
    int32_t rs_index;   /* responses: output_index of the reasoning item, once rs_opened */
    bool rs_opened, rs_closed;
    char rs_id[48];
} srv_choice;

typedef struct srv_gen {
    spud_server *s;
    srv_api api;
    srv_route route;
    /* one engine request per prompt (completions may send several, up to
     * SRV_MAX_PROMPTS): choice c is choice c % per_req of reqs[c / per_req] */
    spud_engine_req *reqs[SRV_MAX_PROMPTS];
    int32_t n_reqs, per_req;
    int32_t n_choices;
    srv_choice *ch;
    bool stream, include_usage, logprobs;
    bool parse;                    /* split content / reasoning / tool calls (see srv_choice.parser) */
    bool live_calls;               /* a grammar enforces the calls: stream their arguments as they come */
    bool one_call;                 /* parallel_tool_calls false: only the first call is returned */
    spud_call_syntax popts_syntax;
    bool popts_tools, popts_reasoning, popts_in_reasoning;
    int32_t n_items;               /* responses: output items so far */
    int32_t top_logprobs;
    char id[48];      /* chatcmpl-..., cmpl-..., resp_... */
    char item_id[48]; /* responses: the output message's id */
    int64_t created;
    uint32_t n_prompt, n_cached;
    double t_arrival;
    char *echo[SRV_MAX_PROMPTS]; /* completions echo: each prompt's text */

    /* responses */
    json_object *resp;    /* the response object being built (fields echoed from the request) */
    json_object *conv;    /* the conversation to store (messages, without instructions) */
    bool store;
    int64_t seq_no;

    /* output waiting to be written to the socket (streams) */
    char *out;
    size_t out_len, out_pos, out_cap;
    spud_engine_delta d;
    int sock;
    bool sock_watch;
    bool started, done, client_left;
} srv_gen;

srv_gen *srv_gen_new(spud_server *s, srv_api api, srv_route route, int32_t n_choices);
void srv_gen_free(srv_gen *g);
/* Queue one more engine request, for the next per_req choices (429 when the
 * queue is full; the requests already queued stay with g and are released
 * with it). */
bool srv_gen_submit(srv_gen *g, const spud_engine_req_params *p, srv_error *err);
/* The error message of the first failed engine request ("" if none). */
const char *srv_gen_error(const srv_gen *g);
/* Append bytes / one SSE event to the stream's output. */
void srv_out(srv_gen *g, const char *s, size_t n);
void srv_out_event(srv_gen *g, const char *event, json_object *data); /* consumes data */

/* ---- server_json.c ---- */

bool srv_fail(srv_error *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
json_object *srv_error_json(const srv_error *e);
/* Optional typed fields: absent or null leaves *out untouched and succeeds;
 * a wrong type or a value out of [lo, hi] is a 400 naming the field. */
bool srv_opt_number(json_object *o, const char *key, double lo, double hi, double *out, srv_error *e);
bool srv_opt_int(json_object *o, const char *key, int64_t lo, int64_t hi, int64_t *out, srv_error *e);
bool srv_opt_bool(json_object *o, const char *key, bool *out, srv_error *e);
bool srv_opt_string(json_object *o, const char *key, const char **out, srv_error *e);
/* The field if present, non-null and of type t (else NULL; *bad on wrong type). */
json_object *srv_opt_typed(json_object *o, const char *key, json_type t, const char *what, srv_error *e,
                           bool *bad);
/* Stop strings: a string or an array of strings. */
bool srv_parse_stop(json_object *o, const char *key, const char **stop, size_t *n_stop, srv_error *e);
bool srv_parse_logit_bias(json_object *o, int32_t n_vocab, spud_logit_bias **bias, size_t *n, srv_error *e);
/* Sampling fields shared by chat, completions and responses. */
bool srv_parse_sampling(json_object *body, spud_sampler_params *sp, srv_error *e);
void srv_random_id(char *out, size_t cap, const char *prefix);
uint64_t srv_random_u64(void);
/* A copy of bytes as valid UTF-8 (invalid sequences become U+FFFD). */
json_object *srv_json_string_lossy(const char *s, size_t n);
const char *srv_json_text(json_object *o, size_t *len); /* serialised, plain */
const char *srv_finish_name(spud_finish f);

/* ---- server_oai.c ---- */

/* Render OpenAI chat messages (validated) into prompt text with the model's
 * chat template (ChatML when it has none). */
bool srv_render_chat(spud_server *s, json_object *messages, json_object *tools, bool add_generation_prompt,
                     char **out, size_t *out_len, srv_error *e);
/* Validate a chat "messages" array (param names the field in errors). */
bool srv_check_messages(json_object *messages, const char *param, srv_error *e);
/* Tokenize a prompt (special tokens parsed; BOS/EOS added when add_special
 * and the vocabulary asks, at most one BOS) and check it fits the context;
 * param names the field for the 400. Chat prompts pass add_special false:
 * the template writes whatever BOS the model wants, as Hugging Face's
 * apply_chat_template expects. */
bool srv_tokenize_prompt(spud_server *s, const char *text, size_t len, bool add_special, const char *param,
                         int32_t **ids, size_t *n_ids, srv_error *e);
/* A chat prompt's tokens (srv_render_chat with the generation prompt, then
 * srv_tokenize_prompt's checks), special tokens parsed only in the bytes the
 * template wrote: message content that spells "<|im_start|>" stays text.
 * *text (when text is not NULL): the prompt text, free with spud_free. */
bool srv_chat_tokens(spud_server *s, json_object *messages, json_object *tools, const char *param, char **text,
                     size_t *len, int32_t **ids, size_t *n_ids, srv_error *e);
json_object *srv_usage_json(const srv_gen *g, bool responses);
/* Per API: build the request, stream events, final JSON. */
bool srv_chat_prepare(spud_server *s, json_object *body, srv_gen **g, srv_error *e);
bool srv_completion_prepare(spud_server *s, json_object *body, srv_gen **g, srv_error *e);
bool srv_apply_template(spud_server *s, json_object *body, json_object **out, srv_error *e);
/* POST /tokenize {"content", "add_special", "parse_special"} -> {"tokens"};
 * POST /detokenize {"tokens"} -> {"content"} (llama.cpp's shapes). */
bool srv_tokenize_route(spud_server *s, json_object *body, json_object **out, srv_error *e);
bool srv_detokenize_route(spud_server *s, json_object *body, json_object **out, srv_error *e);
void srv_oai_stream_delta(srv_gen *g, int32_t c, const spud_engine_delta *d);
/* Parsed pieces of a streamed chat choice: content, reasoning_content, and
 * calls: CALL_BEGIN / CALL_ARGS (fragment) / CALL_END as they come when
 * g->live_calls, else only CALL_END once the call is complete. */
void srv_oai_stream_piece(srv_gen *g, int32_t c, int kind, const char *text, size_t len, const srv_call *call);
void srv_oai_stream_end(srv_gen *g);
json_object *srv_oai_final(srv_gen *g);
/* Log-probability entries in chat / completions shape. */
void srv_logprobs_append(srv_gen *g, json_object *dst, const spud_logprob *lp, size_t n, size_t text_offset);

/* ---- server_tools.c ---- */

/* What the output must look like: a grammar (GBNF text, with a trigger word
 * when lazy) and whether tool calls are parsed out of it. */
typedef struct {
    char *gbnf;                /* NULL: unconstrained */
    char *trigger;             /* lazy grammar (tool_choice auto with strict tools) */
    const char *trig[1];
    char param[160];           /* the request field the grammar came from (400s name it) */
    bool tools;                /* tools were given and tool_choice is not none */
    spud_tool_choice choice;
    spud_call_syntax syntax;   /* the syntax to parse calls in */
    bool user_grammar;         /* gbnf is the request's own "grammar" */
    bool parallel;             /* parallel_tool_calls */
    int32_t think_max;         /* reasoning effort: characters of thought before a constrained answer (0: none) */
} srv_constraint;

/* reasoning_effort (chat) / reasoning.effort (responses) -> c->think_max:
 * none / minimal 0, low 1024, medium (default) 8192, high 32768. */
bool srv_parse_effort(json_object *o, const char *key, const char *param, srv_constraint *c, srv_error *e);

void srv_constraint_free(srv_constraint *c);
/* response_format (chat: {"type", "json_schema": {...}}) or text.format
 * (responses: {"type", "name", "schema", "strict"}); param is its path. */
bool srv_parse_format(json_object *fmt, const char *param, bool responses, srv_constraint *c, srv_error *e);
/* The "grammar" field (GBNF text; our extension, as llama-server has it). */
bool srv_parse_grammar(json_object *body, srv_constraint *c, srv_error *e);
/* Validate tools (chat shape; responses: reshaped, param paths as the
 * Responses API writes them) and tool_choice; build the tool-call grammar
 * when the choice is enforced. Call after the format / grammar. */
bool srv_parse_tools(spud_server *s, json_object *tools, json_object *tool_choice, bool parallel, bool responses,
                     srv_constraint *c, srv_error *e);
/* Compile the grammar into p (p->grammar then belongs to the engine request). */
bool srv_constraint_compile(srv_constraint *c, spud_engine_req_params *p, srv_error *e);
/* Decide how the output is split: calls when tools are on, reasoning when the
 * template thinks (in_reasoning when the prompt ends inside a think block).
 * When it does and c's grammar is a JSON format or a forced call, the grammar
 * is rewritten to let the model think first: up to c->think_max characters
 * free of the close marker, the marker, then the constrained answer. */
void srv_gen_set_parse(srv_gen *g, srv_constraint *c, const char *prompt, size_t prompt_len);
/* Feed new raw output of choice c to its parser (final: also flush it); the
 * parsed pieces land in the choice and, for streams, become events. Without
 * a parser the text is content as it is. */
void srv_parse_feed(srv_gen *g, int32_t c, const char *text, size_t len, bool final);
void srv_choice_free_parse(srv_choice *ch);
/* The finish_reason of a chat choice: "tool_calls" when it ended with calls. */
const char *srv_choice_finish(const srv_choice *ch);
/* The choice's complete calls as a chat message's "tool_calls" array (id,
 * type, function name and arguments), or NULL when it made none. */
json_object *srv_choice_calls_json(const srv_choice *ch);

/* ---- server_responses.c ---- */

bool srv_responses_prepare(spud_server *s, json_object *body, srv_gen **g, srv_error *e);
void srv_responses_stream_start(srv_gen *g);
void srv_responses_stream_delta(srv_gen *g, const spud_engine_delta *d);
void srv_responses_stream_piece(srv_gen *g, int kind, const char *text, size_t len, const srv_call *call);
void srv_responses_stream_end(srv_gen *g);
json_object *srv_responses_final(srv_gen *g);
/* Store the finished conversation when asked (called once the generation ends). */
void srv_responses_store(srv_gen *g);
/* GET /v1/responses/ID: a copy of the stored response, or NULL. */
json_object *srv_responses_get(spud_server *s, const char *id);
/* DELETE /v1/responses/ID: false if there is no such response. */
bool srv_responses_delete(spud_server *s, const char *id);

#endif
