/* chat_template.c - the evaluator of the Jinja subset, its filters, tests,
 * methods and global functions, and the public chat_template API.
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
 * naming it, never a crash. */
#include "text/template/chat_template.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

#include "jinja-internal.h"

#define TEMPLATE_MAX_SOURCE (4u << 20)     /* bytes of template source */
#define RENDER_MAX_ARENA (256u << 20)      /* bytes of values a render may create */
#define RENDER_MAX_OUTPUT (32u << 20)      /* bytes of rendered text */
#define RENDER_MAX_ITERATIONS 1000000      /* loop iterations per render, all loops together */
#define RENDER_MAX_CALL_DEPTH 64           /* nested macro calls */
#define RENDER_MAX_RANGE 100000            /* items of range(), as Jinja2's sandbox */
/* Stack a render may use for nested evaluation (deep expressions inside
 * recursive macros); callers need a thread stack comfortably above this. */
#define RENDER_MAX_STACK (1u << 20)

const char chat_template_chatml[] =
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

struct chat_template {
    struct jtemplate t;
};

struct frame {
    struct frame *parent;
    struct jstr *names;
    struct jv *vals;
    size_t n, cap;
};

struct jmacro {
    const struct jnode *def; /* JN_MACRO or JN_CALL_BLOCK (names, kids2, b) */
    struct frame *closure;
};

struct jloop {
    int64_t index0, length;
    const struct jv *items;
};

struct render {
    const struct jtemplate *t;
    struct jarena *arena;
    ifd_error *err;
    bool err_set;
    struct jbuf *out;
    size_t iterations;
    int call_depth;
    struct jstr block_input;     /* the body text a filter block / block set filters */
    struct jmacro *pending_caller; /* caller() for the macro a call block invokes */
    const char *stack_base;        /* frame address where the render started */
};

enum { CTL_BREAK = 1, CTL_CONTINUE = 2 };

/* ---- errors ---- */

__attribute__((format(printf, 3, 4))) static int rerr(struct render *r, const struct jnode *n, const char *fmt, ...)
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
static int rfail(struct render *r, const struct jnode *n, int rc)
{
    if (rc >= 0 || r->err_set)
        return rc;
    switch (rc) {
    case -ENOMEM:
        rerr(r, n, "render needs more than %u MiB of memory", RENDER_MAX_ARENA >> 20);
        break;
    case -EFBIG:
        rerr(r, n, "rendered text exceeds %u MiB", RENDER_MAX_OUTPUT >> 20);
        break;
    case -ELOOP:
        rerr(r, n, "value nested deeper than %d levels", JV_MAX_DEPTH);
        break;
    default:
        rerr(r, n, "%s", strerror(-rc));
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
static int undefined_error(struct render *r, const struct jnode *at, struct jv v)
{
    const struct jnode *o = v.origin;
    const char *obj = v.aux ? kind_name((enum jv_kind)(v.aux - 1)) : "dict";
    if (o && o->kind == JN_NAME)
        return rerr(r, at, "'%.*s' is undefined", (int)o->name.n, o->name.p);
    if (o && o->kind == JN_ATTR)
        return rerr(r, at, "'%s object' has no attribute '%.*s'", obj, (int)o->name.n, o->name.p);
    if (o && o->kind == JN_SUBSCRIPT && o->b->kind == JN_CONST && o->b->cval.kind == JV_STR)
        return rerr(r, at, "'%s object' has no attribute '%.*s'", obj, (int)o->b->cval.s.n, o->b->cval.s.p);
    if (o && o->kind == JN_SUBSCRIPT && o->b->kind == JN_CONST && o->b->cval.kind == JV_INT)
        return rerr(r, at, "'%s object' has no element %lld", obj, (long long)o->b->cval.i);
    if (o && o->kind == JN_SUBSCRIPT)
        return rerr(r, at, "'%s object' has no such item", obj);
    return rerr(r, at, "value is undefined");
}

/* ---- frames ---- */

static struct frame *frame_new(struct render *r, struct frame *parent)
{
    struct frame *f = jarena_alloc(r->arena, sizeof(*f));
    if (f)
        f->parent = parent;
    return f;
}

static int frame_set(struct render *r, struct frame *f, struct jstr name, struct jv v)
{
    for (size_t i = 0; i < f->n; i++)
        if (f->names[i].n == name.n && memcmp(f->names[i].p, name.p, name.n) == 0) {
            f->vals[i] = v;
            return 0;
        }
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        struct jstr *names = jarena_alloc(r->arena, cap * sizeof(*names));
        struct jv *vals = jarena_alloc(r->arena, cap * sizeof(*vals));
        if (!names || !vals)
            return -ENOMEM;
        if (f->n) {
            memcpy(names, f->names, f->n * sizeof(*names));
            memcpy(vals, f->vals, f->n * sizeof(*vals));
        }
        f->names = names;
        f->vals = vals;
        f->cap = cap;
    }
    f->names[f->n] = name;
    f->vals[f->n] = v;
    f->n++;
    return 0;
}

static struct jv *frame_get(struct frame *f, struct jstr name)
{
    for (; f; f = f->parent)
        for (size_t i = f->n; i-- > 0;)
            if (f->names[i].n == name.n && memcmp(f->names[i].p, name.p, name.n) == 0)
                return &f->vals[i];
    return NULL;
}

/* ---- arguments ---- */

struct args {
    struct jv *pos;
    size_t npos;
    const struct jstr *kwn;
    struct jv *kwv;
    size_t nkw;
};

/* The argument at position i or named `name` (after the input, for filters). */
static struct jv *arg_get(struct args *a, size_t i, const char *name)
{
    if (i < a->npos)
        return &a->pos[i];
    for (size_t k = 0; k < a->nkw && name; k++)
        if (jstr_eq(a->kwn[k], name))
            return &a->kwv[k];
    return NULL;
}

static int eval(struct render *r, const struct jnode *n, struct frame *f, struct jv *ret);
static int exec_body(struct render *r, const struct jnode *n, struct frame *f);

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
        if ((rc = eval(r, n->kids[i], f, &a->pos[i])) < 0)
            return rc;
    for (uint32_t i = 0; i < n->nnames; i++)
        if ((rc = eval(r, n->kids2[i], f, &a->kwv[i])) < 0)
            return rc;
    return 0;
}

/* ---- string helpers ---- */

static int make_str(struct render *r, struct jbuf *b, struct jv *ret)
{
    *ret = jv_str(b->p ? b->p : "", b->n);
    return 0;
}

static struct jbuf new_buf(struct render *r)
{
    return (struct jbuf){.arena = r->arena, .limit = RENDER_MAX_OUTPUT};
}

/* str(v), with undefined as "". */
static int to_str(struct render *r, struct jv v, struct jstr *ret)
{
    return jv_to_str(r->arena, v, RENDER_MAX_OUTPUT, ret);
}

static int need_str(struct render *r, const struct jnode *n, struct jv v, const char *what, struct jstr *ret)
{
    if (v.kind != JV_STR)
        return rerr(r, n, "%s expects a string, got %s", what, jv_type_name(v));
    *ret = v.s;
    return 0;
}

static bool is_int_like(struct jv v)
{
    return v.kind == JV_INT || v.kind == JV_BOOL;
}

/* A float outside int64 (or NaN) saturates: the C conversion would be
 * undefined behaviour, and a template may write 1e300 wherever an int goes. */
static int64_t int_of(struct jv v)
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

static bool is_num(struct jv v)
{
    return v.kind == JV_INT || v.kind == JV_FLOAT || v.kind == JV_BOOL;
}

static double num_of(struct jv v)
{
    return v.kind == JV_FLOAT ? v.f : (double)int_of(v);
}

/* Byte offsets of each code point of s, plus one at the end (s.n). */
static int cp_offsets(struct render *r, struct jstr s, size_t **ret, size_t *ret_n)
{
    size_t n = jutf8_len(s.p, s.n);
    size_t *off = jarena_alloc(r->arena, (n + 1) * sizeof(*off));
    if (!off)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < s.n;) {
        off[k++] = i;
        jutf8_next(s.p, s.n, &i);
    }
    off[k] = s.n;
    *ret = off;
    *ret_n = n;
    return 0;
}

enum case_map { CASE_UPPER, CASE_LOWER, CASE_TITLE_JINJA, CASE_TITLE_PY, CASE_CAPITALIZE };

static int str_case(struct render *r, struct jstr s, enum case_map how, struct jv *ret)
{
    struct jbuf b = new_buf(r);
    bool prev_cased = false, at_start = true;
    int rc = 0;
    for (size_t i = 0; i < s.n && rc == 0;) {
        int32_t cp = jutf8_next(s.p, s.n, &i);
        int32_t out = cp;
        switch (how) {
        case CASE_UPPER: out = utf8proc_toupper(cp); break;
        case CASE_LOWER: out = utf8proc_tolower(cp); break;
        case CASE_CAPITALIZE:
            out = at_start ? utf8proc_toupper(cp) : utf8proc_tolower(cp);
            break;
        case CASE_TITLE_JINJA:
            /* Jinja's title: words begin after whitespace, '-', '(', '{', '[', '<' */
            out = at_start ? utf8proc_toupper(cp) : utf8proc_tolower(cp);
            at_start = jutf8_is_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
            break;
        case CASE_TITLE_PY: {
            bool cased = utf8proc_tolower(cp) != cp || utf8proc_toupper(cp) != cp;
            out = !prev_cased ? utf8proc_toupper(cp) : utf8proc_tolower(cp);
            prev_cased = cased;
            break;
        }
        }
        if (how != CASE_TITLE_JINJA)
            at_start = false;
        rc = jutf8_put(&b, out);
    }
    if (rc < 0)
        return rc;
    return make_str(r, &b, ret);
}

static bool cp_in_set(int32_t cp, struct jstr set)
{
    for (size_t i = 0; i < set.n;)
        if (jutf8_next(set.p, set.n, &i) == cp)
            return true;
    return false;
}

/* strip/lstrip/rstrip: chars NULL means Unicode whitespace. */
static struct jstr str_strip(struct jstr s, const struct jstr *chars, bool left, bool right)
{
    size_t a = 0, e = s.n;
    if (left) {
        while (a < e) {
            size_t k = a;
            int32_t cp = jutf8_next(s.p, s.n, &k);
            if (chars ? !cp_in_set(cp, *chars) : !jutf8_is_space(cp))
                break;
            a = k;
        }
    }
    if (right) {
        while (e > a) {
            size_t k = e - 1;
            while (k > a && ((unsigned char)s.p[k] & 0xc0) == 0x80)
                k--;
            size_t kk = k;
            int32_t cp = jutf8_next(s.p, s.n, &kk);
            if (chars ? !cp_in_set(cp, *chars) : !jutf8_is_space(cp))
                break;
            e = k;
        }
    }
    return (struct jstr){s.p + a, e - a};
}

static const char *str_find(struct jstr hay, struct jstr needle, size_t from)
{
    if (needle.n == 0)
        return from <= hay.n ? hay.p + from : NULL;
    if (from > hay.n || !hay.p || !needle.p)
        return NULL;
    return memmem(hay.p + from, hay.n - from, needle.p, needle.n);
}

