/* tools.h - tool calling and reasoning output for /v1/chat/completions.
 *
 * Three jobs, all free of HTTP and of the engine so that they are unit-tested
 * alone (tests/daemon/test_tools.c):
 *   - the request side: `tools`, `tool_choice`, `chat_template_kwargs`, and
 *     the extra fields of tool and assistant messages, validated and bounded
 *     (400s naming the param), then put into the chat template's context the
 *     way transformers' apply_chat_template does;
 *   - the model side: from the template's text, which tool-call format the
 *     model was taught (Hermes/Qwen `<tool_call>`, Llama-3.x JSON, Mistral
 *     `[TOOL_CALLS]`) and whether it thinks between `<think>` markers;
 *   - the output side: a streaming parser that turns generated text into
 *     OpenAI deltas (content, reasoning_content, tool_calls fragments),
 *     holding back text that may begin a marker. The non-streaming message
 *     is the merge of the same deltas, so both paths agree by construction.
 *
 * Enforcing tool_choice "required" or a named function needs constrained
 * decoding: tools_call_grammar() builds the GBNF the output must match and
 * tools_call_schema() the JSON Schema of a call; see docs/http-api.md. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

struct api_error;

/* Limits on what a request may send (OpenAI allows 128 tools). */
#define TOOLS_MAX 128
#define TOOLS_MAX_NAME 64                /* function names: [A-Za-z0-9_-]{1,64}, as OpenAI */
#define TOOLS_MAX_DESCRIPTION (16 << 10) /* bytes */
#define TOOLS_MAX_SCHEMA (64 << 10)      /* bytes of one function's parameters, as compact JSON */
#define TOOLS_MAX_CALLS 128              /* tool_calls of one assistant message */
#define TOOLS_MAX_ARGUMENTS (64 << 10)   /* bytes of one call's arguments string */
#define TOOLS_MAX_CALL_ID 256
#define TOOLS_MAX_KWARGS 32              /* chat_template_kwargs keys */
#define TOOLS_MAX_KWARGS_BYTES (64 << 10)

enum tools_choice {
    TOOLS_CHOICE_AUTO = 0,  /* the default when tools are given */
    TOOLS_CHOICE_NONE,      /* tools are not rendered; output is not parsed for calls */
    TOOLS_CHOICE_REQUIRED,  /* at least one call: needs constrained decoding */
    TOOLS_CHOICE_NAMED,     /* that function: needs constrained decoding */
};

/* The tool-related fields of one request. */
struct tools_request {
    cJSON *tools;            /* validated copy of "tools", NULL when absent or empty */
    enum tools_choice choice;
    char *choice_name;       /* TOOLS_CHOICE_NAMED: the function */
    cJSON *kwargs;           /* validated copy of "chat_template_kwargs", NULL when absent */
    bool one_call;           /* parallel_tool_calls false (with tool_choice required): at most one call */
};

/* Reads tools, tool_choice and chat_template_kwargs from a request body.
 * *ret is written only on success; free with tools_request_finish(). */
int tools_request_parse(const cJSON *root, struct tools_request *ret, struct api_error *e);
void tools_request_finish(struct tools_request *t); /* accepts a zeroed struct */

/* Validates the tool-related fields of message `idx` (role already
 * normalized to rs) and adds them to the normalized message nm:
 * assistant "tool_calls" (arguments parsed from their JSON string into an
 * object, as templates expect), tool "tool_call_id" and "name". */
int tools_message_extras(const cJSON *m, const char *rs, int idx, cJSON *nm, struct api_error *e);

/* What the output of a model looks like, from its chat template. */
enum tools_format {
    TOOLS_FMT_GENERIC = 0, /* the template knows no tools: our own system block, `<tool_call>` replies */
    TOOLS_FMT_HERMES,      /* Qwen2.5/Qwen3, Hermes: <tool_call>\n{"name":..,"arguments":{..}}\n</tool_call> */
    TOOLS_FMT_LLAMA3,      /* Llama-3.1/3.2: the whole reply is {"name":..,"parameters":{..}}, maybe after <|python_tag|> */
    TOOLS_FMT_MISTRAL,     /* [TOOL_CALLS][{"name":..,"arguments":{..}}, ...] */
};

