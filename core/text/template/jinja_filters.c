/* jinja_filters.c - the filters (`value | name(args)`), dispatched through
 * one table sorted by name. Each follows Jinja2's filter of that name,
 * including its argument names, so keyword arguments work as there. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "jinja-internal.h"

typedef int (*filter_fn)(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret);

static int f_trim(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s;
    int rc = jr_to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jv *chars = jr_arg(a, 0, "chars");
    struct jstr cs;
    if (chars && chars->kind != JV_NONE && (rc = jr_need_str(r, n, *chars, "trim(chars)", &cs)) < 0)
        return rc;
    struct jstr t = jstr_strip(s, chars && chars->kind != JV_NONE ? &cs : NULL, true, true);
    *ret = jv_str(t.p, t.n);
    return 0;
}

static int f_tojson(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jv *ind = jr_arg(a, 0, "indent");
    int indent = -1;
    if (ind && ind->kind != JV_NONE) {
        if (!jv_is_int(*ind) || jv_int_of(*ind) < 0 || jv_int_of(*ind) > 64)
            return jr_err(r, n, "tojson: indent must be an integer from 0 to 64");
        indent = (int)jv_int_of(*ind);
    }
    struct jbuf b = jr_buf(r);
    const char *bad = NULL;
    int rc = jv_write_json(&b, in, indent, &bad);
    if (rc == -EINVAL)
        return jr_err(r, n, "tojson: Object of type %s is not JSON serializable", bad ? bad : "?");
    if (rc < 0)
        return rc;
    return jr_make_str(r, &b, ret);
}

static int f_length(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    bool ok;
    int64_t len = jv_length(in, &ok);
    if (!ok)
        return jr_err(r, n, "object of type '%s' has no len()", jv_type_name(in));
    *ret = jv_int(len);
    return 0;
}

static int f_default(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jv *def = jr_arg(a, 0, "default_value");
    struct jv *boolean = jr_arg(a, 1, "boolean");
    bool use = in.kind == JV_UNDEF || (boolean && jv_truthy(*boolean) && !jv_truthy(in));
    *ret = use ? (def ? *def : jv_str("", 0)) : in;
    return 0;
}

static int f_case(struct render *r, const struct jnode *n, struct jv in, enum case_map how, struct jv *ret)
{
    struct jstr s;
    int rc = jr_to_str(r, in, &s);
    return rc < 0 ? rc : jr_str_case(r, s, how, ret);
}

static int f_upper(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return f_case(r, n, in, CASE_UPPER, ret);
}

static int f_lower(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return f_case(r, n, in, CASE_LOWER, ret);
}

static int f_title(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return f_case(r, n, in, CASE_TITLE_JINJA, ret);
}

static int f_capitalize(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return f_case(r, n, in, CASE_CAPITALIZE, ret);
}

static int make_pair(struct render *r, struct jv k, struct jv v, struct jv *ret)
{
    struct jlist *t = jlist_new(r->arena, 2);
    if (!t)
        return -ENOMEM;
    t->tuple = true;
    t->items[0] = k;
    t->items[1] = v;
    t->n = 2;
    *ret = (struct jv){.kind = JV_LIST, .l = t};
    return 0;
}

int jr_items(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    if (in.kind == JV_UNDEF) {
        struct jlist *l = jlist_new(r->arena, 0);
        if (!l)
            return -ENOMEM;
        *ret = (struct jv){.kind = JV_LIST, .l = l};
        return 0;
    }
    if (in.kind != JV_DICT && in.kind != JV_NS)
        return jr_err(r, n, "items: can only get item pairs from a mapping, not %s", jv_type_name(in));
    struct jlist *l = jlist_new(r->arena, in.d->n);
    if (!l)
        return -ENOMEM;
    for (size_t i = 0; i < in.d->n; i++) {
        int rc = make_pair(r, jv_str(in.d->keys[i].p, in.d->keys[i].n), in.d->vals[i], &l->items[i]);
        if (rc < 0)
            return rc;
    }
    l->n = in.d->n;
    *ret = (struct jv){.kind = JV_LIST, .l = l};
    return 0;
}

/* attribute="a.b" lookups used by map, join, sort, selectattr ... */
static int lookup_path(struct render *r, const struct jnode *n, struct jv v, struct jstr path, struct jv *ret)
{
    size_t i = 0;
    while (i <= path.n) {
        size_t e = i;
        while (e < path.n && path.p[e] != '.')
            e++;
        struct jstr part = {path.p + i, e - i};
        bool digits = part.n > 0;
        for (size_t k = 0; k < part.n; k++)
            digits &= part.p[k] >= '0' && part.p[k] <= '9';
        int rc;
        if (digits && v.kind == JV_LIST)
            rc = jr_get_item(r, n, v, jv_int(strtoll(part.p, NULL, 10)), &v);
        else
            rc = jr_get_item(r, n, v, jv_str(part.p, part.n), &v);
        if (rc < 0)
            return rc;
        i = e + 1;
    }
    *ret = v;
    return 0;
}

