/* kernels_avx512.c: AVX-512 kernels (F/BW/VL/DQ + VNNI; compiled with the
 * AVX2 flags too; called only when spud_cpu_has(SPUD_ISA_AVX512)).
 *
 * Integer dots use VNNI: vpdpbusd (u8 x s8, 4 products per 32-bit lane, no
 * saturation) for q8_0/q4_0, and maddubs followed by vpdpwssd (s16 x s16
 * pairs into 32-bit lanes) to apply the per-group scales of q4_K/q6_K without
 * leaving the integer domain. The q4_0/q8_0 dots take the fp16 scales of 16
 * blocks at once (vpermt2w out of 128-byte windows, one fp16 conversion).
 * Weights are prefetched well ahead: that is what brings the dots close to
 * the memory bandwidth of one core.
 *
 * Same numerical contract as kernels_avx2.c: the q6_K dot, quantizers and
 * dequantizers are bit-identical to the references; the q4_0/q8_0/q4_K/float
 * dots differ by float summation order only.
 *
 * AVX512_BF16 (vdpbf16ps) is deliberately not used for the bf16 dot: it would
 * round the f32 activations to bf16 and flush denormals. Widening bf16 to f32
 * is a shift and the dot is memory-bound either way.
 */
#include "kernels.h" /* first: sets the floating-point contraction mode */

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define LOADU512(p) _mm512_loadu_si512((const void *)(p))
#define LOADU256(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define LOADU128(p) _mm_loadu_si128((const __m128i *)(const void *)(p))
#define LOADU64(p) _mm_loadl_epi64((const __m128i *)(const void *)(p))

static inline float f16s(spud_f16 h) { return _cvtsh_ss(h); }

static inline int32_t hsum_epi32_128(__m128i s) {
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

static inline int32_t hsum_epi32_256(__m256i v) {
    return hsum_epi32_128(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

static inline __mmask16 tail_mask16(int64_t left) {
    return (__mmask16)(left >= 16 ? 0xFFFF : (1u << left) - 1);
}

/* Weights stream from memory once per token: prefetch this far ahead of the
 * row being read (measured on Zen 5: about 8 KB turns ~32 GB/s into ~38 GB/s
 * single-threaded; the hardware prefetcher alone starts too late). Prefetches
 * never fault, so running past the end of a row or tensor is harmless. */
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 8192
#endif
#ifndef PREFETCH_HINT
#define PREFETCH_HINT _MM_HINT_T0
#endif

static inline void prefetch_weights(const void *p, int bytes) {
    for (int off = 0; off < bytes; off += 64) _mm_prefetch((const char *)p + PREFETCH_AHEAD + off, PREFETCH_HINT);
}

/* Elements of size `elem` before p reaches a 64-byte boundary (so the main
 * loops' weight loads do not split cache lines), at most n. */
static inline int64_t head_to_align64(const void *p, size_t elem, int64_t n) {
    const size_t mis = (size_t)(-(uintptr_t)p) & 63;
    const int64_t h = mis % elem ? 0 : (int64_t)(mis / elem);
    return h < n ? h : n;
}

/* ---- float dots ---- */

void spud_vec_dot_f32_avx512(int64_t n, float *s, const void *w, const void *xv) {
    const float *a = w, *x = xv;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    /* a head with masked loads until the weights are 64-byte aligned */
    const int64_t head = head_to_align64(a, sizeof *a, n);
    for (int64_t j = 0; j < head; j += 16) {
        const __mmask16 m = tail_mask16(head - j);
        acc[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + j), _mm512_maskz_loadu_ps(m, x + j), acc[1]);
    }
    int64_t i = head;
    for (; i + 64 <= n; i += 64) {
        prefetch_weights(a + i, 256);
#pragma GCC unroll 8
        for (int k = 0; k < 4; k++)
            acc[k] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16 * k), _mm512_loadu_ps(x + i + 16 * k),
                                     acc[k]);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, x + i), acc[0]);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

float spud_dot_f32_avx512(const float *a, const float *b, int64_t n) {
    float s;
    spud_vec_dot_f32_avx512(n, &s, a, b);
    return s;
}

void spud_axpy_f32_avx512(float *y, float a, const float *x, int64_t n) {
    const __m512 va = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        const __mmask16 m = tail_mask16(n - i);
        const __m512 r = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}

static inline __m512 f16x16_to_ps(const spud_f16 *p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

void spud_vec_dot_f16_avx512(int64_t n, float *s, const void *w, const void *xv) {
    const spud_f16 *a = w;
    const float *x = xv;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    /* a head with masked loads until the weights are 64-byte aligned */
    const int64_t head = head_to_align64(a, sizeof *a, n);
    for (int64_t j = 0; j < head; j += 16) {
        const __mmask16 m = tail_mask16(head - j);
        acc[1] = _mm512_fmadd_ps(f16x16_to_ps(a + j, m), _mm512_maskz_loadu_ps(m, x + j), acc[1]);
    }
    int64_t i = head;
    for (; i + 64 <= n; i += 64) {
        prefetch_weights(a + i, 128);
#pragma GCC unroll 8
        for (int k = 0; k < 4; k++)
            acc[k] = _mm512_fmadd_ps(_mm512_cvtph_ps(LOADU256(a + i + 16 * k)),
                                     _mm512_loadu_ps(x + i + 16 * k), acc[k]);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        acc[0] = _mm512_fmadd_ps(f16x16_to_ps(a + i, m), _mm512_maskz_loadu_ps(m, x + i), acc[0]);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

static inline __m512 bf16x16_to_ps(const spud_bf16 *p, __mmask16 m) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

void spud_vec_dot_bf16_avx512(int64_t n, float *s, const void *w, const void *xv) {
    const spud_bf16 *a = w;
    const float *x = xv;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    /* a head with masked loads until the weights are 64-byte aligned */
    const int64_t head = head_to_align64(a, sizeof *a, n);
    for (int64_t j = 0; j < head; j += 16) {
        const __mmask16 m = tail_mask16(head - j);
        acc[1] = _mm512_fmadd_ps(bf16x16_to_ps(a + j, m), _mm512_maskz_loadu_ps(m, x + j), acc[1]);
    }
    int64_t i = head;
    for (; i + 64 <= n; i += 64) {
        prefetch_weights(a + i, 128);
#pragma GCC unroll 8
        for (int k = 0; k < 4; k++)
            acc[k] = _mm512_fmadd_ps(bf16x16_to_ps(a + i + 16 * k, 0xFFFF), _mm512_loadu_ps(x + i + 16 * k),
                                     acc[k]);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        acc[0] = _mm512_fmadd_ps(bf16x16_to_ps(a + i, m), _mm512_maskz_loadu_ps(m, x + i), acc[0]);
    }
    *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

void spud_dequant_f16_avx512(const void *vx, float *y, int64_t n) {
    const spud_f16 *x = vx;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        _mm512_mask_storeu_ps(y + i, m, f16x16_to_ps(x + i, m));
    }
}

void spud_dequant_bf16_avx512(const void *vx, float *y, int64_t n) {
    const spud_bf16 *x = vx;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        _mm512_mask_storeu_ps(y + i, m, bf16x16_to_ps(x + i, m));
    }
}

/* ---- q8_0 / q4_0 ---- */

/* The fp16 d fields (first field of the block) of 16 consecutive blocks of
 * 18 bytes (q4_0) or 34 bytes (q8_0), as 16 halves: vpermt2w picks the words
 * out of 128-byte windows (8 resp. 4 blocks each). Gathers are much slower on
 * the CPUs this targets. Never reads past the 16th block. */
static inline __m256i d16_stride18(const void *p) {
    const char *c = p;
    const __m512i idx = _mm512_castsi256_si512(
        _mm256_setr_epi16(0, 9, 18, 27, 36, 45, 54, 63, 0, 0, 0, 0, 0, 0, 0, 0));
    const __m512i lo = _mm512_permutex2var_epi16(LOADU512(c), idx, LOADU512(c + 64));
    const __m512i hi = _mm512_permutex2var_epi16(LOADU512(c + 144), idx, LOADU512(c + 208));
    return _mm256_inserti128_si256(_mm512_castsi512_si256(lo), _mm512_castsi512_si128(hi), 1);
}

static inline __m256i d16_stride34(const void *p) {
    const char *c = p;
    const __m512i i0 = _mm512_castsi256_si512(_mm256_setr_epi16(0, 17, 34, 51, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
    const __m512i i1 = _mm512_castsi256_si512(_mm256_setr_epi16(0, 0, 0, 0, 0, 17, 34, 51, 0, 0, 0, 0, 0, 0, 0, 0));
    const __m512i i2 = _mm512_castsi256_si512(_mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 34, 51, 0, 0, 0, 0));
    const __m512i i3 = _mm512_castsi256_si512(_mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 34, 51));
    __m512i r = _mm512_permutex2var_epi16(LOADU512(c), i0, LOADU512(c + 64));
    r = _mm512_mask_mov_epi16(r, 0x00F0, _mm512_permutex2var_epi16(LOADU512(c + 136), i1, LOADU512(c + 200)));
    r = _mm512_mask_mov_epi16(r, 0x0F00, _mm512_permutex2var_epi16(LOADU512(c + 272), i2, LOADU512(c + 336)));
    r = _mm512_mask_mov_epi16(r, 0xF000, _mm512_permutex2var_epi16(LOADU512(c + 408), i3, LOADU512(c + 472)));
    return _mm512_castsi512_si256(r);
}

/* Lanes 0-7 = s[2k], lanes 8-15 = s[2k+1]. */
static inline __m512 pair_scale(__m512 s, int k) {
    const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(2 * k)),
                                           _mm256_set1_epi32(2 * k + 1), 1);
    return _mm512_permutexvar_ps(idx, s);
}

static inline __m512i load_2x32(const int8_t *p0, const int8_t *p1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(LOADU256(p0)), LOADU256(p1), 1);
}

/* Signed int8 dot in 32-bit lanes (4 products each): |w| x (x sign-flipped
 * where w < 0), through vpdpbusd. */
static inline __m512i dot_i8_512(__m512i w, __m512i x) {
    const __m512i sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), sx);
}

static inline __m256i dot_i8_256(__m256i w, __m256i x) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
}

void spud_vec_dot_q8_0_q8_0_avx512(int64_t n, float *s, const void *w, const void *xv) {
    const block_q8_0 *a = w, *b = xv;
    const int64_t nb = n / QK8_0;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= nb; i += 16) {
        prefetch_weights(&a[i], 16 * sizeof(block_q8_0));
        const __m512 sc = _mm512_mul_ps(_mm512_cvtph_ps(d16_stride34(&a[i])), _mm512_cvtph_ps(d16_stride34(&b[i])));
#pragma GCC unroll 8
        for (int k = 0; k < 8; k += 2) {
            const int64_t j = i + 2 * k;
            const __m512i p0 = dot_i8_512(load_2x32(a[j].qs, a[j + 1].qs), load_2x32(b[j].qs, b[j + 1].qs));
            const __m512i p1 = dot_i8_512(load_2x32(a[j + 2].qs, a[j + 3].qs), load_2x32(b[j + 2].qs, b[j + 3].qs));
            acc0 = _mm512_fmadd_ps(pair_scale(sc, k), _mm512_cvtepi32_ps(p0), acc0);
            acc1 = _mm512_fmadd_ps(pair_scale(sc, k + 1), _mm512_cvtepi32_ps(p1), acc1);
        }
    }
    for (; i + 2 <= nb; i += 2) {
        const __m512i p = dot_i8_512(load_2x32(a[i].qs, a[i + 1].qs), load_2x32(b[i].qs, b[i + 1].qs));
        const __m512 sc = _mm512_insertf32x8(_mm512_set1_ps(f16s(a[i].d) * f16s(b[i].d)),
                                             _mm256_set1_ps(f16s(a[i + 1].d) * f16s(b[i + 1].d)), 1);
        acc0 = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(p), acc0);
    }
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    if (i < nb) {
        const __m256i p = dot_i8_256(LOADU256(a[i].qs), LOADU256(b[i].qs));
        sum += (float)hsum_epi32_256(p) * (f16s(a[i].d) * f16s(b[i].d));
    }
    *s = sum;
}

/* Nibbles of blocks q0, q1 as [lo(q0) | hi(q0) | lo(q1) | hi(q1)], 16 bytes each:
 * the 64 unsigned values (0..15) of two consecutive q4_0 blocks in order. */
static inline __m512i q4_0_pair(const block_q4_0 *q0, const block_q4_0 *q1) {
    __m512i z = _mm512_broadcast_i32x4(LOADU128(q0->qs));
    z = _mm512_mask_broadcast_i32x4(z, 0xFF00, LOADU128(q1->qs));
    z = _mm512_srlv_epi64(z, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
}

/* Σ (q - 8) * x per 8 lanes: vpdpbusd of the unsigned nibbles, minus 8 Σ x. */
static inline __m512i q4_0_dot_pair(__m512i q, __m512i x) {
    const __m512i qx = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, x);
    const __m512i sx8 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), x);
    return _mm512_sub_epi32(qx, sx8);
}

