/* conn.h - one cluster connection: a TCP socket carrying frames, with
 * deadlines on every read and write, the handshake, and sealing.
 *
 * Sending is thread-safe (a mutex serialises whole frames); receiving is for
 * one thread at a time. A received payload lives in the connection's buffer
 * until the next receive. Any error on a connection (timeout, bad frame,
 * failed authentication) leaves it broken: every later call fails, and the
 * owner closes it. net/ logs; these functions only return messages. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "base/error.h"
#include "proto.h"

#define NET_DEFAULT_PORT 10128
/* The whole handshake (both HELLOs and both AUTHs) must be done within this. */
#define NET_HANDSHAKE_TIMEOUT_MS 5000
/* Largest frame payload accepted before the handshake is done: a HELLO is 56
 * bytes, an AUTH 32, an ERROR at most 16 + 4096; nothing from a peer that
 * has not yet proved the key makes this node allocate more. */
#define NET_HANDSHAKE_MAX_PAYLOAD 4608u

struct net_conn;

/* Splits "host:port" (or "[v6]:port", or "host" with default_port). */
int net_addr_split(const char *addr, int default_port, char *host, size_t host_len, int *ret_port,
                   ifd_error *err);
/* True if addr's host is a loopback name or address. */
bool net_addr_is_loopback(const char *addr);

/* Opens a listening socket on "host:port" (port 0: any; *ret_port says which). */
int net_listen(const char *addr, int *ret_fd, int *ret_port, ifd_error *err);

/* Connects to "host:port" within timeout_ms. */
int net_conn_connect(const char *addr, int timeout_ms, struct net_conn **ret, ifd_error *err);
/* Wraps an accepted or otherwise connected socket (taken over). */
int net_conn_create(int fd, const char *peer_name, struct net_conn **ret, ifd_error *err);
void net_conn_destroy(struct net_conn *c); /* accepts NULL */

/* A lingering close, as nginx does it: our side half-closed, then what the
 * peer still sends is read and dropped, up to max_bytes or max_ms, so that
 * the frame we sent last (an ERROR) is not destroyed by the reset a close
 * with unread input would cause, and the peer gets to read it. */
void net_conn_linger(struct net_conn *c, int max_ms, size_t max_bytes);
/* Wakes any thread blocked on the connection and makes later calls fail. */
void net_conn_shutdown(struct net_conn *c);

const char *net_conn_peer(const struct net_conn *c);
bool net_conn_is_broken(const struct net_conn *c);
int net_conn_fd(const struct net_conn *c);
uint64_t net_conn_bytes_sent(const struct net_conn *c);
uint64_t net_conn_bytes_received(const struct net_conn *c);

/* Client side of the handshake (docs/protocol.md). key NULL: no cluster key
 * (both sides must agree). self describes this node (nonce and version are
 * filled in here). On success *ret_peer is the server's HELLO and, with a
 * key, every later frame is sealed. */
int net_conn_handshake_client(struct net_conn *c, const struct net_key *key, const struct net_hello *self,
                              struct net_hello *ret_peer, ifd_error *err);
/* Server side. A refused peer is sent an ERROR saying why before failing. */
int net_conn_handshake_server(struct net_conn *c, const struct net_key *key, const struct net_hello *self,
                              struct net_hello *ret_peer, ifd_error *err);

/* Sends one message; the payload is sealed when the session is. Waits at
 * most timeout_ms for the socket to take it. */
int net_conn_send(struct net_conn *c, uint16_t type, const void *payload, size_t len, int timeout_ms,
                  ifd_error *err);
/* Sends payload = head || tail without joining them first (a chunk header and its data). */
int net_conn_send2(struct net_conn *c, uint16_t type, const void *head, size_t head_len, const void *tail,
                   size_t tail_len, int timeout_ms, ifd_error *err);
/* Sends an ERROR message (best effort, short deadline). */
void net_conn_send_error(struct net_conn *c, int code, uint64_t req_id, const char *msg);

/* Receives one whole frame within timeout_ms (<0: no limit). An ERROR from
 * the peer is returned as a message (type NET_MSG_ERROR), not as a failure. */
int net_conn_recv(struct net_conn *c, uint16_t *ret_type, const uint8_t **ret_payload, size_t *ret_len,
                  int timeout_ms, ifd_error *err);

/* Waits until a frame starts arriving (or the peer closes) within timeout_ms:
 * 1 readable, 0 timeout, <0 error. */
int net_conn_wait_readable(struct net_conn *c, int timeout_ms);

/* Largest payload this connection accepts after the handshake (default
 * NET_FRAME_MAX_PAYLOAD; during the handshake at most NET_HANDSHAKE_MAX_PAYLOAD). */
void net_conn_set_max_payload(struct net_conn *c, uint32_t max);
/* Deadline of a whole handshake (default NET_HANDSHAKE_TIMEOUT_MS). */
void net_conn_set_handshake_timeout(struct net_conn *c, int timeout_ms);
