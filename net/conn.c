#include "conn.h"

#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "base/clock.h"

_Static_assert(NET_HANDSHAKE_MAX_PAYLOAD >= 16 + NET_MAX_ERROR_MSG, "a refusal (ERROR) fits in a handshake frame");

struct net_conn {
    int fd;
    char peer[NET_ADDR_MAX + 8];
    bool broken;          /* set on any failure; read without the lock (a hint only) */
    bool sealed;          /* session established with a key */
    struct net_seal tx, rx;
    uint32_t max_payload;
    int handshake_timeout_ms; /* for the whole handshake, not per frame */
    pthread_mutex_t send_lock;
    struct net_buf rxbuf; /* header + payload of the last received frame */
    struct net_buf txbuf; /* frame being sent (under send_lock) */
    uint64_t bytes_sent, bytes_received;
};

/* Milliseconds left until deadline_ns (UINT64_MAX: none): -1 for poll's
 * "forever", 0 when passed. */
static int ms_left(uint64_t deadline_ns)
{
    if (deadline_ns == UINT64_MAX)
        return -1;
    uint64_t now = ifd_now_ns();
    if (now >= deadline_ns)
        return 0;
    uint64_t ms = (deadline_ns - now + 999999) / 1000000;
    return ms > 1000000000 ? 1000000000 : (int)ms;
}

static uint64_t deadline_after(int timeout_ms)
{
    return timeout_ms < 0 ? UINT64_MAX : ifd_now_ns() + (uint64_t)timeout_ms * 1000000ull;
}

int net_addr_split(const char *addr, int default_port, char *host, size_t host_len, int *ret_port,
                   ifd_error *err)
{
    const char *hb = addr, *he, *port = NULL;
    if (addr[0] == '[') {
        hb = addr + 1;
        he = strchr(hb, ']');
        if (!he)
            return ifd_error_set(err, -EINVAL, "address '%s': missing ']'", addr);
        if (he[1] == ':')
            port = he + 2;
        else if (he[1] != '\0')
            return ifd_error_set(err, -EINVAL, "address '%s': junk after ']'", addr);
    } else {
        he = strrchr(addr, ':');
        if (he && strchr(addr, ':') != he)
            return ifd_error_set(err, -EINVAL, "address '%s': write IPv6 addresses as [addr]:port", addr);
        if (he)
            port = he + 1;
        else
            he = addr + strlen(addr);
    }
    size_t n = (size_t)(he - hb);
    if (n == 0 || n >= host_len)
        return ifd_error_set(err, -EINVAL, "address '%s': bad host", addr);
    int p = default_port;
    if (port) {
        char *end;
        long v = strtol(port, &end, 10);
        if (*port == '\0' || *end != '\0' || v < 0 || v > 65535)
            return ifd_error_set(err, -EINVAL, "address '%s': bad port", addr);
        p = (int)v;
    }
    memcpy(host, hb, n);
    host[n] = '\0';
    *ret_port = p;
    return 0;
}

bool net_addr_is_loopback(const char *addr)
{
    char host[256];
    int port;
    if (net_addr_split(addr, NET_DEFAULT_PORT, host, sizeof(host), &port, NULL) < 0)
        return false;
    if (strcmp(host, "localhost") == 0 || strcmp(host, "::1") == 0)
        return true;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return false;
}

static void sock_tune(int fd)
{
    int one = 1;
    /* Hidden states are small and latency-bound: never wait to coalesce. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* Detect a half-open peer (its host vanished) even while idle. */
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    int idle = 10, intvl = 5, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int net_listen(const char *addr, int *ret_fd, int *ret_port, ifd_error *err)
{
    char host[256];
    int port, r;
    if ((r = net_addr_split(addr, NET_DEFAULT_PORT, host, sizeof(host), &port, err)) < 0)
        return r;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    int g = getaddrinfo(host, ps, &hints, &res);
    if (g != 0)
        return ifd_error_set(err, -EINVAL, "listen address '%s': %s", addr, gai_strerror(g));
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        r = -errno;
        freeaddrinfo(res);
        return ifd_error_set(err, r, "socket: %s", strerror(-r));
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* Hand over only connections that have sent something (nginx's
     * "deferred"): a peer that connects and stays silent is held by the
     * kernel, not by a thread and a pre-auth slot of ours; after this many
     * seconds it is passed on anyway, and the handshake deadline applies. */
    int defer_s = 2;
    setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer_s, sizeof(defer_s));
    /* Room for a burst of connections while the accept loop drops stallers. */
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 128) < 0) {
        r = -errno;
        freeaddrinfo(res);
        close(fd);
        return ifd_error_set(err, r, "listen on '%s': %s", addr, strerror(-r));
    }
    freeaddrinfo(res);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int bound = port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    *ret_fd = fd;
    if (ret_port)
        *ret_port = bound;
    return 0;
}

