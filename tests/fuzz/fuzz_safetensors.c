/* fuzz_safetensors.c - st_open_memory() on arbitrary bytes.
 *
 * Beyond "no crash": a refused image must come with a message; an accepted
 * one must expose only tensors whose bytes lie inside the image and whose
 * size matches dtype x shape, st_find() must find each by name, and
 * st_write_subset() of all its tensors must produce an image that opens again
 * with the same tensors, byte for byte. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "model/safetensors.h"

#define SUBSET_MAX_TENSORS 64
#define SUBSET_MAX_BYTES (8u << 20)

struct membuf {
    uint8_t *p;
    size_t len, cap, limit;
};

static int membuf_write(void *ctx, const void *buf, size_t len)
{
    struct membuf *b = ctx;
    if (len > b->limit - b->len)
        return -EFBIG;
    if (b->len + len > b->cap) {
        size_t ncap = b->cap ? b->cap : 4096;
        while (ncap < b->len + len)
            ncap *= 2;
        uint8_t *np = realloc(b->p, ncap);
        if (!np)
            return -ENOMEM;
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, buf, len);
    b->len += len;
    return 0;
}

static void check_tensors(const st_model *m, const uint8_t *base, size_t len)
{
    for (size_t i = 0; i < st_count(m); i++) {
        const struct st_tensor *t = st_at(m, i);
        if (!t || !t->name)
            abort();
        uint64_t n = 1;
        for (int d = 0; d < t->n_dims; d++)
            n *= (uint64_t)t->shape[d];
        if (t->n_dims < 0 || t->n_dims > ST_MAX_DIMS || n != t->n_elements ||
            t->nbytes != n * ifd_dtype_size(t->dtype))
            abort();
        const uint8_t *p = t->data;
        if (t->nbytes && (p < base || p > base + len || t->nbytes > (uint64_t)(base + len - p)))
            abort();
        if (t->nbytes)
            fuzz_use(p[0] + p[t->nbytes - 1]);
        if (st_find(m, t->name) != t)
            abort();
    }
    fuzz_use((uintptr_t)st_metadata(m, "format"));
    fuzz_use((uintptr_t)st_find(m, "model.embed_tokens.weight"));
}

/* Writes every tensor (by name) into a new image and reopens it. */
static void check_round_trip(const st_model *m)
{
    size_t n = st_count(m);
    if (n == 0 || n > SUBSET_MAX_TENSORS)
        return;
    uint64_t total = 0;
    const char *names[SUBSET_MAX_TENSORS];
    for (size_t i = 0; i < n; i++) {
        names[i] = st_at(m, i)->name;
        total += st_at(m, i)->nbytes;
        /* The reader accepts a tensor named "" (as the reference does); the
         * writer refuses to create one. No model asks for that name, so it
         * never reaches a subset: leave such images out of this check. */
        if (!names[i][0])
            return;
    }
    if (total > SUBSET_MAX_BYTES / 2)
        return;
    struct membuf out = {.limit = SUBSET_MAX_BYTES};
    ifd_error err = {{0}};
    uint64_t written = 0;
    int r = st_write_subset(m, names, n, membuf_write, &out, &written, &err);
    if (r < 0) {
        /* Writing back what was just accepted must work: the writer is
         * stricter than the reader only where names are concerned. */
        fprintf(stderr, "fuzz_safetensors: subset of an accepted image failed: %s\n", err.msg);
        abort();
    }
    if (written != out.len)
        abort();
    st_model *m2 = NULL;
    r = st_open_memory(out.p, out.len, "fuzz-subset", &m2, &err);
    if (r < 0) {
        fprintf(stderr, "fuzz_safetensors: subset image does not reopen: %s\n", err.msg);
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *a = st_at(m, i), *b = st_find(m2, a->name);
        if (!b || b->dtype != a->dtype || b->n_dims != a->n_dims || b->nbytes != a->nbytes ||
            memcmp(b->shape, a->shape, sizeof(a->shape[0]) * (size_t)a->n_dims) != 0 ||
            (a->nbytes && memcmp(a->data, b->data, a->nbytes) != 0)) {
            fprintf(stderr, "fuzz_safetensors: tensor '%s' differs after the round trip\n", a->name);
            abort();
        }
    }
    st_close(m2);
    free(out.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_model *m = NULL;
    ifd_error err = {{0}};
    int r = st_open_memory(data, size, "fuzz", &m, &err);
    if (r < 0) {
        if (!err.msg[0] || m)
            abort(); /* refused without saying why, or wrote *ret */
        return 0;
    }
    check_tensors(m, data, size);
    check_round_trip(m);
    st_close(m);
    return 0;
}

/* ---- seeds: small images made by the project's own writer ---- */

static void add_image(fuzz_seed_fn add, void *ctx, const char *name, bool alias, bool many_dtypes)
{
    struct membuf out = {.limit = 1u << 20};
    st_writer *w = NULL;
    ifd_error err;
    if (st_writer_create(membuf_write, &out, &w) < 0)
        return;
    static const float f32[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
    static const uint16_t h16[4] = {0x3c00, 0xc000, 0x7bff, 0x0001};
    static const uint8_t u8[3] = {1, 2, 3};
    int64_t s23[2] = {2, 3}, s4[1] = {4}, s3[1] = {3};
    st_writer_add_metadata(w, "format", "pt");
    if (alias)
        st_writer_add_metadata(w, "model.embed_tokens.weight", "lm_head.weight");
    int r = st_writer_declare(w, "lm_head.weight", IFD_DTYPE_F32, 2, s23, &err);
    if (r == 0 && many_dtypes)
        r = st_writer_declare(w, "model.norm.weight", IFD_DTYPE_BF16, 1, s4, &err);
    if (r == 0 && many_dtypes)
        r = st_writer_declare(w, "model.layers.0.mlp.scales", IFD_DTYPE_F16, 1, s4, &err);
    if (r == 0 && many_dtypes)
        r = st_writer_declare(w, "flags", IFD_DTYPE_U8, 1, s3, &err);
    if (r == 0)
        r = st_writer_begin_data(w, &err);
    if (r == 0)
        r = st_writer_write_data(w, f32, sizeof(f32), &err);
    if (r == 0 && many_dtypes) {
        r = st_writer_write_data(w, h16, sizeof(h16), &err);
        if (r == 0)
            r = st_writer_write_data(w, h16, sizeof(h16), &err);
        if (r == 0)
            r = st_writer_write_data(w, u8, sizeof(u8), &err);
    }
    if (r == 0)
        r = st_writer_finish(w, &err);
    if (r == 0)
        add(ctx, name, out.p, out.len);
    else
        fprintf(stderr, "fuzz_safetensors: seed %s: %s\n", name, err.msg);
    st_writer_destroy(w);
    free(out.p);
}

void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    add_image(add, ctx, "built-one-f32", false, false);
    add_image(add, ctx, "built-alias", true, false);
    add_image(add, ctx, "built-dtypes", true, true);
}
