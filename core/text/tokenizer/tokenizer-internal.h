/* tokenizer-internal.h - the parts of the tokenizer shared between its source
 * files (tokenizer.c: loading and the encode pipeline; tokenizer_text.c:
 * UTF-8, normalizers and pre-tokenizers; tokenizer_bpe.c: hash tables and the
 * BPE model; tokenizer_decode.c: decoders and streaming). Not a public API. */
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "text/tokenizer/tokenizer.h"

#include "base/buf.h"
#include "base/utf8.h" /* the UTF-8 codec every tokenizer file uses */

/* Limits on what a tokenizer.json may ask for. */
#define TOK_FILE_MAX ((size_t)64 << 20)   /* tokenizer.json bytes */
#define TOK_CONFIG_MAX ((size_t)16 << 20) /* tokenizer_config.json bytes */
#define TOK_TEMPLATE_MAX ((size_t)1 << 20) /* chat_template.jinja bytes */
#define TOK_VOCAB_MAX (1 << 22)           /* ids must be below this */
#define TOK_TOKEN_MAX 4096                /* bytes in one token string */
#define TOK_TEXT_MAX ((size_t)1 << 30)    /* bytes of text per encode call */
#define TOK_DEPTH_MAX 16                  /* nesting of Sequence normalizers etc. */

/* ---- growable byte buffer and small helpers (tokenizer_text.c) ---- */

struct tok_buf {
    char *p;
    size_t n, cap;
};
int tok_buf_reserve(struct tok_buf *b, size_t extra);
int tok_buf_put(struct tok_buf *b, const void *s, size_t n);
void tok_buf_finish(struct tok_buf *b);

/* Append-only string pool for every string the tokenizer keeps after load. */
struct tok_pool {
    char **blocks;
    size_t n_blocks, cap_blocks;
    char *cur;
    size_t left;
};
char *tok_pool_dup(struct tok_pool *p, const char *s, size_t n); /* NUL-terminated copy */
void tok_pool_finish(struct tok_pool *p);

uint64_t tok_hash_bytes(const void *p, size_t n);

bool tok_cp_is_whitespace(int32_t cp); /* Rust char::is_whitespace */
bool tok_cp_is_alnum(int32_t cp);      /* Rust char::is_alphanumeric (L*, N*) */

/* ---- hash tables (tokenizer_bpe.c) ---- */

/* String -> int32 map; keys point into the tokenizer's pool. */
struct tok_strmap_entry {
    const char *key;
    uint32_t len;
    int32_t val;
};
struct tok_strmap {
    struct tok_strmap_entry *slots;
    size_t mask, n;
};
int tok_strmap_init(struct tok_strmap *m, size_t expect);
/* Inserts or overwrites. */
int tok_strmap_put(struct tok_strmap *m, const char *key, size_t len, int32_t val);
int32_t tok_strmap_get(const struct tok_strmap *m, const char *key, size_t len); /* -1 absent */
void tok_strmap_finish(struct tok_strmap *m);

/* uint64 -> (int32, int32) map: BPE merges ((a << 32) | b -> rank, new id)
 * and the added-token trie ((node << 8) | byte -> child). */
struct tok_pairmap_entry {
    uint64_t key; /* UINT64_MAX = empty */
    int32_t a, b;
};
struct tok_pairmap {
    struct tok_pairmap_entry *slots;
    size_t mask, n;
};
int tok_pairmap_init(struct tok_pairmap *m, size_t expect);
int tok_pairmap_put(struct tok_pairmap *m, uint64_t key, int32_t a, int32_t b); /* overwrites */
const struct tok_pairmap_entry *tok_pairmap_get(const struct tok_pairmap *m, uint64_t key);
void tok_pairmap_finish(struct tok_pairmap *m);

/* ---- pipeline components ---- */

/* A literal or regex pattern (Split pre-tokenizer, Replace normalizer/decoder). */
struct tok_pattern {
    const char *lit; /* literal bytes, or NULL when re is set */
    size_t lit_len;
    pcre2_code *re;
};

enum tok_norm_type { TN_SEQUENCE, TN_NFC, TN_NFD, TN_NFKC, TN_NFKD, TN_PREPEND, TN_REPLACE, TN_STRIP };
struct tok_norm {
    enum tok_norm_type type;
    struct tok_norm *items; /* TN_SEQUENCE */
    size_t n_items;
    struct tok_pattern pat; /* TN_REPLACE */
    const char *str;        /* TN_PREPEND text, TN_REPLACE content */
    size_t str_len;
    bool strip_left, strip_right; /* TN_STRIP */
};

