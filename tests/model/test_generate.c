/* test_generate.c - the generation step shared by `inferctl run` and the
 * daemon's scheduler (model/generate.h): the stop set, and when a step
 * continues, stops on a stop token, or ends for length (max tokens, end of
 * the context). */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "model/generate.h"

#define VOCAB 8

/* Logits whose greedy pick is `best`. */
static void logits_for(float *l, int best)
{
    for (int i = 0; i < VOCAB; i++)
        l[i] = (float)-i;
    l[best] = 10.0f;
}

Test(generate, stop_set_from_config_and_extra_ids)
{
    struct model_config c = {.n_eos_token_ids = 2, .eos_token_ids = {2, 7}};
    struct gen_stop_set s;
    gen_stop_set_init(&s, &c);
    cr_assert_eq(s.n, 2);
    cr_assert(gen_stop_set_has(&s, 2) && gen_stop_set_has(&s, 7) && !gen_stop_set_has(&s, 5));
    /* the tokenizer's eos: a new id is added, a known one or an unknown
     * token (-1) changes nothing */
    cr_assert_eq(gen_stop_set_add(&s, 5), 0);
    cr_assert_eq(gen_stop_set_add(&s, 7), 0);
    cr_assert_eq(gen_stop_set_add(&s, -1), 0);
    cr_assert_eq(s.n, 3);
    cr_assert(gen_stop_set_has(&s, 5));
    cr_assert(!gen_stop_set_has(&s, -1));
    for (int id = 100; s.n < GEN_STOP_MAX; id++)
        cr_assert_eq(gen_stop_set_add(&s, id), 0);
    cr_assert_eq(gen_stop_set_add(&s, 999), -E2BIG, "a full set says so");
    cr_assert(!gen_stop_set_has(&s, 999));
}

Test(generate, step_picks_continues_and_stops)
{
    struct sampler_params p = sampler_params_default();
    sampler *smp = sampler_create(&p, VOCAB);
    cr_assert_not_null(smp);
    struct model_config c = {.n_eos_token_ids = 1, .eos_token_ids = {2}};
    struct gen_stop_set stops;
    gen_stop_set_init(&stops, &c);
    cr_assert_eq(gen_stop_set_add(&stops, 6), 0);
    struct gen_seq g;
    gen_seq_init(&g, smp, &stops, 4, 100);
    float l[VOCAB];
    int32_t t = -1;

    logits_for(l, 3);
    cr_assert_eq(gen_seq_step(&g, l, 10, &t), GEN_CONTINUE);
    cr_assert_eq(t, 3);
    cr_assert_eq(g.n_generated, 1);
    /* the second stop id ends it like the first, and the token is reported */
    logits_for(l, 6);
    cr_assert_eq(gen_seq_step(&g, l, 11, &t), GEN_FINISH_STOP);
    cr_assert_eq(t, 6);
    cr_assert_eq(g.n_generated, 2);
    cr_assert_str_eq(gen_finish_reason(GEN_FINISH_STOP), "stop");
    cr_assert_str_eq(gen_finish_reason(GEN_FINISH_LENGTH), "length");
    cr_assert_null(gen_finish_reason(GEN_CONTINUE));
    sampler_destroy(smp);
}

Test(generate, length_at_max_tokens)
{
    struct sampler_params p = sampler_params_default();
    sampler *smp = sampler_create(&p, VOCAB);
    struct gen_stop_set stops = {.ids = {2}, .n = 1};
    struct gen_seq g;
    gen_seq_init(&g, smp, &stops, 3, 100);
    float l[VOCAB];
    int32_t t;
    enum gen_finish f[3];
    for (int i = 0; i < 3; i++) {
        logits_for(l, 4);
        f[i] = gen_seq_step(&g, l, 5 + i, &t);
    }
    cr_assert_eq(f[0], GEN_CONTINUE);
    cr_assert_eq(f[1], GEN_CONTINUE);
    cr_assert_eq(f[2], GEN_FINISH_LENGTH, "the third of max_tokens 3 ends it");
    /* a stop token that is also the last allowed one is a stop */
    gen_seq_init(&g, smp, &stops, 1, 100);
    logits_for(l, 2);
    cr_assert_eq(gen_seq_step(&g, l, 5, &t), GEN_FINISH_STOP);
    sampler_destroy(smp);
}

Test(generate, length_at_the_end_of_the_context)
{
    struct sampler_params p = sampler_params_default();
    sampler *smp = sampler_create(&p, VOCAB);
    struct gen_stop_set stops = {.n = 0};
    struct gen_seq g;
    gen_seq_init(&g, smp, &stops, 50, 8);
    float l[VOCAB];
    int32_t t;
    logits_for(l, 1);
    /* 7 positions held: the token goes at 7, the last of the context */
    cr_assert_eq(gen_seq_step(&g, l, 7, &t), GEN_CONTINUE);
    logits_for(l, 1);
    /* 8 held: nowhere to feed the token */
    cr_assert_eq(gen_seq_step(&g, l, 8, &t), GEN_FINISH_LENGTH);
    cr_assert_eq(t, 1);
    sampler_destroy(smp);
}

/* The step records the token with the sampler: a repetition penalty sees it. */
Test(generate, step_feeds_the_sampler)
{
    struct sampler_params p = sampler_params_default();
    p.repetition_penalty = 100.0f;
    sampler *smp = sampler_create(&p, VOCAB);
    struct gen_stop_set stops = {.n = 0};
    struct gen_seq g;
    gen_seq_init(&g, smp, &stops, 50, 100);
    float l[VOCAB] = {1.0f, 1.5f, 0, 0, 0, 0, 0, 0};
    int32_t t;
    gen_seq_step(&g, l, 0, &t);
    cr_assert_eq(t, 1);
    float l2[VOCAB] = {1.0f, 1.5f, 0, 0, 0, 0, 0, 0};
    gen_seq_step(&g, l2, 1, &t);
    cr_assert_eq(t, 0, "token 1 was penalised after the first step picked it");
    sampler_destroy(smp);
}
