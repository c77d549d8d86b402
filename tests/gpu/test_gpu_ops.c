/* test_gpu_ops.c - every Vulkan kernel against a CPU reference, by
 * normalised mean squared error over odd shapes.
 *
 * References are plain scalar loops in double precision, so they measure the
 * shader's own f32 error. Tolerances per op: products and sums of thousands
 * of f32 terms reach NMSE ~1e-12; exp / inversesqrt of GPU drivers are allowed
 * a few ulp, still far under 1e-8. A wrong index or a missed element gives
 * NMSE ~1, so the margin separates bugs from rounding by eight decades. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/dtype.h"
#include "model/quant.h"
#include "vk_ctx.h"
#include "gpu_test.h"
#include "common/stage_contract.h"
#include "vk_device.h"

#define NMSE_MATMUL 1e-9
#define NMSE_NORM 1e-9
#define NMSE_ROPE 1e-9
#define NMSE_ATTN 1e-8
#define NMSE_SILU 1e-9

static uint64_t rng_state = 88172645463325252ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static float *frand_array(size_t n)
{
    float *a = malloc(n * sizeof(float));
    cr_assert_not_null(a);
    for (size_t i = 0; i < n; i++)
        a[i] = frand();
    return a;
}

static double nmse(const float *got, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

static struct vk_ctx *ctx_open(bool no_subgroup, uint64_t max_range)
{
    gpu_test_need_device();
    struct vk_ctx_opts o = {.device = 0, .no_subgroup = no_subgroup, .max_range = max_range};
    struct vk_ctx *c = NULL;
    ifd_error err = {{0}};
    int rc = vk_ctx_create(&o, &c, &err);
    cr_assert(rc == 0, "vk_ctx_create: %s", err.msg);
    return c;
}

static struct vk_buffer buf_from(struct vk_ctx *c, const void *data, size_t bytes)
{
    struct vk_buffer b;
    ifd_error err = {{0}};
    cr_assert(vk_pool_buffer_create(c->act, bytes, "test buffer", &b, &err) == 0, "%s", err.msg);
    if (data)
        cr_assert(vk_ctx_upload(c, &b, 0, data, bytes, &err) == 0, "%s", err.msg);
    return b;
}

static void buf_read(struct vk_ctx *c, const struct vk_buffer *b, void *out, size_t bytes)
{
    ifd_error err = {{0}};
    cr_assert(vk_ctx_download(c, b, 0, out, bytes, &err) == 0, "%s", err.msg);
}

static VkDescriptorSet set_of(struct vk_ctx *c, const struct vk_range b[VK_MAX_BINDINGS])
{
    VkDescriptorSet s;
    ifd_error err = {{0}};
    cr_assert(vk_pipelines_set_create(&c->pl, b, c->dummy.buf, &s, &err) == 0, "%s", err.msg);
    return s;
}

static void run_begin(struct vk_ctx *c)
{
    ifd_error err = {{0}};
    cr_assert(vk_ctx_begin(c, &err) == 0, "%s", err.msg);
}

static void run_end(struct vk_ctx *c)
{
    ifd_error err = {{0}};
    cr_assert(vk_ctx_submit(c, &err) == 0, "%s", err.msg);
}

/* ---- matmul ---- */

/* One product y = W x (+ bias) (+ y0) with W stored as `dtype`, checked
 * against a double-precision loop over the widened stored values. */
static void check_matmul(struct vk_ctx *c, enum ifd_dtype dtype, int rows, int cols, int n_tokens,
                         bool bias, bool accumulate)
{
    size_t n = (size_t)rows * cols;
    float *wf = frand_array(n);
    void *wdata = wf;
    uint16_t *w16 = NULL;
    if (dtype != IFD_DTYPE_F32) {
        w16 = malloc(n * 2);
        for (size_t i = 0; i < n; i++) {
            w16[i] = dtype == IFD_DTYPE_F16 ? ifd_f32_to_f16(wf[i]) : ifd_f32_to_bf16(wf[i]);
            wf[i] = dtype == IFD_DTYPE_F16 ? ifd_f16_to_f32(w16[i]) : ifd_bf16_to_f32(w16[i]);
        }
        wdata = w16;
    }
    float *x = frand_array((size_t)n_tokens * cols);
    float *b = frand_array((size_t)rows);
    float *y0 = frand_array((size_t)n_tokens * rows);
    double *ref = malloc((size_t)n_tokens * rows * sizeof(double));
    for (int t = 0; t < n_tokens; t++)
        for (int r = 0; r < rows; r++) {
            double s = 0;
            for (int k = 0; k < cols; k++)
                s += (double)wf[(size_t)r * cols + k] * x[(size_t)t * cols + k];
            if (bias)
                s += b[r];
            if (accumulate)
                s += y0[(size_t)t * rows + r];
            ref[(size_t)t * rows + r] = s;
        }

    struct ifd_weight w = {.dtype = dtype, .data = wdata, .rows = rows, .cols = cols};
    struct vk_matmul mm;
    ifd_error err = {{0}};
    cr_assert(vk_matmul_create(c, &w, "test weight", &mm, &err) == 0, "%s", err.msg);
    struct vk_buffer xb = buf_from(c, x, (size_t)n_tokens * cols * 4);
    struct vk_buffer yb = buf_from(c, y0, (size_t)n_tokens * rows * 4);
    struct vk_buffer bb = buf_from(c, b, (size_t)rows * 4);
    struct vk_range none = {0};
    cr_assert(vk_matmul_bind(c, &mm, vk_range_of(&xb), vk_range_of(&yb), bias ? vk_range_of(&bb) : none, &err) == 0,
              "%s", err.msg);
    run_begin(c);
    vk_matmul_record(c, &mm, (uint32_t)n_tokens, (uint32_t)cols, (uint32_t)rows,
                     (bias ? VK_MM_BIAS : 0) | (accumulate ? VK_MM_ACCUMULATE : 0));
    run_end(c);
    float *y = malloc((size_t)n_tokens * rows * 4);
    buf_read(c, &yb, y, (size_t)n_tokens * rows * 4);
    double e = nmse(y, ref, (size_t)n_tokens * rows);
    cr_expect(e < NMSE_MATMUL, "matmul %s [%d x %d] x %d tokens (bias %d, acc %d, %d chunks): nmse %g",
              ifd_dtype_name(dtype), rows, cols, n_tokens, bias, accumulate, mm.n_chunks, e);
    vk_matmul_finish(&mm);
    free(wf);
    free(w16);
    free(x);
    free(b);
    free(y0);
    free(ref);
    free(y);
}

