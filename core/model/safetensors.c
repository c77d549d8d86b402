/* safetensors.c - mmap-backed safetensors reader and streaming writers.
 *
 * File layout (https://github.com/huggingface/safetensors):
 *   [8 bytes: header length N, u64 little-endian]
 *   [N bytes: JSON object  name -> {"dtype","shape","data_offsets":[begin,end]},
 *             plus an optional "__metadata__": {string: string}]
 *   [data: each tensor's bytes at data_offsets, relative to the end of the header]
 *
 * Everything in the header is untrusted. A file is validated completely
 * (dtype, shape, byte count, range inside the file, no overlap) before any
 * tensor is exposed, so a caller never reads outside a mapping. */
#include "model/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/file.h"

/* An index file lists names and shard files only; real ones are well under 1 MiB. */
#define ST_MAX_INDEX_BYTES (64u << 20)
/* Each shard is one mapping; real checkpoints have at most a few hundred. */
#define ST_MAX_SHARDS 4096
/* JSON numbers are doubles: integers above 2^53 are not represented exactly. */
#define ST_MAX_JSON_INT 9007199254740992.0

struct st_meta {
    char *key;
    char *value;
};

struct st_file {
    char *path;           /* as opened; names the file in messages */
    const uint8_t *base;  /* whole file (mapping or caller's buffer) */
    size_t len;
    bool mapped;          /* munmap on close */
    bool anonymous;       /* mapped, an image of st_open_image(): no file behind */
    struct st_meta *meta; /* __metadata__ entries, n_meta of them */
    size_t n_meta;
};

/* Hash table slot: name -> index into tensors[]. Aliases point at their target. */
struct st_slot {
    const char *name; /* NULL = empty */
    uint64_t hash;
    size_t tensor;
};

struct st_model {
    struct st_file *files;
    int n_files;
    struct st_tensor *tensors; /* names owned (strdup) */
    size_t n_tensors;
    size_t cap_tensors;
    char **alias_names; /* owned names of the alias slots */
    size_t n_alias;
    struct st_slot *slots; /* open addressing, n_slots a power of two */
    size_t n_slots;
};

/* ---------------------------------------------------------------- hashing */

static uint64_t name_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

static const struct st_slot *slot_lookup(const st_model *m, const char *name)
{
    if (!m->n_slots)
        return NULL;
    uint64_t h = name_hash(name);
    size_t mask = m->n_slots - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const struct st_slot *s = &m->slots[i];
        if (!s->name)
            return NULL;
        if (s->hash == h && strcmp(s->name, name) == 0)
            return s;
    }
}

/* Inserts name -> tensor. Returns -EEXIST if the name is already present.
 * The table is sized up front (at most half full), so it never fills. */
static int slot_insert(st_model *m, const char *name, size_t tensor)
{
    uint64_t h = name_hash(name);
    size_t mask = m->n_slots - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        struct st_slot *s = &m->slots[i];
        if (!s->name) {
            s->name = name;
            s->hash = h;
            s->tensor = tensor;
            return 0;
        }
        if (s->hash == h && strcmp(s->name, name) == 0)
            return -EEXIST;
    }
}

static int slots_alloc(st_model *m, size_t n_names)
{
    size_t n = 16;
    while (n < 2 * n_names + 1)
        n <<= 1;
    m->slots = calloc(n, sizeof(*m->slots));
    if (!m->slots)
        return -ENOMEM;
    m->n_slots = n;
    return 0;
}

/* ---------------------------------------------------------- JSON helpers */

/* A JSON number that is a non-negative integer exactly representable. */
static bool json_get_u64(const cJSON *v, uint64_t *ret)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d > ST_MAX_JSON_INT || d != (double)(uint64_t)d)
        return false;
    *ret = (uint64_t)d;
    return true;
}

/* ------------------------------------------------------------- one file */

struct range {
    uint64_t begin, end;
    size_t tensor;
};

