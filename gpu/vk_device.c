/* vk_device.c - Vulkan instance and device selection (see vk_device.h). */
#include "vk_device.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Upper bound on physical devices looked at; a machine has a handful. */
#define VK_DEVICE_MAX 16

const char *vk_result_name(VkResult r)
{
    switch (r) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_NOT_READY: return "VK_NOT_READY";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    case VK_INCOMPLETE: return "VK_INCOMPLETE";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED: return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_OUT_OF_POOL_MEMORY: return "VK_ERROR_OUT_OF_POOL_MEMORY";
    default: return "VkResult error";
    }
}

/* Selection rank: lower is preferred. */
static int type_rank(VkPhysicalDeviceType t)
{
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 0;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 1;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return 3;
    default: return 4;
    }
}

static const char *type_name(VkPhysicalDeviceType t)
{
    static const char *const names[] = {"discrete", "integrated", "virtual", "cpu", "other"};
    return names[type_rank(t)];
}

static int instance_create(VkInstance *ret, ifd_error *err)
{
    VkApplicationInfo app = {
        .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
        .pApplicationName = "inferd",
        .pEngineName = "inferd",
        .apiVersion = VK_API_VERSION_1_1,
    };
    VkInstanceCreateInfo ici = {
        .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
        .pApplicationInfo = &app,
    };
    VkResult r = vkCreateInstance(&ici, NULL, ret);
    if (r != VK_SUCCESS)
        return ifd_error_set(err, -ENODEV, "vulkan: vkCreateInstance failed: %s", vk_result_name(r));
    return 0;
}

static int compute_queue_family(VkPhysicalDevice pd)
{
    uint32_t n = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, NULL);
    VkQueueFamilyProperties qf[16];
    if (n > 16)
        n = 16;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, qf);
    /* a compute-only family is the dedicated compute engine on discrete GPUs */
    for (uint32_t i = 0; i < n; i++)
        if ((qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) && !(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT))
            return (int)i;
    for (uint32_t i = 0; i < n; i++)
        if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT)
            return (int)i;
    return -1;
}

static void info_fill(VkPhysicalDevice pd, struct vk_device_info *info)
{
    VkPhysicalDeviceProperties p;
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceProperties(pd, &p);
    vkGetPhysicalDeviceMemoryProperties(pd, &mp);
    memset(info, 0, sizeof(*info));
    snprintf(info->name, sizeof(info->name), "%s", p.deviceName);
    info->type_name = type_name(p.deviceType);
    info->api_version = p.apiVersion;
    for (uint32_t i = 0; i < mp.memoryHeapCount; i++)
        if ((mp.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) &&
            mp.memoryHeaps[i].size > info->device_local_bytes)
            info->device_local_bytes = mp.memoryHeaps[i].size;
}

/* Usable physical devices of `inst` in selection order (stable within a rank). */
static int phys_sorted(VkInstance inst, VkPhysicalDevice *out, int *ret_n, ifd_error *err)
{
    uint32_t n = VK_DEVICE_MAX;
    VkPhysicalDevice all[VK_DEVICE_MAX];
    VkResult r = vkEnumeratePhysicalDevices(inst, &n, all);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE)
        return ifd_error_set(err, -ENODEV, "vulkan: vkEnumeratePhysicalDevices failed: %s", vk_result_name(r));
    int k = 0;
    for (int rank = 0; rank <= 4; rank++) {
        for (uint32_t i = 0; i < n; i++) {
            VkPhysicalDeviceProperties p;
            vkGetPhysicalDeviceProperties(all[i], &p);
            if (type_rank(p.deviceType) != rank || p.apiVersion < VK_API_VERSION_1_1 ||
                compute_queue_family(all[i]) < 0)
                continue;
            out[k++] = all[i];
        }
    }
    *ret_n = k;
    return 0;
}

/* The instance behind vk_device_list(), made once and kept for the life of
 * the process. Listing happens at startup (backend = auto probes it), and
 * destroying an instance makes the loader unload the drivers: Mesa's lavapipe
 * leaves allocations behind when it is unloaded, which LeakSanitizer then
 * reports against an unknown module in every ASan run of the daemon. Kept
 * alive, the driver stays loaded and its memory reachable. */
static VkInstance list_instance;
static int list_instance_rc;
static ifd_error list_instance_err;

static void list_instance_init(void)
{
    list_instance_rc = instance_create(&list_instance, &list_instance_err);
}

int vk_device_list(struct vk_device_info **ret, int *ret_n, ifd_error *err)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, list_instance_init);
    if (list_instance_rc < 0) {
        if (err)
            *err = list_instance_err;
        return list_instance_rc;
    }
    VkPhysicalDevice pd[VK_DEVICE_MAX];
    int n = 0;
    int rc = phys_sorted(list_instance, pd, &n, err);
    if (rc < 0)
        return rc;
    struct vk_device_info *infos = calloc(n > 0 ? (size_t)n : 1, sizeof(*infos));
    if (!infos)
        return ifd_error_set(err, -ENOMEM, "vulkan: out of memory listing devices");
    for (int i = 0; i < n; i++)
        info_fill(pd[i], &infos[i]);
    *ret = infos;
    *ret_n = n;
    return 0;
}

