/* test_safetensors.c - the safetensors reader and writers.
 *
 * Real checkpoints come from $INFERD_SHARED/models; malformed ones are written
 * by the tests themselves to temporary files, and every rejection is checked
 * for its error code and for a message naming the file and the tensor. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/test_util.h"
#include "model/safetensors.h"

static const char *shared_models(void)
{
    static char *path; /* kept for the whole test process */
    if (!path)
        path = tu_must_shared_path("models");
    struct stat st;
    cr_assert(stat(path, &st) == 0 && S_ISDIR(st.st_mode), "%s: shared models missing", path);
    return path;
}

static st_model *open_shared(const char *model)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", shared_models(), model);
    st_model *m = NULL;
    ifd_error err = {{0}};
    int r = st_open(path, &m, &err);
    cr_assert(r == 0, "st_open(%s) = %d: %s", path, r, err.msg);
    return m;
}

/* ------------------------------------------------------------ real models */

Test(safetensors, every_shared_model_loads)
{
    DIR *d = opendir(shared_models());
    cr_assert(d);
    int n_models = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        st_model *m = open_shared(de->d_name);
        cr_assert(st_count(m) > 0, "%s: no tensors", de->d_name);
        for (size_t i = 0; i < st_count(m); i++) {
            const struct st_tensor *t = st_at(m, i);
            uint64_t n = 1;
            for (int k = 0; k < t->n_dims; k++)
                n *= (uint64_t)t->shape[k];
            cr_assert_eq(t->n_elements, n, "%s: %s", de->d_name, t->name);
            cr_assert_eq(t->nbytes, n * ifd_dtype_size(t->dtype), "%s: %s", de->d_name, t->name);
            cr_assert_eq(st_find(m, t->name), t, "%s: lookup of %s", de->d_name, t->name);
            /* Touch the last byte: it must lie inside the mapping. */
            if (t->nbytes)
                (void)*(volatile const uint8_t *)((const uint8_t *)t->data + t->nbytes - 1);
        }
        cr_assert_null(st_find(m, "no.such.tensor"));
        st_close(m);
        n_models++;
    }
    closedir(d);
    cr_assert(n_models >= 9, "only %d shared models found", n_models);
}

Test(safetensors, tinystories_f32_shapes_and_values)
{
    st_model *m = open_shared("tinystories-656k");
    cr_assert_eq(st_count(m), 20);
    cr_assert_eq(st_file_count(m), 1);
    cr_assert_str_eq(st_metadata(m, "format"), "pt");

    const struct st_tensor *head = st_find(m, "lm_head.weight");
    cr_assert(head);
    cr_assert_eq(head->dtype, IFD_DTYPE_F32);
    cr_assert_eq(head->n_dims, 2);
    cr_assert_eq(head->shape[0], 2048);
    cr_assert_eq(head->shape[1], 128);
    /* Values read independently with Python's struct module. */
    const float *h = head->data;
    cr_assert_float_eq(h[0], -0.68359375f, 0);
    cr_assert_float_eq(h[1], -0.02587890625f, 0);
    cr_assert_float_eq(h[2], 0.58984375f, 0);

    const struct st_tensor *k = st_find(m, "model.layers.1.self_attn.k_proj.weight");
    cr_assert(k);
    cr_assert_eq(k->shape[0], 64);
    cr_assert_eq(k->shape[1], 128);
    cr_assert_float_eq(((const float *)k->data)[1], 0.4921875f, 0);

    const struct st_tensor *norm = st_find(m, "model.norm.weight");
    cr_assert(norm);
    cr_assert_eq(norm->n_dims, 1);
    cr_assert_eq(norm->shape[0], 128);
    cr_assert_float_eq(((const float *)norm->data)[2], 0.68359375f, 0);
    st_close(m);
}

Test(safetensors, tinystories_alias_resolves)
{
    st_model *m = open_shared("tinystories-656k");
    const struct st_tensor *emb = st_find(m, "model.embed_tokens.weight");
    cr_assert(emb, "alias model.embed_tokens.weight not resolved");
    cr_assert_eq(emb, st_find(m, "lm_head.weight"));
    cr_assert_str_eq(emb->name, "lm_head.weight");
    /* "format" is metadata but not a tensor name: no alias. */
    cr_assert_null(st_find(m, "format"));
    st_close(m);

    /* The bf16 copy records no alias. */
    m = open_shared("tinystories-656k-bf16");
    cr_assert_null(st_find(m, "model.embed_tokens.weight"));
    st_close(m);
}

/* Every F32 weight of tinystories narrows (round to nearest even) to the
 * value stored in the F16 and BF16 copies. */
Test(safetensors, dtype_copies_agree)
{
    st_model *f32 = open_shared("tinystories-656k");
    st_model *f16 = open_shared("tinystories-656k-f16");
    st_model *bf16 = open_shared("tinystories-656k-bf16");
    cr_assert_eq(st_count(f16), st_count(f32));
    cr_assert_eq(st_count(bf16), st_count(f32));
    for (size_t i = 0; i < st_count(f32); i++) {
        const struct st_tensor *a = st_at(f32, i);
        const struct st_tensor *b = st_find(f16, a->name);
        const struct st_tensor *c = st_find(bf16, a->name);
        cr_assert(b && c, "%s missing in a copy", a->name);
        cr_assert_eq(b->dtype, IFD_DTYPE_F16);
        cr_assert_eq(c->dtype, IFD_DTYPE_BF16);
        cr_assert_eq(b->n_elements, a->n_elements);
        cr_assert_eq(c->n_elements, a->n_elements);
        const float *x = a->data;
        const uint16_t *y = b->data, *z = c->data;
        for (uint64_t j = 0; j < a->n_elements; j++) {
            cr_assert_eq(y[j], ifd_f32_to_f16(x[j]), "%s[%llu] f16", a->name, (unsigned long long)j);
            cr_assert_eq(z[j], ifd_f32_to_bf16(x[j]), "%s[%llu] bf16", a->name, (unsigned long long)j);
        }
    }
    st_close(f32);
    st_close(f16);
    st_close(bf16);
}