static int attr_arg(struct render *r, const struct jnode *n, struct args *a, size_t pos, struct jstr *ret, bool *has)
{
    struct jv *at = jr_arg(a, pos, "attribute");
    *has = false;
    if (!at || at->kind == JV_NONE)
        return 0;
    if (at->kind == JV_INT) {
        char *tmp = jarena_alloc(r->arena, 24);
        if (!tmp)
            return -ENOMEM;
        *ret = (struct jstr){tmp, (size_t)snprintf(tmp, 24, "%lld", (long long)at->i)};
        *has = true;
        return 0;
    }
    *has = true;
    return jr_need_str(r, n, *at, "attribute", ret);
}

static int f_join(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jv *sepv = jr_arg(a, 0, "d");
    struct jstr sep = {"", 0}, path;
    bool has_attr;
    int rc;
    if (sepv && (rc = jr_to_str(r, *sepv, &sep)) < 0)
        return rc;
    if ((rc = attr_arg(r, n, a, 1, &path, &has_attr)) < 0)
        return rc;
    struct jlist *l;
    if ((rc = jr_iterate(r, n, in, &l)) < 0)
        return rc;
    struct jbuf b = jr_buf(r);
    for (size_t i = 0; i < l->n; i++) {
        struct jv item = l->items[i];
        if (has_attr && (rc = lookup_path(r, n, item, path, &item)) < 0)
            return rc;
        if (i && (rc = jbuf_put(&b, sep.p, sep.n)) < 0)
            return rc;
        if ((rc = jv_write_str(&b, item)) < 0)
            return rc;
    }
    return jr_make_str(r, &b, ret);
}

static int f_string(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s;
    int rc = jr_to_str(r, in, &s);
    if (rc == 0)
        *ret = jv_str(s.p, s.n);
    return rc;
}

static int f_first_last(struct render *r, const struct jnode *n, struct jv in, bool last, struct jv *ret)
{
    struct jlist *l;
    int rc = jr_iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    *ret = l->n ? l->items[last ? l->n - 1 : 0] : (struct jv){.kind = JV_UNDEF, .origin = n};
    return 0;
}

static int f_first(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return f_first_last(r, n, in, false, ret);
}

static int f_last(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return f_first_last(r, n, in, true, ret);
}

static int copy_list(struct render *r, struct jlist *src, struct jv *ret)
{
    struct jlist *l = jlist_new(r->arena, src->n);
    if (!l)
        return -ENOMEM;
    if (src->n)
        memcpy(l->items, src->items, src->n * sizeof(struct jv));
    l->n = src->n;
    *ret = (struct jv){.kind = JV_LIST, .l = l};
    return 0;
}

static int f_list(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jlist *l;
    int rc = jr_iterate(r, n, in, &l);
    return rc < 0 ? rc : copy_list(r, l, ret);
}

static int f_reverse(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    if (in.kind == JV_STR) {
        struct jv step = jv_int(-1);
        return jr_slice(r, n, in, NULL, NULL, &step, ret);
    }
    struct jlist *l;
    int rc = jr_iterate(r, n, in, &l);
    if (rc < 0 || (rc = copy_list(r, l, ret)) < 0)
        return rc;
    struct jlist *o = ret->l;
    for (size_t i = 0, j = o->n ? o->n - 1 : 0; i < j; i++, j--) {
        struct jv t = o->items[i];
        o->items[i] = o->items[j];
        o->items[j] = t;
    }
    return 0;
}

