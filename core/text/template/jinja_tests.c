/* jinja_tests.c - the tests (`value is name(arg)`), dispatched through one
 * table sorted by name. Entries that differ only in a kind, an operator or
 * a flag share one function and carry that difference as `variant`. */
#include <errno.h>
#include <string.h>

#include "jinja-internal.h"

/* arg: the test's first argument or NULL; name: for messages. */
typedef int (*test_fn)(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                       int variant, bool *ret);

/* variant: the kind the value must have. */
static int t_kind(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                  int variant, bool *ret)
{
    *ret = v.kind == (enum jv_kind)variant;
    return 0;
}

static int t_defined(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                     int variant, bool *ret)
{
    *ret = v.kind != JV_UNDEF;
    return 0;
}

static int t_number(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                    int variant, bool *ret)
{
    *ret = jv_is_num(v);
    return 0;
}

/* variant: the boolean value it must be. */
static int t_bool(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                  int variant, bool *ret)
{
    *ret = v.kind == JV_BOOL && v.b == (bool)variant;
    return 0;
}

/* variant: 1 for iterable (undefined iterates empty), 0 for sequence. */
static int t_iterable(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                      int variant, bool *ret)
{
    *ret = v.kind == JV_LIST || v.kind == JV_DICT || v.kind == JV_STR || (variant && v.kind == JV_UNDEF);
    return 0;
}

static int t_callable(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                      int variant, bool *ret)
{
    *ret = v.kind == JV_MACRO || v.kind == JV_FUNC;
    return 0;
}

/* variant: 1 for odd, 0 for even. */
static int t_parity(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                    int variant, bool *ret)
{
    if (!jv_is_int(v))
        return jr_err(r, n, "test '%.*s' expects an integer", (int)name.n, name.p);
    *ret = (jv_int_of(v) % 2 != 0) == (bool)variant;
    return 0;
}

static int t_divisibleby(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                         int variant, bool *ret)
{
    if (!jv_is_int(v) || !arg || !jv_is_int(*arg) || jv_int_of(*arg) == 0)
        return jr_err(r, n, "test 'divisibleby' expects integers and a non-zero divisor");
    *ret = jv_int_of(*arg) == -1 || jv_int_of(v) % jv_int_of(*arg) == 0;
    return 0;
}

/* variant: the case_map the string must be unchanged by. */
static int t_case(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                  int variant, bool *ret)
{
    struct jv conv;
    if (v.kind != JV_STR) {
        *ret = false;
        return 0;
    }
    int rc = jr_str_case(r, v.s, (enum case_map)variant, &conv);
    if (rc < 0)
        return rc;
    *ret = jv_equal(v, conv);
    return 0;
}

static int t_sameas(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                    int variant, bool *ret)
{
    if (!arg)
        return jr_err(r, n, "test 'sameas' needs an argument");
    *ret = v.kind == arg->kind && (v.kind == JV_NONE || v.kind == JV_UNDEF ? true : jv_equal(v, *arg)) &&
           (v.kind != JV_LIST || v.l == arg->l) && (v.kind != JV_DICT || v.d == arg->d);
    return 0;
}

/* variant: the JOP_* comparison. */
static int t_compare(struct render *r, const struct jnode *n, struct jstr name, struct jv v, const struct jv *arg,
                     int variant, bool *ret)
{
    if (!arg)
        return jr_err(r, n, "test '%.*s' needs an argument", (int)name.n, name.p);
    return jr_compare(r, n, variant, v, *arg, ret);
}

struct test_entry {
    const char *name;
    test_fn fn;
    int variant;
};

static const struct test_entry tests[] = {
    {"boolean", t_kind, JV_BOOL},
    {"callable", t_callable, 0},
    {"defined", t_defined, 0},
    {"divisibleby", t_divisibleby, 0},
    {"eq", t_compare, JOP_EQ},
    {"equalto", t_compare, JOP_EQ},
    {"even", t_parity, 0},
    {"false", t_bool, false},
    {"float", t_kind, JV_FLOAT},
    {"ge", t_compare, JOP_GE},
    {"greaterthan", t_compare, JOP_GT},
    {"gt", t_compare, JOP_GT},
    {"in", t_compare, JOP_IN},
    {"integer", t_kind, JV_INT},
    {"iterable", t_iterable, 1},
    {"le", t_compare, JOP_LE},
    {"lessthan", t_compare, JOP_LT},
    {"lower", t_case, CASE_LOWER},
    {"lt", t_compare, JOP_LT},
    {"mapping", t_kind, JV_DICT},
    {"ne", t_compare, JOP_NE},
    {"none", t_kind, JV_NONE},
    {"number", t_number, 0},
    {"odd", t_parity, 1},
    {"sameas", t_sameas, 0},
    {"sequence", t_iterable, 0},
    {"string", t_kind, JV_STR},
    {"true", t_bool, true},
    {"undefined", t_kind, JV_UNDEF},
    {"upper", t_case, CASE_UPPER},
    {NULL, NULL, 0},
};

int jr_test(struct render *r, const struct jnode *n, struct jstr name, struct jv v, struct args *a, bool *ret)
{
    for (const struct test_entry *e = tests; e->name; e++)
        if (jstr_eq(name, e->name))
            return e->fn(r, n, name, v, jr_arg(a, 0, NULL), e->variant, ret);
    return jr_err(r, n, "unknown test '%.*s'", (int)name.n, name.p);
}
