/* fuzz_net_session.c - a stateful fuzzer of the worker's protocol: an
 * in-process stage server (net/stage_server.c) with a weight cache
 * (net/weight_push.c) is driven, after a real authenticated handshake, by a
 * fuzzer-chosen sequence of well-framed, sealed messages with fuzzed fields:
 * ASSIGN, TENSOR_CHUNK, LOAD, a whole correct push, FORWARD, KV_TRUNCATE,
 * raw frames of any type, and reconnections (a master that leaves and comes
 * back, possibly with another model: the worker's buffers must follow the
 * stage). Frame-level garbage is fuzz_net_frame's and fuzz_net_handshake's
 * job; this one reaches the states behind them.
 *
 * Input: a program of operations, each an opcode byte and its operands (see
 * run_op). After each operation the harness sends a PING and reads every
 * reply up to its PONG, so the server has finished with the operation
 * before the next one (deterministic order, and a server that stops
 * answering is a finding: abort after 20 s). Every ERROR must carry text.
 *
 * Models: two random-weight checkpoints of 2 layers written at start by the
 * project's generator (tiny-llama, tiny-qwen3; hidden 64), plus
 * tinystories-656k (hidden 128) when $INFERD_SHARED is set, so a switch
 * between widths is reachable. The server allows one next hop, 127.0.0.1:1
 * (nothing listens there): a fuzzed route never connects anywhere else.
 *
 * The worker's setup (ASSIGN -> HAVE, TENSOR_CHUNK, LOAD -> READY) is the
 * daemon's own, net/worker_session.c, with the cpu stage for the daemon's
 * backend choice (daemon/backend.c). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "conn.h"
#include "frame.h"
#include "common/test_util.h"
#include "fuzz.h"
#include "base/thread_pool.h"
#include "model/cpu_stage.h"
#include "model/model.h"
#include "model/model_config.h"
#include "model/model_gen.h"
#include "model/safetensors.h"
#include "proto.h"
#include "stage_server.h"
#include "weight_push.h"
#include "worker_session.h"

#define SESSION_MAX_INPUT (16u << 10)
#define MAX_OPS 24
#define REPLY_TIMEOUT_MS 20000

/* ---- the models, made once ---- */

struct fz_model {
    char *dir;
    char *config;
    size_t config_len;
    struct model *m;
    struct wp_manifest *mf[3]; /* layer ranges [0,1), [1,2), [0,2) */
};

static struct fz_model models[3];
static int n_models;
static struct thread_pool *pool;
static struct net_key key;
static const int ranges[3][2] = {{0, 1}, {1, 2}, {0, 2}};

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "fuzz_net_session: %s: %s\n", what, msg);
    abort();
}

static void model_add(const char *dir)
{
    struct fz_model *fm = &models[n_models];
    ifd_error err;
    struct model_load_opts o = model_load_opts_default();
    if (model_load(dir, &o, &fm->m, &err) < 0)
        die(dir, err.msg);
    if (fm->m->cfg.n_layers != 2)
        die(dir, "expected a model of 2 layers");
    char *path;
    if (asprintf(&path, "%s/config.json", dir) < 0)
        abort();
    char *cfg;
    if (tu_read_file(path, &cfg, &fm->config_len) < 0)
        die(path, "cannot read");
    free(path);
    fm->config = cfg;
    for (int r = 0; r < 3; r++)
        if (wp_manifest_create(fm->m, ranges[r][0], ranges[r][1], &fm->mf[r], &err) < 0)
            die(dir, err.msg);
    fm->dir = strdup(dir);
    n_models++;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    ifd_error err;
    if (net_crypto_init(&err) < 0)
        die("crypto", err.msg);
    memset(key.k, 0x5a, sizeof(key.k));
    pool = thread_pool_create(1);
    char tmpl[] = "/tmp/inferd-fuzz-session-XXXXXX";
    const char *base = mkdtemp(tmpl);
    if (!base)
        die("mkdtemp", strerror(errno));
    const char *presets[] = {"tiny-llama", "tiny-qwen3"};
    for (int i = 0; i < 2; i++) {
        char dir[128];
        snprintf(dir, sizeof(dir), "%s/%s", base, presets[i]);
        struct model_gen_options g = {.preset = presets[i], .dtype = IFD_DTYPE_F32, .seed = 7 + (uint64_t)i};
        if (model_gen_write(dir, &g, NULL, &err) < 0)
            die(presets[i], err.msg);
        model_add(dir);
    }
    char *ts = tu_shared_path("models/tinystories-656k");
    struct stat sb;
    if (ts && stat(ts, &sb) == 0)
        model_add(ts);
    free(ts);
    return 0;
}

