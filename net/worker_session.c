#include "worker_session.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/clock.h"
#include "conn.h"
#include "log.h"
#include "model/model_bytes.h"
#include "model/model_config.h"

/* How long a reply (HAVE, READY) may take to leave: the master reads them at once. */
#define WORKER_SESSION_SEND_TIMEOUT_MS 30000

struct worker_session {
    pthread_mutex_t lock;     /* setup messages of concurrent masters */
    struct worker_session_opts o;
    struct net_assign assign; /* the current assignment (owned) */
    bool assigned;
    struct net_buf out;
};

int worker_session_create(const struct worker_session_opts *opts, struct worker_session **ret, ifd_error *err)
{
    if (!opts->cache || !opts->stage_create)
        return ifd_error_set(err, -EINVAL, "worker session: a cache and a stage factory are required");
    struct worker_session *ws = calloc(1, sizeof(*ws));
    if (!ws)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    pthread_mutex_init(&ws->lock, NULL);
    ws->o = *opts;
    *ret = ws;
    return 0;
}

void worker_session_destroy(struct worker_session *ws)
{
    if (!ws)
        return;
    net_assign_finish(&ws->assign);
    net_buf_finish(&ws->out);
    pthread_mutex_destroy(&ws->lock);
    free(ws);
}

/* The status line is composed here (the model name is the master's, of any
 * length): asprintf, no fixed buffer. */
static void session_status(const struct worker_session *ws, const char *verb, const struct net_assign *a)
{
    char *s;
    if (!ws->o.status || asprintf(&s, "%s layers %u-%u of %s", verb, a->layer_first, a->layer_last - 1,
                                  a->model_name) < 0)
        return;
    ws->o.status(s);
    free(s);
}

/* What a served stage keeps alive, its model (which holds the image of the
 * weights, st_open_image()): released after the stage is destroyed. */
static void loaded_model_release(void *model)
{
    model_destroy(model);
}

static int load_stage(struct worker_session *ws, struct stage_server *srv, struct net_ready *ret, ifd_error *err)
{
    const struct net_assign *a = &ws->assign;
    uint64_t t0 = ifd_now_ns();
    void *image;
    size_t len;
    int r = wp_cache_build_image(ws->o.cache, a, &image, &len, err);
    if (r < 0)
        return r;
    /* An image the model owns, not a buffer: the CPU stage copies 4- and
     * 8-bit weights into panels and gives the image's pages back
     * (model_weight_for_cpu()), so the weights are not held twice. */
    st_model *st;
    if ((r = st_open_image(image, len, "received weights", &st, err)) < 0)
        return r;
    struct model_config mc;
    if ((r = model_config_parse(a->config_json, a->config_len, "master's config.json", &mc, err)) < 0) {
        st_close(st);
        return r;
    }
    if (mc.n_layers != (int)a->n_layers) {
        model_config_finish(&mc);
        st_close(st);
        return ifd_error_set(err, -EINVAL, "assignment says %u layers, the config %d", a->n_layers, mc.n_layers);
    }
    struct model_load_opts o = model_load_opts_default();
    o.layer_first = (int)a->layer_first;
    o.layer_last = (int)a->layer_last;
    o.bind_embed = false;
    o.bind_head = false;
    o.quantize_bits = ws->o.quantize_bits;
    o.quantize_group_size = ws->o.quantize_group_size;
    o.quantize_into_panels = ws->o.quantize_into_panels;
    struct model *m;
    if ((r = model_bind(st, &mc, &o, &m, err)) < 0) {
        model_config_finish(&mc);
        st_close(st);
        return r;
    }
    struct stage *stage;
    if ((r = ws->o.stage_create(ws->o.stage_ctx, m, a, &stage, err)) < 0) {
        model_destroy(m);
        return r;
    }
    stage_server_set_stage(srv, stage, loaded_model_release, m);
    ret->weight_bytes = len;
    ret->rss_bytes = net_rss_bytes();
    ret->load_ms = (ifd_now_ns() - t0) / 1000000;
    log_info("Serving layers %u-%u of %s (%.1f MiB of weights, %u sequences x %u positions); RSS %.1f MiB",
             a->layer_first, a->layer_last - 1, a->model_name, (double)len / 1048576.0, a->n_seq_max, a->n_ctx,
             (double)ret->rss_bytes / 1048576.0);
    session_status(ws, "Serving", a);
    return 0;
}

/* The operator's bound on what this worker's layers may take: the declared
 * weights plus the KV cache of the master's sequences and context, as the
 * master counts them when it places `layers = auto` (daemon/cluster.c), so
 * an explicit range too large fails here, before a byte is transferred,
 * with a message naming the key instead of an out-of-memory later. */
static int check_memory(const struct worker_session *ws, const struct net_assign *a, ifd_error *err)
{
    if (!ws->o.memory_max_bytes)
        return 0;
    struct model_config mc;
    int r = model_config_parse(a->config_json, a->config_len, "master's config.json", &mc, err);
    if (r < 0)
        return r;
    uint64_t weights = 0;
    for (uint32_t i = 0; i < a->n_tensors; i++)
        weights += a->tensors[i].nbytes;
    uint64_t kv = model_bytes_kv_position(&mc) * (uint64_t)(a->layer_last - a->layer_first) *
                  (uint64_t)a->n_seq_max * (uint64_t)a->n_ctx;
    model_config_finish(&mc);
    if (weights + kv <= ws->o.memory_max_bytes)
        return 0;
    return ifd_error_set(err, -ENOSPC,
                         "layers %u-%u need %.1f MiB (%.1f MiB of weights, %.1f MiB of KV cache for %u sequences x "
                         "%u positions), over this worker's [node] memory_max_bytes of %.1f MiB",
                         a->layer_first, a->layer_last - 1, (double)(weights + kv) / 1048576.0,
                         (double)weights / 1048576.0, (double)kv / 1048576.0, a->n_seq_max, a->n_ctx,
                         (double)ws->o.memory_max_bytes / 1048576.0);
}

