/* model.h: the loaded model (immutable, shared) and the per-sequence context.
 *
 * Loading is split: model.c opens the GGUF file, reads the tokenizer and
 * the hyperparameters every decoder shares, then hands the file to the
 * architecture's loader (arch_llama.c, arch_qwen.c) which names its tensors
 * and options. decoder.c runs the forward pass that all of them share.
 */
#ifndef SPUD_MODEL_H
#define SPUD_MODEL_H

#include "gguf.h"
#include "matmul.h"
#include "spud.h"
#include "threadpool.h"
#include "tokenizer.h"

typedef enum {
    SPUD_ARCH_LLAMA,
    SPUD_ARCH_QWEN2,
    SPUD_ARCH_QWEN3,
} spud_arch;

typedef struct {
    spud_weight attn_norm; /* (dim) f32 */
    spud_weight wq;        /* (dim -> n_head * head_dim) */
    spud_weight wk;        /* (dim -> n_head_kv * head_dim) */
    spud_weight wv;        /* (dim -> n_head_kv * head_dim) */
    spud_weight wo;        /* (n_head * head_dim -> dim) */
    spud_weight bq, bk, bv; /* optional biases (qwen2), f32; data NULL when absent */
    spud_weight q_norm, k_norm; /* optional per-head RMS norms (qwen3), (head_dim) f32 */
    spud_weight ffn_norm;  /* (dim) f32 */
    spud_weight w_gate;    /* (dim -> n_ff) */
    spud_weight w_up;      /* (dim -> n_ff) */
    spud_weight w_down;    /* (n_ff -> dim) */
} spud_layer;

typedef struct {
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;  /* key/value length per head */
    int32_t n_ff;
    int32_t n_rot;     /* dimensions rotated by RoPE (<= head_dim) */
    uint32_t n_ctx_train;
    float rope_base;
    float norm_eps;
    bool rope_neox;    /* rotate pairs (i, i + n_rot/2) instead of (2i, 2i+1) */
} spud_hparams;

struct spud_model {
    spud_gguf *gguf;
    spud_tokenizer *tok;
    spud_arch arch;
    const char *arch_name;
    spud_hparams hp;
    spud_weight tok_embd;    /* (dim, n_vocab): row t is token t's embedding */
    spud_weight output_norm; /* (dim) f32 */
    spud_weight output;      /* (dim -> n_vocab); token_embd when tied */
    const float *rope_freqs; /* (n_rot / 2) divisors of the RoPE frequencies, or NULL */
    spud_layer *layers;      /* (n_layer) */
    int32_t n_threads;
    uint64_t n_params;
};

/* ---- shared by the architecture loaders ---- */

/* Look up tensor `name` and check it is 2-D (n_in, n_out) (or 1-D (n_in) when
 * n_out == 0) of a supported type. Optional tensors that are absent leave
 * w->data NULL and return SPUD_OK. 1-D tensors must be F32. */
spud_status spud_model_weight(spud_model *m, spud_weight *w, const char *name, int64_t n_in,
                              int64_t n_out, bool required);
/* Same, for per-layer tensors: name is printf-formatted with the layer index. */
spud_status spud_model_layer_weight(spud_model *m, spud_weight *w, int layer, const char *fmt,
                                    int64_t n_in, int64_t n_out, bool required);
/* Read "{arch}.{suffix}" metadata. */
spud_status spud_model_hp_u32(spud_model *m, const char *suffix, uint32_t *out, bool required);
spud_status spud_model_hp_f32(spud_model *m, const char *suffix, float *out, bool required);
/* Reads the hyperparameters and tensors every llama-style decoder has
 * (embeddings, norms, attention, SwiGLU FFN, output), leaving the optional
 * per-architecture tensors to the caller. */
spud_status spud_model_load_decoder(spud_model *m, float default_eps, float default_rope_base);

/* Architecture loaders (one file per family). */
spud_status spud_arch_llama_load(spud_model *m);
spud_status spud_arch_qwen_load(spud_model *m);

/* ---- per-sequence context ---- */

struct spud_ctx {
    const spud_model *model;
    spud_pool *pool;
    uint32_t n_ctx;   /* positions per sequence */
    uint32_t n_seq;
    uint32_t *n_past; /* (n_seq) positions used per sequence */
    uint32_t *seq_need; /* (n_seq) scratch of spud_decode_batch: rows per sequence */
    /* KV cache of kv_type (F32, F16 or Q8_0): one region of n_ctx_alloc
     * positions per [layer][seq][kv_head]; in it K is stored in tiles of 16
     * positions and V row-major (tensor.h, "attention over one KV head"). */
    spud_type kv_type;
    uint32_t n_ctx_alloc; /* n_ctx rounded up to whole attention tiles */
    void *k_cache;
    void *v_cache;
    /* Scratch for one batch of up to n_batch rows (carved from one allocation). */
    int32_t n_batch;
    int32_t n_logits_max; /* rows per call that may ask for logits */
    void *arena;
    uint32_t *row_seq; /* (n_batch) sequence of each row */
    uint32_t *row_pos; /* (n_batch) position of each row */
    float *x;       /* (n_batch, dim) residual stream */
    float *h;       /* (n_batch, dim) normed input */
    float *q;       /* (n_batch, n_head * head_dim) */
    float *k;       /* (n_batch, n_head_kv * head_dim) */
    float *v;       /* (n_batch, n_head_kv * head_dim) */
    float *att;     /* (n_batch, n_head * head_dim) attention output */
    float *gate;    /* (n_batch, n_ff) */
    float *up;      /* (n_batch, n_ff) */
    float *attn_work; /* (n_threads, attn_work_floats) attention scratch per thread */
    size_t attn_work_floats;
    int32_t *row_block; /* (n_batch + 1) attention blocks: first row of each, then n */
    float *rope_cs; /* (n_batch, n_rot) cos, sin interleaved per pair */
    float *inv_freq; /* (n_rot / 2) */
    float *out_rows; /* (n_logits_max, dim) normed rows that want logits */
    void *mm_scratch; /* converted activations for matmul */
    float *logits;  /* (n_logits_max, n_vocab) */
};

/* Byte offset of the region of (layer, seq, kv_head) in k_cache / v_cache. */
static inline size_t spud_kv_region(const spud_ctx *c, int layer, uint32_t seq, int g) {
    const spud_hparams *hp = &c->model->hp;
    return (((size_t)layer * c->n_seq + seq) * (size_t)hp->n_head_kv + (size_t)g) * c->n_ctx_alloc *
           spud_kv_row_bytes(c->kv_type, hp->head_dim);
}

/* Floats of attention scratch per thread (decoder.c). */
size_t spud_decoder_attn_work_floats(const spud_hparams *hp);

/* Forward pass over n rows (n <= c->n_batch) whose row_seq / row_pos are set;
 * writes the logits of the n_out rows listed in out_idx to logits (n_out x
 * n_vocab floats). (decoder.c) */
spud_status spud_decoder_forward(spud_ctx *c, const spud_input *in, int32_t n,
                                 const int32_t *out_idx, int32_t n_out, float *logits);

/* Append n synthetic positions to sequence seq: seeded pseudo-random K and V
 * rows of unit scale, for benchmarks that need a deep cache without
 * prefilling it (the cost of attending to a row does not depend on its
 * values). (decoder.c) */
spud_status spud_decoder_fill_synthetic(spud_ctx *c, uint32_t seq, uint32_t n, uint64_t seed);

#endif
