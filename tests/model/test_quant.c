/* test_quant.c - MLX affine quantization: the quantizer against the shared MLX
 * checkpoints (made by MLX's affine_quantize, see shared/oracle/make_variants.py),
 * dequantization exactness, the fused kernels of every instruction set against
 * an independent double-precision reference over odd shapes and every bit
 * width, quantize on load, and malformed quantized checkpoints. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/cpu.h"
#include "common/golden_models.h"
#include "common/test_util.h"
#include "model/dtype.h"
#include "model/engine.h"
#include "model/kernels.h"
#include "model/model.h"
#include "model/quant.h"
#include "model/quant_checkpoint.h"
#include "model/safetensors.h"

static void model_path(char *buf, size_t n, const char *model)
{
    char *p = tu_must_shared_path("models/%s", model);
    snprintf(buf, n, "%s", p);
    free(p);
}

/* ---- independent reference: reads codes bit by bit, accumulates in double -- */

static uint32_t ref_code(const void *words, int64_t row_words, int64_t row, int64_t col, int bits)
{
    const uint8_t *base = (const uint8_t *)words + (size_t)(row * row_words) * 4;
    uint32_t v = 0;
    for (int b = 0; b < bits; b++) {
        uint64_t bit = (uint64_t)col * bits + b;
        uint32_t byte = base[bit / 8];
        v |= ((byte >> (bit % 8)) & 1u) << b;
    }
    return v;
}

static float ref_param(enum ifd_dtype t, const void *p, int64_t i)
{
    uint16_t h;
    float f;
    switch (t) {
    case IFD_DTYPE_F16:
        memcpy(&h, (const uint8_t *)p + i * 2, 2);
        return ifd_f16_to_f32(h);
    case IFD_DTYPE_BF16:
        memcpy(&h, (const uint8_t *)p + i * 2, 2);
        return ifd_bf16_to_f32(h);
    default:
        memcpy(&f, (const uint8_t *)p + i * 4, 4);
        return f;
    }
}

/* w[r, c] as MLX defines it: scale * q + bias, two f32 roundings. */
static float ref_weight(const struct ifd_weight *w, int64_t r, int64_t c)
{
    int64_t ng = w->cols / w->group_size, g = c / w->group_size;
    float s = ref_param(w->qparam_dtype, w->scales, r * ng + g);
    float b = ref_param(w->qparam_dtype, w->biases, r * ng + g);
    volatile float p = (float)ref_code(w->data, w->cols * w->bits / 32, r, c, w->bits) * s;
    return p + b;
}

/* ---- helpers ---------------------------------------------------------------- */

static uint64_t rng_state = 88172645463325252ull;
static float frand(void) /* in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* A random quantized weight built with quant_weight_quantize from random f32
 * values (some groups constant, to hit the max == min edge), with scales and
 * biases narrowed to qdt. `misalign` shifts every buffer by that many bytes, as
 * a tensor in a safetensors mapping may sit at any offset. */
struct qw {
    struct ifd_weight w;
    void *owned;
    uint8_t *buf;
};

static void qw_make(struct qw *q, int64_t rows, int64_t cols, int bits, int gs, enum ifd_dtype qdt,
                    int misalign)
{
    float *f = malloc((size_t)(rows * cols) * sizeof(float));
    cr_assert_not_null(f);
    for (int64_t i = 0; i < rows * cols; i++)
        f[i] = frand() * 0.1f;
    if (cols >= gs)
        for (int c = 0; c < gs; c++)
            f[c] = 0.25f; /* first group of row 0 constant */
    struct ifd_weight src = {.dtype = IFD_DTYPE_F32, .data = f, .rows = rows, .cols = cols};
    struct ifd_weight tmp;
    void *owned;
    ifd_error err = {{0}};
    cr_assert_eq(quant_weight_quantize(&src, bits, gs, &tmp, &owned, &err), 0, "%s", err.msg);
    free(f);
    int64_t ng = cols / gs;
    size_t wbytes = (size_t)(rows * cols * bits / 8), qsz = ifd_dtype_size(qdt);
    size_t pbytes = (size_t)(rows * ng) * qsz;
    q->buf = malloc(wbytes + 2 * pbytes + 3 * 8 + 64);
    cr_assert_not_null(q->buf);
    uint8_t *wd = q->buf + misalign, *sd = wd + wbytes + misalign, *bd = sd + pbytes + misalign;
    memcpy(wd, tmp.data, wbytes);
    for (int64_t i = 0; i < rows * ng; i++) {
        float s = ((const float *)tmp.scales)[i], b = ((const float *)tmp.biases)[i];
        if (qdt == IFD_DTYPE_F32) {
            memcpy(sd + i * 4, &s, 4);
            memcpy(bd + i * 4, &b, 4);
        } else {
            uint16_t hs = qdt == IFD_DTYPE_F16 ? ifd_f32_to_f16(s) : ifd_f32_to_bf16(s);
            uint16_t hb = qdt == IFD_DTYPE_F16 ? ifd_f32_to_f16(b) : ifd_f32_to_bf16(b);
            memcpy(sd + i * 2, &hs, 2);
            memcpy(bd + i * 2, &hb, 2);
        }
    }
    free(owned);
    q->owned = NULL;
    q->w = tmp;
    q->w.data = wd;
    q->w.scales = sd;
    q->w.biases = bd;
    q->w.qparam_dtype = qdt;
}

static void qw_free(struct qw *q)
{
    free(q->buf);
}

TestSuite(quant);

/* ---- layouts ---------------------------------------------------------------- */

Test(quant, layout_supported)
{
    const int ok_bits[] = {2, 3, 4, 6, 8};
    for (size_t i = 0; i < 5; i++) {
        cr_expect(quant_layout_supported(ok_bits[i], 32));
        cr_expect(quant_layout_supported(ok_bits[i], 64));
        cr_expect(quant_layout_supported(ok_bits[i], 128));
    }
    cr_expect(!quant_layout_supported(5, 64));
    cr_expect(!quant_layout_supported(1, 64));
    cr_expect(!quant_layout_supported(16, 64));
    cr_expect(!quant_layout_supported(4, 0));
    cr_expect(!quant_layout_supported(4, 48));
    cr_expect(!quant_layout_supported(4, 16));
    cr_expect(!quant_layout_supported(4, 2048));
}

/* ---- the quantizer against MLX ------------------------------------------------ */

/* Quantizes every quantized tensor of MLX checkpoint `mlx` from the float
 * tensors of `srcname` and compares codes (exactly), and scales and biases
 * narrowed to the checkpoint's dtype (bit for bit). A code that differs is only
 * acceptable at a rounding tie, (w - bias) / scale exactly k + 1/2, where an
 * implementation may legitimately round either way; each such case is counted
 * and printed. */
