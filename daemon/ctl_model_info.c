/* ctl_model_info.c - `inferctl model info NAME`: what a checkpoint is and what
 * it costs to serve, from config.json and the safetensors headers alone.
 *
 * The files are mapped but no weight page is touched, so a 15 GB checkpoint
 * answers as fast as a small one. The byte counts are those the daemon uses:
 * a layer's tensors as stored and the f32 KV cache (core/model/model_bytes.h,
 * shared with daemon/cluster.c), the context default of the daemon
 * (inferd_config_context_length) and its max_sequences default
 * (inferd_config_init), and an even split as `layers = auto` draws it
 * (layer_split). Weights and KV cache only: activations, logits and the
 * tokenizer are not counted. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "ctl.h"
#include "layer_split.h"
#include "model/model_bytes.h"
#include "model/model_config.h"
#include "model/safetensors.h"

/* The master plus as many workers as a configuration may list. */
#define INFO_MAX_NODES (INFERD_MAX_WORKERS + 1)

/* What the headers say, summed once. */
struct info {
    char *dir;                /* resolved checkpoint directory */
    struct model_config cfg;
    st_model *st;
    uint64_t params;          /* elements, MLX-packed weights counted unpacked */
    uint64_t disk_bytes;      /* sum of the .safetensors files' sizes */
    uint64_t dtype_bytes[IFD_DTYPE_COUNT];
    uint64_t embed_bytes;     /* model.embed_tokens.* as stored (the table) */
    uint64_t embed_row_bytes; /* one row of it: what embedding a token reads */
    uint64_t norm_bytes;      /* model.norm.* */
    uint64_t head_bytes;      /* lm_head.*; for a tied model, the table it reads */
    uint64_t *layer_bytes;    /* [cfg.n_layers] */
    uint64_t kv_pos_layer;    /* KV bytes of one position in one layer */
};

/* One node of the chain: master first (embedding, final norm, head), then the
 * workers in order, each a contiguous layer range. */
struct info_node {
    int first, last;          /* [first, last) */
    uint64_t weight_bytes;
    uint64_t kv_bytes;
};

static void info_usage(FILE *f, const struct inferd_config *defaults)
{
    fprintf(f,
            "Usage: inferctl model info NAME [--split A,B,... | --nodes N] [--ctx N] [--seqs N] [--json]\n"
            "Describes the checkpoint NAME (a directory, or org/name in the Hugging Face cache) from\n"
            "config.json and the safetensors headers, without reading the weights: shape, storage,\n"
            "parameters, the bytes a decode step reads, and the memory of each node of a split.\n\n"
            "  --split A,B,...  layers per node in chain order; the first node is the master, which\n"
            "                   also holds the embedding, final norm and head (it may have 0 layers)\n"
            "  --nodes N        N nodes, layers split evenly as `layers = auto` does for equal workers\n"
            "  --ctx N          positions per sequence (default: the model's, at most %d)\n"
            "  --seqs N         sequences decoded together (default: the daemon's max_sequences, %d)\n"
            "  --json           one JSON object instead of the table\n",
            INFERD_DEFAULT_CONTEXT_CAP, defaults->max_seqs);
}

/* A decimal integer in [lo, hi] ending at `stop` or at the end of the string;
 * *ret_end is set past it. No sign, no base prefix, no blanks. */
static bool parse_int_until(const char *s, char stop, long lo, long hi, long *ret, const char **ret_end)
{
    if (*s < '0' || *s > '9')
        return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || (*end != '\0' && *end != stop) || v < lo || v > hi)
        return false;
    *ret = v;
    if (ret_end)
        *ret_end = end;
    return true;
}

static bool parse_int_arg(const char *s, long lo, long hi, int *ret)
{
    long v;
    const char *end;
    if (!parse_int_until(s, '\0', lo, hi, &v, &end))
        return false;
    *ret = (int)v;
    return true;
}

/* "8,8,8" -> counts, checked against the layer count: the master may hold 0
 * layers (all on workers), a worker at least 1, as the cluster requires. */
