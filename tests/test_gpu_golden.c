/* test_gpu_golden.c - the Vulkan stage end to end against
 * ../shared/golden/models.jsonl.
 *
 * Each golden line (F32, F16, BF16 and MLX 4/8-bit checkpoints) runs through
 * an engine whose only stage is a Vulkan stage over every layer: the last prompt position's logits within 1e-2 (max abs)
 * with the same argmax, and the first stable_prefix_len greedy ids exactly.
 * Then a model split between a Vulkan stage [0, 1) and a CPU stage [1, 2)
 * gives the same tokens as the all-CPU engine. Needs a Vulkan device
 * (lavapipe in CI); without one every test skips and says so. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_stage.h"
#include "engine.h"
#include "model.h"
#include "thread_pool.h"
#include "gpu_test.h"
#include "vk_device.h"
#include "vk_stage.h"

#define MAX_IDS 256
#define N_CTX 512

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

static char *slurp(const char *path, size_t *ret_len)
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

static int ids_of(const cJSON *arr, int32_t *out)
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
    char *text = slurp(path, NULL);
    char *line = text;
    for (int i = 0; i < index && line; i++)
        if ((line = strchr(line, '\n')))
            line++;
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
    g->n_prompt = ids_of(cJSON_GetObjectItem(j, "prompt_ids"), g->prompt);
    g->n_gen = ids_of(cJSON_GetObjectItem(j, "generated_ids"), g->gen);
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
    cr_assert_eq(model_load(dir, &o, &m, &err), 0, "model_load(%s): %s", dir, err.msg);
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

static const struct engine_config ecfg = {.n_seq_max = 1, .n_ctx = N_CTX, .n_batch_max = MAX_IDS, .n_threads = 1};

/* An engine over stages: a Vulkan stage [0, split) and, when split <
 * n_layers, a CPU stage [split, n_layers) on *ret_pool. */
static engine *vk_engine(const struct model *m, int split, struct thread_pool **ret_pool)
{
    struct stage *st[2];
    int n = 0;
    ifd_error err = {{0}};
    struct vk_stage_opts o = {.device = 0};
    cr_assert_eq(vk_stage_create(m, 0, split, 1, N_CTX, &o, &st[n++], &err), 0, "vk_stage_create: %s", err.msg);
    struct thread_pool *pool = thread_pool_create(1);
    cr_assert_not_null(pool);
    if (split < m->cfg.n_layers)
        cr_assert_eq(cpu_stage_create(m, split, m->cfg.n_layers, 1, N_CTX, pool, &st[n++], &err), 0,
                     "cpu_stage_create: %s", err.msg);
    engine *e = NULL;
    cr_assert_eq(engine_create(m, st, n, &ecfg, pool, &e, &err), 0, "engine_create: %s", err.msg);
    *ret_pool = pool;
    return e;
}

/* Greedy: the prompt in one batch, then one token at a time, up to n ids or
 * an eos. The prompt's last logits go to ret_logits when non-NULL. */
