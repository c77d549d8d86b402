/* stage.h - the one abstraction that matters: a stage runs layers
 * [layer_first, layer_last) of the network for a batch of tokens.
 *
 * Hidden states go in and come out as f32 [n_tokens, hidden]. The stage owns
 * the KV cache of its layers for every sequence slot. Implementations: cpu
 * (core/model/cpu_stage.c), vulkan (gpu/), remote (net/). The engine holds an
 * ordered list of stages and does not care where each runs: the same tokens
 * must come out whatever the list is.
 *
 * Callers use the stage_*() functions below, never the ops directly: the
 * wrappers (stage.c) check every batch against the contract once, for every
 * implementation alike, and keep the count of positions each slot holds; an
 * op is called only with input that keeps the contract. */
#pragma once

#include <stdint.h>

#include "base/error.h"

/* Most tokens in one forward unless an implementation declares fewer: the
 * CPU stage grows its scratch to the batch and the Vulkan stage splits it
 * into submits, so this bounds the memory one batch may cost. */
#define STAGE_BATCH_MAX 65536

/* A batch of tokens from one or more sequences.
 *
 * The contract, checked by stage_forward() in this order (the slot and the
 * position token by token, then continuity), one errno per kind of fault:
 *   1 <= n_tokens <= n_batch_max           else -EINVAL (empty) / -E2BIG (over)
 *   0 <= seq_ids[t] < n_seq_max            else -EINVAL
 *   0 <= positions[t] < n_ctx              else -ERANGE
 *   the tokens of one sequence continue it: the first at exactly the number
 *   of positions the slot holds, each next one at the previous + 1
 *                                          else -EINVAL
 * So a sequence never skips positions and never goes back over what it
 * holds: re-evaluating positions (a rewind) takes stage_seq_truncate() first.
 * Token at position p attends to positions 0..p of its own sequence. */
struct stage_batch {
    int n_tokens;
    const int32_t *seq_ids;    /* [n_tokens] slot in 0..n_seq_max-1 */
    const int32_t *positions;  /* [n_tokens] */
    float *hidden;             /* [n_tokens, hidden] read, then overwritten in place */
};

/* Cumulative counters, for /metrics and inferctl status. */
struct stage_stats {
    uint64_t forward_calls;
    uint64_t tokens;
    double forward_ms;          /* total wall time inside forward */
    const double *layer_ms;     /* [layer_last - layer_first] total per layer, or NULL */
    uint64_t device_memory_bytes; /* GPU stages: device memory in use; 0 otherwise */
};

struct stage;

/* What an implementation provides. Optional ops may be NULL. */
struct stage_ops {
    const char *name; /* "cpu", "vulkan", "remote" */
    /* Runs the batch through every layer of the stage. Called only by
     * stage_forward(), with a batch that keeps the contract above. */
    int (*forward)(struct stage *s, const struct stage_batch *b, ifd_error *err);
    /* Optional, both or neither: forward in two halves, so that the caller
     * computes (other micro-batches, sampling) while the stage does. submit
     * starts b (checked as for forward) and returns; wait finishes the
     * oldest submitted batch, which must be b, writing its output into
     * b->hidden. Between the two the batch's arrays stay the caller's and
     * must not change. The stage bounds what it holds in flight itself (it
     * may finish older batches inside submit, keeping their output for
     * their waits). A failure may fail the other outstanding batches too
     * (each of their waits then reports it). The remote stage: FORWARDs in flight on its
     * chain of workers. */
    int (*forward_submit)(struct stage *s, const struct stage_batch *b, ifd_error *err);
    int (*forward_wait)(struct stage *s, const struct stage_batch *b, ifd_error *err);
    /* Optional: the sequence keeps its first n_keep positions, 0 frees it
     * (called with the arguments checked, whatever the slot holds). NULL when the count stage.c keeps is all there is
     * to it: positions past the count are never read again (attention reads
     * 0..pos, and a new token overwrites its cache row). The remote stage
     * tells its workers. */
    int (*seq_truncate)(struct stage *s, int seq_id, int n_keep, ifd_error *err);
    /* Optional: the cache of positions [0, n_pos) of src_seq becomes that of
     * dst_seq too (called with distinct slots in range and src holding at
     * least n_pos). NULL: the stage cannot (the remote stage: its workers
     * hold the cache), and stage_seq_copy() says -EOPNOTSUPP. */
    int (*seq_copy)(struct stage *s, int src_seq, int dst_seq, int n_pos, ifd_error *err);
    /* Optional: sizes the scratch for batches of up to n_tokens now, so that
     * forward never allocates for them. NULL when the scratch is sized at
     * create (or there is none). */
    int (*reserve_batch)(struct stage *s, int n_tokens, ifd_error *err);
    /* Optional: fills *ret. */
    void (*get_stats)(struct stage *s, struct stage_stats *ret);
    /* Frees the implementation, which calls stage_finish() on its base. */
    void (*destroy)(struct stage *s);
};

