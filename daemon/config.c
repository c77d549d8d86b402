/* config.c - see config.h. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <ini.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cpu.h"
#include "hub/hf_cache.h"
#include "log.h"
#include "tools.h"

int inferd_config_init(struct inferd_config *c)
{
    memset(c, 0, sizeof(*c));
    c->listen = strdup(INFERD_DEFAULT_LISTEN);
    c->cache_dir = strdup(INFERD_DEFAULT_CACHE_DIR);
    if (!c->listen || !c->cache_dir) {
        inferd_config_finish(c);
        return -ENOMEM;
    }
    c->max_body_bytes = 4u << 20;
    c->queue_depth = 64;
    c->max_seqs = 8;
    c->ctx_len = 0;
    c->prefill_chunk = 128;
    c->prefix_cache = true;
    c->drain_timeout_s = 30;
    c->max_connections = 512;
    c->max_connections_per_ip = 32;
    c->request_timeout_s = 60;
    c->parse_memory = 512u << 20;
    c->max_tokenize_bytes = 256u << 10;
    c->log_level = LOG_LEVEL_INFO;
    c->role = INFERD_ROLE_MASTER;
    c->backend = INFERD_BACKEND_AUTO;
    c->quantize_group_size = 64;
    c->threads = 0;
    c->simd = -1;
    c->cluster_io_timeout_s = 30;
    c->cluster_failover_timeout_s = 30;
    c->cluster_failover_memory = -1;
    return 0;
}

static void models_free(struct inferd_model_cfg *m, int n)
{
    for (int i = 0; i < n; i++) {
        free(m[i].name);
        free(m[i].path);
        free(m[i].chat_template_path);
    }
    free(m);
}

static void workers_free(struct inferd_worker_cfg *w, int n)
{
    for (int i = 0; i < n; i++) {
        free(w[i].name);
        free(w[i].address);
    }
    free(w);
}

void inferd_config_finish(struct inferd_config *c)
{
    if (!c)
        return;
    free(c->config_path);
    free(c->listen);
    for (int i = 0; i < c->n_api_keys; i++) {
        /* Keys are secrets: do not leave them in freed heap memory. */
        explicit_bzero(c->api_keys[i], strlen(c->api_keys[i]));
        free(c->api_keys[i]);
    }
    free(c->api_keys);
    free(c->api_key_file);
    free(c->served_model_name);
    for (int i = 0; i < c->n_cors_origins; i++)
        free(c->cors_origins[i]);
    free(c->cors_origins);
    free(c->model_path);
    free(c->chat_template_path);
    free(c->worker_listen);
    free(c->cache_dir);
    free(c->cluster_key_file);
    for (int i = 0; i < c->n_next_hops; i++)
        free(c->next_hops[i]);
    free(c->next_hops);
    workers_free(c->workers, c->n_workers);
    models_free(c->models, c->n_models);
    memset(c, 0, sizeof(*c));
}

/* ---- value parsers: each names `what` (key or flag) in its message ---- */

static int set_str(char **dst, const char *v, const char *what, ifd_error *err)
{
    char *s = strdup(v);
    if (!s)
        return ifd_error_set(err, -ENOMEM, "%s: out of memory", what);
    free(*dst);
    *dst = s;
    return 0;
}

static int parse_int(const char *v, long lo, long hi, const char *what, int *ret, ifd_error *err)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end != '\0')
        return ifd_error_set(err, -EINVAL, "%s: '%s' is not an integer", what, v);
    if (x < lo || x > hi)
        return ifd_error_set(err, -ERANGE, "%s: %ld is out of range [%ld, %ld]", what, x, lo, hi);
    *ret = (int)x;
    return 0;
}

/* "auto" (0) or a count of micro-batches in flight. */
static int parse_micro_batches(const char *v, const char *what, int *ret, ifd_error *err)
{
    if (strcmp(v, "auto") == 0) {
        *ret = 0;
        return 0;
    }
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end != '\0')
        return ifd_error_set(err, -EINVAL, "%s: '%s' is neither 'auto' nor a number of micro-batches", what, v);
    if (x < 1 || x > INFERD_MAX_MICRO_BATCHES)
        return ifd_error_set(err, -ERANGE, "%s: %ld is out of range [1, %d] (or 'auto')", what, x,
                             INFERD_MAX_MICRO_BATCHES);
    *ret = (int)x;
    return 0;
}

/* Sizes accept K/M/G suffixes (powers of 1024). */
static int parse_size(const char *v, size_t lo, size_t hi, const char *what, size_t *ret, ifd_error *err)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || v[0] == '-')
        return ifd_error_set(err, -EINVAL, "%s: '%s' is not a size", what, v);
    unsigned long long mul = 1;
    if (*end) {
        switch (*end) {
        case 'k': case 'K': mul = 1ull << 10; break;
        case 'm': case 'M': mul = 1ull << 20; break;
        case 'g': case 'G': mul = 1ull << 30; break;
        default:
            return ifd_error_set(err, -EINVAL, "%s: '%s' is not a size (use K, M or G)", what, v);
        }
        if (end[1] != '\0' && !(end[1] == 'B' && end[2] == '\0') && !(end[1] == 'i' && end[2] == 'B' && end[3] == '\0'))
            return ifd_error_set(err, -EINVAL, "%s: '%s' is not a size", what, v);
    }
    if (x > (unsigned long long)SIZE_MAX / mul)
        return ifd_error_set(err, -ERANGE, "%s: '%s' is too large", what, v);
    x *= mul;
    if (x < lo || x > hi)
        return ifd_error_set(err, -ERANGE, "%s: %llu bytes is out of range [%zu, %zu]", what, x, lo, hi);
    *ret = (size_t)x;
    return 0;
}

static int parse_bool(const char *v, const char *what, bool *ret, ifd_error *err)
{
    static const char *yes[] = {"1", "yes", "true", "on"};
    static const char *no[] = {"0", "no", "false", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *ret = true;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *ret = false;
            return 0;
        }
    }
    return ifd_error_set(err, -EINVAL, "%s: '%s' is not a boolean (true/false)", what, v);
}

