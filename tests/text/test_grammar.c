/* test_grammar.c - core/text/grammar: the GBNF compiler, the JSON Schema,
 * regex and choice converters, and the matcher (on strings, and token masks
 * against a real tokenizer from $INFERD_SHARED). */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/test_util.h"
#include "text/grammar/grammar.h"

/* A matcher over no vocabulary, for matching strings. */
static grammar_vocab *empty_vocab(void)
{
    static grammar_vocab *v;
    if (!v) {
        /* a tokenizer is not needed for byte matching: the trie stays empty */
        const char *json = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}";
        tokenizer *t;
        ifd_error err;
        cr_assert_eq(tok_load_memory(json, strlen(json), NULL, 0, "test", &t, &err), 0, "%s", err.msg);
        cr_assert_eq(grammar_vocab_create(t, 1, &v, &err), 0, "%s", err.msg);
        tok_destroy(t);
    }
    return v;
}

static grammar *compile(const char *gbnf)
{
    grammar *g = NULL;
    ifd_error err;
    int r = grammar_parse_gbnf(gbnf, strlen(gbnf), &g, &err);
    cr_assert_eq(r, 0, "grammar failed: %s\n%s", err.msg, gbnf);
    return g;
}

/* 1: s is a complete sentence; 0: a strict prefix; -1: rejected. */
static int match(const grammar *g, const char *s)
{
    grammar_matcher *m;
    cr_assert_eq(grammar_matcher_create(g, empty_vocab(), &m), 0);
    int r = grammar_matcher_accept_bytes(m, s, strlen(s));
    int res = r < 0 ? -1 : grammar_matcher_is_complete(m) ? 1 : 0;
    grammar_matcher_destroy(m);
    return res;
}

static void expect_error(const char *gbnf, const char *needle)
{
    grammar *g = NULL;
    ifd_error err = {{0}};
    cr_assert_lt(grammar_parse_gbnf(gbnf, strlen(gbnf), &g, &err), 0, "accepted: %s", gbnf);
    cr_assert(strstr(err.msg, needle), "error '%s' lacks '%s'", err.msg, needle);
}

Test(grammar, gbnf_literals_classes_repetition)
{
    grammar *g = compile("root ::= \"ab\" [0-9]+ (\"x\" | \"y\")? [^\\n]{2,3} # comment\n");
    cr_expect_eq(match(g, "ab1zz"), 1);
    cr_expect_eq(match(g, "ab123xzzz"), 1);
    cr_expect_eq(match(g, "ab12yz"), 1); /* y as two [^\n] */
    cr_expect_eq(match(g, "ab1x"), 0);
    cr_expect_eq(match(g, "ab12yzzzz"), -1);
    cr_expect_eq(match(g, "abx"), -1);
    cr_expect_eq(match(g, "ab"), 0);
    grammar_destroy(g);
}

Test(grammar, gbnf_rules_escapes_multiline)
{
    grammar *g = compile("root ::= greet\n"
                         "  (\", \" name)*\n"
                         "greet ::= \"hi\" | \"h\\u00e9\"\n"
                         "name ::= [a-z\\x41-\\x5A]+ \".\"?\n");
    cr_expect_eq(match(g, "hi"), 1);
    cr_expect_eq(match(g, "h\xc3\xa9, bob, ALICE."), 1);
    cr_expect_eq(match(g, "hi, "), 0);
    cr_expect_eq(match(g, "hi,x"), -1);
    grammar_destroy(g);
}

Test(grammar, gbnf_dot_and_exact_counts)
{
    grammar *g = compile("root ::= . \"-\" [ab]{3}");
    cr_expect_eq(match(g, "\xe2\x82\xac-aba"), 1);
    cr_expect_eq(match(g, "x-ab"), 0);
    cr_expect_eq(match(g, "x-abab"), -1);
    grammar_destroy(g);
}

Test(grammar, gbnf_long_repetition_keeps_stack_flat)
{
    /* 10000 iterations of a right-recursive loop: tail calls keep it legal */
    grammar *g = compile("root ::= item* \"!\"\nitem ::= \"a\" | \"b\"");
    char *s = malloc(10002);
    memset(s, 'a', 10000);
    s[10000] = '!';
    s[10001] = 0;
    cr_expect_eq(match(g, s), 1);
    free(s);
    grammar_destroy(g);
}

Test(grammar, gbnf_errors_name_line_and_column)
{
    expect_error("root ::= \"abc", "line 1 column");
    expect_error("root ::= \"a\"\nx ::= [a-", "line 2 column");
    expect_error("root ::= foo", "rule 'foo' is used but not defined");
    expect_error("foo ::= \"a\"", "no 'root' rule");
    expect_error("root ::= (\"a\"", "expected ')'");
    expect_error("root ::= \"a\"{5,2}", "n < m");
    expect_error("root ::= \"a\"{99999}", "above 4096");
    expect_error("root ::= root \"a\" | \"b\"", "left-recursive");
    expect_error("root ::= x\nx ::= \"a\"? root", "left-recursive");
    expect_error("root ::= \"\\q\"", "unknown escape");
    expect_error("root ::= \"a\"\nroot ::= \"b\"", "defined twice");
    expect_error("root ::= [z-a]", "backwards");
}