static const int mm_shapes[][3] = { /* rows, cols, tokens */
    {13, 67, 1}, {67, 13, 5}, {4097, 67, 1}, {67, 4097, 3}, {13, 13, 17}, {64, 896, 9}, {1, 1, 1},
};

static void matmul_all_shapes(bool no_subgroup)
{
    struct vk_ctx *c = ctx_open(no_subgroup, 0);
    enum ifd_dtype dts[] = {IFD_DTYPE_F32, IFD_DTYPE_F16, IFD_DTYPE_BF16};
    for (size_t d = 0; d < 3; d++)
        for (size_t s = 0; s < sizeof(mm_shapes) / sizeof(mm_shapes[0]); s++)
            check_matmul(c, dts[d], mm_shapes[s][0], mm_shapes[s][1], mm_shapes[s][2], s % 2 == 1, s % 3 == 0);
    vk_ctx_destroy(c);
}

Test(gpu_ops, matmul_dtypes_odd_shapes)
{
    matmul_all_shapes(false);
}

Test(gpu_ops, matmul_portable_path)
{
    matmul_all_shapes(true);
}

/* A storage range of 1 KiB forces every weight into many row chunks, as a
 * 272 MB head is on a 128 MiB-range driver. */
Test(gpu_ops, matmul_split_weight)
{
    struct vk_ctx *c = ctx_open(false, 1024);
    check_matmul(c, IFD_DTYPE_BF16, 67, 13, 3, true, false); /* 26-byte rows: 39 per chunk */
    check_matmul(c, IFD_DTYPE_F16, 131, 67, 2, false, true);
    check_matmul(c, IFD_DTYPE_F32, 50, 200, 9, true, true);
    vk_ctx_destroy(c);
}

Test(gpu_ops, matmul_rejects_3bit)
{
    struct vk_ctx *c = ctx_open(false, 0);
    uint32_t q[16] = {0};
    uint16_t sb[4] = {0};
    struct ifd_weight w = {.dtype = IFD_DTYPE_U32, .data = q, .rows = 4, .cols = 32, .bits = 3, .group_size = 32,
                           .qparam_dtype = IFD_DTYPE_F16, .scales = sb, .biases = sb};
    struct vk_matmul mm;
    ifd_error err = {{0}};
    cr_expect(vk_matmul_create(c, &w, "layer.0.q_proj", &mm, &err) < 0);
    cr_expect(strstr(err.msg, "layer.0.q_proj") != NULL, "message names the weight: %s", err.msg);
    vk_ctx_destroy(c);
}

/* A weight in the CPU stage's panels (quantized on load for the cpu
 * backend) is refused by name, not read as rows. */
Test(gpu_ops, matmul_rejects_cpu_panels)
{
    struct vk_ctx *c = ctx_open(false, 0);
    uint32_t q[4 * 64 * 4 / 32] = {0}; /* 4 rows of 64 4-bit codes */
    uint16_t sb[4] = {0};
    struct ifd_weight rows = {.dtype = IFD_DTYPE_U32, .data = q, .rows = 4, .cols = 64, .bits = 4, .group_size = 64,
                              .qparam_dtype = IFD_DTYPE_F16, .scales = sb, .biases = sb},
                      panels;
    void *owned = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(quant_weight_to_panels(&rows, &panels, &owned, &err), 0, "%s", err.msg);
    struct vk_matmul mm;
    cr_expect(vk_matmul_create(c, &panels, "layer.0.q_proj", &mm, &err) < 0);
    cr_expect(strstr(err.msg, "layer.0.q_proj") && strstr(err.msg, "panels"), "message names the weight and why: %s",
              err.msg);
    free(owned);
    vk_ctx_destroy(c);
}

/* MLX-quantized weights against the core's CPU kernel (quant_matmul_rows)
 * on the same packed words; both dequantize exactly, so only summation order
 * differs. */