static int parse_role(const char *v, const char *what, enum inferd_role *ret, ifd_error *err)
{
    if (strcmp(v, "master") == 0)
        *ret = INFERD_ROLE_MASTER;
    else if (strcmp(v, "worker") == 0)
        *ret = INFERD_ROLE_WORKER;
    else
        return ifd_error_set(err, -EINVAL, "%s: '%s' is not a role (master or worker)", what, v);
    return 0;
}

static int parse_quantize(const char *v, const char *what, int *ret, ifd_error *err)
{
    if (strcmp(v, "none") == 0 || strcmp(v, "off") == 0)
        *ret = 0;
    else if (strcmp(v, "q4") == 0)
        *ret = 4;
    else if (strcmp(v, "q8") == 0)
        *ret = 8;
    else
        return ifd_error_set(err, -EINVAL, "%s: '%s' is not a quantization (q4, q8 or none)", what, v);
    return 0;
}

static int parse_backend(const char *v, const char *what, enum inferd_backend *ret, ifd_error *err)
{
    if (strcmp(v, "auto") == 0)
        *ret = INFERD_BACKEND_AUTO;
    else if (strcmp(v, "cpu") == 0)
        *ret = INFERD_BACKEND_CPU;
    else if (strcmp(v, "vulkan") == 0)
        *ret = INFERD_BACKEND_VULKAN;
    else
        return ifd_error_set(err, -EINVAL, "%s: '%s' is not a backend (cpu, vulkan or auto)", what, v);
    return 0;
}

static int parse_level(const char *v, const char *what, int *ret, ifd_error *err)
{
    int l = log_level_parse(v);
    if (l < 0)
        return ifd_error_set(err, -EINVAL, "%s: '%s' is not a log level (err, warning, notice, info, debug)",
                             what, v);
    *ret = l;
    return 0;
}

int inferd_config_split_hostport(const char *s, int default_port, char **ret_host, int *ret_port,
                                 ifd_error *err)
{
    const char *host = s, *port = NULL;
    size_t host_len;
    if (!s || !*s)
        return ifd_error_set(err, -EINVAL, "empty address");
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close)
            return ifd_error_set(err, -EINVAL, "'%s': missing ']'", s);
        host = s + 1;
        host_len = (size_t)(close - host);
        if (close[1] == ':')
            port = close + 2;
        else if (close[1] != '\0')
            return ifd_error_set(err, -EINVAL, "'%s': expected ':' after ']'", s);
    } else {
        const char *colon = strrchr(s, ':');
        if (colon && strchr(s, ':') != colon)
            return ifd_error_set(err, -EINVAL, "'%s': write IPv6 addresses as [addr]:port", s);
        if (colon) {
            host_len = (size_t)(colon - s);
            port = colon + 1;
        } else if (strspn(s, "0123456789") == strlen(s)) {
            /* A bare port: every interface would surprise; keep loopback. */
            host = "127.0.0.1";
            host_len = strlen(host);
            port = s;
        } else {
            host_len = strlen(s);
        }
    }
    if (host_len == 0)
        return ifd_error_set(err, -EINVAL, "'%s': empty host", s);
    int p = default_port;
    if (port) {
        ifd_error e2;
        if (parse_int(port, 1, 65535, "port", &p, &e2) < 0)
            return ifd_error_set(err, -EINVAL, "'%s': bad port (1-65535)", s);
    }
    if (p <= 0)
        return ifd_error_set(err, -EINVAL, "'%s': no port given", s);
    char *h = strndup(host, host_len);
    if (!h)
        return -ENOMEM;
    *ret_host = h;
    *ret_port = p;
    return 0;
}

static int check_hostport(const char *v, int default_port, const char *what, ifd_error *err)
{
    char *h;
    int p;
    int r = inferd_config_split_hostport(v, default_port, &h, &p, err);
    if (r < 0) {
        ifd_error_prefix(err, "%s", what);
        return r;
    }
    free(h);
    return 0;
}

/* Parses "FIRST-LAST" (inclusive) or "auto"; for --worker also "standby". */
static int inferd_config_parse_layers(const char *s, bool standby_ok, struct inferd_worker_cfg *w, ifd_error *err)
{
    if (standby_ok && strcmp(s, "standby") == 0) {
        w->standby = true;
        return 0;
    }
    if (strcmp(s, "auto") == 0) {
        w->auto_layers = true;
        w->layer_first = w->layer_last = -1;
        return 0;
    }
    char *end;
    errno = 0;
    long a = strtol(s, &end, 10);
    if (errno || end == s || *end != '-' || a < 0)
        return ifd_error_set(err, -EINVAL, "layers '%s': expected FIRST-LAST (inclusive) or auto", s);
    const char *s2 = end + 1;
    long b = strtol(s2, &end, 10);
    if (errno || end == s2 || *end != '\0' || b < 0)
        return ifd_error_set(err, -EINVAL, "layers '%s': expected FIRST-LAST (inclusive) or auto", s);
    if (b < a)
        return ifd_error_set(err, -EINVAL, "layers '%s': last layer before first", s);
    if (b >= 100000)
        return ifd_error_set(err, -ERANGE, "layers '%s': layer index too large", s);
    w->auto_layers = false;
    w->layer_first = (int)a;
    w->layer_last = (int)b + 1;
    return 0;
}

static int add_key(struct inferd_config *c, const char *key, const char *what, ifd_error *err)
{
    size_t len = strlen(key);
    if (len == 0)
        return 0;
    if (len > INFERD_MAX_KEY_LEN)
        return ifd_error_set(err, -EINVAL, "%s: key longer than %d bytes", what, INFERD_MAX_KEY_LEN);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)key[i] <= ' ' || key[i] == 0x7f)
            return ifd_error_set(err, -EINVAL, "%s: key contains whitespace or control characters", what);
    if (c->n_api_keys >= INFERD_MAX_API_KEYS)
        return ifd_error_set(err, -E2BIG, "%s: more than %d API keys", what, INFERD_MAX_API_KEYS);
    char **k = realloc(c->api_keys, sizeof(*k) * (size_t)(c->n_api_keys + 1));
    if (!k)
        return -ENOMEM;
    c->api_keys = k;
    if (!(k[c->n_api_keys] = strdup(key)))
        return -ENOMEM;
    c->n_api_keys++;
    return 0;
}

