/* tensor.c: element types (the type table), fp16/bf16 conversion, the scalar
 * reference kernels for every type, and run-time kernel dispatch.
 *
 * Block layouts and the dequantization math are GGML's (ggml-common.h,
 * ggml-quants.c); the weight quantizers follow GGML's reference algorithms
 * (q4_K: weighted min/scale search per 32-group; q6_K: weighted scale search
 * per 16-group), so files we write load elsewhere and vice versa.
 */
#include "kernels.h" /* first: sets the floating-point contraction mode */

#include <cpuid.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core.h"

/* ------------------------------------------------------------------------ */
/* fp16 / bf16                                                               */
/* ------------------------------------------------------------------------ */

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float spud_f16_to_f32(spud_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t mant = h & 0x3FFu;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (mant << 13)); /* inf, NaN (payload kept) */
    if (exp != 0) return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
    /* zero or subnormal: mant * 2^-24, exact in f32 */
    return bits_f32(sign | f32_bits((float)mant * 0x1p-24f));
}

spud_f16 spud_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7FFFFFFFu;
    if (x > 0x7F800000u) { /* NaN: keep the top payload bits, stay a NaN */
        uint16_t m = (uint16_t)((x >> 13) & 0x3FFu);
        return (spud_f16)(sign | 0x7C00u | (m ? m : 0x200u));
    }
    if (x >= 0x477FF000u) return (spud_f16)(sign | 0x7C00u); /* >= 65520 rounds to inf */
    if (x >= 0x38800000u) { /* normal half: rebias, round the 13 dropped bits to nearest even */
        uint32_t h = (x - 0x38000000u) >> 13;
        uint32_t rem = x & 0x1FFFu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
        return (spud_f16)(sign | h);
    }
    /* subnormal half or zero: value in units of 2^-24 is mant * 2^(e - 126) */
    uint32_t e = x >> 23;
    if (e < 102) return sign; /* < 2^-25: rounds to zero (2^-25 itself ties to even zero) */
    uint32_t mant = (x & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return (spud_f16)(sign | h);
}

float spud_bf16_to_f32(spud_bf16 h) { return bits_f32((uint32_t)h << 16); }

spud_bf16 spud_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) { /* NaN: truncate, but never to inf */
        uint16_t h = (uint16_t)(u >> 16);
        return (spud_bf16)((h & 0x7F) ? h : (h | 0x40));
    }
    return (spud_bf16)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}

#define F16(h) spud_f16_to_f32(h)

/* ------------------------------------------------------------------------ */
/* Rounding helpers shared by the quantizers                                 */
/* ------------------------------------------------------------------------ */

/* Round to nearest, ties to even (GGML's nearest_int), for |f| < 2^22;
 * larger magnitudes and NaN are clamped first so nothing is undefined. */
static inline int nearest_int(float f) {
    if (!(f > -4194303.f)) f = -4194303.f;
    if (f > 4194303.f) f = 4194303.f;
    float v = f + 12582912.f; /* 1.5 * 2^23: the sum's low mantissa bits are the integer */
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007FFFFF) - 0x00400000;
}

/* Clamp to [lo, hi] the way SIMD max-then-min does (NaN becomes lo). */
static inline float clampf_simd(float v, float lo, float hi) {
    v = v > lo ? v : lo;
    return v < hi ? v : hi;
}

#define GROUP_MAX_EPS 1e-15f

/* ------------------------------------------------------------------------ */
/* F32 / F16 / BF16                                                          */
/* ------------------------------------------------------------------------ */

void spud_dequant_f32_ref(const void *x, float *y, int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
}

void spud_quant_f32_ref(const float *x, void *y, int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
}

void spud_dequant_f16_ref(const void *vx, float *y, int64_t n) {
    const spud_f16 *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = F16(x[i]);
}

void spud_quant_f16_ref(const float *x, void *vy, int64_t n) {
    spud_f16 *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = spud_f32_to_f16(x[i]);
}

void spud_dequant_bf16_ref(const void *vx, float *y, int64_t n) {
    const spud_bf16 *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = spud_bf16_to_f32(x[i]);
}

void spud_quant_bf16_ref(const float *x, void *vy, int64_t n) {
    spud_bf16 *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = spud_f32_to_bf16(x[i]);
}

/* The float dots sum in double: they are the yardstick the SIMD versions
 * (float accumulators) are measured against. */
void spud_vec_dot_f32_ref(int64_t n, float *s, const void *w, const void *x) {
    const float *a = w, *b = x;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)a[i] * b[i];
    *s = (float)sum;
}

void spud_vec_dot_f16_ref(int64_t n, float *s, const void *w, const void *x) {
    const spud_f16 *a = w;
    const float *b = x;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)F16(a[i]) * b[i];
    *s = (float)sum;
}

void spud_vec_dot_bf16_ref(int64_t n, float *s, const void *w, const void *x) {
    const spud_bf16 *a = w;
    const float *b = x;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)spud_bf16_to_f32(a[i]) * b[i];
    *s = (float)sum;
}

float spud_dot_f32_ref(const float *a, const float *b, int64_t n) {
    float s;
    spud_vec_dot_f32_ref(n, &s, a, b);
    return s;
}

