/* api.c - see api.h. */
#include "api.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "base/utf8.h"
#include "text/grammar/grammar.h"

void api_error_set(struct api_error *e, int status, const char *type, const char *param, const char *code,
                   const char *fmt, ...)
{
    if (!e)
        return;
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
}

#define BAD(e, param, ...) \
    (api_error_set((e), 400, "invalid_request_error", (param), NULL, __VA_ARGS__), -EINVAL)

char *api_error_json(const struct api_error *e)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *o = cJSON_AddObjectToObject(root, "error");
    if (!o) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddStringToObject(o, "message", e->message);
    cJSON_AddStringToObject(o, "type", e->type ? e->type : "invalid_request_error");
    if (e->param[0])
        cJSON_AddStringToObject(o, "param", e->param);
    else
        cJSON_AddNullToObject(o, "param");
    if (e->code)
        cJSON_AddStringToObject(o, "code", e->code);
    else
        cJSON_AddNullToObject(o, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

bool api_utf8_valid(const char *str, size_t len, size_t *ret_bad_offset)
{
    size_t bad = utf8_check(str, len);
    if (bad == len)
        return true;
    if (ret_bad_offset)
        *ret_bad_offset = bad;
    return false;
}

bool api_key_matches(const char *const *keys, int n_keys, const char *auth)
{
    if (!auth)
        return false;
    static const char prefix[] = "Bearer ";
    if (strncasecmp(auth, prefix, sizeof(prefix) - 1) != 0)
        return false;
    const char *given = auth + sizeof(prefix) - 1;
    while (*given == ' ')
        given++;
    size_t glen = strlen(given);
    bool match = false;
    /* Compare against every key, every byte, without early exit: the time
     * taken does not reveal which key or how many leading bytes matched. */
    for (int k = 0; k < n_keys; k++) {
        size_t klen = strlen(keys[k]);
        volatile unsigned char diff = (unsigned char)(klen != glen);
        for (size_t i = 0; i < klen; i++) {
            unsigned char g = i < glen ? (unsigned char)given[i] : 0;
            diff |= (unsigned char)(g ^ (unsigned char)keys[k][i]);
        }
        match |= (diff == 0);
    }
    return match;
}

/* ---- field readers: NULL / JSON null means "not given" ---- */

static bool is_absent(const cJSON *v)
{
    return !v || cJSON_IsNull(v);
}

static int get_number(const cJSON *root, const char *name, double lo, double hi, bool lo_open, double *out,
                      struct api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (is_absent(v))
        return 0;
    if (!cJSON_IsNumber(v))
        return BAD(e, name, "'%s' must be a number", name);
    double d = v->valuedouble;
    if (!isfinite(d) || d < lo || d > hi || (lo_open && d == lo))
        return BAD(e, name, "'%s' must be %s %g and <= %g (got %g)", name, lo_open ? ">" : ">=", lo, hi, d);
    *out = d;
    return 1;
}

static int get_int(const cJSON *root, const char *name, double lo, double hi, int64_t *out, struct api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (is_absent(v))
        return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || !isfinite(v->valuedouble))
        return BAD(e, name, "'%s' must be an integer", name);
    double d = v->valuedouble;
    if (d < lo || d > hi)
        return BAD(e, name, "'%s' must be between %.0f and %.0f (got %.0f)", name, lo, hi, d);
    *out = (int64_t)d;
    return 1;
}

