/* kernels_avx2.c: AVX2 + FMA + F16C kernels (compiled with -mavx2 -mfma
 * -mf16c; called only when spud_cpu_has(SPUD_ISA_AVX2)).
 *
 * Integer dots: int8 products go through maddubs (u8 x s8 -> s16 pairs):
 * q4_0 feeds its unsigned nibbles and subtracts 8 * Σ activation, q8_0 uses
 * |w| against the sign-flipped activation. No pair can saturate because
 * activations are never -128. Integer sums are exact per block; the q6_K dot
 * then does the reference's float steps and is bit-identical to it, the
 * q4_0/q8_0/q4_K/float dots scale and sum in float lanes and differ from the
 * reference by summation order only. Quantizers and dequantizers are
 * bit-identical to the references.
 *
 * Block data is only 2-byte aligned inside rows, so every load is unaligned.
 */
#include "kernels.h" /* first: sets the floating-point contraction mode */

#include <immintrin.h>
#include <math.h>
#include <string.h>

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int32_t hsum_epi32_128(__m128i s) {
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

static inline int32_t hsum_epi32(__m256i v) {
    return hsum_epi32_128(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

static inline float hmax_ps(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float f16s(spud_f16 h) { return _cvtsh_ss(h); }

#define LOADU256(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define LOADU128(p) _mm_loadu_si128((const __m128i *)(const void *)(p))
#define LOADU64(p) _mm_loadl_epi64((const __m128i *)(const void *)(p))
#define LOAD256(p) _mm256_load_si256((const __m256i *)(const void *)(p)) /* 32-byte aligned */

/* Signed int8 dot in 32-bit lanes: each lane sums 4 adjacent products w*a. */
static inline __m256i dot_i8_lanes(__m256i w, __m256i a) {
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

/* 4 x 8 int32 (each in [-128, 127]) -> 32 int8 in element order. */
static inline __m256i pack_i32_to_i8(__m256i q0, __m256i q1, __m256i q2, __m256i q3) {
    const __m256i p01 = _mm256_packs_epi32(q0, q1);
    const __m256i p23 = _mm256_packs_epi32(q2, q3);
    const __m256i r = _mm256_packs_epi16(p01, p23); /* dwords: q0l q1l q2l q3l q0h q1h q2h q3h */
    return _mm256_permutevar8x32_epi32(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* max(v, lo) then min(v, hi): the references' clampf_simd. */
static inline __m256 clamp_ps(__m256 v, float lo, float hi) {
    return _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
}

/* Prefetch distance for weights streaming from memory; see kernels_avx512.c. */
#define PREFETCH_AHEAD 8192

/* always_inline: otherwise GCC 12 finds the out-of-line copy free of side
 * effects (prefetches do not count) and deletes its calls from the
 * always_inline mdot kernels, which then prefetch nothing. */
static inline __attribute__((always_inline)) void prefetch_weights(const void *p, int bytes) {
    for (int off = 0; off < bytes; off += 64) _mm_prefetch((const char *)p + PREFETCH_AHEAD + off, _MM_HINT_T0);
}

/* ---- float dots ---- */

void spud_vec_dot_f32_avx2(int64_t n, float *s, const void *w, const void *xv) {
    const float *a = w, *x = xv;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        prefetch_weights(a + i, 128);
#pragma GCC unroll 8
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * k), _mm256_loadu_ps(x + i + 8 * k),
                                     acc[k]);
    }
    for (; i + 8 <= n; i += 8)
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(x + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += a[i] * x[i];
    *s = sum;
}

float spud_dot_f32_avx2(const float *a, const float *b, int64_t n) {
    float s;
    spud_vec_dot_f32_avx2(n, &s, a, b);
    return s;
}

void spud_axpy_f32_avx2(float *y, float a, const float *x, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

void spud_vec_dot_f16_avx2(int64_t n, float *s, const void *w, const void *xv) {
    const spud_f16 *a = w;
    const float *x = xv;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        prefetch_weights(a + i, 64);
#pragma GCC unroll 8
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_cvtph_ps(LOADU128(a + i + 8 * k)),
                                     _mm256_loadu_ps(x + i + 8 * k), acc[k]);
    }
    for (; i + 8 <= n; i += 8)
        acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(LOADU128(a + i)), _mm256_loadu_ps(x + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += f16s(a[i]) * x[i];
    *s = sum;
}

static inline __m256 bf16x8_to_ps(const spud_bf16 *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(LOADU128(p)), 16));
}

void spud_vec_dot_bf16_avx2(int64_t n, float *s, const void *w, const void *xv) {
    const spud_bf16 *a = w;
    const float *x = xv;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        prefetch_weights(a + i, 64);
#pragma GCC unroll 8
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(bf16x8_to_ps(a + i + 8 * k), _mm256_loadu_ps(x + i + 8 * k),
                                     acc[k]);
    }
    for (; i + 8 <= n; i += 8)
        acc[0] = _mm256_fmadd_ps(bf16x8_to_ps(a + i), _mm256_loadu_ps(x + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += spud_bf16_to_f32(a[i]) * x[i];
    *s = sum;
}

/* ---- q8_0 / q4_0 ---- */

void spud_vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *xv) {
    const block_q8_0 *a = w, *b = xv;
    const int64_t nb = n / QK8_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        prefetch_weights(&a[i], 2 * sizeof(block_q8_0));
        const __m256i p0 = dot_i8_lanes(LOADU256(a[i].qs), LOADU256(b[i].qs));
        const __m256i p1 = dot_i8_lanes(LOADU256(a[i + 1].qs), LOADU256(b[i + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16s(a[i].d) * f16s(b[i].d)), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16s(a[i + 1].d) * f16s(b[i + 1].d)),
                               _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; i < nb; i++) {
        const __m256i p = dot_i8_lanes(LOADU256(a[i].qs), LOADU256(b[i].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16s(a[i].d) * f16s(b[i].d)), _mm256_cvtepi32_ps(p), acc0);
    }
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* The 32 values q - 8 of a q4_0 block, in element order. */
static inline __m256i q4_0_values(const block_q4_0 *blk) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i raw = LOADU128(blk->qs);
    const __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
    return _mm256_sub_epi8(q, _mm256_set1_epi8(8));
}

/* fp16 d of 4 consecutive blocks (d first, `stride` bytes apart) as 4 halves
 * in the low 64 bits. */
static inline uint64_t d4(const void *p, size_t stride) {
    const uint8_t *c = p;
    uint16_t h[4];
    for (int k = 0; k < 4; k++) memcpy(&h[k], c + k * stride, 2);
    return (uint64_t)h[0] | (uint64_t)h[1] << 16 | (uint64_t)h[2] << 32 | (uint64_t)h[3] << 48;
}

/* Two q4_0 blocks against two q8_0 blocks, 128-bit lane j = block j: the
 * unsigned nibbles go through maddubs against the first / second 16
 * activations of each block, minus 8 * Σ activation (also maddubs). Returns
 * 8 int32 lanes, 4 per block. */
static inline __m256i q4_0_dot_pair_avx2(const block_q4_0 *a, const block_q8_0 *b) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
    const __m256i raw = _mm256_inserti128_si256(_mm256_castsi128_si256(LOADU128(a[0].qs)), LOADU128(a[1].qs), 1);
    const __m256i lo = _mm256_and_si256(raw, m4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
    const __m256i ylo = _mm256_inserti128_si256(_mm256_castsi128_si256(LOADU128(b[0].qs)), LOADU128(b[1].qs), 1);
    const __m256i yhi =
        _mm256_inserti128_si256(_mm256_castsi128_si256(LOADU128(b[0].qs + 16)), LOADU128(b[1].qs + 16), 1);
    /* int16 pairs: |q*y| sums <= 2*15*127 each, the total stays below 2^14 */
    const __m256i qy = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ylo), _mm256_maddubs_epi16(hi, yhi));
    const __m256i y8 = _mm256_add_epi16(_mm256_maddubs_epi16(eight, ylo), _mm256_maddubs_epi16(eight, yhi));
    return _mm256_madd_epi16(_mm256_sub_epi16(qy, y8), _mm256_set1_epi16(1));
}

void spud_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *w, const void *xv) {
    const block_q4_0 *a = w;
    const block_q8_0 *b = xv;
    const int64_t nb = n / QK4_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) {
        prefetch_weights(&a[i], 4 * sizeof(block_q4_0));
        /* the 4 block scales: halves [w0..w3, x0..x3] -> floats, multiplied */
        const __m256 h = _mm256_cvtph_ps(_mm_set_epi64x((long long)d4(&b[i], sizeof(block_q8_0)),
                                                        (long long)d4(&a[i], sizeof(block_q4_0))));
        const __m256 sc = _mm256_mul_ps(h, _mm256_permute2f128_ps(h, h, 1)); /* lanes 0-3 valid */
        const __m256 s01 = _mm256_permutevar8x32_ps(sc, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
        const __m256 s23 = _mm256_permutevar8x32_ps(sc, _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3));
        acc0 = _mm256_fmadd_ps(s01, _mm256_cvtepi32_ps(q4_0_dot_pair_avx2(&a[i], &b[i])), acc0);
        acc1 = _mm256_fmadd_ps(s23, _mm256_cvtepi32_ps(q4_0_dot_pair_avx2(&a[i + 2], &b[i + 2])), acc1);
    }
    for (; i < nb; i++) {
        const __m256i p = dot_i8_lanes(q4_0_values(&a[i]), LOADU256(b[i].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16s(a[i].d) * f16s(b[i].d)), _mm256_cvtepi32_ps(p), acc0);
    }
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* roundf (half away from zero) of each lane: truncate, then step one away
 * from zero where the dropped fraction is at least 0.5 (exact: v - trunc(v)
 * is representable). */
