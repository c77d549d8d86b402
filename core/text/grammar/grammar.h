/* grammar.h - grammar-constrained decoding.
 *
 * A grammar is compiled from GBNF (llama.cpp's grammar syntax) and is
 * immutable afterwards: one request compiles it, one sequence matches with it.
 * JSON Schema, regular expressions and lists of choices are converted to GBNF
 * text first (grammar_schema_to_gbnf & co.), so every constraint goes through
 * one parser with one set of limits.
 *
 * Matching works on Unicode code points: a rule's terminals are character
 * classes. The vocabulary (grammar_vocab, built once per tokenizer and shared
 * by every sequence) is a byte trie of every token's bytes; a matcher (one per
 * sequence) walks the trie against its parse stacks and marks the tokens that
 * keep the output a prefix of the grammar's language. A token may end halfway
 * through a UTF-8 character: the matcher keeps the partial character and the
 * next token must complete it.
 *
 * Every input is bounded (grammar size, rules, nesting, repetition counts) and
 * the matcher's work per step is bounded (stacks per state, stack depth), so a
 * pathological grammar is refused or cut short, never a hang. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "base/error.h"
#include "text/tokenizer/tokenizer.h"

#define GRAMMAR_MAX_TEXT (256 * 1024)  /* bytes of GBNF (also of converted schemas) */
#define GRAMMAR_MAX_RULES 8192
#define GRAMMAR_MAX_ELEMENTS 200000     /* terminals and references after expansion */
#define GRAMMAR_MAX_NESTING 64          /* parentheses */
#define GRAMMAR_MAX_REPEAT 4096         /* m and n of {m,n} */
#define GRAMMAR_MAX_SCHEMA_DEPTH 32     /* nested schemas */
#define GRAMMAR_MAX_REGEX 4096          /* bytes of a regular expression */
#define GRAMMAR_MAX_STACKS 256          /* parse stacks per matcher state */
#define GRAMMAR_MAX_STACK_DEPTH 512     /* frames per parse stack (nesting of the output) */

typedef struct grammar grammar;

/* Compiles GBNF text; the start rule is "root". Errors name line:column. */
int grammar_parse_gbnf(const char *text, size_t len, grammar **ret, ifd_error *err);
/* A compiled grammar is immutable: grammar_ref() shares it (the n choices of
 * one request), and grammar_destroy() drops one holder, freeing it with the
 * last. Both accept NULL. */
grammar *grammar_ref(grammar *g);
void grammar_destroy(grammar *g);

/* Converters to GBNF text (malloc'd, NUL-terminated; caller frees).
 *
 * JSON Schema: the subset structured-output libraries emit (see
 * docs/http-api.md); anything else is -EINVAL with a message naming the
 * keyword and its JSON path. schema NULL = any JSON object (response_format
 * json_object). The JSON is emitted without whitespace, so a model cannot
 * loop on spaces. */
int grammar_schema_to_gbnf(const cJSON *schema, char **ret_text, ifd_error *err);
/* A regular expression (whole-string match; ^ and $ at the ends are
 * accepted and implicit) in a bounded subset: literals, escapes, classes,
 * '.', groups, alternation, * + ? {m,n}. Refusals name the construct. */
int grammar_regex_to_gbnf(const char *re, size_t len, char **ret_text, ifd_error *err);
/* One of the given strings exactly. */
int grammar_choice_to_gbnf(const char *const *choices, size_t n, char **ret_text, ifd_error *err);

/* ---- matching ---- */

typedef struct grammar_vocab grammar_vocab;

/* The byte trie of tok's vocabulary (special tokens left out: only `eos`
 * ends a constrained output). n_vocab may exceed the tokenizer's (padded
 * embeddings): the extra ids are never allowed. */
int grammar_vocab_create(const tokenizer *tok, int n_vocab, grammar_vocab **ret, ifd_error *err);
void grammar_vocab_destroy(grammar_vocab *v); /* accepts NULL */

typedef struct grammar_matcher grammar_matcher;

/* A matcher at the start of g (borrowed; both must outlive it). */
int grammar_matcher_create(const grammar *g, const grammar_vocab *v, grammar_matcher **ret);
void grammar_matcher_destroy(grammar_matcher *m); /* accepts NULL */

/* Sets logits[i] = -INFINITY for every token that cannot come next; the eos
 * ids stay allowed only when the output so far is complete. If no token at
 * all can continue (a grammar the vocabulary cannot spell), eos is allowed
 * so the sequence ends. Returns the number of allowed tokens. */
int grammar_matcher_mask(grammar_matcher *m, float *logits, const int32_t *eos, int n_eos);
/* Advances over a chosen (allowed) token. -EINVAL if the token does not fit. */
int grammar_matcher_accept_token(grammar_matcher *m, int32_t id);
/* Advances over raw bytes (tests, and forced text). -EINVAL if they do not fit. */
int grammar_matcher_accept_bytes(grammar_matcher *m, const char *s, size_t n);
/* The output so far is a complete sentence of the grammar. */
bool grammar_matcher_is_complete(const grammar_matcher *m);
/* Nothing but the end can follow (complete and no continuation). */
bool grammar_matcher_is_done(const grammar_matcher *m);
