/* quant_int8.c - the prefill product of a 4- or 8-bit quantized weight with
 * int8-coded activations, on AVX-512 VNNI.
 *
 * Why a second path: prefill is bound by arithmetic, not memory. The f32 path
 * (quant-simd.inc) does 16 multiply-adds per instruction; VPDPBUSD multiplies
 * 64 unsigned bytes by 64 signed bytes and adds them in fours into 16 int32
 * lanes, 64 per instruction. MLX codes are unsigned (0..15, 0..255), exactly
 * the operand VPDPBUSD wants. Activations are coded per block k of 32 or 64
 * columns with d_k = max|x| / 127 as two int8 codes,
 *     x_c ~= d_k * (hi_c + lo_c / 254),   hi_c = round(x_c / d_k),
 *     lo_c = round((x_c / d_k - hi_c) * 254),
 * so for one weight group (scale s, bias b) of a row and one token
 *     sum_c (s q_c + b) x_c ~= s * sum_k d_k * (sum q hi + sum q lo / 254) + b * sum_c x_c,
 * the bias term taking the exact f32 sum of x. One int8 code alone (llama.cpp's
 * Q8_0 activations) is twice as fast but moved the tinystories MLX golden
 * logits by 0.7 and changed their greedy tokens; the pair keeps them within
 * 0.004. Decode (one token) keeps the exact f32 path: it is bound by memory.
 *
 * Layout. Lane r of VPDPBUSD sums four byte products, so the kernel packs a
 * panel of 16 rows once into vectors whose lane r holds four codes of row r
 * (one gather per vector); every token of the call then streams through the
 * panel, which shares the cost of the transposition among them. At 8-bit lane
 * r of vector j holds columns 4j..4j+3 of row r; at 4-bit, vector 2j holds
 * the low nibbles of bytes 4j..4j+3 (columns 8j + 0, 2, 4, 6) and vector
 * 2j + 1 the high ones (8j + 1, 3, 5, 7). The activations are permuted into
 * the same order once per call, so int32 j of a token's codes meets vector j.
 *
 * This file also holds what both kinds of integer-coded activations share
 * (quant.h's quant_act_*: which kind the level takes, the memory layout,
 * the dispatch); the INT16 kind's kernels are in quant_int16.c.
 */
#include "model/quant.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/cpu.h"
#include "quant_internal.h"

/* Below this many tokens the f32 path is faster: packing the panels costs the
 * same whatever the token count (measured with `inferctl run` on the 4-bit
 * Qwen2.5-0.5B-shaped bench model, 2 threads: f32 ahead at 16 tokens, int8
 * ahead at 24). */
#define QUANT_ACT_DEFAULT_MIN_TOKENS 20

/* 0: the defaults; else what a test set for both kinds. */
static int act_min_tokens_forced = 0;

void quant_act_set_min_tokens(int n)
{
    act_min_tokens_forced = n > 0 ? n : 0;
}

int quant_act_prefill_min_tokens(enum quant_act_kind kind)
{
    if (act_min_tokens_forced)
        return act_min_tokens_forced;
    return kind == QUANT_ACT_INT8_PAIR ? QUANT_ACT_DEFAULT_MIN_TOKENS : QUANT_ACT16_PANEL_MIN_TOKENS;
}

/* The activation block: 64 columns when the weight group is a multiple of 64,
 * else 32; either way a group is whole blocks, so its scale covers each. */
static int act_block_of(int group_size)
{
    return group_size % 64 == 0 ? 64 : 32;
}

/* From this many tokens up to the int8 pair's threshold, AVX-512 takes the
 * int16 panel kernel (its AVX2 code): measured with the daemon, 4-bit bench
 * model, alternated: at 8 streams 139-141 tok/s against 129-144 with the
 * AVX-512 f32 kernel (121 in an earlier run), at 4 streams 95-97 against
 * 107-112, so not below 8. */
#define QUANT_ACT16_AVX512_MIN_TOKENS 8

