/* http.c - see http.h.
 *
 * libmicrohttpd runs one thread per connection, so a handler may block
 * waiting for its sequence's tokens without holding up anyone else. While it
 * waits it polls its socket: a client that hangs up cancels its sequence at
 * once, freeing the slot and its KV cache. Streaming responses are MHD
 * callback responses that produce one SSE event at a time.
 *
 * Thread per connection stays (rather than MHD's epoll thread pool with
 * suspend/resume) because generation handlers block on the scheduler by
 * design; what an idle connection costs (a thread, a few KiB) is bounded by
 * the connection limits and the request deadline below instead. MHD polls
 * with poll(), not select(), so descriptors above FD_SETSIZE are served.
 *
 * Every connection has a slot in http_server's list (MHD's
 * NOTIFY_CONNECTION): the accept policy counts slots for the limits, the
 * reaper thread closes those that have not delivered their request by the
 * deadline (shutdown(), which wakes the connection's thread with EOF), and
 * the completion callback, on the connection's own thread, drains a
 * connection answered before its body came. */
#include "http.h"

#include <errno.h>
#include <malloc.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "cluster.h"
#include "inferd-build-config.h"
#include "log.h"
#include "metrics.h"
#include "models.h"
#include "text/grammar/grammar.h"
#include "scheduler.h"
#include "base/clock.h"

#if MHD_VERSION < 0x00097002
typedef int MHD_RESULT;
#else
typedef enum MHD_Result MHD_RESULT;
#endif

/* One open connection. fd and the address are fixed once the slot is
 * listed, the rest is guarded by http_server.lock; fd stays valid while the
 * slot is listed (MHD closes it only after the CLOSED notification, which
 * unlists the slot first). */
struct slot {
    struct slot *prev, *next;
    int fd;
    unsigned char addr[16];     /* the address, IPv6 cut to its /64 */
    unsigned addr_len;          /* 4 or 8; 0 = unknown family (not limited) */
    double read_since;          /* when this request's bytes began to be due */
    bool reading;               /* the request is not complete yet */
    bool shut;                  /* shut down by us (deadline or room); closing */
    bool linger;                /* answered before its body came: drain before the close */
};

/* Parses that cost more than this hand their memory back to the system
 * when done (see parse_release). */
#define HTTP_PARSE_TRIM_COST ((size_t)32 << 20)

struct http_server {
    struct MHD_Daemon *d;
    struct http_app *app;
    int max_conn, max_per_ip;

    pthread_mutex_t lock;       /* the slot list and the counters */
    pthread_cond_t wake;        /* the reaper's sleep; signalled to stop */
    struct slot *head, *tail;   /* accept order */
    int n_open, n_shut;
    bool stopping;
    pthread_t reaper;
    bool reaper_started;
    /* Totals for /metrics, and what the reaper has logged of them. */
    uint64_t refused_per_ip, refused_full, evicted, timed_out;
    uint64_t logged_refused, logged_evicted, logged_timed_out;

    /* Parse budget: bytes of HTTP_PARSE_COST_PER_BYTE-weighted bodies being
     * parsed or tokenized now. */
    pthread_mutex_t parse_lock;
    pthread_cond_t parse_cond;
    size_t parse_budget, parse_used;
    uint64_t parse_refused;
};

enum route {
    ROUTE_NONE = 0,
    ROUTE_HEALTH,
    ROUTE_METRICS,
    ROUTE_MODELS,
    ROUTE_MODEL_ONE,
    ROUTE_STATUS,
    ROUTE_CHAT,
    ROUTE_COMPLETIONS,
    ROUTE_TOKENIZE,
    ROUTE_DETOKENIZE,
    ROUTE_EMBEDDINGS,
};

static const struct {
    const char *path;
    enum route route;
    const char *method;   /* the one method allowed */
    bool auth;            /* needs an API key when keys are configured */
} routes[] = {
    {"/health", ROUTE_HEALTH, "GET", false},
    {"/metrics", ROUTE_METRICS, "GET", false},
    {"/v1/models", ROUTE_MODELS, "GET", true},
    {"/v1/status", ROUTE_STATUS, "GET", true},
    {"/v1/chat/completions", ROUTE_CHAT, "POST", true},
    {"/v1/completions", ROUTE_COMPLETIONS, "POST", true},
    {"/tokenize", ROUTE_TOKENIZE, "POST", true},
    {"/detokenize", ROUTE_DETOKENIZE, "POST", true},
    {"/v1/embeddings", ROUTE_EMBEDDINGS, "POST", true},
};

enum stream_phase {
    PHASE_ROLE = 0,   /* chat: the first chunk carries the role */
    PHASE_CONTENT,
    PHASE_FINISHED,   /* everything handed to MHD */
};

/* One choice of a generation request: its own sequence in the scheduler. */
struct conn_choice {
    struct sched_req *req;
    struct sched_output out;
    size_t out_sent;            /* bytes of out.text already in a chunk */
    int lp_sent;
    struct api_chunk_pos pos;   /* streaming: choice index, text_offset so far */
    bool finished;              /* streaming: its finish_reason chunk is out */
    struct tools_stream *ts;    /* streaming a chat with tools or reasoning: its reply parser */
};

/* One request on one connection. */
struct conn {
    struct http_server *srv;
    struct http_app *app;
    struct slot *slot;          /* this connection's, NULL if MHD has none */
    char method[8];
    char *path;
    enum route route;
    int fd;                     /* the client socket, for hang-up checks */
    double t0;
    char *body;                 /* [len], NUL-terminated */
    size_t len, cap;
    bool too_big;
    size_t expect;              /* Content-Length, 0 when none */
    size_t parse_cost;          /* held from srv's parse budget */
    int status;
    int tokens_in, tokens_out;
    int tokens_cached;          /* of tokens_in, kept from a slot's cache (the first choice's) */

    char *cors_origin;          /* the request's Origin when cors_origins allows it, else NULL */
    char *cors_preflight_headers; /* an allowed preflight's Access-Control-Request-Headers */

    /* The model the request runs on, held until it completes (models.h). */
    const struct served_model *model;

    /* Generation: one sequence per choice ("n"). */
    struct conn_choice *ch;     /* [n_ch] */
    int n_ch;
    enum stream_phase phase;
    struct api_response_meta meta;
    char id[64];
    bool include_usage, want_logprobs;
    char *buf;                  /* SSE bytes ready for MHD */
    size_t buf_len, buf_off;
    /* Chat with tools or reasoning: how the text is read (tools.h). */
    bool tools_on;
    struct tools_output_cfg tools_cfg;
    tools_stream *ts;           /* streaming only */
};

static double now_mono(void)
{
    return ifd_now_s();
}

static struct http_limits app_limits(struct http_app *app)
{
    pthread_rwlock_rdlock(&app->lock);
    struct http_limits l = app->limits;
    pthread_rwlock_unlock(&app->lock);
    return l;
}

/* ---- connection slots ---- */

/* The key the per-address limit counts by: IPv4 address, IPv6 /64 (one
 * host gets a whole /64, so counting single v6 addresses limits nothing). */
static unsigned addr_key(const struct sockaddr *sa, unsigned char out[16])
{
    if (sa && sa->sa_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 4;
    }
    if (sa && sa->sa_family == AF_INET6) {
        const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, v4mapped, 12) == 0) {
            memcpy(out, a + 12, 4);
            return 4;
        }
        memcpy(out, a, 8);
        return 8;
    }
    return 0;
}

/* Closes a listed connection from outside its thread: shutdown() makes its
 * next read see EOF, and MHD closes it. Called with the lock held. */
static void slot_shut(struct http_server *h, struct slot *sl)
{
    sl->shut = true;
    h->n_shut++;
    shutdown(sl->fd, SHUT_RDWR);
}

/* MHD's accept policy: refuse an address at its limit; when the server is
 * full, close the connection that has waited longest without delivering a
 * request (as sshd's MaxStartups drops unauthenticated ones), so that idle
 * sockets cannot lock out a client that sends its request. */
static MHD_RESULT on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    struct http_server *h = cls;
    unsigned char key[16];
    unsigned klen = addrlen > 0 ? addr_key(addr, key) : 0;
    MHD_RESULT ok = MHD_YES;
    pthread_mutex_lock(&h->lock);
    if (h->max_per_ip > 0 && klen > 0) {
        int same = 0;
        for (struct slot *sl = h->head; sl; sl = sl->next)
            same += !sl->shut && sl->addr_len == klen && memcmp(sl->addr, key, klen) == 0;
        if (same >= h->max_per_ip) {
            h->refused_per_ip++;
            ok = MHD_NO;
        }
    }
    if (ok == MHD_YES && h->n_open - h->n_shut >= h->max_conn) {
        struct slot *oldest = NULL;
        for (struct slot *sl = h->head; sl; sl = sl->next)
            if (sl->reading && !sl->shut && (!oldest || sl->read_since < oldest->read_since))
                oldest = sl;
        if (oldest) {
            slot_shut(h, oldest);
            h->evicted++;
        } else {
            h->refused_full++;
            ok = MHD_NO;
        }
    }
    pthread_mutex_unlock(&h->lock);
    return ok;
}

/* Bytes discarded before closing a connection answered early (see
 * HTTP_LINGER_BYTES). Called from on_completed, which MHD runs on the
 * connection's own thread once the answer is sent and before the socket is
 * closed, so waiting here holds up no one else. (Not from the close
 * notification: MHD sends that from its one polling thread, the thread that
 * also accepts, so a drain there stopped every new connection for 5 s.) */
