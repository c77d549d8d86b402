/* metrics.c - see metrics.h. */
#include "metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"

/* Rates are tokens over the last RATE_WINDOW complete seconds. */
#define RATE_WINDOW 5
#define RATE_BUCKETS 8

static const double ttft_bounds[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define N_TTFT (sizeof(ttft_bounds) / sizeof(ttft_bounds[0]))

/* Status codes counted one by one; anything else lands in "other". */
static const int statuses[] = {200, 400, 401, 404, 405, 413, 429, 500, 503};
#define N_STATUS (sizeof(statuses) / sizeof(statuses[0]))

struct rate_bucket {
    int64_t second;
    uint64_t prefill, decode;
};

struct metrics {
    pthread_mutex_t mu;
    uint64_t by_status[N_STATUS + 1];
    uint64_t prompt_tokens, completion_tokens;
    uint64_t prompt_tokens_cached;  /* of prompt_tokens, kept from a slot's cache */
    uint64_t prefill_tokens, decode_tokens, steps;
    double step_seconds;
    uint64_t ttft_buckets[N_TTFT];
    uint64_t ttft_count;
    double ttft_sum;
    struct rate_bucket rates[RATE_BUCKETS];
    int queued, in_flight;
    int64_t kv_used, kv_capacity;
    int n_layers, n_stages;
    struct metrics_stage *stages; /* [n_stages] */
    double *layer_store;          /* [n_layers] backing the stages' layer_ms */
};

struct metrics *metrics_create(int n_layers, int n_stages)
{
    struct metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    pthread_mutex_init(&m->mu, NULL);
    m->n_layers = n_layers;
    m->n_stages = n_stages;
    m->stages = calloc((size_t)(n_stages > 0 ? n_stages : 1), sizeof(*m->stages));
    m->layer_store = calloc((size_t)(n_layers > 0 ? n_layers : 1), sizeof(double));
    if (!m->stages || !m->layer_store) {
        metrics_destroy(m);
        return NULL;
    }
    return m;
}

void metrics_destroy(struct metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m->stages);
    free(m->layer_store);
    free(m);
}

void metrics_request_done(struct metrics *m, int status)
{
    size_t i = 0;
    while (i < N_STATUS && statuses[i] != status)
        i++;
    pthread_mutex_lock(&m->mu);
    m->by_status[i]++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_tokens(struct metrics *m, int prompt_tokens, int cached_tokens, int completion_tokens)
{
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += (uint64_t)prompt_tokens;
    m->prompt_tokens_cached += (uint64_t)cached_tokens;
    m->completion_tokens += (uint64_t)completion_tokens;
    pthread_mutex_unlock(&m->mu);
}

void metrics_ttft(struct metrics *m, double s)
{
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < N_TTFT; i++)
        if (s <= ttft_bounds[i])
            m->ttft_buckets[i]++;
    m->ttft_count++;
    m->ttft_sum += s;
    pthread_mutex_unlock(&m->mu);
}

void metrics_step(struct metrics *m, int n_prefill, int n_decode, double seconds)
{
    int64_t sec = (int64_t)(ifd_now_ns() / 1000000000u);
    pthread_mutex_lock(&m->mu);
    struct rate_bucket *b = &m->rates[sec % RATE_BUCKETS];
    if (b->second != sec) {
        b->second = sec;
        b->prefill = b->decode = 0;
    }
    b->prefill += (uint64_t)n_prefill;
    b->decode += (uint64_t)n_decode;
    m->prefill_tokens += (uint64_t)n_prefill;
    m->decode_tokens += (uint64_t)n_decode;
    m->steps++;
    m->step_seconds += seconds;
    pthread_mutex_unlock(&m->mu);
}

void metrics_gauges(struct metrics *m, int queued, int in_flight, int64_t kv_used, int64_t kv_capacity)
{
    pthread_mutex_lock(&m->mu);
    m->queued = queued;
    m->in_flight = in_flight;
    m->kv_used = kv_used;
    m->kv_capacity = kv_capacity;
    pthread_mutex_unlock(&m->mu);
}

void metrics_stage_set(struct metrics *m, int i, const char *backend, int layer_first, int layer_last,
                       uint64_t forward_calls, uint64_t tokens, double forward_ms, const double *layer_ms)
{
    if (i < 0 || i >= m->n_stages)
        return;
    pthread_mutex_lock(&m->mu);
    struct metrics_stage *s = &m->stages[i];
    snprintf(s->backend, sizeof(s->backend), "%s", backend ? backend : "?");
    s->layer_first = layer_first;
    s->layer_last = layer_last;
    s->forward_calls = forward_calls;
    s->tokens = tokens;
    s->forward_ms = forward_ms;
    if (layer_ms && layer_first >= 0 && layer_last <= m->n_layers && layer_first < layer_last) {
        memcpy(m->layer_store + layer_first, layer_ms, sizeof(double) * (size_t)(layer_last - layer_first));
        s->layer_ms = m->layer_store + layer_first;
    } else {
        s->layer_ms = NULL;
    }
    pthread_mutex_unlock(&m->mu);
}

