/* test_model_gen.c - the random-weight checkpoint generator: what it writes
 * must load through the project's own reader and config parser with the
 * tensor set and shapes the architecture needs, deterministic in the seed. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/test_util.h"
#include "model/model_config.h"
#include "model/model_gen.h"
#include "model/safetensors.h"

struct gen_dir {
    char path[64];
};

static void gen(struct gen_dir *d, const char *preset, enum ifd_dtype dtype, uint64_t seed,
                const char *tokenizer_from)
{
    strcpy(d->path, "/tmp/inferd-gen-XXXXXX");
    cr_assert(mkdtemp(d->path));
    struct model_gen_options opt = {.preset = preset, .dtype = dtype, .seed = seed,
                                    .tokenizer_from = tokenizer_from};
    ifd_error err = {{0}};
    uint64_t bytes = 0;
    int r = model_gen_write(d->path, &opt, &bytes, &err);
    cr_assert_eq(r, 0, "model_gen_write(%s) = %d: %s", preset, r, err.msg);
    cr_assert(bytes > 0);
}

static const struct st_tensor *expect(const st_model *m, const char *name, enum ifd_dtype dtype, int64_t d0,
                                      int64_t d1)
{
    const struct st_tensor *t = st_find(m, name);
    cr_assert(t, "%s missing", name);
    cr_assert_eq(t->dtype, dtype, "%s dtype", name);
    cr_assert_eq(t->n_dims, d1 ? 2 : 1, "%s rank", name);
    cr_assert_eq(t->shape[0], d0, "%s shape[0] = %lld, want %lld", name, (long long)t->shape[0], (long long)d0);
    if (d1)
        cr_assert_eq(t->shape[1], d1, "%s shape[1]", name);
    return t;
}

static float value_at(const struct st_tensor *t, uint64_t i)
{
    switch (t->dtype) {
    case IFD_DTYPE_BF16:
        return ifd_bf16_to_f32(((const uint16_t *)t->data)[i]);
    case IFD_DTYPE_F16:
        return ifd_f16_to_f32(((const uint16_t *)t->data)[i]);
    default:
        return ((const float *)t->data)[i];
    }
}

static const char *layer_name(char *buf, size_t size, int layer, const char *suffix)
{
    snprintf(buf, size, "model.layers.%d.%s", layer, suffix);
    return buf;
}

/* Loads the generated checkpoint and checks every tensor the architecture
 * needs, against the parsed config.json. */
