/* test_tools.c - tool calling and reasoning (daemon/tools.c): request
 * validation (tools, tool_choice, chat_template_kwargs, tool messages),
 * format detection from templates, the reply parsers of every format,
 * whole and fed in pieces, malformed calls, and the GBNF of
 * tool_choice. Replies and requests are untrusted: malformed ones must give
 * content or a 400 naming the field, never a crash (ASan+UBSan too). */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "tools.h"

#define WEATHER_TOOL                                                                                              \
    "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Weather of a city\","     \
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}}}"
#define TIME_TOOL "{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}"

static int parse_chat(const char *body, struct api_request *r, struct api_error *e)
{
    return api_request_parse(API_KIND_CHAT, body, strlen(body), 1000, r, e);
}

/* A chat body with the given extra fields after a one-user-message list. */
static int parse_with(const char *extra, struct api_request *r, struct api_error *e)
{
    char *body = NULL;
    cr_assert(asprintf(&body, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]%s%s}", extra[0] ? "," : "",
                       extra) > 0);
    int rc = parse_chat(body, r, e);
    free(body);
    return rc;
}

static void expect_400(const char *extra, const char *param)
{
    struct api_request r;
    struct api_error e = {0};
    cr_assert_lt(parse_with(extra, &r, &e), 0, "accepted: %s", extra);
    cr_assert_eq(e.status, 400);
    cr_assert_str_eq(e.param, param, "%s: param %s (%s)", extra, e.param, e.message);
}

Test(tools, request_tools_and_choice)
{
    struct api_request r;
    struct api_error e = {0};
    cr_assert_eq(parse_with("\"tools\":[" WEATHER_TOOL "," TIME_TOOL "],\"tool_choice\":\"auto\"", &r, &e), 0, "%s",
                 e.message);
    cr_assert_eq(cJSON_GetArraySize(r.tools.tools), 2);
    cr_assert_eq(r.tools.choice, TOOLS_CHOICE_AUTO);
    api_request_finish(&r);

    cr_assert_eq(parse_with("\"tools\":[" WEATHER_TOOL "],\"tool_choice\":{\"type\":\"function\",\"function\":"
                            "{\"name\":\"get_weather\"}}", &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.tools.choice, TOOLS_CHOICE_NAMED);
    cr_assert_str_eq(r.tools.choice_name, "get_weather");
    api_request_finish(&r);

    cr_assert_eq(parse_with("\"tools\":[],\"tool_choice\":\"none\"", &r, &e), 0, "%s", e.message);
    cr_assert_null(r.tools.tools, "an empty list is no tools");
    cr_assert_eq(r.tools.choice, TOOLS_CHOICE_NONE);
    api_request_finish(&r);
}

Test(tools, request_tools_invalid)
{
    expect_400("\"tools\":{}", "tools");
    expect_400("\"tools\":[1]", "tools[0]");
    expect_400("\"tools\":[{\"type\":\"retrieval\"}]", "tools[0].type");
    expect_400("\"tools\":[{\"type\":\"function\"}]", "tools[0].function");
    expect_400("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"has space\"}}]", "tools[0].function.name");
    expect_400("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"\"}}]", "tools[0].function.name");
    expect_400("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
               "\"a1234567890123456789012345678901234567890123456789012345678901234\"}}]",
               "tools[0].function.name");
    expect_400("\"tools\":[" TIME_TOOL "," TIME_TOOL "]", "tools[1].function.name");
    expect_400("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":[]}}]",
               "tools[0].function.parameters");
    expect_400("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"description\":7}}]",
               "tools[0].function.description");
    expect_400("\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"strict\":\"yes\"}}]",
               "tools[0].function.strict");
    expect_400("\"tool_choice\":\"sometimes\"", "tool_choice");
    expect_400("\"tool_choice\":\"required\"", "tool_choice");
    expect_400("\"tools\":[" TIME_TOOL "],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"nope\"}}",
               "tool_choice");
    expect_400("\"tools\":[" TIME_TOOL "],\"tool_choice\":{\"function\":{\"name\":\"get_time\"}}", "tool_choice");
    /* false holds only where a grammar enforces the calls */
    expect_400("\"tools\":[" TIME_TOOL "],\"parallel_tool_calls\":false", "parallel_tool_calls");
    expect_400("\"parallel_tool_calls\":1", "parallel_tool_calls");
}

