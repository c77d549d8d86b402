/* quant_int16.c - the product of a 4- or 8-bit quantized weight with
 * int16-coded activations, on AVX2 (VPMADDWD) and AVX-VNNI (VPDPWSSD): the
 * quantized products of CPUs without AVX-512, decode and prefill alike; and
 * at AVX-512, decode and batched decode. The AVX-512 level takes these
 * 256-bit kernels too: on Zen 4, which splits a 512-bit VPMADDWD in two,
 * the 512-bit row kernel an earlier version had was the slower (one thread,
 * the three Qwen2.5-0.5B shapes: 4-bit 25.4-27.8 G weights/s against
 * 27.6-30.6, 8-bit 17.4-25.0 against 23.3-31.3).
 *
 * Why. The f32 path (quant-simd.inc) widens each code to an int32, converts
 * it to a float and multiplies it with an f32 activation: on 8-lane AVX2 that
 * is about ten instructions per 16 codes, which keeps decode compute-bound on
 * a slow core, and prefill at one multiply-add per lane per instruction.
 * VPMADDWD multiplies 16 int16 pairs and adds them in twos into 8 int32
 * lanes: 16 products per instruction, twice the FMA's; AVX-VNNI's VPDPWSSD
 * also does the add. And MLX's codes need no widening instruction: a 32-bit
 * word of a row holds codes c0..c7 (4-bit, c0 in the low nibble) or c0..c3
 * (8-bit), so word & 0x000F000F is the int16 pair (c0, c4) and word >> 4,
 * >> 8, >> 12 give (c1, c5), (c2, c6), (c3, c7); at 8-bit word & 0x00FF00FF
 * is (c0, c2) and word >> 8 gives (c1, c3). The activations are stored in
 * the same pairs, so a shift and an AND make 16 codes ready to multiply.
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
 * block, 8], and the group sums [tile, group, 8]. Within a block, the
 * codes lie in the order of the int16 pairs the row kernel unpacks from one
 * chunk of a row (qw_pair_col()). Two kernels: the row kernel (1 to 3
 * tokens: decode) reads 8 rows in place; the panel kernel (4 tokens and
 * more) packs 8 rows into the vector lanes first. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/cpu.h"
#include "kernels-internal.h"
#include "model/quant.h"
#include "quant_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define QW_INLINE static inline __attribute__((always_inline))
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

/* The column (within its chunk) of int16 code i of a chunk: the codes of
 * one row's chunk are unpacked into int16 pairs by shifts and masks of its
 * 32-bit words (qw_unpack_chunk()), and pair p = i / 2 is pair p % W of the
 * unpacked vector p / W, W the chunk's words. 4-bit: a chunk is a block (32
 * or 64 columns, W = 4 or 8); vector m = 0..3 is the words shifted by 4m and
 * masked, so pair p is word g = p % W at shift m = p / W: columns 8g + m and
 * 8g + m + 4. 8-bit: a chunk is 32 columns (W = 8); vector m = 0, 1 is the
 * words shifted by 8m: pair p is word g = p % 8, m = p / 8: columns 4g + m
 * and 4g + m + 2. */
static inline int qw_pair_col(int bits, int block, int i)
{
    const int p = i / 2, hi = i % 2;
    if (bits == 4) {
        const int words = block / 8;
        return 8 * (p % words) + p / words + 4 * hi;
    }
    return 4 * (p % 8) + p / 8 + 2 * hi;
}

/* Columns of one chunk (see qw_pair_col()). */
static inline int qw_chunk_cols(int bits, int block)
{
    return bits == 4 ? block : 32;
}

void quant_act16_prepare_tokens(struct quant_act *a, const float *x, int t0, int t1)
{
    const int block = a->block, per_group = a->group_size / block;
    const int64_t cols = a->cols, nb = cols / block, ng = cols / a->group_size;
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    /* the column of each code of a block, once */
    const int chunk = qw_chunk_cols(a->bits, block);
    uint8_t order[64];
    for (int c = 0; c < block; c += chunk)
        for (int i = 0; i < chunk; i++)
            order[c + i] = (uint8_t)(c + qw_pair_col(a->bits, block, i));
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
            for (int i = 0; i < block; i++)
                o[i] = (int16_t)q[order[i]];
        }
    }
}

