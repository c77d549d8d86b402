/* test_golden.c - the CPU engine against ../shared/golden/models.jsonl.
 *
 * For each golden line: the first stable_prefix_len greedy ids exactly, and
 * the last prompt position's logits within 1e-2 (max abs) with the same
 * argmax (see ../shared/README.md). Then the same tokens when the layers run
 * as several stages, and when sequences are batched together. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "kernels.h"
#include "model.h"

#define MAX_IDS 256

struct golden {
    char model[128];
    int32_t prompt[MAX_IDS];
    int n_prompt;
    int32_t gen[MAX_IDS];
    int n_gen;
    int stable;
    char logits_path[512];
};

static const char *shared_dir(void)
{
    const char *s = getenv("INFERD_SHARED");
    cr_assert(s && *s, "INFERD_SHARED is not set: it must name the shared models/goldens directory");
    return s;
}

static char *read_file(const char *path, size_t *ret_len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n, "short read of %s", path);
    buf[n] = 0;
    fclose(f);
    if (ret_len)
        *ret_len = (size_t)n;
    return buf;
}

static int read_ids(const cJSON *arr, int32_t *out)
{
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        cr_assert_lt(n, MAX_IDS);
        out[n++] = (int32_t)it->valuedouble;
    }
    return n;
}

/* Line `index` of models.jsonl; false past the end. */
static bool golden_line(int index, struct golden *g)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/golden/models.jsonl", shared_dir());
    char *text = read_file(path, NULL);
    char *line = text;
    for (int i = 0; i < index && line; i++) {
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    if (!line || !*line) {
        free(text);
        return false;
    }
    char *end = strchr(line, '\n');
    if (end)
        *end = 0;
    cJSON *j = cJSON_Parse(line);
    cr_assert_not_null(j, "models.jsonl line %d is not JSON", index + 1);
    memset(g, 0, sizeof(*g));
    snprintf(g->model, sizeof(g->model), "%s", cJSON_GetObjectItem(j, "model")->valuestring);
    g->n_prompt = read_ids(cJSON_GetObjectItem(j, "prompt_ids"), g->prompt);
    g->n_gen = read_ids(cJSON_GetObjectItem(j, "generated_ids"), g->gen);
    g->stable = cJSON_GetObjectItem(j, "stable_prefix_len")->valueint;
    snprintf(g->logits_path, sizeof(g->logits_path), "%s/golden/%s", shared_dir(),
             cJSON_GetObjectItem(j, "last_logits_f32")->valuestring);
    cJSON_Delete(j);
    free(text);
    return true;
}

static struct model *load(const char *name)
{
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/models/%s", shared_dir(), name);
    struct model_load_opts o = model_load_opts_default();
    struct model *m = NULL;
    ifd_error err = {{0}};
    int r = model_load(dir, &o, &m, &err);
    cr_assert_eq(r, 0, "model_load(%s): %s", dir, err.msg);
    return m;
}

static int32_t argmax(const float *x, int n)
{
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

static engine *make_engine(const struct model *m, const int *splits, int n_splits, int n_seq)
{
    struct engine_config c = {.n_seq_max = n_seq, .n_ctx = 512, .n_batch_max = 2 * MAX_IDS, .n_threads = 2};
    engine *e = NULL;
    ifd_error err = {{0}};
    int r = engine_create_cpu(m, splits, n_splits, &c, &e, &err);
    cr_assert_eq(r, 0, "engine_create_cpu: %s", err.msg);
    return e;
}

/* Greedy generation for one sequence: prefill the prompt in one batch, then
 * one token at a time; stops after n or after an eos id. The prompt's last
 * logits are copied to ret_logits when non-NULL. Returns the count. */
static int generate(engine *e, const int32_t *prompt, int n_prompt, int n, int32_t *out, float *ret_logits)
{
    const struct model *m = engine_model(e);
    int vocab = m->cfg.vocab_size;
    int32_t seq[MAX_IDS], pos[MAX_IDS];
    bool want[MAX_IDS];
    for (int i = 0; i < n_prompt; i++) {
        seq[i] = 0;
        pos[i] = i;
        want[i] = i == n_prompt - 1;
    }
    ifd_error err = {{0}};
    struct engine_batch b = {.n_tokens = n_prompt, .tokens = prompt, .seq_ids = seq, .positions = pos,
                             .want_logits = want};
    cr_assert_eq(engine_decode(e, &b, &err), 0, "prefill: %s", err.msg);
    if (ret_logits)
        memcpy(ret_logits, engine_logits(e), sizeof(float) * (size_t)vocab);
    int k = 0;
    while (k < n) {
        int32_t t = argmax(engine_logits(e), vocab);
        out[k++] = t;
        if (model_config_is_eos(&m->cfg, t) || k == n)
            break;
        int32_t p = n_prompt + k - 1;
        bool w = true;
        b = (struct engine_batch){.n_tokens = 1, .tokens = &t, .seq_ids = seq, .positions = &p, .want_logits = &w};
        cr_assert_eq(engine_decode(e, &b, &err), 0, "decode step %d: %s", k, err.msg);
    }
    return k;
}

static int count_lines(void)
{
    char path[1024];
    const char *s = getenv("INFERD_SHARED");
    if (!s)
        return 1; /* the test itself then fails with the message */
    snprintf(path, sizeof(path), "%s/golden/models.jsonl", s);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1;
    int n = 0, c, last = '\n';
    while ((c = fgetc(f)) != EOF) {
        if (c == '\n')
            n++;
        last = c;
    }
    fclose(f);
    return n + (last != '\n');
}

static void free_params(struct criterion_test_params *p)
{
    cr_free(p->params);
}

ParameterizedTestParameters(golden, models)
{
    int n = count_lines();
    int *idx = cr_malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++)
        idx[i] = i;
    return cr_make_param_array(int, idx, (size_t)n, free_params);
}

