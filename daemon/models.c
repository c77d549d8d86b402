/* models.c - the models a master serves: loading, sharing between requests,
 * idle unloading and the memory budget (see models.h). */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "models.h"

#include "backend.h"
#include "base/clock.h"
#include "base/cpu.h"
#include "base/file.h"
#include "base/thread_pool.h"
#include "cluster.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "model/engine.h"
#include "model/model.h"
#include "model/model_bytes.h"
#include "model/model_config.h"
#include "scheduler.h"
#include "sd.h"
#include "stop_set.h"

/* A chat_template file: far above any real template. */
#define CHAT_TEMPLATE_FILE_MAX (16u << 20)
/* How often a waiting request looks whether its client is still there. */
#define ACQUIRE_POLL_MS 250

/* What one model is and, once loaded, everything it brought. */
struct entry {
    struct served_model view;    /* what models_acquire() hands out; filled when ready */
    char *name;
    /* From its section of the configuration. */
    const char *path;
    const char *chat_template_path;
    int quantize_bits, quantize_group_size;
    int reasoning;               /* enum tools_reasoning */
    bool preload, pool_mean;
    int idle_unload_s;
    bool is_default;             /* [model]: loaded at start, never unloaded, runs the workers */

    /* Guarded by models.lock. */
    enum model_state state;
    bool unloading;              /* resources being freed outside the lock */
    int holders;
    double last_used;
    uint64_t loads, unloads;
    size_t memory_estimate;
    char error[512];

    /* Owned by whoever moved the state to LOADING, or by the holders while READY. */
    char *model_dir;
    struct model *model;
    tokenizer *tok;
    chat_template *tmpl;
    struct tools_template_info tools;
    struct thread_pool *pool;
    engine *eng;
    struct cluster *cluster;     /* outlives eng (its stages borrow it) */
    struct metrics *metrics;
    struct sched *sched;
    struct gen_stop_set stops;
    const char *backend;
};

struct models {
    const struct inferd_config *cfg;
    pthread_mutex_t lock;
    pthread_cond_t changed;      /* a state changed: waiters look again */
    bool stopping;
    int queue_depth;             /* [server] queue_depth, changed by a reload */
    int n;
    struct entry *e;             /* [n]; e[0] is the default model */
};

const char *model_state_name(enum model_state s)
{
    switch (s) {
    case MODEL_UNLOADED: return "unloaded";
    case MODEL_LOADING: return "loading";
    case MODEL_READY: return "loaded";
    case MODEL_FAILED: return "failed";
    }
    return "?";
}

/* ---- memory estimate ---- */

static int context_of(const struct inferd_config *cfg, const struct model_config *mc)
{
    return inferd_config_context_length(cfg, mc->max_position_embeddings);
}

/* What a model will hold: its safetensors files (the weights are read into
 * memory whole; for a float checkpoint quantized while loading this is an
 * upper bound) plus the KV cache of every sequence slot. */
static int estimate_memory(const struct inferd_config *cfg, const char *dir, size_t *ret, ifd_error *err)
{
    struct model_config mc;
    int r = model_config_load(dir, &mc, err);
    if (r < 0)
        return r;
    size_t kv = (size_t)mc.n_layers * (size_t)cfg->max_seqs * (size_t)context_of(cfg, &mc) *
                (size_t)model_bytes_kv_position(&mc);
    model_config_finish(&mc);
    size_t files = 0;
    DIR *d = opendir(dir);
    if (!d)
        return ifd_error_set(err, -errno, "%s: %s", dir, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 12 || strcmp(de->d_name + len - 12, ".safetensors") != 0)
            continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (stat(path, &st) == 0) /* follows the cache's snapshot links to the blobs */
            files += (size_t)st.st_size;
    }
    closedir(d);
    *ret = files + kv;
    return 0;
}

/* ---- loading and unloading (outside the lock) ---- */

