/* jinja_eval.c - the evaluator of the Jinja subset: expressions, statements,
 * scopes, macros and the global functions.
 *
 * Semantics follow Python Jinja2 as transformers runs it (trim_blocks,
 * lstrip_blocks, loopcontrols, its own tojson): Python truthiness and
 * equality, default Undefined (prints empty, falsy, iterates empty; using it
 * in arithmetic or taking an attribute of it is an error), for loops that
 * scope their assignments (hence namespace()), macros that see the template's
 * top level.
 *
 * The context is untrusted (user text flows into it) and the template
 * semi-trusted, so a render is bounded: arena bytes, output bytes, loop
 * iterations, macro recursion, value nesting. Hitting a bound is an error
 * naming it, never a crash. Filters, tests and methods live in their own
 * files, each dispatched through a table of names. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja-internal.h"

/* ---- errors ---- */

__attribute__((format(printf, 3, 4))) int jr_err(struct render *r, const struct jnode *n, const char *fmt, ...)
{
    if (r->err_set)
        return -EINVAL;
    char tmp[IFD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    int line = 0, col = 0;
    if (n)
        jinja_line_col(r->t->src, r->t->len, n->pos, &line, &col);
    ifd_error_set(r->err, -EINVAL, "template:%d:%d: %s", line, col, tmp);
    r->err_set = true;
    return -EINVAL;
}

/* Turns a bare errno from the value layer into a message at node n. */
int jr_fail(struct render *r, const struct jnode *n, int rc)
{
    if (rc >= 0 || r->err_set)
        return rc;
    switch (rc) {
    case -ENOMEM:
        jr_err(r, n, "render needs more than %u MiB of memory", RENDER_MAX_ARENA >> 20);
        break;
    case -EFBIG:
        jr_err(r, n, "rendered text exceeds %u MiB", RENDER_MAX_OUTPUT >> 20);
        break;
    case -ELOOP:
        jr_err(r, n, "value nested deeper than %d levels", JV_MAX_DEPTH);
        break;
    default:
        jr_err(r, n, "%s", strerror(-rc));
    }
    return rc == -EFBIG || rc == -ENOMEM ? rc : -EINVAL;
}

static const char *kind_name(enum jv_kind k)
{
    static const char *const names[] = {
        [JV_UNDEF] = "Undefined", [JV_NONE] = "NoneType", [JV_BOOL] = "bool", [JV_INT] = "int",
        [JV_FLOAT] = "float",     [JV_STR] = "str",       [JV_LIST] = "list", [JV_DICT] = "dict",
        [JV_NS] = "Namespace",    [JV_MACRO] = "Macro",   [JV_LOOP] = "LoopContext", [JV_FUNC] = "function",
    };
    return (unsigned)k < sizeof(names) / sizeof(names[0]) ? names[k] : "?";
}

/* The undefined result of looking `n` up in an object of kind obj. */
static struct jv undef_at(const struct jnode *n, enum jv_kind obj)
{
    return (struct jv){.kind = JV_UNDEF, .aux = (uint32_t)obj + 1, .origin = n};
}

/* Using an undefined value (arithmetic, attribute of it ...) is an error, with
 * Jinja2's wording where we know what was looked up. */
int jr_undefined_error(struct render *r, const struct jnode *at, struct jv v)
{
    const struct jnode *o = v.origin;
    const char *obj = v.aux ? kind_name((enum jv_kind)(v.aux - 1)) : "dict";
    if (o && o->kind == JN_NAME)
        return jr_err(r, at, "'%.*s' is undefined", (int)o->name.n, o->name.p);
    if (o && o->kind == JN_ATTR)
        return jr_err(r, at, "'%s object' has no attribute '%.*s'", obj, (int)o->name.n, o->name.p);
    if (o && o->kind == JN_SUBSCRIPT && o->b->kind == JN_CONST && o->b->cval.kind == JV_STR)
        return jr_err(r, at, "'%s object' has no attribute '%.*s'", obj, (int)o->b->cval.s.n, o->b->cval.s.p);
    if (o && o->kind == JN_SUBSCRIPT && o->b->kind == JN_CONST && o->b->cval.kind == JV_INT)
        return jr_err(r, at, "'%s object' has no element %lld", obj, (long long)o->b->cval.i);
    if (o && o->kind == JN_SUBSCRIPT)
        return jr_err(r, at, "'%s object' has no such item", obj);
    return jr_err(r, at, "value is undefined");
}

/* ---- frames ---- */

struct frame *jr_frame_new(struct render *r, struct frame *parent)
{
    struct frame *f = jarena_alloc(r->arena, sizeof(*f));
    if (f)
        f->parent = parent;
    return f;
}

int jr_frame_set(struct render *r, struct frame *f, struct jstr name, struct jv v)
{
    return jdict_set(r->arena, &f->vars, name, v);
}

struct jv *jr_frame_get(struct frame *f, struct jstr name)
{
    for (; f; f = f->parent) {
        struct jv *v = jdict_get(&f->vars, name.p, name.n);
        if (v)
            return v;
    }
    return NULL;
}

/* ---- arguments ---- */

/* The argument at position i or named `name` (after the input, for filters). */
struct jv *jr_arg(struct args *a, size_t i, const char *name)
{
    if (i < a->npos)
        return &a->pos[i];
    for (size_t k = 0; k < a->nkw && name; k++)
        if (jstr_eq(a->kwn[k], name))
            return &a->kwv[k];
    return NULL;
}

static int eval_args(struct render *r, const struct jnode *n, struct frame *f, struct args *a)
{
    a->npos = n->nkids;
    a->nkw = n->nnames;
    a->kwn = n->names;
    a->pos = jarena_alloc(r->arena, (n->nkids + 1) * sizeof(struct jv));
    a->kwv = jarena_alloc(r->arena, (n->nnames + 1) * sizeof(struct jv));
    if (!a->pos || !a->kwv)
        return -ENOMEM;
    int rc;
    for (uint32_t i = 0; i < n->nkids; i++)
        if ((rc = jr_eval(r, n->kids[i], f, &a->pos[i])) < 0)
            return rc;
    for (uint32_t i = 0; i < n->nnames; i++)
        if ((rc = jr_eval(r, n->kids2[i], f, &a->kwv[i])) < 0)
            return rc;
    return 0;
}

/* ---- string helpers ---- */

/* The buffer's text as a string value, with the untrusted ranges it holds. */
int jr_make_str(struct render *r, struct jbuf *b, struct jv *ret)
{
    struct jv v = jv_str(b->p ? b->p : "", b->n);
    if (b->taint.n) {
        struct jspans *t = jarena_alloc(r->arena, sizeof(*t));
        if (!t)
            return -ENOMEM;
        *t = b->taint;
        v.taint = t;
    }
    *ret = v;
    return 0;
}

struct jbuf jr_buf(struct render *r)
{
    return (struct jbuf){.arena = r->arena, .limit = RENDER_MAX_OUTPUT};
}

/* str(v), with undefined as "". */
int jr_to_str(struct render *r, struct jv v, struct jstr *ret)
{
    return jv_to_str(r->arena, v, RENDER_MAX_OUTPUT, ret);
}

int jr_need_str(struct render *r, const struct jnode *n, struct jv v, const char *what, struct jstr *ret)
{
    if (v.kind != JV_STR)
        return jr_err(r, n, "%s expects a string, got %s", what, jv_type_name(v));
    *ret = v.s;
    return 0;
}

/* A float outside int64 (or NaN) saturates: the C conversion would be
 * undefined behaviour, and a template may write 1e300 wherever an int goes. */
int64_t jv_int_of(struct jv v)
{
    if (v.kind != JV_FLOAT)
        return v.kind == JV_INT ? v.i : v.kind == JV_BOOL ? v.b : 0;
    if (isnan(v.f))
        return 0;
    if (v.f >= 9223372036854775808.0)
        return INT64_MAX;
    if (v.f < -9223372036854775808.0)
        return INT64_MIN;
    return (int64_t)v.f;
}

/* ---- sequences ---- */

/* The items a for loop / list() / join see: list items, dict keys, string
 * characters; undefined is empty. */
int jr_iterate(struct render *r, const struct jnode *n, struct jv v, struct jlist **ret)
{
    struct jlist *l;
    switch (v.kind) {
    case JV_LIST:
        *ret = v.l;
        return 0;
    case JV_UNDEF:
        if (!(l = jlist_new(r->arena, 0)))
            return -ENOMEM;
        *ret = l;
        return 0;
    case JV_DICT:
        if (!(l = jlist_new(r->arena, v.d->n)))
            return -ENOMEM;
        for (size_t i = 0; i < v.d->n; i++) {
            l->items[l->n] = jv_str(v.d->keys[i].p, v.d->keys[i].n);
            l->items[l->n++].taint = v.d->taint && v.d->keys[i].n ? &jtaint_all : NULL;
        }
        *ret = l;
        return 0;
    case JV_STR: {
        if (!(l = jlist_new(r->arena, 0)))
            return -ENOMEM;
        for (size_t i = 0; i < v.s.n;) {
            size_t k = i;
            jutf8_next(v.s.p, v.s.n, &k);
            int rc = jr_push_str(r, l, v.s.p + i, k - i);
            if (rc < 0)
                return rc;
            if (v.taint)
                l->items[l->n - 1].taint = &jtaint_all;
            i = k;
        }
        *ret = l;
        return 0;
    }
    default:
        return jr_err(r, n, "'%s' object is not iterable", jv_type_name(v));
    }
}

int64_t jv_length(struct jv v, bool *ok)
{
    *ok = true;
    switch (v.kind) {
    case JV_STR: return (int64_t)jutf8_len(v.s.p, v.s.n);
    case JV_LIST: return (int64_t)v.l->n;
    case JV_DICT:
    case JV_NS: return (int64_t)v.d->n;
    case JV_UNDEF: return 0;
    default:
        *ok = false;
        return 0;
    }
}

/* One bound of a Python slice, normalised: absent takes `dflt`, negative
 * counts from the end, the result is clamped to [lo, hi]. */
static int64_t slice_bound(const struct jv *v, int64_t len, int64_t lo, int64_t hi, int64_t dflt)
{
    if (!v || v->kind == JV_NONE || v->kind == JV_UNDEF)
        return dflt;
    int64_t x = jv_int_of(*v);
    if (x < 0)
        x += len;
    return x < lo ? lo : x > hi ? hi : x;
}

/* Python slice index normalisation. */
static void slice_indices(int64_t len, const struct jv *start, const struct jv *stop, int64_t step, int64_t *ret_start,
                          int64_t *ret_stop)
{
    int64_t lo = step < 0 ? -1 : 0, hi = step < 0 ? len - 1 : len;
    *ret_start = slice_bound(start, len, lo, hi, step < 0 ? hi : lo);
    *ret_stop = slice_bound(stop, len, lo, hi, step < 0 ? lo : hi);
}

int jr_slice(struct render *r, const struct jnode *n, struct jv obj, const struct jv *a, const struct jv *b,
             const struct jv *c, struct jv *ret)
{
    int64_t step = 1;
    if (c && c->kind != JV_NONE && c->kind != JV_UNDEF) {
        if (!jv_is_int(*c))
            return jr_err(r, n, "slice step must be an integer");
        step = jv_int_of(*c);
        if (step == 0)
            return jr_err(r, n, "slice step cannot be zero");
    }
    for (const struct jv *x = a; x; x = x == a ? b : NULL)
        if (x->kind != JV_NONE && x->kind != JV_UNDEF && !jv_is_int(*x))
            return jr_err(r, n, "slice indices must be integers or none");
    if (obj.kind == JV_LIST) {
        int64_t s, e;
        slice_indices((int64_t)obj.l->n, a, b, step, &s, &e);
        struct jlist *l = jlist_new(r->arena, 0);
        if (!l)
            return -ENOMEM;
        l->tuple = obj.l->tuple;
        for (int64_t i = s; step > 0 ? i < e : i > e; i += step) {
            int rc = jlist_push(r->arena, l, obj.l->items[i]);
            if (rc < 0)
                return rc;
        }
        *ret = (struct jv){.kind = JV_LIST, .l = l};
        return 0;
    }
    if (obj.kind == JV_STR) {
        size_t *off, ncp;
        int rc = jr_cp_offsets(r, obj.s, &off, &ncp);
        if (rc < 0)
            return rc;
        int64_t s, e;
        slice_indices((int64_t)ncp, a, b, step, &s, &e);
        if (step == 1) {
            *ret = s < e ? jv_str(obj.s.p + off[s], off[e] - off[s]) : jv_str("", 0);
        } else {
            struct jbuf buf = jr_buf(r);
            for (int64_t i = s; step > 0 ? i < e : i > e; i += step)
                if ((rc = jbuf_put(&buf, obj.s.p + off[i], off[i + 1] - off[i])) < 0)
                    return rc;
            if ((rc = jr_make_str(r, &buf, ret)) < 0)
                return rc;
        }
        /* Conservative: the whole slice, not just what it kept of the ranges. */
        jr_taint_result(ret, jv_tainted(obj));
        return 0;
    }
    if (obj.kind == JV_UNDEF)
        return jr_undefined_error(r, n, obj);
    return jr_err(r, n, "'%s' object is not subscriptable", jv_type_name(obj));
}

static int loop_attr(struct render *r, struct jloop *lp, struct jstr name, struct jv *ret)
{
    int64_t i = lp->index0, len = lp->length;
    if (jstr_eq(name, "index"))
        *ret = jv_int(i + 1);
    else if (jstr_eq(name, "index0"))
        *ret = jv_int(i);
    else if (jstr_eq(name, "revindex"))
        *ret = jv_int(len - i);
    else if (jstr_eq(name, "revindex0"))
        *ret = jv_int(len - i - 1);
    else if (jstr_eq(name, "first"))
        *ret = jv_bool(i == 0);
    else if (jstr_eq(name, "last"))
        *ret = jv_bool(i == len - 1);
    else if (jstr_eq(name, "length"))
        *ret = jv_int(len);
    else if (jstr_eq(name, "depth"))
        *ret = jv_int(1);
    else if (jstr_eq(name, "depth0"))
        *ret = jv_int(0);
    else if (jstr_eq(name, "previtem"))
        *ret = i > 0 ? lp->items[i - 1] : jv_undef();
    else if (jstr_eq(name, "nextitem"))
        *ret = i + 1 < len ? lp->items[i + 1] : jv_undef();
    else
        *ret = jv_undef();
    return 0;
}

/* obj.name: dict item, namespace attribute, loop attribute; missing is
 * undefined; an attribute of undefined is an error, as in Jinja2. */
int jr_get_attr(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct jv *ret)
{
    switch (obj.kind) {
    case JV_DICT:
    case JV_NS: {
        struct jv *v = jdict_get(obj.d, name.p, name.n);
        *ret = v ? *v : undef_at(n, obj.kind);
        return 0;
    }
    case JV_LOOP:
        return loop_attr(r, obj.loop, name, ret);
    case JV_UNDEF:
        return jr_undefined_error(r, n, obj);
    default:
        *ret = undef_at(n, obj.kind);
        return 0;
    }
}

int jr_get_item(struct render *r, const struct jnode *n, struct jv obj, struct jv key, struct jv *ret)
{
    if (obj.kind == JV_UNDEF)
        return jr_undefined_error(r, n, obj);
    if ((obj.kind == JV_DICT || obj.kind == JV_NS) && key.kind == JV_STR) {
        struct jv *v = jdict_get(obj.d, key.s.p, key.s.n);
        *ret = v ? *v : undef_at(n, obj.kind);
        return 0;
    }
    if (obj.kind == JV_LOOP && key.kind == JV_STR)
        return loop_attr(r, obj.loop, key.s, ret);
    if ((obj.kind == JV_LIST || obj.kind == JV_STR) && jv_is_int(key)) {
        int64_t i = jv_int_of(key);
        if (obj.kind == JV_LIST) {
            int64_t len = (int64_t)obj.l->n;
            if (i < 0)
                i += len;
            *ret = i >= 0 && i < len ? obj.l->items[i] : undef_at(n, obj.kind);
            return 0;
        }
        size_t *off, ncp;
        int rc = jr_cp_offsets(r, obj.s, &off, &ncp);
        if (rc < 0)
            return rc;
        if (i < 0)
            i += (int64_t)ncp;
        *ret = i >= 0 && i < (int64_t)ncp ? (struct jv){.kind = JV_STR, .s = {obj.s.p + off[i], off[i + 1] - off[i]},
                                                          .taint = obj.taint ? &jtaint_all : NULL}
                                          : undef_at(n, obj.kind);
        return 0;
    }
    *ret = undef_at(n, obj.kind);
    return 0;
}

/* ---- operators ---- */

int jr_compare(struct render *r, const struct jnode *n, int op, struct jv a, struct jv b, bool *ret)
{
    switch (op) {
    case JOP_EQ:
        *ret = jv_equal(a, b);
        return 0;
    case JOP_NE:
        *ret = !jv_equal(a, b);
        return 0;
    case JOP_IN:
    case JOP_NOTIN: {
        bool found = false;
        if (b.kind == JV_STR) {
            if (a.kind != JV_STR)
                return jr_err(r, n, "'in <string>' requires string as left operand, not %s", jv_type_name(a));
            found = jstr_find(b.s, a.s, 0) != NULL;
        } else if (b.kind == JV_LIST) {
            for (size_t i = 0; i < b.l->n && !found; i++)
                found = jv_equal(a, b.l->items[i]);
        } else if (b.kind == JV_DICT || b.kind == JV_NS) {
            found = a.kind == JV_STR && jdict_get(b.d, a.s.p, a.s.n) != NULL;
        } else if (b.kind != JV_UNDEF) {
            return jr_err(r, n, "argument of type '%s' is not iterable", jv_type_name(b));
        }
        *ret = op == JOP_IN ? found : !found;
        return 0;
    }
    default:
        break;
    }
    int c;
    if (jv_is_num(a) && jv_is_num(b)) {
        double x = jv_num_of(a), y = jv_num_of(b);
        if (jv_is_int(a) && jv_is_int(b))
            c = jv_int_of(a) < jv_int_of(b) ? -1 : jv_int_of(a) > jv_int_of(b);
        else
            c = x < y ? -1 : x > y ? 1 : 0;
    } else if (a.kind == JV_STR && b.kind == JV_STR) {
        size_t m = a.s.n < b.s.n ? a.s.n : b.s.n;
        c = memcmp(a.s.p, b.s.p, m);
        if (c == 0)
            c = a.s.n < b.s.n ? -1 : a.s.n > b.s.n;
    } else {
        if (a.kind == JV_UNDEF)
            return jr_undefined_error(r, n, a);
        if (b.kind == JV_UNDEF)
            return jr_undefined_error(r, n, b);
        return jr_err(r, n, "'%s' not supported between instances of '%s' and '%s'",
                      op == JOP_LT ? "<" : op == JOP_LE ? "<=" : op == JOP_GT ? ">" : ">=", jv_type_name(a),
                    jv_type_name(b));
    }
    *ret = op == JOP_LT ? c < 0 : op == JOP_LE ? c <= 0 : op == JOP_GT ? c > 0 : c >= 0;
    return 0;
}

static const char *op_symbol(int op)
{
    switch (op) {
    case JOP_ADD: return "+";
    case JOP_SUB: return "-";
    case JOP_MUL: return "*";
    case JOP_DIV: return "/";
    case JOP_FLOORDIV: return "//";
    case JOP_MOD: return "%";
    case JOP_POW: return "**";
    }
    return "?";
}

static int repeat(struct render *r, struct jv seq, int64_t times, struct jv *ret)
{
    if (times < 0)
        times = 0;
    if (seq.kind == JV_STR) {
        if (seq.s.n && (uint64_t)times > RENDER_MAX_OUTPUT / seq.s.n)
            return -EFBIG;
        struct jbuf b = jr_buf(r);
        for (int64_t i = 0; i < times; i++) {
            int rc = jr_put(r, &b, seq);
            if (rc < 0)
                return rc;
        }
        return jr_make_str(r, &b, ret);
    }
    if (seq.l->n && (uint64_t)times > RENDER_MAX_ITERATIONS / seq.l->n)
        return -ENOMEM;
    struct jlist *l = jlist_new(r->arena, seq.l->n * (size_t)times);
    if (!l)
        return -ENOMEM;
    for (int64_t i = 0; i < times; i++)
        for (size_t k = 0; k < seq.l->n; k++)
            l->items[l->n++] = seq.l->items[k];
    *ret = (struct jv){.kind = JV_LIST, .l = l};
    return 0;
}


int jr_binop(struct render *r, const struct jnode *n, int op, struct jv a, struct jv b, struct jv *ret)
{
    if (a.kind == JV_UNDEF)
        return jr_undefined_error(r, n, a);
    if (b.kind == JV_UNDEF)
        return jr_undefined_error(r, n, b);
    if (jv_is_num(a) && jv_is_num(b)) {
        bool ints = jv_is_int(a) && jv_is_int(b);
        int64_t x = jv_int_of(a), y = jv_int_of(b), z;
        double fx = jv_num_of(a), fy = jv_num_of(b);
        switch (op) {
        case JOP_ADD:
        case JOP_SUB:
        case JOP_MUL:
            if (!ints) {
                *ret = jv_float(op == JOP_ADD ? fx + fy : op == JOP_SUB ? fx - fy : fx * fy);
                return 0;
            }
            if (op == JOP_ADD   ? __builtin_add_overflow(x, y, &z)
                : op == JOP_SUB ? __builtin_sub_overflow(x, y, &z)
                                : __builtin_mul_overflow(x, y, &z))
                return jr_err(r, n, "integer overflow");
            *ret = jv_int(z);
            return 0;
        case JOP_DIV:
            if (fy == 0)
                return jr_err(r, n, "division by zero");
            *ret = jv_float(fx / fy);
            return 0;
        case JOP_FLOORDIV:
        case JOP_MOD:
            if (ints) {
                if (y == 0)
                    return jr_err(r, n, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1)
                    return jr_err(r, n, "integer overflow");
                int64_t q = x / y, m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) {
                    q--;
                    m += y;
                }
                *ret = jv_int(op == JOP_FLOORDIV ? q : m);
            } else {
                if (fy == 0)
                    return jr_err(r, n, "float division by zero");
                double q = floor(fx / fy);
                *ret = jv_float(op == JOP_FLOORDIV ? q : fx - q * fy);
            }
            return 0;
        case JOP_POW:
            if (ints && y >= 0) {
                int64_t acc = 1;
                for (int64_t k = 0; k < y; k++) {
                    if (__builtin_mul_overflow(acc, x, &acc))
                        return jr_err(r, n, "integer overflow");
                    if (acc == 0 || acc == 1)
                        break;
                }
                *ret = jv_int(acc);
            } else {
                *ret = jv_float(pow(fx, fy));
            }
            return 0;
        }
    }
    if (op == JOP_ADD && a.kind == JV_STR && b.kind == JV_STR) {
        struct jbuf buf = jr_buf(r);
        int rc = jr_put(r, &buf, a);
        if (rc == 0)
            rc = jr_put(r, &buf, b);
        if (rc < 0)
            return rc;
        return jr_make_str(r, &buf, ret);
    }
    if (op == JOP_ADD && a.kind == JV_LIST && b.kind == JV_LIST) {
        struct jlist *l = jlist_new(r->arena, a.l->n + b.l->n);
        if (!l)
            return -ENOMEM;
        for (size_t i = 0; i < a.l->n; i++)
            l->items[l->n++] = a.l->items[i];
        for (size_t i = 0; i < b.l->n; i++)
            l->items[l->n++] = b.l->items[i];
        l->tuple = a.l->tuple;
        *ret = (struct jv){.kind = JV_LIST, .l = l};
        return 0;
    }
    if (op == JOP_MOD && a.kind == JV_STR) {
        int rc = jr_percent_format(r, n, a.s, b, ret);
        if (rc == 0)
            jr_taint_result(ret, r->untrusted && (jv_tainted(a) || jv_tainted(b)));
        return rc;
    }
    if (op == JOP_MUL && (a.kind == JV_STR || a.kind == JV_LIST) && jv_is_int(b))
        return repeat(r, a, jv_int_of(b), ret);
    if (op == JOP_MUL && (b.kind == JV_STR || b.kind == JV_LIST) && jv_is_int(a))
        return repeat(r, b, jv_int_of(a), ret);
    if (op == JOP_ADD && (a.kind == JV_STR || b.kind == JV_STR))
        return jr_err(r, n, "can only concatenate str (not \"%s\") to str",
                      jv_type_name(a.kind == JV_STR ? b : a));
    return jr_err(r, n, "unsupported operand type(s) for %s: '%s' and '%s'", op_symbol(op), jv_type_name(a),
                  jv_type_name(b));
}

