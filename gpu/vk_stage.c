/* vk_stage.c - the Vulkan stage (see vk_stage.h). */
#include "vk_stage.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/dtype.h"
#include "model/rope.h"
#include "vk_ctx.h"
#include "base/clock.h"

#define VK_STAGE_BATCH_DEFAULT 512

/* Device state of one layer. */
struct vk_layer {
    struct vk_buffer attn_norm, mlp_norm;   /* f32 [hidden] */
    struct vk_buffer q_norm, k_norm;        /* f32 [head_dim], Qwen3 only */
    struct vk_buffer bq, bk, bv;            /* f32 [q_dim], [kv_dim] x2, Qwen2 only */
    struct vk_buffer k_cache, v_cache;      /* f32 [n_seq_max, n_ctx, kv_dim] */
    struct vk_matmul wq, wk, wv, wo, w_gate, w_up, w_down;
    VkDescriptorSet s_attn_norm, s_mlp_norm, s_q_norm, s_k_norm, s_rope_q, s_rope_k, s_kv_store,
        s_attention, s_silu;
};

struct vk_stage {
    struct stage base;
    struct vk_ctx *c;
    int n_layers;                /* layer_last - layer_first */
    int hidden, q_dim, kv_dim, ffn, n_heads, n_kv_heads, head_dim;
    float eps;
    bool has_bias, has_qk_norm;
    int n_batch;                 /* tokens per submit */
    /* activations, device-local, [n_batch, width] */
    struct vk_buffer x;          /* [n_batch, hidden] residual stream */
    struct vk_buffer xn;         /* [n_batch, hidden] normed */
    struct vk_buffer q;          /* [n_batch, q_dim] */
    struct vk_buffer k, v;       /* [n_batch, kv_dim] */
    struct vk_buffer att;        /* [n_batch, q_dim] attention output */
    struct vk_buffer gate, up;   /* [n_batch, ffn] */
    struct vk_buffer pos, seq;   /* int32 [n_batch] */
    struct vk_buffer rope;       /* f32 [n_ctx, head_dim / 2, 2] cos, sin */
    struct vk_buffer io;         /* host: hidden [n_batch, hidden], pos [n_batch], seq [n_batch] */
    struct vk_layer *layers;     /* [n_layers] */
    struct stage_stats stats;
};

/* cos/sin of every rotary angle: out [n_ctx, head_dim / 2, 2], angle =
 * position * inv_freq[i] (rope.h); inv_freq [head_dim / 2] is scratch. */
static void rope_table(const struct model_config *cfg, int n_ctx, double *inv_freq, float *out)
{
    int half = cfg->head_dim / 2;
    rope_inv_freq(cfg, inv_freq);
    for (int i = 0; i < half; i++) {
        for (int p = 0; p < n_ctx; p++) {
            double a = (double)p * inv_freq[i];
            out[((size_t)p * half + i) * 2] = (float)cos(a);
            out[((size_t)p * half + i) * 2 + 1] = (float)sin(a);
        }
    }
}

/* A vector weight widened to f32 and uploaded. */
static int vec_upload(struct vk_ctx *c, const struct ifd_weight *w, int64_t n, const char *what,
                      struct vk_buffer *ret, ifd_error *err)
{
    if (!w->data)
        return ifd_error_set(err, -EINVAL, "vulkan: %s is not bound", what);
    if (w->rows * w->cols != n)
        return ifd_error_set(err, -EINVAL, "vulkan: %s has %lld elements, expected %lld", what,
                             (long long)(w->rows * w->cols), (long long)n);
    float *f = malloc((size_t)n * sizeof(float));
    if (!f)
        return ifd_error_set(err, -ENOMEM, "vulkan: out of memory");
    for (int64_t i = 0; i < n; i++) {
        switch (w->dtype) {
        case IFD_DTYPE_F32: f[i] = ((const float *)w->data)[i]; break;
        case IFD_DTYPE_F16: f[i] = ifd_f16_to_f32(((const uint16_t *)w->data)[i]); break;
        case IFD_DTYPE_BF16: f[i] = ifd_bf16_to_f32(((const uint16_t *)w->data)[i]); break;
        default:
            free(f);
            return ifd_error_set(err, -ENOTSUP, "vulkan: %s: dtype %s not supported", what,
                                 ifd_dtype_name(w->dtype));
        }
    }
    int rc = vk_pool_buffer_create(c->weights, (VkDeviceSize)n * 4, what, ret, err);
    if (rc == 0)
        rc = vk_ctx_upload(c, ret, 0, f, (size_t)n * 4, err);
    free(f);
    return rc;
}

