/* test_kernels.c: element types and kernels (tensor.c, kernels_*.c).
 *
 * Every SIMD kernel is checked against the scalar reference on this machine,
 * for every ISA the CPU has (the dispatched set and each set called directly),
 * over several lengths (one block, many, odd counts) and input patterns
 * (gaussian, zeros, huge, tiny, negative-only, spikes, exact rounding ties,
 * random float bits). The references themselves are checked against values
 * this file computes on its own from the GGML block layouts, in double.
 *
 * Stated bounds (2^-23 = FLT_EPSILON, M = Σ|w_i * x_i| over the exact
 * dequantized values, nb = number of blocks, n = elements):
 *   - activation quantizers q8_0 / q8_K, all dequantizers: SIMD bit-identical
 *     to the reference (NaN compared as NaN for raw fp16/bf16 bit patterns);
 *   - the reference dequantizers: bit-identical to the exact value (rounded
 *     once to float) decoded here from the layout;
 *   - q6_K dot: SIMD bit-identical to the reference;
 *   - q4_0, q8_0, q4_K dots (reference and SIMD): |dot - exact| <= (nb + 8) * 2^-23 * M
 *     (integer sums are exact; only the float scaling/summation order differs);
 *   - f32, f16, bf16 dots and spud_dot_f32: |dot - exact| <= (n/8 + 16) * 2^-23 * M;
 *   - spud_axpy_f32: per element |simd - ref| <= 2^-23 * (|y| + |a*x|) (FMA vs mul+add);
 *   - spud_swiglu_f32: per element |simd - ref| <= 16 * 2^-23 * |ref| + 1e-35
 *     (polynomial exp; silu of very negative inputs is below 1e-36 either way);
 *   - gemm kernels (matrix-matrix), quantized weights: every output within
 *     (ng + 8) * 2^-23 * M of exact, ng = k / gemm_group (each group's integer
 *     sum is exact; groups are scaled and summed in float); float weights
 *     (f32, f16, bf16): within the float dots' bound (the AMX bf16 kernel,
 *     whose tiles add the products of the activations' three bf16 parts to
 *     one sum in sequence: (1.5 k + 16) * 2^-23 * M, M = the sum of |w x|);
 *     both also within that
 *     plus the vec_dot bound of the reference vec_dot; spud_gemm_x_row's int8
 *     values and scales equal the vec_dot_type quantizer's, bit for bit;
 *   - mdot kernels (small-batch, the gemm contract; nc = 1..20 activation
 *     rows, spud_mdot_x_row layout): the gemm kernels' bounds;
 *   - spud_matmul through the gemm or mdot path vs one row at a time through
 *     vec_dot: within the sum of the two bounds;
 *   - attention over one KV head (f32, f16 and q8_0 caches): every output
 *     within (2 hd Smax + n + 32) * 2^-23 * max|V| of the double reference,
 *     Smax = max over positions of Σ|q_i k_i|, n = positions (float scores,
 *     exp and accumulation; the padding past the last position is NaN or
 *     0xFF bytes and must not leak); for q8_0 caches the kernels round the
 *     queries to int8, so the test's queries are int8 values times a scale;
 *   - weight quantize -> dequantize on N(0,1) data (measured on 5 seeds x 64 blocks):
 *       f16  |err| <= max(2^-11 |x|, 2^-25)      bf16 |err| <= 2^-8 |x|
 *       q8_0 |err| <= 0.57 * amax/127 per block (half a step + fp16 scale rounding), RMSE <= 0.006 RMS
 *       q4_0 |err| <= 1.01 * amax/8 per block (one step at the clamped end),  RMSE <= 0.092 RMS
 *       q4_K RMSE <= 0.075 RMS (and below q4_0's on the same data)
 *       q6_K RMSE <= 0.020 RMS (and below q4_K's)
 *       q8_K |err| <= 0.5 * |d| * (1 + 2^-20) per element.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "matmul.h"
#include "tensor.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static uint64_t rng_state;

static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }

static uint64_t rng_u64(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(void) { return (double)(rng_u64() >> 11) * 0x1p-53; }

static float rng_gauss(void) {
    double u = rng_unit() + 1e-300, v = rng_unit();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

enum {
    PAT_GAUSS,
    PAT_ZERO,
    PAT_HUGE,
    PAT_TINY,
    PAT_NEG,
    PAT_SPIKE,
    PAT_TIES,
    PAT_BITS, /* random float bit patterns, any finite exponent */
    PAT_COUNT,
};
static const char *const pat_names[] = {"gauss", "zero", "huge", "tiny", "negative", "spike", "ties", "bits"};

static void fill(float *x, int64_t n, int pat, uint64_t seed) {
    rng_seed(seed * 131 + (uint64_t)pat);
    for (int64_t i = 0; i < n; i++) {
        switch (pat) {
        case PAT_GAUSS: x[i] = rng_gauss(); break;
        case PAT_ZERO: x[i] = 0; break;
        case PAT_HUGE: x[i] = rng_gauss() * 1e4f; break;
        case PAT_TINY: x[i] = rng_gauss() * 1e-6f; break;
        case PAT_NEG: x[i] = -fabsf(rng_gauss()); break;
        case PAT_SPIKE: x[i] = (i % 37 == 5) ? (i & 64 ? 50.f : -50.f) : rng_gauss() * 0.01f; break;
        case PAT_TIES: /* halves of integers; 127 at the start of every 32 so scales are 1 */
            x[i] = (i % 32 == 0) ? 127.f : (float)((int)(rng_u64() % 255) - 127) + 0.5f;
            break;
        case PAT_BITS: {
            uint32_t u = (uint32_t)rng_u64();
            uint32_t e = (u >> 23) & 0xFF;
            if (e == 0xFF) u &= ~(1u << 30); /* keep it finite */
            x[i] = u2f(u);
            break;
        }
        }
    }
}

/* A buffer of exactly `size` bytes whose data starts `offset` bytes into a
 * malloc block of offset + size bytes: misaligned, and ASan sees any read
 * past the end. */
typedef struct {
    char *base;
    void *p;
} buf;

static buf buf_new(size_t size, size_t offset) {
    buf b;
    b.base = malloc(offset + size + (size == 0));
    cr_assert(b.base);
    b.p = b.base + offset;
    return b;
}

static void buf_free(buf b) { free(b.base); }

/* Alignment offsets: blocks are only 2-byte aligned inside rows. */
static size_t misalign(spud_type t) {
    switch (t) {
    case SPUD_TYPE_F32: return 4;
    case SPUD_TYPE_Q8_K: return 4; /* f32 d; our own buffers */
    default: return 2;
    }
}

/* The ISAs this CPU can run, beyond scalar. */
static int simd_sets(const spud_kernel_set *out[SPUD_ISA_COUNT]) {
    int k = 0;
    if (spud_cpu_has(SPUD_ISA_AVX2)) out[k++] = spud_kernel_set_get(SPUD_ISA_AVX2);
    if (spud_cpu_has(SPUD_ISA_AVX512)) out[k++] = spud_kernel_set_get(SPUD_ISA_AVX512);
    if (spud_cpu_has(SPUD_ISA_AMX)) out[k++] = spud_kernel_set_get(SPUD_ISA_AMX);
    return k;
}

static bool same_float(float a, float b) {
    if (isnan(a) && isnan(b)) return true;
    return f2u(a) == f2u(b);
}

/* Decoded fp16 / bf16 from first principles, in double. */
static double half_value(uint16_t h) {
    const int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
    double v;
    if (exp == 31) v = mant ? NAN : INFINITY;
    else if (exp == 0) v = ldexp(mant, -24);
    else v = ldexp(1024 + mant, exp - 25);
    return sign ? -v : v;
}

static double bf16_value(uint16_t h) { return (double)u2f((uint32_t)h << 16); }

/* ------------------------------------------------------------------------ */
/* Exact values from the GGML layouts (independent of tensor.c)              */
/* ------------------------------------------------------------------------ */

/* Element i of a row of type t, exactly, in double. */
static void decode_row(spud_type t, const void *row, int64_t n, double *out) {
    const uint8_t *p = row;
    switch (t) {
    case SPUD_TYPE_F32:
        for (int64_t i = 0; i < n; i++) {
            float f;
            memcpy(&f, p + 4 * i, 4);
            out[i] = f;
        }
        break;
    case SPUD_TYPE_F16:
    case SPUD_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = t == SPUD_TYPE_F16 ? half_value(h) : bf16_value(h);
        }
        break;
    case SPUD_TYPE_Q4_0: /* 2-byte d, 16 bytes: low nibble = j, high = j + 16, value (q - 8) * d */
        for (int64_t b = 0; b < n / 32; b++, p += 18) {
            const double d = half_value((uint16_t)(p[0] | p[1] << 8));
            for (int j = 0; j < 16; j++) {
                out[32 * b + j] = ((p[2 + j] & 15) - 8) * d;
                out[32 * b + j + 16] = ((p[2 + j] >> 4) - 8) * d;
            }
        }
        break;
    case SPUD_TYPE_Q8_0: /* 2-byte d, 32 int8 */
        for (int64_t b = 0; b < n / 32; b++, p += 34) {
            const double d = half_value((uint16_t)(p[0] | p[1] << 8));
            for (int j = 0; j < 32; j++) out[32 * b + j] = (int8_t)p[2 + j] * d;
        }
        break;
    case SPUD_TYPE_Q4_K: /* d, dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles */
        for (int64_t b = 0; b < n / 256; b++, p += 144) {
            const double d = half_value((uint16_t)(p[0] | p[1] << 8));
            const double dmin = half_value((uint16_t)(p[2] | p[3] << 8));
            const uint8_t *s = p + 4, *q = p + 16;
            for (int g = 0; g < 8; g++) {
                int sc, m;
                if (g < 4) {
                    sc = s[g] & 63;
                    m = s[g + 4] & 63;
                } else {
                    sc = (s[g + 4] & 15) | ((s[g - 4] >> 6) << 4);
                    m = (s[g + 4] >> 4) | ((s[g] >> 6) << 4);
                }
                for (int j = 0; j < 32; j++) {
                    const uint8_t byte = q[32 * (g / 2) + j];
                    const int v = (g & 1) ? byte >> 4 : byte & 15;
                    out[256 * b + 32 * g + j] = d * sc * v - dmin * m;
                }
            }
        }
        break;
    case SPUD_TYPE_Q6_K: /* ql[128], qh[64], int8 scales[16], d */
        for (int64_t b = 0; b < n / 256; b++, p += 210) {
            const uint8_t *ql = p, *qh = p + 128;
            const int8_t *sc = (const int8_t *)(p + 192);
            const double d = half_value((uint16_t)(p[208] | p[209] << 8));
            for (int e = 0; e < 256; e++) {
                const int h = e / 128, r = e % 128, l = r % 32, quarter = r / 32;
                const uint8_t lo = ql[64 * h + l + (quarter & 1) * 32];
                const int low4 = quarter < 2 ? (lo & 15) : (lo >> 4);
                const int high2 = (qh[32 * h + l] >> (2 * quarter)) & 3;
                out[256 * b + e] = d * sc[e / 16] * ((low4 | high2 << 4) - 32);
            }
        }
        break;
    case SPUD_TYPE_Q8_K: /* f32 d, 256 int8, 16 int16 bsums */
        for (int64_t b = 0; b < n / 256; b++, p += 292) {
            float d;
            memcpy(&d, p, 4);
            for (int j = 0; j < 256; j++) out[256 * b + j] = (double)d * (int8_t)p[4 + j];
        }
        break;
    default: cr_assert_fail("decode_row: type %d", t);
    }
}

/* For the k-quants the dot's float error scales with the magnitude of the two
 * terms d*sc*q and dmin*m, not their difference: |w| for the bound. */
