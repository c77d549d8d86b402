/* jinja-internal.h - the Jinja subset behind chat_template.h.
 *
 * Layers: jinja_value.c (arena, values, Python-style str/repr/tojson,
 * equality, cJSON conversion) <- jinja_parse.c (lexer and parser: source ->
 * AST) <- chat_template.c (evaluator, filters, tests, methods, public API).
 *
 * Memory: everything a compile produces (AST, literals) lives in the
 * template's arena; everything a render produces (values, frames, output
 * buffers) lives in a per-render arena with a byte limit, freed in one go.
 * Nothing inside is freed individually, which keeps error paths trivial. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* ---- arena ---- */

struct jarena;
struct jarena *jarena_create(size_t limit); /* limit: total bytes it may hand out */
void jarena_destroy(struct jarena *a);      /* accepts NULL */
/* Returns NULL when the limit is reached or malloc fails (zeroed memory). */
void *jarena_alloc(struct jarena *a, size_t size);

/* ---- values ---- */

struct jstr {
    const char *p; /* not NUL-terminated */
    size_t n;
};

enum jv_kind {
    JV_UNDEF, /* Jinja2 Undefined: prints empty, falsy, iterates empty */
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST, /* also tuples (jlist.tuple) */
    JV_DICT,
    JV_NS,    /* namespace(): a dict whose attributes can be assigned */
    JV_MACRO, /* a macro or a call block's caller() */
    JV_LOOP,  /* the `loop` variable of a for loop */
    JV_FUNC,  /* a global function (range, namespace, raise_exception ...) */
};

struct jlist;
struct jdict;
struct jmacro;
struct jloop;
struct jnode;

struct jv {
    enum jv_kind kind;
    /* JV_UNDEF from a failed lookup: 1 + the kind of the object looked into
     * (for the message when the value is used); 0 otherwise. */
    uint32_t aux;
    union {
        bool b;
        int64_t i;
        double f;
        struct jstr s;       /* JV_STR */
        const struct jnode *origin; /* JV_UNDEF: the expression that produced it, or NULL */
        struct jlist *l;     /* JV_LIST */
        struct jdict *d;     /* JV_DICT, JV_NS */
        struct jmacro *m;    /* JV_MACRO */
        struct jloop *loop;  /* JV_LOOP */
        int func;            /* JV_FUNC: index into the evaluator's function table */
    };
};

struct jlist {
    struct jv *items;
    size_t n, cap;
    bool tuple;
};

/* Ordered; small dicts are the rule, so lookup is linear (last key wins). */
struct jdict {
    struct jstr *keys;
    struct jv *vals;
    size_t n, cap;
};

static inline struct jv jv_undef(void) { return (struct jv){.kind = JV_UNDEF}; }
static inline struct jv jv_none(void) { return (struct jv){.kind = JV_NONE}; }
static inline struct jv jv_bool(bool b) { return (struct jv){.kind = JV_BOOL, .b = b}; }
static inline struct jv jv_int(int64_t i) { return (struct jv){.kind = JV_INT, .i = i}; }
static inline struct jv jv_float(double f) { return (struct jv){.kind = JV_FLOAT, .f = f}; }
static inline struct jv jv_str(const char *p, size_t n) { return (struct jv){.kind = JV_STR, .s = {p, n}}; }

struct jlist *jlist_new(struct jarena *a, size_t cap);
int jlist_push(struct jarena *a, struct jlist *l, struct jv v); /* -ENOMEM at the arena limit */
struct jdict *jdict_new(struct jarena *a, size_t cap);
/* Replaces the value of an existing key, else appends. */
int jdict_set(struct jarena *a, struct jdict *d, struct jstr key, struct jv v);
/* NULL when absent. */
struct jv *jdict_get(const struct jdict *d, const char *key, size_t n);

bool jv_truthy(struct jv v);
/* Python ==; depth-limited (cyclic or absurdly deep values compare unequal). */
bool jv_equal(struct jv a, struct jv b);
const char *jv_type_name(struct jv v);
bool jstr_eq(struct jstr a, const char *lit);

/* A growable byte buffer in an arena, with its own size limit. */
struct jbuf {
    struct jarena *arena;
    char *p;
    size_t n, cap, limit;
};
/* -ENOMEM at the arena limit, -EFBIG past buf->limit. */
int jbuf_put(struct jbuf *b, const char *p, size_t n);
int jbuf_putc(struct jbuf *b, char c);

/* Python str() of a value into b (strings raw, None -> "None", lists as repr).
 * Returns -ELOOP when nesting is deeper than JV_MAX_DEPTH. */
int jv_write_str(struct jbuf *b, struct jv v);
/* Python repr(). */
int jv_write_repr(struct jbuf *b, struct jv v);
/* json.dumps(v, ensure_ascii=False, indent=indent) as transformers' tojson:
 * separators ", " / ": " without indent, "," / ": " with one. indent < 0: none.
 * -EINVAL (with what it met) for values JSON cannot hold. */
