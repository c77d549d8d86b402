/* vk_device.h - Vulkan instance and device selection.
 *
 * Devices are ordered discrete GPU first, then integrated, then virtual, then
 * CPU implementations (lavapipe), then anything else; `device = N` in the
 * configuration is an index into that order. Nothing here logs: failures come
 * back as -errno with a message in ifd_error. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <vulkan/vulkan.h>

#include "base/error.h"

#define VK_DEVICE_NAME_MAX 256

/* What the daemon shows about one device (inferctl status, --list-devices). */
struct vk_device_info {
    char name[VK_DEVICE_NAME_MAX];
    const char *type_name;       /* "discrete", "integrated", "virtual", "cpu", "other" */
    uint64_t device_local_bytes; /* size of the largest device-local heap */
    uint32_t api_version;
};

/* An opened device and what the kernels need to know of its limits.
 * Owned by whoever created it (vk_device_create / vk_device_destroy). */
struct vk_device {
    VkInstance instance;
    VkPhysicalDevice phys;
    VkDevice dev;
    VkQueue queue;
    uint32_t queue_family;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties mem_props;
    struct vk_device_info info;
    bool subgroup_arith;         /* subgroupAdd usable in compute shaders */
    uint32_t subgroup_size;
    uint64_t max_storage_range;  /* maxStorageBufferRange */
    uint64_t max_alloc;          /* maxMemoryAllocationSize (maintenance3) */
    uint32_t max_groups[3];      /* maxComputeWorkGroupCount */
};

/* Lists the usable devices (Vulkan >= 1.1 with a compute queue) in selection
 * order. *ret is malloc'ed, free() it. No device is not an error: *ret_n = 0.
 * A missing loader or a failing instance is an error. */
int vk_device_list(struct vk_device_info **ret, int *ret_n, ifd_error *err);

/* True if at least one usable device exists (backend = vulkan can start). */
bool vk_device_available(void);

/* True if device 0 of the selection order is a GPU (discrete, integrated or
 * virtual), not a CPU implementation such as lavapipe: what backend = auto
 * should take, since a software device is slower than the CPU stage. */
bool vk_device_hardware_available(void);

/* Opens device `index` of vk_device_list()'s order. */
int vk_device_create(int index, struct vk_device **ret, ifd_error *err);
void vk_device_destroy(struct vk_device *d); /* accepts NULL */

/* Index of a memory type allowed by type_bits with all of `want`; -1 if none. */
int vk_device_memory_type(const struct vk_device *d, uint32_t type_bits, VkMemoryPropertyFlags want);

/* Short name of a VkResult for messages. */
const char *vk_result_name(VkResult r);
