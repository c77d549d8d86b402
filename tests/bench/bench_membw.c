/* bench_membw.c - the memory read bandwidth a decode can hope for: N threads
 * each summing its share of a buffer far larger than the caches, as decode
 * reads the weights once per token. bench_quant.sh divides it by the bytes
 * of a checkpoint for the "% bound" column. A benchmark, not a test.
 *
 * usage: bench_membw [THREADS] [MIB]   (default 2 threads, 1024 MiB)
 * prints: the best of 5 passes in GB/s (10^9 bytes per second). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct part {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
};

static void *read_part(void *arg)
{
    struct part *t = arg;
    /* four independent sums: the loop is bound by the loads, and the
     * compiler vectorizes it for the baseline ISA */
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= t->n; i += 4) {
        s0 += t->p[i];
        s1 += t->p[i + 1];
        s2 += t->p[i + 2];
        s3 += t->p[i + 3];
    }
    t->sum = s0 + s1 + s2 + s3;
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int n_threads = argc > 1 ? atoi(argv[1]) : 2;
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    if (n_threads < 1 || n_threads > 256 || mib < 64 || mib > 65536) {
        fprintf(stderr, "usage: bench_membw [THREADS 1-256] [MIB 64-65536]\n");
        return 2;
    }
    const size_t bytes = mib << 20, n = bytes / sizeof(uint64_t);
    uint64_t *buf = aligned_alloc(64, bytes);
    if (!buf) {
        fprintf(stderr, "bench_membw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    memset(buf, 1, bytes); /* real pages, not the shared zero page */
    pthread_t th[256];
    struct part parts[256];
    double best = 0.0;
    uint64_t check = 0;
    for (int pass = 0; pass < 5; pass++) {
        const size_t per = n / (size_t)n_threads / 4 * 4;
        double t0 = now();
        for (int i = 0; i < n_threads; i++) {
            parts[i] = (struct part){.p = buf + (size_t)i * per, .n = per};
            pthread_create(&th[i], NULL, read_part, &parts[i]);
        }
        for (int i = 0; i < n_threads; i++) {
            pthread_join(th[i], NULL);
            check += parts[i].sum;
        }
        double gbs = (double)(per * (size_t)n_threads * sizeof(uint64_t)) / (now() - t0) / 1e9;
        best = gbs > best ? gbs : best;
    }
    printf("%.1f\n", best);
    fprintf(stderr, "bench_membw: %d threads, %zu MiB, best of 5 passes: %.1f GB/s (checksum %llu)\n", n_threads,
            mib, best, (unsigned long long)check);
    free(buf);
    return 0;
}
