/* tensor.h: element types, quant block layouts, and the kernels that read them.
 *
 * Type ids and block layouts are GGML's, bit for bit, so GGUF files written by
 * other tools load. Per-type behaviour lives in one table (spud_type_info).
 *
 * Matrix products follow one scheme: the activation row x (f32) is first
 * converted to the weight type's `vec_dot_type` (Q8_0 for Q4_0/Q8_0, Q8_K for
 * Q4_K/Q6_K, F32 for F32/F16/BF16), then `vec_dot` computes one weight row
 * times one converted activation row. For many activation rows at once
 * (prefill), a type may also have a `gemm` kernel: the rows are prepared with
 * the same quantization (spud_gemm_x_row) and one call computes a panel of
 * weight rows against all of them; its scalar reference is vec_dot_ref on
 * each (row, activation) pair. For a few rows (decode of several sequences)
 * an `mdot` kernel has the same contract but reads the weights in place, each
 * block once for all the activation rows. Every kernel has a scalar `*_ref`
 * version; SIMD versions (AVX2, AVX-512) are picked at run time by
 * spud_kernels_init() and must match the reference within the bounds that
 * tests/test_kernels.c states.
 */
#ifndef SPUD_TENSOR_H
#define SPUD_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    SPUD_TYPE_F32 = 0,
    SPUD_TYPE_F16 = 1,
    SPUD_TYPE_Q4_0 = 2,
    SPUD_TYPE_Q8_0 = 8,
    SPUD_TYPE_Q4_K = 12,
    SPUD_TYPE_Q6_K = 14,
    SPUD_TYPE_Q8_K = 15, /* activations only */
    SPUD_TYPE_BF16 = 30,
    SPUD_TYPE_COUNT = 40, /* table size; ids GGML defines but we do not support have no traits */
} spud_type;

#define QK4_0 32
#define QK8_0 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef uint16_t spud_f16;  /* IEEE half, raw bits */
typedef uint16_t spud_bf16; /* bfloat16, raw bits */

typedef struct {
    spud_f16 d;          /* scale */
    uint8_t qs[QK4_0 / 2]; /* nibbles: low nibble = element j, high = element j + 16 */
} block_q4_0;
_Static_assert(sizeof(block_q4_0) == 2 + QK4_0 / 2, "block_q4_0 size");

typedef struct {
    spud_f16 d;
    int8_t qs[QK8_0];
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 2 + QK8_0, "block_q8_0 size");

typedef struct {
    spud_f16 d;                  /* super-block scale for the quantized scales */
    spud_f16 dmin;               /* super-block scale for the quantized mins */
    uint8_t scales[K_SCALE_SIZE]; /* 8 scales and 8 mins, 6 bits each */
    uint8_t qs[QK_K / 2];        /* 4-bit quants */
} block_q4_K;
_Static_assert(sizeof(block_q4_K) == 4 + K_SCALE_SIZE + QK_K / 2, "block_q4_K size");

typedef struct {
    uint8_t ql[QK_K / 2];      /* quants, lower 4 bits */
    uint8_t qh[QK_K / 4];      /* quants, upper 2 bits */
    int8_t scales[QK_K / 16];  /* 8-bit scales */
    spud_f16 d;                /* super-block scale */
} block_q6_K;
_Static_assert(sizeof(block_q6_K) == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, "block_q6_K size");

typedef struct {
    float d;                  /* delta */
    int8_t qs[QK_K];          /* quants */
    int16_t bsums[QK_K / 16]; /* sum of quants in groups of 16 */
} block_q8_K;
_Static_assert(sizeof(block_q8_K) == 4 + QK_K + 2 * QK_K / 16, "block_q8_K size");

/* y[0..n) = dequantize(x) */
typedef void (*spud_to_float_fn)(const void *x, float *y, int64_t n);
/* y = quantize(x), n a multiple of the block size */
typedef void (*spud_from_float_fn)(const float *x, void *y, int64_t n);
/* *s = sum_i w[i] * x[i]; w in the weight type, x in its vec_dot_type */
typedef void (*spud_vec_dot_fn)(int64_t n, float *s, const void *w, const void *x);