void spud_axpy_f32_ref(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

void spud_swiglu_f32_ref(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* ------------------------------------------------------------------------ */
/* Q8_0: x = d * q, q in [-127, 127], d = amax / 127 (fp16)                  */
/* ------------------------------------------------------------------------ */

/* As GGML's quantize_row_q8_0_ref: id = 1/d from the f32 d (not the fp16
 * one), q = roundf(x * id) (half away from zero). The clamp only matters for
 * non-finite input or a subnormal amax, where 1/d overflows. */
void spud_quant_q8_0_ref(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        float amax = 0;
        for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.f;
        const float id = d != 0.f ? 1.f / d : 0.f;
        y[b].d = spud_f32_to_f16(d);
        for (int j = 0; j < QK8_0; j++)
            y[b].qs[j] = (int8_t)roundf(clampf_simd(x[j] * id, -127.f, 127.f));
    }
}

void spud_dequant_q8_0_ref(const void *vx, float *y, int64_t n) {
    const block_q8_0 *x = vx;
    for (int64_t b = 0; b < n / QK8_0; b++) {
        const float d = F16(x[b].d);
        for (int j = 0; j < QK8_0; j++) y[b * QK8_0 + j] = x[b].qs[j] * d;
    }
}

void spud_vec_dot_q8_0_q8_0_ref(int64_t n, float *s, const void *w, const void *xv) {
    const block_q8_0 *a = w, *b = xv;
    float sum = 0;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        int32_t isum = 0;
        for (int j = 0; j < QK8_0; j++) isum += a[i].qs[j] * b[i].qs[j];
        sum += (float)isum * (F16(a[i].d) * F16(b[i].d));
    }
    *s = sum;
}

/* ------------------------------------------------------------------------ */
/* Q4_0: x = d * (q - 8), q in [0, 15]; low nibble = element j, high = j+16  */
/* ------------------------------------------------------------------------ */

/* As GGML's quantize_row_q4_0_ref: d = max / -8 where max is the signed value
 * of largest magnitude, so that value maps exactly to q = 0. */
void spud_quant_q4_0_ref(const float *x, void *vy, int64_t n) {
    block_q4_0 *y = vy;
    for (int64_t b = 0; b < n / QK4_0; b++, x += QK4_0) {
        float amax = 0, max = 0;
        for (int j = 0; j < QK4_0; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8.f;
        const float id = d != 0.f ? 1.f / d : 0.f;
        y[b].d = spud_f32_to_f16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            /* x*id + 8.5 is in [0.5, 16.5]; truncating gives round-half-up */
            float v0 = clampf_simd(x[j] * id + 8.5f, 0.f, 15.f);
            float v1 = clampf_simd(x[j + QK4_0 / 2] * id + 8.5f, 0.f, 15.f);
            y[b].qs[j] = (uint8_t)((int)v0 | ((int)v1 << 4));
        }
    }
}

void spud_dequant_q4_0_ref(const void *vx, float *y, int64_t n) {
    const block_q4_0 *x = vx;
    for (int64_t b = 0; b < n / QK4_0; b++, y += QK4_0) {
        const float d = F16(x[b].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = ((x[b].qs[j] & 0x0F) - 8) * d;
            y[j + QK4_0 / 2] = ((x[b].qs[j] >> 4) - 8) * d;
        }
    }
}

void spud_vec_dot_q4_0_q8_0_ref(int64_t n, float *s, const void *w, const void *xv) {
    const block_q4_0 *a = w;
    const block_q8_0 *b = xv;
    float sum = 0;
    for (int64_t i = 0; i < n / QK4_0; i++) {
        int32_t isum = 0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            isum += ((a[i].qs[j] & 0x0F) - 8) * b[i].qs[j];
            isum += ((a[i].qs[j] >> 4) - 8) * b[i].qs[j + QK4_0 / 2];
        }
        sum += (float)isum * (F16(a[i].d) * F16(b[i].d));
    }
    *s = sum;
}

/* ------------------------------------------------------------------------ */
/* Q8_K: activations for the k-quant dots. x = d * q, d = max / -127 (f32)   */
/* ------------------------------------------------------------------------ */

/* As GGML's quantize_row_q8_K_ref: max is the signed value of largest
 * magnitude (first one on ties), iscale = -127/max, q = min(127, round-half-even
 * (iscale*x)), d = 1/iscale, bsums = sums of 16 consecutive q. */
void spud_quant_q8_K_ref(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float amax = 0, max = 0;
        for (int j = 0; j < QK_K; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        if (amax == 0.f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++)
            y[b].qs[j] = (int8_t)nearest_int(clampf_simd(iscale * x[j], -128.f, 127.f));
        for (int g = 0; g < QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += y[b].qs[g * 16 + j];
            y[b].bsums[g] = (int16_t)sum;
        }
        y[b].d = 1.f / iscale;
    }
}

void spud_dequant_q8_K_ref(const void *vx, float *y, int64_t n) {
    const block_q8_K *x = vx;
    for (int64_t b = 0; b < n / QK_K; b++)
        for (int j = 0; j < QK_K; j++) y[b * QK_K + j] = x[b].d * x[b].qs[j];
}

/* ------------------------------------------------------------------------ */
/* Q4_K: 8 groups of 32; x = d*sc[g] * q - dmin*m[g], q in [0, 15],          */
/* sc and m 6-bit. Bytes qs[32c..32c+32): low nibbles = group 2c, high =     */
/* group 2c+1.                                                               */
/* ------------------------------------------------------------------------ */

/* Weighted least-squares fit of x ≈ scale*L + min (min <= 0, L in [0, nmax]):
 * start from the min/max range, then try nstep+1 stretched inverse scales
 * (rmin + rdelta*is + nmax)/(max - min), solve for the best scale and min
 * given each rounding, and keep the one with the smallest weighted squared
 * error. GGML's make_qkx2_quants. Returns scale; *neg_min = -min >= 0. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           uint8_t *Ltry, float *neg_min, float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0];
    float sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_err = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
        float diff = scale * L[i] + min - x[i];
        best_err += w[i] * diff * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * (x[i] - min));
            l = l < 0 ? 0 : l > nmax ? nmax : l;
            Ltry[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        float det = sum_w * sum_l2 - sum_l * sum_l;
        if (det <= 0) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float err = 0;
        for (int i = 0; i < n; i++) {
            float diff = this_scale * Ltry[i] + this_min - x[i];
            err += w[i] * diff * diff;
        }
        if (err < best_err) {
            memcpy(L, Ltry, (size_t)n);
            best_err = err;
            scale = this_scale;
            min = this_min;
        }
    }
    *neg_min = -min;
    return scale;
}

/* Pack 8 six-bit scales and mins into GGML's 12-byte layout: bytes 0-3 hold
 * sc0-3 (+ top bits of sc4-7 in bits 6-7), bytes 4-7 m0-3 (+ top bits of
 * m4-7), bytes 8-11 the low nibbles of sc4-7 and m4-7. */