static int range_cmp(const void *a, const void *b)
{
    const struct range *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int tensors_reserve(st_model *m, size_t extra)
{
    if (extra > SIZE_MAX - m->n_tensors)
        return -ENOMEM;
    struct st_tensor *t = buf_grow(m->tensors, &m->cap_tensors, m->n_tensors + extra, sizeof(*t));
    if (!t)
        return -ENOMEM;
    m->tensors = t;
    return 0;
}

static int parse_metadata(struct st_file *f, const cJSON *meta, ifd_error *err)
{
    if (!cJSON_IsObject(meta))
        return ifd_error_set(err, -EINVAL, "%s: __metadata__ is not an object", f->path);
    size_t n = (size_t)cJSON_GetArraySize(meta);
    if (n == 0)
        return 0;
    f->meta = calloc(n, sizeof(*f->meta));
    if (!f->meta)
        return ifd_error_set(err, -ENOMEM, "%s: out of memory", f->path);
    const cJSON *e;
    cJSON_ArrayForEach(e, meta) {
        if (!cJSON_IsString(e) || !e->string)
            return ifd_error_set(err, -EINVAL, "%s: __metadata__ entry '%s' is not a string",
                                 f->path, e->string ? e->string : "?");
        struct st_meta *kv = &f->meta[f->n_meta];
        kv->key = strdup(e->string);
        kv->value = strdup(e->valuestring);
        if (!kv->key || !kv->value) {
            free(kv->key);
            free(kv->value);
            return ifd_error_set(err, -ENOMEM, "%s: out of memory", f->path);
        }
        f->n_meta++;
    }
    return 0;
}

/* Validates one tensor entry and fills *t (name not set). data_size is the
 * number of bytes after the header. */
static int parse_entry(const char *path, const cJSON *e, uint64_t data_size, struct st_tensor *t,
                       uint64_t *ret_begin, uint64_t *ret_end, ifd_error *err)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return ifd_error_set(err, -EINVAL, "%s: tensor '%s': entry is not an object", path, name);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt))
        return ifd_error_set(err, -EINVAL, "%s: tensor '%s': missing or non-string dtype", path, name);
    if (ifd_dtype_parse(dt->valuestring, &t->dtype) < 0)
        return ifd_error_set(err, -EINVAL, "%s: tensor '%s': unknown dtype '%s'", path, name,
                             dt->valuestring);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(shape))
        return ifd_error_set(err, -EINVAL, "%s: tensor '%s': missing or non-array shape", path, name);
    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > ST_MAX_DIMS)
        return ifd_error_set(err, -EINVAL, "%s: tensor '%s': %d dimensions (at most %d)", path, name,
                             n_dims, ST_MAX_DIMS);
    uint64_t n_el = 1;
    bool overflow = false;
    int d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape) {
        uint64_t v;
        if (!json_get_u64(dim, &v) || v > INT64_MAX)
            return ifd_error_set(err, -EINVAL,
                                 "%s: tensor '%s': shape dimension %d is not a non-negative integer",
                                 path, name, d);
        t->shape[d++] = (int64_t)v;
        if (v && n_el > UINT64_MAX / v)
            overflow = true;
        n_el *= v;
    }
    t->n_dims = n_dims;
    size_t esize = ifd_dtype_size(t->dtype);
    /* A zero dimension makes the product 0 whatever the others are. */
    bool zero = false;
    for (int i = 0; i < n_dims; i++)
        zero |= t->shape[i] == 0;
    if (zero)
        n_el = 0, overflow = false;
    if (overflow || n_el > UINT64_MAX / esize)
        return ifd_error_set(err, -EOVERFLOW, "%s: tensor '%s': shape element count overflows", path,
                             name);
    t->n_elements = n_el;
    t->nbytes = n_el * esize;

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_get_u64(off->child, &begin) ||
        !json_get_u64(off->child->next, &end))
        return ifd_error_set(err, -EINVAL,
                             "%s: tensor '%s': data_offsets must be two non-negative integers", path,
                             name);
    if (begin > end)
        return ifd_error_set(err, -EINVAL, "%s: tensor '%s': data_offsets begin %llu > end %llu", path,
                             name, (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return ifd_error_set(err, -EINVAL,
                             "%s: tensor '%s': data_offsets end %llu is past the %llu data bytes of the file",
                             path, name, (unsigned long long)end, (unsigned long long)data_size);
    if (end - begin != t->nbytes) {
        char dims[160];
        size_t p = 0;
        dims[0] = '\0';
        for (int i = 0; i < n_dims && p < sizeof(dims); i++)
            p += (size_t)snprintf(dims + p, sizeof(dims) - p, "%s%lld", i ? ", " : "",
                                  (long long)t->shape[i]);
        return ifd_error_set(err, -EINVAL,
                             "%s: tensor '%s': shape [%s] needs %llu bytes but data_offsets span %llu",
                             path, name, dims, (unsigned long long)t->nbytes,
                             (unsigned long long)(end - begin));
    }
    *ret_begin = begin;
    *ret_end = end;
    return 0;
}

/* Parses and validates the header of file f (already in m->files[fi]) and
 * appends its tensors. On failure the tensors appended so far stay in m and
 * are freed by st_close. */
static int parse_file(st_model *m, int fi, ifd_error *err)
{
    struct st_file *f = &m->files[fi];
    if (f->len < 8)
        return ifd_error_set(err, -EINVAL, "%s: truncated: %zu bytes, less than the 8-byte header length",
                             f->path, f->len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | f->base[i];
    if (hlen > ST_MAX_HEADER_BYTES)
        return ifd_error_set(err, -EINVAL, "%s: header length %llu exceeds the limit of %u bytes",
                             f->path, (unsigned long long)hlen, ST_MAX_HEADER_BYTES);
    if (hlen > f->len - 8)
        return ifd_error_set(err, -EINVAL, "%s: header length %llu is past the end of the file (%zu bytes)",
                             f->path, (unsigned long long)hlen, f->len);
    const char *hdr = (const char *)f->base + 8;
    uint64_t data_size = f->len - 8 - hlen;

    /* The parse end is returned per call (cJSON_GetErrorPtr is a global). */
    const char *json_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &json_end, false);
    if (!root)
        return ifd_error_set(err, -EINVAL, "%s: header is not valid JSON (near byte %td)", f->path,
                             json_end ? json_end - hdr + 8 : (ptrdiff_t)8);
    int r = 0;
    struct range *ranges = NULL;
    /* Only padding may follow the object (the reference pads with spaces). */
    for (const char *p = json_end; p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            r = ifd_error_set(err, -EINVAL, "%s: header has trailing bytes after the JSON (byte %td)",
                              f->path, p - hdr + 8);
            goto out;
        }
    }
    if (!cJSON_IsObject(root)) {
        r = ifd_error_set(err, -EINVAL, "%s: header is not a JSON object", f->path);
        goto out;
    }
    size_t n = (size_t)cJSON_GetArraySize(root);
    if (n > ST_MAX_TENSORS || m->n_tensors + n > ST_MAX_TENSORS) {
        r = ifd_error_set(err, -EINVAL, "%s: more than %d tensors", f->path, ST_MAX_TENSORS);
        goto out;
    }
    if (tensors_reserve(m, n) < 0 || !(ranges = calloc(n ? n : 1, sizeof(*ranges)))) {
        r = ifd_error_set(err, -ENOMEM, "%s: out of memory", f->path);
        goto out;
    }
    size_t n_ranges = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (!e->string) {
            r = ifd_error_set(err, -EINVAL, "%s: header entry without a name", f->path);
            goto out;
        }
        if (strcmp(e->string, "__metadata__") == 0) {
            if (f->meta || f->n_meta) {
                r = ifd_error_set(err, -EINVAL, "%s: __metadata__ given twice", f->path);
                goto out;
            }
            r = parse_metadata(f, e, err);
            if (r < 0)
                goto out;
            continue;
        }
        struct st_tensor *t = &m->tensors[m->n_tensors];
        memset(t, 0, sizeof(*t));
        uint64_t begin = 0, end = 0;
        r = parse_entry(f->path, e, data_size, t, &begin, &end, err);
        if (r < 0)
            goto out;
        t->name = strdup(e->string);
        if (!t->name) {
            r = ifd_error_set(err, -ENOMEM, "%s: out of memory", f->path);
            goto out;
        }
        t->file_index = fi;
        t->file_offset = 8 + hlen + begin;
        t->data = f->base + t->file_offset;
        ranges[n_ranges++] = (struct range){begin, end, m->n_tensors};
        m->n_tensors++;
    }
    qsort(ranges, n_ranges, sizeof(*ranges), range_cmp);
    for (size_t i = 1; i < n_ranges; i++) {
        if (ranges[i].begin < ranges[i - 1].end) {
            r = ifd_error_set(err, -EINVAL,
                              "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' [%llu, %llu]",
                              f->path, m->tensors[ranges[i].tensor].name,
                              (unsigned long long)ranges[i].begin, (unsigned long long)ranges[i].end,
                              m->tensors[ranges[i - 1].tensor].name,
                              (unsigned long long)ranges[i - 1].begin,
                              (unsigned long long)ranges[i - 1].end);
            goto out;
        }
    }
