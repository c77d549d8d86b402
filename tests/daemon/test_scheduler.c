/* test_scheduler.c - the daemon's continuous-batching loop (daemon/scheduler.c)
 * on the real TinyStories model: submission, the queue bound, cancellation,
 * the max_tokens and context-end stops, several sequences batched together
 * giving the tokens each gives alone (greedy), and the stop set shared with
 * `inferctl run` (daemon/stop_set.c): both stop on the tokenizer's eos_token
 * when it differs from the config's eos ids; the n choices of one prompt
 * prefilling it once (share_prefill), and falling back to a prefill each;
 * prefix_cache: a prompt that begins as a finished request's cache keeps
 * those positions and gives the tokens a cold scheduler gives.
 *
 * Generated ids are read back from the logprobs entries, which carry the
 * token of every step. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/thread_pool.h"
#include "common/golden_models.h"
#include "common/test_util.h"
#include "model/cpu_stage.h"
#include "model/engine.h"
#include "metrics.h"
#include "scheduler.h"
#include "stop_set.h"
#include "text/tokenizer/tokenizer.h"

#define MODEL "tinystories-656k"
#define MAX_IDS 256
/* A request of this test ends in well under a second; the bound only stops
 * a hung scheduler from hanging the suite (loaded CI machines included). */
#define COLLECT_DEADLINE_S 120.0

/* Golden continuations of TinyStories (../shared/golden/models.jsonl lines
 * 0-2): prompt ids and the first stable generated ids. */
struct story {
    int32_t prompt[GOLDEN_MAX_IDS];
    int n_prompt;
    int32_t gen[GOLDEN_MAX_IDS];
    int stable;
};

static void story_load(int line, struct story *st)
{
    struct golden g;
    cr_assert(golden_line(line, &g), "golden line %d missing", line);
    cr_assert_str_eq(g.model, MODEL, "golden line %d is not %s", line, MODEL);
    memcpy(st->prompt, g.prompt, sizeof(g.prompt));
    st->n_prompt = g.n_prompt;
    memcpy(st->gen, g.gen, sizeof(g.gen));
    st->stable = g.stable;
}

struct fx {
    struct model *m;
    tokenizer *tok;
    engine *e;
    struct sched *s;
    struct thread_pool *pool;   /* the copy-less stage's, else NULL */
    int micro_batches;          /* set before fx_up*: 0 = one batch per step */
};

/* A CPU stage behind a stage without the optional seq_copy, as a remote
 * stage is: the engine cannot copy a cache, and the scheduler must prefill
 * each of n choices. */
struct copyless_stage {
    struct stage base;
    struct stage *inner;
};

static int copyless_forward(struct stage *s, const struct stage_batch *b, ifd_error *err)
{
    return stage_forward(((struct copyless_stage *)s)->inner, b, err);
}

static int copyless_truncate(struct stage *s, int seq_id, int n_keep, ifd_error *err)
{
    return stage_seq_truncate(((struct copyless_stage *)s)->inner, seq_id, n_keep, err);
}

static void copyless_stats(struct stage *s, struct stage_stats *ret)
{
    stage_get_stats(((struct copyless_stage *)s)->inner, ret);
}

static void copyless_destroy(struct stage *s)
{
    stage_destroy(((struct copyless_stage *)s)->inner);
    stage_finish(s);
    free(s);
}

static const struct stage_ops copyless_ops = {
    .name = "copyless", .forward = copyless_forward, .seq_truncate = copyless_truncate,
    .get_stats = copyless_stats, .destroy = copyless_destroy,
};

static engine *copyless_engine(struct fx *f, const struct engine_config *ec)
{
    ifd_error err = {{0}};
    struct copyless_stage *w = calloc(1, sizeof(*w));
    cr_assert_not_null(w);
    cr_assert_not_null(f->pool = thread_pool_create(1));
    int L = f->m->cfg.n_layers;
    cr_assert_eq(cpu_stage_create(f->m, 0, L, ec->n_seq_max, ec->n_ctx, f->pool, &w->inner, &err), 0, "%s",
                 err.msg);
    cr_assert_eq(stage_init(&w->base, &copyless_ops, 0, L, f->m->cfg.hidden_size, ec->n_seq_max, ec->n_ctx, 0,
                            &err), 0, "%s", err.msg);
    struct stage *st = &w->base;
    engine *e = NULL;
    cr_assert_eq(engine_create(f->m, &st, 1, ec, NULL, &e, &err), 0, "%s", err.msg);
    return e;
}

static void fx_up_engine(struct fx *f, const char *dir, int n_seq, int n_ctx, int queue_depth, bool copyless,
                         bool prefix_cache)
{
    ifd_error err = {{0}};
    struct model_load_opts lo = model_load_opts_default();
    cr_assert_eq(model_load(dir, &lo, &f->m, &err), 0, "%s", err.msg);
    cr_assert_eq(tok_load(dir, &f->tok, &err), 0, "%s", err.msg);
    struct sched_config sc = {.n_seq_max = n_seq, .n_ctx = n_ctx, .prefill_chunk = 16, .queue_depth = queue_depth,
                              .prefix_cache = prefix_cache};
    sc.n_batch_max = sc.prefill_chunk + n_seq;
    struct engine_config ec = {.n_seq_max = n_seq, .n_ctx = n_ctx, .n_batch_max = sc.n_batch_max, .n_threads = 1,
                               .n_inflight = f->micro_batches};
    sc.micro_batches = f->micro_batches;
    f->pool = NULL;
    if (copyless)
        f->e = copyless_engine(f, &ec);
    else
        cr_assert_eq(engine_create_cpu(f->m, NULL, 0, &ec, &f->e, &err), 0, "%s", err.msg);
    struct gen_stop_set stops;
    cr_assert_eq(stop_set_build(&f->m->cfg, f->tok, &stops, &err), 0, "%s", err.msg);
    cr_assert_eq(sched_create(f->e, f->tok, &stops, &sc, NULL, &f->s, &err), 0, "%s", err.msg);
}

static void fx_up_dir(struct fx *f, const char *dir, int n_seq, int n_ctx, int queue_depth)
{
    fx_up_engine(f, dir, n_seq, n_ctx, queue_depth, false, false);
}

static void fx_up(struct fx *f, int n_seq, int n_ctx, int queue_depth)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/models/%s", tu_must_shared_dir(), MODEL);
    fx_up_dir(f, dir, n_seq, n_ctx, queue_depth);
}

/* fx_up with [server] prefix_cache on or off. */
static void fx_up_cache(struct fx *f, int n_seq, int n_ctx, bool prefix_cache)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/models/%s", tu_must_shared_dir(), MODEL);
    fx_up_engine(f, dir, n_seq, n_ctx, n_seq, false, prefix_cache);
}

static void fx_down(struct fx *f)
{
    sched_destroy(f->s);
    engine_destroy(f->e);
    thread_pool_destroy(f->pool);
    tok_destroy(f->tok);
    model_destroy(f->m);
}

/* Submits a request; returns sched_submit's result, the request in *ret and
 * the message in *err. */
