/* jinja_format.c - Python's two string formattings: printf-style `fmt %
 * args` (and the `format` filter) and str.format(). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja-internal.h"

/* Python's printf-style `fmt % args` (also the `format` filter): %s %r %d %i
 * %f %e %g %x %o %c %% with flags, width and precision, positional or
 * %(name)s from a dict. */
int jr_percent_format(struct render *r, const struct jnode *n, struct jstr fmt, struct jv args, struct jv *ret)
{
    struct jbuf b = jr_buf(r);
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
                return jr_err(r, n, "format requires a mapping for %%(name)");
            struct jv *found = jdict_get(args.d, fmt.p + k + 1, e - k - 1);
            if (!found)
                return jr_err(r, n, "format: key '%.*s' missing", (int)(e - k - 1), fmt.p + k + 1);
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
            return jr_err(r, n, "format: incomplete format");
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
                return jr_err(r, n, "not enough arguments for format string");
            } else {
                v = pos[next];
            }
            next++;
        }
        char cfmt[32], out[512];
        if (conv == 's' || conv == 'r') {
            struct jbuf sb = jr_buf(r);
            if ((rc = conv == 's' ? jv_write_str(&sb, v) : jv_write_repr(&sb, v)) < 0)
                return rc;
            size_t len = jutf8_len(sb.p ? sb.p : "", sb.n), bytes = sb.n;
            if (prec >= 0 && (size_t)prec < len) {
                size_t *off, ncp;
                if ((rc = jr_cp_offsets(r, (struct jstr){sb.p, sb.n}, &off, &ncp)) < 0)
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
        if (!jv_is_num(v))
            return jr_err(r, n, "%%%c format: a number is required, not %s", conv, jv_type_name(v));
        int len;
        if (conv == 'd' || conv == 'i' || conv == 'x' || conv == 'X' || conv == 'o' || conv == 'c') {
            const char *lc = conv == 'i' || conv == 'd' ? "lld" : conv == 'x' ? "llx" : conv == 'X' ? "llX" : conv == 'o' ? "llo" : "c";
            if (conv == 'c') {
                int64_t cp = jv_int_of(v);
                if (cp < 0 || cp > 0x10ffff)
                    return jr_err(r, n, "%%c arg not in range(0x110000)");
                rc = jutf8_put(&b, (int32_t)cp);
                continue;
            }
            snprintf(cfmt, sizeof(cfmt), "%%%s%d%s", flags, width, lc);
            len = snprintf(out, sizeof(out), cfmt, (long long)jv_int_of(v));
        } else if (strchr("fFeEgG", conv)) {
            snprintf(cfmt, sizeof(cfmt), "%%%s%d.%d%c", flags, width, prec < 0 ? 6 : prec, conv);
            len = snprintf(out, sizeof(out), cfmt, jv_num_of(v));
        } else {
            return jr_err(r, n, "format: unsupported conversion '%%%c'", conv);
        }
        if (len < 0 || (size_t)len >= sizeof(out))
            return jr_err(r, n, "format: field too wide");
        rc = jbuf_put(&b, out, (size_t)len);
    }
    if (rc < 0)
        return rc;
    if (!mapping && next < npos)
        return jr_err(r, n, "not all arguments converted during string formatting");
    return jr_make_str(r, &b, ret);
}

int jr_brace_format(struct render *r, const struct jnode *n, struct jstr s, struct args *a, struct jv *ret)
{
    struct jbuf b = jr_buf(r);
    size_t auto_idx = 0;
    int rc;
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
            return jr_err(r, n, "format(): single '{' encountered");
        struct jstr field = {s.p + i + 1, e - i - 1};
        struct jv *v = NULL;
        if (field.n == 0) {
            v = auto_idx < a->npos ? &a->pos[auto_idx] : NULL;
            auto_idx++;
        } else if (field.p[0] >= '0' && field.p[0] <= '9') {
            /* strtoul stops at the closing '}' at the latest. */
            size_t idx = (size_t)strtoul(field.p, NULL, 10);
            v = idx < a->npos ? &a->pos[idx] : NULL;
        } else {
            for (size_t k = 0; k < a->nkw; k++)
                if (a->kwn[k].n == field.n && memcmp(a->kwn[k].p, field.p, field.n) == 0)
                    v = &a->kwv[k];
        }
        if (!v)
            return jr_err(r, n, "format(): no argument for '{%.*s}'", (int)field.n, field.p);
        if ((rc = jv_write_str(&b, *v)) < 0)
            return rc;
        i = e;
    }
    return jr_make_str(r, &b, ret);
}
