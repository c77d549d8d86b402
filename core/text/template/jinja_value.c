/* jinja_value.c - arena, values and their Python-style text forms. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/utf8.h"
#include "jinja-internal.h"

/* ---- arena ---- */

struct jarena_block {
    struct jarena_block *next;
    size_t used, size;
    _Alignas(16) unsigned char data[];
};

struct jarena {
    struct jarena_block *head;
    size_t total, limit;
};

#define JARENA_BLOCK 65536

struct jarena *jarena_create(size_t limit)
{
    struct jarena *a = calloc(1, sizeof(*a));
    if (a)
        a->limit = limit;
    return a;
}

void jarena_destroy(struct jarena *a)
{
    if (!a)
        return;
    struct jarena_block *b = a->head;
    while (b) {
        struct jarena_block *next = b->next;
        free(b);
        b = next;
    }
    free(a);
}

void *jarena_alloc(struct jarena *a, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    if (size == 0)
        size = 16;
    struct jarena_block *b = a->head;
    if (!b || b->size - b->used < size) {
        size_t bsize = size > JARENA_BLOCK / 4 ? size : JARENA_BLOCK;
        if (size > a->limit || a->total > a->limit - size)
            return NULL;
        b = malloc(sizeof(*b) + bsize);
        if (!b)
            return NULL;
        b->used = 0;
        b->size = bsize;
        a->total += bsize;
        /* A large allocation gets its own block behind the current one, so the
         * current block's free space stays usable. */
        if (bsize != JARENA_BLOCK && a->head) {
            b->next = a->head->next;
            a->head->next = b;
        } else {
            b->next = a->head;
            a->head = b;
        }
    }
    void *p = b->data + b->used;
    b->used += size;
    memset(p, 0, size);
    return p;
}

/* ---- lists and dicts ---- */

struct jlist *jlist_new(struct jarena *a, size_t cap)
{
    struct jlist *l = jarena_alloc(a, sizeof(*l));
    if (!l)
        return NULL;
    if (cap) {
        l->items = jarena_alloc(a, cap * sizeof(struct jv));
        if (!l->items)
            return NULL;
        l->cap = cap;
    }
    return l;
}

int jlist_push(struct jarena *a, struct jlist *l, struct jv v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        struct jv *items = jarena_alloc(a, cap * sizeof(*items));
        if (!items)
            return -ENOMEM;
        if (l->n)
            memcpy(items, l->items, l->n * sizeof(*items));
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n++] = v;
    return 0;
}

struct jdict *jdict_new(struct jarena *a, size_t cap)
{
    struct jdict *d = jarena_alloc(a, sizeof(*d));
    if (!d)
        return NULL;
    if (cap) {
        d->keys = jarena_alloc(a, cap * sizeof(*d->keys));
        d->vals = jarena_alloc(a, cap * sizeof(*d->vals));
        if (!d->keys || !d->vals)
            return NULL;
        d->cap = cap;
    }
    return d;
}

struct jv *jdict_get(const struct jdict *d, const char *key, size_t n)
{
    for (size_t i = d->n; i-- > 0;)
        if (d->keys[i].n == n && memcmp(d->keys[i].p, key, n) == 0)
            return &d->vals[i];
    return NULL;
}

static int jdict_append(struct jarena *a, struct jdict *d, struct jstr key, struct jv v)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        struct jstr *keys = jarena_alloc(a, cap * sizeof(*keys));
        struct jv *vals = jarena_alloc(a, cap * sizeof(*vals));
        if (!keys || !vals)
            return -ENOMEM;
        if (d->n) {
            memcpy(keys, d->keys, d->n * sizeof(*keys));
            memcpy(vals, d->vals, d->n * sizeof(*vals));
        }
        d->keys = keys;
        d->vals = vals;
        d->cap = cap;
    }
    d->keys[d->n] = key;
    d->vals[d->n] = v;
    d->n++;
    return 0;
}

int jdict_set(struct jarena *a, struct jdict *d, struct jstr key, struct jv v)
{
    struct jv *old = jdict_get(d, key.p, key.n);
    if (old) {
        *old = v;
        return 0;
    }
    return jdict_append(a, d, key, v);
}

