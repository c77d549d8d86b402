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

#include <sodium.h>

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

/* ---- U+0000 in JSON strings ----
 *
 * cJSON keeps a string as a NUL-terminated char *, so "\u0000" would cut
 * the string there. Before parsing, each \u0000 escape is rewritten to
 * \uFDDx, a noncharacter that occurs nowhere in the body (the same six
 * bytes: offsets in error messages stay right); api_json_string turns it
 * back into NUL with an explicit length. A body that holds all 32 of
 * U+FDD0..U+FDEF and a \u0000 as well is refused. */

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10 : -1;
}

/* Scans the body's escapes: marks the U+FDD0..U+FDEF it holds (raw or
 * escaped) in *used, and returns how many \u0000 escapes it has. */
static size_t json_scan_nul(const char *s, size_t len, uint32_t *used)
{
    size_t n_nul = 0;
    bool in_str = false;
    *used = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == 0xEF && i + 2 < len && (unsigned char)s[i + 1] == 0xB7 && (unsigned char)s[i + 2] >= 0x90 &&
            (unsigned char)s[i + 2] <= 0xAF)
            *used |= 1u << ((unsigned char)s[i + 2] - 0x90);
        if (!in_str) {
            in_str = c == '"';
            continue;
        }
        if (c == '"') {
            in_str = false;
        } else if (c == '\\' && i + 1 < len) {
            if (s[i + 1] == 'u' && i + 5 < len) {
                int cp = 0;
                for (int k = 2; k < 6 && cp >= 0; k++) {
                    int h = hexval(s[i + (size_t)k]);
                    cp = h < 0 ? -1 : cp * 16 + h;
                }
                if (cp == 0)
                    n_nul++;
                else if (cp >= 0xFDD0 && cp <= 0xFDEF)
                    *used |= 1u << (cp - 0xFDD0);
                i += 5;
            } else {
                i++;
            }
        }
    }
    return n_nul;
}

cJSON *api_json_parse(const char *body, size_t len, const char **ret_end, uint32_t *ret_sentinel)
{
    uint32_t used;
    *ret_sentinel = 0;
    if (json_scan_nul(body, len, &used) == 0)
        return cJSON_ParseWithLengthOpts(body, len, ret_end, false);
    if (used == 0xFFFFFFFFu)
        return NULL;
    uint32_t cp = 0xFDD0;
    while (used & (1u << (cp - 0xFDD0)))
        cp++;
    char *copy = malloc(len + 1);
    if (!copy)
        return NULL;
    memcpy(copy, body, len);
    copy[len] = '\0';
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        if (!in_str) {
            in_str = copy[i] == '"';
            continue;
        }
        if (copy[i] == '"') {
            in_str = false;
        } else if (copy[i] == '\\' && i + 1 < len) {
            if (copy[i + 1] == 'u' && i + 5 < len && memcmp(copy + i + 2, "0000", 4) == 0) {
                static const char hex[] = "0123456789ABCDEF";
                for (int k = 0; k < 4; k++)
                    copy[i + 2 + (size_t)k] = hex[(cp >> (12 - 4 * k)) & 0xF];
            }
            i += copy[i + 1] == 'u' ? 5 : 1;
        }
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(copy, len, &end, false);
    if (ret_end)
        *ret_end = end ? body + (end - copy) : NULL;
    free(copy);
    if (root)
        *ret_sentinel = cp;
    return root;
}

char *api_json_string(const cJSON *v, uint32_t sentinel, size_t *ret_len)
{
    const char *src = v->valuestring;
    size_t len = strlen(src);
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    char enc[4] = {0};
    if (sentinel)
        utf8_encode((int32_t)sentinel, enc);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        if (sentinel && i + 3 <= len && memcmp(src + i, enc, 3) == 0) {
            out[o++] = '\0';
            i += 3;
        } else {
            out[o++] = src[i++];
        }
    }
    out[o] = '\0';
    *ret_len = o;
    return out;
}