/* The kind a product of n_tokens takes at the level in use, or -1 for none
 * (the f32 kernels). AVX2 levels: int16 for every count. AVX-512: int16 for
 * up to 3 tokens (decode: the row kernel, quant_int16.c), the int8 pair
 * (with VNNI) from its threshold up, the int16 panel kernel from
 * QUANT_ACT16_AVX512_MIN_TOKENS (batched decode), the f32 kernels between
 * (see QUANT_ACT16_AVX512_MIN_TOKENS). A weight in panels (quant_panel.c):
 * int16 at every vector level, whatever the count, but the int8 pair from
 * its threshold up with AVX-512 VNNI (qi_pack() reads panels too). */
static int act_kind_for(const struct ifd_weight *w, int n_tokens)
{
    const enum cpu_simd l = cpu_simd_level();
    if (w->panels) { /* quant_panel.c's kernels (INT16), and at AVX-512 VNNI the int8 pair's */
        if (l == CPU_SIMD_SCALAR)
            return -1;
        return cpu_simd_vnni512() && n_tokens >= QUANT_ACT16_PANEL_MIN_TOKENS &&
                       n_tokens >= quant_act_prefill_min_tokens(QUANT_ACT_INT8_PAIR)
                   ? QUANT_ACT_INT8_PAIR
                   : QUANT_ACT_INT16;
    }
    if (l == CPU_SIMD_AVX2 || l == CPU_SIMD_AVX2_VNNI)
        return QUANT_ACT_INT16;
    if (l != CPU_SIMD_AVX512)
        return -1;
    if (n_tokens < QUANT_ACT16_PANEL_MIN_TOKENS)
        return QUANT_ACT_INT16;
    if (cpu_simd_vnni512() && n_tokens >= quant_act_prefill_min_tokens(QUANT_ACT_INT8_PAIR))
        return QUANT_ACT_INT8_PAIR;
    const int min16 = quant_act_prefill_min_tokens(QUANT_ACT_INT16) > QUANT_ACT16_AVX512_MIN_TOKENS
                          ? quant_act_prefill_min_tokens(QUANT_ACT_INT16)
                          : QUANT_ACT16_AVX512_MIN_TOKENS;
    return n_tokens >= min16 ? QUANT_ACT_INT16 : -1;
}

bool quant_act_eligible(const struct ifd_weight *w, int n_tokens)
{
    if ((w->bits != 4 && w->bits != 8) || w->group_size % 32 != 0 || n_tokens < 1)
        return false;
    return act_kind_for(w, n_tokens) >= 0;
}

bool quant_act_matches(const struct quant_act *a, const struct ifd_weight *w)
{
    return a->bits == w->bits && a->group_size == w->group_size && a->cols == w->cols &&
           (int)a->kind == act_kind_for(w, a->n_tokens);
}

/* Floats of each part of a's memory, in the order they lie there (the
 * codes, int32 words or int16 codes, counted in floats, rounded up). */
static void act_parts(const struct quant_act *a, size_t *ret_ns, size_t *ret_ng, size_t *ret_nw)
{
    /* both kinds keep tokens in zero-padded tiles of QUANT_ACT_TILE */
    const int n_tiles = (a->n_tokens + QUANT_ACT_TILE - 1) / QUANT_ACT_TILE;
    const size_t slots = (size_t)n_tiles * QUANT_ACT_TILE;
    if (a->kind == QUANT_ACT_INT8_PAIR)
        *ret_nw = slots * 2 * (size_t)(a->cols / 4);
    else
        *ret_nw = (slots * (size_t)a->cols + 1) / 2;
    *ret_ns = slots * (size_t)(a->cols / a->block);
    *ret_ng = slots * (size_t)(a->cols / a->group_size);
}

size_t quant_act_setup(struct quant_act *a, const struct ifd_weight *w, int n_tokens)
{
    const int kind = act_kind_for(w, n_tokens);
    *a = (struct quant_act){
        .kind = kind < 0 ? QUANT_ACT_INT8_PAIR : (enum quant_act_kind)kind,
        .bits = w->bits,
        .group_size = w->group_size,
        .block = act_block_of(w->group_size),
        .n_tokens = n_tokens,
        .cols = w->cols,
    };
    size_t ns, ng, nw;
    act_parts(a, &ns, &ng, &nw);
    return (ns + ng + nw) * sizeof(float);
}

