/* test_sampler.c: spud_sampler_* against independently computed expectations:
 * argmax by a plain scan, softmax in double, nuclei and min-p sets by a full
 * qsort in the test, penalties by hand-worked numbers flipping a greedy pick. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "spud.h"

/* All filters off, temperature 1. */
static spud_sampler_params plain(uint64_t seed) {
    return (spud_sampler_params){.temp = 1.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f, .repeat_penalty = 1.0f,
                                 .repeat_last_n = 64, .seed = seed};
}

static spud_sampler *mk(spud_sampler_params p, int32_t n_vocab) {
    spud_sampler *s = spud_sampler_new(&p, n_vocab);
    cr_assert_not_null(s, "spud_sampler_new: %s", spud_last_error());
    return s;
}

/* Test-local generator, independent of the sampler's. */
static uint64_t t_rng = 88172645463325252ull;
static double t_uniform(void) {
    t_rng ^= t_rng << 13;
    t_rng ^= t_rng >> 7;
    t_rng ^= t_rng << 17;
    return (double)(t_rng >> 11) * 0x1.0p-53;
}

/* Softmax of logits / temp in double over the ids with keep[i] (NULL: all). */
static void softmax_ref(const float *l, int n, double temp, const bool *keep, double *p) {
    double mx = -INFINITY, z = 0;
    for (int i = 0; i < n; i++)
        if ((!keep || keep[i]) && l[i] > mx) mx = l[i];
    for (int i = 0; i < n; i++) {
        p[i] = (!keep || keep[i]) ? exp(((double)l[i] - mx) / temp) : 0.0;
        z += p[i];
    }
    for (int i = 0; i < n; i++) p[i] /= z;
}

/* Draw `draws` tokens; count them; fail on an id outside [0, n). */
static void histogram(spud_sampler *s, const float *l, int n, int draws, long *cnt) {
    memset(cnt, 0, sizeof(long) * (size_t)n);
    for (int k = 0; k < draws; k++) {
        int32_t t = spud_sampler_sample(s, l, n);
        cr_assert(t >= 0 && t < n, "token %d out of range", (int)t);
        cnt[t]++;
    }
}

/* Pearson chi-square of counts against probabilities (cells with p = 0 must
 * be empty); returns the statistic, *df the degrees of freedom. */
static double chi_square(const long *cnt, const double *p, int n, long draws, int *df) {
    double x2 = 0;
    int cells = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] == 0.0) {
            cr_assert_eq(cnt[i], 0, "token %d has probability 0 but was drawn %ld times", i, cnt[i]);
            continue;
        }
        double e = p[i] * (double)draws;
        x2 += ((double)cnt[i] - e) * ((double)cnt[i] - e) / e;
        cells++;
    }
    *df = cells - 1;
    return x2;
}

/* Chi-square quantiles at 1 - 1e-6 (computed offline), indexed by df. */
static double chi2_crit(int df) {
    static const double q[] = {0, 23.93, 27.63, 30.66, 33.38, 35.89, 38.26, 40.52, 42.70, 44.81};
    cr_assert(df >= 1 && df <= 9);
    return q[df];
}

static void check_distribution(spud_sampler *s, const float *l, int n, const double *p, long draws) {
    long cnt[64];
    cr_assert(n <= 64);
    histogram(s, l, n, (int)draws, cnt);
    int df;
    double x2 = chi_square(cnt, p, n, draws, &df);
    if (df == 0) return; /* one possible token, and chi_square checked the rest */
    cr_assert(x2 < chi2_crit(df), "chi-square %.2f >= %.2f (df %d)", x2, chi2_crit(df), df);
}

/* The set of drawn ids must equal want[] (ids with want[i] true). */
static void check_support(spud_sampler *s, const float *l, int n, int draws, const bool *want) {
    long *cnt = calloc((size_t)n, sizeof *cnt);
    cr_assert_not_null(cnt);
    histogram(s, l, n, draws, cnt);
    for (int i = 0; i < n; i++) {
        if (want[i]) cr_assert(cnt[i] > 0, "token %d should be drawable but never came", i);
        else cr_assert_eq(cnt[i], 0, "token %d should be cut but came %ld times", i, cnt[i]);
    }
    free(cnt);
}