Test(grammar, gbnf_bounds)
{
    /* nesting */
    char deep[400] = "root ::= ";
    for (int i = 0; i < 70; i++)
        strcat(deep, "(");
    strcat(deep, "\"a\"");
    for (int i = 0; i < 70; i++)
        strcat(deep, ")");
    expect_error(deep, "nest deeper than 64");
    /* bounded repetitions become one rule per optional step */
    expect_error("root ::= \"a\"{0,4000} \"b\"{0,4000} \"c\"{0,4000}", "too many rules");
    /* text size */
    size_t n = GRAMMAR_MAX_TEXT + 16;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    memcpy(big, "root ::= \"a\"", 13);
    big[n] = 0;
    grammar *g = NULL;
    ifd_error err = {{0}};
    cr_expect_eq(grammar_parse_gbnf(big, n, &g, &err), -E2BIG);
    free(big);
}

static char *schema_gbnf(const char *schema_json, ifd_error *err)
{
    cJSON *s = schema_json ? cJSON_Parse(schema_json) : NULL;
    cr_assert(!schema_json || s, "bad test JSON");
    char *txt = NULL;
    int r = grammar_schema_to_gbnf(s, &txt, err);
    cJSON_Delete(s);
    return r < 0 ? NULL : txt;
}

static grammar *schema(const char *schema_json)
{
    ifd_error err;
    char *txt = schema_gbnf(schema_json, &err);
    cr_assert(txt, "schema refused: %s", err.msg);
    grammar *g = compile(txt);
    free(txt);
    return g;
}

static void schema_refused(const char *schema_json, const char *needle)
{
    ifd_error err = {{0}};
    char *txt = schema_gbnf(schema_json, &err);
    cr_assert_null(txt, "accepted: %s", schema_json);
    cr_assert(strstr(err.msg, needle), "error '%s' lacks '%s'", err.msg, needle);
}

Test(grammar, schema_json_object)
{
    grammar *g = schema(NULL);
    cr_expect_eq(match(g, "{}"), 1);
    cr_expect_eq(match(g, "{\"a\":[1,-2.5e3,true,null,{\"b\":\"c\\u00e9\\n\"}]}"), 1);
    cr_expect_eq(match(g, "[1]"), -1);
    cr_expect_eq(match(g, "{\"a\" :1}"), -1); /* no whitespace */
    cr_expect_eq(match(g, "{\"a\":01}"), -1);
    grammar_destroy(g);
}

Test(grammar, schema_object_required_optional)
{
    grammar *g = schema("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"},"
                        "\"c\":{\"type\":\"boolean\"}},\"required\":[\"b\"],\"additionalProperties\":false}");
    cr_expect_eq(match(g, "{\"b\":\"x\"}"), 1);
    cr_expect_eq(match(g, "{\"a\":1,\"b\":\"x\",\"c\":true}"), 1);
    cr_expect_eq(match(g, "{\"a\":1,\"b\":\"x\"}"), 1);
    cr_expect_eq(match(g, "{\"b\":\"x\",\"c\":false}"), 1);
    cr_expect_eq(match(g, "{\"a\":1}"), -1);       /* b required */
    cr_expect_eq(match(g, "{\"a\":1.5,\"b\":\"\"}"), -1); /* integer */
    cr_expect_eq(match(g, "{\"b\":\"x\",\"d\":1}"), -1);
    cr_expect_eq(match(g, "{\"c\":true,\"b\":\"x\"}"), -1); /* declared order */
    grammar_destroy(g);
}

Test(grammar, schema_arrays_enum_const_types)
{
    grammar *g = schema("{\"type\":\"array\",\"items\":{\"enum\":[\"red\",1,null]},\"minItems\":2,\"maxItems\":3}");
    cr_expect_eq(match(g, "[\"red\",1]"), 1);
    cr_expect_eq(match(g, "[null,1,\"red\"]"), 1);
    cr_expect_eq(match(g, "[1]"), -1);
    cr_expect_eq(match(g, "[1,1,1,1]"), -1);
    cr_expect_eq(match(g, "[\"blue\",1]"), -1);
    grammar_destroy(g);
    g = schema("{\"type\":[\"string\",\"null\"],\"minLength\":2,\"maxLength\":3}");
    cr_expect_eq(match(g, "null"), 1);
    cr_expect_eq(match(g, "\"ab\""), 1);
    cr_expect_eq(match(g, "\"a\""), -1);
    cr_expect_eq(match(g, "\"abcd\""), -1);
    grammar_destroy(g);
    /* bounded strings take characters beyond the BMP only as escaped pairs:
     * the bound then holds in UTF-16 units too (zod's count) */
    g = schema("{\"type\":\"string\",\"maxLength\":2}");
    cr_expect_eq(match(g, "\"\xf0\x9f\x98\x80\""), -1);
    cr_expect_eq(match(g, "\"\\ud83d\\ude00\""), 1);
    cr_expect_eq(match(g, "\"\xc3\xa9\xe4\xb8\x96\""), 1);
    grammar_destroy(g);
    g = schema("{\"const\":{\"k\":[1,2]}}");
    cr_expect_eq(match(g, "{\"k\":[1,2]}"), 1);
    cr_expect_eq(match(g, "{\"k\":[1]}"), -1);
    grammar_destroy(g);
    g = schema("{\"type\":\"array\",\"maxItems\":0}");
    cr_expect_eq(match(g, "[]"), 1);
    grammar_destroy(g);
    g = schema("{\"type\":\"array\"}");
    cr_expect_eq(match(g, "[]"), 1);
    cr_expect_eq(match(g, "[1,\"a\",{}]"), 1);
    grammar_destroy(g);
}

