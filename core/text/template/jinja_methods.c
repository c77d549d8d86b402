/* jinja_methods.c - the Python methods templates call on values
 * (`s.strip()`, `d.items()`, `l.append(x)` ...), dispatched through one
 * table per type. Entries that differ only in a direction, a case or a
 * result share one function and carry that difference as `variant`. A name
 * a type lacks is not an error here: the caller then looks it up as an
 * attribute (a macro stored in a dict, say) and reports it if that fails. */
#include <errno.h>
#include <string.h>

#include <utf8proc.h>

#include "jinja-internal.h"

typedef int (*method_fn)(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                         int variant, struct jv *ret);

struct method_entry {
    const char *name;
    method_fn fn;
    int variant;
};

/* ---- str ---- */

/* variant: 1 for endswith, 0 for startswith. */
static int m_affix(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                   int variant, struct jv *ret)
{
    struct jstr s = obj.s;
    struct jv *a0 = jr_arg(a, 0, NULL);
    if (!a0)
        return jr_err(r, n, "%.*s() takes at least 1 argument", (int)name.n, name.p);
    bool hit = false;
    size_t count = a0->kind == JV_LIST ? a0->l->n : 1;
    for (size_t i = 0; i < count && !hit; i++) {
        struct jv p = a0->kind == JV_LIST ? a0->l->items[i] : *a0;
        if (p.kind != JV_STR)
            return jr_err(r, n, "%.*s() expects a string or a tuple of strings", (int)name.n, name.p);
        hit = p.s.n <= s.n && memcmp(variant ? s.p + s.n - p.s.n : s.p, p.s.p, p.s.n) == 0;
    }
    *ret = jv_bool(hit);
    return 0;
}

/* variant: 1 for rsplit. */
static int m_split(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                   int variant, struct jv *ret)
{
    struct jv *sep = jr_arg(a, 0, "sep"), *maxs = jr_arg(a, 1, "maxsplit");
    struct jstr sp;
    int rc;
    if (sep && sep->kind != JV_NONE && (rc = jr_need_str(r, n, *sep, "split(sep)", &sp)) < 0)
        return rc;
    return jr_str_split(r, n, obj.s, sep && sep->kind != JV_NONE ? &sp : NULL, maxs ? jv_int_of(*maxs) : -1,
                        variant, ret);
}

enum { STRIP_LEFT = 1, STRIP_RIGHT = 2 };

/* variant: STRIP_LEFT | STRIP_RIGHT, the ends it strips. */
static int m_strip(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                   int variant, struct jv *ret)
{
    struct jv *a0 = jr_arg(a, 0, NULL);
    struct jstr cs;
    int rc;
    if (a0 && a0->kind != JV_NONE && (rc = jr_need_str(r, n, *a0, "strip(chars)", &cs)) < 0)
        return rc;
    struct jstr t = jstr_strip(obj.s, a0 && a0->kind != JV_NONE ? &cs : NULL, variant & STRIP_LEFT,
                               variant & STRIP_RIGHT);
    *ret = jv_str(t.p, t.n);
    return 0;
}

static int m_replace(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                     int variant, struct jv *ret)
{
    struct jv *a0 = jr_arg(a, 0, NULL), *a1 = jr_arg(a, 1, NULL), *c = jr_arg(a, 2, "count");
    struct jstr old, new;
    int rc;
    if (!a0 || !a1)
        return jr_err(r, n, "replace() takes 2 arguments");
    if ((rc = jr_need_str(r, n, *a0, "replace(old)", &old)) < 0 || (rc = jr_need_str(r, n, *a1, "replace(new)", &new)) < 0)
        return rc;
    return jr_str_replace(r, obj.s, old, new, c ? jv_int_of(*c) : -1, ret);
}

/* variant: the case_map. */
static int m_case(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                  int variant, struct jv *ret)
{
    return jr_str_case(r, obj.s, (enum case_map)variant, ret);
}

enum { FIND_FIRST, FIND_LAST, FIND_INDEX, FIND_COUNT };