/* ---- greedy ---- */

Test(sampler, greedy_argmax_ties_nan_inf) {
    spud_sampler_params p = plain(1);
    p.temp = 0.0f;
    spud_sampler *s = mk(p, 8);
    float a[] = {0.1f, 3.0f, -2.0f, 3.0f, 1.0f};
    cr_assert_eq(spud_sampler_sample(s, a, 5), 1, "tie goes to the lowest id");
    float b[] = {NAN, 1.0f, NAN, 5.0f, NAN, 5.0f};
    cr_assert_eq(spud_sampler_sample(s, b, 6), 3, "NaN counts as -inf");
    float c[] = {NAN, NAN, NAN};
    cr_assert_eq(spud_sampler_sample(s, c, 3), 0, "all NaN: lowest id");
    float d[] = {-INFINITY, 2.0f, INFINITY, INFINITY};
    cr_assert_eq(spud_sampler_sample(s, d, 4), 2);
    float e[] = {-INFINITY, -INFINITY, -1e30f};
    cr_assert_eq(spud_sampler_sample(s, e, 3), 2);
    spud_sampler_free(s);

    /* A negative temperature is greedy too, and the other filters do not matter. */
    p = spud_sampler_default_params();
    p.temp = -1.0f;
    s = mk(p, 8);
    float f[] = {1.0f, 2.0f, 7.5f, 7.5f, 7.4f, -3.0f, NAN, 0.0f};
    for (int i = 0; i < 10; i++) cr_assert_eq(spud_sampler_sample(s, f, 8), 2);
    spud_sampler_free(s);
}

Test(sampler, greedy_matches_scan_on_random_logits) {
    enum { N = 3000 };
    static float l[N];
    spud_sampler_params p = plain(3);
    p.temp = 0.0f;
    spud_sampler *s = mk(p, N);
    for (int rep = 0; rep < 50; rep++) {
        /* coarse values so ties are common */
        for (int i = 0; i < N; i++) l[i] = (float)(int)(t_uniform() * 200.0) * 0.25f;
        int want = 0;
        for (int i = 1; i < N; i++)
            if (l[i] > l[want]) want = i;
        cr_assert_eq(spud_sampler_sample(s, l, N), want);
    }
    spud_sampler_free(s);
}

Test(sampler, top_k_1_is_greedy) {
    enum { N = 1000 };
    static float l[N];
    spud_sampler_params p = plain(5);
    p.temp = 1.5f;
    p.top_k = 1;
    spud_sampler *s = mk(p, N);
    for (int rep = 0; rep < 100; rep++) {
        for (int i = 0; i < N; i++) l[i] = (float)(int)(t_uniform() * 50.0) * 0.5f;
        if (rep % 3 == 0) l[(rep * 37) % N] = NAN;
        int want = -1;
        for (int i = 0; i < N; i++)
            if (!isnan(l[i]) && (want < 0 || l[i] > l[want])) want = i;
        cr_assert_eq(spud_sampler_sample(s, l, N), want);
    }
    spud_sampler_free(s);
}

/* ---- determinism ---- */

Test(sampler, same_seed_same_sequence_different_seed_differs) {
    enum { N = 50, DRAWS = 500 };
    float l[N];
    for (int i = 0; i < N; i++) l[i] = (float)(i % 7) * 0.1f;
    spud_sampler *a = mk(plain(42), N), *b = mk(plain(42), N), *c = mk(plain(43), N);
    int diff = 0;
    for (int k = 0; k < DRAWS; k++) {
        int32_t ta = spud_sampler_sample(a, l, N), tb = spud_sampler_sample(b, l, N), tc = spud_sampler_sample(c, l, N);
        cr_assert_eq(ta, tb, "draw %d: same seed gave %d and %d", k, (int)ta, (int)tb);
        diff += ta != tc;
    }
    /* independent sequences agree on about 1/45 of the draws */
    cr_assert_gt(diff, DRAWS / 2, "seeds 42 and 43 agree on %d of %d draws", DRAWS - diff, DRAWS);
    spud_sampler_free(a);
    spud_sampler_free(b);
    spud_sampler_free(c);
}

