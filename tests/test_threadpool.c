/* test_threadpool.c: spud_pool_* — results checked against serial
 * computation, barrier phases checked from every thread, split checked for
 * exact coverage. The run latency is printed, never asserted. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "threadpool.h"

static spud_pool *mk(int n) {
    spud_pool *p = NULL;
    cr_assert_eq(spud_pool_new(n, &p), SPUD_OK, "spud_pool_new(%d): %s", n, spud_last_error());
    cr_assert_not_null(p);
    return p;
}

/* ---- split ---- */

Test(threadpool, split_covers_range_exactly) {
    const int64_t ns[] = {0, 1, 2, 3, 5, 7, 8, 63, 64, 65, 100, 1000, 4097, 1 << 20, 3000000007ll};
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
        for (int nth = 1; nth <= 67; nth++) {
            int64_t n = ns[a], next = 0, lo_size = INT64_MAX, hi_size = 0;
            for (int ith = 0; ith < nth; ith++) {
                int64_t s = -1, e = -1;
                spud_pool_split(n, ith, nth, &s, &e);
                /* contiguous, in order: part ith starts where part ith - 1 ended */
                cr_assert_eq(s, next, "n %lld nth %d ith %d: start %lld, expected %lld", (long long)n, nth, ith,
                             (long long)s, (long long)next);
                cr_assert_geq(e, s);
                next = e;
                if (e - s < lo_size) lo_size = e - s;
                if (e - s > hi_size) hi_size = e - s;
            }
            cr_assert_eq(next, n, "n %lld nth %d: parts end at %lld", (long long)n, nth, (long long)next);
            cr_assert_leq(hi_size - lo_size, 1, "n %lld nth %d: parts of %lld and %lld", (long long)n, nth,
                          (long long)lo_size, (long long)hi_size);
        }
    }
    /* brute force on small cases: every index owned by exactly one part */
    for (int64_t n = 0; n < 50; n++) {
        for (int nth = 1; nth < 12; nth++) {
            int owners[50] = {0};
            for (int ith = 0; ith < nth; ith++) {
                int64_t s, e;
                spud_pool_split(n, ith, nth, &s, &e);
                for (int64_t i = s; i < e; i++) {
                    cr_assert(i >= 0 && i < n);
                    owners[i]++;
                }
            }
            for (int64_t i = 0; i < n; i++) cr_assert_eq(owners[i], 1, "n %d nth %d: index %d", (int)n, nth, (int)i);
        }
    }
}

/* ---- sum ---- */

typedef struct {
    const int64_t *x;
    int64_t n;
    int64_t partial[64];
} sum_job;

static void sum_fn(void *arg, int ith, int nth) {
    sum_job *j = arg;
    int64_t s, e, acc = 0;
    spud_pool_split(j->n, ith, nth, &s, &e);
    for (int64_t i = s; i < e; i++) acc += j->x[i];
    j->partial[ith] = acc;
}

Test(threadpool, parallel_sum_equals_serial) {
    enum { N = 3000001 };
    int64_t *x = malloc(sizeof *x * N);
    cr_assert_not_null(x);
    uint64_t r = 12345;
    int64_t serial = 0;
    for (int64_t i = 0; i < N; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (int64_t)(r >> 40) - (1 << 23);
        serial += x[i];
    }
    const int counts[] = {1, 2, 3, 4, 7, 16};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        spud_pool *p = mk(counts[c]);
        cr_assert_eq(spud_pool_n_threads(p), counts[c]);
        for (int rep = 0; rep < 5; rep++) {
            sum_job j = {.x = x, .n = N};
            for (int t = 0; t < 64; t++) j.partial[t] = 0x5EED; /* a thread that does not run leaves this */
            spud_pool_run(p, sum_fn, &j);
            int64_t total = 0;
            for (int t = 0; t < counts[c]; t++) total += j.partial[t];
            cr_assert_eq(total, serial, "%d threads: %lld, serial %lld", counts[c], (long long)total, (long long)serial);
        }
        spud_pool_free(p);
    }
    free(x);
}

/* ---- every thread index runs exactly once per job ---- */

typedef struct {
    atomic_int calls[64];
    atomic_int bad_nth;
    int nth;
} who_job;

