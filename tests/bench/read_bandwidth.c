/* read_bandwidth.c - see read_bandwidth.h. */
#include "read_bandwidth.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "base/clock.h"

struct bw_job {
    const uint64_t *buf;
    size_t n;          /* words */
    uint64_t sums[64]; /* per task, so the reads cannot be optimised away */
};

static void bw_task(void *ctx, int task, int n_tasks)
{
    struct bw_job *j = ctx;
    size_t b = j->n * (size_t)task / (size_t)n_tasks, e = j->n * (size_t)(task + 1) / (size_t)n_tasks;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = b; i + 4 <= e; i += 4) {
        s0 += j->buf[i];
        s1 += j->buf[i + 1];
        s2 += j->buf[i + 2];
        s3 += j->buf[i + 3];
    }
    j->sums[task] = s0 ^ s1 ^ s2 ^ s3;
}

double read_bandwidth(struct thread_pool *pool)
{
    size_t bytes = (size_t)1 << 30;
    struct bw_job j = {.n = bytes / 8};
    /* huge pages where the kernel has them, as the weights in panels get
     * (quant_panel.c): on 4 KiB pages the TLB misses, not the memory, bounded
     * this loop (Zen 4 VM, 2 threads: 30-36 GB/s, against 39-40 read by the
     * 4-bit kernel from its huge-page copy) */
    uint64_t *buf = aligned_alloc((size_t)2 << 20, bytes);
    if (!buf)
        return 0;
#ifdef MADV_HUGEPAGE
    madvise(buf, bytes, MADV_HUGEPAGE);
#endif
    for (size_t i = 0; i < j.n; i++)
        buf[i] = i;
    j.buf = buf;
    double best = 0;
    int n_tasks = thread_pool_size(pool);
    if (n_tasks > (int)(sizeof(j.sums) / sizeof(j.sums[0])))
        n_tasks = (int)(sizeof(j.sums) / sizeof(j.sums[0]));
    for (int rep = 0; rep < 5; rep++) {
        double t0 = ifd_now_s();
        thread_pool_run(pool, bw_task, &j, n_tasks);
        double gbs = bytes / (ifd_now_s() - t0) / 1e9;
        best = gbs > best ? gbs : best;
    }
    uint64_t x = 0;
    for (int i = 0; i < n_tasks; i++)
        x ^= j.sums[i];
    free(buf);
    return best + (x == 42 ? 1e-12 : 0); /* keep the sums alive */
}

