/* thread_pool.h - a fixed set of worker threads for data-parallel kernels.
 *
 * thread_pool_run() splits n_tasks among the threads (the caller's thread
 * takes part) and returns when all are done. No allocation per call.
 *
 * A pool has one caller at a time (a job is published to every thread), and
 * owns scratch memory for the kernels it runs: one region per thread for a
 * task's private work, one for the job's shared data, each kept from call to
 * call and grown only when a larger size is asked, so the per-token loop
 * allocates nothing once the largest batch shape has been seen. */
#pragma once

#include <stddef.h>

struct thread_pool;

/* n_threads <= 0: one per online CPU. NULL on failure. */
struct thread_pool *thread_pool_create(int n_threads);
void thread_pool_destroy(struct thread_pool *p); /* accepts NULL */
int thread_pool_size(const struct thread_pool *p);

/* Calls fn(ctx, task, n_tasks) for task in [0, n_tasks), spread over the threads. */
typedef void (*thread_pool_fn)(void *ctx, int task, int n_tasks);
void thread_pool_run(struct thread_pool *p, thread_pool_fn fn, void *ctx, int n_tasks);

/* At least `bytes` of 64-byte aligned scratch private to the calling thread:
 * a worker's own inside a task, the caller's otherwise (inside its tasks or
 * not). Owned by the pool, valid until the next call of this function on the
 * same thread or thread_pool_destroy(); the contents are not kept when it
 * grows. NULL when p is NULL or memory runs out. */
void *thread_pool_task_scratch(struct thread_pool *p, size_t bytes);

/* The same for data the caller prepares for a job and its tasks read: one
 * region per pool, to be asked for by the caller outside tasks. */
void *thread_pool_job_scratch(struct thread_pool *p, size_t bytes);