Test(safetensors, sharded_equals_unsharded)
{
    st_model *one = open_shared("tinystories-656k-bf16");
    st_model *sh = open_shared("tinystories-656k-bf16-sharded");
    cr_assert_eq(st_file_count(sh), 3);
    cr_assert_eq(st_count(sh), st_count(one));
    for (size_t i = 0; i < st_count(one); i++) {
        const struct st_tensor *a = st_at(one, i);
        const struct st_tensor *b = st_find(sh, a->name);
        cr_assert(b, "%s missing from the shards", a->name);
        cr_assert_eq(b->dtype, a->dtype);
        cr_assert_eq(b->n_dims, a->n_dims);
        for (int k = 0; k < a->n_dims; k++)
            cr_assert_eq(b->shape[k], a->shape[k]);
        cr_assert_eq(memcmp(a->data, b->data, a->nbytes), 0, "%s differs", a->name);
        cr_assert(strstr(st_file_path(sh, b->file_index), ".safetensors"));
    }
    /* The shard a tensor lives in is the one the index names. */
    const struct st_tensor *t = st_find(sh, "model.layers.0.self_attn.o_proj.weight");
    cr_assert(strstr(st_file_path(sh, t->file_index), "model-00002-of-00003.safetensors"));
    st_close(one);
    st_close(sh);
}

Test(safetensors, open_by_file_and_index_path)
{
    char path[4096];
    st_model *m = NULL;
    ifd_error err = {{0}};
    snprintf(path, sizeof(path), "%s/tinystories-656k-bf16-sharded/model.safetensors.index.json",
             shared_models());
    cr_assert_eq(st_open(path, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(st_count(m), 20);
    st_close(m);
    snprintf(path, sizeof(path), "%s/tinystories-656k-mlx-4bit/model.safetensors", shared_models());
    cr_assert_eq(st_open(path, &m, &err), 0, "%s", err.msg);
    const struct st_tensor *w = st_find(m, "model.layers.0.mlp.down_proj.weight");
    cr_assert(w);
    cr_assert_eq(w->dtype, IFD_DTYPE_U32);
    cr_assert_eq(w->shape[0], 128);
    cr_assert_eq(w->shape[1], 384 * 4 / 32); /* 4-bit values packed in u32 */
    cr_assert(st_find(m, "model.layers.0.mlp.down_proj.scales"));
    cr_assert(st_find(m, "model.layers.0.mlp.down_proj.biases"));
    st_close(m);
}

Test(safetensors, close_accepts_null)
{
    st_close(NULL);
    st_writer_destroy(NULL);
}

/* ----------------------------------------------------- malformed inputs */

struct tmpfile {
    char path[64];
};

/* Writes bytes to a fresh temporary file. */
static void tmp_write(struct tmpfile *f, const void *data, size_t len)
{
    strcpy(f->path, "/tmp/inferd-st-XXXXXX");
    int fd = mkstemp(f->path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
}

/* A file with the given 8-byte length field, header text and data bytes (zeros). */
static void tmp_st(struct tmpfile *f, uint64_t hlen, const char *header, size_t data_len)
{
    size_t n = strlen(header);
    size_t total = 8 + n + data_len;
    uint8_t *buf = calloc(1, total);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(buf + 8, header, n);
    tmp_write(f, buf, total);
    free(buf);
}

/* Opens a file that must be rejected with `code`, and checks the message
 * names the file and (if given) the tensor and a telling phrase. */
static void expect_reject(const char *header_or_null, uint64_t hlen, size_t data_len, int code,
                          const char *tensor, const char *phrase)
{
    struct tmpfile f;
    tmp_st(&f, hlen, header_or_null, data_len);
    st_model *m = (st_model *)0x1;
    ifd_error err = {{0}};
    int r = st_open(f.path, &m, &err);
    unlink(f.path);
    cr_assert_eq(r, code, "expected %d, got %d: %s", code, r, err.msg);
    cr_assert_eq(m, (st_model *)0x1, "ret written on failure");
    cr_assert(strstr(err.msg, f.path), "message does not name the file: %s", err.msg);
    if (tensor) {
        char quoted[256];
        snprintf(quoted, sizeof(quoted), "'%s'", tensor);
        cr_assert(strstr(err.msg, quoted), "message does not name tensor %s: %s", tensor, err.msg);
    }
    if (phrase)
        cr_assert(strstr(err.msg, phrase), "message lacks '%s': %s", phrase, err.msg);
}

static void reject_header(const char *header, size_t data_len, int code, const char *tensor,
                          const char *phrase)
{
    expect_reject(header, strlen(header), data_len, code, tensor, phrase);
}

Test(safetensors_malformed, truncated_file)
{
    struct tmpfile f;
    tmp_write(&f, "\x10\x00\x00", 3);
    st_model *m = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_open(f.path, &m, &err), -EINVAL);
    cr_assert(strstr(err.msg, f.path) && strstr(err.msg, "truncated"), "%s", err.msg);
    unlink(f.path);
    /* An empty file too. */
    tmp_write(&f, "", 0);
    cr_assert_eq(st_open(f.path, &m, &err), -EINVAL);
    cr_assert(strstr(err.msg, f.path), "%s", err.msg);
    unlink(f.path);
}

Test(safetensors_malformed, header_past_eof)
{
    expect_reject("{}", 1000, 0, -EINVAL, NULL, "past the end");
}

Test(safetensors_malformed, absurd_header_length)
{
    expect_reject("{}", 1ull << 63, 0, -EINVAL, NULL, "exceeds the limit");
    expect_reject("{}", UINT64_MAX, 0, -EINVAL, NULL, "exceeds the limit");
}

Test(safetensors_malformed, bad_json)
{
    reject_header("{\"a\": {\"dtype\": ", 0, -EINVAL, NULL, "not valid JSON");
    reject_header("[1, 2]", 0, -EINVAL, NULL, "not a JSON object");
    reject_header("{} x", 0, -EINVAL, NULL, "trailing bytes");
    /* A NUL inside the declared header length ends nothing: still invalid. */
    expect_reject("{\"a\"", 6, 2, -EINVAL, NULL, "not valid JSON");
}

Test(safetensors_malformed, non_object_entry)
{
    reject_header("{\"w\": 5}", 0, -EINVAL, "w", "not an object");
    reject_header("{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, -EINVAL, "w", "dtype");
    reject_header("{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, -EINVAL, "w", "shape");
    reject_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, -EINVAL, "w", "data_offsets");
    reject_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4, -EINVAL, "w",
                  "data_offsets");
    reject_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, \"4\"]}}", 4,
                  -EINVAL, "w", "data_offsets");
}

Test(safetensors_malformed, unknown_dtype)
{
    reject_header("{\"w\": {\"dtype\": \"F8_E4M3\", \"shape\": [4], \"data_offsets\": [0, 4]}}", 4, -EINVAL,
                  "w", "unknown dtype 'F8_E4M3'");
}

Test(safetensors_malformed, shape_size_mismatch)
{
    reject_header("{\"model.layers.0.mlp.up_proj.weight\": {\"dtype\": \"F32\", \"shape\": [2, 3], "
                  "\"data_offsets\": [0, 20]}}",
                  24, -EINVAL, "model.layers.0.mlp.up_proj.weight",
                  "shape [2, 3] needs 24 bytes but data_offsets span 20");
}

Test(safetensors_malformed, shape_product_overflow)
{
    reject_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 16], "
                  "\"data_offsets\": [0, 0]}}",
                  0, -EOVERFLOW, "w", "overflow");
    /* Elements fit in 64 bits, bytes do not. */
    reject_header("{\"w\": {\"dtype\": \"F64\", \"shape\": [4294967296, 1073741824], "
                  "\"data_offsets\": [0, 0]}}",
                  0, -EOVERFLOW, "w", "overflow");
    reject_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [1, 2, 3, 4, 5, 6, 7, 8, 9], "
                  "\"data_offsets\": [0, 0]}}",
                  0, -EINVAL, "w", "dimensions");
}

