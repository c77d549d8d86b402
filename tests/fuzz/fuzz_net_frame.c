/* fuzz_net_frame.c - a received cluster frame: net_frame_header_decode(),
 * net_frame_check_crc() and the message decoder its type selects.
 *
 * Input: the bytes of one frame (20-byte header, then payload). The CRC is
 * checked but a mismatch does not stop the input there: the decoders behind
 * it are what a peer with the cluster key (or any peer on an unauthenticated
 * link) reaches, so they are fed the payload regardless. Every view a decoder
 * returns is read to its last byte, so a view outside the payload is an ASan
 * report. Decoders that compare against what the receiver expects (FORWARD,
 * RESULT, HAVE) run twice: with fixed expectations, and with the ones the
 * payload itself claims, to get past that check. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "fuzz.h"
#include "proto.h"

/* A receiver's limits, as remote_stage / stage_server use them. */
#define MAX_TOKENS 2048
#define HIDDEN 64

static void touch(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += b[i];
    fuzz_use(s);
}

static void forward(const uint8_t *p, size_t len, uint32_t max_tokens, uint32_t hidden)
{
    struct net_forward f;
    ifd_error err;
    if (net_forward_decode(p, len, max_tokens, hidden, &f, &err) < 0)
        return;
    if (f.n_tokens > max_tokens || f.hidden != hidden)
        abort();
    touch(f.seq_ids, (size_t)f.n_tokens * 4);
    touch(f.positions, (size_t)f.n_tokens * 4);
    touch(f.hidden_data, (size_t)f.n_tokens * f.hidden * 4);
    for (uint32_t i = 0; i < f.n_route; i++) {
        struct net_route_hop hop;
        if (net_forward_route(&f, i, &hop, &err) == 0 && !memchr(hop.addr, 0, sizeof(hop.addr)))
            abort();
    }
}

