/* engine.c - embedding, the stages in order, final norm and head.
 *
 * Everything the per-batch path needs (hidden states, normed rows, logits) is
 * allocated at create for cfg->n_batch_max tokens; engine_decode allocates
 * nothing. */
#include "model/engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "model/cpu_stage.h"
#include "model/kernels.h"
#include "base/thread_pool.h"

struct engine {
    const struct model *m;          /* borrowed */
    struct stage **stages;          /* [n_stages], owned */
    int n_stages;
    struct engine_config cfg;
    struct thread_pool *pool;
    bool own_pool;
    int n_logits_max;

    int n_inflight;
    int async_stage;                /* index of the first stage that computes elsewhere, or n_stages */
    float *hidden_all;              /* [n_inflight, n_batch_max, hidden] */
    struct engine_batch *inflight;  /* [n_inflight] the batch of each slot, borrowed; n_tokens 0: none */
    int *inflight_wanted;           /* [n_inflight] its rows that want logits */
    float *hidden;                  /* [n_batch_max, hidden] of the last batch run or completed */
    float *normed;                  /* [n_logits_max, hidden] final-normed rows that want logits */
    float *logits;                  /* [n_logits_max, vocab] */
    float *final_norm;              /* [hidden] widened once */
    struct ifd_weight lm_head;      /* as the kernels read it fastest (model_weight_for_cpu()) */
    void *lm_head_buf;              /* its copy's buffer, or NULL */
};

/* Whether stages cover the model's layers in order, each with room for
 * cfg's slots, positions and batches. */
static int check_stages(const struct model *m, struct stage **stages, int n_stages, const struct engine_config *cfg,
                        ifd_error *err)
{
    const struct model_config *c = &m->cfg;
    if (n_stages <= 0)
        return ifd_error_set(err, -EINVAL, "engine: no stages");
    int expect = 0;
    for (int i = 0; i < n_stages; i++) {
        struct stage *s = stages[i];
        if (s->layer_first != expect)
            return ifd_error_set(err, -EINVAL, "engine: stage %d (%s) starts at layer %d, expected %d", i,
                                 s->ops->name, s->layer_first, expect);
        if (s->hidden_size != c->hidden_size || s->n_seq_max < cfg->n_seq_max || s->n_ctx < cfg->n_ctx ||
            s->n_batch_max < cfg->n_batch_max)
            return ifd_error_set(err, -EINVAL,
                                 "engine: stage %d (%s) has hidden %d, %d slots, %d positions, batches of %d; "
                                 "need %d, %d, %d, %d", i, s->ops->name, s->hidden_size, s->n_seq_max, s->n_ctx,
                                 s->n_batch_max, c->hidden_size, cfg->n_seq_max, cfg->n_ctx, cfg->n_batch_max);
        expect = s->layer_last;
    }
    if (expect != c->n_layers)
        return ifd_error_set(err, -EINVAL, "engine: stages end at layer %d, the model has %d", expect, c->n_layers);
    return 0;
}

