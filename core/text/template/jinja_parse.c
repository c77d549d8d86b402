/* jinja_parse.c - Jinja lexer and recursive-descent parser.
 *
 * The lexer applies whitespace control while it cuts text: `{%-`/`-%}` (and
 * the same on `{{ }}` and `{# #}`), plus trim_blocks (drop the first newline
 * after a block or comment tag) and lstrip_blocks (drop spaces and tabs
 * between the start of a line and a block or comment tag), which transformers
 * always turns on. The grammar and precedence follow Jinja2's parser:
 * condexpr < or < and < not < compare < +,- < ~ < *,/,//,% < ** < unary -
 * < postfix (. [] ()) and filters / tests. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja-internal.h"

enum tk_type {
    TK_EOF,
    TK_TEXT,
    TK_VAR_BEGIN,
    TK_VAR_END,
    TK_BLOCK_BEGIN,
    TK_BLOCK_END,
    TK_NAME,
    TK_STRING,
    TK_INT,
    TK_FLOAT,
    TK_OP,
};

struct token {
    enum tk_type type;
    uint32_t pos;
    struct jstr s; /* TEXT, NAME, OP; STRING: unescaped value */
    int64_t i;
    double f;
};

#define PARSE_MAX_DEPTH 128     /* nesting of expressions and blocks */
#define PARSE_MAX_TOKENS 4000000 /* a template of a few MB at most */

struct parser {
    struct jtemplate *t;
    struct jarena *arena;
    struct token *toks;
    size_t ntoks, cap, cur;
    int depth;
    uint32_t stmt_pos; /* where the '{%' of the statement being parsed starts */
    char *msg;
    size_t msg_size;
};

