/* model_config.c - parse and validate a Hugging Face config.json.
 *
 * The file is untrusted: every size has a limit, every option we do not
 * implement is refused by name rather than silently ignored, since ignoring
 * (say) a linear RoPE scaling would give plausible but wrong text. */
#include "model/model_config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"

#define CONFIG_MAX_BYTES (16u << 20)

/* Upper bounds: far above any real model, low enough that products of them
 * (vocab * hidden, layers * ...) cannot overflow 64-bit sizes downstream. */
#define MAX_VOCAB (4 << 20)
#define MAX_LAYERS 1024
#define MAX_HIDDEN 65536
#define MAX_INTERMEDIATE (1 << 20)
#define MAX_HEADS 1024
#define MAX_HEAD_DIM 1024
#define MAX_POSITIONS (1 << 24)

/* An optional member: absent and JSON null both mean "not given". */
static const cJSON *member(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNull(v) ? NULL : v;
}

/* Reads an integer field in [lo, hi]; `def` when absent, or an error if
 * required. */
static int get_int(const cJSON *obj, const char *key, bool required, int def, int lo, int hi,
                   const char *origin, int *ret, ifd_error *err)
{
    const cJSON *v = member(obj, key);
    if (!v) {
        if (required)
            return ifd_error_set(err, -EINVAL, "%s: missing \"%s\"", origin, key);
        *ret = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return ifd_error_set(err, -EINVAL, "%s: \"%s\" is not an integer", origin, key);
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return ifd_error_set(err, -EINVAL, "%s: \"%s\" = %.0f is outside [%d, %d]", origin, key,
                             v->valuedouble, lo, hi);
    *ret = (int)v->valuedouble;
    return 0;
}

/* A positive finite float; `def` when absent. */
static int get_pos_float(const cJSON *obj, const char *key, float def, const char *origin, float *ret,
                         ifd_error *err)
{
    const cJSON *v = member(obj, key);
    if (!v) {
        *ret = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble <= 0 ||
        (float)v->valuedouble <= 0.0f || !isfinite((float)v->valuedouble))
        return ifd_error_set(err, -EINVAL, "%s: \"%s\" must be a positive number", origin, key);
    *ret = (float)v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *obj, const char *key, bool def, const char *origin, bool *ret,
                    ifd_error *err)
{
    const cJSON *v = member(obj, key);
    if (!v) {
        *ret = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return ifd_error_set(err, -EINVAL, "%s: \"%s\" is not a boolean", origin, key);
    *ret = cJSON_IsTrue(v);
    return 0;
}

static int parse_arch(const cJSON *root, const char *origin, struct model_config *cfg, ifd_error *err)
{
    static const struct {
        const char *arch, *model_type;
        enum model_arch id;
    } known[] = {
        {"LlamaForCausalLM", "llama", MODEL_ARCH_LLAMA},
        {"Qwen2ForCausalLM", "qwen2", MODEL_ARCH_QWEN2},
        {"Qwen3ForCausalLM", "qwen3", MODEL_ARCH_QWEN3},
    };
    const cJSON *archs = member(root, "architectures");
    const char *name = NULL;
    bool by_type = false;
    if (archs) {
        if (!cJSON_IsArray(archs) || cJSON_GetArraySize(archs) != 1 || !cJSON_IsString(archs->child))
            return ifd_error_set(err, -EINVAL, "%s: \"architectures\" must be a list of one string",
                                 origin);
        name = archs->child->valuestring;
    } else {
        const cJSON *mt = member(root, "model_type");
        if (!cJSON_IsString(mt))
            return ifd_error_set(err, -EINVAL, "%s: neither \"architectures\" nor \"model_type\" given",
                                 origin);
        name = mt->valuestring;
        by_type = true;
    }
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (strcmp(name, by_type ? known[i].model_type : known[i].arch) == 0) {
            cfg->arch = known[i].id;
            snprintf(cfg->arch_name, sizeof(cfg->arch_name), "%s", known[i].arch);
            return 0;
        }
    }
    return ifd_error_set(err, -EOPNOTSUPP,
                         "%s: unsupported %s '%s' (supported: LlamaForCausalLM, Qwen2ForCausalLM, "
                         "Qwen3ForCausalLM)",
                         origin, by_type ? "model_type" : "architecture", name);
}

static int parse_rope_scaling(const cJSON *root, const char *origin, struct model_config *cfg,
                              ifd_error *err)
{
    cfg->rope_scaling = MODEL_ROPE_NONE;
    const cJSON *rs = member(root, "rope_scaling");
    if (!rs)
        return 0;
    if (!cJSON_IsObject(rs))
        return ifd_error_set(err, -EINVAL, "%s: \"rope_scaling\" is not an object", origin);
    const cJSON *type = member(rs, "rope_type");
    if (!type)
        type = member(rs, "type");
    if (!cJSON_IsString(type))
        return ifd_error_set(err, -EINVAL, "%s: rope_scaling has no \"rope_type\" string", origin);
    if (strcmp(type->valuestring, "default") == 0)
        return 0;
    if (strcmp(type->valuestring, "llama3") != 0)
        return ifd_error_set(err, -EOPNOTSUPP,
                             "%s: unsupported rope_scaling type '%s' (supported: llama3, default)",
                             origin, type->valuestring);
    cfg->rope_scaling = MODEL_ROPE_LLAMA3;
    int r;
    if (!member(rs, "factor"))
        return ifd_error_set(err, -EINVAL, "%s: rope_scaling llama3 without \"factor\"", origin);
    if ((r = get_pos_float(rs, "factor", 1.0f, origin, &cfg->rope_factor, err)) < 0 ||
        (r = get_pos_float(rs, "low_freq_factor", 1.0f, origin, &cfg->rope_low_freq_factor, err)) < 0 ||
        (r = get_pos_float(rs, "high_freq_factor", 4.0f, origin, &cfg->rope_high_freq_factor, err)) < 0 ||
        (r = get_int(rs, "original_max_position_embeddings", false, 8192, 1, MAX_POSITIONS, origin,
                     &cfg->rope_original_max_pos, err)) < 0)
        return r;
    /* The smoothing between the two wavelength bands divides by their difference. */
    if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
        return ifd_error_set(err, -EINVAL,
                             "%s: rope_scaling high_freq_factor must exceed low_freq_factor", origin);
    return 0;
}

static int parse_token_ids(const cJSON *root, const char *origin, struct model_config *cfg,
                           ifd_error *err)
{
    int r = get_int(root, "bos_token_id", false, -1, 0, cfg->vocab_size - 1, origin,
                    &cfg->bos_token_id, err);
    if (r < 0)
        return r;
    cfg->n_eos_token_ids = 0;
    const cJSON *eos = member(root, "eos_token_id");
    if (!eos)
        return 0;
    if (cJSON_IsNumber(eos))
        return get_int(root, "eos_token_id", true, 0, 0, cfg->vocab_size - 1, origin,
                       &cfg->eos_token_ids[cfg->n_eos_token_ids++], err);
    if (!cJSON_IsArray(eos))
        return ifd_error_set(err, -EINVAL, "%s: \"eos_token_id\" is neither an integer nor a list",
                             origin);
    const cJSON *e;
    cJSON_ArrayForEach(e, eos) {
        if (cfg->n_eos_token_ids == MODEL_MAX_EOS_IDS)
            return ifd_error_set(err, -EINVAL, "%s: more than %d eos_token_id values", origin,
                                 MODEL_MAX_EOS_IDS);
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
            e->valuedouble >= cfg->vocab_size)
            return ifd_error_set(err, -EINVAL,
                                 "%s: \"eos_token_id\" entry %d is not a token id below vocab_size %d",
                                 origin, cfg->n_eos_token_ids, cfg->vocab_size);
        cfg->eos_token_ids[cfg->n_eos_token_ids++] = (int)e->valuedouble;
    }
    return 0;
}

