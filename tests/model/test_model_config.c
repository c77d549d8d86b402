/* test_model_config.c - config.json parsing: every shared model, the
 * supported options, and refusals that name what is unsupported. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/test_util.h"
#include "model/model_config.h"

static void load_shared(const char *model, struct model_config *cfg)
{
    char *dir = tu_must_shared_path("models/%s", model);
    ifd_error err = {{0}};
    int r = model_config_load(dir, cfg, &err);
    cr_assert(r == 0, "model_config_load(%s) = %d: %s", dir, r, err.msg);
    free(dir);
}

Test(model_config, tinystories_variants)
{
    static const char *const models[] = {"tinystories-656k", "tinystories-656k-f16", "tinystories-656k-bf16",
                                         "tinystories-656k-bf16-sharded", "tinystories-656k-mlx-8bit",
                                         "tinystories-656k-mlx-4bit"};
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++) {
        struct model_config c;
        load_shared(models[i], &c);
        cr_assert_eq(c.arch, MODEL_ARCH_LLAMA, "%s", models[i]);
        cr_assert_str_eq(c.arch_name, "LlamaForCausalLM");
        cr_assert_eq(c.hidden_size, 128);
        cr_assert_eq(c.intermediate_size, 384);
        cr_assert_eq(c.n_layers, 2);
        cr_assert_eq(c.n_heads, 8);
        cr_assert_eq(c.n_kv_heads, 4);
        cr_assert_eq(c.head_dim, 16);
        cr_assert_eq(c.vocab_size, 2048);
        cr_assert_eq(c.max_position_embeddings, 512);
        cr_assert_float_eq(c.rms_norm_eps, 1e-6f, 1e-12);
        cr_assert_float_eq(c.rope_theta, 10000.0f, 0);
        cr_assert_eq(c.rope_scaling, MODEL_ROPE_NONE);
        cr_assert(c.tie_word_embeddings);
        cr_assert(!c.attention_bias);
        cr_assert(!c.qk_norm);
        cr_assert_eq(c.bos_token_id, 1);
        cr_assert_eq(c.n_eos_token_ids, 1);
        cr_assert(model_config_is_eos(&c, 2));
        cr_assert(!model_config_is_eos(&c, 1));
        if (strstr(models[i], "mlx-8bit")) {
            cr_assert_eq(c.quant.bits, 8);
            cr_assert_eq(c.quant.group_size, 32);
        } else if (strstr(models[i], "mlx-4bit")) {
            cr_assert_eq(c.quant.bits, 4);
            cr_assert_eq(c.quant.group_size, 64);
            struct model_quant q = model_config_quant_for(&c, "model.layers.1.mlp.up_proj");
            cr_assert_eq(q.bits, 4);
        } else {
            cr_assert_eq(c.quant.bits, 0);
        }
        cr_assert_eq(c.n_quant_overrides, 0);
        model_config_finish(&c);
    }
}

Test(model_config, qwen2_tiny)
{
    struct model_config c;
    load_shared("qwen2-tiny-random", &c);
    cr_assert_eq(c.arch, MODEL_ARCH_QWEN2);
    cr_assert_eq(c.hidden_size, 64);
    cr_assert_eq(c.head_dim, 16);
    cr_assert_eq(c.vocab_size, 151680);
    cr_assert(c.attention_bias);
    cr_assert(!c.qk_norm);
    cr_assert(!c.tie_word_embeddings);
    cr_assert_float_eq(c.rope_theta, 1e6f, 0);
    cr_assert_eq(c.bos_token_id, -1);
    cr_assert(model_config_is_eos(&c, 151645));
    model_config_finish(&c);
}

Test(model_config, qwen3_tiny)
{
    struct model_config c;
    load_shared("qwen3-tiny-random", &c);
    cr_assert_eq(c.arch, MODEL_ARCH_QWEN3);
    cr_assert_eq(c.head_dim, 32, "explicit head_dim differs from hidden/heads = 16");
    cr_assert(c.qk_norm);
    cr_assert(!c.attention_bias);
    cr_assert(c.tie_word_embeddings);
    model_config_finish(&c);
}

Test(model_config, llama3_tiny_rope_scaling)
{
    struct model_config c;
    load_shared("llama3-tiny-random", &c);
    cr_assert_eq(c.arch, MODEL_ARCH_LLAMA);
    cr_assert_eq(c.rope_scaling, MODEL_ROPE_LLAMA3);
    cr_assert_float_eq(c.rope_factor, 32.0f, 0);
    cr_assert_float_eq(c.rope_low_freq_factor, 1.0f, 0);
    cr_assert_float_eq(c.rope_high_freq_factor, 4.0f, 0);
    cr_assert_eq(c.rope_original_max_pos, 8192);
    cr_assert_float_eq(c.rope_theta, 500000.0f, 0);
    cr_assert_eq(c.vocab_size, 128256);
    cr_assert_eq(c.bos_token_id, 128000);
    cr_assert(model_config_is_eos(&c, 128001));
    model_config_finish(&c);
}

/* A minimal valid Llama config with the members in `extra` placed first:
 * cJSON finds the first of duplicate keys, so they override the base ones. */