static const char *str_rfind(struct jstr hay, struct jstr needle)
{
    if (needle.n > hay.n)
        return NULL;
    for (size_t i = hay.n - needle.n + 1; i-- > 0;)
        if (memcmp(hay.p + i, needle.p, needle.n) == 0)
            return hay.p + i;
    return NULL;
}

static int str_replace(struct render *r, struct jstr s, struct jstr old, struct jstr new, int64_t count, struct jv *ret)
{
    struct jbuf b = new_buf(r);
    int rc = 0;
    size_t i = 0;
    int64_t done = 0;
    if (old.n == 0) {
        /* Python inserts `new` between code points and at both ends. */
        while (rc == 0 && (count < 0 || done < count)) {
            rc = jbuf_put(&b, new.p, new.n);
            done++;
            if (i >= s.n || rc < 0)
                break;
            size_t k = i;
            jutf8_next(s.p, s.n, &k);
            rc = jbuf_put(&b, s.p + i, k - i);
            i = k;
        }
    } else {
        while (rc == 0 && (count < 0 || done < count)) {
            const char *hit = str_find(s, old, i);
            if (!hit)
                break;
            size_t at = (size_t)(hit - s.p);
            rc = jbuf_put(&b, s.p + i, at - i);
            if (rc == 0)
                rc = jbuf_put(&b, new.p, new.n);
            i = at + old.n;
            done++;
        }
    }
    if (rc == 0 && i < s.n)
        rc = jbuf_put(&b, s.p + i, s.n - i);
    if (rc < 0)
        return rc;
    return make_str(r, &b, ret);
}

static int list_push_str(struct render *r, struct jlist *l, const char *p, size_t n)
{
    return jlist_push(r->arena, l, jv_str(p, n));
}

/* split(sep, maxsplit) and rsplit: sep NULL splits on whitespace runs. */
static int str_split(struct render *r, const struct jnode *n, struct jstr s, const struct jstr *sep, int64_t maxsplit,
                     bool from_right, struct jv *ret)
{
    struct jlist *l = jlist_new(r->arena, 0);
    if (!l)
        return -ENOMEM;
    int rc = 0;
    if (sep && sep->n == 0)
        return rerr(r, n, "split: empty separator");
    if (!from_right) {
        size_t i = 0;
        int64_t splits = 0;
        if (sep) {
            for (;;) {
                const char *hit = (maxsplit < 0 || splits < maxsplit) ? str_find(s, *sep, i) : NULL;
                if (!hit) {
                    rc = list_push_str(r, l, s.p + i, s.n - i);
                    break;
                }
                if ((rc = list_push_str(r, l, s.p + i, (size_t)(hit - s.p) - i)) < 0)
                    break;
                i = (size_t)(hit - s.p) + sep->n;
                splits++;
            }
        } else {
            for (;;) {
                while (i < s.n) {
                    size_t k = i;
                    if (!jutf8_is_space(jutf8_next(s.p, s.n, &k)))
                        break;
                    i = k;
                }
                if (i >= s.n)
                    break;
                if (maxsplit >= 0 && splits >= maxsplit) {
                    struct jstr rest = str_strip((struct jstr){s.p + i, s.n - i}, NULL, false, true);
                    rc = list_push_str(r, l, rest.p, rest.n);
                    break;
                }
                size_t start = i;
                while (i < s.n) {
                    size_t k = i;
                    if (jutf8_is_space(jutf8_next(s.p, s.n, &k)))
                        break;
                    i = k;
                }
                if ((rc = list_push_str(r, l, s.p + start, i - start)) < 0)
                    break;
                splits++;
            }
        }
    } else {
        /* Collect from the right, then reverse. */
        size_t e = s.n;
        int64_t splits = 0;
        if (sep) {
            for (;;) {
                struct jstr head = {s.p, e};
                const char *hit = (maxsplit < 0 || splits < maxsplit) ? str_rfind(head, *sep) : NULL;
                if (!hit) {
                    rc = list_push_str(r, l, s.p, e);
                    break;
                }
                size_t at = (size_t)(hit - s.p);
                if ((rc = list_push_str(r, l, s.p + at + sep->n, e - at - sep->n)) < 0)
                    break;
                e = at;
                splits++;
            }
        } else {
            struct jstr t = str_strip(s, NULL, false, true);
            e = t.n;
            while (e > 0) {
                if (maxsplit >= 0 && splits >= maxsplit) {
                    struct jstr rest = str_strip((struct jstr){s.p, e}, NULL, true, false);
                    rc = list_push_str(r, l, rest.p, rest.n);
                    break;
                }
                size_t end = e;
                while (e > 0 && !jutf8_is_space((unsigned char)s.p[e - 1]))
                    e--;
                if ((rc = list_push_str(r, l, s.p + e, end - e)) < 0)
                    break;
                splits++;
                while (e > 0 && jutf8_is_space((unsigned char)s.p[e - 1]))
                    e--;
            }
        }
        for (size_t a = 0, b = l->n ? l->n - 1 : 0; a < b; a++, b--) {
            struct jv t = l->items[a];
            l->items[a] = l->items[b];
            l->items[b] = t;
        }
    }
    if (rc < 0)
        return rc;
    *ret = (struct jv){.kind = JV_LIST, .l = l};
    return 0;
}

/* ---- sequences ---- */

/* The items a for loop / list() / join see: list items, dict keys, string
 * characters; undefined is empty. */
static int iterate(struct render *r, const struct jnode *n, struct jv v, struct jlist **ret)
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
        for (size_t i = 0; i < v.d->n; i++)
            l->items[l->n++] = jv_str(v.d->keys[i].p, v.d->keys[i].n);
        *ret = l;
        return 0;
    case JV_STR: {
        if (!(l = jlist_new(r->arena, 0)))
            return -ENOMEM;
        for (size_t i = 0; i < v.s.n;) {
            size_t k = i;
            jutf8_next(v.s.p, v.s.n, &k);
            int rc = list_push_str(r, l, v.s.p + i, k - i);
            if (rc < 0)
                return rc;
            i = k;
        }
        *ret = l;
        return 0;
    }
    default:
        return rerr(r, n, "'%s' object is not iterable", jv_type_name(v));
    }
}

static int64_t length_of(struct jv v, bool *ok)
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

/* Python slice index normalisation. */
static void slice_indices(int64_t len, const struct jv *start, const struct jv *stop, int64_t step, int64_t *ret_start,
                          int64_t *ret_stop)
{
    int64_t lo = step < 0 ? -1 : 0, hi = step < 0 ? len - 1 : len;
    int64_t s, e;
    if (!start || start->kind == JV_NONE || start->kind == JV_UNDEF) {
        s = step < 0 ? hi : lo;
    } else {
        s = int_of(*start);
        if (s < 0)
            s += len;
        s = s < lo ? lo : s > hi ? hi : s;
    }
    if (!stop || stop->kind == JV_NONE || stop->kind == JV_UNDEF) {
        e = step < 0 ? lo : hi;
    } else {
        e = int_of(*stop);
        if (e < 0)
            e += len;
        e = e < lo ? lo : e > hi ? hi : e;
    }
    *ret_start = s;
    *ret_stop = e;
}

static int do_slice(struct render *r, const struct jnode *n, struct jv obj, const struct jv *a, const struct jv *b,
                    const struct jv *c, struct jv *ret)
{
    int64_t step = 1;
    if (c && c->kind != JV_NONE && c->kind != JV_UNDEF) {
        if (!is_int_like(*c))
            return rerr(r, n, "slice step must be an integer");
        step = int_of(*c);
        if (step == 0)
            return rerr(r, n, "slice step cannot be zero");
    }
    for (const struct jv *x = a; x; x = x == a ? b : NULL)
        if (x->kind != JV_NONE && x->kind != JV_UNDEF && !is_int_like(*x))
            return rerr(r, n, "slice indices must be integers or none");
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
        int rc = cp_offsets(r, obj.s, &off, &ncp);
        if (rc < 0)
            return rc;
        int64_t s, e;
        slice_indices((int64_t)ncp, a, b, step, &s, &e);
        if (step == 1) {
            *ret = s < e ? jv_str(obj.s.p + off[s], off[e] - off[s]) : jv_str("", 0);
            return 0;
        }
        struct jbuf buf = new_buf(r);
        for (int64_t i = s; step > 0 ? i < e : i > e; i += step)
            if ((rc = jbuf_put(&buf, obj.s.p + off[i], off[i + 1] - off[i])) < 0)
                return rc;
        return make_str(r, &buf, ret);
    }
    if (obj.kind == JV_UNDEF)
        return undefined_error(r, n, obj);
    return rerr(r, n, "'%s' object is not subscriptable", jv_type_name(obj));
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
static int get_attr(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct jv *ret)
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
        return undefined_error(r, n, obj);
    default:
        *ret = undef_at(n, obj.kind);
        return 0;
    }
}

static int get_item(struct render *r, const struct jnode *n, struct jv obj, struct jv key, struct jv *ret)
{
    if (obj.kind == JV_UNDEF)
        return undefined_error(r, n, obj);
    if ((obj.kind == JV_DICT || obj.kind == JV_NS) && key.kind == JV_STR) {
        struct jv *v = jdict_get(obj.d, key.s.p, key.s.n);
        *ret = v ? *v : undef_at(n, obj.kind);
        return 0;
    }
    if (obj.kind == JV_LOOP && key.kind == JV_STR)
        return loop_attr(r, obj.loop, key.s, ret);
    if ((obj.kind == JV_LIST || obj.kind == JV_STR) && is_int_like(key)) {
        int64_t i = int_of(key);
        if (obj.kind == JV_LIST) {
            int64_t len = (int64_t)obj.l->n;
            if (i < 0)
                i += len;
            *ret = i >= 0 && i < len ? obj.l->items[i] : undef_at(n, obj.kind);
            return 0;
        }
        size_t *off, ncp;
        int rc = cp_offsets(r, obj.s, &off, &ncp);
        if (rc < 0)
            return rc;
        if (i < 0)
            i += (int64_t)ncp;
        *ret = i >= 0 && i < (int64_t)ncp ? jv_str(obj.s.p + off[i], off[i + 1] - off[i])
                                          : undef_at(n, obj.kind);
        return 0;
    }
    *ret = undef_at(n, obj.kind);
    return 0;
}

/* ---- operators ---- */

