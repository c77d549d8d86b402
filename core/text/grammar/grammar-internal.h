/* grammar-internal.h - the compiled form of a grammar, shared by the GBNF
 * compiler (grammar_gbnf.c) and the matcher (grammar_match.c).
 *
 * Every rule is a list of alternatives; each alternative a sequence of
 * elements ended by GE_END, all stored in one array `el`. A terminal is a
 * character class (a literal character is a class of one range). Groups and
 * repetitions of the GBNF text are compiled into anonymous rules, so the
 * matcher only knows terminals, references and ends. */
#pragma once

#include <stdint.h>

#include "grammar.h"

enum ge_type {
    GE_END = 0, /* end of an alternative */
    GE_CLASS,   /* v: index into classes */
    GE_REF,     /* v: rule index */
};

struct gelem {
    uint32_t type;
    uint32_t v;
};

struct gclass {
    uint32_t first, n; /* ranges [first, first + n) of grammar.ranges */
    bool negated;
};

struct grule {
    uint32_t first_alt, n_alts; /* entries of grammar.alts: element index where each alternative starts */
};

struct grammar {
    struct gelem *el;       /* [n_el] */
    uint32_t n_el;
    uint32_t *alts;         /* [n_alts_total]: start of each alternative in el */
    struct grule *rules;    /* [n_rules] */
    uint32_t n_rules;
    uint32_t root;
    struct gclass *classes; /* [n_classes] */
    uint32_t n_classes;
    uint32_t *ranges;       /* [2 * n_ranges]: lo, hi (inclusive) */
    int refs;               /* holders (grammar_ref); atomic: sequences on the scheduler thread, requests on HTTP threads */
};

static inline bool gclass_match(const struct grammar *g, uint32_t cls, uint32_t cp)
{
    const struct gclass *c = &g->classes[cls];
    const uint32_t *r = g->ranges + 2 * c->first;
    bool in = false;
    for (uint32_t i = 0; i < c->n && !in; i++)
        in = cp >= r[2 * i] && cp <= r[2 * i + 1];
    return in != c->negated;
}
