/* quant.c - MLX affine quantization: the quantizer (bit-exact with MLX's
 * affine_quantize), row dequantization, and the fused dequantize-and-multiply
 * products.
 *
 * Products. A row of a quantized weight is a bit stream of `bits`-wide codes
 * q_c, with one (scale s, bias b) pair per group of group_size columns, so
 *     sum_c (s q_c + b) x_c = s * sum_c q_c x_c + b * sum_c x_c      (per group).
 * For one token (decode) sum_c x_c is computed once per group, so the inner
 * loop is just "widen code to float, multiply-add with x". For several tokens
 * (prefill) a chunk is dequantized once in registers and multiplied into each
 * token. No dequantized copy of a matrix exists at any point.
 *
 * The SIMD kernel (quant-simd.inc) is written once with GCC vector extensions
 * and compiled twice under target pragmas, AVX-512 (16 lanes) and AVX2 + FMA
 * (8 lanes); the CPU is asked at each call which one to run. It handles bits
 * 2, 4 and 8 (codes never straddle a byte). Bits 3 and 6, whose codes straddle
 * bytes and words, group sizes smaller than one vector chunk, and CPUs without
 * AVX2 go through the portable scalar bit-stream path. */
#include "model/quant.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/cpu.h"
#include "kernels-internal.h"
#include "model/dtype.h"
#include "quant_internal.h"

/* ---- layout ---------------------------------------------------------------- */

bool quant_layout_supported(int bits, int group_size)
{
    if (bits != 2 && bits != 3 && bits != 4 && bits != 6 && bits != 8)
        return false;
    /* A multiple of 32 keeps every group word-aligned whatever the bit width
     * (32 * bits is a multiple of 32 bits), so a group never starts mid-word. */
    return group_size >= 32 && group_size <= QUANT_MAX_GROUP_SIZE && group_size % 32 == 0;
}


/* Code i of a row that starts at `row` (word-aligned): a little-endian bit
 * stream, so a 3- or 6-bit code may take its high bits from the next word. */
static inline uint32_t code_at(const uint8_t *row, int64_t i, int bits)
{
    uint64_t bit = (uint64_t)i * (uint64_t)bits;
    uint64_t k = bit >> 5;
    unsigned sh = (unsigned)(bit & 31);
    uint32_t lo;
    memcpy(&lo, row + k * 4, sizeof(lo));
    uint64_t v = lo >> sh;
    if (sh + (unsigned)bits > 32) {
        uint32_t hi;
        memcpy(&hi, row + (k + 1) * 4, sizeof(hi));
        v |= (uint64_t)hi << (32 - sh);
    }
    return (uint32_t)v & ((1u << bits) - 1u);
}

void quant_dequant_row(const struct ifd_weight *w, int64_t row, float *out)
{
    if (w->panels) {
        quant_panel_dequant_row(w, row, out);
        return;
    }
    const uint8_t *r = (const uint8_t *)w->data + row * row_bytes_of(w);
    const int64_t ng = w->cols / w->group_size;
    for (int64_t g = 0; g < ng; g++) {
        float s = qparam_at(w->qparam_dtype, w->scales, row * ng + g);
        float b = qparam_at(w->qparam_dtype, w->biases, row * ng + g);
        for (int64_t c = g * w->group_size; c < (g + 1) * w->group_size; c++) {
            /* Two roundings (product, then sum), as MLX and the reference do:
             * this function is compiled for the baseline ISA, which has no FMA
             * to contract them into. */
            float p = (float)code_at(r, c, w->bits) * s;
            out[c] = p + b;
        }
    }
}

/* ---- quantizer --------------------------------------------------------------- */

