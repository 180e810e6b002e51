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
 * Each stage is one parallel job on the context's thread pool: a matrix
 * product computes its input rows first (residual add + norm, SwiGLU) and
 * feeds all the weights that share them (Q, K, V; gate, up); RoPE, the cache
 * stores and attention are one job. A layer is five jobs. Nothing is
 * allocated here.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "model.h"

typedef struct {
    spud_ctx *c;
    const spud_input *in;
    int32_t n;
    int layer;
    int32_t n_blocks;      /* attention: blocks of rows in c->row_block */
    _Atomic int32_t next;  /* attention: next work item */
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

/* Activation preps, run row by row inside the matrix products that read them
 * (spud_matmul_multi), so the norm / SwiGLU costs no job and no barrier of
 * its own, and a row is converted while it is in cache. */

/* h[i] = rmsnorm(x[i] += h[i]) * attn_norm: the previous layer's FFN output
 * (in h) joins the residual stream first (none before layer 0). */
static void prep_attn_norm(void *arg, int64_t i) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    const int64_t dim = c->model->hp.n_embd;
    float *x = c->x + i * dim, *h = c->h + i * dim;
    if (f->layer > 0)
        for (int64_t k = 0; k < dim; k++) x[k] += h[k];
    rmsnorm(h, x, c->model->layers[f->layer].attn_norm.data, dim, c->model->hp.norm_eps);
}

/* h[i] = rmsnorm(x[i] += h[i]) * ffn_norm, h holding the attention output. */
static void prep_ffn_norm(void *arg, int64_t i) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    const int64_t dim = c->model->hp.n_embd;
    float *x = c->x + i * dim, *h = c->h + i * dim;
    for (int64_t k = 0; k < dim; k++) x[k] += h[k];
    rmsnorm(h, x, c->model->layers[f->layer].ffn_norm.data, dim, c->model->hp.norm_eps);
}

/* gate[i] = silu(gate[i]) * up[i] */
static void prep_swiglu(void *arg, int64_t i) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    const int64_t n_ff = c->model->hp.n_ff;
    spud_swiglu_f32(c->gate + i * n_ff, c->up + i * n_ff, n_ff);
}

/* out_rows[j] = rmsnorm(x[r] + h[r]) * output_norm for r = out_idx[j]: the
 * last layer's FFN output joins only the rows whose logits are wanted. */
static void prep_out_norm(void *arg, int64_t j) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    const int64_t dim = c->model->hp.n_embd;
    float *x = c->x + (int64_t)f->out_idx[j] * dim;
    const float *h = c->h + (int64_t)f->out_idx[j] * dim;
    for (int64_t k = 0; k < dim; k++) x[k] += h[k];
    rmsnorm(c->out_rows + j * dim, x, c->model->output_norm.data, dim, c->model->hp.norm_eps);
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

/* Store one position's K and V rows of one KV head in the cache's type and
 * layout (K in transposed tiles). */
static void kv_store(spud_ctx *c, int layer, uint32_t seq, int g, uint32_t pos, const float *k, const float *v) {
    const int hd = c->model->hp.head_dim;
    const size_t off = spud_kv_region(c, layer, seq, g);
    if (c->kv_type == SPUD_TYPE_Q8_0) {
        uint8_t *K = (uint8_t *)c->k_cache + off, *V = (uint8_t *)c->v_cache + off;
        float d = spud_kv_q8_quantize(k, hd, NULL);
        for (int i = 0; i < hd; i++) K[spud_kv_q8_k_index(hd, pos, i)] = (uint8_t)(spud_kv_q8_value(k[i], d) + 128);
        memcpy(K + spud_kv_q8_k_scale(hd, pos), &d, sizeof d);
        d = spud_kv_q8_quantize(v, hd, (int8_t *)(V + spud_kv_q8_v_row(hd, pos)));
        memcpy(V + spud_kv_q8_v_row(hd, pos) + hd, &d, sizeof d);
    } else if (c->kv_type == SPUD_TYPE_F16) {
        spud_f16 *K = (spud_f16 *)(void *)((char *)c->k_cache + off), *V = (spud_f16 *)(void *)((char *)c->v_cache + off);
        for (int i = 0; i < hd; i++) K[spud_kv_k_index(hd, pos, i)] = spud_f32_to_f16(k[i]);
        for (int i = 0; i < hd; i++) V[(size_t)pos * hd + i] = spud_f32_to_f16(v[i]);
    } else {
        float *K = (float *)(void *)((char *)c->k_cache + off), *V = (float *)(void *)((char *)c->v_cache + off);
        for (int i = 0; i < hd; i++) K[spud_kv_k_index(hd, pos, i)] = k[i];
        memcpy(V + (size_t)pos * hd, v, (size_t)hd * sizeof(float));
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
            kv_store(c, f->layer, c->row_seq[i], g, c->row_pos[i], k + g * hd, v + g * hd);
        }
    }
}