static void decode_payload(uint16_t type, const uint8_t *p, size_t len)
{
    ifd_error err;
    switch (type) {
    case NET_MSG_HELLO: {
        struct net_hello h;
        net_hello_decode(p, len, &h, &err);
        break;
    }
    case NET_MSG_AUTH: {
        uint8_t proof[NET_PROOF_BYTES];
        net_auth_decode(p, len, proof, &err);
        break;
    }
    case NET_MSG_ERROR: {
        struct net_error_msg e;
        if (net_error_decode(p, len, &e, &err) == 0) {
            if (e.msg_len > NET_MAX_ERROR_MSG)
                abort();
            touch(e.msg, e.msg_len);
        }
        break;
    }
    case NET_MSG_ASSIGN: {
        struct net_assign a;
        if (net_assign_decode(p, len, &a, &err) == 0) {
            if (a.n_tensors > NET_MAX_TENSORS || a.config_len > NET_MAX_CONFIG || a.config_json[a.config_len])
                abort();
            touch(a.model_name, strlen(a.model_name));
            touch(a.config_json, a.config_len);
            for (uint32_t i = 0; i < a.n_tensors; i++) {
                const struct net_tensor_desc *t = &a.tensors[i];
                if (t->n_dims < 0 || t->n_dims > NET_MAX_DIMS || strlen(t->name) > NET_MAX_NAME)
                    abort();
                touch(t->shape, sizeof(t->shape[0]) * (size_t)t->n_dims);
            }
            net_assign_finish(&a);
        }
        break;
    }
    case NET_MSG_HAVE: {
        const uint8_t *have;
        uint32_t n = len >= 4 ? fuzz_le32(p) : 0;
        if (net_have_decode(p, len, 3, &have, &err) == 0)
            fuzz_use(net_have_get(have, 2));
        if (net_have_decode(p, len, n, &have, &err) == 0)
            for (uint32_t i = 0; i < n; i++)
                fuzz_use(net_have_get(have, i));
        break;
    }
    case NET_MSG_TENSOR_CHUNK: {
        struct net_chunk c;
        if (net_chunk_decode(p, len, &c, &err) == 0) {
            if (c.raw_len > NET_CHUNK_MAX)
                abort();
            touch(c.data, c.data_len);
        }
        break;
    }
    case NET_MSG_READY: {
        struct net_ready r;
        net_ready_decode(p, len, &r, &err);
        break;
    }
    case NET_MSG_FORWARD:
        forward(p, len, MAX_TOKENS, HIDDEN);
        if (len >= 16)
            forward(p, len, MAX_TOKENS, fuzz_le32(p + 12));
        break;
    case NET_MSG_RESULT: {
        struct net_result r;
        if (net_result_decode(p, len, 4, HIDDEN, &r, &err) == 0)
            touch(r.hidden_data, (size_t)4 * HIDDEN * 4);
        if (len >= 16 && net_result_decode(p, len, fuzz_le32(p + 8), fuzz_le32(p + 12), &r, &err) == 0)
            touch(r.hidden_data, (size_t)r.n_tokens * r.hidden * 4);
        break;
    }
    case NET_MSG_KV_TRUNCATE: {
        struct net_kv_truncate k;
        net_kv_truncate_decode(p, len, &k, &err);
        break;
    }
    case NET_MSG_ACK: {
        struct net_ack a;
        net_ack_decode(p, len, &a, &err);
        break;
    }
    case NET_MSG_PING:
    case NET_MSG_PONG: {
        struct net_ping g;
        net_ping_decode(p, len, &g, &err);
        break;
    }
    case NET_MSG_STATS: {
        struct net_stats s;
        net_stats_decode(p, len, &s, &err);
        break;
    }
    default:
        fuzz_use((uintptr_t)net_msg_name(type));
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < NET_FRAME_HEADER_SIZE)
        return 0;
    struct net_frame_header h;
    ifd_error err = {{0}};
    int r = net_frame_header_decode(data, NET_FRAME_MAX_PAYLOAD, &h, &err);
    if (r < 0) {
        if (!err.msg[0])
            abort();
        return 0;
    }
    if (h.length > NET_FRAME_MAX_PAYLOAD)
        abort();
    /* A short read on a socket is a truncated frame: the connection code
     * only hands over whole payloads, so only those are decoded here. */
    size_t avail = size - NET_FRAME_HEADER_SIZE;
    if (h.length > avail)
        return 0;
    const uint8_t *payload = data + NET_FRAME_HEADER_SIZE;
    net_frame_check_crc(data, payload, h.length, &err);
    decode_payload(h.type, payload, h.length);
    return 0;
}

/* ---- seeds: one frame of each message, made by the project's encoders ---- */

static void add_frame(fuzz_seed_fn add, void *ctx, const char *name, uint16_t type, struct net_buf *b, int r)
{
    if (r < 0) {
        fprintf(stderr, "fuzz_net_frame: seed %s: encoder failed (%d)\n", name, r);
        return;
    }
    uint8_t *frame = malloc(NET_FRAME_HEADER_SIZE + b->len);
    if (!frame)
        return;
    net_frame_header_encode(frame, type, 0, b->data, (uint32_t)b->len);
    memcpy(frame + NET_FRAME_HEADER_SIZE, b->data, b->len);
    add(ctx, name, frame, NET_FRAME_HEADER_SIZE + b->len);
    free(frame);
    b->len = 0;
}

