/* test_api.c - OpenAI request validation, error envelopes, SSE chunks,
 * stop-string hold-back and API key checks (daemon/api.c). These parsers
 * take untrusted input: malformed bodies must give a 400 naming the field,
 * never a crash (the suite also runs under ASan+UBSan). */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

static int parse_chat(const char *body, struct api_request *r, struct api_error *e)
{
    return api_request_parse(API_KIND_CHAT, body, strlen(body), 1000, r, e);
}

static int parse_cmpl(const char *body, struct api_request *r, struct api_error *e)
{
    return api_request_parse(API_KIND_COMPLETION, body, strlen(body), 1000, r, e);
}

Test(api, chat_full_request)
{
    struct api_request r;
    struct api_error e = {0};
    const char *body =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
        "{\"role\":\"assistant\",\"content\":null},{\"role\":\"developer\",\"content\":\"x\"}],"
        "\"max_tokens\":5,\"max_completion_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,"
        "\"seed\":42,\"stop\":[\"END\",\"\\n\\n\"],\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,"
        "\"repetition_penalty\":1.1,\"logprobs\":true,\"top_logprobs\":3,\"n\":1,\"stream\":true,"
        "\"stream_options\":{\"include_usage\":true},\"user\":\"u-1\",\"metadata\":{\"k\":\"v\"},"
        "\"store\":false,\"service_tier\":\"auto\"}";
    cr_assert_eq(parse_chat(body, &r, &e), 0, "%s", e.message);
    cr_assert_str_eq(r.model, "m");
    cr_assert_eq(cJSON_GetArraySize(r.messages), 4);
    cJSON *m1 = cJSON_GetArrayItem(r.messages, 1);
    cr_assert_str_eq(cJSON_GetObjectItem(m1, "content")->valuestring, "ab");
    cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(r.messages, 2), "content")->valuestring, "");
    cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(r.messages, 3), "role")->valuestring, "system");
    cr_assert_eq(r.max_tokens, 7, "max_completion_tokens wins");
    cr_assert_float_eq(r.sampling.temperature, 0.5f, 1e-6);
    cr_assert_float_eq(r.sampling.top_p, 0.9f, 1e-6);
    cr_assert_eq(r.sampling.top_k, 40);
    cr_assert_float_eq(r.sampling.min_p, 0.05f, 1e-6);
    cr_assert_eq(r.sampling.seed, 42u);
    cr_assert_float_eq(r.sampling.presence_penalty, 0.5f, 1e-6);
    cr_assert_float_eq(r.sampling.frequency_penalty, -0.5f, 1e-6);
    cr_assert_float_eq(r.sampling.repetition_penalty, 1.1f, 1e-6);
    cr_assert_eq(r.n_stop, 2);
    cr_assert_str_eq(r.stop[1], "\n\n");
    cr_assert(r.logprobs);
    cr_assert_eq(r.top_logprobs, 3);
    cr_assert(r.stream);
    cr_assert(r.include_usage);
    api_request_finish(&r);
}

Test(api, completion_prompts)
{
    struct api_request r;
    struct api_error e = {0};
    cr_assert_eq(parse_cmpl("{\"prompt\":\"Once\",\"stop\":\"x\",\"logprobs\":2}", &r, &e), 0, "%s", e.message);
    cr_assert_str_eq(r.prompt, "Once");
    cr_assert_eq(r.max_tokens, -1);
    cr_assert(r.logprobs);
    cr_assert_eq(r.top_logprobs, 2);
    cr_assert_eq(r.n_stop, 1);
    cr_assert_float_eq(r.sampling.temperature, 1.0f, 1e-6, "OpenAI's default temperature is 1");
    api_request_finish(&r);
    cr_assert_eq(parse_cmpl("{\"prompt\":[1,80,147]}", &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_prompt_ids, 3);
    cr_assert_eq(r.prompt_ids[2], 147);
    api_request_finish(&r);
    cr_assert_eq(parse_cmpl("{\"prompt\":[[5,6]]}", &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_prompt_ids, 2);
    api_request_finish(&r);
    cr_assert_eq(parse_cmpl("{\"prompt\":[\"only one\"]}", &r, &e), 0, "%s", e.message);
    cr_assert_str_eq(r.prompt, "only one");
    api_request_finish(&r);
}

struct bad {
    enum api_kind kind;
    const char *body;
    const char *param; /* expected param, "" for null */
};

Test(api, malformed_requests_are_400_with_param)
{
    static const struct bad cases[] = {
        {API_KIND_CHAT, "", ""},
        {API_KIND_CHAT, "{", ""},
        {API_KIND_CHAT, "[]", ""},
        {API_KIND_CHAT, "null", ""},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]} trailing", ""},
        {API_KIND_CHAT, "{}", "messages"},
        {API_KIND_CHAT, "{\"messages\":[]}", "messages"},
        {API_KIND_CHAT, "{\"messages\":\"hi\"}", "messages"},
        {API_KIND_CHAT, "{\"messages\":[1]}", "messages[0]"},
        {API_KIND_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", "messages[0].role"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages[0].role"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
         "messages[0].content[0]"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"model\":3}", "model"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":\"5\"}", "max_tokens"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", "max_tokens"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":2.5}", "max_tokens"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":3}", "temperature"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}", "temperature"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":0}", "top_p"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_k\":-1}", "top_k"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"min_p\":2}", "min_p"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"presence_penalty\":9}", "presence_penalty"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"repetition_penalty\":0}", "repetition_penalty"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"seed\":\"s\"}", "seed"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":17}", "n"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":0}", "n"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":5}", "stop"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",7]}", "stop[1]"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"\"]}", "stop[0]"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":\"yes\"}", "logprobs"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":3}", "top_logprobs"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":21}", "top_logprobs"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":1}", "stream"},
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":[]}", "stream_options"},
        {API_KIND_COMPLETION, "{}", "prompt"},
        {API_KIND_COMPLETION, "{\"prompt\":5}", "prompt"},
        {API_KIND_COMPLETION, "{\"prompt\":[]}", "prompt"},
        {API_KIND_COMPLETION, "{\"prompt\":[1,-2]}", "prompt[1]"},
        {API_KIND_COMPLETION, "{\"prompt\":[1,1000]}", "prompt[1]"},
        {API_KIND_COMPLETION, "{\"prompt\":[1,2.5]}", "prompt[1]"},
        {API_KIND_COMPLETION, "{\"prompt\":[\"a\",\"b\"]}", "prompt"},
        {API_KIND_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":99}", "logprobs"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct api_request r;
        struct api_error e = {0};
        int rc = api_request_parse(cases[i].kind, cases[i].body, strlen(cases[i].body), 1000, &r, &e);
        cr_expect_lt(rc, 0, "case %zu (%s) accepted", i, cases[i].body);
        if (rc >= 0) {
            api_request_finish(&r);
            continue;
        }
        cr_expect_eq(e.status, 400, "case %zu", i);
        cr_expect_str_eq(e.param, cases[i].param, "case %zu (%s): %s", i, cases[i].body, e.message);
        cr_expect_str_eq(e.type, "invalid_request_error");
        cr_expect_neq(e.message[0], '\0');
    }
}