Test(tools, request_tools_bounds)
{
    /* TOOLS_MAX + 1 tools, and one schema over TOOLS_MAX_SCHEMA. */
    size_t cap = (size_t)(TOOLS_MAX + 1) * 80 + TOOLS_MAX_SCHEMA + 256;
    char *extra = malloc(cap);
    size_t n = (size_t)sprintf(extra, "\"tools\":[");
    for (int i = 0; i <= TOOLS_MAX; i++)
        n += (size_t)sprintf(extra + n, "%s{\"type\":\"function\",\"function\":{\"name\":\"f%d\"}}", i ? "," : "", i);
    sprintf(extra + n, "]");
    expect_400(extra, "tools");
    n = (size_t)sprintf(extra, "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":"
                               "{\"description\":\"");
    memset(extra + n, 'x', TOOLS_MAX_SCHEMA);
    n += TOOLS_MAX_SCHEMA;
    sprintf(extra + n, "\"}}}]");
    expect_400(extra, "tools[0].function.parameters");
    free(extra);
}

Test(tools, request_kwargs)
{
    struct api_request r;
    struct api_error e = {0};
    cr_assert_eq(parse_with("\"chat_template_kwargs\":{\"enable_thinking\":false,\"date_string\":\"today\"}", &r, &e),
                 0, "%s", e.message);
    cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(r.tools.kwargs, "enable_thinking")));
    api_request_finish(&r);
    expect_400("\"chat_template_kwargs\":[]", "chat_template_kwargs");
    expect_400("\"chat_template_kwargs\":{\"messages\":[]}", "chat_template_kwargs");
    expect_400("\"chat_template_kwargs\":{\"bos_token\":\"x\"}", "chat_template_kwargs");
    expect_400("\"chat_template_kwargs\":{\"tools\":[]}", "chat_template_kwargs");
    expect_400("\"chat_template_kwargs\":{\"not-an-identifier\":1}", "chat_template_kwargs");
    expect_400("\"chat_template_kwargs\":{\"a\":1,\"a\":2}", "chat_template_kwargs");
    char extra[2048];
    size_t n = (size_t)sprintf(extra, "\"chat_template_kwargs\":{");
    for (int i = 0; i <= TOOLS_MAX_KWARGS; i++)
        n += (size_t)sprintf(extra + n, "%s\"k%d\":1", i ? "," : "", i);
    sprintf(extra + n, "}");
    expect_400(extra, "chat_template_kwargs");
}

Test(tools, tool_messages)
{
    struct api_request r;
    struct api_error e = {0};
    const char *body =
        "{\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
        "\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\": \\\"Paris\\\"}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"name\":\"get_weather\",\"content\":\"sunny\"},"
        "{\"role\":\"assistant\",\"content\":\"Sunny.\",\"reasoning_content\":\"it said sunny\"}]}";
    cr_assert_eq(parse_chat(body, &r, &e), 0, "%s", e.message);
    cJSON *a = cJSON_GetArrayItem(r.messages, 1);
    cJSON *fn = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(a, "tool_calls"), 0), "function");
    cr_assert_str_eq(cJSON_GetObjectItem(fn, "name")->valuestring, "get_weather");
    /* Templates get the arguments as an object, as transformers gives them. */
    cJSON *args = cJSON_GetObjectItem(fn, "arguments");
    cr_assert(cJSON_IsObject(args));
    cr_assert_str_eq(cJSON_GetObjectItem(args, "city")->valuestring, "Paris");
    cr_assert_str_eq(cJSON_GetObjectItem(a, "content")->valuestring, "");
    cJSON *t = cJSON_GetArrayItem(r.messages, 2);
    cr_assert_str_eq(cJSON_GetObjectItem(t, "role")->valuestring, "tool");
    cr_assert_str_eq(cJSON_GetObjectItem(t, "tool_call_id")->valuestring, "call_1");
    cr_assert_str_eq(cJSON_GetObjectItem(t, "name")->valuestring, "get_weather");
    cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(r.messages, 3), "reasoning_content")->valuestring,
                     "it said sunny");
    api_request_finish(&r);
}

