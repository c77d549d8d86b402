/* test_cpu.c - CPU features: detection agrees with the compiler's own probe,
 * and the forced level is what cpu_simd_level() reports until restored. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "base/cpu.h"

Test(cpu, detection_matches_the_cpu)
{
    const struct cpu_features *f = cpu_features();
#if defined(__x86_64__)
    __builtin_cpu_init();
    cr_assert_eq(f->avx2_fma_f16c, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                       __builtin_cpu_supports("f16c"));
    cr_assert_eq(f->avx512, __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                                __builtin_cpu_supports("fma"));
    cr_assert_eq(f->avx512_vnni, f->avx512 && __builtin_cpu_supports("avx512vnni"));
    /* AVX-VNNI against the kernel's own reading of CPUID, /proc/cpuinfo */
    FILE *ci = fopen("/proc/cpuinfo", "r");
    if (ci) {
        char line[8192];
        bool flag = false;
        while (fgets(line, sizeof(line), ci))
            if (strncmp(line, "flags", 5) == 0) {
                flag = strstr(line, " avx_vnni") != NULL;
                break;
            }
        fclose(ci);
        cr_assert_eq(f->avx_vnni, f->avx2_fma_f16c && flag);
    }
#endif
    enum cpu_simd want = f->avx512     ? CPU_SIMD_AVX512
                         : f->avx_vnni ? CPU_SIMD_AVX2_VNNI
                         : f->avx2_fma_f16c ? CPU_SIMD_AVX2
                                            : CPU_SIMD_SCALAR;
    cr_assert_eq(cpu_simd_best(), want);
    cr_assert_eq(cpu_simd_level(), want, "unforced, the level is the best");
}

Test(cpu, force_and_restore)
{
    const enum cpu_simd best = cpu_simd_best();
    const struct cpu_features *f = cpu_features();
    const bool has[CPU_SIMD_COUNT] = {true, f->avx2_fma_f16c, f->avx_vnni, f->avx512};
    for (int l = 0; l < CPU_SIMD_COUNT; l++) {
        int r = cpu_simd_force((enum cpu_simd)l);
        cr_assert_eq(cpu_simd_supported((enum cpu_simd)l), has[l]);
        if (!has[l]) {
            cr_assert_eq(r, -ENOTSUP, "%s is beyond this CPU", cpu_simd_name((enum cpu_simd)l));
            cr_assert_neq(cpu_simd_level(), (enum cpu_simd)l);
            continue;
        }
        cr_assert_eq(r, 0);
        cr_assert_eq(cpu_simd_level(), (enum cpu_simd)l);
        cr_assert_eq(cpu_simd_vnni512(), l == CPU_SIMD_AVX512 && f->avx512_vnni,
                     "the int8 products follow the forced level");
    }
    cr_assert_eq(cpu_simd_force(best), 0);
    cr_assert_eq(cpu_simd_level(), best);
    cr_assert_eq(cpu_simd_force((enum cpu_simd)7), -ENOTSUP);
}

Test(cpu, names)
{
    enum cpu_simd l;
    for (int i = 0; i < CPU_SIMD_COUNT; i++) {
        cr_assert_eq(cpu_simd_from_name(cpu_simd_name((enum cpu_simd)i), &l), 0);
        cr_assert_eq(l, (enum cpu_simd)i);
    }
    cr_assert_str_eq(cpu_simd_name(CPU_SIMD_AVX2), "avx2");
    cr_assert_str_eq(cpu_simd_name(CPU_SIMD_AVX2_VNNI), "avx2-vnni");
    cr_assert_eq(cpu_simd_from_name("neon", &l), -EINVAL);
}
