/* tokenizer_decode.c - ids back to text through the tokenizer.json decoder
 * chain (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence),
 * and incremental decoding for streaming.
 *
 * Like Hugging Face tokenizers, every token (added ones included) goes
 * through the decoder chain; an added token with normalized=true is spelled
 * as its normalized content. skip_special drops a token whose string is the
 * content of a special added token. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer-internal.h"

static void tlist_clear(struct tok_tlist *l)
{
    l->text.n = 0;
    l->n = 0;
}

static void tlist_finish(struct tok_tlist *l)
{
    tok_buf_finish(&l->text);
    free(l->ends);
    *l = (struct tok_tlist){0};
}

static void tok_decscratch_finish(struct tok_decscratch *ds)
{
    if (!ds)
        return;
    tlist_finish(&ds->a);
    tlist_finish(&ds->b);
    if (ds->md)
        pcre2_match_data_free(ds->md);
    ds->md = NULL;
}

/* Ends the token whose bytes were appended to l->text since the last end. */
static int tlist_end(struct tok_tlist *l)
{
    size_t *e = buf_grow(l->ends, &l->cap, l->n + 1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    l->ends = e;
    l->ends[l->n++] = l->text.n;
    return 0;
}

static int tlist_add(struct tok_tlist *l, const char *s, size_t n)
{
    int r = tok_buf_put(&l->text, s, n);
    return r < 0 ? r : tlist_end(l);
}

static inline const char *tl_tok(const struct tok_tlist *l, size_t i, size_t *len)
{
    size_t a = i ? l->ends[i - 1] : 0;
    *len = l->ends[i] - a;
    return l->text.p + a;
}

static int byte_of_fallback(const char *s, size_t n)
{
    /* "<0xNN>" with upper- or lower-case hex digits, as u8::from_str_radix accepts */
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') ? (c | 0x20) - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

/* Applies one decoder step: in -> out. */
static int dec_leaf(const struct tok_dec *d, const struct tok_tlist *in, struct tok_tlist *out,
                    struct tok_decscratch *ds)
{
    int r = 0;
    size_t len = 0;
    tlist_clear(out);
    switch (d->type) {
    case TD_BYTELEVEL: {
        /* all tokens to bytes (a token with a char outside the alphabet is
         * kept as its UTF-8), then one lossy UTF-8 string */
        struct tok_buf *bytes = &out->text; /* reuse: built then converted in place below */
        struct tok_buf tmp = {0};
        for (size_t i = 0; i < in->n && r == 0; i++) {
            const char *s = tl_tok(in, i, &len);
            size_t mark = tmp.n;
            bool ok = true;
            if ((r = tok_buf_reserve(&tmp, len)) < 0)
                break;
            for (size_t j = 0; j < len;) {
                int b = tok_bytelevel_byte(utf8_next(s, len, &j));
                if (b < 0) {
                    ok = false;
                    break;
                }
                tmp.p[tmp.n++] = (char)b;
            }
            if (!ok) {
                tmp.n = mark;
                r = tok_buf_put(&tmp, s, len);
            }
        }
        /* each malformed run becomes one U+FFFD, as Rust's
         * String::from_utf8_lossy does */
        if (r == 0 && ds->raw)
            r = tok_buf_put(bytes, tmp.p ? tmp.p : "", tmp.n);
        else if (r == 0 && (r = tok_buf_reserve(bytes, 3 * tmp.n)) == 0)
            bytes->n += utf8_copy_lossy(bytes->p + bytes->n, tmp.p ? tmp.p : "", tmp.n);
        tok_buf_finish(&tmp);
        if (r == 0)
            r = tlist_end(out);
        return r;
    }
    case TD_REPLACE:
        for (size_t i = 0; i < in->n && r == 0; i++) {
            const char *s = tl_tok(in, i, &len);
            r = tok_pattern_replace(&d->pat, s, len, d->str, d->str_len, &ds->md, &out->text);
            if (r == 0)
                r = tlist_end(out);
        }
        return r;
    case TD_BYTEFALLBACK: {
        size_t run = 0; /* pending byte tokens, their bytes at the end of out->text */
        for (size_t i = 0; i <= in->n && r == 0; i++) {
            const char *s = i < in->n ? tl_tok(in, i, &len) : NULL;
            int b = s ? byte_of_fallback(s, len) : -1;
            if (b >= 0) {
                char c = (char)b;
                r = tok_buf_put(&out->text, &c, 1);
                run++;
                continue;
            }
            if (run) {
                size_t start = out->text.n - run;
                if (ds->raw || utf8_check(out->text.p + start, run) == run) {
                    r = tlist_end(out);
                } else {
                    out->text.n = start;
                    for (size_t k = 0; k < run && r == 0; k++)
                        r = tlist_add(out, "\xEF\xBF\xBD", 3);
                }
                run = 0;
            }
            if (s && r == 0)
                r = tlist_add(out, s, len);
        }
        return r;
    }
    case TD_FUSE:
        ds->fused = true;
        r = tok_buf_put(&out->text, in->text.p ? in->text.p : "", in->n ? in->ends[in->n - 1] : 0);
        return r < 0 ? r : tlist_end(out);
    case TD_STRIP:
        /* after Fuse, Strip cuts at the ends of the whole text: a token in
         * the middle of one (tok_token_bytes) keeps its spaces */
        if (ds->raw && ds->fused) {
            r = tok_buf_put(&out->text, in->text.p ? in->text.p : "", in->n ? in->ends[in->n - 1] : 0);
            return r < 0 ? r : tlist_end(out);
        }
        for (size_t i = 0; i < in->n && r == 0; i++) {
            const char *s = tl_tok(in, i, &len);
            size_t a = 0, cut_a = 0, cut_b = 0, b = len;
            while (cut_a < d->strip_start && a + d->ch_len <= len && memcmp(s + a, d->ch, d->ch_len) == 0)
                a += d->ch_len, cut_a++;
            size_t e = len;
            while (cut_b < d->strip_stop && e >= d->ch_len && memcmp(s + e - d->ch_len, d->ch, d->ch_len) == 0)
                e -= d->ch_len, cut_b++;
            /* HF takes (byte length - cuts) *characters* after the start cut,
             * so the stop cut only bites where that is fewer than remain */
            size_t want = len - cut_a - cut_b, have = utf8_chars(s + a, len - a);
            if (want < have) {
                b = a;
                for (size_t c = 0; c < want; c++) {
                    b++;
                    while (b < len && ((unsigned char)s[b] & 0xC0) == 0x80)
                        b++;
                }
            }
            if (b < a)
                b = a;
            r = tok_buf_put(&out->text, s + a, b - a);
            if (r == 0)
                r = tlist_end(out);
        }
        return r;
    case TD_METASPACE:
        for (size_t i = 0; i < in->n && r == 0; i++) {
            const char *s = tl_tok(in, i, &len);
            for (size_t j = 0; j < len && r == 0;) {
                if (j + d->ch_len <= len && memcmp(s + j, d->ch, d->ch_len) == 0) {
                    if (!(i == 0 && !ds->raw && d->prepend_scheme != TPS_NEVER))
                        r = tok_buf_put(&out->text, " ", 1);
                    j += d->ch_len;
                } else {
                    r = tok_buf_put(&out->text, s + j, 1);
                    j++;
                }
            }
            if (r == 0)
                r = tlist_end(out);
        }
        return r;
    case TD_SEQUENCE:
        break;
    }
    return 0;
}

/* Runs decoder d over ds->a (the result stays in ds->a). */
static int dec_step(const struct tok_dec *d, struct tok_decscratch *ds)
{
    if (d->type == TD_SEQUENCE) {
        for (size_t i = 0; i < d->n_items; i++) {
            int r = dec_step(&d->items[i], ds);
            if (r < 0)
                return r;
        }
        return 0;
    }
    int r = dec_leaf(d, &ds->a, &ds->b, ds);
    struct tok_tlist tmp = ds->a;
    ds->a = ds->b;
    ds->b = tmp;
    return r;
}

/* Decodes ids into out (cleared first; NUL-terminated). */
static int tok_decode_buf(const struct tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                          struct tok_buf *out, struct tok_decscratch *ds)
{
    int r = 0;
    tlist_clear(&ds->a);
    out->n = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->id_str[id])
            continue; /* unknown ids are dropped, as HF's id_to_token filter does */
        const char *s = t->id_str[id];
        size_t len = t->id_len[id];
        if (skip_special && (t->id_flags[id] & TOK_F_ADDED) && tok_strmap_get(&t->special_set, s, len) >= 0)
            continue;
        r = tlist_add(&ds->a, s, len);
    }
    if (r == 0 && t->dec)
        r = dec_step(t->dec, ds);
    for (size_t i = 0; i < ds->a.n && r == 0; i++) {
        size_t len;
        const char *s = tl_tok(&ds->a, i, &len);
        if (!t->dec && i > 0)
            r = tok_buf_put(out, " ", 1);
        if (r == 0)
            r = tok_buf_put(out, s, len);
    }
    if (r == 0)
        r = tok_buf_put(out, "", 0);
    return r;
}

