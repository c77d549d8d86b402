/* http.h - the HTTP front end (libmicrohttpd, one thread per connection,
 * poll() so descriptors above FD_SETSIZE work).
 *
 * Routes the OpenAI-compatible API, /health, /metrics, /v1/status,
 * /tokenize and /detokenize. The server starts serving before the default
 * model has loaded (so /health answers 503 "loading"); main.c sets `ready`
 * once it has. Each request takes the model it names from the table in
 * models.h for as long as it runs.
 *
 * What a client can hold is bounded (docs/security.md): open connections
 * (global and per address; when full, the connection that has waited longest
 * without completing its request is closed to make room), the time to send
 * one request (a deadline that trickled bytes do not extend), the memory of
 * the bodies parsed and tokenized at once, and the /tokenize text. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "text/template/chat_template.h"
#include "base/error.h"
#include "text/tokenizer/tokenizer.h"

/* Bodies cost about this many bytes of cJSON and tokenizer memory per body
 * byte while they are parsed (measured: 4 MiB of token ids, 155 MB). */
#define HTTP_PARSE_COST_PER_BYTE 40
/* A request answered before its body arrived (413, 401 ...) is drained
 * before the close, as nginx's lingering close does, so a client that writes
 * its whole body first reads the answer instead of a reset: at most this many
 * bytes, for at most this long. */
#define HTTP_LINGER_BYTES ((size_t)64 << 20)
#define HTTP_LINGER_SECONDS 5

/* Limits from [server]. The first three apply again on SIGHUP; the rest are
 * read when the server starts. */
struct http_limits {
    size_t max_body_bytes;       /* larger bodies: 413 */
    size_t max_tokenize_bytes;   /* longer /tokenize text: 413 */
    int request_timeout_s;       /* to send headers and body, from connect or the previous response */
    int max_connections;         /* open at once */
    int max_connections_per_ip;  /* per address (IPv6: per /64); 0 = unlimited */
    size_t parse_memory;         /* HTTP_PARSE_COST_PER_BYTE x body bytes being parsed, at most */
};

struct models;

struct http_app {
    /* Fixed before the server starts. */
    const char *model_name;      /* the default model's "model" id */
    const char *backend_name;    /* as configured, until the default model has loaded */
    double t_start;              /* monotonic seconds at start */
    int64_t created;             /* unix seconds at start */
    struct models *models;       /* what requests run on (models.h) */

    atomic_bool ready;           /* the default model loaded, its scheduler running */
    atomic_bool draining;        /* SIGTERM received */

    /* Reloadable on SIGHUP, under lock. */
    pthread_rwlock_t lock;
    char **api_keys;             /* [n_api_keys], owned */
    int n_api_keys;
    char **cors_origins;         /* [n_cors_origins], owned; "*" = any */
    int n_cors_origins;
    struct http_limits limits;
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

/* Replaces the API keys and limits (takes ownership of keys); call before
 * http_server_start, and again on reload. lim NULL: keys only. */
void http_app_set_limits(struct http_app *app, char **keys, int n_keys, const struct http_limits *lim);
/* Replaces the browser origins allowed by CORS (takes ownership; n 0: none,
 * browsers on other origins are refused as without CORS). */
void http_app_set_cors(struct http_app *app, char **origins, int n);