static int try_submit(struct fx *f, const int32_t *prompt, int n_prompt, int max_tokens, struct sched_req **ret,
                      ifd_error *err)
{
    struct sched_req_params p = {.prompt = prompt, .n_prompt = (size_t)n_prompt, .max_tokens = max_tokens,
                                 .sampling = sampler_params_default(), .logprobs = true};
    *err = (ifd_error){{0}};
    return sched_submit(f->s, &p, ret, err);
}

static struct sched_req *submit(struct fx *f, const int32_t *prompt, int n_prompt, int max_tokens)
{
    struct sched_req *r = NULL;
    ifd_error err;
    cr_assert_eq(try_submit(f, prompt, n_prompt, max_tokens, &r, &err), 0, "%s", err.msg);
    return r;
}

/* Collects r until done; the generated ids go to ids (from logprobs). */
static void collect_all(struct sched_req *r, struct sched_output *out)
{
    double t0 = ifd_now_s();
    while (!out->done) {
        sched_req_collect(r, 200, out);
        cr_assert_lt(ifd_now_s() - t0, COLLECT_DEADLINE_S, "the request never finished");
    }
}

/* One request alone: its ids, count, finish reason and (ret_cached, when
 * not NULL) its prompt tokens kept from a slot's cache. */
static int run_one_cached(struct fx *f, const int32_t *prompt, int n_prompt, int max_tokens, int32_t *ids,
                          const char **finish, int *ret_cached)
{
    struct sched_req *r = submit(f, prompt, n_prompt, max_tokens);
    struct sched_output out = {0};
    collect_all(r, &out);
    cr_assert_eq(out.error_status, 0, "%s", out.error_msg);
    cr_assert_eq(out.n_lp, out.completion_tokens);
    for (int i = 0; i < out.n_lp && i < MAX_IDS; i++)
        ids[i] = out.lp[i].token;
    *finish = out.finish_reason;
    if (ret_cached)
        *ret_cached = out.cached_tokens;
    int n = out.completion_tokens;
    sched_output_finish(&out);
    sched_req_release(r);
    return n;
}

static int run_one(struct fx *f, const int32_t *prompt, int n_prompt, int max_tokens, int32_t *ids,
                   const char **finish)
{
    return run_one_cached(f, prompt, n_prompt, max_tokens, ids, finish, NULL);
}

Test(scheduler, submission_gives_the_golden_tokens)
{
    struct story st;
    story_load(0, &st);
    struct fx f = {0};
    fx_up(&f, 2, 128, 4);
    int32_t ids[MAX_IDS];
    const char *finish;
    struct sched_req *r = submit(&f, st.prompt, st.n_prompt, st.stable);
    struct sched_output out = {0};
    collect_all(r, &out);
    cr_assert_eq(out.error_status, 0, "%s", out.error_msg);
    cr_assert_str_eq(out.finish_reason, "length");
    cr_assert_eq(out.prompt_tokens, st.n_prompt);
    cr_assert_eq(out.completion_tokens, st.stable, "max_tokens %d, got %d", st.stable, out.completion_tokens);
    cr_assert_eq(out.n_lp, st.stable);
    for (int i = 0; i < st.stable; i++)
        cr_assert_eq(out.lp[i].token, st.gen[i], "token %d: %d, golden %d", i, out.lp[i].token, st.gen[i]);
    cr_assert(out.text && strstr(out.text, "Lily"), "text: %s", out.text ? out.text : "(none)");
    sched_output_finish(&out);
    sched_req_release(r);
    /* max_tokens 3: exactly 3, a length stop */
    cr_assert_eq(run_one(&f, st.prompt, st.n_prompt, 3, ids, &finish), 3);
    cr_assert_str_eq(finish, "length");
    cr_assert_eq(ids[2], st.gen[2]);
    fx_down(&f);
}

/* The context of 16 leaves 10 tokens after a 6-token prompt, whatever
 * max_tokens asks. */
Test(scheduler, context_end_stops_with_length)
{
    struct story st;
    story_load(0, &st);
    struct fx f = {0};
    fx_up(&f, 1, 16, 1);
    int32_t ids[MAX_IDS];
    const char *finish;
    cr_assert_eq(run_one(&f, st.prompt, st.n_prompt, 100, ids, &finish), 16 - st.n_prompt);
    cr_assert_str_eq(finish, "length");
    for (int i = 0; i < 16 - st.n_prompt; i++)
        cr_assert_eq(ids[i], st.gen[i]);
    /* a prompt that leaves no room is refused at submission */
    int32_t long_prompt[16] = {1};
    struct sched_req *r = NULL;
    ifd_error err;
    cr_assert_eq(try_submit(&f, long_prompt, 16, 1, &r, &err), -EINVAL);
    cr_assert(strstr(err.msg, "the context holds 16"), "%s", err.msg);
    fx_down(&f);
}

/* One slot, no queue: while a long request holds the slot (or waits for
 * it), the next is refused with -EAGAIN. */
Test(scheduler, full_queue_refuses)
{
    struct story st;
    story_load(0, &st);
    struct fx f = {0};
    fx_up(&f, 1, 512, 0);
    struct sched_req *a = submit(&f, st.prompt, st.n_prompt, 500);
    struct sched_req *b = NULL;
    ifd_error err;
    int rc = try_submit(&f, st.prompt, st.n_prompt, 4, &b, &err);
    int busy = sched_busy(f.s);
    cr_assert_eq(rc, -EAGAIN, "second request accepted (scheduler busy with %d)", busy);
    cr_assert(strstr(err.msg, "queue is full"), "%s", err.msg);
    sched_req_cancel(a);
    struct sched_output out = {0};
    collect_all(a, &out);
    sched_output_finish(&out);
    sched_req_release(a);
    fx_down(&f);
}

/* A cancelled request ends with 499 before its max_tokens, and frees its
 * slot: the next request in the same slot starts over at position 0 and
 * gives the golden tokens (the slot's KV positions were truncated). */
Test(scheduler, cancel_ends_the_request_and_frees_the_slot)
{
    struct story st;
    story_load(0, &st);
    struct fx f = {0};
    /* 500 tokens take the scheduler far longer than this thread takes from
     * the first one to the cancel, even on a loaded machine */
    fx_up(&f, 1, 512, 1);
    struct sched_req *a = submit(&f, st.prompt, st.n_prompt, 500);
    struct sched_output out = {0};
    double t0 = ifd_now_s();
    while (out.completion_tokens == 0 && !out.done) {
        sched_req_collect(a, 200, &out);
        cr_assert_lt(ifd_now_s() - t0, COLLECT_DEADLINE_S);
    }
    sched_req_cancel(a);
    collect_all(a, &out);
    cr_assert_eq(out.error_status, 499, "status %d (%s)", out.error_status, out.error_msg);
    cr_assert_lt(out.completion_tokens, 500);
    sched_output_finish(&out);
    sched_req_release(a);

    int32_t ids[MAX_IDS];
    const char *finish;
    cr_assert_eq(run_one(&f, st.prompt, st.n_prompt, st.stable, ids, &finish), st.stable);
    for (int i = 0; i < st.stable; i++)
        cr_assert_eq(ids[i], st.gen[i], "after the cancel, token %d: %d, golden %d", i, ids[i], st.gen[i]);
    fx_down(&f);
}

