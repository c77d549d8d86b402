/* stage_contract.c - see stage_contract.h. */
#include "common/stage_contract.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_T 8

struct run {
    struct stage *s;
    float *hidden; /* [MAX_T, hidden] */
};

/* Runs tokens (seq, pos) pairs through s; returns stage_forward's result. */
static int fwd(struct run *r, int n, const int32_t *seq, const int32_t *pos, ifd_error *err)
{
    for (size_t i = 0; i < (size_t)MAX_T * (size_t)r->s->hidden_size; i++)
        r->hidden[i] = (float)(i % 7) * 0.125f - 0.375f;
    struct stage_batch b = {.n_tokens = n, .seq_ids = seq, .positions = pos, .hidden = r->hidden};
    return stage_forward(r->s, &b, err);
}

/* A refused batch: the errno, the message names the stage and `what`, and
 * nothing ran (no slot moved, no forward counted). */
static void refused(struct run *r, int n, const int32_t *seq, const int32_t *pos, int want, const char *what)
{
    struct stage_stats before, after;
    stage_get_stats(r->s, &before);
    int held[2] = {stage_seq_len(r->s, 0), stage_seq_len(r->s, 1)};
    ifd_error err = {{0}};
    int got = fwd(r, n, seq, pos, &err);
    cr_assert_eq(got, want, "%s stage, %s: got %d, want %d (%s)", r->s->ops->name, what, got, want, err.msg);
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "%s stage: ", r->s->ops->name);
    cr_assert(strncmp(err.msg, prefix, strlen(prefix)) == 0, "message does not name the stage: %s", err.msg);
    cr_assert(strstr(err.msg, what), "message does not say '%s': %s", what, err.msg);
    stage_get_stats(r->s, &after);
    cr_assert_eq(after.forward_calls, before.forward_calls, "%s stage ran a refused batch", r->s->ops->name);
    cr_assert_eq(stage_seq_len(r->s, 0), held[0]);
    cr_assert_eq(stage_seq_len(r->s, 1), held[1]);
}