static int get_bool(const cJSON *root, const char *name, bool *out, struct api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (is_absent(v))
        return 0;
    if (!cJSON_IsBool(v))
        return BAD(e, name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(v);
    return 1;
}

static int add_stop(struct api_request *r, const cJSON *v, const char *param, struct api_error *e)
{
    if (!cJSON_IsString(v))
        return BAD(e, param, "'stop' must be a string or an array of strings");
    size_t len = strlen(v->valuestring);
    if (len == 0)
        return BAD(e, param, "stop strings must not be empty");
    if (len > API_MAX_STOP_LEN)
        return BAD(e, param, "stop strings are limited to %d bytes", API_MAX_STOP_LEN);
    if (r->n_stop >= API_MAX_STOP)
        return BAD(e, "stop", "at most %d stop strings", API_MAX_STOP);
    if (!(r->stop[r->n_stop] = strdup(v->valuestring)))
        return BAD(e, param, "out of memory");
    r->n_stop++;
    return 0;
}

static int parse_stop(struct api_request *r, const cJSON *root, struct api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (is_absent(v))
        return 0;
    if (cJSON_IsString(v))
        return add_stop(r, v, "stop", e);
    if (!cJSON_IsArray(v))
        return BAD(e, "stop", "'stop' must be a string or an array of strings");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, v) {
        char param[32];
        snprintf(param, sizeof(param), "stop[%d]", i++);
        int rc = add_stop(r, it, param, e);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* content: a string, or an array of {"type":"text","text":...} parts joined. */
static int message_content(const cJSON *content, int idx, bool allow_null, char **ret, struct api_error *e)
{
    char param[64];
    snprintf(param, sizeof(param), "messages[%d].content", idx);
    if (is_absent(content)) {
        if (!allow_null)
            return BAD(e, param, "messages[%d] has no content", idx);
        *ret = strdup("");
        return *ret ? 0 : BAD(e, param, "out of memory");
    }
    if (cJSON_IsString(content)) {
        *ret = strdup(content->valuestring);
        return *ret ? 0 : BAD(e, param, "out of memory");
    }
    if (!cJSON_IsArray(content))
        return BAD(e, param, "content must be a string or an array of text parts");
    int n = cJSON_GetArraySize(content);
    if (n > API_MAX_CONTENT_PARTS)
        return BAD(e, param, "at most %d content parts", API_MAX_CONTENT_PARTS);
    size_t total = 0;
    const cJSON *part;
    int k = 0;
    cJSON_ArrayForEach(part, content) {
        snprintf(param, sizeof(param), "messages[%d].content[%d]", idx, k++);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type))
            return BAD(e, param, "content parts must be objects with a 'type'");
        if (strcmp(type->valuestring, "text") != 0)
            return BAD(e, param, "content part type '%s' is not supported (only 'text')", type->valuestring);
        if (!cJSON_IsString(text))
            return BAD(e, param, "text content parts need a string 'text'");
        total += strlen(text->valuestring);
    }
    char *s = malloc(total + 1);
    if (!s)
        return BAD(e, param, "out of memory");
    size_t off = 0;
    cJSON_ArrayForEach(part, content) {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t l = strlen(t);
        memcpy(s + off, t, l);
        off += l;
    }
    s[off] = '\0';
    *ret = s;
    return 0;
}

