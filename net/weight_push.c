#include "weight_push.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <zstd.h>

#include "base/buf.h"
#include "base/clock.h"
#include "model/safetensors.h"

#define WP_CHUNK (1u << 20) /* bytes per chunk sent; <= NET_CHUNK_MAX */
_Static_assert(WP_CHUNK <= NET_CHUNK_MAX, "chunk within the protocol limit");

/* ---- content hash ---- */

static void hash_begin(crypto_generichash_state *h, enum ifd_dtype dtype, int n_dims, const int64_t *shape)
{
    crypto_generichash_init(h, NULL, 0, 32);
    static const char domain[] = "inferd-tensor-v1";
    crypto_generichash_update(h, (const uint8_t *)domain, sizeof(domain));
    uint8_t d[2] = {(uint8_t)dtype, (uint8_t)n_dims};
    crypto_generichash_update(h, d, 2);
    for (int i = 0; i < n_dims; i++) {
        uint64_t s = htole64((uint64_t)shape[i]);
        crypto_generichash_update(h, (const uint8_t *)&s, 8);
    }
}

static void hex32(const uint8_t h[32], char out[65])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[h[i] >> 4];
        out[2 * i + 1] = digits[h[i] & 15];
    }
    out[64] = '\0';
}

/* The master reads a worker's tensors only to hash and send them: ask the
 * kernel to reclaim those pages from its resident set afterwards (a later
 * push faults them in again). MADV_PAGEOUT never loses data, whatever the
 * memory is (a file mapping is dropped, anonymous memory swapped), unlike
 * MADV_DONTNEED, which would zero a checkpoint held in the heap. */
static void release_pages(const void *p, uint64_t len)
{
#ifdef MADV_PAGEOUT
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t b = ((uintptr_t)p + page - 1) & ~(page - 1), e = ((uintptr_t)p + len) & ~(page - 1);
    if (e > b)
        madvise((void *)b, e - b, MADV_PAGEOUT);
#else
    (void)p;
    (void)len;
#endif
}

/* ---- manifest ---- */

struct wp_manifest {
    struct net_tensor_desc *t; /* [n]; names owned (from model_tensor_names) */
    const void **data;         /* [n] into the mapping */
    char **names;
    size_t n;
    uint64_t bytes;
    int first, last;
};

int wp_manifest_create(const struct model *m, int first, int last, struct wp_manifest **ret, ifd_error *err)
{
    if (sodium_init() < 0)
        return ifd_error_set(err, -EIO, "libsodium failed to initialise");
    struct wp_manifest *mf = calloc(1, sizeof(*mf));
    if (!mf)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    int r = model_tensor_names(m, first, last, false, false, &mf->names, &mf->n, err);
    if (r < 0) {
        free(mf);
        return r;
    }
    mf->first = first;
    mf->last = last;
    mf->t = calloc(mf->n ? mf->n : 1, sizeof(*mf->t));
    mf->data = calloc(mf->n ? mf->n : 1, sizeof(*mf->data));
    if (!mf->t || !mf->data) {
        wp_manifest_destroy(mf);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < mf->n; i++) {
        const struct st_tensor *st = st_find(m->st, mf->names[i]);
        if (!st) {
            wp_manifest_destroy(mf);
            return ifd_error_set(err, -ENOENT, "tensor '%s' is not in the checkpoint", mf->names[i]);
        }
        if (st->n_dims > NET_MAX_DIMS) {
            wp_manifest_destroy(mf);
            return ifd_error_set(err, -EINVAL, "tensor '%s' has %d dimensions", mf->names[i], st->n_dims);
        }
        struct net_tensor_desc *t = &mf->t[i];
        t->name = mf->names[i];
        t->dtype = (uint8_t)st->dtype;
        t->n_dims = st->n_dims;
        memcpy(t->shape, st->shape, sizeof(int64_t) * (size_t)st->n_dims);
        t->nbytes = st->nbytes;
        mf->data[i] = st->data;
        crypto_generichash_state h;
        hash_begin(&h, st->dtype, st->n_dims, st->shape);
        crypto_generichash_update(&h, st->data, st->nbytes);
        crypto_generichash_final(&h, t->hash, 32);
        release_pages(st->data, st->nbytes);
        mf->bytes += st->nbytes;
    }
    *ret = mf;
    return 0;
}