static void compare_with_mlx(const char *srcname, const char *mlx, int bits, int gs)
{
    char sp[1024], mp[1024];
    model_path(sp, sizeof(sp), srcname);
    model_path(mp, sizeof(mp), mlx);
    st_model *src = NULL, *m = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_open(sp, &src, &err), 0, "%s", err.msg);
    cr_assert_eq(st_open(mp, &m, &err), 0, "%s", err.msg);
    long n_tensors = 0, n_codes = 0, n_diff = 0, n_ties = 0, n_param_diff = 0;
    for (size_t i = 0; i < st_count(m); i++) {
        const struct st_tensor *t = st_at(m, i);
        size_t len = strlen(t->name);
        if (t->dtype != IFD_DTYPE_U32 || len < 7 || strcmp(t->name + len - 7, ".weight") != 0)
            continue;
        char stem[512], name[600];
        snprintf(stem, sizeof(stem), "%.*s", (int)(len - 7), t->name);
        snprintf(name, sizeof(name), "%s.scales", stem);
        const struct st_tensor *ts = st_find(m, name);
        snprintf(name, sizeof(name), "%s.biases", stem);
        const struct st_tensor *tb = st_find(m, name);
        const struct st_tensor *tf = st_find(src, t->name);
        cr_assert(ts && tb && tf, "%s: missing scales/biases or source tensor", t->name);
        cr_assert_eq(tf->n_dims, 2);
        const int64_t rows = tf->shape[0], cols = tf->shape[1], ng = cols / gs;
        cr_assert_eq(t->shape[1], cols * bits / 32, "%s: packed width", t->name);
        float *row = malloc((size_t)cols * sizeof(float));
        uint32_t *words = malloc((size_t)(cols * bits / 32) * 4);
        float *sc = malloc((size_t)ng * sizeof(float)), *bi = malloc((size_t)ng * sizeof(float));
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t c = 0; c < cols; c++)
                row[c] = ref_param(tf->dtype, tf->data, r * cols + c);
            quant_quantize_row(row, cols, bits, gs, words, sc, bi);
            for (int64_t g = 0; g < ng; g++) {
                float fs = ref_param(ts->dtype, ts->data, r * ng + g);
                float fb = ref_param(tb->dtype, tb->data, r * ng + g);
                float ms = ts->dtype == IFD_DTYPE_F16 ? ifd_f16_to_f32(ifd_f32_to_f16(sc[g]))
                           : ts->dtype == IFD_DTYPE_BF16 ? ifd_bf16_to_f32(ifd_f32_to_bf16(sc[g]))
                                                         : sc[g];
                float mb = tb->dtype == IFD_DTYPE_F16 ? ifd_f16_to_f32(ifd_f32_to_f16(bi[g]))
                           : tb->dtype == IFD_DTYPE_BF16 ? ifd_bf16_to_f32(ifd_f32_to_bf16(bi[g]))
                                                         : bi[g];
                if (memcmp(&fs, &ms, 4) != 0 || memcmp(&fb, &mb, 4) != 0)
                    n_param_diff++;
            }
            for (int64_t c = 0; c < cols; c++) {
                uint32_t mine = ref_code(words, cols * bits / 32, 0, c, bits);
                uint32_t theirs = ref_code(t->data, cols * bits / 32, r, c, bits);
                n_codes++;
                if (mine == theirs)
                    continue;
                n_diff++;
                float v = (row[c] - bi[c / gs]) / sc[c / gs];
                if (fabsf(v - truncf(v)) == 0.5f && (mine > theirs ? mine - theirs : theirs - mine) == 1) {
                    n_ties++;
                    fprintf(stderr, "%s [%lld, %lld]: tie at %.1f, mine %u, MLX %u\n", t->name,
                            (long long)r, (long long)c, (double)v, mine, theirs);
                }
            }
        }
        free(row);
        free(words);
        free(sc);
        free(bi);
        n_tensors++;
    }
    fprintf(stderr, "%s vs %s: %ld tensors, %ld codes, %ld differ (%ld rounding ties), %ld scale/bias differ\n",
            srcname, mlx, n_tensors, n_codes, n_diff, n_ties, n_param_diff);
    cr_expect_eq(n_tensors, 15, "expected 15 quantized tensors (embedding + 7 per layer x 2), got %ld",
                 n_tensors);
    cr_expect_eq(n_diff, n_ties, "%ld codes differ from MLX's other than at rounding ties", n_diff - n_ties);
    cr_expect_eq(n_param_diff, 0, "%ld scales/biases differ from MLX's", n_param_diff);
    st_close(src);
    st_close(m);
}

Test(quant, quantizer_matches_mlx_4bit)
{
    compare_with_mlx("tinystories-656k", "tinystories-656k-mlx-4bit", 4, 64);
}

Test(quant, quantizer_matches_mlx_8bit)
{
    compare_with_mlx("tinystories-656k", "tinystories-656k-mlx-8bit", 8, 32);
}

/* Edge cases of affine_quantize worked by hand: a constant group (max == min)
 * is stored exactly with q = 0 when the value is zero, and as edge/q0 scale
 * otherwise; the larger-magnitude edge is always exact. */
Test(quant, quantize_row_edges)
{
    float row[64];
    uint32_t words[8];
    float s[2], b[2];
    for (int i = 0; i < 64; i++)
        row[i] = 0.0f;
    quant_quantize_row(row, 64, 4, 32, words, s, b);
    cr_expect_eq(b[0], 0.0f);
    for (int i = 0; i < 8; i++)
        cr_expect_eq(words[i], 0u);
    for (int i = 0; i < 32; i++)
        row[i] = -1.0f + (float)i / 31.0f * 0.5f; /* negative edge dominates */
    for (int i = 32; i < 64; i++)
        row[i] = 0.5f;                            /* constant */
    quant_quantize_row(row, 64, 4, 32, words, s, b);
    cr_expect_eq(b[0], -1.0f, "bias is the dominant edge, got %g", (double)b[0]);
    cr_expect_gt(s[0], 0.0f);
    uint32_t q0 = words[0] & 15;
    cr_expect_eq(q0, 0u, "the minimum maps to code 0");
    /* the constant group reproduces its value exactly through scale * q + bias */
    struct ifd_weight w = {.dtype = IFD_DTYPE_U32, .data = words, .rows = 1, .cols = 64, .bits = 4,
                           .group_size = 32, .qparam_dtype = IFD_DTYPE_F32, .scales = s, .biases = b};
    float out[64];
    quant_dequant_row(&w, 0, out);
    for (int i = 32; i < 64; i++)
        cr_expect_eq(out[i], 0.5f, "constant group: column %d gives %g", i, (double)out[i]);
    cr_expect_eq(out[0], -1.0f);
}

/* Every bit width, including 3 and 6 whose codes straddle words: quantizing
 * and dequantizing stays within half a step, the codes stay in range, and
 * dequant_row is exactly scale * q + bias. */
Test(quant, roundtrip_every_width)
{
    const int bits_list[] = {2, 3, 4, 6, 8};
    const int gs_list[] = {32, 64, 128};
    for (size_t bi = 0; bi < 5; bi++)
        for (size_t gi = 0; gi < 3; gi++) {
            int bits = bits_list[bi], gs = gs_list[gi];
            int64_t rows = 5, cols = (int64_t)gs * 3;
            struct qw q;
            qw_make(&q, rows, cols, bits, gs, IFD_DTYPE_F32, 0);
            float *out = malloc((size_t)cols * sizeof(float));
            for (int64_t r = 0; r < rows; r++) {
                quant_dequant_row(&q.w, r, out);
                for (int64_t c = 0; c < cols; c++) {
                    float ref = ref_weight(&q.w, r, c);
                    cr_assert_eq(memcmp(&out[c], &ref, 4), 0, "bits %d gs %d [%lld,%lld]: %g != %g",
                                 bits, gs, (long long)r, (long long)c, (double)out[c], (double)ref);
                }
            }
            free(out);
            qw_free(&q);
        }
    /* Nearest code: each value maps to the grid point scale * k + bias closest
     * to it (MLX rescales the grid so the larger edge is exact, which can push
     * the other edge off the grid: such values clip to code 0 or 2^bits - 1,
     * still the nearest point). */
    for (size_t bi = 0; bi < 5; bi++) {
        int bits = bits_list[bi];
        float row[128];
        uint32_t words[128 * 8 / 32];
        float s[2], b[2];
        for (int i = 0; i < 128; i++)
            row[i] = frand();
        quant_quantize_row(row, 128, bits, 64, words, s, b);
        for (int i = 0; i < 128; i++) {
            uint32_t code = ref_code(words, 0, 0, i, bits);
            cr_assert_leq(code, (1u << bits) - 1);
            double err_code = fabs((double)code * s[i / 64] + b[i / 64] - row[i]);
            for (uint32_t k = 0; k < (1u << bits); k++) {
                double e = fabs((double)k * s[i / 64] + b[i / 64] - row[i]);
                cr_expect_geq(e + 1e-6 * fabs(s[i / 64]), err_code,
                              "bits %d col %d: %g got code %u, code %u is nearer", bits, i,
                              (double)row[i], code, k);
            }
        }
    }
}

/* dequant_row of the shared MLX checkpoints is exactly scale * q + bias. */
Test(quant, dequant_row_exact_on_mlx_files)
{
    const char *names[] = {"tinystories-656k-mlx-4bit", "tinystories-656k-mlx-8bit"};
    const int bits[] = {4, 8}, gs[] = {64, 32};
    for (int k = 0; k < 2; k++) {
        char p[1024];
        model_path(p, sizeof(p), names[k]);
        st_model *m;
        ifd_error err = {{0}};
        cr_assert_eq(st_open(p, &m, &err), 0, "%s", err.msg);
        const struct st_tensor *t = st_find(m, "model.embed_tokens.weight");
        const struct st_tensor *ts = st_find(m, "model.embed_tokens.scales");
        const struct st_tensor *tb = st_find(m, "model.embed_tokens.biases");
        cr_assert(t && ts && tb);
        struct ifd_weight w = {.dtype = IFD_DTYPE_U32, .data = t->data, .rows = t->shape[0],
                               .cols = t->shape[1] * 32 / bits[k], .bits = bits[k],
                               .group_size = gs[k], .qparam_dtype = ts->dtype,
                               .scales = ts->data, .biases = tb->data};
        float out[128];
        for (int64_t r = 0; r < w.rows; r += 37) {
            quant_dequant_row(&w, r, out);
            for (int64_t c = 0; c < w.cols; c++) {
                float ref = ref_weight(&w, r, c);
                cr_assert_eq(memcmp(&out[c], &ref, 4), 0, "%s row %lld col %lld", names[k],
                             (long long)r, (long long)c);
            }
        }
        st_close(m);
    }
}