bool jstr_eq(struct jstr a, const char *lit)
{
    size_t n = strlen(lit);
    return a.n == n && memcmp(a.p, lit, n) == 0;
}

/* ---- truthiness, equality ---- */

bool jv_truthy(struct jv v)
{
    switch (v.kind) {
    case JV_UNDEF:
    case JV_NONE:
        return false;
    case JV_BOOL:
        return v.b;
    case JV_INT:
        return v.i != 0;
    case JV_FLOAT:
        return v.f != 0.0;
    case JV_STR:
        return v.s.n != 0;
    case JV_LIST:
        return v.l->n != 0;
    case JV_DICT:
        return v.d->n != 0;
    default:
        return true;
    }
}

static bool is_number(struct jv v)
{
    return v.kind == JV_INT || v.kind == JV_FLOAT || v.kind == JV_BOOL;
}

static double as_double(struct jv v)
{
    return v.kind == JV_FLOAT ? v.f : v.kind == JV_INT ? (double)v.i : (double)v.b;
}

static bool equal_depth(struct jv a, struct jv b, int depth)
{
    if (depth > JV_MAX_DEPTH)
        return false;
    if (is_number(a) && is_number(b)) {
        if (a.kind != JV_FLOAT && b.kind != JV_FLOAT) {
            int64_t x = a.kind == JV_INT ? a.i : a.b, y = b.kind == JV_INT ? b.i : b.b;
            return x == y;
        }
        return as_double(a) == as_double(b);
    }
    if (a.kind != b.kind)
        return false;
    switch (a.kind) {
    case JV_UNDEF:
    case JV_NONE:
        return true;
    case JV_STR:
        return a.s.n == b.s.n && memcmp(a.s.p, b.s.p, a.s.n) == 0;
    case JV_LIST:
        if (a.l->n != b.l->n)
            return false;
        for (size_t i = 0; i < a.l->n; i++)
            if (!equal_depth(a.l->items[i], b.l->items[i], depth + 1))
                return false;
        return true;
    case JV_DICT:
        if (a.d->n != b.d->n)
            return false;
        for (size_t i = 0; i < a.d->n; i++) {
            struct jv *o = jdict_get(b.d, a.d->keys[i].p, a.d->keys[i].n);
            if (!o || !equal_depth(a.d->vals[i], *o, depth + 1))
                return false;
        }
        return true;
    case JV_NS:
        return a.d == b.d;
    case JV_MACRO:
        return a.m == b.m;
    case JV_LOOP:
        return a.loop == b.loop;
    case JV_FUNC:
        return a.func == b.func;
    default:
        return false;
    }
}

bool jv_equal(struct jv a, struct jv b)
{
    return equal_depth(a, b, 0);
}

const char *jv_type_name(struct jv v)
{
    switch (v.kind) {
    case JV_UNDEF: return "undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: return v.l->tuple ? "tuple" : "list";
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_MACRO: return "Macro";
    case JV_LOOP: return "LoopContext";
    case JV_FUNC: return "function";
    }
    return "?";
}

/* ---- buffers ---- */

int jbuf_put(struct jbuf *b, const char *p, size_t n)
{
    if (n > b->limit || b->n > b->limit - n)
        return -EFBIG;
    if (b->cap - b->n < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n + 1)
            cap *= 2;
        char *np = jarena_alloc(b->arena, cap);
        if (!np)
            return -ENOMEM;
        if (b->n)
            memcpy(np, b->p, b->n);
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

int jbuf_putc(struct jbuf *b, char c)
{
    return jbuf_put(b, &c, 1);
}

static int jbuf_puts(struct jbuf *b, const char *s)
{
    return jbuf_put(b, s, strlen(s));
}

/* ---- UTF-8 ---- */

/* The template's names for base/utf8.h: a malformed sequence reads as one
 * U+FFFD, as in the JavaScript strings of @huggingface/jinja. */
int32_t jutf8_next(const char *s, size_t n, size_t *i)
{
    return utf8_next(s, n, i);
}

size_t jutf8_len(const char *s, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n;) {
        jutf8_next(s, n, &i);
        count++;
    }
    return count;
}