void quant_act_attach(struct quant_act *a, void *mem)
{
    size_t ns, ng, nw;
    act_parts(a, &ns, &ng, &nw);
    /* Zeroed: the padding tokens of the last tile are zeros, so the panel
     * kernels can always compute whole tiles, and the int8 pair's group
     * sums are accumulated. The int16 row kernel (decode) uses its tokens'
     * lanes only, whose group sums quant_act16_prepare_tokens() starts at
     * zero: clearing its 15-80 KB a product was 1.3% of 4-bit decode. */
    if (!quant_act16_row_kernel(a))
        memset(mem, 0, (ns + ng + nw) * sizeof(float));
    float *f = mem;
    a->scale = f;
    a->group_sum = f + ns;
    if (a->kind == QUANT_ACT_INT8_PAIR)
        a->words = (int32_t *)(f + ns + ng);
    else
        a->codes = (int16_t *)(f + ns + ng);
}

int quant_act_alloc(struct quant_act *a, const struct ifd_weight *w, int n_tokens)
{
    size_t bytes = quant_act_setup(a, w, n_tokens);
    void *mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!mem)
        return -ENOMEM;
    quant_act_attach(a, mem);
    return 0;
}

void quant_act_free(struct quant_act *a)
{
    free(a->scale); /* the start of the memory quant_act_alloc() attached */
    *a = (struct quant_act){0};
}

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")

#define QI_INLINE static inline __attribute__((always_inline))

/* Rows of one panel: one per int32 lane. */
#define QI_ROWS 16
/* Columns of one panel; with the 16 rows, 32 KiB of codes on the heap. */
#define QI_PANEL_COLS 2048
#define QI_TILE QUANT_ACT_TILE

static void act8_prepare_tokens(struct quant_act *a, const float *x, int t0, int t1)
{
    const int64_t cols = a->cols, nb = cols / a->block, ng = cols / a->group_size, nw = cols / 4;
    const int vecs = a->block / 16, per_group = a->group_size / a->block;
    /* 4-bit order: in each 8 columns, the even ones then the odd ones. */
    const __m128i perm4 = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int t = t0; t < t1; t++) {
        const int64_t tile = t / QI_TILE, tt = t % QI_TILE;
        const float *xr = x + (int64_t)t * cols;
        int32_t *wr = a->words + tile * nw * 2 * QI_TILE + tt;
        float *dr = a->scale + tile * nb * QI_TILE + tt;
        float *sr = a->group_sum + tile * ng * QI_TILE + tt;
        for (int64_t k = 0; k < nb; k++) {
            const float *xb = xr + k * a->block;
            __m512 v[4], amax = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
            for (int i = 0; i < vecs; i++) {
                v[i] = _mm512_loadu_ps(xb + 16 * i);
                amax = _mm512_max_ps(amax, _mm512_and_ps(v[i], abs_mask));
                sum = _mm512_add_ps(sum, v[i]);
            }
            const float m = _mm512_reduce_max_ps(amax);
            const float d = m / 127.0f;
            const __m512 inv = _mm512_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
            dr[k * QI_TILE] = d;
            sr[k / per_group * QI_TILE] += _mm512_reduce_add_ps(sum); /* zeroed by quant_act_attach */
            for (int i = 0; i < vecs; i++) {
                /* Round to nearest even (the default MXCSR mode): |hi| <= 127,
                 * and the remainder, within +-0.5, scaled to |lo| <= 127. */
                const __m512 u = _mm512_mul_ps(v[i], inv);
                const __m512i hi = _mm512_cvtps_epi32(u);
                const __m512 rem = _mm512_sub_ps(u, _mm512_cvtepi32_ps(hi));
                const __m512i lo = _mm512_cvtps_epi32(_mm512_mul_ps(rem, _mm512_set1_ps(QUANT_ACT_LO_SCALE)));
                __m128i qh = _mm512_cvtepi32_epi8(hi), ql = _mm512_cvtepi32_epi8(lo);
                if (a->bits == 4) {
                    qh = _mm_shuffle_epi8(qh, perm4);
                    ql = _mm_shuffle_epi8(ql, perm4);
                }
                int32_t hw[4], lw[4];
                _mm_storeu_si128((__m128i *)(void *)hw, qh);
                _mm_storeu_si128((__m128i *)(void *)lw, ql);
                const int64_t w0 = (k * a->block + 16 * i) / 4;
                for (int j = 0; j < 4; j++) {
                    wr[(w0 + j) * 2 * QI_TILE] = hw[j];
                    wr[(w0 + j) * 2 * QI_TILE + QI_TILE] = lw[j];
                }
            }
        }
    }
}