int tok_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **ret_text,
               size_t *ret_len, ifd_error *err)
{
    struct tok_decscratch ds = {0};
    struct tok_buf out = {0};
    int r = tok_decode_buf(t, ids, n, skip_special, &out, &ds);
    tok_decscratch_finish(&ds);
    if (r < 0) {
        tok_buf_finish(&out);
        return ifd_error_set(err, r, "decode: out of memory");
    }
    *ret_text = out.p;
    if (ret_len)
        *ret_len = out.n;
    return 0;
}

int tok_token_bytes(const tokenizer *t, int32_t id, char **ret_bytes, size_t *ret_len, ifd_error *err)
{
    struct tok_decscratch ds = {.raw = true};
    struct tok_buf out = {0};
    int r = tok_decode_buf(t, &id, 1, false, &out, &ds);
    tok_decscratch_finish(&ds);
    if (r < 0) {
        tok_buf_finish(&out);
        return ifd_error_set(err, r, "decode: out of memory");
    }
    *ret_bytes = out.p;
    *ret_len = out.n;
    return 0;
}

/* ---------------------------------------------------------------- streaming */

/* Hugging Face's DecodeStream: keep a window of ids, decode it, and emit the
 * part past the previously emitted prefix once it no longer ends in U+FFFD
 * (an incomplete character). A window that still ends in U+FFFD after more
 * tokens than a character can span is emitted anyway: the model really
 * produced invalid bytes. */
