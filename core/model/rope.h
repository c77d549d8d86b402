/* rope.h - the rotary position embedding's frequencies, shared by every
 * stage implementation (CPU, Vulkan) so that they rotate by the same angles. */
#pragma once

#include "model/model_config.h"

/* Fills ret [cfg->head_dim / 2] with the inverse frequencies of HF's RoPE,
 * theta^(-2i / head_dim), with the llama3 rescaling of
 * _compute_llama3_parameters when cfg->rope_scaling says so. Computed in
 * double as the reference does; a token at position p rotates pair i by
 * p * ret[i]. */
void rope_inv_freq(const struct model_config *cfg, double *ret);
