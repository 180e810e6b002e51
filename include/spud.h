/* spud.h: the public C API of libspud.
 *
 * Usage (error handling shortened):
 *
 *     spud_model *model;
 *     spud_model_params mp = spud_model_default_params();
 *     if (spud_model_load("model.gguf", &mp, &model) != SPUD_OK) {
 *         fprintf(stderr, "%s\n", spud_last_error());
 *         return 1;
 *     }
 *     spud_ctx *ctx;
 *     spud_ctx_new(model, 4096, &ctx);                  // per-sequence state
 *     int32_t *ids; size_t n_ids;
 *     spud_tokenize(model, "Hello", 5, true, false, &ids, &n_ids);
 *     spud_sampler *smp = spud_sampler_new(&(spud_sampler_params){ .temp = 0 },
 *                                          spud_model_n_vocab(model));
 *     const float *logits;
 *     spud_decode_tokens(ctx, ids, n_ids, &logits);     // prefill, logits of last row
 *     for (int i = 0; i < 32; i++) {
 *         int32_t t = spud_sampler_sample(smp, logits, spud_model_n_vocab(model));
 *         if (spud_token_is_eog(model, t)) break;
 *         spud_sampler_accept(smp, t);
 *         spud_decode_tokens(ctx, &t, 1, &logits);
 *     }
 *     spud_free(ids); spud_sampler_free(smp); spud_ctx_free(ctx); spud_model_free(model);
 *
 * Thread safety: a spud_model is immutable after loading and may be shared by
 * any number of threads and contexts. A spud_ctx (KV cache, scratch, logits)
 * and a spud_sampler belong to one thread at a time.
 */
#ifndef SPUD_H
#define SPUD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    SPUD_OK = 0,
    SPUD_ERR_IO,          /* file missing, unreadable, mmap failed */
    SPUD_ERR_FORMAT,      /* malformed file or input */
    SPUD_ERR_NOMEM,       /* allocation failed or a size does not fit memory */
    SPUD_ERR_INVALID,     /* bad argument */
    SPUD_ERR_UNSUPPORTED, /* valid but not supported (architecture, type) */
    SPUD_ERR_NOT_FOUND,   /* key or tensor absent */
    SPUD_ERR_RANGE,       /* context full, value out of range */
} spud_status;

/* The message of the last error on this thread (one line, never NULL). */
const char *spud_last_error(void);
const char *spud_status_name(spud_status st);

void spud_free(void *p); /* frees memory libspud handed to the caller */

/* ---- model (immutable, shareable) ---- */
typedef struct spud_model spud_model;
typedef struct {
    int32_t n_threads; /* threads for matrix products; <= 0: all cores */
} spud_model_params;

spud_model_params spud_model_default_params(void);
spud_status spud_model_load(const char *path, const spud_model_params *p, spud_model **out);
void spud_model_free(spud_model *m);
int32_t spud_model_n_vocab(const spud_model *m);
int32_t spud_model_n_embd(const spud_model *m);
uint32_t spud_model_n_ctx_train(const spud_model *m);
/* Bytes of KV cache one token of context costs (with the default KV type). */
uint64_t spud_model_kv_bytes_per_token(const spud_model *m);

/* ---- tokenizer (part of the model) ---- */
/* Encode text to ids (caller frees *ids with spud_free). add_special: add BOS
 * (and EOS) as the model's metadata says. parse_special: recognise control
 * token text such as "<|im_start|>" in the input. */
spud_status spud_tokenize(const spud_model *m, const char *text, size_t len, bool add_special,
                          bool parse_special, int32_t **ids, size_t *n_ids);
/* The raw bytes of one token (byte-level / byte-fallback decoded); control
 * tokens give "" unless render_special. Returns the length; writes at most cap. */
size_t spud_token_to_piece(const spud_model *m, int32_t id, bool render_special, char *buf,
                           size_t cap);
bool spud_token_is_eog(const spud_model *m, int32_t id);
int32_t spud_token_bos(const spud_model *m);
int32_t spud_token_eos(const spud_model *m);

/* ---- context: KV cache and scratch for one or more sequences ---- */
typedef struct spud_ctx spud_ctx;
/* A context for one sequence of up to n_ctx positions (0: the training context). */
spud_status spud_ctx_new(const spud_model *m, uint32_t n_ctx, spud_ctx **out);
/* A context for n_seq independent sequences of up to n_ctx positions each,
 * which spud_decode_batch advances together in one forward pass. The KV
 * cache (n_seq * n_ctx * spud_model_kv_bytes_per_token bytes) is allocated
 * up front; a size that does not fit in memory is refused. */