/* ---- kernels ----------------------------------------------------------------- */

/* Normalised mean squared error of y against the double-precision reference. */
static double kernel_nmse(enum quant_isa isa, const struct ifd_weight *w, const float *x, int n_tokens,
                          int64_t r0, int64_t r1, int *ret_rc)
{
    const int64_t rows = w->rows, cols = w->cols;
    float *y = malloc((size_t)(n_tokens * rows) * sizeof(float));
    const float sentinel = 12345.0f;
    for (int64_t i = 0; i < n_tokens * rows; i++)
        y[i] = sentinel;
    int rc = quant_matmul_rows_isa(isa, w, x, n_tokens, y, r0, r1);
    *ret_rc = rc;
    if (rc < 0) {
        free(y);
        return 0.0;
    }
    double num = 0.0, den = 0.0;
    for (int t = 0; t < n_tokens; t++)
        for (int64_t r = 0; r < rows; r++) {
            float got = y[t * rows + r];
            if (r < r0 || r >= r1) {
                cr_assert_eq(got, sentinel, "row %lld outside [%lld, %lld) was written", (long long)r,
                             (long long)r0, (long long)r1);
                continue;
            }
            double ref = 0.0;
            for (int64_t c = 0; c < cols; c++)
                ref += (double)ref_weight(w, r, c) * (double)x[t * cols + c];
            num += (got - ref) * (got - ref);
            den += ref * ref;
        }
    free(y);
    return den > 0 ? num / den : num;
}

static const char *isa_name(enum quant_isa isa)
{
    switch (isa) {
    case QUANT_ISA_SCALAR: return "scalar";
    case QUANT_ISA_AVX2: return "avx2";
    case QUANT_ISA_AVX512: return "avx512";
    default: return "auto";
    }
}

/* kern_set_simd() forces the quantized products too: QUANT_ISA_AUTO (what
 * quant_matmul_rows and so the engine use) then gives, bit for bit, the
 * forced ISA's result, which differs in summation order from the best one's;
 * and the integer-activation path follows: the int8 pair at AVX-512 (with
 * VNNI), int16 at AVX2 and AVX2-VNNI, none at scalar. */
Test(quant, auto_follows_the_forced_level)
{
    const enum quant_isa isa_of[] = {[CPU_SIMD_SCALAR] = QUANT_ISA_SCALAR, [CPU_SIMD_AVX2] = QUANT_ISA_AVX2,
                                     [CPU_SIMD_AVX2_VNNI] = QUANT_ISA_AVX2, [CPU_SIMD_AVX512] = QUANT_ISA_AVX512};
    const enum cpu_simd best = cpu_simd_best();
    if (best == CPU_SIMD_SCALAR) {
        /* A note, not cr_log_warn: Criterion 2.4 exits 1 when a test warns. */
        fprintf(stderr, "skipped: no SIMD on this CPU: nothing to force\n");
        return;
    }
    struct qw q;
    const int64_t rows = 37, cols = 64 * 9;
    const int n_tokens = 5;
    const size_t ny = (size_t)(n_tokens * rows);
    qw_make(&q, rows, cols, 4, 64, IFD_DTYPE_BF16, 0);
    float *x = malloc((size_t)(n_tokens * cols) * sizeof(float));
    float *y_best = malloc(ny * sizeof(float)), *want = malloc(ny * sizeof(float)), *got = malloc(ny * sizeof(float));
    for (int64_t i = 0; i < n_tokens * cols; i++)
        x[i] = frand();
    cr_assert_eq(quant_matmul_rows_isa(isa_of[best], &q.w, x, n_tokens, y_best, 0, rows), 0);
    for (int l = CPU_SIMD_SCALAR; l < (int)best; l++) {
        const char *name = cpu_simd_name((enum cpu_simd)l);
        if (!cpu_simd_supported((enum cpu_simd)l))
            continue;
        cr_assert_eq(kern_set_simd(name), 0);
        cr_assert_eq(quant_matmul_rows_isa(isa_of[l], &q.w, x, n_tokens, want, 0, rows), 0);
        if (isa_of[l] != isa_of[best])
            cr_assert_neq(memcmp(want, y_best, ny * sizeof(float)), 0,
                      "%s and %s agree bit for bit: this case cannot tell them apart", name, cpu_simd_name(best));
        cr_assert_eq(quant_matmul_rows_isa(QUANT_ISA_AUTO, &q.w, x, n_tokens, got, 0, rows), 0);
        cr_assert_eq(memcmp(want, got, ny * sizeof(float)), 0, "forced %s: AUTO must compute what %s does", name,
                     name);
        struct ifd_weight probe = {.bits = 4, .group_size = 64, .cols = 64};
        if (l == CPU_SIMD_SCALAR) {
            cr_assert(!quant_act_eligible(&probe, 1 << 20), "forced %s: no integer path", name);
        } else {
            struct quant_act a;
            cr_assert(quant_act_eligible(&probe, 1), "forced %s: the int16 path takes even one token", name);
            quant_act_setup(&a, &probe, 1);
            cr_assert_eq(a.kind, QUANT_ACT_INT16, "forced %s", name);
        }
    }
    cr_assert_eq(kern_set_simd(cpu_simd_name(best)), 0);
    cr_assert_eq(quant_matmul_rows_isa(QUANT_ISA_AUTO, &q.w, x, n_tokens, got, 0, rows), 0);
    cr_assert_eq(memcmp(y_best, got, ny * sizeof(float)), 0, "restored: AUTO is the best again");
    free(x);
    free(y_best);
    free(want);
    free(got);
    qw_free(&q);
}

/* Every ISA, every bit width and group size, odd row counts (tile remainders),
 * token counts 1..9 (tile remainders), a slice of rows, misaligned buffers and
 * every scale dtype: NMSE against the reference below 1e-10. */
Test(quant, kernels_nmse_odd_shapes)
{
    const enum quant_isa isas[] = {QUANT_ISA_SCALAR, QUANT_ISA_AVX2, QUANT_ISA_AVX512, QUANT_ISA_AUTO};
    const int bits_list[] = {2, 3, 4, 6, 8};
    const int gs_list[] = {32, 64, 128};
    const int64_t rows_list[] = {1, 7, 13};
    const enum ifd_dtype qdts[] = {IFD_DTYPE_F32, IFD_DTYPE_F16, IFD_DTYPE_BF16};
    int n_run = 0, n_skipped = 0;
    for (size_t bi = 0; bi < 5; bi++)
        for (size_t gi = 0; gi < 3; gi++) {
            int bits = bits_list[bi], gs = gs_list[gi];
            int64_t rows = rows_list[(bi + gi) % 3], cols = (int64_t)gs * (1 + (int64_t)(bi % 3));
            struct qw q;
            qw_make(&q, rows, cols, bits, gs, qdts[(bi + gi) % 3], (int)(bi % 2) * 2);
            for (int n_tokens = 1; n_tokens <= 9; n_tokens += 2) {
                float *x = malloc((size_t)(n_tokens * cols) * sizeof(float));
                for (int64_t i = 0; i < n_tokens * cols; i++)
                    x[i] = frand();
                for (size_t ii = 0; ii < 4; ii++) {
                    int rc;
                    int64_t r0 = rows > 2 ? 1 : 0, r1 = rows > 2 ? rows - 1 : rows;
                    double e = kernel_nmse(isas[ii], &q.w, x, n_tokens, r0, r1, &rc);
                    if (rc == -ENOTSUP) {
                        n_skipped++;
                        continue;
                    }
                    cr_assert_eq(rc, 0);
                    n_run++;
                    cr_expect_lt(e, 1e-10, "%s bits %d gs %d [%lld x %lld] tokens %d: NMSE %g",
                                 isa_name(isas[ii]), bits, gs, (long long)rows, (long long)cols,
                                 n_tokens, e);
                }
                free(x);
            }
            qw_free(&q);
        }
    fprintf(stderr, "kernels: %d cases run, %d skipped (ISA not on this CPU)\n", n_run, n_skipped);
    cr_expect_gt(n_run, 0);
}

/* Rows wider than the kernel's activation panel (8192 floats per tile), so a
 * row is summed over several panels; a row count of 67 (not a tile multiple). */