static void q4_K_pack_scales(const uint8_t sc[8], const uint8_t mn[8], uint8_t out[12]) {
    for (int j = 0; j < 4; j++) {
        out[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        out[j + 4] = (uint8_t)(mn[j] | ((mn[j + 4] >> 4) << 6));
        out[j + 8] = (uint8_t)((sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4));
    }
}

void spud_quant_q4_K_ref(const float *x, void *vy, int64_t n) {
    block_q4_K *y = vy;
    uint8_t L[QK_K], Ltry[32];
    float w[32], scales[8], mins[8];
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float max_scale = 0, max_min = 0;
        for (int g = 0; g < 8; g++) {
            const float *xg = x + 32 * g;
            float sum_x2 = 0;
            for (int i = 0; i < 32; i++) sum_x2 += xg[i] * xg[i];
            const float av_x = sqrtf(sum_x2 / 32);
            for (int i = 0; i < 32; i++) w[i] = av_x + fabsf(xg[i]);
            scales[g] = fit_scale_min(32, 15, xg, w, L + 32 * g, Ltry, &mins[g], -1.f, 0.1f, 20);
            if (scales[g] > max_scale) max_scale = scales[g];
            if (mins[g] > max_min) max_min = mins[g];
        }
        /* 6-bit scales and mins relative to the block's largest */
        const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        uint8_t sc[8], mn[8];
        for (int g = 0; g < 8; g++) {
            int ls = nearest_int(inv_scale * scales[g]);
            int lm = nearest_int(inv_min * mins[g]);
            sc[g] = (uint8_t)(ls < 0 ? 0 : ls > 63 ? 63 : ls);
            mn[g] = (uint8_t)(lm < 0 ? 0 : lm > 63 ? 63 : lm);
        }
        q4_K_pack_scales(sc, mn, y[b].scales);
        y[b].d = spud_f32_to_f16(max_scale / 63.f);
        y[b].dmin = spud_f32_to_f16(max_min / 63.f);
        /* requantize against the scales as stored */
        const float d = F16(y[b].d), dmin = F16(y[b].dmin);
        for (int g = 0; g < 8; g++) {
            const float dg = d * sc[g];
            if (dg == 0.f) continue;
            const float mg = dmin * mn[g];
            for (int i = 0; i < 32; i++) {
                int l = nearest_int((x[32 * g + i] + mg) / dg);
                L[32 * g + i] = (uint8_t)(l < 0 ? 0 : l > 15 ? 15 : l);
            }
        }
        for (int c = 0; c < 4; c++)
            for (int i = 0; i < 32; i++)
                y[b].qs[32 * c + i] = (uint8_t)(L[64 * c + i] | (L[64 * c + 32 + i] << 4));
    }
}

void spud_dequant_q4_K_ref(const void *vx, float *y, int64_t n) {
    const block_q4_K *x = vx;
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = F16(x[b].d), dmin = F16(x[b].dmin);
        uint8_t sc[8], mn[8];
        spud_q4_K_unpack_scales(x[b].scales, sc, mn);
        for (int c = 0; c < 4; c++) {
            const uint8_t *q = x[b].qs + 32 * c;
            const float d1 = d * sc[2 * c], m1 = dmin * mn[2 * c];
            const float d2 = d * sc[2 * c + 1], m2 = dmin * mn[2 * c + 1];
            for (int i = 0; i < 32; i++) *y++ = d1 * (q[i] & 0x0F) - m1;
            for (int i = 0; i < 32; i++) *y++ = d2 * (q[i] >> 4) - m2;
        }
    }
}

/* sum = d*Σ_g sc[g]*Σ q*y - dmin*Σ_g m[g]*(bsum pair of g), with d and dmin
 * carrying the activation scale. The integer sums are exact; SIMD versions
 * reproduce the float steps below exactly. */
void spud_vec_dot_q4_K_q8_K_ref(int64_t n, float *s, const void *w, const void *xv) {
    const block_q4_K *a = w;
    const block_q8_K *b = xv;
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t sc[8], mn[8];
        spud_q4_K_unpack_scales(a[i].scales, sc, mn);
        int32_t isum = 0, imin = 0;
        for (int c = 0; c < 4; c++) {
            const uint8_t *q = a[i].qs + 32 * c;
            const int8_t *y = b[i].qs + 64 * c;
            int32_t lo = 0, hi = 0;
            for (int j = 0; j < 32; j++) {
                lo += (q[j] & 0x0F) * y[j];
                hi += (q[j] >> 4) * y[j + 32];
            }
            isum += lo * sc[2 * c] + hi * sc[2 * c + 1];
        }
        for (int g = 0; g < 8; g++) imin += mn[g] * (b[i].bsums[2 * g] + b[i].bsums[2 * g + 1]);
        const float d = F16(a[i].d) * b[i].d;
        const float dmin = F16(a[i].dmin) * b[i].d;
        sum += d * (float)isum - dmin * (float)imin;
    }
    *s = sum;
}

/* ------------------------------------------------------------------------ */
/* Q6_K: 16 groups of 16; x = d * sc[g] * (q - 32), q 6-bit, sc int8.        */
/* For half h (128 elements) and l in [0, 32): ql[64h+l] low/high nibble =   */
/* elements 128h+l / 128h+l+64, ql[64h+32+l] = 128h+l+32 / 128h+l+96; the   */
/* 2-bit pairs of qh[32h+l] (bits 0,2,4,6) are the top bits of l, l+32,      */
/* l+64, l+96.                                                              */
/* ------------------------------------------------------------------------ */

/* Weighted fit x ≈ scale * (L - nmax), L in [0, 2*nmax), weights x^2: start
 * at iscale = -nmax/max (max the signed largest-magnitude value), then try
 * iscale = -(nmax + 0.1*is)/max for is in [-9, 9] and keep the least-squares
 * scale with the best sum(w*x*l)^2/sum(w*l^2). GGML's make_qx_quants with
 * rmse_type 1. Returns the scale. */