/* A panel of up to 16 rows [p0, p0 + nr) and columns [c0, c0 + kp), packed
 * for VPDPBUSD, with each group's scales and biases as 16-lane vectors. Lanes
 * past nr read row p0 (always valid memory) and get zero scale and bias, so
 * they compute zeros that are never stored. */
struct qi_panel {
    uint8_t codes[QI_PANEL_COLS * QI_ROWS] __attribute__((aligned(64)));
    float scales[QI_PANEL_COLS / 32 * QI_ROWS] __attribute__((aligned(64)));
    float biases[QI_PANEL_COLS / 32 * QI_ROWS] __attribute__((aligned(64)));
};

/* What qi_pack() does for a weight in quant_panel.c's panels of 8 rows (p0 a
 * multiple of 8, kp whole groups): lanes 0-7 of vector j are word j of the
 * first panel, lanes 8-15 that of the next, two loads where the checkpoint's
 * rows take a gather; the scales and biases lie beside the words. */
static void qi_pack_from_panels(struct qi_panel *p, const struct ifd_weight *w, int64_t p0, int nr,
                                int64_t c0, int64_t kp)
{
    const int gs = w->group_size;
    const int64_t panel_bytes = quant_panel_bytes(w), group_bytes = quant_panel_group_bytes(w);
    const int64_t g0 = c0 / gs, ng = kp / gs, words = (int64_t)gs * w->bits / 32;
    const uint8_t *lo_panel = (const uint8_t *)w->data + p0 / QUANT_PANEL_ROWS * panel_bytes + g0 * group_bytes;
    /* rows past nr: the first panel again (their scales and biases are zeros) */
    const uint8_t *hi_panel = nr > QUANT_PANEL_ROWS ? lo_panel + panel_bytes : lo_panel;
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *lo = lo_panel + g * group_bytes, *hi = hi_panel + g * group_bytes;
        for (int64_t j = 0; j < words; j++) {
            const __m512i v = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_load_si256((const __m256i *)(const void *)(lo + 32 * j))),
                _mm256_load_si256((const __m256i *)(const void *)(hi + 32 * j)), 1);
            const int64_t jj = g * words + j; /* the word within the packed columns */
            if (w->bits == 8) {
                _mm512_store_si512(p->codes + 64 * jj, v);
            } else {
                _mm512_store_si512(p->codes + 128 * jj, _mm512_and_si512(v, nibble));
                _mm512_store_si512(p->codes + 128 * jj + 64, _mm512_and_si512(_mm512_srli_epi32(v, 4), nibble));
            }
        }
        const uint8_t *params[2] = {lo + QUANT_PANEL_ROWS * words * 4, hi + QUANT_PANEL_ROWS * words * 4};
        for (int r = 0; r < QI_ROWS; r++) {
            const uint8_t *pr = params[r / QUANT_PANEL_ROWS];
            const int lane = r % QUANT_PANEL_ROWS;
            p->scales[g * QI_ROWS + r] = r < nr ? qparam_at(w->qparam_dtype, pr, lane) : 0.0f;
            p->biases[g * QI_ROWS + r] = r < nr ? qparam_at(w->qparam_dtype, pr, QUANT_PANEL_ROWS + lane) : 0.0f;
        }
    }
}

