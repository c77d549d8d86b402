/* auth.h - the cluster key, the challenge-response handshake and the sealing
 * of frames once a session is established.
 *
 * The cluster key is a file shared by the master and its workers (never a
 * command-line value). Its contents, trimmed of surrounding whitespace, are
 * hashed to the 32-byte key K, so any high-entropy text works (for example
 * `head -c 32 /dev/urandom | base64 > cluster.key`).
 *
 * Handshake (both nonces fresh random 32 bytes, roles as in HELLO):
 *   client -> server  HELLO(nonce_c, role_c)
 *   server -> client  HELLO(nonce_s, role_s)
 *   client -> server  AUTH(proof_c)   proof_c = MAC_K("C", role_c, role_s, nonce_c, nonce_s)
 *   server -> client  AUTH(proof_s)   proof_s = MAC_K("S", role_c, role_s, nonce_c, nonce_s)
 * MAC is keyed BLAKE2b-256 (crypto_generichash) over a domain-separated
 * message. A recorded proof is useless in a later session (the other side's
 * nonce is new) and a proof reflected back at its author is refused (the
 * direction label differs). The server proves itself only after the client
 * has, so a client without the key obtains no proof at all.
 *
 * Session keys: BLAKE2b-512 keyed with K over ("session", roles, both
 * nonces), split into a client-to-server and a server-to-client key. Every
 * later frame payload is sealed with XChaCha20-Poly1305 under its direction's
 * key; the nonce is a per-direction frame counter, so a replayed, dropped or
 * reordered frame fails to open. The frame header is the associated data. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#define NET_KEY_BYTES 32
#define NET_NONCE_BYTES 32
#define NET_PROOF_BYTES 32
#define NET_SEAL_OVERHEAD 16  /* Poly1305 tag */
#define NET_KEY_FILE_MIN 16   /* a key file shorter than this is refused as too weak */
#define NET_KEY_FILE_MAX 4096

enum net_role {
    NET_ROLE_MASTER = 1,  /* the node that embeds and samples */
    NET_ROLE_WORKER = 2,  /* a node serving a layer range */
    NET_ROLE_PEER = 3,    /* a worker connecting to the next worker of a chain */
};

struct net_key {
    uint8_t k[NET_KEY_BYTES];
};

/* Reads a key file. Refused: missing, unreadable, not a regular file, owned
 * by another user than this one or root, readable by others (mode & 0007),
 * over NET_KEY_FILE_MAX + 2 bytes, shorter than NET_KEY_FILE_MIN or longer than
 * NET_KEY_FILE_MAX bytes after trimming. */
int net_key_load(const char *path, struct net_key *ret, ifd_error *err);

/* Initialises libsodium (idempotent, thread-safe). */
int net_crypto_init(ifd_error *err);

/* Fills buf with random bytes. */
void net_random(void *buf, size_t len);

/* Computes a handshake proof; `label` is 'C' (client) or 'S' (server). */
void net_auth_proof(const struct net_key *key, char label, uint8_t role_c, uint8_t role_s,
                    const uint8_t nonce_c[NET_NONCE_BYTES], const uint8_t nonce_s[NET_NONCE_BYTES],
                    uint8_t out[NET_PROOF_BYTES]);

/* Constant-time check of a received proof; 0 or -EACCES. */
int net_auth_verify(const struct net_key *key, char label, uint8_t role_c, uint8_t role_s,
                    const uint8_t nonce_c[NET_NONCE_BYTES], const uint8_t nonce_s[NET_NONCE_BYTES],
                    const uint8_t proof[NET_PROOF_BYTES]);

/* One direction of a sealed session. */
struct net_seal {
    uint8_t key[32];
    uint64_t counter;  /* frames sealed (or opened) so far in this direction */
};

/* Derives the two directions' keys of a session. */
void net_session_derive(const struct net_key *key, uint8_t role_c, uint8_t role_s,
                        const uint8_t nonce_c[NET_NONCE_BYTES], const uint8_t nonce_s[NET_NONCE_BYTES],
                        struct net_seal *c2s, struct net_seal *s2c);

/* Seals len bytes of plaintext into out (len + NET_SEAL_OVERHEAD bytes; out
 * may equal in), authenticating ad. Advances the counter. */
void net_seal_encrypt(struct net_seal *s, const uint8_t *ad, size_t ad_len,
                      const void *in, size_t len, uint8_t *out);

/* Opens a sealed payload of len bytes (>= NET_SEAL_OVERHEAD) into out
 * (len - NET_SEAL_OVERHEAD bytes; out may equal in). -EBADMSG if forged,
 * corrupted, replayed or out of order. Advances the counter on success. */
int net_seal_decrypt(struct net_seal *s, const uint8_t *ad, size_t ad_len,
                     const uint8_t *in, size_t len, uint8_t *out, ifd_error *err);

/* Wipes key material. */
void net_wipe(void *p, size_t len);