static void linger_drain(int fd)
{
    shutdown(fd, SHUT_WR);
    double deadline = now_mono() + HTTP_LINGER_SECONDS;
    size_t total = 0;
    char buf[16384];
    while (total < HTTP_LINGER_BYTES) {
        int ms = (int)((deadline - now_mono()) * 1000.0);
        if (ms <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            break;
        total += (size_t)n;
    }
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct http_server *h = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        struct slot *sl = calloc(1, sizeof(*sl));
        if (!sl)
            return;  /* unlisted: not counted, which only loosens the limits */
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        sl->fd = ci ? ci->connect_fd : -1;
        ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        sl->addr_len = ci ? addr_key(ci->client_addr, sl->addr) : 0;
        sl->read_since = now_mono();
        sl->reading = true;
        if (sl->fd < 0) {
            free(sl);
            return;
        }
        pthread_mutex_lock(&h->lock);
        sl->prev = h->tail;
        if (h->tail)
            h->tail->next = sl;
        else
            h->head = sl;
        h->tail = sl;
        h->n_open++;
        pthread_mutex_unlock(&h->lock);
        *socket_context = sl;
        return;
    }
    struct slot *sl = *socket_context;
    if (!sl)
        return;
    *socket_context = NULL;
    pthread_mutex_lock(&h->lock);
    if (sl->prev)
        sl->prev->next = sl->next;
    else
        h->head = sl->next;
    if (sl->next)
        sl->next->prev = sl->prev;
    else
        h->tail = sl->prev;
    h->n_open--;
    if (sl->shut)
        h->n_shut--;
    pthread_mutex_unlock(&h->lock);
    free(sl);
}

static void slot_set_reading(struct http_server *h, struct slot *sl, bool reading)
{
    if (!sl)
        return;
    pthread_mutex_lock(&h->lock);
    sl->reading = reading;
    if (reading)
        sl->read_since = now_mono();
    pthread_mutex_unlock(&h->lock);
}

/* Closes connections past the request deadline, and says in the log what
 * the limits turned away (one line per interval, not one per connection: a
 * flood must not become a flood of log lines). */
