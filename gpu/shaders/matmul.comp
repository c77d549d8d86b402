#version 450
#extension GL_GOOGLE_include_directive : require
/* matmul.comp - y[t, row_offset + r] (+)= sum_c W[r, c] * x[t, c] (+ bias[row_offset + r]).
 *
 * Each weight element is read once per block of MM_TB tokens, so a single
 * token is a matrix-vector product and a batch a matrix-matrix one. W is one
 * row chunk of a weight (rows of this chunk only), stored as F32, F16 or BF16
 * (WEIGHT_* define) and widened here; accumulation is f32.
 * With USE_SUBGROUP a work group covers rows_per_wg rows, one subgroup per row
 * at a time, reduced by subgroupAdd alone (no shared memory, no barrier).
 * Without it (portable path) a work group covers one row and reduces through
 * shared memory; rows_per_wg is then 1.
 * Mirror struct: vk_push_matmul (vk_pipeline.h). */
#include "common.glsl"

#define MM_TB 8u
#ifndef USE_SUBGROUP
#define NR MM_TB
#include "reduce.glsl"
#endif

#if defined(WEIGHT_F32)
layout(std430, set = 0, binding = 0) readonly buffer Wbuf { float w[]; };
float w_at(uint i) { return w[i]; }
vec2 w_pair(uint i) { return vec2(w[i], w[i + 1]); }
#elif defined(WEIGHT_F16)
layout(std430, set = 0, binding = 0) readonly buffer Wbuf { uint w[]; };
float w_at(uint i) { return unpackHalf2x16(w[i >> 1])[i & 1u]; }
vec2 w_pair(uint i) { return unpackHalf2x16(w[i >> 1]); } /* i even */
#elif defined(WEIGHT_BF16)
layout(std430, set = 0, binding = 0) readonly buffer Wbuf { uint w[]; };
float w_at(uint i)
{
    uint u = w[i >> 1];
    return uintBitsToFloat((i & 1u) == 0u ? u << 16 : u & 0xffff0000u);
}
vec2 w_pair(uint i)
{
    uint u = w[i >> 1];
    return vec2(uintBitsToFloat(u << 16), uintBitsToFloat(u & 0xffff0000u));
}
#elif defined(WEIGHT_Q4) || defined(WEIGHT_Q8)
/* MLX affine: values packed low bits first in u32 words, w = scale * q + bias
 * per group of group_size columns; (scale, bias) widened to f32 at upload. */
#ifdef WEIGHT_Q4
#define QBITS 4u
#else
#define QBITS 8u
#endif
#define QVPW (32u / QBITS)            /* values per word */
#define QMASK ((1u << QBITS) - 1u)
#define WEIGHT_QUANT
layout(std430, set = 0, binding = 0) readonly buffer Wbuf { uint w[]; };
layout(std430, set = 0, binding = 4) readonly buffer SBbuf { vec2 sb[]; }; /* [rows, cols / group_size] */
#else
#error "define WEIGHT_F32, WEIGHT_F16, WEIGHT_BF16, WEIGHT_Q4 or WEIGHT_Q8"
#endif

layout(std430, set = 0, binding = 1) readonly buffer Xbuf { float x[]; };
layout(std430, set = 0, binding = 2) buffer Ybuf { float y[]; };
layout(std430, set = 0, binding = 3) readonly buffer Bbuf { float bias[]; };

layout(push_constant) uniform Push {
    uint rows;       /* rows of this chunk */
    uint cols;
    uint n_tokens;
    uint x_stride;   /* floats between tokens in x */
    uint y_stride;   /* floats between tokens in y */
    uint row_offset; /* first row of this chunk in the whole weight */
    uint flags;      /* 1: add bias, 2: accumulate into y */
    uint rows_per_wg;
    uint group_size; /* quantized weights only */
} pc;

/* acc[t] += W[r, :] . x[t0 + t, :] over columns lane, lane + step, ... */
#ifdef WEIGHT_QUANT
/* acc[t] += W[r, :] . x[t0 + t, :] over packed words lane, lane + step, ...:
 * sum_j (s q_j + b) x_j = s sum_j q_j x_j + b sum_j x_j within a word (every
 * word lies in one group: group_size is a multiple of 32). */