static int f_map(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jlist *l;
    int rc = jr_iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jlist *o = jlist_new(r->arena, l->n);
    if (!o)
        return -ENOMEM;
    struct jv *attr = jr_arg(a, (size_t)-1, "attribute");
    if (attr) {
        struct jv *def = jr_arg(a, (size_t)-1, "default");
        struct jstr path;
        if ((rc = jr_need_str(r, n, *attr, "map(attribute=)", &path)) < 0)
            return rc;
        for (size_t i = 0; i < l->n; i++) {
            struct jv v;
            if ((rc = lookup_path(r, n, l->items[i], path, &v)) < 0)
                return rc;
            o->items[o->n++] = v.kind == JV_UNDEF && def ? *def : v;
        }
    } else {
        if (a->npos < 1 || a->pos[0].kind != JV_STR)
            return jr_err(r, n, "map: expects a filter name or attribute=");
        struct args rest = {a->pos + 1, a->npos - 1, a->kwn, a->kwv, a->nkw};
        for (size_t i = 0; i < l->n; i++)
            if ((rc = jr_filter(r, n, a->pos[0].s, l->items[i], &rest, &o->items[o->n++])) < 0)
                return rc;
    }
    *ret = (struct jv){.kind = JV_LIST, .l = o};
    return 0;
}

/* select/reject/selectattr/rejectattr */
static int select_impl(struct render *r, const struct jnode *n, struct jv in, struct args *a, bool by_attr, bool keep,
                       struct jv *ret)
{
    struct jlist *l;
    int rc = jr_iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    size_t ai = 0;
    struct jstr path = {0};
    if (by_attr) {
        if (a->npos < 1 || a->pos[0].kind != JV_STR)
            return jr_err(r, n, "selectattr/rejectattr: expects an attribute name");
        path = a->pos[0].s;
        ai = 1;
    }
    struct jstr test = {0};
    bool has_test = a->npos > ai;
    if (has_test && (rc = jr_need_str(r, n, a->pos[ai], "test name", &test)) < 0)
        return rc;
    struct args targs = {a->pos + ai + (has_test ? 1 : 0), a->npos - ai - (has_test ? 1 : 0), a->kwn, a->kwv, a->nkw};
    struct jlist *o = jlist_new(r->arena, 0);
    if (!o)
        return -ENOMEM;
    for (size_t i = 0; i < l->n; i++) {
        struct jv v = l->items[i];
        if (by_attr && (rc = lookup_path(r, n, v, path, &v)) < 0)
            return rc;
        bool t;
        if (has_test) {
            if ((rc = jr_test(r, n, test, v, &targs, &t)) < 0)
                return rc;
        } else {
            t = jv_truthy(v);
        }
        if (t == keep && (rc = jlist_push(r->arena, o, l->items[i])) < 0)
            return rc;
    }
    *ret = (struct jv){.kind = JV_LIST, .l = o};
    return 0;
}

static int f_select(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return select_impl(r, n, in, a, false, true, ret);
}

static int f_reject(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return select_impl(r, n, in, a, false, false, ret);
}

static int f_selectattr(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return select_impl(r, n, in, a, true, true, ret);
}

static int f_rejectattr(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return select_impl(r, n, in, a, true, false, ret);
}

static int f_replace(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s, old, new;
    int rc = jr_to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jv *o = jr_arg(a, 0, "old"), *nw = jr_arg(a, 1, "new"), *c = jr_arg(a, 2, "count");
    if (!o || !nw)
        return jr_err(r, n, "replace: expects old and new strings");
    if ((rc = jr_to_str(r, *o, &old)) < 0 || (rc = jr_to_str(r, *nw, &new)) < 0)
        return rc;
    return jr_str_replace(r, s, old, new, c && c->kind != JV_NONE ? jv_int_of(*c) : -1, ret);
}

