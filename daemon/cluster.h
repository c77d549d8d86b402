/* cluster.h - the master's view of its workers.
 *
 * Created from the configuration once the model is loaded: one remote link
 * per [worker.NAME] / --worker, a supervisor thread that connects each (with
 * retry and backoff), authenticates with the cluster key, pushes the tensors
 * of its layers that it does not already hold, and reconnects it whenever it
 * goes down; and pings idle workers for their round-trip time. When a
 * forward fails, cluster_failover() moves a dead worker's layers elsewhere
 * (standby = true workers wait, connected but holding no layers, for that).
 *
 * Use from main.c:
 *     cluster_create(cfg, model, model_dir, n_seq_max, n_ctx, n_batch_max, &cl, err);
 *     cluster_wait_ready(cl, &stop_flag, err);    -- READY only when every worker is
 *     cluster_build_stages(cl, model, pool, &stages, &n, err);  -- local gaps + remote ranges
 *     engine_create(model, stages, n, ...);
 *     ... cluster_status_json(cl) for /status ...
 *     cluster_failover(cl, eng, pool, &what, err);  -- scheduler thread, a forward failed (its recover hook)
 *     engine_destroy(); cluster_destroy(cl);      -- the engine's stages borrow the links
 *
 * Topology: contiguous workers form one chain stage (the hidden state goes
 * master -> w1 -> w2 -> master). INFERD_CLUSTER_TOPOLOGY=star in the
 * environment makes one stage per worker instead (for comparison). */
#pragma once

#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "config.h"
#include "metrics.h"
#include "base/error.h"
#include "model/model.h"
#include "model/engine.h"
#include "model/stage.h"

struct cluster;
struct thread_pool;

/* Validates the topology against the model (ranges in bounds, not
 * overlapping; `layers = auto` workers share the layers no explicit worker
 * has, evenly), loads the key, enforces the no-key policy (non-loopback
 * workers refused unless allow_insecure), and starts the supervisor. */
int cluster_create(const struct inferd_config *cfg, const struct model *m, const char *model_dir, int n_seq_max,
                   int n_ctx, int n_batch_max, struct cluster **ret, ifd_error *err);

/* Blocks until every worker is ready (0), or *cancel becomes true (-ECANCELED).
 * Keeps the systemd STATUS= line up to date meanwhile. */
int cluster_wait_ready(struct cluster *c, const atomic_bool *cancel, ifd_error *err);

/* The engine's stages in layer order: cpu stages over the layers no worker
 * has, remote stages over the workers'. *ret_stages is malloc'd; the stages
 * borrow the cluster's links (destroy the engine before the cluster). */
int cluster_build_stages(struct cluster *c, const struct model *m, struct thread_pool *pool,
                         struct stage ***ret_stages, int *ret_n, ifd_error *err);

/* Called on the scheduler thread when a forward failed with a worker down
 * (-EHOSTDOWN). The supervisor moves the layers of every worker still down
 * to another node (a standby, else the master, else a neighbour: see
 * failover_member in cluster.c; the failed worker becomes a standby), then
 * e's stage list is rebuilt over the new layout (engine_replace_stages):
 * every stage holds no position, and the caller refills its sequences.
 * Waits at most [cluster] failover_timeout. 0 with *ret saying what moved
 * (ret->worker empty: nothing had to, the workers are back), -ENOSPC when no
 * node can take the layers, -ETIMEDOUT, or the error of the rebuild; the
 * engine keeps its stages then. */
int cluster_failover(struct cluster *c, engine *e, struct thread_pool *pool, struct metrics_failover *ret,
                     ifd_error *err);

/* Workers as a JSON array: name, address, layers, state, detail, rtt_ms,
 * bytes_sent, bytes_received, forwards, ms_per_token, push figures. */
cJSON *cluster_status_json(struct cluster *c);

/* How many workers are not ready now (down, reconnecting, being set up);
 * when some are, the first one's "NAME (ADDRESS) is STATE: DETAIL" goes to
 * what (NUL-terminated, cut to what_len). For /health: a master with a worker
 * down holds generations for a failover or answers them with 503, so it must
 * not report healthy. Standby workers serve nothing and are not counted. */
int cluster_count_unready(struct cluster *c, char *what, size_t what_len);

void cluster_destroy(struct cluster *c); /* accepts NULL */
