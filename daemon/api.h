/* api.h - the OpenAI-compatible request and response bodies.
 *
 * Parsing validates field by field: a wrong type or value is an api_error
 * carrying the HTTP status and the OpenAI error envelope (message, type,
 * param, code). Every field a body may carry is in one table in api.c
 * (api_fields): implemented, an explicit no-op, or refused; anything else,
 * an unknown field included, is a 400 naming it, so that nothing a client
 * asks for is accepted and silently ignored.
 * Serialization builds the response JSON and the SSE chunks. This file knows
 * no tokenizer and no engine: the scheduler hands it text, token strings and
 * numbers, so it is unit-tested alone (tests/daemon/test_api.c). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "model/sampler.h"
#include "tools.h"

/* Limits on what a request may ask for. */
#define API_MAX_STOP 4            /* as OpenAI */
#define API_MAX_STOP_LEN 256      /* bytes per stop string */
#define API_MAX_MESSAGES 4096
#define API_MAX_CONTENT_PARTS 256
#define API_MAX_TOP_LOGPROBS 20   /* as OpenAI */
#define API_MAX_PROMPT_IDS (1 << 20)
#define API_MAX_JSON_DEPTH 64
#define API_MAX_LOGIT_BIAS 300    /* entries, as OpenAI */
#define API_MAX_N 16              /* choices per request */

/* One logit_bias entry: added to the token's logit before sampling. */
struct api_logit_bias {
    int32_t token;
    float bias;                   /* -100 .. 100 */
};

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
    char *prompt;              /* completion with a text prompt: [prompt_len], may hold NUL */
    size_t prompt_len;
    uint32_t nul_sentinel;     /* 0, or the code point standing for U+0000 in messages (api_json_parse) */
    int32_t *prompt_ids;       /* completion with token ids: [n_prompt_ids] */
    size_t n_prompt_ids;
    int max_tokens;            /* -1: up to the context; 0 only with echo */
    struct sampler_params sampling;
    char *stop[API_MAX_STOP];  /* [n_stop], each non-empty */
    int n_stop;
    bool logprobs;
    int top_logprobs;          /* 0..API_MAX_TOP_LOGPROBS */
    bool stream;
    bool include_usage;        /* stream_options.include_usage */
    struct tools_request tools; /* chat: tools, tool_choice, chat_template_kwargs (tools.h) */
    struct api_logit_bias *logit_bias; /* [n_logit_bias], distinct tokens, owned */
    int n_logit_bias;          /* 0 .. API_MAX_LOGIT_BIAS */
    int n;                     /* choices: 1 .. API_MAX_N */
    bool echo;                 /* completions: the prompt's text (and logprobs) come first */
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
/* The same for the token ids of r->logit_bias. */
int api_check_logit_bias(const struct api_request *r, int vocab_size, struct api_error *err);

/* Endpoints for api_field_known's mask. */
#define API_FIELDS_CHAT 1u
#define API_FIELDS_COMPLETION 2u
#define API_FIELDS_TOKENIZE 4u
#define API_FIELDS_DETOKENIZE 8u
#define API_FIELDS_EMBEDDINGS 16u
/* Whether the table of known fields has `name` for one of the endpoints in
 * the mask; *ret_refused (optional) says whether giving it is a 400. */
bool api_field_known(const char *name, unsigned endpoint_mask, bool *ret_refused);

/* /tokenize {"content": "...", "add_special": bool, "model": "..."} or
 * {"prompt": ...}; /detokenize {"tokens": [ids], "model": "..."}. *ret_model
 * is the optional model name (NULL when absent; caller frees). */
int api_tokenize_parse(const char *body, size_t len, char **ret_text, size_t *ret_len, bool *ret_add_special,
                       char **ret_model, struct api_error *err);
int api_detokenize_parse(const char *body, size_t len, int vocab_size, int32_t **ret_ids, size_t *ret_n,
                         char **ret_model, struct api_error *err);

/* JSON text may carry U+0000 ("\u0000"), which cJSON's NUL-terminated
 * strings cannot. api_json_parse parses like cJSON_ParseWithLengthOpts
 * (without requiring the end: *ret_end for the trailing-data check) with
 * each U+0000 stood for by *ret_sentinel, a noncharacter the body does not
 * contain (0 when the body has no U+0000); NULL when the text is not JSON,
 * or holds every candidate. api_json_string copies a string item with the
 * NULs back (malloc'd, *ret_len bytes, NUL-terminated after them).
 * api_nul_restore does that in place for text rendered from such strings
 * (a chat template's output), moving the ascending byte offsets with the
 * text; returns the new length. */