/* ---- macros ---- */

/* Renders body into a string of its own (with its untrusted ranges). */
static int capture(struct render *r, const struct jnode *body, struct frame *f, struct jv *ret)
{
    struct jbuf *saved = r->out;
    struct jbuf b = jr_buf(r);
    r->out = &b;
    int rc = jr_exec_body(r, body, f);
    r->out = saved;
    if (rc < 0)
        return rc;
    return jr_make_str(r, &b, ret);
}

static int call_macro(struct render *r, const struct jnode *n, struct jmacro *m, struct args *a, struct jmacro *caller,
                      struct jv *ret)
{
    const struct jnode *def = m->def;
    if (r->call_depth >= RENDER_MAX_CALL_DEPTH)
        return jr_err(r, n, "macro calls nested deeper than %d", RENDER_MAX_CALL_DEPTH);
    if (a->npos > def->nnames)
        return jr_err(r, n, "macro '%.*s' takes not more than %u argument(s)", (int)def->name.n, def->name.p,
                      def->nnames);
    struct frame *f = jr_frame_new(r, m->closure);
    if (!f)
        return -ENOMEM;
    int rc;
    for (uint32_t i = 0; i < def->nnames; i++) {
        struct jv v = jv_undef();
        bool given = false;
        if (i < a->npos) {
            v = a->pos[i];
            given = true;
        }
        for (size_t k = 0; k < a->nkw; k++)
            if (a->kwn[k].n == def->names[i].n && memcmp(a->kwn[k].p, def->names[i].p, a->kwn[k].n) == 0) {
                v = a->kwv[k];
                given = true;
            }
        if (!given && def->kids2[i] && (rc = jr_eval(r, def->kids2[i], f, &v)) < 0)
            return rc;
        if ((rc = jr_frame_set(r, f, def->names[i], v)) < 0)
            return rc;
    }
    for (size_t k = 0; k < a->nkw; k++) {
        bool known = false;
        for (uint32_t i = 0; i < def->nnames; i++)
            known |= a->kwn[k].n == def->names[i].n && memcmp(a->kwn[k].p, def->names[i].p, a->kwn[k].n) == 0;
        if (!known)
            return jr_err(r, n, "macro '%.*s' has no parameter named '%.*s'", (int)def->name.n, def->name.p,
                          (int)a->kwn[k].n, a->kwn[k].p);
    }
    if (caller && (rc = jr_frame_set(r, f, (struct jstr){"caller", 6}, (struct jv){.kind = JV_MACRO, .m = caller})) < 0)
        return rc;
    r->call_depth++;
    rc = capture(r, def->b, f, ret);
    r->call_depth--;
    return rc;
}

