/* test_model_bytes.c - the byte accounting that `layers = auto` and
 * `inferctl model info` share (core/model/model_bytes.h).
 *
 * A hand-written header pins the exact sums (and that layer 1 is not layer 10);
 * the shared checkpoints check that every stored byte lands in exactly one part
 * (layers, embedding, final norm, head) and the KV size per position. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/test_util.h"
#include "model/model_bytes.h"

/* A safetensors image in memory: 8-byte little-endian header length, header,
 * then data_len zero bytes. Freed by the caller after st_close. */
static uint8_t *image(const char *hdr, size_t data_len, size_t *ret_len)
{
    size_t hlen = strlen(hdr), len = 8 + hlen + data_len;
    uint8_t *buf = calloc(1, len);
    cr_assert(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, hdr, hlen);
    *ret_len = len;
    return buf;
}

Test(model_bytes, sums_by_name_prefix)
{
    /* layers.1: 60 + 16 bytes; layers.10: 14; lm_head 32; an alias adds nothing. */
    const char *hdr = "{\"__metadata__\": {\"model.embed_tokens.weight\": \"lm_head.weight\"},"
                      " \"model.layers.1.a\": {\"dtype\": \"F32\", \"shape\": [3, 5], \"data_offsets\": [0, 60]},"
                      " \"model.layers.1.b\": {\"dtype\": \"U32\", \"shape\": [2, 2], \"data_offsets\": [60, 76]},"
                      " \"lm_head.weight\": {\"dtype\": \"F16\", \"shape\": [4, 4], \"data_offsets\": [76, 108]},"
                      " \"model.layers.10.a\": {\"dtype\": \"BF16\", \"shape\": [7], \"data_offsets\": [108, 122]}}";
    size_t len;
    uint8_t *buf = image(hdr, 122, &len);
    st_model *st = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(st_open_memory(buf, len, "test image", &st, &err), 0, "%s", err.msg);
    cr_assert_eq(model_bytes_layer(st, 1), 76);
    cr_assert_eq(model_bytes_layer(st, 10), 14);
    cr_assert_eq(model_bytes_layer(st, 0), 0);
    cr_assert_eq(model_bytes_layer(st, 2), 0);
    cr_assert_eq(model_bytes_with_prefix(st, "lm_head."), 32);
    cr_assert_eq(model_bytes_with_prefix(st, "model.embed_tokens."), 0, "an alias is not stored");
    cr_assert_eq(model_bytes_with_prefix(st, ""), 122);
    st_close(st);
    free(buf);
}

static void load(const char *model, struct model_config *cfg, st_model **st)
{
    char *dir = tu_must_shared_path("models/%s", model);
    ifd_error err = {{0}};
    cr_assert_eq(model_config_load(dir, cfg, &err), 0, "%s", err.msg);
    cr_assert_eq(st_open(dir, st, &err), 0, "%s", err.msg);
    free(dir);
}

/* Every stored byte is in one layer, the embedding, the final norm or the
 * head, and layers of one model weigh the same. */
static void check_parts(const char *model)
{
    struct model_config cfg = {0};
    st_model *st = NULL;
    load(model, &cfg, &st);
    uint64_t parts = model_bytes_with_prefix(st, "model.embed_tokens.") + model_bytes_with_prefix(st, "model.norm.") +
                     model_bytes_with_prefix(st, "lm_head.");
    for (int l = 0; l < cfg.n_layers; l++) {
        cr_assert(model_bytes_layer(st, l) > 0, "%s: layer %d", model, l);
        cr_assert_eq(model_bytes_layer(st, l), model_bytes_layer(st, 0), "%s: layer %d", model, l);
        parts += model_bytes_layer(st, l);
    }
    cr_assert_eq(model_bytes_layer(st, cfg.n_layers), 0, "%s: no layer past the last", model);
    cr_assert_eq(parts, model_bytes_with_prefix(st, ""), "%s", model);
    st_close(st);
    model_config_finish(&cfg);
}

Test(model_bytes, shared_models_add_up)
{
    check_parts("tinystories-656k");
    check_parts("tinystories-656k-mlx-4bit");
    check_parts("tinystories-656k-bf16-sharded");
    check_parts("qwen2-tiny-random");
}

Test(model_bytes, tinystories_exact)
{
    struct model_config cfg = {0};
    st_model *st = NULL;
    load("tinystories-656k", &cfg, &st);
    /* F32: norms 2 x 128, q and o 128x128, k and v 64x128, MLP 3 x 384x128. */
    const uint64_t layer = 4ull * (2 * 128 + 2 * 128 * 128 + 2 * 64 * 128 + 3 * 384 * 128);
    cr_assert_eq(model_bytes_layer(st, 0), layer);
    cr_assert_eq(model_bytes_with_prefix(st, "lm_head."), 4ull * 2048 * 128);
    /* K and V, 4 KV heads x 16 dims, f32. */
    cr_assert_eq(model_bytes_kv_position(&cfg), 2ull * 4 * 16 * 4);
    st_close(st);
    model_config_finish(&cfg);
}

Test(model_bytes, kv_follows_kv_heads_and_head_dim)
{
    struct model_config cfg = {0};
    st_model *st = NULL;
    load("qwen2-tiny-random", &cfg, &st);
    cr_assert_eq(model_bytes_kv_position(&cfg), 2ull * 2 * 16 * ifd_dtype_size(MODEL_KV_DTYPE));
    cr_assert_eq(ifd_dtype_size(MODEL_KV_DTYPE), sizeof(float), "the stages keep f32 K and V");
    st_close(st);
    model_config_finish(&cfg);
}
