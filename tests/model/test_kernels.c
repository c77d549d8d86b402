/* test_kernels.c - CPU kernels against a double-precision reference, for
 * every instruction set this CPU has, every float dtype and odd shapes; and
 * the thread pool runs every task exactly once. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "model/dtype.h"
#include "model/kernels.h"
#include "base/thread_pool.h"

static uint64_t rng_state = 88172645463325252ull;

static float frand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * 0x1.0p-53) * 2.0f - 1.0f;
}

/* A random weight [rows, cols] stored as dt, plus its exact f32 values. */
static void make_weight(enum ifd_dtype dt, int64_t rows, int64_t cols, struct ifd_weight *w, float **ret_f32)
{
    size_t n = (size_t)(rows * cols);
    float *f = malloc(n * sizeof(float));
    void *data = malloc(n * ifd_dtype_size(dt));
    for (size_t i = 0; i < n; i++) {
        float v = frand();
        if (dt == IFD_DTYPE_F32) {
            ((float *)data)[i] = v;
        } else if (dt == IFD_DTYPE_F16) {
            uint16_t h = ifd_f32_to_f16(v);
            ((uint16_t *)data)[i] = h;
            v = ifd_f16_to_f32(h);
        } else {
            uint16_t h = ifd_f32_to_bf16(v);
            ((uint16_t *)data)[i] = h;
            v = ifd_bf16_to_f32(h);
        }
        f[i] = v;
    }
    *w = (struct ifd_weight){.dtype = dt, .data = data, .rows = rows, .cols = cols};
    *ret_f32 = f;
}

static const char *const simds[] = {"scalar", "avx2", "avx512"};
static const enum ifd_dtype dtypes[] = {IFD_DTYPE_F32, IFD_DTYPE_F16, IFD_DTYPE_BF16};

static void check_matmul(struct thread_pool *pool, int64_t rows, int64_t cols, int n_tokens)
{
    for (size_t s = 0; s < sizeof(simds) / sizeof(simds[0]); s++) {
        if (kern_set_simd(simds[s]) == -ENOTSUP)
            continue;
        for (size_t d = 0; d < 3; d++) {
            struct ifd_weight w;
            float *wf;
            make_weight(dtypes[d], rows, cols, &w, &wf);
            float *x = malloc(sizeof(float) * (size_t)(n_tokens * cols));
            float *y = malloc(sizeof(float) * (size_t)(n_tokens * rows));
            for (int64_t i = 0; i < n_tokens * cols; i++)
                x[i] = frand();
            for (int64_t i = 0; i < n_tokens * rows; i++)
                y[i] = NAN; /* every output must be written */
            kern_matmul(pool, &w, x, n_tokens, y);
            for (int t = 0; t < n_tokens; t++) {
                for (int64_t r = 0; r < rows; r++) {
                    double ref = 0, mag = 0;
                    for (int64_t c = 0; c < cols; c++) {
                        ref += (double)wf[r * cols + c] * x[t * cols + c];
                        mag += fabs((double)wf[r * cols + c] * x[t * cols + c]);
                    }
                    double got = y[t * rows + r];
                    cr_assert(fabs(got - ref) <= 1e-5 * mag + 1e-6,
                              "%s %s rows %ld cols %ld tokens %d: y[%d,%ld] = %.7g, want %.7g", simds[s],
                              ifd_dtype_name(dtypes[d]), (long)rows, (long)cols, n_tokens, t, (long)r, got,
                              ref);
                }
            }
            free(x);
            free(y);
            free(wf);
            free((void *)w.data);
        }
    }
}

static void setup(void)
{
    kern_init();
}

TestSuite(kernels, .init = setup);

Test(kernels, simd_name_is_known)
{
    const char *n = kern_simd_name();
    cr_assert(strcmp(n, "scalar") == 0 || strcmp(n, "avx2") == 0 || strcmp(n, "avx512") == 0, "%s", n);
    cr_assert_eq(kern_set_simd("neon9"), -EINVAL);
}

Test(kernels, matmul_decode_odd_shapes)
{
    struct thread_pool *pool = thread_pool_create(2);
    cr_assert_not_null(pool);
    static const int64_t shapes[][2] = {{1, 1}, {13, 13}, {67, 67}, {67, 130}, {5, 4097}, {130, 64}, {4, 16}};
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        check_matmul(NULL, shapes[i][0], shapes[i][1], 1);
        check_matmul(pool, shapes[i][0], shapes[i][1], 1);
    }
    thread_pool_destroy(pool);
}

