/* tokenizer_text.c - text handling for the tokenizer: buffers, UTF-8,
 * Unicode predicates, normalizers and pre-tokenizers. The pre-tokenizers
 * follow Hugging Face tokenizers' split semantics (SplitDelimiterBehavior)
 * so that the pieces handed to the model are the same. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer-internal.h"

/* ---------------------------------------------------------------- buffers */

int tok_buf_reserve(struct tok_buf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->n)
        return -ENOMEM;
    char *p = buf_grow(b->p, &b->cap, b->n + extra + 1 /* room for a NUL */, 1);
    if (!p)
        return -ENOMEM;
    b->p = p;
    return 0;
}

int tok_buf_put(struct tok_buf *b, const void *s, size_t n)
{
    int r = tok_buf_reserve(b, n);
    if (r < 0)
        return r;
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

void tok_buf_finish(struct tok_buf *b)
{
    free(b->p);
    *b = (struct tok_buf){0};
}

char *tok_pool_dup(struct tok_pool *p, const char *s, size_t n)
{
    if (n + 1 > p->left) {
        size_t sz = n + 1 > 65536 ? n + 1 : 65536;
        char **nb = buf_grow(p->blocks, &p->cap_blocks, p->n_blocks + 1, sizeof(*nb));
        if (!nb)
            return NULL;
        p->blocks = nb;
        char *blk = malloc(sz);
        if (!blk)
            return NULL;
        p->blocks[p->n_blocks++] = blk;
        p->cur = blk;
        p->left = sz;
    }
    char *r = p->cur;
    if (n)
        memcpy(r, s, n);
    r[n] = '\0';
    p->cur += n + 1;
    p->left -= n + 1;
    return r;
}

void tok_pool_finish(struct tok_pool *p)
{
    for (size_t i = 0; i < p->n_blocks; i++)
        free(p->blocks[i]);
    free(p->blocks);
    *p = (struct tok_pool){0};
}

uint64_t tok_hash_bytes(const void *p, size_t n)
{
    /* 64-bit multiply-xorshift over 8-byte words: token strings are short, so
     * the per-call cost matters more than the last bit of distribution. */
    const unsigned char *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++)
        w |= (uint64_t)s[i] << (8 * i);
    h = (h ^ w) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

bool tok_cp_is_whitespace(int32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

static bool tok_cp_is_numeric(int32_t cp)
{
    if (cp < 0x80)
        return cp >= '0' && cp <= '9';
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

bool tok_cp_is_alnum(int32_t cp)
{
    /* Rust's is_alphanumeric is Alphabetic || Numeric; Alphabetic also holds
     * some combining marks (Other_Alphabetic) that this category test misses.
     * Only single_word added tokens use it. */
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z');
    utf8proc_category_t c = utf8proc_category(cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) || c == UTF8PROC_CATEGORY_ND ||
           c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 bytes to U+0100.. in byte order. */
int32_t tok_bytelevel_char(uint8_t b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))
        return b;
    int n = 0;
    for (int i = 0; i < b; i++)
        if (!((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE)))
            n++;
    return 256 + n;
}

int tok_bytelevel_byte(int32_t cp)
{
    if (cp < 0 || cp >= 256 + 68)
        return -1;
    if (cp < 256)
        return ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE)) ? cp : -1;
    int n = cp - 256;
    for (int i = 0; i < 256; i++)
        if (!((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE)) && n-- == 0)
            return i;
    return -1;
}

/* ---------------------------------------------------------------- patterns */

static void tok_pattern_finish(struct tok_pattern *p)
{
    if (p->re)
        pcre2_code_free(p->re);
    p->re = NULL;
}

static int md_get(pcre2_match_data **md)
{
    if (!*md) {
        *md = pcre2_match_data_create(16, NULL);
        if (!*md)
            return -ENOMEM;
    }
    return 0;
}

/* Iterates over the matches of p in s[0..len) as the onig crate's find_iter
 * does (what Hugging Face tokenizers runs): an empty match counts, except
 * right where the previous match ended, and then the search moves one
 * character on. Returns 1 with [*ms, *me), 0 at the end, or -errno. */
