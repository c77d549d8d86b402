/* golden_models.c - see golden_models.h. */
#include "common/golden_models.h"
#include "common/test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int golden_read_ids(const cJSON *arr, int32_t *out)
{
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        cr_assert_lt(n, GOLDEN_MAX_IDS);
        out[n++] = (int32_t)it->valuedouble;
    }
    return n;
}

/* Line `index` of models.jsonl; false past the end. */
bool golden_line(int index, struct golden *g)
{
    char *path = tu_must_shared_path("golden/models.jsonl");
    char *text = tu_must_read_file(path, NULL);
    free(path);
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
    g->n_prompt = golden_read_ids(cJSON_GetObjectItem(j, "prompt_ids"), g->prompt);
    g->n_gen = golden_read_ids(cJSON_GetObjectItem(j, "generated_ids"), g->gen);
    g->stable = cJSON_GetObjectItem(j, "stable_prefix_len")->valueint;
    char *logits = tu_must_shared_path("golden/%s", cJSON_GetObjectItem(j, "last_logits_f32")->valuestring);
    snprintf(g->logits_path, sizeof(g->logits_path), "%s", logits);
    free(logits);
    cJSON_Delete(j);
    free(text);
    return true;
}

void golden_find(const char *model, struct golden *g)
{
    for (int i = 0; golden_line(i, g); i++)
        if (strcmp(g->model, model) == 0)
            return;
    cr_assert_fail("no line for %s in golden/models.jsonl", model);
}

struct model *golden_load_model(const char *name)
{
    char *dir = tu_must_shared_path("models/%s", name);
    struct model_load_opts o = model_load_opts_default();
    struct model *m = NULL;
    ifd_error err = {{0}};
    int r = model_load(dir, &o, &m, &err);
    cr_assert_eq(r, 0, "model_load(%s): %s", dir, err.msg);
    free(dir);
    return m;
}

int32_t golden_argmax(const float *x, int n)
{
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

/* Greedy generation for one sequence: prefill the prompt in one batch, then
 * one token at a time; stops after n or after an eos id. The prompt's last
 * logits are copied to ret_logits when non-NULL. Returns the count. */
int golden_generate(engine *e, const int32_t *prompt, int n_prompt, int n, int32_t *out, float *ret_logits)
{
    const struct model *m = engine_model(e);
    int vocab = m->cfg.vocab_size;
    int32_t seq[GOLDEN_MAX_IDS], pos[GOLDEN_MAX_IDS];
    bool want[GOLDEN_MAX_IDS];
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
        int32_t t = golden_argmax(engine_logits(e), vocab);
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

int golden_count_lines(void)
{
    /* Called while Criterion registers the tests, outside any test: with no
     * shared dir it counts one line, so that the test runs and fails saying why. */
    char *path = tu_shared_path("golden/models.jsonl");
    FILE *f = path ? fopen(path, "r") : NULL;
    free(path);
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

struct criterion_test_params golden_line_params(void)
{
    int n = golden_count_lines();
    int *idx = cr_malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++)
        idx[i] = i;
    return cr_make_param_array(int, idx, (size_t)n, free_params);
}


double golden_check_line(engine *e, const struct golden *g, int line)
{
    int vocab = engine_model(e)->cfg.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    int32_t out[GOLDEN_MAX_IDS];
    int n = golden_generate(e, g->prompt, g->n_prompt, g->n_gen, out, logits);

    size_t len;
    float *ref = (float *)tu_must_read_file(g->logits_path, &len);
    cr_assert_eq(len, sizeof(float) * (size_t)vocab, "%s: %zu bytes, want vocab %d floats", g->logits_path, len,
                 vocab);
    double maxdiff = 0;
    for (int i = 0; i < vocab; i++)
        maxdiff = fmax(maxdiff, fabs((double)logits[i] - ref[i]));
    cr_assert(maxdiff <= 1e-2, "line %d (%s): prompt logits differ by up to %g", line + 1, g->model, maxdiff);
    cr_assert_eq(golden_argmax(logits, vocab), golden_argmax(ref, vocab), "line %d (%s): argmax of the prompt logits",
                 line + 1, g->model);

    cr_assert_geq(n, g->stable, "line %d (%s): generated %d, stable prefix %d", line + 1, g->model, n, g->stable);
    for (int i = 0; i < g->stable; i++)
        cr_assert_eq(out[i], g->gen[i], "line %d (%s): token %d is %d, golden %d", line + 1, g->model, i, out[i],
                     g->gen[i]);
    free(ref);
    free(logits);
    return maxdiff;
}