Test(grammar, schema_anyof_ref_defs_recursive)
{
    /* zod / pydantic shape: $defs, $ref, anyOf with null, a recursive tree */
    grammar *g = schema("{\"$defs\":{\"Node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"number\"},"
                        "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/Node\"}}},"
                        "\"required\":[\"v\",\"kids\"],\"additionalProperties\":false}},"
                        "\"type\":\"object\",\"properties\":{\"root\":{\"anyOf\":[{\"$ref\":\"#/$defs/Node\"},"
                        "{\"type\":\"null\"}]}},\"required\":[\"root\"]}");
    cr_expect_eq(match(g, "{\"root\":null}"), 1);
    cr_expect_eq(match(g, "{\"root\":{\"v\":1,\"kids\":[{\"v\":2,\"kids\":[]}]}}"), 1);
    cr_expect_eq(match(g, "{\"root\":{\"v\":1}}"), -1);
    grammar_destroy(g);
    g = schema("{\"definitions\":{\"A\":{\"type\":\"boolean\"}},\"oneOf\":[{\"$ref\":\"#/definitions/A\"},"
               "{\"allOf\":[{\"type\":\"integer\"}]}]}");
    cr_expect_eq(match(g, "true"), 1);
    cr_expect_eq(match(g, "42"), 1);
    cr_expect_eq(match(g, "\"x\""), -1);
    grammar_destroy(g);
}

Test(grammar, schema_pattern_and_formats)
{
    grammar *g = schema("{\"type\":\"string\",\"pattern\":\"^[A-Z]{2}-\\\\d{3}$\"}");
    cr_expect_eq(match(g, "\"AB-123\""), 1);
    cr_expect_eq(match(g, "\"AB-12\""), -1);
    grammar_destroy(g);
    g = schema("{\"type\":\"string\",\"format\":\"date\"}");
    cr_expect_eq(match(g, "\"2024-02-29\""), 1);
    cr_expect_eq(match(g, "\"2024-2-29\""), -1);
    grammar_destroy(g);
    g = schema("{\"type\":\"string\",\"format\":\"uuid\"}");
    cr_expect_eq(match(g, "\"123e4567-e89b-12d3-a456-426614174000\""), 1);
    grammar_destroy(g);
    g = schema("{\"type\":\"string\",\"format\":\"date-time\"}");
    cr_expect_eq(match(g, "\"2024-01-02T03:04:05.123Z\""), 1);
    grammar_destroy(g);
}

Test(grammar, schema_refusals_name_keyword_and_path)
{
    schema_refused("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\",\"minimum\":0}}}",
                   "schema.properties.a.minimum: keyword 'minimum' is not supported");
    schema_refused("{\"type\":\"array\",\"items\":{\"uniqueItems\":true}}", "schema.items.uniqueItems");
    schema_refused("{\"type\":\"string\",\"format\":\"email\"}", "format 'email' is not supported");
    schema_refused("{\"$ref\":\"http://x/y\"}", "only references to");
    schema_refused("{\"$ref\":\"#/$defs/Nope\"}", "does not name a schema");
    schema_refused("{\"type\":\"object\",\"properties\":{\"a\":{}},\"additionalProperties\":{\"type\":\"string\"}}",
                   "additionalProperties");
    schema_refused("{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"b\"]}", "'b' is not in");
    schema_refused("{\"type\":\"strange\"}", "unknown type 'strange'");
    schema_refused("{\"allOf\":[{},{}]}", "allOf");
    schema_refused("{\"type\":\"string\",\"pattern\":\"a(?=b)\"}", "schema.pattern: regex at offset");
    schema_refused("{\"type\":\"array\",\"minItems\":5000}", "minItems");
    /* depth */
    char deep[2048] = "";
    for (int i = 0; i < 40; i++)
        strcat(deep, "{\"type\":\"array\",\"items\":");
    strcat(deep, "{}");
    for (int i = 0; i < 40; i++)
        strcat(deep, "}");
    schema_refused(deep, "deeper than 32");
}

/* Integer ranges. M is jint's cap (16 digits); NONE marks an absent bound. */
#define INT_M 9999999999999999LL
#define NONE LLONG_MIN

static long long pow10ll_test(int n)
{
    long long v = 1;
    while (n-- > 0)
        v *= 10;
    return v;
}

static bool int_accepted(const grammar *g, long long v)
{
    char s[32];
    snprintf(s, sizeof(s), "%lld", v);
    return match(g, s) == 1;
}

