/* scheduler.c - see scheduler.h.
 *
 * Locking: one mutex (s->mu) guards the queue, every request's published
 * state and the counts; each request has its own condition variable so an
 * HTTP thread wakes only for its own output. The engine, the samplers, the
 * detokenizers and the hold-back buffers belong to the scheduler thread
 * alone and are used without the lock. */
#include "scheduler.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "text/grammar/grammar.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/sampler.h"
#include "base/clock.h"

struct sched_req {
    struct sched *s;
    int refs;                    /* HTTP handle + scheduler; under s->mu */
    pthread_cond_t cv;

    /* Parameters, immutable after submit. */
    int32_t *prompt;             /* [n_prompt] */
    size_t n_prompt;
    int max_tokens;
    struct sampler_params sampling;
    char *stop[API_MAX_STOP];
    int n_stop;
    bool logprobs;
    int top_logprobs;
    bool embed, pool_mean;
    struct api_logit_bias *logit_bias; /* [n_logit_bias] */
    int n_logit_bias;
    bool prompt_logprobs;
    bool prompt_only;
    struct grammar *grammar;     /* output constraint, owned; NULL: none */
    double t_submit;
    uint64_t id;                 /* unique, from 1; set under s->mu at submit */
    uint64_t share_id;           /* 0, or the id of the request whose prefill this one may copy */
    int cached_tokens;           /* prompt positions kept from a slot's cache; under s->mu */

    /* Published state, under s->mu. */
    bool cancelled;
    bool done;
    const char *finish_reason;
    int error_status;
    char error_msg[256];
    char *out_text;              /* not yet collected */
    size_t out_len, out_cap;
    struct api_logprob *out_lp;  /* not yet collected */
    int out_n_lp, out_lp_cap;
    int completion_tokens;
    float *embedding;            /* embed: [hidden], pooled by the scheduler thread, handed over when done */

    struct sched_req *next;      /* queue link */
};

/* A sequence slot; scheduler thread only. */
struct sched_seq {
    struct sched_req *req;       /* NULL: slot free */
    struct api_logprob *plp;     /* [n_seq_max] prompt logprobs staged this step (prompt_logprobs only) */
    int n_plp;
    size_t n_fed;                /* prompt tokens already in the KV cache */
    int n_past;                  /* positions in the KV cache */
    /* Of the prompt's positions, how many came from an earlier request's
     * cache (kept at admission, or the leader's count for a follower that
     * copies its cache); published as the request's cached_tokens. */
    int n_cached;
    /* A free slot (req NULL) with n_past > 0 keeps the cache its last
     * request left: hist[0..n_past) for a later prompt that begins the same
     * way. released orders those caches for eviction, least recent first. */
    uint64_t released;
    /* [n_ctx]: the token of every position the slot holds or is about to
     * hold: the prompt from admission on, then each generated token once it
     * is fed. hist[0..n_past) is exactly what the KV cache was computed
     * from, so a cache can be matched against a new prompt or rebuilt from
     * it; the prefill reads its chunks from here. */
    int32_t *hist;
    /* After a failover the new stages hold nothing: positions below
     * n_replay are fed again from hist (in prefill chunks, without logits)
     * before the slot goes on where it was. 0: nothing to rebuild. */
    int n_replay;
    bool generating;             /* prompt done; next_token is the token to feed */
    /* A follower (req->share_id) admitted while its leader prefills: it
     * feeds nothing until the leader's last prompt token, then takes a copy
     * of the leader's cache (share_prefill). Cleared to prefill itself when
     * the leader leaves first or the copy fails. */
    bool waiting;
    bool shared;                 /* got its first token from a copy this step: publish it */
    bool in_flight;              /* in a micro-batch submitted and not yet completed: not released, not batched */
    uint64_t sent;               /* s->mb_sent when its last micro-batch was submitted: who waited longest */
    int32_t next_token;
    struct gen_seq gen;          /* the shared generation step (model/generate.h) */
    sampler *smp;
    grammar_matcher *gm;         /* NULL: unconstrained */
    struct tok_stream *ts;
    char *pending;               /* detokenized text held back for stop strings */
    size_t pending_len, pending_cap;
    /* Staged this step, published under the lock. */
    size_t emit_len;             /* leading bytes of pending to publish */
    bool has_lp;
    struct api_logprob lp;
    const char *finish;          /* "stop"/"length" when finishing this step */
    uint64_t admitted;           /* admission order: prefill goes first come first served */
};

/* A micro-batch: its slice of the batch scratch (engine_submit borrows
 * the token arrays until engine_complete) and what its logits rows are for.
 * Scheduler thread only. */
struct sched_mb {
    int32_t *tokens, *seq_ids, *pos; /* [n_batch_max] */
    bool *want;                      /* [n_batch_max] */
    int *row_seq;                    /* [n_batch_max]: the slot of each logits row */
    int *row_ppos;                   /* [n_batch_max]: -1, or the prompt index whose next token's logprob the row gives */
    int n, n_rows, n_decode, n_prefill;
    double t0;                       /* submitted at */
};

struct sched {
    engine *e;
    const tokenizer *tok;
    struct metrics *metrics;
    struct sched_config cfg;
    int n_vocab;
    struct gen_stop_set stops;

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t work_cv;      /* new work or shutdown */
    struct sched_req *q_head, *q_tail;
    int submit_holds;            /* sched_hold() minus sched_release(): no admission while > 0 */
    int n_queued;
    int n_running;
    bool draining;
    bool stop_thread;
    bool abort_running;
    char abort_msg[128];
    double heartbeat;
    uint64_t admit_counter;
    uint64_t release_counter;    /* stamps sched_seq.released */
    uint64_t req_counter;        /* last request id given out */
    /* engine_seq_copy said -EOPNOTSUPP once: it never will, so followers
     * prefill at once rather than wait for a copy that fails. */
    bool no_seq_copy;
    /* Failovers since the last forward that succeeded: bounds the retries
     * when the new stages fail too. */
    int failovers_in_row;

    struct sched_seq *seqs;      /* [n_seq_max] */
    int32_t *hist;               /* [n_seq_max * n_ctx]: the slots' hist arrays */
    /* Batch scratch, sized once: n_batch_max per micro-batch, which mb[]
     * slices. */
    int32_t *b_tokens, *b_seq_ids, *b_pos;
    bool *b_want;
    int *row_seq, *row_ppos;
    /* Pipelined micro-batches (cfg.micro_batches): mb[k] uses engine slot
     * k; they are submitted round robin and complete in that order, the
     * oldest in flight being mb[mb_head]. */
    struct sched_mb *mb;         /* [micro_batches] */
    int mb_head, mb_in_flight;
    uint64_t mb_sent;            /* micro-batches submitted */
    double mb_done_at;           /* when the last one completed */
    float *logits_copy;          /* [n_vocab]: raw logits kept for logprobs */
    float *logits_share;         /* [n_vocab]: a leader's row, which each follower's sampler changes */
    float *normed;               /* [hidden]: one token's output, for embeddings */
    int hidden;
    grammar_vocab *gvocab;       /* the vocabulary trie, built at the first constrained request */
    int *order;                  /* [n_seq_max]: prefill order */
};

static void *sched_thread_main(void *arg);

/* Successful failovers in a row, with no forward succeeding between, before
 * the batch fails: a layout that breaks at once is not worth rebuilding
 * again. */
#define SCHED_FAILOVER_TRIES 3

/* Prompt ids fed to a detokenizer before the output (see seq_admit): more
 * than a character or a decoder's leading-space rule ever spans. */
