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

#include "model/cpu_stage.h"
#include "model/engine.h"
#include "common/golden_models.h"
#include "model/model.h"
#include "base/thread_pool.h"
#include "gpu_test.h"
#include "vk_device.h"
#include "vk_stage.h"

#define N_CTX 512

static const struct engine_config ecfg = {.n_seq_max = 1, .n_ctx = N_CTX, .n_batch_max = GOLDEN_MAX_IDS, .n_threads = 1};

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

ParameterizedTestParameters(gpu_golden, models)
{
    return golden_line_params();
}

ParameterizedTest(int *line, gpu_golden, models, .timeout = 600)
{
    struct golden g;
    cr_assert(golden_line(*line, &g), "models.jsonl has no line %d", *line + 1);
    gpu_test_need_device();
    struct model *m = golden_load_model(g.model);
    struct thread_pool *pool;
    engine *e = vk_engine(m, m->cfg.n_layers, &pool);
    golden_check_line(e, &g, *line);
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
    struct model *m = golden_load_model(g.model);
    cr_assert_eq(m->cfg.n_layers, 2, "%s: the split test expects 2 layers", g.model);
    int32_t cpu[GOLDEN_MAX_IDS], mixed[GOLDEN_MAX_IDS];
    engine *ec = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(engine_create_cpu(m, NULL, 0, &ecfg, &ec, &err), 0, "%s", err.msg);
    int nc = golden_generate(ec, g.prompt, g.n_prompt, g.n_gen, cpu, NULL);
    struct thread_pool *pool;
    engine *em = vk_engine(m, 1, &pool);
    cr_assert_eq(engine_stage_count(em), 2);
    cr_assert_str_eq(engine_stage(em, 0)->ops->name, "vulkan");
    cr_assert_str_eq(engine_stage(em, 1)->ops->name, "cpu");
    int nm = golden_generate(em, g.prompt, g.n_prompt, g.n_gen, mixed, NULL);
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
