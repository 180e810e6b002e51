/* kernels.h: the per-ISA kernel sets behind tensor.h's dispatched pointers.
 *
 * tensor.c holds the scalar references and picks one set at run time
 * (spud_kernels_init); kernels_avx2.c and kernels_avx512.c each define one set
 * compiled for their ISA. A set may only be called when spud_cpu_has() says the
 * CPU runs it. Tests use the sets directly to check every ISA against the
 * references on the machine they run on.
 *
 * Include this header first in kernel sources: it turns off floating-point
 * contraction so that `a*b - c` is never silently fused into an FMA. That keeps
 * the SIMD dequantizers and the k-quant dots bit-identical to the references
 * (FMAs that we want are written as intrinsics, which the switch does not touch).
 */
#ifndef SPUD_KERNELS_H
#define SPUD_KERNELS_H

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <stdbool.h>
#include <stdint.h>

#include "tensor.h"

typedef float (*spud_dot_f32_fn)(const float *a, const float *b, int64_t n);
typedef void (*spud_axpy_f32_fn)(float *y, float a, const float *x, int64_t n);
typedef void (*spud_swiglu_fn)(float *g, const float *u, int64_t n);

typedef enum {
    SPUD_ISA_SCALAR = 0,
    SPUD_ISA_AVX2,   /* AVX2 + FMA + F16C */
    SPUD_ISA_AVX512, /* AVX-512 F/BW/VL/DQ + VNNI, plus the AVX2 set's requirements */
    SPUD_ISA_AMX,    /* the AVX-512 set's requirements + AMX-TILE/INT8/BF16, with Linux's leave to use the tiles */
    SPUD_ISA_COUNT,
} spud_isa;

/* One ISA's kernels, indexed by weight type. A NULL entry means "no variant
 * for this ISA; use the reference". from_float entries are the activation
 * quantizers (the vec_dot_type's from_float). */
typedef struct {
    const char *name;
    spud_vec_dot_fn vec_dot[SPUD_TYPE_COUNT];
    spud_to_float_fn to_float[SPUD_TYPE_COUNT];
    spud_from_float_fn from_float[SPUD_TYPE_COUNT];
    spud_gemm_fn gemm[SPUD_TYPE_COUNT]; /* matrix-matrix kernels (NULL: vec_dot per row) */
    int gemm_rows;                      /* weight rows per gemm call */
    spud_gemm_fn mdot[SPUD_TYPE_COUNT]; /* small-batch kernels (NULL: vec_dot per row) */
    int mdot_max[SPUD_TYPE_COUNT];      /* most activation rows for which mdot beats gemm */
    bool gemm_bf16_split;               /* gemm[BF16] reads spud_gemm_x_bf16_split rows */
    spud_dot_f32_fn dot_f32;
    spud_axpy_f32_fn axpy_f32;
    spud_attn_fn attn; /* NULL: the reference */
    bool attn_q8;      /* attn has a fast path for Q8_0 caches */
    spud_swiglu_fn swiglu_f32;
} spud_kernel_set;

extern const spud_kernel_set spud_kernels_scalar;
extern const spud_kernel_set spud_kernels_avx2;
extern const spud_kernel_set spud_kernels_avx512;
extern const spud_kernel_set spud_kernels_amx; /* the AVX-512 set with AMX int8 and bf16 gemm kernels */

/* The set of an ISA (never NULL) and whether this CPU can run it. */
const spud_kernel_set *spud_kernel_set_get(spud_isa isa);
bool spud_cpu_has(spud_isa isa);

/* f32 vector helpers, scalar (the forward pass calls the dispatched
 * spud_dot_f32 / spud_axpy_f32 from tensor.h). dot_ref sums in double. */
float spud_dot_f32_ref(const float *a, const float *b, int64_t n);
void spud_axpy_f32_ref(float *y, float a, const float *x, int64_t n);

