/* grammar_convert.c - JSON Schema, regular expressions and choice lists to
 * GBNF text.
 *
 * Each converter writes rules into one text buffer; the result goes through
 * grammar_parse_gbnf() like any user grammar, so the limits there bound what
 * a converted schema can cost. Converters refuse what they do not support
 * with a message naming the keyword (or regex construct) and where it is,
 * rather than loosen the constraint silently. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/utf8.h"
#include "grammar.h"

struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > GRAMMAR_MAX_TEXT + 1) {
        b->oom = true; /* reported as "too large" */
        return;
    }
    char *p = buf_grow(b->p, &b->cap, b->n + n + 1, 1);
    if (!p) {
        b->oom = true;
        return;
    }
    b->p = p;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        b->oom = true;
        return;
    }
    sb_put(b, tmp, (size_t)n);
}

/* Writes code point cp so that it reads as itself inside "..." and [...]. */
static void sb_char(struct sbuf *b, uint32_t cp)
{
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') || cp == ' ' || cp == '_') {
        char c = (char)cp;
        sb_put(b, &c, 1);
    } else if (cp < 0x80) {
        sb_printf(b, "\\x%02X", cp);
    } else {
        char u[4];
        int n = utf8_encode((int32_t)cp, u);
        if (n > 0)
            sb_put(b, u, (size_t)n);
    }
}

/* A GBNF literal of the bytes s[0..n) (valid UTF-8). */
static void sb_literal(struct sbuf *b, const char *s, size_t n)
{
    sb_put(b, "\"", 1);
    for (size_t i = 0; i < n;)
        sb_char(b, (uint32_t)utf8_next(s, n, &i));
    sb_put(b, "\"", 1);
}

static int sb_finish(struct sbuf *b, char **ret, ifd_error *err, const char *what)
{
    if (b->oom) {
        free(b->p);
        return ifd_error_set(err, -E2BIG, "%s: the grammar it converts to is larger than %d bytes", what,
                             GRAMMAR_MAX_TEXT);
    }
    *ret = b->p;
    return 0;
}

/* ================================================================ regex */

struct rx {
    const char *s;
    size_t len, pos;
    int depth;
    bool in_json;     /* inside a JSON string (schema "pattern"): no raw " \ or controls */
    struct sbuf *out;
    ifd_error *err;
};

static int rx_fail(struct rx *r, const char *what)
{
    return ifd_error_set(r->err, -EINVAL, "regex at offset %zu: %s", r->pos, what);
}

/* What a JSON string may hold unescaped: the "any character" of a pattern. */
#define JSON_CHAR_CLASS "[^\"\\\\\\x00-\\x1F]"

/* Emits a literal character of the regex. */
static int rx_char(struct rx *r, uint32_t cp)
{
    if (r->in_json && (cp == '"' || cp == '\\' || cp < 0x20))
        return rx_fail(r, "a pattern character that JSON must escape (\", \\ or a control character) is not supported");
    sb_put(r->out, "[", 1);
    sb_char(r->out, cp);
    sb_put(r->out, "]", 1);
    return 0;
}

/* \d \w \s and their negations, as class bodies (without brackets). */
static const char *rx_shorthand(char c, bool *neg)
{
    *neg = c == 'D' || c == 'W' || c == 'S';
    switch (c | 0x20) {
    case 'd': return "0-9";
    case 'w': return "a-zA-Z0-9_";
    case 's': return " \\t\\n\\r\\x0B\\x0C";
    default: return NULL;
    }
}

static int rx_escape_char(struct rx *r, char c, uint32_t *cp)
{
    switch (c) {
    case 'n': *cp = '\n'; return 0;
    case 't': *cp = '\t'; return 0;
    case 'r': *cp = '\r'; return 0;
    case 'f': *cp = '\f'; return 0;
    case 'v': *cp = '\v'; return 0;
    default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
            return rx_fail(r, "this escape is not supported (supported: \\d \\w \\s \\D \\W \\S \\n \\t \\r \\f \\v and escaped punctuation)");
        *cp = (uint32_t)(unsigned char)c;
        return 0;
    }
}

static int rx_class(struct rx *r)
{
    r->pos++; /* [ */
    bool neg = r->pos < r->len && r->s[r->pos] == '^';
    if (neg)
        r->pos++;
    sb_put(r->out, neg ? "[^" : "[", neg ? 2 : 1);
    if (neg && r->in_json)
        sb_put(r->out, "\"\\\\\\x00-\\x1F", strlen("\"\\\\\\x00-\\x1F"));
    bool first = true;
    while (r->pos < r->len && (r->s[r->pos] != ']' || first)) {
        first = false;
        uint32_t lo = 0;
        if (r->s[r->pos] == '[' && r->pos + 1 < r->len && r->s[r->pos + 1] == ':')
            return rx_fail(r, "POSIX classes [:name:] are not supported");
        if (r->s[r->pos] == '\\') {
            if (++r->pos >= r->len)
                return rx_fail(r, "unterminated escape");
            bool sneg;
            const char *body = rx_shorthand(r->s[r->pos], &sneg);
            if (body) {
                if (sneg)
                    return rx_fail(r, "\\D \\W \\S inside a class are not supported");
                sb_put(r->out, body, strlen(body));
                r->pos++;
                continue;
            }
            int rc = rx_escape_char(r, r->s[r->pos++], &lo);
            if (rc < 0)
                return rc;
        } else {
            lo = (uint32_t)utf8_next(r->s, r->len, &r->pos);
        }
        uint32_t hi = lo;
        if (r->pos + 1 < r->len && r->s[r->pos] == '-' && r->s[r->pos + 1] != ']') {
            r->pos++;
            if (r->s[r->pos] == '\\') {
                if (++r->pos >= r->len)
                    return rx_fail(r, "unterminated escape");
                int rc = rx_escape_char(r, r->s[r->pos++], &hi);
                if (rc < 0)
                    return rc;
            } else {
                hi = (uint32_t)utf8_next(r->s, r->len, &r->pos);
            }
            if (hi < lo)
                return rx_fail(r, "a class range goes backwards");
        }
        if (!neg && r->in_json && ((lo <= '"' && hi >= '"') || (lo <= '\\' && hi >= '\\') || lo < 0x20))
            return rx_fail(r, "a class that admits \", \\ or a control character is not supported in a pattern");
        sb_char(r->out, lo);
        if (hi != lo) {
            sb_put(r->out, "-", 1);
            sb_char(r->out, hi);
        }
    }
    if (r->pos >= r->len)
        return rx_fail(r, "unterminated class");
    r->pos++;
    sb_put(r->out, "]", 1);
    return 0;
}