ParameterizedTest(int *line, golden, models, .timeout = 600)
{
    struct golden g;
    cr_assert(golden_line(*line, &g), "models.jsonl has no line %d", *line + 1);

    struct model *m = load(g.model);
    int vocab = m->cfg.vocab_size;
    engine *e = make_engine(m, NULL, 0, 1);
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    int32_t out[MAX_IDS];
    int n = generate(e, g.prompt, g.n_prompt, g.n_gen, out, logits);

    size_t len;
    float *ref = (float *)read_file(g.logits_path, &len);
    cr_assert_eq(len, sizeof(float) * (size_t)vocab, "%s: %zu bytes, want vocab %d floats", g.logits_path, len, vocab);
    double maxdiff = 0;
    for (int i = 0; i < vocab; i++)
        maxdiff = fmax(maxdiff, fabs((double)logits[i] - ref[i]));
    cr_assert(maxdiff <= 1e-2, "line %d (%s): prompt logits differ by up to %g", *line + 1, g.model, maxdiff);
    cr_assert_eq(argmax(logits, vocab), argmax(ref, vocab), "line %d (%s): argmax of the prompt logits", *line + 1,
                 g.model);

    cr_assert_geq(n, g.stable, "line %d (%s): generated %d, stable prefix %d", *line + 1, g.model, n, g.stable);
    for (int i = 0; i < g.stable; i++)
        cr_assert_eq(out[i], g.gen[i], "line %d (%s): token %d is %d, golden %d", *line + 1, g.model, i, out[i],
                     g.gen[i]);
    free(ref);
    free(logits);
    engine_destroy(e);
    model_destroy(m);
}

/* Every golden line of a model with a tinystories prompt, for the two tests below. */
static void first_two_lines(struct golden *a, struct golden *b)
{
    cr_assert(golden_line(0, a) && golden_line(1, b));
    cr_assert_str_eq(a->model, "tinystories-656k");
    cr_assert_str_eq(b->model, "tinystories-656k");
}

Test(golden, split_stages_same_tokens, .timeout = 600)
{
    struct golden g, g2;
    first_two_lines(&g, &g2);
    struct model *m = load(g.model);
    int32_t one[MAX_IDS], two[MAX_IDS];
    engine *e1 = make_engine(m, NULL, 0, 1);
    static const int splits[] = {0, 1, 2};
    engine *e2 = make_engine(m, splits, 3, 1);
    cr_assert_eq(engine_stage_count(e2), 2);
    int n1 = generate(e1, g.prompt, g.n_prompt, g.n_gen, one, NULL);
    int n2 = generate(e2, g.prompt, g.n_prompt, g.n_gen, two, NULL);
    cr_assert_eq(n1, n2);
    for (int i = 0; i < n1; i++)
        cr_assert_eq(one[i], two[i], "token %d: one stage %d, stages [0,1)+[1,2) %d", i, one[i], two[i]);
    for (int i = 0; i < g.stable; i++)
        cr_assert_eq(two[i], g.gen[i]);
    engine_destroy(e1);
    engine_destroy(e2);
    model_destroy(m);
}