static inline __m256 round_half_away_ps(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    const __m256 step = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, sign));
    return _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), step));
}

void spud_quant_q8_0_avx2(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        __m256 v[4], m = _mm256_setzero_ps();
#pragma GCC unroll 8
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
        }
        const float amax = hmax_ps(m);
        const float d = amax / 127.f;
        const float id = d != 0.f ? 1.f / d : 0.f;
        y[b].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        __m256i q[4];
#pragma GCC unroll 8
        for (int k = 0; k < 4; k++) {
            const __m256 t = clamp_ps(_mm256_mul_ps(v[k], _mm256_set1_ps(id)), -127.f, 127.f);
            q[k] = _mm256_cvttps_epi32(round_half_away_ps(t));
        }
        _mm256_storeu_si256((__m256i *)(void *)y[b].qs, pack_i32_to_i8(q[0], q[1], q[2], q[3]));
    }
}

void spud_dequant_q8_0_avx2(const void *vx, float *y, int64_t n) {
    const block_q8_0 *x = vx;
    for (int64_t b = 0; b < n / QK8_0; b++, y += QK8_0) {
        const __m256 d = _mm256_set1_ps(f16s(x[b].d));
#pragma GCC unroll 8
        for (int k = 0; k < 4; k++) {
            const __m256i q = _mm256_cvtepi8_epi32(LOADU64(x[b].qs + 8 * k));
            _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
        }
    }
}

void spud_dequant_q4_0_avx2(const void *vx, float *y, int64_t n) {
    const block_q4_0 *x = vx;
    for (int64_t b = 0; b < n / QK4_0; b++, y += QK4_0) {
        const __m256 d = _mm256_set1_ps(f16s(x[b].d));
        const __m256i q = q4_0_values(&x[b]);
        const __m128i parts[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
#pragma GCC unroll 8
        for (int k = 0; k < 4; k++) {
            const __m128i src = (k & 1) ? _mm_srli_si128(parts[k >> 1], 8) : parts[k >> 1];
            const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(src));
            _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(f, d));
        }
    }
}

void spud_dequant_f16_avx2(const void *vx, float *y, int64_t n) {
    const spud_f16 *x = vx;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(LOADU128(x + i)));
    for (; i < n; i++) y[i] = f16s(x[i]);
}

void spud_dequant_bf16_avx2(const void *vx, float *y, int64_t n) {
    const spud_bf16 *x = vx;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, bf16x8_to_ps(x + i));
    for (; i < n; i++) y[i] = spud_bf16_to_f32(x[i]);
}

/* ---- q8_K (activations of the k-quant dots) ---- */

void spud_quant_q8_K_avx2(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
#pragma GCC unroll 8
        for (int k = 0; k < QK_K / 8; k++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)));
        const float amax = hmax_ps(m);
        if (amax == 0.f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        /* the signed value of the first element of largest magnitude */
        float max = 0;
        const __m256 vamax = _mm256_set1_ps(amax);
#pragma GCC unroll 8
        for (int k = 0; k < QK_K / 8; k++) {
            const __m256 ax = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k));
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(ax, vamax, _CMP_EQ_OQ));
            if (hit) {
                max = x[8 * k + __builtin_ctz((unsigned)hit)];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
#pragma GCC unroll 8
        for (int k = 0; k < QK_K / 32; k++) {
            __m256i q[4];
#pragma GCC unroll 8
            for (int j = 0; j < 4; j++) {
                const __m256 t = clamp_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 32 * k + 8 * j), vs), -128.f, 127.f);
                q[j] = _mm256_cvtps_epi32(_mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
            _mm256_storeu_si256((__m256i *)(void *)(y[b].qs + 32 * k), pack_i32_to_i8(q[0], q[1], q[2], q[3]));
            y[b].bsums[2 * k] = (int16_t)hsum_epi32(_mm256_add_epi32(q[0], q[1]));
            y[b].bsums[2 * k + 1] = (int16_t)hsum_epi32(_mm256_add_epi32(q[2], q[3]));
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

/* Per super-block the integer sums Σ_g sc[g]*Σ q*y (8 lanes) and
 * Σ_g m[g]*(bsum pair) (8 lanes) are exact; they are scaled by d and dmin
 * and summed in float lanes (summation order differs from the reference). */
void spud_vec_dot_q4_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *xv) {
    const block_q4_K *a = w;
    const block_q8_K *b = xv;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    /* int16 lane i of the min vector = mn[i / 2] (bytes 8..15 of the scales vector) */
    const __m256i min_pick = _mm256_setr_epi8(8, -1, 8, -1, 9, -1, 9, -1, 10, -1, 10, -1, 11, -1, 11, -1, 12, -1, 12,
                                              -1, 13, -1, 13, -1, 14, -1, 14, -1, 15, -1, 15, -1);
    __m256 accd = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; i++) {
        prefetch_weights(&a[i], sizeof(block_q4_K));
        const __m256i scm = _mm256_broadcastsi128_si256(q4_K_scales_vec(a[i].scales));
        __m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            const __m256i q = LOADU256(a[i].qs + 32 * c);
            const __m256i lo = _mm256_and_si256(q, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            const __m256i plo = _mm256_maddubs_epi16(lo, LOADU256(b[i].qs + 64 * c));
            const __m256i phi = _mm256_maddubs_epi16(hi, LOADU256(b[i].qs + 64 * c + 32));
            /* scale g as int16: bytes {g, zero} */
            const __m256i slo = _mm256_shuffle_epi8(scm, _mm256_set1_epi16((short)(0x8000 | (2 * c))));
            const __m256i shi = _mm256_shuffle_epi8(scm, _mm256_set1_epi16((short)(0x8000 | (2 * c + 1))));
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(plo, slo), _mm256_madd_epi16(phi, shi)));
        }
        const __m256i mins = _mm256_madd_epi16(LOADU256(b[i].bsums), _mm256_shuffle_epi8(scm, min_pick));
        const float d = f16s(a[i].d) * b[i].d;
        const float dmin = f16s(a[i].dmin) * b[i].d;
        accd = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(acc), accd);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(mins), accm);
    }
    *s = hsum_ps(_mm256_sub_ps(accd, accm));
}

void spud_dequant_q4_K_avx2(const void *vx, float *y, int64_t n) {
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
                const __m256 dg = _mm256_set1_ps(d * sc[2 * c + half]);
                const __m256 mg = _mm256_set1_ps(dmin * mn[2 * c + half]);
#pragma GCC unroll 8
                for (int k = 0; k < 2; k++) {
                    __m128i q = LOADU128(x[b].qs + 32 * c + 16 * k);
                    q = half ? _mm_and_si128(_mm_srli_epi16(q, 4), m4) : _mm_and_si128(q, m4);
                    const __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
                    const __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
                    _mm256_storeu_ps(y + 16 * k, _mm256_sub_ps(_mm256_mul_ps(dg, f0), mg));
                    _mm256_storeu_ps(y + 16 * k + 8, _mm256_sub_ps(_mm256_mul_ps(dg, f1), mg));
                }
                y += 32;
            }
        }
    }
}

/* ---- q6_K ---- */

/* The four 32-byte vectors of 6-bit values (0..63) of one 128-element half:
 * elements [0,32), [32,64), [64,96), [96,128) of the half. */
static inline void q6_K_half_values(const uint8_t *ql, const uint8_t *qh, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    const __m256i l0 = LOADU256(ql), l1 = LOADU256(ql + 32), h = LOADU256(qh);
    q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
    q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                           _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
}

void spud_vec_dot_q6_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *xv) {
    const block_q6_K *a = w;
    const block_q8_K *b = xv;
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        prefetch_weights(&a[i], sizeof(block_q6_K));
        const __m128i sc8 = LOADU128(a[i].scales);
        __m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            /* scales of groups 8h..8h+7 as int16 in both lanes */
            const __m256i scv = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(h ? _mm_srli_si128(sc8, 8) : sc8));
            __m256i q[4];
            q6_K_half_values(a[i].ql + 64 * h, a[i].qh + 32 * h, q);
#pragma GCC unroll 8
            for (int k = 0; k < 4; k++) {
                /* q[k] covers groups 8h+2k (low lane) and 8h+2k+1 (high lane) */
                const __m256i p = _mm256_maddubs_epi16(q[k], LOADU256(b[i].qs + 128 * h + 32 * k));
                const __m256i ctl = _mm256_setr_m128i(_mm_set1_epi16((short)(0x0100 * (4 * k + 1) + 4 * k)),
                                                      _mm_set1_epi16((short)(0x0100 * (4 * k + 3) + 4 * k + 2)));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_shuffle_epi8(scv, ctl)));
            }
        }
        /* the -32 offset: 32 * Σ_g sc[g] * bsums[g] */
        const __m256i off = _mm256_madd_epi16(LOADU256(b[i].bsums), _mm256_cvtepi8_epi16(sc8));
        acc = _mm256_sub_epi32(acc, _mm256_slli_epi32(off, 5));
        const int32_t isum = hsum_epi32(acc);
        sum += (f16s(a[i].d) * b[i].d) * (float)isum;
    }
    *s = sum;
}

