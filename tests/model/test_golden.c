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
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cpu.h"
#include "model/engine.h"
#include "common/golden_models.h"
#include "common/test_util.h"
#include "model/kernels.h"
#include "model/model.h"
#include "model/quant.h"

static engine *make_engine(const struct model *m, const int *splits, int n_splits, int n_seq)
{
    struct engine_config c = {.n_seq_max = n_seq, .n_ctx = 512, .n_batch_max = 2 * GOLDEN_MAX_IDS, .n_threads = 2};
    engine *e = NULL;
    ifd_error err = {{0}};
    int r = engine_create_cpu(m, splits, n_splits, &c, &e, &err);
    cr_assert_eq(r, 0, "engine_create_cpu: %s", err.msg);
    return e;
}

ParameterizedTestParameters(golden, models)
{
    return golden_line_params();
}

ParameterizedTest(int *line, golden, models, .timeout = 600)
{
    struct golden g;
    cr_assert(golden_line(*line, &g), "models.jsonl has no line %d", *line + 1);

    struct model *m = golden_load_model(g.model);
    engine *e = make_engine(m, NULL, 0, 1);
    golden_check_line(e, &g, *line);
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
    struct model *m = golden_load_model(g.model);
    int32_t one[GOLDEN_MAX_IDS], two[GOLDEN_MAX_IDS];
    engine *e1 = make_engine(m, NULL, 0, 1);
    static const int splits[] = {0, 1, 2};
    engine *e2 = make_engine(m, splits, 3, 1);
    cr_assert_eq(engine_stage_count(e2), 2);
    int n1 = golden_generate(e1, g.prompt, g.n_prompt, g.n_gen, one, NULL);
    int n2 = golden_generate(e2, g.prompt, g.n_prompt, g.n_gen, two, NULL);
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
    struct model *m = golden_load_model(ga.model);
    int vocab = m->cfg.vocab_size;
    int32_t alone_a[GOLDEN_MAX_IDS], alone_b[GOLDEN_MAX_IDS];
    engine *e = make_engine(m, NULL, 0, 2);
    int na = golden_generate(e, ga.prompt, ga.n_prompt, 40, alone_a, NULL);
    ifd_error err = {{0}};
    cr_assert_eq(engine_seq_truncate(e, 0, 0, &err), 0, "%s", err.msg);
    int nb = golden_generate(e, gb.prompt, gb.n_prompt, 40, alone_b, NULL);
    cr_assert_eq(engine_seq_truncate(e, 0, 0, &err), 0, "%s", err.msg);

    /* both prompts in one batch: a in slot 1, b in slot 0 */
    int32_t tok[2 * GOLDEN_MAX_IDS], seq[2 * GOLDEN_MAX_IDS], pos[2 * GOLDEN_MAX_IDS];
    bool want[2 * GOLDEN_MAX_IDS];
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
    int32_t out_a[GOLDEN_MAX_IDS], out_b[GOLDEN_MAX_IDS];
    int ka = 0, kb = 0;
    bool done_a = false, done_b = false;
    const float *lg = engine_logits(e);
    int ia = 0, ib = 1; /* rows of a and b in the logits */
    while (!done_a || !done_b) {
        n = 0;
        if (!done_a) {
            out_a[ka] = golden_argmax(lg + (size_t)ia * vocab, vocab);
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
            out_b[kb] = golden_argmax(lg + (size_t)ib * vocab, vocab);
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
    struct model *m = golden_load_model("tinystories-656k");
    struct engine_config c = {.n_seq_max = 1, .n_ctx = 8, .n_batch_max = 4, .n_threads = 1};
    engine *e = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(engine_create_cpu(m, NULL, 0, &c, &e, &err), 0, "%s", err.msg);
    int32_t tok[5] = {1, 2, 3, 4, 5}, seq[5] = {0}, pos[5] = {0, 1, 2, 3, 4};
    bool want[5] = {0};
    struct engine_batch b = {.n_tokens = 5, .tokens = tok, .seq_ids = seq, .positions = pos, .want_logits = want};
    cr_assert_lt(engine_decode(e, &b, &err), 0);
    cr_assert(strstr(err.msg, "limit of 4"), "%s", err.msg);
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
    cr_assert(strstr(err.msg, "does not continue"), "%s", err.msg);
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
    char *dir = tu_must_shared_path("models/qwen2-tiny-random");
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
    free(dir);
}

/* The same goldens through every kernel family this CPU has: scalar, AVX2,
 * AVX2 + AVX-VNNI, AVX-512 (a level the CPU lacks is skipped, and said so):
 * the F16 line (the dense products) and both MLX lines (the quantized ones)
 * twice: with the default thresholds (at AVX2 and AVX2-VNNI the prompt
 * through the int16 panel kernel, decode through the row kernel; at AVX-512
 * the f32 kernel, the golden prompts being shorter than the int8 pair's
 * threshold) and with every product, decode too, through the level's prefill
 * kernel (the int16 panel kernel, the int8 pair at AVX-512 VNNI), by the
 * rules of every golden line. */
Test(golden, every_simd_level, .timeout = 600)
{
    static const enum cpu_simd levels[] = {CPU_SIMD_SCALAR, CPU_SIMD_AVX2, CPU_SIMD_AVX2_VNNI, CPU_SIMD_AVX512};
    static const char *const models[] = {"tinystories-656k-f16", "tinystories-656k-mlx-8bit",
                                         "tinystories-656k-mlx-4bit"};
    const enum cpu_simd best = cpu_simd_best();
    int n_levels = 0;
    for (size_t li = 0; li < sizeof(levels) / sizeof(levels[0]); li++) {
        const char *lv = cpu_simd_name(levels[li]);
        if (!cpu_simd_supported(levels[li])) {
            /* A note, not cr_log_warn: Criterion 2.4 exits 1 when a test warns,
             * and an AVX2-only CI machine must pass. */
            fprintf(stderr, "skipped: %s: not on this CPU, its kernels are not tested here\n", lv);
            continue;
        }
        cr_assert_eq(kern_set_simd(lv), 0);
        n_levels++;
        for (int line = 0; line < golden_count_lines(); line++) {
            struct golden g;
            cr_assert(golden_line(line, &g));
            bool wanted = false;
            for (size_t mi = 0; mi < sizeof(models) / sizeof(models[0]); mi++)
                wanted = wanted || strcmp(g.model, models[mi]) == 0;
            if (!wanted)
                continue;
            struct model *m = golden_load_model(g.model);
            const bool quantized = strstr(g.model, "-mlx-") != NULL;
            for (int prefill_kernel = 0; prefill_kernel <= (int)quantized; prefill_kernel++) {
                quant_act_set_min_tokens(prefill_kernel ? 1 : 0);
                engine *e = make_engine(m, NULL, 0, 1);
                const double maxdiff = golden_check_line(e, &g, line);
                fprintf(stderr, "%s%s: line %d (%s): logits within %.5f\n", lv,
                        prefill_kernel ? " (prefill kernels throughout)" : "", line + 1, g.model, maxdiff);
                engine_destroy(e);
            }
            model_destroy(m);
        }
    }
    quant_act_set_min_tokens(0);
    cr_assert_eq(kern_set_simd(cpu_simd_name(best)), 0);
    cr_assert_geq(n_levels, 1);
}