static void check_matmul_quant(struct vk_ctx *c, enum ifd_dtype src_dtype, int bits, int gs, int rows, int cols,
                               int n_tokens)
{
    size_t n = (size_t)rows * cols;
    float *wf = frand_array(n);
    uint16_t *w16 = NULL;
    struct ifd_weight src = {.dtype = IFD_DTYPE_F32, .data = wf, .rows = rows, .cols = cols};
    if (src_dtype == IFD_DTYPE_BF16) {
        w16 = malloc(n * 2);
        for (size_t i = 0; i < n; i++)
            w16[i] = ifd_f32_to_bf16(wf[i]);
        src.dtype = IFD_DTYPE_BF16;
        src.data = w16;
    }
    struct ifd_weight qw;
    void *owned = NULL;
    ifd_error err = {{0}};
    cr_assert(quant_weight_quantize(&src, bits, gs, &qw, &owned, &err) == 0, "%s", err.msg);
    float *x = frand_array((size_t)n_tokens * cols);
    float *yc = malloc((size_t)n_tokens * rows * sizeof(float));
    quant_matmul_rows(&qw, x, n_tokens, yc, 0, rows);
    double *ref = malloc((size_t)n_tokens * rows * sizeof(double));
    for (size_t i = 0; i < (size_t)n_tokens * rows; i++)
        ref[i] = yc[i];

    struct vk_matmul mm;
    cr_assert(vk_matmul_create(c, &qw, "quantized weight", &mm, &err) == 0, "%s", err.msg);
    struct vk_buffer xb = buf_from(c, x, (size_t)n_tokens * cols * 4);
    struct vk_buffer yb = buf_from(c, NULL, (size_t)n_tokens * rows * 4);
    struct vk_range none = {0};
    cr_assert(vk_matmul_bind(c, &mm, vk_range_of(&xb), vk_range_of(&yb), none, &err) == 0, "%s", err.msg);
    run_begin(c);
    vk_matmul_record(c, &mm, (uint32_t)n_tokens, (uint32_t)cols, (uint32_t)rows, 0);
    run_end(c);
    float *y = malloc((size_t)n_tokens * rows * 4);
    buf_read(c, &yb, y, (size_t)n_tokens * rows * 4);
    double e = nmse(y, ref, (size_t)n_tokens * rows);
    cr_expect(e < NMSE_MATMUL, "matmul q%d group %d (scales %s) [%d x %d] x %d tokens, %d chunks: nmse %g", bits, gs,
              ifd_dtype_name(qw.qparam_dtype), rows, cols, n_tokens, mm.n_chunks, e);
    vk_matmul_finish(&mm);
    free(owned);
    free(wf);
    free(w16);
    free(x);
    free(yc);
    free(ref);
    free(y);
}

static void matmul_quant_all(bool no_subgroup, uint64_t max_range)
{
    struct vk_ctx *c = ctx_open(no_subgroup, max_range);
    static const int shapes[][4] = { /* group, rows, cols, tokens */
        {32, 13, 96, 1}, {64, 67, 128, 5}, {64, 4097, 64, 1}, {128, 13, 4096, 3}, {64, 64, 896, 9},
    };
    for (int bits = 4; bits <= 8; bits += 4)
        for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
            check_matmul_quant(c, i % 2 ? IFD_DTYPE_BF16 : IFD_DTYPE_F32, bits, shapes[i][0], shapes[i][1],
                               shapes[i][2], shapes[i][3]);
    vk_ctx_destroy(c);
}

Test(gpu_ops, matmul_mlx_q4_q8)
{
    matmul_quant_all(false, 0);
}

Test(gpu_ops, matmul_mlx_q4_q8_portable_split)
{
    matmul_quant_all(true, 8192);
}

/* ---- rmsnorm ---- */

static void check_rmsnorm(struct vk_ctx *c, int n_rows, int n_cols, bool in_place)
{
    float eps = 1e-6f;
    float *x = frand_array((size_t)n_rows * n_cols);
    float *w = frand_array((size_t)n_cols);
    double *ref = malloc((size_t)n_rows * n_cols * sizeof(double));
    for (int r = 0; r < n_rows; r++) {
        double ss = 0;
        for (int k = 0; k < n_cols; k++)
            ss += (double)x[(size_t)r * n_cols + k] * x[(size_t)r * n_cols + k];
        double scale = 1.0 / sqrt(ss / n_cols + eps);
        for (int k = 0; k < n_cols; k++)
            ref[(size_t)r * n_cols + k] = x[(size_t)r * n_cols + k] * scale * w[k];
    }
    size_t bytes = (size_t)n_rows * n_cols * 4;
    struct vk_buffer xb = buf_from(c, x, bytes);
    struct vk_buffer ob = in_place ? xb : buf_from(c, NULL, bytes);
    struct vk_buffer wb = buf_from(c, w, (size_t)n_cols * 4);
    struct vk_range b[VK_MAX_BINDINGS] = {vk_range_of(&xb), vk_range_of(&ob), vk_range_of(&wb)};
    VkDescriptorSet s = set_of(c, b);
    struct vk_push_rmsnorm pc = {.n_cols = (uint32_t)n_cols, .eps = eps};
    run_begin(c);
    vk_cmd_dispatch(c->cb, &c->pl, VK_KERN_RMSNORM, s, &pc, sizeof(pc), (uint32_t)n_rows, 1);
    run_end(c);
    float *o = malloc(bytes);
    buf_read(c, &ob, o, bytes);
    double e = nmse(o, ref, (size_t)n_rows * n_cols);
    cr_expect(e < NMSE_NORM, "rmsnorm %d x %d (in place %d): nmse %g", n_rows, n_cols, in_place, e);
    free(x);
    free(w);
    free(ref);
    free(o);
}

Test(gpu_ops, rmsnorm_odd_shapes)
{
    for (int sg = 0; sg < 2; sg++) {
        struct vk_ctx *c = ctx_open(sg == 1, 0);
        check_rmsnorm(c, 13, 67, false);
        check_rmsnorm(c, 3, 4097, false);
        check_rmsnorm(c, 67, 13, true); /* q/k norm: per-head rows in place */
        check_rmsnorm(c, 1, 896, false);
        vk_ctx_destroy(c);
    }
}

/* ---- rope ---- */