void wp_manifest_destroy(struct wp_manifest *mf)
{
    if (!mf)
        return;
    model_tensor_names_free(mf->names);
    free(mf->t);
    free(mf->data);
    free(mf);
}

uint64_t wp_manifest_bytes(const struct wp_manifest *mf) { return mf->bytes; }
size_t wp_manifest_count(const struct wp_manifest *mf) { return mf->n; }
const struct net_tensor_desc *wp_manifest_tensor(const struct wp_manifest *mf, size_t i, const void **ret_data)
{
    if (i >= mf->n)
        return NULL;
    if (ret_data)
        *ret_data = mf->data[i];
    return &mf->t[i];
}

/* Receives one message of type want, turning an ERROR into a failure. */
static int recv_msg(struct net_conn *c, uint16_t want, const uint8_t **p, size_t *len, int timeout_ms, ifd_error *err)
{
    uint16_t type;
    int r = net_conn_recv(c, &type, p, len, timeout_ms, err);
    if (r < 0)
        return r;
    if (type == NET_MSG_ERROR) {
        struct net_error_msg em;
        if (net_error_decode(*p, *len, &em, err) < 0)
            return -EBADMSG;
        return ifd_error_set(err, em.code < 0 ? em.code : -EIO, "worker %s: %.*s", net_conn_peer(c),
                             (int)em.msg_len, em.msg);
    }
    if (type != want)
        return ifd_error_set(err, -EPROTO, "worker %s: expected %s, got %s", net_conn_peer(c), net_msg_name(want),
                             net_msg_name(type));
    return 0;
}

int wp_push(struct net_conn *c, const struct wp_manifest *mf, const struct wp_push_params *p,
            struct wp_push_stats *ret, ifd_error *err)
{
    uint64_t t0 = ifd_now_ns();
    struct wp_push_stats st = {.tensors_total = mf->n};
    struct net_assign a = {
        .layer_first = (uint32_t)mf->first,
        .layer_last = (uint32_t)mf->last,
        .n_layers = (uint32_t)p->n_layers,
        .n_seq_max = (uint32_t)p->n_seq_max,
        .n_ctx = (uint32_t)p->n_ctx,
        .model_name = p->model_name,
        .config_json = p->config_json,
        .config_len = (uint32_t)p->config_len,
        .n_tensors = (uint32_t)mf->n,
        .tensors = mf->t,
    };
    /* Model identity: config and the content of every tensor of the range. */
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    crypto_generichash_update(&h, (const uint8_t *)p->config_json, p->config_len);
    for (size_t i = 0; i < mf->n; i++)
        crypto_generichash_update(&h, mf->t[i].hash, 32);
    crypto_generichash_final(&h, a.model_hash, 32);