/* ---- global functions ---- */

enum { FN_RANGE, FN_NAMESPACE, FN_DICT, FN_RAISE, FN_STRFTIME, FN_COUNT };
static const char *const func_names[FN_COUNT] = {"range", "namespace", "dict", "raise_exception", "strftime_now"};

static int call_func(struct render *r, const struct jnode *n, int fn, struct args *a, struct jv *ret)
{
    int rc;
    switch (fn) {
    case FN_RANGE: {
        int64_t v[3] = {0, 0, 1};
        if (a->npos < 1 || a->npos > 3)
            return jr_err(r, n, "range expected 1 to 3 arguments, got %zu", a->npos);
        for (size_t i = 0; i < a->npos; i++) {
            if (!jv_is_int(a->pos[i]))
                return jr_err(r, n, "range() arguments must be integers, got %s", jv_type_name(a->pos[i]));
        }
        if (a->npos == 1) {
            v[1] = jv_int_of(a->pos[0]);
        } else {
            v[0] = jv_int_of(a->pos[0]);
            v[1] = jv_int_of(a->pos[1]);
            if (a->npos == 3)
                v[2] = jv_int_of(a->pos[2]);
        }
        if (v[2] == 0)
            return jr_err(r, n, "range() arg 3 must not be zero");
        double count = ceil(((double)v[1] - (double)v[0]) / (double)v[2]);
        if (count > RENDER_MAX_RANGE)
            return jr_err(r, n, "range too big: %.0f items (limit %d)", count, RENDER_MAX_RANGE);
        struct jlist *l = jlist_new(r->arena, count > 0 ? (size_t)count : 0);
        if (!l)
            return -ENOMEM;
        for (int64_t i = v[0]; v[2] > 0 ? i < v[1] : i > v[1]; i += v[2])
            l->items[l->n++] = jv_int(i);
        *ret = (struct jv){.kind = JV_LIST, .l = l};
        return 0;
    }
    case FN_NAMESPACE:
    case FN_DICT: {
        struct jdict *d = jdict_new(r->arena, 0);
        if (!d)
            return -ENOMEM;
        for (size_t i = 0; i < a->npos; i++) {
            if (a->pos[i].kind != JV_DICT)
                return jr_err(r, n, "%s() positional argument must be a mapping", func_names[fn]);
            for (size_t k = 0; k < a->pos[i].d->n; k++)
                if ((rc = jdict_set(r->arena, d, a->pos[i].d->keys[k], a->pos[i].d->vals[k])) < 0)
                    return rc;
        }
        for (size_t k = 0; k < a->nkw; k++)
            if ((rc = jdict_set(r->arena, d, a->kwn[k], a->kwv[k])) < 0)
                return rc;
        *ret = (struct jv){.kind = fn == FN_NAMESPACE ? JV_NS : JV_DICT, .d = d};
        return 0;
    }
    case FN_RAISE: {
        struct jstr msg = {"", 0};
        if (a->npos >= 1 && (rc = jr_to_str(r, a->pos[0], &msg)) < 0)
            return rc;
        ifd_error_set(r->err, -EINVAL, "%.*s", (int)msg.n, msg.p);
        r->err_set = true;
        return -EINVAL;
    }
    case FN_STRFTIME: {
        struct jstr fmt = {0};
        if (a->npos != 1 || (rc = jr_need_str(r, n, a->pos[0], "strftime_now", &fmt)) < 0)
            return a->npos == 1 ? rc : jr_err(r, n, "strftime_now() takes exactly one argument");
        if (fmt.n > 256)
            return jr_err(r, n, "strftime_now: format too long");
        char f[257], out[1024];
        memcpy(f, fmt.p, fmt.n);
        f[fmt.n] = '\0';
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t len = strftime(out, sizeof(out), f, &tm);
        char *p = jarena_alloc(r->arena, len + 1);
        if (!p)
            return -ENOMEM;
        memcpy(p, out, len);
        *ret = jv_str(p, len);
        return 0;
    }
    }
    return jr_err(r, n, "unknown function");
}