void spud_dequant_q6_K_avx2(const void *vx, float *y, int64_t n) {
    const block_q6_K *x = vx;
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = f16s(x[b].d);
#pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            __m256i q[4];
            q6_K_half_values(x[b].ql + 64 * h, x[b].qh + 32 * h, q);
#pragma GCC unroll 8
            for (int k = 0; k < 4; k++) {
                const __m256i v = _mm256_sub_epi8(q[k], _mm256_set1_epi8(32));
                const __m128i parts[2] = {_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)};
#pragma GCC unroll 8
                for (int g = 0; g < 2; g++) { /* one group of 16 */
                    const __m256 dg = _mm256_set1_ps(d * x[b].scales[8 * h + 2 * k + g]);
                    const __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[g]));
                    const __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(parts[g], 8)));
                    _mm256_storeu_ps(y, _mm256_mul_ps(dg, f0));
                    _mm256_storeu_ps(y + 8, _mm256_mul_ps(dg, f1));
                    y += 16;
                }
            }
        }
    }
}

/* ---- matrix-matrix products (prefill) ----
 *
 * As in kernels_avx512.c, with 8 weight rows per call (one per 32-bit lane of
 * a ymm) and up to 4 activation rows per micro-tile, but without VNNI: a
 * group's 4-byte steps go through maddubs (u8 x s8 -> s16 pairs), whose sums
 * are added in 16 bits for as many steps as cannot overflow (4 for nibbles,
 * 2 for q6_K's 6-bit values), then widened with one madd. q8_0 weights are
 * signed: |w| against the activation with w's sign, one step at a time, and
 * no offset. */

#define GEMM2_ROWS 8
#define GEMM2_KC 512
#define GEMM2_NC 4

/* out[j] = dword j of rows src + r * stride (lane r), 8 rows of 8 dwords. */
static inline void transpose_8x8(const uint8_t *src, size_t stride, __m256i out[8]) {
    __m256i z[8], t[8], u[8];
    for (int a = 0; a < 8; a++) z[a] = LOADU256(src + a * stride);
    for (int a = 0; a < 8; a += 2) {
        t[a] = _mm256_unpacklo_epi32(z[a], z[a + 1]);
        t[a + 1] = _mm256_unpackhi_epi32(z[a], z[a + 1]);
    }
    for (int a = 0; a < 8; a += 4) {
        u[a] = _mm256_unpacklo_epi64(t[a], t[a + 2]);     /* columns 0 | 4 of rows a..a+3 */
        u[a + 1] = _mm256_unpackhi_epi64(t[a], t[a + 2]); /* 1 | 5 */
        u[a + 2] = _mm256_unpacklo_epi64(t[a + 1], t[a + 3]); /* 2 | 6 */
        u[a + 3] = _mm256_unpackhi_epi64(t[a + 1], t[a + 3]); /* 3 | 7 */
    }
    for (int c = 0; c < 4; c++) {
        out[c] = _mm256_permute2x128_si256(u[c], u[c + 4], 0x20);
        out[c + 4] = _mm256_permute2x128_si256(u[c], u[c + 4], 0x31);
    }
}

static inline size_t panel2_group_bytes(int gs, bool mins) { return (size_t)gs * 8 + 32 + (mins ? 32 : 0); }

static inline float *panel2_scales(uint8_t *panel, int g, int gs, bool mins) {
    return (float *)(void *)(panel + (size_t)g * panel2_group_bytes(gs, mins) + gs * 8);
}

static inline void panel2_transpose(const uint8_t *vals, int kc, int gs, bool mins, uint8_t *panel) {
    const size_t gb = panel2_group_bytes(gs, mins);
    for (int e = 0; e < kc; e += 32) {
        __m256i o[8];
        transpose_8x8(vals + e, GEMM2_KC, o);
        if (gs == 32) {
            uint8_t *p = panel + (size_t)(e / 32) * gb;
            for (int j = 0; j < 8; j++) _mm256_store_si256((__m256i *)(void *)(p + 32 * j), o[j]);
        } else {
            uint8_t *p0 = panel + (size_t)(e / 16) * gb, *p1 = p0 + gb;
            for (int j = 0; j < 4; j++) {
                _mm256_store_si256((__m256i *)(void *)(p0 + 32 * j), o[j]);
                _mm256_store_si256((__m256i *)(void *)(p1 + 32 * j), o[j + 4]);
            }
        }
    }
}

static inline int32_t load_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* STEPS: 4-byte steps summed in 16 bits before widening; SIGNED: q8_0. */
static inline __attribute__((always_inline)) void gemm2_tile(const uint8_t *panel, int ng, const int gs,
                                                           const bool mins, const int STEPS, const bool SIGNED,
                                                           const int8_t *xq, size_t x_stride, const float *dx,
                                                           const float *aux, size_t s_stride, const int NC, float *y,
                                                           size_t ldy, int nr, bool first) {
    __m256 f[GEMM2_NC];
    _Alignas(32) float tmp[8];
#pragma GCC unroll 4
    for (int c = 0; c < NC; c++) {
        if (first) {
            f[c] = _mm256_setzero_ps();
        } else {
            for (int r = 0; r < 8; r++) tmp[r] = r < nr ? y[c * ldy + r] : 0.f;
            f[c] = _mm256_load_ps(tmp);
        }
    }
    const __m256i ones = _mm256_set1_epi16(1);
    const size_t gb = panel2_group_bytes(gs, mins);
    for (int g = 0; g < ng; g++) {
        const uint8_t *pg = panel + (size_t)g * gb;
        const __m256 S = _mm256_load_ps((const float *)(const void *)(pg + gs * 8));
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) {
            const int8_t *xc = xq + c * x_stride + (size_t)g * gs;
            const size_t si = c * s_stride + (size_t)g;
            __m256i acc = (mins || SIGNED) ? _mm256_setzero_si256() : _mm256_set1_epi32(load_i32(aux + si));
#pragma GCC unroll 8
            for (int j = 0; j < gs / 4; j += STEPS) {
                __m256i t = _mm256_setzero_si256();
#pragma GCC unroll 4
                for (int jj = j; jj < j + STEPS; jj++) {
                    const __m256i w = _mm256_load_si256((const __m256i *)(const void *)(pg + 32 * jj));
                    const __m256i xb = _mm256_set1_epi32(load_i32(xc + 4 * jj));
                    t = SIGNED ? _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xb, w))
                               : _mm256_add_epi16(t, _mm256_maddubs_epi16(w, xb));
                }
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(t, ones));
            }
            f[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_mul_ps(S, _mm256_set1_ps(dx[si])), f[c]);
            if (mins)
                f[c] = _mm256_fnmadd_ps(_mm256_load_ps((const float *)(const void *)(pg + gs * 8 + 32)),
                                        _mm256_set1_ps(aux[si]), f[c]);
        }
    }
#pragma GCC unroll 4
    for (int c = 0; c < NC; c++) {
        if (nr == 8) {
            _mm256_storeu_ps(y + c * ldy, f[c]);
        } else {
            _mm256_store_ps(tmp, f[c]);
            for (int r = 0; r < nr; r++) y[c * ldy + r] = tmp[r];
        }
    }
}

static inline __attribute__((always_inline)) void gemm2_chunk(const uint8_t *panel, int kc, const int gs,
                                                            const bool mins, const int STEPS, const bool SIGNED,
                                                            int64_t k, int64_t k0, const spud_gemm_x *x, int nc,
                                                            float *y, size_t ldy, int nr) {
    const int ng = kc / gs;
    const int64_t ng_all = k / gs;
    const bool first = k0 == 0;
    for (int c0 = 0; c0 < nc; c0 += GEMM2_NC) {
        const int8_t *xq = (const int8_t *)x->x + (size_t)c0 * x->x_stride + k0;
        const float *dx = x->s + (size_t)c0 * x->s_stride + k0 / gs;
        const float *aux = dx + ng_all;
        float *yc = y + (size_t)c0 * ldy;
#define TILE2(n) gemm2_tile(panel, ng, gs, mins, STEPS, SIGNED, xq, x->x_stride, dx, aux, x->s_stride, n, yc, ldy, nr, first)
        switch (nc - c0 < GEMM2_NC ? nc - c0 : GEMM2_NC) {
        case 4: TILE2(4); break;
        case 3: TILE2(3); break;
        case 2: TILE2(2); break;
        default: TILE2(1); break;
        }
#undef TILE2
    }
}

static void zero_row2(uint8_t *vals, uint8_t *panel, int r, int kc, int gs, bool mins) {
    memset(vals + (size_t)r * GEMM2_KC, 0, (size_t)kc);
    for (int g = 0; g < kc / gs; g++) {
        panel2_scales(panel, g, gs, mins)[r] = 0.f;
        if (mins) panel2_scales(panel, g, gs, mins)[8 + r] = 0.f;
    }
}

static void pack2_q4_0(const void *w, size_t rb, int nr, int64_t k0, int kc, uint8_t *vals, uint8_t *panel) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (int r = 0; r < GEMM2_ROWS; r++) {
        if (r >= nr) {
            zero_row2(vals, panel, r, kc, 32, false);
            continue;
        }
        const block_q4_0 *b = (const block_q4_0 *)(const void *)((const char *)w + (size_t)r * rb) + k0 / QK4_0;
        uint8_t *v = vals + (size_t)r * GEMM2_KC;
        for (int g = 0; g < kc / 32; g++) {
            const __m128i raw = LOADU128(b[g].qs);
            _mm_store_si128((__m128i *)(void *)(v + 32 * g), _mm_and_si128(raw, m4));
            _mm_store_si128((__m128i *)(void *)(v + 32 * g + 16), _mm_and_si128(_mm_srli_epi16(raw, 4), m4));
            panel2_scales(panel, g, 32, false)[r] = f16s(b[g].d);
        }
    }
}

