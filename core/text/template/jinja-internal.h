/* jinja-internal.h - the Jinja subset behind chat_template.h.
 *
 * Layers: jinja_value.c (arena, values, Python-style str/repr/tojson,
 * equality, cJSON conversion) <- jinja_parse.c (lexer and parser: source ->
 * AST) <- the evaluator: jinja_eval.c (expressions, statements, macros,
 * global functions), jinja_str.c (Python str operations), jinja_format.c
 * (`%` and str.format), jinja_filters.c, jinja_tests.c and jinja_methods.c
 * (each a table of names) <- chat_template.c (public API).
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

#include "base/error.h"

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
struct jspans;
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
    /* JV_STR: the bytes that came from untrusted input (message content), so
     * that the tokenizer never reads special tokens there. NULL: none;
     * &jtaint_all: the whole string. */
    const struct jspans *taint;
};

/* Byte ranges [v[2i], v[2i+1]), ascending, not touching. */
struct jspans {
    size_t *v;
    size_t n, cap;
};
extern const struct jspans jtaint_all;

struct jlist {
    struct jv *items;
    size_t n, cap;
    bool tuple;
    bool taint; /* made from untrusted input: printing it prints untrusted text */
};

/* Ordered; small dicts are the rule, so lookup is linear (last key wins). */
struct jdict {
    struct jstr *keys;
    struct jv *vals;
    size_t n, cap;
    bool taint; /* made from untrusted input (its keys too) */
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

/* A growable byte buffer in an arena, with its own size limit, and the
 * ranges of it that hold untrusted text (written by jr_put). */
struct jbuf {
    struct jarena *arena;
    char *p;
    size_t n, cap, limit;
    struct jspans taint;
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

/* ---- the evaluator (jinja_eval.c and the files it dispatches to) ---- */

#define RENDER_MAX_ARENA (256u << 20)      /* bytes of values a render may create */
#define RENDER_MAX_OUTPUT (32u << 20)      /* bytes of rendered text */
#define RENDER_MAX_ITERATIONS 1000000      /* loop iterations per render, all loops together */
#define RENDER_MAX_CALL_DEPTH 64           /* nested macro calls */
#define RENDER_MAX_RANGE 100000            /* items of range(), as Jinja2's sandbox */
/* Stack a render may use for nested evaluation (deep expressions inside
 * recursive macros); callers need a thread stack comfortably above this. */
#define RENDER_MAX_STACK (1u << 20)

/* A scope: its variables are a dict (assignment replaces, lookup walks the
 * parents). */
struct frame {
    struct frame *parent;
    struct jdict vars;
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
    struct jbuf *out;              /* where text goes now: `text`, or a capture */
    struct jbuf text;              /* the render's output */
    struct frame *globals;         /* the context's variables */
    bool untrusted;                /* some of them are untrusted: track taint (else skip the work) */
    size_t iterations;
    int call_depth;
    struct jv block_input;         /* the body text a filter block / block set filters */
    struct jmacro *pending_caller; /* caller() for the macro a call block invokes */
    const char *stack_base;        /* frame address where the render started */
};

enum { CTL_BREAK = 1, CTL_CONTINUE = 2 };

/* The evaluated arguments of a call, filter or test. */
struct args {
    struct jv *pos;
    size_t npos;
    const struct jstr *kwn;
    struct jv *kwv;
    size_t nkw;
};

/* Errors. jr_err formats "template:L:C: ..." at node n (the first error of a
 * render wins) and returns -EINVAL; jr_fail turns a bare errno from the value
 * layer into such a message. */
__attribute__((format(printf, 3, 4))) int jr_err(struct render *r, const struct jnode *n, const char *fmt, ...);
int jr_fail(struct render *r, const struct jnode *n, int rc);
/* Using an undefined value: an error with Jinja2's wording. */
int jr_undefined_error(struct render *r, const struct jnode *at, struct jv v);

/* Scopes. */
struct frame *jr_frame_new(struct render *r, struct frame *parent);
int jr_frame_set(struct render *r, struct frame *f, struct jstr name, struct jv v);
struct jv *jr_frame_get(struct frame *f, struct jstr name);

/* The argument at position i or named `name` (after the input, for
 * filters); NULL when absent. */
struct jv *jr_arg(struct args *a, size_t i, const char *name);

int jr_eval(struct render *r, const struct jnode *n, struct frame *f, struct jv *ret);
/* Returns 0, CTL_BREAK / CTL_CONTINUE (passed up to the enclosing loop), or < 0. */
int jr_exec_body(struct render *r, const struct jnode *n, struct frame *f);

/* Strings of a render: a buffer with the output limit, its text as a value,
 * str(v) (undefined as ""), and a string argument or an error naming it. */
struct jbuf jr_buf(struct render *r);
int jr_make_str(struct render *r, struct jbuf *b, struct jv *ret);
int jr_to_str(struct render *r, struct jv v, struct jstr *ret);
int jr_need_str(struct render *r, const struct jnode *n, struct jv v, const char *what, struct jstr *ret);

/* Untrusted text. jr_put writes str(v) into b and records the ranges that
 * came from untrusted text; concatenation and all output go through it. */
int jr_put(struct render *r, struct jbuf *b, struct jv v);
/* Whether v holds untrusted text (a tainted string, a container made from
 * untrusted input, or one holding such values; very deep values count as
 * tainted). */
bool jv_tainted(struct jv v);
/* Marks all of v untrusted: strings whole, containers flagged, recursively.
 * -ELOOP past JV_MAX_DEPTH. */
int jv_taint_all(struct jv *v);
/* jv_taint_all for the chat messages, except each message's `role` when it
 * is one of the fixed role names, which stays trusted (see jinja_taint.c). */
int jv_taint_messages(struct jv *messages);
/* The rule for operations that transform text (filters, methods, `%`):
 * when an input is tainted, the whole result is. */
void jr_taint_result(struct jv *ret, bool tainted);
/* For filters and methods: whether the input or any argument is tainted
 * (false at once in a render without untrusted values). */
bool jr_inputs_tainted(const struct render *r, struct jv in, const struct args *a);
/* Appends [start, end) to s (merging with the last range). -ENOMEM. */
int jspans_add(struct jarena *a, struct jspans *s, size_t start, size_t end);

/* Sequences and lookups. jr_iterate: the items a for loop / list() / join
 * see (list items, dict keys, string characters; undefined is empty). */
int jr_iterate(struct render *r, const struct jnode *n, struct jv v, struct jlist **ret);
int64_t jv_length(struct jv v, bool *ok); /* len(v); *ok false when it has none */
int jr_slice(struct render *r, const struct jnode *n, struct jv obj, const struct jv *a, const struct jv *b,
             const struct jv *c, struct jv *ret);
int jr_get_attr(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct jv *ret);
int jr_get_item(struct render *r, const struct jnode *n, struct jv obj, struct jv key, struct jv *ret);
/* Byte offsets of each code point of s, plus one at the end (s.n). */
int jr_cp_offsets(struct render *r, struct jstr s, size_t **ret, size_t *ret_n);

/* Operators: op is a JOP_*. */
int jr_compare(struct render *r, const struct jnode *n, int op, struct jv a, struct jv b, bool *ret);
int jr_binop(struct render *r, const struct jnode *n, int op, struct jv a, struct jv b, struct jv *ret);

static inline bool jv_is_int(struct jv v) { return v.kind == JV_INT || v.kind == JV_BOOL; }
static inline bool jv_is_num(struct jv v) { return v.kind == JV_INT || v.kind == JV_FLOAT || v.kind == JV_BOOL; }
int64_t jv_int_of(struct jv v); /* floats saturate (NaN -> 0); not a number -> 0 */
static inline double jv_num_of(struct jv v) { return v.kind == JV_FLOAT ? v.f : (double)jv_int_of(v); }

/* ---- jinja_str.c: Python str operations shared by filters and methods ---- */

enum case_map { CASE_UPPER, CASE_LOWER, CASE_TITLE_JINJA, CASE_TITLE_PY, CASE_CAPITALIZE };
int jr_str_case(struct render *r, struct jstr s, enum case_map how, struct jv *ret);
/* strip/lstrip/rstrip: chars NULL means Unicode whitespace. */
struct jstr jstr_strip(struct jstr s, const struct jstr *chars, bool left, bool right);
/* First occurrence at or after byte `from`, last occurrence; NULL when none. */
const char *jstr_find(struct jstr hay, struct jstr needle, size_t from);
const char *jstr_rfind(struct jstr hay, struct jstr needle);
int jr_str_replace(struct render *r, struct jstr s, struct jstr old, struct jstr new, int64_t count, struct jv *ret);
/* split(sep, maxsplit) and rsplit: sep NULL splits on whitespace runs. */
int jr_str_split(struct render *r, const struct jnode *n, struct jstr s, const struct jstr *sep, int64_t maxsplit,
                 bool from_right, struct jv *ret);
int jr_push_str(struct render *r, struct jlist *l, const char *p, size_t n);

/* ---- jinja_format.c ---- */

/* Python's printf-style `fmt % args` (also the `format` filter). */
int jr_percent_format(struct render *r, const struct jnode *n, struct jstr fmt, struct jv args, struct jv *ret);
/* str.format(): "{}" / "{0}" / "{name}" with str() of the argument. */
int jr_brace_format(struct render *r, const struct jnode *n, struct jstr fmt, struct args *a, struct jv *ret);

/* ---- jinja_filters.c, jinja_tests.c, jinja_methods.c: dispatch by name ---- */

/* `in | name(args)`; an unknown name is an error naming it. */
int jr_filter(struct render *r, const struct jnode *n, struct jstr name, struct jv in, struct args *a, struct jv *ret);
/* dict.items() and the items filter: (key, value) tuples. */
int jr_items(struct render *r, const struct jnode *n, struct jv in, struct args *a, struct jv *ret);
/* `v is name(args)`; an unknown name is an error naming it. */
int jr_test(struct render *r, const struct jnode *n, struct jstr name, struct jv v, struct args *a, bool *ret);
/* obj.name(args) for a str, dict or list: METHOD_DONE with *ret set,
 * METHOD_NONE when obj's type has no such method, or < 0. */
enum method_result { METHOD_NONE = 0, METHOD_DONE = 1 };
int jr_method(struct render *r, const struct jnode *n, struct jv obj, struct jstr name, struct args *a,
              struct jv *ret);