/* Compiles {"type":"integer",bounds} and checks, integer by integer, that it
 * accepts exactly lo..hi (clamped to 16 digits): every integer within 200 of
 * each bound, all of the range when it is short, each power of ten and its
 * neighbours, and pseudo-random values of every length. */
static void check_int_range(const char *bounds, long long lo, long long hi)
{
    char js[256];
    snprintf(js, sizeof(js), "{\"type\":\"integer\",%s}", bounds);
    ifd_error err;
    char *txt = schema_gbnf(js, &err);
    cr_assert(txt, "%s refused: %s", js, err.msg);
    /* the range's rule stays small: a few dozen alternatives at most */
    const char *rule = strstr(txt, "\nr1 ::= ");
    cr_assert(rule, "%s", txt);
    size_t alts = 1;
    for (const char *q = rule + 1; *q && *q != '\n'; q++)
        alts += *q == '|';
    cr_expect_leq(alts, 40, "%s: %zu alternatives", js, alts);
    grammar *g = compile(txt);
    free(txt);
    long long elo = lo == NONE ? -INT_M : lo, ehi = hi == NONE ? INT_M : hi;
    long long n_checked = 0;
#define CHECK_INT(v)                                                                                                   \
    do {                                                                                                               \
        long long v_ = (v);                                                                                            \
        bool want = v_ >= elo && v_ <= ehi;                                                                            \
        cr_assert_eq(int_accepted(g, v_), want, "%s: %lld %s", js, v_, want ? "rejected" : "accepted");              \
        n_checked++;                                                                                                   \
    } while (0)
    for (long long d = -200; d <= 200; d++) {
        if (lo != NONE)
            CHECK_INT(lo + d);
        if (hi != NONE)
            CHECK_INT(hi + d);
        CHECK_INT(d); /* around zero, where the sign and "0" are decided */
    }
    if (lo != NONE && hi != NONE && hi - lo <= 20000)
        for (long long v = lo; v <= hi; v++)
            CHECK_INT(v);
    for (long long p = 1; p <= INT_M / 9; p *= 10)
        for (int sign = -1; sign <= 1; sign += 2)
            for (int d = -1; d <= 1; d++) {
                CHECK_INT(sign * (p + d));
                CHECK_INT(sign * (9 * p + d));
            }
    CHECK_INT(INT_M);
    CHECK_INT(-INT_M);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 2000; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        long long v = (long long)((x >> 11) % (uint64_t)INT_M) / pow10ll_test((int)(x % 17));
        CHECK_INT((x >> 63) ? -v : v);
        if (lo != NONE && hi != NONE && hi > lo)
            CHECK_INT(lo + (long long)((x >> 7) % (uint64_t)(hi - lo)));
    }
#undef CHECK_INT
    /* never leading zeros, "-0", a plus sign, a fraction or an exponent */
    static const char *const bad[] = {"00", "01", "007", "-0", "-00", "-01", "+1", "+0", "1.0",
                                      "0.0", "1e2", " 1", "1 ", "--1", "-", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_neq(match(g, bad[i]), 1, "%s accepted '%s'", js, bad[i]);
    cr_assert_gt(n_checked, 1000);
    grammar_destroy(g);
}

