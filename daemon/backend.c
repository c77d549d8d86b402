#include "backend.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>

#include "model/cpu_stage.h"
#include "inferd-build-config.h"
#include "log.h"
#if INFERD_HAVE_VULKAN
#include "vk_device.h"
#include "vk_stage.h"
#endif

static int cpu_create(const struct model *m, int first, int last, int n_seq_max, int n_ctx, int n_batch_max,
                      struct thread_pool *pool, struct stage **ret, ifd_error *err)
{
    struct stage *s;
    int r = cpu_stage_create(m, first, last, n_seq_max, n_ctx, pool, &s, err);
    if (r < 0)
        return r;
    if ((r = stage_reserve_batch(s, n_batch_max, err)) < 0) {
        stage_destroy(s);
        return r;
    }
    *ret = s;
    return 0;
}

#if INFERD_HAVE_VULKAN
static int vulkan_create(int device, const struct model *m, int first, int last,
                         int n_seq_max, int n_ctx, int n_batch_max, struct stage **ret, ifd_error *err)
{
    struct vk_stage_opts o = {.device = device, .n_batch_max = n_batch_max};
    int r = vk_stage_create(m, first, last, n_seq_max, n_ctx, &o, ret, err);
    if (r < 0)
        ifd_error_prefix(err, "backend=vulkan, device %d", device);
    return r;
}
#endif

int backend_stage_create(enum inferd_backend backend, int device, const struct model *m, int first, int last,
                         int n_seq_max, int n_ctx, int n_batch_max, struct thread_pool *pool,
                         struct stage **ret, const char **ret_name, ifd_error *err)
{
    int r;
    switch (backend) {
    case INFERD_BACKEND_VULKAN:
#if INFERD_HAVE_VULKAN
        if ((r = vulkan_create(device, m, first, last, n_seq_max, n_ctx, n_batch_max, ret, err)) < 0)
            return r;
        *ret_name = "vulkan";
        return 0;
#else
        return ifd_error_set(err, -ENOTSUP, "backend=vulkan: this build of inferd has no Vulkan support");
#endif
    case INFERD_BACKEND_AUTO:
#if INFERD_HAVE_VULKAN
        if (vk_device_hardware_available()) {
            r = vulkan_create(device, m, first, last, n_seq_max, n_ctx, n_batch_max, ret, err);
            if (r >= 0) {
                *ret_name = "vulkan";
                return 0;
            }
            log_warn("backend=auto: the Vulkan stage failed (%s); using the CPU", err ? err->msg : "");
        } else {
            log_info("backend=auto: no hardware Vulkan device; using the CPU");
        }
#else
        log_info("backend=auto: built without Vulkan; using the CPU");
#endif
        break;
    case INFERD_BACKEND_CPU:
        break;
    }
    if ((r = cpu_create(m, first, last, n_seq_max, n_ctx, n_batch_max, pool, ret, err)) < 0)
        return r;
    *ret_name = "cpu";
    return 0;
}

bool backend_runs_on_cpu(enum inferd_backend backend)
{
    switch (backend) {
    case INFERD_BACKEND_CPU:
        return true;
    case INFERD_BACKEND_AUTO:
#if INFERD_HAVE_VULKAN
        return !vk_device_hardware_available();
#else
        return true;
#endif
    case INFERD_BACKEND_VULKAN:
        break;
    }
    return false;
}

/* MemAvailable of /proc/meminfo (free memory plus what the kernel can reclaim
 * without swapping), in bytes; the free page count where it is missing. */
uint64_t backend_mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    char line[256];
    uint64_t kib = 0;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "MemAvailable: %" SCNu64 " kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    if (kib)
        return kib * 1024;
    long pages = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 0;
}