/* ---- the worker's setup: net/worker_session.c, as the daemon runs it, on
 * the cpu backend ---- */

static int fz_stage_create(void *ctx, const struct model *m, const struct net_assign *a, struct stage **ret,
                           ifd_error *err)
{
    (void)ctx;
    return cpu_stage_create(m, (int)a->layer_first, (int)a->layer_last, (int)a->n_seq_max, (int)a->n_ctx, pool, ret,
                            err);
}

/* ---- one session ---- */

struct session {
    struct stage_server *srv;
    int listen_fd, port;
    pthread_t th;
    char addr[NET_ADDR_MAX];
    struct wp_cache *cache;
    struct worker_session *ws;
    struct net_conn *c; /* the master's connection, NULL after a failure */
    struct net_buf b;
    uint64_t ping_id;
    /* What the harness last assigned, for chunks and forwards. */
    const struct fz_model *fm;
    const struct wp_manifest *mf;
    int first, last, n_seq, n_ctx;
};

static void *server_main(void *p)
{
    struct session *s = p;
    stage_server_run(s->srv, s->listen_fd);
    return NULL;
}

static void master_connect(struct session *s)
{
    ifd_error err;
    net_conn_destroy(s->c);
    s->c = NULL;
    struct net_conn *c;
    if (net_conn_connect(s->addr, 5000, &c, &err) < 0)
        die("connect", err.msg);
    struct net_hello self = {.role = NET_ROLE_MASTER, .caps = NET_CAP_CHAIN | NET_CAP_ZSTD}, peer;
    if (net_conn_handshake_client(c, &key, &self, &peer, &err) < 0) {
        if (!err.msg[0])
            die("handshake", "failed without a message");
        net_conn_destroy(c);
        return;
    }
    s->c = c;
}

/* Sends PING and reads every reply up to its PONG. A closed connection ends
 * the session's use of it (the server closes on a malformed request: fine). */
static void sync_replies(struct session *s)
{
    if (!s->c)
        return;
    ifd_error err;
    struct net_ping pg = {.req_id = ++s->ping_id, .t_ns = 1};
    if (net_ping_encode(&s->b, &pg) < 0 || net_conn_send(s->c, NET_MSG_PING, s->b.data, s->b.len, 5000, &err) < 0) {
        net_conn_destroy(s->c);
        s->c = NULL;
        return;
    }
    for (;;) {
        uint16_t type;
        const uint8_t *p;
        size_t len;
        memset(&err, 0, sizeof(err));
        if (net_conn_recv(s->c, &type, &p, &len, REPLY_TIMEOUT_MS, &err) < 0) {
            if (err.msg[0] && strstr(err.msg, "timed out"))
                die("the worker stopped answering", err.msg);
            net_conn_destroy(s->c);
            s->c = NULL;
            return;
        }
        if (type == NET_MSG_ERROR) {
            struct net_error_msg em;
            if (net_error_decode(p, len, &em, &err) < 0 || em.msg_len == 0)
                die("ERROR", "malformed or empty ERROR from the worker");
        } else if (type == NET_MSG_PONG) {
            struct net_ping got;
            if (net_ping_decode(p, len, &got, &err) == 0 && got.req_id == s->ping_id)
                return;
        }
    }
}

