/* fuzz_tokenizer_json.c - tok_load_memory() on a mutated tokenizer.json.
 *
 * Input: tokenizer.json bytes, optionally followed by a NUL byte and
 * tokenizer_config.json bytes. A refused file must carry a message; an
 * accepted tokenizer must encode and decode a few fixed texts without
 * failing on valid UTF-8, and every id it produces must name a token. */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "text/tokenizer/tokenizer.h"

static const char *const texts[] = {
    "Hello world! It's 2024.",
    "  leading spaces\tand\ttabs\r\n",
    "caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80",
    "<|im_start|>user\nhi<|im_end|><s></s><unk>",
    "",
};

static void exercise(const tokenizer *t)
{
    struct tok_ids ids = {0};
    ifd_error err = {{0}};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        for (int special = 0; special < 2; special++) {
            /* A loaded tokenizer may still be unable to represent some
             * text (a vocabulary without byte tokens): that is an error
             * with a message, not a crash. */
            if (tok_encode(t, texts[i], strlen(texts[i]), special, &ids, &err) < 0) {
                if (!err.msg[0])
                    abort();
                continue;
            }
            for (size_t k = 0; k < ids.n; k++)
                if (!tok_id_to_token(t, ids.ids[k]))
                    abort();
            char *text = NULL;
            size_t len = 0;
            if (tok_decode(t, ids.ids, ids.n, special, &text, &len, &err) == 0)
                free(text);
            else if (!err.msg[0])
                abort();
        }
    }
    tok_ids_finish(&ids);
    /* Decoding ids the tokenizer never produced: in range and out of it. */
    int32_t odd[] = {0, 1, tok_vocab_size(t) - 1, tok_vocab_size(t), -1, 0x7fffffff};
    char *text = NULL;
    size_t len = 0;
    if (tok_decode(t, odd, sizeof(odd) / sizeof(odd[0]), false, &text, &len, &err) == 0)
        free(text);
    else if (!err.msg[0])
        abort();
    fuzz_use((uintptr_t)tok_chat_template(t) + (uintptr_t)tok_special_token(t, "eos_token"));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t json_len = nul ? (size_t)(nul - data) : size;
    const char *config = nul ? (const char *)nul + 1 : NULL;
    size_t config_len = nul ? size - json_len - 1 : 0;

    tokenizer *t = NULL;
    ifd_error err = {{0}};
    if (tok_load_memory((const char *)data, json_len, config, config_len, "fuzz", &t, &err) < 0) {
        if (!err.msg[0] || t)
            abort();
        return 0;
    }
    exercise(t);
    tok_destroy(t);
    return 0;
}

/* ---- seeds ---- */

static void add_with_config(fuzz_seed_fn add, void *ctx, const char *name, const char *json, size_t json_len,
                            const char *config, size_t config_len)
{
    size_t n = json_len + (config ? 1 + config_len : 0);
    char *buf = malloc(n ? n : 1);
    if (!buf)
        return;
    memcpy(buf, json, json_len);
    if (config) {
        buf[json_len] = 0;
        memcpy(buf + json_len + 1, config, config_len);
    }
    add(ctx, name, buf, n);
    free(buf);
}

/* A small copy of a big byte-level tokenizer.json: the first `keep` vocab
 * entries and the merges among them, everything else (normalizer, regex
 * pre-tokenizer, post-processor, decoder, added tokens) as it is. The whole
 * qwen3 file is 11 MB, far too big for a mutation fuzzer to move through. */
static char *shrink_tokenizer(const char *data, size_t len, int keep)
{
    cJSON *root = cJSON_ParseWithLength(data, len);
    cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON *nv = cJSON_CreateObject();
    for (cJSON *e = vocab->child; e; e = e->next)
        if (cJSON_IsNumber(e) && e->valuedouble < keep)
            cJSON_AddNumberToObject(nv, e->string, e->valuedouble);
    cJSON *nm = cJSON_CreateArray();
    for (cJSON *m = merges->child; m; m = m->next) {
        char a[256], b[256], ab[512];
        if (cJSON_IsString(m)) {
            const char *sp = strchr(m->valuestring, ' ');
            if (!sp || (size_t)(sp - m->valuestring) >= sizeof(a) || strlen(sp + 1) >= sizeof(b))
                continue;
            snprintf(a, sizeof(a), "%.*s", (int)(sp - m->valuestring), m->valuestring);
            snprintf(b, sizeof(b), "%s", sp + 1);
        } else if (cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) && cJSON_IsString(m->child->next)) {
            if (strlen(m->child->valuestring) >= sizeof(a) || strlen(m->child->next->valuestring) >= sizeof(b))
                continue;
            snprintf(a, sizeof(a), "%s", m->child->valuestring);
            snprintf(b, sizeof(b), "%s", m->child->next->valuestring);
        } else {
            continue;
        }
        snprintf(ab, sizeof(ab), "%s%s", a, b);
        if (cJSON_GetObjectItemCaseSensitive(nv, a) && cJSON_GetObjectItemCaseSensitive(nv, b) &&
            cJSON_GetObjectItemCaseSensitive(nv, ab))
            cJSON_AddItemToArray(nm, cJSON_Duplicate(m, true));
    }
    cJSON_ReplaceItemInObjectCaseSensitive(model, "vocab", nv);
    cJSON_ReplaceItemInObjectCaseSensitive(model, "merges", nm);
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

static void add_shrunk(fuzz_seed_fn add, void *ctx, const char *name, const char *rel_json, const char *rel_config)
{
    char *pj = tu_shared_path("%s", rel_json), *pc = tu_shared_path("%s", rel_config);
    char *json = NULL, *config = NULL;
    size_t json_len = 0, config_len = 0;
    if (pj && pc && tu_read_file(pj, &json, &json_len) == 0) {
        char *small = shrink_tokenizer(json, json_len, 400);
        bool have_config = tu_read_file(pc, &config, &config_len) == 0;
        if (small) {
            add_with_config(add, ctx, name, small, strlen(small), have_config ? config : NULL, config_len);
            free(small);
        }
    } else {
        fprintf(stderr, "fuzz_tokenizer_json: no seed %s\n", name);
    }
    free(json);
    free(config);
    free(pj);
    free(pc);
}

void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    /* tinystories is small enough to use whole (86 KB). */
    char *pj = tu_shared_path("models/tinystories-656k/tokenizer.json");
    char *pc = tu_shared_path("models/tinystories-656k/tokenizer_config.json");
    char *json = NULL, *config = NULL;
    size_t json_len = 0, config_len = 0;
    if (pj && pc && tu_read_file(pj, &json, &json_len) == 0 && tu_read_file(pc, &config, &config_len) == 0) {
        add_with_config(add, ctx, "shared-tinystories", json, json_len, NULL, 0);
        add_with_config(add, ctx, "shared-tinystories-config", json, json_len, config, config_len);
    }
    free(json);
    free(config);
    free(pj);
    free(pc);
    add_shrunk(add, ctx, "shrunk-qwen3", "models/qwen3-tiny-random/tokenizer.json",
               "models/qwen3-tiny-random/tokenizer_config.json");
    add_shrunk(add, ctx, "shrunk-llama3", "models/llama3-tiny-random/tokenizer.json",
               "models/llama3-tiny-random/tokenizer_config.json");
}