static int parse_messages(struct api_request *r, const cJSON *root, struct api_error *e)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (is_absent(msgs))
        return BAD(e, "messages", "'messages' is required");
    if (!cJSON_IsArray(msgs))
        return BAD(e, "messages", "'messages' must be an array");
    int n = cJSON_GetArraySize(msgs);
    if (n == 0)
        return BAD(e, "messages", "'messages' must not be empty");
    if (n > API_MAX_MESSAGES)
        return BAD(e, "messages", "at most %d messages", API_MAX_MESSAGES);
    cJSON *out = cJSON_CreateArray();
    if (!out)
        return BAD(e, "messages", "out of memory");
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        char param[48];
        snprintf(param, sizeof(param), "messages[%d]", i);
        if (!cJSON_IsObject(m)) {
            cJSON_Delete(out);
            return BAD(e, param, "messages[%d] must be an object", i);
        }
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        snprintf(param, sizeof(param), "messages[%d].role", i);
        if (!cJSON_IsString(role)) {
            cJSON_Delete(out);
            return BAD(e, param, "messages[%d].role must be a string", i);
        }
        const char *rs = role->valuestring;
        /* "developer" is OpenAI's newer name for the system role. */
        if (strcmp(rs, "developer") == 0)
            rs = "system";
        if (strcmp(rs, "system") != 0 && strcmp(rs, "user") != 0 && strcmp(rs, "assistant") != 0) {
            cJSON_Delete(out);
            return BAD(e, param, "role '%s' is not supported (system, user, assistant)", role->valuestring);
        }
        char *content = NULL;
        int rc = message_content(cJSON_GetObjectItemCaseSensitive(m, "content"), i,
                                 strcmp(rs, "assistant") == 0, &content, e);
        if (rc < 0) {
            cJSON_Delete(out);
            return rc;
        }
        cJSON *nm = cJSON_CreateObject();
        if (!nm || !cJSON_AddStringToObject(nm, "role", rs) || !cJSON_AddStringToObject(nm, "content", content)) {
            cJSON_Delete(nm);
            free(content);
            cJSON_Delete(out);
            return BAD(e, param, "out of memory");
        }
        free(content);
        cJSON_AddItemToArray(out, nm);
        i++;
    }
    r->messages = out;
    return 0;
}

static int parse_prompt(struct api_request *r, const cJSON *root, int vocab_size, struct api_error *e)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (is_absent(p))
        return BAD(e, "prompt", "'prompt' is required");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(cJSON_GetArrayItem(p, 0)))
        p = cJSON_GetArrayItem(p, 0); /* ["text"]: a batch of one */
    if (cJSON_IsString(p)) {
        if (!(r->prompt = strdup(p->valuestring)))
            return BAD(e, "prompt", "out of memory");
        return 0;
    }
    if (!cJSON_IsArray(p))
        return BAD(e, "prompt", "'prompt' must be a string or an array of token ids");
    if (cJSON_IsArray(cJSON_GetArrayItem(p, 0)) && cJSON_GetArraySize(p) == 1)
        p = cJSON_GetArrayItem(p, 0); /* [[ids]]: a batch of one */
    int n = cJSON_GetArraySize(p);
    if (n == 0)
        return BAD(e, "prompt", "'prompt' must not be empty");
    if (n > API_MAX_PROMPT_IDS)
        return BAD(e, "prompt", "at most %d prompt tokens", API_MAX_PROMPT_IDS);
    int32_t *ids = malloc(sizeof(*ids) * (size_t)n);
    if (!ids)
        return BAD(e, "prompt", "out of memory");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, p) {
        char param[32];
        snprintf(param, sizeof(param), "prompt[%d]", i);
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble)) {
            free(ids);
            if (cJSON_IsString(it))
                return BAD(e, "prompt", "batched prompts (several strings) are not supported; send one");
            return BAD(e, param, "prompt token ids must be integers");
        }
        if (it->valuedouble < 0 || (vocab_size > 0 && it->valuedouble >= vocab_size) || it->valuedouble > INT32_MAX) {
            free(ids);
            if (vocab_size <= 0)
                return BAD(e, param, "token id %.0f is not a token id (negative or over 2^31)", it->valuedouble);
            return BAD(e, param, "token id %.0f is outside the vocabulary (0..%d)", it->valuedouble, vocab_size - 1);
        }
        ids[i++] = (int32_t)it->valuedouble;
    }
    r->prompt_ids = ids;
    r->n_prompt_ids = (size_t)n;
    return 0;
}

