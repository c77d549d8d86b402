/* test_protocol - the cluster wire protocol: frames, every message's round
 * trip, malformed input, and the handshake against wrong keys, other
 * versions, garbage, replays and reflections. Runs over socketpairs. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "conn.h"
#include "model/dtype.h"
#include "frame.h"
#include "proto.h"

/* ---------------------------------------------------------------- frames */

Test(frame, crc32c_known_vector)
{
    /* RFC 3720 appendix B.4: CRC32C of "123456789" is 0xE3069283. */
    cr_assert_eq(net_crc32c(0, "123456789", 9), 0xE3069283u);
    uint8_t zeros[32] = {0};
    cr_assert_eq(net_crc32c(0, zeros, 32), 0x8A9136AAu);
    /* Split computation equals one pass. */
    cr_assert_eq(net_crc32c(net_crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
}

Test(frame, header_round_trip_and_corruption)
{
    uint8_t hdr[NET_FRAME_HEADER_SIZE];
    const char payload[] = "hello frame";
    net_frame_header_encode(hdr, NET_MSG_PING, 0, payload, sizeof(payload));
    cr_assert_eq(hdr[0], 'I');
    cr_assert_eq(hdr[1], 'F');
    cr_assert_eq(hdr[2], 'P');
    cr_assert_eq(hdr[3], '1');
    struct net_frame_header h;
    ifd_error err;
    cr_assert_eq(net_frame_header_decode(hdr, NET_FRAME_MAX_PAYLOAD, &h, &err), 0);
    cr_assert_eq(h.type, NET_MSG_PING);
    cr_assert_eq(h.length, sizeof(payload));
    cr_assert_eq(h.version_major, NET_PROTO_MAJOR);
    cr_assert_eq(net_frame_check_crc(hdr, payload, sizeof(payload), &err), 0);
    /* Every single-bit flip of header or payload is caught. */
    char p2[sizeof(payload)];
    for (size_t bit = 0; bit < sizeof(payload) * 8; bit++) {
        memcpy(p2, payload, sizeof(p2));
        p2[bit / 8] ^= (char)(1 << (bit % 8));
        cr_assert_lt(net_frame_check_crc(hdr, p2, sizeof(p2), &err), 0);
    }
    for (size_t bit = 32; bit < 128; bit++) { /* past the magic, before the crc */
        uint8_t h2[NET_FRAME_HEADER_SIZE];
        memcpy(h2, hdr, sizeof(h2));
        h2[bit / 8] ^= (uint8_t)(1 << (bit % 8));
        cr_assert_lt(net_frame_check_crc(h2, payload, sizeof(payload), &err), 0);
    }
}

Test(frame, refuses_bad_magic_oversize_flags_and_version)
{
    uint8_t hdr[NET_FRAME_HEADER_SIZE];
    struct net_frame_header h;
    ifd_error err;
    net_frame_header_encode(hdr, NET_MSG_PING, 0, NULL, 0);
    hdr[0] = 'G';
    cr_assert_eq(net_frame_header_decode(hdr, NET_FRAME_MAX_PAYLOAD, &h, &err), -EBADMSG);
    cr_assert(strstr(err.msg, "not an inferd frame"), "%s", err.msg);

    net_frame_header_encode(hdr, NET_MSG_FORWARD, 0, NULL, 0);
    uint32_t big = NET_FRAME_MAX_PAYLOAD + 1;
    memcpy(hdr + 12, &big, 4);
    cr_assert_eq(net_frame_header_decode(hdr, NET_FRAME_MAX_PAYLOAD, &h, &err), -EMSGSIZE);
    cr_assert(strstr(err.msg, "exceeds the limit"), "%s", err.msg);
    /* A receiver's own tighter bound applies too. */
    uint32_t mid = 5000;
    memcpy(hdr + 12, &mid, 4);
    cr_assert_eq(net_frame_header_decode(hdr, 4096, &h, &err), -EMSGSIZE);

    net_frame_header_encode(hdr, NET_MSG_PING, 0x80, NULL, 0);
    cr_assert_eq(net_frame_header_decode(hdr, NET_FRAME_MAX_PAYLOAD, &h, &err), -EBADMSG);

    net_frame_header_encode(hdr, NET_MSG_HELLO, 0, NULL, 0);
    hdr[4] = NET_PROTO_MAJOR + 1;
    cr_assert_eq(net_frame_header_decode(hdr, NET_FRAME_MAX_PAYLOAD, &h, &err), -EPROTONOSUPPORT);
    cr_assert(strstr(err.msg, "protocol version 2."), "%s", err.msg);
}

/* -------------------------------------------------------- message round trips */

/* Every proper prefix of a valid payload must be refused without a crash. */
#define CHECK_PREFIXES(buf, call)                                                                  \
    do {                                                                                           \
        for (size_t cut = 0; cut < (buf).len; cut++) {                                             \
            uint8_t *copy = malloc(cut ? cut : 1);                                                 \
            memcpy(copy, (buf).data, cut);                                                         \
            const uint8_t *p = copy;                                                               \
            size_t len = cut;                                                                      \
            cr_assert_lt((call), 0, "prefix of %zu bytes accepted", cut);                          \
            free(copy);                                                                            \
        }                                                                                          \
    } while (0)

Test(proto, hello_auth_error)
{
    struct net_buf b = {0};
    struct net_hello h = {.version_major = 1, .version_minor = 0, .role = NET_ROLE_MASTER,
                          .flags = NET_HELLO_F_AUTH, .caps = NET_CAP_ZSTD | NET_CAP_CHAIN,
                          .mem_available = 123456789012ull, .n_threads = 7,
                          .speed_mbps = 23456};
    for (int i = 0; i < NET_NONCE_BYTES; i++)
        h.nonce[i] = (uint8_t)i;
    cr_assert_eq(net_hello_encode(&b, &h), 0);
    cr_assert_eq(b.len, 56);
    struct net_hello g;
    ifd_error err;
    cr_assert_eq(net_hello_decode(b.data, b.len, &g, &err), 0);
    cr_assert_eq(g.role, NET_ROLE_MASTER);
    cr_assert_eq(g.caps, NET_CAP_ZSTD | NET_CAP_CHAIN);
    cr_assert_eq(g.mem_available, 123456789012ull);
    cr_assert_eq(g.n_threads, 7);
    cr_assert_eq(g.speed_mbps, 23456);
    cr_assert_arr_eq(g.nonce, h.nonce, NET_NONCE_BYTES);
    CHECK_PREFIXES(b, net_hello_decode(p, len, &g, &err));
    b.data[2] = 9; /* unknown role */
    cr_assert_lt(net_hello_decode(b.data, b.len, &g, &err), 0);

    uint8_t proof[NET_PROOF_BYTES], back[NET_PROOF_BYTES];
    memset(proof, 0xab, sizeof(proof));
    cr_assert_eq(net_auth_encode(&b, proof), 0);
    cr_assert_eq(net_auth_decode(b.data, b.len, back, &err), 0);
    cr_assert_arr_eq(back, proof, sizeof(proof));
    CHECK_PREFIXES(b, net_auth_decode(p, len, back, &err));

    cr_assert_eq(net_error_encode(&b, -ENOENT, 42, "no such layer"), 0);
    struct net_error_msg em;
    cr_assert_eq(net_error_decode(b.data, b.len, &em, &err), 0);
    cr_assert_eq(em.code, -ENOENT);
    cr_assert_eq(em.req_id, 42);
    cr_assert_eq(em.msg_len, strlen("no such layer"));
    cr_assert_eq(memcmp(em.msg, "no such layer", em.msg_len), 0);
    CHECK_PREFIXES(b, net_error_decode(p, len, &em, &err));
    net_buf_finish(&b);
}

Test(proto, assign_round_trip_and_malformed)
{
    struct net_tensor_desc t[2] = {
        {.nbytes = 4 * 128, .dtype = IFD_DTYPE_F32, .n_dims = 1, .shape = {128},
         .name = "model.layers.1.input_layernorm.weight"},
        {.nbytes = 2 * 64 * 128, .dtype = IFD_DTYPE_BF16, .n_dims = 2, .shape = {64, 128},
         .name = "model.layers.1.self_attn.k_proj.weight"},
    };
    memset(t[0].hash, 1, 32);
    memset(t[1].hash, 2, 32);
    const char *cfg = "{\"hidden_size\":128}";
    struct net_assign a = {.layer_first = 1, .layer_last = 2, .n_layers = 2, .n_seq_max = 4, .n_ctx = 512,
                           .model_name = "tinystories", .config_json = cfg, .config_len = (uint32_t)strlen(cfg),
                           .n_tensors = 2, .tensors = t};
    memset(a.model_hash, 0x5a, 32);
    struct net_buf b = {0};
    cr_assert_eq(net_assign_encode(&b, &a), 0);
    struct net_assign d;
    ifd_error err;
    cr_assert_eq(net_assign_decode(b.data, b.len, &d, &err), 0, "%s", err.msg);
    cr_assert_eq(d.layer_first, 1);
    cr_assert_eq(d.layer_last, 2);
    cr_assert_eq(d.n_ctx, 512);
    cr_assert_str_eq(d.model_name, "tinystories");
    cr_assert_str_eq(d.config_json, cfg);
    cr_assert_eq(d.n_tensors, 2);
    cr_assert_str_eq(d.tensors[1].name, t[1].name);
    cr_assert_eq(d.tensors[1].shape[0], 64);
    cr_assert_eq(d.tensors[1].shape[1], 128);
    cr_assert_eq(d.tensors[1].dtype, IFD_DTYPE_BF16);
    cr_assert_arr_eq(d.tensors[0].hash, t[0].hash, 32);
    cr_assert_arr_eq(d.model_hash, a.model_hash, 32);
    net_assign_finish(&d);
    CHECK_PREFIXES(b, net_assign_decode(p, len, &d, &err));

    /* A tensor count far beyond the payload is refused before allocation. */
    uint32_t huge = NET_MAX_TENSORS;
    memcpy(b.data + 20, &huge, 4);
    cr_assert_lt(net_assign_decode(b.data, b.len, &d, &err), 0);
    huge = 0xffffffffu;
    memcpy(b.data + 20, &huge, 4);
    cr_assert_eq(net_assign_decode(b.data, b.len, &d, &err), -EMSGSIZE);

    /* Size that does not match the shape. */
    t[1].nbytes += 2;
    cr_assert_eq(net_assign_encode(&b, &a), 0);
    cr_assert_lt(net_assign_decode(b.data, b.len, &d, &err), 0);
    cr_assert(strstr(err.msg, "do not match its shape"), "%s", err.msg);
    t[1].nbytes -= 2;

    /* Empty or inverted layer range. */
    a.layer_first = 2;
    cr_assert_eq(net_assign_encode(&b, &a), 0);
    cr_assert_lt(net_assign_decode(b.data, b.len, &d, &err), 0);
    net_buf_finish(&b);
}

Test(proto, have_chunk_ready)
{
    struct net_buf b = {0};
    uint64_t have[3] = {0, 512, 99};
    cr_assert_eq(net_have_encode(&b, have, 3), 0);
    const uint8_t *hv;
    ifd_error err;
    cr_assert_eq(net_have_decode(b.data, b.len, 3, &hv, &err), 0);
    for (uint32_t i = 0; i < 3; i++)
        cr_assert_eq(net_have_get(hv, i), have[i]);
    cr_assert_lt(net_have_decode(b.data, b.len, 2, &hv, &err), 0); /* count must match ASSIGN */
    CHECK_PREFIXES(b, net_have_decode(p, len, 3, &hv, &err));

    struct net_chunk c = {.index = 5, .flags = 0, .offset = 1u << 20, .raw_len = 8, .data_len = 8};
    cr_assert_eq(net_chunk_encode_header(&b, &c), 0);
    const char data[8] = "abcdefg";
    memcpy(b.data + b.len, data, 0); /* header only so far */
    net_buf_reserve(&b, b.len + 8);
    memcpy(b.data + b.len, data, 8);
    b.len += 8;
    struct net_chunk d;
    cr_assert_eq(net_chunk_decode(b.data, b.len, &d, &err), 0);
    cr_assert_eq(d.index, 5);
    cr_assert_eq(d.offset, 1u << 20);
    cr_assert_eq(memcmp(d.data, data, 8), 0);
    CHECK_PREFIXES(b, net_chunk_decode(p, len, &d, &err));
    /* Raw length beyond the chunk limit. */
    c.raw_len = NET_CHUNK_MAX + 1;
    c.flags = NET_CHUNK_F_ZSTD;
    cr_assert_eq(net_chunk_encode_header(&b, &c), 0);
    cr_assert_lt(net_chunk_decode(b.data, b.len, &d, &err), 0);

    struct net_ready r = {1, 2, 3}, r2;
    cr_assert_eq(net_ready_encode(&b, &r), 0);
    cr_assert_eq(net_ready_decode(b.data, b.len, &r2, &err), 0);
    cr_assert_eq(r2.weight_bytes, 1);
    cr_assert_eq(r2.load_ms, 3);
    CHECK_PREFIXES(b, net_ready_decode(p, len, &r2, &err));
    net_buf_finish(&b);
}

Test(proto, forward_result_round_trip_and_bounds)
{
    enum { N = 3, H = 5 };
    int32_t seq[N] = {0, 0, 2}, pos[N] = {7, 8, 0};
    float hid[N * H];
    for (int i = 0; i < N * H; i++)
        hid[i] = (float)i * 0.5f - 3.0f;
    struct net_route_hop route[2] = {{1, 2, "127.0.0.1:10129"}, {2, 4, "[::1]:10130"}};
    struct net_forward f = {.req_id = 77, .n_tokens = N, .hidden = H, .layer_first = 0, .layer_last = 1,
                            .n_route = 2, .route = route, .seq_ids = seq, .positions = pos, .hidden_data = hid};
    struct net_buf b = {0};
    cr_assert_eq(net_forward_encode(&b, &f), 0);
    cr_assert_eq(b.len, 32 + 2 * 72 + N * 8 + N * H * 4);
    struct net_forward d;
    ifd_error err;
    cr_assert_eq(net_forward_decode(b.data, b.len, 16, H, &d, &err), 0, "%s", err.msg);
    cr_assert_eq(d.req_id, 77);
    cr_assert_eq(d.n_tokens, N);
    cr_assert_eq(d.n_route, 2);
    struct net_route_hop hop;
    cr_assert_eq(net_forward_route(&d, 1, &hop, &err), 0);
    cr_assert_str_eq(hop.addr, "[::1]:10130");
    cr_assert_eq(hop.layer_last, 4);
    cr_assert_lt(net_forward_route(&d, 2, &hop, &err), 0);
    cr_assert_eq(memcmp(d.seq_ids, seq, sizeof(seq)), 0);
    cr_assert_eq(memcmp(d.positions, pos, sizeof(pos)), 0);
    cr_assert_eq(memcmp(d.hidden_data, hid, sizeof(hid)), 0);
    CHECK_PREFIXES(b, net_forward_decode(p, len, 16, H, &d, &err));
    /* Receiver bounds: more tokens than its buffers, other hidden size. */
    cr_assert_eq(net_forward_decode(b.data, b.len, 2, H, &d, &err), -EMSGSIZE);
    cr_assert_lt(net_forward_decode(b.data, b.len, 16, H + 1, &d, &err), 0);
    /* A forged n_tokens that would overflow a naive size computation. */
    uint32_t forged = 0xffffffffu;
    memcpy(b.data + 8, &forged, 4);
    cr_assert_lt(net_forward_decode(b.data, b.len, 0xffffffffu, H, &d, &err), 0);
    /* An unterminated route address. */
    cr_assert_eq(net_forward_encode(&b, &f), 0);
    memset(b.data + 32 + 8, 'x', NET_ADDR_MAX);
    cr_assert_eq(net_forward_decode(b.data, b.len, 16, H, &d, &err), 0);
    cr_assert_lt(net_forward_route(&d, 0, &hop, &err), 0);

    struct net_result res = {.req_id = 77, .n_tokens = N, .hidden = H, .hidden_data = hid};
    cr_assert_eq(net_result_encode(&b, &res), 0);
    struct net_result rd;
    cr_assert_eq(net_result_decode(b.data, b.len, N, H, &rd, &err), 0);
    cr_assert_eq(rd.req_id, 77);
    cr_assert_eq(memcmp(rd.hidden_data, hid, sizeof(hid)), 0);
    cr_assert_lt(net_result_decode(b.data, b.len, N - 1, H, &rd, &err), 0);
    CHECK_PREFIXES(b, net_result_decode(p, len, N, H, &rd, &err));
    net_buf_finish(&b);
}

Test(proto, kv_ack_ping_stats)
{
    struct net_buf b = {0};
    ifd_error err;
    struct net_kv_truncate k = {9, 3, -1}, k2;
    cr_assert_eq(net_kv_truncate_encode(&b, &k), 0);
    cr_assert_eq(net_kv_truncate_decode(b.data, b.len, &k2, &err), 0);
    cr_assert_eq(k2.req_id, 9);
    cr_assert_eq(k2.seq_id, 3);
    cr_assert_eq(k2.n_keep, -1);
    CHECK_PREFIXES(b, net_kv_truncate_decode(p, len, &k2, &err));

    struct net_ack a = {10, -EIO}, a2;
    cr_assert_eq(net_ack_encode(&b, &a), 0);
    cr_assert_eq(net_ack_decode(b.data, b.len, &a2, &err), 0);
    cr_assert_eq(a2.status, -EIO);

    struct net_ping pg = {11, 123456789}, pg2;
    cr_assert_eq(net_ping_encode(&b, &pg), 0);
    cr_assert_eq(net_ping_decode(b.data, b.len, &pg2, &err), 0);
    cr_assert_eq(pg2.t_ns, 123456789);

    struct net_stats s = {1, 2, 3.25, 4, 5, 6, 7}, s2;
    cr_assert_eq(net_stats_encode(&b, &s), 0);
    cr_assert_eq(b.len, 56);
    cr_assert_eq(net_stats_decode(b.data, b.len, &s2, &err), 0);
    cr_assert_float_eq(s2.forward_ms, 3.25, 0);
    cr_assert_eq(s2.bytes_out, 7);
    CHECK_PREFIXES(b, net_stats_decode(p, len, &s2, &err));
    net_buf_finish(&b);
}

/* ------------------------------------------------------------ connections */

static void make_key(struct net_key *k, uint8_t fill)
{
    memset(k->k, fill, sizeof(k->k));
}

static void socket_pair(struct net_conn **a, struct net_conn **b)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ifd_error err;
    cr_assert_eq(net_conn_create(sv[0], "client-end", a, &err), 0);
    cr_assert_eq(net_conn_create(sv[1], "server-end", b, &err), 0);
}

struct server_arg {
    struct net_conn *conn;
    const struct net_key *key;
    int ret;
    ifd_error err;
    struct net_hello peer;
};

static void *server_thread(void *p)
{
    struct server_arg *a = p;
    struct net_hello self = {.role = NET_ROLE_WORKER, .caps = NET_CAP_ZSTD};
    a->ret = net_conn_handshake_server(a->conn, a->key, &self, &a->peer, &a->err);
    return NULL;
}

static int client_handshake(struct net_conn *c, const struct net_key *key, ifd_error *err)
{
    struct net_hello self = {.role = NET_ROLE_MASTER, .caps = NET_CAP_ZSTD | NET_CAP_CHAIN}, peer;
    return net_conn_handshake_client(c, key, &self, &peer, err);
}

/* Both sides of a handshake: the server (sa) on a thread, the client on c
 * with key_c here. Returns the client's result; the server's is in sa. */
static int handshake_both(struct net_conn *c, const struct net_key *key_c, struct server_arg *sa, ifd_error *err)
{
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, server_thread, sa), 0);
    int r = client_handshake(c, key_c, err);
    pthread_join(th, NULL);
    return r;
}