enum tools_reasoning {
    TOOLS_REASONING_AUTO = 0, /* from the template: it mentions <think> and </think> */
    TOOLS_REASONING_NONE,     /* think markers are content */
    TOOLS_REASONING_THINK,    /* <think>...</think> is reasoning_content */
};

struct tools_template_info {
    enum tools_format format;
    bool renders_tools;       /* the template reads `tools` itself */
    bool reasoning;           /* split <think>...</think> into reasoning_content */
};

/* Detects from the template source (NULL: none, ChatML). `reasoning` is the
 * model's configured setting. */
void tools_template_detect(const char *source, enum tools_reasoning reasoning, struct tools_template_info *ret);

/* Fills the template context of a chat request: "messages" (a reference to
 * `messages`, or, for a template without tool support, a copy with the
 * generic tool block in the system message), "tools" unless tool_choice is
 * none, and each chat_template_kwargs key. *ret_untrusted receives the
 * globals that hold client text (NULL-terminated, malloc'd: the caller frees
 * the array, not the strings, which live in t). */
int tools_context_fill(cJSON *ctx, const cJSON *messages, const struct tools_request *t,
                       const struct tools_template_info *ti, const char ***ret_untrusted);

/* ---- output ---- */

/* How one response's text is read. */
struct tools_output_cfg {
    bool parse_calls;          /* tools given and tool_choice not none */
    enum tools_format format;
    bool reasoning;            /* split think markers */
    bool starts_in_reasoning;  /* the prompt itself ended by opening <think> */
};

/* Decides a response's output handling; prompt is the rendered prompt text.
 * Returns false when the text passes through unchanged (no tools, no
 * reasoning): the response is the plain one. */
bool tools_output_setup(const struct tools_request *t, const struct tools_template_info *ti, const char *prompt,
                        size_t prompt_len, struct tools_output_cfg *ret);

typedef struct tools_stream tools_stream;

tools_stream *tools_stream_create(const struct tools_output_cfg *cfg);
void tools_stream_destroy(tools_stream *s); /* accepts NULL */

/* Feeds generated text; appends to `deltas` (a cJSON array) the OpenAI
 * delta objects that are final now, in order: {"content": s},
 * {"reasoning_content": s}, {"tool_calls": [{"index", "id", "type",
 * "function": {"name", "arguments": ""}}]} then {"tool_calls": [{"index",
 * "function": {"arguments": s}}]}. Text that may begin a marker is held
 * until it cannot; `final` flushes everything (a call left open or
 * malformed becomes content). Returns 0 or -ENOMEM. */
int tools_stream_feed(tools_stream *s, const char *text, size_t len, bool final, cJSON *deltas);
/* Calls emitted so far. */
int tools_stream_calls(const tools_stream *s);

/* The chat message of a whole response: the merge of the stream's deltas
 * ({"role":"assistant","content": string or null, "reasoning_content"?,
 * "tool_calls"?}). NULL on allocation failure. *ret_calls: the number of calls. */
cJSON *tools_message_from_text(const struct tools_output_cfg *cfg, const char *text, size_t len, int *ret_calls);

/* Adds one delta to a message being merged (the non-streaming response, or
 * a client reassembling a stream). */
void tools_delta_merge(cJSON *message, const cJSON *delta);

/* ---- constrained decoding (tool_choice required / named) ---- */

/* The GBNF grammar (llama.cpp dialect, root rule `root`) of a reply that is
 * one or more calls in `format`, to the named function only when
 * t->choice is TOOLS_CHOICE_NAMED. Each function's arguments are rule
 * `args-N` (N: its index in t->tools), an arbitrary JSON object here; a
 * schema-aware engine replaces it with the rule of that function's
 * parameters (tools_call_schema() gives them). malloc'd; NULL on ENOMEM. */
char *tools_call_grammar(enum tools_format format, const struct tools_request *t);
/* Only the rules around the calls: `root` (and `block`) in the template's
 * markup, with each call being rule call_rule, which the caller defines
 * (e.g. compiled from tools_call_schema()). malloc'd; NULL on ENOMEM. */
char *tools_call_wrapper_gbnf(enum tools_format format, const struct tools_request *t, const char *call_rule);
/* The JSON Schema of one call object {"name": const, "arguments": params}
 * (anyOf over the allowed functions). Caller deletes. */
cJSON *tools_call_schema(enum tools_format format, const struct tools_request *t);
