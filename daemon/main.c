/* main.c - the inferd executable: configuration, roles, model loading, the
 * HTTP server, the scheduler, signals and systemd integration.
 *
 * Start-up order matters to operators: the listening socket serves /health
 * (503 "loading") before the model is loaded, and READY=1 goes to systemd
 * only once the model is loaded and requests are served. Loading runs on its
 * own thread so the main thread keeps answering signals and the watchdog. */
#include <errno.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "text/template/chat_template.h"
#include "cluster.h"
#include "config.h"
#include "model/engine.h"
#include "http.h"
#include "inferd-build-config.h"
#include "log.h"
#include "metrics.h"
#include "model/model.h"
#include "scheduler.h"
#include "sd.h"
#include "base/file.h"
#include "stop_set.h"
#include "base/thread_pool.h"
#include "text/tokenizer/tokenizer.h"
#include "backend.h"
#include "base/cpu.h"
#include "worker.h"
#include "base/clock.h"

/* [model] chat_template file: far above any real template. */
#define CHAT_TEMPLATE_FILE_MAX (16u << 20)

/* Everything the loaded model brings; built by the loader thread. */
struct loaded {
    char *model_dir;
    struct model *model;
    tokenizer *tok;
    chat_template *tmpl;
    struct thread_pool *pool;
    engine *eng;
    struct cluster *cluster;     /* workers, when configured; outlives eng (its stages borrow it) */
    struct metrics *metrics;
    struct sched *sched;
    struct gen_stop_set stops;   /* the tokens that end a generation (stop_set.h) */
    int n_ctx;
    const char *backend;
};

struct loader {
    const struct inferd_config *cfg;
    struct http_app *app;
    struct loaded *L;
    pthread_t thread;
    _Atomic int state;   /* 0 running, 1 done, -1 failed */
    ifd_error err;
};

/* The stages of the engine, in layer order. Single node: one local stage
 * over every layer on the configured backend. With workers: their remote
 * ranges, plus local stages over the layers no worker holds (cluster.c). */
static int build_stages(const struct inferd_config *cfg, struct loaded *L, const struct engine_config *ec,
                        struct stage ***ret_stages, int *ret_n, ifd_error *err)
{
    const struct model *m = L->model;
    if (cfg->n_workers > 0) {
        /* READY waits for every worker. */
        int r = cluster_create(cfg, m, L->model_dir, ec->n_seq_max, ec->n_ctx, ec->n_batch_max, &L->cluster, err);
        if (r >= 0)
            r = cluster_wait_ready(L->cluster, NULL, err);
        if (r >= 0)
            r = cluster_build_stages(L->cluster, m, L->pool, ret_stages, ret_n, err);
        L->backend = "cpu+workers";
        return r;
    }
    struct stage **stages = calloc(1, sizeof(*stages));
    if (!stages)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    int r = backend_stage_create(cfg->backend, cfg->device, m, 0, m->cfg.n_layers, ec->n_seq_max, ec->n_ctx, ec->n_batch_max, L->pool,
                                 &stages[0], &L->backend, err);
    if (r < 0) {
        free(stages);
        return r;
    }
    *ret_stages = stages;
    *ret_n = 1;
    return 0;
}

static void loaded_free(struct loaded *L)
{
    sched_destroy(L->sched);
    engine_destroy(L->eng);
    cluster_destroy(L->cluster);
    thread_pool_destroy(L->pool);
    metrics_destroy(L->metrics);
    chat_template_destroy(L->tmpl);
    tok_destroy(L->tok);
    model_destroy(L->model);
    free(L->model_dir);
    memset(L, 0, sizeof(*L));
}