static void qi_pack(struct qi_panel *p, const struct ifd_weight *w, int64_t p0, int nr,
                    int64_t c0, int64_t kp)
{
    if (w->panels) {
        qi_pack_from_panels(p, w, p0, nr, c0, kp);
        return;
    }
    const int64_t row_bytes = row_bytes_of(w), ng_row = w->cols / w->group_size;
    int32_t off[QI_ROWS];
    for (int r = 0; r < QI_ROWS; r++)
        off[r] = r < nr ? (int32_t)(r * row_bytes) : 0;
    const __m512i idx = _mm512_loadu_si512(off);
    const uint8_t *base = (const uint8_t *)w->data + p0 * row_bytes + c0 * w->bits / 8;
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    /* Each gather takes 4 bytes of each row: 4 codes at 8-bit, 8 at 4-bit. */
    const int64_t n_gathers = kp * w->bits / 32;
    for (int64_t j = 0; j < n_gathers; j++) {
        __m512i v = _mm512_i32gather_epi32(idx, base + 4 * j, 1);
        if (w->bits == 8) {
            _mm512_store_si512(p->codes + 64 * j, v);
        } else {
            _mm512_store_si512(p->codes + 128 * j, _mm512_and_si512(v, nibble));
            _mm512_store_si512(p->codes + 128 * j + 64, _mm512_and_si512(_mm512_srli_epi32(v, 4), nibble));
        }
    }
    const int64_t g0 = c0 / w->group_size, ng = kp / w->group_size;
    for (int64_t g = 0; g < ng; g++)
        for (int r = 0; r < QI_ROWS; r++) {
            const int64_t qi = (p0 + r) * ng_row + g0 + g;
            p->scales[g * QI_ROWS + r] = r < nr ? qparam_at(w->qparam_dtype, w->scales, qi) : 0.0f;
            p->biases[g * QI_ROWS + r] = r < nr ? qparam_at(w->qparam_dtype, w->biases, qi) : 0.0f;
        }
}

/* acc += VPDPBUSD(w, the int32 at x broadcast): through asm because GCC 12
 * copies the accumulator to a fresh register around every intrinsic call and
 * does not fold the broadcast (measured: a third of the kernel's cycles were
 * such register moves). */
QI_INLINE __m512i qi_dpbusd_bcast(__m512i acc, __m512i w, const int32_t *x)
{
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*x));
    return acc;
}

/* y[t, p0 + r] (+)= the panel's part of the product for the tokens of one
 * tile (the padding tokens of the last tile are computed, as zeros, and not
 * stored). Every token of the tile is one offset from the same pointers, so
 * the accumulators are all the registers need to hold. */
static void qi_tile(const struct qi_panel *p, const struct quant_act *a, int64_t tile, int64_t c0,
                    int64_t kp, float *y, int64_t rows, int64_t p0, int nr)
{
    const int block = a->block, gs = a->group_size, words_per_block = block / 4;
    const int64_t nb_row = a->cols / block, ng_row = a->cols / gs;
    const int32_t *xw = a->words + (tile * (a->cols / 4) + c0 / 4) * 2 * QI_TILE;
    const float *dx = a->scale + (tile * nb_row + c0 / block) * QI_TILE;
    const float *xs = a->group_sum + (tile * ng_row + c0 / gs) * QI_TILE;
    const __m512 lo_scale = _mm512_set1_ps(1.0f / QUANT_ACT_LO_SCALE);
    __m512 f[QI_TILE];
    for (int t = 0; t < QI_TILE; t++)
        f[t] = _mm512_setzero_ps();
    const int64_t ng = kp / gs, blocks_per_group = gs / block;
    for (int64_t g = 0; g < ng; g++) {
        const __m512 sv = _mm512_load_ps(p->scales + g * QI_ROWS);
        const __m512 bv = _mm512_load_ps(p->biases + g * QI_ROWS);
        for (int64_t kb = 0; kb < blocks_per_group; kb++) {
            const int64_t k = g * blocks_per_group + kb; /* block within the panel */
            const uint8_t *wc = p->codes + k * words_per_block * 64;
            const int32_t *xk = xw + k * words_per_block * 2 * QI_TILE;
            __m512i hi[QI_TILE], lo[QI_TILE];
            for (int t = 0; t < QI_TILE; t++)
                hi[t] = lo[t] = _mm512_setzero_si512();
            for (int j = 0; j < words_per_block; j++, xk += 2 * QI_TILE) {
                const __m512i wv = _mm512_load_si512(wc + 64 * j);
                for (int t = 0; t < QI_TILE; t++) {
                    hi[t] = qi_dpbusd_bcast(hi[t], wv, xk + t);
                    lo[t] = qi_dpbusd_bcast(lo[t], wv, xk + QI_TILE + t);
                }
            }
            const float *dk = dx + k * QI_TILE;
            for (int t = 0; t < QI_TILE; t++) {
                const __m512 dot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo[t]), lo_scale, _mm512_cvtepi32_ps(hi[t]));
                f[t] = _mm512_fmadd_ps(dot, _mm512_mul_ps(sv, _mm512_set1_ps(dk[t])), f[t]);
            }
        }
        for (int t = 0; t < QI_TILE; t++)
            f[t] = _mm512_fmadd_ps(bv, _mm512_set1_ps(xs[g * QI_TILE + t]), f[t]);
    }
    const __mmask16 m = (__mmask16)((1u << nr) - 1u);
    for (int t = 0; t < QI_TILE && tile * QI_TILE + t < a->n_tokens; t++) {
        float *dst = y + (tile * QI_TILE + t) * rows + p0;
        if (c0 > 0)
            f[t] = _mm512_add_ps(f[t], _mm512_maskz_loadu_ps(m, dst));
        _mm512_mask_storeu_ps(dst, m, f[t]);
    }
}