spud_status spud_ctx_new_multi(const spud_model *m, uint32_t n_ctx, uint32_t n_seq, spud_ctx **out);
/* Element type of the KV cache. AUTO (the default of every constructor): f16
 * when the model's K and V projections are quantized (their inputs are
 * rounded to 8 bits already), f32 when they are float (F32, F16, BF16: spud
 * keeps those activations in f32). The environment variable
 * SPUD_KV_TYPE=f32|f16|q8_0 overrides AUTO. f16 halves the cache's memory and
 * the bandwidth attention needs; Q8_0 (int8 and one scale per position and
 * head, queries rounded to int8 for the scores) halves it again at the cost
 * of about 0.5% error per cached value (a kernel set without a Q8_0
 * attention path gets F16 instead; spud_ctx_kv_bytes_per_token tells which). */
typedef enum { SPUD_KV_AUTO = 0, SPUD_KV_F32, SPUD_KV_F16, SPUD_KV_Q8_0 } spud_kv_type;
typedef struct {
    uint32_t n_ctx; /* positions per sequence (0: the training context) */
    uint32_t n_seq; /* sequences (0: 1) */
    spud_kv_type kv_type;
} spud_ctx_params;
spud_ctx_params spud_ctx_default_params(void);
spud_status spud_ctx_new_params(const spud_model *m, const spud_ctx_params *p, spud_ctx **out);
/* Bytes of this context's KV cache per position of one sequence. */
uint64_t spud_ctx_kv_bytes_per_token(const spud_ctx *c);
void spud_ctx_free(spud_ctx *c);
uint32_t spud_ctx_n_ctx(const spud_ctx *c);
uint32_t spud_ctx_n_seq(const spud_ctx *c);
uint32_t spud_ctx_seq_n_past(const spud_ctx *c, uint32_t seq);
/* Keep only the first n positions of a sequence (n >= its length: no-op). */
void spud_ctx_seq_truncate(spud_ctx *c, uint32_t seq, uint32_t n);
/* Make sequence dst a copy of the first n positions of sequence src. */
spud_status spud_ctx_seq_copy(spud_ctx *c, uint32_t src, uint32_t dst, uint32_t n);
/* Sequence 0 shorthands. */
uint32_t spud_ctx_n_past(const spud_ctx *c);
void spud_ctx_truncate(spud_ctx *c, uint32_t n);
void spud_ctx_reset(spud_ctx *c); /* forget all positions of all sequences */

/* One input row: a token id, or (embd != NULL) an embedding of n_embd floats
 * that takes the place of a token embedding (images, audio). */
typedef struct {
    int32_t token;
    const float *embd;
} spud_input;

/* Rows for several sequences. Row i goes to sequence seq[i] (NULL: all 0) at
 * that sequence's next position; a sequence's rows keep their order. Rows with
 * want_logits[i] (NULL: only the last row) get logits; at most
 * max(1, n_seq) rows per call may ask. */
typedef struct {
    const spud_input *in;
    const uint32_t *seq;
    const bool *want_logits;
    size_t n;
} spud_batch;

/* Run the rows through the model, append them to their sequences' KV caches,
 * and set *logits to n_vocab floats per row that asked, in row order (valid
 * until the next call). On error nothing has changed. */
spud_status spud_decode_batch(spud_ctx *c, const spud_batch *b, const float **logits);
/* One sequence (0): logits of the last row. */
spud_status spud_decode(spud_ctx *c, const spud_input *in, size_t n, const float **logits);
spud_status spud_decode_tokens(spud_ctx *c, const int32_t *ids, size_t n, const float **logits);

/* ---- sampler ---- */
typedef struct {
    float temp;             /* <= 0: greedy */
    int32_t top_k;          /* <= 0: off */
    float top_p;            /* >= 1: off */
    float min_p;            /* <= 0: off */
    float repeat_penalty;   /* 1 (or 0): off */
    int32_t repeat_last_n;  /* window for the penalties; 0: off, -1: whole history */
    float freq_penalty;     /* 0: off */
    float presence_penalty; /* 0: off */
    uint64_t seed;
} spud_sampler_params;

typedef struct spud_sampler spud_sampler;
spud_sampler_params spud_sampler_default_params(void);
spud_sampler *spud_sampler_new(const spud_sampler_params *p, int32_t n_vocab);
void spud_sampler_free(spud_sampler *s);
/* Pick a token from logits (not modified). Deterministic for a given seed and history. */
int32_t spud_sampler_sample(spud_sampler *s, const float *logits, int32_t n_vocab);
/* Add a token to the history the penalties look at (prompt and generated). */
void spud_sampler_accept(spud_sampler *s, int32_t token);
void spud_sampler_reset(spud_sampler *s);

#ifdef __cplusplus
}
#endif
#endif
