/* fuzz_api.c - the OpenAI request parsers of daemon/api.c, and the response
 * serializer and stop-string scanner that handle client-influenced text.
 *
 * Input: byte 0 picks the entry point, the rest is its input:
 *   0 chat body, 1 completion body (api_request_parse, vocab 2048),
 *   2 /tokenize body, 3 /detokenize body,
 *   4 response text: api_response_json / api_chunk_sse must give JSON whose
 *     content is the text again (valid UTF-8 without NUL),
 *   5 stop strings and pending text (parts split by 0xff bytes) for
 *     api_stop_scan.
 * Checked: a refused body carries an HTTP status >= 400, a message and an
 * envelope that is JSON; an accepted one keeps the documented limits. */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "fuzz.h"

#define VOCAB 2048

static void check_error(const struct api_error *e)
{
    if (e->status < 400 || e->status > 599 || !e->message[0] || !e->type)
        abort();
    char *json = api_error_json(e);
    cJSON *j = cJSON_Parse(json);
    if (!j) {
        fprintf(stderr, "fuzz_api: error envelope is not JSON: %s\n", json ? json : "(null)");
        abort();
    }
    cJSON_Delete(j);
    free(json);
}

static void check_request(const struct api_request *r)
{
    if (r->n_stop < 0 || r->n_stop > API_MAX_STOP || r->top_logprobs < 0 || r->top_logprobs > API_MAX_TOP_LOGPROBS)
        abort();
    for (int i = 0; i < r->n_stop; i++) {
        size_t n = strlen(r->stop[i]);
        if (n == 0 || n > API_MAX_STOP_LEN)
            abort();
    }
    for (size_t i = 0; i < r->n_prompt_ids; i++)
        if (r->prompt_ids[i] < 0 || r->prompt_ids[i] >= VOCAB)
            abort();
    if (r->n < 1 || r->n > API_MAX_N || r->n_logit_bias < 0 || r->n_logit_bias > API_MAX_LOGIT_BIAS ||
        (r->max_tokens == 0 && !r->echo))
        abort();
    for (int i = 0; i < r->n_logit_bias; i++)
        if (r->logit_bias[i].token < 0 || r->logit_bias[i].token >= VOCAB || !(r->logit_bias[i].bias >= -100.0f) ||
            !(r->logit_bias[i].bias <= 100.0f))
            abort();
    if (r->kind == API_KIND_CHAT) {
        if (!cJSON_IsArray(r->messages))
            abort();
        for (const cJSON *m = r->messages->child; m; m = m->next) {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
            if (!cJSON_IsString(role) || (content && !cJSON_IsString(content) && !cJSON_IsNull(content)))
                abort();
            if (cJSON_IsString(content) && !api_utf8_valid(content->valuestring, strlen(content->valuestring), NULL))
                abort();
        }
    } else if (r->prompt && (r->prompt[r->prompt_len] != '\0' || !api_utf8_valid(r->prompt, r->prompt_len, NULL))) {
        abort();
    }
}

static char *name_token(void *ctx, int32_t id, size_t *ret_len)
{
    char *s = malloc(16);
    if (s)
        *ret_len = (size_t)snprintf(s, 16, "t%d", id);
    return s;
}

static void check_serializer(const char *text, size_t len)
{
    if (!api_utf8_valid(text, len, NULL) || memchr(text, 0, len))
        return; /* the scheduler hands it only whole characters */
    struct api_response_meta m = {API_KIND_CHAT, "chatcmpl-fuzz", 1700000000, "fuzz-model"};
    struct api_usage u = {1, 2, 0};
    struct api_logprob lp = {.token = 5, .logprob = -0.25f, .n_top = 1, .top_ids = {5}, .top_logprobs = {-0.25f}};
    struct api_token_namer namer = {name_token, NULL, NULL};
    char *s = api_response_json(&m, text, len, "stop", &u, &lp, 1, true, &namer);
    cJSON *j = cJSON_Parse(s);
    const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c0, "message"), "content");
    if (!cJSON_IsString(content) || strlen(content->valuestring) != len || memcmp(content->valuestring, text, len)) {
        fprintf(stderr, "fuzz_api: response content does not round-trip: %s\n", s ? s : "(null)");
        abort();
    }
    cJSON_Delete(j);
    free(s);

    size_t n = 0;
    m.kind = API_KIND_COMPLETION;
    s = api_chunk_sse(&m, false, text, len, NULL, NULL, 0, false, true, &namer, &n);
    if (!s || n < 8 || strncmp(s, "data: ", 6) || strcmp(s + n - 2, "\n\n"))
        abort();
    j = cJSON_Parse(s + 6);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    content = cJSON_GetObjectItemCaseSensitive(c0, "text");
    if (!cJSON_IsString(content) || strlen(content->valuestring) != len || memcmp(content->valuestring, text, len)) {
        fprintf(stderr, "fuzz_api: chunk text does not round-trip: %s\n", s);
        abort();
    }
    cJSON_Delete(j);
    free(s);
}

