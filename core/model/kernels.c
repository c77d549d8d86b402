/* kernels.c - dispatch of the CPU kernels and their portable versions.
 *
 * Every call dispatches on base/cpu.h's SIMD level (detected once, forced by
 * kern_set_simd() in tests); kern_matmul() splits the
 * rows of a weight over the thread pool and hands each slice to that set's
 * matmul_rows (float weights) or to quant_matmul_rows (MLX-quantized ones).
 * The element-wise operations of the forward pass live here too: they are a
 * small share of the time and plain C that the compiler vectorizes. */
#include "model/kernels.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "base/cpu.h"
#include "kernels-internal.h"
#include "model/quant.h"
#include "base/thread_pool.h"

/* ---- portable fallback ------------------------------------------------- */

static inline float scalar_w(const void *base, int64_t i, enum ifd_dtype dt)
{
    if (dt == IFD_DTYPE_F32)
        return ((const float *)base)[i];
    if (dt == IFD_DTYPE_F16)
        return ifd_f16_to_f32(((const uint16_t *)base)[i]);
    return ifd_bf16_to_f32(((const uint16_t *)base)[i]);
}

static void scalar_matmul_rows(const struct ifd_weight *w, const float *x, int n_tokens, float *y,
                               int64_t row_begin, int64_t row_end)
{
    const int64_t cols = w->cols;
    const size_t esz = ifd_dtype_size(w->dtype);
    for (int64_t r = row_begin; r < row_end; r++) {
        const void *wr = (const uint8_t *)w->data + (size_t)r * (size_t)cols * esz;
        for (int t = 0; t < n_tokens; t++) {
            const float *xt = x + (size_t)t * (size_t)cols;
            /* four partial sums: independent chains, and the same pairing
             * idea as the SIMD versions */
            float s[4] = {0, 0, 0, 0};
            int64_t c = 0;
            for (; c + 4 <= cols; c += 4)
                for (int k = 0; k < 4; k++)
                    s[k] += scalar_w(wr, c + k, w->dtype) * xt[c + k];
            for (; c < cols; c++)
                s[0] += scalar_w(wr, c, w->dtype) * xt[c];
            y[(size_t)t * (size_t)w->rows + (size_t)r] = (s[0] + s[1]) + (s[2] + s[3]);
        }
    }
}