/* The stages of the engine, in layer order. Single node: one local stage
 * over every layer on the configured backend. The default model with
 * workers: their remote ranges, plus local stages over the layers no worker
 * holds (cluster.c). */
static int build_stages(const struct inferd_config *cfg, struct entry *E, const struct engine_config *ec,
                        struct stage ***ret_stages, int *ret_n, ifd_error *err)
{
    const struct model *m = E->model;
    if (E->is_default && cfg->n_workers > 0) {
        /* READY waits for every worker. */
        int r = cluster_create(cfg, m, E->model_dir, ec->n_seq_max, ec->n_ctx, ec->n_batch_max, &E->cluster, err);
        if (r >= 0)
            r = cluster_wait_ready(E->cluster, NULL, err);
        if (r >= 0)
            r = cluster_build_stages(E->cluster, m, E->pool, ret_stages, ret_n, err);
        E->backend = "cpu+workers";
        return r;
    }
    struct stage **stages = calloc(1, sizeof(*stages));
    if (!stages)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    int r = backend_stage_create(cfg->backend, cfg->device, m, 0, m->cfg.n_layers, ec->n_seq_max, ec->n_ctx,
                                 ec->n_batch_max, E->pool, &stages[0], &E->backend, err);
    if (r < 0) {
        free(stages);
        return r;
    }
    *ret_stages = stages;
    *ret_n = 1;
    return 0;
}

/* The scheduler's recover hook of a model with workers (scheduler thread). */
static int entry_failover(void *ctx, struct metrics_failover *ret, ifd_error *err)
{
    struct entry *E = ctx;
    return cluster_failover(E->cluster, E->eng, E->pool, ret, err);
}

static void entry_free_resources(struct entry *E)
{
    sched_destroy(E->sched);
    engine_destroy(E->eng);
    cluster_destroy(E->cluster);
    thread_pool_destroy(E->pool);
    metrics_destroy(E->metrics);
    chat_template_destroy(E->tmpl);
    tok_destroy(E->tok);
    model_destroy(E->model);
    free(E->model_dir);
    E->sched = NULL;
    E->eng = NULL;
    E->cluster = NULL;
    E->pool = NULL;
    E->metrics = NULL;
    E->tmpl = NULL;
    E->tok = NULL;
    E->model = NULL;
    E->model_dir = NULL;
    E->backend = NULL;
    memset(&E->view, 0, sizeof(E->view));
    E->view.name = E->name;
}

/* The chat template: the configured file, the model's own, or ChatML. */
static int compile_template(struct entry *E, ifd_error *err)
{
    char *file_text = NULL;
    size_t len = 0;
    const char *src;
    int r;
    if (E->chat_template_path) {
        if ((r = file_read(E->chat_template_path, CHAT_TEMPLATE_FILE_MAX, 0, &file_text, &len, err)) < 0)
            return r;
        src = file_text;
    } else if ((src = tok_chat_template(E->tok))) {
        len = strlen(src);
    } else {
        src = chat_template_chatml;
        len = strlen(src);
        log_notice("Model %s has no chat template; /v1/chat/completions uses ChatML", E->name);
    }
    r = chat_template_compile(src, len, &E->tmpl, err);
    tools_template_detect(src, (enum tools_reasoning)E->reasoning, &E->tools);
    free(file_text);
    if (r < 0)
        ifd_error_prefix(err, "chat template%s%s", E->chat_template_path ? " " : "",
                         E->chat_template_path ? E->chat_template_path : "");
    return r;
}

/* `micro_batches = auto`: one per node of the pipeline, so that every node
 * computes at once; but no more than this machine's CPUs when every worker
 * is on it (loopback): the nodes then share those CPUs, and a micro-batch
 * that no CPU is free to run only splits the batch further, each split
 * reading the layer weights again. Measured with the master and two
 * single-threaded workers on 2 CPUs (tests/bench/bench_pipeline.py,
 * Qwen2.5-0.5B shape, 16 streams): 3 in flight 1.17-1.28x the synchronous
 * step, 2 in flight 1.51x. */
