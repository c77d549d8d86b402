/* cpu_stage.c - layers [first, last) of a Llama/Qwen2/Qwen3 decoder on the CPU.
 *
 * Per layer, for a batch of T tokens (HF semantics, activations f32):
 *   h = rmsnorm(x) * attn_norm
 *   q, k, v = Wq h (+bq), Wk h (+bk), Wv h (+bv)
 *   Qwen3: q, k = per-head rmsnorm(q) * q_norm, rmsnorm(k) * k_norm
 *   q, k = rope(q, k) at each token's position (rotate-half pairs i, i + d/2)
 *   k, v -> the cache of the token's sequence slot
 *   a = softmax(q K^T / sqrt(d), causal over the slot) V      (GQA)
 *   x += Wo a
 *   h = rmsnorm(x) * mlp_norm
 *   x += Wdown (silu(Wgate h) * Wup h)
 * Every matrix product makes one pass over its weight for the whole batch. */
#include "model/cpu_stage.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/kernels.h"
#include "model/rope.h"
#include "base/thread_pool.h"
#include "base/clock.h"

/* Attention work is cut into this many tasks per thread, each with its own
 * score buffer (so no task shares scratch with another). */
#define ATTN_TASKS_PER_THREAD 4

/* A layer's matrices as the stage reads them (model_weight_for_cpu()):
 * copies in the layout the kernels read fastest, or the model's own. */
struct layer_mats {
    struct ifd_weight wq, wk, wv, wo, w_gate, w_up, w_down;
};
#define LAYER_MATS_N 7

/* The small per-layer vectors, widened to f32 once at create. */
struct layer_vecs {
    float *attn_norm;  /* [hidden] */
    float *mlp_norm;   /* [hidden] */
    float *bq;         /* [q_dim] or NULL */
    float *bk, *bv;    /* [kv_dim] or NULL */
    float *q_norm;     /* [head_dim] or NULL */
    float *k_norm;     /* [head_dim] or NULL */
};

struct cpu_stage {
    struct stage base;
    const struct model *m;
    struct thread_pool *pool;  /* borrowed */
    int n_layers;              /* layer_last - layer_first */
    int hidden, n_heads, n_kv_heads, head_dim, q_dim, kv_dim, ffn;
    float eps;

    /* [n_layers][n_seq_max][2]: K block [n_kv_heads][kv_positions] in
     * kernels.h's blocked transposed layout (kern_attn_key_index(): the
     * scores of one query are broadcasts times contiguous keys), then V
     * block [n_kv_heads][kv_positions][head_dim] (kv_head_values()) */
    float *kv;
    int64_t kv_positions;      /* n_ctx rounded up to a whole key block */
    double *inv_freq;          /* [head_dim / 2] RoPE frequencies, scaling applied */
    struct layer_vecs *vecs;   /* [n_layers] */
    struct layer_mats *mats;   /* [n_layers] */
    void **mat_bufs;           /* [n_layers * LAYER_MATS_N]: the copies' buffers, or NULL */
    float *vec_storage;        /* backing store of every vecs[] array */

    /* scratch, sized for cap_tokens */
    int cap_tokens;
    float *xb;                 /* [T, hidden] normed input of attention / MLP */
    float *q;                  /* [T, q_dim] */
    float *k, *v;              /* [T, kv_dim] */
    float *att;                /* [T, q_dim] attention output */
    float *out;                /* [T, hidden] projection output before the residual add */
    float *gate, *up;          /* [T, ffn] */
    float *rope_cos, *rope_sin;/* [T, head_dim / 2] */
    int n_attn_tasks;
    float *scores;             /* [n_attn_tasks, KERN_ATTN_MAX_HEADS, n_ctx] */

    struct stage_stats stats;
    double *layer_ms;          /* [n_layers] */
};

/* Start of the K (kind 0) or V (kind 1) block of a layer and slot. */
static inline float *kv_block(const struct cpu_stage *s, int layer, int seq, int kind)
{
    return s->kv + (((size_t)layer * (size_t)s->base.n_seq_max + (size_t)seq) * 2 + (size_t)kind) *
                       (size_t)s->kv_positions * (size_t)s->kv_dim;
}

/* Kv head g's keys in the K block of a layer and slot: kern_attn_key_index()
 * from there. */