Test(golden, batched_sequences_same_tokens, .timeout = 600)
{
    struct golden ga, gb;
    first_two_lines(&ga, &gb);
    struct model *m = load(ga.model);
    int vocab = m->cfg.vocab_size;
    int32_t alone_a[MAX_IDS], alone_b[MAX_IDS];
    engine *e = make_engine(m, NULL, 0, 2);
    int na = generate(e, ga.prompt, ga.n_prompt, 40, alone_a, NULL);
    ifd_error err = {{0}};
    cr_assert_eq(engine_seq_truncate(e, 0, 0, &err), 0, "%s", err.msg);
    int nb = generate(e, gb.prompt, gb.n_prompt, 40, alone_b, NULL);
    cr_assert_eq(engine_seq_truncate(e, 0, 0, &err), 0, "%s", err.msg);

    /* both prompts in one batch: a in slot 1, b in slot 0 */
    int32_t tok[2 * MAX_IDS], seq[2 * MAX_IDS], pos[2 * MAX_IDS];
    bool want[2 * MAX_IDS];
    int n = 0;
    for (int i = 0; i < ga.n_prompt; i++, n++) {
        tok[n] = ga.prompt[i];
        seq[n] = 1;
        pos[n] = i;
        want[n] = i == ga.n_prompt - 1;
    }
    for (int i = 0; i < gb.n_prompt; i++, n++) {
        tok[n] = gb.prompt[i];
        seq[n] = 0;
        pos[n] = i;
        want[n] = i == gb.n_prompt - 1;
    }
    struct engine_batch b = {.n_tokens = n, .tokens = tok, .seq_ids = seq, .positions = pos, .want_logits = want};
    cr_assert_eq(engine_decode(e, &b, &err), 0, "batched prefill: %s", err.msg);
    int32_t out_a[MAX_IDS], out_b[MAX_IDS];
    int ka = 0, kb = 0;
    bool done_a = false, done_b = false;
    const float *lg = engine_logits(e);
    int ia = 0, ib = 1; /* rows of a and b in the logits */
    while (!done_a || !done_b) {
        n = 0;
        if (!done_a) {
            out_a[ka] = argmax(lg + (size_t)ia * vocab, vocab);
            tok[n] = out_a[ka++];
            done_a = ka == na;
            if (!done_a) {
                seq[n] = 1;
                pos[n] = ga.n_prompt + ka - 1;
                want[n] = true;
                n++;
            }
        }
        if (!done_b) {
            out_b[kb] = argmax(lg + (size_t)ib * vocab, vocab);
            tok[n] = out_b[kb++];
            done_b = kb == nb;
            if (!done_b) {
                seq[n] = 0;
                pos[n] = gb.n_prompt + kb - 1;
                want[n] = true;
                n++;
            }
        }
        if (n == 0)
            break;
        ia = 0;
        ib = done_a ? 0 : 1;
        b = (struct engine_batch){.n_tokens = n, .tokens = tok, .seq_ids = seq, .positions = pos, .want_logits = want};
        cr_assert_eq(engine_decode(e, &b, &err), 0, "batched decode: %s", err.msg);
    }
    for (int i = 0; i < na; i++)
        cr_assert_eq(out_a[i], alone_a[i], "sequence a token %d: batched %d, alone %d", i, out_a[i], alone_a[i]);
    for (int i = 0; i < nb; i++)
        cr_assert_eq(out_b[i], alone_b[i], "sequence b token %d: batched %d, alone %d", i, out_b[i], alone_b[i]);
    for (int i = 0; i < ga.stable && i < na; i++)
        cr_assert_eq(out_a[i], ga.gen[i]);
    for (int i = 0; i < gb.stable && i < nb; i++)
        cr_assert_eq(out_b[i], gb.gen[i]);
    engine_destroy(e);
    model_destroy(m);
}