static void pack2_q8_0(const void *w, size_t rb, int nr, int64_t k0, int kc, uint8_t *vals, uint8_t *panel) {
    for (int r = 0; r < GEMM2_ROWS; r++) {
        if (r >= nr) {
            zero_row2(vals, panel, r, kc, 32, false);
            continue;
        }
        const block_q8_0 *b = (const block_q8_0 *)(const void *)((const char *)w + (size_t)r * rb) + k0 / QK8_0;
        uint8_t *v = vals + (size_t)r * GEMM2_KC;
        for (int g = 0; g < kc / 32; g++) {
            _mm256_store_si256((__m256i *)(void *)(v + 32 * g), LOADU256(b[g].qs)); /* signed, as stored */
            panel2_scales(panel, g, 32, false)[r] = f16s(b[g].d);
        }
    }
}

static void pack2_q4_K(const void *w, size_t rb, int nr, int64_t k0, int kc, uint8_t *vals, uint8_t *panel) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int r = 0; r < GEMM2_ROWS; r++) {
        if (r >= nr) {
            zero_row2(vals, panel, r, kc, 32, true);
            continue;
        }
        const block_q4_K *b = (const block_q4_K *)(const void *)((const char *)w + (size_t)r * rb) + k0 / QK_K;
        uint8_t *v = vals + (size_t)r * GEMM2_KC;
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
                float *sm = panel2_scales(panel, 8 * sb + j, 32, true);
                sm[r] = d * sc[j];
                sm[8 + r] = dmin * mn[j];
            }
        }
    }
}

static void pack2_q6_K(const void *w, size_t rb, int nr, int64_t k0, int kc, uint8_t *vals, uint8_t *panel) {
    for (int r = 0; r < GEMM2_ROWS; r++) {
        if (r >= nr) {
            zero_row2(vals, panel, r, kc, 16, false);
            continue;
        }
        const block_q6_K *b = (const block_q6_K *)(const void *)((const char *)w + (size_t)r * rb) + k0 / QK_K;
        uint8_t *v = vals + (size_t)r * GEMM2_KC;
        for (int sb = 0; sb < kc / QK_K; sb++) {
            for (int h = 0; h < 2; h++) {
                __m256i q[4];
                q6_K_half_values(b[sb].ql + 64 * h, b[sb].qh + 32 * h, q);
                for (int k = 0; k < 4; k++)
                    _mm256_store_si256((__m256i *)(void *)(v + QK_K * sb + 128 * h + 32 * k), q[k]);
            }
            const float d = f16s(b[sb].d);
            for (int j = 0; j < 16; j++) panel2_scales(panel, 16 * sb + j, 16, false)[r] = d * b[sb].scales[j];
        }
    }
}

typedef void (*pack2_fn)(const void *w, size_t rb, int nr, int64_t k0, int kc, uint8_t *vals, uint8_t *panel);

#define PANEL2_BYTES (GEMM2_KC / 16 * (16 * 8 + 32))

static inline __attribute__((always_inline)) void gemm2_q(pack2_fn pack, const int gs, const bool mins,
                                                        const int STEPS, const bool SIGNED, int64_t k, const void *w,
                                                        size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                                                        size_t ldy) {
    _Alignas(64) uint8_t vals[GEMM2_ROWS * GEMM2_KC];
    _Alignas(64) uint8_t panel[PANEL2_BYTES];
    const size_t chunk_bytes = rb / (size_t)(k / GEMM2_KC > 0 ? k / GEMM2_KC : 1) + 64;
    for (int64_t k0 = 0; k0 < k; k0 += GEMM2_KC) {
        const int kc = (int)(k - k0 < GEMM2_KC ? k - k0 : GEMM2_KC);
        /* the rows' next chunk (see kernels_avx512.c) */
        const char *next = (const char *)w + (size_t)(k0 + GEMM2_KC) * rb / (size_t)k;
        if (k0 + GEMM2_KC >= k) next = (const char *)w + (size_t)GEMM2_ROWS * rb;
        for (int r = 0; r < GEMM2_ROWS; r++)
            for (size_t off = 0; off < chunk_bytes; off += 64) _mm_prefetch(next + (size_t)r * rb + off, _MM_HINT_T0);
        pack(w, rb, nr, k0, kc, vals, panel);
        panel2_transpose(vals, kc, gs, mins, panel);
        gemm2_chunk(panel, kc, gs, mins, STEPS, SIGNED, k, k0, x, nc, y, ldy, nr);
    }
}

void spud_gemm_q4_0_avx2(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                         size_t ldy) {
    gemm2_q(pack2_q4_0, 32, false, 4, false, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_q8_0_avx2(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                         size_t ldy) {
    gemm2_q(pack2_q8_0, 32, false, 1, true, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_q4_K_avx2(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                         size_t ldy) {
    gemm2_q(pack2_q4_K, 32, true, 4, false, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_q6_K_avx2(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                         size_t ldy) {
    gemm2_q(pack2_q6_K, 16, false, 2, false, k, w, rb, nr, x, nc, y, ldy);
}

/* ---- matrix-matrix products of float weights (f32, f16, bf16) ----
 * As in kernels_avx512.c: 3 weight rows x 4 activation rows of partial sums
 * (12 ymm), reduced once per row. */

#define FGEMM2_R 3
#define FGEMM2_C 4

static inline __m256 load_w8(const void *row, int64_t i, spud_type t) {
    switch (t) {
    case SPUD_TYPE_F16: return _mm256_cvtph_ps(LOADU128((const spud_f16 *)row + i));
    case SPUD_TYPE_BF16: return bf16x8_to_ps((const spud_bf16 *)row + i);
    default: return _mm256_loadu_ps((const float *)row + i);
    }
}

static inline float w_elem(const void *row, int64_t i, spud_type t) {
    switch (t) {
    case SPUD_TYPE_F16: return f16s(((const spud_f16 *)row)[i]);
    case SPUD_TYPE_BF16: return spud_bf16_to_f32(((const spud_bf16 *)row)[i]);
    default: {
        float f;
        memcpy(&f, (const float *)row + i, sizeof f);
        return f;
    }
    }
}

static inline __attribute__((always_inline)) void fgemm2_tile(const spud_type t, int64_t k, const char *w, size_t rb,
                                                            const int R, const float *x, size_t xs, const int C,
                                                            float *y, size_t ldy) {
    __m256 acc[FGEMM2_R][FGEMM2_C];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256 wv[FGEMM2_R];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = load_w8(w + (size_t)r * rb, i, t);
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            const __m256 xv = _mm256_loadu_ps(x + (size_t)c * xs + i);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            float sum = hsum_ps(acc[r][c]);
            for (int64_t e = i; e < k; e++) sum += w_elem(w + (size_t)r * rb, e, t) * x[(size_t)c * xs + e];
            y[(size_t)c * ldy + r] = sum;
        }
}

static inline __attribute__((always_inline)) void fgemm2(const spud_type t, int64_t k, const void *w, size_t rb, int nr,
                                                       const spud_gemm_x *x, int nc, float *y, size_t ldy) {
    const size_t xs = x->x_stride / sizeof(float);
    for (int c0 = 0; c0 < nc; c0 += FGEMM2_C) {
        const int cn = nc - c0 < FGEMM2_C ? nc - c0 : FGEMM2_C;
        const float *xc = (const float *)x->x + (size_t)c0 * xs;
        for (int r0 = 0; r0 < nr; r0 += FGEMM2_R) {
            const int rn = nr - r0 < FGEMM2_R ? nr - r0 : FGEMM2_R;
            const char *wr = (const char *)w + (size_t)r0 * rb;
            float *yc = y + (size_t)c0 * ldy + r0;
            if (rn == FGEMM2_R && cn == FGEMM2_C) {
                fgemm2_tile(t, k, wr, rb, FGEMM2_R, xc, xs, FGEMM2_C, yc, ldy);
            } else {
                for (int r = 0; r < rn; r++) {
                    switch (cn) {
                    case 4: fgemm2_tile(t, k, wr + (size_t)r * rb, rb, 1, xc, xs, 4, yc + r, ldy); break;
                    case 3: fgemm2_tile(t, k, wr + (size_t)r * rb, rb, 1, xc, xs, 3, yc + r, ldy); break;
                    case 2: fgemm2_tile(t, k, wr + (size_t)r * rb, rb, 1, xc, xs, 2, yc + r, ldy); break;
                    default: fgemm2_tile(t, k, wr + (size_t)r * rb, rb, 1, xc, xs, 1, yc + r, ldy); break;
                    }
                }
            }
        }
    }
}

void spud_gemm_f32_avx2(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy) {
    fgemm2(SPUD_TYPE_F32, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_f16_avx2(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                        size_t ldy) {
    fgemm2(SPUD_TYPE_F16, k, w, rb, nr, x, nc, y, ldy);
}

void spud_gemm_bf16_avx2(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                         size_t ldy) {
    fgemm2(SPUD_TYPE_BF16, k, w, rb, nr, x, nc, y, ldy);
}

/* ---- e^x and SwiGLU ---- */

/* e^x: round(x / ln 2), a degree-6 Taylor polynomial of the remainder
 * (|r| <= ln2 / 2, relative error about 2^-23), times 2^n built in the
 * exponent field; exactly 0 below -87 (and for NaN), +inf above 88.72. */
static inline __m256 exp_avx2(__m256 x) {
    const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.f), _CMP_GE_OQ);
    const __m256 huge = _mm256_cmp_ps(x, _mm256_set1_ps(88.72f), _CMP_GT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723212e-6f), r);
    __m256 p = _mm256_set1_ps(1.f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    /* 2^n, n in [-126, 127]: the biased exponent n + 127 in bits 23..30 */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_blendv_ps(_mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live),
                            _mm256_set1_ps(INFINITY), huge);
}

/* g = silu(g) * u = g / (1 + e^-g) * u */
void spud_swiglu_f32_avx2(float *g, const float *u, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 den = _mm256_add_ps(_mm256_set1_ps(1.f), exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x)));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, den), _mm256_loadu_ps(u + i)));
    }
    if (i < n) spud_swiglu_f32_ref(g + i, u + i, n - i);
}