static int auto_micro_batches(const struct inferd_config *cfg, int depth)
{
    for (int i = 0; i < cfg->n_workers; i++)
        if (!net_addr_is_loopback(cfg->workers[i].address))
            return depth;
    int cpus = cpu_count_usable();
    return depth < cpus ? depth : cpus;
}

static int load_entry(struct models *ms, struct entry *E, ifd_error *err)
{
    const struct inferd_config *cfg = ms->cfg;
    int r;
    if ((r = inferd_config_resolve_model(E->path, &E->model_dir, err)) < 0)
        return r;
    if (E->is_default)
        sdn_status("Loading model %s", E->model_dir);
    log_info("Loading model %s from %s", E->name, E->model_dir);
    double t0 = ifd_now_s();
    struct model_load_opts mo = model_load_opts_default();
    mo.quantize_bits = E->quantize_bits;
    mo.quantize_group_size = E->quantize_group_size;
    mo.quantize_into_panels = backend_runs_on_cpu(cfg->backend);
    if ((r = model_load(E->model_dir, &mo, &E->model, err)) < 0)
        return r;
    const struct model_config *mc = &E->model->cfg;
    if (E->is_default && (r = inferd_config_validate_layers(cfg, mc->n_layers, err)) < 0)
        return r;
    if ((r = tok_load(E->model_dir, &E->tok, err)) < 0)
        return r;
    if ((r = compile_template(E, err)) < 0)
        return r;
    if ((r = stop_set_build(mc, E->tok, &E->stops, err)) < 0)
        return r;

    const int n_ctx = context_of(cfg, mc);
    struct engine_config ec = {
        .n_seq_max = cfg->max_seqs,
        .n_ctx = n_ctx,
        .n_batch_max = cfg->prefill_chunk + cfg->max_seqs,
        .n_threads = cfg->threads,
    };
    if (!(E->pool = thread_pool_create(cfg->threads)))
        return ifd_error_set(err, -ENOMEM, "cannot create the thread pool");
    if (E->is_default)
        sdn_status("Creating the engine (%d layers, %d sequences x %d positions)", mc->n_layers, ec.n_seq_max, n_ctx);
    struct stage **stages = NULL;
    int n_stages = 0;
    if ((r = build_stages(cfg, E, &ec, &stages, &n_stages, err)) < 0)
        return r;
    /* Pipelined micro-batches only pay where another node computes (a
     * remote stage): a lone node would split its batch for nothing. */
    int depth = engine_stages_pipeline_depth(stages, n_stages);
    ec.n_inflight = depth == 1 ? 1 : cfg->micro_batches > 0 ? cfg->micro_batches : auto_micro_batches(cfg, depth);
    if (depth == 1 && cfg->micro_batches > 1)
        log_notice("[cluster] micro_batches = %d ignored: no stage computes on another node", cfg->micro_batches);
    else if (depth > 1)
        log_info("Pipelining %d micro-batches over %d nodes", ec.n_inflight, depth);
    r = engine_create(E->model, stages, n_stages, &ec, E->pool, &E->eng, err);
    if (r < 0) {
        for (int i = 0; i < n_stages; i++)
            stage_destroy(stages[i]);
        free(stages);
        return r;
    }
    free(stages);
    if (!(E->metrics = metrics_create(mc->n_layers, engine_stage_count(E->eng))))
        return ifd_error_set(err, -ENOMEM, "out of memory");
    struct sched_config sc = {
        .n_seq_max = ec.n_seq_max,
        .n_ctx = n_ctx,
        .n_batch_max = ec.n_batch_max,
        .prefill_chunk = cfg->prefill_chunk,
        .queue_depth = __atomic_load_n(&ms->queue_depth, __ATOMIC_RELAXED),
        .micro_batches = ec.n_inflight,
        .prefix_cache = cfg->prefix_cache,
        .recover = E->cluster ? entry_failover : NULL,
        .recover_ctx = E,
    };
    if ((r = sched_create(E->eng, E->tok, &E->stops, &sc, E->metrics, &E->sched, err)) < 0)
        return r;

    E->view = (struct served_model){
        .name = E->name,
        .tok = E->tok,
        .tmpl = E->tmpl,
        .tools = E->tools,
        .bos_token = tok_special_token(E->tok, "bos_token"),
        .eos_token = tok_special_token(E->tok, "eos_token"),
        .n_ctx = n_ctx,
        .n_vocab = mc->vocab_size,
        .n_layers = mc->n_layers,
        .n_seq_max = ec.n_seq_max,
        .hidden_size = mc->hidden_size,
        .pool_mean = E->pool_mean,
        .sched = E->sched,
        .metrics = E->metrics,
        .model_dir = E->model_dir,
        .backend_name = E->backend,
        .micro_batches = sc.micro_batches,
        .cluster = E->cluster,
    };
    log_info("Model %s loaded in %.1fs: %s, %d layers, hidden %d, vocab %d, context %d, %d sequences, backend %s",
             E->name, ifd_now_s() - t0, mc->arch_name, mc->n_layers, mc->hidden_size, mc->vocab_size, n_ctx,
             ec.n_seq_max, E->backend);
    return 0;
}

