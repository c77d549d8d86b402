/* vk_pipeline.h - compute pipelines of the embedded shaders, their push
 * constants, descriptor sets and the recording helpers.
 *
 * Every kernel uses the same layout: VK_MAX_BINDINGS storage buffers at set 0
 * and a 128-byte push-constant range, so one pipeline layout serves all and a
 * descriptor set is made once per dispatch site when a stage is built (the
 * buffers never change); only push constants change per step. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <vulkan/vulkan.h>

#include "base/error.h"
#include "vk_device.h"

#define VK_MAX_BINDINGS 6
#define VK_WG 64 /* work-group size of every shader (common.glsl WG) */
#define VK_MM_TB 8 /* tokens per matmul work group (matmul.comp MM_TB) */
#define VK_ATT_HEAD_DIM_MAX 256 /* attention.comp: WG * ATT_DPT */

enum vk_kernel {
    VK_KERN_MATMUL_F32 = 0,
    VK_KERN_MATMUL_F16,
    VK_KERN_MATMUL_BF16,
    VK_KERN_MATMUL_Q4,       /* MLX affine 4-bit */
    VK_KERN_MATMUL_Q8,       /* MLX affine 8-bit */
    VK_KERN_RMSNORM,
    VK_KERN_ROPE,
    VK_KERN_KV_STORE,
    VK_KERN_ATTENTION,
    VK_KERN_SILU_MUL,
    VK_KERN_COUNT
};

/* C mirrors of the shaders' push-constant blocks (std430 scalars: same layout). */
struct vk_push_matmul {          /* matmul.comp */
    uint32_t rows, cols, n_tokens, x_stride, y_stride, row_offset, flags;
    uint32_t rows_per_wg;        /* subgroup path: rows per work group; else 1 */
    uint32_t group_size;         /* quantized weights: columns per (scale, bias) */
};
#define VK_MM_BIAS 1u
#define VK_MM_ACCUMULATE 2u
struct vk_push_rmsnorm {         /* rmsnorm.comp */
    uint32_t n_cols;
    float eps;
};
struct vk_push_rope {            /* rope.comp */
    uint32_t n_tokens, n_heads, head_dim;
};
struct vk_push_kv_store {        /* kv_store.comp */
    uint32_t n_tokens, kv_dim, n_ctx;
};
struct vk_push_attention {       /* attention.comp */
    uint32_t n_heads, n_kv_heads, head_dim, n_ctx;
    float scale;
};
struct vk_push_silu_mul {        /* silu_mul.comp */
    uint32_t n;
};
_Static_assert(sizeof(struct vk_push_matmul) == 36 && sizeof(struct vk_push_matmul) <= 128, "matmul push");
_Static_assert(sizeof(struct vk_push_rmsnorm) == 8, "rmsnorm push");
_Static_assert(sizeof(struct vk_push_rope) == 12, "rope push");
_Static_assert(sizeof(struct vk_push_kv_store) == 12, "kv_store push");
_Static_assert(sizeof(struct vk_push_attention) == 20 && sizeof(struct vk_push_attention) <= 128, "attention push");
_Static_assert(sizeof(struct vk_push_silu_mul) == 4, "silu_mul push");

struct vk_pipelines {
    VkDevice dev;
    VkDescriptorSetLayout set_layout;
    VkPipelineLayout layout;
    VkPipeline pipe[VK_KERN_COUNT];
    bool subgroup;                   /* the subgroup variants were chosen */
    VkDescriptorPool *dpools;        /* grown on demand, VK_SETS_PER_POOL sets each */
    int n_dpools;
};

/* Builds every pipeline. use_subgroup picks the subgroupAdd variants (only
 * when d->subgroup_arith); false forces the portable shared-memory path. */
int vk_pipelines_init(struct vk_pipelines *pl, const struct vk_device *d, bool use_subgroup, ifd_error *err);
void vk_pipelines_finish(struct vk_pipelines *pl); /* accepts a zeroed struct */

/* One storage-buffer binding; buf VK_NULL_HANDLE means unused. */
struct vk_range {
    VkBuffer buf;
    VkDeviceSize offset, size;
};

/* Allocates and writes a descriptor set for b[0..VK_MAX_BINDINGS); unused
 * bindings get `dummy`. Sets live until vk_pipelines_finish. */
int vk_pipelines_set_create(struct vk_pipelines *pl, const struct vk_range b[VK_MAX_BINDINGS],
                            VkBuffer dummy, VkDescriptorSet *ret, ifd_error *err);

void vk_cmd_dispatch(VkCommandBuffer cb, const struct vk_pipelines *pl, enum vk_kernel k, VkDescriptorSet set,
                     const void *push, uint32_t push_size, uint32_t gx, uint32_t gy);
/* Makes the writes of earlier dispatches visible to later ones. */
void vk_cmd_barrier(VkCommandBuffer cb);
/* Work groups for an element-wise op over n invocations, folded into y so x
 * stays within max_x (the shader recovers the flat index). */
void vk_grid_1d(uint64_t n, uint32_t max_x, uint32_t *ret_gx, uint32_t *ret_gy);
/* Matmul kernel for a weight dtype; -1 if unsupported. */
int vk_kernel_for_dtype(int ifd_dtype);
