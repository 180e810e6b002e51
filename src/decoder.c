/* decoder.c: the forward pass shared by the llama-style decoders.
 *
 *   x = embed(inputs)
 *   per layer: h = rmsnorm(x) * attn_norm
 *              q, k, v = Wq h (+bq), Wk h (+bk), Wv h (+bv)
 *              q, k = rmsnorm_per_head(q, k) (qwen3);  q, k = rope(q, k, pos)
 *              att = softmax(q k^T / sqrt(head_dim) + causal mask) v     (GQA)
 *              x += Wo att
 *              h = rmsnorm(x) * ffn_norm;  x += Wdown(silu(Wgate h) * Wup h)
 *   logits = Wout (rmsnorm(x_last) * output_norm)
 *
 * Each stage is one parallel job on the context's thread pool; the residual
 * add is fused into the next norm. Nothing is allocated here.
 */
#include <math.h>
#include <string.h>

#include "model.h"

typedef struct {
    spud_ctx *c;
    const spud_input *in;
    int32_t n;
    int layer;
    const float *add;    /* add_norm: residual to add to x first (NULL: none) */
    const float *norm_w; /* add_norm: norm weight */
    const int32_t *out_idx; /* rows whose logits are wanted */
    int32_t n_out;
} fwd;

/* out = x / sqrt(mean(x^2) + eps) * w   (w may be NULL) */
static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    if (w)
        for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
    else
        for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale;
}

static void job_embed(void *arg, int ith, int nth) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    const spud_model *m = c->model;
    const spud_hparams *hp = &m->hp;
    const spud_type_info *ti = spud_type_get(m->tok_embd.type);
    int64_t s, e;
    spud_pool_split(f->n, ith, nth, &s, &e);
    for (int64_t i = s; i < e; i++) {
        float *x = c->x + i * hp->n_embd;
        if (f->in[i].embd)
            memcpy(x, f->in[i].embd, (size_t)hp->n_embd * sizeof(float));
        else
            ti->to_float((const char *)m->tok_embd.data + (size_t)f->in[i].token * m->tok_embd.row_bytes,
                         x, hp->n_embd);
        /* cos/sin of every rotated pair at this row's position */
        double pos = (double)c->row_pos[i];
        float *cs = c->rope_cs + i * hp->n_rot;
        for (int j = 0; j < hp->n_rot / 2; j++) {
            double a = pos * (double)c->inv_freq[j];
            cs[2 * j] = (float)cos(a);
            cs[2 * j + 1] = (float)sin(a);
        }
    }
}

static void job_add_norm(void *arg, int ith, int nth) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    int64_t dim = c->model->hp.n_embd, s, e;
    spud_pool_split(f->n, ith, nth, &s, &e);
    for (int64_t i = s; i < e; i++) {
        float *x = c->x + i * dim;
        if (f->add) {
            const float *a = f->add + i * dim;
            for (int64_t k = 0; k < dim; k++) x[k] += a[k];
        }
        rmsnorm(c->h + i * dim, x, f->norm_w, dim, c->model->hp.norm_eps);
    }
}

/* Rotate one head's first n_rot dims by the position's angles. */
static void rope(float *v, const float *cs, int n_rot, bool neox) {
    int half = n_rot / 2;
    for (int j = 0; j < half; j++) {
        int a = neox ? j : 2 * j, b = neox ? j + half : 2 * j + 1;
        float c = cs[2 * j], s = cs[2 * j + 1];
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
    }
}

