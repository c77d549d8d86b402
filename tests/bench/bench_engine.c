/* bench_engine.c - single-stream prefill and decode speed of the CPU engine,
 * and decode as a share of the memory-bandwidth bound.
 *
 * usage: bench_engine MODEL_DIR [PROMPT_LEN [GEN_LEN [THREADS]]]
 *
 * Prompt ids follow llamacpp_bench.mjs (1000 + i * 7919 % 50000) so both
 * engines see the same prompt. The bandwidth bound is measured here: a
 * multi-threaded streaming read of a buffer far larger than the caches, best
 * of a few passes; the bound in tok/s is that bandwidth over the weight bytes
 * one decode step reads (every layer matrix and the head). Prints one JSON
 * line. A benchmark, not a test: the figures depend on the machine and on
 * whatever else runs on it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/engine.h"
#include "model/kernels.h"
#include "model/model.h"
#include "base/thread_pool.h"
#include "base/clock.h"
#include "read_bandwidth.h"

static double weight_bytes(const struct ifd_weight *w)
{
    if (!w->data)
        return 0;
    if (w->bits) {
        double groups = (double)w->rows * (double)(w->cols / w->group_size);
        return (double)w->rows * (double)w->cols * w->bits / 8 + 2 * groups * (double)ifd_dtype_size(w->qparam_dtype);
    }
    return (double)w->rows * (double)w->cols * (double)ifd_dtype_size(w->dtype);
}

/* Bytes one decode step reads: every layer matrix, then the head. */
static double decode_bytes(const struct model *m)
{
    double b = weight_bytes(&m->lm_head);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        b += weight_bytes(&L->wq) + weight_bytes(&L->wk) + weight_bytes(&L->wv) + weight_bytes(&L->wo) +
             weight_bytes(&L->w_gate) + weight_bytes(&L->w_up) + weight_bytes(&L->w_down);
    }
    return b;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [PROMPT_LEN [GEN_LEN [THREADS]]]\n", argv[0]);
        return 2;
    }
    int n_prompt = argc > 2 ? atoi(argv[2]) : 512, n_gen = argc > 3 ? atoi(argv[3]) : 128;
    int n_threads = argc > 4 ? atoi(argv[4]) : 2;
    if (n_prompt < 1 || n_prompt > 8192 || n_gen < 1 || n_gen > 8192) {
        fprintf(stderr, "bench_engine: PROMPT_LEN and GEN_LEN must be in [1, 8192]\n");
        return 2;
    }
    struct model *m = NULL;
    ifd_error err = {{0}};
    struct model_load_opts lo = model_load_opts_default();
    if (model_load(argv[1], &lo, &m, &err) < 0) {
        fprintf(stderr, "bench_engine: %s\n", err.msg);
        return 1;
    }
    struct engine_config ec = {.n_seq_max = 1, .n_ctx = n_prompt + n_gen + 1, .n_batch_max = n_prompt,
                               .n_threads = n_threads};
    engine *e = NULL;
    if (engine_create_cpu(m, NULL, 0, &ec, &e, &err) < 0) {
        fprintf(stderr, "bench_engine: %s\n", err.msg);
        return 1;
    }
    struct thread_pool *pool = thread_pool_create(n_threads);
    double bw = read_bandwidth(pool);
    thread_pool_destroy(pool);

    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_prompt), *seq = calloc((size_t)n_prompt, sizeof(int32_t));
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n_prompt);
    bool *want = calloc((size_t)n_prompt, sizeof(bool));
    for (int i = 0; i < n_prompt; i++) {
        ids[i] = (1000 + (int32_t)((int64_t)i * 7919 % 50000)) % m->cfg.vocab_size;
        pos[i] = i;
    }
    want[n_prompt - 1] = true;
    /* touch every weight page once so the first measurement is not a disk read */
    {
        int32_t t = ids[0], p = 0;
        bool w = true;
        struct engine_batch b = {.n_tokens = 1, .tokens = &t, .seq_ids = seq, .positions = &p, .want_logits = &w};
        if (engine_decode(e, &b, &err) < 0 || engine_seq_truncate(e, 0, 0, &err) < 0) {
            fprintf(stderr, "bench_engine: warm-up: %s\n", err.msg);
            return 1;
        }
    }
    struct engine_batch b = {.n_tokens = n_prompt, .tokens = ids, .seq_ids = seq, .positions = pos, .want_logits = want};
    double t0 = ifd_now_s();
    if (engine_decode(e, &b, &err) < 0) {
        fprintf(stderr, "bench_engine: prefill: %s\n", err.msg);
        return 1;
    }
    double t1 = ifd_now_s();
    int vocab = m->cfg.vocab_size;
    for (int k = 0; k < n_gen; k++) {
        const float *lg = engine_logits(e);
        int32_t t = 0;
        for (int i = 1; i < vocab; i++)
            if (lg[i] > lg[t])
                t = i;
        int32_t p = n_prompt + k;
        bool w = true;
        struct engine_batch d = {.n_tokens = 1, .tokens = &t, .seq_ids = seq, .positions = &p, .want_logits = &w};
        if (engine_decode(e, &d, &err) < 0) {
            fprintf(stderr, "bench_engine: decode: %s\n", err.msg);
            return 1;
        }
    }
    double t2 = ifd_now_s();
    double prefill = n_prompt / (t1 - t0), decode = n_gen / (t2 - t1);
    double bytes = decode_bytes(m), bound = bw * 1e9 / bytes;
    printf("{\"engine\":\"inferd\",\"simd\":\"%s\",\"threads\":%d,\"prompt_tokens\":%d,\"gen_tokens\":%d,"
           "\"prefill_tok_s\":%.2f,\"decode_tok_s\":%.2f,\"read_bw_gb_s\":%.2f,\"decode_weight_mb\":%.1f,"
           "\"bw_bound_tok_s\":%.2f,\"decode_pct_of_bound\":%.1f}\n",
           kern_simd_name(), n_threads, n_prompt, n_gen, prefill, decode, bw, bytes / 1e6, bound,
           100 * decode / bound);
    free(ids);
    free(seq);
    free(pos);
    free(want);
    engine_destroy(e);
    model_destroy(m);
    return 0;
}
