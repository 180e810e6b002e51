/* model.c: load a GGUF model, validate its tensors, and the public model,
 * tokenizer and context API. The forward pass is in decoder.c. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

spud_model_params spud_model_default_params(void) {
    return (spud_model_params){.n_threads = 0};
}

spud_status spud_model_hp_u32(spud_model *m, const char *suffix, uint32_t *out, bool required) {
    char key[256];
    snprintf(key, sizeof key, "%s.%s", m->arch_name, suffix);
    spud_status st = spud_gguf_get_u32(m->gguf, key, out);
    if (st == SPUD_ERR_NOT_FOUND && required)
        return spud_errorf(SPUD_ERR_FORMAT, "missing metadata key '%s'", key);
    return st;
}

spud_status spud_model_hp_f32(spud_model *m, const char *suffix, float *out, bool required) {
    char key[256];
    snprintf(key, sizeof key, "%s.%s", m->arch_name, suffix);
    spud_status st = spud_gguf_get_f32(m->gguf, key, out);
    if (st == SPUD_ERR_NOT_FOUND && required)
        return spud_errorf(SPUD_ERR_FORMAT, "missing metadata key '%s'", key);
    return st;
}

spud_status spud_model_weight(spud_model *m, spud_weight *w, const char *name, int64_t n_in,
                              int64_t n_out, bool required) {
    const spud_gguf_tensor *t = spud_gguf_find_tensor(m->gguf, name);
    memset(w, 0, sizeof *w);
    if (!t) {
        if (!required) return SPUD_OK;
        return spud_errorf(SPUD_ERR_FORMAT, "missing tensor '%s'", name);
    }
    if (!t->data || !spud_type_get(t->type))
        return spud_errorf(SPUD_ERR_UNSUPPORTED, "tensor '%s' has type %s, which spud does not support",
                           name, spud_type_name(t->type));
    bool ok;
    if (n_out == 0)
        ok = t->n_dims == 1 && (int64_t)t->ne[0] == n_in;
    else
        ok = t->n_dims == 2 && (int64_t)t->ne[0] == n_in && (int64_t)t->ne[1] == n_out;
    if (!ok) {
        char got[128];
        int len = snprintf(got, sizeof got, "[");
        for (uint32_t i = 0; i < t->n_dims; i++)
            len += snprintf(got + len, sizeof got - (size_t)len, "%s%llu", i ? ", " : "",
                            (unsigned long long)t->ne[i]);
        snprintf(got + len, sizeof got - (size_t)len, "]");
        if (n_out == 0)
            return spud_errorf(SPUD_ERR_FORMAT, "tensor '%s' has shape %s, expected [%lld]", name,
                               got, (long long)n_in);
        return spud_errorf(SPUD_ERR_FORMAT, "tensor '%s' has shape %s, expected [%lld, %lld]", name,
                           got, (long long)n_in, (long long)n_out);
    }
    if (n_out == 0 && t->type != SPUD_TYPE_F32)
        return spud_errorf(SPUD_ERR_UNSUPPORTED, "tensor '%s' has type %s; 1-D tensors must be f32",
                           name, spud_type_name(t->type));
    w->type = (spud_type)t->type;
    w->data = t->data;
    w->n_in = n_in;
    w->n_out = n_out ? n_out : 1;
    w->row_bytes = spud_row_size(w->type, n_in);
    m->n_params += (uint64_t)n_in * (uint64_t)w->n_out;
    return SPUD_OK;
}

spud_status spud_model_layer_weight(spud_model *m, spud_weight *w, int layer, const char *fmt,
                                    int64_t n_in, int64_t n_out, bool required) {
    char name[128];
    snprintf(name, sizeof name, fmt, layer);
    return spud_model_weight(m, w, name, n_in, n_out, required);
}

/* Hyperparameters that bound allocations are capped so a corrupt file
 * cannot ask for absurd memory before the tensor shape checks run. */
#define HP_MAX 1000000u

