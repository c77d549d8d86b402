#version 450
#extension GL_GOOGLE_include_directive : require
/* attention.comp - causal GQA attention of each token over its sequence's KV cache.
 *
 * One work group per (head h, token t). Keys 0..positions[t] of sequence
 * seq_ids[t] are visited in tiles of WG: each invocation scores one key into
 * shared memory, then the tile is folded into a running (max, sum, output)
 * as in online softmax, so any context length fits in fixed shared memory.
 * Query head h reads kv head h / (n_heads / n_kv_heads). Each invocation owns
 * output dims tid, tid + WG, ... (head_dim <= WG * ATT_DPT).
 * Mirror struct: vk_push_attention (vk_pipeline.h). */
#include "common.glsl"

#define ATT_DPT 4u  /* output dims per invocation: head_dim up to 256 */

layout(std430, set = 0, binding = 0) readonly buffer Qbuf { float q[]; };
layout(std430, set = 0, binding = 1) readonly buffer KCbuf { float kc[]; };
layout(std430, set = 0, binding = 2) readonly buffer VCbuf { float vc[]; };
layout(std430, set = 0, binding = 3) writeonly buffer Obuf { float o[]; };
layout(std430, set = 0, binding = 4) readonly buffer Pbuf { int positions[]; };
layout(std430, set = 0, binding = 5) readonly buffer Sbuf { int seq_ids[]; };

layout(push_constant) uniform Push {
    uint n_heads;
    uint n_kv_heads;
    uint head_dim;
    uint n_ctx;
    float scale;     /* 1 / sqrt(head_dim) */
} pc;

shared float q_sh[WG * ATT_DPT];
shared float p_sh[WG];

void main()
{
    uint h = gl_WorkGroupID.x;
    uint t = gl_WorkGroupID.y;
    uint tid = gl_LocalInvocationID.x;
    uint hd = pc.head_dim;
    uint kv_dim = pc.n_kv_heads * hd;
    uint kvh = h / (pc.n_heads / pc.n_kv_heads);
    uint n_keys = uint(positions[t]) + 1u;
    uint cache0 = uint(seq_ids[t]) * pc.n_ctx * kv_dim + kvh * hd;
    uint qbase = (t * pc.n_heads + h) * hd;

    for (uint d = tid; d < hd; d += WG)
        q_sh[d] = q[qbase + d];
    barrier();

    float m = -1.0 / 0.0;
    float l = 0.0;
    float acc[ATT_DPT];
    [[unroll]] for (uint i = 0; i < ATT_DPT; i++)
        acc[i] = 0.0;

    for (uint j0 = 0; j0 < n_keys; j0 += WG) {
        uint j = j0 + tid;
        float s = -1.0 / 0.0;
        if (j < n_keys) {
            uint kb = cache0 + j * kv_dim;
            s = 0.0;
            for (uint d = 0; d < hd; d++)
                s += q_sh[d] * kc[kb + d];
            s *= pc.scale;
        }
        p_sh[tid] = s;
        barrier();
        uint nt = min(WG, n_keys - j0);
        float tmax = m;
        for (uint i = 0; i < nt; i++)
            tmax = max(tmax, p_sh[i]);
        float corr = exp(m - tmax); /* m = -inf on the first tile: 0 */
        barrier();
        p_sh[tid] = tid < nt ? exp(s - tmax) : 0.0;
        barrier();
        float tsum = 0.0;
        for (uint i = 0; i < nt; i++)
            tsum += p_sh[i];
        l = l * corr + tsum;
        [[unroll]] for (uint a = 0; a < ATT_DPT; a++) {
            uint d = tid + a * WG;
            if (d < hd) {
                float sacc = 0.0;
                for (uint i = 0; i < nt; i++)
                    sacc += p_sh[i] * vc[cache0 + (j0 + i) * kv_dim + d];
                acc[a] = acc[a] * corr + sacc;
            }
        }
        m = tmax;
        barrier();
    }
    [[unroll]] for (uint a = 0; a < ATT_DPT; a++) {
        uint d = tid + a * WG;
        if (d < hd)
            o[qbase + d] = acc[a] / l;
    }
}
