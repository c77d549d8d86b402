/* cpu.h - the CPU's instruction sets, detected once, and the SIMD level every
 * kernel dispatches on (kernels.c, quant.c, quant_int8.c); net/frame.c's
 * CRC32C asks it for SSE4.2.
 *
 * The level starts as the best the CPU has; cpu_simd_force() lowers (or
 * restores) it for every kernel at once, so a test that forces "avx2" runs
 * the AVX2 code of the dense, the quantized and the int8 products alike, as
 * a CPU without AVX-512 or AVX-VNNI would (`[node] simd`, `--simd`). */
#pragma once

#include <stdbool.h>

#include "base/error.h"

enum cpu_simd {
    CPU_SIMD_SCALAR = 0,
    CPU_SIMD_AVX2 = 1,      /* AVX2 + FMA + F16C */
    CPU_SIMD_AVX2_VNNI = 2, /* that + AVX-VNNI (VEX VPDPBUSD: Alder Lake, Zen 4) */
    CPU_SIMD_AVX512 = 3,    /* AVX-512 F, BW, VL, DQ + FMA */
};
#define CPU_SIMD_COUNT 4

struct cpu_features {
    bool avx2_fma_f16c; /* everything CPU_SIMD_AVX2 needs */
    bool avx512;        /* everything CPU_SIMD_AVX512 needs */
    bool avx_vnni;      /* avx2_fma_f16c and the VEX-coded VPDPBUSD */
    bool avx512_vnni;   /* avx512 and VPDPBUSD (the int8 prefill product) */
    bool sse42;         /* the CRC32 instruction (net/frame.c's CRC32C) */
};

/* What the CPU has, detected on the first call (thread-safe). */
const struct cpu_features *cpu_features(void);

/* CPUs this process may run on (its affinity mask: taskset, cpusets), at
 * least 1. */
int cpu_count_usable(void);

/* The best level the CPU has. */
enum cpu_simd cpu_simd_best(void);

/* True when the CPU has everything `level` needs. Not an order: a CPU with
 * AVX-512 but no AVX-VNNI (Skylake-X, Ice Lake) cannot run CPU_SIMD_AVX2_VNNI. */
bool cpu_simd_supported(enum cpu_simd level);

/* The level kernels use now: cpu_simd_best() unless forced. */
enum cpu_simd cpu_simd_level(void);

/* True when the AVX-512 int8 prefill product (quant_int8.c) may run: the CPU
 * has AVX-512 VNNI and the level in use is AVX-512. */
bool cpu_simd_vnni512(void);

/* Forces the level for every kernel (tests and benchmarks compare them). The
 * pool must be idle: kernels read the level without a lock. Returns 0, or
 * -ENOTSUP when the CPU lacks it. */
int cpu_simd_force(enum cpu_simd level);

/* "scalar", "avx2", "avx2-vnni", "avx512". */
const char *cpu_simd_name(enum cpu_simd level);

/* Parses a name of cpu_simd_name(); 0, or -EINVAL for any other. */
int cpu_simd_from_name(const char *name, enum cpu_simd *ret);

/* What a user may ask for (`[node] simd`, `--simd`): "auto" (*ret = -1, the
 * best) or a level this CPU has (*ret = the level). -EINVAL for another
 * name, -ENOTSUP for a level the CPU lacks, each with a message in err that
 * starts with `what` (the key or flag). */
int cpu_simd_choose(const char *name, const char *what, int *ret, ifd_error *err);
