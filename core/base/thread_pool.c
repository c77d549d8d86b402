/* thread_pool.c - fixed worker threads for data-parallel kernels.
 *
 * One job at a time: the caller publishes (fn, ctx, n_tasks) and bumps a
 * generation counter; workers and the caller then claim task indices from a
 * shared ticket (dynamic scheduling). The job is over when every task has
 * *finished*, not when every worker has checked in: on a machine shared with
 * other processes a descheduled worker that claimed nothing never delays the
 * caller, which simply runs the remaining tasks itself. The ticket carries
 * the job's generation, and is closed while the caller writes the next job,
 * so a worker waking late can never claim a task with another job's function,
 * task count or completion counter.
 *
 * Waiting is a short spin (dispatches in the decode loop come microseconds
 * apart; POOL_SPIN_NS) followed by a futex sleep, so idle workers cost
 * nothing. Nothing is allocated per call. */
#include "base/thread_pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base/clock.h"

/* How long a waiting thread polls before it sleeps: long enough to bridge
 * every gap between two jobs of one token's forward pass, short enough not
 * to burn a shared core for long once the work stops. A time, not a count
 * of pauses: PAUSE takes 25 ns on Zen 4 and several times that on recent
 * Intel cores. The 1000 pauses this was (25 us on Zen 4) were shorter than
 * the single-threaded SiLU before the down projection: the worker slept and
 * was woken once per layer, 50 futex calls and 25 context switches a token
 * (`perf stat -e syscalls:sys_enter_futex`, Qwen2.5-0.5B 4-bit decode). */
#define POOL_SPIN_NS 200000
/* pauses between two readings of the clock */
#define POOL_SPIN_CHECK 32

/* A scratch region and the thread it belongs to. */
struct pool_slot {
    struct thread_pool *pool;
    void *mem; /* 64-byte aligned */
    size_t cap;
};

struct thread_pool {
    int n_threads;                 /* including the caller's thread */
    pthread_t *threads;            /* [n_threads - 1] workers */
    int n_started;
    /* [n_threads + 1]: the caller's, worker i's at i + 1, the job's last */
    struct pool_slot *slots;

    /* the current job, written by the caller before bumping `generation` */
    _Atomic(thread_pool_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int n_tasks;

    _Atomic uint32_t generation;   /* bumped per job; futex word for workers */
    _Atomic uint32_t sleepers;     /* workers inside futex wait on generation */
    _Atomic uint64_t ticket;       /* generation << 32 | next task index */
    _Atomic uint32_t done;         /* tasks finished in the current job; futex word for the caller */
    _Atomic uint32_t caller_sleeping;
    _Atomic int stop;
};

static void futex_wait(_Atomic uint32_t *addr, uint32_t val)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* One poll of a wait that started at *since (0: not yet): pauses and
 * returns true while the wait is under POOL_SPIN_NS, false once the caller
 * should sleep. */
static bool spin_on(uint64_t *since, int *polls)
{
    if (++*polls % POOL_SPIN_CHECK == 0) {
        const uint64_t now = ifd_now_ns();
        if (!*since)
            *since = now;
        else if (now - *since >= POOL_SPIN_NS)
            return false;
    }
    cpu_relax();
    return true;
}

/* The index of a closed ticket: no task has it, so no claim can succeed. */
#define TICKET_CLOSED UINT32_MAX

/* Claims and runs tasks of job `gen` until none is left (or the job is no
 * longer current). A claim is a compare-and-swap on the ticket, and the
 * caller closes the ticket before it writes the next job's fn/ctx/n_tasks
 * (release; read here with acquire): a successful claim therefore proves
 * the values read before it belong to job `gen`. Without the close, a worker
 * preempted between reading a new n_tasks and the old ticket could claim a
 * task past the end of the old job and count it as done in the new one, which
 * left the caller waiting forever for a count it had already passed. */
static void pool_do_tasks(struct thread_pool *p, uint32_t gen)
{
    for (;;) {
        uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);
        if ((uint32_t)(t >> 32) != gen)
            return;
        thread_pool_fn fn = atomic_load_explicit(&p->fn, memory_order_acquire);
        void *ctx = atomic_load_explicit(&p->ctx, memory_order_acquire);
        int n_tasks = atomic_load_explicit(&p->n_tasks, memory_order_acquire);
        if ((uint32_t)t >= (uint32_t)n_tasks) /* all claimed, or closed */
            return;
        if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        fn(ctx, (int)(uint32_t)t, n_tasks);
        if (atomic_fetch_add(&p->done, 1) + 1 == (uint32_t)n_tasks && atomic_load(&p->caller_sleeping))
            futex_wake(&p->done);
    }
}

/* The slot of a worker thread; NULL on any other thread. */
static _Thread_local struct pool_slot *tl_slot;