static void *reaper_main(void *arg)
{
    struct http_server *h = arg;
    double next_log = now_mono() + 10;
    pthread_mutex_lock(&h->lock);
    while (!h->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->wake, &h->lock, &ts);
        if (h->stopping)
            break;
        double now = now_mono();
        /* The timeout may change on reload. */
        pthread_mutex_unlock(&h->lock);
        double timeout = app_limits(h->app).request_timeout_s;
        pthread_mutex_lock(&h->lock);
        for (struct slot *sl = h->head; sl; sl = sl->next)
            if (sl->reading && !sl->shut && now - sl->read_since > timeout) {
                slot_shut(h, sl);
                h->timed_out++;
            }
        if (now >= next_log) {
            uint64_t refused = h->refused_per_ip + h->refused_full;
            unsigned long long d_refused = refused - h->logged_refused, d_evicted = h->evicted - h->logged_evicted,
                               d_timed_out = h->timed_out - h->logged_timed_out;
            int n_open = h->n_open;
            h->logged_refused = refused;
            h->logged_evicted = h->evicted;
            h->logged_timed_out = h->timed_out;
            next_log = now + 60;
            /* Logged without the lock: a blocked log pipe must not stall
             * the accept policy and every connection with it. */
            if (d_refused || d_evicted || d_timed_out) {
                pthread_mutex_unlock(&h->lock);
                log_warn("HTTP: %llu connections refused over the limits (max_connections %d, per address %d), "
                         "%llu closed to make room, %llu closed at the request deadline (%.0fs), since the last "
                         "report; %d open",
                         d_refused, h->max_conn, h->max_per_ip, d_evicted, d_timed_out, timeout, n_open);
                pthread_mutex_lock(&h->lock);
            }
        }
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

/* ---- parse budget ---- */

/* Waits until the body's parse cost fits the budget (a body too large for
 * the whole budget waits for all of it), at most until `deadline`. */
static int parse_acquire(struct http_server *h, struct conn *k, double deadline)
{
    size_t cost = k->len > h->parse_budget / HTTP_PARSE_COST_PER_BYTE ? h->parse_budget
                                                                       : k->len * HTTP_PARSE_COST_PER_BYTE;
    if (cost == 0)
        cost = 1;
    int r = 0;
    pthread_mutex_lock(&h->parse_lock);
    while (h->parse_used + cost > h->parse_budget) {
        double left = deadline - now_mono();
        if (left <= 0) {
            h->parse_refused++;
            r = -ETIMEDOUT;
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double wait = left < 0.5 ? left : 0.5;
        ts.tv_sec += (time_t)wait;
        ts.tv_nsec += (long)((wait - (double)(time_t)wait) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->parse_cond, &h->parse_lock, &ts);
    }
    if (r == 0) {
        h->parse_used += cost;
        k->parse_cost = cost;
    }
    pthread_mutex_unlock(&h->parse_lock);
    return r;
}

/* Gives the budget back; safe to call twice. */
static void parse_release(struct conn *k)
{
    struct http_server *h = k->srv;
    if (!k->parse_cost)
        return;
#ifdef __GLIBC__
    /* glibc keeps freed memory in the arena of the thread that freed it,
     * and every connection has its own thread: without a trim each of them
     * would keep the ~40x its largest body cost, and the budget would bound
     * nothing (measured: 8 bodies of 4 MiB, one at a time, 1.3 GB RSS). */
    if (k->parse_cost >= HTTP_PARSE_TRIM_COST)
        malloc_trim(0);
#endif
    pthread_mutex_lock(&h->parse_lock);
    h->parse_used -= k->parse_cost;
    pthread_cond_broadcast(&h->parse_cond);
    pthread_mutex_unlock(&h->parse_lock);
    k->parse_cost = 0;
}

/* ---- responses ---- */

/* CORS: an allowed origin may read the answer (and, for a preflight, send
 * the request it announced). The origin is echoed rather than "*", so the
 * answer is the same whether or not the browser sends credentials. */
static void add_cors_headers(struct MHD_Response *r, const struct conn *k)
{
    if (!k->cors_origin)
        return;
    MHD_add_response_header(r, "Access-Control-Allow-Origin", k->cors_origin);
    MHD_add_response_header(r, "Vary", "Origin");
    if (k->cors_preflight_headers) {
        for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
            if (routes[i].route == k->route)
                MHD_add_response_header(r, "Access-Control-Allow-Methods", routes[i].method);
        if (k->route == ROUTE_MODEL_ONE)
            MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET");
        if (*k->cors_preflight_headers)
            MHD_add_response_header(r, "Access-Control-Allow-Headers", k->cors_preflight_headers);
        MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    } else {
        MHD_add_response_header(r, "Access-Control-Expose-Headers", "Retry-After");
    }
}

static MHD_RESULT respond(struct MHD_Connection *c, struct conn *k, int status, const char *ctype, char *body,
                          size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    if (status == 405) {
        for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
            if (routes[i].route == k->route)
                MHD_add_response_header(r, "Allow", routes[i].method);
    }
    if (status == 401)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    if (status == 503 || status == 429)
        MHD_add_response_header(r, "Retry-After", "1");
    add_cors_headers(r, k);
    k->status = status;
    MHD_RESULT ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static MHD_RESULT respond_json(struct MHD_Connection *c, struct conn *k, int status, char *json)
{
    if (!json)
        return MHD_NO;
    return respond(c, k, status, "application/json", json, strlen(json));
}

static MHD_RESULT respond_error(struct MHD_Connection *c, struct conn *k, const struct api_error *e)
{
    return respond_json(c, k, e->status, api_error_json(e));
}

static MHD_RESULT respond_errorf(struct MHD_Connection *c, struct conn *k, int status, const char *type,
                                 const char *param, const char *code, const char *msg)
{
    struct api_error e;
    api_error_set(&e, status, type, param, code, "%s", msg);
    return respond_error(c, k, &e);
}

/* ---- model state ---- */

static bool app_ready(struct http_app *app)
{
    return atomic_load_explicit(&app->ready, memory_order_acquire);
}

/* The code of a 503 that ended a request: the server draining, or else a
 * worker of the cluster that is down or did not answer. */
static const char *unavailable_code(const struct conn *k)
{
    return atomic_load(&k->app->draining) ? "shutting_down" : "worker_unavailable";
}

static MHD_RESULT not_ready(struct MHD_Connection *c, struct conn *k)
{
    if (atomic_load(&k->app->draining))
        return respond_errorf(c, k, 503, "service_unavailable", NULL, "shutting_down", "the server is shutting down");
    return respond_errorf(c, k, 503, "service_unavailable", NULL, "model_loading", "the model is still loading");
}

static bool client_gone(int fd)
{
    if (fd < 0)
        return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
        return true;
    if (p.revents & POLLIN) {
        /* Readable with nothing pipelined means EOF. */
        char b;
        ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        return n == 0;
    }
    return false;
}

/* ---- simple GET endpoints ---- */

static MHD_RESULT handle_health(struct MHD_Connection *c, struct conn *k)
{
    if (atomic_load(&k->app->draining))
        return respond_json(c, k, 503, strdup("{\"status\":\"stopping\"}"));
    if (!app_ready(k->app))
        return respond_json(c, k, 503, strdup("{\"status\":\"loading\"}"));
    char what[512];
    const struct served_model *dm = models_default(k->app->models);
    int down = dm && dm->cluster ? cluster_count_unready(dm->cluster, what, sizeof(what)) : 0;
    if (down > 0) {
        /* Generations get 503 while a worker is missing: say so here too, so
         * a load balancer stops sending requests until it is back. */
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", "degraded");
        cJSON_AddNumberToObject(o, "workers_not_ready", down);
        cJSON_AddStringToObject(o, "detail", what);
        char *body = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        return respond_json(c, k, 503, body);
    }
    if (models_count(k->app->models) == 1)
        return respond_json(c, k, 200, strdup("{\"status\":\"ok\"}"));
    /* Several models: each one's state, so an operator sees what is loaded. */
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    cJSON *ms = cJSON_AddObjectToObject(o, "models");
    for (int i = 0; i < models_count(k->app->models); i++) {
        struct model_info mi;
        if (models_info(k->app->models, i, &mi) == 0)
            cJSON_AddStringToObject(ms, mi.name, model_state_name(mi.state));
    }
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return respond_json(c, k, 200, body);
}

static MHD_RESULT handle_metrics(struct MHD_Connection *c, struct conn *k)
{
    const struct served_model *dm = models_default(k->app->models);
    if (!app_ready(k->app) || !dm) {
        char *s = strdup("# inferd: model loading\ninferd_ready 0\n");
        return respond(c, k, 200, "text/plain; version=0.0.4; charset=utf-8", s, s ? strlen(s) : 0);
    }
    char *text;
    size_t len;
    if (metrics_render(dm->metrics, &text, &len) < 0)
        return respond_errorf(c, k, 500, "server_error", NULL, NULL, "out of memory");
    struct http_server *h = k->srv;
    pthread_mutex_lock(&h->lock);
    int open_now = h->n_open;
    unsigned long long per_ip = h->refused_per_ip, full_ = h->refused_full, evicted = h->evicted,
                       timed_out = h->timed_out;
    pthread_mutex_unlock(&h->lock);
    pthread_mutex_lock(&h->parse_lock);
    unsigned long long parse_refused = h->parse_refused;
    pthread_mutex_unlock(&h->parse_lock);
    char *per_model = models_metrics_text(k->app->models);
    char *full = NULL;
    int n = asprintf(&full, "# HELP inferd_ready 1 when the model is loaded.\n# TYPE inferd_ready gauge\n"
                            "inferd_ready 1\n%s%s"
                            "# HELP inferd_http_connections Open HTTP connections.\n"
                            "# TYPE inferd_http_connections gauge\n"
                            "inferd_http_connections %d\n"
                            "# HELP inferd_http_connections_refused_total Connections refused at accept by the limits.\n"
                            "# TYPE inferd_http_connections_refused_total counter\n"
                            "inferd_http_connections_refused_total{reason=\"per_ip\"} %llu\n"
                            "inferd_http_connections_refused_total{reason=\"full\"} %llu\n"
                            "# HELP inferd_http_connections_closed_total Connections closed by the server before their request was in.\n"
                            "# TYPE inferd_http_connections_closed_total counter\n"
                            "inferd_http_connections_closed_total{reason=\"request_timeout\"} %llu\n"
                            "inferd_http_connections_closed_total{reason=\"evicted\"} %llu\n"
                            "# HELP inferd_http_parse_refused_total Requests answered 503 for want of parse memory.\n"
                            "# TYPE inferd_http_parse_refused_total counter\n"
                            "inferd_http_parse_refused_total %llu\n",
                     text, per_model ? per_model : "", open_now, per_ip, full_, timed_out, evicted, parse_refused);
    free(text);
    free(per_model);
    if (n < 0)
        return MHD_NO;
    return respond(c, k, 200, "text/plain; version=0.0.4; charset=utf-8", full, (size_t)n);
}

static cJSON *model_object(struct http_app *app, const struct model_info *mi)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", mi->name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)app->created);
    cJSON_AddStringToObject(m, "owned_by", "inferd");
    /* Not OpenAI's: whether a request would have to wait for a load. */
    cJSON_AddStringToObject(m, "state", model_state_name(mi->state));
    if (mi->n_ctx > 0)
        cJSON_AddNumberToObject(m, "context_length", mi->n_ctx);
    return m;
}

static MHD_RESULT handle_models(struct MHD_Connection *c, struct conn *k, const char *one)
{
    struct http_app *app = k->app;
    cJSON *root = NULL, *data = NULL;
    if (!one) {
        root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "object", "list");
        data = cJSON_AddArrayToObject(root, "data");
    }
    for (int i = 0; i < models_count(app->models); i++) {
        struct model_info mi;
        if (models_info(app->models, i, &mi) < 0)
            continue;
        if (!one) {
            cJSON_AddItemToArray(data, model_object(app, &mi));
        } else if (strcmp(one, mi.name) == 0) {
            root = model_object(app, &mi);
            break;
        }
    }
    if (!root) {
        char msg[300];
        snprintf(msg, sizeof(msg), "The model '%.200s' does not exist", one);
        return respond_errorf(c, k, 404, "invalid_request_error", "model", "model_not_found", msg);
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return respond_json(c, k, 200, s);
}

static MHD_RESULT handle_status(struct MHD_Connection *c, struct conn *k)
{
    struct http_app *app = k->app;
    const struct served_model *dm = models_default(app->models);
    bool ready = app_ready(app) && dm;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", app->model_name);
    cJSON_AddStringToObject(root, "backend", dm ? dm->backend_name : app->backend_name);
    cJSON_AddStringToObject(root, "version", INFERD_VERSION);
    cJSON_AddNumberToObject(root, "uptime_s", now_mono() - app->t_start);
    cJSON_AddBoolToObject(root, "ready", ready);
    cJSON_AddStringToObject(root, "state", atomic_load(&app->draining) ? "stopping" : ready ? "ready" : "loading");
    if (ready) {
        struct metrics_snapshot s;
        metrics_snapshot_get(dm->metrics, &s);
        int queued = 0, running = 0;
        sched_counts(dm->sched, &queued, &running);
        cJSON_AddStringToObject(root, "model_dir", dm->model_dir ? dm->model_dir : "");
        cJSON_AddNumberToObject(root, "context_length", dm->n_ctx);
        cJSON_AddNumberToObject(root, "max_sequences", dm->n_seq_max);
        cJSON_AddNumberToObject(root, "micro_batches", dm->micro_batches);
        cJSON_AddNumberToObject(root, "n_layers", dm->n_layers);
        cJSON *rq = cJSON_AddObjectToObject(root, "requests");
        cJSON_AddNumberToObject(rq, "in_flight", running);
        cJSON_AddNumberToObject(rq, "queued", queued);
        cJSON_AddNumberToObject(rq, "total", (double)s.requests_total);
        cJSON *tk = cJSON_AddObjectToObject(root, "tokens");
        cJSON_AddNumberToObject(tk, "prompt_total", (double)s.prompt_tokens_total);
        cJSON_AddNumberToObject(tk, "prompt_cached_total", (double)s.prompt_tokens_cached_total);
        cJSON_AddNumberToObject(tk, "completion_total", (double)s.completion_tokens_total);
        cJSON *tp = cJSON_AddObjectToObject(root, "throughput");
        cJSON_AddNumberToObject(tp, "prefill_tokens_per_s", s.prefill_tps);
        cJSON_AddNumberToObject(tp, "decode_tokens_per_s", s.decode_tps);
        cJSON_AddNumberToObject(root, "ttft_avg_s", s.ttft_avg_s);
        cJSON *kv = cJSON_AddObjectToObject(root, "kv_cache");
        cJSON_AddNumberToObject(kv, "used_positions", (double)s.kv_used);
        cJSON_AddNumberToObject(kv, "capacity_positions", (double)s.kv_capacity);
        cJSON *fo = cJSON_AddObjectToObject(root, "failover");
        cJSON_AddNumberToObject(fo, "count", (double)s.failovers);
        cJSON_AddNumberToObject(fo, "replayed_tokens", (double)s.replayed_tokens);
        if (s.last_failover.worker[0]) {
            cJSON *lf = cJSON_AddObjectToObject(fo, "last");
            char layers[32];
            snprintf(layers, sizeof(layers), "%d-%d", s.last_failover.layer_first, s.last_failover.layer_last - 1);
            cJSON_AddStringToObject(lf, "worker", s.last_failover.worker);
            cJSON_AddStringToObject(lf, "layers", layers);
            cJSON_AddStringToObject(lf, "to", s.last_failover.to);
        }
        cJSON *stages = cJSON_AddArrayToObject(root, "stages");
        cJSON *layers = cJSON_AddArrayToObject(root, "layers");
        for (int i = 0; i < metrics_stage_count(dm->metrics); i++) {
            struct metrics_stage st;
            if (metrics_stage_get(dm->metrics, i, &st) < 0)
                continue;
            cJSON *so = cJSON_CreateObject();
            cJSON_AddStringToObject(so, "backend", st.backend);
            cJSON_AddNumberToObject(so, "layer_first", st.layer_first);
            cJSON_AddNumberToObject(so, "layer_last", st.layer_last);
            cJSON_AddNumberToObject(so, "forward_calls", (double)st.forward_calls);
            cJSON_AddNumberToObject(so, "tokens", (double)st.tokens);
            cJSON_AddNumberToObject(so, "forward_ms_total", st.forward_ms);
            cJSON_AddItemToArray(stages, so);
            for (int l = st.layer_first; st.layer_ms && l < st.layer_last; l++) {
                cJSON *lo = cJSON_CreateObject();
                double tot = st.layer_ms[l - st.layer_first];
                cJSON_AddNumberToObject(lo, "layer", l);
                cJSON_AddStringToObject(lo, "backend", st.backend);
                cJSON_AddNumberToObject(lo, "ms_total", tot);
                cJSON_AddNumberToObject(lo, "ms_per_forward", st.forward_calls ? tot / (double)st.forward_calls : 0);
                cJSON_AddItemToArray(layers, lo);
            }
            free(st.layer_ms);
        }
    }
    if (dm && dm->cluster)
        cJSON_AddItemToObject(root, "workers", cluster_status_json(dm->cluster));
    else
        cJSON_AddArrayToObject(root, "workers");
    cJSON_AddItemToObject(root, "models", models_status_json(app->models));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return respond_json(c, k, 200, s);
}

/* ---- the model of a request ---- */

static bool conn_client_gone(void *ctx)
{
    return client_gone(((struct conn *)ctx)->fd);
}

/* Takes the model a request names (NULL: the default one) into k->model,
 * waiting while it loads. On failure fills e, except for -ECANCELED: the
 * client left and there is nobody to answer. */
static int take_model(struct conn *k, const char *name, struct api_error *e)
{
    ifd_error err = {{0}};
    int r = models_acquire(k->app->models, name, conn_client_gone, k, &k->model, &err);
    switch (r) {
    case 0:
    case -ECANCELED:
        break;
    case -ENOENT:
        api_error_set(e, 404, "invalid_request_error", "model", "model_not_found", "%s", err.msg);
        break;
    case -ENOSPC:
        api_error_set(e, 503, "service_unavailable", "model", "insufficient_memory", "%s", err.msg);
        break;
    case -ESHUTDOWN:
        api_error_set(e, 503, "service_unavailable", NULL, "shutting_down", "%s", err.msg);
        break;
    default:
        api_error_set(e, 503, "service_unavailable", "model", "model_load_failed", "%s", err.msg);
        break;
    }
    return r;
}

/* The answer to a failed take_model(). */
static MHD_RESULT respond_model_error(struct MHD_Connection *c, struct conn *k, int r, const struct api_error *e)
{
    if (r == -ECANCELED) {
        k->status = 499;
        return MHD_NO;
    }
    return respond_error(c, k, e);
}

/* ---- tokenize / detokenize ---- */

static MHD_RESULT handle_tokenize(struct MHD_Connection *c, struct conn *k)
{
    struct api_error e;
    char *text = NULL, *model = NULL;
    size_t tlen = 0;
    bool add_special = true;
    if (api_tokenize_parse(k->body, k->len, &text, &tlen, &add_special, &model, &e) < 0)
        return respond_error(c, k, &e);
    int r = take_model(k, model, &e);
    free(model);
    if (r < 0) {
        free(text);
        return respond_model_error(c, k, r, &e);
    }
    /* Tokenizing costs about 0.6 s of CPU per MiB: capped, unlike prompts,
     * which the context length bounds after the fact. */
    size_t cap = app_limits(k->app).max_tokenize_bytes;
    if (tlen > cap) {
        free(text);
        api_error_set(&e, 413, "invalid_request_error", "content", "request_too_large",
                      "text of %zu bytes is over the /tokenize limit of %zu bytes (max_tokenize_bytes)", tlen, cap);
        return respond_error(c, k, &e);
    }
    struct tok_ids ids = {0};
    ifd_error err = {{0}};
    r = tok_encode(k->model->tok, text, tlen, add_special, &ids, &err);
    free(text);
    if (r < 0) {
        tok_ids_finish(&ids);
        return respond_errorf(c, k, 400, "invalid_request_error", "content", NULL, err.msg);
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "tokens");
    for (size_t i = 0; i < ids.n; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids.ids[i]));
    cJSON_AddNumberToObject(root, "count", (double)ids.n);
    tok_ids_finish(&ids);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return respond_json(c, k, 200, s);
}

static MHD_RESULT handle_detokenize(struct MHD_Connection *c, struct conn *k)
{
    struct api_error e;
    int32_t *ids = NULL;
    size_t n = 0;
    char *model = NULL;
    if (api_detokenize_parse(k->body, k->len, 0, &ids, &n, &model, &e) < 0)
        return respond_error(c, k, &e);
    int r = take_model(k, model, &e);
    free(model);
    if (r < 0 || (r = api_check_token_ids(ids, n, k->model->n_vocab, "tokens", &e)) < 0) {
        free(ids);
        return respond_model_error(c, k, r, &e);
    }
    char *text = NULL;
    size_t len = 0;
    ifd_error err = {{0}};
    r = tok_decode(k->model->tok, ids, n, false, &text, &len, &err);
    free(ids);
    if (r < 0)
        return respond_errorf(c, k, 400, "invalid_request_error", "tokens", NULL, err.msg);
    cJSON *root = cJSON_CreateObject();
    /* A token sequence may end inside a UTF-8 character; JSON needs valid text. */
    size_t bad;
    if (!api_utf8_valid(text, len, &bad)) {
        char *fixed = NULL;
        if (asprintf(&fixed, "%.*s\xef\xbf\xbd", (int)bad, text) >= 0) {
            free(text);
            text = fixed;
        }
    }
    cJSON_AddStringToObject(root, "content", text ? text : "");
    free(text);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return respond_json(c, k, 200, s);
}

/* ---- embeddings ---- */

/* The ids of one input, tokenized as a completion's prompt (with the
 * tokenizer's special tokens) or as given, checked against the model. */
static int embed_input_ids(const struct served_model *m, const struct api_embed_input *in, int index,
                           struct tok_ids *ids, struct api_error *e)
{
    char param[32];
    snprintf(param, sizeof(param), "input[%d]", index);
    if (in->text) {
        ifd_error err = {{0}};
        if (tok_encode(m->tok, in->text, in->text_len, true, ids, &err) < 0) {
            api_error_set(e, 400, "invalid_request_error", param, NULL, "%s", err.msg);
            return -EINVAL;
        }
    } else {
        if (api_check_token_ids(in->ids, in->n_ids, m->n_vocab, param, e) < 0)
            return -EINVAL;
        ids->ids = malloc(sizeof(int32_t) * in->n_ids);
        if (!ids->ids) {
            api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
            return -ENOMEM;
        }
        memcpy(ids->ids, in->ids, sizeof(int32_t) * in->n_ids);
        ids->n = ids->cap = in->n_ids;
    }
    if (ids->n > (size_t)m->n_ctx) {
        api_error_set(e, 400, "invalid_request_error", param, "context_length_exceeded",
                      "input %d is %zu tokens; this model's context is %d", index, ids->n, m->n_ctx);
        return -EINVAL;
    }
    return 0;
}

/* Every input goes through the scheduler as a prefill-only sequence, at most
 * as many at once as there are sequence slots (so a batch of inputs never
 * fills the queue that other clients wait in); their vectors come back in
 * input order. */
static MHD_RESULT handle_embeddings(struct MHD_Connection *c, struct conn *k)
{
    struct api_embed_request rq;
    struct api_error e;
    if (api_embed_parse(k->body, k->len, &rq, &e) < 0)
        return respond_error(c, k, &e);
    MHD_RESULT ret;
    int r = take_model(k, rq.model, &e);
    if (r < 0) {
        ret = respond_model_error(c, k, r, &e);
        api_embed_request_finish(&rq);
        return ret;
    }
    const struct served_model *m = k->model;
    const int n = rq.n_inputs;
    float **vecs = calloc((size_t)n, sizeof(*vecs));
    struct sched_req **reqs = calloc((size_t)m->n_seq_max, sizeof(*reqs));
    int *owner = calloc((size_t)m->n_seq_max, sizeof(*owner));
    int prompt_tokens = 0;
    bool failed = !vecs || !reqs || !owner;
    if (failed)
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
    /* Tokenize everything first: a bad input is a 400 before any work. */
    struct tok_ids *ids = failed ? NULL : calloc((size_t)n, sizeof(*ids));
    if (!failed && !ids) {
        failed = true;
        api_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
    }
    for (int i = 0; !failed && i < n; i++) {
        if (embed_input_ids(m, &rq.inputs[i], i, &ids[i], &e) < 0)
            failed = true;
        else
            prompt_tokens += (int)ids[i].n;
    }
    parse_release(k);
    int next = 0, done = 0, in_flight = 0;
    while (!failed && done < n) {
        /* Fill the free window. */
        for (int w = 0; w < m->n_seq_max && next < n; w++) {
            if (reqs[w])
                continue;
            struct sched_req_params p = {.prompt = ids[next].ids, .n_prompt = ids[next].n, .max_tokens = 1,
                                         .sampling = sampler_params_default(), .embed = true,
                                         .pool_mean = m->pool_mean};
            ifd_error err = {{0}};
            int rs = sched_submit(m->sched, &p, &reqs[w], &err);
            if (rs < 0) {
                reqs[w] = NULL;
                failed = true;
                api_error_set(&e, rs == -EAGAIN ? 429 : rs == -ESHUTDOWN ? 503 : 500,
                              rs == -EAGAIN ? "rate_limit_error" : rs == -ESHUTDOWN ? "service_unavailable" : "server_error",
                              NULL, rs == -EAGAIN ? "queue_full" : rs == -ESHUTDOWN ? "shutting_down" : NULL, "%s", err.msg);
                break;
            }
            owner[w] = next++;
            in_flight++;
        }
        /* Collect whatever finished. */
        for (int w = 0; !failed && w < m->n_seq_max; w++) {
            if (!reqs[w])
                continue;
            struct sched_output out = {0};
            sched_req_collect(reqs[w], in_flight == 1 ? 100 : 0, &out);
            if (out.done) {
                if (out.error_status || !out.embedding) {
                    failed = true;
                    bool down = out.error_status == 503;
                    api_error_set(&e, out.error_status ? out.error_status : 500,
                                  down ? "service_unavailable" : "server_error", NULL, down ? unavailable_code(k) : NULL,
                                  "%s", out.error_msg);
                } else {
                    vecs[owner[w]] = out.embedding;
                    out.embedding = NULL;
                    done++;
                }
                sched_req_release(reqs[w]);
                reqs[w] = NULL;
                in_flight--;
            }
            sched_output_finish(&out);
        }
        if (!failed && client_gone(k->fd)) {
            failed = true;
            k->status = 499;
        }
    }
    for (int w = 0; reqs && w < m->n_seq_max; w++)
        sched_req_release(reqs[w]); /* cancels what still runs */
    if (failed && k->status == 499) {
        ret = MHD_NO;
    } else if (failed) {
        ret = respond_error(c, k, &e);
    } else {
        size_t len = 0;
        char *body = api_embed_response_json(m->name, (const float *const *)vecs, n, m->hidden_size, rq.base64,
                                             prompt_tokens, &len);
        k->tokens_in = prompt_tokens;
        ret = body ? respond(c, k, 200, "application/json", body, len) : MHD_NO;
    }
    for (int i = 0; ids && i < n; i++)
        tok_ids_finish(&ids[i]);
    for (int i = 0; vecs && i < n; i++)
        free(vecs[i]);
    free(ids);
    free(vecs);
    free(reqs);
    free(owner);
    api_embed_request_finish(&rq);
    return ret;
}

/* ---- generation ---- */

static char *namer_fn(void *ctx, int32_t id, size_t *ret_len)
{
    const tokenizer *t = ctx;
    char *text = NULL;
    size_t len = 0;
    ifd_error err;
    if (tok_decode(t, &id, 1, false, &text, &len, &err) < 0)
        return NULL;
    *ret_len = len;
    return text;
}

static bool namer_special(void *ctx, int32_t id)
{
    return tok_is_special(ctx, id);
}

/* Builds the prompt ids of a request, and for chat how its output is read
 * (*ret_tools_on, *ret_tools_cfg). On failure fills e. */
static int build_prompt(const struct served_model *m, const struct api_request *rq, struct tok_ids *ids,
                        bool *ret_tools_on, struct tools_output_cfg *ret_tools_cfg, struct api_error *e)
{
    ifd_error err = {{0}};
    int r;
    if (rq->kind == API_KIND_CHAT) {
        cJSON *ctx = cJSON_CreateObject();
        const char **untrusted_globals = NULL;
        if (!ctx || tools_context_fill(ctx, rq->messages, &rq->tools, &m->tools, &untrusted_globals) < 0) {
            cJSON_Delete(ctx);
            api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
            return -ENOMEM;
        }
        cJSON_AddBoolToObject(ctx, "add_generation_prompt", true);
        if (m->bos_token)
            cJSON_AddStringToObject(ctx, "bos_token", m->bos_token);
        if (m->eos_token)
            cJSON_AddStringToObject(ctx, "eos_token", m->eos_token);
        char *text = NULL;
        size_t len = 0, *untrusted = NULL, n_untrusted = 0;
        /* Message content is the client's text: special tokens in it stay
         * text (docs/security.md), only the template's markup makes them.
         * So are tools and chat_template_kwargs (tools_context_fill). */
        r = chat_template_render_untrusted(m->tmpl, ctx, untrusted_globals, &text, &len, &untrusted, &n_untrusted,
                                           &err);
        cJSON_Delete(ctx);
        free(untrusted_globals);
        if (r >= 0)
            *ret_tools_on = tools_output_setup(&rq->tools, &m->tools, text, len, ret_tools_cfg);
        if (r < 0) {
            api_error_set(e, 400, "invalid_request_error", "messages", NULL, "chat template: %s", err.msg);
            return r;
        }
        /* U+0000 in the messages went through the template as a stand-in. */
        len = api_nul_restore(text, len, rq->nul_sentinel, untrusted, 2 * n_untrusted);
        r = tok_encode_protected(m->tok, text, len, false, untrusted, n_untrusted, ids, &err);
        free(untrusted);
        free(text);
        if (r < 0) {
            api_error_set(e, 400, "invalid_request_error", "messages", NULL, "%s", err.msg);
            return r;
        }
        return 0;
    }
    if (rq->prompt) {
        r = tok_encode(m->tok, rq->prompt, rq->prompt_len, true, ids, &err);
        if (r < 0) {
            api_error_set(e, 400, "invalid_request_error", "prompt", NULL, "%s", err.msg);
            return r;
        }
        return 0;
    }
    if (rq->n_prompt_ids > ids->cap) {
        int32_t *p = realloc(ids->ids, sizeof(int32_t) * rq->n_prompt_ids);
        if (!p) {
            api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
            return -ENOMEM;
        }
        ids->ids = p;
        ids->cap = rq->n_prompt_ids;
    }
    memcpy(ids->ids, rq->prompt_ids, sizeof(int32_t) * rq->n_prompt_ids);
    ids->n = rq->n_prompt_ids;
    return 0;
}

/* echo: the prompt's text, as given, or decoded from its ids without
 * special tokens (as output text is). *ret is malloc'd, NUL-terminated. */
static int echo_text(const struct served_model *m, const struct api_request *rq, const struct tok_ids *ids,
                     char **ret, size_t *ret_len)
{
    if (rq->prompt) {
        if (!(*ret = malloc(rq->prompt_len + 1)))
            return -ENOMEM;
        memcpy(*ret, rq->prompt, rq->prompt_len + 1);
        *ret_len = rq->prompt_len;
        return 0;
    }
    int32_t *plain = malloc(sizeof(int32_t) * (ids->n ? ids->n : 1));
    if (!plain)
        return -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < ids->n; i++)
        if (!tok_is_special(m->tok, ids->ids[i]))
            plain[n++] = ids->ids[i];
    ifd_error err;
    int r = tok_decode(m->tok, plain, n, true, ret, ret_len, &err);
    free(plain);
    return r;
}

