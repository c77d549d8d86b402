/* generate.h - the per-sequence step of generation: logits in, the next
 * token and whether the sequence ends out.
 *
 * One implementation for every caller (`inferctl run`, the daemon's
 * scheduler), so that they pick the same tokens and stop at the same place.
 * The callers keep what differs: how batches are built, and text (the
 * daemon's stop strings). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "model/model_config.h"
#include "model/sampler.h"

/* Most distinct ids a stop set holds: the config's eos ids
 * (MODEL_MAX_EOS_IDS) plus the tokenizer's, with room to spare. */
#define GEN_STOP_MAX 16

/* The token ids that end a generation with finish reason "stop". */
struct gen_stop_set {
    int32_t ids[GEN_STOP_MAX];
    int n;
};

/* Starts a set with the config's eos_token_id values. */
void gen_stop_set_init(struct gen_stop_set *s, const struct model_config *cfg);
/* Adds an id; negative ids (a token the tokenizer does not know) and ids
 * already in the set are ignored. -E2BIG when the set is full. */
int gen_stop_set_add(struct gen_stop_set *s, int32_t id);
bool gen_stop_set_has(const struct gen_stop_set *s, int32_t id);

enum gen_finish {
    GEN_CONTINUE = 0,  /* feed the token back and step again */
    GEN_FINISH_STOP,   /* the token is in the stop set */
    GEN_FINISH_LENGTH, /* max_tokens generated, or the context is full */
};

/* "stop", "length", or NULL for GEN_CONTINUE (OpenAI's finish_reason). */
const char *gen_finish_reason(enum gen_finish f);

/* One sequence being generated. Caller storage; nothing owned. */
struct gen_seq {
    sampler *smp;                     /* borrowed; has accepted the prompt */
    const struct gen_stop_set *stops; /* borrowed */
    int max_tokens;                   /* tokens to generate at most (>= 1) */
    int n_ctx;                        /* positions the sequence may use */
    int n_generated;                  /* tokens picked so far */
};

void gen_seq_init(struct gen_seq *g, sampler *smp, const struct gen_stop_set *stops, int max_tokens, int n_ctx);

/* Picks the next token from logits [n_vocab] (modified in place: copy them
 * first for logprobs), records it with the sampler, and says whether the
 * sequence ends with it. n_past is the number of positions the KV cache
 * holds for the sequence, where the token would be fed next; the sequence
 * ends when that position is outside the context. The token is written to
 * *ret_token in every case: a stop token is part of the output (its text is
 * not). */
enum gen_finish gen_seq_step(struct gen_seq *g, float *logits, int n_past, int32_t *ret_token);
