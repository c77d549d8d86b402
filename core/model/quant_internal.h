/* quant_internal.h - helpers shared by the quantized-product sources of core/
 * (quant.c, quant_int8.c, quant_int16.c, quant_panel.c); not part of any
 * interface. */
#pragma once

#include <stdint.h>
#include <string.h>

#include "model/dtype.h"
#include "model/model.h"

/* Scale or bias i of a quantized weight, whatever its stored dtype. */
static inline float qparam_at(enum ifd_dtype t, const void *base, int64_t i)
{
    switch (t) {
    case IFD_DTYPE_F16: {
        uint16_t h;
        memcpy(&h, (const uint16_t *)base + i, sizeof(h));
        return ifd_f16_to_f32(h);
    }
    case IFD_DTYPE_BF16: {
        uint16_t h;
        memcpy(&h, (const uint16_t *)base + i, sizeof(h));
        return ifd_bf16_to_f32(h);
    }
    default: {
        float f;
        memcpy(&f, (const float *)base + i, sizeof(f));
        return f;
    }
    }
}

/* Bytes of one packed row; cols is a multiple of 32, so a row ends on a word. */
static inline int64_t row_bytes_of(const struct ifd_weight *w)
{
    return w->cols * w->bits / 8;
}

#include "model/quant.h"

/* Fewest tokens for the int16 panel kernel (quant_int16.c); fewer take the
 * row kernel, which reads the rows in place and unpacks them once for two
 * tokens. Measured with bench_quant on the 4864 x 896 matrix, one thread,
 * Zen 4, panel against row kernel: 4-bit, 2 tokens 0.37 against 0.25 ms, 3
 * tokens 0.46 against 0.41, 4 tokens 0.43 against 0.51; 8-bit, 2 tokens
 * 0.42 against 0.29, 3 tokens 0.51 both. */
#define QUANT_ACT16_PANEL_MIN_TOKENS 4

/* The token count from which a kind takes its prefill kernel: the INT8_PAIR
 * path at all, the INT16 panel kernel (quant_act_set_min_tokens() sets both). */
int quant_act_prefill_min_tokens(enum quant_act_kind kind);

/* Whether a's product takes the int16 row kernel, which uses only its
 * tokens' lanes of the tiles (the panel kernels compute whole tiles). */
static inline bool quant_act16_row_kernel(const struct quant_act *a)
{
    return a->kind == QUANT_ACT_INT16 && a->n_tokens < quant_act_prefill_min_tokens(QUANT_ACT_INT16);
}

/* ---- the panel layout (quant_panel.c) ---- */
#define QUANT_PANEL_ROWS 8

/* Bytes of one group of one panel (codes, scales, biases), and of a panel. */
int64_t quant_panel_group_bytes(const struct ifd_weight *w);
int64_t quant_panel_bytes(const struct ifd_weight *w);

/* quant_dequant_row() and quant_matmul_rows() of a weight in panels. */
void quant_panel_dequant_row(const struct ifd_weight *w, int64_t row, float *out);
void quant_panel_matmul_rows_portable(const struct ifd_weight *w, const float *x, int n_tokens, float *y,
                                      int64_t row_begin, int64_t row_end);

/* quant_act16_matmul_rows() of a weight in panels: rows [row_begin,
 * row_end), row_begin a multiple of 8 and row_end too unless it is the
 * last row; 0, or -EINVAL for other bounds, -ENOTSUP off x86-64. */
int quant_panel_matmul_rows(const struct ifd_weight *w, const struct quant_act *a, float *y, int64_t row_begin,
                            int64_t row_end);

#if defined(__x86_64__)
#include <immintrin.h>

/* The int16 multiply-adds of quant-int16.inc and quant-panel.inc (their
 * QW_DOT / QP_DOT): acc + the pairwise int16 products of w and x, in int32
 * lanes. In asm because GCC 12, given the intrinsics, adds into a fresh
 * register and moves it back: a move per multiply-add in the kernels'
 * loops. The asm text names the instruction, so AVX2 is all the functions
 * need to take ymm registers; a caller runs the VNNI ones only where the
 * CPU has that instruction. */

/* VPMADDWD + VPADDD (AVX2). */
static inline __attribute__((always_inline, target("avx2"))) __m256i quant_maddwd_add(__m256i acc, __m256i w,
                                                                                       __m256i x)
{
    __m256i t;
    __asm__("vpmaddwd %3, %2, %1\n\tvpaddd %1, %0, %0" : "+x"(acc), "=&x"(t) : "x"(w), "x"(x));
    return acc;
}

/* VPDPWSSD in its VEX form (AVX-VNNI). */
static inline __attribute__((always_inline, target("avx2"))) __m256i quant_dpwssd_vex(__m256i acc, __m256i w,
                                                                                       __m256i x)
{
    __asm__("%{vex%} vpdpwssd %2, %1, %0" : "+x"(acc) : "x"(w), "x"(x));
    return acc;
}

/* VPDPWSSD in its EVEX form on 256-bit vectors (AVX512VL + AVX512_VNNI).
 * Its operands may be any of the 32 vector registers ("v"): with "x", the
 * 16 that VEX reaches, GCC keeps values in ymm16-31 all the same and moved
 * them into ymm0-15 for every instruction; at 8 tokens a tile the moves
 * made the kernel slower than its AVX2 twin (measured on Zen 4, 8 daemon
 * streams: 155-170 tok/s against 202-217 at --simd avx2). */
static inline __attribute__((always_inline, target("avx2,avx512f,avx512vl"))) __m256i
quant_dpwssd_evex(__m256i acc, __m256i w, __m256i x)
{
    __asm__("%{evex%} vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(x));
    return acc;
}
#endif

/* The QUANT_ACT_INT16 kind's halves of quant_act_prepare_tokens() and
 * quant_act_matmul_rows() (quant_int16.c). */
void quant_act16_prepare_tokens(struct quant_act *a, const float *x, int t0, int t1);
int quant_act16_matmul_rows(const struct ifd_weight *w, const struct quant_act *a, float *y, int64_t row_begin,
                            int64_t row_end);
