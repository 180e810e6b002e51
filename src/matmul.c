/* matmul.c: weight x activation products, split over output rows among threads.
 *
 * Three paths. One activation row (decode of one sequence), or a type without
 * the kernels below: each row is converted once to the weight type's
 * vec_dot_type, then one vec_dot per (weight row, activation row), 16 weight
 * rows at a time so a tile stays in cache across the activation rows. A few
 * rows (decode of several sequences), when the kernels have an mdot for the
 * type: the rows are prepared once (spud_gemm_x_row), then the mdot kernel
 * reads each weight block once for all of them, 16 weight rows per work unit.
 * Many rows (prefill), when the kernels have a gemm: the same rows, and the
 * gemm kernel on panels of gemm_rows weight rows against all of them.
 *
 * One job per call: the threads first compute (prep) and convert the
 * activation rows, split by row, meet at one barrier, then take their share
 * of the output rows of every weight of the call.
 */
#include "matmul.h"

#include <string.h>

/* Activation rows from which the gemm path is taken: below it, repacking a
 * weight panel costs more than it saves (measured on Zen 5, q4_0, 2 threads,
 * busy machine: a batch of 4 ran at 15.4 tok/s through vec_dot and 16.3
 * through gemm, 8 at 17.7 and 20.8, 16 at 16.2 and 33.9). */
#define MATMUL_GEMM_MIN_ROWS 4

/* Activation rows from which the mdot path is taken, up to the kernels'
 * mdot_max for the type (past it, the gemm). From one row: where decode is
 * compute-bound the mdot's per-row work is lower than vec_dot's (it takes the
 * activations' block sums from spud_gemm_x instead of recomputing them for
 * every weight row). Measured with spud bench -p 0 -n 64 -t 2, 1B-shaped
 * models, mdot vs vec_dot for one row: on a Xeon with AMX (Sapphire Rapids
 * class) q4_0 24.7-27.6 vs 18.0-18.9 tok/s, q8_0 14.4-14.7 vs 13.3-14.2,
 * q4_K_M 24.4-24.6 vs 22.0-23.2; on Zen 5 (memory-bound) the same within
 * noise. A sequence's logits are then also the same whether it decodes alone
 * or with up to mdot_max others. */
#define MATMUL_MDOT_MIN_ROWS 1

/* Rows of W per tile on the vec_dot and mdot paths: a tile of weight rows is
 * reused across all activation rows while it is in cache. */
#define MATMUL_TILE_ROWS 16

typedef enum { PATH_VEC_DOT, PATH_MDOT, PATH_GEMM } matmul_path;

static matmul_path path_of(const spud_type_info *ti, int64_t n) {
    if (ti->mdot && n >= MATMUL_MDOT_MIN_ROWS && n <= ti->mdot_max) return PATH_MDOT;
    if (ti->gemm && n >= MATMUL_GEMM_MIN_ROWS) return PATH_GEMM;
    return PATH_VEC_DOT;
}

/* Whether the activations go in as spud_gemm_x rows (mdot and gemm). */
static bool use_gemm(const spud_type_info *ti, int64_t n) { return path_of(ti, n) != PATH_VEC_DOT; }

size_t spud_matmul_scratch_bytes(const spud_weight *w, int64_t n_rows) {
    const spud_type_info *ti = spud_type_get(w->type);
    size_t bytes = spud_row_size(ti->vec_dot_type, w->n_in) * (size_t)n_rows;
    if (ti->gemm_group || ti->gemm_x_rows) {
        size_t g = spud_gemm_x_row_bytes(w->type, w->n_in) * (size_t)n_rows;
        if (g > bytes) bytes = g;
    }
    return bytes + 64;
}

bool spud_matmul_compatible(const spud_weight *a, const spud_weight *b, int64_t n) {
    if (a->n_in != b->n_in) return false;
    const spud_type_info *ta = spud_type_get(a->type), *tb = spud_type_get(b->type);
    const bool ga = use_gemm(ta, n), gb = use_gemm(tb, n);
    if (ga != gb) return false;
    /* gemm rows depend on the weight type (groups, offsets); vec_dot rows on the vec_dot_type */
    return ga ? a->type == b->type : ta->vec_dot_type == tb->vec_dot_type;
}

typedef struct {
    spud_pool *pool;
    const spud_matmul_out *outs;
    int n_outs;
    float *x;
    int64_t n;
    spud_matmul_prep_fn prep;
    void *prep_arg;
    const void *xq; /* activations in vec_dot_type, or prepared for gemm */
    size_t xq_row;  /* bytes per converted activation row */
    bool convert;   /* xq must be filled from x first */
    bool gemm;
    int64_t units;  /* work units over all outputs: gemm panels or vec_dot tiles */
} matmul_job;

