/* remote_stage.h - the master's side of distributed inference: a stage whose
 * layers run on one worker or on a chain of workers.
 *
 * A remote_link is the master's connection to one worker: its address, its
 * layer range, its state, and the authenticated connection once the worker is
 * loaded. Links belong to the cluster (daemon/cluster.c), which connects,
 * pushes weights and reconnects them; a remote stage borrows an ordered chain
 * of links and must be destroyed before them.
 *
 * forward() sends FORWARD to the first worker with the route of the others;
 * each worker runs its layers and passes the hidden state straight to the
 * next, and the last answers RESULT to the master: one network hop per worker
 * plus one back, never a round trip through the master between workers. Any
 * failure (a worker down, a timeout, a bad frame, an ERROR from any worker of
 * the chain) fails the forward within the timeout and marks the link down, so
 * that the cluster reconnects it; the engine sees an ordinary stage error.
 *
 * The stage also forwards in two halves (stage_forward_submit/_wait): several
 * FORWARDs in flight on the chain, each worker computing another micro-batch,
 * RESULTs matched by request id. A chain failure fails every forward in
 * flight with -EHOSTDOWN; an ERROR for one request fails that one only. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "conn.h"
#include "base/error.h"
#include "model/stage.h"

enum remote_link_state {
    REMOTE_LINK_CONNECTING = 0, /* no connection yet, or retrying */
    REMOTE_LINK_PUSHING,        /* connected, sending weights */
    REMOTE_LINK_READY,          /* stage built on the worker */
    REMOTE_LINK_DOWN,           /* failed; the cluster will reconnect */
    REMOTE_LINK_STANDBY,        /* answered the handshake, holds no layers (a failover may give it some) */
};

const char *remote_link_state_name(enum remote_link_state s);

struct remote_link;

/* Creates a link in state CONNECTING. addr is "host:port" (< NET_ADDR_MAX).
 * An empty range (layer_first == layer_last) is a standby worker's. */
int remote_link_create(const char *name, const char *addr, int layer_first, int layer_last,
                       struct remote_link **ret, ifd_error *err);
void remote_link_destroy(struct remote_link *l); /* accepts NULL; closes the connection */

const char *remote_link_name(const struct remote_link *l);
const char *remote_link_addr(const struct remote_link *l);
int remote_link_first(const struct remote_link *l);
int remote_link_last(const struct remote_link *l);
/* Moves the link's layer range, while it is not READY (`layers = auto` is
 * decided once the workers have reported their memory and speed; a failover
 * gives a worker the range of a failed one). */
void remote_link_set_layers(struct remote_link *l, int first, int last);
enum remote_link_state remote_link_state(const struct remote_link *l);
/* Sets a state other than READY (READY comes with remote_link_attach). */
void remote_link_set_state(struct remote_link *l, enum remote_link_state s, const char *detail);
/* Progress text for status ("pushing 12/40 tensors"), the last error. */
void remote_link_detail(const struct remote_link *l, char *buf, size_t len);

/* Installs a loaded, authenticated connection (taking it over) and marks the
 * link READY. */
void remote_link_attach(struct remote_link *l, struct net_conn *c);

/* Closes the connection (waiting for an exchange in progress) and sets
 * state s, not READY: a failover takes a live worker down to assign it a new
 * range. */
void remote_link_close(struct remote_link *l, enum remote_link_state s, const char *detail);

/* Round trip of a PING when the link is READY and idle (does not wait
 * behind a forward: returns -EBUSY then). */
int remote_link_ping(struct remote_link *l, int timeout_ms, double *ret_rtt_ms, ifd_error *err);

struct remote_link_stats {
    uint64_t bytes_sent, bytes_received; /* over every connection this link has had */
    uint64_t forwards, tokens;           /* forwards this link took part in */
    double forward_ms;                   /* master-side wall time of those forwards */
    double rtt_ms;                       /* last ping */
    int reconnects;
};
void remote_link_get_stats(const struct remote_link *l, struct remote_link_stats *ret);

/* Forwards one remote stage keeps in flight at most (pipelined
 * micro-batches, engine_submit), and the bytes of their FORWARD payloads
 * (see remote_forward_submit for why that bound keeps TCP from deadlocking
 * the ring of workers). */
#define REMOTE_STAGE_MAX_INFLIGHT 16
#define REMOTE_STAGE_INFLIGHT_BYTES (96u * 1024u)

struct remote_stage_opts {
    int hidden_size;
    int n_seq_max, n_ctx;
    int max_tokens;   /* largest batch the engine sends */
    int timeout_ms;   /* bound on one forward (send + compute on every hop + result) */
};

/* A stage over the chain links[0..n-1], which must be contiguous in layer
 * order. The links are borrowed. */
int remote_stage_create(struct remote_link *const *links, int n, const struct remote_stage_opts *opts,
                        struct stage **ret, ifd_error *err);
