#include "stage_server.h"

#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "base/clock.h"
#include "proto.h"

#define MAX_PEERS 8

struct peer_link {
    char addr[NET_ADDR_MAX];
    struct net_conn *conn;
};

struct conn_slot {
    struct net_conn *conn;
    struct stage_server *srv;
    int role;           /* the peer's role once authenticated */
    bool used;
    bool authed;        /* handshake done: out of the pre-auth pool */
    bool evicted;       /* dropped from the pre-auth pool for a newer connection */
    bool spoke;         /* its first bytes arrived (a staller never gets here) */
    uint64_t accepted_ns;
    char ip[INET6_ADDRSTRLEN];
};

/* Pre-auth connections linger a moment after being evicted (their thread
 * has to notice): room for as many again, the authenticated and the master. */
#define N_SLOTS (2 * STAGE_SERVER_MAX_PREAUTH + STAGE_SERVER_MAX_CONNS + 1)

struct stage_server {
    struct stage_server_opts opts;
    stage_server_setup_fn setup;
    void *setup_ctx;

    /* The stage and everything a forward touches, under stage_lock. */
    pthread_mutex_t stage_lock;
    struct stage *stage;
    void (*release)(void *);
    void *release_ctx;
    /* Sized in bytes, never by a token count alone: the stage (and with it
     * the hidden size) changes whenever a master assigns another model. */
    float *hidden;                /* [n_tokens, hidden of the current stage] */
    int32_t *seq_ids, *positions; /* [n_tokens] */
    size_t cap_hidden_bytes, cap_id_bytes;
    struct net_buf out;
    struct peer_link peers[MAX_PEERS];

    /* The master connection that RESULTs of chains go to. */
    pthread_mutex_t master_lock;
    struct net_conn *master;

    /* Connections, under conns_lock. */
    pthread_mutex_t conns_lock;
    pthread_cond_t conns_cond;
    struct conn_slot slots[N_SLOTS];
    int n_conns;
    /* What unauthenticated peers can make us log, at most 10 lines per 5 s. */
    struct log_ratelimit preauth_log;
    int stop_pipe[2];
    bool stopping;
};