static int parse_split(const char *s, int n_layers, int *counts, int *ret_n, ifd_error *err)
{
    int n = 0;
    long sum = 0;
    const char *p = s;
    for (;;) {
        long v;
        const char *end;
        if (n == INFO_MAX_NODES)
            return ifd_error_set(err, -E2BIG, "--split '%s': more than %d nodes", s, INFO_MAX_NODES);
        if (!parse_int_until(p, ',', n == 0 ? 0 : 1, INT_MAX, &v, &end))
            return ifd_error_set(err, -EINVAL,
                                 "--split '%s': node %d needs a layer count (a number%s), comma-separated", s, n,
                                 n == 0 ? ", 0 or more for the master" : ", 1 or more for a worker");
        counts[n++] = (int)v;
        sum += v;
        if (*end == '\0')
            break;
        p = end + 1;
    }
    if (sum != n_layers)
        return ifd_error_set(err, -EINVAL, "--split '%s' holds %ld layers; the model has %d", s, sum, n_layers);
    *ret_n = n;
    return 0;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* True if `name` is stored under that name (not only reachable as an alias). */
static bool st_stores(const st_model *st, const char *name)
{
    const struct st_tensor *t = st_find(st, name);
    return t && strcmp(t->name, name) == 0;
}

/* Parameters of one stored tensor. MLX packs bits-wide codes into U32 words:
 * the weight has words * 32 / bits elements, and its .scales / .biases are
 * quantization data, not parameters (as mlx_lm counts them). Returns -ENOMEM
 * or 0 with *ret set. */
static int tensor_params(const struct info *in, const struct st_tensor *t, uint64_t *ret)
{
    const char *suffix = NULL;
    if (ends_with(t->name, ".scales"))
        suffix = ".scales";
    else if (ends_with(t->name, ".biases"))
        suffix = ".biases";
    else if (ends_with(t->name, ".weight") && t->dtype == IFD_DTYPE_U32)
        suffix = ".weight";
    *ret = t->n_elements;
    if (!suffix)
        return 0;
    /* The module path, then its weight's name: header names are untrusted,
     * so sized by the name, not by a guess. */
    const size_t slen = strlen(t->name) - strlen(suffix);
    char *stem = malloc(slen + sizeof(".weight"));
    if (!stem)
        return -ENOMEM;
    memcpy(stem, t->name, slen);
    stem[slen] = '\0';
    if (strcmp(suffix, ".weight") == 0) {
        struct model_quant q = model_config_quant_for(&in->cfg, stem);
        if (q.bits > 0)
            *ret = t->n_elements * 32 / (uint64_t)q.bits;
    } else {
        memcpy(stem + slen, ".weight", sizeof(".weight"));
        const struct st_tensor *w = st_find(in->st, stem);
        if (w && w->dtype == IFD_DTYPE_U32)
            *ret = 0;
    }
    free(stem);
    return 0;
}

static void info_finish(struct info *in)
{
    free(in->dir);
    model_config_finish(&in->cfg);
    st_close(in->st);
    free(in->layer_bytes);
}

/* Resolves NAME, parses config.json and the headers, and sums what the
 * report shows. Errors name the file at fault (the parsers' messages). */
static int info_load(const char *name, struct info *in, ifd_error *err)
{
    memset(in, 0, sizeof(*in));
    int r;
    if ((r = inferd_config_resolve_model(name, &in->dir, err)) < 0)
        return r;
    if ((r = model_config_load(in->dir, &in->cfg, err)) < 0)
        return r;
    if ((r = st_open(in->dir, &in->st, err)) < 0)
        return r;
    const struct model_config *c = &in->cfg;
    if (!(in->layer_bytes = calloc((size_t)c->n_layers, sizeof(*in->layer_bytes))))
        return ifd_error_set(err, -ENOMEM, "out of memory");
    for (int l = 0; l < c->n_layers; l++) {
        in->layer_bytes[l] = model_bytes_layer(in->st, l);
        if (!in->layer_bytes[l])
            return ifd_error_set(err, -EINVAL, "%s: config.json has %d layers but the checkpoint has no tensor of layer %d",
                                 in->dir, c->n_layers, l);
    }
    in->kv_pos_layer = model_bytes_kv_position(c);
    in->embed_bytes = model_bytes_with_prefix(in->st, "model.embed_tokens.");
    in->norm_bytes = model_bytes_with_prefix(in->st, "model.norm.");
    in->head_bytes = model_bytes_with_prefix(in->st, "lm_head.");
    /* A tied checkpoint may store the table as model.embed_tokens (and maybe a
     * copy as lm_head, which the engine ignores) or as lm_head only
     * (tinystories-656k): the head is that one table. */
    const bool tied_copy = c->tie_word_embeddings && st_stores(in->st, "model.embed_tokens.weight");
    if (c->tie_word_embeddings && in->embed_bytes)
        in->head_bytes = in->embed_bytes;
    if (!in->head_bytes || (!c->tie_word_embeddings && !in->embed_bytes))
        return ifd_error_set(err, -EINVAL, "%s: the checkpoint lacks %s", in->dir,
                             in->head_bytes ? "model.embed_tokens.weight" : "lm_head.weight");
    for (size_t i = 0; i < st_count(in->st); i++) {
        const struct st_tensor *t = st_at(in->st, i);
        in->dtype_bytes[t->dtype] += t->nbytes;
        if (tied_copy && strncmp(t->name, "lm_head.", 8) == 0)
            continue;
        uint64_t p;
        if (tensor_params(in, t, &p) < 0)
            return ifd_error_set(err, -ENOMEM, "out of memory");
        in->params += p;
        /* Embedding one token reads one row of each embedding tensor (the
         * weight, and the scales and biases of a quantized one). */
        if (strncmp(t->name, "model.embed_tokens.", 19) == 0 && t->n_dims >= 1 && t->shape[0] > 0)
            in->embed_row_bytes += t->nbytes / (uint64_t)t->shape[0];
    }
    for (int f = 0; f < st_file_count(in->st); f++) {
        struct stat sb;
        if (stat(st_file_path(in->st, f), &sb) < 0)
            return ifd_error_set(err, -errno, "%s: %s", st_file_path(in->st, f), strerror(errno));
        in->disk_bytes += (uint64_t)sb.st_size;
    }
    return 0;
}

/* What the master holds besides its layers: the embedding table, the final
 * norm and the head (one table when tied). */
static uint64_t info_master_extra(const struct info *in)
{
    if (in->cfg.tie_word_embeddings)
        return in->head_bytes + in->norm_bytes;
    return in->embed_bytes + in->norm_bytes + in->head_bytes;
}

/* Weight bytes one decode step reads: every layer, the final norm, the head,
 * and for an untied model one embedding row (a tied model's row lies in the
 * table the head reads anyway). */
static uint64_t info_weights_per_token(const struct info *in)
{
    uint64_t b = in->norm_bytes + in->head_bytes;
    for (int l = 0; l < in->cfg.n_layers; l++)
        b += in->layer_bytes[l];
    if (!in->cfg.tie_word_embeddings)
        b += in->embed_row_bytes;
    return b;
}

static void info_nodes(const struct info *in, const int *counts, int n, int n_ctx, int n_seqs, struct info_node *nodes)
{
    int first = 0;
    for (int i = 0; i < n; i++) {
        struct info_node *nd = &nodes[i];
        nd->first = first;
        nd->last = first + counts[i];
        nd->weight_bytes = i == 0 ? info_master_extra(in) : 0;
        for (int l = nd->first; l < nd->last; l++)
            nd->weight_bytes += in->layer_bytes[l];
        nd->kv_bytes = (uint64_t)counts[i] * in->kv_pos_layer * (uint64_t)n_ctx * (uint64_t)n_seqs;
        first = nd->last;
    }
}

/* "F32", "BF16 + F32" (largest first), or "MLX affine 4-bit g64". */
static void storage_name(const struct info *in, char *buf, size_t len)
{
    size_t off = 0;
    if (in->cfg.quant.bits > 0) {
        off += (size_t)snprintf(buf, len, "MLX affine %d-bit g%d", in->cfg.quant.bits, in->cfg.quant.group_size);
        if (in->cfg.n_quant_overrides && off < len)
            snprintf(buf + off, len - off, " (%d per-module overrides)", in->cfg.n_quant_overrides);
        return;
    }
    bool used[IFD_DTYPE_COUNT] = {false};
    buf[0] = '\0';
    for (;;) {
        int best = -1;
        for (int d = 0; d < IFD_DTYPE_COUNT; d++)
            if (!used[d] && in->dtype_bytes[d] && (best < 0 || in->dtype_bytes[d] > in->dtype_bytes[best]))
                best = d;
        if (best < 0 || off >= len)
            return;
        used[best] = true;
        off += (size_t)snprintf(buf + off, len - off, "%s%s", off ? " + " : "", ifd_dtype_name((enum ifd_dtype)best));
    }
}

static void fmt_bytes(uint64_t b, char *buf, size_t len)
{
    if (b < 1024)
        snprintf(buf, len, "%llu B", (unsigned long long)b);
    else if (b < (1ull << 20))
        snprintf(buf, len, "%.1f KiB", (double)b / 1024.0);
    else if (b < (1ull << 30))
        snprintf(buf, len, "%.1f MiB", (double)b / 1048576.0);
    else
        snprintf(buf, len, "%.2f GiB", (double)b / 1073741824.0);
}

static void fmt_count(uint64_t n, char *buf, size_t len)
{
    if (n < 1000)
        snprintf(buf, len, "%llu", (unsigned long long)n);
    else if (n < 1000000)
        snprintf(buf, len, "%.1f K", (double)n / 1e3);
    else if (n < 1000000000)
        snprintf(buf, len, "%.1f M", (double)n / 1e6);
    else
        snprintf(buf, len, "%.2f B", (double)n / 1e9);
}

static void print_text(const struct info *in, const struct info_node *nodes, int n, int n_ctx, int n_seqs)
{
    const struct model_config *c = &in->cfg;
    char a[32], b[32], d[32], storage[128];
    storage_name(in, storage, sizeof(storage));
    printf("model             %s\n", in->dir);
    printf("architecture      %s\n", c->arch_name);
    printf("layers            %d\n", c->n_layers);
    printf("hidden size       %d\n", c->hidden_size);
    printf("heads             %d (KV heads %d, head_dim %d)\n", c->n_heads, c->n_kv_heads, c->head_dim);
    printf("intermediate size %d\n", c->intermediate_size);
    printf("vocab             %d\n", c->vocab_size);
    printf("context length    %d\n", c->max_position_embeddings);
    printf("tied embeddings   %s\n", c->tie_word_embeddings ? "yes" : "no");
    printf("storage           %s\n", storage);
    fmt_bytes(in->disk_bytes, a, sizeof(a));
    printf("files             %d (%s on disk, %llu bytes)\n", st_file_count(in->st), a,
           (unsigned long long)in->disk_bytes);
    fmt_count(in->params, a, sizeof(a));
    printf("parameters        %s (%llu)\n", a, (unsigned long long)in->params);
    fmt_bytes(info_weights_per_token(in), a, sizeof(a));
    fmt_bytes(in->kv_pos_layer * (uint64_t)c->n_layers, b, sizeof(b));
    printf("per token         %s of weights read per decode step; %s of KV cache per position\n", a, b);
    printf("                  (%s, %d layers x K and V x %d values)\n", ifd_dtype_name(MODEL_KV_DTYPE), c->n_layers,
           c->n_kv_heads * c->head_dim);
    printf("\n%d node%s, KV cache for %d positions x %d sequences:\n", n, n == 1 ? "" : "s", n_ctx, n_seqs);
    printf("  %-4s  %-6s  %-9s  %12s  %12s  %12s\n", "node", "role", "layers", "weights", "KV cache", "total");
    uint64_t tw = 0, tk = 0;
    for (int i = 0; i < n; i++) {
        char range[32];
        if (nodes[i].last > nodes[i].first)
            snprintf(range, sizeof(range), "%d-%d", nodes[i].first, nodes[i].last - 1);
        else
            snprintf(range, sizeof(range), "none");
        fmt_bytes(nodes[i].weight_bytes, a, sizeof(a));
        fmt_bytes(nodes[i].kv_bytes, b, sizeof(b));
        fmt_bytes(nodes[i].weight_bytes + nodes[i].kv_bytes, d, sizeof(d));
        printf("  %-4d  %-6s  %-9s  %12s  %12s  %12s\n", i, i == 0 ? "master" : "worker", range, a, b, d);
        tw += nodes[i].weight_bytes;
        tk += nodes[i].kv_bytes;
    }
    fmt_bytes(tw, a, sizeof(a));
    fmt_bytes(tk, b, sizeof(b));
    fmt_bytes(tw + tk, d, sizeof(d));
    printf("  %-4s  %-6s  %-9s  %12s  %12s  %12s\n", "all", "", "", a, b, d);
}

/* Numbers as JSON numbers: exact while below 2^53, which byte counts and
 * parameter counts of any real model are. */
static cJSON *info_json(const struct info *in, const struct info_node *nodes, int n, int n_ctx, int n_seqs)
{
    const struct model_config *c = &in->cfg;
    char storage[128];
    storage_name(in, storage, sizeof(storage));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", in->dir);
    cJSON_AddStringToObject(o, "architecture", c->arch_name);
    cJSON_AddNumberToObject(o, "layers", c->n_layers);
    cJSON_AddNumberToObject(o, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(o, "heads", c->n_heads);
    cJSON_AddNumberToObject(o, "kv_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(o, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "context_length", c->max_position_embeddings);
    cJSON_AddBoolToObject(o, "tied_embeddings", c->tie_word_embeddings);
    cJSON_AddStringToObject(o, "storage", storage);
    if (c->quant.bits > 0) {
        cJSON *q = cJSON_AddObjectToObject(o, "quantization");
        cJSON_AddNumberToObject(q, "bits", c->quant.bits);
        cJSON_AddNumberToObject(q, "group_size", c->quant.group_size);
        cJSON_AddNumberToObject(q, "overrides", c->n_quant_overrides);
    } else {
        cJSON_AddNullToObject(o, "quantization");
    }
    cJSON *dt = cJSON_AddObjectToObject(o, "dtype_bytes");
    for (int d = 0; d < IFD_DTYPE_COUNT; d++)
        if (in->dtype_bytes[d])
            cJSON_AddNumberToObject(dt, ifd_dtype_name((enum ifd_dtype)d), (double)in->dtype_bytes[d]);
    cJSON_AddNumberToObject(o, "files", st_file_count(in->st));
    cJSON_AddNumberToObject(o, "bytes_on_disk", (double)in->disk_bytes);
    cJSON_AddNumberToObject(o, "parameters", (double)in->params);
    cJSON *pt = cJSON_AddObjectToObject(o, "per_token");
    cJSON_AddNumberToObject(pt, "weight_bytes", (double)info_weights_per_token(in));
    cJSON_AddNumberToObject(pt, "kv_bytes", (double)(in->kv_pos_layer * (uint64_t)c->n_layers));
    cJSON_AddStringToObject(pt, "kv_dtype", ifd_dtype_name(MODEL_KV_DTYPE));
    cJSON *parts = cJSON_AddObjectToObject(o, "weight_parts");
    uint64_t layers = 0;
    for (int l = 0; l < c->n_layers; l++)
        layers += in->layer_bytes[l];
    cJSON_AddNumberToObject(parts, "layers", (double)layers);
    cJSON_AddNumberToObject(parts, "embedding", (double)in->embed_bytes);
    cJSON_AddNumberToObject(parts, "embedding_row", (double)in->embed_row_bytes);
    cJSON_AddNumberToObject(parts, "final_norm", (double)in->norm_bytes);
    cJSON_AddNumberToObject(parts, "head", (double)in->head_bytes);
    cJSON_AddNumberToObject(o, "ctx", n_ctx);
    cJSON_AddNumberToObject(o, "seqs", n_seqs);
    cJSON *arr = cJSON_AddArrayToObject(o, "nodes");
    uint64_t tw = 0, tk = 0;
    for (int i = 0; i < n; i++) {
        cJSON *nd = cJSON_CreateObject();
        cJSON_AddNumberToObject(nd, "node", i);
        cJSON_AddStringToObject(nd, "role", i == 0 ? "master" : "worker");
        cJSON_AddNumberToObject(nd, "layer_first", nodes[i].first);
        cJSON_AddNumberToObject(nd, "layer_last", nodes[i].last);
        cJSON_AddNumberToObject(nd, "layers", nodes[i].last - nodes[i].first);
        cJSON_AddNumberToObject(nd, "weight_bytes", (double)nodes[i].weight_bytes);
        cJSON_AddNumberToObject(nd, "kv_bytes", (double)nodes[i].kv_bytes);
        cJSON_AddNumberToObject(nd, "total_bytes", (double)(nodes[i].weight_bytes + nodes[i].kv_bytes));
        cJSON_AddItemToArray(arr, nd);
        tw += nodes[i].weight_bytes;
        tk += nodes[i].kv_bytes;
    }
    cJSON *t = cJSON_AddObjectToObject(o, "total");
    cJSON_AddNumberToObject(t, "weight_bytes", (double)tw);
    cJSON_AddNumberToObject(t, "kv_bytes", (double)tk);
    cJSON_AddNumberToObject(t, "total_bytes", (double)(tw + tk));
    return o;
}

int ctl_model_info_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"split", required_argument, NULL, 's'},
        {"nodes", required_argument, NULL, 'n'},
        {"ctx", required_argument, NULL, 'c'},
        {"seqs", required_argument, NULL, 'q'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct inferd_config defaults;
    if (inferd_config_init(&defaults) < 0) {
        fprintf(stderr, "inferctl model info: out of memory\n");
        return 1;
    }
    const char *split = NULL;
    int n_nodes = 0, n_ctx = 0, n_seqs = 0;
    bool json = false;
    int c, rc = 2;
    struct info in = {0};
    ifd_error err = {{0}};
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            split = optarg;
            break;
        case 'n':
            if (!parse_int_arg(optarg, 1, INFO_MAX_NODES, &n_nodes)) {
                fprintf(stderr, "inferctl model info: bad --nodes '%s' (1..%d)\n", optarg, INFO_MAX_NODES);
                goto out;
            }
            break;
        case 'c':
            /* The bound of [server] context_length. */
            if (!parse_int_arg(optarg, 1, 1 << 20, &n_ctx)) {
                fprintf(stderr, "inferctl model info: bad --ctx '%s' (1..%d)\n", optarg, 1 << 20);
                goto out;
            }
            break;
        case 'q':
            /* The bound of [server] max_sequences. */
            if (!parse_int_arg(optarg, 1, 1024, &n_seqs)) {
                fprintf(stderr, "inferctl model info: bad --seqs '%s' (1..1024)\n", optarg);
                goto out;
            }
            break;
        case 'j':
            json = true;
            break;
        case 'h':
            info_usage(stdout, &defaults);
            rc = 0;
            goto out;
        default:
            info_usage(stderr, &defaults);
            goto out;
        }
    }
    if (optind != argc - 1) {
        info_usage(stderr, &defaults);
        goto out;
    }
    if (split && n_nodes) {
        fprintf(stderr, "inferctl model info: --split and --nodes exclude each other\n");
        goto out;
    }
    rc = 1;
    if (info_load(argv[optind], &in, &err) < 0) {
        fprintf(stderr, "inferctl model info: %s\n", err.msg);
        goto out;
    }
    const int n_layers = in.cfg.n_layers;
    if (!n_ctx)
        n_ctx = inferd_config_context_length(&defaults, in.cfg.max_position_embeddings);
    if (!n_seqs)
        n_seqs = defaults.max_seqs;
    int counts[INFO_MAX_NODES], n = 1;
    counts[0] = n_layers;
    if (split && parse_split(split, n_layers, counts, &n, &err) < 0) {
        fprintf(stderr, "inferctl model info: %s\n", err.msg);
        rc = 2;
        goto out;
    }
    if (n_nodes) {
        double speed[INFO_MAX_NODES];
        int max_layers[INFO_MAX_NODES];
        for (int i = 0; i < n_nodes; i++)
            speed[i] = 1.0, max_layers[i] = INT_MAX;
        if (layer_split(n_layers, n_nodes, speed, max_layers, counts) < 0) {
            fprintf(stderr, "inferctl model info: --nodes %d: the model has only %d layers\n", n_nodes, n_layers);
            rc = 2;
            goto out;
        }
        n = n_nodes;
    }
    struct info_node nodes[INFO_MAX_NODES];
    info_nodes(&in, counts, n, n_ctx, n_seqs, nodes);
    if (json) {
        cJSON *o = info_json(&in, nodes, n, n_ctx, n_seqs);
        char *s = o ? cJSON_Print(o) : NULL;
        cJSON_Delete(o);
        if (!s) {
            fprintf(stderr, "inferctl model info: out of memory\n");
            goto out;
        }
        printf("%s\n", s);
        free(s);
    } else {
        print_text(&in, nodes, n, n_ctx, n_seqs);
    }
    rc = 0;
out:
    info_finish(&in);
    inferd_config_finish(&defaults);
    return rc;
}