static void who_fn(void *arg, int ith, int nth) {
    who_job *j = arg;
    if (nth != j->nth || ith < 0 || ith >= nth) atomic_fetch_add(&j->bad_nth, 1);
    else atomic_fetch_add(&j->calls[ith], 1);
}

Test(threadpool, each_index_once_per_run_after_idle) {
    spud_pool *p = mk(4);
    for (int rep = 0; rep < 60; rep++) {
        who_job j = {.nth = 4};
        spud_pool_run(p, who_fn, &j);
        cr_assert_eq(atomic_load(&j.bad_nth), 0);
        for (int t = 0; t < 4; t++) cr_assert_eq(atomic_load(&j.calls[t]), 1, "run %d: thread %d ran %d times", rep, t,
                                                 atomic_load(&j.calls[t]));
        /* now and then let the workers fall asleep, so wake-up is tested too */
        if (rep % 10 == 9) usleep(5000);
    }
    spud_pool_free(p);
}

/* ---- barriers ---- */

typedef struct {
    spud_pool *pool;
    int phases;
    int *slot;       /* (nth) plain ints: only the barrier orders them (TSan checks this) */
    atomic_int errors;
    int delay_thread; /* this thread sleeps now and then before a barrier (-1: none) */
} bar_job;

static void bar_fn(void *arg, int ith, int nth) {
    bar_job *j = arg;
    for (int ph = 1; ph <= j->phases; ph++) {
        if (ith == j->delay_thread && ph % 50 == 0) usleep(2000); /* the others must sleep, then wake */
        j->slot[ith] = ph;
        spud_pool_barrier(j->pool);
        for (int t = 0; t < nth; t++)
            if (j->slot[t] != ph) atomic_fetch_add(&j->errors, 1);
        spud_pool_barrier(j->pool);
    }
}

static void run_barriers(int nth, int phases, int delay_thread) {
    spud_pool *p = mk(nth);
    int *slot = calloc((size_t)nth, sizeof *slot);
    bar_job j = {.pool = p, .phases = phases, .slot = slot, .delay_thread = delay_thread};
    spud_pool_run(p, bar_fn, &j);
    cr_assert_eq(atomic_load(&j.errors), 0, "%d threads: %d stale reads after barriers", nth, atomic_load(&j.errors));
    for (int t = 0; t < nth; t++) cr_assert_eq(slot[t], phases);
    /* and again on the same pool: the barrier state carries over between jobs */
    j.phases = 100;
    spud_pool_run(p, bar_fn, &j);
    cr_assert_eq(atomic_load(&j.errors), 0);
    free(slot);
    spud_pool_free(p);
}

Test(threadpool, barrier_phases) {
    run_barriers(2, 5000, -1);
    run_barriers(3, 2000, -1);
    run_barriers(4, 300, 2);
    run_barriers(8, 300, 0); /* more threads than cores */
    run_barriers(1, 1000, -1);
}

/* Phases that depend on the previous phase's results from other threads:
 * a parallel prefix computation, checked against the serial one. */
typedef struct {
    spud_pool *pool;
    uint64_t *a, *b; /* (n) */
    int64_t n;
    int rounds;
} stencil_job;