/* Activation rows prepared for the matrix-matrix kernels (spud_gemm_fn).
 * Quantized weights: row c holds k int8 values q at x + c * x_stride (bytes),
 * exactly the vec_dot_type quantization of the f32 row, and at s + c *
 * s_stride (floats) two arrays of k / gs entries (gs = gemm_group of the
 * weight type): dx[g], the scale of group g, then aux[g]:
 *   q4_K:             float  dx[g] * Σ q over the group (for the mins);
 *   q4_0, q8_0, q6_K: int32  -off * Σ q over the group, off = 8, 128, 32: the
 *                     gemm kernels take the weights as unsigned values
 *                     (q4_0 nibbles, q8_0 values + 128, q6_K 6-bit values),
 *                     and an accumulator started at aux is exact.
 * Float weights: row c is k floats at x + c * x_stride; s is unused. BF16
 * weights, where the dispatched gemm is the AMX one (spud_gemm_x_bf16_split):
 * after the floats, at spud_gemm_x_scale_offset bytes, three arrays of k
 * bf16 values (each 64-byte aligned, zero up to the next multiple of 32
 * elements): hi, mid and lo, with hi + mid + lo = x exactly. */
typedef struct {
    const void *x;
    size_t x_stride;
    const float *s;
    size_t s_stride;
} spud_gemm_x;

/* y[c * ldy + r] = Σ_i W[r][i] * x_c[i] for rows r < nr of the weights that
 * start at w (row_bytes apart; nr <= spud_type_info.gemm_rows) and activation
 * rows c < nc. k: elements per row. Reads no weight row at or past nr. */
typedef void (*spud_gemm_fn)(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                             float *y, size_t ldy);

typedef struct {
    const char *name;   /* "f32", "q4_K", ... as GGML names them */
    int64_t block_size; /* elements per block */
    size_t type_size;   /* bytes per block */
    bool is_quantized;
    spud_type vec_dot_type;
    spud_to_float_fn to_float;        /* dispatched (SIMD where available) */
    spud_from_float_fn from_float;    /* dispatched; quantize an activation row */
    spud_from_float_fn from_float_ref; /* reference quantizer (used for weights, gen-model) */
    spud_vec_dot_fn vec_dot;          /* dispatched */
    spud_vec_dot_fn vec_dot_ref;      /* scalar reference */
    int gemm_group;   /* elements per activation scale in spud_gemm_x (0: float activations) */
    spud_gemm_fn gemm; /* dispatched matrix-matrix kernel, or NULL (use vec_dot per row) */
    int gemm_rows;    /* weight rows per gemm call */
    spud_gemm_fn mdot; /* dispatched small-batch kernel (gemm contract, any nr and nc, weights read
                        * in place: for a few activation rows), or NULL (use vec_dot per row) */
    int mdot_max;      /* most activation rows for which mdot is faster than gemm */
    bool gemm_x_rows;  /* float weights whose dispatched gemm reads spud_gemm_x_row rows (the AMX
                        * bf16 split) rather than the f32 rows as they are */
} spud_type_info;

/* Traits of a type, or NULL for an id we do not support (or out of range). */
const spud_type_info *spud_type_get(uint32_t type);
/* Name for any GGML type id, supported or not ("q5_1", "iq2_xs", ... or "type42"). */
const char *spud_type_name(uint32_t type);
/* Parse "q4_0", "Q4_K", "f16", ... (case-insensitive); returns -1 if unknown. */
int spud_type_from_name(const char *name);
/* Bytes of a row of n elements; 0 if n is not a multiple of the block size. */
size_t spud_row_size(spud_type t, int64_t n);

/* Pick SIMD variants for this CPU (idempotent, thread-safe). `force_scalar`
 * (also env SPUD_SCALAR=1) keeps the references; env SPUD_ISA=avx2 or scalar
 * caps the choice. Returns the chosen ISA name ("avx512", "avx2", "scalar"). */
const char *spud_kernels_init(bool force_scalar);

/* fp16 / bf16 conversions (exact; round to nearest even on the way down). */
float spud_f16_to_f32(spud_f16 h);
spud_f16 spud_f32_to_f16(float f);
float spud_bf16_to_f32(spud_bf16 h);
spud_bf16 spud_f32_to_bf16(float f);