_Static_assert(sizeof(struct qi_panel) <= QUANT_ACT_PANEL_BYTES, "QUANT_ACT_PANEL_BYTES too small");

static int act8_matmul_rows(const struct ifd_weight *w, const struct quant_act *a, float *y,
                            int64_t row_begin, int64_t row_end, void *panel)
{
    struct qi_panel *p = panel;
    if (w->panels && row_begin < row_end && row_begin % QUANT_PANEL_ROWS != 0)
        return -EINVAL; /* a slice starts at a panel (kern_matmul_multi() splits at multiples of 16) */
    const int64_t kp_max = QI_PANEL_COLS / a->group_size * a->group_size;
    const int64_t n_tiles = (a->n_tokens + QI_TILE - 1) / QI_TILE;
    for (int64_t p0 = row_begin; p0 < row_end; p0 += QI_ROWS) {
        const int nr = row_end - p0 < QI_ROWS ? (int)(row_end - p0) : QI_ROWS;
        for (int64_t c0 = 0; c0 < w->cols; c0 += kp_max) {
            const int64_t kp = w->cols - c0 < kp_max ? w->cols - c0 : kp_max;
            qi_pack(p, w, p0, nr, c0, kp);
            for (int64_t tile = 0; tile < n_tiles; tile++)
                qi_tile(p, a, tile, c0, kp, y, w->rows, p0, nr);
        }
    }
    return 0;
}

#pragma GCC pop_options

void quant_act_prepare_tokens(struct quant_act *a, const float *x, int t0, int t1)
{
    if (a->kind == QUANT_ACT_INT16)
        quant_act16_prepare_tokens(a, x, t0, t1);
    else
        act8_prepare_tokens(a, x, t0, t1);
}

int quant_act_matmul_rows(const struct ifd_weight *w, const struct quant_act *a, float *y,
                          int64_t row_begin, int64_t row_end, void *panel)
{
    if (a->kind == QUANT_ACT_INT16)
        return quant_act16_matmul_rows(w, a, y, row_begin, row_end);
    return panel ? act8_matmul_rows(w, a, y, row_begin, row_end, panel) : -EINVAL;
}
#else /* not x86-64: quant_act_eligible() is always false, so these never run */
void quant_act_prepare_tokens(struct quant_act *a, const float *x, int t0, int t1)
{
    (void)a, (void)x, (void)t0, (void)t1;
    abort();
}

int quant_act_matmul_rows(const struct ifd_weight *w, const struct quant_act *a, float *y,
                          int64_t row_begin, int64_t row_end, void *panel)
{
    (void)w, (void)a, (void)y, (void)row_begin, (void)row_end, (void)panel;
    return -ENOTSUP;
}
#endif