Test(quant, kernels_nmse_wide_rows)
{
    const enum quant_isa isas[] = {QUANT_ISA_SCALAR, QUANT_ISA_AVX2, QUANT_ISA_AVX512};
    const int bits_list[] = {4, 8};
    for (size_t bi = 0; bi < 2; bi++) {
        struct qw q;
        int64_t rows = 67, cols = 8192 + 320;
        qw_make(&q, rows, cols, bits_list[bi], 64, IFD_DTYPE_BF16, 0);
        for (int n_tokens = 1; n_tokens <= 5; n_tokens += 2) {
            float *x = malloc((size_t)(n_tokens * cols) * sizeof(float));
            for (int64_t i = 0; i < n_tokens * cols; i++)
                x[i] = frand();
            for (size_t ii = 0; ii < 3; ii++) {
                int rc;
                double e = kernel_nmse(isas[ii], &q.w, x, n_tokens, 0, rows, &rc);
                if (rc == -ENOTSUP)
                    continue;
                cr_expect_lt(e, 1e-10, "%s bits %d tokens %d: NMSE %g", isa_name(isas[ii]),
                             bits_list[bi], n_tokens, e);
            }
            free(x);
        }
        qw_free(&q);
    }
}

/* x rounded as the integer paths round it, independently, per block of 32 or
 * 64 columns. int8 pair: d = max|x| / 127, u = x * (1 / d), hi = nearbyint(u),
 * lo = nearbyint((u - hi) * QUANT_ACT_LO_SCALE), x ~= d * (hi + lo / QUANT_ACT_LO_SCALE).
 * int16: d = max|x| / 32767, x ~= d * nearbyint(x * (1 / d)). */
static void ref_act_round(enum quant_act_kind kind, const float *x, int64_t n, int block, float *out)
{
    for (int64_t b0 = 0; b0 < n; b0 += block) {
        float m = 0.0f;
        for (int64_t c = b0; c < b0 + block; c++)
            m = fmaxf(m, fabsf(x[c]));
        const float d = m / (kind == QUANT_ACT_INT16 ? 32767.0f : 127.0f), inv = d > 0.0f ? 1.0f / d : 0.0f;
        for (int64_t c = b0; c < b0 + block; c++) {
            const float u = x[c] * inv, hi = nearbyintf(u);
            if (kind == QUANT_ACT_INT16) {
                out[c] = (float)((double)d * (double)hi);
                continue;
            }
            const float lo = nearbyintf((u - hi) * QUANT_ACT_LO_SCALE);
            out[c] = (float)((double)d * ((double)hi + (double)lo / QUANT_ACT_LO_SCALE));
        }
    }
}

/* The integer-activation products (the int8 pair of AVX-512 VNNI; int16 of
 * AVX2 and AVX2-VNNI), each level this CPU has, twice against a double
 * reference: with x rounded as above in the s*q part (the bias part takes the
 * exact sum of x) it must be exact to float rounding (squared error below
 * 1e-10 of the squared sum of |w x|, which float rounding stays under even
 * where the sum cancels: this checks codes, order, scales, biases and
 * panels, whose errors are of the order of the terms); with the
 * exact x, the rounding of x alone must stay below an NMSE of 1e-3 (x random in
 * [-1, 1): about 5e-5 measured; a wrong code or order gives about 1). Rows
 * outside the slice are never written. Odd row counts (partial 8- and 16-row
 * panels), token counts around the tile of 8 and past the int16 panel
 * kernel's threshold, rows wider than one panel, every scale dtype. */
Test(quant, integer_activations_nmse)
{
    const int bits_list[] = {4, 8};
    const int gs_list[] = {32, 64, 128, 512}; /* 512: longer than one int16 panel */
    const int64_t rows_list[] = {1, 17, 40};
    const int64_t cols_mult[] = {1, 3, 35};
    /* 1-3: the row kernels (2 and 3: a pair of tokens at once); 19 and 33:
     * the int16 panel kernel, several tiles of tokens */
    const int tokens_list[] = {1, 2, 3, 7, 8, 19, 33};
    const enum ifd_dtype qdts[] = {IFD_DTYPE_F32, IFD_DTYPE_F16, IFD_DTYPE_BF16};
    static const enum cpu_simd levels[] = {CPU_SIMD_AVX512, CPU_SIMD_AVX2_VNNI, CPU_SIMD_AVX2};
    const enum cpu_simd best = cpu_simd_best();
    int n_run = 0, n_levels = 0;
    void *panel = aligned_alloc(64, QUANT_ACT_PANEL_BYTES);
    cr_assert_not_null(panel);
    for (size_t li = 0; li < sizeof(levels) / sizeof(levels[0]); li++) {
        struct ifd_weight probe = {.bits = 4, .group_size = 64, .cols = 64};
        if (!cpu_simd_supported(levels[li]) || kern_set_simd(cpu_simd_name(levels[li])) != 0 ||
            !quant_act_eligible(&probe, 1 << 20)) {
            fprintf(stderr, "skipped: %s: no integer-activation kernel on this CPU\n", cpu_simd_name(levels[li]));
            continue;
        }
        n_levels++;
        for (size_t bi = 0; bi < 2; bi++)
            for (size_t gi = 0; gi < 4; gi++)
                for (size_t ri = 0; ri < 3; ri++) {
                    const int bits = bits_list[bi], gs = gs_list[gi];
                    const int64_t rows = rows_list[ri], cols = gs * cols_mult[(gi + ri) % 3];
                    struct qw q;
                    qw_make(&q, rows, cols, bits, gs, qdts[(bi + ri) % 3], (int)(ri % 2) * 2);
                    const int n_tokens = tokens_list[(bi + 2 * gi + ri) % 7];
                    /* Up to 3 tokens take the row kernels, as decode does;
                     * more take the prefill kernels, forced from one token. */
                    quant_act_set_min_tokens(n_tokens <= 3 ? 0 : 1);
                    const int64_t r0 = rows > 2 ? 1 : 0, r1 = rows > 2 ? rows - 1 : rows;
                    float *x = malloc((size_t)(n_tokens * cols) * sizeof(float));
                    float *xr = malloc((size_t)(n_tokens * cols) * sizeof(float));
                    float *y = malloc((size_t)(n_tokens * rows) * sizeof(float));
                    for (int64_t i = 0; i < n_tokens * cols; i++)
                        x[i] = frand();
                    const float sentinel = 12345.0f;
                    for (int64_t i = 0; i < n_tokens * rows; i++)
                        y[i] = sentinel;
                    struct quant_act a;
                    cr_assert(quant_act_eligible(&q.w, n_tokens));
                    cr_assert_eq(quant_act_alloc(&a, &q.w, n_tokens), 0);
                    ref_act_round(a.kind, x, n_tokens * cols, gs % 64 == 0 ? 64 : 32, xr);
                    quant_act_prepare_tokens(&a, x, 0, n_tokens);
                    cr_assert_eq(quant_act_matmul_rows(&q.w, &a, y, r0, r1, panel), 0);
                    quant_act_free(&a);
                    /* den_abs: the squared sums of |terms|, which bound float
                     * rounding whatever cancels (one output of one row can
                     * cancel to near zero). */
                    double num = 0.0, num_rounded = 0.0, den = 0.0, den_abs = 0.0;
                    for (int t = 0; t < n_tokens; t++)
                        for (int64_t r = 0; r < rows; r++) {
                            const float got = y[t * rows + r];
                            if (r < r0 || r >= r1) {
                                cr_assert_eq(got, sentinel, "row %lld outside the slice was written", (long long)r);
                                continue;
                            }
                            double ref = 0.0, ref_rounded = 0.0, mag = 0.0;
                            for (int64_t c = 0; c < cols; c++) {
                                /* The bias term takes the exact x: w x = s q xr + b x. */
                                const double wv = ref_weight(&q.w, r, c);
                                const double b = ref_param(q.w.qparam_dtype, q.w.biases, r * (cols / gs) + c / gs);
                                ref += wv * (double)x[t * cols + c];
                                ref_rounded += (wv - b) * (double)xr[t * cols + c] + b * (double)x[t * cols + c];
                                mag += fabs(wv * (double)x[t * cols + c]);
                            }
                            num += (got - ref) * (got - ref);
                            num_rounded += (got - ref_rounded) * (got - ref_rounded);
                            den += ref * ref;
                            den_abs += mag * mag;
                        }
                    const char *lv = cpu_simd_name(levels[li]);
                    cr_expect_lt(num_rounded / den_abs, 1e-10,
                                 "%s bits %d gs %d [%lld x %lld] tokens %d: error %g of sum |w x| against rounded x",
                                 lv, bits, gs, (long long)rows, (long long)cols, n_tokens, num_rounded / den_abs);
                    cr_expect_lt(num / den, 1e-3, "%s bits %d gs %d [%lld x %lld] tokens %d: NMSE %g against exact x",
                                 lv, bits, gs, (long long)rows, (long long)cols, n_tokens, num / den);
                    n_run++;
                    free(x);
                    free(xr);
                    free(y);
                    qw_free(&q);
                }
        quant_act_set_min_tokens(0);
    }
    cr_assert_eq(kern_set_simd(cpu_simd_name(best)), 0);
    free(panel);
    fprintf(stderr, "integer activations: %d levels, %d cases\n", n_levels, n_run);
    cr_expect_eq(n_run, 24 * n_levels);
    if (best >= CPU_SIMD_AVX2)
        cr_expect_gt(n_levels, 0, "a CPU with AVX2 has at least the int16 path");
}

