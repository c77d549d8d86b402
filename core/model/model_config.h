/* model_config.h - the parsed config.json of a Hugging Face checkpoint.
 *
 * Supported: LlamaForCausalLM (rope_scaling llama3 or none), Qwen2ForCausalLM
 * (q/k/v bias), Qwen3ForCausalLM (q_norm/k_norm, explicit head_dim), tied or
 * untied head, and MLX affine quantization ("quantization" or
 * "quantization_config"). Anything else is refused at load with a message
 * naming the architecture or option. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"

#define MODEL_MAX_EOS_IDS 8
#define MODEL_MAX_QUANT_OVERRIDES 4096 /* mlx_lm mixed recipes write one entry per linear */

enum model_arch {
    MODEL_ARCH_LLAMA = 0,
    MODEL_ARCH_QWEN2,
    MODEL_ARCH_QWEN3,
};

enum model_rope_scaling {
    MODEL_ROPE_NONE = 0,
    MODEL_ROPE_LLAMA3,
};

/* MLX affine quantization of one module: w = scale * q + bias, per group. */
struct model_quant {
    int bits;       /* 0 = not quantized; else 2, 3, 4, 6 or 8 */
    int group_size; /* elements per (scale, bias) pair along a row */
};

/* A per-module override, e.g. {"model.layers.0.mlp.down_proj": {"bits": 8, ...}}
 * or false (left unquantized). */
struct model_quant_override {
    char *module_path; /* owned; "model.embed_tokens", "lm_head", ... */
    struct model_quant quant;
};

struct model_config {
    enum model_arch arch;
    char arch_name[64];       /* as written in "architectures" */

    int hidden_size;          /* d_model */
    int intermediate_size;    /* MLP inner width */
    int n_layers;             /* num_hidden_layers */
    int n_heads;              /* num_attention_heads */
    int n_kv_heads;           /* num_key_value_heads (GQA), defaults to n_heads */
    int head_dim;             /* explicit head_dim, else hidden_size / n_heads */
    int vocab_size;
    int max_position_embeddings;

    float rms_norm_eps;
    float rope_theta;
    enum model_rope_scaling rope_scaling;
    float rope_factor;            /* llama3: factor */
    float rope_low_freq_factor;   /* llama3 */
    float rope_high_freq_factor;  /* llama3 */
    int rope_original_max_pos;    /* llama3: original_max_position_embeddings */

    bool tie_word_embeddings;
    bool attention_bias;      /* q/k/v projections carry a bias (Qwen2) */
    bool qk_norm;             /* per-head RMSNorm on q and k before RoPE (Qwen3) */

    int bos_token_id;         /* -1 if absent */
    int eos_token_ids[MODEL_MAX_EOS_IDS];
    int n_eos_token_ids;

    struct model_quant quant; /* the default for every quantizable linear; bits 0 = none */
    struct model_quant_override *quant_overrides; /* owned, n_quant_overrides entries */
    int n_quant_overrides;
};

/* Parses a config.json held in memory. `origin` names it in error messages.
 * Fills *ret on success; free with model_config_finish(). */
int model_config_parse(const char *json, size_t len, const char *origin,
                       struct model_config *ret, ifd_error *err);

/* Reads DIR/config.json and parses it. */
int model_config_load(const char *dir, struct model_config *ret, ifd_error *err);

/* Frees what model_config_parse allocated. Accepts a zeroed struct. */
void model_config_finish(struct model_config *cfg);

/* The quantization that applies to the module at `module_path` (for example
 * "model.layers.3.self_attn.q_proj"): an override if one names it, else the
 * default. */
struct model_quant model_config_quant_for(const struct model_config *cfg, const char *module_path);

/* True if token id is one of the end-of-sequence ids. */
bool model_config_is_eos(const struct model_config *cfg, int token_id);
