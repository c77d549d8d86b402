/* bench_quant.c - single-thread throughput of the quantized products.
 *
 * For Qwen2.5-0.5B-shaped matrices, times quant_matmul_rows_isa over the whole
 * matrix for one token (decode: reported as GB/s of packed weight read and as
 * weights per ns) and for a batch (prefill: GFLOP/s). A benchmark, not a test:
 * figures depend on the machine and on what else runs on it;
 * times are the thread's CPU time, which a loaded machine disturbs less
 * than wall time (though caches and memory bandwidth are still shared).
 * usage: bench_quant [bits] [group] [n_batch] [path: auto|avx512|avx2|scalar|int|panel] [simd] [ROWSxCOLS]
 * (int: decode and batch through the integer-activation path of the SIMD
 * level in use, coding the activations included; panel: the same with the
 * weight in panels (quant_panel.c), the layout the CPU stage serves from;
 * simd: a level of base/cpu.h to force first, e.g. avx2 on an AVX-512 CPU;
 * ROWSxCOLS: that one shape instead of the three, e.g. 512x896, whose 4-bit
 * weights stay in L2, to time the kernel's arithmetic apart from memory). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/cpu.h"
#include "model/dtype.h"
#include "model/quant.h"

/* the least time each figure is measured over */
#define MIN_SECONDS 0.5

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int bits = argc > 1 ? atoi(argv[1]) : 4;
    int gs = argc > 2 ? atoi(argv[2]) : 64;
    int nb = argc > 3 ? atoi(argv[3]) : 64;
    const char *isa_name = argc > 4 ? argv[4] : "auto";
    enum quant_isa isa = QUANT_ISA_AUTO;
    const bool panels = !strcmp(isa_name, "panel"), int8 = panels || !strcmp(isa_name, "int");
    if (argc > 5) {
        enum cpu_simd l;
        if (cpu_simd_from_name(argv[5], &l) < 0 || cpu_simd_force(l) < 0) {
            fprintf(stderr, "bench_quant: cannot force SIMD level '%s' on this CPU\n", argv[5]);
            return 1;
        }
    }
    if (!strcmp(isa_name, "avx512")) isa = QUANT_ISA_AVX512;
    else if (!strcmp(isa_name, "avx2")) isa = QUANT_ISA_AVX2;
    else if (!strcmp(isa_name, "scalar")) isa = QUANT_ISA_SCALAR;
    int64_t shapes[][2] = {{4864, 896}, {896, 4864}, {151936, 896}};
    size_t n_shapes = sizeof(shapes) / sizeof(shapes[0]);
    if (argc > 6) {
        long long r, c;
        if (sscanf(argv[6], "%lldx%lld", &r, &c) != 2 || r < 1 || c < gs || c % gs != 0) {
            fprintf(stderr, "bench_quant: shape '%s' is not ROWSxCOLS with COLS a multiple of the group\n", argv[6]);
            return 1;
        }
        shapes[0][0] = r;
        shapes[0][1] = c;
        n_shapes = 1;
    }
    for (size_t si = 0; si < n_shapes; si++) {
        int64_t rows = shapes[si][0], cols = shapes[si][1];
        float *wf = malloc((size_t)(rows * cols) * sizeof(float));
        srand(1);
        for (int64_t i = 0; i < rows * cols; i++)
            wf[i] = (float)rand() / RAND_MAX - 0.5f;
        struct ifd_weight src = {.dtype = IFD_DTYPE_F32, .data = wf, .rows = rows, .cols = cols};
        struct ifd_weight q;
        void *owned;
        ifd_error err;
        if (quant_weight_quantize(&src, bits, gs, &q, &owned, &err) < 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        /* bf16 scales, as the checkpoints we serve */
        free(wf);
        int64_t ng = cols / gs;
        uint16_t *sb = malloc((size_t)(rows * ng) * 4);
        for (int64_t i = 0; i < rows * ng; i++) {
            sb[i] = ifd_f32_to_bf16(((const float *)q.scales)[i]);
            sb[rows * ng + i] = ifd_f32_to_bf16(((const float *)q.biases)[i]);
        }
        q.qparam_dtype = IFD_DTYPE_BF16;
        q.scales = sb;
        q.biases = sb + rows * ng;
        void *panel_owned = NULL;
        if (panels) {
            struct ifd_weight qp;
            if (!quant_panels_wanted(&q) || quant_weight_to_panels(&q, &qp, &panel_owned, &err) < 0) {
                fprintf(stderr, "bench_quant: no panels at level %s: %s\n", cpu_simd_name(cpu_simd_level()),
                        quant_panels_wanted(&q) ? err.msg : "the level or the weight does not take them");
                return 1;
            }
            q = qp;
        }
        float *x = malloc((size_t)(nb * cols) * sizeof(float));
        float *y = malloc((size_t)(nb * rows) * sizeof(float));
        for (int64_t i = 0; i < nb * cols; i++)
            x[i] = (float)rand() / RAND_MAX - 0.5f;
        double bytes = (double)rows * cols * bits / 8 + (double)rows * ng * 4;
        /* the activations and the panel sized once, as the thread pool's
         * scratch is in the daemon */
        struct quant_act a;
        void *act_mem = NULL, *panel = aligned_alloc(64, QUANT_ACT_PANEL_BYTES);
        const int n_max = nb > 1 ? nb : 1;
        if (int8 && (!quant_act_eligible(&q, 1) || !quant_act_eligible(&q, nb))) {
            fprintf(stderr, "bench_quant: the integer path does not take %d-token products at level %s\n", nb,
                    cpu_simd_name(cpu_simd_level()));
            return 1;
        }
        if (int8)
            act_mem = aligned_alloc(64, (quant_act_setup(&a, &q, n_max) + 63) & ~(size_t)63);
        if (int8 && (!act_mem || !panel))
            return 1;
#define PRODUCT(n)                                                                                                     \
    do {                                                                                                               \
        if (int8) {                                                                                                    \
            quant_act_setup(&a, &q, (n));                                                                              \
            quant_act_attach(&a, act_mem);                                                                             \
            quant_act_prepare_tokens(&a, x, 0, (n));                                                                   \
            quant_act_matmul_rows(&q, &a, y, 0, rows, panel);                                                          \
        } else {                                                                                                       \
            quant_matmul_rows_isa(isa, &q, x, (n), y, 0, rows);                                                        \
        }                                                                                                              \
    } while (0)
        PRODUCT(1);
        /* each figure over at least MIN_SECONDS of the thread's time: a
         * shape that stays in L2 takes microseconds a product */
        int reps = 0;
        double t0 = now(), dt;
        do {
            PRODUCT(1);
            reps++;
        } while ((dt = now() - t0) < MIN_SECONDS);
        dt /= reps;
        reps = 0;
        double t1 = now(), pt;
        do {
            PRODUCT(nb);
            reps++;
        } while ((pt = now() - t1) < MIN_SECONDS);
#undef PRODUCT
        pt /= reps;
        free(act_mem);
        free(panel);
        printf("[%lld x %lld] %d-bit g%d %s: decode %.3f ms (%.1f GB/s, %.2f Gw/s)  batch %d: %.3f ms (%.1f GFLOP/s)\n",
               (long long)rows, (long long)cols, bits, gs, isa_name, dt * 1e3, bytes / dt / 1e9,
               rows * cols / dt / 1e9, nb, pt * 1e3, 2.0 * rows * cols * nb / pt / 1e9);
        free(x);
        free(y);
        free(sb);
        free(owned);
        free(panel_owned);
    }
    return 0;
}