Test(sampler, reset_restarts_history_and_sequence) {
    enum { N = 20 };
    float l[N];
    for (int i = 0; i < N; i++) l[i] = (float)i * 0.05f;
    spud_sampler_params p = plain(9);
    p.repeat_penalty = 3.0f;
    spud_sampler *s = mk(p, N), *fresh = mk(p, N);
    for (int k = 0; k < 30; k++) spud_sampler_accept(s, spud_sampler_sample(s, l, N));
    spud_sampler_reset(s);
    for (int k = 0; k < 200; k++) {
        int32_t a = spud_sampler_sample(s, l, N), b = spud_sampler_sample(fresh, l, N);
        cr_assert_eq(a, b, "draw %d after reset: %d, fresh sampler: %d", k, (int)a, (int)b);
    }
    spud_sampler_free(s);
    spud_sampler_free(fresh);

    /* reset forgets the penalised token */
    p = plain(9);
    p.temp = 0.0f;
    p.repeat_penalty = 2.0f;
    s = mk(p, 4);
    float g[] = {2.0f, 1.5f, 0.0f, 0.0f};
    spud_sampler_accept(s, 0);
    cr_assert_eq(spud_sampler_sample(s, g, 4), 1);
    spud_sampler_reset(s);
    cr_assert_eq(spud_sampler_sample(s, g, 4), 0);
    spud_sampler_free(s);
}

/* ---- distributions ---- */

Test(sampler, draws_follow_softmax) {
    enum { N = 6, DRAWS = 200000 };
    const float l[N] = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.5f};
    double p[N];
    const float temps[] = {1.0f, 0.7f, 2.5f};
    for (int ti = 0; ti < 3; ti++) {
        spud_sampler_params prm = plain(100 + (uint64_t)ti);
        prm.temp = temps[ti];
        spud_sampler *s = mk(prm, N);
        softmax_ref(l, N, temps[ti], NULL, p);
        check_distribution(s, l, N, p, DRAWS);
        spud_sampler_free(s);
    }
}

Test(sampler, top_k_distribution_and_support) {
    enum { N = 8, DRAWS = 200000 };
    const float l[N] = {0.2f, 1.1f, -0.4f, 0.9f, 1.0f, 0.9f, -2.0f, 0.3f};
    /* top 3 by logit: ids 1, 4, then 3 (ties with 5: lower id wins) */
    const bool keep[N] = {false, true, false, true, true, false, false, false};
    double p[N];
    spud_sampler_params prm = plain(7);
    prm.top_k = 3;
    spud_sampler *s = mk(prm, N);
    softmax_ref(l, N, 1.0, keep, p);
    check_distribution(s, l, N, p, DRAWS);
    spud_sampler_free(s);
}

static int cmp_desc_then_id(const void *a, const void *b, const float *l) {
    int x = *(const int *)a, y = *(const int *)b;
    if (l[x] != l[y]) return l[x] > l[y] ? -1 : 1;
    return x < y ? -1 : 1;
}
static const float *g_sort_logits;
static int cmp_idx(const void *a, const void *b) { return cmp_desc_then_id(a, b, g_sort_logits); }

