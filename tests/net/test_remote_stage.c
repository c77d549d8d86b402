/* test_remote_stage - a remote stage is interchangeable with a local one.
 *
 * Two stage servers run in threads on loopback, each serving a cpu stage of
 * one layer range of tinystories-656k over authenticated, sealed connections.
 * The engine runs with a chain stage (master -> worker 0 -> worker 1 ->
 * master) and with two star stages, and must produce the same logits, bit
 * for bit, as the all-local engine, and the golden greedy tokens. A worker
 * stopped mid-generation makes the next forward fail quickly with a clear
 * error instead of hanging. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/golden_models.h"
#include "common/net_test_util.h"
#include "common/test_util.h"
#include "conn.h"
#include "model/cpu_stage.h"
#include "model/engine.h"
#include "model/model.h"
#include "remote_stage.h"
#include "stage_server.h"
#include "base/thread_pool.h"
#include "base/clock.h"

#define N_SEQ 2
#define N_CTX 128
#define N_BATCH 64

/* Greedy generation of n tokens on sequence `seq`; logits of every step are
 * appended to all_logits ([n, vocab]) when non-NULL. Returns 0 or the first
 * engine error. */
static int greedy(engine *e, int seq, const int *prompt, int n_prompt, int n, int *out, float *all_logits,
                  ifd_error *err)
{
    int vocab = engine_model(e)->cfg.vocab_size;
    int32_t toks[N_BATCH], seqs[N_BATCH], pos[N_BATCH];
    bool want[N_BATCH];
    for (int i = 0; i < n_prompt; i++) {
        toks[i] = prompt[i];
        seqs[i] = seq;
        pos[i] = i;
        want[i] = i == n_prompt - 1;
    }
    struct engine_batch b = {n_prompt, toks, seqs, pos, want};
    int p = n_prompt;
    for (int step = 0; step < n; step++) {
        int r = engine_decode(e, &b, err);
        if (r < 0)
            return r;
        const float *lg = engine_logits(e);
        if (all_logits)
            memcpy(all_logits + (size_t)step * vocab, lg, (size_t)vocab * sizeof(float));
        int best = 0;
        for (int v = 1; v < vocab; v++)
            if (lg[v] > lg[best])
                best = v;
        out[step] = best;
        toks[0] = best;
        seqs[0] = seq;
        pos[0] = p++;
        want[0] = true;
        b = (struct engine_batch){1, toks, seqs, pos, want};
    }
    return 0;
}

/* ---- a worker in a thread ---- */

struct worker {
    struct stage_server *srv;
    int listen_fd, port;
    pthread_t th;
    char addr[NET_ADDR_MAX];
};

static void *worker_thread(void *p)
{
    struct worker *w = p;
    stage_server_run(w->srv, w->listen_fd);
    return NULL;
}

static void worker_start(struct worker *w, const struct net_key *key, struct stage *st)
{
    ifd_error err;
    struct stage_server_opts o = {.key = key, .n_threads = 1};
    cr_assert_eq(stage_server_create(&o, NULL, NULL, &w->srv, &err), 0, "%s", err.msg);
    stage_server_set_stage(w->srv, st, NULL, NULL);
    cr_assert_eq(net_listen("127.0.0.1:0", &w->listen_fd, &w->port, &err), 0, "%s", err.msg);
    snprintf(w->addr, sizeof(w->addr), "127.0.0.1:%d", w->port);
    pthread_create(&w->th, NULL, worker_thread, w);
}

static void worker_stop(struct worker *w)
{
    if (!w->srv)
        return;
    stage_server_stop(w->srv);
    pthread_join(w->th, NULL);
    close(w->listen_fd);
    stage_server_destroy(w->srv);
    w->srv = NULL;
}