out:
    free(ranges);
    cJSON_Delete(root);
    return r;
}

/* -------------------------------------------------------------- opening */

static st_model *model_new(int n_files)
{
    st_model *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->files = calloc((size_t)n_files, sizeof(*m->files));
    if (!m->files) {
        free(m);
        return NULL;
    }
    m->n_files = n_files;
    return m;
}

static int file_map(struct st_file *f, const char *path, ifd_error *err)
{
    f->path = strdup(path);
    if (!f->path)
        return ifd_error_set(err, -ENOMEM, "%s: out of memory", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ifd_error_set(err, -errno, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int r = -errno;
        close(fd);
        return ifd_error_set(err, r, "%s: cannot stat: %s", path, strerror(-r));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ifd_error_set(err, -EINVAL, "%s: not a regular file", path);
    }
    f->len = (size_t)st.st_size;
    if (f->len == 0) {
        /* mmap of zero bytes fails; parse_file reports the truncation. */
        close(fd);
        f->base = (const uint8_t *)"";
        return 0;
    }
    void *p = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED)
        return ifd_error_set(err, -e, "%s: mmap failed: %s", path, strerror(e));
#ifdef MADV_HUGEPAGE
    /* A hint, so its failure is no error (THP "never", old kernels): the
     * pages read from here on come in 2 MiB folios, mapped by PMD, so decode,
     * which streams every weight once per token, takes a TLB miss per 2 MiB
     * instead of per 4 KiB. Measured on the 4-bit Qwen2.5-0.5B-shaped model
     * (inferctl run, 2 threads, avx2, Zen 4 VM, page cache filled by a build
     * without then with the hint, the same build timed): decode 85.7-87.6 ->
     * 90.1-91.8 tok/s; BF16 and 8-bit unchanged. Pages already cached keep
     * their size. */
    madvise(p, f->len, MADV_HUGEPAGE);
#endif
    f->base = p;
    f->mapped = true;
    return 0;
}