/* Loads E, whose state the caller moved to LOADING; takes the lock back. */
static int load_locked(struct models *ms, struct entry *E, ifd_error *err)
{
    pthread_mutex_unlock(&ms->lock);
    int r = load_entry(ms, E, err);
    if (r < 0)
        entry_free_resources(E);
    pthread_mutex_lock(&ms->lock);
    if (r < 0) {
        E->state = MODEL_FAILED;
        snprintf(E->error, sizeof(E->error), "%s", err->msg);
        log_err("Model %s failed to load: %s", E->name, err->msg);
    } else {
        E->state = MODEL_READY;
        E->loads++;
        E->error[0] = '\0';
        E->last_used = ifd_now_s();
    }
    pthread_cond_broadcast(&ms->changed);
    return r;
}

/* Unloads E (ready, nobody holding it); takes the lock back. */
static void unload_locked(struct models *ms, struct entry *E, const char *why)
{
    E->unloading = true;
    pthread_mutex_unlock(&ms->lock);
    log_notice("Unloading model %s (%s)", E->name, why);
    entry_free_resources(E);
    pthread_mutex_lock(&ms->lock);
    E->unloading = false;
    E->state = MODEL_UNLOADED;
    E->unloads++;
    pthread_cond_broadcast(&ms->changed);
}

/* ---- the table ---- */

static struct entry *find(struct models *ms, const char *name)
{
    if (!name)
        return &ms->e[0];
    for (int i = 0; i < ms->n; i++)
        if (strcmp(ms->e[i].name, name) == 0)
            return &ms->e[i];
    return NULL;
}