static void check_rope(struct vk_ctx *c, int n_tokens, int n_heads, int head_dim, int n_ctx)
{
    int half = head_dim / 2;
    float *table = malloc((size_t)n_ctx * half * 2 * sizeof(float));
    for (int p = 0; p < n_ctx; p++)
        for (int i = 0; i < half; i++) {
            double ang = p * pow(10000.0, -2.0 * i / head_dim);
            table[((size_t)p * half + i) * 2] = (float)cos(ang);
            table[((size_t)p * half + i) * 2 + 1] = (float)sin(ang);
        }
    int32_t *pos = malloc((size_t)n_tokens * sizeof(int32_t));
    for (int t = 0; t < n_tokens; t++)
        pos[t] = (int32_t)((t * 7919u + 3) % (unsigned)n_ctx);
    size_t n = (size_t)n_tokens * n_heads * head_dim;
    float *v = frand_array(n);
    double *ref = malloc(n * sizeof(double));
    for (int t = 0; t < n_tokens; t++)
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < half; i++) {
                size_t base = ((size_t)t * n_heads + h) * head_dim;
                double cs = table[((size_t)pos[t] * half + i) * 2], sn = table[((size_t)pos[t] * half + i) * 2 + 1];
                double a = v[base + i], bb = v[base + i + half];
                ref[base + i] = a * cs - bb * sn;
                ref[base + i + half] = bb * cs + a * sn;
            }
    struct vk_buffer vb = buf_from(c, v, n * 4);
    struct vk_buffer tb = buf_from(c, table, (size_t)n_ctx * half * 8);
    struct vk_buffer pb = buf_from(c, pos, (size_t)n_tokens * 4);
    struct vk_range b[VK_MAX_BINDINGS] = {vk_range_of(&vb), vk_range_of(&tb), vk_range_of(&pb)};
    VkDescriptorSet s = set_of(c, b);
    struct vk_push_rope pc = {(uint32_t)n_tokens, (uint32_t)n_heads, (uint32_t)head_dim};
    uint32_t gx, gy;
    vk_grid_1d((uint64_t)n_tokens * n_heads * half, c->dev->max_groups[0], &gx, &gy);
    run_begin(c);
    vk_cmd_dispatch(c->cb, &c->pl, VK_KERN_ROPE, s, &pc, sizeof(pc), gx, gy);
    run_end(c);
    float *o = malloc(n * 4);
    buf_read(c, &vb, o, n * 4);
    double e = nmse(o, ref, n);
    cr_expect(e < NMSE_ROPE, "rope %d tokens x %d heads x %d: nmse %g", n_tokens, n_heads, head_dim, e);
    free(table);
    free(pos);
    free(v);
    free(ref);
    free(o);
}

Test(gpu_ops, rope_odd_shapes)
{
    struct vk_ctx *c = ctx_open(false, 0);
    check_rope(c, 13, 3, 64, 67);
    check_rope(c, 1, 14, 64, 4097);
    check_rope(c, 67, 5, 18, 13);
    vk_ctx_destroy(c);
}

/* ---- kv_store + attention ---- */

/* Fills a cache [n_seq, n_ctx, kv_dim] with random keys/values, stores the
 * batch's new k/v at their (seq, pos), and runs attention for the batch. The
 * reference does the same stores on the host, then a causal softmax over
 * positions 0..pos of each token's sequence. */
static void check_attention(struct vk_ctx *c, int n_heads, int n_kv, int head_dim, int n_ctx,
                            int n_tokens, const int32_t *seq, const int32_t *pos)
{
    int n_seq = 0;
    for (int t = 0; t < n_tokens; t++)
        if (seq[t] + 1 > n_seq)
            n_seq = seq[t] + 1;
    int kv_dim = n_kv * head_dim, q_dim = n_heads * head_dim;
    size_t cache_n = (size_t)n_seq * n_ctx * kv_dim;
    float *kc = frand_array(cache_n), *vc = frand_array(cache_n);
    float *k = frand_array((size_t)n_tokens * kv_dim), *v = frand_array((size_t)n_tokens * kv_dim);
    float *q = frand_array((size_t)n_tokens * q_dim);
    struct vk_buffer kcb = buf_from(c, kc, cache_n * 4), vcb = buf_from(c, vc, cache_n * 4);
    for (int t = 0; t < n_tokens; t++) {
        memcpy(&kc[((size_t)seq[t] * n_ctx + pos[t]) * kv_dim], &k[(size_t)t * kv_dim], (size_t)kv_dim * 4);
        memcpy(&vc[((size_t)seq[t] * n_ctx + pos[t]) * kv_dim], &v[(size_t)t * kv_dim], (size_t)kv_dim * 4);
    }
    double *ref = malloc((size_t)n_tokens * q_dim * sizeof(double));
    double *sc = malloc((size_t)n_ctx * sizeof(double));
    double scale = 1.0 / sqrt((double)head_dim);
    for (int t = 0; t < n_tokens; t++)
        for (int h = 0; h < n_heads; h++) {
            int kvh = h / (n_heads / n_kv);
            const float *qh = &q[(size_t)t * q_dim + (size_t)h * head_dim];
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= pos[t]; j++) {
                const float *kj = &kc[((size_t)seq[t] * n_ctx + j) * kv_dim + (size_t)kvh * head_dim];
                double s = 0;
                for (int d = 0; d < head_dim; d++)
                    s += (double)qh[d] * kj[d];
                sc[j] = s * scale;
                if (sc[j] > mx)
                    mx = sc[j];
            }
            for (int j = 0; j <= pos[t]; j++)
                sum += (sc[j] = exp(sc[j] - mx));
            for (int d = 0; d < head_dim; d++) {
                double o = 0;
                for (int j = 0; j <= pos[t]; j++)
                    o += sc[j] * vc[((size_t)seq[t] * n_ctx + j) * kv_dim + (size_t)kvh * head_dim + d];
                ref[(size_t)t * q_dim + (size_t)h * head_dim + d] = o / sum;
            }
        }

    struct vk_buffer kb = buf_from(c, k, (size_t)n_tokens * kv_dim * 4), vb = buf_from(c, v, (size_t)n_tokens * kv_dim * 4);
    struct vk_buffer qb = buf_from(c, q, (size_t)n_tokens * q_dim * 4);
    struct vk_buffer ob = buf_from(c, NULL, (size_t)n_tokens * q_dim * 4);
    struct vk_buffer pb = buf_from(c, pos, (size_t)n_tokens * 4), sb = buf_from(c, seq, (size_t)n_tokens * 4);
    struct vk_range bs[VK_MAX_BINDINGS] = {vk_range_of(&kb), vk_range_of(&vb), vk_range_of(&kcb),
                                           vk_range_of(&vcb), vk_range_of(&pb), vk_range_of(&sb)};
    struct vk_range ba[VK_MAX_BINDINGS] = {vk_range_of(&qb), vk_range_of(&kcb), vk_range_of(&vcb),
                                           vk_range_of(&ob), vk_range_of(&pb), vk_range_of(&sb)};
    VkDescriptorSet s_store = set_of(c, bs), s_att = set_of(c, ba);
    struct vk_push_kv_store pst = {(uint32_t)n_tokens, (uint32_t)kv_dim, (uint32_t)n_ctx};
    struct vk_push_attention pat = {(uint32_t)n_heads, (uint32_t)n_kv, (uint32_t)head_dim, (uint32_t)n_ctx,
                                    (float)scale};
    uint32_t gx, gy;
    vk_grid_1d((uint64_t)n_tokens * kv_dim, c->dev->max_groups[0], &gx, &gy);
    run_begin(c);
    vk_cmd_dispatch(c->cb, &c->pl, VK_KERN_KV_STORE, s_store, &pst, sizeof(pst), gx, gy);
    vk_cmd_barrier(c->cb);
    vk_cmd_dispatch(c->cb, &c->pl, VK_KERN_ATTENTION, s_att, &pat, sizeof(pat), (uint32_t)n_heads, (uint32_t)n_tokens);
    run_end(c);
    float *o = malloc((size_t)n_tokens * q_dim * 4);
    buf_read(c, &ob, o, (size_t)n_tokens * q_dim * 4);
    double e = nmse(o, ref, (size_t)n_tokens * q_dim);
    cr_expect(e < NMSE_ATTN, "attention heads %d/%d dim %d ctx %d, %d tokens: nmse %g", n_heads, n_kv, head_dim,
              n_ctx, n_tokens, e);
    /* the cache holds the stored k */
    float *kc_dev = malloc(cache_n * 4);
    buf_read(c, &kcb, kc_dev, cache_n * 4);
    cr_expect(memcmp(kc_dev, kc, cache_n * 4) == 0, "kv_store wrote the keys where the host did");
    free(kc_dev);
    free(kc);
    free(vc);
    free(k);
    free(v);
    free(q);
    free(ref);
    free(sc);
    free(o);
}

