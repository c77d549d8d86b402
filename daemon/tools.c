/* tools.c - see tools.h. */
#include "tools.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "api.h"

#define BAD(e, param, ...) \
    (api_error_set((e), 400, "invalid_request_error", (param), NULL, __VA_ARGS__), -EINVAL)

static const char THINK_OPEN[] = "<think>";
static const char THINK_CLOSE[] = "</think>";
static const char HERMES_OPEN[] = "<tool_call>";
static const char HERMES_CLOSE[] = "</tool_call>";
static const char LLAMA_TAG[] = "<|python_tag|>";
static const char MISTRAL_TAG[] = "[TOOL_CALLS]";

/* Nesting allowed inside a call's arguments string (the body's own depth
 * check cannot see into a string). */
#define ARGS_MAX_DEPTH 64

/* ---- request side ---- */

static bool absent(const cJSON *v)
{
    return !v || cJSON_IsNull(v);
}

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > TOOLS_MAX_NAME)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return false;
    return true;
}

/* Bytes of v as compact JSON, or SIZE_MAX when it cannot be printed. */
static size_t json_size(const cJSON *v)
{
    char *s = cJSON_PrintUnformatted(v);
    size_t n = s ? strlen(s) : SIZE_MAX;
    free(s);
    return n;
}

static int json_depth(const cJSON *v, int limit)
{
    if (limit < 0 || !(cJSON_IsArray(v) || cJSON_IsObject(v)))
        return 0;
    int deepest = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, v) {
        int d = json_depth(c, limit - 1);
        if (d > deepest)
            deepest = d;
        if (deepest >= limit)
            break;
    }
    return deepest + 1;
}

static int parse_tool(const cJSON *tool, int i, const cJSON *seen, struct api_error *e)
{
    char p[64];
    snprintf(p, sizeof(p), "tools[%d]", i);
    if (!cJSON_IsObject(tool))
        return BAD(e, p, "tools[%d] must be an object", i);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(tool, "type");
    snprintf(p, sizeof(p), "tools[%d].type", i);
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0)
        return BAD(e, p, "tools[%d].type must be \"function\"", i);
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tool, "function");
    snprintf(p, sizeof(p), "tools[%d].function", i);
    if (!cJSON_IsObject(fn))
        return BAD(e, p, "tools[%d].function must be an object", i);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
    snprintf(p, sizeof(p), "tools[%d].function.name", i);
    if (!cJSON_IsString(name) || !name_ok(name->valuestring))
        return BAD(e, p, "function names must be 1 to %d characters of a-z, A-Z, 0-9, '_' and '-'", TOOLS_MAX_NAME);
    const cJSON *other;
    cJSON_ArrayForEach(other, seen) {
        const cJSON *on = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(other, "function"), "name");
        if (strcmp(on->valuestring, name->valuestring) == 0)
            return BAD(e, p, "function '%s' is defined twice", name->valuestring);
    }
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(fn, "description");
    snprintf(p, sizeof(p), "tools[%d].function.description", i);
    if (!absent(desc) && (!cJSON_IsString(desc) || strlen(desc->valuestring) > TOOLS_MAX_DESCRIPTION))
        return BAD(e, p, "descriptions must be strings of at most %d bytes", TOOLS_MAX_DESCRIPTION);
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
    snprintf(p, sizeof(p), "tools[%d].function.parameters", i);
    if (!absent(params) && !cJSON_IsObject(params))
        return BAD(e, p, "parameters must be a JSON Schema object");
    if (!absent(params) && json_size(params) > TOOLS_MAX_SCHEMA)
        return BAD(e, p, "parameters schemas are limited to %d bytes", TOOLS_MAX_SCHEMA);
    const cJSON *strict = cJSON_GetObjectItemCaseSensitive(fn, "strict");
    snprintf(p, sizeof(p), "tools[%d].function.strict", i);
    if (!absent(strict) && !cJSON_IsBool(strict))
        return BAD(e, p, "strict must be a boolean");
    return 0;
}

static int parse_tools(const cJSON *root, struct tools_request *t, struct api_error *e)
{
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    if (absent(tools))
        return 0;
    if (!cJSON_IsArray(tools))
        return BAD(e, "tools", "'tools' must be an array of function tools");
    int n = cJSON_GetArraySize(tools);
    if (n > TOOLS_MAX)
        return BAD(e, "tools", "at most %d tools", TOOLS_MAX);
    if (n == 0)
        return 0; /* as vLLM: an empty list is no tools */
    cJSON *out = cJSON_CreateArray();
    if (!out)
        return BAD(e, "tools", "out of memory");
    int i = 0;
    const cJSON *tool;
    cJSON_ArrayForEach(tool, tools) {
        int rc = parse_tool(tool, i++, out, e);
        cJSON *copy = rc < 0 ? NULL : cJSON_Duplicate(tool, true);
        if (rc < 0 || !copy) {
            cJSON_Delete(out);
            return rc < 0 ? rc : BAD(e, "tools", "out of memory");
        }
        cJSON_AddItemToArray(out, copy);
    }
    t->tools = out;
    return 0;
}

static bool has_tool(const cJSON *tools, const char *name)
{
    const cJSON *tool;
    cJSON_ArrayForEach(tool, tools) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tool, "function"), "name");
        if (strcmp(n->valuestring, name) == 0)
            return true;
    }
    return false;
}