static void conn_append_buf(struct conn *k, char *s, size_t n)
{
    if (!s)
        return;
    if (k->buf_off == k->buf_len) {
        k->buf_off = k->buf_len = 0;
    }
    char *nb = realloc(k->buf, k->buf_len + n);
    if (nb) {
        memcpy(nb + k->buf_len, s, n);
        k->buf = nb;
        k->buf_len += n;
    }
    free(s);
}

/* finish_reason of a reply that made tool calls: "tool_calls", unless it
 * was cut short ("length" stays). */
static const char *tools_finish(const char *finish_reason, int n_calls)
{
    return n_calls > 0 && finish_reason && strcmp(finish_reason, "stop") == 0 ? "tool_calls" : finish_reason;
}

/* The chunks of choice ch's new text read through its tools parser: one
 * per delta, the last one carrying finish_reason; logprobs go with the first
 * chunk, or wait for a later one while the parser holds the text back. */
static void stream_produce_tools(struct conn *k, struct conn_choice *ch, size_t new_text, int new_lp, bool finish,
                                 const struct api_token_namer *namer)
{
    cJSON *deltas = cJSON_CreateArray();
    int r = deltas ? tools_stream_feed(ch->ts, ch->out.text + ch->out_sent, new_text, finish, deltas) : -ENOMEM;
    ch->out_sent = ch->out.text_len;  /* fed (or lost to ENOMEM): never fed twice */
    if (r < 0) {
        cJSON_Delete(deltas);
        return;
    }
    int n = cJSON_GetArraySize(deltas);
    if (finish && n == 0)
        cJSON_AddItemToArray(deltas, cJSON_CreateObject()); /* the finish chunk's empty delta */
    cJSON *d;
    while ((d = cJSON_DetachItemFromArray(deltas, 0))) {
        bool last = cJSON_GetArraySize(deltas) == 0;
        const char *fr = finish && last ? tools_finish(ch->out.finish_reason, tools_stream_calls(ch->ts)) : NULL;
        size_t len = 0;
        char *ev = api_chat_delta_sse(&k->meta, &ch->pos, d, fr, ch->out.lp + ch->lp_sent, new_lp, k->want_logprobs,
                                      k->include_usage, namer, &len);
        conn_append_buf(k, ev, len);
        ch->lp_sent += new_lp;
        new_lp = 0;
    }
    cJSON_Delete(deltas);
}