int net_conn_create(int fd, const char *peer_name, struct net_conn **ret, ifd_error *err)
{
    struct net_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    c->fd = fd;
    c->max_payload = NET_FRAME_MAX_PAYLOAD;
    c->handshake_timeout_ms = NET_HANDSHAKE_TIMEOUT_MS;
    pthread_mutex_init(&c->send_lock, NULL);
    if (peer_name) {
        snprintf(c->peer, sizeof(c->peer), "%s", peer_name);
    } else {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char h[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
            if (ss.ss_family == AF_INET) {
                inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, h, sizeof(h));
                port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            } else if (ss.ss_family == AF_INET6) {
                inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, h, sizeof(h));
                port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
            }
        }
        snprintf(c->peer, sizeof(c->peer), "%s:%d", h, port);
    }
    sock_tune(fd);
    *ret = c;
    return 0;
}

int net_conn_connect(const char *addr, int timeout_ms, struct net_conn **ret, ifd_error *err)
{
    char host[256];
    int port, r;
    if ((r = net_addr_split(addr, NET_DEFAULT_PORT, host, sizeof(host), &port, err)) < 0)
        return r;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res;
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    int g = getaddrinfo(host, ps, &hints, &res);
    if (g != 0)
        return ifd_error_set(err, -EHOSTUNREACH, "worker '%s': %s", addr, gai_strerror(g));
    uint64_t deadline = deadline_after(timeout_ms);
    r = -ECONNREFUSED;
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            r = -errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int pr;
            do
                pr = poll(&pfd, 1, ms_left(deadline));
            while (pr < 0 && errno == EINTR);
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            if (pr == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
                break;
            r = pr == 0 ? -ETIMEDOUT : -(soerr ? soerr : errno);
        } else {
            r = -errno;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return ifd_error_set(err, r, "connect to '%s': %s", addr, strerror(-r));
    r = net_conn_create(fd, addr, ret, err);
    if (r < 0)
        close(fd);
    return r;
}

void net_conn_destroy(struct net_conn *c)
{
    if (!c)
        return;
    close(c->fd);
    pthread_mutex_destroy(&c->send_lock);
    net_buf_finish(&c->rxbuf);
    net_buf_finish(&c->txbuf);
    net_wipe(&c->tx, sizeof(c->tx));
    net_wipe(&c->rx, sizeof(c->rx));
    free(c);
}

void net_conn_linger(struct net_conn *c, int max_ms, size_t max_bytes)
{
    if (!c)
        return;
    shutdown(c->fd, SHUT_WR);
    uint64_t deadline = deadline_after(max_ms);
    uint8_t sink[16384];
    size_t drained = 0;
    while (drained < max_bytes) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, ms_left(deadline));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            break;
        ssize_t k = recv(c->fd, sink, sizeof(sink), 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break; /* the peer read our last frame and closed, or reset */
        drained += (size_t)k;
    }
}

void net_conn_shutdown(struct net_conn *c)
{
    if (!c)
        return;
    __atomic_store_n(&c->broken, true, __ATOMIC_RELEASE);
    shutdown(c->fd, SHUT_RDWR);
}

const char *net_conn_peer(const struct net_conn *c) { return c->peer; }
bool net_conn_is_broken(const struct net_conn *c) { return __atomic_load_n(&c->broken, __ATOMIC_ACQUIRE); }
int net_conn_fd(const struct net_conn *c) { return c->fd; }
uint64_t net_conn_bytes_sent(const struct net_conn *c) { return __atomic_load_n(&c->bytes_sent, __ATOMIC_RELAXED); }
uint64_t net_conn_bytes_received(const struct net_conn *c)
{
    return __atomic_load_n(&c->bytes_received, __ATOMIC_RELAXED);
}
void net_conn_set_max_payload(struct net_conn *c, uint32_t max) { c->max_payload = max; }
void net_conn_set_handshake_timeout(struct net_conn *c, int timeout_ms) { c->handshake_timeout_ms = timeout_ms; }