/* ---- evaluation ---- */

static int eval_call(struct render *r, const struct jnode *n, struct frame *f, struct jv *ret)
{
    struct args a;
    int rc;
    struct jmacro *caller = r->pending_caller;
    r->pending_caller = NULL;
    const struct jnode *callee = n->a;
    if (callee->kind == JN_ATTR) {
        struct jv obj;
        if ((rc = jr_eval(r, callee->a, f, &obj)) < 0)
            return rc;
        if (obj.kind == JV_STR || obj.kind == JV_DICT || obj.kind == JV_LIST ||
            (obj.kind == JV_LOOP && jstr_eq(callee->name, "cycle"))) {
            if ((rc = eval_args(r, n, f, &a)) < 0)
                return rc;
            if (obj.kind == JV_LOOP) {
                if (a.npos == 0)
                    return jr_err(r, n, "loop.cycle() needs at least one argument");
                *ret = a.pos[obj.loop->index0 % (int64_t)a.npos];
                return 0;
            }
            if ((rc = jr_method(r, n, obj, callee->name, &a, ret)) < 0)
                return rc;
            if (rc == METHOD_DONE)
                return 0;
        }
        struct jv fnv;
        if ((rc = jr_get_attr(r, callee, obj, callee->name, &fnv)) < 0)
            return rc;
        if (fnv.kind != JV_MACRO) {
            if (fnv.kind == JV_UNDEF)
                return jr_err(r, n, "'%s' object has no method '%.*s'", jv_type_name(obj), (int)callee->name.n,
                              callee->name.p);
            return jr_err(r, n, "'%s' object is not callable", jv_type_name(fnv));
        }
        if ((rc = eval_args(r, n, f, &a)) < 0)
            return rc;
        return call_macro(r, n, fnv.m, &a, caller, ret);
    }
    struct jv fnv;
    if ((rc = jr_eval(r, callee, f, &fnv)) < 0)
        return rc;
    if (fnv.kind == JV_UNDEF && callee->kind == JN_NAME)
        return jr_err(r, n, "'%.*s' is undefined", (int)callee->name.n, callee->name.p);
    if (fnv.kind != JV_MACRO && fnv.kind != JV_FUNC)
        return jr_err(r, n, "'%s' object is not callable", jv_type_name(fnv));
    if ((rc = eval_args(r, n, f, &a)) < 0)
        return rc;
    if (fnv.kind == JV_FUNC)
        return call_func(r, n, fnv.func, &a, ret);
    return call_macro(r, n, fnv.m, &a, caller, ret);
}