/* Four blocks at once, 128-bit lane b = block b: the 64 nibble bytes split
 * into low halves [lo0..lo3] and high halves [hi0..hi3], matched with the
 * activations' first and second 16 bytes of each block. */
static inline __m512i q4_0_dot_quad(const block_q4_0 *a, const block_q8_0 *b) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
    __m512i z = _mm512_castsi128_si512(LOADU128(a[0].qs));
    z = _mm512_inserti32x4(z, LOADU128(a[1].qs), 1);
    z = _mm512_inserti32x4(z, LOADU128(a[2].qs), 2);
    z = _mm512_inserti32x4(z, LOADU128(a[3].qs), 3);
    const __m512i lo = _mm512_and_si512(z, m4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
    const __m512i y01 = load_2x32(b[0].qs, b[1].qs), y23 = load_2x32(b[2].qs, b[3].qs);
    const __m512i ylo = _mm512_shuffle_i64x2(y01, y23, _MM_SHUFFLE(2, 0, 2, 0));
    const __m512i yhi = _mm512_shuffle_i64x2(y01, y23, _MM_SHUFFLE(3, 1, 3, 1));
    const __m512i qy = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, ylo), hi, yhi);
    const __m512i y8 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, ylo), eight, yhi);
    return _mm512_sub_epi32(qy, y8);
}

/* Lanes 4j..4j+3 = s[4k + j]. */
static inline __m512 quad_scale(__m512 s, int k) {
    const __m512i idx = _mm512_setr_epi32(4 * k, 4 * k, 4 * k, 4 * k, 4 * k + 1, 4 * k + 1, 4 * k + 1, 4 * k + 1,
                                          4 * k + 2, 4 * k + 2, 4 * k + 2, 4 * k + 2, 4 * k + 3, 4 * k + 3, 4 * k + 3,
                                          4 * k + 3);
    return _mm512_permutexvar_ps(idx, s);
}

void spud_vec_dot_q4_0_q8_0_avx512(int64_t n, float *s, const void *w, const void *xv) {
    const block_q4_0 *a = w;
    const block_q8_0 *b = xv;
    const int64_t nb = n / QK4_0;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= nb; i += 16) {
        prefetch_weights(&a[i], 16 * sizeof(block_q4_0));
        const __m512 sc = _mm512_mul_ps(_mm512_cvtph_ps(d16_stride18(&a[i])), _mm512_cvtph_ps(d16_stride34(&b[i])));
#pragma GCC unroll 4
        for (int k = 0; k < 4; k += 2) {
            const __m512i p0 = q4_0_dot_quad(&a[i + 4 * k], &b[i + 4 * k]);
            const __m512i p1 = q4_0_dot_quad(&a[i + 4 * k + 4], &b[i + 4 * k + 4]);
            acc0 = _mm512_fmadd_ps(quad_scale(sc, k), _mm512_cvtepi32_ps(p0), acc0);
            acc1 = _mm512_fmadd_ps(quad_scale(sc, k + 1), _mm512_cvtepi32_ps(p1), acc1);
        }
    }
    for (; i + 2 <= nb; i += 2) {
        const __m512i p = q4_0_dot_pair(q4_0_pair(&a[i], &a[i + 1]), load_2x32(b[i].qs, b[i + 1].qs));
        const __m512 sc = _mm512_insertf32x8(_mm512_set1_ps(f16s(a[i].d) * f16s(b[i].d)),
                                             _mm256_set1_ps(f16s(a[i + 1].d) * f16s(b[i + 1].d)), 1);
        acc0 = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(p), acc0);
    }
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    if (i < nb) {
        const __m128i m4 = _mm_set1_epi8(0x0F);
        const __m128i raw = LOADU128(a[i].qs);
        __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
        q = _mm256_sub_epi8(q, _mm256_set1_epi8(8));
        const __m256i p = dot_i8_256(q, LOADU256(b[i].qs));
        sum += (float)hsum_epi32_256(p) * (f16s(a[i].d) * f16s(b[i].d));
    }
    *s = sum;
}

/* roundf (half away from zero) of each lane; see kernels_avx2.c. */
static inline __m512 round_half_away_512(__m512 v) {
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
    const __m512 step = _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_and_ps(v, _mm512_set1_ps(-0.0f)));
    return _mm512_mask_add_ps(t, _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ), t, step);
}

static inline __m512 clamp_512(__m512 v, float lo, float hi) {
    return _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(lo)), _mm512_set1_ps(hi));
}

void spud_quant_q8_0_avx512(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.f;
        const float id = d != 0.f ? 1.f / d : 0.f;
        y[b].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        const __m512 vid = _mm512_set1_ps(id);
        const __m512i q0 = _mm512_cvttps_epi32(round_half_away_512(clamp_512(_mm512_mul_ps(v0, vid), -127.f, 127.f)));
        const __m512i q1 = _mm512_cvttps_epi32(round_half_away_512(clamp_512(_mm512_mul_ps(v1, vid), -127.f, 127.f)));
        _mm_storeu_si128((__m128i *)(void *)y[b].qs, _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(void *)(y[b].qs + 16), _mm512_cvtsepi32_epi8(q1));
    }
}

void spud_dequant_q8_0_avx512(const void *vx, float *y, int64_t n) {
    const block_q8_0 *x = vx;
    for (int64_t b = 0; b < n / QK8_0; b++, y += QK8_0) {
        const __m512 d = _mm512_set1_ps(f16s(x[b].d));
#pragma GCC unroll 8
        for (int k = 0; k < 2; k++) {
            const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(LOADU128(x[b].qs + 16 * k)));
            _mm512_storeu_ps(y + 16 * k, _mm512_mul_ps(f, d));
        }
    }
}

void spud_dequant_q4_0_avx512(const void *vx, float *y, int64_t n) {
    const block_q4_0 *x = vx;
    const __m128i m4 = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    for (int64_t b = 0; b < n / QK4_0; b++, y += QK4_0) {
        const __m512 d = _mm512_set1_ps(f16s(x[b].d));
        const __m128i raw = LOADU128(x[b].qs);
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, m4), eight);
        const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), eight);
        _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), d));
        _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), d));
    }
}

/* ---- q8_K ---- */

void spud_quant_q8_K_avx512(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m512 m = _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int k = 0; k < QK_K / 16; k++) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + 16 * k)));
        const float amax = _mm512_reduce_max_ps(m);
        if (amax == 0.f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        /* the signed value of the first element of largest magnitude */
        float max = 0;
        const __m512 vamax = _mm512_set1_ps(amax);
#pragma GCC unroll 8
        for (int k = 0; k < QK_K / 16; k++) {
            const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + 16 * k)), vamax, _CMP_EQ_OQ);
            if (hit) {
                max = x[16 * k + __builtin_ctz((unsigned)hit)];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m512 vs = _mm512_set1_ps(iscale);
#pragma GCC unroll 8
        for (int k = 0; k < QK_K / 16; k++) { /* one zmm = one bsums group */
            const __m512 t = clamp_512(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * k), vs), -128.f, 127.f);
            const __m512i q = _mm512_cvtps_epi32(_mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            _mm_storeu_si128((__m128i *)(void *)(y[b].qs + 16 * k), _mm512_cvtsepi32_epi8(q));
            y[b].bsums[k] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        y[b].d = 1.f / iscale;
    }
}

/* ---- q4_K ---- */

/* The packed scales of a q4_K block as bytes [sc0..sc7, mn0..mn7] (what
 * spud_q4_K_unpack_scales computes), in vector registers: p[0..12) are the
 * scales, the 4 bytes after them (the start of qs) are loaded and ignored. */
static inline __m128i q4_K_scales_vec(const uint8_t *p) {
    const __m128i u = LOADU128(p);
    /* dwords: sc0-3 low bits, sc4-7 low nibbles, mn0-3 low bits, mn4-7 low nibbles */
    const __m128i a = _mm_shuffle_epi8(u, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    /* dwords 1 and 3: the bytes whose top two bits are the high bits of sc4-7 / mn4-7 */
    const __m128i b = _mm_shuffle_epi8(u, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    const __m128i lo = _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4)),
                                     _mm_setr_epi32(0x3F3F3F3F, 0x0F0F0F0F, 0x3F3F3F3F, 0x0F0F0F0F));
    const __m128i hi = _mm_and_si128(_mm_srli_epi32(b, 2), _mm_set1_epi8(0x30));
    return _mm_or_si128(lo, hi);
}

/* vpshufb control giving int16 lanes 0-15 = byte ga, lanes 16-31 = byte gb
 * of each 128-bit lane (the high byte of each int16 zeroed). */
static inline __m512i scale_pick(int ga, int gb) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)(0x8000 | ga))),
                              _mm256_set1_epi16((short)(0x8000 | gb)), 1);
}

/* Per super-block: Σ_g sc[g] * Σ q*y in 16 int32 lanes (maddubs, then
 * vpdpwssd with the group's scale), and Σ_g m[g] * (bsum pair of g) in 8 int32
 * lanes. Those are exact; they are scaled by d and dmin and summed in float
 * lanes across super-blocks (summation order differs from the reference). */
void spud_vec_dot_q4_K_q8_K_avx512(int64_t n, float *s, const void *w, const void *xv) {
    const block_q4_K *a = w;
    const block_q8_K *b = xv;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i nibble_shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
    /* int16 lane i of the min vector = mn[i / 2] (bytes 8..15 of the scales vector) */
    const __m256i min_pick = _mm256_setr_epi8(8, -1, 8, -1, 9, -1, 9, -1, 10, -1, 10, -1, 11, -1, 11, -1, 12, -1, 12,
                                              -1, 13, -1, 13, -1, 14, -1, 14, -1, 15, -1, 15, -1);
    __m512 accd = _mm512_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        prefetch_weights(&a[i], sizeof(block_q4_K));
        const __m128i scm = q4_K_scales_vec(a[i].scales);
        const __m512i scb = _mm512_broadcast_i32x4(scm);
        __m512i acc = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            /* 32 bytes of nibbles -> [group 2c (low nibbles) | group 2c+1 (high)] */
            const __m512i q = _mm512_and_si512(
                _mm512_srlv_epi64(_mm512_broadcast_i64x4(LOADU256(a[i].qs + 32 * c)), nibble_shift), m4);
            const __m512i p = _mm512_maddubs_epi16(q, LOADU512(b[i].qs + 64 * c));
            acc = _mm512_dpwssd_epi32(acc, p, _mm512_shuffle_epi8(scb, scale_pick(2 * c, 2 * c + 1)));
        }
        const __m256i mins = _mm256_madd_epi16(LOADU256(b[i].bsums),
                                               _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(scm), min_pick));
        const float d = f16s(a[i].d) * b[i].d;
        const float dmin = f16s(a[i].dmin) * b[i].d;
        accd = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(acc), accd);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(mins), accm);
    }
    const __m256 t = _mm256_sub_ps(_mm256_add_ps(_mm512_castps512_ps256(accd), _mm512_extractf32x8_ps(accd, 1)), accm);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    *s = _mm_cvtss_f32(r);
}

void spud_dequant_q4_K_avx512(const void *vx, float *y, int64_t n) {
    const block_q4_K *x = vx;
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = f16s(x[b].d), dmin = f16s(x[b].dmin);
        uint8_t sc[8], mn[8];
        spud_q4_K_unpack_scales_le(x[b].scales, sc, mn);
#pragma GCC unroll 8
        for (int c = 0; c < 4; c++) {
#pragma GCC unroll 8
            for (int half = 0; half < 2; half++) {
                const __m512 dg = _mm512_set1_ps(d * sc[2 * c + half]);
                const __m512 mg = _mm512_set1_ps(dmin * mn[2 * c + half]);
#pragma GCC unroll 8
                for (int k = 0; k < 2; k++) {
                    __m128i q = LOADU128(x[b].qs + 32 * c + 16 * k);
                    q = half ? _mm_and_si128(_mm_srli_epi16(q, 4), m4) : _mm_and_si128(q, m4);
                    const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q));
                    _mm512_storeu_ps(y + 16 * k, _mm512_sub_ps(_mm512_mul_ps(dg, f), mg));
                }
                y += 32;
            }
        }
    }
}

/* ---- q6_K ---- */

/* The 6-bit values (0..63) of one 128-element half as two zmm: elements
 * [0, 64) and [64, 128) of the half. */
