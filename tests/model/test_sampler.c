/* test_sampler.c - each sampling option does what it says, and the same seed
 * gives the same tokens. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "model/sampler.h"

#define V 8

static int32_t sample_once(const struct sampler_params *p, const float *logits_in)
{
    float l[V];
    memcpy(l, logits_in, sizeof(l));
    sampler *s = sampler_create(p, V);
    cr_assert_not_null(s);
    int32_t t = sampler_sample(s, l);
    sampler_destroy(s);
    return t;
}

/* Histogram of n draws from one sampler (state carried across draws). */
static void histogram(const struct sampler_params *p, const float *logits_in, int n, int *hist)
{
    sampler *s = sampler_create(p, V);
    cr_assert_not_null(s);
    memset(hist, 0, sizeof(int) * V);
    for (int i = 0; i < n; i++) {
        float l[V];
        memcpy(l, logits_in, sizeof(l));
        int32_t t = sampler_sample(s, l);
        cr_assert(t >= 0 && t < V);
        hist[t]++;
    }
    sampler_destroy(s);
}

static const float base[V] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f, 2.5f, -3.0f};

Test(sampler, greedy_is_argmax_lowest_id_on_ties)
{
    struct sampler_params p = sampler_params_default();
    cr_assert_eq(p.temperature, 0.0f);
    cr_assert_eq(sample_once(&p, base), 1); /* ids 1 and 3 tie at 3.0 */
    float l[V] = {-5, -4, -3, -2, -1, -0.5f, -7, -9};
    cr_assert_eq(sample_once(&p, l), 5);
}

Test(sampler, repetition_penalty_divides_positive_multiplies_negative)
{
    struct sampler_params p = sampler_params_default();
    p.repetition_penalty = 2.0f;
    sampler *s = sampler_create(&p, V);
    sampler_accept(s, 1, false); /* prompt token */
    sampler_accept(s, 3, true);
    sampler_accept(s, 4, true);
    float l[V];
    memcpy(l, base, sizeof(l));
    int32_t t = sampler_sample(s, l);
    cr_assert_eq(l[1], 1.5f);
    cr_assert_eq(l[3], 1.5f);
    cr_assert_eq(l[4], -2.0f);
    cr_assert_eq(l[2], 2.0f); /* unseen: untouched */
    cr_assert_eq(t, 6);       /* 2.5 is now the best */
    sampler_destroy(s);
}

Test(sampler, presence_and_frequency_on_generated_only)
{
    struct sampler_params p = sampler_params_default();
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    sampler *s = sampler_create(&p, V);
    sampler_accept(s, 1, false); /* prompt: no OpenAI penalty */
    sampler_accept(s, 3, true);
    sampler_accept(s, 3, true);
    sampler_accept(s, 6, true);
    float l[V];
    memcpy(l, base, sizeof(l));
    int32_t t = sampler_sample(s, l);
    cr_assert_eq(l[1], 3.0f);
    cr_assert_eq(l[3], 3.0f - 0.5f - 0.5f);
    cr_assert_eq(l[6], 2.5f - 0.5f - 0.25f);
    cr_assert_eq(t, 1);
    sampler_destroy(s);
}

Test(sampler, top_k_one_is_greedy_and_top_k_limits_support)
{
    struct sampler_params p = sampler_params_default();
    p.temperature = 1.0f;
    p.top_k = 1;
    for (uint64_t seed = 0; seed < 20; seed++) {
        p.seed = seed;
        cr_assert_eq(sample_once(&p, base), 1);
    }
    p.top_k = 3; /* ids 1, 3 (3.0) and 6 (2.5) */
    int h[V];
    histogram(&p, base, 3000, h);
    for (int i = 0; i < V; i++)
        if (i != 1 && i != 3 && i != 6)
            cr_assert_eq(h[i], 0, "id %d drawn outside top-3", i);
    cr_assert(h[1] > 0 && h[3] > 0 && h[6] > 0);
}