/* Query vectors per attention call and rows per block: a block is up to
 * rows_per_block consecutive rows of one sequence, and one work item is a
 * block, a KV head and up to SPUD_ATTN_MAX_Q of the heads that share it, so
 * the kernel reads each cached K and V tile once for all of them. */
static int attn_rows_per_block(const spud_hparams *hp) {
    const int group = hp->n_head / hp->n_head_kv;
    return group >= SPUD_ATTN_MAX_Q ? 1 : SPUD_ATTN_MAX_Q / group;
}

size_t spud_decoder_attn_work_floats(const spud_hparams *hp) {
    /* kernel scratch, then queries and outputs (SPUD_ATTN_MAX_Q x hd each) */
    const size_t hd = (size_t)hp->head_dim;
    return (spud_attn_work_floats(hp->head_dim) + 2 * SPUD_ATTN_MAX_Q * hd + 15) & ~(size_t)15;
}

/* att[i, h] = sum_t softmax_t(q[i,h] . K[t] / sqrt(hd)) V[t], t <= pos(i).
 * Work items are taken from a shared counter (blocks late in a prompt attend
 * to more positions, so a static split would be uneven). */
static void job_attention(void *arg, int ith, int nth) {
    fwd *f = arg;
    spud_ctx *c = f->c;
    const spud_hparams *hp = &c->model->hp;
    const int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    const int64_t qd = (int64_t)hp->n_head * hd;
    const int chunks = (group + SPUD_ATTN_MAX_Q - 1) / SPUD_ATTN_MAX_Q;
    const float scale = 1.0f / sqrtf((float)hd);
    float *work = c->attn_work + (size_t)ith * c->attn_work_floats;
    float *qbuf = work + spud_attn_work_floats(hd), *obuf = qbuf + (size_t)SPUD_ATTN_MAX_Q * hd;
    int32_t last[SPUD_ATTN_MAX_Q];
    int32_t rows[SPUD_ATTN_MAX_Q], heads[SPUD_ATTN_MAX_Q];
    const int32_t n_items = f->n_blocks * hp->n_head_kv * chunks;
    (void)nth;
    for (;;) {
        const int32_t it = atomic_fetch_add_explicit(&f->next, 1, memory_order_relaxed);
        if (it >= n_items) break;
        const int32_t b = it / (hp->n_head_kv * chunks);
        const int g = (int)(it / chunks % hp->n_head_kv), ch = (int)(it % chunks);
        const int h0 = g * group + ch * SPUD_ATTN_MAX_Q;
        const int nh = group - ch * SPUD_ATTN_MAX_Q < SPUD_ATTN_MAX_Q ? group - ch * SPUD_ATTN_MAX_Q : SPUD_ATTN_MAX_Q;
        int nq = 0;
        for (int32_t i = c->row_block[b]; i < c->row_block[b + 1]; i++)
            for (int h = h0; h < h0 + nh; h++) {
                const float *src = c->q + i * qd + (int64_t)h * hd;
                for (int e = 0; e < hd; e++) qbuf[(size_t)nq * hd + e] = src[e] * scale;
                last[nq] = (int32_t)c->row_pos[i];
                rows[nq] = i;
                heads[nq] = h;
                nq++;
            }
        const size_t region = spud_kv_region(c, f->layer, c->row_seq[c->row_block[b]], g);
        spud_attn(hd, nq, qbuf, last, c->kv_type, (const char *)c->k_cache + region,
                  (const char *)c->v_cache + region, obuf, work);
        for (int j = 0; j < nq; j++)
            memcpy(c->att + rows[j] * qd + (int64_t)heads[j] * hd, obuf + (size_t)j * hd, (size_t)hd * sizeof(float));
    }
}

/* Split the rows into attention blocks (consecutive rows of one sequence). */
static int32_t attention_blocks(spud_ctx *c, int32_t n) {
    const int per = attn_rows_per_block(&c->model->hp);
    int32_t nb = 0;
    for (int32_t i = 0; i < n; i++)
        if (i == 0 || c->row_seq[i] != c->row_seq[i - 1] || i - c->row_block[nb - 1] >= per) c->row_block[nb++] = i;
    c->row_block[nb] = n;
    return nb;
}