/* {group_size, bits} of the default or of one override. */
static int parse_quant_pair(const cJSON *obj, const char *origin, const char *what,
                            struct model_quant *ret, ifd_error *err)
{
    int bits = 0, gs = 0, r;
    if ((r = get_int(obj, "bits", true, 0, 1, 8, origin, &bits, err)) < 0 ||
        (r = get_int(obj, "group_size", true, 0, 1, 1024, origin, &gs, err)) < 0) {
        ifd_error_prefix(err, "quantization of %s", what);
        return r;
    }
    if (bits != 2 && bits != 3 && bits != 4 && bits != 6 && bits != 8)
        return ifd_error_set(err, -EOPNOTSUPP, "%s: quantization of %s: %d bits unsupported (2, 3, 4, 6 or 8)",
                             origin, what, bits);
    /* Packed rows must fill whole 32-bit words for every supported width. */
    if (gs % 32)
        return ifd_error_set(err, -EOPNOTSUPP,
                             "%s: quantization of %s: group_size %d is not a multiple of 32", origin,
                             what, gs);
    ret->bits = bits;
    ret->group_size = gs;
    return 0;
}

static int parse_quant(const cJSON *root, const char *origin, struct model_config *cfg, ifd_error *err)
{
    const char *key = "quantization";
    const cJSON *q = member(root, key);
    if (!q) {
        key = "quantization_config";
        q = member(root, key);
    }
    if (!q)
        return 0;
    if (!cJSON_IsObject(q))
        return ifd_error_set(err, -EINVAL, "%s: \"%s\" is not an object", origin, key);
    const cJSON *method = member(q, "quant_method");
    if (method)
        return ifd_error_set(err, -EOPNOTSUPP, "%s: unsupported quantization method '%s' (only MLX affine)",
                             origin, cJSON_IsString(method) ? method->valuestring : "?");
    const cJSON *mode = member(q, "mode");
    if (mode && (!cJSON_IsString(mode) || strcmp(mode->valuestring, "affine") != 0))
        return ifd_error_set(err, -EOPNOTSUPP, "%s: unsupported MLX quantization mode '%s' (only affine)",
                             origin, cJSON_IsString(mode) ? mode->valuestring : "?");
    int r = parse_quant_pair(q, origin, "the model", &cfg->quant, err);
    if (r < 0)
        return r;
    const cJSON *e;
    int n = 0;
    cJSON_ArrayForEach(e, q) {
        if (cJSON_IsObject(e) || cJSON_IsFalse(e))
            n++;
    }
    if (n > MODEL_MAX_QUANT_OVERRIDES)
        return ifd_error_set(err, -EINVAL, "%s: %d per-module quantization overrides (at most %d)",
                             origin, n, MODEL_MAX_QUANT_OVERRIDES);
    if (n && !(cfg->quant_overrides = calloc((size_t)n, sizeof(*cfg->quant_overrides))))
        return ifd_error_set(err, -ENOMEM, "out of memory");
    cJSON_ArrayForEach(e, q) {
        const char *k = e->string;
        if (strcmp(k, "bits") == 0 || strcmp(k, "group_size") == 0 || strcmp(k, "mode") == 0)
            continue;
        /* Refused before indexing: with no object/false entries the array is NULL. */
        if (!cJSON_IsFalse(e) && !cJSON_IsObject(e))
            return ifd_error_set(err, -EINVAL,
                                 "%s: \"%s\" entry '%s' is neither a {group_size, bits} object nor false",
                                 origin, key, k);
        struct model_quant_override *o = &cfg->quant_overrides[cfg->n_quant_overrides];
        if (cJSON_IsFalse(e)) {
            o->quant = (struct model_quant){0, 0};
        } else if ((r = parse_quant_pair(e, origin, k, &o->quant, err)) < 0) {
            return r;
        }
        if (!(o->module_path = strdup(k)))
            return ifd_error_set(err, -ENOMEM, "out of memory");
        cfg->n_quant_overrides++;
    }
    return 0;
}

