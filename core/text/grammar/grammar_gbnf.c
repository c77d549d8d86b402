/* grammar_gbnf.c - GBNF text -> compiled grammar.
 *
 * The syntax is llama.cpp's: `name ::= alternatives`, where an alternative is
 * a sequence of "literals", [classes] ([^...] negated, ranges a-z), `.` (any
 * character), rule names and ( groups ), each optionally followed by *, +, ?
 * or {m}, {m,}, {m,n}; `#` starts a comment. Newlines are ordinary
 * whitespace: a rule ends where the next `name ::=` begins, a superset of
 * llama.cpp's rule that only nested newlines continue a rule.
 *
 * Repetitions become right-recursive anonymous rules, which the matcher runs
 * as tail calls, so x* over a long output does not grow the parse stack.
 * Left recursion (a rule that can reach itself before consuming a character)
 * is refused: the matcher's expansion would never end. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/utf8.h"
#include "grammar-internal.h"

/* One rule while parsing: its elements, alternatives separated by GE_END. */
struct prule {
    char *name;          /* NULL for anonymous rules */
    size_t name_len;
    struct gelem *el;
    size_t n, cap;
    bool defined;
    size_t ref_pos;      /* first mention, for "undefined rule" (line:col found only then) */
};

struct elvec {
    struct gelem *el;
    size_t n, cap;
};

struct parser {
    const char *s;
    size_t len, pos;
    int depth;
    struct prule *rules;
    size_t n_rules, cap_rules;
    struct gclass *classes;
    size_t n_classes, cap_classes;
    uint32_t *ranges;        /* pairs */
    size_t n_ranges, cap_ranges;
    size_t n_elements;       /* all elements so far, for the bound */
    uint32_t *names;         /* [NAME_SLOTS]: open-addressed rule id + 1 by name; 0 empty */
    ifd_error *err;
};

static void where(const struct parser *p, size_t pos, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < pos && i < p->len; i++) {
        if (p->s[i] == '\n') {
            (*line)++;
            *col = 1;
        } else if (((unsigned char)p->s[i] & 0xC0) != 0x80) {
            (*col)++;
        }
    }
}

static int fail(struct parser *p, const char *what)
{
    int line, col;
    where(p, p->pos, &line, &col);
    return ifd_error_set(p->err, -EINVAL, "grammar line %d column %d: %s", line, col, what);
}

static int oom(struct parser *p)
{
    return ifd_error_set(p->err, -ENOMEM, "grammar: out of memory");
}

static int elvec_push(struct parser *p, struct elvec *v, uint32_t type, uint32_t val)
{
    if (++p->n_elements > GRAMMAR_MAX_ELEMENTS)
        return fail(p, "the grammar is too large (more than " "200000" " elements once repetitions are expanded)");
    struct gelem *n = buf_grow(v->el, &v->cap, v->n + 1, sizeof(*v->el));
    if (!n)
        return oom(p);
    v->el = n;
    v->el[v->n++] = (struct gelem){type, val};
    return 0;
}

static int elvec_append(struct parser *p, struct elvec *v, const struct gelem *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int r = elvec_push(p, v, e[i].type, e[i].v);
        if (r < 0)
            return r;
    }
    return 0;
}

static int rule_new(struct parser *p, const char *name, size_t name_len, uint32_t *ret)
{
    if (p->n_rules >= GRAMMAR_MAX_RULES)
        return fail(p, "too many rules (the limit is 8192, anonymous rules of groups and repetitions included)");
    struct prule *n = buf_grow(p->rules, &p->cap_rules, p->n_rules + 1, sizeof(*p->rules));
    if (!n)
        return oom(p);
    p->rules = n;
    struct prule *r = &p->rules[p->n_rules];
    memset(r, 0, sizeof(*r));
    if (name) {
        if (!(r->name = strndup(name, name_len)))
            return oom(p);
        r->name_len = name_len;
    }
    *ret = (uint32_t)p->n_rules++;
    return 0;
}

/* Twice the rule limit: the table never fills. */
#define NAME_SLOTS (2 * GRAMMAR_MAX_RULES)

static uint32_t name_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