static void decode_row_magnitude(spud_type t, const void *row, int64_t n, double *out) {
    if (t != SPUD_TYPE_Q4_K) {
        decode_row(t, row, n, out);
        for (int64_t i = 0; i < n; i++) out[i] = fabs(out[i]);
        return;
    }
    const uint8_t *p = row;
    for (int64_t b = 0; b < n / 256; b++, p += 144) {
        const double d = half_value((uint16_t)(p[0] | p[1] << 8));
        const double dmin = half_value((uint16_t)(p[2] | p[3] << 8));
        uint8_t sc[8], mn[8];
        spud_q4_K_unpack_scales(p + 4, sc, mn);
        for (int g = 0; g < 8; g++)
            for (int j = 0; j < 32; j++) {
                const uint8_t byte = p[16 + 32 * (g / 2) + j];
                const int v = (g & 1) ? byte >> 4 : byte & 15;
                out[256 * b + 32 * g + j] = fabs(d * sc[g] * v) + fabs(dmin * mn[g]);
            }
    }
}

/* A random valid block row: random bytes, with every fp16 scale a finite
 * value in [-2, 2] (q8_K: random f32 d and consistent bsums). */
static void random_blocks(spud_type t, void *row, int64_t n) {
    uint8_t *p = row;
    const size_t size = spud_row_size(t, n);
    for (size_t i = 0; i < size; i++) p[i] = (uint8_t)rng_u64();
    const spud_type_info *ti = spud_type_get(t);
    const int64_t nb = n / ti->block_size;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = p + b * ti->type_size;
        uint16_t h;
        switch (t) {
        case SPUD_TYPE_F32: {
            float f = (float)(rng_unit() * 4 - 2);
            memcpy(blk, &f, 4);
            break;
        }
        case SPUD_TYPE_F16:
        case SPUD_TYPE_BF16: {
            float f = (float)(rng_unit() * 4 - 2);
            h = t == SPUD_TYPE_F16 ? spud_f32_to_f16(f) : spud_f32_to_bf16(f);
            memcpy(blk, &h, 2);
            break;
        }
        case SPUD_TYPE_Q4_0:
        case SPUD_TYPE_Q8_0:
            h = spud_f32_to_f16((float)(rng_unit() * 4 - 2));
            memcpy(blk, &h, 2);
            break;
        case SPUD_TYPE_Q4_K:
            h = spud_f32_to_f16((float)(rng_unit() * 2));
            memcpy(blk, &h, 2);
            h = spud_f32_to_f16((float)(rng_unit() * 2));
            memcpy(blk + 2, &h, 2);
            break;
        case SPUD_TYPE_Q6_K:
            h = spud_f32_to_f16((float)(rng_unit() * 4 - 2));
            memcpy(blk + 208, &h, 2);
            break;
        default: cr_assert_fail("random_blocks: type %d", t);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* fp16 / bf16                                                               */
/* ------------------------------------------------------------------------ */

Test(f16, exhaustive_decode_and_round_trip) {
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = spud_f16_to_f32((spud_f16)h);
        const double want = half_value((uint16_t)h);
        if (isnan(want)) {
            cr_assert(isnan(f), "0x%04x should decode to NaN", h);
        } else {
            cr_assert((double)f == want && !signbit(f) == !signbit(want), "0x%04x decodes to %a, want %a", h,
                      (double)f, want);
        }
        const spud_f16 back = spud_f32_to_f16(f);
        cr_assert(back == h, "round trip of 0x%04x gives 0x%04x", h, back);
    }
}

/* Every midpoint between consecutive halves must round to the even one, and
 * the floats just beside it to the nearer one. */
Test(f16, round_to_nearest_even_at_every_tie) {
    for (uint32_t h = 0; h < 0x7C00; h++) {
        for (int sign = 0; sign < 2; sign++) {
            const uint16_t lo = (uint16_t)(h | (sign << 15));
            const uint16_t hi = (uint16_t)((h + 1) | (sign << 15));
            /* past 65504 the next step would be 65536 */
            const double hi_value = h + 1 < 0x7C00 ? half_value(hi) : (sign ? -65536.0 : 65536.0);
            const float mid = (float)((half_value(lo) + hi_value) / 2); /* exact in f32 */
            const uint16_t even = (h & 1) ? hi : lo;
            cr_assert(spud_f32_to_f16(mid) == even, "tie %a between 0x%04x and 0x%04x gave 0x%04x", (double)mid,
                      lo, hi, spud_f32_to_f16(mid));
            const float toward_lo = nextafterf(mid, (float)half_value(lo));
            const float toward_hi = nextafterf(mid, sign ? -INFINITY : INFINITY);
            cr_assert(spud_f32_to_f16(toward_lo) == lo, "%a should round to 0x%04x", (double)toward_lo, lo);
            if (h + 1 < 0x7C00)
                cr_assert(spud_f32_to_f16(toward_hi) == hi, "%a should round to 0x%04x", (double)toward_hi, hi);
            else /* above the tie past 65504 is infinity */
                cr_assert(spud_f32_to_f16(toward_hi) == hi, "%a should overflow to inf", (double)toward_hi);
        }
    }
}

Test(f16, spot_values) {
    const struct {
        float f;
        uint16_t h;
    } cases[] = {
        {1.0f, 0x3C00},           {-2.0f, 0xC000},         {65504.f, 0x7BFF},
        {65519.99f, 0x7BFF},      {65520.f, 0x7C00},       {1e10f, 0x7C00},
        {-0.0f, 0x8000},          {0x1p-14f, 0x0400},      {0x1p-24f, 0x0001},
        {0x1p-25f, 0x0000},       {0x1.000002p-25f, 0x0001}, {0x3p-25f, 0x0002},
        {0x1p-26f, 0x0000},       {0x1.002p0f, 0x3C00},    {0x1.006p0f, 0x3C02},
        {0x1.ffcp-15f, 0x0400},   {1e-30f, 0x0000},        {-1e-30f, 0x8000},
        {INFINITY, 0x7C00},       {-INFINITY, 0xFC00},     {0x1.ff8p-15f, 0x03FF},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_assert(spud_f32_to_f16(cases[i].f) == cases[i].h, "f16(%a) = 0x%04x, want 0x%04x", (double)cases[i].f,
                  spud_f32_to_f16(cases[i].f), cases[i].h);
    cr_assert(isnan(spud_f16_to_f32(spud_f32_to_f16(NAN))));
    cr_assert(isnan(spud_f16_to_f32(spud_f32_to_f16(u2f(0x7F800001u)))), "low-payload NaN must stay NaN");
}

__attribute__((target("f16c"))) static float hw_h2f(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) static uint16_t hw_f2h(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

/* F16C is a second, independent oracle. */
Test(f16, agrees_with_f16c) {
    if (!spud_cpu_has(SPUD_ISA_AVX2)) {
        cr_log_info("no F16C: skipped");
        return;
    }
    for (uint32_t h = 0; h < 65536; h++) {
        const float a = spud_f16_to_f32((spud_f16)h), b = hw_h2f((uint16_t)h);
        cr_assert(same_float(a, b), "0x%04x: %a vs F16C %a", h, (double)a, (double)b);
    }
    rng_seed(7);
    for (int i = 0; i < 2000000; i++) {
        const float f = u2f((uint32_t)rng_u64());
        if (isnan(f)) continue;
        cr_assert(spud_f32_to_f16(f) == hw_f2h(f), "%a: 0x%04x vs F16C 0x%04x", (double)f, spud_f32_to_f16(f),
                  hw_f2h(f));
    }
}

Test(bf16, exhaustive_round_trip_and_ties) {
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = spud_bf16_to_f32((spud_bf16)h);
        cr_assert(f2u(f) == h << 16);
        cr_assert(spud_f32_to_bf16(f) == h, "round trip of 0x%04x gives 0x%04x", h, spud_f32_to_bf16(f));
    }
    for (uint32_t h = 0; h < 0x7F80; h++) {
        for (uint32_t sign = 0; sign < 2; sign++) {
            const uint32_t lo = h | sign << 15, hi = (h + 1) | sign << 15;
            const uint32_t mid = (lo << 16) + 0x8000; /* the exact midpoint's bits */
            const uint32_t even = (h & 1) ? hi : lo;
            cr_assert(spud_f32_to_bf16(u2f(mid)) == even, "tie 0x%08x gave 0x%04x", mid, spud_f32_to_bf16(u2f(mid)));
            cr_assert(spud_f32_to_bf16(u2f(mid - 1)) == lo);
            cr_assert(spud_f32_to_bf16(u2f(mid + 1)) == hi);
        }
    }
    cr_assert(spud_f32_to_bf16(1.0f) == 0x3F80);
    cr_assert(spud_f32_to_bf16(u2f(0x7F7FFFFFu)) == 0x7F80, "max float rounds to inf");
    cr_assert(spud_f32_to_bf16(u2f(0x00012345u)) == 0x0001, "subnormals are kept, not flushed");
    cr_assert(isnan(spud_bf16_to_f32(spud_f32_to_bf16(u2f(0x7F800001u)))), "low-payload NaN must stay NaN");
    cr_assert(isnan(spud_bf16_to_f32(spud_f32_to_bf16(NAN))));
}

/* ------------------------------------------------------------------------ */
/* Type table                                                                */
/* ------------------------------------------------------------------------ */

Test(types, names_and_traits) {
    const struct {
        uint32_t id;
        const char *name;
    } names[] = {{0, "f32"},       {1, "f16"},     {2, "q4_0"},   {3, "q4_1"},    {6, "q5_0"},   {7, "q5_1"},
                 {8, "q8_0"},      {9, "q8_1"},    {10, "q2_K"},  {11, "q3_K"},   {12, "q4_K"},  {13, "q5_K"},
                 {14, "q6_K"},     {15, "q8_K"},   {16, "iq2_xxs"}, {17, "iq2_xs"}, {18, "iq3_xxs"}, {19, "iq1_s"},
                 {20, "iq4_nl"},   {21, "iq3_s"},  {22, "iq2_s"}, {23, "iq4_xs"}, {24, "i8"},    {25, "i16"},
                 {26, "i32"},      {27, "i64"},    {28, "f64"},   {29, "iq1_m"},  {30, "bf16"},  {34, "tq1_0"},
                 {35, "tq2_0"},    {39, "mxfp4"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        cr_assert_str_eq(spud_type_name(names[i].id), names[i].name);
        cr_assert(spud_type_from_name(names[i].name) == (int)names[i].id, "from_name(%s)", names[i].name);
    }
    cr_assert_str_eq(spud_type_name(1000), "type1000");
    cr_assert(spud_type_from_name("Q4_k") == SPUD_TYPE_Q4_K);
    cr_assert(spud_type_from_name("BF16") == SPUD_TYPE_BF16);
    cr_assert(spud_type_from_name("q4_9") == -1);
    cr_assert(spud_type_from_name("") == -1);

    const spud_type supported[] = {SPUD_TYPE_F32,  SPUD_TYPE_F16,  SPUD_TYPE_BF16, SPUD_TYPE_Q4_0,
                                   SPUD_TYPE_Q8_0, SPUD_TYPE_Q4_K, SPUD_TYPE_Q6_K, SPUD_TYPE_Q8_K};
    int n_supported = 0;
    for (uint32_t t = 0; t < 64; t++) {
        const spud_type_info *ti = spud_type_get(t);
        if (!ti) continue;
        n_supported++;
        cr_assert_str_eq(ti->name, spud_type_name(t));
        cr_assert(ti->to_float && ti->from_float && ti->from_float_ref, "%s has its pointers", ti->name);
        cr_assert(t == SPUD_TYPE_Q8_K || (ti->vec_dot && ti->vec_dot_ref), "%s has vec_dot", ti->name);
    }
    cr_assert(n_supported == (int)(sizeof supported / sizeof supported[0]));
    for (size_t i = 0; i < sizeof supported / sizeof supported[0]; i++) cr_assert(spud_type_get(supported[i]));
    cr_assert_null(spud_type_get(3));
    cr_assert_null(spud_type_get(13));
    cr_assert_null(spud_type_get(SPUD_TYPE_COUNT));
    cr_assert_null(spud_type_get(0xFFFFFFFFu));

    cr_assert(spud_type_get(SPUD_TYPE_Q4_0)->type_size == 18 && spud_type_get(SPUD_TYPE_Q4_0)->block_size == 32);
    cr_assert(spud_type_get(SPUD_TYPE_Q8_0)->type_size == 34);
    cr_assert(spud_type_get(SPUD_TYPE_Q4_K)->type_size == 144 && spud_type_get(SPUD_TYPE_Q4_K)->block_size == 256);
    cr_assert(spud_type_get(SPUD_TYPE_Q6_K)->type_size == 210);
    cr_assert(spud_type_get(SPUD_TYPE_Q8_K)->type_size == 292);
    cr_assert(spud_type_get(SPUD_TYPE_Q4_0)->vec_dot_type == SPUD_TYPE_Q8_0);
    cr_assert(spud_type_get(SPUD_TYPE_Q8_0)->vec_dot_type == SPUD_TYPE_Q8_0);
    cr_assert(spud_type_get(SPUD_TYPE_Q4_K)->vec_dot_type == SPUD_TYPE_Q8_K);
    cr_assert(spud_type_get(SPUD_TYPE_Q6_K)->vec_dot_type == SPUD_TYPE_Q8_K);
    cr_assert(spud_type_get(SPUD_TYPE_F16)->vec_dot_type == SPUD_TYPE_F32);
    cr_assert(spud_type_get(SPUD_TYPE_BF16)->vec_dot_type == SPUD_TYPE_F32);
    cr_assert(spud_type_get(SPUD_TYPE_F32)->vec_dot_type == SPUD_TYPE_F32);
}

Test(types, row_size) {
    cr_assert(spud_row_size(SPUD_TYPE_Q4_0, 64) == 36);
    cr_assert(spud_row_size(SPUD_TYPE_Q4_0, 33) == 0);
    cr_assert(spud_row_size(SPUD_TYPE_Q4_K, 256) == 144);
    cr_assert(spud_row_size(SPUD_TYPE_Q6_K, 512) == 420);
    cr_assert(spud_row_size(SPUD_TYPE_F16, 3) == 6);
    cr_assert(spud_row_size(SPUD_TYPE_F32, 0) == 0);
    cr_assert(spud_row_size((spud_type)13, 256) == 176, "q5_K sizes are known though unsupported");
    cr_assert(spud_row_size((spud_type)4, 32) == 0, "removed type");
    cr_assert(spud_row_size((spud_type)1000, 32) == 0);
    cr_assert(spud_row_size(SPUD_TYPE_F32, INT64_MAX) == 0, "overflow");
    cr_assert(spud_row_size(SPUD_TYPE_F32, -4) == 0);
}

/* ------------------------------------------------------------------------ */
/* Hand-built blocks                                                         */
/* ------------------------------------------------------------------------ */

/* A q4_K block with d = 0.5, dmin = 0.25, scales {1,2,3,4,33,40,50,63} and
 * mins {0,5,10,63,17,32,48,1}, packed by hand from GGML's layout:
 *   bytes 0-3:  sc[j] | (sc[j+4] >> 4) << 6      bytes 4-7: m[j] | (m[j+4] >> 4) << 6
 *   bytes 8-11: (sc[j+4] & 15) | (m[j+4] & 15) << 4 */
static const uint8_t hand_q4_K_scales[12] = {0x81, 0x82, 0xC3, 0xC4, 0x40, 0x85, 0xCA, 0x3F, 0x11, 0x08, 0x02, 0x1F};
static const int hand_sc[8] = {1, 2, 3, 4, 33, 40, 50, 63}, hand_mn[8] = {0, 5, 10, 63, 17, 32, 48, 1};

static void hand_q4_K(block_q4_K *b, float want[256]) {
    b->d = 0x3800;    /* 0.5 */
    b->dmin = 0x3400; /* 0.25 */
    memcpy(b->scales, hand_q4_K_scales, 12);
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < 32; i++) b->qs[32 * c + i] = (uint8_t)((i % 16) | (((i + 3 * c) % 16) << 4));
    for (int g = 0; g < 8; g++)
        for (int i = 0; i < 32; i++) {
            const int q = (g & 1) ? (i + 3 * (g / 2)) % 16 : i % 16;
            want[32 * g + i] = 0.5f * hand_sc[g] * q - 0.25f * hand_mn[g];
        }
}

static int hand_v6(int e) { return (e * 7 + 3) % 64; }

static void hand_q6_K(block_q6_K *b, float want[256]) {
    memset(b, 0, sizeof *b);
    b->d = 0x3000; /* 0.125 */
    for (int g = 0; g < 16; g++) b->scales[g] = (int8_t)((g % 2 ? -1 : 1) * (g + 1) * 7);
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const int e = 128 * h + l;
            b->ql[64 * h + l] = (uint8_t)((hand_v6(e) & 15) | (hand_v6(e + 64) & 15) << 4);
            b->ql[64 * h + 32 + l] = (uint8_t)((hand_v6(e + 32) & 15) | (hand_v6(e + 96) & 15) << 4);
            b->qh[32 * h + l] = (uint8_t)((hand_v6(e) >> 4) | (hand_v6(e + 32) >> 4) << 2 |
                                          (hand_v6(e + 64) >> 4) << 4 | (hand_v6(e + 96) >> 4) << 6);
        }
    for (int e = 0; e < 256; e++) want[e] = 0.125f * b->scales[e / 16] * (hand_v6(e) - 32);
}

static void hand_q8_K(block_q8_K *b) {
    b->d = 1.0f;
    for (int e = 0; e < 256; e++) b->qs[e] = (int8_t)((e % 7) - 3);
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int j = 0; j < 16; j++) s += b->qs[16 * g + j];
        b->bsums[g] = (int16_t)s;
    }
}

