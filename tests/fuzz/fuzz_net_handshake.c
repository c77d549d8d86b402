/* fuzz_net_handshake.c - the connection state machine of net/conn.c fed by a
 * hostile peer: the handshake (server or client side, with or without a
 * cluster key), then, on an unauthenticated link that completed it, frame
 * after frame through net_conn_recv().
 *
 * Input: byte 0 = bit 0 side (0 server, 1 client), bit 1 cluster key,
 * bits 2-3 this node's role; the rest is what the peer sends, written into a
 * socketpair whose far end is then shut for writing (the bytes run out as a
 * closed connection). A fuzzer cannot forge a MAC over a fresh random
 * nonce, so with a key only HELLO, AUTH framing and the refusal paths are
 * reachable; that is the surface an attacker without the key has. Every
 * failure must carry a message; no input may block (the peer closes). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "frame.h"
#include "fuzz.h"
#include "proto.h"

/* The socketpair must hold the whole input before the code under test runs. */
#define MAX_INPUT (64u << 10)
#define MAX_PAYLOAD (1u << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ifd_error err;
    if (net_crypto_init(&err) < 0) {
        fprintf(stderr, "fuzz_net_handshake: %s\n", err.msg);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > MAX_INPUT)
        return 0;
    bool client = data[0] & 1, with_key = data[0] & 2;
    uint8_t role = (uint8_t)(1 + (data[0] >> 2) % 3);

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    int sndbuf = 4 * MAX_INPUT;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof(sndbuf));
    size_t put = 0;
    while (put < size - 1) {
        ssize_t k = write(sv[1], data + 1 + put, size - 1 - put);
        if (k <= 0)
            abort();
        put += (size_t)k;
    }
    shutdown(sv[1], SHUT_WR);

    struct net_conn *c = NULL;
    ifd_error err = {{0}};
    if (net_conn_create(sv[0], "fuzz-peer", &c, &err) < 0)
        abort();
    net_conn_set_max_payload(c, MAX_PAYLOAD);
    struct net_key key;
    memset(&key, 0x42, sizeof(key));
    struct net_hello self = {.role = role, .caps = NET_CAP_ZSTD | NET_CAP_CHAIN, .mem_available = 1u << 30,
                             .n_threads = 2};
    struct net_hello peer;
    int r = client ? net_conn_handshake_client(c, with_key ? &key : NULL, &self, &peer, &err)
                   : net_conn_handshake_server(c, with_key ? &key : NULL, &self, &peer, &err);
    if (r < 0) {
        if (!err.msg[0])
            abort();
    } else {
        for (int frames = 0; frames < 64; frames++) {
            uint16_t type;
            const uint8_t *p;
            size_t len;
            memset(&err, 0, sizeof(err));
            if (net_conn_recv(c, &type, &p, &len, 1000, &err) < 0) {
                if (!err.msg[0] || !net_conn_is_broken(c))
                    abort();
                break;
            }
            uint64_t s = 0;
            for (size_t i = 0; i < len; i++)
                s += p[i];
            fuzz_use(s + type);
        }
    }
    net_conn_destroy(c); /* closes sv[0] */
    close(sv[1]);
    return 0;
}

/* ---- seeds: a well-behaved peer's first frames ---- */

static void append_frame(struct net_buf *out, uint16_t type, const struct net_buf *payload)
{
    if (net_buf_reserve(out, out->len + NET_FRAME_HEADER_SIZE + payload->len) < 0)
        return;
    net_frame_header_encode(out->data + out->len, type, 0, payload->data, (uint32_t)payload->len);
    memcpy(out->data + out->len + NET_FRAME_HEADER_SIZE, payload->data, payload->len);
    out->len += NET_FRAME_HEADER_SIZE + payload->len;
}

static void add_session(fuzz_seed_fn add, void *ctx, const char *name, uint8_t sel, uint8_t peer_role, bool auth,
                        int n_pings)
{
    struct net_buf out = {0}, msg = {0};
    if (net_buf_reserve(&out, 1) < 0)
        return;
    out.data[0] = sel;
    out.len = 1;
    struct net_hello h = {.version_major = NET_PROTO_MAJOR, .version_minor = NET_PROTO_MINOR, .role = peer_role,
                          .flags = auth ? NET_HELLO_F_AUTH : 0, .caps = NET_CAP_ZSTD, .mem_available = 1u << 28,
                          .n_threads = 1};
    memset(h.nonce, 0x17, sizeof(h.nonce)); /* fixed: seeds are reproducible */
    if (net_hello_encode(&msg, &h) == 0)
        append_frame(&out, NET_MSG_HELLO, &msg);
    msg.len = 0;
    if (auth) {
        uint8_t proof[NET_PROOF_BYTES] = {0};
        if (net_auth_encode(&msg, proof) == 0)
            append_frame(&out, NET_MSG_AUTH, &msg);
        msg.len = 0;
    }
    for (int i = 0; i < n_pings; i++) {
        struct net_ping p = {.req_id = (uint64_t)i, .t_ns = 1000u * (uint64_t)i};
        if (net_ping_encode(&msg, &p) == 0)
            append_frame(&out, NET_MSG_PING, &msg);
        msg.len = 0;
    }
    if (net_error_encode(&msg, -5, 0, "shutting down") == 0)
        append_frame(&out, NET_MSG_ERROR, &msg);
    add(ctx, name, out.data, out.len);
    net_buf_finish(&out);
    net_buf_finish(&msg);
}

void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    /* role bits: (role - 1) << 2 */
    add_session(add, ctx, "server-plain", (NET_ROLE_WORKER - 1) << 2, NET_ROLE_MASTER, false, 2);
    add_session(add, ctx, "client-plain", 1 | (NET_ROLE_MASTER - 1) << 2, NET_ROLE_WORKER, false, 2);
    add_session(add, ctx, "server-key", 2 | (NET_ROLE_WORKER - 1) << 2, NET_ROLE_MASTER, true, 0);
    add_session(add, ctx, "client-key", 3 | (NET_ROLE_MASTER - 1) << 2, NET_ROLE_WORKER, true, 0);
    add_session(add, ctx, "server-peer", (NET_ROLE_WORKER - 1) << 2, NET_ROLE_PEER, false, 1);
}