/* find, rfind, index (find that fails) and count; positions in code points. */
static int m_find(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                  int variant, struct jv *ret)
{
    struct jstr s = obj.s, sub;
    struct jv *a0 = jr_arg(a, 0, NULL);
    int rc;
    if (!a0)
        return jr_err(r, n, "%.*s() takes at least 1 argument", (int)name.n, name.p);
    if ((rc = jr_need_str(r, n, *a0, "argument", &sub)) < 0)
        return rc;
    if (variant == FIND_COUNT) {
        int64_t count = 0;
        if (sub.n == 0) {
            count = (int64_t)jutf8_len(s.p, s.n) + 1;
        } else {
            for (const char *h = jstr_find(s, sub, 0); h; h = jstr_find(s, sub, (size_t)(h - s.p) + sub.n))
                count++;
        }
        *ret = jv_int(count);
        return 0;
    }
    const char *hit = variant == FIND_LAST ? jstr_rfind(s, sub) : jstr_find(s, sub, 0);
    if (!hit && variant == FIND_INDEX)
        return jr_err(r, n, "substring not found");
    *ret = jv_int(hit ? (int64_t)jutf8_len(s.p, (size_t)(hit - s.p)) : -1);
    return 0;
}

static int m_join(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                  int variant, struct jv *ret)
{
    struct jstr s = obj.s;
    struct jv *a0 = jr_arg(a, 0, NULL);
    struct jlist *l;
    int rc;
    if (!a0)
        return jr_err(r, n, "join() takes 1 argument");
    if ((rc = jr_iterate(r, n, *a0, &l)) < 0)
        return rc;
    struct jbuf b = jr_buf(r);
    for (size_t i = 0; i < l->n; i++) {
        if (l->items[i].kind != JV_STR)
            return jr_err(r, n, "join(): sequence item %zu: expected str, got %s", i, jv_type_name(l->items[i]));
        if ((i && (rc = jbuf_put(&b, s.p, s.n)) < 0) || (rc = jbuf_put(&b, l->items[i].s.p, l->items[i].s.n)) < 0)
            return rc;
    }
    return jr_make_str(r, &b, ret);
}

static int m_splitlines(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                        int variant, struct jv *ret)
{
    struct jstr s = obj.s;
    struct jlist *l = jlist_new(r->arena, 0);
    int rc;
    if (!l)
        return -ENOMEM;
    for (size_t i = 0; i < s.n;) {
        size_t e = i;
        while (e < s.n && s.p[e] != '\n' && s.p[e] != '\r')
            e++;
        if ((rc = jr_push_str(r, l, s.p + i, e - i)) < 0)
            return rc;
        if (e < s.n && s.p[e] == '\r' && e + 1 < s.n && s.p[e + 1] == '\n')
            e++;
        i = e + 1;
    }
    *ret = (struct jv){.kind = JV_LIST, .l = l};
    return 0;
}

enum { IS_DIGIT, IS_ALPHA, IS_ALNUM, IS_SPACE, IS_UPPER, IS_LOWER };

/* isdigit() ... islower(): every code point qualifies (and there is one;
 * isupper/islower also need a cased one), as Python. */
static int m_is(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                int variant, struct jv *ret)
{
    struct jstr s = obj.s;
    bool all = s.n > 0, any_cased = false;
    for (size_t i = 0; i < s.n && all;) {
        int32_t cp = jutf8_next(s.p, s.n, &i);
        utf8proc_category_t c = utf8proc_category(cp);
        bool alpha = c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
        bool digit = c == UTF8PROC_CATEGORY_ND;
        bool upper = utf8proc_tolower(cp) != cp, lower = utf8proc_toupper(cp) != cp;
        any_cased |= upper || lower;
        switch (variant) {
        case IS_DIGIT: all = digit; break;
        case IS_ALPHA: all = alpha; break;
        case IS_ALNUM: all = alpha || digit; break;
        case IS_SPACE: all = jutf8_is_space(cp); break;
        case IS_UPPER: all = !lower; break;
        case IS_LOWER: all = !upper; break;
        }
    }
    if (variant == IS_UPPER || variant == IS_LOWER)
        all = all && any_cased;
    *ret = jv_bool(all);
    return 0;
}

static int m_format(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                    int variant, struct jv *ret)
{
    return jr_brace_format(r, n, obj.s, a, ret);
}

static const struct method_entry str_methods[] = {
    {"capitalize", m_case, CASE_CAPITALIZE},
    {"count", m_find, FIND_COUNT},
    {"endswith", m_affix, 1},
    {"find", m_find, FIND_FIRST},
    {"format", m_format, 0},
    {"index", m_find, FIND_INDEX},
    {"isalnum", m_is, IS_ALNUM},
    {"isalpha", m_is, IS_ALPHA},
    {"isdigit", m_is, IS_DIGIT},
    {"islower", m_is, IS_LOWER},
    {"isspace", m_is, IS_SPACE},
    {"isupper", m_is, IS_UPPER},
    {"join", m_join, 0},
    {"lower", m_case, CASE_LOWER},
    {"lstrip", m_strip, STRIP_LEFT},
    {"replace", m_replace, 0},
    {"rfind", m_find, FIND_LAST},
    {"rsplit", m_split, 1},
    {"rstrip", m_strip, STRIP_RIGHT},
    {"split", m_split, 0},
    {"splitlines", m_splitlines, 0},
    {"startswith", m_affix, 0},
    {"strip", m_strip, STRIP_LEFT | STRIP_RIGHT},
    {"title", m_case, CASE_TITLE_PY},
    {"upper", m_case, CASE_UPPER},
    {NULL, NULL, 0},
};