static float fit_scale_sym(int n, int nmax, const float *x, int8_t *L) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * x[i]);
        l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * x[i]);
            l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = nearest_int(iscale * x[i]);
                l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
                L[i] = (int8_t)(l + nmax);
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

void spud_quant_q6_K_ref(const float *x, void *vy, int64_t n) {
    block_q6_K *y = vy;
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int g = 0; g < QK_K / 16; g++) {
            scales[g] = fit_scale_sym(16, 32, x + 16 * g, L + 16 * g);
            if (fabsf(scales[g]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[g]);
                max_scale = scales[g];
            }
        }
        memset(&y[b], 0, sizeof y[b]);
        if (max_abs_scale < GROUP_MAX_EPS) continue; /* all zero */
        /* 8-bit group scales; the largest maps to -128 */
        const float iscale = -128.f / max_scale;
        y[b].d = spud_f32_to_f16(1 / iscale);
        for (int g = 0; g < QK_K / 16; g++) {
            int l = nearest_int(iscale * scales[g]);
            y[b].scales[g] = (int8_t)(l < -128 ? -128 : l > 127 ? 127 : l);
        }
        /* requantize against the scales as stored */
        for (int g = 0; g < QK_K / 16; g++) {
            const float dg = F16(y[b].d) * y[b].scales[g];
            if (dg == 0.f) continue;
            for (int i = 0; i < 16; i++) {
                int l = nearest_int(x[16 * g + i] / dg);
                l = l < -32 ? -32 : l > 31 ? 31 : l;
                L[16 * g + i] = (int8_t)(l + 32);
            }
        }
        for (int h = 0; h < 2; h++) {
            uint8_t *ql = y[b].ql + 64 * h, *qh = y[b].qh + 32 * h;
            const int8_t *Lh = L + 128 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((Lh[l] & 0x0F) | ((Lh[l + 64] & 0x0F) << 4));
                ql[l + 32] = (uint8_t)((Lh[l + 32] & 0x0F) | ((Lh[l + 96] & 0x0F) << 4));
                qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                  ((Lh[l + 96] >> 4) << 6));
            }
        }
    }
}

