/* bench_isa.c - how many of the quantized kernels' vector instructions this
 * core issues per cycle, and how fast the int16 panel kernel's inner loop
 * runs on its own: the ceilings behind the figures in docs/benchmarks.md
 * (why 8 tokens cost several times one token in quant_int16.c).
 *
 * Each instruction is timed as 8 independent copies (no chain between
 * them) in a loop of 10^8 iterations; the panel loops read L1-resident data.
 * The clock is calibrated with a chain of dependent 64-bit ADDs, one cycle
 * each on every x86-64 core, so the figures are per core cycle whatever the
 * frequency. A benchmark, not a test: run it on an idle machine, x86-64
 * with AVX2 only.
 *
 * usage: bench_isa [MILLIONS_OF_ITERATIONS]  (default 100) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/clock.h"
#include "base/cpu.h"

#if defined(__x86_64__)
/* the operands of the loads and broadcasts: one cache line, in L1 */
static int32_t codes[16] __attribute__((aligned(64)));

static long n_iter;
static double ns_per_cycle;

/* seconds of n_iter iterations of the asm in BODY */
#define TIME_LOOP(BODY, ...)                                                                                           \
    ({                                                                                                                 \
        const int32_t *p = codes;                                                                                      \
        double loop_start = ifd_now_s();                                                                               \
        for (long i = 0; i < n_iter; i++)                                                                              \
            __asm__ volatile(BODY : : "r"(p) : __VA_ARGS__);                                                           \
        ifd_now_s() - loop_start;                                                                                      \
    })

/* 8 independent copies of an instruction, into ymm0..ymm7: OP ymm14, ymm15
 * (register operands), OP by an immediate, or OP from memory (8 dwords) */
#define REG_OP(OP, N) OP " %%ymm14, %%ymm15, %%ymm" #N "\n\t"
#define IMM_OP(OP, N) OP " $4, %%ymm14, %%ymm" #N "\n\t"
#define MEM_OP(OP, N) OP " " #N "*4(%0), %%ymm" #N "\n\t"
#define X8(OP)                                                                                                        \
    REG_OP(OP, 0) REG_OP(OP, 1) REG_OP(OP, 2) REG_OP(OP, 3) REG_OP(OP, 4) REG_OP(OP, 5) REG_OP(OP, 6) REG_OP(OP, 7)
#define SHIFT8(OP)                                                                                                    \
    IMM_OP(OP, 0) IMM_OP(OP, 1) IMM_OP(OP, 2) IMM_OP(OP, 3) IMM_OP(OP, 4) IMM_OP(OP, 5) IMM_OP(OP, 6) IMM_OP(OP, 7)
#define LOAD8(OP)                                                                                                     \
    MEM_OP(OP, 0) MEM_OP(OP, 1) MEM_OP(OP, 2) MEM_OP(OP, 3) MEM_OP(OP, 4) MEM_OP(OP, 5) MEM_OP(OP, 6) MEM_OP(OP, 7)
#define CLOB8 "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7"

static void rate(const char *what, double seconds)
{
    const double cycles = seconds / 1e-9 / ns_per_cycle / (double)n_iter;
    printf("  %-40s %5.2f a cycle\n", what, 8.0 / cycles);
}

/* acc += VPMADDWD(w, x) as the panel kernel does it (quant_int16.c) */
#define MA(W, X, ACC) "vpmaddwd %%ymm" #W ", %%ymm" #X ", %%ymm14\n\tvpaddd %%ymm14, %%ymm" #ACC ", %%ymm" #ACC "\n\t"

/* What the panel kernel's inner loop walks: 2 panels of 8 rows x 512
 * columns (256 pairs of 8 rows' int16 codes, 8 KiB each) and 8 tokens'
 * codes of those columns, token-major per block of 64 columns as quant_act
 * lays them out (a token's 32 pairs, then the next token's): 24 KiB, in L1. */
#define PAIRS 256
static uint8_t panel_mem[2][PAIRS][32] __attribute__((aligned(64)));
static int32_t token_pairs[PAIRS / 32][8][32] __attribute__((aligned(64)));

/* The asm of one pair: 16 rows x 4 tokens (the kernel's QW_PANEL_P 2,
 * QW_PANEL_T 4) or 8 rows x 8 tokens; token t's codes at x + 32 t. */
/* clang-format off */
#define PAIR_16x4                                     \
    "vmovdqa (%1), %%ymm3\n\t"                        \
    "vmovdqa (%2), %%ymm2\n\t"                        \
    "vpbroadcastd (%0), %%ymm5\n\t"                   \
    MA(3, 5, 13) MA(2, 5, 9)                          \
    "vpbroadcastd 128(%0), %%ymm5\n\t"                \
    MA(3, 5, 11) MA(2, 5, 8)                          \
    "vpbroadcastd 256(%0), %%ymm5\n\t"                \
    MA(3, 5, 10) MA(2, 5, 7)                          \
    "vpbroadcastd 384(%0), %%ymm5\n\t"                \
    MA(3, 5, 6) MA(2, 5, 4)