/* Biases, per-head Q/K norms, RoPE; then K and V rows into the cache. */
static void job_qkv_post(void *arg, int ith, int nth) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    const spud_hparams *hp = &c->model->hp;
    const spud_layer *l = &c->model->layers[f->layer];
    int64_t hd = hp->head_dim, qd = hp->n_head * hd, kvd = hp->n_head_kv * hd, s, e;
    spud_pool_split(f->n, ith, nth, &s, &e);
    for (int64_t i = s; i < e; i++) {
        float *q = c->q + i * qd, *k = c->k + i * kvd, *v = c->v + i * kvd;
        const float *cs = c->rope_cs + i * hp->n_rot;
        if (l->bq.data) {
            const float *bq = l->bq.data, *bk = l->bk.data, *bv = l->bv.data;
            for (int64_t j = 0; j < qd; j++) q[j] += bq[j];
            for (int64_t j = 0; j < kvd; j++) k[j] += bk[j], v[j] += bv[j];
        }
        for (int h = 0; h < hp->n_head; h++) {
            if (l->q_norm.data) rmsnorm(q + h * hd, q + h * hd, l->q_norm.data, hd, hp->norm_eps);
            rope(q + h * hd, cs, hp->n_rot, hp->rope_neox);
        }
        for (int g = 0; g < hp->n_head_kv; g++) {
            if (l->k_norm.data) rmsnorm(k + g * hd, k + g * hd, l->k_norm.data, hd, hp->norm_eps);
            rope(k + g * hd, cs, hp->n_rot, hp->rope_neox);
            size_t off = spud_kv_offset(c, f->layer, c->row_seq[i], g, c->row_pos[i]);
            memcpy(c->k_cache + off, k + g * hd, hd * sizeof(float));
            memcpy(c->v_cache + off, v + g * hd, hd * sizeof(float));
        }
    }
}

/* att[i, h] = sum_t softmax_t(q[i,h] . K[t] / sqrt(hd)) V[t], t <= pos(i).
 * One work item is a row and a KV head: the group of query heads that share
 * it read each cached K and V row once. */
static void job_attention(void *arg, int ith, int nth) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    const spud_hparams *hp = &c->model->hp;
    int64_t hd = hp->head_dim, qd = hp->n_head * hd, s, e;
    int group = hp->n_head / hp->n_head_kv;
    float scale = 1.0f / sqrtf((float)hd);
    float *sc = c->scores + (size_t)ith * group * c->n_ctx;
    spud_pool_split((int64_t)f->n * hp->n_head_kv, ith, nth, &s, &e);
    for (int64_t p = s; p < e; p++) {
        int64_t i = p / hp->n_head_kv;
        int g = (int)(p % hp->n_head_kv);
        uint32_t n_kv = c->row_pos[i] + 1;
        size_t base = spud_kv_offset(c, f->layer, c->row_seq[i], g, 0);
        const float *K = c->k_cache + base, *V = c->v_cache + base;
        const float *q0 = c->q + i * qd + (int64_t)g * group * hd;
        float mx[64];
        double sum[64];
        int gs = group <= 64 ? group : 64;
        for (int h0 = 0; h0 < group; h0 += gs) {
            int gn = group - h0 < gs ? group - h0 : gs;
            for (int h = 0; h < gn; h++) mx[h] = -INFINITY;
            for (uint32_t t = 0; t < n_kv; t++) {
                const float *kt = K + (size_t)t * hd;
                for (int h = 0; h < gn; h++) {
                    float v = spud_dot_f32(q0 + (h0 + h) * hd, kt, hd) * scale;
                    sc[(size_t)h * n_kv + t] = v;
                    if (v > mx[h]) mx[h] = v;
                }
            }
            for (int h = 0; h < gn; h++) {
                float *sh = sc + (size_t)h * n_kv;
                sum[h] = 0;
                for (uint32_t t = 0; t < n_kv; t++) {
                    sh[t] = expf(sh[t] - mx[h]);
                    sum[h] += sh[t];
                }
                float inv = (float)(1.0 / sum[h]);
                for (uint32_t t = 0; t < n_kv; t++) sh[t] *= inv;
                memset(c->att + i * qd + (int64_t)(g * group + h0 + h) * hd, 0, hd * sizeof(float));
            }
            for (uint32_t t = 0; t < n_kv; t++) {
                const float *vt = V + (size_t)t * hd;
                for (int h = 0; h < gn; h++)
                    spud_axpy_f32(c->att + i * qd + (int64_t)(g * group + h0 + h) * hd,
                                  sc[(size_t)h * n_kv + t], vt, hd);
            }
        }
    }
}

/* gate = silu(gate) * up */
static void job_swiglu(void *arg, int ith, int nth) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    int64_t s, e;
    spud_pool_split((int64_t)f->n * c->model->hp.n_ff, ith, nth, &s, &e);
    for (int64_t j = s; j < e; j++) {
        float g = c->gate[j];
        c->gate[j] = g / (1.0f + expf(-g)) * c->up[j];
    }
}

