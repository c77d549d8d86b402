#version 450
#extension GL_GOOGLE_include_directive : require
/* rope.comp - rotate-half rotary embedding, in place over [n_tokens, n_heads, head_dim].
 *
 * For i < head_dim/2: (a, b) = (v[i], v[i + half]) becomes
 * (a cos - b sin, b cos + a sin) with angle positions[t] * inv_freq[i].
 * cos/sin come from a host-built table [n_ctx, half, 2] (the host applies
 * llama3 scaling to inv_freq), so no device sin/cos precision enters.
 * Mirror struct: vk_push_rope (vk_pipeline.h). */
#include "common.glsl"

layout(std430, set = 0, binding = 0) buffer Vbuf { float v[]; };
layout(std430, set = 0, binding = 1) readonly buffer Tbuf { vec2 cs[]; };
layout(std430, set = 0, binding = 2) readonly buffer Pbuf { int positions[]; };

layout(push_constant) uniform Push {
    uint n_tokens;
    uint n_heads;
    uint head_dim;
} pc;

void main()
{
    uint half_dim = pc.head_dim >> 1;
    uint gid = flat_invocation();
    uint per_tok = pc.n_heads * half_dim;
    if (gid >= pc.n_tokens * per_tok)
        return;
    uint t = gid / per_tok;
    uint rem = gid - t * per_tok;
    uint h = rem / half_dim;
    uint i = rem - h * half_dim;
    vec2 c = cs[uint(positions[t]) * half_dim + i];
    uint base = (t * pc.n_heads + h) * pc.head_dim;
    float a = v[base + i];
    float b = v[base + i + half_dim];
    v[base + i] = a * c.x - b * c.y;
    v[base + i + half_dim] = b * c.x + a * c.y;
}