int jutf8_put(struct jbuf *b, int32_t cp)
{
    char t[UTF8_MAX_BYTES];
    int n = utf8_encode(cp, t);
    if (n < 0) /* a lone surrogate cannot be UTF-8 */
        n = utf8_encode(UTF8_REPLACEMENT, t);
    return jbuf_put(b, t, (size_t)n);
}

bool jutf8_is_space(int32_t cp)
{
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x1f))
        return true;
    return cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/* ---- text forms ---- */

int jv_write_float(struct jbuf *b, double f)
{
    if (isnan(f))
        return jbuf_puts(b, "nan");
    if (isinf(f))
        return jbuf_puts(b, f < 0 ? "-inf" : "inf");
    /* Shortest digits that read back to the same double, laid out as Python's
     * float repr: positional for 1e-4 <= |f| < 1e16, else d.ddde+XX. */
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f)
            break;
    }
    char *e = strchr(tmp, 'e');
    int exp10 = atoi(e + 1);
    char digits[24];
    size_t nd = 0;
    const char *p = tmp;
    bool neg = *p == '-';
    if (neg)
        p++;
    for (; p < e; p++)
        if (*p >= '0' && *p <= '9')
            digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    char out[64];
    size_t o = 0;
    if (neg)
        out[o++] = '-';
    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 < 0) {
            out[o++] = '0';
            out[o++] = '.';
            for (int z = 0; z < -exp10 - 1; z++)
                out[o++] = '0';
            for (size_t k = 0; k < nd; k++)
                out[o++] = digits[k];
        } else {
            for (int k = 0; k <= exp10; k++)
                out[o++] = (size_t)k < nd ? digits[k] : '0';
            out[o++] = '.';
            if ((size_t)exp10 + 1 < nd)
                for (size_t k = exp10 + 1; k < nd; k++)
                    out[o++] = digits[k];
            else
                out[o++] = '0';
        }
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (size_t k = 1; k < nd; k++)
                out[o++] = digits[k];
        }
        o += snprintf(out + o, sizeof(out) - o, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
    }
    return jbuf_put(b, out, o);
}

static int write_int(struct jbuf *b, int64_t i)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%lld", (long long)i);
    return jbuf_put(b, tmp, (size_t)n);
}

