/* quant_panel.c - 4- and 8-bit weights in panels of 8 rows, the layout the
 * CPU stage keeps them in at every vector level, and its products.
 *
 * Why. The checkpoint's layout is row after row, each row's scales and
 * biases in arrays of their own. A product that puts 8 rows in the 8 lanes
 * of a vector (quant_int16.c's kernels) reads 8 rows a few dozen bytes at a
 * time, plus two more streams for the scales and biases: short strided
 * streams the hardware prefetcher does not run ahead on, so the kernels
 * prefetch by hand, and a core still waits on memory: one thread decoded
 * 29-30 G weights/s from memory at 4-bit. In panels a product reads one
 * sequential stream, which the prefetcher follows, and needs neither a
 * transpose nor a reduction across lanes (lane r is row r throughout).
 * Measured with a stand-alone kernel on the 151936 x 896 head, 4-bit,
 * two threads, Zen 4: 38.6-40.5 GB/s, against 27-31 with the rows'
 * prefetch and a read bandwidth (bench_membw) of 33-36.
 *
 * Layout. Panel p holds rows 8p .. 8p + 7 (the last one padded with rows of
 * zero codes, scales and biases, computed and never stored); in it group g
 * after group g - 1, each as
 *     the group's 32-bit words: word j of the 8 rows, lane r = row r, for
 *         j = 0 .. group_size * bits / 32 - 1 (32 bytes each),
 *     the 8 rows' scales, then their 8 biases, in the checkpoint's dtype.
 * A word holds the codes as the checkpoint does (low bits first).
 *
 * The copy is made once, when a CPU stage or the engine's head takes the
 * weight (model.c's model_weight_for_cpu(), which calls
 * quant_weight_to_panels()), and only of a weight in one of the
 * checkpoint's mappings (a file's, or a worker's image of the weights it
 * received), whose pages are then given back (st_release_pages()), so the
 * model is not held twice; or, for weights quantized on load for the CPU,
 * by model.c's bind_matrix() in place of the quantized rows. */
#include "model/quant.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/cpu.h"
#include "kernels-internal.h"
#include "quant_internal.h"

static size_t qparam_size(enum ifd_dtype t)
{
    return t == IFD_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t);
}

bool quant_panels_wanted(const struct ifd_weight *w)
{
    const enum cpu_simd l = cpu_simd_level();
    return l != CPU_SIMD_SCALAR && !w->panels && (w->bits == 4 || w->bits == 8) && w->group_size % 32 == 0 &&
           w->data;
}

int64_t quant_panel_group_bytes(const struct ifd_weight *w)
{
    return (int64_t)QUANT_PANEL_ROWS * w->group_size * w->bits / 8 +
           2 * QUANT_PANEL_ROWS * (int64_t)qparam_size(w->qparam_dtype);
}

int64_t quant_panel_bytes(const struct ifd_weight *w)
{
    return w->cols / w->group_size * quant_panel_group_bytes(w);
}

int quant_weight_to_panels(const struct ifd_weight *w, struct ifd_weight *ret, void **ret_owned, ifd_error *err)
{
    const int64_t n_panels = (w->rows + QUANT_PANEL_ROWS - 1) / QUANT_PANEL_ROWS, ng = w->cols / w->group_size;
    const int64_t panel_bytes = quant_panel_bytes(w), group_code_bytes = (int64_t)w->group_size * w->bits / 8;
    const size_t esz = qparam_size(w->qparam_dtype);
    const size_t total = (size_t)(n_panels * panel_bytes);
    void *buf = buf_alloc_stream(total);
    if (!buf)
        return ifd_error_set(err, -ENOMEM, "out of memory for a %lld x %lld weight in panels (%zu MiB)",
                             (long long)w->rows, (long long)w->cols, total >> 20);
    const int64_t row_bytes = row_bytes_of(w);
    uint8_t *out = buf;
    for (int64_t p = 0; p < n_panels; p++)
        for (int64_t g = 0; g < ng; g++) {
            for (int64_t j = 0; j < group_code_bytes / 4; j++)
                for (int r = 0; r < QUANT_PANEL_ROWS; r++, out += 4) {
                    const int64_t row = p * QUANT_PANEL_ROWS + r;
                    if (row < w->rows)
                        memcpy(out, (const uint8_t *)w->data + row * row_bytes + g * group_code_bytes + j * 4, 4);
                    else
                        memset(out, 0, 4);
                }
            const void *params[2] = {w->scales, w->biases};
            for (int k = 0; k < 2; k++)
                for (int r = 0; r < QUANT_PANEL_ROWS; r++, out += esz) {
                    const int64_t row = p * QUANT_PANEL_ROWS + r;
                    if (row < w->rows)
                        memcpy(out, (const uint8_t *)params[k] + (size_t)(row * ng + g) * esz, esz);
                    else
                        memset(out, 0, esz);
                }
        }
    *ret = *w;
    ret->data = buf;
    ret->scales = ret->biases = NULL;
    ret->panels = true;
    *ret_owned = buf;
    return 0;
}

