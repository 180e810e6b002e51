/* matmul.c: weight x activation products, split over output rows among threads.
 *
 * Two paths. Few activation rows (decode): each is converted once to the
 * weight type's vec_dot_type, then one vec_dot per (weight row, activation
 * row), 16 weight rows at a time so a tile stays in cache across the
 * activation rows. Many rows (prefill), when the kernels have a gemm for the
 * type: the rows are prepared once (spud_gemm_x_row), then each thread runs
 * the gemm kernel on panels of gemm_rows weight rows against all of them.
 */
#include "matmul.h"

#include <string.h>

/* Activation rows from which the gemm path is taken (below it, repacking a
 * weight panel costs more than it saves). */
#define MATMUL_GEMM_MIN_ROWS 4

static bool use_gemm(const spud_type_info *ti, int64_t n) { return ti->gemm && n >= MATMUL_GEMM_MIN_ROWS; }

size_t spud_matmul_scratch_bytes(const spud_weight *w, int64_t n_rows) {
    const spud_type_info *ti = spud_type_get(w->type);
    size_t bytes = spud_row_size(ti->vec_dot_type, w->n_in) * (size_t)n_rows;
    if (ti->gemm_group) {
        size_t g = spud_gemm_x_row_bytes(w->type, w->n_in) * (size_t)n_rows;
        if (g > bytes) bytes = g;
    }
    return bytes + 64;
}

typedef struct {
    spud_pool *pool;
    const spud_weight *w;
    const float *x;
    float *y;
    int64_t n;
    const void *xq; /* activations in vec_dot_type, or prepared for gemm */
    size_t xq_row;  /* bytes per converted activation row */
    bool convert;   /* xq must be filled from x first */
    bool gemm;
} matmul_job;

/* Rows of W per tile: a tile of weight rows is reused across all activation
 * rows while it is in cache. */
#define MATMUL_TILE_ROWS 16

static void matmul_worker(void *arg, int ith, int nth) {
    matmul_job *j = arg;
    const spud_weight *w = j->w;
    const spud_type_info *ti = spud_type_get(w->type);
    int64_t start, end;

    if (j->convert) {
        spud_pool_split(j->n, ith, nth, &start, &end);
        if (j->gemm) {
            for (int64_t t = start; t < end; t++)
                spud_gemm_x_row(w->type, j->x + t * w->n_in, w->n_in, (char *)j->xq + t * j->xq_row);
        } else {
            spud_from_float_fn conv = spud_type_get(ti->vec_dot_type)->from_float;
            for (int64_t t = start; t < end; t++)
                conv(j->x + t * w->n_in, (char *)j->xq + t * j->xq_row, w->n_in);
        }
        if (nth > 1) spud_pool_barrier(j->pool);
    }
    if (j->gemm) {
        const int rows = ti->gemm_rows;
        const spud_gemm_x gx = {
            .x = j->xq,
            .x_stride = j->xq_row,
            .s = ti->gemm_group ? (const float *)(const void *)((const char *)j->xq +
                                                                spud_gemm_x_scale_offset(w->type, w->n_in))
                                : NULL,
            .s_stride = j->xq_row / sizeof(float),
        };
        spud_pool_split((w->n_out + rows - 1) / rows, ith, nth, &start, &end);
        for (int64_t p = start; p < end; p++) {
            const int64_t r0 = p * rows;
            const int nr = (int)(w->n_out - r0 < rows ? w->n_out - r0 : rows);
            ti->gemm(w->n_in, (const char *)w->data + r0 * w->row_bytes, w->row_bytes, nr, &gx, (int)j->n,
                     j->y + r0, (size_t)w->n_out);
        }
        return;
    }
    spud_vec_dot_fn dot = ti->vec_dot;
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
    matmul_job j = {.pool = pool, .w = w, .x = x, .y = y, .n = n, .gemm = use_gemm(ti, n)};
    if (j.gemm && !ti->gemm_group) {
        j.xq = x; /* float gemm: the rows as they are */
        j.xq_row = (size_t)w->n_in * sizeof(float);
    } else if (j.gemm) {
        j.xq = scratch;
        j.xq_row = spud_gemm_x_row_bytes(w->type, w->n_in);
        j.convert = true;
    } else if (ti->vec_dot_type == SPUD_TYPE_F32) {
        j.xq = x; /* f32 activations are used as they are */
        j.xq_row = (size_t)w->n_in * sizeof(float);
    } else {
        j.xq = scratch;
        j.xq_row = spud_row_size(ti->vec_dot_type, w->n_in);
        j.convert = true;
    }
    spud_pool_run(pool, matmul_worker, &j);
}