static int parse_choice(const cJSON *root, struct tools_request *t, struct api_error *e)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
    if (absent(c))
        return 0;
    if (cJSON_IsString(c)) {
        if (strcmp(c->valuestring, "auto") == 0)
            t->choice = TOOLS_CHOICE_AUTO;
        else if (strcmp(c->valuestring, "none") == 0)
            t->choice = TOOLS_CHOICE_NONE;
        else if (strcmp(c->valuestring, "required") == 0)
            t->choice = TOOLS_CHOICE_REQUIRED;
        else
            return BAD(e, "tool_choice", "tool_choice must be \"auto\", \"none\", \"required\" or "
                                         "{\"type\":\"function\",\"function\":{\"name\":...}}");
        if (t->choice == TOOLS_CHOICE_REQUIRED && !t->tools)
            return BAD(e, "tool_choice", "tool_choice \"required\" needs 'tools'");
        return 0;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(c, "type");
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
    if (!cJSON_IsObject(c) || !cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0 ||
        !cJSON_IsString(name))
        return BAD(e, "tool_choice", "tool_choice must be \"auto\", \"none\", \"required\" or "
                                     "{\"type\":\"function\",\"function\":{\"name\":...}}");
    if (!t->tools || !has_tool(t->tools, name->valuestring))
        return BAD(e, "tool_choice", "tool_choice names function '%.64s', which is not in 'tools'", name->valuestring);
    if (!(t->choice_name = strdup(name->valuestring)))
        return BAD(e, "tool_choice", "out of memory");
    t->choice = TOOLS_CHOICE_NAMED;
    return 0;
}

/* Globals the template gets from us, or the model's special tokens: a
 * kwarg must not replace them. */
static const char *const reserved_globals[] = {
    "messages", "tools", "tool_choice", "documents", "add_generation_prompt", "continue_final_message",
    "bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token",
    "raise_exception", "strftime_now", "range", "namespace", NULL,
};

static int parse_kwargs(const cJSON *root, struct tools_request *t, struct api_error *e)
{
    const cJSON *kw = cJSON_GetObjectItemCaseSensitive(root, "chat_template_kwargs");
    if (absent(kw))
        return 0;
    if (!cJSON_IsObject(kw))
        return BAD(e, "chat_template_kwargs", "'chat_template_kwargs' must be an object");
    if (cJSON_GetArraySize(kw) > TOOLS_MAX_KWARGS)
        return BAD(e, "chat_template_kwargs", "at most %d chat_template_kwargs", TOOLS_MAX_KWARGS);
    if (json_size(kw) > TOOLS_MAX_KWARGS_BYTES)
        return BAD(e, "chat_template_kwargs", "chat_template_kwargs are limited to %d bytes", TOOLS_MAX_KWARGS_BYTES);
    const cJSON *it;
    cJSON_ArrayForEach(it, kw) {
        const char *k = it->string;
        bool ok = k[0] && strlen(k) <= 64 && (isalpha((unsigned char)k[0]) || k[0] == '_');
        for (const char *q = k; ok && *q; q++)
            ok = isalnum((unsigned char)*q) || *q == '_';
        if (!ok)
            return BAD(e, "chat_template_kwargs", "chat_template_kwargs key '%.64s' is not a template identifier", k);
        for (int i = 0; reserved_globals[i]; i++)
            if (strcmp(k, reserved_globals[i]) == 0)
                return BAD(e, "chat_template_kwargs",
                           "chat_template_kwargs cannot set '%s': the server sets it (use the request's own field)",
                           k);
        /* Same keys twice: the template would see only one. */
        for (const cJSON *q = kw->child; q != it; q = q->next)
            if (strcmp(q->string, k) == 0)
                return BAD(e, "chat_template_kwargs", "chat_template_kwargs key '%.64s' is given twice", k);
    }
    if (!(t->kwargs = cJSON_Duplicate(kw, true)))
        return BAD(e, "chat_template_kwargs", "out of memory");
    return 0;
}

int tools_request_parse(const cJSON *root, struct tools_request *ret, struct api_error *e)
{
    struct tools_request t;
    memset(&t, 0, sizeof(t));
    int rc;
    if ((rc = parse_tools(root, &t, e)) < 0 || (rc = parse_choice(root, &t, e)) < 0 ||
        (rc = parse_kwargs(root, &t, e)) < 0)
        goto fail;
    const cJSON *ptc = cJSON_GetObjectItemCaseSensitive(root, "parallel_tool_calls");
    if (!absent(ptc) && !cJSON_IsBool(ptc)) {
        rc = BAD(e, "parallel_tool_calls", "'parallel_tool_calls' must be a boolean");
        goto fail;
    }
    /* One call at most is enforced by the grammar of tool_choice required
     * (a named function is one call anyway); with "auto" the reply may be
     * text or calls, which no grammar here holds to one call. */
    if (cJSON_IsFalse(ptc) && t.tools) {
        if (t.choice == TOOLS_CHOICE_AUTO) {
            rc = BAD(e, "parallel_tool_calls", "parallel_tool_calls false is supported with tool_choice \"required\" "
                     "or a named function, not with \"auto\"");
            goto fail;
        }
        t.one_call = true;
    }
    *ret = t;
    return 0;
fail:
    tools_request_finish(&t);
    return rc;
}

void tools_request_finish(struct tools_request *t)
{
    if (!t)
        return;
    cJSON_Delete(t->tools);
    cJSON_Delete(t->kwargs);
    free(t->choice_name);
    memset(t, 0, sizeof(*t));
}