/* The reference and every SIMD dequantizer must give exactly `want`. */
static void check_dequant_all(spud_type t, spud_to_float_fn ref, const void *blocks, int64_t n, const float *want) {
    float *y = malloc((size_t)n * sizeof(float));
    const spud_kernel_set *sets[SPUD_ISA_COUNT];
    const int ns = simd_sets(sets);
    for (int s = -1; s < ns; s++) {
        const spud_to_float_fn f = s < 0 ? ref : sets[s]->to_float[t];
        if (!f) continue;
        f(blocks, y, n);
        for (int64_t i = 0; i < n; i++)
            cr_assert(same_float(y[i], want[i]), "%s dequant (%s) element %lld: %g, want %g", spud_type_name(t),
                      s < 0 ? "ref" : sets[s]->name, (long long)i, (double)y[i], (double)want[i]);
    }
    free(y);
}

Test(hand, q4_0_and_q8_0_blocks) {
    block_q4_0 q4;
    float want[32];
    q4.d = 0x3800; /* 0.5 */
    for (int j = 0; j < 16; j++) {
        q4.qs[j] = (uint8_t)(j | (15 - j) << 4);
        want[j] = (j - 8) * 0.5f;
        want[j + 16] = (7 - j) * 0.5f;
    }
    check_dequant_all(SPUD_TYPE_Q4_0, spud_dequant_q4_0_ref, &q4, 32, want);

    block_q8_0 q8;
    q8.d = 0x3400; /* 0.25 */
    for (int j = 0; j < 32; j++) {
        q8.qs[j] = (int8_t)(j * 8 - 128);
        want[j] = (j * 8 - 128) * 0.25f;
    }
    check_dequant_all(SPUD_TYPE_Q8_0, spud_dequant_q8_0_ref, &q8, 32, want);
}

Test(hand, q4_K_block) {
    block_q4_K b;
    float want[256];
    hand_q4_K(&b, want);
    uint8_t sc[8], mn[8], sc2[8], mn2[8];
    spud_q4_K_unpack_scales(b.scales, sc, mn);
    spud_q4_K_unpack_scales_le(b.scales, sc2, mn2);
    for (int g = 0; g < 8; g++) {
        cr_assert(sc[g] == hand_sc[g] && mn[g] == hand_mn[g], "group %d: sc %d m %d", g, sc[g], mn[g]);
        cr_assert(sc2[g] == hand_sc[g] && mn2[g] == hand_mn[g]);
    }
    check_dequant_all(SPUD_TYPE_Q4_K, spud_dequant_q4_K_ref, &b, 256, want);
}

Test(hand, q6_K_block) {
    block_q6_K b;
    float want[256];
    hand_q6_K(&b, want);
    check_dequant_all(SPUD_TYPE_Q6_K, spud_dequant_q6_K_ref, &b, 256, want);
}

Test(hand, q8_K_block) {
    block_q8_K b;
    float want[256];
    b.d = 0.5f;
    for (int e = 0; e < 256; e++) {
        b.qs[e] = (int8_t)((e % 255) - 127);
        want[e] = 0.5f * ((e % 255) - 127);
    }
    check_dequant_all(SPUD_TYPE_Q8_K, spud_dequant_q8_K_ref, &b, 256, want);
}

/* Dots of hand-built blocks have exactly representable answers. */
Test(hand, k_quant_dots) {
    block_q8_K y[2];
    hand_q8_K(&y[0]);
    hand_q8_K(&y[1]);
    y[1].d = -2.0f;
    block_q4_K w4[2];
    block_q6_K w6[2];
    float v4[512], v6[512];
    hand_q4_K(&w4[0], v4);
    hand_q4_K(&w4[1], v4 + 256);
    hand_q6_K(&w6[0], v6);
    hand_q6_K(&w6[1], v6 + 256);
    double e4 = 0, e6 = 0;
    for (int e = 0; e < 512; e++) {
        const double ye = (double)y[e / 256].d * y[e / 256].qs[e % 256];
        e4 += v4[e] * ye;
        e6 += v6[e] * ye;
    }
    float s;
    spud_vec_dot_q4_K_q8_K_ref(512, &s, w4, y);
    cr_assert(s == (float)e4, "q4_K ref %g want %g", (double)s, e4);
    spud_vec_dot_q6_K_q8_K_ref(512, &s, w6, y);
    cr_assert(s == (float)e6, "q6_K ref %g want %g", (double)s, e6);
    const spud_kernel_set *sets[SPUD_ISA_COUNT];
    for (int k = 0, ns = simd_sets(sets); k < ns; k++) {
        sets[k]->vec_dot[SPUD_TYPE_Q4_K](512, &s, w4, y);
        cr_assert(s == (float)e4, "q4_K %s %g want %g", sets[k]->name, (double)s, e4);
        sets[k]->vec_dot[SPUD_TYPE_Q6_K](512, &s, w6, y);
        cr_assert(s == (float)e6, "q6_K %s %g want %g", sets[k]->name, (double)s, e6);
    }
}

/* q8_0: roundf (ties away from zero); q8_K: round half to even, scale from the
 * FIRST element of largest magnitude. */
static void check_quant_all(spud_type t, const float *x, int64_t n, const void *want, size_t size) {
    buf y = buf_new(size, misalign(t));
    const spud_from_float_fn ref = t == SPUD_TYPE_Q8_0 ? spud_quant_q8_0_ref : spud_quant_q8_K_ref;
    ref(x, y.p, n);
    cr_assert(memcmp(y.p, want, size) == 0, "%s reference", spud_type_name(t));
    const spud_kernel_set *sets[SPUD_ISA_COUNT];
    for (int k = 0, ns = simd_sets(sets); k < ns; k++) {
        memset(y.p, 0x55, size);
        sets[k]->from_float[t](x, y.p, n);
        cr_assert(memcmp(y.p, want, size) == 0, "%s %s", spud_type_name(t), sets[k]->name);
    }
    buf_free(y);
}