Test(api, invalid_utf8_is_400)
{
    static const char *bodies[] = {
        "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\"}]}",        /* truncated */
        "{\"messages\":[{\"role\":\"user\",\"content\":\"\xc0\xaf\"}]}",    /* overlong */
        "{\"messages\":[{\"role\":\"user\",\"content\":\"\xed\xa0\x80\"}]}", /* surrogate */
        "{\"messages\":[{\"role\":\"user\",\"content\":\"\xf4\x90\x80\x80\"}]}", /* > U+10FFFF */
        "{\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}",     /* lone surrogate escape */
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct api_request r;
        struct api_error e = {0};
        cr_expect_lt(parse_chat(bodies[i], &r, &e), 0, "body %zu accepted", i);
        cr_expect_eq(e.status, 400);
    }
    size_t bad = 0;
    cr_assert(api_utf8_valid("h\xc3\xa9llo \xf0\x9f\x98\x80", 11, &bad));
    cr_assert(!api_utf8_valid("ab\xe2\x82", 4, &bad));
    cr_assert_eq(bad, 2);
}

Test(api, deep_nesting_does_not_crash)
{
    /* An unknown field nested very deep: cJSON limits depth, we answer 400. */
    size_t n = 100000;
    char *body = malloc(2 * n + 64);
    strcpy(body, "{\"x\":");
    size_t off = strlen(body);
    memset(body + off, '[', n);
    memset(body + off + n, ']', n);
    strcpy(body + off + 2 * n, "}");
    struct api_request r;
    struct api_error e = {0};
    cr_assert_lt(parse_chat(body, &r, &e), 0);
    cr_assert_eq(e.status, 400);
    free(body);
}

/* {"metadata": [[...[1]...]]} with `levels` levels in all, the object
 * included (metadata: a field whose value inferd does not read). */
static char *nested_body(int levels)
{
    char *body = malloc((size_t)levels * 2 + 64);
    strcpy(body, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"metadata\":");
    size_t off = strlen(body);
    int arrays = levels - 1;
    memset(body + off, '[', (size_t)arrays);
    off += (size_t)arrays;
    body[off++] = '1';
    memset(body + off, ']', (size_t)arrays);
    off += (size_t)arrays;
    strcpy(body + off, "}");
    return body;
}

Test(api, json_depth_limit_is_enforced_and_named)
{
    struct api_request r;
    struct api_error e = {0};
    /* At the limit: parsed (metadata is a no-op). */
    char *ok = nested_body(API_MAX_JSON_DEPTH);
    cr_assert_eq(parse_chat(ok, &r, &e), 0, "%s", e.message);
    api_request_finish(&r);
    free(ok);
    /* One deeper: 400 naming the limit, far below cJSON's own 1000. */
    char *deep = nested_body(API_MAX_JSON_DEPTH + 1);
    cr_assert_lt(parse_chat(deep, &r, &e), 0);
    cr_assert_eq(e.status, 400);
    char want[32];
    snprintf(want, sizeof(want), "deeper than %d", API_MAX_JSON_DEPTH);
    cr_assert(strstr(e.message, want), "%s", e.message);
    /* The same for /tokenize and /detokenize bodies. */
    char *text = NULL;
    size_t tl = 0;
    bool add = true;
    char *model = NULL;
    cr_assert_lt(api_tokenize_parse(deep, strlen(deep), &text, &tl, &add, &model, &e), 0);
    cr_assert(strstr(e.message, want), "%s", e.message);
    int32_t *ids = NULL;
    size_t n = 0;
    cr_assert_lt(api_detokenize_parse(deep, strlen(deep), 100, &ids, &n, &model, &e), 0);
    cr_assert(strstr(e.message, want), "%s", e.message);
    free(deep);
    /* Brackets inside strings, and escaped quotes, are not nesting. */
    char *in_str = malloc(1000);
    snprintf(in_str, 1000, "{\"messages\":[{\"role\":\"user\",\"content\":\"\\\"%s\"}]}",
             "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[");
    cr_assert_eq(parse_chat(in_str, &r, &e), 0, "%s", e.message);
    api_request_finish(&r);
    free(in_str);
}

