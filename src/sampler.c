/* sampler.c: token sampling from logits (spud_sampler_* in spud.h).
 *
 * The chain, in llama.cpp's order:
 *   copy logits (NaN -> -inf)
 *   -> penalties over the last repeat_last_n accepted tokens:
 *        repetition (CTRL): l > 0 ? l / r : l * r
 *        frequency / presence (OpenAI): l -= freq * count + presence * (count > 0)
 *   -> temp <= 0: argmax (ties: lowest id)
 *   -> top-k -> softmax(l / temp) -> top-p -> min-p -> renormalise -> draw.
 *
 * Candidates are ranked by (logit desc, id asc) for top-k and by (prob desc,
 * id asc) afterwards, so every tie is broken the same way on every machine.
 * The draw uses our own xoshiro256** seeded through splitmix64: same seed and
 * same history give the same tokens everywhere.
 *
 * Cost on a large vocabulary: top-k is a bounded heap (O(n log k)). Top-p
 * sorts nothing but one bucket: a pass builds a histogram of the probability
 * mass over buckets of 1/8 octave (the leading bits of each probability); the
 * buckets above the one where the cumulative mass reaches top_p are wholly in
 * the nucleus, and only the tokens of that bucket are ranked, by a quickselect
 * weighted by probability (a flat distribution puts everything in one
 * bucket). Min-p is a plain filter. Nothing is allocated per call.
 */
#include "core.h"
#include "rng.h"

#include <math.h>
#include <string.h>

/* Probability buckets for the top-p prefilter: the bucket of p in (0, 1] is
 * (bits(1.0f) - bits(p)) >> 20, i.e. 8 buckets per octave (bit patterns of
 * positive floats are ordered like the floats). The last bucket holds
 * everything below 2^-63, zero included. */
#define SMP_BUCKETS 512
#define SMP_BUCKET_SHIFT 20

typedef struct {
    float logit; /* penalised logit */
    float p;     /* exp((logit - max) / temp): unnormalised probability, in [0, 1] */
    int32_t id;
} smp_cand;

struct spud_sampler {
    spud_sampler_params prm; /* sanitised copy */
    int32_t n_vocab;

    /* One allocation, carved: */
    float *work;       /* (n_vocab) penalised logits of the current call */
    smp_cand *cand;    /* (n_vocab) candidates */
    int32_t *count;    /* (n_vocab) occurrences of each token in the window */
    int32_t *pos;      /* (n_vocab) index in distinct[] when count > 0 */
    int32_t *distinct; /* (n_vocab) the tokens with count > 0 */
    int32_t *ring;     /* (window) the last accepted tokens, when window > 0 */
    int32_t n_distinct;
    int32_t window;    /* repeat_last_n: 0 off, -1 whole history */
    int32_t ring_len, ring_head; /* ring_head: index of the oldest token */

    spud_rng rng;
    double hist[SMP_BUCKETS];
};

/* ---- PRNG: src/rng.h ---- */

static void rng_seed(spud_sampler *s, uint64_t seed) { spud_rng_seed(&s->rng, seed); }

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(spud_sampler *s) {
    return (double)(spud_rng_next(&s->rng) >> 11) * 0x1.0p-53;
}

/* ---- parameters ---- */

spud_sampler_params spud_sampler_default_params(void) {
    return (spud_sampler_params){
        .temp = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .freq_penalty = 0.0f,
        .presence_penalty = 0.0f,
        .seed = 0xC0FFEE,
    };
}

/* Map every "off" spelling and every non-finite value to one canonical value,
 * so the hot path tests plain comparisons. */
