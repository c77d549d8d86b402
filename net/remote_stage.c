#include "remote_stage.h"

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "base/clock.h"
#include "stage_server.h"

struct remote_link {
    char name[64];
    char addr[NET_ADDR_MAX];
    _Atomic int first, last;     /* atomic: `layers = auto` sets them once, before the link is READY */
    /* Held for one exchange on the connection (a forward, a truncate, a
     * ping) and to swap the connection. */
    pthread_mutex_t lock;
    struct net_conn *conn;       /* NULL unless READY */
    int state;                   /* enum remote_link_state, atomic */
    pthread_mutex_t detail_lock;
    char detail[256];
    uint64_t next_req;
    int inflight;                /* forwards of a stage outstanding on this link (under lock): no PING then */
    /* Counters (under lock). */
    uint64_t bytes_sent_closed, bytes_received_closed; /* of connections already closed */
    uint64_t forwards, tokens;
    double forward_ms, rtt_ms;
    int reconnects;
};

const char *remote_link_state_name(enum remote_link_state s)
{
    switch (s) {
    case REMOTE_LINK_CONNECTING: return "connecting";
    case REMOTE_LINK_PUSHING: return "pushing";
    case REMOTE_LINK_READY: return "ready";
    case REMOTE_LINK_DOWN: return "down";
    case REMOTE_LINK_STANDBY: return "standby";
    }
    return "?";
}

int remote_link_create(const char *name, const char *addr, int layer_first, int layer_last,
                       struct remote_link **ret, ifd_error *err)
{
    if (strlen(addr) >= NET_ADDR_MAX)
        return ifd_error_set(err, -EINVAL, "worker address '%s' is longer than %d bytes", addr, NET_ADDR_MAX - 1);
    if (layer_first < 0 || layer_last < layer_first)
        return ifd_error_set(err, -EINVAL, "worker '%s': bad layer range [%d, %d)", name, layer_first,
                             layer_last);
    struct remote_link *l = calloc(1, sizeof(*l));
    if (!l)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    snprintf(l->name, sizeof(l->name), "%s", name);
    snprintf(l->addr, sizeof(l->addr), "%s", addr);
    l->first = layer_first;
    l->last = layer_last;
    l->next_req = 1;
    pthread_mutex_init(&l->lock, NULL);
    pthread_mutex_init(&l->detail_lock, NULL);
    *ret = l;
    return 0;
}

/* Closes the connection; lock held. */
static void close_conn_locked(struct remote_link *l)
{
    if (!l->conn)
        return;
    l->bytes_sent_closed += net_conn_bytes_sent(l->conn);
    l->bytes_received_closed += net_conn_bytes_received(l->conn);
    net_conn_destroy(l->conn);
    l->conn = NULL;
}

void remote_link_destroy(struct remote_link *l)
{
    if (!l)
        return;
    close_conn_locked(l);
    pthread_mutex_destroy(&l->lock);
    pthread_mutex_destroy(&l->detail_lock);
    free(l);
}

const char *remote_link_name(const struct remote_link *l) { return l->name; }
const char *remote_link_addr(const struct remote_link *l) { return l->addr; }
int remote_link_first(const struct remote_link *l) { return l->first; }

void remote_link_set_layers(struct remote_link *l, int first, int last)
{
    l->first = first;
    l->last = last;
}
int remote_link_last(const struct remote_link *l) { return l->last; }

enum remote_link_state remote_link_state(const struct remote_link *l)
{
    return (enum remote_link_state)__atomic_load_n(&l->state, __ATOMIC_ACQUIRE);
}

static void set_detail(struct remote_link *l, const char *detail)
{
    pthread_mutex_lock(&l->detail_lock);
    snprintf(l->detail, sizeof(l->detail), "%s", detail ? detail : "");
    pthread_mutex_unlock(&l->detail_lock);
}

void remote_link_set_state(struct remote_link *l, enum remote_link_state s, const char *detail)
{
    if (s == REMOTE_LINK_READY)
        return; /* only attach makes a link ready */
    __atomic_store_n(&l->state, (int)s, __ATOMIC_RELEASE);
    set_detail(l, detail);
}

