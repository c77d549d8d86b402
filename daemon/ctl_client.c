/* ctl_client.c - inferctl status | models | chat: clients of a running
 * inferd over its HTTP API.
 *
 * A small HTTP/1.1 client over a TCP socket (plain http:// only: inferd
 * listens on loopback or behind a TLS proxy), with chunked decoding for the
 * SSE stream of `chat`. Responses are bounded (MAX_RESPONSE) since the
 * server is not trusted to be well-behaved. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <stdint.h>
#include <unistd.h>

#include "ctl.h"
#include "base/buf.h"

#define DEFAULT_URL "http://127.0.0.1:8080"
#define MAX_RESPONSE (64u << 20)

struct client {
    char host[256];
    char port[16];
    const char *key;   /* INFERD_API_KEY or NULL */
};

static int client_init(struct client *c, const char *url)
{
    const char *p = url;
    if (strncmp(p, "http://", 7) == 0)
        p += 7;
    else if (strstr(p, "://")) {
        fprintf(stderr, "inferctl: only http:// URLs are supported ('%s')\n", url);
        return -EINVAL;
    }
    const char *slash = strchr(p, '/');
    size_t hostlen = slash ? (size_t)(slash - p) : strlen(p);
    char hp[256];
    if (hostlen == 0 || hostlen >= sizeof(hp)) {
        fprintf(stderr, "inferctl: bad URL '%s'\n", url);
        return -EINVAL;
    }
    memcpy(hp, p, hostlen);
    hp[hostlen] = '\0';
    char *colon = hp[0] == '[' ? strstr(hp, "]:") : strrchr(hp, ':');
    if (hp[0] == '[') {
        char *close = strchr(hp, ']');
        if (!close) {
            fprintf(stderr, "inferctl: bad URL '%s'\n", url);
            return -EINVAL;
        }
        *close = '\0';
        snprintf(c->host, sizeof(c->host), "%s", hp + 1);
        snprintf(c->port, sizeof(c->port), "%s", colon ? colon + 2 : "80");
    } else {
        if (colon)
            *colon = '\0';
        snprintf(c->host, sizeof(c->host), "%s", hp);
        snprintf(c->port, sizeof(c->port), "%s", colon ? colon + 1 : "80");
    }
    c->key = getenv("INFERD_API_KEY");
    if (c->key && !*c->key)
        c->key = NULL;
    return 0;
}

static int client_connect(const struct client *c)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int r = getaddrinfo(c->host, c->port, &hints, &res);
    if (r != 0) {
        fprintf(stderr, "inferctl: %s:%s: %s\n", c->host, c->port, gai_strerror(r));
        return -EINVAL;
    }
    int fd = -1, err = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        fprintf(stderr, "inferctl: cannot connect to inferd at %s:%s: %s (is it running? see --url)\n", c->host,
                c->port, strerror(err ? err : ECONNREFUSED));
    return fd;
}

/* send() with MSG_NOSIGNAL, not write(): a daemon that closed the
 * connection (restarted, or refused the request early) must give
 * "inferctl: write: Broken pipe", not a SIGPIPE that ends inferctl chat
 * and its conversation without a word. */
static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* A buffered reader over the socket. */
struct reader {
    int fd;
    char buf[16384];
    size_t off, len;
};

static int rd_fill(struct reader *r)
{
    if (r->off < r->len)
        return 1;
    ssize_t n;
    do
        n = read(r->fd, r->buf, sizeof(r->buf));
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return (int)n;
    r->off = 0;
    r->len = (size_t)n;
    return 1;
}

/* Reads a line (CRLF stripped) into out[cap]; -1 on EOF/error or overlong. */
static int rd_line(struct reader *r, char *out, size_t cap)
{
    size_t n = 0;
    for (;;) {
        if (rd_fill(r) <= 0)
            return -1;
        char ch = r->buf[r->off++];
        if (ch == '\n') {
            if (n > 0 && out[n - 1] == '\r')
                n--;
            out[n] = '\0';
            return (int)n;
        }
        if (n + 1 >= cap)
            return -1;
        out[n++] = ch;
    }
}

/* Body sink: called with each piece of the (de-chunked) body. */
typedef int (*body_fn)(void *ctx, const char *p, size_t n);