uint64_t net_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    unsigned long size, rss;
    int n = fscanf(f, "%lu %lu", &size, &rss);
    fclose(f);
    return n == 2 ? (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

int stage_server_create(const struct stage_server_opts *opts, stage_server_setup_fn setup, void *setup_ctx,
                        struct stage_server **ret, ifd_error *err)
{
    struct stage_server *s = calloc(1, sizeof(*s));
    if (!s)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    s->opts = *opts;
    if (s->opts.io_timeout_ms <= 0)
        s->opts.io_timeout_ms = 30000;
    if (s->opts.forward_timeout_ms <= 0)
        s->opts.forward_timeout_ms = s->opts.io_timeout_ms;
    if (s->opts.handshake_timeout_ms <= 0)
        s->opts.handshake_timeout_ms = NET_HANDSHAKE_TIMEOUT_MS;
    s->preauth_log = (struct log_ratelimit)LOG_RATELIMIT_INIT(5000, 10);
    s->setup = setup;
    s->setup_ctx = setup_ctx;
    pthread_mutex_init(&s->stage_lock, NULL);
    pthread_mutex_init(&s->master_lock, NULL);
    pthread_mutex_init(&s->conns_lock, NULL);
    pthread_cond_init(&s->conns_cond, NULL);
    if (pipe2(s->stop_pipe, O_CLOEXEC) < 0) {
        int r = -errno;
        free(s);
        return ifd_error_set(err, r, "pipe: %s", strerror(-r));
    }
    *ret = s;
    return 0;
}

static void drop_stage_locked(struct stage_server *s)
{
    stage_destroy(s->stage);
    s->stage = NULL;
    if (s->release)
        s->release(s->release_ctx);
    s->release = NULL;
    s->release_ctx = NULL;
}

void stage_server_set_stage(struct stage_server *s, struct stage *st, void (*release)(void *), void *release_ctx)
{
    pthread_mutex_lock(&s->stage_lock);
    drop_stage_locked(s);
    /* A new stage means a (re)connected master: connections to next workers
     * opened for the old topology may be stale (a half-open one would swallow
     * hidden states), so open them afresh. */
    for (int i = 0; i < MAX_PEERS; i++) {
        net_conn_destroy(s->peers[i].conn);
        s->peers[i].conn = NULL;
    }
    s->stage = st;
    s->release = release;
    s->release_ctx = release_ctx;
    pthread_mutex_unlock(&s->stage_lock);
}

void stage_server_stop(struct stage_server *s)
{
    pthread_mutex_lock(&s->conns_lock);
    if (!s->stopping) {
        s->stopping = true;
        ssize_t w = write(s->stop_pipe[1], "x", 1);
        (void)w;
    }
    for (int i = 0; i < N_SLOTS; i++)
        if (s->slots[i].used)
            net_conn_shutdown(s->slots[i].conn);
    pthread_mutex_unlock(&s->conns_lock);
}

void stage_server_destroy(struct stage_server *s)
{
    if (!s)
        return;
    stage_server_stop(s);
    pthread_mutex_lock(&s->conns_lock);
    while (s->n_conns > 0)
        pthread_cond_wait(&s->conns_cond, &s->conns_lock);
    pthread_mutex_unlock(&s->conns_lock);
    pthread_mutex_lock(&s->stage_lock);
    drop_stage_locked(s);
    pthread_mutex_unlock(&s->stage_lock);
    for (int i = 0; i < MAX_PEERS; i++)
        net_conn_destroy(s->peers[i].conn);
    free(s->hidden);
    free(s->seq_ids);
    free(s->positions);
    net_buf_finish(&s->out);
    close(s->stop_pipe[0]);
    close(s->stop_pipe[1]);
    pthread_mutex_destroy(&s->stage_lock);
    pthread_mutex_destroy(&s->master_lock);
    pthread_mutex_destroy(&s->conns_lock);
    pthread_mutex_destroy(&s->preauth_log.lock);
    pthread_cond_destroy(&s->conns_cond);
    free(s);
}

/* Sends to the master connection (RESULT or ERROR at the end of a chain). */
static int send_to_master(struct stage_server *s, uint16_t type, const void *p, size_t len, ifd_error *err)
{
    pthread_mutex_lock(&s->master_lock);
    int r = s->master ? net_conn_send(s->master, type, p, len, s->opts.forward_timeout_ms, err)
                      : ifd_error_set(err, -ENOTCONN, "no master is connected");
    pthread_mutex_unlock(&s->master_lock);
    return r;
}

/* Reports a failed request: to the connection it came on if that is the
 * master's, else to the master. */
static void report_error(struct stage_server *s, struct net_conn *from, int from_role, int code, uint64_t req_id,
                         const char *msg)
{
    log_warn("request %llu from %s failed: %s", (unsigned long long)req_id, net_conn_peer(from), msg);
    struct net_buf b = {0};
    if (net_error_encode(&b, code, req_id, msg) >= 0) {
        if (from_role == NET_ROLE_MASTER)
            net_conn_send(from, NET_MSG_ERROR, b.data, b.len, 1000, NULL);
        else
            send_to_master(s, NET_MSG_ERROR, b.data, b.len, NULL);
    }
    net_buf_finish(&b);
}

/* The connection to the next hop, opened (and authenticated) on first use. */
static int peer_conn(struct stage_server *s, const char *addr, bool fresh, struct net_conn **ret, ifd_error *err)
{
    int free_slot = -1;
    for (int i = 0; i < MAX_PEERS; i++) {
        if (s->peers[i].conn && strcmp(s->peers[i].addr, addr) == 0) {
            /* The next worker never sends on this connection, so anything
             * readable is its end: closed (it restarted) or reset. Sending
             * into it would lose the hidden state silently. */
            struct pollfd pf = {.fd = net_conn_fd(s->peers[i].conn), .events = POLLIN | POLLRDHUP};
            bool gone = poll(&pf, 1, 0) != 0;
            if (!fresh && !gone && !net_conn_is_broken(s->peers[i].conn)) {
                *ret = s->peers[i].conn;
                return 0;
            }
            net_conn_destroy(s->peers[i].conn);
            s->peers[i].conn = NULL;
        }
        if (!s->peers[i].conn && free_slot < 0)
            free_slot = i;
    }
    if (free_slot < 0) {
        /* More next hops than slots only happens when the topology changed:
         * forget the oldest. */
        net_conn_destroy(s->peers[0].conn);
        s->peers[0].conn = NULL;
        free_slot = 0;
    }
    struct net_conn *c;
    int r = net_conn_connect(addr, NET_HANDSHAKE_TIMEOUT_MS, &c, err);
    if (r < 0)
        return r;
    struct net_hello self = {.role = NET_ROLE_PEER, .caps = NET_CAP_CHAIN | NET_CAP_ZSTD,
                             .n_threads = (uint32_t)s->opts.n_threads}, peer;
    r = net_conn_handshake_client(c, s->opts.key, &self, &peer, err);
    if (r < 0) {
        net_conn_destroy(c);
        return r;
    }
    snprintf(s->peers[free_slot].addr, NET_ADDR_MAX, "%s", addr);
    s->peers[free_slot].conn = c;
    *ret = c;
    return 0;
}

/* Grows the forward buffers to hold n tokens of a `hidden`-wide state. */
static int reserve_tokens(struct stage_server *s, uint32_t n, uint32_t hidden)
{
    size_t hidden_bytes = (size_t)n * hidden * sizeof(float), id_bytes = (size_t)n * sizeof(int32_t);
    if (hidden_bytes > s->cap_hidden_bytes) {
        float *h = realloc(s->hidden, hidden_bytes);
        if (!h)
            return -ENOMEM;
        s->hidden = h;
        s->cap_hidden_bytes = hidden_bytes;
    }
    if (id_bytes > s->cap_id_bytes) {
        int32_t *a = realloc(s->seq_ids, id_bytes);
        if (!a)
            return -ENOMEM;
        s->seq_ids = a;
        int32_t *p = realloc(s->positions, id_bytes);
        if (!p)
            return -ENOMEM; /* seq_ids is larger than cap_id_bytes says: harmless */
        s->positions = p;
        s->cap_id_bytes = id_bytes;
    }
    return 0;
}

static int32_t get_i32(const void *base, size_t i)
{
    int32_t v;
    memcpy(&v, (const uint8_t *)base + i * 4, 4);
    return (int32_t)le32toh((uint32_t)v);
}

/* Whether [cluster] next_hops lets this worker connect to addr. */
static bool next_hop_allowed(const struct stage_server *s, const char *addr)
{
    if (s->opts.n_next_hops == 0)
        return net_addr_is_loopback(addr);
    char host[256], ahost[256];
    int port, aport;
    if (net_addr_split(addr, NET_DEFAULT_PORT, host, sizeof(host), &port, NULL) < 0)
        return false;
    for (size_t i = 0; i < s->opts.n_next_hops; i++) {
        const char *e = s->opts.next_hops[i];
        if (strcmp(e, "*") == 0)
            return true;
        /* An entry without a port stands for every port of its host. */
        bool any_port = e[0] == '[' ? !strstr(e, "]:") : !strchr(e, ':');
        if (net_addr_split(e, NET_DEFAULT_PORT, ahost, sizeof(ahost), &aport, NULL) < 0)
            continue;
        if (strcmp(host, ahost) == 0 && (any_port || aport == port))
            return true;
    }
    return false;
}

/* Returns < 0 only for a malformed frame (the connection is closed then);
 * request-level failures are reported with ERROR and return 0. */
static int handle_forward(struct stage_server *s, struct net_conn *c, int role, const uint8_t *p, size_t len,
                          ifd_error *err)
{
    pthread_mutex_lock(&s->stage_lock);
    struct stage *st = s->stage;
    struct net_forward f;
    int r;
    if (!st) {
        /* Still decode the fixed part, to name the request in the error. */
        uint64_t req = 0;
        if (len >= 8) {
            memcpy(&req, p, 8);
            req = le64toh(req);
        }
        pthread_mutex_unlock(&s->stage_lock);
        report_error(s, c, role, -EHOSTDOWN, req, "this worker has no stage loaded");
        return 0;
    }
    r = net_forward_decode(p, len, STAGE_SERVER_MAX_TOKENS, (uint32_t)st->hidden_size, &f, err);
    if (r < 0) {
        pthread_mutex_unlock(&s->stage_lock);
        return r;
    }
    char why[IFD_ERROR_MSG_MAX + 160];
    if ((int)f.layer_first != st->layer_first || (int)f.layer_last != st->layer_last) {
        snprintf(why, sizeof(why), "asked for layers [%u, %u), this worker serves [%d, %d)", f.layer_first,
                 f.layer_last, st->layer_first, st->layer_last);
        r = -EINVAL;
        goto request_failed;
    }
    if (reserve_tokens(s, f.n_tokens, (uint32_t)st->hidden_size) < 0) {
        snprintf(why, sizeof(why), "out of memory for %u tokens", f.n_tokens);
        r = -ENOMEM;
        goto request_failed;
    }
    /* sequences and positions are checked by stage_forward() */
    for (uint32_t i = 0; i < f.n_tokens; i++) {
        s->seq_ids[i] = get_i32(f.seq_ids, i);
        s->positions[i] = get_i32(f.positions, i);
    }
    if (f.n_route > 0) {
        /* Before the stage runs: a refused request must leave its KV cache as it was. */
        struct net_route_hop hop;
        if ((r = net_forward_route(&f, 0, &hop, err)) < 0) {
            pthread_mutex_unlock(&s->stage_lock);
            return r;
        }
        if (!next_hop_allowed(s, hop.addr)) {
            snprintf(why, sizeof(why), "next hop %s is not allowed by this worker's [cluster] next_hops", hop.addr);
            r = -EPERM;
            goto request_failed;
        }
    }
    memcpy(s->hidden, f.hidden_data, (size_t)f.n_tokens * (size_t)st->hidden_size * sizeof(float));
#if __BYTE_ORDER != __LITTLE_ENDIAN
#error "stage_server: hidden states are copied as little-endian floats"
#endif
    struct stage_batch b = {.n_tokens = (int)f.n_tokens, .seq_ids = s->seq_ids, .positions = s->positions,
                            .hidden = s->hidden};
    ifd_error ferr;
    r = stage_forward(st, &b, &ferr);
    if (r < 0) {
        snprintf(why, sizeof(why), "stage forward failed: %s", ferr.msg);
        goto request_failed;
    }
    if (f.n_route > 0) {
        struct net_route_hop next;
        r = net_forward_route(&f, 0, &next, err);
        if (r < 0) {
            pthread_mutex_unlock(&s->stage_lock);
            return r;
        }
        struct net_route_hop rest[NET_MAX_ROUTE];
        for (uint32_t i = 1; i < f.n_route; i++) {
            r = net_forward_route(&f, i, &rest[i - 1], err);
            if (r < 0) {
                pthread_mutex_unlock(&s->stage_lock);
                return r;
            }
        }
        struct net_forward nf = {
            .req_id = f.req_id,
            .n_tokens = f.n_tokens,
            .hidden = f.hidden,
            .layer_first = next.layer_first,
            .layer_last = next.layer_last,
            .n_route = f.n_route - 1,
            .route = rest,
            .seq_ids = s->seq_ids,
            .positions = s->positions,
            .hidden_data = s->hidden,
        };
        /* f points into the receive buffer of c, which this thread does not
         * touch again before the next receive: safe to reuse s->out now. */
        r = net_forward_encode(&s->out, &nf);
        ifd_error perr;
        struct net_conn *pc = NULL;
        if (r >= 0) {
            /* One retry on a fresh connection: the next worker may have
             * restarted since the cached connection was opened. */
            for (int attempt = 0; attempt < 2; attempt++) {
                r = peer_conn(s, next.addr, attempt > 0, &pc, &perr);
                if (r >= 0)
                    r = net_conn_send(pc, NET_MSG_FORWARD, s->out.data, s->out.len, s->opts.forward_timeout_ms, &perr);
                if (r >= 0)
                    break;
            }
        }
        if (r < 0) {
            snprintf(why, sizeof(why), "cannot pass the hidden state to the next worker %s: %s", next.addr, perr.msg);
            r = -EHOSTDOWN; /* the master answers 503: a worker of the chain is unreachable */
            goto request_failed;
        }
        pthread_mutex_unlock(&s->stage_lock);
        return 0;
    }
    struct net_result res = {.req_id = f.req_id, .n_tokens = f.n_tokens, .hidden = f.hidden, .hidden_data = s->hidden};
    r = net_result_encode(&s->out, &res);
    ifd_error serr;
    if (r >= 0)
        r = role == NET_ROLE_MASTER
                ? net_conn_send(c, NET_MSG_RESULT, s->out.data, s->out.len, s->opts.forward_timeout_ms, &serr)
                : send_to_master(s, NET_MSG_RESULT, s->out.data, s->out.len, &serr);
    pthread_mutex_unlock(&s->stage_lock);
    if (r < 0)
        log_warn("request %llu: cannot return the result: %s", (unsigned long long)f.req_id,
                serr.msg);
    return 0;

request_failed:
    pthread_mutex_unlock(&s->stage_lock);
    report_error(s, c, role, r, f.req_id, why);
    return 0;
}

static int handle_truncate(struct stage_server *s, struct net_conn *c, const uint8_t *p, size_t len, ifd_error *err)
{
    struct net_kv_truncate kt;
    int r = net_kv_truncate_decode(p, len, &kt, err);
    if (r < 0)
        return r;
    struct net_ack ack = {.req_id = kt.req_id, .status = 0};
    pthread_mutex_lock(&s->stage_lock);
    struct stage *st = s->stage;
    ifd_error terr;
    if (!st)
        ack.status = -EAGAIN;
    else if (kt.n_keep > 0 && kt.seq_id >= 0 && kt.seq_id < st->n_seq_max && kt.n_keep > stage_seq_len(st, kt.seq_id))
        /* The master means to keep positions this worker does not hold: it
         * restarted since they ran, and its caches are gone. Saying so lets
         * the master prefill them again (prefix reuse) rather than send a
         * FORWARD that cannot continue the sequence. */
        ack.status = -ESTALE;
    else
        ack.status = stage_seq_truncate(st, kt.seq_id, kt.n_keep, &terr);
    struct net_buf b = {0};
    r = net_ack_encode(&b, &ack);
    pthread_mutex_unlock(&s->stage_lock);
    if (r >= 0)
        r = net_conn_send(c, NET_MSG_ACK, b.data, b.len, 5000, err);
    net_buf_finish(&b);
    return r;
}

static int handle_stats(struct stage_server *s, struct net_conn *c, ifd_error *err)
{
    struct net_stats ns = {.rss_bytes = net_rss_bytes(), .bytes_in = net_conn_bytes_received(c),
                           .bytes_out = net_conn_bytes_sent(c)};
    pthread_mutex_lock(&s->stage_lock);
    if (s->stage) {
        struct stage_stats st;
        stage_get_stats(s->stage, &st);
        ns.forward_calls = st.forward_calls;
        ns.tokens = st.tokens;
        ns.forward_ms = st.forward_ms;
    }
    pthread_mutex_unlock(&s->stage_lock);
    struct net_buf b = {0};
    int r = net_stats_encode(&b, &ns);
    if (r >= 0)
        r = net_conn_send(c, NET_MSG_STATS, b.data, b.len, 5000, err);
    net_buf_finish(&b);
    return r;
}

/* Moves an authenticated connection out of the pre-auth pool. The master is
 * never refused here (one master at a time is checked by the caller); other
 * authenticated peers are limited to STAGE_SERVER_MAX_CONNS. */
static bool admit_authenticated(struct stage_server *s, struct conn_slot *slot, int role)
{
    pthread_mutex_lock(&s->conns_lock);
    int n = 0;
    for (int i = 0; i < N_SLOTS; i++)
        n += s->slots[i].used && s->slots[i].authed && s->slots[i].role != NET_ROLE_MASTER;
    bool ok = role == NET_ROLE_MASTER || n < STAGE_SERVER_MAX_CONNS;
    if (ok) {
        slot->role = role;
        slot->authed = true;
    }
    pthread_mutex_unlock(&s->conns_lock);
    return ok;
}

static void serve_conn(struct stage_server *s, struct conn_slot *slot)
{
    struct net_conn *c = slot->conn;
    struct net_hello self = {.role = NET_ROLE_WORKER, .caps = NET_CAP_ZSTD | NET_CAP_CHAIN,
                             .mem_available = s->opts.mem_available, .n_threads = (uint32_t)s->opts.n_threads,
                             .speed_mbps = s->opts.speed_mbps}, peer;
    ifd_error err;
    net_conn_set_handshake_timeout(c, s->opts.handshake_timeout_ms);
    /* A client sends HELLO as soon as it is connected: once bytes are here
     * this connection is no longer the first to be evicted (see
     * preauth_make_room). The wait counts against the handshake's deadline. */
    uint64_t t0 = ifd_now_ns();
    if (net_conn_wait_readable(c, s->opts.handshake_timeout_ms) > 0)
        __atomic_store_n(&slot->spoke, true, __ATOMIC_RELEASE);
    int waited = (int)((ifd_now_ns() - t0) / 1000000);
    net_conn_set_handshake_timeout(c, waited < s->opts.handshake_timeout_ms ? s->opts.handshake_timeout_ms - waited : 1);
    if (net_conn_handshake_server(c, s->opts.key, &self, &peer, &err) < 0) {
        /* Anyone can cause this line: rate-limited. */
        if (__atomic_load_n(&slot->evicted, __ATOMIC_ACQUIRE))
            log_ratelimited(&s->preauth_log, LOG_LEVEL_WARNING,
                            "dropped unauthenticated connection from %s for a newer one", net_conn_peer(c));
        else if (!s->stopping)
            log_ratelimited(&s->preauth_log, LOG_LEVEL_WARNING, "refused connection: %s", err.msg);
        return;
    }
    if (peer.role != NET_ROLE_MASTER && peer.role != NET_ROLE_PEER) {
        log_warn("refused connection from %s: role %u", net_conn_peer(c), peer.role);
        return;
    }
    if (!admit_authenticated(s, slot, peer.role)) {
        log_warn("refused %s: %d authenticated connections already open", net_conn_peer(c), STAGE_SERVER_MAX_CONNS);
        net_conn_send_error(c, -EBUSY, 0, "too many connections to this worker");
        return;
    }
    log_info("%s %s connected", peer.role == NET_ROLE_MASTER ? "master" : "previous worker",
            net_conn_peer(c));
    if (peer.role == NET_ROLE_MASTER) {
        /* One master at a time: a second one would replace the stage under
         * the first (and share its KV slots). A restarted master's old
         * connection is gone by the time it retries. */
        char why[160];
        pthread_mutex_lock(&s->master_lock);
        struct net_conn *cur = s->master;
        bool busy = cur && !net_conn_is_broken(cur);
        if (busy)
            snprintf(why, sizeof(why), "this worker already serves the master at %s", net_conn_peer(cur));
        else
            s->master = c;
        pthread_mutex_unlock(&s->master_lock);
        if (busy) {
            log_warn("refused master %s: %s", net_conn_peer(c), why);
            net_conn_send_error(c, -EBUSY, 0, why);
            return;
        }
    }
    for (;;) {
        uint16_t type;
        const uint8_t *p;
        size_t len;
        /* An authenticated link may idle (TCP keepalive watches the host),
         * but a frame that has begun must be whole within io_timeout: a peer
         * that sends half a frame and stops does not hold the thread. */
        int r = net_conn_wait_readable(c, -1);
        if (r < 0)
            r = ifd_error_set(&err, r, "%s: poll failed: %s", net_conn_peer(c), strerror(-r));
        else
            r = net_conn_recv(c, &type, &p, &len, s->opts.io_timeout_ms, &err);
        if (r < 0) {
            if (r == -ECONNRESET && strstr(err.msg, "peer closed"))
                log_info("%s disconnected", net_conn_peer(c));
            else if (!s->stopping)
                log_err("closing connection: %s", err.msg);
            break;
        }
        switch (type) {
        case NET_MSG_FORWARD:
            r = handle_forward(s, c, slot->role, p, len, &err);
            break;
        case NET_MSG_KV_TRUNCATE:
            r = handle_truncate(s, c, p, len, &err);
            break;
        case NET_MSG_PING: {
            struct net_ping pg;
            r = net_ping_decode(p, len, &pg, &err);
            if (r >= 0)
                r = net_conn_send(c, NET_MSG_PONG, p, len, 5000, &err);
            break;
        }
        case NET_MSG_STATS_REQ:
            r = handle_stats(s, c, &err);
            break;
        case NET_MSG_ERROR: {
            struct net_error_msg em;
            if (net_error_decode(p, len, &em, &err) >= 0)
                log_warn("%s reports: %.*s", net_conn_peer(c), (int)em.msg_len, em.msg);
            r = 0;
            break;
        }
        case NET_MSG_ASSIGN:
        case NET_MSG_TENSOR_CHUNK:
        case NET_MSG_LOAD:
            if (slot->role != NET_ROLE_MASTER || !s->setup) {
                r = ifd_error_set(&err, -EPROTO, "%s from a non-master peer", net_msg_name(type));
                break;
            }
            r = s->setup(s->setup_ctx, s, c, type, p, len, &err);
            break;
        default:
            r = ifd_error_set(&err, -EPROTO, "unexpected message %s (type %u)", net_msg_name(type), type);
        }
        if (r < 0) {
            log_err("closing connection from %s: %s", net_conn_peer(c), err.msg);
            net_conn_send_error(c, r, 0, err.msg);
            /* A master may still be pushing chunks: read them away for a
             * moment so that it can read the ERROR instead of a reset. */
            net_conn_linger(c, STAGE_SERVER_LINGER_MS, STAGE_SERVER_LINGER_BYTES);
            break;
        }
    }
    /* Under master_lock, so a new master cannot slip in between: its ASSIGN
     * must see the cache after the cleanup. (A new master that replaced this
     * broken connection already is the master: nothing to clean for it.) */
    pthread_mutex_lock(&s->master_lock);
    if (s->master == c) {
        if (s->opts.master_closed)
            s->opts.master_closed(s->setup_ctx);
        s->master = NULL;
    }
    pthread_mutex_unlock(&s->master_lock);
}

static void *conn_thread(void *arg)
{
    struct conn_slot *slot = arg;
    struct stage_server *s = slot->srv;
    serve_conn(s, slot);
    pthread_mutex_lock(&s->conns_lock);
    net_conn_destroy(slot->conn);
    slot->conn = NULL;
    slot->used = false;
    s->n_conns--;
    pthread_cond_broadcast(&s->conns_cond);
    pthread_mutex_unlock(&s->conns_lock);
    return NULL;
}

/* Whether a is a better eviction victim than b: one that has sent nothing
 * before one that has, then the older. */
static bool evict_before(const struct conn_slot *a, const struct conn_slot *b)
{
    bool sa = __atomic_load_n(&a->spoke, __ATOMIC_ACQUIRE), sb = __atomic_load_n(&b->spoke, __ATOMIC_ACQUIRE);
    if (sa != sb)
        return !sa;
    return a->accepted_ns < b->accepted_ns;
}

/* Makes room in the pre-auth pool for a connection from ip (under
 * conns_lock). Returns false if the newcomer is to be refused.
 *
 * When that address has its share, or the pool is full, one unauthenticated
 * connection goes, of that address first: a silent one before one that is
 * handshaking, the oldest first, but only one that has had
 * STAGE_SERVER_PREAUTH_GRACE_MS to finish its handshake (a legitimate one
 * takes a few round trips); if none has, the newcomer is refused. A staller
 * holds its slot only until someone newer comes, and stallers that reconnect
 * at once cannot churn the pool faster than one eviction per slot and grace
 * period, so they cannot take turns evicting a master in mid-handshake. */
static bool preauth_make_room(struct stage_server *s, const char *ip)
{
    int total = 0, same = 0;
    uint64_t now = ifd_now_ns(), grace = (uint64_t)STAGE_SERVER_PREAUTH_GRACE_MS * 1000000ull;
    struct conn_slot *any = NULL, *same_ip = NULL;
    for (int i = 0; i < N_SLOTS; i++) {
        struct conn_slot *sl = &s->slots[i];
        if (!sl->used || sl->authed || sl->evicted)
            continue;
        total++;
        bool same_addr = strcmp(sl->ip, ip) == 0;
        same += same_addr;
        if (now - sl->accepted_ns < grace)
            continue;
        if (!any || evict_before(sl, any))
            any = sl;
        if (same_addr && (!same_ip || evict_before(sl, same_ip)))
            same_ip = sl;
    }
    struct conn_slot *victim;
    if (same >= STAGE_SERVER_MAX_PREAUTH_PER_IP)
        victim = same_ip;
    else if (total >= STAGE_SERVER_MAX_PREAUTH)
        victim = any;
    else
        return true;
    if (!victim)
        return false;
    __atomic_store_n(&victim->evicted, true, __ATOMIC_RELEASE);
    net_conn_shutdown(victim->conn);
    return true;
}

static void sockaddr_ip(const struct sockaddr_storage *ss, char out[INET6_ADDRSTRLEN])
{
    snprintf(out, INET6_ADDRSTRLEN, "?");
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, out, INET6_ADDRSTRLEN);
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, out, INET6_ADDRSTRLEN);
}