/* The rule of that name, created (undefined yet) at its first mention. */
static int rule_lookup(struct parser *p, const char *name, size_t len, uint32_t *ret)
{
    if (!p->names && !(p->names = calloc(NAME_SLOTS, sizeof(*p->names))))
        return oom(p);
    uint32_t slot = name_hash(name, len) & (NAME_SLOTS - 1);
    for (; p->names[slot]; slot = (slot + 1) & (NAME_SLOTS - 1)) {
        const struct prule *pr = &p->rules[p->names[slot] - 1];
        if (pr->name_len == len && memcmp(pr->name, name, len) == 0) {
            *ret = p->names[slot] - 1;
            return 0;
        }
    }
    int r = rule_new(p, name, len, ret);
    if (r == 0) {
        p->names[slot] = *ret + 1;
        p->rules[*ret].ref_pos = p->pos;
    }
    return r;
}

/* Appends an alternative (ended by GE_END) to rule r. */
static int rule_add_alt(struct parser *p, uint32_t r, const struct gelem *e, size_t n)
{
    struct prule *pr = &p->rules[r];
    struct elvec v = {pr->el, pr->n, pr->cap};
    int rc = elvec_append(p, &v, e, n);
    if (rc == 0)
        rc = elvec_push(p, &v, GE_END, 0);
    pr = &p->rules[r]; /* unchanged: rules do not move here, but stay safe */
    pr->el = v.el;
    pr->n = v.n;
    pr->cap = v.cap;
    return rc;
}

static int class_new(struct parser *p, bool negated, uint32_t *ret)
{
    struct gclass *n = buf_grow(p->classes, &p->cap_classes, p->n_classes + 1, sizeof(*p->classes));
    if (!n)
        return oom(p);
    p->classes = n;
    p->classes[p->n_classes] = (struct gclass){(uint32_t)p->n_ranges, 0, negated};
    *ret = (uint32_t)p->n_classes++;
    return 0;
}

/* Adds a range to the class created last. */
static int class_range(struct parser *p, uint32_t lo, uint32_t hi)
{
    uint32_t *n = buf_grow(p->ranges, &p->cap_ranges, 2 * (p->n_ranges + 1), sizeof(*p->ranges));
    if (!n)
        return oom(p);
    p->ranges = n;
    p->ranges[2 * p->n_ranges] = lo;
    p->ranges[2 * p->n_ranges + 1] = hi;
    p->n_ranges++;
    p->classes[p->n_classes - 1].n++;
    return 0;
}

static bool is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

static void skip_space(struct parser *p)
{
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c == '#') {
            while (p->pos < p->len && p->s[p->pos] != '\n')
                p->pos++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            p->pos++;
        } else {
            break;
        }
    }
}

static size_t name_len_at(const struct parser *p, size_t pos)
{
    size_t n = 0;
    while (pos + n < p->len && is_name_char(p->s[pos + n]))
        n++;
    return n;
}

/* True when a `name ::=` starts at pos: the current rule ends there. */
static bool rule_start_at(const struct parser *p, size_t pos)
{
    size_t n = name_len_at(p, pos);
    if (!n)
        return false;
    pos += n;
    while (pos < p->len && (p->s[pos] == ' ' || p->s[pos] == '\t' || p->s[pos] == '\r' || p->s[pos] == '\n'))
        pos++;
    return pos + 3 <= p->len && memcmp(p->s + pos, "::=", 3) == 0;
}

static int hex_value(struct parser *p, int digits, uint32_t *ret)
{
    uint32_t v = 0;
    for (int i = 0; i < digits; i++) {
        if (p->pos >= p->len)
            return fail(p, "unexpected end in a \\x, \\u or \\U escape");
        char c = p->s[p->pos];
        int d = (c >= '0' && c <= '9') ? c - '0' : ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') ? (c | 0x20) - 'a' + 10 : -1;
        if (d < 0)
            return fail(p, "expected a hexadecimal digit in an escape");
        v = v * 16 + (uint32_t)d;
        p->pos++;
    }
    if (v > 0x10FFFF)
        return fail(p, "the escape is above U+10FFFF");
    *ret = v;
    return 0;
}