Test(grammar, schema_integer_ranges_exact)
{
    check_int_range("\"minimum\":0,\"maximum\":9", 0, 9);
    check_int_range("\"minimum\":1,\"maximum\":100", 1, 100);
    check_int_range("\"minimum\":-5,\"maximum\":5", -5, 5);
    check_int_range("\"minimum\":10,\"maximum\":99", 10, 99);
    check_int_range("\"minimum\":7,\"maximum\":1234", 7, 1234);
    check_int_range("\"minimum\":-1000,\"maximum\":-10", -1000, -10);
    check_int_range("\"minimum\":-1234,\"maximum\":-7", -1234, -7);
    check_int_range("\"minimum\":-987,\"maximum\":4321", -987, 4321);
    check_int_range("\"minimum\":0,\"maximum\":0", 0, 0);
    check_int_range("\"minimum\":-1,\"maximum\":-1", -1, -1);
    check_int_range("\"minimum\":100,\"maximum\":100", 100, 100);
    check_int_range("\"minimum\":1000,\"maximum\":1999", 1000, 1999);
    check_int_range("\"minimum\":1001,\"maximum\":1998", 1001, 1998);
    check_int_range("\"minimum\":19,\"maximum\":20", 19, 20);
    check_int_range("\"minimum\":99,\"maximum\":1000", 99, 1000);
    check_int_range("\"minimum\":5,\"maximum\":123456", 5, 123456);
    /* exclusive bounds, and bounds that are not integers */
    check_int_range("\"exclusiveMinimum\":0,\"exclusiveMaximum\":10", 1, 9);
    check_int_range("\"exclusiveMinimum\":-6,\"maximum\":5", -5, 5);
    check_int_range("\"minimum\":-5,\"exclusiveMaximum\":6", -5, 5);
    check_int_range("\"exclusiveMinimum\":0", 1, NONE); /* zod .int().positive() */
    check_int_range("\"exclusiveMaximum\":0", NONE, -1);
    check_int_range("\"minimum\":1.5,\"maximum\":9.5", 2, 9);
    check_int_range("\"exclusiveMinimum\":1.5,\"exclusiveMaximum\":9.5", 2, 9);
    check_int_range("\"minimum\":-9.5,\"maximum\":-1.5", -9, -2);
    /* both kinds given: the tighter wins */
    check_int_range("\"minimum\":3,\"exclusiveMinimum\":3,\"maximum\":50,\"exclusiveMaximum\":40", 4, 39);
    check_int_range("\"minimum\":5,\"exclusiveMinimum\":1,\"maximum\":30,\"exclusiveMaximum\":90", 5, 30);
    /* one-sided */
    check_int_range("\"minimum\":0", 0, NONE); /* pydantic ge=0 */
    check_int_range("\"minimum\":18", 18, NONE);
    check_int_range("\"minimum\":-273", -273, NONE);
    check_int_range("\"maximum\":100", NONE, 100);
    check_int_range("\"maximum\":-42", NONE, -42);
    check_int_range("\"maximum\":0", NONE, 0);
    /* large: up to jint's 16 digits */
    check_int_range("\"minimum\":0,\"maximum\":9999999999999999", 0, INT_M);
    check_int_range("\"minimum\":-9999999999999999,\"maximum\":9999999999999999", -INT_M, INT_M);
    check_int_range("\"minimum\":1234567890123,\"maximum\":8765432109876543", 1234567890123LL, 8765432109876543LL);
    check_int_range("\"minimum\":-8765432109876543,\"maximum\":1234567890123457", -8765432109876543LL,
                    1234567890123457LL);
    check_int_range("\"minimum\":-1e16,\"maximum\":1e16", -INT_M, INT_M);
    check_int_range("\"minimum\":4503599627370496", 4503599627370496LL, NONE);
    check_int_range("\"minimum\":-8989898989898988,\"maximum\":-1010101010101011", -8989898989898988LL,
                    -1010101010101011LL);
    check_int_range("\"minimum\":1010101010101011,\"maximum\":8989898989898988", 1010101010101011LL,
                    8989898989898988LL);
}

Test(grammar, schema_integer_range_in_context)
{
    /* the range rule followed by more JSON: "10" must not end the number early */
    grammar *g = schema("{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":"
                        "100},\"k\":{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"exclusiveMinimum\":0}}},"
                        "\"required\":[\"n\",\"k\"],\"additionalProperties\":false}");
    cr_expect_eq(match(g, "{\"n\":100,\"k\":[]}"), 1);
    cr_expect_eq(match(g, "{\"n\":1,\"k\":[1,20,300]}"), 1);
    cr_expect_eq(match(g, "{\"n\":101,\"k\":[]}"), -1);
    cr_expect_eq(match(g, "{\"n\":0,\"k\":[]}"), -1);
    cr_expect_eq(match(g, "{\"n\":05,\"k\":[]}"), -1);
    cr_expect_eq(match(g, "{\"n\":5,\"k\":[0]}"), -1);
    cr_expect_eq(match(g, "{\"n\":5,\"k\":[-3]}"), -1);
    cr_expect_eq(match(g, "{\"n\":10"), 0, "a prefix that can go on");
    grammar_destroy(g);
}

Test(grammar, schema_integer_bounds_refused)
{
    schema_refused("{\"type\":\"number\",\"maximum\":3}", "keyword 'maximum' is not supported for type 'number'");
    schema_refused("{\"type\":\"number\",\"exclusiveMinimum\":0}", "schema.exclusiveMinimum");
    schema_refused("{\"type\":[\"integer\",\"null\"],\"minimum\":0}", "schema.minimum: keyword 'minimum' is not");
    schema_refused("{\"minimum\":0}", "only with \"type\": \"integer\"");
    schema_refused("{\"type\":\"string\",\"maxLength\":3,\"maximum\":3}", "keyword 'maximum'");
    schema_refused("{\"type\":\"integer\",\"enum\":[1,2,30],\"maximum\":10}", "keyword 'maximum'");
    schema_refused("{\"type\":\"integer\",\"anyOf\":[{\"const\":1}],\"minimum\":0}", "keyword 'minimum'");
    schema_refused("{\"type\":\"integer\",\"minimum\":1e17}", "'minimum' beyond 16 digits");
    schema_refused("{\"type\":\"integer\",\"maximum\":-12345678901234567}", "'maximum' beyond 16 digits");
    schema_refused("{\"type\":\"integer\",\"minimum\":0,\"exclusiveMinimum\":true}", "draft-4 boolean form");
    schema_refused("{\"type\":\"integer\",\"minimum\":\"3\"}", "'minimum' must be a number");
    schema_refused("{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", "admit no integer");
    schema_refused("{\"type\":\"integer\",\"exclusiveMinimum\":4,\"exclusiveMaximum\":5}", "admit no integer");
    schema_refused("{\"type\":\"integer\",\"minimum\":1.2,\"maximum\":1.8}", "admit no integer");
    schema_refused("{\"type\":\"integer\",\"minimum\":1e16}", "admit no integer");
}

