/* sampler.h - turns logits into the next token.
 *
 * Greedy when temperature == 0 (ties to the lowest id, as argmax does);
 * otherwise penalties, then temperature, top-k, top-p, min-p, and a draw from
 * a seeded RNG: the same seed gives the same tokens. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct sampler_params {
    float temperature;         /* 0 = greedy */
    int top_k;                 /* 0 = off */
    float top_p;               /* 1 = off */
    float min_p;               /* 0 = off */
    float repetition_penalty;  /* 1 = off (CTRL-style, on tokens seen in prompt+output) */
    float presence_penalty;    /* 0 = off (OpenAI-style, on generated tokens) */
    float frequency_penalty;   /* 0 = off */
    uint64_t seed;
};

struct sampler_params sampler_params_default(void);

typedef struct sampler sampler;

/* Creates a sampler for a vocabulary of n_vocab. NULL on allocation failure. */
sampler *sampler_create(const struct sampler_params *p, int n_vocab);
void sampler_destroy(sampler *s); /* accepts NULL */

/* Records a token as seen (prompt tokens: generated = false), for penalties. */
void sampler_accept(sampler *s, int32_t token, bool generated);

/* Picks the next token. `logits` [n_vocab] may be modified in place. */
int32_t sampler_sample(sampler *s, float *logits);

/* log-softmax of the raw logits at `token`, and the top n (ids and logprobs,
 * best first) for OpenAI logprobs. ret arrays hold at least n entries. */
float sampler_logprob(const float *logits, int n_vocab, int32_t token,
                      int n_top, int32_t *ret_top_ids, float *ret_top_logprobs);
