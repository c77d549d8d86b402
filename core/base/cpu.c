/* cpu.c - CPU feature detection, once; see cpu.h. */
#include "base/cpu.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

static struct cpu_features features;
static enum cpu_simd best = CPU_SIMD_SCALAR;
/* The level in use, -1 until detected; read on every dispatch, so the common
 * case is one load (acquire: seeing it set means seeing `features` too). */
static _Atomic int level = -1;
static pthread_once_t once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__)
#include <cpuid.h>

/* AVX-VNNI is CPUID leaf 7 subleaf 1, EAX bit 4; GCC 12's
 * __builtin_cpu_supports() does not know it. */
static bool avx_vnni_bit(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d))
        return false;
    return (a >> 4) & 1;
}
#endif

static void cpu_detect(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    features.avx2_fma_f16c =
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    features.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma");
    features.avx512_vnni = features.avx512 && __builtin_cpu_supports("avx512vnni");
    features.avx_vnni = features.avx2_fma_f16c && avx_vnni_bit();
    features.sse42 = __builtin_cpu_supports("sse4.2");
#endif
    best = features.avx512     ? CPU_SIMD_AVX512
           : features.avx_vnni  ? CPU_SIMD_AVX2_VNNI
           : features.avx2_fma_f16c ? CPU_SIMD_AVX2
                                : CPU_SIMD_SCALAR;
    atomic_store_explicit(&level, best, memory_order_release);
}

const struct cpu_features *cpu_features(void)
{
    pthread_once(&once, cpu_detect);
    return &features;
}

enum cpu_simd cpu_simd_best(void)
{
    pthread_once(&once, cpu_detect);
    return best;
}

enum cpu_simd cpu_simd_level(void)
{
    int l = atomic_load_explicit(&level, memory_order_acquire);
    if (l < 0) {
        pthread_once(&once, cpu_detect);
        l = atomic_load_explicit(&level, memory_order_acquire);
    }
    return (enum cpu_simd)l;
}

bool cpu_simd_supported(enum cpu_simd l)
{
    const struct cpu_features *f = cpu_features();
    switch (l) {
    case CPU_SIMD_SCALAR: return true;
    case CPU_SIMD_AVX2: return f->avx2_fma_f16c;
    case CPU_SIMD_AVX2_VNNI: return f->avx_vnni;
    case CPU_SIMD_AVX512: return f->avx512;
    }
    return false;
}

bool cpu_simd_vnni512(void)
{
    return cpu_simd_level() == CPU_SIMD_AVX512 && features.avx512_vnni;
}

int cpu_simd_force(enum cpu_simd l)
{
    if (!cpu_simd_supported(l)) /* detects */
        return -ENOTSUP;
    atomic_store_explicit(&level, l, memory_order_release);
    return 0;
}

static const char *const names[] = {
    [CPU_SIMD_SCALAR] = "scalar",
    [CPU_SIMD_AVX2] = "avx2",
    [CPU_SIMD_AVX2_VNNI] = "avx2-vnni",
    [CPU_SIMD_AVX512] = "avx512",
};

const char *cpu_simd_name(enum cpu_simd l)
{
    return l >= 0 && l < CPU_SIMD_COUNT ? names[l] : "unknown";
}

int cpu_simd_from_name(const char *name, enum cpu_simd *ret)
{
    for (int i = 0; i < CPU_SIMD_COUNT; i++)
        if (strcmp(name, names[i]) == 0) {
            *ret = (enum cpu_simd)i;
            return 0;
        }
    return -EINVAL;
}

int cpu_simd_choose(const char *name, const char *what, int *ret, ifd_error *err)
{
    enum cpu_simd l;
    if (strcmp(name, "auto") == 0) {
        *ret = -1;
        return 0;
    }
    if (cpu_simd_from_name(name, &l) < 0)
        return ifd_error_set(err, -EINVAL, "%s: '%s' is not a SIMD level (auto, scalar, avx2, avx2-vnni or avx512)",
                             what, name);
    if (!cpu_simd_supported(l))
        return ifd_error_set(err, -ENOTSUP, "%s: this CPU cannot run '%s' (the best it has is '%s')", what, name,
                             cpu_simd_name(cpu_simd_best()));
    *ret = (int)l;
    return 0;
}

int cpu_count_usable(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    return 1;
}