static inline void q6_K_half_values_512(const uint8_t *ql, const uint8_t *qh, __m512i *qa, __m512i *qb) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    const __m512i l = LOADU512(ql);
    const __m512i h = _mm512_broadcast_i64x4(LOADU256(qh));
    /* top bits: pairs 0,1 -> [0,32), [32,64); pairs 2,3 -> [64,96), [96,128) */
    const __m512i ha = _mm512_and_si512(_mm512_sllv_epi64(h, _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2)), m30);
    const __m512i hb = _mm512_and_si512(_mm512_srlv_epi64(h, _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2)), m30);
    *qa = _mm512_or_si512(_mm512_and_si512(l, m4), ha);
    *qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), hb);
}

/* vpermw index: int16 lanes 8j..8j+7 = element g0 + j (j = 0..3). */
static inline __m512i group_index(int g0) {
    return _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_setr_epi16(g0, g0, g0, g0, g0, g0, g0, g0, g0 + 1, g0 + 1, g0 + 1, g0 + 1,
                                                 g0 + 1, g0 + 1, g0 + 1, g0 + 1)),
        _mm256_setr_epi16(g0 + 2, g0 + 2, g0 + 2, g0 + 2, g0 + 2, g0 + 2, g0 + 2, g0 + 2, g0 + 3, g0 + 3, g0 + 3,
                          g0 + 3, g0 + 3, g0 + 3, g0 + 3, g0 + 3),
        1);
}

void spud_vec_dot_q6_K_q8_K_avx512(int64_t n, float *s, const void *w, const void *xv) {
    const block_q6_K *a = w;
    const block_q8_K *b = xv;
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        prefetch_weights(&a[i], sizeof(block_q6_K));
        const __m256i sc16 = _mm256_cvtepi8_epi16(LOADU128(a[i].scales));
        const __m512i sc512 = _mm512_castsi256_si512(sc16); /* vpermw reads lanes 0-15 only */
        __m512i acc = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            __m512i qa, qb;
            q6_K_half_values_512(a[i].ql + 64 * h, a[i].qh + 32 * h, &qa, &qb);
            const __m512i pa = _mm512_maddubs_epi16(qa, LOADU512(b[i].qs + 128 * h));
            const __m512i pb = _mm512_maddubs_epi16(qb, LOADU512(b[i].qs + 128 * h + 64));
            acc = _mm512_dpwssd_epi32(acc, pa, _mm512_permutexvar_epi16(group_index(8 * h), sc512));
            acc = _mm512_dpwssd_epi32(acc, pb, _mm512_permutexvar_epi16(group_index(8 * h + 4), sc512));
        }
        /* the -32 offset: 32 * Σ_g sc[g] * bsums[g] */
        const int32_t off = hsum_epi32_256(_mm256_madd_epi16(LOADU256(b[i].bsums), sc16));
        const int32_t isum = _mm512_reduce_add_epi32(acc) - off * 32;
        sum += (f16s(a[i].d) * b[i].d) * (float)isum;
    }
    *s = sum;
}

void spud_dequant_q6_K_avx512(const void *vx, float *y, int64_t n) {
    const block_q6_K *x = vx;
    int8_t v[128];
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = f16s(x[b].d);
#pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            __m512i qa, qb;
            q6_K_half_values_512(x[b].ql + 64 * h, x[b].qh + 32 * h, &qa, &qb);
            _mm512_storeu_si512(v, _mm512_sub_epi8(qa, _mm512_set1_epi8(32)));
            _mm512_storeu_si512(v + 64, _mm512_sub_epi8(qb, _mm512_set1_epi8(32)));
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                const __m512 dg = _mm512_set1_ps(d * x[b].scales[8 * h + g]);
                const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(LOADU128(v + 16 * g)));
                _mm512_storeu_ps(y, _mm512_mul_ps(dg, f));
                y += 16;
            }
        }
    }
}

/* ---- matrix-matrix products (prefill) ----
 *
 * A call computes 16 weight rows against any number of activation rows. The
 * weights are repacked on the fly, GEMM_KC elements at a time, into a panel
 * in L1 whose int8 dot products put one weight row in each 32-bit lane: for a
 * group of gs elements, gs/4 zmm hold bytes 4j..4j+3 of every row (lane r =
 * row r), so one vpdpbusd against the broadcast of 4 activation bytes adds 4
 * products to all 16 rows at once. The group's per-row scales follow as one
 * zmm of floats (and the q4_K mins as another). Each panel group is then used
 * by up to GEMM_NC activation rows kept in registers, so a weight byte loaded
 * once feeds 8 tokens, and no horizontal sums are needed.
 *
 * vpdpbusd takes unsigned x signed bytes: the weights go in as unsigned
 * values (q4_0 nibbles 0..15, q8_0 values + 128, q4_K nibbles, q6_K 6-bit
 * values) and the activations as they are. The constant offset (8, 128, 32)
 * times Σ activations is the accumulator's starting value (spud_gemm_x aux),
 * so every group's integer sum is exact, as in vec_dot; the q4_K mins are
 * subtracted in float (dmin * m * dx * Σ q). Scaling and summation over
 * groups are in float, in a different order from vec_dot. */

#define GEMM_ROWS 16
#define GEMM_KC 512 /* weight elements per packed chunk (a multiple of 256) */
#define GEMM_NC 8   /* activation rows per micro-tile */

/* out[j] = dword j of row r (lane r), for 16 rows of 8 dwords given as z[a] =
 * [row a | row a + 8]: two 8x8 transposes side by side (rows 0-7 in the low
 * 256 bits, 8-15 high). */
static inline __attribute__((always_inline)) void transpose_16x8_z(const __m512i z[8], __m512i out[8]) {
    __m512i t[8], u[8];
#pragma GCC unroll 8
    for (int a = 0; a < 8; a += 2) {
        t[a] = _mm512_unpacklo_epi32(z[a], z[a + 1]);
        t[a + 1] = _mm512_unpackhi_epi32(z[a], z[a + 1]);
    }
#pragma GCC unroll 8
    for (int a = 0; a < 8; a += 4) {
        u[a / 2] = _mm512_unpacklo_epi64(t[a], t[a + 2]);
        u[a / 2 + 1] = _mm512_unpackhi_epi64(t[a], t[a + 2]);
        u[a / 2 + 4] = _mm512_unpacklo_epi64(t[a + 1], t[a + 3]);
        u[a / 2 + 5] = _mm512_unpackhi_epi64(t[a + 1], t[a + 3]);
    }
    /* 128-bit lanes of u[col_rows03[c]]: column c of rows 0-3, column c + 4 of
     * rows 0-3, column c of rows 8-11, column c + 4 of rows 8-11; u[col_rows47[c]]
     * the same for rows 4-7 and 12-15. Interleave their 128-bit lanes. */
    const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    const __m512i hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    const int col_rows03[4] = {0, 1, 4, 5}, col_rows47[4] = {2, 3, 6, 7};
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        out[c] = _mm512_permutex2var_epi64(u[col_rows03[c]], lo, u[col_rows47[c]]);
        out[c + 4] = _mm512_permutex2var_epi64(u[col_rows03[c]], hi, u[col_rows47[c]]);
    }
}

/* out[j] = dword j of rows src + r * stride (lane r), for 16 rows of 8 dwords. */
static inline void transpose_16x8(const uint8_t *src, size_t stride, __m512i out[8]) {
    __m512i z[8];
    for (int a = 0; a < 8; a++)
        z[a] = _mm512_inserti64x4(_mm512_castsi256_si512(LOADU256(src + a * stride)),
                                  LOADU256(src + (a + 8) * stride), 1);
    transpose_16x8_z(z, out);
}

/* Bytes of one panel group: gs/4 zmm of values, the scales, the mins. */
static inline size_t panel_group_bytes(int gs, bool mins) { return (size_t)gs * 16 + 64 + (mins ? 64 : 0); }

/* Move the unsigned values vals[r * GEMM_KC + e] (e < kc) into the panel. */
static inline void panel_transpose(const uint8_t *vals, int kc, int gs, bool mins, uint8_t *panel) {
    const size_t gb = panel_group_bytes(gs, mins);
    for (int e = 0; e < kc; e += 32) {
        __m512i o[8];
        transpose_16x8(vals + e, GEMM_KC, o);
        if (gs == 32) {
            uint8_t *p = panel + (size_t)(e / 32) * gb;
            for (int j = 0; j < 8; j++) _mm512_store_si512(p + 64 * j, o[j]);
        } else { /* gs == 16: two groups */
            uint8_t *p0 = panel + (size_t)(e / 16) * gb, *p1 = p0 + gb;
            for (int j = 0; j < 4; j++) {
                _mm512_store_si512(p0 + 64 * j, o[j]);
                _mm512_store_si512(p1 + 64 * j, o[j + 4]);
            }
        }
    }
}

static inline int32_t load_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* y[c * ldy + r] (+)= panel rows . activation rows c < NC, over ng groups.
 * xq, dx, aux point at the chunk's first element / group of activation row 0. */
static inline __attribute__((always_inline)) void gemm_tile(const uint8_t *panel, int ng, const int gs, const bool mins,
                                                          const int8_t *xq, size_t x_stride, const float *dx,
                                                          const float *aux, size_t s_stride, const int NC, float *y,
                                                          size_t ldy, __mmask16 rmask, bool first) {
    __m512 f[GEMM_NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; c++) f[c] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rmask, y + c * ldy);
    const size_t gb = panel_group_bytes(gs, mins);
    for (int g = 0; g < ng; g++) {
        const uint8_t *pg = panel + (size_t)g * gb;
        __m512i W[8];
#pragma GCC unroll 8
        for (int j = 0; j < gs / 4; j++) W[j] = _mm512_load_si512(pg + 64 * j);
        const __m512 S = _mm512_load_ps((const float *)(const void *)(pg + gs * 16));
        const __m512 M = mins ? _mm512_load_ps((const float *)(const void *)(pg + gs * 16 + 64)) : S;
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) {
            const int8_t *xc = xq + c * x_stride + (size_t)g * gs;
            const size_t si = c * s_stride + (size_t)g;
            __m512i acc = mins ? _mm512_setzero_si512() : _mm512_set1_epi32(load_i32(aux + si));
#pragma GCC unroll 8
            for (int j = 0; j < gs / 4; j++) acc = _mm512_dpbusd_epi32(acc, W[j], _mm512_set1_epi32(load_i32(xc + 4 * j)));
            f[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(S, _mm512_set1_ps(dx[si])), f[c]);
            if (mins) f[c] = _mm512_fnmadd_ps(M, _mm512_set1_ps(aux[si]), f[c]);
        }
    }
#pragma GCC unroll 8
    for (int c = 0; c < NC; c++) _mm512_mask_storeu_ps(y + c * ldy, rmask, f[c]);
}

/* All activation rows against one packed chunk [k0, k0 + kc). */
static inline __attribute__((always_inline)) void gemm_chunk(const uint8_t *panel, int kc, const int gs, const bool mins,
                                                           int64_t k, int64_t k0, const spud_gemm_x *x, int nc,
                                                           float *y, size_t ldy, int nr) {
    const int ng = kc / gs;
    const int64_t ng_all = k / gs;
    const __mmask16 rmask = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
    const bool first = k0 == 0;
    for (int c0 = 0; c0 < nc; c0 += GEMM_NC) {
        const int8_t *xq = (const int8_t *)x->x + (size_t)c0 * x->x_stride + k0;
        const float *dx = x->s + (size_t)c0 * x->s_stride + k0 / gs;
        const float *aux = dx + ng_all;
        float *yc = y + (size_t)c0 * ldy;
#define TILE(n) gemm_tile(panel, ng, gs, mins, xq, x->x_stride, dx, aux, x->s_stride, n, yc, ldy, rmask, first)
        switch (nc - c0 < GEMM_NC ? nc - c0 : GEMM_NC) {
        case 8: TILE(8); break;
        case 7: TILE(7); break;
        case 6: TILE(6); break;
        case 5: TILE(5); break;
        case 4: TILE(4); break;
        case 3: TILE(3); break;
        case 2: TILE(2); break;
        default: TILE(1); break;
        }
#undef TILE
    }
}

/* Per type: unpack rows [0, nr) of chunk [k0, k0 + kc) into unsigned values
 * (vals, GEMM_KC bytes per row) and the per-group scales (and mins) into the
 * panel; rows nr..15 get zero values and scales. */
static inline float *panel_scales(uint8_t *panel, int g, int gs, bool mins) {
    return (float *)(void *)(panel + (size_t)g * panel_group_bytes(gs, mins) + gs * 16);
}

static void zero_row(uint8_t *vals, uint8_t *panel, int r, int kc, int gs, bool mins) {
    memset(vals + (size_t)r * GEMM_KC, 0, (size_t)kc);
    for (int g = 0; g < kc / gs; g++) {
        panel_scales(panel, g, gs, mins)[r] = 0.f;
        if (mins) panel_scales(panel, g, gs, mins)[16 + r] = 0.f;
    }
}