/* Python repr of a str: single quotes unless the text has ' and no ". */
static int write_py_str_repr(struct jbuf *b, struct jstr s)
{
    bool has_sq = memchr(s.p, '\'', s.n) != NULL, has_dq = memchr(s.p, '"', s.n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    int rc = jbuf_putc(b, q);
    for (size_t i = 0; i < s.n && rc == 0; i++) {
        unsigned char c = (unsigned char)s.p[i];
        char esc[8];
        if (c == '\\' || c == (unsigned char)q) {
            esc[0] = '\\';
            esc[1] = (char)c;
            rc = jbuf_put(b, esc, 2);
        } else if (c == '\n') {
            rc = jbuf_put(b, "\\n", 2);
        } else if (c == '\r') {
            rc = jbuf_put(b, "\\r", 2);
        } else if (c == '\t') {
            rc = jbuf_put(b, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof(esc), "\\x%02x", c);
            rc = jbuf_put(b, esc, 4);
        } else {
            rc = jbuf_putc(b, (char)c);
        }
    }
    return rc ? rc : jbuf_putc(b, q);
}

static int write_repr_depth(struct jbuf *b, struct jv v, bool top_str, int depth);

static int write_seq_repr(struct jbuf *b, struct jv v, int depth)
{
    int rc = 0;
    if (v.kind == JV_LIST) {
        rc = jbuf_putc(b, v.l->tuple ? '(' : '[');
        for (size_t i = 0; i < v.l->n && rc == 0; i++) {
            if (i)
                rc = jbuf_put(b, ", ", 2);
            if (rc == 0)
                rc = write_repr_depth(b, v.l->items[i], false, depth + 1);
        }
        if (rc == 0 && v.l->tuple && v.l->n == 1)
            rc = jbuf_putc(b, ',');
        return rc ? rc : jbuf_putc(b, v.l->tuple ? ')' : ']');
    }
    if (v.kind == JV_NS)
        rc = jbuf_puts(b, "<Namespace ");
    rc = rc ? rc : jbuf_putc(b, '{');
    for (size_t i = 0; i < v.d->n && rc == 0; i++) {
        if (i)
            rc = jbuf_put(b, ", ", 2);
        if (rc == 0)
            rc = write_py_str_repr(b, v.d->keys[i]);
        if (rc == 0)
            rc = jbuf_put(b, ": ", 2);
        if (rc == 0)
            rc = write_repr_depth(b, v.d->vals[i], false, depth + 1);
    }
    rc = rc ? rc : jbuf_putc(b, '}');
    if (rc == 0 && v.kind == JV_NS)
        rc = jbuf_putc(b, '>');
    return rc;
}

static int write_repr_depth(struct jbuf *b, struct jv v, bool top_str, int depth)
{
    if (depth > JV_MAX_DEPTH)
        return -ELOOP;
    switch (v.kind) {
    case JV_UNDEF:
        return top_str ? 0 : jbuf_puts(b, "Undefined");
    case JV_NONE:
        return jbuf_puts(b, "None");
    case JV_BOOL:
        return jbuf_puts(b, v.b ? "True" : "False");
    case JV_INT:
        return write_int(b, v.i);
    case JV_FLOAT:
        return jv_write_float(b, v.f);
    case JV_STR:
        return top_str ? jbuf_put(b, v.s.p, v.s.n) : write_py_str_repr(b, v.s);
    case JV_LIST:
    case JV_DICT:
    case JV_NS:
        return write_seq_repr(b, v, depth);
    case JV_MACRO:
        return jbuf_puts(b, "<Macro>");
    case JV_LOOP:
        return jbuf_puts(b, "<LoopContext>");
    case JV_FUNC:
        return jbuf_puts(b, "<function>");
    }
    return 0;
}

int jv_write_str(struct jbuf *b, struct jv v)
{
    return write_repr_depth(b, v, true, 0);
}

int jv_write_repr(struct jbuf *b, struct jv v)
{
    return write_repr_depth(b, v, false, 0);
}

int jv_to_str(struct jarena *a, struct jv v, size_t limit, struct jstr *ret)
{
    if (v.kind == JV_STR) {
        *ret = v.s;
        return 0;
    }
    struct jbuf b = {.arena = a, .limit = limit};
    int rc = jv_write_str(&b, v);
    if (rc < 0)
        return rc;
    *ret = (struct jstr){b.p ? b.p : "", b.n};
    return 0;
}

/* ---- JSON ---- */

static int write_json_str(struct jbuf *b, struct jstr s)
{
    int rc = jbuf_putc(b, '"');
    size_t run = 0; /* bytes copied as they are, flushed in one go */
    for (size_t i = 0; i < s.n && rc == 0; i++) {
        unsigned char c = (unsigned char)s.p[i];
        const char *esc = NULL;
        char tmp[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) {
                snprintf(tmp, sizeof(tmp), "\\u%04x", c);
                esc = tmp;
            }
        }
        if (!esc) {
            run++;
            continue;
        }
        if (run)
            rc = jbuf_put(b, s.p + i - run, run);
        run = 0;
        if (rc == 0)
            rc = jbuf_puts(b, esc);
    }
    if (rc == 0 && run)
        rc = jbuf_put(b, s.p + s.n - run, run);
    return rc ? rc : jbuf_putc(b, '"');
}

static int write_newline_indent(struct jbuf *b, int indent, int level)
{
    int rc = jbuf_putc(b, '\n');
    for (int i = 0; i < indent * level && rc == 0; i++)
        rc = jbuf_putc(b, ' ');
    return rc;
}

/* What goes before item i of a list or dict at `depth`: the separator from
 * the previous item (Python's json.dumps: ", " inline, "," when indenting)
 * and, when indenting, the new line. */
static int write_item_prefix(struct jbuf *b, size_t i, int indent, int depth)
{
    int rc = 0;
    if (i)
        rc = jbuf_put(b, indent >= 0 ? "," : ", ", indent >= 0 ? 1 : 2);
    if (rc == 0 && indent >= 0)
        rc = write_newline_indent(b, indent, depth + 1);
    return rc;
}