/* Collects what every choice produced, waiting up to timeout_ms on the
 * first unfinished one. Returns true when every choice is done; sets the
 * token counts for the log line (prompt once, completions summed) and the
 * usage: the prompt is counted once, as the first choice prefilled it, so
 * its cached part is the first choice's too. */
static bool choices_collect(struct conn *k, int timeout_ms)
{
    bool all_done = true;
    k->tokens_out = 0;
    for (int i = 0; i < k->n_ch; i++) {
        struct conn_choice *ch = &k->ch[i];
        if (!ch->out.done) {
            sched_req_collect(ch->req, all_done ? timeout_ms : 0, &ch->out);
            all_done = all_done && ch->out.done;
        }
        k->tokens_out += ch->out.completion_tokens;
        k->tokens_in = ch->out.prompt_tokens;
    }
    k->tokens_cached = k->n_ch > 0 ? k->ch[0].out.cached_tokens : 0;
    return all_done;
}

/* The first choice that ended with an error, or NULL. */
static const struct sched_output *choices_failed(const struct conn *k)
{
    for (int i = 0; i < k->n_ch; i++)
        if (k->ch[i].out.done && k->ch[i].out.error_status)
            return &k->ch[i].out;
    return NULL;
}

static void choices_cancel(struct conn *k)
{
    for (int i = 0; i < k->n_ch; i++)
        if (k->ch[i].req)
            sched_req_cancel(k->ch[i].req);
}