/* The 256 values q - 32 (-32..31) of a q6_K block, in element order. */
static void q6_K_values(const block_q6_K *x, int8_t v[QK_K]) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = x->ql + 64 * h, *qh = x->qh + 32 * h;
        int8_t *vh = v + 128 * h;
        for (int l = 0; l < 32; l++) {
            vh[l] = (int8_t)(((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32);
            vh[l + 32] = (int8_t)(((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32);
            vh[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            vh[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

void spud_dequant_q6_K_ref(const void *vx, float *y, int64_t n) {
    const block_q6_K *x = vx;
    int8_t v[QK_K];
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        const float d = F16(x[b].d);
        q6_K_values(&x[b], v);
        for (int e = 0; e < QK_K; e++) y[e] = d * x[b].scales[e / 16] * v[e];
    }
}

void spud_vec_dot_q6_K_q8_K_ref(int64_t n, float *s, const void *w, const void *xv) {
    const block_q6_K *a = w;
    const block_q8_K *b = xv;
    int8_t v[QK_K];
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        q6_K_values(&a[i], v);
        int32_t isum = 0;
        for (int g = 0; g < QK_K / 16; g++) {
            int32_t gsum = 0;
            for (int j = 0; j < 16; j++) gsum += v[16 * g + j] * b[i].qs[16 * g + j];
            isum += gsum * a[i].scales[g];
        }
        sum += (F16(a[i].d) * b[i].d) * (float)isum;
    }
    *s = sum;
}

/* ------------------------------------------------------------------------ */
/* The type table                                                            */
/* ------------------------------------------------------------------------ */

/* Names of every GGML type id (ggml.h's enum ggml_type, ggml.c's type_name);
 * ids GGML removed keep their old names. Entries past this table print as
 * "type<N>". */
static const char *const ggml_type_names[] = {
    [0] = "f32",         [1] = "f16",          [2] = "q4_0",        [3] = "q4_1",
    [4] = "q4_2",        [5] = "q4_3",         [6] = "q5_0",        [7] = "q5_1",
    [8] = "q8_0",        [9] = "q8_1",         [10] = "q2_K",       [11] = "q3_K",
    [12] = "q4_K",       [13] = "q5_K",        [14] = "q6_K",       [15] = "q8_K",
    [16] = "iq2_xxs",    [17] = "iq2_xs",      [18] = "iq3_xxs",    [19] = "iq1_s",
    [20] = "iq4_nl",     [21] = "iq3_s",       [22] = "iq2_s",      [23] = "iq4_xs",
    [24] = "i8",         [25] = "i16",         [26] = "i32",        [27] = "i64",
    [28] = "f64",        [29] = "iq1_m",       [30] = "bf16",       [31] = "q4_0_4_4",
    [32] = "q4_0_4_8",   [33] = "q4_0_8_8",    [34] = "tq1_0",      [35] = "tq2_0",
    [36] = "iq4_nl_4_4", [37] = "iq4_nl_4_8",  [38] = "iq4_nl_8_8", [39] = "mxfp4",
    [40] = "nvfp4",      [41] = "q1_0",
};
#define N_GGML_NAMES ((uint32_t)(sizeof ggml_type_names / sizeof ggml_type_names[0]))

/* Block geometry of GGML types we cannot compute with, so row sizes of any
 * tensor in a file can still be checked ({elements, bytes} per block;
 * ggml-common.h). Removed and unknown ids stay {0, 0}. */
static const struct {
    int64_t block_size;
    size_t type_size;
} ggml_type_sizes[] = {
    [0] = {1, 4},      [1] = {1, 2},      [2] = {32, 18},    [3] = {32, 20},   [6] = {32, 22},
    [7] = {32, 24},    [8] = {32, 34},    [9] = {32, 36},    [10] = {256, 84}, [11] = {256, 110},
    [12] = {256, 144}, [13] = {256, 176}, [14] = {256, 210}, [15] = {256, 292}, [16] = {256, 66},
    [17] = {256, 74},  [18] = {256, 98},  [19] = {256, 50},  [20] = {32, 18},  [21] = {256, 110},
    [22] = {256, 82},  [23] = {256, 136}, [24] = {1, 1},     [25] = {1, 2},    [26] = {1, 4},
    [27] = {1, 8},     [28] = {1, 8},     [29] = {256, 56},  [30] = {1, 2},    [34] = {256, 54},
    [35] = {256, 66},  [39] = {32, 17},   [40] = {64, 36},
};
#define N_GGML_SIZES ((uint32_t)(sizeof ggml_type_sizes / sizeof ggml_type_sizes[0]))

/* Dispatched entries start as the references; spud_kernels_init overwrites
 * them once. */
static spud_type_info type_table[SPUD_TYPE_COUNT] = {
    [SPUD_TYPE_F32] = {.name = "f32", .block_size = 1, .type_size = sizeof(float),
                       .is_quantized = false, .vec_dot_type = SPUD_TYPE_F32,
                       .to_float = spud_dequant_f32_ref, .from_float = spud_quant_f32_ref,
                       .from_float_ref = spud_quant_f32_ref, .vec_dot = spud_vec_dot_f32_ref,
                       .vec_dot_ref = spud_vec_dot_f32_ref},
    [SPUD_TYPE_F16] = {.name = "f16", .block_size = 1, .type_size = sizeof(spud_f16),
                       .is_quantized = false, .vec_dot_type = SPUD_TYPE_F32,
                       .to_float = spud_dequant_f16_ref, .from_float = spud_quant_f16_ref,
                       .from_float_ref = spud_quant_f16_ref, .vec_dot = spud_vec_dot_f16_ref,
                       .vec_dot_ref = spud_vec_dot_f16_ref},
    [SPUD_TYPE_BF16] = {.name = "bf16", .block_size = 1, .type_size = sizeof(spud_bf16),
                        .is_quantized = false, .vec_dot_type = SPUD_TYPE_F32,
                        .to_float = spud_dequant_bf16_ref, .from_float = spud_quant_bf16_ref,
                        .from_float_ref = spud_quant_bf16_ref, .vec_dot = spud_vec_dot_bf16_ref,
                        .vec_dot_ref = spud_vec_dot_bf16_ref},
    [SPUD_TYPE_Q4_0] = {.name = "q4_0", .block_size = QK4_0, .type_size = sizeof(block_q4_0),
                        .is_quantized = true, .vec_dot_type = SPUD_TYPE_Q8_0,
                        .to_float = spud_dequant_q4_0_ref, .from_float = spud_quant_q4_0_ref,
                        .from_float_ref = spud_quant_q4_0_ref,
                        .vec_dot = spud_vec_dot_q4_0_q8_0_ref,
                        .vec_dot_ref = spud_vec_dot_q4_0_q8_0_ref,
                        .gemm_group = 32},
    [SPUD_TYPE_Q8_0] = {.name = "q8_0", .block_size = QK8_0, .type_size = sizeof(block_q8_0),
                        .is_quantized = true, .vec_dot_type = SPUD_TYPE_Q8_0,
                        .to_float = spud_dequant_q8_0_ref, .from_float = spud_quant_q8_0_ref,
                        .from_float_ref = spud_quant_q8_0_ref,
                        .vec_dot = spud_vec_dot_q8_0_q8_0_ref,
                        .vec_dot_ref = spud_vec_dot_q8_0_q8_0_ref,
                        .gemm_group = 32},
    [SPUD_TYPE_Q4_K] = {.name = "q4_K", .block_size = QK_K, .type_size = sizeof(block_q4_K),
                        .is_quantized = true, .vec_dot_type = SPUD_TYPE_Q8_K,
                        .to_float = spud_dequant_q4_K_ref, .from_float = spud_quant_q4_K_ref,
                        .from_float_ref = spud_quant_q4_K_ref,
                        .vec_dot = spud_vec_dot_q4_K_q8_K_ref,
                        .vec_dot_ref = spud_vec_dot_q4_K_q8_K_ref,
                        .gemm_group = 32},
    [SPUD_TYPE_Q6_K] = {.name = "q6_K", .block_size = QK_K, .type_size = sizeof(block_q6_K),
                        .is_quantized = true, .vec_dot_type = SPUD_TYPE_Q8_K,
                        .to_float = spud_dequant_q6_K_ref, .from_float = spud_quant_q6_K_ref,
                        .from_float_ref = spud_quant_q6_K_ref,
                        .vec_dot = spud_vec_dot_q6_K_q8_K_ref,
                        .vec_dot_ref = spud_vec_dot_q6_K_q8_K_ref,
                        .gemm_group = 16},
    /* activations only: no vec_dot of its own */
    [SPUD_TYPE_Q8_K] = {.name = "q8_K", .block_size = QK_K, .type_size = sizeof(block_q8_K),
                        .is_quantized = true, .vec_dot_type = SPUD_TYPE_Q8_K,
                        .to_float = spud_dequant_q8_K_ref, .from_float = spud_quant_q8_K_ref,
                        .from_float_ref = spud_quant_q8_K_ref},
};

const spud_type_info *spud_type_get(uint32_t type) {
    if (type >= SPUD_TYPE_COUNT || !type_table[type].name) return NULL;
    return &type_table[type];
}

const char *spud_type_name(uint32_t type) {
    static _Thread_local char buf[24];
    if (type < N_GGML_NAMES && ggml_type_names[type]) return ggml_type_names[type];
    snprintf(buf, sizeof buf, "type%u", (unsigned)type);
    return buf;
}

int spud_type_from_name(const char *name) {
    if (!name) return -1;
    for (uint32_t t = 0; t < N_GGML_NAMES; t++)
        if (ggml_type_names[t] && strcasecmp(name, ggml_type_names[t]) == 0) return (int)t;
    return -1;
}

size_t spud_row_size(spud_type t, int64_t n) {
    if ((uint32_t)t >= N_GGML_SIZES || n < 0) return 0;
    const int64_t bs = ggml_type_sizes[t].block_size;
    if (bs == 0 || n % bs != 0) return 0;
    uint64_t bytes;
    if (!spud_mul_ok((uint64_t)(n / bs), ggml_type_sizes[t].type_size, &bytes) || bytes > SIZE_MAX)
        return 0;
    return (size_t)bytes;
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                  */
/* ------------------------------------------------------------------------ */

const spud_kernel_set spud_kernels_scalar = {
    .name = "scalar",
    .dot_f32 = spud_dot_f32_ref,
    .axpy_f32 = spud_axpy_f32_ref,
};

const spud_kernel_set *spud_kernel_set_get(spud_isa isa) {
    switch (isa) {
    case SPUD_ISA_AVX2: return &spud_kernels_avx2;
    case SPUD_ISA_AVX512: return &spud_kernels_avx512;
    case SPUD_ISA_AMX: return &spud_kernels_amx;
    default: return &spud_kernels_scalar;
    }
}

/* CPUID.1:ECX bit 29 (clang's __builtin_cpu_supports has no "f16c"). */
static bool cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}

static bool cpu_has_avx512(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
}

/* AMX-TILE, AMX-INT8 and AMX-BF16 (CPUID.(7,0):EDX bits 24, 25, 22), the tile state
 * enabled by the OS (XCR0 bits 17, 18), and Linux's leave for this process
 * to use it (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA, Linux 5.16+;
 * without it the first tile instruction kills the process). Asked once. */
static bool amx_usable;
static void amx_probe(void) {
    unsigned a, b, c, d;
    const unsigned tile_bits = 1u << 24 | 1u << 25 | 1u << 22;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || (d & tile_bits) != tile_bits) return;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return; /* OSXSAVE: xgetbv works */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return;
    amx_usable = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}
static bool cpu_has_amx(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, amx_probe);
    return amx_usable;
}

bool spud_cpu_has(spud_isa isa) {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      cpu_has_f16c();
    switch (isa) {
    case SPUD_ISA_SCALAR: return true;
    case SPUD_ISA_AVX2: return avx2;
    case SPUD_ISA_AVX512: return avx2 && cpu_has_avx512();
    case SPUD_ISA_AMX: return avx2 && cpu_has_avx512() && cpu_has_amx();
    default: return false;
    }
}

/* spud_dot_f32 / spud_axpy_f32 read these on every call (from any thread);
 * relaxed atomics make the one-time switch well defined. */
static _Atomic(spud_dot_f32_fn) dot_f32_fn = spud_dot_f32_ref;
static _Atomic(spud_axpy_f32_fn) axpy_f32_fn = spud_axpy_f32_ref;
static _Atomic(spud_attn_fn) attn_fn = spud_attn_ref;
static _Atomic(spud_swiglu_fn) swiglu_fn = spud_swiglu_f32_ref;
static _Atomic(bool) attn_q8_simd = false, attn_simd = false;

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *init_isa; /* NULL until the first call; guarded by init_lock */

/* The first call decides; later calls (whatever their argument) return the
 * same name. Safe to call from several threads at once, but the table is
 * written in place: make the first call before other threads use kernels. */
const char *spud_kernels_init(bool force_scalar) {
    pthread_mutex_lock(&init_lock);
    if (!init_isa) {
        const char *env = getenv("SPUD_SCALAR");
        const bool scalar = force_scalar || (env && env[0] && strcmp(env, "0") != 0);
        spud_isa isa = SPUD_ISA_SCALAR;
        if (!scalar) {
            if (spud_cpu_has(SPUD_ISA_AMX)) isa = SPUD_ISA_AMX;
            else if (spud_cpu_has(SPUD_ISA_AVX512)) isa = SPUD_ISA_AVX512;
            else if (spud_cpu_has(SPUD_ISA_AVX2)) isa = SPUD_ISA_AVX2;
        }
        /* SPUD_ISA caps the choice (to measure or test a lower set here) */
        const char *cap = getenv("SPUD_ISA");
        if (cap && !strcmp(cap, "avx512") && isa > SPUD_ISA_AVX512) isa = SPUD_ISA_AVX512;
        if (cap && !strcmp(cap, "avx2") && isa > SPUD_ISA_AVX2) isa = SPUD_ISA_AVX2;
        if (cap && !strcmp(cap, "scalar")) isa = SPUD_ISA_SCALAR;
        const spud_kernel_set *ks = spud_kernel_set_get(isa);
        for (int t = 0; t < SPUD_TYPE_COUNT; t++) {
            spud_type_info *ti = &type_table[t];
            if (!ti->name) continue;
            if (ks->vec_dot[t]) ti->vec_dot = ks->vec_dot[t];
            if (ks->to_float[t]) ti->to_float = ks->to_float[t];
            if (ks->from_float[t]) ti->from_float = ks->from_float[t];
            if (ks->gemm[t]) {
                ti->gemm = ks->gemm[t];
                ti->gemm_rows = ks->gemm_rows;
            }
            ti->gemm_x_rows = t == SPUD_TYPE_BF16 && ks->gemm_bf16_split;
            if (ks->mdot[t]) {
                ti->mdot = ks->mdot[t];
                ti->mdot_max = ks->mdot_max[t];
            }
        }
        atomic_store_explicit(&dot_f32_fn, ks->dot_f32 ? ks->dot_f32 : spud_dot_f32_ref, memory_order_relaxed);
        atomic_store_explicit(&axpy_f32_fn, ks->axpy_f32 ? ks->axpy_f32 : spud_axpy_f32_ref,
                              memory_order_relaxed);
        atomic_store_explicit(&attn_fn, ks->attn ? ks->attn : spud_attn_ref, memory_order_relaxed);
        atomic_store_explicit(&attn_simd, ks->attn != NULL, memory_order_relaxed);
        atomic_store_explicit(&attn_q8_simd, ks->attn && ks->attn_q8, memory_order_relaxed);
        atomic_store_explicit(&swiglu_fn, ks->swiglu_f32 ? ks->swiglu_f32 : spud_swiglu_f32_ref, memory_order_relaxed);
        init_isa = ks->name;
        spud_log(SPUD_LOG_DEBUG, "kernels: %s", init_isa);
    }
    const char *isa = init_isa;
    pthread_mutex_unlock(&init_lock);
    return isa;
}

float spud_dot_f32(const float *a, const float *b, int64_t n) {
    return atomic_load_explicit(&dot_f32_fn, memory_order_relaxed)(a, b, n);
}

void spud_axpy_f32(float *y, float a, const float *x, int64_t n) {
    atomic_load_explicit(&axpy_f32_fn, memory_order_relaxed)(y, a, x, n);
}

/* ------------------------------------------------------------------------ */
/* Activation rows for the gemm kernels                                      */
/* ------------------------------------------------------------------------ */

static size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

size_t spud_gemm_x_scale_offset(spud_type t, int64_t n) {
    const spud_type_info *ti = spud_type_get(t);
    return ti->gemm_group ? round64((size_t)n) : round64((size_t)n * sizeof(float));
}

size_t spud_gemm_x_row_bytes(spud_type t, int64_t n) {
    const spud_type_info *ti = spud_type_get(t);
    if (!ti->gemm_group)
        return round64((size_t)n * sizeof(float)) + (t == SPUD_TYPE_BF16 ? 3 * round64((size_t)n * 2) : 0);
    return spud_gemm_x_scale_offset(t, n) + round64(2 * (size_t)(n / ti->gemm_group) * sizeof(float));
}

void spud_gemm_x_row(spud_type t, const float *x, int64_t n, void *row) {
    const spud_type_info *ti = spud_type_get(t);
    const int gs = ti->gemm_group;
    if (!gs) {
        memcpy(row, x, (size_t)n * sizeof(float));
        if (ti->gemm_x_rows) /* BF16 under the AMX gemm: the bf16 split too */
            spud_gemm_x_bf16_split(n, row);
        return;
    }
    int8_t *q = row;
    float *dx = (float *)(void *)((char *)row + spud_gemm_x_scale_offset(t, n));
    const int64_t ng = n / gs;
    void *aux = dx + ng; /* float or int32 entries */
    const spud_type_info *vi = spud_type_get(ti->vec_dot_type);
    if (ti->vec_dot_type == SPUD_TYPE_Q8_0) {
        const int32_t off = t == SPUD_TYPE_Q4_0 ? 8 : 128;
        block_q8_0 blk;
        for (int64_t b = 0; b < n / QK8_0; b++) {
            vi->from_float(x + b * QK8_0, &blk, QK8_0);
            memcpy(q + b * QK8_0, blk.qs, QK8_0);
            int32_t sum = 0;
            for (int j = 0; j < QK8_0; j++) sum += blk.qs[j];
            dx[b] = F16(blk.d);
            ((int32_t *)aux)[b] = -off * sum;
        }
        return;
    }
    /* q8_K activations: one scale per 256, sums per 16 */
    block_q8_K blk;
    for (int64_t b = 0; b < n / QK_K; b++) {
        vi->from_float(x + b * QK_K, &blk, QK_K);
        memcpy(q + b * QK_K, blk.qs, QK_K);
        for (int g = 0; g < QK_K / gs; g++) {
            const int64_t gi = b * (QK_K / gs) + g;
            int32_t sum = 0;
            for (int j = 0; j < gs / 16; j++) sum += blk.bsums[g * (gs / 16) + j];
            dx[gi] = blk.d;
            if (t == SPUD_TYPE_Q4_K)
                ((float *)aux)[gi] = blk.d * (float)sum;
            else
                ((int32_t *)aux)[gi] = -32 * sum;
        }
    }
}

/* q4_K: each full group of 4 super-blocks (1024 elements, 32 groups of 32)
 * as two halves of 8 x 64 bytes, lane r = chunk r mod 4 of super-block r / 4:
 * the low half holds group 2 (r mod 4) of that super-block (what the low
 * nibbles of the chunk multiply), the high half group 2 (r mod 4) + 1; byte
 * 512 h + 64 j + 4 r + e = element 4 j + e of that group; the 32 scales and
 * 32 aux entries in the same order (16 low, 16 high). */
static void mdot_x_q4_K(int64_t n, void *row) {
    int8_t *q = row;
    uint32_t *s = (uint32_t *)(void *)((char *)row + spud_gemm_x_scale_offset(SPUD_TYPE_Q4_K, n));
    const int64_t ng = n / 32;
    int8_t tv[1024];
    uint32_t td[32], ta[32];
    for (int64_t g0 = 0; g0 + 32 <= ng; g0 += 32) {
        for (int h = 0; h < 2; h++)
            for (int r = 0; r < 16; r++) {
                const int64_t g = g0 + (r / 4) * 8 + 2 * (r % 4) + h; /* the group in lane r of half h */
                for (int j = 0; j < 8; j++) memcpy(tv + 512 * h + 64 * j + 4 * r, q + g * 32 + 4 * j, 4);
                td[16 * h + r] = s[g];
                ta[16 * h + r] = s[ng + g];
            }
        memcpy(q + g0 * 32, tv, sizeof tv);
        memcpy(s + g0, td, sizeof td);
        memcpy(s + ng + g0, ta, sizeof ta);
    }
}

void spud_gemm_x_bf16_split(int64_t n, void *row) {
    const float *x = row;
    const size_t part = round64((size_t)n * 2);
    spud_bf16 *hi = (spud_bf16 *)(void *)((char *)row + round64((size_t)n * sizeof(float)));
    spud_bf16 *mid = hi + part / 2, *lo = mid + part / 2;
    memset(hi, 0, 3 * part);
    for (int64_t i = 0; i < n; i++) { /* each rest is exact in f32: 24 bits = 3 x 8 */
        hi[i] = spud_f32_to_bf16(x[i]);
        const float r1 = x[i] - spud_bf16_to_f32(hi[i]);
        mid[i] = spud_f32_to_bf16(r1);
        lo[i] = spud_f32_to_bf16(r1 - spud_bf16_to_f32(mid[i]));
    }
}

void spud_mdot_x_from_gemm(spud_type t, int64_t n, void *row) {
    if (t == SPUD_TYPE_Q4_K) {
        mdot_x_q4_K(n, row);
        return;
    }
    if (t != SPUD_TYPE_Q4_0 && t != SPUD_TYPE_Q8_0) return;
    int8_t *q = row;
    uint32_t *s = (uint32_t *)(void *)((char *)row + spud_gemm_x_scale_offset(t, n)); /* dx, then aux */
    const int64_t nb = n / 32;
    int8_t tv[512];
    uint32_t td[16], ta[16];
    for (int64_t g = 0; g + 16 <= nb; g += 16) {
        for (int l = 0; l < 16; l++) {
            const int b = 4 * (l % 4) + l / 4;
            for (int j = 0; j < 8; j++) memcpy(tv + 64 * j + 4 * l, q + (g + b) * 32 + 4 * j, 4);
            td[l] = s[g + b];
            ta[l] = s[nb + g + b];
        }
        memcpy(q + g * 32, tv, sizeof tv);
        memcpy(s + g, td, sizeof td);
        memcpy(s + nb + g, ta, sizeof ta);
    }
}

void spud_mdot_x_row(spud_type t, const float *x, int64_t n, void *row) {
    spud_gemm_x_row(t, x, n, row);
    spud_mdot_x_from_gemm(t, n, row);
}

/* ------------------------------------------------------------------------ */
/* Attention over one KV head                                                */
/* ------------------------------------------------------------------------ */

size_t spud_attn_work_floats(int hd) {
    /* SIMD kernels: output accumulators per query, one tile of probabilities
     * for 4 queries, int8 queries (q8_0 caches); the reference: 2 * hd floats
     * for its double accumulators */
    return (size_t)SPUD_ATTN_MAX_Q * (size_t)hd + 4 * SPUD_ATTN_SPAN + (size_t)SPUD_ATTN_MAX_Q * (size_t)hd / 4 +
           2 * (size_t)hd + 64;
}

static inline float kv_elem(spud_type t, const void *base, size_t i) {
    return t == SPUD_TYPE_F16 ? F16(((const spud_f16 *)base)[i]) : ((const float *)base)[i];
}

static inline float kv_f32_at(const void *base, size_t byte_off) {
    float f;
    memcpy(&f, (const char *)base + byte_off, sizeof f);
    return f;
}

/* K[t][i] and V[t][i] of one head, whatever the cache type. */
static inline double kv_k(spud_type t, const void *k, int hd, uint32_t p, int i) {
    if (t != SPUD_TYPE_Q8_0) return kv_elem(t, k, spud_kv_k_index(hd, p, i));
    const int q = (int)((const uint8_t *)k)[spud_kv_q8_k_index(hd, p, i)] - 128;
    return (double)q * kv_f32_at(k, spud_kv_q8_k_scale(hd, p));
}

static inline double kv_v(spud_type t, const void *v, int hd, uint32_t p, int i) {
    if (t != SPUD_TYPE_Q8_0) return kv_elem(t, v, (size_t)p * hd + (size_t)i);
    const size_t row = spud_kv_q8_v_row(hd, p);
    return (double)((const int8_t *)v)[row + (size_t)i] * kv_f32_at(v, row + (size_t)hd);
}

int8_t spud_kv_q8_value(float x, float d) {
    const float id = d != 0.f ? 1.f / d : 0.f;
    return (int8_t)roundf(clampf_simd(x * id, -127.f, 127.f));
}

float spud_kv_q8_quantize(const float *x, int hd, int8_t *q) {
    float amax = 0;
    for (int i = 0; i < hd; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float d = amax / 127.f;
    if (q)
        for (int i = 0; i < hd; i++) q[i] = spud_kv_q8_value(x[i], d);
    return d;
}

void spud_attn_ref(int hd, int nq, const float *q, const int32_t *last, spud_type kv_type, const void *k,
                   const void *v, float *out, float *work) {
    double *acc = (double *)(void *)work;
    for (int j = 0; j < nq; j++) {
        const float *qj = q + (size_t)j * hd;
        double mx = -INFINITY;
        for (int32_t t = 0; t <= last[j]; t++) {
            double s = 0;
            for (int i = 0; i < hd; i++) s += (double)qj[i] * kv_k(kv_type, k, hd, (uint32_t)t, i);
            if (s > mx) mx = s;
        }
        double sum = 0;
        for (int i = 0; i < hd; i++) acc[i] = 0;
        for (int32_t t = 0; t <= last[j]; t++) {
            double s = 0;
            for (int i = 0; i < hd; i++) s += (double)qj[i] * kv_k(kv_type, k, hd, (uint32_t)t, i);
            const double p = exp(s - mx);
            sum += p;
            for (int i = 0; i < hd; i++) acc[i] += p * kv_v(kv_type, v, hd, (uint32_t)t, i);
        }
        for (int i = 0; i < hd; i++) out[(size_t)j * hd + i] = (float)(acc[i] / sum);
    }
}

void spud_attn(int hd, int nq, const float *q, const int32_t *last, spud_type kv_type, const void *k, const void *v,
               float *out, float *work) {
    atomic_load_explicit(&attn_fn, memory_order_relaxed)(hd, nq, q, last, kv_type, k, v, out, work);
}

void spud_swiglu_f32(float *g, const float *u, int64_t n) {
    atomic_load_explicit(&swiglu_fn, memory_order_relaxed)(g, u, n);
}

bool spud_attn_has_simd(spud_type kv_type) {
    if (kv_type == SPUD_TYPE_Q8_0) return atomic_load_explicit(&attn_q8_simd, memory_order_relaxed);
    return atomic_load_explicit(&attn_simd, memory_order_relaxed);
}