size_t api_nul_restore(char *text, size_t len, uint32_t sentinel, size_t *offsets, size_t n_offsets)
{
    if (!sentinel)
        return len;
    char enc[4] = {0};
    utf8_encode((int32_t)sentinel, enc);
    size_t o = 0, k = 0;
    for (size_t i = 0; i <= len;) {
        /* offsets are ascending: each moves with the byte it points at */
        while (k < n_offsets && offsets[k] <= i)
            offsets[k++] = o;
        if (i == len)
            break;
        if (i + 3 <= len && memcmp(text + i, enc, 3) == 0) {
            text[o++] = '\0';
            i += 3;
        } else {
            text[o++] = text[i++];
        }
    }
    return o;
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
    char enc[4] = {0};
    if (r->nul_sentinel && utf8_encode((int32_t)r->nul_sentinel, enc) > 0 && strstr(v->valuestring, enc))
        return BAD(e, param, "stop strings must not contain U+0000");
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
        if (strcmp(rs, "system") != 0 && strcmp(rs, "user") != 0 && strcmp(rs, "assistant") != 0 &&
            strcmp(rs, "tool") != 0) {
            cJSON_Delete(out);
            return BAD(e, param, "role '%s' is not supported (system, user, assistant, tool)", role->valuestring);
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
        if ((rc = tools_message_extras(m, rs, i, nm, e)) < 0) {
            cJSON_Delete(out);
            return rc;
        }
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
        if (!(r->prompt = api_json_string(p, r->nul_sentinel, &r->prompt_len)))
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

/* ---- the known request fields ----
 *
 * Every top-level field of a body is in this table, or the request is a
 * 400 naming it: a field that was accepted and ignored would let a client
 * believe it took effect. Each entry says what inferd does with it:
 *   FIELD_USED:    parsed and implemented (the parsers below read it);
 *   FIELD_NOOP:    accepted, and doing nothing is what it asks of a server
 *                  without the feature it concerns (see each `why`);
 *   FIELD_REFUSED: a 400 naming it whenever it is given (null counts as not
 *                  given, as for every field).
 * `where` is the endpoints the entry is for. */
enum field_status { FIELD_USED, FIELD_NOOP, FIELD_REFUSED };
enum {
    F_CHAT = API_FIELDS_CHAT,
    F_COMPL = API_FIELDS_COMPLETION,
    F_TOKENIZE = API_FIELDS_TOKENIZE,
    F_DETOKENIZE = API_FIELDS_DETOKENIZE,
    F_EMBED = API_FIELDS_EMBEDDINGS,
    F_GEN = F_CHAT | F_COMPL,
};
static const struct api_field {
    const char *name;
    unsigned where;
    enum field_status status;
    const char *why; /* FIELD_NOOP: why nothing is right; FIELD_REFUSED: the message's reason */
} api_fields[] = {
    {"model", F_GEN | F_TOKENIZE | F_DETOKENIZE | F_EMBED, FIELD_USED, NULL},
    {"input", F_EMBED, FIELD_USED, NULL},
    {"encoding_format", F_EMBED, FIELD_USED, NULL},
    {"dimensions", F_EMBED, FIELD_REFUSED, "an embedding has the model's hidden size; it is not shortened"},
    {"messages", F_CHAT, FIELD_USED, NULL},
    {"prompt", F_COMPL | F_TOKENIZE, FIELD_USED, NULL},
    {"content", F_TOKENIZE, FIELD_USED, NULL},
    {"add_special", F_TOKENIZE, FIELD_USED, NULL},
    {"tokens", F_DETOKENIZE, FIELD_USED, NULL},
    {"max_tokens", F_GEN, FIELD_USED, NULL},
    {"max_completion_tokens", F_CHAT, FIELD_USED, NULL},
    {"temperature", F_GEN, FIELD_USED, NULL},
    {"top_p", F_GEN, FIELD_USED, NULL},
    {"top_k", F_GEN, FIELD_USED, NULL},
    {"min_p", F_GEN, FIELD_USED, NULL},
    {"presence_penalty", F_GEN, FIELD_USED, NULL},
    {"frequency_penalty", F_GEN, FIELD_USED, NULL},
    {"repetition_penalty", F_GEN, FIELD_USED, NULL},
    {"repeat_penalty", F_GEN, FIELD_USED, NULL},
    {"logit_bias", F_GEN, FIELD_USED, NULL},
    {"seed", F_GEN, FIELD_USED, NULL},
    {"n", F_GEN, FIELD_USED, NULL},
    {"stop", F_GEN, FIELD_USED, NULL},
    {"logprobs", F_GEN, FIELD_USED, NULL},
    {"top_logprobs", F_CHAT, FIELD_USED, NULL},
    {"stream", F_GEN, FIELD_USED, NULL},
    {"stream_options", F_GEN, FIELD_USED, NULL},
    {"echo", F_COMPL, FIELD_USED, NULL},
    {"best_of", F_COMPL, FIELD_USED, NULL},
    {"store", F_CHAT, FIELD_USED, NULL},      /* false only: nothing is stored */
    {"service_tier", F_GEN, FIELD_USED, NULL}, /* "auto" / "default" only: there is one tier */
    /* Identifiers for the provider's abuse monitoring and cache routing, and
     * tags for stored completions: they ask nothing of the output, and a
     * server that monitors, routes and stores nothing honours them by doing
     * nothing. */
    {"user", F_GEN | F_EMBED, FIELD_NOOP, "an end-user id for abuse monitoring"},
    {"safety_identifier", F_GEN, FIELD_NOOP, "an end-user id for abuse monitoring"},
    {"prompt_cache_key", F_GEN, FIELD_NOOP, "a cache-routing hint; one process serves every request"},
    {"metadata", F_GEN, FIELD_NOOP, "tags for stored completions; nothing is stored"},
    /* Asked of the output, and not done: refused. */
    {"suffix", F_COMPL, FIELD_REFUSED, "text insertion (suffix) is not implemented"},
    {"modalities", F_CHAT, FIELD_REFUSED, "only text output exists"},
    {"audio", F_CHAT, FIELD_REFUSED, "there is no audio output"},
    {"prediction", F_CHAT, FIELD_REFUSED, "predicted outputs are not implemented"},
    {"web_search_options", F_CHAT, FIELD_REFUSED, "there is no web search"},
    {"functions", F_CHAT, FIELD_REFUSED, "the deprecated functions API is not implemented; use tools"},
    {"function_call", F_CHAT, FIELD_REFUSED, "the deprecated functions API is not implemented; use tool_choice"},
    {"verbosity", F_CHAT, FIELD_REFUSED, "output verbosity control is not implemented"},
    /* Structured output (api_grammar.c): at most one of them. */
    {"response_format", F_GEN, FIELD_USED, NULL},
    {"grammar", F_GEN, FIELD_USED, NULL},
    {"json_schema", F_GEN, FIELD_USED, NULL},
    {"guided_json", F_GEN, FIELD_USED, NULL},
    {"guided_regex", F_GEN, FIELD_USED, NULL},
    {"guided_choice", F_GEN, FIELD_USED, NULL},
    {"guided_grammar", F_GEN, FIELD_USED, NULL},
    /* Tools and reasoning (tools.h). */
    {"tools", F_CHAT, FIELD_USED, NULL},
    {"tool_choice", F_CHAT, FIELD_USED, NULL},
    {"parallel_tool_calls", F_CHAT, FIELD_USED, NULL}, /* true only: see tools.c */
    {"chat_template_kwargs", F_CHAT, FIELD_USED, NULL},
    {"reasoning_effort", F_CHAT, FIELD_REFUSED, "reasoning effort is not implemented (chat_template_kwargs "
                                                "such as enable_thinking switch a template's reasoning)"},
};

/* 400 for the first field of the body that this endpoint does not take. */
static int check_fields(const cJSON *root, unsigned where, struct api_error *e)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        const struct api_field *f = NULL;
        for (size_t i = 0; i < sizeof(api_fields) / sizeof(api_fields[0]) && !f; i++)
            if ((api_fields[i].where & where) && strcmp(api_fields[i].name, it->string) == 0)
                f = &api_fields[i];
        if (!f)
            return BAD(e, it->string, "'%.40s' is not supported by inferd (unknown field)", it->string);
        if (f->status == FIELD_REFUSED && !is_absent(it))
            return BAD(e, it->string, "'%s' is not supported by inferd: %s", f->name, f->why);
    }
    return 0;
}