static void matmul_worker(void *arg, int ith, int nth) {
    matmul_job *j = arg;
    const spud_weight *w0 = j->outs[0].w;
    const spud_type_info *ti0 = spud_type_get(w0->type);
    const int64_t n_in = w0->n_in;
    int64_t start, end;

    if (j->prep || j->convert) {
        spud_pool_split(j->n, ith, nth, &start, &end);
        spud_from_float_fn conv = spud_type_get(ti0->vec_dot_type)->from_float;
        for (int64_t t = start; t < end; t++) {
            if (j->prep) j->prep(j->prep_arg, t);
            if (!j->convert) continue;
            if (j->gemm && path_of(ti0, j->n) == PATH_MDOT)
                spud_mdot_x_row(w0->type, j->x + t * n_in, n_in, (char *)j->xq + t * j->xq_row);
            else if (j->gemm)
                spud_gemm_x_row(w0->type, j->x + t * n_in, n_in, (char *)j->xq + t * j->xq_row);
            else
                conv(j->x + t * n_in, (char *)j->xq + t * j->xq_row, n_in);
        }
        if (nth > 1) spud_pool_barrier(j->pool);
    }
    spud_pool_split(j->units, ith, nth, &start, &end);
    int64_t base = 0; /* first unit of output o */
    for (int o = 0; o < j->n_outs && start < end; o++) {
        const spud_weight *w = j->outs[o].w;
        const spud_type_info *ti = spud_type_get(w->type);
        const matmul_path path = path_of(ti, j->n);
        const int rows = path == PATH_GEMM ? ti->gemm_rows : MATMUL_TILE_ROWS;
        const spud_gemm_fn gemm = path == PATH_GEMM ? ti->gemm : ti->mdot;
        const int64_t nu = (w->n_out + rows - 1) / rows;
        const int64_t u0 = start > base ? start - base : 0, u1 = end - base < nu ? end - base : nu;
        base += nu;
        if (u0 >= u1) continue;
        float *y = j->outs[o].y;
        if (j->gemm) {
            const spud_gemm_x gx = {
                .x = j->xq,
                .x_stride = j->xq_row,
                .s = ti->gemm_group ? (const float *)(const void *)((const char *)j->xq +
                                                                    spud_gemm_x_scale_offset(w->type, n_in))
                                    : NULL,
                .s_stride = j->xq_row / sizeof(float),
            };
            for (int64_t p = u0; p < u1; p++) {
                const int64_t r0 = p * rows;
                const int nr = (int)(w->n_out - r0 < rows ? w->n_out - r0 : rows);
                gemm(n_in, (const char *)w->data + r0 * w->row_bytes, w->row_bytes, nr, &gx, (int)j->n, y + r0,
                     (size_t)w->n_out);
            }
        } else {
            const spud_vec_dot_fn dot = ti->vec_dot;
            for (int64_t p = u0; p < u1; p++) {
                const int64_t r0 = p * rows, r1 = r0 + rows < w->n_out ? r0 + rows : w->n_out;
                for (int64_t t = 0; t < j->n; t++) {
                    const char *xr = (const char *)j->xq + t * j->xq_row;
                    float *yr = y + t * w->n_out;
                    for (int64_t r = r0; r < r1; r++) dot(n_in, &yr[r], (const char *)w->data + r * w->row_bytes, xr);
                }
            }
        }
    }
}

void spud_matmul_multi(spud_pool *pool, const spud_matmul_out *outs, int n_outs, float *x, int64_t n,
                       void *scratch, spud_matmul_prep_fn prep, void *prep_arg) {
    const spud_weight *w0 = outs[0].w;
    const spud_type_info *ti = spud_type_get(w0->type);
    matmul_job j = {.pool = pool, .outs = outs, .n_outs = n_outs, .x = x, .n = n, .prep = prep,
                    .prep_arg = prep_arg, .gemm = use_gemm(ti, n)};
    if (j.gemm && !ti->gemm_group && !ti->gemm_x_rows) {
        j.xq = x; /* float gemm: the rows as they are */
        j.xq_row = (size_t)w0->n_in * sizeof(float);
    } else if (j.gemm) {
        j.xq = scratch;
        j.xq_row = spud_gemm_x_row_bytes(w0->type, w0->n_in);
        j.convert = true;
    } else if (ti->vec_dot_type == SPUD_TYPE_F32) {
        j.xq = x; /* f32 activations are used as they are */
        j.xq_row = (size_t)w0->n_in * sizeof(float);
    } else {
        j.xq = scratch;
        j.xq_row = spud_row_size(ti->vec_dot_type, w0->n_in);
        j.convert = true;
    }
    for (int o = 0; o < n_outs; o++) {
        const spud_type_info *to = spud_type_get(outs[o].w->type);
        const int rows = path_of(to, n) == PATH_GEMM ? to->gemm_rows : MATMUL_TILE_ROWS;
        j.units += (outs[o].w->n_out + rows - 1) / rows;
    }
    spud_pool_run(pool, matmul_worker, &j);
}

void spud_matmul(spud_pool *pool, const spud_weight *w, const float *x, float *y, int64_t n,
                 void *scratch) {
    const spud_matmul_out out = {.w = w, .y = y};
    spud_matmul_multi(pool, &out, 1, (float *)(uintptr_t)x, n, scratch, NULL, NULL);
}