void remote_link_detail(const struct remote_link *l, char *buf, size_t len)
{
    struct remote_link *m = (struct remote_link *)l;
    pthread_mutex_lock(&m->detail_lock);
    snprintf(buf, len, "%s", m->detail);
    pthread_mutex_unlock(&m->detail_lock);
}

void remote_link_attach(struct remote_link *l, struct net_conn *c)
{
    pthread_mutex_lock(&l->lock);
    close_conn_locked(l);
    l->conn = c;
    if (l->forwards || l->bytes_sent_closed)
        l->reconnects++;
    __atomic_store_n(&l->state, REMOTE_LINK_READY, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&l->lock);
    set_detail(l, "");
}

void remote_link_close(struct remote_link *l, enum remote_link_state s, const char *detail)
{
    if (s == REMOTE_LINK_READY)
        return;
    pthread_mutex_lock(&l->lock);
    close_conn_locked(l);
    __atomic_store_n(&l->state, (int)s, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&l->lock);
    set_detail(l, detail);
}

/* lock held */
static void fail_locked(struct remote_link *l, const char *why)
{
    if (remote_link_state(l) == REMOTE_LINK_READY)
        log_err("worker %s (%s, layers %d-%d) is down: %s", l->name, l->addr, l->first,
                l->last - 1, why);
    close_conn_locked(l);
    __atomic_store_n(&l->state, REMOTE_LINK_DOWN, __ATOMIC_RELEASE);
    set_detail(l, why);
}

void remote_link_get_stats(const struct remote_link *cl, struct remote_link_stats *ret)
{
    struct remote_link *l = (struct remote_link *)cl;
    pthread_mutex_lock(&l->lock);
    struct remote_link_stats s = {
        .bytes_sent = l->bytes_sent_closed + (l->conn ? net_conn_bytes_sent(l->conn) : 0),
        .bytes_received = l->bytes_received_closed + (l->conn ? net_conn_bytes_received(l->conn) : 0),
        .forwards = l->forwards,
        .tokens = l->tokens,
        .forward_ms = l->forward_ms,
        .rtt_ms = l->rtt_ms,
        .reconnects = l->reconnects,
    };
    pthread_mutex_unlock(&l->lock);
    *ret = s;
}

/* Turns an ERROR payload into a message; returns its code. */
static int peer_error(struct remote_link *l, const uint8_t *p, size_t len, ifd_error *err)
{
    struct net_error_msg em;
    ifd_error e2;
    if (net_error_decode(p, len, &em, &e2) < 0)
        return ifd_error_set(err, -EBADMSG, "worker %s: malformed ERROR: %s", l->name, e2.msg);
    int code = em.code < 0 ? em.code : -EIO;
    return ifd_error_set(err, code, "worker %s (%s): %.*s", l->name, l->addr, (int)em.msg_len, em.msg);
}

/* Whether an ERROR payload answers another request than req: a worker of
 * a chain reports the failure of a forward the master may have given up on
 * already (its next hop died, and the master saw that hop's connection
 * close first), so the report arrives before the answer to a later request.
 * Such a late answer is dropped. req_id 0 concerns the connection: never
 * stale. */
static bool stale_error(const uint8_t *p, size_t len, uint64_t req)
{
    struct net_error_msg em;
    return net_error_decode(p, len, &em, NULL) >= 0 && em.req_id != 0 && em.req_id != req;
}

/* Receives the answer to request req on l (lock held), dropping stale
 * ERRORs, within timeout_ms in all. */
static int recv_answer(struct remote_link *l, uint64_t req, uint16_t *type, const uint8_t **p, size_t *len,
                       int timeout_ms, ifd_error *err)
{
    uint64_t deadline = ifd_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        uint64_t now = ifd_now_ns();
        int left = now < deadline ? (int)((deadline - now) / 1000000ull) + 1 : 1;
        int r = net_conn_recv(l->conn, type, p, len, left, err);
        if (r < 0 || *type != NET_MSG_ERROR || !stale_error(*p, *len, req))
            return r;
    }
}