static void *pool_worker(void *arg)
{
    tl_slot = arg;
    struct thread_pool *p = tl_slot->pool;
    uint32_t seen = 0;
    for (;;) {
        uint32_t g;
        uint64_t since = 0;
        int polls = 0;
        while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen) {
            if (spin_on(&since, &polls))
                continue;
            atomic_fetch_add(&p->sleepers, 1);
            /* seq_cst pairs with the caller's store to generation then load
             * of sleepers: one of the two sees the other. */
            if (atomic_load(&p->generation) == seen)
                futex_wait(&p->generation, seen);
            atomic_fetch_sub(&p->sleepers, 1);
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            return NULL;
        pool_do_tasks(p, g);
    }
}

static void pool_publish(struct thread_pool *p)
{
    atomic_fetch_add(&p->generation, 1);
    if (atomic_load(&p->sleepers))
        futex_wake(&p->generation);
}

struct thread_pool *thread_pool_create(int n_threads)
{
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 1024)
        n_threads = 1024;
    struct thread_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->n_threads = n_threads;
    if (!(p->slots = calloc((size_t)n_threads + 1, sizeof(*p->slots)))) {
        free(p);
        return NULL;
    }
    for (int i = 0; i <= n_threads; i++)
        p->slots[i].pool = p;
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads - 1, sizeof(*p->threads));
        if (!p->threads) {
            thread_pool_destroy(p);
            return NULL;
        }
    }
    for (int i = 0; i < n_threads - 1; i++) {
        if (pthread_create(&p->threads[i], NULL, pool_worker, &p->slots[i + 1]) != 0) {
            thread_pool_destroy(p);
            return NULL;
        }
        p->n_started++;
    }
    return p;
}

void thread_pool_destroy(struct thread_pool *p)
{
    if (!p)
        return;
    atomic_store(&p->stop, 1);
    pool_publish(p);
    for (int i = 0; i < p->n_started; i++)
        pthread_join(p->threads[i], NULL);
    if (p->slots)
        for (int i = 0; i <= p->n_threads; i++)
            free(p->slots[i].mem);
    free(p->slots);
    free(p->threads);
    free(p);
}

int thread_pool_size(const struct thread_pool *p)
{
    return p ? p->n_threads : 1;
}

void thread_pool_run(struct thread_pool *p, thread_pool_fn fn, void *ctx, int n_tasks)
{
    if (n_tasks <= 0)
        return;
    if (!p || p->n_started == 0 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, n_tasks);
        return;
    }
    uint32_t gen = atomic_load_explicit(&p->generation, memory_order_relaxed) + 1;
    /* Close the ticket first: see pool_do_tasks(). */
    atomic_store(&p->ticket, (uint64_t)gen << 32 | TICKET_CLOSED);
    atomic_store_explicit(&p->fn, fn, memory_order_release);
    atomic_store_explicit(&p->ctx, ctx, memory_order_release);
    atomic_store_explicit(&p->n_tasks, n_tasks, memory_order_release);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->ticket, (uint64_t)gen << 32, memory_order_release);
    pool_publish(p);
    pool_do_tasks(p, gen);

    uint64_t since = 0;
    int polls = 0;
    uint32_t d;
    while ((d = atomic_load_explicit(&p->done, memory_order_acquire)) != (uint32_t)n_tasks) {
        if (spin_on(&since, &polls))
            continue;
        atomic_store(&p->caller_sleeping, 1);
        d = atomic_load(&p->done);
        if (d != (uint32_t)n_tasks)
            futex_wait(&p->done, d);
        atomic_store(&p->caller_sleeping, 0);
    }
}

/* Grows s to at least bytes (rounded up to the alignment). Exact growth, not
 * geometric: sizes come from batch shapes, which change rarely and settle. */
static void *slot_reserve(struct pool_slot *s, size_t bytes)
{
    if (bytes <= s->cap && s->mem)
        return s->mem;
    if (bytes > SIZE_MAX - 63)
        return NULL;
    size_t cap = (bytes + 63) & ~(size_t)63;
    void *mem = aligned_alloc(64, cap ? cap : 64);
    if (!mem)
        return NULL;
    free(s->mem);
    s->mem = mem;
    s->cap = cap;
    return mem;
}

void *thread_pool_task_scratch(struct thread_pool *p, size_t bytes)
{
    if (!p)
        return NULL;
    /* the caller has no slot of its own in TLS: it may be any thread, one at
     * a time, which is what slot 0 serves */
    struct pool_slot *s = tl_slot && tl_slot->pool == p ? tl_slot : &p->slots[0];
    return slot_reserve(s, bytes);
}

void *thread_pool_job_scratch(struct thread_pool *p, size_t bytes)
{
    return p ? slot_reserve(&p->slots[p->n_threads], bytes) : NULL;
}
