/* ctl_run.c - `inferctl run MODEL_DIR [PROMPT]`: generate locally, without a
 * daemon.
 *
 * Loads the checkpoint, encodes the prompt with the model's tokenizer (or
 * takes ids from --ids), prefills it in batches of up to --batch tokens, then
 * samples one token at a time with the daemon's generation step
 * (model/generate.h) until a stop token (the config's eos ids and the
 * tokenizer's eos_token, as the daemon), -n tokens or the end of the
 * context. With --json it prints one object with the ids and timings (for
 * scripts and benchmarks); otherwise the text as it is generated (the ids
 * when the model directory has no tokenizer) and a one-line speed summary on
 * stderr. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "model/engine.h"
#include "model/generate.h"
#include "model/kernels.h"
#include "model/model.h"
#include "model/sampler.h"
#include "stop_set.h"
#include "text/tokenizer/tokenizer.h"
#include "base/clock.h"
#include "base/cpu.h"

/* Bounds on what the command line may ask for. */
#define RUN_MAX_PROMPT 65536
#define RUN_MAX_NEW 1000000
#define RUN_DEFAULT_BATCH 512

struct run_opts {
    const char *model_dir;
    const char *prompt_text; /* NULL when the prompt is --ids */
    int32_t *prompt;      /* [n_prompt], owned */
    int n_prompt;
    int n_new;
    int n_threads;
    int n_ctx;            /* 0: prompt + n_new, capped by max_position_embeddings */
    int n_batch;
    bool json;
    struct sampler_params sp;
};

/* --simd: the kernels of a CPU without AVX-512 (or AVX-VNNI) on one that has
 * them, to compare; "auto" keeps the best. */
static int force_simd(const char *name)
{
    ifd_error err = {{0}};
    int l;
    int r = cpu_simd_choose(name, "--simd", &l, &err);
    if (r < 0) {
        fprintf(stderr, "inferctl run: %s\n", err.msg);
        return r;
    }
    return l >= 0 ? cpu_simd_force((enum cpu_simd)l) : 0;
}

static void run_usage(FILE *f)
{
    fprintf(f,
            "Usage: inferctl run MODEL_DIR PROMPT [options]\n"
            "       inferctl run MODEL_DIR --ids ID,ID,... [options]\n"
            "\n"
            "Generates from a prompt with the model in MODEL_DIR (Hugging Face\n"
            "layout), locally and without a daemon. PROMPT is encoded with the\n"
            "model's tokenizer.json (special tokens added as HF does). Generation\n"
            "stops, as in the daemon, at an end token (config.json's eos_token_id\n"
            "or tokenizer_config.json's eos_token), at -n tokens or at the end of\n"
            "the context.\n"
            "\n"
            "  --ids LIST              prompt token ids, comma-separated, instead of PROMPT\n"
            "  -n, --max-tokens N      tokens to generate at most (default 64)\n"
            "  --temperature F         0 = greedy (default 0)\n"
            "  --top-k N               keep the N most likely (0 = off)\n"
            "  --top-p F               nucleus sampling (1 = off)\n"
            "  --min-p F               drop tokens below F x the best (0 = off)\n"
            "  --repetition-penalty F  HF/CTRL penalty on seen tokens (1 = off)\n"
            "  --presence-penalty F    OpenAI presence penalty (0 = off)\n"
            "  --frequency-penalty F   OpenAI frequency penalty (0 = off)\n"
            "  --seed N                RNG seed (default 0)\n"
            "  --backend cpu           where the layers run (cpu)\n"
            "  --threads N             CPU threads (0 = all cores, default)\n"
            "  --simd LEVEL            CPU kernels: auto (default), scalar, avx2, avx2-vnni, avx512\n"
            "  --ctx N                 context length (default prompt + n)\n"
            "  --batch N               prefill batch size (default 512)\n"
            "  --json                  print {\"prompt_ids\", \"generated_ids\", \"finish_reason\", \"timings\"}\n");
}

static int parse_int(const char *opt, const char *s, long lo, long hi, int *ret)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "inferctl run: %s '%s': want an integer in [%ld, %ld]\n", opt, s, lo, hi);
        return -EINVAL;
    }
    *ret = (int)v;
    return 0;
}

static int parse_float(const char *opt, const char *s, double lo, double hi, float *ret)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "inferctl run: %s '%s': want a number in [%g, %g]\n", opt, s, lo, hi);
        return -EINVAL;
    }
    *ret = (float)v;
    return 0;
}

