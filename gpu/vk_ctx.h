/* vk_ctx.h - one opened device with its pipelines, memory pools, command
 * buffer and staging buffer; and the matmul weight object built on it.
 *
 * The stage builds everything on one context; the op tests use the same
 * context and the same recording paths with small buffers. Not thread-safe. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "model/model.h"
#include "vk_device.h"
#include "vk_memory.h"
#include "vk_pipeline.h"

struct vk_ctx_opts {
    int device;           /* index in vk_device_list() order */
    bool no_subgroup;     /* force the portable (shared-memory) shader path */
    uint64_t max_range;   /* 0: the device's maxStorageBufferRange; smaller
                             values (tests) force weights to be split */
};

struct vk_ctx {
    struct vk_device *dev;
    struct vk_pipelines pl;
    struct vk_pool *weights;   /* device-local, filled once */
    struct vk_pool *act;       /* device-local activations, scratch, KV cache */
    struct vk_pool *host;      /* host-visible: staging, step input/output */
    struct vk_buffer staging;  /* [VK_STAGING_BYTES] upload/download bounce */
    struct vk_buffer dummy;    /* bound to unused descriptor slots */
    VkCommandPool cmd_pool;
    VkCommandBuffer cb;        /* the one command buffer of a step */
    VkFence fence;
    uint64_t max_range;        /* bytes one descriptor may cover */
};

int vk_ctx_create(const struct vk_ctx_opts *opts, struct vk_ctx **ret, ifd_error *err);
void vk_ctx_destroy(struct vk_ctx *c); /* accepts NULL */

/* Copies host bytes into / out of a device buffer through the staging buffer
 * (whole copies, waited for). For setup and tests, not the per-step path. */
int vk_ctx_upload(struct vk_ctx *c, const struct vk_buffer *dst, VkDeviceSize off, const void *src, size_t n,
                  ifd_error *err);
int vk_ctx_download(struct vk_ctx *c, const struct vk_buffer *src, VkDeviceSize off, void *dst, size_t n,
                    ifd_error *err);

/* Starts recording c->cb (after the previous submit finished). */
int vk_ctx_begin(struct vk_ctx *c, ifd_error *err);
/* Ends c->cb, submits it and waits for it. */
int vk_ctx_submit(struct vk_ctx *c, ifd_error *err);

/* A weight matrix [rows, cols] in device memory, in its stored dtype, split
 * into row chunks that each fit one storage-buffer range and the work-group
 * count limit (a large head, e.g. 151936 x 896 BF16 = 272 MB, exceeds the
 * 128 MiB range of some drivers). */
struct vk_matmul_chunk {
    struct vk_buffer w;      /* [rows, cols] of this chunk, stored dtype (packed words if quantized) */
    struct vk_buffer sb;     /* quantized: f32 (scale, bias) pairs [rows, cols / group_size]; else unused */
    uint32_t row0, rows;     /* first row in the whole weight, row count */
    VkDescriptorSet set;     /* w, x, y, bias */
};
struct vk_matmul {
    enum vk_kernel kern;
    uint32_t rows, cols;
    uint32_t rows_per_wg;            /* rows one work group covers */
    uint32_t group_size;             /* quantized: columns per (scale, bias); else 0 */
    int n_chunks;
    struct vk_matmul_chunk *chunks;  /* [n_chunks] */
};

/* Uploads w (F32, F16, BF16, or MLX 4/8-bit with scales and biases widened
 * to f32; `what` names it in messages). */
int vk_matmul_create(struct vk_ctx *c, const struct ifd_weight *w, const char *what, struct vk_matmul *ret,
                     ifd_error *err);
/* Binds the activations: x [n, cols], y [n, rows] (strides given at record),
 * bias f32 [rows] or buf VK_NULL_HANDLE. */
int vk_matmul_bind(struct vk_ctx *c, struct vk_matmul *mm, struct vk_range x, struct vk_range y,
                   struct vk_range bias, ifd_error *err);
/* Records y (+)= W x (+ bias) for n_tokens into c->cb; flags VK_MM_*. */
void vk_matmul_record(struct vk_ctx *c, const struct vk_matmul *mm, uint32_t n_tokens, uint32_t x_stride,
                      uint32_t y_stride, uint32_t flags);
void vk_matmul_finish(struct vk_matmul *mm); /* device memory goes with the pool */

/* Whole-buffer binding. */
static inline struct vk_range vk_range_of(const struct vk_buffer *b)
{
    struct vk_range r = {b->buf, 0, b->size};
    return r;
}
