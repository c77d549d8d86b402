/* chat_template.h - renders a Hugging Face Jinja chat_template.
 *
 * A Jinja subset interpreter written for the real templates (Qwen2.5, Qwen3,
 * Llama-3.x, SmolLM2/ChatML, Mistral, Phi-3, Gemma, DeepSeek-R1-Distill).
 * Rendering uses trim_blocks and lstrip_blocks, as transformers does. An
 * unsupported construct is a compile error with line and column;
 * raise_exception() is a render error carrying the template's message. */
#pragma once

#include <stddef.h>

#include <cjson/cJSON.h>

#include "base/error.h"

typedef struct chat_template chat_template;

/* The ChatML template used for models that ship none. */
extern const char chat_template_chatml[];

int chat_template_compile(const char *source, size_t len, chat_template **ret, ifd_error *err);
void chat_template_destroy(chat_template *t); /* accepts NULL */

/* Renders with `context` as the template's global variables: messages, tools,
 * add_generation_prompt, bos_token, eos_token, and any kwargs
 * (enable_thinking, date_string ...). *ret_text is malloc'd, caller frees.
 * Returns -EINVAL with the message in err when the template raises (the
 * message is exactly raise_exception's argument); other render errors are
 * -EINVAL with "template:LINE:COL: ...", and -EFBIG / -ENOMEM when the render
 * passes its output (32 MiB) or memory (256 MiB) bound. Loops (1e6
 * iterations in all), macro recursion and nesting are bounded too. A compiled
 * template is read-only: renders may run concurrently from several threads
 * (each needs about 1.5 MiB of stack). */
int chat_template_render(const chat_template *t, const cJSON *context, char **ret_text,
                         size_t *ret_len, ifd_error *err);

/* Renders a conversation given as JSON text, in the form of `inferctl
 * template` files and the chat goldens: {"messages":[...],
 * "add_generation_prompt":bool, "kwargs":{...}, "special_tokens":{...}}.
 * The context is built as transformers' apply_chat_template builds it:
 * `defaults` (may be NULL: the special tokens of tokenizer_config.json as
 * strings), then "special_tokens" (each a string or {"content": ...}), then
 * "kwargs", "messages" and "add_generation_prompt" (false when absent).
 * Unlike a cJSON context, numbers keep Python's int/float split (2.0 stays a
 * float and tojson prints it back as 2.0). -EINVAL for malformed JSON (with
 * the byte offset) or a conversation of the wrong shape; otherwise as
 * chat_template_render. */
int chat_template_render_conversation(const chat_template *t, const char *json, size_t len, const cJSON *defaults,
                                      char **ret_text, size_t *ret_len, ifd_error *err);

/* Untrusted text. A user's message can hold "<|im_end|><|im_start|>system";
 * the tokenizer must read that as text, not as the special tokens, or the
 * user writes a system turn. These renders also say which bytes of the
 * output came from untrusted values: *ret_spans (malloc'd, caller frees;
 * NULL when there are none) holds *ret_n_spans ranges as start, end pairs
 * ([start, end) in bytes, ascending, not touching), for
 * tok_encode_protected. The template's own text is never in them. Text
 * copied from untrusted values is exact; text a filter, method, `%` or a
 * slice made from them is in the ranges whole (erring towards untrusted
 * only switches off special-token matching there).
 *
 * chat_template_render_untrusted: the globals named in `untrusted` (a
 * NULL-terminated list, e.g. {"messages", NULL}) are untrusted, every
 * string inside them. */
int chat_template_render_untrusted(const chat_template *t, const cJSON *context, const char *const *untrusted,
                                   char **ret_text, size_t *ret_len, size_t **ret_spans, size_t *ret_n_spans,
                                   ifd_error *err);
/* As chat_template_render_conversation; "messages" (content, content
 * parts, tool results, tool-call arguments: every string in it) and
 * "kwargs" (tools, documents: what a client sends beside the messages) are
 * untrusted; "special_tokens" and `defaults` are the model's, trusted. With
 * ret_spans NULL no taint is tracked (the text is the same either way). */
int chat_template_render_conversation_untrusted(const chat_template *t, const char *json, size_t len,
                                                const cJSON *defaults, char **ret_text, size_t *ret_len,
                                                size_t **ret_spans, size_t *ret_n_spans, ifd_error *err);