#define TOK_STREAM_MAX_PENDING 8

struct tok_stream {
    const tokenizer *t;
    bool skip_special;
    struct tok_ids ids;
    size_t prefix_index;
    struct tok_buf prefix, cur;
    struct tok_decscratch ds;
    /* Text of primed context ids not emitted yet (tok_stream_prime): it
     * belongs to the context, and is cut from the next emission. */
    struct tok_buf held;
};

struct tok_stream *tok_stream_create(const tokenizer *t, bool skip_special)
{
    struct tok_stream *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->t = t;
    s->skip_special = skip_special;
    return s;
}

void tok_stream_destroy(struct tok_stream *s)
{
    if (!s)
        return;
    tok_ids_finish(&s->ids);
    tok_buf_finish(&s->prefix);
    tok_buf_finish(&s->cur);
    tok_buf_finish(&s->held);
    tok_decscratch_finish(&s->ds);
    free(s);
}

static int out_append(char **out, size_t *out_len, size_t *out_cap, const char *s, size_t n)
{
    size_t len = *out ? *out_len : 0;
    if (!*out)
        *out_cap = 0;
    char *p = n < SIZE_MAX - len - 1 ? buf_grow(*out, out_cap, len + n + 1, 1) : NULL;
    if (!p)
        return -ENOMEM;
    *out = p;
    memcpy(*out + len, s, n);
    (*out)[len + n] = '\0';
    *out_len = len + n;
    return (int)(n > INT32_MAX ? INT32_MAX : n);
}

static bool ends_with_fffd(const struct tok_buf *b)
{
    return b->n >= 3 && memcmp(b->p + b->n - 3, "\xEF\xBF\xBD", 3) == 0;
}

