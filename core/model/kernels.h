/* kernels.h - CPU kernels of the forward pass.
 *
 * SIMD with runtime dispatch (AVX-512, AVX2+FMA, scalar fallback), weights
 * widened from their stored dtype inside the kernel. Matrix products split
 * their rows over the thread pool. Activations are f32. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

struct thread_pool;

/* Detects the SIMD level once (AVX-512 > AVX2+FMA > scalar; base/cpu.h) and
 * fills the F16 table. Idempotent. */
void kern_init(void);
/* "avx512", "avx2" or "scalar". */
const char *kern_simd_name(void);

/* y[t, r] = sum_c W[r, c] * x[t, c] for t in [0, n_tokens), r in [0, rows):
 * x is [n_tokens, cols], y is [n_tokens, rows]. One pass over W serves every
 * token (matrix-vector for one token, matrix-matrix for a batch). Quantized
 * weights (w->bits != 0) go to quant_matmul_rows() (quant.h). */
void kern_matmul(struct thread_pool *pool, const struct ifd_weight *w, const float *x, int n_tokens, float *y);

/* ys[i] = ws[i] x for i in [0, n): several weights over the same x (q/k/v,
 * gate/up) in one dispatch of the pool. Same contract as kern_matmul. */
void kern_matmul_multi(struct thread_pool *pool, const struct ifd_weight *const *ws, float *const *ys, int n,
                       const float *x, int n_tokens);

/* Row `row` of an embedding-like weight, widened (or dequantized) to f32 [cols]. */
void kern_weight_row(const struct ifd_weight *w, int64_t row, float *out);

/* Forces an instruction set ("scalar", "avx2", "avx512") for every kernel,
 * the quantized and int8 products included (cpu_simd_force()), for tests that
 * compare them. 0, -ENOTSUP if this CPU lacks it, -EINVAL if unknown. */
int kern_set_simd(const char *name);

/* Element-wise pieces of the forward pass, f32 throughout. */
float kern_dot(const float *a, const float *b, int n);              /* sum a[i] * b[i] */
void kern_axpy(float *y, float a, const float *x, int n);            /* y += a * x */
/* out = x / sqrt(mean(x^2) + eps) * weight; out may alias x. [n] each. */
void kern_rmsnorm(float *out, const float *x, const float *weight, int n, float eps);
void kern_silu_mul(float *gate, const float *up, int n);             /* gate = silu(gate) * up */
void kern_softmax(float *x, int n);                                  /* in place, max-subtracted */

/* Attention of n_heads query heads that share one key/value head (GQA)
 * over n cached positions; head h's query is q + h * hd. Each key and
 * value is read once for up to KERN_ATTN_MAX_HEADS of them (more are done
 * that many at a time).
 * scores: out[h * out_stride + p] = scale * sum_d q[h * hd + d] * key(p, d),
 *   p in [0, n), the keys stored transposed in blocks of positions: key
 *   (p, d) at kt[kern_attn_key_index(hd, p, d)].
 * values: out[h * hd + d] = sum_p w[h * w_stride + p] * v[p * stride + d],
 *   d in [0, hd). */
#define KERN_ATTN_MAX_HEADS 4
/* Keys are stored KERN_ATTN_KEY_BLOCK positions to a block, a block's
 * positions contiguous in each dimension ([block][d][position in block]):
 * the scores of a few positions read one contiguous run of memory, which the
 * hardware prefetcher streams, where one row per dimension over the whole
 * context (the layout before) made them a load from a new page per
 * dimension. A cache for n_ctx positions holds round_up(n_ctx, block). */
#define KERN_ATTN_KEY_BLOCK 16
static inline size_t kern_attn_key_index(int hd, int64_t p, int d)
{
    return (size_t)(p / KERN_ATTN_KEY_BLOCK) * (size_t)hd * KERN_ATTN_KEY_BLOCK + (size_t)d * KERN_ATTN_KEY_BLOCK +
           (size_t)(p % KERN_ATTN_KEY_BLOCK);
}
void kern_attn_scores(float *out, int64_t out_stride, const float *q, int n_heads, const float *kt, int hd, int n,
                      float scale);
void kern_attn_values(float *out, const float *w, int64_t w_stride, int n_heads, const float *v, int64_t stride,
                      int hd, int n);