/* Reads one character of a literal or class (an escape or a UTF-8 character). */
static int read_char(struct parser *p, uint32_t *ret)
{
    if (p->pos >= p->len)
        return fail(p, "unexpected end of the grammar");
    if (p->s[p->pos] == '\\') {
        p->pos++;
        if (p->pos >= p->len)
            return fail(p, "unexpected end after '\\'");
        char c = p->s[p->pos++];
        switch (c) {
        case 'n': *ret = '\n'; return 0;
        case 'r': *ret = '\r'; return 0;
        case 't': *ret = '\t'; return 0;
        case '0': *ret = 0; return 0;
        case 'x': return hex_value(p, 2, ret);
        case 'u': return hex_value(p, 4, ret);
        case 'U': return hex_value(p, 8, ret);
        case '\\': case '"': case '[': case ']': case '-': case '^': case '.': case '\'':
            *ret = (uint32_t)(unsigned char)c;
            return 0;
        default:
            p->pos--;
            return fail(p, "unknown escape (known: \\n \\r \\t \\0 \\xHH \\uHHHH \\UHHHHHHHH \\\\ \\\" \\[ \\] \\- \\^)");
        }
    }
    int32_t cp;
    int n = utf8_decode(p->s + p->pos, p->len - p->pos, &cp);
    if (n < 0)
        return fail(p, "invalid UTF-8");
    p->pos += (size_t)n;
    *ret = (uint32_t)cp;
    return 0;
}

static int parse_alternates(struct parser *p, uint32_t rule);

/* Reads a decimal number of a {m,n} repetition. */
static int read_count(struct parser *p, uint32_t *ret)
{
    uint32_t v = 0;
    size_t start = p->pos;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        v = v * 10 + (uint32_t)(p->s[p->pos] - '0');
        if (v > GRAMMAR_MAX_REPEAT)
            return fail(p, "a repetition count is above 4096");
        p->pos++;
    }
    if (p->pos == start)
        return fail(p, "expected a number in {m,n}");
    *ret = v;
    return 0;
}

/* Appends x{min,max} to seq (max UINT32_MAX: unbounded). x is one element. */
static int emit_repeat(struct parser *p, struct elvec *seq, struct gelem x, uint32_t min, uint32_t max)
{
    int r = 0;
    for (uint32_t i = 0; i < min && r == 0; i++)
        r = elvec_push(p, seq, x.type, x.v);
    if (r < 0 || max == min)
        return r;
    uint32_t rid;
    if (max == UINT32_MAX) {
        /* S ::= x S | (empty) */
        if ((r = rule_new(p, NULL, 0, &rid)) < 0)
            return r;
        struct gelem alt[2] = {x, {GE_REF, rid}};
        if ((r = rule_add_alt(p, rid, alt, 2)) < 0 || (r = rule_add_alt(p, rid, NULL, 0)) < 0)
            return r;
        return elvec_push(p, seq, GE_REF, rid);
    }
    /* O1 ::= x | (empty); Ok ::= x O(k-1) | (empty): at most max - min more */
    uint32_t inner = UINT32_MAX;
    for (uint32_t k = 0; k < max - min; k++) {
        if ((r = rule_new(p, NULL, 0, &rid)) < 0)
            return r;
        struct gelem alt[2] = {x, {GE_REF, inner}};
        if ((r = rule_add_alt(p, rid, alt, inner == UINT32_MAX ? 1 : 2)) < 0 || (r = rule_add_alt(p, rid, NULL, 0)) < 0)
            return r;
        inner = rid;
    }
    return elvec_push(p, seq, GE_REF, inner);
}