Test(safetensors_malformed, negative_or_float_dims)
{
    reject_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4, -EINVAL,
                  "w", "shape dimension 0");
    reject_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 1.5], \"data_offsets\": [0, 12]}}", 12,
                  -EINVAL, "w", "shape dimension 1");
    reject_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [\"2\"], \"data_offsets\": [0, 8]}}", 8,
                  -EINVAL, "w", "shape dimension 0");
    reject_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [1e300], \"data_offsets\": [0, 8]}}", 8,
                  -EINVAL, "w", "shape dimension 0");
}

Test(safetensors_malformed, offsets_out_of_file)
{
    reject_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [256], \"data_offsets\": [0, 1024]}}", 8,
                  -EINVAL, "w", "past the 8 data bytes");
    reject_header("{\"w\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [-1, 0]}}", 8, -EINVAL,
                  "w", "data_offsets");
}

Test(safetensors_malformed, begin_after_end)
{
    reject_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", 16, -EINVAL,
                  "w", "begin 8 > end 4");
}

Test(safetensors_malformed, overlapping_ranges)
{
    reject_header("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                  " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
                  16, -EINVAL, "b", "overlap tensor 'a'");
    /* Listed out of order in the header: still caught (ranges are sorted). */
    reject_header("{\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]},"
                  " \"c\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [20, 24]},"
                  " \"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12]}}",
                  24, -EINVAL, NULL, "overlap");
}

Test(safetensors_malformed, duplicate_and_bad_metadata)
{
    reject_header("{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]},"
                  " \"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}",
                  2, -EINVAL, "a", "twice");
    reject_header("{\"__metadata__\": {\"format\": 1}}", 0, -EINVAL, NULL, "__metadata__");
    reject_header("{\"__metadata__\": [\"x\"]}", 0, -EINVAL, NULL, "__metadata__");
}

Test(safetensors_malformed, valid_edge_cases_accepted)
{
    /* Empty header, a zero-sized tensor, a scalar, a gap between tensors. */
    const char *hdr = "{\"__metadata__\": {\"x\": \"s\"}, \"z\": {\"dtype\": \"F32\", \"shape\": [0, 5], "
                      "\"data_offsets\": [4, 4]}, \"s\": {\"dtype\": \"F32\", \"shape\": [], "
                      "\"data_offsets\": [0, 4]}, \"g\": {\"dtype\": \"U8\", \"shape\": [2], "
                      "\"data_offsets\": [6, 8]}}";
    struct tmpfile f;
    tmp_st(&f, strlen(hdr), hdr, 8);
    st_model *m = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_open(f.path, &m, &err), 0, "%s", err.msg);
    unlink(f.path);
    cr_assert_eq(st_count(m), 3);
    cr_assert_eq(st_find(m, "z")->nbytes, 0);
    cr_assert_eq(st_find(m, "s")->n_dims, 0);
    cr_assert_eq(st_find(m, "s")->n_elements, 1);
    cr_assert_str_eq(st_metadata(m, "x"), "s");
    st_close(m);
}

