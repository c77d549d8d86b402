/* engine.h - embedding, an ordered list of stages, final norm and head.
 *
 * The engine owns the activations and the logits buffer; the stages own their
 * KV caches. One call to engine_decode() runs one batch (prefill chunks of
 * several sequences and single decode tokens mixed) through the whole network
 * with one pass over the weights. Not thread-safe: one scheduler thread drives
 * an engine. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "model/model.h"
#include "model/stage.h"

struct engine_config {
    int n_seq_max;     /* sequence slots */
    int n_ctx;         /* positions per slot (context length) */
    int n_batch_max;   /* most tokens in one engine_decode() call */
    int n_threads;     /* CPU threads for embedding/head and cpu stages; 0 = all cores */
    int n_logits_max;  /* most tokens with want_logits in one call; 0 = n_seq_max
                        * (capped at n_batch_max). The logits buffer is
                        * [n_logits_max, vocab]: 600 KiB a row for a 150k vocab. */
    int n_inflight;    /* batches in flight at once (engine_submit slots); 0 = 1.
                        * Each has its own [n_batch_max, hidden] activations. */
};

struct engine_batch {
    int n_tokens;
    const int32_t *tokens;     /* [n_tokens] */
    const int32_t *seq_ids;    /* [n_tokens] */
    const int32_t *positions;  /* [n_tokens] */
    const bool *want_logits;   /* [n_tokens]: compute logits for this token */
};

typedef struct engine engine;
struct thread_pool;

/* Creates an engine over `model` (which must bind embedding and head) and the
 * given stages, which must cover layers [0, n_layers) in order without gaps.
 * Takes ownership of the stages (destroyed with the engine) but not of model.
 * `pool` may be NULL (the engine creates its own of cfg->n_threads). */
int engine_create(const struct model *model, struct stage **stages, int n_stages,
                  const struct engine_config *cfg, struct thread_pool *pool,
                  engine **ret, ifd_error *err);

/* Convenience: one cpu stage per range in `splits` (layer boundaries, e.g.
 * {0, 1, 2} makes stages [0,1) and [1,2)); splits NULL means one stage. */
int engine_create_cpu(const struct model *model, const int *splits, int n_splits,
                      const struct engine_config *cfg, engine **ret, ifd_error *err);

void engine_destroy(engine *e); /* accepts NULL */

/* Runs the batch. Logits of the tokens with want_logits set are written to
 * engine_logits(e) in batch order, [n_wanted, vocab]. On failure the stages
 * before the failing one have taken the batch's positions: truncate its
 * sequences (engine_seq_truncate) before running them again, as the
 * scheduler does when it frees their slots; a plain retry is refused by the
 * stage contract (a position that does not continue its sequence). */
int engine_decode(engine *e, const struct engine_batch *b, ifd_error *err);

/* engine_decode() in two halves, for pipelined micro-batches: submit runs
 * the embedding and the stages up to and including the first one that
 * computes elsewhere (a remote stage, stage_is_async) and returns while it
 * computes; complete waits for it, runs the stages after it, the final norm
 * and the head. Without such a stage submit runs every stage. `slot` (0 to
 * n_inflight - 1) names the batch's activations: one batch per slot at a
 * time. Batches complete in submit order. b's arrays are borrowed until
 * complete returns and must not change meanwhile. Each sequence may be in
 * one batch in flight only (the stages check that positions continue). A
 * failed complete leaves the batch's sequences as a failed engine_decode()
 * does. */
int engine_submit(engine *e, int slot, const struct engine_batch *b, ifd_error *err);
int engine_complete(engine *e, int slot, ifd_error *err);
/* Micro-batches that keep every node busy: 1 without a stage that computes
 * elsewhere; else the nodes of every such stage (the workers of a chain)
 * plus one for the master, which runs the head (and any local stage). The
 * daemon caps it where the nodes share one machine's CPUs (daemon/models.c). */
int engine_pipeline_depth(const engine *e);
/* The same over stages not yet given to an engine (to size n_inflight). */
int engine_stages_pipeline_depth(struct stage *const *stages, int n_stages);

/* The logits of the last batch run or completed. */
const float *engine_logits(const engine *e);
/* The final-normed hidden state of token t of the last batch run or completed
 * into out [hidden]: what the head reads for logits, and what embeddings pool. */
int engine_output_normed(const engine *e, int t, float *out);

/* Keeps the first n_keep positions of a sequence in every stage; 0 frees it. */
int engine_seq_truncate(engine *e, int seq_id, int n_keep, ifd_error *err);

/* Gives dst_seq a copy of the first n_pos positions of src_seq in every
 * stage (stage_seq_copy). On failure (-EOPNOTSUPP: a stage cannot, e.g. a
 * remote one) dst is freed in every stage, so it can be prefilled instead. */
int engine_seq_copy(engine *e, int src_seq, int dst_seq, int n_pos, ifd_error *err);

/* Swaps the stage list for another over the same layers (a failover moved a
 * failed worker's layers elsewhere): checked as engine_create checks it,
 * then the old stages are destroyed and the new ones owned. The new stages
 * hold no position: the caller refills every sequence. No batch may be in
 * flight (-EBUSY: engine_complete each first). On failure nothing changes
 * and the stages stay the caller's. */
int engine_replace_stages(engine *e, struct stage **stages, int n_stages, ifd_error *err);

const struct model *engine_model(const engine *e);
int engine_stage_count(const engine *e);
struct stage *engine_stage(const engine *e, int i);