/* ---- weights in panels (quant_panel.c) ---------------------------------------- */

/* y [n_tokens, rows] of w (checkpoint layout) through the int16 row kernel,
 * one token at a time: what decode computes. */
static void rows_one_token_at_a_time(const struct ifd_weight *w, const float *x, int n_tokens, float *y)
{
    float *y1 = malloc((size_t)w->rows * sizeof(float));
    cr_assert_not_null(y1);
    for (int t = 0; t < n_tokens; t++) {
        struct quant_act a;
        cr_assert_eq(quant_act_alloc(&a, w, 1), 0);
        quant_act_prepare_tokens(&a, x + (int64_t)t * w->cols, 0, 1);
        cr_assert_eq(quant_act_matmul_rows(w, &a, y1, 0, w->rows, NULL), 0);
        quant_act_free(&a);
        memcpy(y + (int64_t)t * w->rows, y1, (size_t)w->rows * sizeof(float));
    }
    free(y1);
}

/* y [n_tokens, rows] of w, rows [r0, r1), through the int8 pair (AVX-512
 * VNNI, the level set and the threshold forced by the caller). */
static void int8_pair_rows(const struct ifd_weight *w, const float *x, int n_tokens, float *y, int64_t r0, int64_t r1)
{
    struct quant_act a;
    void *panel = aligned_alloc(64, QUANT_ACT_PANEL_BYTES);
    cr_assert_not_null(panel);
    cr_assert_eq(quant_act_alloc(&a, w, n_tokens), 0);
    cr_assert_eq(a.kind, QUANT_ACT_INT8_PAIR);
    quant_act_prepare_tokens(&a, x, 0, n_tokens);
    cr_assert_eq(quant_act_matmul_rows(w, &a, y, r0, r1, panel), 0);
    quant_act_free(&a);
    free(panel);
}

/* The product of pw (in panels) at the level in use, whole and in two slices
 * split at a panel, against ref, bit for bit; a slice starting inside a
 * panel is refused. */
static void panels_against(const struct ifd_weight *pw, const float *x, int n_tokens, const float *ref, float *got,
                           const char *what, const char *how)
{
    const int64_t rows = pw->rows;
    struct quant_act act;
    cr_assert(quant_act_eligible(pw, n_tokens));
    cr_assert_eq(quant_act_alloc(&act, pw, n_tokens), 0);
    quant_act_prepare_tokens(&act, x, 0, n_tokens);
    void *panel = aligned_alloc(64, QUANT_ACT_PANEL_BYTES);
    cr_assert_not_null(panel);
    const int64_t split = rows > 8 ? 8 : rows;
    for (int pass = 0; pass < 2; pass++) {
        for (int64_t i = 0; i < n_tokens * rows; i++)
            got[i] = 12345.0f;
        if (pass == 0) {
            cr_assert_eq(quant_act_matmul_rows(pw, &act, got, 0, rows, panel), 0, "%s, %s: every row", what, how);
        } else {
            cr_assert_eq(quant_act_matmul_rows(pw, &act, got, 0, split, panel), 0, "%s, %s: rows [0, %lld)", what,
                         how, (long long)split);
            cr_assert_eq(quant_act_matmul_rows(pw, &act, got, split, rows, panel), 0, "%s, %s: rows [%lld, %lld)",
                         what, how, (long long)split, (long long)rows);
        }
        for (int t = 0; t < n_tokens; t++)
            for (int64_t r = 0; r < rows; r++)
                cr_assert_eq(got[t * rows + r], ref[t * rows + r],
                             "%s, %s, tokens %d pass %d: token %d row %lld: %.9g in panels, %.9g from the rows", what,
                             how, n_tokens, pass, t, (long long)r, got[t * rows + r], ref[t * rows + r]);
    }
    if (rows > 8)
        cr_assert_lt(quant_act_matmul_rows(pw, &act, got, 3, rows, panel), 0, "%s, %s: a slice inside a panel", what,
                     how);
    free(panel);
    quant_act_free(&act);
}

/* The products of q for n_tokens random tokens: the portable product of pw
 * (the same weight in panels) against the scalar one, and, with AVX2, every
 * vector level's panel kernel against the row kernel. */
static void panel_products(const struct qw *q, const struct ifd_weight *pw, int n_tokens, const char *what,
                           bool kernels, int *n_level_cases, int *n_pair_cases)
{
    const int64_t rows = q->w.rows, cols = q->w.cols;
    static const enum cpu_simd vector_levels[] = {CPU_SIMD_AVX2, CPU_SIMD_AVX2_VNNI, CPU_SIMD_AVX512};
    float *x = malloc((size_t)(n_tokens * cols) * sizeof(float));
    float *ref = malloc((size_t)(n_tokens * rows) * sizeof(float));
    float *got = malloc((size_t)(n_tokens * rows) * sizeof(float));
    for (int64_t i = 0; i < n_tokens * cols; i++)
        x[i] = frand();
    cr_assert_eq(quant_matmul_rows_isa(QUANT_ISA_SCALAR, &q->w, x, n_tokens, ref, 0, rows), 0);
    quant_matmul_rows(pw, x, n_tokens, got, 0, rows);
    cr_assert_eq(memcmp(ref, got, (size_t)(n_tokens * rows) * sizeof(float)), 0,
                 "%s tokens %d: the portable product differs from the scalar one", what, n_tokens);

    if (kernels) {
        cr_assert_eq(kern_set_simd("avx2"), 0);
        rows_one_token_at_a_time(&q->w, x, n_tokens, ref);
        for (size_t li = 0; li < sizeof(vector_levels) / sizeof(vector_levels[0]); li++) {
            if (!cpu_simd_supported(vector_levels[li]))
                continue;
            cr_assert_eq(kern_set_simd(cpu_simd_name(vector_levels[li])), 0);
            panels_against(pw, x, n_tokens, ref, got, what, cpu_simd_name(vector_levels[li]));
            (*n_level_cases)++;
        }
        /* AVX-512 VNNI's int8 pair (prefill) packs from panels
         * what it gathers from rows: the same products */
        if (cpu_simd_supported(CPU_SIMD_AVX512) && n_tokens >= 4) {
            cr_assert_eq(kern_set_simd("avx512"), 0);
            if (cpu_simd_vnni512()) {
                quant_act_set_min_tokens(1);
                int8_pair_rows(&q->w, x, n_tokens, ref, 0, rows);
                panels_against(pw, x, n_tokens, ref, got, what, "avx512 int8 pair");
                quant_act_set_min_tokens(0);
                (*n_pair_cases)++;
            }
        }
    }
    free(x);
    free(ref);
    free(got);
}

/* A weight in panels holds the same weight: every row dequantizes to the
 * same floats, the portable product is quant.c's scalar one bit for bit,
 * and the panel kernels give, for every token count and row split, what
 * the row kernel gives one token at a time, bit for bit (their float
 * arithmetic is the same, in the same order). Off the AVX2 levels the copy
 * is not wanted, and what is not x86 code is still checked. */