int jv_write_json(struct jbuf *b, struct jv v, int indent, const char **ret_bad_type);
/* Python float repr ("1.0", "1e-05", "inf"). */
int jv_write_float(struct jbuf *b, double f);

/* str(v) as an arena string. */
int jv_to_str(struct jarena *a, struct jv v, size_t limit, struct jstr *ret);

/* Deep-copies JSON into arena values: objects -> dict, arrays -> list,
 * integral numbers -> int. -ENOMEM at the arena limit. */
int jv_from_json(struct jarena *a, const cJSON *j, struct jv *ret);

/* Parses JSON text into arena values, keeping Python's int/float split.
 * -EINVAL with the byte offset and a description of the fault; -ENOMEM. */
int jv_parse_json(struct jarena *a, const char *text, size_t len, struct jv *ret, size_t *ret_offset,
                  const char **ret_what);

#define JV_MAX_DEPTH 256

/* ---- UTF-8 helpers ---- */

/* Decodes one code point at s[*i] (advancing *i); malformed bytes decode as
 * themselves (Latin-1) so that broken input never stops the renderer. */
int32_t jutf8_next(const char *s, size_t n, size_t *i);
size_t jutf8_len(const char *s, size_t n); /* code points */
int jutf8_put(struct jbuf *b, int32_t cp);
bool jutf8_is_space(int32_t cp); /* Python str.isspace() */

/* ---- AST ---- */

enum jn_kind {
    /* statements */
    JN_BODY, /* kids: statements */
    JN_TEXT, /* name: the text */
    JN_OUTPUT,       /* a: expression */
    JN_IF,           /* a: condition, b: body, c: else body or elif JN_IF (NULL when none) */
    JN_FOR,          /* names/nnames: targets, a: iterable, b: body, c: else body, d: filter */
    JN_SET,          /* a: target (JN_NAME, JN_ATTR of a name, JN_TUPLE of names), b: value */
    JN_SET_BLOCK,    /* a: target name, b: body, c: filter chain on JN_BLOCK_INPUT or NULL */
    JN_MACRO,        /* name, names: params, kids2: defaults (NULL entries), b: body */
    JN_CALL_BLOCK,   /* a: call expression, names: caller params, kids2: defaults, b: body */
    JN_FILTER_BLOCK, /* a: filter chain on JN_BLOCK_INPUT, b: body */
    JN_WITH,         /* names: variables, kids2: values, b: body */
    JN_BREAK,
    JN_CONTINUE,
    /* expressions */
    JN_CONST,       /* cval */
    JN_NAME,        /* name */
    JN_LIST,        /* kids */
    JN_TUPLE,       /* kids */
    JN_DICT,        /* kids: keys, kids2: values */
    JN_ATTR,        /* a: object, name */
    JN_SUBSCRIPT,   /* a: object, b: index or JN_SLICE */
    JN_SLICE,       /* a, b, c: start, stop, step (each may be NULL) */
    JN_CALL,        /* a: callee, kids: args, names/kids2: keyword args */
    JN_FILTER,      /* a: input, name, kids: args, names/kids2: keyword args */
    JN_TEST,        /* a: input, name, kids: args, op: 1 when negated (is not) */
    JN_NOT,         /* a */
    JN_NEG,         /* a */
    JN_POS,         /* a */
    JN_BINOP,       /* op: JOP_*, a, b */
    JN_CONCAT,      /* kids */
    JN_COMPARE,     /* a: first operand, kids: further operands, ops: JOP_* per kid */
    JN_AND,         /* a, b */
    JN_OR,          /* a, b */
    JN_CONDEXPR,    /* a: value, b: condition, c: else value (NULL: undefined) */
    JN_BLOCK_INPUT, /* the rendered body of a filter block / block set */
};

enum jop {
    JOP_ADD = 1, JOP_SUB, JOP_MUL, JOP_DIV, JOP_FLOORDIV, JOP_MOD, JOP_POW,
    JOP_EQ, JOP_NE, JOP_LT, JOP_LE, JOP_GT, JOP_GE, JOP_IN, JOP_NOTIN,
};

struct jnode {
    enum jn_kind kind;
    int op;
    uint32_t pos; /* byte offset in the source, for line:col in messages */
    struct jstr name;
    struct jv cval;
    struct jnode *a, *b, *c, *d;
    struct jnode **kids;
    uint32_t nkids;
    struct jstr *names;    /* see enum jn_kind */
    struct jnode **kids2;  /* parallel to names (or to kids for JN_DICT) */
    uint32_t nnames;
    int *ops;              /* JN_COMPARE */
};

struct jtemplate {
    struct jarena *arena;
    const char *src; /* copy of the source, NUL-terminated */
    size_t len;
    struct jnode *root;
};

/* Parses src into t->root (allocated in t->arena). On error, fills msg
 * ("template:L:C: ...") and returns -EINVAL (or -ENOMEM). */
int jinja_parse(struct jtemplate *t, char *msg, size_t msg_size);

/* Line and column (1-based, column in bytes) of a byte offset. */
void jinja_line_col(const char *src, size_t len, uint32_t pos, int *ret_line, int *ret_col);
