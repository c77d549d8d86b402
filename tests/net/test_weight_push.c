/* test_weight_push - pushing a layer range's tensors to a worker cache:
 * the full push, a second push that sends nothing, a stale partial transfer
 * dropped, malformed chunks refused without touching the cache, and the
 * cache's defences: symbolic links, unsafe directory, quota, LRU pruning. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "common/golden_models.h"
#include "common/test_util.h"
#include "conn.h"
#include "model/model.h"
#include "proto.h"
#include "model/safetensors.h"
#include "weight_push.h"

/* The worker's side of the setup exchange, on a connection: what
 * daemon/worker.c does, minus building a stage (the image is opened and its
 * tensors counted instead). */
struct fake_worker {
    struct net_conn *c;
    struct wp_cache *cache;
    int ret;
    ifd_error err;
    size_t image_tensors;
};

static void *fake_worker_main(void *p)
{
    struct fake_worker *w = p;
    struct net_assign a = {0};
    struct net_buf b = {0};
    int r;
    for (;;) {
        uint16_t type;
        const uint8_t *pl;
        size_t len;
        if ((r = net_conn_recv(w->c, &type, &pl, &len, 5000, &w->err)) < 0)
            break;
        if (type == NET_MSG_ASSIGN) {
            net_assign_finish(&a);
            if ((r = net_assign_decode(pl, len, &a, &w->err)) < 0)
                break;
            uint64_t have[256];
            cr_assert_leq(a.n_tensors, 256);
            wp_cache_have(w->cache, &a, have);
            net_have_encode(&b, have, a.n_tensors);
            r = net_conn_send(w->c, NET_MSG_HAVE, b.data, b.len, 5000, &w->err);
        } else if (type == NET_MSG_TENSOR_CHUNK) {
            struct net_chunk ch;
            r = net_chunk_decode(pl, len, &ch, &w->err);
            if (r >= 0)
                r = wp_cache_put_chunk(w->cache, &a, &ch, &w->err);
        } else if (type == NET_MSG_LOAD) {
            void *img;
            size_t n = 0;
            st_model *st;
            r = wp_cache_build_image(w->cache, &a, &img, &n, &w->err);
            if (r >= 0 && (r = st_open_image(img, n, "pushed", &st, &w->err)) >= 0) {
                w->image_tensors = st_count(st);
                st_close(st);
            }
            struct net_ready rd = {.weight_bytes = n};
            net_ready_encode(&b, &rd);
            r = net_conn_send(w->c, NET_MSG_READY, b.data, b.len, 5000, &w->err);
            break;
        }
        if (r < 0)
            break;
    }
    w->ret = r;
    net_assign_finish(&a);
    net_buf_finish(&b);
    return NULL;
}

static int push_once(const struct model *m, const struct wp_manifest *mf, const char *cache_dir,
                     struct wp_push_stats *st, size_t *image_tensors)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct fake_worker w = {0};
    struct net_conn *mc;
    ifd_error err;
    cr_assert_eq(net_conn_create(sv[0], "master", &mc, &err), 0);
    cr_assert_eq(net_conn_create(sv[1], "worker", &w.c, &err), 0);
    cr_assert_eq(wp_cache_open(cache_dir, 0, &w.cache, &err), 0, "%s", err.msg);
    pthread_t th;
    pthread_create(&th, NULL, fake_worker_main, &w);
    const char *cfg = "{}";
    struct wp_push_params pp = {.model_name = "tiny", .config_json = cfg, .config_len = 2,
                                .n_layers = m->cfg.n_layers, .n_seq_max = 1, .n_ctx = 16, .timeout_ms = 5000};
    int r = wp_push(mc, mf, &pp, st, &err);
    pthread_join(th, NULL);
    cr_assert_eq(r, 0, "push: %s / worker: %s", err.msg, w.err.msg);
    cr_assert_geq(w.ret, 0, "worker: %s", w.err.msg);
    *image_tensors = w.image_tensors;
    wp_cache_close(w.cache);
    net_conn_destroy(mc);
    net_conn_destroy(w.c);
    return r;
}

/* The first file of the cache whose name contains ext (malloc'd path). */
static char *find_cache_file(const char *dir, const char *ext)
{
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    struct dirent *e;
    char path[512] = "";
    while ((e = readdir(d)))
        if (strstr(e->d_name, ext) && !path[0])
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    closedir(d);
    return path[0] ? strdup(path) : NULL;
}

