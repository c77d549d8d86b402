/* test_tokenizer.c - the tokenizer against the Hugging Face `tokenizers`
 * goldens (../shared/golden/tokenizer/<family>.jsonl), plus malformed input,
 * decoding and streaming. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static const char *shared_dir(void)
{
    const char *s = getenv("INFERD_SHARED");
    if (!s || !*s)
        cr_assert_fail("INFERD_SHARED is not set: it must point at the shared models/goldens directory");
    return s;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t k;
    while (buf && (k = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (cap - n - 1 == 0)
            buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (buf)
        buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* The value of string field key in one JSON line, with its true length:
 * cJSON stops at an escaped NUL (the goldens have "\u0000"). Malloc'd. */
static char *json_str(const char *line, const char *key, size_t *ret_len)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\": \"", key);
    const char *p = strstr(line, pat);
    cr_assert_not_null(p, "field %s not found", key);
    p += strlen(pat);
    char *out = malloc(strlen(p) * 2 + 8);
    size_t n = 0;
    while (*p && *p != '"') {
        if (*p != '\\') {
            out[n++] = *p++;
            continue;
        }
        p++;
        char c = *p++;
        switch (c) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'u': {
            unsigned cp = (unsigned)strtoul((char[]){p[0], p[1], p[2], p[3], 0}, NULL, 16);
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p[0] == '\\' && p[1] == 'u') {
                unsigned lo = (unsigned)strtoul((char[]){p[2], p[3], p[4], p[5], 0}, NULL, 16);
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp < 0x80) {
                out[n++] = (char)cp;
            } else if (cp < 0x800) {
                out[n++] = (char)(0xC0 | (cp >> 6));
                out[n++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                out[n++] = (char)(0xE0 | (cp >> 12));
                out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[n++] = (char)(0x80 | (cp & 0x3F));
            } else {
                out[n++] = (char)(0xF0 | (cp >> 18));
                out[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[n++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: out[n++] = c; break;
        }
    }
    out[n] = '\0';
    *ret_len = n;
    return out;
}

static tokenizer *load_dir(const char *rel)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", shared_dir(), rel);
    tokenizer *t = NULL;
    ifd_error err = {0};
    int r = tok_load(path, &t, &err);
    cr_assert_eq(r, 0, "tok_load(%s): %s", path, err.msg);
    return t;
}

static bool ids_equal(const struct tok_ids *v, const cJSON *arr)
{
    if ((size_t)cJSON_GetArraySize(arr) != v->n)
        return false;
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        if (!cJSON_IsNumber(it) || (int32_t)it->valuedouble != v->ids[i++])
            return false;
    }
    return true;
}

static void print_diff(const char *family, int id, const char *what, const struct tok_ids *got, const cJSON *want)
{
    char *w = cJSON_PrintUnformatted(want);
    fprintf(stderr, "[%s] line id %d: %s differs\n  want %s\n  got  [", family, id, what, w);
    for (size_t i = 0; i < got->n; i++)
        fprintf(stderr, "%s%d", i ? "," : "", got->ids[i]);
    fprintf(stderr, "]\n");
    free(w);
}

/* Runs every line of golden/tokenizer/<family>.jsonl; returns the number of
 * mismatching lines (ids_no_special, ids_special or decoded). */
static int run_golden(const char *family, const char *tok_dir)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/golden/tokenizer/%s.jsonl", shared_dir(), family);
    size_t len;
    char *data = slurp(path, &len);
    cr_assert_not_null(data, "cannot read %s", path);
    tokenizer *t = load_dir(tok_dir);
    struct tok_ids a = {0}, b = {0};
    int lines = 0, bad = 0, shown = 0;
    for (char *line = data, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (!*line)
            continue;
        cJSON *j = cJSON_Parse(line);
        cr_assert_not_null(j, "%s: unparsable line", path);
        int id = cJSON_GetObjectItem(j, "id")->valueint;
        size_t txt_len, want_len;
        char *txt = json_str(line, "text", &txt_len);
        char *want_dec = json_str(line, "decoded", &want_len);
        lines++;
        ifd_error err = {0};
        bool ok = true;
        int r1 = tok_encode(t, txt, txt_len, false, &a, &err);
        int r2 = tok_encode(t, txt, txt_len, true, &b, &err);
        if (r1 < 0 || r2 < 0) {
            fprintf(stderr, "[%s] line id %d: encode failed: %s\n", family, id, err.msg);
            ok = false;
        } else {
            if (!ids_equal(&a, cJSON_GetObjectItem(j, "ids_no_special"))) {
                ok = false;
                if (shown < 5)
                    print_diff(family, id, "ids_no_special", &a, cJSON_GetObjectItem(j, "ids_no_special"));
            }
            if (!ids_equal(&b, cJSON_GetObjectItem(j, "ids_special"))) {
                ok = false;
                if (shown < 5)
                    print_diff(family, id, "ids_special", &b, cJSON_GetObjectItem(j, "ids_special"));
            }
        }
        /* decode the golden ids, so a decode bug shows apart from an encode bug */
        const cJSON *want_ids = cJSON_GetObjectItem(j, "ids_no_special");
        size_t n = (size_t)cJSON_GetArraySize(want_ids), k = 0;
        int32_t *ids = malloc((n + 1) * sizeof(int32_t));
        const cJSON *it;
        cJSON_ArrayForEach(it, want_ids) ids[k++] = (int32_t)it->valuedouble;
        char *dec = NULL;
        size_t dl = 0;
        if (tok_decode(t, ids, n, false, &dec, &dl, &err) < 0 || dl != want_len || memcmp(dec, want_dec, dl) != 0) {
            if (ok && shown < 5)
                fprintf(stderr, "[%s] line id %d: decoded differs\n  want \"%s\"\n  got  \"%s\"\n", family, id,
                        want_dec, dec ? dec : err.msg);
            ok = false;
        }
        free(dec);
        free(ids);
        free(txt);
        free(want_dec);
        if (!ok) {
            bad++;
            shown++;
        }
        cJSON_Delete(j);
    }
    fprintf(stderr, "[%s] %d/%d golden lines match\n", family, lines - bad, lines);
    cr_expect_gt(lines, 0, "%s: no lines", path);
    tok_ids_finish(&a);
    tok_ids_finish(&b);
    tok_destroy(t);
    free(data);
    return bad;
}

#define GOLDEN_TEST(name, family, dir)                                                                         \
    Test(tokenizer_golden, name, .timeout = 600)                                                               \
    {                                                                                                          \
        int bad = run_golden(family, dir);                                                                     \
        cr_expect_eq(bad, 0, "%s: %d golden lines mismatch (first diffs above)", family, bad);                 \
    }

GOLDEN_TEST(qwen3, "qwen3", "models/qwen3-tiny-random")
GOLDEN_TEST(qwen2_5, "qwen2.5", "golden/tokenizers/qwen2.5")
GOLDEN_TEST(llama3, "llama3", "models/llama3-tiny-random")
GOLDEN_TEST(llama3_instruct, "llama3-instruct", "golden/tokenizers/llama3-instruct")
GOLDEN_TEST(smollm2, "smollm2", "golden/tokenizers/smollm2")
GOLDEN_TEST(mistral_7b_v0_1, "mistral-7b-v0.1", "golden/tokenizers/mistral-7b-v0.1")
GOLDEN_TEST(tinystories, "tinystories", "golden/tokenizers/tinystories")
