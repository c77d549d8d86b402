/* quant_checkpoint.c - the offline MLX quantizer (see quant_checkpoint.h). */
#include "model/quant_checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/dtype.h"
#include "model/model.h"
#include "model/model_config.h"
#include "model/quant.h"
#include "model/safetensors.h"
#include "base/file.h"

/* config.json is small; a bigger one is not a model config. */
#define QC_MAX_CONFIG_BYTES (4u << 20)
#define QC_MAX_NAME 1024

/* What becomes of one stored source tensor. */
struct qc_item {
    const struct st_tensor *t;
    char name[QC_MAX_NAME]; /* output name of the weight ("<module>.weight") */
    bool quantize;
};

static int copy_file(const char *from, const char *to, ifd_error *err)
{
    FILE *in = fopen(from, "rb");
    if (!in)
        return ifd_error_set(err, -errno, "cannot open '%s': %s", from, strerror(errno));
    FILE *out = fopen(to, "wb");
    if (!out) {
        int e = errno;
        fclose(in);
        return ifd_error_set(err, -e, "cannot create '%s': %s", to, strerror(e));
    }
    char buf[65536];
    size_t n;
    int r = 0;
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        if (fwrite(buf, 1, n, out) != n) {
            r = ifd_error_set(err, -EIO, "writing '%s' failed", to);
            break;
        }
    if (r == 0 && ferror(in))
        r = ifd_error_set(err, -EIO, "reading '%s' failed", from);
    fclose(in);
    if (fclose(out) != 0 && r == 0)
        r = ifd_error_set(err, -EIO, "writing '%s' failed", to);
    return r;
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

/* Tokenizer, generation config, chat template: everything a server needs
 * beside the weights and config.json. */
static int copy_side_files(const char *src, const char *dst, ifd_error *err)
{
    DIR *d = opendir(src);
    if (!d)
        return ifd_error_set(err, -errno, "cannot list '%s': %s", src, strerror(errno));
    int r = 0;
    struct dirent *e;
    while (r == 0 && (e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (n[0] == '.' || strcmp(n, "config.json") == 0 || strcmp(n, "model.safetensors.index.json") == 0)
            continue;
        if (!(has_suffix(n, ".json") || has_suffix(n, ".jinja") || has_suffix(n, ".model") ||
              has_suffix(n, ".tiktoken") || strcmp(n, "merges.txt") == 0 || strcmp(n, "vocab.txt") == 0))
            continue;
        char from[PATH_MAX], to[PATH_MAX];
        if (snprintf(from, sizeof(from), "%s/%s", src, n) >= (int)sizeof(from) ||
            snprintf(to, sizeof(to), "%s/%s", dst, n) >= (int)sizeof(to)) {
            r = ifd_error_set(err, -ENAMETOOLONG, "path of '%s' too long", n);
            break;
        }
        r = copy_file(from, to, err);
    }
    closedir(d);
    return r;
}

/* config.json of the source plus the quantization keys MLX writes. */
static int write_config(const char *src, const char *dst, int bits, int gs, ifd_error *err)
{
    char path[PATH_MAX], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/config.json", src);
    int r = file_read(path, QC_MAX_CONFIG_BYTES, 0, &text, &len, err);
    if (r < 0)
        return r;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ifd_error_set(err, -EINVAL, "'%s': not a JSON object", path);
    }
    const char *keys[] = {"quantization", "quantization_config"};
    for (int i = 0; i < 2; i++) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, keys[i]);
        cJSON *q = cJSON_CreateObject();
        if (!q || !cJSON_AddNumberToObject(q, "group_size", gs) || !cJSON_AddNumberToObject(q, "bits", bits) ||
            !cJSON_AddItemToObject(root, keys[i], q)) {
            cJSON_Delete(q);
            cJSON_Delete(root);
            return ifd_error_set(err, -ENOMEM, "out of memory writing config.json");
        }
    }
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    if (!out)
        return ifd_error_set(err, -ENOMEM, "out of memory writing config.json");
    snprintf(path, sizeof(path), "%s/config.json", dst);
    FILE *f = fopen(path, "wb");
    if (!f) {
        int e = errno;
        free(out);
        return ifd_error_set(err, -e, "cannot create '%s': %s", path, strerror(e));
    }
    size_t n = strlen(out);
    bool ok = fwrite(out, 1, n, f) == n && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    free(out);
    return ok ? 0 : ifd_error_set(err, -EIO, "writing '%s' failed", path);
}

