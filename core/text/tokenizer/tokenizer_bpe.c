/* tokenizer_bpe.c - open-addressing hash tables and the BPE model.
 *
 * Merging follows Hugging Face's Word::merge_all: a min-heap of candidate
 * pairs ordered by (rank, position), symbols in a doubly linked list, stale
 * heap entries skipped when popped. Each merge costs O(log n), so a long
 * word (SentencePiece-style tokenizers see whole sentences as one word)
 * never triggers a quadratic rescan. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer-internal.h"

/* ---------------------------------------------------------------- string map */

static size_t table_size(size_t expect)
{
    size_t n = 16;
    while (n < expect * 2)
        n *= 2;
    return n;
}

int tok_strmap_init(struct tok_strmap *m, size_t expect)
{
    size_t n = table_size(expect);
    m->slots = calloc(n, sizeof(*m->slots));
    if (!m->slots)
        return -ENOMEM;
    m->mask = n - 1;
    m->n = 0;
    return 0;
}

static int strmap_grow(struct tok_strmap *m)
{
    struct tok_strmap nm;
    int r = tok_strmap_init(&nm, (m->mask + 1));
    if (r < 0)
        return r;
    for (size_t i = 0; i <= m->mask; i++)
        if (m->slots[i].key)
            tok_strmap_put(&nm, m->slots[i].key, m->slots[i].len, m->slots[i].val);
    free(m->slots);
    *m = nm;
    return 0;
}

int tok_strmap_put(struct tok_strmap *m, const char *key, size_t len, int32_t val)
{
    if ((m->n + 1) * 2 > m->mask + 1) {
        int r = strmap_grow(m);
        if (r < 0)
            return r;
    }
    size_t i = tok_hash_bytes(key, len) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        struct tok_strmap_entry *e = &m->slots[i];
        if (!e->key) {
            *e = (struct tok_strmap_entry){key, (uint32_t)len, val};
            m->n++;
            return 0;
        }
        if (e->len == len && memcmp(e->key, key, len) == 0) {
            e->val = val;
            return 0;
        }
    }
}

int32_t tok_strmap_get(const struct tok_strmap *m, const char *key, size_t len)
{
    if (!m->slots)
        return -1;
    size_t i = tok_hash_bytes(key, len) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        const struct tok_strmap_entry *e = &m->slots[i];
        if (!e->key)
            return -1;
        if (e->len == len && memcmp(e->key, key, len) == 0)
            return e->val;
    }
}

void tok_strmap_finish(struct tok_strmap *m)
{
    free(m->slots);
    *m = (struct tok_strmap){0};
}

/* ---------------------------------------------------------------- pair map */

static inline size_t pair_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (size_t)k;
}

int tok_pairmap_init(struct tok_pairmap *m, size_t expect)
{
    size_t n = table_size(expect);
    m->slots = malloc(n * sizeof(*m->slots));
    if (!m->slots)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        m->slots[i].key = UINT64_MAX;
    m->mask = n - 1;
    m->n = 0;
    return 0;
}

int tok_pairmap_put(struct tok_pairmap *m, uint64_t key, int32_t a, int32_t b)
{
    if ((m->n + 1) * 2 > m->mask + 1) {
        struct tok_pairmap nm;
        int r = tok_pairmap_init(&nm, m->mask + 1);
        if (r < 0)
            return r;
        for (size_t i = 0; i <= m->mask; i++)
            if (m->slots[i].key != UINT64_MAX)
                tok_pairmap_put(&nm, m->slots[i].key, m->slots[i].a, m->slots[i].b);
        free(m->slots);
        *m = nm;
    }
    size_t i = pair_hash(key) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        struct tok_pairmap_entry *e = &m->slots[i];
        if (e->key == UINT64_MAX) {
            *e = (struct tok_pairmap_entry){key, a, b};
            m->n++;
            return 0;
        }
        if (e->key == key) {
            e->a = a; /* later duplicates win, as collecting into a HashMap does */
            e->b = b;
            return 0;
        }
    }
}