struct pat_iter {
    size_t next;          /* where the next search starts; > len: done */
    size_t last_match_end; /* SIZE_MAX: no match yet */
};

static int pattern_next(const struct tok_pattern *p, const char *s, size_t len, struct pat_iter *it,
                        pcre2_match_data **md, size_t *ms, size_t *me)
{
    if (!p->re) {
        /* a literal: never empty (an empty one matches nothing here) */
        if (p->lit_len == 0 || it->next > len)
            return 0;
        for (size_t i = it->next; i + p->lit_len <= len; i++) {
            const char *hit = memchr(s + i, p->lit[0], len - i - p->lit_len + 1);
            if (!hit)
                break;
            i = (size_t)(hit - s);
            if (memcmp(hit, p->lit, p->lit_len) == 0) {
                *ms = i;
                *me = it->next = i + p->lit_len;
                return 1;
            }
        }
        it->next = len + 1;
        return 0;
    }
    int r = md_get(md);
    if (r < 0)
        return r;
    while (it->next <= len) {
        int rc = pcre2_match(p->re, (PCRE2_SPTR)s, len, it->next, PCRE2_NO_UTF_CHECK, *md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) {
            it->next = len + 1;
            return 0;
        }
        if (rc < 0)
            return -EINVAL;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(*md);
        if (ov[1] == ov[0] && ov[1] == it->last_match_end) {
            /* empty match where the last one ended: step one character */
            size_t k = it->next + 1;
            while (k < len && ((unsigned char)s[k] & 0xC0) == 0x80)
                k++;
            it->next = k;
            continue;
        }
        *ms = ov[0];
        *me = it->next = it->last_match_end = ov[1];
        return 1;
    }
    return 0;
}

int tok_pattern_replace(const struct tok_pattern *p, const char *s, size_t len, const char *with,
                        size_t with_len, pcre2_match_data **md, struct tok_buf *out)
{
    size_t pos = 0, ms, me;
    struct pat_iter it = {0, SIZE_MAX};
    int r;
    while ((r = pattern_next(p, s, len, &it, md, &ms, &me)) == 1) {
        if ((r = tok_buf_put(out, s + pos, ms - pos)) < 0 || (r = tok_buf_put(out, with, with_len)) < 0)
            return r;
        pos = me;
    }
    if (r < 0)
        return r;
    return tok_buf_put(out, s + pos, len - pos);
}

/* ---------------------------------------------------------------- normalizers */


static void norm_clear(struct tok_norm *n)
{
    for (size_t i = 0; i < n->n_items; i++)
        norm_clear(&n->items[i]);
    free(n->items);
    tok_pattern_finish(&n->pat);
}

void tok_norm_free(struct tok_norm *n)
{
    if (!n)
        return;
    norm_clear(n);
    free(n);
}

static void pretok_clear(struct tok_pretok *p)
{
    for (size_t i = 0; i < p->n_items; i++)
        pretok_clear(&p->items[i]);
    free(p->items);
    tok_pattern_finish(&p->pat);
}

void tok_pretok_free(struct tok_pretok *p)
{
    if (!p)
        return;
    pretok_clear(p);
    free(p);
}

static void dec_clear(struct tok_dec *d)
{
    for (size_t i = 0; i < d->n_items; i++)
        dec_clear(&d->items[i]);
    free(d->items);
    tok_pattern_finish(&d->pat);
}

void tok_dec_free(struct tok_dec *d)
{
    if (!d)
        return;
    dec_clear(d);
    free(d);
}

/* Applies one normalizer; (*cur, *cur_len) is the current text, which lives in
 * the caller's input or in s->norm / s->norm2 (the two are used in turn). */
