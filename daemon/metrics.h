/* metrics.h - counters and gauges behind GET /metrics (Prometheus text
 * format) and GET /v1/status. Thread-safe: HTTP threads count requests, the
 * scheduler thread reports each step, readers take a consistent snapshot. */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct metrics;

/* Per-layer timing of one stage, copied from its stage_get_stats(). */
struct metrics_stage {
    char backend[16];       /* "cpu", "vulkan", "remote" */
    int layer_first, layer_last;
    uint64_t forward_calls;
    uint64_t tokens;
    double forward_ms;      /* total */
    double *layer_ms;       /* [layer_last - layer_first] totals; NULL if the stage has none */
};

struct metrics_snapshot {
    uint64_t requests_total;
    uint64_t prompt_tokens_total, completion_tokens_total;
    uint64_t prompt_tokens_cached_total; /* of prompt_tokens_total, kept from a slot's cache */
    double prefill_tps, decode_tps;    /* over the last few seconds */
    int queued, in_flight;
    int64_t kv_used, kv_capacity;      /* positions */
    double ttft_avg_s;                 /* mean time to first token */
    uint64_t ttft_count;
};

/* n_layers sizes the per-layer table. NULL on allocation failure. */
struct metrics *metrics_create(int n_layers, int n_stages);
void metrics_destroy(struct metrics *m); /* accepts NULL */

/* One finished HTTP request. */
void metrics_request_done(struct metrics *m, int status);
/* Tokens of one finished generation; cached_tokens: of its prompt, those
 * kept from a slot's cache (prefix_cache) rather than run. */
void metrics_tokens(struct metrics *m, int prompt_tokens, int cached_tokens, int completion_tokens);
/* Seconds from submission to the first generated token. */
void metrics_ttft(struct metrics *m, double seconds);
/* One scheduler step: tokens prefilled and decoded, its wall time, and the
 * gauges as they stand after it. */
void metrics_step(struct metrics *m, int n_prefill, int n_decode, double seconds);
void metrics_gauges(struct metrics *m, int queued, int in_flight, int64_t kv_used, int64_t kv_capacity);
/* Stage i's stats (the layer array is copied). */
void metrics_stage_set(struct metrics *m, int i, const char *backend, int layer_first, int layer_last,
                       uint64_t forward_calls, uint64_t tokens, double forward_ms, const double *layer_ms);

void metrics_snapshot_get(struct metrics *m, struct metrics_snapshot *ret);
/* Copies stage i (layer_ms is malloc'd into *ret, caller frees it). -ENOENT past the end. */
int metrics_stage_get(struct metrics *m, int i, struct metrics_stage *ret);
int metrics_stage_count(struct metrics *m);

/* Prometheus text exposition; *ret malloc'd. */
int metrics_render(struct metrics *m, char **ret, size_t *ret_len);