Test(api, error_envelope)
{
    struct api_error e;
    api_error_set(&e, 400, "invalid_request_error", "messages", NULL, "'messages' must not be empty");
    char *s = api_error_json(&e);
    cJSON *j = cJSON_Parse(s);
    cJSON *err = cJSON_GetObjectItem(j, "error");
    cr_assert(err);
    cr_assert_str_eq(cJSON_GetObjectItem(err, "message")->valuestring, "'messages' must not be empty");
    cr_assert_str_eq(cJSON_GetObjectItem(err, "type")->valuestring, "invalid_request_error");
    cr_assert_str_eq(cJSON_GetObjectItem(err, "param")->valuestring, "messages");
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(err, "code")));
    cJSON_Delete(j);
    free(s);
}

Test(api, key_matching)
{
    const char *keys[] = {"sk-alpha", "sk-beta"};
    cr_assert(api_key_matches(keys, 2, "Bearer sk-alpha"));
    cr_assert(api_key_matches(keys, 2, "bearer sk-beta"));
    cr_assert(!api_key_matches(keys, 2, "Bearer sk-alph"));
    cr_assert(!api_key_matches(keys, 2, "Bearer sk-alphaa"));
    cr_assert(!api_key_matches(keys, 2, "sk-alpha"));
    cr_assert(!api_key_matches(keys, 2, "Bearer "));
    cr_assert(!api_key_matches(keys, 2, NULL));
    cr_assert(!api_key_matches(keys, 0, "Bearer sk-alpha"));
}

Test(api, stop_scan_holds_back_prefixes)
{
    char *stops[] = {"END", "\n\n"};
    size_t emit;
    cr_assert(!api_stop_scan("hello E", 7, stops, 2, &emit));
    cr_assert_eq(emit, 6, "'E' may start END: held back");
    cr_assert(!api_stop_scan("hello EN", 8, stops, 2, &emit));
    cr_assert_eq(emit, 6);
    cr_assert(api_stop_scan("hello END more", 14, stops, 2, &emit));
    cr_assert_eq(emit, 6, "text before the stop string only");
    cr_assert(!api_stop_scan("a\n", 2, stops, 2, &emit));
    cr_assert_eq(emit, 1);
    cr_assert(api_stop_scan("a\n\nEND", 6, stops, 2, &emit));
    cr_assert_eq(emit, 1, "the earliest stop string wins");
    cr_assert(!api_stop_scan("plain", 5, stops, 0, &emit));
    cr_assert_eq(emit, 5);
    cr_assert(!api_stop_scan("", 0, stops, 2, &emit));
    cr_assert_eq(emit, 0);
}

static char *fake_name(void *ctx, int32_t id, size_t *len)
{
    if (id == 7) {
        char *s = strdup("\xe2\x82"); /* half a character, as a byte token may be */
        *len = 2;
        return s;
    }
    char buf[32];
    *len = (size_t)snprintf(buf, sizeof(buf), "t%d", id);
    return strdup(buf);
}

Test(api, response_and_chunks)
{
    struct api_token_namer namer = {fake_name, NULL, NULL};
    struct api_response_meta m = {API_KIND_CHAT, "chatcmpl-1", 1700000000, "model-x"};
    struct api_usage u = {5, 2, 3};
    struct api_logprob lp[2] = {{.token = 3, .logprob = -0.5f, .n_top = 1, .top_ids = {3}, .top_logprobs = {-0.5f}},
                                {.token = 7, .logprob = -1.0f, .n_top = 0}};
    char *s = api_response_json(&m, "hi \"there\"", 10, "stop", &u, lp, 2, true, &namer);
    cJSON *j = cJSON_Parse(s);
    cr_assert(j, "%s", s);
    cr_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion");
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "message"), "content")->valuestring, "hi \"there\"");
    cr_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
    cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "logprobs"), "content");
    cr_assert_eq(cJSON_GetArraySize(content), 2);
    cJSON *t1 = cJSON_GetArrayItem(content, 1);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(t1, "bytes")), 2, "exact bytes of a partial token");
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "total_tokens")->valueint, 7);
    cJSON *details = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "prompt_tokens_details");
    cr_assert_eq(cJSON_GetObjectItem(details, "cached_tokens")->valueint, 3);
    cJSON_Delete(j);
    free(s);

    size_t n;
    s = api_chunk_sse(&m, true, "", 0, NULL, NULL, 0, false, true, &namer, &n);
    cr_assert_eq(strncmp(s, "data: {", 7), 0);
    cr_assert_eq(strcmp(s + n - 2, "\n\n"), 0);
    j = cJSON_Parse(s + 6);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "delta"), "role")->valuestring, "assistant");
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(j, "usage")));
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(c0, "finish_reason")));
    cJSON_Delete(j);
    free(s);

    s = api_usage_sse(&m, &u, &n);
    j = cJSON_Parse(s + 6);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "choices")), 0);
    cr_assert_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "prompt_tokens")->valueint, 5);
    cJSON_Delete(j);
    free(s);

    struct api_response_meta mc = {API_KIND_COMPLETION, "cmpl-1", 1, "model-x"};
    s = api_chunk_sse(&mc, false, "abc", 3, "length", lp, 1, true, false, &namer, &n);
    j = cJSON_Parse(s + 6);
    cr_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cr_assert_str_eq(cJSON_GetObjectItem(c0, "text")->valuestring, "abc");
    cr_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "length");
    cJSON *tl = cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "logprobs"), "tokens");
    cr_assert_str_eq(cJSON_GetArrayItem(tl, 0)->valuestring, "t3");
    cJSON_Delete(j);
    free(s);
}