spud_status spud_model_load_decoder(spud_model *m, float default_eps, float default_rope_base) {
    spud_hparams *hp = &m->hp;
    uint32_t v;
    spud_status st;

    if ((st = spud_model_hp_u32(m, "embedding_length", &v, true))) return st;
    hp->n_embd = (int32_t)(v > HP_MAX ? 0 : v);
    if ((st = spud_model_hp_u32(m, "block_count", &v, true))) return st;
    hp->n_layer = (int32_t)(v > 10000 ? 0 : v);
    if ((st = spud_model_hp_u32(m, "feed_forward_length", &v, true))) return st;
    hp->n_ff = (int32_t)(v > HP_MAX ? 0 : v);
    if ((st = spud_model_hp_u32(m, "attention.head_count", &v, true))) return st;
    hp->n_head = (int32_t)(v > 4096 ? 0 : v);
    v = (uint32_t)hp->n_head;
    st = spud_model_hp_u32(m, "attention.head_count_kv", &v, false);
    if (st && st != SPUD_ERR_NOT_FOUND) return st;
    hp->n_head_kv = (int32_t)(v > 4096 ? 0 : v);
    if (hp->n_embd <= 0 || hp->n_layer <= 0 || hp->n_ff <= 0 || hp->n_head <= 0 ||
        hp->n_head_kv <= 0)
        return spud_errorf(SPUD_ERR_FORMAT,
                           "bad hyperparameters: dim %d, layers %d, ffn %d, heads %d, kv heads %d",
                           hp->n_embd, hp->n_layer, hp->n_ff, hp->n_head, hp->n_head_kv);
    if (hp->n_head % hp->n_head_kv)
        return spud_errorf(SPUD_ERR_FORMAT, "head_count %d is not a multiple of head_count_kv %d",
                           hp->n_head, hp->n_head_kv);
    v = hp->n_embd % hp->n_head ? 0 : (uint32_t)(hp->n_embd / hp->n_head);
    st = spud_model_hp_u32(m, "attention.key_length", &v, false);
    if (st && st != SPUD_ERR_NOT_FOUND) return st;
    hp->head_dim = (int32_t)(v > 65536 ? 0 : v);
    uint32_t vl = (uint32_t)hp->head_dim;
    st = spud_model_hp_u32(m, "attention.value_length", &vl, false);
    if (st && st != SPUD_ERR_NOT_FOUND) return st;
    if (hp->head_dim <= 0 || hp->head_dim % 2 || vl != (uint32_t)hp->head_dim)
        return spud_errorf(SPUD_ERR_FORMAT, "bad head size: key length %d, value length %u",
                           hp->head_dim, vl);
    v = (uint32_t)hp->head_dim;
    st = spud_model_hp_u32(m, "rope.dimension_count", &v, false);
    if (st && st != SPUD_ERR_NOT_FOUND) return st;
    if (v == 0 || v % 2 || v > (uint32_t)hp->head_dim)
        return spud_errorf(SPUD_ERR_FORMAT, "bad rope.dimension_count %u (head size %d)", v,
                           hp->head_dim);
    hp->n_rot = (int32_t)v;
    hp->n_ctx_train = 2048;
    st = spud_model_hp_u32(m, "context_length", &hp->n_ctx_train, false);
    if (st && st != SPUD_ERR_NOT_FOUND) return st;
    hp->norm_eps = default_eps;
    st = spud_model_hp_f32(m, "attention.layer_norm_rms_epsilon", &hp->norm_eps, false);
    if (st && st != SPUD_ERR_NOT_FOUND) return st;
    hp->rope_base = default_rope_base;
    st = spud_model_hp_f32(m, "rope.freq_base", &hp->rope_base, false);
    if (st && st != SPUD_ERR_NOT_FOUND) return st;
    if (!(hp->norm_eps >= 0) || !(hp->rope_base > 0) || !isfinite(hp->rope_base))
        return spud_errorf(SPUD_ERR_FORMAT, "bad rms epsilon %g or rope base %g", hp->norm_eps,
                           hp->rope_base);

    int64_t dim = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim,
            kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    const spud_gguf_tensor *te = spud_gguf_find_tensor(m->gguf, "token_embd.weight");
    if (!te) return spud_errorf(SPUD_ERR_FORMAT, "missing tensor 'token_embd.weight'");
    if (te->n_dims != 2 || te->ne[1] == 0 || te->ne[1] > INT32_MAX)
        return spud_errorf(SPUD_ERR_FORMAT, "tensor 'token_embd.weight' is not a 2-D [dim, vocab] matrix");
    hp->n_vocab = (int32_t)te->ne[1];
    if ((st = spud_model_weight(m, &m->tok_embd, "token_embd.weight", dim, hp->n_vocab, true)))
        return st;
    if (spud_tok_n_vocab(m->tok) != hp->n_vocab)
        return spud_errorf(SPUD_ERR_FORMAT, "tokenizer has %d tokens but token_embd.weight has %d rows",
                           spud_tok_n_vocab(m->tok), hp->n_vocab);
    if ((st = spud_model_weight(m, &m->output_norm, "output_norm.weight", dim, 0, true))) return st;
    if ((st = spud_model_weight(m, &m->output, "output.weight", dim, hp->n_vocab, false))) return st;
    if (!m->output.data) m->output = m->tok_embd; /* tied embeddings */

    spud_weight rf;
    if ((st = spud_model_weight(m, &rf, "rope_freqs.weight", hp->n_rot / 2, 0, false))) return st;
    m->rope_freqs = rf.data;

    m->layers = spud_calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    for (int i = 0; i < hp->n_layer; i++) {
        spud_layer *l = &m->layers[i];
#define LW(field, name, nin, nout, req)                                                            \
    if ((st = spud_model_layer_weight(m, &l->field, i, "blk.%d." name, nin, nout, req))) return st
        LW(attn_norm, "attn_norm.weight", dim, 0, true);
        LW(wq, "attn_q.weight", dim, qd, true);
        LW(wk, "attn_k.weight", dim, kvd, true);
        LW(wv, "attn_v.weight", dim, kvd, true);
        LW(wo, "attn_output.weight", qd, dim, true);
        LW(ffn_norm, "ffn_norm.weight", dim, 0, true);
        LW(w_gate, "ffn_gate.weight", dim, hp->n_ff, true);
        LW(w_up, "ffn_up.weight", dim, hp->n_ff, true);
        LW(w_down, "ffn_down.weight", hp->n_ff, dim, true);
#undef LW
    }
    return SPUD_OK;
}