int remote_link_ping(struct remote_link *l, int timeout_ms, double *ret_rtt_ms, ifd_error *err)
{
    if (pthread_mutex_trylock(&l->lock) != 0)
        return -EBUSY;
    int r;
    if (l->inflight > 0) {
        /* its PONG would come between RESULTs that the stage reads */
        pthread_mutex_unlock(&l->lock);
        return -EBUSY;
    }
    if (!l->conn || remote_link_state(l) != REMOTE_LINK_READY) {
        r = ifd_error_set(err, -ENOTCONN, "worker %s is not connected", l->name);
        goto out;
    }
    struct net_buf b = {0};
    uint64_t t0 = ifd_now_ns();
    struct net_ping pg = {.req_id = l->next_req++, .t_ns = t0};
    r = net_ping_encode(&b, &pg);
    if (r >= 0)
        r = net_conn_send(l->conn, NET_MSG_PING, b.data, b.len, timeout_ms, err);
    net_buf_finish(&b);
    if (r < 0) {
        fail_locked(l, err ? err->msg : "ping failed");
        goto out;
    }
    uint16_t type;
    const uint8_t *p;
    size_t len;
    r = recv_answer(l, pg.req_id, &type, &p, &len, timeout_ms, err);
    struct net_ping back;
    if (r >= 0 && (type != NET_MSG_PONG || net_ping_decode(p, len, &back, NULL) < 0 || back.t_ns != t0))
        r = ifd_error_set(err, -EPROTO, "worker %s: bad answer to PING (%s)", l->name, net_msg_name(type));
    if (r < 0) {
        fail_locked(l, err ? err->msg : "ping failed");
        goto out;
    }
    l->rtt_ms = (double)(ifd_now_ns() - t0) / 1e6;
    if (ret_rtt_ms)
        *ret_rtt_ms = l->rtt_ms;
out:
    pthread_mutex_unlock(&l->lock);
    return r;
}

/* ---- the stage ---- */

/* A FORWARD sent and not yet waited for. */
struct rs_pending {
    uint64_t req;
    int n_tokens;
    float *hidden;               /* the batch's hidden, borrowed: the RESULT lands here */
    size_t bytes;                /* the FORWARD's payload */
    uint64_t t0;                 /* sent at (ns) */
    int status;                  /* 1 in flight, 0 done, < 0 failed (err says why) */
    ifd_error err;
};

struct remote_stage {
    struct stage base;
    struct remote_link **links;  /* [n] borrowed */
    int n;
    int timeout_ms, max_tokens;
    struct net_route_hop *route; /* [n - 1] */
    struct pollfd *pfds;         /* [n] */
    struct net_buf out;          /* encoded FORWARD, reused */
    struct stage_stats stats;
    /* Outstanding forwards, oldest first: a ring of REMOTE_STAGE_MAX_INFLIGHT. */
    struct rs_pending q[REMOTE_STAGE_MAX_INFLIGHT];
    int q_head, q_count;
    size_t bytes_inflight;       /* payload of the entries still in flight */
};

static void unlock_all(struct remote_stage *rs)
{
    for (int i = rs->n - 1; i >= 0; i--)
        pthread_mutex_unlock(&rs->links[i]->lock);
}

/* Locks every link of the chain (always in chain order, and chains never
 * share links, so two stages cannot deadlock) and checks each is READY. */
static int lock_all(struct remote_stage *rs, ifd_error *err)
{
    for (int i = 0; i < rs->n; i++) {
        struct remote_link *l = rs->links[i];
        enum remote_link_state st = remote_link_state(l);
        if (st != REMOTE_LINK_READY)
            return ifd_error_set(err, -EHOSTDOWN, "worker %s (%s, layers %d-%d) is %s", l->name, l->addr,
                                 l->first, l->last - 1, remote_link_state_name(st));
    }
    for (int i = 0; i < rs->n; i++) {
        pthread_mutex_lock(&rs->links[i]->lock);
        if (!rs->links[i]->conn) {
            struct remote_link *l = rs->links[i];
            for (int j = i; j >= 0; j--)
                pthread_mutex_unlock(&rs->links[j]->lock);
            return ifd_error_set(err, -EHOSTDOWN, "worker %s (%s) is down", l->name, l->addr);
        }
    }
    return 0;
}

static struct rs_pending *q_at(struct remote_stage *rs, int k)
{
    return &rs->q[(rs->q_head + k) % REMOTE_STAGE_MAX_INFLIGHT];
}