static void pack_q4_0(const void *w, size_t rb, int nr, int64_t k0, int kc, uint8_t *vals, uint8_t *panel) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (int r = 0; r < GEMM_ROWS; r++) {
        if (r >= nr) {
            zero_row(vals, panel, r, kc, 32, false);
            continue;
        }
        const block_q4_0 *b = (const block_q4_0 *)(const void *)((const char *)w + (size_t)r * rb) + k0 / QK4_0;
        uint8_t *v = vals + (size_t)r * GEMM_KC;
        for (int g = 0; g < kc / 32; g++) {
            const __m128i raw = LOADU128(b[g].qs);
            _mm_store_si128((__m128i *)(void *)(v + 32 * g), _mm_and_si128(raw, m4));
            _mm_store_si128((__m128i *)(void *)(v + 32 * g + 16), _mm_and_si128(_mm_srli_epi16(raw, 4), m4));
            panel_scales(panel, g, 32, false)[r] = f16s(b[g].d);
        }
    }
}

static void pack_q8_0(const void *w, size_t rb, int nr, int64_t k0, int kc, uint8_t *vals, uint8_t *panel) {
    const __m256i sign = _mm256_set1_epi8((char)0x80);
    for (int r = 0; r < GEMM_ROWS; r++) {
        if (r >= nr) {
            zero_row(vals, panel, r, kc, 32, false);
            continue;
        }
        const block_q8_0 *b = (const block_q8_0 *)(const void *)((const char *)w + (size_t)r * rb) + k0 / QK8_0;
        uint8_t *v = vals + (size_t)r * GEMM_KC;
        for (int g = 0; g < kc / 32; g++) {
            _mm256_store_si256((__m256i *)(void *)(v + 32 * g), _mm256_xor_si256(LOADU256(b[g].qs), sign));
            panel_scales(panel, g, 32, false)[r] = f16s(b[g].d);
        }
    }
}

static void pack_q4_K(const void *w, size_t rb, int nr, int64_t k0, int kc, uint8_t *vals, uint8_t *panel) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int r = 0; r < GEMM_ROWS; r++) {
        if (r >= nr) {
            zero_row(vals, panel, r, kc, 32, true);
            continue;
        }
        const block_q4_K *b = (const block_q4_K *)(const void *)((const char *)w + (size_t)r * rb) + k0 / QK_K;
        uint8_t *v = vals + (size_t)r * GEMM_KC;
        for (int sb = 0; sb < kc / QK_K; sb++) {
            const float d = f16s(b[sb].d), dmin = f16s(b[sb].dmin);
            uint8_t sc[8], mn[8];
            spud_q4_K_unpack_scales_le(b[sb].scales, sc, mn);
            for (int c = 0; c < 4; c++) {
                const __m256i raw = LOADU256(b[sb].qs + 32 * c);
                _mm256_store_si256((__m256i *)(void *)(v + QK_K * sb + 64 * c), _mm256_and_si256(raw, m4));
                _mm256_store_si256((__m256i *)(void *)(v + QK_K * sb + 64 * c + 32),
                                   _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4));
            }
            for (int j = 0; j < 8; j++) {
                float *sm = panel_scales(panel, 8 * sb + j, 32, true);
                sm[r] = d * sc[j];
                sm[16 + r] = dmin * mn[j];
            }
        }
    }
}

static void pack_q6_K(const void *w, size_t rb, int nr, int64_t k0, int kc, uint8_t *vals, uint8_t *panel) {
    for (int r = 0; r < GEMM_ROWS; r++) {
        if (r >= nr) {
            zero_row(vals, panel, r, kc, 16, false);
            continue;
        }
        const block_q6_K *b = (const block_q6_K *)(const void *)((const char *)w + (size_t)r * rb) + k0 / QK_K;
        uint8_t *v = vals + (size_t)r * GEMM_KC;
        for (int sb = 0; sb < kc / QK_K; sb++) {
            for (int h = 0; h < 2; h++) {
                __m512i qa, qb;
                q6_K_half_values_512(b[sb].ql + 64 * h, b[sb].qh + 32 * h, &qa, &qb);
                _mm512_store_si512(v + QK_K * sb + 128 * h, qa);
                _mm512_store_si512(v + QK_K * sb + 128 * h + 64, qb);
            }
            const float d = f16s(b[sb].d);
            for (int j = 0; j < 16; j++) panel_scales(panel, 16 * sb + j, 16, false)[r] = d * b[sb].scales[j];
        }
    }
}

typedef void (*pack_fn)(const void *w, size_t rb, int nr, int64_t k0, int kc, uint8_t *vals, uint8_t *panel);

#define PANEL_BYTES (GEMM_KC / 16 * (16 * 16 + 64)) /* the largest: gs 16 */

/* ---- AMX int8 tiles (Sapphire Rapids and later) ----
 *
 * The same panels, and the same arithmetic, with the integer products done by
 * the tile unit. A panel group's gs/4 zmm of values are, byte for byte, the B
 * tile TDPB* expects (gs/4 rows, each 4 consecutive elements of the 16 weight
 * rows: the "VNNI" layout), so packing is shared. The A tile is 16 activation
 * rows x gs bytes of one group, loaded straight from spud_gemm_x. The values
 * lose their unsigned offset (amx_signed), so TDPBSSD (signed x signed)
 * leaves each group's exact integer sum per (activation row, weight row) in a
 * C tile with no aux term; stored to L1, it gets the AVX-512 micro-tile's
 * epilogue (convert, times dw * dx, summed over groups in float), so the
 * results are bit-identical to spud_gemm_*_avx512. Groups go in pairs on two
 * sets of tiles so that one pair's products run while the other's epilogue
 * does. Activation rows past the last full 16 go through the AVX-512
 * micro-tiles. Tiles: 0 and 4 A, 1 and 5 B, 2 and 3 C. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

static void amx_configure(int gs) {
    _Alignas(64) amx_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 6; t++) {
        const bool a = t == 0 || t == 4, b = t == 1 || t == 5;
        c.colsb[t] = (uint16_t)(a ? gs : 64);
        c.rows[t] = (uint8_t)(b ? gs / 4 : 16);
    }
    _tile_loadconfig(&c);
}

/* f[c] += one group's C tile (at cb) scaled, as gemm_tile does for one group
 * (the tile's sums are already exact: no aux). */
static inline __attribute__((always_inline)) void amx_epilogue(const int32_t *cb, const uint8_t *pg, const int gs,
                                                             const bool mins, const float *dx, const float *aux,
                                                             size_t s_stride, __m512 f[16]) {
    const __m512 S = _mm512_load_ps((const float *)(const void *)(pg + gs * 16));
    const __m512 M = mins ? _mm512_load_ps((const float *)(const void *)(pg + gs * 16 + 64)) : S;
#pragma GCC unroll 16
    for (int c = 0; c < 16; c++) {
        const size_t si = (size_t)c * s_stride;
        const __m512i acc = _mm512_load_si512(cb + 16 * c);
        f[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(S, _mm512_set1_ps(dx[si])), f[c]);
        if (mins) f[c] = _mm512_fnmadd_ps(M, _mm512_set1_ps(aux[si]), f[c]);
    }
}

/* Activation rows [0, nc16) (a multiple of 16) against one packed chunk. */
static inline __attribute__((always_inline)) void amx_chunk(const uint8_t *panel, int kc, const int gs, const bool mins,
                                                          int64_t k, int64_t k0, const spud_gemm_x *x, int nc16,
                                                          float *y, size_t ldy, int nr) {
    const int ng = kc / gs;
    const int64_t ng_all = k / gs;
    const size_t gb = panel_group_bytes(gs, mins);
    const __mmask16 rmask = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
    _Alignas(64) int32_t cb[2][256];
    for (int c0 = 0; c0 < nc16; c0 += 16) {
        const int8_t *xq = (const int8_t *)x->x + (size_t)c0 * x->x_stride + k0;
        const float *dx = x->s + (size_t)c0 * x->s_stride + k0 / gs;
        const float *aux = dx + ng_all;
        float *yc = y + (size_t)c0 * ldy;
        __m512 f[16];
#pragma GCC unroll 16
        for (int c = 0; c < 16; c++) f[c] = k0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rmask, yc + c * ldy);
        int g = 0;
        for (; g + 2 <= ng; g += 2) {
            _tile_zero(2);
            _tile_loadd(0, xq + (size_t)g * gs, (long)x->x_stride);
            _tile_loadd(1, panel + (size_t)g * gb, 64);
            _tile_dpbssd(2, 0, 1);
            _tile_zero(3);
            _tile_loadd(4, xq + (size_t)(g + 1) * gs, (long)x->x_stride);
            _tile_loadd(5, panel + (size_t)(g + 1) * gb, 64);
            _tile_dpbssd(3, 4, 5);
            _tile_stored(2, cb[0], 64);
            amx_epilogue(cb[0], panel + (size_t)g * gb, gs, mins, dx + g, aux + g, x->s_stride, f);
            _tile_stored(3, cb[1], 64);
            amx_epilogue(cb[1], panel + (size_t)(g + 1) * gb, gs, mins, dx + g + 1, aux + g + 1, x->s_stride, f);
        }
        if (g < ng) {
            _tile_zero(2);
            _tile_loadd(0, xq + (size_t)g * gs, (long)x->x_stride);
            _tile_loadd(1, panel + (size_t)g * gb, 64);
            _tile_dpbssd(2, 0, 1);
            _tile_stored(2, cb[0], 64);
            amx_epilogue(cb[0], panel + (size_t)g * gb, gs, mins, dx + g, aux + g, x->s_stride, f);
        }
#pragma GCC unroll 16
        for (int c = 0; c < 16; c++) _mm512_mask_storeu_ps(yc + c * ldy, rmask, f[c]);
    }
}

/* A second copy of the panel's values for TDPBSSD, with the unsigned offset
 * (8, 128, 32; 0 for q4_K, whose values are below 128) taken off: signed
 * weights times signed activations are exact without the aux term. */
static inline void amx_signed(const uint8_t *panel, int kc, int gs, bool mins, int bias, uint8_t *spanel) {
    const size_t gb = panel_group_bytes(gs, mins);
    const __m512i o = _mm512_set1_epi8((char)bias);
    for (int g = 0; g < kc / gs; g++) {
        const uint8_t *p = panel + (size_t)g * gb;
        uint8_t *q = spanel + (size_t)g * gb;
        for (int j = 0; j < gs / 4; j++) _mm512_store_si512(q + 64 * j, _mm512_sub_epi8(_mm512_load_si512(p + 64 * j), o));
        for (size_t e = (size_t)gs * 16; e < gb; e += 64) _mm512_store_si512(q + e, _mm512_load_si512(p + e));
    }
}

/* amx: the tile unit takes activation rows 16 at a time (the caller checked
 * that this CPU has it and that Linux granted the tile state); bias: the
 * unsigned offset of the packed values (amx_signed). */
static inline __attribute__((always_inline)) void gemm_q(pack_fn pack, const int gs, const bool mins, const int bias,
                                                       const bool amx, int64_t k, const void *w, size_t rb, int nr,
                                                       const spud_gemm_x *x, int nc, float *y, size_t ldy) {
    _Alignas(64) uint8_t vals[GEMM_ROWS * GEMM_KC];
    _Alignas(64) uint8_t panel[PANEL_BYTES], spanel[PANEL_BYTES]; /* spanel: AMX only */
    const size_t chunk_bytes = rb / (size_t)(k / GEMM_KC > 0 ? k / GEMM_KC : 1) + 64;
    const int nc16 = amx ? nc & ~15 : 0;
    const spud_gemm_x rest = {.x = (const int8_t *)x->x + (size_t)nc16 * x->x_stride,
                              .x_stride = x->x_stride,
                              .s = x->s + (size_t)nc16 * x->s_stride,
                              .s_stride = x->s_stride};
    if (nc16) amx_configure(gs);
    for (int64_t k0 = 0; k0 < k; k0 += GEMM_KC) {
        const int kc = (int)(k - k0 < GEMM_KC ? k - k0 : GEMM_KC);
        /* the rows' next chunk (and the next panel's first, at the last
         * chunk): 16 strided streams that the hardware prefetcher alone
         * follows too late when there are few activation rows to hide it */
        const char *next = (const char *)w + (size_t)(k0 + GEMM_KC) * rb / (size_t)k;
        if (k0 + GEMM_KC >= k) next = (const char *)w + (size_t)GEMM_ROWS * rb;
        for (int r = 0; r < GEMM_ROWS; r++)
            for (size_t off = 0; off < chunk_bytes; off += 64) _mm_prefetch(next + (size_t)r * rb + off, _MM_HINT_T0);
        pack(w, rb, nr, k0, kc, vals, panel);
        panel_transpose(vals, kc, gs, mins, panel);
        if (nc16) { /* q4_K (bias 0): its values are already signed bytes */
            if (bias) amx_signed(panel, kc, gs, mins, bias, spanel);
            amx_chunk(bias ? spanel : panel, kc, gs, mins, k, k0, x, nc16, y, ldy, nr);
        }
        if (nc > nc16) gemm_chunk(panel, kc, gs, mins, k, k0, &rest, nc - nc16, y + (size_t)nc16 * ldy, ldy, nr);
    }
    if (nc16) _tile_release();
}