static inline float *kv_head_keys(const struct cpu_stage *s, int layer, int seq, int g)
{
    return kv_block(s, layer, seq, 0) + (size_t)g * (size_t)s->head_dim * (size_t)s->kv_positions;
}

/* Kv head g's values in the V block of a layer and slot: position p's at
 * p * head_dim. A head's values are one sequential run, which the values
 * loop of a long context reads as one stream; as rows of kv_dim, a head's
 * part of every row, the loop waited on its loads (at 1500 positions it
 * took 20% of a 4-bit decode, against 8% for the scores; see
 * docs/benchmarks.md). */
static inline float *kv_head_values(const struct cpu_stage *s, int layer, int seq, int g)
{
    return kv_block(s, layer, seq, 1) + (size_t)g * (size_t)s->head_dim * (size_t)s->kv_positions;
}

static void scratch_free(struct cpu_stage *s)
{
    free(s->xb);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->att);
    free(s->out);
    free(s->gate);
    free(s->up);
    free(s->rope_cos);
    free(s->rope_sin);
    s->xb = s->q = s->k = s->v = s->att = s->out = s->gate = s->up = s->rope_cos = s->rope_sin = NULL;
    s->cap_tokens = 0;
}

static int cpu_reserve_batch(struct stage *base, int n_tokens, ifd_error *err)
{
    struct cpu_stage *s = (struct cpu_stage *)base;
    if (n_tokens <= s->cap_tokens)
        return 0;
    scratch_free(s);
    size_t T = (size_t)n_tokens;
    s->xb = malloc(T * (size_t)s->hidden * sizeof(float));
    s->q = malloc(T * (size_t)s->q_dim * sizeof(float));
    s->k = malloc(T * (size_t)s->kv_dim * sizeof(float));
    s->v = malloc(T * (size_t)s->kv_dim * sizeof(float));
    s->att = malloc(T * (size_t)s->q_dim * sizeof(float));
    s->out = malloc(T * (size_t)s->hidden * sizeof(float));
    s->gate = malloc(T * (size_t)s->ffn * sizeof(float));
    s->up = malloc(T * (size_t)s->ffn * sizeof(float));
    s->rope_cos = malloc(T * (size_t)(s->head_dim / 2) * sizeof(float));
    s->rope_sin = malloc(T * (size_t)(s->head_dim / 2) * sizeof(float));
    if (!s->xb || !s->q || !s->k || !s->v || !s->att || !s->out || !s->gate || !s->up || !s->rope_cos ||
        !s->rope_sin) {
        scratch_free(s);
        return ifd_error_set(err, -ENOMEM, "cpu stage: out of memory for a batch of %d tokens", n_tokens);
    }
    s->cap_tokens = n_tokens;
    return 0;
}

/* ---- attention ------------------------------------------------------------- */

struct attn_job {
    struct cpu_stage *s;
    const struct stage_batch *b;
    int layer;          /* index within the stage */
    int heads_per_unit; /* query heads of one GQA group taken together */
    int units_per_group;
};

/* How a GQA group's query heads are cut into units of attention work,
 * into j: the whole group, unless that leaves threads without a unit. A
 * unit takes its heads KERN_ATTN_MAX_HEADS at a time (attn_task()): the
 * group's keys and values come from memory for the first of them and from
 * L2 for the others. Units of KERN_ATTN_MAX_HEADS heads each read them
 * from memory, and the decode of a long context waited on those reads
 * (docs/benchmarks.md, "Task starts, and attention at long contexts").
 * Returns the units of the batch. */
static int attn_split(const struct cpu_stage *s, int n_tokens, struct attn_job *j)
{
    const int group = s->n_heads / s->n_kv_heads, n_threads = thread_pool_size(s->pool);
    int units = 1;
    while (units < group && (int64_t)n_tokens * s->n_kv_heads * units < n_threads)
        units++;
    j->heads_per_unit = (group + units - 1) / units;
    j->units_per_group = (group + j->heads_per_unit - 1) / j->heads_per_unit;
    return n_tokens * s->n_kv_heads * j->units_per_group;
}