/* Entry p leaves the in-flight state with `status` (0 or -errno); links locked. */
static void pending_end(struct remote_stage *rs, struct rs_pending *p, int status)
{
    if (p->status != 1)
        return;
    p->status = status;
    rs->bytes_inflight -= p->bytes;
    for (int i = 0; i < rs->n; i++)
        rs->links[i]->inflight--;
    if (status < 0)
        return;
    double ms = (double)(ifd_now_ns() - p->t0) / 1e6;
    rs->stats.forward_calls++;
    rs->stats.tokens += (uint64_t)p->n_tokens;
    rs->stats.forward_ms += ms;
    for (int i = 0; i < rs->n; i++) {
        rs->links[i]->forwards++;
        rs->links[i]->tokens += (uint64_t)p->n_tokens;
        rs->links[i]->forward_ms += ms;
    }
}

/* A failure of the chain (a link down, a timeout, a frame that makes no
 * sense): every forward in flight fails with -EHOSTDOWN and err's message,
 * as one synchronous forward did. Links locked. */
static int fail_inflight(struct remote_stage *rs, const ifd_error *err)
{
    for (int k = 0; k < rs->q_count; k++) {
        struct rs_pending *p = q_at(rs, k);
        if (p->status == 1) {
            p->err = *err;
            pending_end(rs, p, -EHOSTDOWN);
        }
    }
    return -EHOSTDOWN;
}

/* Receives one message of the chain within the oldest in-flight forward's
 * deadline and settles the forward it answers: a RESULT from the tail (the
 * workers keep FORWARDs in order, but an ERROR from a middle worker may
 * overtake the tail's RESULTs, so both are matched by request id), or an
 * ERROR from any worker. Returns < 0 when the chain failed (every forward in
 * flight failed too). Links locked; at least one forward in flight. */
static int pump_one(struct remote_stage *rs, ifd_error *err)
{
    struct remote_link *tail = rs->links[rs->n - 1];
    uint64_t deadline = UINT64_MAX;
    for (int k = 0; k < rs->q_count; k++)
        if (q_at(rs, k)->status == 1) {
            deadline = q_at(rs, k)->t0 + (uint64_t)rs->timeout_ms * 1000000ull;
            break;
        }
    assert(deadline != UINT64_MAX);
    for (int i = 0; i < rs->n; i++)
        if (!rs->links[i]->conn) {
            ifd_error_set(err, -EHOSTDOWN, "worker %s (%s) is down", rs->links[i]->name, rs->links[i]->addr);
            return fail_inflight(rs, err);
        }
    for (;;) {
        uint64_t now = ifd_now_ns();
        if (now >= deadline) {
            ifd_error_set(err, -EHOSTDOWN, "remote stage: no result from worker %s within %d ms", tail->name,
                          rs->timeout_ms);
            for (int i = 0; i < rs->n; i++)
                fail_locked(rs->links[i], "forward timed out");
            return fail_inflight(rs, err);
        }
        /* Watch every worker of the chain: any of them may report an ERROR,
         * or die (its socket becomes readable at EOF). */
        for (int i = 0; i < rs->n; i++)
            rs->pfds[i] = (struct pollfd){.fd = net_conn_fd(rs->links[i]->conn), .events = POLLIN};
        int pr = poll(rs->pfds, (nfds_t)rs->n, (int)((deadline - now + 999999) / 1000000));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0) {
            ifd_error_set(err, -errno, "remote stage: poll: %s", strerror(errno));
            return fail_inflight(rs, err);
        }
        for (int i = 0; i < rs->n; i++) {
            if (!rs->pfds[i].revents)
                continue;
            struct remote_link *l = rs->links[i];
            uint16_t type;
            const uint8_t *p;
            size_t len;
            int left = (int)((deadline - ifd_now_ns()) / 1000000) + 1;
            int r = net_conn_recv(l->conn, &type, &p, &len, left, err);
            if (r < 0) {
                fail_locked(l, err ? err->msg : "receive failed");
                ifd_error_prefix(err, "worker %s", l->name);
                return fail_inflight(rs, err);
            }
            uint64_t req = 0;
            ifd_error e2 = {{0}};
            struct net_error_msg em;
            struct net_result res;
            if (type == NET_MSG_ERROR) {
                if (net_error_decode(p, len, &em, &e2) < 0)
                    r = ifd_error_set(&e2, -EBADMSG, "malformed ERROR: %s", e2.msg);
                else
                    req = em.req_id;
            } else if (type != NET_MSG_RESULT || l != tail) {
                r = ifd_error_set(&e2, -EPROTO, "unexpected %s", net_msg_name(type));
            } else if (len < 8) {
                r = ifd_error_set(&e2, -EBADMSG, "RESULT: payload of %zu bytes is too short", len);
            } else {
                memcpy(&req, p, 8); /* req_id leads the RESULT; its size is checked once it is matched */
                req = le64toh(req);
            }
            struct rs_pending *pe = NULL;
            for (int k = 0; r >= 0 && k < rs->q_count && !pe; k++)
                if (q_at(rs, k)->status == 1 && q_at(rs, k)->req == req)
                    pe = q_at(rs, k);
            if (r >= 0 && !pe && type == NET_MSG_ERROR && req != 0)
                continue; /* a late answer to a request given up on (stale_error) */
            if (r >= 0 && !pe)
                r = ifd_error_set(&e2, -EPROTO, "%s for request %llu, which is not in flight", net_msg_name(type),
                                  (unsigned long long)req);
            if (r >= 0 && type == NET_MSG_RESULT)
                r = net_result_decode(p, len, (uint32_t)pe->n_tokens, (uint32_t)rs->base.hidden_size, &res, &e2);
            if (r < 0) {
                ifd_error_set(err, r, "worker %s: %s", l->name, e2.msg);
                fail_locked(l, e2.msg);
                return fail_inflight(rs, err);
            }
            if (type == NET_MSG_ERROR) {
                /* The request failed on that worker; the chain goes on. */
                pending_end(rs, pe, peer_error(l, p, len, &pe->err));
                return 0;
            }
            memcpy(pe->hidden, res.hidden_data, (size_t)pe->n_tokens * (size_t)rs->base.hidden_size * sizeof(float));
            pending_end(rs, pe, 0);
            return 0;
        }
    }
}