static int parse_logprobs(struct api_request *r, const cJSON *root, struct api_error *e)
{
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
    int64_t top = 0;
    int rc;
    if (r->kind == API_KIND_COMPLETION && cJSON_IsNumber(lp)) {
        /* Legacy completions: logprobs is the number of top alternatives. */
        if ((rc = get_int(root, "logprobs", 0, API_MAX_TOP_LOGPROBS, &top, e)) < 0)
            return rc;
        r->logprobs = true;
        r->top_logprobs = (int)top;
        return 0;
    }
    if ((rc = get_bool(root, "logprobs", &r->logprobs, e)) < 0)
        return rc;
    if ((rc = get_int(root, "top_logprobs", 0, API_MAX_TOP_LOGPROBS, &top, e)) < 0)
        return rc;
    if (rc > 0 && !r->logprobs && top > 0)
        return BAD(e, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    r->top_logprobs = (int)top;
    return 0;
}

/* The deepest nesting of arrays and objects in JSON text, counted outside
 * strings; scanning stops once it passes `limit`. Linear and allocation-free,
 * so it runs before cJSON, whose parser recurses once per level. */
static int json_depth_over(const char *s, size_t len, int limit, size_t *ret_offset)
{
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = false;
        } else if (ch == '"') {
            in_str = true;
        } else if (ch == '[' || ch == '{') {
            if (++depth > limit) {
                *ret_offset = i;
                return depth;
            }
        } else if (ch == ']' || ch == '}') {
            depth--;
        }
    }
    return 0;
}

/* 400 naming the limit when the body nests too deep. */
static int check_depth(const char *body, size_t len, struct api_error *e)
{
    size_t at;
    if (json_depth_over(body, len, API_MAX_JSON_DEPTH, &at))
        return BAD(e, NULL, "request body is nested deeper than %d levels of arrays and objects (byte %zu)",
                   API_MAX_JSON_DEPTH, at);
    return 0;
}

/* The optional "model" string of a body; *ret stays NULL when absent. */
static int get_model(const cJSON *root, char **ret, struct api_error *e)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (is_absent(model))
        return 0;
    if (!cJSON_IsString(model))
        return BAD(e, "model", "'model' must be a string");
    if (!(*ret = strdup(model->valuestring)))
        return BAD(e, "model", "out of memory");
    return 0;
}

int api_check_token_ids(const int32_t *ids, size_t n, int vocab_size, const char *param, struct api_error *e)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab_size) {
            char where[64];
            snprintf(where, sizeof(where), "%s[%zu]", param, i);
            return BAD(e, where, "token id %d is outside the vocabulary (0..%d)", ids[i], vocab_size - 1);
        }
    return 0;
}