static int rd_body(struct reader *r, bool chunked, long long content_length, body_fn fn, void *ctx)
{
    size_t total = 0;
    char line[256];
    for (;;) {
        long long want;
        if (chunked) {
            if (rd_line(r, line, sizeof(line)) < 0)
                return -EPROTO;
            char *end;
            want = strtoll(line, &end, 16);
            if (end == line || want < 0)
                return -EPROTO;
            if (want == 0)
                return 0;
        } else {
            want = content_length < 0 ? (long long)MAX_RESPONSE + 1 : content_length;
            if (want == 0)
                return 0;
        }
        while (want > 0) {
            int f = rd_fill(r);
            if (f <= 0) {
                if (!chunked && content_length < 0)
                    return 0; /* read to EOF */
                return -EPROTO;
            }
            size_t n = r->len - r->off;
            if ((long long)n > want)
                n = (size_t)want;
            total += n;
            if (total > MAX_RESPONSE)
                return -EFBIG;
            int rc = fn(ctx, r->buf + r->off, n);
            if (rc < 0)
                return rc;
            r->off += n;
            want -= (long long)n;
        }
        if (!chunked)
            return 0;
        if (rd_line(r, line, sizeof(line)) < 0) /* CRLF after the chunk */
            return -EPROTO;
    }
}

/* Sends a request and streams the body to fn. *ret_status gets the status. */
static int client_request(const struct client *c, const char *method, const char *path, const char *body,
                          body_fn fn, void *ctx, int *ret_status)
{
    int fd = client_connect(c);
    if (fd < 0)
        return fd;
    char *req = NULL;
    int n = asprintf(&req,
                     "%s %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: inferctl\r\nAccept: */*\r\n"
                     "Connection: close\r\n%s%s%s%s%s\r\n",
                     method, path, c->host, c->port, c->key ? "Authorization: Bearer " : "", c->key ? c->key : "",
                     c->key ? "\r\n" : "", body ? "Content-Type: application/json\r\n" : "", "");
    if (n < 0) {
        close(fd);
        return -ENOMEM;
    }
    int rc = 0;
    if (body) {
        char cl[64];
        snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n\r\n", strlen(body));
        /* Replace the final blank line with the length header. */
        req[n - 2] = '\0';
        rc = write_all(fd, req, (size_t)n - 2);
        if (rc == 0)
            rc = write_all(fd, cl, strlen(cl));
        if (rc == 0)
            rc = write_all(fd, body, strlen(body));
    } else {
        rc = write_all(fd, req, (size_t)n);
    }
    free(req);
    if (rc < 0) {
        fprintf(stderr, "inferctl: write: %s\n", strerror(-rc));
        close(fd);
        return rc;
    }
    struct reader *r = calloc(1, sizeof(*r));
    if (!r) {
        close(fd);
        return -ENOMEM;
    }
    r->fd = fd;
    char line[8192];
    int status = 0;
    if (rd_line(r, line, sizeof(line)) < 0 || sscanf(line, "HTTP/%*d.%*d %d", &status) != 1) {
        fprintf(stderr, "inferctl: bad response from %s:%s\n", c->host, c->port);
        free(r);
        close(fd);
        return -EPROTO;
    }
    bool chunked = false;
    long long clen = -1;
    for (;;) {
        int l = rd_line(r, line, sizeof(line));
        if (l < 0) {
            free(r);
            close(fd);
            return -EPROTO;
        }
        if (l == 0)
            break;
        if (strncasecmp(line, "Transfer-Encoding:", 18) == 0 && strcasestr(line + 18, "chunked"))
            chunked = true;
        else if (strncasecmp(line, "Content-Length:", 15) == 0)
            clen = strtoll(line + 15, NULL, 10);
    }
    *ret_status = status;
    rc = rd_body(r, chunked, clen, fn, ctx);
    free(r);
    close(fd);
    if (rc < 0 && rc != -ECANCELED)
        fprintf(stderr, "inferctl: reading the response: %s\n", strerror(-rc));
    return rc;
}

/* Collects a whole body. */
struct buf {
    char *p;
    size_t len, cap;
};

static int buf_sink(void *ctx, const char *p, size_t n)
{
    struct buf *b = ctx;
    char *np = n < SIZE_MAX - b->len - 1 ? buf_grow(b->p, &b->cap, b->len + n + 1, 1) : NULL;
    if (!np)
        return -ENOMEM;
    b->p = np;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static void print_error_body(int status, const char *body)
{
    cJSON *j = body ? cJSON_Parse(body) : NULL;
    cJSON *m = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "message");
    fprintf(stderr, "inferctl: HTTP %d: %s\n", status, cJSON_IsString(m) ? m->valuestring : (body ? body : ""));
    cJSON_Delete(j);
}

