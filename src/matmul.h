/* matmul.h: multithreaded products of weight matrices with activation rows.
 *
 * A weight W is stored as GGUF stores it: ne[0] = n_in (contiguous), ne[1] =
 * n_out rows, in any supported type. Y[j] = W X[j] for each of n activation
 * rows. Activations are converted once to the form the weight type's kernels
 * read (vec_dot_type rows, or gemm rows when there are many), then the output
 * rows are split among the pool's threads. One call can feed several weights
 * from the same activations (Q, K and V; gate and up) and can compute the
 * activation rows first (a norm, SwiGLU), all as one parallel job with one
 * barrier.
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

/* One weight of a multi-output product and where its rows go (y[j * n_out + r]). */
typedef struct {
    const spud_weight *w;
    float *y;
} spud_matmul_out;

/* Computes activation row j (of n_in floats, in x) in place; called once per
 * row, on some thread of the pool, before the row is read. */
typedef void (*spud_matmul_prep_fn)(void *arg, int64_t j);

/* Whether a and b can share one spud_matmul_multi call for n rows (same n_in
 * and the same converted form of the activations). */
bool spud_matmul_compatible(const spud_weight *a, const spud_weight *b, int64_t n);

/* spud_matmul for n_outs compatible weights sharing the activations x, which
 * prep (when not NULL) computes row by row first. */
void spud_matmul_multi(spud_pool *pool, const spud_matmul_out *outs, int n_outs, float *x, int64_t n,
                       void *scratch, spud_matmul_prep_fn prep, void *prep_arg);

#endif