static void attn_task(void *ctx, int task, int n_tasks)
{
    const struct attn_job *j = ctx;
    struct cpu_stage *s = j->s;
    const int hd = s->head_dim, group = s->n_heads / s->n_kv_heads;
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t n_ctx = s->base.n_ctx;
    float *scores = s->scores + (size_t)task * KERN_ATTN_MAX_HEADS * (size_t)n_ctx;
    const int n_units = j->b->n_tokens * s->n_kv_heads * j->units_per_group;

    for (int unit = task; unit < n_units; unit += n_tasks) {
        const int t = unit / (s->n_kv_heads * j->units_per_group), g = unit / j->units_per_group % s->n_kv_heads;
        const int h0 = g * group + unit % j->units_per_group * j->heads_per_unit;
        const int nh = g * group + group - h0 < j->heads_per_unit ? g * group + group - h0 : j->heads_per_unit;
        const int seq = j->b->seq_ids[t], n = j->b->positions[t] + 1;
        const float *q = s->q + (size_t)t * s->q_dim + (size_t)h0 * hd;
        const float *kt = kv_head_keys(s, j->layer, seq, g);
        const float *vc = kv_head_values(s, j->layer, seq, g);
        for (int c = 0; c < nh; c += KERN_ATTN_MAX_HEADS) { /* what the scores buffer holds */
            const int nc = nh - c < KERN_ATTN_MAX_HEADS ? nh - c : KERN_ATTN_MAX_HEADS;
            kern_attn_scores(scores, n_ctx, q + (size_t)c * hd, nc, kt, hd, n, scale);
            for (int h = 0; h < nc; h++)
                kern_softmax(scores + h * n_ctx, n);
            kern_attn_values(s->att + (size_t)t * s->q_dim + (size_t)(h0 + c) * hd, scores, n_ctx, nc, vc, hd, hd,
                             n);
        }
    }
}

/* ---- element-wise work over tokens, spread over the pool ------------------- */

/* gate <- silu(gate) * up over n floats, split into cache-line-aligned
 * ranges: by elements, not tokens, so that one token's SiLU (4864 elements
 * in Qwen2.5-0.5B) is shared by the pool too, and no thread waits idle
 * through it. */
struct silu_job {
    float *gate;
    const float *up;
    int64_t n;
};

#define SILU_ALIGN 16 /* floats of a cache line */

static void silu_task(void *ctx, int task, int n_tasks)
{
    const struct silu_job *j = ctx;
    const int64_t lines = (j->n + SILU_ALIGN - 1) / SILU_ALIGN;
    int64_t i0 = lines * task / n_tasks * SILU_ALIGN, i1 = lines * (task + 1) / n_tasks * SILU_ALIGN;
    if (i1 > j->n)
        i1 = j->n;
    if (i1 > i0)
        kern_silu_mul(j->gate + i0, j->up + i0, (int)(i1 - i0));
}

static void add_bias(float *x, const float *bias, int n_tokens, int dim)
{
    if (!bias)
        return;
    for (int t = 0; t < n_tokens; t++)
        for (int i = 0; i < dim; i++)
            x[(size_t)t * dim + i] += bias[i];
}

static void head_norm(float *x, const float *w, int n_tokens, int n_heads, int hd, float eps)
{
    if (!w)
        return;
    for (int i = 0; i < n_tokens * n_heads; i++)
        kern_rmsnorm(x + (size_t)i * hd, x + (size_t)i * hd, w, hd, eps);
}

static void rope_apply(const struct cpu_stage *s, float *x, int n_tokens, int n_heads)
{
    const int hd = s->head_dim, half = hd / 2;
    for (int t = 0; t < n_tokens; t++) {
        const float *cs = s->rope_cos + (size_t)t * half, *sn = s->rope_sin + (size_t)t * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * hd;
            for (int i = 0; i < half; i++) {
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * cs[i] - x2 * sn[i];
                v[i + half] = x2 * cs[i] + x1 * sn[i];
            }
        }
    }
}

static void residual_add(float *x, const float *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += d[i];
}

/* ---- forward ----------------------------------------------------------------- */