static void send_msg(struct session *s, uint16_t type, const void *p, size_t len)
{
    ifd_error err;
    if (s->c && net_conn_send(s->c, type, p, len, 5000, &err) < 0) {
        net_conn_destroy(s->c);
        s->c = NULL;
    }
}

/* Reads operands from the program; 0 past its end. */
struct prog {
    const uint8_t *p;
    size_t n, i;
};

static uint32_t take(struct prog *g, int bytes)
{
    uint32_t v = 0;
    for (int k = 0; k < bytes; k++)
        v |= (uint32_t)(g->i < g->n ? g->p[g->i++] : 0) << (8 * k);
    return v;
}

/* Copies n operand bytes (zeros past the program's end). */
static void take_bytes(struct prog *g, uint8_t *out, size_t n)
{
    size_t k = g->i < g->n ? g->n - g->i : 0;
    if (k > n)
        k = n;
    memcpy(out, g->p + g->i, k);
    memset(out + k, 0, n - k);
    g->i += k;
}

static void op_assign(struct session *s, struct prog *g, bool whole_push)
{
    const struct fz_model *fm = &models[take(g, 1) % (uint32_t)n_models];
    int r = (int)(take(g, 1) % 3);
    int n_seq = 1 + (int)(take(g, 1) % 8), n_ctx = 1 + (int)(take(g, 2) % 512);
    uint32_t mut = take(g, 1);
    const struct wp_manifest *mf = fm->mf[r];
    s->fm = fm;
    s->mf = mf;
    s->first = ranges[r][0];
    s->last = ranges[r][1];
    s->n_seq = n_seq;
    s->n_ctx = n_ctx;
    if (whole_push) {
        struct wp_push_params pp = {.model_name = "fuzz", .config_json = fm->config, .config_len = fm->config_len,
                                    .n_layers = 2, .n_seq_max = n_seq, .n_ctx = n_ctx, .timeout_ms = REPLY_TIMEOUT_MS};
        struct wp_push_stats st;
        ifd_error err;
        if (s->c && wp_push(s->c, mf, &pp, &st, &err) < 0 && !err.msg[0])
            die("push", "failed without a message");
        return;
    }
    size_t n = wp_manifest_count(mf);
    struct net_tensor_desc *t = calloc(n ? n : 1, sizeof(*t));
    for (size_t i = 0; i < n; i++)
        t[i] = *wp_manifest_tensor(mf, i, NULL);
    /* Field mutations a master with the key could send. */
    if (n && (mut & 1))
        t[mut % n].nbytes = (uint64_t)take(g, 4) << (take(g, 1) % 40); /* shape no longer matches */
    if (n && (mut & 2))
        t[(mut >> 2) % n].hash[take(g, 1) % 32] ^= 1;
    struct net_assign a = {.layer_first = (uint32_t)s->first, .layer_last = (uint32_t)s->last, .n_layers = 2,
                           .n_seq_max = (uint32_t)n_seq, .n_ctx = (uint32_t)n_ctx, .model_name = "fuzz",
                           .config_json = fm->config, .config_len = (uint32_t)fm->config_len,
                           .n_tensors = (uint32_t)n, .tensors = t};
    if (mut & 4)
        a.layer_last = a.layer_first + take(g, 1) % 4;
    if (mut & 8)
        a.n_layers = take(g, 1) % 5;
    if (net_assign_encode(&s->b, &a) >= 0)
        send_msg(s, NET_MSG_ASSIGN, s->b.data, s->b.len);
    free(t);
}

