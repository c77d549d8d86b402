/* tokenizer.h - Hugging Face tokenizer.json, exact against the `tokenizers`
 * library: byte-level BPE (Qwen, Llama-3, GPT-2 families) and
 * SentencePiece-style BPE with byte fallback (Llama-2, Mistral, TinyStories),
 * added tokens, normalizers, pre-tokenizers (PCRE2), post-processor and
 * decoders. A tokenizer.json that uses something not implemented fails at load
 * with a message naming it. Thread-safe after load (encode/decode keep their
 * state in the caller's objects). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

typedef struct tokenizer tokenizer;

/* Loads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json
 * (add_bos_token, add_eos_token, special token names). */
int tok_load(const char *dir, tokenizer **ret, ifd_error *err);
/* Loads from memory; config_json may be NULL. */
int tok_load_memory(const char *tokenizer_json, size_t len, const char *config_json, size_t config_len,
                    const char *origin, tokenizer **ret, ifd_error *err);
void tok_destroy(tokenizer *t); /* accepts NULL */

/* A growable id array owned by the caller (reused across calls: no per-call malloc). */
struct tok_ids {
    int32_t *ids;
    size_t n, cap;
};
void tok_ids_finish(struct tok_ids *v);

/* Encodes UTF-8 text (invalid UTF-8: -EILSEQ with the byte offset in err).
 * add_special: apply the post-processor / add_bos_token as HF's
 * add_special_tokens=true does. Appends to *out after clearing it. */
int tok_encode(const tokenizer *t, const char *text, size_t len, bool add_special,
               struct tok_ids *out, ifd_error *err);

/* tok_encode, except that special tokens (added tokens with special=true)
 * never match where they overlap the protected ranges (`protect` holds
 * n_protect start, end pairs of byte offsets, ascending, not overlapping:
 * the untrusted ranges a chat template render reports). Their text there is
 * encoded as ordinary text, and text between special tokens is still one
 * piece whether or not it spans a range, so text without special-token
 * strings in the ranges encodes exactly as tok_encode. Non-special added
 * tokens still match everywhere: they steer no turn, and templates expect
 * users to send them (Qwen3 reads a user message wrapped in <tool_response>
 * as a tool result). Where the normalizer changes offsets (normalized=true
 * special tokens), a segment touching a range matches none of those.
 * -EINVAL for ranges that are empty, out of order or past len. */
int tok_encode_protected(const tokenizer *t, const char *text, size_t len, bool add_special, const size_t *protect,
                         size_t n_protect, struct tok_ids *out, ifd_error *err);

/* Decodes ids to text (malloc'd, NUL-terminated, caller frees). */
int tok_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
               char **ret_text, size_t *ret_len, ifd_error *err);

/* The bytes token `id` adds to a decoded text when it stands in the middle of
 * one: partial UTF-8 kept as bytes (no U+FFFD), no first-token space strip,
 * special tokens included. For constrained decoding, which matches grammars
 * against bytes. *ret_bytes is malloc'd (NUL-terminated); caller frees. */
int tok_token_bytes(const tokenizer *t, int32_t id, char **ret_bytes, size_t *ret_len, ifd_error *err);

/* Incremental decoding for streaming: push ids one at a time, get back only
 * complete UTF-8 text (never half a character). */
struct tok_stream;
struct tok_stream *tok_stream_create(const tokenizer *t, bool skip_special);
void tok_stream_destroy(struct tok_stream *s);
/* Appends the newly completed text to *out (NUL-terminated, malloc'd on first use,
 * grown as needed, caller frees); returns bytes appended or a negative errno. */
int tok_stream_push(struct tok_stream *s, int32_t id, char **out, size_t *out_len, size_t *out_cap);
/* Feeds context ids (a prompt's tail) whose text is not output: later
 * pushes emit only the text the new ids add, decode(context + new) minus
 * decode(context). Where the context ends inside a UTF-8 character, the
 * character goes to the new text when the new ids complete it, and its
 * U+FFFD stays with the context when they do not. 0 or a negative errno. */
int tok_stream_prime(struct tok_stream *s, const int32_t *ids, size_t n);
/* Flushes whatever is pending at end of generation (incomplete bytes as U+FFFD). */
int tok_stream_flush(struct tok_stream *s, char **out, size_t *out_len, size_t *out_cap);

int tok_vocab_size(const tokenizer *t);
/* The token's string as in the vocabulary (e.g. "Ġthe"), or NULL. */
const char *tok_id_to_token(const tokenizer *t, int32_t id);
/* -1 when absent. */
int32_t tok_token_to_id(const tokenizer *t, const char *token);
bool tok_is_special(const tokenizer *t, int32_t id);

/* Special tokens named by tokenizer_config.json (NULL when absent): "bos_token",
 * "eos_token", "pad_token", "unk_token". */
const char *tok_special_token(const tokenizer *t, const char *role);
/* The chat template from tokenizer_config.json or DIR/chat_template.jinja, or NULL. */
const char *tok_chat_template(const tokenizer *t);
