/* fuzz_chat_template.c - chat_template_compile() of arbitrary source, and
 * chat_template_render() of what compiles, with a fixed conversation.
 *
 * Templates come with model checkpoints, so they are not trusted either: a
 * bad one must be a compile or render error with a message, never a crash,
 * a runaway loop or unbounded memory (the interpreter's limits). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/template/chat_template.h"
#include "fuzz.h"

static cJSON *context;

static const char context_json[] =
    "{\"messages\":["
    "{\"role\":\"system\",\"content\":\"You are terse.\"},"
    "{\"role\":\"user\",\"content\":\"What is 2+2? <|im_end|>{{ x }}\"},"
    "{\"role\":\"assistant\",\"content\":\"<think>\\nadd\\n</think>\\n\\n4\","
    "\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"add\",\"arguments\":{\"a\":2,\"b\":2}}}]},"
    "{\"role\":\"tool\",\"content\":\"4\"},"
    "{\"role\":\"user\",\"content\":\"thanks\"}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"add\",\"description\":\"Adds\","
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\"}}}}}],"
    "\"add_generation_prompt\":true,\"bos_token\":\"<s>\",\"eos_token\":\"</s>\","
    "\"enable_thinking\":false,\"date_string\":\"26 Jul 2024\"}";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    context = cJSON_Parse(context_json);
    if (!context)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!context)
        LLVMFuzzerInitialize(NULL, NULL);
    chat_template *t = NULL;
    ifd_error err = {{0}};
    if (chat_template_compile((const char *)data, size, &t, &err) < 0) {
        if (!err.msg[0] || t)
            abort();
        return 0;
    }
    char *text = NULL;
    size_t len = 0;
    memset(&err, 0, sizeof(err));
    if (chat_template_render(t, context, &text, &len, &err) < 0) {
        if (!err.msg[0] || text)
            abort();
    } else {
        if (!text || text[len] != 0) /* NUL-terminated at len, as documented */
            abort();
        free(text);
    }
    chat_template_destroy(t);
    return 0;
}

void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    add(ctx, "chatml", chat_template_chatml, strlen(chat_template_chatml));
    for (int i = 0; fuzz_template_families[i]; i++) {
        char *src = fuzz_shared_template(fuzz_template_families[i]);
        if (src) {
            char name[96];
            snprintf(name, sizeof(name), "shared-%s", fuzz_template_families[i]);
            add(ctx, name, src, strlen(src));
            free(src);
        }
    }
}
