/* test_stage_server - the worker's server under hostile or changing peers
 * (issue 12): a stage of another width installed under a running server, an
 * unauthenticated peer declaring a huge frame, a trickled handshake, stallers
 * holding every slot while a master connects, half a frame then silence, and
 * a FORWARD naming a next hop the worker does not allow. The server runs in a
 * thread on loopback; the clients are raw sockets or net_conn. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <endian.h>
#include <netinet/in.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "conn.h"
#include "frame.h"
#include "common/golden_models.h"
#include "common/net_test_util.h"
#include "model/cpu_stage.h"
#include "model/model.h"
#include "base/clock.h"
#include "base/thread_pool.h"
#include "proto.h"
#include "stage_server.h"

struct server {
    struct stage_server *srv;
    int listen_fd, port;
    pthread_t th;
    char addr[NET_ADDR_MAX];
};

static struct net_key test_key;

static void *server_thread(void *p)
{
    struct server *sv = p;
    stage_server_run(sv->srv, sv->listen_fd);
    return NULL;
}

static void server_start(struct server *sv, const struct stage_server_opts *opts)
{
    ifd_error err;
    memset(test_key.k, 0x5a, sizeof(test_key.k));
    cr_assert_eq(net_crypto_init(&err), 0, "%s", err.msg);
    cr_assert_eq(stage_server_create(opts, NULL, NULL, &sv->srv, &err), 0, "%s", err.msg);
    cr_assert_eq(net_listen("127.0.0.1:0", &sv->listen_fd, &sv->port, &err), 0, "%s", err.msg);
    snprintf(sv->addr, sizeof(sv->addr), "127.0.0.1:%d", sv->port);
    pthread_create(&sv->th, NULL, server_thread, sv);
}

static void server_stop(struct server *sv)
{
    stage_server_stop(sv->srv);
    pthread_join(sv->th, NULL);
    close(sv->listen_fd);
    stage_server_destroy(sv->srv);
}

/* An authenticated connection as `role`, or NULL (err says why). */
static struct net_conn *client(const struct server *sv, int role, ifd_error *err)
{
    struct net_conn *c;
    if (net_conn_connect(sv->addr, 2000, &c, err) < 0)
        return NULL;
    struct net_hello self = {.role = (uint8_t)role, .caps = NET_CAP_CHAIN}, peer;
    if (net_conn_handshake_client(c, &test_key, &self, &peer, err) < 0) {
        net_conn_destroy(c);
        return NULL;
    }
    return c;
}

/* A TCP connection to 127.0.0.1:port from source address 127.0.0.<from>;
 * -1 if it cannot be had (no assertion: stallers run in their own thread). */
static int try_connect_from(int port, int from, bool one_byte)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)from)};
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    if (fd < 0 || bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0 ||
        (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != EINPROGRESS)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (one_byte) {
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        if (poll(&pf, 1, 1000) == 1)
            send(fd, "I", 1, MSG_NOSIGNAL);
    }
    return fd;
}

static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

/* Milliseconds until the server closes fd (reads and drops what it sends),
 * or -1 if it is still open after limit_ms. */
static double ms_until_closed(int fd, int limit_ms)
{
    uint64_t t0 = ifd_now_ns();
    for (;;) {
        int left = limit_ms - (int)((ifd_now_ns() - t0) / 1000000);
        if (left <= 0)
            return -1;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, left) <= 0)
            continue;
        char buf[4096];
        ssize_t k = recv(fd, buf, sizeof(buf), 0);
        if (k <= 0)
            return (double)(ifd_now_ns() - t0) / 1e6;
    }
}

/* ---- item 1: the worker's buffers follow the stage ---- */

/* Sends one FORWARD of n tokens (seq, positions from pos0) through c and
 * checks the RESULT against the same batch run on `ref`, bit for bit. */
