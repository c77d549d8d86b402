/* stage_server.h - the worker's side: accepts authenticated connections and
 * serves a local stage (cpu or vulkan) to them.
 *
 * Connections come from the master (role MASTER) and from the previous worker
 * of a chain (role PEER). On FORWARD the server checks every count and index
 * against its own buffers and stage, runs the stage, and either passes the
 * hidden state to the next worker of the route (over a PEER connection it
 * opens and keeps) or returns RESULT to the master. KV_TRUNCATE, PING and
 * STATS_REQ are answered directly. Messages of weight transfer (ASSIGN, HAVE,
 * TENSOR_CHUNK, LOAD) go to the setup callback, which installs a stage with
 * stage_server_set_stage() when it has one. A malformed frame closes only its
 * connection, with a logged error. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "auth.h"
#include "conn.h"
#include "base/error.h"
#include "model/stage.h"

/* Authenticated connections besides the master's (previous workers of
 * chains). The master never counts against any limit: it always gets in. */
#define STAGE_SERVER_MAX_CONNS 16
/* Connections still in their handshake, in all and from one IP address. When
 * a new one would exceed either, an older unauthenticated one (of that
 * address first, silent before talking, oldest first, past its grace time)
 * is dropped: a staller holds a slot only until someone newer arrives, so
 * masters are not starved by peers that connect and say nothing (sshd's
 * MaxStartups and PerSourceMaxStartups, nginx's limit_conn, with eviction
 * instead of refusal). Peers that send nothing at all are not even accepted
 * for the first 2 s (TCP_DEFER_ACCEPT, net_listen). */
#define STAGE_SERVER_MAX_PREAUTH 16
#define STAGE_SERVER_MAX_PREAUTH_PER_IP 4
/* An unauthenticated connection younger than this is not evicted (the
 * newcomer is refused instead): time for a handshake, and a bound on churn. */
#define STAGE_SERVER_PREAUTH_GRACE_MS 1000
#define STAGE_SERVER_MAX_TOKENS 8192 /* largest batch a worker accepts */
/* After refusing an authenticated peer's message with an ERROR: how long and
 * how much of what it still sends (a master's weight chunks) is read away
 * before the close, so the ERROR reaches it instead of a reset. */
#define STAGE_SERVER_LINGER_MS 2000
#define STAGE_SERVER_LINGER_BYTES ((size_t)64 << 20)

struct stage_server;

/* Handles a setup message on connection c (from the master). Returns >= 0 to
 * keep the connection, < 0 to close it (err says why; the server logs it). */
typedef int (*stage_server_setup_fn)(void *ctx, struct stage_server *srv, struct net_conn *c, uint16_t type,
                                     const uint8_t *payload, size_t len, ifd_error *err);

struct stage_server_opts {
    const struct net_key *key;  /* NULL: no cluster key (insecure, loopback) */
    int n_threads;              /* reported in HELLO */
    uint64_t mem_available;     /* reported in HELLO */
    uint32_t speed_mbps;        /* reported in HELLO (net_hello.speed_mbps) */
    int forward_timeout_ms;     /* bound on sending to the next hop / master (default io_timeout_ms) */
    int io_timeout_ms;          /* a frame, once it starts arriving, must be whole within this
                                 * ([cluster] io_timeout; default 30000) */
    int handshake_timeout_ms;   /* whole handshake (default NET_HANDSHAKE_TIMEOUT_MS) */
    /* Addresses FORWARD may name as next hop ([cluster] next_hops): "host:port"
     * or "host" (any port), "*" for any. Empty: loopback addresses only. A
     * route is chosen by a key holder, but the worker still connects only
     * where its operator allows (no port scans or SSRF beyond the list;
     * empty lets a key holder reach this host's loopback ports). */
    const char *const *next_hops;
    size_t n_next_hops;
    /* Called (with setup_ctx) when the master's connection ends, on its
     * thread, before another master can be admitted; may be NULL. */
    void (*master_closed)(void *setup_ctx);
};

int stage_server_create(const struct stage_server_opts *opts, stage_server_setup_fn setup, void *setup_ctx,
                        struct stage_server **ret, ifd_error *err);
/* Stops (if running) and frees; destroys the installed stage. */
void stage_server_destroy(struct stage_server *s);

/* Installs the stage to serve (ownership taken), replacing and destroying the
 * previous one; release(release_ctx) is called after the stage is destroyed
 * (to free the model it uses). NULL stage: serve nothing. */
void stage_server_set_stage(struct stage_server *s, struct stage *st, void (*release)(void *), void *release_ctx);

/* Accepts on listen_fd (borrowed) until stage_server_stop(); one thread per
 * connection. Returns 0 after stop, < 0 if accepting fails. */
int stage_server_run(struct stage_server *s, int listen_fd);
/* Makes stage_server_run return and closes every connection (any thread). */
void stage_server_stop(struct stage_server *s);

/* Resident set size of this process in bytes (/proc/self/statm), 0 if unknown. */
uint64_t net_rss_bytes(void);