static int rx_alternation(struct rx *r);

static int rx_atom(struct rx *r)
{
    char c = r->s[r->pos];
    switch (c) {
    case '(':
        if (++r->depth > GRAMMAR_MAX_NESTING)
            return rx_fail(r, "groups nest deeper than 64");
        r->pos++;
        if (r->pos < r->len && r->s[r->pos] == '?') {
            if (r->pos + 1 < r->len && r->s[r->pos + 1] == ':')
                r->pos += 2;
            else
                return rx_fail(r, "lookaround and named groups are not supported (only (?:...))");
        }
        sb_put(r->out, "(", 1);
        int rc = rx_alternation(r);
        if (rc < 0)
            return rc;
        if (r->pos >= r->len || r->s[r->pos] != ')')
            return rx_fail(r, "expected ')'");
        r->pos++;
        r->depth--;
        sb_put(r->out, ")", 1);
        return 0;
    case '[':
        return rx_class(r);
    case '.':
        r->pos++;
        sb_put(r->out, r->in_json ? JSON_CHAR_CLASS : "[^\\n]", r->in_json ? strlen(JSON_CHAR_CLASS) : 5);
        return 0;
    case '\\': {
        if (++r->pos >= r->len)
            return rx_fail(r, "unterminated escape");
        bool neg;
        const char *body = rx_shorthand(r->s[r->pos], &neg);
        if (body) {
            r->pos++;
            sb_put(r->out, neg ? "[^" : "[", neg ? 2 : 1);
            if (neg && r->in_json)
                sb_put(r->out, "\"\\\\\\x00-\\x1F", strlen("\"\\\\\\x00-\\x1F"));
            sb_put(r->out, body, strlen(body));
            sb_put(r->out, "]", 1);
            return 0;
        }
        if (r->s[r->pos] == 'b' || r->s[r->pos] == 'B')
            return rx_fail(r, "word boundaries \\b \\B are not supported");
        if (r->s[r->pos] >= '1' && r->s[r->pos] <= '9')
            return rx_fail(r, "backreferences are not supported");
        uint32_t cp = 0;
        int erc = rx_escape_char(r, r->s[r->pos++], &cp);
        return erc < 0 ? erc : rx_char(r, cp);
    }
    case '^':
    case '$':
        return rx_fail(r, "anchors are only supported at the very start (^) and end ($)");
    case '*': case '+': case '?': case '{':
        return rx_fail(r, "a quantifier with nothing to repeat");
    default:
        return rx_char(r, (uint32_t)utf8_next(r->s, r->len, &r->pos));
    }
}

static int rx_sequence(struct rx *r)
{
    while (r->pos < r->len && r->s[r->pos] != '|' && r->s[r->pos] != ')') {
        if (r->s[r->pos] == '$' && r->pos + 1 == r->len && r->depth == 0) {
            r->pos++;
            break;
        }
        int rc = rx_atom(r);
        if (rc < 0)
            return rc;
        if (r->pos >= r->len)
            break;
        char q = r->s[r->pos];
        if (q == '*' || q == '+' || q == '?') {
            sb_put(r->out, &q, 1);
            r->pos++;
        } else if (q == '{') {
            /* digits, then optionally a comma and more digits */
            size_t end = r->pos + 1, digits = 0;
            while (end < r->len && r->s[end] >= '0' && r->s[end] <= '9')
                end++, digits++;
            if (digits && end < r->len && r->s[end] == ',')
                for (end++; end < r->len && r->s[end] >= '0' && r->s[end] <= '9';)
                    end++;
            if (!digits || end >= r->len || r->s[end] != '}')
                return rx_fail(r, "expected {m}, {m,} or {m,n}");
            sb_put(r->out, r->s + r->pos, end + 1 - r->pos); /* GBNF checks the numbers */
            r->pos = end + 1;
        } else {
            continue;
        }
        if (r->pos < r->len && (r->s[r->pos] == '?' || r->s[r->pos] == '+'))
            return rx_fail(r, "lazy and possessive quantifiers are not supported");
        if (r->pos < r->len && (r->s[r->pos] == '*' || r->s[r->pos] == '{'))
            return rx_fail(r, "a quantifier follows a quantifier");
    }
    return 0;
}

static int rx_alternation(struct rx *r)
{
    for (;;) {
        sb_put(r->out, " ", 1);
        int rc = rx_sequence(r);
        if (rc < 0)
            return rc;
        if (r->pos < r->len && r->s[r->pos] == '|') {
            r->pos++;
            sb_put(r->out, " |", 2);
            continue;
        }
        sb_put(r->out, " ", 1);
        return 0;
    }
}

