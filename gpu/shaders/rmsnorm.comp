#version 450
#extension GL_GOOGLE_include_directive : require
/* rmsnorm.comp - out[row, c] = x[row, c] / sqrt(mean(x[row, :]^2) + eps) * w[c].
 *
 * One work group per row. x and out may be the same buffer (q/k norm runs in
 * place over [n_tokens * n_heads, head_dim] rows). w is f32 [n_cols].
 * Mirror struct: vk_push_rmsnorm (vk_pipeline.h). */
#include "common.glsl"

#define NR 1u
#include "reduce.glsl"

layout(std430, set = 0, binding = 0) readonly buffer Xbuf { float x[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Obuf { float o[]; };
layout(std430, set = 0, binding = 2) readonly buffer Wbuf { float w[]; };

layout(push_constant) uniform Push {
    uint n_cols;
    float eps;
} pc;

void main()
{
    uint base = gl_WorkGroupID.x * pc.n_cols;
    uint tid = gl_LocalInvocationID.x;
    float s[1];
    s[0] = 0.0;
    for (uint c = tid; c < pc.n_cols; c += WG) {
        float v = x[base + c];
        s[0] += v * v;
    }
    reduce_sum(s);
    float scale = inversesqrt(s[0] / float(pc.n_cols) + pc.eps);
    for (uint c = tid; c < pc.n_cols; c += WG)
        o[base + c] = x[base + c] * scale * w[c];
}