/* Three sequences batched together (prefill chunks and decode steps mixed)
 * give the tokens each gives alone, which are the golden ones. */
static void check_concurrent_match_alone(int micro_batches)
{
    enum { N = 3, MAXT = 40 };
    struct story st[N];
    for (int i = 0; i < N; i++)
        story_load(i, &st[i]);
    struct fx f = {.micro_batches = micro_batches};
    fx_up(&f, N, 128, N);
    int32_t alone[N][MAX_IDS];
    int n_alone[N];
    const char *finish;
    for (int i = 0; i < N; i++) {
        n_alone[i] = run_one(&f, st[i].prompt, st[i].n_prompt, MAXT, alone[i], &finish);
        cr_assert_eq(n_alone[i], MAXT);
        for (int k = 0; k < st[i].stable && k < MAXT; k++)
            cr_assert_eq(alone[i][k], st[i].gen[k], "story %d token %d: %d, golden %d", i, k, alone[i][k],
                         st[i].gen[k]);
    }
    struct sched_req *r[N];
    struct sched_output out[N];
    memset(out, 0, sizeof(out));
    for (int i = 0; i < N; i++)
        r[i] = submit(&f, st[i].prompt, st[i].n_prompt, MAXT);
    for (int i = 0; i < N; i++) {
        collect_all(r[i], &out[i]);
        cr_assert_eq(out[i].error_status, 0, "%s", out[i].error_msg);
        cr_assert_eq(out[i].n_lp, n_alone[i]);
        for (int k = 0; k < n_alone[i]; k++)
            cr_assert_eq(out[i].lp[k].token, alone[i][k], "story %d token %d: batched %d, alone %d", i, k,
                         out[i].lp[k].token, alone[i][k]);
        sched_output_finish(&out[i]);
        sched_req_release(r[i]);
    }
    fx_down(&f);
}

Test(scheduler, concurrent_sequences_match_alone)
{
    check_concurrent_match_alone(0);
}

/* Micro-batches (the pipelined path) on a local engine, where submit runs
 * the whole forward: the scheduler's split into micro-batches, a sequence in
 * one at a time, gives the same tokens, and two micro-batches for three
 * sequences leave none behind. */
Test(scheduler, micro_batches_match_alone)
{
    check_concurrent_match_alone(2);
    check_concurrent_match_alone(3);
}

/* ---- one stop set for the daemon and `inferctl run` ---- */

/* A model directory whose tokenizer's eos_token ("Lily▁", id 303, the third
 * token TinyStories writes after "Once upon a time") differs from the
 * config's eos_token_id (2): the weights, tokenizer.json and config.json are
 * links to the shared model, tokenizer_config.json is written here. */
static void make_eos_dir(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/inferd-test-eos-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    const char *links[] = {"model.safetensors", "tokenizer.json", "config.json"};
    char src[PATH_MAX], dst[PATH_MAX];
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        snprintf(src, sizeof(src), "%s/models/%s/%s", tu_must_shared_dir(), MODEL, links[i]);
        snprintf(dst, sizeof(dst), "%s/%s", dir, links[i]);
        cr_assert_eq(symlink(src, dst), 0, "symlink %s", dst);
    }
    snprintf(dst, sizeof(dst), "%s/tokenizer_config.json", dir);
    FILE *fp = fopen(dst, "w");
    cr_assert_not_null(fp);
    fputs("{\"add_bos_token\": true, \"bos_token\": \"<|start_story|>\", \"eos_token\": \"Lily\\u2581\"}\n", fp);
    fclose(fp);
}

static void remove_eos_dir(const char *dir)
{
    const char *files[] = {"model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"};
    char p[PATH_MAX];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* `inferctl run DIR --ids ... --json`: generated ids and finish reason. */
static int inferctl_run(const char *dir, const struct story *st, int n, int32_t *ids, char *finish, size_t flen)
{
    const char *build = getenv("INFERD_BUILD_ROOT");
    cr_assert(build && *build, "INFERD_BUILD_ROOT is not set: run the tests through meson test");
    char cmd[PATH_MAX * 2 + 1024];
    int k = snprintf(cmd, sizeof(cmd), "%s/daemon/inferctl run %s -n %d --threads 1 --json --ids ", build, dir, n);
    for (int i = 0; i < st->n_prompt; i++)
        k += snprintf(cmd + k, sizeof(cmd) - (size_t)k, "%s%d", i ? "," : "", st->prompt[i]);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    static char buf[65536];
    size_t len = fread(buf, 1, sizeof(buf) - 1, p);
    buf[len] = '\0';
    cr_assert_eq(pclose(p), 0, "%s failed: %s", cmd, buf);
    cJSON *j = cJSON_Parse(buf);
    cr_assert_not_null(j, "not JSON: %s", buf);
    int got = golden_read_ids(cJSON_GetObjectItem(j, "generated_ids"), ids);
    const cJSON *fr = cJSON_GetObjectItem(j, "finish_reason");
    cr_assert(cJSON_IsString(fr), "%s", buf);
    snprintf(finish, flen, "%s", fr->valuestring);
    cJSON_Delete(j);
    return got;
}

Test(scheduler, daemon_and_inferctl_run_stop_on_the_tokenizer_eos)
{
    struct story st;
    story_load(0, &st);
    cr_assert_eq(st.gen[2], 303, "the golden continuation changed: pick another eos_token");
    char dir[64];
    make_eos_dir(dir, sizeof(dir));

    struct fx f = {0};
    fx_up_dir(&f, dir, 1, 128, 1);
    cr_assert(!model_config_is_eos(&f.m->cfg, 303), "the config must not name the token itself");
    struct gen_stop_set stops;
    ifd_error err;
    cr_assert_eq(stop_set_build(&f.m->cfg, f.tok, &stops, &err), 0, "%s", err.msg);
    cr_assert(gen_stop_set_has(&stops, 2) && gen_stop_set_has(&stops, 303) && stops.n == 2);
    struct sched_req *r = submit(&f, st.prompt, st.n_prompt, 20);
    struct sched_output out = {0};
    collect_all(r, &out);
    cr_assert_eq(out.error_status, 0, "%s", out.error_msg);
    cr_assert_str_eq(out.finish_reason, "stop");
    cr_assert_eq(out.completion_tokens, 3);
    cr_assert_eq(out.lp[2].token, 303);
    cr_assert(!strstr(out.text ? out.text : "", "Lily"), "the stop token's text is not output: %s", out.text);
    sched_output_finish(&out);
    sched_req_release(r);
    fx_down(&f);

    int32_t ids[MAX_IDS];
    char finish[32];
    int n = inferctl_run(dir, &st, 20, ids, finish, sizeof(finish));
    remove_eos_dir(dir);
    cr_assert_str_eq(finish, "stop", "inferctl run did not stop on the tokenizer's eos_token");
    cr_assert_eq(n, 3, "inferctl run generated %d tokens, the daemon 3", n);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ids[i], st.gen[i]);
}