void spud_gemm_q4_0_avx512(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                           size_t ldy) {
    gemm_q(pack_q4_0, 32, false, 8, false, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_q4_0_amx(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy) {
    gemm_q(pack_q4_0, 32, false, 8, true, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_q8_0_avx512(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                           size_t ldy) {
    gemm_q(pack_q8_0, 32, false, 128, false, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_q8_0_amx(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy) {
    gemm_q(pack_q8_0, 32, false, 128, true, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_q4_K_avx512(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                           size_t ldy) {
    gemm_q(pack_q4_K, 32, true, 0, false, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_q4_K_amx(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy) {
    gemm_q(pack_q4_K, 32, true, 0, true, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_q6_K_avx512(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                           size_t ldy) {
    gemm_q(pack_q6_K, 16, false, 32, false, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_q6_K_amx(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy) {
    gemm_q(pack_q6_K, 16, false, 32, true, k, w, rb, nr, x, nc, y, ldy);
}

/* ---- small-batch products (decode of a few sequences) ----
 *
 * The gemm contract (spud_gemm_fn, activations from spud_gemm_x_row) for few
 * activation rows: weight rows are read straight from memory in their own
 * layout, one row at a time (no panel repacking), each block unpacked once
 * and multiplied with up to MDOT_NC activation rows whose accumulators stay in
 * registers; more rows are taken MDOT_NC at a time while the weight row is in
 * L1. Decode reads every weight once per step, so a step of a few rows costs
 * about what one row costs as long as the per-row work (one activation load,
 * one vpdpbusd or maddubs + vpdpwssd per 64 weights, and the block scaling)
 * stays below the memory time of the weights.
 *
 * Integer sums per block (q4_0, q8_0) or per super-block (q4_K, q6_K) are
 * exact, with the same unsigned-weight offsets as the gemm (the accumulator
 * starts at aux); scaling and summation are in float, as in the gemm. */
#define MDOT_NC 8

#define MDOT_SWITCH(fn, m, ...)                                                                                        \
    switch (m) {                                                                                                       \
    case 1: fn(__VA_ARGS__, 1); break;                                                                                 \
    case 2: fn(__VA_ARGS__, 2); break;                                                                                 \
    case 3: fn(__VA_ARGS__, 3); break;                                                                                 \
    case 4: fn(__VA_ARGS__, 4); break;                                                                                 \
    case 5: fn(__VA_ARGS__, 5); break;                                                                                 \
    case 6: fn(__VA_ARGS__, 6); break;                                                                                 \
    case 7: fn(__VA_ARGS__, 7); break;                                                                                 \
    default: fn(__VA_ARGS__, 8); break;                                                                                \
    }

/* In-lane 4x4 transpose of dwords: out[m] 128-bit lane i = dword m of lane i
 * of z[0], z[1], z[2], z[3]. */
static inline void transpose_4x4_lanes(const __m512i z[4], __m512i out[4]) {
    const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    out[0] = _mm512_unpacklo_epi64(t0, t2);
    out[1] = _mm512_unpackhi_epi64(t0, t2);
    out[2] = _mm512_unpacklo_epi64(t1, t3);
    out[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* 16 bytes at offset `off` of each of 16 blocks `stride` bytes apart, as z[g]
 * 128-bit lane i = block 4 g + i. */
static inline void load_16x16(const uint8_t *p, size_t stride, __m512i z[4]) {
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) {
        const uint8_t *b = p + (size_t)(4 * g) * stride;
        __m512i v = _mm512_castsi128_si512(LOADU128(b));
        v = _mm512_inserti32x4(v, LOADU128(b + stride), 1);
        v = _mm512_inserti32x4(v, LOADU128(b + 2 * stride), 2);
        z[g] = _mm512_inserti32x4(v, LOADU128(b + 3 * stride), 3);
    }
}

/* q4_0 / q8_0, 16 blocks at a time, one block per 32-bit lane (lane L =
 * block 4 (L mod 4) + L / 4, the layout of spud_mdot_x_row): the weights as 8
 * zmm of unsigned bytes (q4_0 nibbles, q8_0 values + 128), from an in-lane
 * transpose of the blocks' quant bytes. Per activation row and 16 blocks:
 * the aux vector as the accumulator, 8 vpdpbusd, one conversion, one scaling
 * (dw * dx) and one FMA, so the integer sum per block is exact. Blocks past
 * the last full 16 are done one at a time. */
static inline __attribute__((always_inline)) void mdot_q8_row(const bool q4, int64_t nb, const void *w,
                                                              const spud_gemm_x *x, int c0, int64_t b0, int64_t b1,
                                                              const char *pf, float *out, const int nc) {
    const block_q4_0 *a4 = w;
    const block_q8_0 *a8 = w;
    const size_t bs = q4 ? sizeof(block_q4_0) : sizeof(block_q8_0);
    const __m512i lane_block = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    /* one pointer per activation row; its scales and aux at fixed byte
     * offsets from it (fewer registers than three pointers per row) */
    const char *xr[MDOT_NC];
    const size_t off_d = (size_t)((const char *)x->s - (const char *)x->x), off_a = off_d + (size_t)nb * 4;
    __m512 acc[MDOT_NC];
#pragma GCC unroll 8
    for (int c = 0; c < nc; c++) {
        xr[c] = (const char *)x->x + (size_t)(c0 + c) * x->x_stride;
        acc[c] = _mm512_setzero_ps();
    }
    int64_t i = b0;
    for (; i + 16 <= b1; i += 16) {
        __m512 dw;
        __m512i wq[8], z[4];
        for (size_t off = 0; off < 16 * bs; off += 64) _mm_prefetch(pf + (size_t)(i - b0) * bs + off, PREFETCH_HINT);
        if (q4) {
            dw = _mm512_permutexvar_ps(lane_block, _mm512_cvtph_ps(d16_stride18(&a4[i])));
            __m512i v[4];
            load_16x16(a4[i].qs, sizeof(block_q4_0), z);
            transpose_4x4_lanes(z, v);
            const __m512i m4 = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 4
            for (int m = 0; m < 4; m++) {
                wq[m] = _mm512_and_si512(v[m], m4);
                wq[m + 4] = _mm512_and_si512(_mm512_srli_epi16(v[m], 4), m4);
            }
        } else {
            dw = _mm512_permutexvar_ps(lane_block, _mm512_cvtph_ps(d16_stride34(&a8[i])));
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                load_16x16((const uint8_t *)a8[i].qs + 16 * h, sizeof(block_q8_0), z);
                transpose_4x4_lanes(z, &wq[4 * h]);
#pragma GCC unroll 4
                for (int m = 0; m < 4; m++) wq[4 * h + m] = _mm512_xor_si512(wq[4 * h + m], _mm512_set1_epi8(-128));
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < nc; c++) {
            const char *xg = xr[c] + i * 32;
            /* two dependency chains of 4 */
            __m512i d = LOADU512(xr[c] + off_a + (size_t)i * 4), e = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int j = 0; j < 8; j += 2) {
                d = _mm512_dpbusd_epi32(d, wq[j], _mm512_load_si512(xg + 64 * j));
                e = _mm512_dpbusd_epi32(e, wq[j + 1], _mm512_load_si512(xg + 64 * j + 64));
            }
            d = _mm512_add_epi32(d, e);
            const __m512 dx = _mm512_loadu_ps((const float *)(const void *)(xr[c] + off_d + (size_t)i * 4));
            acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx), _mm512_cvtepi32_ps(d), acc[c]);
        }
    }
    float tail[MDOT_NC] = {0};
    for (; i < b1; i++) {
        __m256i q;
        float d;
        if (q4) {
            const __m128i raw = LOADU128(a4[i].qs), m4 = _mm_set1_epi8(0x0F);
            q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
            d = f16s(a4[i].d);
        } else {
            q = _mm256_xor_si256(LOADU256(a8[i].qs), _mm256_set1_epi8(-128));
            d = f16s(a8[i].d);
        }
#pragma GCC unroll 8
        for (int c = 0; c < nc; c++) {
            const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, LOADU256(xr[c] + i * 32));
            float dx;
            int32_t ax;
            memcpy(&dx, xr[c] + off_d + (size_t)i * 4, 4);
            memcpy(&ax, xr[c] + off_a + (size_t)i * 4, 4);
            tail[c] += (d * dx) * (float)(hsum_epi32_256(p) + ax);
        }
    }
#pragma GCC unroll 8
    for (int c = 0; c < nc; c++) out[c] = _mm512_reduce_add_ps(acc[c]) + tail[c];
}

/* Long rows are taken in chunks across all nr weight rows, so that the
 * chunks of the m activation rows of a pass (40 bytes per block each, with
 * their scales) stay in L1 while the weight rows pass (rows up to
 * MDOT_L1_BYTES in all are not split, else chunks of MDOT_L1_CHUNK):
 * 5 activation rows of 8192 elements overflow L1, and the kernel turns
 * L2-bound (single thread, 2048 x 8192 x 16 q4_0: 5 rows 3.65x the one-row
 * vec_dot time unchunked, 1.9x chunked). The weights are then prefetched
 * MDOT_PF_ROWS rows ahead in the same chunk (the next chunk of the first rows
 * at the end), not along the row (8 rows: 1.2x at 1 row, 4 and 6 rows about
 * the same). */
#define MDOT_L1_BYTES 40960
#define MDOT_L1_CHUNK 24576
#define MDOT_PF_ROWS 8


/* vpshufb control: dword l of every 128-bit lane = byte b0 + 2 l of that lane. */
static inline __m512i pick_even(int b0) {
    return _mm512_broadcast_i32x4(_mm_setr_epi8((char)b0, -1, -1, -1, (char)(b0 + 2), -1, -1, -1, (char)(b0 + 4), -1,
                                                -1, -1, (char)(b0 + 6), -1, -1, -1));
}

/* q4_K, 4 super-blocks (1024 elements, 32 groups of 32) at a time, one group
 * per 32-bit lane (the layout of spud_mdot_x_row): the 16 chunks of 32 quant
 * bytes go through one 16x8 dword transpose, lane r = chunk r mod 4 of
 * super-block r / 4, whose low nibbles are group 2 (r mod 4) and high
 * nibbles group 2 (r mod 4) + 1. Per activation row and half (low, high):
 * 8 vpdpbusd (unsigned nibbles, exact sums per group), then the group scales
 * d * sc * dx and the mins dmin * m * aux in float. Super-blocks past the last
 * full 4: per super-block, maddubs + vpdpwssd with the group scales (as the
 * vec_dot), mins in 8 float lanes. */
static inline __attribute__((always_inline)) void mdot_q4_K_row(int64_t nb, const void *w, const spud_gemm_x *x,
                                                                int c0, int64_t b0, int64_t b1, const char *pf,
                                                                float *out, const int nc) {
    const block_q4_K *a = w;
    const int64_t ng = nb * 8;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const char *xr[MDOT_NC];
    const size_t off_d = (size_t)((const char *)x->s - (const char *)x->x), off_a = off_d + (size_t)ng * 4;
    __m512 f[MDOT_NC];
#pragma GCC unroll 8
    for (int c = 0; c < nc; c++) {
        xr[c] = (const char *)x->x + (size_t)(c0 + c) * x->x_stride;
        f[c] = _mm512_setzero_ps();
    }
    int64_t i = b0;
    for (; i + 4 <= b1; i += 4) {
        for (size_t off = 0; off < 4 * sizeof(block_q4_K); off += 64)
            _mm_prefetch(pf + (size_t)(i - b0) * sizeof(block_q4_K) + off, PREFETCH_HINT);
        __m512i z[8], v[8];
#pragma GCC unroll 8
        for (int t = 0; t < 8; t++)
            z[t] = _mm512_inserti64x4(_mm512_castsi256_si512(LOADU256(a[i + t / 4].qs + 32 * (t % 4))),
                                      LOADU256(a[i + 2 + t / 4].qs + 32 * (t % 4)), 1);
        transpose_16x8_z(z, v);
        __m512i sm = _mm512_castsi128_si512(q4_K_scales_vec(a[i].scales));
        sm = _mm512_inserti32x4(sm, q4_K_scales_vec(a[i + 1].scales), 1);
        sm = _mm512_inserti32x4(sm, q4_K_scales_vec(a[i + 2].scales), 2);
        sm = _mm512_inserti32x4(sm, q4_K_scales_vec(a[i + 3].scales), 3);
        const __m512i quarter = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        const __m512 dv = _mm512_permutexvar_ps(
            quarter, _mm512_castps128_ps512(_mm_setr_ps(f16s(a[i].d), f16s(a[i + 1].d), f16s(a[i + 2].d), f16s(a[i + 3].d))));
        const __m512 mv = _mm512_permutexvar_ps(
            quarter, _mm512_castps128_ps512(
                         _mm_setr_ps(f16s(a[i].dmin), f16s(a[i + 1].dmin), f16s(a[i + 2].dmin), f16s(a[i + 3].dmin))));
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m512 S = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_shuffle_epi8(sm, pick_even(h))), dv);
            const __m512 M = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_shuffle_epi8(sm, pick_even(8 + h))), mv);
            __m512i W[8];
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) W[j] = _mm512_and_si512(h ? _mm512_srli_epi16(v[j], 4) : v[j], m4);
#pragma GCC unroll 8
            for (int c = 0; c < nc; c++) {
                const char *xg = xr[c] + i * QK_K + 512 * h;
                __m512i d = _mm512_setzero_si512(), e = _mm512_setzero_si512();
#pragma GCC unroll 8
                for (int j = 0; j < 8; j += 2) {
                    d = _mm512_dpbusd_epi32(d, W[j], _mm512_load_si512(xg + 64 * j));
                    e = _mm512_dpbusd_epi32(e, W[j + 1], _mm512_load_si512(xg + 64 * j + 64));
                }
                const size_t o = ((size_t)i * 8 + 16 * (size_t)h) * 4;
                const __m512 dx = _mm512_loadu_ps((const float *)(const void *)(xr[c] + off_d + o));
                const __m512 ax = _mm512_loadu_ps((const float *)(const void *)(xr[c] + off_a + o));
                f[c] = _mm512_fmadd_ps(_mm512_mul_ps(S, dx), _mm512_cvtepi32_ps(_mm512_add_epi32(d, e)), f[c]);
                f[c] = _mm512_fnmadd_ps(M, ax, f[c]);
            }
        }
    }
    float tail[MDOT_NC] = {0};
    if (i < b1) {
        const __m512i nibble_shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
        __m512 accd[MDOT_NC];
        __m256 accm[MDOT_NC];
#pragma GCC unroll 8
        for (int c = 0; c < nc; c++) {
            accd[c] = _mm512_setzero_ps();
            accm[c] = _mm256_setzero_ps();
        }
        for (; i < b1; i++) {
            const __m128i scm = q4_K_scales_vec(a[i].scales);
            const __m512i scb = _mm512_broadcast_i32x4(scm);
            __m512i q[4], sj[4];
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                q[j] = _mm512_and_si512(
                    _mm512_srlv_epi64(_mm512_broadcast_i64x4(LOADU256(a[i].qs + 32 * j)), nibble_shift), m4);
                sj[j] = _mm512_shuffle_epi8(scb, scale_pick(2 * j, 2 * j + 1));
            }
            const __m256 mins = _mm256_mul_ps(_mm256_set1_ps(f16s(a[i].dmin)),
                                              _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(scm, 8))));
            const float d = f16s(a[i].d);
#pragma GCC unroll 8
            for (int c = 0; c < nc; c++) {
                __m512i ai = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++)
                    ai = _mm512_dpwssd_epi32(ai, _mm512_maddubs_epi16(q[j], LOADU512(xr[c] + i * QK_K + 64 * j)), sj[j]);
                float dx;
                memcpy(&dx, xr[c] + off_d + (size_t)i * 32, 4);
                accd[c] = _mm512_fmadd_ps(_mm512_set1_ps(d * dx), _mm512_cvtepi32_ps(ai), accd[c]);
                accm[c] = _mm256_fmadd_ps(mins, _mm256_loadu_ps((const float *)(const void *)(xr[c] + off_a + (size_t)i * 32)),
                                          accm[c]);
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < nc; c++)
            tail[c] = _mm512_reduce_add_ps(accd[c]) - _mm512_reduce_add_ps(_mm512_zextps256_ps512(accm[c]));
    }
#pragma GCC unroll 8
    for (int c = 0; c < nc; c++) out[c] = _mm512_reduce_add_ps(f[c]) + tail[c];
}


/* q6_K: the 6-bit values unsigned (0..63); per super-block and activation
 * row the int32 lanes start at sc[g] * aux[g] (aux = -32 Σ x over the group
 * of 16), then maddubs + vpdpwssd with the group scales; exact per
 * super-block, scaled by d * dx in float. */
static inline __attribute__((always_inline)) void mdot_q6_K_row(int64_t nb, const void *w, const spud_gemm_x *x,
                                                                int c0, int64_t b0, int64_t b1, const char *pf,
                                                                float *out, const int nc) {
    const block_q6_K *a = w;
    const int64_t ng = nb * 16;
    const int8_t *xq[MDOT_NC];
    const float *xd[MDOT_NC];
    const int32_t *xa[MDOT_NC];
    __m512 acc[MDOT_NC];
#pragma GCC unroll 8
    for (int c = 0; c < nc; c++) {
        xq[c] = (const int8_t *)x->x + (size_t)(c0 + c) * x->x_stride;
        xd[c] = x->s + (size_t)(c0 + c) * x->s_stride;
        xa[c] = (const int32_t *)(const void *)(xd[c] + ng);
        acc[c] = _mm512_setzero_ps();
    }
    for (int64_t i = b0; i < b1; i++) {
        for (size_t off = 0; off < sizeof(block_q6_K); off += 64)
            _mm_prefetch(pf + (size_t)(i - b0) * sizeof(block_q6_K) + off, PREFETCH_HINT);
        const __m128i sc8 = LOADU128(a[i].scales);
        const __m512i sc512 = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(sc8)); /* vpermw reads lanes 0-15 */
        const __m512i sc32 = _mm512_cvtepi8_epi32(sc8);
        __m512i q[4], s[4];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) q6_K_half_values_512(a[i].ql + 64 * h, a[i].qh + 32 * h, &q[2 * h], &q[2 * h + 1]);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) s[j] = _mm512_permutexvar_epi16(group_index(4 * j), sc512);
        const float d = f16s(a[i].d);
#pragma GCC unroll 8
        for (int c = 0; c < nc; c++) {
            __m512i ai = _mm512_mullo_epi32(LOADU512(xa[c] + i * 16), sc32);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                ai = _mm512_dpwssd_epi32(ai, _mm512_maddubs_epi16(q[j], LOADU512(xq[c] + i * QK_K + 64 * j)), s[j]);
            acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(d * xd[c][i * 16]), _mm512_cvtepi32_ps(ai), acc[c]);
        }
    }