static void rates_locked(struct metrics *m, double *prefill, double *decode)
{
    int64_t sec = (int64_t)(ifd_now_ns() / 1000000000u);
    uint64_t p = 0, d = 0;
    for (int i = 0; i < RATE_BUCKETS; i++) {
        const struct rate_bucket *b = &m->rates[i];
        if (b->second < sec && b->second >= sec - RATE_WINDOW) {
            p += b->prefill;
            d += b->decode;
        }
    }
    *prefill = (double)p / RATE_WINDOW;
    *decode = (double)d / RATE_WINDOW;
}

void metrics_snapshot_get(struct metrics *m, struct metrics_snapshot *ret)
{
    struct metrics_snapshot s = {0};
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i <= N_STATUS; i++)
        s.requests_total += m->by_status[i];
    s.prompt_tokens_total = m->prompt_tokens;
    s.completion_tokens_total = m->completion_tokens;
    s.prompt_tokens_cached_total = m->prompt_tokens_cached;
    rates_locked(m, &s.prefill_tps, &s.decode_tps);
    s.queued = m->queued;
    s.in_flight = m->in_flight;
    s.kv_used = m->kv_used;
    s.kv_capacity = m->kv_capacity;
    s.ttft_count = m->ttft_count;
    s.ttft_avg_s = m->ttft_count ? m->ttft_sum / (double)m->ttft_count : 0;
    pthread_mutex_unlock(&m->mu);
    *ret = s;
}

int metrics_stage_count(struct metrics *m)
{
    return m->n_stages;
}

int metrics_stage_get(struct metrics *m, int i, struct metrics_stage *ret)
{
    if (i < 0 || i >= m->n_stages)
        return -ENOENT;
    pthread_mutex_lock(&m->mu);
    struct metrics_stage s = m->stages[i];
    double *copy = NULL;
    if (s.layer_ms && s.layer_last > s.layer_first) {
        size_t n = (size_t)(s.layer_last - s.layer_first);
        copy = malloc(sizeof(double) * n);
        if (copy)
            memcpy(copy, s.layer_ms, sizeof(double) * n);
    }
    pthread_mutex_unlock(&m->mu);
    s.layer_ms = copy;
    *ret = s;
    return 0;
}

/* A growable text buffer for the exposition. */
struct tbuf {
    char *p;
    size_t len, cap;
    int err;
};