Test(hand, activation_rounding) {
    float x[256];
    memset(x, 0, sizeof x);
    const float ties[] = {127.f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, 126.5f, -126.5f, 0.49999997f, -3.5f};
    memcpy(x, ties, sizeof ties);
    block_q8_0 q8[8];
    memset(q8, 0, sizeof q8);
    const int8_t want8[] = {127, 1, 2, 3, -1, -3, 127, -127, 0, -4};
    q8[0].d = 0x3C00; /* 127/127 */
    memcpy(q8[0].qs, want8, sizeof want8);
    check_quant_all(SPUD_TYPE_Q8_0, x, 256, q8, sizeof q8);

    /* q8_K: -127 first, so iscale = 1 (and +127 later does not change that) */
    x[0] = -127.f;
    x[200] = 127.f;
    block_q8_K k;
    memset(&k, 0, sizeof k);
    const int8_t wantk[] = {-127, 0, 2, 2, 0, -2, 126, -126, 0, -4};
    memcpy(k.qs, wantk, sizeof wantk);
    k.qs[200] = 127;
    k.d = 1.f;
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int j = 0; j < 16; j++) s += k.qs[16 * g + j];
        k.bsums[g] = (int16_t)s;
    }
    check_quant_all(SPUD_TYPE_Q8_K, x, 256, &k, sizeof k);

    x[0] = 127.f;
    x[200] = -127.f;
    /* +127 first: iscale = -1; every value flips sign except the two +-127 */
    for (int e = 0; e < 256; e++) k.qs[e] = (int8_t)-k.qs[e];
    k.qs[0] = -127;
    k.qs[200] = 127;
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int j = 0; j < 16; j++) s += k.qs[16 * g + j];
        k.bsums[g] = (int16_t)s;
    }
    k.d = -1.f;
    check_quant_all(SPUD_TYPE_Q8_K, x, 256, &k, sizeof k);

    /* a block of exact values: x = j - 127, max 128 at the end */
    for (int j = 0; j < 256; j++) x[j] = (float)(j - 127);
    const float iscale = -127.f / 128.f;
    for (int j = 0; j < 256; j++) k.qs[j] = (int8_t)rint(-(j - 127) * (127.0 / 128.0));
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int j = 0; j < 16; j++) s += k.qs[16 * g + j];
        k.bsums[g] = (int16_t)s;
    }
    k.d = 1.f / iscale;
    check_quant_all(SPUD_TYPE_Q8_K, x, 256, &k, sizeof k);
}

/* ------------------------------------------------------------------------ */
/* Quantize -> dequantize error                                              */
/* ------------------------------------------------------------------------ */

/* RMSE / RMS of x after a round trip through t's reference quantizer and
 * reference dequantizer; also applies per-type elementwise bounds. */
static double round_trip_error(spud_type t, const float *x, int64_t n) {
    const spud_type_info *ti = spud_type_get(t);
    buf q = buf_new(spud_row_size(t, n), misalign(t));
    float *y = malloc((size_t)n * sizeof(float));
    ti->from_float_ref(x, q.p, n);
    ti->to_float(q.p, y, n);
    double se = 0, ss = 0;
    const int64_t bs = t == SPUD_TYPE_Q4_0 || t == SPUD_TYPE_Q8_0 ? 32 : 256;
    for (int64_t b0 = 0; b0 < n; b0 += bs) {
        float amax = 0;
        for (int64_t i = b0; i < b0 + bs; i++) amax = fmaxf(amax, fabsf(x[i]));
        for (int64_t i = b0; i < b0 + bs; i++) {
            const double err = fabs((double)x[i] - y[i]);
            se += err * err;
            ss += (double)x[i] * x[i];
            switch (t) {
            case SPUD_TYPE_F16: /* half an ulp; fixed below 2^-14 (subnormal halves) */
                cr_assert(err <= fmax(fabsf(x[i]) * 0x1p-11, 0x1p-25), "f16 element %lld", (long long)i);
                break;
            case SPUD_TYPE_BF16: cr_assert(err <= fabsf(x[i]) * 0x1p-8, "bf16 element %lld", (long long)i); break;
            case SPUD_TYPE_Q8_0:
                cr_assert(err <= 0.57 * amax / 127, "q8_0 element %lld: err %g, amax %g", (long long)i, err,
                          (double)amax);
                break;
            case SPUD_TYPE_Q4_0:
                cr_assert(err <= 1.01 * amax / 8, "q4_0 element %lld: err %g, amax %g", (long long)i, err,
                          (double)amax);
                break;
            default: break;
            }
        }
    }
    free(y);
    buf_free(q);
    return ss > 0 ? sqrt(se / ss) : 0;
}

Test(quant, weight_round_trip_error) {
    const int64_t n = 64 * 256;
    float *x = malloc(n * sizeof(float));
    double worst[SPUD_TYPE_COUNT] = {0};
    const spud_type types[] = {SPUD_TYPE_F16, SPUD_TYPE_BF16, SPUD_TYPE_Q8_0, SPUD_TYPE_Q4_0, SPUD_TYPE_Q4_K,
                               SPUD_TYPE_Q6_K};
    for (uint64_t seed = 1; seed <= 5; seed++) {
        fill(x, n, PAT_GAUSS, seed);
        double e[SPUD_TYPE_COUNT] = {0};
        for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
            e[types[k]] = round_trip_error(types[k], x, n);
            worst[types[k]] = fmax(worst[types[k]], e[types[k]]);
        }
        cr_assert(e[SPUD_TYPE_Q4_K] < e[SPUD_TYPE_Q4_0], "q4_K (%g) should beat q4_0 (%g)", e[SPUD_TYPE_Q4_K],
                  e[SPUD_TYPE_Q4_0]);
        cr_assert(e[SPUD_TYPE_Q6_K] < e[SPUD_TYPE_Q4_K]);
        cr_assert(e[SPUD_TYPE_Q8_0] < e[SPUD_TYPE_Q6_K]);
    }
    cr_log_info("relative RMSE: f16 %.5f bf16 %.5f q8_0 %.5f q4_0 %.5f q4_K %.5f q6_K %.5f", worst[SPUD_TYPE_F16],
                worst[SPUD_TYPE_BF16], worst[SPUD_TYPE_Q8_0], worst[SPUD_TYPE_Q4_0], worst[SPUD_TYPE_Q4_K],
                worst[SPUD_TYPE_Q6_K]);
    cr_assert(worst[SPUD_TYPE_Q8_0] <= 0.006, "q8_0 RMSE %g", worst[SPUD_TYPE_Q8_0]);
    cr_assert(worst[SPUD_TYPE_Q4_0] <= 0.092, "q4_0 RMSE %g", worst[SPUD_TYPE_Q4_0]);
    cr_assert(worst[SPUD_TYPE_Q4_K] <= 0.075, "q4_K RMSE %g", worst[SPUD_TYPE_Q4_K]);
    cr_assert(worst[SPUD_TYPE_Q6_K] <= 0.020, "q6_K RMSE %g", worst[SPUD_TYPE_Q6_K]);

    /* degenerate inputs give valid blocks: zeros stay zeros, constants stay close */
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        fill(x, n, PAT_ZERO, 1);
        cr_assert(round_trip_error(types[k], x, n) == 0, "%s zeros", spud_type_name(types[k]));
    }
    for (int64_t i = 0; i < n; i++) x[i] = 0.75f;
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++)
        cr_assert(round_trip_error(types[k], x, n) < 0.01, "%s constant", spud_type_name(types[k]));
    free(x);
}

Test(quant, q8_K_round_trip) {
    const int64_t n = 16 * 256;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    buf q = buf_new(spud_row_size(SPUD_TYPE_Q8_K, n), 4);
    for (int pat = 0; pat < PAT_COUNT; pat++) {
        if (pat == PAT_BITS) continue; /* d over/underflows by design there */
        fill(x, n, pat, 3);
        spud_quant_q8_K_ref(x, q.p, n);
        spud_dequant_q8_K_ref(q.p, y, n);
        const block_q8_K *b = q.p;
        for (int64_t i = 0; i < n; i++) {
            const double bound = 0.5 * fabs(b[i / 256].d) * (1 + 0x1p-20);
            cr_assert(fabs((double)x[i] - y[i]) <= bound, "%s element %lld: %g vs %g", pat_names[pat],
                      (long long)i, (double)x[i], (double)y[i]);
        }
        for (int64_t bl = 0; bl < n / 256; bl++)
            for (int g = 0; g < 16; g++) {
                int s = 0;
                for (int j = 0; j < 16; j++) s += b[bl].qs[16 * g + j];
                cr_assert(b[bl].bsums[g] == s);
            }
    }
    buf_free(q);
    free(x);
    free(y);
}

/* ------------------------------------------------------------------------ */
/* SIMD vs reference                                                         */
/* ------------------------------------------------------------------------ */

Test(simd, activation_quantizers_bit_exact) {
    const spud_kernel_set *sets[SPUD_ISA_COUNT];
    const int ns = simd_sets(sets);
    if (ns == 0) cr_log_info("no SIMD ISA on this CPU: nothing to compare");
    const spud_type types[] = {SPUD_TYPE_Q8_0, SPUD_TYPE_Q8_K};
    const int64_t nblocks[] = {1, 2, 3, 7, 16, 33};
    for (size_t ti = 0; ti < 2; ti++) {
        const spud_type t = types[ti];
        const spud_type_info *info = spud_type_get(t);
        for (size_t li = 0; li < sizeof nblocks / sizeof nblocks[0]; li++) {
            const int64_t n = nblocks[li] * info->block_size;
            const size_t size = spud_row_size(t, n);
            float *x = malloc(n * sizeof(float));
            buf want = buf_new(size, misalign(t)), got = buf_new(size, misalign(t));
            for (int pat = 0; pat < PAT_COUNT; pat++)
                for (uint64_t seed = 1; seed <= 3; seed++) {
                    fill(x, n, pat, seed);
                    if (pat == PAT_TINY && seed == 3) x[n / 2] = 1e-40f; /* subnormal */
                    info->from_float_ref(x, want.p, n);
                    for (int k = 0; k < ns; k++) {
                        memset(got.p, 0xA5, size);
                        sets[k]->from_float[t](x, got.p, n);
                        const uint8_t *a = want.p, *b = got.p;
                        size_t i = 0;
                        while (i < size && a[i] == b[i]) i++;
                        cr_assert(i == size, "%s %s, %lld blocks, %s seed %llu: first difference at byte %zu",
                                  info->name, sets[k]->name, (long long)nblocks[li], pat_names[pat],
                                  (unsigned long long)seed, i);
                    }
                }
            free(x);
            buf_free(want);
            buf_free(got);
        }
    }
}

Test(simd, dequantizers_bit_exact) {
    const spud_kernel_set *sets[SPUD_ISA_COUNT];
    const int ns = simd_sets(sets);
    const spud_type types[] = {SPUD_TYPE_F16, SPUD_TYPE_BF16, SPUD_TYPE_Q4_0, SPUD_TYPE_Q8_0, SPUD_TYPE_Q4_K,
                               SPUD_TYPE_Q6_K};
    const int64_t nblocks[] = {1, 2, 3, 17, 64};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const spud_type t = types[ti];
        const spud_type_info *info = spud_type_get(t);
        for (size_t li = 0; li < sizeof nblocks / sizeof nblocks[0]; li++) {
            /* f16/bf16: lengths that are not multiples of the vector width */
            const int64_t n = info->block_size == 1 ? nblocks[li] * 37 : nblocks[li] * info->block_size;
            buf q = buf_new(spud_row_size(t, n), misalign(t));
            float *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
            double *exact = malloc(n * sizeof(double));
            for (uint64_t seed = 1; seed <= 3; seed++) {
                rng_seed(seed * 977 + t);
                random_blocks(t, q.p, n);
                const spud_to_float_fn ref = t == SPUD_TYPE_F16    ? spud_dequant_f16_ref
                                             : t == SPUD_TYPE_BF16 ? spud_dequant_bf16_ref
                                             : t == SPUD_TYPE_Q4_0 ? spud_dequant_q4_0_ref
                                             : t == SPUD_TYPE_Q8_0 ? spud_dequant_q8_0_ref
                                             : t == SPUD_TYPE_Q4_K ? spud_dequant_q4_K_ref
                                                                   : spud_dequant_q6_K_ref;
                ref(q.p, want, n);
                /* the reference against the layout, exactly */
                decode_row(t, q.p, n, exact);
                for (int64_t i = 0; i < n; i++)
                    cr_assert(same_float(want[i], (float)exact[i]), "%s ref element %lld: %a want %a", info->name,
                              (long long)i, (double)want[i], exact[i]);
                for (int k = 0; k < ns; k++) {
                    sets[k]->to_float[t](q.p, got, n);
                    for (int64_t i = 0; i < n; i++)
                        cr_assert(same_float(want[i], got[i]), "%s %s element %lld of %lld: %a vs ref %a",
                                  info->name, sets[k]->name, (long long)i, (long long)n, (double)got[i],
                                  (double)want[i]);
                }
            }
            free(want);
            free(got);
            free(exact);
            buf_free(q);
        }
    }
    /* every fp16 / bf16 bit pattern, NaN and inf included */
    spud_f16 *h = malloc(65536 * 2);
    float *want = malloc(65536 * 4), *got = malloc(65536 * 4);
    for (uint32_t i = 0; i < 65536; i++) h[i] = (spud_f16)i;
    for (int bf = 0; bf < 2; bf++) {
        (bf ? spud_dequant_bf16_ref : spud_dequant_f16_ref)(h, want, 65536);
        for (int k = 0; k < ns; k++) {
            sets[k]->to_float[bf ? SPUD_TYPE_BF16 : SPUD_TYPE_F16](h, got, 65536);
            for (uint32_t i = 0; i < 65536; i++)
                cr_assert(same_float(want[i], got[i]), "%s %s 0x%04x", bf ? "bf16" : "f16", sets[k]->name, i);
        }
    }
    free(h);
    free(want);
    free(got);
}