static int load_model(const struct inferd_config *cfg, struct http_app *app, struct loaded *L, ifd_error *err)
{
    int r;
    if ((r = inferd_config_resolve_model(cfg->model_path, &L->model_dir, err)) < 0)
        return r;
    sdn_status("Loading model %s", L->model_dir);
    log_info("Loading model from %s", L->model_dir);
    double t0 = ifd_now_s();
    struct model_load_opts mo = model_load_opts_default();
    mo.quantize_bits = cfg->quantize_bits;
    mo.quantize_group_size = cfg->quantize_group_size;
    if ((r = model_load(L->model_dir, &mo, &L->model, err)) < 0)
        return r;
    const struct model_config *mc = &L->model->cfg;
    if ((r = inferd_config_validate_layers(cfg, mc->n_layers, err)) < 0)
        return r;
    sdn_status("Loading tokenizer");
    if ((r = tok_load(L->model_dir, &L->tok, err)) < 0)
        return r;

    /* Chat template: the configured override, the model's, or ChatML. */
    char *tsrc = NULL;
    size_t tlen = 0;
    const char *src = NULL;
    if (cfg->chat_template_path) {
        if ((r = file_read(cfg->chat_template_path, CHAT_TEMPLATE_FILE_MAX, 0, &tsrc, &tlen, err)) < 0)
            return r;
        src = tsrc;
    } else if ((src = tok_chat_template(L->tok))) {
        tlen = strlen(src);
    } else {
        src = chat_template_chatml;
        tlen = strlen(src);
        log_notice("The model has no chat template; /v1/chat/completions uses ChatML");
    }
    r = chat_template_compile(src, tlen, &L->tmpl, err);
    free(tsrc);
    if (r < 0) {
        ifd_error_prefix(err, "chat template%s%s", cfg->chat_template_path ? " " : "",
                         cfg->chat_template_path ? cfg->chat_template_path : "");
        return r;
    }

    if ((r = stop_set_build(mc, L->tok, &L->stops, err)) < 0)
        return r;
    const char *eos_tok = tok_special_token(L->tok, "eos_token");

    int n_ctx = inferd_config_context_length(cfg, mc->max_position_embeddings);
    L->n_ctx = n_ctx;
    struct engine_config ec = {
        .n_seq_max = cfg->max_seqs,
        .n_ctx = n_ctx,
        .n_batch_max = cfg->prefill_chunk + cfg->max_seqs,
        .n_threads = cfg->threads,
    };
    if (!(L->pool = thread_pool_create(cfg->threads)))
        return ifd_error_set(err, -ENOMEM, "cannot create the thread pool");
    sdn_status("Creating the engine (%d layers, %d sequences x %d positions)", mc->n_layers, ec.n_seq_max, n_ctx);
    struct stage **stages = NULL;
    int n_stages = 0;
    if ((r = build_stages(cfg, L, &ec, &stages, &n_stages, err)) < 0)
        return r;
    r = engine_create(L->model, stages, n_stages, &ec, L->pool, &L->eng, err);
    if (r < 0) {
        for (int i = 0; i < n_stages; i++)
            stage_destroy(stages[i]);
        free(stages);
        return r;
    }
    free(stages);
    if (!(L->metrics = metrics_create(mc->n_layers, engine_stage_count(L->eng))))
        return ifd_error_set(err, -ENOMEM, "out of memory");
    struct sched_config sc = {
        .n_seq_max = ec.n_seq_max,
        .n_ctx = n_ctx,
        .n_batch_max = ec.n_batch_max,
        .prefill_chunk = cfg->prefill_chunk,
        .queue_depth = cfg->queue_depth,
    };
    if ((r = sched_create(L->eng, L->tok, &L->stops, &sc, L->metrics, &L->sched, err)) < 0)
        return r;

    app->tok = L->tok;
    app->tmpl = L->tmpl;
    app->bos_token = tok_special_token(L->tok, "bos_token");
    app->eos_token = eos_tok;
    app->n_ctx = n_ctx;
    app->n_vocab = mc->vocab_size;
    app->n_layers = mc->n_layers;
    app->n_seq_max = ec.n_seq_max;
    app->sched = L->sched;
    app->metrics = L->metrics;
    app->model_dir = L->model_dir;
    app->backend_name = L->backend;
    app->cluster = L->cluster;
    log_info("Model %s loaded in %.1fs: %s, %d layers, hidden %d, vocab %d, context %d, %d sequences, backend %s",
             app->model_name, ifd_now_s() - t0, mc->arch_name, mc->n_layers, mc->hidden_size, mc->vocab_size, n_ctx,
             ec.n_seq_max, L->backend);
    return 0;
}

static void *loader_main(void *arg)
{
    struct loader *ld = arg;
    int r = load_model(ld->cfg, ld->app, ld->L, &ld->err);
    atomic_store(&ld->state, r < 0 ? -1 : 1);
    /* Wake the main thread out of sigtimedwait. */
    kill(getpid(), SIGUSR1);
    return NULL;
}

