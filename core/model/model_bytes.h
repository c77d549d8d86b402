/* model_bytes.h - what a model costs in memory, counted from the checkpoint's
 * headers and the config alone (no weight is read): the bytes of stored
 * tensors by name, and the KV cache the stages keep per position.
 *
 * One place for this arithmetic, so that the master sizing `layers = auto`
 * (daemon/cluster.c) and `inferctl model info` count the same bytes. */
#pragma once

#include <stdint.h>

#include "model/dtype.h"
#include "model/model_config.h"
#include "model/safetensors.h"

/* The dtype of every KV cache value: the cpu stage (cpu_stage.c) and the
 * Vulkan stage (vk_stage.c) both keep K and V as f32. */
#define MODEL_KV_DTYPE IFD_DTYPE_F32

/* Sum of the stored sizes of the tensors whose name starts with `prefix`
 * ("model.embed_tokens.", "lm_head."), as stored: MLX packed words with their
 * scales and biases, floats in their own dtype. An alias is not a stored
 * tensor and adds nothing. */
uint64_t model_bytes_with_prefix(const st_model *st, const char *prefix);

/* The stored bytes of layer `layer` (every "model.layers.<layer>." tensor):
 * what a node holding that layer maps, and reads once per decode step. */
uint64_t model_bytes_layer(const st_model *st, int layer);

/* Bytes of KV cache one position takes in one layer: K and V, n_kv_heads *
 * head_dim values each, of MODEL_KV_DTYPE. */
uint64_t model_bytes_kv_position(const struct model_config *cfg);