/* Issue 13 part 3: prompt logprobs (echo) come from every prompt position's
 * logits, a few rows per step. Each must equal the logprob the same token
 * gets when it is generated greedily at that position; the first is null.
 * A second sequence decoding meanwhile leaves fewer rows per step. */
Test(scheduler, prompt_logprobs_equal_generated_logprobs)
{
    struct story st;
    story_load(0, &st);
    struct fx f = {0};
    fx_up(&f, 3, 128, 4);
    int n_gen = st.stable < 20 ? st.stable : 20;
    /* the generation's own logprobs */
    struct sched_req *r = submit(&f, st.prompt, st.n_prompt, n_gen);
    struct sched_output gen = {0};
    collect_all(r, &gen);
    sched_req_release(r);
    cr_assert_eq(gen.n_lp, n_gen);

    int32_t all[MAX_IDS * 2];
    memcpy(all, st.prompt, sizeof(int32_t) * (size_t)st.n_prompt);
    memcpy(all + st.n_prompt, st.gen, sizeof(int32_t) * (size_t)n_gen);
    int n_all = st.n_prompt + n_gen;

    struct sched_req *busy = submit(&f, st.prompt, st.n_prompt, 40); /* decodes alongside */
    struct sched_req_params p = {.prompt = all, .n_prompt = (size_t)n_all, .max_tokens = 0,
                                 .sampling = sampler_params_default(), .logprobs = true, .top_logprobs = 2,
                                 .prompt_logprobs = true, .prompt_only = true};
    ifd_error err = {{0}};
    cr_assert_eq(sched_submit(f.s, &p, &r, &err), 0, "%s", err.msg);
    struct sched_output out = {0};
    collect_all(r, &out);
    cr_assert_eq(out.error_status, 0, "%s", out.error_msg);
    cr_assert_str_eq(out.finish_reason, "length");
    cr_assert_eq(out.completion_tokens, 0, "max_tokens 0 generates nothing");
    cr_assert_eq(out.n_lp, n_all, "one entry per prompt token: %d", out.n_lp);
    cr_expect(out.lp[0].is_null);
    cr_expect_eq(out.lp[0].token, all[0]);
    for (int i = 1; i < n_all; i++) {
        cr_expect(!out.lp[i].is_null);
        cr_expect_eq(out.lp[i].token, all[i], "entry %d is prompt token %d", i, i);
        cr_expect_eq(out.lp[i].n_top, 2);
        cr_expect_leq(out.lp[i].top_logprobs[1], out.lp[i].top_logprobs[0]);
        if (i >= st.n_prompt)
            cr_expect_float_eq(out.lp[i].logprob, gen.lp[i - st.n_prompt].logprob, 1e-3,
                               "position %d: %g in the prompt, %g generated", i, out.lp[i].logprob,
                               gen.lp[i - st.n_prompt].logprob);
    }
    cr_expect(out.text == NULL || out.text_len == 0, "nothing generated, no text");
    sched_output_finish(&out);
    sched_output_finish(&gen);
    sched_req_release(r);
    sched_req_release(busy);
    fx_down(&f);
}

/* logit_bias: -100 bans the greedy token, +100 forces another. */
Test(scheduler, logit_bias_bans_and_forces)
{
    struct story st;
    story_load(0, &st);
    struct fx f = {0};
    fx_up(&f, 1, 128, 4);
    for (int k = 0; k < 2; k++) {
        struct api_logit_bias b = k == 0 ? (struct api_logit_bias){st.gen[0], -100} : (struct api_logit_bias){77, 100};
        struct sched_req_params p = {.prompt = st.prompt, .n_prompt = (size_t)st.n_prompt, .max_tokens = 3,
                                     .sampling = sampler_params_default(), .logprobs = true, .top_logprobs = 2,
                                     .logit_bias = &b, .n_logit_bias = 1};
        struct sched_req *r = NULL;
        ifd_error err = {{0}};
        cr_assert_eq(sched_submit(f.s, &p, &r, &err), 0, "%s", err.msg);
        struct sched_output out = {0};
        collect_all(r, &out);
        cr_assert_eq(out.n_lp, 3);
        if (k == 0) {
            cr_expect_neq(out.lp[0].token, st.gen[0], "the greedy token is banned");
            cr_expect_eq(out.lp[0].token, out.lp[0].top_ids[1], "the runner-up is picked");
        } else {
            for (int i = 0; i < 3; i++)
                cr_expect_eq(out.lp[i].token, 77, "step %d forced", i);
        }
        sched_output_finish(&out);
        sched_req_release(r);
    }
    /* an id outside the vocabulary is refused at submit */
    struct api_logit_bias bad = {1 << 20, 1};
    struct sched_req_params p = {.prompt = st.prompt, .n_prompt = (size_t)st.n_prompt, .max_tokens = 1,
                                 .sampling = sampler_params_default(), .logit_bias = &bad, .n_logit_bias = 1};
    struct sched_req *r = NULL;
    ifd_error err = {{0}};
    cr_expect_eq(sched_submit(f.s, &p, &r, &err), -EINVAL);
    fx_down(&f);
}

/* ---- n choices of one prompt: one prefill shared (share_prefill) ---- */

/* Tokens the engine has run so far (prompt and generated alike). */
static uint64_t tokens_run(struct fx *f)
{
    struct stage_stats ss;
    stage_get_stats(engine_stage(f->e, 0), &ss);
    return ss.tokens;
}

/* The n choices of request `base` (seeds base's + i, each after the first
 * sharing the first's prefill), as the HTTP layer submits them; member
 * `cancel` (-1: none) is cancelled at once. The ids of each other choice go
 * to ids[i], their count to n_ids[i]. */
static void run_choices_cached(struct fx *f, const struct sched_req_params *base, int n, int cancel,
                               int32_t (*ids)[MAX_IDS], int *n_ids, int *cached)
{
    struct sched_req *r[8];
    cr_assert_leq(n, 8);
    sched_hold(f->s); /* as the HTTP layer queues a request's choices */
    for (int i = 0; i < n; i++) {
        struct sched_req_params p = *base;
        p.logprobs = true;
        p.share_prefill = i > 0 ? r[0] : NULL;
        p.sampling.seed = base->sampling.seed + (uint64_t)i;
        ifd_error err = {{0}};
        cr_assert_eq(sched_submit(f->s, &p, &r[i], &err), 0, "%s", err.msg);
    }
    sched_release(f->s);
    if (cancel >= 0)
        sched_req_cancel(r[cancel]);
    for (int i = 0; i < n; i++) {
        struct sched_output out = {0};
        collect_all(r[i], &out);
        if (i != cancel) {
            cr_assert_eq(out.error_status, 0, "choice %d: %s", i, out.error_msg);
            cr_assert_eq(out.n_lp, out.completion_tokens);
            for (int k = 0; k < out.n_lp && k < MAX_IDS; k++)
                ids[i][k] = out.lp[k].token;
            n_ids[i] = out.completion_tokens;
            if (cached)
                cached[i] = out.cached_tokens;
        }
        sched_output_finish(&out);
        sched_req_release(r[i]);
    }
}