Test(golden, bad_batches_are_refused_with_a_message)
{
    struct model *m = load("tinystories-656k");
    struct engine_config c = {.n_seq_max = 1, .n_ctx = 8, .n_batch_max = 4, .n_threads = 1};
    engine *e = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(engine_create_cpu(m, NULL, 0, &c, &e, &err), 0, "%s", err.msg);
    int32_t tok[5] = {1, 2, 3, 4, 5}, seq[5] = {0}, pos[5] = {0, 1, 2, 3, 4};
    bool want[5] = {0};
    struct engine_batch b = {.n_tokens = 5, .tokens = tok, .seq_ids = seq, .positions = pos, .want_logits = want};
    cr_assert_lt(engine_decode(e, &b, &err), 0);
    cr_assert(strstr(err.msg, "limit is 4"), "%s", err.msg);
    b.n_tokens = 1;
    tok[0] = 99999;
    cr_assert_lt(engine_decode(e, &b, &err), 0);
    cr_assert(strstr(err.msg, "vocabulary"), "%s", err.msg);
    tok[0] = 1;
    pos[0] = 8;
    cr_assert_lt(engine_decode(e, &b, &err), 0);
    cr_assert(strstr(err.msg, "outside the context"), "%s", err.msg);
    pos[0] = 3; /* the cache holds nothing yet: position 3 cannot follow */
    cr_assert_lt(engine_decode(e, &b, &err), 0);
    cr_assert(strstr(err.msg, "does not follow"), "%s", err.msg);
    seq[0] = 1;
    pos[0] = 0;
    cr_assert_lt(engine_decode(e, &b, &err), 0);
    cr_assert(strstr(err.msg, "sequence 1"), "%s", err.msg);
    /* fill the context, then one more is refused */
    seq[0] = 0;
    for (int p = 0; p < 8; p++) {
        pos[0] = p;
        cr_assert_eq(engine_decode(e, &b, &err), 0, "%s", err.msg);
    }
    pos[0] = 8;
    cr_assert_lt(engine_decode(e, &b, &err), 0);
    engine_destroy(e);
    engine_destroy(NULL);
    model_destroy(m);
}

Test(golden, layer_subset_binding)
{
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/models/qwen2-tiny-random", shared_dir());
    struct model_load_opts o = model_load_opts_default();
    o.layer_first = 1;
    o.layer_last = 2;
    o.bind_embed = false;
    o.bind_head = false;
    struct model *m = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(model_load(dir, &o, &m, &err), 0, "%s", err.msg);
    cr_assert_null(m->layers[0].wq.data);
    cr_assert_not_null(m->layers[1].wq.data);
    cr_assert_not_null(m->layers[1].bq.data);
    cr_assert_null(m->embed.data);
    char **names;
    size_t n;
    cr_assert_eq(model_tensor_names(m, 1, 2, false, false, &names, &n, &err), 0, "%s", err.msg);
    cr_assert_eq(n, 12); /* 9 weights + 3 biases */
    for (size_t i = 0; i < n; i++)
        cr_assert(strncmp(names[i], "model.layers.1.", 15) == 0, "%s", names[i]);
    model_tensor_names_free(names);
    /* an engine cannot be built on a model without embedding and head */
    struct engine_config c = {.n_seq_max = 1, .n_ctx = 8, .n_batch_max = 4, .n_threads = 1};
    engine *e;
    static const int splits[] = {1, 2};
    cr_assert_lt(engine_create_cpu(m, splits, 2, &c, &e, &err), 0);
    model_destroy(m);

    o = model_load_opts_default();
    o.layer_last = 7;
    cr_assert_lt(model_load(dir, &o, &m, &err), 0);
    cr_assert(strstr(err.msg, "[0, 7)"), "%s", err.msg);
}

/* The same golden through every instruction set this CPU has (the product
 * kernels differ per set; attention and the rest are shared). */
Test(golden, every_simd_level, .timeout = 600)
{
    static const char *const simds[] = {"scalar", "avx2", "avx512"};
    struct golden g;
    cr_assert(golden_line(3, &g)); /* tinystories-656k-f16: widening on every path */
    cr_assert_str_eq(g.model, "tinystories-656k-f16");
    struct model *m = load(g.model);
    int vocab = m->cfg.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    size_t len;
    float *ref = (float *)read_file(g.logits_path, &len);
    for (int s = 0; s < 3; s++) {
        if (kern_set_simd(simds[s]) != 0)
            continue;
        engine *e = make_engine(m, NULL, 0, 1);
        int32_t out[MAX_IDS];
        int n = generate(e, g.prompt, g.n_prompt, g.stable, out, logits);
        double maxdiff = 0;
        for (int i = 0; i < vocab; i++)
            maxdiff = fmax(maxdiff, fabs((double)logits[i] - ref[i]));
        cr_assert(maxdiff <= 1e-2, "%s: prompt logits differ by up to %g", simds[s], maxdiff);
        cr_assert_eq(n, g.stable, "%s", simds[s]);
        for (int i = 0; i < g.stable; i++)
            cr_assert_eq(out[i], g.gen[i], "%s: token %d is %d, golden %d", simds[s], i, out[i], g.gen[i]);
        engine_destroy(e);
    }
    free(ref);
    free(logits);
    model_destroy(m);
}