/* Turns whatever the scheduler produced into SSE events in k->buf. */
static void stream_produce(struct conn *k)
{
    struct api_token_namer namer = {namer_fn, (void *)k->model->tok, namer_special};
    size_t n = 0;
    char *ev;
    if (k->phase == PHASE_ROLE) {
        for (int i = 0; i < k->n_ch; i++) {
            ev = api_chunk_sse_at(&k->meta, &k->ch[i].pos, true, "", 0, NULL, NULL, 0, false, k->include_usage,
                                  &namer, &n);
            conn_append_buf(k, ev, n);
        }
        k->phase = PHASE_CONTENT;
        return;
    }
    bool done = choices_collect(k, 250);
    const struct sched_output *failed = choices_failed(k);
    for (int i = 0; i < k->n_ch; i++) {
        struct conn_choice *ch = &k->ch[i];
        size_t new_text = ch->out.text_len - ch->out_sent;
        int new_lp = ch->out.n_lp - ch->lp_sent;
        bool finish = ch->out.done && !ch->out.error_status && !ch->finished && !failed;
        /* The last content chunk carries finish_reason (an empty delta if need be). */
        if (ch->ts) {
            if (new_text > 0 || new_lp > 0 || finish)
                stream_produce_tools(k, ch, new_text, new_lp, finish, &namer);
        } else if (new_text > 0 || new_lp > 0 || finish) {
            ev = api_chunk_sse_at(&k->meta, &ch->pos, false, ch->out.text + ch->out_sent, new_text,
                                  finish ? ch->out.finish_reason : NULL, ch->out.lp + ch->lp_sent, new_lp,
                                  k->want_logprobs, k->include_usage, &namer, &n);
            conn_append_buf(k, ev, n);
        }
        if (!ch->ts) {
            ch->out_sent = ch->out.text_len;
            ch->lp_sent = ch->out.n_lp;
        }
        ch->finished = ch->finished || finish;
    }
    if (failed) {
        /* The stream cannot change its status any more: end with an error
         * event; the other choices are not needed any more. */
        choices_cancel(k);
        struct api_error e;
        bool down = failed->error_status == 503;
        api_error_set(&e, failed->error_status, down ? "service_unavailable" : "server_error", NULL,
                      down ? unavailable_code(k) : NULL, "%s", failed->error_msg);
        ev = api_error_sse(&e, &n);
        conn_append_buf(k, ev, n);
    } else if (!done) {
        return;
    } else if (k->include_usage) {
        struct api_usage u = {k->tokens_in, k->tokens_out, k->tokens_cached};
        ev = api_usage_sse(&k->meta, &u, &n);
        conn_append_buf(k, ev, n);
    }
    conn_append_buf(k, strdup("data: [DONE]\n\n"), 14);
    k->phase = PHASE_FINISHED;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct conn *k = cls;
    for (;;) {
        if (k->buf_off < k->buf_len) {
            size_t n = k->buf_len - k->buf_off;
            if (n > max)
                n = max;
            memcpy(buf, k->buf + k->buf_off, n);
            k->buf_off += n;
            return (ssize_t)n;
        }
        if (k->phase == PHASE_FINISHED)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (client_gone(k->fd)) {
            choices_cancel(k);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        stream_produce(k);
    }
}

/* tool_choice "required" or a named function: the reply must be tool calls
 * in the template's markup, enforced by constrained decoding. Each call is
 * the JSON Schema of tools_call_schema() (name and arguments per function's
 * parameters) compiled to GBNF, inside tools_call_wrapper_gbnf()'s markup;
 * when a function's parameters use what the schema compiler refuses, its
 * arguments are any JSON object instead (tools_call_grammar()), and the log
 * says why. */
static int tool_choice_grammar(const struct served_model *m, struct api_request *rq, struct api_error *e)
{
    if (rq->grammar) {
        api_error_set(e, 400, "invalid_request_error", "tool_choice", NULL,
                      "tool_choice '%s' makes the reply tool calls: it cannot be combined with response_format, "
                      "grammar, json_schema or guided_*", rq->tools.choice == TOOLS_CHOICE_REQUIRED ? "required" :
                      rq->tools.choice_name);
        return -EINVAL;
    }
    ifd_error err = {{0}};
    char *gbnf = NULL, *call = NULL;
    cJSON *schema = tools_call_schema(m->tools.format, &rq->tools);
    static const char schema_root[] = "root ::= r1\n"; /* grammar_schema_to_gbnf's start rule */
    char *at;
    if (schema && grammar_schema_to_gbnf(schema, &call, &err) >= 0 && (at = strstr(call, schema_root))) {
        memcpy(at, "call", 4); /* "call ::= r1": the wrapper's call rule, same length */
        char *wrap = tools_call_wrapper_gbnf(m->tools.format, &rq->tools, "call");
        if (wrap && asprintf(&gbnf, "%s%s", wrap, call) < 0)
            gbnf = NULL;
        free(wrap);
    } else {
        log_info("tool_choice: arguments not constrained by the parameters schema (%s)", err.msg);
        gbnf = tools_call_grammar(m->tools.format, &rq->tools);
    }
    cJSON_Delete(schema);
    free(call);
    int r = gbnf ? grammar_parse_gbnf(gbnf, strlen(gbnf), &rq->grammar, &err) : -ENOMEM;
    free(gbnf);
    if (r < 0) {
        api_error_set(e, 500, "server_error", "tool_choice", NULL, "tool_choice grammar: %s",
                      r == -ENOMEM ? "out of memory" : err.msg);
        return r;
    }
    return 0;
}

static MHD_RESULT handle_generate(struct MHD_Connection *c, struct conn *k, enum api_kind kind)
{
    struct api_request rq;
    struct api_error e;
    /* Token ids are checked once the model they index is known. */
    if (api_request_parse(kind, k->body, k->len, 0, &rq, &e) < 0)
        return respond_error(c, k, &e);
    MHD_RESULT ret;
    int r = take_model(k, rq.model, &e);
    if (r >= 0 && rq.prompt_ids)
        r = api_check_token_ids(rq.prompt_ids, rq.n_prompt_ids, k->model->n_vocab, "prompt", &e);
    if (r >= 0)
        r = api_check_logit_bias(&rq, k->model->n_vocab, &e);
    if (r < 0) {
        ret = respond_model_error(c, k, r, &e);
        api_request_finish(&rq);
        return ret;
    }
    const struct served_model *m = k->model;
    struct tok_ids ids = {0};
    int built = build_prompt(m, &rq, &ids, &k->tools_on, &k->tools_cfg, &e);
    if (built >= 0 && (rq.tools.choice == TOOLS_CHOICE_REQUIRED || rq.tools.choice == TOOLS_CHOICE_NAMED))
        built = tool_choice_grammar(m, &rq, &e);
    /* Parsed and tokenized: what remains is small; the wait for tokens
     * must not hold the parse budget. */
    parse_release(k);
    if (built < 0) {
        tok_ids_finish(&ids);
        api_request_finish(&rq);
        return respond_error(c, k, &e);
    }
    k->tokens_in = (int)ids.n;
    if (ids.n >= (size_t)m->n_ctx) {
        api_error_set(&e, 400, "invalid_request_error", kind == API_KIND_CHAT ? "messages" : "prompt",
                      "context_length_exceeded",
                      "This model's context is %d tokens; the prompt is %zu tokens (it must leave room for at least one generated token)",
                      m->n_ctx, ids.n);
        tok_ids_finish(&ids);
        api_request_finish(&rq);
        return respond_error(c, k, &e);
    }
    struct sched_req_params p = {
        .prompt = ids.ids, .n_prompt = ids.n, .max_tokens = rq.max_tokens, .sampling = rq.sampling,
        .stop = rq.stop, .n_stop = rq.n_stop, .logprobs = rq.logprobs, .top_logprobs = rq.top_logprobs,
        .logit_bias = rq.logit_bias, .n_logit_bias = rq.n_logit_bias,
        .prompt_logprobs = rq.echo && rq.logprobs, .prompt_only = rq.echo && rq.max_tokens == 0,
    };
    char *echo = NULL;
    size_t echo_len = 0;
    if (rq.echo && echo_text(m, &rq, &ids, &echo, &echo_len) < 0) {
        tok_ids_finish(&ids);
        api_request_finish(&rq);
        return respond_errorf(c, k, 500, "server_error", NULL, NULL, "out of memory");
    }
    ifd_error err = {{0}};
    /* n choices: n sequences of the same prompt ids (tokenized once), seeded
     * seed, seed + 1 ... so that a seeded request stays reproducible. The
     * prompt is prefilled once: choices after the first copy its cache
     * (share_prefill; the scheduler falls back to a prefill of their own),
     * all of them queued under one hold so that none is admitted before
     * the others are queued. */
    k->ch = calloc((size_t)rq.n, sizeof(*k->ch));
    r = k->ch ? 0 : ifd_error_set(&err, -ENOMEM, "out of memory");
    if (rq.n > 1)
        sched_hold(m->sched);
    for (int i = 0; r >= 0 && i < rq.n; i++) {
        p.sampling.seed = rq.sampling.seed + (uint64_t)i;
        /* Each choice's sequence holds the (immutable) grammar: one reference
         * each, which sched_submit() takes over when it succeeds. */
        p.grammar = grammar_ref(rq.grammar);
        p.share_prefill = i > 0 ? k->ch[0].req : NULL;
        r = sched_submit(m->sched, &p, &k->ch[i].req, &err);
        if (r < 0)
            grammar_destroy(p.grammar);
        if (r >= 0) {
            k->ch[i].pos.index = i;
            k->n_ch = i + 1;
        }
        /* echo: the choice's text starts as the prompt's; what the
         * scheduler produces is appended to it */
        if (r >= 0 && echo && !(k->ch[i].out.text = malloc(echo_len + 1)))
            r = ifd_error_set(&err, -ENOMEM, "out of memory");
        if (r >= 0 && echo) {
            memcpy(k->ch[i].out.text, echo, echo_len + 1);
            k->ch[i].out.text_len = echo_len;
            k->ch[i].out.text_cap = echo_len + 1;
        }
    }
    if (rq.n > 1)
        sched_release(m->sched);
    free(echo);
    tok_ids_finish(&ids);
    if (r < 0) {
        api_request_finish(&rq);
        if (r == -EAGAIN)
            return respond_errorf(c, k, 429, "rate_limit_error", NULL, "queue_full", err.msg);
        if (r == -ESHUTDOWN)
            return respond_errorf(c, k, 503, "service_unavailable", NULL, "shutting_down", err.msg);
        return respond_errorf(c, k, r == -EINVAL ? 400 : 500, r == -EINVAL ? "invalid_request_error" : "server_error",
                              NULL, NULL, err.msg);
    }
    /* Identity of the response: random, as OpenAI's ids are. */
    uint64_t rnd[2] = {0, 0};
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        rnd[0] = (uint64_t)(uintptr_t)k ^ (uint64_t)now_mono();
    snprintf(k->id, sizeof(k->id), "%s-%016llx%016llx", kind == API_KIND_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)rnd[0], (unsigned long long)rnd[1]);
    k->meta = (struct api_response_meta){.kind = kind, .id = k->id, .created = (int64_t)time(NULL),
                                         .model = m->name};
    k->want_logprobs = rq.logprobs;
    k->include_usage = rq.include_usage;
    bool stream = rq.stream;
    api_request_finish(&rq);

    for (int i = 0; stream && k->tools_on && i < k->n_ch; i++)
        if (!(k->ch[i].ts = tools_stream_create(&k->tools_cfg)))
            return respond_errorf(c, k, 500, "server_error", NULL, NULL, "out of memory");
    if (stream) {
        k->phase = kind == API_KIND_CHAT ? PHASE_ROLE : PHASE_CONTENT;
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader, k, NULL);
        if (!resp)
            return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        add_cors_headers(resp, k);
        k->status = 200;
        ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return ret;
    }

    /* Non-streaming: wait here (this connection's own thread), watching the socket. */
    for (;;) {
        if (choices_collect(k, 100) || choices_failed(k))
            break;
        if (client_gone(k->fd)) {
            choices_cancel(k);
            k->status = 499;  /* nginx's "client closed request", for the log line */
            return MHD_NO;
        }
    }
    const struct sched_output *failed = choices_failed(k);
    if (failed) {
        choices_cancel(k);
        bool down = failed->error_status == 503;
        return respond_errorf(c, k, failed->error_status, down ? "service_unavailable" : "server_error", NULL,
                              down ? unavailable_code(k) : NULL, failed->error_msg);
    }
    struct api_usage u = {k->tokens_in, k->tokens_out, k->tokens_cached};
    struct api_token_namer namer = {namer_fn, (void *)m->tok, namer_special};
    struct api_choice_out *co = calloc((size_t)k->n_ch, sizeof(*co));
    if (!co)
        return respond_errorf(c, k, 500, "server_error", NULL, NULL, "out of memory");
    for (int i = 0; i < k->n_ch; i++) {
        const struct sched_output *o = &k->ch[i].out;
        co[i] = (struct api_choice_out){NULL, o->text ? o->text : "", o->text_len, o->finish_reason, o->lp, o->n_lp};
        if (k->tools_on) {
            /* A chat with tools or reasoning: the message is read from the text. */
            int n_calls = 0;
            co[i].message = tools_message_from_text(&k->tools_cfg, co[i].text, co[i].text_len, &n_calls);
            co[i].finish_reason = tools_finish(o->finish_reason, n_calls);
            if (!co[i].message) {
                for (int j = 0; j < i; j++)
                    cJSON_Delete(co[j].message);
                free(co);
                return respond_errorf(c, k, 500, "server_error", NULL, NULL, "out of memory");
            }
        }
    }
    char *s = api_response_json_n(&k->meta, co, k->n_ch, &u, k->want_logprobs, &namer);
    free(co);
    return respond_json(c, k, 200, s);
}