Test(api, tokenize_bodies)
{
    size_t tl = 0;
    char *text = NULL, *model = NULL;
    bool add = false;
    struct api_error e = {0};
    const char *b = "{\"content\":\"hi\",\"add_special\":false}";
    cr_assert_eq(api_tokenize_parse(b, strlen(b), &text, &tl, &add, &model, &e), 0, "%s", e.message);
    cr_assert_str_eq(text, "hi");
    cr_assert(!add);
    cr_assert_null(model);
    free(text);
    b = "{\"content\":\"hi\",\"model\":\"small\"}";
    cr_assert_eq(api_tokenize_parse(b, strlen(b), &text, &tl, &add, &model, &e), 0, "%s", e.message);
    cr_assert_str_eq(model, "small");
    free(text);
    free(model);
    model = NULL;
    b = "{\"content\":\"hi\",\"model\":3}";
    cr_assert_lt(api_tokenize_parse(b, strlen(b), &text, &tl, &add, &model, &e), 0);
    cr_assert_str_eq(e.param, "model");
    b = "{\"content\":1}";
    cr_assert_lt(api_tokenize_parse(b, strlen(b), &text, &tl, &add, &model, &e), 0);
    cr_assert_str_eq(e.param, "content");
    int32_t *ids = NULL;
    size_t n = 0;
    b = "{\"tokens\":[1,2,3],\"model\":\"small\"}";
    cr_assert_eq(api_detokenize_parse(b, strlen(b), 100, &ids, &n, &model, &e), 0);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(model, "small");
    free(model);
    free(ids);
    b = "{\"tokens\":[1,200]}";
    cr_assert_lt(api_detokenize_parse(b, strlen(b), 100, &ids, &n, &model, &e), 0);
    cr_assert_str_eq(e.param, "tokens[1]");
    /* Unchecked at parse time (the model is not known yet), checked after. */
    cr_assert_eq(api_detokenize_parse(b, strlen(b), 0, &ids, &n, &model, &e), 0, "%s", e.message);
    cr_assert_null(model);
    cr_assert_lt(api_check_token_ids(ids, n, 100, "tokens", &e), 0);
    cr_assert_str_eq(e.param, "tokens[1]");
    cr_assert(strstr(e.message, "outside the vocabulary (0..99)"), "%s", e.message);
    cr_assert_eq(api_check_token_ids(ids, n, 201, "tokens", &e), 0);
    free(ids);
    b = "{\"tokens\":[-1]}";
    cr_assert_lt(api_detokenize_parse(b, strlen(b), 0, &ids, &n, &model, &e), 0);
    cr_assert(strstr(e.message, "from 0 to 2^31-1"), "%s", e.message);
}