int models_create(const struct inferd_config *cfg, const char *default_name, struct models **ret, ifd_error *err)
{
    struct models *ms = calloc(1, sizeof(*ms));
    if (!ms)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    ms->cfg = cfg;
    ms->queue_depth = cfg->queue_depth;
    pthread_mutex_init(&ms->lock, NULL);
    pthread_cond_init(&ms->changed, NULL);
    ms->e = calloc((size_t)cfg->n_models + 1, sizeof(*ms->e));
    if (!ms->e) {
        models_destroy(ms);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    for (int i = 0; i <= cfg->n_models; i++) {
        struct entry *E = &ms->e[i];
        if (i == 0) {
            E->name = strdup(default_name);
            E->path = cfg->model_path;
            E->chat_template_path = cfg->chat_template_path;
            E->quantize_bits = cfg->quantize_bits;
            E->quantize_group_size = cfg->quantize_group_size;
            E->pool_mean = cfg->pool_mean;
            E->reasoning = cfg->reasoning;
            E->is_default = true;
            E->state = MODEL_LOADING; /* requests wait for the start-up load */
        } else {
            const struct inferd_model_cfg *mc = &cfg->models[i - 1];
            E->name = strdup(mc->name);
            E->path = mc->path;
            E->chat_template_path = mc->chat_template_path;
            E->quantize_bits = mc->quantize_bits;
            E->quantize_group_size = mc->quantize_group_size;
            E->reasoning = mc->reasoning;
            E->preload = mc->preload;
            E->pool_mean = mc->pool_mean;
            E->idle_unload_s = mc->idle_unload_s;
        }
        ms->n = i + 1;
        if (!E->name) {
            models_destroy(ms);
            return ifd_error_set(err, -ENOMEM, "out of memory");
        }
        E->view.name = E->name;
        if (find(ms, E->name) != E) {
            int r = ifd_error_set(err, -EINVAL, "two models are called '%s' (the [model] one is named by [server] "
                                  "model_name or its directory)", E->name);
            models_destroy(ms);
            return r;
        }
    }
    *ret = ms;
    return 0;
}

void models_destroy(struct models *ms)
{
    if (!ms)
        return;
    for (int i = 0; i < ms->n; i++) {
        entry_free_resources(&ms->e[i]);
        free(ms->e[i].name);
    }
    free(ms->e);
    pthread_cond_destroy(&ms->changed);
    pthread_mutex_destroy(&ms->lock);
    free(ms);
}

/* The memory estimate of E, whose state the caller moved to LOADING:
 * computed now, as the files may have changed since the last load (by
 * `inferctl model pull`, say). Reads files, so it drops the lock. */
static int refresh_estimate_locked(struct models *ms, struct entry *E, ifd_error *err)
{
    pthread_mutex_unlock(&ms->lock);
    char *dir = NULL;
    int r = inferd_config_resolve_model(E->path, &dir, err);
    size_t bytes = 0;
    if (r >= 0)
        r = estimate_memory(ms->cfg, dir, &bytes, err);
    free(dir);
    pthread_mutex_lock(&ms->lock);
    if (r >= 0)
        E->memory_estimate = bytes;
    return r;
}

/* A load of E (LOADING) that did not start: back to `state`, waking the
 * waiters; why (NULL: unchanged) becomes its error. */
static void load_abandoned_locked(struct models *ms, struct entry *E, enum model_state state, const char *why)
{
    E->state = state;
    if (why)
        snprintf(E->error, sizeof(E->error), "%s", why);
    pthread_cond_broadcast(&ms->changed);
}

/* Makes room for E under models_memory by unloading idle models, least
 * recently used first. Called with the lock held; may drop it. */
static int make_room_locked(struct models *ms, struct entry *E, ifd_error *err)
{
    const size_t budget = ms->cfg->models_memory;
    if (budget == 0)
        return 0;
    if (E->memory_estimate > budget)
        return ifd_error_set(err, -ENOSPC, "model '%s' needs about %zu MiB, over [server] models_memory (%zu MiB)",
                             E->name, E->memory_estimate >> 20, budget >> 20);
    for (;;) {
        size_t used = 0;
        struct entry *lru = NULL;
        for (int i = 0; i < ms->n; i++) {
            struct entry *o = &ms->e[i];
            if (o == E || (o->state != MODEL_READY && o->state != MODEL_LOADING))
                continue;
            used += o->memory_estimate;
            if (o->state == MODEL_READY && !o->is_default && o->holders == 0 && !o->unloading &&
                (!lru || o->last_used < lru->last_used))
                lru = o;
        }
        if (used + E->memory_estimate <= budget)
            return 0;
        if (!lru)
            return ifd_error_set(err, -ENOSPC,
                                 "model '%s' needs about %zu MiB; [server] models_memory is %zu MiB and the models "
                                 "in use hold about %zu MiB: try again when they are idle",
                                 E->name, E->memory_estimate >> 20, budget >> 20, used >> 20);
        unload_locked(ms, lru, "to make room under models_memory");
    }
}

int models_load_default(struct models *ms, ifd_error *err)
{
    pthread_mutex_lock(&ms->lock);
    struct entry *D = &ms->e[0];
    int r = refresh_estimate_locked(ms, D, err);
    if (r >= 0)
        r = load_locked(ms, D, err);
    else
        load_abandoned_locked(ms, D, MODEL_FAILED, err->msg);
    pthread_mutex_unlock(&ms->lock);
    return r;
}

void models_preload(struct models *ms)
{
    pthread_mutex_lock(&ms->lock);
    for (int i = 1; i < ms->n && !ms->stopping; i++) {
        struct entry *E = &ms->e[i];
        ifd_error err = {{0}};
        if (!E->preload || E->state != MODEL_UNLOADED)
            continue;
        E->state = MODEL_LOADING;
        if (refresh_estimate_locked(ms, E, &err) < 0 || make_room_locked(ms, E, &err) < 0) {
            load_abandoned_locked(ms, E, MODEL_FAILED, err.msg);
            log_err("Model %s (preload) not loaded: %s", E->name, err.msg);
            continue;
        }
        (void)load_locked(ms, E, &err); /* logged; its first request tries again */
    }
    pthread_mutex_unlock(&ms->lock);
}

const struct served_model *models_default(struct models *ms)
{
    pthread_mutex_lock(&ms->lock);
    const struct served_model *v = ms->e[0].state == MODEL_READY ? &ms->e[0].view : NULL;
    pthread_mutex_unlock(&ms->lock);
    return v;
}

static int not_found(struct models *ms, const char *name, ifd_error *err)
{
    char list[512] = "";
    size_t n = 0;
    for (int i = 0; i < ms->n && n < sizeof(list); i++)
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%s'%s'", i ? ", " : "", ms->e[i].name);
    return ifd_error_set(err, -ENOENT, "The model '%.200s' does not exist (this server has %s)", name, list);
}

int models_acquire(struct models *ms, const char *name, bool (*cancelled)(void *ctx), void *ctx,
                   const struct served_model **ret, ifd_error *err)
{
    pthread_mutex_lock(&ms->lock);
    struct entry *E = find(ms, name);
    int r;
    if (!E) {
        r = not_found(ms, name, err);
        goto out;
    }
    for (;;) {
        if (ms->stopping) {
            r = ifd_error_set(err, -ESHUTDOWN, "the server is shutting down");
            goto out;
        }
        if (E->state == MODEL_READY && !E->unloading) {
            E->holders++;
            *ret = &E->view;
            r = 0;
            goto out;
        }
        if (E->state == MODEL_FAILED && E->is_default) {
            r = ifd_error_set(err, -EIO, "model '%s' failed to load: %s", E->name, E->error);
            goto out;
        }
        if ((E->state == MODEL_UNLOADED || E->state == MODEL_FAILED) && !E->unloading) {
            /* This request loads it; others wait for the state to change. */
            const enum model_state before = E->state;
            E->state = MODEL_LOADING;
            if ((r = refresh_estimate_locked(ms, E, err)) < 0) {
                ifd_error_prefix(err, "model '%s' cannot be loaded", E->name);
                load_abandoned_locked(ms, E, MODEL_FAILED, err->msg);
                r = -EIO;
                goto out;
            }
            if ((r = make_room_locked(ms, E, err)) < 0) {
                load_abandoned_locked(ms, E, before, NULL); /* no room is not the model's fault */
                goto out;
            }
            if ((r = load_locked(ms, E, err)) < 0) {
                ifd_error_prefix(err, "model '%s' failed to load", E->name);
                r = -EIO;
                goto out;
            }
            continue;
        }
        /* Loading or being unloaded: wait for the change. */
        if (cancelled && cancelled(ctx)) {
            r = ifd_error_set(err, -ECANCELED, "the client went away");
            goto out;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += ACQUIRE_POLL_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&ms->changed, &ms->lock, &ts);
    }
out:
    pthread_mutex_unlock(&ms->lock);
    return r;
}

void models_release(struct models *ms, const struct served_model *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&ms->lock);
    for (int i = 0; i < ms->n; i++)
        if (&ms->e[i].view == m) {
            ms->e[i].holders--;
            ms->e[i].last_used = ifd_now_s();
        }
    pthread_mutex_unlock(&ms->lock);
}