static float scalar_dot(const float *a, const float *b, int n)
{
    float s = 0;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void scalar_axpy(float *y, float a, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

KERN_TABLE_ENTRIES(scalar)

static const struct kern_isa kern_isa_scalar = {
    .name = "scalar",
    .matmul_rows = scalar_matmul_rows,
    .dot = scalar_dot,
    .axpy = scalar_axpy,
    .attn_scores = scalar_attn_scores,
    .attn_values = scalar_attn_values,
    .softmax = scalar_softmax,
    .silu_mul = scalar_silu_mul,
};

/* ---- dispatch ------------------------------------------------------------ */

/* The table of each level; the level in use is base/cpu.h's, shared with
 * the quantized products, so forcing one forces all. */
static const struct kern_isa *const kern_isas[] = {
    [CPU_SIMD_SCALAR] = &kern_isa_scalar,
#if defined(__x86_64__)
    [CPU_SIMD_AVX2] = &kern_isa_avx2,
    [CPU_SIMD_AVX2_VNNI] = &kern_isa_avx2, /* the dense products have no int8 part */
    [CPU_SIMD_AVX512] = &kern_isa_avx512,
#endif
};

static inline const struct kern_isa *kern_isa(void)
{
    return kern_isas[cpu_simd_level()];
}

void kern_init(void)
{
    (void)cpu_simd_level(); /* detects */
}

const char *kern_simd_name(void)
{
    return kern_isa()->name;
}

int kern_set_simd(const char *name)
{
    kern_init();
    enum cpu_simd l;
    int r = cpu_simd_from_name(name, &l);
    return r < 0 ? r : cpu_simd_force(l);
}

/* ---- matrix product -------------------------------------------------------- */

/* Most weights one kern_matmul_multi() call takes. */
#define MM_MAX_MULTI 4

struct mm_job {
    const struct ifd_weight *w[MM_MAX_MULTI];
    float *y[MM_MAX_MULTI];      /* [n_tokens, w[i]->rows] */
    int first_task[MM_MAX_MULTI + 1]; /* tasks of weight i: [first_task[i], first_task[i + 1]) */
    int n;
    const float *x;              /* [n_tokens, cols] */
    int n_tokens;
    int64_t rows_per_task;       /* multiple of 4 (16 with int8 activations), so tiles never straddle tasks */
    const struct quant_act *act[MM_MAX_MULTI]; /* weight i's int8 activations, or NULL */
    struct thread_pool *pool;    /* its per-thread scratch holds the int8 path's panels */
};

static void mm_task(void *ctx, int task, int n_tasks)
{
    const struct mm_job *j = ctx;
    int i = 0;
    while (task >= j->first_task[i + 1])
        i++;
    const struct ifd_weight *w = j->w[i];
    int64_t r0 = (int64_t)(task - j->first_task[i]) * j->rows_per_task;
    int64_t r1 = r0 + j->rows_per_task;
    if (r1 > w->rows)
        r1 = w->rows;
    if (r0 >= r1)
        return;
    if (j->act[i]) {
        void *panel = j->act[i]->kind == QUANT_ACT_INT8_PAIR ? thread_pool_task_scratch(j->pool, QUANT_ACT_PANEL_BYTES)
                                                             : NULL;
        if (quant_act_matmul_rows(w, j->act[i], j->y[i], r0, r1, panel) == 0)
            return;
    }
    if (w->bits)
        quant_matmul_rows(w, j->x, j->n_tokens, j->y[i], r0, r1);
    else
        kern_isa()->matmul_rows(w, j->x, j->n_tokens, j->y[i], r0, r1);
}

/* Below this many multiply-adds a product is not worth waking the pool. */
#define MM_PARALLEL_MIN_MACS (64 * 1024)

struct act_job {
    struct quant_act *a;
    const float *x;
};

static void act_task(void *ctx, int task, int n_tasks)
{
    const struct act_job *j = ctx;
    /* Whole tiles per task: threads never share a tile's cache lines. */
    int per = (j->a->n_tokens + n_tasks - 1) / n_tasks;
    per = (per + QUANT_ACT_TILE - 1) / QUANT_ACT_TILE * QUANT_ACT_TILE;
    int t0 = task * per, t1 = t0 + per < j->a->n_tokens ? t0 + per : j->a->n_tokens;
    if (t0 < t1)
        quant_act_prepare_tokens(j->a, j->x, t0, t1);
}

/* Quantizes x to int8 once for every weight of the job that takes the int8
 * prefill path (weights of one layout share it), into the pool's job scratch:
 * no allocation once the largest batch shape has been seen. Returns how many
 * of acts[] were filled; without the scratch every weight keeps the f32 path. */
static int mm_prepare_acts(struct thread_pool *pool, struct mm_job *j, struct quant_act *acts)
{
    int n_acts = 0, act_of[MM_MAX_MULTI];
    size_t at[MM_MAX_MULTI + 1] = {0}; /* byte offset of each act in the scratch */
    for (int i = 0; i < j->n; i++) {
        act_of[i] = -1;
        if (!j->w[i]->bits || !quant_act_eligible(j->w[i], j->n_tokens))
            continue;
        int k = 0;
        while (k < n_acts && !quant_act_matches(&acts[k], j->w[i]))
            k++;
        if (k == n_acts) {
            size_t bytes = quant_act_setup(&acts[k], j->w[i], j->n_tokens);
            at[k + 1] = at[k] + ((bytes + 63) & ~(size_t)63);
            n_acts++;
        }
        act_of[i] = k;
    }
    char *mem = n_acts ? thread_pool_job_scratch(pool, at[n_acts]) : NULL;
    if (!mem)
        return 0;
    for (int k = 0; k < n_acts; k++) {
        quant_act_attach(&acts[k], mem + at[k]);
        struct act_job aj = {.a = &acts[k], .x = j->x};
        int n_tasks = thread_pool_size(pool) < j->n_tokens ? thread_pool_size(pool) : j->n_tokens;
        thread_pool_run(pool, act_task, &aj, n_tasks);
    }
    for (int i = 0; i < j->n; i++)
        if (act_of[i] >= 0)
            j->act[i] = &acts[act_of[i]];
    return n_acts;
}

void kern_matmul_multi(struct thread_pool *pool, const struct ifd_weight *const *ws, float *const *ys, int n,
                       const float *x, int n_tokens)
{
    int n_threads = thread_pool_size(pool);
    if (n_tokens <= 0)
        return;
    while (n > MM_MAX_MULTI) { /* more than the job holds: in groups */
        kern_matmul_multi(pool, ws, ys, MM_MAX_MULTI, x, n_tokens);
        ws += MM_MAX_MULTI;
        ys += MM_MAX_MULTI;
        n -= MM_MAX_MULTI;
    }
    struct mm_job j = {.n = n, .x = x, .n_tokens = n_tokens, .pool = pool};
    int64_t total_rows = 0;
    double macs = 0;
    for (int i = 0; i < n; i++) {
        j.w[i] = ws[i];
        j.y[i] = ys[i];
        total_rows += ws[i]->rows;
        macs += (double)ws[i]->rows * (double)ws[i]->cols * n_tokens;
    }
    struct quant_act acts[MM_MAX_MULTI];
    const int n_acts = mm_prepare_acts(pool, &j, acts);
    if (n_threads <= 1 || macs < MM_PARALLEL_MIN_MACS) {
        int64_t max_rows = 1;
        for (int i = 0; i < n; i++)
            max_rows = ws[i]->rows > max_rows ? ws[i]->rows : max_rows;
        j.rows_per_task = max_rows;
        for (int i = 0; i <= n; i++)
            j.first_task[i] = i;
        for (int i = 0; i < n; i++)
            mm_task(&j, i, n);
    } else {
        /* Several tasks per thread: dynamic scheduling evens out a core that
         * is busy with something else. */
        const int64_t target = (int64_t)n_threads * 8, align = n_acts ? 16 : 4;
        int64_t per = (total_rows + target - 1) / target;
        per = (per + align - 1) / align * align;
        j.rows_per_task = per;
        j.first_task[0] = 0;
        for (int i = 0; i < n; i++)
            j.first_task[i + 1] = j.first_task[i] + (int)((ws[i]->rows + per - 1) / per);
        thread_pool_run(pool, mm_task, &j, j.first_task[n]);
    }
}

void kern_matmul(struct thread_pool *pool, const struct ifd_weight *w, const float *x, int n_tokens, float *y)
{
    kern_matmul_multi(pool, &w, &y, 1, x, n_tokens);
}

void kern_weight_row(const struct ifd_weight *w, int64_t row, float *out)
{
    if (w->bits) {
        quant_dequant_row(w, row, out);
        return;
    }
    const int64_t cols = w->cols;
    const size_t esz = ifd_dtype_size(w->dtype);
    const void *src = (const uint8_t *)w->data + (size_t)row * (size_t)cols * esz;
    switch (w->dtype) {
    case IFD_DTYPE_F32:
        memcpy(out, src, (size_t)cols * sizeof(float));
        break;
    case IFD_DTYPE_F16:
        for (int64_t c = 0; c < cols; c++)
            out[c] = ifd_f16_to_f32(((const uint16_t *)src)[c]);
        break;
    default:
        for (int64_t c = 0; c < cols; c++)
            out[c] = ifd_bf16_to_f32(((const uint16_t *)src)[c]);
        break;
    }
}

/* ---- element-wise ---------------------------------------------------------- */

float kern_dot(const float *a, const float *b, int n)
{
    return kern_isa()->dot(a, b, n);
}

void kern_axpy(float *y, float a, const float *x, int n)
{
    kern_isa()->axpy(y, a, x, n);
}

void kern_rmsnorm(float *out, const float *x, const float *weight, int n, float eps)
{
    /* mean of squares accumulated in double: one reduction per row, and it
     * keeps long rows (hidden 4096+) as exact as the reference's f32 sum */
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float inv = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++)
        out[i] = x[i] * inv * weight[i];
}

void kern_silu_mul(float *gate, const float *up, int n)
{
    kern_isa()->silu_mul(gate, up, n);
}

/* Heads beyond one tile's go in further calls. */
void kern_attn_scores(float *out, int64_t out_stride, const float *q, int n_heads, const float *kt, int hd, int n,
                      float scale)
{
    for (int h = 0; h < n_heads; h += KERN_ATTN_MAX_HEADS) {
        const int nh = n_heads - h < KERN_ATTN_MAX_HEADS ? n_heads - h : KERN_ATTN_MAX_HEADS;
        kern_isa()->attn_scores(out + h * out_stride, out_stride, q + h * hd, nh, kt, hd, n, scale);
    }
}

void kern_attn_values(float *out, const float *w, int64_t w_stride, int n_heads, const float *v, int64_t stride,
                      int hd, int n)
{
    for (int h = 0; h < n_heads; h += KERN_ATTN_MAX_HEADS) {
        const int nh = n_heads - h < KERN_ATTN_MAX_HEADS ? n_heads - h : KERN_ATTN_MAX_HEADS;
        kern_isa()->attn_values(out + h * hd, w + h * w_stride, w_stride, nh, v, stride, hd, n);
    }
}

void kern_softmax(float *x, int n)
{
    kern_isa()->softmax(x, n);
}