#pragma GCC unroll 8
    for (int c = 0; c < nc; c++) out[c] = _mm512_reduce_add_ps(acc[c]);
}

enum { MDOT_Q4_0, MDOT_Q8_0, MDOT_Q4_K, MDOT_Q6_K };

/* The weight rows (nr) and activation rows (nc, in passes of up to MDOT_NC)
 * of one call, long rows in chunks of whole units (16 blocks for q4_0/q8_0, 4
 * super-blocks for q4_K, 1 for q6_K), as above. */
static inline __attribute__((always_inline)) void mdot_drive(const int kind, int64_t k, const void *w, size_t rb,
                                                             int nr, const spud_gemm_x *x, int nc, float *y,
                                                             size_t ldy) {
    static const size_t block_bytes[] = {sizeof(block_q4_0), sizeof(block_q8_0), sizeof(block_q4_K),
                                         sizeof(block_q6_K)};
    static const int64_t x_bytes[] = {40, 40, 320, 384}, unit[] = {16, 16, 4, 1}; /* per block */
    const int64_t nb = k / (kind <= MDOT_Q8_0 ? 32 : QK_K);
    const size_t bs = block_bytes[kind];
    for (int c0 = 0; c0 < nc; c0 += MDOT_NC) {
        const int m = nc - c0 < MDOT_NC ? nc - c0 : MDOT_NC;
        int64_t kcb = nb;
        if (nb * x_bytes[kind] * m > MDOT_L1_BYTES) {
            kcb = MDOT_L1_CHUNK / (x_bytes[kind] * m) / unit[kind] * unit[kind];
            if (kcb < unit[kind]) kcb = unit[kind];
        }
        for (int64_t b0 = 0; b0 < nb; b0 += kcb) {
            const int64_t b1 = b0 + kcb < nb ? b0 + kcb : nb;
            for (int r = 0; r < nr; r++) {
                const char *row = (const char *)w + (size_t)r * rb;
                const char *pf = row + (size_t)b0 * bs + PREFETCH_AHEAD;
                if (kcb < nb) pf = r + MDOT_PF_ROWS < nr ? row + MDOT_PF_ROWS * rb + (size_t)b0 * bs
                                                         : (const char *)w + (size_t)(r + MDOT_PF_ROWS - nr) * rb +
                                                               (size_t)b1 * bs;
                float part[MDOT_NC];
                switch (kind) {
                case MDOT_Q4_0: MDOT_SWITCH(mdot_q8_row, m, true, nb, row, x, c0, b0, b1, pf, part) break;
                case MDOT_Q8_0: MDOT_SWITCH(mdot_q8_row, m, false, nb, row, x, c0, b0, b1, pf, part) break;
                case MDOT_Q4_K: MDOT_SWITCH(mdot_q4_K_row, m, nb, row, x, c0, b0, b1, pf, part) break;
                default: MDOT_SWITCH(mdot_q6_K_row, m, nb, row, x, c0, b0, b1, pf, part) break;
                }
                for (int c = 0; c < m; c++) {
                    float *yc = &y[(size_t)(c0 + c) * ldy + (size_t)r];
                    *yc = b0 ? *yc + part[c] : part[c];
                }
            }
        }
    }
}

void spud_mdot_q4_0_avx512(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                           size_t ldy) {
    mdot_drive(MDOT_Q4_0, k, w, rb, nr, x, nc, y, ldy);
}

void spud_mdot_q8_0_avx512(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                           size_t ldy) {
    mdot_drive(MDOT_Q8_0, k, w, rb, nr, x, nc, y, ldy);
}

void spud_mdot_q4_K_avx512(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                           size_t ldy) {
    mdot_drive(MDOT_Q4_K, k, w, rb, nr, x, nc, y, ldy);
}

void spud_mdot_q6_K_avx512(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                           size_t ldy) {
    mdot_drive(MDOT_Q6_K, k, w, rb, nr, x, nc, y, ldy);
}


/* ---- matrix-matrix products of float weights (f32, f16, bf16) ----
 *
 * No block scales, so no repacking: a micro-tile of 4 weight rows x 6
 * activation rows keeps 24 zmm of partial sums over the whole row (4 weight
 * loads, converted to f32, and 6 activation loads feed 24 FMAs per 16
 * elements) and reduces each once at the end. The 16 rows of a call (64 KB
 * of f16 weights for k = 2048) stay in L2 while the activation tiles pass. */

#define FGEMM_R 4
#define FGEMM_C 6

static inline __m512 load_w16(const void *row, int64_t i, __mmask16 m, spud_type t) {
    switch (t) {
    case SPUD_TYPE_F16: return f16x16_to_ps((const spud_f16 *)row + i, m);
    case SPUD_TYPE_BF16: return bf16x16_to_ps((const spud_bf16 *)row + i, m);
    default: return _mm512_maskz_loadu_ps(m, (const float *)row + i);
    }
}

static inline __attribute__((always_inline)) void fgemm_tile(const spud_type t, int64_t k, const char *w, size_t rb,
                                                           const int R, const float *x, size_t xs, const int C,
                                                           float *y, size_t ldy) {
    __m512 acc[FGEMM_R][FGEMM_C];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 6
        for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 16) {
        const __mmask16 m = tail_mask16(k - i);
        __m512 wv[FGEMM_R];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = load_w16(w + (size_t)r * rb, i, m, t);
#pragma GCC unroll 6
        for (int c = 0; c < C; c++) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, x + (size_t)c * xs + i);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(wv[r], xv, acc[r][c]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 6
        for (int c = 0; c < C; c++) y[(size_t)c * ldy + r] = _mm512_reduce_add_ps(acc[r][c]);
}