int api_request_parse(enum api_kind kind, const char *body, size_t len, int vocab_size,
                      struct api_request *ret, struct api_error *e)
{
    size_t bad;
    if (!api_utf8_valid(body, len, &bad))
        return BAD(e, NULL, "request body is not valid UTF-8 (byte %zu)", bad);
    if (check_depth(body, len, e) < 0)
        return -EINVAL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!root) {
        size_t off = end ? (size_t)(end - body) : 0;
        if (cJSON_GetErrorPtr())
            off = (size_t)(cJSON_GetErrorPtr() - body);
        return BAD(e, NULL, "request body is not valid JSON (near byte %zu)", off);
    }
    for (size_t off = end ? (size_t)(end - body) : len; off < len; off++)
        if (body[off] != ' ' && body[off] != '\t' && body[off] != '\r' && body[off] != '\n') {
            cJSON_Delete(root);
            return BAD(e, NULL, "request body is not valid JSON (trailing data at byte %zu)", off);
        }
    struct api_request r;
    memset(&r, 0, sizeof(r));
    r.kind = kind;
    r.max_tokens = -1;
    r.sampling = (struct sampler_params){
        .temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
        .repetition_penalty = 1.0f, .presence_penalty = 0.0f, .frequency_penalty = 0.0f, .seed = 0,
    };
    int rc;
    double d;
    int64_t i64;
    bool seed_given = false;

    if (!cJSON_IsObject(root)) {
        rc = BAD(e, NULL, "request body must be a JSON object");
        goto fail;
    }
    if ((rc = get_model(root, &r.model, e)) < 0)
        goto fail;
    if (kind == API_KIND_CHAT)
        rc = parse_messages(&r, root, e);
    else
        rc = parse_prompt(&r, root, vocab_size, e);
    if (rc < 0)
        goto fail;

    if ((rc = get_int(root, "max_tokens", 1, INT32_MAX, &i64, e)) < 0)
        goto fail;
    if (rc > 0)
        r.max_tokens = (int)i64;
    if (kind == API_KIND_CHAT) {
        if ((rc = get_int(root, "max_completion_tokens", 1, INT32_MAX, &i64, e)) < 0)
            goto fail;
        if (rc > 0)
            r.max_tokens = (int)i64;
    }
    if ((rc = get_number(root, "temperature", 0, 2, false, &d, e)) < 0)
        goto fail;
    if (rc > 0)
        r.sampling.temperature = (float)d;
    if ((rc = get_number(root, "top_p", 0, 1, true, &d, e)) < 0)
        goto fail;
    if (rc > 0)
        r.sampling.top_p = (float)d;
    if ((rc = get_int(root, "top_k", 0, INT32_MAX, &i64, e)) < 0)
        goto fail;
    if (rc > 0)
        r.sampling.top_k = (int)i64;
    if ((rc = get_number(root, "min_p", 0, 1, false, &d, e)) < 0)
        goto fail;
    if (rc > 0)
        r.sampling.min_p = (float)d;
    if ((rc = get_number(root, "presence_penalty", -2, 2, false, &d, e)) < 0)
        goto fail;
    if (rc > 0)
        r.sampling.presence_penalty = (float)d;
    if ((rc = get_number(root, "frequency_penalty", -2, 2, false, &d, e)) < 0)
        goto fail;
    if (rc > 0)
        r.sampling.frequency_penalty = (float)d;
    if ((rc = get_number(root, "repetition_penalty", 0, 10, true, &d, e)) < 0)
        goto fail;
    if (rc > 0)
        r.sampling.repetition_penalty = (float)d;
    /* Seeds are 64-bit in spirit; a double holds integers exactly to 2^53. */
    if ((rc = get_int(root, "seed", -9007199254740992.0, 9007199254740992.0, &i64, e)) < 0)
        goto fail;
    if (rc > 0) {
        r.sampling.seed = (uint64_t)i64;
        seed_given = true;
    }
    if ((rc = get_int(root, "n", 1, 128, &i64, e)) < 0)
        goto fail;
    if (rc > 0 && i64 != 1) {
        rc = BAD(e, "n", "only n = 1 is supported");
        goto fail;
    }
    if ((rc = parse_stop(&r, root, e)) < 0)
        goto fail;
    if ((rc = parse_logprobs(&r, root, e)) < 0)
        goto fail;
    if ((rc = get_bool(root, "stream", &r.stream, e)) < 0)
        goto fail;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (!is_absent(so)) {
        if (!cJSON_IsObject(so)) {
            rc = BAD(e, "stream_options", "'stream_options' must be an object");
            goto fail;
        }
        const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
        if (!is_absent(iu)) {
            if (!cJSON_IsBool(iu)) {
                rc = BAD(e, "stream_options.include_usage", "'include_usage' must be a boolean");
                goto fail;
            }
            r.include_usage = cJSON_IsTrue(iu);
        }
    }
    if ((rc = api_parse_grammar(root, &r.grammar, e)) < 0)
        goto fail;
    if (!seed_given) {
        /* No seed: a different draw each request, as OpenAI does. */
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
            seed = (uint64_t)(uintptr_t)&r ^ (uint64_t)time(NULL);
        r.sampling.seed = seed;
    }
    cJSON_Delete(root);
    *ret = r;
    return 0;
fail:
    cJSON_Delete(root);
    api_request_finish(&r);
    return rc;
}

void api_request_finish(struct api_request *r)
{
    if (!r)
        return;
    free(r->model);
    cJSON_Delete(r->messages);
    free(r->prompt);
    free(r->prompt_ids);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    grammar_destroy(r->grammar);
    memset(r, 0, sizeof(*r));
}