static grammar *regex(const char *re)
{
    char *txt;
    ifd_error err;
    cr_assert_eq(grammar_regex_to_gbnf(re, strlen(re), &txt, &err), 0, "%s", err.msg);
    grammar *g = compile(txt);
    free(txt);
    return g;
}

Test(grammar, regex_subset)
{
    grammar *g = regex("^(ab|c+)\\d{2,3}[x-z.]?\\.$");
    cr_expect_eq(match(g, "ab12."), 1);
    cr_expect_eq(match(g, "ccc123z."), 1);
    cr_expect_eq(match(g, "c123.."), 1);
    cr_expect_eq(match(g, "ab1."), -1);
    cr_expect_eq(match(g, "abc12."), -1);
    grammar_destroy(g);
    g = regex("(?:[^a-c]\\w)*\\s");
    cr_expect_eq(match(g, "dZ_1 "), 1);
    cr_expect_eq(match(g, "a1 "), -1);
    grammar_destroy(g);
    const char *bad[][2] = {{"a\\1", "backreferences"}, {"a(?=b)", "lookaround"}, {"a*?", "lazy"},
                            {"\\bx", "word boundaries"}, {"a^b", "anchors"}, {"(a", "expected ')'"},
                            {"a)", "unbalanced"}, {"*a", "nothing to repeat"}, {"[[:alpha:]]", "POSIX"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *txt = NULL;
        ifd_error err = {{0}};
        cr_expect_lt(grammar_regex_to_gbnf(bad[i][0], strlen(bad[i][0]), &txt, &err), 0, "accepted %s", bad[i][0]);
        cr_expect(strstr(err.msg, bad[i][1]), "'%s': '%s' lacks '%s'", bad[i][0], err.msg, bad[i][1]);
        free(txt);
    }
}

Test(grammar, choices)
{
    const char *ch[] = {"yes", "no", "n/a \"quoted\""};
    char *txt;
    ifd_error err;
    cr_assert_eq(grammar_choice_to_gbnf(ch, 3, &txt, &err), 0, "%s", err.msg);
    grammar *g = compile(txt);
    free(txt);
    cr_expect_eq(match(g, "yes"), 1);
    cr_expect_eq(match(g, "n/a \"quoted\""), 1);
    cr_expect_eq(match(g, "n"), 0);
    cr_expect_eq(match(g, "nope"), -1);
    grammar_destroy(g);
    cr_expect_lt(grammar_choice_to_gbnf(ch, 0, &txt, &err), 0);
}

Test(grammar, ambiguous_grammar_is_bounded)
{
    /* every 'a' doubles the ways to parse: the stack bound keeps it cheap */
    grammar *g = compile("root ::= x*\nx ::= \"a\" | \"a\" \"a\" | \"a\" x");
    char s[4001];
    memset(s, 'a', 4000);
    s[4000] = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = match(g, s);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_expect_neq(r, -1);
    cr_expect_lt(t1.tv_sec - t0.tv_sec, 5, "took too long");
    grammar_destroy(g);
}

/* ---- masks on a real tokenizer ---- */

static tokenizer *load_tok(const char *model)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/models/%s", tu_must_shared_dir(), model);
    tokenizer *t;
    ifd_error err;
    cr_assert_eq(tok_load(path, &t, &err), 0, "%s", err.msg);
    return t;
}

/* Greedy "decoding" where the logits prefer the token with the lowest id:
 * whatever the mask allows first. Returns the text; checks every step's
 * chosen token is allowed and that eos comes only at the end. */
static char *drive(const tokenizer *t, const grammar_vocab *v, const grammar *g, int n_vocab, int32_t eos,
                   int max_steps, bool *ret_ended)
{
    grammar_matcher *m;
    cr_assert_eq(grammar_matcher_create(g, v, &m), 0);
    float *logits = malloc(sizeof(float) * (size_t)n_vocab);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)max_steps);
    int n = 0;
    *ret_ended = false;
    for (int step = 0; step < max_steps; step++) {
        /* prefer long tokens so the test moves quickly, then low ids */
        for (int i = 0; i < n_vocab; i++)
            logits[i] = (float)(-i) * 1e-6f;
        logits[eos] = -1.0f; /* end only when nothing else fits */
        int allowed = grammar_matcher_mask(m, logits, &eos, 1);
        cr_assert_gt(allowed, 0);
        int best = 0;
        for (int i = 1; i < n_vocab; i++)
            if (logits[i] > logits[best])
                best = i;
        cr_assert(isfinite(logits[best]));
        if (best == eos) {
            if (!grammar_matcher_is_complete(m))
                for (int k = 0; k < n; k++)
                    fprintf(stderr, "step %d: token %d '%s'\n", k, ids[k], tok_id_to_token(t, ids[k]));
            cr_assert(grammar_matcher_is_complete(m), "eos allowed before the grammar is complete (step %d, %d allowed)", step, allowed);
            *ret_ended = true;
            break;
        }
        cr_assert_eq(grammar_matcher_accept_token(m, best), 0, "an allowed token was not accepted");
        ids[n++] = best;
    }
    char *text;
    size_t len;
    ifd_error err;
    cr_assert_eq(tok_decode(t, ids, (size_t)n, true, &text, &len, &err), 0);
    free(ids);
    free(logits);
    grammar_matcher_destroy(m);
    return text;
}

