/* vk_stage.h - the Vulkan stage: layers [first, last) of a model on one GPU.
 *
 * Weights are uploaded once at creation (matrices in their stored dtype,
 * vectors widened to f32); activations, scratch and the KV cache
 * [n_seq_max, n_ctx, kv_dim] per layer live in device memory sized once.
 * A forward step records one command buffer for the batch (up to
 * n_batch_max tokens per submit; larger batches go in several) in which only
 * the hidden states cross the bus. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "model/model.h"
#include "model/stage.h"
#include "vk_device.h"

struct vk_stage_opts {
    int device;          /* index in vk_device_list() order (config `device = N`) */
    int n_batch_max;     /* tokens per submit; 0: 512 */
    bool no_subgroup;    /* force the portable shader path */
    uint64_t max_range;  /* 0: device limit; tests use less to split weights */
};

/* Creates a stage over layers [first, last) of m, which must bind them (F32,
 * F16, BF16 or MLX 4/8-bit weights). The model must outlive the stage only until this
 * returns: every weight is copied to the device. */
int vk_stage_create(const struct model *m, int first, int last, int n_seq_max, int n_ctx,
                    const struct vk_stage_opts *opts, struct stage **ret, ifd_error *err);