static cJSON *parse_object(const char *body, size_t len, struct api_error *e)
{
    size_t bad;
    if (!api_utf8_valid(body, len, &bad)) {
        (void)BAD(e, NULL, "request body is not valid UTF-8 (byte %zu)", bad);
        return NULL;
    }
    if (check_depth(body, len, e) < 0)
        return NULL;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) {
        (void)BAD(e, NULL, "request body is not valid JSON");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        (void)BAD(e, NULL, "request body must be a JSON object");
        return NULL;
    }
    return root;
}

int api_tokenize_parse(const char *body, size_t len, char **ret_text, bool *ret_add_special, char **ret_model,
                       struct api_error *e)
{
    cJSON *root = parse_object(body, len, e);
    if (!root)
        return -EINVAL;
    const char *name = "content";
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "content");
    if (!c) {
        name = "prompt";
        c = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    }
    int rc;
    bool add_special = true;
    if (!cJSON_IsString(c)) {
        rc = BAD(e, name, "'content' must be a string");
        goto out;
    }
    if ((rc = get_bool(root, "add_special", &add_special, e)) < 0)
        goto out;
    char *model = NULL;
    if ((rc = get_model(root, &model, e)) < 0)
        goto out;
    char *t = strdup(c->valuestring);
    if (!t) {
        free(model);
        rc = BAD(e, name, "out of memory");
        goto out;
    }
    *ret_text = t;
    *ret_model = model;
    *ret_add_special = add_special;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int api_detokenize_parse(const char *body, size_t len, int vocab_size, int32_t **ret_ids, size_t *ret_n,
                         char **ret_model, struct api_error *e)
{
    cJSON *root = parse_object(body, len, e);
    if (!root)
        return -EINVAL;
    int rc;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    if (!cJSON_IsArray(t)) {
        rc = BAD(e, "tokens", "'tokens' must be an array of token ids");
        goto out;
    }
    int n = cJSON_GetArraySize(t);
    if (n > API_MAX_PROMPT_IDS) {
        rc = BAD(e, "tokens", "at most %d tokens", API_MAX_PROMPT_IDS);
        goto out;
    }
    int32_t *ids = malloc(sizeof(*ids) * (size_t)(n > 0 ? n : 1));
    if (!ids) {
        rc = BAD(e, "tokens", "out of memory");
        goto out;
    }
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, t) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 ||
            (vocab_size > 0 && it->valuedouble >= vocab_size) || it->valuedouble > INT32_MAX) {
            char param[32];
            snprintf(param, sizeof(param), "tokens[%d]", i);
            free(ids);
            if (vocab_size > 0)
                rc = BAD(e, param, "token ids must be integers in 0..%d", vocab_size - 1);
            else
                rc = BAD(e, param, "token ids must be integers from 0 to 2^31-1");
            goto out;
        }
        ids[i++] = (int32_t)it->valuedouble;
    }
    char *model = NULL;
    if ((rc = get_model(root, &model, e)) < 0) {
        free(ids);
        goto out;
    }
    *ret_ids = ids;
    *ret_n = (size_t)n;
    *ret_model = model;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* ---- responses ---- */

static void add_meta(cJSON *o, const struct api_response_meta *m, const char *object)
{
    cJSON_AddStringToObject(o, "id", m->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)m->created);
    cJSON_AddStringToObject(o, "model", m->model);
}

static cJSON *usage_json(const struct api_usage *u)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", u->completion_tokens);
    cJSON_AddNumberToObject(o, "total_tokens", u->prompt_tokens + u->completion_tokens);
    return o;
}

/* A string for JSON: cJSON needs NUL-terminated text, and a single byte
 * token may be half a UTF-8 character, which JSON cannot carry: each such
 * run is replaced by U+FFFD in "token" (the exact bytes go in "bytes"). */