/* ---- reference kernels (scalar), exported for tests ---- */
void spud_dequant_f32_ref(const void *x, float *y, int64_t n);
void spud_dequant_f16_ref(const void *x, float *y, int64_t n);
void spud_dequant_bf16_ref(const void *x, float *y, int64_t n);
void spud_dequant_q4_0_ref(const void *x, float *y, int64_t n);
void spud_dequant_q8_0_ref(const void *x, float *y, int64_t n);
void spud_dequant_q4_K_ref(const void *x, float *y, int64_t n);
void spud_dequant_q6_K_ref(const void *x, float *y, int64_t n);
void spud_dequant_q8_K_ref(const void *x, float *y, int64_t n);

void spud_quant_f32_ref(const float *x, void *y, int64_t n);
void spud_quant_f16_ref(const float *x, void *y, int64_t n);
void spud_quant_bf16_ref(const float *x, void *y, int64_t n);
void spud_quant_q4_0_ref(const float *x, void *y, int64_t n);
void spud_quant_q8_0_ref(const float *x, void *y, int64_t n);
void spud_quant_q4_K_ref(const float *x, void *y, int64_t n);
void spud_quant_q6_K_ref(const float *x, void *y, int64_t n);
void spud_quant_q8_K_ref(const float *x, void *y, int64_t n);

