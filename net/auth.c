#include "auth.h"

#include <ctype.h>
#include <endian.h>
#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"

_Static_assert(NET_SEAL_OVERHEAD == crypto_aead_xchacha20poly1305_ietf_ABYTES, "tag size");
_Static_assert(crypto_aead_xchacha20poly1305_ietf_KEYBYTES == 32, "key size");

int net_crypto_init(ifd_error *err)
{
    if (sodium_init() < 0)
        return ifd_error_set(err, -EIO, "libsodium failed to initialise");
    return 0;
}

void net_random(void *buf, size_t len)
{
    randombytes_buf(buf, len);
}

void net_wipe(void *p, size_t len)
{
    sodium_memzero(p, len);
}

int net_key_load(const char *path, struct net_key *ret, ifd_error *err)
{
    int r = net_crypto_init(err);
    if (r < 0)
        return r;
    /* room for a maximal key and a CRLF after it */
    char *text;
    size_t n;
    if ((r = file_read(path, NET_KEY_FILE_MAX + 2, FILE_READ_SECRET, &text, &n, err)) < 0) {
        ifd_error_prefix(err, "cluster key file");
        return r;
    }
    uint8_t *buf = (uint8_t *)text;
    size_t b = 0, e = n;
    while (b < e && isspace(buf[b]))
        b++;
    while (e > b && isspace(buf[e - 1]))
        e--;
    if (e - b > NET_KEY_FILE_MAX || e - b < NET_KEY_FILE_MIN) {
        net_wipe(buf, n);
        free(buf);
        return ifd_error_set(err, -EINVAL, "cluster key file '%s': key must be %d to %d bytes, got %zu",
                             path, NET_KEY_FILE_MIN, NET_KEY_FILE_MAX, e - b);
    }
    static const char domain[] = "inferd-cluster-key-v1";
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, NET_KEY_BYTES);
    crypto_generichash_update(&h, (const uint8_t *)domain, sizeof(domain));
    crypto_generichash_update(&h, buf + b, e - b);
    crypto_generichash_final(&h, ret->k, NET_KEY_BYTES);
    net_wipe(buf, n);
    free(buf);
    net_wipe(&h, sizeof(h));
    return 0;
}

/* The transcript both proofs and session keys bind: a domain string, the
 * roles of both ends and both nonces. */
static void transcript(crypto_generichash_state *h, const char *domain, uint8_t role_c, uint8_t role_s,
                       const uint8_t nonce_c[NET_NONCE_BYTES], const uint8_t nonce_s[NET_NONCE_BYTES])
{
    crypto_generichash_update(h, (const uint8_t *)domain, strlen(domain) + 1);
    uint8_t roles[2] = {role_c, role_s};
    crypto_generichash_update(h, roles, 2);
    crypto_generichash_update(h, nonce_c, NET_NONCE_BYTES);
    crypto_generichash_update(h, nonce_s, NET_NONCE_BYTES);
}

void net_auth_proof(const struct net_key *key, char label, uint8_t role_c, uint8_t role_s,
                    const uint8_t nonce_c[NET_NONCE_BYTES], const uint8_t nonce_s[NET_NONCE_BYTES],
                    uint8_t out[NET_PROOF_BYTES])
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, key->k, NET_KEY_BYTES, NET_PROOF_BYTES);
    transcript(&h, label == 'C' ? "inferd-auth-v1 client proof" : "inferd-auth-v1 server proof",
               role_c, role_s, nonce_c, nonce_s);
    crypto_generichash_final(&h, out, NET_PROOF_BYTES);
}

int net_auth_verify(const struct net_key *key, char label, uint8_t role_c, uint8_t role_s,
                    const uint8_t nonce_c[NET_NONCE_BYTES], const uint8_t nonce_s[NET_NONCE_BYTES],
                    const uint8_t proof[NET_PROOF_BYTES])
{
    uint8_t want[NET_PROOF_BYTES];
    net_auth_proof(key, label, role_c, role_s, nonce_c, nonce_s, want);
    int ok = sodium_memcmp(want, proof, NET_PROOF_BYTES) == 0;
    net_wipe(want, sizeof(want));
    return ok ? 0 : -EACCES;
}

void net_session_derive(const struct net_key *key, uint8_t role_c, uint8_t role_s,
                        const uint8_t nonce_c[NET_NONCE_BYTES], const uint8_t nonce_s[NET_NONCE_BYTES],
                        struct net_seal *c2s, struct net_seal *s2c)
{
    uint8_t out[64];
    crypto_generichash_state h;
    crypto_generichash_init(&h, key->k, NET_KEY_BYTES, sizeof(out));
    transcript(&h, "inferd-session-v1", role_c, role_s, nonce_c, nonce_s);
    crypto_generichash_final(&h, out, sizeof(out));
    memcpy(c2s->key, out, 32);
    memcpy(s2c->key, out + 32, 32);
    c2s->counter = 0;
    s2c->counter = 0;
    net_wipe(out, sizeof(out));
}

static void seal_nonce(uint64_t counter, uint8_t nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES])
{
    memset(nonce, 0, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
    uint64_t le = htole64(counter);
    memcpy(nonce, &le, sizeof(le));
}

void net_seal_encrypt(struct net_seal *s, const uint8_t *ad, size_t ad_len,
                      const void *in, size_t len, uint8_t *out)
{
    uint8_t nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
    seal_nonce(s->counter++, nonce);
    unsigned long long clen;
    crypto_aead_xchacha20poly1305_ietf_encrypt(out, &clen, in, len, ad, ad_len, NULL, nonce, s->key);
}

int net_seal_decrypt(struct net_seal *s, const uint8_t *ad, size_t ad_len,
                     const uint8_t *in, size_t len, uint8_t *out, ifd_error *err)
{
    if (len < NET_SEAL_OVERHEAD)
        return ifd_error_set(err, -EBADMSG, "sealed payload of %zu bytes is shorter than its tag", len);
    uint8_t nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
    seal_nonce(s->counter, nonce);
    unsigned long long mlen;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, &mlen, NULL, in, len, ad, ad_len, nonce, s->key) != 0)
        return ifd_error_set(err, -EBADMSG,
                             "frame %llu failed authentication (forged, corrupted, replayed or wrong key)",
                             (unsigned long long)s->counter);
    s->counter++;
    return 0;
}