/* Decides the output of every stored tensor: quantize 2-D float weights whose
 * rows split into whole groups; a tied head stored alone becomes the
 * embedding, a tied head stored beside the embedding is dropped. */
static int plan_items(const st_model *st, const struct model_config *cfg, int gs, struct qc_item *items,
                      size_t *ret_n, ifd_error *err)
{
    const struct st_tensor *embed = st_find(st, "model.embed_tokens.weight");
    size_t n = 0;
    for (size_t i = 0; i < st_count(st); i++) {
        const struct st_tensor *t = st_at(st, i);
        struct qc_item *it = &items[n];
        it->t = t;
        if (snprintf(it->name, sizeof(it->name), "%s", t->name) >= (int)sizeof(it->name))
            return ifd_error_set(err, -ENAMETOOLONG, "tensor name '%.64s...' too long", t->name);
        if (cfg->tie_word_embeddings && strcmp(t->name, "lm_head.weight") == 0) {
            if (embed && embed->data != t->data)
                continue; /* the head is the embedding: stored once, as MLX does */
            snprintf(it->name, sizeof(it->name), "model.embed_tokens.weight");
        }
        if (t->dtype == IFD_DTYPE_U32)
            return ifd_error_set(err, -EINVAL, "tensor '%s' is U32: the source is already quantized", t->name);
        it->quantize = ifd_dtype_is_float(t->dtype) && t->n_dims == 2 && has_suffix(it->name, ".weight") &&
                       t->shape[1] % gs == 0 && t->shape[0] > 0;
        n++;
    }
    *ret_n = n;
    return 0;
}

static int write_tensor_data(st_writer *w, const struct qc_item *it, int bits, int gs, ifd_error *err)
{
    const struct st_tensor *t = it->t;
    if (!it->quantize)
        return st_writer_write_data(w, t->data, (size_t)t->nbytes, err);
    struct ifd_weight src = {.dtype = t->dtype, .data = t->data, .rows = t->shape[0], .cols = t->shape[1]};
    struct ifd_weight q;
    void *owned;
    int r = quant_weight_quantize(&src, bits, gs, &q, &owned, err);
    if (r < 0) {
        ifd_error_prefix(err, "tensor '%s'", t->name);
        return r;
    }
    size_t wbytes = (size_t)(q.rows * q.cols * bits / 8);
    size_t pbytes = (size_t)(q.rows * (q.cols / gs)) * ifd_dtype_size(q.qparam_dtype);
    if ((r = st_writer_write_data(w, q.data, wbytes, err)) >= 0 &&
        (r = st_writer_write_data(w, q.scales, pbytes, err)) >= 0)
        r = st_writer_write_data(w, q.biases, pbytes, err);
    free(owned);
    return r;
}

static int declare_item(st_writer *w, const struct qc_item *it, int bits, int gs, ifd_error *err)
{
    const struct st_tensor *t = it->t;
    if (!it->quantize)
        return st_writer_declare(w, it->name, t->dtype, t->n_dims, t->shape, err);
    char stem[QC_MAX_NAME], name[QC_MAX_NAME + 8];
    snprintf(stem, sizeof(stem), "%.*s", (int)(strlen(it->name) - strlen(".weight")), it->name);
    int64_t wshape[2] = {t->shape[0], t->shape[1] * bits / 32};
    int64_t pshape[2] = {t->shape[0], t->shape[1] / gs};
    int r = st_writer_declare(w, it->name, IFD_DTYPE_U32, 2, wshape, err);
    snprintf(name, sizeof(name), "%s.scales", stem);
    if (r >= 0)
        r = st_writer_declare(w, name, t->dtype, 2, pshape, err);
    snprintf(name, sizeof(name), "%s.biases", stem);
    if (r >= 0)
        r = st_writer_declare(w, name, t->dtype, 2, pshape, err);
    return r;
}