static char *served_name(const struct inferd_config *cfg)
{
    if (cfg->served_model_name)
        return strdup(cfg->served_model_name);
    /* The directory's name, or the org/name as given. */
    char *copy = strdup(cfg->model_path);
    if (!copy)
        return NULL;
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/')
        copy[--n] = '\0';
    char *name;
    if (strchr(copy, '/') && copy[0] != '/' && copy[0] != '.' && access(copy, F_OK) != 0)
        name = strdup(copy);
    else
        name = strdup(basename(copy));
    free(copy);
    return name;
}

static struct http_limits http_limits_of(const struct inferd_config *cfg)
{
    return (struct http_limits){
        .max_body_bytes = cfg->max_body_bytes,
        .max_tokenize_bytes = cfg->max_tokenize_bytes,
        .request_timeout_s = cfg->request_timeout_s,
        .max_connections = cfg->max_connections,
        .max_connections_per_ip = cfg->max_connections_per_ip,
        .parse_memory = cfg->parse_memory,
    };
}

/* Every connection is a descriptor: raise the soft limit to the hard one,
 * as systemd advises for programs that do not use select() (the HTTP server
 * polls with poll()). Under the unit's LimitNOFILE both are already equal,
 * and its seccomp filter refuses setrlimit: then there is nothing to do. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rlim_t want = rl.rlim_max;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        log_debug("Cannot raise the open file limit to %llu: %s", (unsigned long long)want, strerror(errno));
}

/* Copies the keys of cfg for the HTTP layer. */
static char **keys_dup(const struct inferd_config *cfg)
{
    char **k = calloc((size_t)cfg->n_api_keys + 1, sizeof(*k));
    if (!k)
        return NULL;
    for (int i = 0; i < cfg->n_api_keys; i++)
        if (!(k[i] = strdup(cfg->api_keys[i]))) {
            for (int j = 0; j < i; j++)
                free(k[j]);
            free(k);
            return NULL;
        }
    return k;
}

static int check_config(const struct inferd_config *cfg)
{
    ifd_error err = {{0}};
    if (cfg->role == INFERD_ROLE_WORKER) {
        printf("Configuration OK: role=worker, listen %s, cache %s\n", cfg->worker_listen, cfg->cache_dir);
        return 0;
    }
    char *dir = NULL;
    if (inferd_config_resolve_model(cfg->model_path, &dir, &err) < 0) {
        fprintf(stderr, "inferd: %s\n", err.msg);
        return 1;
    }
    struct model_config mc;
    if (model_config_load(dir, &mc, &err) < 0) {
        fprintf(stderr, "inferd: %s\n", err.msg);
        free(dir);
        return 1;
    }
    int r = inferd_config_validate_layers(cfg, mc.n_layers, &err);
    if (r < 0) {
        fprintf(stderr, "inferd: %s\n", err.msg);
    } else {
        printf("Configuration OK%s%s\n", cfg->config_path ? ": " : "", cfg->config_path ? cfg->config_path : "");
        printf("  model      %s (%s, %d layers)\n", dir, mc.arch_name, mc.n_layers);
        printf("  listen     %s\n", cfg->listen);
        printf("  backend    %s, threads %d, simd %s\n",
               cfg->backend == INFERD_BACKEND_CPU ? "cpu" : cfg->backend == INFERD_BACKEND_VULKAN ? "vulkan" : "auto",
               cfg->threads, cfg->simd >= 0 ? cpu_simd_name((enum cpu_simd)cfg->simd) : "auto");
        printf("  sequences  %d, queue %d, context %d, body limit %zu bytes\n", cfg->max_seqs, cfg->queue_depth,
               cfg->ctx_len, cfg->max_body_bytes);
        printf("  api keys   %d\n", cfg->n_api_keys);
        for (int i = 0; i < cfg->n_workers; i++) {
            const struct inferd_worker_cfg *w = &cfg->workers[i];
            if (w->auto_layers)
                printf("  worker     %s at %s, layers auto\n", w->name, w->address);
            else
                printf("  worker     %s at %s, layers %d-%d\n", w->name, w->address, w->layer_first, w->layer_last - 1);
        }
    }
    model_config_finish(&mc);
    free(dir);
    return r < 0 ? 1 : 0;
}