static int act_buffer(struct vk_stage *s, struct vk_pool *pool, uint64_t bytes, const char *what,
                      struct vk_buffer *ret, ifd_error *err)
{
    if (bytes > s->c->max_range)
        return ifd_error_set(err, -E2BIG, "vulkan: %s needs %llu bytes, over the device's storage-buffer "
                             "range of %llu: lower n_ctx, n_seq_max or the batch size",
                             what, (unsigned long long)bytes, (unsigned long long)s->c->max_range);
    return vk_pool_buffer_create(pool, bytes, what, ret, err);
}

static int set_make(struct vk_stage *s, VkDescriptorSet *ret, ifd_error *err, const struct vk_buffer *b0,
                    const struct vk_buffer *b1, const struct vk_buffer *b2, const struct vk_buffer *b3,
                    const struct vk_buffer *b4, const struct vk_buffer *b5)
{
    const struct vk_buffer *bs[VK_MAX_BINDINGS] = {b0, b1, b2, b3, b4, b5};
    struct vk_range r[VK_MAX_BINDINGS] = {{0}};
    for (int i = 0; i < VK_MAX_BINDINGS; i++)
        if (bs[i])
            r[i] = vk_range_of(bs[i]);
    return vk_pipelines_set_create(&s->c->pl, r, s->c->dummy.buf, ret, err);
}