static int generate(engine *e, const int32_t *prompt, int n_prompt, int n, int32_t *out, float *ret_logits)
{
    const struct model *m = engine_model(e);
    int vocab = m->cfg.vocab_size;
    int32_t seq[MAX_IDS] = {0}, pos[MAX_IDS];
    bool want[MAX_IDS];
    for (int i = 0; i < n_prompt; i++) {
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

ParameterizedTestParameters(gpu_golden, models)
{
    int n = count_lines();
    int *idx = cr_malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++)
        idx[i] = i;
    return cr_make_param_array(int, idx, (size_t)n, free_params);
}

ParameterizedTest(int *line, gpu_golden, models, .timeout = 600)
{
    struct golden g;
    cr_assert(golden_line(*line, &g), "models.jsonl has no line %d", *line + 1);
    gpu_test_need_device();
    struct model *m = load(g.model);
    int vocab = m->cfg.vocab_size;
    struct thread_pool *pool;
    engine *e = vk_engine(m, m->cfg.n_layers, &pool);
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    int32_t out[MAX_IDS];
    int n = generate(e, g.prompt, g.n_prompt, g.n_gen, out, logits);

    size_t len;
    float *ref = (float *)slurp(g.logits_path, &len);
    cr_assert_eq(len, sizeof(float) * (size_t)vocab, "%s: %zu bytes, want vocab %d floats", g.logits_path, len, vocab);
    double maxdiff = 0;
    for (int i = 0; i < vocab; i++)
        maxdiff = fmax(maxdiff, fabs((double)logits[i] - ref[i]));
    cr_expect(maxdiff <= 1e-2, "line %d (%s): prompt logits differ by up to %g", *line + 1, g.model, maxdiff);
    cr_expect_eq(argmax(logits, vocab), argmax(ref, vocab), "line %d (%s): argmax of the prompt logits", *line + 1,
                 g.model);
    cr_assert_geq(n, g.stable, "line %d (%s): generated %d, stable prefix %d", *line + 1, g.model, n, g.stable);
    for (int i = 0; i < g.stable; i++)
        cr_assert_eq(out[i], g.gen[i], "line %d (%s): token %d is %d, golden %d", *line + 1, g.model, i, out[i],
                     g.gen[i]);
    free(ref);
    free(logits);
    engine_destroy(e);
    thread_pool_destroy(pool);
    model_destroy(m);
}

/* Vulkan [0, 1) + CPU [1, 2) against the all-CPU engine, for each model
 * architecture: every generated token equal. */
static void split_same_tokens(int line)
{
    gpu_test_need_device();
    struct golden g;
    cr_assert(golden_line(line, &g));
    struct model *m = load(g.model);
    cr_assert_eq(m->cfg.n_layers, 2, "%s: the split test expects 2 layers", g.model);
    int32_t cpu[MAX_IDS], mixed[MAX_IDS];
    engine *ec = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(engine_create_cpu(m, NULL, 0, &ecfg, &ec, &err), 0, "%s", err.msg);
    int nc = generate(ec, g.prompt, g.n_prompt, g.n_gen, cpu, NULL);
    struct thread_pool *pool;
    engine *em = vk_engine(m, 1, &pool);
    cr_assert_eq(engine_stage_count(em), 2);
    cr_assert_str_eq(engine_stage(em, 0)->ops->name, "vulkan");
    cr_assert_str_eq(engine_stage(em, 1)->ops->name, "cpu");
    int nm = generate(em, g.prompt, g.n_prompt, g.n_gen, mixed, NULL);
    /* past the stable prefix a near-tie may go either way (see the goldens'
     * README); up to it both must equal the golden and each other */
    cr_assert_geq(nm, g.stable);
    cr_assert_geq(nc, g.stable);
    for (int i = 0; i < g.stable; i++) {
        cr_assert_eq(mixed[i], cpu[i], "%s token %d: vulkan+cpu %d, cpu %d", g.model, i, mixed[i], cpu[i]);
        cr_assert_eq(mixed[i], g.gen[i], "%s token %d: vulkan+cpu %d, golden %d", g.model, i, mixed[i], g.gen[i]);
    }
    engine_destroy(em);
    thread_pool_destroy(pool);
    engine_destroy(ec);
    model_destroy(m);
}

/* Line numbers of models.jsonl by architecture (checked by name). */
static int line_of(const char *model)
{
    struct golden g;
    for (int i = 0; golden_line(i, &g); i++)
        if (strcmp(g.model, model) == 0)
            return i;
    cr_assert_fail("models.jsonl has no line for %s", model);
    return -1;
}

Test(gpu_golden, split_vulkan_cpu_llama, .timeout = 600)
{
    split_same_tokens(line_of("tinystories-656k"));
}

Test(gpu_golden, split_vulkan_cpu_qwen2, .timeout = 600)
{
    split_same_tokens(line_of("qwen2-tiny-random"));
}

Test(gpu_golden, split_vulkan_cpu_qwen3, .timeout = 600)
{
    split_same_tokens(line_of("qwen3-tiny-random"));
}