/* RoPE and the cache stores of every row, then (after a barrier: attention
 * reads the rows just stored) attention: one job. */
static void job_qkv_attention(void *arg, int ith, int nth) {
    fwd *f = arg;
    job_qkv_post(arg, ith, nth);
    if (nth > 1) spud_pool_barrier(f->c->pool);
    job_attention(arg, ith, nth);
}

/* Products of the weights ws[0..n) with the same activations x, grouped into
 * as few spud_matmul_multi calls as their types allow; prep runs in the first. */
static void matmul_group(spud_ctx *c, const spud_weight *const *ws, float *const *ys, int nw, float *x, int64_t n,
                         spud_matmul_prep_fn prep, void *prep_arg) {
    spud_matmul_out outs[4];
    int k = 0;
    for (int i = 0; i < nw; i++) {
        if (k > 0 && !spud_matmul_compatible(outs[0].w, ws[i], n)) {
            spud_matmul_multi(c->pool, outs, k, x, n, c->mm_scratch, prep, prep_arg);
            prep = NULL;
            k = 0;
        }
        outs[k++] = (spud_matmul_out){.w = ws[i], .y = ys[i]};
    }
    spud_matmul_multi(c->pool, outs, k, x, n, c->mm_scratch, prep, prep_arg);
}

spud_status spud_decoder_forward(spud_ctx *c, const spud_input *in, int32_t n,
                                 const int32_t *out_idx, int32_t n_out, float *logits) {
    const spud_model *m = c->model;
    const spud_hparams *hp = &m->hp;
    spud_pool *pool = c->pool;
    fwd f = {.c = c, .in = in, .n = n, .out_idx = out_idx, .n_out = n_out};

    f.n_blocks = attention_blocks(c, n);
    spud_pool_run(pool, job_embed, &f);
    for (int il = 0; il < hp->n_layer; il++) {
        const spud_layer *l = &m->layers[il];
        f.layer = il;
        const spud_weight *qkv[3] = {&l->wq, &l->wk, &l->wv};
        float *qkv_out[3] = {c->q, c->k, c->v};
        matmul_group(c, qkv, qkv_out, 3, c->h, n, prep_attn_norm, &f);
        atomic_store_explicit(&f.next, 0, memory_order_relaxed); /* published by the pool's dispatch */
        spud_pool_run(pool, job_qkv_attention, &f);
        spud_matmul(pool, &l->wo, c->att, c->h, n, c->mm_scratch);
        const spud_weight *gu[2] = {&l->w_gate, &l->w_up};
        float *gu_out[2] = {c->gate, c->up};
        matmul_group(c, gu, gu_out, 2, c->h, n, prep_ffn_norm, &f);
        const spud_weight *down = &l->w_down;
        float *down_out = c->h;
        matmul_group(c, &down, &down_out, 1, c->gate, n, prep_swiglu, &f);
    }
    if (n_out > 0) {
        const spud_weight *out = &m->output;
        matmul_group(c, &out, &logits, 1, c->out_rows, n_out, prep_out_norm, &f);
    }
    return SPUD_OK;
}

spud_status spud_decoder_fill_synthetic(spud_ctx *c, uint32_t seq, uint32_t n, uint64_t seed) {
    const spud_hparams *hp = &c->model->hp;
    if (seq >= c->n_seq || n > c->n_ctx - c->n_past[seq])
        return spud_errorf(SPUD_ERR_RANGE, "synthetic fill: %u positions do not fit in sequence %u", n, seq);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    const uint32_t p0 = c->n_past[seq];
    float k[1024], v[1024];
    if (hp->head_dim > 1024) return spud_errorf(SPUD_ERR_UNSUPPORTED, "synthetic fill: head_dim %d", hp->head_dim);
    for (int l = 0; l < hp->n_layer; l++)
        for (int g = 0; g < hp->n_head_kv; g++)
            for (uint32_t p = p0; p < p0 + n; p++) {
                for (int i = 0; i < hp->head_dim; i++) {
                    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                    /* two values in [-1, 1) from one draw */
                    k[i] = (float)(int32_t)(uint32_t)s * 0x1p-31f;
                    v[i] = (float)(int32_t)(uint32_t)(s >> 32) * 0x1p-31f;
                }
                kv_store(c, l, seq, g, p, k, v);
            }
    c->n_past[seq] = p0 + n;
    return SPUD_OK;
}