static int f_int(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jv *def = jr_arg(a, 0, "default");
    int64_t d = def ? jv_int_of(*def) : 0;
    if (jv_is_int(in)) {
        *ret = jv_int(jv_int_of(in));
    } else if (in.kind == JV_FLOAT) {
        *ret = isfinite(in.f) && fabs(in.f) < 9.2e18 ? jv_int((int64_t)in.f) : jv_int(d);
    } else if (in.kind == JV_STR) {
        char tmp[64];
        struct jstr s = jstr_strip(in.s, NULL, true, true);
        if (s.n == 0 || s.n >= sizeof(tmp)) {
            *ret = jv_int(d);
            return 0;
        }
        memcpy(tmp, s.p, s.n);
        tmp[s.n] = '\0';
        char *end;
        errno = 0;
        long long v = strtoll(tmp, &end, 10);
        if (*end == '\0' && errno == 0) {
            *ret = jv_int(v);
        } else {
            double f = strtod(tmp, &end);
            *ret = *end == '\0' && isfinite(f) && fabs(f) < 9.2e18 ? jv_int((int64_t)f) : jv_int(d);
        }
    } else {
        *ret = jv_int(d);
    }
    return 0;
}

static int f_float(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jv *def = jr_arg(a, 0, "default");
    double d = def && jv_is_num(*def) ? jv_num_of(*def) : 0.0;
    if (jv_is_num(in)) {
        *ret = jv_float(jv_num_of(in));
    } else if (in.kind == JV_STR) {
        char tmp[64];
        struct jstr s = jstr_strip(in.s, NULL, true, true);
        if (s.n == 0 || s.n >= sizeof(tmp)) {
            *ret = jv_float(d);
            return 0;
        }
        memcpy(tmp, s.p, s.n);
        tmp[s.n] = '\0';
        char *end;
        double f = strtod(tmp, &end);
        *ret = jv_float(*end == '\0' ? f : d);
    } else {
        *ret = jv_float(d);
    }
    return 0;
}

static int f_abs(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    if (jv_is_int(in)) {
        if (jv_int_of(in) == INT64_MIN)
            return jr_err(r, n, "integer overflow");
        *ret = jv_int(llabs(jv_int_of(in)));
    } else if (in.kind == JV_FLOAT) {
        *ret = jv_float(fabs(in.f));
    } else {
        return jr_err(r, n, "bad operand type for abs(): '%s'", jv_type_name(in));
    }
    return 0;
}

static int f_round(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    if (!jv_is_num(in))
        return jr_err(r, n, "round: expects a number, got %s", jv_type_name(in));
    struct jv *pv = jr_arg(a, 0, "precision"), *mv = jr_arg(a, 1, "method");
    int64_t prec = pv ? jv_int_of(*pv) : 0;
    if (prec < -20 || prec > 20)
        return jr_err(r, n, "round: precision out of range");
    double x = jv_num_of(in), scale = pow(10.0, (double)prec), v;
    struct jstr method = {"common", 6};
    if (mv && mv->kind == JV_STR)
        method = mv->s;
    if (jstr_eq(method, "common"))
        v = nearbyint(x * scale) / scale; /* Python's round(): half to even */
    else if (jstr_eq(method, "floor"))
        v = floor(x * scale) / scale;
    else if (jstr_eq(method, "ceil"))
        v = ceil(x * scale) / scale;
    else
        return jr_err(r, n, "round: method must be common, ceil or floor");
    *ret = jv_float(v);
    return 0;
}

static int f_safe(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    *ret = in;
    return 0;
}

static int f_escape(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s;
    int rc = jr_to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jbuf b = jr_buf(r);
    for (size_t i = 0; i < s.n && rc == 0; i++) {
        switch (s.p[i]) {
        case '&': rc = jbuf_put(&b, "&amp;", 5); break;
        case '<': rc = jbuf_put(&b, "&lt;", 4); break;
        case '>': rc = jbuf_put(&b, "&gt;", 4); break;
        case '"': rc = jbuf_put(&b, "&#34;", 5); break;
        case '\'': rc = jbuf_put(&b, "&#39;", 5); break;
        default: rc = jbuf_putc(&b, s.p[i]);
        }
    }
    return rc < 0 ? rc : jr_make_str(r, &b, ret);
}

