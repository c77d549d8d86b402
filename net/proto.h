/* proto.h - the messages of the inferd cluster protocol: encoders into a
 * byte buffer and bounds-checked decoders.
 *
 * Each message is the payload of one frame (frame.h). Fixed parts are packed
 * little-endian structs with their size asserted; variable parts follow. The
 * byte layout of each is written above its struct and in docs/protocol.md.
 * Decoders never trust a count: every array length is checked against the
 * payload length and a protocol limit before anything is allocated or read,
 * and views they return point into the payload (valid while it is). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "base/error.h"

enum net_msg_type {
    NET_MSG_HELLO = 1,
    NET_MSG_AUTH = 2,
    NET_MSG_ERROR = 3,
    NET_MSG_ASSIGN = 16,       /* master -> worker: layer range, model config, tensor list */
    NET_MSG_HAVE = 17,         /* worker -> master: bytes of each listed tensor already held */
    NET_MSG_TENSOR_CHUNK = 18, /* master -> worker: a piece of one tensor */
    NET_MSG_LOAD = 19,         /* master -> worker: all sent, build the stage */
    NET_MSG_READY = 20,        /* worker -> master: stage built */
    NET_MSG_FORWARD = 32,      /* hidden states in, with the route of the rest of the chain */
    NET_MSG_RESULT = 33,       /* hidden states out, from the last worker of a chain */
    NET_MSG_KV_TRUNCATE = 34,  /* keep the first n positions of a sequence */
    NET_MSG_ACK = 35,
    NET_MSG_PING = 48,
    NET_MSG_PONG = 49,
    NET_MSG_STATS_REQ = 50,
    NET_MSG_STATS = 51,
};

/* Limits every receiver enforces. */
#define NET_MAX_TENSORS 65536
#define NET_MAX_NAME 512          /* tensor / model name bytes */
#define NET_MAX_CONFIG (1u << 20) /* config.json bytes */
#define NET_MAX_ERROR_MSG 4096
#define NET_MAX_ROUTE 32          /* hops after the receiver */
#define NET_ADDR_MAX 64           /* "host:port" incl. NUL */
#define NET_CHUNK_MAX (4u << 20)  /* raw bytes of one tensor chunk */
#define NET_MAX_DIMS 8

/* HELLO capability bits. */
#define NET_CAP_ZSTD 0x1u   /* understands zstd-compressed tensor chunks */
#define NET_CAP_CHAIN 0x2u  /* forwards FORWARD along a route to the next worker */
#define NET_HELLO_F_AUTH 0x1u /* the sender has a cluster key and requires the handshake */

/* A growable output buffer: encoders append to it. Grows only when a message
 * is larger than any before, so a steady stream allocates nothing. */
struct net_buf {
    uint8_t *data;
    size_t len, cap;
};
int net_buf_reserve(struct net_buf *b, size_t cap);
void net_buf_finish(struct net_buf *b); /* frees; the struct may be reused zeroed */

/* ---- HELLO ---------------------------------------------------------------
 *   0 u8  version_major     4 u32 caps          40 u64 mem_available
 *   1 u8  version_minor     8 u8  nonce[32]     48 u32 n_threads
 *   2 u8  role (net_role)                        52 u32 speed_mbps
 *   3 u8  flags (NET_HELLO_F_*)                                   = 56 bytes */
struct net_hello_wire {
    uint8_t version_major, version_minor, role, flags;
    uint32_t caps;
    uint8_t nonce[NET_NONCE_BYTES];
    uint64_t mem_available;
    uint32_t n_threads;
    uint32_t speed_mbps;
} __attribute__((packed));
_Static_assert(sizeof(struct net_hello_wire) == 56, "HELLO is 56 bytes");