Test(safetensors_malformed, memory_origin_named)
{
    const char hdr[] = "{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}";
    uint8_t buf[8 + sizeof(hdr) + 8] = {0};
    buf[0] = (uint8_t)(sizeof(hdr) - 1);
    memcpy(buf + 8, hdr, sizeof(hdr) - 1);
    st_model *m = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_open_memory(buf, sizeof(buf) - 1, "subset from master", &m, &err), -EINVAL);
    cr_assert(strstr(err.msg, "subset from master") && strstr(err.msg, "'w'"), "%s", err.msg);
    cr_assert_eq(st_open_memory(NULL, 0, "empty", &m, &err), -EINVAL);
    cr_assert(strstr(err.msg, "empty"), "%s", err.msg);
}

/* ------------------------------------------------------- sharded errors */

struct tmpdir {
    char path[64];
};

static void dir_make(struct tmpdir *d)
{
    strcpy(d->path, "/tmp/inferd-st-dir-XXXXXX");
    cr_assert(mkdtemp(d->path));
}

static void dir_put(const struct tmpdir *d, const char *name, const void *data, size_t len)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", d->path, name);
    FILE *f = fopen(p, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* A tiny valid single-tensor file image. */
static size_t tiny_file(uint8_t *buf, const char *tensor)
{
    char hdr[256];
    int n = snprintf(hdr, sizeof(hdr), "{\"%s\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]}}",
                     tensor);
    memset(buf, 0, 8);
    buf[0] = (uint8_t)n;
    memcpy(buf + 8, hdr, (size_t)n);
    memcpy(buf + 8 + n, "abcd", 4);
    return 8 + (size_t)n + 4;
}

static void expect_dir_reject(const struct tmpdir *d, int code, const char *phrase)
{
    st_model *m = NULL;
    ifd_error err = {{0}};
    int r = st_open(d->path, &m, &err);
    cr_assert_eq(r, code, "expected %d got %d: %s", code, r, err.msg);
    cr_assert(strstr(err.msg, d->path), "message does not name the index: %s", err.msg);
    cr_assert(strstr(err.msg, phrase), "message lacks '%s': %s", phrase, err.msg);
}

Test(safetensors_sharded, missing_shard)
{
    struct tmpdir d;
    dir_make(&d);
    uint8_t buf[512];
    dir_put(&d, "model-00001-of-00002.safetensors", buf, tiny_file(buf, "a"));
    const char *idx = "{\"metadata\": {}, \"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
                      " \"b\": \"model-00002-of-00002.safetensors\"}}";
    dir_put(&d, "model.safetensors.index.json", idx, strlen(idx));
    expect_dir_reject(&d, -ENOENT, "shard 'model-00002-of-00002.safetensors' is missing");
    /* With the shard present the checkpoint opens and both tensors are found. */
    dir_put(&d, "model-00002-of-00002.safetensors", buf, tiny_file(buf, "b"));
    st_model *m = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_open(d.path, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(st_file_count(m), 2);
    cr_assert(st_find(m, "a") && st_find(m, "b"));
    cr_assert_eq(memcmp(st_find(m, "b")->data, "abcd", 4), 0);
    st_close(m);
    tu_remove_tree(d.path);
}

Test(safetensors_sharded, index_malformed)
{
    struct tmpdir d;
    dir_make(&d);
    uint8_t buf[512];
    dir_put(&d, "s1.safetensors", buf, tiny_file(buf, "a"));

    const char *bad_json = "{\"weight_map\": {\"a\": ";
    dir_put(&d, "model.safetensors.index.json", bad_json, strlen(bad_json));
    expect_dir_reject(&d, -EINVAL, "not valid JSON");

    const char *no_map = "{\"metadata\": {}}";
    dir_put(&d, "model.safetensors.index.json", no_map, strlen(no_map));
    expect_dir_reject(&d, -EINVAL, "weight_map");

    const char *not_str = "{\"weight_map\": {\"a\": 3}}";
    dir_put(&d, "model.safetensors.index.json", not_str, strlen(not_str));
    expect_dir_reject(&d, -EINVAL, "'a'");

    const char *escape = "{\"weight_map\": {\"a\": \"../s1.safetensors\"}}";
    dir_put(&d, "model.safetensors.index.json", escape, strlen(escape));
    expect_dir_reject(&d, -EINVAL, "not a plain file name");

    const char *wrong = "{\"weight_map\": {\"a\": \"s1.safetensors\", \"zz\": \"s1.safetensors\"}}";
    dir_put(&d, "model.safetensors.index.json", wrong, strlen(wrong));
    expect_dir_reject(&d, -EINVAL, "tensor 'zz' is listed in shard 's1.safetensors' but not stored there");

    const char *empty = "{\"weight_map\": {}}";
    dir_put(&d, "model.safetensors.index.json", empty, strlen(empty));
    expect_dir_reject(&d, -EINVAL, "empty");

    /* A malformed shard is reported with the shard's own path. */
    dir_put(&d, "s2.safetensors", "\x05\0\0\0\0\0\0\0{bad}", 13);
    const char *two = "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}";
    dir_put(&d, "model.safetensors.index.json", two, strlen(two));
    expect_dir_reject(&d, -EINVAL, "s2.safetensors: header is not valid JSON");

    /* The same tensor in two shards. */
    dir_put(&d, "s2.safetensors", buf, tiny_file(buf, "a"));
    const char *dup = "{\"weight_map\": {\"a\": \"s1.safetensors\", \"x\": \"s2.safetensors\"}}";
    dir_put(&d, "model.safetensors.index.json", dup, strlen(dup));
    expect_dir_reject(&d, -EINVAL, "'a' is stored twice");
    tu_remove_tree(d.path);
}

Test(safetensors_sharded, empty_dir)
{
    struct tmpdir d;
    dir_make(&d);
    expect_dir_reject(&d, -ENOENT, "no model.safetensors");
    tu_remove_tree(d.path);
}

/* --------------------------------------------------- subset and writer */

/* A memory sink that records the largest single write. */
struct sink {
    uint8_t *buf;
    size_t len, cap;
    size_t max_write;
    size_t n_writes;
    int fail_after; /* fail the Nth write (0 = never) */
};

static int sink_write(void *ctx, const void *p, size_t n)
{
    struct sink *s = ctx;
    s->n_writes++;
    if (s->fail_after && (int)s->n_writes >= s->fail_after)
        return -EPIPE;
    if (n > s->max_write)
        s->max_write = n;
    if (s->len + n > s->cap) {
        size_t c = s->cap ? s->cap : 4096;
        while (c < s->len + n)
            c *= 2;
        s->buf = realloc(s->buf, c);
        cr_assert(s->buf);
        s->cap = c;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    return 0;
}

static void check_subset_layer1(const char *model)
{
    st_model *m = open_shared(model);
    const char *names[64];
    size_t n = 0;
    for (size_t i = 0; i < st_count(m); i++)
        if (strncmp(st_at(m, i)->name, "model.layers.1.", 15) == 0)
            names[n++] = st_at(m, i)->name;
    cr_assert_eq(n, 9, "%s: %zu layer-1 tensors", model, n);

    struct sink s = {0};
    uint64_t size = 0;
    ifd_error err = {{0}};
    cr_assert_eq(st_write_subset(m, names, n, sink_write, &s, &size, &err), 0, "%s", err.msg);
    cr_assert_eq(size, s.len);
    cr_assert(s.max_write <= ST_WRITE_CHUNK_BYTES);
    /* The header is padded so the data starts 8-byte aligned. */
    uint64_t hlen = 0;
    memcpy(&hlen, s.buf, 8);
    cr_assert_eq(hlen % 8, 0);

    st_model *sub = NULL;
    cr_assert_eq(st_open_memory(s.buf, s.len, "subset", &sub, &err), 0, "%s", err.msg);
    cr_assert_eq(st_count(sub), n);
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *a = st_find(m, names[i]), *b = st_find(sub, names[i]);
        cr_assert(b, "%s missing from subset", names[i]);
        cr_assert_eq(b->dtype, a->dtype);
        cr_assert_eq(b->n_dims, a->n_dims);
        for (int k = 0; k < a->n_dims; k++)
            cr_assert_eq(b->shape[k], a->shape[k]);
        cr_assert_eq(b->nbytes, a->nbytes);
        cr_assert_eq(memcmp(a->data, b->data, a->nbytes), 0, "%s differs", names[i]);
    }
    st_close(sub);
    free(s.buf);
    st_close(m);
}

Test(safetensors_subset, layer1_single_and_sharded)
{
    check_subset_layer1("tinystories-656k");
    check_subset_layer1("tinystories-656k-bf16-sharded");
}

Test(safetensors_subset, alias_and_duplicates)
{
    st_model *m = open_shared("tinystories-656k");
    const char *names[] = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                           "model.norm.weight"};
    struct sink s = {0};
    ifd_error err = {{0}};
    cr_assert_eq(st_write_subset(m, names, 4, sink_write, &s, NULL, &err), 0, "%s", err.msg);
    st_model *sub = NULL;
    cr_assert_eq(st_open_memory(s.buf, s.len, "subset", &sub, &err), 0, "%s", err.msg);
    /* Stored once, under the canonical name; the alias asked for resolves. */
    cr_assert_eq(st_count(sub), 2);
    const struct st_tensor *emb = st_find(sub, "model.embed_tokens.weight");
    cr_assert(emb);
    cr_assert_str_eq(emb->name, "lm_head.weight");
    cr_assert_eq(memcmp(emb->data, st_find(m, "lm_head.weight")->data, emb->nbytes), 0);
    cr_assert_str_eq(st_metadata(sub, "format"), "pt");
    st_close(sub);
    free(s.buf);

    const char *unknown[] = {"model.norm.weight", "model.layers.7.mlp.up_proj.weight"};
    s = (struct sink){0};
    cr_assert_eq(st_write_subset(m, unknown, 2, sink_write, &s, NULL, &err), -ENOENT);
    cr_assert(strstr(err.msg, "'model.layers.7.mlp.up_proj.weight'"), "%s", err.msg);
    free(s.buf);
    st_close(m);
}

/* A tensor much larger than the chunk bound reaches the sink in bounded pieces. */
Test(safetensors_subset, large_tensor_streams_in_chunks)
{
    st_model *m = open_shared("qwen2-tiny-random");
    const char *names[] = {"model.embed_tokens.weight"};
    const struct st_tensor *t = st_find(m, names[0]);
    cr_assert(t->nbytes > 8ull * ST_WRITE_CHUNK_BYTES);
    struct sink s = {0};
    ifd_error err = {{0}};
    cr_assert_eq(st_write_subset(m, names, 1, sink_write, &s, NULL, &err), 0, "%s", err.msg);
    cr_assert(s.max_write <= ST_WRITE_CHUNK_BYTES, "a write of %zu bytes", s.max_write);
    cr_assert(s.n_writes >= t->nbytes / ST_WRITE_CHUNK_BYTES);
    cr_assert_eq(memcmp(s.buf + s.len - t->nbytes, t->data, t->nbytes), 0);
    free(s.buf);

    /* A failing sink is reported, not ignored. */
    s = (struct sink){.fail_after = 5};
    cr_assert_eq(st_write_subset(m, names, 1, sink_write, &s, NULL, &err), -EPIPE);
    cr_assert(strstr(err.msg, "model.embed_tokens.weight"), "%s", err.msg);
    free(s.buf);
    st_close(m);
}

Test(safetensors_writer, roundtrip_and_size_checks)
{
    struct sink s = {0};
    st_writer *w = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_writer_create(sink_write, &s, &w), 0);
    cr_assert_eq(st_writer_add_metadata(w, "format", "pt"), 0);
    cr_assert_eq(st_writer_add_metadata(w, "format", "pt"), -EEXIST);
    const int64_t s1[] = {2, 3};
    const int64_t s2[] = {5};
    cr_assert_eq(st_writer_declare(w, "a\"quoted\\name", IFD_DTYPE_F32, 2, s1, &err), 0, "%s", err.msg);
    cr_assert_eq(st_writer_declare(w, "b", IFD_DTYPE_BF16, 1, s2, &err), 0, "%s", err.msg);
    const int64_t neg[] = {-2};
    cr_assert_eq(st_writer_declare(w, "c", IFD_DTYPE_F32, 1, neg, &err), -EINVAL);
    cr_assert(strstr(err.msg, "'c'"), "%s", err.msg);
    const int64_t huge[] = {INT64_MAX, INT64_MAX};
    cr_assert_eq(st_writer_declare(w, "h", IFD_DTYPE_F32, 2, huge, &err), -EOVERFLOW);

    float a[6] = {1, 2, 3, 4, 5, 6};
    cr_assert_eq(st_writer_write_data(w, a, sizeof(a), &err), -EINVAL); /* before the header */
    cr_assert_eq(st_writer_begin_data(w, &err), 0, "%s", err.msg);
    cr_assert_eq(st_writer_declare(w, "late", IFD_DTYPE_F32, 1, s2, &err), -EINVAL);
    cr_assert_eq(st_writer_write_data(w, a, sizeof(a), &err), 0);
    uint16_t b[5] = {0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0};
    cr_assert_eq(st_writer_write_data(w, b, 4, &err), 0);
    cr_assert_eq(st_writer_finish(w, &err), -EINVAL); /* 6 bytes still owed */
    cr_assert(strstr(err.msg, "28 of 34"), "%s", err.msg);
    cr_assert_eq(st_writer_write_data(w, (uint8_t *)b + 4, 8, &err), -EINVAL); /* 2 too many */
    cr_assert_eq(st_writer_write_data(w, (uint8_t *)b + 4, 6, &err), 0);
    cr_assert_eq(st_writer_finish(w, &err), 0, "%s", err.msg);
    st_writer_destroy(w);

    st_model *m = NULL;
    cr_assert_eq(st_open_memory(s.buf, s.len, "written", &m, &err), 0, "%s", err.msg);
    const struct st_tensor *ta = st_find(m, "a\"quoted\\name");
    cr_assert(ta);
    cr_assert_eq(ta->shape[1], 3);
    cr_assert_eq(memcmp(ta->data, a, sizeof(a)), 0);
    const struct st_tensor *tb = st_find(m, "b");
    cr_assert_eq(tb->dtype, IFD_DTYPE_BF16);
    cr_assert_eq(memcmp(tb->data, b, sizeof(b)), 0);
    cr_assert_str_eq(st_metadata(m, "format"), "pt");
    st_close(m);
    free(s.buf);
}

