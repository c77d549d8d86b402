/* model_gen.c - write random-weight checkpoints shaped like real models. */
#include "model/model_gen.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/safetensors.h"

/* Elements generated per batch: bounds the generator's memory (4 MiB at F32). */
#define GEN_CHUNK_ELEMS (1u << 20)
/* Tokenizer files are copied whole; real ones are a few MiB. */
#define GEN_MAX_COPY_BYTES (256u << 20)
#define GEN_WEIGHT_STD 0.02f

struct preset {
    const char *name;
    enum model_arch arch;
    int hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, max_pos;
    float rope_theta, rms_eps;
    bool tied;
    int bos, eos;
    bool llama3_rope; /* factor 32, low 1, high 4, original 8192 (Llama 3.2) */
};

/* Shapes and constants from the models' published config.json files. */
static const struct preset presets[] = {
    {"qwen2.5-0.5b", MODEL_ARCH_QWEN2, 896, 4864, 24, 14, 2, 64, 151936, 32768, 1e6f, 1e-6f, true,
     151643, 151645, false},
    {"smollm2-135m", MODEL_ARCH_LLAMA, 576, 1536, 30, 9, 3, 64, 49152, 8192, 100000.0f, 1e-5f, true, 1, 2,
     false},
    {"smollm2-360m", MODEL_ARCH_LLAMA, 960, 2560, 32, 15, 5, 64, 49152, 8192, 100000.0f, 1e-5f, true, 1, 2,
     false},
    {"qwen3-0.6b", MODEL_ARCH_QWEN3, 1024, 3072, 28, 16, 8, 128, 151936, 40960, 1e6f, 1e-6f, true, 151643,
     151645, false},
    {"qwen2.5-7b", MODEL_ARCH_QWEN2, 3584, 18944, 28, 28, 4, 128, 152064, 32768, 1e6f, 1e-6f, false,
     151643, 151645, false},
    {"llama3.2-1b", MODEL_ARCH_LLAMA, 2048, 8192, 16, 32, 8, 64, 128256, 131072, 500000.0f, 1e-5f, true,
     128000, 128009, true},
    /* Small ones for tests: every architecture path in well under a megabyte. */
    {"tiny-llama", MODEL_ARCH_LLAMA, 64, 160, 2, 4, 2, 16, 512, 512, 10000.0f, 1e-5f, true, 1, 2, false},
    {"tiny-qwen2", MODEL_ARCH_QWEN2, 64, 160, 2, 4, 2, 16, 512, 512, 1e6f, 1e-6f, false, 1, 2, false},
    {"tiny-qwen3", MODEL_ARCH_QWEN3, 64, 160, 2, 4, 2, 32, 512, 512, 1e6f, 1e-6f, true, 1, 2, false},
};

#define N_PRESETS (sizeof(presets) / sizeof(presets[0]))

const char *model_gen_preset_name(size_t i)
{
    return i < N_PRESETS ? presets[i].name : NULL;
}

int model_gen_preset_config(const char *name, struct model_config *ret, ifd_error *err)
{
    const struct preset *p = NULL;
    for (size_t i = 0; i < N_PRESETS && !p; i++)
        if (strcmp(presets[i].name, name) == 0)
            p = &presets[i];
    if (!p) {
        char list[256] = "";
        size_t n = 0;
        for (size_t i = 0; i < N_PRESETS && n < sizeof(list); i++)
            n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s", i ? ", " : "", presets[i].name);
        return ifd_error_set(err, -ENOENT, "unknown preset '%s' (known: %s)", name, list);
    }
    static const char *const arch_names[] = {
        [MODEL_ARCH_LLAMA] = "LlamaForCausalLM",
        [MODEL_ARCH_QWEN2] = "Qwen2ForCausalLM",
        [MODEL_ARCH_QWEN3] = "Qwen3ForCausalLM",
    };
    struct model_config c;
    memset(&c, 0, sizeof(c));
    c.arch = p->arch;
    snprintf(c.arch_name, sizeof(c.arch_name), "%s", arch_names[p->arch]);
    c.hidden_size = p->hidden;
    c.intermediate_size = p->intermediate;
    c.n_layers = p->layers;
    c.n_heads = p->heads;
    c.n_kv_heads = p->kv_heads;
    c.head_dim = p->head_dim;
    c.vocab_size = p->vocab;
    c.max_position_embeddings = p->max_pos;
    c.rms_norm_eps = p->rms_eps;
    c.rope_theta = p->rope_theta;
    if (p->llama3_rope) {
        c.rope_scaling = MODEL_ROPE_LLAMA3;
        c.rope_factor = 32.0f;
        c.rope_low_freq_factor = 1.0f;
        c.rope_high_freq_factor = 4.0f;
        c.rope_original_max_pos = 8192;
    }
    c.tie_word_embeddings = p->tied;
    c.attention_bias = p->arch == MODEL_ARCH_QWEN2;
    c.qk_norm = p->arch == MODEL_ARCH_QWEN3;
    c.bos_token_id = p->bos;
    c.eos_token_ids[0] = p->eos;
    c.n_eos_token_ids = 1;
    *ret = c;
    return 0;
}