static void forward_matches(struct net_conn *c, struct stage *ref, int n, int seq, int pos0)
{
    int H = ref->hidden_size;
    float *h = malloc(sizeof(float) * (size_t)n * H), *want = malloc(sizeof(float) * (size_t)n * H);
    int32_t *seqs = malloc(sizeof(int32_t) * (size_t)n), *pos = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        seqs[i] = seq;
        pos[i] = pos0 + i;
        for (int j = 0; j < H; j++)
            h[(size_t)i * H + j] = (float)((i * 31 + j * 7) % 97) / 97.0f - 0.5f;
    }
    struct net_forward f = {.req_id = 77, .n_tokens = (uint32_t)n, .hidden = (uint32_t)H,
                            .layer_first = (uint32_t)ref->layer_first, .layer_last = (uint32_t)ref->layer_last,
                            .seq_ids = seqs, .positions = pos, .hidden_data = h};
    struct net_buf b = {0};
    ifd_error err;
    cr_assert_geq(net_forward_encode(&b, &f), 0);
    cr_assert_eq(net_conn_send(c, NET_MSG_FORWARD, b.data, b.len, 5000, &err), 0, "%s", err.msg);
    memcpy(want, h, sizeof(float) * (size_t)n * H);
    struct stage_batch sb = {.n_tokens = n, .seq_ids = seqs, .positions = pos, .hidden = want};
    cr_assert_eq(stage_forward(ref, &sb, &err), 0, "%s", err.msg);
    uint16_t type;
    const uint8_t *p;
    size_t len;
    cr_assert_eq(net_conn_recv(c, &type, &p, &len, 20000, &err), 0, "%s", err.msg);
    if (type == NET_MSG_ERROR) {
        struct net_error_msg em;
        net_error_decode(p, len, &em, &err);
        cr_assert_fail("worker answered ERROR: %.*s", (int)em.msg_len, em.msg);
    }
    cr_assert_eq(type, NET_MSG_RESULT);
    struct net_result res;
    cr_assert_eq(net_result_decode(p, len, (uint32_t)n, (uint32_t)H, &res, &err), 0, "%s", err.msg);
    cr_assert_eq(memcmp(res.hidden_data, want, sizeof(float) * (size_t)n * H), 0,
                 "worker's hidden state differs from the local stage's");
    net_buf_finish(&b);
    free(h);
    free(want);
    free(seqs);
    free(pos);
}

/* A master restarted on another model installs a stage twice as wide, with
 * more sequences and a longer context, under the same server: the buffers
 * sized for the first stage must not be reused for the second (before the
 * fix: a heap overflow of the hidden buffer, caught by ASan). Then back to
 * the narrow one. */
Test(stage_server, model_switch_resizes_buffers)
{
    struct model *narrow = golden_load_model("qwen3-tiny-random"), *wide = golden_load_model("tinystories-656k");
    cr_assert_lt(narrow->cfg.hidden_size, wide->cfg.hidden_size);
    struct thread_pool *pool = thread_pool_create(1);
    struct server sv;
    struct stage_server_opts o = {.key = &test_key, .n_threads = 1};
    server_start(&sv, &o);
    ifd_error err;
    struct {
        struct model *m;
        int n_seq, n_ctx, n;
    } steps[] = {{narrow, 1, 64, 48}, {wide, 4, 256, 200}, {narrow, 2, 32, 24}};
    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        struct model *m = steps[k].m;
        struct stage *served, *ref;
        cr_assert_eq(cpu_stage_create(m, 0, m->cfg.n_layers, steps[k].n_seq, steps[k].n_ctx, pool, &served, &err), 0,
                     "%s", err.msg);
        cr_assert_eq(cpu_stage_create(m, 0, m->cfg.n_layers, steps[k].n_seq, steps[k].n_ctx, pool, &ref, &err), 0,
                     "%s", err.msg);
        stage_server_set_stage(sv.srv, served, NULL, NULL);
        struct net_conn *c = client(&sv, NET_ROLE_MASTER, &err);
        cr_assert_not_null(c, "%s", err.msg);
        /* The last sequence slot, with positions only this stage has: more
         * tokens, wider, than the buffers of the stage before held. */
        forward_matches(c, ref, steps[k].n, steps[k].n_seq - 1, 0);
        net_conn_destroy(c);
        stage_destroy(ref);
        /* Wait until the server saw the master leave, so the next one is admitted. */
        usleep(100 * 1000);
    }
    server_stop(&sv);
    thread_pool_destroy(pool);
    model_destroy(narrow);
    model_destroy(wide);
}

/* ---- item 5: before authentication ---- */

/* A header declaring the largest frame: refused on the header, before the
 * payload is waited for or allocated (before the fix the worker reserved
 * 80 MiB and waited up to 5 s for them). */
