/* bench_grammar.c - the cost of one constrained-decoding step: the token mask
 * of a JSON Schema grammar over a real vocabulary, in typical states (start of
 * the object, inside a string, inside a number, between properties).
 *
 * usage: bench_grammar TOKENIZER_DIR [ITERS]
 * A benchmark, not a test: figures move with whatever else the machine does. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text/grammar/grammar.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* 1000 characters: what the essay property needs at least */
#define ESSAY10 "0123456789"
#define ESSAY100 ESSAY10 ESSAY10 ESSAY10 ESSAY10 ESSAY10 ESSAY10 ESSAY10 ESSAY10 ESSAY10 ESSAY10
#define ESSAY ESSAY100 ESSAY100 ESSAY100 ESSAY100 ESSAY100 ESSAY100 ESSAY100 ESSAY100 ESSAY100 ESSAY100

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_grammar TOKENIZER_DIR [ITERS]\n");
        return 2;
    }
    int iters = argc > 2 ? atoi(argv[2]) : 200;
    tokenizer *t;
    ifd_error err;
    if (tok_load(argv[1], &t, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    int n_vocab = tok_vocab_size(t);
    grammar_vocab *v;
    double t0 = now();
    if (grammar_vocab_create(t, n_vocab, &v, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("vocabulary of %d tokens: trie built in %.1f ms\n", n_vocab, 1e3 * (now() - t0));
    const char *schema_json =
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"code\":{\"type\":\"string\",\"maxLength\":64},\"essay\":{\"type\":\"string\",\"minLength\":1000},\"age\":{\"type\":\"integer\"},"
        "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},\"kind\":{\"enum\":[\"a\",\"b\"]}},"
        "\"required\":[\"name\",\"code\",\"essay\",\"age\",\"tags\",\"kind\"],\"additionalProperties\":false}";
    cJSON *schema = cJSON_Parse(schema_json);
    char *gbnf;
    grammar *g;
    if (grammar_schema_to_gbnf(schema, &gbnf, &err) < 0 || grammar_parse_gbnf(gbnf, strlen(gbnf), &g, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    cJSON_Delete(schema);
    free(gbnf);
    /* prefixes of {"name":"Ann Lee","code":"x","essay":"0123...","age":42,"tags":["x"],"kind":"a"} */
    static const struct {
        const char *what, *prefix;
    } states[] = {
        {"start", ""},
        {"after {", "{"},
        {"in a string", "{\"name\":\"Ann L"},
        {"in a string of maxLength 64", "{\"name\":\"Ann Lee\",\"code\":\"ab"},
        {"in a string of minLength 1000", "{\"name\":\"Ann Lee\",\"code\":\"x\",\"essay\":\"abc"},
        {"in a number", "{\"name\":\"Ann Lee\",\"code\":\"x\",\"essay\":\"" ESSAY "\",\"age\":4"},
        {"after a value", "{\"name\":\"Ann Lee\",\"code\":\"x\",\"essay\":\"" ESSAY "\",\"age\":42"},
        {"in an array", "{\"name\":\"Ann Lee\",\"code\":\"x\",\"essay\":\"" ESSAY "\",\"age\":42,\"tags\":[\"x\""},
        {"at an enum", "{\"name\":\"Ann Lee\",\"code\":\"x\",\"essay\":\"" ESSAY "\",\"age\":42,\"tags\":[\"x\"],\"kind\":"},
    };
    float *logits = malloc(sizeof(float) * (size_t)n_vocab);
    int32_t eos = 0;
    for (size_t s = 0; s < sizeof(states) / sizeof(states[0]); s++) {
        grammar_matcher *m;
        if (grammar_matcher_create(g, v, &m) < 0 ||
            grammar_matcher_accept_bytes(m, states[s].prefix, strlen(states[s].prefix)) < 0) {
            fprintf(stderr, "bad prefix %s\n", states[s].prefix);
            return 1;
        }
        int allowed = 0;
        double best = 1e9;
        for (int i = 0; i < iters; i++) {
            memset(logits, 0, sizeof(float) * (size_t)n_vocab);
            double a = now();
            allowed = grammar_matcher_mask(m, logits, &eos, 1);
            double d = now() - a;
            best = d < best ? d : best;
        }
        printf("%-30s %7d tokens allowed  mask %.3f ms (best of %d)\n", states[s].what, allowed, 1e3 * best, iters);
        grammar_matcher_destroy(m);
    }
    free(logits);
    grammar_destroy(g);
    grammar_vocab_destroy(v);
    tok_destroy(t);
    return 0;
}
