/* test_stage.c - the stage contract (model/stage.h), checked once in the
 * stage_*() wrappers: a fake implementation and the CPU stage accept and
 * refuse the same batches with the same errno and message (the Vulkan stage
 * is held to the same check in tests/gpu/test_gpu_ops.c), and the optional
 * ops are called, or skipped when NULL. A copied prefix decodes as a
 * prefilled one. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/thread_pool.h"
#include "common/golden_models.h"
#include "common/stage_contract.h"
#include "model/cpu_stage.h"
#include "model/engine.h"

/* A stage that adds 1 to every hidden value and records what it was asked. */
struct fake_stage {
    struct stage base;
    int forwards;
    int truncates, last_seq, last_keep;
    int reserved;            /* largest reserve_batch asked */
    int copies;
    struct stage_stats stats;
};

static int fake_forward(struct stage *s, const struct stage_batch *b, ifd_error *err)
{
    (void)err;
    struct fake_stage *f = (struct fake_stage *)s;
    for (size_t i = 0; i < (size_t)b->n_tokens * (size_t)s->hidden_size; i++)
        b->hidden[i] += 1.0f;
    f->forwards++;
    f->stats.forward_calls++;
    f->stats.tokens += (uint64_t)b->n_tokens;
    return 0;
}

static int fake_truncate(struct stage *s, int seq_id, int n_keep, ifd_error *err)
{
    (void)err;
    struct fake_stage *f = (struct fake_stage *)s;
    f->truncates++;
    f->last_seq = seq_id;
    f->last_keep = n_keep;
    return 0;
}

static int fake_copy(struct stage *s, int src_seq, int dst_seq, int n_pos, ifd_error *err)
{
    (void)src_seq, (void)dst_seq, (void)n_pos, (void)err;
    ((struct fake_stage *)s)->copies++;
    return 0;
}

static int fake_reserve(struct stage *s, int n_tokens, ifd_error *err)
{
    (void)err;
    struct fake_stage *f = (struct fake_stage *)s;
    if (n_tokens > f->reserved)
        f->reserved = n_tokens;
    return 0;
}

static void fake_stats(struct stage *s, struct stage_stats *ret)
{
    *ret = ((struct fake_stage *)s)->stats;
}

static void fake_destroy(struct stage *s)
{
    stage_finish(s);
    free(s);
}

static const struct stage_ops fake_ops = {
    .name = "fake", .forward = fake_forward, .seq_truncate = fake_truncate, .seq_copy = fake_copy,
    .reserve_batch = fake_reserve, .get_stats = fake_stats, .destroy = fake_destroy,
};

/* The same without the optional ops. */
static const struct stage_ops bare_ops = {.name = "bare", .forward = fake_forward, .destroy = fake_destroy};

static struct fake_stage *fake_create(const struct stage_ops *ops, int first, int last, int hidden, int n_seq,
                                      int n_ctx, int n_batch)
{
    struct fake_stage *f = calloc(1, sizeof(*f));
    cr_assert_not_null(f);
    ifd_error err;
    cr_assert_eq(stage_init(&f->base, ops, first, last, hidden, n_seq, n_ctx, n_batch, &err), 0, "%s", err.msg);
    return f;
}

Test(stage, fake_keeps_the_contract)
{
    struct fake_stage *f = fake_create(&fake_ops, 0, 2, 8, 3, 6, 5);
    stage_contract_check(&f->base);
    /* every forward the check let through, and none it refused */
    cr_assert_eq((uint64_t)f->forwards, f->stats.forward_calls);
    cr_assert_gt(f->forwards, 0);
    stage_destroy(&f->base);
}

Test(stage, cpu_keeps_the_same_contract)
{
    struct model *m = golden_load_model("tinystories-656k");
    struct thread_pool *pool = thread_pool_create(1);
    struct stage *s = NULL;
    ifd_error err;
    cr_assert_eq(cpu_stage_create(m, 0, m->cfg.n_layers, 2, 6, pool, &s, &err), 0, "%s", err.msg);
    cr_assert_eq(s->n_batch_max, STAGE_BATCH_MAX);
    stage_contract_check(s);
    stage_destroy(s);
    thread_pool_destroy(pool);
    model_destroy(m);
}