Test(sampler, top_k_support_exact_on_larger_vocab) {
    enum { N = 5000, K = 25 };
    static float l[N];
    static int idx[N];
    static bool want[N];
    for (int i = 0; i < N; i++) l[i] = (float)(int)(t_uniform() * 400.0) * 0.01f; /* many ties */
    for (int i = 0; i < N; i++) idx[i] = i;
    g_sort_logits = l;
    qsort(idx, N, sizeof idx[0], cmp_idx);
    for (int i = 0; i < K; i++) want[idx[i]] = true;
    spud_sampler_params prm = plain(11);
    prm.top_k = K;
    prm.temp = 100.0f; /* nearly flat, so every kept token shows up */
    spud_sampler *s = mk(prm, N);
    check_support(s, l, N, 20000, want);
    spud_sampler_free(s);
}

/* Probabilities 0.5, 0.25, 0.15, 0.1 placed at ids 2, 0, 3, 1. */
static void four_logits(float l[4]) {
    l[2] = logf(0.5f);
    l[0] = logf(0.25f);
    l[3] = logf(0.15f);
    l[1] = logf(0.1f);
}

Test(sampler, top_p_hand_computed) {
    float l[4];
    four_logits(l);
    struct {
        float top_p;
        bool keep[4];
    } cases[] = {
        {0.3f, {false, false, true, false}}, /* 0.5 >= 0.3 */
        {0.7f, {true, false, true, false}},  /* 0.5 < 0.7 <= 0.75 */
        {0.8f, {true, false, true, true}},   /* 0.75 < 0.8 <= 0.9 */
        {0.95f, {true, true, true, true}},   /* 0.9 < 0.95 */
        {0.0f, {false, false, true, false}}, /* keeps at least one */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        spud_sampler_params prm = plain(20 + c);
        prm.top_p = cases[c].top_p;
        spud_sampler *s = mk(prm, 4);
        double p[4];
        softmax_ref(l, 4, 1.0, cases[c].keep, p);
        check_distribution(s, l, 4, p, 100000);
        spud_sampler_free(s);
    }
}

/* Ties at the edge of the nucleus: probabilities 0.4 at id 3 and 0.2 at ids
 * 0, 1, 2. The tie is broken by the lowest id. */
