/* http.h - the HTTP front end (libmicrohttpd, one thread per connection).
 *
 * Routes the OpenAI-compatible API, /health, /metrics, /v1/status,
 * /tokenize and /detokenize. The server starts serving before the model has
 * loaded (so /health answers 503 "loading"); main.c fills the model fields of
 * http_app and then sets `ready`. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "text/template/chat_template.h"
#include "base/error.h"
#include "text/tokenizer/tokenizer.h"

struct sched;
struct metrics;
struct cluster;

struct http_app {
    /* Fixed before the server starts. */
    const char *model_name;      /* served "model" id */
    const char *backend_name;    /* "cpu", "vulkan" */
    double t_start;              /* monotonic seconds at start */
    int64_t created;             /* unix seconds at start */

    /* Filled by main.c while loading, read only after ready is set. */
    const tokenizer *tok;
    const chat_template *tmpl;
    const char *bos_token, *eos_token; /* for templates; may be NULL */
    int n_ctx;
    int n_vocab;
    int n_layers;
    int n_seq_max;
    struct sched *sched;
    struct metrics *metrics;
    const char *model_dir;
    struct cluster *cluster;     /* the workers (daemon/cluster.h), NULL on a single node */

    atomic_bool ready;           /* model loaded, scheduler running */
    atomic_bool draining;        /* SIGTERM received */

    /* Reloadable on SIGHUP, under lock. */
    pthread_rwlock_t lock;
    char **api_keys;             /* [n_api_keys], owned */
    int n_api_keys;
    size_t max_body_bytes;
};

struct http_server;

/* Opens a listening TCP socket on "host:port". */
int http_listen(const char *hostport, int *ret_fd, ifd_error *err);

/* Serves on listen_fd (taken over) with app (must outlive the server). */
int http_server_start(struct http_app *app, int listen_fd, struct http_server **ret, ifd_error *err);
/* Stops accepting new connections; running ones continue. */
void http_server_quiesce(struct http_server *h);
/* Connections still open. */
unsigned http_server_connections(struct http_server *h);
void http_server_stop(struct http_server *h); /* accepts NULL */

/* Replaces the API keys and body limit (takes ownership of keys). */
void http_app_set_limits(struct http_app *app, char **keys, int n_keys, size_t max_body_bytes);