static void expect_msg_400(const char *msgs, const char *param)
{
    char *body = NULL;
    cr_assert(asprintf(&body, "{\"messages\":[%s]}", msgs) > 0);
    struct api_request r;
    struct api_error e = {0};
    cr_assert_lt(parse_chat(body, &r, &e), 0, "accepted: %s", msgs);
    cr_assert_str_eq(e.param, param, "%s: param %s (%s)", msgs, e.param, e.message);
    free(body);
}

Test(tools, tool_messages_invalid)
{
    expect_msg_400("{\"role\":\"tool\",\"content\":\"x\"}", "messages[0].tool_call_id");
    expect_msg_400("{\"role\":\"tool\",\"tool_call_id\":\"c\"}", "messages[0].content");
    expect_msg_400("{\"role\":\"tool\",\"tool_call_id\":\"c\",\"name\":\"a b\",\"content\":\"x\"}", "messages[0].name");
    expect_msg_400("{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[]}", "messages[0].tool_calls");
    expect_msg_400("{\"role\":\"assistant\",\"tool_calls\":{}}", "messages[0].tool_calls");
    expect_msg_400("{\"role\":\"assistant\",\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}",
                   "messages[0].tool_calls[0].id");
    expect_msg_400("{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"function\":{\"name\":\"f\","
                   "\"arguments\":\"{not json\"}}]}",
                   "messages[0].tool_calls[0].function.arguments");
    expect_msg_400("{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"function\":{\"name\":\"f\","
                   "\"arguments\":\"[1]\"}}]}",
                   "messages[0].tool_calls[0].function.arguments");
    expect_msg_400("{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"type\":\"x\",\"function\":{\"name\":\"f\"}}]}",
                   "messages[0].tool_calls[0].type");
    expect_msg_400("{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\"}]}", "messages[0].tool_calls[0].function");
    expect_msg_400("{\"role\":\"assistant\",\"content\":\"x\",\"reasoning_content\":1}", "messages[0].reasoning_content");
    expect_msg_400("{\"role\":\"user\",\"content\":\"x\",\"reasoning_content\":\"r\"}", "messages[0].reasoning_content");
    /* Arguments nested past the limit, inside a string the body's own depth check cannot see into. */
    char deep[400] = "{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"function\":{\"name\":\"f\",\"arguments\":\"";
    size_t n = strlen(deep);
    for (int i = 0; i < 70; i++)
        deep[n++] = i ? '[' : '{';
    strcpy(deep + n, "\"}}]}");
    expect_msg_400(deep, "messages[0].tool_calls[0].function.arguments");
}

Test(tools, detect_templates)
{
    struct tools_template_info ti;
    tools_template_detect("{% if tools %}<tool_call>{% endif %}<think></think>", TOOLS_REASONING_AUTO, &ti);
    cr_assert_eq(ti.format, TOOLS_FMT_HERMES);
    cr_assert(ti.renders_tools);
    cr_assert(ti.reasoning);
    tools_template_detect("{{ tools }}<|start_header_id|>{\"name\": name, \"parameters\": x}<|python_tag|>",
                          TOOLS_REASONING_AUTO, &ti);
    cr_assert_eq(ti.format, TOOLS_FMT_LLAMA3);
    cr_assert_not(ti.reasoning);
    tools_template_detect("{{ tools }}[AVAILABLE_TOOLS][TOOL_CALLS]", TOOLS_REASONING_AUTO, &ti);
    cr_assert_eq(ti.format, TOOLS_FMT_MISTRAL);
    tools_template_detect("{% for m in messages %}{{ m.content }}{% endfor %}", TOOLS_REASONING_THINK, &ti);
    cr_assert_eq(ti.format, TOOLS_FMT_GENERIC);
    cr_assert_not(ti.renders_tools);
    cr_assert(ti.reasoning, "reasoning = think forces it");
    tools_template_detect("<think></think>", TOOLS_REASONING_NONE, &ti);
    cr_assert_not(ti.reasoning, "reasoning = none turns it off");
    tools_template_detect(NULL, TOOLS_REASONING_AUTO, &ti);
    cr_assert_eq(ti.format, TOOLS_FMT_GENERIC);
}