static int write_json_depth(struct jbuf *b, struct jv v, int indent, int depth, const char **bad)
{
    if (depth > JV_MAX_DEPTH)
        return -ELOOP;
    int rc = 0;
    switch (v.kind) {
    case JV_NONE:
        return jbuf_puts(b, "null");
    case JV_BOOL:
        return jbuf_puts(b, v.b ? "true" : "false");
    case JV_INT:
        return write_int(b, v.i);
    case JV_FLOAT:
        if (isnan(v.f))
            return jbuf_puts(b, "NaN");
        if (isinf(v.f))
            return jbuf_puts(b, v.f < 0 ? "-Infinity" : "Infinity");
        return jv_write_float(b, v.f);
    case JV_STR:
        return write_json_str(b, v.s);
    case JV_LIST:
        if (v.l->n == 0)
            return jbuf_puts(b, "[]");
        rc = jbuf_putc(b, '[');
        for (size_t i = 0; i < v.l->n && rc == 0; i++) {
            rc = write_item_prefix(b, i, indent, depth);
            if (rc == 0)
                rc = write_json_depth(b, v.l->items[i], indent, depth + 1, bad);
        }
        if (rc == 0 && indent >= 0)
            rc = write_newline_indent(b, indent, depth);
        return rc ? rc : jbuf_putc(b, ']');
    case JV_DICT:
    case JV_NS:
        if (v.d->n == 0)
            return jbuf_puts(b, "{}");
        rc = jbuf_putc(b, '{');
        for (size_t i = 0; i < v.d->n && rc == 0; i++) {
            rc = write_item_prefix(b, i, indent, depth);
            if (rc == 0)
                rc = write_json_str(b, v.d->keys[i]);
            if (rc == 0)
                rc = jbuf_put(b, ": ", 2);
            if (rc == 0)
                rc = write_json_depth(b, v.d->vals[i], indent, depth + 1, bad);
        }
        if (rc == 0 && indent >= 0)
            rc = write_newline_indent(b, indent, depth);
        return rc ? rc : jbuf_putc(b, '}');
    default:
        *bad = jv_type_name(v);
        return -EINVAL;
    }
}

int jv_write_json(struct jbuf *b, struct jv v, int indent, const char **ret_bad_type)
{
    const char *bad = NULL;
    int rc = write_json_depth(b, v, indent, 0, &bad);
    if (rc == -EINVAL && ret_bad_type)
        *ret_bad_type = bad;
    return rc;
}

int jv_from_json(struct jarena *a, const cJSON *j, struct jv *ret)
{
    if (cJSON_IsNull(j)) {
        *ret = jv_none();
    } else if (cJSON_IsBool(j)) {
        *ret = jv_bool(cJSON_IsTrue(j));
    } else if (cJSON_IsNumber(j)) {
        /* cJSON keeps numbers as doubles; integral ones within 2^53 were
         * almost surely written as integers (1.0 in JSON prints as 1 here). */
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9007199254740992.0)
            *ret = jv_int((int64_t)d);
        else
            *ret = jv_float(d);
    } else if (cJSON_IsString(j)) {
        const char *s = j->valuestring ? j->valuestring : "";
        *ret = jv_str(s, strlen(s));
    } else if (cJSON_IsArray(j)) {
        struct jlist *l = jlist_new(a, (size_t)cJSON_GetArraySize(j));
        if (!l)
            return -ENOMEM;
        for (const cJSON *c = j->child; c; c = c->next) {
            struct jv v;
            int rc = jv_from_json(a, c, &v);
            if (rc < 0)
                return rc;
            if ((rc = jlist_push(a, l, v)) < 0)
                return rc;
        }
        *ret = (struct jv){.kind = JV_LIST, .l = l};
    } else if (cJSON_IsObject(j)) {
        struct jdict *d = jdict_new(a, (size_t)cJSON_GetArraySize(j));
        if (!d)
            return -ENOMEM;
        for (const cJSON *c = j->child; c; c = c->next) {
            struct jv v;
            int rc = jv_from_json(a, c, &v);
            if (rc < 0)
                return rc;
            const char *k = c->string ? c->string : "";
            if ((rc = jdict_set(a, d, (struct jstr){k, strlen(k)}, v)) < 0)
                return rc;
        }
        *ret = (struct jv){.kind = JV_DICT, .d = d};
    } else {
        *ret = jv_none();
    }
    return 0;
}