/* ---- attention (see kernels_avx512.c; 8-wide here) ----
 *
 * For a tile of 64 positions and 4 queries: scores 16 positions at a time
 * (8 ymm accumulators: 2 K loads feed 8 FMAs) into a small score buffer,
 * softmax over the buffer, then the output rows 16 dimensions at a time
 * (2 V loads feed 8 FMAs). */

#define ATTN_PREFETCH 2

/* Cache element kinds: 0 f32, 1 f16, 2 q8_0. */
enum { KV_F32, KV_F16, KV_Q8 };

/* Bytes per position of K (and of V). */
static inline size_t kv_pos_bytes(const int kind, int hd) {
    return kind == KV_Q8 ? (size_t)hd + 4 : (size_t)hd * (kind == KV_F16 ? 2 : 4);
}

static inline __m256 load_kv8(const void *base, size_t i, const int kind) {
    if (kind == KV_F16) return _mm256_cvtph_ps(LOADU128((const spud_f16 *)base + i));
    return _mm256_loadu_ps((const float *)base + i);
}

/* Scores of 4 queries x the 16 positions of one K tile from a float cache. */
static inline __attribute__((always_inline)) void attn_qk16_float(const char *kb, int hd, const int kind,
                                                                const float *const *qg, __m256 s[4][2]) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) s[j][0] = s[j][1] = _mm256_setzero_ps();
    for (int i = 0; i < hd; i++) {
        const __m256 k0 = load_kv8(kb, (size_t)i * SPUD_KV_TILE, kind);
        const __m256 k1 = load_kv8(kb, (size_t)i * SPUD_KV_TILE + 8, kind);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m256 qb = _mm256_broadcast_ss(&qg[j][i]);
            s[j][0] = _mm256_fmadd_ps(qb, k0, s[j][0]);
            s[j][1] = _mm256_fmadd_ps(qb, k1, s[j][1]);
        }
    }
}

/* Scores of 4 int8 queries (scales dq) x the 16 positions of one q8_0 K tile,
 * 4 dimensions of 8 positions per load: K - 128 as signed bytes (xor 0x80),
 * then maddubs(|k|, q with k's sign) + madd. No pair can saturate: |k| <= 128
 * (a byte 0 past the last position reads as -128) and |q| <= 127, so a pair
 * is at most 2 * 128 * 127 = 32512. The int32 sums are exact; then times dq
 * and each position's K scale. */
static inline __attribute__((always_inline)) void attn_qk16_q8(const char *kb, int hd, const int8_t *const *qg,
                                                             const float *dq, __m256 s[4][2]) {
    const __m256i flip = _mm256_set1_epi8(-128), ones = _mm256_set1_epi16(1);
    __m256i acc[4][2];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) acc[j][0] = acc[j][1] = _mm256_setzero_si256();
    for (int i4 = 0; i4 < hd / 4; i4++) {
        const __m256i k0 = _mm256_xor_si256(LOADU256(kb + (size_t)i4 * 64), flip);
        const __m256i k1 = _mm256_xor_si256(LOADU256(kb + (size_t)i4 * 64 + 32), flip);
        const __m256i a0 = _mm256_abs_epi8(k0), a1 = _mm256_abs_epi8(k1);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m256i qb = _mm256_set1_epi32(load_i32(qg[j] + 4 * i4));
            acc[j][0] = _mm256_add_epi32(acc[j][0],
                                         _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(qb, k0)), ones));
            acc[j][1] = _mm256_add_epi32(acc[j][1],
                                         _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(qb, k1)), ones));
        }
    }
    const float *dk = (const float *)(const void *)(kb + (size_t)hd * SPUD_KV_TILE);
    const __m256 dk0 = _mm256_loadu_ps(dk), dk1 = _mm256_loadu_ps(dk + 8);
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const __m256 d = _mm256_set1_ps(dq[j]);
        s[j][0] = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[j][0]), _mm256_mul_ps(dk0, d));
        s[j][1] = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[j][1]), _mm256_mul_ps(dk1, d));
    }
}

/* 16 dimensions from d0 of V row t (q8_0: the int8 values; the row's scale
 * is already in the probability). */
static inline void load_v16(const char *vr, int d0, const int kind, __m256 *v0, __m256 *v1) {
    if (kind == KV_Q8) {
        const __m128i b = LOADU128(vr + d0);
        *v0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
        *v1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
    } else {
        *v0 = load_kv8(vr, (size_t)d0, kind);
        *v1 = load_kv8(vr, (size_t)d0 + 8, kind);
    }
}

static inline __attribute__((always_inline)) void attn_impl_avx2(const int kind, int hd, int nq, const float *q,
                                                               const int32_t *last, const void *k, const void *v,
                                                               float *out, float *work) {
    float *O = work;                                  /* SPUD_ATTN_MAX_Q x hd */
    float *P = work + (size_t)SPUD_ATTN_MAX_Q * hd;   /* 4 x SPUD_ATTN_SPAN */
    int8_t *qi8 = (int8_t *)(P + 4 * SPUD_ATTN_SPAN); /* q8_0: SPUD_ATTN_MAX_Q x hd int8 queries */
    float m[SPUD_ATTN_MAX_Q], l[SPUD_ATTN_MAX_Q], dq[SPUD_ATTN_MAX_Q];
    int32_t lim[SPUD_ATTN_MAX_Q];
    const float *qp[SPUD_ATTN_MAX_Q];
    const int8_t *qq[SPUD_ATTN_MAX_Q];
    const int ng = (nq + 3) / 4;
    int32_t n_kv = 0;
    for (int j = 0; j < 4 * ng; j++) {
        const int jj = j < nq ? j : nq - 1;
        qp[j] = q + (size_t)jj * hd;
        lim[j] = last[jj];
        if (lim[j] + 1 > n_kv) n_kv = lim[j] + 1;
        m[j] = -INFINITY;
        l[j] = 0.f;
        memset(O + (size_t)j * hd, 0, (size_t)hd * sizeof(float));
        if (kind == KV_Q8) {
            int8_t *qj = qi8 + (size_t)j * hd;
            dq[j] = spud_kv_q8_quantize(qp[j], hd, qj);
            qq[j] = qj;
        }
    }
    const size_t row = kv_pos_bytes(kind, hd);
    const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    for (int t0 = 0; t0 < n_kv; t0 += SPUD_ATTN_SPAN) {
        const int tn = n_kv - t0 < SPUD_ATTN_SPAN ? n_kv - t0 : SPUD_ATTN_SPAN;
        const char *kt = (const char *)k + (size_t)t0 * row;
        {
            const char *pk = kt + (size_t)ATTN_PREFETCH * SPUD_ATTN_SPAN * row;
            const char *pv = (const char *)v + ((size_t)t0 + ATTN_PREFETCH * SPUD_ATTN_SPAN) * row;
            for (size_t off = 0; off < SPUD_ATTN_SPAN * row; off += 64) {
                _mm_prefetch(pk + off, _MM_HINT_T0);
                _mm_prefetch(pv + off, _MM_HINT_T0);
            }
        }
        /* q8_0: V's row scales, 0 past the tile (its padding may be NaN) */
        float dv[SPUD_ATTN_SPAN];
        if (kind == KV_Q8)
            for (int t = 0; t < SPUD_ATTN_SPAN; t++) {
                dv[t] = 0.f;
                if (t < tn) memcpy(&dv[t], (const char *)v + (size_t)(t0 + t) * row + hd, 4);
            }
        for (int gi = 0; gi < ng; gi++) {
            const float *const *qg = qp + 4 * gi;
            float corr[4];
            for (int b = 0; b < 4; b++) { /* scores of positions t0 + 16b .. + 15 into P */
                const char *kb = kt + (size_t)b * SPUD_KV_TILE * row;
                __m256 s[4][2];
                if (kind == KV_Q8)
                    attn_qk16_q8(kb, hd, qq + 4 * gi, dq + 4 * gi, s);
                else
                    attn_qk16_float(kb, hd, kind, qg, s);
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    /* positions past last[j] get -inf */
                    const __m256 limit = _mm256_set1_ps((float)(lim[4 * gi + j] - t0 - 16 * b));
                    const __m256 ok0 = _mm256_cmp_ps(iota, limit, _CMP_LE_OQ);
                    const __m256 ok1 = _mm256_cmp_ps(_mm256_add_ps(iota, _mm256_set1_ps(8.f)), limit, _CMP_LE_OQ);
                    _mm256_storeu_ps(P + j * SPUD_ATTN_SPAN + 16 * b,
                                     _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), s[j][0], ok0));
                    _mm256_storeu_ps(P + j * SPUD_ATTN_SPAN + 16 * b + 8,
                                     _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), s[j][1], ok1));
                }
            }
            for (int j = 0; j < 4; j++) {
                const int jq = 4 * gi + j;
                float *pj = P + j * SPUD_ATTN_SPAN;
                __m256 mx = _mm256_loadu_ps(pj);
                for (int e = 8; e < SPUD_ATTN_SPAN; e += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(pj + e));
                const float mt = hmax_ps(mx);
                const float mnew = mt > m[jq] ? mt : m[jq];
                corr[j] = _mm256_cvtss_f32(exp_avx2(_mm256_set1_ps(m[jq] - mnew)));
                const __m256 vm = _mm256_set1_ps(mnew);
                __m256 sum = _mm256_setzero_ps();
                for (int e = 0; e < SPUD_ATTN_SPAN; e += 8) {
                    __m256 p = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(pj + e), vm));
                    sum = _mm256_add_ps(sum, p);
                    if (kind == KV_Q8) p = _mm256_mul_ps(p, _mm256_loadu_ps(dv + e)); /* V's row scales */
                    _mm256_storeu_ps(pj + e, p);
                }
                l[jq] = l[jq] * corr[j] + hsum_ps(sum);
                m[jq] = mnew;
            }
            float *Og = O + (size_t)4 * gi * hd;
            for (int d0 = 0; d0 < hd; d0 += 16) {
                __m256 o[4][2];
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    const __m256 c = _mm256_set1_ps(corr[j]);
                    o[j][0] = _mm256_mul_ps(_mm256_loadu_ps(Og + (size_t)j * hd + d0), c);
                    o[j][1] = _mm256_mul_ps(_mm256_loadu_ps(Og + (size_t)j * hd + d0 + 8), c);
                }
                for (int t = 0; t < tn; t++) {
                    __m256 v0, v1;
                    load_v16((const char *)v + (size_t)(t0 + t) * row, d0, kind, &v0, &v1);
#pragma GCC unroll 4
                    for (int j = 0; j < 4; j++) {
                        const __m256 pb = _mm256_broadcast_ss(&P[j * SPUD_ATTN_SPAN + t]);
                        o[j][0] = _mm256_fmadd_ps(pb, v0, o[j][0]);
                        o[j][1] = _mm256_fmadd_ps(pb, v1, o[j][1]);
                    }
                }
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    _mm256_storeu_ps(Og + (size_t)j * hd + d0, o[j][0]);
                    _mm256_storeu_ps(Og + (size_t)j * hd + d0 + 8, o[j][1]);
                }
            }
        }
    }
    for (int j = 0; j < nq; j++) {
        const __m256 inv = _mm256_set1_ps(1.f / l[j]);
        for (int i = 0; i < hd; i += 8)
            _mm256_storeu_ps(out + (size_t)j * hd + i, _mm256_mul_ps(_mm256_loadu_ps(O + (size_t)j * hd + i), inv));
    }
}

