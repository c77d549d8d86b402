#include "worker.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "conn.h"
#include "backend.h"
#include "model/kernels.h"
#include "log.h"
#include "model/model.h"
#include "model/model_config.h"
#include "log.h"
#include "proto.h"
#include "model/safetensors.h"
#include "sd.h"
#include "stage_server.h"
#include "base/thread_pool.h"
#include "weight_push.h"
#include "base/clock.h"

struct worker {
    pthread_mutex_t lock;        /* setup messages of concurrent masters */
    struct net_assign assign;    /* the current assignment (owned) */
    bool assigned;
    struct wp_cache *cache;
    st_model *local;             /* the worker's own copy of the checkpoint, or NULL */
    struct thread_pool *pool;
    enum inferd_backend backend; /* [node] backend / device of this worker */
    int device;
    int quantize_bits;           /* [model] quantize of this worker: packs received float weights */
    int quantize_group_size;
    struct net_buf out;
    uint64_t received_bytes;
};

/* Scratch is sized for batches this large up front; a larger batch (up to
 * STAGE_SERVER_MAX_TOKENS) grows the cpu stage's scratch once, and the Vulkan
 * stage runs it in several submits. */
#define WORKER_BATCH_RESERVE 512

/* What a served stage keeps alive: released after the stage is destroyed. */
struct loaded_stage {
    struct model *model;
    void *image;
};

static void loaded_stage_release(void *p)
{
    struct loaded_stage *ls = p;
    model_destroy(ls->model);
    free(ls->image);
    free(ls);
}

static int load_stage(struct worker *w, struct stage_server *srv, struct net_ready *ret, ifd_error *err)
{
    const struct net_assign *a = &w->assign;
    uint64_t t0 = ifd_now_ns();
    void *image;
    size_t len;
    int r = wp_cache_build_image(w->cache, a, &image, &len, err);
    if (r < 0)
        return r;
    st_model *st;
    if ((r = st_open_memory(image, len, "received weights", &st, err)) < 0) {
        free(image);
        return r;
    }
    struct model_config mc;
    if ((r = model_config_parse(a->config_json, a->config_len, "master's config.json", &mc, err)) < 0) {
        st_close(st);
        free(image);
        return r;
    }
    if (mc.n_layers != (int)a->n_layers) {
        model_config_finish(&mc);
        st_close(st);
        free(image);
        return ifd_error_set(err, -EINVAL, "assignment says %u layers, the config %d", a->n_layers, mc.n_layers);
    }
    struct model_load_opts o = model_load_opts_default();
    o.layer_first = (int)a->layer_first;
    o.layer_last = (int)a->layer_last;
    o.bind_embed = false;
    o.bind_head = false;
    o.quantize_bits = w->quantize_bits;
    o.quantize_group_size = w->quantize_group_size;
    struct model *m;
    if ((r = model_bind(st, &mc, &o, &m, err)) < 0) {
        model_config_finish(&mc);
        st_close(st);
        free(image);
        return r;
    }
    struct stage *stage;
    const char *backend_name;
    r = backend_stage_create(w->backend, w->device, m, (int)a->layer_first, (int)a->layer_last, (int)a->n_seq_max,
                             (int)a->n_ctx, WORKER_BATCH_RESERVE, w->pool, &stage, &backend_name, err);
    if (r >= 0)
        log_info("Layers [%u, %u) on the %s backend", a->layer_first, a->layer_last, backend_name);
    struct loaded_stage *ls = r >= 0 ? calloc(1, sizeof(*ls)) : NULL;
    if (!ls) {
        if (r >= 0) {
            stage_destroy(stage);
            r = ifd_error_set(err, -ENOMEM, "out of memory");
        }
        model_destroy(m);
        free(image);
        return r;
    }
    ls->model = m;
    ls->image = image;
    stage_server_set_stage(srv, stage, loaded_stage_release, ls);
    ret->weight_bytes = len;
    ret->rss_bytes = net_rss_bytes();
    ret->load_ms = (ifd_now_ns() - t0) / 1000000;
    log_info("Serving layers %u-%u of %s (%.1f MiB of weights, %u sequences x %u positions); RSS %.1f MiB",
             a->layer_first, a->layer_last - 1, a->model_name, (double)len / 1048576.0, a->n_seq_max, a->n_ctx,
             (double)ret->rss_bytes / 1048576.0);
    sdn_status("Serving layers %u-%u of %s", a->layer_first, a->layer_last - 1, a->model_name);
    return 0;
}