static int cpu_forward(struct stage *base, const struct stage_batch *b, ifd_error *err)
{
    struct cpu_stage *s = (struct cpu_stage *)base;
    int r = cpu_reserve_batch(base, b->n_tokens, err);
    if (r < 0)
        return r;
    double t_start = ifd_now_ms();
    const int T = b->n_tokens, H = s->hidden, half = s->head_dim / 2;

    for (int t = 0; t < T; t++) {
        for (int i = 0; i < half; i++) {
            double a = (double)b->positions[t] * s->inv_freq[i];
            s->rope_cos[(size_t)t * half + i] = (float)cos(a);
            s->rope_sin[(size_t)t * half + i] = (float)sin(a);
        }
    }

    for (int li = 0; li < s->n_layers; li++) {
        double t_layer = ifd_now_ms();
        const struct layer_mats *L = &s->mats[li];
        const struct layer_vecs *V = &s->vecs[li];

        for (int t = 0; t < T; t++)
            kern_rmsnorm(s->xb + (size_t)t * H, b->hidden + (size_t)t * H, V->attn_norm, H, s->eps);
        const struct ifd_weight *qkv_w[3] = {&L->wq, &L->wk, &L->wv};
        float *qkv_y[3] = {s->q, s->k, s->v};
        kern_matmul_multi(s->pool, qkv_w, qkv_y, 3, s->xb, T);
        add_bias(s->q, V->bq, T, s->q_dim);
        add_bias(s->k, V->bk, T, s->kv_dim);
        add_bias(s->v, V->bv, T, s->kv_dim);
        head_norm(s->q, V->q_norm, T, s->n_heads, s->head_dim, s->eps);
        head_norm(s->k, V->k_norm, T, s->n_kv_heads, s->head_dim, s->eps);
        rope_apply(s, s->q, T, s->n_heads);
        rope_apply(s, s->k, T, s->n_kv_heads);
        for (int t = 0; t < T; t++) {
            int seq = b->seq_ids[t], pos = b->positions[t];
            for (int g = 0; g < s->n_kv_heads; g++) {
                const float *kr = s->k + (size_t)t * s->kv_dim + (size_t)g * s->head_dim;
                const float *vr = s->v + (size_t)t * s->kv_dim + (size_t)g * s->head_dim;
                float *keys = kv_head_keys(s, li, seq, g);
                for (int d = 0; d < s->head_dim; d++)
                    keys[kern_attn_key_index(s->head_dim, pos, d)] = kr[d];
                memcpy(kv_head_values(s, li, seq, g) + (size_t)pos * (size_t)s->head_dim, vr,
                       sizeof(float) * (size_t)s->head_dim);
            }
        }
        struct attn_job aj = {.s = s, .b = b, .layer = li};
        const int n_units = attn_split(s, T, &aj);
        thread_pool_run(s->pool, attn_task, &aj, n_units < s->n_attn_tasks ? n_units : s->n_attn_tasks);
        kern_matmul(s->pool, &L->wo, s->att, T, s->out);
        residual_add(b->hidden, s->out, (size_t)T * H);

        for (int t = 0; t < T; t++)
            kern_rmsnorm(s->xb + (size_t)t * H, b->hidden + (size_t)t * H, V->mlp_norm, H, s->eps);
        const struct ifd_weight *gu_w[2] = {&L->w_gate, &L->w_up};
        float *gu_y[2] = {s->gate, s->up};
        kern_matmul_multi(s->pool, gu_w, gu_y, 2, s->xb, T);
        struct silu_job sj = {.gate = s->gate, .up = s->up, .n = (int64_t)T * s->ffn};
        thread_pool_run(s->pool, silu_task, &sj, thread_pool_size(s->pool));
        kern_matmul(s->pool, &L->w_down, s->gate, T, s->out);
        residual_add(b->hidden, s->out, (size_t)T * H);
        s->layer_ms[li] += ifd_now_ms() - t_layer;
    }

    s->stats.forward_calls++;
    s->stats.tokens += (uint64_t)T;
    s->stats.forward_ms += ifd_now_ms() - t_start;
    return 0;
}

static void cpu_get_stats(struct stage *base, struct stage_stats *ret)
{
    struct cpu_stage *s = (struct cpu_stage *)base;
    if (!ret)
        return;
    *ret = s->stats;
    ret->layer_ms = s->layer_ms;
}

