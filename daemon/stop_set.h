/* stop_set.h - the token ids that end a generation, built in one place for
 * the daemon and `inferctl run`, so that both stop on the same tokens. */
#pragma once

#include "base/error.h"
#include "model/generate.h"
#include "model/model_config.h"
#include "text/tokenizer/tokenizer.h"

/* The config's eos_token_id values plus the id of the tokenizer's eos_token
 * (tokenizer_config.json) when tok is non-NULL and names one: models often
 * declare a different end token in each (a chat model's <|im_end|> vs the
 * base <|endoftext|>), and generation must end on either. -E2BIG (with a
 * message) when they add up to more than GEN_STOP_MAX distinct ids. */
int stop_set_build(const struct model_config *cfg, const tokenizer *tok, struct gen_stop_set *ret, ifd_error *err);