/* One assistant tool call, normalized for templates: arguments as an object. */
static int call_normalize(const cJSON *tc, int idx, int j, cJSON **ret, struct api_error *e)
{
    char p[96];
    snprintf(p, sizeof(p), "messages[%d].tool_calls[%d]", idx, j);
    if (!cJSON_IsObject(tc))
        return BAD(e, p, "tool calls must be objects");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(tc, "id");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(tc, "type");
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
    snprintf(p, sizeof(p), "messages[%d].tool_calls[%d].id", idx, j);
    if (!cJSON_IsString(id) || strlen(id->valuestring) > TOOLS_MAX_CALL_ID)
        return BAD(e, p, "tool calls need a string 'id' of at most %d bytes", TOOLS_MAX_CALL_ID);
    snprintf(p, sizeof(p), "messages[%d].tool_calls[%d].type", idx, j);
    if (!absent(type) && (!cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0))
        return BAD(e, p, "tool call type must be \"function\"");
    snprintf(p, sizeof(p), "messages[%d].tool_calls[%d].function", idx, j);
    if (!cJSON_IsObject(fn))
        return BAD(e, p, "tool calls need a 'function' object");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
    snprintf(p, sizeof(p), "messages[%d].tool_calls[%d].function.name", idx, j);
    if (!cJSON_IsString(name) || !name_ok(name->valuestring))
        return BAD(e, p, "function names must be 1 to %d characters of a-z, A-Z, 0-9, '_' and '-'", TOOLS_MAX_NAME);
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
    snprintf(p, sizeof(p), "messages[%d].tool_calls[%d].function.arguments", idx, j);
    cJSON *parsed = NULL;
    if (cJSON_IsString(args)) {
        size_t n = strlen(args->valuestring);
        if (n > TOOLS_MAX_ARGUMENTS)
            return BAD(e, p, "arguments are limited to %d bytes", TOOLS_MAX_ARGUMENTS);
        parsed = n == 0 ? cJSON_CreateObject() : cJSON_ParseWithLength(args->valuestring, n);
    } else if (cJSON_IsObject(args)) {
        parsed = cJSON_Duplicate(args, true); /* some clients send the object itself */
    } else if (absent(args)) {
        parsed = cJSON_CreateObject();
    }
    if (!cJSON_IsObject(parsed) || json_depth(parsed, ARGS_MAX_DEPTH) > ARGS_MAX_DEPTH) {
        cJSON_Delete(parsed);
        return BAD(e, p, "arguments must be a JSON object (as a string) nested at most %d deep", ARGS_MAX_DEPTH);
    }
    cJSON *o = cJSON_CreateObject(), *f = cJSON_CreateObject();
    if (!o || !f || !cJSON_AddStringToObject(o, "id", id->valuestring) ||
        !cJSON_AddStringToObject(o, "type", "function") || !cJSON_AddStringToObject(f, "name", name->valuestring)) {
        cJSON_Delete(o);
        cJSON_Delete(f);
        cJSON_Delete(parsed);
        return BAD(e, p, "out of memory");
    }
    cJSON_AddItemToObject(f, "arguments", parsed);
    cJSON_AddItemToObject(o, "function", f);
    *ret = o;
    return 0;
}

int tools_message_extras(const cJSON *m, const char *rs, int idx, cJSON *nm, struct api_error *e)
{
    char p[64];
    if (strcmp(rs, "tool") == 0) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "tool_call_id");
        snprintf(p, sizeof(p), "messages[%d].tool_call_id", idx);
        if (!cJSON_IsString(id) || strlen(id->valuestring) > TOOLS_MAX_CALL_ID)
            return BAD(e, p, "tool messages need a string 'tool_call_id' of at most %d bytes", TOOLS_MAX_CALL_ID);
        if (!cJSON_AddStringToObject(nm, "tool_call_id", id->valuestring))
            return BAD(e, p, "out of memory");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
        snprintf(p, sizeof(p), "messages[%d].name", idx);
        if (!absent(name) && (!cJSON_IsString(name) || !name_ok(name->valuestring)))
            return BAD(e, p, "name must be a function name (1 to %d of a-z, A-Z, 0-9, '_', '-')", TOOLS_MAX_NAME);
        if (cJSON_IsString(name) && !cJSON_AddStringToObject(nm, "name", name->valuestring))
            return BAD(e, p, "out of memory");
        return 0;
    }
    /* An earlier reply's reasoning, given back: Qwen3's template reads it. */
    const cJSON *rc_text = cJSON_GetObjectItemCaseSensitive(m, "reasoning_content");
    if (!absent(rc_text)) {
        snprintf(p, sizeof(p), "messages[%d].reasoning_content", idx);
        if (strcmp(rs, "assistant") != 0 || !cJSON_IsString(rc_text))
            return BAD(e, p, "reasoning_content must be a string, on assistant messages");
        if (!cJSON_AddStringToObject(nm, "reasoning_content", rc_text->valuestring))
            return BAD(e, p, "out of memory");
    }
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
    if (absent(calls))
        return 0;
    snprintf(p, sizeof(p), "messages[%d].tool_calls", idx);
    if (strcmp(rs, "assistant") != 0)
        return BAD(e, p, "only assistant messages carry tool_calls");
    if (!cJSON_IsArray(calls))
        return BAD(e, p, "tool_calls must be an array");
    if (cJSON_GetArraySize(calls) > TOOLS_MAX_CALLS)
        return BAD(e, p, "at most %d tool_calls in a message", TOOLS_MAX_CALLS);
    if (cJSON_GetArraySize(calls) == 0)
        return 0;
    cJSON *out = cJSON_AddArrayToObject(nm, "tool_calls");
    if (!out)
        return BAD(e, p, "out of memory");
    int j = 0;
    const cJSON *tc;
    cJSON_ArrayForEach(tc, calls) {
        cJSON *o;
        int rc = call_normalize(tc, idx, j++, &o, e);
        if (rc < 0)
            return rc;
        cJSON_AddItemToArray(out, o);
    }
    return 0;
}

/* ---- templates ---- */