struct net_hello {
    uint8_t version_major, version_minor, role, flags;
    uint32_t caps;
    uint8_t nonce[NET_NONCE_BYTES];
    uint64_t mem_available; /* bytes the node can give to weights + KV */
    uint32_t n_threads;
    /* Weight bytes per second a one-token product streams on this node,
     * measured at start, in MB/s (decode speed per byte of layers); 0: not
     * measured (a peer before protocol 1.1 sent 0 here). */
    uint32_t speed_mbps;
};
int net_hello_encode(struct net_buf *b, const struct net_hello *m);
int net_hello_decode(const uint8_t *p, size_t len, struct net_hello *ret, ifd_error *err);

/* ---- AUTH: u8 proof[32] -------------------------------------------------- */
int net_auth_encode(struct net_buf *b, const uint8_t proof[NET_PROOF_BYTES]);
int net_auth_decode(const uint8_t *p, size_t len, uint8_t ret[NET_PROOF_BYTES], ifd_error *err);

/* ---- ERROR ---------------------------------------------------------------
 *   0 i32 code (negative errno)   4 u32 msg_len   8 u64 req_id (0: none)
 *   16 msg bytes (UTF-8, not NUL-terminated, <= NET_MAX_ERROR_MSG) */
struct net_error_wire {
    int32_t code;
    uint32_t msg_len;
    uint64_t req_id;
} __attribute__((packed));
_Static_assert(sizeof(struct net_error_wire) == 16, "ERROR fixed part is 16 bytes");

struct net_error_msg {
    int32_t code;
    uint64_t req_id;
    const char *msg; /* not NUL-terminated */
    uint32_t msg_len;
};
int net_error_encode(struct net_buf *b, int32_t code, uint64_t req_id, const char *msg);
int net_error_decode(const uint8_t *p, size_t len, struct net_error_msg *ret, ifd_error *err);

/* ---- ASSIGN --------------------------------------------------------------
 *   0 u32 layer_first   4 u32 layer_last ([first, last))   8 u32 n_layers
 *  12 u32 n_seq_max    16 u32 n_ctx    20 u32 n_tensors    24 u32 config_len
 *  28 u16 name_len     30 u16 reserved  32 u8 model_hash[32]          = 64
 * then name (name_len bytes), config.json (config_len bytes), then n_tensors
 * entries of: net_tensor_wire (48 bytes), i64 shape[n_dims], name bytes. */
struct net_assign_wire {
    uint32_t layer_first, layer_last, n_layers, n_seq_max, n_ctx, n_tensors, config_len;
    uint16_t name_len, reserved;
    uint8_t model_hash[32];
} __attribute__((packed));
_Static_assert(sizeof(struct net_assign_wire) == 64, "ASSIGN fixed part is 64 bytes");

/*   0 u8 hash[32] (content hash, see weight_push.h)   32 u64 nbytes
 *  40 u8 dtype (enum ifd_dtype)  41 u8 n_dims  42 u16 name_len  44 u32 reserved */
struct net_tensor_wire {
    uint8_t hash[32];
    uint64_t nbytes;
    uint8_t dtype, n_dims;
    uint16_t name_len;
    uint32_t reserved;
} __attribute__((packed));
_Static_assert(sizeof(struct net_tensor_wire) == 48, "tensor entry is 48 bytes");

struct net_tensor_desc {
    uint8_t hash[32];
    uint64_t nbytes;
    uint8_t dtype;
    int n_dims;
    int64_t shape[NET_MAX_DIMS];
    const char *name; /* encoding: NUL-terminated; decoding: owned by the net_assign */
};

struct net_assign {
    uint32_t layer_first, layer_last, n_layers, n_seq_max, n_ctx;
    uint8_t model_hash[32];
    const char *model_name;   /* NUL-terminated */
    const char *config_json;  /* config_len bytes (NUL-terminated copy on decode) */
    uint32_t config_len;
    uint32_t n_tensors;
    struct net_tensor_desc *tensors;
    void *owned;              /* decode: the allocation holding names, config, tensors */
};
int net_assign_encode(struct net_buf *b, const struct net_assign *m);
/* Allocates (bounded by the checked payload size); free with net_assign_finish(). */
int net_assign_decode(const uint8_t *p, size_t len, struct net_assign *ret, ifd_error *err);
void net_assign_finish(struct net_assign *m);