void quant_quantize_row(const float *row, int64_t cols, int bits, int group_size,
                        uint32_t *ret_words, float *ret_scales, float *ret_biases)
{
    /* Every step below is one f32 operation in the order MLX's affine_quantize
     * (mlx/ops.cpp) performs it, so codes, scales and biases come out bit for
     * bit the same: no reciprocal multiplications, no fused multiply-adds
     * (there are no a*b+c expressions to contract), rintf = round half to even
     * like mx.round. */
    const uint32_t n_bins = (1u << bits) - 1u;
    const float fbins = (float)n_bins;
    const float eps = 1e-7f;
    memset(ret_words, 0, (size_t)(cols * bits / 32) * sizeof(uint32_t));
    for (int64_t g = 0; g * group_size < cols; g++) {
        const float *v = row + g * group_size;
        float mx = v[0], mn = v[0];
        for (int c = 1; c < group_size; c++) {
            mx = v[c] > mx ? v[c] : mx;
            mn = v[c] < mn ? v[c] : mn;
        }
        /* The edge of larger magnitude is made exactly representable (q = 0
         * or a whole code), which keeps the bigger weights exact. */
        bool use_min = fabsf(mn) > fabsf(mx);
        float scale = (mx - mn) / fbins;
        if (scale < eps)
            scale = eps; /* constant group: avoid dividing by zero */
        scale = use_min ? scale : -scale;
        float edge = use_min ? mn : mx;
        float q0 = rintf(edge / scale);
        if (q0 != 0.0f)
            scale = edge / q0;
        float bias = q0 == 0.0f ? 0.0f : edge;
        for (int c = 0; c < group_size; c++) {
            float q = rintf((v[c] - bias) / scale);
            q = q < 0.0f ? 0.0f : q;
            q = q > fbins ? fbins : q;
            uint32_t code = (uint32_t)q;
            uint64_t bit = (uint64_t)(g * group_size + c) * (uint64_t)bits;
            unsigned sh = (unsigned)(bit & 31);
            ret_words[bit >> 5] |= code << sh;
            if (sh + (unsigned)bits > 32)
                ret_words[(bit >> 5) + 1] |= code >> (32 - sh);
        }
        ret_scales[g] = scale;
        ret_biases[g] = bias;
    }
}

static inline float float_at(enum ifd_dtype t, const void *base, int64_t i)
{
    return qparam_at(t, base, i);
}

static inline void qparam_store(enum ifd_dtype t, void *base, int64_t i, float v)
{
    switch (t) {
    case IFD_DTYPE_F16: {
        uint16_t h = ifd_f32_to_f16(v);
        memcpy((uint16_t *)base + i, &h, sizeof(h));
        break;
    }
    case IFD_DTYPE_BF16: {
        uint16_t h = ifd_f32_to_bf16(v);
        memcpy((uint16_t *)base + i, &h, sizeof(h));
        break;
    }
    default:
        memcpy((float *)base + i, &v, sizeof(v));
        break;
    }
}

