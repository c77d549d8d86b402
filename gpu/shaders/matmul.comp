#version 450
#extension GL_GOOGLE_include_directive : require
/* matmul.comp - y[t, row_offset + r] (+)= sum_c W[r, c] * x[t, c] (+ bias[row_offset + r]).
 *
 * One work group per (row r, block of MM_TB tokens): each weight element is
 * read once per token block, so a single token is a matrix-vector product and
 * a batch a matrix-matrix one. W is one row chunk of a weight (rows of this
 * chunk only), stored as F32, F16 or BF16 (WEIGHT_* define) and widened here;
 * accumulation is f32. Mirror struct: vk_push_matmul (vk_pipeline.h). */
#include "common.glsl"

#define MM_TB 8u
#define NR MM_TB
#include "reduce.glsl"

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
#else
#error "define WEIGHT_F32, WEIGHT_F16 or WEIGHT_BF16"
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
} pc;

void main()
{
    uint r = gl_WorkGroupID.x;
    uint t0 = gl_WorkGroupID.y * MM_TB;
    uint tid = gl_LocalInvocationID.x;
    uint nt = min(MM_TB, pc.n_tokens - t0);
    float acc[MM_TB];
    [[unroll]] for (uint t = 0; t < MM_TB; t++)
        acc[t] = 0.0;

    uint wbase = r * pc.cols;
    if ((pc.cols & 1u) == 0u) {
        /* even rows start on a word: read weights in pairs */
        uint npair = pc.cols >> 1;
        for (uint p = tid; p < npair; p += WG) {
            vec2 wv = w_pair(wbase + 2u * p);
            [[unroll]] for (uint t = 0; t < MM_TB; t++) {
                if (t < nt) {
                    uint xb = (t0 + t) * pc.x_stride + 2u * p;
                    acc[t] += wv.x * x[xb] + wv.y * x[xb + 1u];
                }
            }
        }
    } else {
        for (uint c = tid; c < pc.cols; c += WG) {
            float wv = w_at(wbase + c);
            [[unroll]] for (uint t = 0; t < MM_TB; t++) {
                if (t < nt)
                    acc[t] += wv * x[(t0 + t) * pc.x_stride + c];
            }
        }
    }
    reduce_sum(acc);
    if (tid < nt) {
        float v = 0.0;
        [[unroll]] for (uint t = 0; t < MM_TB; t++)
            if (t == tid)
                v = acc[t];
        uint row = pc.row_offset + r;
        if ((pc.flags & 1u) != 0u)
            v += bias[row];
        uint yi = (t0 + tid) * pc.y_stride + row;
        if ((pc.flags & 2u) != 0u)
            v += y[yi];
        y[yi] = v;
    }
}