void tools_template_detect(const char *src, enum tools_reasoning reasoning, struct tools_template_info *ret)
{
    struct tools_template_info ti = {TOOLS_FMT_GENERIC, false, false};
    if (src) {
        ti.renders_tools = strstr(src, "tools") != NULL;
        if (strstr(src, MISTRAL_TAG))
            ti.format = TOOLS_FMT_MISTRAL;
        else if (strstr(src, HERMES_OPEN))
            ti.format = TOOLS_FMT_HERMES;
        else if (strstr(src, LLAMA_TAG) || (strstr(src, "<|start_header_id|>") && strstr(src, "\"parameters\"")))
            ti.format = TOOLS_FMT_LLAMA3;
        /* A template that reads tools in a format we cannot tell: it still
         * gets them; replies are read in the generic <tool_call> form. */
    }
    if (reasoning == TOOLS_REASONING_THINK)
        ti.reasoning = true;
    else if (reasoning == TOOLS_REASONING_AUTO)
        ti.reasoning = src && strstr(src, THINK_OPEN) && strstr(src, THINK_CLOSE);
    *ret = ti;
}

/* The generic tool block (docs/http-api.md): for templates that know no
 * tools, so that the model is told of them rather than never hearing. */
static char *generic_block(const cJSON *tools)
{
    static const char head[] =
        "# Tools\n\nYou may call one or more functions to help with the request. The functions, as JSON "
        "Schema, are within <tools></tools>:\n<tools>";
    static const char tail[] =
        "\n</tools>\n\nTo call a function, reply with one block per call:\n<tool_call>\n"
        "{\"name\": <function-name>, \"arguments\": <arguments-json-object>}\n</tool_call>";
    size_t cap = sizeof(head) + sizeof(tail), len = 0;
    char **parts = calloc((size_t)cJSON_GetArraySize(tools) + 1, sizeof(char *));
    if (!parts)
        return NULL;
    int n = 0;
    const cJSON *t;
    bool ok = true;
    cJSON_ArrayForEach(t, tools) {
        if (!(parts[n] = cJSON_PrintUnformatted(t))) {
            ok = false;
            break;
        }
        cap += strlen(parts[n++]) + 1;
    }
    char *s = ok ? malloc(cap) : NULL;
    if (s) {
        len = (size_t)sprintf(s, "%s", head);
        for (int i = 0; i < n; i++)
            len += (size_t)sprintf(s + len, "\n%s", parts[i]);
        sprintf(s + len, "%s", tail);
    }
    for (int i = 0; i < n; i++)
        free(parts[i]);
    free(parts);
    return s;
}

/* messages with the generic block in the system message (prepended as a
 * new one when there is none). */
static cJSON *messages_with_block(const cJSON *messages, const cJSON *tools)
{
    char *block = generic_block(tools);
    cJSON *copy = block ? cJSON_Duplicate(messages, true) : NULL;
    if (!copy) {
        free(block);
        return NULL;
    }
    cJSON *first = cJSON_GetArrayItem(copy, 0);
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(first, "role");
    cJSON *content = cJSON_GetObjectItemCaseSensitive(first, "content");
    bool ok;
    if (cJSON_IsString(role) && strcmp(role->valuestring, "system") == 0 && cJSON_IsString(content)) {
        char *joined = NULL;
        ok = asprintf(&joined, "%s\n\n%s", content->valuestring, block) >= 0;
        ok = ok && cJSON_ReplaceItemInObjectCaseSensitive(first, "content", cJSON_CreateString(joined));
        free(joined);
    } else {
        cJSON *sys = cJSON_CreateObject();
        ok = sys && cJSON_AddStringToObject(sys, "role", "system") && cJSON_AddStringToObject(sys, "content", block);
        ok = ok && cJSON_InsertItemInArray(copy, 0, sys);
        if (!ok)
            cJSON_Delete(sys);
    }
    free(block);
    if (!ok) {
        cJSON_Delete(copy);
        return NULL;
    }
    return copy;
}

int tools_context_fill(cJSON *ctx, const cJSON *messages, const struct tools_request *t,
                       const struct tools_template_info *ti, const char ***ret_untrusted)
{
    bool with_tools = t->tools && t->choice != TOOLS_CHOICE_NONE;
    int n_kw = t->kwargs ? cJSON_GetArraySize(t->kwargs) : 0;
    const char **untrusted = calloc((size_t)n_kw + 3, sizeof(char *));
    if (!untrusted)
        return -ENOMEM;
    int n = 0;
    untrusted[n++] = "messages";
    bool ok;
    if (with_tools && !ti->renders_tools) {
        cJSON *copy = messages_with_block(messages, t->tools);
        ok = copy && cJSON_AddItemToObject(ctx, "messages", copy);
        if (copy && !ok)
            cJSON_Delete(copy);
    } else {
        ok = cJSON_AddItemReferenceToObject(ctx, "messages", (cJSON *)messages);
    }
    if (ok && with_tools && ti->renders_tools) {
        ok = cJSON_AddItemReferenceToObject(ctx, "tools", t->tools);
        untrusted[n++] = "tools";
    }
    const cJSON *kw;
    for (kw = t->kwargs ? t->kwargs->child : NULL; ok && kw; kw = kw->next) {
        ok = cJSON_AddItemReferenceToObject(ctx, kw->string, (cJSON *)kw);
        untrusted[n++] = kw->string;
    }
    if (!ok) {
        free(untrusted);
        return -ENOMEM;
    }
    *ret_untrusted = untrusted;
    return 0;
}

/* ---- output ---- */

bool tools_output_setup(const struct tools_request *t, const struct tools_template_info *ti, const char *prompt,
                        size_t prompt_len, struct tools_output_cfg *ret)
{
    struct tools_output_cfg c = {
        .parse_calls = t->tools && t->choice != TOOLS_CHOICE_NONE,
        .format = ti->format,
        .reasoning = ti->reasoning,
    };
    if (c.reasoning && prompt) {
        /* DeepSeek-R1 and Qwen3-Thinking templates end the generation
         * prompt with "<think>\n": the reply starts inside reasoning. */
        size_t n = prompt_len;
        while (n > 0 && isspace((unsigned char)prompt[n - 1]))
            n--;
        size_t k = sizeof(THINK_OPEN) - 1;
        c.starts_in_reasoning = n >= k && memcmp(prompt + n - k, THINK_OPEN, k) == 0;
    }
    *ret = c;
    return c.parse_calls || c.reasoning;
}

