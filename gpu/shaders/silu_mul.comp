#version 450
#extension GL_GOOGLE_include_directive : require
/* silu_mul.comp - gate[i] = silu(gate[i]) * up[i], the gated MLP activation,
 * in place over n elements. Mirror struct: vk_push_silu_mul (vk_pipeline.h). */
#include "common.glsl"

layout(std430, set = 0, binding = 0) buffer Gbuf { float g[]; };
layout(std430, set = 0, binding = 1) readonly buffer Ubuf { float u[]; };

layout(push_constant) uniform Push {
    uint n;
} pc;

void main()
{
    uint i = flat_invocation();
    if (i >= pc.n)
        return;
    float a = g[i];
    g[i] = a / (1.0 + exp(-a)) * u[i];
}
