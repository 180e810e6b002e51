/* arch_qwen.c: the Qwen family. qwen2: Q/K/V biases, NeoX RoPE (pairs
 * (i, i + n_rot/2)). qwen3: no biases, per-head RMS norm of Q and K before RoPE. */
#include "model.h"

spud_status spud_arch_qwen_load(spud_model *m) {
    spud_hparams *hp = &m->hp;
    spud_status st = spud_model_load_decoder(m, 1e-6f, 1000000.0f);
    if (st) return st;
    hp->rope_neox = true;
    int64_t qd = (int64_t)hp->n_head * hp->head_dim, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    for (int i = 0; i < hp->n_layer; i++) {
        spud_layer *l = &m->layers[i];
        if (m->arch == SPUD_ARCH_QWEN2) {
            if ((st = spud_model_layer_weight(m, &l->bq, i, "blk.%d.attn_q.bias", qd, 0, true)) ||
                (st = spud_model_layer_weight(m, &l->bk, i, "blk.%d.attn_k.bias", kvd, 0, true)) ||
                (st = spud_model_layer_weight(m, &l->bv, i, "blk.%d.attn_v.bias", kvd, 0, true)))
                return st;
        } else {
            if ((st = spud_model_layer_weight(m, &l->q_norm, i, "blk.%d.attn_q_norm.weight",
                                              hp->head_dim, 0, true)) ||
                (st = spud_model_layer_weight(m, &l->k_norm, i, "blk.%d.attn_k_norm.weight",
                                              hp->head_dim, 0, true)))
                return st;
        }
    }
    return SPUD_OK;
}