/* ---- HAVE: 0 u32 n_tensors, 4 u32 reserved, 8 u64 have_bytes[n_tensors] ----
 * have_bytes[i] == nbytes: held and verified; less: that many bytes of a
 * partial transfer held (resume from there). */
int net_have_encode(struct net_buf *b, const uint64_t *have, uint32_t n);
/* ret_have points into p (unaligned: read with net_have_get). */
int net_have_decode(const uint8_t *p, size_t len, uint32_t expect_n, const uint8_t **ret_have, ifd_error *err);
uint64_t net_have_get(const uint8_t *have, uint32_t i);

/* ---- TENSOR_CHUNK --------------------------------------------------------
 *   0 u32 index (into ASSIGN's tensor list)   4 u32 flags (bit0: zstd)
 *   8 u64 offset (bytes of the tensor before this chunk)
 *  16 u32 raw_len (bytes after decompression, <= NET_CHUNK_MAX)
 *  20 u32 data_len (bytes that follow)                               = 24 */
struct net_chunk_wire {
    uint32_t index, flags;
    uint64_t offset;
    uint32_t raw_len, data_len;
} __attribute__((packed));
_Static_assert(sizeof(struct net_chunk_wire) == 24, "TENSOR_CHUNK fixed part is 24 bytes");
#define NET_CHUNK_F_ZSTD 0x1u

struct net_chunk {
    uint32_t index, flags;
    uint64_t offset;
    uint32_t raw_len, data_len;
    const uint8_t *data;
};
int net_chunk_encode_header(struct net_buf *b, const struct net_chunk *m); /* then append data */
int net_chunk_decode(const uint8_t *p, size_t len, struct net_chunk *ret, ifd_error *err);

/* ---- READY: 0 u64 weight_bytes, 8 u64 rss_bytes, 16 u64 load_ms ---------- */
struct net_ready_wire {
    uint64_t weight_bytes, rss_bytes, load_ms;
} __attribute__((packed));
_Static_assert(sizeof(struct net_ready_wire) == 24, "READY is 24 bytes");
struct net_ready {
    uint64_t weight_bytes, rss_bytes, load_ms;
};
int net_ready_encode(struct net_buf *b, const struct net_ready *m);
int net_ready_decode(const uint8_t *p, size_t len, struct net_ready *ret, ifd_error *err);

/* ---- FORWARD -------------------------------------------------------------
 *   0 u64 req_id   8 u32 n_tokens   12 u32 hidden   16 u32 layer_first
 *  20 u32 layer_last   24 u16 n_route   26 u16 flags (0)   28 u32 reserved = 32
 * then n_route x net_route_wire (the hops after the receiver, in order),
 * i32 seq_ids[n_tokens], i32 positions[n_tokens], f32 hidden[n_tokens*hidden]. */
struct net_forward_wire {
    uint64_t req_id;
    uint32_t n_tokens, hidden, layer_first, layer_last;
    uint16_t n_route, flags;
    uint32_t reserved;
} __attribute__((packed));
_Static_assert(sizeof(struct net_forward_wire) == 32, "FORWARD fixed part is 32 bytes");

/*   0 u32 layer_first  4 u32 layer_last  8 char addr[64] ("host:port", NUL-padded) */
struct net_route_wire {
    uint32_t layer_first, layer_last;
    char addr[NET_ADDR_MAX];
} __attribute__((packed));
_Static_assert(sizeof(struct net_route_wire) == 72, "route entry is 72 bytes");

struct net_route_hop {
    uint32_t layer_first, layer_last;
    char addr[NET_ADDR_MAX];
};

