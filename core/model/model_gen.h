/* model_gen.h - random-weight checkpoints with the exact shapes of real models.
 *
 * For speed measurements we need full-size models (Qwen2.5-0.5B, SmolLM2-135M,
 * ...) without downloading weights. The generator writes a Hugging Face
 * directory: config.json, model.safetensors (streamed through st_writer, so
 * memory stays bounded by one chunk whatever the model size) and, on request,
 * the tokenizer files of another checkpoint. Weights are deterministic in the
 * seed: ~N(0, 0.02) for matrices and biases, 1.0 for norms. The text such a
 * model writes is gibberish; its cost per token is that of the real model. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define MODEL_GEN_MAX_SHARDS 999

#include "model/dtype.h"
#include "base/error.h"
#include "model/model_config.h"

struct model_gen_options {
    const char *preset;         /* a name from model_gen_preset_name() */
    enum ifd_dtype dtype;       /* IFD_DTYPE_F32, F16 or BF16 */
    uint64_t seed;
    int n_layers;               /* 0 = the preset's layer count; else use this many */
    int n_shards;               /* 0 or 1: model.safetensors; N > 1: model-0000k-of-0000N.safetensors
                                 * (tensors in order, split by bytes) + model.safetensors.index.json */
    const char *tokenizer_from; /* NULL, or a checkpoint directory whose tokenizer.json,
                                 * tokenizer_config.json (and special_tokens_map.json,
                                 * generation_config.json if present) are copied */
};

/* The i-th preset name ("qwen2.5-0.5b", "smollm2-135m", "tiny-llama", ...),
 * NULL past the end. */
const char *model_gen_preset_name(size_t i);

/* Fills *ret with a preset's configuration (no allocation: finishing it is
 * optional). -ENOENT with a message listing the presets if unknown. */
int model_gen_preset_config(const char *name, struct model_config *ret, ifd_error *err);

/* The config.json text for cfg (Hugging Face field names, torch_dtype from
 * dtype). Returns a malloc'd string or NULL on allocation failure. */
char *model_gen_config_json(const struct model_config *cfg, enum ifd_dtype dtype);

/* Writes the checkpoint into out_dir (created if absent; existing files of
 * the same names are replaced, the weights atomically by rename; the other
 * layout's weight files, single or sharded, are removed). If ret_bytes is
 * non-NULL it receives the bytes of the safetensors file(s). The values of a
 * tensor depend on the seed and its name only, so sharded and single-file
 * checkpoints of the same seed hold the same weights. */
int model_gen_write(const char *out_dir, const struct model_gen_options *opt, uint64_t *ret_bytes,
                    ifd_error *err);
