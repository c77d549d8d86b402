/* generate.c - see generate.h. */
#include "model/generate.h"

#include <errno.h>

/* the config's ids always fit, with room for the tokenizer's */
_Static_assert(GEN_STOP_MAX > MODEL_MAX_EOS_IDS, "a stop set holds every eos_token_id of a config");

void gen_stop_set_init(struct gen_stop_set *s, const struct model_config *cfg)
{
    s->n = 0;
    for (int i = 0; i < cfg->n_eos_token_ids; i++)
        gen_stop_set_add(s, cfg->eos_token_ids[i]);
}

int gen_stop_set_add(struct gen_stop_set *s, int32_t id)
{
    if (id < 0 || gen_stop_set_has(s, id))
        return 0;
    if (s->n == GEN_STOP_MAX)
        return -E2BIG;
    s->ids[s->n++] = id;
    return 0;
}

bool gen_stop_set_has(const struct gen_stop_set *s, int32_t id)
{
    for (int i = 0; i < s->n; i++)
        if (s->ids[i] == id)
            return true;
    return false;
}

const char *gen_finish_reason(enum gen_finish f)
{
    switch (f) {
    case GEN_FINISH_STOP: return "stop";
    case GEN_FINISH_LENGTH: return "length";
    case GEN_CONTINUE: break;
    }
    return NULL;
}

void gen_seq_init(struct gen_seq *g, sampler *smp, const struct gen_stop_set *stops, int max_tokens, int n_ctx)
{
    *g = (struct gen_seq){.smp = smp, .stops = stops, .max_tokens = max_tokens, .n_ctx = n_ctx};
}

enum gen_finish gen_seq_step(struct gen_seq *g, float *logits, int n_past, int32_t *ret_token)
{
    int32_t t = sampler_sample(g->smp, logits);
    sampler_accept(g->smp, t, true);
    g->n_generated++;
    *ret_token = t;
    if (gen_stop_set_has(g->stops, t))
        return GEN_FINISH_STOP;
    /* the token would be fed at position n_past */
    if (g->n_generated >= g->max_tokens || n_past >= g->n_ctx)
        return GEN_FINISH_LENGTH;
    return GEN_CONTINUE;
}