struct net_forward {
    uint64_t req_id;
    uint32_t n_tokens, hidden, layer_first, layer_last;
    uint32_t n_route;
    const struct net_route_hop *route; /* encode: caller's; decode: NULL, use net_forward_route() */
    const uint8_t *route_raw;          /* decode: the wire entries */
    const void *seq_ids;               /* i32 LE; decode: unaligned view into the payload */
    const void *positions;             /* i32 LE */
    const void *hidden_data;           /* f32 LE [n_tokens * hidden] */
};
/* Encodes from host arrays (seq_ids/positions/hidden as int32_t/float). */
int net_forward_encode(struct net_buf *b, const struct net_forward *m);
/* Checks n_tokens <= max_tokens, hidden == expect_hidden, sizes == payload. */
int net_forward_decode(const uint8_t *p, size_t len, uint32_t max_tokens, uint32_t expect_hidden,
                       struct net_forward *ret, ifd_error *err);
/* Copies route entry i of a decoded FORWARD, checking its address is terminated. */
int net_forward_route(const struct net_forward *m, uint32_t i, struct net_route_hop *ret, ifd_error *err);

/* ---- RESULT: 0 u64 req_id, 8 u32 n_tokens, 12 u32 hidden, then f32 hidden --- */
struct net_result_wire {
    uint64_t req_id;
    uint32_t n_tokens, hidden;
} __attribute__((packed));
_Static_assert(sizeof(struct net_result_wire) == 16, "RESULT fixed part is 16 bytes");
struct net_result {
    uint64_t req_id;
    uint32_t n_tokens, hidden;
    const void *hidden_data;
};
int net_result_encode(struct net_buf *b, const struct net_result *m);
/* Checks n_tokens == expect_tokens and hidden == expect_hidden. */
int net_result_decode(const uint8_t *p, size_t len, uint32_t expect_tokens, uint32_t expect_hidden,
                      struct net_result *ret, ifd_error *err);

/* ---- KV_TRUNCATE: 0 u64 req_id, 8 i32 seq_id, 12 i32 n_keep -------------- */
/* ---- ACK:         0 u64 req_id, 8 i32 status, 12 u32 reserved ------------ */
/* ---- PING / PONG: 0 u64 req_id, 8 u64 t_ns (sender's clock, echoed) ------ */
struct net_u64x2_wire {
    uint64_t a;
    uint64_t b;
} __attribute__((packed));
_Static_assert(sizeof(struct net_u64x2_wire) == 16, "16-byte messages");
struct net_kv_truncate {
    uint64_t req_id;
    int32_t seq_id, n_keep;
};
int net_kv_truncate_encode(struct net_buf *b, const struct net_kv_truncate *m);
int net_kv_truncate_decode(const uint8_t *p, size_t len, struct net_kv_truncate *ret, ifd_error *err);
struct net_ack {
    uint64_t req_id;
    int32_t status;
};
int net_ack_encode(struct net_buf *b, const struct net_ack *m);
int net_ack_decode(const uint8_t *p, size_t len, struct net_ack *ret, ifd_error *err);
struct net_ping {
    uint64_t req_id, t_ns;
};
int net_ping_encode(struct net_buf *b, const struct net_ping *m);
int net_ping_decode(const uint8_t *p, size_t len, struct net_ping *ret, ifd_error *err);

/* ---- STATS ---------------------------------------------------------------
 *   0 u64 forward_calls  8 u64 tokens  16 f64 forward_ms  24 u64 rss_bytes
 *  32 u64 weight_bytes  40 u64 bytes_in  48 u64 bytes_out              = 56 */
struct net_stats_wire {
    uint64_t forward_calls, tokens;
    double forward_ms;
    uint64_t rss_bytes, weight_bytes, bytes_in, bytes_out;
} __attribute__((packed));
_Static_assert(sizeof(struct net_stats_wire) == 56, "STATS is 56 bytes");
struct net_stats {
    uint64_t forward_calls, tokens;
    double forward_ms;
    uint64_t rss_bytes, weight_bytes, bytes_in, bytes_out;
};
int net_stats_encode(struct net_buf *b, const struct net_stats *m);
int net_stats_decode(const uint8_t *p, size_t len, struct net_stats *ret, ifd_error *err);

/* The name of a message type, for logs ("FORWARD", or "type 77"). */
const char *net_msg_name(uint16_t type);