/* api_keys = a, b c: comma or space separated. */
static int add_key_list(struct inferd_config *c, const char *v, const char *what, ifd_error *err)
{
    char *copy = strdup(v), *save = NULL;
    if (!copy)
        return -ENOMEM;
    int r = 0;
    for (char *tok = strtok_r(copy, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save))
        if ((r = add_key(c, tok, what, err)) < 0)
            break;
    explicit_bzero(copy, strlen(v));
    free(copy);
    return r;
}

/* A list value, comma or space separated: each item checked by check, then
 * appended to (*v)[*n], at most max items in all (noun names them). */
static int add_list(char ***v, int *n, int max, const char *noun, const char *value, const char *what,
                    int (*check)(const char *item, const char *what, ifd_error *err), ifd_error *err)
{
    char *copy = strdup(value), *save = NULL;
    if (!copy)
        return -ENOMEM;
    int r = 0;
    for (char *tok = strtok_r(copy, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
        if ((r = check(tok, what, err)) < 0)
            break;
        if (*n >= max) {
            r = ifd_error_set(err, -E2BIG, "%s: more than %d %s", what, max, noun);
            break;
        }
        char **nv = realloc(*v, sizeof(*nv) * (size_t)(*n + 1));
        if (nv)
            *v = nv;
        if (!nv || !(nv[*n] = strdup(tok))) {
            r = -ENOMEM;
            break;
        }
        (*n)++;
    }
    free(copy);
    return r;
}

/* next_hops items: "host:port", "host" or "*". */
static int check_next_hop(const char *item, const char *what, ifd_error *err)
{
    return strcmp(item, "*") == 0 ? 0 : check_hostport(item, INFERD_DEFAULT_WORKER_PORT, what, err);
}

/* cors_origins items: origins as browsers send them (scheme://host[:port],
 * no path), or "*" for any. */
static int check_origin(const char *item, const char *what, ifd_error *err)
{
    size_t len = strlen(item);
    const char *host = strstr(item, "://");
    bool ok = strcmp(item, "*") == 0 ||
              (len <= INFERD_MAX_ORIGIN_LEN && host && host > item && host[3] && !strchr(host + 3, '/') &&
               strspn(item, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.") == (size_t)(host - item));
    return ok ? 0 : ifd_error_set(err, -EINVAL, "%s: '%.64s' is not an origin (scheme://host[:port], or *)", what, item);
}

static struct inferd_worker_cfg *worker_get(struct inferd_config *c, const char *name, ifd_error *err)
{
    for (int i = 0; i < c->n_workers; i++)
        if (strcmp(c->workers[i].name, name) == 0)
            return &c->workers[i];
    if (c->n_workers >= INFERD_MAX_WORKERS) {
        ifd_error_set(err, -E2BIG, "more than %d workers", INFERD_MAX_WORKERS);
        return NULL;
    }
    struct inferd_worker_cfg *w = realloc(c->workers, sizeof(*w) * (size_t)(c->n_workers + 1));
    if (!w) {
        ifd_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    c->workers = w;
    struct inferd_worker_cfg *nw = &w[c->n_workers];
    memset(nw, 0, sizeof(*nw));
    nw->layer_first = nw->layer_last = -1;
    if (!(nw->name = strdup(name))) {
        ifd_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    c->n_workers++;
    return nw;
}

/* --worker HOST:PORT=FIRST-LAST|auto|standby */
static int add_worker_flag(struct inferd_config *c, const char *v, ifd_error *err)
{
    const char *eq = strrchr(v, '=');
    if (!eq)
        return ifd_error_set(err, -EINVAL,
                             "--worker '%s': expected HOST:PORT=FIRST-LAST, HOST:PORT=auto or HOST:PORT=standby", v);
    char name[32];
    snprintf(name, sizeof(name), "flag%d", c->n_workers);
    struct inferd_worker_cfg tmp = {.layer_first = -1, .layer_last = -1};
    int r = inferd_config_parse_layers(eq + 1, true, &tmp, err);
    if (r < 0) {
        ifd_error_prefix(err, "--worker '%s'", v);
        return r;
    }
    char *addr = strndup(v, (size_t)(eq - v));
    if (!addr)
        return -ENOMEM;
    if ((r = check_hostport(addr, INFERD_DEFAULT_WORKER_PORT, "--worker", err)) < 0) {
        free(addr);
        return r;
    }
    struct inferd_worker_cfg *w = worker_get(c, name, err);
    if (!w) {
        free(addr);
        return -ENOMEM;
    }
    w->address = addr;
    w->layer_first = tmp.layer_first;
    w->layer_last = tmp.layer_last;
    w->auto_layers = tmp.auto_layers;
    w->standby = tmp.standby;
    return 0;
}

/* The [model.NAME] section called name, added at its first key. */
static struct inferd_model_cfg *model_get(struct inferd_config *c, const char *name, ifd_error *err)
{
    for (int i = 0; i < c->n_models; i++)
        if (strcmp(c->models[i].name, name) == 0)
            return &c->models[i];
    if (c->n_models >= INFERD_MAX_MODELS) {
        ifd_error_set(err, -E2BIG, "more than %d [model.NAME] sections", INFERD_MAX_MODELS);
        return NULL;
    }
    /* The name is what clients send as "model" and what logs, metrics
     * labels and JSON carry: printable, no spaces or quotes. */
    size_t len = strlen(name);
    bool ok = len > 0 && len <= INFERD_MAX_MODEL_NAME;
    for (size_t i = 0; ok && i < len; i++) {
        unsigned char ch = (unsigned char)name[i];
        ok = ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\\';
    }
    if (!ok) {
        ifd_error_set(err, -EINVAL, "[model.%.200s]: a model name is 1-%d printable ASCII characters without spaces or quotes",
                      name, INFERD_MAX_MODEL_NAME);
        return NULL;
    }
    struct inferd_model_cfg *m = realloc(c->models, sizeof(*m) * (size_t)(c->n_models + 1));
    if (!m) {
        ifd_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    c->models = m;
    struct inferd_model_cfg *nm = &m[c->n_models];
    memset(nm, 0, sizeof(*nm));
    nm->quantize_group_size = 64;
    nm->idle_unload_s = INFERD_DEFAULT_IDLE_UNLOAD_S;
    if (!(nm->name = strdup(name))) {
        ifd_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    c->n_models++;
    return nm;
}

/* pooling = last | mean: how /v1/embeddings reduces a text's positions. */
static int parse_pooling(const char *v, const char *what, bool *ret_mean, ifd_error *err)
{
    if (strcmp(v, "last") == 0 || strcmp(v, "mean") == 0) {
        *ret_mean = v[0] == 'm';
        return 0;
    }
    return ifd_error_set(err, -EINVAL, "%s: '%s' is not a pooling (last or mean)", what, v);
}

/* reasoning = auto | none | think (tools.h): whether <think>...</think>
 * in a reply is reasoning_content. */
static int parse_reasoning(const char *v, const char *what, int *out, ifd_error *err)
{
    static const char *const names[] = {[TOOLS_REASONING_AUTO] = "auto", [TOOLS_REASONING_NONE] = "none",
                                        [TOOLS_REASONING_THINK] = "think"};
    for (int i = 0; i < (int)(sizeof(names) / sizeof(names[0])); i++)
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return 0;
        }
    return ifd_error_set(err, -EINVAL, "%s: '%s' is not auto, none or think", what, v);
}

static int model_section_set(struct inferd_config *c, const char *name, const char *key, const char *v,
                             const char *what, ifd_error *err)
{
    struct inferd_model_cfg *m = model_get(c, name, err);
    if (!m)
        return -EINVAL;
    if (strcmp(key, "path") == 0)
        return set_str(&m->path, v, what, err);
    if (strcmp(key, "chat_template") == 0)
        return set_str(&m->chat_template_path, v, what, err);
    if (strcmp(key, "quantize") == 0)
        return parse_quantize(v, what, &m->quantize_bits, err);
    if (strcmp(key, "quantize_group_size") == 0)
        return parse_int(v, 32, 128, what, &m->quantize_group_size, err);
    if (strcmp(key, "reasoning") == 0)
        return parse_reasoning(v, what, &m->reasoning, err);
    if (strcmp(key, "preload") == 0)
        return parse_bool(v, what, &m->preload, err);
    if (strcmp(key, "pooling") == 0)
        return parse_pooling(v, what, &m->pool_mean, err);
    if (strcmp(key, "idle_unload") == 0)
        return parse_int(v, 0, 30 * 86400, what, &m->idle_unload_s, err);
    return ifd_error_set(err, -EINVAL,
                         "%s: unknown key (model sections take path, chat_template, quantize, quantize_group_size, "
                         "pooling, reasoning, preload and idle_unload)", what);
}

/* Every key of the file, with the flag that overrides it (if any): the one
 * table behind the parser, the flags and the documentation check. */
static int config_set(struct inferd_config *c, const char *section, const char *key, const char *v,
                      const char *what, ifd_error *err)
{
#define IS(s, k) (strcmp(section, s) == 0 && strcmp(key, k) == 0)
    if (IS("server", "listen")) {
        int r = check_hostport(v, 8080, what, err);
        return r < 0 ? r : set_str(&c->listen, v, what, err);
    }
    if (IS("server", "api_keys"))
        return add_key_list(c, v, what, err);
    if (IS("server", "api_key_file"))
        return set_str(&c->api_key_file, v, what, err);
    if (IS("server", "max_body_bytes"))
        return parse_size(v, 1024, (size_t)1 << 30, what, &c->max_body_bytes, err);
    if (IS("server", "queue_depth"))
        return parse_int(v, 0, 100000, what, &c->queue_depth, err);
    if (IS("server", "max_sequences"))
        return parse_int(v, 1, 1024, what, &c->max_seqs, err);
    if (IS("server", "context_length"))
        return parse_int(v, 0, 1 << 20, what, &c->ctx_len, err);
    if (IS("server", "prefill_chunk"))
        return parse_int(v, 1, 8192, what, &c->prefill_chunk, err);
    if (IS("server", "prefix_cache"))
        return parse_bool(v, what, &c->prefix_cache, err);
    if (IS("server", "drain_timeout"))
        return parse_int(v, 0, 3600, what, &c->drain_timeout_s, err);
    if (IS("server", "max_connections"))
        return parse_int(v, 1, 65536, what, &c->max_connections, err);
    if (IS("server", "max_connections_per_ip"))
        return parse_int(v, 0, 65536, what, &c->max_connections_per_ip, err);
    if (IS("server", "request_timeout"))
        return parse_int(v, 1, 3600, what, &c->request_timeout_s, err);
    if (IS("server", "parse_memory"))
        return parse_size(v, 1u << 20, (size_t)1 << 40, what, &c->parse_memory, err);
    if (IS("server", "max_tokenize_bytes"))
        return parse_size(v, 1024, (size_t)1 << 30, what, &c->max_tokenize_bytes, err);
    if (IS("server", "log_level"))
        return parse_level(v, what, &c->log_level, err);
    if (IS("server", "model_name"))
        return set_str(&c->served_model_name, v, what, err);
    if (IS("server", "cors_origins"))
        return add_list(&c->cors_origins, &c->n_cors_origins, INFERD_MAX_CORS_ORIGINS, "origins", v, what,
                        check_origin, err);
    if (IS("server", "models_memory"))
        return parse_size(v, 0, (size_t)1 << 50, what, &c->models_memory, err);
    if (IS("model", "path"))
        return set_str(&c->model_path, v, what, err);
    if (IS("model", "chat_template"))
        return set_str(&c->chat_template_path, v, what, err);
    if (IS("model", "quantize"))
        return parse_quantize(v, what, &c->quantize_bits, err);
    if (IS("model", "quantize_group_size"))
        return parse_int(v, 32, 128, what, &c->quantize_group_size, err);
    if (IS("model", "pooling"))
        return parse_pooling(v, what, &c->pool_mean, err);
    if (IS("model", "reasoning"))
        return parse_reasoning(v, what, &c->reasoning, err);
    if (IS("node", "role"))
        return parse_role(v, what, &c->role, err);
    if (IS("node", "backend"))
        return parse_backend(v, what, &c->backend, err);
    if (IS("node", "device"))
        return parse_int(v, 0, 64, what, &c->device, err);
    if (IS("node", "threads"))
        return parse_int(v, 0, 1024, what, &c->threads, err);
    if (IS("node", "simd"))
        return cpu_simd_choose(v, what, &c->simd, err); /* a level the CPU lacks would die on its first instruction */
    if (IS("node", "listen_worker")) {
        int r = check_hostport(v, INFERD_DEFAULT_WORKER_PORT, what, err);
        return r < 0 ? r : set_str(&c->worker_listen, v, what, err);
    }
    if (IS("node", "cache_dir"))
        return set_str(&c->cache_dir, v, what, err);
    if (IS("node", "cache_max_bytes"))
        return parse_size(v, 0, (size_t)1 << 50, what, &c->cache_max_bytes, err);
    if (IS("node", "memory_max_bytes"))
        return parse_size(v, 0, (size_t)1 << 50, what, &c->memory_max_bytes, err);
    if (IS("cluster", "key_file"))
        return set_str(&c->cluster_key_file, v, what, err);
    if (IS("cluster", "allow_insecure"))
        return parse_bool(v, what, &c->allow_insecure_cluster, err);
    if (IS("cluster", "io_timeout"))
        return parse_int(v, 1, 3600, what, &c->cluster_io_timeout_s, err);
    if (IS("cluster", "failover_timeout"))
        return parse_int(v, 1, 3600, what, &c->cluster_failover_timeout_s, err);
    if (IS("cluster", "failover_memory")) {
        size_t b;
        int r = parse_size(v, 0, (size_t)1 << 50, what, &b, err);
        if (r >= 0)
            c->cluster_failover_memory = (int64_t)b;
        return r;
    }
    if (IS("cluster", "micro_batches"))
        return parse_micro_batches(v, what, &c->micro_batches, err);
    if (IS("cluster", "next_hops"))
        return add_list(&c->next_hops, &c->n_next_hops, INFERD_MAX_WORKERS, "next hops", v, what, check_next_hop,
                        err);
#undef IS
    if (strncmp(section, "worker.", 7) == 0) {
        if (section[7] == '\0')
            return ifd_error_set(err, -EINVAL, "[worker.]: section needs a name, e.g. [worker.gpu1]");
        struct inferd_worker_cfg *w = worker_get(c, section + 7, err);
        if (!w)
            return -ENOMEM;
        if (strcmp(key, "address") == 0) {
            int r = check_hostport(v, INFERD_DEFAULT_WORKER_PORT, what, err);
            return r < 0 ? r : set_str(&w->address, v, what, err);
        }
        if (strcmp(key, "layers") == 0) {
            int r = inferd_config_parse_layers(v, false, w, err);
            if (r < 0)
                ifd_error_prefix(err, "%s", what);
            return r;
        }
        if (strcmp(key, "standby") == 0)
            return parse_bool(v, what, &w->standby, err);
        return ifd_error_set(err, -EINVAL, "%s: unknown key (worker sections take address, layers and standby)",
                             what);
    }
    if (strncmp(section, "model.", 6) == 0)
        return model_section_set(c, section + 6, key, v, what, err);
    static const char *sections[] = {"server", "model", "node", "cluster"};
    for (size_t i = 0; i < 4; i++)
        if (strcmp(section, sections[i]) == 0)
            return ifd_error_set(err, -EINVAL, "%s: unknown key", what);
    return ifd_error_set(err, -EINVAL, "%s: unknown section [%s]", what, section);
}

struct ini_ctx {
    struct inferd_config *c;
    const char *origin;
    int rc;
    ifd_error err;
    int line;  /* counted by inih through the returned line; 0 here */
};

static int ini_cb(void *user, const char *section, const char *name, const char *value)
{
    struct ini_ctx *x = user;
    if (x->rc < 0)
        return 0;  /* keep the first error only */
    char what[256];
    snprintf(what, sizeof(what), "[%s] %s", section, name ? name : "");
    if (!name)  /* INI_CALL_HANDLER_ON_NEW_SECTION builds: a bare section */
        return 1;
    int r = config_set(x->c, section, name, value ? value : "", what, &x->err);
    if (r < 0) {
        x->rc = r;
        return 0;
    }
    return 1;
}

static int finish_parse(struct ini_ctx *x, int line, ifd_error *err)
{
    if (line < 0)
        return ifd_error_set(err, line == -1 ? -ENOENT : -ENOMEM, "%s: cannot read", x->origin);
    if (x->rc < 0)
        return ifd_error_set(err, x->rc, "%s:%d: %s", x->origin, line, x->err.msg);
    if (line > 0)
        return ifd_error_set(err, -EINVAL, "%s:%d: syntax error (expected [section] or key = value)",
                             x->origin, line);
    return 0;
}

int inferd_config_parse_string(struct inferd_config *c, const char *text, const char *origin,
                               ifd_error *err)
{
    struct ini_ctx x = {.c = c, .origin = origin};
    return finish_parse(&x, ini_parse_string(text, ini_cb, &x), err);
}

/* A file holding API keys must be private, as sshd wants of its keys:
 * never readable or writable by others, and not by the group when the file
 * is inferd's own (a root-owned file readable by inferd's group is the usual
 * packaging). */
static int check_secret_mode(const struct stat *st, const char *what, const char *path, const char *fix,
                             ifd_error *err)
{
    if ((st->st_mode & 0007) || ((st->st_mode & 0070) && st->st_uid == geteuid()))
        return ifd_error_set(err, -EPERM, "%s '%s': readable or writable by %s (mode %04o); %s", what, path,
                             (st->st_mode & 0007) ? "others" : "its group", (unsigned)(st->st_mode & 07777), fix);
    return 0;
}

static int inferd_config_parse_file(struct inferd_config *c, const char *path, ifd_error *err)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return ifd_error_set(err, -errno, "Failed to open config '%s': %s", path, strerror(errno));
    struct ini_ctx x = {.c = c, .origin = path};
    int keys_before = c->n_api_keys;
    int line = ini_parse_file(f, ini_cb, &x);
    struct stat st;
    bool have_st = fstat(fileno(f), &st) == 0;
    fclose(f);
    int r = finish_parse(&x, line, err);
    /* Keys written in the file are as exposed as the file: as for argv, a
     * key others can read is refused rather than warned about. */
    if (r == 0 && c->n_api_keys > keys_before && have_st && S_ISREG(st.st_mode))
        r = check_secret_mode(&st, "config with [server] api_keys", path,
                              "chmod 600 it, or move the keys to api_key_file", err);
    return r;
}

static int key_file_open(const char *path, FILE **ret, ifd_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ifd_error_set(err, -errno, "Failed to open API key file '%s': %s", path, strerror(errno));
    struct stat st;
    int r = 0;
    if (fstat(fd, &st) < 0)
        r = ifd_error_set(err, -errno, "API key file '%s': %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        r = ifd_error_set(err, -EINVAL, "API key file '%s': not a regular file", path);
    else
        r = check_secret_mode(&st, "API key file", path, "chmod 600 it", err);
    FILE *f = r < 0 ? NULL : fdopen(fd, "r");
    if (!f) {
        if (r == 0)
            r = ifd_error_set(err, -errno, "API key file '%s': %s", path, strerror(errno));
        close(fd);
        return r;
    }
    *ret = f;
    return 0;
}

/* Reads the API key file (one key per line) and appends its keys. */
static int inferd_config_read_key_file(struct inferd_config *c, ifd_error *err)
{
    if (!c->api_key_file)
        return 0;
    FILE *f = NULL;
    int kr = key_file_open(c->api_key_file, &f, err);
    if (kr < 0)
        return kr;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int r = 0, lineno = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t'))
            line[--n] = '\0';
        char *s = line + strspn(line, " \t");
        if (*s == '\0' || *s == '#')
            continue;
        char what[64];
        snprintf(what, sizeof(what), "line %d", lineno);
        if ((r = add_key(c, s, what, err)) < 0) {
            ifd_error_prefix(err, "%s", c->api_key_file);
            break;
        }
    }
    if (line) {
        explicit_bzero(line, cap);
        free(line);
    }
    fclose(f);
    return r;
}

int inferd_config_validate(const struct inferd_config *c, ifd_error *err)
{
    if (c->role == INFERD_ROLE_MASTER && (!c->model_path || !*c->model_path))
        return ifd_error_set(err, -EINVAL, "no model: set [model] path in the config or pass --model DIR");
    if (c->role == INFERD_ROLE_WORKER && c->n_workers > 0)
        return ifd_error_set(err, -EINVAL, "role=worker: [worker.*] sections are for the master only");
    for (int i = 0; i < c->n_workers; i++) {
        const struct inferd_worker_cfg *w = &c->workers[i];
        if (!w->address)
            return ifd_error_set(err, -EINVAL, "[worker.%s]: no address", w->name);
        if (w->standby && (w->auto_layers || w->layer_first >= 0))
            return ifd_error_set(err, -EINVAL, "[worker.%s]: a standby worker holds no layers (drop layers or standby)",
                                 w->name);
        if (!w->standby && !w->auto_layers && w->layer_first < 0)
            return ifd_error_set(err, -EINVAL, "[worker.%s]: no layers (FIRST-LAST or auto, or standby = true)",
                                 w->name);
        for (int j = 0; j < i; j++) {
            const struct inferd_worker_cfg *o = &c->workers[j];
            if (w->auto_layers || o->auto_layers || w->standby || o->standby)
                continue;
            if (w->layer_first < o->layer_last && o->layer_first < w->layer_last)
                return ifd_error_set(err, -EINVAL,
                                     "[worker.%s] layers %d-%d overlap [worker.%s] layers %d-%d",
                                     w->name, w->layer_first, w->layer_last - 1, o->name,
                                     o->layer_first, o->layer_last - 1);
        }
    }
    if (c->max_seqs < 1)
        return ifd_error_set(err, -EINVAL, "[server] max_sequences must be at least 1");
    if (c->role == INFERD_ROLE_MASTER && c->memory_max_bytes)
        return ifd_error_set(err, -EINVAL, "[node] memory_max_bytes is for role=worker (a master's own models "
                                           "are bounded by [server] models_memory)");
    if (c->role == INFERD_ROLE_WORKER && c->n_models > 0)
        return ifd_error_set(err, -EINVAL, "role=worker: [model.%s] is for the master only", c->models[0].name);
    for (int i = 0; i < c->n_models; i++) {
        const struct inferd_model_cfg *m = &c->models[i];
        if (!m->path || !*m->path)
            return ifd_error_set(err, -EINVAL, "[model.%s]: no path", m->name);
        if (c->served_model_name && strcmp(m->name, c->served_model_name) == 0)
            return ifd_error_set(err, -EINVAL, "[model.%s]: the name is already [server] model_name, the [model] one",
                                 m->name);
    }
    return 0;
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

bool inferd_config_models_equal(const struct inferd_config *a, const struct inferd_config *b)
{
    if (a->n_models != b->n_models || a->models_memory != b->models_memory)
        return false;
    for (int i = 0; i < a->n_models; i++) {
        const struct inferd_model_cfg *x = &a->models[i], *y = &b->models[i];
        if (!str_eq(x->name, y->name) || !str_eq(x->path, y->path) ||
            !str_eq(x->chat_template_path, y->chat_template_path) || x->quantize_bits != y->quantize_bits ||
            x->quantize_group_size != y->quantize_group_size || x->preload != y->preload || x->pool_mean != y->pool_mean ||
            x->idle_unload_s != y->idle_unload_s || x->reasoning != y->reasoning)
            return false;
    }
    return true;
}

int inferd_config_validate_layers(const struct inferd_config *c, int n_layers, ifd_error *err)
{
    for (int i = 0; i < c->n_workers; i++) {
        const struct inferd_worker_cfg *w = &c->workers[i];
        if (w->auto_layers || w->standby)
            continue;
        if (w->layer_last > n_layers)
            return ifd_error_set(err, -ERANGE, "[worker.%s] layers %d-%d: the model has %d layers (0-%d)",
                                 w->name, w->layer_first, w->layer_last - 1, n_layers, n_layers - 1);
    }
    return 0;
}

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int inferd_config_resolve_model(const char *model_path, char **ret, ifd_error *err)
{
    if (is_dir(model_path)) {
        char *p = strdup(model_path);
        if (!p)
            return -ENOMEM;
        *ret = p;
        return 0;
    }
    /* Paths that are not directories are reported as such instead of being
     * read as a malformed Hub reference. */
    if (model_path[0] == '/' || model_path[0] == '.' || model_path[0] == '~')
        return ifd_error_set(err, -ENOENT, "model '%s': no such directory", model_path);
    struct hf_ref ref = {0};
    int r = hf_ref_parse(model_path, &ref, err);
    if (r < 0) {
        ifd_error_prefix(err, "model '%s' is neither a directory nor a Hugging Face reference ORG/NAME[@REVISION]",
                         model_path);
        return r;
    }
    r = hf_cache_resolve(NULL, &ref, ret, NULL, err);
    hf_ref_finish(&ref);
    return r;
}

int inferd_config_context_length(const struct inferd_config *c, int max_position_embeddings)
{
    if (c->ctx_len > 0)
        return c->ctx_len;
    if (max_position_embeddings <= 0 || max_position_embeddings > INFERD_DEFAULT_CONTEXT_CAP)
        return INFERD_DEFAULT_CONTEXT_CAP;
    return max_position_embeddings;
}

void inferd_config_usage(FILE *f)
{
    fprintf(f,
            "Usage: inferd [OPTIONS]\n"
            "\n"
            "Serves a language model through an OpenAI-compatible HTTP API.\n"
            "Options override " INFERD_DEFAULT_CONFIG " (see inferd.conf(5)).\n"
            "\n"
            "  -c, --config PATH           configuration file\n"
            "  -m, --model DIR|ORG/NAME    checkpoint directory or Hugging Face cache name\n"
            "  -l, --listen HOST:PORT      HTTP address (role=worker: the worker address)\n"
            "      --role master|worker\n"
            "      --backend cpu|vulkan|auto\n"
            "      --device N              Vulkan device index (0 = first; discrete GPUs first)\n"
            "      --quantize q4|q8|none   quantize float weights while loading (MLX affine, group 64)\n"
            "  -t, --threads N             CPU threads (0 = all)\n"
            "      --simd LEVEL            CPU kernels: auto (default), scalar, avx2, avx2-vnni, avx512\n"
            "      --api-key-file PATH     one API key per line\n"
            "      --max-body-bytes SIZE   request body limit (e.g. 4M)\n"
            "      --queue-depth N         waiting requests before 429\n"
            "      --max-sequences N       sequences decoded together\n"
            "      --context-length N      positions per sequence\n"
            "      --prefill-chunk N       prompt tokens per step beside running streams\n"
            "      --chat-template PATH    Jinja chat template overriding the model's\n"
            "      --model-name NAME       model name served in the API\n"
            "      --log-level LEVEL       err, warning, notice, info, debug\n"
            "      --cluster-key-file PATH shared key for master-worker authentication\n"
            "      --allow-insecure-cluster  allow non-loopback workers without a key\n"
            "      --worker HOST:PORT=FIRST-LAST|auto|standby  remote layer range (repeatable)\n"
            "      --cache-dir DIR         worker tensor cache\n"
            "      --micro-batches auto|N  master: batches in flight on the workers at once\n"
            "      --check-config          validate the configuration and exit\n"
            "  -h, --help\n"
            "      --version\n");
}

enum {
    OPT_ROLE = 1000, OPT_BACKEND, OPT_DEVICE, OPT_QUANTIZE, OPT_API_KEY, OPT_API_KEY_FILE, OPT_MAX_BODY, OPT_QUEUE, OPT_MAX_SEQ,
    OPT_CTX, OPT_CHUNK, OPT_TEMPLATE, OPT_MODEL_NAME, OPT_LOG_LEVEL, OPT_CLUSTER_KEY, OPT_INSECURE,
    OPT_WORKER, OPT_CACHE_DIR, OPT_CHECK, OPT_VERSION, OPT_SIMD, OPT_MICRO_BATCHES,
};

static const struct option long_opts[] = {
    {"config", required_argument, NULL, 'c'},
    {"model", required_argument, NULL, 'm'},
    {"listen", required_argument, NULL, 'l'},
    {"threads", required_argument, NULL, 't'},
    {"role", required_argument, NULL, OPT_ROLE},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"quantize", required_argument, NULL, OPT_QUANTIZE},
    {"api-key", required_argument, NULL, OPT_API_KEY},
    {"api-key-file", required_argument, NULL, OPT_API_KEY_FILE},
    {"max-body-bytes", required_argument, NULL, OPT_MAX_BODY},
    {"queue-depth", required_argument, NULL, OPT_QUEUE},
    {"max-sequences", required_argument, NULL, OPT_MAX_SEQ},
    {"context-length", required_argument, NULL, OPT_CTX},
    {"prefill-chunk", required_argument, NULL, OPT_CHUNK},
    {"chat-template", required_argument, NULL, OPT_TEMPLATE},
    {"model-name", required_argument, NULL, OPT_MODEL_NAME},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"cluster-key-file", required_argument, NULL, OPT_CLUSTER_KEY},
    {"allow-insecure-cluster", no_argument, NULL, OPT_INSECURE},
    {"worker", required_argument, NULL, OPT_WORKER},
    {"cache-dir", required_argument, NULL, OPT_CACHE_DIR},
    {"micro-batches", required_argument, NULL, OPT_MICRO_BATCHES},
    {"simd", required_argument, NULL, OPT_SIMD},
    {"check-config", no_argument, NULL, OPT_CHECK},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

/* Applies one flag; --config/--help/--version were handled in the first pass. */
static int apply_flag(struct inferd_config *c, int opt, const char *arg, const char *listen_flag,
                      struct inferd_cli *cli, ifd_error *err)
{
    switch (opt) {
    case 'c': return 0;
    case 'm': return config_set(c, "model", "path", arg, "--model", err);
    case 'l': return 0;  /* applied after --role is known, see inferd_config_load */
    case 't': return config_set(c, "node", "threads", arg, "--threads", err);
    case OPT_ROLE: return config_set(c, "node", "role", arg, "--role", err);
    case OPT_BACKEND: return config_set(c, "node", "backend", arg, "--backend", err);
    case OPT_DEVICE: return config_set(c, "node", "device", arg, "--device", err);
    case OPT_QUANTIZE: return config_set(c, "model", "quantize", arg, "--quantize", err);
    case OPT_API_KEY:
        /* A key in argv is readable by every local user (/proc/PID/cmdline,
         * ps) for as long as the daemon runs: refused, not just warned
         * about, because a warning in a log does not take the key back. */
        return ifd_error_set(err, -EINVAL,
                             "--api-key: keys on the command line are visible to every local user in "
                             "/proc/PID/cmdline; put the key in a file only inferd can read (chmod 600) "
                             "and pass --api-key-file PATH");
    case OPT_API_KEY_FILE: return config_set(c, "server", "api_key_file", arg, "--api-key-file", err);
    case OPT_MAX_BODY: return config_set(c, "server", "max_body_bytes", arg, "--max-body-bytes", err);
    case OPT_QUEUE: return config_set(c, "server", "queue_depth", arg, "--queue-depth", err);
    case OPT_MAX_SEQ: return config_set(c, "server", "max_sequences", arg, "--max-sequences", err);
    case OPT_CTX: return config_set(c, "server", "context_length", arg, "--context-length", err);
    case OPT_CHUNK: return config_set(c, "server", "prefill_chunk", arg, "--prefill-chunk", err);
    case OPT_TEMPLATE: return config_set(c, "model", "chat_template", arg, "--chat-template", err);
    case OPT_MODEL_NAME: return config_set(c, "server", "model_name", arg, "--model-name", err);
    case OPT_LOG_LEVEL: return config_set(c, "server", "log_level", arg, "--log-level", err);
    case OPT_CLUSTER_KEY: return config_set(c, "cluster", "key_file", arg, "--cluster-key-file", err);
    case OPT_INSECURE: c->allow_insecure_cluster = true; return 0;
    case OPT_WORKER: return add_worker_flag(c, arg, err);
    case OPT_CACHE_DIR: return config_set(c, "node", "cache_dir", arg, "--cache-dir", err);
    case OPT_MICRO_BATCHES: return config_set(c, "cluster", "micro_batches", arg, "--micro-batches", err);
    case OPT_SIMD: return config_set(c, "node", "simd", arg, "--simd", err);
    case OPT_CHECK: cli->check_config = true; return 0;
    case 'h': cli->help = true; return 0;
    case OPT_VERSION: cli->version = true; return 0;
    default: return ifd_error_set(err, -EINVAL, "unknown option (see inferd --help)");
    }
    (void)listen_flag;
}

int inferd_config_load(int argc, char **argv, struct inferd_config *ret, struct inferd_cli *ret_cli,
                       ifd_error *err)
{
    struct inferd_config c;
    struct inferd_cli cli = {0};
    const char *config_path = NULL, *listen_flag = NULL;
    bool config_explicit = false;
    int r, opt;

    /* First pass: find --config, and reject unknown flags before reading anything. */
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":c:m:l:t:h", long_opts, NULL)) != -1) {
        if (opt == '?')
            return ifd_error_set(err, -EINVAL, "unknown option '%s' (see inferd --help)", argv[optind - 1]);
        if (opt == ':')
            return ifd_error_set(err, -EINVAL, "option '%s' needs a value", argv[optind - 1]);
        if (opt == 'c') {
            config_path = optarg;
            config_explicit = true;
        }
        if (opt == 'l')
            listen_flag = optarg;
    }
    if (optind < argc)
        return ifd_error_set(err, -EINVAL, "unexpected argument '%s' (see inferd --help)", argv[optind]);

    if ((r = inferd_config_init(&c)) < 0)
        return ifd_error_set(err, r, "out of memory");
    if (!config_path && access(INFERD_DEFAULT_CONFIG, F_OK) == 0)
        config_path = INFERD_DEFAULT_CONFIG;
    if (config_path) {
        if ((r = inferd_config_parse_file(&c, config_path, err)) < 0) {
            if (r == -ENOENT && !config_explicit)
                r = 0;
            else
                goto fail;
        }
        if ((r = set_str(&c.config_path, config_path, "--config", err)) < 0)
            goto fail;
    }

    optind = 1;
    while ((opt = getopt_long(argc, argv, ":c:m:l:t:h", long_opts, NULL)) != -1)
        if ((r = apply_flag(&c, opt, optarg, listen_flag, &cli, err)) < 0)
            goto fail;
    optind = 1;
    /* --listen means the HTTP address for a master, the worker address for a worker. */
    if (listen_flag) {
        if (c.role == INFERD_ROLE_WORKER)
            r = config_set(&c, "node", "listen_worker", listen_flag, "--listen", err);
        else
            r = config_set(&c, "server", "listen", listen_flag, "--listen", err);
        if (r < 0)
            goto fail;
    }
    if (c.role == INFERD_ROLE_WORKER && !c.worker_listen) {
        char buf[64];
        snprintf(buf, sizeof(buf), "0.0.0.0:%d", INFERD_DEFAULT_WORKER_PORT);
        if ((r = set_str(&c.worker_listen, buf, "listen_worker", err)) < 0)
            goto fail;
    }
    if (cli.help || cli.version) {
        *ret = c;
        *ret_cli = cli;
        return 0;
    }
    if ((r = inferd_config_read_key_file(&c, err)) < 0)
        goto fail;
    if ((r = inferd_config_validate(&c, err)) < 0) {
        if (c.config_path)
            ifd_error_prefix(err, "%s", c.config_path);
        goto fail;
    }
    *ret = c;
    *ret_cli = cli;
    return 0;
fail:
    inferd_config_finish(&c);
    return r < 0 ? r : -EINVAL;
}