static int f_indent(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s, ind;
    int rc = jr_to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jv *w = jr_arg(a, 0, "width"), *first = jr_arg(a, 1, "first"), *blank = jr_arg(a, 2, "blank");
    char spaces[101];
    if (w && w->kind == JV_STR) {
        ind = w->s;
    } else {
        int64_t width = w ? jv_int_of(*w) : 4;
        if (width < 0 || width > 100)
            return jr_err(r, n, "indent: width must be from 0 to 100");
        memset(spaces, ' ', (size_t)width);
        ind = (struct jstr){spaces, (size_t)width};
    }
    bool do_first = first && jv_truthy(*first), do_blank = blank && jv_truthy(*blank);
    struct jbuf b = jr_buf(r);
    /* Jinja2: (s + "\n").splitlines(), the first line as is (unless first=),
     * the others indented unless blank, joined by "\n". */
    size_t i = 0;
    bool first_line = true;
    while (rc == 0 && i <= s.n) {
        size_t e = i;
        while (e < s.n && s.p[e] != '\n' && s.p[e] != '\r')
            e++;
        bool empty = e == i;
        if (!first_line)
            rc = jbuf_putc(&b, '\n');
        if (rc == 0 && (first_line ? do_first : (!empty || do_blank)))
            rc = jbuf_put(&b, ind.p, ind.n);
        if (rc == 0)
            rc = jbuf_put(&b, s.p + i, e - i);
        first_line = false;
        if (e >= s.n)
            break; /* the appended "\n" ends the last line */
        if (s.p[e] == '\r' && e + 1 < s.n && s.p[e + 1] == '\n')
            e++;
        i = e + 1;
    }
    return rc < 0 ? rc : jr_make_str(r, &b, ret);
}

static int f_truncate(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s, end = {"...", 3};
    int rc = jr_to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jv *lv = jr_arg(a, 0, "length"), *kw = jr_arg(a, 1, "killwords"), *ev = jr_arg(a, 2, "end"),
              *lw = jr_arg(a, 3, "leeway");
    int64_t length = lv ? jv_int_of(*lv) : 255, leeway = lw && lw->kind != JV_NONE ? jv_int_of(*lw) : 5;
    if (ev && (rc = jr_to_str(r, *ev, &end)) < 0)
        return rc;
    size_t *off, ncp;
    if ((rc = jr_cp_offsets(r, s, &off, &ncp)) < 0)
        return rc;
    int64_t end_len = (int64_t)jutf8_len(end.p, end.n);
    if (length < end_len || leeway < 0)
        return jr_err(r, n, "truncate: length must be at least the end's length, leeway non-negative");
    if ((int64_t)ncp <= length + leeway) {
        *ret = jv_str(s.p, s.n);
        return 0;
    }
    struct jstr head = {s.p, off[length - end_len]};
    if (!(kw && jv_truthy(*kw))) {
        const char *sp = NULL;
        for (size_t k = head.n; k-- > 0;)
            if (head.p[k] == ' ') {
                sp = head.p + k;
                break;
            }
        if (sp)
            head.n = (size_t)(sp - head.p);
    }
    struct jbuf b = jr_buf(r);
    if ((rc = jbuf_put(&b, head.p, head.n)) < 0 || (rc = jbuf_put(&b, end.p, end.n)) < 0)
        return rc;
    return jr_make_str(r, &b, ret);
}