static int parse_with(const char *extra, struct model_config *c, ifd_error *err)
{
    char json[4096];
    snprintf(json, sizeof(json),
             "{%s%s\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
             "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
             "\"num_key_value_heads\": 2, \"vocab_size\": 1000}",
             extra, *extra ? ", " : "");
    memset(c, 0x5a, sizeof(*c));
    return model_config_parse(json, strlen(json), "test.json", c, err);
}

static void expect_error(const char *extra, int code, const char *phrase)
{
    struct model_config c;
    ifd_error err = {{0}};
    int r = parse_with(extra, &c, &err);
    cr_assert_eq(r, code, "%s: expected %d, got %d: %s", extra, code, r, err.msg);
    cr_assert(strstr(err.msg, "test.json"), "message does not name the file: %s", err.msg);
    cr_assert(strstr(err.msg, phrase), "message lacks '%s': %s", phrase, err.msg);
}

Test(model_config, defaults)
{
    struct model_config c;
    ifd_error err = {{0}};
    cr_assert_eq(parse_with("", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.head_dim, 16);
    cr_assert_eq(c.bos_token_id, -1);
    cr_assert_eq(c.n_eos_token_ids, 0);
    cr_assert_eq(c.rope_scaling, MODEL_ROPE_NONE);
    cr_assert(!c.tie_word_embeddings);
    cr_assert_eq(c.quant.bits, 0);
    cr_assert_null(c.quant_overrides);
    model_config_finish(&c);
    model_config_finish(&c); /* idempotent */
}

Test(model_config, model_type_without_architectures)
{
    const char *json = "{\"model_type\": \"qwen2\", \"hidden_size\": 64, \"intermediate_size\": 128, "
                       "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"vocab_size\": 10}";
    struct model_config c;
    ifd_error err = {{0}};
    cr_assert_eq(model_config_parse(json, strlen(json), "x", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.arch, MODEL_ARCH_QWEN2);
    cr_assert_str_eq(c.arch_name, "Qwen2ForCausalLM");
    cr_assert(c.attention_bias, "qwen2 has q/k/v bias even when the config omits it");
    cr_assert_eq(c.n_kv_heads, 4);
    model_config_finish(&c);

    const char *bad = "{\"model_type\": \"gemma\"}";
    cr_assert_eq(model_config_parse(bad, strlen(bad), "x", &c, &err), -EOPNOTSUPP);
    cr_assert(strstr(err.msg, "'gemma'"), "%s", err.msg);
}

Test(model_config, unsupported_architecture)
{
    const char *json = "{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 64}";
    struct model_config c;
    ifd_error err = {{0}};
    cr_assert_eq(model_config_parse(json, strlen(json), "test.json", &c, &err), -EOPNOTSUPP);
    cr_assert(strstr(err.msg, "'MistralForCausalLM'") && strstr(err.msg, "test.json"), "%s", err.msg);
}

Test(model_config, unsupported_rope_and_act)
{
    expect_error("\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}", -EOPNOTSUPP, "'linear'");
    expect_error("\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}", -EOPNOTSUPP, "'yarn'");
    expect_error("\"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 4.0}", -EOPNOTSUPP, "'dynamic'");
    expect_error("\"rope_scaling\": {\"factor\": 4.0}", -EINVAL, "rope_type");
    expect_error("\"rope_scaling\": {\"rope_type\": \"llama3\"}", -EINVAL, "factor");
    expect_error("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 4, "
                 "\"high_freq_factor\": 1}",
                 -EINVAL, "high_freq_factor");
    expect_error("\"hidden_act\": \"gelu\"", -EOPNOTSUPP, "'gelu'");
    expect_error("\"attention_bias\": true", -EOPNOTSUPP, "attention_bias");
    expect_error("\"mlp_bias\": true", -EOPNOTSUPP, "mlp_bias");
    expect_error("\"use_sliding_window\": true", -EOPNOTSUPP, "use_sliding_window");

    struct model_config c;
    ifd_error err = {{0}};
    cr_assert_eq(parse_with("\"rope_scaling\": {\"rope_type\": \"default\"}, \"use_sliding_window\": false, "
                            "\"sliding_window\": 32768",
                            &c, &err),
                 0, "%s", err.msg);
    cr_assert_eq(c.rope_scaling, MODEL_ROPE_NONE);
    model_config_finish(&c);
    cr_assert_eq(parse_with("\"rope_scaling\": null, \"head_dim\": null", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.head_dim, 16);
    model_config_finish(&c);
}

Test(model_config, limits_and_types)
{
    expect_error("\"vocab_size\": 0", -EINVAL, "\"vocab_size\"");
    expect_error("\"vocab_size\": 5000000", -EINVAL, "\"vocab_size\"");
    expect_error("\"num_hidden_layers\": 2000", -EINVAL, "\"num_hidden_layers\"");
    expect_error("\"hidden_size\": 100000", -EINVAL, "\"hidden_size\"");
    expect_error("\"hidden_size\": 64.5", -EINVAL, "\"hidden_size\" is not an integer");
    expect_error("\"hidden_size\": \"64\"", -EINVAL, "\"hidden_size\"");
    expect_error("\"num_key_value_heads\": 3", -EINVAL, "num_key_value_heads 3");
    expect_error("\"num_attention_heads\": 3, \"num_key_value_heads\": 3", -EINVAL, "hidden_size 64");
    expect_error("\"head_dim\": 15", -EINVAL, "head_dim 15 is odd");
    expect_error("\"rms_norm_eps\": -1", -EINVAL, "\"rms_norm_eps\"");
    expect_error("\"rope_theta\": 0", -EINVAL, "\"rope_theta\"");
    expect_error("\"tie_word_embeddings\": 1", -EINVAL, "\"tie_word_embeddings\"");
    expect_error("\"eos_token_id\": 1000", -EINVAL, "\"eos_token_id\"");
    expect_error("\"eos_token_id\": [1, 2, 3, 4, 5, 6, 7, 8, 9]", -EINVAL, "eos_token_id");
    expect_error("\"eos_token_id\": [1, -2]", -EINVAL, "eos_token_id");
    expect_error("\"eos_token_id\": \"2\"", -EINVAL, "eos_token_id");
    expect_error("\"bos_token_id\": -5", -EINVAL, "\"bos_token_id\"");
    expect_error("\"architectures\": [\"LlamaForCausalLM\", \"X\"]", -EINVAL, "architectures");

    struct model_config c;
    ifd_error err = {{0}};
    cr_assert_eq(model_config_parse("{\"a\": ", 6, "test.json", &c, &err), -EINVAL);
    cr_assert(strstr(err.msg, "test.json") && strstr(err.msg, "JSON"), "%s", err.msg);
    cr_assert_eq(model_config_parse("[]", 2, "test.json", &c, &err), -EINVAL);
    cr_assert_eq(model_config_load("/nonexistent-dir", &c, &err), -ENOENT);
    cr_assert(strstr(err.msg, "/nonexistent-dir/config.json"), "%s", err.msg);
}

Test(model_config, eos_list)
{
    struct model_config c;
    ifd_error err = {{0}};
    cr_assert_eq(parse_with("\"eos_token_id\": [7, 9], \"bos_token_id\": 3", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.n_eos_token_ids, 2);
    cr_assert(model_config_is_eos(&c, 7) && model_config_is_eos(&c, 9) && !model_config_is_eos(&c, 3));
    cr_assert_eq(c.bos_token_id, 3);
    model_config_finish(&c);
}

Test(model_config, mlx_quantization_overrides)
{
    struct model_config c;
    ifd_error err = {{0}};
    cr_assert_eq(parse_with("\"quantization\": {\"group_size\": 64, \"bits\": 4, \"mode\": \"affine\", "
                            "\"model.layers.0.mlp.down_proj\": {\"group_size\": 32, \"bits\": 8}, "
                            "\"lm_head\": false}",
                            &c, &err),
                 0, "%s", err.msg);
    cr_assert_eq(c.quant.bits, 4);
    cr_assert_eq(c.quant.group_size, 64);
    cr_assert_eq(c.n_quant_overrides, 2);
    struct model_quant q = model_config_quant_for(&c, "model.layers.0.mlp.down_proj");
    cr_assert_eq(q.bits, 8);
    cr_assert_eq(q.group_size, 32);
    q = model_config_quant_for(&c, "lm_head");
    cr_assert_eq(q.bits, 0, "false means left unquantized");
    q = model_config_quant_for(&c, "model.layers.1.mlp.down_proj");
    cr_assert_eq(q.bits, 4);
    cr_assert_eq(q.group_size, 64);
    model_config_finish(&c);

    /* quantization_config alone is accepted too. */
    cr_assert_eq(parse_with("\"quantization_config\": {\"group_size\": 128, \"bits\": 2}", &c, &err), 0,
                 "%s", err.msg);
    cr_assert_eq(c.quant.bits, 2);
    cr_assert_eq(c.quant.group_size, 128);
    model_config_finish(&c);

    expect_error("\"quantization\": {\"group_size\": 64, \"bits\": 5}", -EOPNOTSUPP, "5 bits");
    expect_error("\"quantization\": {\"group_size\": 48, \"bits\": 4}", -EOPNOTSUPP, "group_size 48");
    expect_error("\"quantization\": {\"bits\": 4}", -EINVAL, "group_size");
    expect_error("\"quantization\": {\"group_size\": 64, \"bits\": 4, \"model.norm\": true}", -EINVAL,
                 "'model.norm'");
    expect_error("\"quantization\": {\"group_size\": 64, \"bits\": 4, \"lm_head\": {\"bits\": 3}}", -EINVAL,
                 "lm_head");
    expect_error("\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4}", -EOPNOTSUPP, "'gptq'");
    expect_error("\"quantization\": {\"group_size\": 64, \"bits\": 4, \"mode\": \"mxfp4\"}", -EOPNOTSUPP,
                 "'mxfp4'");
    expect_error("\"quantization\": 4", -EINVAL, "\"quantization\"");
}
