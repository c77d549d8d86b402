/* quant.h - MLX affine quantization: packing, quantizing, and the fused
 * dequantize-and-multiply kernels. Packed weights are never expanded: every
 * product dequantizes in registers.
 *
 * Format: a weight [rows, cols] with `bits` per value is stored as U32 words
 * [rows, cols * bits / 32], values packed low bits first (a value may straddle
 * two words for bits 3 and 6); scales and biases [rows, cols / group_size];
 * w = scale * q + bias. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "model/model.h"

#define QUANT_DEFAULT_GROUP_SIZE 64
#define QUANT_MAX_GROUP_SIZE 1024

/* True if bits/group_size are a layout the kernels handle: bits 2, 3, 4, 6
 * or 8, group_size a multiple of 32 up to QUANT_MAX_GROUP_SIZE. */
bool quant_layout_supported(int bits, int group_size);

/* y[t, r] for r in [row_begin, row_end): the slice of kern_matmul's work for a
 * quantized weight (w->bits != 0). x is [n_tokens, cols], y is [n_tokens, rows]. */
void quant_matmul_rows(const struct ifd_weight *w, const float *x, int n_tokens, float *y,
                       int64_t row_begin, int64_t row_end);

/* Which implementation of quant_matmul_rows to run (tests compare them). */
enum quant_isa {
    QUANT_ISA_AUTO = 0,  /* base/cpu.h's level, best or forced (what quant_matmul_rows uses) */
    QUANT_ISA_SCALAR,    /* portable scalar bit-stream path: every layout */
    QUANT_ISA_AVX2,
    QUANT_ISA_AVX512,
};

/* quant_matmul_rows through a chosen implementation. Layouts the vector
 * kernels do not cover (bits 3 and 6, bits 2 with group size 32) always take
 * the scalar path. Returns 0, or -ENOTSUP if this CPU lacks the ISA. */
int quant_matmul_rows_isa(enum quant_isa isa, const struct ifd_weight *w, const float *x,
                          int n_tokens, float *y, int64_t row_begin, int64_t row_end);

/* Dequantizes one row to f32 [cols] (embedding lookup). */
void quant_dequant_row(const struct ifd_weight *w, int64_t row, float *out);

/* Quantizes one f32 row [cols] like MLX's affine_quantize, writing packed words
 * [cols * bits / 32] and per-group scales/biases (as f32; the caller narrows). */
void quant_quantize_row(const float *row, int64_t cols, int bits, int group_size,
                        uint32_t *ret_words, float *ret_scales, float *ret_biases);

/* Quantizes a float weight (F32/F16/BF16) into newly allocated packed storage
 * (quantize on load); group_size 0 means QUANT_DEFAULT_GROUP_SIZE. Scales and
 * biases keep the source dtype, as MLX does. *ret describes it; every buffer lives in one allocation
 * returned in *ret_owned, which the caller frees with free(). */
int quant_weight_quantize(const struct ifd_weight *src, int bits, int group_size,
                          struct ifd_weight *ret, void **ret_owned, ifd_error *err);

/* ---- weights in panels of 8 rows (quant_panel.c) ---------------------------
 * The layout the CPU stage keeps 4- and 8-bit weights in at every vector
 * level: one sequential stream per product instead of 8 strided rows and two
 * parameter arrays. */

/* True when w (4- or 8-bit, groups of multiples of 32, not yet in panels) is
 * faster in panels at the SIMD level in use (any but scalar). */
bool quant_panels_wanted(const struct ifd_weight *w);

/* A copy of w in panels: *ret describes it (ret->panels), its one buffer is
 * *ret_owned, for the caller to free(). 0 or -ENOMEM. Every product and
 * quant_dequant_row() take either layout. */
int quant_weight_to_panels(const struct ifd_weight *w, struct ifd_weight *ret, void **ret_owned, ifd_error *err);

/* ---- products with integer-coded activations ---------------------------------
 * The activations of a product are coded once (shared by every thread's rows)
 * and a 4- or 8-bit weight is multiplied with them in integer arithmetic. Two
 * kinds, chosen by base/cpu.h's level:
 *
 * QUANT_ACT_INT8_PAIR (core/model/quant_int8.c; AVX-512 VNNI, prefill): two
 * int8 codes per value for VPDPBUSD: per block of 32 or 64 columns
 * x ~= d * (hi + lo / 254), d = max|x| / 127, a rounding within
 * max|x| / 64516, 15 bits where a single int8 code has 8 (which measurably
 * changed the goldens' tokens). Twice the arithmetic of the f32 path; the
 * golden tests bound the effect on logits.
 *
 * QUANT_ACT_INT16 (core/model/quant_int16.c; AVX2 and AVX-VNNI, decode and
 * prefill; decode and batched decode at AVX-512 too): one int16 code per value for
 * VPMADDWD / VPDPWSSD, per block x ~= d * q, d = max|x| / 32767: the same
 * 15 bits. */