static void run_choices(struct fx *f, const struct sched_req_params *base, int n, int cancel,
                        int32_t (*ids)[MAX_IDS], int *n_ids)
{
    run_choices_cached(f, base, n, cancel, ids, n_ids, NULL);
}

static struct sched_req_params story_params(const struct story *st, int max_tokens)
{
    return (struct sched_req_params){.prompt = st->prompt, .n_prompt = (size_t)st->n_prompt,
                                     .max_tokens = max_tokens, .sampling = sampler_params_default()};
}

static void assert_same_ids(const int32_t *got, int n_got, const int32_t *want, int n_want, int choice)
{
    cr_assert_eq(n_got, n_want, "choice %d: %d tokens, alone %d", choice, n_got, n_want);
    for (int k = 0; k < n_want; k++)
        cr_assert_eq(got[k], want[k], "choice %d token %d: %d, alone %d", choice, k, got[k], want[k]);
}

/* Greedy: every choice is the request alone, and the engine ran the prompt
 * once: the tokens it ran are one prompt plus each choice's generated ones. */
Test(scheduler, choices_share_one_prefill)
{
    enum { N = 4, MAXT = 12 };
    struct story st;
    story_load(0, &st);
    struct fx f = {0};
    fx_up(&f, N, 128, N);
    struct sched_req_params p = story_params(&st, MAXT);
    int32_t alone[1][MAX_IDS], ids[N][MAX_IDS];
    int n_alone[1], n_ids[N];
    uint64_t t0 = tokens_run(&f);
    run_choices(&f, &p, 1, -1, alone, n_alone);
    uint64_t one = tokens_run(&f) - t0;
    cr_assert_eq(n_alone[0], MAXT);
    t0 = tokens_run(&f);
    run_choices(&f, &p, N, -1, ids, n_ids);
    uint64_t n_run = tokens_run(&f) - t0, decoded = one - (uint64_t)st.n_prompt;
    for (int i = 0; i < N; i++)
        assert_same_ids(ids[i], n_ids[i], alone[0], n_alone[0], i);
    cr_assert_eq(n_run, (uint64_t)st.n_prompt + N * decoded,
                 "%d choices ran %llu tokens: want one prompt of %d and %llu decoded each", N,
                 (unsigned long long)n_run, st.n_prompt, (unsigned long long)decoded);
    fx_down(&f);
}

/* Sampled: choice i draws the same tokens as a request of its own seeded
 * seed + i, from the same RNG stream, though its first token came from the
 * first choice's logits. With a logit bias, which each choice adds to the
 * logits it samples from: no choice sees another's. */
Test(scheduler, sampled_choices_equal_separate_seeded_requests)
{
    enum { N = 4, MAXT = 16 };
    struct story st;
    story_load(1, &st);
    struct fx f = {0};
    fx_up(&f, N, 128, N);
    struct sched_req_params p = story_params(&st, MAXT);
    p.sampling.temperature = 1.0f;
    p.sampling.seed = 1234;
    /* A bias that makes the first token's two likeliest even: a choice
     * that sampled from a row another had biased too would favour one. */
    struct sched_req *r = NULL;
    ifd_error err = {{0}};
    struct sched_req_params greedy = story_params(&st, 1);
    greedy.logprobs = true;
    greedy.top_logprobs = 2;
    cr_assert_eq(sched_submit(f.s, &greedy, &r, &err), 0, "%s", err.msg);
    struct sched_output out = {0};
    collect_all(r, &out);
    cr_assert_eq(out.n_lp, 1, "%s", out.error_msg);
    struct api_logit_bias bias = {.token = out.lp[0].top_ids[1],
                                  .bias = out.lp[0].top_logprobs[0] - out.lp[0].top_logprobs[1]};
    sched_output_finish(&out);
    sched_req_release(r);
    p.logit_bias = &bias;
    p.n_logit_bias = 1;
    int32_t sep[N][MAX_IDS], ids[N][MAX_IDS];
    int n_sep[N], n_ids[N];
    for (int i = 0; i < N; i++) {
        struct sched_req_params one = p;
        one.sampling.seed = p.sampling.seed + (uint64_t)i;
        run_choices(&f, &one, 1, -1, &sep[i], &n_sep[i]);
    }
    run_choices(&f, &p, N, -1, ids, n_ids);
    bool differ = false;
    for (int i = 0; i < N; i++) {
        assert_same_ids(ids[i], n_ids[i], sep[i], n_sep[i], i);
        differ |= n_sep[i] != n_sep[0] || memcmp(sep[i], sep[0], sizeof(int32_t) * (size_t)n_sep[0]) != 0;
    }
    cr_assert(differ, "the seeds drew the same tokens: the test shows nothing");
    fx_down(&f);
}

/* A cancelled first choice (whose prefill the others wait for) or a
 * cancelled other one, and an engine that cannot copy a cache (a remote
 * stage's case): the others still give the request alone, prefilling
 * themselves where they must. */
Test(scheduler, choices_fall_back_to_their_own_prefill)
{
    enum { N = 4, MAXT = 12 };
    struct story st;
    story_load(2, &st);
    struct sched_req_params p = story_params(&st, MAXT);
    int32_t alone[1][MAX_IDS], ids[N][MAX_IDS];
    int n_alone[1], n_ids[N];
    struct fx f = {0};
    fx_up(&f, N, 128, N);
    run_choices(&f, &p, 1, -1, alone, n_alone);
    for (int cancel = 0; cancel < 3; cancel += 2) {
        run_choices(&f, &p, N, cancel, ids, n_ids);
        for (int i = 0; i < N; i++)
            if (i != cancel)
                assert_same_ids(ids[i], n_ids[i], alone[0], n_alone[0], i);
    }
    fx_down(&f);

    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/models/%s", tu_must_shared_dir(), MODEL);
    fx_up_engine(&f, dir, N, 128, N, true, false);
    uint64_t t0 = tokens_run(&f);
    run_choices(&f, &p, 1, -1, alone, n_alone);
    uint64_t one = tokens_run(&f) - t0;
    /* twice: the first finds out the copy fails, the second knows it */
    for (int k = 0; k < 2; k++) {
        t0 = tokens_run(&f);
        run_choices(&f, &p, N, -1, ids, n_ids);
        cr_assert_eq(tokens_run(&f) - t0, N * one, "each choice prefills its own prompt");
        for (int i = 0; i < N; i++)
            assert_same_ids(ids[i], n_ids[i], alone[0], n_alone[0], i);
    }
    fx_down(&f);
}

/* ---- prefix_cache ---- */

/* dst = a[0..na) + b[0..nb) + c[0..nc): the prompt of a chat's next turn,
 * which repeats the conversation so far. Returns its length. */
static int concat3(int32_t *dst, const int32_t *a, int na, const int32_t *b, int nb, const int32_t *c, int nc)
{
    cr_assert_leq(na + nb + nc, MAX_IDS);
    memcpy(dst, a, sizeof(int32_t) * (size_t)na);
    memcpy(dst + na, b, sizeof(int32_t) * (size_t)nb);
    if (nc > 0)
        memcpy(dst + na + nb, c, sizeof(int32_t) * (size_t)nc);
    return na + nb + nc;
}