/* SIGHUP: re-read the file and flags; apply what can change while serving. */
static void reload(int argc, char **argv, struct http_app *app, struct sched *sched)
{
    struct inferd_config nc;
    struct inferd_cli cli;
    ifd_error err = {{0}};
    sdn_reloading(true);
    if (inferd_config_load(argc, argv, &nc, &cli, &err) < 0) {
        log_err("Reload failed, keeping the running configuration: %s", err.msg);
        sdn_reloading(false);
        return;
    }
    char **keys = keys_dup(&nc);
    if (keys) {
        /* Connection limits and parse_memory size structures made at start:
         * they keep their values until a restart. */
        struct http_limits lim = http_limits_of(&nc), cur;
        pthread_rwlock_rdlock(&app->lock);
        cur = app->limits;
        pthread_rwlock_unlock(&app->lock);
        if (lim.max_connections != cur.max_connections || lim.max_connections_per_ip != cur.max_connections_per_ip ||
            lim.parse_memory != cur.parse_memory)
            log_notice("Reload: max_connections, max_connections_per_ip and parse_memory apply after a restart");
        lim.max_connections = cur.max_connections;
        lim.max_connections_per_ip = cur.max_connections_per_ip;
        lim.parse_memory = cur.parse_memory;
        http_app_set_limits(app, keys, nc.n_api_keys, &lim);
    }
    /* the kernels may not change under running requests (cpu.h) */
    const enum cpu_simd simd_wanted = nc.simd >= 0 ? (enum cpu_simd)nc.simd : cpu_simd_best();
    if (simd_wanted != cpu_simd_level())
        log_notice("Reload: simd %s applies after a restart (running %s)", cpu_simd_name(simd_wanted),
                   cpu_simd_name(cpu_simd_level()));
    if (sched)
        sched_set_queue_depth(sched, nc.queue_depth);
    log_level_set(nc.log_level);
    log_notice("Reloaded configuration: %d API keys, body limit %zu, queue depth %d, log level %s", nc.n_api_keys,
               nc.max_body_bytes, nc.queue_depth, log_level_name(nc.log_level));
    inferd_config_finish(&nc);
    sdn_reloading(false);
}

/* Graceful shutdown: stop taking requests, let running streams finish
 * within the drain timeout, then end the rest with an error. */