/* ---- dispatch ---- */

static bool authorized(struct http_app *app, struct MHD_Connection *c)
{
    pthread_rwlock_rdlock(&app->lock);
    bool ok = app->n_api_keys == 0;
    if (!ok) {
        const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        ok = api_key_matches((const char *const *)app->api_keys, app->n_api_keys, h);
    }
    pthread_rwlock_unlock(&app->lock);
    return ok;
}

static size_t body_limit(struct http_app *app)
{
    return app_limits(app).max_body_bytes;
}

static MHD_RESULT dispatch(struct MHD_Connection *c, struct conn *k)
{
    struct http_app *app = k->app;
    switch (k->route) {
    case ROUTE_HEALTH: return handle_health(c, k);
    case ROUTE_METRICS: return handle_metrics(c, k);
    case ROUTE_MODELS: return handle_models(c, k, NULL);
    case ROUTE_MODEL_ONE: return handle_models(c, k, k->path + strlen("/v1/models/"));
    case ROUTE_STATUS: return handle_status(c, k);
    default: break;
    }
    if (!app_ready(app) || atomic_load(&app->draining))
        return not_ready(c, k);
    /* Parsing and tokenizing cost memory and CPU in proportion to the body,
     * and before the scheduler's queue can say no: a budget bounds how much
     * of that runs at once. A request that cannot get its share within the
     * request deadline gets 503 rather than waiting without end. */
    if (parse_acquire(k->srv, k, now_mono() + app_limits(app).request_timeout_s) < 0)
        return respond_errorf(c, k, 503, "service_unavailable", NULL, "server_busy",
                              "too many large request bodies are being parsed; try again (parse_memory)");
    MHD_RESULT r;
    switch (k->route) {
    case ROUTE_CHAT: r = handle_generate(c, k, API_KIND_CHAT); break;
    case ROUTE_COMPLETIONS: r = handle_generate(c, k, API_KIND_COMPLETION); break;
    case ROUTE_TOKENIZE: r = handle_tokenize(c, k); break;
    case ROUTE_DETOKENIZE: r = handle_detokenize(c, k); break;
    case ROUTE_EMBEDDINGS: r = handle_embeddings(c, k); break;
    default: r = respond_errorf(c, k, 404, "invalid_request_error", NULL, "not_found", "no such endpoint"); break;
    }
    parse_release(k);
    return r;
}

/* Answers before the body has been read. With a body on its way MHD closes
 * the connection after the answer: it lingers first so the client can read
 * the answer (see HTTP_LINGER_BYTES). */
static MHD_RESULT respond_early(struct MHD_Connection *c, struct conn *k, int status, const char *type,
                                const char *code, const char *msg)
{
    struct http_server *h = k->srv;
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    bool body_due = (cl && strspn(cl, "0") != strlen(cl)) ||
                    MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Transfer-Encoding");
    if (k->slot) {
        pthread_mutex_lock(&h->lock);
        k->slot->linger = body_due;
        k->slot->reading = false;
        pthread_mutex_unlock(&h->lock);
    }
    return respond_errorf(c, k, status, type, NULL, code, msg);
}

/* Origins are compared whole and bounded; "*" in cors_origins allows any. */
#define HTTP_MAX_ORIGIN_LEN 256
#define HTTP_MAX_PREFLIGHT_HEADERS_LEN 1024

static bool origin_allowed(struct http_app *app, const char *origin)
{
    if (strlen(origin) > HTTP_MAX_ORIGIN_LEN)
        return false;
    pthread_rwlock_rdlock(&app->lock);
    bool ok = false;
    for (int i = 0; i < app->n_cors_origins && !ok; i++)
        ok = strcmp(app->cors_origins[i], "*") == 0 || strcasecmp(app->cors_origins[i], origin) == 0;
    pthread_rwlock_unlock(&app->lock);
    return ok;
}

/* A browser's CORS preflight (OPTIONS with Access-Control-Request-Method):
 * 204 with the allowed method and headers for an allowed origin, 403 saying
 * why for another. It needs no API key: browsers never send one with it. */