/* Sends b as a FORWARD to the head of the chain and queues it, without
 * waiting for its RESULT.
 *
 * TCP cannot deadlock the ring master -> w1 -> ... -> master as long as
 * no link's buffers fill up: each worker reads a whole FORWARD, computes,
 * then blocks in send only if its next hop's socket is full, and the master
 * reads RESULTs only between its own sends. So a FORWARD joins others in
 * flight only while the payload of all of them stays within
 * REMOTE_STAGE_INFLIGHT_BYTES, below what a Linux TCP connection buffers by
 * default (tcp_rmem's 128 KiB); a larger one waits for the older ones
 * first, and one alone is today's synchronous exchange. */
static int remote_forward_submit(struct stage *s, const struct stage_batch *b, ifd_error *err)
{
    struct remote_stage *rs = (struct remote_stage *)s;
    int r = lock_all(rs, err);
    if (r < 0)
        return r;
    struct remote_link *head = rs->links[0];
    struct net_forward f = {
        .req_id = head->next_req++,
        .n_tokens = (uint32_t)b->n_tokens,
        .hidden = (uint32_t)s->hidden_size,
        .layer_first = (uint32_t)head->first,
        .layer_last = (uint32_t)head->last,
        .n_route = (uint32_t)rs->n - 1,
        .route = rs->route,
        .seq_ids = b->seq_ids,
        .positions = b->positions,
        .hidden_data = b->hidden,
    };
    if (rs->q_count == REMOTE_STAGE_MAX_INFLIGHT) {
        r = ifd_error_set(err, -EBUSY, "remote stage: %d forwards already outstanding", rs->q_count);
        goto out;
    }
    size_t bytes = (size_t)b->n_tokens * (8 + (size_t)s->hidden_size * 4);
    while (rs->bytes_inflight > 0 && rs->bytes_inflight + bytes > REMOTE_STAGE_INFLIGHT_BYTES)
        if ((r = pump_one(rs, err)) < 0)
            goto out;
    r = net_forward_encode(&rs->out, &f);
    if (r < 0) {
        r = ifd_error_set(err, r, "remote stage: cannot encode a batch of %d tokens", b->n_tokens);
        goto out;
    }
    r = net_conn_send(head->conn, NET_MSG_FORWARD, rs->out.data, rs->out.len, rs->timeout_ms, err);
    if (r < 0) {
        fail_locked(head, err ? err->msg : "send failed");
        ifd_error_prefix(err, "worker %s", head->name);
        r = fail_inflight(rs, err);
        goto out;
    }
    struct rs_pending *p = q_at(rs, rs->q_count++);
    *p = (struct rs_pending){.req = f.req_id, .n_tokens = b->n_tokens, .hidden = b->hidden, .bytes = bytes,
                             .t0 = ifd_now_ns(), .status = 1};
    rs->bytes_inflight += bytes;
    for (int i = 0; i < rs->n; i++)
        rs->links[i]->inflight++;
out:
    unlock_all(rs);
    return r;
}

