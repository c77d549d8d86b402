/* kernels_avx512.c - AVX-512 kernels (Zen4, Sapphire Rapids and later).
 *
 * Every function here is compiled for AVX-512 through the target pragma, so
 * the file links into a baseline x86-64 build; kernels.c calls it only when
 * the features detected once by core/base/cpu.c include them.
 *
 * The matrix product is register-blocked: a tile of up to 4 weight rows x 5
 * tokens keeps 20 accumulators in zmm registers, and F16/BF16 weights are
 * widened in registers (F16 by vcvtph2ps, exact; BF16 by a 16-bit shift).
 * Decode (1 token) streams the task's rows one after the other.
 *
 * Both prefetch the weights into L2 (prefetcht1), not L1: a far-ahead
 * prefetch into L1 holds one of the core's few L1 miss buffers for the whole
 * trip to memory, and the demand loads queued behind them. Measured on Zen 4
 * (12 BF16 layers of the Qwen2.5-0.5B shape): decode 21.4 -> 14.0 ms on one
 * thread, 13.2 -> 10.5 on two; 2 tokens 27 -> 15 ms on one. */
#if defined(__x86_64__)

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")

#include <immintrin.h>
#include <stdbool.h>

#include "kernels-internal.h"

#define AI static inline __attribute__((always_inline))

/* Measured on Zen 4, one thread: 4 x 6 tiles (24 accumulators) took 1.4x
 * the time of 4 x 5 at 8 and 16 tokens, 4 x 4 and 4 x 3 about 1.05x. */
enum { TILE_ROWS = 4, TILE_TOKENS = 5 };

