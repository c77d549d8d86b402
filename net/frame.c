#include "frame.h"

#include <endian.h>
#include <errno.h>
#include <string.h>

#include "base/cpu.h"

/* Reflected Castagnoli polynomial. */
#define CRC32C_POLY 0x82F63B78u

static uint32_t crc32c_sw(uint32_t crc, const uint8_t *p, size_t len)
{
    /* Bitwise rather than table-driven: it is only the fallback for CPUs
     * without SSE4.2, and needs no table to initialise. */
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (CRC32C_POLY & (0u - (crc & 1u)));
    }
    return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t len)
{
    uint64_t c = ~crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

uint32_t net_crc32c(uint32_t crc, const void *data, size_t len)
{
#if defined(__x86_64__)
    if (cpu_features()->sse42)
        return crc32c_hw(crc, data, len);
#endif
    return crc32c_sw(crc, data, len);
}

static uint32_t frame_crc(const uint8_t header[NET_FRAME_HEADER_SIZE], const void *payload, uint32_t length)
{
    static const uint8_t zero[4];
    uint32_t crc = net_crc32c(0, header, 16);
    crc = net_crc32c(crc, zero, 4);
    if (length)
        crc = net_crc32c(crc, payload, length);
    return crc;
}

void net_frame_header_encode(uint8_t out[NET_FRAME_HEADER_SIZE], uint16_t type, uint32_t flags,
                             const void *payload, uint32_t length)
{
    struct net_frame_header_wire w = {
        .magic = htole32(NET_FRAME_MAGIC),
        .version_major = NET_PROTO_MAJOR,
        .version_minor = NET_PROTO_MINOR,
        .type = htole16(type),
        .flags = htole32(flags),
        .length = htole32(length),
        .crc32c = 0,
    };
    memcpy(out, &w, sizeof(w));
    uint32_t crc = htole32(frame_crc(out, payload, length));
    memcpy(out + 16, &crc, 4);
}

int net_frame_header_decode(const uint8_t in[NET_FRAME_HEADER_SIZE], uint32_t max_payload,
                            struct net_frame_header *ret, ifd_error *err)
{
    struct net_frame_header_wire w;
    memcpy(&w, in, sizeof(w));
    if (le32toh(w.magic) != NET_FRAME_MAGIC)
        return ifd_error_set(err, -EBADMSG, "not an inferd frame (magic %02x %02x %02x %02x)",
                             in[0], in[1], in[2], in[3]);
    struct net_frame_header h = {
        .version_major = w.version_major,
        .version_minor = w.version_minor,
        .type = le16toh(w.type),
        .flags = le32toh(w.flags),
        .length = le32toh(w.length),
        .crc32c = le32toh(w.crc32c),
    };
    if (h.version_major != NET_PROTO_MAJOR) {
        *ret = h;
        return ifd_error_set(err, -EPROTONOSUPPORT,
                             "peer speaks protocol version %u.%u, this node speaks %u.%u",
                             h.version_major, h.version_minor, NET_PROTO_MAJOR, NET_PROTO_MINOR);
    }
    if (h.flags & ~NET_FRAME_F_SEALED)
        return ifd_error_set(err, -EBADMSG, "frame type %u: unknown flags 0x%x", h.type, h.flags);
    if (h.length > max_payload)
        return ifd_error_set(err, -EMSGSIZE, "frame type %u: payload of %u bytes exceeds the limit of %u",
                             h.type, h.length, max_payload);
    *ret = h;
    return 0;
}

int net_frame_check_crc(const uint8_t header[NET_FRAME_HEADER_SIZE], const void *payload,
                        uint32_t length, ifd_error *err)
{
    uint32_t want;
    memcpy(&want, header + 16, 4);
    want = le32toh(want);
    uint32_t got = frame_crc(header, payload, length);
    if (got != want)
        return ifd_error_set(err, -EBADMSG, "frame checksum mismatch (crc32c %08x, header says %08x)", got, want);
    return 0;
}
