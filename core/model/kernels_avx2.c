/* kernels_avx2.c - AVX2 + FMA + F16C kernels (the x86-64 baseline we tune for).
 *
 * Compiled for AVX2 through the target pragma and called only when the CPU
 * has it. Same blocking as the AVX-512 file with 8-wide vectors and a 3 rows x
 * 3 tokens tile (9 accumulators + 3 widened weight vectors + 1 activation fit
 * the 16 ymm registers); decode streams rows one after the other. Row tails
 * shorter than 8 are done in scalar.
 *
 * Tiles measured with bench_matmul (12 BF16 layers of the Qwen2.5-0.5B
 * shape, one thread, Zen 4 at AVX2), 8 and 64 tokens: 3 x 3 38.6-39.6 and
 * 282-285 ms, 4 x 2 41.3-53.0 and 308-309, 2 x 6 54.6-56.4 and 396-401,
 * 3 x 4 56.2-56.4 and 420. */
#if defined(__x86_64__)

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#include <immintrin.h>
#include <stdbool.h>

#include "kernels-internal.h"

#define AI static inline __attribute__((always_inline))

enum { TILE_ROWS = 3, TILE_TOKENS = 3 };

AI __m256 w_load(const void *base, int64_t i, enum ifd_dtype dt)
{
    if (dt == IFD_DTYPE_F32)
        return _mm256_loadu_ps((const float *)base + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)base + i));
    if (dt == IFD_DTYPE_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AI float w_scalar(const void *base, int64_t i, enum ifd_dtype dt)
{
    if (dt == IFD_DTYPE_F32)
        return ((const float *)base)[i];
    if (dt == IFD_DTYPE_F16)
        return ifd_f16_to_f32(((const uint16_t *)base)[i]);
    return ifd_bf16_to_f32(((const uint16_t *)base)[i]);
}

AI float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AI void mm_tile(const struct ifd_weight *w, const float *x, float *y, int64_t r0, int t0,
                const int NR, const int NT, enum ifd_dtype dt, bool prefetch)
{
    const int64_t cols = w->cols, rows = w->rows;
    const size_t esz = dt == IFD_DTYPE_F32 ? 4 : 2;
    const void *wr[TILE_ROWS];
    const float *xt[TILE_TOKENS];
    __m256 acc[TILE_ROWS][TILE_TOKENS];

    for (int r = 0; r < NR; r++)
        wr[r] = (const uint8_t *)w->data + (size_t)(r0 + r) * (size_t)cols * esz;
    for (int t = 0; t < NT; t++)
        xt[t] = x + (size_t)(t0 + t) * (size_t)cols;
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++)
            acc[r][t] = _mm256_setzero_ps();

    /* The rows of the tiles about 8 KiB further on, into L2 (see
     * kernels_avx512.c), by the first token tile
     * of a block only (the others find the rows in cache): the loads of the
     * weights were where this loop waited (perf, 8 BF16 streams), NR short
     * interleaved rows not being a stream the hardware prefetcher runs
     * ahead on (as in the quantized kernels). */
    const size_t ahead = (size_t)kern_prefetch_ahead(cols * (int64_t)esz, NR);
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
        __m256 wv[TILE_ROWS];
        if (prefetch && (c * (int64_t)esz) % 64 == 0)
            for (int r = 0; r < NR; r++)
                _mm_prefetch((const char *)wr[r] + ahead + (size_t)c * esz, _MM_HINT_T1);
        for (int r = 0; r < NR; r++)
            wv[r] = w_load(wr[r], c, dt);
        for (int t = 0; t < NT; t++) {
            __m256 xv = _mm256_loadu_ps(xt[t] + c);
            for (int r = 0; r < NR; r++)
                acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    for (int t = 0; t < NT; t++) {
        for (int r = 0; r < NR; r++) {
            float s = hsum(acc[r][t]);
            for (int64_t k = c; k < cols; k++)
                s += w_scalar(wr[r], k, dt) * xt[t][k];
            y[(size_t)(t0 + t) * (size_t)rows + (size_t)(r0 + r)] = s;
        }
    }
}

/* One row against one token (decode): rows are read one after the other as
 * a single sequential stream (see kernels_avx512.c); four sums. */
AI float mm_row_vec(const void *wr, int64_t cols, const float *x, enum ifd_dtype dt)
{
    const size_t esz = dt == IFD_DTYPE_F32 ? 4 : 2;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= cols; c += 32) {
        for (size_t b = 0; b < 32 * esz; b += 64)
            _mm_prefetch((const char *)wr + (size_t)(c + KERN_STREAM_AHEAD_ELEMS) * esz + b, _MM_HINT_T1);
        a0 = _mm256_fmadd_ps(w_load(wr, c, dt), _mm256_loadu_ps(x + c), a0);
        a1 = _mm256_fmadd_ps(w_load(wr, c + 8, dt), _mm256_loadu_ps(x + c + 8), a1);
        a2 = _mm256_fmadd_ps(w_load(wr, c + 16, dt), _mm256_loadu_ps(x + c + 16), a2);
        a3 = _mm256_fmadd_ps(w_load(wr, c + 24, dt), _mm256_loadu_ps(x + c + 24), a3);
    }
    for (; c + 8 <= cols; c += 8)
        a0 = _mm256_fmadd_ps(w_load(wr, c, dt), _mm256_loadu_ps(x + c), a0);
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; c < cols; c++)
        s += w_scalar(wr, c, dt) * x[c];
    return s;
}