/* Aliases from __metadata__: an entry whose key is not a stored tensor and
 * whose value is one. Other metadata ("format": "pt") is ignored. */
static int build_index(st_model *m, ifd_error *err)
{
    size_t n_meta = 0;
    for (int fi = 0; fi < m->n_files; fi++)
        n_meta += m->files[fi].n_meta;
    if (slots_alloc(m, m->n_tensors + n_meta) < 0)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < m->n_tensors; i++) {
        if (slot_insert(m, m->tensors[i].name, i) < 0)
            return ifd_error_set(err, -EINVAL, "%s: tensor '%s' is stored twice",
                                 m->files[m->tensors[i].file_index].path, m->tensors[i].name);
    }
    if (n_meta && !(m->alias_names = calloc(n_meta, sizeof(char *))))
        return ifd_error_set(err, -ENOMEM, "out of memory");
    for (int fi = 0; fi < m->n_files; fi++) {
        const struct st_file *f = &m->files[fi];
        for (size_t k = 0; k < f->n_meta; k++) {
            const struct st_slot *target = slot_lookup(m, f->meta[k].value);
            if (!target || slot_lookup(m, f->meta[k].key))
                continue;
            char *name = strdup(f->meta[k].key);
            if (!name)
                return ifd_error_set(err, -ENOMEM, "out of memory");
            m->alias_names[m->n_alias++] = name;
            slot_insert(m, name, target->tensor);
        }
    }
    return 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static char *path_join(const char *dir, const char *name)
{
    char *p;
    return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

/* Opens a sharded checkpoint from its index file. */
static int open_index(const char *index_path, st_model **ret, ifd_error *err)
{
    char *buf = NULL;
    size_t len = 0;
    int r = file_read(index_path, ST_MAX_INDEX_BYTES, 0, &buf, &len, err);
    if (r < 0)
        return r;
    cJSON *root = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!root)
        return ifd_error_set(err, -EINVAL, "%s: not valid JSON", index_path);

    st_model *m = NULL;
    char **shards = NULL;
    char **paths = NULL; /* [n_shards] dir/shard, once the shards are known */
    int n_shards = 0;
    char *dir = strdup(index_path);
    if (!dir) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");

    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(map)) {
        r = ifd_error_set(err, -EINVAL, "%s: no \"weight_map\" object", index_path);
        goto out;
    }
    int n_names = cJSON_GetArraySize(map);
    if (n_names > ST_MAX_TENSORS) {
        r = ifd_error_set(err, -EINVAL, "%s: more than %d tensors", index_path, ST_MAX_TENSORS);
        goto out;
    }
    /* Distinct shard names, sorted (so the file order does not depend on the
     * order of the weight_map). */
    shards = calloc((size_t)n_names + 1, sizeof(*shards));
    if (!shards) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    int n_listed = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, map) {
        if (!cJSON_IsString(e)) {
            r = ifd_error_set(err, -EINVAL, "%s: weight_map entry '%s' is not a string", index_path,
                              e->string ? e->string : "?");
            goto out;
        }
        const char *s = e->valuestring;
        /* Shards live beside the index: no paths, so an index cannot point elsewhere. */
        if (!*s || strchr(s, '/') || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
            r = ifd_error_set(err, -EINVAL, "%s: tensor '%s': shard name '%s' is not a plain file name",
                              index_path, e->string, s);
            goto out;
        }
        shards[n_listed++] = e->valuestring;
    }
    qsort(shards, (size_t)n_listed, sizeof(*shards), name_cmp);
    for (int i = 0; i < n_listed; i++)
        if (i == 0 || strcmp(shards[i], shards[n_shards - 1]) != 0)
            shards[n_shards++] = shards[i];
    if (n_shards > ST_MAX_SHARDS) {
        r = ifd_error_set(err, -EINVAL, "%s: %d shards (at most %d)", index_path, n_shards, ST_MAX_SHARDS);
        goto out;
    }
    if (n_shards == 0) {
        r = ifd_error_set(err, -EINVAL, "%s: weight_map is empty", index_path);
        goto out;
    }
    /* Every shard must exist before any is mapped: the missing one is named.
     * The paths are joined once, here, and mapped below. */
    if (!(paths = calloc((size_t)n_shards, sizeof(*paths)))) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < n_shards; i++) {
        if (!(paths[i] = path_join(dir, shards[i]))) {
            r = ifd_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        bool ok = access(paths[i], R_OK) == 0;
        int e2 = errno;
        if (!ok) {
            r = ifd_error_set(err, -e2, "%s: shard '%s' is missing or unreadable: %s", index_path,
                              shards[i], strerror(e2));
            goto out;
        }
    }
    m = model_new(n_shards);
    if (!m) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < n_shards; i++) {
        r = file_map(&m->files[i], paths[i], err);
        if (r < 0)
            goto out;
        r = parse_file(m, i, err);
        if (r < 0)
            goto out;
    }
    r = build_index(m, err);
    if (r < 0)
        goto out;
    /* The index and the shards must agree on where each tensor is. */
    cJSON_ArrayForEach(e, map) {
        const struct st_slot *s = slot_lookup(m, e->string);
        const char *fp = s ? m->files[m->tensors[s->tensor].file_index].path : NULL;
        if (!s || !has_suffix(fp, e->valuestring) || fp[strlen(fp) - strlen(e->valuestring) - 1] != '/') {
            r = ifd_error_set(err, -EINVAL, "%s: tensor '%s' is listed in shard '%s' but not stored there",
                              index_path, e->string, e->valuestring);
            goto out;
        }
    }
    *ret = m;
    m = NULL;
    r = 0;