    struct net_buf b = {0};
    uint8_t *zbuf = NULL;
    ZSTD_CCtx *zc = NULL;
    int r = net_assign_encode(&b, &a);
    if (r < 0) {
        r = ifd_error_set(err, r, "cannot encode the assignment");
        goto out;
    }
    if ((r = net_conn_send(c, NET_MSG_ASSIGN, b.data, b.len, p->timeout_ms, err)) < 0)
        goto out;
    const uint8_t *pl;
    size_t len;
    if ((r = recv_msg(c, NET_MSG_HAVE, &pl, &len, p->timeout_ms, err)) < 0)
        goto out;
    const uint8_t *have;
    if ((r = net_have_decode(pl, len, (uint32_t)mf->n, &have, err)) < 0)
        goto out;
    /* Copy HAVE out of the receive buffer before anything else is received. */
    uint64_t *have_v = calloc(mf->n ? mf->n : 1, sizeof(uint64_t));
    if (!have_v) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < mf->n; i++)
        have_v[i] = net_have_get(have, (uint32_t)i);
    size_t zcap = ZSTD_compressBound(WP_CHUNK);
    zbuf = malloc(zcap);
    zc = ZSTD_createCCtx();
    if (!zbuf || !zc) {
        free(have_v);
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    uint64_t bytes_total = 0, bytes_done = 0;
    for (size_t i = 0; i < mf->n; i++)
        bytes_total += mf->t[i].nbytes - (have_v[i] <= mf->t[i].nbytes ? have_v[i] : 0);
    for (size_t i = 0; i < mf->n && r >= 0; i++) {
        const struct net_tensor_desc *t = &mf->t[i];
        uint64_t off = have_v[i];
        if (off > t->nbytes) {
            r = ifd_error_set(err, -EPROTO, "worker %s claims %llu bytes of '%s' (%llu bytes)", net_conn_peer(c),
                              (unsigned long long)off, t->name, (unsigned long long)t->nbytes);
            break;
        }
        if (off == t->nbytes) {
            st.tensors_cached++;
        } else {
            st.tensors_sent++;
        }
        while (off < t->nbytes) {
            uint32_t n = (uint32_t)(t->nbytes - off < WP_CHUNK ? t->nbytes - off : WP_CHUNK);
            const uint8_t *src = (const uint8_t *)mf->data[i] + off;
            size_t zn = ZSTD_compressCCtx(zc, zbuf, zcap, src, n, 1);
            bool use_z = !ZSTD_isError(zn) && zn < n - n / 16;
            struct net_chunk ch = {.index = (uint32_t)i, .flags = use_z ? NET_CHUNK_F_ZSTD : 0, .offset = off,
                                   .raw_len = n, .data_len = use_z ? (uint32_t)zn : n};
            /* The worker sends nothing while it receives chunks, except an
             * ERROR when it cannot store one (disk full, quota): read it
             * now, so the failure carries its cause, not "connection reset". */
            if (net_conn_wait_readable(c, 0) > 0) {
                r = recv_msg(c, NET_MSG_HAVE, &pl, &len, p->timeout_ms, err);
                if (r >= 0)
                    r = ifd_error_set(err, -EPROTO, "worker %s: unexpected message during the weight push",
                                      net_conn_peer(c));
                break;
            }
            net_chunk_encode_header(&b, &ch);
            r = net_conn_send2(c, NET_MSG_TENSOR_CHUNK, b.data, b.len, use_z ? zbuf : src, ch.data_len,
                               p->timeout_ms, err);
            if (r < 0)
                break;
            off += n;
            st.bytes_raw += n;
            st.bytes_wire += ch.data_len;
            bytes_done += n;
        }
        release_pages(mf->data[i], t->nbytes);
        if (p->progress)
            p->progress(p->progress_ctx, i + 1, mf->n, bytes_done, bytes_total);
    }
    free(have_v);
    if (r < 0)
        goto out;
    st.push_ms = (double)(ifd_now_ns() - t0) / 1e6;
    uint64_t t1 = ifd_now_ns();
    if ((r = net_conn_send(c, NET_MSG_LOAD, NULL, 0, p->timeout_ms, err)) < 0)
        goto out;
    if ((r = recv_msg(c, NET_MSG_READY, &pl, &len, p->timeout_ms * 10, err)) < 0)
        goto out;
    struct net_ready rd;
    if ((r = net_ready_decode(pl, len, &rd, err)) < 0)
        goto out;
    st.load_ms = (double)(ifd_now_ns() - t1) / 1e6;
    st.worker_rss = rd.rss_bytes;
    if (ret)
        *ret = st;
out:
    ZSTD_freeCCtx(zc);
    free(zbuf);
    net_buf_finish(&b);
    return r;
}

/* ---- worker cache ---- */

struct wp_cache {
    int dirfd;
    char *dir;
    uint8_t *zbuf; /* decompression target, NET_CHUNK_MAX */
    ZSTD_DCtx *zd;
    uint64_t max_bytes; /* quota of the files in the directory; 0: half of its file system */
};

/* Every file of the cache is opened relative to the directory, never
 * following a symbolic link: a link planted as <hash>.part must not make the
 * worker append to (or hash, or serve) some other file. */
#define CACHE_OPEN_FLAGS (O_CLOEXEC | O_NOFOLLOW)