Test(api, embeddings_bodies)
{
    struct api_embed_request r;
    struct api_error e = {0};
    const char *b = "{\"input\":\"hi\",\"model\":\"m\"}";
    cr_assert_eq(api_embed_parse(b, strlen(b), &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_inputs, 1);
    cr_assert_str_eq(r.inputs[0].text, "hi");
    cr_assert_str_eq(r.model, "m");
    cr_assert(!r.base64);
    api_embed_request_finish(&r);
    /* one array of ids is one input; an array of arrays is several */
    b = "{\"input\":[1,2,3],\"encoding_format\":\"base64\"}";
    cr_assert_eq(api_embed_parse(b, strlen(b), &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_inputs, 1);
    cr_assert_eq(r.inputs[0].n_ids, 3);
    cr_assert_eq(r.inputs[0].ids[2], 3);
    cr_assert(r.base64);
    api_embed_request_finish(&r);
    b = "{\"input\":[\"a\",[4,5]]}";
    cr_assert_eq(api_embed_parse(b, strlen(b), &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_inputs, 2);
    cr_assert_str_eq(r.inputs[0].text, "a");
    cr_assert_eq(r.inputs[1].ids[1], 5);
    api_embed_request_finish(&r);
    /* refusals name the field */
    static const struct {
        const char *body, *param;
    } bad[] = {
        {"{\"input\":\"\"}", "input"},
        {"{\"input\":[]}", "input"},
        {"{}", "input"},
        {"{\"input\":\"a\",\"dimensions\":8}", "dimensions"},
        {"{\"input\":\"a\",\"suffix\":\"u\"}", "suffix"},
        {"{\"input\":\"a\",\"encoding_format\":\"hex\"}", "encoding_format"},
        {"{\"input\":[\"a\",[1,-2]]}", "input[1][1]"},
        {"{\"input\":[\"a\",3]}", "input[1]"},
        {"{\"input\":[[1],[]]}", "input[1]"},
        {"{\"input\":\"a\",\"model\":1}", "model"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&e, 0, sizeof(e));
        cr_assert_lt(api_embed_parse(bad[i].body, strlen(bad[i].body), &r, &e), 0, "%s accepted", bad[i].body);
        cr_assert_eq(e.status, 400);
        cr_assert_str_eq(e.param, bad[i].param, "%s: param %s", bad[i].body, e.param);
    }
    /* the response: floats that round-trip float32, base64 of little-endian float32 */
    const float v0[2] = {0.1f, -2.5f}, v1[2] = {1.0f, 0.0f};
    const float *vecs[2] = {v0, v1};
    size_t len = 0;
    char *s = api_embed_response_json("m\"x", vecs, 2, 2, false, 7, &len);
    cr_assert_str_eq(s, "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":"
                        "[0.100000001,-2.5]},{\"object\":\"embedding\",\"index\":1,\"embedding\":[1,0]}],"
                        "\"model\":\"m\\\"x\",\"usage\":{\"prompt_tokens\":7,\"total_tokens\":7}}");
    cr_assert_eq(len, strlen(s));
    free(s);
    s = api_embed_response_json("m", vecs, 1, 2, true, 1, &len);
    cr_assert(strstr(s, "\"embedding\":\"zczMPQAAIMA=\""), "%s", s);
    free(s);
}

#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"

/* Issue 13 part 6: every field is implemented, an explicit no-op, or a 400
 * naming it; nothing is accepted and ignored. */
Test(api_fields, unknown_and_refused_fields_are_400_naming_them)
{
    static const struct bad cases[] = {
        {API_KIND_CHAT, "{" MSG ",\"unknown_field\":{\"ignored\":[1,2]}}", "unknown_field"},
        {API_KIND_CHAT, "{" MSG ",\"unknown_field\":null}", "unknown_field"},
        {API_KIND_CHAT, "{" MSG ",\"prediction\":{\"type\":\"content\"}}", "prediction"},
        {API_KIND_CHAT, "{" MSG ",\"reasoning_effort\":\"low\"}", "reasoning_effort"},
        {API_KIND_CHAT, "{" MSG ",\"verbosity\":\"low\"}", "verbosity"},
        {API_KIND_CHAT, "{" MSG ",\"echo\":true}", "echo"},       /* completions only */
        {API_KIND_CHAT, "{" MSG ",\"store\":true}", "store"},
        {API_KIND_CHAT, "{" MSG ",\"service_tier\":\"flex\"}", "service_tier"},
        {API_KIND_CHAT, "{" MSG ",\"audio\":{}}", "audio"},
        {API_KIND_COMPLETION, "{\"prompt\":\"x\",\"suffix\":\"y\"}", "suffix"},
        {API_KIND_COMPLETION, "{\"prompt\":\"x\",\"best_of\":3}", "best_of"},
        {API_KIND_COMPLETION, "{\"prompt\":\"x\",\"max_completion_tokens\":3}", "max_completion_tokens"},
        {API_KIND_COMPLETION, "{\"prompt\":\"x\",\"top_logprobs\":3}", "top_logprobs"},
        /* stream_options without stream, as OpenAI */
        {API_KIND_CHAT, "{" MSG ",\"stream_options\":{\"include_usage\":true}}", "stream_options"},
        {API_KIND_CHAT, "{" MSG ",\"stream\":false,\"stream_options\":{}}", "stream_options"},
        {API_KIND_CHAT, "{" MSG ",\"stream\":true,\"stream_options\":{\"continuous_usage_stats\":true}}",
         "stream_options.continuous_usage_stats"},
        /* repeat_penalty is repetition_penalty: two different values conflict */
        {API_KIND_CHAT, "{" MSG ",\"repeat_penalty\":1.1,\"repetition_penalty\":1.2}", "repeat_penalty"},
        {API_KIND_CHAT, "{" MSG ",\"repeat_penalty\":0}", "repeat_penalty"},
        /* logit_bias */
        {API_KIND_CHAT, "{" MSG ",\"logit_bias\":[1]}", "logit_bias"},
        {API_KIND_CHAT, "{" MSG ",\"logit_bias\":{\"abc\":1}}", "logit_bias.abc"},
        {API_KIND_CHAT, "{" MSG ",\"logit_bias\":{\"-1\":1}}", "logit_bias.-1"},
        {API_KIND_CHAT, "{" MSG ",\"logit_bias\":{\"12x\":1}}", "logit_bias.12x"},
        {API_KIND_CHAT, "{" MSG ",\"logit_bias\":{\"\":1}}", "logit_bias."},
        {API_KIND_CHAT, "{" MSG ",\"logit_bias\":{\"1000\":1}}", "logit_bias.1000"},
        {API_KIND_CHAT, "{" MSG ",\"logit_bias\":{\"5\":101}}", "logit_bias.5"},
        {API_KIND_CHAT, "{" MSG ",\"logit_bias\":{\"5\":\"1\"}}", "logit_bias.5"},
        {API_KIND_CHAT, "{" MSG ",\"logit_bias\":{\"5\":1,\"05\":2}}", "logit_bias.05"},
        {API_KIND_CHAT, "{" MSG ",\"seed\":-1.5}", "seed"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct api_request r;
        struct api_error e = {0};
        int rc = api_request_parse(cases[i].kind, cases[i].body, strlen(cases[i].body), 1000, &r, &e);
        cr_expect_lt(rc, 0, "case %zu (%s) accepted", i, cases[i].body);
        if (rc >= 0) {
            api_request_finish(&r);
            continue;
        }
        cr_expect_eq(e.status, 400, "case %zu", i);
        cr_expect_str_eq(e.param, cases[i].param, "case %zu (%s): %s", i, cases[i].body, e.message);
    }
    /* The message names the field, as the issue asks. */
    struct api_request r;
    struct api_error e = {0};
    const char *b = "{" MSG ",\"web_search_options\":{}}";
    cr_assert_lt(parse_chat(b, &r, &e), 0);
    cr_expect(strstr(e.message, "'web_search_options' is not supported by inferd"), "%s", e.message);
    b = "{" MSG ",\"frobnicate\":1}";
    cr_assert_lt(parse_chat(b, &r, &e), 0);
    cr_expect(strstr(e.message, "'frobnicate' is not supported by inferd"), "%s", e.message);
}

Test(api_fields, table_lookup)
{
    bool refused = true;
    cr_expect(api_field_known("logit_bias", API_FIELDS_CHAT, &refused) && !refused);
    cr_expect(api_field_known("user", API_FIELDS_COMPLETION, &refused) && !refused);
    cr_expect(api_field_known("grammar", API_FIELDS_COMPLETION, &refused) && !refused);
    cr_expect(api_field_known("suffix", API_FIELDS_COMPLETION, &refused) && refused);
    cr_expect(!api_field_known("echo", API_FIELDS_CHAT, NULL));
    cr_expect(!api_field_known("frobnicate", API_FIELDS_CHAT | API_FIELDS_COMPLETION, NULL));
    cr_expect(!api_field_known("messages", API_FIELDS_TOKENIZE, NULL));
}

Test(api_fields, noops_and_nulls_are_accepted)
{
    struct api_request r;
    struct api_error e = {0};
    /* null is "not given" for every field, refused ones included */
    const char *b = "{" MSG ",\"tools\":null,\"response_format\":null,\"user\":\"x\",\"safety_identifier\":\"s\","
                    "\"prompt_cache_key\":\"k\",\"metadata\":{},\"store\":false,\"service_tier\":\"default\","
                    "\"n\":1,\"stream\":true,\"stream_options\":{\"include_usage\":false}}";
    cr_assert_eq(parse_chat(b, &r, &e), 0, "%s", e.message);
    cr_expect_eq(r.n, 1);
    api_request_finish(&r);
    cr_assert_eq(parse_cmpl("{\"prompt\":\"x\",\"echo\":false,\"best_of\":1,\"user\":\"u\"}", &r, &e), 0, "%s",
                 e.message);
    api_request_finish(&r);
}

Test(api_fields, logit_bias_repeat_penalty_seed)
{
    struct api_request r;
    struct api_error e = {0};
    const char *b = "{" MSG ",\"logit_bias\":{\"5\":-100,\"999\":100,\"0\":0.5},\"repeat_penalty\":1.3}";
    cr_assert_eq(parse_chat(b, &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_logit_bias, 3);
    cr_expect_eq(r.logit_bias[0].token, 5);
    cr_expect_float_eq(r.logit_bias[0].bias, -100.0f, 1e-6);
    cr_expect_eq(r.logit_bias[1].token, 999);
    cr_expect_float_eq(r.logit_bias[2].bias, 0.5f, 1e-6);
    cr_expect_float_eq(r.sampling.repetition_penalty, 1.3f, 1e-6);
    /* checked again once the model is known */
    cr_expect_eq(api_check_logit_bias(&r, 1000, &e), 0);
    cr_expect_lt(api_check_logit_bias(&r, 999, &e), 0);
    cr_expect_str_eq(e.param, "logit_bias.999");
    api_request_finish(&r);
    /* the same value under both names is fine */
    b = "{" MSG ",\"repeat_penalty\":1.2,\"repetition_penalty\":1.2}";
    cr_assert_eq(parse_chat(b, &r, &e), 0, "%s", e.message);
    api_request_finish(&r);

    /* the limit on entries: 300 pass, 301 do not */
    for (int n = 300; n <= 301; n++) {
        char *body = malloc(32 + (size_t)n * 16 + sizeof(MSG));
        size_t off = (size_t)sprintf(body, "{" MSG ",\"logit_bias\":{");
        for (int i = 0; i < n; i++)
            off += (size_t)sprintf(body + off, "%s\"%d\":1", i ? "," : "", i);
        strcpy(body + off, "}}");
        int rc = parse_chat(body, &r, &e);
        if (n == 300) {
            cr_expect_eq(rc, 0, "%s", e.message);
            cr_expect_eq(r.n_logit_bias, 300);
            api_request_finish(&r);
        } else {
            cr_expect_lt(rc, 0);
            cr_expect_str_eq(e.param, "logit_bias");
        }
        free(body);
    }

    /* seed -1 asks for a random seed: two requests draw differently */
    b = "{" MSG ",\"seed\":-1}";
    uint64_t seeds[2];
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(parse_chat(b, &r, &e), 0, "%s", e.message);
        seeds[i] = r.sampling.seed;
        api_request_finish(&r);
    }
    cr_expect_neq(seeds[0], seeds[1]);
    cr_expect_neq(seeds[0], (uint64_t)-1);
    b = "{" MSG ",\"seed\":-2}";
    cr_assert_eq(parse_chat(b, &r, &e), 0, "%s", e.message);
    cr_expect_eq(r.sampling.seed, (uint64_t)-2, "other negative seeds are seeds");
    api_request_finish(&r);
}

Test(api_fields, tokenize_bodies_take_only_their_fields)
{
    size_t tl = 0;
    char *text = NULL, *model = NULL;
    bool add = false;
    int32_t *ids = NULL;
    size_t n = 0;
    struct api_error e = {0};
    const char *b = "{\"content\":\"hi\",\"with_pieces\":true}";
    cr_assert_lt(api_tokenize_parse(b, strlen(b), &text, &tl, &add, &model, &e), 0);
    cr_expect_str_eq(e.param, "with_pieces");
    b = "{\"tokens\":[1],\"skip_special\":true}";
    cr_assert_lt(api_detokenize_parse(b, strlen(b), 100, &ids, &n, &model, &e), 0);
    cr_expect_str_eq(e.param, "skip_special");
    b = "{\"tokens\":[1],\"model\":\"m\"}";
    cr_assert_eq(api_detokenize_parse(b, strlen(b), 100, &ids, &n, &model, &e), 0, "%s", e.message);
    free(ids);
    free(model);
}

/* Issue 13 item 7: streamed completions' text_offset runs on over the
 * stream, as in the non-streaming answer, and chunks carry their choice. */
Test(api_fields, streamed_text_offsets_are_cumulative)
{
    struct api_token_namer namer = {fake_name, NULL, NULL};
    struct api_response_meta mc = {API_KIND_COMPLETION, "cmpl-1", 1, "model-x"};
    struct api_logprob lp[3] = {{.token = 3}, {.token = 12}, {.token = 7}};
    struct api_chunk_pos pos = {2, 0};
    size_t n;
    static const int want[3] = {0, 2, 5}; /* "t3" "t12" then the 2-byte partial token */
    for (int i = 0; i < 3; i++) {
        char *s = api_chunk_sse_at(&mc, &pos, false, "x", 1, NULL, &lp[i], 1, true, false, &namer, &n);
        cJSON *j = cJSON_Parse(s + 6);
        cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
        cr_expect_eq(cJSON_GetObjectItem(c0, "index")->valueint, 2);
        cJSON *offs = cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "logprobs"), "text_offset");
        cr_expect_eq(cJSON_GetArrayItem(offs, 0)->valueint, want[i], "chunk %d: %s", i, s);
        cJSON_Delete(j);
        free(s);
    }
    cr_expect_eq(pos.text_offset, 7);
}

/* Issue 13 item 7: U+0000 in prompts, message content and /tokenize text
 * arrives whole, not cut where cJSON's C string ends. */
Test(api_fields, nul_in_strings)
{
    struct api_request r;
    struct api_error e = {0};
    const char *b = "{\"prompt\":\"a\\u0000b\\\\u0000c\\u0000\"}"; /* a NUL b \u0000(text) c NUL */
    cr_assert_eq(parse_cmpl(b, &r, &e), 0, "%s", e.message);
    static const char want[] = "a\0b\\u0000c";
    cr_assert_eq(r.prompt_len, sizeof(want), "%zu", r.prompt_len); /* the final NUL is the prompt's */
    cr_expect(memcmp(r.prompt, want, sizeof(want)) == 0);
    api_request_finish(&r);

    /* a body that already holds U+FDD0 (raw and escaped) gets another stand-in */
    b = "{\"prompt\":\"\xef\xb7\x90\\uFDD1\\u0000\"}";
    cr_assert_eq(parse_cmpl(b, &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.prompt_len, 7);
    cr_expect(memcmp(r.prompt, "\xef\xb7\x90\xef\xb7\x91\0", 7) == 0);
    cr_expect_eq(r.nul_sentinel, 0xFDD2);
    api_request_finish(&r);

    /* chat content keeps a stand-in until the template has rendered it */
    b = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\\u0000y\"}]}";
    cr_assert_eq(parse_chat(b, &r, &e), 0, "%s", e.message);
    cr_assert_neq(r.nul_sentinel, 0);
    const char *c = cJSON_GetObjectItem(cJSON_GetArrayItem(r.messages, 0), "content")->valuestring;
    char rendered[64];
    int n = snprintf(rendered, sizeof(rendered), "<u>%s</u>", c);
    size_t spans[2] = {3, (size_t)n - 4};
    size_t len = api_nul_restore(rendered, (size_t)n, r.nul_sentinel, spans, 2);
    cr_assert_eq(len, 10);
    cr_expect(memcmp(rendered, "<u>x\0y</u>", 10) == 0);
    cr_expect_eq(spans[0], 3);
    cr_expect_eq(spans[1], 6);
    api_request_finish(&r);

    /* stop strings cannot hold NUL (they are C strings downstream): 400 */
    b = "{\"prompt\":\"x\",\"stop\":[\"a\\u0000\"]}";
    cr_assert_lt(parse_cmpl(b, &r, &e), 0);
    cr_expect_str_eq(e.param, "stop[0]");

    char *text = NULL, *model = NULL;
    size_t tl = 0;
    bool add;
    b = "{\"content\":\"\\u0000\\u0000z\"}";
    cr_assert_eq(api_tokenize_parse(b, strlen(b), &text, &tl, &add, &model, &e), 0, "%s", e.message);
    cr_expect_eq(tl, 3);
    cr_expect(memcmp(text, "\0\0z", 3) == 0);
    free(text);
}

static bool fake_special(void *ctx, int32_t id)
{
    (void)ctx;
    return id == 1;
}

/* echo: the first prompt token's logprob is null; special tokens take no
 * room in the text, so text_offset does not advance over them. */
Test(api_fields, echo_logprobs_json)
{
    struct api_token_namer namer = {fake_name, NULL, fake_special};
    struct api_response_meta mc = {API_KIND_COMPLETION, "cmpl-1", 1, "model-x"};
    struct api_logprob lp[3] = {{.token = 1, .is_null = true}, {.token = 3, .logprob = -2.0f}, {.token = 12}};
    struct api_usage u = {2, 1, 0};
    char *s = api_response_json(&mc, "t3t12", 5, "length", &u, lp, 3, true, &namer);
    cJSON *j = cJSON_Parse(s);
    cJSON *l = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs");
    cr_expect(cJSON_IsNull(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "token_logprobs"), 0)), "%s", s);
    cr_expect(cJSON_IsNull(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "top_logprobs"), 0)), "%s", s);
    cr_expect_float_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(l, "token_logprobs"), 1)->valuedouble, -2.0, 1e-6);
    cJSON *offs = cJSON_GetObjectItem(l, "text_offset");
    cr_expect_eq(cJSON_GetArrayItem(offs, 0)->valueint, 0);
    cr_expect_eq(cJSON_GetArrayItem(offs, 1)->valueint, 0, "the special token before it takes no room: %s", s);
    cr_expect_eq(cJSON_GetArrayItem(offs, 2)->valueint, 2);
    cJSON_Delete(j);
    free(s);

    /* n choices, index 0..n-1 */
    struct api_choice_out ch[2] = {{NULL, "a", 1, "stop", NULL, 0}, {NULL, "b", 1, "length", NULL, 0}};
    s = api_response_json_n(&mc, ch, 2, &u, false, &namer);
    j = cJSON_Parse(s);
    cJSON *c1 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 1);
    cr_expect_eq(cJSON_GetObjectItem(c1, "index")->valueint, 1);
    cr_expect_str_eq(cJSON_GetObjectItem(c1, "text")->valuestring, "b");
    cr_expect_str_eq(cJSON_GetObjectItem(c1, "finish_reason")->valuestring, "length");
    cJSON_Delete(j);
    free(s);

    /* max_tokens 0 only with echo, and only on completions */
    struct api_request r;
    struct api_error e = {0};
    cr_assert_eq(parse_cmpl("{\"prompt\":\"x\",\"echo\":true,\"max_tokens\":0,\"logprobs\":1}", &r, &e), 0, "%s",
                 e.message);
    cr_expect(r.echo);
    cr_expect_eq(r.max_tokens, 0);
    api_request_finish(&r);
    cr_assert_lt(parse_cmpl("{\"prompt\":\"x\",\"max_tokens\":0}", &r, &e), 0);
    cr_expect_str_eq(e.param, "max_tokens");
}

/* A choice's text reaches the client whole: U+0000 (an echoed prompt may
 * hold it) is escaped rather than ending the string, as are quotes and
 * control characters. */
Test(api_fields, text_with_nul_is_escaped)
{
    struct api_token_namer namer = {fake_name, NULL, NULL};
    struct api_response_meta mc = {API_KIND_COMPLETION, "cmpl-1", 1, "model-x"};
    struct api_usage u = {1, 1, 0};
    static const char text[] = "a\0b\"c\nd\x01\\";
    char *s = api_response_json(&mc, text, sizeof(text) - 1, "stop", &u, NULL, 0, false, &namer);
    cr_expect(strstr(s, "\"text\":\"a\\u0000b\\\"c\\nd\\u0001\\\\\""), "%s", s);
    cJSON *j = cJSON_Parse(s);
    cr_expect(j != NULL, "still JSON: %s", s);
    cJSON_Delete(j);
    free(s);
    size_t n;
    s = api_chunk_sse(&mc, false, text, 3, NULL, NULL, 0, false, false, &namer, &n);
    cr_expect(strstr(s, "\"text\":\"a\\u0000b\""), "%s", s);
    free(s);
}