static void tb_printf(struct tbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(struct tbuf *b, const char *fmt, ...)
{
    if (b->err)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->err = -EINVAL;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = b->cap * 2 + (size_t)n + 1;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->err = -ENOMEM;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

int metrics_render(struct metrics *m, char **ret, size_t *ret_len)
{
    struct tbuf b = {.cap = 8192};
    if (!(b.p = malloc(b.cap)))
        return -ENOMEM;
    b.p[0] = '\0';
    pthread_mutex_lock(&m->mu);
    tb_printf(&b, "# HELP inferd_requests_total HTTP requests by status code.\n# TYPE inferd_requests_total counter\n");
    for (size_t i = 0; i < N_STATUS; i++)
        tb_printf(&b, "inferd_requests_total{status=\"%d\"} %llu\n", statuses[i], (unsigned long long)m->by_status[i]);
    tb_printf(&b, "inferd_requests_total{status=\"other\"} %llu\n", (unsigned long long)m->by_status[N_STATUS]);
    tb_printf(&b, "# HELP inferd_prompt_tokens_total Prompt tokens of finished requests.\n# TYPE inferd_prompt_tokens_total counter\n"
                  "inferd_prompt_tokens_total %llu\n", (unsigned long long)m->prompt_tokens);
    tb_printf(&b, "# HELP inferd_prompt_tokens_cached_total Prompt tokens of finished requests kept from a slot's cache (prefix_cache), not run.\n# TYPE inferd_prompt_tokens_cached_total counter\n"
                  "inferd_prompt_tokens_cached_total %llu\n", (unsigned long long)m->prompt_tokens_cached);
    tb_printf(&b, "# HELP inferd_completion_tokens_total Generated tokens of finished requests.\n# TYPE inferd_completion_tokens_total counter\n"
                  "inferd_completion_tokens_total %llu\n", (unsigned long long)m->completion_tokens);
    tb_printf(&b, "# HELP inferd_prefill_tokens_total Prompt tokens run through the model.\n# TYPE inferd_prefill_tokens_total counter\n"
                  "inferd_prefill_tokens_total %llu\n", (unsigned long long)m->prefill_tokens);
    tb_printf(&b, "# HELP inferd_decode_tokens_total Tokens decoded (one per running sequence per step).\n# TYPE inferd_decode_tokens_total counter\n"
                  "inferd_decode_tokens_total %llu\n", (unsigned long long)m->decode_tokens);
    tb_printf(&b, "# HELP inferd_steps_total Batched forward passes.\n# TYPE inferd_steps_total counter\n"
                  "inferd_steps_total %llu\n", (unsigned long long)m->steps);
    tb_printf(&b, "# HELP inferd_step_seconds_total Time spent in batched forward passes.\n# TYPE inferd_step_seconds_total counter\n"
                  "inferd_step_seconds_total %.6f\n", m->step_seconds);
    double pr, dr;
    rates_locked(m, &pr, &dr);
    tb_printf(&b, "# HELP inferd_prefill_tokens_per_second Prefill throughput over the last %d s.\n# TYPE inferd_prefill_tokens_per_second gauge\n"
                  "inferd_prefill_tokens_per_second %.3f\n", RATE_WINDOW, pr);
    tb_printf(&b, "# HELP inferd_decode_tokens_per_second Aggregate decode throughput over the last %d s.\n# TYPE inferd_decode_tokens_per_second gauge\n"
                  "inferd_decode_tokens_per_second %.3f\n", RATE_WINDOW, dr);
    tb_printf(&b, "# HELP inferd_time_to_first_token_seconds From submission to the first generated token.\n# TYPE inferd_time_to_first_token_seconds histogram\n");
    for (size_t i = 0; i < N_TTFT; i++)
        tb_printf(&b, "inferd_time_to_first_token_seconds_bucket{le=\"%g\"} %llu\n", ttft_bounds[i],
                  (unsigned long long)m->ttft_buckets[i]);
    tb_printf(&b, "inferd_time_to_first_token_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)m->ttft_count);
    tb_printf(&b, "inferd_time_to_first_token_seconds_sum %.6f\ninferd_time_to_first_token_seconds_count %llu\n",
              m->ttft_sum, (unsigned long long)m->ttft_count);
    tb_printf(&b, "# HELP inferd_queue_depth Requests waiting for a sequence slot.\n# TYPE inferd_queue_depth gauge\n"
                  "inferd_queue_depth %d\n", m->queued);
    tb_printf(&b, "# HELP inferd_sequences_in_flight Sequences being prefilled or decoded.\n# TYPE inferd_sequences_in_flight gauge\n"
                  "inferd_sequences_in_flight %d\n", m->in_flight);
    tb_printf(&b, "# HELP inferd_kv_cache_used_positions KV cache positions holding a sequence's tokens.\n# TYPE inferd_kv_cache_used_positions gauge\n"
                  "inferd_kv_cache_used_positions %lld\n", (long long)m->kv_used);
    tb_printf(&b, "# HELP inferd_kv_cache_capacity_positions KV cache positions in all sequence slots.\n# TYPE inferd_kv_cache_capacity_positions gauge\n"
                  "inferd_kv_cache_capacity_positions %lld\n", (long long)m->kv_capacity);
    tb_printf(&b, "# HELP inferd_kv_cache_usage_ratio Used over capacity.\n# TYPE inferd_kv_cache_usage_ratio gauge\n"
                  "inferd_kv_cache_usage_ratio %.6f\n", m->kv_capacity ? (double)m->kv_used / (double)m->kv_capacity : 0.0);
    tb_printf(&b, "# HELP inferd_stage_forward_seconds_total Time inside each stage's forward.\n# TYPE inferd_stage_forward_seconds_total counter\n");
    for (int i = 0; i < m->n_stages; i++)
        tb_printf(&b, "inferd_stage_forward_seconds_total{stage=\"%d\",backend=\"%s\",layers=\"%d-%d\"} %.6f\n", i,
                  m->stages[i].backend, m->stages[i].layer_first, m->stages[i].layer_last - 1,
                  m->stages[i].forward_ms / 1000.0);
    tb_printf(&b, "# HELP inferd_layer_forward_seconds_total Time inside each transformer layer.\n# TYPE inferd_layer_forward_seconds_total counter\n");
    for (int i = 0; i < m->n_stages; i++) {
        const struct metrics_stage *s = &m->stages[i];
        if (!s->layer_ms)
            continue;
        for (int l = s->layer_first; l < s->layer_last; l++)
            tb_printf(&b, "inferd_layer_forward_seconds_total{layer=\"%d\",backend=\"%s\"} %.6f\n", l, s->backend,
                      s->layer_ms[l - s->layer_first] / 1000.0);
    }
    tb_printf(&b, "# HELP inferd_layer_forward_calls_total Forward calls of the stage holding each layer.\n# TYPE inferd_layer_forward_calls_total counter\n");
    for (int i = 0; i < m->n_stages; i++)
        for (int l = m->stages[i].layer_first; m->stages[i].layer_ms && l < m->stages[i].layer_last; l++)
            tb_printf(&b, "inferd_layer_forward_calls_total{layer=\"%d\"} %llu\n", l,
                      (unsigned long long)m->stages[i].forward_calls);
    pthread_mutex_unlock(&m->mu);
    if (b.err) {
        free(b.p);
        return b.err;
    }
    *ret = b.p;
    *ret_len = b.len;
    return 0;
}
