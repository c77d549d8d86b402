/* api.h - the OpenAI-compatible request and response bodies.
 *
 * Parsing validates field by field: a wrong type or value is an api_error
 * carrying the HTTP status and the OpenAI error envelope (message, type,
 * param, code). Unknown fields are ignored, as OpenAI-compatible servers do.
 * Serialization builds the response JSON and the SSE chunks. This file knows
 * no tokenizer and no engine: the scheduler hands it text, token strings and
 * numbers, so it is unit-tested alone (tests/daemon/test_api.c). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "model/sampler.h"

/* Limits on what a request may ask for. */
#define API_MAX_STOP 4            /* as OpenAI */
#define API_MAX_STOP_LEN 256      /* bytes per stop string */
#define API_MAX_MESSAGES 4096
#define API_MAX_CONTENT_PARTS 256
#define API_MAX_TOP_LOGPROBS 20   /* as OpenAI */
#define API_MAX_PROMPT_IDS (1 << 20)
#define API_MAX_JSON_DEPTH 64

enum api_kind {
    API_KIND_CHAT = 0,   /* /v1/chat/completions */
    API_KIND_COMPLETION, /* /v1/completions */
};

struct api_error {
    int status;            /* HTTP status */
    const char *type;      /* "invalid_request_error", "authentication_error", ... */
    char param[64];        /* offending field ("messages[2].content"), "" = null */
    const char *code;      /* NULL = null */
    char message[512];
};

void api_error_set(struct api_error *e, int status, const char *type, const char *param, const char *code,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The envelope {"error":{...}}, malloc'd. NULL on allocation failure. */
char *api_error_json(const struct api_error *e);

/* A parsed generation request. */
struct api_request {
    enum api_kind kind;
    char *model;               /* NULL when absent */
    cJSON *messages;           /* chat: [{role, content: string}] normalized, owned */
    char *prompt;              /* completion with a text prompt */
    int32_t *prompt_ids;       /* completion with token ids: [n_prompt_ids] */
    size_t n_prompt_ids;
    int max_tokens;            /* -1: up to the context */
    struct sampler_params sampling;
    char *stop[API_MAX_STOP];  /* [n_stop], each non-empty */
    int n_stop;
    bool logprobs;
    int top_logprobs;          /* 0..API_MAX_TOP_LOGPROBS */
    bool stream;
    bool include_usage;        /* stream_options.include_usage */
    struct grammar *grammar;   /* output constraint (response_format, grammar, guided_*), owned; NULL: none */
};

/* The output constraint of a request (api_grammar.c): response_format,
 * grammar, json_schema, guided_json/regex/choice/grammar compiled into one
 * grammar. *ret is NULL when there is none. 400 naming the field (and the
 * keyword, line or offset at fault) when a constraint is malformed,
 * unsupported or more than one is given. */
struct grammar;
int api_parse_grammar(const cJSON *root, struct grammar **ret, struct api_error *err);

/* Parses and validates a body. `vocab_size` bounds token ids (0 = unchecked).
 * *ret is written only on success; free with api_request_finish(). */
int api_request_parse(enum api_kind kind, const char *body, size_t len, int vocab_size,
                      struct api_request *ret, struct api_error *err);
void api_request_finish(struct api_request *r); /* accepts a zeroed struct */

/* The model is named in the body, so a server with several models parses
 * with vocab_size 0 and checks the ids against the named model's vocabulary
 * afterwards; the message and param are those of the parse-time check. */
int api_check_token_ids(const int32_t *ids, size_t n, int vocab_size, const char *param, struct api_error *err);

/* /tokenize {"content": "...", "add_special": bool, "model": "..."} or
 * {"prompt": ...}; /detokenize {"tokens": [ids], "model": "..."}. *ret_model
 * is the optional model name (NULL when absent; caller frees). */
int api_tokenize_parse(const char *body, size_t len, char **ret_text, bool *ret_add_special, char **ret_model,
                       struct api_error *err);
int api_detokenize_parse(const char *body, size_t len, int vocab_size, int32_t **ret_ids, size_t *ret_n,
                         char **ret_model, struct api_error *err);

/* Returns true when s[0..len) is valid UTF-8 (no overlongs, surrogates or
 * code points above U+10FFFF); otherwise false and the offset of the first
 * bad byte. */
bool api_utf8_valid(const char *s, size_t len, size_t *ret_bad_offset);

/* Authorization header check against the configured keys, in time that
 * depends only on the lengths involved, not on where a guess goes wrong. */
bool api_key_matches(const char *const *keys, int n_keys, const char *authorization_header);

/* ---- responses ---- */

/* One sampled token's log-probabilities. */
struct api_logprob {
    int32_t token;
    float logprob;
    int n_top;
    int32_t top_ids[API_MAX_TOP_LOGPROBS];
    float top_logprobs[API_MAX_TOP_LOGPROBS];
};

/* How a token id becomes its text for logprobs ("token" and "bytes"):
 * returns a malloc'd string (may contain partial UTF-8 for byte tokens). */
struct api_token_namer {
    char *(*name)(void *ctx, int32_t id, size_t *ret_len);
    void *ctx;
};

struct api_usage {
    int prompt_tokens;
    int completion_tokens;
};

/* What the response identifies itself as. */
struct api_response_meta {
    enum api_kind kind;
    const char *id;      /* "chatcmpl-..." / "cmpl-..." */
    int64_t created;     /* unix seconds */
    const char *model;
};

/* Full non-streaming response, malloc'd JSON text. finish_reason "stop" or "length". */
char *api_response_json(const struct api_response_meta *m, const char *text, size_t text_len,
                        const char *finish_reason, const struct api_usage *usage,
                        const struct api_logprob *lp, int n_lp, bool want_logprobs,
                        const struct api_token_namer *namer);

/* One SSE event "data: {...}\n\n", malloc'd, for a streaming chunk:
 * role_chunk: the chat first chunk with the role and empty content;
 * otherwise text (may be empty) and logprobs, finish_reason or NULL.
 * include_usage adds "usage": null, as OpenAI does on every chunk before the
 * usage chunk. */
char *api_chunk_sse(const struct api_response_meta *m, bool role_chunk, const char *text, size_t text_len,
                    const char *finish_reason, const struct api_logprob *lp, int n_lp, bool want_logprobs,
                    bool include_usage, const struct api_token_namer *namer, size_t *ret_len);
/* The final usage chunk (empty choices). */
char *api_usage_sse(const struct api_response_meta *m, const struct api_usage *usage, size_t *ret_len);
/* An error inside a stream, e.g. at shutdown: "data: {"error":...}\n\n". */
char *api_error_sse(const struct api_error *e, size_t *ret_len);

/* Stop strings over generated text that is held back until it can no longer
 * begin a stop string. Given the pending text, returns:
 *   *ret_emit: how many leading bytes may be sent to the client now;
 *   true when a stop string was found (it starts at *ret_emit: the text
 *   before it is the last to send, the stop string itself never is).
 * With no stop strings everything is emitted at once. */
bool api_stop_scan(const char *pending, size_t len, char *const *stops, int n_stops, size_t *ret_emit);