const struct tok_pairmap_entry *tok_pairmap_get(const struct tok_pairmap *m, uint64_t key)
{
    if (!m->slots)
        return NULL;
    size_t i = pair_hash(key) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        const struct tok_pairmap_entry *e = &m->slots[i];
        if (e->key == key)
            return e;
        if (e->key == UINT64_MAX)
            return NULL;
    }
}

void tok_pairmap_finish(struct tok_pairmap *m)
{
    free(m->slots);
    *m = (struct tok_pairmap){0};
}

/* ---------------------------------------------------------------- ids */

int tok_ids_push(struct tok_ids *v, int32_t id)
{
    int32_t *p = buf_grow(v->ids, &v->cap, v->n + 1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    v->ids = p;
    v->ids[v->n++] = id;
    return 0;
}

/* ---------------------------------------------------------------- BPE */

static int sym_reserve(struct tok_scratch *s, size_t n)
{
    if (n > SIZE_MAX / 3)
        return -ENOMEM;
    struct tok_symbol *v = buf_grow(s->sym, &s->sym_cap, n, sizeof(*v));
    if (!v)
        return -ENOMEM;
    s->sym = v;
    /* a merge heap of three candidates per symbol */
    struct tok_merge *h = buf_grow(s->heap, &s->heap_cap, 3 * n, sizeof(*h));
    if (!h)
        return -ENOMEM;
    s->heap = h;
    return 0;
}

static inline bool merge_less(struct tok_merge a, struct tok_merge b)
{
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

/* The heap never holds more than 3 entries per symbol: one initial pair per
 * position plus at most two pushes per merge, and each merge removes a symbol. */
static void heap_push(struct tok_merge *h, size_t *n, struct tok_merge m)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!merge_less(m, h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = m;
}

static struct tok_merge heap_pop(struct tok_merge *h, size_t *n)
{
    struct tok_merge top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && merge_less(h[c + 1], h[c]))
            c++;
        if (!merge_less(h[c], last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = last;
    return top;
}

static inline const struct tok_pairmap_entry *merge_get(const struct tok_bpe *m, int32_t a, int32_t b)
{
    return tok_pairmap_get(&m->merges, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b);
}

static void sym_add(struct tok_scratch *s, size_t *n, int32_t id, uint32_t len)
{
    size_t i = (*n)++;
    s->sym[i] = (struct tok_symbol){.id = id, .prev = (int32_t)i - 1, .next = (int32_t)i + 1, .len = len};
}

/* Initial symbols of a word in its general form (HF BPE::merge_word): each
 * character looked up with the continuing-subword prefix / end-of-word
 * suffix, else its bytes as <0xNN> (byte_fallback), else unk (fused). */
static int word_symbols_chars(const struct tokenizer *t, struct tok_scratch *s, const char *w, size_t len,
                              size_t *ret_n)
{
    const struct tok_bpe *m = &t->bpe;
    size_t n = 0;
    int32_t unk_len = -1; /* pending unk, its byte length */
    bool affix = m->cs_prefix_len || m->eow_suffix_len;
    for (size_t i = 0; i < len;) {
        size_t next = i;
        int32_t cp = utf8_next(w, len, &next);
        size_t k = next - i;
        int32_t id;
        if (!affix && cp < 0x80) {
            id = m->ascii_ids[cp];
        } else if (!affix) {
            id = tok_strmap_get(&m->vocab, w + i, k);
        } else {
            char tmp[TOK_TOKEN_MAX + 8];
            size_t tl = 0;
            bool first = i == 0, last = i + k == len;
            if (!first && m->cs_prefix_len + k <= TOK_TOKEN_MAX)
                memcpy(tmp, m->cs_prefix, m->cs_prefix_len), tl = m->cs_prefix_len;
            memcpy(tmp + tl, w + i, k);
            tl += k;
            if (last && tl + m->eow_suffix_len <= TOK_TOKEN_MAX)
                memcpy(tmp + tl, m->eow_suffix, m->eow_suffix_len), tl += m->eow_suffix_len;
            id = tok_strmap_get(&m->vocab, tmp, tl);
        }
        if (id >= 0) {
            if (unk_len >= 0)
                sym_add(s, &n, m->unk_id, (uint32_t)unk_len), unk_len = -1;
            sym_add(s, &n, id, (uint32_t)k);
        } else {
            bool done = false;
            if (m->byte_fallback) {
                done = true;
                for (size_t j = 0; j < k; j++)
                    done = done && m->fallback_ids[(unsigned char)w[i + j]] >= 0;
                if (done)
                    for (size_t j = 0; j < k; j++)
                        sym_add(s, &n, m->fallback_ids[(unsigned char)w[i + j]], 1);
            }
            if (!done && m->unk_id >= 0) {
                if (unk_len >= 0 && m->fuse_unk) {
                    unk_len += (int32_t)k;
                } else {
                    if (unk_len >= 0)
                        sym_add(s, &n, m->unk_id, (uint32_t)unk_len);
                    unk_len = (int32_t)k;
                }
            }
            /* no byte fallback and no unk: the character is dropped, as in HF */
        }
        i += k;
    }
    if (unk_len >= 0)
        sym_add(s, &n, m->unk_id, (uint32_t)unk_len);
    *ret_n = n;
    return 0;
}

static int bpe_word(const struct tokenizer *t, struct tok_scratch *s, const char *w, size_t len,
                    struct tok_ids *out)
{
    const struct tok_bpe *m = &t->bpe;
    int r;
    if (len == 0)
        return 0;
    /* a word has at most len symbols: one per byte */
    if ((r = sym_reserve(s, len + 2)) < 0)
        return r;
    size_t n = 0;
    if (t->byte_level) {
        /* fast path: every byte's character is in the vocabulary and there
         * is no prefix/suffix, so the symbols come from a table */
        bool fast = !m->cs_prefix_len && !m->eow_suffix_len;
        for (size_t i = 0; i < len && fast; i++)
            fast = m->bytelevel_ids[(uint8_t)w[i]] >= 0;
        if (m->ignore_merges || !fast) {
            /* the word as the vocabulary spells it */
            s->word.n = 0;
            if ((r = tok_buf_reserve(&s->word, len * 2)) < 0)
                return r;
            for (size_t i = 0; i < len; i++) {
                uint8_t c = (uint8_t)w[i];
                memcpy(s->word.p + s->word.n, m->bytelevel_utf8[c], 2);
                s->word.n += m->bytelevel_len[c];
            }
            if (m->ignore_merges) {
                int32_t id = tok_strmap_get(&m->vocab, s->word.p, s->word.n);
                if (id >= 0)
                    return tok_ids_push(out, id);
            }
        }
        if (fast) {
            for (size_t i = 0; i < len; i++)
                sym_add(s, &n, m->bytelevel_ids[(uint8_t)w[i]], 1);
        } else {
            /* general form: unknown characters become (fused) unk, as in HF */
            if ((r = sym_reserve(s, s->word.n + 2)) < 0)
                return r;
            word_symbols_chars(t, s, s->word.p, s->word.n, &n);
        }
    } else {
        if (m->ignore_merges) {
            int32_t id = tok_strmap_get(&m->vocab, w, len);
            if (id >= 0)
                return tok_ids_push(out, id);
        }
        word_symbols_chars(t, s, w, len, &n);
    }
    if (n == 0)
        return 0;
    s->sym[n - 1].next = -1;

    struct tok_symbol *sym = s->sym;
    struct tok_merge *heap = s->heap;
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        const struct tok_pairmap_entry *e = merge_get(m, sym[i].id, sym[i + 1].id);
        if (e)
            heap_push(heap, &hn, (struct tok_merge){e->a, (int32_t)i, e->b});
    }
    while (hn) {
        struct tok_merge top = heap_pop(heap, &hn);
        struct tok_symbol *cur = &sym[top.pos];
        if (cur->len == 0 || cur->next < 0)
            continue;
        struct tok_symbol right = sym[cur->next];
        const struct tok_pairmap_entry *e = merge_get(m, cur->id, right.id);
        if (!e || e->b != top.new_id)
            continue; /* stale entry */
        int32_t right_pos = cur->next;
        cur->id = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        sym[right_pos].len = 0;
        if (right.next >= 0)
            sym[right.next].prev = top.pos;
        if (cur->prev >= 0) {
            e = merge_get(m, sym[cur->prev].id, cur->id);
            if (e)
                heap_push(heap, &hn, (struct tok_merge){e->a, cur->prev, e->b});
        }
        if (cur->next >= 0) {
            e = merge_get(m, cur->id, sym[cur->next].id);
            if (e)
                heap_push(heap, &hn, (struct tok_merge){e->a, top.pos, e->b});
        }
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        if ((r = tok_ids_push(out, sym[i].id)) < 0)
            return r;
    return 0;
}

/* ---------------------------------------------------------------- word cache */

static struct tok_cache_entry *cache_slot(struct tok_scratch *s, const char *w, size_t len, uint64_t h,
                                          bool *found)
{
    size_t mask = TOK_CACHE_SLOTS - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        struct tok_cache_entry *e = &s->cache[i];
        if (e->hash == 0) {
            *found = false;
            return e;
        }
        if (e->hash == h && e->len == len && memcmp(s->cache_bytes.p + e->off, w, len) == 0) {
            *found = true;
            return e;
        }
    }
}

int tok_bpe_word(const struct tokenizer *t, struct tok_scratch *s, const char *w, size_t len,
                 struct tok_ids *out)
{
    if (len > TOK_CACHE_WORD_MAX || ++s->words_seen < TOK_CACHE_AFTER)
        return bpe_word(t, s, w, len, out);
    if (!s->cache) {
        s->cache = calloc(TOK_CACHE_SLOTS, sizeof(*s->cache));
        if (!s->cache)
            return bpe_word(t, s, w, len, out);
    }
    uint64_t h = tok_hash_bytes(w, len) | 1;
    bool found;
    struct tok_cache_entry *e = cache_slot(s, w, len, h, &found);
    if (found) {
        const char *ids = s->cache_bytes.p + e->off + ((e->len + 3) & ~(size_t)3);
        for (uint32_t i = 0; i < e->n_ids; i++) {
            int32_t id;
            memcpy(&id, ids + 4 * i, 4);
            int r = tok_ids_push(out, id);
            if (r < 0)
                return r;
        }
        return 0;
    }
    size_t before = out->n;
    int r = bpe_word(t, s, w, len, out);
    /* keep the table at most half full; past that, words just go uncached */
    if (r < 0 || s->cache_n >= TOK_CACHE_SLOTS / 2)
        return r;
    size_t n_ids = out->n - before, pad = ((len + 3) & ~(size_t)3) - len;
    size_t off = (s->cache_bytes.n + 3) & ~(size_t)3;
    static const char zeros[4] = {0};
    if (tok_buf_put(&s->cache_bytes, zeros, off - s->cache_bytes.n) < 0 ||
        tok_buf_put(&s->cache_bytes, w, len) < 0 || tok_buf_put(&s->cache_bytes, zeros, pad) < 0 ||
        tok_buf_put(&s->cache_bytes, out->ids + before, n_ids * sizeof(int32_t)) < 0)
        return 0; /* the ids are out already; the cache is only an optimisation */
    *e = (struct tok_cache_entry){.hash = h, .off = off, .len = (uint32_t)len, .n_ids = (uint32_t)n_ids};
    s->cache_n++;
    return 0;
}
