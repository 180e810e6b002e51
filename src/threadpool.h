/* threadpool.h: a fixed set of worker threads that run one parallel job at a
 * time, with a low-latency barrier (spin, then sleep). No thread is created
 * per job or per token.
 *
 * Usage: spud_pool_run(pool, fn, arg) calls fn(arg, ith, nth) on nth threads
 * (the caller is thread 0) and returns when all are done. Inside fn,
 * spud_pool_barrier(pool) synchronises all nth threads of the current job.
 */
#ifndef SPUD_THREADPOOL_H
#define SPUD_THREADPOOL_H

#include "core.h"

typedef struct spud_pool spud_pool;
typedef void (*spud_pool_fn)(void *arg, int ith, int nth);

/* n_threads <= 0: number of online CPUs. */
spud_status spud_pool_new(int n_threads, spud_pool **out);
void spud_pool_free(spud_pool *p);
int spud_pool_n_threads(const spud_pool *p);
void spud_pool_run(spud_pool *p, spud_pool_fn fn, void *arg);
void spud_pool_barrier(spud_pool *p);
/* Split [0, n) into nth near-equal parts; set [*start, *end) of part ith. */
void spud_pool_split(int64_t n, int ith, int nth, int64_t *start, int64_t *end);

#endif