static spud_sampler_params params_sanitise(spud_sampler_params p) {
    if (isnan(p.temp) || p.temp <= 0.0f) p.temp = 0.0f;
    if (isinf(p.temp)) p.temp = 3.0e38f; /* (-inf) / temp must stay -inf, not NaN */
    if (p.top_k < 0) p.top_k = 0;
    if (isnan(p.top_p) || p.top_p >= 1.0f) p.top_p = 1.0f;
    if (p.top_p < 0.0f) p.top_p = 0.0f; /* keeps only the best token */
    if (isnan(p.min_p) || p.min_p <= 0.0f) p.min_p = 0.0f;
    if (p.min_p > 1.0f) p.min_p = 1.0f; /* the best token always passes */
    if (!isfinite(p.repeat_penalty) || p.repeat_penalty <= 0.0f) p.repeat_penalty = 1.0f;
    if (!isfinite(p.freq_penalty)) p.freq_penalty = 0.0f;
    if (!isfinite(p.presence_penalty)) p.presence_penalty = 0.0f;
    if (p.repeat_last_n < -1) p.repeat_last_n = -1;
    return p;
}

/* ---- new / free ---- */

spud_sampler *spud_sampler_new(const spud_sampler_params *params, int32_t n_vocab) {
    if (!params || n_vocab <= 0) {
        spud_errorf(SPUD_ERR_INVALID, "sampler: %s", !params ? "no parameters" : "n_vocab must be > 0");
        return NULL;
    }
    spud_sampler_params prm = params_sanitise(*params);
    int32_t window = prm.repeat_last_n;

    /* Layout: work, cand, count, pos, distinct, ring (all 4-byte aligned). */
    uint64_t nv = (uint64_t)n_vocab, sz_work, sz_cand, sz_i32, sz_ring, total = 0;
    bool ok = spud_mul_ok(nv, sizeof(float), &sz_work) && spud_mul_ok(nv, sizeof(smp_cand), &sz_cand) &&
              spud_mul_ok(nv, sizeof(int32_t), &sz_i32) &&
              spud_mul_ok(window > 0 ? (uint64_t)window : 0, sizeof(int32_t), &sz_ring) &&
              spud_add_ok(total, sz_work, &total) && spud_add_ok(total, sz_cand, &total) &&
              spud_add_ok(total, sz_i32, &total) && spud_add_ok(total, sz_i32, &total) &&
              spud_add_ok(total, sz_i32, &total) && spud_add_ok(total, sz_ring, &total) &&
              total <= SIZE_MAX;
    if (!ok) {
        spud_errorf(SPUD_ERR_NOMEM, "sampler: n_vocab %d does not fit in memory", (int)n_vocab);
        return NULL;
    }

    spud_sampler *s = spud_calloc(1, sizeof *s);
    char *mem = spud_malloc((size_t)total);
    if (!s || !mem) {
        spud_free(s);
        spud_free(mem);
        spud_errorf(SPUD_ERR_NOMEM, "sampler: out of memory (n_vocab %d)", (int)n_vocab);
        return NULL;
    }
    s->prm = prm;
    s->n_vocab = n_vocab;
    s->window = window;
    s->work = (float *)mem;
    s->cand = (smp_cand *)(mem + sz_work);
    s->count = (int32_t *)(mem + sz_work + sz_cand);
    s->pos = s->count + n_vocab;
    s->distinct = s->pos + n_vocab;
    s->ring = window > 0 ? s->distinct + n_vocab : NULL;
    memset(s->count, 0, (size_t)sz_i32);
    rng_seed(s, prm.seed);
    return s;
}

void spud_sampler_free(spud_sampler *s) {
    if (!s) return;
    spud_free(s->work); /* the start of the single allocation */
    spud_free(s);
}

/* ---- history ---- */

static void count_add(spud_sampler *s, int32_t t) {
    if (s->count[t]++ == 0) {
        s->pos[t] = s->n_distinct;
        s->distinct[s->n_distinct++] = t;
    }
}

static void count_remove(spud_sampler *s, int32_t t) {
    if (--s->count[t] == 0) {
        /* swap-remove t from distinct[] */
        int32_t last = s->distinct[--s->n_distinct];
        s->distinct[s->pos[t]] = last;
        s->pos[last] = s->pos[t];
    }
}

