/* grammar_match.c - the vocabulary trie and the per-sequence matcher.
 *
 * A parse stack is a linked list of frames in an arena: each frame is an
 * element position to resume at and its parent frame (the caller's
 * continuation). A state is a set of stacks whose top frames sit on
 * terminals, plus "complete" when some path has reached the end of root.
 * Advancing over a code point moves every stack whose terminal matches past
 * it and expands the result (references push their alternatives; ends of
 * alternatives pop) until every top is a terminal again. A reference that is
 * the last element of its alternative pushes no continuation (a tail call), so
 * repetitions run in constant stack depth.
 *
 * A mask walks the vocabulary trie depth first. The states it meets are
 * interned (equal sets of stacks are one state) and the transitions between
 * them cached, so the walk builds a small automaton as it goes and most trie
 * nodes cost a table lookup; where the state is a string's loop or a bounded
 * string's chain of positions, whole subtrees that spell only plain
 * characters are allowed without visiting them (see struct walk).
 *
 * Frames only ever point at older frames: a mask's frames live above a mark
 * and go when it ends, and accepting a token compacts the live frames to the
 * bottom. Work is bounded: at most GRAMMAR_MAX_STACKS stacks per state (more
 * are dropped: an absurdly ambiguous grammar loses alternatives rather than
 * time), GRAMMAR_MAX_STACK_DEPTH frames per stack, and per mask
 * MASK_WORK_MAX steps of work and MASK_STATES_MAX states. The arrays grow to
 * their high-water mark and are reused, so a step allocates nothing once a
 * sequence has warmed up. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "grammar-internal.h"

/* ---- vocabulary trie ---- */

#define GRAMMAR_MAX_TOKEN_BYTES 1024

struct tnode {
    uint32_t first_child, n_child; /* children: nodes [first_child, first_child + n_child) */
    uint32_t first_tok, n_tok;     /* tokens ending here: tok[first_tok ..] */
    uint32_t sub_end;              /* the subtree's tokens are tok[first_tok, sub_end) */
    uint64_t ascii[2];             /* ASCII characters in the subtree, below this node */
    bool bmp, astral;              /* ... and whether characters of U+0080..U+FFFF (lead bytes
                                    * C2..EF) or beyond (F0..F4) are there */
    uint16_t max_chars;            /* the most characters a path below spells (lead bytes) */
    bool valid;                    /* every token's bytes below this node are UTF-8 (a
                                    * truncated last character allowed) */
    uint8_t byte;                  /* the byte leading here from the parent */
};

struct grammar_vocab {
    int n_vocab;
    struct tnode *nodes;   /* [n_nodes], node 0 is the root (empty prefix) */
    uint32_t n_nodes;
    int32_t *tok;          /* token ids in trie order */
    char **bytes;          /* [n_vocab]: each token's bytes (NULL: never allowed) */
    uint32_t *len;         /* [n_vocab] */
    int max_len;
};

struct ventry {
    const char *s;
    uint32_t len;
    int32_t id;
};