void row_dot(uint r, uint t0, uint nt, uint lane, uint step, inout float acc[MM_TB])
{
    uint wpr = pc.cols / QVPW;
    uint gpr = pc.cols / pc.group_size;
    for (uint wi = lane; wi < wpr; wi += step) {
        uint u = w[r * wpr + wi];
        uint c0 = wi * QVPW;
        vec2 g = sb[r * gpr + c0 / pc.group_size];
        [[unroll]] for (uint t = 0; t < MM_TB; t++) {
            if (t < nt) {
                uint xb = (t0 + t) * pc.x_stride + c0;
                float d = 0.0, xs = 0.0;
                [[unroll]] for (uint j = 0; j < QVPW; j++) {
                    float xv = x[xb + j];
                    d += float((u >> (j * QBITS)) & QMASK) * xv;
                    xs += xv;
                }
                acc[t] += g.x * d + g.y * xs;
            }
        }
    }
}
#else
void row_dot(uint r, uint t0, uint nt, uint lane, uint step, inout float acc[MM_TB])
{
    uint wbase = r * pc.cols;
    if (nt == 1u) {
        /* decode: one token, no per-token predicates in the inner loop */
        uint xb = t0 * pc.x_stride;
        float a = 0.0;
        if ((pc.cols & 1u) == 0u) {
            for (uint p = lane; p < (pc.cols >> 1); p += step) {
                vec2 wv = w_pair(wbase + 2u * p);
                a += wv.x * x[xb + 2u * p] + wv.y * x[xb + 2u * p + 1u];
            }
        } else {
            for (uint c = lane; c < pc.cols; c += step)
                a += w_at(wbase + c) * x[xb + c];
        }
        acc[0] += a;
    } else if ((pc.cols & 1u) == 0u) {
        /* even rows start on a word: read weights in pairs */
        uint npair = pc.cols >> 1;
        for (uint p = lane; p < npair; p += step) {
            vec2 wv = w_pair(wbase + 2u * p);
            [[unroll]] for (uint t = 0; t < MM_TB; t++) {
                if (t < nt) {
                    uint xb = (t0 + t) * pc.x_stride + 2u * p;
                    acc[t] += wv.x * x[xb] + wv.y * x[xb + 1u];
                }
            }
        }
    } else {
        for (uint c = lane; c < pc.cols; c += step) {
            float wv = w_at(wbase + c);
            [[unroll]] for (uint t = 0; t < MM_TB; t++) {
                if (t < nt)
                    acc[t] += wv * x[(t0 + t) * pc.x_stride + c];
            }
        }
    }
}

#endif

void store(uint r, uint t, float v)
{
    uint row = pc.row_offset + r;
    if ((pc.flags & 1u) != 0u)
        v += bias[row];
    uint yi = t * pc.y_stride + row;
    if ((pc.flags & 2u) != 0u)
        v += y[yi];
    y[yi] = v;
}

void main()
{
    uint t0 = gl_WorkGroupID.y * MM_TB;
    uint nt = min(MM_TB, pc.n_tokens - t0);
    float acc[MM_TB];
#ifdef USE_SUBGROUP
    uint r0 = gl_WorkGroupID.x * pc.rows_per_wg;
    for (uint k = gl_SubgroupID; k < pc.rows_per_wg; k += gl_NumSubgroups) {
        uint r = r0 + k;
        if (r >= pc.rows)
            break;
        [[unroll]] for (uint t = 0; t < MM_TB; t++)
            acc[t] = 0.0;
        row_dot(r, t0, nt, gl_SubgroupInvocationID, gl_SubgroupSize, acc);
        [[unroll]] for (uint t = 0; t < MM_TB; t++)
            acc[t] = subgroupAdd(acc[t]);
        /* every lane holds every sum; token t is stored by lane t mod size */
        [[unroll]] for (uint t = 0; t < MM_TB; t++)
            if (t < nt && t % gl_SubgroupSize == gl_SubgroupInvocationID)
                store(r, t0 + t, acc[t]);
    }
#else
    uint r = gl_WorkGroupID.x;
    uint tid = gl_LocalInvocationID.x;
    [[unroll]] for (uint t = 0; t < MM_TB; t++)
        acc[t] = 0.0;
    row_dot(r, t0, nt, tid, WG, acc);
    reduce_sum(acc);
    if (tid < nt) {
        float v = 0.0;
        [[unroll]] for (uint t = 0; t < MM_TB; t++)
            if (t == tid)
                v = acc[t];
        store(r, t0 + tid, v);
    }
#endif
}
