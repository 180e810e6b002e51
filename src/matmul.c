/* matmul.c: weight x activation products, split over output rows among threads. */
#include "matmul.h"

#include <string.h>

size_t spud_matmul_scratch_bytes(const spud_weight *w, int64_t n_rows) {
    const spud_type_info *ti = spud_type_get(w->type);
    return spud_row_size(ti->vec_dot_type, w->n_in) * (size_t)n_rows + 64;
}

typedef struct {
    spud_pool *pool;
    const spud_weight *w;
    const float *x;
    float *y;
    int64_t n;
    const void *xq; /* activations in vec_dot_type */
    size_t xq_row;  /* bytes per converted activation row */
    bool convert;   /* xq must be filled from x first */
} matmul_job;

/* Rows of W per tile: a tile of weight rows is reused across all activation
 * rows while it is in cache. */
#define MATMUL_TILE_ROWS 16

static void matmul_worker(void *arg, int ith, int nth) {
    matmul_job *j = arg;
    const spud_weight *w = j->w;
    const spud_type_info *ti = spud_type_get(w->type);
    spud_vec_dot_fn dot = ti->vec_dot;
    int64_t start, end;

    if (j->convert) {
        spud_from_float_fn conv = spud_type_get(ti->vec_dot_type)->from_float;
        spud_pool_split(j->n, ith, nth, &start, &end);
        for (int64_t t = start; t < end; t++)
            conv(j->x + t * w->n_in, (char *)j->xq + t * j->xq_row, w->n_in);
        if (nth > 1) spud_pool_barrier(j->pool);
    }
    spud_pool_split(w->n_out, ith, nth, &start, &end);
    for (int64_t r0 = start; r0 < end; r0 += MATMUL_TILE_ROWS) {
        int64_t r1 = r0 + MATMUL_TILE_ROWS < end ? r0 + MATMUL_TILE_ROWS : end;
        for (int64_t t = 0; t < j->n; t++) {
            const char *xr = (const char *)j->xq + t * j->xq_row;
            float *yr = j->y + t * w->n_out;
            for (int64_t r = r0; r < r1; r++)
                dot(w->n_in, &yr[r], (const char *)w->data + r * w->row_bytes, xr);
        }
    }
}

void spud_matmul(spud_pool *pool, const spud_weight *w, const float *x, float *y, int64_t n,
                 void *scratch) {
    const spud_type_info *ti = spud_type_get(w->type);
    matmul_job j = {.pool = pool, .w = w, .x = x, .y = y, .n = n};
    if (ti->vec_dot_type == SPUD_TYPE_F32) {
        j.xq = x; /* f32 activations are used as they are */
        j.xq_row = (size_t)w->n_in * sizeof(float);
    } else {
        j.xq = scratch;
        j.xq_row = spud_row_size(ti->vec_dot_type, w->n_in);
        j.convert = true;
    }
    spud_pool_run(pool, matmul_worker, &j);
}