void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    struct net_buf b = {0};
    struct net_hello hello = {.version_major = NET_PROTO_MAJOR, .role = NET_ROLE_WORKER, .flags = NET_HELLO_F_AUTH,
                              .caps = NET_CAP_ZSTD | NET_CAP_CHAIN, .mem_available = 1u << 30, .n_threads = 4};
    add_frame(add, ctx, "hello", NET_MSG_HELLO, &b, net_hello_encode(&b, &hello));
    uint8_t proof[NET_PROOF_BYTES] = {1, 2, 3};
    add_frame(add, ctx, "auth", NET_MSG_AUTH, &b, net_auth_encode(&b, proof));
    add_frame(add, ctx, "error", NET_MSG_ERROR, &b, net_error_encode(&b, -22, 7, "layer range 0..9 is out of bounds"));

    int64_t shape2[2] = {64, 32}, shape1[1] = {64};
    struct net_tensor_desc tensors[2] = {
        {.hash = {9}, .nbytes = 64 * 32 * 4, .dtype = 0, .n_dims = 2, .name = "model.layers.0.mlp.up_proj.weight"},
        {.hash = {8}, .nbytes = 64 * 2, .dtype = 2, .n_dims = 1, .name = "model.layers.0.input_layernorm.weight"},
    };
    memcpy(tensors[0].shape, shape2, sizeof(shape2));
    memcpy(tensors[1].shape, shape1, sizeof(shape1));
    static const char config[] = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64}";
    struct net_assign as = {.layer_first = 0, .layer_last = 1, .n_layers = 2, .n_seq_max = 4, .n_ctx = 256,
                            .model_name = "tiny", .config_json = config, .config_len = sizeof(config) - 1,
                            .n_tensors = 2, .tensors = tensors};
    add_frame(add, ctx, "assign", NET_MSG_ASSIGN, &b, net_assign_encode(&b, &as));
    uint64_t have[3] = {0, 128, 8192};
    add_frame(add, ctx, "have", NET_MSG_HAVE, &b, net_have_encode(&b, have, 3));
    struct net_chunk ch = {.index = 1, .flags = 0, .offset = 64, .raw_len = 16, .data_len = 16};
    int r = net_chunk_encode_header(&b, &ch);
    if (r == 0 && net_buf_reserve(&b, b.len + 16) == 0) {
        memset(b.data + b.len, 0x5a, 16);
        b.len += 16;
    }
    add_frame(add, ctx, "chunk", NET_MSG_TENSOR_CHUNK, &b, r);
    struct net_ready ready = {1u << 20, 2u << 20, 35};
    add_frame(add, ctx, "ready", NET_MSG_READY, &b, net_ready_encode(&b, &ready));

    int32_t seq[2] = {0, 1}, pos[2] = {5, 0};
    static float hidden[2 * HIDDEN];
    for (int i = 0; i < 2 * HIDDEN; i++)
        hidden[i] = (float)i / 7.0f;
    struct net_route_hop route[1] = {{.layer_first = 1, .layer_last = 2, .addr = "127.0.0.1:10129"}};
    struct net_forward fw = {.req_id = 3, .n_tokens = 2, .hidden = HIDDEN, .layer_first = 0, .layer_last = 1,
                             .n_route = 1, .route = route, .seq_ids = seq, .positions = pos, .hidden_data = hidden};
    add_frame(add, ctx, "forward", NET_MSG_FORWARD, &b, net_forward_encode(&b, &fw));
    struct net_result res = {.req_id = 3, .n_tokens = 2, .hidden = HIDDEN, .hidden_data = hidden};
    add_frame(add, ctx, "result", NET_MSG_RESULT, &b, net_result_encode(&b, &res));
    struct net_kv_truncate kv = {.req_id = 4, .seq_id = 1, .n_keep = 10};
    add_frame(add, ctx, "kv-truncate", NET_MSG_KV_TRUNCATE, &b, net_kv_truncate_encode(&b, &kv));
    struct net_ack ack = {.req_id = 4, .status = 0};
    add_frame(add, ctx, "ack", NET_MSG_ACK, &b, net_ack_encode(&b, &ack));
    struct net_ping ping = {.req_id = 5, .t_ns = 123456789};
    add_frame(add, ctx, "ping", NET_MSG_PING, &b, net_ping_encode(&b, &ping));
    struct net_stats st = {.forward_calls = 10, .tokens = 100, .forward_ms = 12.5, .rss_bytes = 1 << 20};
    add_frame(add, ctx, "stats", NET_MSG_STATS, &b, net_stats_encode(&b, &st));
    net_buf_finish(&b);
}