static int parse_root(const cJSON *root, const char *origin, struct model_config *cfg, ifd_error *err)
{
    if (!cJSON_IsObject(root))
        return ifd_error_set(err, -EINVAL, "%s: not a JSON object", origin);
    int r = parse_arch(root, origin, cfg, err);
    if (r < 0)
        return r;

    const cJSON *act = member(root, "hidden_act");
    if (!act)
        act = member(root, "hidden_activation");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0))
        return ifd_error_set(err, -EOPNOTSUPP, "%s: unsupported hidden_act '%s' (only silu)", origin,
                             cJSON_IsString(act) ? act->valuestring : "?");

    if ((r = get_int(root, "hidden_size", true, 0, 1, MAX_HIDDEN, origin, &cfg->hidden_size, err)) < 0 ||
        (r = get_int(root, "intermediate_size", true, 0, 1, MAX_INTERMEDIATE, origin,
                     &cfg->intermediate_size, err)) < 0 ||
        (r = get_int(root, "num_hidden_layers", true, 0, 1, MAX_LAYERS, origin, &cfg->n_layers, err)) < 0 ||
        (r = get_int(root, "num_attention_heads", true, 0, 1, MAX_HEADS, origin, &cfg->n_heads, err)) < 0 ||
        (r = get_int(root, "num_key_value_heads", false, cfg->n_heads, 1, MAX_HEADS, origin,
                     &cfg->n_kv_heads, err)) < 0 ||
        (r = get_int(root, "vocab_size", true, 0, 1, MAX_VOCAB, origin, &cfg->vocab_size, err)) < 0 ||
        (r = get_int(root, "max_position_embeddings", false, 2048, 1, MAX_POSITIONS, origin,
                     &cfg->max_position_embeddings, err)) < 0)
        return r;
    if (cfg->n_heads % cfg->n_kv_heads)
        return ifd_error_set(err, -EINVAL,
                             "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                             origin, cfg->n_heads, cfg->n_kv_heads);
    if (member(root, "head_dim")) {
        if ((r = get_int(root, "head_dim", true, 0, 1, MAX_HEAD_DIM, origin, &cfg->head_dim, err)) < 0)
            return r;
    } else {
        if (cfg->hidden_size % cfg->n_heads)
            return ifd_error_set(err, -EINVAL,
                                 "%s: hidden_size %d is not a multiple of num_attention_heads %d (and no head_dim)",
                                 origin, cfg->hidden_size, cfg->n_heads);
        cfg->head_dim = cfg->hidden_size / cfg->n_heads;
        if (cfg->head_dim > MAX_HEAD_DIM)
            return ifd_error_set(err, -EINVAL, "%s: head_dim %d exceeds %d", origin, cfg->head_dim,
                                 MAX_HEAD_DIM);
    }
    /* RoPE rotates pairs of dimensions. */
    if (cfg->head_dim % 2)
        return ifd_error_set(err, -EINVAL, "%s: head_dim %d is odd", origin, cfg->head_dim);

    if ((r = get_pos_float(root, "rms_norm_eps", 1e-6f, origin, &cfg->rms_norm_eps, err)) < 0 ||
        (r = get_pos_float(root, "rope_theta", 10000.0f, origin, &cfg->rope_theta, err)) < 0 ||
        (r = parse_rope_scaling(root, origin, cfg, err)) < 0 ||
        (r = get_bool(root, "tie_word_embeddings", false, origin, &cfg->tie_word_embeddings, err)) < 0)
        return r;

    /* Qwen2/Qwen3 configs carry sliding_window settings that are off in every
     * released model; when on, attention would differ from what we compute. */
    bool sliding;
    if ((r = get_bool(root, "use_sliding_window", false, origin, &sliding, err)) < 0)
        return r;
    if (sliding)
        return ifd_error_set(err, -EOPNOTSUPP, "%s: use_sliding_window true is unsupported", origin);

    bool attn_bias, mlp_bias;
    if ((r = get_bool(root, "attention_bias", false, origin, &attn_bias, err)) < 0 ||
        (r = get_bool(root, "mlp_bias", false, origin, &mlp_bias, err)) < 0)
        return r;
    if (mlp_bias)
        return ifd_error_set(err, -EOPNOTSUPP, "%s: mlp_bias true is unsupported", origin);
    /* Qwen2 always has q/k/v bias and no o_proj bias, whatever the config says;
     * for Llama and Qwen3, attention_bias adds a bias to o_proj as well, which
     * the engine does not implement. */
    if (cfg->arch == MODEL_ARCH_QWEN2) {
        cfg->attention_bias = true;
    } else if (attn_bias) {
        return ifd_error_set(err, -EOPNOTSUPP,
                             "%s: attention_bias true for %s (bias on q/k/v and o_proj) is unsupported",
                             origin, cfg->arch_name);
    }
    cfg->qk_norm = cfg->arch == MODEL_ARCH_QWEN3;

    if ((r = parse_token_ids(root, origin, cfg, err)) < 0)
        return r;
    return parse_quant(root, origin, cfg, err);
}

