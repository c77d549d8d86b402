#version 450
#extension GL_GOOGLE_include_directive : require
/* kv_store.comp - copies k, v [n_tokens, kv_dim] into the layer's cache
 * [n_seq, n_ctx, kv_dim] at (seq_ids[t], positions[t]).
 * Mirror struct: vk_push_kv_store (vk_pipeline.h). */
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer Kbuf { float k[]; };
layout(std430, set = 0, binding = 1) readonly buffer Vbuf { float v[]; };
layout(std430, set = 0, binding = 2) writeonly buffer KCbuf { float kc[]; };
layout(std430, set = 0, binding = 3) writeonly buffer VCbuf { float vc[]; };
layout(std430, set = 0, binding = 4) readonly buffer Pbuf { int positions[]; };
layout(std430, set = 0, binding = 5) readonly buffer Sbuf { int seq_ids[]; };

layout(push_constant) uniform Push {
    uint n_tokens;
    uint kv_dim;
    uint n_ctx;
} pc;

void main()
{
    uint gid = flat_invocation();
    if (gid >= pc.n_tokens * pc.kv_dim)
        return;
    uint t = gid / pc.kv_dim;
    uint d = gid - t * pc.kv_dim;
    uint slot = uint(seq_ids[t]) * pc.n_ctx + uint(positions[t]);
    kc[slot * pc.kv_dim + d] = k[gid];
    vc[slot * pc.kv_dim + d] = v[gid];
}