bool vk_device_available(void)
{
    struct vk_device_info *infos = NULL;
    int n = 0;
    if (vk_device_list(&infos, &n, NULL) < 0)
        return false;
    free(infos);
    return n > 0;
}

bool vk_device_hardware_available(void)
{
    struct vk_device_info *infos = NULL;
    int n = 0;
    if (vk_device_list(&infos, &n, NULL) < 0)
        return false;
    bool hw = n > 0 && strcmp(infos[0].type_name, "cpu") != 0 && strcmp(infos[0].type_name, "other") != 0;
    free(infos);
    return hw;
}

int vk_device_memory_type(const struct vk_device *d, uint32_t type_bits, VkMemoryPropertyFlags want)
{
    for (uint32_t i = 0; i < d->mem_props.memoryTypeCount; i++)
        if ((type_bits & (1u << i)) && (d->mem_props.memoryTypes[i].propertyFlags & want) == want)
            return (int)i;
    return -1;
}

int vk_device_create(int index, struct vk_device **ret, ifd_error *err)
{
    struct vk_device *d = calloc(1, sizeof(*d));
    if (!d)
        return ifd_error_set(err, -ENOMEM, "vulkan: out of memory");
    int rc = instance_create(&d->instance, err);
    if (rc < 0) {
        free(d);
        return rc;
    }
    VkPhysicalDevice pd[VK_DEVICE_MAX];
    int n = 0;
    rc = phys_sorted(d->instance, pd, &n, err);
    if (rc < 0)
        goto fail;
    if (n == 0) {
        rc = ifd_error_set(err, -ENODEV, "vulkan: no Vulkan 1.1 device with a compute queue");
        goto fail;
    }
    if (index < 0 || index >= n) {
        rc = ifd_error_set(err, -ENODEV, "vulkan: device %d does not exist (%d device%s: 0..%d)",
                           index, n, n == 1 ? "" : "s", n - 1);
        goto fail;
    }
    d->phys = pd[index];
    d->queue_family = (uint32_t)compute_queue_family(d->phys);
    info_fill(d->phys, &d->info);

    VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceMaintenance3Properties m3 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES, .pNext = &sg};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &m3};
    vkGetPhysicalDeviceProperties2(d->phys, &p2);
    d->props = p2.properties;
    vkGetPhysicalDeviceMemoryProperties(d->phys, &d->mem_props);
    d->subgroup_size = sg.subgroupSize;
    /* the reduction in reduce.glsl needs arithmetic ops in compute, and a
     * subgroup size that divides the 64-wide work group */
    d->subgroup_arith = (sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                        (sg.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT) &&
                        (sg.supportedOperations & VK_SUBGROUP_FEATURE_BASIC_BIT) &&
                        sg.subgroupSize >= 4 && sg.subgroupSize <= 64 && 64 % sg.subgroupSize == 0;
    d->max_storage_range = d->props.limits.maxStorageBufferRange;
    d->max_alloc = m3.maxMemoryAllocationSize ? m3.maxMemoryAllocationSize : (1ull << 30);
    for (int i = 0; i < 3; i++)
        d->max_groups[i] = d->props.limits.maxComputeWorkGroupCount[i];
    if (d->props.limits.maxComputeWorkGroupSize[0] < 64 ||
        d->props.limits.maxComputeWorkGroupInvocations < 64 ||
        d->props.limits.maxPushConstantsSize < 128 ||
        d->props.limits.maxComputeSharedMemorySize < 8192) {
        rc = ifd_error_set(err, -ENODEV, "vulkan: device '%s' is below the limits the kernels need "
                           "(64-wide work groups, 128-byte push constants, 8 KiB shared memory)",
                           d->info.name);
        goto fail;
    }

    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
        .queueFamilyIndex = d->queue_family,
        .queueCount = 1,
        .pQueuePriorities = &prio,
    };
    VkDeviceCreateInfo dci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
        .queueCreateInfoCount = 1,
        .pQueueCreateInfos = &qci,
    };
    VkResult r = vkCreateDevice(d->phys, &dci, NULL, &d->dev);
    if (r != VK_SUCCESS) {
        rc = ifd_error_set(err, -ENODEV, "vulkan: vkCreateDevice('%s') failed: %s", d->info.name,
                           vk_result_name(r));
        goto fail;
    }
    vkGetDeviceQueue(d->dev, d->queue_family, 0, &d->queue);
    *ret = d;
    return 0;
fail:
    vkDestroyInstance(d->instance, NULL);
    free(d);
    return rc;
}

void vk_device_destroy(struct vk_device *d)
{
    if (!d)
        return;
    if (d->dev) {
        vkDeviceWaitIdle(d->dev);
        vkDestroyDevice(d->dev, NULL);
    }
    vkDestroyInstance(d->instance, NULL);
    free(d);
}
