/* test_thread_pool.c - the pool's scratch: one region per thread, 64-byte
 * aligned, the same memory from job to job (no allocation in the per-token
 * loop), grown only for a larger size. */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "base/thread_pool.h"

#define N_TASKS 64

struct seen {
    struct thread_pool *pool;
    size_t bytes;
    void *ptr[N_TASKS];
};

static void scratch_task(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    struct seen *s = ctx;
    unsigned char *p = thread_pool_task_scratch(s->pool, s->bytes);
    s->ptr[task] = p;
    if (p) /* private: another thread writing it at once would be a race (TSan, ASan) */
        memset(p, task, s->bytes);
}

/* The set of distinct pointers one job's tasks saw. */
static int distinct(void *const *v, int n, void **out)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        int j = 0;
        while (j < k && out[j] != v[i])
            j++;
        if (j == k)
            out[k++] = v[i];
    }
    return k;
}

Test(thread_pool, task_scratch_per_thread_and_kept)
{
    struct thread_pool *pool = thread_pool_create(3);
    cr_assert_not_null(pool);
    struct seen a = {.pool = pool, .bytes = 40960}, b = a;
    thread_pool_run(pool, scratch_task, &a, N_TASKS);
    void *set_a[N_TASKS], *set_b[N_TASKS];
    int na = distinct(a.ptr, N_TASKS, set_a);
    cr_assert(na >= 1 && na <= 3, "%d regions for 3 threads", na);
    for (int i = 0; i < na; i++) {
        cr_assert_not_null(set_a[i]);
        cr_assert_eq((uintptr_t)set_a[i] % 64, 0, "64-byte aligned");
    }
    /* a smaller or equal size later: no new memory */
    b.bytes = 1000;
    for (int rep = 0; rep < 20; rep++) {
        thread_pool_run(pool, scratch_task, &b, N_TASKS);
        int nb = distinct(b.ptr, N_TASKS, set_b);
        for (int i = 0; i < nb; i++) {
            int j = 0;
            while (j < na && set_a[j] != set_b[i])
                j++;
            /* a thread that took no task in the first job may appear now */
            if (j == na)
                set_a[na++] = set_b[i];
            cr_assert_leq(na, 3, "more regions than threads");
        }
    }
    /* the caller's own region outside a job is its in-job one */
    void *caller = thread_pool_task_scratch(pool, 64);
    int j = 0;
    while (j < na && set_a[j] != caller)
        j++;
    cr_assert(j < na || na < 3, "the caller's region is one of the three");
    /* a larger size: the memory grows and is fully usable */
    unsigned char *big = thread_pool_task_scratch(pool, 1 << 20);
    cr_assert_not_null(big);
    memset(big, 1, 1 << 20);
    cr_assert_eq(thread_pool_task_scratch(pool, 1 << 19), big, "kept once grown");
    thread_pool_destroy(pool);
}

Test(thread_pool, job_scratch_is_its_own)
{
    struct thread_pool *pool = thread_pool_create(2);
    void *job = thread_pool_job_scratch(pool, 4096);
    cr_assert_not_null(job);
    cr_assert_eq((uintptr_t)job % 64, 0);
    cr_assert_neq(job, thread_pool_task_scratch(pool, 4096), "distinct from the caller's task scratch");
    cr_assert_eq(thread_pool_job_scratch(pool, 100), job);
    cr_assert_null(thread_pool_task_scratch(NULL, 10), "no pool, no scratch");
    cr_assert_null(thread_pool_job_scratch(NULL, 10));
    thread_pool_destroy(pool);

    struct thread_pool *one = thread_pool_create(1); /* no workers: tasks run on the caller */
    struct seen s = {.pool = one, .bytes = 128};
    thread_pool_run(one, scratch_task, &s, 4);
    for (int i = 1; i < 4; i++)
        cr_assert_eq(s.ptr[i], s.ptr[0]);
    cr_assert_eq(thread_pool_task_scratch(one, 128), s.ptr[0]);
    thread_pool_destroy(one);
}