/* One dot: weight row of type t (from random floats or random bytes), activation
 * from x; checks the reference and every SIMD set against the exact value. */
static void check_dot(spud_type t, int64_t n, int pat, uint64_t seed, bool random_bytes, const float *x) {
    const spud_type_info *ti = spud_type_get(t);
    const spud_type vt = ti->vec_dot_type;
    const spud_type_info *vi = spud_type_get(vt);
    /* vary the misalignment so every 64-byte phase of the weights is seen */
    const size_t phase = 1 + (size_t)((seed * 7 + (uint64_t)n + (random_bytes ? 13 : 0)) % 32);
    buf w = buf_new(spud_row_size(t, n), misalign(t) * phase);
    buf xq = buf_new(spud_row_size(vt, n), misalign(vt) * (33 - phase));
    float *wf = malloc(n * sizeof(float));
    double *dw = malloc(n * sizeof(double)), *mw = malloc(n * sizeof(double)), *dx = malloc(n * sizeof(double));
    if (random_bytes) {
        rng_seed(seed * 31 + t);
        random_blocks(t, w.p, n);
    } else {
        fill(wf, n, pat, seed + 1000);
        ti->from_float_ref(wf, w.p, n);
    }
    vi->from_float_ref(x, xq.p, n);
    decode_row(t, w.p, n, dw);
    decode_row_magnitude(t, w.p, n, mw);
    decode_row(vt, xq.p, n, dx);
    double exact = 0, mag = 0;
    for (int64_t i = 0; i < n; i++) {
        exact += dw[i] * dx[i];
        mag += mw[i] * fabs(dx[i]);
    }
    const int64_t nb = n / ti->block_size;
    const double bound = (ti->is_quantized ? (double)(nb + 8) : (double)n / 8 + 16) * FLT_EPSILON * mag;

    float ref;
    ti->vec_dot_ref(n, &ref, w.p, xq.p);
    cr_assert(fabs(ref - exact) <= bound, "%s ref, n=%lld %s seed %llu%s: %.9g vs exact %.9g (bound %.3g)", ti->name,
              (long long)n, pat_names[pat], (unsigned long long)seed, random_bytes ? " random blocks" : "",
              (double)ref, exact, bound);
    const spud_kernel_set *sets[SPUD_ISA_COUNT];
    for (int k = 0, ns = simd_sets(sets); k < ns; k++) {
        float got = NAN;
        sets[k]->vec_dot[t](n, &got, w.p, xq.p);
        if (t == SPUD_TYPE_Q6_K) {
            cr_assert(f2u(got) == f2u(ref), "q6_K %s, n=%lld %s seed %llu: %.9g, ref %.9g (must be identical)",
                      sets[k]->name, (long long)n, pat_names[pat], (unsigned long long)seed, (double)got, (double)ref);
        }
        cr_assert(fabs(got - exact) <= bound, "%s %s, n=%lld %s seed %llu%s: %.9g vs exact %.9g (ref %.9g, bound %.3g)",
                  ti->name, sets[k]->name, (long long)n, pat_names[pat], (unsigned long long)seed,
                  random_bytes ? " random blocks" : "", (double)got, exact, (double)ref, bound);
    }
    free(wf);
    free(dw);
    free(mw);
    free(dx);
    buf_free(w);
    buf_free(xq);
}

static void dot_suite(spud_type t, const int64_t *lengths, size_t n_lengths) {
    for (size_t li = 0; li < n_lengths; li++) {
        const int64_t n = lengths[li];
        float *x = malloc(n * sizeof(float));
        for (int pat = 0; pat < PAT_COUNT; pat++) {
            if (pat == PAT_BITS) continue; /* products overflow: no finite answer to compare */
            for (uint64_t seed = 1; seed <= 2; seed++) {
                fill(x, n, pat, seed);
                check_dot(t, n, pat, seed, false, x);
                check_dot(t, n, pat, seed, true, x);
            }
        }
        free(x);
    }
}

static const int64_t len32[] = {32, 64, 96, 480, 512, 544, 992, 1056, 4096, 4128};
static const int64_t len256[] = {256, 512, 768, 1792, 4096, 4352};
static const int64_t len1[] = {1, 7, 8, 15, 16, 17, 31, 63, 64, 65, 100, 1000, 4096, 4099};

Test(simd, dot_q4_0) { dot_suite(SPUD_TYPE_Q4_0, len32, sizeof len32 / sizeof len32[0]); }
Test(simd, dot_q8_0) { dot_suite(SPUD_TYPE_Q8_0, len32, sizeof len32 / sizeof len32[0]); }
Test(simd, dot_q4_K) { dot_suite(SPUD_TYPE_Q4_K, len256, sizeof len256 / sizeof len256[0]); }
Test(simd, dot_q6_K) { dot_suite(SPUD_TYPE_Q6_K, len256, sizeof len256 / sizeof len256[0]); }
Test(simd, dot_f32) { dot_suite(SPUD_TYPE_F32, len1, sizeof len1 / sizeof len1[0]); }
Test(simd, dot_f16) { dot_suite(SPUD_TYPE_F16, len1, sizeof len1 / sizeof len1[0]); }
Test(simd, dot_bf16) { dot_suite(SPUD_TYPE_BF16, len1, sizeof len1 / sizeof len1[0]); }

/* ------------------------------------------------------------------------ */
/* Matrix-matrix kernels                                                     */
/* ------------------------------------------------------------------------ */

/* Prepare nc activation rows of length k for weights of type t from pattern
 * pat; checks them against the vec_dot_type quantizer and returns the
 * dequantized values (nc x k) in *vals. */
static char *gemm_rows(spud_type t, int64_t k, int nc, int pat, uint64_t seed, double **vals) {
    const spud_type_info *ti = spud_type_get(t);
    const spud_type vt = ti->vec_dot_type;
    const size_t xrow = spud_gemm_x_row_bytes(t, k), soff = spud_gemm_x_scale_offset(t, k);
    const int gs = ti->gemm_group;
    const int64_t ng = gs ? k / gs : 0;
    char *xs = aligned_alloc(64, xrow * (size_t)nc);
    float *xf = malloc((size_t)k * sizeof(float));
    buf q8 = buf_new(spud_row_size(vt, k), 4);
    double *dq = malloc((size_t)k * sizeof(double));
    *vals = malloc((size_t)(k * nc) * sizeof(double));
    cr_assert(xs && xf && dq && *vals);
    for (int c = 0; c < nc; c++) {
        fill(xf, k, pat, seed * 7 + (uint64_t)c);
        char *row = xs + (size_t)c * xrow;
        spud_gemm_x_row(t, xf, k, row);
        if (!gs) { /* float weights: the rows as they are */
            cr_assert(memcmp(row, xf, (size_t)k * sizeof(float)) == 0, "%s gemm row %d is not the input", ti->name, c);
            for (int64_t i = 0; i < k; i++) (*vals)[c * k + i] = xf[i];
            continue;
        }
        spud_type_get(vt)->from_float_ref(xf, q8.p, k);
        decode_row(vt, q8.p, k, dq);
        const int8_t *q = (const int8_t *)row;
        const float *dx = (const float *)(const void *)(row + soff);
        for (int64_t g = 0; g < ng; g++) {
            int32_t sum = 0;
            for (int e = 0; e < gs; e++) {
                const int64_t i = g * gs + e;
                sum += q[i];
                (*vals)[c * k + i] = (double)dx[g] * q[i];
                cr_assert((*vals)[c * k + i] == dq[i], "%s gemm row %d element %lld: %g vs quantizer %g", ti->name, c,
                          (long long)i, (*vals)[c * k + i], dq[i]);
            }
            if (t == SPUD_TYPE_Q4_K) {
                cr_assert(f2u(dx[ng + g]) == f2u(dx[g] * (float)sum), "q4_K aux group %lld", (long long)g);
            } else {
                int32_t aux;
                memcpy(&aux, &dx[ng + g], 4);
                const int32_t off = t == SPUD_TYPE_Q4_0 ? 8 : t == SPUD_TYPE_Q8_0 ? 128 : 32;
                cr_assert(aux == -off * sum, "%s aux group %lld: %d vs %d", ti->name, (long long)g, aux, -off * sum);
            }
        }
    }
    free(xf);
    free(dq);
    buf_free(q8);
    return xs;
}

/* Exactly nr weight rows of type t (ASan sees a read of row nr), quantized
 * from gaussian floats or random blocks. */
static buf gemm_weights(spud_type t, int64_t k, int nr, uint64_t seed, bool random_bytes) {
    const size_t rb = spud_row_size(t, k);
    buf w = buf_new(rb * (size_t)nr, misalign(t) * (1 + seed % 8));
    float *wf = malloc((size_t)k * sizeof(float));
    for (int r = 0; r < nr; r++) {
        char *row = (char *)w.p + (size_t)r * rb;
        if (random_bytes) {
            rng_seed(seed * 31 + (uint64_t)r);
            random_blocks(t, row, k);
        } else {
            fill(wf, k, PAT_GAUSS, seed * 1000 + (uint64_t)r);
            spud_type_get(t)->from_float_ref(wf, row, k);
        }
    }
    free(wf);
    return w;
}