static void cpu_destroy(struct stage *base)
{
    struct cpu_stage *s = (struct cpu_stage *)base;
    if (!s)
        return;
    scratch_free(s);
    stage_finish(&s->base);
    free(s->kv);
    free(s->inv_freq);
    free(s->vecs);
    if (s->mat_bufs)
        for (int i = 0; i < s->n_layers * LAYER_MATS_N; i++)
            free(s->mat_bufs[i]);
    free(s->mat_bufs);
    free(s->mats);
    free(s->vec_storage);
    free(s->scores);
    free(s->layer_ms);
    free(s);
}

/* Each kv head's keys: the key blocks that hold the first n_pos positions,
 * one run (kernels.h; the positions past n_pos in the last block come
 * along, and the destination writes them before it reads them). Each kv
 * head's values: one run of n_pos rows of head_dim. */
static int cpu_seq_copy(struct stage *base, int src_seq, int dst_seq, int n_pos, ifd_error *err)
{
    (void)err;
    struct cpu_stage *s = (struct cpu_stage *)base;
    const size_t key_blocks = ((size_t)n_pos + KERN_ATTN_KEY_BLOCK - 1) / KERN_ATTN_KEY_BLOCK;
    for (int li = 0; li < s->n_layers; li++) {
        for (int g = 0; g < s->n_kv_heads; g++) {
            memcpy(kv_head_keys(s, li, dst_seq, g), kv_head_keys(s, li, src_seq, g),
                   sizeof(float) * key_blocks * KERN_ATTN_KEY_BLOCK * (size_t)s->head_dim);
            memcpy(kv_head_values(s, li, dst_seq, g), kv_head_values(s, li, src_seq, g),
                   sizeof(float) * (size_t)n_pos * (size_t)s->head_dim);
        }
    }
    return 0;
}

static const struct stage_ops cpu_stage_ops = {
    .name = "cpu",
    .forward = cpu_forward,
    .seq_copy = cpu_seq_copy,
    .reserve_batch = cpu_reserve_batch,
    .get_stats = cpu_get_stats,
    .destroy = cpu_destroy,
};

/* Widens a bound vector weight into *cursor, advancing it; NULL if unbound. */
static float *widen_vec(const struct ifd_weight *w, float **cursor)
{
    if (!w->data)
        return NULL;
    float *out = *cursor;
    kern_weight_row(w, 0, out);
    *cursor += w->cols;
    return out;
}

/* Largest KV cache we agree to allocate, as a guard against absurd
 * n_seq_max * n_ctx products from a config file. */
#define CPU_STAGE_MAX_KV_BYTES (64ull << 30)

int cpu_stage_create(const struct model *m, int first, int last, int n_seq_max, int n_ctx, struct thread_pool *pool,
                     struct stage **ret, ifd_error *err)
{
    const struct model_config *c = &m->cfg;
    kern_init();
    if (first < m->layer_first || last > m->layer_last || first >= last)
        return ifd_error_set(err, -EINVAL, "cpu stage: layers [%d, %d) are not inside the bound range [%d, %d)",
                             first, last, m->layer_first, m->layer_last);
    if (n_seq_max <= 0 || n_ctx <= 0)
        return ifd_error_set(err, -EINVAL, "cpu stage: need at least one sequence slot and one position (got %d, %d)",
                             n_seq_max, n_ctx);
    if (c->head_dim <= 0 || c->head_dim % 2 || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads)
        return ifd_error_set(err, -EINVAL, "cpu stage: head_dim %d / %d heads / %d kv heads is not a valid attention shape",
                             c->head_dim, c->n_heads, c->n_kv_heads);
    struct cpu_stage *s = calloc(1, sizeof(*s));
    if (!s)
        return ifd_error_set(err, -ENOMEM, "cpu stage: out of memory");
    int r = stage_init(&s->base, &cpu_stage_ops, first, last, c->hidden_size, n_seq_max, n_ctx, 0, err);
    if (r < 0) {
        cpu_destroy(&s->base);
        return r;
    }
    s->m = m;
    s->pool = pool;
    s->n_layers = last - first;
    s->hidden = c->hidden_size;
    s->n_heads = c->n_heads;
    s->n_kv_heads = c->n_kv_heads;
    s->head_dim = c->head_dim;
    s->q_dim = c->n_heads * c->head_dim;
    s->kv_dim = c->n_kv_heads * c->head_dim;
    s->ffn = c->intermediate_size;
    s->eps = c->rms_norm_eps;