static void op_chunk(struct session *s, struct prog *g)
{
    if (!s->mf)
        return;
    size_t n = wp_manifest_count(s->mf);
    uint32_t idx = take(g, 1), mode = take(g, 1);
    const void *data = NULL;
    const struct net_tensor_desc *t = n ? wp_manifest_tensor(s->mf, idx % n, &data) : NULL;
    uint64_t off = (mode & 1) ? take(g, 4) : 0;
    uint32_t raw = 1 + take(g, 2) % 8192;
    uint8_t buf[8192];
    const uint8_t *src;
    if (t && !(mode & 2) && off < t->nbytes) {
        if (raw > t->nbytes - off)
            raw = (uint32_t)(t->nbytes - off);
        src = (const uint8_t *)data + off;
    } else {
        take_bytes(g, buf, raw);
        src = buf;
    }
    struct net_chunk ch = {.index = (mode & 4) ? idx : (uint32_t)(n ? idx % n : 0), .offset = off, .raw_len = raw,
                           .data_len = raw, .data = src};
    if (mode & 8) /* a data length that disagrees */
        ch.raw_len = raw + take(g, 1);
    if (net_chunk_encode_header(&s->b, &ch) < 0 || net_buf_reserve(&s->b, s->b.len + raw) < 0)
        return;
    memcpy(s->b.data + s->b.len, src, raw);
    s->b.len += raw;
    send_msg(s, NET_MSG_TENSOR_CHUNK, s->b.data, s->b.len);
}

static void op_forward(struct session *s, struct prog *g)
{
    uint32_t nt = 1 + take(g, 1) % 24, mode = take(g, 1);
    uint32_t hidden = s->fm ? (uint32_t)s->fm->m->cfg.hidden_size : 64;
    if (mode & 1)
        hidden = take(g, 1) * 2;
    if (hidden == 0 || hidden > 512)
        hidden = 64;
    float *h = calloc((size_t)nt * hidden, sizeof(float));
    int32_t seqs[24], pos[24];
    int32_t p0 = (int32_t)take(g, 2) % 600;
    for (uint32_t i = 0; i < nt; i++) {
        seqs[i] = (mode & 2) ? (int32_t)(int8_t)take(g, 1) : (int32_t)(take(g, 1) % 8);
        pos[i] = (mode & 4) ? (int32_t)(int16_t)take(g, 2) : p0 + (int32_t)i;
    }
    for (size_t i = 0; i < (size_t)nt * hidden; i++)
        h[i] = (float)((int)(i * 2654435761u % 2001) - 1000) / 1000.0f;
    struct net_route_hop hops[2];
    uint32_t n_route = (mode >> 3) % 3;
    for (uint32_t i = 0; i < n_route; i++) {
        hops[i].layer_first = (uint32_t)s->last;
        hops[i].layer_last = 2;
        /* Allowed but closed, or refused: never a real connection. */
        snprintf(hops[i].addr, sizeof(hops[i].addr), "%s", (take(g, 1) & 1) ? "127.0.0.1:1" : "10.0.0.1:10128");
    }
    struct net_forward f = {.req_id = take(g, 4), .n_tokens = nt, .hidden = hidden,
                            .layer_first = (uint32_t)s->first, .layer_last = (uint32_t)s->last, .n_route = n_route,
                            .route = hops, .seq_ids = seqs, .positions = pos, .hidden_data = h};
    if (mode & 32)
        f.layer_last = take(g, 1) % 4;
    if (net_forward_encode(&s->b, &f) >= 0)
        send_msg(s, NET_MSG_FORWARD, s->b.data, s->b.len);
    free(h);
}