static struct tools_output_cfg cfg_of(enum tools_format f, bool reasoning, bool in_reasoning)
{
    return (struct tools_output_cfg){.parse_calls = true, .format = f, .reasoning = reasoning,
                                     .starts_in_reasoning = in_reasoning};
}

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The message of a whole reply, checked to equal the merge of the same
 * reply streamed one byte at a time (every possible split of a marker). */
static cJSON *message_of(struct tools_output_cfg cfg, const char *text, int *ret_calls)
{
    cJSON *whole = tools_message_from_text(&cfg, text, strlen(text), ret_calls);
    cr_assert_not_null(whole);
    tools_stream *s = tools_stream_create(&cfg);
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "role", "assistant");
    cJSON_AddNullToObject(msg, "content");
    size_t n = strlen(text);
    for (size_t i = 0; i <= n; i++) {
        cJSON *deltas = cJSON_CreateArray();
        cr_assert_eq(tools_stream_feed(s, text + i, i < n ? 1 : 0, i == n, deltas), 0);
        const cJSON *d;
        cJSON_ArrayForEach(d, deltas) {
            /* Each delta is one kind, as OpenAI sends them. */
            cr_assert_eq(cJSON_GetArraySize(d), 1, "%s", cJSON_PrintUnformatted(d));
            tools_delta_merge(msg, d);
        }
        cJSON_Delete(deltas);
    }
    cr_assert_eq(tools_stream_calls(s), *ret_calls);
    tools_stream_destroy(s);
    /* Ids are random: compare everything else. */
    cJSON *a = cJSON_GetObjectItem(whole, "tool_calls"), *b = cJSON_GetObjectItem(msg, "tool_calls");
    cr_assert_eq(cJSON_GetArraySize(a), cJSON_GetArraySize(b));
    for (int i = 0; i < cJSON_GetArraySize(a); i++) {
        cJSON *ca = cJSON_GetArrayItem(a, i), *cb = cJSON_GetArrayItem(b, i);
        cr_assert_eq(strncmp(str_of(ca, "id"), "call_", 5), 0);
        cr_assert_eq(strlen(str_of(ca, "id")), 29);
        cr_assert_str_neq(str_of(ca, "id"), str_of(cb, "id"));
        cr_assert(cJSON_Compare(cJSON_GetObjectItem(ca, "function"), cJSON_GetObjectItem(cb, "function"), true));
    }
    const char *ca = str_of(whole, "content"), *cb = str_of(msg, "content");
    if (*ret_calls > 0 || cb)
        cr_assert((ca == NULL) == (cb == NULL || cb[0] == '\0'), "content %s / %s", ca ? ca : "null", cb ? cb : "null");
    if (ca && cb)
        cr_assert_str_eq(ca, cb);
    cr_assert((str_of(whole, "reasoning_content") == NULL) == (str_of(msg, "reasoning_content") == NULL));
    if (str_of(whole, "reasoning_content"))
        cr_assert_str_eq(str_of(whole, "reasoning_content"), str_of(msg, "reasoning_content"));
    cJSON_Delete(msg);
    return whole;
}

static const cJSON *call_fn(const cJSON *msg, int i)
{
    return cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(msg, "tool_calls"), i), "function");
}