/* The part every implementation embeds first (initialized by stage_init). */
struct stage {
    const struct stage_ops *ops;
    int layer_first, layer_last;
    int hidden_size;
    int n_seq_max;              /* sequence slots */
    int n_ctx;                  /* positions per slot */
    int n_batch_max;            /* most tokens in one forward */
    /* Nodes that compute one after the other inside this stage: 1, or the
     * workers of a remote chain. The engine sizes its pipeline by it. */
    int n_nodes;
    int *seq_len;               /* [n_seq_max] positions each slot holds; stage.c's alone */
};

/* For implementations: fills the base of a new stage with no position held.
 * n_batch_max <= 0 means STAGE_BATCH_MAX. -EINVAL on sizes that are not
 * positive, -ENOMEM. Undo with stage_finish() (also after a failed init). */
int stage_init(struct stage *s, const struct stage_ops *ops, int layer_first, int layer_last, int hidden_size,
               int n_seq_max, int n_ctx, int n_batch_max, ifd_error *err);
void stage_finish(struct stage *s);

/* Checks b against the contract (see struct stage_batch), then runs it; the
 * message names the token, the field and the limit. On success the slots of
 * b hold their last position + 1; on failure they hold what they held. */
int stage_forward(struct stage *s, const struct stage_batch *b, ifd_error *err);

/* The two halves of stage_forward() (see the ops): submit checks b against
 * the contract and counts its positions as held at once, so that the next
 * batch of a sequence continues from them; a failed wait gives them back
 * (each sequence of b holds again what it held before b). A stage without
 * the ops runs the whole forward in submit and wait does nothing. Waits come
 * in submit order. */
int stage_forward_submit(struct stage *s, const struct stage_batch *b, ifd_error *err);
int stage_forward_wait(struct stage *s, const struct stage_batch *b, ifd_error *err);
/* Whether the stage computes between submit and wait (has the ops). */
int stage_is_async(const struct stage *s);

/* Keeps the first n_keep positions of a sequence (0 frees it; more than it
 * holds changes nothing). seq_id outside the slots: -EINVAL; n_keep outside
 * [0, n_ctx]: -ERANGE. The slot holds at most n_keep positions afterwards
 * even when the implementation reports a failure (a remote worker that could
 * not be told), so that it can be refilled from n_keep. */
int stage_seq_truncate(struct stage *s, int seq_id, int n_keep, ifd_error *err);

/* Gives dst_seq a copy of the first n_pos positions of src_seq, so that
 * sequences with a common prefix (the n choices of one prompt) run it once.
 * Afterwards dst holds exactly n_pos positions. A slot outside the slots, or
 * src == dst: -EINVAL; n_pos outside [0, what src holds]: -ERANGE; a stage
 * without the op: -EOPNOTSUPP; these change nothing. When the op fails,
 * dst holds no position (what it held may be half overwritten): it is
 * refilled from 0. */
int stage_seq_copy(struct stage *s, int src_seq, int dst_seq, int n_pos, ifd_error *err);

/* Positions the slot holds (0 for a slot outside the stage). */
int stage_seq_len(const struct stage *s, int seq_id);

/* Sizes scratch for batches of up to n_tokens (see the op); over n_batch_max:
 * -E2BIG. */
int stage_reserve_batch(struct stage *s, int n_tokens, ifd_error *err);

/* Fills *ret with the stage's counters (zeros when it keeps none). */
void stage_get_stats(struct stage *s, struct stage_stats *ret);

/* Accepts NULL. */
void stage_destroy(struct stage *s);
