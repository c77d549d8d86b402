/* api_grammar.c - the request fields that constrain the output to a grammar.
 *
 * OpenAI's response_format (json_object, json_schema), llama.cpp's grammar
 * (GBNF) and json_schema, vLLM's guided_json, guided_regex, guided_choice and
 * guided_grammar all become one compiled grammar (core/text/grammar). At most
 * one of them may be given: two constraints at once have no clear meaning,
 * so that is a 400 rather than a guess. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "text/grammar/grammar.h"

/* Where a constraint comes from, and its GBNF text once converted. */
struct source {
    const char *param;
    char *gbnf;
};

static int bad(struct api_error *e, const char *param, const char *msg)
{
    api_error_set(e, 400, "invalid_request_error", param, NULL, "%s", msg);
    return -EINVAL;
}

static int converted(struct api_error *e, const char *param, int rc, const ifd_error *err)
{
    if (rc >= 0)
        return 0;
    api_error_set(e, 400, "invalid_request_error", param, rc == -E2BIG ? "too_large" : "invalid_grammar",
                  "'%s': %s", param, err->msg);
    return -EINVAL;
}

static int from_schema(const cJSON *schema, const char *param, char **ret, struct api_error *e)
{
    ifd_error err = {{0}};
    if (schema && cJSON_IsString(schema)) {
        /* vLLM takes guided_json as a JSON text too */
        cJSON *parsed = cJSON_Parse(schema->valuestring);
        if (!parsed)
            return bad(e, param, "the schema text is not valid JSON");
        int rc = grammar_schema_to_gbnf(parsed, ret, &err);
        cJSON_Delete(parsed);
        return converted(e, param, rc, &err);
    }
    if (schema && !cJSON_IsObject(schema) && !cJSON_IsBool(schema))
        return bad(e, param, "the schema must be a JSON object");
    return converted(e, param, grammar_schema_to_gbnf(schema, ret, &err), &err);
}

static int from_response_format(const cJSON *rf, struct source *s, struct api_error *e)
{
    if (!cJSON_IsObject(rf))
        return bad(e, "response_format", "'response_format' must be an object");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rf, "type");
    if (!cJSON_IsString(type))
        return bad(e, "response_format.type", "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
    if (strcmp(type->valuestring, "text") == 0)
        return 0;
    s->param = "response_format";
    if (strcmp(type->valuestring, "json_object") == 0)
        return from_schema(NULL, "response_format", &s->gbnf, e);
    if (strcmp(type->valuestring, "json_schema") != 0)
        return bad(e, "response_format.type", "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
    if (!cJSON_IsObject(js))
        return bad(e, "response_format.json_schema", "'response_format.json_schema' must be an object with a \"schema\"");
    const cJSON *strict = cJSON_GetObjectItemCaseSensitive(js, "strict");
    if (strict && !cJSON_IsBool(strict) && !cJSON_IsNull(strict))
        return bad(e, "response_format.json_schema.strict", "'strict' must be a boolean");
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(js, "schema");
    /* strict or not, the output is held to the schema: constrained decoding
     * has no weaker mode worth offering */
    return from_schema(schema, "response_format.json_schema.schema", &s->gbnf, e);
}

static int from_choices(const cJSON *list, char **ret, struct api_error *e)
{
    int n = cJSON_GetArraySize(list);
    if (!cJSON_IsArray(list) || n == 0 || n > 4096)
        return bad(e, "guided_choice", "'guided_choice' must be an array of 1 to 4096 strings");
    const char **ch = calloc((size_t)n, sizeof(*ch));
    if (!ch)
        return bad(e, "guided_choice", "out of memory");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, list) {
        if (!cJSON_IsString(it)) {
            free(ch);
            return bad(e, "guided_choice", "'guided_choice' must be an array of strings");
        }
        ch[i++] = it->valuestring;
    }
    ifd_error err = {{0}};
    int rc = grammar_choice_to_gbnf(ch, (size_t)n, ret, &err);
    free(ch);
    return converted(e, "guided_choice", rc, &err);
}

static int from_string(const cJSON *v, const char *param, bool regex, char **ret, struct api_error *e)
{
    if (!cJSON_IsString(v))
        return api_error_set(e, 400, "invalid_request_error", param, NULL, "'%s' must be a string", param), -EINVAL;
    size_t len = strlen(v->valuestring);
    if (!regex) {
        if (!(*ret = strdup(v->valuestring)))
            return bad(e, param, "out of memory");
        return 0;
    }
    ifd_error err = {{0}};
    return converted(e, param, grammar_regex_to_gbnf(v->valuestring, len, ret, &err), &err);
}

int api_parse_grammar(const cJSON *root, struct grammar **ret, struct api_error *e)
{
    static const char *const fields[] = {"response_format", "grammar", "guided_grammar", "json_schema",
                                         "guided_json", "guided_regex", "guided_choice"};
    struct source s = {0};
    *ret = NULL;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, fields[i]);
        if (!v || cJSON_IsNull(v))
            continue;
        if (s.param) {
            free(s.gbnf);
            api_error_set(e, 400, "invalid_request_error", fields[i], NULL,
                          "'%s' and '%s' both constrain the output; give at most one", s.param, fields[i]);
            return -EINVAL;
        }
        int rc;
        if (i == 0) {
            rc = from_response_format(v, &s, e);
        } else {
            s.param = fields[i];
            if (i <= 2)
                rc = from_string(v, fields[i], false, &s.gbnf, e);
            else if (i <= 4)
                rc = from_schema(v, fields[i], &s.gbnf, e);
            else if (i == 5)
                rc = from_string(v, fields[i], true, &s.gbnf, e);
            else
                rc = from_choices(v, &s.gbnf, e);
        }
        if (rc < 0) {
            free(s.gbnf);
            return rc;
        }
    }
    if (!s.gbnf)
        return 0;
    grammar *g;
    ifd_error err = {{0}};
    int rc = grammar_parse_gbnf(s.gbnf, strlen(s.gbnf), &g, &err);
    free(s.gbnf);
    if (rc < 0) {
        api_error_set(e, 400, "invalid_request_error", s.param, rc == -E2BIG ? "too_large" : "invalid_grammar",
                      "'%s': %s", s.param, err.msg);
        return -EINVAL;
    }
    *ret = g;
    return 0;
}