Test(kernels, matmul_prefill_odd_shapes)
{
    struct thread_pool *pool = thread_pool_create(2);
    cr_assert_not_null(pool);
    static const int tokens[] = {2, 3, 5, 6, 7, 13, 40};
    for (size_t i = 0; i < sizeof(tokens) / sizeof(tokens[0]); i++) {
        check_matmul(pool, 67, 67, tokens[i]);
        check_matmul(pool, 13, 200, tokens[i]);
    }
    /* more tokens than fit one L2 block of activations (256 KiB / 4097 cols = 15) */
    check_matmul(pool, 9, 4097, 33);
    thread_pool_destroy(pool);
}

Test(kernels, weight_row_widens_exactly)
{
    for (size_t d = 0; d < 3; d++) {
        struct ifd_weight w;
        float *wf;
        make_weight(dtypes[d], 7, 37, &w, &wf);
        float out[37];
        for (int r = 0; r < 7; r++) {
            kern_weight_row(&w, r, out);
            for (int c = 0; c < 37; c++)
                cr_assert_eq(out[c], wf[r * 37 + c], "%s row %d col %d", ifd_dtype_name(dtypes[d]), r, c);
        }
        free(wf);
        free((void *)w.data);
    }
}

Test(kernels, rmsnorm_matches_definition)
{
    float x[37], w[37], out[37];
    double ss = 0;
    for (int i = 0; i < 37; i++) {
        x[i] = frand() * 3;
        w[i] = frand();
        ss += (double)x[i] * x[i];
    }
    kern_rmsnorm(out, x, w, 37, 1e-5f);
    double inv = 1.0 / sqrt(ss / 37 + 1e-5);
    for (int i = 0; i < 37; i++)
        cr_assert(fabs(out[i] - x[i] * inv * w[i]) < 1e-6, "%d: %g vs %g", i, out[i], x[i] * inv * w[i]);
    /* in place */
    kern_rmsnorm(x, x, w, 37, 1e-5f);
    for (int i = 0; i < 37; i++)
        cr_assert_eq(x[i], out[i]);
}

/* Relative error of got against want, an absolute error under 1e-35: e^x
 * is flushed to 0 under -87.33 and to +inf over 88, which takes a SiLU of g
 * under -88 (at most 1e-36 in magnitude) to -0. */
static double rel_err(double got, double want)
{
    const double d = fabs(got - want);
    return d < 1e-35 ? 0 : d / fabs(want);
}

Test(kernels, softmax_and_silu_every_simd)
{
    int levels = 0;
    for (size_t s = 0; s < sizeof(simds) / sizeof(simds[0]); s++) {
        if (kern_set_simd(simds[s]) != 0)
            continue;
        levels++;
        /* the maximum is subtracted (e^1000 overflows), and -inf weighs 0 */
        float x[5] = {1000.0f, 1001.0f, 999.0f, -INFINITY, 1000.0f};
        kern_softmax(x, 5);
        double e0 = exp(-1.0), e2 = exp(-2.0), z = e0 + 1 + e2 + e0;
        cr_assert(fabs(x[0] - e0 / z) < 1e-6 && fabs(x[1] - 1 / z) < 1e-6 && fabs(x[2] - e2 / z) < 1e-6, "%s",
                  simds[s]);
        cr_assert_eq(x[3], 0.0f, "%s", simds[s]);
        /* every length through the vector body and the padded tail */
        for (int n = 1; n <= 41; n++) {
            float v[41];
            double ref[41], mx = -INFINITY, sum = 0;
            for (int i = 0; i < n; i++) {
                v[i] = 20.0f * frand() - 10.0f * (i % 3);
                mx = v[i] > mx ? v[i] : mx;
            }
            for (int i = 0; i < n; i++) /* x - max rounded to a float, as the kernel has it */
                sum += ref[i] = exp((double)(v[i] - (float)mx));
            kern_softmax(v, n);
            for (int i = 0; i < n; i++)
                cr_assert(rel_err(v[i], ref[i] / sum) < 2e-6, "%s n=%d i=%d: %.9g vs %.9g", simds[s], n, i, v[i],
                          ref[i] / sum);
        }
        /* SiLU over e^x's whole range and past it at both ends: e^-g is
         * within a few ulp of exp() wherever it is a normal float */
        enum { N = 1003 };
        static float g[N], u[N], g0[N];
        for (int i = 0; i < N; i++) {
            g[i] = g0[i] = -100.0f + 200.0f * (float)i / (N - 1) + 0.01f * frand();
            u[i] = 1.0f + frand();
        }
        g[0] = g0[0] = 0.0f;
        g[1] = g0[1] = -87.5f; /* e^87.5 is a float, but past the range: +inf, so -0 */
        g[2] = g0[2] = 87.5f;  /* e^-87.5 is under the normal floats: 0, so g */
        kern_silu_mul(g, u, N);
        for (int i = 0; i < N; i++) {
            const double want = g0[i] / (1 + exp(-(double)g0[i])) * u[i];
            cr_assert(rel_err(g[i], want) < 5e-7, "%s g=%.9g: %.9g vs %.9g", simds[s], g0[i], g[i], want);
        }
        cr_assert_eq(g[0], 0.0f);
        /* NaN stays NaN; silu(+inf) is +inf */
        float gn[2] = {NAN, INFINITY}, un[2] = {1.0f, 2.0f};
        kern_silu_mul(gn, un, 2);
        cr_assert(isnan(gn[0]) && gn[1] == INFINITY, "%s: %g %g", simds[s], gn[0], gn[1]);
    }
    cr_assert(levels >= 1);
}