/* Settles the oldest outstanding forward, which must be b's. */
static int remote_forward_wait(struct stage *s, const struct stage_batch *b, ifd_error *err)
{
    struct remote_stage *rs = (struct remote_stage *)s;
    if (rs->q_count == 0 || q_at(rs, 0)->hidden != b->hidden)
        return ifd_error_set(err, -EINVAL, "remote stage: waiting for a batch that is not the oldest sent");
    struct rs_pending *p = q_at(rs, 0);
    if (p->status == 1) {
        /* The links may have gone down since: fail_inflight settled every
         * forward then, so a locked chain is only needed to read on. */
        for (int i = 0; i < rs->n; i++)
            pthread_mutex_lock(&rs->links[i]->lock);
        int r = 0;
        while (r >= 0 && p->status == 1)
            r = pump_one(rs, err);
        unlock_all(rs);
    }
    int r = p->status;
    if (r < 0 && err)
        *err = p->err;
    rs->q_head = (rs->q_head + 1) % REMOTE_STAGE_MAX_INFLIGHT;
    rs->q_count--;
    return r;
}

/* Settles every forward still in flight (their RESULTs are kept for their
 * waits), so that another exchange can use the connections. */
static void drain_inflight(struct remote_stage *rs)
{
    if (rs->bytes_inflight == 0)
        return;
    for (int i = 0; i < rs->n; i++)
        pthread_mutex_lock(&rs->links[i]->lock);
    ifd_error ignored;
    for (int k = 0; k < rs->q_count; k++)
        while (q_at(rs, k)->status == 1 && pump_one(rs, &ignored) >= 0) {
        }
    unlock_all(rs);
}

static int remote_forward(struct stage *s, const struct stage_batch *b, ifd_error *err)
{
    int r = remote_forward_submit(s, b, err);
    return r < 0 ? r : remote_forward_wait(s, b, err);
}

static int remote_seq_truncate(struct stage *s, int seq_id, int n_keep, ifd_error *err)
{
    struct remote_stage *rs = (struct remote_stage *)s;
    int ret = 0;
    /* Its ACK would come among RESULTs: the forwards in flight (of other
     * sequences: a sequence is in one batch at a time) settle first. */
    drain_inflight(rs);
    for (int i = 0; i < rs->n; i++) {
        struct remote_link *l = rs->links[i];
        /* A worker that is down holds no KV for anyone: it is rebuilt empty. */
        if (remote_link_state(l) != REMOTE_LINK_READY)
            continue;
        pthread_mutex_lock(&l->lock);
        if (!l->conn) {
            pthread_mutex_unlock(&l->lock);
            continue;
        }
        struct net_kv_truncate kt = {.req_id = l->next_req++, .seq_id = seq_id, .n_keep = n_keep};
        int r = net_kv_truncate_encode(&rs->out, &kt);
        if (r >= 0)
            r = net_conn_send(l->conn, NET_MSG_KV_TRUNCATE, rs->out.data, rs->out.len, rs->timeout_ms, err);
        uint16_t type = 0;
        const uint8_t *p;
        size_t len;
        if (r >= 0)
            r = recv_answer(l, kt.req_id, &type, &p, &len, rs->timeout_ms, err);
        if (r >= 0) {
            struct net_ack ack;
            if (type == NET_MSG_ERROR) {
                r = peer_error(l, p, len, err);
            } else if (type != NET_MSG_ACK || net_ack_decode(p, len, &ack, NULL) < 0 || ack.req_id != kt.req_id) {
                r = ifd_error_set(err, -EPROTO, "worker %s: bad answer to KV_TRUNCATE (%s)", l->name,
                                  net_msg_name(type));
                fail_locked(l, err->msg);
            } else if (ack.status < 0) {
                r = ifd_error_set(err, ack.status, "worker %s: truncating sequence %d to %d failed", l->name,
                                  seq_id, n_keep);
            }
        } else {
            fail_locked(l, err ? err->msg : "truncate failed");
        }
        pthread_mutex_unlock(&l->lock);
        if (r < 0 && ret == 0)
            ret = r;
    }
    return ret;
}

