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
#define QW_MAX_ROWS 4 /* rows of one row-kernel tile */
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

/* ---- panels for prefill ----------------------------------------------------
 * With many tokens the kernel below (rows_layout) spends a third of its
 * instructions turning each row-token sum into a float. The panel kernel
 * instead puts 8 rows in the 8 lanes: a panel holds, for each pair of
 * columns in the activations' order, one vector whose lane r is row r's two
 * int16 codes, so VPMADDWD of it with a token's two codes broadcast adds 16
 * products of 8 rows at once, and a group ends with one conversion per 8
 * rows and token. Packing a panel (an 8 x 8 transposition per 8 pairs) is
 * paid once per call and shared by every token. */
#define QW_PANEL_ROWS 8
/* columns packed at once: 8 KiB of codes per panel, or one group when a
 * group is longer (QUANT_MAX_GROUP_SIZE, the size of the panel's arrays) */
#define QW_PANEL_COLS 512

struct qw_panel {
    __m256i pairs[QUANT_MAX_GROUP_SIZE / 2];                 /* [pair][row] */
    float scales[QUANT_MAX_GROUP_SIZE / 32][QW_PANEL_ROWS]; /* [group][row] */
    float biases[QUANT_MAX_GROUP_SIZE / 32][QW_PANEL_ROWS];
};
_Static_assert(QW_PANEL_COLS <= QUANT_MAX_GROUP_SIZE, "a panel holds QW_PANEL_COLS columns");

/* v[i] lane r <- v[r] lane i */
QW_INLINE void qw_transpose8(__m256i v[8])
{
    __m256i a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
        a[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        b[i] = _mm256_unpacklo_epi64(a[i], a[i + 2]);
        b[i + 1] = _mm256_unpackhi_epi64(a[i], a[i + 2]);
        b[i + 2] = _mm256_unpacklo_epi64(a[i + 1], a[i + 3]);
        b[i + 3] = _mm256_unpackhi_epi64(a[i + 1], a[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x20);
        v[i + 4] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x31);
    }
}

/* Rows [p0, p0 + nr) (nr <= 8; the missing lanes repeat row p0 with zero
 * scale and bias, so they compute zeros that are never stored), columns
 * [c0, c0 + kp); prefetches the same columns prefetch_ahead bytes further
 * (rows of a later panel; a prefetch never faults). The pairs follow quant_int16.c's activation order: at 8-bit
 * columns (2j, 2j + 1); at 4-bit, in each 32 columns, pairs 0-7 are the even
 * columns (0, 2), (4, 6), ... and pairs 8-15 the odd ones, which is what the
 * low and the high nibbles of 16 widened bytes are, read as int32. */
static void qw_pack(struct qw_panel *p, const struct qw_ctx *k, int bits, int gs, int64_t p0, int nr, int64_t c0,
                    int64_t kp, int64_t prefetch_ahead)
{
    const uint8_t *row[QW_PANEL_ROWS];
    for (int r = 0; r < QW_PANEL_ROWS; r++)
        row[r] = k->data + (p0 + (r < nr ? r : 0)) * k->row_bytes + c0 * bits / 8;
    const __m256i nibble = _mm256_set1_epi16(0x0f);
    /* 16 bytes of each row per step: 16 codes (8 pairs) at 8-bit, 32 at 4-bit */
    for (int64_t off = 0, j = 0; off < kp * bits / 8; off += 16) {
        __m256i v[QW_PANEL_ROWS], h[QW_PANEL_ROWS];
        /* With few tokens (batched decode) the packing is where the weights
         * come from memory, in 8 (16) short row streams, which the hardware
         * prefetcher does not follow: the same bytes of the rows of the next
         * panels are fetched now, to be in cache when they are packed. */
        if (off % 64 == 0)
            for (int r = 0; r < QW_PANEL_ROWS; r++)
                __builtin_prefetch(row[r] + prefetch_ahead + off);
        for (int r = 0; r < QW_PANEL_ROWS; r++) {
            v[r] = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(row[r] + off)));
            if (bits == 4) {
                h[r] = _mm256_srli_epi16(v[r], 4);
                v[r] = _mm256_and_si256(v[r], nibble);
            }
        }
        qw_transpose8(v);
        for (int i = 0; i < 8; i++)
            p->pairs[j++] = v[i];
        if (bits == 4) {
            qw_transpose8(h);
            for (int i = 0; i < 8; i++)
                p->pairs[j++] = h[i];
        }
    }
    const int64_t g0 = c0 / gs;
    for (int64_t g = 0; g < kp / gs; g++)
        for (int r = 0; r < QW_PANEL_ROWS; r++) {
            const int64_t qi = (p0 + r) * k->ng_row + g0 + g;
            p->scales[g][r] = r < nr ? qparam_at(k->qdt, k->scales, qi) : 0.0f;
            p->biases[g][r] = r < nr ? qparam_at(k->qdt, k->biases, qi) : 0.0f;
        }
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

/* acc += VPMADDWD(w, x), in asm so that the sum lands in acc's register:
 * written with intrinsics, GCC 12 added into a fresh register and moved it
 * back, a move per multiply in the panel kernel's loop. */
QW_INLINE __m256i qw_maddwd_add(__m256i acc, __m256i w, __m256i x)
{
    __m256i t;
    __asm__("vpmaddwd %3, %2, %1\n\tvpaddd %1, %0, %0" : "+x"(acc), "=&x"(t) : "x"(w), "x"(x));
    return acc;
}
#define QW_NAME(n) qw256_##n
#define QW_DOT(acc, w, x) qw_maddwd_add((acc), (w), (x))
/* 16 rows x 4 tokens: 8 accumulators, 2 panel vectors, the broadcast codes
 * and VPMADDWD's result fit the 16 registers */
#define QW_PANEL_P 2
#define QW_PANEL_T 4
#include "quant-int16.inc"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
/* acc += VPDPWSSD(w, x): through asm because GCC 12 copies the accumulator
 * to a fresh register around every _mm256_dpwssd_avx_epi32 (seen in the
 * panel kernel: a move per multiply-add, and slower than VPMADDWD + VPADDD). */
QW_INLINE __m256i qw_dpwssd(__m256i acc, __m256i w, __m256i x)
{
    __asm__("%{vex%} vpdpwssd %2, %1, %0" : "+x"(acc) : "x"(w), "x"(x));
    return acc;
}
#define QW_NAME(n) qwvnni_##n
#define QW_DOT(acc, w, x) qw_dpwssd((acc), (w), (x))
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
    if (a->n_tokens >= quant_act_prefill_min_tokens(QUANT_ACT_INT16)) {
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
