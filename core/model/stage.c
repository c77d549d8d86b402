/* stage.c - the stage contract, checked once for every implementation
 * (see stage.h). The implementations do not check batches themselves, so
 * the CPU, Vulkan and remote stages accept and refuse the same input with
 * the same errno and message. */
#include "model/stage.h"

#include <errno.h>
#include <stdlib.h>

int stage_init(struct stage *s, const struct stage_ops *ops, int layer_first, int layer_last, int hidden_size,
               int n_seq_max, int n_ctx, int n_batch_max, ifd_error *err)
{
    *s = (struct stage){.ops = ops, .layer_first = layer_first, .layer_last = layer_last,
                        .hidden_size = hidden_size, .n_seq_max = n_seq_max, .n_ctx = n_ctx,
                        .n_batch_max = n_batch_max > 0 ? n_batch_max : STAGE_BATCH_MAX, .n_nodes = 1};
    if (layer_first < 0 || layer_last <= layer_first || hidden_size <= 0 || n_seq_max <= 0 || n_ctx <= 0)
        return ifd_error_set(err, -EINVAL,
                             "%s stage: layers [%d, %d), hidden %d, %d slots of %d positions: every size must be positive",
                             ops->name, layer_first, layer_last, hidden_size, n_seq_max, n_ctx);
    if (!(s->seq_len = calloc((size_t)n_seq_max, sizeof(*s->seq_len))))
        return ifd_error_set(err, -ENOMEM, "%s stage: out of memory for %d sequence slots", ops->name, n_seq_max);
    return 0;
}

void stage_finish(struct stage *s)
{
    if (!s)
        return;
    free(s->seq_len);
    s->seq_len = NULL;
}

/* The contract of stage.h, in its order: nothing is read past a failed check. */
static int batch_check(const struct stage *s, const struct stage_batch *b, ifd_error *err)
{
    const char *name = s->ops->name;
    if (b->n_tokens <= 0)
        return ifd_error_set(err, -EINVAL, "%s stage: empty batch (n_tokens %d)", name, b->n_tokens);
    if (b->n_tokens > s->n_batch_max)
        return ifd_error_set(err, -E2BIG, "%s stage: batch of %d tokens is over its limit of %d", name, b->n_tokens,
                             s->n_batch_max);
    for (int t = 0; t < b->n_tokens; t++) {
        int seq = b->seq_ids[t], pos = b->positions[t];
        if (seq < 0 || seq >= s->n_seq_max)
            return ifd_error_set(err, -EINVAL, "%s stage: token %d: sequence %d is outside the slots [0, %d)", name,
                                 t, seq, s->n_seq_max);
        if (pos < 0 || pos >= s->n_ctx)
            return ifd_error_set(err, -ERANGE, "%s stage: token %d: position %d is outside the context [0, %d)",
                                 name, t, pos, s->n_ctx);
    }
    /* Where each slot would be after the tokens before t: the previous token
     * of the same sequence in the batch, else what the slot holds. A batch
     * holds few sequences, so the backward scan costs less than a copy of
     * every slot's count. */
    for (int t = 0; t < b->n_tokens; t++) {
        int seq = b->seq_ids[t], pos = b->positions[t];
        int u = t - 1;
        while (u >= 0 && b->seq_ids[u] != seq)
            u--;
        int want = u >= 0 ? b->positions[u] + 1 : s->seq_len[seq];
        if (pos != want)
            return ifd_error_set(err, -EINVAL,
                                 "%s stage: token %d: position %d of sequence %d does not continue it at %d (%s%s)",
                                 name, t, pos, seq, want,
                                 u >= 0 ? "the token before it in the batch" : "the positions the slot holds",
                                 pos < want ? "; truncate the sequence to go back" : "");
    }
    return 0;
}

int stage_forward(struct stage *s, const struct stage_batch *b, ifd_error *err)
{
    int r = batch_check(s, b, err);
    if (r < 0)
        return r;
    if ((r = s->ops->forward(s, b, err)) < 0)
        return r;
    /* a sequence's tokens come in increasing order: its last one sets the count */
    for (int t = 0; t < b->n_tokens; t++)
        s->seq_len[b->seq_ids[t]] = b->positions[t] + 1;
    return 0;
}