/* GET path -> parsed JSON (NULL and a message on failure). */
static cJSON *get_json(const struct client *c, const char *path, char **ret_raw)
{
    struct buf b = {0};
    int status = 0;
    if (client_request(c, "GET", path, NULL, buf_sink, &b, &status) < 0) {
        free(b.p);
        return NULL;
    }
    if (status != 200) {
        print_error_body(status, b.p);
        free(b.p);
        return NULL;
    }
    cJSON *j = b.p ? cJSON_Parse(b.p) : NULL;
    if (!j)
        fprintf(stderr, "inferctl: %s: the response is not JSON\n", path);
    if (ret_raw)
        *ret_raw = b.p;
    else
        free(b.p);
    return j;
}

/* Parses the options of a client command (--url, --json, --help) and sets up
 * c for the URL: --url, else $INFERD_URL, else DEFAULT_URL. Returns 0, or <0
 * after the usage or the URL's fault went to stderr. */
static int client_from_args(int argc, char **argv, const char *usage, bool *json, struct client *c)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'}, {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *url = getenv("INFERD_URL");
    if (!url || !*url)
        url = DEFAULT_URL;
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "u:jh", opts, NULL)) != -1) {
        switch (o) {
        case 'u': url = optarg; break;
        case 'j': *json = true; break;
        case 'h': printf("%s", usage); exit(0);
        default: fprintf(stderr, "%s", usage); return -EINVAL;
        }
    }
    return client_init(c, url);
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsString(v) ? v->valuestring : "-";
}

/* "1.5 MiB": byte counts as a person reads them. */
static void human_bytes(double b, char *out, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        u++;
    }
    snprintf(out, len, u ? "%.1f %s" : "%.0f %s", b, units[u]);
}

int ctl_status_main(int argc, char **argv)
{
    static const char usage[] =
        "Usage: inferctl status [--url URL] [--json]\n"
        "Shows what a running inferd is doing. URL defaults to $INFERD_URL or " DEFAULT_URL ";\n"
        "the API key comes from $INFERD_API_KEY.\n";
    bool json = false;
    struct client c;
    if (client_from_args(argc, argv, usage, &json, &c) < 0)
        return 2;
    char *raw = NULL;
    cJSON *s = get_json(&c, "/v1/status", &raw);
    if (!s) {
        free(raw);
        return 1;
    }
    if (json) {
        char *p = cJSON_Print(s);
        printf("%s\n", p);
        free(p);
        free(raw);
        cJSON_Delete(s);
        return 0;
    }
    double up = num(s, "uptime_s");
    printf("%-14s %s\n", "model", str(s, "model"));
    printf("%-14s %s\n", "state", str(s, "state"));
    printf("%-14s %s\n", "backend", str(s, "backend"));
    printf("%-14s %dd %02dh %02dm %02ds\n", "uptime", (int)(up / 86400), (int)(up / 3600) % 24, (int)(up / 60) % 60,
           (int)up % 60);
    const cJSON *rq = cJSON_GetObjectItem(s, "requests");
    if (rq) {
        printf("%-14s %s\n", "directory", str(s, "model_dir"));
        printf("%-14s %.0f tokens x %.0f sequences\n", "context", num(s, "context_length"), num(s, "max_sequences"));
        printf("%-14s %.0f in flight, %.0f queued, %.0f served\n", "requests", num(rq, "in_flight"), num(rq, "queued"),
               num(rq, "total"));
        const cJSON *tp = cJSON_GetObjectItem(s, "throughput");
        printf("%-14s prefill %.1f tok/s, decode %.1f tok/s (last 5 s)\n", "throughput",
               num(tp, "prefill_tokens_per_s"), num(tp, "decode_tokens_per_s"));
        printf("%-14s %.1f ms average\n", "first token", num(s, "ttft_avg_s") * 1000);
        const cJSON *kv = cJSON_GetObjectItem(s, "kv_cache");
        printf("%-14s %.0f / %.0f positions\n", "kv cache", num(kv, "used_positions"), num(kv, "capacity_positions"));
        const cJSON *fo = cJSON_GetObjectItem(s, "failover");
        if (fo && num(fo, "count") > 0) {
            const cJSON *lf = cJSON_GetObjectItem(fo, "last");
            printf("%-14s %.0f, %.0f tokens re-prefilled; last: worker %s, layers %s -> %s\n", "failovers",
                   num(fo, "count"), num(fo, "replayed_tokens"), str(lf, "worker"), str(lf, "layers"), str(lf, "to"));
        }
        const cJSON *layers = cJSON_GetObjectItem(s, "layers");
        if (cJSON_GetArraySize(layers) > 0) {
            printf("\n%-6s %-8s %14s %12s\n", "layer", "backend", "ms/forward", "total ms");
            const cJSON *l;
            cJSON_ArrayForEach(l, layers)
                printf("%-6.0f %-8s %14.3f %12.1f\n", num(l, "layer"), str(l, "backend"), num(l, "ms_per_forward"),
                       num(l, "ms_total"));
        }
    }
    const cJSON *workers = cJSON_GetObjectItem(s, "workers");
    printf("\n%-14s ", "workers");
    if (cJSON_GetArraySize(workers) == 0) {
        printf("none (single node)\n");
    } else {
        printf("\n  %-10s %-21s %-7s %-10s %7s %10s %10s %9s  %s\n", "NAME", "ADDRESS", "LAYERS", "STATE",
               "RTT ms", "SENT", "RECEIVED", "ms/token", "DETAIL");
        const cJSON *w;
        cJSON_ArrayForEach(w, workers) {
            char sent[32], received[32];
            human_bytes(num(w, "bytes_sent"), sent, sizeof(sent));
            human_bytes(num(w, "bytes_received"), received, sizeof(received));
            printf("  %-10s %-21s %-7s %-10s %7.2f %10s %10s %9.2f  %s\n", str(w, "name"), str(w, "address"),
                   str(w, "layers"), str(w, "state"), num(w, "rtt_ms"), sent, received,
                   num(w, "forward_ms_per_token"), str(w, "detail"));
        }
    }
    /* Several models: the state of each (one model: the lines above say it all). */
    const cJSON *models = cJSON_GetObjectItem(s, "models");
    if (cJSON_GetArraySize(models) > 1) {
        printf("\n%-14s\n  %-24s %-9s %10s %9s %8s %6s %8s  %s\n", "models", "NAME", "STATE", "MEMORY", "IN FLIGHT",
               "IDLE s", "LOADS", "UNLOADS", "DETAIL");
        const cJSON *m;
        cJSON_ArrayForEach(m, models) {
            char mem[32];
            human_bytes(num(m, "memory_estimate_bytes"), mem, sizeof(mem));
            const cJSON *def = cJSON_GetObjectItem(m, "default");
            printf("  %-24s %-9s %10s %9.0f %8.0f %6.0f %8.0f  %s%s\n", str(m, "name"), str(m, "state"), mem,
                   num(m, "requests_in_flight"), num(m, "idle_s"), num(m, "loads"), num(m, "unloads"),
                   cJSON_IsTrue(def) ? "default " : "", cJSON_GetObjectItem(m, "error") ? str(m, "error") : "");
        }
    }
    free(raw);
    cJSON_Delete(s);
    return 0;
}