/* Writes the regex as a group "( ... )" into out. */
static int rx_convert(const char *re, size_t len, bool in_json, struct sbuf *out, ifd_error *err)
{
    if (len > GRAMMAR_MAX_REGEX)
        return ifd_error_set(err, -E2BIG, "regex: %zu bytes; the limit is %d", len, GRAMMAR_MAX_REGEX);
    if (utf8_check(re, len) != len)
        return ifd_error_set(err, -EINVAL, "regex: invalid UTF-8");
    struct rx r = {.s = re, .len = len, .in_json = in_json, .out = out, .err = err};
    if (r.len && r.s[0] == '^')
        r.pos++;
    sb_put(out, "(", 1);
    int rc = rx_alternation(&r);
    if (rc < 0)
        return rc;
    if (r.pos < r.len)
        return rx_fail(&r, "unbalanced ')'");
    sb_put(out, ")", 1);
    return 0;
}

int grammar_regex_to_gbnf(const char *re, size_t len, char **ret_text, ifd_error *err)
{
    struct sbuf b = {0};
    sb_put(&b, "root ::= ", 9);
    int rc = rx_convert(re, len, false, &b, err);
    sb_put(&b, "\n", 1);
    if (rc < 0) {
        free(b.p);
        return rc;
    }
    return sb_finish(&b, ret_text, err, "regex");
}

int grammar_choice_to_gbnf(const char *const *choices, size_t n, char **ret_text, ifd_error *err)
{
    if (n == 0)
        return ifd_error_set(err, -EINVAL, "choices: the list is empty");
    struct sbuf b = {0};
    sb_put(&b, "root ::= ", 9);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(choices[i]);
        if (utf8_check(choices[i], len) != len) {
            free(b.p);
            return ifd_error_set(err, -EINVAL, "choices[%zu]: invalid UTF-8", i);
        }
        if (i)
            sb_put(&b, " | ", 3);
        sb_literal(&b, choices[i], len);
    }
    sb_put(&b, "\n", 1);
    return sb_finish(&b, ret_text, err, "choices");
}

/* ================================================================ JSON Schema */

/* The JSON building blocks, without whitespace between tokens. */
static const char JSON_RULES[] =
    "jchar ::= [^\"\\\\\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})\n"
    "jstring ::= \"\\\"\" jchar* \"\\\"\"\n"
    /* in strings with a length bound: characters beyond the BMP only as
     * escaped surrogate pairs, so the count holds for code points and for
     * UTF-16 units alike (JavaScript validators such as zod count those) */
    "jcharb ::= [^\"\\\\\\x00-\\x1F\\U00010000-\\U0010FFFF] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})\n"
    "jint ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15})\n"
    "jnumber ::= jint (\".\" [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?\n"
    "jboolean ::= \"true\" | \"false\"\n"
    "jnull ::= \"null\"\n"
    "jvalue ::= jobject | jarray | jstring | jnumber | jboolean | jnull\n"
    "jobject ::= \"{\" (jstring \":\" jvalue (\",\" jstring \":\" jvalue)*)? \"}\"\n"
    "jarray ::= \"[\" (jvalue (\",\" jvalue)*)? \"]\"\n";

struct sc {
    struct sbuf *out;
    const cJSON *root;
    int n_rules;
    /* $ref targets already given a rule: pointer -> rule number */
    const cJSON **ref_node;
    int *ref_rule;
    size_t n_refs, cap_refs;
    ifd_error *err;
};

/* A JSON path for messages, "schema.properties.a.items". */
struct path {
    const struct path *up;
    const char *seg;
};

static void path_str(const struct path *p, char *buf, size_t cap)
{
    const char *segs[GRAMMAR_MAX_SCHEMA_DEPTH * 3 + 8];
    int n = 0;
    for (; p && n < (int)(sizeof(segs) / sizeof(segs[0])); p = p->up)
        segs[n++] = p->seg;
    size_t o = 0;
    buf[0] = '\0';
    for (int i = n - 1; i >= 0 && o < cap; i--)
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", i == n - 1 ? "" : ".", segs[i]);
}

static int sc_fail(struct sc *c, const struct path *p, const char *fmt, const char *arg)
{
    char where[256];
    path_str(p, where, sizeof(where));
    char what[256];
    snprintf(what, sizeof(what), fmt, arg);
    return ifd_error_set(c->err, -EINVAL, "%s: %s", where, what);
}

static int sc_schema_at(struct sc *c, const cJSON *s, const struct path *p, int depth, int rule);

/* Keywords that only annotate: they never change what is valid. */
static bool is_annotation(const char *k)
{
    static const char *const names[] = {"title", "description", "default", "examples", "$schema", "$id",
                                        "$comment", "deprecated", "readOnly", "writeOnly", "strict", NULL};
    for (int i = 0; names[i]; i++)
        if (strcmp(k, names[i]) == 0)
            return true;
    return false;
}

static bool is_supported(const char *k)
{
    static const char *const names[] = {"type", "properties", "required", "additionalProperties", "enum", "const",
                                        "items", "minItems", "maxItems", "anyOf", "oneOf", "allOf", "$ref", "$defs",
                                        "definitions", "minLength", "maxLength", "pattern", "format", "minimum",
                                        "maximum", "exclusiveMinimum", "exclusiveMaximum", NULL};
    for (int i = 0; names[i]; i++)
        if (strcmp(k, names[i]) == 0)
            return true;
    return is_annotation(k);
}