static int engine_create_impl(const struct model *m, struct stage **stages, int n_stages,
                              const struct engine_config *cfg, struct thread_pool *pool, bool own_pool,
                              engine **ret, ifd_error *err)
{
    const struct model_config *c = &m->cfg;
    kern_init();
    if (!m->embed.data || !m->lm_head.data || !m->final_norm.data)
        return ifd_error_set(err, -EINVAL, "engine: the model must bind the embedding, final norm and head");
    if (cfg->n_batch_max <= 0 || cfg->n_seq_max <= 0 || cfg->n_ctx <= 0)
        return ifd_error_set(err, -EINVAL, "engine: n_batch_max %d, n_seq_max %d and n_ctx %d must be positive",
                             cfg->n_batch_max, cfg->n_seq_max, cfg->n_ctx);
    int r = check_stages(m, stages, n_stages, cfg, err);
    if (r < 0)
        return r;

    engine *e = calloc(1, sizeof(*e));
    if (!e)
        return ifd_error_set(err, -ENOMEM, "engine: out of memory");
    e->n_logits_max = cfg->n_logits_max > 0 ? cfg->n_logits_max : cfg->n_seq_max;
    if (e->n_logits_max > cfg->n_batch_max)
        e->n_logits_max = cfg->n_batch_max;
    e->n_inflight = cfg->n_inflight > 0 ? cfg->n_inflight : 1;
    e->stages = calloc((size_t)n_stages, sizeof(*e->stages));
    e->hidden_all = malloc((size_t)e->n_inflight * (size_t)cfg->n_batch_max * (size_t)c->hidden_size * sizeof(float));
    e->hidden = e->hidden_all;
    e->inflight = calloc((size_t)e->n_inflight, sizeof(*e->inflight));
    e->inflight_wanted = calloc((size_t)e->n_inflight, sizeof(*e->inflight_wanted));
    e->normed = malloc((size_t)e->n_logits_max * (size_t)c->hidden_size * sizeof(float));
    e->logits = malloc((size_t)e->n_logits_max * (size_t)c->vocab_size * sizeof(float));
    e->final_norm = malloc((size_t)c->hidden_size * sizeof(float));
    /* until the end, e owns neither the stages nor the pool: engine_destroy
     * frees just the buffers */
    if (!e->stages || !e->hidden_all || !e->inflight || !e->inflight_wanted || !e->normed || !e->logits || !e->final_norm) {
        engine_destroy(e);
        return ifd_error_set(err, -ENOMEM, "engine: out of memory for a batch of %d tokens", cfg->n_batch_max);
    }
    for (int i = 0; i < n_stages; i++) {
        r = stage_reserve_batch(stages[i], cfg->n_batch_max, err);
        if (r < 0) {
            engine_destroy(e);
            return r;
        }
    }
    if ((r = model_weight_for_cpu(m, &m->lm_head, &e->lm_head, &e->lm_head_buf, err)) < 0) {
        engine_destroy(e);
        ifd_error_prefix(err, "engine: the head");
        return r;
    }
    kern_weight_row(&m->final_norm, 0, e->final_norm);
    memcpy(e->stages, stages, sizeof(*stages) * (size_t)n_stages);
    e->n_stages = n_stages;
    e->async_stage = n_stages;
    for (int i = n_stages - 1; i >= 0; i--)
        if (stage_is_async(stages[i]))
            e->async_stage = i;
    e->m = m;
    e->cfg = *cfg;
    e->pool = pool;
    e->own_pool = own_pool;
    *ret = e;
    return 0;
}

int engine_create(const struct model *model, struct stage **stages, int n_stages, const struct engine_config *cfg,
                  struct thread_pool *pool, engine **ret, ifd_error *err)
{
    bool own = false;
    if (!pool) {
        if (!(pool = thread_pool_create(cfg->n_threads)))
            return ifd_error_set(err, -ENOMEM, "engine: cannot start %d threads", cfg->n_threads);
        own = true;
    }
    int r = engine_create_impl(model, stages, n_stages, cfg, pool, own, ret, err);
    if (r < 0 && own)
        thread_pool_destroy(pool);
    return r;
}

int engine_create_cpu(const struct model *model, const int *splits, int n_splits, const struct engine_config *cfg,
                      engine **ret, ifd_error *err)
{
    int whole[2] = {0, model->cfg.n_layers};
    if (!splits) {
        splits = whole;
        n_splits = 2;
    }
    if (n_splits < 2)
        return ifd_error_set(err, -EINVAL, "engine: %d layer boundaries make no stage", n_splits);
    struct thread_pool *pool = thread_pool_create(cfg->n_threads);
    struct stage **stages = calloc((size_t)n_splits - 1, sizeof(*stages));
    if (!pool || !stages) {
        thread_pool_destroy(pool);
        free(stages);
        return ifd_error_set(err, -ENOMEM, "engine: out of memory");
    }
    int r = 0, n = 0;
    for (; n < n_splits - 1; n++) {
        r = cpu_stage_create(model, splits[n], splits[n + 1], cfg->n_seq_max, cfg->n_ctx, pool, &stages[n], err);
        if (r < 0)
            break;
    }
    if (r >= 0)
        r = engine_create_impl(model, stages, n, cfg, pool, true, ret, err);
    if (r < 0) {
        for (int i = 0; i < n; i++)
            stage_destroy(stages[i]);
        thread_pool_destroy(pool);
    }
    free(stages);
    return r;
}

