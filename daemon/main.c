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

#include "base/clock.h"
#include "base/cpu.h"
#include "config.h"
#include "http.h"
#include "inferd-build-config.h"
#include "log.h"
#include "model/model_config.h"
#include "models.h"
#include "sd.h"
#include "worker.h"

struct loader {
    struct models *models;
    pthread_t thread;
    _Atomic int state;   /* 0 running, 1 done, -1 failed */
    ifd_error err;
};

static void *loader_main(void *arg)
{
    struct loader *ld = arg;
    int r = models_load_default(ld->models, &ld->err);
    atomic_store(&ld->state, r < 0 ? -1 : 1);
    /* Wake the main thread out of sigtimedwait. */
    kill(getpid(), SIGUSR1);
    /* READY does not wait for the other models. */
    if (r >= 0)
        models_preload(ld->models);
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

/* Copies a string list of the configuration for the HTTP layer (NULL-terminated). */
static char **strv_dup(char *const *v, int n)
{
    char **k = calloc((size_t)n + 1, sizeof(*k));
    if (!k)
        return NULL;
    for (int i = 0; i < n; i++)
        if (!(k[i] = strdup(v[i]))) {
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
        for (int i = 0; i < cfg->n_models; i++) {
            const struct inferd_model_cfg *m = &cfg->models[i];
            char *mdir = NULL;
            ifd_error merr = {{0}};
            /* Not fatal: a model may be pulled after the daemon starts. */
            if (inferd_config_resolve_model(m->path, &mdir, &merr) < 0)
                printf("  model      %s: %s (its requests get 503 until it is there)\n", m->name, merr.msg);
            else
                printf("  model      %s: %s, %s, idle unload %s\n", m->name, mdir, m->preload ? "preload" : "on first use",
                       m->idle_unload_s ? "on" : "off");
            free(mdir);
        }
        if (cfg->models_memory)
            printf("  models     at most %zu MiB loaded at once\n", cfg->models_memory >> 20);
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
static void reload(int argc, char **argv, struct http_app *app, const struct inferd_config *running)
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
    char **keys = strv_dup(nc.api_keys, nc.n_api_keys);
    char **origins = strv_dup(nc.cors_origins, nc.n_cors_origins);
    if (origins)
        http_app_set_cors(app, origins, nc.n_cors_origins);
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
    models_set_queue_depth(app->models, nc.queue_depth);
    if (!inferd_config_models_equal(running, &nc))
        log_notice("Reload: [model.NAME] sections and models_memory apply after a restart");
    log_level_set(nc.log_level);
    log_notice("Reloaded configuration: %d API keys, %d CORS origins, body limit %zu, queue depth %d, log level %s",
               nc.n_api_keys, nc.n_cors_origins, nc.max_body_bytes, nc.queue_depth, log_level_name(nc.log_level));
    inferd_config_finish(&nc);
    sdn_reloading(false);
}

/* Graceful shutdown: stop taking requests, let running streams finish
 * within the drain timeout, then end the rest with an error. */
static void drain(struct http_app *app, struct http_server *http, int timeout_s)
{
    atomic_store(&app->draining, true);
    sdn_stopping("Draining requests");
    http_server_quiesce(http);
    models_shutdown_begin(app->models);
    models_drain_begin(app->models);
    double deadline = ifd_now_s() + timeout_s;
    int busy;
    while ((busy = models_busy(app->models)) > 0 && ifd_now_s() < deadline) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (busy > 0) {
        log_warn("Drain timeout (%ds): ending %d running requests", timeout_s, busy);
        models_abort_running(app->models, "the server is shutting down");
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
    struct http_server *http = NULL;
    struct loader ld = {0};
    bool loader_started = false;
    int rc = 1;
    pthread_rwlock_init(&app.lock, NULL);
    app.t_start = ifd_now_s();
    app.created = (int64_t)time(NULL);
    char *name = served_name(&cfg);
    app.model_name = name ? name : "model";
    /* Until the model is loaded: what was asked for (auto resolves at load). */
    app.backend_name = cfg.backend == INFERD_BACKEND_VULKAN ? "vulkan" : cfg.backend == INFERD_BACKEND_CPU ? "cpu" : "auto";
    if (models_create(&cfg, app.model_name, &app.models, &err) < 0) {
        log_err("%s", err.msg);
        goto out;
    }
    char **keys = strv_dup(cfg.api_keys, cfg.n_api_keys);
    char **origins = strv_dup(cfg.cors_origins, cfg.n_cors_origins);
    if (!keys || !origins) {
        free(keys);
        free(origins);
        log_err("out of memory");
        goto out;
    }
    http_app_set_cors(&app, origins, cfg.n_cors_origins);
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

    ld.models = app.models;
    if (pthread_create(&ld.thread, NULL, loader_main, &ld) != 0) {
        log_err("cannot start the loader thread");
        goto out;
    }
    loader_started = true;
    bool loaded = false;  /* the default model; the loader goes on with the preload models */
    uint64_t wd = sdn_watchdog_usec();
    bool stopping = false;
    for (;;) {
        if (!loaded && atomic_load(&ld.state) != 0) {
            loaded = true;
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
        /* The watchdog says "alive" only if the scheduler loops are. */
        if (wd > 0 && (!loaded || models_alive(app.models, (double)wd / 1e6)))
            sdn_watchdog_ping();
        if (loaded)
            models_tick(app.models);
        if (sig == SIGHUP) {
            reload(argc, argv, &app, &cfg);
        } else if (sig == SIGTERM || sig == SIGINT) {
            log_notice("Received %s, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            if (!loaded) {
                /* Still loading: nothing to drain; leave without waiting for it. */
                atomic_store(&app.draining, true);
                sdn_stopping("Stopping during model load");
                http_server_stop(http);
                _exit(0);
            }
            stopping = true;
        }
    }
    drain(&app, http, cfg.drain_timeout_s);
    rc = 0;
out:
    http_server_stop(http);
    if (loader_started) {
        /* A preload still running finishes its model (drain stopped the rest). */
        models_shutdown_begin(app.models);
        pthread_join(ld.thread, NULL);
    }
    models_destroy(app.models);
    http_app_set_limits(&app, NULL, 0, NULL);
    http_app_set_cors(&app, NULL, 0);
    pthread_rwlock_destroy(&app.lock);
    free(name);
    inferd_config_finish(&cfg);
    log_info("inferd stopped");
    return rc;
}
