/* quant_internal.h - helpers shared by the quantized-product sources of core/
 * (quant.c and quant_int8.c); not part of any interface. */
#pragma once

#include <stdint.h>
#include <string.h>

#include "dtype.h"
#include "model.h"

/* Scale or bias i of a quantized weight, whatever its stored dtype. */
static inline float qparam_at(enum ifd_dtype t, const void *base, int64_t i)
{
    switch (t) {
    case IFD_DTYPE_F16: {
        uint16_t h;
        memcpy(&h, (const uint16_t *)base + i, sizeof(h));
        return ifd_f16_to_f32(h);
    }
    case IFD_DTYPE_BF16: {
        uint16_t h;
        memcpy(&h, (const uint16_t *)base + i, sizeof(h));
        return ifd_bf16_to_f32(h);
    }
    default: {
        float f;
        memcpy(&f, (const float *)base + i, sizeof(f));
        return f;
    }
    }
}

/* Code i of a row that starts at `row` (word-aligned): a little-endian bit
 * stream, so a 3- or 6-bit code may take its high bits from the next word. */
static inline uint32_t code_at(const uint8_t *row, int64_t i, int bits)
{
    uint64_t bit = (uint64_t)i * (uint64_t)bits;
    uint64_t k = bit >> 5;
    unsigned sh = (unsigned)(bit & 31);
    uint32_t lo;
    memcpy(&lo, row + k * 4, sizeof(lo));
    uint64_t v = lo >> sh;
    if (sh + (unsigned)bits > 32) {
        uint32_t hi;
        memcpy(&hi, row + (k + 1) * 4, sizeof(hi));
        v |= (uint64_t)hi << (32 - sh);
    }
    return (uint32_t)v & ((1u << bits) - 1u);
}

/* Bytes of one packed row; cols is a multiple of 32, so a row ends on a word. */
static inline int64_t row_bytes_of(const struct ifd_weight *w)
{
    return w->cols * w->bits / 8;
}