out:
    st_close(m);
    for (int i = 0; paths && i < n_shards; i++)
        free(paths[i]);
    free(paths);
    free(shards);
    free(dir);
    cJSON_Delete(root);
    return r;
}

/* The rest of opening a one-file checkpoint whose file 0 is in place (r is
 * the status so far): parse its header, index the tensors; frees m on failure. */
static int single_finish(st_model *m, int r, st_model **ret, ifd_error *err)
{
    if (r >= 0)
        r = parse_file(m, 0, err);
    if (r >= 0)
        r = build_index(m, err);
    if (r < 0) {
        st_close(m);
        return r;
    }
    *ret = m;
    return 0;
}

static int open_single(const char *path, st_model **ret, ifd_error *err)
{
    st_model *m = model_new(1);
    if (!m)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    int r = file_map(&m->files[0], path, err);
    return single_finish(m, r, ret, err);
}

int st_open(const char *path, st_model **ret, ifd_error *err)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return ifd_error_set(err, -errno, "%s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        if (has_suffix(path, ".json"))
            return open_index(path, ret, err);
        return open_single(path, ret, err);
    }
    char *p = path_join(path, "model.safetensors.index.json");
    if (!p)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    int r;
    if (access(p, F_OK) == 0) {
        r = open_index(p, ret, err);
        free(p);
        return r;
    }
    free(p);
    p = path_join(path, "model.safetensors");
    if (!p)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    if (access(p, F_OK) != 0) {
        free(p);
        return ifd_error_set(err, -ENOENT,
                             "%s: no model.safetensors or model.safetensors.index.json in the directory",
                             path);
    }
    r = open_single(p, ret, err);
    free(p);
    return r;
}

/* An st_model of one image in memory: a caller's buffer, or (anonymous) a
 * mapping it takes over, unmapped on close and on failure. */
static int open_in_memory(const void *data, size_t len, const char *origin, bool anonymous, st_model **ret,
                          ifd_error *err)
{
    st_model *m = model_new(1);
    if (!m) {
        if (anonymous)
            munmap((void *)data, len);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    int r = 0;
    m->files[0].path = strdup(origin ? origin : "(memory)");
    if (!m->files[0].path)
        r = ifd_error_set(err, -ENOMEM, "out of memory");
    m->files[0].base = data ? data : (const void *)"";
    m->files[0].len = data ? len : 0;
    m->files[0].mapped = m->files[0].anonymous = anonymous && data;
    return single_finish(m, r, ret, err);
}

int st_open_memory(const void *data, size_t len, const char *origin, st_model **ret, ifd_error *err)
{
    return open_in_memory(data, len, origin, false, ret, err);
}

int st_open_image(void *data, size_t len, const char *origin, st_model **ret, ifd_error *err)
{
    return open_in_memory(data, len, origin, true, ret, err);
}

void st_close(st_model *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->n_files; i++) {
        struct st_file *f = &m->files[i];
        if (f->mapped)
            munmap((void *)f->base, f->len);
        for (size_t k = 0; k < f->n_meta; k++) {
            free(f->meta[k].key);
            free(f->meta[k].value);
        }
        free(f->meta);
        free(f->path);
    }
    for (size_t i = 0; i < m->n_tensors; i++)
        free((char *)m->tensors[i].name);
    for (size_t i = 0; i < m->n_alias; i++)
        free(m->alias_names[i]);
    free(m->alias_names);
    free(m->slots);
    free(m->tensors);
    free(m->files);
    free(m);
}

size_t st_count(const st_model *m)
{
    return m->n_tensors;
}

const struct st_tensor *st_at(const st_model *m, size_t i)
{
    return i < m->n_tensors ? &m->tensors[i] : NULL;
}

const struct st_tensor *st_find(const st_model *m, const char *name)
{
    const struct st_slot *s = slot_lookup(m, name);
    return s ? &m->tensors[s->tensor] : NULL;
}

/* Searches every file's __metadata__ in order (the first file first), so a
 * key written in any shard is found. */
