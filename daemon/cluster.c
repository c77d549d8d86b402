#include "cluster.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "base/file.h"
#include "conn.h"
#include "backend.h"
#include "layer_split.h"
#include "log.h"
#include "log.h"
#include "model/model_bytes.h"
#include "remote_stage.h"
#include "sd.h"
#include "weight_push.h"
#include "base/clock.h"

#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 5000
#define PING_EVERY_MS 5000
#define CONNECT_TIMEOUT_MS 3000

struct member {
    struct remote_link *link;
    bool auto_layers;       /* layers = auto: range decided after every such worker reported */
    bool reported;          /* its HELLO has been seen (mem_available, speed_mbps below) */
    uint64_t mem_available;
    uint32_t speed_mbps, n_threads;
    struct wp_manifest *manifest; /* computed on first push */
    uint64_t next_try_ns, last_ping_ns;
    int backoff_ms;
    int failures;
    struct wp_push_stats push;
    bool pushed;
};

struct cluster {
    const struct model *m;
    char *model_name;
    char *config_json;
    size_t config_len;
    int n_seq_max, n_ctx, n_batch_max;
    int io_timeout_ms; /* [cluster] io_timeout: a worker's answer to a forward or a setup message */
    enum inferd_backend backend; /* of the master's own layers */
    int device;
    struct net_key key;
    bool have_key;
    bool star;
    struct member *mem; /* [n], sorted by layer_first */
    int n;
    /* layers = auto: the free block [auto_first, auto_first + auto_n), split
     * once all its workers have reported; until then they are not pushed. */
    bool split_pending;
    int auto_first, auto_n;
    uint64_t auto_layer_bytes; /* largest layer of the block, weights + KV cache */
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stopping;
};

static int cmp_member(const void *a, const void *b)
{
    return remote_link_first(((const struct member *)a)->link) - remote_link_first(((const struct member *)b)->link);
}

static void progress_cb(void *ctx, size_t done, size_t total, uint64_t bytes_done, uint64_t bytes_total)
{
    struct member *mb = ctx;
    char d[128];
    snprintf(d, sizeof(d), "pushing weights: %zu/%zu tensors, %.1f/%.1f MiB", done, total,
             (double)bytes_done / 1048576.0, (double)bytes_total / 1048576.0);
    remote_link_set_state(mb->link, REMOTE_LINK_PUSHING, d);
}

/* Connects to a worker and authenticates; records what its HELLO reports. */
static int connect_worker(struct cluster *c, struct member *mb, struct net_conn **ret, ifd_error *err)
{
    struct remote_link *l = mb->link;
    remote_link_set_state(l, REMOTE_LINK_CONNECTING, mb->failures ? "retrying" : "connecting");
    struct net_conn *conn;
    int r = net_conn_connect(remote_link_addr(l), CONNECT_TIMEOUT_MS, &conn, err);
    if (r < 0)
        return r;
    struct net_hello self = {.role = NET_ROLE_MASTER, .caps = NET_CAP_ZSTD | NET_CAP_CHAIN}, peer;
    r = net_conn_handshake_client(conn, c->have_key ? &c->key : NULL, &self, &peer, err);
    if (r >= 0 && peer.role != NET_ROLE_WORKER)
        r = ifd_error_set(err, -EPROTO, "%s is not a worker (role %u)", remote_link_addr(l), peer.role);
    if (r >= 0 && !(peer.caps & NET_CAP_CHAIN) && !c->star)
        r = ifd_error_set(err, -EPROTO, "worker %s cannot forward along a chain", remote_link_addr(l));
    if (r < 0) {
        net_conn_destroy(conn);
        return r;
    }
    mb->mem_available = peer.mem_available;
    mb->speed_mbps = peer.speed_mbps;
    mb->n_threads = peer.n_threads;
    mb->reported = true;
    *ret = conn;
    return 0;
}