static void drain(struct http_app *app, struct http_server *http, struct sched *sched, int timeout_s)
{
    atomic_store(&app->draining, true);
    sdn_stopping("Draining requests");
    http_server_quiesce(http);
    if (!sched)
        return;
    sched_drain_begin(sched);
    double deadline = ifd_now_s() + timeout_s;
    int busy;
    while ((busy = sched_busy(sched)) > 0 && ifd_now_s() < deadline) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (busy > 0) {
        log_warn("Drain timeout (%ds): ending %d running requests", timeout_s, busy);
        sched_abort_running(sched, "the server is shutting down");
    }
    /* Give the connection threads a moment to send their last bytes. */
    for (int i = 0; i < 40 && http_server_connections(http) > 0; i++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv)
{
    struct inferd_config cfg;
    struct inferd_cli cli;
    ifd_error err = {{0}};
    if (inferd_config_load(argc, argv, &cfg, &cli, &err) < 0) {
        fprintf(stderr, "<3>inferd: %s\n", err.msg);
        return 1;
    }
    if (cli.help) {
        inferd_config_usage(stdout);
        inferd_config_finish(&cfg);
        return 0;
    }
    if (cli.version) {
        printf("inferd %s\n", INFERD_VERSION);
        inferd_config_finish(&cfg);
        return 0;
    }
    log_level_set(cfg.log_level);
    raise_fd_limit();
    if (cfg.simd >= 0)
        (void)cpu_simd_force((enum cpu_simd)cfg.simd); /* checked against this CPU by the config */
    log_info("CPU kernels: %s%s", cpu_simd_name(cpu_simd_level()), cfg.simd >= 0 ? " ([node] simd)" : "");
    if (cli.check_config) {
        int rc = check_config(&cfg);
        inferd_config_finish(&cfg);
        return rc;
    }
    if (cfg.role == INFERD_ROLE_WORKER) {
        int rc = worker_role_main(&cfg);
        inferd_config_finish(&cfg);
        return rc;
    }

    /* Signals are taken synchronously by the main thread; every other thread
     * inherits the mask. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct http_app app = {0};
    struct loaded L = {0};
    struct http_server *http = NULL;
    int rc = 1;
    pthread_rwlock_init(&app.lock, NULL);
    app.t_start = ifd_now_s();
    app.created = (int64_t)time(NULL);
    char *name = served_name(&cfg);
    app.model_name = name ? name : "model";
    /* Until the model is loaded: what was asked for (auto resolves at load). */
    app.backend_name = cfg.backend == INFERD_BACKEND_VULKAN ? "vulkan" : cfg.backend == INFERD_BACKEND_CPU ? "cpu" : "auto";
    char **keys = keys_dup(&cfg);
    if (!keys) {
        log_err("out of memory");
        goto out;
    }
    struct http_limits lim = http_limits_of(&cfg);
    http_app_set_limits(&app, keys, cfg.n_api_keys, &lim);

    int fd = sdn_listen_fd();
    if (fd == -EINVAL)
        goto out;
    const char *where = "the socket passed by systemd";
    if (fd < 0) {
        if (http_listen(cfg.listen, &fd, &err) < 0) {
            log_err("%s", err.msg);
            goto out;
        }
        where = cfg.listen;
    }
    if (http_server_start(&app, fd, &http, &err) < 0) {
        log_err("%s", err.msg);
        close(fd);
        goto out;
    }
    log_info("inferd %s listening on %s (model loading)", INFERD_VERSION, where);
    if (cfg.n_api_keys == 0 && !strstr(cfg.listen, "127.0.0.1") && !strstr(cfg.listen, "localhost") &&
        !strstr(cfg.listen, "[::1]"))
        log_warn("No API keys configured and listening beyond loopback: anyone who can reach %s can use the model",
                 where);

    struct loader ld = {.cfg = &cfg, .app = &app, .L = &L};
    if (pthread_create(&ld.thread, NULL, loader_main, &ld) != 0) {
        log_err("cannot start the loader thread");
        goto out;
    }
    bool loader_joined = false;
    uint64_t wd = sdn_watchdog_usec();
    bool stopping = false;
    for (;;) {
        if (!loader_joined && atomic_load(&ld.state) != 0) {
            pthread_join(ld.thread, NULL);
            loader_joined = true;
            if (atomic_load(&ld.state) < 0) {
                log_err("Failed to load the model: %s", ld.err.msg);
                sdn_status("Failed to load the model: %s", ld.err.msg);
                goto out;
            }
            atomic_store_explicit(&app.ready, true, memory_order_release);
            char st[512];
            snprintf(st, sizeof(st), "Serving %s on %s", app.model_name, where);
            sdn_ready(st);
            log_notice("%s", st);
        }
        if (stopping)
            break;
        struct timespec ts = {1, 0};
        if (wd > 0 && wd / 2 < 1000000) {
            ts.tv_sec = 0;
            ts.tv_nsec = (long)(wd / 2) * 1000;
        }
        int sig = sigtimedwait(&mask, NULL, &ts);
        /* The watchdog says "alive" only if the scheduler loop is. */
        if (wd > 0 && (!loader_joined || !L.sched || ifd_now_s() - sched_heartbeat(L.sched) < (double)wd / 1e6))
            sdn_watchdog_ping();
        if (sig == SIGHUP) {
            reload(argc, argv, &app, loader_joined ? L.sched : NULL);
        } else if (sig == SIGTERM || sig == SIGINT) {
            log_notice("Received %s, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            if (!loader_joined) {
                /* Still loading: nothing to drain; leave without waiting for it. */
                atomic_store(&app.draining, true);
                sdn_stopping("Stopping during model load");
                http_server_stop(http);
                _exit(0);
            }
            stopping = true;
        }
    }
    drain(&app, http, L.sched, cfg.drain_timeout_s);
    rc = 0;
out:
    http_server_stop(http);
    loaded_free(&L);
    http_app_set_limits(&app, NULL, 0, NULL);
    pthread_rwlock_destroy(&app.lock);
    free(name);
    inferd_config_finish(&cfg);
    log_info("inferd stopped");
    return rc;
}
