/* jinja_str.c - Python str operations (case mapping, strip, find, replace,
 * split) on UTF-8 text, shared by the filters, the str methods and `in`.
 * Code points, not bytes, are what Python counts. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "jinja-internal.h"

/* Byte offsets of each code point of s, plus one at the end (s.n). */
int jr_cp_offsets(struct render *r, struct jstr s, size_t **ret, size_t *ret_n)
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

int jr_str_case(struct render *r, struct jstr s, enum case_map how, struct jv *ret)
{
    struct jbuf b = jr_buf(r);
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
    return jr_make_str(r, &b, ret);
}

static bool cp_in_set(int32_t cp, struct jstr set)
{
    for (size_t i = 0; i < set.n;)
        if (jutf8_next(set.p, set.n, &i) == cp)
            return true;
    return false;
}

/* strip/lstrip/rstrip: chars NULL means Unicode whitespace. */
struct jstr jstr_strip(struct jstr s, const struct jstr *chars, bool left, bool right)
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

const char *jstr_find(struct jstr hay, struct jstr needle, size_t from)
{
    if (needle.n == 0)
        return from <= hay.n ? hay.p + from : NULL;
    if (from > hay.n || !hay.p || !needle.p)
        return NULL;
    return memmem(hay.p + from, hay.n - from, needle.p, needle.n);
}

const char *jstr_rfind(struct jstr hay, struct jstr needle)
{
    if (needle.n > hay.n)
        return NULL;
    for (size_t i = hay.n - needle.n + 1; i-- > 0;)
        if (memcmp(hay.p + i, needle.p, needle.n) == 0)
            return hay.p + i;
    return NULL;
}

int jr_str_replace(struct render *r, struct jstr s, struct jstr old, struct jstr new, int64_t count, struct jv *ret)
{
    struct jbuf b = jr_buf(r);
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
            const char *hit = jstr_find(s, old, i);
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
    return jr_make_str(r, &b, ret);
}

int jr_push_str(struct render *r, struct jlist *l, const char *p, size_t n)
{
    return jlist_push(r->arena, l, jv_str(p, n));
}

/* split(sep, maxsplit) and rsplit: sep NULL splits on whitespace runs. */
int jr_str_split(struct render *r, const struct jnode *n, struct jstr s, const struct jstr *sep, int64_t maxsplit,
                 bool from_right, struct jv *ret)
{
    struct jlist *l = jlist_new(r->arena, 0);
    if (!l)
        return -ENOMEM;
    int rc = 0;
    if (sep && sep->n == 0)
        return jr_err(r, n, "split: empty separator");
    if (!from_right) {
        size_t i = 0;
        int64_t splits = 0;
        if (sep) {
            for (;;) {
                const char *hit = (maxsplit < 0 || splits < maxsplit) ? jstr_find(s, *sep, i) : NULL;
                if (!hit) {
                    rc = jr_push_str(r, l, s.p + i, s.n - i);
                    break;
                }
                if ((rc = jr_push_str(r, l, s.p + i, (size_t)(hit - s.p) - i)) < 0)
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
                    struct jstr rest = jstr_strip((struct jstr){s.p + i, s.n - i}, NULL, false, true);
                    rc = jr_push_str(r, l, rest.p, rest.n);
                    break;
                }
                size_t start = i;
                while (i < s.n) {
                    size_t k = i;
                    if (jutf8_is_space(jutf8_next(s.p, s.n, &k)))
                        break;
                    i = k;
                }
                if ((rc = jr_push_str(r, l, s.p + start, i - start)) < 0)
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
                const char *hit = (maxsplit < 0 || splits < maxsplit) ? jstr_rfind(head, *sep) : NULL;
                if (!hit) {
                    rc = jr_push_str(r, l, s.p, e);
                    break;
                }
                size_t at = (size_t)(hit - s.p);
                if ((rc = jr_push_str(r, l, s.p + at + sep->n, e - at - sep->n)) < 0)
                    break;
                e = at;
                splits++;
            }
        } else {
            struct jstr t = jstr_strip(s, NULL, false, true);
            e = t.n;
            while (e > 0) {
                if (maxsplit >= 0 && splits >= maxsplit) {
                    struct jstr rest = jstr_strip((struct jstr){s.p, e}, NULL, true, false);
                    rc = jr_push_str(r, l, rest.p, rest.n);
                    break;
                }
                size_t end = e;
                while (e > 0 && !jutf8_is_space((unsigned char)s.p[e - 1]))
                    e--;
                if ((rc = jr_push_str(r, l, s.p + e, end - e)) < 0)
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