/* Code `col` of row `row`, and its group's scale and bias. */
static void panel_entry(const struct ifd_weight *w, int64_t row, int64_t col, uint32_t *code, float *scale,
                        float *bias)
{
    const int64_t gs = w->group_size, g = col / gs, in_group = col % gs, per_word = 32 / w->bits;
    const uint8_t *pg = (const uint8_t *)w->data + row / QUANT_PANEL_ROWS * quant_panel_bytes(w) +
                        g * quant_panel_group_bytes(w);
    const int r = (int)(row % QUANT_PANEL_ROWS);
    uint32_t word;
    memcpy(&word, pg + (in_group / per_word * QUANT_PANEL_ROWS + r) * 4, sizeof(word));
    *code = (word >> (in_group % per_word * w->bits)) & ((1u << w->bits) - 1u);
    const uint8_t *params = pg + QUANT_PANEL_ROWS * gs * w->bits / 8;
    *scale = qparam_at(w->qparam_dtype, params, r);
    *bias = qparam_at(w->qparam_dtype, params, QUANT_PANEL_ROWS + r);
}

void quant_panel_dequant_row(const struct ifd_weight *w, int64_t row, float *out)
{
    for (int64_t c = 0; c < w->cols; c++) {
        uint32_t q;
        float s, b;
        panel_entry(w, row, c, &q, &s, &b);
        out[c] = s * (float)q + b;
    }
}

/* The portable product, for what the integer kernels do not take: a CPU
 * without AVX2 (or a level forced down) after the copy was made, or no
 * scratch for the coded activations. Slow, and exact in f32 like quant.c's
 * scalar path. */
void quant_panel_matmul_rows_portable(const struct ifd_weight *w, const float *x, int n_tokens, float *y,
                                      int64_t row_begin, int64_t row_end)
{
    const int gs = w->group_size;
    const int64_t cols = w->cols;
    float q[QUANT_MAX_GROUP_SIZE];
    for (int64_t r = row_begin; r < row_end; r++) {
        for (int t = 0; t < n_tokens; t++)
            y[(int64_t)t * w->rows + r] = 0.0f;
        for (int64_t c0 = 0; c0 < cols; c0 += gs) {
            float s = 0.0f, b = 0.0f;
            for (int c = 0; c < gs; c++) {
                uint32_t code;
                panel_entry(w, r, c0 + c, &code, &s, &b);
                q[c] = (float)code;
            }
            for (int t = 0; t < n_tokens; t++) {
                const float *xg = x + (int64_t)t * cols + c0;
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

#if defined(__x86_64__)
#include <immintrin.h>

#define QP_INLINE static inline __attribute__((always_inline))

/* How far ahead of the group it reads the panel kernel prefetches (into L2,
 * as kernels-internal.h's kernels do), on the first tile of a panel only:
 * later tiles read the panel from cache. The hardware prefetcher alone
 * followed the panels' one stream at the read bandwidth on Zen 4 (above),
 * but not on an AVX2-only EPYC (Zen 3 class: avx2 fma f16c, no AVX-512):
 * there decode of the 4-bit bench model (inferctl run, 16-token prompt,
 * 128 tokens, 2 threads, 8 alternated runs each) went from 62.6-70.5 tok/s
 * (median 65.5) to 68.8-86.3 (median 80) with 4 KiB, and 68.9-80.3 with
 * 8 KiB; the same 4 KiB into L1 gave 66.4-87.3 (median 76). */
#define QP_PREFETCH_BYTES 4096

/* What every tile of one call shares. */
struct qp_ctx {
    const struct quant_act *a;
    const uint8_t *data;
    int64_t rows, panel_bytes, group_bytes;
    enum ifd_dtype qdt;
};

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

/* 8 scales or biases (entries i .. i + 7 at base), as floats. */
QP_INLINE __m256 qp_params8(enum ifd_dtype t, const uint8_t *base, int i)
{
    switch (t) {
    case IFD_DTYPE_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)(base + 2 * i))), 16));
    case IFD_DTYPE_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(base + 2 * i)));
    default:
        return _mm256_loadu_ps((const float *)(const void *)(base + 4 * i));
    }
}