Test(weight_push, full_then_cached_then_resumed)
{
    struct model *m = golden_load_model("tinystories-656k-bf16-sharded");
    struct wp_manifest *mf;
    ifd_error err;
    cr_assert_eq(wp_manifest_create(m, 1, 2, &mf, &err), 0, "%s", err.msg);
    cr_assert_gt(wp_manifest_count(mf), 0);
    char dir[] = "/tmp/inferd-wp-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char cache[64];
    snprintf(cache, sizeof(cache), "%s/cache", dir);

    struct wp_push_stats st;
    size_t n_img;
    push_once(m, mf, cache, &st, &n_img);
    cr_assert_eq(st.tensors_sent, wp_manifest_count(mf));
    cr_assert_eq(st.tensors_cached, 0);
    cr_assert_eq(st.bytes_raw, wp_manifest_bytes(mf));
    cr_assert_eq(n_img, wp_manifest_count(mf), "the worker's image holds exactly its tensors");

    /* Again: the worker holds everything, nothing is sent. */
    push_once(m, mf, cache, &st, &n_img);
    cr_assert_eq(st.tensors_sent, 0);
    cr_assert_eq(st.tensors_cached, wp_manifest_count(mf));
    cr_assert_eq(st.bytes_raw, 0);
    cr_assert_eq(n_img, wp_manifest_count(mf));

    /* A transfer cut in the middle of a tensor: half of it as .part, left by
     * an earlier run. Nobody will finish it: the cache removes it at start,
     * and the tensor is sent whole (the others stay cached). */
    char *bin = find_cache_file(cache, ".bin");
    cr_assert_not_null(bin, "no cached tensor in %s", cache);
    struct stat sb;
    cr_assert_eq(stat(bin, &sb), 0);
    cr_assert_gt(sb.st_size, 2);
    char *part = NULL;
    int plen = asprintf(&part, "%.*s.part", (int)(strstr(bin, ".bin") - bin), bin);
    cr_assert_geq(plen, 0);
    cr_assert_eq(rename(bin, part), 0);
    cr_assert_eq(truncate(part, sb.st_size / 2), 0);
    push_once(m, mf, cache, &st, &n_img);
    cr_assert_eq(st.tensors_sent, 1);
    cr_assert_eq(st.tensors_cached, wp_manifest_count(mf) - 1);
    cr_assert_eq(st.bytes_raw, (uint64_t)sb.st_size, "the stale .part was removed, the tensor sent whole");
    cr_assert_eq(stat(bin, &sb), 0, "completed tensor renamed to .bin");

    /* A cached file corrupted on disk: LOAD fails and the file is dropped,
     * so the next push sends it again. */
    FILE *f = fopen(bin, "r+b");
    fputc(0x5a, f);
    fclose(f);
    struct wp_cache *c;
    cr_assert_eq(wp_cache_open(cache, 0, &c, &err), 0);
    free(bin);
    free(part);
    wp_cache_close(c);
    push_once(m, mf, cache, &st, &n_img); /* HAVE still says held: the size is right */
    /* ... but the image build caught it: */
    cr_assert_eq(n_img, 0, "corrupt cache file must not produce an image");
    push_once(m, mf, cache, &st, &n_img);
    cr_assert_eq(st.tensors_sent, 1, "the corrupt tensor is sent again");
    cr_assert_eq(n_img, wp_manifest_count(mf));

    wp_manifest_destroy(mf);
    model_destroy(m);
    cr_assert_eq(tu_remove_tree(dir), 0);
}

/* A new cache with quota max_bytes in a new scratch directory: dir is a
 * "/tmp/inferd-wp-XXXXXX" buffer, filled in by mkdtemp. */
static struct wp_cache *scratch_cache(char *dir, uint64_t max_bytes)
{
    cr_assert_not_null(mkdtemp(dir));
    struct wp_cache *c;
    ifd_error err;
    cr_assert_eq(wp_cache_open(dir, max_bytes, &c, &err), 0, "%s", err.msg);
    return c;
}