Test(stage_server, preauth_frame_larger_than_a_handshake_refused_at_once)
{
    struct server sv;
    struct stage_server_opts o = {.key = &test_key, .n_threads = 1};
    server_start(&sv, &o);
    int fds[16];
    uint64_t rss0 = net_rss_bytes();
    for (int i = 0; i < 16; i++) {
        fds[i] = raw_connect(sv.port);
        uint8_t hdr[NET_FRAME_HEADER_SIZE];
        net_frame_header_encode(hdr, NET_MSG_HELLO, 0, NULL, 0);
        uint32_t len = htole32(NET_FRAME_MAX_PAYLOAD);
        memcpy(hdr + 12, &len, 4);
        cr_assert_eq(send(fds[i], hdr, sizeof(hdr), MSG_NOSIGNAL), (ssize_t)sizeof(hdr));
        /* 1 MiB of the declared payload, as a flood would send. */
        static uint8_t junk[1 << 20];
        send(fds[i], junk, sizeof(junk), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    for (int i = 0; i < 16; i++) {
        double ms = ms_until_closed(fds[i], 3000);
        cr_assert(ms >= 0 && ms < 1500, "connection %d: closed after %.0f ms (want < 1500)", i, ms);
        close(fds[i]);
    }
    uint64_t rss1 = net_rss_bytes();
    cr_assert_lt(rss1, rss0 + (32u << 20), "RSS grew by %.1f MiB", (double)(rss1 - rss0) / 1048576.0);
    /* A real master still gets in. */
    ifd_error err;
    struct net_conn *c = client(&sv, NET_ROLE_MASTER, &err);
    cr_assert_not_null(c, "%s", err.msg);
    net_conn_destroy(c);
    server_stop(&sv);
}

static void send_slowly(int fd, const uint8_t *p, size_t n, int total_ms)
{
    for (size_t i = 0; i < n; i++) {
        if (send(fd, p + i, 1, MSG_NOSIGNAL) != 1)
            return;
        usleep((useconds_t)(total_ms * 1000 / (int)n));
    }
}

static void frame_of(uint8_t *out, uint16_t type, const struct net_buf *b)
{
    net_frame_header_encode(out, type, 0, b->data, (uint32_t)b->len);
    memcpy(out + NET_FRAME_HEADER_SIZE, b->data, b->len);
}

/* The handshake has one deadline (5 s): a client that trickles HELLO over
 * 3.5 s and then AUTH over 3.5 s (each frame within 5 s, which the old
 * per-frame deadline allowed) is cut off at 5 s, before its AUTH is done. */
Test(stage_server, trickled_handshake_cut_at_one_deadline, .timeout = 30)
{
    struct server sv;
    struct stage_server_opts o = {.key = &test_key, .n_threads = 1};
    server_start(&sv, &o);
    int fd = raw_connect(sv.port);
    struct net_hello mine = {.version_major = NET_PROTO_MAJOR, .version_minor = NET_PROTO_MINOR,
                             .role = NET_ROLE_MASTER, .flags = NET_HELLO_F_AUTH};
    net_random(mine.nonce, NET_NONCE_BYTES);
    struct net_buf b = {0};
    cr_assert_geq(net_hello_encode(&b, &mine), 0);
    uint8_t fr[NET_FRAME_HEADER_SIZE + 64];
    size_t n = NET_FRAME_HEADER_SIZE + b.len;
    frame_of(fr, NET_MSG_HELLO, &b);
    uint64_t t0 = ifd_now_ns();
    send_slowly(fd, fr, n, 3500);
    /* The server's HELLO. */
    uint8_t in[NET_FRAME_HEADER_SIZE + 56];
    size_t got = 0;
    while (got < sizeof(in)) {
        ssize_t k = recv(fd, in + got, sizeof(in) - got, 0);
        cr_assert_gt(k, 0, "no HELLO from the server");
        got += (size_t)k;
    }
    struct net_hello peer;
    ifd_error err;
    cr_assert_eq(net_hello_decode(in + NET_FRAME_HEADER_SIZE, 56, &peer, &err), 0, "%s", err.msg);
    uint8_t proof[NET_PROOF_BYTES];
    net_auth_proof(&test_key, 'C', mine.role, peer.role, mine.nonce, peer.nonce, proof);
    cr_assert_geq(net_auth_encode(&b, proof), 0);
    frame_of(fr, NET_MSG_AUTH, &b);
    send_slowly(fd, fr, NET_FRAME_HEADER_SIZE + b.len, 3500);
    /* Whatever the server sent after its HELLO, it must be the close, at the
     * handshake's deadline, not its AUTH answer. */
    uint8_t rest[256];
    ssize_t k = recv(fd, rest, sizeof(rest), MSG_DONTWAIT);
    double ms = (double)(ifd_now_ns() - t0) / 1e6;
    cr_assert(k <= 0 || (k >= 20 && rest[6] != NET_MSG_AUTH), "the server answered a handshake of %.0f ms", ms);
    double closed = ms_until_closed(fd, 3000);
    cr_assert_geq(closed, 0, "connection still open after %.0f ms", ms + 3000);
    net_buf_finish(&b);
    close(fd);
    server_stop(&sv);
}

#define MAX_STALLERS 64

struct stallers {
    int port, from, n;
    bool one_byte; /* send one byte of a header, then nothing */
    volatile bool stop;
    int reconnects;
    int fds[MAX_STALLERS];
};

/* Peers that connect and say nothing, reconnecting as soon as they are dropped. */
static void *stallers_main(void *p)
{
    struct stallers *st = p;
    for (int i = 0; i < st->n; i++)
        st->fds[i] = try_connect_from(st->port, st->from, st->one_byte);
    while (!st->stop) {
        for (int i = 0; i < st->n; i++) {
            struct pollfd pf = {.fd = st->fds[i], .events = POLLIN};
            if (st->fds[i] < 0 || poll(&pf, 1, 0) > 0) {
                if (st->fds[i] >= 0)
                    close(st->fds[i]);
                st->fds[i] = try_connect_from(st->port, st->from, st->one_byte);
                st->reconnects++;
            }
        }
        usleep(2000);
    }
    for (int i = 0; i < st->n; i++)
        if (st->fds[i] >= 0)
            close(st->fds[i]);
    return NULL;
}

/* n stallers from 127.0.0.<from> against 30 master handshakes in a row from
 * 127.0.0.1: how many of those succeed. */
static int masters_admitted_under_stallers(int n, int from, bool one_byte, char *last, size_t last_len)
{
    struct server sv;
    struct stage_server_opts o = {.key = &test_key, .n_threads = 1};
    server_start(&sv, &o);
    struct stallers st = {.port = sv.port, .from = from, .n = n, .one_byte = one_byte};
    pthread_t th;
    pthread_create(&th, NULL, stallers_main, &st);
    usleep(300 * 1000);
    int ok = 0;
    ifd_error err = {{0}};
    for (int i = 0; i < 30; i++) {
        struct net_conn *c = client(&sv, NET_ROLE_MASTER, &err);
        if (c) {
            ok++;
            net_conn_destroy(c);
        } else {
            snprintf(last, last_len, "%s", err.msg);
        }
        usleep(20 * 1000);
    }
    st.stop = true;
    pthread_join(th, NULL);
    server_stop(&sv);
    return ok;
}

/* The case: 20 silent stallers on the master's own address held the
 * 16 slots for 5 s each and every master was refused. */
Test(stage_server, stallers_do_not_lock_out_the_master, .timeout = 60)
{
    char last[IFD_ERROR_MSG_MAX] = "";
    int ok = masters_admitted_under_stallers(20, 1, false, last, sizeof(last));
    cr_assert_eq(ok, 30, "%d of 30 master handshakes succeeded under 20 stallers; last error: %s", ok, last);
}

/* More stallers than the server has slots, from another address, each
 * sending one byte (so the kernel passes them on) and reconnecting at once
 * when dropped: that address gets its share of the pre-auth pool, 4, and the
 * master's address is never crowded out. */
Test(stage_server, stallers_from_another_address_get_their_share_only, .timeout = 60)
{
    char last[IFD_ERROR_MSG_MAX] = "";
    int ok = masters_admitted_under_stallers(MAX_STALLERS, 2, true, last, sizeof(last));
    cr_assert_eq(ok, 30, "%d of 30 master handshakes succeeded under %d stallers; last error: %s", ok, MAX_STALLERS,
                 last);
}

/* ---- item 6: after authentication ---- */

/* Half a frame then silence: closed after io_timeout (here 500 ms), where
 * before the fix it stayed open for good. */
Test(stage_server, half_a_frame_then_silence_times_out)
{
    struct server sv;
    struct stage_server_opts o = {.key = &test_key, .n_threads = 1, .io_timeout_ms = 500};
    server_start(&sv, &o);
    ifd_error err;
    struct net_conn *c = client(&sv, NET_ROLE_MASTER, &err);
    cr_assert_not_null(c, "%s", err.msg);
    uint8_t half[10] = {'I', 'F', 'P', '1', NET_PROTO_MAJOR};
    cr_assert_eq(send(net_conn_fd(c), half, sizeof(half), MSG_NOSIGNAL), (ssize_t)sizeof(half));
    double ms = ms_until_closed(net_conn_fd(c), 5000);
    cr_assert(ms >= 400 && ms < 3000, "closed after %.0f ms (io_timeout 500 ms)", ms);
    net_conn_destroy(c);
    /* An idle authenticated connection is not closed by it. */
    c = client(&sv, NET_ROLE_MASTER, &err);
    cr_assert_not_null(c, "%s", err.msg);
    usleep(1200 * 1000);
    struct net_buf b = {0};
    struct net_ping pg = {.req_id = 5, .t_ns = 1};
    cr_assert_geq(net_ping_encode(&b, &pg), 0);
    cr_assert_eq(net_conn_send(c, NET_MSG_PING, b.data, b.len, 2000, &err), 0, "%s", err.msg);
    uint16_t type;
    const uint8_t *p;
    size_t len;
    cr_assert_eq(net_conn_recv(c, &type, &p, &len, 2000, &err), 0, "idle link closed: %s", err.msg);
    cr_assert_eq(type, NET_MSG_PONG);
    net_buf_finish(&b);
    net_conn_destroy(c);
    server_stop(&sv);
}

/* A FORWARD whose route names a host the worker's next_hops does not list is
 * refused with an ERROR naming it, before the stage runs and without a
 * connection attempt; a listed one is tried. */
Test(stage_server, forward_to_unlisted_next_hop_refused)
{
    struct model *m = golden_load_model("qwen3-tiny-random");
    struct thread_pool *pool = thread_pool_create(1);
    struct server sv;
    const char *hops[] = {"127.0.0.1:1"};
    struct stage_server_opts o = {.key = &test_key, .n_threads = 1, .next_hops = hops, .n_next_hops = 1};
    server_start(&sv, &o);
    ifd_error err;
    struct stage *st;
    cr_assert_eq(cpu_stage_create(m, 0, 1, 1, 16, pool, &st, &err), 0, "%s", err.msg);
    stage_server_set_stage(sv.srv, st, NULL, NULL);
    struct net_conn *c = client(&sv, NET_ROLE_MASTER, &err);
    cr_assert_not_null(c, "%s", err.msg);
    int H = m->cfg.hidden_size;
    float *h = calloc((size_t)H, sizeof(float));
    int32_t seq = 0, pos = 0;
    const char *targets[] = {"10.11.12.13:22", "127.0.0.2:1", "127.0.0.1:1"};
    for (int i = 0; i < 3; i++) {
        struct net_route_hop hop = {.layer_first = 1, .layer_last = 2};
        snprintf(hop.addr, sizeof(hop.addr), "%s", targets[i]);
        struct net_forward f = {.req_id = 900 + (uint64_t)i, .n_tokens = 1, .hidden = (uint32_t)H, .layer_first = 0,
                                .layer_last = 1, .n_route = 1, .route = &hop, .seq_ids = &seq, .positions = &pos,
                                .hidden_data = h};
        struct net_buf b = {0};
        cr_assert_geq(net_forward_encode(&b, &f), 0);
        cr_assert_eq(net_conn_send(c, NET_MSG_FORWARD, b.data, b.len, 2000, &err), 0, "%s", err.msg);
        net_buf_finish(&b);
        struct net_error_msg em;
        tu_must_recv_error(c, 10000, &em);
        cr_assert_eq(em.req_id, 900 + (uint64_t)i);
        bool refused = memmem(em.msg, em.msg_len, "not allowed", 11) != NULL;
        if (i < 2)
            cr_assert(refused && memmem(em.msg, em.msg_len, targets[i], strlen(targets[i])),
                      "%s: %.*s", targets[i], (int)em.msg_len, em.msg);
        else /* listed: tried (nothing listens on port 1) */
            cr_assert(!refused && memmem(em.msg, em.msg_len, "next worker", 11), "%.*s", (int)em.msg_len, em.msg);
    }
    free(h);
    net_conn_destroy(c);
    server_stop(&sv);
    thread_pool_destroy(pool);
    model_destroy(m);
}
