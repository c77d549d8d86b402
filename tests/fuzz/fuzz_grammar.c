/* fuzz_grammar.c - the grammar compilers on mutated input.
 *
 * Input: one mode byte, then the text. Mode 0: GBNF; 1: a JSON Schema (JSON
 * text); 2: a regular expression. A refusal, by a converter or by the
 * compiler of what it converted, must carry a message; a compiled grammar
 * must match a few strings and compute a mask without failing on anything
 * but a mismatch. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "text/grammar/grammar.h"

static grammar_vocab *vocab;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* a one-token vocabulary: the fuzzer drives the matcher with bytes */
    const char *json = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"{\":1},\"merges\":[]}}";
    tokenizer *t;
    ifd_error err;
    if (tok_load_memory(json, strlen(json), NULL, 0, "fuzz", &t, &err) < 0 || grammar_vocab_create(t, 2, &vocab, &err) < 0)
        abort();
    tok_destroy(t);
    return 0;
}

static void exercise(const grammar *g)
{
    static const char *const inputs[] = {"", "a", "{\"a\":1}", "hello world", "\xe4\xb8\x96\xe7\x95\x8c", "[1,2,3]"};
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        grammar_matcher *m;
        if (grammar_matcher_create(g, vocab, &m) < 0)
            abort();
        int r = grammar_matcher_accept_bytes(m, inputs[i], strlen(inputs[i]));
        if (r < 0 && r != -EINVAL)
            abort();
        float logits[2] = {0, 0};
        int32_t eos = 0;
        grammar_matcher_mask(m, logits, &eos, 1);
        grammar_matcher_destroy(m);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int mode = data[0] % 3;
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    size_t len = size - 1;
    ifd_error err = {{0}};
    char *gbnf = NULL;
    int r = 0;
    if (mode == 1) {
        cJSON *schema = cJSON_ParseWithLength(text, len);
        if (schema) {
            r = grammar_schema_to_gbnf(schema, &gbnf, &err);
            cJSON_Delete(schema);
        }
    } else if (mode == 2) {
        r = grammar_regex_to_gbnf(text, len, &gbnf, &err);
    }
    if (r < 0 && !err.msg[0])
        abort();
    grammar *g = NULL;
    if (mode == 0) {
        r = grammar_parse_gbnf(text, len, &g, &err);
        if (r < 0 && !err.msg[0])
            abort();
    } else if (gbnf) {
        r = grammar_parse_gbnf(gbnf, strlen(gbnf), &g, &err);
        /* the compiler has the last word on limits and counts ({6,3},
         * "(a|)*", sizes): a refusal there must say why, as for any grammar */
        if (r < 0 && !err.msg[0])
            abort();
    }
    if (g)
        exercise(g);
    grammar_destroy(g);
    free(gbnf);
    free(text);
    return 0;
}

static void seed(fuzz_seed_fn add, void *ctx, const char *name, int mode, const char *text)
{
    size_t n = strlen(text);
    char *buf = malloc(n + 1);
    if (!buf)
        return;
    buf[0] = (char)mode;
    memcpy(buf + 1, text, n);
    add(ctx, name, buf, n + 1);
    free(buf);
}

void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    seed(add, ctx, "gbnf-json", 0,
         "root ::= obj\nobj ::= \"{\" (str \":\" val (\",\" str \":\" val)*)? \"}\"\n"
         "str ::= \"\\\"\" [^\"\\\\]* \"\\\"\"\nval ::= str | [0-9]+ | obj # comment\n");
    seed(add, ctx, "gbnf-rep", 0, "root ::= (\"ab\" | [x-z]{2,5} | .)+ \"\\u00e9\"?");
    seed(add, ctx, "schema-nested", 1,
         "{\"$defs\":{\"N\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"k\":{\"type\":\"array\","
         "\"items\":{\"$ref\":\"#/$defs/N\"},\"minItems\":1,\"maxItems\":3}},\"required\":[\"v\"]}},"
         "\"anyOf\":[{\"$ref\":\"#/$defs/N\"},{\"enum\":[\"a\",1,null]},{\"type\":\"string\",\"pattern\":\"^[a-z]{2}\\\\d$\"}]}");
    seed(add, ctx, "regex", 2, "^(ab|c+)\\d{2,3}[^x-z.]?(?:\\w|\\s)*\\.$");
}