static int fail(struct net_conn *c, ifd_error *err, int code, const char *fmt, const char *detail)
{
    __atomic_store_n(&c->broken, true, __ATOMIC_RELEASE);
    return ifd_error_set(err, code, fmt, c->peer, detail);
}

/* Reads exactly n bytes before the deadline. */
static int read_full(struct net_conn *c, uint8_t *p, size_t n, uint64_t deadline, bool frame_start, ifd_error *err)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = recv(c->fd, p + got, n - got, 0);
        if (k > 0) {
            got += (size_t)k;
            __atomic_fetch_add(&c->bytes_received, (uint64_t)k, __ATOMIC_RELAXED);
            continue;
        }
        if (k == 0)
            return fail(c, err, -ECONNRESET, "%s: %s",
                        frame_start && got == 0 ? "peer closed the connection" : "connection closed mid-frame (truncated frame)");
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return fail(c, err, -errno, "%s: receive failed: %s", strerror(errno));
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, ms_left(deadline));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            return fail(c, err, -ETIMEDOUT, "%s: %s",
                        frame_start && got == 0 ? "timed out waiting for a frame" : "timed out in the middle of a frame");
        if (pr < 0)
            return fail(c, err, -errno, "%s: poll failed: %s", strerror(errno));
    }
    return 0;
}