static char *json_safe_text(const char *s, size_t len)
{
    char *out = malloc(len * 3 + 1);
    if (out)
        utf8_copy_lossy(out, s, len);
    return out;
}

static cJSON *bytes_json(const char *s, size_t len)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < len; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)s[i]));
    return a;
}

/* Chat format: {"token","logprob","bytes","top_logprobs":[...]}. */
static cJSON *chat_token_json(int32_t id, float lp, const struct api_token_namer *namer, bool with_top)
{
    cJSON *o = cJSON_CreateObject();
    size_t len = 0;
    char *name = namer->name(namer->ctx, id, &len);
    char *safe = name ? json_safe_text(name, len) : NULL;
    cJSON_AddStringToObject(o, "token", safe ? safe : "");
    cJSON_AddNumberToObject(o, "logprob", lp);
    cJSON_AddItemToObject(o, "bytes", bytes_json(name ? name : "", name ? len : 0));
    if (with_top)
        cJSON_AddArrayToObject(o, "top_logprobs");
    free(safe);
    free(name);
    return o;
}

static cJSON *logprobs_json(enum api_kind kind, const struct api_logprob *lp, int n, size_t text_offset0,
                            const struct api_token_namer *namer)
{
    cJSON *root = cJSON_CreateObject();
    if (kind == API_KIND_CHAT) {
        cJSON *content = cJSON_AddArrayToObject(root, "content");
        for (int i = 0; i < n; i++) {
            cJSON *t = chat_token_json(lp[i].token, lp[i].logprob, namer, true);
            cJSON *top = cJSON_GetObjectItemCaseSensitive(t, "top_logprobs");
            for (int k = 0; k < lp[i].n_top; k++)
                cJSON_AddItemToArray(top, chat_token_json(lp[i].top_ids[k], lp[i].top_logprobs[k], namer, false));
            cJSON_AddItemToArray(content, t);
        }
        return root;
    }
    /* Legacy completions format: parallel arrays. */
    cJSON *tokens = cJSON_AddArrayToObject(root, "tokens");
    cJSON *tlp = cJSON_AddArrayToObject(root, "token_logprobs");
    cJSON *top = cJSON_AddArrayToObject(root, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(root, "text_offset");
    size_t off = text_offset0;
    for (int i = 0; i < n; i++) {
        size_t len = 0;
        char *name = namer->name(namer->ctx, lp[i].token, &len);
        char *safe = name ? json_safe_text(name, len) : NULL;
        cJSON_AddItemToArray(tokens, cJSON_CreateString(safe ? safe : ""));
        cJSON_AddItemToArray(tlp, cJSON_CreateNumber(lp[i].logprob));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off += len;
        free(safe);
        free(name);
        cJSON *alts = cJSON_CreateObject();
        for (int k = 0; k < lp[i].n_top; k++) {
            size_t l2 = 0;
            char *n2 = namer->name(namer->ctx, lp[i].top_ids[k], &l2);
            char *s2 = n2 ? json_safe_text(n2, l2) : NULL;
            if (s2 && !cJSON_GetObjectItemCaseSensitive(alts, s2))
                cJSON_AddNumberToObject(alts, s2, lp[i].top_logprobs[k]);
            free(s2);
            free(n2);
        }
        cJSON_AddItemToArray(top, alts);
    }
    return root;
}

/* cJSON strings stop at NUL; generated text never contains one that matters,
 * but be exact about the length we were given. */
static cJSON *text_json(const char *text, size_t len)
{
    char *s = strndup(text ? text : "", text ? len : 0);
    cJSON *j = cJSON_CreateString(s ? s : "");
    free(s);
    return j;
}

char *api_response_json(const struct api_response_meta *m, const char *text, size_t text_len,
                        const char *finish_reason, const struct api_usage *usage,
                        const struct api_logprob *lp, int n_lp, bool want_logprobs,
                        const struct api_token_namer *namer)
{
    cJSON *root = cJSON_CreateObject();
    add_meta(root, m, m->kind == API_KIND_CHAT ? "chat.completion" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (m->kind == API_KIND_CHAT) {
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddItemToObject(msg, "content", text_json(text, text_len));
    } else {
        cJSON_AddItemToObject(c, "text", text_json(text, text_len));
    }
    if (want_logprobs)
        cJSON_AddItemToObject(c, "logprobs", logprobs_json(m->kind, lp, n_lp, 0, namer));
    else
        cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", finish_reason);
    cJSON_AddItemToArray(choices, c);
    cJSON_AddItemToObject(root, "usage", usage_json(usage));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* "data: JSON\n\n", taking ownership of json (NULL in, NULL out). */
static char *sse_frame(char *json, size_t *ret_len)
{
    if (!json)
        return NULL;
    char *out = NULL;
    int n = asprintf(&out, "data: %s\n\n", json);
    free(json);
    if (n < 0)
        return NULL;
    *ret_len = (size_t)n;
    return out;
}

static char *sse_wrap(cJSON *root, size_t *ret_len)
{
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return sse_frame(json, ret_len);
}

char *api_chunk_sse(const struct api_response_meta *m, bool role_chunk, const char *text, size_t text_len,
                    const char *finish_reason, const struct api_logprob *lp, int n_lp, bool want_logprobs,
                    bool include_usage, const struct api_token_namer *namer, size_t *ret_len)
{
    cJSON *root = cJSON_CreateObject();
    add_meta(root, m, m->kind == API_KIND_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (m->kind == API_KIND_CHAT) {
        cJSON *delta = cJSON_AddObjectToObject(c, "delta");
        if (role_chunk) {
            cJSON_AddStringToObject(delta, "role", "assistant");
            cJSON_AddStringToObject(delta, "content", "");
        } else if (text_len > 0 || !finish_reason) {
            cJSON_AddItemToObject(delta, "content", text_json(text, text_len));
        }
    } else {
        cJSON_AddItemToObject(c, "text", text_json(text, text_len));
    }
    if (want_logprobs && n_lp > 0)
        cJSON_AddItemToObject(c, "logprobs", logprobs_json(m->kind, lp, n_lp, 0, namer));
    else
        cJSON_AddNullToObject(c, "logprobs");
    if (finish_reason)
        cJSON_AddStringToObject(c, "finish_reason", finish_reason);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    if (include_usage)
        cJSON_AddNullToObject(root, "usage");
    return sse_wrap(root, ret_len);
}

char *api_usage_sse(const struct api_response_meta *m, const struct api_usage *usage, size_t *ret_len)
{
    cJSON *root = cJSON_CreateObject();
    add_meta(root, m, m->kind == API_KIND_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON_AddArrayToObject(root, "choices");
    cJSON_AddItemToObject(root, "usage", usage_json(usage));
    return sse_wrap(root, ret_len);
}

char *api_error_sse(const struct api_error *e, size_t *ret_len)
{
    return sse_frame(api_error_json(e), ret_len);
}

bool api_stop_scan(const char *pending, size_t len, char *const *stops, int n_stops, size_t *ret_emit)
{
    size_t first = len;
    bool found = false;
    for (int i = 0; i < n_stops; i++) {
        const char *hit = memmem(pending, len, stops[i], strlen(stops[i]));
        if (hit && (size_t)(hit - pending) < first) {
            first = (size_t)(hit - pending);
            found = true;
        }
    }
    if (found) {
        *ret_emit = first;
        return true;
    }
    /* Hold back the longest suffix that is a proper prefix of a stop string. */
    size_t hold = 0;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        size_t max = sl - 1 < len ? sl - 1 : len;
        for (size_t k = max; k > hold; k--)
            if (memcmp(pending + len - k, stops[i], k) == 0) {
                hold = k;
                break;
            }
    }
    *ret_emit = len - hold;
    return false;
}