/* One output file holding the items of source file `fi`. */
static int write_shard(const char *path, const struct qc_item *items, size_t n, int fi, int bits, int gs,
                       quant_progress_fn progress, void *pctx, uint64_t *done, uint64_t total, ifd_error *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return ifd_error_set(err, -errno, "cannot create '%s': %s", path, strerror(errno));
    st_writer *w = NULL;
    int r = st_writer_create(st_write_to_file, f, &w);
    if (r < 0) {
        fclose(f);
        return ifd_error_set(err, r, "out of memory");
    }
    if ((r = st_writer_add_metadata(w, "format", "mlx")) < 0)
        ifd_error_set(err, r, "out of memory");
    for (size_t i = 0; r >= 0 && i < n; i++)
        if (items[i].t->file_index == fi)
            r = declare_item(w, &items[i], bits, gs, err);
    if (r >= 0)
        r = st_writer_begin_data(w, err);
    for (size_t i = 0; r >= 0 && i < n; i++) {
        if (items[i].t->file_index != fi)
            continue;
        r = write_tensor_data(w, &items[i], bits, gs, err);
        *done += items[i].t->nbytes;
        if (r >= 0 && progress)
            progress(pctx, *done, total, items[i].name);
    }
    if (r >= 0)
        r = st_writer_finish(w, err);
    st_writer_destroy(w);
    if (fclose(f) != 0 && r >= 0)
        r = ifd_error_set(err, -EIO, "writing '%s' failed", path);
    if (r < 0)
        ifd_error_prefix(err, "%s", path);
    return r;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* model.safetensors.index.json for a sharded output. */
static int write_index(const char *dst, const st_model *st, const struct qc_item *items, size_t n, int bits,
                       int gs, ifd_error *err)
{
    cJSON *root = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(root, "metadata");
    cJSON *map = cJSON_AddObjectToObject(root, "weight_map");
    if (!root || !meta || !map)
        goto oom;
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *t = items[i].t;
        const char *file = base_name(st_file_path(st, t->file_index));
        if (!items[i].quantize) {
            total += (double)t->nbytes;
            if (!cJSON_AddStringToObject(map, items[i].name, file))
                goto oom;
            continue;
        }
        char stem[QC_MAX_NAME], name[QC_MAX_NAME + 8];
        snprintf(stem, sizeof(stem), "%.*s", (int)(strlen(items[i].name) - 7), items[i].name);
        total += (double)t->shape[0] * (double)t->shape[1] * bits / 8 +
                 2.0 * (double)t->shape[0] * (double)(t->shape[1] / gs) * (double)ifd_dtype_size(t->dtype);
        const char *suf[] = {"weight", "scales", "biases"};
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof(name), "%s.%s", stem, suf[k]);
            if (!cJSON_AddStringToObject(map, name, file))
                goto oom;
        }
    }
    if (!cJSON_AddNumberToObject(meta, "total_size", total))
        goto oom;
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text)
        return ifd_error_set(err, -ENOMEM, "out of memory writing the index");
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dst);
    FILE *f = fopen(path, "wb");
    if (!f) {
        int e = errno;
        free(text);
        return ifd_error_set(err, -e, "cannot create '%s': %s", path, strerror(e));
    }
    size_t len = strlen(text);
    bool ok = fwrite(text, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    free(text);
    return ok ? 0 : ifd_error_set(err, -EIO, "writing '%s' failed", path);
oom:
    cJSON_Delete(root);
    return ifd_error_set(err, -ENOMEM, "out of memory writing the index");
}