Test(gpu_ops, attention_gqa_causal)
{
    struct vk_ctx *c = ctx_open(false, 0);
    /* one decode token per sequence, deep into the context (several key tiles) */
    int32_t seq1[] = {0, 1, 2};
    int32_t pos1[] = {66, 0, 13};
    check_attention(c, 4, 2, 16, 67, 3, seq1, pos1);
    /* a prefill chunk of 13 tokens of one sequence: causal inside the batch */
    int32_t seq2[13], pos2[13];
    for (int i = 0; i < 13; i++) {
        seq2[i] = 1;
        pos2[i] = 120 + i;
    }
    check_attention(c, 14, 2, 64, 200, 13, seq2, pos2);
    /* head_dim above the work-group width, no GQA */
    int32_t seq3[] = {0, 0}, pos3[] = {3, 4};
    check_attention(c, 3, 3, 160, 5, 2, seq3, pos3);
    vk_ctx_destroy(c);
}

/* ---- silu_mul ---- */

Test(gpu_ops, silu_mul_odd_sizes)
{
    struct vk_ctx *c = ctx_open(false, 0);
    int sizes[] = {13, 67, 4097, 1};
    for (size_t s = 0; s < 4; s++) {
        int n = sizes[s];
        float *g = frand_array((size_t)n), *u = frand_array((size_t)n);
        for (int i = 0; i < n; i++)
            g[i] *= 8.0f; /* both tails of the sigmoid */
        double *ref = malloc((size_t)n * sizeof(double));
        for (int i = 0; i < n; i++)
            ref[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        struct vk_buffer gb = buf_from(c, g, (size_t)n * 4), ub = buf_from(c, u, (size_t)n * 4);
        struct vk_range b[VK_MAX_BINDINGS] = {vk_range_of(&gb), vk_range_of(&ub)};
        VkDescriptorSet set = set_of(c, b);
        struct vk_push_silu_mul pc = {(uint32_t)n};
        uint32_t gx, gy;
        vk_grid_1d((uint64_t)n, c->dev->max_groups[0], &gx, &gy);
        run_begin(c);
        vk_cmd_dispatch(c->cb, &c->pl, VK_KERN_SILU_MUL, set, &pc, sizeof(pc), gx, gy);
        run_end(c);
        float *o = malloc((size_t)n * 4);
        buf_read(c, &gb, o, (size_t)n * 4);
        double e = nmse(o, ref, (size_t)n);
        cr_expect(e < NMSE_SILU, "silu_mul n %d: nmse %g", n, e);
        free(g);
        free(u);
        free(ref);
        free(o);
    }
    vk_ctx_destroy(c);
}

Test(gpu_ops, device_list_and_bad_index)
{
    gpu_test_need_device();
    struct vk_device_info *infos = NULL;
    int n = 0;
    ifd_error err = {{0}};
    cr_assert(vk_device_list(&infos, &n, &err) == 0, "%s", err.msg);
    cr_assert(n >= 1);
    cr_expect(infos[0].name[0] != '\0');
    /* devices come in selection order; hardware_available follows device 0 */
    static const char *const order[] = {"discrete", "integrated", "virtual", "cpu", "other"};
    int rank_prev = 0;
    for (int i = 0; i < n; i++) {
        int rank = 0;
        while (rank < 5 && strcmp(order[rank], infos[i].type_name) != 0)
            rank++;
        cr_expect(rank < 5 && rank >= rank_prev, "device %d (%s) out of order", i, infos[i].type_name);
        rank_prev = rank;
    }
    cr_expect_eq(vk_device_hardware_available(), strcmp(infos[0].type_name, "cpu") != 0 &&
                                                     strcmp(infos[0].type_name, "other") != 0);
    free(infos);
    struct vk_device *d = NULL;
    cr_expect(vk_device_create(n + 3, &d, &err) == -ENODEV);
    cr_expect(strstr(err.msg, "does not exist") != NULL, "%s", err.msg);
}

/* ---- the whole stage on a synthetic model ---- */

#include "vk_stage.h"

/* A random model with every layer bound, weights as `dtype`, built in memory
 * (no checkpoint): lets the stage be checked against a double-precision
 * reference forward over shapes no shipped model has. */
struct synth {
    struct model m;
    struct layer_weights lw[2];
    void *bufs[64];
    int n_bufs;
};

static struct ifd_weight synth_weight(struct synth *s, enum ifd_dtype dtype, int64_t rows, int64_t cols, float scale)
{
    size_t n = (size_t)(rows * cols);
    void *p = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        float v = frand() * scale;
        if (dtype == IFD_DTYPE_F32)
            ((float *)p)[i] = v;
        else if (dtype == IFD_DTYPE_F16)
            ((uint16_t *)p)[i] = ifd_f32_to_f16(v);
        else
            ((uint16_t *)p)[i] = ifd_f32_to_bf16(v);
    }
    s->bufs[s->n_bufs++] = p;
    struct ifd_weight w = {.dtype = dtype, .data = p, .rows = rows, .cols = cols};
    return w;
}