cJSON *api_json_parse(const char *body, size_t len, const char **ret_end, uint32_t *ret_sentinel);
char *api_json_string(const cJSON *v, uint32_t sentinel, size_t *ret_len);
size_t api_nul_restore(char *text, size_t len, uint32_t sentinel, size_t *offsets, size_t n_offsets);

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
    bool is_null;   /* echo: the first prompt token, which has no logprob (null) */
};

/* How a token id becomes its text for logprobs ("token" and "bytes"):
 * returns a malloc'd string (may contain partial UTF-8 for byte tokens). */
struct api_token_namer {
    char *(*name)(void *ctx, int32_t id, size_t *ret_len);
    void *ctx;
    /* Optional: true for tokens whose text is never in the output text
     * (special tokens), which therefore advance text_offset by nothing. */
    bool (*not_in_text)(void *ctx, int32_t id);
};

struct api_usage {
    int prompt_tokens;
    int completion_tokens;
    int cached_tokens;  /* of prompt_tokens, served from the prefix cache: prompt_tokens_details.cached_tokens */
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

/* One choice of a response. */
struct api_choice_out {
    cJSON *message;          /* chat: a message built by tools.h, taken over; NULL: text is the content */
    const char *text;
    size_t text_len;
    const char *finish_reason;
    const struct api_logprob *lp;
    int n_lp;
};
/* api_response_json with n_choices choices, index 0..n_choices-1. */
char *api_response_json_n(const struct api_response_meta *m, const struct api_choice_out *choices, int n_choices,
                          const struct api_usage *usage, bool want_logprobs, const struct api_token_namer *namer);

/* One SSE event "data: {...}\n\n", malloc'd, for a streaming chunk:
 * role_chunk: the chat first chunk with the role and empty content;
 * otherwise text (may be empty) and logprobs, finish_reason or NULL.
 * include_usage adds "usage": null, as OpenAI does on every chunk before the
 * usage chunk. */
char *api_chunk_sse(const struct api_response_meta *m, bool role_chunk, const char *text, size_t text_len,
                    const char *finish_reason, const struct api_logprob *lp, int n_lp, bool want_logprobs,
                    bool include_usage, const struct api_token_namer *namer, size_t *ret_len);
/* Where a streamed chunk sits in its response: the choice it belongs to,
 * and the text_offset of its first logprob token (completions), which the
 * call advances past the chunk's tokens so that offsets run on over the
 * stream as in the non-streaming answer. */
struct api_chunk_pos {
    int index;
    size_t text_offset;
};
/* api_chunk_sse for choice pos->index, offsets from pos->text_offset. */
char *api_chunk_sse_at(const struct api_response_meta *m, struct api_chunk_pos *pos, bool role_chunk,
                       const char *text, size_t text_len, const char *finish_reason, const struct api_logprob *lp,
                       int n_lp, bool want_logprobs, bool include_usage, const struct api_token_namer *namer,
                       size_t *ret_len);
/* Chat: a response whose message was built by tools.h (content, reasoning
 * and tool_calls; `message` is taken over), otherwise as api_response_json. */
char *api_chat_response_json(const struct api_response_meta *m, cJSON *message, const char *finish_reason,
                             const struct api_usage *usage, const struct api_logprob *lp, int n_lp,
                             bool want_logprobs, const struct api_token_namer *namer);
/* Chat: one chunk of choice pos->index (NULL: 0) with the given delta object
 * (taken over; tools.h makes them), otherwise as api_chunk_sse_at. */
char *api_chat_delta_sse(const struct api_response_meta *m, struct api_chunk_pos *pos, cJSON *delta,
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

/* POST /v1/embeddings {"input": string | [string] | [ids] | [[ids]],
 * "model", "encoding_format": "float" | "base64", "user" (a no-op, as for
 * generations)}. Other fields (dimensions ...) are refused by name. */
#define API_MAX_EMBED_INPUTS 2048   /* as OpenAI */

struct api_embed_input {
    char *text;          /* a string input (may hold U+0000: use text_len), or NULL */
    size_t text_len;
    int32_t *ids;        /* a token-id input: [n_ids], checked against the vocabulary later */
    size_t n_ids;
};

struct api_embed_request {
    char *model;         /* NULL when absent */
    struct api_embed_input *inputs;
    int n_inputs;        /* 1 .. API_MAX_EMBED_INPUTS */
    bool base64;         /* encoding_format "base64": little-endian float32, base64 */
};

int api_embed_parse(const char *body, size_t len, struct api_embed_request *ret, struct api_error *err);
void api_embed_request_finish(struct api_embed_request *r); /* accepts a zeroed struct */
/* The response body ("object": "list", one "embedding" per input in order,
 * usage), malloc'd; NULL when out of memory. */
char *api_embed_response_json(const char *model, const float *const *vecs, int n, int dim, bool base64,
                              int prompt_tokens, size_t *ret_len);
