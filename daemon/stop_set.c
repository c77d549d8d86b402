/* stop_set.c - see stop_set.h. */
#include "stop_set.h"

#include <errno.h>

int stop_set_build(const struct model_config *cfg, const tokenizer *tok, struct gen_stop_set *ret, ifd_error *err)
{
    struct gen_stop_set s;
    gen_stop_set_init(&s, cfg);
    const char *eos = tok ? tok_special_token(tok, "eos_token") : NULL;
    if (eos && gen_stop_set_add(&s, tok_token_to_id(tok, eos)) < 0)
        return ifd_error_set(err, -E2BIG, "more than %d end-of-sequence ids (config eos_token_id and eos_token '%.64s')",
                             GEN_STOP_MAX, eos);
    *ret = s;
    return 0;
}
