/* kernels-internal.h - the per-instruction-set kernel table behind kernels.h.
 *
 * kernels.c picks the table of base/cpu.h's level on every call (AVX-512 >
 * AVX2+FMA > scalar, unless forced);
 * kernels_avx512.c and kernels_avx2.c compile their functions for their
 * instruction set with target attributes, so the rest of the build stays
 * baseline x86-64 and runs anywhere. */
#pragma once

#include <stdint.h>

#include "model/kernels.h"
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
    /* kernels.h's kern_attn_scores and kern_attn_values (n_heads checked
     * there): KERN_TABLE_ENTRIES below, compiled for the table's instruction
     * set */
    void (*attn_scores)(float *out, int64_t out_stride, const float *q, int n_heads, const float *kt, int hd, int n,
                        float scale);
    void (*attn_values)(float *out, const float *w, int64_t w_stride, int n_heads, const float *v, int64_t stride,
                        int hd, int n);
    /* kernels.h's kern_softmax and kern_silu_mul (KERN_TABLE_ENTRIES) */
    void (*softmax)(float *x, int n);
    void (*silu_mul)(float *gate, const float *up, int n);
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

/* The first KERN_PREFETCH_BYTES of a task's weights (task_bytes from p),
 * into L2, before the task's first load. The kernels prefetch a distance
 * ahead of their loads, so what lies before that distance was read on
 * demand, a miss at a time until the hardware prefetcher caught on, at the
 * start of every pool task (about 1/16 of a product). */
static inline void kern_prefetch_task_start(const void *p, size_t task_bytes)
{
    const size_t n = task_bytes < KERN_PREFETCH_BYTES ? task_bytes : KERN_PREFETCH_BYTES;
    for (size_t o = 0; o < n; o += 64)
        __builtin_prefetch((const char *)p + o, 0, 2); /* prefetcht1 */
}

/* The attention loops, written once with GCC vector extensions (8 floats)
 * and wrapped by each table's file, so that they are compiled under its
 * target pragma and follow the level in use like the products
 * (target_clones, used before, chose by the CPU at load: under --simd avx2
 * they still ran AVX-512 code).
 *
 * They take the query heads that share one key/value head (GQA) together:
 * each key and value vector is loaded once for up to KERN_ATTN_MAX_HEADS
 * heads, and the sums are register tiles (heads x vectors, 8 accumulators)
 * instead of a row of sums in memory read and written again for every
 * dimension (scores) or position (values), which made the one-head loops
 * wait on store forwarding. Each sum still adds its products in the same
 * order (dimension by dimension, position by position) as those loops. */
typedef float kern_f8 __attribute__((vector_size(8 * sizeof(float))));

/* Vectors of a tile per head: 8 accumulators in all. */
#define KERN_ATTN_TILE_VECTORS(H) ((H) == 1 ? 8 : (H) == 2 ? 4 : 2)

/* out[h * out_stride + p] for H heads, positions [p0, p0 + 8 V), p0 a
 * multiple of 8: vector j's keys are 8 of one block, at the same offset
 * in every dimension's row of it (see kern_attn_key_index()) */
static inline __attribute__((always_inline)) void kern_attn_scores_tile(float *out, int64_t out_stride,
                                                                        const float *q, const int H, const float *kt,
                                                                        int hd, int64_t p0, const int V, float scale)
{
    kern_f8 acc[KERN_ATTN_MAX_HEADS][8];
    const float *kv[8];
    for (int j = 0; j < V; j++)
        kv[j] = kt + kern_attn_key_index(hd, p0 + 8 * j, 0);
    for (int h = 0; h < H; h++)
        for (int j = 0; j < V; j++)
            acc[h][j] = (kern_f8){0};
    for (int d = 0; d < hd; d++) {
        kern_f8 k[8];
        for (int j = 0; j < V; j++)
            __builtin_memcpy(&k[j], kv[j] + d * KERN_ATTN_KEY_BLOCK, sizeof(kern_f8));
        for (int h = 0; h < H; h++) {
            const float qd = q[h * hd + d];
            for (int j = 0; j < V; j++)
                acc[h][j] += qd * k[j];
        }
    }
    for (int h = 0; h < H; h++)
        for (int j = 0; j < V; j++) {
            const kern_f8 r = acc[h][j] * scale;
            __builtin_memcpy(out + h * out_stride + p0 + 8 * j, &r, sizeof(r));
        }
}