/* Removes a destination directory this call created, with what it wrote
 * into it: a failed quantization leaves nothing behind. */
static void remove_created_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            char path[PATH_MAX];
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            if (snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) < (int)sizeof(path))
                (void)unlink(path);
        }
        closedir(d);
    }
    (void)rmdir(dir);
}

int quant_checkpoint_write(const char *src_dir, const char *dst_dir, int bits, int group_size,
                           quant_progress_fn progress, void *progress_ctx, ifd_error *err)
{
    const int gs = group_size ? group_size : QUANT_DEFAULT_GROUP_SIZE;
    if (!quant_layout_supported(bits, gs))
        return ifd_error_set(err, -EINVAL,
                             "%d bits with group size %d is not supported (bits 2, 3, 4, 6 or 8; "
                             "group size a multiple of 32 up to %d)",
                             bits, gs, QUANT_MAX_GROUP_SIZE);
    /* Everything about the source is checked before the destination is made. */
    char rs[PATH_MAX], rd[PATH_MAX];
    if (!realpath(src_dir, rs))
        return ifd_error_set(err, -errno, "'%s': %s", src_dir, strerror(errno));
    struct model_config cfg;
    int r = model_config_load(src_dir, &cfg, err);
    if (r < 0)
        return r;
    if (cfg.quant.bits != 0) {
        model_config_finish(&cfg);
        return ifd_error_set(err, -EINVAL, "'%s' is already quantized (%d-bit)", src_dir, cfg.quant.bits);
    }
    st_model *st = NULL;
    if ((r = st_open(src_dir, &st, err)) < 0) {
        model_config_finish(&cfg);
        return r;
    }
    bool created = false;
    if (mkdir(dst_dir, 0755) == 0)
        created = true;
    else if (errno != EEXIST)
        r = ifd_error_set(err, -errno, "cannot create '%s': %s", dst_dir, strerror(errno));
    if (r >= 0 && !realpath(dst_dir, rd))
        r = ifd_error_set(err, -errno, "'%s': %s", dst_dir, strerror(errno));
    if (r >= 0 && strcmp(rs, rd) == 0)
        r = ifd_error_set(err, -EINVAL, "destination '%s' is the source directory", dst_dir);
    if (r < 0) {
        st_close(st);
        model_config_finish(&cfg);
        return r;
    }
    struct qc_item *items = calloc(st_count(st) ? st_count(st) : 1, sizeof(*items));
    size_t n = 0;
    if (!items)
        r = ifd_error_set(err, -ENOMEM, "out of memory");
    if (r >= 0)
        r = plan_items(st, &cfg, gs, items, &n, err);
    uint64_t total = 0, done = 0;
    for (size_t i = 0; r >= 0 && i < n; i++)
        total += items[i].t->nbytes;
    const int n_files = st_file_count(st);
    for (int fi = 0; r >= 0 && fi < n_files; fi++) {
        char path[PATH_MAX];
        const char *name = n_files == 1 ? "model.safetensors" : base_name(st_file_path(st, fi));
        if (snprintf(path, sizeof(path), "%s/%s", dst_dir, name) >= (int)sizeof(path)) {
            r = ifd_error_set(err, -ENAMETOOLONG, "output path too long");
            break;
        }
        r = write_shard(path, items, n, fi, bits, gs, progress, progress_ctx, &done, total, err);
    }
    if (r >= 0 && n_files > 1)
        r = write_index(dst_dir, st, items, n, bits, gs, err);
    if (r >= 0)
        r = write_config(src_dir, dst_dir, bits, gs, err);
    if (r >= 0)
        r = copy_side_files(src_dir, dst_dir, err);
    free(items);
    st_close(st);
    model_config_finish(&cfg);
    if (r < 0 && created)
        remove_created_dir(dst_dir);
    return r < 0 ? r : 0;
}