void models_tick(struct models *ms)
{
    pthread_mutex_lock(&ms->lock);
    const double now = ifd_now_s();
    for (int i = 1; i < ms->n; i++) {
        struct entry *E = &ms->e[i];
        if (E->state == MODEL_READY && !E->unloading && E->holders == 0 && E->idle_unload_s > 0 &&
            now - E->last_used >= E->idle_unload_s && !ms->stopping) {
            char why[64];
            snprintf(why, sizeof(why), "idle for %d s", E->idle_unload_s);
            unload_locked(ms, E, why);
        }
    }
    pthread_mutex_unlock(&ms->lock);
}

void models_shutdown_begin(struct models *ms)
{
    pthread_mutex_lock(&ms->lock);
    ms->stopping = true;
    pthread_cond_broadcast(&ms->changed);
    pthread_mutex_unlock(&ms->lock);
}

int models_count(struct models *ms)
{
    return ms->n;
}

int models_info(struct models *ms, int i, struct model_info *ret)
{
    if (i < 0 || i >= ms->n)
        return -ENOENT;
    pthread_mutex_lock(&ms->lock);
    const struct entry *E = &ms->e[i];
    memset(ret, 0, sizeof(*ret));
    snprintf(ret->name, sizeof(ret->name), "%s", E->name);
    ret->state = E->state;
    ret->is_default = E->is_default;
    ret->memory_estimate = E->memory_estimate;
    ret->holders = E->holders;
    ret->idle_s = E->holders == 0 && E->state == MODEL_READY ? ifd_now_s() - E->last_used : 0;
    ret->idle_unload_s = E->idle_unload_s;
    ret->loads = E->loads;
    ret->unloads = E->unloads;
    ret->n_ctx = E->state == MODEL_READY && !E->unloading ? E->view.n_ctx : 0;
    snprintf(ret->error, sizeof(ret->error), "%s", E->error);
    pthread_mutex_unlock(&ms->lock);
    return 0;
}