/* 16 weights from element index i, widened to f32. */
AI __m512 w_load(const void *base, int64_t i, enum ifd_dtype dt)
{
    if (dt == IFD_DTYPE_F32)
        return _mm512_loadu_ps((const float *)base + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)base + i));
    if (dt == IFD_DTYPE_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The first popcount(m) of 16 weights (a row's tail), the rest zero. */
AI __m512 w_load_mask(const void *base, int64_t i, enum ifd_dtype dt, __mmask16 m)
{
    if (dt == IFD_DTYPE_F32)
        return _mm512_maskz_loadu_ps(m, (const float *)base + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)base + i);
    if (dt == IFD_DTYPE_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* y[t, r0 + r] for a tile of NR rows (row r at wbase + r * cols elements of
 * dtype dt) and NT tokens starting at token t0. NR and NT are constants after
 * inlining, so acc[][] lives in registers. */
AI void mm_tile(const void *wbase, int64_t cols, const float *x, float *y, int64_t rows, int64_t r0, int t0,
                const int NR, const int NT, enum ifd_dtype dt, bool prefetch)
{
    const size_t esz = dt == IFD_DTYPE_F32 ? 4 : 2;
    const void *wr[TILE_ROWS];
    const float *xt[TILE_TOKENS];
    __m512 acc[TILE_ROWS][TILE_TOKENS];

    for (int r = 0; r < NR; r++)
        wr[r] = (const uint8_t *)wbase + (size_t)r * (size_t)cols * esz;
    for (int t = 0; t < NT; t++)
        xt[t] = x + (size_t)(t0 + t) * (size_t)cols;
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++)
            acc[r][t] = _mm512_setzero_ps();

    /* The rows of the tiles about 8 KiB further on, into L2, by the first
     * token tile of a block only (the others find the rows in cache), as the
     * AVX2 kernel does: without it a batch of 2 to 16 tokens waited on the
     * loads of NR short interleaved rows, which the hardware prefetcher does
     * not run ahead on (12 BF16 layers of the Qwen2.5-0.5B shape, one
     * thread: 5 tokens took 38 ms against 20 ms for one). */
    const size_t ahead = (size_t)kern_prefetch_ahead(cols * (int64_t)esz, NR);
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m512 wv[TILE_ROWS];
        if (prefetch && (c * (int64_t)esz) % 64 == 0)
            for (int r = 0; r < NR; r++)
                _mm_prefetch((const char *)wr[r] + ahead + (size_t)c * esz, _MM_HINT_T1);
        for (int r = 0; r < NR; r++)
            wv[r] = w_load(wr[r], c, dt);
        for (int t = 0; t < NT; t++) {
            __m512 xv = _mm512_loadu_ps(xt[t] + c);
            for (int r = 0; r < NR; r++)
                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    if (c < cols) {
        __mmask16 m = (__mmask16)((1u << (cols - c)) - 1);
        __m512 wv[TILE_ROWS];
        for (int r = 0; r < NR; r++)
            wv[r] = w_load_mask(wr[r], c, dt, m);
        for (int t = 0; t < NT; t++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, xt[t] + c);
            for (int r = 0; r < NR; r++)
                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < NR; r++)
            y[(size_t)(t0 + t) * (size_t)rows + (size_t)(r0 + r)] = _mm512_reduce_add_ps(acc[r][t]);
}

/* One row against one token (decode): the task's rows are read as a single
 * sequential stream, which the hardware prefetcher follows best when rows
 * are short (a 896-column BF16 row is only 28 cache lines), with the
 * prefetch KERN_STREAM_AHEAD_ELEMS ahead; four sums hide the FMA latency. */
AI float mm_row_vec(const void *wr, int64_t cols, const float *x, enum ifd_dtype dt)
{
    const size_t esz = dt == IFD_DTYPE_F32 ? 4 : 2;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 64 <= cols; c += 64) {
        /* every cache line of the chunk KERN_STREAM_AHEAD_ELEMS ahead */
        for (size_t b = 0; b < 64 * esz; b += 64)
            _mm_prefetch((const char *)wr + (size_t)(c + KERN_STREAM_AHEAD_ELEMS) * esz + b, _MM_HINT_T1);
        a0 = _mm512_fmadd_ps(w_load(wr, c, dt), _mm512_loadu_ps(x + c), a0);
        a1 = _mm512_fmadd_ps(w_load(wr, c + 16, dt), _mm512_loadu_ps(x + c + 16), a1);
        a2 = _mm512_fmadd_ps(w_load(wr, c + 32, dt), _mm512_loadu_ps(x + c + 32), a2);
        a3 = _mm512_fmadd_ps(w_load(wr, c + 48, dt), _mm512_loadu_ps(x + c + 48), a3);
    }
    for (; c < cols; c += 16) {
        __mmask16 m = cols - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cols - c)) - 1);
        a0 = _mm512_fmadd_ps(w_load_mask(wr, c, dt, m), _mm512_maskz_loadu_ps(m, x + c), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* Every token tile of [tb, te) against NR rows; the first one prefetches
 * the rows ahead. */
AI void mm_tokens(const void *wbase, int64_t cols, const float *x, float *y, int64_t rows, int64_t r0, int tb,
                  int te, const int NR, enum ifd_dtype dt)
{
    int t = tb;
    for (; t + TILE_TOKENS <= te; t += TILE_TOKENS)
        mm_tile(wbase, cols, x, y, rows, r0, t, NR, TILE_TOKENS, dt, t == tb);
    const bool pf = t == tb;
    switch (te - t) {
    case 4: mm_tile(wbase, cols, x, y, rows, r0, t, NR, 4, dt, pf); break;
    case 3: mm_tile(wbase, cols, x, y, rows, r0, t, NR, 3, dt, pf); break;
    case 2: mm_tile(wbase, cols, x, y, rows, r0, t, NR, 2, dt, pf); break;
    case 1: mm_tile(wbase, cols, x, y, rows, r0, t, NR, 1, dt, pf); break;
    default: break;
    }
}

AI void mm_rows(const struct ifd_weight *w, const float *x, int n_tokens, float *y,
                int64_t row_begin, int64_t row_end, enum ifd_dtype dt)
{
    const int64_t cols = w->cols, rows = w->rows;
    const size_t esz = dt == IFD_DTYPE_F32 ? 4 : 2;
    /* Tokens are taken in blocks whose activations fit in L2, so the rows of
     * this task are streamed once per block rather than once per tile. */
    int block = (int)(KERN_TOKEN_BLOCK_BYTES / ((size_t)cols * sizeof(float)));
    block = block < TILE_TOKENS ? TILE_TOKENS : block / TILE_TOKENS * TILE_TOKENS;
    for (int tb = 0; tb < n_tokens; tb += block) {
        int te = n_tokens - tb < block ? n_tokens : tb + block;
        int64_t r = row_begin;
        if (n_tokens == 1) {
            const size_t row_bytes = (size_t)cols * esz;
            kern_prefetch_task_start((const uint8_t *)w->data + (size_t)r * row_bytes,
                                     (size_t)(row_end - r) * row_bytes);
            for (; r < row_end; r++)
                y[r] = mm_row_vec((const uint8_t *)w->data + (size_t)r * row_bytes, cols, x, dt);
            break;
        }
        /* Widening F16/BF16 rows once into an f32 buffer that every token
         * tile reused (as this kernel did up to 18 tokens and more) was
         * slower than widening in registers at every token count measured,
         * 8 to 64: 16 tokens 86 -> 59 ms on one thread. */
        for (; r + TILE_ROWS <= row_end; r += TILE_ROWS)
            mm_tokens((const uint8_t *)w->data + (size_t)r * (size_t)cols * esz, cols, x, y, rows, r, tb, te,
                      TILE_ROWS, dt);
        for (; r < row_end; r++)
            mm_tokens((const uint8_t *)w->data + (size_t)r * (size_t)cols * esz, cols, x, y, rows, r, tb, te, 1, dt);
    }
}

static void avx512_matmul_rows(const struct ifd_weight *w, const float *x, int n_tokens, float *y,
                               int64_t row_begin, int64_t row_end)
{
    switch (w->dtype) {
    case IFD_DTYPE_F32: mm_rows(w, x, n_tokens, y, row_begin, row_end, IFD_DTYPE_F32); break;
    case IFD_DTYPE_F16: mm_rows(w, x, n_tokens, y, row_begin, row_end, IFD_DTYPE_F16); break;
    default: mm_rows(w, x, n_tokens, y, row_begin, row_end, IFD_DTYPE_BF16); break;
    }
}

static float avx512_dot(const float *a, const float *b, int n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static void avx512_axpy(float *y, float a, const float *x, int n)
{
    __m512 av = _mm512_set1_ps(a);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 yv = _mm512_maskz_loadu_ps(m, y + i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), yv));
    }
}

KERN_TABLE_ENTRIES(avx512)

const struct kern_isa kern_isa_avx512 = {
    .name = "avx512",
    .matmul_rows = avx512_matmul_rows,
    .dot = avx512_dot,
    .axpy = avx512_axpy,
    .attn_scores = avx512_attn_scores,
    .attn_values = avx512_attn_values,
    .softmax = avx512_softmax,
    .silu_mul = avx512_silu_mul,
};

#pragma GCC pop_options

#endif /* __x86_64__ */
