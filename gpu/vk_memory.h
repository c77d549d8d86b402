/* vk_memory.h - device memory pools split by lifetime.
 *
 * A pool sub-allocates buffers from a few large VkDeviceMemory blocks (so a
 * model of hundreds of tensors stays far below maxMemoryAllocationCount) and
 * frees them all at once: one pool for weights (device-local, filled once
 * through staging), one for activations, scratch and KV cache (device-local,
 * reused every step), one host-visible pool for staging and the per-step
 * input/output. Buffers live as long as their pool. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <vulkan/vulkan.h>

#include "base/error.h"
#include "vk_device.h"

enum vk_pool_kind {
    VK_POOL_DEVICE, /* device-local; not mapped */
    VK_POOL_HOST,   /* host-visible and coherent; mapped */
};

/* A buffer bound into a pool block. Storage, transfer source and destination. */
struct vk_buffer {
    VkBuffer buf;
    VkDeviceSize size;
    void *map;      /* host pools: the mapped bytes; NULL otherwise */
};

struct vk_pool;

/* block_bytes: size of each memory block (capped by the device's
 * maxMemoryAllocationSize; a larger buffer gets a block of its own). */
int vk_pool_create(struct vk_device *d, enum vk_pool_kind kind, VkDeviceSize block_bytes,
                   struct vk_pool **ret, ifd_error *err);
void vk_pool_destroy(struct vk_pool *p); /* destroys every buffer; accepts NULL */

/* A new buffer of `size` bytes (> 0). `what` names it in error messages. */
int vk_pool_buffer_create(struct vk_pool *p, VkDeviceSize size, const char *what,
                          struct vk_buffer *ret, ifd_error *err);

/* Device memory the pool holds (for stage_stats.device_memory_bytes). */
uint64_t vk_pool_bytes(const struct vk_pool *p);