static inline __attribute__((always_inline)) void fgemm(const spud_type t, int64_t k, const void *w, size_t rb, int nr,
                                                      const spud_gemm_x *x, int nc, float *y, size_t ldy) {
    const size_t xs = x->x_stride / sizeof(float);
    for (int c0 = 0; c0 < nc; c0 += FGEMM_C) {
        const int cn = nc - c0 < FGEMM_C ? nc - c0 : FGEMM_C;
        const float *xc = (const float *)x->x + (size_t)c0 * xs;
        for (int r0 = 0; r0 < nr; r0 += FGEMM_R) {
            const int rn = nr - r0 < FGEMM_R ? nr - r0 : FGEMM_R;
            const char *wr = (const char *)w + (size_t)r0 * rb;
            float *yc = y + (size_t)c0 * ldy + r0;
            if (rn == FGEMM_R && cn == FGEMM_C) {
                fgemm_tile(t, k, wr, rb, FGEMM_R, xc, xs, FGEMM_C, yc, ldy);
            } else { /* edges: one row at a time, up to 6 columns */
                for (int r = 0; r < rn; r++) {
                    switch (cn) {
                    case 6: fgemm_tile(t, k, wr + (size_t)r * rb, rb, 1, xc, xs, 6, yc + r, ldy); break;
                    case 5: fgemm_tile(t, k, wr + (size_t)r * rb, rb, 1, xc, xs, 5, yc + r, ldy); break;
                    case 4: fgemm_tile(t, k, wr + (size_t)r * rb, rb, 1, xc, xs, 4, yc + r, ldy); break;
                    case 3: fgemm_tile(t, k, wr + (size_t)r * rb, rb, 1, xc, xs, 3, yc + r, ldy); break;
                    case 2: fgemm_tile(t, k, wr + (size_t)r * rb, rb, 1, xc, xs, 2, yc + r, ldy); break;
                    default: fgemm_tile(t, k, wr + (size_t)r * rb, rb, 1, xc, xs, 1, yc + r, ldy); break;
                    }
                }
            }
        }
    }
}

void spud_gemm_f32_avx512(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                          size_t ldy) {
    fgemm(SPUD_TYPE_F32, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_f16_avx512(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                          size_t ldy) {
    fgemm(SPUD_TYPE_F16, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_bf16_avx512(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                           size_t ldy) {
    fgemm(SPUD_TYPE_BF16, k, w, rb, nr, x, nc, y, ldy);
}

/* ---- AMX bf16 tiles: BF16 weights ----
 *
 * TDPBF16PS multiplies bf16 values exactly and sums in f32. With the
 * activations split into three bf16 parts (hi + mid + lo = x exactly,
 * spud_gemm_x_bf16_split), three tile products per step of 32 elements give
 * the f32 products of the BF16 weights. The tile adds all 3k products to one
 * sum in sequence (and reads subnormal parts as zero), so the bound is looser
 * than the AVX-512 kernel's: 3k roundings of half an ulp (tests/test_kernels.c). B
 * tiles: 16 element pairs x 16 weight rows (the pair layout TDPBF16PS wants),
 * packed per chunk of AMXB_KC elements; A tiles: 16 activation rows x 32 bf16
 * straight from the split arrays; C tiles: 16 x 16 f32 per block of
 * activation rows, kept in L1 between chunks. Activation rows past the last
 * full 16 go through fgemm. Tiles: 0 C, 1 B, 2-4 A (hi, mid, lo). */
#define AMXB_KC 512
#define AMXB_GROUP 256 /* activation rows per pass: their C tiles take 16 KB */

static void amxb_configure(void) {
    _Alignas(64) amx_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 5; t++) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    _tile_loadconfig(&c);
}

/* bp[p * 16 + n] = elements 2p, 2p + 1 of weight row n (zero past nr rows
 * and past kc), for the ceil(kc / 32) * 16 pairs of the chunk. */
static void amxb_pack(const void *w, size_t rb, int nr, int64_t k0, int kc, uint32_t *bp) {
    const int np = (kc + 31) / 32 * 16;
    for (int n = 0; n < 16; n++) {
        const spud_bf16 *row = (const spud_bf16 *)(const void *)((const char *)w + (size_t)n * rb) + k0;
        for (int p = 0; p < np; p++) {
            uint32_t v = 0;
            if (n < nr) {
                const uint32_t a = 2 * p < kc ? row[2 * p] : 0, b = 2 * p + 1 < kc ? row[2 * p + 1] : 0;
                v = a | b << 16;
            }
            bp[(size_t)p * 16 + (size_t)n] = v;
        }
    }
}

void spud_gemm_bf16_amx(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy) {
    const int nc16 = nc & ~15;
    if (nc16) {
        _Alignas(64) uint32_t bp[AMXB_KC / 2 * 16];
        _Alignas(64) float acc[AMXB_GROUP / 16][256];
        const size_t part = ((size_t)k * 2 + 63) & ~(size_t)63;
        const char *split = (const char *)x->x + (((size_t)k * sizeof(float) + 63) & ~(size_t)63);
        const long xs = (long)x->x_stride;
        const __mmask16 rmask = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
        amxb_configure();
        for (int g0 = 0; g0 < nc16; g0 += AMXB_GROUP) {
            const int gn = nc16 - g0 < AMXB_GROUP ? nc16 - g0 : AMXB_GROUP;
            for (int64_t k0 = 0; k0 < k; k0 += AMXB_KC) {
                const int kc = (int)(k - k0 < AMXB_KC ? k - k0 : AMXB_KC);
                amxb_pack(w, rb, nr, k0, kc, bp);
                for (int b = 0; b < gn / 16; b++) {
                    const char *a = split + (size_t)(g0 + 16 * b) * x->x_stride + (size_t)k0 * 2;
                    if (k0 == 0)
                        _tile_zero(0);
                    else
                        _tile_loadd(0, acc[b], 64);
                    for (int t = 0; t < (kc + 31) / 32; t++) {
                        _tile_loadd(1, bp + (size_t)t * 256, 64);
                        _tile_loadd(2, a + 64 * t, xs);
                        _tile_loadd(3, a + part + 64 * t, xs);
                        _tile_loadd(4, a + 2 * part + 64 * t, xs);
                        _tile_dpbf16ps(0, 2, 1);
                        _tile_dpbf16ps(0, 3, 1);
                        _tile_dpbf16ps(0, 4, 1);
                    }
                    _tile_stored(0, acc[b], 64);
                }
            }
            for (int c = 0; c < gn; c++)
                _mm512_mask_storeu_ps(y + (size_t)(g0 + c) * ldy, rmask, _mm512_load_ps(acc[c / 16] + 16 * (c % 16)));
        }
        _tile_release();
    }
    if (nc > nc16) {
        const spud_gemm_x rest = {.x = (const char *)x->x + (size_t)nc16 * x->x_stride, .x_stride = x->x_stride};
        fgemm(SPUD_TYPE_BF16, k, w, rb, nr, &rest, nc - nc16, y + (size_t)nc16 * ldy, ldy);
    }
}

/* ---- attention (online softmax over tiles of 64 positions) ----
 *
 * Queries go four at a time: for a tile, the scores of 4 queries x 64
 * positions are 16 zmm (one K load of 16 positions feeds 4 FMAs), masked,
 * turned into probabilities in registers, then the output rows of the 4
 * queries are rescaled and accumulated from the tile's V rows (one V load
 * feeds 4 FMAs). The tile's K and V stay in L1 while the next group of 4
 * queries uses them. */

/* e^x: round(x / ln 2) and a degree-6 Taylor polynomial of the remainder
 * (|r| <= ln2 / 2, relative error about 2^-23), scaled by vscalefps (which
 * overflows to +inf above 88.72); exactly 0 below -87 (and for -inf and
 * NaN), so masked positions weigh nothing. */
static inline __m512 exp_512(__m512 x) {
    const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
    __m512 p = _mm512_set1_ps(1.f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    return _mm512_maskz_scalef_ps(live, p, n);
}

/* Tiles ahead that the kernel prefetches (prefetches never fault; past the
 * cache region they fetch nothing useful and are harmless). */
#ifndef ATTN_PREFETCH
#define ATTN_PREFETCH 2
#endif

/* g = silu(g) * u = g / (1 + e^-g) * u */
void spud_swiglu_f32_avx512(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask16(n - i);
        const __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 e = exp_512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        const __m512 r = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), e));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(r, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

/* Cache element kinds: 0 f32, 1 f16, 2 q8_0. */
enum { KV_F32, KV_F16, KV_Q8 };

static inline __m512 load_kv16(const void *base, size_t i, const int kind) {
    if (kind == KV_F16) return _mm512_cvtph_ps(LOADU256((const spud_f16 *)base + i));
    return _mm512_loadu_ps((const float *)base + i);
}

/* Bytes per position of K (and of V). */
static inline size_t kv_pos_bytes(const int kind, int hd) {
    return kind == KV_Q8 ? (size_t)hd + 4 : (size_t)hd * (kind == KV_F16 ? 2 : 4);
}

/* PV for 4 queries over NV zmm of dimensions starting at dim d0 (q8_0: the
 * probabilities already carry the rows' scales). */
static inline __attribute__((always_inline)) void attn_pv(const void *v, int hd, int d0, const int NV, const int kind,
                                                        int t0, int tn, const float *P, float *O,
                                                        const float corr[4]) {
    __m512 o[4][4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
#pragma GCC unroll 4
        for (int u = 0; u < NV; u++)
            o[j][u] = _mm512_mul_ps(_mm512_load_ps(O + (size_t)j * hd + d0 + 16 * u), _mm512_set1_ps(corr[j]));
    const size_t row = kv_pos_bytes(kind, hd);
    for (int t = 0; t < tn; t++) {
        __m512 vv[4];
        const char *vr = (const char *)v + (size_t)(t0 + t) * row;
#pragma GCC unroll 4
        for (int u = 0; u < NV; u++) {
            if (kind == KV_Q8)
                vv[u] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(LOADU128(vr + d0 + 16 * u)));
            else
                vv[u] = load_kv16(vr, (size_t)d0 + 16 * u, kind);
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m512 pb = _mm512_set1_ps(P[j * SPUD_ATTN_SPAN + t]);
#pragma GCC unroll 4
            for (int u = 0; u < NV; u++) o[j][u] = _mm512_fmadd_ps(pb, vv[u], o[j][u]);
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
#pragma GCC unroll 4
        for (int u = 0; u < NV; u++) _mm512_store_ps(O + (size_t)j * hd + d0 + 16 * u, o[j][u]);
}

/* Scores of 4 queries x 64 positions (4 K tiles) from a float cache. */
static inline __attribute__((always_inline)) void attn_qk_float(const char *kt, int hd, const int kind,
                                                              const float *const *qg, const char *pk, const char *pv,
                                                              bool prefetch, __m512 s[4][4]) {
    const size_t es = kind == KV_F16 ? 2 : 4; /* a tile of K or V is hd * es lines */
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) s[j][b] = _mm512_setzero_ps();
    for (int i = 0; i < hd; i++) {
        if (prefetch)
            for (int e = 0; e < (int)es; e++) {
                _mm_prefetch(pk + (size_t)i * es * 64 + 64 * e, _MM_HINT_T0);
                _mm_prefetch(pv + (size_t)i * es * 64 + 64 * e, _MM_HINT_T0);
            }
        __m512 kc[4];
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) kc[b] = load_kv16(kt, (size_t)b * SPUD_KV_TILE * hd + (size_t)i * SPUD_KV_TILE, kind);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m512 qb = _mm512_set1_ps(qg[j][i]);
#pragma GCC unroll 4
            for (int b = 0; b < 4; b++) s[j][b] = _mm512_fmadd_ps(qb, kc[b], s[j][b]);
        }
    }
}

/* Scores from a q8_0 cache: int8 queries (scale dq, offset term off = -128 Σq)
 * against K + 128 through vpdpbusd, 4 dimensions of 16 positions per load;
 * then times dq and each position's K scale. */
static inline __attribute__((always_inline)) void attn_qk_q8(const char *kt, int hd, const int8_t *const *qg,
                                                           const float *dq, const int32_t *off, const char *pk,
                                                           const char *pv, bool prefetch, __m512 s[4][4]) {
    const size_t tile = ((size_t)hd + 4) * SPUD_KV_TILE;
    __m512i acc[4][4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) acc[j][b] = _mm512_set1_epi32(off[j]);
    for (int i4 = 0; i4 < hd / 4; i4++) {
        if (prefetch) { /* 4 tiles of hd + 4 bytes per position: about 4 lines of K and V per step */
            for (int e = 0; e < 4; e++) {
                _mm_prefetch(pk + (size_t)i4 * 272 + 64 * e, _MM_HINT_T0);
                _mm_prefetch(pv + (size_t)i4 * 272 + 64 * e, _MM_HINT_T0);
            }
        }
        __m512i kb[4];
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) kb[b] = LOADU512(kt + (size_t)b * tile + (size_t)i4 * 64);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m512i qb = _mm512_set1_epi32(load_i32(qg[j] + 4 * i4));
#pragma GCC unroll 4
            for (int b = 0; b < 4; b++) acc[j][b] = _mm512_dpbusd_epi32(acc[j][b], kb[b], qb);
        }
    }
    if (prefetch) /* the remaining lines of the 4 tiles (272 = 4 * 68 bytes per step) */
        for (size_t e = (size_t)hd / 4 * 272; e < 4 * tile; e += 64) {
            _mm_prefetch(pk + e, _MM_HINT_T0);
            _mm_prefetch(pv + e, _MM_HINT_T0);
        }
#pragma GCC unroll 4
    for (int b = 0; b < 4; b++) {
        const __m512 dk = _mm512_loadu_ps((const float *)(const void *)(kt + (size_t)b * tile + (size_t)hd * SPUD_KV_TILE));
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            s[j][b] = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[j][b]), _mm512_mul_ps(dk, _mm512_set1_ps(dq[j])));
    }
}