Test(sampler, top_p_ties_at_the_edge) {
    const float l[4] = {logf(0.2f), logf(0.2f), logf(0.2f), logf(0.4f)};
    struct {
        float top_p;
        bool keep[4];
    } cases[] = {
        {0.35f, {false, false, false, true}}, /* 0.4 >= 0.35 */
        {0.5f, {true, false, false, true}},   /* 0.4 < 0.5 <= 0.6 */
        {0.7f, {true, true, false, true}},    /* 0.6 < 0.7 <= 0.8 */
        {0.9f, {true, true, true, true}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        spud_sampler_params prm = plain(30 + c);
        prm.top_p = cases[c].top_p;
        spud_sampler *s = mk(prm, 4);
        double p[4];
        softmax_ref(l, 4, 1.0, cases[c].keep, p);
        check_distribution(s, l, 4, p, 100000);
        spud_sampler_free(s);
    }
}

Test(sampler, min_p_hand_computed) {
    float l[4];
    four_logits(l);
    struct {
        float min_p, top_p;
        bool keep[4];
    } cases[] = {
        {0.25f, 1.0f, {true, false, true, true}},   /* p >= 0.125: 0.5, 0.25, 0.15 */
        {0.35f, 1.0f, {true, false, true, false}},  /* p >= 0.175: 0.5, 0.25 */
        {0.9f, 1.0f, {false, false, true, false}},  /* p >= 0.45 */
        {0.15f, 1.0f, {true, true, true, true}},    /* p >= 0.075: all */
        {0.25f, 0.95f, {true, false, true, true}},  /* top-p keeps 4, min-p cuts to 3 */
        {0.25f, 0.7f, {true, false, true, false}},  /* top-p is the tighter cut */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        spud_sampler_params prm = plain(40 + c);
        prm.min_p = cases[c].min_p;
        prm.top_p = cases[c].top_p;
        spud_sampler *s = mk(prm, 4);
        double p[4];
        softmax_ref(l, 4, 1.0, cases[c].keep, p);
        check_distribution(s, l, 4, p, 100000);
        spud_sampler_free(s);
    }

    /* Temperature comes first: at temp 2, p_i / p_max = exp((l_i - l_max) / 2)
     * = 1, 0.61, 0.37, 0.22 for logits 0, -1, -2, -3; min_p 0.3 keeps three. */
    const float m[4] = {-2.0f, 0.0f, -3.0f, -1.0f};
    const bool keep[4] = {true, true, false, true};
    spud_sampler_params prm = plain(60);
    prm.temp = 2.0f;
    prm.min_p = 0.3f;
    spud_sampler *s = mk(prm, 4);
    double p[4];
    softmax_ref(m, 4, 2.0, keep, p);
    check_distribution(s, m, 4, p, 100000);
    spud_sampler_free(s);
}

/* Nucleus on a large vocabulary, computed by a full sort in double: a head of
 * 40 tokens at scattered ids over a tail of near-zero probability. */
static void check_large_nucleus(float temp, float top_p, float min_p, int top_k, uint64_t seed) {
    enum { N = 20000, HEAD = 40 };
    static float l[N];
    static int idx[N];
    static bool want[N];
    static double p[N];
    for (int i = 0; i < N; i++) l[i] = -25.0f + (float)t_uniform();
    for (int h = 0; h < HEAD; h++) l[(h * 7919 + 13) % N] = -0.15f * (float)h;
    for (int i = 0; i < N; i++) idx[i] = i;
    g_sort_logits = l;
    qsort(idx, N, sizeof idx[0], cmp_idx);
    int n = top_k > 0 ? top_k : N;
    softmax_ref(l, N, temp, NULL, p);
    double z = 0, cum = 0;
    for (int j = 0; j < n; j++) z += p[idx[j]];
    memset(want, 0, sizeof want);
    double q_min = 1.0;
    for (int j = 0; j < n; j++) {
        double q = p[idx[j]] / z;
        if (q < min_p * p[idx[0]] / z) break;
        want[idx[j]] = true;
        q_min = q;
        cum += q;
        if (top_p < 1.0f && cum >= top_p) {
            /* the reference must not sit on a rounding edge */
            cr_assert(cum - top_p > 1e-4 && top_p - (cum - q) > 1e-4, "test case too close to the edge");
            break;
        }
    }
    /* every kept token must be likely to show up in 8000 draws */
    cr_assert(q_min / cum * 8000 > 30, "test case: rarest kept token expected %.1f times", q_min / cum * 8000);
    spud_sampler_params prm = plain(seed);
    prm.temp = temp;
    prm.top_p = top_p;
    prm.min_p = min_p;
    prm.top_k = top_k;
    spud_sampler *s = mk(prm, N);
    check_support(s, l, N, 8000, want);
    spud_sampler_free(s);
}

Test(sampler, top_p_large_vocab_matches_full_sort) {
    check_large_nucleus(1.0f, 0.9f, 0.0f, 0, 70);
    check_large_nucleus(1.3f, 0.9f, 0.0f, 0, 71); /* temperature before top-p: a wider nucleus */
    check_large_nucleus(0.5f, 0.97f, 0.0f, 0, 72);
    check_large_nucleus(1.0f, 0.8f, 0.0f, 20, 73);
    check_large_nucleus(1.0f, 0.95f, 0.1f, 0, 74);
    check_large_nucleus(2.0f, 1.0f, 0.2f, 0, 75);
}

Test(sampler, top_p_flat_ties_keep_lowest_ids) {
    enum { N = 4096 };
    static float l[N];
    static bool want[N];
    for (int i = 0; i < N; i++) l[i] = 1.0f;
    for (int i = 0; i < N / 2; i++) want[i] = true;
    spud_sampler_params prm = plain(80);
    prm.top_p = 0.5f;
    spud_sampler *s = mk(prm, N);
    long *cnt = calloc(N, sizeof *cnt);
    histogram(s, l, N, 40000, cnt);
    int seen = 0;
    for (int i = 0; i < N; i++) {
        if (!want[i]) cr_assert_eq(cnt[i], 0, "token %d beyond the nucleus drawn", i);
        seen += cnt[i] > 0;
    }
    cr_assert_gt(seen, 2000, "only %d of 2048 nucleus tokens drawn", seen);
    free(cnt);
    spud_sampler_free(s);
}

Test(sampler, infinite_logits_share_the_mass) {
    float l[6] = {0.0f, INFINITY, 3.0f, NAN, INFINITY, -INFINITY};
    const double p[6] = {0, 0.5, 0, 0, 0.5, 0};
    spud_sampler *s = mk(plain(90), 6);
    check_distribution(s, l, 6, p, 20000);
    spud_sampler_free(s);
    /* all NaN with sampling on: lowest id, no crash */
    float n[3] = {NAN, NAN, NAN};
    s = mk(plain(91), 3);
    cr_assert_eq(spud_sampler_sample(s, n, 3), 0);
    spud_sampler_free(s);
}

/* ---- penalties: constructed so that the formula decides the greedy pick ---- */

static int32_t greedy_after(spud_sampler_params p, const float *l, int n, const int32_t *hist, int nh) {
    p.temp = 0.0f;
    spud_sampler *s = mk(p, n);
    for (int i = 0; i < nh; i++) spud_sampler_accept(s, hist[i]);
    int32_t t = spud_sampler_sample(s, l, n);
    spud_sampler_free(s);
    return t;
}

Test(sampler, repetition_penalty_divides_positive_multiplies_negative) {
    spud_sampler_params p = plain(1);
    const int32_t h1[] = {0}, h3[] = {0, 0, 0};
    const float pos[] = {2.0f, 1.5f, 0.0f};
    p.repeat_penalty = 1.2f; /* 2 / 1.2 = 1.67 > 1.5 */
    cr_assert_eq(greedy_after(p, pos, 3, h1, 1), 0);
    p.repeat_penalty = 2.0f; /* 2 / 2 = 1 < 1.5 */
    cr_assert_eq(greedy_after(p, pos, 3, h1, 1), 1);

    const float neg[] = {-1.0f, -1.5f, -9.0f};
    p.repeat_penalty = 1.4f; /* -1 * 1.4 = -1.4 > -1.5 (dividing would give -0.71, also 0) */
    cr_assert_eq(greedy_after(p, neg, 3, h1, 1), 0);
    p.repeat_penalty = 1.6f; /* -1.6 < -1.5; dividing would keep token 0 ahead */
    cr_assert_eq(greedy_after(p, neg, 3, h1, 1), 1);

    /* applied once per distinct token, not once per occurrence: 2 / 2 = 1 > 0.9 */
    const float once[] = {2.0f, 0.9f};
    p.repeat_penalty = 2.0f;
    cr_assert_eq(greedy_after(p, once, 2, h3, 3), 0);

    /* 0 and 1 mean off */
    p.repeat_penalty = 0.0f;
    cr_assert_eq(greedy_after(p, pos, 3, h1, 1), 0);
}

Test(sampler, frequency_and_presence_penalties) {
    spud_sampler_params p = plain(1);
    const int32_t h3[] = {0, 2, 0, 0}; /* token 0 three times */
    const float l[] = {3.0f, 2.0f, -5.0f};
    p.freq_penalty = 0.3f; /* 3 - 0.9 = 2.1 > 2 */
    cr_assert_eq(greedy_after(p, l, 3, h3, 4), 0);
    p.freq_penalty = 0.4f; /* 3 - 1.2 = 1.8 < 2 */
    cr_assert_eq(greedy_after(p, l, 3, h3, 4), 1);
    p.freq_penalty = 0.0f;
    p.presence_penalty = 0.9f; /* 3 - 0.9 = 2.1: not multiplied by the count */
    cr_assert_eq(greedy_after(p, l, 3, h3, 4), 0);
    p.presence_penalty = 1.1f; /* 1.9 */
    cr_assert_eq(greedy_after(p, l, 3, h3, 4), 1);
    p.presence_penalty = 0.5f;
    p.freq_penalty = 0.15f; /* 3 - 0.45 - 0.5 = 2.05 */
    cr_assert_eq(greedy_after(p, l, 3, h3, 4), 0);
    p.freq_penalty = 0.2f; /* 3 - 0.6 - 0.5 = 1.9 */
    cr_assert_eq(greedy_after(p, l, 3, h3, 4), 1);
    /* negative penalties raise a logit: token 2 (once) -5 + 3.5 + 3.6 = 2.1 > 2;
     * token 0 (three times) -20 + 10.5 + 3.6 = -5.9 */
    p.presence_penalty = -3.6f;
    p.freq_penalty = -3.5f;
    const float l2[] = {-20.0f, 2.0f, -5.0f};
    cr_assert_eq(greedy_after(p, l2, 3, h3, 4), 2);
}

Test(sampler, repetition_before_frequency) {
    /* rep first: 3 / 2 - 0.4 = 1.1 < 1.2; freq first would give (3 - 0.4) / 2 = 1.3 */
    spud_sampler_params p = plain(1);
    p.repeat_penalty = 2.0f;
    p.freq_penalty = 0.4f;
    const int32_t h[] = {0};
    const float l[] = {3.0f, 1.2f};
    cr_assert_eq(greedy_after(p, l, 2, h, 1), 1);
}

Test(sampler, penalty_window) {
    spud_sampler_params p = plain(1);
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 2;
    const float l[8] = {2.0f, 1.5f, 0, 0, 0, 0, 0, 0};
    const int32_t in_window[] = {0, 5}, out_of_window[] = {0, 5, 6}, back_in[] = {0, 5, 6, 0};
    cr_assert_eq(greedy_after(p, l, 8, in_window, 2), 1);
    cr_assert_eq(greedy_after(p, l, 8, out_of_window, 3), 0);
    cr_assert_eq(greedy_after(p, l, 8, back_in, 4), 1);

    /* counts inside the window: [0 0 0] -> 3 - 1.2 = 1.8; then [0 0 7] -> 3 - 0.8 = 2.2 */
    spud_sampler_params f = plain(1);
    f.freq_penalty = 0.4f;
    f.repeat_last_n = 3;
    const float m[8] = {3.0f, 2.0f, 0, 0, 0, 0, 0, 0};
    const int32_t h3[] = {0, 0, 0}, h4[] = {0, 0, 0, 7}, h6[] = {0, 0, 0, 7, 7, 7};
    cr_assert_eq(greedy_after(f, m, 8, h3, 3), 1);
    cr_assert_eq(greedy_after(f, m, 8, h4, 4), 0);
    cr_assert_eq(greedy_after(f, m, 8, h6, 6), 0);
    const float m7[8] = {0, 2.0f, 0, 0, 0, 0, 0, 3.0f}; /* token 7 three times in [7 7 7] */
    cr_assert_eq(greedy_after(f, m7, 8, h6, 6), 1);

    /* -1: the whole history */
    static int32_t longh[1001];
    longh[0] = 0;
    for (int i = 1; i < 1001; i++) longh[i] = 5;
    p.repeat_last_n = -1;
    cr_assert_eq(greedy_after(p, l, 8, longh, 1001), 1);
    p.repeat_last_n = 64;
    cr_assert_eq(greedy_after(p, l, 8, longh, 1001), 0);
    /* 0: penalties off */
    p.repeat_last_n = 0;
    cr_assert_eq(greedy_after(p, l, 8, in_window, 2), 0);
}

/* ---- arguments, sizes, failures ---- */

Test(sampler, bad_arguments) {
    spud_sampler_params p = plain(1);
    cr_assert_null(spud_sampler_new(&p, 0));
    cr_assert_null(spud_sampler_new(NULL, 10));
    spud_sampler *s = mk(p, 10);
    float l[11] = {0};
    cr_assert_eq(spud_sampler_sample(s, l, 11), -1);
    cr_assert_eq(spud_sampler_sample(s, NULL, 10), -1);
    cr_assert_eq(spud_sampler_sample(s, l, 0), -1);
    /* a smaller vocabulary than allocated is fine */
    l[3] = 50.0f;
    for (int i = 0; i < 100; i++) {
        int32_t t = spud_sampler_sample(s, l, 5);
        cr_assert(t >= 0 && t < 5);
    }
    /* out-of-range accepts are ignored */
    spud_sampler_accept(s, -1);
    spud_sampler_accept(s, 10);
    spud_sampler_free(s);
    spud_sampler_free(NULL);
}

Test(sampler, allocation_failure) {
    spud_sampler_params p = spud_sampler_default_params();
    for (long k = 0; k < 2; k++) {
        spud_alloc_fail_after(k);
        spud_sampler *s = spud_sampler_new(&p, 1000);
        spud_alloc_fail_after(-1);
        cr_assert_null(s, "allocation %ld failed but the sampler was made", k);
    }
    spud_sampler *s = mk(p, 1000);
    spud_sampler_free(s);
}

Test(sampler, defaults) {
    spud_sampler_params p = spud_sampler_default_params();
    cr_assert_float_eq(p.temp, 0.8f, 1e-7);
    cr_assert_eq(p.top_k, 40);
    cr_assert_float_eq(p.top_p, 0.95f, 1e-7);
    cr_assert_float_eq(p.min_p, 0.05f, 1e-7);
    cr_assert_float_eq(p.repeat_penalty, 1.0f, 0);
    cr_assert_eq(p.repeat_last_n, 64);
    cr_assert_float_eq(p.freq_penalty, 0.0f, 0);
    cr_assert_float_eq(p.presence_penalty, 0.0f, 0);
    cr_assert_eq(p.seed, 0xC0FFEE);
}

/* 128K vocabulary with the default chain: every draw lies in the top 40 and
 * passes min-p; prints the time per call (a report, not an assertion). */
Test(sampler, large_vocab_defaults) {
    enum { N = 128000, DRAWS = 300 };
    static float l[N];
    static int idx[N];
    static bool allowed[N];
    for (int i = 0; i < N; i++) l[i] = (float)(t_uniform() * 12.0 - 6.0);
    for (int i = 0; i < N; i++) idx[i] = i;
    g_sort_logits = l;
    qsort(idx, N, sizeof idx[0], cmp_idx);
    spud_sampler_params p = spud_sampler_default_params();
    for (int j = 0; j < p.top_k; j++)
        if (exp(((double)l[idx[j]] - l[idx[0]]) / p.temp) >= p.min_p) allowed[idx[j]] = true;
    spud_sampler *s = mk(p, N);
    double t0 = spud_time_s();
    for (int k = 0; k < DRAWS; k++) {
        int32_t t = spud_sampler_sample(s, l, N);
        cr_assert(t >= 0 && t < N && allowed[t], "token %d outside the top-k / min-p set", (int)t);
    }
    double t1 = spud_time_s();
    /* top-k off: the top-p / min-p prefilter path over the whole vocabulary */
    spud_sampler_params q = p;
    q.top_k = 0;
    spud_sampler *s2 = mk(q, N);
    double t2 = spud_time_s();
    for (int k = 0; k < DRAWS; k++) {
        int32_t t = spud_sampler_sample(s2, l, N);
        cr_assert(t >= 0 && t < N && exp(((double)l[t] - l[idx[0]]) / q.temp) >= q.min_p * 0.9999);
    }
    double t3 = spud_time_s();
    fprintf(stderr, "sampler, n_vocab %d: %.1f us/sample (defaults), %.1f us/sample (top_k off)\n", N,
            (t1 - t0) / DRAWS * 1e6, (t3 - t2) / DRAWS * 1e6);
    spud_sampler_free(s);
    spud_sampler_free(s2);
}