enum tok_split_behavior { TS_REMOVED, TS_ISOLATED, TS_MERGED_PREV, TS_MERGED_NEXT, TS_CONTIGUOUS };
enum tok_pretok_type { TP_SEQUENCE, TP_SPLIT, TP_BYTELEVEL, TP_DIGITS, TP_METASPACE };
enum tok_prepend_scheme { TPS_ALWAYS, TPS_FIRST, TPS_NEVER };
struct tok_pretok {
    enum tok_pretok_type type;
    struct tok_pretok *items; /* TP_SEQUENCE */
    size_t n_items;
    struct tok_pattern pat;   /* TP_SPLIT; TP_BYTELEVEL with use_regex (the GPT-2 regex) */
    enum tok_split_behavior behavior;
    bool invert;
    bool add_prefix_space, use_regex; /* TP_BYTELEVEL */
    bool individual_digits;           /* TP_DIGITS */
    char replacement[8];              /* TP_METASPACE, UTF-8 of one char */
    size_t replacement_len;
    enum tok_prepend_scheme prepend_scheme;
    bool split;
};

enum tok_dec_type { TD_SEQUENCE, TD_BYTELEVEL, TD_REPLACE, TD_BYTEFALLBACK, TD_FUSE, TD_STRIP, TD_METASPACE };
struct tok_dec {
    enum tok_dec_type type;
    struct tok_dec *items;
    size_t n_items;
    struct tok_pattern pat; /* TD_REPLACE */
    const char *str;        /* TD_REPLACE content */
    size_t str_len;
    char ch[8];             /* TD_STRIP content / TD_METASPACE replacement (one char, UTF-8) */
    size_t ch_len;
    size_t strip_start, strip_stop;
    enum tok_prepend_scheme prepend_scheme;
};

/* The BPE model. */
struct tok_bpe {
    struct tok_strmap vocab;   /* token string -> id (model vocabulary only) */
    struct tok_pairmap merges; /* (left id << 32 | right id) -> (rank, merged id) */
    int32_t unk_id;            /* -1 when there is no unk_token */
    bool fuse_unk, byte_fallback, ignore_merges;
    const char *cs_prefix; /* continuing_subword_prefix ("" when none) */
    size_t cs_prefix_len;
    const char *eow_suffix; /* end_of_word_suffix ("" when none) */
    size_t eow_suffix_len;
    int32_t fallback_ids[256];  /* id of "<0xNN>", or -1 */
    int32_t ascii_ids[128];     /* id of the one-byte token for an ASCII char, or -1 */
    int32_t bytelevel_ids[256]; /* id of the byte-level char standing for byte b, or -1 */
    char bytelevel_utf8[256][2]; /* UTF-8 of the byte-level char for byte b (all are < U+0800) */
    uint8_t bytelevel_len[256];
};

/* Added tokens, matched by a byte trie before the model runs. */
struct tok_added {
    int32_t id;
    const char *content; /* as written in the file */
    size_t content_len;
    const char *match; /* what is matched: content, or normalized content when normalized */
    size_t match_len;
    bool special, lstrip, rstrip, single_word, normalized;
};
struct tok_trie {
    struct tok_pairmap edges; /* (node << 8 | byte) -> (child, 0) */
    int32_t *terminal;        /* node -> index into added[], or -1 */
    size_t n_nodes, cap_nodes;
    bool first_byte[256];
};

struct tokenizer {
    struct tok_pool pool;
    /* id -> token string, for ids 0..n_ids-1 (NULL where the file has a gap) */
    const char **id_str;
    uint32_t *id_len;
    uint8_t *id_flags; /* TOK_F_* */
    int32_t n_ids;

    struct tok_bpe bpe;
    struct tok_added *added;
    size_t n_added;
    struct tok_strmap added_map;   /* added token string (as id_to_token gives it) -> id */
    struct tok_strmap special_set; /* contents of special added tokens (skip_special test) */
    struct tok_trie trie_raw;      /* added tokens with normalized=false, on the raw text */
    struct tok_trie trie_norm;     /* added tokens with normalized=true, on the normalized text */

    struct tok_norm *norm;     /* NULL = none */
    struct tok_pretok *pretok; /* NULL = none */
    bool byte_level;           /* the model sees byte-level characters (ByteLevel pre-tokenizer) */
    struct tok_dec *dec;       /* NULL = none: tokens joined with ' ' */