enum stream_state {
    ST_START,      /* reasoning on: the reply may open with <think> */
    ST_REASONING,  /* inside <think> */
    ST_TEXT,       /* content, watching for a call marker */
    ST_CALL,       /* Hermes: inside <tool_call>, buf starts at the marker */
    ST_TAIL,       /* Llama-3 / Mistral: the rest of the reply is the calls; buf starts at it */
    ST_PLAIN,      /* Llama-3: the reply began as text, so it is no call */
};

struct tools_stream {
    struct tools_output_cfg cfg;
    enum stream_state st;
    char *buf;          /* text not yet emitted */
    size_t len, cap;
    bool strip_ws;      /* drop the whitespace that follows </think> or </tool_call> */
    int n_calls;
};

tools_stream *tools_stream_create(const struct tools_output_cfg *cfg)
{
    tools_stream *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->cfg = *cfg;
    s->st = !cfg->reasoning ? ST_TEXT : cfg->starts_in_reasoning ? ST_REASONING : ST_START;
    return s;
}

void tools_stream_destroy(tools_stream *s)
{
    if (!s)
        return;
    free(s->buf);
    free(s);
}

int tools_stream_calls(const tools_stream *s)
{
    return s->n_calls;
}

/* Appends text to the last delta when it is of the same kind, else adds one. */
static int emit_text(cJSON *deltas, const char *key, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    cJSON *last = cJSON_GetArrayItem(deltas, cJSON_GetArraySize(deltas) - 1);
    const cJSON *prev = last ? cJSON_GetObjectItemCaseSensitive(last, key) : NULL;
    size_t pl = cJSON_IsString(prev) ? strlen(prev->valuestring) : 0;
    char *joined = malloc(pl + n + 1);
    if (!joined)
        return -ENOMEM;
    if (pl)
        memcpy(joined, prev->valuestring, pl);
    memcpy(joined + pl, s, n);
    joined[pl + n] = '\0';
    cJSON *str = cJSON_CreateString(joined);
    free(joined);
    if (!str)
        return -ENOMEM;
    if (cJSON_IsString(prev)) {
        cJSON_ReplaceItemInObjectCaseSensitive(last, key, str);
        return 0;
    }
    cJSON *d = cJSON_CreateObject();
    if (!d) {
        cJSON_Delete(str);
        return -ENOMEM;
    }
    cJSON_AddItemToObject(d, key, str);
    cJSON_AddItemToArray(deltas, d);
    return 0;
}

/* "call_" and 24 random letters and digits, as OpenAI's ids look. */
static void call_id(char out[32])
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char r[24];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
        for (size_t i = 0; i < sizeof(r); i++)
            r[i] = (unsigned char)(rand() ^ (int)time(NULL));
    memcpy(out, "call_", 5);
    for (size_t i = 0; i < sizeof(r); i++)
        out[5 + i] = abc[r[i] % (sizeof(abc) - 1)];
    out[29] = '\0';
}

/* A call as OpenAI streams it: the header (id, name, empty arguments), then
 * the arguments. */
static int emit_call(tools_stream *s, cJSON *deltas, const char *name, const cJSON *args)
{
    char id[32];
    call_id(id);
    char *a = cJSON_PrintUnformatted(args);
    cJSON *head = cJSON_CreateObject(), *body = cJSON_CreateObject();
    cJSON *ha = cJSON_AddArrayToObject(head, "tool_calls"), *ba = cJSON_AddArrayToObject(body, "tool_calls");
    cJSON *h = cJSON_CreateObject(), *b = cJSON_CreateObject();
    bool ok = a && ha && ba && h && b;
    if (ok) {
        cJSON_AddItemToArray(ha, h);
        cJSON_AddItemToArray(ba, b);
        cJSON_AddNumberToObject(h, "index", s->n_calls);
        cJSON_AddStringToObject(h, "id", id);
        cJSON_AddStringToObject(h, "type", "function");
        cJSON *hf = cJSON_AddObjectToObject(h, "function");
        ok = hf && cJSON_AddStringToObject(hf, "name", name) && cJSON_AddStringToObject(hf, "arguments", "");
        cJSON_AddNumberToObject(b, "index", s->n_calls);
        cJSON *bf = cJSON_AddObjectToObject(b, "function");
        ok = ok && bf && cJSON_AddStringToObject(bf, "arguments", a);
    } else {
        cJSON_Delete(h);
        cJSON_Delete(b);
    }
    free(a);
    if (!ok) {
        cJSON_Delete(head);
        cJSON_Delete(body);
        return -ENOMEM;
    }
    cJSON_AddItemToArray(deltas, head);
    cJSON_AddItemToArray(deltas, body);
    s->n_calls++;
    return 0;
}

/* A call object {"name": "f", "arguments"|"parameters": {...}}; arguments
 * may also be a string holding the object, or absent (no parameters). */
static bool call_fields(const cJSON *o, const char **ret_name, const cJSON **ret_args, cJSON **ret_owned)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    if (!cJSON_IsObject(o) || !cJSON_IsString(name) || !name_ok(name->valuestring))
        return false;
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(o, "arguments");
    if (!args)
        args = cJSON_GetObjectItemCaseSensitive(o, "parameters");
    *ret_owned = NULL;
    if (cJSON_IsString(args)) {
        *ret_owned = cJSON_Parse(args->valuestring);
        args = *ret_owned;
    } else if (!args) {
        *ret_owned = cJSON_CreateObject();
        args = *ret_owned;
    }
    if (!cJSON_IsObject(args)) {
        cJSON_Delete(*ret_owned);
        return false;
    }
    *ret_name = name->valuestring;
    *ret_args = args;
    return true;
}