/* One item of a sequence: primary and optional postfix operator. */
static int parse_item(struct parser *p, struct elvec *seq)
{
    struct elvec frag = {0};
    int r = 0;
    char c = p->s[p->pos];
    uint32_t id = 0, cp = 0;
    if (c == '"') {
        p->pos++;
        while (r == 0 && p->pos < p->len && p->s[p->pos] != '"') {
            if ((r = read_char(p, &cp)) == 0 && (r = class_new(p, false, &id)) == 0 && (r = class_range(p, cp, cp)) == 0)
                r = elvec_push(p, &frag, GE_CLASS, id);
        }
        if (r == 0 && p->pos >= p->len)
            r = fail(p, "unterminated string literal");
        p->pos++;
    } else if (c == '[') {
        p->pos++;
        bool neg = p->pos < p->len && p->s[p->pos] == '^';
        if (neg)
            p->pos++;
        if ((r = class_new(p, neg, &id)) == 0)
            r = elvec_push(p, &frag, GE_CLASS, id);
        while (r == 0 && p->pos < p->len && p->s[p->pos] != ']') {
            uint32_t lo, hi;
            if ((r = read_char(p, &lo)) < 0)
                break;
            hi = lo;
            if (p->pos + 1 < p->len && p->s[p->pos] == '-' && p->s[p->pos + 1] != ']') {
                p->pos++;
                if ((r = read_char(p, &hi)) < 0)
                    break;
                if (hi < lo) {
                    r = fail(p, "a character range goes backwards");
                    break;
                }
            }
            r = class_range(p, lo, hi);
        }
        if (r == 0 && p->pos >= p->len)
            r = fail(p, "unterminated character class");
        p->pos++;
    } else if (c == '.') {
        p->pos++;
        if ((r = class_new(p, true, &id)) == 0)
            r = elvec_push(p, &frag, GE_CLASS, id); /* negated empty class: any character */
    } else if (c == '(') {
        if (++p->depth > GRAMMAR_MAX_NESTING) {
            r = fail(p, "parentheses nest deeper than 64");
        } else {
            p->pos++;
            if ((r = rule_new(p, NULL, 0, &id)) == 0 && (r = parse_alternates(p, id)) == 0) {
                skip_space(p);
                if (p->pos >= p->len || p->s[p->pos] != ')')
                    r = fail(p, "expected ')'");
                else
                    p->pos++;
            }
            if (r == 0)
                r = elvec_push(p, &frag, GE_REF, id);
            p->depth--;
        }
    } else if (is_name_char(c)) {
        size_t n = name_len_at(p, p->pos);
        if ((r = rule_lookup(p, p->s + p->pos, n, &id)) == 0)
            r = elvec_push(p, &frag, GE_REF, id);
        p->pos += n;
    } else {
        r = fail(p, "expected a literal, a [class], '.', a rule name or '('");
    }
    if (r < 0)
        goto out;

    /* postfix */
    uint32_t min = 1, max = 1;
    if (p->pos < p->len) {
        c = p->s[p->pos];
        if (c == '*' || c == '+' || c == '?') {
            p->pos++;
            min = c == '+' ? 1 : 0;
            max = c == '?' ? 1 : UINT32_MAX;
        } else if (c == '{') {
            p->pos++;
            if ((r = read_count(p, &min)) < 0)
                goto out;
            max = min;
            if (p->pos < p->len && p->s[p->pos] == ',') {
                p->pos++;
                max = UINT32_MAX;
                if (p->pos < p->len && p->s[p->pos] != '}' && (r = read_count(p, &max)) < 0)
                    goto out;
            }
            if (p->pos >= p->len || p->s[p->pos] != '}') {
                r = fail(p, "expected '}'");
                goto out;
            }
            p->pos++;
            if (max < min) {
                r = fail(p, "{m,n} with n < m");
                goto out;
            }
        }
    }
    if (min == 1 && max == 1) {
        r = elvec_append(p, seq, frag.el, frag.n);
        goto out;
    }
    struct gelem x = frag.n ? frag.el[0] : (struct gelem){GE_END, 0};
    if (frag.n != 1) {
        /* a literal of several characters (or none) repeats as one rule */
        if ((r = rule_new(p, NULL, 0, &id)) < 0 || (r = rule_add_alt(p, id, frag.el, frag.n)) < 0)
            goto out;
        x = (struct gelem){GE_REF, id};
    }
    r = emit_repeat(p, seq, x, min, max);
out:
    free(frag.el);
    return r;
}

static int parse_sequence(struct parser *p, struct elvec *seq)
{
    for (;;) {
        skip_space(p);
        if (p->pos >= p->len)
            return 0;
        char c = p->s[p->pos];
        if (c == '|' || c == ')' || rule_start_at(p, p->pos))
            return 0;
        int r = parse_item(p, seq);
        if (r < 0)
            return r;
    }
}