    /* post-processing with add_special: prefix ids + encoding + suffix ids */
    int32_t *post_prefix, *post_suffix;
    size_t n_post_prefix, n_post_suffix;

    const char *special_names[4]; /* bos, eos, pad, unk from tokenizer_config.json */
    const char *chat_template;
};

#define TOK_F_ADDED 1
#define TOK_F_SPECIAL 2

/* Per-encode scratch, allocated on first use in each call and reused across words. */
struct tok_piece {
    uint32_t src; /* 0: the segment text, 1: the scratch arena */
    uint32_t first; /* starts at offset 0 of the original text (Metaspace prepend_scheme=first) */
    size_t off, len;
};
struct tok_pieces {
    struct tok_piece *v;
    size_t n, cap;
};
struct tok_symbol {
    int32_t id;
    int32_t prev, next;
    uint32_t len; /* 0: merged into its left neighbour */
};
struct tok_merge {
    int32_t rank, pos, new_id;
};
struct tok_span {
    size_t s, e;
    bool match;
};
struct tok_scratch {
    struct tok_buf norm, norm2; /* normalized text of a segment */
    struct tok_buf arena;       /* text written by pre-tokenizers */
    struct tok_pieces pa, pb;
    struct tok_span *spans; /* matches of one split */
    size_t spans_cap;
    struct tok_buf word; /* byte-level mapped word */
    struct tok_symbol *sym;
    size_t sym_cap;
    struct tok_merge *heap;
    size_t heap_cap;
    pcre2_match_data *md;
    /* Words already merged in this call (word bytes -> ids), made once the
     * call has seen TOK_CACHE_AFTER words: text repeats words a lot, short
     * calls should not pay for the table. Per call, so encode stays
     * thread-safe without locks. */
    struct tok_cache_entry *cache;
    size_t cache_n, words_seen;
    struct tok_buf cache_bytes; /* word bytes then int32 ids, per entry */
};
struct tok_cache_entry {
    uint64_t hash; /* 0 = empty */
    size_t off;    /* word bytes at cache_bytes.p + off, ids right after (4-aligned) */
    uint32_t len, n_ids;
};
#define TOK_CACHE_SLOTS 8192 /* power of two */
#define TOK_CACHE_AFTER 64
#define TOK_CACHE_WORD_MAX 64

/* tokenizer_text.c */
int tok_norm_apply(const struct tok_norm *nm, struct tok_scratch *s, const char *in, size_t len,
                   const char **ret, size_t *ret_len, ifd_error *err);
int tok_pattern_replace(const struct tok_pattern *p, const char *s, size_t len, const char *with,
                        size_t with_len, pcre2_match_data **md, struct tok_buf *out);
/* Runs the pre-tokenizer on text (with the first-piece flag) and leaves the pieces in s->pa;
 * piece bytes are read through tok_piece_ptr. */
int tok_pretok_run(const struct tokenizer *t, struct tok_scratch *s, const char *text, size_t len,
                   bool first, ifd_error *err);
static inline const char *tok_piece_ptr(const struct tok_scratch *s, const char *text,
                                        const struct tok_piece *p)
{
    return (p->src ? s->arena.p : text) + p->off;
}
void tok_norm_free(struct tok_norm *n);
void tok_pretok_free(struct tok_pretok *p);
void tok_dec_free(struct tok_dec *d);
/* Byte-level alphabet: byte -> code point (GPT-2's bytes_to_unicode). */
int32_t tok_bytelevel_char(uint8_t b);
/* code point -> byte, or -1 when cp is not in the alphabet. */
int tok_bytelevel_byte(int32_t cp);

/* tokenizer_bpe.c: appends the ids of one pre-tokenized word to out. */
int tok_bpe_word(const struct tokenizer *t, struct tok_scratch *s, const char *w, size_t len,
                 struct tok_ids *out);
int tok_ids_push(struct tok_ids *v, int32_t id);

/* tokenizer_decode.c: a list of token strings stored end to end, and the
 * scratch of one decode (two lists used in turn by the decoder steps). */
struct tok_tlist {
    struct tok_buf text;
    size_t *ends; /* ends[i]: end offset of token i in text */
    size_t n, cap;
};
struct tok_decscratch {
    struct tok_tlist a, b;
    pcre2_match_data *md;
    /* tok_token_bytes: keep partial UTF-8 as bytes and decode as if in the
     * middle of a text (no first-token space strip) */
    bool raw;
    bool fused; /* a Fuse decoder ran (what Strip then cuts is the text's ends) */
};
