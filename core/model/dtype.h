/* dtype.h - element types of stored tensors and the scalar conversions.
 *
 * Weights stay in their stored dtype in memory; kernels widen on the fly.
 * F16 widens through a 65536-entry table (ifd_f16_table, filled before
 * main() by a constructor in dtype.c), BF16 by a 16-bit shift. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum ifd_dtype {
    IFD_DTYPE_F32 = 0,
    IFD_DTYPE_F16,
    IFD_DTYPE_BF16,
    IFD_DTYPE_F64,
    IFD_DTYPE_I64,
    IFD_DTYPE_I32,
    IFD_DTYPE_I16,
    IFD_DTYPE_I8,
    IFD_DTYPE_U64,
    IFD_DTYPE_U32,
    IFD_DTYPE_U16,
    IFD_DTYPE_U8,
    IFD_DTYPE_BOOL,
    IFD_DTYPE_COUNT
};

/* Bytes per element. */
size_t ifd_dtype_size(enum ifd_dtype t);
/* The safetensors spelling ("F32", "BF16", ...). */
const char *ifd_dtype_name(enum ifd_dtype t);
/* Parses a safetensors dtype string; returns 0 or -EINVAL for an unknown one. */
int ifd_dtype_parse(const char *name, enum ifd_dtype *ret);
/* True for the types a kernel computes on directly (F32, F16, BF16). */
int ifd_dtype_is_float(enum ifd_dtype t);

extern float ifd_f16_table[65536];

static inline float ifd_f16_to_f32(uint16_t h) { return ifd_f16_table[h]; }

static inline float ifd_bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* Round-to-nearest-even narrowing, NaN kept a NaN. */
uint16_t ifd_f32_to_f16(float f);
uint16_t ifd_f32_to_bf16(float f);