static inline __attribute__((always_inline)) void kern_attn_scores_heads(float *restrict out, int64_t out_stride,
                                                                         const float *restrict q, const int H,
                                                                         const float *restrict kt, int hd, int n,
                                                                         float scale)
{
    const int V = KERN_ATTN_TILE_VECTORS(H);
    int64_t p = 0;
    for (; p + 8 * V <= n; p += 8 * V)
        kern_attn_scores_tile(out, out_stride, q, H, kt, hd, p, V, scale);
    for (; p + 8 <= n; p += 8)
        kern_attn_scores_tile(out, out_stride, q, H, kt, hd, p, 1, scale);
    for (; p < n; p++)
        for (int h = 0; h < H; h++) {
            float s = 0;
            for (int d = 0; d < hd; d++)
                s += q[h * hd + d] * kt[kern_attn_key_index(hd, p, d)];
            out[h * out_stride + p] = s * scale;
        }
}

/* Positions the values loop takes at a time (see kern_attn_values_heads()). */
#define KERN_ATTN_VALUE_BLOCK 32

/* out[h * hd + d] for H heads, dimensions [d0, d0 + 8 V), positions
 * [p0, p1) added to the sums of [0, p0) that out holds */
static inline __attribute__((always_inline)) void kern_attn_values_tile(float *out, const float *w, int64_t w_stride,
                                                                        const int H, const float *v, int64_t stride,
                                                                        int hd, int p0, int p1, int d0, const int V)
{
    kern_f8 acc[KERN_ATTN_MAX_HEADS][8];
    for (int h = 0; h < H; h++)
        for (int j = 0; j < V; j++) {
            if (p0 == 0)
                acc[h][j] = (kern_f8){0};
            else
                __builtin_memcpy(&acc[h][j], out + h * hd + d0 + 8 * j, sizeof(kern_f8));
        }
    for (int p = p0; p < p1; p++) {
        kern_f8 x[8];
        for (int j = 0; j < V; j++)
            __builtin_memcpy(&x[j], v + (size_t)p * (size_t)stride + d0 + 8 * j, sizeof(kern_f8));
        for (int h = 0; h < H; h++) {
            const float wp = w[h * w_stride + p];
            for (int j = 0; j < V; j++)
                acc[h][j] += wp * x[j];
        }
    }
    for (int h = 0; h < H; h++)
        for (int j = 0; j < V; j++)
            __builtin_memcpy(out + h * hd + d0 + 8 * j, &acc[h][j], sizeof(kern_f8));
}

/* A block of positions at a time, each tile of dimensions over it: the
 * block's value rows are read from memory by the first tile and found in L1
 * by the others, the next block's asked for meanwhile (each tile alone reads
 * a line of every row: the hardware prefetcher did not keep up), into L2 as
 * the products' prefetches are: into L1, a 1500-token decode (4-bit bench
 * model, 2 threads, inferctl run, 5 alternated runs) was 3-5% slower,
 * median 73.9 against 76.4 tok/s at avx2, 87.9 against 92.6 at avx512. */