static int compare_values(struct render *r, const struct jnode *n, int op, struct jv a, struct jv b, bool *ret)
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
                return rerr(r, n, "'in <string>' requires string as left operand, not %s", jv_type_name(a));
            found = str_find(b.s, a.s, 0) != NULL;
        } else if (b.kind == JV_LIST) {
            for (size_t i = 0; i < b.l->n && !found; i++)
                found = jv_equal(a, b.l->items[i]);
        } else if (b.kind == JV_DICT || b.kind == JV_NS) {
            found = a.kind == JV_STR && jdict_get(b.d, a.s.p, a.s.n) != NULL;
        } else if (b.kind != JV_UNDEF) {
            return rerr(r, n, "argument of type '%s' is not iterable", jv_type_name(b));
        }
        *ret = op == JOP_IN ? found : !found;
        return 0;
    }
    default:
        break;
    }
    int c;
    if (is_num(a) && is_num(b)) {
        double x = num_of(a), y = num_of(b);
        if (is_int_like(a) && is_int_like(b))
            c = int_of(a) < int_of(b) ? -1 : int_of(a) > int_of(b);
        else
            c = x < y ? -1 : x > y ? 1 : 0;
    } else if (a.kind == JV_STR && b.kind == JV_STR) {
        size_t m = a.s.n < b.s.n ? a.s.n : b.s.n;
        c = memcmp(a.s.p, b.s.p, m);
        if (c == 0)
            c = a.s.n < b.s.n ? -1 : a.s.n > b.s.n;
    } else {
        if (a.kind == JV_UNDEF)
            return undefined_error(r, n, a);
        if (b.kind == JV_UNDEF)
            return undefined_error(r, n, b);
        return rerr(r, n, "'%s' not supported between instances of '%s' and '%s'",
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
        struct jbuf b = new_buf(r);
        for (int64_t i = 0; i < times; i++) {
            int rc = jbuf_put(&b, seq.s.p, seq.s.n);
            if (rc < 0)
                return rc;
        }
        return make_str(r, &b, ret);
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

/* Python's printf-style `fmt % args` (also the `format` filter): %s %r %d %i
 * %f %e %g %x %o %c %% with flags, width and precision, positional or
 * %(name)s from a dict. */
static int percent_format(struct render *r, const struct jnode *n, struct jstr fmt, struct jv args, struct jv *ret)
{
    struct jbuf b = new_buf(r);
    const struct jv *pos = &args;
    size_t npos = 1, next = 0;
    bool mapping = args.kind == JV_DICT;
    if (args.kind == JV_LIST && args.l->tuple) {
        pos = args.l->items;
        npos = args.l->n;
    }
    int rc = 0;
    for (size_t i = 0; i < fmt.n && rc == 0; i++) {
        if (fmt.p[i] != '%') {
            rc = jbuf_putc(&b, fmt.p[i]);
            continue;
        }
        size_t k = i + 1;
        struct jv v;
        bool have = false;
        if (k < fmt.n && fmt.p[k] == '(') {
            size_t e = k + 1;
            while (e < fmt.n && fmt.p[e] != ')')
                e++;
            if (e >= fmt.n || !mapping)
                return rerr(r, n, "format requires a mapping for %%(name)");
            struct jv *found = jdict_get(args.d, fmt.p + k + 1, e - k - 1);
            if (!found)
                return rerr(r, n, "format: key '%.*s' missing", (int)(e - k - 1), fmt.p + k + 1);
            v = *found;
            have = true;
            k = e + 1;
        }
        char flags[8];
        size_t nf = 0;
        while (k < fmt.n && strchr("-+ 0#", fmt.p[k]) && nf < sizeof(flags) - 1)
            flags[nf++] = fmt.p[k++];
        flags[nf] = '\0';
        int width = 0, prec = -1;
        while (k < fmt.n && fmt.p[k] >= '0' && fmt.p[k] <= '9' && width < 10000)
            width = width * 10 + (fmt.p[k++] - '0');
        if (k < fmt.n && fmt.p[k] == '.') {
            prec = 0;
            k++;
            while (k < fmt.n && fmt.p[k] >= '0' && fmt.p[k] <= '9' && prec < 1000)
                prec = prec * 10 + (fmt.p[k++] - '0');
        }
        if (k >= fmt.n)
            return rerr(r, n, "format: incomplete format");
        char conv = fmt.p[k];
        i = k;
        if (conv == '%') {
            rc = jbuf_putc(&b, '%');
            continue;
        }
        if (!have) {
            if (mapping && npos == 1 && pos == &args) {
                v = args; /* "%s" % {'a': 1} formats the dict itself */
            } else if (next >= npos) {
                return rerr(r, n, "not enough arguments for format string");
            } else {
                v = pos[next];
            }
            next++;
        }
        char cfmt[32], out[512];
        if (conv == 's' || conv == 'r') {
            struct jbuf sb = new_buf(r);
            if ((rc = conv == 's' ? jv_write_str(&sb, v) : jv_write_repr(&sb, v)) < 0)
                return rc;
            size_t len = jutf8_len(sb.p ? sb.p : "", sb.n), bytes = sb.n;
            if (prec >= 0 && (size_t)prec < len) {
                size_t *off, ncp;
                if ((rc = cp_offsets(r, (struct jstr){sb.p, sb.n}, &off, &ncp)) < 0)
                    return rc;
                bytes = off[prec];
                len = (size_t)prec;
            }
            bool left = strchr(flags, '-') != NULL;
            for (size_t p = len; !left && p < (size_t)width && rc == 0; p++)
                rc = jbuf_putc(&b, ' ');
            if (rc == 0 && bytes)
                rc = jbuf_put(&b, sb.p, bytes);
            for (size_t p = len; left && p < (size_t)width && rc == 0; p++)
                rc = jbuf_putc(&b, ' ');
            continue;
        }
        if (!is_num(v))
            return rerr(r, n, "%%%c format: a number is required, not %s", conv, jv_type_name(v));
        int len;
        if (conv == 'd' || conv == 'i' || conv == 'x' || conv == 'X' || conv == 'o' || conv == 'c') {
            const char *lc = conv == 'i' || conv == 'd' ? "lld" : conv == 'x' ? "llx" : conv == 'X' ? "llX" : conv == 'o' ? "llo" : "c";
            if (conv == 'c') {
                int64_t cp = int_of(v);
                if (cp < 0 || cp > 0x10ffff)
                    return rerr(r, n, "%%c arg not in range(0x110000)");
                rc = jutf8_put(&b, (int32_t)cp);
                continue;
            }
            snprintf(cfmt, sizeof(cfmt), "%%%s%d%s", flags, width, lc);
            len = snprintf(out, sizeof(out), cfmt, (long long)int_of(v));
        } else if (strchr("fFeEgG", conv)) {
            snprintf(cfmt, sizeof(cfmt), "%%%s%d.%d%c", flags, width, prec < 0 ? 6 : prec, conv);
            len = snprintf(out, sizeof(out), cfmt, num_of(v));
        } else {
            return rerr(r, n, "format: unsupported conversion '%%%c'", conv);
        }
        if (len < 0 || (size_t)len >= sizeof(out))
            return rerr(r, n, "format: field too wide");
        rc = jbuf_put(&b, out, (size_t)len);
    }
    if (rc < 0)
        return rc;
    if (!mapping && next < npos)
        return rerr(r, n, "not all arguments converted during string formatting");
    return make_str(r, &b, ret);
}

static int binop(struct render *r, const struct jnode *n, int op, struct jv a, struct jv b, struct jv *ret)
{
    if (a.kind == JV_UNDEF)
        return undefined_error(r, n, a);
    if (b.kind == JV_UNDEF)
        return undefined_error(r, n, b);
    if (is_num(a) && is_num(b)) {
        bool ints = is_int_like(a) && is_int_like(b);
        int64_t x = int_of(a), y = int_of(b), z;
        double fx = num_of(a), fy = num_of(b);
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
                return rerr(r, n, "integer overflow");
            *ret = jv_int(z);
            return 0;
        case JOP_DIV:
            if (fy == 0)
                return rerr(r, n, "division by zero");
            *ret = jv_float(fx / fy);
            return 0;
        case JOP_FLOORDIV:
        case JOP_MOD:
            if (ints) {
                if (y == 0)
                    return rerr(r, n, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1)
                    return rerr(r, n, "integer overflow");
                int64_t q = x / y, m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) {
                    q--;
                    m += y;
                }
                *ret = jv_int(op == JOP_FLOORDIV ? q : m);
            } else {
                if (fy == 0)
                    return rerr(r, n, "float division by zero");
                double q = floor(fx / fy);
                *ret = jv_float(op == JOP_FLOORDIV ? q : fx - q * fy);
            }
            return 0;
        case JOP_POW:
            if (ints && y >= 0) {
                int64_t acc = 1;
                for (int64_t k = 0; k < y; k++) {
                    if (__builtin_mul_overflow(acc, x, &acc))
                        return rerr(r, n, "integer overflow");
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
        struct jbuf buf = new_buf(r);
        int rc = jbuf_put(&buf, a.s.p, a.s.n);
        if (rc == 0)
            rc = jbuf_put(&buf, b.s.p, b.s.n);
        if (rc < 0)
            return rc;
        return make_str(r, &buf, ret);
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
    if (op == JOP_MOD && a.kind == JV_STR)
        return percent_format(r, n, a.s, b, ret);
    if (op == JOP_MUL && (a.kind == JV_STR || a.kind == JV_LIST) && is_int_like(b))
        return repeat(r, a, int_of(b), ret);
    if (op == JOP_MUL && (b.kind == JV_STR || b.kind == JV_LIST) && is_int_like(a))
        return repeat(r, b, int_of(a), ret);
    if (op == JOP_ADD && (a.kind == JV_STR || b.kind == JV_STR))
        return rerr(r, n, "can only concatenate str (not \"%s\") to str",
                    jv_type_name(a.kind == JV_STR ? b : a));
    return rerr(r, n, "unsupported operand type(s) for %s: '%s' and '%s'", op_symbol(op), jv_type_name(a),
                jv_type_name(b));
}

/* ---- macros ---- */

static int capture(struct render *r, const struct jnode *body, struct frame *f, struct jstr *ret)
{
    struct jbuf *saved = r->out;
    struct jbuf b = new_buf(r);
    r->out = &b;
    int rc = exec_body(r, body, f);
    r->out = saved;
    if (rc < 0)
        return rc;
    *ret = (struct jstr){b.p ? b.p : "", b.n};
    return 0;
}

static int call_macro(struct render *r, const struct jnode *n, struct jmacro *m, struct args *a, struct jmacro *caller,
                      struct jv *ret)
{
    const struct jnode *def = m->def;
    if (r->call_depth >= RENDER_MAX_CALL_DEPTH)
        return rerr(r, n, "macro calls nested deeper than %d", RENDER_MAX_CALL_DEPTH);
    if (a->npos > def->nnames)
        return rerr(r, n, "macro '%.*s' takes not more than %u argument(s)", (int)def->name.n, def->name.p,
                    def->nnames);
    struct frame *f = frame_new(r, m->closure);
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
        if (!given && def->kids2[i] && (rc = eval(r, def->kids2[i], f, &v)) < 0)
            return rc;
        if ((rc = frame_set(r, f, def->names[i], v)) < 0)
            return rc;
    }
    for (size_t k = 0; k < a->nkw; k++) {
        bool known = false;
        for (uint32_t i = 0; i < def->nnames; i++)
            known |= a->kwn[k].n == def->names[i].n && memcmp(a->kwn[k].p, def->names[i].p, a->kwn[k].n) == 0;
        if (!known)
            return rerr(r, n, "macro '%.*s' has no parameter named '%.*s'", (int)def->name.n, def->name.p,
                        (int)a->kwn[k].n, a->kwn[k].p);
    }
    if (caller && (rc = frame_set(r, f, (struct jstr){"caller", 6}, (struct jv){.kind = JV_MACRO, .m = caller})) < 0)
        return rc;
    r->call_depth++;
    struct jstr text;
    rc = capture(r, def->b, f, &text);
    r->call_depth--;
    if (rc < 0)
        return rc;
    *ret = jv_str(text.p, text.n);
    return 0;
}

/* ---- filters ---- */

typedef int (*filter_fn)(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret);

static int apply_filter(struct render *r, const struct jnode *n, struct jstr name, struct jv in, struct args *a,
                        struct jv *ret);
static int apply_test(struct render *r, const struct jnode *n, struct jstr name, struct jv in, struct args *a,
                      bool *ret);

static int f_trim(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s;
    int rc = to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jv *chars = arg_get(a, 0, "chars");
    struct jstr cs;
    if (chars && chars->kind != JV_NONE && (rc = need_str(r, n, *chars, "trim(chars)", &cs)) < 0)
        return rc;
    struct jstr t = str_strip(s, chars && chars->kind != JV_NONE ? &cs : NULL, true, true);
    *ret = jv_str(t.p, t.n);
    return 0;
}

static int f_tojson(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jv *ind = arg_get(a, 0, "indent");
    int indent = -1;
    if (ind && ind->kind != JV_NONE) {
        if (!is_int_like(*ind) || int_of(*ind) < 0 || int_of(*ind) > 64)
            return rerr(r, n, "tojson: indent must be an integer from 0 to 64");
        indent = (int)int_of(*ind);
    }
    struct jbuf b = new_buf(r);
    const char *bad = NULL;
    int rc = jv_write_json(&b, in, indent, &bad);
    if (rc == -EINVAL)
        return rerr(r, n, "tojson: Object of type %s is not JSON serializable", bad ? bad : "?");
    if (rc < 0)
        return rc;
    return make_str(r, &b, ret);
}

static int f_length(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    bool ok;
    int64_t len = length_of(in, &ok);
    if (!ok)
        return rerr(r, n, "object of type '%s' has no len()", jv_type_name(in));
    *ret = jv_int(len);
    return 0;
}

static int f_default(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jv *def = arg_get(a, 0, "default_value");
    struct jv *boolean = arg_get(a, 1, "boolean");
    bool use = in.kind == JV_UNDEF || (boolean && jv_truthy(*boolean) && !jv_truthy(in));
    *ret = use ? (def ? *def : jv_str("", 0)) : in;
    return 0;
}

static int f_case(struct render *r, const struct jnode *n, struct jv in, enum case_map how, struct jv *ret)
{
    struct jstr s;
    int rc = to_str(r, in, &s);
    return rc < 0 ? rc : str_case(r, s, how, ret);
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

static int f_items(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    if (in.kind == JV_UNDEF) {
        struct jlist *l = jlist_new(r->arena, 0);
        if (!l)
            return -ENOMEM;
        *ret = (struct jv){.kind = JV_LIST, .l = l};
        return 0;
    }
    if (in.kind != JV_DICT && in.kind != JV_NS)
        return rerr(r, n, "items: can only get item pairs from a mapping, not %s", jv_type_name(in));
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
            rc = get_item(r, n, v, jv_int(strtoll(part.p, NULL, 10)), &v);
        else
            rc = get_item(r, n, v, jv_str(part.p, part.n), &v);
        if (rc < 0)
            return rc;
        i = e + 1;
    }
    *ret = v;
    return 0;
}

static int attr_arg(struct render *r, const struct jnode *n, struct args *a, size_t pos, struct jstr *ret, bool *has)
{
    struct jv *at = arg_get(a, pos, "attribute");
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
    return need_str(r, n, *at, "attribute", ret);
}

static int f_join(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jv *sepv = arg_get(a, 0, "d");
    struct jstr sep = {"", 0}, path;
    bool has_attr;
    int rc;
    if (sepv && (rc = to_str(r, *sepv, &sep)) < 0)
        return rc;
    if ((rc = attr_arg(r, n, a, 1, &path, &has_attr)) < 0)
        return rc;
    struct jlist *l;
    if ((rc = iterate(r, n, in, &l)) < 0)
        return rc;
    struct jbuf b = new_buf(r);
    for (size_t i = 0; i < l->n; i++) {
        struct jv item = l->items[i];
        if (has_attr && (rc = lookup_path(r, n, item, path, &item)) < 0)
            return rc;
        if (i && (rc = jbuf_put(&b, sep.p, sep.n)) < 0)
            return rc;
        if ((rc = jv_write_str(&b, item)) < 0)
            return rc;
    }
    return make_str(r, &b, ret);
}

static int f_string(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s;
    int rc = to_str(r, in, &s);
    if (rc == 0)
        *ret = jv_str(s.p, s.n);
    return rc;
}

static int f_first_last(struct render *r, const struct jnode *n, struct jv in, bool last, struct jv *ret)
{
    struct jlist *l;
    int rc = iterate(r, n, in, &l);
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
    int rc = iterate(r, n, in, &l);
    return rc < 0 ? rc : copy_list(r, l, ret);
}

static int f_reverse(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    if (in.kind == JV_STR) {
        struct jv step = jv_int(-1);
        return do_slice(r, n, in, NULL, NULL, &step, ret);
    }
    struct jlist *l;
    int rc = iterate(r, n, in, &l);
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
    int rc = iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jlist *o = jlist_new(r->arena, l->n);
    if (!o)
        return -ENOMEM;
    struct jv *attr = arg_get(a, (size_t)-1, "attribute");
    if (attr) {
        struct jv *def = arg_get(a, (size_t)-1, "default");
        struct jstr path;
        if ((rc = need_str(r, n, *attr, "map(attribute=)", &path)) < 0)
            return rc;
        for (size_t i = 0; i < l->n; i++) {
            struct jv v;
            if ((rc = lookup_path(r, n, l->items[i], path, &v)) < 0)
                return rc;
            o->items[o->n++] = v.kind == JV_UNDEF && def ? *def : v;
        }
    } else {
        if (a->npos < 1 || a->pos[0].kind != JV_STR)
            return rerr(r, n, "map: expects a filter name or attribute=");
        struct args rest = {a->pos + 1, a->npos - 1, a->kwn, a->kwv, a->nkw};
        for (size_t i = 0; i < l->n; i++)
            if ((rc = apply_filter(r, n, a->pos[0].s, l->items[i], &rest, &o->items[o->n++])) < 0)
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
    int rc = iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    size_t ai = 0;
    struct jstr path = {0};
    if (by_attr) {
        if (a->npos < 1 || a->pos[0].kind != JV_STR)
            return rerr(r, n, "selectattr/rejectattr: expects an attribute name");
        path = a->pos[0].s;
        ai = 1;
    }
    struct jstr test = {0};
    bool has_test = a->npos > ai;
    if (has_test && (rc = need_str(r, n, a->pos[ai], "test name", &test)) < 0)
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
            if ((rc = apply_test(r, n, test, v, &targs, &t)) < 0)
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
    int rc = to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jv *o = arg_get(a, 0, "old"), *nw = arg_get(a, 1, "new"), *c = arg_get(a, 2, "count");
    if (!o || !nw)
        return rerr(r, n, "replace: expects old and new strings");
    if ((rc = to_str(r, *o, &old)) < 0 || (rc = to_str(r, *nw, &new)) < 0)
        return rc;
    return str_replace(r, s, old, new, c && c->kind != JV_NONE ? int_of(*c) : -1, ret);
}

static int f_int(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jv *def = arg_get(a, 0, "default");
    int64_t d = def ? int_of(*def) : 0;
    if (is_int_like(in)) {
        *ret = jv_int(int_of(in));
    } else if (in.kind == JV_FLOAT) {
        *ret = isfinite(in.f) && fabs(in.f) < 9.2e18 ? jv_int((int64_t)in.f) : jv_int(d);
    } else if (in.kind == JV_STR) {
        char tmp[64];
        struct jstr s = str_strip(in.s, NULL, true, true);
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
    struct jv *def = arg_get(a, 0, "default");
    double d = def && is_num(*def) ? num_of(*def) : 0.0;
    if (is_num(in)) {
        *ret = jv_float(num_of(in));
    } else if (in.kind == JV_STR) {
        char tmp[64];
        struct jstr s = str_strip(in.s, NULL, true, true);
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
    if (is_int_like(in)) {
        if (int_of(in) == INT64_MIN)
            return rerr(r, n, "integer overflow");
        *ret = jv_int(llabs(int_of(in)));
    } else if (in.kind == JV_FLOAT) {
        *ret = jv_float(fabs(in.f));
    } else {
        return rerr(r, n, "bad operand type for abs(): '%s'", jv_type_name(in));
    }
    return 0;
}

static int f_round(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    if (!is_num(in))
        return rerr(r, n, "round: expects a number, got %s", jv_type_name(in));
    struct jv *pv = arg_get(a, 0, "precision"), *mv = arg_get(a, 1, "method");
    int64_t prec = pv ? int_of(*pv) : 0;
    if (prec < -20 || prec > 20)
        return rerr(r, n, "round: precision out of range");
    double x = num_of(in), scale = pow(10.0, (double)prec), v;
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
        return rerr(r, n, "round: method must be common, ceil or floor");
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
    int rc = to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jbuf b = new_buf(r);
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
    return rc < 0 ? rc : make_str(r, &b, ret);
}

static int f_indent(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s, ind;
    int rc = to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jv *w = arg_get(a, 0, "width"), *first = arg_get(a, 1, "first"), *blank = arg_get(a, 2, "blank");
    char spaces[101];
    if (w && w->kind == JV_STR) {
        ind = w->s;
    } else {
        int64_t width = w ? int_of(*w) : 4;
        if (width < 0 || width > 100)
            return rerr(r, n, "indent: width must be from 0 to 100");
        memset(spaces, ' ', (size_t)width);
        ind = (struct jstr){spaces, (size_t)width};
    }
    bool do_first = first && jv_truthy(*first), do_blank = blank && jv_truthy(*blank);
    struct jbuf b = new_buf(r);
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
    return rc < 0 ? rc : make_str(r, &b, ret);
}

static int f_truncate(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s, end = {"...", 3};
    int rc = to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jv *lv = arg_get(a, 0, "length"), *kw = arg_get(a, 1, "killwords"), *ev = arg_get(a, 2, "end"),
              *lw = arg_get(a, 3, "leeway");
    int64_t length = lv ? int_of(*lv) : 255, leeway = lw && lw->kind != JV_NONE ? int_of(*lw) : 5;
    if (ev && (rc = to_str(r, *ev, &end)) < 0)
        return rc;
    size_t *off, ncp;
    if ((rc = cp_offsets(r, s, &off, &ncp)) < 0)
        return rc;
    int64_t end_len = (int64_t)jutf8_len(end.p, end.n);
    if (length < end_len || leeway < 0)
        return rerr(r, n, "truncate: length must be at least the end's length, leeway non-negative");
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
    struct jbuf b = new_buf(r);
    if ((rc = jbuf_put(&b, head.p, head.n)) < 0 || (rc = jbuf_put(&b, end.p, end.n)) < 0)
        return rc;
    return make_str(r, &b, ret);
}

static int f_wordcount(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s;
    int rc = to_str(r, in, &s);
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
    if (is_num(a) && is_num(b)) {
        double x = num_of(a), y = num_of(b);
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
        return rerr(r, n, "sort: values of different types cannot be ordered");
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
    int rc = iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jv *rev = arg_get(a, 0, "reverse"), *cs = arg_get(a, 1, "case_sensitive");
    struct jstr path;
    bool has_attr;
    if ((rc = attr_arg(r, n, a, 2, &path, &has_attr)) < 0)
        return rc;
    return sort_list(r, n, l, has_attr ? &path : NULL, rev && jv_truthy(*rev), cs && jv_truthy(*cs), ret);
}

static int f_dictsort(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jv items;
    int rc = f_items(r, n, in, a, &items);
    if (rc < 0)
        return rc;
    struct jv *cs = arg_get(a, 0, "case_sensitive"), *by = arg_get(a, 1, "by"), *rev = arg_get(a, 2, "reverse");
    struct jstr path = {"0", 1};
    if (by && by->kind == JV_STR && jstr_eq(by->s, "value"))
        path = (struct jstr){"1", 1};
    else if (by && !(by->kind == JV_STR && jstr_eq(by->s, "key")))
        return rerr(r, n, "dictsort: 'by' must be 'key' or 'value'");
    return sort_list(r, n, items.l, &path, rev && jv_truthy(*rev), cs && jv_truthy(*cs), ret);
}

static int f_unique(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jlist *l;
    int rc = iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jv *cs = arg_get(a, 0, "case_sensitive");
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
        if (!case_sensitive && k.kind == JV_STR && (rc = str_case(r, k.s, CASE_LOWER, &k)) < 0)
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
    int rc = iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jv *sz = arg_get(a, 0, "linecount"), *fill = arg_get(a, 1, "fill_with");
    if (!sz || !is_int_like(*sz) || int_of(*sz) <= 0)
        return rerr(r, n, "batch: expects a positive size");
    size_t size = (size_t)int_of(*sz);
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
    int rc = iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jstr path;
    bool has_attr;
    if ((rc = attr_arg(r, n, a, 0, &path, &has_attr)) < 0)
        return rc;
    struct jv *start = arg_get(a, 1, "start");
    struct jv acc = start ? *start : jv_int(0);
    for (size_t i = 0; i < l->n; i++) {
        struct jv v = l->items[i];
        if (has_attr && (rc = lookup_path(r, n, v, path, &v)) < 0)
            return rc;
        if ((rc = binop(r, n, JOP_ADD, acc, v, &acc)) < 0)
            return rc;
    }
    *ret = acc;
    return 0;
}

static int f_minmax(struct render *r, const struct jnode *n, struct jv in, struct args *a, bool max, struct jv *ret)
{
    struct jlist *l;
    int rc = iterate(r, n, in, &l);
    if (rc < 0)
        return rc;
    struct jv *cs = arg_get(a, 0, "case_sensitive");
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
    int rc = to_str(r, in, &fmt);
    if (rc < 0)
        return rc;
    if (a->npos && a->nkw)
        return rerr(r, n, "format: can't handle positional and keyword arguments at the same time");
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
    return percent_format(r, n, fmt, args, ret);
}

static int f_center(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret)
{
    struct jstr s;
    int rc = to_str(r, in, &s);
    if (rc < 0)
        return rc;
    struct jv *w = arg_get(a, 0, "width");
    int64_t width = w ? int_of(*w) : 80, len = (int64_t)jutf8_len(s.p, s.n);
    if (width > 10000)
        return rerr(r, n, "center: width too large");
    struct jbuf b = new_buf(r);
    int64_t pad = width > len ? width - len : 0;
    /* Python's str.center puts the odd space on the right unless len is odd. */
    int64_t left = pad / 2 + (pad & width & 1);
    for (int64_t i = 0; i < left && rc == 0; i++)
        rc = jbuf_putc(&b, ' ');
    if (rc == 0)
        rc = jbuf_put(&b, s.p, s.n);
    for (int64_t i = left; i < pad && rc == 0; i++)
        rc = jbuf_putc(&b, ' ');
    return rc < 0 ? rc : make_str(r, &b, ret);
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
    {"items", f_items},
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

static int apply_filter(struct render *r, const struct jnode *n, struct jstr name, struct jv in, struct args *a,
                        struct jv *ret)
{
    filter_fn fn = find_filter(name);
    if (!fn)
        return rerr(r, n, "unknown filter '%.*s'", (int)name.n, name.p);
    return fn(r, n, in, a, ret);
}

/* ---- tests ---- */

static int apply_test(struct render *r, const struct jnode *n, struct jstr name, struct jv v, struct args *a, bool *ret)
{
    struct jv *arg = arg_get(a, 0, NULL);
    if (jstr_eq(name, "defined")) {
        *ret = v.kind != JV_UNDEF;
    } else if (jstr_eq(name, "undefined")) {
        *ret = v.kind == JV_UNDEF;
    } else if (jstr_eq(name, "none")) {
        *ret = v.kind == JV_NONE;
    } else if (jstr_eq(name, "string")) {
        *ret = v.kind == JV_STR;
    } else if (jstr_eq(name, "number")) {
        *ret = is_num(v);
    } else if (jstr_eq(name, "integer")) {
        *ret = v.kind == JV_INT;
    } else if (jstr_eq(name, "float")) {
        *ret = v.kind == JV_FLOAT;
    } else if (jstr_eq(name, "boolean")) {
        *ret = v.kind == JV_BOOL;
    } else if (jstr_eq(name, "true")) {
        *ret = v.kind == JV_BOOL && v.b;
    } else if (jstr_eq(name, "false")) {
        *ret = v.kind == JV_BOOL && !v.b;
    } else if (jstr_eq(name, "mapping")) {
        *ret = v.kind == JV_DICT;
    } else if (jstr_eq(name, "iterable")) {
        *ret = v.kind == JV_LIST || v.kind == JV_DICT || v.kind == JV_STR || v.kind == JV_UNDEF;
    } else if (jstr_eq(name, "sequence")) {
        *ret = v.kind == JV_LIST || v.kind == JV_DICT || v.kind == JV_STR;
    } else if (jstr_eq(name, "callable")) {
        *ret = v.kind == JV_MACRO || v.kind == JV_FUNC;
    } else if (jstr_eq(name, "odd") || jstr_eq(name, "even")) {
        if (!is_int_like(v))
            return rerr(r, n, "test '%.*s' expects an integer", (int)name.n, name.p);
        *ret = (int_of(v) % 2 != 0) == jstr_eq(name, "odd");
    } else if (jstr_eq(name, "divisibleby")) {
        if (!is_int_like(v) || !arg || !is_int_like(*arg) || int_of(*arg) == 0)
            return rerr(r, n, "test 'divisibleby' expects integers and a non-zero divisor");
        *ret = int_of(*arg) == -1 || int_of(v) % int_of(*arg) == 0;
    } else if (jstr_eq(name, "lower") || jstr_eq(name, "upper")) {
        struct jv conv;
        if (v.kind != JV_STR) {
            *ret = false;
            return 0;
        }
        int rc = str_case(r, v.s, jstr_eq(name, "lower") ? CASE_LOWER : CASE_UPPER, &conv);
        if (rc < 0)
            return rc;
        *ret = jv_equal(v, conv);
    } else if (jstr_eq(name, "sameas")) {
        if (!arg)
            return rerr(r, n, "test 'sameas' needs an argument");
        *ret = v.kind == arg->kind && (v.kind == JV_NONE || v.kind == JV_UNDEF ? true : jv_equal(v, *arg)) &&
               (v.kind != JV_LIST || v.l == arg->l) && (v.kind != JV_DICT || v.d == arg->d);
    } else {
        int op = jstr_eq(name, "equalto") || jstr_eq(name, "eq") ? JOP_EQ
               : jstr_eq(name, "ne") ? JOP_NE
               : jstr_eq(name, "lt") || jstr_eq(name, "lessthan") ? JOP_LT
               : jstr_eq(name, "le") ? JOP_LE
               : jstr_eq(name, "gt") || jstr_eq(name, "greaterthan") ? JOP_GT
               : jstr_eq(name, "ge") ? JOP_GE
               : jstr_eq(name, "in") ? JOP_IN : 0;
        if (!op)
            return rerr(r, n, "unknown test '%.*s'", (int)name.n, name.p);
        if (!arg)
            return rerr(r, n, "test '%.*s' needs an argument", (int)name.n, name.p);
        return compare_values(r, n, op, v, *arg, ret);
    }
    return 0;
}

/* ---- methods ---- */

enum method_result { METHOD_NONE = 0, METHOD_DONE = 1 };

/* Python str methods. Returns METHOD_NONE when `name` is not one. */
static int str_method(struct render *r, const struct jnode *n, struct jstr s, struct jstr name, struct args *a,
                      struct jv *ret)
{
    struct jv *a0 = arg_get(a, 0, NULL), *a1 = arg_get(a, 1, NULL);
    int rc;
    if (jstr_eq(name, "startswith") || jstr_eq(name, "endswith")) {
        bool ends = name.p[0] == 'e';
        if (!a0)
            return rerr(r, n, "%.*s() takes at least 1 argument", (int)name.n, name.p);
        bool hit = false;
        size_t count = a0->kind == JV_LIST ? a0->l->n : 1;
        for (size_t i = 0; i < count && !hit; i++) {
            struct jv p = a0->kind == JV_LIST ? a0->l->items[i] : *a0;
            if (p.kind != JV_STR)
                return rerr(r, n, "%.*s() expects a string or a tuple of strings", (int)name.n, name.p);
            hit = p.s.n <= s.n && memcmp(ends ? s.p + s.n - p.s.n : s.p, p.s.p, p.s.n) == 0;
        }
        *ret = jv_bool(hit);
        return METHOD_DONE;
    }
    if (jstr_eq(name, "split") || jstr_eq(name, "rsplit")) {
        struct jv *sep = arg_get(a, 0, "sep"), *maxs = arg_get(a, 1, "maxsplit");
        struct jstr sp;
        if (sep && sep->kind != JV_NONE && (rc = need_str(r, n, *sep, "split(sep)", &sp)) < 0)
            return rc;
        rc = str_split(r, n, s, sep && sep->kind != JV_NONE ? &sp : NULL, maxs ? int_of(*maxs) : -1,
                       name.p[0] == 'r', ret);
        return rc < 0 ? rc : METHOD_DONE;
    }
    if (jstr_eq(name, "strip") || jstr_eq(name, "lstrip") || jstr_eq(name, "rstrip")) {
        struct jstr cs;
        if (a0 && a0->kind != JV_NONE && (rc = need_str(r, n, *a0, "strip(chars)", &cs)) < 0)
            return rc;
        struct jstr t = str_strip(s, a0 && a0->kind != JV_NONE ? &cs : NULL, name.p[0] != 'r', name.p[0] != 'l');
        *ret = jv_str(t.p, t.n);
        return METHOD_DONE;
    }
    if (jstr_eq(name, "replace")) {
        struct jstr old, new;
        struct jv *c = arg_get(a, 2, "count");
        if (!a0 || !a1 || (rc = need_str(r, n, *a0, "replace(old)", &old)) < 0 ||
            (rc = need_str(r, n, *a1, "replace(new)", &new)) < 0)
            return a0 && a1 ? rc : rerr(r, n, "replace() takes 2 arguments");
        rc = str_replace(r, s, old, new, c ? int_of(*c) : -1, ret);
        return rc < 0 ? rc : METHOD_DONE;
    }
    if (jstr_eq(name, "upper") || jstr_eq(name, "lower") || jstr_eq(name, "title") || jstr_eq(name, "capitalize")) {
        enum case_map how = name.p[0] == 'u' ? CASE_UPPER : name.p[0] == 'l' ? CASE_LOWER
                          : name.p[0] == 't' ? CASE_TITLE_PY : CASE_CAPITALIZE;
        rc = str_case(r, s, how, ret);
        return rc < 0 ? rc : METHOD_DONE;
    }
    if (jstr_eq(name, "find") || jstr_eq(name, "rfind") || jstr_eq(name, "index") || jstr_eq(name, "count")) {
        struct jstr sub;
        if (!a0 || (rc = need_str(r, n, *a0, "argument", &sub)) < 0)
            return a0 ? rc : rerr(r, n, "%.*s() takes at least 1 argument", (int)name.n, name.p);
        if (jstr_eq(name, "count")) {
            int64_t count = 0;
            if (sub.n == 0) {
                count = (int64_t)jutf8_len(s.p, s.n) + 1;
            } else {
                for (const char *h = str_find(s, sub, 0); h; h = str_find(s, sub, (size_t)(h - s.p) + sub.n))
                    count++;
            }
            *ret = jv_int(count);
            return METHOD_DONE;
        }
        const char *hit = jstr_eq(name, "rfind") ? str_rfind(s, sub) : str_find(s, sub, 0);
        if (!hit && jstr_eq(name, "index"))
            return rerr(r, n, "substring not found");
        *ret = jv_int(hit ? (int64_t)jutf8_len(s.p, (size_t)(hit - s.p)) : -1);
        return METHOD_DONE;
    }
    if (jstr_eq(name, "join")) {
        if (!a0)
            return rerr(r, n, "join() takes 1 argument");
        struct jlist *l;
        if ((rc = iterate(r, n, *a0, &l)) < 0)
            return rc;
        struct jbuf b = new_buf(r);
        for (size_t i = 0; i < l->n; i++) {
            if (l->items[i].kind != JV_STR)
                return rerr(r, n, "join(): sequence item %zu: expected str, got %s", i, jv_type_name(l->items[i]));
            if ((i && (rc = jbuf_put(&b, s.p, s.n)) < 0) || (rc = jbuf_put(&b, l->items[i].s.p, l->items[i].s.n)) < 0)
                return rc;
        }
        make_str(r, &b, ret);
        return METHOD_DONE;
    }
    if (jstr_eq(name, "splitlines")) {
        struct jlist *l = jlist_new(r->arena, 0);
        if (!l)
            return -ENOMEM;
        for (size_t i = 0; i < s.n;) {
            size_t e = i;
            while (e < s.n && s.p[e] != '\n' && s.p[e] != '\r')
                e++;
            if ((rc = list_push_str(r, l, s.p + i, e - i)) < 0)
                return rc;
            if (e < s.n && s.p[e] == '\r' && e + 1 < s.n && s.p[e + 1] == '\n')
                e++;
            i = e + 1;
        }
        *ret = (struct jv){.kind = JV_LIST, .l = l};
        return METHOD_DONE;
    }
    if (jstr_eq(name, "isdigit") || jstr_eq(name, "isalpha") || jstr_eq(name, "isalnum") ||
        jstr_eq(name, "isspace") || jstr_eq(name, "isupper") || jstr_eq(name, "islower")) {
        bool all = s.n > 0, any_cased = false;
        for (size_t i = 0; i < s.n && all;) {
            int32_t cp = jutf8_next(s.p, s.n, &i);
            utf8proc_category_t c = utf8proc_category(cp);
            bool alpha = c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
            bool digit = c == UTF8PROC_CATEGORY_ND;
            bool upper = utf8proc_tolower(cp) != cp, lower = utf8proc_toupper(cp) != cp;
            any_cased |= upper || lower;
            switch (name.p[2]) {
            case 'd': all = digit; break;
            case 'a': all = name.n == 7 ? alpha : alpha || digit; break;
            case 's': all = jutf8_is_space(cp); break;
            case 'u': all = !lower; break;
            case 'l': all = !upper; break;
            }
        }
        if (name.p[2] == 'u' || name.p[2] == 'l')
            all = all && any_cased;
        *ret = jv_bool(all);
        return METHOD_DONE;
    }
    if (jstr_eq(name, "format")) {
        /* "{}" / "{0}" / "{name}" with str() of the argument. */
        struct jbuf b = new_buf(r);
        size_t auto_idx = 0;
        for (size_t i = 0; i < s.n; i++) {
            char c = s.p[i];
            if ((c == '{' || c == '}') && i + 1 < s.n && s.p[i + 1] == c) {
                if ((rc = jbuf_putc(&b, c)) < 0)
                    return rc;
                i++;
                continue;
            }
            if (c != '{') {
                if ((rc = jbuf_putc(&b, c)) < 0)
                    return rc;
                continue;
            }
            size_t e = i + 1;
            while (e < s.n && s.p[e] != '}')
                e++;
            if (e >= s.n)
                return rerr(r, n, "format(): single '{' encountered");
            struct jstr field = {s.p + i + 1, e - i - 1};
            struct jv *v = NULL;
            if (field.n == 0) {
                v = auto_idx < a->npos ? &a->pos[auto_idx] : NULL;
                auto_idx++;
            } else if (field.p[0] >= '0' && field.p[0] <= '9') {
                size_t idx = (size_t)strtoul(field.p, NULL, 10);
                v = idx < a->npos ? &a->pos[idx] : NULL;
            } else {
                for (size_t k = 0; k < a->nkw; k++)
                    if (a->kwn[k].n == field.n && memcmp(a->kwn[k].p, field.p, field.n) == 0)
                        v = &a->kwv[k];
            }
            if (!v)
                return rerr(r, n, "format(): no argument for '{%.*s}'", (int)field.n, field.p);
            if ((rc = jv_write_str(&b, *v)) < 0)
                return rc;
            i = e;
        }
        make_str(r, &b, ret);
        return METHOD_DONE;
    }
    return METHOD_NONE;
}

static int dict_method(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                       struct jv *ret)
{
    struct jdict *d = obj.d;
    int rc;
    if (jstr_eq(name, "items")) {
        rc = f_items(r, n, obj, a, ret);
        return rc < 0 ? rc : METHOD_DONE;
    }
    if (jstr_eq(name, "keys") || jstr_eq(name, "values")) {
        struct jlist *l = jlist_new(r->arena, d->n);
        if (!l)
            return -ENOMEM;
        for (size_t i = 0; i < d->n; i++)
            l->items[i] = name.p[0] == 'k' ? jv_str(d->keys[i].p, d->keys[i].n) : d->vals[i];
        l->n = d->n;
        *ret = (struct jv){.kind = JV_LIST, .l = l};
        return METHOD_DONE;
    }
    if (jstr_eq(name, "get")) {
        struct jv *k = arg_get(a, 0, NULL), *def = arg_get(a, 1, NULL);
        if (!k)
            return rerr(r, n, "get() takes at least 1 argument");
        struct jv *v = k->kind == JV_STR ? jdict_get(d, k->s.p, k->s.n) : NULL;
        *ret = v ? *v : def ? *def : jv_none();
        return METHOD_DONE;
    }
    return METHOD_NONE;
}

static int list_method(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
                       struct jv *ret)
{
    struct jlist *l = obj.l;
    struct jv *a0 = arg_get(a, 0, NULL);
    int rc;
    if (jstr_eq(name, "append")) {
        if (!a0)
            return rerr(r, n, "append() takes exactly one argument");
        if (l->tuple)
            return rerr(r, n, "'tuple' object has no attribute 'append'");
        if ((rc = jlist_push(r->arena, l, *a0)) < 0)
            return rc;
        *ret = jv_none();
        return METHOD_DONE;
    }
    if (jstr_eq(name, "pop")) {
        if (l->tuple || l->n == 0)
            return rerr(r, n, "pop from empty list");
        int64_t i = a0 ? int_of(*a0) : -1;
        if (i < 0)
            i += (int64_t)l->n;
        if (i < 0 || i >= (int64_t)l->n)
            return rerr(r, n, "pop index out of range");
        *ret = l->items[i];
        memmove(l->items + i, l->items + i + 1, (l->n - (size_t)i - 1) * sizeof(struct jv));
        l->n--;
        return METHOD_DONE;
    }
    if (jstr_eq(name, "index") || jstr_eq(name, "count")) {
        if (!a0)
            return rerr(r, n, "%.*s() takes exactly one argument", (int)name.n, name.p);
        int64_t count = 0, first = -1;
        for (size_t i = 0; i < l->n; i++)
            if (jv_equal(l->items[i], *a0)) {
                if (first < 0)
                    first = (int64_t)i;
                count++;
            }
        if (name.p[0] == 'i' && first < 0)
            return rerr(r, n, "value is not in list");
        *ret = jv_int(name.p[0] == 'i' ? first : count);
        return METHOD_DONE;
    }
    return METHOD_NONE;
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
            return rerr(r, n, "range expected 1 to 3 arguments, got %zu", a->npos);
        for (size_t i = 0; i < a->npos; i++) {
            if (!is_int_like(a->pos[i]))
                return rerr(r, n, "range() arguments must be integers, got %s", jv_type_name(a->pos[i]));
        }
        if (a->npos == 1) {
            v[1] = int_of(a->pos[0]);
        } else {
            v[0] = int_of(a->pos[0]);
            v[1] = int_of(a->pos[1]);
            if (a->npos == 3)
                v[2] = int_of(a->pos[2]);
        }
        if (v[2] == 0)
            return rerr(r, n, "range() arg 3 must not be zero");
        double count = ceil(((double)v[1] - (double)v[0]) / (double)v[2]);
        if (count > RENDER_MAX_RANGE)
            return rerr(r, n, "range too big: %.0f items (limit %d)", count, RENDER_MAX_RANGE);
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
                return rerr(r, n, "%s() positional argument must be a mapping", func_names[fn]);
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
        if (a->npos >= 1 && (rc = to_str(r, a->pos[0], &msg)) < 0)
            return rc;
        ifd_error_set(r->err, -EINVAL, "%.*s", (int)msg.n, msg.p);
        r->err_set = true;
        return -EINVAL;
    }
    case FN_STRFTIME: {
        struct jstr fmt = {0};
        if (a->npos != 1 || (rc = need_str(r, n, a->pos[0], "strftime_now", &fmt)) < 0)
            return a->npos == 1 ? rc : rerr(r, n, "strftime_now() takes exactly one argument");
        if (fmt.n > 256)
            return rerr(r, n, "strftime_now: format too long");
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
    return rerr(r, n, "unknown function");
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
        if ((rc = eval(r, callee->a, f, &obj)) < 0)
            return rc;
        if (obj.kind == JV_STR || obj.kind == JV_DICT || obj.kind == JV_LIST ||
            (obj.kind == JV_LOOP && jstr_eq(callee->name, "cycle"))) {
            if ((rc = eval_args(r, n, f, &a)) < 0)
                return rc;
            if (obj.kind == JV_STR)
                rc = str_method(r, n, obj.s, callee->name, &a, ret);
            else if (obj.kind == JV_DICT)
                rc = dict_method(r, n, obj, callee->name, &a, ret);
            else if (obj.kind == JV_LIST)
                rc = list_method(r, n, obj, callee->name, &a, ret);
            else if (a.npos == 0)
                return rerr(r, n, "loop.cycle() needs at least one argument");
            else {
                *ret = a.pos[obj.loop->index0 % (int64_t)a.npos];
                return 0;
            }
            if (rc < 0)
                return rc;
            if (rc == METHOD_DONE)
                return 0;
        }
        struct jv fnv;
        if ((rc = get_attr(r, callee, obj, callee->name, &fnv)) < 0)
            return rc;
        if (fnv.kind != JV_MACRO) {
            if (fnv.kind == JV_UNDEF)
                return rerr(r, n, "'%s' object has no method '%.*s'", jv_type_name(obj), (int)callee->name.n,
                            callee->name.p);
            return rerr(r, n, "'%s' object is not callable", jv_type_name(fnv));
        }
        if ((rc = eval_args(r, n, f, &a)) < 0)
            return rc;
        return call_macro(r, n, fnv.m, &a, caller, ret);
    }
    struct jv fnv;
    if ((rc = eval(r, callee, f, &fnv)) < 0)
        return rc;
    if (fnv.kind == JV_UNDEF && callee->kind == JN_NAME)
        return rerr(r, n, "'%.*s' is undefined", (int)callee->name.n, callee->name.p);
    if (fnv.kind != JV_MACRO && fnv.kind != JV_FUNC)
        return rerr(r, n, "'%s' object is not callable", jv_type_name(fnv));
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
        struct jv *v = frame_get(f, n->name);
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
            if ((rc = eval(r, n->kids[i], f, &l->items[l->n++])) < 0)
                return rc;
        *ret = (struct jv){.kind = JV_LIST, .l = l};
        return 0;
    }
    case JN_DICT: {
        struct jdict *d = jdict_new(r->arena, n->nkids);
        if (!d)
            return -ENOMEM;
        for (uint32_t i = 0; i < n->nkids; i++) {
            if ((rc = eval(r, n->kids[i], f, &a)) < 0 || (rc = eval(r, n->kids2[i], f, &b)) < 0)
                return rc;
            if (a.kind != JV_STR)
                return rerr(r, n->kids[i], "dict keys must be strings, got %s", jv_type_name(a));
            if ((rc = jdict_set(r->arena, d, a.s, b)) < 0)
                return rc;
        }
        *ret = (struct jv){.kind = JV_DICT, .d = d};
        return 0;
    }
    case JN_ATTR:
        if ((rc = eval(r, n->a, f, &a)) < 0)
            return rc;
        return get_attr(r, n, a, n->name, ret);
    case JN_SUBSCRIPT:
        if ((rc = eval(r, n->a, f, &a)) < 0)
            return rc;
        if (n->b->kind == JN_SLICE) {
            struct jv s[3];
            const struct jnode *parts[3] = {n->b->a, n->b->b, n->b->c};
            for (int i = 0; i < 3; i++) {
                s[i] = jv_none();
                if (parts[i] && (rc = eval(r, parts[i], f, &s[i])) < 0)
                    return rc;
            }
            return do_slice(r, n, a, &s[0], &s[1], &s[2], ret);
        }
        if ((rc = eval(r, n->b, f, &b)) < 0)
            return rc;
        return get_item(r, n, a, b, ret);
    case JN_CALL:
        return eval_call(r, n, f, ret);
    case JN_FILTER: {
        struct args args;
        if ((rc = eval(r, n->a, f, &a)) < 0 || (rc = eval_args(r, n, f, &args)) < 0)
            return rc;
        return apply_filter(r, n, n->name, a, &args, ret);
    }
    case JN_TEST: {
        struct args args;
        bool t;
        if ((rc = eval(r, n->a, f, &a)) < 0 || (rc = eval_args(r, n, f, &args)) < 0)
            return rc;
        if ((rc = apply_test(r, n, n->name, a, &args, &t)) < 0)
            return rc;
        *ret = jv_bool(n->op ? !t : t);
        return 0;
    }
    case JN_NOT:
        if ((rc = eval(r, n->a, f, &a)) < 0)
            return rc;
        *ret = jv_bool(!jv_truthy(a));
        return 0;
    case JN_NEG:
    case JN_POS:
        if ((rc = eval(r, n->a, f, &a)) < 0)
            return rc;
        if (a.kind == JV_UNDEF)
            return undefined_error(r, n, a);
        if (!is_num(a))
            return rerr(r, n, "bad operand type for unary %c: '%s'", n->kind == JN_NEG ? '-' : '+', jv_type_name(a));
        if (n->kind == JN_POS)
            *ret = a.kind == JV_BOOL ? jv_int(a.b) : a;
        else if (a.kind == JV_FLOAT)
            *ret = jv_float(-a.f);
        else if (int_of(a) == INT64_MIN)
            return rerr(r, n, "integer overflow");
        else
            *ret = jv_int(-int_of(a));
        return 0;
    case JN_BINOP:
        if ((rc = eval(r, n->a, f, &a)) < 0 || (rc = eval(r, n->b, f, &b)) < 0)
            return rc;
        return binop(r, n, n->op, a, b, ret);
    case JN_CONCAT: {
        struct jbuf buf = new_buf(r);
        for (uint32_t i = 0; i < n->nkids; i++)
            if ((rc = eval(r, n->kids[i], f, &a)) < 0 || (rc = jv_write_str(&buf, a)) < 0)
                return rc;
        return make_str(r, &buf, ret);
    }
    case JN_COMPARE: {
        if ((rc = eval(r, n->a, f, &a)) < 0)
            return rc;
        bool t = true;
        for (uint32_t i = 0; i < n->nkids && t; i++) {
            if ((rc = eval(r, n->kids[i], f, &b)) < 0 || (rc = compare_values(r, n, n->ops[i], a, b, &t)) < 0)
                return rc;
            a = b;
        }
        *ret = jv_bool(t);
        return 0;
    }
    case JN_AND:
    case JN_OR:
        /* Python semantics: the deciding operand itself, not a bool. */
        if ((rc = eval(r, n->a, f, &a)) < 0)
            return rc;
        if (jv_truthy(a) == (n->kind == JN_OR)) {
            *ret = a;
            return 0;
        }
        return eval(r, n->b, f, ret);
    case JN_CONDEXPR:
        if ((rc = eval(r, n->b, f, &a)) < 0)
            return rc;
        if (jv_truthy(a))
            return eval(r, n->a, f, ret);
        if (n->c)
            return eval(r, n->c, f, ret);
        *ret = (struct jv){.kind = JV_UNDEF, .origin = n};
        return 0;
    case JN_BLOCK_INPUT:
        *ret = jv_str(r->block_input.p, r->block_input.n);
        return 0;
    default:
        return rerr(r, n, "statement used as an expression");
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

static int eval(struct render *r, const struct jnode *n, struct frame *f, struct jv *ret)
{
    if (stack_exhausted(r))
        return rerr(r, n, "expression nesting too deep (more than %u KiB of stack)", RENDER_MAX_STACK >> 10);
    int rc = eval_inner(r, n, f, ret);
    return rc < 0 ? rfail(r, n, rc) : rc;
}

/* ---- statements ---- */

static int assign_names(struct render *r, const struct jnode *at, struct frame *f, const struct jstr *names,
                        uint32_t count, struct jv v)
{
    if (count == 1)
        return frame_set(r, f, names[0], v);
    if (v.kind != JV_LIST)
        return rerr(r, at, "cannot unpack non-sequence %s into %u names", jv_type_name(v), count);
    if (v.l->n != count)
        return rerr(r, at, "%s values to unpack (expected %u, got %zu)", v.l->n > count ? "too many" : "not enough",
                    count, v.l->n);
    for (uint32_t i = 0; i < count; i++) {
        int rc = frame_set(r, f, names[i], v.l->items[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int exec_set(struct render *r, const struct jnode *n, struct frame *f)
{
    struct jv v;
    int rc = eval(r, n->b, f, &v);
    if (rc < 0)
        return rc;
    const struct jnode *t = n->a;
    if (t->kind == JN_NAME)
        return frame_set(r, f, t->name, v);
    if (t->kind == JN_ATTR) {
        struct jv *ns = frame_get(f, t->a->name);
        if (!ns || ns->kind != JV_NS)
            return rerr(r, t, "cannot assign attribute on non-namespace object '%.*s'", (int)t->a->name.n,
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
    int rc = eval(r, n->a, f, &seq);
    if (rc < 0)
        return rc;
    struct jlist *l;
    if ((rc = iterate(r, n->a, seq, &l)) < 0)
        return rc;
    struct frame *lf = frame_new(r, f);
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
            lf->n = 0;
            if (++r->iterations > RENDER_MAX_ITERATIONS)
                return rerr(r, n, "loop iterations exceed %d", RENDER_MAX_ITERATIONS);
            if ((rc = assign_names(r, n, lf, n->names, n->nnames, items[i])) < 0 || (rc = eval(r, n->d, lf, &cond)) < 0)
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
        lf->n = 0;
        return exec_body(r, n->c, lf);
    }
    struct jloop *loop = jarena_alloc(r->arena, sizeof(*loop));
    if (!loop)
        return -ENOMEM;
    loop->length = (int64_t)count;
    loop->items = items;
    for (size_t i = 0; i < count; i++) {
        if (++r->iterations > RENDER_MAX_ITERATIONS)
            return rerr(r, n, "loop iterations exceed %d", RENDER_MAX_ITERATIONS);
        lf->n = 0;
        loop->index0 = (int64_t)i;
        if ((rc = frame_set(r, lf, (struct jstr){"loop", 4}, (struct jv){.kind = JV_LOOP, .loop = loop})) < 0 ||
            (rc = assign_names(r, n, lf, n->names, n->nnames, items[i])) < 0)
            return rfail(r, n, rc);
        rc = exec_body(r, n->b, lf);
        if (rc < 0)
            return rc;
        if (rc == CTL_BREAK)
            break;
    }
    return 0;
}

static int exec_stmt(struct render *r, const struct jnode *n, struct frame *f)
{
    int rc;
    struct jv v;
    switch (n->kind) {
    case JN_TEXT:
        return jbuf_put(r->out, n->name.p, n->name.n);
    case JN_OUTPUT:
        if ((rc = eval(r, n->a, f, &v)) < 0)
            return rc;
        return jv_write_str(r->out, v);
    case JN_IF:
        if ((rc = eval(r, n->a, f, &v)) < 0)
            return rc;
        if (jv_truthy(v))
            return exec_body(r, n->b, f);
        if (n->c)
            return n->c->kind == JN_IF ? exec_stmt(r, n->c, f) : exec_body(r, n->c, f);
        return 0;
    case JN_FOR:
        return exec_for(r, n, f);
    case JN_SET:
        return exec_set(r, n, f);
    case JN_SET_BLOCK:
    case JN_FILTER_BLOCK: {
        struct jstr text;
        if ((rc = capture(r, n->b, f, &text)) < 0)
            return rc;
        const struct jnode *chain = n->kind == JN_FILTER_BLOCK ? n->a : n->c;
        v = jv_str(text.p, text.n);
        if (chain) {
            struct jstr saved = r->block_input;
            r->block_input = text;
            rc = eval(r, chain, f, &v);
            r->block_input = saved;
            if (rc < 0)
                return rc;
        }
        if (n->kind == JN_SET_BLOCK)
            return frame_set(r, f, n->a->name, v);
        return jv_write_str(r->out, v);
    }
    case JN_MACRO: {
        struct jmacro *m = jarena_alloc(r->arena, sizeof(*m));
        if (!m)
            return -ENOMEM;
        m->def = n;
        m->closure = f;
        return frame_set(r, f, n->name, (struct jv){.kind = JV_MACRO, .m = m});
    }
    case JN_CALL_BLOCK: {
        struct jmacro *m = jarena_alloc(r->arena, sizeof(*m));
        if (!m)
            return -ENOMEM;
        m->def = n;
        m->closure = f;
        r->pending_caller = m;
        rc = eval(r, n->a, f, &v);
        r->pending_caller = NULL;
        if (rc < 0)
            return rc;
        return jv_write_str(r->out, v);
    }
    case JN_WITH: {
        struct frame *wf = frame_new(r, f);
        if (!wf)
            return -ENOMEM;
        for (uint32_t i = 0; i < n->nnames; i++) {
            if ((rc = eval(r, n->kids2[i], wf, &v)) < 0 || (rc = frame_set(r, wf, n->names[i], v)) < 0)
                return rc;
        }
        return exec_body(r, n->b, wf);
    }
    case JN_BREAK:
        return CTL_BREAK;
    case JN_CONTINUE:
        return CTL_CONTINUE;
    case JN_BODY:
        return exec_body(r, n, f);
    default:
        return rerr(r, n, "expression used as a statement");
    }
}

/* Returns 0, CTL_BREAK / CTL_CONTINUE (passed up to the enclosing loop), or < 0. */
static int exec_body(struct render *r, const struct jnode *n, struct frame *f)
{
    if (stack_exhausted(r))
        return rerr(r, n, "block nesting too deep (more than %u KiB of stack)", RENDER_MAX_STACK >> 10);
    for (uint32_t i = 0; i < n->nkids; i++) {
        int rc = exec_stmt(r, n->kids[i], f);
        if (rc < 0)
            return rfail(r, n->kids[i], rc);
        if (rc > 0)
            return rc;
    }
    return 0;
}

/* ---- API ---- */

int chat_template_compile(const char *source, size_t len, chat_template **ret, ifd_error *err)
{
    if (!source)
        return ifd_error_set(err, -EINVAL, "template: no source");
    if (len > TEMPLATE_MAX_SOURCE)
        return ifd_error_set(err, -EFBIG, "template: %zu bytes exceeds the %u byte limit", len, TEMPLATE_MAX_SOURCE);
    if (memchr(source, '\0', len))
        return ifd_error_set(err, -EINVAL, "template: contains a NUL byte");
    chat_template *t = calloc(1, sizeof(*t));
    if (!t)
        return ifd_error_set(err, -ENOMEM, "template: out of memory");
    /* Compile memory: the AST is a small multiple of the source. */
    t->t.arena = jarena_create((size_t)64 * len + (1u << 20));
    char *src = t->t.arena ? jarena_alloc(t->t.arena, len + 1) : NULL;
    if (!src) {
        chat_template_destroy(t);
        return ifd_error_set(err, -ENOMEM, "template: out of memory");
    }
    /* Jinja2 first turns "\r\n" and "\r" into "\n" in the whole source; line
     * numbers stay the same. */
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (source[i] == '\r') {
            src[k++] = '\n';
            if (i + 1 < len && source[i + 1] == '\n')
                i++;
        } else {
            src[k++] = source[i];
        }
    }
    src[k] = '\0';
    t->t.src = src;
    t->t.len = k;
    char msg[IFD_ERROR_MSG_MAX];
    msg[0] = '\0';
    int rc = jinja_parse(&t->t, msg, sizeof(msg));
    if (rc < 0) {
        chat_template_destroy(t);
        return ifd_error_set(err, rc, "%s", msg);
    }
    *ret = t;
    return 0;
}

void chat_template_destroy(chat_template *t)
{
    if (!t)
        return;
    jarena_destroy(t->t.arena);
    free(t);
}

/* Runs the template over `globals` and hands the text out; destroys the
 * render's arena in every case. */
static int render_finish(const chat_template *t, struct render *r, struct frame *globals, struct jbuf *out,
                         char **ret_text, size_t *ret_len)
{
    /* The template's own top level is a scope above the context, so `set`
     * at top level shadows a context variable, as in Jinja2. */
    struct frame *top = frame_new(r, globals);
    int rc = top ? exec_body(r, t->t.root, top) : -ENOMEM;
    if (rc < 0) {
        if (!r->err_set)
            rfail(r, NULL, rc);
        jarena_destroy(r->arena);
        return rc == -EFBIG || rc == -ENOMEM ? rc : -EINVAL;
    }
    char *text = malloc(out->n + 1);
    if (!text) {
        jarena_destroy(r->arena);
        return ifd_error_set(r->err, -ENOMEM, "template: out of memory");
    }
    if (out->n)
        memcpy(text, out->p, out->n);
    text[out->n] = '\0';
    size_t n = out->n;
    jarena_destroy(r->arena);
    *ret_text = text;
    if (ret_len)
        *ret_len = n;
    return 0;
}

static int render_begin(const chat_template *t, struct render *r, struct jbuf *out, struct frame **ret_globals,
                        ifd_error *err)
{
    r->t = &t->t;
    r->err = err;
    r->arena = jarena_create(RENDER_MAX_ARENA);
    if (!r->arena)
        return ifd_error_set(err, -ENOMEM, "template: out of memory");
    *out = new_buf(r);
    r->out = out;
    *ret_globals = frame_new(r, NULL);
    if (!*ret_globals) {
        jarena_destroy(r->arena);
        return ifd_error_set(err, -ENOMEM, "template: out of memory");
    }
    return 0;
}

int chat_template_render(const chat_template *t, const cJSON *context, char **ret_text, size_t *ret_len, ifd_error *err)
{
    if (!t || !context || !cJSON_IsObject(context))
        return ifd_error_set(err, -EINVAL, "template: context must be a JSON object");
    struct render r = {.stack_base = __builtin_frame_address(0)};
    struct jbuf out;
    struct frame *globals;
    int rc = render_begin(t, &r, &out, &globals, err);
    if (rc < 0)
        return rc;
    for (const cJSON *c = context->child; c && rc == 0; c = c->next) {
        struct jv v;
        if (!c->string)
            continue;
        if ((rc = jv_from_json(r.arena, c, &v)) == 0)
            rc = frame_set(&r, globals, (struct jstr){c->string, strlen(c->string)}, v);
    }
    if (rc < 0) {
        jarena_destroy(r.arena);
        return ifd_error_set(err, rc, "template: context too large for the render memory limit");
    }
    return render_finish(t, &r, globals, &out, ret_text, ret_len);
}

/* A special token given as "text" or {"content": "text"}. */
static struct jv special_token_value(struct jv v)
{
    if (v.kind == JV_DICT) {
        struct jv *c = jdict_get(v.d, "content", 7);
        if (c)
            return *c;
    }
    return v;
}

int chat_template_render_conversation(const chat_template *t, const char *json, size_t len, const cJSON *defaults,
                                      char **ret_text, size_t *ret_len, ifd_error *err)
{
    if (!t || !json)
        return ifd_error_set(err, -EINVAL, "conversation: no template or no text");
    if (defaults && !cJSON_IsObject(defaults))
        return ifd_error_set(err, -EINVAL, "conversation: defaults must be a JSON object");
    struct render r = {.stack_base = __builtin_frame_address(0)};
    struct jbuf out;
    struct frame *globals;
    int rc = render_begin(t, &r, &out, &globals, err);
    if (rc < 0)
        return rc;
    struct jv conv;
    size_t off = 0;
    const char *what = NULL;
    const char *problem = NULL;
    rc = jv_parse_json(r.arena, json, len, &conv, &off, &what);
    if (rc == -EINVAL) {
        jarena_destroy(r.arena);
        return ifd_error_set(err, -EINVAL, "conversation: invalid JSON at byte %zu: %s", off, what);
    }
    struct jv *messages = NULL, *agp = NULL, *kwargs = NULL, *special = NULL;
    if (rc == 0 && conv.kind != JV_DICT) {
        problem = "must be a JSON object";
    } else if (rc == 0) {
        messages = jdict_get(conv.d, "messages", 8);
        agp = jdict_get(conv.d, "add_generation_prompt", 21);
        kwargs = jdict_get(conv.d, "kwargs", 6);
        special = jdict_get(conv.d, "special_tokens", 14);
        if (!messages || messages->kind != JV_LIST)
            problem = "needs a \"messages\" array";
        else if (agp && agp->kind != JV_BOOL)
            problem = "\"add_generation_prompt\" must be true or false";
        else if (kwargs && kwargs->kind != JV_DICT)
            problem = "\"kwargs\" must be an object";
        else if (special && special->kind != JV_DICT)
            problem = "\"special_tokens\" must be an object";
    }
    if (problem) {
        jarena_destroy(r.arena);
        return ifd_error_set(err, -EINVAL, "conversation: %s", problem);
    }
    /* Context order as apply_chat_template: special tokens, then kwargs, then
     * messages and add_generation_prompt. */
    for (const cJSON *c = defaults ? defaults->child : NULL; c && rc == 0; c = c->next) {
        struct jv v;
        if (c->string && (rc = jv_from_json(r.arena, c, &v)) == 0)
            rc = frame_set(&r, globals, (struct jstr){c->string, strlen(c->string)}, v);
    }
    for (size_t i = 0; special && i < special->d->n && rc == 0; i++)
        rc = frame_set(&r, globals, special->d->keys[i], special_token_value(special->d->vals[i]));
    for (size_t i = 0; kwargs && i < kwargs->d->n && rc == 0; i++)
        rc = frame_set(&r, globals, kwargs->d->keys[i], kwargs->d->vals[i]);
    if (rc == 0)
        rc = frame_set(&r, globals, (struct jstr){"messages", 8}, *messages);
    if (rc == 0)
        rc = frame_set(&r, globals, (struct jstr){"add_generation_prompt", 21}, agp ? *agp : jv_bool(false));
    if (rc < 0) {
        jarena_destroy(r.arena);
        return ifd_error_set(err, rc, "conversation: too large for the render memory limit");
    }
    return render_finish(t, &r, globals, &out, ret_text, ret_len);
}