/* Every token tile of [tb, te) against NR rows. */
AI void mm_tokens(const struct ifd_weight *w, const float *x, float *y, int64_t r0, int tb, int te, const int NR,
                  enum ifd_dtype dt)
{
    int t = tb;
    for (; t + TILE_TOKENS <= te; t += TILE_TOKENS)
        mm_tile(w, x, y, r0, t, NR, TILE_TOKENS, dt, t == tb);
    if (te - t == 2)
        mm_tile(w, x, y, r0, t, NR, 2, dt, t == tb);
    else if (te - t == 1)
        mm_tile(w, x, y, r0, t, NR, 1, dt, t == tb);
}

AI void mm_rows(const struct ifd_weight *w, const float *x, int n_tokens, float *y,
                int64_t row_begin, int64_t row_end, enum ifd_dtype dt)
{
    int block = (int)(KERN_TOKEN_BLOCK_BYTES / ((size_t)w->cols * sizeof(float)));
    block = block < TILE_TOKENS ? TILE_TOKENS : block / TILE_TOKENS * TILE_TOKENS;
    if (n_tokens == 1) {
        const size_t esz = dt == IFD_DTYPE_F32 ? 4 : 2, row_bytes = (size_t)w->cols * esz;
        kern_prefetch_task_start((const uint8_t *)w->data + (size_t)row_begin * row_bytes,
                                 (size_t)(row_end - row_begin) * row_bytes);
        for (int64_t r = row_begin; r < row_end; r++)
            y[r] = mm_row_vec((const uint8_t *)w->data + (size_t)r * row_bytes, w->cols, x, dt);
        return;
    }
    for (int tb = 0; tb < n_tokens; tb += block) {
        int te = n_tokens - tb < block ? n_tokens : tb + block;
        int64_t r = row_begin;
        for (; r + TILE_ROWS <= row_end; r += TILE_ROWS)
            mm_tokens(w, x, y, r, tb, te, TILE_ROWS, dt);
        if (row_end - r == 2)
            mm_tokens(w, x, y, r, tb, te, 2, dt);
        else if (row_end - r == 1)
            mm_tokens(w, x, y, r, tb, te, 1, dt);
    }
}

static void avx2_matmul_rows(const struct ifd_weight *w, const float *x, int n_tokens, float *y,
                             int64_t row_begin, int64_t row_end)
{
    switch (w->dtype) {
    case IFD_DTYPE_F32: mm_rows(w, x, n_tokens, y, row_begin, row_end, IFD_DTYPE_F32); break;
    case IFD_DTYPE_F16: mm_rows(w, x, n_tokens, y, row_begin, row_end, IFD_DTYPE_F16); break;
    default: mm_rows(w, x, n_tokens, y, row_begin, row_end, IFD_DTYPE_BF16); break;
    }
}

static float avx2_dot(const float *a, const float *b, int n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void avx2_axpy(float *y, float a, const float *x, int n)
{
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

KERN_TABLE_ENTRIES(avx2)

const struct kern_isa kern_isa_avx2 = {
    .name = "avx2",
    .matmul_rows = avx2_matmul_rows,
    .dot = avx2_dot,
    .axpy = avx2_axpy,
    .attn_scores = avx2_attn_scores,
    .attn_values = avx2_attn_values,
    .softmax = avx2_softmax,
    .silu_mul = avx2_silu_mul,
};

#pragma GCC pop_options

#endif /* __x86_64__ */