Test(grammar, token_masks_on_qwen_vocab, .timeout = 120)
{
    tokenizer *t = load_tok("qwen3-tiny-random");
    int n_vocab = tok_vocab_size(t);
    grammar_vocab *v;
    ifd_error err;
    cr_assert_eq(grammar_vocab_create(t, n_vocab + 7, &v, &err), 0, "%s", err.msg);
    int32_t eos = tok_token_to_id(t, "<|im_end|>");
    cr_assert_geq(eos, 0);

    grammar *g = compile("root ::= \"{\\\"n\\\":\" [0-9]{1,3} \",\\\"s\\\":\\\"\" \"h\\u00e9llo \\u4e16\\u754c\" \"\\\"}\"");
    bool ended;
    char *text = drive(t, v, g, n_vocab + 7, eos, 64, &ended);
    cr_expect(ended);
    cr_expect_str_eq(text, "{\"n\":0,\"s\":\"h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c\"}");
    free(text);
    grammar_destroy(g);

    /* the mask: after "{" of a JSON object only '"' or '}' starting tokens */
    g = schema(NULL);
    grammar_matcher *m;
    cr_assert_eq(grammar_matcher_create(g, v, &m), 0);
    cr_assert_eq(grammar_matcher_accept_bytes(m, "{", 1), 0);
    float *logits = calloc((size_t)n_vocab + 7, sizeof(float));
    int allowed = grammar_matcher_mask(m, logits, &eos, 1);
    cr_expect_gt(allowed, 10);
    for (int i = 0; i < n_vocab + 7; i++) {
        if (!isfinite(logits[i]))
            continue;
        cr_assert_lt(i, n_vocab, "a padding id was allowed");
        cr_assert_neq(i, eos, "eos allowed in an incomplete object");
        char *b;
        size_t len;
        cr_assert_eq(tok_token_bytes(t, i, &b, &len, &err), 0);
        cr_expect(b[0] == '"' || b[0] == '}', "token %d '%s' allowed after '{'", i, b);
        free(b);
    }
    /* a token that ends inside a UTF-8 character is allowed inside a string */
    cr_assert_eq(grammar_matcher_accept_bytes(m, "\"k\":\"", 5), 0);
    cr_assert_eq(grammar_matcher_accept_bytes(m, "\xe4\xb8", 2), 0);
    cr_expect(!grammar_matcher_is_complete(m));
    cr_expect_lt(grammar_matcher_accept_bytes(m, "a", 1), 0, "an ASCII byte cannot finish a 3-byte character");
    cr_assert_eq(grammar_matcher_accept_bytes(m, "\x96\"}", 3), 0);
    cr_expect(grammar_matcher_is_complete(m));
    free(logits);
    grammar_matcher_destroy(m);
    grammar_destroy(g);
    grammar_vocab_destroy(v);
    tok_destroy(t);
}

Test(grammar, schema_output_on_llama3_vocab, .timeout = 120)
{
    tokenizer *t = load_tok("llama3-tiny-random");
    int n_vocab = tok_vocab_size(t);
    grammar_vocab *v;
    ifd_error err;
    cr_assert_eq(grammar_vocab_create(t, n_vocab, &v, &err), 0, "%s", err.msg);
    int32_t eos = tok_token_to_id(t, "<|eot_id|>");
    grammar *g = schema("{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":3},"
                        "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\"]},\"minItems\":2,\"maxItems\":3}},"
                        "\"required\":[\"name\",\"tags\"],\"additionalProperties\":false}");
    bool ended;
    char *text = drive(t, v, g, n_vocab, eos, 200, &ended);
    cr_expect(ended, "not finished: %s", text);
    cr_expect_eq(match(g, text), 1, "output does not match: %s", text);
    free(text);
    grammar_destroy(g);
    grammar_vocab_destroy(v);
    tok_destroy(t);
}

Test(grammar, large_grammar_compiles_in_linear_time, .timeout = 20)
{
    /* 8000 rules in a chain, each mentioned before it is defined: name
     * lookups, positions and the left-recursion check must stay linear */
    size_t cap = 8000 * 48 + 64, n = 0;
    char *txt = malloc(cap);
    n += (size_t)snprintf(txt + n, cap - n, "root ::= r0\n");
    for (int i = 0; i < 7999; i++)
        n += (size_t)snprintf(txt + n, cap - n, "r%d ::= \"a\" r%d | \"b\"\n", i, i + 1);
    n += (size_t)snprintf(txt + n, cap - n, "r7999 ::= \"z\"\n");
    grammar *g = compile(txt);
    cr_expect_eq(match(g, "aab"), 1);
    cr_expect_eq(match(g, "aa"), 0);
    cr_expect_eq(match(g, "c"), -1);
    grammar_destroy(g);
    free(txt);
}

