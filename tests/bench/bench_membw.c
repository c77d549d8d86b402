/* bench_membw.c - prints read_bandwidth() for N threads (bench_quant.sh's
 * "% bound"). A benchmark, not a test.
 *
 * usage: bench_membw [THREADS]   (default 2) */
#include <stdio.h>
#include <stdlib.h>

#include "base/thread_pool.h"
#include "read_bandwidth.h"

int main(int argc, char **argv)
{
    const int n_threads = argc > 1 ? atoi(argv[1]) : 2;
    if (n_threads < 1 || n_threads > 64) {
        fprintf(stderr, "usage: bench_membw [THREADS 1-64]\n");
        return 2;
    }
    struct thread_pool *pool = thread_pool_create(n_threads);
    const double gbs = pool ? read_bandwidth(pool) : 0.0;
    thread_pool_destroy(pool);
    if (gbs <= 0.0) {
        fprintf(stderr, "bench_membw: cannot measure (out of memory?)\n");
        return 1;
    }
    printf("%.1f\n", gbs);
    return 0;
}
