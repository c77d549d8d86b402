/* model.h - a loaded model: its config and its weights bound by role.
 *
 * Weights point into the read-only safetensors mapping, in their stored dtype
 * (F32, F16, BF16, or MLX-packed U32). Nothing is widened at load. A model may
 * bind only part of the network: a worker binds just its layer range, a master
 * with workers binds the embedding, the final norm, the head and its own
 * layers. Unbound weights have data == NULL. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "model/dtype.h"
#include "base/error.h"
#include "model/model_config.h"
#include "model/safetensors.h"

/* One matrix [rows, cols] (y = W x with x of length cols) or vector [cols]
 * (rows == 1), as stored. */
struct ifd_weight {
    enum ifd_dtype dtype;     /* F32, F16, BF16; U32 when quantized */
    const void *data;         /* NULL when not bound / absent */
    int64_t rows, cols;       /* logical (unpacked) shape */
    /* MLX affine quantization (dtype == U32): data is [rows, cols * bits / 32]
     * words, low bits first; w = scale * q + bias per group of group_size. */
    int bits;                 /* 0 when not quantized */
    int group_size;
    enum ifd_dtype qparam_dtype;   /* dtype of scales and biases */
    const void *scales;       /* [rows, cols / group_size] */
    const void *biases;       /* [rows, cols / group_size] */
    /* Quantized only: data holds the rows in quant_panel.c's panels of 8,
     * with their scales and biases (scales and biases are then NULL). The
     * checkpoint's layout when false. */
    bool panels;
};

struct layer_weights {
    struct ifd_weight attn_norm;   /* [hidden] input_layernorm */
    struct ifd_weight wq;          /* [n_heads * head_dim, hidden] */
    struct ifd_weight wk;          /* [n_kv_heads * head_dim, hidden] */
    struct ifd_weight wv;          /* [n_kv_heads * head_dim, hidden] */
    struct ifd_weight wo;          /* [hidden, n_heads * head_dim] */
    struct ifd_weight bq, bk, bv;  /* Qwen2 only: [n_heads*head_dim], [n_kv*head_dim] x2 */
    struct ifd_weight q_norm;      /* Qwen3 only: [head_dim] */
    struct ifd_weight k_norm;      /* Qwen3 only: [head_dim] */
    struct ifd_weight mlp_norm;    /* [hidden] post_attention_layernorm */
    struct ifd_weight w_gate;      /* [ffn, hidden] */
    struct ifd_weight w_up;        /* [ffn, hidden] */
    struct ifd_weight w_down;      /* [hidden, ffn] */
};

/* What to bind. */
struct model_load_opts {
    int layer_first, layer_last;   /* [first, last) to bind; last = -1: to the end */
    bool bind_embed;               /* embedding (needed by the node that embeds) */
    bool bind_head;                /* final norm + lm_head (the node that computes logits) */
    int quantize_bits;             /* 0, or 4 / 8: quantize float weights on load */
    int quantize_group_size;       /* default 64 */
    /* Weights quantized on load are stored in quant_panel.c's panels, the
     * layout the CPU kernels read fastest, where the SIMD level has them
     * (quant_panels_wanted()). Only for a model whose layers and head run
     * on the CPU: the Vulkan stage reads the checkpoint's layout. */
    bool quantize_into_panels;
};

/* Sensible default: every layer, embedding and head, no quantization (and
 * weights quantized on load in the checkpoint's layout). */
struct model_load_opts model_load_opts_default(void);

struct model {
    struct model_config cfg;
    st_model *st;                  /* owns the mappings */
    struct ifd_weight embed;       /* [vocab, hidden] */
    struct ifd_weight final_norm;  /* [hidden] */
    struct ifd_weight lm_head;     /* [vocab, hidden]; equals embed when tied */
    struct layer_weights *layers;  /* [cfg.n_layers]; only [layer_first, layer_last) bound */
    int layer_first, layer_last;
    void *owned;                   /* buffers created at load (quantize on load), freed with the model */
};

/* Loads DIR/config.json and the checkpoint in DIR and binds the weights the
 * options ask for, checking every shape against the config. */
int model_load(const char *dir, const struct model_load_opts *opts, struct model **ret, ifd_error *err);

/* Binds weights from an already opened checkpoint and a parsed config (a
 * worker's received subset). Takes ownership of st and cfg on success. */
int model_bind(st_model *st, struct model_config *cfg, const struct model_load_opts *opts,
               struct model **ret, ifd_error *err);

void model_destroy(struct model *m); /* accepts NULL */

/* The weight the CPU kernels read fastest at the SIMD level in use: a copy
 * of w in quant_panel.c's panels (quantized weights at every vector level),
 * or as it is on huge pages (float matrices of 2 MiB and more), whose
 * buffer *ret_owned the caller frees; the pages of m's checkpoint that held
 * w are then given back (st_release_pages()). A copy is made only of a
 * weight in one of the checkpoint's mappings: a file's, or the image of a
 * worker's received weights (st_open_image()); not of one quantized on
 * load, which would then be held twice. Else w itself and *ret_owned NULL.
 * After a copy, w's bytes in a file's mapping stay readable (tied
 * embeddings read them again); in a worker's image they fault. 0 or
 * -ENOMEM. */
int model_weight_for_cpu(const struct model *m, const struct ifd_weight *w, struct ifd_weight *ret, void **ret_owned,
                         ifd_error *err);

/* Canonical checkpoint names of every tensor layers [first, last) use
 * (including .scales/.biases of quantized ones), plus the embedding and/or head
 * tensors when asked: the list handed to st_write_subset() for a worker.
 * *ret_names is a NULL-terminated array; free with model_tensor_names_free(). */
int model_tensor_names(const struct model *m, int first, int last, bool embed, bool head,
                       char ***ret_names, size_t *ret_n, ifd_error *err);
void model_tensor_names_free(char **names);
