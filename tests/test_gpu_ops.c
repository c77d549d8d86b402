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

#include "dtype.h"
#include "vk_ctx.h"
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
    if (!vk_device_available())
        cr_skip_test("no Vulkan device (install mesa-vulkan-drivers for lavapipe): GPU op tests skipped");
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
    ifd_dtype_init();
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

Test(gpu_ops, matmul_rejects_quantized)
{
    struct vk_ctx *c = ctx_open(false, 0);
    uint32_t q[16] = {0};
    struct ifd_weight w = {.dtype = IFD_DTYPE_U32, .data = q, .rows = 4, .cols = 32, .bits = 4, .group_size = 32};
    struct vk_matmul mm;
    ifd_error err = {{0}};
    cr_expect(vk_matmul_create(c, &w, "layer.0.q_proj", &mm, &err) < 0);
    cr_expect(strstr(err.msg, "layer.0.q_proj") != NULL, "message names the weight: %s", err.msg);
    vk_ctx_destroy(c);
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
    if (!vk_device_available())
        cr_skip_test("no Vulkan device (install mesa-vulkan-drivers for lavapipe)");
    struct vk_device_info *infos = NULL;
    int n = 0;
    ifd_error err = {{0}};
    cr_assert(vk_device_list(&infos, &n, &err) == 0, "%s", err.msg);
    cr_assert(n >= 1);
    cr_expect(infos[0].name[0] != '\0');
    free(infos);
    struct vk_device *d = NULL;
    cr_expect(vk_device_create(n + 3, &d, &err) == -ENODEV);
    cr_expect(strstr(err.msg, "does not exist") != NULL, "%s", err.msg);
}