int model_config_parse(const char *json, size_t len, const char *origin, struct model_config *ret,
                       ifd_error *err)
{
    if (!origin)
        origin = "config.json";
    if (len > CONFIG_MAX_BYTES)
        return ifd_error_set(err, -EFBIG, "%s: larger than %u bytes", origin, CONFIG_MAX_BYTES);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root)
        return ifd_error_set(err, -EINVAL, "%s: not valid JSON", origin);
    struct model_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    int r = parse_root(root, origin, &cfg, err);
    cJSON_Delete(root);
    if (r < 0) {
        model_config_finish(&cfg);
        return r;
    }
    *ret = cfg;
    return 0;
}

int model_config_load(const char *dir, struct model_config *ret, ifd_error *err)
{
    char *path;
    if (asprintf(&path, "%s/config.json", dir) < 0)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    char *buf = NULL;
    size_t len = 0;
    int r = file_read(path, CONFIG_MAX_BYTES, 0, &buf, &len, err);
    if (r < 0)
        goto out;
    r = model_config_parse(buf, len, path, ret, err);
out:
    free(buf);
    free(path);
    return r;
}

void model_config_finish(struct model_config *cfg)
{
    if (!cfg)
        return;
    for (int i = 0; i < cfg->n_quant_overrides; i++)
        free(cfg->quant_overrides[i].module_path);
    free(cfg->quant_overrides);
    cfg->quant_overrides = NULL;
    cfg->n_quant_overrides = 0;
}

struct model_quant model_config_quant_for(const struct model_config *cfg, const char *module_path)
{
    for (int i = 0; i < cfg->n_quant_overrides; i++)
        if (strcmp(cfg->quant_overrides[i].module_path, module_path) == 0)
            return cfg->quant_overrides[i].quant;
    return cfg->quant;
}

bool model_config_is_eos(const struct model_config *cfg, int token_id)
{
    for (int i = 0; i < cfg->n_eos_token_ids; i++)
        if (cfg->eos_token_ids[i] == token_id)
            return true;
    return false;
}
