/* fuzz_chat_render.c - chat_template_render() of the real templates (the
 * golden families' chat templates, compiled once from $INFERD_SHARED) with an
 * arbitrary context: the messages and kwargs are what a client controls.
 *
 * Input: byte 0 picks the template, the rest is the context as JSON (an
 * input that is not JSON is skipped: cJSON's parser is not under test).
 * A render must succeed or fail with a message (raise_exception, a missing
 * key, a limit), never crash. */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/template/chat_template.h"
#include "fuzz.h"

#define MAX_TEMPLATES 16

static chat_template *templates[MAX_TEMPLATES];
static int n_templates;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ifd_error err;
    if (chat_template_compile(chat_template_chatml, strlen(chat_template_chatml), &templates[n_templates++],
                              &err) < 0) {
        fprintf(stderr, "fuzz_chat_render: ChatML: %s\n", err.msg);
        exit(1);
    }
    for (int i = 0; fuzz_template_families[i] && n_templates < MAX_TEMPLATES; i++) {
        char *src = fuzz_shared_template(fuzz_template_families[i]);
        if (!src) {
            fprintf(stderr, "fuzz_chat_render: no template for %s (is INFERD_SHARED set?)\n",
                    fuzz_template_families[i]);
            exit(1);
        }
        if (chat_template_compile(src, strlen(src), &templates[n_templates], &err) < 0) {
            fprintf(stderr, "fuzz_chat_render: %s: %s\n", fuzz_template_families[i], err.msg);
            exit(1);
        }
        n_templates++;
        free(src);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const chat_template *t = templates[data[0] % n_templates];
    cJSON *context = cJSON_ParseWithLength((const char *)data + 1, size - 1);
    if (!context)
        return 0;
    char *text = NULL;
    size_t len = 0;
    ifd_error err = {{0}};
    if (chat_template_render(t, context, &text, &len, &err) < 0) {
        if (!err.msg[0] || text)
            abort();
    } else {
        if (!text || text[len] != 0)
            abort();
        free(text);
    }
    cJSON_Delete(context);
    return 0;
}

/* Seeds: the conversations of the chat goldens, as the context the golden
 * test builds (messages, add_generation_prompt, special tokens, kwargs). */
struct chat_seeds {
    fuzz_seed_fn add;
    void *ctx;
    int family; /* index into fuzz_template_families */
};

static void add_chat_seed(void *ctx, size_t line, cJSON *o)
{
    const struct chat_seeds *s = ctx;
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToObject(c, "messages", cJSON_DetachItemFromObject(o, "messages"));
    cJSON_AddItemToObject(c, "add_generation_prompt", cJSON_DetachItemFromObject(o, "add_generation_prompt"));
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
    const cJSON *kw = cJSON_GetObjectItemCaseSensitive(o, "kwargs");
    for (const cJSON *e = st ? st->child : NULL; e; e = e->next)
        cJSON_AddItemToObject(c, e->string, cJSON_Duplicate(e, true));
    for (const cJSON *e = kw ? kw->child : NULL; e; e = e->next)
        cJSON_AddItemToObject(c, e->string, cJSON_Duplicate(e, true));
    char *json = cJSON_PrintUnformatted(c);
    if (json) {
        size_t n = strlen(json);
        uint8_t *buf = malloc(n + 1);
        if (buf) {
            /* Byte 0 selects this family's template (index f + 1: ChatML is 0). */
            buf[0] = (uint8_t)(s->family + 1);
            memcpy(buf + 1, json, n);
            char name[96];
            snprintf(name, sizeof(name), "golden-%s-%03zu", fuzz_template_families[s->family], line);
            s->add(s->ctx, name, buf, n + 1);
            free(buf);
        }
        free(json);
    }
    cJSON_Delete(c);
}

void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    for (int f = 0; fuzz_template_families[f]; f++) {
        char rel[160];
        snprintf(rel, sizeof(rel), "golden/chat/%s.jsonl", fuzz_template_families[f]);
        struct chat_seeds s = {add, ctx, f};
        /* A family without a file is no error: llama3 and llama3-instruct
         * share the llama3.x conversations. */
        fuzz_shared_jsonl(rel, add_chat_seed, &s);
    }
}