/* ---- dict ---- */

static int m_items(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                   int variant, struct jv *ret)
{
    return jr_items(r, n, obj, a, ret);
}

/* variant: 1 for keys(), 0 for values(). */
static int m_keys_values(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                         int variant, struct jv *ret)
{
    struct jdict *d = obj.d;
    struct jlist *l = jlist_new(r->arena, d->n);
    if (!l)
        return -ENOMEM;
    for (size_t i = 0; i < d->n; i++)
        l->items[i] = variant ? jv_str(d->keys[i].p, d->keys[i].n) : d->vals[i];
    l->n = d->n;
    *ret = (struct jv){.kind = JV_LIST, .l = l};
    return 0;
}

static int m_get(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                 int variant, struct jv *ret)
{
    struct jv *k = jr_arg(a, 0, NULL), *def = jr_arg(a, 1, NULL);
    if (!k)
        return jr_err(r, n, "get() takes at least 1 argument");
    struct jv *v = k->kind == JV_STR ? jdict_get(obj.d, k->s.p, k->s.n) : NULL;
    *ret = v ? *v : def ? *def : jv_none();
    return 0;
}

static const struct method_entry dict_methods[] = {
    {"get", m_get, 0},
    {"items", m_items, 0},
    {"keys", m_keys_values, 1},
    {"values", m_keys_values, 0},
    {NULL, NULL, 0},
};

/* ---- list ---- */

static int m_append(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                    int variant, struct jv *ret)
{
    struct jlist *l = obj.l;
    struct jv *a0 = jr_arg(a, 0, NULL);
    int rc;
    if (!a0)
        return jr_err(r, n, "append() takes exactly one argument");
    if (l->tuple)
        return jr_err(r, n, "'tuple' object has no attribute 'append'");
    if ((rc = jlist_push(r->arena, l, *a0)) < 0)
        return rc;
    *ret = jv_none();
    return 0;
}

static int m_pop(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                 int variant, struct jv *ret)
{
    struct jlist *l = obj.l;
    struct jv *a0 = jr_arg(a, 0, NULL);
    if (l->tuple || l->n == 0)
        return jr_err(r, n, "pop from empty list");
    int64_t i = a0 ? jv_int_of(*a0) : -1;
    if (i < 0)
        i += (int64_t)l->n;
    if (i < 0 || i >= (int64_t)l->n)
        return jr_err(r, n, "pop index out of range");
    *ret = l->items[i];
    memmove(l->items + i, l->items + i + 1, (l->n - (size_t)i - 1) * sizeof(struct jv));
    l->n--;
    return 0;
}

/* variant: 1 for index() (first position; absent is an error), 0 for count(). */
static int m_list_find(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                       int variant, struct jv *ret)
{
    struct jlist *l = obj.l;
    struct jv *a0 = jr_arg(a, 0, NULL);
    if (!a0)
        return jr_err(r, n, "%.*s() takes exactly one argument", (int)name.n, name.p);
    int64_t count = 0, first = -1;
    for (size_t i = 0; i < l->n; i++)
        if (jv_equal(l->items[i], *a0)) {
            if (first < 0)
                first = (int64_t)i;
            count++;
        }
    if (variant && first < 0)
        return jr_err(r, n, "value is not in list");
    *ret = jv_int(variant ? first : count);
    return 0;
}

static const struct method_entry list_methods[] = {
    {"append", m_append, 0},
    {"count", m_list_find, 0},
    {"index", m_list_find, 1},
    {"pop", m_pop, 0},
    {NULL, NULL, 0},
};

int jr_method(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
              struct jv *ret)
{
    const struct method_entry *table = obj.kind == JV_STR    ? str_methods
                                     : obj.kind == JV_DICT ? dict_methods
                                     : obj.kind == JV_LIST ? list_methods
                                                           : NULL;
    for (const struct method_entry *e = table; e && e->name; e++)
        if (jstr_eq(name, e->name)) {
            int rc = e->fn(r, n, obj, name, a, e->variant, ret);
            if (rc < 0)
                return rc;
            jr_taint_result(ret, jr_inputs_tainted(r, obj, a));
            return METHOD_DONE;
        }
    return METHOD_NONE;
}