int quant_weight_quantize(const struct ifd_weight *src, int bits, int group_size,
                          struct ifd_weight *ret, void **ret_owned, ifd_error *err)
{
    if (group_size == 0)
        group_size = QUANT_DEFAULT_GROUP_SIZE;
    if (!src->data)
        return ifd_error_set(err, -EINVAL, "quantize: weight is not bound");
    if (src->bits != 0 || !ifd_dtype_is_float(src->dtype))
        return ifd_error_set(err, -EINVAL, "quantize: weight of dtype %s is not a float weight",
                             ifd_dtype_name(src->dtype));
    if (!quant_layout_supported(bits, group_size))
        return ifd_error_set(err, -ENOTSUP,
                             "quantize: %d bits with group size %d is not supported "
                             "(bits 2, 3, 4, 6 or 8; group size a multiple of 32 up to %d)",
                             bits, group_size, QUANT_MAX_GROUP_SIZE);
    if (src->rows <= 0 || src->cols <= 0 || src->cols % group_size != 0)
        return ifd_error_set(err, -EINVAL,
                             "quantize: row length %lld is not a multiple of the group size %d",
                             (long long)src->cols, group_size);
    /* Scales and biases keep the source's float type, as MLX does. */
    const enum ifd_dtype qdt = src->dtype;
    const size_t qsz = ifd_dtype_size(qdt);
    const uint64_t ng = (uint64_t)(src->cols / group_size);
    const uint64_t rows = (uint64_t)src->rows;
    const uint64_t word_bytes = rows * (uint64_t)src->cols * (uint64_t)bits / 8;
    const uint64_t qbytes = rows * ng * qsz;
    if (rows > (1ull << 40) || (uint64_t)src->cols > (1ull << 32))
        return ifd_error_set(err, -EOVERFLOW, "quantize: weight [%lld, %lld] is too large",
                             (long long)src->rows, (long long)src->cols);
    /* One allocation: words, then scales, then biases, each 64-byte aligned. */
    const uint64_t off_s = (word_bytes + 63) & ~63ull;
    const uint64_t off_b = off_s + ((qbytes + 63) & ~63ull);
    const uint64_t total = off_b + qbytes;
    uint8_t *buf = NULL;
    if (posix_memalign((void **)&buf, 64, (size_t)total) != 0)
        return ifd_error_set(err, -ENOMEM, "quantize: cannot allocate %llu bytes",
                             (unsigned long long)total);
    float *tmp = malloc(((size_t)src->cols + 2 * (size_t)ng) * sizeof(float));
    if (!tmp) {
        free(buf);
        return ifd_error_set(err, -ENOMEM, "quantize: cannot allocate a row buffer");
    }
    float *fs = tmp + src->cols, *fb = fs + ng;
    const size_t in_esz = ifd_dtype_size(src->dtype);
    for (uint64_t r = 0; r < rows; r++) {
        const uint8_t *in = (const uint8_t *)src->data + r * (uint64_t)src->cols * in_esz;
        for (int64_t c = 0; c < src->cols; c++)
            tmp[c] = float_at(src->dtype, in, c);
        quant_quantize_row(tmp, src->cols, bits, group_size,
                           (uint32_t *)(buf + r * (word_bytes / rows)), fs, fb);
        for (uint64_t g = 0; g < ng; g++) {
            qparam_store(qdt, buf + off_s, (int64_t)(r * ng + g), fs[g]);
            qparam_store(qdt, buf + off_b, (int64_t)(r * ng + g), fb[g]);
        }
    }
    free(tmp);
    *ret = (struct ifd_weight){
        .dtype = IFD_DTYPE_U32,
        .data = buf,
        .rows = src->rows,
        .cols = src->cols,
        .bits = bits,
        .group_size = group_size,
        .qparam_dtype = qdt,
        .scales = buf + off_s,
        .biases = buf + off_b,
    };
    *ret_owned = buf;
    return 0;
}

/* ---- products: scalar path (every layout; the fallback and the reference) -- */

static void qmm_rows_scalar(const struct ifd_weight *w, const float *x, int n_tokens, float *y,
                            int64_t row_begin, int64_t row_end)
{
    const int gs = w->group_size;
    const int64_t cols = w->cols, ng = cols / gs;
    float q[QUANT_MAX_GROUP_SIZE];
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *row = (const uint8_t *)w->data + r * row_bytes_of(w);
        for (int t = 0; t < n_tokens; t++)
            y[(int64_t)t * w->rows + r] = 0.0f;
        for (int64_t g = 0; g < ng; g++) {
            float s = qparam_at(w->qparam_dtype, w->scales, r * ng + g);
            float b = qparam_at(w->qparam_dtype, w->biases, r * ng + g);
            for (int c = 0; c < gs; c++)
                q[c] = (float)code_at(row, g * gs + c, w->bits);
            for (int t = 0; t < n_tokens; t++) {
                const float *xg = x + (int64_t)t * cols + g * gs;
                float dq = 0.0f, dx = 0.0f;
                for (int c = 0; c < gs; c++) {
                    dq += q[c] * xg[c];
                    dx += xg[c];
                }
                y[(int64_t)t * w->rows + r] += s * dq + b * dx;
            }
        }
    }
}

/* ---- products: SIMD path (bits 2, 4, 8; x86-64) ----------------------------- */

#if defined(__x86_64__)
#include <immintrin.h>

/* Activations permuted for one tile of tokens and a panel of columns live on
 * the stack: 32 KiB, whatever the model. */
#define QMM_PANEL_FLOATS 8192
#define QMM_MAX_TILE_TOKENS 4
#define QMM_MAX_TILE_ROWS 4

#define QMM_INLINE static inline __attribute__((always_inline))

/* True when the SIMD kernels handle this layout: codes within bytes, and a
 * group made of whole 16-byte chunks (the AVX-512 chunk; AVX2's is 8). */