Test(tools, parse_hermes_calls)
{
    int calls;
    cJSON *m = message_of(cfg_of(TOOLS_FMT_HERMES, false, false),
                          "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
                          "</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
                          &calls);
    cr_assert_eq(calls, 2);
    cr_assert_str_eq(str_of(m, "content"), "Let me look.");
    cr_assert_str_eq(str_of(call_fn(m, 0), "name"), "get_weather");
    cr_assert_str_eq(str_of(call_fn(m, 0), "arguments"), "{\"city\":\"Paris\"}");
    cr_assert_str_eq(str_of(call_fn(m, 1), "name"), "get_time");
    cr_assert_str_eq(str_of(call_fn(m, 1), "arguments"), "{}");
    cr_assert_str_eq(str_of(cJSON_GetArrayItem(cJSON_GetObjectItem(m, "tool_calls"), 0), "type"), "function");
    cJSON_Delete(m);

    /* Only calls: content is null. Unclosed at the end but whole: a call. */
    m = message_of(cfg_of(TOOLS_FMT_GENERIC, false, false),
                   "<tool_call>\n{\"name\": \"get_time\", \"arguments\": \"{\\\"tz\\\": \\\"UTC\\\"}\"}\n", &calls);
    cr_assert_eq(calls, 1);
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(m, "content")));
    cr_assert_str_eq(str_of(call_fn(m, 0), "arguments"), "{\"tz\":\"UTC\"}");
    cJSON_Delete(m);
}

Test(tools, parse_malformed_stays_content)
{
    static const char *const replies[] = {
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": }\n</tool_call>",
        "<tool_call>\n{\"arguments\": {}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"bad name\", \"arguments\": {}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": [1]}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {}} trailing\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\", \"argum",
        "<tool_ca",
        "a < b and <tool> is not a call",
        "the space before a bad call stays \n<tool_call>\n{oops}\n</tool_call>",
    };
    for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
        int calls;
        cJSON *m = message_of(cfg_of(TOOLS_FMT_HERMES, false, false), replies[i], &calls);
        cr_assert_eq(calls, 0, "%s", replies[i]);
        cr_assert_str_eq(str_of(m, "content"), replies[i]);
        cr_assert_null(cJSON_GetObjectItem(m, "tool_calls"));
        cJSON_Delete(m);
    }
    /* A bad call between good ones stays content in its place. */
    int calls;
    cJSON *m = message_of(cfg_of(TOOLS_FMT_HERMES, false, false),
                          "<tool_call>{\"name\": \"a\"}</tool_call>\n<tool_call>{oops}</tool_call>\n"
                          "<tool_call>{\"name\": \"b\"}</tool_call>", &calls);
    cr_assert_eq(calls, 2);
    cr_assert_str_eq(str_of(m, "content"), "<tool_call>{oops}</tool_call>");
    cr_assert_str_eq(str_of(call_fn(m, 1), "name"), "b");
    cJSON_Delete(m);
}

Test(tools, parse_llama3)
{
    int calls;
    cJSON *m = message_of(cfg_of(TOOLS_FMT_LLAMA3, false, false),
                          "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}", &calls);
    cr_assert_eq(calls, 1);
    cr_assert_str_eq(str_of(call_fn(m, 0), "arguments"), "{\"city\":\"Oslo\"}");
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(m, "content")));
    cJSON_Delete(m);
    m = message_of(cfg_of(TOOLS_FMT_LLAMA3, false, false),
                   "<|python_tag|>{\"name\": \"get_time\", \"arguments\": {}}", &calls);
    cr_assert_eq(calls, 1);
    cr_assert_str_eq(str_of(call_fn(m, 0), "name"), "get_time");
    cJSON_Delete(m);
    /* Text first: no call, even with JSON later. */
    m = message_of(cfg_of(TOOLS_FMT_LLAMA3, false, false), "Sure: {\"name\": \"f\", \"parameters\": {}}", &calls);
    cr_assert_eq(calls, 0);
    cr_assert_str_eq(str_of(m, "content"), "Sure: {\"name\": \"f\", \"parameters\": {}}");
    cJSON_Delete(m);
    /* JSON that is no call is content. */
    m = message_of(cfg_of(TOOLS_FMT_LLAMA3, false, false), "{\"answer\": 42}", &calls);
    cr_assert_eq(calls, 0);
    cr_assert_str_eq(str_of(m, "content"), "{\"answer\": 42}");
    cJSON_Delete(m);
}