static void stencil_fn(void *arg, int ith, int nth) {
    stencil_job *j = arg;
    int64_t s, e;
    spud_pool_split(j->n, ith, nth, &s, &e);
    uint64_t *src = j->a, *dst = j->b;
    for (int r = 0; r < j->rounds; r++) {
        for (int64_t i = s; i < e; i++) dst[i] = src[i] + (i > 0 ? src[i - 1] : 0) + 1;
        spud_pool_barrier(j->pool);
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
}

Test(threadpool, barrier_orders_dependent_phases) {
    enum { N = 1000, ROUNDS = 300 };
    /* x'[i] = x[i] + x[i - 1] + 1, mod 2^64 */
    uint64_t *a = calloc(N, sizeof *a), *b = calloc(N, sizeof *b), *ra = calloc(N, sizeof *ra),
             *rb = calloc(N, sizeof *rb);
    for (int r = 0; r < ROUNDS; r++) {
        for (int64_t i = 0; i < N; i++) rb[i] = ra[i] + (i > 0 ? ra[i - 1] : 0) + 1;
        uint64_t *t = ra;
        ra = rb;
        rb = t;
    }
    for (int nth = 1; nth <= 5; nth++) {
        memset(a, 0, sizeof *a * N);
        memset(b, 0, sizeof *b * N);
        spud_pool *p = mk(nth);
        stencil_job j = {.pool = p, .a = a, .b = b, .n = N, .rounds = ROUNDS};
        spud_pool_run(p, stencil_fn, &j);
        const uint64_t *res = ROUNDS % 2 ? b : a;
        for (int64_t i = 0; i < N; i++)
            cr_assert_eq(res[i], ra[i], "%d threads: element %d is %llu, serial %llu", nth, (int)i,
                         (unsigned long long)res[i], (unsigned long long)ra[i]);
        spud_pool_free(p);
    }
    free(a);
    free(b);
    free(ra);
    free(rb);
}

/* ---- one thread, defaults, failures ---- */

typedef struct {
    pthread_t caller;
    int calls, bad;
} one_job;

static void one_fn(void *arg, int ith, int nth) {
    one_job *j = arg;
    j->calls++;
    if (ith != 0 || nth != 1 || !pthread_equal(pthread_self(), j->caller)) j->bad++;
}

Test(threadpool, one_thread_runs_on_caller) {
    spud_pool *p = mk(1);
    cr_assert_eq(spud_pool_n_threads(p), 1);
    one_job j = {.caller = pthread_self()};
    for (int i = 0; i < 100; i++) {
        spud_pool_run(p, one_fn, &j);
        spud_pool_barrier(p); /* no-op with one thread */
    }
    cr_assert_eq(j.calls, 100);
    cr_assert_eq(j.bad, 0);
    spud_pool_free(p);
}

Test(threadpool, default_thread_count) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    spud_pool *p = mk(0);
    cr_assert_eq(spud_pool_n_threads(p), ncpu > 0 ? (int)ncpu : 1);
    spud_pool_free(p);
    p = mk(-3);
    cr_assert_eq(spud_pool_n_threads(p), ncpu > 0 ? (int)ncpu : 1);
    spud_pool_free(p);
}

Test(threadpool, allocation_failure) {
    for (long k = 0; k < 3; k++) {
        spud_pool *p = (spud_pool *)1;
        spud_alloc_fail_after(k);
        spud_status st = spud_pool_new(4, &p);
        spud_alloc_fail_after(-1);
        cr_assert_eq(st, SPUD_ERR_NOMEM, "allocation %ld failed, status %d", k, st);
        cr_assert_null(p);
    }
}

Test(threadpool, create_free_many) {
    for (int i = 0; i < 50; i++) {
        spud_pool *p = mk(1 + i % 4);
        if (i % 2) {
            who_job j = {.nth = 1 + i % 4};
            spud_pool_run(p, who_fn, &j);
            cr_assert_eq(atomic_load(&j.bad_nth), 0);
        }
        spud_pool_free(p);
    }
}

/* ---- latency (printed, not asserted) ---- */

typedef struct {
    atomic_long count;
} tick_job;

static void tick_fn(void *arg, int ith, int nth) {
    tick_job *j = arg;
    atomic_fetch_add_explicit(&j->count, 1, memory_order_relaxed);
}

static void nop_fn(void *arg, int ith, int nth) {}

Test(threadpool, many_runs_latency) {
    enum { RUNS = 5000 };
    const int counts[] = {2, 4};
    for (size_t c = 0; c < 2; c++) {
        spud_pool *p = mk(counts[c]);
        tick_job j = {0};
        for (int i = 0; i < RUNS; i++) spud_pool_run(p, tick_fn, &j);
        cr_assert_eq(atomic_load(&j.count), (long)RUNS * counts[c]);
        double t0 = spud_time_s();
        for (int i = 0; i < RUNS; i++) spud_pool_run(p, nop_fn, NULL);
        double t1 = spud_time_s();
        fprintf(stderr, "threadpool: %d threads: %.2f us per empty spud_pool_run (mean of %d)\n", counts[c],
                (t1 - t0) / RUNS * 1e6, RUNS);
        spud_pool_free(p);
    }
}