/* An image of three F32 tensors, "head" (3 floats), "big" (3 pages of
 * floats, i / 7) and "tail" (5 floats), written into an anonymous mapping
 * and opened with st_open_image(), which takes the mapping over. */
static st_model *open_anonymous_image(void)
{
    struct sink s = {0};
    st_writer *w = NULL;
    ifd_error err = {{0}};
    const int64_t n_big = 3 * 4096 / 4, n_head = 3, n_tail = 5;
    cr_assert_eq(st_writer_create(sink_write, &s, &w), 0);
    cr_assert_eq(st_writer_declare(w, "head", IFD_DTYPE_F32, 1, &n_head, &err), 0, "%s", err.msg);
    cr_assert_eq(st_writer_declare(w, "big", IFD_DTYPE_F32, 1, &n_big, &err), 0, "%s", err.msg);
    cr_assert_eq(st_writer_declare(w, "tail", IFD_DTYPE_F32, 1, &n_tail, &err), 0, "%s", err.msg);
    cr_assert_eq(st_writer_begin_data(w, &err), 0, "%s", err.msg);
    for (int64_t i = 0; i < n_head + n_big + n_tail; i++) {
        const float v = (float)i / 7.0f;
        cr_assert_eq(st_writer_write_data(w, &v, sizeof(v), &err), 0, "%s", err.msg);
    }
    cr_assert_eq(st_writer_finish(w, &err), 0, "%s", err.msg);
    st_writer_destroy(w);
    void *img = mmap(NULL, s.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(img, MAP_FAILED);
    memcpy(img, s.buf, s.len);
    free(s.buf);
    st_model *m = NULL;
    cr_assert_eq(st_open_image(img, s.len, "anonymous image", &m, &err), 0, "%s", err.msg);
    return m;
}

/* A worker's image (st_open_image()): its tensors are in a mapping whose
 * pages can be given back; what is given back of one tensor leaves its
 * neighbours, which share its first and last pages, whole. */
Test(safetensors, image_pages_given_back)
{
    st_model *m = open_anonymous_image();
    const struct st_tensor *head = st_find(m, "head"), *big = st_find(m, "big"), *tail = st_find(m, "tail");
    cr_assert(head && big && tail);
    cr_assert(st_in_mapping(m, big->data, big->nbytes));
    cr_assert(!st_in_mapping(m, big->data, big->nbytes + (1 << 20)), "a range past the image's end");
    st_release_pages(m, big->data, big->nbytes);
    const float *h = head->data, *t = tail->data, *b = big->data;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(h[i], (float)i / 7.0f);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(t[i], (float)(3 + 3 * 1024 + i) / 7.0f);
    /* the first floats of "big" share the header's page, which is kept */
    cr_assert_eq(b[0], 3.0f / 7.0f);
    st_close(m);

    /* a buffer of st_open_memory() is the caller's: never given back */
    struct sink s = {0};
    st_writer *w = NULL;
    ifd_error err = {{0}};
    const int64_t n = 4096;
    cr_assert_eq(st_writer_create(sink_write, &s, &w), 0);
    cr_assert_eq(st_writer_declare(w, "x", IFD_DTYPE_F32, 1, &n, &err), 0, "%s", err.msg);
    cr_assert_eq(st_writer_begin_data(w, &err), 0, "%s", err.msg);
    float zeros[4096] = {0};
    cr_assert_eq(st_writer_write_data(w, zeros, sizeof(zeros), &err), 0, "%s", err.msg);
    cr_assert_eq(st_writer_finish(w, &err), 0, "%s", err.msg);
    st_writer_destroy(w);
    cr_assert_eq(st_open_memory(s.buf, s.len, "buffer", &m, &err), 0, "%s", err.msg);
    const struct st_tensor *x = st_find(m, "x");
    cr_assert(!st_in_mapping(m, x->data, x->nbytes));
    st_close(m);
    free(s.buf);
}

/* What was given back of an image is no longer readable: a read faults
 * instead of returning the zeros an anonymous page would come back as.
 * Probed with write() into a pipe, which gets EFAULT where a read by this
 * process would be a SIGSEGV (under ASan too, which turns that into an
 * abort). */
Test(safetensors, image_pages_given_back_are_not_readable)
{
    st_model *m = open_anonymous_image();
    const struct st_tensor *big = st_find(m, "big");
    cr_assert(big);
    const float *b = big->data;
    cr_assert_eq(tu_probe_read(b + 2048, sizeof(float)), 0, "readable before");
    st_release_pages(m, big->data, big->nbytes);
    cr_assert_eq(tu_probe_read(b + 2048, sizeof(float)), -EFAULT, "the second page of 'big' is still readable");
    cr_assert_eq(tu_probe_read(b, sizeof(float)), 0, "the page shared with the header");
    st_close(m);
}

/* st_open_image() takes the mapping over even when the image is refused. */
Test(safetensors, image_refused_is_unmapped)
{
    const size_t len = 4096;
    void *img = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(img, MAP_FAILED);
    memset(img, 0xff, len);
    st_model *m = NULL;
    ifd_error err = {{0}};
    cr_assert_lt(st_open_image(img, len, "garbage", &m, &err), 0);
    cr_assert(strstr(err.msg, "garbage"), "%s", err.msg);
    /* unmapped: mincore() on it fails with ENOMEM */
    unsigned char vec[1];
    cr_assert_eq(mincore(img, len, vec), -1);
    cr_assert_eq(errno, ENOMEM);
}

Test(safetensors_writer, duplicate_names_refused)
{
    struct sink s = {0};
    st_writer *w = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_writer_create(sink_write, &s, &w), 0);
    const int64_t sh[] = {1};
    cr_assert_eq(st_writer_declare(w, "x", IFD_DTYPE_U8, 1, sh, &err), 0);
    cr_assert_eq(st_writer_declare(w, "y", IFD_DTYPE_U8, 1, sh, &err), 0);
    cr_assert_eq(st_writer_declare(w, "x", IFD_DTYPE_U8, 1, sh, &err), 0);
    cr_assert_eq(st_writer_begin_data(w, &err), -EINVAL);
    cr_assert(strstr(err.msg, "'x'"), "%s", err.msg);
    cr_assert_eq(s.len, 0, "nothing written for a bad header");
    st_writer_destroy(w);
    free(s.buf);
}