void spud_attn_avx2(int hd, int nq, const float *q, const int32_t *last, spud_type kv_type, const void *k,
                    const void *v, float *out, float *work) {
    if (hd % 16 || nq < 1 || nq > SPUD_ATTN_MAX_Q ||
        (kv_type != SPUD_TYPE_F16 && kv_type != SPUD_TYPE_F32 && kv_type != SPUD_TYPE_Q8_0)) {
        spud_attn_ref(hd, nq, q, last, kv_type, k, v, out, work);
        return;
    }
    if (kv_type == SPUD_TYPE_F16)
        attn_impl_avx2(KV_F16, hd, nq, q, last, k, v, out, work);
    else if (kv_type == SPUD_TYPE_Q8_0)
        attn_impl_avx2(KV_Q8, hd, nq, q, last, k, v, out, work);
    else
        attn_impl_avx2(KV_F32, hd, nq, q, last, k, v, out, work);
}

/* ---- small-batch products (decode of a few sequences) ----
 *
 * The AVX-512 set's mdot (see kernels_avx512.c) in two halves of 8 lanes.
 * q4_0 / q8_0: a group of 16 blocks in the spud_mdot_x_row layout is lanes
 * 0-7 (the first 32 bytes of each 64-byte vector) and lanes 8-15. Per half,
 * the quant bytes of its 8 blocks go through an in-lane 4x4 dword transpose
 * once; per activation row, maddubs + madd per 32 bytes (q4_0: unsigned
 * nibbles and the aux accumulator; q8_0: |w| and x with w's sign, so no
 * 16-bit saturation), exact per block, scaled by dw * dx in float. At most
 * MDOT2_NC activation rows per pass (16 ymm registers); q4_K / q6_K (below)
 * take MDOT2_NC_K, as their weight work per block is larger than q4_0's and
 * spilled accumulators cost less than a second pass (single thread, 2048 x
 * 256 in L2, 8 rows: q4_K 39.7 vs 48.0 us with 4 per pass, q6_K 58.5 vs
 * 60.9). */
#define MDOT2_NC 4
#define MDOT2_NC_K 8
/* In-lane 4x4 transpose of dwords: out[m] 128-bit lane i = dword m of lane i
 * of z[0], z[1], z[2], z[3]. */
static inline void transpose_4x4_lanes(const __m256i z[4], __m256i out[4]) {
    const __m256i t0 = _mm256_unpacklo_epi32(z[0], z[1]), t1 = _mm256_unpackhi_epi32(z[0], z[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(z[2], z[3]), t3 = _mm256_unpackhi_epi32(z[2], z[3]);
    out[0] = _mm256_unpacklo_epi64(t0, t2);
    out[1] = _mm256_unpackhi_epi64(t0, t2);
    out[2] = _mm256_unpacklo_epi64(t1, t3);
    out[3] = _mm256_unpackhi_epi64(t1, t3);
}

static inline __attribute__((always_inline)) void mdot2_row(const bool q4, int64_t nb, const void *w,
                                                            const spud_gemm_x *x, int c0, float *out, const int nc) {
    const block_q4_0 *a4 = w;
    const block_q8_0 *a8 = w;
    const char *xr[MDOT2_NC];
    const size_t off_d = (size_t)((const char *)x->s - (const char *)x->x), off_a = off_d + (size_t)nb * 4;
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0x0F);
    __m256 f[MDOT2_NC];
#pragma GCC unroll 4
    for (int c = 0; c < nc; c++) {
        xr[c] = (const char *)x->x + (size_t)(c0 + c) * x->x_stride;
        f[c] = _mm256_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 16 <= nb; i += 16) {
        if (q4)
            prefetch_weights(&a4[i], 16 * sizeof(block_q4_0));
        else
            prefetch_weights(&a8[i], 16 * sizeof(block_q8_0));
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            /* lane 4 i + g (i < 2) = block 4 g + 2 h + i of the group */
            const int64_t b = i + 2 * h;
            __m256 dw;
            __m256i W[8];
            if (q4) {
                dw = _mm256_cvtph_ps(_mm_setr_epi16((short)a4[b].d, (short)a4[b + 4].d, (short)a4[b + 8].d,
                                                    (short)a4[b + 12].d, (short)a4[b + 1].d, (short)a4[b + 5].d,
                                                    (short)a4[b + 9].d, (short)a4[b + 13].d));
                __m256i z[4], v[4];
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++)
                    z[g] = _mm256_set_m128i(LOADU128(a4[b + 4 * g + 1].qs), LOADU128(a4[b + 4 * g].qs));
                transpose_4x4_lanes(z, v);
#pragma GCC unroll 4
                for (int m = 0; m < 4; m++) {
                    W[m] = _mm256_and_si256(v[m], m4);
                    W[m + 4] = _mm256_and_si256(_mm256_srli_epi16(v[m], 4), m4);
                }
            } else {
                dw = _mm256_cvtph_ps(_mm_setr_epi16((short)a8[b].d, (short)a8[b + 4].d, (short)a8[b + 8].d,
                                                    (short)a8[b + 12].d, (short)a8[b + 1].d, (short)a8[b + 5].d,
                                                    (short)a8[b + 9].d, (short)a8[b + 13].d));
#pragma GCC unroll 2
                for (int q = 0; q < 2; q++) {
                    __m256i z[4];
#pragma GCC unroll 4
                    for (int g = 0; g < 4; g++)
                        z[g] = _mm256_set_m128i(LOADU128(a8[b + 4 * g + 1].qs + 16 * q), LOADU128(a8[b + 4 * g].qs + 16 * q));
                    transpose_4x4_lanes(z, &W[4 * q]);
                }
            }
#pragma GCC unroll 4
            for (int c = 0; c < nc; c++) {
                const char *xg = xr[c] + i * 32 + 32 * h;
                __m256i d = q4 ? LOADU256(xr[c] + off_a + (size_t)(i + 8 * h) * 4) : _mm256_setzero_si256();
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++) {
                    const __m256i xv = _mm256_load_si256((const __m256i *)(const void *)(xg + 64 * j));
                    const __m256i p = q4 ? _mm256_maddubs_epi16(W[j], xv)
                                         : _mm256_maddubs_epi16(_mm256_abs_epi8(W[j]), _mm256_sign_epi8(xv, W[j]));
                    d = _mm256_add_epi32(d, _mm256_madd_epi16(p, ones));
                }
                const __m256 dx = _mm256_loadu_ps((const float *)(const void *)(xr[c] + off_d + (size_t)(i + 8 * h) * 4));
                f[c] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(d), f[c]);
            }
        }
    }
    float tail[MDOT2_NC] = {0};
    for (; i < nb; i++) {
        __m256i q;
        float d;
        if (q4) {
            const __m128i raw = LOADU128(a4[i].qs), n4 = _mm_set1_epi8(0x0F);
            q = _mm256_sub_epi8(_mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), n4), _mm_and_si128(raw, n4)),
                                _mm256_set1_epi8(8));
            d = f16s(a4[i].d);
        } else {
            q = LOADU256(a8[i].qs);
            d = f16s(a8[i].d);
        }