spud_status spud_model_load(const char *path, const spud_model_params *p, spud_model **out) {
    spud_model *m = spud_calloc(1, sizeof *m);
    spud_status st;
    spud_str arch;
    *out = NULL;
    if (!m) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    spud_kernels_init(false);
    m->n_threads = p && p->n_threads > 0 ? p->n_threads : 0;
    st = spud_gguf_open(path, &m->gguf);
    if (st) { /* the message names the file already */
        spud_model_free(m);
        return st;
    }
    st = spud_gguf_get_str(m->gguf, "general.architecture", &arch);
    if (st == SPUD_ERR_NOT_FOUND)
        st = spud_errorf(SPUD_ERR_FORMAT, "missing metadata key 'general.architecture'");
    if (st) goto fail;
    if (spud_str_eq(arch, "llama")) {
        m->arch = SPUD_ARCH_LLAMA;
        m->arch_name = "llama";
    } else if (spud_str_eq(arch, "qwen2")) {
        m->arch = SPUD_ARCH_QWEN2;
        m->arch_name = "qwen2";
    } else if (spud_str_eq(arch, "qwen3")) {
        m->arch = SPUD_ARCH_QWEN3;
        m->arch_name = "qwen3";
    } else {
        st = spud_errorf(SPUD_ERR_UNSUPPORTED,
                         "unknown architecture '%.*s' (supported: llama, qwen2, qwen3)",
                         (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
        goto fail;
    }
    if ((st = spud_tok_load(m->gguf, &m->tok))) goto fail;
    st = m->arch == SPUD_ARCH_LLAMA ? spud_arch_llama_load(m) : spud_arch_qwen_load(m);
    if (st) goto fail;
    *out = m;
    return SPUD_OK;
fail:
    spud_error_wrap(st, "%s", path);
    spud_model_free(m);
    return st;
}

void spud_model_free(spud_model *m) {
    if (!m) return;
    spud_free(m->layers);
    if (m->tok) spud_tok_free(m->tok);
    if (m->gguf) spud_gguf_close(m->gguf);
    spud_free(m);
}

int32_t spud_model_n_vocab(const spud_model *m) { return m->hp.n_vocab; }
int32_t spud_model_n_embd(const spud_model *m) { return m->hp.n_embd; }
uint32_t spud_model_n_ctx_train(const spud_model *m) { return m->hp.n_ctx_train; }

/* Q8_0 caches only where the kernels have a SIMD path for them (AVX-512
 * VNNI); elsewhere the request gets F16, which the SIMD kernels all read. */
static spud_type kv_q8_or_f16(void) {
    return spud_attn_has_simd(SPUD_TYPE_Q8_0) || !spud_attn_has_simd(SPUD_TYPE_F16) ? SPUD_TYPE_Q8_0
                                                                                     : SPUD_TYPE_F16;
}

/* The KV element type a context gets for `want` (tensor types F32 / F16 / Q8_0). */
static spud_type kv_type_for(const spud_model *m, spud_kv_type want) {
    if (want == SPUD_KV_F32) return SPUD_TYPE_F32;
    if (want == SPUD_KV_F16) return SPUD_TYPE_F16;
    if (want == SPUD_KV_Q8_0) return kv_q8_or_f16();
    const char *env = getenv("SPUD_KV_TYPE");
    if (env && !strcmp(env, "f32")) return SPUD_TYPE_F32;
    if (env && !strcmp(env, "f16")) return SPUD_TYPE_F16;
    if (env && !strcmp(env, "q8_0")) return kv_q8_or_f16();
    /* float weights keep every activation in f32, so their cache stays f32 too;
     * quantized weights round activations to 8 bits, and f16 is far finer */
    const bool float_model = m->layers && !spud_type_get(m->layers[0].wk.type)->is_quantized &&
                             !spud_type_get(m->layers[0].wv.type)->is_quantized;
    return float_model ? SPUD_TYPE_F32 : SPUD_TYPE_F16;
}

static uint64_t kv_bytes_per_token(const spud_model *m, spud_type t) {
    return 2ull * (uint64_t)m->hp.n_layer * (uint64_t)m->hp.n_head_kv * spud_kv_row_bytes(t, m->hp.head_dim);
}

uint64_t spud_model_kv_bytes_per_token(const spud_model *m) {
    return kv_bytes_per_token(m, kv_type_for(m, SPUD_KV_AUTO));
}

uint64_t spud_ctx_kv_bytes_per_token(const spud_ctx *c) { return kv_bytes_per_token(c->model, c->kv_type); }

/* ---- tokenizer ---- */

spud_status spud_tokenize(const spud_model *m, const char *text, size_t len, bool add_special,
                          bool parse_special, int32_t **ids, size_t *n_ids) {
    return spud_tok_encode(m->tok, text, len, add_special, parse_special, ids, n_ids);
}

size_t spud_token_to_piece(const spud_model *m, int32_t id, bool render_special, char *buf,
                           size_t cap) {
    return spud_tok_piece(m->tok, id, render_special, buf, cap);
}

bool spud_token_is_eog(const spud_model *m, int32_t id) { return spud_tok_is_eog(m->tok, id); }
int32_t spud_token_bos(const spud_model *m) { return spud_tok_bos(m->tok); }
int32_t spud_token_eos(const spud_model *m) { return spud_tok_eos(m->tok); }

/* ---- context ---- */

#define CTX_N_BATCH 256

static uint64_t physical_memory(void) {
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : UINT64_MAX;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

spud_status spud_ctx_new(const spud_model *m, uint32_t n_ctx, spud_ctx **out) {
    return spud_ctx_new_multi(m, n_ctx, 1, out);
}

spud_status spud_ctx_new_multi(const spud_model *m, uint32_t n_ctx, uint32_t n_seq, spud_ctx **out) {
    spud_ctx_params p = {.n_ctx = n_ctx, .n_seq = n_seq, .kv_type = SPUD_KV_AUTO};
    if (n_seq == 0) {
        *out = NULL;
        return spud_errorf(SPUD_ERR_INVALID, "bad context: %u positions, %u sequences", n_ctx, n_seq);
    }
    return spud_ctx_new_params(m, &p, out);
}

spud_ctx_params spud_ctx_default_params(void) {
    return (spud_ctx_params){.n_ctx = 0, .n_seq = 1, .kv_type = SPUD_KV_AUTO};
}

spud_status spud_ctx_new_params(const spud_model *m, const spud_ctx_params *params, spud_ctx **out) {
    const spud_hparams *hp = &m->hp;
    spud_ctx *c;
    spud_status st;
    *out = NULL;
    uint32_t n_ctx = params->n_ctx, n_seq = params->n_seq ? params->n_seq : 1;
    if (n_ctx == 0) n_ctx = hp->n_ctx_train;
    if (n_ctx == 0 || n_seq > 4096 || n_ctx > UINT32_MAX - SPUD_ATTN_SPAN ||
        (params->kv_type != SPUD_KV_AUTO && params->kv_type != SPUD_KV_F32 && params->kv_type != SPUD_KV_F16 &&
         params->kv_type != SPUD_KV_Q8_0))
        return spud_errorf(SPUD_ERR_INVALID, "bad context: %u positions, %u sequences, KV type %d", n_ctx, n_seq,
                           (int)params->kv_type);
    const spud_type kv_type = kv_type_for(m, params->kv_type);
    const uint64_t kv_tok = kv_bytes_per_token(m, kv_type);
    /* whole attention tiles per region: kernels read (never use) past the last position */
    const uint32_t n_alloc = (n_ctx + SPUD_ATTN_SPAN - 1) / SPUD_ATTN_SPAN * SPUD_ATTN_SPAN;

    uint64_t kv_bytes, seq_pos, mem = physical_memory();
    if (!spud_mul_ok(n_alloc, n_seq, &seq_pos) || !spud_mul_ok(kv_tok, seq_pos, &kv_bytes) || kv_bytes > mem ||
        kv_bytes / 2 > SIZE_MAX)
        return spud_errorf(SPUD_ERR_NOMEM,
                           "a context of %u x %u tokens needs %.2f GiB of KV cache (%llu bytes per "
                           "token), more than this machine's %.2f GiB of memory",
                           n_seq, n_ctx, (double)kv_tok * n_ctx * n_seq / (1 << 30), (unsigned long long)kv_tok,
                           (double)mem / (1 << 30));
    c = spud_calloc(1, sizeof *c);
    if (!c) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    c->model = m;
    c->n_ctx = n_ctx;
    c->n_ctx_alloc = n_alloc;
    c->kv_type = kv_type;
    c->n_seq = n_seq;
    c->n_batch = CTX_N_BATCH;
    c->n_logits_max = (int32_t)n_seq;
    if ((st = spud_pool_new(m->n_threads, &c->pool))) goto fail;
    c->n_past = spud_calloc(n_seq, sizeof *c->n_past);
    c->seq_need = spud_calloc(n_seq, sizeof *c->seq_need);
    size_t half = (size_t)kv_bytes / 2;
    c->k_cache = spud_aligned_alloc(64, half);
    c->v_cache = spud_aligned_alloc(64, half);
    if (!c->n_past || !c->seq_need || !c->k_cache || !c->v_cache) {
        st = spud_errorf(SPUD_ERR_NOMEM, "cannot allocate %.2f GiB of KV cache for %u x %u tokens",
                         (double)kv_bytes / (1 << 30), n_seq, n_ctx);
        goto fail;
    }

    /* One arena for all scratch buffers. */
    size_t nb = (size_t)c->n_batch, dim = (size_t)hp->n_embd, nl = (size_t)c->n_logits_max;
    size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    size_t nth = (size_t)spud_pool_n_threads(c->pool);
    c->attn_work_floats = spud_decoder_attn_work_floats(hp);
    size_t mm = spud_matmul_scratch_bytes(&m->output, (int64_t)nl);
    for (int i = 0; i < hp->n_layer; i++) {
        const spud_layer *l = &m->layers[i];
        const spud_weight *ws[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        for (size_t k = 0; k < sizeof ws / sizeof ws[0]; k++) {
            size_t b = spud_matmul_scratch_bytes(ws[k], (int64_t)nb);
            if (b > mm) mm = b;
        }
    }
    size_t sizes[] = {
        nb * 4, nb * 4, nb * dim * 4, nb * dim * 4, nb * qd * 4, nb * kvd * 4, nb * kvd * 4,
        nb * qd * 4, nb * (size_t)hp->n_ff * 4, nb * (size_t)hp->n_ff * 4,
        nth * c->attn_work_floats * 4, (nb + 1) * 4, nb * (size_t)hp->n_rot * 4, (size_t)hp->n_rot / 2 * 4,
        nl * dim * 4, mm, nl * (size_t)hp->n_vocab * 4,
    };
    void **ptrs[] = {(void **)&c->row_seq, (void **)&c->row_pos, (void **)&c->x, (void **)&c->h,
                     (void **)&c->q, (void **)&c->k, (void **)&c->v, (void **)&c->att,
                     (void **)&c->gate, (void **)&c->up, (void **)&c->attn_work, (void **)&c->row_block,
                     (void **)&c->rope_cs, (void **)&c->inv_freq, (void **)&c->out_rows,
                     &c->mm_scratch, (void **)&c->logits};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) total += align64(sizes[i]);
    c->arena = spud_aligned_alloc(64, total);
    if (!c->arena) {
        st = spud_errorf(SPUD_ERR_NOMEM, "cannot allocate %zu bytes of scratch", total);
        goto fail;
    }
    char *p = c->arena;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *ptrs[i] = p;
        p += align64(sizes[i]);
    }
    /* inv_freq[i] = base^(-2i/n_rot) / rope_freqs[i] */
    for (int i = 0; i < hp->n_rot / 2; i++) {
        double f = pow((double)hp->rope_base, -2.0 * i / hp->n_rot);
        if (m->rope_freqs) f /= (double)m->rope_freqs[i];
        c->inv_freq[i] = (float)f;
    }
    *out = c;
    return SPUD_OK;
fail:
    spud_ctx_free(c);
    return st;
}

void spud_ctx_free(spud_ctx *c) {
    if (!c) return;
    if (c->pool) spud_pool_free(c->pool);
    spud_free(c->n_past);
    spud_free(c->seq_need);
    spud_free(c->k_cache);
    spud_free(c->v_cache);
    spud_free(c->arena);
    spud_free(c);
}

uint32_t spud_ctx_n_ctx(const spud_ctx *c) { return c->n_ctx; }
uint32_t spud_ctx_n_seq(const spud_ctx *c) { return c->n_seq; }
uint32_t spud_ctx_seq_n_past(const spud_ctx *c, uint32_t seq) {
    return seq < c->n_seq ? c->n_past[seq] : 0;
}
uint32_t spud_ctx_n_past(const spud_ctx *c) { return c->n_past[0]; }

void spud_ctx_seq_truncate(spud_ctx *c, uint32_t seq, uint32_t n) {
    if (seq < c->n_seq && n < c->n_past[seq]) c->n_past[seq] = n;
}

void spud_ctx_truncate(spud_ctx *c, uint32_t n) { spud_ctx_seq_truncate(c, 0, n); }

void spud_ctx_reset(spud_ctx *c) { memset(c->n_past, 0, c->n_seq * sizeof *c->n_past); }

spud_status spud_ctx_seq_copy(spud_ctx *c, uint32_t src, uint32_t dst, uint32_t n) {
    const spud_hparams *hp = &c->model->hp;
    if (src >= c->n_seq || dst >= c->n_seq || n > c->n_past[src])
        return spud_errorf(SPUD_ERR_INVALID, "bad sequence copy: %u -> %u, %u positions", src, dst, n);
    if (src == dst) {
        c->n_past[dst] = n;
        return SPUD_OK;
    }
    /* K is tiled by SPUD_KV_TILE positions: copy whole tiles (positions
     * past n in the last one are dead in dst too) */
    const size_t row = spud_kv_row_bytes(c->kv_type, hp->head_dim);
    const size_t k_bytes = (size_t)(n + SPUD_KV_TILE - 1) / SPUD_KV_TILE * SPUD_KV_TILE * row;
    for (int l = 0; l < hp->n_layer; l++)
        for (int g = 0; g < hp->n_head_kv; g++) {
            size_t from = spud_kv_region(c, l, src, g), to = spud_kv_region(c, l, dst, g);
            memcpy((char *)c->k_cache + to, (char *)c->k_cache + from, k_bytes);
            memcpy((char *)c->v_cache + to, (char *)c->v_cache + from, (size_t)n * row);
        }
    c->n_past[dst] = n;
    return SPUD_OK;
}

spud_status spud_decode_batch(spud_ctx *c, const spud_batch *b, const float **logits) {
    const spud_hparams *hp = &c->model->hp;
    spud_status st = SPUD_OK;
    size_t n = b->n, n_out = 0;
    if (n == 0) return spud_errorf(SPUD_ERR_INVALID, "nothing to decode");
    /* Validate everything first, so that an error changes nothing. */
    uint32_t *need = c->seq_need; /* rows per sequence; allocated with the context */
    memset(need, 0, c->n_seq * sizeof *need);
    for (size_t i = 0; i < n; i++) {
        uint32_t s = b->seq ? b->seq[i] : 0;
        if (s >= c->n_seq) {
            st = spud_errorf(SPUD_ERR_INVALID, "row %zu: sequence %u does not exist (%u)", i, s, c->n_seq);
            goto done;
        }
        need[s]++;
        if (!b->in[i].embd && (b->in[i].token < 0 || b->in[i].token >= hp->n_vocab)) {
            st = spud_errorf(SPUD_ERR_INVALID, "token id %d is out of range (vocabulary: %d)",
                             b->in[i].token, hp->n_vocab);
            goto done;
        }
        if (b->want_logits ? b->want_logits[i] : i == n - 1) n_out++;
    }
    for (uint32_t s = 0; s < c->n_seq; s++)
        if (need[s] > c->n_ctx - c->n_past[s]) {
            st = spud_errorf(SPUD_ERR_RANGE,
                             "%u tokens do not fit in the context: %u of %u positions are used",
                             need[s], c->n_past[s], c->n_ctx);
            goto done;
        }
    if (n_out > (size_t)c->n_logits_max) {
        st = spud_errorf(SPUD_ERR_INVALID, "%zu rows ask for logits; at most %d may", n_out,
                         c->n_logits_max);
        goto done;
    }
    n_out = 0;
    for (size_t i0 = 0; i0 < n; i0 += (size_t)c->n_batch) {
        int32_t k = (int32_t)(n - i0 < (size_t)c->n_batch ? n - i0 : (size_t)c->n_batch);
        int32_t out_idx[CTX_N_BATCH], n_chunk_out = 0;
        for (int32_t j = 0; j < k; j++) {
            size_t i = i0 + (size_t)j;
            uint32_t s = b->seq ? b->seq[i] : 0;
            c->row_seq[j] = s;
            c->row_pos[j] = c->n_past[s]++;
            if (b->want_logits ? b->want_logits[i] : i == n - 1) out_idx[n_chunk_out++] = j;
        }
        /* each chunk writes its logits after those of the chunks before it */
        st = spud_decoder_forward(c, b->in + i0, k, out_idx, n_chunk_out, c->logits + n_out * (size_t)hp->n_vocab);
        if (st) goto done;
        n_out += (size_t)n_chunk_out;
    }
    if (logits) *logits = c->logits;
done:
    return st;
}

spud_status spud_decode(spud_ctx *c, const spud_input *in, size_t n, const float **logits) {
    spud_batch b = {.in = in, .n = n};
    return spud_decode_batch(c, &b, logits);
}

spud_status spud_decode_tokens(spud_ctx *c, const int32_t *ids, size_t n, const float **logits) {
    spud_input buf[64];
    spud_status st;
    if (n == 0) return spud_errorf(SPUD_ERR_INVALID, "nothing to decode");
    spud_input *in = n <= 64 ? buf : spud_malloc(n * sizeof *in);
    if (!in) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) in[i] = (spud_input){.token = ids[i]};
    st = spud_decode(c, in, n, logits);
    if (in != buf) spud_free(in);
    return st;
}