/* ---- JSON text ---- */

/* A small JSON reader straight into values, for callers that hold the text:
 * unlike cJSON it keeps Python's int/float split (json.loads makes 2.0 a
 * float, which tojson prints back as 2.0). Strict RFC 8259 syntax. */
struct jjson {
    struct jarena *a;
    const char *s;
    size_t n, i;
    int depth;
    const char *what; /* error: what went wrong (static text) */
};

static void jj_ws(struct jjson *p)
{
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}

static int jj_fail(struct jjson *p, const char *what)
{
    p->what = what;
    return -EINVAL;
}

static int jj_hex4(struct jjson *p, int32_t *ret)
{
    if (p->n - p->i < 4)
        return jj_fail(p, "truncated \\u escape");
    int32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char h = p->s[p->i++];
        int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (d < 0)
            return jj_fail(p, "bad \\u escape");
        v = v * 16 + d;
    }
    *ret = v;
    return 0;
}

static int jj_string(struct jjson *p, struct jstr *ret)
{
    p->i++; /* '"' */
    size_t start = p->i;
    while (p->i < p->n && p->s[p->i] != '"' && p->s[p->i] != '\\' && (unsigned char)p->s[p->i] >= 0x20)
        p->i++;
    if (p->i < p->n && p->s[p->i] == '"') {
        /* no escapes: point into a copy of the text */
        char *c = jarena_alloc(p->a, p->i - start + 1);
        if (!c)
            return -ENOMEM;
        memcpy(c, p->s + start, p->i - start);
        *ret = (struct jstr){c, p->i - start};
        p->i++;
        return 0;
    }
    struct jbuf b = {.arena = p->a, .limit = (size_t)-1};
    int rc = jbuf_put(&b, p->s + start, p->i - start);
    while (rc == 0) {
        if (p->i >= p->n)
            return jj_fail(p, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->i];
        if (c == '"') {
            p->i++;
            break;
        }
        if (c < 0x20)
            return jj_fail(p, "control character in string");
        if (c != '\\') {
            rc = jbuf_putc(&b, (char)c);
            p->i++;
            continue;
        }
        if (++p->i >= p->n)
            return jj_fail(p, "unterminated string");
        char e = p->s[p->i++];
        int32_t cp;
        switch (e) {
        case '"': case '\\': case '/': rc = jbuf_putc(&b, e); break;
        case 'b': rc = jbuf_putc(&b, '\b'); break;
        case 'f': rc = jbuf_putc(&b, '\f'); break;
        case 'n': rc = jbuf_putc(&b, '\n'); break;
        case 'r': rc = jbuf_putc(&b, '\r'); break;
        case 't': rc = jbuf_putc(&b, '\t'); break;
        case 'u':
            if ((rc = jj_hex4(p, &cp)) < 0)
                return rc;
            if (cp >= 0xd800 && cp < 0xdc00 && p->n - p->i >= 6 && p->s[p->i] == '\\' && p->s[p->i + 1] == 'u') {
                size_t save = p->i;
                int32_t lo;
                p->i += 2;
                if ((rc = jj_hex4(p, &lo)) < 0)
                    return rc;
                if (lo >= 0xdc00 && lo < 0xe000)
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                else
                    p->i = save;
            }
            if (cp >= 0xd800 && cp < 0xe000)
                cp = 0xfffd; /* a lone surrogate cannot be UTF-8 */
            rc = jutf8_put(&b, cp);
            break;
        default:
            return jj_fail(p, "bad escape in string");
        }
    }
    if (rc < 0)
        return rc;
    *ret = (struct jstr){b.p ? b.p : "", b.n};
    return 0;
}

