/* threadpool.c: fixed worker threads (spud_pool_* in threadpool.h).
 *
 * Dispatch: the caller stores the job, then bumps a generation counter; each
 * worker waits for the counter to move, runs the job, and bumps a done
 * counter that the caller waits on. The barrier is a counter plus a
 * generation: the last thread to arrive resets the counter and bumps the
 * generation; the others wait for the generation to move.
 *
 * Every wait spins on the word with a pause instruction for SPUD_POOL_SPIN_S
 * (back-to-back jobs and barriers inside a token stay in user space; after
 * SPUD_POOL_YIELD_S the spinner also yields, in case the thread it waits for
 * is queued behind it on this core), then sleeps on a futex, so idle workers
 * between tokens cost no CPU. A waker makes
 * the futex system call only when someone sleeps: it changes the word, then
 * reads the sleeper count; a waiter raises the sleeper count, then reads the
 * word (both sequentially consistent, so one of the two sees the other), and
 * the kernel re-checks the word before it puts the waiter to sleep.
 *
 * All data shared between threads is published through these atomics with
 * release/acquire ordering; the futex only sleeps and wakes, so
 * ThreadSanitizer sees every happens-before edge.
 */
#define _GNU_SOURCE
#include "threadpool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* How long a waiter spins before it sleeps, and after how long it yields
 * the core between spins. */
#define SPUD_POOL_SPIN_S 100e-6
#define SPUD_POOL_YIELD_S 5e-6

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() ((void)0)
#endif

/* A futex word and the number of threads asleep on it, alone in a cache line. */
typedef struct {
    alignas(64) _Atomic uint32_t val;
    _Atomic uint32_t sleepers;
} pool_word;

typedef struct {
    spud_pool *pool;
    int ith;
} pool_worker;

struct spud_pool {
    pool_word job;  /* generation: bumped once per job (and once to stop) */
    pool_word done; /* workers finished with the current job */
    pool_word bar;  /* barrier generation */
    alignas(64) _Atomic uint32_t bar_count; /* threads arrived at the current barrier */
    alignas(64) int n;
    spud_pool_fn fn; /* current job, published by the release of job.val */
    void *arg;
    bool stop; /* published like fn */
    int n_started; /* workers created */
    pthread_t *threads;   /* (n - 1) workers, ith 1..n-1 */
    pool_worker *workers; /* (n - 1) */
};

