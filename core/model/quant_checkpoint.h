/* quant_checkpoint.h - the offline quantizer: reads a float (F32/F16/BF16)
 * Hugging Face checkpoint and writes an MLX-format affine-quantized one that
 * MLX, mlx_lm and inferd load.
 *
 * Output: every 2-D "<module>.weight" whose row length is a multiple of the
 * group size becomes <module>.weight (U32 codes, low bits first),
 * <module>.scales and <module>.biases (in the source tensor's float dtype, as
 * MLX keeps them); other tensors are copied unchanged. A tied embedding is
 * stored once, as model.embed_tokens.*, quantized. config.json gains
 * "quantization" and "quantization_config" = {"group_size", "bits"}; tokenizer
 * and generation files are copied. A sharded source gives the same number of
 * shards (same file names) and an index. Streaming: memory is bounded by one
 * quantized tensor plus one f32 row, whatever the checkpoint size. */
#pragma once

#include <stdint.h>

#include "base/error.h"

/* Called after each tensor: bytes of source data done out of the total, and
 * the tensor's name. May be NULL. */
typedef void (*quant_progress_fn)(void *ctx, uint64_t done, uint64_t total, const char *tensor);

/* Quantizes the checkpoint in src_dir into dst_dir (created if missing; it
 * must not be src_dir). bits and group_size as quant_layout_supported()
 * accepts; group_size 0 means 64. Returns 0 or a negative errno with a message
 * naming the file or tensor at fault; the source is checked before dst_dir is
 * made, and a dst_dir made by a call that fails is removed again. */
int quant_checkpoint_write(const char *src_dir, const char *dst_dir, int bits, int group_size,
                           quant_progress_fn progress, void *progress_ctx, ifd_error *err);