#define SCHED_PROMPT_CONTEXT 8

static void req_free(struct sched_req *r)
{
    pthread_cond_destroy(&r->cv);
    grammar_destroy(r->grammar);
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->out_text);
    free(r->out_lp);
    free(r->embedding);
    free(r->logit_bias);
    free(r);
}

/* Under s->mu. */
static void req_unref_locked(struct sched_req *r)
{
    if (--r->refs == 0)
        req_free(r);
}

/* Under s->mu: the request ends (success when status == 0). */
static void req_finish_locked(struct sched *s, struct sched_req *r, const char *reason, int status, const char *msg)
{
    if (r->done)
        return;
    r->done = true;
    r->finish_reason = reason;
    r->error_status = status;
    if (msg)
        snprintf(r->error_msg, sizeof(r->error_msg), "%s", msg);
    if (s->metrics && status == 0)
        metrics_tokens(s->metrics, (int)r->n_prompt, r->cached_tokens, r->completion_tokens);
    pthread_cond_broadcast(&r->cv);
}

static int grow(void **p, size_t elem, size_t need, size_t *cap)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 16;
    while (ncap < need)
        ncap *= 2;
    void *np = realloc(*p, elem * ncap);
    if (!np)
        return -ENOMEM;
    *p = np;
    *cap = ncap;
    return 0;
}

int sched_create(engine *e, const tokenizer *tok, const struct gen_stop_set *stops,
                 const struct sched_config *cfg, struct metrics *m, struct sched **ret, ifd_error *err)
{
    if (cfg->n_seq_max < 1 || cfg->n_ctx < 2 || cfg->n_batch_max < cfg->n_seq_max + 1 || cfg->prefill_chunk < 1 ||
        cfg->micro_batches < 0)
        return ifd_error_set(err, -EINVAL, "scheduler: bad sizes (slots %d, context %d, batch %d, chunk %d, "
                             "micro-batches %d)", cfg->n_seq_max, cfg->n_ctx, cfg->n_batch_max, cfg->prefill_chunk,
                             cfg->micro_batches);
    struct sched *s = calloc(1, sizeof(*s));
    if (!s)
        return ifd_error_set(err, -ENOMEM, "scheduler: out of memory");
    s->e = e;
    s->tok = tok;
    s->metrics = m;
    s->cfg = *cfg;
    if (s->cfg.micro_batches < 1)
        s->cfg.micro_batches = 1;
    s->n_vocab = engine_model(e)->cfg.vocab_size;
    s->hidden = engine_model(e)->cfg.hidden_size;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work_cv, NULL);
    int nb = cfg->n_batch_max * s->cfg.micro_batches;
    s->seqs = calloc((size_t)cfg->n_seq_max, sizeof(*s->seqs));
    s->hist = malloc(sizeof(int32_t) * (size_t)cfg->n_seq_max * (size_t)cfg->n_ctx);
    for (int i = 0; s->seqs && s->hist && i < cfg->n_seq_max; i++)
        s->seqs[i].hist = s->hist + (size_t)i * (size_t)cfg->n_ctx;
    s->b_tokens = malloc(sizeof(int32_t) * (size_t)nb);
    s->b_seq_ids = malloc(sizeof(int32_t) * (size_t)nb);
    s->b_pos = malloc(sizeof(int32_t) * (size_t)nb);
    s->b_want = malloc(sizeof(bool) * (size_t)nb);
    s->row_seq = malloc(sizeof(int) * (size_t)nb);
    s->row_ppos = malloc(sizeof(int) * (size_t)nb);
    s->logits_copy = malloc(sizeof(float) * (size_t)s->n_vocab);
    s->logits_share = malloc(sizeof(float) * (size_t)s->n_vocab);
    s->order = malloc(sizeof(int) * (size_t)cfg->n_seq_max);
    s->normed = malloc(sizeof(float) * (size_t)s->hidden);
    s->mb = calloc((size_t)s->cfg.micro_batches, sizeof(*s->mb));
    for (int k = 0; s->mb && s->b_tokens && s->b_seq_ids && s->b_pos && s->b_want && s->row_seq && s->row_ppos &&
                    k < s->cfg.micro_batches; k++) {
        size_t off = (size_t)k * (size_t)cfg->n_batch_max;
        s->mb[k] = (struct sched_mb){.tokens = s->b_tokens + off, .seq_ids = s->b_seq_ids + off,
                                     .pos = s->b_pos + off, .want = s->b_want + off,
                                     .row_seq = s->row_seq + off, .row_ppos = s->row_ppos + off};
    }
    if (!s->mb || !s->seqs || !s->hist || !s->b_tokens || !s->b_seq_ids || !s->b_pos || !s->b_want || !s->row_seq || !s->row_ppos ||
        !s->logits_copy || !s->logits_share || !s->order || !s->normed) {
        sched_destroy(s);
        return ifd_error_set(err, -ENOMEM, "scheduler: out of memory");
    }
    s->stops = *stops;
    s->heartbeat = ifd_now_s();
    if (pthread_create(&s->thread, NULL, sched_thread_main, s) != 0) {
        sched_destroy(s);
        return ifd_error_set(err, -EAGAIN, "scheduler: cannot start thread");
    }
    s->thread_started = true;
    *ret = s;
    return 0;
}

static void seq_release(struct sched *s, struct sched_seq *q);