int ctl_models_main(int argc, char **argv)
{
    static const char usage[] = "Usage: inferctl models [--url URL] [--json]\nLists the models a running inferd serves.\n";
    bool json = false;
    struct client c;
    if (client_from_args(argc, argv, usage, &json, &c) < 0)
        return 2;
    cJSON *m = get_json(&c, "/v1/models", NULL);
    if (!m)
        return 1;
    if (json) {
        char *p = cJSON_Print(m);
        printf("%s\n", p);
        free(p);
    } else {
        const cJSON *d;
        cJSON_ArrayForEach(d, cJSON_GetObjectItem(m, "data")) {
            const cJSON *ctx = cJSON_GetObjectItem(d, "context_length");
            if (cJSON_IsNumber(ctx))
                printf("%s\t%s\t(context %d)\n", str(d, "id"), str(d, "state"), ctx->valueint);
            else
                printf("%s\t%s\n", str(d, "id"), str(d, "state"));
        }
    }
    cJSON_Delete(m);
    return 0;
}

/* SSE parsing for `chat`: prints content deltas as they arrive. */
struct chat_stream {
    struct buf line;     /* partial line */
    struct buf reply;    /* the assistant's whole reply */
    char error[512];
    bool done;
};

static int chat_line(struct chat_stream *cs, const char *l)
{
    if (strncmp(l, "data: ", 6) != 0)
        return 0;
    l += 6;
    if (strcmp(l, "[DONE]") == 0) {
        cs->done = true;
        return 0;
    }
    cJSON *j = cJSON_Parse(l);
    if (!j)
        return 0;
    cJSON *err = cJSON_GetObjectItem(j, "error");
    if (err) {
        snprintf(cs->error, sizeof(cs->error), "%s", str(err, "message"));
    }
    const cJSON *ch;
    cJSON_ArrayForEach(ch, cJSON_GetObjectItem(j, "choices")) {
        const cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "delta"), "content");
        if (cJSON_IsString(content) && content->valuestring[0]) {
            fputs(content->valuestring, stdout);
            fflush(stdout);
            buf_sink(&cs->reply, content->valuestring, strlen(content->valuestring));
        }
    }
    cJSON_Delete(j);
    return 0;
}