/* prompt on `hot` and on `cold` (prefix_cache off) give the same tokens;
 * returns the cached_tokens `hot` reported (cold reports 0). */
static int run_hot_cold(struct fx *hot, struct fx *cold, const int32_t *prompt, int n_prompt, int max_tokens)
{
    int32_t h[MAX_IDS], c[MAX_IDS];
    const char *fh, *fc;
    int cached_h = -1, cached_c = -1;
    int nh = run_one_cached(hot, prompt, n_prompt, max_tokens, h, &fh, &cached_h);
    int nc = run_one_cached(cold, prompt, n_prompt, max_tokens, c, &fc, &cached_c);
    cr_assert_eq(cached_c, 0, "prefix_cache off reported %d cached tokens", cached_c);
    assert_same_ids(h, nh, c, nc, 0);
    cr_assert_str_eq(fh, fc);
    return cached_h;
}

/* Turn 2 of a chat keeps turn 1's prompt and every token it fed (all it
 * generated but the last, which never ran), prefills only the rest, and
 * gives the tokens of a cold scheduler; the same prompt again keeps all but
 * its last token, which must run for the first token's logits. */
Test(scheduler, prefix_cache_next_turn_matches_cold)
{
    enum { MAXT = 40, MAXT2 = 30 };
    struct story a, b;
    story_load(0, &a);
    story_load(1, &b);
    struct fx hot = {0}, cold = {0};
    fx_up_cache(&hot, 2, 256, true);
    fx_up_cache(&cold, 2, 256, false);
    int32_t gen[MAX_IDS], p2[MAX_IDS];
    const char *finish;
    int cached = -1;
    cr_assert_eq(run_one_cached(&hot, a.prompt, a.n_prompt, MAXT, gen, &finish, &cached), MAXT);
    cr_assert_eq(cached, 0, "a first request found %d cached tokens", cached);
    int n2 = concat3(p2, a.prompt, a.n_prompt, gen, MAXT, b.prompt + 1, b.n_prompt - 1);
    uint64_t t0 = tokens_run(&hot);
    int32_t ids[MAX_IDS];
    int n_ids = run_one_cached(&hot, p2, n2, MAXT2, ids, &finish, &cached);
    cr_assert_eq(cached, a.n_prompt + MAXT - 1, "turn 2 kept %d positions", cached);
    /* the engine ran the rest of the prompt and every token fed after it */
    cr_assert_eq(tokens_run(&hot) - t0, (uint64_t)(n2 - cached + n_ids - 1));
    cr_assert_eq(run_hot_cold(&hot, &cold, p2, n2, MAXT2), n2 - 1);
    fx_down(&cold);
    fx_down(&hot);
}

/* A prompt that parts from a cache after two tokens keeps two, on one slot;
 * with an empty slot beside it, it takes that one and leaves the cache to
 * its own conversation's next turn. */
Test(scheduler, prefix_cache_early_divergence_keeps_little)
{
    enum { MAXT = 20 };
    struct story a, c;
    story_load(0, &a);
    story_load(2, &c);
    int lcp = 0;
    while (lcp < a.n_prompt && lcp < c.n_prompt && a.prompt[lcp] == c.prompt[lcp])
        lcp++;
    cr_assert(lcp > 0 && lcp < 4, "the stories share %d tokens", lcp);
    int32_t gen[MAX_IDS], p2[MAX_IDS];
    const char *finish;
    for (int n_seq = 1; n_seq <= 2; n_seq++) {
        struct fx hot = {0}, cold = {0};
        fx_up_cache(&hot, n_seq, 256, true);
        fx_up_cache(&cold, n_seq, 256, false);
        cr_assert_eq(run_one(&hot, a.prompt, a.n_prompt, MAXT, gen, &finish), MAXT);
        int cached = run_hot_cold(&hot, &cold, c.prompt, c.n_prompt, MAXT);
        cr_assert_eq(cached, n_seq == 1 ? lcp : 0, "%d slots: kept %d", n_seq, cached);
        if (n_seq == 2) {
            int n2 = concat3(p2, a.prompt, a.n_prompt, gen, MAXT, c.prompt + 1, c.n_prompt - 1);
            cr_assert_eq(run_hot_cold(&hot, &cold, p2, n2, MAXT), a.n_prompt + MAXT - 1);
        }
        fx_down(&cold);
        fx_down(&hot);
    }
}

/* Two slots, three conversations: the third evicts the least recently
 * released cache; the second's next turn still finds its own, the first's
 * finds only the shared first tokens. */
Test(scheduler, prefix_cache_evicts_the_least_recent)
{
    enum { MAXT = 20 };
    struct story st[3];
    for (int i = 0; i < 3; i++)
        story_load(i, &st[i]);
    struct fx hot = {0}, cold = {0};
    fx_up_cache(&hot, 2, 256, true);
    fx_up_cache(&cold, 2, 256, false);
    int32_t gen[3][MAX_IDS], p2[MAX_IDS];
    const char *finish;
    int cached = -1;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(run_one_cached(&hot, st[i].prompt, st[i].n_prompt, MAXT, gen[i], &finish, &cached), MAXT);
        cr_assert_lt(cached, 4, "conversation %d kept %d of another's", i, cached);
    }
    int n2 = concat3(p2, st[0].prompt, st[0].n_prompt, gen[0], MAXT, st[1].prompt, 3);
    cached = run_hot_cold(&hot, &cold, p2, n2, MAXT);
    cr_assert_lt(cached, 4, "the evicted conversation kept %d", cached);
    n2 = concat3(p2, st[2].prompt, st[2].n_prompt, gen[2], MAXT, st[1].prompt, 3);
    cr_assert_eq(run_hot_cold(&hot, &cold, p2, n2, MAXT), st[2].n_prompt + MAXT - 1);
    fx_down(&cold);
    fx_down(&hot);
}

/* A request cancelled mid-generation leaves the cache of what it fed: a
 * prompt of what the client saw keeps all but its last token and goes on as
 * a cold scheduler does. */
Test(scheduler, prefix_cache_after_cancel_is_consistent)
{
    struct story st;
    story_load(0, &st);
    struct fx hot = {0}, cold = {0};
    fx_up_cache(&hot, 1, 512, true);
    fx_up_cache(&cold, 1, 512, false);
    struct sched_req *a = submit(&hot, st.prompt, st.n_prompt, 400);
    struct sched_output out = {0};
    double t0 = ifd_now_s();
    while (out.n_lp < 5 && !out.done) {
        sched_req_collect(a, 200, &out);
        cr_assert_lt(ifd_now_s() - t0, COLLECT_DEADLINE_S);
    }
    sched_req_cancel(a);
    collect_all(a, &out);
    cr_assert_eq(out.error_status, 499, "status %d (%s)", out.error_status, out.error_msg);
    int32_t seen[MAX_IDS], p2[MAX_IDS];
    int k = out.n_lp < 100 ? out.n_lp : 100;
    for (int i = 0; i < k; i++)
        seen[i] = out.lp[i].token;
    sched_output_finish(&out);
    sched_req_release(a);
    int n2 = concat3(p2, st.prompt, st.n_prompt, seen, k, NULL, 0);
    cr_assert_eq(run_hot_cold(&hot, &cold, p2, n2, 20), n2 - 1);
    fx_down(&cold);
    fx_down(&hot);
}