static void run_op(struct session *s, struct prog *g)
{
    switch (take(g, 1) % 9) {
    case 0: /* ASSIGN with fuzzed fields */
        op_assign(s, g, false);
        break;
    case 1: /* a whole, correct push: ASSIGN, HAVE, chunks, LOAD, READY */
        op_assign(s, g, true);
        break;
    case 2:
        op_chunk(s, g);
        break;
    case 3:
        send_msg(s, NET_MSG_LOAD, NULL, 0);
        break;
    case 4:
    case 5:
        op_forward(s, g);
        break;
    case 6: {
        struct net_kv_truncate kt = {.req_id = take(g, 1), .seq_id = (int32_t)(int8_t)take(g, 1),
                                     .n_keep = (int32_t)(int16_t)take(g, 2)};
        if (net_kv_truncate_encode(&s->b, &kt) >= 0)
            send_msg(s, NET_MSG_KV_TRUNCATE, s->b.data, s->b.len);
        break;
    }
    case 7: { /* a raw message of any type, up to 256 bytes */
        uint16_t type = (uint16_t)take(g, 1);
        uint32_t len = take(g, 1);
        uint8_t buf[256];
        take_bytes(g, buf, len);
        send_msg(s, type, buf, len);
        break;
    }
    case 8: /* the master leaves and a new one connects */
        net_conn_destroy(s->c);
        s->c = NULL;
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > SESSION_MAX_INPUT || n_models == 0)
        return 0;
    struct session s = {0};
    ifd_error err;
    char dir[] = "/tmp/inferd-fuzz-cache-XXXXXX";
    if (!mkdtemp(dir))
        die("mkdtemp", strerror(errno));
    if (wp_cache_open(dir, 64u << 20, &s.cache, &err) < 0)
        die("cache", err.msg);
    struct worker_session_opts wo = {.cache = s.cache, .stage_create = fz_stage_create};
    if (worker_session_create(&wo, &s.ws, &err) < 0)
        die("worker session", err.msg);
    static const char *const hops[] = {"127.0.0.1:1"};
    struct stage_server_opts o = {.key = &key, .n_threads = 1, .io_timeout_ms = 5000, .next_hops = hops,
                                  .n_next_hops = 1, .master_closed = worker_session_master_closed};
    if (stage_server_create(&o, worker_session_setup, s.ws, &s.srv, &err) < 0)
        die("server", err.msg);
    if (net_listen("127.0.0.1:0", &s.listen_fd, &s.port, &err) < 0)
        die("listen", err.msg);
    snprintf(s.addr, sizeof(s.addr), "127.0.0.1:%d", s.port);
    pthread_create(&s.th, NULL, server_main, &s);

    struct prog g = {.p = data, .n = size};
    for (int ops = 0; ops < MAX_OPS && g.i < g.n; ops++) {
        if (!s.c) {
            /* The previous master's connection may not be gone yet on the
             * server's side ("already serves", then closed): retry, as a
             * restarted master does. */
            for (int tries = 0; tries < 200 && !s.c; tries++) {
                master_connect(&s);
                sync_replies(&s);
                if (!s.c)
                    usleep(5000);
            }
            if (!s.c)
                die("reconnect", "the worker does not take a new master");
        }
        run_op(&s, &g);
        sync_replies(&s);
    }
    net_conn_destroy(s.c);
    stage_server_stop(s.srv);
    pthread_join(s.th, NULL);
    close(s.listen_fd);
    stage_server_destroy(s.srv);
    worker_session_destroy(s.ws);
    wp_cache_close(s.cache);
    net_buf_finish(&s.b);
    tu_remove_tree(dir);
    return 0;
}

/* ---- seeds: sessions a real master would run, and a few it would not ---- */

/* Seed programs are written with the operand layout of run_op. */
struct seedbuf {
    uint8_t p[512];
    size_t n;
};

static void put(struct seedbuf *b, uint32_t v, int bytes)
{
    for (int k = 0; k < bytes && b->n < sizeof(b->p); k++)
        b->p[b->n++] = (uint8_t)(v >> (8 * k));
}

static void s_push(struct seedbuf *b, int model, int range, int n_seq, int n_ctx)
{
    put(b, 1, 1), put(b, (uint32_t)model, 1), put(b, (uint32_t)range, 1), put(b, (uint32_t)n_seq - 1, 1);
    put(b, (uint32_t)n_ctx - 1, 2), put(b, 0, 1);
}