static int norm_step(const struct tok_norm *nm, struct tok_scratch *s, const char **cur, size_t *cur_len,
                     ifd_error *err)
{
    if (nm->type == TN_SEQUENCE) {
        for (size_t i = 0; i < nm->n_items; i++) {
            int r = norm_step(&nm->items[i], s, cur, cur_len, err);
            if (r < 0)
                return r;
        }
        return 0;
    }
    struct tok_buf *dst = (*cur == s->norm.p) ? &s->norm2 : &s->norm;
    const char *in = *cur;
    size_t len = *cur_len;
    int r = 0;
    dst->n = 0;
    switch (nm->type) {
    case TN_NFC:
    case TN_NFD:
    case TN_NFKC:
    case TN_NFKD: {
        bool ascii = true;
        for (size_t i = 0; i < len && ascii; i++)
            ascii = (unsigned char)in[i] < 0x80;
        if (ascii)
            return 0; /* every normal form of ASCII is itself */
        int opt = UTF8PROC_STABLE;
        opt |= (nm->type == TN_NFC || nm->type == TN_NFKC) ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE;
        if (nm->type == TN_NFKC || nm->type == TN_NFKD)
            opt |= UTF8PROC_COMPAT;
        utf8proc_uint8_t *outp = NULL;
        utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)len, &outp, opt);
        if (n < 0)
            return ifd_error_set(err, -EINVAL, "unicode normalization failed: %s", utf8proc_errmsg(n));
        r = tok_buf_put(dst, outp, (size_t)n);
        free(outp);
        break;
    }
    case TN_PREPEND:
        if (len == 0)
            return 0;
        if ((r = tok_buf_put(dst, nm->str, nm->str_len)) == 0)
            r = tok_buf_put(dst, in, len);
        break;
    case TN_REPLACE:
        r = tok_pattern_replace(&nm->pat, in, len, nm->str, nm->str_len, &s->md, dst);
        break;
    case TN_STRIP: {
        size_t a = 0, b = len;
        while (nm->strip_left && a < b) {
            size_t next = a;
            if (!tok_cp_is_whitespace(utf8_next(in, b, &next)))
                break;
            a = next;
        }
        while (nm->strip_right && b > a) {
            size_t k = b - 1;
            while (k > a && ((unsigned char)in[k] & 0xC0) == 0x80)
                k--;
            if (!tok_cp_is_whitespace(utf8_at(in + k, b - k)))
                break;
            b = k;
        }
        r = tok_buf_put(dst, in + a, b - a);
        break;
    }
    case TN_SEQUENCE:
        break;
    }
    if (r < 0)
        return ifd_error_set(err, r, "normalizer: out of memory");
    if (!dst->p && (r = tok_buf_put(dst, "", 0)) < 0)
        return r;
    *cur = dst->p;
    *cur_len = dst->n;
    return 0;
}

int tok_norm_apply(const struct tok_norm *nm, struct tok_scratch *s, const char *in, size_t len,
                   const char **ret, size_t *ret_len, ifd_error *err)
{
    const char *cur = in;
    size_t cur_len = len;
    if (nm) {
        int r = norm_step(nm, s, &cur, &cur_len, err);
        if (r < 0)
            return r;
    }
    *ret = cur;
    *ret_len = cur_len;
    return 0;
}

/* ---------------------------------------------------------------- pre-tokenizers */