static int new_rule(struct sc *c)
{
    return ++c->n_rules;
}

/* Reads a non-negative integer keyword; -1 when absent. */
static int get_count(struct sc *c, const cJSON *s, const char *key, const struct path *p, int max, int *ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, key);
    *ret = -1;
    if (!v)
        return 0;
    struct path kp = {p, key};
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != (double)(int64_t)v->valuedouble)
        return sc_fail(c, &kp, "'%s' must be a non-negative integer", key);
    if (v->valuedouble > max) {
        char msg[96];
        snprintf(msg, sizeof(msg), "'%%s' above %d is not supported", max);
        return sc_fail(c, &kp, msg, key);
    }
    *ret = (int)v->valuedouble;
    return 0;
}

/* The enum/const literal of a JSON value (its compact serialization). */
static int sc_value_literal(struct sc *c, const cJSON *v, const struct path *p)
{
    char *txt = cJSON_PrintUnformatted(v);
    if (!txt)
        return sc_fail(c, p, "%s", "out of memory");
    sb_literal(c->out, txt, strlen(txt));
    free(txt);
    return 0;
}

static int sc_string(struct sc *c, const cJSON *s, const struct path *p, int rule)
{
    int min, max, rc;
    if ((rc = get_count(c, s, "minLength", p, GRAMMAR_MAX_REPEAT, &min)) < 0 ||
        (rc = get_count(c, s, "maxLength", p, GRAMMAR_MAX_REPEAT, &max)) < 0)
        return rc;
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(s, "pattern");
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(s, "format");
    if (pat && (min >= 0 || max >= 0))
        return sc_fail(c, p, "%s", "'pattern' together with 'minLength'/'maxLength' is not supported");
    if (pat) {
        struct path kp = {p, "pattern"};
        if (!cJSON_IsString(pat))
            return sc_fail(c, &kp, "%s", "'pattern' must be a string");
        sb_printf(c->out, "r%d ::= \"\\\"\" ", rule);
        ifd_error e;
        if (rx_convert(pat->valuestring, strlen(pat->valuestring), true, c->out, &e) < 0)
            return sc_fail(c, &kp, "%s", e.msg);
        sb_put(c->out, " \"\\\"\"\n", 6);
        return 0;
    }
    if (fmt) {
        struct path kp = {p, "format"};
        const char *f = cJSON_IsString(fmt) ? fmt->valuestring : "";
        const char *body = NULL;
        if (strcmp(f, "date") == 0)
            body = "[0-9]{4} \"-\" [0-9]{2} \"-\" [0-9]{2}";
        else if (strcmp(f, "time") == 0)
            body = "[0-9]{2} \":\" [0-9]{2} \":\" [0-9]{2} (\".\" [0-9]{1,9})? (\"Z\" | [-+] [0-9]{2} \":\" [0-9]{2})";
        else if (strcmp(f, "date-time") == 0)
            body = "[0-9]{4} \"-\" [0-9]{2} \"-\" [0-9]{2} \"T\" [0-9]{2} \":\" [0-9]{2} \":\" [0-9]{2} (\".\" [0-9]{1,9})? (\"Z\" | [-+] [0-9]{2} \":\" [0-9]{2})";
        else if (strcmp(f, "uuid") == 0)
            body = "[0-9a-f]{8} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{12}";
        if (!body)
            return sc_fail(c, &kp, "format '%s' is not supported (supported: date, time, date-time, uuid)", f);
        sb_printf(c->out, "r%d ::= \"\\\"\" %s \"\\\"\"\n", rule, body);
        return 0;
    }
    if (min >= 0 && max >= 0 && max < min)
        return sc_fail(c, p, "%s", "'maxLength' is below 'minLength'");
    if (min < 0 && max < 0)
        sb_printf(c->out, "r%d ::= jstring\n", rule);
    else if (max < 0)
        sb_printf(c->out, "r%d ::= \"\\\"\" jcharb{%d,} \"\\\"\"\n", rule, min);
    else
        sb_printf(c->out, "r%d ::= \"\\\"\" jcharb{%d,%d} \"\\\"\"\n", rule, min < 0 ? 0 : min, max);
    return 0;
}

static int sc_array(struct sc *c, const cJSON *s, const struct path *p, int rule, int depth)
{
    int min, max, rc;
    if ((rc = get_count(c, s, "minItems", p, 1000, &min)) < 0 || (rc = get_count(c, s, "maxItems", p, 1000, &max)) < 0)
        return rc;
    if (min < 0)
        min = 0;
    if (max >= 0 && max < min)
        return sc_fail(c, p, "%s", "'maxItems' is below 'minItems'");
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    int item = 0;
    if (items) {
        struct path kp = {p, "items"};
        if (!cJSON_IsObject(items))
            return sc_fail(c, &kp, "%s", "'items' must be a schema object (tuple forms are not supported)");
        item = new_rule(c);
        if ((rc = sc_schema_at(c, items, &kp, depth + 1, item)) < 0)
            return rc;
    }
    char it[32];
    if (items)
        snprintf(it, sizeof(it), "r%d", item);
    else
        snprintf(it, sizeof(it), "jvalue");
    /* "[" (item ("," item){min-1,max-1})? "]", the group required when min > 0 */
    if (max == 0) {
        sb_printf(c->out, "r%d ::= \"[]\"\n", rule);
        return 0;
    }
    int lo = min > 0 ? min - 1 : 0;
    sb_printf(c->out, "r%d ::= \"[\" (%s (\",\" %s)", rule, it, it);
    if (max < 0)
        sb_printf(c->out, "{%d,}", lo);
    else
        sb_printf(c->out, "{%d,%d}", lo, max - 1);
    sb_printf(c->out, ")%s \"]\"\n", min > 0 ? "" : "?");
    return 0;
}