static int eval_inner(struct render *r, const struct jnode *n, struct frame *f, struct jv *ret)
{
    int rc;
    struct jv a, b;
    switch (n->kind) {
    case JN_CONST:
        *ret = n->cval;
        return 0;
    case JN_NAME: {
        struct jv *v = jr_frame_get(f, n->name);
        if (v) {
            *ret = *v;
            return 0;
        }
        for (int k = 0; k < FN_COUNT; k++)
            if (jstr_eq(n->name, func_names[k])) {
                *ret = (struct jv){.kind = JV_FUNC, .func = k};
                return 0;
            }
        *ret = (struct jv){.kind = JV_UNDEF, .origin = n};
        return 0;
    }
    case JN_LIST:
    case JN_TUPLE: {
        struct jlist *l = jlist_new(r->arena, n->nkids);
        if (!l)
            return -ENOMEM;
        l->tuple = n->kind == JN_TUPLE;
        for (uint32_t i = 0; i < n->nkids; i++)
            if ((rc = jr_eval(r, n->kids[i], f, &l->items[l->n++])) < 0)
                return rc;
        *ret = (struct jv){.kind = JV_LIST, .l = l};
        return 0;
    }
    case JN_DICT: {
        struct jdict *d = jdict_new(r->arena, n->nkids);
        if (!d)
            return -ENOMEM;
        for (uint32_t i = 0; i < n->nkids; i++) {
            if ((rc = jr_eval(r, n->kids[i], f, &a)) < 0 || (rc = jr_eval(r, n->kids2[i], f, &b)) < 0)
                return rc;
            if (a.kind != JV_STR)
                return jr_err(r, n->kids[i], "dict keys must be strings, got %s", jv_type_name(a));
            if (jv_tainted(a))
                d->taint = true; /* keys carry no ranges of their own */
            if ((rc = jdict_set(r->arena, d, a.s, b)) < 0)
                return rc;
        }
        *ret = (struct jv){.kind = JV_DICT, .d = d};
        return 0;
    }
    case JN_ATTR:
        if ((rc = jr_eval(r, n->a, f, &a)) < 0)
            return rc;
        return jr_get_attr(r, n, a, n->name, ret);
    case JN_SUBSCRIPT:
        if ((rc = jr_eval(r, n->a, f, &a)) < 0)
            return rc;
        if (n->b->kind == JN_SLICE) {
            struct jv s[3];
            const struct jnode *parts[3] = {n->b->a, n->b->b, n->b->c};
            for (int i = 0; i < 3; i++) {
                s[i] = jv_none();
                if (parts[i] && (rc = jr_eval(r, parts[i], f, &s[i])) < 0)
                    return rc;
            }
            return jr_slice(r, n, a, &s[0], &s[1], &s[2], ret);
        }
        if ((rc = jr_eval(r, n->b, f, &b)) < 0)
            return rc;
        return jr_get_item(r, n, a, b, ret);
    case JN_CALL:
        return eval_call(r, n, f, ret);
    case JN_FILTER: {
        struct args args;
        if ((rc = jr_eval(r, n->a, f, &a)) < 0 || (rc = eval_args(r, n, f, &args)) < 0)
            return rc;
        return jr_filter(r, n, n->name, a, &args, ret);
    }
    case JN_TEST: {
        struct args args;
        bool t;
        if ((rc = jr_eval(r, n->a, f, &a)) < 0 || (rc = eval_args(r, n, f, &args)) < 0)
            return rc;
        if ((rc = jr_test(r, n, n->name, a, &args, &t)) < 0)
            return rc;
        *ret = jv_bool(n->op ? !t : t);
        return 0;
    }
    case JN_NOT:
        if ((rc = jr_eval(r, n->a, f, &a)) < 0)
            return rc;
        *ret = jv_bool(!jv_truthy(a));
        return 0;
    case JN_NEG:
    case JN_POS:
        if ((rc = jr_eval(r, n->a, f, &a)) < 0)
            return rc;
        if (a.kind == JV_UNDEF)
            return jr_undefined_error(r, n, a);
        if (!jv_is_num(a))
            return jr_err(r, n, "bad operand type for unary %c: '%s'", n->kind == JN_NEG ? '-' : '+', jv_type_name(a));
        if (n->kind == JN_POS)
            *ret = a.kind == JV_BOOL ? jv_int(a.b) : a;
        else if (a.kind == JV_FLOAT)
            *ret = jv_float(-a.f);
        else if (jv_int_of(a) == INT64_MIN)
            return jr_err(r, n, "integer overflow");
        else
            *ret = jv_int(-jv_int_of(a));
        return 0;
    case JN_BINOP:
        if ((rc = jr_eval(r, n->a, f, &a)) < 0 || (rc = jr_eval(r, n->b, f, &b)) < 0)
            return rc;
        return jr_binop(r, n, n->op, a, b, ret);
    case JN_CONCAT: {
        struct jbuf buf = jr_buf(r);
        for (uint32_t i = 0; i < n->nkids; i++)
            if ((rc = jr_eval(r, n->kids[i], f, &a)) < 0 || (rc = jr_put(r, &buf, a)) < 0)
                return rc;
        return jr_make_str(r, &buf, ret);
    }
    case JN_COMPARE: {
        if ((rc = jr_eval(r, n->a, f, &a)) < 0)
            return rc;
        bool t = true;
        for (uint32_t i = 0; i < n->nkids && t; i++) {
            if ((rc = jr_eval(r, n->kids[i], f, &b)) < 0 || (rc = jr_compare(r, n, n->ops[i], a, b, &t)) < 0)
                return rc;
            a = b;
        }
        *ret = jv_bool(t);
        return 0;
    }
    case JN_AND:
    case JN_OR:
        /* Python semantics: the deciding operand itself, not a bool. */
        if ((rc = jr_eval(r, n->a, f, &a)) < 0)
            return rc;
        if (jv_truthy(a) == (n->kind == JN_OR)) {
            *ret = a;
            return 0;
        }
        return jr_eval(r, n->b, f, ret);
    case JN_CONDEXPR:
        if ((rc = jr_eval(r, n->b, f, &a)) < 0)
            return rc;
        if (jv_truthy(a))
            return jr_eval(r, n->a, f, ret);
        if (n->c)
            return jr_eval(r, n->c, f, ret);
        *ret = (struct jv){.kind = JV_UNDEF, .origin = n};
        return 0;
    case JN_BLOCK_INPUT:
        *ret = r->block_input;
        return 0;
    default:
        return jr_err(r, n, "statement used as an expression");
    }
}

