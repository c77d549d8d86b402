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
void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    for (int f = 0; fuzz_template_families[f]; f++) {
        char rel[160];
        snprintf(rel, sizeof(rel), "golden/chat/%s.jsonl", fuzz_template_families[f]);
        char *path = fuzz_shared_path(rel);
        uint8_t *data;
        size_t len;
        if (!path || fuzz_read_file(path, &data, &len) < 0) {
            free(path);
            continue; /* llama3 and llama3-instruct share the llama3.x conversations */
        }
        free(path);
        size_t line = 0;
        for (size_t at = 0; at < len; line++) {
            const uint8_t *nl = memchr(data + at, '\n', len - at);
            size_t end = nl ? (size_t)(nl - data) : len;
            cJSON *o = cJSON_ParseWithLength((const char *)data + at, end - at);
            at = end + 1;
            if (!o)
                continue;
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
                    buf[0] = (uint8_t)(f + 1);
                    memcpy(buf + 1, json, n);
                    char name[96];
                    snprintf(name, sizeof(name), "golden-%s-%03zu", fuzz_template_families[f], line);
                    add(ctx, name, buf, n + 1);
                    free(buf);
                }
                free(json);
            }
            cJSON_Delete(c);
            cJSON_Delete(o);
        }
        free(data);
    }
}