static void futex_wait(_Atomic uint32_t *addr, uint32_t expected) {
    /* returns at once (EAGAIN) if *addr != expected; wakes may be spurious */
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Return once w->val != old (with acquire ordering). */
static void word_wait(pool_word *w, uint32_t old) {
    double t0 = 0.0;
    for (uint32_t i = 1;; i++) {
        if (atomic_load_explicit(&w->val, memory_order_acquire) != old) return;
        cpu_relax();
        if ((i & 15) == 0) {
            double t = spud_time_s();
            if (t0 == 0.0) {
                t0 = t;
            } else if (t - t0 > SPUD_POOL_SPIN_S) {
                break;
            } else if (t - t0 > SPUD_POOL_YIELD_S) {
                /* a descheduled thread of ours may be queued behind us */
                sched_yield();
            }
        }
    }
    atomic_fetch_add(&w->sleepers, 1);
    while (atomic_load(&w->val) == old) futex_wait(&w->val, old);
    atomic_fetch_sub(&w->sleepers, 1);
}

/* Call after changing w->val with a seq_cst operation. */
static void word_wake(pool_word *w) {
    if (atomic_load(&w->sleepers) > 0) futex_wake_all(&w->val);
}

static void *worker_main(void *a) {
    pool_worker *wk = a;
    spud_pool *p = wk->pool;
    uint32_t seen = 0; /* job.val is 0 when workers start */
    for (;;) {
        word_wait(&p->job, seen);
        seen = atomic_load_explicit(&p->job.val, memory_order_acquire);
        if (p->stop) break;
        p->fn(p->arg, wk->ith, p->n);
        if (atomic_fetch_add(&p->done.val, 1) + 1 == (uint32_t)(p->n - 1)) word_wake(&p->done);
    }
    return NULL;
}

/* Stop and join the workers that were started. Only when no job runs. */
static void pool_stop(spud_pool *p) {
    if (p->n_started == 0) return;
    p->stop = true;
    atomic_fetch_add(&p->job.val, 1);
    word_wake(&p->job);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    p->n_started = 0;
}

spud_status spud_pool_new(int n_threads, spud_pool **out) {
    *out = NULL;
    if (n_threads <= 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = ncpu > 0 ? (ncpu < INT_MAX ? (int)ncpu : INT_MAX) : 1;
    }
    spud_pool *p = spud_aligned_alloc(64, sizeof *p);
    if (!p) return spud_errorf(SPUD_ERR_NOMEM, "thread pool: out of memory");
    memset(p, 0, sizeof *p);
    p->n = n_threads;
    if (n_threads > 1) {
        p->threads = spud_calloc((size_t)(n_threads - 1), sizeof *p->threads);
        p->workers = spud_calloc((size_t)(n_threads - 1), sizeof *p->workers);
        if (!p->threads || !p->workers) {
            spud_pool_free(p);
            return spud_errorf(SPUD_ERR_NOMEM, "thread pool: out of memory for %d threads", n_threads);
        }
        for (int i = 0; i < n_threads - 1; i++) {
            p->workers[i] = (pool_worker){.pool = p, .ith = i + 1};
            int rc = pthread_create(&p->threads[i], NULL, worker_main, &p->workers[i]);
            if (rc != 0) {
                spud_pool_free(p);
                return spud_errorf(SPUD_ERR_NOMEM, "thread pool: cannot create thread %d of %d: %s", i + 1,
                                   n_threads, strerror(rc));
            }
            p->n_started++;
        }
    }
    *out = p;
    return SPUD_OK;
}

void spud_pool_free(spud_pool *p) {
    if (!p) return;
    pool_stop(p);
    spud_free(p->threads);
    spud_free(p->workers);
    spud_free(p);
}

int spud_pool_n_threads(const spud_pool *p) { return p->n; }

/* Not reentrant: one job at a time, from one caller thread. */
void spud_pool_run(spud_pool *p, spud_pool_fn fn, void *arg) {
    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->done.val, 0, memory_order_relaxed);
    atomic_fetch_add(&p->job.val, 1); /* publishes fn, arg and done = 0 */
    word_wake(&p->job);

    fn(arg, 0, p->n);

    const uint32_t want = (uint32_t)(p->n - 1);
    for (;;) {
        uint32_t d = atomic_load_explicit(&p->done.val, memory_order_acquire);
        if (d == want) break;
        word_wait(&p->done, d);
    }
}

/* All p->n threads of the running job must call it the same number of times. */
void spud_pool_barrier(spud_pool *p) {
    const uint32_t n = (uint32_t)p->n;
    if (n == 1) return;
    uint32_t gen = atomic_load_explicit(&p->bar.val, memory_order_relaxed);
    /* acq_rel: the last arrival acquires every earlier arrival's writes */
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == n - 1) {
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add(&p->bar.val, 1); /* releases them (and the reset) to all */
        word_wake(&p->bar);
    } else {
        word_wait(&p->bar, gen);
    }
}

void spud_pool_split(int64_t n, int ith, int nth, int64_t *start, int64_t *end) {
    if (n <= 0 || nth <= 0 || ith < 0 || ith >= nth) {
        *start = *end = 0;
        return;
    }
    /* the first n % nth parts get one extra element */
    int64_t base = n / nth, rem = n % nth;
    *start = ith * base + (ith < rem ? ith : rem);
    *end = *start + base + (ith < rem ? 1 : 0);
}
