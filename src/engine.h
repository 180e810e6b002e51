/* engine.h: continuous batching. One engine thread owns one multi-sequence
 * context (spud_ctx_new_multi) and is the only code that runs its forward
 * pass; every other thread talks to it through requests.
 *
 * Each step the engine builds one spud_batch from
 *   - the next token of every generating slot (one row each), and
 *   - a chunk of at most one pending prompt's prefill (prefill_chunk rows
 *     while others decode, a whole batch when nothing else runs),
 * runs it, samples every slot from its own logits row, detokenizes, holds back
 * text that may be the start of a stop string, and hands the new text to the
 * request. A request asks for n choices: its prompt is prefilled once and the
 * KV copied into the other choices' slots (spud_ctx_seq_copy).
 *
 * Grammars: a request may carry a compiled grammar (grammar.h). Each choice
 * gets its own matcher; before sampling, the tokens it refuses get -inf (after
 * logit_bias, before penalties and temperature); when the matcher is finished
 * (only end-of-generation may follow) the choice ends with SPUD_FINISH_STOP.
 * The vocabulary trie is built once per engine, by the first request that
 * needs it, and shared.
 *
 * Prefix reuse: every slot remembers the tokens whose KV it holds. A new
 * request gets the free slot whose history shares the longest prefix with its
 * prompt (or a copy of a longer prefix held by a busy slot); only the rest of
 * the prompt is computed, and that count is reported as cached tokens.
 *
 * Usage (error handling shortened):
 *
 *     spud_engine *e;
 *     spud_engine_new(model, &(spud_engine_params){ .n_parallel = 4 }, &e);
 *     spud_engine_req *r;
 *     spud_engine_submit(e, &(spud_engine_req_params){ .prompt = ids, .n_prompt = n,
 *                        .n_choices = 1, .max_tokens = 64, .sampling = sp }, &r);
 *     spud_engine_delta d = {0};
 *     while (!d.finish) {
 *         spud_engine_req_wait(r, -1);
 *         spud_engine_req_take(r, 0, &d);
 *         fwrite(d.text, 1, d.len, stdout);
 *     }
 *     spud_engine_delta_free(&d);
 *     spud_engine_req_release(r);
 *     spud_engine_free(e);
 *
 * Thread safety: submit, stats and every spud_engine_req_* function may be
 * called from any thread. A request handle belongs to the thread that
 * submitted it (one reader per request).
 */
#ifndef SPUD_ENGINE_H
#define SPUD_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "grammar.h"

typedef struct spud_engine spud_engine;
typedef struct spud_engine_req spud_engine_req;

typedef struct {
    uint32_t n_ctx;        /* positions per slot; 0: min(training context, 4096) */
    int32_t n_parallel;    /* slots (sequences decoded together); <= 0: 4 */
    int32_t max_queue;     /* requests that may wait for a slot; <= 0: 256 */
    int32_t prefill_chunk; /* prompt rows per step while other slots decode; <= 0: 64 */
} spud_engine_params;

#define SPUD_ENGINE_MAX_STOP 16        /* stop strings per request */
#define SPUD_ENGINE_MAX_STOP_LEN 256   /* bytes per stop string */
#define SPUD_ENGINE_MAX_TOP_LOGPROBS 20

typedef struct {
    int32_t token;
    float bias; /* added to the token's logit before sampling */
} spud_logit_bias;

/* What one request asks for. Everything is copied by submit. */
typedef struct {
    const int32_t *prompt;
    size_t n_prompt;               /* 1 .. n_ctx */
    int32_t n_choices;             /* 1 .. n_parallel */
    int32_t max_tokens;            /* <= 0: until end of generation or context full */
    spud_sampler_params sampling;  /* choice i samples with seed + i */
    const spud_logit_bias *bias;
    size_t n_bias;
    const char *const *stop;       /* stop strings (non-empty), never part of the output */
    size_t n_stop;
    bool logprobs;                 /* report the chosen token's log-probability */
    int32_t top_logprobs;          /* and that many alternatives (0 .. 20) */
    /* Grammar-constrained output (grammar.h), or NULL. Submit takes
     * ownership of the grammar whatever it returns (it is freed with the
     * request). Each choice gets its own matcher over the engine's shared
     * vocabulary trie; with triggers the grammar is lazy (tool_choice auto). */
    spud_grammar *grammar;
    const char *const *triggers;
    size_t n_triggers;
    /* Reasoning count: tokens generated inside a think block (from an open
     * marker to a close marker, e.g. "<think>" ... "</think>"; up to two
     * spellings each, NULL for none, at least one of each when any; at most
     * SPUD_ENGINE_MAX_THINK_LEN bytes)
     * are counted in spud_engine_delta.n_reasoning. in_reasoning: the output
     * starts inside the block (the prompt opened it). A token counts by the
     * state before its text: the one that completes the close marker is
     * reasoning, the one that completes the open marker is not. */
    const char *think_open[2], *think_close[2];
    bool in_reasoning;
} spud_engine_req_params;

#define SPUD_ENGINE_MAX_THINK_LEN 32