/* ---- panels for prefill ----------------------------------------------------
 * With many tokens the row kernel (rows_tile) reduces and converts every
 * row-token sum of every block; from 4 tokens the panel kernel is faster
 * (QUANT_ACT16_PANEL_MIN_TOKENS). It puts 8 rows in the 8 lanes: a panel
 * holds, for each pair of
 * columns in the activations' order, one vector whose lane r is row r's two
 * int16 codes, so VPMADDWD of it with a token's two codes broadcast adds 16
 * products of 8 rows at once, and a group ends with one conversion per 8
 * rows and token. Packing a panel (the rows' words transposed 8 x 8, then
 * shifted and masked) is paid once per call and shared by every token. */
#define QW_PANEL_ROWS 8
/* columns packed at once: 8 KiB of codes per panel, or one group when a
 * group is longer (QUANT_MAX_GROUP_SIZE, the size of the panel's arrays) */
#define QW_PANEL_COLS 512
/* groups whose scales and biases a row-kernel tile converts at once */
#define QW_PARAM_GROUPS 8

struct qw_panel {
    __m256i pairs[QUANT_MAX_GROUP_SIZE / 2];                 /* [pair][row] */
    float scales[QUANT_MAX_GROUP_SIZE / 32][QW_PANEL_ROWS]; /* [group][row] */
    float biases[QUANT_MAX_GROUP_SIZE / 32][QW_PANEL_ROWS];
};
_Static_assert(QW_PANEL_COLS <= QUANT_MAX_GROUP_SIZE, "a panel holds QW_PANEL_COLS columns");

/* The int16 pairs of one chunk of one row at p, in qw_pair_col()'s order:
 * 4 vectors for a 4-bit chunk of 64 columns, else 2; returns how many. A
 * 32-bit word's 16-bit halves hold 4 codes (4-bit) or 2 (8-bit) each, so a
 * VPSRLW by 12 (or 8) leaves the last of each half alone, without a mask. */
QW_INLINE int qw_unpack_chunk(const uint8_t *p, int bits, int block, __m256i v[4])
{
    if (bits == 4 && block == 64) {
        const __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)p);
        const __m256i mask = _mm256_set1_epi16(0x000f);
        v[0] = _mm256_and_si256(w, mask);
        v[1] = _mm256_and_si256(_mm256_srli_epi16(w, 4), mask);
        v[2] = _mm256_and_si256(_mm256_srli_epi16(w, 8), mask);
        v[3] = _mm256_srli_epi16(w, 12);
        return 4;
    }
    if (bits == 4) { /* 4 words in both halves, shifted by 0 | 4 and 8 | 12 */
        const __m256i w = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)p));
        const __m256i mask = _mm256_set1_epi16(0x000f);
        v[0] = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), mask);
        v[1] = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_setr_epi32(8, 8, 8, 8, 12, 12, 12, 12)), mask);
        return 2;
    }
    const __m256i w = _mm256_loadu_si256((const __m256i *)(const void *)p);
    v[0] = _mm256_and_si256(w, _mm256_set1_epi16(0x00ff));
    v[1] = _mm256_srli_epi16(w, 8);
    return 2;
}

/* v[i] lane r <- v[r] lane i, for 4 vectors whose 128-bit halves are rows
 * r and r + 4: lanes 0-3 of the results are rows 0-3, lanes 4-7 rows 4-7. */
QW_INLINE void qw_transpose4x2(__m256i v[4])
{
    const __m256i a0 = _mm256_unpacklo_epi32(v[0], v[1]), a1 = _mm256_unpackhi_epi32(v[0], v[1]);
    const __m256i a2 = _mm256_unpacklo_epi32(v[2], v[3]), a3 = _mm256_unpackhi_epi32(v[2], v[3]);
    v[0] = _mm256_unpacklo_epi64(a0, a2);
    v[1] = _mm256_unpackhi_epi64(a0, a2);
    v[2] = _mm256_unpacklo_epi64(a1, a3);
    v[3] = _mm256_unpackhi_epi64(a1, a3);
}

/* v[i] lane r <- v[r] lane i (8 x 8): the halves of rows r and r + 4 paired
 * up, then two 4 x 2 transposes. */