/* ---- what every loaded model does together ---- */

/* Calls fn on each loaded model's scheduler, under the lock (the scheduler
 * calls used here are short and do not call back into models). */
static int each_sched(struct models *ms, int (*fn)(struct sched *, void *), void *arg)
{
    int sum = 0;
    pthread_mutex_lock(&ms->lock);
    for (int i = 0; i < ms->n; i++)
        if (ms->e[i].state == MODEL_READY && !ms->e[i].unloading && ms->e[i].sched)
            sum += fn(ms->e[i].sched, arg);
    pthread_mutex_unlock(&ms->lock);
    return sum;
}

static int do_busy(struct sched *s, void *arg)
{
    (void)arg;
    return sched_busy(s);
}

static int do_drain_begin(struct sched *s, void *arg)
{
    (void)arg;
    sched_drain_begin(s);
    return 0;
}

static int do_abort(struct sched *s, void *arg)
{
    sched_abort_running(s, arg);
    return 0;
}

static int do_queue_depth(struct sched *s, void *arg)
{
    sched_set_queue_depth(s, *(const int *)arg);
    return 0;
}

int models_busy(struct models *ms)
{
    return each_sched(ms, do_busy, NULL);
}

void models_drain_begin(struct models *ms)
{
    (void)each_sched(ms, do_drain_begin, NULL);
}

void models_abort_running(struct models *ms, const char *why)
{
    (void)each_sched(ms, do_abort, (void *)why);
}

void models_set_queue_depth(struct models *ms, int queue_depth)
{
    __atomic_store_n(&ms->queue_depth, queue_depth, __ATOMIC_RELAXED);
    (void)each_sched(ms, do_queue_depth, &queue_depth);
}