static int chat_sink(void *ctx, const char *p, size_t n)
{
    struct chat_stream *cs = ctx;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            if (cs->line.p)
                chat_line(cs, cs->line.p);
            cs->line.len = 0;
            if (cs->line.p)
                cs->line.p[0] = '\0';
        } else if (buf_sink(&cs->line, p + i, 1) < 0) {
            return -ENOMEM;
        }
    }
    return 0;
}

int ctl_chat_main(int argc, char **argv)
{
    static const char usage[] =
        "Usage: inferctl chat [--url URL] [--system TEXT] [--max-tokens N] [--temperature T] [--model NAME]\n"
        "An interactive conversation with a running inferd; replies stream as they are\n"
        "generated. Type a message and Enter; /reset forgets the conversation; /quit or\n"
        "Ctrl-D leaves. The API key comes from $INFERD_API_KEY.\n";
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'}, {"system", required_argument, NULL, 's'},
        {"max-tokens", required_argument, NULL, 'n'}, {"temperature", required_argument, NULL, 't'},
        {"model", required_argument, NULL, 'm'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0},
    };
    const char *url = getenv("INFERD_URL");
    if (!url || !*url)
        url = DEFAULT_URL;
    const char *system = NULL, *model = NULL;
    int max_tokens = 512;
    double temperature = 0.7;
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "u:s:n:t:m:h", opts, NULL)) != -1) {
        switch (o) {
        case 'u': url = optarg; break;
        case 's': system = optarg; break;
        case 'n': max_tokens = atoi(optarg); break;
        case 't': temperature = atof(optarg); break;
        case 'm': model = optarg; break;
        case 'h': printf("%s", usage); return 0;
        default: fprintf(stderr, "%s", usage); return 2;
        }
    }
    if (max_tokens < 1) {
        fprintf(stderr, "inferctl chat: --max-tokens must be at least 1\n");
        return 2;
    }
    struct client c;
    if (client_init(&c, url) < 0)
        return 2;
    cJSON *messages = cJSON_CreateArray();
    if (system) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", system);
        cJSON_AddItemToArray(messages, m);
    }
    bool tty = isatty(STDIN_FILENO);
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    for (;;) {
        if (tty) {
            printf("> ");
            fflush(stdout);
        }
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0)
            break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        if (strcmp(line, "/quit") == 0 || strcmp(line, "/exit") == 0)
            break;
        if (strcmp(line, "/reset") == 0) {
            while (cJSON_GetArraySize(messages) > (system ? 1 : 0))
                cJSON_DeleteItemFromArray(messages, cJSON_GetArraySize(messages) - 1);
            continue;
        }
        cJSON *um = cJSON_CreateObject();
        cJSON_AddStringToObject(um, "role", "user");
        cJSON_AddStringToObject(um, "content", line);
        cJSON_AddItemToArray(messages, um);
        cJSON *req = cJSON_CreateObject();
        if (model)
            cJSON_AddStringToObject(req, "model", model);
        cJSON_AddItemReferenceToObject(req, "messages", messages);
        cJSON_AddNumberToObject(req, "max_tokens", max_tokens);
        cJSON_AddNumberToObject(req, "temperature", temperature);
        cJSON_AddBoolToObject(req, "stream", true);
        char *body = cJSON_PrintUnformatted(req);
        cJSON_Delete(req);
        struct chat_stream cs = {0};
        int status = 0;
        int r = body ? client_request(&c, "POST", "/v1/chat/completions", body, chat_sink, &cs, &status) : -ENOMEM;
        free(body);
        printf("\n");
        if (r < 0 || status != 200 || cs.error[0]) {
            if (status && status != 200)
                print_error_body(status, cs.line.p);
            else if (cs.error[0])
                fprintf(stderr, "inferctl: %s\n", cs.error);
            /* Forget the unanswered message. */
            cJSON_DeleteItemFromArray(messages, cJSON_GetArraySize(messages) - 1);
            rc = 1;
        } else {
            cJSON *am = cJSON_CreateObject();
            cJSON_AddStringToObject(am, "role", "assistant");
            cJSON_AddStringToObject(am, "content", cs.reply.p ? cs.reply.p : "");
            cJSON_AddItemToArray(messages, am);
            rc = 0;
        }
        free(cs.line.p);
        free(cs.reply.p);
    }
    free(line);
    cJSON_Delete(messages);
    return rc;
}
