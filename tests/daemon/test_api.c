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
        "\"stream_options\":{\"include_usage\":true},\"unknown_field\":{\"ignored\":[1,2]}}";
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
        {API_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", "n"},
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

/* {"x": [[...[1]...]]} with `levels` levels in all, the object included. */
static char *nested_body(int levels)
{
    char *body = malloc((size_t)levels * 2 + 64);
    strcpy(body, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"x\":");
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
    /* At the limit: parsed (the unknown field is ignored). */
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
    bool add = true;
    char *model = NULL;
    cr_assert_lt(api_tokenize_parse(deep, strlen(deep), &text, &add, &model, &e), 0);
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
    struct api_token_namer namer = {fake_name, NULL};
    struct api_response_meta m = {API_KIND_CHAT, "chatcmpl-1", 1700000000, "model-x"};
    struct api_usage u = {5, 2};
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
    char *text = NULL, *model = NULL;
    bool add = false;
    struct api_error e = {0};
    const char *b = "{\"content\":\"hi\",\"add_special\":false}";
    cr_assert_eq(api_tokenize_parse(b, strlen(b), &text, &add, &model, &e), 0, "%s", e.message);
    cr_assert_str_eq(text, "hi");
    cr_assert(!add);
    cr_assert_null(model);
    free(text);
    b = "{\"content\":\"hi\",\"model\":\"small\"}";
    cr_assert_eq(api_tokenize_parse(b, strlen(b), &text, &add, &model, &e), 0, "%s", e.message);
    cr_assert_str_eq(model, "small");
    free(text);
    free(model);
    model = NULL;
    b = "{\"content\":\"hi\",\"model\":3}";
    cr_assert_lt(api_tokenize_parse(b, strlen(b), &text, &add, &model, &e), 0);
    cr_assert_str_eq(e.param, "model");
    b = "{\"content\":1}";
    cr_assert_lt(api_tokenize_parse(b, strlen(b), &text, &add, &model, &e), 0);
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
        {"{\"input\":\"a\",\"user\":\"u\"}", "user"},
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
