/* vk_memory.c - device memory pools split by lifetime (see vk_memory.h). */
#include "vk_memory.h"

#include <errno.h>
#include <stdlib.h>

struct vk_block {
    VkDeviceMemory mem;
    uint32_t type;             /* memory type index */
    VkDeviceSize size, used;
    void *map;
};

struct vk_pool {
    struct vk_device *d;
    enum vk_pool_kind kind;
    VkDeviceSize block_bytes;
    struct vk_block *blocks;
    int n_blocks, cap_blocks;
    VkBuffer *bufs;            /* every buffer made, destroyed with the pool */
    int n_bufs, cap_bufs;
    uint64_t bytes;
};

static const VkBufferUsageFlags buffer_usage =
    VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;

int vk_pool_create(struct vk_device *d, enum vk_pool_kind kind, VkDeviceSize block_bytes,
                   struct vk_pool **ret, ifd_error *err)
{
    struct vk_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return ifd_error_set(err, -ENOMEM, "vulkan: out of memory");
    p->d = d;
    p->kind = kind;
    p->block_bytes = block_bytes < d->max_alloc ? block_bytes : d->max_alloc;
    *ret = p;
    return 0;
}

void vk_pool_destroy(struct vk_pool *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n_bufs; i++)
        vkDestroyBuffer(p->d->dev, p->bufs[i], NULL);
    for (int i = 0; i < p->n_blocks; i++) {
        if (p->blocks[i].map)
            vkUnmapMemory(p->d->dev, p->blocks[i].mem);
        vkFreeMemory(p->d->dev, p->blocks[i].mem, NULL);
    }
    free(p->bufs);
    free(p->blocks);
    free(p);
}

uint64_t vk_pool_bytes(const struct vk_pool *p)
{
    return p ? p->bytes : 0;
}

static int block_add(struct vk_pool *p, VkDeviceSize size, uint32_t type_bits, const char *what, ifd_error *err)
{
    struct vk_device *d = p->d;
    int type = -1;
    if (p->kind == VK_POOL_DEVICE) {
        type = vk_device_memory_type(d, type_bits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
        if (type < 0) /* a device without a device-local type for buffers: take any */
            type = vk_device_memory_type(d, type_bits, 0);
    } else {
        type = vk_device_memory_type(d, type_bits, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                                       VK_MEMORY_PROPERTY_HOST_COHERENT_BIT |
                                                       VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
        if (type < 0)
            type = vk_device_memory_type(d, type_bits, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                                           VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);
    }
    if (type < 0)
        return ifd_error_set(err, -ENODEV, "vulkan: no suitable memory type for %s", what);
    if (p->n_blocks == p->cap_blocks) {
        int cap = p->cap_blocks ? p->cap_blocks * 2 : 8;
        struct vk_block *nb = realloc(p->blocks, (size_t)cap * sizeof(*nb));
        if (!nb)
            return ifd_error_set(err, -ENOMEM, "vulkan: out of memory");
        p->blocks = nb;
        p->cap_blocks = cap;
    }
    VkMemoryAllocateInfo mai = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
        .allocationSize = size,
        .memoryTypeIndex = (uint32_t)type,
    };
    struct vk_block *b = &p->blocks[p->n_blocks];
    *b = (struct vk_block){.size = size, .type = (uint32_t)type};
    VkResult r = vkAllocateMemory(d->dev, &mai, NULL, &b->mem);
    if (r != VK_SUCCESS)
        return ifd_error_set(err, -ENOMEM, "vulkan: allocating %llu bytes of %s memory for %s: %s",
                             (unsigned long long)size, p->kind == VK_POOL_DEVICE ? "device" : "host",
                             what, vk_result_name(r));
    if (p->kind == VK_POOL_HOST) {
        r = vkMapMemory(d->dev, b->mem, 0, VK_WHOLE_SIZE, 0, &b->map);
        if (r != VK_SUCCESS) {
            vkFreeMemory(d->dev, b->mem, NULL);
            return ifd_error_set(err, -EIO, "vulkan: mapping memory for %s: %s", what, vk_result_name(r));
        }
    }
    p->n_blocks++;
    p->bytes += size;
    return 0;
}

int vk_pool_buffer_create(struct vk_pool *p, VkDeviceSize size, const char *what,
                          struct vk_buffer *ret, ifd_error *err)
{
    struct vk_device *d = p->d;
    if (size == 0 || size > d->max_alloc)
        return ifd_error_set(err, -E2BIG, "vulkan: %s needs a buffer of %llu bytes; the device allows 1..%llu",
                             what, (unsigned long long)size, (unsigned long long)d->max_alloc);
    if (p->n_bufs == p->cap_bufs) {
        int cap = p->cap_bufs ? p->cap_bufs * 2 : 64;
        VkBuffer *nb = realloc(p->bufs, (size_t)cap * sizeof(*nb));
        if (!nb)
            return ifd_error_set(err, -ENOMEM, "vulkan: out of memory");
        p->bufs = nb;
        p->cap_bufs = cap;
    }
    VkBufferCreateInfo bci = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = size,
        .usage = buffer_usage,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    VkBuffer buf;
    VkResult r = vkCreateBuffer(d->dev, &bci, NULL, &buf);
    if (r != VK_SUCCESS)
        return ifd_error_set(err, -ENOMEM, "vulkan: vkCreateBuffer for %s: %s", what, vk_result_name(r));
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d->dev, buf, &req);

    /* first fit in the current blocks, else a new block */
    int bi = -1;
    VkDeviceSize off = 0;
    for (int i = 0; i < p->n_blocks && bi < 0; i++) {
        if (!(req.memoryTypeBits & (1u << p->blocks[i].type)))
            continue;
        VkDeviceSize o = (p->blocks[i].used + req.alignment - 1) / req.alignment * req.alignment;
        if (o + req.size <= p->blocks[i].size) {
            bi = i;
            off = o;
        }
    }
    if (bi < 0) {
        VkDeviceSize bsize = req.size > p->block_bytes ? req.size : p->block_bytes;
        int rc = block_add(p, bsize, req.memoryTypeBits, what, err);
        if (rc < 0) {
            vkDestroyBuffer(d->dev, buf, NULL);
            return rc;
        }
        bi = p->n_blocks - 1;
        off = 0;
    }
    r = vkBindBufferMemory(d->dev, buf, p->blocks[bi].mem, off);
    if (r != VK_SUCCESS) {
        vkDestroyBuffer(d->dev, buf, NULL);
        return ifd_error_set(err, -EIO, "vulkan: binding memory for %s: %s", what, vk_result_name(r));
    }
    p->blocks[bi].used = off + req.size;
    p->bufs[p->n_bufs++] = buf;
    ret->buf = buf;
    ret->size = size;
    ret->map = p->blocks[bi].map ? (char *)p->blocks[bi].map + off : NULL;
    return 0;
}