static void remote_get_stats(struct stage *s, struct stage_stats *ret)
{
    if (ret)
        *ret = ((struct remote_stage *)s)->stats;
}

static void remote_destroy(struct stage *s)
{
    struct remote_stage *rs = (struct remote_stage *)s;
    stage_finish(&rs->base);
    net_buf_finish(&rs->out);
    free(rs->route);
    free(rs->pfds);
    free(rs->links);
    free(rs);
}

static const struct stage_ops remote_ops = {
    .name = "remote",
    .forward = remote_forward,
    .forward_submit = remote_forward_submit,
    .forward_wait = remote_forward_wait,
    .seq_truncate = remote_seq_truncate,
    .get_stats = remote_get_stats,
    .destroy = remote_destroy,
};

int remote_stage_create(struct remote_link *const *links, int n, const struct remote_stage_opts *opts,
                        struct stage **ret, ifd_error *err)
{
    if (n < 1 || n > NET_MAX_ROUTE + 1)
        return ifd_error_set(err, -EINVAL, "remote stage: chain of %d workers (1 to %d)", n, NET_MAX_ROUTE + 1);
    for (int i = 0; i < n; i++)
        if (links[i]->first >= links[i]->last)
            return ifd_error_set(err, -EINVAL, "remote stage: worker %s holds no layers", links[i]->name);
    for (int i = 1; i < n; i++)
        if (links[i]->first != links[i - 1]->last)
            return ifd_error_set(err, -EINVAL, "remote stage: worker %s starts at layer %d, previous ends at %d",
                                 links[i]->name, links[i]->first, links[i - 1]->last);
    struct remote_stage *rs = calloc(1, sizeof(*rs));
    if (!rs)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    rs->links = calloc((size_t)n, sizeof(*rs->links));
    rs->route = calloc((size_t)n, sizeof(*rs->route));
    rs->pfds = calloc((size_t)n, sizeof(*rs->pfds));
    if (!rs->links || !rs->route || !rs->pfds) {
        remote_destroy(&rs->base);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    memcpy(rs->links, links, (size_t)n * sizeof(*links));
    for (int i = 1; i < n; i++) {
        rs->route[i - 1].layer_first = (uint32_t)links[i]->first;
        rs->route[i - 1].layer_last = (uint32_t)links[i]->last;
        snprintf(rs->route[i - 1].addr, NET_ADDR_MAX, "%s", links[i]->addr);
    }
    rs->n = n;
    rs->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 30000;
    rs->max_tokens = opts->max_tokens;
    /* the workers take up to STAGE_SERVER_MAX_TOKENS; the engine sends at
     * most max_tokens, which the encode buffer is sized for */
    int r = stage_init(&rs->base, &remote_ops, links[0]->first, links[n - 1]->last, opts->hidden_size,
                       opts->n_seq_max, opts->n_ctx,
                       opts->max_tokens > 0 && opts->max_tokens < STAGE_SERVER_MAX_TOKENS ? opts->max_tokens
                                                                                          : STAGE_SERVER_MAX_TOKENS,
                       err);
    if (r < 0) {
        remote_destroy(&rs->base);
        return r;
    }
    rs->base.n_nodes = n;
    /* Size the encode buffer for the largest batch now: no allocation per token. */
    size_t need = sizeof(struct net_forward_wire) + (size_t)n * sizeof(struct net_route_wire) +
                  (size_t)(opts->max_tokens > 0 ? opts->max_tokens : 1) * (8 + (size_t)opts->hidden_size * 4);
    if (net_buf_reserve(&rs->out, need) < 0) {
        remote_destroy(&rs->base);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    *ret = &rs->base;
    return 0;
}