#define PAIR_8x8                                      \
    "vmovdqa (%1), %%ymm3\n\t"                        \
    "vpbroadcastd (%0), %%ymm5\n\t" MA(3, 5, 0)       \
    "vpbroadcastd 128(%0), %%ymm5\n\t" MA(3, 5, 1)    \
    "vpbroadcastd 256(%0), %%ymm5\n\t" MA(3, 5, 2)    \
    "vpbroadcastd 384(%0), %%ymm5\n\t" MA(3, 5, 4)    \
    "vpbroadcastd 512(%0), %%ymm5\n\t" MA(3, 5, 6)    \
    "vpbroadcastd 640(%0), %%ymm5\n\t" MA(3, 5, 7)    \
    "vpbroadcastd 768(%0), %%ymm5\n\t" MA(3, 5, 8)    \
    "vpbroadcastd 896(%0), %%ymm5\n\t" MA(3, 5, 9)
/* clang-format on */
#define PAIR_CLOBBERS                                                                                                  \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm13", "xmm14"

/* n_iter pairs (rounded down to whole passes), walked as the kernel walks
 * them: a block of 32 pairs at a time, the pointers stepped */
#define PANEL_PASS(PAIR)                                                                                               \
    ({                                                                                                                 \
        const double pass_start = ifd_now_s();                                                                         \
        for (long i = 0; i < n_iter / PAIRS; i++)                                                                      \
            for (int b = 0; b < PAIRS / 32; b++) {                                                                     \
                const int32_t *x = token_pairs[b][0];                                                                  \
                const uint8_t *w0 = panel_mem[0][32 * b], *w1 = panel_mem[1][32 * b];                                  \
                for (int j = 0; j < 32; j++, x++, w0 += 32, w1 += 32)                                                  \
                    __asm__ volatile(PAIR : : "r"(x), "r"(w0), "r"(w1) : PAIR_CLOBBERS);                               \
            }                                                                                                          \
        ifd_now_s() - pass_start;                                                                                      \
    })

/* cycles of one pair, and per 64 weights x token (a pair is 2 columns of
 * 8 P rows for T tokens: P T / 4 rows x 64 columns) */
static void panel(const char *what, double seconds, int p, int t)
{
    const double cycles = seconds / 1e-9 / ns_per_cycle / (double)(n_iter / PAIRS * PAIRS);
    printf("  %-40s %5.2f cycles a pair, %4.2f per 64 weights x token\n", what, cycles, cycles / (p * t / 4.0));
}

int main(int argc, char **argv)
{
    n_iter = (argc > 1 ? atol(argv[1]) : 100) * 1000000L;
    if (n_iter <= 0 || !cpu_simd_supported(CPU_SIMD_AVX2)) {
        fprintf(stderr, "bench_isa: needs a positive count and an AVX2 CPU\n");
        return 1;
    }
    /* 8 dependent ADDs an iteration: 8 cycles */
    double t0 = ifd_now_s();
    uint64_t v = 1;
    for (long i = 0; i < n_iter; i++)
        __asm__ volatile("add %0, %0\n\tadd %0, %0\n\tadd %0, %0\n\tadd %0, %0\n\t"
                         "add %0, %0\n\tadd %0, %0\n\tadd %0, %0\n\tadd %0, %0"
                         : "+r"(v));
    ns_per_cycle = (ifd_now_s() - t0) / 1e-9 / (double)n_iter / 8.0;
    printf("bench_isa: %.2f GHz (a chain of dependent ADDs), %ld iterations\n", 1.0 / ns_per_cycle, n_iter);
    printf("independent 256-bit instructions issued:\n");
    rate("VPMADDWD", TIME_LOOP(X8("vpmaddwd"), CLOB8));
    rate("VPMADDUBSW", TIME_LOOP(X8("vpmaddubsw"), CLOB8));
    rate("VFMADD231PS", TIME_LOOP(X8("vfmadd231ps"), CLOB8));
    rate("VPADDD", TIME_LOOP(X8("vpaddd"), CLOB8));
    rate("VPAND", TIME_LOOP(X8("vpand"), CLOB8));
    rate("VPSRLW by an immediate", TIME_LOOP(SHIFT8("vpsrlw"), CLOB8));
    rate("VPBROADCASTD from memory", TIME_LOOP(LOAD8("vpbroadcastd"), CLOB8));
    rate("VMOVDQU load", TIME_LOOP(LOAD8("vmovdqu"), CLOB8));
    printf("the panel kernel's inner loop alone (VPMADDWD + VPADDD; 8 KiB panels, 8 tokens' codes, in L1):\n");
    panel("16 rows x 4 tokens (the kernel's tile)", PANEL_PASS(PAIR_16x4), 2, 4);
    panel("8 rows x 8 tokens", PANEL_PASS(PAIR_8x8), 1, 8);
    return 0;
}
#else
int main(void)
{
    fprintf(stderr, "bench_isa: x86-64 only\n");
    return 1;
}
#endif