static double wget(const struct ifd_weight *w, int64_t i)
{
    if (w->dtype == IFD_DTYPE_F32)
        return ((const float *)w->data)[i];
    if (w->dtype == IFD_DTYPE_F16)
        return ifd_f16_to_f32(((const uint16_t *)w->data)[i]);
    return ifd_bf16_to_f32(((const uint16_t *)w->data)[i]);
}

static void synth_build(struct synth *s, enum model_arch arch, enum ifd_dtype dtype)
{
    memset(s, 0, sizeof(*s));
    struct model_config *c = &s->m.cfg;
    c->arch = arch;
    c->hidden_size = 72;
    c->intermediate_size = 97;
    c->n_layers = 2;
    c->n_heads = 4;
    c->n_kv_heads = 2;
    c->head_dim = arch == MODEL_ARCH_QWEN3 ? 26 : 18;
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = arch == MODEL_ARCH_LLAMA ? 500000.0f : 10000.0f;
    if (arch == MODEL_ARCH_LLAMA) {
        c->rope_scaling = MODEL_ROPE_LLAMA3;
        c->rope_factor = 32;
        c->rope_low_freq_factor = 1;
        c->rope_high_freq_factor = 4;
        c->rope_original_max_pos = 64;
    }
    c->attention_bias = arch == MODEL_ARCH_QWEN2;
    c->qk_norm = arch == MODEL_ARCH_QWEN3;
    int h = c->hidden_size, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim, f = c->intermediate_size;
    for (int l = 0; l < 2; l++) {
        struct layer_weights *w = &s->lw[l];
        w->attn_norm = synth_weight(s, dtype, 1, h, 1.0f);
        w->mlp_norm = synth_weight(s, dtype, 1, h, 1.0f);
        w->wq = synth_weight(s, dtype, qd, h, 0.3f);
        w->wk = synth_weight(s, dtype, kvd, h, 0.3f);
        w->wv = synth_weight(s, dtype, kvd, h, 0.3f);
        w->wo = synth_weight(s, dtype, h, qd, 0.3f);
        w->w_gate = synth_weight(s, dtype, f, h, 0.3f);
        w->w_up = synth_weight(s, dtype, f, h, 0.3f);
        w->w_down = synth_weight(s, dtype, h, f, 0.3f);
        if (c->attention_bias) {
            w->bq = synth_weight(s, dtype, 1, qd, 0.5f);
            w->bk = synth_weight(s, dtype, 1, kvd, 0.5f);
            w->bv = synth_weight(s, dtype, 1, kvd, 0.5f);
        }
        if (c->qk_norm) {
            w->q_norm = synth_weight(s, dtype, 1, c->head_dim, 1.0f);
            w->k_norm = synth_weight(s, dtype, 1, c->head_dim, 1.0f);
        }
    }
    s->m.layers = s->lw;
    s->m.layer_first = 0;
    s->m.layer_last = 2;
}

static void synth_free(struct synth *s)
{
    for (int i = 0; i < s->n_bufs; i++)
        free(s->bufs[i]);
}

/* Reference: the plain transformer layer stack in double, with its own KV
 * cache [layer][seq][pos][kv_dim]. */
struct ref_state {
    int n_ctx;
    double *kc, *vc;
};

static void ref_matvec(const struct ifd_weight *w, const double *x, double *y)
{
    for (int64_t r = 0; r < w->rows; r++) {
        double s = 0;
        for (int64_t c = 0; c < w->cols; c++)
            s += wget(w, r * w->cols + c) * x[c];
        y[r] = s;
    }
}

static void ref_rmsnorm(const double *x, const struct ifd_weight *w, int n, double eps, double *out)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    double sc = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++)
        out[i] = x[i] * sc * wget(w, i);
}

static void ref_rope(const struct model_config *c, double *v, int n_heads, int pos)
{
    int hd = c->head_dim, half = hd / 2;
    for (int i = 0; i < half; i++) {
        double inv = pow(c->rope_theta, -2.0 * i / hd);
        if (c->rope_scaling == MODEL_ROPE_LLAMA3) {
            double wl = 2 * M_PI / inv, old = c->rope_original_max_pos;
            if (wl > old / c->rope_low_freq_factor)
                inv /= c->rope_factor;
            else if (wl >= old / c->rope_high_freq_factor) {
                double sm = (old / wl - c->rope_low_freq_factor) / (c->rope_high_freq_factor - c->rope_low_freq_factor);
                inv = (1 - sm) * inv / c->rope_factor + sm * inv;
            }
        }
        double cs = cos(pos * inv), sn = sin(pos * inv);
        for (int h = 0; h < n_heads; h++) {
            double a = v[h * hd + i], b = v[h * hd + i + half];
            v[h * hd + i] = a * cs - b * sn;
            v[h * hd + i + half] = b * cs + a * sn;
        }
    }
}