static void link_connect(struct remote_link *l, const struct net_key *key)
{
    struct net_conn *c;
    ifd_error err;
    cr_assert_eq(net_conn_connect(remote_link_addr(l), 2000, &c, &err), 0, "%s", err.msg);
    struct net_hello self = {.role = NET_ROLE_MASTER, .caps = NET_CAP_CHAIN}, peer;
    cr_assert_eq(net_conn_handshake_client(c, key, &self, &peer, &err), 0, "%s", err.msg);
    remote_link_attach(l, c);
}

struct fixture {
    struct model *m;
    struct thread_pool *pool;
    /* each worker's own: pipelined forwards run the workers and the
     * master's head at the same time, as separate processes would */
    struct thread_pool *wpool[2];
    struct net_key key;
    struct worker w[2];
    struct remote_link *links[2];
    struct golden g;
    int n_layers, split;
};

static void fixture_up(struct fixture *fx, const char *model_name)
{
    memset(fx, 0, sizeof(*fx));
    ifd_error err;
    fx->m = golden_load_model(model_name);
    golden_find(model_name, &fx->g);
    fx->n_layers = fx->m->cfg.n_layers;
    fx->split = fx->n_layers / 2;
    fx->pool = thread_pool_create(2);
    memset(fx->key.k, 0x42, sizeof(fx->key.k));
    int range[3] = {0, fx->split, fx->n_layers};
    for (int i = 0; i < 2; i++) {
        struct stage *st;
        fx->wpool[i] = thread_pool_create(1);
        cr_assert_eq(cpu_stage_create(fx->m, range[i], range[i + 1], N_SEQ, N_CTX, fx->wpool[i], &st, &err), 0, "%s",
                     err.msg);
        worker_start(&fx->w[i], &fx->key, st);
        char name[16];
        snprintf(name, sizeof(name), "w%d", i);
        cr_assert_eq(remote_link_create(name, fx->w[i].addr, range[i], range[i + 1], &fx->links[i], &err), 0);
        link_connect(fx->links[i], &fx->key);
    }
}

static void fixture_down(struct fixture *fx)
{
    for (int i = 0; i < 2; i++) {
        remote_link_destroy(fx->links[i]);
        worker_stop(&fx->w[i]);
        thread_pool_destroy(fx->wpool[i]);
    }
    thread_pool_destroy(fx->pool);
    model_destroy(fx->m);
}

/* A remote stage over n of the fixture's links, from links[first]. */
static struct stage *remote_over(struct fixture *fx, int first, int n)
{
    struct remote_stage_opts ro = {.hidden_size = fx->m->cfg.hidden_size, .n_seq_max = N_SEQ, .n_ctx = N_CTX,
                                   .max_tokens = N_BATCH, .timeout_ms = 5000};
    struct stage *st;
    ifd_error err;
    cr_assert_eq(remote_stage_create(&fx->links[first], n, &ro, &st, &err), 0, "%s", err.msg);
    return st;
}

static const struct engine_config ecfg = {.n_seq_max = N_SEQ, .n_ctx = N_CTX, .n_batch_max = N_BATCH, .n_threads = 2};

