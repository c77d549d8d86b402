/* worker_session.h - a worker's side of the weight transfer: the setup
 * callback of a stage server (ASSIGN -> HAVE, TENSOR_CHUNK, LOAD -> READY)
 * over a weight cache (net/weight_push.h).
 *
 * ASSIGN is checked against the cache's quota before a byte is written,
 * seeds the cache from the worker's own checkpoint when it has one, and is
 * answered with what the cache already holds. TENSOR_CHUNK goes into the
 * cache. LOAD builds the model of the assigned layers from the cache (its
 * config from the master's config.json, its layer count checked), hands it
 * to the caller's stage factory, installs the stage on the server and
 * answers READY; a LOAD that fails is answered with ERROR and the reason,
 * and the connection stays (the master may retry).
 *
 * One session per worker process, shared by the masters that come and go:
 * setup messages are serialised by the session's own lock. The daemon's
 * worker and the fuzz_net_session harness both run this code. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/stage.h"
#include "proto.h"
#include "stage_server.h"
#include "weight_push.h"

struct worker_session;

/* Builds the stage that serves layers [a->layer_first, a->layer_last) of m
 * for a->n_seq_max sequences of a->n_ctx positions. m is borrowed and
 * outlives the stage. Returns 0 or -errno with err set. */
typedef int (*worker_stage_create_fn)(void *ctx, const struct model *m, const struct net_assign *a,
                                      struct stage **ret, ifd_error *err);

struct worker_session_opts {
    struct wp_cache *cache;   /* borrowed, required */
    const st_model *local;    /* borrowed: the worker's own checkpoint, whose tensors with the
                               * master's hashes are not transferred; NULL: none */
    uint64_t memory_max_bytes; /* [node] memory_max_bytes: an assignment whose weights plus KV
                               * cache need more is refused; 0: no limit */
    int quantize_bits;        /* [model] quantize of this worker: packs received float weights */
    int quantize_group_size;
    bool quantize_into_panels; /* ... into the CPU's layout (model_load_opts): the layers run on the CPU */
    worker_stage_create_fn stage_create; /* required */
    void *stage_ctx;
    /* Told what the worker does now ("Receiving layers 0-3 of m"), e.g. for
     * systemd's STATUS=; may be NULL. */
    void (*status)(const char *what);
};

int worker_session_create(const struct worker_session_opts *opts, struct worker_session **ret, ifd_error *err);
/* Frees the session (NULL accepted); the stage it installed belongs to the server. */
void worker_session_destroy(struct worker_session *ws);

/* The stage server's setup callback (stage_server_setup_fn); ctx is the
 * struct worker_session. */
int worker_session_setup(void *ctx, struct stage_server *srv, struct net_conn *c, uint16_t type,
                         const uint8_t *payload, size_t len, ifd_error *err);
/* The stage server's master_closed callback: removes the partial tensors of
 * the master that left (a new master may assign something else entirely). */
void worker_session_master_closed(void *ctx);