/* A subset is written widest dtype first, so every tensor is aligned to its
 * element size even when the tensors asked for come in an unaligned order. */
Test(safetensors_subset, aligned_by_element_size)
{
    struct sink src = {0};
    st_writer *w = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_writer_create(sink_write, &src, &w), 0);
    const int64_t s3[] = {3}, s2[] = {2}, s1[] = {1};
    cr_assert_eq(st_writer_declare(w, "odd_bf16", IFD_DTYPE_BF16, 1, s3, &err), 0);
    cr_assert_eq(st_writer_declare(w, "f32", IFD_DTYPE_F32, 1, s2, &err), 0);
    cr_assert_eq(st_writer_declare(w, "u8", IFD_DTYPE_U8, 1, s1, &err), 0);
    cr_assert_eq(st_writer_declare(w, "f64", IFD_DTYPE_F64, 1, s1, &err), 0);
    cr_assert_eq(st_writer_begin_data(w, &err), 0, "%s", err.msg);
    const uint8_t bytes[6 + 8 + 1 + 8] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23};
    cr_assert_eq(st_writer_write_data(w, bytes, sizeof(bytes), &err), 0, "%s", err.msg);
    cr_assert_eq(st_writer_finish(w, &err), 0, "%s", err.msg);
    st_writer_destroy(w);

    st_model *m = NULL;
    cr_assert_eq(st_open_memory(src.buf, src.len, "source", &m, &err), 0, "%s", err.msg);
    /* The source itself is unaligned: f32 starts 6 bytes into the data. */
    cr_assert_neq((uintptr_t)st_find(m, "f32")->data % 4, 0);

    const char *names[] = {"u8", "odd_bf16", "f32", "f64"};
    struct sink s = {0};
    cr_assert_eq(st_write_subset(m, names, 4, sink_write, &s, NULL, &err), 0, "%s", err.msg);
    st_model *sub = NULL;
    cr_assert_eq(st_open_memory(s.buf, s.len, "subset", &sub, &err), 0, "%s", err.msg);
    for (size_t i = 0; i < 4; i++) {
        const struct st_tensor *a = st_find(m, names[i]), *b = st_find(sub, names[i]);
        cr_assert(b);
        cr_assert_eq((uintptr_t)b->data % ifd_dtype_size(b->dtype), 0, "%s unaligned", names[i]);
        cr_assert_eq(memcmp(a->data, b->data, a->nbytes), 0, "%s differs", names[i]);
    }
    /* Widest first, then in the order asked. */
    cr_assert_str_eq(st_at(sub, 0)->name, "f64");
    cr_assert_str_eq(st_at(sub, 1)->name, "f32");
    cr_assert_str_eq(st_at(sub, 2)->name, "odd_bf16");
    cr_assert_str_eq(st_at(sub, 3)->name, "u8");
    st_close(sub);
    st_close(m);
    free(s.buf);
    free(src.buf);
}