Test(tools, parse_mistral)
{
    int calls;
    cJSON *m = message_of(cfg_of(TOOLS_FMT_MISTRAL, false, false),
                          "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}, "
                          "{\"name\": \"get_time\", \"arguments\": {}}]", &calls);
    cr_assert_eq(calls, 2);
    cr_assert_str_eq(str_of(call_fn(m, 1), "name"), "get_time");
    cJSON_Delete(m);
    m = message_of(cfg_of(TOOLS_FMT_MISTRAL, false, false), "[TOOL_CALLS]{\"name\": \"get_time\"}", &calls);
    cr_assert_eq(calls, 0, "Mistral calls are an array");
    cr_assert_str_eq(str_of(m, "content"), "[TOOL_CALLS]{\"name\": \"get_time\"}");
    cJSON_Delete(m);
    /* Found by fuzz_tools: the space before a marker was lost when the call was no call. */
    m = message_of(cfg_of(TOOLS_FMT_MISTRAL, false, false), "x [TOOL_CALLS][{\"nname\": 1}]", &calls);
    cr_assert_eq(calls, 0);
    cr_assert_str_eq(str_of(m, "content"), "x [TOOL_CALLS][{\"nname\": 1}]");
    cJSON_Delete(m);
    m = message_of(cfg_of(TOOLS_FMT_LLAMA3, false, false), "  {\"answer\": 42}", &calls);
    cr_assert_str_eq(str_of(m, "content"), "  {\"answer\": 42}");
    cJSON_Delete(m);
}

Test(tools, reasoning_split)
{
    int calls;
    cJSON *m = message_of(cfg_of(TOOLS_FMT_HERMES, true, false),
                          "<think>\nThe user wants weather.\n</think>\n\nChecking.\n<tool_call>\n"
                          "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", &calls);
    cr_assert_eq(calls, 1);
    cr_assert_str_eq(str_of(m, "reasoning_content"), "\nThe user wants weather.\n");
    cr_assert_str_eq(str_of(m, "content"), "Checking.");
    cJSON_Delete(m);
    /* The prompt opened <think>: the reply starts inside it. */
    struct tools_output_cfg c = cfg_of(TOOLS_FMT_HERMES, true, true);
    c.parse_calls = false;
    m = message_of(c, "hmm, 2+2</think>4", &calls);
    cr_assert_str_eq(str_of(m, "reasoning_content"), "hmm, 2+2");
    cr_assert_str_eq(str_of(m, "content"), "4");
    cJSON_Delete(m);
    /* Never closed (cut at max_tokens): all reasoning, content null. */
    m = message_of(c, "still thinking <", &calls);
    cr_assert_str_eq(str_of(m, "reasoning_content"), "still thinking <");
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(m, "content")));
    cJSON_Delete(m);
    /* No <think> at the start: plain content, markers later are text. */
    c.starts_in_reasoning = false;
    m = message_of(c, "4 <think>x</think>", &calls);
    cr_assert_str_eq(str_of(m, "content"), "4 <think>x</think>");
    cr_assert_null(cJSON_GetObjectItem(m, "reasoning_content"));
    cJSON_Delete(m);
    /* Reasoning off: markers are content. */
    c.reasoning = false;
    m = message_of(c, "<think>x</think>y", &calls);
    cr_assert_str_eq(str_of(m, "content"), "<think>x</think>y");
    cJSON_Delete(m);
}

Test(tools, output_setup)
{
    struct tools_request t = {0};
    struct tools_template_info ti = {TOOLS_FMT_HERMES, true, true};
    struct tools_output_cfg c;
    const char *p = "<|im_start|>assistant\n<think>\n";
    cr_assert(tools_output_setup(&t, &ti, p, strlen(p), &c));
    cr_assert(c.starts_in_reasoning);
    cr_assert_not(c.parse_calls);
    p = "<|im_start|>assistant\n<think>\n\n</think>\n\n";
    cr_assert(tools_output_setup(&t, &ti, p, strlen(p), &c));
    cr_assert_not(c.starts_in_reasoning);
    ti.reasoning = false;
    cr_assert_not(tools_output_setup(&t, &ti, p, strlen(p), &c), "nothing to do: plain responses");
    t.tools = cJSON_CreateArray();
    cr_assert(tools_output_setup(&t, &ti, p, strlen(p), &c));
    cr_assert(c.parse_calls);
    t.choice = TOOLS_CHOICE_NONE;
    cr_assert_not(tools_output_setup(&t, &ti, p, strlen(p), &c), "tool_choice none: no call parsing");
    cJSON_Delete(t.tools);
}