static inline __attribute__((always_inline)) void attn_impl(const int kind, int hd, int nq, const float *q,
                                                          const int32_t *last, const void *k, const void *v,
                                                          float *out, float *work) {
    float *O = work;                                /* SPUD_ATTN_MAX_Q x hd */
    float *P = work + (size_t)SPUD_ATTN_MAX_Q * hd; /* 4 x SPUD_ATTN_SPAN, per group */
    int8_t *qi8 = (int8_t *)(P + 4 * SPUD_ATTN_SPAN); /* q8_0: SPUD_ATTN_MAX_Q x hd int8 queries */
    float m[SPUD_ATTN_MAX_Q], l[SPUD_ATTN_MAX_Q], dq[SPUD_ATTN_MAX_Q];
    int32_t lim[SPUD_ATTN_MAX_Q], off[SPUD_ATTN_MAX_Q];
    const float *qp[SPUD_ATTN_MAX_Q];
    const int8_t *qq[SPUD_ATTN_MAX_Q];
    const int ng = (nq + 3) / 4;
    int32_t n_kv = 0;
    for (int j = 0; j < 4 * ng; j++) {
        const int jj = j < nq ? j : nq - 1; /* padding queries repeat the last one */
        qp[j] = q + (size_t)jj * hd;
        lim[j] = last[jj];
        if (lim[j] + 1 > n_kv) n_kv = lim[j] + 1;
        m[j] = -INFINITY;
        l[j] = 0.f;
        memset(O + (size_t)j * hd, 0, (size_t)hd * sizeof(float));
        if (kind == KV_Q8) {
            int8_t *qj = qi8 + (size_t)j * hd;
            dq[j] = spud_kv_q8_quantize(qp[j], hd, qj);
            int32_t sum = 0;
            for (int i = 0; i < hd; i++) sum += qj[i];
            off[j] = -128 * sum;
            qq[j] = qj;
        }
    }
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const size_t row = kv_pos_bytes(kind, hd);
    for (int t0 = 0; t0 < n_kv; t0 += SPUD_ATTN_SPAN) {
        const int tn = n_kv - t0 < SPUD_ATTN_SPAN ? n_kv - t0 : SPUD_ATTN_SPAN;
        const char *kt = (const char *)k + (size_t)t0 * row;
        /* stream ATTN_PREFETCH tiles ahead, while the first group computes */
        const char *pk = kt + (size_t)ATTN_PREFETCH * SPUD_ATTN_SPAN * row;
        const char *pv = (const char *)v + ((size_t)t0 + ATTN_PREFETCH * SPUD_ATTN_SPAN) * row;
        float dv[SPUD_ATTN_SPAN];
        if (kind == KV_Q8)
            for (int t = 0; t < SPUD_ATTN_SPAN; t++) {
                dv[t] = 0.f;
                if (t < tn) memcpy(&dv[t], (const char *)v + (size_t)(t0 + t) * row + hd, 4);
            }
        for (int gi = 0; gi < ng; gi++) {
            /* scores: s[j][b] = 16 positions t0 + 16b .. of query j */
            __m512 s[4][4];
            if (kind == KV_Q8)
                attn_qk_q8(kt, hd, qq + 4 * gi, dq + 4 * gi, off + 4 * gi, pk, pv, gi == 0, s);
            else
                attn_qk_float(kt, hd, kind, qp + 4 * gi, pk, pv, gi == 0, s);
            float corr[4];
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                const int jq = 4 * gi + j;
                /* positions past last[j] (and past the tile) get -inf */
                const __m512 limit = _mm512_set1_ps((float)(lim[jq] - t0));
                __m512 mx = _mm512_set1_ps(-INFINITY);
#pragma GCC unroll 4
                for (int b = 0; b < 4; b++) {
                    const __mmask16 ok = _mm512_cmp_ps_mask(_mm512_add_ps(iota, _mm512_set1_ps(16.f * b)), limit, _CMP_LE_OQ);
                    s[j][b] = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), ok, s[j][b]);
                    mx = _mm512_max_ps(mx, s[j][b]);
                }
                const float mt = _mm512_reduce_max_ps(mx);
                const float mnew = mt > m[jq] ? mt : m[jq];
                /* e^(m_old - m_new): 0 on the first tile (m_old = -inf), 1 if the max did not move */
                corr[j] = _mm512_cvtss_f32(exp_512(_mm512_set1_ps(m[jq] - mnew)));
                const __m512 vm = _mm512_set1_ps(mnew);
                __m512 sum = _mm512_setzero_ps();
#pragma GCC unroll 4
                for (int b = 0; b < 4; b++) {
                    __m512 p = exp_512(_mm512_sub_ps(s[j][b], vm));
                    sum = _mm512_add_ps(sum, p);
                    if (kind == KV_Q8) p = _mm512_mul_ps(p, _mm512_loadu_ps(dv + 16 * b)); /* V's row scales */
                    _mm512_store_ps(P + j * SPUD_ATTN_SPAN + 16 * b, p);
                }
                l[jq] = l[jq] * corr[j] + _mm512_reduce_add_ps(sum);
                m[jq] = mnew;
            }
            float *Og = O + (size_t)4 * gi * hd;
            int d0 = 0;
            for (; d0 + 64 <= hd; d0 += 64) attn_pv(v, hd, d0, 4, kind, t0, tn, P, Og, corr);
            switch ((hd - d0) / 16) {
            case 3: attn_pv(v, hd, d0, 3, kind, t0, tn, P, Og, corr); break;
            case 2: attn_pv(v, hd, d0, 2, kind, t0, tn, P, Og, corr); break;
            case 1: attn_pv(v, hd, d0, 1, kind, t0, tn, P, Og, corr); break;
            default: break;
            }
        }
    }
    for (int j = 0; j < nq; j++) {
        const __m512 inv = _mm512_set1_ps(1.f / l[j]);
        for (int i = 0; i < hd; i += 16)
            _mm512_storeu_ps(out + (size_t)j * hd + i, _mm512_mul_ps(_mm512_load_ps(O + (size_t)j * hd + i), inv));
    }
}

void spud_attn_avx512(int hd, int nq, const float *q, const int32_t *last, spud_type kv_type, const void *k,
                      const void *v, float *out, float *work) {
    if (hd % 16 || nq < 1 || nq > SPUD_ATTN_MAX_Q ||
        (kv_type != SPUD_TYPE_F16 && kv_type != SPUD_TYPE_F32 && kv_type != SPUD_TYPE_Q8_0)) {
        spud_attn_ref(hd, nq, q, last, kv_type, k, v, out, work);
        return;
    }
    if (kv_type == SPUD_TYPE_F16)
        attn_impl(KV_F16, hd, nq, q, last, k, v, out, work);
    else if (kv_type == SPUD_TYPE_Q8_0)
        attn_impl(KV_Q8, hd, nq, q, last, k, v, out, work);
    else
        attn_impl(KV_F32, hd, nq, q, last, k, v, out, work);
}

/* The AVX-512 set and the AMX set differ only in the gemm kernels of Q4_0, Q8_0, Q4_K, Q6_K and BF16. */
#define AVX512_SET(NAME, GEMM, SPLIT)                                                                                  \
    {                                                                                                                  \
    .name = NAME,                                                                                                      \
    .vec_dot = {                                                                                                       \
        [SPUD_TYPE_F32] = spud_vec_dot_f32_avx512,                                                                     \
        [SPUD_TYPE_F16] = spud_vec_dot_f16_avx512,                                                                     \
        [SPUD_TYPE_BF16] = spud_vec_dot_bf16_avx512,                                                                   \
        [SPUD_TYPE_Q4_0] = spud_vec_dot_q4_0_q8_0_avx512,                                                              \
        [SPUD_TYPE_Q8_0] = spud_vec_dot_q8_0_q8_0_avx512,                                                              \
        [SPUD_TYPE_Q4_K] = spud_vec_dot_q4_K_q8_K_avx512,                                                              \
        [SPUD_TYPE_Q6_K] = spud_vec_dot_q6_K_q8_K_avx512,                                                              \
    },                                                                                                                 \
    .to_float = {                                                                                                      \
        [SPUD_TYPE_F16] = spud_dequant_f16_avx512,                                                                     \
        [SPUD_TYPE_BF16] = spud_dequant_bf16_avx512,                                                                   \
        [SPUD_TYPE_Q4_0] = spud_dequant_q4_0_avx512,                                                                   \
        [SPUD_TYPE_Q8_0] = spud_dequant_q8_0_avx512,                                                                   \
        [SPUD_TYPE_Q4_K] = spud_dequant_q4_K_avx512,                                                                   \
        [SPUD_TYPE_Q6_K] = spud_dequant_q6_K_avx512,                                                                   \
    },                                                                                                                 \
    .from_float = {                                                                                                    \
        [SPUD_TYPE_Q8_0] = spud_quant_q8_0_avx512,                                                                     \
        [SPUD_TYPE_Q8_K] = spud_quant_q8_K_avx512,                                                                     \
    },                                                                                                                 \
    .gemm = {                                                                                                          \
        [SPUD_TYPE_Q4_0] = spud_gemm_q4_0_##GEMM,                                                                      \
        [SPUD_TYPE_Q8_0] = spud_gemm_q8_0_##GEMM,                                                                      \
        [SPUD_TYPE_Q4_K] = spud_gemm_q4_K_##GEMM,                                                                      \
        [SPUD_TYPE_Q6_K] = spud_gemm_q6_K_##GEMM,                                                                      \
        [SPUD_TYPE_F32] = spud_gemm_f32_avx512,                                                                        \
        [SPUD_TYPE_F16] = spud_gemm_f16_avx512,                                                                        \
        [SPUD_TYPE_BF16] = spud_gemm_bf16_##GEMM,                                                                      \
    },                                                                                                                 \
    .gemm_rows = GEMM_ROWS,                                                                                            \
    .gemm_bf16_split = SPLIT,                                                                                          \
    .mdot = {                                                                                                          \
        [SPUD_TYPE_Q4_0] = spud_mdot_q4_0_avx512,                                                                      \
        [SPUD_TYPE_Q8_0] = spud_mdot_q8_0_avx512,                                                                      \
        [SPUD_TYPE_Q4_K] = spud_mdot_q4_K_avx512,                                                                      \
        [SPUD_TYPE_Q6_K] = spud_mdot_q6_K_avx512,                                                                      \
    },                                                                                                                 \
    /* single thread, weights from memory, Zen 5, busy machine, mdot vs gemm:                                          \
     * q4_0 2048 x 131072 at 16 rows 26.5 vs 31.5 ms, at 24 rows 57.5 vs 37.8;                                         \
     * q4_K 8192 x 8192 at 8 rows 3.6 vs 4.5, at 10 rows 4.2 vs 5.2 (2048-long                                         \
     * rows at 16: 16.9 vs 15.8); q6_K 8192 x 8192 at 6 rows 4.2 vs 4.6, at 7                                          \
     * rows 5.1 vs 4.7, but 2048 x 65536 at 8 rows 12.8 vs 12.8, and in the                                            \
     * Q4_K_M model (its q6_K output matrix has 2048-long rows) 8 rows decode                                          \
     * faster with the q6_K mdot (spud bench --batch 8: 173-208 vs 87-172 tok/s                                        \
     * in 4 interleaved runs) */                                                                                       \
    .mdot_max = {[SPUD_TYPE_Q4_0] = 16, [SPUD_TYPE_Q8_0] = 16, [SPUD_TYPE_Q4_K] = 8, [SPUD_TYPE_Q6_K] = 8},            \
    .dot_f32 = spud_dot_f32_avx512,                                                                                    \
    .axpy_f32 = spud_axpy_f32_avx512,                                                                                  \
    .attn = spud_attn_avx512,                                                                                          \
    .attn_q8 = true,                                                                                                   \
    .swiglu_f32 = spud_swiglu_f32_avx512,                                                                              \
}

const spud_kernel_set spud_kernels_avx512 = AVX512_SET("avx512", avx512, false);
const spud_kernel_set spud_kernels_amx = AVX512_SET("amx", amx, true);