static int sc_object(struct sc *c, const cJSON *s, const struct path *p, int rule, int depth)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    struct path ap = {p, "additionalProperties"};
    if (addl && !cJSON_IsFalse(addl) && !(cJSON_IsTrue(addl) && !props))
        return sc_fail(c, &ap, "%s", "'additionalProperties' other than false is not supported with 'properties'");
    if (!props) {
        if (req && cJSON_GetArraySize(req) > 0)
            return sc_fail(c, p, "%s", "'required' without 'properties' is not supported");
        sb_printf(c->out, "r%d ::= jobject\n", rule);
        return 0;
    }
    struct path pp = {p, "properties"};
    if (!cJSON_IsObject(props))
        return sc_fail(c, &pp, "%s", "'properties' must be an object");
    int n = cJSON_GetArraySize(props);
    if (req) {
        struct path rp = {p, "required"};
        if (!cJSON_IsArray(req))
            return sc_fail(c, &rp, "%s", "'required' must be an array of property names");
        const cJSON *r;
        cJSON_ArrayForEach(r, req) {
            if (!cJSON_IsString(r))
                return sc_fail(c, &rp, "%s", "'required' must be an array of property names");
            if (!cJSON_GetObjectItemCaseSensitive(props, r->valuestring))
                return sc_fail(c, &rp, "required property '%s' is not in 'properties'", r->valuestring);
        }
    }
    if (n == 0) {
        sb_printf(c->out, "r%d ::= \"{}\"\n", rule);
        return 0;
    }
    /* each property: kv rule = "\"name\":" value */
    int kv0 = c->n_rules + 1;
    c->n_rules += n;
    /* tails: for property i and whether something came before: 2 rules each */
    int tail0 = c->n_rules + 1;
    c->n_rules += 2 * (n + 1);
    int i = 0;
    const cJSON *prop;
    cJSON_ArrayForEach(prop, props) {
        struct path np = {&pp, prop->string};
        if (!cJSON_IsObject(prop) && !cJSON_IsBool(prop))
            return sc_fail(c, &np, "%s", "a property's schema must be an object");
        int val = new_rule(c);
        char *key = cJSON_PrintUnformatted(&(cJSON){.type = cJSON_String, .valuestring = prop->string});
        if (!key)
            return sc_fail(c, &np, "%s", "out of memory");
        sb_printf(c->out, "r%d ::= ", kv0 + i);
        sb_literal(c->out, key, strlen(key));
        free(key);
        sb_printf(c->out, " \":\" r%d\n", val);
        int rc;
        if (cJSON_IsTrue(prop))
            sb_printf(c->out, "r%d ::= jvalue\n", val);
        else if (cJSON_IsFalse(prop))
            return sc_fail(c, &np, "%s", "a 'false' property schema is not supported");
        else if ((rc = sc_schema_at(c, prop, &np, depth + 1, val)) < 0)
            return rc;
        i++;
    }
    /* T(i, first): properties i.. where first says no comma is due yet */
    i = 0;
    cJSON_ArrayForEach(prop, props) {
        bool required = false;
        const cJSON *r;
        if (req)
            cJSON_ArrayForEach(r, req) required |= strcmp(r->valuestring, prop->string) == 0;
        for (int first = 0; first < 2; first++) {
            int me = tail0 + 2 * i + first, next = tail0 + 2 * (i + 1);
            const char *comma = first ? "" : "\",\" ";
            if (required)
                sb_printf(c->out, "r%d ::= %sr%d r%d\n", me, comma, kv0 + i, next);
            else
                sb_printf(c->out, "r%d ::= %sr%d r%d | r%d\n", me, comma, kv0 + i, next, next + first);
        }
        i++;
    }
    sb_printf(c->out, "r%d ::= \"\"\nr%d ::= \"\"\n", tail0 + 2 * n, tail0 + 2 * n + 1);
    sb_printf(c->out, "r%d ::= \"{\" r%d \"}\"\n", rule, tail0 + 1);
    return 0;
}

/* The rule for a $ref target, generated on first use (recursive schemas
 * refer to a rule that is still being written, which GBNF allows). */
static int sc_ref(struct sc *c, const cJSON *ref, const struct path *p, int depth, int *ret_rule)
{
    struct path kp = {p, "$ref"};
    if (!cJSON_IsString(ref))
        return sc_fail(c, &kp, "%s", "'$ref' must be a string");
    const char *r = ref->valuestring;
    const char *sect = NULL;
    if (strncmp(r, "#/$defs/", 8) == 0)
        sect = "$defs";
    else if (strncmp(r, "#/definitions/", 14) == 0)
        sect = "definitions";
    else if (strcmp(r, "#") == 0)
        sect = "";
    if (!sect)
        return sc_fail(c, &kp, "'%s': only references to #, #/$defs/NAME and #/definitions/NAME are supported", r);
    const cJSON *target = c->root;
    if (*sect) {
        const char *name = r + (sect[0] == '$' ? 8 : 14);
        const cJSON *defs = cJSON_GetObjectItemCaseSensitive(c->root, sect);
        target = defs ? cJSON_GetObjectItemCaseSensitive(defs, name) : NULL;
        if (strchr(name, '/') || strchr(name, '~'))
            target = NULL;
    }
    if (!cJSON_IsObject(target))
        return sc_fail(c, &kp, "'%s' does not name a schema in this document", r);
    for (size_t i = 0; i < c->n_refs; i++)
        if (c->ref_node[i] == target) {
            *ret_rule = c->ref_rule[i];
            return 0;
        }
    size_t cap = c->cap_refs;
    const cJSON **nn = buf_grow(c->ref_node, &cap, c->n_refs + 1, sizeof(*c->ref_node));
    if (nn)
        c->ref_node = nn;
    int *nr = nn ? buf_grow(c->ref_rule, &c->cap_refs, c->n_refs + 1, sizeof(*c->ref_rule)) : NULL;
    if (!nr)
        return sc_fail(c, &kp, "%s", "out of memory");
    c->ref_rule = nr;
    int rule = new_rule(c);
    c->ref_node[c->n_refs] = target;
    c->ref_rule[c->n_refs++] = rule;
    struct path tp = {NULL, r};
    *ret_rule = rule;
    return sc_schema_at(c, target, &tp, depth + 1, rule);
}

