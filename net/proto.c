#include "proto.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "model/dtype.h"

int net_buf_reserve(struct net_buf *b, size_t cap)
{
    if (cap <= b->cap)
        return 0;
    uint8_t *d = buf_grow(b->data, &b->cap, cap, 1);
    if (!d)
        return -ENOMEM;
    b->data = d;
    return 0;
}

void net_buf_finish(struct net_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int buf_put(struct net_buf *b, const void *p, size_t n)
{
    int r = net_buf_reserve(b, b->len + n);
    if (r < 0)
        return r;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* Host arrays of 32-bit values to little-endian wire order. On little-endian
 * hosts this is one memcpy. */
static int buf_put_u32s(struct net_buf *b, const void *src, size_t n)
{
#if __BYTE_ORDER == __LITTLE_ENDIAN
    return buf_put(b, src, n * 4);
#else
    int r = net_buf_reserve(b, b->len + n * 4);
    if (r < 0)
        return r;
    const uint32_t *s = src;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = htole32(s[i]);
        memcpy(b->data + b->len + i * 4, &v, 4);
    }
    b->len += n * 4;
    return 0;
#endif
}

static int expect_len(const char *what, size_t len, size_t want, ifd_error *err)
{
    if (len != want)
        return ifd_error_set(err, -EBADMSG, "%s: payload is %zu bytes, expected %zu", what, len, want);
    return 0;
}

/* ---- HELLO ---- */

int net_hello_encode(struct net_buf *b, const struct net_hello *m)
{
    struct net_hello_wire w = {
        .version_major = m->version_major,
        .version_minor = m->version_minor,
        .role = m->role,
        .flags = m->flags,
        .caps = htole32(m->caps),
        .mem_available = htole64(m->mem_available),
        .n_threads = htole32(m->n_threads),
        .speed_mbps = htole32(m->speed_mbps),
    };
    memcpy(w.nonce, m->nonce, NET_NONCE_BYTES);
    b->len = 0;
    return buf_put(b, &w, sizeof(w));
}

int net_hello_decode(const uint8_t *p, size_t len, struct net_hello *ret, ifd_error *err)
{
    /* A later minor version may append fields: accept a longer HELLO. */
    if (len < sizeof(struct net_hello_wire))
        return ifd_error_set(err, -EBADMSG, "HELLO: payload is %zu bytes, expected at least %zu",
                             len, sizeof(struct net_hello_wire));
    struct net_hello_wire w;
    memcpy(&w, p, sizeof(w));
    if (w.role < NET_ROLE_MASTER || w.role > NET_ROLE_PEER)
        return ifd_error_set(err, -EBADMSG, "HELLO: unknown role %u", w.role);
    struct net_hello h = {
        .version_major = w.version_major,
        .version_minor = w.version_minor,
        .role = w.role,
        .flags = w.flags,
        .caps = le32toh(w.caps),
        .mem_available = le64toh(w.mem_available),
        .n_threads = le32toh(w.n_threads),
        .speed_mbps = le32toh(w.speed_mbps),
    };
    memcpy(h.nonce, w.nonce, NET_NONCE_BYTES);
    *ret = h;
    return 0;
}

/* ---- AUTH ---- */

int net_auth_encode(struct net_buf *b, const uint8_t proof[NET_PROOF_BYTES])
{
    b->len = 0;
    return buf_put(b, proof, NET_PROOF_BYTES);
}

int net_auth_decode(const uint8_t *p, size_t len, uint8_t ret[NET_PROOF_BYTES], ifd_error *err)
{
    int r = expect_len("AUTH", len, NET_PROOF_BYTES, err);
    if (r < 0)
        return r;
    memcpy(ret, p, NET_PROOF_BYTES);
    return 0;
}

/* ---- ERROR ---- */

int net_error_encode(struct net_buf *b, int32_t code, uint64_t req_id, const char *msg)
{
    size_t n = strlen(msg);
    if (n > NET_MAX_ERROR_MSG)
        n = NET_MAX_ERROR_MSG;
    struct net_error_wire w = {
        .code = (int32_t)htole32((uint32_t)code),
        .msg_len = htole32((uint32_t)n),
        .req_id = htole64(req_id),
    };
    b->len = 0;
    int r = buf_put(b, &w, sizeof(w));
    return r < 0 ? r : buf_put(b, msg, n);
}

int net_error_decode(const uint8_t *p, size_t len, struct net_error_msg *ret, ifd_error *err)
{
    if (len < sizeof(struct net_error_wire))
        return ifd_error_set(err, -EBADMSG, "ERROR: payload of %zu bytes is too short", len);
    struct net_error_wire w;
    memcpy(&w, p, sizeof(w));
    uint32_t n = le32toh(w.msg_len);
    if (n > NET_MAX_ERROR_MSG || n != len - sizeof(w))
        return ifd_error_set(err, -EBADMSG, "ERROR: message length %u does not match payload of %zu bytes",
                             n, len);
    ret->code = (int32_t)le32toh((uint32_t)w.code);
    ret->req_id = le64toh(w.req_id);
    ret->msg = (const char *)p + sizeof(w);
    ret->msg_len = n;
    return 0;
}

/* ---- ASSIGN ---- */

int net_assign_encode(struct net_buf *b, const struct net_assign *m)
{
    size_t name_len = strlen(m->model_name);
    if (name_len > NET_MAX_NAME || m->config_len > NET_MAX_CONFIG || m->n_tensors > NET_MAX_TENSORS)
        return -EMSGSIZE;
    struct net_assign_wire w = {
        .layer_first = htole32(m->layer_first),
        .layer_last = htole32(m->layer_last),
        .n_layers = htole32(m->n_layers),
        .n_seq_max = htole32(m->n_seq_max),
        .n_ctx = htole32(m->n_ctx),
        .n_tensors = htole32(m->n_tensors),
        .config_len = htole32(m->config_len),
        .name_len = htole16((uint16_t)name_len),
    };
    memcpy(w.model_hash, m->model_hash, 32);
    b->len = 0;
    int r = buf_put(b, &w, sizeof(w));
    if (r >= 0)
        r = buf_put(b, m->model_name, name_len);
    if (r >= 0)
        r = buf_put(b, m->config_json, m->config_len);
    for (uint32_t i = 0; r >= 0 && i < m->n_tensors; i++) {
        const struct net_tensor_desc *t = &m->tensors[i];
        size_t tn = strlen(t->name);
        if (tn > NET_MAX_NAME || t->n_dims < 0 || t->n_dims > NET_MAX_DIMS)
            return -EINVAL;
        struct net_tensor_wire tw = {
            .nbytes = htole64(t->nbytes),
            .dtype = t->dtype,
            .n_dims = (uint8_t)t->n_dims,
            .name_len = htole16((uint16_t)tn),
        };
        memcpy(tw.hash, t->hash, 32);
        r = buf_put(b, &tw, sizeof(tw));
        for (int d = 0; r >= 0 && d < t->n_dims; d++) {
            uint64_t s = htole64((uint64_t)t->shape[d]);
            r = buf_put(b, &s, 8);
        }
        if (r >= 0)
            r = buf_put(b, t->name, tn);
    }
    return r;
}

int net_assign_decode(const uint8_t *p, size_t len, struct net_assign *ret, ifd_error *err)
{
    struct net_assign_wire w;
    if (len < sizeof(w))
        return ifd_error_set(err, -EBADMSG, "ASSIGN: payload of %zu bytes is too short", len);
    memcpy(&w, p, sizeof(w));
    struct net_assign a = {
        .layer_first = le32toh(w.layer_first),
        .layer_last = le32toh(w.layer_last),
        .n_layers = le32toh(w.n_layers),
        .n_seq_max = le32toh(w.n_seq_max),
        .n_ctx = le32toh(w.n_ctx),
        .n_tensors = le32toh(w.n_tensors),
        .config_len = le32toh(w.config_len),
    };
    memcpy(a.model_hash, w.model_hash, 32);
    uint32_t name_len = le16toh(w.name_len);
    if (a.layer_first >= a.layer_last || a.layer_last > a.n_layers || a.n_layers > 4096)
        return ifd_error_set(err, -EBADMSG, "ASSIGN: bad layer range [%u, %u) of %u",
                             a.layer_first, a.layer_last, a.n_layers);
    if (a.n_seq_max == 0 || a.n_seq_max > 4096 || a.n_ctx == 0 || a.n_ctx > (1u << 24))
        return ifd_error_set(err, -EBADMSG, "ASSIGN: bad n_seq_max %u / n_ctx %u", a.n_seq_max, a.n_ctx);
    if (name_len > NET_MAX_NAME || a.config_len > NET_MAX_CONFIG || a.n_tensors > NET_MAX_TENSORS)
        return ifd_error_set(err, -EMSGSIZE, "ASSIGN: name %u, config %u or tensor count %u over the limit",
                             name_len, a.config_len, a.n_tensors);
    size_t off = sizeof(w);
    if ((uint64_t)name_len + a.config_len > len - off ||
        (uint64_t)a.n_tensors * sizeof(struct net_tensor_wire) > len - off - name_len - a.config_len)
        return ifd_error_set(err, -EBADMSG, "ASSIGN: %zu-byte payload is too short for its counts", len);
    /* One allocation: tensor descs, then name, config and tensor names, each
     * NUL-terminated. Its size is bounded by the (already bounded) payload. */
    size_t need = (size_t)a.n_tensors * sizeof(struct net_tensor_desc) + len + a.n_tensors + 2;
    int r;
    uint8_t *mem = calloc(1, need);
    if (!mem)
        return ifd_error_set(err, -ENOMEM, "ASSIGN: out of memory");
    a.tensors = (struct net_tensor_desc *)mem;
    char *strings = (char *)(mem + (size_t)a.n_tensors * sizeof(struct net_tensor_desc));
    memcpy(strings, p + off, name_len);
    strings[name_len] = '\0';
    a.model_name = strings;
    strings += name_len + 1;
    off += name_len;
    memcpy(strings, p + off, a.config_len);
    strings[a.config_len] = '\0';
    a.config_json = strings;
    strings += a.config_len + 1;
    off += a.config_len;
    for (uint32_t i = 0; i < a.n_tensors; i++) {
        struct net_tensor_wire tw;
        if (len - off < sizeof(tw)) {
            r = ifd_error_set(err, -EBADMSG, "ASSIGN: tensor %u truncated", i);
            goto bad;
        }
        memcpy(&tw, p + off, sizeof(tw));
        off += sizeof(tw);
        struct net_tensor_desc *t = &a.tensors[i];
        memcpy(t->hash, tw.hash, 32);
        t->nbytes = le64toh(tw.nbytes);
        t->dtype = tw.dtype;
        t->n_dims = tw.n_dims;
        uint32_t tn = le16toh(tw.name_len);
        if (tw.dtype >= IFD_DTYPE_COUNT || tw.n_dims > NET_MAX_DIMS || tn == 0 || tn > NET_MAX_NAME ||
            len - off < (size_t)tw.n_dims * 8 + tn) {
            r = ifd_error_set(err, -EBADMSG, "ASSIGN: tensor %u: bad dtype %u, dims %u or name length %u",
                                 i, tw.dtype, tw.n_dims, tn);
            goto bad;
        }
        uint64_t elems = 1;
        for (int d = 0; d < t->n_dims; d++) {
            uint64_t s;
            memcpy(&s, p + off, 8);
            off += 8;
            s = le64toh(s);
            if (s > (1ull << 40) || (s && elems > UINT64_MAX / s)) {
                r = ifd_error_set(err, -EBADMSG, "ASSIGN: tensor %u: dimension %d of %llu too large",
                                     i, d, (unsigned long long)s);
                goto bad;
            }
            t->shape[d] = (int64_t)s;
            elems *= s;
        }
        if (elems > UINT64_MAX / 8 || elems * ifd_dtype_size(t->dtype) != t->nbytes) {
            r = ifd_error_set(err, -EBADMSG, "ASSIGN: tensor %u: %llu bytes do not match its shape",
                                 i, (unsigned long long)t->nbytes);
            goto bad;
        }
        memcpy(strings, p + off, tn);
        strings[tn] = '\0';
        if (memchr(strings, '\0', tn)) {
            r = ifd_error_set(err, -EBADMSG, "ASSIGN: tensor %u: name contains NUL", i);
            goto bad;
        }
        t->name = strings;
        strings += tn + 1;
        off += tn;
    }
    if (off != len) {
        r = ifd_error_set(err, -EBADMSG, "ASSIGN: %zu trailing bytes", len - off);
        goto bad;
    }
    a.owned = mem;
    *ret = a;
    return 0;
bad:
    free(mem);
    return r;
}

void net_assign_finish(struct net_assign *m)
{
    if (!m)
        return;
    free(m->owned);
    memset(m, 0, sizeof(*m));
}

/* ---- HAVE ---- */

int net_have_encode(struct net_buf *b, const uint64_t *have, uint32_t n)
{
    uint32_t hdr[2] = {htole32(n), 0};
    b->len = 0;
    int r = buf_put(b, hdr, sizeof(hdr));
    for (uint32_t i = 0; r >= 0 && i < n; i++) {
        uint64_t v = htole64(have[i]);
        r = buf_put(b, &v, 8);
    }
    return r;
}

int net_have_decode(const uint8_t *p, size_t len, uint32_t expect_n, const uint8_t **ret_have, ifd_error *err)
{
    if (len < 8)
        return ifd_error_set(err, -EBADMSG, "HAVE: payload of %zu bytes is too short", len);
    uint32_t n;
    memcpy(&n, p, 4);
    n = le32toh(n);
    if (n != expect_n || len != 8 + (size_t)n * 8)
        return ifd_error_set(err, -EBADMSG, "HAVE: %u entries in %zu bytes, expected %u", n, len, expect_n);
    *ret_have = p + 8;
    return 0;
}

uint64_t net_have_get(const uint8_t *have, uint32_t i)
{
    uint64_t v;
    memcpy(&v, have + (size_t)i * 8, 8);
    return le64toh(v);
}

/* ---- TENSOR_CHUNK ---- */

int net_chunk_encode_header(struct net_buf *b, const struct net_chunk *m)
{
    struct net_chunk_wire w = {
        .index = htole32(m->index),
        .flags = htole32(m->flags),
        .offset = htole64(m->offset),
        .raw_len = htole32(m->raw_len),
        .data_len = htole32(m->data_len),
    };
    b->len = 0;
    return buf_put(b, &w, sizeof(w));
}

int net_chunk_decode(const uint8_t *p, size_t len, struct net_chunk *ret, ifd_error *err)
{
    struct net_chunk_wire w;
    if (len < sizeof(w))
        return ifd_error_set(err, -EBADMSG, "TENSOR_CHUNK: payload of %zu bytes is too short", len);
    memcpy(&w, p, sizeof(w));
    struct net_chunk c = {
        .index = le32toh(w.index),
        .flags = le32toh(w.flags),
        .offset = le64toh(w.offset),
        .raw_len = le32toh(w.raw_len),
        .data_len = le32toh(w.data_len),
        .data = p + sizeof(w),
    };
    if (c.flags & ~NET_CHUNK_F_ZSTD)
        return ifd_error_set(err, -EBADMSG, "TENSOR_CHUNK: unknown flags 0x%x", c.flags);
    if (c.raw_len == 0 || c.raw_len > NET_CHUNK_MAX || c.data_len != len - sizeof(w) ||
        (!(c.flags & NET_CHUNK_F_ZSTD) && c.data_len != c.raw_len))
        return ifd_error_set(err, -EBADMSG, "TENSOR_CHUNK: raw %u / data %u bytes in a %zu-byte payload",
                             c.raw_len, c.data_len, len);
    *ret = c;
    return 0;
}

/* ---- READY ---- */

int net_ready_encode(struct net_buf *b, const struct net_ready *m)
{
    struct net_ready_wire w = {htole64(m->weight_bytes), htole64(m->rss_bytes), htole64(m->load_ms)};
    b->len = 0;
    return buf_put(b, &w, sizeof(w));
}

int net_ready_decode(const uint8_t *p, size_t len, struct net_ready *ret, ifd_error *err)
{
    struct net_ready_wire w;
    int r = expect_len("READY", len, sizeof(w), err);
    if (r < 0)
        return r;
    memcpy(&w, p, sizeof(w));
    ret->weight_bytes = le64toh(w.weight_bytes);
    ret->rss_bytes = le64toh(w.rss_bytes);
    ret->load_ms = le64toh(w.load_ms);
    return 0;
}

/* ---- FORWARD ---- */

int net_forward_encode(struct net_buf *b, const struct net_forward *m)
{
    if (m->n_route > NET_MAX_ROUTE)
        return -EINVAL;
    struct net_forward_wire w = {
        .req_id = htole64(m->req_id),
        .n_tokens = htole32(m->n_tokens),
        .hidden = htole32(m->hidden),
        .layer_first = htole32(m->layer_first),
        .layer_last = htole32(m->layer_last),
        .n_route = htole16((uint16_t)m->n_route),
    };
    size_t total = sizeof(w) + (size_t)m->n_route * sizeof(struct net_route_wire) +
                   (size_t)m->n_tokens * (8 + (size_t)m->hidden * 4);
    b->len = 0;
    int r = net_buf_reserve(b, total);
    if (r >= 0)
        r = buf_put(b, &w, sizeof(w));
    for (uint32_t i = 0; r >= 0 && i < m->n_route; i++) {
        struct net_route_wire rw = {
            .layer_first = htole32(m->route[i].layer_first),
            .layer_last = htole32(m->route[i].layer_last),
        };
        size_t an = strnlen(m->route[i].addr, NET_ADDR_MAX);
        if (an >= NET_ADDR_MAX)
            return -EINVAL;
        memcpy(rw.addr, m->route[i].addr, an);
        r = buf_put(b, &rw, sizeof(rw));
    }
    if (r >= 0)
        r = buf_put_u32s(b, m->seq_ids, m->n_tokens);
    if (r >= 0)
        r = buf_put_u32s(b, m->positions, m->n_tokens);
    if (r >= 0)
        r = buf_put_u32s(b, m->hidden_data, (size_t)m->n_tokens * m->hidden);
    return r;
}

int net_forward_decode(const uint8_t *p, size_t len, uint32_t max_tokens, uint32_t expect_hidden,
                       struct net_forward *ret, ifd_error *err)
{
    struct net_forward_wire w;
    if (len < sizeof(w))
        return ifd_error_set(err, -EBADMSG, "FORWARD: payload of %zu bytes is too short", len);
    memcpy(&w, p, sizeof(w));
    struct net_forward f = {
        .req_id = le64toh(w.req_id),
        .n_tokens = le32toh(w.n_tokens),
        .hidden = le32toh(w.hidden),
        .layer_first = le32toh(w.layer_first),
        .layer_last = le32toh(w.layer_last),
        .n_route = le16toh(w.n_route),
    };
    if (f.n_tokens == 0 || f.n_tokens > max_tokens)
        return ifd_error_set(err, -EMSGSIZE, "FORWARD: %u tokens (this stage takes 1 to %u)", f.n_tokens,
                             max_tokens);
    if (f.hidden != expect_hidden)
        return ifd_error_set(err, -EBADMSG, "FORWARD: hidden size %u, this stage has %u", f.hidden,
                             expect_hidden);
    if (f.n_route > NET_MAX_ROUTE)
        return ifd_error_set(err, -EBADMSG, "FORWARD: route of %u hops exceeds %d", f.n_route, NET_MAX_ROUTE);
    /* n_tokens <= max_tokens and hidden == expect_hidden are both bounded by
     * the receiver, so this product cannot overflow size_t. */
    size_t want = sizeof(w) + (size_t)f.n_route * sizeof(struct net_route_wire) +
                  (size_t)f.n_tokens * 8 + (size_t)f.n_tokens * f.hidden * 4;
    if (len != want)
        return ifd_error_set(err, -EBADMSG, "FORWARD: payload is %zu bytes, its counts need %zu", len, want);
    size_t off = sizeof(w);
    f.route_raw = p + off;
    off += (size_t)f.n_route * sizeof(struct net_route_wire);
    f.seq_ids = p + off;
    off += (size_t)f.n_tokens * 4;
    f.positions = p + off;
    off += (size_t)f.n_tokens * 4;
    f.hidden_data = p + off;
    *ret = f;
    return 0;
}

int net_forward_route(const struct net_forward *m, uint32_t i, struct net_route_hop *ret, ifd_error *err)
{
    if (i >= m->n_route)
        return ifd_error_set(err, -EINVAL, "FORWARD: no route entry %u", i);
    struct net_route_wire rw;
    memcpy(&rw, m->route_raw + (size_t)i * sizeof(rw), sizeof(rw));
    if (!memchr(rw.addr, '\0', sizeof(rw.addr)) || rw.addr[0] == '\0')
        return ifd_error_set(err, -EBADMSG, "FORWARD: route entry %u: address not terminated", i);
    ret->layer_first = le32toh(rw.layer_first);
    ret->layer_last = le32toh(rw.layer_last);
    memcpy(ret->addr, rw.addr, sizeof(rw.addr));
    return 0;
}

/* ---- RESULT ---- */

int net_result_encode(struct net_buf *b, const struct net_result *m)
{
    struct net_result_wire w = {htole64(m->req_id), htole32(m->n_tokens), htole32(m->hidden)};
    b->len = 0;
    int r = net_buf_reserve(b, sizeof(w) + (size_t)m->n_tokens * m->hidden * 4);
    if (r >= 0)
        r = buf_put(b, &w, sizeof(w));
    if (r >= 0)
        r = buf_put_u32s(b, m->hidden_data, (size_t)m->n_tokens * m->hidden);
    return r;
}

int net_result_decode(const uint8_t *p, size_t len, uint32_t expect_tokens, uint32_t expect_hidden,
                      struct net_result *ret, ifd_error *err)
{
    struct net_result_wire w;
    if (len < sizeof(w))
        return ifd_error_set(err, -EBADMSG, "RESULT: payload of %zu bytes is too short", len);
    memcpy(&w, p, sizeof(w));
    struct net_result m = {le64toh(w.req_id), le32toh(w.n_tokens), le32toh(w.hidden), p + sizeof(w)};
    if (m.n_tokens != expect_tokens || m.hidden != expect_hidden)
        return ifd_error_set(err, -EBADMSG, "RESULT: %u x %u hidden states, expected %u x %u", m.n_tokens,
                             m.hidden, expect_tokens, expect_hidden);
    if (len != sizeof(w) + (size_t)m.n_tokens * m.hidden * 4)
        return ifd_error_set(err, -EBADMSG, "RESULT: payload is %zu bytes, expected %zu", len,
                             sizeof(w) + (size_t)m.n_tokens * m.hidden * 4);
    *ret = m;
    return 0;
}

/* ---- 16-byte messages ---- */

static int put_u64x2(struct net_buf *b, uint64_t a, uint64_t c)
{
    struct net_u64x2_wire w = {htole64(a), htole64(c)};
    b->len = 0;
    return buf_put(b, &w, sizeof(w));
}

static int get_u64x2(const char *what, const uint8_t *p, size_t len, uint64_t *a, uint64_t *c, ifd_error *err)
{
    struct net_u64x2_wire w;
    int r = expect_len(what, len, sizeof(w), err);
    if (r < 0)
        return r;
    memcpy(&w, p, sizeof(w));
    *a = le64toh(w.a);
    *c = le64toh(w.b);
    return 0;
}

/* Two i32 packed in one u64, low first: the second half of a 16-byte message. */
static uint64_t pack_i32x2(int32_t lo, int32_t hi)
{
    return (uint64_t)(uint32_t)lo | ((uint64_t)(uint32_t)hi << 32);
}

int net_kv_truncate_encode(struct net_buf *b, const struct net_kv_truncate *m)
{
    return put_u64x2(b, m->req_id, pack_i32x2(m->seq_id, m->n_keep));
}

int net_kv_truncate_decode(const uint8_t *p, size_t len, struct net_kv_truncate *ret, ifd_error *err)
{
    uint64_t a, c;
    int r = get_u64x2("KV_TRUNCATE", p, len, &a, &c, err);
    if (r < 0)
        return r;
    ret->req_id = a;
    ret->seq_id = (int32_t)(uint32_t)c;
    ret->n_keep = (int32_t)(uint32_t)(c >> 32);
    return 0;
}

int net_ack_encode(struct net_buf *b, const struct net_ack *m)
{
    return put_u64x2(b, m->req_id, pack_i32x2(m->status, 0));
}

int net_ack_decode(const uint8_t *p, size_t len, struct net_ack *ret, ifd_error *err)
{
    uint64_t a, c;
    int r = get_u64x2("ACK", p, len, &a, &c, err);
    if (r < 0)
        return r;
    ret->req_id = a;
    ret->status = (int32_t)(uint32_t)c;
    return 0;
}

int net_ping_encode(struct net_buf *b, const struct net_ping *m)
{
    return put_u64x2(b, m->req_id, m->t_ns);
}

int net_ping_decode(const uint8_t *p, size_t len, struct net_ping *ret, ifd_error *err)
{
    return get_u64x2("PING", p, len, &ret->req_id, &ret->t_ns, err);
}

/* ---- STATS ---- */

int net_stats_encode(struct net_buf *b, const struct net_stats *m)
{
    uint64_t ms;
    memcpy(&ms, &m->forward_ms, 8);
    struct net_stats_wire w = {
        .forward_calls = htole64(m->forward_calls),
        .tokens = htole64(m->tokens),
        .rss_bytes = htole64(m->rss_bytes),
        .weight_bytes = htole64(m->weight_bytes),
        .bytes_in = htole64(m->bytes_in),
        .bytes_out = htole64(m->bytes_out),
    };
    ms = htole64(ms);
    memcpy(&w.forward_ms, &ms, 8);
    b->len = 0;
    return buf_put(b, &w, sizeof(w));
}

int net_stats_decode(const uint8_t *p, size_t len, struct net_stats *ret, ifd_error *err)
{
    struct net_stats_wire w;
    int r = expect_len("STATS", len, sizeof(w), err);
    if (r < 0)
        return r;
    memcpy(&w, p, sizeof(w));
    uint64_t ms;
    memcpy(&ms, &w.forward_ms, 8);
    ms = le64toh(ms);
    memcpy(&ret->forward_ms, &ms, 8);
    ret->forward_calls = le64toh(w.forward_calls);
    ret->tokens = le64toh(w.tokens);
    ret->rss_bytes = le64toh(w.rss_bytes);
    ret->weight_bytes = le64toh(w.weight_bytes);
    ret->bytes_in = le64toh(w.bytes_in);
    ret->bytes_out = le64toh(w.bytes_out);
    return 0;
}

const char *net_msg_name(uint16_t type)
{
    switch (type) {
    case NET_MSG_HELLO: return "HELLO";
    case NET_MSG_AUTH: return "AUTH";
    case NET_MSG_ERROR: return "ERROR";
    case NET_MSG_ASSIGN: return "ASSIGN";
    case NET_MSG_HAVE: return "HAVE";
    case NET_MSG_TENSOR_CHUNK: return "TENSOR_CHUNK";
    case NET_MSG_LOAD: return "LOAD";
    case NET_MSG_READY: return "READY";
    case NET_MSG_FORWARD: return "FORWARD";
    case NET_MSG_RESULT: return "RESULT";
    case NET_MSG_KV_TRUNCATE: return "KV_TRUNCATE";
    case NET_MSG_ACK: return "ACK";
    case NET_MSG_PING: return "PING";
    case NET_MSG_PONG: return "PONG";
    case NET_MSG_STATS_REQ: return "STATS_REQ";
    case NET_MSG_STATS: return "STATS";
    default: return "unknown";
    }
}