/* Parses text as one call object or an array of them; emits them all, or
 * nothing and returns 0 when the text is not that (it stays content). */
static int emit_calls_json(tools_stream *s, cJSON *deltas, const char *text, size_t len, bool array_only)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!j)
        return 0;
    for (const char *q = end; q < text + len; q++)
        if (!isspace((unsigned char)*q)) {
            cJSON_Delete(j);
            return 0;
        }
    if (array_only && !cJSON_IsArray(j)) {
        cJSON_Delete(j);
        return 0;
    }
    /* All or nothing: check every call before emitting one. */
    int n = cJSON_IsArray(j) ? cJSON_GetArraySize(j) : 1;
    const cJSON *it = cJSON_IsArray(j) ? j->child : j;
    bool ok = n > 0;
    for (const cJSON *c = it; ok && c; c = cJSON_IsArray(j) ? c->next : NULL) {
        const char *name;
        const cJSON *args;
        cJSON *owned;
        ok = call_fields(c, &name, &args, &owned);
        if (ok)
            cJSON_Delete(owned);
    }
    int rc = ok ? 1 : 0;
    for (const cJSON *c = it; ok && c; c = cJSON_IsArray(j) ? c->next : NULL) {
        const char *name;
        const cJSON *args;
        cJSON *owned;
        call_fields(c, &name, &args, &owned);
        int r = emit_call(s, deltas, name, args);
        cJSON_Delete(owned);
        if (r < 0) {
            rc = r;
            break;
        }
    }
    cJSON_Delete(j);
    return rc;
}

static void consume(tools_stream *s, size_t n)
{
    memmove(s->buf, s->buf + n, s->len - n);
    s->len -= n;
}

/* How many trailing bytes of buf may begin `marker` (a proper prefix of it). */
static size_t prefix_hold(const char *buf, size_t len, const char *marker)
{
    size_t ml = strlen(marker);
    for (size_t k = ml - 1 < len ? ml - 1 : len; k > 0; k--)
        if (memcmp(buf + len - k, marker, k) == 0)
            return k;
    return 0;
}

static const char *find(const char *buf, size_t len, const char *needle)
{
    return memmem(buf, len, needle, strlen(needle));
}

/* Bytes of whitespace at the start of buf. */
static size_t lead_space(const tools_stream *s)
{
    size_t w = 0;
    while (w < s->len && isspace((unsigned char)s->buf[w]))
        w++;
    return w;
}

/* One step of the state machine; returns 1 to run again, 0 when it needs
 * more text, < 0 on error. */
static int step(tools_stream *s, bool final, cJSON *deltas)
{
    int rc;
    if (s->strip_ws) {
        size_t w = 0;
        while (w < s->len && isspace((unsigned char)s->buf[w]))
            w++;
        consume(s, w);
        if (s->len == 0)
            return 0;
        s->strip_ws = false;
    }
    switch (s->st) {
    case ST_START: {
        size_t w = 0;
        while (w < s->len && isspace((unsigned char)s->buf[w]))
            w++;
        size_t rest = s->len - w, k = sizeof(THINK_OPEN) - 1;
        if (rest >= k && memcmp(s->buf + w, THINK_OPEN, k) == 0) {
            consume(s, w + k);
            s->st = ST_REASONING;
            return 1;
        }
        if (!final && rest < k && memcmp(s->buf + w, THINK_OPEN, rest) == 0)
            return 0;
        s->st = ST_TEXT;
        return 1;
    }
    case ST_REASONING: {
        const char *hit = find(s->buf, s->len, THINK_CLOSE);
        if (hit) {
            size_t at = (size_t)(hit - s->buf);
            if ((rc = emit_text(deltas, "reasoning_content", s->buf, at)) < 0)
                return rc;
            consume(s, at + sizeof(THINK_CLOSE) - 1);
            s->st = ST_TEXT;
            s->strip_ws = true;
            return 1;
        }
        size_t hold = final ? 0 : prefix_hold(s->buf, s->len, THINK_CLOSE);
        if ((rc = emit_text(deltas, "reasoning_content", s->buf, s->len - hold)) < 0)
            return rc;
        consume(s, s->len - hold);
        return 0;
    }
    case ST_TEXT: {
        if (!s->cfg.parse_calls)
            break;
        if (s->cfg.format == TOOLS_FMT_LLAMA3) {
            /* A call is the whole reply: decided by how it begins. */
            size_t w = 0;
            while (w < s->len && isspace((unsigned char)s->buf[w]))
                w++;
            size_t rest = s->len - w, k = sizeof(LLAMA_TAG) - 1;
            if (rest > 0 && (s->buf[w] == '{' || (rest >= k && memcmp(s->buf + w, LLAMA_TAG, k) == 0))) {
                s->st = ST_TAIL;
                return 1;
            }
            if (!final && (rest == 0 || (rest < k && memcmp(s->buf + w, LLAMA_TAG, rest) == 0)))
                return 0;
            s->st = ST_PLAIN;
            return 1;
        }
        const char *marker = s->cfg.format == TOOLS_FMT_MISTRAL ? MISTRAL_TAG : HERMES_OPEN;
        const char *hit = find(s->buf, s->len, marker);
        size_t upto = hit ? (size_t)(hit - s->buf) : s->len - (final ? 0 : prefix_hold(s->buf, s->len, marker));
        size_t keep = upto;
        /* Whitespace before a call is layout, not content: held until
         * what follows shows which it is. */
        if (hit || !final)
            while (keep > 0 && isspace((unsigned char)s->buf[keep - 1]))
                keep--;
        if ((rc = emit_text(deltas, "content", s->buf, keep)) < 0)
            return rc;
        /* The held whitespace stays in buf: a call drops it, a malformed
         * one gives it back as content with the rest. */
        consume(s, keep);
        if (!hit)
            return 0;
        s->st = s->cfg.format == TOOLS_FMT_MISTRAL ? ST_TAIL : ST_CALL;
        return 1;
    }
    case ST_CALL: {
        size_t k = lead_space(s) + sizeof(HERMES_OPEN) - 1;
        const char *close = find(s->buf + k, s->len - k, HERMES_CLOSE);
        if (!close && !final)
            return 0;
        size_t body_end = close ? (size_t)(close - s->buf) : s->len;
        size_t end = close ? body_end + sizeof(HERMES_CLOSE) - 1 : s->len;
        /* An unclosed block at the end still counts when it holds a whole
         * call (models often stop at EOS before </tool_call>). */
        if ((rc = emit_calls_json(s, deltas, s->buf + k, body_end - k, false)) < 0)
            return rc;
        if (rc == 0 && (rc = emit_text(deltas, "content", s->buf, end)) < 0)
            return rc;
        s->strip_ws = rc > 0;
        consume(s, end);
        s->st = ST_TEXT;
        return 1;
    }
    case ST_TAIL: {
        if (!final)
            return 0;
        const char *tag = s->cfg.format == TOOLS_FMT_MISTRAL ? MISTRAL_TAG : LLAMA_TAG;
        size_t w = lead_space(s), k = strlen(tag);
        size_t skip = s->len - w >= k && memcmp(s->buf + w, tag, k) == 0 ? w + k : w;
        if ((rc = emit_calls_json(s, deltas, s->buf + skip, s->len - skip, s->cfg.format == TOOLS_FMT_MISTRAL)) < 0)
            return rc;
        if (rc == 0 && (rc = emit_text(deltas, "content", s->buf, s->len)) < 0)
            return rc;
        consume(s, s->len);
        return 0;
    }
    case ST_PLAIN:
        break;
    }
    /* Content that can hold no marker. */
    if ((rc = emit_text(deltas, "content", s->buf, s->len)) < 0)
        return rc;
    consume(s, s->len);
    return 0;
}