Test(stage, forward_runs_the_implementation_and_counts_positions)
{
    struct fake_stage *f = fake_create(&fake_ops, 0, 1, 2, 2, 8, 0);
    cr_assert_eq(f->base.n_batch_max, STAGE_BATCH_MAX, "0 means the default limit");
    float h[6] = {0, 1, 2, 3, 4, 5};
    int32_t seq[3] = {1, 1, 1}, pos[3] = {0, 1, 2};
    struct stage_batch b = {.n_tokens = 3, .seq_ids = seq, .positions = pos, .hidden = h};
    ifd_error err;
    cr_assert_eq(stage_forward(&f->base, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(f->forwards, 1);
    cr_assert_float_eq(h[5], 6.0f, 0, "the implementation ran on the hidden states");
    cr_assert_eq(stage_seq_len(&f->base, 1), 3);
    cr_assert_eq(stage_seq_len(&f->base, 0), 0);
    cr_assert_eq(stage_seq_len(&f->base, 7), 0, "a slot outside the stage holds nothing");
    stage_destroy(&f->base);
}

/* The truncate op is told even when this side counts no more than n_keep
 * (a remote worker may hold positions the master never saw come back), and
 * only with arguments that passed the check. */
Test(stage, truncate_op_called_with_checked_arguments)
{
    struct fake_stage *f = fake_create(&fake_ops, 0, 1, 2, 2, 8, 0);
    ifd_error err;
    cr_assert_eq(stage_seq_truncate(&f->base, 1, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(f->truncates, 1);
    cr_assert_eq(f->last_seq, 1);
    cr_assert_eq(f->last_keep, 0);
    cr_assert_eq(stage_seq_truncate(&f->base, 2, 0, &err), -EINVAL);
    cr_assert_eq(stage_seq_truncate(&f->base, 0, 9, &err), -ERANGE);
    cr_assert_eq(f->truncates, 1, "refused arguments never reach the op");
    stage_destroy(&f->base);
}

Test(stage, optional_ops_may_be_null)
{
    struct fake_stage *f = fake_create(&bare_ops, 0, 1, 2, 2, 8, 4);
    ifd_error err;
    float h[2] = {0};
    int32_t seq = 0, pos = 0;
    struct stage_batch b = {.n_tokens = 1, .seq_ids = &seq, .positions = &pos, .hidden = h};
    cr_assert_eq(stage_forward(&f->base, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(stage_seq_truncate(&f->base, 0, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(stage_seq_len(&f->base, 0), 0);
    cr_assert_eq(stage_reserve_batch(&f->base, 4, &err), 0, "%s", err.msg);
    cr_assert_eq(stage_reserve_batch(&f->base, 5, &err), -E2BIG);
    cr_assert(strstr(err.msg, "bare stage: cannot reserve for 5 tokens, its limit is 4"), "%s", err.msg);
    struct stage_stats st;
    stage_get_stats(&f->base, &st);
    cr_assert_eq(st.forward_calls, 0, "no stats op: zeros");
    stage_destroy(&f->base);
}

Test(stage, init_refuses_sizes_that_are_not_positive)
{
    struct stage s;
    ifd_error err;
    cr_assert_eq(stage_init(&s, &fake_ops, 0, 1, 2, 0, 8, 0, &err), -EINVAL);
    cr_assert(strstr(err.msg, "fake stage: layers [0, 1), hidden 2, 0 slots of 8 positions"), "%s", err.msg);
    stage_finish(&s);
    cr_assert_eq(stage_init(&s, &fake_ops, 1, 1, 2, 1, 8, 0, &err), -EINVAL);
    stage_finish(&s);
}

/* The engine sizes every stage's scratch for its batches through the
 * optional op (no downcast to the CPU stage), and refuses a stage whose
 * batch limit is below its own. */
Test(stage, engine_reserves_through_the_op)
{
    struct model *m = golden_load_model("tinystories-656k");
    int L = m->cfg.n_layers, H = m->cfg.hidden_size;
    struct engine_config c = {.n_seq_max = 2, .n_ctx = 16, .n_batch_max = 12, .n_threads = 1};
    struct fake_stage *a = fake_create(&fake_ops, 0, 1, H, 2, 16, 0);
    struct fake_stage *b = fake_create(&bare_ops, 1, L, H, 2, 16, 0);
    struct stage *st[2] = {&a->base, &b->base};
    engine *e = NULL;
    ifd_error err;
    cr_assert_eq(engine_create(m, st, 2, &c, NULL, &e, &err), 0, "%s", err.msg);
    cr_assert_eq(a->reserved, 12);
    /* a batch goes through both, and an empty one is refused by the first */
    int32_t tok[2] = {1, 80}, seq[2] = {0, 0}, pos[2] = {0, 1};
    bool want[2] = {false, true};
    struct engine_batch eb = {.n_tokens = 2, .tokens = tok, .seq_ids = seq, .positions = pos, .want_logits = want};
    cr_assert_eq(engine_decode(e, &eb, &err), 0, "%s", err.msg);
    cr_assert_eq(a->forwards, 1);
    cr_assert_eq(b->forwards, 1);
    eb.n_tokens = 0;
    cr_assert_eq(engine_decode(e, &eb, &err), -EINVAL);
    cr_assert(strstr(err.msg, "stage 0 (layers 0-0): fake stage: empty batch"), "%s", err.msg);
    eb.n_tokens = 13;
    cr_assert_eq(engine_decode(e, &eb, &err), -E2BIG);
    cr_assert(strstr(err.msg, "engine: batch of 13 tokens is over its limit of 12"), "%s", err.msg);
    /* truncating goes to every stage */
    cr_assert_eq(engine_seq_truncate(e, 0, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(stage_seq_len(&a->base, 0), 0);
    cr_assert_eq(stage_seq_len(&b->base, 0), 0);
    /* a copy the second stage cannot make leaves the slot empty in both */
    eb.n_tokens = 2;
    cr_assert_eq(engine_decode(e, &eb, &err), 0, "%s", err.msg);
    cr_assert_eq(engine_seq_copy(e, 0, 1, 2, &err), -EOPNOTSUPP);
    cr_assert(strstr(err.msg, "stage 1 (layers 1-"), "%s", err.msg);
    cr_assert_eq(a->copies, 1, "the first stage copied before the second refused");
    cr_assert_eq(stage_seq_len(&a->base, 1), 0);
    cr_assert_eq(stage_seq_len(&b->base, 1), 0);
    engine_destroy(e);

    a = fake_create(&fake_ops, 0, L, H, 2, 16, 8);
    st[0] = &a->base;
    cr_assert_eq(engine_create(m, st, 1, &c, NULL, &e, &err), -EINVAL);
    cr_assert(strstr(err.msg, "batches of 8"), "%s", err.msg);
    stage_destroy(&a->base);
    model_destroy(m);
}

/* Prefilling a prompt once and copying its cache to other slots gives what
 * prefilling it in each gives: the copy of a shorter prefix than the source
 * holds, into a slot that held other positions, continued by the prompt's
 * last token, gives the source's last logits. Two cpu stages, so the engine
 * copies in each. */
Test(stage, copied_prefix_decodes_like_a_prefill)
{
    struct model *m = golden_load_model("tinystories-656k");
    int L = m->cfg.n_layers, V = m->cfg.vocab_size;
    struct golden g;
    cr_assert(golden_line(0, &g), "golden line 0 missing");
    int P = g.n_prompt;
    cr_assert_geq(P, 3);
    int splits[3] = {0, 1, L};
    struct engine_config c = {.n_seq_max = 3, .n_ctx = 32, .n_batch_max = 32, .n_threads = 1};
    engine *e = NULL;
    ifd_error err;
    cr_assert_eq(engine_create_cpu(m, L > 1 ? splits : NULL, L > 1 ? 3 : 0, &c, &e, &err), 0, "%s", err.msg);
    int32_t seq[32], pos[32];
    bool want[32] = {0};
    /* slot 0: the prompt; slot 1: something else, to be overwritten */
    for (int t = 0; t < P; t++) {
        seq[t] = 0;
        pos[t] = t;
    }
    want[P - 1] = true;
    struct engine_batch b = {.n_tokens = P, .tokens = g.prompt, .seq_ids = seq, .positions = pos,
                             .want_logits = want};
    cr_assert_eq(engine_decode(e, &b, &err), 0, "%s", err.msg);
    float *want_logits = malloc(sizeof(float) * (size_t)V);
    cr_assert_not_null(want_logits);
    memcpy(want_logits, engine_logits(e), sizeof(float) * (size_t)V);
    int32_t junk[4] = {5, 6, 7, 8};
    for (int t = 0; t < 4; t++)
        seq[t] = 1;
    want[P - 1] = false;
    want[3] = true;
    b = (struct engine_batch){.n_tokens = 4, .tokens = junk, .seq_ids = seq, .positions = pos, .want_logits = want};
    cr_assert_eq(engine_decode(e, &b, &err), 0, "%s", err.msg);

    for (int dst = 1; dst <= 2; dst++) {
        cr_assert_eq(engine_seq_copy(e, 0, dst, P - 1, &err), 0, "%s", err.msg);
        for (int i = 0; i < engine_stage_count(e); i++)
            cr_assert_eq(stage_seq_len(engine_stage(e, i), dst), P - 1);
        int32_t s1 = dst, p1 = P - 1;
        bool w1 = true;
        b = (struct engine_batch){.n_tokens = 1, .tokens = &g.prompt[P - 1], .seq_ids = &s1, .positions = &p1,
                                  .want_logits = &w1};
        cr_assert_eq(engine_decode(e, &b, &err), 0, "%s", err.msg);
        const float *got = engine_logits(e);
        for (int v = 0; v < V; v++)
            cr_assert_float_eq(got[v], want_logits[v], 1e-4f * (1.0f + fabsf(want_logits[v])),
                               "slot %d, logit %d: %g, prefilled %g", dst, v, got[v], want_logits[v]);
    }
    free(want_logits);
    engine_destroy(e);
    model_destroy(m);
}
