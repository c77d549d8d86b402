/* models.h - the models a master serves, and their lifetimes.
 *
 * The [model] model is the default one: loaded at start (READY waits for it),
 * never unloaded, and the only one the cluster's workers run. Each
 * [model.NAME] section adds a model served on this node alone, loaded on its
 * first request (or at start with `preload`) and unloaded after `idle_unload`
 * seconds without requests, as Ollama does. `[server] models_memory` bounds
 * the estimated memory of the models loaded at once: a load that would pass
 * it first unloads idle models, least recently used first, and fails with a
 * clear error when the busy ones leave no room.
 *
 * HTTP threads take a model with models_acquire(), which waits while it
 * loads, and give it back with models_release(); a model is unloaded only
 * when nobody holds it. Every model has its own tokenizer, template, engine,
 * thread pool, scheduler and metrics. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "tools.h"
#include "base/error.h"
#include "text/template/chat_template.h"
#include "text/tokenizer/tokenizer.h"

struct cluster;
struct metrics;
struct models;
struct sched;

enum model_state {
    MODEL_UNLOADED = 0,
    MODEL_LOADING,
    MODEL_READY,
    MODEL_FAILED,     /* the last load failed; the next request tries again */
};

/* What a request uses of a loaded model: valid from models_acquire() until
 * models_release(). */
struct served_model {
    const char *name;            /* the "model" id clients send */
    const tokenizer *tok;
    const chat_template *tmpl;
    const char *bos_token, *eos_token; /* for templates; may be NULL */
    struct tools_template_info tools;  /* its tool-call format and think markers (tools.h) */
    int n_ctx;
    int n_vocab;
    int n_layers;
    int n_seq_max;
    int micro_batches;           /* batches in flight at once on the workers (1: synchronous) */
    int hidden_size;             /* the length of its embeddings */
    bool pool_mean;              /* embeddings: mean of the positions, else the last one */
    struct sched *sched;
    struct metrics *metrics;
    const char *model_dir;
    const char *backend_name;    /* "cpu", "vulkan", "cpu+workers" */
    struct cluster *cluster;     /* the workers (daemon/cluster.h), NULL on a single node */
};

/* Builds the table from cfg (which must outlive it): nothing is loaded yet.
 * default_name is the [model] model's id. Names must be unique. */
int models_create(const struct inferd_config *cfg, const char *default_name, struct models **ret, ifd_error *err);
/* Unloads everything. Accepts NULL. */
void models_destroy(struct models *ms);

/* Loads the default model. Runs on the loader thread; the HTTP server may
 * already be asking for it, and waits. */
int models_load_default(struct models *ms, ifd_error *err);
/* Then loads every preload model, in file order, under models_memory; a
 * failure is logged and leaves the model to its first request. */
void models_preload(struct models *ms);

/* The default model once it is loaded, else NULL. Not counted as a holder:
 * for what the main loop and /health read of it, which lives as long as ms. */
const struct served_model *models_default(struct models *ms);

/* Takes the model called name (NULL: the default one) for one request,
 * loading it first if need be, and waiting while it loads. cancelled(ctx) is
 * polled while waiting, so a client that leaves stops waiting.
 * Errors, with the message in err:
 *   -ENOENT     no such model (404)
 *   -ENOSPC     models_memory leaves no room while other models are busy (503)
 *   -EIO        the load failed (503; the next request tries again)
 *   -ESHUTDOWN  the server is stopping
 *   -ECANCELED  cancelled(ctx) said so */
int models_acquire(struct models *ms, const char *name, bool (*cancelled)(void *ctx), void *ctx,
                   const struct served_model **ret, ifd_error *err);
void models_release(struct models *ms, const struct served_model *m); /* accepts NULL */

/* Unloads the models idle for longer than their idle_unload. The main loop
 * calls it about once a second. */
void models_tick(struct models *ms);

/* Stops new loads and acquisitions (shutdown); running requests go on. */
void models_shutdown_begin(struct models *ms);

/* What shutdown and reload do to every loaded model's scheduler. */
int models_busy(struct models *ms);            /* sequences running or queued, all models */
void models_drain_begin(struct models *ms);
void models_abort_running(struct models *ms, const char *why);
void models_set_queue_depth(struct models *ms, int queue_depth); /* also for models loaded later */
/* Whether every loaded model's scheduler loop has turned within max_age_s
 * (the systemd watchdog says "alive" only then). */
bool models_alive(struct models *ms, double max_age_s);

int models_count(struct models *ms);

/* A copy of model i's bookkeeping, for /v1/models, /v1/status and /metrics. */
struct model_info {
    char name[INFERD_MAX_MODEL_NAME + 1];
    enum model_state state;
    bool is_default;
    size_t memory_estimate;      /* bytes: weights on disk + KV cache */
    int holders;                 /* requests holding it now */
    double idle_s;               /* since it was last released; 0 while held */
    int idle_unload_s;           /* 0 = never */
    uint64_t loads, unloads;
    int n_ctx;                   /* when ready */
    char error[512];             /* why the last load failed */
};
int models_info(struct models *ms, int i, struct model_info *ret);
/* /v1/status "models": an array of those; caller deletes it. */
struct cJSON *models_status_json(struct models *ms);
/* /metrics lines of every model's state (malloc'd; NULL when out of memory). */
char *models_metrics_text(struct models *ms);
const char *model_state_name(enum model_state s);