static bool qmm_simd_layout(const struct ifd_weight *w)
{
    if (w->bits != 2 && w->bits != 4 && w->bits != 8)
        return false;
    return w->group_size % (16 * (8 / w->bits)) == 0;
}

/* What every tile of one call shares. */
struct qmm_ctx {
    const uint8_t *data;
    int64_t row_bytes, rows, cols, ng_row; /* ng_row: groups per row */
    int bits, per, gs;                     /* per: codes per byte */
    enum ifd_dtype qdt;
    const void *scales, *biases;
    const float *xs;    /* [T, xs_stride]: the tile's activations in chunk order */
    int64_t xs_stride;
    const float *xsum;  /* [T, P / gs] sum of x over each group */
    int64_t c0, P;      /* the panel: columns [c0, c0 + P) */
};

static struct qmm_ctx qmm_ctx_of(const struct ifd_weight *w, const float *xsum)
{
    return (struct qmm_ctx){
        .data = w->data,
        .row_bytes = row_bytes_of(w),
        .rows = w->rows,
        .cols = w->cols,
        .ng_row = w->cols / w->group_size,
        .bits = w->bits,
        .per = 8 / w->bits,
        .gs = w->group_size,
        .qdt = w->qparam_dtype,
        .scales = w->scales,
        .biases = w->biases,
        .xsum = xsum,
    };
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#define QS_VL 16
#define QS_NAME(n) qs512_##n
#define QS_WIDEN(p) ((qs_vi)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p))))
#define QS_HSUM(v) _mm512_reduce_add_ps((__m512)(v))
#define QS_TT 4
#define QS_RD 4
#define QS_RP(bits) ((bits) == 8 ? 4 : 2) /* measured best on the AMD EPYC dev VM */
#include "quant-simd.inc"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
static inline float qs256_hsum(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}
#define QS_VL 8
#define QS_NAME(n) qs256_##n
#define QS_WIDEN(p) ((qs_vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p))))
#define QS_HSUM(v) qs256_hsum((__m256)(v))
#define QS_TT 4
#define QS_RD 4
#define QS_RP(bits) 2 /* 16 ymm registers: 2 x 4 accumulators */
#include "quant-simd.inc"
#pragma GCC pop_options

static enum quant_isa quant_isa_of(enum cpu_simd l)
{
    return l == CPU_SIMD_AVX512 ? QUANT_ISA_AVX512 : l == CPU_SIMD_SCALAR ? QUANT_ISA_SCALAR : QUANT_ISA_AVX2;
}
#endif /* __x86_64__ */

int quant_matmul_rows_isa(enum quant_isa isa, const struct ifd_weight *w, const float *x,
                          int n_tokens, float *y, int64_t row_begin, int64_t row_end)
{
    if (w->panels) { /* what quant_act_matmul_rows() did not take (quant_panel.c) */
        quant_panel_matmul_rows_portable(w, x, n_tokens, y, row_begin, row_end);
        return 0;
    }
#if defined(__x86_64__)
    /* AUTO is the level every kernel uses (detected once, or forced by
     * kern_set_simd()); an explicit one is what a test asks for. */
    if (isa == QUANT_ISA_AUTO)
        isa = quant_isa_of(cpu_simd_level());
    else if (isa > quant_isa_of(cpu_simd_best()))
        return -ENOTSUP;
    if (isa != QUANT_ISA_SCALAR && qmm_simd_layout(w)) {
        if (isa == QUANT_ISA_AVX512)
            qs512_qmm_rows(w, x, n_tokens, y, row_begin, row_end);
        else
            qs256_qmm_rows(w, x, n_tokens, y, row_begin, row_end);
        return 0;
    }
#else
    if (isa == QUANT_ISA_AVX512 || isa == QUANT_ISA_AVX2)
        return -ENOTSUP;
#endif
    qmm_rows_scalar(w, x, n_tokens, y, row_begin, row_end);
    return 0;
}

void quant_matmul_rows(const struct ifd_weight *w, const float *x, int n_tokens, float *y,
                       int64_t row_begin, int64_t row_end)
{
    (void)quant_matmul_rows_isa(QUANT_ISA_AUTO, w, x, n_tokens, y, row_begin, row_end);
}