    s->kv_positions = ((int64_t)n_ctx + KERN_ATTN_KEY_BLOCK - 1) / KERN_ATTN_KEY_BLOCK * KERN_ATTN_KEY_BLOCK;
    unsigned long long kv_bytes = (unsigned long long)s->n_layers * (unsigned long long)n_seq_max * 2ull *
                                  (unsigned long long)s->kv_positions * (unsigned long long)s->kv_dim * sizeof(float);
    if (kv_bytes > CPU_STAGE_MAX_KV_BYTES) {
        cpu_destroy(&s->base);
        return ifd_error_set(err, -E2BIG, "cpu stage: KV cache of %llu MiB (%d slots x %d positions) is over the %llu GiB limit",
                             kv_bytes >> 20, n_seq_max, n_ctx, CPU_STAGE_MAX_KV_BYTES >> 30);
    }
    s->n_attn_tasks = thread_pool_size(pool) * ATTN_TASKS_PER_THREAD;
    size_t n_vec = (size_t)s->n_layers * (2 * (size_t)s->hidden + (size_t)s->q_dim + 2 * (size_t)s->kv_dim +
                                          2 * (size_t)s->head_dim);
    s->kv = calloc(1, (size_t)kv_bytes); /* untouched pages cost nothing until used */
    s->inv_freq = calloc((size_t)(s->head_dim / 2), sizeof(double));
    s->vecs = calloc((size_t)s->n_layers, sizeof(*s->vecs));
    s->vec_storage = calloc(n_vec, sizeof(float));
    s->scores = calloc((size_t)s->n_attn_tasks * KERN_ATTN_MAX_HEADS * (size_t)n_ctx, sizeof(float));
    s->layer_ms = calloc((size_t)s->n_layers, sizeof(double));
    s->mats = calloc((size_t)s->n_layers, sizeof(*s->mats));
    s->mat_bufs = calloc((size_t)s->n_layers * LAYER_MATS_N, sizeof(*s->mat_bufs));
    if (!s->kv || !s->inv_freq || !s->vecs || !s->vec_storage || !s->scores || !s->layer_ms || !s->mats ||
        !s->mat_bufs) {
        cpu_destroy(&s->base);
        return ifd_error_set(err, -ENOMEM, "cpu stage: out of memory for a KV cache of %llu MiB", kv_bytes >> 20);
    }
    rope_inv_freq(c, s->inv_freq);
    float *cur = s->vec_storage;
    for (int li = 0; li < s->n_layers; li++) {
        const struct layer_weights *L = &m->layers[first + li];
        struct layer_vecs *V = &s->vecs[li];
        if (!L->attn_norm.data || !L->wq.data || !L->w_down.data) {
            cpu_destroy(&s->base);
            return ifd_error_set(err, -EINVAL, "cpu stage: layer %d is not bound in this model", first + li);
        }
        V->attn_norm = widen_vec(&L->attn_norm, &cur);
        V->mlp_norm = widen_vec(&L->mlp_norm, &cur);
        V->bq = widen_vec(&L->bq, &cur);
        V->bk = widen_vec(&L->bk, &cur);
        V->bv = widen_vec(&L->bv, &cur);
        V->q_norm = widen_vec(&L->q_norm, &cur);
        V->k_norm = widen_vec(&L->k_norm, &cur);
        const struct ifd_weight *src[LAYER_MATS_N] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        struct ifd_weight *dst[LAYER_MATS_N] = {&s->mats[li].wq,     &s->mats[li].wk, &s->mats[li].wv,
                                                &s->mats[li].wo,     &s->mats[li].w_gate, &s->mats[li].w_up,
                                                &s->mats[li].w_down};
        for (int i = 0; i < LAYER_MATS_N; i++)
            if ((r = model_weight_for_cpu(m, src[i], dst[i], &s->mat_bufs[li * LAYER_MATS_N + i], err)) < 0) {
                cpu_destroy(&s->base);
                ifd_error_prefix(err, "cpu stage: layer %d", first + li);
                return r;
            }
    }
    *ret = &s->base;
    return 0;
}