static int f_wordcount(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s;
    int rc = jr_to_str(r, in, &s);
    if (rc < 0)
        return rc;
    int64_t count = 0;
    bool inword = false;
    for (size_t i = 0; i < s.n;) {
        int32_t cp = jutf8_next(s.p, s.n, &i);
        utf8proc_category_t c = utf8proc_category(cp);
        bool w = cp == '_' || (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
                 (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO) || c == UTF8PROC_CATEGORY_MN ||
                 c == UTF8PROC_CATEGORY_MC;
        if (w && !inword)
            count++;
        inword = w;
    }
    *ret = jv_int(count);
    return 0;
}

struct sort_ctx {
    bool case_sensitive, bad;
};

static int cmp_str_ci(struct jstr a, struct jstr b)
{
    size_t i = 0, j = 0;
    while (i < a.n && j < b.n) {
        int32_t x = utf8proc_tolower(jutf8_next(a.p, a.n, &i)), y = utf8proc_tolower(jutf8_next(b.p, b.n, &j));
        if (x != y)
            return x < y ? -1 : 1;
    }
    return (i < a.n) - (j < b.n);
}

static int sort_cmp_values(struct jv a, struct jv b, struct sort_ctx *c)
{
    if (jv_is_num(a) && jv_is_num(b)) {
        double x = jv_num_of(a), y = jv_num_of(b);
        return x < y ? -1 : x > y;
    }
    if (a.kind == JV_STR && b.kind == JV_STR) {
        if (!c->case_sensitive)
            return cmp_str_ci(a.s, b.s);
        size_t m = a.s.n < b.s.n ? a.s.n : b.s.n;
        int d = memcmp(a.s.p, b.s.p, m);
        return d ? d : (a.s.n > b.s.n) - (a.s.n < b.s.n);
    }
    if (a.kind == JV_LIST && b.kind == JV_LIST) {
        for (size_t i = 0; i < a.l->n && i < b.l->n; i++) {
            int d = sort_cmp_values(a.l->items[i], b.l->items[i], c);
            if (d)
                return d;
        }
        return (a.l->n > b.l->n) - (a.l->n < b.l->n);
    }
    c->bad = true;
    return 0;
}

struct sort_item {
    struct jv key, val;
    size_t idx; /* keeps the sort stable, as Python's */
};

static int sort_item_cmp(const void *x, const void *y, void *arg)
{
    const struct sort_item *a = x, *b = y;
    int d = sort_cmp_values(a->key, b->key, arg);
    return d ? d : (a->idx > b->idx) - (a->idx < b->idx);
}

static int sort_list(struct render *r, const struct jnode *n, struct jlist *l, const struct jstr *path, bool reverse,
                     bool case_sensitive, struct jv *ret)
{
    struct sort_item *items = jarena_alloc(r->arena, (l->n + 1) * sizeof(*items));
    if (!items)
        return -ENOMEM;
    for (size_t i = 0; i < l->n; i++) {
        items[i].val = l->items[i];
        items[i].key = l->items[i];
        items[i].idx = i;
        int rc;
        if (path && (rc = lookup_path(r, n, l->items[i], *path, &items[i].key)) < 0)
            return rc;
    }
    struct sort_ctx c = {.case_sensitive = case_sensitive};
    qsort_r(items, l->n, sizeof(*items), sort_item_cmp, &c);
    if (c.bad)
        return jr_err(r, n, "sort: values of different types cannot be ordered");
    struct jlist *o = jlist_new(r->arena, l->n);
    if (!o)
        return -ENOMEM;
    /* Python's reverse=True keeps equal items in their original order. */
    if (reverse) {
        size_t k = 0;
        for (size_t i = l->n; i > 0;) {
            size_t j = i - 1;
            while (j > 0 && sort_cmp_values(items[j - 1].key, items[i - 1].key, &c) == 0)
                j--;
            for (size_t m = j; m < i; m++)
                o->items[k++] = items[m].val;
            i = j;
        }
    } else {
        for (size_t i = 0; i < l->n; i++)
            o->items[i] = items[i].val;
    }
    o->n = l->n;
    *ret = (struct jv){.kind = JV_LIST, .l = o};
    return 0;
}

static int f_sort(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jlist *l;
    int rc = jr_iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jv *rev = jr_arg(a, 0, "reverse"), *cs = jr_arg(a, 1, "case_sensitive");
    struct jstr path;
    bool has_attr;
    if ((rc = attr_arg(r, n, a, 2, &path, &has_attr)) < 0)
        return rc;
    return sort_list(r, n, l, has_attr ? &path : NULL, rev && jv_truthy(*rev), cs && jv_truthy(*cs), ret);
}

static int f_dictsort(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jv items;
    int rc = jr_items(r, n, in, a, &items);
    if (rc < 0)
        return rc;
    struct jv *cs = jr_arg(a, 0, "case_sensitive"), *by = jr_arg(a, 1, "by"), *rev = jr_arg(a, 2, "reverse");
    struct jstr path = {"0", 1};
    if (by && by->kind == JV_STR && jstr_eq(by->s, "value"))
        path = (struct jstr){"1", 1};
    else if (by && !(by->kind == JV_STR && jstr_eq(by->s, "key")))
        return jr_err(r, n, "dictsort: 'by' must be 'key' or 'value'");
    return sort_list(r, n, items.l, &path, rev && jv_truthy(*rev), cs && jv_truthy(*cs), ret);
}

static int f_unique(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jlist *l;
    int rc = jr_iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jv *cs = jr_arg(a, 0, "case_sensitive");
    bool case_sensitive = cs && jv_truthy(*cs);
    struct jstr path;
    bool has_attr;
    if ((rc = attr_arg(r, n, a, 1, &path, &has_attr)) < 0)
        return rc;
    struct jlist *o = jlist_new(r->arena, 0), *keys = jlist_new(r->arena, 0);
    if (!o || !keys)
        return -ENOMEM;
    for (size_t i = 0; i < l->n; i++) {
        struct jv k = l->items[i];
        if (has_attr && (rc = lookup_path(r, n, k, path, &k)) < 0)
            return rc;
        if (!case_sensitive && k.kind == JV_STR && (rc = jr_str_case(r, k.s, CASE_LOWER, &k)) < 0)
            return rc;
        bool seen = false;
        for (size_t j = 0; j < keys->n && !seen; j++)
            seen = jv_equal(keys->items[j], k);
        if (seen)
            continue;
        if ((rc = jlist_push(r->arena, keys, k)) < 0 || (rc = jlist_push(r->arena, o, l->items[i])) < 0)
            return rc;
    }
    *ret = (struct jv){.kind = JV_LIST, .l = o};
    return 0;
}

static int f_batch(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jlist *l;
    int rc = jr_iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jv *sz = jr_arg(a, 0, "linecount"), *fill = jr_arg(a, 1, "fill_with");
    if (!sz || !jv_is_int(*sz) || jv_int_of(*sz) <= 0)
        return jr_err(r, n, "batch: expects a positive size");
    size_t size = (size_t)jv_int_of(*sz);
    struct jlist *o = jlist_new(r->arena, 0), *cur = NULL;
    if (!o)
        return -ENOMEM;
    for (size_t i = 0; i < l->n; i++) {
        if (!cur || cur->n == size) {
            if (!(cur = jlist_new(r->arena, 0)) || (rc = jlist_push(r->arena, o, (struct jv){.kind = JV_LIST, .l = cur})) < 0)
                return -ENOMEM;
        }
        if ((rc = jlist_push(r->arena, cur, l->items[i])) < 0)
            return rc;
    }
    while (cur && fill && fill->kind != JV_NONE && cur->n < size)
        if ((rc = jlist_push(r->arena, cur, *fill)) < 0)
            return rc;
    *ret = (struct jv){.kind = JV_LIST, .l = o};
    return 0;
}

static int f_sum(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jlist *l;
    int rc = jr_iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jstr path;
    bool has_attr;
    if ((rc = attr_arg(r, n, a, 0, &path, &has_attr)) < 0)
        return rc;
    struct jv *start = jr_arg(a, 1, "start");
    struct jv acc = start ? *start : jv_int(0);
    for (size_t i = 0; i < l->n; i++) {
        struct jv v = l->items[i];
        if (has_attr && (rc = lookup_path(r, n, v, path, &v)) < 0)
            return rc;
        if ((rc = jr_binop(r, n, JOP_ADD, acc, v, &acc)) < 0)
            return rc;
    }
    *ret = acc;
    return 0;
}

static int f_minmax(struct render *r, const struct jnode *n, struct jv in, struct args *a, bool max, struct jv *ret)
{
    struct jlist *l;
    int rc = jr_iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jv *cs = jr_arg(a, 0, "case_sensitive");
    struct jstr path;
    bool has_attr;
    if ((rc = attr_arg(r, n, a, 1, &path, &has_attr)) < 0)
        return rc;
    struct jv sorted;
    if ((rc = sort_list(r, n, l, has_attr ? &path : NULL, false, cs && jv_truthy(*cs), &sorted)) < 0)
        return rc;
    if (!sorted.l->n) {
        *ret = (struct jv){.kind = JV_UNDEF, .origin = n};
        return 0;
    }
    /* min: first of the stable sort; max: Python returns the first maximal item. */
    if (!max) {
        *ret = sorted.l->items[0];
        return 0;
    }
    size_t k = sorted.l->n - 1;
    struct sort_ctx c = {.case_sensitive = cs && jv_truthy(*cs)};
    struct jv top = sorted.l->items[k];
    if (has_attr && (rc = lookup_path(r, n, top, path, &top)) < 0)
        return rc;
    while (k > 0) {
        struct jv prev = sorted.l->items[k - 1];
        if (has_attr && (rc = lookup_path(r, n, prev, path, &prev)) < 0)
            return rc;
        if (sort_cmp_values(prev, top, &c) != 0)
            break;
        k--;
    }
    *ret = sorted.l->items[k];
    return 0;
}

static int f_min(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return f_minmax(r, n, in, a, false, ret);
}

static int f_max(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    return f_minmax(r, n, in, a, true, ret);
}

static int f_format(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr fmt;
    int rc = jr_to_str(r, in, &fmt);
    if (rc < 0)
        return rc;
    if (a->npos && a->nkw)
        return jr_err(r, n, "format: can't handle positional and keyword arguments at the same time");
    struct jv args;
    if (a->nkw) {
        struct jdict *d = jdict_new(r->arena, a->nkw);
        if (!d)
            return -ENOMEM;
        for (size_t i = 0; i < a->nkw; i++)
            if ((rc = jdict_set(r->arena, d, a->kwn[i], a->kwv[i])) < 0)
                return rc;
        args = (struct jv){.kind = JV_DICT, .d = d};
    } else {
        struct jlist *l = jlist_new(r->arena, a->npos);
        if (!l)
            return -ENOMEM;
        for (size_t i = 0; i < a->npos; i++)
            l->items[l->n++] = a->pos[i];
        l->tuple = true;
        args = (struct jv){.kind = JV_LIST, .l = l};
    }
    return jr_percent_format(r, n, fmt, args, ret);
}

static int f_center(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s;
    int rc = jr_to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jv *w = jr_arg(a, 0, "width");
    int64_t width = w ? jv_int_of(*w) : 80, len = (int64_t)jutf8_len(s.p, s.n);
    if (width > 10000)
        return jr_err(r, n, "center: width too large");
    struct jbuf b = jr_buf(r);
    int64_t pad = width > len ? width - len : 0;
    /* Python's str.center puts the odd space on the right unless len is odd. */
    int64_t left = pad / 2 + (pad & width & 1);
    for (int64_t i = 0; i < left && rc == 0; i++)
        rc = jbuf_putc(&b, ' ');
    if (rc == 0)
        rc = jbuf_put(&b, s.p, s.n);
    for (int64_t i = left; i < pad && rc == 0; i++)
        rc = jbuf_putc(&b, ' ');
    return rc < 0 ? rc : jr_make_str(r, &b, ret);
}

struct filter_entry {
    const char *name;
    filter_fn fn;
};

static const struct filter_entry filters[] = {
    {"abs", f_abs},
    {"batch", f_batch},
    {"capitalize", f_capitalize},
    {"center", f_center},
    {"count", f_length},
    {"d", f_default},
    {"default", f_default},
    {"dictsort", f_dictsort},
    {"e", f_escape},
    {"escape", f_escape},
    {"first", f_first},
    {"float", f_float},
    {"format", f_format},
    {"indent", f_indent},
    {"int", f_int},
    {"items", jr_items},
    {"join", f_join},
    {"last", f_last},
    {"length", f_length},
    {"list", f_list},
    {"lower", f_lower},
    {"map", f_map},
    {"max", f_max},
    {"min", f_min},
    {"reject", f_reject},
    {"rejectattr", f_rejectattr},
    {"replace", f_replace},
    {"reverse", f_reverse},
    {"round", f_round},
    {"safe", f_safe},
    {"select", f_select},
    {"selectattr", f_selectattr},
    {"sort", f_sort},
    {"string", f_string},
    {"sum", f_sum},
    {"title", f_title},
    {"tojson", f_tojson},
    {"trim", f_trim},
    {"truncate", f_truncate},
    {"unique", f_unique},
    {"upper", f_upper},
    {"wordcount", f_wordcount},
    {NULL, NULL},
};

static filter_fn find_filter(struct jstr name)
{
    for (const struct filter_entry *e = filters; e->name; e++)
        if (jstr_eq(name, e->name))
            return e->fn;
    return NULL;
}

int jr_filter(struct render *r, const struct jnode *n, struct jstr name, struct jv in, struct args *a,
              struct jv *ret)
{
    filter_fn fn = find_filter(name);
    if (!fn)
        return jr_err(r, n, "unknown filter '%.*s'", (int)name.n, name.p);
    int rc = fn(r, n, in, a, ret);
    if (rc == 0)
        jr_taint_result(ret, jr_inputs_tainted(r, in, a));
    return rc;
}

