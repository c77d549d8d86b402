/* vk_pipeline.c - pipelines, descriptor sets and recording helpers (see vk_pipeline.h). */
#include "vk_pipeline.h"

#include <errno.h>
#include <stdlib.h>

#include "model/dtype.h"
#include "spv_attention.h"
#include "spv_kv_store.h"
#include "spv_matmul_bf16.h"
#include "spv_matmul_bf16_sg.h"
#include "spv_matmul_f16.h"
#include "spv_matmul_f16_sg.h"
#include "spv_matmul_f32.h"
#include "spv_matmul_f32_sg.h"
#include "spv_matmul_q4.h"
#include "spv_matmul_q4_sg.h"
#include "spv_matmul_q8.h"
#include "spv_matmul_q8_sg.h"
#include "spv_rmsnorm.h"
#include "spv_rmsnorm_sg.h"
#include "spv_rope.h"
#include "spv_silu_mul.h"

#define VK_SETS_PER_POOL 256

struct spv {
    const uint32_t *code;
    size_t size;      /* bytes */
};
#define SPV(a) {a, sizeof(a)}

/* [kernel][0: portable, 1: subgroup]; kernels without a reduction have one variant. */
static const struct spv spv_table[VK_KERN_COUNT][2] = {
    [VK_KERN_MATMUL_F32] = {SPV(spv_matmul_f32), SPV(spv_matmul_f32_sg)},
    [VK_KERN_MATMUL_F16] = {SPV(spv_matmul_f16), SPV(spv_matmul_f16_sg)},
    [VK_KERN_MATMUL_BF16] = {SPV(spv_matmul_bf16), SPV(spv_matmul_bf16_sg)},
    [VK_KERN_MATMUL_Q4] = {SPV(spv_matmul_q4), SPV(spv_matmul_q4_sg)},
    [VK_KERN_MATMUL_Q8] = {SPV(spv_matmul_q8), SPV(spv_matmul_q8_sg)},
    [VK_KERN_RMSNORM] = {SPV(spv_rmsnorm), SPV(spv_rmsnorm_sg)},
    [VK_KERN_ROPE] = {SPV(spv_rope), SPV(spv_rope)},
    [VK_KERN_KV_STORE] = {SPV(spv_kv_store), SPV(spv_kv_store)},
    [VK_KERN_ATTENTION] = {SPV(spv_attention), SPV(spv_attention)},
    [VK_KERN_SILU_MUL] = {SPV(spv_silu_mul), SPV(spv_silu_mul)},
};

static const char *const kernel_names[VK_KERN_COUNT] = {
    "matmul_f32", "matmul_f16", "matmul_bf16", "matmul_q4", "matmul_q8", "rmsnorm", "rope", "kv_store", "attention", "silu_mul",
};

int vk_kernel_for_dtype(int dtype)
{
    switch (dtype) {
    case IFD_DTYPE_F32: return VK_KERN_MATMUL_F32;
    case IFD_DTYPE_F16: return VK_KERN_MATMUL_F16;
    case IFD_DTYPE_BF16: return VK_KERN_MATMUL_BF16;
    default: return -1;
    }
}

int vk_pipelines_init(struct vk_pipelines *pl, const struct vk_device *d, bool use_subgroup, ifd_error *err)
{
    *pl = (struct vk_pipelines){.dev = d->dev, .subgroup = use_subgroup && d->subgroup_arith};
    VkDescriptorSetLayoutBinding b[VK_MAX_BINDINGS];
    for (int i = 0; i < VK_MAX_BINDINGS; i++)
        b[i] = (VkDescriptorSetLayoutBinding){
            .binding = (uint32_t)i,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .descriptorCount = 1,
            .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
        };
    VkDescriptorSetLayoutCreateInfo dslci = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
        .bindingCount = VK_MAX_BINDINGS,
        .pBindings = b,
    };
    VkResult r = vkCreateDescriptorSetLayout(d->dev, &dslci, NULL, &pl->set_layout);
    if (r != VK_SUCCESS)
        return ifd_error_set(err, -ENOMEM, "vulkan: descriptor set layout: %s", vk_result_name(r));
    VkPushConstantRange pcr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .offset = 0, .size = 128};
    VkPipelineLayoutCreateInfo plci = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .setLayoutCount = 1,
        .pSetLayouts = &pl->set_layout,
        .pushConstantRangeCount = 1,
        .pPushConstantRanges = &pcr,
    };
    r = vkCreatePipelineLayout(d->dev, &plci, NULL, &pl->layout);
    if (r != VK_SUCCESS) {
        vk_pipelines_finish(pl);
        return ifd_error_set(err, -ENOMEM, "vulkan: pipeline layout: %s", vk_result_name(r));
    }
    for (int k = 0; k < VK_KERN_COUNT; k++) {
        const struct spv *s = &spv_table[k][pl->subgroup ? 1 : 0];
        VkShaderModuleCreateInfo smci = {
            .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
            .codeSize = s->size,
            .pCode = s->code,
        };
        VkShaderModule mod;
        r = vkCreateShaderModule(d->dev, &smci, NULL, &mod);
        if (r != VK_SUCCESS) {
            vk_pipelines_finish(pl);
            return ifd_error_set(err, -EIO, "vulkan: shader module %s: %s", kernel_names[k], vk_result_name(r));
        }
        VkComputePipelineCreateInfo cpci = {
            .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
            .stage = {
                .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                .module = mod,
                .pName = "main",
            },
            .layout = pl->layout,
        };
        r = vkCreateComputePipelines(d->dev, VK_NULL_HANDLE, 1, &cpci, NULL, &pl->pipe[k]);
        vkDestroyShaderModule(d->dev, mod, NULL);
        if (r != VK_SUCCESS) {
            vk_pipelines_finish(pl);
            return ifd_error_set(err, -EIO, "vulkan: compute pipeline %s: %s", kernel_names[k], vk_result_name(r));
        }
    }
    return 0;
}