static void check_model(const char *model_name, bool chain)
{
    struct fixture fx;
    fixture_up(&fx, model_name);
    ifd_error err;
    int vocab = fx.m->cfg.vocab_size, n = fx.g.n_gen;
    int *local_ids = calloc((size_t)n, sizeof(int)), *remote_ids = calloc((size_t)n, sizeof(int));
    float *local_lg = calloc((size_t)n * vocab, sizeof(float)), *remote_lg = calloc((size_t)n * vocab, sizeof(float));

    engine *local;
    cr_assert_eq(engine_create_cpu(fx.m, NULL, 0, &ecfg, &local, &err), 0, "%s", err.msg);
    cr_assert_eq(greedy(local, 0, fx.g.prompt, fx.g.n_prompt, n, local_ids, local_lg, &err), 0, "%s", err.msg);
    engine_destroy(local);

    struct stage *stages[2];
    int n_stages;
    if (chain) {
        stages[0] = remote_over(&fx, 0, 2);
        n_stages = 1;
    } else {
        stages[0] = remote_over(&fx, 0, 1);
        stages[1] = remote_over(&fx, 1, 1);
        n_stages = 2;
    }
    engine *remote;
    cr_assert_eq(engine_create(fx.m, stages, n_stages, &ecfg, fx.pool, &remote, &err), 0, "%s", err.msg);
    cr_assert_eq(greedy(remote, 1, fx.g.prompt, fx.g.n_prompt, n, remote_ids, remote_lg, &err), 0, "%s", err.msg);

    for (int i = 0; i < n; i++)
        cr_assert_eq(remote_ids[i], local_ids[i], "%s: token %d: remote %d, local %d", model_name, i, remote_ids[i],
                     local_ids[i]);
    for (int i = 0; i < fx.g.stable; i++)
        cr_assert_eq(remote_ids[i], fx.g.gen[i], "%s: token %d: remote %d, golden %d", model_name, i, remote_ids[i],
                     fx.g.gen[i]);
    /* Same kernels, same order, f32 on the wire: bit-identical logits. */
    cr_assert_eq(memcmp(remote_lg, local_lg, (size_t)n * vocab * sizeof(float)), 0, "logits differ");

    /* KV truncation travels too: regenerating after truncating to the prompt
     * gives the same tokens again. */
    cr_assert_eq(engine_seq_truncate(remote, 1, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(greedy(remote, 1, fx.g.prompt, fx.g.n_prompt, 8, remote_ids, NULL, &err), 0, "%s", err.msg);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(remote_ids[i], local_ids[i]);
    /* Keeping positions the workers hold works; keeping more than a worker
     * holds (what the master counts after the worker restarted) is -ESTALE,
     * which tells prefix reuse to prefill them again. */
    cr_assert_eq(engine_seq_truncate(remote, 1, fx.g.n_prompt, &err), 0, "%s", err.msg);
    cr_assert_eq(engine_seq_truncate(remote, 1, fx.g.n_prompt + 1, &err), -ESTALE);
    cr_assert_eq(engine_seq_truncate(remote, 1, fx.g.n_prompt, &err), 0, "%s", err.msg);

    struct remote_link_stats ls;
    remote_link_get_stats(fx.links[1], &ls);
    cr_assert_gt(ls.forwards, 0);
    if (chain) /* in a chain the master never sends hidden states to worker 1 */
        cr_assert_lt(ls.bytes_sent, 4096, "master sent %llu bytes to worker 1", (unsigned long long)ls.bytes_sent);

    engine_destroy(remote);
    free(local_ids);
    free(remote_ids);
    free(local_lg);
    free(remote_lg);
    fixture_down(&fx);
}

/* Pipelined: two sequences, each in its own engine slot, their batches in
 * flight on the chain together (engine_submit twice, then complete in
 * order), give each the tokens of the local engine, bit for bit in the
 * logits; a truncate while the other sequence's batch is in flight waits
 * for it without losing its result. */
Test(remote_stage, pipelined_micro_batches_equal_local)
{
    struct fixture fx;
    fixture_up(&fx, "tinystories-656k");
    ifd_error err;
    int vocab = fx.m->cfg.vocab_size, n = fx.g.n_gen;
    int *local_ids = calloc((size_t)n, sizeof(int));
    float *local_lg = calloc((size_t)n * vocab, sizeof(float));
    engine *local;
    cr_assert_eq(engine_create_cpu(fx.m, NULL, 0, &ecfg, &local, &err), 0, "%s", err.msg);
    cr_assert_eq(engine_pipeline_depth(local), 1, "a local engine does not pipeline");
    cr_assert_eq(greedy(local, 0, fx.g.prompt, fx.g.n_prompt, n, local_ids, local_lg, &err), 0, "%s", err.msg);
    engine_destroy(local);

    struct stage *st = remote_over(&fx, 0, 2);
    struct engine_config pcfg = ecfg;
    pcfg.n_inflight = 2;
    engine *e;
    cr_assert_eq(engine_create(fx.m, &st, 1, &pcfg, fx.pool, &e, &err), 0, "%s", err.msg);
    cr_assert_eq(engine_pipeline_depth(e), 3, "two workers and the master's head");

    /* per sequence: its batch arrays (borrowed until complete) and position */
    int32_t toks[2][N_BATCH], seqs[2][N_BATCH], pos[2][N_BATCH];
    bool want[2][N_BATCH];
    struct engine_batch b[2];
    int got[2][64], p[2];
    cr_assert_leq(n, 64);
    for (int q = 0; q < 2; q++) {
        for (int i = 0; i < fx.g.n_prompt; i++) {
            toks[q][i] = fx.g.prompt[i];
            seqs[q][i] = q;
            pos[q][i] = i;
            want[q][i] = i == fx.g.n_prompt - 1;
        }
        b[q] = (struct engine_batch){fx.g.n_prompt, toks[q], seqs[q], pos[q], want[q]};
        p[q] = fx.g.n_prompt;
    }
    for (int step = 0; step < n; step++) {
        /* sequence 1 runs one step behind sequence 0 at the end: seq 0 is
         * truncated while seq 1's last batch is in flight */
        for (int q = 0; q < 2; q++)
            cr_assert_eq(engine_submit(e, q, &b[q], &err), 0, "step %d seq %d: %s", step, q, err.msg);
        for (int q = 0; q < 2; q++) {
            cr_assert_eq(engine_complete(e, q, &err), 0, "step %d seq %d: %s", step, q, err.msg);
            const float *lg = engine_logits(e);
            cr_assert_eq(memcmp(lg, local_lg + (size_t)step * vocab, (size_t)vocab * sizeof(float)), 0,
                         "step %d seq %d: logits differ from the local engine's", step, q);
            int best = 0;
            for (int v = 1; v < vocab; v++)
                if (lg[v] > lg[best])
                    best = v;
            got[q][step] = best;
            toks[q][0] = best;
            seqs[q][0] = q;
            pos[q][0] = p[q]++;
            want[q][0] = true;
            b[q] = (struct engine_batch){1, toks[q], seqs[q], pos[q], want[q]};
        }
    }
    for (int q = 0; q < 2; q++)
        for (int i = 0; i < n; i++)
            cr_assert_eq(got[q][i], local_ids[i], "seq %d token %d: pipelined %d, local %d", q, i, got[q][i],
                         local_ids[i]);
    /* a truncate with a forward in flight settles it first */
    cr_assert_eq(engine_submit(e, 1, &b[1], &err), 0, "%s", err.msg);
    cr_assert_eq(engine_seq_truncate(e, 0, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(engine_complete(e, 1, &err), 0, "%s", err.msg);
    /* one slot holds one batch; slots complete in submit order */
    cr_assert_eq(engine_complete(e, 1, &err), -EINVAL);
    engine_destroy(e);
    free(local_ids);
    free(local_lg);
    fixture_down(&fx);
}

Test(remote_stage, chain_equals_local_tinystories)
{
    check_model("tinystories-656k", true);
}

Test(remote_stage, star_equals_local_tinystories)
{
    check_model("tinystories-656k", false);
}

Test(remote_stage, chain_equals_local_qwen3)
{
    check_model("qwen3-tiny-random", true);
}

Test(remote_stage, worker_death_fails_forward_quickly)
{
    struct fixture fx;
    fixture_up(&fx, "tinystories-656k");
    ifd_error err;
    struct stage *st = remote_over(&fx, 0, 2);
    engine *e;
    cr_assert_eq(engine_create(fx.m, &st, 1, &ecfg, fx.pool, &e, &err), 0, "%s", err.msg);
    int ids[4];
    cr_assert_eq(greedy(e, 0, fx.g.prompt, fx.g.n_prompt, 4, ids, NULL, &err), 0, "%s", err.msg);

    /* The second worker of the chain goes away. */
    worker_stop(&fx.w[1]);
    engine_seq_truncate(e, 0, 0, &err); /* the next greedy starts over at position 0 */
    uint64_t t0 = ifd_now_ns();
    int r = greedy(e, 0, fx.g.prompt, fx.g.n_prompt, 1, ids, NULL, &err);
    double ms = (double)(ifd_now_ns() - t0) / 1e6;
    cr_assert_lt(r, 0, "forward through a dead worker succeeded");
    cr_assert_lt(ms, 2000.0, "took %.0f ms to notice", ms);
    cr_assert(strstr(err.msg, "w1") || strstr(err.msg, "next worker"), "error names the worker: %s", err.msg);
    /* Later forwards fail at once while the link is down. */
    cr_assert_lt(greedy(e, 0, fx.g.prompt, fx.g.n_prompt, 1, ids, NULL, &err), 0);
    cr_assert_eq(remote_link_state(fx.links[1]), REMOTE_LINK_DOWN);
    /* The first worker is alive (a failover keeps it): its link answers a
     * ping, whether or not its ERROR about the dead next hop came in after
     * the forward gave up (a late answer is dropped). */
    cr_assert_eq(remote_link_ping(fx.links[0], 2000, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(remote_link_state(fx.links[0]), REMOTE_LINK_READY);

    engine_destroy(e);
    fixture_down(&fx);
}

/* Two batches in flight when the chain's tail dies: both fail (whether the
 * head's ERRORs or the tail's closed connection come first), quickly, and
 * the stage gives back the positions they took at submit. */
Test(remote_stage, worker_death_fails_every_forward_in_flight)
{
    struct fixture fx;
    fixture_up(&fx, "tinystories-656k");
    ifd_error err;
    struct stage *st = remote_over(&fx, 0, 2);
    struct engine_config pcfg = ecfg;
    pcfg.n_inflight = 2;
    engine *e;
    cr_assert_eq(engine_create(fx.m, &st, 1, &pcfg, fx.pool, &e, &err), 0, "%s", err.msg);
    int32_t toks[2][1], seqs[2][1], pos[2][1];
    bool want[2][1];
    struct engine_batch b[2];
    for (int q = 0; q < 2; q++) {
        int ids[1];
        cr_assert_eq(greedy(e, q, fx.g.prompt, fx.g.n_prompt, 1, ids, NULL, &err), 0, "%s", err.msg);
        toks[q][0] = ids[0];
        seqs[q][0] = q;
        pos[q][0] = fx.g.n_prompt;
        want[q][0] = true;
        b[q] = (struct engine_batch){1, toks[q], seqs[q], pos[q], want[q]};
    }
    worker_stop(&fx.w[1]);
    uint64_t t0 = ifd_now_ns();
    for (int q = 0; q < 2; q++) {
        cr_assert_eq(engine_submit(e, q, &b[q], &err), 0, "%s", err.msg);
        cr_assert_eq(stage_seq_len(st, q), fx.g.n_prompt + 1, "submit counts the position as held");
    }
    for (int q = 0; q < 2; q++) {
        cr_assert_lt(engine_complete(e, q, &err), 0, "seq %d: a forward through a dead worker succeeded", q);
        cr_assert_eq(stage_seq_len(st, q), fx.g.n_prompt, "seq %d: the failed forward's position is given back", q);
    }
    double ms = (double)(ifd_now_ns() - t0) / 1e6;
    cr_assert_lt(ms, 2000.0, "took %.0f ms to notice", ms);
    engine_destroy(e);
    fixture_down(&fx);
}

Test(remote_stage, bad_requests_answered_with_error_not_crash)
{
    struct fixture fx;
    fixture_up(&fx, "tinystories-656k");
    ifd_error err;
    /* The master side counts more slots than the worker has, so that a
     * sequence id beyond the worker's slots reaches the worker. */
    struct remote_stage_opts ro = {.hidden_size = fx.m->cfg.hidden_size, .n_seq_max = N_SEQ + 8, .n_ctx = N_CTX,
                                   .max_tokens = N_BATCH, .timeout_ms = 5000};
    struct stage *st;
    cr_assert_eq(remote_stage_create(&fx.links[0], 1, &ro, &st, &err), 0, "%s", err.msg);
    /* A sequence id beyond the worker's slots: refused by the worker. */
    int H = fx.m->cfg.hidden_size;
    float *h = calloc((size_t)H, sizeof(float));
    int32_t seq = N_SEQ + 5, pos = 0;
    struct stage_batch b = {1, &seq, &pos, h};
    cr_assert_lt(stage_forward(st, &b, &err), 0);
    cr_assert(strstr(err.msg, "outside"), "%s", err.msg);
    /* The connection stays usable. */
    seq = 0;
    cr_assert_eq(stage_forward(st, &b, &err), 0, "%s", err.msg);
    double rtt;
    cr_assert_eq(remote_link_ping(fx.links[0], 1000, &rtt, &err), 0, "%s", err.msg);
    /* A second master is refused while the first is connected. */
    struct net_conn *c2;
    cr_assert_eq(net_conn_connect(fx.w[0].addr, 2000, &c2, &err), 0, "%s", err.msg);
    struct net_hello self = {.role = NET_ROLE_MASTER}, peer;
    cr_assert_eq(net_conn_handshake_client(c2, &fx.key, &self, &peer, &err), 0, "%s", err.msg);
    struct net_error_msg em;
    tu_must_recv_error(c2, 2000, &em);
    cr_assert(memmem(em.msg, em.msg_len, "already serves", 14));
    net_conn_destroy(c2);
    cr_assert_eq(stage_seq_truncate(st, 0, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(stage_forward(st, &b, &err), 0, "the first master still works: %s", err.msg);
    free(h);
    stage_destroy(st);
    fixture_down(&fx);
}

/* ---- a late ERROR ---- */

/* A worker that answers each PING with an ERROR about an earlier request
 * first (as a worker of a chain reports the failure of a forward the master
 * has already given up on), then the PONG. */
struct late_error_worker {
    int listen_fd, port;
    struct net_key key;
    pthread_t th;
};

static void *late_error_thread(void *p)
{
    struct late_error_worker *w = p;
    int fd = accept(w->listen_fd, NULL, NULL);
    struct net_conn *c;
    ifd_error err;
    if (fd < 0 || net_conn_create(fd, "master", &c, &err) < 0)
        return NULL;
    struct net_hello self = {.role = NET_ROLE_WORKER, .caps = NET_CAP_CHAIN}, peer;
    if (net_conn_handshake_server(c, &w->key, &self, &peer, &err) >= 0) {
        uint16_t type;
        const uint8_t *pl;
        size_t len;
        while (net_conn_recv(c, &type, &pl, &len, 5000, &err) >= 0 && type == NET_MSG_PING) {
            net_conn_send_error(c, -EHOSTUNREACH, 1000, "next hop 127.0.0.1:1: connection refused");
            if (net_conn_send(c, NET_MSG_PONG, pl, len, 5000, &err) < 0)
                break;
        }
    }
    net_conn_destroy(c);
    return NULL;
}

Test(remote_stage, late_error_is_dropped)
{
    static struct late_error_worker w;
    ifd_error err;
    memset(w.key.k, 0x42, sizeof(w.key.k));
    cr_assert_eq(net_listen("127.0.0.1:0", &w.listen_fd, &w.port, &err), 0, "%s", err.msg);
    pthread_create(&w.th, NULL, late_error_thread, &w);
    char addr[NET_ADDR_MAX];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", w.port);
    struct remote_link *l;
    cr_assert_eq(remote_link_create("w0", addr, 0, 1, &l, &err), 0, "%s", err.msg);
    link_connect(l, &w.key);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(remote_link_ping(l, 2000, NULL, &err), 0, "ping %d: %s", i, err.msg);
    cr_assert_eq(remote_link_state(l), REMOTE_LINK_READY);
    remote_link_destroy(l);
    pthread_join(w.th, NULL);
    close(w.listen_fd);
}