static void check_gemm_fn(const spud_kernel_set *ks, spud_gemm_fn fn, const char *what, spud_type t, int64_t k, int nr,
                          int nc, int pat, uint64_t seed, bool random_bytes) {
    const spud_type_info *ti = spud_type_get(t);
    const spud_type vt = ti->vec_dot_type;
    const size_t rb = spud_row_size(t, k), xrow = spud_gemm_x_row_bytes(t, k);
    buf w = gemm_weights(t, k, nr, seed, random_bytes);
    double *xv;
    char *xs = gemm_rows(t, k, nc, pat, seed, &xv);
    if (!strcmp(what, "mdot"))
        for (int c = 0; c < nc; c++) spud_mdot_x_from_gemm(t, k, xs + (size_t)c * xrow);
    /* the AMX bf16 gemm reads the activations' bf16 split */
    const bool split = t == SPUD_TYPE_BF16 && ks->gemm_bf16_split && !strcmp(what, "gemm");
    if (split)
        for (int c = 0; c < nc; c++) spud_gemm_x_bf16_split(k, xs + (size_t)c * xrow);
    const spud_gemm_x gx = {.x = xs, .x_stride = xrow,
                            .s = ti->gemm_group ? (const float *)(const void *)(xs + spud_gemm_x_scale_offset(t, k)) : NULL,
                            .s_stride = xrow / sizeof(float)};
    const size_t ldy = (size_t)nr + 3;
    float *y = malloc(ldy * (size_t)nc * sizeof(float));
    for (size_t i = 0; i < ldy * (size_t)nc; i++) y[i] = NAN;
    fn(k, w.p, rb, nr, &gx, nc, y, ldy);

    double *dw = malloc((size_t)k * sizeof(double)), *mw = malloc((size_t)k * sizeof(double));
    float *xf = malloc((size_t)k * sizeof(float));
    buf q8 = buf_new(spud_row_size(vt, k) * (size_t)nc, 4);
    for (int c = 0; c < nc; c++) { /* the vec_dot_type rows, for the reference dot */
        fill(xf, k, pat, seed * 7 + (uint64_t)c);
        spud_type_get(vt)->from_float_ref(xf, (char *)q8.p + (size_t)c * spud_row_size(vt, k), k);
    }
    const double nb = (double)(k / ti->block_size);
    /* float weights: the float dot's bound (no groups); quantized: groups scaled in float */
    /* AMX bf16 tiles add every product of a row's three parts to one sum in sequence: 3k roundings of half an ulp */
    const double terms =
        ti->gemm_group ? (double)(k / ti->gemm_group) + 8 : split ? 1.5 * (double)k + 16 : (double)k / 8 + 16;
    const double ref_terms = ti->is_quantized ? nb + 8 : (double)k / 8 + 16;
    for (int r = 0; r < nr; r++) {
        const char *row = (const char *)w.p + (size_t)r * rb;
        decode_row(t, row, k, dw);
        decode_row_magnitude(t, row, k, mw);
        for (int c = 0; c < nc; c++) {
            double exact = 0, mag = 0;
            for (int64_t i = 0; i < k; i++) {
                exact += dw[i] * xv[c * k + i];
                mag += mw[i] * fabs(xv[c * k + i]);
            }
            const double bound = terms * FLT_EPSILON * mag;
            const float got = y[(size_t)c * ldy + (size_t)r];
            cr_assert(fabs(got - exact) <= bound,
                      "%s %s %s k=%lld nr=%d nc=%d row %d col %d %s seed %llu%s: %.9g vs exact %.9g (bound %.3g)",
                      ti->name, ks->name, what, (long long)k, nr, nc, r, c, pat_names[pat], (unsigned long long)seed,
                      random_bytes ? " random blocks" : "", (double)got, exact, bound);
            float ref;
            ti->vec_dot_ref(k, &ref, row, (const char *)q8.p + (size_t)c * spud_row_size(vt, k));
            cr_assert(fabs(got - ref) <= bound + ref_terms * FLT_EPSILON * mag, "%s %s %s vs vec_dot_ref: %.9g vs %.9g",
                      ti->name, ks->name, what, (double)got, (double)ref);
        }
        for (int c = 0; c < nc; c++)
            for (size_t j = (size_t)nr; j < ldy; j++)
                cr_assert(isnan(y[(size_t)c * ldy + j]), "%s %s %s wrote past row %d", ti->name, ks->name, what, nr);
    }
    free(dw);
    free(mw);
    free(xf);
    free(xv);
    free(xs);
    free(y);
    buf_free(q8);
    buf_free(w);
}

static void check_gemm(const spud_kernel_set *ks, spud_type t, int64_t k, int nr, int nc, int pat, uint64_t seed,
                       bool random_bytes) {
    check_gemm_fn(ks, ks->gemm[t], "gemm", t, k, nr, nc, pat, seed, random_bytes);
}

static void gemm_suite(spud_type t, const int64_t *lengths, size_t n_lengths) {
    /* activation rows past 16 and 32 with tails: the AMX kernels take them 16 at a time */
    static const int shapes[][2] = {{16, 13}, {7, 8}, {1, 1}, {16, 24}, {3, 5}, {16, 4}, {16, 32}, {5, 37}};
    const spud_kernel_set *sets[SPUD_ISA_COUNT];
    int tested = 0;
    for (int s = 0, ns = simd_sets(sets); s < ns; s++) {
        if (!sets[s]->gemm[t]) continue;
        tested++;
        for (size_t li = 0; li < n_lengths; li++)
            for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
                for (int pat = 0; pat < PAT_COUNT; pat++) {
                    if (pat == PAT_BITS) continue; /* products overflow */
                    const int nr = shapes[sh][0] > sets[s]->gemm_rows ? sets[s]->gemm_rows : shapes[sh][0];
                    const uint64_t seed = 1 + li * 13 + sh * 5 + (uint64_t)pat;
                    check_gemm(sets[s], t, lengths[li], nr, shapes[sh][1], pat, seed, (pat + sh) % 2 == 0);
                }
    }
    cr_log_info("%s: gemm checked on %d ISA(s)", spud_type_get(t)->name, tested);
}

/* The AMX kernels promise the AVX-512 gemm's exact bits (same integer sums,
 * same float epilogue): checked where the CPU has AMX. */
Test(gemm, amx_same_bits_as_avx512) {
    if (!spud_cpu_has(SPUD_ISA_AMX)) {
        cr_log_info("no AMX on this CPU: skipped");
        return;
    }
    const spud_kernel_set *amx = spud_kernel_set_get(SPUD_ISA_AMX), *avx = spud_kernel_set_get(SPUD_ISA_AVX512);
    const spud_type types[] = {SPUD_TYPE_Q4_0, SPUD_TYPE_Q8_0, SPUD_TYPE_Q4_K, SPUD_TYPE_Q6_K};
    for (size_t ti_ = 0; ti_ < sizeof types / sizeof types[0]; ti_++) {
        const spud_type t = types[ti_];
        const int64_t k = 1792;
        const int nr = 13, nc = 53;
        const size_t rb = spud_row_size(t, k), xrow = spud_gemm_x_row_bytes(t, k);
        buf w = gemm_weights(t, k, nr, 21 + ti_, ti_ % 2 == 0);
        double *xv;
        char *xs = gemm_rows(t, k, nc, PAT_GAUSS, 5 + ti_, &xv);
        const spud_gemm_x gx = {.x = xs, .x_stride = xrow,
                                .s = (const float *)(const void *)(xs + spud_gemm_x_scale_offset(t, k)),
                                .s_stride = xrow / sizeof(float)};
        float *ya = malloc((size_t)nr * nc * sizeof(float)), *yb = malloc((size_t)nr * nc * sizeof(float));
        amx->gemm[t](k, w.p, rb, nr, &gx, nc, ya, (size_t)nr);
        avx->gemm[t](k, w.p, rb, nr, &gx, nc, yb, (size_t)nr);
        for (int e = 0; e < nr * nc; e++)
            cr_assert(f2u(ya[e]) == f2u(yb[e]), "%s output %d: amx %.9g vs avx512 %.9g", spud_type_name(t), e,
                      (double)ya[e], (double)yb[e]);
        free(ya);
        free(yb);
        free(xv);
        free(xs);
        buf_free(w);
    }
}

static const int64_t gemm_len32[] = {32, 96, 512, 544, 1056, 4128};
static const int64_t gemm_len256[] = {256, 512, 768, 1792};

Test(gemm, q4_0) { gemm_suite(SPUD_TYPE_Q4_0, gemm_len32, sizeof gemm_len32 / sizeof gemm_len32[0]); }
Test(gemm, q8_0) { gemm_suite(SPUD_TYPE_Q8_0, gemm_len32, sizeof gemm_len32 / sizeof gemm_len32[0]); }
Test(gemm, q4_K) { gemm_suite(SPUD_TYPE_Q4_K, gemm_len256, sizeof gemm_len256 / sizeof gemm_len256[0]); }
Test(gemm, q6_K) { gemm_suite(SPUD_TYPE_Q6_K, gemm_len256, sizeof gemm_len256 / sizeof gemm_len256[0]); }
static const int64_t gemm_len1[] = {1, 15, 16, 17, 100, 1000, 2051};

/* Small-batch kernels (mdot): the gemm contract and bounds, for nc = 1..20
 * activation rows (past the kernels' 4 or 8 per pass) and 1, 3 or 16 weight
 * rows, over lengths with tails (blocks past a multiple of 16, super-blocks
 * past a multiple of 4). */
static void mdot_suite(spud_type t, const int64_t *lengths, size_t n_lengths) {
    const spud_kernel_set *sets[SPUD_ISA_COUNT];
    static const int nrs[] = {1, 3, 16};
    const int ns = simd_sets(sets);
    int tested = 0;
    for (int s = 0; s < ns; s++) {
        if (!sets[s]->mdot[t]) continue;
        tested++;
        for (size_t li = 0; li < n_lengths; li++)
            for (int nc = 1; nc <= 20; nc++) {
                int pat = (int)(li + (size_t)nc) % PAT_COUNT;
                if (pat == PAT_BITS) pat = PAT_GAUSS; /* products overflow */
                const uint64_t seed = 3 + li * 29 + (uint64_t)nc;
                check_gemm_fn(sets[s], sets[s]->mdot[t], "mdot", t, lengths[li], nrs[nc % 3], nc, pat, seed,
                              nc % 2 == 0);
            }
    }
    cr_log_info("%s: mdot checked on %d ISA(s)", spud_type_get(t)->name, tested);
    /* every SIMD set has the four quantized mdots (AVX2 since issue 7): one
     * that loses a kernel fails here rather than going unchecked */
    cr_assert_eq(tested, ns, "%s: a SIMD set this CPU runs has no mdot", spud_type_get(t)->name);
}

static const int64_t mdot_len32[] = {32, 96, 512, 544, 1056, 4128, 2048 + 15 * 32, 8192 + 32};
static const int64_t mdot_len256[] = {256, 512, 1792, 4096, 8192 + 256};

Test(mdot, q4_0) { mdot_suite(SPUD_TYPE_Q4_0, mdot_len32, sizeof mdot_len32 / sizeof mdot_len32[0]); }
Test(mdot, q8_0) { mdot_suite(SPUD_TYPE_Q8_0, mdot_len32, sizeof mdot_len32 / sizeof mdot_len32[0]); }
Test(mdot, q4_K) { mdot_suite(SPUD_TYPE_Q4_K, mdot_len256, sizeof mdot_len256 / sizeof mdot_len256[0]); }
Test(mdot, q6_K) { mdot_suite(SPUD_TYPE_Q6_K, mdot_len256, sizeof mdot_len256 / sizeof mdot_len256[0]); }

/* spud_matmul with n = 1..20 rows at once (vec_dot, mdot and gemm paths,
 * whichever the thresholds pick) against one row per call, on 2 threads;
 * with a fused second output of the same type. Bound as in
 * gemm.matmul_paths_agree. */