#pragma GCC unroll 4
        for (int c = 0; c < nc; c++) {
            float dx;
            memcpy(&dx, xr[c] + off_d + (size_t)i * 4, 4);
            tail[c] += (d * dx) * (float)hsum_epi32(dot_i8_lanes(q, LOADU256(xr[c] + i * 32)));
        }
    }
#pragma GCC unroll 4
    for (int c = 0; c < nc; c++) out[c] = hsum_ps(f[c]) + tail[c];
}

/* vpshufb control: dword l of each 128-bit lane = byte b0 + 2 l of that lane. */
static inline __m256i pick_even(int b0) {
    return _mm256_broadcastsi128_si256(_mm_setr_epi8((char)b0, -1, -1, -1, (char)(b0 + 2), -1, -1, -1, (char)(b0 + 4),
                                                     -1, -1, -1, (char)(b0 + 6), -1, -1, -1));
}

/* q4_K, 4 super-blocks at a time in the spud_mdot_x_row layout (one group of
 * 32 per 32-bit lane, lane r = chunk r mod 4 of super-block r / 4), in two
 * quarters of 8 lanes as the q4_0 mdot does: quarter u is the lanes of
 * super-blocks i + 2u and i + 2u + 1 (32 bytes at 32 u of each 64-byte vector
 * of the layout). Per quarter, two in-lane 4x4 dword transposes of the 8
 * chunks give W[j] lane r = dword j of the lane's chunk; per activation row
 * and nibble half: 8 maddubs (unsigned nibbles x int8: pairs <= 2 * 15 * 128)
 * summed in 16 bits (8 steps: <= 30720, no overflow) and one madd, the exact
 * sum of each group; then the group scales d * sc * dx and the mins
 * dmin * m * aux in float. Super-blocks past the last full 4 (gemm layout) as
 * the vec_dot: maddubs + madd with the group scales, mins in float lanes. */
static inline __attribute__((always_inline)) void mdot2_q4_K_row(int64_t nb, const void *w, const spud_gemm_x *x,
                                                                 int c0, float *out, const int nc) {
    const block_q4_K *a = w;
    const int64_t ng = nb * 8;
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const char *xr[MDOT2_NC_K];
    const size_t off_d = (size_t)((const char *)x->s - (const char *)x->x), off_a = off_d + (size_t)ng * 4;
    __m256 f[MDOT2_NC_K];
#pragma GCC unroll 8
    for (int c = 0; c < nc; c++) {
        xr[c] = (const char *)x->x + (size_t)(c0 + c) * x->x_stride;
        f[c] = _mm256_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) {
        prefetch_weights(&a[i], 4 * sizeof(block_q4_K));
#pragma GCC unroll 2
        for (int u = 0; u < 2; u++) {
            const block_q4_K *b = &a[i + 2 * u];
            __m256i v[8];
#pragma GCC unroll 2
            for (int e = 0; e < 2; e++) { /* dwords 4e..4e+3 of each chunk */
                __m256i z[4];
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++)
                    z[g] = _mm256_set_m128i(LOADU128(b[1].qs + 32 * g + 16 * e), LOADU128(b[0].qs + 32 * g + 16 * e));
                transpose_4x4_lanes(z, &v[4 * e]);
            }
            const __m256i sm = _mm256_set_m128i(q4_K_scales_vec(b[1].scales), q4_K_scales_vec(b[0].scales));
            const __m256 dv = _mm256_setr_m128(_mm_set1_ps(f16s(b[0].d)), _mm_set1_ps(f16s(b[1].d)));
            const __m256 mv = _mm256_setr_m128(_mm_set1_ps(f16s(b[0].dmin)), _mm_set1_ps(f16s(b[1].dmin)));
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const __m256 S = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(sm, pick_even(h))), dv);
                const __m256 M = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(sm, pick_even(8 + h))), mv);
                __m256i W[8];
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++) W[j] = _mm256_and_si256(h ? _mm256_srli_epi16(v[j], 4) : v[j], m4);
#pragma GCC unroll 8
                for (int c = 0; c < nc; c++) {
                    const char *xg = xr[c] + i * QK_K + 512 * h + 32 * u;
                    __m256i p = _mm256_maddubs_epi16(W[0], LOAD256(xg));
#pragma GCC unroll 8
                    for (int j = 1; j < 8; j++)
                        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(W[j], LOAD256(xg + 64 * j)));
                    const size_t o = ((size_t)i * 8 + 16 * (size_t)h + 8 * (size_t)u) * 4;
                    const __m256 dx = _mm256_loadu_ps((const float *)(const void *)(xr[c] + off_d + o));
                    const __m256 ax = _mm256_loadu_ps((const float *)(const void *)(xr[c] + off_a + o));
                    const __m256 sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
                    f[c] = _mm256_fmadd_ps(_mm256_mul_ps(S, dx), sum, f[c]);
                    f[c] = _mm256_fnmadd_ps(M, ax, f[c]);
                }
            }
        }
    }
    for (; i < nb; i++) {
        const __m128i sc128 = q4_K_scales_vec(a[i].scales);
        const __m256i scm = _mm256_broadcastsi128_si256(sc128);
        const __m256 mins = _mm256_mul_ps(_mm256_set1_ps(f16s(a[i].dmin)),
                                          _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sc128, 8))));
        const float d = f16s(a[i].d);
#pragma GCC unroll 8
        for (int c = 0; c < nc; c++) {
            const char *xb = xr[c] + i * QK_K;
            __m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                const __m256i q = LOADU256(a[i].qs + 32 * j);
                const __m256i plo = _mm256_maddubs_epi16(_mm256_and_si256(q, m4), LOADU256(xb + 64 * j));
                const __m256i phi =
                    _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), LOADU256(xb + 64 * j + 32));
                /* scale g as int16: bytes {g, zero} */
                const __m256i slo = _mm256_shuffle_epi8(scm, _mm256_set1_epi16((short)(0x8000 | (2 * j))));
                const __m256i shi = _mm256_shuffle_epi8(scm, _mm256_set1_epi16((short)(0x8000 | (2 * j + 1))));
                acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(plo, slo), _mm256_madd_epi16(phi, shi)));
            }
            float dx;
            memcpy(&dx, xr[c] + off_d + (size_t)i * 32, 4);
            f[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(acc), f[c]);
            const __m256 ax = _mm256_loadu_ps((const float *)(const void *)(xr[c] + off_a + (size_t)i * 32));
            f[c] = _mm256_fnmadd_ps(mins, ax, f[c]);
        }
    }
#pragma GCC unroll 8
    for (int c = 0; c < nc; c++) out[c] = hsum_ps(f[c]);
}

/* q6_K, one super-block at a time (activations in the gemm layout): the
 * 6-bit values unsigned (0..63) as the vec_dot unpacks them; per activation
 * row the int32 lanes start at sc[g] * aux[g] (aux = -32 Σ x over the group
 * of 16: the offset), then maddubs (pairs <= 2 * 63 * 128) and madd with the
 * group scales; exact per super-block, scaled by d * dx in float. */
static inline __attribute__((always_inline)) void mdot2_q6_K_row(int64_t nb, const void *w, const spud_gemm_x *x,
                                                                 int c0, float *out, const int nc) {
    const block_q6_K *a = w;
    const int64_t ng = nb * 16;
    const int8_t *xq[MDOT2_NC_K];
    const float *xd[MDOT2_NC_K];
    const int32_t *xa[MDOT2_NC_K];
    __m256 f[MDOT2_NC_K];
#pragma GCC unroll 8
    for (int c = 0; c < nc; c++) {
        xq[c] = (const int8_t *)x->x + (size_t)(c0 + c) * x->x_stride;
        xd[c] = x->s + (size_t)(c0 + c) * x->s_stride;
        xa[c] = (const int32_t *)(const void *)(xd[c] + ng);
        f[c] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        prefetch_weights(&a[i], sizeof(block_q6_K));
        const __m128i sc8 = LOADU128(a[i].scales);
        const __m256i sc_lo = _mm256_cvtepi8_epi32(sc8), sc_hi = _mm256_cvtepi8_epi32(_mm_srli_si128(sc8, 8));
        __m256i ai[MDOT2_NC_K];
#pragma GCC unroll 8
        for (int c = 0; c < nc; c++)
            ai[c] = _mm256_add_epi32(_mm256_mullo_epi32(LOADU256(xa[c] + i * 16), sc_lo),
                                     _mm256_mullo_epi32(LOADU256(xa[c] + i * 16 + 8), sc_hi));
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i q[4], s[4];
            q6_K_half_values(a[i].ql + 64 * h, a[i].qh + 32 * h, q);
            /* scales of groups 8h..8h+7 as int16 in both lanes; q[k] covers
             * groups 8h + 2k (low lane) and 8h + 2k + 1 (high lane) */
            const __m256i scv = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(h ? _mm_srli_si128(sc8, 8) : sc8));
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                const __m256i ctl = _mm256_setr_m128i(_mm_set1_epi16((short)(0x0100 * (4 * k + 1) + 4 * k)),
                                                      _mm_set1_epi16((short)(0x0100 * (4 * k + 3) + 4 * k + 2)));
                s[k] = _mm256_shuffle_epi8(scv, ctl);
            }
