/* gpu_test.h - what the Vulkan test suites share. */
#pragma once

#include <criterion/criterion.h>
#include <vulkan/vulkan.h>

#include "vk_device.h"

/* Skips the calling test, visibly, when no Vulkan device exists.
 * First it opens an instance that is never closed, so that the loader keeps
 * the driver (lavapipe and its LLVM) loaded until exit: the driver's static
 * allocations then stay reachable. Unloaded after each vkDestroyInstance,
 * LLVM leaves 256 bytes per load that LeakSanitizer reports (in CI's ASan
 * run) with no module name to suppress them by. */
static inline void gpu_test_need_device(void)
{
    static VkInstance pin;
    if (!pin) {
        VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .apiVersion = VK_API_VERSION_1_1};
        VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
        if (vkCreateInstance(&ci, NULL, &pin) != VK_SUCCESS)
            pin = VK_NULL_HANDLE;
        if (pin) { /* the driver loads its compiler with the first physical device query */
            uint32_t n = 0;
            vkEnumeratePhysicalDevices(pin, &n, NULL);
        }
    }
    if (!vk_device_available())
        cr_skip_test("no Vulkan device (install mesa-vulkan-drivers for lavapipe): test skipped");
}