/* ----------------------------------------------------------- config.json */

/* A float as JSON, shortest form that reads back as the same float and
 * always with a '.' or exponent, as Python's json writes floats. */
static cJSON *json_float(float f)
{
    char buf[48];
    if (f == truncf(f) && fabsf(f) < 1e15f) {
        snprintf(buf, sizeof(buf), "%.1f", (double)f);
        return cJSON_CreateRaw(buf);
    }
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f)
            break;
    }
    if (!strpbrk(buf, ".eEn"))
        strcat(buf, ".0");
    return cJSON_CreateRaw(buf);
}

char *model_gen_config_json(const struct model_config *cfg, enum ifd_dtype dtype)
{
    static const char *const model_types[] = {
        [MODEL_ARCH_LLAMA] = "llama",
        [MODEL_ARCH_QWEN2] = "qwen2",
        [MODEL_ARCH_QWEN3] = "qwen3",
    };
    const char *torch_dtype = dtype == IFD_DTYPE_BF16 ? "bfloat16" : dtype == IFD_DTYPE_F16 ? "float16" : "float32";
    cJSON *o = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(archs, cJSON_CreateString(cfg->arch_name));
    cJSON_AddStringToObject(o, "model_type", model_types[cfg->arch]);
    cJSON_AddStringToObject(o, "_comment", "RANDOM WEIGHTS from inferctl model generate, for speed "
                                           "measurements only");
    cJSON_AddNumberToObject(o, "hidden_size", cfg->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", cfg->intermediate_size);
    cJSON_AddNumberToObject(o, "num_hidden_layers", cfg->n_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", cfg->n_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", cfg->n_kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", cfg->head_dim);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "max_position_embeddings", cfg->max_position_embeddings);
    cJSON_AddItemToObject(o, "rms_norm_eps", json_float(cfg->rms_norm_eps));
    cJSON_AddItemToObject(o, "rope_theta", json_float(cfg->rope_theta));
    if (cfg->rope_scaling == MODEL_ROPE_LLAMA3) {
        cJSON *rs = cJSON_AddObjectToObject(o, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", "llama3");
        cJSON_AddItemToObject(rs, "factor", json_float(cfg->rope_factor));
        cJSON_AddItemToObject(rs, "low_freq_factor", json_float(cfg->rope_low_freq_factor));
        cJSON_AddItemToObject(rs, "high_freq_factor", json_float(cfg->rope_high_freq_factor));
        cJSON_AddNumberToObject(rs, "original_max_position_embeddings", cfg->rope_original_max_pos);
    } else {
        cJSON_AddNullToObject(o, "rope_scaling");
    }
    cJSON_AddBoolToObject(o, "tie_word_embeddings", cfg->tie_word_embeddings);
    cJSON_AddBoolToObject(o, "attention_bias", cfg->attention_bias);
    cJSON_AddNumberToObject(o, "vocab_size", cfg->vocab_size);
    cJSON_AddStringToObject(o, "torch_dtype", torch_dtype);
    if (cfg->bos_token_id >= 0)
        cJSON_AddNumberToObject(o, "bos_token_id", cfg->bos_token_id);
    if (cfg->n_eos_token_ids == 1) {
        cJSON_AddNumberToObject(o, "eos_token_id", cfg->eos_token_ids[0]);
    } else if (cfg->n_eos_token_ids > 1) {
        cJSON *e = cJSON_AddArrayToObject(o, "eos_token_id");
        for (int i = 0; i < cfg->n_eos_token_ids; i++)
            cJSON_AddItemToArray(e, cJSON_CreateNumber(cfg->eos_token_ids[i]));
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

/* --------------------------------------------------------------- weights */

enum init_kind {
    INIT_NORMAL, /* ~N(0, GEN_WEIGHT_STD) */
    INIT_ONE,    /* RMSNorm gains */
};

struct gen_tensor {
    char name[96];
    int n_dims;
    int64_t shape[2];
    enum init_kind init;
};

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Approximately normal values come from the sum of four 16-bit uniforms
 * (Irwin-Hall, n = 4): one PRNG call per value and no libm. The tails stop
 * at 3.46 sigma, which random benchmark weights do not miss. The value is a
 * function of the integer sum alone, so each possible sum is converted to the
 * output dtype once (a table of GEN_SUM_VALUES entries) and generating is a
 * lookup: a 1 GB checkpoint takes seconds whatever the dtype. */
#define GEN_SUM_VALUES (4 * 65535 + 1)

static uint32_t gen_sum(uint64_t *s)
{
    uint64_t r = splitmix64(s);
    return (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) + (uint32_t)((r >> 32) & 0xffff) +
           (uint32_t)(r >> 48);
}

/* Value of a sum: mean 4 * 32767.5, standard deviation 65536 / sqrt(3). */
static float gen_sum_value(uint32_t sum, float std)
{
    return ((float)sum - 131070.0f) * (std * 1.7320508f / 65536.0f);
}

/* Stores v as dtype at element i of out. */
static void store(void *out, enum ifd_dtype dtype, size_t i, float v)
{
    if (dtype == IFD_DTYPE_BF16)
        ((uint16_t *)out)[i] = ifd_f32_to_bf16(v);
    else if (dtype == IFD_DTYPE_F16)
        ((uint16_t *)out)[i] = ifd_f32_to_f16(v);
    else
        ((float *)out)[i] = v;
}

static uint64_t name_seed(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (; *name; name++)
        h = (h ^ (uint8_t)*name) * 0x100000001b3ull;
    return h;
}

/* Appends one tensor; layer >= 0 prefixes "model.layers.<layer>." to name. */
static void add_tensor(struct gen_tensor *t, size_t *n, int layer, const char *name, int n_dims, int64_t d0,
                       int64_t d1, enum init_kind init)
{
    struct gen_tensor *g = &t[(*n)++];
    if (layer >= 0)
        snprintf(g->name, sizeof(g->name), "model.layers.%d.%s", layer, name);
    else
        snprintf(g->name, sizeof(g->name), "%s", name);
    g->n_dims = n_dims;
    g->shape[0] = d0;
    g->shape[1] = d1;
    g->init = init;
}

/* The tensor list of a Hugging Face Llama/Qwen2/Qwen3 checkpoint, in the
 * order written. Returns a malloc'd array. */
static struct gen_tensor *tensor_list(const struct model_config *c, size_t *ret_n)
{
    size_t max = 3 + (size_t)c->n_layers * 16;
    struct gen_tensor *t = calloc(max, sizeof(*t));
    if (!t)
        return NULL;
    size_t n = 0;
    int64_t H = c->hidden_size, I = c->intermediate_size;
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    add_tensor(t, &n, -1, "model.embed_tokens.weight", 2, c->vocab_size, H, INIT_NORMAL);
    for (int l = 0; l < c->n_layers; l++) {
        add_tensor(t, &n, l, "input_layernorm.weight", 1, H, 0, INIT_ONE);
        add_tensor(t, &n, l, "self_attn.q_proj.weight", 2, q, H, INIT_NORMAL);
        add_tensor(t, &n, l, "self_attn.k_proj.weight", 2, kv, H, INIT_NORMAL);
        add_tensor(t, &n, l, "self_attn.v_proj.weight", 2, kv, H, INIT_NORMAL);
        if (c->attention_bias) {
            add_tensor(t, &n, l, "self_attn.q_proj.bias", 1, q, 0, INIT_NORMAL);
            add_tensor(t, &n, l, "self_attn.k_proj.bias", 1, kv, 0, INIT_NORMAL);
            add_tensor(t, &n, l, "self_attn.v_proj.bias", 1, kv, 0, INIT_NORMAL);
        }
        if (c->qk_norm) {
            add_tensor(t, &n, l, "self_attn.q_norm.weight", 1, c->head_dim, 0, INIT_ONE);
            add_tensor(t, &n, l, "self_attn.k_norm.weight", 1, c->head_dim, 0, INIT_ONE);
        }
        add_tensor(t, &n, l, "self_attn.o_proj.weight", 2, H, q, INIT_NORMAL);
        add_tensor(t, &n, l, "post_attention_layernorm.weight", 1, H, 0, INIT_ONE);
        add_tensor(t, &n, l, "mlp.gate_proj.weight", 2, I, H, INIT_NORMAL);
        add_tensor(t, &n, l, "mlp.up_proj.weight", 2, I, H, INIT_NORMAL);
        add_tensor(t, &n, l, "mlp.down_proj.weight", 2, H, I, INIT_NORMAL);
    }
    add_tensor(t, &n, -1, "model.norm.weight", 1, H, 0, INIT_ONE);
    if (!c->tie_word_embeddings)
        add_tensor(t, &n, -1, "lm_head.weight", 2, c->vocab_size, H, INIT_NORMAL);
    *ret_n = n;
    return t;
}

/* Fills `count` values of a tensor in the output dtype; `normal` is the
 * table of converted values indexed by gen_sum(). */
static void fill_chunk(void *out, enum ifd_dtype dtype, size_t count, enum init_kind init, const void *normal,
                       uint64_t *state)
{
    if (init == INIT_ONE) {
        for (size_t i = 0; i < count; i++)
            store(out, dtype, i, 1.0f);
    } else if (dtype == IFD_DTYPE_F32) {
        for (size_t i = 0; i < count; i++)
            ((float *)out)[i] = ((const float *)normal)[gen_sum(state)];
    } else {
        for (size_t i = 0; i < count; i++)
            ((uint16_t *)out)[i] = ((const uint16_t *)normal)[gen_sum(state)];
    }
}

static int write_text(const char *path, const char *text, ifd_error *err);

/* Writes tensors t[0..n) into one safetensors file at path. */
static int write_weights(const char *path, const struct gen_tensor *t, size_t n, const struct model_gen_options *opt,
                         uint64_t *ret_bytes, ifd_error *err)
{
    void *buf = malloc(GEN_CHUNK_ELEMS * ifd_dtype_size(opt->dtype));
    void *normal = malloc(GEN_SUM_VALUES * ifd_dtype_size(opt->dtype));
    FILE *f = fopen(path, "wb");
    int open_errno = f ? 0 : errno;
    st_writer *w = NULL;
    int r = 0;
    if (!buf || !normal) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < GEN_SUM_VALUES; i++)
        store(normal, opt->dtype, i, gen_sum_value(i, GEN_WEIGHT_STD));
    if (!f) {
        r = ifd_error_set(err, -open_errno, "%s: cannot create: %s", path, strerror(open_errno));
        goto out;
    }
    if (st_writer_create(st_write_to_file, f, &w) < 0 || st_writer_add_metadata(w, "format", "pt") < 0) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        r = st_writer_declare(w, t[i].name, opt->dtype, t[i].n_dims, t[i].shape, err);
        if (r < 0)
            goto out;
    }
    r = st_writer_begin_data(w, err);
    for (size_t i = 0; i < n && r >= 0; i++) {
        uint64_t count = (uint64_t)t[i].shape[0] * (uint64_t)(t[i].n_dims == 2 ? t[i].shape[1] : 1);
        uint64_t state = name_seed(opt->seed, t[i].name);
        while (count && r >= 0) {
            size_t k = count < GEN_CHUNK_ELEMS ? (size_t)count : GEN_CHUNK_ELEMS;
            fill_chunk(buf, opt->dtype, k, t[i].init, normal, &state);
            r = st_writer_write_data(w, buf, k * ifd_dtype_size(opt->dtype), err);
            count -= k;
        }
    }
    if (r >= 0)
        r = st_writer_finish(w, err);
    if (r < 0) {
        ifd_error_prefix(err, "%s", path);
        goto out;
    }
    if (fflush(f) != 0 || ferror(f)) {
        r = ifd_error_set(err, -EIO, "%s: write failed: %s", path, strerror(errno));
        goto out;
    }
    if (ret_bytes)
        *ret_bytes = (uint64_t)ftello(f);
out:
    st_writer_destroy(w);
    if (f && fclose(f) != 0 && r >= 0)
        r = ifd_error_set(err, -EIO, "%s: write failed: %s", path, strerror(errno));
    free(normal);
    free(buf);
    return r;
}

static uint64_t tensor_bytes(const struct gen_tensor *t, enum ifd_dtype dtype)
{
    return (uint64_t)t->shape[0] * (uint64_t)(t->n_dims == 2 ? t->shape[1] : 1) * ifd_dtype_size(dtype);
}

/* Writes one weights file through a temporary name, renamed into place. */
static int write_weights_file(const char *out_dir, const char *name, const struct gen_tensor *t, size_t n,
                              const struct model_gen_options *opt, uint64_t *ret_bytes, ifd_error *err)
{
    char *tmp_path = NULL, *path = NULL;
    int r;
    if (asprintf(&path, "%s/%s", out_dir, name) < 0)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    if (asprintf(&tmp_path, "%s.tmp", path) < 0) {
        free(path);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    r = write_weights(tmp_path, t, n, opt, ret_bytes, err);
    if (r >= 0 && rename(tmp_path, path) < 0)
        r = ifd_error_set(err, -errno, "%s: rename failed: %s", path, strerror(errno));
    if (r < 0)
        unlink(tmp_path);
    free(tmp_path);
    free(path);
    return r;
}

/* Removes out_dir/name if present (the other layout's weights). */
static void remove_file(const char *out_dir, const char *name)
{
    char *path = NULL;
    if (asprintf(&path, "%s/%s", out_dir, name) >= 0)
        unlink(path);
    free(path);
}

/* N shards, tensors in order, each shard closing once its share of the
 * bytes is reached (and never empty), then the index that maps every tensor
 * to its file, as transformers' save_pretrained writes it. */
static int write_sharded(const char *out_dir, const struct gen_tensor *t, size_t n,
                         const struct model_gen_options *opt, uint64_t *ret_bytes, ifd_error *err)
{
    int shards = opt->n_shards;
    if ((size_t)shards > n)
        return ifd_error_set(err, -EINVAL, "%d shards for %zu tensors", shards, n);
    uint64_t total = 0, done = 0, bytes = 0;
    for (size_t i = 0; i < n; i++)
        total += tensor_bytes(&t[i], opt->dtype);
    cJSON *index = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON *map = cJSON_AddObjectToObject(index, "weight_map");
    int r = 0;
    size_t first = 0;
    for (int k = 0; k < shards && r >= 0; k++) {
        size_t last = first + 1;
        uint64_t target = total / (uint64_t)shards * (uint64_t)(k + 1);
        done += tensor_bytes(&t[first], opt->dtype);
        /* Leave at least one tensor for each shard still to come. */
        while (last < n - (size_t)(shards - 1 - k) && (k == shards - 1 || done < target))
            done += tensor_bytes(&t[last++], opt->dtype);
        char name[64];
        snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", k + 1, shards);
        uint64_t b = 0;
        r = write_weights_file(out_dir, name, t + first, last - first, opt, &b, err);
        bytes += b;
        for (size_t i = first; i < last; i++)
            cJSON_AddStringToObject(map, t[i].name, name);
        first = last;
    }
    char *json = r >= 0 ? cJSON_Print(index) : NULL;
    cJSON_Delete(index);
    if (r >= 0) {
        char *path = NULL;
        if (!json || asprintf(&path, "%s/model.safetensors.index.json", out_dir) < 0)
            r = ifd_error_set(err, -ENOMEM, "out of memory");
        else
            r = write_text(path, json, err);
        free(path);
    }
    free(json);
    if (r >= 0)
        *ret_bytes = bytes;
    return r;
}

/* ---------------------------------------------------------------- files */

static int write_text(const char *path, const char *text, ifd_error *err)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return ifd_error_set(err, -errno, "%s: cannot create: %s", path, strerror(errno));
    size_t n = strlen(text);
    bool ok = fwrite(text, 1, n, f) == n && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    return ok ? 0 : ifd_error_set(err, -EIO, "%s: write failed", path);
}

static int copy_file(const char *from, const char *to, ifd_error *err)
{
    FILE *in = fopen(from, "rb");
    if (!in)
        return ifd_error_set(err, -errno, "%s: cannot open: %s", from, strerror(errno));
    FILE *out = fopen(to, "wb");
    if (!out) {
        int e = errno;
        fclose(in);
        return ifd_error_set(err, -e, "%s: cannot create: %s", to, strerror(e));
    }
    char buf[1 << 16];
    size_t n, total = 0;
    int r = 0;
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0) {
        total += n;
        if (total > GEN_MAX_COPY_BYTES) {
            r = ifd_error_set(err, -EFBIG, "%s: larger than %u bytes", from, GEN_MAX_COPY_BYTES);
            break;
        }
        if (fwrite(buf, 1, n, out) != n) {
            r = ifd_error_set(err, -EIO, "%s: write failed", to);
            break;
        }
    }
    if (r >= 0 && ferror(in))
        r = ifd_error_set(err, -EIO, "%s: read failed", from);
    fclose(in);
    if (fclose(out) != 0 && r >= 0)
        r = ifd_error_set(err, -EIO, "%s: write failed", to);
    return r;
}

static int copy_tokenizer(const char *from_dir, const char *out_dir, ifd_error *err)
{
    static const struct {
        const char *name;
        bool required;
    } files[] = {
        {"tokenizer.json", true},
        {"tokenizer_config.json", true},
        {"special_tokens_map.json", false},
        {"generation_config.json", false},
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char *src = NULL, *dst = NULL;
        int r = 0;
        if (asprintf(&src, "%s/%s", from_dir, files[i].name) < 0 ||
            asprintf(&dst, "%s/%s", out_dir, files[i].name) < 0) {
            free(src);
            return ifd_error_set(err, -ENOMEM, "out of memory");
        }
        if (access(src, F_OK) == 0 || files[i].required)
            r = copy_file(src, dst, err);
        free(src);
        free(dst);
        if (r < 0)
            return r;
    }
    return 0;
}

int model_gen_write(const char *out_dir, const struct model_gen_options *opt, uint64_t *ret_bytes,
                    ifd_error *err)
{
    if (opt->dtype != IFD_DTYPE_F32 && opt->dtype != IFD_DTYPE_F16 && opt->dtype != IFD_DTYPE_BF16)
        return ifd_error_set(err, -EINVAL, "dtype %s unsupported (F32, F16 or BF16)", ifd_dtype_name(opt->dtype));
    struct model_config cfg;
    int r = model_gen_preset_config(opt->preset, &cfg, err);
    if (r < 0)
        return r;
    if (opt->n_layers < 0 || opt->n_layers > 1024)
        return ifd_error_set(err, -EINVAL, "layer count %d outside [1, 1024]", opt->n_layers);
    if (opt->n_layers)
        cfg.n_layers = opt->n_layers;
    if (opt->n_shards < 0 || opt->n_shards > MODEL_GEN_MAX_SHARDS)
        return ifd_error_set(err, -EINVAL, "shard count %d outside [1, %d]", opt->n_shards, MODEL_GEN_MAX_SHARDS);
    if (mkdir(out_dir, 0755) < 0 && errno != EEXIST)
        return ifd_error_set(err, -errno, "%s: cannot create directory: %s", out_dir, strerror(errno));

    char *cfg_path = NULL, *json = NULL;
    size_t n = 0;
    struct gen_tensor *t = tensor_list(&cfg, &n);
    if (asprintf(&cfg_path, "%s/config.json", out_dir) < 0)
        cfg_path = NULL;
    json = model_gen_config_json(&cfg, opt->dtype);
    if (!cfg_path || !json || !t) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if (opt->tokenizer_from && (r = copy_tokenizer(opt->tokenizer_from, out_dir, err)) < 0)
        goto out;
    if ((r = write_text(cfg_path, json, err)) < 0)
        goto out;
    uint64_t bytes = 0;
    if (opt->n_shards > 1) {
        /* A reader prefers model.safetensors: an old one must not shadow the shards. */
        remove_file(out_dir, "model.safetensors");
        r = write_sharded(out_dir, t, n, opt, &bytes, err);
    } else {
        remove_file(out_dir, "model.safetensors.index.json");
        r = write_weights_file(out_dir, "model.safetensors", t, n, opt, &bytes, err);
    }
    if (r < 0)
        goto out;
    if (ret_bytes)
        *ret_bytes = bytes;
out:
    free(t);
    free(json);
    free(cfg_path);
    return r;
}