Test(kernels, dot_and_axpy_every_simd)
{
    for (size_t s = 0; s < 3; s++) {
        if (kern_set_simd(simds[s]) != 0)
            continue;
        for (int n = 0; n < 70; n += 7) {
            float a[70], b[70], y[70], y0[70];
            double ref = 0;
            for (int i = 0; i < n; i++) {
                a[i] = frand();
                b[i] = frand();
                y[i] = y0[i] = frand();
                ref += (double)a[i] * b[i];
            }
            cr_assert(fabs(kern_dot(a, b, n) - ref) < 1e-5, "%s n=%d", simds[s], n);
            kern_axpy(y, 0.5f, a, n);
            for (int i = 0; i < n; i++)
                cr_assert(fabs(y[i] - (y0[i] + 0.5f * a[i])) < 1e-6, "%s n=%d i=%d", simds[s], n, i);
        }
    }
}

struct count_ctx {
    _Atomic int *hits;
};

static void count_task(void *ctx, int task, int n_tasks)
{
    struct count_ctx *c = ctx;
    atomic_fetch_add(&c->hits[task], 1);
}

Test(kernels, thread_pool_runs_every_task_once)
{
    for (int nt = 1; nt <= 3; nt++) {
        struct thread_pool *p = thread_pool_create(nt);
        cr_assert_not_null(p);
        cr_assert_eq(thread_pool_size(p), nt);
        _Atomic int hits[37];
        struct count_ctx c = {hits};
        for (int iter = 0; iter < 2000; iter++) {
            int n = iter % 37 + 1;
            for (int i = 0; i < 37; i++)
                atomic_store(&hits[i], 0);
            thread_pool_run(p, count_task, &c, n);
            for (int i = 0; i < 37; i++)
                cr_assert_eq(atomic_load(&hits[i]), i < n ? 1 : 0, "threads %d iter %d task %d", nt, iter, i);
            if (iter % 500 == 0)
                usleep(2000); /* let workers fall asleep on the futex too */
        }
        thread_pool_destroy(p);
    }
    thread_pool_destroy(NULL);
}

struct range_ctx {
    int n_tasks;          /* of the job this context belongs to */
    _Atomic int *strays;  /* calls with a task or count not of this job */
    _Atomic int ran;
};

static void range_task(void *ctx, int task, int n_tasks)
{
    struct range_ctx *c = ctx;
    if (task < 0 || task >= c->n_tasks || n_tasks != c->n_tasks)
        atomic_fetch_add(c->strays, 1);
    atomic_fetch_add(&c->ran, 1);
}

/* Back-to-back jobs of alternating small and large task counts with more
 * threads than cores, so workers get preempted between reading one job and
 * claiming from it: no task may run with another job's context or count, and
 * each job runs exactly its tasks. A stress test: the stale claim fixed in
 * thread_pool.c needed the caller preempted within a few instructions, so this
 * rarely provoked it even before the fix (it did not in 5 runs); it guards the
 * invariant, not that one interleaving. */
Test(kernels, thread_pool_jobs_never_mix, .timeout = 120)
{
    struct thread_pool *p = thread_pool_create(8);
    cr_assert_not_null(p);
    _Atomic int strays = 0;
    for (int iter = 0; iter < 100000; iter++) {
        struct range_ctx c = {.n_tasks = iter % 2 ? 2 : 17, .strays = &strays};
        thread_pool_run(p, range_task, &c, c.n_tasks);
        cr_assert_eq(atomic_load(&c.ran), c.n_tasks, "iteration %d: %d tasks ran, job has %d", iter,
                     atomic_load(&c.ran), c.n_tasks);
    }
    cr_assert_eq(atomic_load(&strays), 0, "%d tasks ran with another job's context", atomic_load(&strays));
    thread_pool_destroy(p);
}

/* Every head count a call takes at once (and more, done in turns), head
 * dimensions with whole tiles, single vectors and scalar tails, position
 * counts across the tile sizes; each level runs its own build of the loops.
 * Within a level, head h's sums are added in the same order whatever the
 * head count, so they must equal the one-head call's exactly. */