#define QUANT_ACT_LO_SCALE 254.0f
/* Tokens interleaved together, the int8 kernel's tile. */
#define QUANT_ACT_TILE 8
enum quant_act_kind {
    QUANT_ACT_INT8_PAIR,
    QUANT_ACT_INT16,
};
struct quant_act {
    enum quant_act_kind kind;
    int bits, group_size, block; /* the weight layout they were prepared for */
    int n_tokens;
    int64_t cols;
    /* INT8_PAIR: tokens in tiles of QUANT_ACT_TILE (the last one
     * zero-padded). For each tile and each 4 columns (in the kernel's column
     * order), the tile's int32 words of 4 int8 codes, then those of the
     * remainders: x ~= scale * (hi + lo / QUANT_ACT_LO_SCALE) per column. */
    int32_t *words;   /* INT8_PAIR: [tiles, cols / 4, 2, QUANT_ACT_TILE] */
    int16_t *codes;   /* INT16: [tiles, cols / block, QUANT_ACT_TILE, block] in quant_int16.c's column order */
    float *scale;     /* [tiles, cols / block, QUANT_ACT_TILE] */
    float *group_sum; /* exact sums of x: [tiles, cols / group_size, QUANT_ACT_TILE] */
};

/* True when an integer path takes w for n_tokens (bits 4 or 8): at the
 * AVX2 and AVX2-VNNI levels always (INT16); at AVX-512 for 1 to 3 tokens
 * (INT16: decode), with VNNI from quant_act_set_min_tokens() tokens
 * (INT8_PAIR), and from 8 tokens below that (INT16: batched decode); 4 to
 * 7 tokens at AVX-512, and the scalar level, keep the f32 kernels. A weight
 * in panels takes INT16 at every vector level (only quant_panel.c's
 * kernels read panels fast), none at the scalar level. */
bool quant_act_eligible(const struct ifd_weight *w, int n_tokens);

/* True when a was set up for w's layout and width. */
bool quant_act_matches(const struct quant_act *a, const struct ifd_weight *w);

/* Sets a up for n_tokens rows of w's width, of the kind the level in use
 * takes (quant_act_eligible() must hold), without memory; returns the
 * bytes quant_act_attach() needs. The caller owns that memory, so that a
 * product in the per-token loop can use scratch sized once (the thread
 * pool's) instead of allocating. */
size_t quant_act_setup(struct quant_act *a, const struct ifd_weight *w, int n_tokens);

/* Points a set-up a at mem (quant_act_setup()'s bytes, 64-byte aligned) and
 * zeroes it: the padding tokens of the last tile must be zeros. */
void quant_act_attach(struct quant_act *a, void *mem);

/* quant_act_setup() + quant_act_attach() on memory of its own, released by
 * quant_act_free(); 0 or -ENOMEM. For tests and benchmarks. */
int quant_act_alloc(struct quant_act *a, const struct ifd_weight *w, int n_tokens);
void quant_act_free(struct quant_act *a);

/* Quantizes rows [t0, t1) of x [n_tokens, cols] into a (threads may fill
 * disjoint ranges). */
void quant_act_prepare_tokens(struct quant_act *a, const float *x, int t0, int t1);

/* Scratch one call of quant_act_matmul_rows() packs weight panels into
 * (INT8_PAIR: 16 rows x 2048 columns of codes, their scales and biases),
 * 64-byte aligned; one per thread. */
#define QUANT_ACT_PANEL_BYTES (16 * 2048 + 2 * 16 * (2048 / 32) * 4)

/* y[t, r] for r in [row_begin, row_end), every token of a: the integer
 * version of quant_matmul_rows, packing panels into `panel`
 * (QUANT_ACT_PANEL_BYTES; INT16 packs nothing and may get NULL). Allocates
 * nothing. Returns 0, or -ENOTSUP off x86-64. */
int quant_act_matmul_rows(const struct ifd_weight *w, const struct quant_act *a, float *y,
                          int64_t row_begin, int64_t row_end, void *panel);

/* Fewest tokens that take the INT8_PAIR path (default 20) and the INT16
 * panel kernel (default 4); tests set 1 to run the goldens through them.
 * n <= 0 restores the defaults. */
void quant_act_set_min_tokens(int n);