QW_INLINE void qw_transpose8x8(__m256i v[8])
{
    __m256i lo[4], hi[4];
    for (int r = 0; r < 4; r++) {
        lo[r] = _mm256_permute2x128_si256(v[r], v[r + 4], 0x20);
        hi[r] = _mm256_permute2x128_si256(v[r], v[r + 4], 0x31);
    }
    qw_transpose4x2(lo);
    qw_transpose4x2(hi);
    for (int i = 0; i < 4; i++) {
        v[i] = lo[i];
        v[i + 4] = hi[i];
    }
}

/* 8 scales or biases from i on, as floats. */
QW_INLINE __m256i qw_params8(enum ifd_dtype t, const void *base, int64_t i)
{
    switch (t) {
    case IFD_DTYPE_BF16:
        return _mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)base + i))), 16);
    case IFD_DTYPE_F16:
        return _mm256_castps_si256(
            _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)base + i))));
    default:
        return _mm256_loadu_si256((const __m256i *)(const void *)((const float *)base + i));
    }
}

/* The scales or biases [group][row] of groups [g0, g0 + ng) of rows
 * [p0, p0 + nr) (zero for the missing rows), for a panel or a row-kernel
 * tile, stored as qdt (inlined per dtype: a conversion chosen per row cost
 * the row kernel a fifth of its time): 8 groups of 8 rows at a time
 * converted and transposed (one scalar conversion each cost as much as
 * packing the codes). Fewer than 8 groups still read 8 (the next row's,
 * stored past the ng asked for but never used) unless that would pass the
 * end of the array: only then through a zero-padded copy. */
QW_INLINE void qw_pack_params_as(float (*out)[QW_PANEL_ROWS], const struct qw_ctx *k, const void *base, int64_t p0,
                                 int nr, int64_t g0, int64_t ng, const enum ifd_dtype qdt)
{
    const size_t esz = qdt == IFD_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t);
    const int64_t entries = k->rows * k->ng_row;
    for (int64_t g = 0; g < ng; g += 8) {
        const int64_t n = ng - g < 8 ? ng - g : 8;
        __m256i v[QW_PANEL_ROWS];
        for (int r = 0; r < QW_PANEL_ROWS; r++) {
            const int64_t i = (p0 + r) * k->ng_row + g0 + g;
            if (r >= nr) {
                v[r] = _mm256_setzero_si256();
            } else if (__builtin_expect(i + 8 <= entries, 1)) {
                v[r] = qw_params8(qdt, base, i);
            } else {
                uint8_t tmp[8 * sizeof(float)] = {0};
                memcpy(tmp, (const uint8_t *)base + (size_t)i * esz, (size_t)n * esz);
                v[r] = qw_params8(qdt, tmp, 0);
            }
        }
        qw_transpose8x8(v);
        /* all 8 (see the assertion below): storing n was a REP MOVSQ */
        for (int i = 0; i < 8; i++)
            _mm256_storeu_si256((__m256i *)(void *)out[g + i], v[i]);
    }
}
_Static_assert(QUANT_MAX_GROUP_SIZE / 32 % 8 == 0 && QW_PARAM_GROUPS % 8 == 0,
               "the arrays qw_pack_params_as() fills hold a multiple of 8 groups");

/* The scales and the biases, as qw_pack_params_as() packs them. */
QW_INLINE void qw_pack_params(float (*scales)[QW_PANEL_ROWS], float (*biases)[QW_PANEL_ROWS], const struct qw_ctx *k,
                              int64_t p0, int nr, int64_t g0, int64_t ng)
{
    switch (k->qdt) {
    case IFD_DTYPE_BF16:
        qw_pack_params_as(scales, k, k->scales, p0, nr, g0, ng, IFD_DTYPE_BF16);
        qw_pack_params_as(biases, k, k->biases, p0, nr, g0, ng, IFD_DTYPE_BF16);
        break;
    case IFD_DTYPE_F16:
        qw_pack_params_as(scales, k, k->scales, p0, nr, g0, ng, IFD_DTYPE_F16);
        qw_pack_params_as(biases, k, k->biases, p0, nr, g0, ng, IFD_DTYPE_F16);
        break;
    default:
        qw_pack_params_as(scales, k, k->scales, p0, nr, g0, ng, IFD_DTYPE_F32);
        qw_pack_params_as(biases, k, k->biases, p0, nr, g0, ng, IFD_DTYPE_F32);
        break;
    }
}