void jinja_line_col(const char *src, size_t len, uint32_t pos, int *ret_line, int *ret_col)
{
    int line = 1, col = 1;
    for (size_t i = 0; i < pos && i < len; i++) {
        if (src[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    *ret_line = line;
    *ret_col = col;
}

__attribute__((format(printf, 3, 4))) static int perr(struct parser *p, uint32_t pos, const char *fmt, ...)
{
    int line, col;
    jinja_line_col(p->t->src, p->t->len, pos, &line, &col);
    char tmp[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    snprintf(p->msg, p->msg_size, "template:%d:%d: %s", line, col, tmp);
    return -EINVAL;
}

static int oom(struct parser *p)
{
    snprintf(p->msg, p->msg_size, "template: out of memory while compiling");
    return -ENOMEM;
}

/* ---- lexer ---- */

static int tok_push(struct parser *p, struct token tk)
{
    if (p->ntoks == p->cap) {
        if (p->cap >= PARSE_MAX_TOKENS)
            return perr(p, tk.pos, "template too large (more than %d tokens)", PARSE_MAX_TOKENS);
        size_t cap = p->cap ? p->cap * 2 : 256;
        struct token *nt = realloc(p->toks, cap * sizeof(*nt));
        if (!nt)
            return oom(p);
        p->toks = nt;
        p->cap = cap;
    }
    p->toks[p->ntoks++] = tk;
    return 0;
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static bool is_name_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Emits the text [start, end) after whitespace control. strip_left: what the
 * previous tag asked for the start (0 nothing, 1 one newline, 2 all
 * whitespace); right: what the next tag asks for the end (0 nothing,
 * 1 lstrip_blocks, 2 all whitespace). */
static int emit_text(struct parser *p, size_t start, size_t end, int strip_left, int right)
{
    const char *s = p->t->src;
    if (strip_left == 2) {
        while (start < end && is_ws(s[start]))
            start++;
    } else if (strip_left == 1) {
        if (start < end && s[start] == '\n')
            start++;
    }
    if (right == 2) {
        while (end > start && is_ws(s[end - 1]))
            end--;
    } else if (right == 1) {
        /* Only when the tag is the first thing on its line. */
        size_t k = end;
        while (k > start && (s[k - 1] == ' ' || s[k - 1] == '\t'))
            k--;
        if (k == 0 || s[k - 1] == '\n' || s[k - 1] == '\r')
            end = k;
    }
    if (end <= start)
        return 0;
    return tok_push(p, (struct token){.type = TK_TEXT, .pos = (uint32_t)start, .s = {s + start, end - start}});
}

static int lex_string(struct parser *p, size_t *ip)
{
    const char *s = p->t->src;
    size_t i = *ip, n = p->t->len;
    char q = s[i];
    uint32_t pos = (uint32_t)i;
    i++;
    size_t start = i;
    bool has_escape = false;
    while (i < n && s[i] != q) {
        if (s[i] == '\\' && i + 1 < n) {
            has_escape = true;
            i++;
        }
        i++;
    }
    if (i >= n)
        return perr(p, pos, "unterminated string literal");
    struct token tk = {.type = TK_STRING, .pos = pos, .s = {s + start, i - start}};
    if (has_escape) {
        struct jbuf b = {.arena = p->arena, .limit = (size_t)-1};
        int rc = 0;
        for (size_t k = start; k < i && rc == 0; k++) {
            char c = s[k];
            if (c != '\\') {
                rc = jbuf_putc(&b, c);
                continue;
            }
            char e = s[++k];
            switch (e) {
            case 'n': rc = jbuf_putc(&b, '\n'); break;
            case 't': rc = jbuf_putc(&b, '\t'); break;
            case 'r': rc = jbuf_putc(&b, '\r'); break;
            case 'b': rc = jbuf_putc(&b, '\b'); break;
            case 'f': rc = jbuf_putc(&b, '\f'); break;
            case 'v': rc = jbuf_putc(&b, '\v'); break;
            case 'a': rc = jbuf_putc(&b, '\a'); break;
            case '0': rc = jbuf_putc(&b, '\0'); break;
            case '\\': case '\'': case '"': rc = jbuf_putc(&b, e); break;
            case '\n': break; /* line continuation */
            case 'x': case 'u': case 'U': {
                int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                uint32_t cp = 0; /* unsigned: \UFFFFFFFF fills all 32 bits */
                for (int d = 0; d < nd; d++) {
                    char h = k + 1 < i ? s[k + 1] : 0;
                    int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                          : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                    if (v < 0)
                        return perr(p, (uint32_t)k, "bad \\%c escape in string literal", e);
                    cp = cp * 16 + (uint32_t)v;
                    k++;
                }
                if (cp > 0x10ffff)
                    return perr(p, (uint32_t)k, "bad code point in string literal");
                rc = jutf8_put(&b, (int32_t)cp);
                break;
            }
            default:
                /* Python keeps unknown escapes as they are. */
                rc = jbuf_putc(&b, '\\');
                if (rc == 0)
                    rc = jbuf_putc(&b, e);
            }
        }
        if (rc < 0)
            return oom(p);
        tk.s = (struct jstr){b.p ? b.p : "", b.n};
    }
    *ip = i + 1;
    return tok_push(p, tk);
}

static int lex_number(struct parser *p, size_t *ip)
{
    const char *s = p->t->src;
    size_t i = *ip, n = p->t->len, start = i;
    bool is_float = false;
    while (i < n && (is_digit(s[i]) || s[i] == '_'))
        i++;
    if (i + 1 < n && s[i] == '.' && is_digit(s[i + 1])) {
        is_float = true;
        i++;
        while (i < n && is_digit(s[i]))
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        size_t k = i + 1;
        if (k < n && (s[k] == '+' || s[k] == '-'))
            k++;
        if (k < n && is_digit(s[k])) {
            is_float = true;
            i = k;
            while (i < n && is_digit(s[i]))
                i++;
        }
    }
    char tmp[64];
    size_t len = 0;
    for (size_t k = start; k < i && len < sizeof(tmp) - 1; k++)
        if (s[k] != '_')
            tmp[len++] = s[k];
    tmp[len] = '\0';
    struct token tk = {.pos = (uint32_t)start};
    if (is_float) {
        tk.type = TK_FLOAT;
        tk.f = strtod(tmp, NULL);
    } else {
        errno = 0;
        long long v = strtoll(tmp, NULL, 10);
        if (errno == ERANGE || i - start >= sizeof(tmp) - 1)
            return perr(p, (uint32_t)start, "integer literal out of range");
        tk.type = TK_INT;
        tk.i = v;
    }
    *ip = i;
    return tok_push(p, tk);
}

static const char *const two_char_ops[] = {"//", "**", "==", "!=", "<=", ">=", NULL};
static const char one_char_ops[] = "+-*/%~<>=()[]{}.,:|";

/* Lexes the inside of a {{ }} or {% %} tag starting at *ip. Sets *ret_right to
 * the whitespace control the closing tag asks for (1 trim_blocks newline,
 * 2 all whitespace, 0 nothing). */
static int lex_tag(struct parser *p, size_t *ip, uint32_t open_pos, bool block, int *ret_right)
{
    const char *s = p->t->src;
    size_t i = *ip, n = p->t->len;
    int balance = 0;
    for (;;) {
        while (i < n && is_ws(s[i]))
            i++;
        if (i >= n)
            return perr(p, open_pos, "unclosed %s tag", block ? "'{%'" : "'{{'");
        char c = s[i];
        const char *end = block ? "%}" : "}}";
        if (balance == 0) {
            if (c == '-' && i + 2 < n && s[i + 1] == end[0] && s[i + 2] == end[1]) {
                *ret_right = 2;
                i += 3;
                break;
            }
            if (c == '+' && i + 2 < n && s[i + 1] == end[0] && s[i + 2] == end[1]) {
                *ret_right = 0;
                i += 3;
                break;
            }
            if (c == end[0] && i + 1 < n && s[i + 1] == end[1]) {
                *ret_right = block ? 1 : 0;
                i += 2;
                break;
            }
        }
        if (!block && c == '%' && i + 1 < n && s[i + 1] == '}' && balance == 0)
            return perr(p, (uint32_t)i, "unexpected '%%}' inside '{{ }}'");
        if (block && c == '}' && i + 1 < n && s[i + 1] == '}' && balance == 0)
            return perr(p, (uint32_t)i, "unexpected '}}' inside '{%% %%}'");
        int rc;
        if (c == '\'' || c == '"') {
            rc = lex_string(p, &i);
        } else if (is_digit(c)) {
            rc = lex_number(p, &i);
        } else if (is_name_start(c)) {
            size_t start = i;
            while (i < n && (is_name_start(s[i]) || is_digit(s[i])))
                i++;
            rc = tok_push(p, (struct token){.type = TK_NAME, .pos = (uint32_t)start, .s = {s + start, i - start}});
        } else {
            size_t len = 0;
            for (int k = 0; two_char_ops[k]; k++)
                if (i + 1 < n && s[i] == two_char_ops[k][0] && s[i + 1] == two_char_ops[k][1])
                    len = 2;
            if (!len && strchr(one_char_ops, c) && c)
                len = 1;
            if (!len)
                return perr(p, (uint32_t)i, "unexpected character '%c'", c);
            if (c == '(' || c == '[' || c == '{')
                balance++;
            else if ((c == ')' || c == ']' || c == '}') && len == 1) {
                if (balance == 0)
                    return perr(p, (uint32_t)i, "unbalanced '%c'", c);
                balance--;
            }
            rc = tok_push(p, (struct token){.type = TK_OP, .pos = (uint32_t)i, .s = {s + i, len}});
            i += len;
        }
        if (rc < 0)
            return rc;
    }
    *ip = i;
    return 0;
}

/* Matches `{%[-+]? raw [-+]?%}` at s[i]; returns the length or 0. */
static size_t match_simple_tag(const char *s, size_t n, size_t i, const char *word, int *ret_left, int *ret_right)
{
    size_t k = i + 2, wl = strlen(word);
    int left = 0;
    if (k < n && (s[k] == '-' || s[k] == '+')) {
        left = s[k] == '-' ? 2 : -1;
        k++;
    }
    while (k < n && is_ws(s[k]))
        k++;
    if (k + wl > n || memcmp(s + k, word, wl) != 0)
        return 0;
    k += wl;
    while (k < n && is_ws(s[k]))
        k++;
    int right = 1;
    if (k < n && (s[k] == '-' || s[k] == '+')) {
        right = s[k] == '-' ? 2 : 0;
        k++;
    }
    if (k + 1 >= n || s[k] != '%' || s[k + 1] != '}')
        return 0;
    *ret_left = left;
    *ret_right = right;
    return k + 2 - i;
}

static int lex(struct parser *p)
{
    const char *s = p->t->src;
    size_t n = p->t->len, i = 0, text_start = 0;
    int strip_left = 0;
    /* Jinja2 drops one trailing newline of the source (keep_trailing_newline
     * is off in transformers); newlines are already "\n" here. */
    if (n > 0 && s[n - 1] == '\n')
        n--;
    while (i < n) {
        if (s[i] != '{' || i + 1 >= n || (s[i + 1] != '{' && s[i + 1] != '%' && s[i + 1] != '#')) {
            i++;
            continue;
        }
        char kind = s[i + 1];
        size_t tag = i;
        size_t k = i + 2;
        int left = kind == '{' ? 0 : 1; /* lstrip_blocks applies to blocks and comments */
        if (k < n && s[k] == '-') {
            left = 2;
            k++;
        } else if (k < n && s[k] == '+') {
            left = 0;
            k++;
        }
        int rc, right = 0;
        int raw_left, raw_right;
        size_t raw_len = kind == '%' ? match_simple_tag(s, n, tag, "raw", &raw_left, &raw_right) : 0;
        if ((rc = emit_text(p, text_start, tag, strip_left, left)) < 0)
            return rc;
        if (raw_len) {
            size_t body = tag + raw_len, e = body;
            size_t end_len = 0;
            int end_left = 0, end_right = 0;
            for (; e + 1 < n; e++)
                if (s[e] == '{' && s[e + 1] == '%' &&
                    (end_len = match_simple_tag(s, n, e, "endraw", &end_left, &end_right)))
                    break;
            if (!end_len)
                return perr(p, (uint32_t)tag, "unclosed 'raw' block (missing endraw)");
            if ((rc = emit_text(p, body, e, raw_right, end_left < 0 ? 0 : end_left)) < 0)
                return rc;
            i = text_start = e + end_len;
            strip_left = end_right;
            continue;
        }
        if (kind == '#') {
            size_t e = k;
            while (e + 1 < n && !(s[e] == '#' && s[e + 1] == '}'))
                e++;
            if (e + 1 >= n)
                return perr(p, (uint32_t)tag, "unclosed comment");
            right = e > k && s[e - 1] == '-' ? 2 : e > k && s[e - 1] == '+' ? 0 : 1;
            i = text_start = e + 2;
            strip_left = right;
            continue;
        }
        bool block = kind == '%';
        if ((rc = tok_push(p, (struct token){.type = block ? TK_BLOCK_BEGIN : TK_VAR_BEGIN, .pos = (uint32_t)tag})) < 0)
            return rc;
        if ((rc = lex_tag(p, &k, (uint32_t)tag, block, &right)) < 0)
            return rc;
        if ((rc = tok_push(p, (struct token){.type = block ? TK_BLOCK_END : TK_VAR_END, .pos = (uint32_t)(k - 2)})) < 0)
            return rc;
        i = text_start = k;
        strip_left = right;
    }
    int rc = emit_text(p, text_start, n, strip_left, 0);
    if (rc < 0)
        return rc;
    return tok_push(p, (struct token){.type = TK_EOF, .pos = (uint32_t)n});
}

/* ---- parser helpers ---- */

static struct token *peek(struct parser *p)
{
    return &p->toks[p->cur];
}

static struct token *peek_at(struct parser *p, size_t ahead)
{
    size_t k = p->cur + ahead;
    return &p->toks[k < p->ntoks ? k : p->ntoks - 1];
}

static struct token *next(struct parser *p)
{
    struct token *t = &p->toks[p->cur];
    if (t->type != TK_EOF)
        p->cur++;
    return t;
}

static bool is_op(const struct token *t, const char *op)
{
    return t->type == TK_OP && jstr_eq(t->s, op);
}

static bool is_name(const struct token *t, const char *name)
{
    return t->type == TK_NAME && jstr_eq(t->s, name);
}

static bool accept_op(struct parser *p, const char *op)
{
    if (is_op(peek(p), op)) {
        next(p);
        return true;
    }
    return false;
}

static bool accept_name(struct parser *p, const char *name)
{
    if (is_name(peek(p), name)) {
        next(p);
        return true;
    }
    return false;
}

static const char *tk_describe(const struct token *t, char *buf, size_t size)
{
    switch (t->type) {
    case TK_EOF: return "end of template";
    case TK_TEXT: return "template text";
    case TK_VAR_BEGIN: return "'{{'";
    case TK_VAR_END: return "'}}'";
    case TK_BLOCK_BEGIN: return "'{%'";
    case TK_BLOCK_END: return "'%}'";
    case TK_STRING: return "string literal";
    case TK_INT:
    case TK_FLOAT: return "number";
    default:
        snprintf(buf, size, "'%.*s'", (int)(t->s.n > 40 ? 40 : t->s.n), t->s.p);
        return buf;
    }
}

static int expect_op(struct parser *p, const char *op)
{
    if (accept_op(p, op))
        return 0;
    char b[64];
    return perr(p, peek(p)->pos, "expected '%s', got %s", op, tk_describe(peek(p), b, sizeof(b)));
}

static int expect_type(struct parser *p, enum tk_type type, const char *what)
{
    if (peek(p)->type == type) {
        next(p);
        return 0;
    }
    char b[64];
    return perr(p, peek(p)->pos, "expected %s, got %s", what, tk_describe(peek(p), b, sizeof(b)));
}

static struct jnode *node_new(struct parser *p, enum jn_kind kind, uint32_t pos)
{
    struct jnode *n = jarena_alloc(p->arena, sizeof(*n));
    if (n) {
        n->kind = kind;
        n->pos = pos;
    }
    return n;
}

/* A growable array of node pointers (and optional names) while parsing. */
struct nvec {
    struct jnode **v;
    struct jnode **v2;
    struct jstr *names;
    uint32_t n, cap;
};

static int nvec_push(struct parser *p, struct nvec *vec, struct jnode *node, struct jnode *node2, struct jstr name)
{
    if (vec->n == vec->cap) {
        uint32_t cap = vec->cap ? vec->cap * 2 : 4;
        struct jnode **v = jarena_alloc(p->arena, cap * sizeof(*v));
        struct jnode **v2 = jarena_alloc(p->arena, cap * sizeof(*v2));
        struct jstr *names = jarena_alloc(p->arena, cap * sizeof(*names));
        if (!v || !v2 || !names)
            return oom(p);
        if (vec->n) {
            memcpy(v, vec->v, vec->n * sizeof(*v));
            memcpy(v2, vec->v2, vec->n * sizeof(*v2));
            memcpy(names, vec->names, vec->n * sizeof(*names));
        }
        vec->v = v;
        vec->v2 = v2;
        vec->names = names;
        vec->cap = cap;
    }
    vec->v[vec->n] = node;
    vec->v2[vec->n] = node2;
    vec->names[vec->n] = name;
    vec->n++;
    return 0;
}

static int enter(struct parser *p)
{
    if (++p->depth > PARSE_MAX_DEPTH)
        return perr(p, peek(p)->pos, "nesting too deep (more than %d levels)", PARSE_MAX_DEPTH);
    return 0;
}

/* ---- expressions ---- */

static int parse_expr(struct parser *p, struct jnode **ret);
static int parse_tuple(struct parser *p, bool with_condexpr, struct jnode **ret);
static int parse_unary(struct parser *p, bool with_filter, struct jnode **ret);
static int parse_or(struct parser *p, struct jnode **ret);

/* Call arguments after '(' up to ')': positional in kids, keywords in names/kids2. */
static int parse_call_args(struct parser *p, struct jnode *call)
{
    struct nvec pos = {0}, kw = {0};
    int rc;
    while (!accept_op(p, ")")) {
        if (pos.n + kw.n > 0 && (rc = expect_op(p, ",")) < 0)
            return rc;
        if (accept_op(p, ")"))
            break;
        struct token *t = peek(p);
        if (t->type == TK_NAME && is_op(peek_at(p, 1), "=")) {
            next(p);
            next(p);
            struct jnode *v;
            if ((rc = parse_expr(p, &v)) < 0)
                return rc;
            if ((rc = nvec_push(p, &kw, NULL, v, t->s)) < 0)
                return rc;
        } else {
            if (kw.n)
                return perr(p, t->pos, "positional argument after keyword argument");
            struct jnode *v;
            if ((rc = parse_expr(p, &v)) < 0)
                return rc;
            if ((rc = nvec_push(p, &pos, v, NULL, (struct jstr){0})) < 0)
                return rc;
        }
    }
    call->kids = pos.v;
    call->nkids = pos.n;
    call->names = kw.names;
    call->kids2 = kw.v2;
    call->nnames = kw.n;
    return 0;
}

static int parse_primary(struct parser *p, struct jnode **ret)
{
    struct token *t = next(p);
    struct jnode *n = NULL;
    int rc;
    switch (t->type) {
    case TK_NAME:
        n = node_new(p, JN_CONST, t->pos);
        if (!n)
            return oom(p);
        if (jstr_eq(t->s, "true") || jstr_eq(t->s, "True")) {
            n->cval = jv_bool(true);
        } else if (jstr_eq(t->s, "false") || jstr_eq(t->s, "False")) {
            n->cval = jv_bool(false);
        } else if (jstr_eq(t->s, "none") || jstr_eq(t->s, "None")) {
            n->cval = jv_none();
        } else {
            n->kind = JN_NAME;
            n->name = t->s;
        }
        break;
    case TK_STRING: {
        n = node_new(p, JN_CONST, t->pos);
        if (!n)
            return oom(p);
        struct jstr s = t->s;
        /* Adjacent literals concatenate, as in Python. */
        if (peek(p)->type == TK_STRING) {
            struct jbuf b = {.arena = p->arena, .limit = (size_t)-1};
            if (jbuf_put(&b, s.p, s.n) < 0)
                return oom(p);
            while (peek(p)->type == TK_STRING) {
                struct token *t2 = next(p);
                if (jbuf_put(&b, t2->s.p, t2->s.n) < 0)
                    return oom(p);
            }
            s = (struct jstr){b.p, b.n};
        }
        n->cval = jv_str(s.p, s.n);
        break;
    }
    case TK_INT:
        if (!(n = node_new(p, JN_CONST, t->pos)))
            return oom(p);
        n->cval = jv_int(t->i);
        break;
    case TK_FLOAT:
        if (!(n = node_new(p, JN_CONST, t->pos)))
            return oom(p);
        n->cval = jv_float(t->f);
        break;
    case TK_OP:
        if (is_op(t, "(")) {
            if (accept_op(p, ")")) {
                if (!(n = node_new(p, JN_TUPLE, t->pos)))
                    return oom(p);
                break;
            }
            if ((rc = parse_tuple(p, true, &n)) < 0)
                return rc;
            if ((rc = expect_op(p, ")")) < 0)
                return rc;
            break;
        }
        if (is_op(t, "[") || is_op(t, "{")) {
            bool dict = is_op(t, "{");
            const char *close = dict ? "}" : "]";
            if (!(n = node_new(p, dict ? JN_DICT : JN_LIST, t->pos)))
                return oom(p);
            struct nvec items = {0};
            while (!accept_op(p, close)) {
                if (items.n && (rc = expect_op(p, ",")) < 0)
                    return rc;
                if (accept_op(p, close))
                    break;
                struct jnode *k, *v = NULL;
                if ((rc = parse_expr(p, &k)) < 0)
                    return rc;
                if (dict) {
                    if ((rc = expect_op(p, ":")) < 0 || (rc = parse_expr(p, &v)) < 0)
                        return rc;
                }
                if ((rc = nvec_push(p, &items, k, v, (struct jstr){0})) < 0)
                    return rc;
            }
            n->kids = items.v;
            n->kids2 = items.v2;
            n->nkids = items.n;
            break;
        }
        /* fallthrough */
    default: {
        char b[64];
        return perr(p, t->pos, "unexpected %s in expression", tk_describe(t, b, sizeof(b)));
    }
    }
    *ret = n;
    return 0;
}

/* One subscript: an expression or a slice a:b:c. */
static int parse_subscribed(struct parser *p, struct jnode **ret)
{
    uint32_t pos = peek(p)->pos;
    struct jnode *parts[3] = {NULL, NULL, NULL};
    int rc;
    if (!is_op(peek(p), ":")) {
        if ((rc = parse_expr(p, &parts[0])) < 0)
            return rc;
        if (!is_op(peek(p), ":")) {
            *ret = parts[0];
            return 0;
        }
    }
    next(p); /* ':' */
    if (!is_op(peek(p), "]") && !is_op(peek(p), ",") && !is_op(peek(p), ":"))
        if ((rc = parse_expr(p, &parts[1])) < 0)
            return rc;
    if (accept_op(p, ":"))
        if (!is_op(peek(p), "]") && !is_op(peek(p), ","))
            if ((rc = parse_expr(p, &parts[2])) < 0)
                return rc;
    struct jnode *n = node_new(p, JN_SLICE, pos);
    if (!n)
        return oom(p);
    n->a = parts[0];
    n->b = parts[1];
    n->c = parts[2];
    *ret = n;
    return 0;
}

static int parse_postfix(struct parser *p, struct jnode **io)
{
    int rc;
    for (;;) {
        struct token *t = peek(p);
        if (is_op(t, ".")) {
            next(p);
            struct token *a = next(p);
            struct jnode *n;
            if (a->type == TK_NAME) {
                if (!(n = node_new(p, JN_ATTR, a->pos)))
                    return oom(p);
                n->name = a->s;
            } else if (a->type == TK_INT) {
                /* foo.0 is foo[0] */
                if (!(n = node_new(p, JN_SUBSCRIPT, a->pos)) || !(n->b = node_new(p, JN_CONST, a->pos)))
                    return oom(p);
                n->b->cval = jv_int(a->i);
            } else {
                return perr(p, a->pos, "expected attribute name after '.'");
            }
            n->a = *io;
            *io = n;
        } else if (is_op(t, "[")) {
            next(p);
            struct jnode *n = node_new(p, JN_SUBSCRIPT, t->pos);
            if (!n)
                return oom(p);
            if ((rc = parse_subscribed(p, &n->b)) < 0)
                return rc;
            if (is_op(peek(p), ",")) {
                /* x[a, b]: a tuple key */
                struct jnode *tup = node_new(p, JN_TUPLE, t->pos);
                if (!tup)
                    return oom(p);
                struct nvec items = {0};
                if ((rc = nvec_push(p, &items, n->b, NULL, (struct jstr){0})) < 0)
                    return rc;
                while (accept_op(p, ",")) {
                    if (is_op(peek(p), "]"))
                        break;
                    struct jnode *e;
                    if ((rc = parse_subscribed(p, &e)) < 0 || (rc = nvec_push(p, &items, e, NULL, (struct jstr){0})) < 0)
                        return rc;
                }
                tup->kids = items.v;
                tup->nkids = items.n;
                n->b = tup;
            }
            if ((rc = expect_op(p, "]")) < 0)
                return rc;
            n->a = *io;
            *io = n;
        } else if (is_op(t, "(")) {
            next(p);
            struct jnode *n = node_new(p, JN_CALL, t->pos);
            if (!n)
                return oom(p);
            n->a = *io;
            if ((rc = parse_call_args(p, n)) < 0)
                return rc;
            *io = n;
        } else {
            return 0;
        }
    }
}

/* `| name(args)` filters and `is [not] name args` tests after a unary. */
static int parse_filter_expr(struct parser *p, struct jnode **io)
{
    int rc;
    for (;;) {
        struct token *t = peek(p);
        if (is_op(t, "|")) {
            next(p);
            struct token *name = next(p);
            if (name->type != TK_NAME)
                return perr(p, name->pos, "expected filter name after '|'");
            struct jnode *n = node_new(p, JN_FILTER, name->pos);
            if (!n)
                return oom(p);
            n->name = name->s;
            n->a = *io;
            if (accept_op(p, "(") && (rc = parse_call_args(p, n)) < 0)
                return rc;
            *io = n;
        } else if (is_name(t, "is")) {
            next(p);
            struct jnode *n = node_new(p, JN_TEST, t->pos);
            if (!n)
                return oom(p);
            if (accept_name(p, "not"))
                n->op = 1;
            struct token *name = next(p);
            if (name->type != TK_NAME)
                return perr(p, name->pos, "expected test name after 'is'");
            n->name = name->s;
            n->a = *io;
            struct token *nt = peek(p);
            if (is_op(nt, "(")) {
                next(p);
                if ((rc = parse_call_args(p, n)) < 0)
                    return rc;
            } else if ((nt->type == TK_NAME || nt->type == TK_STRING || nt->type == TK_INT || nt->type == TK_FLOAT ||
                        is_op(nt, "[") || is_op(nt, "{")) &&
                       !is_name(nt, "else") && !is_name(nt, "or") && !is_name(nt, "and") && !is_name(nt, "if") &&
                       !is_name(nt, "is") && !is_name(nt, "in") && !is_name(nt, "not")) {
                /* `x is divisibleby 3`, `x is equalto 'user'` */
                struct jnode *arg;
                if ((rc = parse_primary(p, &arg)) < 0 || (rc = parse_postfix(p, &arg)) < 0)
                    return rc;
                n->kids = jarena_alloc(p->arena, sizeof(*n->kids));
                if (!n->kids)
                    return oom(p);
                n->kids[0] = arg;
                n->nkids = 1;
            }
            *io = n;
        } else if (is_op(t, "(") || is_op(t, "[") || is_op(t, ".")) {
            if ((rc = parse_postfix(p, io)) < 0)
                return rc;
        } else {
            return 0;
        }
    }
}

static int parse_unary(struct parser *p, bool with_filter, struct jnode **ret)
{
    int rc = enter(p);
    if (rc < 0)
        return rc;
    struct token *t = peek(p);
    struct jnode *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        next(p);
        if (!(n = node_new(p, is_op(t, "-") ? JN_NEG : JN_POS, t->pos)))
            return oom(p);
        if ((rc = parse_unary(p, false, &n->a)) < 0)
            return rc;
    } else if ((rc = parse_primary(p, &n)) < 0) {
        return rc;
    }
    if ((rc = parse_postfix(p, &n)) < 0)
        return rc;
    if (with_filter && (rc = parse_filter_expr(p, &n)) < 0)
        return rc;
    p->depth--;
    *ret = n;
    return 0;
}

static int binop(struct parser *p, int op, uint32_t pos, struct jnode *l, struct jnode *r, struct jnode **ret)
{
    struct jnode *n = node_new(p, JN_BINOP, pos);
    if (!n)
        return oom(p);
    n->op = op;
    n->a = l;
    n->b = r;
    *ret = n;
    return 0;
}

static int parse_pow(struct parser *p, struct jnode **ret)
{
    struct jnode *l, *r;
    int rc = parse_unary(p, true, &l);
    while (rc == 0 && is_op(peek(p), "**")) {
        uint32_t pos = next(p)->pos;
        if ((rc = parse_unary(p, true, &r)) == 0)
            rc = binop(p, JOP_POW, pos, l, r, &l);
    }
    if (rc == 0)
        *ret = l;
    return rc;
}

static int parse_math2(struct parser *p, struct jnode **ret)
{
    struct jnode *l = NULL, *r;
    int rc = parse_pow(p, &l);
    for (;;) {
        if (rc < 0)
            return rc;
        struct token *t = peek(p);
        int op = is_op(t, "*") ? JOP_MUL : is_op(t, "/") ? JOP_DIV : is_op(t, "//") ? JOP_FLOORDIV
               : is_op(t, "%") ? JOP_MOD : 0;
        if (!op)
            break;
        next(p);
        if ((rc = parse_pow(p, &r)) == 0)
            rc = binop(p, op, t->pos, l, r, &l);
    }
    *ret = l;
    return 0;
}

static int parse_concat(struct parser *p, struct jnode **ret)
{
    struct jnode *first;
    int rc = parse_math2(p, &first);
    if (rc < 0)
        return rc;
    if (!is_op(peek(p), "~")) {
        *ret = first;
        return 0;
    }
    struct jnode *n = node_new(p, JN_CONCAT, peek(p)->pos);
    struct nvec parts = {0};
    if (!n)
        return oom(p);
    if ((rc = nvec_push(p, &parts, first, NULL, (struct jstr){0})) < 0)
        return rc;
    while (accept_op(p, "~")) {
        struct jnode *e;
        if ((rc = parse_math2(p, &e)) < 0 || (rc = nvec_push(p, &parts, e, NULL, (struct jstr){0})) < 0)
            return rc;
    }
    n->kids = parts.v;
    n->nkids = parts.n;
    *ret = n;
    return 0;
}

static int parse_math1(struct parser *p, struct jnode **ret)
{
    struct jnode *l = NULL, *r;
    int rc = parse_concat(p, &l);
    for (;;) {
        if (rc < 0)
            return rc;
        struct token *t = peek(p);
        int op = is_op(t, "+") ? JOP_ADD : is_op(t, "-") ? JOP_SUB : 0;
        if (!op)
            break;
        next(p);
        if ((rc = parse_concat(p, &r)) == 0)
            rc = binop(p, op, t->pos, l, r, &l);
    }
    *ret = l;
    return 0;
}

static int parse_compare(struct parser *p, struct jnode **ret)
{
    struct jnode *first;
    int rc = parse_math1(p, &first);
    if (rc < 0)
        return rc;
    struct nvec operands = {0};
    int ops[64];
    uint32_t pos = peek(p)->pos;
    for (;;) {
        struct token *t = peek(p);
        int op = is_op(t, "==") ? JOP_EQ : is_op(t, "!=") ? JOP_NE : is_op(t, "<") ? JOP_LT
               : is_op(t, "<=") ? JOP_LE : is_op(t, ">") ? JOP_GT : is_op(t, ">=") ? JOP_GE
               : is_name(t, "in") ? JOP_IN : 0;
        if (!op && is_name(t, "not") && is_name(peek_at(p, 1), "in")) {
            next(p);
            op = JOP_NOTIN;
        }
        if (!op)
            break;
        next(p);
        if (operands.n >= 64)
            return perr(p, t->pos, "comparison chain too long");
        struct jnode *e;
        if ((rc = parse_math1(p, &e)) < 0 || (rc = nvec_push(p, &operands, e, NULL, (struct jstr){0})) < 0)
            return rc;
        ops[operands.n - 1] = op;
    }
    if (!operands.n) {
        *ret = first;
        return 0;
    }
    struct jnode *n = node_new(p, JN_COMPARE, pos);
    if (!n || !(n->ops = jarena_alloc(p->arena, operands.n * sizeof(int))))
        return oom(p);
    memcpy(n->ops, ops, operands.n * sizeof(int));
    n->a = first;
    n->kids = operands.v;
    n->nkids = operands.n;
    *ret = n;
    return 0;
}

static int parse_not(struct parser *p, struct jnode **ret)
{
    struct token *t = peek(p);
    if (is_name(t, "not")) {
        next(p);
        int rc = enter(p);
        if (rc < 0)
            return rc;
        struct jnode *n = node_new(p, JN_NOT, t->pos);
        if (!n)
            return oom(p);
        if ((rc = parse_not(p, &n->a)) < 0)
            return rc;
        p->depth--;
        *ret = n;
        return 0;
    }
    return parse_compare(p, ret);
}

static int parse_and(struct parser *p, struct jnode **ret)
{
    struct jnode *l;
    int rc = parse_not(p, &l);
    while (rc == 0 && is_name(peek(p), "and")) {
        struct jnode *n = node_new(p, JN_AND, next(p)->pos);
        if (!n)
            return oom(p);
        n->a = l;
        rc = parse_not(p, &n->b);
        l = n;
    }
    if (rc == 0)
        *ret = l;
    return rc;
}

static int parse_or(struct parser *p, struct jnode **ret)
{
    struct jnode *l;
    int rc = parse_and(p, &l);
    while (rc == 0 && is_name(peek(p), "or")) {
        struct jnode *n = node_new(p, JN_OR, next(p)->pos);
        if (!n)
            return oom(p);
        n->a = l;
        rc = parse_and(p, &n->b);
        l = n;
    }
    if (rc == 0)
        *ret = l;
    return rc;
}

static int parse_condexpr(struct parser *p, struct jnode **ret)
{
    struct jnode *v;
    int rc = parse_or(p, &v);
    while (rc == 0 && is_name(peek(p), "if")) {
        struct jnode *n = node_new(p, JN_CONDEXPR, next(p)->pos);
        if (!n)
            return oom(p);
        n->a = v;
        if ((rc = parse_or(p, &n->b)) < 0)
            return rc;
        if (accept_name(p, "else") && (rc = parse_condexpr(p, &n->c)) < 0)
            return rc;
        v = n;
    }
    if (rc == 0)
        *ret = v;
    return rc;
}

static int parse_expr(struct parser *p, struct jnode **ret)
{
    int rc = enter(p);
    if (rc < 0)
        return rc;
    rc = parse_condexpr(p, ret);
    p->depth--;
    return rc;
}

/* expr or expr, expr, ... (a tuple). with_condexpr false: `for x in y if c`
 * keeps the `if` for the loop filter. */
static int parse_tuple(struct parser *p, bool with_condexpr, struct jnode **ret)
{
    uint32_t pos = peek(p)->pos;
    struct jnode *first;
    int rc = with_condexpr ? parse_expr(p, &first) : parse_or(p, &first);
    if (rc < 0)
        return rc;
    if (!is_op(peek(p), ",")) {
        *ret = first;
        return 0;
    }
    struct nvec items = {0};
    if ((rc = nvec_push(p, &items, first, NULL, (struct jstr){0})) < 0)
        return rc;
    while (accept_op(p, ",")) {
        struct token *t = peek(p);
        if (t->type == TK_VAR_END || t->type == TK_BLOCK_END || is_op(t, ")") || is_name(t, "if"))
            break;
        struct jnode *e;
        if ((rc = with_condexpr ? parse_expr(p, &e) : parse_or(p, &e)) < 0)
            return rc;
        if ((rc = nvec_push(p, &items, e, NULL, (struct jstr){0})) < 0)
            return rc;
    }
    struct jnode *n = node_new(p, JN_TUPLE, pos);
    if (!n)
        return oom(p);
    n->kids = items.v;
    n->nkids = items.n;
    *ret = n;
    return 0;
}

/* ---- statements ---- */

static int parse_body(struct parser *p, uint32_t open_pos, const char *const *end_tags, struct jnode **ret, struct jstr *ret_end);

static int expect_block_end(struct parser *p)
{
    return expect_type(p, TK_BLOCK_END, "'%}'");
}

/* Names separated by commas, optionally in parentheses (for targets, macro params). */
static int parse_target_names(struct parser *p, struct nvec *names)
{
    int rc;
    bool paren = accept_op(p, "(");
    do {
        struct token *t = next(p);
        if (t->type != TK_NAME)
            return perr(p, t->pos, "expected a variable name");
        if ((rc = nvec_push(p, names, NULL, NULL, t->s)) < 0)
            return rc;
    } while (accept_op(p, ","));
    if (paren && (rc = expect_op(p, ")")) < 0)
        return rc;
    return 0;
}

/* (a, b=default, ...) of a macro or call block. */
static int parse_params(struct parser *p, struct jnode *n)
{
    struct nvec params = {0};
    int rc;
    if (accept_op(p, "(")) {
        while (!accept_op(p, ")")) {
            if (params.n && (rc = expect_op(p, ",")) < 0)
                return rc;
            struct token *t = next(p);
            if (t->type != TK_NAME)
                return perr(p, t->pos, "expected a parameter name");
            struct jnode *def = NULL;
            if (accept_op(p, "=") && (rc = parse_expr(p, &def)) < 0)
                return rc;
            if ((rc = nvec_push(p, &params, NULL, def, t->s)) < 0)
                return rc;
        }
    }
    n->names = params.names;
    n->kids2 = params.v2;
    n->nnames = params.n;
    return 0;
}

/* `| f(args) | g` after a filter block or block set, applied to JN_BLOCK_INPUT. */
static int parse_block_filters(struct parser *p, uint32_t pos, bool need_one, struct jnode **ret)
{
    struct jnode *in = node_new(p, JN_BLOCK_INPUT, pos);
    if (!in)
        return oom(p);
    struct jnode *chain = in;
    int rc;
    bool first = true;
    while (first ? (need_one || accept_op(p, "|")) : accept_op(p, "|")) {
        first = false;
        struct token *name = next(p);
        if (name->type != TK_NAME)
            return perr(p, name->pos, "expected filter name");
        struct jnode *f = node_new(p, JN_FILTER, name->pos);
        if (!f)
            return oom(p);
        f->name = name->s;
        f->a = chain;
        if (accept_op(p, "(") && (rc = parse_call_args(p, f)) < 0)
            return rc;
        chain = f;
    }
    *ret = chain == in ? NULL : chain;
    return 0;
}

static const char *const end_if[] = {"elif", "else", "endif", NULL};
static const char *const end_for[] = {"else", "endfor", NULL};
static const char *const end_endfor[] = {"endfor", NULL};

static int parse_if(struct parser *p, uint32_t pos, struct jnode **ret)
{
    struct jnode *n = node_new(p, JN_IF, pos);
    if (!n)
        return oom(p);
    int rc;
    struct jstr end;
    if ((rc = parse_tuple(p, true, &n->a)) < 0 || (rc = expect_block_end(p)) < 0)
        return rc;
    if ((rc = parse_body(p, pos, end_if, &n->b, &end)) < 0)
        return rc;
    if (jstr_eq(end, "elif")) {
        rc = parse_if(p, peek(p)->pos, &n->c);
        *ret = n;
        return rc; /* the elif chain consumed the endif */
    }
    if (jstr_eq(end, "else")) {
        static const char *const end_else[] = {"endif", NULL};
        if ((rc = expect_block_end(p)) < 0 || (rc = parse_body(p, pos, end_else, &n->c, &end)) < 0)
            return rc;
    }
    if ((rc = expect_block_end(p)) < 0)
        return rc;
    *ret = n;
    return 0;
}

static int parse_for(struct parser *p, uint32_t pos, struct jnode **ret)
{
    struct jnode *n = node_new(p, JN_FOR, pos);
    if (!n)
        return oom(p);
    struct nvec names = {0};
    int rc;
    if ((rc = parse_target_names(p, &names)) < 0)
        return rc;
    n->names = names.names;
    n->nnames = names.n;
    if (!accept_name(p, "in"))
        return perr(p, peek(p)->pos, "expected 'in' in for loop");
    if ((rc = parse_tuple(p, false, &n->a)) < 0)
        return rc;
    if (accept_name(p, "if") && (rc = parse_expr(p, &n->d)) < 0)
        return rc;
    if (is_name(peek(p), "recursive"))
        return perr(p, peek(p)->pos, "unsupported: recursive for loops");
    struct jstr end;
    if ((rc = expect_block_end(p)) < 0 || (rc = parse_body(p, pos, end_for, &n->b, &end)) < 0)
        return rc;
    if (jstr_eq(end, "else")) {
        if ((rc = expect_block_end(p)) < 0 || (rc = parse_body(p, pos, end_endfor, &n->c, &end)) < 0)
            return rc;
    }
    if ((rc = expect_block_end(p)) < 0)
        return rc;
    *ret = n;
    return 0;
}

static int parse_set(struct parser *p, uint32_t pos, struct jnode **ret)
{
    int rc;
    struct token *t = next(p);
    if (t->type != TK_NAME)
        return perr(p, t->pos, "expected a variable name after 'set'");
    struct jnode *target = node_new(p, JN_NAME, t->pos);
    if (!target)
        return oom(p);
    target->name = t->s;
    if (accept_op(p, ".")) {
        /* ns.attr = ... */
        struct token *a = next(p);
        if (a->type != TK_NAME)
            return perr(p, a->pos, "expected attribute name after '.'");
        struct jnode *attr = node_new(p, JN_ATTR, a->pos);
        if (!attr)
            return oom(p);
        attr->a = target;
        attr->name = a->s;
        target = attr;
    } else if (is_op(peek(p), ",")) {
        struct nvec items = {0};
        if ((rc = nvec_push(p, &items, target, NULL, (struct jstr){0})) < 0)
            return rc;
        while (accept_op(p, ",")) {
            struct token *nt = next(p);
            struct jnode *e = node_new(p, JN_NAME, nt->pos);
            if (!e)
                return oom(p);
            if (nt->type != TK_NAME)
                return perr(p, nt->pos, "expected a variable name");
            e->name = nt->s;
            if ((rc = nvec_push(p, &items, e, NULL, (struct jstr){0})) < 0)
                return rc;
        }
        struct jnode *tup = node_new(p, JN_TUPLE, t->pos);
        if (!tup)
            return oom(p);
        tup->kids = items.v;
        tup->nkids = items.n;
        target = tup;
    }
    if (accept_op(p, "=")) {
        struct jnode *n = node_new(p, JN_SET, pos);
        if (!n)
            return oom(p);
        n->a = target;
        if ((rc = parse_tuple(p, true, &n->b)) < 0 || (rc = expect_block_end(p)) < 0)
            return rc;
        *ret = n;
        return 0;
    }
    if (target->kind != JN_NAME)
        return perr(p, t->pos, "block set needs a single variable name");
    struct jnode *n = node_new(p, JN_SET_BLOCK, pos);
    if (!n)
        return oom(p);
    n->a = target;
    static const char *const end_set[] = {"endset", NULL};
    struct jstr end;
    if ((rc = parse_block_filters(p, pos, false, &n->c)) < 0 || (rc = expect_block_end(p)) < 0 ||
        (rc = parse_body(p, pos, end_set, &n->b, &end)) < 0 || (rc = expect_block_end(p)) < 0)
        return rc;
    *ret = n;
    return 0;
}

static int parse_statement(struct parser *p, struct jnode **ret)
{
    struct token *kw = next(p);
    uint32_t pos = p->stmt_pos;
    int rc;
    struct jstr end;
    if (kw->type != TK_NAME)
        return perr(p, pos, "expected a tag name after '{%%'");
    if (jstr_eq(kw->s, "if"))
        return parse_if(p, pos, ret);
    if (jstr_eq(kw->s, "for"))
        return parse_for(p, pos, ret);
    if (jstr_eq(kw->s, "set"))
        return parse_set(p, pos, ret);
    if (jstr_eq(kw->s, "break") || jstr_eq(kw->s, "continue")) {
        struct jnode *n = node_new(p, jstr_eq(kw->s, "break") ? JN_BREAK : JN_CONTINUE, pos);
        if (!n)
            return oom(p);
        *ret = n;
        return expect_block_end(p);
    }
    if (jstr_eq(kw->s, "macro")) {
        struct token *name = next(p);
        if (name->type != TK_NAME)
            return perr(p, name->pos, "expected macro name");
        struct jnode *n = node_new(p, JN_MACRO, pos);
        if (!n)
            return oom(p);
        n->name = name->s;
        static const char *const end_macro[] = {"endmacro", NULL};
        if ((rc = parse_params(p, n)) < 0 || (rc = expect_block_end(p)) < 0 ||
            (rc = parse_body(p, pos, end_macro, &n->b, &end)) < 0)
            return rc;
        if (peek(p)->type == TK_NAME)
            next(p); /* {% endmacro name %} */
        *ret = n;
        return expect_block_end(p);
    }
    if (jstr_eq(kw->s, "call")) {
        struct jnode *n = node_new(p, JN_CALL_BLOCK, pos);
        if (!n)
            return oom(p);
        if (is_op(peek(p), "(") && (rc = parse_params(p, n)) < 0)
            return rc;
        if ((rc = parse_expr(p, &n->a)) < 0)
            return rc;
        if (n->a->kind != JN_CALL)
            return perr(p, n->a->pos, "expected a macro call after 'call'");
        static const char *const end_call[] = {"endcall", NULL};
        if ((rc = expect_block_end(p)) < 0 || (rc = parse_body(p, pos, end_call, &n->b, &end)) < 0)
            return rc;
        *ret = n;
        return expect_block_end(p);
    }
    if (jstr_eq(kw->s, "filter")) {
        struct jnode *n = node_new(p, JN_FILTER_BLOCK, pos);
        if (!n)
            return oom(p);
        static const char *const end_filter[] = {"endfilter", NULL};
        if ((rc = parse_block_filters(p, pos, true, &n->a)) < 0 || (rc = expect_block_end(p)) < 0 ||
            (rc = parse_body(p, pos, end_filter, &n->b, &end)) < 0)
            return rc;
        *ret = n;
        return expect_block_end(p);
    }
    if (jstr_eq(kw->s, "with")) {
        struct jnode *n = node_new(p, JN_WITH, pos);
        if (!n)
            return oom(p);
        struct nvec vars = {0};
        while (peek(p)->type != TK_BLOCK_END) {
            if (vars.n && (rc = expect_op(p, ",")) < 0)
                return rc;
            struct token *name = next(p);
            if (name->type != TK_NAME)
                return perr(p, name->pos, "expected a variable name in 'with'");
            struct jnode *v;
            if ((rc = expect_op(p, "=")) < 0 || (rc = parse_expr(p, &v)) < 0)
                return rc;
            if ((rc = nvec_push(p, &vars, NULL, v, name->s)) < 0)
                return rc;
        }
        n->names = vars.names;
        n->kids2 = vars.v2;
        n->nnames = vars.n;
        static const char *const end_with[] = {"endwith", NULL};
        if ((rc = expect_block_end(p)) < 0 || (rc = parse_body(p, pos, end_with, &n->b, &end)) < 0)
            return rc;
        *ret = n;
        return expect_block_end(p);
    }
    if (jstr_eq(kw->s, "generation")) {
        /* transformers' {% generation %} marks assistant text for masks; it
         * renders its body unchanged. */
        static const char *const end_gen[] = {"endgeneration", NULL};
        if ((rc = expect_block_end(p)) < 0 || (rc = parse_body(p, pos, end_gen, ret, &end)) < 0)
            return rc;
        return expect_block_end(p);
    }
    return perr(p, pos, "unsupported tag '%.*s'", (int)(kw->s.n > 40 ? 40 : kw->s.n), kw->s.p);
}

/* Parses statements until one of end_tags (NULL: until EOF). Leaves the end
 * tag's name consumed and its '%}' pending; *ret_end is that name. open_pos:
 * the opening statement, for the message when the end tag is missing. */
static int parse_body(struct parser *p, uint32_t open_pos, const char *const *end_tags, struct jnode **ret, struct jstr *ret_end)
{
    int rc = enter(p);
    if (rc < 0)
        return rc;
    struct jnode *body = node_new(p, JN_BODY, peek(p)->pos);
    if (!body)
        return oom(p);
    struct nvec stmts = {0};
    for (;;) {
        struct token *t = peek(p);
        struct jnode *n = NULL;
        if (t->type == TK_EOF) {
            if (end_tags) {
                int last = 0;
                while (end_tags[last + 1])
                    last++;
                return perr(p, open_pos, "unclosed block: expected '{%% %s %%}' before the end of the template",
                            end_tags[last]);
            }
            break;
        }
        if (t->type == TK_TEXT) {
            next(p);
            if (!(n = node_new(p, JN_TEXT, t->pos)))
                return oom(p);
            n->name = t->s;
        } else if (t->type == TK_VAR_BEGIN) {
            next(p);
            if (!(n = node_new(p, JN_OUTPUT, t->pos)))
                return oom(p);
            if ((rc = parse_tuple(p, true, &n->a)) < 0 || (rc = expect_type(p, TK_VAR_END, "'}}'")) < 0)
                return rc;
        } else if (t->type == TK_BLOCK_BEGIN) {
            struct token *kw = peek_at(p, 1);
            if (kw->type == TK_NAME && end_tags) {
                bool is_end = false;
                for (int k = 0; end_tags[k]; k++)
                    if (jstr_eq(kw->s, end_tags[k]))
                        is_end = true;
                if (is_end) {
                    next(p);
                    next(p);
                    *ret_end = kw->s;
                    break;
                }
            }
            if (kw->type == TK_NAME && (jstr_eq(kw->s, "endif") || jstr_eq(kw->s, "endfor") ||
                                        jstr_eq(kw->s, "elif") || jstr_eq(kw->s, "else") ||
                                        jstr_eq(kw->s, "endmacro") || jstr_eq(kw->s, "endset") ||
                                        jstr_eq(kw->s, "endcall") || jstr_eq(kw->s, "endfilter") ||
                                        jstr_eq(kw->s, "endwith") || jstr_eq(kw->s, "endraw") ||
                                        jstr_eq(kw->s, "endgeneration")))
                return perr(p, kw->pos, "unexpected '%.*s'", (int)kw->s.n, kw->s.p);
            next(p);
            p->stmt_pos = t->pos;
            if ((rc = parse_statement(p, &n)) < 0)
                return rc;
        } else {
            char b[64];
            return perr(p, t->pos, "unexpected %s", tk_describe(t, b, sizeof(b)));
        }
        if ((rc = nvec_push(p, &stmts, n, NULL, (struct jstr){0})) < 0)
            return rc;
    }
    body->kids = stmts.v;
    body->nkids = stmts.n;
    p->depth--;
    *ret = body;
    return 0;
}

int jinja_parse(struct jtemplate *t, char *msg, size_t msg_size)
{
    struct parser p = {.t = t, .arena = t->arena, .msg = msg, .msg_size = msg_size};
    int rc = lex(&p);
    if (rc == 0) {
        struct jstr end = {0};
        rc = parse_body(&p, 0, NULL, &t->root, &end);
    }
    free(p.toks);
    return rc;
}
