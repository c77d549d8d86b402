/* fuzz_util.c - file helpers shared by the fuzz targets (both forms). */
#include "fuzz.h"
#include "common/test_util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fuzz_shared_jsonl(const char *rel, void (*fn)(void *ctx, size_t line, struct cJSON *o), void *ctx)
{
    char *path = tu_shared_path("%s", rel);
    if (!path)
        return -ENOENT;
    char *data;
    size_t len;
    int r = tu_read_file(path, &data, &len);
    free(path);
    if (r < 0)
        return r;
    size_t line = 0;
    for (size_t at = 0; at < len; line++) {
        const char *nl = memchr(data + at, '\n', len - at);
        size_t end = nl ? (size_t)(nl - data) : len;
        cJSON *o = cJSON_ParseWithLength(data + at, end - at);
        at = end + 1;
        if (o)
            fn(ctx, line, o);
        cJSON_Delete(o);
    }
    free(data);
    return 0;
}

void fuzz_seed_shared(fuzz_seed_fn add, void *ctx, const char *name, const char *rel, size_t max_len)
{
    char *path = tu_shared_path("%s", rel);
    if (!path)
        return;
    char *data;
    size_t len;
    int r = tu_read_file(path, &data, &len);
    if (r < 0) {
        fprintf(stderr, "fuzz: seed %s: cannot read '%s': %s\n", name, path, strerror(-r));
    } else {
        if (len <= max_len)
            add(ctx, name, data, len);
        free(data);
    }
    free(path);
}

const char *const fuzz_template_families[] = {
    "qwen3", "qwen2.5", "llama3", "llama3-instruct", "llama3.1", "mistral-7b-v0.1", "mistral-v0.3",
    "smollm2", NULL,
};

char *fuzz_shared_template(const char *family)
{
    char *path = tu_shared_path("golden/tokenizers/%s/chat_template.jinja", family);
    char *data;
    size_t len;
    char *out = NULL;
    if (path && tu_read_file(path, &data, &len) == 0) {
        free(path);
        return data;
    }
    free(path);
    path = tu_shared_path("golden/tokenizers/%s/tokenizer_config.json", family);
    if (path && tu_read_file(path, &data, &len) == 0) {
        cJSON *root = cJSON_ParseWithLength(data, len);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
        if (cJSON_IsString(t))
            out = strdup(t->valuestring);
        cJSON_Delete(root);
        free(data);
    }
    free(path);
    return out;
}
