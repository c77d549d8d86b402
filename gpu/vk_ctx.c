/* vk_ctx.c - device context and matmul weights (see vk_ctx.h). */
#include "vk_ctx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "model/dtype.h"

/* Bounce buffer for uploads: large enough that a layer's weight goes in a few copies. */
#define VK_STAGING_BYTES (16u << 20)
/* Memory block sizes of the pools: few allocations, little waste. */
#define VK_WEIGHT_BLOCK (256ull << 20)
#define VK_ACT_BLOCK (64ull << 20)
#define VK_HOST_BLOCK (32ull << 20)

int vk_ctx_create(const struct vk_ctx_opts *opts, struct vk_ctx **ret, ifd_error *err)
{
    struct vk_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return ifd_error_set(err, -ENOMEM, "vulkan: out of memory");
    int rc = vk_device_create(opts->device, &c->dev, err);
    if (rc < 0)
        goto fail;
    c->max_range = c->dev->max_storage_range;
    if (opts->max_range && opts->max_range < c->max_range)
        c->max_range = opts->max_range;
    if ((rc = vk_pipelines_init(&c->pl, c->dev, !opts->no_subgroup, err)) < 0 ||
        (rc = vk_pool_create(c->dev, VK_POOL_DEVICE, VK_WEIGHT_BLOCK, &c->weights, err)) < 0 ||
        (rc = vk_pool_create(c->dev, VK_POOL_DEVICE, VK_ACT_BLOCK, &c->act, err)) < 0 ||
        (rc = vk_pool_create(c->dev, VK_POOL_HOST, VK_HOST_BLOCK, &c->host, err)) < 0 ||
        (rc = vk_pool_buffer_create(c->host, VK_STAGING_BYTES, "staging buffer", &c->staging, err)) < 0 ||
        (rc = vk_pool_buffer_create(c->act, 16, "dummy binding", &c->dummy, err)) < 0)
        goto fail;

    VkCommandPoolCreateInfo cpci = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
        .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
        .queueFamilyIndex = c->dev->queue_family,
    };
    VkResult r = vkCreateCommandPool(c->dev->dev, &cpci, NULL, &c->cmd_pool);
    if (r == VK_SUCCESS) {
        VkCommandBufferAllocateInfo cbai = {
            .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
            .commandPool = c->cmd_pool,
            .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
            .commandBufferCount = 1,
        };
        r = vkAllocateCommandBuffers(c->dev->dev, &cbai, &c->cb);
    }
    if (r == VK_SUCCESS) {
        VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
        r = vkCreateFence(c->dev->dev, &fci, NULL, &c->fence);
    }
    if (r != VK_SUCCESS) {
        rc = ifd_error_set(err, -ENOMEM, "vulkan: command buffer setup: %s", vk_result_name(r));
        goto fail;
    }
    *ret = c;
    return 0;
fail:
    vk_ctx_destroy(c);
    return rc;
}

void vk_ctx_destroy(struct vk_ctx *c)
{
    if (!c)
        return;
    if (c->dev && c->dev->dev) {
        vkDeviceWaitIdle(c->dev->dev);
        if (c->fence)
            vkDestroyFence(c->dev->dev, c->fence, NULL);
        if (c->cmd_pool)
            vkDestroyCommandPool(c->dev->dev, c->cmd_pool, NULL);
        vk_pipelines_finish(&c->pl);
        vk_pool_destroy(c->weights);
        vk_pool_destroy(c->act);
        vk_pool_destroy(c->host);
    }
    vk_device_destroy(c->dev);
    free(c);
}

int vk_ctx_begin(struct vk_ctx *c, ifd_error *err)
{
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
        .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
    };
    VkResult r = vkResetCommandBuffer(c->cb, 0);
    if (r == VK_SUCCESS)
        r = vkBeginCommandBuffer(c->cb, &bi);
    if (r != VK_SUCCESS)
        return ifd_error_set(err, -EIO, "vulkan: begin command buffer: %s", vk_result_name(r));
    return 0;
}