int tools_stream_feed(tools_stream *s, const char *text, size_t len, bool final, cJSON *deltas)
{
    if (s->len + len + 1 > s->cap) {
        size_t ncap = s->cap ? s->cap : 256;
        while (ncap < s->len + len + 1)
            ncap *= 2;
        char *nb = realloc(s->buf, ncap);
        if (!nb)
            return -ENOMEM;
        s->buf = nb;
        s->cap = ncap;
    }
    if (len)
        memcpy(s->buf + s->len, text, len);
    s->len += len;
    int rc;
    while ((rc = step(s, final, deltas)) > 0)
        ;
    return rc;
}

/* s += add, for a string member that may be null. */
static void append_member(cJSON *o, const char *key, const char *add)
{
    const cJSON *cur = cJSON_GetObjectItemCaseSensitive(o, key);
    char *joined = NULL;
    if (asprintf(&joined, "%s%s", cJSON_IsString(cur) ? cur->valuestring : "", add) < 0)
        return;
    if (cur)
        cJSON_ReplaceItemInObjectCaseSensitive(o, key, cJSON_CreateString(joined));
    else
        cJSON_AddStringToObject(o, key, joined);
    free(joined);
}

void tools_delta_merge(cJSON *msg, const cJSON *delta)
{
    const cJSON *v;
    if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(delta, "content")))
        append_member(msg, "content", v->valuestring);
    if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(delta, "reasoning_content")))
        append_member(msg, "reasoning_content", v->valuestring);
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(delta, "tool_calls");
    const cJSON *tc;
    cJSON_ArrayForEach(tc, calls) {
        cJSON *all = cJSON_GetObjectItemCaseSensitive(msg, "tool_calls");
        if (!all)
            all = cJSON_AddArrayToObject(msg, "tool_calls");
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
        if (cJSON_GetObjectItemCaseSensitive(tc, "id")) {
            cJSON *c = cJSON_CreateObject();
            cJSON_AddStringToObject(c, "id", cJSON_GetObjectItemCaseSensitive(tc, "id")->valuestring);
            cJSON_AddStringToObject(c, "type", "function");
            cJSON *f = cJSON_AddObjectToObject(c, "function");
            cJSON_AddStringToObject(f, "name", cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(fn, "name")));
            cJSON_AddStringToObject(f, "arguments", "");
            cJSON_AddItemToArray(all, c);
        }
        int idx = (int)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(tc, "index"));
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        cJSON *target = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(all, idx), "function");
        if (target && cJSON_IsString(a) && a->valuestring[0])
            append_member(target, "arguments", a->valuestring);
    }
}

cJSON *tools_message_from_text(const struct tools_output_cfg *cfg, const char *text, size_t len, int *ret_calls)
{
    tools_stream *s = tools_stream_create(cfg);
    cJSON *deltas = cJSON_CreateArray(), *msg = cJSON_CreateObject();
    bool ok = s && deltas && msg && tools_stream_feed(s, text, len, true, deltas) == 0 &&
              cJSON_AddStringToObject(msg, "role", "assistant") && cJSON_AddNullToObject(msg, "content");
    const cJSON *d;
    if (ok)
        cJSON_ArrayForEach(d, deltas)
            tools_delta_merge(msg, d);
    int calls = s ? s->n_calls : 0;
    tools_stream_destroy(s);
    cJSON_Delete(deltas);
    if (!ok) {
        cJSON_Delete(msg);
        return NULL;
    }
    /* content is null only when the reply was calls or reasoning alone, as
     * OpenAI and vLLM send it; otherwise a string, "" for an empty reply. */
    if (cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(msg, "content")) && calls == 0 &&
        !cJSON_GetObjectItemCaseSensitive(msg, "reasoning_content"))
        cJSON_ReplaceItemInObjectCaseSensitive(msg, "content", cJSON_CreateString(""));
    *ret_calls = calls;
    return msg;
}