/* Writes "r<rule> ::= rF | rF+1 | ... " over n new rules, which the caller
 * then defines (anyOf/oneOf, type lists); returns F, the first of them. */
static int sc_union_rule(struct sc *c, int rule, int n)
{
    int first = c->n_rules + 1;
    c->n_rules += n;
    sb_printf(c->out, "r%d ::=", rule);
    for (int i = 0; i < n; i++)
        sb_printf(c->out, "%s r%d", i ? " |" : "", first + i);
    sb_put(c->out, "\n", 1);
    return first;
}

/* Writes "r<rule> ::= alternatives of the list" for anyOf/oneOf/allOf(1). */
static int sc_alternatives(struct sc *c, const cJSON *list, const char *key, const struct path *p, int depth, int rule)
{
    struct path kp = {p, key};
    int n = cJSON_GetArraySize(list);
    if (!cJSON_IsArray(list) || n == 0)
        return sc_fail(c, &kp, "'%s' must be a non-empty array of schemas", key);
    if (strcmp(key, "allOf") == 0 && n != 1)
        return sc_fail(c, &kp, "%s", "'allOf' with more than one schema is not supported");
    int first = sc_union_rule(c, rule, n);
    const cJSON *it;
    int i = 0;
    cJSON_ArrayForEach(it, list) {
        char idx[16];
        snprintf(idx, sizeof(idx), "%d", i);
        struct path ip = {&kp, idx};
        int rc = sc_schema_at(c, it, &ip, depth + 1, first + i);
        if (rc < 0)
            return rc;
        i++;
    }
    return 0;
}

/* ---------------------------------------------------------- integer ranges */

/* The largest magnitude jint can spell: 16 digits. */
#define INT_RANGE_MAX 9999999999999999LL

static const char *const BOUND_KEYS[] = {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"};

/* Writes an expression matching every n-digit string from lo to hi (equal
 * length, lo <= hi as numbers). The shared prefix is a literal; after it the
 * first digits differ, and the range splits into: lo's first digit followed
 * by lo's tail up to 9...9, the digits strictly between followed by any
 * digits, and hi's first digit followed by 0...0 up to hi's tail. A tail of
 * all zeros (all nines) folds its part into the middle, which keeps a
 * 16-digit span to at most about 2 alternatives per digit, nested rather
 * than multiplied. */
static void int_span(struct sbuf *b, const char *lo, const char *hi, int n)
{
    int common = 0;
    while (common < n && lo[common] == hi[common])
        common++;
    if (common) {
        sb_put(b, "\"", 1);
        sb_put(b, lo, (size_t)common);
        sb_put(b, "\"", 1);
    }
    if (common == n)
        return;
    if (common)
        sb_put(b, " ", 1);
    lo += common;
    hi += common;
    n -= common;
    int rest = n - 1;
    bool lo_zeros = true, hi_nines = true;
    for (int i = 1; i < n; i++) {
        lo_zeros &= lo[i] == '0';
        hi_nines &= hi[i] == '9';
    }
    char first = lo_zeros ? lo[0] : (char)(lo[0] + 1);
    char last = hi_nines ? hi[0] : (char)(hi[0] - 1);
    int alts = !lo_zeros + (first <= last) + !hi_nines;
    char nines[20], zeros[20];
    memset(nines, '9', sizeof(nines));
    memset(zeros, '0', sizeof(zeros));
    if (alts > 1)
        sb_put(b, "(", 1);
    const char *sep = "";
    if (!lo_zeros) {
        sb_printf(b, "\"%c\" ", lo[0]);
        int_span(b, lo + 1, nines, rest);
        sep = " | ";
    }
    if (first <= last) {
        sb_put(b, sep, strlen(sep));
        if (first == last)
            sb_printf(b, "\"%c\"", first);
        else
            sb_printf(b, "[%c-%c]", first, last);
        if (rest == 1)
            sb_put(b, " [0-9]", 6);
        else if (rest > 1)
            sb_printf(b, " [0-9]{%d}", rest);
        sep = " | ";
    }
    if (!hi_nines) {
        sb_put(b, sep, strlen(sep));
        sb_printf(b, "\"%c\" ", hi[0]);
        int_span(b, zeros, hi + 1, rest);
    }
    if (alts > 1)
        sb_put(b, ")", 1);
}

static long long pow10ll(int n)
{
    long long v = 1;
    while (n-- > 0)
        v *= 10;
    return v;
}

/* Writes alternatives (" | "-separated, for the top of a rule or inside
 * parentheses) matching the decimal spellings of lo..hi, 1 <= lo <= hi <=
 * INT_RANGE_MAX: a span for lo's length unless lo starts it, one for hi's
 * unless hi ends it, and every length in between whole, as one run. */
static void int_positive(struct sbuf *b, long long lo, long long hi)
{
    char a[24], z[24];
    int la = snprintf(a, sizeof(a), "%lld", lo), lz = snprintf(z, sizeof(z), "%lld", hi);
    if (la == lz) {
        int_span(b, a, z, la);
        return;
    }
    int full_lo = la, full_hi = lz; /* lengths every spelling of which is in range */
    const char *sep = "";
    if (lo != pow10ll(la - 1)) {
        char nines[24];
        snprintf(nines, sizeof(nines), "%lld", pow10ll(la) - 1);
        int_span(b, a, nines, la);
        full_lo++;
        sep = " | ";
    }
    if (hi != pow10ll(lz) - 1)
        full_hi--;
    if (full_lo <= full_hi) {
        sb_printf(b, "%s[1-9]", sep);
        if (full_lo == full_hi && full_lo > 1)
            sb_printf(b, " [0-9]{%d}", full_lo - 1);
        else if (full_lo < full_hi)
            sb_printf(b, " [0-9]{%d,%d}", full_lo - 1, full_hi - 1);
        sep = " | ";
    }
    if (full_hi < lz) {
        char tens[24];
        snprintf(tens, sizeof(tens), "%lld", pow10ll(lz - 1));
        sb_put(b, sep, strlen(sep));
        int_span(b, tens, z, lz);
    }
}

/* Reads one bound keyword: *ret_has says whether it is there, *ret_v its value. */
static int sc_bound(struct sc *c, const cJSON *s, const char *key, const struct path *p, bool *ret_has, double *ret_v)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, key);
    *ret_has = false;
    if (!v)
        return 0;
    struct path kp = {p, key};
    if (cJSON_IsBool(v))
        return sc_fail(c, &kp, "'%s' must be a number (the draft-4 boolean form is not supported)", key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return sc_fail(c, &kp, "'%s' must be a number", key);
    /* 1e16 itself is allowed: a JSON number reads as a double, which cannot
     * tell 9999999999999999 from 10000000000000000 */
    if (fabs(v->valuedouble) > 1e16)
        return sc_fail(c, &kp, "'%s' beyond 16 digits is not supported (integers have at most 16 digits)", key);
    *ret_has = true;
    *ret_v = v->valuedouble;
    return 0;
}