int vk_ctx_submit(struct vk_ctx *c, ifd_error *err)
{
    VkResult r = vkEndCommandBuffer(c->cb);
    if (r != VK_SUCCESS)
        return ifd_error_set(err, -EIO, "vulkan: end command buffer: %s", vk_result_name(r));
    VkSubmitInfo si = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
        .commandBufferCount = 1,
        .pCommandBuffers = &c->cb,
    };
    r = vkResetFences(c->dev->dev, 1, &c->fence);
    if (r == VK_SUCCESS)
        r = vkQueueSubmit(c->dev->queue, 1, &si, c->fence);
    if (r == VK_SUCCESS)
        r = vkWaitForFences(c->dev->dev, 1, &c->fence, VK_TRUE, UINT64_MAX);
    if (r != VK_SUCCESS)
        return ifd_error_set(err, r == VK_ERROR_DEVICE_LOST ? -ENODEV : -EIO, "vulkan: submit: %s",
                             vk_result_name(r));
    return 0;
}

static int copy_step(struct vk_ctx *c, VkBuffer src, VkDeviceSize src_off, VkBuffer dst, VkDeviceSize dst_off,
                     VkDeviceSize n, ifd_error *err)
{
    int rc = vk_ctx_begin(c, err);
    if (rc < 0)
        return rc;
    VkBufferCopy region = {src_off, dst_off, n};
    vkCmdCopyBuffer(c->cb, src, dst, 1, &region);
    return vk_ctx_submit(c, err);
}

/* Moves n bytes between host memory and buf at off through the staging
 * buffer, a staging buffer's worth at a time: from `from` to the device when
 * it is given, else from the device to `to`. Upload and download are this one
 * loop in either direction. */
static int staged_copy(struct vk_ctx *c, const struct vk_buffer *buf, VkDeviceSize off, const char *from, char *to,
                       size_t n, ifd_error *err)
{
    const bool up = from != NULL;
    if (off + n > buf->size)
        return ifd_error_set(err, -EINVAL, "vulkan: %s of %zu bytes at %llu past a %llu-byte buffer",
                             up ? "upload" : "download", n, (unsigned long long)off, (unsigned long long)buf->size);
    for (size_t done = 0; done < n;) {
        size_t piece = n - done < c->staging.size ? n - done : c->staging.size;
        if (up)
            memcpy(c->staging.map, from + done, piece);
        int rc = up ? copy_step(c, c->staging.buf, 0, buf->buf, off + done, piece, err)
                    : copy_step(c, buf->buf, off + done, c->staging.buf, 0, piece, err);
        if (rc < 0)
            return rc;
        if (!up)
            memcpy(to + done, c->staging.map, piece);
        done += piece;
    }
    return 0;
}

int vk_ctx_upload(struct vk_ctx *c, const struct vk_buffer *dst, VkDeviceSize off, const void *src, size_t n,
                  ifd_error *err)
{
    return staged_copy(c, dst, off, src, NULL, n, err);
}

int vk_ctx_download(struct vk_ctx *c, const struct vk_buffer *src, VkDeviceSize off, void *dst, size_t n,
                    ifd_error *err)
{
    return staged_copy(c, src, off, NULL, dst, n, err);
}