/* n choices of a next turn: the first keeps the cache; the others copy its
 * prompt cache and report what it kept, or, admitted after its prompt ran
 * or on an engine that cannot copy (a remote stage's case), prefill
 * themselves and report what their own slot kept: nothing, the one cache
 * being the first's. What each reports is what the engine ran. */
Test(scheduler, prefix_cache_choices_report_what_was_kept)
{
    enum { N = 3, MAXT = 12 };
    struct story a, b;
    story_load(0, &a);
    story_load(1, &b);
    for (int copyless = 0; copyless < 2; copyless++) {
        struct fx f = {0};
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/models/%s", tu_must_shared_dir(), MODEL);
        fx_up_engine(&f, dir, N, 128, N, copyless, true);
        int32_t gen[MAX_IDS], p2[MAX_IDS], alone[1][MAX_IDS], ids[N][MAX_IDS];
        int n_alone[1], n_ids[N], cached[N];
        const char *finish;
        cr_assert_eq(run_one(&f, a.prompt, a.n_prompt, MAXT, gen, &finish), MAXT);
        int n2 = concat3(p2, a.prompt, a.n_prompt, gen, MAXT, b.prompt + 1, b.n_prompt - 1);
        struct sched_req_params p = story_params(&a, MAXT);
        p.prompt = p2;
        p.n_prompt = (size_t)n2;
        uint64_t t0 = tokens_run(&f), want = 0;
        run_choices_cached(&f, &p, N, -1, ids, n_ids, cached);
        cr_assert_eq(cached[0], a.n_prompt + MAXT - 1);
        for (int i = 0; i < N; i++) {
            bool copied = i > 0 && !copyless && cached[i] == cached[0];
            if (i > 0 && !copied)
                cr_assert_eq(cached[i], 0, "copyless %d: choice %d kept %d", copyless, i, cached[i]);
            /* its own prefill, then every generated token but the last */
            want += (copied ? 0 : (uint64_t)(n2 - cached[i])) + (uint64_t)(n_ids[i] - 1);
        }
        cr_assert_eq(tokens_run(&f) - t0, want, "copyless %d: the engine ran %llu tokens, the counts say %llu",
                     copyless, (unsigned long long)(tokens_run(&f) - t0), (unsigned long long)want);
        /* choice 0's slot now holds p2: alone, p2 keeps all but its last */
        run_choices_cached(&f, &p, 1, -1, alone, n_alone, cached);
        cr_assert_eq(cached[0], n2 - 1);
        for (int i = 0; i < N; i++)
            assert_same_ids(ids[i], n_ids[i], alone[0], n_alone[0], i);
        fx_down(&f);
    }
}

/* ---- failover: the caches rebuilt on new stages ---- */

/* A CPU stage whose forward fails with -EHOSTDOWN, as a remote stage's does
 * when its worker is down, from its fail_at-th call on (0: never). */
struct flaky_stage {
    struct stage base;
    struct stage *inner;
    int calls, fail_at;
};

static int flaky_forward(struct stage *s, const struct stage_batch *b, ifd_error *err)
{
    struct flaky_stage *fs = (struct flaky_stage *)s;
    if (fs->fail_at && ++fs->calls >= fs->fail_at)
        return ifd_error_set(err, -EHOSTDOWN, "worker w1 (127.0.0.1:1, layers 0-1) is down");
    return stage_forward(fs->inner, b, err);
}

static int flaky_truncate(struct stage *s, int seq_id, int n_keep, ifd_error *err)
{
    return stage_seq_truncate(((struct flaky_stage *)s)->inner, seq_id, n_keep, err);
}

static void flaky_destroy(struct stage *s)
{
    stage_destroy(((struct flaky_stage *)s)->inner);
    stage_finish(s);
    free(s);
}

static const struct stage_ops flaky_ops = {
    .name = "flaky", .forward = flaky_forward, .seq_truncate = flaky_truncate, .destroy = flaky_destroy,
};

static struct stage *flaky_stage(const struct model *m, const struct engine_config *ec, struct thread_pool *pool,
                                 int fail_at)
{
    ifd_error err = {{0}};
    struct flaky_stage *fs = calloc(1, sizeof(*fs));
    cr_assert_not_null(fs);
    int L = m->cfg.n_layers;
    cr_assert_eq(cpu_stage_create(m, 0, L, ec->n_seq_max, ec->n_ctx, pool, &fs->inner, &err), 0, "%s", err.msg);
    cr_assert_eq(stage_init(&fs->base, &flaky_ops, 0, L, m->cfg.hidden_size, ec->n_seq_max, ec->n_ctx, 0, &err), 0,
                 "%s", err.msg);
    fs->fail_at = fail_at;
    return &fs->base;
}

/* What the recover hook does: what cluster_failover does once the layers
 * have moved, a new stage list (here one fresh stage that fails from its
 * new_fail_at-th forward), or refuses as when no node can take them. */
struct failover_fx {
    struct fx f;
    struct engine_config ec;
    int new_fail_at;
    bool refuse;
    int recovers;
};

static int test_recover(void *ctx, struct metrics_failover *ret, ifd_error *err)
{
    struct failover_fx *x = ctx;
    if (x->refuse)
        return ifd_error_set(err, -ENOSPC, "worker w1 is down and no node can take its layers");
    struct stage *st = flaky_stage(x->f.m, &x->ec, x->f.pool, x->new_fail_at);
    int r = engine_replace_stages(x->f.e, &st, 1, err);
    if (r < 0) {
        stage_destroy(st);
        return r;
    }
    x->recovers++;
    *ret = (struct metrics_failover){.worker = "w1", .to = "master", .layer_first = 0, .layer_last = 2};
    return 0;
}

static void failover_up(struct failover_fx *x, int n_seq, int fail_at, bool prefix_cache)
{
    ifd_error err = {{0}};
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/models/%s", tu_must_shared_dir(), MODEL);
    struct fx *f = &x->f;
    struct model_load_opts lo = model_load_opts_default();
    cr_assert_eq(model_load(dir, &lo, &f->m, &err), 0, "%s", err.msg);
    cr_assert_eq(tok_load(dir, &f->tok, &err), 0, "%s", err.msg);
    struct sched_config sc = {.n_seq_max = n_seq, .n_ctx = 128, .prefill_chunk = 16, .queue_depth = n_seq,
                              .prefix_cache = prefix_cache, .recover = test_recover, .recover_ctx = x};
    sc.n_batch_max = sc.prefill_chunk + n_seq;
    x->ec = (struct engine_config){.n_seq_max = n_seq, .n_ctx = 128, .n_batch_max = sc.n_batch_max, .n_threads = 1};
    cr_assert_not_null(f->pool = thread_pool_create(1));
    struct stage *st = flaky_stage(f->m, &x->ec, f->pool, fail_at);
    cr_assert_eq(engine_create(f->m, &st, 1, &x->ec, NULL, &f->e, &err), 0, "%s", err.msg);
    struct gen_stop_set stops;
    cr_assert_eq(stop_set_build(&f->m->cfg, f->tok, &stops, &err), 0, "%s", err.msg);
    cr_assert_eq(sched_create(f->e, f->tok, &stops, &sc, NULL, &f->s, &err), 0, "%s", err.msg);
}