/* An integer with minimum/maximum/exclusiveMinimum/exclusiveMaximum: exactly
 * the integers of at most 16 digits (jint's cap) within every bound given,
 * without leading zeros and never "-0". Bounds need not be integers
 * (minimum 1.5 means 2 and up). */
static int sc_integer(struct sc *c, const cJSON *s, const struct path *p, int rule)
{
    long long lo = -INT_RANGE_MAX, hi = INT_RANGE_MAX;
    bool any = false;
    for (int i = 0; i < 4; i++) {
        bool has;
        double v = 0;
        int rc = sc_bound(c, s, BOUND_KEYS[i], p, &has, &v);
        if (rc < 0)
            return rc;
        if (!has)
            continue;
        any = true;
        /* |v| <= 1e16, so these fit and the +-1 cannot overflow */
        long long e;
        if (i == 0)
            e = (long long)ceil(v);
        else if (i == 1)
            e = (long long)floor(v) + 1;
        else if (i == 2)
            e = (long long)floor(v);
        else
            e = (long long)ceil(v) - 1;
        if (i < 2 && e > lo)
            lo = e;
        if (i >= 2 && e < hi)
            hi = e;
    }
    if (!any) {
        sb_printf(c->out, "r%d ::= jint\n", rule);
        return 0;
    }
    if (lo > hi)
        return sc_fail(c, p, "%s", "the bounds admit no integer (of at most 16 digits)");
    sb_printf(c->out, "r%d ::= ", rule);
    const char *sep = "";
    if (lo < 0) {
        /* "-" then the magnitudes, never 0 */
        sb_put(c->out, "\"-\" (", 5);
        int_positive(c->out, hi < 0 ? -hi : 1, -lo);
        sb_put(c->out, ")", 1);
        sep = " | ";
    }
    if (lo <= 0 && hi >= 0) {
        sb_printf(c->out, "%s\"0\"", sep);
        sep = " | ";
    }
    if (hi > 0) {
        sb_put(c->out, sep, strlen(sep));
        int_positive(c->out, lo > 1 ? lo : 1, hi);
    }
    sb_put(c->out, "\n", 1);
    return 0;
}

/* Bounds are exact only on a lone integer type; anywhere else (numbers,
 * whose fractions and exponents a digit-wise grammar cannot bound; type
 * lists; enum, const, $ref and the combinators, which would skip them)
 * they are refused rather than dropped. */
static int sc_check_bounds(struct sc *c, const cJSON *s, const struct path *p)
{
    const char *key = NULL;
    for (int i = 0; i < 4 && !key; i++)
        if (cJSON_GetObjectItemCaseSensitive(s, BOUND_KEYS[i]))
            key = BOUND_KEYS[i];
    if (!key)
        return 0;
    struct path kp = {p, key};
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (cJSON_IsString(type) && strcmp(type->valuestring, "number") == 0)
        return sc_fail(c, &kp, "keyword '%s' is not supported for type 'number' (only for 'integer')", key);
    static const char *const skip[] = {"$ref", "const", "enum", "anyOf", "oneOf", "allOf"};
    bool lone = cJSON_IsString(type) && strcmp(type->valuestring, "integer") == 0;
    for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
        lone &= !cJSON_GetObjectItemCaseSensitive(s, skip[i]);
    if (!lone)
        return sc_fail(c, &kp,
                       "keyword '%s' is not supported here: only with \"type\": \"integer\" (one type, without "
                       "enum, const, $ref, anyOf, oneOf or allOf)",
                       key);
    return 0;
}