static void ref_token(const struct model *m, struct ref_state *st, int seq, int pos, double *x)
{
    const struct model_config *c = &m->cfg;
    int h = c->hidden_size, hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd, f = c->intermediate_size;
    double xn[256], q[256], k[256], v[256], att[256], tmp[256], g[256], u[256], sc[512];
    for (int l = 0; l < c->n_layers; l++) {
        const struct layer_weights *w = &m->layers[l];
        ref_rmsnorm(x, &w->attn_norm, h, c->rms_norm_eps, xn);
        ref_matvec(&w->wq, xn, q);
        ref_matvec(&w->wk, xn, k);
        ref_matvec(&w->wv, xn, v);
        if (c->attention_bias) {
            for (int i = 0; i < qd; i++)
                q[i] += wget(&w->bq, i);
            for (int i = 0; i < kvd; i++) {
                k[i] += wget(&w->bk, i);
                v[i] += wget(&w->bv, i);
            }
        }
        if (c->qk_norm) {
            for (int hh = 0; hh < c->n_heads; hh++)
                ref_rmsnorm(&q[hh * hd], &w->q_norm, hd, c->rms_norm_eps, &q[hh * hd]);
            for (int hh = 0; hh < c->n_kv_heads; hh++)
                ref_rmsnorm(&k[hh * hd], &w->k_norm, hd, c->rms_norm_eps, &k[hh * hd]);
        }
        ref_rope(c, q, c->n_heads, pos);
        ref_rope(c, k, c->n_kv_heads, pos);
        double *kc = &st->kc[(((size_t)l * 4 + seq) * st->n_ctx) * kvd];
        double *vc = &st->vc[(((size_t)l * 4 + seq) * st->n_ctx) * kvd];
        memcpy(&kc[(size_t)pos * kvd], k, kvd * sizeof(double));
        memcpy(&vc[(size_t)pos * kvd], v, kvd * sizeof(double));
        for (int hh = 0; hh < c->n_heads; hh++) {
            int kh = hh / (c->n_heads / c->n_kv_heads);
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= pos; j++) {
                double s = 0;
                for (int d = 0; d < hd; d++)
                    s += q[hh * hd + d] * kc[(size_t)j * kvd + kh * hd + d];
                sc[j] = s / sqrt((double)hd);
                mx = sc[j] > mx ? sc[j] : mx;
            }
            for (int j = 0; j <= pos; j++)
                sum += (sc[j] = exp(sc[j] - mx));
            for (int d = 0; d < hd; d++) {
                double o = 0;
                for (int j = 0; j <= pos; j++)
                    o += sc[j] * vc[(size_t)j * kvd + kh * hd + d];
                att[hh * hd + d] = o / sum;
            }
        }
        ref_matvec(&w->wo, att, tmp);
        for (int i = 0; i < h; i++)
            x[i] += tmp[i];
        ref_rmsnorm(x, &w->mlp_norm, h, c->rms_norm_eps, xn);
        ref_matvec(&w->w_gate, xn, g);
        ref_matvec(&w->w_up, xn, u);
        for (int i = 0; i < f; i++)
            g[i] = g[i] / (1 + exp(-g[i])) * u[i];
        ref_matvec(&w->w_down, g, tmp);
        for (int i = 0; i < h; i++)
            x[i] += tmp[i];
    }
}

/* Prefill of two sequences in one batch (more tokens than a submit takes),
 * decode steps of both, a rewind of one sequence, then a copy of a prefix
 * of one into the empty slot continued there, each step compared with the
 * reference. */
static void check_stage(enum model_arch arch, enum ifd_dtype dtype, bool no_subgroup)
{
    gpu_test_need_device();
    struct synth s;
    synth_build(&s, arch, dtype);
    int n_ctx = 100, H = s.m.cfg.hidden_size;
    struct vk_stage_opts o = {.device = 0, .n_batch_max = 4, .no_subgroup = no_subgroup};
    struct stage *st = NULL;
    ifd_error err = {{0}};
    cr_assert(vk_stage_create(&s.m, 0, 2, 4, n_ctx, &o, &st, &err) == 0, "%s", err.msg);
    struct ref_state rs = {.n_ctx = n_ctx};
    size_t kvd = (size_t)s.m.cfg.n_kv_heads * s.m.cfg.head_dim;
    rs.kc = calloc(2 * 4 * (size_t)n_ctx * kvd, sizeof(double));
    rs.vc = calloc(2 * 4 * (size_t)n_ctx * kvd, sizeof(double));

    /* step list: {n_tokens, then (seq, pos) pairs} */
    struct { int n; int sp[16][2]; } steps[] = {
        {11, {{0, 0}, {0, 1}, {0, 2}, {0, 3}, {0, 4}, {0, 5}, {0, 6}, {2, 0}, {2, 1}, {2, 2}, {2, 3}}},
        {2, {{0, 7}, {2, 4}}},
        {1, {{2, 5}}},
        {3, {{0, 8}, {3, 0}, {2, 6}}},
        {2, {{2, 3}, {2, 4}}}, /* rewind: re-evaluates positions 3, 4 of seq 2 */
        {2, {{1, 5}, {1, 6}}}, /* seq 1 continues a copy of positions 0-4 of seq 0 */
    };
    float hidden[16 * 128];
    double ref[16 * 128];
    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        int n = steps[k].n;
        int32_t seq[16], pos[16];
        for (int t = 0; t < n; t++) {
            seq[t] = steps[k].sp[t][0];
            pos[t] = steps[k].sp[t][1];
            for (int i = 0; i < H; i++)
                ref[t * H + i] = hidden[t * H + i] = frand();
        }
        if (k == 4)
            cr_assert(stage_seq_truncate(st, 2, 3, &err) == 0, "%s", err.msg);
        if (k == 5) {
            cr_assert(stage_seq_copy(st, 0, 1, 5, &err) == 0, "%s", err.msg);
            for (int l = 0; l < 2; l++) {
                size_t src = (size_t)l * 4 * n_ctx * kvd, dst = src + (size_t)n_ctx * kvd;
                memcpy(rs.kc + dst, rs.kc + src, sizeof(double) * 5 * kvd);
                memcpy(rs.vc + dst, rs.vc + src, sizeof(double) * 5 * kvd);
            }
        }
        struct stage_batch b = {.n_tokens = n, .seq_ids = seq, .positions = pos, .hidden = hidden};
        cr_assert(stage_forward(st, &b, &err) == 0, "step %zu: %s", k, err.msg);
        for (int t = 0; t < n; t++)
            ref_token(&s.m, &rs, seq[t], pos[t], &ref[t * H]);
        double e = nmse(hidden, ref, (size_t)n * H);
        cr_expect(e < 1e-8, "arch %d dtype %s step %zu (%d tokens): hidden nmse %g", arch, ifd_dtype_name(dtype), k,
                  n, e);
    }
    /* a gap in positions is refused with a message, nothing run */
    int32_t seq_bad = 3, pos_bad = 5;
    struct stage_batch bad = {.n_tokens = 1, .seq_ids = &seq_bad, .positions = &pos_bad, .hidden = hidden};
    cr_expect(stage_forward(st, &bad, &err) == -EINVAL);
    cr_expect(strstr(err.msg, "does not continue") != NULL, "%s", err.msg);
    struct stage_stats stats;
    st->ops->get_stats(st, &stats);
    cr_expect(stats.tokens == 21 && stats.device_memory_bytes > 0);
    stage_destroy(st);
    free(rs.kc);
    free(rs.vc);
    synth_free(&s);
}