/* out_rows[j] = rmsnorm(x[out_idx[j]]) * output_norm */
static void job_out_norm(void *arg, int ith, int nth) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    int64_t dim = c->model->hp.n_embd, s, e;
    spud_pool_split(f->n_out, ith, nth, &s, &e);
    for (int64_t j = s; j < e; j++)
        rmsnorm(c->out_rows + j * dim, c->x + (int64_t)f->out_idx[j] * dim,
                c->model->output_norm.data, dim, c->model->hp.norm_eps);
}

/* x += h (the last layer's FFN output) */
static void job_residual(void *arg, int ith, int nth) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    int64_t s, e;
    spud_pool_split((int64_t)f->n * c->model->hp.n_embd, ith, nth, &s, &e);
    for (int64_t j = s; j < e; j++) c->x[j] += c->h[j];
}

spud_status spud_decoder_forward(spud_ctx *c, const spud_input *in, int32_t n,
                                 const int32_t *out_idx, int32_t n_out) {
    const spud_model *m = c->model;
    const spud_hparams *hp = &m->hp;
    spud_pool *pool = c->pool;
    fwd f = {.c = c, .in = in, .n = n, .out_idx = out_idx, .n_out = n_out};

    spud_pool_run(pool, job_embed, &f);
    for (int il = 0; il < hp->n_layer; il++) {
        const spud_layer *l = &m->layers[il];
        f.layer = il;
        f.add = il ? c->h : NULL; /* the previous layer's FFN output */
        f.norm_w = l->attn_norm.data;
        spud_pool_run(pool, job_add_norm, &f);
        spud_matmul(pool, &l->wq, c->h, c->q, n, c->mm_scratch);
        spud_matmul(pool, &l->wk, c->h, c->k, n, c->mm_scratch);
        spud_matmul(pool, &l->wv, c->h, c->v, n, c->mm_scratch);
        spud_pool_run(pool, job_qkv_post, &f);
        spud_pool_run(pool, job_attention, &f);
        spud_matmul(pool, &l->wo, c->att, c->h, n, c->mm_scratch);
        f.add = c->h;
        f.norm_w = l->ffn_norm.data;
        spud_pool_run(pool, job_add_norm, &f);
        spud_matmul(pool, &l->w_gate, c->h, c->gate, n, c->mm_scratch);
        spud_matmul(pool, &l->w_up, c->h, c->up, n, c->mm_scratch);
        spud_pool_run(pool, job_swiglu, &f);
        spud_matmul(pool, &l->w_down, c->gate, c->h, n, c->mm_scratch);
    }
    if (n_out > 0) {
        spud_pool_run(pool, job_residual, &f);
        spud_pool_run(pool, job_out_norm, &f);
        spud_matmul(pool, &m->output, c->out_rows, c->logits, n_out, c->mm_scratch);
    }
    return SPUD_OK;
}

uint64_t spud_ctx_kv_bytes_per_token(const spud_ctx *c) { return spud_model_kv_bytes_per_token(c->model); }

spud_status spud_decoder_fill_synthetic(spud_ctx *c, uint32_t seq, uint32_t n, uint64_t seed) {
    const spud_hparams *hp = &c->model->hp;
    if (seq >= c->n_seq || n > c->n_ctx - c->n_past[seq])
        return spud_errorf(SPUD_ERR_RANGE, "synthetic fill: %u positions do not fit in sequence %u", n, seq);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    const uint32_t p0 = c->n_past[seq];
    for (int l = 0; l < hp->n_layer; l++)
        for (int g = 0; g < hp->n_head_kv; g++) {
            float *k = c->k_cache + spud_kv_offset(c, l, seq, g, p0);
            float *v = c->v_cache + spud_kv_offset(c, l, seq, g, p0);
            for (size_t i = 0; i < (size_t)n * (size_t)hp->head_dim; i++) {
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                /* two values in [-1, 1) from one draw */
                k[i] = (float)(int32_t)(uint32_t)s * 0x1p-31f;
                v[i] = (float)(int32_t)(uint32_t)(s >> 32) * 0x1p-31f;
            }
        }
    c->n_past[seq] = p0 + n;
    return SPUD_OK;
}