void sched_destroy(struct sched *s)
{
    if (!s)
        return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->stop_thread = true;
        s->draining = true;
        s->abort_running = true;
        snprintf(s->abort_msg, sizeof(s->abort_msg), "server shutting down");
        pthread_cond_broadcast(&s->work_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; s->seqs && i < s->cfg.n_seq_max; i++)
        free(s->seqs[i].pending);
    grammar_vocab_destroy(s->gvocab);
    free(s->seqs);
    free(s->hist);
    free(s->b_tokens);
    free(s->b_seq_ids);
    free(s->b_pos);
    free(s->b_want);
    free(s->row_seq);
    free(s->row_ppos);
    free(s->mb);
    free(s->logits_copy);
    free(s->logits_share);
    free(s->order);
    free(s->normed);
    pthread_cond_destroy(&s->work_cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int sched_submit(struct sched *s, const struct sched_req_params *p, struct sched_req **ret, ifd_error *err)
{
    if (p->n_prompt == 0)
        return ifd_error_set(err, -EINVAL, "the prompt is empty");
    if (p->embed && p->n_prompt > (size_t)s->cfg.n_ctx)
        return ifd_error_set(err, -EINVAL, "the input is %zu tokens; the context holds %d", p->n_prompt,
                             s->cfg.n_ctx);
    if (!p->embed && p->n_prompt >= (size_t)s->cfg.n_ctx)
        return ifd_error_set(err, -EINVAL,
                             "the prompt is %zu tokens; the context holds %d (prompt plus at least one generated token)",
                             p->n_prompt, s->cfg.n_ctx);
    struct sched_req *r = calloc(1, sizeof(*r));
    if (!r)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    pthread_cond_init(&r->cv, NULL);
    r->s = s;
    r->prompt = malloc(sizeof(int32_t) * p->n_prompt);
    if (!r->prompt)
        goto oom;
    memcpy(r->prompt, p->prompt, sizeof(int32_t) * p->n_prompt);
    r->n_prompt = p->n_prompt;
    int room = s->cfg.n_ctx - (int)p->n_prompt;
    r->max_tokens = p->max_tokens > 0 && p->max_tokens < room ? p->max_tokens : room;
    r->sampling = p->sampling;
    for (int i = 0; i < p->n_stop && i < API_MAX_STOP; i++) {
        if (!(r->stop[i] = strdup(p->stop[i])))
            goto oom;
        r->n_stop++;
    }
    r->logprobs = p->logprobs;
    r->top_logprobs = p->top_logprobs;
    r->embed = p->embed;
    r->pool_mean = p->pool_mean;
    if (r->embed && !(r->embedding = calloc((size_t)s->hidden, sizeof(float))))
        goto oom;
    for (int i = 0; i < p->n_logit_bias; i++)
        if (p->logit_bias[i].token < 0 || p->logit_bias[i].token >= s->n_vocab) {
            req_free(r);
            return ifd_error_set(err, -EINVAL, "logit_bias token id %d is outside the vocabulary",
                                 p->logit_bias[i].token);
        }
    if (p->n_logit_bias > 0) {
        if (!(r->logit_bias = malloc(sizeof(*r->logit_bias) * (size_t)p->n_logit_bias)))
            goto oom;
        memcpy(r->logit_bias, p->logit_bias, sizeof(*r->logit_bias) * (size_t)p->n_logit_bias);
        r->n_logit_bias = p->n_logit_bias;
    }
    r->prompt_logprobs = p->prompt_logprobs;
    r->prompt_only = p->prompt_only;
    if (r->prompt_logprobs) {
        /* The first prompt token has no logprob: its entry is there at once. */
        size_t cap = 0;
        if (grow((void **)&r->out_lp, sizeof(*r->out_lp), 1, &cap) < 0)
            goto oom;
        r->out_lp_cap = (int)cap;
        r->out_lp[0] = (struct api_logprob){.token = r->prompt[0], .is_null = true};
        r->out_n_lp = 1;
    }
    r->t_submit = ifd_now_s();
    r->refs = 2;

    pthread_mutex_lock(&s->mu);
    if (s->draining) {
        pthread_mutex_unlock(&s->mu);
        req_free(r);
        return ifd_error_set(err, -ESHUTDOWN, "the server is shutting down");
    }
    int free_slots = s->cfg.n_seq_max - s->n_running;
    if (s->n_queued >= s->cfg.queue_depth + (free_slots > 0 ? free_slots : 0)) {
        int q = s->n_queued;
        pthread_mutex_unlock(&s->mu);
        req_free(r);
        return ifd_error_set(err, -EAGAIN, "the request queue is full (%d waiting); retry later", q);
    }
    r->grammar = p->grammar; /* ours from here: nothing below fails */
    r->id = ++s->req_counter;
    const struct sched_req *l = p->share_prefill;
    if (l && !r->embed && !r->prompt_logprobs && !l->embed && !l->prompt_logprobs && l->n_prompt == r->n_prompt &&
        memcmp(l->prompt, r->prompt, sizeof(int32_t) * r->n_prompt) == 0)
        r->share_id = l->id;
    if (s->q_tail)
        s->q_tail->next = r;
    else
        s->q_head = r;
    s->q_tail = r;
    s->n_queued++;
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    *ret = r;
    return 0;
oom:
    req_free(r);
    return ifd_error_set(err, -ENOMEM, "out of memory");
}

void sched_hold(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    s->submit_holds++;
    pthread_mutex_unlock(&s->mu);
}

void sched_release(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    s->submit_holds--;
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
}

int sched_req_collect(struct sched_req *r, int timeout_ms, struct sched_output *out)
{
    struct sched *s = r->s;
    struct timespec deadline = ifd_realtime_after_ms(timeout_ms);
    pthread_mutex_lock(&s->mu);
    while (!r->done && r->out_len == 0 && r->out_n_lp == 0) {
        if (pthread_cond_timedwait(&r->cv, &s->mu, &deadline) == ETIMEDOUT)
            break;
    }
    int got = 0;
    if (r->out_len > 0 &&
        grow((void **)&out->text, 1, out->text_len + r->out_len + 1, &out->text_cap) == 0) {
        memcpy(out->text + out->text_len, r->out_text, r->out_len);
        out->text_len += r->out_len;
        out->text[out->text_len] = '\0';
        r->out_len = 0;
        got = 1;
    }
    if (r->out_n_lp > 0) {
        size_t cap = (size_t)out->lp_cap;
        if (grow((void **)&out->lp, sizeof(*out->lp), (size_t)(out->n_lp + r->out_n_lp), &cap) == 0) {
            out->lp_cap = (int)cap;
            memcpy(out->lp + out->n_lp, r->out_lp, sizeof(*out->lp) * (size_t)r->out_n_lp);
            out->n_lp += r->out_n_lp;
            r->out_n_lp = 0;
            got = 1;
        }
    }
    out->prompt_tokens = (int)r->n_prompt;
    out->cached_tokens = r->cached_tokens;
    out->completion_tokens = r->completion_tokens;
    /* done is reported only once everything before it has been collected. */
    if (r->done && r->out_len == 0 && r->out_n_lp == 0) {
        if (r->embed && !r->error_status && r->embedding) {
            free(out->embedding);
            out->embedding = r->embedding;
            out->n_embedding = s->hidden;
            r->embedding = NULL;
        }
        out->done = true;
        out->finish_reason = r->finish_reason;
        out->error_status = r->error_status;
        snprintf(out->error_msg, sizeof(out->error_msg), "%s", r->error_msg);
        got = 1;
    }
    pthread_mutex_unlock(&s->mu);
    return got;
}

void sched_req_cancel(struct sched_req *r)
{
    struct sched *s = r->s;
    pthread_mutex_lock(&s->mu);
    r->cancelled = true;
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
}

void sched_req_release(struct sched_req *r)
{
    if (!r)
        return;
    struct sched *s = r->s;
    pthread_mutex_lock(&s->mu);
    if (!r->done) {
        r->cancelled = true;
        pthread_cond_signal(&s->work_cv);
    }
    req_unref_locked(r);
    pthread_mutex_unlock(&s->mu);
}

void sched_output_finish(struct sched_output *out)
{
    if (!out)
        return;
    free(out->text);
    free(out->lp);
    free(out->embedding);
    memset(out, 0, sizeof(*out));
}

void sched_drain_begin(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    s->draining = true;
    /* Queued requests have not started: tell them now rather than at the end. */
    while (s->q_head) {
        struct sched_req *r = s->q_head;
        s->q_head = r->next;
        s->n_queued--;
        req_finish_locked(s, r, NULL, 503, "the server is shutting down");
        req_unref_locked(r);
    }
    s->q_tail = NULL;
    pthread_cond_broadcast(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
}

void sched_abort_running(struct sched *s, const char *why)
{
    pthread_mutex_lock(&s->mu);
    s->abort_running = true;
    snprintf(s->abort_msg, sizeof(s->abort_msg), "%s", why);
    pthread_cond_broadcast(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
}

int sched_busy(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->n_queued + s->n_running;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void sched_counts(struct sched *s, int *ret_queued, int *ret_running)
{
    pthread_mutex_lock(&s->mu);
    *ret_queued = s->n_queued;
    *ret_running = s->n_running;
    pthread_mutex_unlock(&s->mu);
}

double sched_heartbeat(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    double h = s->heartbeat;
    pthread_mutex_unlock(&s->mu);
    return h;
}

void sched_set_queue_depth(struct sched *s, int queue_depth)
{
    pthread_mutex_lock(&s->mu);
    s->cfg.queue_depth = queue_depth;
    pthread_mutex_unlock(&s->mu);
}

/* ---- the scheduler thread ---- */

/* The matcher of a constrained request. The vocabulary trie is built once,
 * at the first such request (a few hundred ms for a 150k vocabulary), so
 * servers that never see one never pay for it. */
static int seq_grammar_start(struct sched *s, struct sched_seq *q, const struct sched_req *r)
{
    q->gm = NULL;
    if (!r->grammar)
        return 0;
    ifd_error err;
    if (!s->gvocab && grammar_vocab_create(s->tok, s->n_vocab, &s->gvocab, &err) < 0)
        return -ENOMEM;
    return grammar_matcher_create(r->grammar, s->gvocab, &q->gm);
}

/* Whether the request `id` holds a slot and has not finished its prompt:
 * a follower admitted later prefills itself (the leader's cache has moved
 * on past the prompt by then, and the leader may be gone). */
static bool leader_prefilling(const struct sched *s, uint64_t id)
{
    for (int i = 0; i < s->cfg.n_seq_max; i++) {
        const struct sched_seq *q = &s->seqs[i];
        if (q->req && q->req->id == id)
            return !q->generating && !q->waiting;
    }
    return false;
}

/* Under s->mu: whether r, admitted now, waits for its leader's prompt cache
 * (share_prefill) instead of prefilling. */
static bool req_will_wait(const struct sched *s, const struct sched_req *r)
{
    return r->share_id && !s->no_seq_copy && leader_prefilling(s, r->share_id);
}

/* Under s->mu: whether r may start from positions a slot's cache holds.
 * Embeddings and prompt logprobs need the output of every prompt position,
 * which a kept position never gives again; a follower that waits takes its
 * leader's cache over the whole slot. */
static bool req_reuses_cache(const struct sched *s, const struct sched_req *r)
{
    return s->cfg.prefix_cache && !r->embed && !r->prompt_logprobs && !req_will_wait(s, r);
}

/* How many leading positions of free slot q's cache r can keep: the common
 * prefix of the slot's hist and r's prompt, but never the whole prompt: its
 * last token must run to give the logits of the first generated one. */
static int seq_prefix_len(const struct sched_seq *q, const struct sched_req *r)
{
    size_t n = (size_t)q->n_past < r->n_prompt - 1 ? (size_t)q->n_past : r->n_prompt - 1;
    size_t i = 0;
    while (i < n && q->hist[i] == r->prompt[i])
        i++;
    return (int)i;
}

/* Under s->mu: the free slot queued request r takes, or -1 when every slot
 * is running; *ret_keep: how many positions of its cache r keeps.
 *
 * The slot whose cache shares the longest prefix with the prompt wins, but
 * when an empty slot is there too, only if it keeps at least half of what
 * that cache holds: a prompt that shares no more than a system prompt with
 * another conversation then leaves that conversation's cache for its next
 * turn (llama.cpp's --slot-prompt-similarity is a threshold of the same
 * kind, a share of the slot's cache). With nothing worth
 * keeping, an empty slot, else the least recently released cache. */
static int seq_pick(const struct sched *s, const struct sched_req *r, int *ret_keep)
{
    bool reuse = req_reuses_cache(s, r);
    int best = -1, best_keep = 0, empty = -1, lru = -1;
    for (int i = 0; i < s->cfg.n_seq_max; i++) {
        const struct sched_seq *q = &s->seqs[i];
        if (q->req)
            continue;
        if (q->n_past == 0) {
            if (empty < 0)
                empty = i;
            continue;
        }
        if (lru < 0 || q->released < s->seqs[lru].released)
            lru = i;
        int keep = reuse ? seq_prefix_len(q, r) : 0;
        /* equal prefixes (a system prompt): the older cache goes */
        if (keep > best_keep || (keep > 0 && keep == best_keep && q->released < s->seqs[best].released)) {
            best = i;
            best_keep = keep;
        }
    }
    if (best >= 0 && (empty < 0 || 2 * best_keep >= s->seqs[best].n_past)) {
        *ret_keep = best_keep;
        return best;
    }
    *ret_keep = 0;
    return empty >= 0 ? empty : lru;
}

/* Forgets the cache of free slot q: its positions go in every stage (the
 * remote stage tells its workers). */
static void seq_cache_drop(struct sched *s, struct sched_seq *q)
{
    ifd_error err;
    if (engine_seq_truncate(s->e, (int)(q - s->seqs), 0, &err) < 0) {
        /* Nothing better to do than keep going: the slot is reused from position 0. */
    }
    q->n_past = 0;
    q->n_fed = 0;
}

/* Under s->mu: forgets every free slot's cache. After an engine error a
 * stage may hold positions the slots do not count, and a worker that went
 * down comes back with no cache at all: no kept position can be trusted.
 * Slots that count none are truncated too: a request whose first chunk
 * failed counts 0, yet the stages before the failing one (the master's own
 * layers before a worker's) took its positions. */
static void sched_caches_drop(struct sched *s)
{
    for (int i = 0; i < s->cfg.n_seq_max; i++)
        if (!s->seqs[i].req)
            seq_cache_drop(s, &s->seqs[i]);
}

/* Under s->mu: slot q, free, keeps the first `keep` positions of its cache
 * (seq_pick) and drops the rest, so that r prefills only what follows. The
 * truncation goes out even when it drops nothing: a worker that restarted
 * since the cache was computed holds none of it and answers -ESTALE
 * (docs/protocol.md, KV_TRUNCATE), and the slot then prefills from 0. */
static void seq_cache_keep(struct sched *s, struct sched_seq *q, int keep)
{
    if (q->n_past == 0)
        return;
    ifd_error err;
    if (keep == 0 || engine_seq_truncate(s->e, (int)(q - s->seqs), keep, &err) < 0) {
        seq_cache_drop(s, q);
        return;
    }
    q->n_past = keep;
}

/* Under s->mu: a queued request takes slot q, keeping `keep` positions of
 * its cache (seq_pick; 0: none). */
static int seq_admit(struct sched *s, struct sched_seq *q, struct sched_req *r, int keep)
{
    seq_cache_keep(s, q, keep);
    /* Truncation may have failed: n_past is what the slot really holds. */
    keep = q->n_past;
    q->n_cached = keep;
    r->cached_tokens = keep;
    memcpy(q->hist, r->prompt, sizeof(int32_t) * r->n_prompt);
    q->n_replay = 0;
    if (r->embed) {
        /* Nothing is sampled or detokenized: the slot only prefills. */
        q->req = r;
        q->n_fed = (size_t)keep;
        q->generating = false;
        q->waiting = false;
        q->shared = false;
        q->finish = NULL;
        q->emit_len = 0;
        q->has_lp = false;
        q->admitted = s->admit_counter++;
        s->n_running++;
        return 0;
    }
    q->smp = sampler_create(&r->sampling, s->n_vocab);
    q->ts = tok_stream_create(s->tok, true);
    q->n_plp = 0;
    if (r->prompt_logprobs && !(q->plp = malloc(sizeof(*q->plp) * (size_t)s->cfg.n_seq_max))) {
        sampler_destroy(q->smp);
        tok_stream_destroy(q->ts);
        q->smp = NULL;
        q->ts = NULL;
        return -ENOMEM;
    }
    /* Hold-back buffer: the longest stop string plus a generous piece. */
    size_t need = 4096;
    if (!q->smp || !q->ts || grow((void **)&q->pending, 1, need, &q->pending_cap) < 0 ||
        seq_grammar_start(s, q, r) < 0) {
        sampler_destroy(q->smp);
        tok_stream_destroy(q->ts);
        q->smp = NULL;
        q->ts = NULL;
        return -ENOMEM;
    }
    for (size_t i = 0; i < r->n_prompt; i++)
        sampler_accept(q->smp, r->prompt[i], false);
    /* The text of a completion is decode(prompt + output) minus
     * decode(prompt): decoders such as SentencePiece's strip the leading
     * space of the first token of a text, and a prompt may end inside a UTF-8
     * character. Feeding the prompt's tail to the detokenizer first (and
     * dropping its text) gives the generated tokens their context. */
    size_t tail = r->n_prompt < SCHED_PROMPT_CONTEXT ? r->n_prompt : SCHED_PROMPT_CONTEXT;
    int32_t ctx[SCHED_PROMPT_CONTEXT];
    size_t n_ctx = 0;
    for (size_t i = r->n_prompt - tail; i < r->n_prompt; i++)
        if (!tok_is_special(s->tok, r->prompt[i]))
            ctx[n_ctx++] = r->prompt[i];
    if (tok_stream_prime(q->ts, ctx, n_ctx) < 0) {
        /* Out of memory: the text starts without its context. */
    }
    q->pending_len = 0;
    q->req = r;
    q->n_fed = (size_t)keep;
    q->generating = false;
    q->waiting = req_will_wait(s, r);
    q->shared = false;
    gen_seq_init(&q->gen, q->smp, &s->stops, r->max_tokens, s->cfg.n_ctx);
    q->emit_len = 0;
    q->has_lp = false;
    q->finish = NULL;
    q->admitted = s->admit_counter++;
    s->n_running++;
    return 0;
}

/* Under s->mu: frees the slot and drops the scheduler's reference. With
 * prefix_cache, the slot keeps its cache (hist[0..n_past), exactly what the
 * KV holds: sequences leave between steps) for a later prompt with the same
 * beginning: a finished request's, a cancelled one's, an embedding's. A
 * slot freed by an engine error is not consistent: sched_step's error path
 * drops every cache (sched_caches_drop) after releasing. */
static void seq_release(struct sched *s, struct sched_seq *q)
{
    if (!s->cfg.prefix_cache)
        seq_cache_drop(s, q);
    q->released = ++s->release_counter;
    /* A leader leaving before its prompt is in (cancelled, failed): its
     * followers prefill themselves. */
    for (int i = 0; i < s->cfg.n_seq_max; i++)
        if (s->seqs[i].waiting && s->seqs[i].req->share_id == q->req->id)
            s->seqs[i].waiting = false;
    q->waiting = false;
    q->shared = false;
    sampler_destroy(q->smp);
    tok_stream_destroy(q->ts);
    free(q->plp);
    q->plp = NULL;
    q->n_plp = 0;
    grammar_matcher_destroy(q->gm);
    q->smp = NULL;
    q->ts = NULL;
    q->gm = NULL;
    req_unref_locked(q->req);
    q->req = NULL;
    s->n_running--;
}

/* Scheduler thread, no lock: handles the token sampled for slot q. */
/* Scheduler thread, no lock: the logits of prompt position `pos` give the
 * logprob of prompt token pos + 1 (echo with logprobs). */
static void seq_on_prompt_logits(struct sched *s, struct sched_seq *q, const float *logits, int pos)
{
    struct sched_req *r = q->req;
    struct api_logprob *lp = &q->plp[q->n_plp++];
    lp->token = r->prompt[pos + 1];
    lp->is_null = false;
    lp->n_top = r->top_logprobs;
    lp->logprob = sampler_logprob(logits, s->n_vocab, lp->token, r->top_logprobs, lp->top_ids, lp->top_logprobs);
}

static void seq_on_token(struct sched *s, struct sched_seq *q, float *logits)
{
    struct sched_req *r = q->req;
    if (r->prompt_only) {
        /* max_tokens 0 (echo): the prompt was all that was asked for. */
        q->emit_len = 0;
        q->finish = "length";
        return;
    }
    if (r->logprobs)
        memcpy(s->logits_copy, logits, sizeof(float) * (size_t)s->n_vocab);
    /* logit_bias shifts what is sampled; logprobs stay the model's own
     * (taken from the copy above), as vLLM reports them. */
    for (int i = 0; i < r->n_logit_bias; i++)
        logits[r->logit_bias[i].token] += r->logit_bias[i].bias;
    int32_t t;
    /* Constrained: the tokens that would break the grammar are masked after
     * the copy above, so logprobs stay those of the model's own distribution. */
    if (q->gm)
        grammar_matcher_mask(q->gm, logits, s->stops.ids, s->stops.n);
    enum gen_finish fin = gen_seq_step(&q->gen, logits, q->n_past, &t);
    /* A grammar that is complete with nothing left to add ends the output
     * here rather than spend a step to sample the only token left (eos). */
    bool grammar_done = false;
    if (q->gm && fin == GEN_CONTINUE)
        grammar_done = grammar_matcher_accept_token(q->gm, t) < 0 || grammar_matcher_is_done(q->gm);
    if (r->logprobs) {
        q->lp.token = t;
        q->lp.n_top = r->top_logprobs;
        q->lp.logprob = sampler_logprob(s->logits_copy, s->n_vocab, t, r->top_logprobs, q->lp.top_ids,
                                        q->lp.top_logprobs);
        q->has_lp = true;
    }
    q->next_token = t;
    q->generating = true;
    /* a stop token's text is not part of the output, nor is any special
     * token's: tok_decode spells normalized=true specials (TinyStories'
     * <|start_story|>) as HF does even with skip_special, so they are
     * dropped by their flag here */
    if (fin != GEN_FINISH_STOP && !tok_is_special(s->tok, t)) {
        size_t before = q->pending_len;
        int n = tok_stream_push(q->ts, t, &q->pending, &q->pending_len, &q->pending_cap);
        if (n < 0)
            q->pending_len = before;
    }
    bool at_end = fin != GEN_CONTINUE || grammar_done;
    if (at_end)
        tok_stream_flush(q->ts, &q->pending, &q->pending_len, &q->pending_cap);
    size_t emit;
    if (api_stop_scan(q->pending, q->pending_len, r->stop, r->n_stop, &emit)) {
        q->emit_len = emit;
        q->finish = "stop";
        return;
    }
    if (at_end) {
        q->emit_len = q->pending_len;
        q->finish = grammar_done ? "stop" : gen_finish_reason(fin);
        return;
    }
    q->emit_len = emit;
}

/* Under s->mu: publishes what slot q staged this step. */
static void seq_publish_locked(struct sched *s, struct sched_seq *q)
{
    struct sched_req *r = q->req;
    if (q->emit_len > 0) {
        if (grow((void **)&r->out_text, 1, r->out_len + q->emit_len + 1, &r->out_cap) == 0) {
            memcpy(r->out_text + r->out_len, q->pending, q->emit_len);
            r->out_len += q->emit_len;
            r->out_text[r->out_len] = '\0';
        }
        memmove(q->pending, q->pending + q->emit_len, q->pending_len - q->emit_len);
        q->pending_len -= q->emit_len;
        q->emit_len = 0;
    }
    if (q->n_plp > 0) {
        size_t cap = (size_t)r->out_lp_cap;
        if (grow((void **)&r->out_lp, sizeof(*r->out_lp), (size_t)(r->out_n_lp + q->n_plp), &cap) == 0) {
            r->out_lp_cap = (int)cap;
            memcpy(r->out_lp + r->out_n_lp, q->plp, sizeof(*q->plp) * (size_t)q->n_plp);
            r->out_n_lp += q->n_plp;
        }
        q->n_plp = 0;
    }
    if (q->has_lp) {
        size_t cap = (size_t)r->out_lp_cap;
        if (grow((void **)&r->out_lp, sizeof(*r->out_lp), (size_t)r->out_n_lp + 1, &cap) == 0) {
            r->out_lp_cap = (int)cap;
            r->out_lp[r->out_n_lp++] = q->lp;
        }
        q->has_lp = false;
    }
    r->completion_tokens = q->gen.n_generated;
    r->cached_tokens = q->n_cached;
    pthread_cond_broadcast(&r->cv);
    if (q->finish) {
        req_finish_locked(s, r, q->finish, 0, NULL);
        seq_release(s, q);
    }
}

static int cmp_sent_ctx_sort(const void *a, const void *b, void *ctx)
{
    const struct sched_seq *seqs = ctx;
    int i = *(const int *)a, j = *(const int *)b;
    uint64_t x = seqs[i].sent, y = seqs[j].sent;
    return x != y ? (x < y ? -1 : 1) : (i > j) - (i < j);
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int cmp_admitted_ctx_sort(const void *a, const void *b, void *ctx)
{
    const struct sched_seq *seqs = ctx;
    uint64_t x = seqs[*(const int *)a].admitted, y = seqs[*(const int *)b].admitted;
    return x < y ? -1 : x > y;
}

/* Embed requests: pools the outputs of their tokens in the batch just run
 * (positions already advanced) and normalizes the ones whose input is all
 * in. Returns whether any is complete. No lock held: the vectors belong to
 * the scheduler thread until the request is finished. */
static bool embed_pool(struct sched *s, const struct sched_mb *mb)
{
    bool any_done = false;
    for (int j = 0; j < mb->n; j++) {
        struct sched_seq *q = &s->seqs[mb->seq_ids[j]];
        struct sched_req *r = q->req;
        if (!r || !r->embed || mb->pos[j] < q->n_replay)
            continue;
        bool last = (size_t)mb->pos[j] == r->n_prompt - 1;
        if (!r->pool_mean && !last)
            continue;
        engine_output_normed(s->e, j, s->normed);
        for (int h = 0; h < s->hidden; h++)
            r->embedding[h] += s->normed[h];
        if (!last)
            continue;
        /* The mean's 1/n does not survive normalization: unit length is
         * what OpenAI's embeddings have and what cosine similarity wants. */
        double norm = 0;
        for (int h = 0; h < s->hidden; h++)
            norm += (double)r->embedding[h] * r->embedding[h];
        float inv = norm > 0 ? (float)(1.0 / sqrt(norm)) : 0.0f;
        for (int h = 0; h < s->hidden; h++)
            r->embedding[h] *= inv;
        any_done = true;
    }
    return any_done;
}

/* Leader q has just run its last prompt token, whose logits are `row`:
 * each follower waiting for it takes a copy of its cache and samples its
 * first token, with its own sampler, from its own copy of the row (samplers
 * change the logits they are given). Before the leader's own seq_on_token,
 * which changes `row`. A failed copy leaves the follower to prefill. No
 * lock held: the flags and the slots are the scheduler thread's. */
static void share_prefill(struct sched *s, struct sched_seq *q, const float *row, double now)
{
    for (int i = 0; i < s->cfg.n_seq_max; i++) {
        struct sched_seq *f = &s->seqs[i];
        if (!f->waiting || f->req->share_id != q->req->id)
            continue;
        f->waiting = false;
        ifd_error err;
        int rc = engine_seq_copy(s->e, (int)(q - s->seqs), i, (int)q->req->n_prompt, &err);
        if (rc < 0) {
            if (rc == -EOPNOTSUPP)
                s->no_seq_copy = true;
            continue;
        }
        f->n_fed = f->req->n_prompt;
        f->n_past = q->n_past;
        /* The copy is this request's own prefill: of it, only what the
         * leader kept from an earlier request came from a cache. */
        f->n_cached = q->n_cached;
        memcpy(s->logits_share, row, sizeof(float) * (size_t)s->n_vocab);
        seq_on_token(s, f, s->logits_share);
        f->shared = true;
        if (s->metrics)
            metrics_ttft(s->metrics, now - f->req->t_submit);
    }
}

/* A forward failed with a worker down: the caller's hook moves its layers
 * and gives the engine new stages, which hold nothing; every slot is then
 * truncated to 0 on every stage (a worker kept from before still holds the
 * old caches; a free slot forgets the cache it kept) and each running
 * sequence rebuilds its cache from hist[0..n_past) before it goes on
 * (n_replay), so that its output is the one an undisturbed run gives: a
 * generating sequence's next_token was sampled already and is fed after the
 * rebuild. No micro-batch may be in flight (mb_failed drains them). 0, or
 * < 0 with err saying why (no hook, no node for the layers, too many in a
 * row). No lock held. */
static int sched_failover(struct sched *s, ifd_error *err)
{
    if (!s->cfg.recover || s->failovers_in_row >= SCHED_FAILOVER_TRIES)
        return -EHOSTDOWN;
    /* The loop is alive: the watchdog (models_alive) gives the hook its
     * whole bounded wait, not what the failed forward's timeout left. */
    pthread_mutex_lock(&s->mu);
    s->heartbeat = ifd_now_s();
    pthread_mutex_unlock(&s->mu);
    struct metrics_failover f = {0};
    int r = s->cfg.recover(s->cfg.recover_ctx, &f, err);
    if (r < 0)
        return r;
    s->failovers_in_row++;
    uint64_t replayed = 0;
    int n_seqs = 0;
    for (int i = 0; i < s->cfg.n_seq_max; i++) {
        struct sched_seq *q = &s->seqs[i];
        if (!q->req) {
            /* A cache a free slot kept (prefix_cache) went with the old
             * stages. */
            seq_cache_drop(s, q);
            continue;
        }
        ifd_error e2;
        if (engine_seq_truncate(s->e, i, 0, &e2) < 0) {
            /* The worker that could not be told is marked down: the next
             * forward fails and comes back here. */
        }
        /* A failover during a rebuild: the rebuild's target still stands. */
        if (q->n_past > q->n_replay)
            q->n_replay = q->n_past;
        q->n_past = 0;
        replayed += (uint64_t)q->n_replay;
        n_seqs++;
    }
    if (s->metrics) {
        metrics_stages_reset(s->metrics, engine_stage_count(s->e));
        metrics_failover(s->metrics, f.worker[0] ? &f : NULL, replayed);
    }
    log_notice("Failover: %d running sequences rebuild their caches (%llu positions) on %d stages", n_seqs,
               (unsigned long long)replayed, engine_stage_count(s->e));
    return 0;
}

/* Builds micro-batch mb from the running sequences that are in no batch in
 * flight: up to `quota` of the generating ones (one token each), then
 * prompt chunks, oldest admission first, within the chunk budget. Returns
 * its token count. No lock held. */
static int mb_build(struct sched *s, struct sched_mb *mb, int quota)
{
    int n = 0, n_decode = 0, n_prefill = 0, n_rows = 0, n_pf = 0;
    /* Generating sequences first: one token each, in slot order. When more
     * wait than the quota, those sent longest ago go. */
    int n_cand = 0;
    for (int i = 0; i < s->cfg.n_seq_max; i++)
        if (s->seqs[i].req && s->seqs[i].generating && !s->seqs[i].in_flight &&
            s->seqs[i].n_past >= s->seqs[i].n_replay)
            s->order[n_cand++] = i;
    if (n_cand > quota) {
        qsort_r(s->order, (size_t)n_cand, sizeof(int), cmp_sent_ctx_sort, s->seqs);
        n_cand = quota;
        qsort(s->order, (size_t)n_cand, sizeof(int), cmp_int);
    }
    for (int k = 0; k < n_cand; k++) {
        int i = s->order[k];
        struct sched_seq *q = &s->seqs[i];
        mb->tokens[n] = q->next_token;
        mb->seq_ids[n] = i;
        mb->pos[n] = q->n_past;
        mb->want[n] = true;
        mb->row_ppos[n_rows] = -1;
        mb->row_seq[n_rows++] = i;
        n++;
        n_decode++;
    }
    /* Then prompt chunks (and caches being rebuilt), oldest admission first,
     * within the chunk budget. */
    for (int i = 0; i < s->cfg.n_seq_max; i++)
        if (s->seqs[i].req && (!s->seqs[i].generating || s->seqs[i].n_past < s->seqs[i].n_replay) &&
            !s->seqs[i].waiting && !s->seqs[i].in_flight)
            s->order[n_pf++] = i; /* the decode loop is done with order */
    qsort_r(s->order, (size_t)n_pf, sizeof(int), cmp_admitted_ctx_sort, s->seqs);
    int budget = s->cfg.prefill_chunk;
    if (budget > s->cfg.n_batch_max - n)
        budget = s->cfg.n_batch_max - n;
    for (int k = 0; k < n_pf && budget > 0; k++) {
        int i = s->order[k];
        struct sched_seq *q = &s->seqs[i];
        if (q->n_past < q->n_replay) {
            /* A rebuild: positions computed once already, nothing to sample. */
            int take = q->n_replay - q->n_past < budget ? q->n_replay - q->n_past : budget;
            for (int j = 0; j < take; j++) {
                mb->tokens[n] = q->hist[q->n_past + j];
                mb->seq_ids[n] = i;
                mb->pos[n] = q->n_past + j;
                mb->want[n] = false;
                n++;
            }
            budget -= take;
            n_prefill += take;
            continue;
        }
        size_t left = q->req->n_prompt - q->n_fed;
        int take = left < (size_t)budget ? (int)left : budget;
        bool plp = q->req->prompt_logprobs;
        if (plp) {
            /* Every position's logits, as many rows as the engine's logits
             * buffer has left (its default size, n_seq_max rows), keeping
             * one for each prefill after this one that may finish. */
            int rows_left = s->cfg.n_seq_max - n_rows - (n_pf - k - 1);
            if (take > rows_left)
                take = rows_left > 0 ? rows_left : 0;
        }
        for (int j = 0; j < take; j++) {
            size_t pi = q->n_fed + (size_t)j;
            mb->tokens[n] = q->hist[pi];
            mb->seq_ids[n] = i;
            mb->pos[n] = q->n_past + j;
            mb->want[n] = plp;
            if (plp && pi + 1 < q->req->n_prompt) {
                mb->row_ppos[n_rows] = (int)pi;
                mb->row_seq[n_rows++] = i;
            }
            n++;
        }
        if (take > 0 && (size_t)take == left && !q->req->embed) {
            mb->want[n - 1] = true;  /* the last prompt token gives the first generated one */
            mb->row_ppos[n_rows] = -1;
            mb->row_seq[n_rows++] = i;
        }
        budget -= take;
        n_prefill += take;
    }
    mb->n = n;
    mb->n_rows = n_rows;
    mb->n_decode = n_decode;
    mb->n_prefill = n_prefill;
    return n;
}

/* The batch of mb failed (rc, err): its requests fail and free their slots. */
static void mb_fail(struct sched *s, struct sched_mb *mb, int rc, const ifd_error *err)
{
    pthread_mutex_lock(&s->mu);
    for (int j = 0; j < mb->n; j++) {
        struct sched_seq *q = &s->seqs[mb->seq_ids[j]];
        if (q->req) {
            char msg[256];
            snprintf(msg, sizeof(msg), "inference failed: %.200s", err->msg);
            /* -EHOSTDOWN: a remote worker is unreachable (net/remote_stage.h). */
            req_finish_locked(s, q->req, NULL, rc == -EHOSTDOWN ? 503 : 500, msg);
            seq_release(s, q);
        }
    }
    sched_caches_drop(s);
    pthread_mutex_unlock(&s->mu);
}

/* Marks mb's sequences as in flight (or not). */
static void mb_set_in_flight(struct sched *s, const struct sched_mb *mb, bool on)
{
    for (int j = 0; j < mb->n; j++)
        s->seqs[mb->seq_ids[j]].in_flight = on;
}

static void mb_failed(struct sched *s, struct sched_mb *mb, int rc, ifd_error *err);

/* Starts mb on engine slot k (engine_submit): with a remote stage it
 * computes on the workers while the scheduler goes on. No lock held. */
static void mb_submit(struct sched *s, int k)
{
    struct sched_mb *mb = &s->mb[k];
    /* Rows are in batch order; the decode rows came first, then prefill rows
     * in the order built, which is the order mb_finish walks. */
    struct engine_batch b = {
        .n_tokens = mb->n, .tokens = mb->tokens, .seq_ids = mb->seq_ids, .positions = mb->pos, .want_logits = mb->want,
    };
    mb->t0 = ifd_now_s();
    ifd_error err = {{0}};
    int rc = engine_submit(s->e, k, &b, &err);
    if (rc < 0) {
        mb_failed(s, mb, rc, &err);
        return;
    }
    mb_set_in_flight(s, mb, true);
    s->mb_in_flight++;
    s->mb_sent++;
    for (int j = 0; j < mb->n; j++)
        s->seqs[mb->seq_ids[j]].sent = s->mb_sent;
}

/* Handles the logits of micro-batch mb, completed dt seconds after its
 * submit: advances its sequences, samples, publishes. No lock held. */
static void mb_finish(struct sched *s, struct sched_mb *mb, double dt)
{
    s->failovers_in_row = 0;
    /* Advance positions; a generated token fed this step joins the history
     * (a prompt token is there from admission, a rebuilt one was there). */
    for (int j = 0; j < mb->n; j++) {
        struct sched_seq *q = &s->seqs[mb->seq_ids[j]];
        q->hist[q->n_past] = mb->tokens[j];
        q->n_past++;
        if (!q->generating && mb->pos[j] >= q->n_replay)
            q->n_fed++;
    }
    bool embeds_done = embed_pool(s, mb);
    const float *logits = engine_logits(s->e);
    double now = ifd_now_s();
    for (int row = 0; row < mb->n_rows; row++) {
        struct sched_seq *q = &s->seqs[mb->row_seq[row]];
        if (mb->row_ppos[row] >= 0) {
            seq_on_prompt_logits(s, q, logits + (size_t)row * (size_t)s->n_vocab, mb->row_ppos[row]);
            continue;
        }
        bool first = !q->generating;
        if (first)
            share_prefill(s, q, logits + (size_t)row * (size_t)s->n_vocab, now);
        seq_on_token(s, q, (float *)logits + (size_t)row * (size_t)s->n_vocab);
        if (first && s->metrics)
            metrics_ttft(s->metrics, now - q->req->t_submit);
    }

    pthread_mutex_lock(&s->mu);
    for (int row = 0; row < mb->n_rows; row++) {
        struct sched_seq *q = &s->seqs[mb->row_seq[row]];
        if (q->req)
            seq_publish_locked(s, q);
    }
    for (int i = 0; i < s->cfg.n_seq_max; i++) {
        struct sched_seq *q = &s->seqs[i];
        if (q->shared) {
            q->shared = false;
            seq_publish_locked(s, q);
        }
    }
    for (int i = 0; embeds_done && i < s->cfg.n_seq_max; i++) {
        struct sched_seq *q = &s->seqs[i];
        if (q->req && q->req->embed && q->n_fed == q->req->n_prompt) {
            req_finish_locked(s, q->req, "stop", 0, NULL);
            seq_release(s, q);
        }
    }
    if (s->metrics) {
        /* Gauges change under the lock, before any waiting client can run:
         * a client that has its answer sees its slot already counted free. */
        int64_t kv = 0;
        for (int i = 0; i < s->cfg.n_seq_max; i++)
            if (s->seqs[i].req)
                kv += s->seqs[i].n_past;
        metrics_gauges(s->metrics, s->n_queued, s->n_running, kv, (int64_t)s->cfg.n_seq_max * s->cfg.n_ctx);
    }
    pthread_mutex_unlock(&s->mu);

    if (s->metrics) {
        metrics_step(s->metrics, mb->n_prefill, mb->n_decode, dt);
        for (int i = 0; i < engine_stage_count(s->e); i++) {
            struct stage *st = engine_stage(s->e, i);
            struct stage_stats ss;
            stage_get_stats(st, &ss);
            metrics_stage_set(s->metrics, i, st->ops->name, st->layer_first, st->layer_last, ss.forward_calls,
                              ss.tokens, ss.forward_ms, ss.layer_ms);
        }
    }
}

/* Waits for the oldest micro-batch in flight (engine slot *ret_k) and, when
 * it completed, handles it. Its failure (< 0, err) is the caller's. */
static int mb_complete_next(struct sched *s, int *ret_k, ifd_error *err)
{
    int k = s->mb_head;
    struct sched_mb *mb = &s->mb[k];
    int rc = engine_complete(s->e, k, err);
    s->mb_head = (s->mb_head + 1) % s->cfg.micro_batches;
    s->mb_in_flight--;
    mb_set_in_flight(s, mb, false);
    /* The step's time is what this micro-batch adds to the wall clock: from
     * its submit or the previous completion, whichever is later, so that
     * the steps of overlapping micro-batches do not count twice. */
    double now = ifd_now_s(), from = mb->t0 > s->mb_done_at ? mb->t0 : s->mb_done_at;
    s->mb_done_at = now;
    if (rc >= 0)
        mb_finish(s, mb, now - from);
    *ret_k = k;
    return rc;
}

/* The batch of mb failed (rc, err). With a worker down, a failover first:
 * the micro-batches still in flight on the stages it replaces are waited
 * for (one that completed is handled as usual, so that its positions are
 * in hist for the rebuild; one that failed is rebuilt like mb). When the
 * failover does not happen, their requests and mb's end (mb_fail). */
static void mb_failed(struct sched *s, struct sched_mb *mb, int rc, ifd_error *err)
{
    if (rc == -EHOSTDOWN && s->cfg.recover) {
        int failed[s->cfg.micro_batches], n_failed = 0;
        while (s->mb_in_flight > 0) {
            int k;
            ifd_error e2 = {{0}};
            if (mb_complete_next(s, &k, &e2) < 0)
                failed[n_failed++] = k;
        }
        if (sched_failover(s, err) == 0)
            return;
        for (int i = 0; i < n_failed; i++)
            mb_fail(s, &s->mb[failed[i]], rc, err);
    }
    mb_fail(s, mb, rc, err);
}

/* Waits for the oldest micro-batch in flight and handles it. */
static void mb_complete_oldest(struct sched *s)
{
    int k;
    ifd_error err = {{0}};
    int rc = mb_complete_next(s, &k, &err);
    if (rc < 0)
        mb_failed(s, &s->mb[k], rc, &err);
}

/* One step of the pipeline. No lock held.
 *
 * With micro_batches = 1 this is one batched forward over every running
 * sequence. With M > 1 the running sequences are split into up to M
 * micro-batches, each sequence in one, kept in flight together: while the
 * workers compute some, the master computes the head of another and samples
 * it. Each step first fills the free engine slots, each micro-batch taking
 * at most an even share of the generating sequences (16 streams over 3:
 * 6 + 6 + 4) and any prompt chunks, then completes the oldest micro-batch;
 * the next step sends its sequences again with their new tokens. */
static void sched_step(struct sched *s)
{
    const int M = s->cfg.micro_batches;
    /* An even share of every generating sequence, in flight or not: a split
     * left uneven by admissions (15 + 1) evens out within a round, where
     * sharing only those not in flight would keep it. */
    int n_gen = 0;
    for (int i = 0; i < s->cfg.n_seq_max; i++)
        n_gen += s->seqs[i].req && s->seqs[i].generating;
    int quota = n_gen > 0 ? (n_gen + M - 1) / M : 0;
    while (s->mb_in_flight < M) {
        int k = (s->mb_head + s->mb_in_flight) % M;
        if (mb_build(s, &s->mb[k], quota) == 0)
            break;
        mb_submit(s, k);
    }
    if (s->mb_in_flight > 0)
        mb_complete_oldest(s);
}

static void *sched_thread_main(void *arg)
{
    struct sched *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        s->heartbeat = ifd_now_s();
        bool abort_later = false;
        for (int i = 0; i < s->cfg.n_seq_max; i++) {
            struct sched_seq *q = &s->seqs[i];
            if (!q->req)
                continue;
            if (q->in_flight) {
                /* Its micro-batch still holds the slot: it is seen to once
                 * that completes (the abort flag stays up until then). */
                abort_later |= s->abort_running;
                continue;
            }
            if (q->req->cancelled) {
                /* The client is gone: nobody reads the result. */
                req_finish_locked(s, q->req, NULL, 499, "cancelled");
                seq_release(s, q);
            } else if (s->abort_running) {
                req_finish_locked(s, q->req, NULL, 503, s->abort_msg);
                seq_release(s, q);
            }
        }
        s->abort_running = abort_later;
        while (s->q_head && !s->submit_holds) {
            struct sched_req *r = s->q_head;
            int keep = 0, i = r->cancelled ? 0 : seq_pick(s, r, &keep);
            if (i < 0)
                break;  /* every slot runs */
            s->q_head = r->next;
            if (!s->q_head)
                s->q_tail = NULL;
            s->n_queued--;
            r->next = NULL;
            if (r->cancelled) {
                req_finish_locked(s, r, NULL, 499, "cancelled");
                req_unref_locked(r);
                continue;
            }
            if (seq_admit(s, &s->seqs[i], r, keep) < 0) {
                req_finish_locked(s, r, NULL, 500, "out of memory");
                req_unref_locked(r);
            }
        }
        if (s->n_running == 0) {
            if (s->metrics)
                metrics_gauges(s->metrics, s->n_queued, 0, 0, (int64_t)s->cfg.n_seq_max * s->cfg.n_ctx);
            if (s->stop_thread && !s->q_head)
                break;
            struct timespec ts = ifd_realtime_after_ms(1000);
            pthread_cond_timedwait(&s->work_cv, &s->mu, &ts);
            continue;
        }
        pthread_mutex_unlock(&s->mu);
        sched_step(s);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}