Test(conn, sealed_session_round_trip)
{
    cr_assert_eq(net_crypto_init(NULL), 0);
    struct net_key k;
    make_key(&k, 7);
    struct net_conn *c, *s;
    socket_pair(&c, &s);
    struct server_arg sa = {.conn = s, .key = &k};
    ifd_error err;
    int r = handshake_both(c, &k, &sa, &err);
    cr_assert_eq(r, 0, "%s", err.msg);
    cr_assert_eq(sa.ret, 0, "%s", sa.err.msg);
    cr_assert_eq(sa.peer.role, NET_ROLE_MASTER);

    /* Messages both ways, several in a row (counters advance together). */
    for (int i = 0; i < 3; i++) {
        char msg[32];
        snprintf(msg, sizeof(msg), "message %d", i);
        cr_assert_eq(net_conn_send(c, NET_MSG_PING, msg, strlen(msg), 1000, &err), 0);
        uint16_t type;
        const uint8_t *p;
        size_t len;
        cr_assert_eq(net_conn_recv(s, &type, &p, &len, 1000, &err), 0, "%s", err.msg);
        cr_assert_eq(type, NET_MSG_PING);
        cr_assert_eq(len, strlen(msg));
        cr_assert_eq(memcmp(p, msg, len), 0);
        cr_assert_eq(net_conn_send(s, NET_MSG_PONG, p, len, 1000, &err), 0);
        cr_assert_eq(net_conn_recv(c, &type, &p, &len, 1000, &err), 0, "%s", err.msg);
        cr_assert_eq(type, NET_MSG_PONG);
    }
    net_conn_destroy(c);
    net_conn_destroy(s);
}