/* Fetches into L2 the scales and biases of rows [p0, p0 + n), which a
 * row-kernel tile converts first (qw_pack_params()): they are streams of
 * their own beside the codes (28 bytes a row and array for a BF16 row of 896
 * columns), which the codes' prefetch does not cover. Taken at the tile
 * the codes' prefetch distance ahead of it. Unprefetched, their misses
 * stalled each tile at its first conversion: a tenth of the 4-bit row
 * kernel's samples sat on the shifts that widen the BF16 scales. */
QW_INLINE void qw_prefetch_params(const struct qw_ctx *k, int64_t p0, int n)
{
    const int64_t esz = k->qdt == IFD_DTYPE_F32 ? 4 : 2;
    const int64_t first = p0 * k->ng_row * esz, last = (p0 + n) * k->ng_row * esz - 1;
    for (int64_t o = first & ~(int64_t)63; o <= last; o += 64) {
        __builtin_prefetch((const uint8_t *)k->scales + o, 0, 2);
        __builtin_prefetch((const uint8_t *)k->biases + o, 0, 2);
    }
}

/* Rows [p0, p0 + nr) (nr <= 8; the missing lanes repeat row p0 with zero
 * scale and bias, so they compute zeros that are never stored), columns
 * [c0, c0 + kp); prefetches the same columns prefetch_ahead bytes further
 * (rows of a later panel; a prefetch never faults). Pair j of each chunk
 * is the pair of qw_pair_col(): the rows' 32-bit words are
 * transposed first (8 rows into the lanes), then shifted and masked, which
 * is a third of the work of transposing unpacked pairs. */
static void qw_pack(struct qw_panel *p, const struct qw_ctx *k, int bits, int gs, int64_t p0, int nr, int64_t c0,
                    int64_t kp, int64_t prefetch_ahead)
{
    const uint8_t *row[QW_PANEL_ROWS];
    for (int r = 0; r < QW_PANEL_ROWS; r++)
        row[r] = k->data + (p0 + (r < nr ? r : 0)) * k->row_bytes + c0 * bits / 8;
    const int chunk_bytes = qw_chunk_cols(bits, k->a->block) * bits / 8, words = chunk_bytes / 4;
    const int shift = bits == 4 ? 4 : 8, n_shifts = 32 / bits / 2;
    const __m256i mask = _mm256_set1_epi16((short)((1 << bits) - 1));
    for (int64_t off = 0, j = 0; off < kp * bits / 8; off += chunk_bytes, j += words * n_shifts) {
        /* With few tokens (batched decode) the packing is where the weights
         * come from memory, in 8 (16) short row streams, which the hardware
         * prefetcher does not follow: the same bytes of the rows of the
         * next panels are fetched now, to be in cache when they are packed. */
        if (off % 64 == 0)
            for (int r = 0; r < QW_PANEL_ROWS; r++)
                __builtin_prefetch(row[r] + prefetch_ahead + off, 0, 2);
        __m256i v[QW_PANEL_ROWS]; /* after the transpose, v[g]: word g of rows 0..7 */
        if (words == 8) {
            for (int r = 0; r < QW_PANEL_ROWS; r++)
                v[r] = _mm256_loadu_si256((const __m256i *)(const void *)(row[r] + off));
            qw_transpose8x8(v);
        } else { /* rows r and r + 4 in one vector's halves */
            for (int r = 0; r < 4; r++)
                v[r] = _mm256_inserti128_si256(
                    _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(row[r] + off))),
                    _mm_loadu_si128((const __m128i *)(const void *)(row[r + 4] + off)), 1);
            qw_transpose4x2(v);
        }
        __m256i *out = &p->pairs[j];
        for (int m = 0; m < n_shifts; m++)
            for (int g = 0; g < words; g++)
                out[words * m + g] = _mm256_and_si256(_mm256_srli_epi16(v[g], shift * m), mask);
    }
    qw_pack_params(p->scales, p->biases, k, p0, nr, c0 / gs, kp / gs);
}

