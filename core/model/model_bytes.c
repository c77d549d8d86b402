/* model_bytes.c - see model_bytes.h. */
#include "model/model_bytes.h"

#include <stdio.h>
#include <string.h>

uint64_t model_bytes_with_prefix(const st_model *st, const char *prefix)
{
    const size_t plen = strlen(prefix);
    uint64_t bytes = 0;
    for (size_t i = 0; i < st_count(st); i++) {
        const struct st_tensor *t = st_at(st, i);
        if (strncmp(t->name, prefix, plen) == 0)
            bytes += t->nbytes;
    }
    return bytes;
}

uint64_t model_bytes_layer(const st_model *st, int layer)
{
    char prefix[48]; /* "model.layers." + an int + "." always fits */
    snprintf(prefix, sizeof(prefix), "model.layers.%d.", layer);
    return model_bytes_with_prefix(st, prefix);
}

uint64_t model_bytes_kv_position(const struct model_config *cfg)
{
    const uint64_t kv_dim = (uint64_t)cfg->n_kv_heads * (uint64_t)cfg->head_dim;
    return 2 * kv_dim * ifd_dtype_size(MODEL_KV_DTYPE);
}