Test(gpu_stage, llama_bf16_llama3_rope)
{
    check_stage(MODEL_ARCH_LLAMA, IFD_DTYPE_BF16, false);
}

Test(gpu_stage, qwen2_f16_bias)
{
    check_stage(MODEL_ARCH_QWEN2, IFD_DTYPE_F16, false);
}

Test(gpu_stage, qwen3_f32_qk_norm_portable)
{
    check_stage(MODEL_ARCH_QWEN3, IFD_DTYPE_F32, true);
}

/* Sizes the stage cannot hold and ranges it does not cover are refused with
 * a message naming what, never a crash. */
Test(gpu_stage, refuses_bad_ranges_and_sizes)
{
    gpu_test_need_device();
    struct synth s;
    synth_build(&s, MODEL_ARCH_QWEN2, IFD_DTYPE_BF16);
    struct stage *st = NULL;
    ifd_error err = {{0}};
    struct vk_stage_opts o = {.device = 0};
    cr_expect(vk_stage_create(&s.m, 1, 3, 1, 16, &o, &st, &err) == -EINVAL);
    cr_expect(strstr(err.msg, "[1, 3)") != NULL, "%s", err.msg);
    s.m.layer_first = 1; /* layer 0 not bound */
    cr_expect(vk_stage_create(&s.m, 0, 2, 1, 16, &o, &st, &err) == -EINVAL);
    cr_expect(strstr(err.msg, "not bound") != NULL, "%s", err.msg);
    s.m.layer_first = 0;
    /* a KV cache over the storage-buffer range: 64 KiB here */
    o.max_range = 64 * 1024;
    cr_expect(vk_stage_create(&s.m, 0, 2, 16, 256, &o, &st, &err) == -E2BIG);
    cr_expect(strstr(err.msg, "KV cache") != NULL, "%s", err.msg);
    o.max_range = 0;
    o.device = 99;
    cr_expect(vk_stage_create(&s.m, 0, 2, 1, 16, &o, &st, &err) == -ENODEV);
    cr_expect(strstr(err.msg, "device 99") != NULL, "%s", err.msg);
    /* out-of-range tokens are refused before anything runs */
    o.device = 0;
    cr_assert(vk_stage_create(&s.m, 0, 2, 2, 16, &o, &st, &err) == 0, "%s", err.msg);
    float hidden[72] = {0};
    int32_t seq = 2, pos = 0;
    struct stage_batch b = {.n_tokens = 1, .seq_ids = &seq, .positions = &pos, .hidden = hidden};
    cr_expect(stage_forward(st, &b, &err) == -EINVAL);
    cr_expect(strstr(err.msg, "sequence 2") != NULL, "%s", err.msg);
    seq = 0;
    pos = 16;
    cr_expect(stage_forward(st, &b, &err) == -ERANGE);
    cr_expect(strstr(err.msg, "outside the context") != NULL, "%s", err.msg);
    cr_expect(stage_seq_truncate(st, 5, 0, &err) == -EINVAL);
    stage_destroy(st);
    synth_free(&s);
}

/* The Vulkan stage accepts and refuses the same batches as the fake and CPU
 * stages (tests/model/test_stage.c), with the same errno and message: empty,
 * oversized, sequence or position outside, gaps and rewinds. */
Test(gpu_stage, keeps_the_stage_contract)
{
    gpu_test_need_device();
    struct synth s;
    synth_build(&s, MODEL_ARCH_QWEN2, IFD_DTYPE_F32);
    struct vk_stage_opts o = {.device = 0, .n_batch_max = 2};
    struct stage *st = NULL;
    ifd_error err = {{0}};
    cr_assert(vk_stage_create(&s.m, 0, 2, 2, 6, &o, &st, &err) == 0, "%s", err.msg);
    cr_assert_eq(st->n_batch_max, STAGE_BATCH_MAX, "batches over a submit are split, not refused");
    stage_contract_check(st);
    stage_destroy(st);
    synth_free(&s);
}
