/* reduce.glsl - work-group sums of NR floats per invocation.
 *
 * With USE_SUBGROUP: subgroupAdd inside each subgroup, then one shared-memory
 * pass over the subgroup partials. Without: a shared-memory tree. NR must be
 * defined by the includer (values reduced at once). Every invocation of the
 * work group must call it (it has barriers); each gets the totals. */
#ifndef NR
#error "define NR before including reduce.glsl"
#endif

shared float red_buf[NR * WG];

void reduce_sum(inout float v[NR])
{
#ifdef USE_SUBGROUP
    [[unroll]] for (uint i = 0; i < NR; i++)
        v[i] = subgroupAdd(v[i]);
    if (subgroupElect()) {
        [[unroll]] for (uint i = 0; i < NR; i++)
            red_buf[i * WG + gl_SubgroupID] = v[i];
    }
    barrier();
    [[unroll]] for (uint i = 0; i < NR; i++) {
        float s = 0.0;
        for (uint j = 0; j < gl_NumSubgroups; j++)
            s += red_buf[i * WG + j];
        v[i] = s;
    }
    barrier();
#else
    uint tid = gl_LocalInvocationID.x;
    [[unroll]] for (uint i = 0; i < NR; i++)
        red_buf[i * WG + tid] = v[i];
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (tid < s) {
            [[unroll]] for (uint i = 0; i < NR; i++)
                red_buf[i * WG + tid] += red_buf[i * WG + tid + s];
        }
        barrier();
    }
    [[unroll]] for (uint i = 0; i < NR; i++)
        v[i] = red_buf[i * WG];
    barrier();
#endif
}