static int parse_alternates(struct parser *p, uint32_t rule)
{
    for (;;) {
        struct elvec seq = {0};
        int r = parse_sequence(p, &seq);
        if (r == 0)
            r = rule_add_alt(p, rule, seq.el, seq.n);
        free(seq.el);
        if (r < 0)
            return r;
        skip_space(p);
        if (p->pos < p->len && p->s[p->pos] == '|') {
            p->pos++;
            continue;
        }
        return 0;
    }
}

/* ---- checks and flattening ---- */

/* Left recursion: a DFS over "can start with" edges (rule r -> rule x when
 * an alternative of r reaches a reference to x through nullable elements
 * only). Linear in the grammar's size. */
static int check_left_recursion(struct parser *p, ifd_error *err)
{
    size_t n = p->n_rules, n_edges = 0;
    bool *nullable = calloc(n, 1);
    uint8_t *mark = calloc(n, 1);              /* 0 new, 1 on the path, 2 done */
    uint32_t *edge_first = calloc(n + 1, sizeof(uint32_t));
    uint32_t *edges = NULL;
    uint32_t *stack = malloc(sizeof(uint32_t) * 2 * (n + 1));
    int rc = 0;
    for (size_t r = 0; r < n; r++)
        n_edges += p->rules[r].n;
    edges = malloc(sizeof(uint32_t) * (n_edges + 1));
    if (!nullable || !mark || !edge_first || !edges || !stack) {
        rc = ifd_error_set(err, -ENOMEM, "grammar: out of memory");
        goto out;
    }
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t r = 0; r < n; r++) {
            if (nullable[r])
                continue;
            const struct prule *pr = &p->rules[r];
            bool all = true;
            for (size_t i = 0; i < pr->n; i++) {
                if (pr->el[i].type == GE_END) {
                    if (all) {
                        nullable[r] = changed = true;
                        break;
                    }
                    all = true;
                } else if (pr->el[i].type == GE_CLASS || !nullable[pr->el[i].v]) {
                    all = false;
                }
            }
        }
    }
    n_edges = 0;
    for (size_t r = 0; r < n; r++) {
        const struct prule *pr = &p->rules[r];
        edge_first[r] = (uint32_t)n_edges;
        bool at_left = true; /* everything before this element is nullable */
        for (size_t i = 0; i < pr->n; i++) {
            const struct gelem *e = &pr->el[i];
            if (e->type == GE_END) {
                at_left = true;
                continue;
            }
            if (at_left && e->type == GE_REF)
                edges[n_edges++] = e->v;
            at_left = at_left && e->type == GE_REF && nullable[e->v];
        }
    }
    edge_first[n] = (uint32_t)n_edges;
    /* iterative DFS: stack of (rule, next edge) */
    for (size_t start = 0; start < n && rc == 0; start++) {
        if (mark[start])
            continue;
        size_t sp = 1;
        stack[0] = (uint32_t)start;
        stack[1] = edge_first[start];
        mark[start] = 1;
        while (sp > 0 && rc == 0) {
            uint32_t r = stack[2 * (sp - 1)];
            uint32_t *k = &stack[2 * (sp - 1) + 1];
            if (*k == edge_first[r + 1]) {
                mark[r] = 2;
                sp--;
                continue;
            }
            uint32_t next = edges[(*k)++];
            if (mark[next] == 1) {
                const char *nm = p->rules[next].name;
                if (nm)
                    rc = ifd_error_set(err, -EINVAL, "grammar: rule '%s' is left-recursive (it can reach itself before matching a character)", nm);
                else
                    rc = ifd_error_set(err, -EINVAL, "grammar: a repetition of something that can match nothing is left-recursive (write x* with a non-empty x)");
            } else if (mark[next] == 0) {
                mark[next] = 1;
                stack[2 * sp] = next;
                stack[2 * sp + 1] = edge_first[next];
                sp++;
            }
        }
    }
out:
    free(nullable);
    free(mark);
    free(edge_first);
    free(edges);
    free(stack);
    return rc;
}

static void parser_free(struct parser *p)
{
    for (size_t i = 0; i < p->n_rules; i++) {
        free(p->rules[i].name);
        free(p->rules[i].el);
    }
    free(p->rules);
    free(p->names);
    free(p->classes);
    free(p->ranges);
}