/* y[t, p0 + r] for r < nr (+)= v[r]: the lanes of one panel's result. */
QW_INLINE void qw_store_rows(float *dst, __m256 v, int nr, bool add)
{
    if (nr == QW_PANEL_ROWS) {
        if (add)
            v = _mm256_add_ps(v, _mm256_loadu_ps(dst));
        _mm256_storeu_ps(dst, v);
        return;
    }
    float lanes[QW_PANEL_ROWS];
    _mm256_storeu_ps(lanes, v);
    for (int r = 0; r < nr; r++)
        dst[r] = add ? dst[r] + lanes[r] : lanes[r];
}

/* The sum of 8 vectors' lanes, vector r's into lane r (the row kernel's
 * tile: 8 rows' int32 sums in one vector), as a tree of three levels that
 * the row kernel climbs as its vectors become ready (qw_reduce_ready()), so
 * that little of it is left when the last row is done. Level 1 adds the
 * lanes of vectors 2i and 2i + 1 pairwise, [a0+a2, b0+b2, a1+a3, b1+b3] per
 * 128-bit half (a = v[2i], b = v[2i + 1]); level 2 pairs of those, rows
 * 4i..4i + 3 per half; level 3 the halves. */
struct qw_reduce {
    __m256i first[4], pair[4], quad[2]; /* first: vector 2i of pair i, till 2i + 1 comes */
};

QW_INLINE __m256i qw_reduce_level1(__m256i a, __m256i b)
{
    return _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
}

QW_INLINE __m256i qw_reduce_level2(__m256i a, __m256i b)
{
    return _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
}

/* Vector i (0..7) of the 8 is v: climbs as far as v completes. Each pair
 * must come in low index first, and pair 2q before pair 2q + 1 (as rows
 * in order do, one token or two). */
QW_INLINE void qw_reduce_ready(struct qw_reduce *s, int i, __m256i v)
{
    if (i % 2 == 0) {
        s->first[i / 2] = v;
        return;
    }
    s->pair[i / 2] = qw_reduce_level1(s->first[i / 2], v);
    if (i % 4 == 3)
        s->quad[i / 4] = qw_reduce_level2(s->pair[i / 2 - 1], s->pair[i / 2]);
}

/* Lane r <- the sum of vector r's lanes, once all 8 are in. */
QW_INLINE __m256i qw_reduce_done(const struct qw_reduce *s)
{
    return _mm256_add_epi32(_mm256_permute2x128_si256(s->quad[0], s->quad[1], 0x20),
                            _mm256_permute2x128_si256(s->quad[0], s->quad[1], 0x31));
}

#define QW_NAME(n) qw256_##n
#define QW_DOT(acc, w, x) quant_maddwd_add((acc), (w), (x))
/* 16 rows x 4 tokens: 8 accumulators, 2 panel vectors, the broadcast codes
 * and VPMADDWD's result fit the 16 registers */
#define QW_PANEL_P 2
#define QW_PANEL_T 4
#include "quant-int16.inc"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
#define QW_NAME(n) qwvnni_##n
#define QW_DOT(acc, w, x) quant_dpwssd_vex((acc), (w), (x))
/* the same tile: on the Zen 4 dev VM 8 rows x 8 tokens measured the same,
 * and either as fast as AVX2's VPMADDWD + VPADDD (the loads of the panel
 * and of the broadcast codes bound both) */
#define QW_PANEL_P 2
#define QW_PANEL_T 4
#include "quant-int16.inc"
#pragma GCC pop_options

int quant_act16_matmul_rows(const struct ifd_weight *w, const struct quant_act *a, float *y, int64_t row_begin,
                            int64_t row_end)
{
    if (w->panels)
        return quant_panel_matmul_rows(w, a, y, row_begin, row_end);
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
    const bool vnni = cpu_simd_level() == CPU_SIMD_AVX2_VNNI;
    if (!quant_act16_row_kernel(a)) {
        if (vnni)
            qwvnni_panel_rows(&k, y, row_begin, row_end);
        else
            qw256_panel_rows(&k, y, row_begin, row_end);
    } else if (vnni) {
        qwvnni_matmul_rows(&k, y, row_begin, row_end);
    } else {
        qw256_matmul_rows(&k, y, row_begin, row_end);
    }
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