static int pieces_push(struct tok_pieces *l, uint32_t src, size_t off, size_t len, bool first)
{
    if (len == 0)
        return 0; /* HF drops empty splits */
    struct tok_piece *v = buf_grow(l->v, &l->cap, l->n + 1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    l->v = v;
    l->v[l->n++] = (struct tok_piece){.src = src, .first = first, .off = off, .len = len};
    return 0;
}

static int spans_push(struct tok_scratch *s, size_t *n, size_t a, size_t b, bool m)
{
    struct tok_span *v = buf_grow(s->spans, &s->spans_cap, *n + 1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    s->spans = v;
    s->spans[(*n)++] = (struct tok_span){a, b, m};
    return 0;
}

/* Splits piece p (whose bytes are at text) at the spans s->spans[0..n) with
 * the given behaviour, appending the parts to out (HF NormalizedString::split). */
static int split_emit(struct tok_scratch *s, size_t n, enum tok_split_behavior beh, bool invert,
                      const struct tok_piece *p, struct tok_pieces *out)
{
    size_t base = out->n;
    bool prev_match = false;
    int r;
    for (size_t i = 0; i < n; i++) {
        struct tok_span sp = s->spans[i];
        bool m = sp.match != invert;
        bool has_last = out->n > base;
        struct tok_piece *last = has_last ? &out->v[out->n - 1] : NULL;
        switch (beh) {
        case TS_REMOVED:
            if (m)
                break;
            /* fall through */
        case TS_ISOLATED:
            if ((r = pieces_push(out, p->src, p->off + sp.s, sp.e - sp.s, p->first && sp.s == 0)) < 0)
                return r;
            break;
        case TS_MERGED_PREV:
            if (m && !prev_match && has_last)
                last->len = p->off + sp.e - last->off;
            else if ((r = pieces_push(out, p->src, p->off + sp.s, sp.e - sp.s, p->first && sp.s == 0)) < 0)
                return r;
            break;
        case TS_CONTIGUOUS:
            if (m == prev_match && has_last)
                last->len = p->off + sp.e - last->off;
            else if ((r = pieces_push(out, p->src, p->off + sp.s, sp.e - sp.s, p->first && sp.s == 0)) < 0)
                return r;
            break;
        case TS_MERGED_NEXT: {
            /* a match joins the piece after it when that one is not a match */
            size_t a = sp.s;
            while (m && i + 1 < n && (s->spans[i + 1].match == invert)) {
                i++;
                sp = s->spans[i];
                m = false;
            }
            if ((r = pieces_push(out, p->src, p->off + a, sp.e - a, p->first && a == 0)) < 0)
                return r;
            m = s->spans[i].match != invert;
            break;
        }
        }
        prev_match = m;
    }
    return 0;
}

/* Collects the spans of pattern matches in text[0..len). */
static int spans_pattern(struct tok_scratch *s, const struct tok_pattern *pat, const char *text, size_t len,
                         size_t *ret_n)
{
    size_t n = 0, pos = 0, ms, me;
    struct pat_iter it = {0, SIZE_MAX};
    int r;
    while ((r = pattern_next(pat, text, len, &it, &s->md, &ms, &me)) == 1) {
        if (ms > pos && (r = spans_push(s, &n, pos, ms, false)) < 0)
            return r;
        if ((r = spans_push(s, &n, ms, me, true)) < 0)
            return r;
        pos = me;
    }
    if (r < 0)
        return r;
    if (pos < len && (r = spans_push(s, &n, pos, len, false)) < 0)
        return r;
    *ret_n = n;
    return 0;
}

/* Spans where each character for which pred (or equality with the char ch)
 * holds is its own match, runs of other characters one non-match. */
static int spans_chars(struct tok_scratch *s, const char *text, size_t len, bool (*pred)(int32_t),
                       const char *ch, size_t ch_len, size_t *ret_n)
{
    size_t n = 0, run = 0, i = 0;
    int r;
    while (i < len) {
        size_t next = i;
        int32_t cp = utf8_next(text, len, &next);
        int k = (int)(next - i);
        bool m = pred ? pred(cp) : ((size_t)k == ch_len && memcmp(text + i, ch, ch_len) == 0);
        if (m) {
            if (i > run && (r = spans_push(s, &n, run, i, false)) < 0)
                return r;
            if ((r = spans_push(s, &n, i, i + (size_t)k, true)) < 0)
                return r;
            run = i + (size_t)k;
        }
        i += (size_t)k;
    }
    if (len > run && (r = spans_push(s, &n, run, len, false)) < 0)
        return r;
    *ret_n = n;
    return 0;
}

static int pretok_leaf(const struct tok_pretok *pt, struct tok_scratch *s, const char *text,
                       const struct tok_piece *p, struct tok_pieces *out)
{
    struct tok_piece q = *p;
    size_t n = 0;
    int r = 0;
    switch (pt->type) {
    case TP_SPLIT:
        r = spans_pattern(s, &pt->pat, tok_piece_ptr(s, text, &q), q.len, &n);
        if (r == 0)
            r = split_emit(s, n, pt->behavior, pt->invert, &q, out);
        return r;
    case TP_DIGITS:
        r = spans_chars(s, tok_piece_ptr(s, text, &q), q.len, tok_cp_is_numeric, NULL, 0, &n);
        if (r == 0)
            r = split_emit(s, n, pt->individual_digits ? TS_ISOLATED : TS_CONTIGUOUS, false, &q, out);
        return r;
    case TP_BYTELEVEL:
        if (pt->add_prefix_space && tok_piece_ptr(s, text, &q)[0] != ' ') {
            /* copy first: the arena may move while it grows */
            size_t off = s->arena.n;
            if ((r = tok_buf_reserve(&s->arena, q.len + 1)) < 0)
                return r;
            const char *src = tok_piece_ptr(s, text, &q);
            s->arena.p[off] = ' ';
            memmove(s->arena.p + off + 1, src, q.len);
            s->arena.n += q.len + 1;
            q = (struct tok_piece){.src = 1, .first = q.first, .off = off, .len = q.len + 1};
        }
        if (!pt->use_regex)
            return pieces_push(out, q.src, q.off, q.len, q.first);
        r = spans_pattern(s, &pt->pat, tok_piece_ptr(s, text, &q), q.len, &n);
        if (r == 0)
            r = split_emit(s, n, TS_ISOLATED, false, &q, out);
        return r;
    case TP_METASPACE: {
        /* replace ' ' by the replacement, prepend it, then split before each */
        size_t off = s->arena.n;
        if ((r = tok_buf_reserve(&s->arena, q.len * pt->replacement_len + pt->replacement_len)) < 0)
            return r;
        const char *src = tok_piece_ptr(s, text, &q);
        char *dst = s->arena.p + off;
        size_t o = 0;
        bool starts = q.len >= pt->replacement_len && memcmp(src, pt->replacement, pt->replacement_len) == 0;
        starts = starts || (src[0] == ' ');
        bool prepend = !starts && (pt->prepend_scheme == TPS_ALWAYS || (pt->prepend_scheme == TPS_FIRST && q.first));
        if (prepend) {
            memcpy(dst, pt->replacement, pt->replacement_len);
            o += pt->replacement_len;
        }
        for (size_t i = 0; i < q.len; i++) {
            if (src[i] == ' ') {
                memcpy(dst + o, pt->replacement, pt->replacement_len);
                o += pt->replacement_len;
            } else {
                dst[o++] = src[i];
            }
        }
        s->arena.n += o;
        q = (struct tok_piece){.src = 1, .first = q.first, .off = off, .len = o};
        if (!pt->split)
            return pieces_push(out, q.src, q.off, q.len, q.first);
        r = spans_chars(s, tok_piece_ptr(s, text, &q), q.len, NULL, pt->replacement, pt->replacement_len, &n);
        if (r == 0)
            r = split_emit(s, n, TS_MERGED_NEXT, false, &q, out);
        return r;
    }
    case TP_SEQUENCE:
        break;
    }
    return 0;
}

static int pretok_step(const struct tok_pretok *pt, struct tok_scratch *s, const char *text)
{
    if (pt->type == TP_SEQUENCE) {
        for (size_t i = 0; i < pt->n_items; i++) {
            int r = pretok_step(&pt->items[i], s, text);
            if (r < 0)
                return r;
        }
        return 0;
    }
    s->pb.n = 0;
    for (size_t i = 0; i < s->pa.n; i++) {
        int r = pretok_leaf(pt, s, text, &s->pa.v[i], &s->pb);
        if (r < 0)
            return r;
    }
    struct tok_pieces tmp = s->pa;
    s->pa = s->pb;
    s->pb = tmp;
    return 0;
}

int tok_pretok_run(const struct tokenizer *t, struct tok_scratch *s, const char *text, size_t len,
                   bool first, ifd_error *err)
{
    s->pa.n = 0;
    s->arena.n = 0;
    int r = pieces_push(&s->pa, 0, 0, len, first);
    if (r == 0 && t->pretok)
        r = pretok_step(t->pretok, s, text);
    if (r == -EINVAL)
        return ifd_error_set(err, r, "pre-tokenizer: regex match failed");
    if (r < 0)
        return ifd_error_set(err, r, "pre-tokenizer: out of memory");
    return 0;
}