void engine_destroy(engine *e)
{
    if (!e)
        return;
    for (int i = 0; i < e->n_stages; i++)
        stage_destroy(e->stages[i]);
    if (e->own_pool)
        thread_pool_destroy(e->pool);
    free(e->stages);
    free(e->hidden_all);
    free(e->inflight);
    free(e->inflight_wanted);
    free(e->normed);
    free(e->logits);
    free(e->final_norm);
    free(e->lm_head_buf);
    free(e);
}

/* Runs stages [first, last) of the engine on sb; names the failing one. */
static int run_stages(engine *e, int first, int last, const struct stage_batch *sb, ifd_error *err)
{
    for (int i = first; i < last; i++) {
        int r = stage_forward(e->stages[i], sb, err);
        if (r < 0) {
            ifd_error_prefix(err, "stage %d (layers %d-%d)", i, e->stages[i]->layer_first,
                             e->stages[i]->layer_last - 1);
            return r;
        }
    }
    return 0;
}

static struct stage_batch slot_stage_batch(const engine *e, int slot)
{
    const struct engine_batch *b = &e->inflight[slot];
    return (struct stage_batch){.n_tokens = b->n_tokens, .seq_ids = b->seq_ids, .positions = b->positions,
                                .hidden = e->hidden_all + (size_t)slot * (size_t)e->cfg.n_batch_max *
                                                              (size_t)e->m->cfg.hidden_size};
}

int engine_submit(engine *e, int slot, const struct engine_batch *b, ifd_error *err)
{
    const struct model_config *c = &e->m->cfg;
    const int H = c->hidden_size;
    if (slot < 0 || slot >= e->n_inflight || e->inflight[slot].n_tokens > 0)
        return ifd_error_set(err, -EINVAL, "engine: slot %d is not a free one of %d", slot, e->n_inflight);
    /* The stages check sequences and positions (stage_forward); the engine
     * checks what only it uses: its buffers' rows, the vocabulary, the
     * logits rows. The first stage refuses an empty batch. */
    if (b->n_tokens > e->cfg.n_batch_max)
        return ifd_error_set(err, -E2BIG, "engine: batch of %d tokens is over its limit of %d", b->n_tokens,
                             e->cfg.n_batch_max);
    int n_wanted = 0;
    for (int t = 0; t < b->n_tokens; t++) {
        if (b->tokens[t] < 0 || b->tokens[t] >= c->vocab_size)
            return ifd_error_set(err, -EINVAL, "engine: token %d: id %d is not in the vocabulary [0, %d)", t,
                                 b->tokens[t], c->vocab_size);
        n_wanted += b->want_logits && b->want_logits[t];
    }
    if (n_wanted > e->n_logits_max)
        return ifd_error_set(err, -EINVAL, "engine: %d tokens want logits, the limit is %d", n_wanted,
                             e->n_logits_max);

    e->inflight[slot] = *b;
    e->inflight_wanted[slot] = n_wanted;
    struct stage_batch sb = slot_stage_batch(e, slot);
    for (int t = 0; t < b->n_tokens; t++)
        kern_weight_row(&e->m->embed, b->tokens[t], sb.hidden + (size_t)t * H);
    int r = run_stages(e, 0, e->async_stage, &sb, err);
    if (r >= 0 && e->async_stage < e->n_stages) {
        struct stage *st = e->stages[e->async_stage];
        if ((r = stage_forward_submit(st, &sb, err)) < 0)
            ifd_error_prefix(err, "stage %d (layers %d-%d)", e->async_stage, st->layer_first, st->layer_last - 1);
    }
    if (r < 0)
        e->inflight[slot].n_tokens = 0;
    return r;
}

int engine_complete(engine *e, int slot, ifd_error *err)
{
    const struct model_config *c = &e->m->cfg;
    const int H = c->hidden_size;
    if (slot < 0 || slot >= e->n_inflight || e->inflight[slot].n_tokens <= 0)
        return ifd_error_set(err, -EINVAL, "engine: slot %d holds no batch", slot);
    struct stage_batch sb = slot_stage_batch(e, slot);
    const bool *want = e->inflight[slot].want_logits;
    int n_wanted = e->inflight_wanted[slot];
    e->inflight[slot].n_tokens = 0;
    int r = 0;
    if (e->async_stage < e->n_stages) {
        struct stage *st = e->stages[e->async_stage];
        if ((r = stage_forward_wait(st, &sb, err)) < 0) {
            ifd_error_prefix(err, "stage %d (layers %d-%d)", e->async_stage, st->layer_first, st->layer_last - 1);
            return r;
        }
        if ((r = run_stages(e, e->async_stage + 1, e->n_stages, &sb, err)) < 0)
            return r;
    }
    e->hidden = sb.hidden;
    if (n_wanted == 0)
        return 0;
    int j = 0;
    for (int t = 0; t < sb.n_tokens; t++)
        if (want[t])
            kern_rmsnorm(e->normed + (size_t)j++ * H, sb.hidden + (size_t)t * H, e->final_norm, H, c->rms_norm_eps);
    kern_matmul(e->pool, &e->lm_head, e->normed, n_wanted, e->logits);
    return 0;
}