/* Element i of a float vector stored as dtype, widened. */
static float widen(enum ifd_dtype dtype, const void *p, size_t i)
{
    switch (dtype) {
    case IFD_DTYPE_F16: return ifd_f16_to_f32(((const uint16_t *)p)[i]);
    case IFD_DTYPE_BF16: return ifd_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

/* Uploads rows [row0, row0 + rows) of a quantized weight's scales and biases
 * as f32 (scale, bias) pairs into ch->sb. */
static int qparams_upload(struct vk_ctx *c, const struct ifd_weight *w, struct vk_matmul_chunk *ch, const char *what,
                          ifd_error *err)
{
    size_t gpr = (size_t)(w->cols / w->group_size);
    size_t n = (size_t)ch->rows * gpr;
    float *sb = malloc(n * 2 * sizeof(float));
    if (!sb)
        return ifd_error_set(err, -ENOMEM, "vulkan: out of memory");
    size_t first = (size_t)ch->row0 * gpr;
    for (size_t i = 0; i < n; i++) {
        sb[2 * i] = widen(w->qparam_dtype, w->scales, first + i);
        sb[2 * i + 1] = widen(w->qparam_dtype, w->biases, first + i);
    }
    int rc = vk_pool_buffer_create(c->weights, n * 2 * sizeof(float), what, &ch->sb, err);
    if (rc == 0)
        rc = vk_ctx_upload(c, &ch->sb, 0, sb, n * 2 * sizeof(float), err);
    free(sb);
    return rc;
}

int vk_matmul_create(struct vk_ctx *c, const struct ifd_weight *w, const char *what, struct vk_matmul *ret,
                     ifd_error *err)
{
    if (!w->data)
        return ifd_error_set(err, -EINVAL, "vulkan: weight %s is not bound", what);
    if (w->rows < 1 || w->cols < 1 || w->rows > INT32_MAX || w->cols > INT32_MAX)
        return ifd_error_set(err, -EINVAL, "vulkan: weight %s: bad shape [%lld, %lld]", what,
                             (long long)w->rows, (long long)w->cols);
    if (w->panels)
        return ifd_error_set(err, -ENOTSUP, "vulkan: weight %s is in the CPU stage's panels of 8 rows (a model "
                             "loaded for the cpu backend); the Vulkan stage reads the checkpoint's layout", what);
    int kern;
    uint64_t row_bytes, sb_row_bytes = 0;
    if (w->bits != 0) {
        /* MLX 4/8-bit: whole words per row, groups of whole words */
        kern = w->bits == 4 ? VK_KERN_MATMUL_Q4 : w->bits == 8 ? VK_KERN_MATMUL_Q8 : -1;
        if (kern < 0 || w->dtype != IFD_DTYPE_U32 || w->group_size < 32 || w->group_size % 32 ||
            w->cols % w->group_size || !w->scales || !w->biases || !ifd_dtype_is_float(w->qparam_dtype))
            return ifd_error_set(err, -ENOTSUP, "vulkan: weight %s: %d-bit quantization with group size %d is not "
                                 "supported by the Vulkan stage (4 or 8 bits, groups a multiple of 32 dividing "
                                 "the %lld columns)", what, w->bits, w->group_size, (long long)w->cols);
        row_bytes = (uint64_t)w->cols * (uint64_t)w->bits / 8;
        sb_row_bytes = (uint64_t)(w->cols / w->group_size) * 2 * sizeof(float);
    } else {
        kern = vk_kernel_for_dtype(w->dtype);
        if (kern < 0)
            return ifd_error_set(err, -ENOTSUP, "vulkan: weight %s: dtype %s is not supported by the Vulkan "
                                 "stage (F32, F16, BF16, MLX 4/8-bit)", what, ifd_dtype_name(w->dtype));
        row_bytes = (uint64_t)w->cols * ifd_dtype_size(w->dtype);
    }
    uint64_t limit = c->max_range < c->dev->max_alloc ? c->max_range : c->dev->max_alloc;
    uint64_t widest = row_bytes > sb_row_bytes ? row_bytes : sb_row_bytes;
    /* chunk bytes are padded to a whole word (16-bit types): with the limit
     * rounded down to a word, the padded chunk still fits */
    uint64_t per_chunk = (limit & ~3ull) / widest;
    if (per_chunk > c->dev->max_groups[0])
        per_chunk = c->dev->max_groups[0];
    if (per_chunk < 1)
        return ifd_error_set(err, -E2BIG, "vulkan: weight %s: one row of %llu bytes exceeds the device's "
                             "storage-buffer range of %llu bytes", what, (unsigned long long)widest,
                             (unsigned long long)limit);
    struct vk_matmul mm = {.kern = kern, .rows = (uint32_t)w->rows, .cols = (uint32_t)w->cols, .rows_per_wg = 1,
                           .group_size = (uint32_t)w->group_size};
    /* subgroup path: one subgroup per row, as many rows as the 64-wide work
     * group has subgroups (the shader loops, so any real size is correct) */
    if (c->pl.subgroup && c->dev->subgroup_size < VK_WG)
        mm.rows_per_wg = VK_WG / c->dev->subgroup_size;
    mm.n_chunks = (int)((w->rows + per_chunk - 1) / per_chunk);
    mm.chunks = calloc((size_t)mm.n_chunks, sizeof(*mm.chunks));
    if (!mm.chunks)
        return ifd_error_set(err, -ENOMEM, "vulkan: out of memory");
    for (int i = 0; i < mm.n_chunks; i++) {
        struct vk_matmul_chunk *ch = &mm.chunks[i];
        ch->row0 = (uint32_t)(i * per_chunk);
        ch->rows = (uint32_t)((uint64_t)(mm.rows - ch->row0) < per_chunk ? mm.rows - ch->row0 : per_chunk);
        uint64_t bytes = (uint64_t)ch->rows * row_bytes;
        uint64_t padded = (bytes + 3) & ~3ull;
        int rc = vk_pool_buffer_create(c->weights, padded, what, &ch->w, err);
        if (rc == 0)
            rc = vk_ctx_upload(c, &ch->w, 0, (const char *)w->data + (uint64_t)ch->row0 * row_bytes, bytes, err);
        if (rc == 0 && padded != bytes) {
            static const uint8_t zero[4];
            rc = vk_ctx_upload(c, &ch->w, bytes, zero, padded - bytes, err);
        }
        if (rc == 0 && w->bits)
            rc = qparams_upload(c, w, ch, what, err);
        if (rc < 0) {
            ifd_error_prefix(err, "uploading %s", what);
            vk_matmul_finish(&mm);
            return rc;
        }
    }
    *ret = mm;
    return 0;
}

int vk_matmul_bind(struct vk_ctx *c, struct vk_matmul *mm, struct vk_range x, struct vk_range y,
                   struct vk_range bias, ifd_error *err)
{
    for (int i = 0; i < mm->n_chunks; i++) {
        struct vk_range b[VK_MAX_BINDINGS] = {vk_range_of(&mm->chunks[i].w), x, y, bias, {0}};
        if (mm->group_size)
            b[4] = vk_range_of(&mm->chunks[i].sb);
        int rc = vk_pipelines_set_create(&c->pl, b, c->dummy.buf, &mm->chunks[i].set, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

void vk_matmul_record(struct vk_ctx *c, const struct vk_matmul *mm, uint32_t n_tokens, uint32_t x_stride,
                      uint32_t y_stride, uint32_t flags)
{
    for (int i = 0; i < mm->n_chunks; i++) {
        const struct vk_matmul_chunk *ch = &mm->chunks[i];
        struct vk_push_matmul pc = {
            .rows = ch->rows, .cols = mm->cols, .n_tokens = n_tokens, .x_stride = x_stride,
            .y_stride = y_stride, .row_offset = ch->row0, .flags = flags, .rows_per_wg = mm->rows_per_wg,
            .group_size = mm->group_size,
        };
        vk_cmd_dispatch(c->cb, &c->pl, mm->kern, ch->set, &pc, sizeof(pc),
                        (ch->rows + mm->rows_per_wg - 1) / mm->rows_per_wg,
                        (n_tokens + VK_MM_TB - 1) / VK_MM_TB);
    }
}

void vk_matmul_finish(struct vk_matmul *mm)
{
    free(mm->chunks);
    mm->chunks = NULL;
    mm->n_chunks = 0;
}