Test(quant, panels_equal_the_checkpoint_layout)
{
    const int bits_list[] = {4, 8};
    const int gs_list[] = {32, 64, 128};
    const int64_t rows_list[] = {1, 8, 17, 40};
    const int tokens_list[] = {1, 2, 3, 5, 8, 13, 19}, few_tokens_list[] = {1, 2, 3, 4};
    const enum ifd_dtype qdts[] = {IFD_DTYPE_F32, IFD_DTYPE_F16, IFD_DTYPE_BF16};
    const enum cpu_simd best = cpu_simd_best();
    const bool kernels = cpu_simd_supported(CPU_SIMD_AVX2);
    if (!kernels)
        fprintf(stderr, "skipped: panel kernels: no AVX2 on this CPU (layout and portable product still checked)\n");
    int n_cases = 0, n_level_cases = 0, n_pair_cases = 0;
    for (size_t bi = 0; bi < 2; bi++)
        for (size_t gi = 0; gi < 3; gi++)
            for (size_t ri = 0; ri < 4; ri++) {
                const int bits = bits_list[bi], gs = gs_list[gi];
                const int64_t rows = rows_list[ri], cols = gs * (int64_t)(1 + (gi + ri) % 3);
                const enum ifd_dtype qdt = qdts[(bi + gi + ri) % 3];
                struct qw q;
                qw_make(&q, rows, cols, bits, gs, qdt, (int)(ri % 2) * 2);
                struct ifd_weight pw;
                void *owned = NULL;
                ifd_error err = {{0}};
                cr_assert_eq(quant_weight_to_panels(&q.w, &pw, &owned, &err), 0, "%s", err.msg);
                cr_assert(pw.panels && !pw.scales && !pw.biases);
                const char *what = "";
                char buf[96];
                snprintf(buf, sizeof(buf), "bits %d gs %d [%lld x %lld] %s", bits, gs, (long long)rows,
                         (long long)cols, ifd_dtype_name(qdt));
                what = buf;

                float *a = malloc((size_t)cols * sizeof(float)), *b = malloc((size_t)cols * sizeof(float));
                for (int64_t r = 0; r < rows; r++) {
                    quant_dequant_row(&q.w, r, a);
                    quant_dequant_row(&pw, r, b);
                    cr_assert_eq(memcmp(a, b, (size_t)cols * sizeof(float)), 0, "%s: row %lld dequantizes apart",
                                 what, (long long)r);
                }
                free(a);
                free(b);

                /* a token count of the long list, and one of the few that
                 * the kernels take two panels at a time */
                panel_products(&q, &pw, tokens_list[(bi + 2 * gi + ri) % 7], what, kernels, &n_level_cases,
                               &n_pair_cases);
                panel_products(&q, &pw, few_tokens_list[(bi + gi + ri) % 4], what, kernels, &n_level_cases,
                               &n_pair_cases);
                free(owned);
                qw_free(&q);
                n_cases++;
            }
    cr_assert_eq(n_cases, 24);
    fprintf(stderr, "panels: %d cases, %d at a vector level, %d through the int8 pair\n", n_cases, n_level_cases,
            n_pair_cases);
    if (kernels)
        cr_assert_geq(n_level_cases, 24);
    if (cpu_simd_supported(CPU_SIMD_AVX512) && cpu_features()->avx512_vnni)
        cr_assert_gt(n_pair_cases, 0);

    /* wanted at every vector level, and never twice */
    struct qw q;
    qw_make(&q, 16, 64, 4, 64, IFD_DTYPE_BF16, 0);
    static const enum cpu_simd levels[] = {CPU_SIMD_SCALAR, CPU_SIMD_AVX2, CPU_SIMD_AVX2_VNNI, CPU_SIMD_AVX512};
    for (size_t li = 0; li < sizeof(levels) / sizeof(levels[0]); li++) {
        if (!cpu_simd_supported(levels[li]))
            continue;
        cr_assert_eq(kern_set_simd(cpu_simd_name(levels[li])), 0);
        const bool want = levels[li] != CPU_SIMD_SCALAR;
        cr_assert_eq(quant_panels_wanted(&q.w), want, "%s", cpu_simd_name(levels[li]));
        struct ifd_weight pw = q.w;
        pw.panels = true;
        cr_assert(!quant_panels_wanted(&pw));
    }
    qw_free(&q);
    cr_assert_eq(kern_set_simd(cpu_simd_name(best)), 0);
}

/* ---- quantize on load -------------------------------------------------------- */

Test(quant, weight_quantize_errors)
{
    float f[96 * 2] = {0};
    struct ifd_weight src = {.dtype = IFD_DTYPE_F32, .data = f, .rows = 2, .cols = 96};
    struct ifd_weight out;
    void *owned = (void *)1;
    ifd_error err = {{0}};
    cr_expect_eq(quant_weight_quantize(&src, 4, 64, &out, &owned, &err), -EINVAL);
    cr_expect(strstr(err.msg, "96") && strstr(err.msg, "64"), "message names the sizes: %s", err.msg);
    cr_expect_eq(owned, (void *)1, "ret_owned untouched on failure");
    cr_expect_eq(quant_weight_quantize(&src, 5, 32, &out, &owned, &err), -ENOTSUP);
    cr_expect(strstr(err.msg, "5 bits") != NULL, "%s", err.msg);
    cr_expect_eq(quant_weight_quantize(&src, 4, 48, &out, &owned, &err), -ENOTSUP);
    struct ifd_weight u = {.dtype = IFD_DTYPE_U32, .data = f, .rows = 2, .cols = 96, .bits = 4,
                           .group_size = 32};
    cr_expect_eq(quant_weight_quantize(&u, 4, 32, &out, &owned, &err), -EINVAL);
    cr_expect(strstr(err.msg, "U32") != NULL, "%s", err.msg);
    cr_expect_eq(quant_weight_quantize(&src, 8, 32, &out, &owned, &err), 0, "%s", err.msg);
    cr_expect_eq(out.bits, 8);
    cr_expect_eq(out.group_size, 32);
    cr_expect_eq(out.qparam_dtype, IFD_DTYPE_F32);
    free(owned);
}

/* Quantizing tinystories-656k-bf16 on load with the MLX files' bits and group
 * size reproduces those files tensor for tensor: same codes, same scales and
 * biases bit for bit (both keep the source's BF16/F16), hence the same model. */
/* Every quantized matrix of a and b: same layout, codes, scales and biases
 * byte for byte. */
static void compare_models(const struct model *a, const struct model *b, int bits, int gs)
{
    const struct ifd_weight *wa[16], *wb[16];
    int n = 0;
    wa[n] = &a->embed, wb[n++] = &b->embed;
    for (int l = 0; l < a->cfg.n_layers; l++) {
        const struct layer_weights *la = &a->layers[l], *lb = &b->layers[l];
        wa[n] = &la->wq, wb[n++] = &lb->wq;
        wa[n] = &la->wk, wb[n++] = &lb->wk;
        wa[n] = &la->wv, wb[n++] = &lb->wv;
        wa[n] = &la->wo, wb[n++] = &lb->wo;
        wa[n] = &la->w_gate, wb[n++] = &lb->w_gate;
        wa[n] = &la->w_up, wb[n++] = &lb->w_up;
        wa[n] = &la->w_down, wb[n++] = &lb->w_down;
    }
    for (int i = 0; i < n; i++) {
        const struct ifd_weight *x = wa[i], *y = wb[i];
        cr_assert_eq(x->bits, bits, "weight %d not quantized on load", i);
        cr_assert_eq(y->bits, bits);
        cr_assert_eq(x->rows, y->rows);
        cr_assert_eq(x->cols, y->cols);
        cr_assert_eq(x->qparam_dtype, y->qparam_dtype, "weight %d: scale dtype %s vs %s", i,
                     ifd_dtype_name(x->qparam_dtype), ifd_dtype_name(y->qparam_dtype));
        if (x->panels) {
            /* the bytes of the MLX weight's copy in panels */
            struct ifd_weight p;
            void *owned = NULL;
            ifd_error err = {{0}};
            cr_assert_eq(quant_weight_to_panels(y, &p, &owned, &err), 0, "%s", err.msg);
            const size_t panel_bytes = (size_t)(x->cols / gs) *
                                       (size_t)(8 * gs * bits / 8 + 2 * 8 * (int)ifd_dtype_size(x->qparam_dtype));
            cr_expect_eq(memcmp(x->data, p.data, (size_t)(x->rows + 7) / 8 * panel_bytes), 0,
                         "weight %d: panels differ", i);
            free(owned);
            continue;
        }
        size_t wbytes = (size_t)(x->rows * x->cols * bits / 8);
        size_t pbytes = (size_t)(x->rows * (x->cols / gs)) * ifd_dtype_size(x->qparam_dtype);
        cr_expect_eq(memcmp(x->data, y->data, wbytes), 0, "weight %d: codes differ", i);
        cr_expect_eq(memcmp(x->scales, y->scales, pbytes), 0, "weight %d: scales differ", i);
        cr_expect_eq(memcmp(x->biases, y->biases, pbytes), 0, "weight %d: biases differ", i);
    }
    /* the tied head is the quantized embedding */
    cr_expect_eq(a->lm_head.data, a->embed.data);
}

/* Quantized on load in the checkpoint's layout, and into panels (for the
 * CPU), which every vector level takes: the scalar level keeps the rows. */