static int sc_type(struct sc *c, const cJSON *s, const char *type, const struct path *p, int depth, int rule)
{
    if (strcmp(type, "object") == 0)
        return sc_object(c, s, p, rule, depth);
    if (strcmp(type, "array") == 0)
        return sc_array(c, s, p, rule, depth);
    if (strcmp(type, "string") == 0)
        return sc_string(c, s, p, rule);
    if (strcmp(type, "integer") == 0)
        return sc_integer(c, s, p, rule);
    static const char *const simple[][2] = {{"number", "jnumber"}, {"boolean", "jboolean"}, {"null", "jnull"}};
    for (size_t i = 0; i < sizeof(simple) / sizeof(simple[0]); i++)
        if (strcmp(type, simple[i][0]) == 0) {
            sb_printf(c->out, "r%d ::= %s\n", rule, simple[i][1]);
            return 0;
        }
    struct path kp = {p, "type"};
    return sc_fail(c, &kp, "unknown type '%s'", type);
}

/* Writes rule `rule` for schema s. Every keyword is either understood or
 * refused: a constraint ignored silently would let invalid output through. */
static int sc_schema_at(struct sc *c, const cJSON *s, const struct path *p, int depth, int rule)
{
    if (depth > GRAMMAR_MAX_SCHEMA_DEPTH)
        return sc_fail(c, p, "%s", "the schema nests deeper than 32");
    if (cJSON_IsTrue(s)) {
        sb_printf(c->out, "r%d ::= jvalue\n", rule);
        return 0;
    }
    if (!cJSON_IsObject(s))
        return sc_fail(c, p, "%s", "a schema must be an object");
    const cJSON *k;
    cJSON_ArrayForEach(k, s) {
        if (!is_supported(k->string)) {
            struct path kp = {p, k->string};
            return sc_fail(c, &kp, "keyword '%s' is not supported", k->string);
        }
    }
    int brc = sc_check_bounds(c, s, p);
    if (brc < 0)
        return brc;
    const cJSON *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(s, "$ref"))) {
        int target = 0, rc;
        if ((rc = sc_ref(c, v, p, depth, &target)) < 0)
            return rc;
        sb_printf(c->out, "r%d ::= r%d\n", rule, target);
        return 0;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(s, "const"))) {
        sb_printf(c->out, "r%d ::= ", rule);
        struct path kp = {p, "const"};
        int rc = sc_value_literal(c, v, &kp);
        sb_put(c->out, "\n", 1);
        return rc;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(s, "enum"))) {
        struct path kp = {p, "enum"};
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) == 0)
            return sc_fail(c, &kp, "%s", "'enum' must be a non-empty array");
        sb_printf(c->out, "r%d ::= ", rule);
        const cJSON *e;
        int i = 0;
        cJSON_ArrayForEach(e, v) {
            if (i++)
                sb_put(c->out, " | ", 3);
            int rc = sc_value_literal(c, e, &kp);
            if (rc < 0)
                return rc;
        }
        sb_put(c->out, "\n", 1);
        return 0;
    }
    static const char *const combis[] = {"anyOf", "oneOf", "allOf"};
    for (int i = 0; i < 3; i++)
        if ((v = cJSON_GetObjectItemCaseSensitive(s, combis[i])))
            return sc_alternatives(c, v, combis[i], p, depth, rule);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (!type) {
        /* no type: infer from the keywords present, else any value */
        if (cJSON_GetObjectItemCaseSensitive(s, "properties"))
            return sc_object(c, s, p, rule, depth);
        if (cJSON_GetObjectItemCaseSensitive(s, "items"))
            return sc_array(c, s, p, rule, depth);
        sb_printf(c->out, "r%d ::= jvalue\n", rule);
        return 0;
    }
    if (cJSON_IsString(type))
        return sc_type(c, s, type->valuestring, p, depth, rule);
    struct path kp = {p, "type"};
    int n = cJSON_GetArraySize(type);
    if (!cJSON_IsArray(type) || n == 0)
        return sc_fail(c, &kp, "%s", "'type' must be a string or a non-empty array of strings");
    int first = sc_union_rule(c, rule, n);
    const cJSON *t;
    int i = 0;
    cJSON_ArrayForEach(t, type) {
        if (!cJSON_IsString(t))
            return sc_fail(c, &kp, "%s", "'type' must be a string or a non-empty array of strings");
        int rc = sc_type(c, s, t->valuestring, p, depth, first + i);
        if (rc < 0)
            return rc;
        i++;
    }
    return 0;
}

int grammar_schema_to_gbnf(const cJSON *schema, char **ret_text, ifd_error *err)
{
    struct sbuf b = {0};
    struct sc c = {.out = &b, .root = schema, .err = err};
    struct path root = {NULL, "schema"};
    sb_put(&b, JSON_RULES, strlen(JSON_RULES));
    int rc;
    if (!schema) {
        sb_put(&b, "root ::= jobject\n", 17);
        rc = 0;
    } else {
        sb_put(&b, "root ::= r1\n", 12);
        rc = sc_schema_at(&c, schema, &root, 0, new_rule(&c));
    }
    free(c.ref_node);
    free(c.ref_rule);
    if (rc < 0) {
        free(b.p);
        return rc;
    }
    return sb_finish(&b, ret_text, err, "schema");
}