/* Log-probabilities (natural log, of the softmax of the biased logits, before
 * temperature and truncation; with a grammar, over the tokens it allows) of
 * one generated token. */
typedef struct {
    int32_t token;
    float logprob;
    int32_t n_top;
    struct {
        int32_t token;
        float logprob;
    } top[SPUD_ENGINE_MAX_TOP_LOGPROBS];
} spud_logprob;

typedef enum {
    SPUD_FINISH_NONE = 0,
    SPUD_FINISH_STOP,      /* end-of-generation token, stop string, or the grammar is finished */
    SPUD_FINISH_LENGTH,    /* max_tokens or the context is full */
    SPUD_FINISH_CANCELLED, /* cancelled, or the engine stopped */
    SPUD_FINISH_ERROR,     /* the forward pass failed; see spud_engine_req_error */
} spud_finish;

/* What one choice produced since the last take. The buffers belong to the
 * caller, grow as needed and are reused across takes (free with
 * spud_engine_delta_free). */
typedef struct {
    char *text;          /* new text, complete UTF-8, NUL-terminated */
    size_t len, cap;
    spud_logprob *lp;    /* one entry per token whose text is in `text` (when logprobs) */
    size_t n_lp, cap_lp;
    spud_finish finish;  /* set once the choice has ended (and stays set) */
    int32_t n_gen;       /* tokens generated so far */
    int32_t n_reasoning; /* of which inside a think block (see think_open) */
} spud_engine_delta;

typedef struct {
    uint32_t n_prompt;
    uint32_t n_cached;  /* prompt tokens whose KV was reused */
    double t_submit;    /* spud_time_s() times; 0 when not reached yet */
    double t_first;     /* first token of any choice sampled */
    double t_done;      /* every choice ended */
} spud_engine_req_info;

typedef struct {
    int32_t n_slots;
    int32_t n_active;           /* slots prefilling or generating */
    int32_t queue_depth;        /* requests waiting for slots */
    uint32_t n_ctx;
    uint64_t kv_used;           /* positions held by active slots */
    uint64_t kv_cached;         /* positions kept by free slots for prefix reuse */
    uint64_t kv_capacity;       /* n_slots * n_ctx */
    uint64_t prompt_tokens;     /* totals since start */
    uint64_t prompt_cached_tokens;
    uint64_t generated_tokens;
    uint64_t steps;             /* forward passes */
} spud_engine_stats;

/* Create the context and start the engine thread. */
spud_status spud_engine_new(const spud_model *m, const spud_engine_params *p, spud_engine **out);
/* Stop the engine thread: queued and running requests end with
 * SPUD_FINISH_CANCELLED and their readers are woken. Idempotent. Requests
 * submitted afterwards are refused. */
void spud_engine_stop(spud_engine *e);
/* Stop, then free. Request handles stay valid until released. */
void spud_engine_free(spud_engine *e);
uint32_t spud_engine_n_ctx(const spud_engine *e);
int32_t spud_engine_n_parallel(const spud_engine *e);
void spud_engine_get_stats(spud_engine *e, spud_engine_stats *s);
/* The model's grammar vocabulary (token trie), built on first use (about
 * 0.3 s for 150K tokens, by the calling thread, never the engine's), then
 * shared by every request. NULL with the error set if it cannot be built. */
const spud_grammar_vocab *spud_engine_grammar_vocab(spud_engine *e);

/* Queue a request. SPUD_ERR_RANGE: the queue is full (try later);
 * SPUD_ERR_INVALID: bad parameters (the message says which, e.g. a grammar
 * token reference the vocabulary lacks) or the engine has stopped. */
spud_status spud_engine_submit(spud_engine *e, const spud_engine_req_params *p, spud_engine_req **out);

/* A file descriptor that becomes readable when the request has news (poll it
 * together with a socket); spud_engine_req_wait clears it. */
int spud_engine_req_fd(const spud_engine_req *r);
/* Wait up to timeout_ms (< 0: forever) for news; true if there was some. */
bool spud_engine_req_wait(spud_engine_req *r, int timeout_ms);
/* Move choice's new output into d (d->len and d->n_lp are reset first). */
void spud_engine_req_take(spud_engine_req *r, int32_t choice, spud_engine_delta *d);
/* True when every choice has ended. */
bool spud_engine_req_done(spud_engine_req *r);
void spud_engine_req_get_info(spud_engine_req *r, spud_engine_req_info *info);
/* The error message of a SPUD_FINISH_ERROR request ("" otherwise). */
const char *spud_engine_req_error(spud_engine_req *r);
/* Ask the engine to stop the request; its slots are freed within one step. */
void spud_engine_req_cancel(spud_engine_req *r);
/* The reader has all it wants of one choice (say, the first tool call):
 * the engine ends it with SPUD_FINISH_STOP before its next step, dropping
 * text it has not handed out yet. Tokens of a step already running when this
 * is called still count in n_gen. No effect on an ended choice. */
void spud_engine_req_end_choice(spud_engine_req *r, int32_t choice);
/* Cancel if unfinished and drop the caller's handle. */
void spud_engine_req_release(spud_engine_req *r);

void spud_engine_delta_free(spud_engine_delta *d);

#endif