static int on_assign(struct worker_session *ws, struct net_conn *c, const uint8_t *p, size_t len, ifd_error *err)
{
    struct net_assign a;
    int r;
    if ((r = net_assign_decode(p, len, &a, err)) < 0)
        return r;
    if ((r = check_memory(ws, &a, err)) < 0) {
        net_assign_finish(&a);
        return r;
    }
    /* The declared sizes are checked against the quota and the disk before a
     * byte is written (a peer could declare a 1 TiB tensor of compressible
     * zeros); what the new assignment does not use goes first. */
    size_t pruned = 0;
    if ((r = wp_cache_reserve(ws->o.cache, &a, &pruned, err)) < 0) {
        net_assign_finish(&a);
        net_assign_finish(&ws->assign);
        ws->assigned = false;
        return r;
    }
    if (pruned)
        log_info("Cache: removed %zu tensors not used by the new assignment to make room", pruned);
    net_assign_finish(&ws->assign);
    ws->assign = a;
    ws->assigned = true;
    uint64_t *have = calloc(a.n_tensors ? a.n_tensors : 1, sizeof(uint64_t));
    if (!have)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    if (ws->o.local) {
        size_t taken, differ;
        ifd_error serr;
        if (wp_cache_seed_local(ws->o.cache, &ws->assign, ws->o.local, &taken, &differ, &serr) < 0)
            log_warn("Local checkpoint not used: %s", serr.msg);
        else if (taken || differ)
            log_info("Local checkpoint: %zu tensors taken (hash verified), %zu differ from the master's", taken,
                     differ);
    }
    wp_cache_have(ws->o.cache, &ws->assign, have);
    uint64_t total = 0;
    uint32_t complete = 0;
    for (uint32_t i = 0; i < a.n_tensors; i++) {
        total += a.tensors[i].nbytes;
        complete += have[i] == a.tensors[i].nbytes;
    }
    log_info("Assigned layers %u-%u of %s by %s: %u tensors (%.1f MiB), %u already cached", a.layer_first,
             a.layer_last - 1, a.model_name, net_conn_peer(c), a.n_tensors, (double)total / 1048576.0, complete);
    session_status(ws, "Receiving", &a);
    r = net_have_encode(&ws->out, have, a.n_tensors);
    free(have);
    if (r >= 0)
        r = net_conn_send(c, NET_MSG_HAVE, ws->out.data, ws->out.len, WORKER_SESSION_SEND_TIMEOUT_MS, err);
    return r;
}

int worker_session_setup(void *ctx, struct stage_server *srv, struct net_conn *c, uint16_t type, const uint8_t *p,
                         size_t len, ifd_error *err)
{
    struct worker_session *ws = ctx;
    int r = 0;
    pthread_mutex_lock(&ws->lock);
    switch (type) {
    case NET_MSG_ASSIGN:
        r = on_assign(ws, c, p, len, err);
        break;
    case NET_MSG_TENSOR_CHUNK: {
        struct net_chunk ch;
        if (!ws->assigned) {
            r = ifd_error_set(err, -EPROTO, "TENSOR_CHUNK before ASSIGN");
            break;
        }
        if ((r = net_chunk_decode(p, len, &ch, err)) < 0)
            break;
        r = wp_cache_put_chunk(ws->o.cache, &ws->assign, &ch, err);
        break;
    }
    case NET_MSG_LOAD: {
        if (!ws->assigned) {
            r = ifd_error_set(err, -EPROTO, "LOAD before ASSIGN");
            break;
        }
        struct net_ready rd;
        ifd_error lerr;
        int lr = load_stage(ws, srv, &rd, &lerr);
        if (lr < 0) {
            /* The master hears why and may retry; the connection stays. */
            log_err("Failed to build the stage: %s", lerr.msg);
            net_conn_send_error(c, lr, 0, lerr.msg);
            break;
        }
        r = net_ready_encode(&ws->out, &rd);
        if (r >= 0)
            r = net_conn_send(c, NET_MSG_READY, ws->out.data, ws->out.len, WORKER_SESSION_SEND_TIMEOUT_MS, err);
        break;
    }
    default:
        r = ifd_error_set(err, -EPROTO, "unexpected %s", net_msg_name(type));
    }
    pthread_mutex_unlock(&ws->lock);
    return r;
}

void worker_session_master_closed(void *ctx)
{
    struct worker_session *ws = ctx;
    /* Runs on the closing master's own thread under the server's master_lock
     * (see stage_server.h). A setup message may still run on the thread of
     * a master this one replaced, holding ws->lock; waiting for it here
     * would invert the order setup -> stage -> master lock, so only a free
     * lock lets the partial files go now. Otherwise they stay until the next
     * master leaves or the worker restarts (both remove them). */
    if (pthread_mutex_trylock(&ws->lock) != 0)
        return;
    size_t n = wp_cache_remove_partial(ws->o.cache);
    pthread_mutex_unlock(&ws->lock);
    if (n)
        log_info("Cache: removed %zu partial tensors of the master that left", n);
}
