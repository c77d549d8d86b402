/* kernels.h - CPU kernels of the forward pass.
 *
 * SIMD with runtime dispatch (AVX-512, AVX2+FMA, scalar fallback), weights
 * widened from their stored dtype inside the kernel. Matrix products split
 * their rows over the thread pool. Activations are f32. */
#pragma once

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

/* Attention of one query head over n cached positions.
 * scores: out[p] = scale * sum_d q[d] * kt[d * stride + p], keys stored
 *   transposed (one row of positions per dimension), p in [0, n).
 * values: out[d] = sum_p w[p] * v[p * stride + d], d in [0, hd). */
void kern_attn_scores(float *out, const float *q, const float *kt, int64_t stride, int hd, int n, float scale);
void kern_attn_values(float *out, const float *w, const float *v, int64_t stride, int hd, int n);
