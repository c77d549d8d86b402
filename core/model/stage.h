/* stage.h - the one abstraction that matters: a stage runs layers
 * [layer_first, layer_last) of the network for a batch of tokens.
 *
 * Hidden states go in and come out as f32 [n_tokens, hidden]. The stage owns
 * the KV cache of its layers for every sequence slot. Implementations: cpu
 * (core/model/cpu_stage.c), vulkan (gpu/), remote (net/). The engine holds an
 * ordered list of stages and does not care where each runs: the same tokens
 * must come out whatever the list is. */
#pragma once

#include <stdint.h>

#include "base/error.h"

/* A batch of tokens from one or more sequences.
 * Tokens of one sequence appear in increasing, contiguous position order; the
 * KV cache of that sequence already holds every position before the first of
 * them. Token at position p attends to positions 0..p of its own sequence. */
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

struct stage_ops {
    const char *name; /* "cpu", "vulkan", "remote" */
    /* Runs the batch through every layer of the stage. */
    int (*forward)(struct stage *s, const struct stage_batch *b, ifd_error *err);
    /* Keeps the first n_keep positions of a sequence's KV cache; 0 clears it. */
    int (*seq_truncate)(struct stage *s, int seq_id, int n_keep, ifd_error *err);
    /* Fills *ret (optional: NULL means no stats). */
    void (*get_stats)(struct stage *s, struct stage_stats *ret);
    void (*destroy)(struct stage *s);
};

struct stage {
    const struct stage_ops *ops;
    int layer_first, layer_last;
    int hidden_size;
    int n_seq_max;              /* sequence slots */
    int n_ctx;                  /* positions per slot */
};

static inline int stage_forward(struct stage *s, const struct stage_batch *b, ifd_error *err)
{
    return s->ops->forward(s, b, err);
}

static inline void stage_destroy(struct stage *s)
{
    if (s)
        s->ops->destroy(s);
}