static int write_full(struct net_conn *c, const uint8_t *p, size_t n, uint64_t deadline, ifd_error *err)
{
    size_t put = 0;
    while (put < n) {
        ssize_t k = send(c->fd, p + put, n - put, MSG_NOSIGNAL);
        if (k > 0) {
            put += (size_t)k;
            __atomic_fetch_add(&c->bytes_sent, (uint64_t)k, __ATOMIC_RELAXED);
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return fail(c, err, -errno, "%s: send failed: %s", strerror(errno));
        struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
        int pr = poll(&pfd, 1, ms_left(deadline));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            return fail(c, err, -ETIMEDOUT, "%s: %s", "timed out sending (peer not reading)");
        if (pr < 0)
            return fail(c, err, -errno, "%s: poll failed: %s", strerror(errno));
    }
    return 0;
}

/* force: send even on a connection already marked broken (the ERROR that
 * tells a refused peer why, as long as the socket still takes it). */
static int send_frame(struct net_conn *c, uint16_t type, const void *head, size_t head_len, const void *tail,
                      size_t tail_len, int timeout_ms, bool force, ifd_error *err)
{
    if (!force && net_conn_is_broken(c))
        return ifd_error_set(err, -ENOTCONN, "%s: connection is closed", c->peer);
    size_t plain = head_len + tail_len;
    size_t wire = plain + (c->sealed ? NET_SEAL_OVERHEAD : 0);
    if (wire > NET_FRAME_MAX_PAYLOAD)
        return ifd_error_set(err, -EMSGSIZE, "%s: %s message of %zu bytes exceeds the frame limit", c->peer,
                             net_msg_name(type), plain);
    pthread_mutex_lock(&c->send_lock);
    int r = net_buf_reserve(&c->txbuf, NET_FRAME_HEADER_SIZE + wire);
    if (r < 0) {
        pthread_mutex_unlock(&c->send_lock);
        return ifd_error_set(err, r, "%s: out of memory", c->peer);
    }
    uint8_t *f = c->txbuf.data;
    uint32_t flags = c->sealed ? NET_FRAME_F_SEALED : 0;
    if (head_len)
        memcpy(f + NET_FRAME_HEADER_SIZE, head, head_len);
    if (tail_len)
        memcpy(f + NET_FRAME_HEADER_SIZE + head_len, tail, tail_len);
    if (c->sealed) {
        /* Bytes 0..15 of the header are the associated data; they do not
         * depend on the payload, so encode once for them, seal, then again
         * for the CRC over the ciphertext. */
        net_frame_header_encode(f, type, flags, NULL, 0);
        uint8_t ad[16];
        memcpy(ad, f, 16);
        uint32_t len_le = htole32((uint32_t)wire);
        memcpy(ad + 12, &len_le, 4);
        net_seal_encrypt(&c->tx, ad, 16, f + NET_FRAME_HEADER_SIZE, plain, f + NET_FRAME_HEADER_SIZE);
    }
    net_frame_header_encode(f, type, flags, f + NET_FRAME_HEADER_SIZE, (uint32_t)wire);
    r = write_full(c, f, NET_FRAME_HEADER_SIZE + wire, deadline_after(timeout_ms), err);
    pthread_mutex_unlock(&c->send_lock);
    return r;
}

int net_conn_send2(struct net_conn *c, uint16_t type, const void *head, size_t head_len, const void *tail,
                   size_t tail_len, int timeout_ms, ifd_error *err)
{
    return send_frame(c, type, head, head_len, tail, tail_len, timeout_ms, false, err);
}

int net_conn_send(struct net_conn *c, uint16_t type, const void *payload, size_t len, int timeout_ms,
                  ifd_error *err)
{
    return send_frame(c, type, payload, len, NULL, 0, timeout_ms, false, err);
}

void net_conn_send_error(struct net_conn *c, int code, uint64_t req_id, const char *msg)
{
    struct net_buf b = {0};
    if (net_error_encode(&b, code, req_id, msg) >= 0)
        send_frame(c, NET_MSG_ERROR, b.data, b.len, NULL, 0, 1000, true, NULL);
    net_buf_finish(&b);
}

int net_conn_wait_readable(struct net_conn *c, int timeout_ms)
{
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    int pr;
    do
        pr = poll(&pfd, 1, timeout_ms);
    while (pr < 0 && errno == EINTR);
    return pr < 0 ? -errno : pr;
}

int net_conn_recv(struct net_conn *c, uint16_t *ret_type, const uint8_t **ret_payload, size_t *ret_len,
                  int timeout_ms, ifd_error *err)
{
    if (net_conn_is_broken(c))
        return ifd_error_set(err, -ENOTCONN, "%s: connection is closed", c->peer);
    uint64_t deadline = deadline_after(timeout_ms);
    uint8_t hdr[NET_FRAME_HEADER_SIZE];
    int r = read_full(c, hdr, sizeof(hdr), deadline, true, err);
    if (r < 0)
        return r;
    struct net_frame_header h;
    ifd_error herr;
    r = net_frame_header_decode(hdr, c->max_payload, &h, &herr);
    if (r == -EPROTONOSUPPORT) {
        /* Show the peer's own explanation when it sent one (an ERROR's
         * layout is the same in every version). */
        if (h.type == NET_MSG_ERROR && h.length <= NET_MAX_ERROR_MSG + 16 && !(h.flags & NET_FRAME_F_SEALED) &&
            net_buf_reserve(&c->rxbuf, h.length) >= 0 &&
            read_full(c, c->rxbuf.data, h.length, deadline, false, NULL) >= 0) {
            struct net_error_msg em;
            if (net_error_decode(c->rxbuf.data, h.length, &em, NULL) >= 0)
                ifd_error_prefix(&herr, "peer refused: %.*s", (int)em.msg_len, em.msg);
        }
        return fail(c, err, r, "%s: %s", herr.msg);
    }
    if (r < 0)
        return fail(c, err, r, "%s: %s", herr.msg);
    if (!!(h.flags & NET_FRAME_F_SEALED) != c->sealed)
        return fail(c, err, -EBADMSG, "%s: %s", c->sealed ? "unsealed frame on an authenticated connection"
                                                         : "sealed frame before the handshake");
    r = net_buf_reserve(&c->rxbuf, h.length ? h.length : 1);
    if (r < 0)
        return fail(c, err, r, "%s: %s", "out of memory for a frame");
    r = read_full(c, c->rxbuf.data, h.length, deadline, false, err);
    if (r < 0)
        return r;
    r = net_frame_check_crc(hdr, c->rxbuf.data, h.length, &herr);
    if (r < 0)
        return fail(c, err, r, "%s: %s", herr.msg);
    size_t len = h.length;
    if (c->sealed) {
        r = net_seal_decrypt(&c->rx, hdr, 16, c->rxbuf.data, len, c->rxbuf.data, &herr);
        if (r < 0)
            return fail(c, err, r, "%s: %s", herr.msg);
        len -= NET_SEAL_OVERHEAD;
    }
    *ret_type = h.type;
    *ret_payload = c->rxbuf.data;
    *ret_len = len;
    return 0;
}

/* ---- handshake ---- */

/* Receives one frame that must be of type `want`; an ERROR from the peer
 * becomes a failure carrying the peer's message. */
static int recv_expect(struct net_conn *c, uint16_t want, uint64_t deadline, const uint8_t **p, size_t *len,
                       ifd_error *err)
{
    uint16_t type;
    int r = net_conn_recv(c, &type, p, len, ms_left(deadline), err);
    if (r < 0)
        return r;
    if (type == NET_MSG_ERROR) {
        struct net_error_msg em;
        ifd_error e2;
        if (net_error_decode(*p, *len, &em, &e2) < 0)
            return fail(c, err, -EBADMSG, "%s: %s", e2.msg);
        char msg[NET_MAX_ERROR_MSG + 1];
        memcpy(msg, em.msg, em.msg_len);
        msg[em.msg_len] = '\0';
        /* Keep only printable bytes: the text is the peer's. */
        for (char *q = msg; *q; q++)
            if ((unsigned char)*q < 0x20 || (unsigned char)*q == 0x7f)
                *q = '?';
        __atomic_store_n(&c->broken, true, __ATOMIC_RELEASE);
        return ifd_error_set(err, em.code < 0 ? em.code : -EPROTO, "%s: peer refused: %s", c->peer, msg);
    }
    if (type != want)
        return fail(c, err, -EPROTO, "%s: %s", want == NET_MSG_HELLO ? "expected HELLO first" : "expected AUTH");
    return 0;
}

static int refuse(struct net_conn *c, int code, const char *why, ifd_error *err)
{
    net_conn_send_error(c, code, 0, why);
    __atomic_store_n(&c->broken, true, __ATOMIC_RELEASE);
    return ifd_error_set(err, code, "%s: %s", c->peer, why);
}

static int send_hello(struct net_conn *c, const struct net_key *key, const struct net_hello *self,
                      uint64_t deadline, struct net_hello *out, ifd_error *err)
{
    *out = *self;
    out->version_major = NET_PROTO_MAJOR;
    out->version_minor = NET_PROTO_MINOR;
    out->flags = key ? NET_HELLO_F_AUTH : 0;
    net_random(out->nonce, NET_NONCE_BYTES);
    struct net_buf b = {0};
    int r = net_hello_encode(&b, out);
    if (r >= 0)
        r = net_conn_send(c, NET_MSG_HELLO, b.data, b.len, ms_left(deadline), err);
    net_buf_finish(&b);
    return r;
}

static int check_peer_hello(struct net_conn *c, const struct net_key *key, const struct net_hello *peer,
                            bool server, ifd_error *err)
{
    char why[160];
    if (peer->version_major != NET_PROTO_MAJOR) {
        snprintf(why, sizeof(why), "protocol version %u.%u is not supported (this node speaks %u.%u)",
                 peer->version_major, peer->version_minor, NET_PROTO_MAJOR, NET_PROTO_MINOR);
        return refuse(c, -EPROTONOSUPPORT, why, err);
    }
    bool peer_auth = peer->flags & NET_HELLO_F_AUTH;
    if (peer_auth != !!key) {
        snprintf(why, sizeof(why), "cluster key configured on %s only; master and workers need the same key file",
                 key ? (server ? "this worker" : "the master") : "the peer");
        return refuse(c, -EACCES, why, err);
    }
    return 0;
}

/* Sends AUTH with this side's proof. */
static int send_proof(struct net_conn *c, const uint8_t proof[NET_PROOF_BYTES], uint64_t deadline, ifd_error *err)
{
    struct net_buf b = {0};
    int r = net_auth_encode(&b, proof);
    if (r >= 0)
        r = net_conn_send(c, NET_MSG_AUTH, b.data, b.len, ms_left(deadline), err);
    net_buf_finish(&b);
    return r;
}

/* The whole handshake has one deadline, so a peer that trickles its bytes
 * cannot stretch it frame by frame; and until it is done the peer has proved
 * nothing, so it may not make this side allocate more than a handshake
 * message (sshd's and nginx's rule: bound what an unauthenticated peer costs). */
static void handshake_begin(struct net_conn *c, uint64_t *ret_deadline, uint32_t *ret_saved_max)
{
    *ret_deadline = deadline_after(c->handshake_timeout_ms);
    *ret_saved_max = c->max_payload;
    if (c->max_payload > NET_HANDSHAKE_MAX_PAYLOAD)
        c->max_payload = NET_HANDSHAKE_MAX_PAYLOAD;
}

static int handshake_client(struct net_conn *c, const struct net_key *key, const struct net_hello *self,
                            uint64_t deadline, struct net_hello *ret_peer, ifd_error *err)
{
    struct net_hello mine, peer;
    const uint8_t *p;
    size_t len;
    int r = send_hello(c, key, self, deadline, &mine, err);
    if (r < 0)
        return r;
    if ((r = recv_expect(c, NET_MSG_HELLO, deadline, &p, &len, err)) < 0)
        return r;
    ifd_error e2;
    if ((r = net_hello_decode(p, len, &peer, &e2)) < 0)
        return fail(c, err, r, "%s: %s", e2.msg);
    if ((r = check_peer_hello(c, key, &peer, false, err)) < 0)
        return r;
    if (key) {
        uint8_t proof[NET_PROOF_BYTES];
        net_auth_proof(key, 'C', mine.role, peer.role, mine.nonce, peer.nonce, proof);
        if ((r = send_proof(c, proof, deadline, err)) < 0)
            return r;
        if ((r = recv_expect(c, NET_MSG_AUTH, deadline, &p, &len, err)) < 0)
            return r;
        if ((r = net_auth_decode(p, len, proof, &e2)) < 0)
            return fail(c, err, r, "%s: %s", e2.msg);
        if (net_auth_verify(key, 'S', mine.role, peer.role, mine.nonce, peer.nonce, proof) < 0)
            return refuse(c, -EACCES, "authentication failed: peer does not hold the cluster key", err);
        net_session_derive(key, mine.role, peer.role, mine.nonce, peer.nonce, &c->tx, &c->rx);
        c->sealed = true;
    }
    *ret_peer = peer;
    return 0;
}

int net_conn_handshake_client(struct net_conn *c, const struct net_key *key, const struct net_hello *self,
                              struct net_hello *ret_peer, ifd_error *err)
{
    uint64_t deadline;
    uint32_t saved_max;
    handshake_begin(c, &deadline, &saved_max);
    int r = handshake_client(c, key, self, deadline, ret_peer, err);
    c->max_payload = saved_max;
    return r;
}

static int handshake_server(struct net_conn *c, const struct net_key *key, const struct net_hello *self,
                            uint64_t deadline, struct net_hello *ret_peer, ifd_error *err)
{
    struct net_hello mine, peer;
    const uint8_t *p;
    size_t len;
    ifd_error e2;
    int r = recv_expect(c, NET_MSG_HELLO, deadline, &p, &len, &e2);
    if (r < 0) {
        /* A peer of another major version gets told so in a frame it can read. */
        if (r == -EPROTONOSUPPORT)
            net_conn_send_error(c, r, 0, "protocol version not supported by this worker");
        return ifd_error_set(err, r, "%s", e2.msg);
    }
    if ((r = net_hello_decode(p, len, &peer, &e2)) < 0)
        return refuse(c, r, e2.msg, err);
    if ((r = check_peer_hello(c, key, &peer, true, err)) < 0)
        return r;
    if (peer.role == self->role && self->role != NET_ROLE_WORKER)
        return refuse(c, -EPROTO, "peer claims this node's own role", err);
    if ((r = send_hello(c, key, self, deadline, &mine, err)) < 0)
        return r;
    if (key) {
        uint8_t proof[NET_PROOF_BYTES];
        if ((r = recv_expect(c, NET_MSG_AUTH, deadline, &p, &len, err)) < 0)
            return r;
        if ((r = net_auth_decode(p, len, proof, &e2)) < 0)
            return refuse(c, r, e2.msg, err);
        if (net_auth_verify(key, 'C', peer.role, mine.role, peer.nonce, mine.nonce, proof) < 0)
            return refuse(c, -EACCES, "authentication failed: wrong cluster key", err);
        net_auth_proof(key, 'S', peer.role, mine.role, peer.nonce, mine.nonce, proof);
        if ((r = send_proof(c, proof, deadline, err)) < 0)
            return r;
        net_session_derive(key, peer.role, mine.role, peer.nonce, mine.nonce, &c->rx, &c->tx);
        c->sealed = true;
    }
    *ret_peer = peer;
    return 0;
}

int net_conn_handshake_server(struct net_conn *c, const struct net_key *key, const struct net_hello *self,
                              struct net_hello *ret_peer, ifd_error *err)
{
    uint64_t deadline;
    uint32_t saved_max;
    handshake_begin(c, &deadline, &saved_max);
    int r = handshake_server(c, key, self, deadline, ret_peer, err);
    c->max_payload = saved_max;
    return r;
}
