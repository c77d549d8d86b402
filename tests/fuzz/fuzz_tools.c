/* fuzz_tools.c - the reply parsers of daemon/tools.c (tool calls in every
 * format, think markers), which read what a model generated: with random
 * or adversarial weights that is any text.
 *
 * Input: byte 0 picks the format (bits 0-1), reasoning (bit 2), a reply that
 * starts inside <think> (bit 3); byte 1 is the piece size of the streamed
 * feed (1 + byte % 16); the rest is the reply (valid UTF-8, as the
 * scheduler hands it).
 * Checked: the whole-reply message is built; feeding the reply in pieces
 * gives the same deltas merged (content, reasoning, call names and
 * arguments); every call's arguments are a JSON object; with no calls and
 * no reasoning, content is the reply byte for byte (nothing lost or
 * invented). */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "fuzz.h"
#include "tools.h"

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static void fail(const char *what, const cJSON *a, const cJSON *b)
{
    char *x = cJSON_PrintUnformatted(a), *y = b ? cJSON_PrintUnformatted(b) : NULL;
    fprintf(stderr, "fuzz_tools: %s\n  whole:  %s\n  pieces: %s\n", what, x ? x : "?", y ? y : "-");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const char *text = (const char *)data + 2;
    size_t len = size - 2;
    if (!api_utf8_valid(text, len, NULL) || memchr(text, 0, len))
        return 0;
    struct tools_output_cfg cfg = {
        .parse_calls = true,
        .format = (enum tools_format)(data[0] & 3),
        .reasoning = data[0] & 4,
        .starts_in_reasoning = (data[0] & 4) && (data[0] & 8),
    };
    size_t piece = 1 + data[1] % 16;
    int calls = 0;
    cJSON *whole = tools_message_from_text(&cfg, text, len, &calls);
    if (!whole)
        return 0; /* allocation failure (allocator_may_return_null) */

    tools_stream *s = tools_stream_create(&cfg);
    cJSON *msg = cJSON_CreateObject();
    for (size_t off = 0; s && off <= len; off += piece) {
        size_t n = off + piece <= len ? piece : len - off;
        cJSON *deltas = cJSON_CreateArray();
        if (tools_stream_feed(s, text + off, n, off + n == len, deltas) < 0)
            abort();
        const cJSON *d;
        cJSON_ArrayForEach(d, deltas)
            tools_delta_merge(msg, d);
        cJSON_Delete(deltas);
        if (off + n == len)
            break;
    }
    if (!s || tools_stream_calls(s) != calls)
        fail("call count differs", whole, msg);
    if (strcmp(str_of(whole, "content"), str_of(msg, "content")) ||
        strcmp(str_of(whole, "reasoning_content"), str_of(msg, "reasoning_content")))
        fail("text differs", whole, msg);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(whole, "tool_calls");
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(msg, "tool_calls");
    if (cJSON_GetArraySize(a) != calls || cJSON_GetArraySize(b) != calls)
        fail("tool_calls length", whole, msg);
    for (int i = 0; i < calls; i++) {
        const cJSON *fa = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(a, i), "function");
        const cJSON *fb = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(b, i), "function");
        if (!cJSON_Compare(fa, fb, true))
            fail("call differs", whole, msg);
        cJSON *args = cJSON_Parse(str_of(fa, "arguments"));
        if (!cJSON_IsObject(args))
            fail("arguments are not a JSON object", whole, NULL);
        cJSON_Delete(args);
    }
    if (calls == 0 && !cfg.reasoning && (strlen(str_of(whole, "content")) != len ||
                                         memcmp(str_of(whole, "content"), text, len)))
        fail("a reply without calls is not its content", whole, NULL);
    tools_stream_destroy(s);
    cJSON_Delete(msg);
    cJSON_Delete(whole);
    return 0;
}

void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    static const struct {
        uint8_t flags;
        const char *name, *reply;
    } seeds[] = {
        {TOOLS_FMT_HERMES | 4, "hermes",
         "<think>\nweather\n</think>\n\nChecking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
         "{\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"t\", \"arguments\": \"{}\"}\n</tool_call>"},
        {TOOLS_FMT_GENERIC | 12, "think-open", "hmm</think>ok <tool_call>{\"name\": \"f\"}"},
        {TOOLS_FMT_LLAMA3, "llama3", "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"a\": [1, {\"b\": null}]}}"},
        {TOOLS_FMT_MISTRAL, "mistral", "x [TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}, {\"name\": \"g\"}]"},
    };
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        size_t n = strlen(seeds[i].reply);
        uint8_t *buf = malloc(n + 2);
        if (!buf)
            return;
        buf[0] = seeds[i].flags;
        buf[1] = (uint8_t)(3 * i);
        memcpy(buf + 2, seeds[i].reply, n);
        add(ctx, seeds[i].name, buf, n + 2);
        free(buf);
    }
}