int stage_is_async(const struct stage *s)
{
    return s->ops->forward_submit != NULL;
}

int stage_forward_submit(struct stage *s, const struct stage_batch *b, ifd_error *err)
{
    if (!stage_is_async(s))
        return stage_forward(s, b, err);
    int r = batch_check(s, b, err);
    if (r < 0)
        return r;
    if ((r = s->ops->forward_submit(s, b, err)) < 0)
        return r;
    for (int t = 0; t < b->n_tokens; t++)
        s->seq_len[b->seq_ids[t]] = b->positions[t] + 1;
    return 0;
}

int stage_forward_wait(struct stage *s, const struct stage_batch *b, ifd_error *err)
{
    if (!stage_is_async(s))
        return 0;
    int r = s->ops->forward_wait(s, b, err);
    if (r < 0) {
        /* The first token of each sequence in b sits where the slot ended at
         * submit (the contract): walking backwards leaves exactly that. No
         * other in-flight batch holds these sequences, so the count is b's. */
        for (int t = b->n_tokens - 1; t >= 0; t--)
            s->seq_len[b->seq_ids[t]] = b->positions[t];
    }
    return r;
}

int stage_seq_truncate(struct stage *s, int seq_id, int n_keep, ifd_error *err)
{
    if (seq_id < 0 || seq_id >= s->n_seq_max)
        return ifd_error_set(err, -EINVAL, "%s stage: sequence %d is outside the slots [0, %d)", s->ops->name,
                             seq_id, s->n_seq_max);
    if (n_keep < 0 || n_keep > s->n_ctx)
        return ifd_error_set(err, -ERANGE, "%s stage: cannot keep %d positions of a context of %d", s->ops->name,
                             n_keep, s->n_ctx);
    /* The op runs even when this side counts no more than n_keep: a remote
     * worker may hold positions of a forward whose result never came back. */
    int r = s->ops->seq_truncate ? s->ops->seq_truncate(s, seq_id, n_keep, err) : 0;
    if (n_keep < s->seq_len[seq_id])
        s->seq_len[seq_id] = n_keep;
    return r;
}

int stage_seq_copy(struct stage *s, int src_seq, int dst_seq, int n_pos, ifd_error *err)
{
    const char *name = s->ops->name;
    if (src_seq < 0 || src_seq >= s->n_seq_max || dst_seq < 0 || dst_seq >= s->n_seq_max || src_seq == dst_seq)
        return ifd_error_set(err, -EINVAL, "%s stage: cannot copy sequence %d to %d: two distinct slots of [0, %d)",
                             name, src_seq, dst_seq, s->n_seq_max);
    if (n_pos < 0 || n_pos > s->seq_len[src_seq])
        return ifd_error_set(err, -ERANGE, "%s stage: cannot copy %d positions of sequence %d, which holds %d", name,
                             n_pos, src_seq, s->seq_len[src_seq]);
    if (!s->ops->seq_copy)
        return ifd_error_set(err, -EOPNOTSUPP, "%s stage: cannot copy a sequence's cache", name);
    int r = s->ops->seq_copy(s, src_seq, dst_seq, n_pos, err);
    /* failed: what dst held may be half overwritten, so it holds nothing */
    s->seq_len[dst_seq] = r < 0 ? 0 : n_pos;
    return r;
}

int stage_seq_len(const struct stage *s, int seq_id)
{
    return seq_id >= 0 && seq_id < s->n_seq_max ? s->seq_len[seq_id] : 0;
}

int stage_reserve_batch(struct stage *s, int n_tokens, ifd_error *err)
{
    if (n_tokens > s->n_batch_max)
        return ifd_error_set(err, -E2BIG, "%s stage: cannot reserve for %d tokens, its limit is %d", s->ops->name,
                             n_tokens, s->n_batch_max);
    return s->ops->reserve_batch && n_tokens > 0 ? s->ops->reserve_batch(s, n_tokens, err) : 0;
}

void stage_get_stats(struct stage *s, struct stage_stats *ret)
{
    *ret = (struct stage_stats){0};
    if (s->ops->get_stats)
        s->ops->get_stats(s, ret);
}

void stage_destroy(struct stage *s)
{
    if (s)
        s->ops->destroy(s);
}