bool api_field_known(const char *name, unsigned endpoint_mask, bool *ret_refused)
{
    for (size_t i = 0; i < sizeof(api_fields) / sizeof(api_fields[0]); i++)
        if ((api_fields[i].where & endpoint_mask) && strcmp(api_fields[i].name, name) == 0) {
            if (ret_refused)
                *ret_refused = api_fields[i].status == FIELD_REFUSED;
            return true;
        }
    return false;
}

/* logit_bias: {"token id": bias in -100..100}, at most API_MAX_LOGIT_BIAS. */
static int parse_logit_bias(struct api_request *r, const cJSON *root, int vocab_size, struct api_error *e)
{
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(root, "logit_bias");
    if (is_absent(lb))
        return 0;
    if (!cJSON_IsObject(lb))
        return BAD(e, "logit_bias", "'logit_bias' must be an object mapping token ids to numbers");
    int n = cJSON_GetArraySize(lb);
    if (n > API_MAX_LOGIT_BIAS)
        return BAD(e, "logit_bias", "'logit_bias' has %d entries; at most %d", n, API_MAX_LOGIT_BIAS);
    if (n == 0)
        return 0;
    if (!(r->logit_bias = calloc((size_t)n, sizeof(*r->logit_bias))))
        return BAD(e, "logit_bias", "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, lb) {
        char param[64];
        snprintf(param, sizeof(param), "logit_bias.%.40s", it->string);
        const char *k = it->string;
        char *end = NULL;
        errno = 0;
        long id = strtol(k, &end, 10);
        if (!k[0] || *end || k[0] == '+' || k[0] == ' ' || errno == ERANGE || id < 0 || id > INT32_MAX)
            return BAD(e, param, "logit_bias keys must be token ids (decimal integers), not '%.40s'", k);
        if (vocab_size > 0 && id >= vocab_size)
            return BAD(e, param, "token id %ld is outside the vocabulary (0..%d)", id, vocab_size - 1);
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < -100 || it->valuedouble > 100)
            return BAD(e, param, "logit_bias values must be numbers from -100 to 100");
        for (int j = 0; j < r->n_logit_bias; j++)
            if (r->logit_bias[j].token == (int32_t)id)
                return BAD(e, param, "token id %ld is given twice in logit_bias", id);
        r->logit_bias[r->n_logit_bias++] = (struct api_logit_bias){(int32_t)id, (float)it->valuedouble};
    }
    return 0;
}