static int worker_setup(void *ctx, struct stage_server *srv, struct net_conn *c, uint16_t type, const uint8_t *p,
                        size_t len, ifd_error *err)
{
    struct worker *w = ctx;
    int r = 0;
    pthread_mutex_lock(&w->lock);
    switch (type) {
    case NET_MSG_ASSIGN: {
        struct net_assign a;
        if ((r = net_assign_decode(p, len, &a, err)) < 0)
            break;
        /* The declared sizes are checked against the quota and the disk
         * before a byte is written (a peer could declare a 1 TiB tensor of
         * compressible zeros); what the new assignment does not use goes first. */
        size_t pruned = 0;
        if ((r = wp_cache_reserve(w->cache, &a, &pruned, err)) < 0) {
            net_assign_finish(&a);
            net_assign_finish(&w->assign);
            w->assigned = false;
            break;
        }
        if (pruned)
            log_info("Cache: removed %zu tensors not used by the new assignment to make room", pruned);
        net_assign_finish(&w->assign);
        w->assign = a;
        w->assigned = true;
        w->received_bytes = 0;
        uint64_t *have = calloc(a.n_tensors ? a.n_tensors : 1, sizeof(uint64_t));
        if (!have) {
            r = ifd_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        if (w->local) {
            size_t taken, differ;
            ifd_error serr;
            if (wp_cache_seed_local(w->cache, &w->assign, w->local, &taken, &differ, &serr) < 0)
                log_warn("Local checkpoint not used: %s", serr.msg);
            else if (taken || differ)
                log_info("Local checkpoint: %zu tensors taken (hash verified), %zu differ from the master's", taken,
                         differ);
        }
        wp_cache_have(w->cache, &w->assign, have);
        uint64_t total = 0, held = 0;
        uint32_t complete = 0;
        for (uint32_t i = 0; i < a.n_tensors; i++) {
            total += a.tensors[i].nbytes;
            held += have[i];
            complete += have[i] == a.tensors[i].nbytes;
        }
        log_info("Assigned layers %u-%u of %s by %s: %u tensors (%.1f MiB), %u already cached", a.layer_first,
                 a.layer_last - 1, a.model_name, net_conn_peer(c), a.n_tensors, (double)total / 1048576.0, complete);
        sdn_status("Receiving layers %u-%u of %s", a.layer_first, a.layer_last - 1, a.model_name);
        r = net_have_encode(&w->out, have, a.n_tensors);
        free(have);
        if (r >= 0)
            r = net_conn_send(c, NET_MSG_HAVE, w->out.data, w->out.len, 30000, err);
        break;
    }
    case NET_MSG_TENSOR_CHUNK: {
        struct net_chunk ch;
        if (!w->assigned) {
            r = ifd_error_set(err, -EPROTO, "TENSOR_CHUNK before ASSIGN");
            break;
        }
        if ((r = net_chunk_decode(p, len, &ch, err)) < 0)
            break;
        r = wp_cache_put_chunk(w->cache, &w->assign, &ch, err);
        w->received_bytes += ch.raw_len;
        break;
    }
    case NET_MSG_LOAD: {
        if (!w->assigned) {
            r = ifd_error_set(err, -EPROTO, "LOAD before ASSIGN");
            break;
        }
        struct net_ready rd;
        ifd_error lerr;
        int lr = load_stage(w, srv, &rd, &lerr);
        if (lr < 0) {
            /* The master hears why and may retry; the connection stays. */
            log_err("Failed to build the stage: %s", lerr.msg);
            net_conn_send_error(c, lr, 0, lerr.msg);
            break;
        }
        r = net_ready_encode(&w->out, &rd);
        if (r >= 0)
            r = net_conn_send(c, NET_MSG_READY, w->out.data, w->out.len, 30000, err);
        break;
    }
    default:
        r = ifd_error_set(err, -EPROTO, "unexpected %s", net_msg_name(type));
    }
    pthread_mutex_unlock(&w->lock);
    return r;
}

/* The master is gone: the tensor it was sending will not be finished by it,
 * and a new master may assign something else entirely. */
static void worker_master_closed(void *ctx)
{
    struct worker *w = ctx;
    /* Runs on the closing master's own thread under the server's master_lock
     * (see stage_server.h), so no setup message runs now: taking w->lock here
     * would invert the order setup -> stage -> master lock. */
    size_t n = wp_cache_remove_partial(w->cache);
    if (n)
        log_info("Cache: removed %zu partial tensors of the master that left", n);
}

struct sig_ctx {
    struct stage_server *srv;
    sigset_t mask;
};

static void *signal_thread(void *p)
{
    struct sig_ctx *sc = p;
    for (;;) {
        int sig;
        if (sigwait(&sc->mask, &sig) != 0)
            continue;
        if (sig == SIGHUP)
            continue;
        log_notice("Received %s, stopping", strsignal(sig));
        sdn_stopping("Stopping");
        stage_server_stop(sc->srv);
        return NULL;
    }
}
/* MemAvailable of /proc/meminfo (free memory plus what the kernel can reclaim
 * without swapping), in bytes; the free page count where it is missing. */
static uint64_t mem_available_bytes(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    char line[256];
    uint64_t kib = 0;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "MemAvailable: %" SCNu64 " kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    if (kib)
        return kib * 1024;
    long pages = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 0;
}

/* The master splits `layers = auto` by this: how many weight bytes per second
 * a one-token product streams on this node's CPU pool (decode is bound by
 * it), timed over a 32 MiB BF16 matrix, larger than the caches, for about
 * 0.2 s. In MB/s; 0 if the buffers cannot be had. */
static uint32_t measure_speed_mbps(struct thread_pool *pool)
{
    enum { ROWS = 4096, COLS = 4096 };
    uint16_t *wbuf = malloc((size_t)ROWS * COLS * sizeof(uint16_t));
    float *x = malloc(COLS * sizeof(float)), *y = malloc(ROWS * sizeof(float));
    uint32_t mbps = 0;
    if (wbuf && x && y) {
        for (size_t i = 0; i < (size_t)ROWS * COLS; i++)
            wbuf[i] = (uint16_t)(0x3c00 + (i * 2654435761u >> 20) % 512); /* BF16 values near 0.01 */
        for (int i = 0; i < COLS; i++)
            x[i] = 1.0f / (float)(i + 1);
        struct ifd_weight w = {.dtype = IFD_DTYPE_BF16, .data = wbuf, .rows = ROWS, .cols = COLS};
        kern_matmul(pool, &w, x, 1, y); /* warm-up */
        const double t0 = ifd_now_s();
        double dt = 0;
        int n = 0;
        do {
            kern_matmul(pool, &w, x, 1, y);
            n++;
            dt = ifd_now_s() - t0;
        } while (dt < 0.2);
        double v = (double)n * ROWS * COLS * sizeof(uint16_t) / dt / 1e6;
        mbps = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
    }
    free(wbuf);
    free(x);
    free(y);
    return mbps;
}


int worker_role_main(const struct inferd_config *cfg)
{
    ifd_error err = {{0}};
    log_level_set(cfg->log_level);
    const char *listen_addr = cfg->worker_listen ? cfg->worker_listen : "0.0.0.0:10128";
    struct net_key key, *keyp = NULL;
    if (cfg->cluster_key_file) {
        if (net_key_load(cfg->cluster_key_file, &key, &err) < 0) {
            log_err("%s", err.msg);
            return 1;
        }
        keyp = &key;
    } else if (!net_addr_is_loopback(listen_addr) && !cfg->allow_insecure_cluster) {
        log_err("Refusing to listen on %s without a cluster key: set [cluster] key_file (or --cluster-key-file), "
                "or allow_insecure = true for a trusted network",
                listen_addr);
        return 1;
    } else {
        log_warn("No cluster key: connections to %s are neither authenticated nor encrypted", listen_addr);
        if (net_crypto_init(&err) < 0) {
            log_err("%s", err.msg);
            return 1;
        }
    }

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1, lfd = -1;
    struct worker w = {.pool = NULL, .backend = cfg->backend, .device = cfg->device,
                       .quantize_bits = cfg->quantize_bits, .quantize_group_size = cfg->quantize_group_size};
    pthread_mutex_init(&w.lock, NULL);
    struct stage_server *srv = NULL;
    if (wp_cache_open(cfg->cache_dir, cfg->cache_max_bytes, &w.cache, &err) < 0) {
        log_err("%s", err.msg);
        goto out;
    }
    if (cfg->model_path && *cfg->model_path) {
        /* Optional: tensors whose hash matches the master's are taken from
         * here instead of the network. */
        char *dir = NULL;
        if (inferd_config_resolve_model(cfg->model_path, &dir, &err) < 0 || st_open(dir, &w.local, &err) < 0) {
            free(dir);
            log_err("%s", err.msg);
            goto out;
        }
        log_info("Local checkpoint %s: tensors matching the master's hashes are not transferred", dir);
        free(dir);
    }
    if (!(w.pool = thread_pool_create(cfg->threads))) {
        log_err("cannot create the thread pool");
        goto out;
    }
    struct stage_server_opts so = {.key = keyp, .n_threads = thread_pool_size(w.pool),
                                   .mem_available = mem_available_bytes(),
                                   .speed_mbps = measure_speed_mbps(w.pool),
                                   .io_timeout_ms = cfg->cluster_io_timeout_s * 1000,
                                   .next_hops = (const char *const *)cfg->next_hops,
                                   .n_next_hops = (size_t)cfg->n_next_hops,
                                   .master_closed = worker_master_closed};
    log_info("Reporting %.1f GiB available, %d threads, %.1f GB/s one-token product speed",
             (double)so.mem_available / 1073741824.0, so.n_threads, so.speed_mbps / 1000.0);
    if (stage_server_create(&so, worker_setup, &w, &srv, &err) < 0) {
        log_err("%s", err.msg);
        goto out;
    }
    int port;
    if (net_listen(listen_addr, &lfd, &port, &err) < 0) {
        log_err("%s", err.msg);
        goto out;
    }
    struct sig_ctx sc = {.srv = srv, .mask = mask};
    pthread_t sth;
    if (pthread_create(&sth, NULL, signal_thread, &sc) != 0) {
        log_err("cannot start the signal thread");
        goto out;
    }
    pthread_detach(sth);
    log_info("inferd worker listening on %s (%s), cache %s (quota %.1f GiB), %d threads", listen_addr,
             keyp ? "cluster key required" : "NO cluster key", cfg->cache_dir,
             (double)wp_cache_max_bytes(w.cache) / 1073741824.0, thread_pool_size(w.pool));
    if (cfg->n_next_hops == 0)
        log_info("Chains: this worker passes hidden states only to workers on loopback; list the others in "
                 "[cluster] next_hops");
    sdn_ready("Waiting for the master");
    int r = stage_server_run(srv, lfd);
    if (r < 0)
        log_err("accept failed: %s", strerror(-r));
    rc = r < 0 ? 1 : 0;
out:
    stage_server_destroy(srv);
    if (lfd >= 0)
        close(lfd);
    thread_pool_destroy(w.pool);
    wp_cache_close(w.cache);
    st_close(w.local);
    net_assign_finish(&w.assign);
    net_buf_finish(&w.out);
    pthread_mutex_destroy(&w.lock);
    if (keyp)
        net_wipe(&key, sizeof(key));
    return rc;
}