static void s_assign(struct seedbuf *b, int model, int range, uint32_t mut)
{
    put(b, 0, 1), put(b, (uint32_t)model, 1), put(b, (uint32_t)range, 1), put(b, 1, 1), put(b, 63, 2);
    put(b, mut, 1);
}

/* n tokens of sequence seq from position p0, with hops route[i] (1: allowed, 0: refused). */
static void s_forward(struct seedbuf *b, int n, int seq, int p0, int n_route, const int *route)
{
    put(b, 4, 1), put(b, (uint32_t)n - 1, 1), put(b, (uint32_t)n_route << 3, 1), put(b, (uint32_t)p0, 2);
    for (int i = 0; i < n; i++)
        put(b, (uint32_t)seq, 1);
    for (int i = 0; i < n_route; i++)
        put(b, (uint32_t)route[i], 1);
    put(b, 1000 + (uint32_t)b->n, 4);
}

static void s_chunk(struct seedbuf *b, int idx, uint32_t mode, uint32_t off, int len)
{
    put(b, 2, 1), put(b, (uint32_t)idx, 1), put(b, mode, 1);
    if (mode & 1)
        put(b, off, 4);
    put(b, (uint32_t)len - 1, 2);
}

void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    struct seedbuf b = {0};
    /* push, forward, truncate, forward the same again */
    s_push(&b, 0, 2, 2, 64);
    s_forward(&b, 8, 1, 0, 0, NULL);
    put(&b, 6, 1), put(&b, 9, 1), put(&b, 1, 1), put(&b, 0, 2);
    s_forward(&b, 8, 1, 0, 0, NULL);
    add(ctx, "push-forward", b.p, b.n);

    /* narrow model, forward; the master leaves; the last model (tinystories,
     * wider, when $INFERD_SHARED has it) with more sequences and a longer
     * context; forward 24 tokens; back to the first */
    b.n = 0;
    s_push(&b, 0, 2, 1, 32);
    s_forward(&b, 16, 0, 0, 0, NULL);
    put(&b, 8, 1);
    s_push(&b, 2, 2, 6, 300);
    s_forward(&b, 24, 5, 0, 0, NULL);
    s_forward(&b, 24, 5, 24, 0, NULL);
    put(&b, 8, 1);
    s_push(&b, 1, 0, 2, 16);
    s_forward(&b, 16, 1, 0, 0, NULL);
    add(ctx, "switch-model", b.p, b.n);

    /* ASSIGN by hand, the first 100 bytes of tensor 0 in two chunks, LOAD
     * (incomplete: ERROR), the master leaves (its .part goes), LOAD again */
    b.n = 0;
    s_assign(&b, 1, 0, 0);
    s_chunk(&b, 0, 0, 0, 60);
    s_chunk(&b, 0, 1, 60, 40);
    put(&b, 3, 1);
    put(&b, 8, 1);
    put(&b, 3, 1);
    add(ctx, "chunks-by-hand", b.p, b.n);

    /* a chain stage [0,1) whose route is allowed but closed, then refused */
    b.n = 0;
    s_push(&b, 1, 0, 1, 16);
    s_forward(&b, 2, 0, 0, 1, (const int[]){1});
    s_forward(&b, 2, 0, 0, 1, (const int[]){0});
    s_forward(&b, 2, 0, 0, 2, (const int[]){1, 0});
    add(ctx, "forward-route", b.p, b.n);

    /* a tensor of 2^40 bytes declared in ASSIGN (shape mismatch), one of the
     * wrong hash, then chunks */
    b.n = 0;
    s_assign(&b, 0, 2, 1);
    put(&b, 1, 4), put(&b, 40, 1);
    s_chunk(&b, 0, 0, 0, 100);
    s_assign(&b, 0, 2, 2);
    put(&b, 3, 1);
    s_chunk(&b, 0, 0, 0, 256);
    put(&b, 3, 1);
    add(ctx, "bad-assign", b.p, b.n);
}