grammar *grammar_ref(grammar *g)
{
    if (g)
        __atomic_add_fetch(&g->refs, 1, __ATOMIC_RELAXED);
    return g;
}

void grammar_destroy(grammar *g)
{
    if (!g || __atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    free(g->el);
    free(g->alts);
    free(g->rules);
    free(g->classes);
    free(g->ranges);
    free(g);
}

int grammar_parse_gbnf(const char *text, size_t len, grammar **ret, ifd_error *err)
{
    if (len > GRAMMAR_MAX_TEXT)
        return ifd_error_set(err, -E2BIG, "grammar: %zu bytes; the limit is %d", len, GRAMMAR_MAX_TEXT);
    struct parser p = {.s = text, .len = len, .err = err};
    int r = 0;
    for (;;) {
        skip_space(&p);
        if (p.pos >= p.len)
            break;
        size_t n = name_len_at(&p, p.pos);
        if (!n || !rule_start_at(&p, p.pos)) {
            r = fail(&p, "expected a rule definition 'name ::= ...'");
            goto out;
        }
        uint32_t id;
        if ((r = rule_lookup(&p, p.s + p.pos, n, &id)) < 0)
            goto out;
        if (p.rules[id].defined) {
            r = fail(&p, "this rule is defined twice");
            goto out;
        }
        p.rules[id].defined = true;
        p.pos += n;
        skip_space(&p);
        p.pos += 3; /* ::= */
        if ((r = parse_alternates(&p, id)) < 0)
            goto out;
        skip_space(&p);
        if (p.pos < p.len && !rule_start_at(&p, p.pos)) {
            r = fail(&p, p.s[p.pos] == ')' ? "unbalanced ')'" : "unexpected character");
            goto out;
        }
    }
    uint32_t root = UINT32_MAX;
    for (size_t i = 0; i < p.n_rules; i++) {
        struct prule *pr = &p.rules[i];
        if (pr->name && !pr->defined) {
            int line, col;
            where(&p, pr->ref_pos, &line, &col);
            r = ifd_error_set(err, -EINVAL, "grammar line %d column %d: rule '%s' is used but not defined", line, col,
                              pr->name);
            goto out;
        }
        if (pr->name && strcmp(pr->name, "root") == 0)
            root = (uint32_t)i;
    }
    if (root == UINT32_MAX) {
        r = ifd_error_set(err, -EINVAL, "grammar: no 'root' rule");
        goto out;
    }
    if ((r = check_left_recursion(&p, err)) < 0)
        goto out;

    /* flatten */
    grammar *g = calloc(1, sizeof(*g));
    size_t n_el = 0, n_alts = 0;
    for (size_t i = 0; i < p.n_rules; i++) {
        n_el += p.rules[i].n;
        for (size_t k = 0; k < p.rules[i].n; k++)
            n_alts += p.rules[i].el[k].type == GE_END;
    }
    if (g) {
        g->el = malloc(sizeof(*g->el) * (n_el + 1));
        g->alts = malloc(sizeof(*g->alts) * (n_alts + 1));
        g->rules = malloc(sizeof(*g->rules) * p.n_rules);
    }
    if (!g || !g->el || !g->alts || !g->rules) {
        grammar_destroy(g);
        r = oom(&p);
        goto out;
    }
    size_t e = 0, a = 0;
    for (size_t i = 0; i < p.n_rules; i++) {
        g->rules[i].first_alt = (uint32_t)a;
        size_t start = e;
        for (size_t k = 0; k < p.rules[i].n; k++) {
            g->el[e++] = p.rules[i].el[k];
            if (p.rules[i].el[k].type == GE_END) {
                g->alts[a++] = (uint32_t)start;
                start = e;
            }
        }
        g->rules[i].n_alts = (uint32_t)a - g->rules[i].first_alt;
    }
    g->n_el = (uint32_t)n_el;
    g->n_rules = (uint32_t)p.n_rules;
    g->root = root;
    g->classes = p.classes;
    g->n_classes = (uint32_t)p.n_classes;
    g->ranges = p.ranges;
    p.classes = NULL;
    p.ranges = NULL;
    g->refs = 1;
    *ret = g;
out:
    parser_free(&p);
    return r;
}