static MHD_RESULT preflight(struct MHD_Connection *c, struct conn *k, const char *origin)
{
    if (!k->cors_origin) {
        char msg[400];
        snprintf(msg, sizeof(msg), "origin '%.256s' is not allowed (it must be in [server] cors_origins)", origin);
        return respond_early(c, k, 403, "invalid_request_error", "cors_origin_not_allowed", msg);
    }
    /* The headers the browser asks for are allowed as they are (the origin is
     * the boundary; the API key still decides what the request may do), as
     * long as they are a plain list of header names. */
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Access-Control-Request-Headers");
    if (!h)
        h = "";
    if (strlen(h) > HTTP_MAX_PREFLIGHT_HEADERS_LEN ||
        strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_, ") != strlen(h))
        return respond_early(c, k, 400, "invalid_request_error", NULL,
                             "Access-Control-Request-Headers is not a list of header names");
    if (!(k->cors_preflight_headers = strdup(h)))
        return MHD_NO;
    char *empty = strdup("");
    if (!empty)
        return MHD_NO;
    return respond(c, k, 204, "text/plain", empty, 0);
}

static MHD_RESULT on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                             const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    struct http_server *h = cls;
    struct http_app *app = h->app;
    struct conn *k = *con_cls;
    if (!k) {
        k = calloc(1, sizeof(*k));
        if (!k)
            return MHD_NO;
        *con_cls = k;
        k->srv = h;
        k->app = app;
        k->t0 = now_mono();
        k->fd = -1;
        snprintf(k->method, sizeof(k->method), "%s", method);
        k->path = strdup(url);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci)
            k->fd = ci->connect_fd;
        ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        if (ci)
            k->slot = ci->socket_context;
        if (!k->path)
            return MHD_NO;

        const char *allowed = NULL;
        bool auth = true;
        for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
            if (strcmp(url, routes[i].path) == 0) {
                k->route = routes[i].route;
                allowed = routes[i].method;
                auth = routes[i].auth;
            }
        if (!k->route && strncmp(url, "/v1/models/", 11) == 0 && url[11]) {
            k->route = ROUTE_MODEL_ONE;
            allowed = "GET";
        }
        if (!k->route)
            return respond_early(c, k, 404, "invalid_request_error", "not_found", "no such endpoint");
        const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
        if (origin && origin_allowed(app, origin) && !(k->cors_origin = strdup(origin)))
            return MHD_NO;
        if (strcmp(method, "OPTIONS") == 0 && origin &&
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Access-Control-Request-Method"))
            return preflight(c, k, origin);
        if (strcmp(method, allowed) != 0 && !(strcmp(method, "HEAD") == 0 && strcmp(allowed, "GET") == 0)) {
            char msg[128];
            snprintf(msg, sizeof(msg), "method %.16s is not allowed here (use %s)", method, allowed);
            return respond_early(c, k, 405, "invalid_request_error", "method_not_allowed", msg);
        }
        if (auth && !authorized(app, c))
            return respond_early(c, k, 401, "authentication_error", "invalid_api_key",
                                 "missing or invalid API key (send Authorization: Bearer KEY)");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            size_t limit = body_limit(app);
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (n > limit || errno == ERANGE) {
                char msg[160];
                snprintf(msg, sizeof(msg), "request body of %s bytes is over the limit of %zu (max_body_bytes)",
                         errno == ERANGE ? "too many" : cl, limit);
                return respond_early(c, k, 413, "invalid_request_error", "request_too_large", msg);
            }
            k->expect = (size_t)n;
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (k->too_big)
            return MHD_YES;
        size_t limit = body_limit(app);
        if (k->len + n > limit) {
            /* Chunked upload over the limit: keep reading (and dropping) it,
             * answer 413 once it is in; the request deadline bounds how
             * long that may take. */
            k->too_big = true;
            free(k->body);
            k->body = NULL;
            k->len = k->cap = 0;
            return MHD_YES;
        }
        if (k->len + n + 1 > k->cap) {
            /* A declared length is allocated once, when its first bytes
             * come (not at the headers, which cost the client nothing):
             * no doubling to twice the body. */
            size_t ncap = k->cap ? k->cap : k->expect ? k->expect + 1 : 4096;
            while (ncap < k->len + n + 1)
                ncap *= 2;
            char *nb = realloc(k->body, ncap);
            if (!nb)
                return MHD_NO;
            k->body = nb;
            k->cap = ncap;
        }
        memcpy(k->body + k->len, upload_data, n);
        k->len += n;
        k->body[k->len] = '\0';
        return MHD_YES;
    }
    if (k->status)  /* already answered (e.g. an early 413) */
        return MHD_YES;
    /* The request is in: from here the deadline no longer runs. */
    slot_set_reading(h, k->slot, false);
    if (k->too_big) {
        char msg[128];
        snprintf(msg, sizeof(msg), "request body is over the limit of %zu bytes (max_body_bytes)", body_limit(app));
        return respond_errorf(c, k, 413, "invalid_request_error", NULL, "request_too_large", msg);
    }
    if (!k->body) {
        k->body = strdup("");
        if (!k->body)
            return MHD_NO;
    }
    k->body[k->len] = '\0';
    return dispatch(c, k);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    struct http_server *h = cls;
    struct http_app *app = h->app;
    struct conn *k = *con_cls;
    if (!k)
        return;
    *con_cls = NULL;
    parse_release(k);
    bool linger = false;
    if (k->slot) {
        pthread_mutex_lock(&h->lock);
        linger = k->slot->linger && !k->slot->shut;
        k->slot->linger = false;
        pthread_mutex_unlock(&h->lock);
    }
    if (linger)
        linger_drain(k->slot->fd);  /* MHD closes the connection next */
    else
        slot_set_reading(h, k->slot, true);  /* a kept-alive connection owes its next request from now on */
    /* Whatever happened, the sequences are not needed any more: a client
     * that went away mid-stream frees their slots now. */
    for (int i = 0; i < k->n_ch; i++) {
        sched_req_release(k->ch[i].req);
        sched_output_finish(&k->ch[i].out);
        tools_stream_destroy(k->ch[i].ts);
    }
    free(k->ch);
    k->ch = NULL;
    k->n_ch = 0;
    int status = k->status;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && status == 200)
        status = 499;
    log_info("%s %s %d prompt=%d cached=%d completion=%d %.1fms%s", k->method, k->path ? k->path : "?", status,
             k->tokens_in, k->tokens_cached, k->tokens_out, (now_mono() - k->t0) * 1000.0,
             toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
    /* HTTP requests are counted server-wide, on the default model's metrics. */
    const struct served_model *dm = app->models ? models_default(app->models) : NULL;
    if (dm && status)
        metrics_request_done(dm->metrics, status);
    models_release(app->models, k->model);
    free(k->cors_origin);
    free(k->cors_preflight_headers);
    free(k->buf);
    free(k->body);
    free(k->path);
    free(k);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && line[n - 1] == '\n')
        line[--n] = '\0';
    log_warn("HTTP: %s", line);
}

int http_listen(const char *hostport, int *ret_fd, ifd_error *err)
{
    /* Split "host:port" / "[v6]:port". */
    const char *colon = NULL;
    char host[256];
    if (hostport[0] == '[') {
        const char *close = strchr(hostport, ']');
        if (!close || close[1] != ':')
            return ifd_error_set(err, -EINVAL, "listen address '%s': expected [addr]:port", hostport);
        snprintf(host, sizeof(host), "%.*s", (int)(close - hostport - 1), hostport + 1);
        colon = close + 1;
    } else {
        colon = strrchr(hostport, ':');
        if (!colon)
            return ifd_error_set(err, -EINVAL, "listen address '%s': expected host:port", hostport);
        snprintf(host, sizeof(host), "%.*s", (int)(colon - hostport), hostport);
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
    int r = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (r != 0)
        return ifd_error_set(err, -EINVAL, "listen address '%s': %s", hostport, gai_strerror(r));
    int fd = -1, last = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        /* The kernel's cap: a burst past the backlog has its SYNs retried
         * after 1 s, 3 s ..., which looks like an outage to the client. */
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0)
            break;
        last = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return ifd_error_set(err, -last, "Failed to listen on %s: %s", hostport, strerror(last));
    *ret_fd = fd;
    return 0;
}

int http_server_start(struct http_app *app, int listen_fd, struct http_server **ret, ifd_error *err)
{
    struct http_server *h = calloc(1, sizeof(*h));
    if (!h)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    h->app = app;
    struct http_limits lim = app_limits(app);
    h->max_conn = lim.max_connections > 0 ? lim.max_connections : 1;
    h->max_per_ip = lim.max_connections_per_ip;
    h->parse_budget = lim.parse_memory > 0 ? lim.parse_memory : 1;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->wake, NULL);
    pthread_mutex_init(&h->parse_lock, NULL);
    pthread_cond_init(&h->parse_cond, NULL);
    if (pthread_create(&h->reaper, NULL, reaper_main, h) != 0) {
        http_server_stop(h);
        return ifd_error_set(err, -EAGAIN, "Failed to start the HTTP reaper thread");
    }
    h->reaper_started = true;
    /* MHD's own limit is a backstop above ours: connections we shut down
     * still count for it until their threads end. */
    unsigned backstop = (unsigned)h->max_conn * 2 + 16;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    h->d = MHD_start_daemon(flags, 0, on_accept, h, on_request, h,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL,
                            MHD_OPTION_LISTEN_SOCKET, listen_fd,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
                            MHD_OPTION_CONNECTION_LIMIT, backstop,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
                            MHD_OPTION_END);
    if (!h->d) {
        http_server_stop(h);
        return ifd_error_set(err, -EIO, "Failed to start the HTTP server");
    }
    *ret = h;
    return 0;
}

void http_server_quiesce(struct http_server *h)
{
    if (!h)
        return;
    MHD_socket s = MHD_quiesce_daemon(h->d);
    if (s != MHD_INVALID_SOCKET)
        close(s);
}

unsigned http_server_connections(struct http_server *h)
{
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return i ? i->num_connections : 0;
}

void http_server_stop(struct http_server *h)
{
    if (!h)
        return;
    if (h->d)
        MHD_stop_daemon(h->d);
    if (h->reaper_started) {
        pthread_mutex_lock(&h->lock);
        h->stopping = true;
        pthread_cond_signal(&h->wake);
        pthread_mutex_unlock(&h->lock);
        pthread_join(h->reaper, NULL);
    }
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->wake);
    pthread_mutex_destroy(&h->parse_lock);
    pthread_cond_destroy(&h->parse_cond);
    free(h);
}

void http_app_set_cors(struct http_app *app, char **origins, int n)
{
    pthread_rwlock_wrlock(&app->lock);
    char **old = app->cors_origins;
    int n_old = app->n_cors_origins;
    app->cors_origins = origins;
    app->n_cors_origins = n;
    pthread_rwlock_unlock(&app->lock);
    for (int i = 0; i < n_old; i++)
        free(old[i]);
    free(old);
}

void http_app_set_limits(struct http_app *app, char **keys, int n_keys, const struct http_limits *lim)
{
    pthread_rwlock_wrlock(&app->lock);
    char **old = app->api_keys;
    int n_old = app->n_api_keys;
    app->api_keys = keys;
    app->n_api_keys = n_keys;
    if (lim)
        app->limits = *lim;
    pthread_rwlock_unlock(&app->lock);
    for (int i = 0; i < n_old; i++) {
        explicit_bzero(old[i], strlen(old[i]));
        free(old[i]);
    }
    free(old);
}
