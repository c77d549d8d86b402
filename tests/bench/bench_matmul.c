/* bench_matmul.c - the dense products of a stack of transformer layers at
 * several token counts: how batched decode and prefill scale with the batch.
 *
 * Twelve layers of the Qwen2.5-0.5B shape (q, k, v, o, gate, up, down; 179 M
 * weights, 358 MB in BF16/F16, far more than the caches), random weights,
 * each product through kern_matmul on a pool of THREADS threads, layer after
 * layer as a forward pass reads them. Prints, for every token count, the
 * best and the median wall time of REPS passes and the GFLOP/s of the best.
 * A benchmark, not a test: the figures move with what else the machine runs.
 *
 * usage: bench_matmul [SIMD [THREADS [DTYPE [TOKENS [REPS]]]]]
 *   SIMD    auto | scalar | avx2 | avx2-vnni | avx512 (forced, base/cpu.h)
 *   DTYPE   bf16 | f16
 *   TOKENS  comma-separated token counts (default 1,2,4,8,16,64) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/thread_pool.h"
#include "model/dtype.h"
#include "model/kernels.h"

enum { N_LAYERS = 12, N_MATS = 7, MAX_COUNTS = 32, MAX_REPS = 1000 };

/* rows x cols of q, k, v, o, gate, up, down */
static const int64_t shapes[N_MATS][2] = {
    {896, 896}, {128, 896}, {128, 896}, {896, 896}, {4864, 896}, {4864, 896}, {896, 4864},
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *simd = argc > 1 ? argv[1] : "auto";
    int n_threads = argc > 2 ? atoi(argv[2]) : 1;
    const char *dtype_name = argc > 3 ? argv[3] : "bf16";
    const char *counts_arg = argc > 4 ? argv[4] : "1,2,4,8,16,64";
    int reps = argc > 5 ? atoi(argv[5]) : 9;
    int counts[MAX_COUNTS], n_counts = 0, max_tokens = 1;

    for (const char *p = counts_arg; *p && n_counts < MAX_COUNTS;) {
        int t = atoi(p);
        if (t < 1 || t > 4096) {
            fprintf(stderr, "bench_matmul: token counts are 1 to 4096, got '%s'\n", counts_arg);
            return 2;
        }
        counts[n_counts++] = t;
        max_tokens = t > max_tokens ? t : max_tokens;
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    const enum ifd_dtype dt = strcmp(dtype_name, "f16") == 0 ? IFD_DTYPE_F16 : IFD_DTYPE_BF16;
    if (n_threads < 1 || reps < 1 || reps > MAX_REPS || (dt == IFD_DTYPE_BF16 && strcmp(dtype_name, "bf16"))) {
        fprintf(stderr, "usage: bench_matmul [SIMD [THREADS [bf16|f16 [TOKENS [REPS (1-%d)]]]]]\n", MAX_REPS);
        return 2;
    }
    kern_init();
    if (strcmp(simd, "auto") != 0 && kern_set_simd(simd) < 0) {
        fprintf(stderr, "bench_matmul: this CPU cannot run SIMD level '%s'\n", simd);
        return 1;
    }
    struct thread_pool *pool = thread_pool_create(n_threads);
    if (!pool) {
        fprintf(stderr, "bench_matmul: cannot start %d threads\n", n_threads);
        return 1;
    }

    struct ifd_weight w[N_LAYERS][N_MATS];
    srand(1);
    for (int l = 0; l < N_LAYERS; l++)
        for (int m = 0; m < N_MATS; m++) {
            const int64_t n = shapes[m][0] * shapes[m][1];
            uint16_t *d = aligned_alloc(64, (size_t)n * 2);
            if (!d) {
                fprintf(stderr, "bench_matmul: out of memory\n");
                return 1;
            }
            for (int64_t i = 0; i < n; i++) {
                float f = (float)(rand() % 2001 - 1000) / 20000.0f;
                d[i] = dt == IFD_DTYPE_F16 ? ifd_f32_to_f16(f) : ifd_f32_to_bf16(f);
            }
            w[l][m] = (struct ifd_weight){.dtype = dt, .data = d, .rows = shapes[m][0], .cols = shapes[m][1]};
        }
    /* the widest input (down: 4864 columns) and output (gate/up: 4864 rows) */
    float *x = malloc((size_t)max_tokens * 4864 * sizeof(float));
    float *y = malloc((size_t)max_tokens * 4864 * sizeof(float));
    if (!x || !y) {
        fprintf(stderr, "bench_matmul: out of memory\n");
        return 1;
    }
    for (int64_t i = 0; i < (int64_t)max_tokens * 4864; i++)
        x[i] = (float)(rand() % 2001 - 1000) / 1000.0f;

    printf("bench_matmul: %d layers of the Qwen2.5-0.5B shape, %s, simd %s, %d thread(s), %d passes each\n",
           N_LAYERS, dtype_name, kern_simd_name(), n_threads, reps);
    double *times = malloc((size_t)reps * sizeof(double));
    for (int ci = 0; ci < n_counts; ci++) {
        const int t = counts[ci];
        double flop = 0;
        for (int m = 0; m < N_MATS; m++)
            flop += 2.0 * (double)shapes[m][0] * (double)shapes[m][1] * t * N_LAYERS;
        for (int r = 0; r < reps; r++) {
            double t0 = ifd_now_s();
            for (int l = 0; l < N_LAYERS; l++)
                for (int m = 0; m < N_MATS; m++)
                    kern_matmul(pool, &w[l][m], x, t, y);
            times[r] = ifd_now_s() - t0;
        }
        qsort(times, (size_t)reps, sizeof(double), cmp_double);
        printf("tokens %4d  best %8.2f ms  median %8.2f ms  %6.2f ms/token  %6.1f GFLOP/s\n", t, times[0] * 1e3,
               times[reps / 2] * 1e3, times[0] * 1e3 / t, flop / times[0] / 1e9);
    }
    free(times);
    thread_pool_destroy(pool);
    return 0;
}