void spud_vec_dot_f32_ref(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_f16_ref(int64_t n, float *s, const void *w, const void *x);  /* x: f32 */
void spud_vec_dot_bf16_ref(int64_t n, float *s, const void *w, const void *x); /* x: f32 */
void spud_vec_dot_q4_0_q8_0_ref(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_q8_0_q8_0_ref(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_q4_K_q8_K_ref(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_q6_K_q8_K_ref(int64_t n, float *s, const void *w, const void *x);

/* Bytes of one prepared activation row of n elements for weights of type t
 * (the int8 values or floats, then the scale arrays), rounded up to 64. */
size_t spud_gemm_x_row_bytes(spud_type t, int64_t n);
/* Prepare one activation row x (n floats) for weights of type t: the int8
 * values are the dispatched vec_dot_type quantizer's, bit for bit, so a
 * matrix product through the gemm kernel and one through vec_dot round the
 * activations the same way. `row` gets spud_gemm_x_row_bytes(t, n) bytes
 * (64-byte aligned): values at row, scales at row + spud_gemm_x_scale_offset. */
void spud_gemm_x_row(spud_type t, const float *x, int64_t n, void *row);
size_t spud_gemm_x_scale_offset(spud_type t, int64_t n);

/* The activation rows of the mdot kernels: spud_gemm_x rows (same size, same
 * values), with, for q4_0 and q8_0 weights, each full group of 16 blocks (512
 * elements) reordered so that lane L of a vpdpbusd is one block, B(L) = 4 (L
 * mod 4) + L / 4 of the group: byte 64 j + 4 L + e of the group's values is
 * element 4 j + e of block B(L) (j < 8, e < 4), and the group's 16 scales and
 * 16 aux entries are in lane order too. Blocks past the last full group keep
 * the gemm layout. q4_K: each full group of 4 super-blocks likewise, one
 * group of 32 per lane (see tensor.c). Other types: exactly the gemm rows. */
void spud_mdot_x_row(spud_type t, const float *x, int64_t n, void *row);
/* Reorder one spud_gemm_x row of type t into the mdot layout, in place. */
void spud_mdot_x_from_gemm(spud_type t, int64_t n, void *row);
/* Write the hi / mid / lo bf16 split of a BF16 spud_gemm_x row's floats
 * (spud_gemm_x_row does so itself when the dispatched BF16 gemm reads it). */
void spud_gemm_x_bf16_split(int64_t n, void *row);

/* ---- attention over one KV head of a cache (dispatched) ----
 *
 * Cache layout of one (layer, sequence, KV head). K is stored in tiles of
 * SPUD_KV_TILE positions so that one load reads the same dimension(s) of 16
 * positions; V is row-major. Per element type:
 *   F32, F16: K element (p, i) at spud_kv_k_index = (p / 16) * 16 * hd +
 *     i * 16 + p % 16; V element (p, i) at p * hd + i.
 *   Q8_0 (int8 with one f32 scale per position and head, value = q * d):
 *     a K tile is hd * 16 bytes, byte (p % 16) * 4 + i % 4 of 64-byte row
 *     i / 4 holding q + 128 (4 dimensions of a position together, as vpdpbusd
 *     reads them), then the 16 positions' scales (f32); a V row is hd int8
 *     then its scale. Both are hd + 4 bytes per position.
 * Buffers hold whole SPUD_ATTN_SPAN tiles of positions: kernels may read
 * (never use) the values past the last position. */
#define SPUD_KV_TILE 16
#define SPUD_ATTN_SPAN 64  /* positions per tile of the online softmax */
#define SPUD_ATTN_MAX_Q 16 /* query vectors per call */

static inline size_t spud_kv_k_index(int hd, uint32_t p, int i) {
    return (size_t)(p / SPUD_KV_TILE) * SPUD_KV_TILE * (size_t)hd + (size_t)i * SPUD_KV_TILE + p % SPUD_KV_TILE;
}

/* Bytes per position (and head) of K, and of V, for a cache element type. */
static inline size_t spud_kv_row_bytes(spud_type t, int hd) {
    return t == SPUD_TYPE_Q8_0 ? (size_t)hd + 4 : (size_t)hd * (t == SPUD_TYPE_F16 ? 2 : 4);
}

/* Q8_0 cache: byte offset of K's value (p, i), of K's scale for p, of V's row p. */
static inline size_t spud_kv_q8_k_index(int hd, uint32_t p, int i) {
    return (size_t)(p / SPUD_KV_TILE) * ((size_t)hd + 4) * SPUD_KV_TILE + (size_t)(i / 4) * 64 + (p % SPUD_KV_TILE) * 4 +
           (size_t)(i % 4);
}
static inline size_t spud_kv_q8_k_scale(int hd, uint32_t p) {
    return (size_t)(p / SPUD_KV_TILE) * ((size_t)hd + 4) * SPUD_KV_TILE + (size_t)hd * SPUD_KV_TILE +
           (p % SPUD_KV_TILE) * 4;
}
static inline size_t spud_kv_q8_v_row(int hd, uint32_t p) { return (size_t)p * ((size_t)hd + 4); }

/* Quantize one head's K or V row (hd floats) for a Q8_0 cache: d = amax / 127,
 * q = round(x / d) (half away from zero, as q8_0); returns d. q may be NULL
 * (then only d); spud_kv_q8_value gives q for one element. */
float spud_kv_q8_quantize(const float *x, int hd, int8_t *q);
int8_t spud_kv_q8_value(float x, float d);

/* out[j * hd + i] = Σ_t softmax_t(q_j · K[t]) V[t][i] over positions t <= last[j],
 * for nq <= SPUD_ATTN_MAX_Q query vectors q_j = q + j * hd (already scaled by
 * 1 / sqrt(hd)). work: spud_attn_work_floats(hd) floats, 64-byte aligned.
 * Online softmax over tiles of SPUD_ATTN_SPAN positions: memory does not grow
 * with the number of positions. */
typedef void (*spud_attn_fn)(int hd, int nq, const float *q, const int32_t *last, spud_type kv_type, const void *k,
                             const void *v, float *out, float *work);
size_t spud_attn_work_floats(int hd);
/* Scalar reference: scores and softmax in double, two passes. */
void spud_attn_ref(int hd, int nq, const float *q, const int32_t *last, spud_type kv_type, const void *k,
                   const void *v, float *out, float *work);
void spud_attn(int hd, int nq, const float *q, const int32_t *last, spud_type kv_type, const void *k, const void *v,
               float *out, float *work);
/* Whether the dispatched attention computes over kv_type caches in SIMD
 * (the scalar reference handles every type, slowly). */
bool spud_attn_has_simd(spud_type kv_type);

/* ---- f32 vector helpers used by the forward pass (dispatched) ---- */
float spud_dot_f32(const float *a, const float *b, int64_t n);
/* y += a * x */
void spud_axpy_f32(float *y, float a, const float *x, int64_t n);
/* g[i] = silu(g[i]) * u[i] = g[i] / (1 + e^-g[i]) * u[i] (SwiGLU); the SIMD
 * versions' exp is within a few ulp of expf. */
void spud_swiglu_f32(float *g, const float *u, int64_t n);
void spud_swiglu_f32_ref(float *g, const float *u, int64_t n);

#endif