#pragma GCC unroll 8
            for (int c = 0; c < nc; c++)
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) {
                    const __m256i p = _mm256_maddubs_epi16(q[k], LOADU256(xq[c] + i * QK_K + 128 * h + 32 * k));
                    ai[c] = _mm256_add_epi32(ai[c], _mm256_madd_epi16(p, s[k]));
                }
        }
        const float d = f16s(a[i].d);
#pragma GCC unroll 8
        for (int c = 0; c < nc; c++)
            f[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * xd[c][i * 16]), _mm256_cvtepi32_ps(ai[c]), f[c]);
    }
#pragma GCC unroll 8
    for (int c = 0; c < nc; c++) out[c] = hsum_ps(f[c]);
}

enum { MDOT2_Q4_0, MDOT2_Q8_0, MDOT2_Q4_K, MDOT2_Q6_K };

#define MDOT2_CASE(fn, n, ...)                                                                                         \
    case n: fn(__VA_ARGS__, n); break;

/* fn(..., m) with m a constant: 1..4, or 1..8 for the k-quants */
#define MDOT2_SWITCH4(fn, m, ...)                                                                                      \
    switch (m) {                                                                                                       \
    MDOT2_CASE(fn, 1, __VA_ARGS__) MDOT2_CASE(fn, 2, __VA_ARGS__) MDOT2_CASE(fn, 3, __VA_ARGS__)                       \
    default: fn(__VA_ARGS__, 4); break;                                                                                \
    }
#define MDOT2_SWITCH8(fn, m, ...)                                                                                      \
    switch (m) {                                                                                                       \
    MDOT2_CASE(fn, 1, __VA_ARGS__) MDOT2_CASE(fn, 2, __VA_ARGS__) MDOT2_CASE(fn, 3, __VA_ARGS__)                       \
    MDOT2_CASE(fn, 4, __VA_ARGS__) MDOT2_CASE(fn, 5, __VA_ARGS__) MDOT2_CASE(fn, 6, __VA_ARGS__)                       \
    MDOT2_CASE(fn, 7, __VA_ARGS__)                                                                                     \
    default: fn(__VA_ARGS__, 8); break;                                                                                \
    }

/* Weight row by weight row, the activation rows in passes of up to MDOT2_NC
 * (q4_0, q8_0) or MDOT2_NC_K (q4_K, q6_K) while the weight row is in L1.
 * Long rows are not taken in chunks as in kernels_avx512.c: single thread,
 * 8192 x 8192, chunks by its rule were slower for q6_K (4 rows 6.9-7.3 vs
 * 4.8-5.2 ms, 8 rows 9.7-10.0 vs 8.7-8.8) and no faster for q4_K. */
static inline __attribute__((always_inline)) void mdot2(const int kind, int64_t k, const void *w, size_t rb, int nr,
                                                        const spud_gemm_x *x, int nc, float *y, size_t ldy) {
    const int64_t nb = k / (kind <= MDOT2_Q8_0 ? 32 : QK_K);
    const int per_pass = kind <= MDOT2_Q8_0 ? MDOT2_NC : MDOT2_NC_K;
    for (int r = 0; r < nr; r++)
        for (int c0 = 0; c0 < nc; c0 += per_pass) {
            const int m = nc - c0 < per_pass ? nc - c0 : per_pass;
            const char *row = (const char *)w + (size_t)r * rb;
            float part[MDOT2_NC_K];
            switch (kind) {
            case MDOT2_Q4_0: MDOT2_SWITCH4(mdot2_row, m, true, nb, row, x, c0, part) break;
            case MDOT2_Q8_0: MDOT2_SWITCH4(mdot2_row, m, false, nb, row, x, c0, part) break;
            case MDOT2_Q4_K: MDOT2_SWITCH8(mdot2_q4_K_row, m, nb, row, x, c0, part) break;
            default: MDOT2_SWITCH8(mdot2_q6_K_row, m, nb, row, x, c0, part) break;
            }
            for (int c = 0; c < m; c++) y[(size_t)(c0 + c) * ldy + (size_t)r] = part[c];
        }
}

void spud_mdot_q4_0_avx2(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                         size_t ldy) {
    mdot2(MDOT2_Q4_0, k, w, rb, nr, x, nc, y, ldy);
}

void spud_mdot_q8_0_avx2(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                         size_t ldy) {
    mdot2(MDOT2_Q8_0, k, w, rb, nr, x, nc, y, ldy);
}

void spud_mdot_q4_K_avx2(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                         size_t ldy) {
    mdot2(MDOT2_Q4_K, k, w, rb, nr, x, nc, y, ldy);
}

void spud_mdot_q6_K_avx2(int64_t k, const void *w, size_t rb, int nr, const spud_gemm_x *x, int nc, float *y,
                         size_t ldy) {
    mdot2(MDOT2_Q6_K, k, w, rb, nr, x, nc, y, ldy);
}

const spud_kernel_set spud_kernels_avx2 = {
    .name = "avx2",
    .vec_dot = {
        [SPUD_TYPE_F32] = spud_vec_dot_f32_avx2,
        [SPUD_TYPE_F16] = spud_vec_dot_f16_avx2,
        [SPUD_TYPE_BF16] = spud_vec_dot_bf16_avx2,
        [SPUD_TYPE_Q4_0] = spud_vec_dot_q4_0_q8_0_avx2,
        [SPUD_TYPE_Q8_0] = spud_vec_dot_q8_0_q8_0_avx2,
        [SPUD_TYPE_Q4_K] = spud_vec_dot_q4_K_q8_K_avx2,
        [SPUD_TYPE_Q6_K] = spud_vec_dot_q6_K_q8_K_avx2,
    },
    .to_float = {
        [SPUD_TYPE_F16] = spud_dequant_f16_avx2,
        [SPUD_TYPE_BF16] = spud_dequant_bf16_avx2,
        [SPUD_TYPE_Q4_0] = spud_dequant_q4_0_avx2,
        [SPUD_TYPE_Q8_0] = spud_dequant_q8_0_avx2,
        [SPUD_TYPE_Q4_K] = spud_dequant_q4_K_avx2,
        [SPUD_TYPE_Q6_K] = spud_dequant_q6_K_avx2,
    },
    .from_float = {
        [SPUD_TYPE_Q8_0] = spud_quant_q8_0_avx2,
        [SPUD_TYPE_Q8_K] = spud_quant_q8_K_avx2,
    },
    .dot_f32 = spud_dot_f32_avx2,
    .axpy_f32 = spud_axpy_f32_avx2,
    .attn = spud_attn_avx2,
    .attn_q8 = true,
    .gemm = {
        [SPUD_TYPE_Q4_0] = spud_gemm_q4_0_avx2,
        [SPUD_TYPE_Q8_0] = spud_gemm_q8_0_avx2,
        [SPUD_TYPE_Q4_K] = spud_gemm_q4_K_avx2,
        [SPUD_TYPE_Q6_K] = spud_gemm_q6_K_avx2,
        [SPUD_TYPE_F32] = spud_gemm_f32_avx2,
        [SPUD_TYPE_F16] = spud_gemm_f16_avx2,
        [SPUD_TYPE_BF16] = spud_gemm_bf16_avx2,
    },
    .gemm_rows = GEMM2_ROWS,
    .mdot = {
        [SPUD_TYPE_Q4_0] = spud_mdot_q4_0_avx2,
        [SPUD_TYPE_Q8_0] = spud_mdot_q8_0_avx2,
        [SPUD_TYPE_Q4_K] = spud_mdot_q4_K_avx2,
        [SPUD_TYPE_Q6_K] = spud_mdot_q6_K_avx2,
    },
    /* single thread, weights from memory (Zen 5 running this set), mdot vs
     * gemm at 16 rows: q4_0 2048 x 131072 53.6 vs 61.0 ms, 8192 x 16384 27.4
     * vs 30.0; q8_0 2048 x 65536 35.3 vs 40.8, 8192 x 8192 17.1 vs 21.4; q4_K
     * 2048 x 65536 21.2 vs 29.9, 8192 x 8192 12.9 vs 14.3; q6_K 2048 x 65536
     * 30.7 vs 37.7, 8192 x 8192 16.2 vs 17.3 (at 17 rows 17.7 vs 18.2). The
     * q4_0 / q8_0 mdot lost to the gemm from 7 rows before its prefetches
     * came back (e31b1ea). */
    .mdot_max = {[SPUD_TYPE_Q4_0] = 16, [SPUD_TYPE_Q8_0] = 16, [SPUD_TYPE_Q4_K] = 16, [SPUD_TYPE_Q6_K] = 16},
    .swiglu_f32 = spud_swiglu_f32_avx2,
};
