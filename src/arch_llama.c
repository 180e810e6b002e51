/* arch_llama.c: the llama family (Llama 2, Llama 3.x with rope_freqs, Mistral 7B).
 * Pre-norm decoder, GQA, "normal" RoPE on pairs (2i, 2i+1), SwiGLU, no biases. */
#include "model.h"

spud_status spud_arch_llama_load(spud_model *m) {
    spud_status st = spud_model_load_decoder(m, 1e-5f, 10000.0f);
    if (st) return st;
    m->hp.rope_neox = false;
    return SPUD_OK;
}
