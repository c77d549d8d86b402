/* model.c - binds checkpoint tensors to their roles in the network.
 *
 * Every weight is checked against the shape the config implies before it is
 * used; a missing or misshapen tensor is an error naming it. Float weights
 * point into the mapping as stored. MLX-quantized ones (U32 words plus
 * .scales/.biases) are bound with the bits/group size config.json gives that
 * module. With opts->quantize_bits, float matrices are quantized at load into
 * buffers the model owns (in panels with opts->quantize_into_panels), and
 * the pages of the float originals are given back. */
#include "model/model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/quant.h"
#include "base/buf.h"

/* Buffers made at load (quantize on load), freed with the model. */
struct model_owned {
    void **bufs;
    size_t n, cap;
};

struct model_load_opts model_load_opts_default(void)
{
    return (struct model_load_opts){
        .layer_first = 0,
        .layer_last = -1,
        .bind_embed = true,
        .bind_head = true,
        .quantize_bits = 0,
        .quantize_group_size = 64,
        .quantize_into_panels = false,
    };
}

static int owned_add(struct model *m, void *buf)
{
    struct model_owned *o = m->owned;
    void **b = buf_grow(o->bufs, &o->cap, o->n + 1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    o->bufs = b;
    o->bufs[o->n++] = buf;
    return 0;
}

static const char *st_origin(const struct model *m, const struct st_tensor *t)
{
    return st_file_path(m->st, t->file_index);
}

/* A norm weight or bias: [n] in a float dtype. */
static int bind_vector(struct model *m, const char *name, int64_t n, struct ifd_weight *w, ifd_error *err)
{
    const struct st_tensor *t = st_find(m->st, name);
    if (!t)
        return ifd_error_set(err, -ENOENT, "checkpoint has no tensor '%s'", name);
    if (!ifd_dtype_is_float(t->dtype))
        return ifd_error_set(err, -EINVAL, "%s: tensor '%s': dtype %s, want F32, F16 or BF16", st_origin(m, t),
                             name, ifd_dtype_name(t->dtype));
    if (t->n_dims != 1 || t->shape[0] != n)
        return ifd_error_set(err, -EINVAL, "%s: tensor '%s': shape [%lld%s], want [%lld]", st_origin(m, t), name,
                             (long long)t->shape[0], t->n_dims == 1 ? "" : ", ...", (long long)n);
    *w = (struct ifd_weight){.dtype = t->dtype, .data = t->data, .rows = 1, .cols = n};
    return 0;
}

static int check_2d(const struct model *m, const struct st_tensor *t, const char *name, int64_t rows, int64_t cols,
                    ifd_error *err)
{
    if (t->n_dims != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return ifd_error_set(err, -EINVAL, "%s: tensor '%s': shape [%lld, %lld]%s, want [%lld, %lld]",
                             st_origin(m, t), name, (long long)t->shape[0],
                             (long long)(t->n_dims > 1 ? t->shape[1] : 0), t->n_dims == 2 ? "" : " (rank differs)",
                             (long long)rows, (long long)cols);
    return 0;
}

/* A matrix [rows, cols] of module `module` ("model.layers.0.mlp.up_proj"):
 * float as stored, or MLX-quantized when the checkpoint stores U32 words. */
static int bind_matrix(struct model *m, const char *module, int64_t rows, int64_t cols,
                       const struct model_load_opts *opts, struct ifd_weight *w, ifd_error *err)
{
    char name[256], sname[256], bname[256];
    snprintf(name, sizeof(name), "%s.weight", module);
    const struct st_tensor *t = st_find(m->st, name);
    if (!t && strcmp(module, "model.embed_tokens") == 0 && m->cfg.tie_word_embeddings) {
        /* tied: the checkpoint may store the shared tensor as the head only */
        snprintf(name, sizeof(name), "lm_head.weight");
        t = st_find(m->st, name);
    }
    if (!t)
        return ifd_error_set(err, -ENOENT, "checkpoint has no tensor '%s'", name);

    if (t->dtype == IFD_DTYPE_U32) {
        struct model_quant q = model_config_quant_for(&m->cfg, module);
        if (q.bits == 0)
            return ifd_error_set(err, -EINVAL,
                                 "%s: tensor '%s' is U32 (quantized) but config.json gives no quantization for '%s'",
                                 st_origin(m, t), name, module);
        if (!quant_layout_supported(q.bits, q.group_size) || cols % q.group_size != 0 || (cols * q.bits) % 32 != 0)
            return ifd_error_set(err, -ENOTSUP, "%s: tensor '%s': %d-bit quantization with group size %d over %lld columns is not supported",
                                 st_origin(m, t), name, q.bits, q.group_size, (long long)cols);
        int r = check_2d(m, t, name, rows, cols * q.bits / 32, err);
        if (r < 0)
            return r;
        const char *stem = strncmp(name, "lm_head", 7) == 0 ? "lm_head" : module;
        snprintf(sname, sizeof(sname), "%s.scales", stem);
        snprintf(bname, sizeof(bname), "%s.biases", stem);
        const struct st_tensor *ts = st_find(m->st, sname), *tb = st_find(m->st, bname);
        if (!ts || !tb)
            return ifd_error_set(err, -ENOENT, "checkpoint has no tensor '%s'", !ts ? sname : bname);
        if ((r = check_2d(m, ts, sname, rows, cols / q.group_size, err)) < 0 ||
            (r = check_2d(m, tb, bname, rows, cols / q.group_size, err)) < 0)
            return r;
        if (!ifd_dtype_is_float(ts->dtype) || ts->dtype != tb->dtype)
            return ifd_error_set(err, -EINVAL, "%s: tensors '%s' (%s) and '%s' (%s): want one float dtype",
                                 st_origin(m, ts), sname, ifd_dtype_name(ts->dtype), bname,
                                 ifd_dtype_name(tb->dtype));
        *w = (struct ifd_weight){.dtype = IFD_DTYPE_U32, .data = t->data, .rows = rows, .cols = cols,
                                 .bits = q.bits, .group_size = q.group_size, .qparam_dtype = ts->dtype,
                                 .scales = ts->data, .biases = tb->data};
        return 0;
    }
    if (!ifd_dtype_is_float(t->dtype))
        return ifd_error_set(err, -EINVAL, "%s: tensor '%s': dtype %s, want F32, F16, BF16 or MLX U32",
                             st_origin(m, t), name, ifd_dtype_name(t->dtype));
    int r = check_2d(m, t, name, rows, cols, err);
    if (r < 0)
        return r;
    *w = (struct ifd_weight){.dtype = t->dtype, .data = t->data, .rows = rows, .cols = cols};

    if (opts->quantize_bits) {
        struct ifd_weight qw;
        void *owned;
        int gs = opts->quantize_group_size > 0 ? opts->quantize_group_size : 64;
        r = quant_weight_quantize(w, opts->quantize_bits, gs, &qw, &owned, err);
        if (r < 0) {
            ifd_error_prefix(err, "quantizing '%s'", name);
            return r;
        }
        if (opts->quantize_into_panels && quant_panels_wanted(&qw)) {
            struct ifd_weight pw;
            void *panels;
            r = quant_weight_to_panels(&qw, &pw, &panels, err);
            free(owned);
            if (r < 0) {
                ifd_error_prefix(err, "quantizing '%s'", name);
                return r;
            }
            qw = pw;
            owned = panels;
        }
        if ((r = owned_add(m, owned)) < 0) {
            free(owned);
            return ifd_error_set(err, r, "out of memory quantizing '%s'", name);
        }
        /* Nothing reads the float original again: its pages go back (a
         * worker's image of received weights is most of its memory). */
        st_release_pages(m->st, t->data, (size_t)rows * (size_t)cols * ifd_dtype_size(t->dtype));
        *w = qw;
    }
    return 0;
}

/* "model.layers.<l>.<suffix>" in buf [192], returned for use inline. */
static const char *layer_name(char *buf, int l, const char *suffix)
{
    snprintf(buf, 192, "model.layers.%d.%s", l, suffix);
    return buf;
}

static int bind_layer(struct model *m, int l, const struct model_load_opts *opts, ifd_error *err)
{
    const struct model_config *c = &m->cfg;
    struct layer_weights *L = &m->layers[l];
    const int64_t hidden = c->hidden_size, q_dim = (int64_t)c->n_heads * c->head_dim,
                  kv_dim = (int64_t)c->n_kv_heads * c->head_dim, ffn = c->intermediate_size;
    char n[192];
    int r;
    if ((r = bind_vector(m, layer_name(n, l, "input_layernorm.weight"), hidden, &L->attn_norm, err)) < 0 ||
        (r = bind_matrix(m, layer_name(n, l, "self_attn.q_proj"), q_dim, hidden, opts, &L->wq, err)) < 0 ||
        (r = bind_matrix(m, layer_name(n, l, "self_attn.k_proj"), kv_dim, hidden, opts, &L->wk, err)) < 0 ||
        (r = bind_matrix(m, layer_name(n, l, "self_attn.v_proj"), kv_dim, hidden, opts, &L->wv, err)) < 0 ||
        (r = bind_matrix(m, layer_name(n, l, "self_attn.o_proj"), hidden, q_dim, opts, &L->wo, err)) < 0 ||
        (r = bind_vector(m, layer_name(n, l, "post_attention_layernorm.weight"), hidden, &L->mlp_norm, err)) < 0 ||
        (r = bind_matrix(m, layer_name(n, l, "mlp.gate_proj"), ffn, hidden, opts, &L->w_gate, err)) < 0 ||
        (r = bind_matrix(m, layer_name(n, l, "mlp.up_proj"), ffn, hidden, opts, &L->w_up, err)) < 0 ||
        (r = bind_matrix(m, layer_name(n, l, "mlp.down_proj"), hidden, ffn, opts, &L->w_down, err)) < 0)
        return r;
    if (c->attention_bias &&
        ((r = bind_vector(m, layer_name(n, l, "self_attn.q_proj.bias"), q_dim, &L->bq, err)) < 0 ||
         (r = bind_vector(m, layer_name(n, l, "self_attn.k_proj.bias"), kv_dim, &L->bk, err)) < 0 ||
         (r = bind_vector(m, layer_name(n, l, "self_attn.v_proj.bias"), kv_dim, &L->bv, err)) < 0))
        return r;
    if (c->qk_norm &&
        ((r = bind_vector(m, layer_name(n, l, "self_attn.q_norm.weight"), c->head_dim, &L->q_norm, err)) < 0 ||
         (r = bind_vector(m, layer_name(n, l, "self_attn.k_norm.weight"), c->head_dim, &L->k_norm, err)) < 0))
        return r;
    return 0;
}

int model_bind(st_model *st, struct model_config *cfg, const struct model_load_opts *opts, struct model **ret,
               ifd_error *err)
{
    int first = opts->layer_first, last = opts->layer_last < 0 ? cfg->n_layers : opts->layer_last;
    if (first < 0 || first > last || last > cfg->n_layers)
        return ifd_error_set(err, -EINVAL, "layer range [%d, %d) is not inside [0, %d)", opts->layer_first,
                             opts->layer_last, cfg->n_layers);
    if (opts->quantize_bits && !quant_layout_supported(opts->quantize_bits, opts->quantize_group_size > 0 ? opts->quantize_group_size : 64))
        return ifd_error_set(err, -EINVAL, "quantize on load: %d bits with group size %d is not supported",
                             opts->quantize_bits, opts->quantize_group_size);

    struct model *m = calloc(1, sizeof(*m));
    struct model_owned *owned = calloc(1, sizeof(*owned));
    struct layer_weights *layers = calloc((size_t)(cfg->n_layers > 0 ? cfg->n_layers : 1), sizeof(*layers));
    if (!m || !owned || !layers) {
        free(m);
        free(owned);
        free(layers);
        return ifd_error_set(err, -ENOMEM, "out of memory binding the model");
    }
    m->cfg = *cfg;
    m->st = st;
    m->owned = owned;
    m->layers = layers;
    m->layer_first = first;
    m->layer_last = last;

    const int64_t hidden = cfg->hidden_size, vocab = cfg->vocab_size;
    int r = 0;
    for (int l = first; l < last && r >= 0; l++)
        r = bind_layer(m, l, opts, err);
    if (r >= 0 && (opts->bind_embed || (opts->bind_head && cfg->tie_word_embeddings)))
        r = bind_matrix(m, "model.embed_tokens", vocab, hidden, opts, &m->embed, err);
    if (r >= 0 && opts->bind_head) {
        r = bind_vector(m, "model.norm.weight", hidden, &m->final_norm, err);
        if (r >= 0) {
            if (cfg->tie_word_embeddings)
                m->lm_head = m->embed;
            else
                r = bind_matrix(m, "lm_head", vocab, hidden, opts, &m->lm_head, err);
        }
    }
    if (r < 0) {
        /* the caller keeps st and cfg on failure */
        m->st = NULL;
        memset(&m->cfg, 0, sizeof(m->cfg));
        model_destroy(m);
        return r;
    }
    memset(cfg, 0, sizeof(*cfg)); /* ownership moved into m->cfg */
    *ret = m;
    return 0;
}

int model_load(const char *dir, const struct model_load_opts *opts, struct model **ret, ifd_error *err)
{
    struct model_config cfg;
    st_model *st = NULL;
    int r = model_config_load(dir, &cfg, err);
    if (r < 0)
        return r;
    if ((r = st_open(dir, &st, err)) < 0) {
        model_config_finish(&cfg);
        return r;
    }
    if ((r = model_bind(st, &cfg, opts, ret, err)) < 0) {
        st_close(st);
        model_config_finish(&cfg);
        return r;
    }
    return 0;
}

void model_destroy(struct model *m)
{
    if (!m)
        return;
    struct model_owned *o = m->owned;
    if (o) {
        for (size_t i = 0; i < o->n; i++)
            free(o->bufs[i]);
        free(o->bufs);
        free(o);
    }
    free(m->layers);
    st_close(m->st);
    model_config_finish(&m->cfg);
    free(m);
}

/* Float matrices smaller than a huge page gain nothing from a copy. */
#define DENSE_COPY_MIN_BYTES ((size_t)2 << 20)

int model_weight_for_cpu(const struct model *m, const struct ifd_weight *w, struct ifd_weight *ret, void **ret_owned,
                         ifd_error *err)
{
    *ret = *w;
    *ret_owned = NULL;
    if (!w->data)
        return 0;
    const size_t data_bytes = w->bits ? (size_t)w->rows * (size_t)(w->cols * w->bits / 8)
                                      : (size_t)w->rows * (size_t)w->cols * ifd_dtype_size(w->dtype);
    const size_t param_bytes = w->bits ? (size_t)w->rows * (size_t)(w->cols / w->group_size) *
                                             ifd_dtype_size(w->qparam_dtype)
                                       : 0;
    /* Only a copy whose source can be given back (a file's mapping, or the
     * image of a worker's received weights): weights quantized on load are
     * in memory that stays in use, and a copy would hold them twice. */
    if (!st_in_mapping(m->st, w->data, data_bytes) ||
        (w->bits && (!st_in_mapping(m->st, w->scales, param_bytes) || !st_in_mapping(m->st, w->biases, param_bytes))))
        return 0;
    if (!w->bits) {
        /* A float matrix as it is, on huge pages: the checkpoint's mapping
         * has 4 KiB pages, and decode streams every matrix once per token
         * (BF16 bench model, --simd avx2, 2 threads, 5 alternated pairs:
         * decode 30.6-32.5 -> 33.0-33.6 tok/s, prefill 185-198 -> 200-207). */
        if (data_bytes < DENSE_COPY_MIN_BYTES)
            return 0;
        void *buf = buf_alloc_stream(data_bytes);
        if (!buf)
            return ifd_error_set(err, -ENOMEM, "out of memory for a copy of a %lld x %lld weight (%zu MiB)",
                                 (long long)w->rows, (long long)w->cols, data_bytes >> 20);
        memcpy(buf, w->data, data_bytes);
        st_release_pages(m->st, w->data, data_bytes);
        ret->data = buf;
        *ret_owned = buf;
        return 0;
    }
    if (!quant_panels_wanted(w))
        return 0;
    int r = quant_weight_to_panels(w, ret, ret_owned, err);
    if (r < 0)
        return r;
    st_release_pages(m->st, w->data, data_bytes);
    st_release_pages(m->st, w->scales, param_bytes);
    st_release_pages(m->st, w->biases, param_bytes);
    return 0;
}

/* ---- tensor names for a subset ------------------------------------------- */

struct name_list {
    char **v;
    size_t n, cap;
};

/* Appends the canonical name of `name` (and of .scales/.biases when the
 * stored tensor is quantized) if the checkpoint has it; duplicates skipped. */
static int names_add(struct name_list *nl, const st_model *st, const char *name, bool required, ifd_error *err)
{
    const struct st_tensor *t = st_find(st, name);
    if (!t) {
        if (required)
            return ifd_error_set(err, -ENOENT, "checkpoint has no tensor '%s'", name);
        return 0;
    }
    for (size_t i = 0; i < nl->n; i++)
        if (strcmp(nl->v[i], t->name) == 0)
            return 0;
    char **v = buf_grow(nl->v, &nl->cap, nl->n + 3, sizeof(*v));
    if (!v)
        return ifd_error_set(err, -ENOMEM, "out of memory listing tensors");
    nl->v = v;
    if (!(nl->v[nl->n] = strdup(t->name)))
        return ifd_error_set(err, -ENOMEM, "out of memory listing tensors");
    nl->v[++nl->n] = NULL;
    if (t->dtype == IFD_DTYPE_U32) {
        size_t len = strlen(t->name);
        if (len > 7 && strcmp(t->name + len - 7, ".weight") == 0) {
            char buf[320];
            int r;
            snprintf(buf, sizeof(buf), "%.*s.scales", (int)(len - 7), t->name);
            if ((r = names_add(nl, st, buf, true, err)) < 0)
                return r;
            snprintf(buf, sizeof(buf), "%.*s.biases", (int)(len - 7), t->name);
            if ((r = names_add(nl, st, buf, true, err)) < 0)
                return r;
        }
    }
    return 0;
}

int model_tensor_names(const struct model *m, int first, int last, bool embed, bool head, char ***ret_names,
                       size_t *ret_n, ifd_error *err)
{
    static const char *const layer_parts[] = {
        "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
        "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
        "mlp.gate_proj.weight",   "mlp.up_proj.weight",      "mlp.down_proj.weight",
    };
    static const char *const optional_parts[] = {
        "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
        "self_attn.q_norm.weight", "self_attn.k_norm.weight",
    };
    if (first < 0 || first > last || last > m->cfg.n_layers)
        return ifd_error_set(err, -EINVAL, "layer range [%d, %d) is not inside [0, %d)", first, last,
                             m->cfg.n_layers);
    struct name_list nl = {0};
    char buf[256];
    int r = 0;
    for (int l = first; l < last && r >= 0; l++) {
        for (size_t i = 0; i < sizeof(layer_parts) / sizeof(layer_parts[0]) && r >= 0; i++) {
            snprintf(buf, sizeof(buf), "model.layers.%d.%s", l, layer_parts[i]);
            r = names_add(&nl, m->st, buf, true, err);
        }
        for (size_t i = 0; i < sizeof(optional_parts) / sizeof(optional_parts[0]) && r >= 0; i++) {
            snprintf(buf, sizeof(buf), "model.layers.%d.%s", l, optional_parts[i]);
            r = names_add(&nl, m->st, buf, false, err);
        }
    }
    if (r >= 0 && (embed || (head && m->cfg.tie_word_embeddings))) {
        r = names_add(&nl, m->st, "model.embed_tokens.weight", false, err);
        if (r >= 0 && !st_find(m->st, "model.embed_tokens.weight"))
            r = names_add(&nl, m->st, "lm_head.weight", true, err);
    }
    if (r >= 0 && head) {
        r = names_add(&nl, m->st, "model.norm.weight", true, err);
        if (r >= 0 && !m->cfg.tie_word_embeddings)
            r = names_add(&nl, m->st, "lm_head.weight", true, err);
    }
    if (r >= 0 && !nl.v) {
        if (!(nl.v = calloc(1, sizeof(*nl.v))))
            r = ifd_error_set(err, -ENOMEM, "out of memory listing tensors");
    }
    if (r < 0) {
        model_tensor_names_free(nl.v);
        return r;
    }
    *ret_names = nl.v;
    *ret_n = nl.n;
    return 0;
}

void model_tensor_names_free(char **names)
{
    if (!names)
        return;
    for (char **p = names; *p; p++)
        free(*p);
    free(names);
}