/* ---- AVX2 + FMA + F16C (kernels_avx2.c) ---- */
void spud_vec_dot_f32_avx2(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_f16_avx2(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_bf16_avx2(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_q4_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_q6_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *x);
void spud_quant_q8_0_avx2(const float *x, void *y, int64_t n);
void spud_quant_q8_K_avx2(const float *x, void *y, int64_t n);
void spud_dequant_f16_avx2(const void *x, float *y, int64_t n);
void spud_dequant_bf16_avx2(const void *x, float *y, int64_t n);
void spud_dequant_q4_0_avx2(const void *x, float *y, int64_t n);
void spud_dequant_q8_0_avx2(const void *x, float *y, int64_t n);
void spud_dequant_q4_K_avx2(const void *x, float *y, int64_t n);
void spud_dequant_q6_K_avx2(const void *x, float *y, int64_t n);
float spud_dot_f32_avx2(const float *a, const float *b, int64_t n);
void spud_axpy_f32_avx2(float *y, float a, const float *x, int64_t n);
void spud_swiglu_f32_avx2(float *g, const float *u, int64_t n);
void spud_gemm_f32_avx2(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                        float *y, size_t ldy);
void spud_gemm_f16_avx2(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                        float *y, size_t ldy);
void spud_gemm_bf16_avx2(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                        float *y, size_t ldy);
void spud_gemm_q4_0_avx2(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                         float *y, size_t ldy);
void spud_gemm_q8_0_avx2(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                         float *y, size_t ldy);
void spud_gemm_q4_K_avx2(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                         float *y, size_t ldy);
void spud_gemm_q6_K_avx2(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                         float *y, size_t ldy);
void spud_mdot_q4_0_avx2(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                         float *y, size_t ldy);
void spud_mdot_q8_0_avx2(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                         float *y, size_t ldy);
void spud_mdot_q4_K_avx2(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                         float *y, size_t ldy);
void spud_mdot_q6_K_avx2(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                         float *y, size_t ldy);
void spud_attn_avx2(int hd, int nq, const float *q, const int32_t *last, spud_type kv_type, const void *k,
                    const void *v, float *out, float *work);

/* ---- AVX-512 (kernels_avx512.c) ---- */
void spud_vec_dot_f32_avx512(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_f16_avx512(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_bf16_avx512(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_q4_0_q8_0_avx512(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_q8_0_q8_0_avx512(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_q4_K_q8_K_avx512(int64_t n, float *s, const void *w, const void *x);
void spud_vec_dot_q6_K_q8_K_avx512(int64_t n, float *s, const void *w, const void *x);
void spud_quant_q8_0_avx512(const float *x, void *y, int64_t n);
void spud_quant_q8_K_avx512(const float *x, void *y, int64_t n);
void spud_dequant_f16_avx512(const void *x, float *y, int64_t n);
void spud_dequant_bf16_avx512(const void *x, float *y, int64_t n);
void spud_dequant_q4_0_avx512(const void *x, float *y, int64_t n);
void spud_dequant_q8_0_avx512(const void *x, float *y, int64_t n);
void spud_dequant_q4_K_avx512(const void *x, float *y, int64_t n);
void spud_dequant_q6_K_avx512(const void *x, float *y, int64_t n);
float spud_dot_f32_avx512(const float *a, const float *b, int64_t n);
void spud_axpy_f32_avx512(float *y, float a, const float *x, int64_t n);
void spud_swiglu_f32_avx512(float *g, const float *u, int64_t n);
void spud_attn_avx512(int hd, int nq, const float *q, const int32_t *last, spud_type kv_type, const void *k,
                      const void *v, float *out, float *work);
void spud_gemm_f32_avx512(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                        float *y, size_t ldy);
void spud_gemm_f16_avx512(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                        float *y, size_t ldy);
void spud_gemm_bf16_avx512(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                        float *y, size_t ldy);
void spud_gemm_q4_0_avx512(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                           float *y, size_t ldy);
void spud_gemm_q8_0_avx512(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                           float *y, size_t ldy);
void spud_gemm_q4_K_avx512(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                           float *y, size_t ldy);
void spud_gemm_q6_K_avx512(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                           float *y, size_t ldy);
void spud_mdot_q4_0_avx512(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                           float *y, size_t ldy);
void spud_mdot_q8_0_avx512(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                           float *y, size_t ldy);
void spud_mdot_q4_K_avx512(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                           float *y, size_t ldy);
void spud_mdot_q6_K_avx512(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc,
                           float *y, size_t ldy);
/* AMX int8 and bf16 (kernels_avx512.c): only where spud_cpu_has(SPUD_ISA_AMX) */
void spud_gemm_bf16_amx(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy);
void spud_gemm_q4_0_amx(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy);
void spud_gemm_q8_0_amx(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy);
void spud_gemm_q4_K_amx(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy);
void spud_gemm_q6_K_amx(int64_t k, const void *w, size_t row_bytes, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy);

/* Unpack the 12 packed bytes of a q4_K block into 8 six-bit scales and 8
 * six-bit mins (GGML's get_scale_min_k4, all eight at once). */
static inline void spud_q4_K_unpack_scales(const uint8_t *packed, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = packed[j] & 63;
        mn[j] = packed[j + 4] & 63;
        sc[j + 4] = (uint8_t)((packed[j + 8] & 0x0F) | ((packed[j] >> 6) << 4));
        mn[j + 4] = (uint8_t)((packed[j + 8] >> 4) | ((packed[j + 4] >> 6) << 4));
    }
}

/* The same, four bytes at a time with 32-bit words; little-endian (x86) only,
 * for the SIMD kernels. */
static inline void spud_q4_K_unpack_scales_le(const uint8_t *packed, uint8_t sc[8], uint8_t mn[8]) {
    uint32_t u0, u1, u2;
    __builtin_memcpy(&u0, packed, 4);
    __builtin_memcpy(&u1, packed + 4, 4);
    __builtin_memcpy(&u2, packed + 8, 4);
    const uint32_t s_lo = u0 & 0x3F3F3F3Fu, m_lo = u1 & 0x3F3F3F3Fu;
    const uint32_t s_hi = (u2 & 0x0F0F0F0Fu) | (((u0 >> 6) & 0x03030303u) << 4);
    const uint32_t m_hi = ((u2 >> 4) & 0x0F0F0F0Fu) | (((u1 >> 6) & 0x03030303u) << 4);
    __builtin_memcpy(sc, &s_lo, 4);
    __builtin_memcpy(sc + 4, &s_hi, 4);
    __builtin_memcpy(mn, &m_lo, 4);
    __builtin_memcpy(mn + 4, &m_hi, 4);
}

#endif