static int do_stale(struct sched *s, void *arg)
{
    return ifd_now_s() - sched_heartbeat(s) >= *(const double *)arg;
}

bool models_alive(struct models *ms, double max_age_s)
{
    return each_sched(ms, do_stale, &max_age_s) == 0;
}

/* ---- reports ---- */

cJSON *models_status_json(struct models *ms)
{
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < ms->n; i++) {
        struct model_info mi;
        if (models_info(ms, i, &mi) < 0)
            continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", mi.name);
        cJSON_AddStringToObject(o, "state", model_state_name(mi.state));
        cJSON_AddBoolToObject(o, "default", mi.is_default);
        cJSON_AddNumberToObject(o, "memory_estimate_bytes", (double)mi.memory_estimate);
        cJSON_AddNumberToObject(o, "requests_in_flight", mi.holders);
        cJSON_AddNumberToObject(o, "idle_s", mi.idle_s);
        cJSON_AddNumberToObject(o, "idle_unload_s", mi.idle_unload_s);
        cJSON_AddNumberToObject(o, "loads", (double)mi.loads);
        cJSON_AddNumberToObject(o, "unloads", (double)mi.unloads);
        if (mi.n_ctx > 0)
            cJSON_AddNumberToObject(o, "context_length", mi.n_ctx);
        if (mi.error[0])
            cJSON_AddStringToObject(o, "error", mi.error);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

char *models_metrics_text(struct models *ms)
{
    struct model_info *mi = calloc((size_t)ms->n, sizeof(*mi));
    if (!mi)
        return NULL;
    for (int i = 0; i < ms->n; i++)
        (void)models_info(ms, i, &mi[i]);
    size_t cap = 1024 + (size_t)ms->n * (5 * (INFERD_MAX_MODEL_NAME + 96)), n = 0;
    char *t = malloc(cap);
    if (!t) {
        free(mi);
        return NULL;
    }
#define OUT(...) (n += (size_t)snprintf(t + n, n < cap ? cap - n : 0, __VA_ARGS__))
    OUT("# HELP inferd_model_loaded 1 when the model is loaded.\n# TYPE inferd_model_loaded gauge\n");
    for (int i = 0; i < ms->n; i++)
        OUT("inferd_model_loaded{model=\"%s\"} %d\n", mi[i].name, mi[i].state == MODEL_READY);
    OUT("# HELP inferd_model_requests_in_flight Requests holding the model.\n"
        "# TYPE inferd_model_requests_in_flight gauge\n");
    for (int i = 0; i < ms->n; i++)
        OUT("inferd_model_requests_in_flight{model=\"%s\"} %d\n", mi[i].name, mi[i].holders);
    OUT("# HELP inferd_model_loads_total Loads of the model.\n# TYPE inferd_model_loads_total counter\n");
    for (int i = 0; i < ms->n; i++)
        OUT("inferd_model_loads_total{model=\"%s\"} %llu\n", mi[i].name, (unsigned long long)mi[i].loads);
    OUT("# HELP inferd_model_unloads_total Unloads of the model (idle, or for room).\n"
        "# TYPE inferd_model_unloads_total counter\n");
    for (int i = 0; i < ms->n; i++)
        OUT("inferd_model_unloads_total{model=\"%s\"} %llu\n", mi[i].name, (unsigned long long)mi[i].unloads);
    OUT("# HELP inferd_model_memory_estimate_bytes Weights on disk plus KV cache.\n"
        "# TYPE inferd_model_memory_estimate_bytes gauge\n");
    for (int i = 0; i < ms->n; i++)
        OUT("inferd_model_memory_estimate_bytes{model=\"%s\"} %zu\n", mi[i].name, mi[i].memory_estimate);
#undef OUT
    free(mi);
    if (n >= cap) { /* the capacity covers the longest names: cannot happen */
        free(t);
        return NULL;
    }
    return t;
}