void vk_pipelines_finish(struct vk_pipelines *pl)
{
    if (!pl->dev)
        return;
    for (int i = 0; i < pl->n_dpools; i++)
        vkDestroyDescriptorPool(pl->dev, pl->dpools[i], NULL);
    free(pl->dpools);
    for (int k = 0; k < VK_KERN_COUNT; k++)
        if (pl->pipe[k])
            vkDestroyPipeline(pl->dev, pl->pipe[k], NULL);
    if (pl->layout)
        vkDestroyPipelineLayout(pl->dev, pl->layout, NULL);
    if (pl->set_layout)
        vkDestroyDescriptorSetLayout(pl->dev, pl->set_layout, NULL);
    *pl = (struct vk_pipelines){0};
}

static int dpool_add(struct vk_pipelines *pl, ifd_error *err)
{
    VkDescriptorPool *np = realloc(pl->dpools, (size_t)(pl->n_dpools + 1) * sizeof(*np));
    if (!np)
        return ifd_error_set(err, -ENOMEM, "vulkan: out of memory");
    pl->dpools = np;
    VkDescriptorPoolSize ps = {
        .type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
        .descriptorCount = VK_SETS_PER_POOL * VK_MAX_BINDINGS,
    };
    VkDescriptorPoolCreateInfo dpci = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
        .maxSets = VK_SETS_PER_POOL,
        .poolSizeCount = 1,
        .pPoolSizes = &ps,
    };
    VkResult r = vkCreateDescriptorPool(pl->dev, &dpci, NULL, &pl->dpools[pl->n_dpools]);
    if (r != VK_SUCCESS)
        return ifd_error_set(err, -ENOMEM, "vulkan: descriptor pool: %s", vk_result_name(r));
    pl->n_dpools++;
    return 0;
}

/* One set of the common layout from the newest pool. */
static VkResult set_alloc(struct vk_pipelines *pl, VkDescriptorSet *ret)
{
    VkDescriptorSetAllocateInfo dsai = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
        .descriptorPool = pl->dpools[pl->n_dpools - 1],
        .descriptorSetCount = 1,
        .pSetLayouts = &pl->set_layout,
    };
    return vkAllocateDescriptorSets(pl->dev, &dsai, ret);
}

int vk_pipelines_set_create(struct vk_pipelines *pl, const struct vk_range b[VK_MAX_BINDINGS],
                            VkBuffer dummy, VkDescriptorSet *ret, ifd_error *err)
{
    VkDescriptorSet set = VK_NULL_HANDLE;
    VkResult r = pl->n_dpools > 0 ? set_alloc(pl, &set) : VK_ERROR_OUT_OF_POOL_MEMORY;
    /* The newest pool is full (or there is none yet): a new one is added. */
    if (r == VK_ERROR_OUT_OF_POOL_MEMORY || r == VK_ERROR_FRAGMENTED_POOL) {
        int rc = dpool_add(pl, err);
        if (rc < 0)
            return rc;
        r = set_alloc(pl, &set);
    }
    if (r != VK_SUCCESS)
        return ifd_error_set(err, -ENOMEM, "vulkan: descriptor set: %s", vk_result_name(r));

    VkDescriptorBufferInfo dbi[VK_MAX_BINDINGS];
    VkWriteDescriptorSet w[VK_MAX_BINDINGS];
    for (int i = 0; i < VK_MAX_BINDINGS; i++) {
        if (b[i].buf)
            dbi[i] = (VkDescriptorBufferInfo){b[i].buf, b[i].offset, b[i].size ? b[i].size : VK_WHOLE_SIZE};
        else
            dbi[i] = (VkDescriptorBufferInfo){dummy, 0, VK_WHOLE_SIZE};
        w[i] = (VkWriteDescriptorSet){
            .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
            .dstSet = set,
            .dstBinding = (uint32_t)i,
            .descriptorCount = 1,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .pBufferInfo = &dbi[i],
        };
    }
    vkUpdateDescriptorSets(pl->dev, VK_MAX_BINDINGS, w, 0, NULL);
    *ret = set;
    return 0;
}

void vk_cmd_dispatch(VkCommandBuffer cb, const struct vk_pipelines *pl, enum vk_kernel k, VkDescriptorSet set,
                     const void *push, uint32_t push_size, uint32_t gx, uint32_t gy)
{
    vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, pl->pipe[k]);
    vkCmdBindDescriptorSets(cb, VK_PIPELINE_BIND_POINT_COMPUTE, pl->layout, 0, 1, &set, 0, NULL);
    vkCmdPushConstants(cb, pl->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, push_size, push);
    vkCmdDispatch(cb, gx, gy, 1);
}

void vk_cmd_barrier(VkCommandBuffer cb)
{
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                         VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
    };
    vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                         VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                         0, 1, &mb, 0, NULL, 0, NULL);
}

void vk_grid_1d(uint64_t n, uint32_t max_x, uint32_t *ret_gx, uint32_t *ret_gy)
{
    uint64_t groups = (n + VK_WG - 1) / VK_WG;
    if (groups == 0)
        groups = 1;
    uint64_t gx = groups < max_x ? groups : max_x;
    *ret_gx = (uint32_t)gx;
    *ret_gy = (uint32_t)((groups + gx - 1) / gx);
}
