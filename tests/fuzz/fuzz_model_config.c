/* fuzz_model_config.c - model_config_parse() on arbitrary bytes.
 *
 * A refused config must carry a message and leave nothing allocated; an
 * accepted one must satisfy the invariants the loaders rely on (positive
 * sizes, heads dividing evenly, bounded EOS and override lists). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "model/model_config.h"

static void check_config(const struct model_config *c)
{
    if (c->hidden_size <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->head_dim <= 0 || c->vocab_size <= 0 || c->intermediate_size <= 0)
        abort();
    if (c->n_heads % c->n_kv_heads != 0)
        abort();
    if (c->n_eos_token_ids < 0 || c->n_eos_token_ids > MODEL_MAX_EOS_IDS)
        abort();
    if (c->n_quant_overrides < 0 || c->n_quant_overrides > MODEL_MAX_QUANT_OVERRIDES)
        abort();
    if (memchr(c->arch_name, 0, sizeof(c->arch_name)) == NULL)
        abort();
    for (int i = 0; i < c->n_quant_overrides; i++) {
        const char *p = c->quant_overrides[i].module_path;
        struct model_quant q = model_config_quant_for(c, p);
        fuzz_use((uint64_t)q.bits + strlen(p));
    }
    for (int i = 0; i < c->n_eos_token_ids; i++)
        if (!model_config_is_eos(c, c->eos_token_ids[i]))
            abort();
    fuzz_use((uint64_t)model_config_quant_for(c, "model.layers.0.self_attn.q_proj").bits);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct model_config cfg;
    ifd_error err = {{0}};
    memset(&cfg, 0, sizeof(cfg));
    int r = model_config_parse((const char *)data, size, "fuzz", &cfg, &err);
    if (r < 0) {
        if (!err.msg[0])
            abort();
        return 0;
    }
    check_config(&cfg);
    model_config_finish(&cfg);
    return 0;
}

void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    static const char *const models[] = {
        "llama3-tiny-random", "qwen2-tiny-random", "qwen3-tiny-random", "tinystories-656k",
        "tinystories-656k-mlx-4bit", "tinystories-656k-mlx-8bit",
    };
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++) {
        char rel[128], name[128];
        snprintf(rel, sizeof(rel), "models/%s/config.json", models[i]);
        snprintf(name, sizeof(name), "shared-%s", models[i]);
        fuzz_seed_shared(add, ctx, name, rel, 1u << 20);
    }
}