static void check_stop_scan(const char *p, size_t len)
{
    char *stops[API_MAX_STOP];
    int n_stops = 0;
    const char *end = p + len;
    for (;;) {
        const char *sep = memchr(p, 0xff, (size_t)(end - p));
        if (!sep || n_stops == API_MAX_STOP)
            break;
        if (sep > p && !memchr(p, 0, (size_t)(sep - p))) /* stops are non-empty C strings */
            stops[n_stops++] = strndup(p, (size_t)(sep - p));
        p = sep + 1;
    }
    size_t plen = (size_t)(end - p), emit = (size_t)-1;
    bool found = api_stop_scan(p, plen, stops, n_stops, &emit);
    if (emit > plen)
        abort();
    if (found) {
        bool starts = false;
        for (int i = 0; i < n_stops; i++)
            starts |= strlen(stops[i]) <= plen - emit && !memcmp(p + emit, stops[i], strlen(stops[i]));
        if (!starts)
            abort();
    }
    /* Nothing emitted may contain a stop string, nor end inside the start of one
     * that the held-back text completes. */
    for (int i = 0; i < n_stops; i++) {
        const char *hit = memmem(p, plen, stops[i], strlen(stops[i]));
        if (hit && (size_t)(hit - p) < emit)
            abort();
    }
    for (int i = 0; i < n_stops; i++)
        free(stops[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    struct api_error e;
    memset(&e, 0, sizeof(e));
    switch (data[0] % 7) {
    case 0:
    case 1: {
        struct api_request r;
        memset(&r, 0, sizeof(r));
        if (api_request_parse(data[0] % 7 ? API_KIND_COMPLETION : API_KIND_CHAT, body, len, VOCAB, &r, &e) < 0) {
            check_error(&e);
            return 0;
        }
        check_request(&r);
        api_request_finish(&r);
        break;
    }
    case 2: {
        char *text = NULL, *model = NULL;
        size_t tlen = 0;
        bool add = false;
        if (api_tokenize_parse(body, len, &text, &tlen, &add, &model, &e) < 0) {
            check_error(&e);
            return 0;
        }
        if (!text || text[tlen] != '\0' || !api_utf8_valid(text, tlen, NULL))
            abort();
        free(text);
        free(model);
        break;
    }
    case 3: {
        int32_t *ids = NULL;
        size_t n = 0;
        char *model = NULL;
        if (api_detokenize_parse(body, len, VOCAB, &ids, &n, &model, &e) < 0) {
            check_error(&e);
            return 0;
        }
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= VOCAB)
                abort();
        free(ids);
        free(model);
        break;
    }
    case 4:
        check_serializer(body, len);
        break;
    case 5:
        check_stop_scan(body, len);
        break;
    default: {
        struct api_embed_request r;
        if (api_embed_parse(body, len, &r, &e) < 0) {
            check_error(&e);
            return 0;
        }
        if (r.n_inputs < 1 || r.n_inputs > API_MAX_EMBED_INPUTS)
            abort();
        for (int i = 0; i < r.n_inputs; i++)
            if (!r.inputs[i].text == !r.inputs[i].ids || (r.inputs[i].ids && r.inputs[i].n_ids == 0) ||
                (r.inputs[i].text && !api_utf8_valid(r.inputs[i].text, r.inputs[i].text_len, NULL)))
                abort();
        api_embed_request_finish(&r);
        break;
    }
    }
    return 0;
}
