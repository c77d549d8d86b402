/* frame.h - the wire frame of the inferd cluster protocol.
 *
 * Every message travels as one frame: a fixed 20-byte little-endian header
 * followed by `length` payload bytes. The header carries the protocol version
 * so that a peer of another major version is recognised on its first frame.
 * The CRC32C covers the header (with its crc field zero) and the payload, so
 * a flipped bit is caught even on an unencrypted loopback link; once a session
 * is authenticated the payload is also sealed (see auth.h). The payload length
 * is checked against NET_FRAME_MAX_PAYLOAD before anything is allocated.
 * docs/protocol.md is the full specification. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

#define NET_FRAME_MAGIC 0x31504649u  /* "IFP1" read as little-endian bytes 'I','F','P','1' */
#define NET_PROTO_MAJOR 1
#define NET_PROTO_MINOR 1 /* 1.1: HELLO speed_mbps (was reserved) */
#define NET_FRAME_HEADER_SIZE 20
/* Largest payload a receiver accepts: a prefill batch of 2048 tokens of a
 * 8192-wide model is 64 MiB of f32 hidden state; nothing legitimate is larger. */
#define NET_FRAME_MAX_PAYLOAD (80u << 20)

/* Frame flags. */
#define NET_FRAME_F_SEALED 0x1u  /* payload = AEAD ciphertext || 16-byte tag */

/* Wire layout (all little-endian):
 *   offset 0  u32 magic          NET_FRAME_MAGIC
 *   offset 4  u8  version_major  NET_PROTO_MAJOR of the sender
 *   offset 5  u8  version_minor
 *   offset 6  u16 type           enum net_msg_type (proto.h)
 *   offset 8  u32 flags          NET_FRAME_F_*
 *   offset 12 u32 length         payload bytes that follow the header
 *   offset 16 u32 crc32c         CRC32C of bytes 0..15 || 0u32 || payload */
struct net_frame_header_wire {
    uint32_t magic;
    uint8_t version_major;
    uint8_t version_minor;
    uint16_t type;
    uint32_t flags;
    uint32_t length;
    uint32_t crc32c;
} __attribute__((packed));
_Static_assert(sizeof(struct net_frame_header_wire) == NET_FRAME_HEADER_SIZE, "frame header is 20 bytes");

/* A decoded header, in host order. */
struct net_frame_header {
    uint8_t version_major, version_minor;
    uint16_t type;
    uint32_t flags;
    uint32_t length;
    uint32_t crc32c;
};

/* CRC32C (Castagnoli) continuing from `crc` (start with 0). Uses the SSE4.2
 * instruction when the CPU has it. */
uint32_t net_crc32c(uint32_t crc, const void *data, size_t len);

/* Writes the 20 header bytes into out, with the CRC of header and payload. */
void net_frame_header_encode(uint8_t out[NET_FRAME_HEADER_SIZE], uint16_t type, uint32_t flags,
                             const void *payload, uint32_t length);

/* Parses and checks the header bytes: magic, length bound (max_payload),
 * unknown flags. A different major version is -EPROTONOSUPPORT with a message
 * naming both versions (the header is still filled so that the caller can
 * read an ERROR frame from the peer). Returns 0 or a negative errno. */
int net_frame_header_decode(const uint8_t in[NET_FRAME_HEADER_SIZE], uint32_t max_payload,
                            struct net_frame_header *ret, ifd_error *err);

/* Checks the CRC of a received frame against its header. */
int net_frame_check_crc(const uint8_t header[NET_FRAME_HEADER_SIZE], const void *payload,
                        uint32_t length, ifd_error *err);
