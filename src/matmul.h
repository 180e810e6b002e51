/* matmul.h: multithreaded products of a weight matrix with activation rows.
 *
 * A weight W is stored as GGUF stores it: ne[0] = n_in (contiguous), ne[1] =
 * n_out rows, in any supported type. Y[j] = W X[j] for each of n activation
 * rows. Activations are converted once to the weight type's vec_dot_type
 * (integer dot products for quantized weights), then the output rows are
 * split among the pool's threads.
 */
#ifndef SPUD_MATMUL_H
#define SPUD_MATMUL_H

#include "tensor.h"
#include "threadpool.h"

typedef struct {
    spud_type type;
    const void *data;
    int64_t n_in;  /* ne[0] */
    int64_t n_out; /* ne[1] */
    size_t row_bytes;
} spud_weight;

/* Scratch that matmul needs for converted activations: bytes for n rows of n_in. */
size_t spud_matmul_scratch_bytes(const spud_weight *w, int64_t n_rows);

/* y[j * n_out + r] = sum_i W[r][i] * x[j * n_in + i], for j < n, r < n_out.
 * `scratch` must hold spud_matmul_scratch_bytes(w, n) bytes, 64-byte aligned. */
void spud_matmul(spud_pool *pool, const spud_weight *w, const float *x, float *y, int64_t n,
                 void *scratch);

#endif