/* One attempt to bring a worker up: connect, authenticate, push, load. */
static int bring_up(struct cluster *c, struct member *mb, ifd_error *err)
{
    struct remote_link *l = mb->link;
    struct net_conn *conn;
    int r = connect_worker(c, mb, &conn, err);
    if (r < 0)
        return r;
    if (!mb->manifest) {
        r = wp_manifest_create(c->m, remote_link_first(l), remote_link_last(l), &mb->manifest, err);
        if (r < 0) {
            net_conn_destroy(conn);
            return r;
        }
    }
    remote_link_set_state(l, REMOTE_LINK_PUSHING, "pushing weights");
    struct wp_push_params pp = {
        .model_name = c->model_name,
        .config_json = c->config_json,
        .config_len = c->config_len,
        .n_layers = c->m->cfg.n_layers,
        .n_seq_max = c->n_seq_max,
        .n_ctx = c->n_ctx,
        .timeout_ms = c->io_timeout_ms,
        .progress = progress_cb,
        .progress_ctx = mb,
    };
    struct wp_push_stats ps;
    r = wp_push(conn, mb->manifest, &pp, &ps, err);
    if (r < 0) {
        net_conn_destroy(conn);
        return r;
    }
    mb->push = ps;
    mb->pushed = true;
    double mbps = ps.push_ms > 0 ? (double)ps.bytes_raw / 1048576.0 / (ps.push_ms / 1000.0) : 0;
    log_info("Worker %s (%s) ready: layers %d-%d, %zu tensors (%zu sent, %zu cached), %.1f MiB sent as %.1f MiB in "
             "%.0f ms (%.0f MiB/s), loaded in %.0f ms, worker RSS %.1f MiB",
             remote_link_name(l), remote_link_addr(l), remote_link_first(l), remote_link_last(l) - 1,
             ps.tensors_total, ps.tensors_sent, ps.tensors_cached, (double)ps.bytes_raw / 1048576.0,
             (double)ps.bytes_wire / 1048576.0, ps.push_ms, mbps, ps.load_ms, (double)ps.worker_rss / 1048576.0);
    remote_link_attach(l, conn);
    return 0;
}

/* The most layers of the auto block a worker can hold: what it reported as
 * available, less a tenth and 128 MiB for its own overhead, over the block's
 * largest layer (weights + KV cache). No limit when it reported nothing. */
static int auto_max_layers(const struct cluster *c, const struct member *mb)
{
    if (!mb->mem_available || !c->auto_layer_bytes)
        return INT_MAX;
    double usable = (double)mb->mem_available * 0.9 - 128.0 * 1048576.0;
    double n = usable > 0 ? usable / (double)c->auto_layer_bytes : 0;
    return n > INT_MAX ? INT_MAX : (int)n;
}

/* Once every auto worker has reported: splits the free block by their speed
 * within their memory, in configuration order. 0, or -ENOSPC (with every auto
 * worker marked DOWN and asked to report again). */
static int decide_auto_split(struct cluster *c)
{
    int k = 0;
    bool all_speeds = true;
    for (int i = 0; i < c->n; i++)
        if (c->mem[i].auto_layers) {
            if (!c->mem[i].reported)
                return -EAGAIN;
            all_speeds = all_speeds && c->mem[i].speed_mbps > 0;
            k++;
        }
    double speed[k];
    int max_layers[k], counts[k], j = 0;
    for (int i = 0; i < c->n; i++)
        if (c->mem[i].auto_layers) {
            /* A worker that did not measure (protocol 1.0) makes the split even. */
            speed[j] = all_speeds ? (double)c->mem[i].speed_mbps : 1.0;
            max_layers[j++] = auto_max_layers(c, &c->mem[i]);
        }
    int r = layer_split(c->auto_n, k, speed, max_layers, counts);
    if (r < 0) {
        char why[256];
        snprintf(why, sizeof(why), "layers = auto: the workers' memory cannot hold layers %d-%d (%.1f MiB each)",
                 c->auto_first, c->auto_first + c->auto_n - 1, (double)c->auto_layer_bytes / 1048576.0);
        log_err("%s", why);
        for (int i = 0; i < c->n; i++)
            if (c->mem[i].auto_layers) {
                c->mem[i].reported = false;
                c->mem[i].next_try_ns = ifd_now_ns() + (uint64_t)BACKOFF_MAX_MS * 1000000ull;
                remote_link_set_state(c->mem[i].link, REMOTE_LINK_DOWN, why);
            }
        return r;
    }
    log_info("layers = auto: each of layers %d-%d takes up to %.1f MiB, its weights and its KV cache for %d "
             "sequences x %d positions", c->auto_first, c->auto_first + c->auto_n - 1,
             (double)c->auto_layer_bytes / 1048576.0, c->n_seq_max, c->n_ctx);
    int first = c->auto_first;
    j = 0;
    for (int i = 0; i < c->n; i++)
        if (c->mem[i].auto_layers) {
            struct member *mb = &c->mem[i];
            remote_link_set_layers(mb->link, first, first + counts[j]);
            log_info("layers = auto: worker %s gets layers %d-%d (%.1f GiB available, %.1f GB/s measured)",
                     remote_link_name(mb->link), first, first + counts[j] - 1,
                     (double)mb->mem_available / 1073741824.0, mb->speed_mbps / 1000.0);
            first += counts[j++];
        }
    c->split_pending = false;
    return 0;
}