Test(mdot, matmul_small_batches) {
    spud_kernels_init(false);
    spud_pool *pool;
    cr_assert_eq(spud_pool_new(2, &pool), SPUD_OK);
    const spud_type types[] = {SPUD_TYPE_Q4_0, SPUD_TYPE_Q8_0, SPUD_TYPE_Q4_K, SPUD_TYPE_Q6_K, SPUD_TYPE_F16};
    const int64_t k = 1024 + 256, n_out = 41, n_max = 20;
    for (size_t ti_ = 0; ti_ < sizeof types / sizeof types[0]; ti_++) {
        const spud_type t = types[ti_];
        const spud_type_info *ti = spud_type_get(t);
        buf wb = gemm_weights(t, k, (int)n_out, 5, ti_ % 2 == 1);
        spud_weight w = {.type = t, .data = wb.p, .n_in = k, .n_out = n_out, .row_bytes = spud_row_size(t, k)};
        spud_weight w2 = w;
        w2.n_out = n_out - 8;
        w2.data = (const char *)wb.p + 8 * w.row_bytes;
        float *x = malloc((size_t)(n_max * k) * sizeof(float));
        fill(x, n_max * k, PAT_GAUSS, 11);
        void *scratch = aligned_alloc(64, (spud_matmul_scratch_bytes(&w, n_max) + 63) & ~(size_t)63);
        float *ya = malloc((size_t)(n_max * n_out) * sizeof(float)), *yb = malloc((size_t)(n_max * n_out) * sizeof(float));
        float *y2 = malloc((size_t)(n_max * n_out) * sizeof(float));
        for (int64_t i = 0; i < n_max; i++) spud_matmul(pool, &w, x + i * k, yb + i * n_out, 1, scratch);
        double *mw = malloc((size_t)k * sizeof(double)), *xd = malloc((size_t)(n_max * k) * sizeof(double));
        buf q8 = buf_new(spud_row_size(ti->vec_dot_type, k), 4);
        for (int64_t i = 0; i < n_max; i++) {
            spud_type_get(ti->vec_dot_type)->from_float_ref(x + i * k, q8.p, k);
            decode_row(ti->vec_dot_type, q8.p, k, xd + i * k);
        }
        buf_free(q8);
        const double nb = (double)(k / ti->block_size);
        const double ng = ti->gemm_group ? (double)(k / ti->gemm_group) : nb;
        for (int64_t n = 1; n <= n_max; n++) {
            for (size_t e = 0; e < (size_t)(n_max * n_out); e++) ya[e] = y2[e] = NAN;
            cr_assert(spud_matmul_compatible(&w, &w2, n));
            const spud_matmul_out outs[2] = {{.w = &w, .y = ya}, {.w = &w2, .y = y2}};
            spud_matmul_multi(pool, outs, 2, x, n, scratch, NULL, NULL);
            for (int64_t r = 0; r < n_out; r++) {
                decode_row_magnitude(t, (const char *)wb.p + r * w.row_bytes, k, mw);
                for (int64_t i = 0; i < n; i++) {
                    double mag = 0;
                    for (int64_t q = 0; q < k; q++) mag += mw[q] * fabs(xd[i * k + q]);
                    const double bound = (ti->is_quantized ? ng + nb + 16 : (double)k / 4 + 32) * FLT_EPSILON * mag;
                    const float a = ya[i * n_out + r], b = yb[i * n_out + r];
                    cr_assert(fabs(a - b) <= bound, "%s n=%lld row %lld col %lld: %.9g vs %.9g", ti->name, (long long)n,
                              (long long)r, (long long)i, (double)a, (double)b);
                    /* one row and n rows both on the mdot path: the same bits (batch-invariant decode) */
                    if (ti->mdot && n <= ti->mdot_max)
                        cr_assert(a == b, "%s n=%lld row %lld col %lld: mdot %.9g alone vs %.9g in a batch", ti->name,
                                  (long long)n, (long long)r, (long long)i, (double)b, (double)a);
                    if (r >= 8)
                        cr_assert(y2[i * w2.n_out + r - 8] == a, "%s n=%lld: second output row %lld differs", ti->name,
                                  (long long)n, (long long)r - 8);
                }
            }
            for (int64_t e = n * n_out; e < n_max * n_out; e++)
                cr_assert(isnan(ya[e]), "%s n=%lld wrote past its rows", ti->name, (long long)n);
        }
        free(mw);
        free(xd);
        free(x);
        free(scratch);
        free(ya);
        free(yb);
        free(y2);
        buf_free(wb);
    }
    spud_pool_free(pool);
}

Test(gemm, f32) { gemm_suite(SPUD_TYPE_F32, gemm_len1, sizeof gemm_len1 / sizeof gemm_len1[0]); }
Test(gemm, f16) { gemm_suite(SPUD_TYPE_F16, gemm_len1, sizeof gemm_len1 / sizeof gemm_len1[0]); }
Test(gemm, bf16) { gemm_suite(SPUD_TYPE_BF16, gemm_len1, sizeof gemm_len1 / sizeof gemm_len1[0]); }

/* spud_matmul: many rows at once (the gemm path where the kernels have one)
 * against one row per call (mdot or vec_dot), on 2 threads. */
Test(gemm, matmul_paths_agree) {
    spud_kernels_init(false);
    spud_pool *pool;
    cr_assert_eq(spud_pool_new(2, &pool), SPUD_OK);
    const spud_type types[] = {SPUD_TYPE_Q4_0, SPUD_TYPE_Q8_0, SPUD_TYPE_Q4_K, SPUD_TYPE_Q6_K,
                               SPUD_TYPE_F32,  SPUD_TYPE_F16,  SPUD_TYPE_BF16};
    const int64_t k = 768, n_out = 37, n = 19;
    for (size_t ti_ = 0; ti_ < sizeof types / sizeof types[0]; ti_++) {
        const spud_type t = types[ti_];
        const spud_type_info *ti = spud_type_get(t);
        buf wb = gemm_weights(t, k, (int)n_out, 3, false);
        spud_weight w = {.type = t, .data = wb.p, .n_in = k, .n_out = n_out, .row_bytes = spud_row_size(t, k)};
        float *x = malloc((size_t)(n * k) * sizeof(float));
        fill(x, n * k, PAT_GAUSS, 9);
        void *scratch = aligned_alloc(64, (spud_matmul_scratch_bytes(&w, n) + 63) & ~(size_t)63);
        float *ya = malloc((size_t)(n * n_out) * sizeof(float)), *yb = malloc((size_t)(n * n_out) * sizeof(float));
        spud_matmul(pool, &w, x, ya, n, scratch);
        for (int64_t i = 0; i < n; i++) spud_matmul(pool, &w, x + i * k, yb + i * n_out, 1, scratch);
        double *dw = malloc((size_t)k * sizeof(double)), *mw = malloc((size_t)k * sizeof(double));
        const double nb = (double)(k / ti->block_size);
        const double ng = ti->gemm_group ? (double)(k / ti->gemm_group) : nb;
        /* the activations as the products see them (quantized for quantized weights) */
        double *xd = malloc((size_t)(n * k) * sizeof(double));
        buf q8 = buf_new(spud_row_size(ti->vec_dot_type, k), 4);
        for (int64_t i = 0; i < n; i++) {
            spud_type_get(ti->vec_dot_type)->from_float_ref(x + i * k, q8.p, k);
            decode_row(ti->vec_dot_type, q8.p, k, xd + i * k);
        }
        buf_free(q8);
        for (int64_t r = 0; r < n_out; r++) {
            decode_row_magnitude(t, (const char *)wb.p + r * w.row_bytes, k, mw);
            for (int64_t i = 0; i < n; i++) {
                double mag = 0;
                for (int64_t e = 0; e < k; e++) mag += mw[e] * fabs(xd[i * k + e]);
                const double bound = (ti->is_quantized ? ng + nb + 16 : (double)k / 4 + 32) * FLT_EPSILON * mag;
                cr_assert(fabs(ya[i * n_out + r] - yb[i * n_out + r]) <= bound, "%s row %lld col %lld: %.9g vs %.9g",
                          ti->name, (long long)r, (long long)i, (double)ya[i * n_out + r], (double)yb[i * n_out + r]);
            }
        }
        free(dw);
        free(mw);
        free(xd);
        free(x);
        free(scratch);
        free(ya);
        free(yb);
        buf_free(wb);
    }
    spud_pool_free(pool);
}

/* ------------------------------------------------------------------------ */
/* Attention                                                                 */
/* ------------------------------------------------------------------------ */

static void check_attn(spud_type kv, int hd, int nq, int n, uint64_t seed) {
    const int n_alloc = (n + SPUD_ATTN_SPAN - 1) / SPUD_ATTN_SPAN * SPUD_ATTN_SPAN;
    const size_t row = spud_kv_row_bytes(kv, hd);
    char *k = aligned_alloc(64, (size_t)n_alloc * row), *v = aligned_alloc(64, (size_t)n_alloc * row);
    float *kf = malloc((size_t)n_alloc * hd * sizeof(float)), *vf = malloc((size_t)n_alloc * hd * sizeof(float));
    float *q = malloc((size_t)nq * hd * sizeof(float));
    int32_t last[SPUD_ATTN_MAX_Q];
    rng_seed(seed);
    if (kv == SPUD_TYPE_Q8_0) { /* rows of gaussians quantized per position; the padding is all 0xFF */
        memset(k, 0xFF, (size_t)n_alloc * row);
        memset(v, 0xFF, (size_t)n_alloc * row);
        float *tk = malloc((size_t)hd * sizeof(float)), *tv = malloc((size_t)hd * sizeof(float));
        for (int t = 0; t < n; t++) {
            for (int i = 0; i < hd; i++) tk[i] = rng_gauss(), tv[i] = rng_gauss() * 2;
            const float dk = spud_kv_q8_quantize(tk, hd, NULL);
            int8_t *vr = (int8_t *)(v + spud_kv_q8_v_row(hd, (uint32_t)t));
            const float dv = spud_kv_q8_quantize(tv, hd, vr);
            memcpy(k + spud_kv_q8_k_scale(hd, (uint32_t)t), &dk, 4);
            memcpy((char *)vr + hd, &dv, 4);
            for (int i = 0; i < hd; i++) {
                const int8_t qk = spud_kv_q8_value(tk[i], dk);
                ((uint8_t *)k)[spud_kv_q8_k_index(hd, (uint32_t)t, i)] = (uint8_t)(qk + 128);
                kf[spud_kv_k_index(hd, (uint32_t)t, i)] = qk * dk;
                vf[(size_t)t * hd + (size_t)i] = vr[i] * dv;
            }
        }
        free(tk);
        free(tv);
    }
    for (int t = 0; t < n_alloc && kv != SPUD_TYPE_Q8_0; t++)
        for (int i = 0; i < hd; i++) {
            /* the padding past position n is NaN: it must never reach an output */
            const float a = t < n ? rng_gauss() : NAN, b = t < n ? rng_gauss() * 2 : NAN;
            const size_t ki = spud_kv_k_index(hd, (uint32_t)t, i), vi = (size_t)t * hd + (size_t)i;
            if (kv == SPUD_TYPE_F16) {
                ((spud_f16 *)(void *)k)[ki] = spud_f32_to_f16(a);
                ((spud_f16 *)(void *)v)[vi] = spud_f32_to_f16(b);
                kf[ki] = spud_f16_to_f32(spud_f32_to_f16(a));
                vf[vi] = spud_f16_to_f32(spud_f32_to_f16(b));
            } else {
                ((float *)(void *)k)[ki] = kf[ki] = a;
                ((float *)(void *)v)[vi] = vf[vi] = b;
            }
        }
    for (int j = 0; j < nq; j++) {
        float *qj = q + (size_t)j * hd;
        for (int i = 0; i < hd; i++) qj[i] = rng_gauss() * 1.5f / sqrtf((float)hd);
        if (kv == SPUD_TYPE_Q8_0) {
            /* the kernels round queries to int8 for a q8_0 cache: give them
             * queries that are int8 values times their scale already, so the
             * double reference computes what they compute */
            const float dq = spud_kv_q8_quantize(qj, hd, NULL);
            for (int i = 0; i < hd; i++) qj[i] = spud_kv_q8_value(qj[i], dq) * dq;
        }
        last[j] = n - 1 - (j % 3) * 7;
        if (last[j] < 0) last[j] = j % (n < 5 ? n : 5);
    }
    float *work = aligned_alloc(64, ((spud_attn_work_floats(hd) * sizeof(float)) + 63) & ~(size_t)63);
    float *want = malloc((size_t)nq * hd * sizeof(float)), *got = malloc((size_t)nq * hd * sizeof(float));
    spud_attn_ref(hd, nq, q, last, kv, k, v, want, work);
    double vmax = 0;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < hd; i++) vmax = fmax(vmax, fabs(vf[(size_t)t * hd + i]));
    double smax = 0;
    for (int j = 0; j < nq; j++)
        for (int t = 0; t <= last[j]; t++) {
            double a = 0;
            for (int i = 0; i < hd; i++) a += fabs((double)q[(size_t)j * hd + i] * kf[spud_kv_k_index(hd, (uint32_t)t, i)]);
            smax = fmax(smax, a);
        }
    const double bound = (2.0 * hd * smax + n + 32) * FLT_EPSILON * vmax;
    const spud_kernel_set *sets[SPUD_ISA_COUNT];
    for (int s = 0, ns = simd_sets(sets); s <= ns; s++) {
        const spud_attn_fn fn = s < ns ? sets[s]->attn : spud_attn;
        if (!fn) continue;
        for (size_t i = 0; i < (size_t)nq * hd; i++) got[i] = NAN;
        fn(hd, nq, q, last, kv, k, v, got, work);
        for (int j = 0; j < nq; j++)
            for (int i = 0; i < hd; i++) {
                const size_t e = (size_t)j * hd + i;
                cr_assert(fabs(got[e] - want[e]) <= bound, "attn %s %s hd=%d nq=%d n=%d query %d (last %d) dim %d: %.9g vs ref %.9g (bound %.3g)",
                          s < ns ? sets[s]->name : "dispatched", spud_type_name(kv), hd, nq, n, j, last[j], i,
                          (double)got[e], (double)want[e], bound);
            }
    }
    free(k);
    free(v);
    free(kf);
    free(vf);
    free(q);
    free(work);
    free(want);
    free(got);
}