static int parse_ids(const char *s, struct run_opts *o)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    if (cap > RUN_MAX_PROMPT) {
        fprintf(stderr, "inferctl run: --ids: more than %d ids\n", RUN_MAX_PROMPT);
        return -E2BIG;
    }
    free(o->prompt);
    o->prompt = calloc(cap, sizeof(*o->prompt));
    if (!o->prompt)
        return -ENOMEM;
    o->n_prompt = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            fprintf(stderr, "inferctl run: --ids: '%s' is not a list of token ids (at '%.16s')\n", s, p);
            return -EINVAL;
        }
        o->prompt[o->n_prompt++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct run_opts *o)
{
    enum { O_IDS = 256, O_TEMP, O_TOPK, O_TOPP, O_MINP, O_REP, O_PRES, O_FREQ, O_SEED, O_BACKEND, O_THREADS, O_SIMD,
           O_CTX, O_BATCH, O_JSON };
    static const struct option longopts[] = {
        {"ids", required_argument, NULL, O_IDS},
        {"max-tokens", required_argument, NULL, 'n'},
        {"temperature", required_argument, NULL, O_TEMP},
        {"top-k", required_argument, NULL, O_TOPK},
        {"top-p", required_argument, NULL, O_TOPP},
        {"min-p", required_argument, NULL, O_MINP},
        {"repetition-penalty", required_argument, NULL, O_REP},
        {"presence-penalty", required_argument, NULL, O_PRES},
        {"frequency-penalty", required_argument, NULL, O_FREQ},
        {"seed", required_argument, NULL, O_SEED},
        {"backend", required_argument, NULL, O_BACKEND},
        {"threads", required_argument, NULL, O_THREADS},
        {"simd", required_argument, NULL, O_SIMD},
        {"ctx", required_argument, NULL, O_CTX},
        {"batch", required_argument, NULL, O_BATCH},
        {"json", no_argument, NULL, O_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c, r = 0;
    optind = 1;
    while (r == 0 && (c = getopt_long(argc, argv, "n:h", longopts, NULL)) != -1) {
        switch (c) {
        case O_IDS: r = parse_ids(optarg, o); break;
        case 'n': r = parse_int("-n", optarg, 0, RUN_MAX_NEW, &o->n_new); break;
        case O_TEMP: r = parse_float("--temperature", optarg, 0, 100, &o->sp.temperature); break;
        case O_TOPK: r = parse_int("--top-k", optarg, 0, INT_MAX, &o->sp.top_k); break;
        case O_TOPP: r = parse_float("--top-p", optarg, 0, 1, &o->sp.top_p); break;
        case O_MINP: r = parse_float("--min-p", optarg, 0, 1, &o->sp.min_p); break;
        case O_REP: r = parse_float("--repetition-penalty", optarg, 0.01, 100, &o->sp.repetition_penalty); break;
        case O_PRES: r = parse_float("--presence-penalty", optarg, -2, 2, &o->sp.presence_penalty); break;
        case O_FREQ: r = parse_float("--frequency-penalty", optarg, -2, 2, &o->sp.frequency_penalty); break;
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end) {
                fprintf(stderr, "inferctl run: --seed '%s': want a non-negative integer\n", optarg);
                r = -EINVAL;
            }
            o->sp.seed = v;
            break;
        }
        case O_BACKEND:
            if (strcmp(optarg, "cpu") != 0) {
                fprintf(stderr, "inferctl run: --backend '%s': only 'cpu' is available here\n", optarg);
                r = -ENOTSUP;
            }
            break;
        case O_THREADS: r = parse_int("--threads", optarg, 0, 1024, &o->n_threads); break;
        case O_SIMD: r = force_simd(optarg); break;
        case O_CTX: r = parse_int("--ctx", optarg, 1, 1 << 20, &o->n_ctx); break;
        case O_BATCH: r = parse_int("--batch", optarg, 1, 65536, &o->n_batch); break;
        case O_JSON: o->json = true; break;
        case 'h': run_usage(stdout); exit(0);
        default: run_usage(stderr); return -EINVAL;
        }
    }
    if (r < 0)
        return r;
    if (optind >= argc || argc - optind > 2) {
        fprintf(stderr, "inferctl run: %s\n\n", optind >= argc ? "missing MODEL_DIR" : "too many arguments (quote the prompt)");
        run_usage(stderr);
        return -EINVAL;
    }
    o->model_dir = argv[optind];
    o->prompt_text = argc - optind == 2 ? argv[optind + 1] : NULL;
    if (o->prompt_text && o->n_prompt) {
        fprintf(stderr, "inferctl run: give the prompt as text or as --ids, not both\n");
        return -EINVAL;
    }
    if (!o->prompt_text && o->n_prompt == 0) {
        fprintf(stderr, "inferctl run: no prompt: give PROMPT or --ids\n");
        return -EINVAL;
    }
    return 0;
}