/* Measured, not counted: frame sizes differ between builds (sanitizers make
 * them several times larger). */
static bool stack_exhausted(const struct render *r)
{
    const char *here = __builtin_frame_address(0);
    size_t used = here < r->stack_base ? (size_t)(r->stack_base - here) : (size_t)(here - r->stack_base);
    return used > RENDER_MAX_STACK;
}

int jr_eval(struct render *r, const struct jnode *n, struct frame *f, struct jv *ret)
{
    if (stack_exhausted(r))
        return jr_err(r, n, "expression nesting too deep (more than %u KiB of stack)", RENDER_MAX_STACK >> 10);
    int rc = eval_inner(r, n, f, ret);
    return rc < 0 ? jr_fail(r, n, rc) : rc;
}

/* ---- statements ---- */

static int assign_names(struct render *r, const struct jnode *at, struct frame *f, const struct jstr *names,
                        uint32_t count, struct jv v)
{
    if (count == 1)
        return jr_frame_set(r, f, names[0], v);
    if (v.kind != JV_LIST)
        return jr_err(r, at, "cannot unpack non-sequence %s into %u names", jv_type_name(v), count);
    if (v.l->n != count)
        return jr_err(r, at, "%s values to unpack (expected %u, got %zu)", v.l->n > count ? "too many" : "not enough",
                      count, v.l->n);
    for (uint32_t i = 0; i < count; i++) {
        int rc = jr_frame_set(r, f, names[i], v.l->items[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int exec_set(struct render *r, const struct jnode *n, struct frame *f)
{
    struct jv v;
    int rc = jr_eval(r, n->b, f, &v);
    if (rc < 0)
        return rc;
    const struct jnode *t = n->a;
    if (t->kind == JN_NAME)
        return jr_frame_set(r, f, t->name, v);
    if (t->kind == JN_ATTR) {
        struct jv *ns = jr_frame_get(f, t->a->name);
        if (!ns || ns->kind != JV_NS)
            return jr_err(r, t, "cannot assign attribute on non-namespace object '%.*s'", (int)t->a->name.n,
                          t->a->name.p);
        return jdict_set(r->arena, ns->d, t->name, v);
    }
    /* tuple of names */
    struct jstr *names = jarena_alloc(r->arena, t->nkids * sizeof(*names));
    if (!names)
        return -ENOMEM;
    for (uint32_t i = 0; i < t->nkids; i++)
        names[i] = t->kids[i]->name;
    return assign_names(r, n, f, names, t->nkids, v);
}

static int exec_for(struct render *r, const struct jnode *n, struct frame *f)
{
    struct jv seq;
    int rc = jr_eval(r, n->a, f, &seq);
    if (rc < 0)
        return rc;
    struct jlist *l;
    if ((rc = jr_iterate(r, n->a, seq, &l)) < 0)
        return rc;
    struct frame *lf = jr_frame_new(r, f);
    if (!lf)
        return -ENOMEM;
    /* Snapshot: appending to the list inside the loop does not extend it. */
    const struct jv *items = l->items;
    size_t count = l->n;
    if (n->d) {
        /* The filter runs first, so loop.length and loop.last see the filtered items. */
        struct jlist *kept = jlist_new(r->arena, 0);
        if (!kept)
            return -ENOMEM;
        for (size_t i = 0; i < count; i++) {
            struct jv cond;
            lf->vars.n = 0;
            if (++r->iterations > RENDER_MAX_ITERATIONS)
                return jr_err(r, n, "loop iterations exceed %d", RENDER_MAX_ITERATIONS);
            if ((rc = assign_names(r, n, lf, n->names, n->nnames, items[i])) < 0 || (rc = jr_eval(r, n->d, lf, &cond)) < 0)
                return rc;
            if (jv_truthy(cond) && (rc = jlist_push(r->arena, kept, items[i])) < 0)
                return rc;
        }
        items = kept->items;
        count = kept->n;
    }
    if (count == 0) {
        if (!n->c)
            return 0;
        lf->vars.n = 0;
        return jr_exec_body(r, n->c, lf);
    }
    struct jloop *loop = jarena_alloc(r->arena, sizeof(*loop));
    if (!loop)
        return -ENOMEM;
    loop->length = (int64_t)count;
    loop->items = items;
    for (size_t i = 0; i < count; i++) {
        if (++r->iterations > RENDER_MAX_ITERATIONS)
            return jr_err(r, n, "loop iterations exceed %d", RENDER_MAX_ITERATIONS);
        lf->vars.n = 0;
        loop->index0 = (int64_t)i;
        if ((rc = jr_frame_set(r, lf, (struct jstr){"loop", 4}, (struct jv){.kind = JV_LOOP, .loop = loop})) < 0 ||
            (rc = assign_names(r, n, lf, n->names, n->nnames, items[i])) < 0)
            return jr_fail(r, n, rc);
        rc = jr_exec_body(r, n->b, lf);
        if (rc < 0)
            return rc;
        if (rc == CTL_BREAK)
            break;
    }
    return 0;
}

/* A macro (or a call block's caller()) defined by n, closing over f. */
static struct jmacro *macro_new(struct render *r, const struct jnode *n, struct frame *f)
{
    struct jmacro *m = jarena_alloc(r->arena, sizeof(*m));
    if (m) {
        m->def = n;
        m->closure = f;
    }
    return m;
}

static int exec_stmt(struct render *r, const struct jnode *n, struct frame *f)
{
    int rc;
    struct jv v;
    switch (n->kind) {
    case JN_TEXT:
        return jbuf_put(r->out, n->name.p, n->name.n);
    case JN_OUTPUT:
        if ((rc = jr_eval(r, n->a, f, &v)) < 0)
            return rc;
        return jr_put(r, r->out, v);
    case JN_IF:
        if ((rc = jr_eval(r, n->a, f, &v)) < 0)
            return rc;
        if (jv_truthy(v))
            return jr_exec_body(r, n->b, f);
        if (n->c)
            return n->c->kind == JN_IF ? exec_stmt(r, n->c, f) : jr_exec_body(r, n->c, f);
        return 0;
    case JN_FOR:
        return exec_for(r, n, f);
    case JN_SET:
        return exec_set(r, n, f);
    case JN_SET_BLOCK:
    case JN_FILTER_BLOCK: {
        struct jv text;
        if ((rc = capture(r, n->b, f, &text)) < 0)
            return rc;
        const struct jnode *chain = n->kind == JN_FILTER_BLOCK ? n->a : n->c;
        v = text;
        if (chain) {
            struct jv saved = r->block_input;
            r->block_input = text;
            rc = jr_eval(r, chain, f, &v);
            r->block_input = saved;
            if (rc < 0)
                return rc;
        }
        if (n->kind == JN_SET_BLOCK)
            return jr_frame_set(r, f, n->a->name, v);
        return jr_put(r, r->out, v);
    }
    case JN_MACRO: {
        struct jmacro *m = macro_new(r, n, f);
        if (!m)
            return -ENOMEM;
        return jr_frame_set(r, f, n->name, (struct jv){.kind = JV_MACRO, .m = m});
    }
    case JN_CALL_BLOCK: {
        struct jmacro *m = macro_new(r, n, f);
        if (!m)
            return -ENOMEM;
        r->pending_caller = m;
        rc = jr_eval(r, n->a, f, &v);
        r->pending_caller = NULL;
        if (rc < 0)
            return rc;
        return jr_put(r, r->out, v);
    }
    case JN_WITH: {
        struct frame *wf = jr_frame_new(r, f);
        if (!wf)
            return -ENOMEM;
        for (uint32_t i = 0; i < n->nnames; i++) {
            if ((rc = jr_eval(r, n->kids2[i], wf, &v)) < 0 || (rc = jr_frame_set(r, wf, n->names[i], v)) < 0)
                return rc;
        }
        return jr_exec_body(r, n->b, wf);
    }
    case JN_BREAK:
        return CTL_BREAK;
    case JN_CONTINUE:
        return CTL_CONTINUE;
    case JN_BODY:
        return jr_exec_body(r, n, f);
    default:
        return jr_err(r, n, "expression used as a statement");
    }
}

/* Returns 0, CTL_BREAK / CTL_CONTINUE (passed up to the enclosing loop), or < 0. */
int jr_exec_body(struct render *r, const struct jnode *n, struct frame *f)
{
    if (stack_exhausted(r))
        return jr_err(r, n, "block nesting too deep (more than %u KiB of stack)", RENDER_MAX_STACK >> 10);
    for (uint32_t i = 0; i < n->nkids; i++) {
        int rc = exec_stmt(r, n->kids[i], f);
        if (rc < 0)
            return jr_fail(r, n->kids[i], rc);
        if (rc > 0)
            return rc;
    }
    return 0;
}