static void compare_load_with_mlx(const char *srcname, const char *mlx, int bits, int gs)
{
    char sp[1024], mp[1024];
    model_path(sp, sizeof(sp), srcname);
    model_path(mp, sizeof(mp), mlx);
    struct model *b = NULL;
    ifd_error err = {{0}};
    struct model_load_opts ob = model_load_opts_default();
    cr_assert_eq(model_load(mp, &ob, &b, &err), 0, "%s", err.msg);
    for (int panels = 0; panels < 2; panels++) {
        struct model_load_opts o = model_load_opts_default();
        o.quantize_bits = bits;
        o.quantize_group_size = gs;
        o.quantize_into_panels = panels;
        struct model *a = NULL;
        cr_assert_eq(model_load(sp, &o, &a, &err), 0, "%s", err.msg);
        cr_assert_eq(a->layers[0].wq.panels, panels && cpu_simd_level() != CPU_SIMD_SCALAR);
        cr_assert_eq(a->embed.panels, a->layers[0].wq.panels);
        compare_models(a, b, bits, gs);
        model_destroy(a);
    }
    model_destroy(b);
}

Test(quant, quantize_on_load_equals_mlx_4bit)
{
    compare_load_with_mlx("tinystories-656k-bf16", "tinystories-656k-mlx-4bit", 4, 64);
}

Test(quant, quantize_on_load_equals_mlx_8bit)
{
    compare_load_with_mlx("tinystories-656k-f16", "tinystories-656k-mlx-8bit", 8, 32);
}

/* Once quantized on load, a float original is not read again: in a worker's
 * image (st_open_image()) its pages are given back, and what was given back
 * is unreadable (tu_probe_read()). */
Test(quant, quantize_on_load_gives_the_float_pages_back)
{
    char dir[1024], file[1100];
    model_path(dir, sizeof(dir), "tinystories-656k");
    snprintf(file, sizeof(file), "%s/model.safetensors", dir);
    size_t len;
    char *bytes = tu_must_read_file(file, &len);
    void *img = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(img, MAP_FAILED);
    memcpy(img, bytes, len);
    free(bytes);
    st_model *st = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_open_image(img, len, "image of tinystories-656k", &st, &err), 0, "%s", err.msg);
    const struct st_tensor *t = st_find(st, "model.layers.0.mlp.up_proj.weight");
    cr_assert(t && t->nbytes > 3 * 4096, "up_proj is several pages");
    const char *middle = (const char *)t->data + t->nbytes / 2;
    cr_assert_eq(tu_probe_read(middle, 4), 0, "readable before binding");

    struct model_config cfg;
    cr_assert_eq(model_config_load(dir, &cfg, &err), 0, "%s", err.msg);
    struct model_load_opts o = model_load_opts_default();
    o.quantize_bits = 4;
    o.quantize_into_panels = true;
    struct model *m = NULL;
    cr_assert_eq(model_bind(st, &cfg, &o, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(m->layers[0].w_up.bits, 4);
    cr_assert_eq(tu_probe_read(middle, 4), -EFAULT, "the float up_proj is still readable after quantizing");
    model_destroy(m);
}

/* ---- tokens through the engine ---------------------------------------------- */

static void expect_stable_prefix(const struct model *m, const char *golden_model, const char *what)
{
    struct golden g;
    golden_find(golden_model, &g);
    struct engine_config c = {.n_seq_max = 1, .n_ctx = 512, .n_batch_max = GOLDEN_MAX_IDS, .n_threads = 2};
    engine *e = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(engine_create_cpu(m, NULL, 0, &c, &e, &err), 0, "%s", err.msg);
    int32_t out[GOLDEN_MAX_IDS];
    int n = golden_generate(e, g.prompt, g.n_prompt, g.n_gen, out, NULL);
    engine_destroy(e);
    cr_assert_geq(n, g.stable, "%s: %d tokens, stable prefix %d", what, n, g.stable);
    for (int i = 0; i < g.stable; i++)
        cr_assert_eq(out[i], g.gen[i], "%s: token %d is %d, golden (%s) %d", what, i, out[i], golden_model,
                     g.gen[i]);
}

/* Quantize on load from the F32 checkpoint: codes as MLX's, scales kept in
 * F32 instead of the files' BF16/F16, and the golden tokens of the MLX files,
 * in either layout. */
Test(quant, quantize_on_load_f32_golden_tokens, .timeout = 120)
{
    const struct {
        const char *golden;
        int bits, gs;
    } cases[] = {{"tinystories-656k-mlx-4bit", 4, 64}, {"tinystories-656k-mlx-8bit", 8, 32}};
    for (int i = 0; i < 2; i++) {
        char sp[1024];
        model_path(sp, sizeof(sp), "tinystories-656k");
        for (int panels = 0; panels < 2; panels++) {
            struct model_load_opts o = model_load_opts_default();
            o.quantize_bits = cases[i].bits;
            o.quantize_group_size = cases[i].gs;
            o.quantize_into_panels = panels;
            struct model *m = NULL;
            ifd_error err = {{0}};
            cr_assert_eq(model_load(sp, &o, &m, &err), 0, "%s", err.msg);
            cr_assert_eq(m->layers[0].wq.bits, cases[i].bits);
            expect_stable_prefix(m, cases[i].golden, panels ? "quantize on load into panels" : "quantize on load");
            model_destroy(m);
        }
    }
}

/* ---- offline quantizer ------------------------------------------------------- */

static void make_tmpdir(char *buf, size_t n)
{
    snprintf(buf, n, "/tmp/test_quant_XXXXXX");
    cr_assert_not_null(mkdtemp(buf), "mkdtemp: %s", strerror(errno));
}

/* Every tensor of the MLX checkpoint is in ours with the same dtype, shape and
 * bytes, and ours holds nothing else. */
static void expect_same_tensors(const char *ours, const char *mlx)
{
    st_model *a = NULL, *b = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_open(ours, &a, &err), 0, "%s", err.msg);
    cr_assert_eq(st_open(mlx, &b, &err), 0, "%s", err.msg);
    cr_expect_eq(st_count(a), st_count(b), "%zu tensors written, MLX has %zu", st_count(a), st_count(b));
    for (size_t i = 0; i < st_count(b); i++) {
        const struct st_tensor *tb = st_at(b, i), *ta = st_find(a, tb->name);
        cr_assert_not_null(ta, "'%s' missing from the output", tb->name);
        cr_expect_eq(ta->dtype, tb->dtype, "%s: dtype %s, MLX %s", tb->name, ifd_dtype_name(ta->dtype),
                     ifd_dtype_name(tb->dtype));
        cr_assert_eq(ta->n_dims, tb->n_dims, "%s", tb->name);
        for (int d = 0; d < ta->n_dims; d++)
            cr_assert_eq(ta->shape[d], tb->shape[d], "%s: dim %d", tb->name, d);
        cr_expect_eq(memcmp(ta->data, tb->data, (size_t)tb->nbytes), 0, "%s: bytes differ", tb->name);
    }
    st_close(a);
    st_close(b);
}

struct progress_count {
    int calls;
    uint64_t last_done, total;
};

static void count_progress(void *ctx, uint64_t done, uint64_t total, const char *tensor)
{
    struct progress_count *p = ctx;
    cr_expect_geq(done, p->last_done);
    p->calls++;
    p->last_done = done;
    p->total = total;
}

/* inferctl model quantize's engine: from the BF16 (F16) copies it writes the
 * shared MLX files exactly; inferd loads the result and gives the golden
 * tokens; a sharded source gives as many shards and an index. */
static void checkpoint_case(const char *src, const char *mlx, int bits, int gs)
{
    char dir[64], sp[1024], mp[1024];
    make_tmpdir(dir, sizeof(dir));
    model_path(sp, sizeof(sp), src);
    model_path(mp, sizeof(mp), mlx);
    ifd_error err = {{0}};
    struct progress_count pc = {0};
    cr_assert_eq(quant_checkpoint_write(sp, dir, bits, gs, count_progress, &pc, &err), 0, "%s", err.msg);
    cr_expect_gt(pc.calls, 0);
    cr_expect_eq(pc.last_done, pc.total, "progress ends at the total");
    struct model *m = NULL, *ref = NULL;
    struct model_load_opts o = model_load_opts_default();
    cr_assert_eq(model_load(dir, &o, &m, &err), 0, "loading what the quantizer wrote: %s", err.msg);
    cr_assert_eq(model_load(mp, &o, &ref, &err), 0, "%s", err.msg);
    cr_expect_eq(m->cfg.quant.bits, bits);
    cr_expect_eq(m->cfg.quant.group_size, gs);
    compare_models(m, ref, bits, gs);
    expect_stable_prefix(m, mlx, "quantized checkpoint");
    if (strstr(src, "sharded")) {
        char p[1200];
        snprintf(p, sizeof(p), "%s/model.safetensors.index.json", dir);
        cr_expect_eq(access(p, R_OK), 0, "sharded source: no index written");
        snprintf(p, sizeof(p), "%s/model-00003-of-00003.safetensors", dir);
        cr_expect_eq(access(p, R_OK), 0, "sharded source: shard 3 missing");
    } else {
        expect_same_tensors(dir, mp);
    }
    char p[1200];
    snprintf(p, sizeof(p), "%s/tokenizer.json", dir);
    cr_expect_eq(access(p, R_OK), 0, "tokenizer.json not copied");
    model_destroy(m);
    model_destroy(ref);
    tu_remove_tree(dir);
}