static int layer_build(struct vk_stage *s, const struct model *m, int li, ifd_error *err)
{
    const struct layer_weights *lw = &m->layers[li];
    struct vk_layer *l = &s->layers[li - s->base.layer_first];
    struct vk_ctx *c = s->c;
    char what[96];
    int rc;
#define NAME(fmt) (snprintf(what, sizeof(what), "layer %d " fmt, li), what)
    if ((rc = vec_upload(c, &lw->attn_norm, s->hidden, NAME("input_layernorm"), &l->attn_norm, err)) < 0 ||
        (rc = vec_upload(c, &lw->mlp_norm, s->hidden, NAME("post_attention_layernorm"), &l->mlp_norm, err)) < 0 ||
        (rc = vk_matmul_create(c, &lw->wq, NAME("q_proj"), &l->wq, err)) < 0 ||
        (rc = vk_matmul_create(c, &lw->wk, NAME("k_proj"), &l->wk, err)) < 0 ||
        (rc = vk_matmul_create(c, &lw->wv, NAME("v_proj"), &l->wv, err)) < 0 ||
        (rc = vk_matmul_create(c, &lw->wo, NAME("o_proj"), &l->wo, err)) < 0 ||
        (rc = vk_matmul_create(c, &lw->w_gate, NAME("gate_proj"), &l->w_gate, err)) < 0 ||
        (rc = vk_matmul_create(c, &lw->w_up, NAME("up_proj"), &l->w_up, err)) < 0 ||
        (rc = vk_matmul_create(c, &lw->w_down, NAME("down_proj"), &l->w_down, err)) < 0)
        return rc;
    if (s->has_bias &&
        ((rc = vec_upload(c, &lw->bq, s->q_dim, NAME("q_proj.bias"), &l->bq, err)) < 0 ||
         (rc = vec_upload(c, &lw->bk, s->kv_dim, NAME("k_proj.bias"), &l->bk, err)) < 0 ||
         (rc = vec_upload(c, &lw->bv, s->kv_dim, NAME("v_proj.bias"), &l->bv, err)) < 0))
        return rc;
    if (s->has_qk_norm &&
        ((rc = vec_upload(c, &lw->q_norm, s->head_dim, NAME("q_norm"), &l->q_norm, err)) < 0 ||
         (rc = vec_upload(c, &lw->k_norm, s->head_dim, NAME("k_norm"), &l->k_norm, err)) < 0))
        return rc;
#undef NAME
    struct vk_matmul *mms[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
    uint32_t want_rows[] = {(uint32_t)s->q_dim, (uint32_t)s->kv_dim, (uint32_t)s->kv_dim, (uint32_t)s->hidden,
                            (uint32_t)s->ffn, (uint32_t)s->ffn, (uint32_t)s->hidden};
    uint32_t want_cols[] = {(uint32_t)s->hidden, (uint32_t)s->hidden, (uint32_t)s->hidden, (uint32_t)s->q_dim,
                            (uint32_t)s->hidden, (uint32_t)s->hidden, (uint32_t)s->ffn};
    for (int i = 0; i < 7; i++)
        if (mms[i]->rows != want_rows[i] || mms[i]->cols != want_cols[i])
            return ifd_error_set(err, -EINVAL, "vulkan: layer %d: projection %d is [%u, %u], expected [%u, %u]",
                                 li, i, mms[i]->rows, mms[i]->cols, want_rows[i], want_cols[i]);

    uint64_t cache_bytes = (uint64_t)s->base.n_seq_max * s->base.n_ctx * s->kv_dim * 4;
    if ((rc = act_buffer(s, c->act, cache_bytes, "KV cache (keys)", &l->k_cache, err)) < 0 ||
        (rc = act_buffer(s, c->act, cache_bytes, "KV cache (values)", &l->v_cache, err)) < 0)
        return rc;

    struct vk_range none = {0};
    if ((rc = vk_matmul_bind(c, &l->wq, vk_range_of(&s->xn), vk_range_of(&s->q),
                             s->has_bias ? vk_range_of(&l->bq) : none, err)) < 0 ||
        (rc = vk_matmul_bind(c, &l->wk, vk_range_of(&s->xn), vk_range_of(&s->k),
                             s->has_bias ? vk_range_of(&l->bk) : none, err)) < 0 ||
        (rc = vk_matmul_bind(c, &l->wv, vk_range_of(&s->xn), vk_range_of(&s->v),
                             s->has_bias ? vk_range_of(&l->bv) : none, err)) < 0 ||
        (rc = vk_matmul_bind(c, &l->wo, vk_range_of(&s->att), vk_range_of(&s->x), none, err)) < 0 ||
        (rc = vk_matmul_bind(c, &l->w_gate, vk_range_of(&s->xn), vk_range_of(&s->gate), none, err)) < 0 ||
        (rc = vk_matmul_bind(c, &l->w_up, vk_range_of(&s->xn), vk_range_of(&s->up), none, err)) < 0 ||
        (rc = vk_matmul_bind(c, &l->w_down, vk_range_of(&s->gate), vk_range_of(&s->x), none, err)) < 0)
        return rc;
    if ((rc = set_make(s, &l->s_attn_norm, err, &s->x, &s->xn, &l->attn_norm, NULL, NULL, NULL)) < 0 ||
        (rc = set_make(s, &l->s_mlp_norm, err, &s->x, &s->xn, &l->mlp_norm, NULL, NULL, NULL)) < 0 ||
        (rc = set_make(s, &l->s_rope_q, err, &s->q, &s->rope, &s->pos, NULL, NULL, NULL)) < 0 ||
        (rc = set_make(s, &l->s_rope_k, err, &s->k, &s->rope, &s->pos, NULL, NULL, NULL)) < 0 ||
        (rc = set_make(s, &l->s_kv_store, err, &s->k, &s->v, &l->k_cache, &l->v_cache, &s->pos, &s->seq)) < 0 ||
        (rc = set_make(s, &l->s_attention, err, &s->q, &l->k_cache, &l->v_cache, &s->att, &s->pos, &s->seq)) < 0 ||
        (rc = set_make(s, &l->s_silu, err, &s->gate, &s->up, NULL, NULL, NULL, NULL)) < 0)
        return rc;
    if (s->has_qk_norm &&
        ((rc = set_make(s, &l->s_q_norm, err, &s->q, &s->q, &l->q_norm, NULL, NULL, NULL)) < 0 ||
         (rc = set_make(s, &l->s_k_norm, err, &s->k, &s->k, &l->k_norm, NULL, NULL, NULL)) < 0))
        return rc;
    return 0;
}

static void vk_stage_destroy(struct stage *st)
{
    struct vk_stage *s = (struct vk_stage *)st;
    if (!s)
        return;
    if (s->layers)
        for (int i = 0; i < s->n_layers; i++) {
            struct vk_layer *l = &s->layers[i];
            struct vk_matmul *mms[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
            for (int j = 0; j < 7; j++)
                vk_matmul_finish(mms[j]);
        }
    vk_ctx_destroy(s->c); /* the pools take every buffer with them */
    free(s->layers);
    stage_finish(&s->base);
    free(s);
}

/* Records one layer's dispatches for n tokens into the step's command buffer. */
static void layer_record(struct vk_stage *s, const struct vk_layer *l, uint32_t n)
{
    struct vk_ctx *c = s->c;
    VkCommandBuffer cb = c->cb;
    uint32_t gx, gy;
    struct vk_push_rmsnorm pn = {.n_cols = (uint32_t)s->hidden, .eps = s->eps};
    vk_cmd_dispatch(cb, &c->pl, VK_KERN_RMSNORM, l->s_attn_norm, &pn, sizeof(pn), n, 1);
    vk_cmd_barrier(cb);
    uint32_t fb = s->has_bias ? VK_MM_BIAS : 0;
    /* q, k, v read xn and write separate buffers: no barrier between them */
    vk_matmul_record(c, &l->wq, n, (uint32_t)s->hidden, (uint32_t)s->q_dim, fb);
    vk_matmul_record(c, &l->wk, n, (uint32_t)s->hidden, (uint32_t)s->kv_dim, fb);
    vk_matmul_record(c, &l->wv, n, (uint32_t)s->hidden, (uint32_t)s->kv_dim, fb);
    vk_cmd_barrier(cb);
    if (s->has_qk_norm) {
        struct vk_push_rmsnorm ph = {.n_cols = (uint32_t)s->head_dim, .eps = s->eps};
        vk_cmd_dispatch(cb, &c->pl, VK_KERN_RMSNORM, l->s_q_norm, &ph, sizeof(ph), n * (uint32_t)s->n_heads, 1);
        vk_cmd_dispatch(cb, &c->pl, VK_KERN_RMSNORM, l->s_k_norm, &ph, sizeof(ph), n * (uint32_t)s->n_kv_heads, 1);
        vk_cmd_barrier(cb);
    }
    struct vk_push_rope prq = {n, (uint32_t)s->n_heads, (uint32_t)s->head_dim};
    vk_grid_1d((uint64_t)n * s->n_heads * (s->head_dim / 2), c->dev->max_groups[0], &gx, &gy);
    vk_cmd_dispatch(cb, &c->pl, VK_KERN_ROPE, l->s_rope_q, &prq, sizeof(prq), gx, gy);
    struct vk_push_rope prk = {n, (uint32_t)s->n_kv_heads, (uint32_t)s->head_dim};
    vk_grid_1d((uint64_t)n * s->n_kv_heads * (s->head_dim / 2), c->dev->max_groups[0], &gx, &gy);
    vk_cmd_dispatch(cb, &c->pl, VK_KERN_ROPE, l->s_rope_k, &prk, sizeof(prk), gx, gy);
    vk_cmd_barrier(cb);
    struct vk_push_kv_store pst = {n, (uint32_t)s->kv_dim, (uint32_t)s->base.n_ctx};
    vk_grid_1d((uint64_t)n * s->kv_dim, c->dev->max_groups[0], &gx, &gy);
    vk_cmd_dispatch(cb, &c->pl, VK_KERN_KV_STORE, l->s_kv_store, &pst, sizeof(pst), gx, gy);
    vk_cmd_barrier(cb);
    struct vk_push_attention pat = {(uint32_t)s->n_heads, (uint32_t)s->n_kv_heads, (uint32_t)s->head_dim,
                                    (uint32_t)s->base.n_ctx, 1.0f / sqrtf((float)s->head_dim)};
    vk_cmd_dispatch(cb, &c->pl, VK_KERN_ATTENTION, l->s_attention, &pat, sizeof(pat), (uint32_t)s->n_heads, n);
    vk_cmd_barrier(cb);
    /* residual add fused: x += Wo att */
    vk_matmul_record(c, &l->wo, n, (uint32_t)s->q_dim, (uint32_t)s->hidden, VK_MM_ACCUMULATE);
    vk_cmd_barrier(cb);
    vk_cmd_dispatch(cb, &c->pl, VK_KERN_RMSNORM, l->s_mlp_norm, &pn, sizeof(pn), n, 1);
    vk_cmd_barrier(cb);
    vk_matmul_record(c, &l->w_gate, n, (uint32_t)s->hidden, (uint32_t)s->ffn, 0);
    vk_matmul_record(c, &l->w_up, n, (uint32_t)s->hidden, (uint32_t)s->ffn, 0);
    vk_cmd_barrier(cb);
    struct vk_push_silu_mul ps = {n * (uint32_t)s->ffn};
    vk_grid_1d((uint64_t)n * s->ffn, c->dev->max_groups[0], &gx, &gy);
    vk_cmd_dispatch(cb, &c->pl, VK_KERN_SILU_MUL, l->s_silu, &ps, sizeof(ps), gx, gy);
    vk_cmd_barrier(cb);
    vk_matmul_record(c, &l->w_down, n, (uint32_t)s->ffn, (uint32_t)s->hidden, VK_MM_ACCUMULATE);
    vk_cmd_barrier(cb);
}

/* Runs n <= n_batch tokens (already checked) through every layer. */
static int forward_chunk(struct vk_stage *s, int n, const int32_t *seq_ids, const int32_t *positions, float *hidden,
                         ifd_error *err)
{
    struct vk_ctx *c = s->c;
    size_t hbytes = (size_t)n * s->hidden * sizeof(float);
    VkDeviceSize pos_off = (VkDeviceSize)s->n_batch * s->hidden * sizeof(float);
    VkDeviceSize seq_off = pos_off + (VkDeviceSize)s->n_batch * sizeof(int32_t);
    char *io = s->io.map;
    memcpy(io, hidden, hbytes);
    memcpy(io + pos_off, positions, (size_t)n * sizeof(int32_t));
    memcpy(io + seq_off, seq_ids, (size_t)n * sizeof(int32_t));

    int rc = vk_ctx_begin(c, err);
    if (rc < 0)
        return rc;
    VkBufferCopy cx = {0, 0, hbytes}, cp = {pos_off, 0, (VkDeviceSize)n * 4}, cs = {seq_off, 0, (VkDeviceSize)n * 4};
    vkCmdCopyBuffer(c->cb, s->io.buf, s->x.buf, 1, &cx);
    vkCmdCopyBuffer(c->cb, s->io.buf, s->pos.buf, 1, &cp);
    vkCmdCopyBuffer(c->cb, s->io.buf, s->seq.buf, 1, &cs);
    vk_cmd_barrier(c->cb);
    for (int i = 0; i < s->n_layers; i++)
        layer_record(s, &s->layers[i], (uint32_t)n);
    vkCmdCopyBuffer(c->cb, s->x.buf, s->io.buf, 1, &cx);
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_HOST_READ_BIT,
    };
    vkCmdPipelineBarrier(c->cb, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0,
                         NULL);
    rc = vk_ctx_submit(c, err);
    if (rc < 0)
        return rc;
    memcpy(hidden, io, hbytes);
    return 0;
}

static int vk_stage_forward(struct stage *st, const struct stage_batch *b, ifd_error *err)
{
    struct vk_stage *s = (struct vk_stage *)st;
    double t0 = ifd_now_ms();
    for (int off = 0; off < b->n_tokens; off += s->n_batch) {
        int n = b->n_tokens - off < s->n_batch ? b->n_tokens - off : s->n_batch;
        int rc = forward_chunk(s, n, b->seq_ids + off, b->positions + off, b->hidden + (size_t)off * s->hidden, err);
        if (rc < 0)
            return rc;
    }
    s->stats.forward_calls++;
    s->stats.tokens += (uint64_t)b->n_tokens;
    s->stats.forward_ms += ifd_now_ms() - t0;
    return 0;
}

static void vk_stage_get_stats(struct stage *st, struct stage_stats *ret)
{
    struct vk_stage *s = (struct vk_stage *)st;
    if (!ret)
        return;
    *ret = s->stats;
    ret->device_memory_bytes = vk_pool_bytes(s->c->weights) + vk_pool_bytes(s->c->act);
}

/* The caches are [n_seq_max, n_ctx, kv_dim]: a sequence's first n_pos
 * positions are one run of bytes, copied on the device in one submit. The
 * barriers order the copy after the last forward's writes and before the
 * next one's reads. */
static int vk_stage_seq_copy(struct stage *st, int src_seq, int dst_seq, int n_pos, ifd_error *err)
{
    struct vk_stage *s = (struct vk_stage *)st;
    if (n_pos == 0)
        return 0;
    VkDeviceSize slot = (VkDeviceSize)st->n_ctx * s->kv_dim * sizeof(float);
    VkBufferCopy cp = {(VkDeviceSize)src_seq * slot, (VkDeviceSize)dst_seq * slot,
                       (VkDeviceSize)n_pos * s->kv_dim * sizeof(float)};
    struct vk_ctx *c = s->c;
    int rc = vk_ctx_begin(c, err);
    if (rc < 0)
        return rc;
    vk_cmd_barrier(c->cb);
    for (int i = 0; i < s->n_layers; i++) {
        vkCmdCopyBuffer(c->cb, s->layers[i].k_cache.buf, s->layers[i].k_cache.buf, 1, &cp);
        vkCmdCopyBuffer(c->cb, s->layers[i].v_cache.buf, s->layers[i].v_cache.buf, 1, &cp);
    }
    vk_cmd_barrier(c->cb);
    return vk_ctx_submit(c, err);
}

static const struct stage_ops vk_stage_ops = {
    .name = "vulkan",
    .forward = vk_stage_forward,
    .seq_copy = vk_stage_seq_copy,
    .get_stats = vk_stage_get_stats,
    .destroy = vk_stage_destroy,
};

int vk_stage_create(const struct model *m, int first, int last, int n_seq_max, int n_ctx,
                    const struct vk_stage_opts *opts, struct stage **ret, ifd_error *err)
{
    const struct model_config *cfg = &m->cfg;
    if (first < 0 || last > cfg->n_layers || first >= last)
        return ifd_error_set(err, -EINVAL, "vulkan stage: layer range [%d, %d) outside the model's 0..%d", first,
                             last, cfg->n_layers);
    if (first < m->layer_first || last > m->layer_last)
        return ifd_error_set(err, -EINVAL, "vulkan stage: layers [%d, %d) are not bound by the model ([%d, %d))",
                             first, last, m->layer_first, m->layer_last);
    if (n_seq_max < 1 || n_ctx < 1)
        return ifd_error_set(err, -EINVAL, "vulkan stage: n_seq_max %d and n_ctx %d must be positive", n_seq_max,
                             n_ctx);
    if (cfg->head_dim % 2 || cfg->head_dim > VK_ATT_HEAD_DIM_MAX || cfg->n_kv_heads < 1 ||
        cfg->n_heads % cfg->n_kv_heads)
        return ifd_error_set(err, -ENOTSUP, "vulkan stage: head_dim %d (even, <= %d) and heads %d/%d (a multiple "
                             "of the KV heads) not supported", cfg->head_dim, VK_ATT_HEAD_DIM_MAX, cfg->n_heads,
                             cfg->n_kv_heads);
    struct vk_stage *s = calloc(1, sizeof(*s));
    if (!s)
        return ifd_error_set(err, -ENOMEM, "vulkan stage: out of memory");
    /* batches larger than a submit run in several, so the stage takes any
     * batch the contract allows */
    int rc = stage_init(&s->base, &vk_stage_ops, first, last, cfg->hidden_size, n_seq_max, n_ctx, 0, err);
    if (rc < 0)
        goto fail;
    s->n_layers = last - first;
    s->hidden = cfg->hidden_size;
    s->n_heads = cfg->n_heads;
    s->n_kv_heads = cfg->n_kv_heads;
    s->head_dim = cfg->head_dim;
    s->q_dim = cfg->n_heads * cfg->head_dim;
    s->kv_dim = cfg->n_kv_heads * cfg->head_dim;
    s->ffn = cfg->intermediate_size;
    s->eps = cfg->rms_norm_eps;
    s->has_bias = cfg->attention_bias;
    s->has_qk_norm = cfg->qk_norm;
    s->n_batch = opts && opts->n_batch_max > 0 ? opts->n_batch_max : VK_STAGE_BATCH_DEFAULT;
    s->layers = calloc((size_t)s->n_layers, sizeof(*s->layers));
    if (!s->layers) {
        rc = ifd_error_set(err, -ENOMEM, "vulkan stage: out of memory");
        goto fail;
    }
    struct vk_ctx_opts co = {.device = opts ? opts->device : 0, .no_subgroup = opts && opts->no_subgroup,
                             .max_range = opts ? opts->max_range : 0};
    if ((rc = vk_ctx_create(&co, &s->c, err)) < 0)
        goto fail;
    /* dispatch sizes grow with the batch: attention has n_batch groups in y,
     * q-norm n_batch * n_heads in x; a larger batch goes in several submits */
    uint64_t max_batch = s->c->dev->max_groups[1];
    if (max_batch > s->c->dev->max_groups[0] / (uint64_t)s->n_heads)
        max_batch = s->c->dev->max_groups[0] / (uint64_t)s->n_heads;
    /* and each activation buffer [n_batch, width] must fit one descriptor range */
    int widest = s->hidden > s->q_dim ? s->hidden : s->q_dim;
    widest = widest > s->ffn ? widest : s->ffn;
    if (max_batch > s->c->max_range / (4 * (uint64_t)widest))
        max_batch = s->c->max_range / (4 * (uint64_t)widest);
    if (max_batch < 1) {
        rc = ifd_error_set(err, -E2BIG, "vulkan stage: one token's activations (%d floats) exceed the device's "
                           "storage-buffer range", widest);
        goto fail;
    }
    if ((uint64_t)s->n_batch > max_batch)
        s->n_batch = (int)max_batch;

    struct vk_ctx *c = s->c;
    uint64_t B = (uint64_t)s->n_batch;
    uint64_t io_bytes = B * s->hidden * 4 + 2 * B * 4;
    size_t rope_n = (size_t)n_ctx * (s->head_dim / 2) * 2;
    float *rope = malloc(rope_n * sizeof(float));
    double *inv_freq = malloc((size_t)(s->head_dim / 2) * sizeof(double));
    if (!rope || !inv_freq) {
        free(rope);
        free(inv_freq);
        rc = ifd_error_set(err, -ENOMEM, "vulkan stage: out of memory");
        goto fail;
    }
    rope_table(cfg, n_ctx, inv_freq, rope);
    free(inv_freq);
    if ((rc = act_buffer(s, c->act, B * s->hidden * 4, "hidden states", &s->x, err)) < 0 ||
        (rc = act_buffer(s, c->act, B * s->hidden * 4, "normed states", &s->xn, err)) < 0 ||
        (rc = act_buffer(s, c->act, B * s->q_dim * 4, "queries", &s->q, err)) < 0 ||
        (rc = act_buffer(s, c->act, B * s->kv_dim * 4, "keys", &s->k, err)) < 0 ||
        (rc = act_buffer(s, c->act, B * s->kv_dim * 4, "values", &s->v, err)) < 0 ||
        (rc = act_buffer(s, c->act, B * s->q_dim * 4, "attention output", &s->att, err)) < 0 ||
        (rc = act_buffer(s, c->act, B * s->ffn * 4, "MLP gate", &s->gate, err)) < 0 ||
        (rc = act_buffer(s, c->act, B * s->ffn * 4, "MLP up", &s->up, err)) < 0 ||
        (rc = act_buffer(s, c->act, B * 4, "positions", &s->pos, err)) < 0 ||
        (rc = act_buffer(s, c->act, B * 4, "sequence ids", &s->seq, err)) < 0 ||
        (rc = act_buffer(s, c->host, io_bytes, "step input/output", &s->io, err)) < 0 ||
        (rc = act_buffer(s, c->weights, rope_n * 4, "rotary table", &s->rope, err)) < 0 ||
        (rc = vk_ctx_upload(c, &s->rope, 0, rope, rope_n * 4, err)) < 0) {
        free(rope);
        goto fail;
    }
    free(rope);
    for (int li = first; li < last; li++)
        if ((rc = layer_build(s, m, li, err)) < 0)
            goto fail;
    *ret = &s->base;
    return 0;
fail:
    vk_stage_destroy(&s->base);
    return rc;
}