Test(weight_push, malformed_chunks_refused)
{
    char dir[] = "/tmp/inferd-wp-XXXXXX";
    struct wp_cache *c = scratch_cache(dir, 0);
    ifd_error err;
    struct net_tensor_desc t = {.nbytes = 64, .dtype = 0, .n_dims = 1, .shape = {16}, .name = "x"};
    memset(t.hash, 7, 32);
    struct net_assign a = {.n_tensors = 1, .tensors = &t};
    uint8_t data[64] = {1, 2, 3};
    struct net_chunk ch = {.index = 1, .offset = 0, .raw_len = 8, .data_len = 8, .data = data};
    cr_assert_lt(wp_cache_put_chunk(c, &a, &ch, &err), 0); /* index out of range */
    ch.index = 0;
    ch.offset = 60;
    cr_assert_lt(wp_cache_put_chunk(c, &a, &ch, &err), 0); /* past the end */
    cr_assert(strstr(err.msg, "outside tensor"), "%s", err.msg);
    ch.offset = 8;
    cr_assert_lt(wp_cache_put_chunk(c, &a, &ch, &err), 0); /* gap: worker holds 0 bytes */
    /* zstd frame whose content size disagrees with raw_len. */
    uint8_t z[128];
    size_t zn = ZSTD_compress(z, sizeof(z), data, 16, 1);
    ch = (struct net_chunk){.index = 0, .flags = NET_CHUNK_F_ZSTD, .offset = 0, .raw_len = 8,
                            .data_len = (uint32_t)zn, .data = z};
    cr_assert_lt(wp_cache_put_chunk(c, &a, &ch, &err), 0);
    /* Garbage as zstd. */
    ch.data = data;
    ch.data_len = 20;
    cr_assert_lt(wp_cache_put_chunk(c, &a, &ch, &err), 0);
    /* The whole tensor, but its hash is not the announced one: refused, dropped. */
    ch = (struct net_chunk){.index = 0, .offset = 0, .raw_len = 64, .data_len = 64, .data = data};
    cr_assert_eq(wp_cache_put_chunk(c, &a, &ch, &err), -EBADMSG);
    cr_assert(strstr(err.msg, "does not match its hash"), "%s", err.msg);
    uint64_t have;
    wp_cache_have(c, &a, &have);
    cr_assert_eq(have, 0, "nothing of a refused tensor is kept");
    wp_cache_close(c);
    cr_assert_eq(tu_remove_tree(dir), 0);
}

static void write_file(const char *path, size_t n, char fill)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    for (size_t i = 0; i < n; i++)
        fputc(fill, f);
    fclose(f);
}

/* A <hash>.part planted as a symbolic link to another file is not followed:
 * the chunk is refused and the other file stays as it was. */
Test(weight_push, symlinked_part_is_not_followed)
{
    char dir[] = "/tmp/inferd-wp-XXXXXX";
    struct wp_cache *c = scratch_cache(dir, 0);
    ifd_error err;
    struct net_tensor_desc t = {.nbytes = 64, .dtype = 0, .n_dims = 1, .shape = {16}, .name = "x"};
    memset(t.hash, 0xab, 32);
    struct net_assign a = {.n_tensors = 1, .tensors = &t};
    char victim[128], part[192];
    snprintf(victim, sizeof(victim), "%s/victim", dir);
    snprintf(part, sizeof(part), "%s/%s.part", dir,
             "abababababababababababababababababababababababababababababababab");
    write_file(victim, 10, 'v');
    cr_assert_eq(symlink(victim, part), 0);
    uint8_t data[64] = {1};
    /* The link's target has 10 bytes: a chunk at offset 10 is what following it would accept. */
    struct net_chunk ch = {.index = 0, .offset = 10, .raw_len = 8, .data_len = 8, .data = data};
    cr_assert_lt(wp_cache_put_chunk(c, &a, &ch, &err), 0);
    ch.offset = 0;
    cr_assert_lt(wp_cache_put_chunk(c, &a, &ch, &err), 0);
    cr_assert(strstr(err.msg, "symbolic link"), "%s", err.msg);
    struct stat sb;
    cr_assert_eq(stat(victim, &sb), 0);
    cr_assert_eq(sb.st_size, 10, "the link's target was written to");
    uint64_t have = 1;
    wp_cache_have(c, &a, &have);
    cr_assert_eq(have, 0, "a link is not a held tensor");
    wp_cache_close(c);
    cr_assert_eq(tu_remove_tree(dir), 0);
}

/* A cache directory others can write to, or that is a link, is refused. */
Test(weight_push, unsafe_cache_directory_refused)
{
    char dir[] = "/tmp/inferd-wp-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    struct wp_cache *c;
    ifd_error err;
    cr_assert_eq(chmod(dir, 0770), 0);
    cr_assert_eq(wp_cache_open(dir, 0, &c, &err), -EPERM);
    cr_assert(strstr(err.msg, "writable by group or others") && strstr(err.msg, dir), "%s", err.msg);
    cr_assert_eq(chmod(dir, 0702), 0);
    cr_assert_eq(wp_cache_open(dir, 0, &c, &err), -EPERM, "%s", err.msg);
    cr_assert_eq(chmod(dir, 0700), 0);
    char link[128];
    snprintf(link, sizeof(link), "%s-link", dir);
    cr_assert_eq(symlink(dir, link), 0);
    cr_assert_lt(wp_cache_open(link, 0, &c, &err), 0);
    cr_assert(strstr(err.msg, "symbolic link"), "%s", err.msg);
    unlink(link);
    cr_assert_eq(wp_cache_open(dir, 0, &c, &err), 0, "%s", err.msg);
    wp_cache_close(c);
    cr_assert_eq(tu_remove_tree(dir), 0);
}

/* Declared sizes meet the quota before anything is written: a 1 TiB tensor
 * (of zstd zeros, say) is refused at ASSIGN, by the default quota too. */