Test(sampler, temperature_sharpens_and_flattens)
{
    struct sampler_params p = sampler_params_default();
    int h[V];
    p.temperature = 0.05f; /* near greedy: 1 and 3 share, the rest ~never */
    histogram(&p, base, 2000, h);
    cr_assert(h[1] + h[3] >= 1998, "1: %d 3: %d 6: %d", h[1], h[3], h[6]); /* p(6) = 2 * e^-10 */
    cr_assert(h[1] > 800 && h[3] > 800);
    p.temperature = 1.0f; /* frequencies follow softmax(base) */
    histogram(&p, base, 20000, h);
    double z = 0;
    for (int i = 0; i < V; i++)
        z += exp(base[i]);
    for (int i = 0; i < V; i++) {
        double want = exp(base[i]) / z * 20000;
        cr_assert(fabs(h[i] - want) < 5 * sqrt(want) + 5, "id %d: %d draws, want ~%.0f", i, h[i], want);
    }
}

Test(sampler, top_p_keeps_smallest_nucleus)
{
    struct sampler_params p = sampler_params_default();
    p.temperature = 1.0f;
    float l[V] = {0, 0, 0, 0, 0, 0, 0, 0};
    l[2] = logf(7.0f); /* p(2) = 7/14 = 0.5, each other 1/14 */
    p.top_p = 0.45f;   /* nucleus = {2} alone */
    int h[V];
    histogram(&p, l, 500, h);
    cr_assert_eq(h[2], 500);
    p.top_p = 0.55f; /* 0.5 + 1/14 > 0.55: {2, one other: the lowest id, 0} */
    histogram(&p, l, 2000, h);
    cr_assert_eq(h[2] + h[0], 2000, "drawn outside the nucleus");
    cr_assert(h[0] > 0);
}

Test(sampler, min_p_drops_tokens_below_fraction_of_best)
{
    struct sampler_params p = sampler_params_default();
    p.temperature = 1.0f;
    p.min_p = 0.5f; /* keep p >= 0.5 * p(best): exp(l - 3) >= 0.5 -> l >= 3 - ln 2 = 2.307 */
    int h[V];
    histogram(&p, base, 3000, h);
    for (int i = 0; i < V; i++)
        if (i != 1 && i != 3 && i != 6)
            cr_assert_eq(h[i], 0, "id %d below min_p drawn", i);
    cr_assert(h[6] > 0);
}

Test(sampler, same_seed_same_tokens_different_seed_differs)
{
    struct sampler_params p = sampler_params_default();
    p.temperature = 1.5f;
    p.top_p = 0.95f;
    int32_t a[64], b[64], c[64];
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 43 : 42;
        sampler *s = sampler_create(&p, V);
        for (int i = 0; i < 64; i++) {
            float l[V];
            memcpy(l, base, sizeof(l));
            (run == 0 ? a : run == 1 ? b : c)[i] = sampler_sample(s, l);
        }
        sampler_destroy(s);
    }
    cr_assert_arr_eq(a, b, sizeof(a));
    cr_assert(memcmp(a, c, sizeof(a)) != 0);
}

Test(sampler, logprob_and_top_list)
{
    float l[V];
    memcpy(l, base, sizeof(l));
    int32_t ids[3];
    float lp[3];
    float got = sampler_logprob(l, V, 2, 3, ids, lp);
    double z = 0;
    for (int i = 0; i < V; i++)
        z += exp(base[i]);
    cr_assert(fabs(got - (2.0 - log(z))) < 1e-5);
    cr_assert_eq(ids[0], 1);
    cr_assert_eq(ids[1], 3);
    cr_assert_eq(ids[2], 6);
    cr_assert(fabs(lp[2] - (2.5 - log(z))) < 1e-5);
}

Test(sampler, large_vocab_top_p_and_bad_inputs)
{
    cr_assert_null(sampler_create(&(struct sampler_params){0}, 0));
    enum { N = 50000 };
    static float l[N];
    struct sampler_params p = sampler_params_default();
    p.temperature = 1.0f;
    p.top_p = 0.9f;
    sampler *s = sampler_create(&p, N);
    sampler_accept(s, -1, true); /* out of range ids are ignored */
    sampler_accept(s, N, true);
    for (int it = 0; it < 20; it++) {
        for (int i = 0; i < N; i++)
            l[i] = (i == 777) ? 20.0f : (float)(i % 13) * 0.01f;
        cr_assert_eq(sampler_sample(s, l), 777); /* p(777) > 0.9 */
    }
    sampler_destroy(s);
    sampler_destroy(NULL);
}
