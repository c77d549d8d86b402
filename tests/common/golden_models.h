/* golden_models.h - reading ../shared/golden/models.jsonl and running its
 * greedy continuations, shared by the engine's golden suites (CPU, Vulkan). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "model/engine.h"
#include "model/model.h"

#define GOLDEN_MAX_IDS 256

/* One line of models.jsonl. */
struct golden {
    char model[128];
    int32_t prompt[GOLDEN_MAX_IDS];
    int n_prompt;
    int32_t gen[GOLDEN_MAX_IDS];
    int n_gen;
    int stable;
    char logits_path[512];
};

int golden_read_ids(const cJSON *arr, int32_t *out);
/* Line `index` of models.jsonl; false past the end. */
bool golden_line(int index, struct golden *g);
/* The first line of models.jsonl for `model`; the test fails without one. */
void golden_find(const char *model, struct golden *g);
/* $INFERD_SHARED/models/NAME, every layer, embedding and head. */
struct model *golden_load_model(const char *name);
int32_t golden_argmax(const float *x, int n);
/* Greedy generation for one sequence (slot 0): prefill the prompt in one
 * batch, then one token at a time; stops after n or after an eos id. The
 * prompt's last logits are copied to ret_logits when non-NULL. Returns the count. */
int golden_generate(engine *e, const int32_t *prompt, int n_prompt, int n, int32_t *out, float *ret_logits);
/* Lines of models.jsonl. */
int golden_count_lines(void);
/* The line indices 0..golden_count_lines()-1, as the parameters of a
 * ParameterizedTest(int *line, ...). */
struct criterion_test_params golden_line_params(void);
/* Runs golden line `line` (g) greedily through e and checks it as
 * ../shared/README.md says: prompt logits within 1e-2 (max abs) with the same
 * argmax, then the first stable_prefix_len ids exactly. */
double golden_check_line(engine *e, const struct golden *g, int line);
