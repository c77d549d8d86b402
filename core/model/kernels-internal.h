/* kernels-internal.h - the per-instruction-set kernel table behind kernels.h.
 *
 * kernels.c picks the table of base/cpu.h's level on every call (AVX-512 >
 * AVX2+FMA > scalar, unless forced);
 * kernels_avx512.c and kernels_avx2.c compile their functions for their
 * instruction set with target attributes, so the rest of the build stays
 * baseline x86-64 and runs anywhere. */
#pragma once

#include <stdint.h>

#include "model/model.h"

struct kern_isa {
    const char *name;
    /* y[t, r] = W[r, :] . x[t, :] for r in [row_begin, row_end), float dtypes
     * only (F32, F16, BF16). x [n_tokens, cols], y [n_tokens, rows]. */
    void (*matmul_rows)(const struct ifd_weight *w, const float *x, int n_tokens, float *y,
                        int64_t row_begin, int64_t row_end);
    /* sum_i a[i] * b[i] */
    float (*dot)(const float *a, const float *b, int n);
    /* y[i] += a * x[i] */
    void (*axpy)(float *y, float a, const float *x, int n);
    /* kernels.h's kern_attn_scores and kern_attn_values: kern_attn_loops_*
     * below, compiled for the table's instruction set */
    void (*attn_scores)(float *out, const float *q, const float *kt, int64_t stride, int hd, int n, float scale);
    void (*attn_values)(float *out, const float *w, const float *v, int64_t stride, int hd, int n);
};

#if defined(__x86_64__)
extern const struct kern_isa kern_isa_avx2;
extern const struct kern_isa kern_isa_avx512;
#endif

/* Rows per task and tokens per L2 block, shared so every ISA splits alike. */
#define KERN_TOKEN_BLOCK_BYTES (1024 * 1024)

/* How far ahead a kernel that reads a tile of `tile_rows` rows at a time
 * prefetches the same bytes of later rows: whole tiles, about 8 KiB. A tile
 * of a few interleaved rows of a few hundred bytes is not a stream the
 * hardware prefetcher runs ahead on, and decode waited on those loads (the
 * dense AVX2 kernel, the f32 and int16 quantized ones; measured in each).
 * Every one of them prefetches into L2 (prefetcht1), not L1: kernels_avx512.c
 * says why. */
#define KERN_PREFETCH_BYTES 8192
static inline int64_t kern_prefetch_ahead(int64_t row_bytes, int64_t tile_rows)
{
    return (KERN_PREFETCH_BYTES / row_bytes / tile_rows + 1) * tile_rows * row_bytes;
}

/* How many elements ahead the dense decode kernels (one token, the rows read
 * as one sequential stream) prefetch, into L2 as well: 8 KiB of F16/BF16.
 * 1024 ahead into L1 took 1.25x the time on two threads, 1.5x on one (12
 * BF16 layers of the Qwen2.5-0.5B shape, Zen 4). */
#define KERN_STREAM_AHEAD_ELEMS 4096

/* The attention loops, plain C written for the vectorizer: each table's file
 * wraps them, so that they are compiled under its target pragma and follow
 * the level in use like the products (target_clones, used before, chose by
 * the CPU at load: under --simd avx2 they still ran AVX-512 code). */
static inline __attribute__((always_inline)) void kern_attn_scores_loops(float *restrict out, const float *restrict q,
                                                                         const float *restrict kt, int64_t stride,
                                                                         int hd, int n, float scale)
{
    for (int p = 0; p < n; p++)
        out[p] = 0;
    /* one broadcast q[d] times a contiguous run of keys: no reductions */
    for (int d = 0; d < hd; d++) {
        const float qd = q[d], *restrict row = kt + (size_t)d * (size_t)stride;
        for (int p = 0; p < n; p++)
            out[p] += qd * row[p];
    }
    for (int p = 0; p < n; p++)
        out[p] *= scale;
}

static inline __attribute__((always_inline)) void kern_attn_values_loops(float *restrict out, const float *restrict w,
                                                                         const float *restrict v, int64_t stride,
                                                                         int hd, int n)
{
    for (int d = 0; d < hd; d++)
        out[d] = 0;
    for (int p = 0; p < n; p++) {
        const float wp = w[p], *restrict row = v + (size_t)p * (size_t)stride;
        for (int d = 0; d < hd; d++)
            out[d] += wp * row[d];
    }
}