/* The stream's first call fragment is exactly OpenAI's shape. */
Test(tools, stream_fragments)
{
    struct tools_output_cfg c = cfg_of(TOOLS_FMT_HERMES, false, false);
    tools_stream *s = tools_stream_create(&c);
    cJSON *d = cJSON_CreateArray();
    const char *a = "Hi <tool_", *b = "call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}</tool_call>";
    cr_assert_eq(tools_stream_feed(s, a, strlen(a), false, d), 0);
    cr_assert_eq(cJSON_GetArraySize(d), 1);
    cr_assert_str_eq(str_of(cJSON_GetArrayItem(d, 0), "content"), "Hi", "the marker's start and the space are held");
    cr_assert_eq(tools_stream_feed(s, b, strlen(b), false, d), 0);
    cr_assert_eq(cJSON_GetArraySize(d), 3);
    char *head = cJSON_PrintUnformatted(cJSON_GetArrayItem(d, 1));
    char *want = NULL;
    cJSON *h = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(d, 1), "tool_calls"), 0);
    cr_assert(asprintf(&want, "{\"tool_calls\":[{\"index\":0,\"id\":\"%s\",\"type\":\"function\",\"function\":"
                              "{\"name\":\"f\",\"arguments\":\"\"}}]}", str_of(h, "id")) > 0);
    cr_assert_str_eq(head, want);
    char *body = cJSON_PrintUnformatted(cJSON_GetArrayItem(d, 2));
    cr_assert_str_eq(body, "{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"x\\\":1}\"}}]}");
    cr_assert_eq(tools_stream_calls(s), 1);
    free(head);
    free(want);
    free(body);
    cJSON_Delete(d);
    tools_stream_destroy(s);
}

static struct tools_request two_tools(void)
{
    struct tools_request t = {0};
    t.tools = cJSON_Parse("[" WEATHER_TOOL "," TIME_TOOL "]");
    return t;
}

Test(tools, call_grammar)
{
    struct tools_request t = two_tools();
    t.choice = TOOLS_CHOICE_REQUIRED;
    char *g = tools_call_grammar(TOOLS_FMT_HERMES, &t);
    cr_assert_not_null(g);
    cr_assert_not_null(strstr(g, "root ::= block ( \"\\n\" block )*\n"), "%s", g);
    cr_assert_not_null(strstr(g, "block ::= \"<tool_call>\\n\" call \"\\n</tool_call>\"\n"), "%s", g);
    cr_assert_not_null(strstr(g, "call ::= call-0 | call-1\n"), "%s", g);
    cr_assert_not_null(strstr(g, "call-0 ::= \"{\\\"name\\\": \\\"get_weather\\\", \\\"arguments\\\": \" args-0 \"}\"\n"),
                       "%s", g);
    cr_assert_not_null(strstr(g, "args-1 ::= object\n"));
    cr_assert_not_null(strstr(g, "object ::= "));
    free(g);
    /* parallel_tool_calls false: one block, in the wrapper the daemon uses */
    t.one_call = true;
    g = tools_call_wrapper_gbnf(TOOLS_FMT_HERMES, &t, "c");
    cr_assert_str_eq(g, "block ::= \"<tool_call>\\n\" c \"\\n</tool_call>\"\nroot ::= block\n");
    free(g);
    t.one_call = false;
    g = tools_call_wrapper_gbnf(TOOLS_FMT_MISTRAL, &t, "c");
    cr_assert_str_eq(g, "root ::= \"[TOOL_CALLS][\" c ( \", \" c )* \"]\"\n");
    free(g);
    t.choice = TOOLS_CHOICE_NAMED;
    t.choice_name = strdup("get_time");
    g = tools_call_grammar(TOOLS_FMT_LLAMA3, &t);
    cr_assert_not_null(strstr(g, "root ::= call\n"), "%s", g);
    cr_assert_not_null(strstr(g, "call ::= call-1\n"), "%s", g);
    cr_assert_null(strstr(g, "call-0"), "only the named function: %s", g);
    cr_assert_not_null(strstr(g, "\\\"parameters\\\": \" args-1"), "%s", g);
    free(g);
    cJSON *schema = tools_call_schema(TOOLS_FMT_HERMES, &t);
    char *js = cJSON_PrintUnformatted(schema);
    cr_assert_str_eq(js, "{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"name\":{\"const\":\"get_time\"},"
                         "\"arguments\":{}},\"required\":[\"name\",\"arguments\"],\"additionalProperties\":false}]}");
    free(js);
    cJSON_Delete(schema);
    tools_request_finish(&t);
}