Test(attn, against_reference) {
    spud_kernels_init(false);
    const spud_kernel_set *sets[SPUD_ISA_COUNT];
    for (int s = 0, ns = simd_sets(sets); s < ns; s++) /* else check_attn would test their fallback */
        cr_assert(sets[s]->attn && sets[s]->attn_q8, "%s: no SIMD attention over q8_0 caches", sets[s]->name);
    static const int hds[] = {16, 64, 80, 128};
    static const int nqs[] = {1, 3, 4, 5, 16};
    static const int ns[] = {1, 2, 15, 16, 17, 63, 64, 65, 200, 300};
    uint64_t seed = 1;
    static const spud_type kvs[] = {SPUD_TYPE_F32, SPUD_TYPE_F16, SPUD_TYPE_Q8_0};
    for (int kv = 0; kv < 3; kv++)
        for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++)
            for (size_t a = 0; a < sizeof nqs / sizeof nqs[0]; a++)
                for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++)
                    check_attn(kvs[kv], hds[h], nqs[a], ns[b], seed++);
}

/* Scores far apart (one position dominates, others underflow to 0) and equal. */
Test(attn, extreme_scores) {
    spud_kernels_init(false);
    const int hd = 64, n = 130;
    float *k = aligned_alloc(64, 192 * hd * 4), *v = aligned_alloc(64, 192 * hd * 4), *q = malloc(hd * 4);
    float *work = aligned_alloc(64, ((spud_attn_work_floats(hd) * sizeof(float)) + 63) & ~(size_t)63);
    float out[64], ref[64];
    for (int t = 0; t < 192; t++)
        for (int i = 0; i < hd; i++) {
            k[spud_kv_k_index(hd, (uint32_t)t, i)] = t == 77 ? 50.f : (t < n ? 0.f : NAN);
            v[t * hd + i] = t < n ? (float)(t + i) : NAN;
        }
    for (int i = 0; i < hd; i++) q[i] = 1.f;
    const int32_t last = n - 1;
    spud_attn(hd, 1, q, &last, SPUD_TYPE_F32, k, v, out, work);
    for (int i = 0; i < hd; i++) cr_assert_float_eq(out[i], (float)(77 + i), 1e-3, "dominant position, dim %d: %g", i, (double)out[i]);
    for (int i = 0; i < hd; i++) q[i] = 0.f; /* all scores 0: the mean of V */
    spud_attn(hd, 1, q, &last, SPUD_TYPE_F32, k, v, out, work);
    spud_attn_ref(hd, 1, q, &last, SPUD_TYPE_F32, k, v, ref, work);
    for (int i = 0; i < hd; i++) {
        cr_assert_float_eq(ref[i], (float)((n - 1) / 2.0 + i), 1e-4, "ref mean, dim %d", i);
        cr_assert_float_eq(out[i], ref[i], 1e-3, "mean, dim %d: %g vs %g", i, (double)out[i], (double)ref[i]);
    }
    free(k);
    free(v);
    free(q);
    free(work);
}

static void check_f32_helpers(spud_dot_f32_fn dot, spud_axpy_f32_fn axpy, const char *name) {
    for (size_t li = 0; li < sizeof len1 / sizeof len1[0]; li++) {
        const int64_t n = len1[li];
        buf a = buf_new(n * 4, 4), b = buf_new(n * 4, 4), y = buf_new(n * 4, 4);
        float *yr = malloc(n * 4);
        float *pa = a.p, *pb = b.p, *py = y.p;
        fill(pa, n, PAT_GAUSS, (uint64_t)n);
        fill(pb, n, PAT_SPIKE, (uint64_t)n + 1);
        double exact = 0, mag = 0;
        for (int64_t i = 0; i < n; i++) {
            exact += (double)pa[i] * pb[i];
            mag += fabs((double)pa[i] * pb[i]);
        }
        const float got = dot(pa, pb, n);
        cr_assert(fabs(got - exact) <= ((double)n / 8 + 16) * FLT_EPSILON * mag, "%s dot_f32 n=%lld: %.9g vs %.9g",
                  name, (long long)n, (double)got, exact);
        const float alpha = -0.37f;
        memcpy(py, pb, n * 4);
        memcpy(yr, pb, n * 4);
        axpy(py, alpha, pa, n);
        spud_axpy_f32_ref(yr, alpha, pa, n);
        for (int64_t i = 0; i < n; i++)
            cr_assert(fabs(py[i] - yr[i]) <= FLT_EPSILON * (fabs(pb[i]) + fabs(alpha * pa[i])),
                      "%s axpy n=%lld element %lld: %a vs %a", name, (long long)n, (long long)i, (double)py[i],
                      (double)yr[i]);
        buf_free(a);
        buf_free(b);
        buf_free(y);
        free(yr);
    }
}

Test(simd, swiglu) {
    spud_kernels_init(false);
    const int64_t n = 4099;
    float *g = malloc(n * 4), *u = malloc(n * 4), *want = malloc(n * 4), *got = malloc(n * 4);
    for (int pat = 0; pat < PAT_COUNT; pat++) {
        fill(g, n, pat, 3);
        fill(u, n, PAT_GAUSS, 4);
        if (pat == PAT_BITS)
            for (int64_t i = 0; i < n; i++) g[i] = fmaxf(fminf(g[i], 1e30f), -1e30f);
        g[0] = 100.f, g[1] = -100.f, g[2] = 0.f, g[3] = -87.5f, g[4] = 88.5f;
        memcpy(want, g, n * 4);
        spud_swiglu_f32_ref(want, u, n);
        const spud_kernel_set *sets[SPUD_ISA_COUNT];
        for (int s = 0, ns = simd_sets(sets); s <= ns; s++) {
            memcpy(got, g, n * 4);
            if (s < ns) {
                if (!sets[s]->swiglu_f32) continue;
                sets[s]->swiglu_f32(got, u, n);
            } else {
                spud_swiglu_f32(got, u, n);
            }
            for (int64_t i = 0; i < n; i++)
                cr_assert(fabs((double)got[i] - want[i]) <= 16 * FLT_EPSILON * fabs(want[i]) + 1e-35,
                          "swiglu %s %s element %lld: g %a u %a: %a vs ref %a", s < ns ? sets[s]->name : "dispatched",
                          pat_names[pat], (long long)i, (double)g[i], (double)u[i], (double)got[i], (double)want[i]);
        }
    }
    free(g);
    free(u);
    free(want);
    free(got);
}

Test(simd, f32_helpers) {
    check_f32_helpers(spud_dot_f32_ref, spud_axpy_f32_ref, "scalar");
    const spud_kernel_set *sets[SPUD_ISA_COUNT];
    for (int k = 0, ns = simd_sets(sets); k < ns; k++) check_f32_helpers(sets[k]->dot_f32, sets[k]->axpy_f32, sets[k]->name);
    spud_kernels_init(false);
    check_f32_helpers(spud_dot_f32, spud_axpy_f32, "dispatched");
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                  */
/* ------------------------------------------------------------------------ */

/* Criterion runs each test in its own process, so each sees a fresh init. */
Test(dispatch, picks_this_cpu) {
    unsetenv("SPUD_SCALAR");
    unsetenv("SPUD_ISA");
    cr_assert(spud_type_get(SPUD_TYPE_Q4_0)->vec_dot == spud_vec_dot_q4_0_q8_0_ref, "references before init");
    const char *isa = spud_kernels_init(false);
    const spud_isa want = spud_cpu_has(SPUD_ISA_AMX)      ? SPUD_ISA_AMX
                          : spud_cpu_has(SPUD_ISA_AVX512) ? SPUD_ISA_AVX512
                          : spud_cpu_has(SPUD_ISA_AVX2)   ? SPUD_ISA_AVX2
                                                          : SPUD_ISA_SCALAR;
    const spud_kernel_set *ks = spud_kernel_set_get(want);
    cr_log_info("kernels: %s", isa);
    cr_assert_str_eq(isa, ks->name);
    cr_assert_str_eq(spud_kernels_init(true), isa, "the first call decides");
    for (uint32_t t = 0; t < SPUD_TYPE_COUNT; t++) {
        const spud_type_info *ti = spud_type_get(t);
        if (!ti) continue;
        if (ks->vec_dot[t]) cr_assert(ti->vec_dot == ks->vec_dot[t], "%s vec_dot dispatched", ti->name);
        if (ks->to_float[t]) cr_assert(ti->to_float == ks->to_float[t], "%s to_float dispatched", ti->name);
        if (ks->from_float[t]) cr_assert(ti->from_float == ks->from_float[t], "%s from_float dispatched", ti->name);
        if (ks->gemm[t]) cr_assert(ti->gemm == ks->gemm[t] && ti->gemm_rows == ks->gemm_rows, "%s gemm dispatched", ti->name);
    }
}

Test(dispatch, env_forces_scalar) {
    setenv("SPUD_SCALAR", "1", 1);
    cr_assert_str_eq(spud_kernels_init(false), "scalar");
    cr_assert(spud_type_get(SPUD_TYPE_Q4_K)->vec_dot == spud_vec_dot_q4_K_q8_K_ref);
    cr_assert(spud_type_get(SPUD_TYPE_Q8_0)->from_float == spud_quant_q8_0_ref);
    cr_assert(spud_type_get(SPUD_TYPE_F16)->to_float == spud_dequant_f16_ref);
}

Test(dispatch, isa_env_caps_the_set) {
    unsetenv("SPUD_SCALAR");
    setenv("SPUD_ISA", "avx2", 1);
    const char *want = spud_cpu_has(SPUD_ISA_AVX2) ? "avx2" : "scalar";
    cr_assert_str_eq(spud_kernels_init(false), want);
    if (spud_cpu_has(SPUD_ISA_AVX2))
        cr_assert(spud_type_get(SPUD_TYPE_Q4_0)->gemm == spud_kernel_set_get(SPUD_ISA_AVX2)->gemm[SPUD_TYPE_Q4_0]);
}

Test(dispatch, isa_env_caps_at_avx512) {
    unsetenv("SPUD_SCALAR");
    setenv("SPUD_ISA", "avx512", 1);
    const char *want = spud_cpu_has(SPUD_ISA_AVX512) ? "avx512" : spud_cpu_has(SPUD_ISA_AVX2) ? "avx2" : "scalar";
    cr_assert_str_eq(spud_kernels_init(false), want);
}

Test(dispatch, argument_forces_scalar) {
    unsetenv("SPUD_SCALAR");
    unsetenv("SPUD_ISA");
    cr_assert_str_eq(spud_kernels_init(true), "scalar");
    cr_assert(spud_type_get(SPUD_TYPE_Q6_K)->vec_dot == spud_vec_dot_q6_K_q8_K_ref);
}

static void *init_thread(void *arg) {
    *(const char **)arg = spud_kernels_init(false);
    return NULL;
}

Test(dispatch, concurrent_init) {
    unsetenv("SPUD_SCALAR");
    unsetenv("SPUD_ISA");
    pthread_t th[8];
    const char *names[8];
    for (int i = 0; i < 8; i++) cr_assert(pthread_create(&th[i], NULL, init_thread, &names[i]) == 0);
    for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
    for (int i = 1; i < 8; i++) cr_assert(names[i] == names[0] && names[0] != NULL);
    cr_assert_str_eq(names[0], spud_kernels_init(false));
}