int api_check_logit_bias(const struct api_request *r, int vocab_size, struct api_error *e)
{
    for (int i = 0; i < r->n_logit_bias; i++)
        if (r->logit_bias[i].token >= vocab_size) {
            char param[48];
            snprintf(param, sizeof(param), "logit_bias.%d", r->logit_bias[i].token);
            return BAD(e, param, "token id %d is outside the vocabulary (0..%d)", r->logit_bias[i].token,
                       vocab_size - 1);
        }
    return 0;
}

/* The fields whose values, not only presence, decide whether inferd can
 * honour them. */
static int parse_value_checked(struct api_request *r, const cJSON *root, struct api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "store");
    if (!is_absent(v) && !cJSON_IsBool(v))
        return BAD(e, "store", "'store' must be a boolean");
    if (cJSON_IsTrue(v))
        return BAD(e, "store", "'store': true is not supported by inferd: completions are not stored");
    v = cJSON_GetObjectItemCaseSensitive(root, "service_tier");
    if (!is_absent(v) && (!cJSON_IsString(v) || (strcmp(v->valuestring, "auto") != 0 &&
                                                 strcmp(v->valuestring, "default") != 0)))
        return BAD(e, "service_tier", "'service_tier' must be \"auto\" or \"default\": inferd has one tier");
    int rc;
    if ((rc = get_bool(root, "echo", &r->echo, e)) < 0)
        return rc;
    if (r->max_tokens == 0 && !r->echo)
        return BAD(e, "max_tokens", "'max_tokens' must be at least 1 (0 only with 'echo': the prompt's logprobs)");
    int64_t best_of = 1;
    if ((rc = get_int(root, "best_of", 1, API_MAX_N, &best_of, e)) < 0)
        return rc;
    /* best_of equal to n picks every candidate: the same as not asking. */
    if (rc > 0 && best_of != r->n)
        return BAD(e, "best_of", "'best_of' other than n is not supported by inferd (ranking candidates "
                                 "by likelihood is not implemented)");
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
    uint32_t nul = 0;
    cJSON *root = api_json_parse(body, len, &end, &nul);
    if (!root) {
        size_t off = end ? (size_t)(end - body) : 0;
        if (cJSON_GetErrorPtr() && !end)
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
    r.nul_sentinel = nul;
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
    if ((rc = check_fields(root, kind == API_KIND_CHAT ? F_CHAT : F_COMPL, e)) < 0)
        goto fail;
    if ((rc = get_model(root, &r.model, e)) < 0)
        goto fail;
    if (kind == API_KIND_CHAT && (rc = tools_request_parse(root, &r.tools, e)) < 0)
        goto fail;
    if (kind == API_KIND_CHAT)
        rc = parse_messages(&r, root, e);
    else
        rc = parse_prompt(&r, root, vocab_size, e);
    if (rc < 0)
        goto fail;

    /* 0 asks a completion for its echoed prompt only (checked with echo). */
    if ((rc = get_int(root, "max_tokens", kind == API_KIND_COMPLETION ? 0 : 1, INT32_MAX, &i64, e)) < 0)
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
    /* llama.cpp's spelling of the same penalty. */
    double d2;
    int rc2;
    if ((rc2 = get_number(root, "repeat_penalty", 0, 10, true, &d2, e)) < 0) {
        rc = rc2;
        goto fail;
    }
    if (rc2 > 0 && rc > 0 && d2 != d) {
        rc = BAD(e, "repeat_penalty", "'repeat_penalty' and 'repetition_penalty' are the same penalty; "
                                      "they were given different values (%g, %g)", d2, d);
        goto fail;
    }
    if (rc2 > 0)
        r.sampling.repetition_penalty = (float)d2;
    if ((rc = parse_logit_bias(&r, root, vocab_size, e)) < 0)
        goto fail;
    /* Seeds are 64-bit in spirit; a double holds integers exactly to 2^53. */
    if ((rc = get_int(root, "seed", -9007199254740992.0, 9007199254740992.0, &i64, e)) < 0)
        goto fail;
    /* -1 asks for a random seed, as llama.cpp's server takes it. */
    if (rc > 0 && i64 != -1) {
        r.sampling.seed = (uint64_t)i64;
        seed_given = true;
    }
    r.n = 1;
    if ((rc = get_int(root, "n", 1, API_MAX_N, &i64, e)) < 0)
        goto fail;
    if (rc > 0)
        r.n = (int)i64;
    if ((rc = parse_value_checked(&r, root, e)) < 0)
        goto fail;
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
        /* As OpenAI: options of a stream that is not asked for are an error. */
        if (!r.stream) {
            rc = BAD(e, "stream_options", "'stream_options' is only allowed when 'stream' is true");
            goto fail;
        }
        const cJSON *opt;
        cJSON_ArrayForEach(opt, so) {
            if (strcmp(opt->string, "include_usage") != 0) {
                char param[64];
                snprintf(param, sizeof(param), "stream_options.%.40s", opt->string);
                rc = BAD(e, param, "'%.40s' is not supported by inferd (stream_options takes include_usage)",
                         opt->string);
                goto fail;
            }
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
    tools_request_finish(&r->tools);
    free(r->logit_bias);
    grammar_destroy(r->grammar);
    memset(r, 0, sizeof(*r));
}

static cJSON *parse_object(const char *body, size_t len, uint32_t *ret_nul, struct api_error *e)
{
    size_t bad;
    if (!api_utf8_valid(body, len, &bad)) {
        (void)BAD(e, NULL, "request body is not valid UTF-8 (byte %zu)", bad);
        return NULL;
    }
    if (check_depth(body, len, e) < 0)
        return NULL;
    cJSON *root = api_json_parse(body, len, NULL, ret_nul);
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

int api_tokenize_parse(const char *body, size_t len, char **ret_text, size_t *ret_len, bool *ret_add_special,
                       char **ret_model, struct api_error *e)
{
    uint32_t nul = 0;
    cJSON *root = parse_object(body, len, &nul, e);
    if (!root)
        return -EINVAL;
    if (check_fields(root, F_TOKENIZE, e) < 0) {
        cJSON_Delete(root);
        return -EINVAL;
    }
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
    size_t tlen = 0;
    char *t = api_json_string(c, nul, &tlen);
    if (!t) {
        free(model);
        rc = BAD(e, name, "out of memory");
        goto out;
    }
    *ret_text = t;
    *ret_len = tlen;
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
    uint32_t nul = 0;
    cJSON *root = parse_object(body, len, &nul, e);
    if (!root)
        return -EINVAL;
    int rc;
    if ((rc = check_fields(root, F_DETOKENIZE, e)) < 0)
        goto out;
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
    /* OpenAI's field, there whether or not anything was cached. */
    cJSON *d = cJSON_AddObjectToObject(o, "prompt_tokens_details");
    if (d)
        cJSON_AddNumberToObject(d, "cached_tokens", u->cached_tokens);
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

/* text_offset: in, the offset of the first token's text in the choice's
 * text; out, past the last token's (completions format only). */
static cJSON *logprobs_json(enum api_kind kind, const struct api_logprob *lp, int n, size_t *text_offset,
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
    size_t off = *text_offset;
    for (int i = 0; i < n; i++) {
        size_t len = 0;
        char *name = namer->name(namer->ctx, lp[i].token, &len);
        char *safe = name ? json_safe_text(name, len) : NULL;
        cJSON_AddItemToArray(tokens, cJSON_CreateString(safe ? safe : ""));
        cJSON_AddItemToArray(tlp, lp[i].is_null ? cJSON_CreateNull() : cJSON_CreateNumber(lp[i].logprob));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        if (!namer->not_in_text || !namer->not_in_text(namer->ctx, lp[i].token))
            off += len;
        free(safe);
        free(name);
        if (lp[i].is_null) {
            cJSON_AddItemToArray(top, cJSON_CreateNull());
            continue;
        }
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
    *text_offset = off;
    return root;
}

/* The text of a choice as a JSON string. cJSON strings stop at NUL, and an
 * echoed prompt (or the model) may hold U+0000: the literal is written here,
 * all len bytes, and handed to cJSON as raw JSON. Text that is not valid
 * UTF-8 (it always is: the detokenizer and the request parser make it so)
 * would be made so first, as JSON requires. */
static cJSON *text_json(const char *text, size_t len)
{
    if (!text)
        len = 0;
    char *valid = NULL;
    if (len > 0 && utf8_check(text, len) != len) {
        if (!(valid = malloc(len * 3 + 1)))
            return cJSON_CreateString("");
        len = utf8_copy_lossy(valid, text, len);
        text = valid;
    }
    /* worst case: every byte a six-byte \u00XX escape, plus the quotes */
    char *lit = len < (SIZE_MAX - 3) / 6 ? malloc(len * 6 + 3) : NULL;
    if (!lit) {
        free(valid);
        return cJSON_CreateString("");
    }
    size_t o = 0;
    lit[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '"' || c == '\\') {
            lit[o++] = '\\';
            lit[o++] = (char)c;
        } else if (c < 0x20) {
            /* the short escapes where JSON has them, as cJSON writes them */
            char sh = c == '\b' ? 'b' : c == '\f' ? 'f' : c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : 0;
            if (sh) {
                lit[o++] = '\\';
                lit[o++] = sh;
            } else {
                o += (size_t)snprintf(lit + o, 7, "\\u%04x", c);
            }
        } else {
            lit[o++] = (char)c;
        }
    }
    lit[o++] = '"';
    lit[o] = '\0';
    cJSON *j = cJSON_CreateRaw(lit);
    free(lit);
    free(valid);
    return j;
}

/* message: a chat message made elsewhere (taken over), or NULL for one
 * holding text as its content. */
static char *response_json(const struct api_response_meta *m, cJSON *message, const char *text, size_t text_len,
                           const char *finish_reason, const struct api_usage *usage,
                           const struct api_logprob *lp, int n_lp, bool want_logprobs,
                           const struct api_token_namer *namer)
{
    struct api_choice_out c = {message, text, text_len, finish_reason, lp, n_lp};
    return api_response_json_n(m, &c, 1, usage, want_logprobs, namer);
}

char *api_response_json_n(const struct api_response_meta *m, const struct api_choice_out *ch, int n_choices,
                          const struct api_usage *usage, bool want_logprobs, const struct api_token_namer *namer)
{
    cJSON *root = cJSON_CreateObject();
    add_meta(root, m, m->kind == API_KIND_CHAT ? "chat.completion" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    for (int i = 0; i < n_choices; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", i);
        if (ch[i].message) {
            cJSON_AddItemToObject(c, "message", ch[i].message);
        } else if (m->kind == API_KIND_CHAT) {
            cJSON *msg = cJSON_AddObjectToObject(c, "message");
            cJSON_AddStringToObject(msg, "role", "assistant");
            cJSON_AddItemToObject(msg, "content", text_json(ch[i].text, ch[i].text_len));
        } else {
            cJSON_AddItemToObject(c, "text", text_json(ch[i].text, ch[i].text_len));
        }
        size_t off0 = 0;
        if (want_logprobs)
            cJSON_AddItemToObject(c, "logprobs", logprobs_json(m->kind, ch[i].lp, ch[i].n_lp, &off0, namer));
        else
            cJSON_AddNullToObject(c, "logprobs");
        cJSON_AddStringToObject(c, "finish_reason", ch[i].finish_reason);
        cJSON_AddItemToArray(choices, c);
    }
    cJSON_AddItemToObject(root, "usage", usage_json(usage));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

char *api_response_json(const struct api_response_meta *m, const char *text, size_t text_len,
                        const char *finish_reason, const struct api_usage *usage,
                        const struct api_logprob *lp, int n_lp, bool want_logprobs,
                        const struct api_token_namer *namer)
{
    return response_json(m, NULL, text, text_len, finish_reason, usage, lp, n_lp, want_logprobs, namer);
}

char *api_chat_response_json(const struct api_response_meta *m, cJSON *message, const char *finish_reason,
                             const struct api_usage *usage, const struct api_logprob *lp, int n_lp,
                             bool want_logprobs, const struct api_token_namer *namer)
{
    return response_json(m, message, NULL, 0, finish_reason, usage, lp, n_lp, want_logprobs, namer);
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

/* given_delta: a chat delta made elsewhere (taken over), or NULL for one
 * made of role_chunk and text. */
static char *chunk_sse(const struct api_response_meta *m, struct api_chunk_pos *pos, cJSON *given_delta,
                       bool role_chunk, const char *text, size_t text_len, const char *finish_reason,
                       const struct api_logprob *lp, int n_lp, bool want_logprobs, bool include_usage,
                       const struct api_token_namer *namer, size_t *ret_len)
{
    cJSON *root = cJSON_CreateObject();
    add_meta(root, m, m->kind == API_KIND_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", pos->index);
    if (given_delta) {
        cJSON_AddItemToObject(c, "delta", given_delta);
    } else if (m->kind == API_KIND_CHAT) {
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
        cJSON_AddItemToObject(c, "logprobs", logprobs_json(m->kind, lp, n_lp, &pos->text_offset, namer));
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

char *api_chunk_sse_at(const struct api_response_meta *m, struct api_chunk_pos *pos, bool role_chunk,
                       const char *text, size_t text_len, const char *finish_reason, const struct api_logprob *lp,
                       int n_lp, bool want_logprobs, bool include_usage, const struct api_token_namer *namer,
                       size_t *ret_len)
{
    return chunk_sse(m, pos, NULL, role_chunk, text, text_len, finish_reason, lp, n_lp, want_logprobs,
                     include_usage, namer, ret_len);
}

char *api_chunk_sse(const struct api_response_meta *m, bool role_chunk, const char *text, size_t text_len,
                    const char *finish_reason, const struct api_logprob *lp, int n_lp, bool want_logprobs,
                    bool include_usage, const struct api_token_namer *namer, size_t *ret_len)
{
    struct api_chunk_pos pos = {0, 0};
    return chunk_sse(m, &pos, NULL, role_chunk, text, text_len, finish_reason, lp, n_lp, want_logprobs,
                     include_usage, namer, ret_len);
}

char *api_chat_delta_sse(const struct api_response_meta *m, struct api_chunk_pos *pos, cJSON *delta,
                         const char *finish_reason, const struct api_logprob *lp, int n_lp, bool want_logprobs,
                         bool include_usage, const struct api_token_namer *namer, size_t *ret_len)
{
    struct api_chunk_pos first = {0, 0};
    return chunk_sse(m, pos ? pos : &first, delta, false, NULL, 0, finish_reason, lp, n_lp, want_logprobs,
                     include_usage, namer, ret_len);
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

/* ---- /v1/embeddings ---- */

void api_embed_request_finish(struct api_embed_request *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n_inputs; i++) {
        free(r->inputs[i].text);
        free(r->inputs[i].ids);
    }
    free(r->inputs);
    free(r->model);
    memset(r, 0, sizeof(*r));
}

/* One input: a string (U+0000 included: nul is api_json_parse's stand-in),
 * or an array of token ids. param names it in errors. */
static int parse_embed_input(const cJSON *v, uint32_t nul, const char *param, struct api_embed_input *in,
                             size_t *total_ids, struct api_error *e)
{
    if (cJSON_IsString(v)) {
        if (!v->valuestring[0])
            return BAD(e, param, "an input must not be empty");
        if (!(in->text = api_json_string(v, nul, &in->text_len)))
            return BAD(e, param, "out of memory");
        return 0;
    }
    if (!cJSON_IsArray(v))
        return BAD(e, param, "an input is a string or an array of token ids");
    int n = cJSON_GetArraySize(v);
    if (n == 0)
        return BAD(e, param, "an input must not be empty");
    if ((size_t)n > API_MAX_PROMPT_IDS - *total_ids)
        return BAD(e, param, "more than %d token ids in all", API_MAX_PROMPT_IDS);
    if (!(in->ids = malloc(sizeof(int32_t) * (size_t)n)))
        return BAD(e, param, "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, v) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 ||
            it->valuedouble > INT32_MAX) {
            char where[64];
            snprintf(where, sizeof(where), "%s[%zu]", param, in->n_ids);
            return BAD(e, where, "token ids must be integers from 0 to 2^31-1");
        }
        in->ids[in->n_ids++] = (int32_t)it->valuedouble;
    }
    *total_ids += in->n_ids;
    return 0;
}

int api_embed_parse(const char *body, size_t len, struct api_embed_request *ret, struct api_error *e)
{
    uint32_t nul = 0;
    cJSON *root = parse_object(body, len, &nul, e);
    if (!root)
        return -EINVAL;
    struct api_embed_request r = {0};
    int rc;
    if ((rc = check_fields(root, F_EMBED, e)) < 0)
        goto fail;
    if ((rc = get_model(root, &r.model, e)) < 0)
        goto fail;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "encoding_format");
    if (!is_absent(fmt)) {
        if (!cJSON_IsString(fmt) || (strcmp(fmt->valuestring, "float") != 0 && strcmp(fmt->valuestring, "base64") != 0)) {
            rc = BAD(e, "encoding_format", "'encoding_format' is \"float\" or \"base64\"");
            goto fail;
        }
        r.base64 = fmt->valuestring[0] == 'b';
    }
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(root, "input");
    if (is_absent(input)) {
        rc = BAD(e, "input", "'input' is required");
        goto fail;
    }
    /* One input (a string, or one array of ids), or an array of them. */
    bool many = cJSON_IsArray(input) && cJSON_GetArraySize(input) > 0 &&
                (cJSON_IsString(cJSON_GetArrayItem(input, 0)) || cJSON_IsArray(cJSON_GetArrayItem(input, 0)));
    int n = many ? cJSON_GetArraySize(input) : 1;
    if (n > API_MAX_EMBED_INPUTS) {
        rc = BAD(e, "input", "at most %d inputs per request", API_MAX_EMBED_INPUTS);
        goto fail;
    }
    if (!(r.inputs = calloc((size_t)n, sizeof(*r.inputs)))) {
        rc = BAD(e, "input", "out of memory");
        goto fail;
    }
    size_t total_ids = 0;
    if (!many) {
        r.n_inputs = 1;
        if ((rc = parse_embed_input(input, nul, "input", &r.inputs[0], &total_ids, e)) < 0)
            goto fail;
    } else {
        const cJSON *it;
        cJSON_ArrayForEach(it, input) {
            char param[32];
            snprintf(param, sizeof(param), "input[%d]", r.n_inputs);
            r.n_inputs++;
            if ((rc = parse_embed_input(it, nul, param, &r.inputs[r.n_inputs - 1], &total_ids, e)) < 0)
                goto fail;
        }
    }
    cJSON_Delete(root);
    *ret = r;
    return 0;
fail:
    cJSON_Delete(root);
    api_embed_request_finish(&r);
    return rc;
}

char *api_embed_response_json(const char *model, const float *const *vecs, int n, int dim, bool base64,
                              int prompt_tokens, size_t *ret_len)
{
    /* Written by hand: a cJSON node per number would cost ~100 bytes each,
     * for up to API_MAX_EMBED_INPUTS x hidden numbers. */
    cJSON *name = cJSON_CreateString(model);
    char *quoted = name ? cJSON_PrintUnformatted(name) : NULL;
    cJSON_Delete(name);
    if (!quoted)
        return NULL;
    const size_t per_number = base64 ? 6 : 16; /* "%.9g," at most 16 bytes; base64 of 4 bytes < 6 */
    size_t cap = 256 + strlen(quoted) + (size_t)n * (96 + (size_t)dim * per_number), len = 0;
    char *out = malloc(cap);
    char *b64 = base64 ? malloc(sodium_base64_ENCODED_LEN((size_t)dim * 4, sodium_base64_VARIANT_ORIGINAL)) : NULL;
    if (!out || (base64 && !b64)) {
        free(out);
        free(b64);
        free(quoted);
        return NULL;
    }
#define PUT(...) (len += (size_t)snprintf(out + len, cap - len, __VA_ARGS__))
    PUT("{\"object\":\"list\",\"data\":[");
    for (int i = 0; i < n; i++) {
        PUT("%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":", i ? "," : "", i);
        if (base64) {
            /* little-endian float32, as OpenAI encodes them */
            unsigned char *raw = (unsigned char *)vecs[i];
            sodium_bin2base64(b64, sodium_base64_ENCODED_LEN((size_t)dim * 4, sodium_base64_VARIANT_ORIGINAL), raw,
                              (size_t)dim * 4, sodium_base64_VARIANT_ORIGINAL);
            PUT("\"%s\"}", b64);
        } else {
            PUT("[");
            for (int h = 0; h < dim; h++)
                PUT("%s%.9g", h ? "," : "", (double)vecs[i][h]);
            PUT("]}");
        }
    }
    PUT("],\"model\":%s,\"usage\":{\"prompt_tokens\":%d,\"total_tokens\":%d}}", quoted, prompt_tokens, prompt_tokens);
#undef PUT
    free(b64);
    free(quoted);
    *ret_len = len;
    return out;
}