static inline __attribute__((always_inline)) void kern_attn_values_heads(float *restrict out,
                                                                         const float *restrict w, int64_t w_stride,
                                                                         const int H, const float *restrict v,
                                                                         int64_t stride, int hd, int n)
{
    const int V = KERN_ATTN_TILE_VECTORS(H);
    for (int p0 = 0; p0 < n; p0 += KERN_ATTN_VALUE_BLOCK) {
        const int p1 = n - p0 < KERN_ATTN_VALUE_BLOCK ? n : p0 + KERN_ATTN_VALUE_BLOCK;
        const int next_end = n - p1 < KERN_ATTN_VALUE_BLOCK ? n : p1 + KERN_ATTN_VALUE_BLOCK;
        for (int p = p1; p < next_end; p++)
            for (int d = 0; d < hd; d += 64 / (int)sizeof(float))
                __builtin_prefetch(v + (size_t)p * (size_t)stride + d, 0, 2);
        int d = 0;
        for (; d + 8 * V <= hd; d += 8 * V)
            kern_attn_values_tile(out, w, w_stride, H, v, stride, hd, p0, p1, d, V);
        for (; d + 8 <= hd; d += 8)
            kern_attn_values_tile(out, w, w_stride, H, v, stride, hd, p0, p1, d, 1);
        for (; d < hd; d++)
            for (int h = 0; h < H; h++) {
                float s = p0 == 0 ? 0 : out[h * hd + d];
                for (int p = p0; p < p1; p++)
                    s += w[h * w_stride + p] * v[(size_t)p * (size_t)stride + d];
                out[h * hd + d] = s;
            }
    }
}

/* ---- e^x, softmax and SiLU, 8 floats at a time ------------------------------
 * glibc's expf, one element at a time, was the costliest element-wise work
 * of a token: at 1536 positions the softmax and its expf took 9.7% of
 * `perf record` samples of 4-bit decode and prefill (AVX2), the SiLU 2.2%.
 * kern_exp8() is Cephes' expf (range reduction by n ln 2 in two parts, a
 * degree-7 polynomial, the exponent added to the bits) on a vector: under
 * 1 ulp of double-precision exp on every 64th float of [-87.3, 88]
 * (measured with and without FMA; test_kernels checks the softmax and the
 * SiLU against double precision at every level), 0 below -87.33, +inf
 * above 88 (e^88 is 1.7e38; a softmax argument is never above 0, a SiLU's
 * is -g), NaN for NaN. */
typedef int32_t kern_i8 __attribute__((vector_size(8 * sizeof(int32_t))));
typedef uint32_t kern_u8 __attribute__((vector_size(8 * sizeof(uint32_t))));

/* mask ? a : b, lane by lane (a comparison's lanes are all ones or zeros).
 * Macros and pointers, not vectors passed by value: this header is also
 * compiled without AVX (the scalar table), where a 32-byte vector argument
 * has another ABI (-Wpsabi). */
#define KERN_SELECT8(mask, a, b) ((kern_f8)(((kern_i8)(a) & (mask)) | ((kern_i8)(b) & ~(mask))))

/* *v <- e^*v */
static inline __attribute__((always_inline)) void kern_exp8(kern_f8 *v)
{
    const kern_f8 x = *v, zero = {0}, inf = zero + __builtin_inff();
    const kern_i8 under = x < -87.33f, over = x > 88.0f, is_nan = x != x;
    /* every lane in range before the integer conversion below */
    const kern_f8 xr = KERN_SELECT8(under | over | is_nan, zero, x);
    /* n = round(x / ln 2): adding 1.5 * 2^23 leaves no fraction bits */
    const kern_f8 n = (xr * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const kern_f8 r = xr - n * 0.693359375f + n * 2.12194440e-4f;
    kern_f8 p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const kern_f8 y = p * r * r + r + 1.0f;
    /* times 2^n: n added to the exponent field (unsigned: no sign to shift) */
    const kern_u8 scaled = (kern_u8)y + ((kern_u8)__builtin_convertvector(n, kern_i8) << 23);
    *v = KERN_SELECT8(is_nan, x, KERN_SELECT8(under, zero, KERN_SELECT8(over, inf, (kern_f8)scaled)));
}

/* x <- softmax(x), the maximum subtracted first; the last n % 8 elements
 * through a vector padded with -inf, whose e^x is 0 */
static inline __attribute__((always_inline)) void kern_softmax8(float *x, int n)
{
    const kern_f8 ninf = (kern_f8){0} - __builtin_inff();
    kern_f8 vmax = ninf, v;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __builtin_memcpy(&v, x + i, sizeof(v));
        vmax = KERN_SELECT8(v > vmax, v, vmax);
    }
    float mx = -__builtin_inff();
    for (int l = 0; l < 8; l++)
        mx = vmax[l] > mx ? vmax[l] : mx;
    for (int j = i; j < n; j++)
        mx = x[j] > mx ? x[j] : mx;
    kern_f8 vsum = {0};
    for (i = 0; i + 8 <= n; i += 8) {
        __builtin_memcpy(&v, x + i, sizeof(v));
        v -= mx;
        kern_exp8(&v);
        __builtin_memcpy(x + i, &v, sizeof(v));
        vsum += v;
    }
    if (i < n) {
        v = ninf;
        __builtin_memcpy(&v, x + i, sizeof(float) * (size_t)(n - i));
        v -= mx;
        kern_exp8(&v);
        __builtin_memcpy(x + i, &v, sizeof(float) * (size_t)(n - i));
        vsum += v;
    }
    float sum = 0;
    for (int l = 0; l < 8; l++)
        sum += vsum[l];
    const float inv = 1.0f / sum;
    for (i = 0; i < n; i++)
        x[i] *= inv;
}