void spud_sampler_accept(spud_sampler *s, int32_t token) {
    if (!s || token < 0 || token >= s->n_vocab || s->window == 0) return;
    if (s->window < 0) {
        if (s->count[token] < INT32_MAX) count_add(s, token);
        return;
    }
    if (s->ring_len == s->window) {
        count_remove(s, s->ring[s->ring_head]);
        s->ring[s->ring_head] = token;
        s->ring_head = s->ring_head + 1 == s->window ? 0 : s->ring_head + 1;
    } else {
        int32_t at = s->ring_head + s->ring_len;
        s->ring[at < s->window ? at : at - s->window] = token;
        s->ring_len++;
    }
    count_add(s, token);
}

/* Clears the history and restarts the random sequence from the seed, so a
 * reset sampler behaves exactly like a new one. */
void spud_sampler_reset(spud_sampler *s) {
    if (!s) return;
    for (int32_t i = 0; i < s->n_distinct; i++) s->count[s->distinct[i]] = 0;
    s->n_distinct = 0;
    s->ring_len = 0;
    s->ring_head = 0;
    rng_seed(s, s->prm.seed);
}

/* Each token present in the window is penalised once, by its count.
 * Returns whether any penalty is on. */
static bool apply_penalties(const spud_sampler *s, float *l, int32_t n_vocab) {
    const float rp = s->prm.repeat_penalty, fp = s->prm.freq_penalty, pp = s->prm.presence_penalty;
    if (rp == 1.0f && fp == 0.0f && pp == 0.0f) return false;
    for (int32_t i = 0; i < s->n_distinct; i++) {
        int32_t t = s->distinct[i];
        if (t >= n_vocab) continue;
        float x = l[t];
        if (rp != 1.0f) x = x > 0.0f ? x / rp : x * rp;
        x -= (float)s->count[t] * fp + pp;
        l[t] = x;
    }
    return true;
}

/* ---- candidate ranking ---- */

/* a ranks below b: by_p ? (p desc, id asc) : (logit desc, id asc). */
static inline bool cand_worse(const smp_cand *a, const smp_cand *b, bool by_p) {
    float ka = by_p ? a->p : a->logit, kb = by_p ? b->p : b->logit;
    return ka < kb || (ka == kb && a->id > b->id);
}

/* Heap with the worst candidate at the root. */
static void heap_sift_down(smp_cand *h, int32_t n, int32_t i, bool by_p) {
    for (;;) {
        int32_t w = i, l = 2 * i + 1, r = l + 1;
        if (l < n && cand_worse(&h[l], &h[w], by_p)) w = l;
        if (r < n && cand_worse(&h[r], &h[w], by_p)) w = r;
        if (w == i) return;
        smp_cand tmp = h[i];
        h[i] = h[w];
        h[w] = tmp;
        i = w;
    }
}

static void heap_build(smp_cand *h, int32_t n, bool by_p) {
    for (int32_t i = n / 2 - 1; i >= 0; i--) heap_sift_down(h, n, i, by_p);
}

/* Sort best first. Heapsort: no recursion, no allocation, O(n log n). */
static void cand_sort(smp_cand *c, int32_t n, bool by_p) {
    heap_build(c, n, by_p);
    for (int32_t end = n - 1; end > 0; end--) {
        smp_cand tmp = c[0];
        c[0] = c[end];
        c[end] = tmp;
        heap_sift_down(c, end, 0, by_p);
    }
}

/* The k best of l[0..n) by (logit desc, id asc), in heap order. */
static void select_top_k(const float *l, int32_t n, int32_t k, smp_cand *c) {
    for (int32_t i = 0; i < k; i++) c[i] = (smp_cand){.logit = l[i], .id = i};
    heap_build(c, k, false);
    for (int32_t i = k; i < n; i++) {
        /* later ids lose ties, so only a strictly larger logit enters */
        if (l[i] > c[0].logit) {
            c[0] = (smp_cand){.logit = l[i], .id = i};
            heap_sift_down(c, k, 0, false);
        }
    }
}

