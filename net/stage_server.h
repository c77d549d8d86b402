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

#define STAGE_SERVER_MAX_CONNS 16
#define STAGE_SERVER_MAX_TOKENS 8192 /* largest batch a worker accepts */

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
    int forward_timeout_ms;     /* bound on sending to the next hop / master */
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