/* gate <- gate / (1 + e^-gate) * up; the tail through zero-padded vectors */
static inline __attribute__((always_inline)) void kern_silu_mul8(float *gate, const float *up, int n)
{
    kern_f8 g, u;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __builtin_memcpy(&g, gate + i, sizeof(g));
        __builtin_memcpy(&u, up + i, sizeof(u));
        kern_f8 e = -g;
        kern_exp8(&e);
        g = g / (1.0f + e) * u;
        __builtin_memcpy(gate + i, &g, sizeof(g));
    }
    if (i < n) {
        g = u = (kern_f8){0};
        __builtin_memcpy(&g, gate + i, sizeof(float) * (size_t)(n - i));
        __builtin_memcpy(&u, up + i, sizeof(float) * (size_t)(n - i));
        kern_f8 e = -g;
        kern_exp8(&e);
        g = g / (1.0f + e) * u;
        __builtin_memcpy(gate + i, &g, sizeof(float) * (size_t)(n - i));
    }
}

/* The table entries: for attention one instance per head count, each with
 * its own tile; the softmax and the SiLU. */
#define KERN_TABLE_ENTRIES(prefix)                                                                                     \
    static void prefix##_attn_scores(float *out, int64_t out_stride, const float *q, int n_heads, const float *kt,     \
                                     int hd, int n, float scale)                                                       \
    {                                                                                                                  \
        switch (n_heads) {                                                                                             \
        case 1: kern_attn_scores_heads(out, out_stride, q, 1, kt, hd, n, scale); break;                               \
        case 2: kern_attn_scores_heads(out, out_stride, q, 2, kt, hd, n, scale); break;                               \
        case 3: kern_attn_scores_heads(out, out_stride, q, 3, kt, hd, n, scale); break;                               \
        default: kern_attn_scores_heads(out, out_stride, q, 4, kt, hd, n, scale); break;                              \
        }                                                                                                              \
    }                                                                                                                  \
    static void prefix##_attn_values(float *out, const float *w, int64_t w_stride, int n_heads, const float *v,       \
                                     int64_t stride, int hd, int n)                                                    \
    {                                                                                                                  \
        switch (n_heads) {                                                                                             \
        case 1: kern_attn_values_heads(out, w, w_stride, 1, v, stride, hd, n); break;                                 \
        case 2: kern_attn_values_heads(out, w, w_stride, 2, v, stride, hd, n); break;                                 \
        case 3: kern_attn_values_heads(out, w, w_stride, 3, v, stride, hd, n); break;                                 \
        default: kern_attn_values_heads(out, w, w_stride, 4, v, stride, hd, n); break;                                \
        }                                                                                                              \
    }                                                                                                                  \
    static void prefix##_softmax(float *x, int n)                                                                      \
    {                                                                                                                  \
        kern_softmax8(x, n);                                                                                           \
    }                                                                                                                  \
    static void prefix##_silu_mul(float *gate, const float *up, int n)                                                 \
    {                                                                                                                  \
        kern_silu_mul8(gate, up, n);                                                                                   \
    }