Test(tools, context_fill_generic_block)
{
    struct tools_request t = two_tools();
    cJSON *msgs = cJSON_Parse("[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"hi\"}]");
    struct tools_template_info ti = {TOOLS_FMT_GENERIC, false, false};
    cJSON *ctx = cJSON_CreateObject();
    const char **untrusted = NULL;
    cr_assert_eq(tools_context_fill(ctx, msgs, &t, &ti, &untrusted), 0);
    cr_assert_null(cJSON_GetObjectItem(ctx, "tools"), "the template cannot read them: they are in the system text");
    const char *sys = str_of(cJSON_GetArrayItem(cJSON_GetObjectItem(ctx, "messages"), 0), "content");
    cr_assert_eq(strncmp(sys, "Be brief.\n\n# Tools\n", 19), 0, "%s", sys);
    cr_assert_not_null(strstr(sys, "\n{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}\n</tools>"), "%s", sys);
    cr_assert_not_null(strstr(sys, "<tool_call>\n{\"name\": <function-name>"), "%s", sys);
    cr_assert_str_eq(untrusted[0], "messages");
    cr_assert_null(untrusted[1]);
    free(untrusted);
    cJSON_Delete(ctx);

    /* A template that renders tools gets them as the "tools" global, untrusted. */
    ti.renders_tools = true;
    t.kwargs = cJSON_Parse("{\"enable_thinking\":false}");
    ctx = cJSON_CreateObject();
    cr_assert_eq(tools_context_fill(ctx, msgs, &t, &ti, &untrusted), 0);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(ctx, "tools")), 2);
    cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(ctx, "enable_thinking")));
    cr_assert_str_eq(str_of(cJSON_GetArrayItem(cJSON_GetObjectItem(ctx, "messages"), 0), "content"), "Be brief.");
    cr_assert_str_eq(untrusted[1], "tools");
    cr_assert_str_eq(untrusted[2], "enable_thinking");
    cr_assert_null(untrusted[3]);
    free(untrusted);
    cJSON_Delete(ctx);

    /* tool_choice none: no tools at all. */
    t.choice = TOOLS_CHOICE_NONE;
    ctx = cJSON_CreateObject();
    cr_assert_eq(tools_context_fill(ctx, msgs, &t, &ti, &untrusted), 0);
    cr_assert_null(cJSON_GetObjectItem(ctx, "tools"));
    free(untrusted);
    cJSON_Delete(ctx);
    cJSON_Delete(msgs);
    tools_request_finish(&t);
}

Test(tools, chat_response_shapes)
{
    struct api_response_meta meta = {API_KIND_CHAT, "chatcmpl-x", 1, "m"};
    struct api_usage u = {3, 4, 0};
    cJSON *msg = cJSON_Parse("{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]}");
    char *s = api_chat_response_json(&meta, msg, "tool_calls", &u, NULL, 0, false, NULL);
    cr_assert_str_eq(s, "{\"id\":\"chatcmpl-x\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\","
                        "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":null,"
                        "\"tool_calls\":[]},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],"
                        "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7,"
                        "\"prompt_tokens_details\":{\"cached_tokens\":0}}}");
    free(s);
    size_t n;
    s = api_chat_delta_sse(&meta, NULL, cJSON_Parse("{\"reasoning_content\":\"r\"}"), NULL, NULL, 0, false, true, NULL, &n);
    cr_assert_str_eq(s, "data: {\"id\":\"chatcmpl-x\",\"object\":\"chat.completion.chunk\",\"created\":1,"
                        "\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"r\"},"
                        "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n");
    cr_assert_eq(n, strlen(s));
    free(s);
}