Test(quant, checkpoint_4bit_equals_mlx_files, .timeout = 120)
{
    checkpoint_case("tinystories-656k-bf16", "tinystories-656k-mlx-4bit", 4, 64);
}

Test(quant, checkpoint_8bit_equals_mlx_files, .timeout = 120)
{
    checkpoint_case("tinystories-656k-f16", "tinystories-656k-mlx-8bit", 8, 32);
}

Test(quant, checkpoint_sharded_source, .timeout = 120)
{
    checkpoint_case("tinystories-656k-bf16-sharded", "tinystories-656k-mlx-4bit", 4, 64);
}

Test(quant, checkpoint_refusals)
{
    char dir[64], sp[1024];
    make_tmpdir(dir, sizeof(dir));
    ifd_error err = {{0}};
    model_path(sp, sizeof(sp), "tinystories-656k-mlx-4bit");
    cr_expect_lt(quant_checkpoint_write(sp, dir, 4, 64, NULL, NULL, &err), 0);
    cr_expect(strstr(err.msg, "already quantized") != NULL, "%s", err.msg);
    model_path(sp, sizeof(sp), "tinystories-656k");
    cr_expect_lt(quant_checkpoint_write(sp, dir, 5, 64, NULL, NULL, &err), 0);
    cr_expect(strstr(err.msg, "5 bits") != NULL, "%s", err.msg);
    cr_expect_lt(quant_checkpoint_write(sp, sp, 4, 64, NULL, NULL, &err), 0);
    cr_expect(strstr(err.msg, "source") != NULL, "%s", err.msg);
    tu_remove_tree(dir);
}

/* ---- malformed quantized checkpoints ----------------------------------------- */

/* A copy of the 4-bit MLX checkpoint in dir with one change: tensor `drop`
 * left out, tensor `reshape` given shape {r0, r1} (zero data), and config's
 * quantization set to bits/gs. */
static void write_broken(const char *dir, const char *drop, const char *reshape, int64_t r0, int64_t r1,
                         int bits, int gs)
{
    char mp[1024], p[1200];
    model_path(mp, sizeof(mp), "tinystories-656k-mlx-4bit");
    snprintf(p, sizeof(p), "%s/config.json", mp);
    FILE *f = fopen(p, "rb");
    cr_assert_not_null(f);
    char text[8192];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = 0;
    cJSON *cfg = cJSON_Parse(text);
    cr_assert_not_null(cfg);
    const char *keys[] = {"quantization", "quantization_config"};
    for (int i = 0; i < 2; i++) {
        cJSON *q = cJSON_GetObjectItem(cfg, keys[i]);
        cJSON_SetNumberValue(cJSON_GetObjectItem(q, "bits"), bits);
        cJSON_SetNumberValue(cJSON_GetObjectItem(q, "group_size"), gs);
    }
    char *out = cJSON_Print(cfg);
    snprintf(p, sizeof(p), "%s/config.json", dir);
    f = fopen(p, "wb");
    fputs(out, f);
    fclose(f);
    free(out);
    cJSON_Delete(cfg);

    st_model *st = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_open(mp, &st, &err), 0, "%s", err.msg);
    snprintf(p, sizeof(p), "%s/model.safetensors", dir);
    f = fopen(p, "wb");
    cr_assert_not_null(f);
    st_writer *w = NULL;
    cr_assert_eq(st_writer_create(st_write_to_file, f, &w), 0);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            cr_assert_eq(st_writer_begin_data(w, &err), 0, "%s", err.msg);
        for (size_t i = 0; i < st_count(st); i++) {
            const struct st_tensor *t = st_at(st, i);
            if (drop && strcmp(t->name, drop) == 0)
                continue;
            bool re = reshape && strcmp(t->name, reshape) == 0;
            int64_t shape[2] = {re ? r0 : t->shape[0], re ? r1 : (t->n_dims > 1 ? t->shape[1] : 0)};
            if (pass == 0) {
                cr_assert_eq(st_writer_declare(w, t->name, t->dtype, t->n_dims, re ? shape : t->shape, &err),
                             0, "%s", err.msg);
            } else if (re) {
                size_t nb = (size_t)(r0 * r1) * ifd_dtype_size(t->dtype);
                void *z = calloc(1, nb ? nb : 1);
                cr_assert_eq(st_writer_write_data(w, z, nb, &err), 0, "%s", err.msg);
                free(z);
            } else {
                cr_assert_eq(st_writer_write_data(w, t->data, (size_t)t->nbytes, &err), 0, "%s", err.msg);
            }
        }
    }
    cr_assert_eq(st_writer_finish(w, &err), 0, "%s", err.msg);
    st_writer_destroy(w);
    fclose(f);
    st_close(st);
}

/* model_load of the broken copy fails with a message containing `want`. */
static void expect_load_error(const char *drop, const char *reshape, int64_t r0, int64_t r1, int bits, int gs,
                              const char *want)
{
    char dir[64];
    make_tmpdir(dir, sizeof(dir));
    write_broken(dir, drop, reshape, r0, r1, bits, gs);
    struct model *m = NULL;
    ifd_error err = {{0}};
    struct model_load_opts o = model_load_opts_default();
    int r = model_load(dir, &o, &m, &err);
    cr_expect_lt(r, 0, "loaded a checkpoint with drop=%s reshape=%s bits=%d gs=%d", drop ? drop : "-",
                 reshape ? reshape : "-", bits, gs);
    cr_expect(strstr(err.msg, want) != NULL, "error '%s' does not name '%s'", err.msg, want);
    fprintf(stderr, "refused as it should: %s\n", err.msg);
    if (r == 0)
        model_destroy(m);
    tu_remove_tree(dir);
}

Test(quant, malformed_intact_copy_loads)
{
    /* the harness itself: an unmodified copy loads */
    char dir[64];
    make_tmpdir(dir, sizeof(dir));
    write_broken(dir, NULL, NULL, 0, 0, 4, 64);
    struct model *m = NULL;
    ifd_error err = {{0}};
    struct model_load_opts o = model_load_opts_default();
    cr_expect_eq(model_load(dir, &o, &m, &err), 0, "%s", err.msg);
    model_destroy(m);
    tu_remove_tree(dir);
}

Test(quant, malformed_missing_scales)
{
    expect_load_error("model.layers.1.mlp.up_proj.scales", NULL, 0, 0, 4, 64, "model.layers.1.mlp.up_proj.scales");
}

Test(quant, malformed_missing_biases)
{
    expect_load_error("model.embed_tokens.biases", NULL, 0, 0, 4, 64, "model.embed_tokens.biases");
}

Test(quant, malformed_wrong_packed_width)
{
    /* 128 columns at 4 bits are 16 words; 15 is wrong */
    expect_load_error(NULL, "model.layers.0.self_attn.q_proj.weight", 128, 15, 4, 64,
                      "model.layers.0.self_attn.q_proj.weight");
}

Test(quant, malformed_scales_shape)
{
    expect_load_error(NULL, "model.layers.0.mlp.down_proj.scales", 128, 5, 4, 64,
                      "model.layers.0.mlp.down_proj.scales");
}

Test(quant, malformed_group_size_not_dividing_row)
{
    /* 96 is a valid MLX-style group size but does not divide the 128 columns */
    expect_load_error(NULL, NULL, 0, 0, 4, 96, "group size 96");
}

Test(quant, malformed_group_size_unsupported)
{
    expect_load_error(NULL, NULL, 0, 0, 4, 48, "48");
}

Test(quant, malformed_bits_unsupported)
{
    expect_load_error(NULL, NULL, 0, 0, 5, 64, "5");
}

Test(quant, malformed_bits_mismatch_packed_width)
{
    /* config says 8 bits, the file holds 4-bit packing: the widths disagree */
    expect_load_error(NULL, NULL, 0, 0, 8, 64, "model.");
}