static void check_checkpoint(const char *dir, const char *preset, enum ifd_dtype dtype)
{
    struct model_config want, c;
    ifd_error err = {{0}};
    cr_assert_eq(model_gen_preset_config(preset, &want, &err), 0, "%s", err.msg);
    cr_assert_eq(model_config_load(dir, &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.arch, want.arch);
    cr_assert_eq(c.hidden_size, want.hidden_size);
    cr_assert_eq(c.intermediate_size, want.intermediate_size);
    cr_assert_eq(c.n_layers, want.n_layers);
    cr_assert_eq(c.n_heads, want.n_heads);
    cr_assert_eq(c.n_kv_heads, want.n_kv_heads);
    cr_assert_eq(c.head_dim, want.head_dim);
    cr_assert_eq(c.vocab_size, want.vocab_size);
    cr_assert_eq(c.tie_word_embeddings, want.tie_word_embeddings);
    cr_assert_eq(c.attention_bias, want.attention_bias);
    cr_assert_eq(c.qk_norm, want.qk_norm);
    cr_assert_float_eq(c.rope_theta, want.rope_theta, 0);
    cr_assert_float_eq(c.rms_norm_eps, want.rms_norm_eps, 0);
    cr_assert_eq(c.rope_scaling, want.rope_scaling);
    cr_assert_eq(c.bos_token_id, want.bos_token_id);
    cr_assert(model_config_is_eos(&c, want.eos_token_ids[0]));

    st_model *m = NULL;
    cr_assert_eq(st_open(dir, &m, &err), 0, "%s", err.msg);
    int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
    int64_t q = (int64_t)c.n_heads * c.head_dim, kv = (int64_t)c.n_kv_heads * c.head_dim;
    size_t per_layer = 9 + (c.attention_bias ? 3 : 0) + (c.qk_norm ? 2 : 0);
    cr_assert_eq(st_count(m), 2 + (c.tie_word_embeddings ? 0 : 1) + per_layer * (size_t)c.n_layers);
    expect(m, "model.embed_tokens.weight", dtype, V, H);
    expect(m, "model.norm.weight", dtype, H, 0);
    if (c.tie_word_embeddings)
        cr_assert_null(st_find(m, "lm_head.weight"));
    else
        expect(m, "lm_head.weight", dtype, V, H);
    for (int l = 0; l < c.n_layers; l++) {
        char n[128];
        const struct st_tensor *norm = expect(m, layer_name(n, sizeof(n), l, "input_layernorm.weight"), dtype, H, 0);
        for (int64_t i = 0; i < H; i++)
            cr_assert_float_eq(value_at(norm, (uint64_t)i), 1.0f, 0);
        expect(m, layer_name(n, sizeof(n), l, "post_attention_layernorm.weight"), dtype, H, 0);
        expect(m, layer_name(n, sizeof(n), l, "self_attn.q_proj.weight"), dtype, q, H);
        expect(m, layer_name(n, sizeof(n), l, "self_attn.k_proj.weight"), dtype, kv, H);
        expect(m, layer_name(n, sizeof(n), l, "self_attn.v_proj.weight"), dtype, kv, H);
        expect(m, layer_name(n, sizeof(n), l, "self_attn.o_proj.weight"), dtype, H, q);
        expect(m, layer_name(n, sizeof(n), l, "mlp.gate_proj.weight"), dtype, I, H);
        expect(m, layer_name(n, sizeof(n), l, "mlp.up_proj.weight"), dtype, I, H);
        expect(m, layer_name(n, sizeof(n), l, "mlp.down_proj.weight"), dtype, H, I);
        if (c.attention_bias) {
            expect(m, layer_name(n, sizeof(n), l, "self_attn.q_proj.bias"), dtype, q, 0);
            expect(m, layer_name(n, sizeof(n), l, "self_attn.k_proj.bias"), dtype, kv, 0);
            expect(m, layer_name(n, sizeof(n), l, "self_attn.v_proj.bias"), dtype, kv, 0);
        }
        if (c.qk_norm) {
            expect(m, layer_name(n, sizeof(n), l, "self_attn.q_norm.weight"), dtype, c.head_dim, 0);
            expect(m, layer_name(n, sizeof(n), l, "self_attn.k_norm.weight"), dtype, c.head_dim, 0);
        }
    }
    /* The embedding (V * H values) is ~N(0, 0.02). */
    const struct st_tensor *e = st_find(m, "model.embed_tokens.weight");
    double sum = 0, sq = 0, maxabs = 0;
    for (uint64_t i = 0; i < e->n_elements; i++) {
        double v = value_at(e, i);
        sum += v;
        sq += v * v;
        maxabs = fmax(maxabs, fabs(v));
    }
    double mean = sum / (double)e->n_elements;
    double std = sqrt(sq / (double)e->n_elements - mean * mean);
    cr_assert(fabs(mean) < 1e-3, "mean %g", mean);
    cr_assert(fabs(std - 0.02) < 1e-3, "std %g", std);
    cr_assert(maxabs > 0.05 && maxabs < 0.08, "max |w| %g", maxabs);
    st_close(m);
    model_config_finish(&c);
}

Test(model_gen, tiny_presets_load)
{
    static const char *const presets[] = {"tiny-llama", "tiny-qwen2", "tiny-qwen3"};
    static const enum ifd_dtype dtypes[] = {IFD_DTYPE_BF16, IFD_DTYPE_F16, IFD_DTYPE_F32};
    for (size_t i = 0; i < 3; i++) {
        for (size_t k = 0; k < 3; k++) {
            struct gen_dir d;
            gen(&d, presets[i], dtypes[k], 7, NULL);
            check_checkpoint(d.path, presets[i], dtypes[k]);
            tu_remove_tree(d.path);
        }
    }
}

/* Full-size presets parse and have the published shapes (no weights written:
 * those are exercised by the benchmarks). */
Test(model_gen, full_size_preset_configs)
{
    struct model_config c;
    ifd_error err = {{0}};
    cr_assert_eq(model_gen_preset_config("qwen2.5-0.5b", &c, &err), 0);
    cr_assert_eq(c.arch, MODEL_ARCH_QWEN2);
    cr_assert_eq(c.hidden_size, 896);
    cr_assert_eq(c.n_layers, 24);
    cr_assert_eq(c.n_heads, 14);
    cr_assert_eq(c.n_kv_heads, 2);
    cr_assert_eq(c.head_dim, 64);
    cr_assert_eq(c.intermediate_size, 4864);
    cr_assert_eq(c.vocab_size, 151936);
    cr_assert(c.tie_word_embeddings && c.attention_bias);
    cr_assert_eq(model_gen_preset_config("smollm2-135m", &c, &err), 0);
    cr_assert_eq(c.arch, MODEL_ARCH_LLAMA);
    cr_assert_eq(c.hidden_size, 576);
    cr_assert_eq(c.n_layers, 30);
    cr_assert_eq(c.n_heads, 9);
    cr_assert_eq(c.n_kv_heads, 3);
    cr_assert_eq(c.intermediate_size, 1536);
    cr_assert_eq(c.vocab_size, 49152);
    cr_assert_float_eq(c.rope_theta, 100000.0f, 0);
    /* Qwen2.5-7B-Instruct's published config.json. */
    cr_assert_eq(model_gen_preset_config("qwen2.5-7b", &c, &err), 0);
    cr_assert_eq(c.arch, MODEL_ARCH_QWEN2);
    cr_assert_eq(c.hidden_size, 3584);
    cr_assert_eq(c.intermediate_size, 18944);
    cr_assert_eq(c.n_layers, 28);
    cr_assert_eq(c.n_heads, 28);
    cr_assert_eq(c.n_kv_heads, 4);
    cr_assert_eq(c.head_dim, 128);
    cr_assert_eq(c.vocab_size, 152064);
    cr_assert_eq(c.max_position_embeddings, 32768);
    cr_assert(!c.tie_word_embeddings && c.attention_bias);
    cr_assert_float_eq(c.rope_theta, 1e6f, 0);
    cr_assert_float_eq(c.rms_norm_eps, 1e-6f, 0);

    /* Every preset's config.json parses back to itself. */
    for (size_t i = 0; model_gen_preset_name(i); i++) {
        struct model_config p, back;
        cr_assert_eq(model_gen_preset_config(model_gen_preset_name(i), &p, &err), 0);
        char *json = model_gen_config_json(&p, IFD_DTYPE_BF16);
        cr_assert(json);
        cr_assert_eq(model_config_parse(json, strlen(json), model_gen_preset_name(i), &back, &err), 0, "%s",
                     err.msg);
        cr_assert_eq(back.hidden_size, p.hidden_size);
        cr_assert_eq(back.n_layers, p.n_layers);
        cr_assert_eq(back.head_dim, p.head_dim);
        cr_assert_float_eq(back.rope_theta, p.rope_theta, 0);
        cr_assert_float_eq(back.rms_norm_eps, p.rms_norm_eps, 0);
        cr_assert_eq(back.rope_scaling, p.rope_scaling);
        cr_assert_float_eq(back.rope_factor, p.rope_factor, 0);
        cr_assert(strstr(json, "\"torch_dtype\":\t\"bfloat16\""), "%s", json);
        free(json);
        model_config_finish(&back);
    }
}

/* The whole of dir/name. */
static char *slurp(const char *dir, const char *name, size_t *len)
{
    char *p;
    cr_assert_geq(asprintf(&p, "%s/%s", dir, name), 0);
    char *b = tu_must_read_file(p, len);
    free(p);
    return b;
}

Test(model_gen, deterministic_in_seed)
{
    struct gen_dir a, b, c;
    gen(&a, "tiny-qwen2", IFD_DTYPE_BF16, 42, NULL);
    gen(&b, "tiny-qwen2", IFD_DTYPE_BF16, 42, NULL);
    gen(&c, "tiny-qwen2", IFD_DTYPE_BF16, 43, NULL);
    size_t la, lb, lc;
    char *x = slurp(a.path, "model.safetensors", &la);
    char *y = slurp(b.path, "model.safetensors", &lb);
    char *z = slurp(c.path, "model.safetensors", &lc);
    cr_assert_eq(la, lb);
    cr_assert_eq(memcmp(x, y, la), 0, "same seed, different bytes");
    cr_assert_eq(la, lc);
    cr_assert_neq(memcmp(x, z, la), 0, "different seeds, same bytes");
    free(x);
    free(y);
    free(z);
    tu_remove_tree(a.path);
    tu_remove_tree(b.path);
    tu_remove_tree(c.path);
}

/* --shards N: N files and an index; loaded through the index, every tensor
 * equals the single-file checkpoint's of the same seed. */
Test(model_gen, sharded_equals_single)
{
    struct gen_dir one, many;
    gen(&one, "tiny-qwen2", IFD_DTYPE_BF16, 5, NULL);
    strcpy(many.path, "/tmp/inferd-gen-XXXXXX");
    cr_assert(mkdtemp(many.path));
    /* A stale single file must not shadow the shards. */
    char *stale;
    cr_assert_geq(asprintf(&stale, "%s/model.safetensors", many.path), 0);
    FILE *f = fopen(stale, "w");
    cr_assert(f);
    fclose(f);
    free(stale);
    struct model_gen_options opt = {.preset = "tiny-qwen2", .dtype = IFD_DTYPE_BF16, .seed = 5, .n_shards = 3};
    ifd_error err = {{0}};
    uint64_t bytes = 0;
    cr_assert_eq(model_gen_write(many.path, &opt, &bytes, &err), 0, "%s", err.msg);
    check_checkpoint(many.path, "tiny-qwen2", IFD_DTYPE_BF16);
    st_model *a = NULL, *b = NULL;
    cr_assert_eq(st_open(one.path, &a, &err), 0, "%s", err.msg);
    cr_assert_eq(st_open(many.path, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(st_file_count(b), 3, "three shard files, got %d", st_file_count(b));
    for (int k = 0; k < 3; k++) {
        char want[64];
        snprintf(want, sizeof(want), "model-%05d-of-00003.safetensors", k + 1);
        cr_assert(strstr(st_file_path(b, k), want), "shard %d is %s", k, st_file_path(b, k));
    }
    cr_assert_eq(st_count(a), st_count(b));
    for (size_t i = 0; i < st_count(a); i++) {
        const struct st_tensor *x = st_at(a, i), *y = st_find(b, x->name);
        cr_assert(y, "%s missing from the shards", x->name);
        cr_assert_eq(x->nbytes, y->nbytes, "%s size", x->name);
        cr_assert_eq(memcmp(x->data, y->data, x->nbytes), 0, "%s differs", x->name);
    }
    st_close(a);
    st_close(b);
    /* More shards than tensors is refused. */
    opt.n_shards = 999;
    cr_assert_lt(model_gen_write(many.path, &opt, &bytes, &err), 0);
    cr_assert(strstr(err.msg, "shards for"), "%s", err.msg);
    tu_remove_tree(one.path);
    tu_remove_tree(many.path);
}

Test(model_gen, tokenizer_copied)
{
    char *from = tu_must_shared_path("models/tinystories-656k");
    struct gen_dir d;
    gen(&d, "tiny-llama", IFD_DTYPE_BF16, 0, from);
    size_t l1, l2;
    char *a = slurp(d.path, "tokenizer.json", &l1);
    char *b = slurp(from, "tokenizer.json", &l2);
    cr_assert_eq(l1, l2);
    cr_assert_eq(memcmp(a, b, l1), 0);
    free(a);
    free(b);
    char cfg[128];
    snprintf(cfg, sizeof(cfg), "%s/tokenizer_config.json", d.path);
    cr_assert_eq(access(cfg, R_OK), 0, "%s not copied", cfg);
    tu_remove_tree(d.path);
    free(from);
}

Test(model_gen, errors)
{
    char dir[] = "/tmp/inferd-gen-XXXXXX";
    cr_assert(mkdtemp(dir));
    ifd_error err = {{0}};
    struct model_gen_options opt = {.preset = "gpt-5", .dtype = IFD_DTYPE_BF16};
    cr_assert_eq(model_gen_write(dir, &opt, NULL, &err), -ENOENT);
    cr_assert(strstr(err.msg, "'gpt-5'") && strstr(err.msg, "qwen2.5-0.5b"), "%s", err.msg);
    opt.preset = "tiny-llama";
    opt.dtype = IFD_DTYPE_U8;
    cr_assert_eq(model_gen_write(dir, &opt, NULL, &err), -EINVAL);
    cr_assert(strstr(err.msg, "U8"), "%s", err.msg);
    opt.dtype = IFD_DTYPE_BF16;
    opt.tokenizer_from = "/nonexistent";
    cr_assert_eq(model_gen_write(dir, &opt, NULL, &err), -ENOENT);
    cr_assert(strstr(err.msg, "/nonexistent/tokenizer.json"), "%s", err.msg);
    opt.tokenizer_from = NULL;
    cr_assert_eq(model_gen_write("/nonexistent/dir/x", &opt, NULL, &err), -ENOENT);
    cr_assert(strstr(err.msg, "/nonexistent/dir/x"), "%s", err.msg);
    rmdir(dir);
}

/* `inferctl model generate` writes the same bytes as the library call. */
static int run_inferctl(const char *args)
{
    const char *build = getenv("INFERD_BUILD_ROOT");
    cr_assert(build && *build, "INFERD_BUILD_ROOT is not set: run the tests through meson test");
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s/daemon/inferctl model generate %s >/dev/null 2>&1", build, args);
    int st = system(cmd);
    cr_assert(WIFEXITED(st), "%s did not exit", cmd);
    return WEXITSTATUS(st);
}

Test(model_gen, inferctl_generate)
{
    struct gen_dir lib;
    gen(&lib, "tiny-qwen2", IFD_DTYPE_F16, 3, NULL);
    char out[] = "/tmp/inferd-gen-cli-XXXXXX";
    cr_assert(mkdtemp(out));
    char args[256];
    snprintf(args, sizeof(args), "--preset tiny-qwen2 --dtype f16 --seed 3 %s", out);
    cr_assert_eq(run_inferctl(args), 0);
    size_t la, lb;
    char *a = slurp(lib.path, "model.safetensors", &la);
    char *b = slurp(out, "model.safetensors", &lb);
    cr_assert_eq(la, lb);
    cr_assert_eq(memcmp(a, b, la), 0);
    free(a);
    free(b);

    /* --layers overrides the preset's depth. */
    snprintf(args, sizeof(args), "--preset tiny-llama --layers 3 %s", out);
    cr_assert_eq(run_inferctl(args), 0);
    struct model_config c;
    ifd_error err = {{0}};
    cr_assert_eq(model_config_load(out, &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.n_layers, 3);
    model_config_finish(&c);

    snprintf(args, sizeof(args), "--preset tiny-llama --dtype q4 %s", out);
    cr_assert_eq(run_inferctl(args), 2, "bad dtype must be a usage error");
    snprintf(args, sizeof(args), "--dtype bf16 %s", out);
    cr_assert_eq(run_inferctl(args), 2, "missing preset must be a usage error");
    snprintf(args, sizeof(args), "--preset nope %s", out);
    cr_assert_eq(run_inferctl(args), 1, "unknown preset must fail");
    cr_assert_eq(run_inferctl("--preset tiny-llama"), 2, "missing OUT_DIR must be a usage error");

    struct gen_dir o = {{0}};
    strcpy(o.path, out);
    tu_remove_tree(o.path);
    tu_remove_tree(lib.path);
}
