/* quant_int16.c - the product of a 4- or 8-bit quantized weight with
 * int16-coded activations, on AVX2 (VPMADDWD) and AVX-VNNI (VPDPWSSD): the
 * quantized products of CPUs without AVX-512, decode and prefill alike.
 *
 * Why. The f32 path (quant-simd.inc) widens each code to an int32, converts
 * it to a float and multiplies it with an f32 activation: on 8-lane AVX2 that
 * is about ten instructions per 16 codes, which keeps decode compute-bound on
 * a slow core, and prefill at one multiply-add per lane per instruction.
 * VPMADDWD multiplies 16 int16 pairs and adds them in twos into 8 int32
 * lanes: 16 products per instruction, twice the FMA's, and the codes only
 * need widening to int16 (one VPMOVZXBW per 16 bytes) and, at 4-bit, one AND
 * and one shift to split the nibbles. AVX-VNNI's VPDPWSSD also does the add.
 *
 * Accuracy. Activations are coded per block k of 32 or 64 columns with
 * d_k = max|x| / 32767, x_c ~= d_k * round(x_c / d_k): a rounding within
 * max|x| / 65534, the 15 bits of quant_int8.c's two int8 codes (one int8
 * code, llama.cpp's Q8_0 activations, changed the tinystories MLX goldens'
 * greedy tokens). For one weight group (scale s, bias b), row and token
 *     sum_c (s q_c + b) x_c ~= s * sum_k d_k * sum_{c in k} q_c x'_c + b * sum_c x_c,
 * the bias term taking the exact f32 sum of x. The integer sums cannot
 * overflow: 64 columns of 255 * 32767 is under 2^29.
 *
 * Layout. Activations are coded once per product into quant_act (shared by
 * every thread's rows), in tiles of 8 tokens: for each tile and block, the 8
 * tokens' codes one after the other (the last tile zero-padded), so a kernel
 * tile reaches every token from one pointer; their scales likewise [tile,
 * block, 8], and the group sums [tile, group, 8]. Within a block the codes
 * are at 8-bit in column order; at 4-bit, in each 32 columns the 16 even ones
 * then the 16 odd ones, the order of a widened 16-byte chunk's low nibbles
 * then its high nibbles. Weights are read in place, row after row; nothing is
 * packed. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/cpu.h"
#include "model/quant.h"
#include "quant_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define QW_INLINE static inline __attribute__((always_inline))
#define QW_MAX_ROWS 4
#define QW_MAX_TOKENS QUANT_ACT_TILE /* tokens of a tile of the activations */

/* What every tile of one call shares. */
struct qw_ctx {
    const struct quant_act *a;
    const uint8_t *data;
    int64_t row_bytes, rows, ng_row;
    enum ifd_dtype qdt;
    const void *scales, *biases;
};

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

QW_INLINE float qw_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

void quant_act16_prepare_tokens(struct quant_act *a, const float *x, int t0, int t1)
{
    const int block = a->block, per_group = a->group_size / block;
    const int64_t cols = a->cols, nb = cols / block, ng = cols / a->group_size;
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int t = t0; t < t1; t++) {
        const int64_t tile = t / QW_MAX_TOKENS, lane = t % QW_MAX_TOKENS;
        const float *xr = x + (int64_t)t * cols;
        float *gsum = a->group_sum + tile * ng * QW_MAX_TOKENS + lane;
        for (int64_t g = 0; g < ng; g++)
            gsum[g * QW_MAX_TOKENS] = 0.0f;
        for (int64_t k = 0; k < nb; k++) {
            const float *xb = xr + k * block;
            __m256 amax = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
            for (int i = 0; i < block; i += 8) {
                const __m256 v = _mm256_loadu_ps(xb + i);
                amax = _mm256_max_ps(amax, _mm256_and_ps(v, abs_mask));
                sum = _mm256_add_ps(sum, v);
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            const float d = _mm_cvtss_f32(m4) / 32767.0f;
            const int64_t at = (tile * nb + k) * QW_MAX_TOKENS + lane;
            a->scale[at] = d;
            gsum[k / per_group * QW_MAX_TOKENS] += qw_hsum(sum);
            const __m256 inv = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
            int32_t q[64];
            /* Round to nearest even (the default MXCSR mode); |x| * inv is at
             * most 32767 up to a rounding, so the int16 cannot overflow. */
            for (int i = 0; i < block; i += 8)
                _mm256_storeu_si256((__m256i *)(void *)(q + i),
                                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + i), inv)));
            int16_t *o = a->codes + at * block;
            if (a->bits == 8) {
                for (int i = 0; i < block; i++)
                    o[i] = (int16_t)q[i];
            } else {
                for (int c = 0; c < block; c += 32)
                    for (int j = 0; j < 16; j++) {
                        o[c + j] = (int16_t)q[c + 2 * j];
                        o[c + 16 + j] = (int16_t)q[c + 2 * j + 1];
                    }
            }
        }
    }
}

#define QW_NAME(n) qw256_##n
#define QW_DOT(acc, w, x) _mm256_add_epi32((acc), _mm256_madd_epi16((w), (x)))
#include "quant-int16.inc"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
#define QW_NAME(n) qwvnni_##n
#define QW_DOT(acc, w, x) _mm256_dpwssd_avx_epi32((acc), (w), (x))
#include "quant-int16.inc"
#pragma GCC pop_options

int quant_act16_matmul_rows(const struct ifd_weight *w, const struct quant_act *a, float *y, int64_t row_begin,
                            int64_t row_end)
{
    const struct qw_ctx k = {
        .a = a,
        .data = w->data,
        .row_bytes = row_bytes_of(w),
        .rows = w->rows,
        .ng_row = w->cols / w->group_size,
        .qdt = w->qparam_dtype,
        .scales = w->scales,
        .biases = w->biases,
    };
    if (cpu_simd_level() == CPU_SIMD_AVX2_VNNI)
        qwvnni_matmul_rows(&k, y, row_begin, row_end);
    else
        qw256_matmul_rows(&k, y, row_begin, row_end);
    return 0;
}

#else /* not x86-64: quant_act_eligible() never chooses this kind */
void quant_act16_prepare_tokens(struct quant_act *a, const float *x, int t0, int t1)
{
    (void)a, (void)x, (void)t0, (void)t1;
    abort();
}

int quant_act16_matmul_rows(const struct ifd_weight *w, const struct quant_act *a, float *y, int64_t row_begin,
                            int64_t row_end)
{
    (void)w, (void)a, (void)y, (void)row_begin, (void)row_end;
    return -ENOTSUP;
}
#endif