static bool is_cache_name(const char *name, const char *ext)
{
    size_t n = strlen(name), e = strlen(ext);
    if (n != 64 + 1 + e || name[64] != '.' || strcmp(name + 65, ext) != 0)
        return false;
    for (int i = 0; i < 64; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
            return false;
    return true;
}

/* Calls fn for every regular cache file (<hash>.bin / <hash>.part) of the
 * directory; fn returns < 0 to stop. */
static int cache_each(struct wp_cache *c, int (*fn)(struct wp_cache *c, const char *name, const struct stat *st,
                                                   void *ctx), void *ctx)
{
    int fd = openat(c->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        int r = -errno;
        close(fd);
        return r;
    }
    int r = 0;
    struct dirent *e;
    while (r >= 0 && (e = readdir(d))) {
        if (!is_cache_name(e->d_name, "bin") && !is_cache_name(e->d_name, "part"))
            continue;
        struct stat st;
        if (fstatat(c->dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        r = fn(c, e->d_name, &st, ctx);
    }
    closedir(d);
    return r;
}

static int remove_part(struct wp_cache *c, const char *name, const struct stat *st, void *ctx)
{
    (void)st;
    size_t *n = ctx;
    if (is_cache_name(name, "part") && unlinkat(c->dirfd, name, 0) == 0)
        (*n)++;
    return 0;
}

size_t wp_cache_remove_partial(struct wp_cache *c)
{
    size_t n = 0;
    cache_each(c, remove_part, &n);
    return n;
}

int wp_cache_open(const char *dir, uint64_t max_bytes, struct wp_cache **ret, ifd_error *err)
{
    if (sodium_init() < 0)
        return ifd_error_set(err, -EIO, "libsodium failed to initialise");
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return ifd_error_set(err, -errno, "cache directory '%s': %s", dir, strerror(errno));
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return ifd_error_set(err, -errno, "cache directory '%s': %s", dir,
                             errno == ELOOP || errno == ENOTDIR ? "not a directory (or a symbolic link)" : strerror(errno));
    /* What is in the directory becomes this worker's weights: nobody else
     * may be able to put files there (sshd's StrictModes, for the same reason). */
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return ifd_error_set(err, -e, "cache directory '%s': %s", dir, strerror(e));
    }
    if (st.st_uid != geteuid()) {
        close(fd);
        return ifd_error_set(err, -EPERM, "cache directory '%s' is owned by uid %u, not by this user (uid %u)", dir,
                             (unsigned)st.st_uid, (unsigned)geteuid());
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        close(fd);
        return ifd_error_set(err, -EPERM, "cache directory '%s' is writable by group or others (mode %04o): "
                             "chmod go-w it", dir, (unsigned)(st.st_mode & 07777));
    }
    struct wp_cache *c = calloc(1, sizeof(*c));
    if (!c || !(c->dir = strdup(dir)) || !(c->zbuf = malloc(NET_CHUNK_MAX)) || !(c->zd = ZSTD_createDCtx())) {
        close(fd);
        if (c) {
            free(c->dir);
            free(c->zbuf);
            free(c);
        }
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    c->dirfd = fd;
    c->max_bytes = max_bytes;
    /* A .part left by a previous run is a transfer nobody will finish. */
    wp_cache_remove_partial(c);
    *ret = c;
    return 0;
}

uint64_t wp_cache_max_bytes(const struct wp_cache *c)
{
    if (c->max_bytes)
        return c->max_bytes;
    /* The default is taken anew each time, so that a file system grown (or a
     * larger one mounted) under a running worker counts at the next ASSIGN. */
    struct statvfs vfs;
    uint64_t half = 0;
    if (fstatvfs(c->dirfd, &vfs) == 0)
        half = (uint64_t)vfs.f_blocks * vfs.f_frsize / 2;
    return half ? half : UINT64_MAX;
}

void wp_cache_close(struct wp_cache *c)
{
    if (!c)
        return;
    close(c->dirfd);
    ZSTD_freeDCtx(c->zd);
    free(c->zbuf);
    free(c->dir);
    free(c);
}

static void cache_name(const uint8_t hash[32], const char *ext, char out[80])
{
    char hex[65];
    hex32(hash, hex);
    snprintf(out, 80, "%s.%s", hex, ext);
}

/* Size of a regular cache file, -1 if absent (or not a regular file). */
static int64_t file_size_at(int dirfd, const char *name)
{
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
        return -1;
    return (int64_t)st.st_size;
}

/* Bytes the file system can still give, keeping a twentieth of it (at most
 * 1 GiB) free for everything else on the host. */
static uint64_t disk_room(int dirfd)
{
    struct statvfs v;
    if (fstatvfs(dirfd, &v) < 0)
        return UINT64_MAX; /* unknown: the write itself will fail with ENOSPC */
    uint64_t avail = (uint64_t)v.f_bavail * v.f_frsize, size = (uint64_t)v.f_blocks * v.f_frsize;
    uint64_t reserve = size / 20 < (1ull << 30) ? size / 20 : (1ull << 30);
    return avail > reserve ? avail - reserve : 0;
}

/* ---- quota ---- */

struct cache_file {
    char name[80];
    uint64_t size;
    int64_t mtime_ns;
};

struct cache_scan {
    const struct net_assign *a;
    struct cache_file *unused; /* .bin files the assignment does not list */
    size_t n_unused, cap_unused;
    uint64_t total;            /* bytes of all cache files */
};

static bool assignment_lists(const struct net_assign *a, const char *name)
{
    char n[80];
    for (uint32_t i = 0; i < a->n_tensors; i++) {
        cache_name(a->tensors[i].hash, "bin", n);
        if (strncmp(n, name, 64) == 0)
            return true;
    }
    return false;
}

static int scan_file(struct wp_cache *c, const char *name, const struct stat *st, void *ctx)
{
    (void)c;
    struct cache_scan *cs = ctx;
    if (!S_ISREG(st->st_mode))
        return 0;
    cs->total += (uint64_t)st->st_size;
    if (!is_cache_name(name, "bin") || assignment_lists(cs->a, name))
        return 0;
    if (cs->n_unused == cs->cap_unused) {
        size_t cap = cs->cap_unused ? cs->cap_unused * 2 : 64;
        struct cache_file *n = realloc(cs->unused, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        cs->unused = n;
        cs->cap_unused = cap;
    }
    struct cache_file *f = &cs->unused[cs->n_unused++];
    snprintf(f->name, sizeof(f->name), "%s", name);
    f->size = (uint64_t)st->st_size;
    f->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    return 0;
}

static int by_mtime(const void *x, const void *y)
{
    const struct cache_file *a = x, *b = y;
    return a->mtime_ns < b->mtime_ns ? -1 : a->mtime_ns > b->mtime_ns;
}

int wp_cache_reserve(struct wp_cache *c, const struct net_assign *a, size_t *ret_pruned, ifd_error *err)
{
    const uint64_t quota = wp_cache_max_bytes(c);
    uint64_t need = 0, held = 0;
    for (uint32_t i = 0; i < a->n_tensors; i++) {
        const struct net_tensor_desc *t = &a->tensors[i];
        if (t->nbytes > UINT64_MAX - need)
            return ifd_error_set(err, -EFBIG, "assignment of more than 2^64 bytes");
        need += t->nbytes;
        char name[80];
        cache_name(t->hash, "bin", name);
        int64_t s = file_size_at(c->dirfd, name);
        if (s >= 0 && (uint64_t)s == t->nbytes) {
            held += t->nbytes;
            continue;
        }
        cache_name(t->hash, "part", name);
        s = file_size_at(c->dirfd, name);
        if (s > 0 && (uint64_t)s < t->nbytes)
            held += (uint64_t)s;
    }
    if (need > quota)
        return ifd_error_set(err, -EFBIG, "the assignment needs %llu bytes of tensors, more than the cache's quota of "
                             "%llu ([node] cache_max_bytes)", (unsigned long long)need,
                             (unsigned long long)quota);
    struct cache_scan cs = {.a = a};
    int r = cache_each(c, scan_file, &cs);
    if (r < 0) {
        free(cs.unused);
        return ifd_error_set(err, r, "cache '%s': %s", c->dir, strerror(-r));
    }
    /* Least recently used first (wp_cache_have touches what it reports). */
    if (cs.n_unused > 1) /* qsort of NULL is undefined, even for 0 items */
        qsort(cs.unused, cs.n_unused, sizeof(*cs.unused), by_mtime);
    uint64_t missing = need - held, room = disk_room(c->dirfd);
    size_t pruned = 0;
    for (size_t i = 0; i < cs.n_unused && (cs.total + missing > quota || missing > room); i++) {
        if (unlinkat(c->dirfd, cs.unused[i].name, 0) < 0)
            continue;
        cs.total -= cs.unused[i].size;
        pruned++;
        room = disk_room(c->dirfd);
    }
    free(cs.unused);
    if (ret_pruned)
        *ret_pruned = pruned;
    if (cs.total + missing > quota)
        return ifd_error_set(err, -ENOSPC, "cache '%s': %llu more bytes would exceed the quota of %llu "
                             "([node] cache_max_bytes)", c->dir, (unsigned long long)missing,
                             (unsigned long long)quota);
    if (missing > room)
        return ifd_error_set(err, -ENOSPC, "cache '%s': %llu more bytes do not fit on its file system "
                             "(%llu bytes usable)", c->dir, (unsigned long long)missing, (unsigned long long)room);
    return 0;
}

void wp_cache_have(struct wp_cache *c, const struct net_assign *a, uint64_t *have)
{
    for (uint32_t i = 0; i < a->n_tensors; i++) {
        const struct net_tensor_desc *t = &a->tensors[i];
        char name[80];
        cache_name(t->hash, "bin", name);
        int64_t s = file_size_at(c->dirfd, name);
        if (s >= 0 && (uint64_t)s == t->nbytes) {
            have[i] = t->nbytes;
            /* Used now: the mtime orders the cache for pruning (LRU). */
            utimensat(c->dirfd, name, NULL, AT_SYMLINK_NOFOLLOW);
            continue;
        }
        cache_name(t->hash, "part", name);
        s = file_size_at(c->dirfd, name);
        have[i] = s > 0 && (uint64_t)s < t->nbytes ? (uint64_t)s : 0;
    }
}

/* Hashes a whole cache file; compares with want. */
static int verify_file(struct wp_cache *c, const struct net_tensor_desc *t, const char *name, ifd_error *err)
{
    int fd = openat(c->dirfd, name, O_RDONLY | CACHE_OPEN_FLAGS);
    if (fd < 0)
        return ifd_error_set(err, -errno, "cache '%s/%s': %s", c->dir, name, strerror(errno));
    crypto_generichash_state h;
    hash_begin(&h, (enum ifd_dtype)t->dtype, t->n_dims, t->shape);
    uint64_t total = 0;
    for (;;) {
        ssize_t k = read(fd, c->zbuf, NET_CHUNK_MAX);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int e = errno;
            close(fd);
            return ifd_error_set(err, -e, "cache '%s/%s': %s", c->dir, name, strerror(e));
        }
        if (k == 0)
            break;
        crypto_generichash_update(&h, c->zbuf, (size_t)k);
        total += (uint64_t)k;
    }
    close(fd);
    uint8_t got[32];
    crypto_generichash_final(&h, got, 32);
    if (total != t->nbytes || sodium_memcmp(got, t->hash, 32) != 0)
        return ifd_error_set(err, -EBADMSG, "tensor '%s': content does not match its hash", t->name);
    return 0;
}

int wp_cache_put_chunk(struct wp_cache *c, const struct net_assign *a, const struct net_chunk *ch, ifd_error *err)
{
    if (ch->index >= a->n_tensors)
        return ifd_error_set(err, -EBADMSG, "TENSOR_CHUNK for tensor %u of %u", ch->index, a->n_tensors);
    const struct net_tensor_desc *t = &a->tensors[ch->index];
    if (ch->offset > t->nbytes || ch->raw_len > t->nbytes - ch->offset)
        return ifd_error_set(err, -EBADMSG, "TENSOR_CHUNK: bytes [%llu, +%u) outside tensor '%s' of %llu bytes",
                             (unsigned long long)ch->offset, ch->raw_len, t->name, (unsigned long long)t->nbytes);
    char part[80], bin[80];
    cache_name(t->hash, "part", part);
    cache_name(t->hash, "bin", bin);
    int64_t have = file_size_at(c->dirfd, part);
    if (have < 0)
        have = 0;
    if ((uint64_t)have != ch->offset)
        return ifd_error_set(err, -EBADMSG, "TENSOR_CHUNK for '%s' at %llu, the worker holds %lld bytes", t->name,
                             (unsigned long long)ch->offset, (long long)have);
    const uint8_t *data = ch->data;
    if (ch->flags & NET_CHUNK_F_ZSTD) {
        unsigned long long fcs = ZSTD_getFrameContentSize(ch->data, ch->data_len);
        if (fcs != ch->raw_len)
            return ifd_error_set(err, -EBADMSG, "TENSOR_CHUNK: compressed frame holds %llu bytes, header says %u", fcs,
                                 ch->raw_len);
        size_t n = ZSTD_decompressDCtx(c->zd, c->zbuf, ch->raw_len, ch->data, ch->data_len);
        if (ZSTD_isError(n) || n != ch->raw_len)
            return ifd_error_set(err, -EBADMSG, "TENSOR_CHUNK: bad zstd data for '%s'", t->name);
        data = c->zbuf;
    }
    if (ch->offset == 0 && t->nbytes > disk_room(c->dirfd))
        return ifd_error_set(err, -ENOSPC, "cache '%s': no room for tensor '%s' (%llu bytes) on its file system",
                             c->dir, t->name, (unsigned long long)t->nbytes);
    int fd = openat(c->dirfd, part, O_WRONLY | O_CREAT | O_APPEND | CACHE_OPEN_FLAGS, 0600);
    if (fd < 0)
        return ifd_error_set(err, -errno, "cache '%s/%s': %s", c->dir, part,
                             errno == ELOOP ? "is a symbolic link (refused)" : strerror(errno));
    struct stat fst;
    if (fstat(fd, &fst) < 0 || !S_ISREG(fst.st_mode) || (uint64_t)fst.st_size != ch->offset) {
        /* Not what file_size_at saw a moment ago: something else writes here. */
        close(fd);
        return ifd_error_set(err, -EBADMSG, "cache '%s/%s' is not a regular file of %llu bytes", c->dir, part,
                             (unsigned long long)ch->offset);
    }
    size_t put = 0;
    while (put < ch->raw_len) {
        ssize_t k = write(fd, data + put, ch->raw_len - put);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int e = errno;
            close(fd);
            return ifd_error_set(err, -e, "cache '%s/%s': %s", c->dir, part, strerror(e));
        }
        put += (size_t)k;
    }
    close(fd);
    if (ch->offset + ch->raw_len < t->nbytes)
        return 0;
    int r = verify_file(c, t, part, err);
    if (r < 0) {
        unlinkat(c->dirfd, part, 0);
        return r;
    }
    if (renameat(c->dirfd, part, c->dirfd, bin) < 0)
        return ifd_error_set(err, -errno, "cache '%s/%s': %s", c->dir, bin, strerror(errno));
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -errno;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int wp_cache_seed_local(struct wp_cache *c, const struct net_assign *a, const st_model *local,
                        size_t *ret_taken, size_t *ret_mismatched, ifd_error *err)
{
    size_t taken = 0, mismatched = 0;
    for (uint32_t i = 0; i < a->n_tensors; i++) {
        const struct net_tensor_desc *t = &a->tensors[i];
        char bin[80], part[80];
        cache_name(t->hash, "bin", bin);
        cache_name(t->hash, "part", part);
        int64_t s = file_size_at(c->dirfd, bin);
        if (s >= 0 && (uint64_t)s == t->nbytes)
            continue;
        const struct st_tensor *lt = st_find(local, t->name);
        if (!lt)
            continue;
        bool same_shape = (uint8_t)lt->dtype == t->dtype && lt->n_dims == t->n_dims && lt->nbytes == t->nbytes;
        for (int d = 0; same_shape && d < t->n_dims; d++)
            same_shape = lt->shape[d] == t->shape[d];
        uint8_t got[32];
        if (same_shape) {
            crypto_generichash_state h;
            hash_begin(&h, lt->dtype, lt->n_dims, lt->shape);
            crypto_generichash_update(&h, lt->data, lt->nbytes);
            crypto_generichash_final(&h, got, 32);
        }
        if (!same_shape || sodium_memcmp(got, t->hash, 32) != 0) {
            mismatched++;
            continue;
        }
        int fd = openat(c->dirfd, part, O_WRONLY | O_CREAT | O_TRUNC | CACHE_OPEN_FLAGS, 0600);
        if (fd < 0)
            return ifd_error_set(err, -errno, "cache '%s/%s': %s", c->dir, part, strerror(errno));
        int r = write_all(fd, lt->data, lt->nbytes);
        close(fd);
        if (r < 0 || renameat(c->dirfd, part, c->dirfd, bin) < 0) {
            r = r < 0 ? r : -errno;
            unlinkat(c->dirfd, part, 0);
            return ifd_error_set(err, r, "cache '%s/%s': %s", c->dir, bin, strerror(-r));
        }
        taken++;
    }
    *ret_taken = taken;
    *ret_mismatched = mismatched;
    return 0;
}

/* The image being written, in an anonymous mapping (st_open_image() takes
 * it over, and can give back the pages of weights the CPU stage copied). */
struct membuf {
    uint8_t *p;
    size_t len, cap; /* cap: the mapping's length */
};

static int membuf_write(void *ctx, const void *buf, size_t len)
{
    struct membuf *m = ctx;
    if (len > m->cap - m->len) {
        if (len > SIZE_MAX / 2 - m->len)
            return -ENOMEM;
        const size_t cap = (m->len + len) * 2;
        void *n = mremap(m->p, m->cap, cap, MREMAP_MAYMOVE);
        if (n == MAP_FAILED)
            return -ENOMEM;
        m->p = n;
        m->cap = cap;
    }
    memcpy(m->p + m->len, buf, len);
    m->len += len;
    return 0;
}

int wp_cache_build_image(struct wp_cache *c, const struct net_assign *a, void **ret_image, size_t *ret_len,
                         ifd_error *err)
{
    uint64_t data_bytes = 0;
    for (uint32_t i = 0; i < a->n_tensors; i++)
        data_bytes += a->tensors[i].nbytes;
    /* Reserve the data plus room for the header up front: the image is the
     * worker's weights, and doubling a buffer that size would briefly need
     * twice the memory. */
    struct membuf m = {0};
    m.cap = data_bytes + 64 * (size_t)a->n_tensors + 65536;
    m.p = mmap(NULL, m.cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m.p == MAP_FAILED)
        return ifd_error_set(err, -ENOMEM, "out of memory for %llu bytes of weights", (unsigned long long)data_bytes);
    st_writer *w;
    int r = st_writer_create(membuf_write, &m, &w);
    if (r < 0) {
        munmap(m.p, m.cap);
        return ifd_error_set(err, r, "out of memory");
    }
    st_writer_add_metadata(w, "format", "pt");
    for (uint32_t i = 0; i < a->n_tensors && r >= 0; i++)
        r = st_writer_declare(w, a->tensors[i].name, (enum ifd_dtype)a->tensors[i].dtype, a->tensors[i].n_dims,
                              a->tensors[i].shape, err);
    if (r >= 0)
        r = st_writer_begin_data(w, err);
    for (uint32_t i = 0; i < a->n_tensors && r >= 0; i++) {
        const struct net_tensor_desc *t = &a->tensors[i];
        char bin[80];
        cache_name(t->hash, "bin", bin);
        int fd = openat(c->dirfd, bin, O_RDONLY | CACHE_OPEN_FLAGS);
        if (fd < 0) {
            r = ifd_error_set(err, -ENOENT, "tensor '%s' is not in the cache", t->name);
            break;
        }
        crypto_generichash_state h;
        hash_begin(&h, (enum ifd_dtype)t->dtype, t->n_dims, t->shape);
        uint64_t total = 0;
        for (;;) {
            ssize_t k = read(fd, c->zbuf, NET_CHUNK_MAX);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0) {
                if (k < 0)
                    r = ifd_error_set(err, -errno, "cache '%s/%s': %s", c->dir, bin, strerror(errno));
                break;
            }
            crypto_generichash_update(&h, c->zbuf, (size_t)k);
            total += (uint64_t)k;
            if (total > t->nbytes) {
                r = ifd_error_set(err, -EBADMSG, "cache file of '%s' is too long", t->name);
                break;
            }
            r = st_writer_write_data(w, c->zbuf, (size_t)k, err);
            if (r < 0)
                break;
        }
        close(fd);
        uint8_t got[32];
        crypto_generichash_final(&h, got, 32);
        if (r >= 0 && (total != t->nbytes || sodium_memcmp(got, t->hash, 32) != 0)) {
            /* Corrupted on disk: drop it so that the next HAVE asks for it again. */
            unlinkat(c->dirfd, bin, 0);
            r = ifd_error_set(err, -EBADMSG, "cached tensor '%s' is corrupt (removed; it will be sent again)",
                              t->name);
        }
    }
    if (r >= 0)
        r = st_writer_finish(w, err);
    st_writer_destroy(w);
    if (r < 0) {
        munmap(m.p, m.cap);
        return r;
    }
    /* to the pages it uses: st_close() unmaps the image's length */
    void *fit = mremap(m.p, m.cap, m.len, 0);
    if (fit == MAP_FAILED) {
        munmap(m.p, m.cap);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    *ret_image = fit;
    *ret_len = m.len;
    return 0;
}