/* y[r] = lane r, r < nr. */
QP_INLINE void qp_store_rows(float *dst, __m256 v, int nr)
{
    if (nr == QUANT_PANEL_ROWS) {
        _mm256_storeu_ps(dst, v);
        return;
    }
    float lanes[QUANT_PANEL_ROWS];
    _mm256_storeu_ps(lanes, v);
    memcpy(dst, lanes, (size_t)nr * sizeof(float));
}

#define QP_NAME(n) qp256_##n
#define QP_SPLIT_SUMS 0 /* VPADDD's one cycle is no chain to break */
#define QP_DOT(acc, w, x) quant_maddwd_add((acc), (w), (x))
#include "quant-panel.inc"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
#define QP_NAME(n) qpvnni_##n
#define QP_SPLIT_SUMS 4 /* 4 sums in 8 accumulators: 16 registers hold them */
#define QP_DOT(acc, w, x) quant_dpwssd_vex((acc), (w), (x))
#include "quant-panel.inc"
#pragma GCC pop_options

/* The same instruction in its EVEX form, which AVX-512 VNNI brings for 256-bit
 * vectors (AVX512VL): a CPU with AVX-512 VNNI need not have AVX-VNNI (Ice
 * Lake, some Zen 4 VMs as they present it), and without either the multiply and
 * the add are two instructions, which at 8 tokens a tile is half the
 * kernel's arithmetic. */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")
#define QP_NAME(n) qp512vnni_##n
#define QP_SPLIT_SUMS 4 /* 8 tokens, 16 sums: nothing gained (quant-panel.inc) */
#define QP_DOT(acc, w, x) quant_dpwssd_evex((acc), (w), (x))
#include "quant-panel.inc"
#pragma GCC pop_options

int quant_panel_matmul_rows(const struct ifd_weight *w, const struct quant_act *a, float *y, int64_t row_begin,
                            int64_t row_end)
{
    if (row_begin >= row_end)
        return 0;
    if (row_begin % QUANT_PANEL_ROWS != 0 || (row_end % QUANT_PANEL_ROWS != 0 && row_end != w->rows))
        return -EINVAL; /* kern_matmul_multi() splits at multiples of 16 */
    const struct qp_ctx k = {
        .a = a,
        .data = w->data,
        .rows = w->rows,
        .panel_bytes = quant_panel_bytes(w),
        .group_bytes = quant_panel_group_bytes(w),
        .qdt = w->qparam_dtype,
    };
    const int64_t p_begin = row_begin / QUANT_PANEL_ROWS, p_end = (row_end + QUANT_PANEL_ROWS - 1) / QUANT_PANEL_ROWS;
    if (cpu_simd_level() == CPU_SIMD_AVX2_VNNI)
        qpvnni_matmul_panels(&k, y, p_begin, p_end);
    else if (cpu_simd_vnni512())
        qp512vnni_matmul_panels(&k, y, p_begin, p_end);
    else
        qp256_matmul_panels(&k, y, p_begin, p_end);
    return 0;
}

#else /* not x86-64: quant_panels_wanted() never holds, so no weight is in panels */
int quant_panel_matmul_rows(const struct ifd_weight *w, const struct quant_act *a, float *y, int64_t row_begin,
                            int64_t row_end)
{
    (void)w, (void)a, (void)y, (void)row_begin, (void)row_end;
    return -ENOTSUP;
}
#endif