static inline void cand_swap(smp_cand *c, int32_t i, int32_t j) {
    smp_cand tmp = c[i];
    c[i] = c[j];
    c[j] = tmp;
}

/* The index among i, j, k whose candidate ranks in the middle. */
static int32_t median3(const smp_cand *c, int32_t i, int32_t j, int32_t k) {
    if (cand_worse(&c[i], &c[j], true)) {  /* i below j */
        if (cand_worse(&c[j], &c[k], true)) return j;
        return cand_worse(&c[i], &c[k], true) ? k : i;
    }
    if (cand_worse(&c[i], &c[k], true)) return i; /* j below i */
    return cand_worse(&c[j], &c[k], true) ? k : j;
}

/* Smallest k >= 1 such that the k best of c[0..n) (by p desc, id asc) have
 * mass >= r; those k are moved to c[0..k). Returns 0 when n == 0, and n when
 * rounding leaves the mass of all n short of r. Quickselect weighted by p
 * (expected O(n)); after 2 log2(n) + 8 rounds it sorts what is left, so the
 * worst case is O(n log n). */
static int32_t nucleus_select(smp_cand *c, int32_t n, double r) {
    int32_t lo = 0, hi = n; /* c[0..lo) are kept; the answer is in [lo + 1, hi] */
    double acc = 0.0;       /* mass of c[0..lo) */
    int rounds = 8;
    for (int32_t x = n; x > 1; x >>= 1) rounds += 2;
    uint32_t rs = 0x9E3779B9u ^ (uint32_t)n; /* pivot positions: fixed pseudo-random sequence */
    while (hi - lo > 16 && rounds-- > 0) {
        /* pivot: the median of three pseudo-random positions, moved to the end */
        int32_t pos[3], last = hi - 1;
        for (int t = 0; t < 3; t++) {
            rs ^= rs << 13;
            rs ^= rs >> 17;
            rs ^= rs << 5;
            pos[t] = lo + (int32_t)(rs % (uint32_t)(hi - lo));
        }
        cand_swap(c, median3(c, pos[0], pos[1], pos[2]), last);
        const smp_cand piv = c[last];
        int32_t i = lo;
        double better = 0.0; /* mass ranked above the pivot */
        for (int32_t j = lo; j < last; j++) {
            if (cand_worse(&piv, &c[j], true)) {
                better += c[j].p;
                cand_swap(c, i++, j);
            }
        }
        cand_swap(c, i, last); /* pivot at i */
        if (i > lo && acc + better >= r) {
            hi = i;
        } else if (acc + better + c[i].p >= r) {
            return i + 1;
        } else {
            acc += better + c[i].p;
            lo = i + 1;
        }
    }
    cand_sort(c + lo, hi - lo, true);
    for (int32_t j = lo; j < hi; j++) {
        acc += c[j].p;
        if (acc >= r) return j + 1;
    }
    return hi;
}

static inline uint32_t prob_bucket(float p) {
    uint32_t bits;
    memcpy(&bits, &p, sizeof bits);
    uint32_t d = (0x3F800000u - bits) >> SMP_BUCKET_SHIFT; /* p <= 1 */
    return d < SMP_BUCKETS - 1 ? d : SMP_BUCKETS - 1;
}

/* Draw from c[0..n) with weights p (normalised by their sum). */
static int32_t draw(spud_sampler *s, const smp_cand *c, int32_t n) {
    double z = 0.0;
    for (int32_t j = 0; j < n; j++) z += c[j].p;
    double u = rng_uniform(s) * z, cum = 0.0;
    int32_t last = c[0].id;
    for (int32_t j = 0; j < n; j++) {
        if (c[j].p <= 0.0f) continue;
        cum += c[j].p;
        last = c[j].id;
        if (u < cum) return c[j].id;
    }
    return last; /* rounding: u landed at the very end */
}

/* ---- sample ---- */

