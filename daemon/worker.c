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
#include "proto.h"
#include "model/safetensors.h"
#include "sd.h"
#include "stage_server.h"
#include "base/thread_pool.h"
#include "weight_push.h"
#include "worker_session.h"
#include "base/clock.h"

/* Scratch is sized for batches this large up front; a larger batch (up to
 * STAGE_SERVER_MAX_TOKENS) grows the cpu stage's scratch once, and the Vulkan
 * stage runs it in several submits. */
#define WORKER_BATCH_RESERVE 512

/* Where this worker runs the layers it is assigned ([node] backend / device). */
struct worker_backend {
    enum inferd_backend backend;
    int device;
    struct thread_pool *pool;
};

static int worker_stage_create(void *ctx, const struct model *m, const struct net_assign *a, struct stage **ret,
                               ifd_error *err)
{
    const struct worker_backend *wb = ctx;
    const char *backend_name;
    int r = backend_stage_create(wb->backend, wb->device, m, (int)a->layer_first, (int)a->layer_last,
                                 (int)a->n_seq_max, (int)a->n_ctx, WORKER_BATCH_RESERVE, wb->pool, ret,
                                 &backend_name, err);
    if (r >= 0)
        log_info("Layers [%u, %u) on the %s backend", a->layer_first, a->layer_last, backend_name);
    return r;
}

static void worker_status(const char *what)
{
    sdn_status("%s", what);
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
    struct worker_backend wb = {.backend = cfg->backend, .device = cfg->device};
    struct wp_cache *cache = NULL;
    st_model *local = NULL;
    struct worker_session *ws = NULL;
    struct stage_server *srv = NULL;
    if (wp_cache_open(cfg->cache_dir, cfg->cache_max_bytes, &cache, &err) < 0) {
        log_err("%s", err.msg);
        goto out;
    }
    if (cfg->model_path && *cfg->model_path) {
        /* Optional: tensors whose hash matches the master's are taken from
         * here instead of the network. */
        char *dir = NULL;
        if (inferd_config_resolve_model(cfg->model_path, &dir, &err) < 0 || st_open(dir, &local, &err) < 0) {
            free(dir);
            log_err("%s", err.msg);
            goto out;
        }
        log_info("Local checkpoint %s: tensors matching the master's hashes are not transferred", dir);
        free(dir);
    }
    if (!(wb.pool = thread_pool_create(cfg->threads))) {
        log_err("cannot create the thread pool");
        goto out;
    }
    struct worker_session_opts wo = {.cache = cache, .local = local, .memory_max_bytes = cfg->memory_max_bytes,
                                     .quantize_bits = cfg->quantize_bits,
                                     .quantize_group_size = cfg->quantize_group_size,
                                     .quantize_into_panels = backend_runs_on_cpu(cfg->backend),
                                     .stage_create = worker_stage_create, .stage_ctx = &wb,
                                     .status = worker_status};
    if (worker_session_create(&wo, &ws, &err) < 0) {
        log_err("%s", err.msg);
        goto out;
    }
    /* What the master may place here: the machine's available memory, or
     * the operator's bound when that is lower. */
    uint64_t offer = backend_mem_available();
    bool capped = cfg->memory_max_bytes && (!offer || cfg->memory_max_bytes < offer);
    if (capped)
        offer = cfg->memory_max_bytes;
    struct stage_server_opts so = {.key = keyp, .n_threads = thread_pool_size(wb.pool),
                                   .mem_available = offer,
                                   .speed_mbps = measure_speed_mbps(wb.pool),
                                   .io_timeout_ms = cfg->cluster_io_timeout_s * 1000,
                                   .next_hops = (const char *const *)cfg->next_hops,
                                   .n_next_hops = (size_t)cfg->n_next_hops,
                                   .master_closed = worker_session_master_closed};
    log_info("Reporting %.1f GiB available%s, %d threads, %.1f GB/s one-token product speed",
             (double)so.mem_available / 1073741824.0, capped ? " ([node] memory_max_bytes)" : "", so.n_threads,
             so.speed_mbps / 1000.0);
    if (stage_server_create(&so, worker_session_setup, ws, &srv, &err) < 0) {
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
             (double)wp_cache_max_bytes(cache) / 1073741824.0, thread_pool_size(wb.pool));
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
    worker_session_destroy(ws);
    thread_pool_destroy(wb.pool);
    wp_cache_close(cache);
    st_close(local);
    if (keyp)
        net_wipe(&key, sizeof(key));
    return rc;
}