static int jj_value(struct jjson *p, struct jv *ret)
{
    jj_ws(p);
    if (p->i >= p->n)
        return jj_fail(p, "unexpected end of JSON");
    char c = p->s[p->i];
    int rc;
    if (c == '{' || c == '[') {
        if (++p->depth > JV_MAX_DEPTH)
            return jj_fail(p, "JSON nested too deeply");
        bool obj = c == '{';
        p->i++;
        struct jlist *l = obj ? NULL : jlist_new(p->a, 0);
        struct jdict *d = obj ? jdict_new(p->a, 0) : NULL;
        if (!l && !d)
            return -ENOMEM;
        jj_ws(p);
        if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) {
            p->i++;
        } else {
            for (;;) {
                struct jstr key = {0};
                struct jv v;
                if (obj) {
                    jj_ws(p);
                    if (p->i >= p->n || p->s[p->i] != '"')
                        return jj_fail(p, "expected a string key");
                    if ((rc = jj_string(p, &key)) < 0)
                        return rc;
                    jj_ws(p);
                    if (p->i >= p->n || p->s[p->i] != ':')
                        return jj_fail(p, "expected ':'");
                    p->i++;
                }
                if ((rc = jj_value(p, &v)) < 0)
                    return rc;
                if ((rc = obj ? jdict_set(p->a, d, key, v) : jlist_push(p->a, l, v)) < 0)
                    return rc;
                jj_ws(p);
                if (p->i < p->n && p->s[p->i] == ',') {
                    p->i++;
                    continue;
                }
                if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) {
                    p->i++;
                    break;
                }
                return jj_fail(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
            }
        }
        p->depth--;
        *ret = obj ? (struct jv){.kind = JV_DICT, .d = d} : (struct jv){.kind = JV_LIST, .l = l};
        return 0;
    }
    if (c == '"') {
        struct jstr s;
        if ((rc = jj_string(p, &s)) < 0)
            return rc;
        *ret = jv_str(s.p, s.n);
        return 0;
    }
    static const struct { const char *word; int kind; } words[] = {{"true", 1}, {"false", 0}, {"null", 2}};
    for (size_t k = 0; k < 3; k++) {
        size_t wl = strlen(words[k].word);
        if (p->n - p->i >= wl && memcmp(p->s + p->i, words[k].word, wl) == 0) {
            p->i += wl;
            *ret = words[k].kind == 2 ? jv_none() : jv_bool(words[k].kind == 1);
            return 0;
        }
    }
    /* number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
    size_t start = p->i;
    bool is_float = false;
    if (p->i < p->n && p->s[p->i] == '-')
        p->i++;
    if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9')
        return jj_fail(p, "unexpected character");
    if (p->s[p->i] == '0')
        p->i++;
    else
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
            p->i++;
    if (p->i < p->n && p->s[p->i] == '.') {
        is_float = true;
        p->i++;
        if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9')
            return jj_fail(p, "bad number");
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
            p->i++;
    }
    if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
        is_float = true;
        p->i++;
        if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-'))
            p->i++;
        if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9')
            return jj_fail(p, "bad number");
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
            p->i++;
    }
    char tmp[64];
    size_t len = p->i - start;
    if (len >= sizeof(tmp)) {
        /* very long literals: Python keeps big ints exact; a double is the closest we hold */
        char *big = jarena_alloc(p->a, len + 1);
        if (!big)
            return -ENOMEM;
        memcpy(big, p->s + start, len);
        *ret = jv_float(strtod(big, NULL));
        return 0;
    }
    memcpy(tmp, p->s + start, len);
    tmp[len] = '\0';
    if (!is_float) {
        errno = 0;
        long long v = strtoll(tmp, NULL, 10);
        if (errno != ERANGE) {
            *ret = jv_int(v);
            return 0;
        }
    }
    *ret = jv_float(strtod(tmp, NULL));
    return 0;
}

int jv_parse_json(struct jarena *a, const char *text, size_t len, struct jv *ret, size_t *ret_offset,
                  const char **ret_what)
{
    struct jjson p = {.a = a, .s = text, .n = len};
    int rc = jj_value(&p, ret);
    if (rc == 0) {
        jj_ws(&p);
        if (p.i != p.n)
            rc = jj_fail(&p, "trailing characters after JSON value");
    }
    if (rc == -EINVAL) {
        *ret_offset = p.i;
        *ret_what = p.what;
    }
    return rc;
}