Test(weight_push, assignment_beyond_quota_refused)
{
    char dir[] = "/tmp/inferd-wp-XXXXXX";
    struct wp_cache *c = scratch_cache(dir, 0);
    ifd_error err;
    struct net_tensor_desc t = {.nbytes = 1ull << 40, .dtype = 0, .n_dims = 2, .shape = {1 << 20, 1 << 18},
                                .name = "huge"};
    memset(t.hash, 0x11, 32);
    struct net_assign a = {.n_tensors = 1, .tensors = &t};
    cr_assert_eq(wp_cache_reserve(c, &a, NULL, &err), -EFBIG);
    cr_assert(strstr(err.msg, "cache_max_bytes"), "%s", err.msg);
    wp_cache_close(c);
    cr_assert_eq(wp_cache_open(dir, 1000, &c, &err), 0, "%s", err.msg);
    t.nbytes = 1024;
    cr_assert_eq(wp_cache_reserve(c, &a, NULL, &err), -EFBIG, "%s", err.msg);
    t.nbytes = 1000;
    cr_assert_eq(wp_cache_reserve(c, &a, NULL, &err), 0, "%s", err.msg);
    wp_cache_close(c);
    cr_assert_eq(tu_remove_tree(dir), 0);
}

/* Room for a new assignment comes from tensors it does not use, least
 * recently used first; the ones it lists are kept. */
Test(weight_push, quota_prunes_unused_least_recently_used)
{
    char dir[] = "/tmp/inferd-wp-XXXXXX";
    struct wp_cache *c = scratch_cache(dir, 400);
    ifd_error err;
    char path[4][192];
    for (int i = 0; i < 4; i++) {
        char hex[65];
        memset(hex, "1234"[i], 64);
        hex[64] = '\0';
        snprintf(path[i], sizeof(path[i]), "%s/%s.bin", dir, hex);
        write_file(path[i], 100, 'x');
        struct timespec ts[2] = {{.tv_sec = 1000000 + 1000 * (i == 3 ? 0 : i + 1)},
                                 {.tv_sec = 1000000 + 1000 * (i == 3 ? 0 : i + 1)}};
        cr_assert_eq(utimensat(AT_FDCWD, path[i], ts, 0), 0);
    }
    /* File 3 is the oldest but the assignment uses it (already held). */
    struct net_tensor_desc t[2] = {{.nbytes = 100, .dtype = 0, .n_dims = 1, .shape = {25}, .name = "kept"},
                                   {.nbytes = 150, .dtype = 0, .n_dims = 1, .shape = {75}, .name = "new"}};
    memset(t[0].hash, 0x44, 32);
    memset(t[1].hash, 0x99, 32);
    struct net_assign a = {.n_tensors = 2, .tensors = t};
    size_t pruned = 0;
    cr_assert_eq(wp_cache_reserve(c, &a, &pruned, &err), 0, "%s", err.msg);
    /* 400 held + 150 missing > 400: the two least recently used unused go. */
    cr_assert_eq(pruned, 2);
    cr_assert_neq(access(path[0], F_OK), 0, "LRU file kept");
    cr_assert_neq(access(path[1], F_OK), 0, "second LRU file kept");
    cr_assert_eq(access(path[2], F_OK), 0, "most recently used unused file removed");
    cr_assert_eq(access(path[3], F_OK), 0, "a tensor of the assignment was removed");
    /* An assignment larger than the quota itself removes nothing. */
    t[1].nbytes = 350;
    cr_assert_eq(wp_cache_reserve(c, &a, &pruned, &err), -EFBIG, "%s", err.msg);
    cr_assert_eq(access(path[2], F_OK), 0, "a refused assignment pruned the cache");
    wp_cache_close(c);
    cr_assert_eq(tu_remove_tree(dir), 0);
}

/* .part files go when their sender does (the worker calls this when its
 * master disconnects) and when the cache is opened. */
Test(weight_push, partial_tensors_removed)
{
    char dir[] = "/tmp/inferd-wp-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char part[192], bin[192];
    snprintf(part, sizeof(part), "%s/%064d.part", dir, 7);
    snprintf(bin, sizeof(bin), "%s/%064d.bin", dir, 8);
    write_file(part, 50, 'p');
    write_file(bin, 50, 'b');
    struct wp_cache *c;
    ifd_error err;
    cr_assert_eq(wp_cache_open(dir, 0, &c, &err), 0, "%s", err.msg);
    cr_assert_neq(access(part, F_OK), 0, "stale .part kept at start");
    write_file(part, 50, 'p');
    cr_assert_eq(wp_cache_remove_partial(c), 1);
    cr_assert_neq(access(part, F_OK), 0);
    cr_assert_eq(access(bin, F_OK), 0, "complete tensors stay");
    wp_cache_close(c);
    cr_assert_eq(tu_remove_tree(dir), 0);
}
