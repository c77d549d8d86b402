/* test_api_grammar.c - the request fields that constrain the output
 * (daemon/api_grammar.c through api_request_parse): which fields are read,
 * the one-constraint rule, and the 400s with their param. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "api.h"

static int parse(const char *body, struct api_request *r, struct api_error *e)
{
    return api_request_parse(API_KIND_CHAT, body, strlen(body), 1000, r, e);
}

#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"

Test(api_grammar, each_field_gives_a_grammar)
{
    static const char *const fields[] = {
        "\"response_format\":{\"type\":\"json_object\"}",
        "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"schema\":{\"type\":\"integer\"},\"strict\":true}}",
        "\"grammar\":\"root ::= [a-z]+\"",
        "\"guided_grammar\":\"root ::= \\\"x\\\"\"",
        "\"json_schema\":{\"type\":\"boolean\"}",
        "\"guided_json\":{\"enum\":[1,2]}",
        "\"guided_json\":\"{\\\"type\\\":\\\"null\\\"}\"",
        "\"guided_regex\":\"[0-9]{3}\"",
        "\"guided_choice\":[\"a\",\"b\"]",
    };
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        char body[512];
        snprintf(body, sizeof(body), "{" MSG ",%s}", fields[i]);
        struct api_request r;
        struct api_error e;
        cr_assert_eq(parse(body, &r, &e), 0, "%s: %s", fields[i], e.message);
        cr_expect_not_null(r.grammar, "%s", fields[i]);
        api_request_finish(&r);
    }
}

Test(api_grammar, text_and_null_are_unconstrained)
{
    struct api_request r;
    struct api_error e;
    cr_assert_eq(parse("{" MSG ",\"response_format\":{\"type\":\"text\"},\"grammar\":null}", &r, &e), 0, "%s", e.message);
    cr_expect_null(r.grammar);
    api_request_finish(&r);
}

Test(api_grammar, refusals_name_the_param)
{
    static const struct {
        const char *field, *param, *needle;
    } cases[] = {
        {"\"grammar\":\"root ::= \\\"a\"", "grammar", "line 1 column"},
        {"\"grammar\":7", "grammar", "must be a string"},
        {"\"guided_json\":{\"type\":\"number\",\"maximum\":3}", "guided_json", "keyword 'maximum'"},
        {"\"guided_json\":\"{nope\"", "guided_json", "not valid JSON"},
        {"\"json_schema\":[1]", "json_schema", "must be a JSON object"},
        {"\"response_format\":{\"type\":\"xml\"}", "response_format.type", "json_schema"},
        {"\"response_format\":\"json\"", "response_format", "must be an object"},
        {"\"response_format\":{\"type\":\"json_schema\"}", "response_format.json_schema", "must be an object"},
        {"\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{},\"strict\":1}}",
         "response_format.json_schema.strict", "boolean"},
        {"\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"$ref\":\"#/x\"}}}",
         "response_format.json_schema.schema", "only references"},
        {"\"guided_regex\":\"(a\"", "guided_regex", "expected ')'"},
        {"\"guided_choice\":[]", "guided_choice", "array of 1 to 4096"},
        {"\"guided_choice\":[1]", "guided_choice", "array of strings"},
        {"\"grammar\":\"root ::= \\\"a\\\"\",\"guided_regex\":\"a\"", "guided_regex", "at most one"},
        {"\"response_format\":{\"type\":\"json_object\"},\"json_schema\":{}", "json_schema", "at most one"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char body[512];
        snprintf(body, sizeof(body), "{" MSG ",%s}", cases[i].field);
        struct api_request r;
        struct api_error e = {0};
        cr_expect_lt(parse(body, &r, &e), 0, "accepted %s", cases[i].field);
        cr_expect_eq(e.status, 400);
        cr_expect_str_eq(e.param, cases[i].param, "%s", cases[i].field);
        cr_expect(strstr(e.message, cases[i].needle), "%s: '%s' lacks '%s'", cases[i].field, e.message,
                  cases[i].needle);
    }
}