static int ventry_cmp(const void *a, const void *b)
{
    const struct ventry *x = a, *y = b;
    uint32_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* Builds the subtree of entries [lo, hi) that share their first `depth` bytes
 * into node `at` (already allocated). Children of a node are allocated
 * together, so a node's children are contiguous. */
static int trie_build(struct grammar_vocab *v, size_t *cap, const struct ventry *e, size_t lo, size_t hi,
                      uint32_t depth, uint32_t at)
{
    size_t i = lo;
    v->nodes[at].first_tok = (uint32_t)lo; /* tok[] is in entry order */
    while (i < hi && e[i].len == depth)
        i++;
    v->nodes[at].n_tok = (uint32_t)(i - lo);
    v->nodes[at].sub_end = (uint32_t)hi;
    size_t groups = 0;
    for (size_t k = i; k < hi; k++)
        groups += k == i || e[k].s[depth] != e[k - 1].s[depth];
    if (!groups)
        return 0;
    uint32_t first = v->n_nodes;
    struct tnode *n = buf_grow(v->nodes, cap, v->n_nodes + groups, sizeof(*v->nodes));
    if (!n)
        return -ENOMEM;
    v->nodes = n;
    v->n_nodes += (uint32_t)groups;
    v->nodes[at].first_child = first;
    v->nodes[at].n_child = (uint32_t)groups;
    uint32_t c = first;
    for (size_t k = i; k < hi;) {
        size_t end = k + 1;
        while (end < hi && e[end].s[depth] == e[k].s[depth])
            end++;
        memset(&v->nodes[c], 0, sizeof(v->nodes[c]));
        v->nodes[c].byte = (uint8_t)e[k].s[depth];
        int r = trie_build(v, cap, e, k, end, depth + 1, c);
        if (r < 0)
            return r;
        c++;
        k = end;
    }
    return 0;
}

/* Length of the UTF-8 character a leading byte starts; 0: not a leading byte. */
static int u8_len(uint8_t b)
{
    return b < 0x80 ? 1 : (b >= 0xC2 && b <= 0xDF) ? 2 : (b >= 0xE0 && b <= 0xEF) ? 3 : (b >= 0xF0 && b <= 0xF4) ? 4 : 0;
}

/* Fills the subtree summaries the mask's shortcut reads (see walk()). */
static void trie_summarize(struct grammar_vocab *v, const struct ventry *e, size_t n_e)
{
    /* children come after their parent: a reverse pass folds them upwards */
    for (uint32_t i = v->n_nodes; i-- > 0;) {
        struct tnode *n = &v->nodes[i];
        n->valid = true;
        for (uint32_t c = n->first_child; c < n->first_child + n->n_child; c++) {
            const struct tnode *ch = &v->nodes[c];
            n->ascii[0] |= ch->ascii[0];
            n->ascii[1] |= ch->ascii[1];
            n->bmp |= ch->bmp || (ch->byte >= 0xC2 && ch->byte <= 0xEF);
            n->astral |= ch->astral || (ch->byte >= 0xF0 && ch->byte <= 0xF4);
            uint32_t mc = ch->max_chars + ((ch->byte & 0xC0) != 0x80);
            if (mc > n->max_chars)
                n->max_chars = (uint16_t)(mc > UINT16_MAX ? UINT16_MAX : mc);
            if (ch->byte < 0x80)
                n->ascii[ch->byte >> 6] |= 1ull << (ch->byte & 63);
        }
    }
    /* validity: a token's suffix from depth d is UTF-8 when a character starts
     * at d and the rest follows; computed backwards per token, then folded
     * into the nodes on its path */
    uint8_t ok[GRAMMAR_MAX_TOKEN_BYTES + 1];
    for (size_t t = 0; t < n_e; t++) {
        const uint8_t *b = (const uint8_t *)e[t].s;
        uint32_t len = e[t].len;
        ok[len] = 1;
        for (uint32_t d = len; d-- > 0;) {
            int k = u8_len(b[d]);
            bool good = k > 0;
            for (int j = 1; good && j < k && d + (uint32_t)j < len; j++)
                good = (b[d + j] & 0xC0) == 0x80;
            ok[d] = good && (d + (uint32_t)k >= len || ok[d + k]);
        }
        uint32_t at = 0;
        for (uint32_t d = 0;; d++) {
            if (!ok[d])
                v->nodes[at].valid = false;
            if (d == len)
                break;
            /* the child with byte b[d]: children are sorted by byte */
            const struct tnode *n = &v->nodes[at];
            uint32_t lo = n->first_child, hi = n->first_child + n->n_child;
            while (lo + 1 < hi) {
                uint32_t mid = (lo + hi) / 2;
                if (v->nodes[mid].byte <= b[d])
                    lo = mid;
                else
                    hi = mid;
            }
            at = lo;
        }
    }
}

void grammar_vocab_destroy(grammar_vocab *v)
{
    if (!v)
        return;
    if (v->bytes)
        for (int i = 0; i < v->n_vocab; i++)
            free(v->bytes[i]);
    free(v->bytes);
    free(v->len);
    free(v->nodes);
    free(v->tok);
    free(v);
}

int grammar_vocab_create(const tokenizer *tok, int n_vocab, grammar_vocab **ret, ifd_error *err)
{
    grammar_vocab *v = calloc(1, sizeof(*v));
    struct ventry *e = NULL;
    size_t n_e = 0;
    int r = -ENOMEM;
    if (!v)
        return ifd_error_set(err, -ENOMEM, "grammar vocabulary: out of memory");
    v->n_vocab = n_vocab;
    v->bytes = calloc((size_t)n_vocab, sizeof(char *));
    v->len = calloc((size_t)n_vocab, sizeof(uint32_t));
    e = malloc(sizeof(*e) * ((size_t)n_vocab + 1));
    if (!v->bytes || !v->len || !e)
        goto fail;
    int n_tok = tok_vocab_size(tok);
    for (int id = 0; id < n_vocab && id < n_tok; id++) {
        /* special tokens never spell grammar text; eos is handled apart */
        if (!tok_id_to_token(tok, id) || tok_is_special(tok, id))
            continue;
        char *b;
        size_t len;
        if ((r = tok_token_bytes(tok, id, &b, &len, err)) < 0)
            goto fail_msg;
        /* the trie walk recurses once per byte: very long tokens stay out */
        if (len == 0 || len > GRAMMAR_MAX_TOKEN_BYTES) {
            free(b);
            continue;
        }
        v->bytes[id] = b;
        v->len[id] = (uint32_t)len;
        if ((int)len > v->max_len)
            v->max_len = (int)len;
        e[n_e++] = (struct ventry){b, (uint32_t)len, id};
    }
    qsort(e, n_e, sizeof(*e), ventry_cmp);
    v->tok = malloc(sizeof(int32_t) * (n_e + 1));
    size_t cap = 0;
    v->nodes = buf_grow(NULL, &cap, 1024, sizeof(*v->nodes));
    if (!v->tok || !v->nodes)
        goto fail;
    for (size_t i = 0; i < n_e; i++)
        v->tok[i] = e[i].id;
    memset(&v->nodes[0], 0, sizeof(v->nodes[0]));
    v->n_nodes = 1;
    if ((r = trie_build(v, &cap, e, 0, n_e, 0, 0)) < 0)
        goto fail;
    trie_summarize(v, e, n_e);
    free(e);
    *ret = v;
    return 0;
fail:
    r = ifd_error_set(err, -ENOMEM, "grammar vocabulary: out of memory");
fail_msg:
    free(e);
    grammar_vocab_destroy(v);
    return r;
}

/* ---- stacks ---- */

struct frame {
    uint32_t pos;    /* element to resume at */
    int32_t parent;  /* -1: bottom */
    uint32_t depth;
    uint32_t hash;   /* of the whole stack: pos and the parent's hash */
};

/* A set of stacks: tops [first, first + n) in the matcher's set pool. */
struct sset {
    uint32_t first, n;
    bool complete;
};

/* The UTF-8 decoder state between bytes: `need` continuation bytes still to
 * come for the code point whose leading bits are in `acc`. */
struct u8state {
    uint32_t acc;
    uint8_t need;
    uint8_t total; /* length of the character being decoded */
};

struct grammar_matcher {
    const grammar *g;
    const grammar_vocab *v;
    struct frame *fr;
    size_t n_fr, cap_fr;
    int32_t *pool;          /* set tops */
    size_t n_pool, cap_pool;
    struct sset cur;        /* the state after the output so far */
    struct u8state u8;      /* a character left incomplete by the last token */
    uint32_t *allowed;      /* [ceil(n_vocab / 32)] scratch bitmap */
    int32_t *live;          /* compaction scratch: frame remap */
    size_t cap_live;
    int budget;             /* expansions left in the current advance */
    int64_t work;           /* expansions and comparisons of the current mask */
    bool oom;
    /* The mask's automaton, built lazily during one walk: the distinct
     * states met (sets, interned by content) and the transitions between
     * them, keyed by which stacks of a state take the character. The trie
     * reaches the same few states along thousands of paths (every token of
     * a JSON string), so most trie nodes cost a lookup, not an advance. */
    struct sset *sets;
    size_t n_sets, cap_sets;
    int32_t (*ascii_next)[128]; /* [n_sets]: the transition on each ASCII character, ASCII_UNKNOWN until met */
    size_t cap_ascii;
    uint32_t *set_slots;    /* [n_slots]: set id + 1, 0 empty */
    struct trans *trans;    /* [n_slots] */
    size_t n_trans, n_slots;
};

/* A transition of the mask's automaton: from `set` when the stacks in
 * `bits` take the character, to set `to` (-1: nothing fits). */
struct trans {
    uint32_t set;           /* UINT32_MAX: empty slot */
    uint32_t bits;
    int32_t to;
};

/* Transitions are told apart by a bit per stack: states with more stacks
 * than this are advanced without the cache. */
#define TRANS_STACKS 32
#define ASCII_UNKNOWN (-2)

static int32_t frame_new(grammar_matcher *m, uint32_t pos, int32_t parent)
{
    uint32_t depth = parent < 0 ? 1 : m->fr[parent].depth + 1;
    if (depth > GRAMMAR_MAX_STACK_DEPTH)
        return -1;
    struct frame *f = buf_grow(m->fr, &m->cap_fr, m->n_fr + 1, sizeof(*m->fr));
    if (!f) {
        m->oom = true;
        return -1;
    }
    m->fr = f;
    uint32_t h = (parent < 0 ? 0x9E3779B9u : m->fr[parent].hash) * 0x85EBCA6Bu ^ (pos * 0xC2B2AE35u + 1);
    m->fr[m->n_fr] = (struct frame){pos, parent, depth, h ^ (h >> 15)};
    return (int32_t)m->n_fr++;
}

static bool stack_equal(const grammar_matcher *m, int32_t a, int32_t b)
{
    while (a != b) {
        if (a < 0 || b < 0 || m->fr[a].pos != m->fr[b].pos)
            return false;
        a = m->fr[a].parent;
        b = m->fr[b].parent;
    }
    return true;
}

/* Adds a stack whose top is on a terminal to the set being built at the end
 * of the pool (set s), unless an equal one is there. */
static void set_add(grammar_matcher *m, struct sset *s, uint32_t pos, int32_t parent)
{
    m->work += s->n;
    for (uint32_t i = 0; i < s->n; i++) {
        int32_t t = m->pool[s->first + i];
        if (m->fr[t].pos == pos && stack_equal(m, m->fr[t].parent, parent))
            return;
    }
    if (s->n >= GRAMMAR_MAX_STACKS)
        return;
    int32_t id = frame_new(m, pos, parent);
    if (id < 0)
        return;
    int32_t *p = buf_grow(m->pool, &m->cap_pool, m->n_pool + 1, sizeof(*m->pool));
    if (!p) {
        m->oom = true;
        return;
    }
    m->pool = p;
    m->pool[m->n_pool++] = id;
    s->n++;
}

/* Expands the position `pos` under `parent` until terminals: see the top. */
static void expand(grammar_matcher *m, struct sset *s, uint32_t pos, int32_t parent)
{
    const grammar *g = m->g;
    for (;;) {
        if (--m->budget < 0)
            return;
        m->work++;
        const struct gelem *e = &g->el[pos];
        if (e->type == GE_CLASS) {
            set_add(m, s, pos, parent);
            return;
        }
        if (e->type == GE_END) {
            if (parent < 0) {
                s->complete = true;
                return;
            }
            pos = m->fr[parent].pos;
            parent = m->fr[parent].parent;
            continue;
        }
        /* GE_REF: the continuation, unless this is a tail call */
        int32_t cont = parent;
        if (g->el[pos + 1].type != GE_END && (cont = frame_new(m, pos + 1, parent)) < 0)
            return;
        const struct grule *r = &g->rules[e->v];
        for (uint32_t a = 0; a + 1 < r->n_alts; a++)
            expand(m, s, g->alts[r->first_alt + a], cont);
        pos = g->alts[r->first_alt + r->n_alts - 1];
        parent = cont;
    }
}

/* Work bound per advance: enough for any sane grammar's expansion. */
#define EXPAND_BUDGET 65536
/* Work bound per mask (expansions plus stack comparisons): a JSON Schema
 * state takes a few thousand; a grammar built to be expensive stops here,
 * its remaining tokens disallowed (never a wrong token, at worst an early
 * end), instead of holding the scheduler thread. */
#define MASK_WORK_MAX 4000000
/* States of one mask's automaton (each holds a 512-byte ASCII table): a
 * walk that meets more ends there, like one that runs out of work. */
#define MASK_STATES_MAX 16384

/* A new set at the end of the pool: `from` advanced over cp. */
static struct sset set_advance(grammar_matcher *m, const struct sset *from, uint32_t cp)
{
    struct sset s = {(uint32_t)m->n_pool, 0, false};
    m->budget = EXPAND_BUDGET;
    for (uint32_t i = 0; i < from->n; i++) {
        int32_t t = m->pool[from->first + i];
        uint32_t pos = m->fr[t].pos;
        if (gclass_match(m->g, m->g->el[pos].v, cp))
            expand(m, &s, pos + 1, m->fr[t].parent);
    }
    return s;
}

/* Feeds a byte to a UTF-8 decoder: 1 when a code point is complete (*cp),
 * 0 when more bytes are needed, -1 when the byte cannot come here. */
static int u8_feed(struct u8state *u, uint8_t b, uint32_t *cp)
{
    if (u->need == 0) {
        if (b < 0x80) {
            *cp = b;
            return 1;
        }
        if (b >= 0xC2 && b <= 0xDF)
            *u = (struct u8state){b & 0x1F, 1, 2};
        else if (b >= 0xE0 && b <= 0xEF)
            *u = (struct u8state){b & 0x0F, 2, 3};
        else if (b >= 0xF0 && b <= 0xF4)
            *u = (struct u8state){b & 0x07, 3, 4};
        else
            return -1;
        return 0;
    }
    if ((b & 0xC0) != 0x80)
        return -1;
    u->acc = (u->acc << 6) | (b & 0x3F);
    if (--u->need)
        return 0;
    uint32_t c = u->acc;
    uint8_t total = u->total;
    *u = (struct u8state){0, 0, 0};
    /* overlongs and surrogates are not characters */
    if ((total == 3 && c < 0x800) || (total == 4 && c < 0x10000) || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return -1;
    *cp = c;
    return 1;
}

/* Could the character being decoded in u still match a terminal of s? */
static bool partial_viable(const grammar_matcher *m, const struct sset *s, const struct u8state *u)
{
    static const uint32_t min_of_len[5] = {0, 0, 0x80, 0x800, 0x10000}; /* shorter would be overlong */
    uint32_t lo = u->acc << (6 * u->need), hi = lo | ((1u << (6 * u->need)) - 1);
    if (lo < min_of_len[u->total])
        lo = min_of_len[u->total];
    for (uint32_t i = 0; i < s->n; i++) {
        const struct gclass *c = &m->g->classes[m->g->el[m->fr[m->pool[s->first + i]].pos].v];
        if (c->negated)
            return true; /* a negated class leaves almost everything: close enough for a prefix */
        const uint32_t *r = m->g->ranges + 2 * c->first;
        for (uint32_t k = 0; k < c->n; k++)
            if (r[2 * k] <= hi && r[2 * k + 1] >= lo)
                return true;
    }
    return false;
}

int grammar_matcher_create(const grammar *g, const grammar_vocab *v, grammar_matcher **ret)
{
    grammar_matcher *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->g = g;
    m->v = v;
    m->allowed = calloc(((size_t)v->n_vocab + 31) / 32, sizeof(uint32_t));
    if (!m->allowed) {
        free(m);
        return -ENOMEM;
    }
    m->cur = (struct sset){0, 0, false};
    m->budget = EXPAND_BUDGET;
    const struct grule *root = &g->rules[g->root];
    for (uint32_t a = 0; a < root->n_alts; a++)
        expand(m, &m->cur, g->alts[root->first_alt + a], -1);
    if (m->oom) {
        grammar_matcher_destroy(m);
        return -ENOMEM;
    }
    *ret = m;
    return 0;
}

void grammar_matcher_destroy(grammar_matcher *m)
{
    if (!m)
        return;
    free(m->fr);
    free(m->pool);
    free(m->allowed);
    free(m->live);
    free(m->sets);
    free(m->ascii_next);
    free(m->set_slots);
    free(m->trans);
    free(m);
}

bool grammar_matcher_is_complete(const grammar_matcher *m)
{
    return m->cur.complete && m->u8.need == 0;
}

bool grammar_matcher_is_done(const grammar_matcher *m)
{
    return grammar_matcher_is_complete(m) && m->cur.n == 0;
}

static bool set_equal(const grammar_matcher *m, const struct sset *a, const struct sset *b)
{
    if (a->n != b->n || a->complete != b->complete)
        return false;
    for (uint32_t i = 0; i < a->n; i++) {
        int32_t x = m->pool[a->first + i], y = m->pool[b->first + i];
        if (m->fr[x].pos != m->fr[y].pos || !stack_equal(m, m->fr[x].parent, m->fr[y].parent))
            return false;
    }
    return true;
}

/* Which stacks of s have a terminal that matches cp (bit i: stack i; only
 * the first 32 stacks are told apart: see TRANS_STACKS). */
static uint32_t set_match_bits(const grammar_matcher *m, const struct sset *s, uint32_t cp, bool *ret_any)
{
    uint32_t bits = 0;
    bool any = false;
    for (uint32_t i = 0; i < s->n; i++) {
        if (gclass_match(m->g, m->g->el[m->fr[m->pool[s->first + i]].pos].v, cp)) {
            any = true;
            bits |= i < 32 ? 1u << i : 0;
        }
    }
    *ret_any = any;
    return bits;
}

/* ---- the mask ---- */

/* ---- the mask's automaton ---- */

static uint32_t set_hash(const grammar_matcher *m, const struct sset *s)
{
    uint32_t h = s->n * 0x27D4EB2Fu + s->complete;
    for (uint32_t i = 0; i < s->n; i++)
        h = (h ^ m->fr[m->pool[s->first + i]].hash) * 0x9E3779B1u;
    return h ^ (h >> 16);
}

/* Empties the automaton, with room for `slots` states and transitions. */
static int automaton_reset(grammar_matcher *m, size_t slots)
{
    if (slots > m->n_slots) {
        uint32_t *ss = realloc(m->set_slots, slots * sizeof(*ss));
        if (ss)
            m->set_slots = ss;
        struct trans *t = ss ? realloc(m->trans, slots * sizeof(*t)) : NULL;
        if (!t)
            return -ENOMEM;
        m->trans = t;
        m->n_slots = slots;
    }
    memset(m->set_slots, 0, m->n_slots * sizeof(*m->set_slots));
    for (size_t i = 0; i < m->n_slots; i++)
        m->trans[i].set = UINT32_MAX;
    m->n_sets = 0;
    m->n_trans = 0;
    return 0;
}

/* Doubles the tables, keeping what they hold. */
static int automaton_grow(grammar_matcher *m)
{
    size_t old = m->n_slots, n_trans = 0;
    struct trans *keep = malloc(old * sizeof(*keep));
    if (!keep)
        return -ENOMEM;
    for (size_t i = 0; i < old; i++)
        if (m->trans[i].set != UINT32_MAX)
            keep[n_trans++] = m->trans[i];
    size_t n_sets = m->n_sets;
    int r = automaton_reset(m, 2 * old);
    if (r == 0) {
        size_t mask = m->n_slots - 1;
        for (size_t i = 0; i < n_sets; i++) {
            size_t k = set_hash(m, &m->sets[i]) & mask;
            while (m->set_slots[k])
                k = (k + 1) & mask;
            m->set_slots[k] = (uint32_t)i + 1;
        }
        for (size_t i = 0; i < n_trans; i++) {
            size_t k = (keep[i].set * 0x9E3779B1u ^ keep[i].bits * 0x85EBCA6Bu) & mask;
            while (m->trans[k].set != UINT32_MAX)
                k = (k + 1) & mask;
            m->trans[k] = keep[i];
        }
        m->n_sets = n_sets;
        m->n_trans = n_trans;
    }
    free(keep);
    return r;
}

/* The id of a state equal to s, added if new; -1 on allocation failure. */
static int32_t set_intern(grammar_matcher *m, const struct sset *s)
{
    if (2 * (m->n_sets + 1) > m->n_slots && automaton_grow(m) < 0) {
        m->oom = true;
        return -1;
    }
    size_t mask = m->n_slots - 1, k = set_hash(m, s) & mask;
    for (; m->set_slots[k]; k = (k + 1) & mask) {
        uint32_t id = m->set_slots[k] - 1;
        m->work += s->n;
        if (set_equal(m, &m->sets[id], s))
            return (int32_t)id;
    }
    if (m->n_sets >= MASK_STATES_MAX) {
        m->work = MASK_WORK_MAX;
        return -1;
    }
    struct sset *ns = buf_grow(m->sets, &m->cap_sets, m->n_sets + 1, sizeof(*m->sets));
    if (!ns) {
        m->oom = true;
        return -1;
    }
    m->sets = ns;
    int32_t (*na)[128] = buf_grow(m->ascii_next, &m->cap_ascii, m->n_sets + 1, sizeof(*m->ascii_next));
    if (!na) {
        m->oom = true;
        return -1;
    }
    m->ascii_next = na;
    for (int c = 0; c < 128; c++)
        m->ascii_next[m->n_sets][c] = ASCII_UNKNOWN;
    m->sets[m->n_sets] = *s;
    m->set_slots[k] = (uint32_t)m->n_sets + 1;
    return (int32_t)m->n_sets++;
}

/* The state after state `id` takes cp (whose matching stacks are `bits`):
 * its id, or -1 when nothing fits. */
static int32_t set_step(grammar_matcher *m, int32_t id, uint32_t bits, uint32_t cp)
{
    bool cache = m->sets[id].n <= TRANS_STACKS;
    size_t k = 0;
    if (cache) {
        if (2 * (m->n_trans + 1) > m->n_slots && automaton_grow(m) < 0) {
            m->oom = true;
            return -1;
        }
        size_t mask = m->n_slots - 1;
        for (k = ((uint32_t)id * 0x9E3779B1u ^ bits * 0x85EBCA6Bu) & mask; m->trans[k].set != UINT32_MAX;
             k = (k + 1) & mask)
            if (m->trans[k].set == (uint32_t)id && m->trans[k].bits == bits)
                return m->trans[k].to;
    }
    struct sset from = m->sets[id];
    struct sset s2 = set_advance(m, &from, cp);
    int32_t to = s2.n || s2.complete ? set_intern(m, &s2) : -1;
    if (cache && !m->oom) {
        /* set_intern may have grown the table: find the slot again */
        size_t mask = m->n_slots - 1;
        for (k = ((uint32_t)id * 0x9E3779B1u ^ bits * 0x85EBCA6Bu) & mask; m->trans[k].set != UINT32_MAX;
             k = (k + 1) & mask)
            ;
        m->trans[k] = (struct trans){(uint32_t)id, bits, to};
        m->n_trans++;
    }
    return to;
}

/* ---- the mask ---- */

#define CHAIN_MAX 256

struct walk {
    grammar_matcher *m;
    int n_allowed;
    int32_t root;
    /* The shortcut: the "plain" characters (ASCII ones in same_ascii, and
     * those of U+0080..U+FFFF when same_bmp, beyond when same_astral) that all lead from the root
     * state to one state, and from there on to one next state, and so on:
     * chain[i] is the state after i plain characters, for i < n_chain, or
     * for every i when the chain ends in a loop. Inside a JSON string (a
     * loop) or a maxLength string (a chain) a subtree of the trie that
     * spells only plain characters, and not more than the chain allows, is
     * allowed whole without visiting it. */
    bool loop;
    uint64_t same_ascii[2];
    bool same_bmp, same_astral;
    int32_t chain[CHAIN_MAX];
    int n_chain;
};

static void allow_tokens(struct walk *w, const struct tnode *n)
{
    const grammar_vocab *v = w->m->v;
    for (uint32_t i = 0; i < n->n_tok; i++) {
        int32_t id = v->tok[n->first_tok + i];
        w->m->allowed[id >> 5] |= 1u << (id & 31);
    }
    w->n_allowed += (int)n->n_tok;
}

static void allow_subtree(struct walk *w, const struct tnode *n)
{
    const grammar_vocab *v = w->m->v;
    for (uint32_t i = n->first_tok; i < n->sub_end; i++) {
        int32_t id = v->tok[i];
        w->m->allowed[id >> 5] |= 1u << (id & 31);
    }
    w->n_allowed += (int)(n->sub_end - n->first_tok);
}

/* Can the subtree below n, entered at chain position d, be allowed whole? */
static bool subtree_plain(const struct walk *w, const struct tnode *n, int d)
{
    return n->valid && !(n->ascii[0] & ~w->same_ascii[0]) && !(n->ascii[1] & ~w->same_ascii[1]) &&
           (!n->bmp || w->same_bmp) && (!n->astral || w->same_astral) && (w->loop || d + (int)n->max_chars < w->n_chain);
}

/* The state after id takes cp, or -1 (and the ASCII table filled). */
static int32_t step_cp(grammar_matcher *m, int32_t id, uint32_t cp)
{
    if (cp < 128 && m->ascii_next[id][cp] != ASCII_UNKNOWN)
        return m->ascii_next[id][cp];
    bool any;
    uint32_t bits = set_match_bits(m, &m->sets[id], cp, &any);
    int32_t to = any ? set_step(m, id, bits, cp) : -1;
    if (cp < 128 && !m->oom)
        m->ascii_next[id][cp] = to;
    return to;
}

/* Visits the children of trie node `at`, whose prefix leads to state `id`
 * with decoder u; d: the position in the chain of plain characters when the
 * prefix is one (-1 otherwise). */
static void walk(struct walk *w, uint32_t at, int32_t id, struct u8state u, int d)
{
    grammar_matcher *m = w->m;
    const struct tnode *tn = &m->v->nodes[at];
    for (uint32_t c = tn->first_child; c < tn->first_child + tn->n_child && m->work < MASK_WORK_MAX; c++) {
        const struct tnode *child = &m->v->nodes[c];
        struct u8state u2 = u;
        uint32_t cp;
        int k = u8_feed(&u2, child->byte, &cp);
        if (k < 0)
            continue;
        if (k == 0) {
            if (!partial_viable(m, &m->sets[id], &u2))
                continue;
            allow_tokens(w, child);
            walk(w, c, id, u2, d);
            continue;
        }
        int32_t to = step_cp(m, id, cp);
        if (to < 0)
            continue;
        /* still on the chain? (a loop stays at position 0) */
        int d2 = -1;
        if (d >= 0 && w->n_chain > 0)
            d2 = w->loop && d + 1 >= w->n_chain ? w->n_chain - 1 : d + 1;
        if (d2 >= 0 && (d2 >= w->n_chain || w->chain[d2] != to))
            d2 = -1;
        if (d2 >= 0 && u2.need == 0 && subtree_plain(w, child, d2)) {
            allow_subtree(w, child);
            continue;
        }
        if (m->sets[to].n || m->sets[to].complete)
            allow_tokens(w, child);
        if (m->sets[to].n)
            walk(w, c, to, u2, d2);
    }
}

/* Whether the characters lo..hi all behave alike in state id: every class
 * range of its stacks covers all of them or none. */
static bool uniform_in(const grammar_matcher *m, int32_t id, uint32_t lo, uint32_t hi)
{
    const struct sset *r = &m->sets[id];
    for (uint32_t i = 0; i < r->n; i++) {
        const struct gclass *c = &m->g->classes[m->g->el[m->fr[m->pool[r->first + i]].pos].v];
        for (uint32_t k = 0; k < c->n; k++) {
            uint32_t a = m->g->ranges[2 * (c->first + k)], b = m->g->ranges[2 * (c->first + k) + 1];
            if (!(b < lo || a > hi || (a <= lo && b >= hi)))
                return false;
        }
    }
    return true;
}

/* The non-ASCII groups the shortcut tells apart: first character, last. */
static const uint32_t plain_groups[2][2] = {{0x80, 0xFFFF}, {0x10000, 0x10FFFF}};

/* Whether a group of characters leads from state id to state to, alike. */
static bool group_leads(grammar_matcher *m, int32_t id, int grp, int32_t to)
{
    return uniform_in(m, id, plain_groups[grp][0], plain_groups[grp][1]) && step_cp(m, id, plain_groups[grp][0]) == to;
}

/* Fills the walk's shortcut (see struct walk): the plain characters are
 * those of the root state's most common ASCII transition. */
static void chain_prepare(struct walk *w)
{
    grammar_matcher *m = w->m;
    w->loop = false;
    w->n_chain = 0;
    if (m->u8.need || m->sets[w->root].n == 0 || m->sets[w->root].n > TRANS_STACKS)
        return;
    int32_t target = -1;
    int best = 0;
    for (uint32_t cp = 0; cp < 128; cp++) {
        int32_t t = step_cp(m, w->root, cp);
        if (t < 0 || t == target)
            continue;
        int count = 0;
        for (uint32_t c2 = cp; c2 < 128; c2++)
            count += step_cp(m, w->root, c2) == t;
        if (count > best) {
            best = count;
            target = t;
        }
    }
    if (target < 0 || m->oom)
        return;
    for (uint32_t cp = 0; cp < 128; cp++)
        if (step_cp(m, w->root, cp) == target)
            w->same_ascii[cp >> 6] |= 1ull << (cp & 63);
    w->same_bmp = group_leads(m, w->root, 0, target);
    w->same_astral = group_leads(m, w->root, 1, target);
    /* follow the plain characters while they agree */
    w->chain[0] = w->root;
    w->n_chain = 1;
    int32_t cur = w->root;
    while (w->n_chain < CHAIN_MAX && !m->oom) {
        int32_t next = -2;
        for (uint32_t cp = 0; cp < 128 && next != -1; cp++)
            if (w->same_ascii[cp >> 6] & (1ull << (cp & 63))) {
                int32_t t = step_cp(m, cur, cp);
                next = next == -2 || next == t ? t : -1;
            }
        if (next >= 0 && ((w->same_bmp && !group_leads(m, cur, 0, next)) ||
                          (w->same_astral && !group_leads(m, cur, 1, next))))
            next = -1;
        if (next < 0)
            break;
        if (next == cur) {
            w->loop = true;
            break;
        }
        w->chain[w->n_chain++] = next;
        cur = next;
    }
}

int grammar_matcher_mask(grammar_matcher *m, float *logits, const int32_t *eos, int n_eos)
{
    int n_vocab = m->v->n_vocab;
    memset(m->allowed, 0, ((size_t)n_vocab + 31) / 32 * sizeof(uint32_t));
    struct walk w = {.m = m};
    m->work = 0;
    /* frames and sets made by the walk live until it ends */
    size_t fr_mark = m->n_fr, pool_mark = m->n_pool;
    if (automaton_reset(m, m->n_slots ? m->n_slots : 1024) == 0 && (w.root = set_intern(m, &m->cur)) >= 0) {
        chain_prepare(&w);
        walk(&w, 0, w.root, m->u8, w.n_chain > 0 ? 0 : -1);
    }
    m->n_fr = fr_mark;
    m->n_pool = pool_mark;
    m->oom = false;
    bool end_ok = grammar_matcher_is_complete(m) || w.n_allowed == 0;
    for (int i = 0; i < n_eos; i++)
        if (eos[i] >= 0 && eos[i] < n_vocab && end_ok) {
            if (!(m->allowed[eos[i] >> 5] & (1u << (eos[i] & 31))))
                w.n_allowed++;
            m->allowed[eos[i] >> 5] |= 1u << (eos[i] & 31);
        }
    /* a whole word of the bitmap at a time: most words are all-zero */
    for (int i = 0; i < n_vocab; i += 32) {
        uint32_t bits = m->allowed[i >> 5];
        if (bits == 0xFFFFFFFFu)
            continue;
        int end = i + 32 < n_vocab ? i + 32 : n_vocab;
        for (int j = i; j < end; j++)
            if (!(bits & (1u << (j - i))))
                logits[j] = -INFINITY;
    }
    return w.n_allowed;
}

/* ---- advancing ---- */

/* Moves the frames reachable from cur to the bottom of the arena. */
static int compact(grammar_matcher *m)
{
    int32_t *live = buf_grow(m->live, &m->cap_live, m->n_fr + 1, sizeof(*m->live));
    if (!live)
        return -ENOMEM;
    m->live = live;
    memset(live, 0, sizeof(*live) * m->n_fr);
    for (uint32_t i = 0; i < m->cur.n; i++)
        for (int32_t f = m->pool[m->cur.first + i]; f >= 0 && !live[f]; f = m->fr[f].parent)
            live[f] = 1;
    /* parents are older than children: one pass in order renumbers */
    int32_t next = 0;
    for (size_t f = 0; f < m->n_fr; f++) {
        if (!live[f]) {
            live[f] = -1;
            continue;
        }
        struct frame fr = m->fr[f];
        fr.parent = fr.parent < 0 ? -1 : live[fr.parent];
        m->fr[next] = fr;
        live[f] = next++;
    }
    m->n_fr = (size_t)next;
    for (uint32_t i = 0; i < m->cur.n; i++)
        m->pool[i] = live[m->pool[m->cur.first + i]];
    m->cur.first = 0;
    m->n_pool = m->cur.n;
    return 0;
}

int grammar_matcher_accept_bytes(grammar_matcher *m, const char *s, size_t n)
{
    struct sset cur = m->cur;
    struct u8state u = m->u8;
    size_t fr_mark = m->n_fr, pool_mark = m->n_pool;
    for (size_t i = 0; i < n; i++) {
        uint32_t cp;
        int k = u8_feed(&u, (uint8_t)s[i], &cp);
        if (k < 0 || (k == 0 && !partial_viable(m, &cur, &u)))
            goto reject;
        if (k == 1) {
            cur = set_advance(m, &cur, cp);
            if (!cur.n && !(cur.complete && i + 1 == n))
                goto reject;
        }
    }
    if (m->oom)
        goto reject;
    m->cur = cur;
    m->u8 = u;
    return compact(m);
reject:
    m->n_fr = fr_mark;
    m->n_pool = pool_mark;
    m->oom = false;
    return -EINVAL;
}

int grammar_matcher_accept_token(grammar_matcher *m, int32_t id)
{
    if (id < 0 || id >= m->v->n_vocab || !m->v->bytes[id])
        return -EINVAL;
    return grammar_matcher_accept_bytes(m, m->v->bytes[id], m->v->len[id]);
}