/* Waits on c->cond, c->lock held, for at most ms milliseconds (a wake-up
 * comes early; the callers loop on their own condition). */
static void wait_locked(struct cluster *c, int ms)
{
    struct timespec ts = ifd_realtime_after_ms(ms);
    pthread_cond_timedwait(&c->cond, &c->lock, &ts);
}

static void *supervisor(void *arg)
{
    struct cluster *c = arg;
    pthread_mutex_lock(&c->lock);
    while (!c->stopping) {
        pthread_mutex_unlock(&c->lock);
        uint64_t now = ifd_now_ns();
        for (int i = 0; i < c->n; i++) {
            struct member *mb = &c->mem[i];
            struct remote_link *l = mb->link;
            enum remote_link_state st = remote_link_state(l);
            if (st == REMOTE_LINK_READY) {
                if (now - mb->last_ping_ns > (uint64_t)PING_EVERY_MS * 1000000ull) {
                    mb->last_ping_ns = now;
                    remote_link_ping(l, 2000, NULL, NULL);
                }
                continue;
            }
            if (now < mb->next_try_ns)
                continue;
            if (c->split_pending && mb->auto_layers && mb->reported) {
                remote_link_set_state(l, REMOTE_LINK_CONNECTING, "waiting for the other auto workers to report");
                continue;
            }
            ifd_error err = {{0}};
            int r;
            if (c->split_pending && mb->auto_layers) {
                /* Only its report for now: the range comes with the split. */
                struct net_conn *conn;
                if ((r = connect_worker(c, mb, &conn, &err)) >= 0)
                    net_conn_destroy(conn);
                if (r >= 0 && decide_auto_split(c) == 0)
                    mb->next_try_ns = 0;
            } else {
                r = bring_up(c, mb, &err);
            }
            if (r < 0) {
                mb->failures++;
                if (mb->failures == 1 || mb->failures % 20 == 0)
                    log_warn("Worker %s (%s): %s (attempt %d, retrying)", remote_link_name(l), remote_link_addr(l),
                             err.msg, mb->failures);
                remote_link_set_state(l, REMOTE_LINK_DOWN, err.msg);
                mb->backoff_ms = mb->backoff_ms ? mb->backoff_ms * 2 : BACKOFF_MIN_MS;
                if (mb->backoff_ms > BACKOFF_MAX_MS)
                    mb->backoff_ms = BACKOFF_MAX_MS;
                mb->next_try_ns = ifd_now_ns() + (uint64_t)mb->backoff_ms * 1000000ull;
            } else {
                if (mb->failures)
                    log_notice("Worker %s (%s) is back after %d failed attempts", remote_link_name(l),
                               remote_link_addr(l), mb->failures);
                mb->failures = 0;
                mb->backoff_ms = 0;
                mb->last_ping_ns = ifd_now_ns();
            }
            pthread_mutex_lock(&c->lock);
            pthread_cond_broadcast(&c->cond);
            pthread_mutex_unlock(&c->lock);
        }
        pthread_mutex_lock(&c->lock);
        if (c->stopping)
            break;
        wait_locked(c, 100);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Bytes a worker holds for layer l: its tensors in the checkpoint (packed
 * as stored) plus its KV cache for n_seq_max x n_ctx positions. */
static uint64_t layer_bytes(const struct model *m, int l, int n_seq_max, int n_ctx)
{
    return model_bytes_layer(m->st, l) +
           model_bytes_kv_position(&m->cfg) * (uint64_t)n_ctx * (uint64_t)n_seq_max;
}

int cluster_create(const struct inferd_config *cfg, const struct model *m, const char *model_dir, int n_seq_max,
                   int n_ctx, int n_batch_max, struct cluster **ret, ifd_error *err)
{
    int n_layers = m->cfg.n_layers;
    struct cluster *c = calloc(1, sizeof(*c));
    if (!c)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    c->m = m;
    c->n_seq_max = n_seq_max;
    c->n_ctx = n_ctx;
    c->n_batch_max = n_batch_max;
    c->io_timeout_ms = cfg->cluster_io_timeout_s * 1000;
    c->backend = cfg->backend;
    c->device = cfg->device;
    const char *topo = getenv("INFERD_CLUSTER_TOPOLOGY");
    c->star = topo && strcmp(topo, "star") == 0;
    int r = 0;
    char *cpath = NULL;
    if (asprintf(&cpath, "%s/config.json", model_dir) < 0) {
        cluster_destroy(c);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    if ((r = file_read(cpath, NET_MAX_CONFIG, 0, &c->config_json, &c->config_len, err)) < 0) {
        free(cpath);
        cluster_destroy(c);
        return r;
    }
    free(cpath);
    const char *base = strrchr(model_dir, '/');
    c->model_name = strdup(base && base[1] ? base + 1 : model_dir);
    if (cfg->cluster_key_file) {
        if ((r = net_key_load(cfg->cluster_key_file, &c->key, err)) < 0) {
            cluster_destroy(c);
            return r;
        }
        c->have_key = true;
    } else {
        if ((r = net_crypto_init(err)) < 0) {
            cluster_destroy(c);
            return r;
        }
        for (int i = 0; i < cfg->n_workers; i++)
            if (!net_addr_is_loopback(cfg->workers[i].address) && !cfg->allow_insecure_cluster) {
                cluster_destroy(c);
                return ifd_error_set(err, -EPERM,
                                     "[worker.%s] %s is not on loopback and no cluster key is configured: set "
                                     "[cluster] key_file (or allow_insecure = true on a trusted network)",
                                     cfg->workers[i].name, cfg->workers[i].address);
            }
        log_warn("No cluster key: traffic to the workers is neither authenticated nor encrypted");
    }

    /* Layer ranges: explicit ones first, then `auto` workers share what is left. */
    c->mem = calloc((size_t)(cfg->n_workers ? cfg->n_workers : 1), sizeof(*c->mem));
    bool *taken = calloc((size_t)n_layers, sizeof(bool));
    if (!c->mem || !taken) {
        free(taken);
        cluster_destroy(c);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    int n_auto = 0;
    for (int i = 0; i < cfg->n_workers; i++) {
        const struct inferd_worker_cfg *w = &cfg->workers[i];
        if (w->auto_layers) {
            n_auto++;
            continue;
        }
        if (w->layer_first < 0 || w->layer_last > n_layers || w->layer_first >= w->layer_last) {
            free(taken);
            cluster_destroy(c);
            return ifd_error_set(err, -ERANGE, "[worker.%s] layers %d-%d: the model has layers 0-%d", w->name,
                                 w->layer_first, w->layer_last - 1, n_layers - 1);
        }
        for (int l = w->layer_first; l < w->layer_last; l++) {
            if (taken[l]) {
                free(taken);
                cluster_destroy(c);
                return ifd_error_set(err, -EINVAL, "[worker.%s] layer %d is assigned to two workers", w->name, l);
            }
            taken[l] = true;
        }
    }
    int free_first = -1, free_last = -1, n_free = 0;
    for (int l = 0; l < n_layers; l++)
        if (!taken[l]) {
            if (free_first < 0)
                free_first = l;
            free_last = l + 1;
            n_free++;
        }
    free(taken);
    if (n_auto > 0 && (n_free < n_auto || free_last - free_first != n_free)) {
        cluster_destroy(c);
        return ifd_error_set(err, -EINVAL,
                             "layers = auto needs one contiguous block of at least %d unassigned layers (%d free)",
                             n_auto, n_free);
    }
    int auto_i = 0;
    for (int i = 0; i < cfg->n_workers; i++) {
        const struct inferd_worker_cfg *w = &cfg->workers[i];
        int first = w->layer_first, last = w->layer_last;
        if (w->auto_layers) {
            /* Provisional even split, in configuration order; the supervisor
             * redraws it by the workers' reports before pushing anything. */
            first = free_first + n_free * auto_i / n_auto;
            last = free_first + n_free * (auto_i + 1) / n_auto;
            auto_i++;
        }
        if ((r = remote_link_create(w->name, w->address, first, last, &c->mem[c->n].link, err)) < 0) {
            cluster_destroy(c);
            return r;
        }
        c->mem[c->n].auto_layers = w->auto_layers;
        c->n++;
    }
    if (n_auto > 0) {
        c->split_pending = true;
        c->auto_first = free_first;
        c->auto_n = n_free;
        for (int l = free_first; l < free_last; l++) {
            uint64_t b = layer_bytes(m, l, n_seq_max, n_ctx);
            c->auto_layer_bytes = b > c->auto_layer_bytes ? b : c->auto_layer_bytes;
        }
    }
    qsort(c->mem, (size_t)c->n, sizeof(*c->mem), cmp_member);
    if (pthread_create(&c->thread, NULL, supervisor, c) != 0) {
        cluster_destroy(c);
        return ifd_error_set(err, -EAGAIN, "cannot start the cluster thread");
    }
    c->thread_started = true;
    *ret = c;
    return 0;
}

static bool all_ready(struct cluster *c, char *status, size_t len)
{
    bool ok = true;
    size_t off = (size_t)snprintf(status, len, "Waiting for workers:");
    for (int i = 0; i < c->n; i++) {
        struct remote_link *l = c->mem[i].link;
        enum remote_link_state st = remote_link_state(l);
        if (st != REMOTE_LINK_READY)
            ok = false;
        char d[128];
        remote_link_detail(l, d, sizeof(d));
        if (off < len)
            off += (size_t)snprintf(status + off, len - off, " %s %s%s%s%s", remote_link_name(l),
                                    remote_link_state_name(st), d[0] ? " (" : "", d, d[0] ? ")" : "");
    }
    return ok;
}

int cluster_wait_ready(struct cluster *c, const atomic_bool *cancel, ifd_error *err)
{
    char last[1024] = "", now[1024];
    pthread_mutex_lock(&c->lock);
    for (;;) {
        bool ok = all_ready(c, now, sizeof(now));
        if (ok)
            break;
        if (cancel && atomic_load(cancel)) {
            pthread_mutex_unlock(&c->lock);
            return ifd_error_set(err, -ECANCELED, "stopped while waiting for the workers");
        }
        if (strcmp(now, last) != 0) {
            sdn_status("%s", now);
            memcpy(last, now, sizeof(last));
        }
        wait_locked(c, 200);
    }
    pthread_mutex_unlock(&c->lock);
    return 0;
}

int cluster_build_stages(struct cluster *c, const struct model *m, struct thread_pool *pool,
                         struct stage ***ret_stages, int *ret_n, ifd_error *err)
{
    int n_layers = m->cfg.n_layers;
    struct stage **stages = calloc((size_t)(2 * c->n + 2), sizeof(*stages));
    struct remote_link **chain = calloc((size_t)(c->n ? c->n : 1), sizeof(*chain));
    if (!stages || !chain) {
        free(stages);
        free(chain);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    struct remote_stage_opts ro = {.hidden_size = m->cfg.hidden_size, .n_seq_max = c->n_seq_max, .n_ctx = c->n_ctx,
                                   .max_tokens = c->n_batch_max, .timeout_ms = c->io_timeout_ms};
    int n = 0, r = 0, layer = 0, i = 0;
    while (layer < n_layers && r >= 0) {
        if (i < c->n && remote_link_first(c->mem[i].link) == layer) {
            int k = 0;
            do {
                chain[k++] = c->mem[i++].link;
            } while (!c->star && i < c->n && remote_link_first(c->mem[i].link) == remote_link_last(chain[k - 1]));
            r = remote_stage_create(chain, k, &ro, &stages[n], err);
            if (r >= 0)
                layer = remote_link_last(chain[k - 1]), n++;
        } else {
            int end = i < c->n ? remote_link_first(c->mem[i].link) : n_layers;
            const char *backend_name;
            r = backend_stage_create(c->backend, c->device, m, layer, end, c->n_seq_max, c->n_ctx, c->n_batch_max,
                                     pool, &stages[n], &backend_name, err);
            if (r >= 0)
                n++;
            layer = end;
        }
    }
    free(chain);
    if (r < 0) {
        for (int j = 0; j < n; j++)
            stage_destroy(stages[j]);
        free(stages);
        return r;
    }
    *ret_stages = stages;
    *ret_n = n;
    return 0;
}

int cluster_count_unready(struct cluster *c, char *what, size_t what_len)
{
    int n = 0;
    for (int i = 0; c && i < c->n; i++) {
        struct remote_link *l = c->mem[i].link;
        enum remote_link_state st = remote_link_state(l);
        if (st == REMOTE_LINK_READY)
            continue;
        if (n++ == 0 && what_len) {
            char d[256];
            remote_link_detail(l, d, sizeof(d));
            snprintf(what, what_len, "worker %s (%s) is %s%s%s", remote_link_name(l), remote_link_addr(l),
                     remote_link_state_name(st), d[0] ? ": " : "", d);
        }
    }
    return n;
}

cJSON *cluster_status_json(struct cluster *c)
{
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; c && i < c->n; i++) {
        struct member *mb = &c->mem[i];
        struct remote_link *l = mb->link;
        struct remote_link_stats s;
        remote_link_get_stats(l, &s);
        char d[256], layers[32];
        remote_link_detail(l, d, sizeof(d));
        snprintf(layers, sizeof(layers), "%d-%d", remote_link_first(l), remote_link_last(l) - 1);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", remote_link_name(l));
        cJSON_AddStringToObject(o, "address", remote_link_addr(l));
        cJSON_AddStringToObject(o, "layers", layers);
        cJSON_AddNumberToObject(o, "layer_first", remote_link_first(l));
        cJSON_AddNumberToObject(o, "layer_last", remote_link_last(l));
        cJSON_AddStringToObject(o, "state", remote_link_state_name(remote_link_state(l)));
        cJSON_AddStringToObject(o, "detail", d);
        cJSON_AddNumberToObject(o, "rtt_ms", s.rtt_ms);
        cJSON_AddNumberToObject(o, "bytes_sent", (double)s.bytes_sent);
        cJSON_AddNumberToObject(o, "bytes_received", (double)s.bytes_received);
        cJSON_AddNumberToObject(o, "forwards", (double)s.forwards);
        cJSON_AddNumberToObject(o, "tokens", (double)s.tokens);
        cJSON_AddNumberToObject(o, "forward_ms_per_token", s.tokens ? s.forward_ms / (double)s.tokens : 0);
        cJSON_AddNumberToObject(o, "reconnects", s.reconnects);
        cJSON_AddBoolToObject(o, "auto_layers", mb->auto_layers);
        if (mb->reported) {
            cJSON_AddNumberToObject(o, "mem_available", (double)mb->mem_available);
            cJSON_AddNumberToObject(o, "speed_mbps", mb->speed_mbps);
            cJSON_AddNumberToObject(o, "threads", mb->n_threads);
        }
        if (mb->pushed) {
            cJSON *p = cJSON_AddObjectToObject(o, "weights");
            cJSON_AddNumberToObject(p, "tensors", (double)mb->push.tensors_total);
            cJSON_AddNumberToObject(p, "tensors_sent", (double)mb->push.tensors_sent);
            cJSON_AddNumberToObject(p, "tensors_cached", (double)mb->push.tensors_cached);
            cJSON_AddNumberToObject(p, "bytes_sent_raw", (double)mb->push.bytes_raw);
            cJSON_AddNumberToObject(p, "bytes_sent_wire", (double)mb->push.bytes_wire);
            cJSON_AddNumberToObject(p, "push_ms", mb->push.push_ms);
            cJSON_AddNumberToObject(p, "load_ms", mb->push.load_ms);
            cJSON_AddNumberToObject(p, "worker_rss_bytes", (double)mb->push.worker_rss);
        }
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

void cluster_destroy(struct cluster *c)
{
    if (!c)
        return;
    if (c->thread_started) {
        pthread_mutex_lock(&c->lock);
        c->stopping = true;
        pthread_cond_broadcast(&c->cond);
        pthread_mutex_unlock(&c->lock);
        pthread_join(c->thread, NULL);
    }
    for (int i = 0; i < c->n; i++) {
        remote_link_destroy(c->mem[i].link);
        wp_manifest_destroy(c->mem[i].manifest);
    }
    free(c->mem);
    free(c->config_json);
    free(c->model_name);
    net_wipe(&c->key, sizeof(c->key));
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    free(c);
}
