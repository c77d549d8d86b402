/* scheduler.h - the request queue and the continuous-batching loop.
 *
 * HTTP threads submit tokenized requests; one scheduler thread owns the
 * engine. Every step is one engine_decode() batch holding one token for each
 * sequence that is generating plus a chunk of at most prefill_chunk prompt
 * tokens of sequences still prefilling, so a long prompt never stalls running
 * streams for more than one chunk. Sequences join and leave between steps;
 * a finished or cancelled one frees its slot at once. With prefix_cache the
 * freed slot keeps its KV cache: a later request takes the free slot whose
 * cached tokens share the longest prefix with its prompt, keeps those
 * positions (engine_seq_truncate drops the rest, on workers too) and
 * prefills only what follows; otherwise the slot is truncated to 0. Output (text after stop-string hold-back, logprobs, finish) is
 * published per request for the HTTP thread to collect. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "model/engine.h"
#include "model/generate.h"
#include "base/error.h"
#include "text/tokenizer/tokenizer.h"

struct metrics;
struct metrics_failover;
struct sched;
struct sched_req;

struct sched_config {
    int n_seq_max;       /* sequence slots (engine n_seq_max) */
    int n_ctx;           /* positions per slot */
    int n_batch_max;     /* engine n_batch_max: >= n_seq_max + 1 */
    int prefill_chunk;   /* prompt tokens per step */
    int queue_depth;     /* waiting requests beyond the slots; more: -EAGAIN */
    int micro_batches;   /* batches kept in flight at once (engine n_inflight); 0 or 1: one
                          * synchronous batch per step. See sched_step() in scheduler.c. */
    bool prefix_cache;   /* free slots keep their cache for prompts that begin the same way */
    /* Optional (NULL: none): a forward failed with a worker down
     * (-EHOSTDOWN); asks for its layers to move elsewhere and for the
     * engine's stages to be replaced by ones holding no position
     * (cluster_failover, through the caller, so that neither the scheduler
     * nor core/ knows the cluster). 0: *ret says what moved (worker empty:
     * nothing had to), and every running sequence's cache is rebuilt from
     * its tokens so that it continues as if nothing happened; < 0: err says
     * why, and the batch's requests end with 503 as without it. */
    int (*recover)(void *ctx, struct metrics_failover *ret, ifd_error *err);
    void *recover_ctx;
};

struct sched_req_params {
    const int32_t *prompt;   /* [n_prompt], copied */
    size_t n_prompt;         /* 1 .. n_ctx - 1 */
    int max_tokens;          /* >= 1; clipped to what the context leaves */
    struct sampler_params sampling;
    char *const *stop;       /* [n_stop], copied */
    int n_stop;
    bool logprobs;
    int top_logprobs;
    /* An embedding instead of a generation: the prompt (1 .. n_ctx tokens)
     * is prefilled, its final-normed hidden states pooled (the last
     * position's, or the mean of all) and L2-normalized; nothing is sampled. */
    bool embed;
    bool pool_mean;
    const struct api_logit_bias *logit_bias; /* [n_logit_bias], ids < n_vocab, copied */
    int n_logit_bias;
    /* echo with logprobs: the output's logprob entries begin with one per
     * prompt token (the first has none: is_null), computed from the logits
     * of every prompt position during prefill, a chunk at a time. */
    bool prompt_logprobs;
    bool prompt_only;        /* max_tokens 0: prefill (and prompt logprobs) only, nothing generated */
    /* The output constraint (NULL: none). sched_submit() takes it over when
     * it succeeds; on failure it stays the caller's. */
    struct grammar *grammar;
    /* NULL, or a request of the same prompt submitted before this one and
     * still held by the caller (the first of n choices): when both are
     * admitted while it prefills, this one takes a copy of its prompt's KV
     * cache and samples its first token from the same logits instead of
     * prefilling the prompt again. Ignored when the prompts differ, for
     * embeddings and prompt logprobs, and on engines whose stages cannot
     * copy a cache (engine_seq_copy: remote stages), where each prefills. */
    const struct sched_req *share_prefill;
};

/* What a request has produced so far, collected by sched_req_collect(). */
struct sched_output {
    char *text;                 /* new text, NUL-terminated, grown as needed; caller frees */
    size_t text_len, text_cap;
    struct api_logprob *lp;     /* new logprob entries; caller frees */
    int n_lp, lp_cap;
    bool done;
    const char *finish_reason;  /* "stop" / "length" when done without error */
    int error_status;           /* HTTP status when done with an error (503 drain, 500 engine) */
    char error_msg[256];
    int prompt_tokens;
    /* Of prompt_tokens, those not run for this request: kept from the cache
     * an earlier request left in the slot (for a choice that copied its
     * leader's prompt cache, what the leader kept). */
    int cached_tokens;
    int completion_tokens;
    float *embedding;           /* embed requests, once done: [n_embedding]; caller frees */
    int n_embedding;
};

/* The scheduler drives e (not owned) with tok for detokenization. The ids of
 * stops (copied; see stop_set.h) end a generation with finish_reason "stop". */
int sched_create(engine *e, const tokenizer *tok, const struct gen_stop_set *stops,
                 const struct sched_config *cfg, struct metrics *m, struct sched **ret, ifd_error *err);
/* Stops the thread (aborting whatever still runs) and frees. Accepts NULL. */
void sched_destroy(struct sched *s);

/* Queues a request. -EAGAIN: queue full (429); -ESHUTDOWN: draining (503);
 * -EINVAL: prompt does not fit the context (message in err). The returned
 * handle must be released with sched_req_release(). */
int sched_submit(struct sched *s, const struct sched_req_params *p, struct sched_req **ret, ifd_error *err);
/* Between sched_hold() and sched_release() nothing queued is admitted: the
 * choices of one request are submitted in between, so that those after the
 * first are queued before it starts its prompt and copy its cache
 * (share_prefill) instead of racing it. Holds nest; each needs its release,
 * soon (admission waits). */
void sched_hold(struct sched *s);
void sched_release(struct sched *s);

/* Waits up to timeout_ms for new output, then moves it into out (appending).
 * Returns 1 when something new arrived or the request is done, 0 on timeout. */
int sched_req_collect(struct sched_req *r, int timeout_ms, struct sched_output *out);

/* The client is gone: the sequence stops at the next step and frees its slot. */
void sched_req_cancel(struct sched_req *r);
/* Drops the caller's handle; cancels the request if it is still running. */
void sched_req_release(struct sched_req *r);
void sched_output_finish(struct sched_output *out);

/* Graceful shutdown: new submissions get -ESHUTDOWN, queued requests end
 * with 503 at once, running ones continue. */
void sched_drain_begin(struct sched *s);
/* Ends every running request with an error (drain timeout). */
void sched_abort_running(struct sched *s, const char *why);
/* Running plus queued requests. */
int sched_busy(struct sched *s);
void sched_counts(struct sched *s, int *ret_queued, int *ret_running);
/* Monotonic seconds of the loop's last sign of life (for the watchdog). */
double sched_heartbeat(struct sched *s);
/* Changes the queue bound at runtime (SIGHUP). */
void sched_set_queue_depth(struct sched *s, int queue_depth);