int stage_server_run(struct stage_server *s, int listen_fd)
{
    for (;;) {
        struct pollfd pf[2] = {{.fd = listen_fd, .events = POLLIN}, {.fd = s->stop_pipe[0], .events = POLLIN}};
        int pr = poll(pf, 2, -1);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0)
            return -errno;
        if (pf[1].revents)
            return 0;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(listen_fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)
                continue;
            log_ratelimited(&s->preauth_log, LOG_LEVEL_ERR, "accept: %s", strerror(errno));
            if (errno == EMFILE || errno == ENFILE) {
                poll(NULL, 0, 100);
                continue;
            }
            return -errno;
        }
        char ip[INET6_ADDRSTRLEN];
        sockaddr_ip(&ss, ip);
        struct net_conn *c;
        ifd_error err;
        if (net_conn_create(fd, NULL, &c, &err) < 0) {
            close(fd);
            continue;
        }
        pthread_mutex_lock(&s->conns_lock);
        bool room = preauth_make_room(s, ip);
        struct conn_slot *slot = NULL;
        for (int i = 0; i < N_SLOTS && !slot && room; i++)
            if (!s->slots[i].used)
                slot = &s->slots[i];
        if (!slot || s->stopping) {
            pthread_mutex_unlock(&s->conns_lock);
            log_ratelimited(&s->preauth_log, LOG_LEVEL_WARNING, "refused connection from %s: %s", net_conn_peer(c),
                            room ? "no free connection slot" : "too many unauthenticated connections from its address");
            net_conn_destroy(c);
            continue;
        }
        *slot = (struct conn_slot){.conn = c, .srv = s, .used = true, .accepted_ns = ifd_now_ns()};
        memcpy(slot->ip, ip, sizeof(ip));
        s->n_conns++;
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int r = pthread_create(&th, &attr, conn_thread, slot);
        pthread_attr_destroy(&attr);
        if (r != 0) {
            slot->used = false;
            s->n_conns--;
            pthread_mutex_unlock(&s->conns_lock);
            net_conn_destroy(c);
            log_err("cannot start a connection thread: %s", strerror(r));
            continue;
        }
        pthread_mutex_unlock(&s->conns_lock);
    }
}