/* ---- constrained decoding ---- */

/* Generic JSON rules, as llama.cpp's grammars/json.gbnf writes them. */
static const char json_rules[] =
    "object ::= \"{\" ws ( string ws \":\" ws value ( ws \",\" ws string ws \":\" ws value )* )? ws \"}\"\n"
    "array ::= \"[\" ws ( value ( ws \",\" ws value )* )? ws \"]\"\n"
    "value ::= object | array | string | number | \"true\" | \"false\" | \"null\"\n"
    "string ::= \"\\\"\" ( [^\"\\\\\\x7F\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" [0-9a-fA-F] [0-9a-fA-F] "
    "[0-9a-fA-F] [0-9a-fA-F] ) )* \"\\\"\"\n"
    "number ::= \"-\"? ( [0-9] | [1-9] [0-9]* ) ( \".\" [0-9]+ )? ( [eE] [-+]? [0-9]+ )?\n"
    "ws ::= \" \"?\n";

/* Appends printf output to *s (NULL stays NULL: the first failure sticks). */
static void cat(char **s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cat(char **s, const char *fmt, ...)
{
    if (!*s)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *add = NULL;
    int n = vasprintf(&add, fmt, ap);
    va_end(ap);
    char *joined = NULL;
    if (n < 0 || asprintf(&joined, "%s%s", *s, add) < 0)
        joined = NULL;
    free(add);
    free(*s);
    *s = joined;
}

static bool allowed(const struct tools_request *t, const char *name)
{
    return t->choice != TOOLS_CHOICE_NAMED || strcmp(name, t->choice_name) == 0;
}

char *tools_call_wrapper_gbnf(enum tools_format format, const struct tools_request *t, const char *call_rule)
{
    bool one = t->choice == TOOLS_CHOICE_NAMED || format == TOOLS_FMT_LLAMA3 || t->one_call;
    char *g = strdup("");
    switch (format) {
    case TOOLS_FMT_LLAMA3:
        cat(&g, "root ::= %s\n", call_rule);
        break;
    case TOOLS_FMT_MISTRAL:
        cat(&g, one ? "root ::= \"[TOOL_CALLS][\" %s \"]\"\n" : "root ::= \"[TOOL_CALLS][\" %s ( \", \" %s )* \"]\"\n",
            call_rule, call_rule);
        break;
    default:
        cat(&g, "block ::= \"<tool_call>\\n\" %s \"\\n</tool_call>\"\n", call_rule);
        cat(&g, one ? "root ::= block\n" : "root ::= block ( \"\\n\" block )*\n");
        break;
    }
    return g;
}

char *tools_call_grammar(enum tools_format format, const struct tools_request *t)
{
    if (!t->tools)
        return NULL;
    /* Names are [A-Za-z0-9_-] (tools_request_parse checked): safe inside a
     * GBNF literal as they are. */
    const char *args_key = format == TOOLS_FMT_LLAMA3 ? "parameters" : "arguments";
    char *g = tools_call_wrapper_gbnf(format, t, "call");
    cat(&g, "call ::=");
    int i = 0, n = 0;
    const cJSON *tool;
    cJSON_ArrayForEach(tool, t->tools) {
        const char *name = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tool, "function"),
                                                            "name")->valuestring;
        if (allowed(t, name))
            cat(&g, "%s call-%d", n++ ? " |" : "", i);
        i++;
    }
    cat(&g, "\n");
    i = 0;
    cJSON_ArrayForEach(tool, t->tools) {
        const char *name = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tool, "function"),
                                                            "name")->valuestring;
        if (allowed(t, name)) {
            cat(&g, "call-%d ::= \"{\\\"name\\\": \\\"%s\\\", \\\"%s\\\": \" args-%d \"}\"\n", i, name, args_key, i);
            cat(&g, "args-%d ::= object\n", i);
        }
        i++;
    }
    cat(&g, "%s", json_rules);
    return g;
}

cJSON *tools_call_schema(enum tools_format format, const struct tools_request *t)
{
    const char *args_key = format == TOOLS_FMT_LLAMA3 ? "parameters" : "arguments";
    cJSON *root = cJSON_CreateObject();
    cJSON *any = cJSON_AddArrayToObject(root, "anyOf");
    const cJSON *tool;
    cJSON_ArrayForEach(tool, t->tools) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tool, "function");
        const char *name = cJSON_GetObjectItemCaseSensitive(fn, "name")->valuestring;
        if (!allowed(t, name))
            continue;
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", "object");
        cJSON *props = cJSON_AddObjectToObject(o, "properties");
        cJSON_AddStringToObject(cJSON_AddObjectToObject(props, "name"), "const", name);
        cJSON_AddItemToObject(props, args_key, cJSON_IsObject(params) ? cJSON_Duplicate(params, true)
                                                                      : cJSON_CreateObject());
        cJSON *req = cJSON_AddArrayToObject(o, "required");
        cJSON_AddItemToArray(req, cJSON_CreateString("name"));
        cJSON_AddItemToArray(req, cJSON_CreateString(args_key));
        cJSON_AddFalseToObject(o, "additionalProperties");
        cJSON_AddItemToArray(any, o);
    }
    return root;
}
