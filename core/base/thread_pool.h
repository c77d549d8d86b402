/* thread_pool.h - a fixed set of worker threads for data-parallel kernels.
 *
 * thread_pool_run() splits n_tasks among the threads (the caller's thread
 * takes part) and returns when all are done. No allocation per call. */
#pragma once

struct thread_pool;

/* n_threads <= 0: one per online CPU. NULL on failure. */
struct thread_pool *thread_pool_create(int n_threads);
void thread_pool_destroy(struct thread_pool *p); /* accepts NULL */
int thread_pool_size(const struct thread_pool *p);

/* Calls fn(ctx, task, n_tasks) for task in [0, n_tasks), spread over the threads. */
typedef void (*thread_pool_fn)(void *ctx, int task, int n_tasks);
void thread_pool_run(struct thread_pool *p, thread_pool_fn fn, void *ctx, int n_tasks);