const char *st_metadata(const st_model *m, const char *key)
{
    for (int fi = 0; fi < m->n_files; fi++)
        for (size_t k = 0; k < m->files[fi].n_meta; k++)
            if (strcmp(m->files[fi].meta[k].key, key) == 0)
                return m->files[fi].meta[k].value;
    return NULL;
}

/* The mapped file that holds [p, p + len), or NULL. */
static const struct st_file *mapping_of(const st_model *m, const void *p, size_t len)
{
    const uintptr_t a = (uintptr_t)p;
    for (int i = 0; i < m->n_files; i++) {
        const struct st_file *f = &m->files[i];
        const uintptr_t base = (uintptr_t)f->base;
        if (f->mapped && a >= base && a - base < f->len && len <= f->len - (a - base))
            return f;
    }
    return NULL;
}

bool st_in_mapping(const st_model *m, const void *p, size_t len)
{
    return mapping_of(m, p, len) != NULL;
}

void st_release_pages(const st_model *m, const void *p, size_t len)
{
    const struct st_file *f = mapping_of(m, p, len);
    if (!f)
        return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p;
    const uintptr_t first = (a + page - 1) / page * page, end = (a + len) / page * page;
    if (first >= end)
        return;
    /* A file's mapping is MAP_PRIVATE and never written: MADV_DONTNEED drops
     * the pages, and a later touch reads them from the file (or its page
     * cache). An anonymous image's pages would come back as zeros: no access
     * first, so that such a read is a fault, not a wrong answer. */
    if (f->anonymous && mprotect((void *)first, end - first, PROT_NONE) != 0)
        return;
    (void)madvise((void *)first, end - first, MADV_DONTNEED);
}

int st_file_count(const st_model *m)
{
    return m->n_files;
}

const char *st_file_path(const st_model *m, int file_index)
{
    return file_index >= 0 && file_index < m->n_files ? m->files[file_index].path : NULL;
}

/* --------------------------------------------------------------- writer */

struct st_wdecl {
    char *name;
    enum ifd_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
};

struct st_writer {
    st_write_fn write;
    void *ctx;
    struct st_meta *meta;
    size_t n_meta, cap_meta;
    struct st_wdecl *decl;
    size_t n_decl, cap_decl;
    uint64_t total;   /* sum of declared bytes */
    uint64_t written; /* data bytes written so far */
    uint64_t header_bytes; /* JSON header length, padding included */
    bool begun;
};

int st_writer_create(st_write_fn write, void *ctx, st_writer **ret)
{
    if (!write)
        return -EINVAL;
    st_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->write = write;
    w->ctx = ctx;
    *ret = w;
    return 0;
}

void st_writer_destroy(st_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_meta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    for (size_t i = 0; i < w->n_decl; i++)
        free(w->decl[i].name);
    free(w->meta);
    free(w->decl);
    free(w);
}

int st_writer_add_metadata(st_writer *w, const char *key, const char *value)
{
    if (w->begun || !key || !value || strcmp(key, "__metadata__") == 0)
        return -EINVAL;
    for (size_t i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta[i].key, key) == 0)
            return -EEXIST;
    struct st_meta *meta = buf_grow(w->meta, &w->cap_meta, w->n_meta + 1, sizeof(*meta));
    if (!meta)
        return -ENOMEM;
    w->meta = meta;
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return -ENOMEM;
    }
    w->meta[w->n_meta++] = (struct st_meta){k, v};
    return 0;
}

int st_writer_declare(st_writer *w, const char *name, enum ifd_dtype dtype, int n_dims,
                      const int64_t *shape, ifd_error *err)
{
    if (w->begun)
        return ifd_error_set(err, -EINVAL, "tensor '%s': declared after the data began", name);
    if (!name || !*name || strcmp(name, "__metadata__") == 0)
        return ifd_error_set(err, -EINVAL, "tensor '%s': invalid name", name ? name : "(null)");
    if ((unsigned)dtype >= IFD_DTYPE_COUNT)
        return ifd_error_set(err, -EINVAL, "tensor '%s': invalid dtype %d", name, (int)dtype);
    if (n_dims < 0 || n_dims > ST_MAX_DIMS)
        return ifd_error_set(err, -EINVAL, "tensor '%s': %d dimensions (at most %d)", name, n_dims,
                             ST_MAX_DIMS);
    if (w->n_decl >= ST_MAX_TENSORS)
        return ifd_error_set(err, -EINVAL, "tensor '%s': more than %d tensors", name, ST_MAX_TENSORS);
    uint64_t n = 1;
    for (int i = 0; i < n_dims; i++) {
        if (shape[i] < 0)
            return ifd_error_set(err, -EINVAL, "tensor '%s': negative dimension %d", name, i);
        if (shape[i] && n > UINT64_MAX / (uint64_t)shape[i])
            return ifd_error_set(err, -EOVERFLOW, "tensor '%s': element count overflows", name);
        n *= (uint64_t)shape[i];
    }
    size_t es = ifd_dtype_size(dtype);
    if (n > UINT64_MAX / es || n * es > (uint64_t)ST_MAX_JSON_INT - w->total)
        return ifd_error_set(err, -EOVERFLOW, "tensor '%s': byte count overflows", name);
    /* Names must be unique: a linear scan would be quadratic for big models,
     * so duplicates are caught when the header is built (see begin_data). */
    struct st_wdecl *decl = buf_grow(w->decl, &w->cap_decl, w->n_decl + 1, sizeof(*decl));
    if (!decl)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    w->decl = decl;
    struct st_wdecl *d = &w->decl[w->n_decl];
    memset(d, 0, sizeof(*d));
    d->name = strdup(name);
    if (!d->name)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    d->dtype = dtype;
    d->n_dims = n_dims;
    if (n_dims)
        memcpy(d->shape, shape, (size_t)n_dims * sizeof(*shape));
    d->nbytes = n * es;
    w->total += d->nbytes;
    w->n_decl++;
    return 0;
}