/* A raw end that writes frames byte for byte, to inject what an attacker
 * would: the server end under test is a real connection. */
static int raw_pair(struct net_conn **srv)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ifd_error err;
    cr_assert_eq(net_conn_create(sv[1], "server-end", srv, &err), 0);
    return sv[0];
}

static void raw_frame(int fd, uint16_t type, const void *payload, uint32_t len)
{
    uint8_t hdr[NET_FRAME_HEADER_SIZE];
    net_frame_header_encode(hdr, type, 0, payload, len);
    cr_assert_eq(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    if (len)
        cr_assert_eq(write(fd, payload, len), (ssize_t)len);
}

Test(conn, wrong_key_refused_on_both_sides)
{
    struct net_key k1, k2;
    make_key(&k1, 1);
    make_key(&k2, 2);
    struct net_conn *c, *s;
    socket_pair(&c, &s);
    struct server_arg sa = {.conn = s, .key = &k1};
    ifd_error err;
    int r = handshake_both(c, &k2, &sa, &err);
    cr_assert_eq(sa.ret, -EACCES);
    cr_assert(strstr(sa.err.msg, "authentication failed"), "%s", sa.err.msg);
    cr_assert_lt(r, 0);
    cr_assert(strstr(err.msg, "authentication failed"), "client sees: %s", err.msg);
    /* The refused connection is dead: nothing more goes through. */
    cr_assert_lt(net_conn_send(s, NET_MSG_PING, "x", 1, 100, &err), 0);
    net_conn_destroy(c);
    net_conn_destroy(s);
}

Test(conn, key_on_one_side_only_refused)
{
    struct net_key k;
    make_key(&k, 3);
    struct net_conn *c, *s;
    socket_pair(&c, &s);
    struct server_arg sa = {.conn = s, .key = &k};
    ifd_error err;
    int r = handshake_both(c, NULL, &sa, &err);
    cr_assert_eq(sa.ret, -EACCES);
    cr_assert_lt(r, 0);
    cr_assert(strstr(err.msg, "cluster key"), "%s", err.msg);
    net_conn_destroy(c);
    net_conn_destroy(s);
}

Test(conn, insecure_session_when_neither_has_a_key)
{
    struct net_conn *c, *s;
    socket_pair(&c, &s);
    struct server_arg sa = {.conn = s, .key = NULL};
    ifd_error err;
    cr_assert_eq(handshake_both(c, NULL, &sa, &err), 0, "%s", err.msg);
    cr_assert_eq(sa.ret, 0, "%s", sa.err.msg);
    cr_assert_eq(net_conn_send(c, NET_MSG_PING, "abc", 3, 1000, &err), 0);
    uint16_t type;
    const uint8_t *p;
    size_t len;
    cr_assert_eq(net_conn_recv(s, &type, &p, &len, 1000, &err), 0);
    cr_assert_eq(len, 3);
    net_conn_destroy(c);
    net_conn_destroy(s);
}

Test(conn, version_mismatch_refused_with_clear_error_on_both_sides)
{
    struct net_conn *s;
    int fd = raw_pair(&s);
    struct server_arg sa = {.conn = s, .key = NULL};
    pthread_t th;
    pthread_create(&th, NULL, server_thread, &sa);
    /* A HELLO from a future major version: header and body both say 2.x. */
    struct net_hello h = {.version_major = 2, .role = NET_ROLE_MASTER};
    struct net_buf b = {0};
    net_hello_encode(&b, &h);
    uint8_t hdr[NET_FRAME_HEADER_SIZE];
    net_frame_header_encode(hdr, NET_MSG_HELLO, 0, b.data, (uint32_t)b.len);
    hdr[4] = 2;
    cr_assert_eq(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    cr_assert_eq(write(fd, b.data, b.len), (ssize_t)b.len);
    pthread_join(th, NULL);
    cr_assert_eq(sa.ret, -EPROTONOSUPPORT);
    cr_assert(strstr(sa.err.msg, "protocol version 2."), "%s", sa.err.msg);
    /* The old peer is told, in a frame it can parse (ERROR layout is stable). */
    uint8_t rh[NET_FRAME_HEADER_SIZE];
    cr_assert_eq(read(fd, rh, sizeof(rh)), (ssize_t)sizeof(rh));
    struct net_frame_header fh;
    ifd_error err;
    cr_assert_eq(net_frame_header_decode(rh, NET_FRAME_MAX_PAYLOAD, &fh, &err), 0);
    cr_assert_eq(fh.type, NET_MSG_ERROR);
    uint8_t *pl = malloc(fh.length);
    cr_assert_eq(read(fd, pl, fh.length), (ssize_t)fh.length);
    struct net_error_msg em;
    cr_assert_eq(net_error_decode(pl, fh.length, &em, &err), 0);
    cr_assert(memmem(em.msg, em.msg_len, "protocol version", 16));
    free(pl);
    net_buf_finish(&b);
    close(fd);
    net_conn_destroy(s);
}

Test(conn, client_reports_server_of_other_version)
{
    /* The client side: the server answers with a frame of version 3. */
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct net_conn *c;
    ifd_error err;
    cr_assert_eq(net_conn_create(sv[0], "worker", &c, &err), 0);
    struct net_buf b = {0};
    net_error_encode(&b, -EPROTONOSUPPORT, 0, "this worker speaks 3.1");
    uint8_t hdr[NET_FRAME_HEADER_SIZE];
    net_frame_header_encode(hdr, NET_MSG_ERROR, 0, b.data, (uint32_t)b.len);
    hdr[4] = 3;
    hdr[5] = 1;
    cr_assert_eq(write(sv[1], hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    cr_assert_eq(write(sv[1], b.data, b.len), (ssize_t)b.len);
    int r = client_handshake(c, NULL, &err);
    cr_assert_eq(r, -EPROTONOSUPPORT);
    cr_assert(strstr(err.msg, "3.1"), "%s", err.msg);
    cr_assert(strstr(err.msg, "this worker speaks 3.1"), "%s", err.msg);
    net_buf_finish(&b);
    close(sv[1]);
    net_conn_destroy(c);
}

Test(conn, garbage_bytes_refused)
{
    struct net_conn *s;
    int fd = raw_pair(&s);
    const char garbage[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(write(fd, garbage, sizeof(garbage)), (ssize_t)sizeof(garbage));
    struct net_hello self = {.role = NET_ROLE_WORKER}, peer;
    ifd_error err;
    cr_assert_eq(net_conn_handshake_server(s, NULL, &self, &peer, &err), -EBADMSG);
    cr_assert(strstr(err.msg, "not an inferd frame"), "%s", err.msg);
    close(fd);
    net_conn_destroy(s);
}

Test(conn, oversized_and_truncated_and_slow_frames)
{
    struct net_conn *s;
    int fd = raw_pair(&s);
    ifd_error err;
    uint16_t type;
    const uint8_t *p;
    size_t len;
    /* Oversized: refused from the header alone, nothing allocated. */
    uint8_t hdr[NET_FRAME_HEADER_SIZE];
    net_frame_header_encode(hdr, NET_MSG_FORWARD, 0, NULL, 0);
    uint32_t big = 0xfffffff0u;
    memcpy(hdr + 12, &big, 4);
    cr_assert_eq(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    cr_assert_eq(net_conn_recv(s, &type, &p, &len, 1000, &err), -EMSGSIZE);
    cr_assert(net_conn_is_broken(s));
    close(fd);
    net_conn_destroy(s);

    /* Truncated: the header promises 100 bytes, 10 come, then close. */
    fd = raw_pair(&s);
    uint8_t payload[100] = {0};
    net_frame_header_encode(hdr, NET_MSG_PING, 0, payload, sizeof(payload));
    cr_assert_eq(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    cr_assert_eq(write(fd, payload, 10), 10);
    close(fd);
    cr_assert_eq(net_conn_recv(s, &type, &p, &len, 1000, &err), -ECONNRESET);
    cr_assert(strstr(err.msg, "truncated"), "%s", err.msg);
    net_conn_destroy(s);

    /* Slow: half a header, then nothing: the deadline ends it. */
    fd = raw_pair(&s);
    cr_assert_eq(write(fd, hdr, 7), 7);
    cr_assert_eq(net_conn_recv(s, &type, &p, &len, 200, &err), -ETIMEDOUT);
    close(fd);
    net_conn_destroy(s);

    /* Corrupt: a flipped payload byte fails the CRC. */
    fd = raw_pair(&s);
    net_frame_header_encode(hdr, NET_MSG_PING, 0, payload, sizeof(payload));
    payload[50] ^= 0x10;
    cr_assert_eq(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    cr_assert_eq(write(fd, payload, sizeof(payload)), (ssize_t)sizeof(payload));
    cr_assert_eq(net_conn_recv(s, &type, &p, &len, 1000, &err), -EBADMSG);
    cr_assert(strstr(err.msg, "checksum"), "%s", err.msg);
    close(fd);
    net_conn_destroy(s);
}

/* Drives the attacker's side of a handshake against a keyed server: sends
 * HELLO with nonce_c, reads the server's HELLO, then sends the proof that
 * make_proof() builds from the server's nonce. Returns the server's result. */
typedef void (*proof_fn)(const struct net_key *k, const uint8_t nc[32], const uint8_t ns[32], uint8_t out[32]);

static int attack(const struct net_key *key, const uint8_t nonce_c[32], proof_fn make_proof, ifd_error *ret_err)
{
    struct net_conn *s;
    int fd = raw_pair(&s);
    struct server_arg sa = {.conn = s, .key = key};
    pthread_t th;
    pthread_create(&th, NULL, server_thread, &sa);
    struct net_hello h = {.version_major = NET_PROTO_MAJOR, .role = NET_ROLE_MASTER, .flags = NET_HELLO_F_AUTH};
    memcpy(h.nonce, nonce_c, 32);
    struct net_buf b = {0};
    net_hello_encode(&b, &h);
    raw_frame(fd, NET_MSG_HELLO, b.data, (uint32_t)b.len);
    uint8_t rh[NET_FRAME_HEADER_SIZE];
    cr_assert_eq(read(fd, rh, sizeof(rh)), (ssize_t)sizeof(rh));
    struct net_frame_header fh;
    cr_assert_eq(net_frame_header_decode(rh, NET_FRAME_MAX_PAYLOAD, &fh, ret_err), 0);
    cr_assert_eq(fh.type, NET_MSG_HELLO);
    uint8_t pl[256];
    cr_assert_eq(read(fd, pl, fh.length), (ssize_t)fh.length);
    struct net_hello sh;
    cr_assert_eq(net_hello_decode(pl, fh.length, &sh, ret_err), 0);
    uint8_t proof[32];
    make_proof(key, nonce_c, sh.nonce, proof);
    raw_frame(fd, NET_MSG_AUTH, proof, 32);
    pthread_join(th, NULL);
    *ret_err = sa.err;
    net_buf_finish(&b);
    close(fd);
    net_conn_destroy(s);
    return sa.ret;
}

static const uint8_t recorded_nc[32] = {1, 2, 3};
static uint8_t recorded_ns[32];

/* A proof captured from an earlier, legitimate session (its server nonce was
 * recorded_ns): replayed now. */
static void replayed_proof(const struct net_key *k, const uint8_t nc[32], const uint8_t ns[32], uint8_t out[32])
{
    net_auth_proof(k, 'C', NET_ROLE_MASTER, NET_ROLE_WORKER, recorded_nc, recorded_ns, out);
}
/* The server's own proof for this very transcript, reflected back at it. */
static void reflected_proof(const struct net_key *k, const uint8_t nc[32], const uint8_t ns[32], uint8_t out[32])
{
    net_auth_proof(k, 'S', NET_ROLE_MASTER, NET_ROLE_WORKER, nc, ns, out);
}
/* A client proof for the same nonces but other roles (a worker's proof used as a master's). */
static void role_swapped_proof(const struct net_key *k, const uint8_t nc[32], const uint8_t ns[32], uint8_t out[32])
{
    net_auth_proof(k, 'C', NET_ROLE_PEER, NET_ROLE_WORKER, nc, ns, out);
}
/* The honest proof: the control that shows the harness itself works. */
static void honest_proof(const struct net_key *k, const uint8_t nc[32], const uint8_t ns[32], uint8_t out[32])
{
    net_auth_proof(k, 'C', NET_ROLE_MASTER, NET_ROLE_WORKER, nc, ns, out);
}

Test(conn, replayed_and_reflected_handshakes_refused)
{
    struct net_key k;
    make_key(&k, 9);
    net_random(recorded_ns, sizeof(recorded_ns));
    ifd_error err;
    cr_assert_eq(attack(&k, recorded_nc, honest_proof, &err), 0, "%s", err.msg);
    cr_assert_eq(attack(&k, recorded_nc, replayed_proof, &err), -EACCES);
    cr_assert(strstr(err.msg, "authentication failed"), "%s", err.msg);
    cr_assert_eq(attack(&k, recorded_nc, reflected_proof, &err), -EACCES);
    cr_assert_eq(attack(&k, recorded_nc, role_swapped_proof, &err), -EACCES);
}

Test(conn, sealed_frames_cannot_be_replayed_or_forged)
{
    struct net_key k;
    make_key(&k, 4);
    /* Seal two frames in one direction and open them out of order. */
    struct net_seal tx, rx, tx2, rx2;
    uint8_t nc[32] = {1}, ns[32] = {2};
    net_session_derive(&k, NET_ROLE_MASTER, NET_ROLE_WORKER, nc, ns, &tx, &tx2);
    net_session_derive(&k, NET_ROLE_MASTER, NET_ROLE_WORKER, nc, ns, &rx, &rx2);
    cr_assert(memcmp(tx.key, tx2.key, 32) != 0, "directions have distinct keys");
    uint8_t ad[16] = {0};
    uint8_t f1[5 + NET_SEAL_OVERHEAD], f2[5 + NET_SEAL_OVERHEAD], out[5];
    net_seal_encrypt(&tx, ad, 16, "first", 5, f1);
    net_seal_encrypt(&tx, ad, 16, "secnd", 5, f2);
    ifd_error err;
    cr_assert_eq(net_seal_decrypt(&rx, ad, 16, f2, sizeof(f2), out, &err), -EBADMSG); /* reordered */
    cr_assert_eq(net_seal_decrypt(&rx, ad, 16, f1, sizeof(f1), out, &err), 0);
    cr_assert_eq(memcmp(out, "first", 5), 0);
    cr_assert_eq(net_seal_decrypt(&rx, ad, 16, f1, sizeof(f1), out, &err), -EBADMSG); /* replayed */
    uint8_t ad2[16] = {1};
    cr_assert_eq(net_seal_decrypt(&rx, ad2, 16, f2, sizeof(f2), out, &err), -EBADMSG); /* header changed */
    f2[3] ^= 1;
    cr_assert_eq(net_seal_decrypt(&rx, ad, 16, f2, sizeof(f2), out, &err), -EBADMSG); /* bit flipped */
    f2[3] ^= 1;
    cr_assert_eq(net_seal_decrypt(&rx, ad, 16, f2, sizeof(f2), out, &err), 0);
    cr_assert_eq(memcmp(out, "secnd", 5), 0);
    /* The ciphertext does not contain the plaintext. */
    cr_assert_null(memmem(f1, sizeof(f1), "first", 5));
}

Test(conn, unsealed_frame_after_handshake_refused)
{
    struct net_key k;
    make_key(&k, 5);
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    int spy = dup(sv[0]); /* the attacker can write onto the client's stream */
    struct net_conn *c, *s;
    ifd_error err;
    cr_assert_eq(net_conn_create(sv[0], "c", &c, &err), 0);
    cr_assert_eq(net_conn_create(sv[1], "s", &s, &err), 0);
    struct server_arg sa = {.conn = s, .key = &k};
    cr_assert_eq(handshake_both(c, &k, &sa, &err), 0, "%s", err.msg);
    cr_assert_eq(sa.ret, 0);
    raw_frame(spy, NET_MSG_KV_TRUNCATE, "0123456789abcdef", 16);
    uint16_t type;
    const uint8_t *p;
    size_t len;
    cr_assert_eq(net_conn_recv(s, &type, &p, &len, 1000, &err), -EBADMSG);
    cr_assert(strstr(err.msg, "unsealed"), "%s", err.msg);
    close(spy);
    net_conn_destroy(c);
    net_conn_destroy(s);
}

Test(auth, key_file_rules)
{
    char dir[] = "/tmp/inferd-keytest-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/cluster.key", dir);
    struct net_key k1, k2;
    ifd_error err;
    cr_assert_lt(net_key_load(path, &k1, &err), 0);
    cr_assert(strstr(err.msg, path), "%s", err.msg);
    FILE *f = fopen(path, "w");
    fputs("  0123456789abcdef0123456789abcdef\n", f);
    fclose(f);
    chmod(path, 0644);
    cr_assert_eq(net_key_load(path, &k1, &err), -EPERM);
    cr_assert(strstr(err.msg, "readable by others"), "%s", err.msg);
    chmod(path, 0600);
    cr_assert_eq(net_key_load(path, &k1, &err), 0, "%s", err.msg);
    f = fopen(path, "w");
    fputs("0123456789abcdef0123456789abcdef", f); /* same key without whitespace */
    fclose(f);
    cr_assert_eq(net_key_load(path, &k2, &err), 0);
    cr_assert_arr_eq(k1.k, k2.k, 32);
    f = fopen(path, "w");
    fputs("short\n", f);
    fclose(f);
    cr_assert_eq(net_key_load(path, &k2, &err), -EINVAL);
    unlink(path);
    rmdir(dir);
}

Test(conn, addresses)
{
    char host[64];
    int port;
    cr_assert_eq(net_addr_split("10.0.0.2:9000", 1, host, sizeof(host), &port, NULL), 0);
    cr_assert_str_eq(host, "10.0.0.2");
    cr_assert_eq(port, 9000);
    cr_assert_eq(net_addr_split("[::1]:7", 1, host, sizeof(host), &port, NULL), 0);
    cr_assert_str_eq(host, "::1");
    cr_assert_eq(net_addr_split("node3", 10128, host, sizeof(host), &port, NULL), 0);
    cr_assert_eq(port, 10128);
    cr_assert_lt(net_addr_split("node3:99999", 1, host, sizeof(host), &port, NULL), 0);
    cr_assert_lt(net_addr_split("::1:5", 1, host, sizeof(host), &port, NULL), 0);
    cr_assert(net_addr_is_loopback("127.0.0.1:10128"));
    cr_assert(net_addr_is_loopback("localhost:1"));
    cr_assert(net_addr_is_loopback("[::1]:1"));
    cr_assert(!net_addr_is_loopback("10.1.2.3:10128"));
}