void stage_contract_check(struct stage *s)
{
    cr_assert(s->n_seq_max >= 2 && s->n_ctx >= 4, "the contract check needs 2 slots of 4 positions");
    struct run r = {.s = s, .hidden = calloc((size_t)MAX_T * (size_t)s->hidden_size, sizeof(float))};
    cr_assert_not_null(r.hidden);
    ifd_error err = {{0}};
    int32_t seq[MAX_T] = {0}, pos[MAX_T] = {0};

    /* empty and oversized batches; the size is checked before any token is
     * read, so the arrays need not be n_tokens long */
    refused(&r, 0, seq, pos, -EINVAL, "empty batch");
    refused(&r, -3, seq, pos, -EINVAL, "empty batch");
    char over[64];
    snprintf(over, sizeof(over), "over its limit of %d", s->n_batch_max);
    refused(&r, s->n_batch_max + 1, seq, pos, -E2BIG, over);

    /* sequence ids outside the slots */
    seq[0] = s->n_seq_max;
    char msg[96];
    snprintf(msg, sizeof(msg), "token 0: sequence %d is outside the slots [0, %d)", s->n_seq_max, s->n_seq_max);
    refused(&r, 1, seq, pos, -EINVAL, msg);
    seq[0] = -1;
    refused(&r, 1, seq, pos, -EINVAL, "sequence -1 is outside");

    /* positions outside the context */
    seq[0] = 0;
    pos[0] = s->n_ctx;
    snprintf(msg, sizeof(msg), "token 0: position %d is outside the context [0, %d)", s->n_ctx, s->n_ctx);
    refused(&r, 1, seq, pos, -ERANGE, msg);
    pos[0] = -1;
    refused(&r, 1, seq, pos, -ERANGE, "position -1 is outside");

    /* a gap: the empty slot must start at 0 */
    pos[0] = 1;
    refused(&r, 1, seq, pos, -EINVAL, "position 1 of sequence 0 does not continue it at 0");

    /* two sequences interleaved in one batch are fine */
    int32_t s2[4] = {0, 1, 0, 1}, p2[4] = {0, 0, 1, 1};
    cr_assert_eq(fwd(&r, 4, s2, p2, &err), 0, "%s", err.msg);
    cr_assert_eq(stage_seq_len(s, 0), 2);
    cr_assert_eq(stage_seq_len(s, 1), 2);

    /* inside a batch, a sequence's next token is at the previous + 1 */
    int32_t s3[2] = {0, 0}, p3[2] = {2, 4};
    refused(&r, 2, s3, p3, -EINVAL, "token 1: position 4 of sequence 0 does not continue it at 3");
    p3[1] = 2;
    refused(&r, 2, s3, p3, -EINVAL, "token 1: position 2 of sequence 0 does not continue it at 3");

    /* a rewind over held positions is refused until the sequence is truncated */
    seq[0] = 1;
    pos[0] = 1;
    refused(&r, 1, seq, pos, -EINVAL, "truncate the sequence to go back");
    cr_assert_eq(stage_seq_truncate(s, 1, 1, &err), 0, "%s", err.msg);
    cr_assert_eq(stage_seq_len(s, 1), 1);
    cr_assert_eq(fwd(&r, 1, seq, pos, &err), 0, "after truncating: %s", err.msg);
    cr_assert_eq(stage_seq_len(s, 1), 2);
    /* keeping more than it holds changes nothing */
    cr_assert_eq(stage_seq_truncate(s, 1, 4, &err), 0, "%s", err.msg);
    cr_assert_eq(stage_seq_len(s, 1), 2);

    /* truncate's own arguments */
    cr_assert_eq(stage_seq_truncate(s, s->n_seq_max, 0, &err), -EINVAL);
    cr_assert(strstr(err.msg, "is outside the slots"), "%s", err.msg);
    cr_assert_eq(stage_seq_truncate(s, 0, -1, &err), -ERANGE);
    cr_assert(strstr(err.msg, "cannot keep -1 positions"), "%s", err.msg);
    cr_assert_eq(stage_seq_truncate(s, 0, s->n_ctx + 1, &err), -ERANGE);

    /* fill a slot to the end of the context: the next position is refused */
    cr_assert_eq(stage_seq_truncate(s, 0, 0, &err), 0, "%s", err.msg);
    for (int p = 0; p < s->n_ctx; p++) {
        seq[0] = 0;
        pos[0] = p;
        cr_assert_eq(fwd(&r, 1, seq, pos, &err), 0, "position %d: %s", p, err.msg);
    }
    pos[0] = s->n_ctx;
    refused(&r, 1, seq, pos, -ERANGE, "is outside the context");

    /* copying a prefix: the arguments are refused before the op runs, and a
     * refused copy changes nothing; slot 0 holds n_ctx positions, slot 1 two */
    cr_assert_eq(stage_seq_copy(s, 0, 0, 1, &err), -EINVAL);
    cr_assert(strstr(err.msg, "cannot copy sequence 0 to 0: two distinct slots"), "%s", err.msg);
    cr_assert_eq(stage_seq_copy(s, 0, s->n_seq_max, 1, &err), -EINVAL);
    cr_assert_eq(stage_seq_copy(s, -1, 1, 1, &err), -EINVAL);
    cr_assert_eq(stage_seq_copy(s, 1, 0, 3, &err), -ERANGE);
    cr_assert(strstr(err.msg, "cannot copy 3 positions of sequence 1, which holds 2"), "%s", err.msg);
    cr_assert_eq(stage_seq_copy(s, 1, 0, -1, &err), -ERANGE);
    cr_assert_eq(stage_seq_len(s, 0), s->n_ctx);
    cr_assert_eq(stage_seq_len(s, 1), 2);
    if (s->ops->seq_copy) {
        /* dst holds exactly the copy, longer or shorter than before, and
         * continues from it */
        cr_assert_eq(stage_seq_copy(s, 0, 1, 3, &err), 0, "%s", err.msg);
        cr_assert_eq(stage_seq_len(s, 1), 3);
        cr_assert_eq(stage_seq_len(s, 0), s->n_ctx, "the source is unchanged");
        seq[0] = 1;
        pos[0] = 3;
        cr_assert_eq(fwd(&r, 1, seq, pos, &err), 0, "after a copy: %s", err.msg);
        cr_assert_eq(stage_seq_copy(s, 0, 1, 1, &err), 0, "%s", err.msg);
        cr_assert_eq(stage_seq_len(s, 1), 1);
    } else {
        cr_assert_eq(stage_seq_copy(s, 0, 1, 3, &err), -EOPNOTSUPP);
        cr_assert(strstr(err.msg, "cannot copy a sequence's cache"), "%s", err.msg);
        cr_assert_eq(stage_seq_len(s, 1), 2);
    }

    cr_assert_eq(stage_seq_truncate(s, 0, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(stage_seq_truncate(s, 1, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(stage_seq_len(s, 0), 0);
    free(r.hidden);
}