static void print_ids(FILE *f, const int32_t *ids, int n)
{
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%d", i ? "," : "", ids[i]);
}

int ctl_run_main(int argc, char **argv)
{
    struct run_opts o = {.n_new = 64, .n_batch = RUN_DEFAULT_BATCH, .sp = sampler_params_default()};
    struct model *m = NULL;
    engine *e = NULL;
    sampler *smp = NULL;
    tokenizer *tok = NULL;
    struct tok_stream *ts = NULL;
    char *text = NULL;
    size_t text_len = 0, text_cap = 0;
    int32_t *out = NULL, *seq = NULL, *pos = NULL;
    bool *want = NULL;
    ifd_error err = {{0}};
    int status = 1;

    if (parse_args(argc, argv, &o) < 0)
        goto done;
    struct model_load_opts lo = model_load_opts_default();
    if (model_load(o.model_dir, &lo, &m, &err) < 0) {
        fprintf(stderr, "inferctl run: %s\n", err.msg);
        goto done;
    }
    const struct model_config *c = &m->cfg;
    /* the tokenizer is needed for a text prompt, optional with --ids */
    if (tok_load(o.model_dir, &tok, &err) < 0) {
        if (o.prompt_text) {
            fprintf(stderr, "inferctl run: %s\n", err.msg);
            goto done;
        }
        tok = NULL;
    }
    if (o.prompt_text) {
        struct tok_ids ids = {0};
        if (tok_encode(tok, o.prompt_text, strlen(o.prompt_text), true, &ids, &err) < 0) {
            fprintf(stderr, "inferctl run: prompt: %s\n", err.msg);
            tok_ids_finish(&ids);
            goto done;
        }
        if (ids.n == 0 || ids.n > RUN_MAX_PROMPT) {
            fprintf(stderr, "inferctl run: the prompt encodes to %zu tokens; want 1 to %d\n", ids.n, RUN_MAX_PROMPT);
            tok_ids_finish(&ids);
            goto done;
        }
        o.prompt = ids.ids; /* ownership moves to o */
        o.n_prompt = (int)ids.n;
    }
    for (int i = 0; i < o.n_prompt; i++) {
        if (o.prompt[i] >= c->vocab_size) {
            fprintf(stderr, "inferctl run: --ids: token %d is outside the vocabulary of %d\n", o.prompt[i],
                    c->vocab_size);
            goto done;
        }
    }
    int n_ctx = o.n_ctx ? o.n_ctx : o.n_prompt + o.n_new;
    if (!o.n_ctx && c->max_position_embeddings > 0 && n_ctx > c->max_position_embeddings)
        n_ctx = c->max_position_embeddings;
    if (o.n_prompt >= n_ctx + (o.n_new == 0)) {
        fprintf(stderr, "inferctl run: the prompt of %d tokens does not fit a context of %d\n", o.n_prompt, n_ctx);
        goto done;
    }
    int n_batch = o.n_batch < o.n_prompt ? o.n_batch : o.n_prompt;
    struct engine_config ec = {.n_seq_max = 1, .n_ctx = n_ctx, .n_batch_max = n_batch, .n_threads = o.n_threads};
    if (engine_create_cpu(m, NULL, 0, &ec, &e, &err) < 0) {
        fprintf(stderr, "inferctl run: %s\n", err.msg);
        goto done;
    }
    smp = sampler_create(&o.sp, c->vocab_size);
    out = calloc((size_t)o.n_new + 1, sizeof(*out));
    seq = calloc((size_t)n_batch, sizeof(*seq));
    pos = calloc((size_t)n_batch, sizeof(*pos));
    want = calloc((size_t)n_batch, sizeof(*want));
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    if (!smp || !out || !seq || !pos || !want || !logits) {
        free(logits);
        fprintf(stderr, "inferctl run: out of memory\n");
        goto done;
    }
    for (int i = 0; i < o.n_prompt; i++)
        sampler_accept(smp, o.prompt[i], false);
    struct gen_stop_set stops;
    if (stop_set_build(c, tok, &stops, &err) < 0) {
        fprintf(stderr, "inferctl run: %s\n", err.msg);
        free(logits);
        goto done;
    }
    struct gen_seq gen;
    gen_seq_init(&gen, smp, &stops, o.n_new, n_ctx);

    /* prefill, in chunks of n_batch; logits of the last prompt token only */
    double t0 = ifd_now_ms();
    for (int start = 0; start < o.n_prompt; start += n_batch) {
        int n = o.n_prompt - start < n_batch ? o.n_prompt - start : n_batch;
        for (int i = 0; i < n; i++) {
            pos[i] = start + i;
            want[i] = start + i == o.n_prompt - 1;
        }
        struct engine_batch b = {.n_tokens = n, .tokens = o.prompt + start, .seq_ids = seq, .positions = pos,
                                 .want_logits = want};
        if (engine_decode(e, &b, &err) < 0) {
            fprintf(stderr, "inferctl run: prefill: %s\n", err.msg);
            free(logits);
            goto done;
        }
    }
    double t1 = ifd_now_ms();

    if (!o.json && tok) {
        if (!(ts = tok_stream_create(tok, true))) {
            fprintf(stderr, "inferctl run: out of memory\n");
            free(logits);
            goto done;
        }
        if (o.prompt_text) {
            fputs(o.prompt_text, stdout);
            fflush(stdout);
        }
    }
    int n_out = 0;
    enum gen_finish fin = o.n_new > 0 ? GEN_CONTINUE : GEN_FINISH_LENGTH;
    while (fin == GEN_CONTINUE) {
        memcpy(logits, engine_logits(e), sizeof(float) * (size_t)c->vocab_size);
        /* positions held: the prompt and every generated token but the last */
        int32_t t, p = o.n_prompt + n_out;
        fin = gen_seq_step(&gen, logits, p, &t);
        out[n_out++] = t;
        /* text as it is made, never half a UTF-8 character; a stop token's
         * text is not part of the output (as in the daemon) */
        if (ts && fin != GEN_FINISH_STOP) {
            text_len = 0;
            if (tok_stream_push(ts, t, &text, &text_len, &text_cap) > 0) {
                fwrite(text, 1, text_len, stdout);
                fflush(stdout);
            }
        }
        if (fin != GEN_CONTINUE)
            break;
        bool w = true;
        struct engine_batch b = {.n_tokens = 1, .tokens = &t, .seq_ids = seq, .positions = &p, .want_logits = &w};
        if (engine_decode(e, &b, &err) < 0) {
            fprintf(stderr, "inferctl run: decode: %s\n", err.msg);
            free(logits);
            goto done;
        }
    }
    const char *finish = gen_finish_reason(fin);
    double t2 = ifd_now_ms();
    free(logits);

    if (o.json) {
        printf("{\"prompt_ids\":[");
        print_ids(stdout, o.prompt, o.n_prompt);
        printf("],\"generated_ids\":[");
        print_ids(stdout, out, n_out);
        printf("],\"finish_reason\":\"%s\",\"timings\":{\"prompt_tokens\":%d,\"prompt_ms\":%.3f,"
               "\"generated_tokens\":%d,\"generated_ms\":%.3f},\"simd\":\"%s\"}\n",
               finish, o.n_prompt, t1 - t0, n_out, t2 - t1, cpu_simd_name(cpu_simd_level()));
    } else {
        if (ts) {
            text_len = 0;
            if (tok_stream_flush(ts, &text, &text_len, &text_cap) > 0)
                fwrite(text, 1, text_len, stdout);
        } else {
            print_ids(stdout, out, n_out);
        }
        printf("\n");
        fflush(stdout);
        /* the first generated token comes from the prefill's logits, so the
         * decode rate counts the n_out - 1 forward passes after it */
        fprintf(stderr, "prompt %d tokens in %.1f ms (%.1f tok/s), generated %d tokens in %.1f ms (%.1f tok/s), %s, %d threads, %s\n",
                o.n_prompt, t1 - t0, o.n_prompt / ((t1 - t0) / 1e3), n_out, t2 - t1,
                n_out > 1 ? (n_out - 1) / ((t2 - t1) / 1e3) : 0.0, finish,
                o.n_threads ? o.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN), cpu_simd_name(cpu_simd_level()));
    }
    status = 0;
done:
    tok_stream_destroy(ts);
    tok_destroy(tok);
    free(text);
    sampler_destroy(smp);
    engine_destroy(e);
    model_destroy(m);
    free(o.prompt);
    free(out);
    free(seq);
    free(pos);
    free(want);
    return status;
}