/* How many leading bytes of the first emission after tok_stream_prime are
 * the context's own text. The held text ends in U+FFFD where the context
 * ends inside a character: when the new ids complete that character the
 * emission no longer starts with the held text, only with the held text
 * before its trailing replacement characters, and the completed character
 * is new text. When they do not, the replacement stays the context's. */
static size_t stream_held_cut(struct tok_stream *s, const char *text, size_t len)
{
    if (s->held.n == 0)
        return 0;
    size_t keep = s->held.n;
    if (len < keep || memcmp(text, s->held.p, keep) != 0) {
        keep = s->held.n;
        while (keep >= 3 && memcmp(s->held.p + keep - 3, "\xEF\xBF\xBD", 3) == 0)
            keep -= 3;
        if (len < keep || memcmp(text, s->held.p, keep) != 0)
            keep = 0; /* the decoder rewrote the context's text: nothing sure to cut */
    }
    s->held.n = 0;
    return keep;
}

static int stream_emit(struct tok_stream *s, char **out, size_t *out_len, size_t *out_cap)
{
    if (s->cur.n < s->prefix.n || memcmp(s->cur.p, s->prefix.p ? s->prefix.p : "", s->prefix.n) != 0)
        return -EPROTO; /* the decoder rewrote earlier text: cannot stream it */
    size_t cut = stream_held_cut(s, s->cur.p + s->prefix.n, s->cur.n - s->prefix.n);
    int n = out_append(out, out_len, out_cap, s->cur.p + s->prefix.n + cut, s->cur.n - s->prefix.n - cut);
    if (n < 0)
        return n;
    size_t new_index = s->ids.n - s->prefix_index;
    memmove(s->ids.ids, s->ids.ids + s->prefix_index, new_index * sizeof(int32_t));
    s->ids.n = new_index;
    int r = tok_decode_buf(s->t, s->ids.ids, s->ids.n, s->skip_special, &s->prefix, &s->ds);
    if (r < 0)
        return r;
    s->prefix_index = new_index;
    return n;
}

int tok_stream_push(struct tok_stream *s, int32_t id, char **out, size_t *out_len, size_t *out_cap)
{
    int r = tok_ids_push(&s->ids, id);
    if (r < 0)
        return r;
    r = tok_decode_buf(s->t, s->ids.ids, s->ids.n, s->skip_special, &s->cur, &s->ds);
    if (r < 0)
        return r;
    bool pending_long = s->ids.n - s->prefix_index > TOK_STREAM_MAX_PENDING;
    if (s->cur.n > s->prefix.n && (!ends_with_fffd(&s->cur) || pending_long))
        return stream_emit(s, out, out_len, out_cap);
    if (!*out)
        return out_append(out, out_len, out_cap, "", 0);
    return 0;
}

int tok_stream_prime(struct tok_stream *s, const int32_t *ids, size_t n)
{
    char *text = NULL;
    size_t len = 0, cap = 0;
    int r = 0;
    s->held.n = 0;
    for (size_t i = 0; i < n && r >= 0; i++)
        r = tok_stream_push(s, ids[i], &text, &len, &cap);
    free(text);
    if (r < 0)
        return r;
    /* What the pending ids decode to past the emitted prefix: text held
     * back because it ends inside a character. */
    if ((r = tok_decode_buf(s->t, s->ids.ids, s->ids.n, s->skip_special, &s->cur, &s->ds)) < 0)
        return r;
    s->held.n = 0;
    if (s->cur.n > s->prefix.n && (r = tok_buf_put(&s->held, s->cur.p + s->prefix.n, s->cur.n - s->prefix.n)) < 0)
        return r;
    return 0;
}

int tok_stream_flush(struct tok_stream *s, char **out, size_t *out_len, size_t *out_cap)
{
    int r = tok_decode_buf(s->t, s->ids.ids, s->ids.n, s->skip_special, &s->cur, &s->ds);
    if (r < 0)
        return r;
    int n = 0;
    if (s->cur.n > s->prefix.n)
        n = stream_emit(s, out, out_len, out_cap);
    else if (!*out)
        n = out_append(out, out_len, out_cap, "", 0);
    s->ids.n = 0;
    s->prefix_index = 0;
    s->prefix.n = 0;
    return n;
}