/* Random corruption of a real file's header, 3000 times with a fixed seed:
 * every image either fails with a message or opens with every tensor inside
 * the buffer and no two overlapping. Run under ASan this is a small fuzzer. */
static uint64_t mut_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int ptr_cmp(const void *a, const void *b)
{
    const struct st_tensor *x = *(const struct st_tensor *const *)a, *y = *(const struct st_tensor *const *)b;
    return (uintptr_t)x->data < (uintptr_t)y->data ? -1 : (uintptr_t)x->data > (uintptr_t)y->data;
}

Test(safetensors_malformed, header_mutations)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/tinystories-656k-bf16-sharded/model-00003-of-00003.safetensors",
             shared_models());
    FILE *f = fopen(path, "rb");
    cr_assert(f);
    uint8_t *orig = malloc(1 << 20);
    size_t len = fread(orig, 1, 1 << 20, f);
    fclose(f);
    uint64_t hlen = 0;
    memcpy(&hlen, orig, 8);
    cr_assert(hlen > 0 && hlen < len);
    static const char tokens[] = "{}[],:\"0123456789-.e \\";
    uint8_t *buf = malloc(len);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int opened = 0, rejected = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, orig, len);
        int n_mut = 1 + (int)(mut_rand(&seed) % 4);
        for (int k = 0; k < n_mut; k++) {
            uint64_t r = mut_rand(&seed);
            size_t pos = 8 + (size_t)(r % hlen);
            switch ((r >> 32) % 4) {
            case 0: /* a JSON-significant character */
                buf[pos] = (uint8_t)tokens[(r >> 40) % (sizeof(tokens) - 1)];
                break;
            case 1: /* any byte */
                buf[pos] = (uint8_t)(r >> 40);
                break;
            case 2: /* a digit, to move offsets and dims */
                buf[pos] = (uint8_t)('0' + (r >> 40) % 10);
                break;
            default: /* the length field */
                buf[(r >> 40) % 8] = (uint8_t)(r >> 48);
                break;
            }
        }
        st_model *m = NULL;
        ifd_error err = {{0}};
        int rc = st_open_memory(buf, len, "mutant", &m, &err);
        if (rc < 0) {
            cr_assert(strstr(err.msg, "mutant"), "iteration %d: %s", it, err.msg);
            rejected++;
            continue;
        }
        opened++;
        size_t n = st_count(m);
        const struct st_tensor **v = calloc(n ? n : 1, sizeof(*v));
        for (size_t i = 0; i < n; i++) {
            const struct st_tensor *t = st_at(m, i);
            cr_assert((const uint8_t *)t->data >= buf && (const uint8_t *)t->data + t->nbytes <= buf + len,
                      "iteration %d: %s outside the buffer", it, t->name);
            cr_assert_eq(st_find(m, t->name), t);
            v[i] = t;
        }
        qsort(v, n, sizeof(*v), ptr_cmp);
        for (size_t i = 1; i < n; i++)
            cr_assert((const uint8_t *)v[i - 1]->data + v[i - 1]->nbytes <= (const uint8_t *)v[i]->data ||
                          v[i]->nbytes == 0 || v[i - 1]->nbytes == 0,
                      "iteration %d: %s overlaps %s", it, v[i - 1]->name, v[i]->name);
        free(v);
        st_close(m);
    }
    cr_assert(rejected > 0 && opened > 0, "opened %d, rejected %d: mutations too weak or too strong", opened,
              rejected);
    free(buf);
    free(orig);
}
