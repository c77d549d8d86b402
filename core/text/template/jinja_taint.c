/* jinja_taint.c - which bytes of a render came from untrusted input.
 *
 * Message content is the user's text; if it contains "<|im_end|>" the
 * tokenizer must not read that as the special token, or the user can write
 * a system turn. So strings from untrusted input carry the byte ranges that
 * came from it ("taint"), and the render reports which output bytes did.
 * Concatenation and output keep the ranges exact (the template's own markup
 * around content stays trusted); anything that transforms text (filters,
 * methods, `%`, slicing) marks its whole result untrusted when an input was.
 * Erring towards untrusted is safe: ordinary text tokenizes the same either
 * way, only special-token matching is switched off there. */
#include <errno.h>
#include <string.h>

#include "jinja-internal.h"

const struct jspans jtaint_all;

int jspans_add(struct jarena *a, struct jspans *s, size_t start, size_t end)
{
    if (start >= end)
        return 0;
    if (s->n && s->v[2 * s->n - 1] >= start) {
        if (end > s->v[2 * s->n - 1])
            s->v[2 * s->n - 1] = end;
        return 0;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4;
        size_t *v = jarena_alloc(a, 2 * cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        if (s->n)
            memcpy(v, s->v, 2 * s->n * sizeof(*v));
        s->v = v;
        s->cap = cap;
    }
    s->v[2 * s->n] = start;
    s->v[2 * s->n + 1] = end;
    s->n++;
    return 0;
}

/* Containers nest without bound in principle (a list can hold itself), and
 * a template may scan a big list in every iteration of a loop: past this
 * depth or this many values a value counts as tainted. */
#define TAINT_SCAN_DEPTH 32
#define TAINT_SCAN_VALUES 4096

static bool tainted_scan(struct jv v, int depth, size_t *budget)
{
    if (depth > TAINT_SCAN_DEPTH || (*budget)-- == 0)
        return true;
    switch (v.kind) {
    case JV_STR:
        return v.taint && v.s.n;
    case JV_LIST:
        if (v.l->taint)
            return true;
        for (size_t i = 0; i < v.l->n; i++)
            if (tainted_scan(v.l->items[i], depth + 1, budget))
                return true;
        return false;
    case JV_DICT:
    case JV_NS:
        if (v.d->taint)
            return true;
        for (size_t i = 0; i < v.d->n; i++)
            if (tainted_scan(v.d->vals[i], depth + 1, budget))
                return true;
        return false;
    default:
        return false;
    }
}

bool jv_tainted(struct jv v)
{
    size_t budget = TAINT_SCAN_VALUES;
    return tainted_scan(v, 0, &budget);
}

static int taint_all_depth(struct jv *v, int depth)
{
    if (depth > JV_MAX_DEPTH)
        return -ELOOP;
    int rc = 0;
    switch (v->kind) {
    case JV_STR:
        if (v->s.n)
            v->taint = &jtaint_all;
        return 0;
    case JV_LIST:
        if (v->l->taint)
            return 0; /* done already (or being done: a list that holds itself) */
        v->l->taint = true;
        for (size_t i = 0; i < v->l->n && rc == 0; i++)
            rc = taint_all_depth(&v->l->items[i], depth + 1);
        return rc;
    case JV_DICT:
    case JV_NS:
        if (v->d->taint)
            return 0;
        v->d->taint = true;
        for (size_t i = 0; i < v->d->n && rc == 0; i++)
            rc = taint_all_depth(&v->d->vals[i], depth + 1);
        return rc;
    default:
        return 0;
    }
}

int jv_taint_all(struct jv *v)
{
    return taint_all_depth(v, 0);
}

/* Role names a message may carry. The API refuses any other role, and
 * templates build markup from them ('<|' + role + '|>' is Phi-3's user turn),
 * which a tainted role would turn into plain text. These exact names hold no
 * special-token text, so trusting them gives a client nothing to inject. */
static const char *const known_roles[] = {"system", "user", "assistant", "tool", "developer", "function", "ipython",
                                          NULL};

int jv_taint_messages(struct jv *messages)
{
    int rc = jv_taint_all(messages);
    if (rc < 0 || messages->kind != JV_LIST)
        return rc;
    for (size_t i = 0; i < messages->l->n; i++) {
        struct jv *m = &messages->l->items[i];
        struct jv *role = m->kind == JV_DICT ? jdict_get(m->d, "role", 4) : NULL;
        if (!role || role->kind != JV_STR)
            continue;
        for (size_t k = 0; known_roles[k]; k++)
            if (jstr_eq(role->s, known_roles[k]))
                role->taint = NULL;
    }
    return 0;
}

void jr_taint_result(struct jv *ret, bool tainted)
{
    /* Values nested past JV_MAX_DEPTH keep only their containers' flags,
     * which jv_tainted already reads as tainted. */
    if (tainted)
        (void)jv_taint_all(ret);
}

bool jr_inputs_tainted(const struct render *r, struct jv in, const struct args *a)
{
    if (!r->untrusted)
        return false;
    if (jv_tainted(in))
        return true;
    for (size_t i = 0; i < a->npos; i++)
        if (jv_tainted(a->pos[i]))
            return true;
    for (size_t i = 0; i < a->nkw; i++)
        if (jv_tainted(a->kwv[i]))
            return true;
    return false;
}

int jr_put(struct render *r, struct jbuf *b, struct jv v)
{
    size_t at = b->n;
    int rc = jv_write_str(b, v);
    if (rc < 0 || !r->untrusted)
        return rc;
    if (v.kind == JV_STR && v.taint && v.taint != &jtaint_all) {
        for (size_t i = 0; i < v.taint->n && rc == 0; i++)
            rc = jspans_add(r->arena, &b->taint, at + v.taint->v[2 * i], at + v.taint->v[2 * i + 1]);
        return rc;
    }
    if (jv_tainted(v))
        return jspans_add(r->arena, &b->taint, at, b->n);
    return 0;
}