/* Growable string for the header JSON. */
struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    char *p = n < SIZE_MAX - b->len - 1 ? buf_grow(b->p, &b->cap, b->len + n + 1, 1) : NULL;
    if (!p) {
        b->oom = true;
        return;
    }
    b->p = p;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_fmt(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(struct sbuf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* A JSON string literal. */
static void sb_json(struct sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') {
            char e[2] = {'\\', (char)*c};
            sb_put(b, e, 2);
        } else if (*c < 0x20) {
            sb_fmt(b, "\\u%04x", *c);
        } else {
            sb_put(b, (const char *)c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

int st_writer_begin_data(st_writer *w, ifd_error *err)
{
    if (w->begun)
        return ifd_error_set(err, -EINVAL, "safetensors writer: data already begun");
    /* Duplicate names: sort a copy of the name pointers. */
    if (w->n_decl > 1) {
        char **names = malloc(w->n_decl * sizeof(*names));
        if (!names)
            return ifd_error_set(err, -ENOMEM, "out of memory");
        for (size_t i = 0; i < w->n_decl; i++)
            names[i] = w->decl[i].name;
        qsort(names, w->n_decl, sizeof(*names), name_cmp);
        for (size_t i = 1; i < w->n_decl; i++) {
            if (strcmp(names[i], names[i - 1]) == 0) {
                int r = ifd_error_set(err, -EINVAL, "tensor '%s': declared twice", names[i]);
                free(names);
                return r;
            }
        }
        free(names);
    }
    struct sbuf b = {0};
    sb_str(&b, "{");
    if (w->n_meta) {
        sb_str(&b, "\"__metadata__\":{");
        for (size_t i = 0; i < w->n_meta; i++) {
            if (i)
                sb_str(&b, ",");
            sb_json(&b, w->meta[i].key);
            sb_str(&b, ":");
            sb_json(&b, w->meta[i].value);
        }
        sb_str(&b, "}");
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_decl; i++) {
        const struct st_wdecl *d = &w->decl[i];
        if (i || w->n_meta)
            sb_str(&b, ",");
        sb_json(&b, d->name);
        sb_str(&b, ":{\"dtype\":");
        sb_json(&b, ifd_dtype_name(d->dtype));
        sb_str(&b, ",\"shape\":[");
        for (int k = 0; k < d->n_dims; k++)
            sb_fmt(&b, "%s%lld", k ? "," : "", (long long)d->shape[k]);
        sb_fmt(&b, "],\"data_offsets\":[%llu,", (unsigned long long)off);
        off += d->nbytes;
        sb_fmt(&b, "%llu]}", (unsigned long long)off);
        if (b.len > ST_MAX_HEADER_BYTES)
            break;
    }
    sb_str(&b, "}");
    /* Pad with spaces so the data starts 8-byte aligned, as the reference does. */
    while (!b.oom && b.len % 8)
        sb_str(&b, " ");
    if (b.oom) {
        free(b.p);
        return ifd_error_set(err, -ENOMEM, "out of memory building the safetensors header");
    }
    if (b.len > ST_MAX_HEADER_BYTES) {
        free(b.p);
        return ifd_error_set(err, -E2BIG, "safetensors header would exceed %u bytes", ST_MAX_HEADER_BYTES);
    }
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)((uint64_t)b.len >> (8 * i));
    int r = w->write(w->ctx, le, sizeof(le));
    if (r >= 0)
        r = w->write(w->ctx, b.p, b.len);
    free(b.p);
    if (r < 0)
        return ifd_error_set(err, r, "writing the safetensors header failed: %s", strerror(-r));
    w->header_bytes = b.len;
    w->begun = true;
    return 0;
}

int st_writer_write_data(st_writer *w, const void *data, size_t len, ifd_error *err)
{
    if (!w->begun)
        return ifd_error_set(err, -EINVAL, "safetensors writer: data written before the header");
    if (len > w->total - w->written)
        return ifd_error_set(err, -EINVAL,
                             "safetensors writer: %zu bytes written past the %llu declared (%llu so far)",
                             len, (unsigned long long)w->total, (unsigned long long)w->written);
    const uint8_t *p = data;
    while (len) {
        size_t n = len < ST_WRITE_CHUNK_BYTES ? len : ST_WRITE_CHUNK_BYTES;
        int r = w->write(w->ctx, p, n);
        if (r < 0)
            return ifd_error_set(err, r, "safetensors writer: write failed: %s", strerror(-r));
        p += n;
        len -= n;
        w->written += n;
    }
    return 0;
}

int st_writer_finish(st_writer *w, ifd_error *err)
{
    if (!w->begun)
        return ifd_error_set(err, -EINVAL, "safetensors writer: finished before the header");
    if (w->written != w->total)
        return ifd_error_set(err, -EINVAL, "safetensors writer: %llu of %llu declared data bytes written",
                             (unsigned long long)w->written, (unsigned long long)w->total);
    return 0;
}

int st_write_to_file(void *ctx, const void *buf, size_t len)
{
    FILE *f = ctx;
    errno = 0; /* fwrite need not set it: do not report a stale one */
    if (len && fwrite(buf, 1, len, f) != len)
        return errno ? -errno : -EIO;
    return 0;
}

/* --------------------------------------------------------------- subset */

struct subset_key {
    size_t elem_size;
    size_t pos;    /* order asked for */
    size_t tensor; /* index into m->tensors */
};

static int subset_key_cmp(const void *a, const void *b)
{
    const struct subset_key *x = a, *y = b;
    if (x->elem_size != y->elem_size)
        return x->elem_size > y->elem_size ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Each tensor is written once under its stored (canonical) name. When the
 * caller asked for an alias (tinystories' "model.embed_tokens.weight" for the
 * stored "lm_head.weight"), the subset's __metadata__ maps the requested name
 * to the canonical one, so st_find() on the receiver resolves either name. */
int st_write_subset(const st_model *m, const char *const *names, size_t n_names, st_write_fn write,
                    void *ctx, uint64_t *ret_size, ifd_error *err)
{
    const char *origin = m->n_files ? m->files[0].path : "(checkpoint)";
    size_t *idx = calloc(n_names ? n_names : 1, sizeof(*idx));
    bool *taken = calloc(m->n_tensors ? m->n_tensors : 1, sizeof(*taken));
    st_writer *w = NULL;
    int r = 0;
    if (!idx || !taken || st_writer_create(write, ctx, &w) < 0) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    const char *format = st_metadata(m, "format");
    if (format && st_writer_add_metadata(w, "format", format) < 0) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    size_t n_out = 0;
    for (size_t i = 0; i < n_names; i++) {
        const struct st_tensor *t = st_find(m, names[i]);
        if (!t) {
            r = ifd_error_set(err, -ENOENT, "%s: tensor '%s' not found", origin, names[i]);
            goto out;
        }
        size_t ti = (size_t)(t - m->tensors);
        if (strcmp(t->name, names[i]) != 0) {
            int rm = st_writer_add_metadata(w, names[i], t->name);
            if (rm < 0 && rm != -EEXIST) {
                r = ifd_error_set(err, rm, "tensor '%s': cannot record alias", names[i]);
                goto out;
            }
        }
        if (taken[ti])
            continue;
        taken[ti] = true;
        idx[n_out++] = ti;
    }
    /* Wider elements first (as the reference writer orders them): with the
     * header padded to 8 bytes, every tensor then starts aligned to its
     * element size. Ties keep the order asked for. */
    struct subset_key *keys = calloc(n_out ? n_out : 1, sizeof(*keys));
    if (!keys) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_out; i++)
        keys[i] = (struct subset_key){ifd_dtype_size(m->tensors[idx[i]].dtype), i, idx[i]};
    qsort(keys, n_out, sizeof(*keys), subset_key_cmp);
    for (size_t i = 0; i < n_out; i++)
        idx[i] = keys[i].tensor;
    free(keys);
    for (size_t i = 0; i < n_out; i++) {
        const struct st_tensor *t = &m->tensors[idx[i]];
        r = st_writer_declare(w, t->name, t->dtype, t->n_dims, t->shape, err);
        if (r < 0)
            goto out;
    }
    r = st_writer_begin_data(w, err);
    if (r < 0)
        goto out;
    for (size_t i = 0; i < n_out; i++) {
        const struct st_tensor *t = &m->tensors[idx[i]];
        r = st_writer_write_data(w, t->data, (size_t)t->nbytes, err);
        if (r < 0) {
            ifd_error_prefix(err, "tensor '%s'", t->name);
            goto out;
        }
    }
    r = st_writer_finish(w, err);
    if (r < 0)
        goto out;
    if (ret_size)
        *ret_size = 8 + w->header_bytes + w->total;
out:
    st_writer_destroy(w);
    free(taken);
    free(idx);
    return r;
}