/* Three sequences generating, and one still prefilling a long prompt (with
 * prompt logprobs, which must not come twice), when a forward fails with a
 * worker down: the hook gives the engine new stages holding nothing, the
 * scheduler rebuilds every cache from its tokens, and each request ends as
 * it does undisturbed (greedy ids, the prompt logprob entries once). */
Test(scheduler, failover_rebuilds_the_caches)
{
    enum { N = 3, MAXT = 40 };
    struct story st[N];
    for (int i = 0; i < N; i++)
        story_load(i, &st[i]);
    int32_t alone[N][MAX_IDS];
    int n_alone[N];
    const char *finish;
    struct fx ref = {0};
    fx_up(&ref, N + 1, 128, N + 1);
    for (int i = 0; i < N; i++)
        n_alone[i] = run_one(&ref, st[i].prompt, st[i].n_prompt, MAXT, alone[i], &finish);
    /* A 60-token prompt: 4 chunks of 16, still prefilling at the failure. */
    int32_t longp[60];
    for (int i = 0; i < 60; i++)
        longp[i] = st[i % N].prompt[i % st[i % N].n_prompt];
    struct sched_req_params lp = {.prompt = longp, .n_prompt = 60, .max_tokens = 8,
                                  .sampling = sampler_params_default(), .logprobs = true, .prompt_logprobs = true};
    struct sched_req *r0;
    ifd_error err = {{0}};
    struct sched_output o0 = {0};
    cr_assert_eq(sched_submit(ref.s, &lp, &r0, &err), 0, "%s", err.msg);
    collect_all(r0, &o0);
    cr_assert_eq(o0.error_status, 0, "%s", o0.error_msg);
    sched_req_release(r0);
    fx_down(&ref);

    static struct failover_fx x; /* the hook's context outlives the scheduler thread's calls */
    memset(&x, 0, sizeof(x));
    failover_up(&x, N + 1, 6, false);
    struct sched_req *r[N], *rl;
    struct sched_output out[N], ol = {0};
    memset(out, 0, sizeof(out));
    for (int i = 0; i < N; i++)
        r[i] = submit(&x.f, st[i].prompt, st[i].n_prompt, MAXT);
    /* the short prompts are in after one step; the long one joins later */
    cr_assert_eq(sched_submit(x.f.s, &lp, &rl, &err), 0, "%s", err.msg);
    for (int i = 0; i < N; i++) {
        collect_all(r[i], &out[i]);
        cr_assert_eq(out[i].error_status, 0, "%s", out[i].error_msg);
        cr_assert_eq(out[i].n_lp, n_alone[i]);
        for (int k = 0; k < n_alone[i]; k++)
            cr_assert_eq(out[i].lp[k].token, alone[i][k], "story %d token %d: after the failover %d, alone %d", i,
                         k, out[i].lp[k].token, alone[i][k]);
        sched_output_finish(&out[i]);
        sched_req_release(r[i]);
    }
    collect_all(rl, &ol);
    cr_assert_eq(ol.error_status, 0, "%s", ol.error_msg);
    cr_assert_eq(ol.n_lp, o0.n_lp, "prompt logprobs once: %d entries, undisturbed %d", ol.n_lp, o0.n_lp);
    for (int k = 0; k < o0.n_lp; k++)
        cr_assert_eq(ol.lp[k].token, o0.lp[k].token, "long prompt entry %d", k);
    cr_assert_eq(x.recovers, 1);
    sched_output_finish(&ol);
    sched_output_finish(&o0);
    sched_req_release(rl);
    fx_down(&x.f);
}

/* No node for the layers: the request ends with 503 and the hook's reason.
 * New stages that fail at once: a bounded number of failovers, then 503. */
Test(scheduler, failover_refused_or_failing_ends_with_503)
{
    struct story st;
    story_load(0, &st);
    static struct failover_fx x;
    for (int refuse = 1; refuse >= 0; refuse--) {
        memset(&x, 0, sizeof(x));
        x.refuse = refuse;
        x.new_fail_at = 1;
        failover_up(&x, 2, 3, false);
        struct sched_req *r = submit(&x.f, st.prompt, st.n_prompt, 40);
        struct sched_output out = {0};
        collect_all(r, &out);
        cr_assert_eq(out.error_status, 503, "status %d: %s", out.error_status, out.error_msg);
        cr_assert(strstr(out.error_msg, refuse ? "no node can take its layers" : "is down"), "%s", out.error_msg);
        cr_assert_eq(x.recovers, refuse ? 0 : 3, "%d failovers", x.recovers);
        sched_output_finish(&out);
        sched_req_release(r);
        fx_down(&x.f);
    }
}

/* prefix_cache: a free slot's kept cache went with the old stages. Story 0
 * leaves its cache in one slot; story 1 runs in the other through a
 * failover; story 0 again then runs from position 0 (cached_tokens 0) and
 * gives the ids it gave; once more, it keeps all but its last prompt token
 * of the cache just rebuilt. */
Test(scheduler, failover_forgets_kept_caches)
{
    struct story st[2];
    story_load(0, &st[0]);
    story_load(1, &st[1]);
    int32_t alone[MAX_IDS], ids[MAX_IDS];
    const char *finish;
    static struct failover_fx x;
    memset(&x, 0, sizeof(x));
    failover_up(&x, 2, 0, true);
    int n_alone = run_one(&x.f, st[0].prompt, st[0].n_prompt, 8, alone, &finish);
    struct flaky_stage *fs = (struct flaky_stage *)engine_stage(x.f.e, 0);
    fs->calls = 0;
    fs->fail_at = 3; /* story 1's third forward fails */
    cr_assert_gt(run_one(&x.f, st[1].prompt, st[1].n_prompt, 8, ids, &finish), 0);
    cr_assert_eq(x.recovers, 1);
    for (int pass = 0; pass < 2; pass++) {
        struct sched_req *r = submit(&x.f, st[0].prompt, st[0].n_prompt, 8);
        struct sched_output out = {0};
        collect_all(r, &out);
        cr_assert_eq(out.error_status, 0, "%s", out.error_msg);
        cr_assert_eq(out.cached_tokens, pass ? st[0].n_prompt - 1 : 0, "pass %d: %d cached", pass,
                     out.cached_tokens);
        cr_assert_eq(out.n_lp, n_alone);
        for (int k = 0; k < n_alone; k++)
            cr_assert_eq(out.lp[k].token, alone[k], "token %d: %d, alone %d", k, out.lp[k].token, alone[k]);
        sched_output_finish(&out);
        sched_req_release(r);
    }
    fx_down(&x.f);
}