int32_t spud_sampler_sample(spud_sampler *s, const float *logits, int32_t n_vocab) {
    if (!s || !logits || n_vocab <= 0 || n_vocab > s->n_vocab) {
        spud_errorf(SPUD_ERR_INVALID, "sampler: bad arguments (n_vocab %d, sampler made for %d)",
                    (int)n_vocab, s ? (int)s->n_vocab : 0);
        return -1;
    }
    const spud_sampler_params *prm = &s->prm;
    float *l = s->work;
    int32_t best = 0;
    float max = -INFINITY;
    for (int32_t i = 0; i < n_vocab; i++) {
        float x = isnan(logits[i]) ? -INFINITY : logits[i];
        l[i] = x;
        if (x > max) {
            max = x;
            best = i;
        }
    }
    if (s->n_distinct > 0 && apply_penalties(s, l, n_vocab)) {
        best = 0;
        max = l[0];
        for (int32_t i = 1; i < n_vocab; i++) {
            if (l[i] > max) {
                max = l[i];
                best = i;
            }
        }
    }
    /* Greedy; also when every logit is -inf (nothing to weigh: lowest id). */
    if (prm->temp <= 0.0f || max == -INFINITY) return best;
    if (max == INFINITY) {
        /* The +inf tokens share all the mass equally. */
        for (int32_t i = 0; i < n_vocab; i++) l[i] = l[i] == INFINITY ? 0.0f : -INFINITY;
        max = 0.0f;
    }

    const float temp = prm->temp;
    smp_cand *c = s->cand;
    int32_t n;
    if (prm->top_k > 0 && prm->top_k < n_vocab) {
        n = prm->top_k;
        select_top_k(l, n_vocab, n, c);
        for (int32_t j = 0; j < n; j++) c[j].p = expf((c[j].logit - max) / temp);
    } else {
        n = n_vocab;
        for (int32_t i = 0; i < n; i++) c[i] = (smp_cand){.logit = l[i], .p = expf((l[i] - max) / temp), .id = i};
    }

    const bool use_p = prm->top_p < 1.0f, use_min = prm->min_p > 0.0f;
    if (!use_p && !use_min) return draw(s, c, n);

    /* Top-p: the target mass, the bucket where the cumulative mass (best
     * buckets first) reaches it, and the mass of the buckets before that one.
     * Tokens in earlier buckets are all in the nucleus; only the tokens of
     * that last bucket need ranking. */
    double target = 0.0, mass_before = 0.0;
    uint32_t last_bucket = SMP_BUCKETS - 1;
    if (use_p) {
        double z = 0.0;
        memset(s->hist, 0, sizeof s->hist);
        for (int32_t j = 0; j < n; j++) {
            z += c[j].p;
            s->hist[prob_bucket(c[j].p)] += c[j].p;
        }
        target = (double)prm->top_p * z;
        for (uint32_t b = 0; b < SMP_BUCKETS; b++) {
            if (mass_before + s->hist[b] >= target) {
                last_bucket = b;
                break;
            }
            mass_before += s->hist[b];
        }
    }

    /* Min-p: p >= min_p * p_max, and p_max = 1 here. Both cuts keep a prefix
     * of the ranking, so their composition is the intersection. */
    const float min_p = prm->min_p;
    int32_t m = 0;
    for (int32_t j = 0; j < n; j++) {
        if (c[j].p >= min_p && prob_bucket(c[j].p) <= last_bucket) c[m++] = c[j];
    }
    if (!use_p) return draw(s, c, m);

    /* Move the last bucket's tokens to the end and keep the best-ranked run
     * of them that brings the mass to the target. If min-p has removed tokens
     * of earlier buckets, no token of the last bucket is left and min-p decides. */
    int32_t a = 0, e = m;
    for (;;) {
        while (a < e && prob_bucket(c[a].p) < last_bucket) a++;
        while (a < e && prob_bucket(c[e - 1].p) == last_bucket) e--;
        if (a >= e) break;
        cand_swap(c, a++, --e);
    }
    int32_t keep = a + nucleus_select(c + a, m - a, target - mass_before);
    return draw(s, c, keep);
}