Test(kernels, attention_scores_and_values_every_simd)
{
    enum { MAX_H = 6, MAX_HD = 67, N = 150, STRIDE = 157, N_BLOCKED = 160 /* N rounded up to key blocks */ };
    /* keys: key[d * STRIDE + p], and in each head dimension's blocked layout */
    static float q[MAX_H * MAX_HD], key[MAX_HD * STRIDE], kt[MAX_HD * N_BLOCKED], v[N * STRIDE], w[MAX_H * N];
    static float sc[MAX_H * N], one[N], out[MAX_H * MAX_HD], out1[MAX_HD];
    for (int i = 0; i < MAX_H * MAX_HD; i++)
        q[i] = frand();
    for (int i = 0; i < MAX_HD * STRIDE; i++)
        key[i] = frand();
    for (int i = 0; i < N * STRIDE; i++)
        v[i] = frand();
    for (int i = 0; i < MAX_H * N; i++)
        w[i] = frand();
    const int hds[] = {24, 64, 67}, ns[] = {1, 7, 8, 9, 37, 63, 64, 65, 150};
    for (size_t s = 0; s < sizeof(simds) / sizeof(simds[0]); s++) {
        if (kern_set_simd(simds[s]) != 0)
            continue;
        for (size_t hi = 0; hi < sizeof(hds) / sizeof(hds[0]); hi++)
            for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++)
                for (int nh = 1; nh <= MAX_H; nh++) {
                    const int hd = hds[hi], n = ns[ni];
                    for (int d = 0; d < hd; d++)
                        for (int p = 0; p < N_BLOCKED; p++)
                            kt[kern_attn_key_index(hd, p, d)] = p < N ? key[d * STRIDE + p] : NAN;
                    kern_attn_scores(sc, N, q, nh, kt, hd, n, 0.25f);
                    kern_attn_values(out, w, N, nh, v, STRIDE, hd, n);
                    for (int h = 0; h < nh; h++) {
                        kern_attn_scores(one, N, q + h * hd, 1, kt, hd, n, 0.25f);
                        for (int p = 0; p < n; p++) {
                            double ref = 0;
                            for (int d = 0; d < hd; d++)
                                ref += (double)q[h * hd + d] * key[d * STRIDE + p];
                            cr_assert(fabs(sc[h * N + p] - 0.25 * ref) < 1e-5, "%s hd %d n %d heads %d: h %d p %d: %g vs %g",
                                      simds[s], hd, n, nh, h, p, sc[h * N + p], 0.25 * ref);
                            cr_assert_eq(sc[h * N + p], one[p], "%s hd %d n %d heads %d: h %d p %d differs from one head",
                                         simds[s], hd, n, nh, h, p);
                        }
                        kern_attn_values(out1, w + h * N, N, 1, v, STRIDE, hd, n);
                        for (int d = 0; d < hd; d++) {
                            double ref = 0;
                            for (int p = 0; p < n; p++)
                                ref += (double)w[h * N + p] * v[p * STRIDE + d];
                            cr_assert(fabs(out[h * hd + d] - ref) < 1e-4, "%s hd %d n %d heads %d: h %d d %d: %g vs %g",
                                      simds[s], hd, n, nh, h, d, out[h * hd + d], ref);
                            cr_assert_eq(out[h * hd + d], out1[d], "%s hd %d n %d heads %d: h %d d %d differs from one head",
                                         simds[s], hd, n, nh, h, d);
                        }
                    }
                }
    }
}

Test(kernels, matmul_multi_equals_separate_products)
{
    struct thread_pool *pool = thread_pool_create(2);
    struct ifd_weight w[5];
    float *wf[5], *ys[5], *ref[5];
    const int64_t rows[5] = {67, 13, 13, 130, 5}, cols = 45;
    const int T = 7;
    float x[7 * 45];
    for (int i = 0; i < T * cols; i++)
        x[i] = frand();
    for (int i = 0; i < 5; i++) {
        make_weight(dtypes[i % 3], rows[i], cols, &w[i], &wf[i]);
        ys[i] = malloc(sizeof(float) * (size_t)(T * rows[i]));
        ref[i] = malloc(sizeof(float) * (size_t)(T * rows[i]));
        kern_matmul(pool, &w[i], x, T, ref[i]);
    }
    const struct ifd_weight *wp[5] = {&w[0], &w[1], &w[2], &w[3], &w[4]};
    kern_matmul_multi(pool, wp, ys, 5, x, T); /* more than one group of 4 */
    for (int i = 0; i < 5; i++) {
        for (int k = 0; k < T * rows[i]; k++)
            cr_assert_eq(ys[i][k], ref[i][k], "weight %d element %d", i, k);
        free(ys[i]);
        free(ref[i]);
        free(wf[i]);
        free((void *)w[i].data);
    }
    thread_pool_destroy(pool);
}
