/* common.glsl - included by every compute shader.
 *
 * Every pipeline shares one descriptor-set layout: VK_MAX_BINDINGS storage
 * buffers at set 0 (unused ones bound to a dummy buffer) and one 128-byte
 * push-constant range, so that the host creates a single pipeline layout.
 * Work-group size is WG (64): small enough for every device, a multiple of
 * every subgroup size in use (4..64). */
#extension GL_EXT_control_flow_attributes : enable
#ifdef USE_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_arithmetic : enable
#endif

#define WG 64u
layout(local_size_x = 64, local_size_y = 1, local_size_z = 1) in;

/* Flat index of this invocation over a 2-D grid of work groups: element-wise
 * ops fold large counts into y so that no dimension passes the 65535 groups
 * every device supports. */
uint flat_invocation(void)
{
    return gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * WG;
}