Test(grammar, expensive_grammar_mask_is_bounded, .timeout = 60)
{
    /* every character can end or continue each of many overlapping parses:
     * the walk over a 151k vocabulary stops at its work bound instead of
     * taking minutes, and what it allows is still valid */
    tokenizer *t = load_tok("qwen3-tiny-random");
    int n_vocab = tok_vocab_size(t);
    grammar_vocab *v;
    ifd_error err;
    cr_assert_eq(grammar_vocab_create(t, n_vocab, &v, &err), 0, "%s", err.msg);
    grammar *g = compile("root ::= (a | b | c)*\na ::= [^\"]\nb ::= [^\"] [^\"]\nc ::= [^\"] a b");
    grammar_matcher *m;
    cr_assert_eq(grammar_matcher_create(g, v, &m), 0);
    float *logits = calloc((size_t)n_vocab, sizeof(float));
    int32_t eos = tok_token_to_id(t, "<|im_end|>");
    int allowed = grammar_matcher_mask(m, logits, &eos, 1);
    cr_expect_gt(allowed, 1);
    for (int i = 0; i < n_vocab; i++)
        if (isfinite(logits[i]) && i != eos) {
            cr_assert_eq(grammar_matcher_accept_token(m, i), 0, "allowed token %d does not fit", i);
            break;
        }
    free(logits);
    grammar_matcher_destroy(m);
    grammar_destroy(g);
    grammar_vocab_destroy(v);
    tok_destroy(t);
}

/* The mask against the definition: a token is allowed exactly when its bytes
 * can follow the prefix (accepting them from the same state succeeds). */
static void check_mask_exact(const tokenizer *t, const grammar_vocab *v, const grammar *g, const char *prefix)
{
    int n_vocab = tok_vocab_size(t);
    grammar_matcher *m;
    cr_assert_eq(grammar_matcher_create(g, v, &m), 0);
    cr_assert_eq(grammar_matcher_accept_bytes(m, prefix, strlen(prefix)), 0, "prefix %s", prefix);
    float *logits = calloc((size_t)n_vocab, sizeof(float));
    int32_t eos = -1;
    grammar_matcher_mask(m, logits, &eos, 0);
    int mismatches = 0;
    for (int id = 0; id < n_vocab && mismatches < 5; id++) {
        if (tok_is_special(t, id))
            continue;
        grammar_matcher *m2;
        cr_assert_eq(grammar_matcher_create(g, v, &m2), 0);
        grammar_matcher_accept_bytes(m2, prefix, strlen(prefix));
        bool fits = grammar_matcher_accept_token(m2, id) == 0;
        grammar_matcher_destroy(m2);
        if (fits != (bool)isfinite(logits[id])) {
            mismatches++;
            cr_expect(false, "after '%s': token %d '%s' fits %d, allowed %d", prefix, id, tok_id_to_token(t, id),
                      fits, (int)isfinite(logits[id]));
        }
    }
    free(logits);
    grammar_matcher_destroy(m);
}

Test(grammar, mask_equals_the_definition, .timeout = 300)
{
    tokenizer *t = load_tok("qwen3-tiny-random");
    grammar_vocab *v;
    ifd_error err;
    cr_assert_eq(grammar_vocab_create(t, tok_vocab_size(t), &v, &err), 0, "%s", err.msg);
    /* a free string (the loop shortcut), a bounded one (the chain), a number */
    grammar *g = schema("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"},\"b\":{\"type\":\"string\","
                        "\"maxLength\":5},\"c\":{\"type\":\"number\"}},\"required\":[\"a\",\"b\",\"c\"]}");
    check_mask_exact(t, v, g, "{\"a\":\"x");
    check_mask_exact(t, v, g, "{\"a\":\"x\",\"b\":\"ab");
    check_mask_exact(t, v, g, "{\"a\":\"x\",\"b\":\"ab\",\"c\":1");
    grammar_destroy(g);
    grammar_vocab_destroy(v);
    tok_destroy(t);
}

Test(grammar, token_bytes_keep_spaces_and_partial_characters)
{
    /* SentencePiece (Replace, ByteFallback, Fuse, Strip): a token in the
     * middle of a text keeps its leading space, which Strip only cuts at the
     * text's start; byte-level BPE: partial UTF-8 stays bytes */
    tokenizer *t = load_tok("tinystories-656k");
    int32_t id = tok_token_to_id(t, "\xe2\x96\x81" "a");
    cr_assert_geq(id, 0);
    char *b;
    size_t len;
    ifd_error err;
    cr_assert_eq(tok_token_bytes(t, id, &b, &len, &err), 0);
    cr_expect_eq(len, 2);
    cr_expect_str_eq(b, " a");
    free(b);
    tok_destroy(t);
    t = load_tok("qwen3-tiny-random");
    id = tok_token_to_id(t, "\xc3\xa4"); /* byte 0xE4 in GPT-2's byte alphabet: a lead byte alone */
    cr_assert_geq(id, 0);
    cr_assert_eq(tok_token_bytes(t, id, &b, &len, &err), 0);
    cr_expect_eq(len, 1);
    cr_expect_eq((unsigned char)b[0], 0xE4);
    free(b);
    tok_destroy(t);
}