int engine_decode(engine *e, const struct engine_batch *b, ifd_error *err)
{
    int r = engine_submit(e, 0, b, err);
    return r < 0 ? r : engine_complete(e, 0, err);
}

int engine_stages_pipeline_depth(struct stage *const *stages, int n_stages)
{
    int n = 0;
    for (int i = 0; i < n_stages; i++)
        if (stage_is_async(stages[i]))
            n += stages[i]->n_nodes;
    return n > 0 ? n + 1 : 1;
}

int engine_pipeline_depth(const engine *e)
{
    return engine_stages_pipeline_depth(e->stages, e->n_stages);
}

const float *engine_logits(const engine *e)
{
    return e->logits;
}

int engine_output_normed(const engine *e, int t, float *out)
{
    const struct model_config *c = &e->m->cfg;
    if (t < 0 || t >= e->cfg.n_batch_max)
        return -EINVAL;
    kern_rmsnorm(out, e->hidden + (size_t)t * (size_t)c->hidden_size, e->final_norm, c->hidden_size,
                 c->rms_norm_eps);
    return 0;
}

int engine_seq_truncate(engine *e, int seq_id, int n_keep, ifd_error *err)
{
    int ret = 0;
    for (int i = 0; i < e->n_stages; i++) {
        /* every stage, even after one fails: each frees what it can */
        int r = stage_seq_truncate(e->stages[i], seq_id, n_keep, err);
        if (r < 0 && ret == 0)
            ret = r;
    }
    return ret;
}

int engine_seq_copy(engine *e, int src_seq, int dst_seq, int n_pos, ifd_error *err)
{
    for (int i = 0; i < e->n_stages; i++) {
        int r = stage_seq_copy(e->stages[i], src_seq, dst_seq, n_pos, err);
        if (r < 0) {
            /* The stages before i hold the copy: drop it there too, so that
             * every stage agrees dst is empty. */
            ifd_error ignored;
            engine_seq_truncate(e, dst_seq, 0, &ignored);
            ifd_error_prefix(err, "stage %d (layers %d-%d)", i, e->stages[i]->layer_first,
                             e->stages[i]->layer_last - 1);
            return r;
        }
    }
    return 0;
}

int engine_replace_stages(engine *e, struct stage **stages, int n_stages, ifd_error *err)
{
    for (int slot = 0; slot < e->n_inflight; slot++)
        if (e->inflight[slot].n_tokens > 0)
            return ifd_error_set(err, -EBUSY, "engine: batch slot %d is in flight: complete it first", slot);
    int r = check_stages(e->m, stages, n_stages, &e->cfg, err);
    if (r < 0)
        return r;
    struct stage **ns = calloc((size_t)n_stages, sizeof(*ns));
    if (!ns)
        return ifd_error_set(err, -ENOMEM, "engine: out of memory");
    for (int i = 0; i < n_stages; i++) {
        if ((r = stage_reserve_batch(stages[i], e->cfg.n_batch_max, err)) < 0) {
            free(ns);
            return r;
        }
    }
    for (int i = 0; i < e->n_stages; i++)
        stage_destroy(e->stages[i]);
    free(e->stages);
    memcpy(ns, stages, sizeof(*stages) * (size_t)n_stages);
    e->stages = ns;
    e->n_stages = n_stages;
    return 0;
}

const struct model *engine_model(const engine *e)
{
    return e->m;
}

int engine_stage_count(const engine *e)
{
    return e->n_stages;
}

struct stage *engine_stage(const engine *e, int i)
{
    return i >= 0 && i < e->n_stages ? e->stages[i] : NULL;
}
