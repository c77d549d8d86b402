/* fuzz_util.c - file helpers shared by the fuzz targets (both forms). */
#include "fuzz.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *fuzz_shared_path(const char *rel)
{
    const char *dir = getenv("INFERD_SHARED");
    if (!dir || !*dir) {
        fprintf(stderr, "fuzz: INFERD_SHARED is not set (it names the shared models and goldens dir)\n");
        return NULL;
    }
    size_t n = strlen(dir) + 1 + strlen(rel) + 1;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, rel);
    return p;
}

int fuzz_read_file(const char *path, uint8_t **ret_data, size_t *ret_len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 4096;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                return -ENOMEM;
            }
            buf = nb;
            cap = ncap;
        }
        size_t k = fread(buf + len, 1, cap - len, f);
        len += k;
        if (k == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return -EIO;
    }
    *ret_data = buf;
    *ret_len = len;
    return 0;
}

void fuzz_seed_shared(fuzz_seed_fn add, void *ctx, const char *name, const char *rel, size_t max_len)
{
    char *path = fuzz_shared_path(rel);
    if (!path)
        return;
    uint8_t *data;
    size_t len;
    int r = fuzz_read_file(path, &data, &len);
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
    char rel[160];
    snprintf(rel, sizeof(rel), "golden/tokenizers/%s/chat_template.jinja", family);
    char *path = fuzz_shared_path(rel);
    uint8_t *data;
    size_t len;
    char *out = NULL;
    if (path && fuzz_read_file(path, &data, &len) == 0) {
        out = malloc(len + 1);
        if (out) {
            memcpy(out, data, len);
            out[len] = 0;
        }
        free(data);
        free(path);
        return out;
    }
    free(path);
    snprintf(rel, sizeof(rel), "golden/tokenizers/%s/tokenizer_config.json", family);
    path = fuzz_shared_path(rel);
    if (path && fuzz_read_file(path, &data, &len) == 0) {
        cJSON *root = cJSON_ParseWithLength((const char *)data, len);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
        if (cJSON_IsString(t))
            out = strdup(t->valuestring);
        cJSON_Delete(root);
        free(data);
    }
    free(path);
    return out;
}
