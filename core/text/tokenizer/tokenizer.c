/* tokenizer.c - loading tokenizer.json / tokenizer_config.json and the encode
 * pipeline, in the order Hugging Face tokenizers runs it:
 *   1. added tokens with normalized=false are split out of the raw text;
 *   2. each remaining segment is normalized, and added tokens with
 *      normalized=true are split out of the normalized text;
 *   3. each remaining piece is pre-tokenized and run through the BPE model;
 *   4. with add_special, the post-processor's tokens go around the result.
 * Everything the file asks for that is not implemented is refused at load
 * with a message naming it. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizer-internal.h"
#include "base/file.h"

/* Frees an encode scratch; defined with the encode path below. */
static void tok_scratch_finish(struct tok_scratch *s);

/* GPT-2's pre-tokenizer regex, used by ByteLevel with use_regex=true. */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum { ROLE_BOS, ROLE_EOS, ROLE_PAD, ROLE_UNK };
static const char *const role_names[] = {"bos_token", "eos_token", "pad_token", "unk_token"};

/* ---------------------------------------------------------------- JSON helpers */

struct loader {
    tokenizer *t;
    const char *origin;
    ifd_error *err;
};

static inline int fail(struct loader *L, int code, const char *fmt, const char *a, const char *b)
{
    char msg[IFD_ERROR_MSG_MAX];
    snprintf(msg, sizeof(msg), fmt, a ? a : "", b ? b : "");
    ifd_error_set(L->err, code, "%s: %s", L->origin, msg);
    return code; /* not ifd_error_set's value: lets the compiler see it is < 0 */
}

/* Optional boolean field: absent or null gives def. */
static int get_bool(struct loader *L, const cJSON *o, const char *key, const char *where, bool def, bool *ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        *ret = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return fail(L, -EINVAL, "%s.%s: expected a boolean", where, key);
    *ret = cJSON_IsTrue(v);
    return 0;
}

/* Optional string field: absent or null gives NULL. */
static int get_str(struct loader *L, const cJSON *o, const char *key, const char *where, const char **ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        *ret = NULL;
        return 0;
    }
    if (!cJSON_IsString(v))
        return fail(L, -EINVAL, "%s.%s: expected a string", where, key);
    *ret = v->valuestring;
    return 0;
}

static int get_uint(struct loader *L, const cJSON *o, const char *key, const char *where, double max,
                    size_t def, size_t *ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        *ret = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > max ||
        v->valuedouble != (double)(size_t)v->valuedouble)
        return fail(L, -EINVAL, "%s.%s: expected a non-negative integer in range", where, key);
    *ret = (size_t)v->valuedouble;
    return 0;
}

static int get_type(struct loader *L, const cJSON *o, const char *where, const char **ret)
{
    if (!cJSON_IsObject(o))
        return fail(L, -EINVAL, "%s: expected an object%s", where, NULL);
    const char *ty = NULL;
    int r = get_str(L, o, "type", where, &ty);
    if (r < 0)
        return r;
    if (!ty)
        return fail(L, -EINVAL, "%s: missing \"type\"%s", where, NULL);
    *ret = ty;
    return 0;
}

static char *pool_str(struct loader *L, const char *s, size_t n)
{
    return tok_pool_dup(&L->t->pool, s, n);
}

/* The characters Oniguruma (the regex engine of Hugging Face tokenizers)
 * matches with \s: Unicode's White_Space property. PCRE2's \s with UCP
 * also takes U+180E (MONGOLIAN VOWEL SEPARATOR, a space before Unicode 6.3),
 * which changes the pre-tokenization of text holding it, so \s and \S are
 * rewritten to this set before compiling. */
#define ONIG_SPACE_SET                                                                                        \
    "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"      \
    "\\x{3000}"

static int rewrite_spaces(const char *re, size_t len, struct tok_buf *out)
{
    bool in_class = false;
    int r = 0;
    for (size_t i = 0; i < len && r == 0; i++) {
        char c = re[i];
        if (c == '\\' && i + 1 < len) {
            char e = re[i + 1];
            i++;
            if (e == 's')
                r = tok_buf_put(out, in_class ? ONIG_SPACE_SET : "[" ONIG_SPACE_SET "]",
                                in_class ? sizeof(ONIG_SPACE_SET) - 1 : sizeof(ONIG_SPACE_SET) + 1);
            else if (e == 'S' && !in_class)
                r = tok_buf_put(out, "[^" ONIG_SPACE_SET "]", sizeof(ONIG_SPACE_SET) + 2);
            else
                r = tok_buf_put(out, re + i - 1, 2);
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            r = tok_buf_put(out, &c, 1);
            /* a ']' right after '[' or '[^' is a literal */
            if (r == 0 && i + 1 < len && re[i + 1] == '^')
                r = tok_buf_put(out, re + ++i, 1);
            if (r == 0 && i + 1 < len && re[i + 1] == ']')
                r = tok_buf_put(out, re + ++i, 1);
            continue;
        }
        if (c == ']' && in_class)
            in_class = false;
        r = tok_buf_put(out, &c, 1);
    }
    return r;
}

static int compile_regex(struct loader *L, const char *re, size_t len, const char *where, pcre2_code **ret)
{
    int ec;
    PCRE2_SIZE eo;
    struct tok_buf rw = {0};
    if (rewrite_spaces(re, len, &rw) < 0) {
        tok_buf_finish(&rw);
        return -ENOMEM;
    }
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)(rw.p ? rw.p : ""), rw.n, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    tok_buf_finish(&rw);
    if (!code) {
        PCRE2_UCHAR buf[256];
        pcre2_get_error_message(ec, buf, sizeof(buf));
        ifd_error_set(L->err, -EINVAL, "%s: %s: regex '%.100s' does not compile: %s", L->origin, where, re,
                      (const char *)buf);
        return -EINVAL;
    }
    /* JIT when the platform has it; pcre2_match falls back to the interpreter otherwise */
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    *ret = code;
    return 0;
}

/* {"String": "..."} or {"Regex": "..."} */
static int parse_pattern(struct loader *L, const cJSON *o, const char *where, struct tok_pattern *ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    if (!cJSON_IsObject(v))
        return fail(L, -EINVAL, "%s.pattern: expected {\"String\": ...} or {\"Regex\": ...}%s", where, NULL);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(v, "String");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(v, "Regex");
    if (cJSON_IsString(s)) {
        size_t n = strlen(s->valuestring);
        ret->lit = pool_str(L, s->valuestring, n);
        ret->lit_len = n;
        return ret->lit ? 0 : -ENOMEM;
    }
    if (cJSON_IsString(re))
        return compile_regex(L, re->valuestring, strlen(re->valuestring), where, &ret->re);
    return fail(L, -EINVAL, "%s.pattern: expected {\"String\": ...} or {\"Regex\": ...}%s", where, NULL);
}

static int get_array(struct loader *L, const cJSON *o, const char *key, const char *where, const cJSON **ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsArray(v))
        return fail(L, -EINVAL, "%s.%s: expected an array", where, key);
    if (cJSON_GetArraySize(v) > 4096)
        return fail(L, -E2BIG, "%s.%s: too many items", where, key);
    *ret = v;
    return 0;
}

/* One character, given as a string (Metaspace replacement, Strip content). */
static int get_char(struct loader *L, const cJSON *o, const char *key, const char *where, const char *def,
                    char out[8], size_t *ret_len)
{
    const char *s = NULL;
    int r = get_str(L, o, key, where, &s);
    if (r < 0)
        return r;
    if (!s)
        s = def;
    size_t n = strlen(s);
    int32_t cp;
    if (n == 0 || utf8_decode(s, n, &cp) != (int)n)
        return fail(L, -EINVAL, "%s.%s: expected a single character", where, key);
    memcpy(out, s, n);
    *ret_len = n;
    return 0;
}

static int get_prepend_scheme(struct loader *L, const cJSON *o, const char *where, enum tok_prepend_scheme *ret)
{
    const char *ps = NULL;
    bool aps = false;
    int r = get_str(L, o, "prepend_scheme", where, &ps);
    if (r < 0)
        return r;
    if (!ps) { /* older files: add_prefix_space */
        if ((r = get_bool(L, o, "add_prefix_space", where, true, &aps)) < 0)
            return r;
        *ret = aps ? TPS_ALWAYS : TPS_NEVER;
        return 0;
    }
    if (strcmp(ps, "always") == 0)
        *ret = TPS_ALWAYS;
    else if (strcmp(ps, "first") == 0)
        *ret = TPS_FIRST;
    else if (strcmp(ps, "never") == 0)
        *ret = TPS_NEVER;
    else
        return fail(L, -EINVAL, "%s.prepend_scheme: unknown value '%s'", where, ps);
    return 0;
}

/* ---------------------------------------------------------------- normalizer */

static int parse_norm(struct loader *L, const cJSON *o, int depth, struct tok_norm *n)
{
    const char *ty = NULL;
    int r;
    if (depth > TOK_DEPTH_MAX)
        return fail(L, -EINVAL, "normalizer: nested too deeply%s%s", NULL, NULL);
    if ((r = get_type(L, o, "normalizer", &ty)) < 0)
        return r;
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *a = NULL;
        if ((r = get_array(L, o, "normalizers", "normalizer", &a)) < 0)
            return r;
        n->type = TN_SEQUENCE;
        size_t cnt = (size_t)cJSON_GetArraySize(a);
        n->items = calloc(cnt ? cnt : 1, sizeof(*n->items));
        if (!n->items)
            return -ENOMEM;
        const cJSON *it;
        cJSON_ArrayForEach(it, a)
        {
            n->n_items++;
            if ((r = parse_norm(L, it, depth + 1, &n->items[n->n_items - 1])) < 0)
                return r;
        }
        return 0;
    }
    if (strcmp(ty, "NFC") == 0)
        n->type = TN_NFC;
    else if (strcmp(ty, "NFD") == 0)
        n->type = TN_NFD;
    else if (strcmp(ty, "NFKC") == 0)
        n->type = TN_NFKC;
    else if (strcmp(ty, "NFKD") == 0)
        n->type = TN_NFKD;
    else if (strcmp(ty, "Prepend") == 0) {
        const char *s = NULL;
        if ((r = get_str(L, o, "prepend", "normalizer Prepend", &s)) < 0)
            return r;
        if (!s)
            return fail(L, -EINVAL, "normalizer Prepend: missing \"prepend\"%s%s", NULL, NULL);
        n->type = TN_PREPEND;
        n->str_len = strlen(s);
        if (!(n->str = pool_str(L, s, n->str_len)))
            return -ENOMEM;
    } else if (strcmp(ty, "Replace") == 0) {
        const char *s = NULL;
        n->type = TN_REPLACE;
        if ((r = parse_pattern(L, o, "normalizer Replace", &n->pat)) < 0)
            return r;
        if ((r = get_str(L, o, "content", "normalizer Replace", &s)) < 0)
            return r;
        if (!s)
            return fail(L, -EINVAL, "normalizer Replace: missing \"content\"%s%s", NULL, NULL);
        n->str_len = strlen(s);
        if (!(n->str = pool_str(L, s, n->str_len)))
            return -ENOMEM;
    } else if (strcmp(ty, "Strip") == 0) {
        n->type = TN_STRIP;
        if ((r = get_bool(L, o, "strip_left", "normalizer Strip", true, &n->strip_left)) < 0 ||
            (r = get_bool(L, o, "strip_right", "normalizer Strip", true, &n->strip_right)) < 0)
            return r;
    } else {
        return fail(L, -EOPNOTSUPP, "normalizer type '%s' is not implemented%s", ty, NULL);
    }
    return 0;
}

/* ---------------------------------------------------------------- pre-tokenizer */

static int parse_pretok(struct loader *L, const cJSON *o, int depth, struct tok_pretok *p)
{
    const char *ty = NULL;
    int r;
    if (depth > TOK_DEPTH_MAX)
        return fail(L, -EINVAL, "pre_tokenizer: nested too deeply%s%s", NULL, NULL);
    if ((r = get_type(L, o, "pre_tokenizer", &ty)) < 0)
        return r;
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *a = NULL;
        if ((r = get_array(L, o, "pretokenizers", "pre_tokenizer", &a)) < 0)
            return r;
        p->type = TP_SEQUENCE;
        size_t cnt = (size_t)cJSON_GetArraySize(a);
        p->items = calloc(cnt ? cnt : 1, sizeof(*p->items));
        if (!p->items)
            return -ENOMEM;
        const cJSON *it;
        cJSON_ArrayForEach(it, a)
        {
            p->n_items++;
            if ((r = parse_pretok(L, it, depth + 1, &p->items[p->n_items - 1])) < 0)
                return r;
        }
        return 0;
    }
    if (strcmp(ty, "Split") == 0) {
        const char *beh = NULL;
        p->type = TP_SPLIT;
        if ((r = parse_pattern(L, o, "pre_tokenizer Split", &p->pat)) < 0 ||
            (r = get_bool(L, o, "invert", "pre_tokenizer Split", false, &p->invert)) < 0 ||
            (r = get_str(L, o, "behavior", "pre_tokenizer Split", &beh)) < 0)
            return r;
        if (!beh)
            return fail(L, -EINVAL, "pre_tokenizer Split: missing \"behavior\"%s%s", NULL, NULL);
        if (strcmp(beh, "Isolated") == 0)
            p->behavior = TS_ISOLATED;
        else if (strcmp(beh, "Removed") == 0)
            p->behavior = TS_REMOVED;
        else if (strcmp(beh, "MergedWithPrevious") == 0)
            p->behavior = TS_MERGED_PREV;
        else if (strcmp(beh, "MergedWithNext") == 0)
            p->behavior = TS_MERGED_NEXT;
        else if (strcmp(beh, "Contiguous") == 0)
            p->behavior = TS_CONTIGUOUS;
        else
            return fail(L, -EOPNOTSUPP, "pre_tokenizer Split: behavior '%s' is not implemented%s", beh, NULL);
    } else if (strcmp(ty, "ByteLevel") == 0) {
        p->type = TP_BYTELEVEL;
        if ((r = get_bool(L, o, "add_prefix_space", "pre_tokenizer ByteLevel", true, &p->add_prefix_space)) < 0 ||
            (r = get_bool(L, o, "use_regex", "pre_tokenizer ByteLevel", true, &p->use_regex)) < 0)
            return r;
        if (p->use_regex &&
            (r = compile_regex(L, gpt2_regex, sizeof(gpt2_regex) - 1, "pre_tokenizer ByteLevel", &p->pat.re)) < 0)
            return r;
    } else if (strcmp(ty, "Digits") == 0) {
        p->type = TP_DIGITS;
        if ((r = get_bool(L, o, "individual_digits", "pre_tokenizer Digits", false, &p->individual_digits)) < 0)
            return r;
    } else if (strcmp(ty, "Metaspace") == 0) {
        p->type = TP_METASPACE;
        if ((r = get_char(L, o, "replacement", "pre_tokenizer Metaspace", "\xE2\x96\x81", p->replacement,
                          &p->replacement_len)) < 0 ||
            (r = get_prepend_scheme(L, o, "pre_tokenizer Metaspace", &p->prepend_scheme)) < 0 ||
            (r = get_bool(L, o, "split", "pre_tokenizer Metaspace", true, &p->split)) < 0)
            return r;
    } else {
        return fail(L, -EOPNOTSUPP, "pre_tokenizer type '%s' is not implemented%s", ty, NULL);
    }
    return 0;
}

/* ByteLevel maps bytes to characters lazily, in the model: nothing may split
 * after it. Walks the leaves in order; *seen says a ByteLevel came before. */
static int check_bytelevel_last(struct loader *L, const struct tok_pretok *p, bool *seen)
{
    if (p->type == TP_SEQUENCE) {
        for (size_t i = 0; i < p->n_items; i++) {
            int r = check_bytelevel_last(L, &p->items[i], seen);
            if (r < 0)
                return r;
        }
        return 0;
    }
    if (*seen)
        return fail(L, -EOPNOTSUPP, "pre_tokenizer: a pre-tokenizer after ByteLevel is not implemented%s%s", NULL,
                    NULL);
    if (p->type == TP_BYTELEVEL)
        *seen = true;
    return 0;
}

/* ---------------------------------------------------------------- decoder */

static int parse_dec(struct loader *L, const cJSON *o, int depth, struct tok_dec *d)
{
    const char *ty = NULL;
    int r;
    if (depth > TOK_DEPTH_MAX)
        return fail(L, -EINVAL, "decoder: nested too deeply%s%s", NULL, NULL);
    if ((r = get_type(L, o, "decoder", &ty)) < 0)
        return r;
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *a = NULL;
        if ((r = get_array(L, o, "decoders", "decoder", &a)) < 0)
            return r;
        d->type = TD_SEQUENCE;
        size_t cnt = (size_t)cJSON_GetArraySize(a);
        d->items = calloc(cnt ? cnt : 1, sizeof(*d->items));
        if (!d->items)
            return -ENOMEM;
        const cJSON *it;
        cJSON_ArrayForEach(it, a)
        {
            d->n_items++;
            if ((r = parse_dec(L, it, depth + 1, &d->items[d->n_items - 1])) < 0)
                return r;
        }
        return 0;
    }
    if (strcmp(ty, "ByteLevel") == 0) {
        d->type = TD_BYTELEVEL;
    } else if (strcmp(ty, "ByteFallback") == 0) {
        d->type = TD_BYTEFALLBACK;
    } else if (strcmp(ty, "Fuse") == 0) {
        d->type = TD_FUSE;
    } else if (strcmp(ty, "Replace") == 0) {
        const char *s = NULL;
        d->type = TD_REPLACE;
        if ((r = parse_pattern(L, o, "decoder Replace", &d->pat)) < 0 ||
            (r = get_str(L, o, "content", "decoder Replace", &s)) < 0)
            return r;
        if (!s)
            return fail(L, -EINVAL, "decoder Replace: missing \"content\"%s%s", NULL, NULL);
        d->str_len = strlen(s);
        if (!(d->str = pool_str(L, s, d->str_len)))
            return -ENOMEM;
    } else if (strcmp(ty, "Strip") == 0) {
        d->type = TD_STRIP;
        if ((r = get_char(L, o, "content", "decoder Strip", " ", d->ch, &d->ch_len)) < 0 ||
            (r = get_uint(L, o, "start", "decoder Strip", 1 << 20, 0, &d->strip_start)) < 0 ||
            (r = get_uint(L, o, "stop", "decoder Strip", 1 << 20, 0, &d->strip_stop)) < 0)
            return r;
    } else if (strcmp(ty, "Metaspace") == 0) {
        d->type = TD_METASPACE;
        if ((r = get_char(L, o, "replacement", "decoder Metaspace", "\xE2\x96\x81", d->ch, &d->ch_len)) < 0 ||
            (r = get_prepend_scheme(L, o, "decoder Metaspace", &d->prepend_scheme)) < 0)
            return r;
    } else {
        return fail(L, -EOPNOTSUPP, "decoder type '%s' is not implemented%s", ty, NULL);
    }
    return 0;
}

/* ---------------------------------------------------------------- post-processor */

static int ids_append(int32_t **v, size_t *n, const int32_t *add, size_t k, bool front)
{
    if (k > 4096 || *n > 4096)
        return -E2BIG;
    int32_t *p = realloc(*v, (*n + k + 1) * sizeof(int32_t));
    if (!p)
        return -ENOMEM;
    if (k && front) {
        memmove(p + k, p, *n * sizeof(int32_t));
        memcpy(p, add, k * sizeof(int32_t));
    } else if (k) {
        memcpy(p + *n, add, k * sizeof(int32_t));
    }
    *v = p;
    *n += k;
    return 0;
}

/* ["[CLS]", 101] as BertProcessing / RobertaProcessing write it. */
static int get_named_id(struct loader *L, const cJSON *o, const char *key, const char *where, int32_t *ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    const cJSON *id = cJSON_IsArray(v) ? cJSON_GetArrayItem(v, 1) : NULL;
    if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= TOK_VOCAB_MAX)
        return fail(L, -EINVAL, "%s.%s: expected [token, id]", where, key);
    *ret = (int32_t)id->valuedouble;
    return 0;
}

/* Each processor wraps what the previous ones produced: its prefix goes
 * before theirs and its suffix after. */
static int parse_post(struct loader *L, const cJSON *o, int depth, bool *has_template)
{
    tokenizer *t = L->t;
    const char *ty = NULL;
    int r;
    if (depth > TOK_DEPTH_MAX)
        return fail(L, -EINVAL, "post_processor: nested too deeply%s%s", NULL, NULL);
    if ((r = get_type(L, o, "post_processor", &ty)) < 0)
        return r;
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *a = NULL, *it;
        if ((r = get_array(L, o, "processors", "post_processor", &a)) < 0)
            return r;
        cJSON_ArrayForEach(it, a)
        {
            if ((r = parse_post(L, it, depth + 1, has_template)) < 0)
                return r;
        }
        return 0;
    }
    if (strcmp(ty, "ByteLevel") == 0)
        return 0; /* it only trims offsets, which encode does not return */
    if (strcmp(ty, "BertProcessing") == 0 || strcmp(ty, "RobertaProcessing") == 0) {
        int32_t cls = 0, sep = 0;
        if ((r = get_named_id(L, o, "cls", "post_processor", &cls)) < 0 ||
            (r = get_named_id(L, o, "sep", "post_processor", &sep)) < 0)
            return r;
        *has_template = true;
        if ((r = ids_append(&t->post_prefix, &t->n_post_prefix, &cls, 1, true)) < 0 ||
            (r = ids_append(&t->post_suffix, &t->n_post_suffix, &sep, 1, false)) < 0)
            return fail(L, r, "post_processor: too many tokens%s%s", NULL, NULL);
        return 0;
    }
    if (strcmp(ty, "TemplateProcessing") != 0)
        return fail(L, -EOPNOTSUPP, "post_processor type '%s' is not implemented%s", ty, NULL);

    const cJSON *single = NULL, *it;
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
    if ((r = get_array(L, o, "single", "post_processor TemplateProcessing", &single)) < 0)
        return r;
    if (specials && !cJSON_IsObject(specials))
        return fail(L, -EINVAL, "post_processor TemplateProcessing.special_tokens: expected an object%s%s", NULL,
                    NULL);
    int32_t *pre = NULL, *suf = NULL;
    size_t n_pre = 0, n_suf = 0;
    int seen_a = 0;
    cJSON_ArrayForEach(it, single)
    {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        const cJSON *sq = cJSON_GetObjectItemCaseSensitive(it, "Sequence");
        if (cJSON_IsObject(sq)) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(sq, "id");
            if (!cJSON_IsString(id) || strcmp(id->valuestring, "A") != 0 || seen_a++) {
                r = fail(L, -EOPNOTSUPP, "post_processor TemplateProcessing: single template other than one "
                                         "sequence A is not implemented%s%s", NULL, NULL);
                goto out;
            }
            continue;
        }
        const cJSON *name = cJSON_IsObject(st) ? cJSON_GetObjectItemCaseSensitive(st, "id") : NULL;
        const cJSON *spec = cJSON_IsString(name) ? cJSON_GetObjectItemCaseSensitive(specials, name->valuestring)
                                                 : NULL;
        const cJSON *ids = cJSON_IsObject(spec) ? cJSON_GetObjectItemCaseSensitive(spec, "ids") : NULL;
        if (!cJSON_IsArray(ids)) {
            r = fail(L, -EINVAL, "post_processor TemplateProcessing: special token '%s' has no ids%s",
                     cJSON_IsString(name) ? name->valuestring : "?", NULL);
            goto out;
        }
        const cJSON *idv;
        cJSON_ArrayForEach(idv, ids)
        {
            if (!cJSON_IsNumber(idv) || idv->valuedouble < 0 || idv->valuedouble >= TOK_VOCAB_MAX) {
                r = fail(L, -EINVAL, "post_processor TemplateProcessing: special token '%s': bad id%s",
                         name->valuestring, NULL);
                goto out;
            }
            int32_t id = (int32_t)idv->valuedouble;
            if ((r = ids_append(seen_a ? &suf : &pre, seen_a ? &n_suf : &n_pre, &id, 1, false)) < 0) {
                r = fail(L, r, "post_processor: too many tokens%s%s", NULL, NULL);
                goto out;
            }
        }
    }
    if (!seen_a) {
        r = fail(L, -EOPNOTSUPP, "post_processor TemplateProcessing: single template without sequence A%s%s", NULL,
                 NULL);
        goto out;
    }
    *has_template = true;
    if ((r = ids_append(&t->post_prefix, &t->n_post_prefix, pre, n_pre, true)) < 0 ||
        (r = ids_append(&t->post_suffix, &t->n_post_suffix, suf, n_suf, false)) < 0)
        r = fail(L, r, "post_processor: too many tokens%s%s", NULL, NULL);
out:
    free(pre);
    free(suf);
    return r;
}

/* ---------------------------------------------------------------- model */

static int set_id(struct loader *L, int32_t id, const char *s, size_t len, uint8_t flags)
{
    tokenizer *t = L->t;
    t->id_str[id] = s;
    t->id_len[id] = (uint32_t)len;
    t->id_flags[id] = flags;
    return 0;
}

static int check_token(struct loader *L, const char *s, size_t n, const char *where)
{
    if (n == 0 || n > TOK_TOKEN_MAX)
        return fail(L, -EINVAL, "%s: token '%.64s' is empty or too long", where, s);
    if (utf8_check(s, n) != n)
        return fail(L, -EINVAL, "%s: token '%.64s' is not valid UTF-8", where, s);
    return 0;
}

static int parse_merge(struct loader *L, const cJSON *m, size_t rank, char *tmp)
{
    tokenizer *t = L->t;
    struct tok_bpe *b = &t->bpe;
    const char *a, *c;
    size_t la, lc;
    char rk[32];
    snprintf(rk, sizeof(rk), "%zu", rank);
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring;
        const char *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return fail(L, -EINVAL, "model.merges[%s]: expected \"left right\" with one space%s", rk, NULL);
        a = s;
        la = (size_t)(sp - s);
        c = sp + 1;
        lc = strlen(c);
    } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
               cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
        a = cJSON_GetArrayItem(m, 0)->valuestring;
        c = cJSON_GetArrayItem(m, 1)->valuestring;
        la = strlen(a);
        lc = strlen(c);
    } else {
        return fail(L, -EINVAL, "model.merges[%s]: expected a string or a pair of strings%s", rk, NULL);
    }
    int32_t ia = tok_strmap_get(&b->vocab, a, la), ic = tok_strmap_get(&b->vocab, c, lc);
    if (ia < 0 || ic < 0)
        return fail(L, -EINVAL, "model.merges[%s]: token '%.64s' is not in the vocabulary", rk, ia < 0 ? a : c);
    size_t cut = b->cs_prefix_len <= lc ? b->cs_prefix_len : lc;
    if (la + lc - cut > TOK_TOKEN_MAX)
        return fail(L, -EINVAL, "model.merges[%s]: merged token too long%s", rk, NULL);
    memcpy(tmp, a, la);
    memcpy(tmp + la, c + cut, lc - cut);
    int32_t im = tok_strmap_get(&b->vocab, tmp, la + lc - cut);
    if (im < 0)
        return fail(L, -EINVAL, "model.merges[%s]: merged token '%.64s' is not in the vocabulary", rk, tmp);
    if (rank > INT32_MAX)
        return fail(L, -E2BIG, "model.merges: too many merges%s%s", NULL, NULL);
    return tok_pairmap_put(&b->merges, ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ic, (int32_t)rank, im);
}

static int parse_model(struct loader *L, const cJSON *m, int32_t *max_id)
{
    tokenizer *t = L->t;
    struct tok_bpe *b = &t->bpe;
    int r;
    if (!cJSON_IsObject(m))
        return fail(L, -EINVAL, "model: expected an object%s%s", NULL, NULL);
    const char *ty = NULL;
    if ((r = get_str(L, m, "type", "model", &ty)) < 0)
        return r;
    if (ty && strcmp(ty, "BPE") != 0)
        return fail(L, -EOPNOTSUPP, "model type '%s' is not implemented (only BPE)%s", ty, NULL);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (dropout && !cJSON_IsNull(dropout))
        return fail(L, -EOPNOTSUPP, "model.dropout: BPE dropout is not implemented (must be null)%s%s", NULL, NULL);
    const char *unk = NULL, *pre = NULL, *suf = NULL;
    if ((r = get_str(L, m, "unk_token", "model", &unk)) < 0 ||
        (r = get_str(L, m, "continuing_subword_prefix", "model", &pre)) < 0 ||
        (r = get_str(L, m, "end_of_word_suffix", "model", &suf)) < 0 ||
        (r = get_bool(L, m, "fuse_unk", "model", false, &b->fuse_unk)) < 0 ||
        (r = get_bool(L, m, "byte_fallback", "model", false, &b->byte_fallback)) < 0 ||
        (r = get_bool(L, m, "ignore_merges", "model", false, &b->ignore_merges)) < 0)
        return r;
    b->cs_prefix_len = pre ? strlen(pre) : 0;
    b->eow_suffix_len = suf ? strlen(suf) : 0;
    if (b->cs_prefix_len > 64 || b->eow_suffix_len > 64)
        return fail(L, -EINVAL, "model: continuing_subword_prefix / end_of_word_suffix too long%s%s", NULL, NULL);
    if (!(b->cs_prefix = pool_str(L, pre ? pre : "", b->cs_prefix_len)) ||
        !(b->eow_suffix = pool_str(L, suf ? suf : "", b->eow_suffix_len)))
        return -ENOMEM;

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (!cJSON_IsObject(vocab))
        return fail(L, -EINVAL, "model.vocab: expected an object of token -> id%s%s", NULL, NULL);
    if (merges && !cJSON_IsArray(merges))
        return fail(L, -EINVAL, "model.merges: expected an array%s%s", NULL, NULL);
    int nv = cJSON_GetArraySize(vocab);
    if (nv > TOK_VOCAB_MAX)
        return fail(L, -E2BIG, "model.vocab: more than the %s tokens allowed%s", "4194304", NULL);
    if ((r = tok_strmap_init(&b->vocab, (size_t)nv)) < 0)
        return r;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab)
    {
        size_t n = strlen(it->string);
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= TOK_VOCAB_MAX ||
            it->valuedouble != (double)(int32_t)it->valuedouble)
            return fail(L, -EINVAL, "model.vocab['%.64s']: expected an id in [0, 4194304)%s", it->string, NULL);
        if ((r = check_token(L, it->string, n, "model.vocab")) < 0)
            return r;
        char *s = pool_str(L, it->string, n);
        if (!s || (r = tok_strmap_put(&b->vocab, s, n, (int32_t)it->valuedouble)) < 0)
            return -ENOMEM;
        if ((int32_t)it->valuedouble > *max_id)
            *max_id = (int32_t)it->valuedouble;
    }
    b->unk_id = -1;
    if (unk) {
        b->unk_id = tok_strmap_get(&b->vocab, unk, strlen(unk));
        if (b->unk_id < 0)
            return fail(L, -EINVAL, "model.unk_token '%.64s' is not in the vocabulary%s", unk, NULL);
    }
    int nm = merges ? cJSON_GetArraySize(merges) : 0;
    if ((r = tok_pairmap_init(&b->merges, (size_t)nm)) < 0)
        return r;
    char *tmp = malloc(2 * TOK_TOKEN_MAX + 1);
    if (!tmp)
        return -ENOMEM;
    size_t rank = 0;
    if (merges) {
        cJSON_ArrayForEach(it, merges)
        {
            if ((r = parse_merge(L, it, rank++, tmp)) < 0)
                break;
        }
    }
    free(tmp);
    if (r < 0)
        return r;
    for (int i = 0; i < 256; i++) {
        char name[8], ch[4];
        snprintf(name, sizeof(name), "<0x%02X>", i);
        b->fallback_ids[i] = tok_strmap_get(&b->vocab, name, 6);
        int bl = utf8_encode(tok_bytelevel_char((uint8_t)i), ch); /* U+0021..U+0143: 1 or 2 bytes */
        b->bytelevel_ids[i] = tok_strmap_get(&b->vocab, ch, (size_t)bl);
        memcpy(b->bytelevel_utf8[i], ch, 2);
        b->bytelevel_len[i] = (uint8_t)bl;
        if (i < 128) {
            ch[0] = (char)i;
            b->ascii_ids[i] = tok_strmap_get(&b->vocab, ch, 1);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- added tokens */

static int trie_add(struct tok_trie *tr, const char *s, size_t n, int32_t index)
{
    int32_t node = 0;
    int r;
    if (!tr->terminal) {
        tr->cap_nodes = 64;
        tr->terminal = malloc(tr->cap_nodes * sizeof(int32_t));
        if (!tr->terminal || (r = tok_pairmap_init(&tr->edges, 64)) < 0)
            return -ENOMEM;
        tr->terminal[0] = -1;
        tr->n_nodes = 1;
    }
    tr->first_byte[(unsigned char)s[0]] = true;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = ((uint64_t)(uint32_t)node << 8) | (unsigned char)s[i];
        const struct tok_pairmap_entry *e = tok_pairmap_get(&tr->edges, key);
        if (e) {
            node = e->a;
            continue;
        }
        int32_t *v = buf_grow(tr->terminal, &tr->cap_nodes, tr->n_nodes + 1, sizeof(*v));
        if (!v)
            return -ENOMEM;
        tr->terminal = v;
        int32_t child = (int32_t)tr->n_nodes++;
        tr->terminal[child] = -1;
        if ((r = tok_pairmap_put(&tr->edges, key, child, 0)) < 0)
            return r;
        node = child;
    }
    if (tr->terminal[node] < 0)
        tr->terminal[node] = index;
    return 0;
}

static void trie_finish(struct tok_trie *tr)
{
    tok_pairmap_finish(&tr->edges);
    free(tr->terminal);
    *tr = (struct tok_trie){0};
}

/* Leftmost-longest match at or after pos; returns the added[] index or -1. */
static int32_t trie_find(const struct tok_trie *tr, const char *s, size_t len, size_t pos, size_t *ms, size_t *me)
{
    if (!tr->terminal)
        return -1;
    for (size_t i = pos; i < len; i++) {
        if (!tr->first_byte[(unsigned char)s[i]])
            continue;
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < len; j++) {
            const struct tok_pairmap_entry *e =
                tok_pairmap_get(&tr->edges, ((uint64_t)(uint32_t)node << 8) | (unsigned char)s[j]);
            if (!e)
                break;
            node = e->a;
            if (tr->terminal[node] >= 0)
                best = tr->terminal[node], best_end = j + 1;
        }
        if (best >= 0) {
            *ms = i;
            *me = best_end;
            return best;
        }
    }
    return -1;
}

static int parse_added_items(struct loader *L, const cJSON *a, int32_t *max_id, struct tok_strmap *seen);

static int parse_added(struct loader *L, const cJSON *a, int32_t *max_id)
{
    struct tok_strmap seen = {0};
    int r = tok_strmap_init(&seen, 64);
    if (r == 0)
        r = parse_added_items(L, a, max_id, &seen);
    tok_strmap_finish(&seen);
    return r;
}

/* seen: contents added so far -> their id */
static int parse_added_items(struct loader *L, const cJSON *a, int32_t *max_id, struct tok_strmap *seen)
{
    int32_t max_added = -1;
    tokenizer *t = L->t;
    int r;
    if (!a || cJSON_IsNull(a))
        return 0;
    if (!cJSON_IsArray(a))
        return fail(L, -EINVAL, "added_tokens: expected an array%s%s", NULL, NULL);
    int n = cJSON_GetArraySize(a);
    if (n > TOK_VOCAB_MAX)
        return fail(L, -E2BIG, "added_tokens: too many%s%s", NULL, NULL);
    t->added = calloc(n ? (size_t)n : 1, sizeof(*t->added));
    if (!t->added)
        return -ENOMEM;
    const cJSON *it;
    cJSON_ArrayForEach(it, a)
    {
        struct tok_added *ad = &t->added[t->n_added];
        const char *content = NULL;
        size_t id = 0;
        if (!cJSON_IsObject(it))
            return fail(L, -EINVAL, "added_tokens: expected objects%s%s", NULL, NULL);
        if ((r = get_uint(L, it, "id", "added_tokens[]", TOK_VOCAB_MAX - 1, SIZE_MAX, &id)) < 0 ||
            (r = get_str(L, it, "content", "added_tokens[]", &content)) < 0 ||
            (r = get_bool(L, it, "special", "added_tokens[]", false, &ad->special)) < 0 ||
            (r = get_bool(L, it, "lstrip", "added_tokens[]", false, &ad->lstrip)) < 0 ||
            (r = get_bool(L, it, "rstrip", "added_tokens[]", false, &ad->rstrip)) < 0 ||
            (r = get_bool(L, it, "single_word", "added_tokens[]", false, &ad->single_word)) < 0 ||
            (r = get_bool(L, it, "normalized", "added_tokens[]", !ad->special, &ad->normalized)) < 0)
            return r;
        if (id == SIZE_MAX || !content)
            return fail(L, -EINVAL, "added_tokens[]: missing \"id\" or \"content\"%s%s", NULL, NULL);
        ad->content_len = strlen(content);
        if ((r = check_token(L, content, ad->content_len, "added_tokens")) < 0)
            return r;
        if (!(ad->content = pool_str(L, content, ad->content_len)))
            return -ENOMEM;
        /* Hugging Face ignores the id written in the file: a content already
         * in the vocabulary (or added before) keeps that id, a new one gets
         * the next id after the vocabulary and the added tokens so far. In
         * files it wrote itself the two agree. */
        int32_t known = tok_strmap_get(seen, ad->content, ad->content_len);
        if (known < 0)
            known = tok_strmap_get(&t->bpe.vocab, ad->content, ad->content_len);
        if (known >= 0) {
            ad->id = known;
        } else {
            int32_t vs = (int32_t)t->bpe.vocab.n;
            ad->id = (max_added >= vs || vs == 0) ? max_added + 1 : vs;
            if (ad->id >= TOK_VOCAB_MAX)
                return fail(L, -E2BIG, "added_tokens: too many tokens%s%s", NULL, NULL);
        }
        if ((r = tok_strmap_put(seen, ad->content, ad->content_len, ad->id)) < 0)
            return r;
        if (ad->id > max_added)
            max_added = ad->id;
        if (ad->id > *max_id)
            *max_id = ad->id;
        t->n_added++;
    }
    return 0;
}

/* After the normalizer is known: match strings, id table entries, tries. */
static int build_added(struct loader *L)
{
    tokenizer *t = L->t;
    struct tok_scratch s = {0};
    int r = 0;
    if ((r = tok_strmap_init(&t->added_map, t->n_added)) < 0 || (r = tok_strmap_init(&t->special_set, 16)) < 0)
        return r;
    for (size_t i = 0; i < t->n_added && r == 0; i++) {
        struct tok_added *ad = &t->added[i];
        ad->match = ad->content;
        ad->match_len = ad->content_len;
        if (ad->normalized && t->norm) {
            const char *m;
            size_t ml;
            if ((r = tok_norm_apply(t->norm, &s, ad->content, ad->content_len, &m, &ml, L->err)) < 0)
                break;
            if (ml == 0 || ml > TOK_TOKEN_MAX) {
                r = fail(L, -EINVAL, "added token '%.64s' normalizes to nothing or too much%s", ad->content, NULL);
                break;
            }
            if (!(ad->match = pool_str(L, m, ml))) {
                r = -ENOMEM;
                break;
            }
            ad->match_len = ml;
        }
        uint8_t flags = TOK_F_ADDED | (ad->special ? TOK_F_SPECIAL : 0);
        set_id(L, ad->id, ad->match, ad->match_len, flags);
        if ((r = tok_strmap_put(&t->added_map, ad->content, ad->content_len, ad->id)) < 0 ||
            (r = tok_strmap_put(&t->added_map, ad->match, ad->match_len, ad->id)) < 0)
            break;
        if (ad->special && (r = tok_strmap_put(&t->special_set, ad->content, ad->content_len, ad->id)) < 0)
            break;
        r = trie_add(ad->normalized ? &t->trie_norm : &t->trie_raw, ad->match, ad->match_len, (int32_t)i);
    }
    tok_scratch_finish(&s);
    return r;
}

/* ---------------------------------------------------------------- config */

static int config_token_name(struct loader *L, const cJSON *cfg, const char *key, const char **ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = NULL;
    if (cJSON_IsString(v))
        s = v->valuestring;
    else if (cJSON_IsObject(v) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(v, "content")))
        s = cJSON_GetObjectItemCaseSensitive(v, "content")->valuestring;
    else if (v && !cJSON_IsNull(v))
        return fail(L, -EINVAL, "tokenizer_config.json: %s: expected a string or {\"content\": ...}%s", key, NULL);
    *ret = NULL;
    if (s && !(*ret = pool_str(L, s, strlen(s))))
        return -ENOMEM;
    return 0;
}

static int parse_config(struct loader *L, const char *json, size_t len, bool has_template, const char *template_file)
{
    tokenizer *t = L->t;
    int r = 0;
    if (template_file && !(t->chat_template = pool_str(L, template_file, strlen(template_file))))
        return -ENOMEM;
    if (!json)
        return 0;
    if (len > TOK_CONFIG_MAX)
        return fail(L, -EFBIG, "tokenizer_config.json: larger than 16 MiB%s%s", NULL, NULL);
    cJSON *cfg = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return fail(L, -EINVAL, "tokenizer_config.json: not a JSON object%s%s", NULL, NULL);
    }
    for (int i = 0; i < 4 && r == 0; i++)
        r = config_token_name(L, cfg, role_names[i], &t->special_names[i]);
    bool add_bos = false, add_eos = false;
    if (r == 0)
        r = get_bool(L, cfg, "add_bos_token", "tokenizer_config.json", false, &add_bos);
    if (r == 0)
        r = get_bool(L, cfg, "add_eos_token", "tokenizer_config.json", false, &add_eos);
    /* transformers adds BOS/EOS itself only where the tokenizer.json
     * post-processor does not already template them */
    for (int k = 0; k < 2 && r == 0 && !has_template; k++) {
        const char *name = t->special_names[k == 0 ? ROLE_BOS : ROLE_EOS];
        if (!(k == 0 ? add_bos : add_eos) || !name)
            continue;
        int32_t id = tok_token_to_id(t, name);
        if (id < 0) {
            r = fail(L, -EINVAL, "tokenizer_config.json: %s '%.64s' is not a token", role_names[k], name);
            break;
        }
        r = k == 0 ? ids_append(&t->post_prefix, &t->n_post_prefix, &id, 1, true)
                   : ids_append(&t->post_suffix, &t->n_post_suffix, &id, 1, false);
    }
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    if (r == 0 && !t->chat_template && ct) {
        const char *s = NULL;
        if (cJSON_IsString(ct)) {
            s = ct->valuestring;
        } else if (cJSON_IsArray(ct)) {
            /* [{"name": "default", "template": ...}, ...] */
            const cJSON *it;
            cJSON_ArrayForEach(it, ct)
            {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
                const cJSON *tp = cJSON_GetObjectItemCaseSensitive(it, "template");
                if (cJSON_IsString(tp) && (!s || (cJSON_IsString(nm) && strcmp(nm->valuestring, "default") == 0)))
                    s = tp->valuestring;
            }
        }
        if (s && !(t->chat_template = pool_str(L, s, strlen(s))))
            r = -ENOMEM;
    }
    cJSON_Delete(cfg);
    return r;
}

/* ---------------------------------------------------------------- load */

static int json_error(struct loader *L, const char *json, size_t len, const char *name)
{
    const char *at = cJSON_GetErrorPtr();
    size_t off = (at && at >= json && at <= json + len) ? (size_t)(at - json) : len;
    char where[32];
    snprintf(where, sizeof(where), "%zu", off);
    return fail(L, -EINVAL, "%s: malformed JSON near byte %s", name, where);
}

static int load(tokenizer *t, const char *json, size_t len, const char *config, size_t config_len,
                const char *template_file, struct loader *L)
{
    int r;
    if (len > TOK_FILE_MAX)
        return fail(L, -EFBIG, "tokenizer.json: larger than the 64 MiB limit%s%s", NULL, NULL);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root)
        return json_error(L, json, len, "tokenizer.json");
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fail(L, -EINVAL, "tokenizer.json: expected a JSON object%s%s", NULL, NULL);
    }
    int32_t max_id = -1;
    const cJSON *v;
    bool has_template = false;
    if ((r = parse_model(L, cJSON_GetObjectItemCaseSensitive(root, "model"), &max_id)) < 0)
        goto out;
    if ((r = parse_added(L, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), &max_id)) < 0)
        goto out;
    v = cJSON_GetObjectItemCaseSensitive(root, "truncation");
    if (v && !cJSON_IsNull(v)) {
        r = fail(L, -EOPNOTSUPP, "truncation is not implemented (must be null)%s%s", NULL, NULL);
        goto out;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (v && !cJSON_IsNull(v)) {
        if (!(t->norm = calloc(1, sizeof(*t->norm)))) {
            r = -ENOMEM;
            goto out;
        }
        if ((r = parse_norm(L, v, 0, t->norm)) < 0)
            goto out;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (v && !cJSON_IsNull(v)) {
        if (!(t->pretok = calloc(1, sizeof(*t->pretok)))) {
            r = -ENOMEM;
            goto out;
        }
        if ((r = parse_pretok(L, v, 0, t->pretok)) < 0)
            goto out;
        if ((r = check_bytelevel_last(L, t->pretok, &t->byte_level)) < 0)
            goto out;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (v && !cJSON_IsNull(v)) {
        if (!(t->dec = calloc(1, sizeof(*t->dec)))) {
            r = -ENOMEM;
            goto out;
        }
        if ((r = parse_dec(L, v, 0, t->dec)) < 0)
            goto out;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    if (v && !cJSON_IsNull(v) && (r = parse_post(L, v, 0, &has_template)) < 0)
        goto out;

    /* id table: model vocabulary, then added tokens over it */
    t->n_ids = max_id + 1;
    t->id_str = calloc((size_t)t->n_ids + 1, sizeof(*t->id_str));
    t->id_len = calloc((size_t)t->n_ids + 1, sizeof(*t->id_len));
    t->id_flags = calloc((size_t)t->n_ids + 1, 1);
    if (!t->id_str || !t->id_len || !t->id_flags) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i <= t->bpe.vocab.mask; i++) {
        const struct tok_strmap_entry *e = &t->bpe.vocab.slots[i];
        if (e->key && !t->id_str[e->val])
            set_id(L, e->val, e->key, e->len, 0);
    }
    if ((r = build_added(L)) < 0)
        goto out;
    for (size_t i = 0; i < t->n_post_prefix + t->n_post_suffix; i++) {
        int32_t id = i < t->n_post_prefix ? t->post_prefix[i] : t->post_suffix[i - t->n_post_prefix];
        if (id >= t->n_ids || !t->id_str[id]) {
            char s[16];
            snprintf(s, sizeof(s), "%d", id);
            r = fail(L, -EINVAL, "post_processor: id %s is not in the vocabulary%s", s, NULL);
            goto out;
        }
    }
    r = parse_config(L, config, config_len, has_template, template_file);
out:
    cJSON_Delete(root);
    return r;
}

void tok_destroy(tokenizer *t)
{
    if (!t)
        return;
    tok_strmap_finish(&t->bpe.vocab);
    tok_pairmap_finish(&t->bpe.merges);
    tok_strmap_finish(&t->added_map);
    tok_strmap_finish(&t->special_set);
    trie_finish(&t->trie_raw);
    trie_finish(&t->trie_norm);
    free(t->added);
    free(t->id_str);
    free(t->id_len);
    free(t->id_flags);
    tok_norm_free(t->norm);
    tok_pretok_free(t->pretok);
    tok_dec_free(t->dec);
    free(t->post_prefix);
    free(t->post_suffix);
    tok_pool_finish(&t->pool);
    free(t);
}

static int load_memory(const char *json, size_t len, const char *config, size_t config_len, const char *tmpl,
                       const char *origin, tokenizer **ret, ifd_error *err)
{
    tokenizer *t = calloc(1, sizeof(*t));
    if (!t)
        return ifd_error_set(err, -ENOMEM, "%s: out of memory", origin);
    struct loader L = {t, origin ? origin : "tokenizer", err};
    int r = load(t, json, len, config, config_len, tmpl, &L);
    if (r < 0) {
        if (r == -ENOMEM)
            ifd_error_set(err, r, "%s: out of memory", L.origin);
        tok_destroy(t);
        return r;
    }
    *ret = t;
    return 0;
}

int tok_load_memory(const char *tokenizer_json, size_t len, const char *config_json, size_t config_len,
                    const char *origin, tokenizer **ret, ifd_error *err)
{
    return load_memory(tokenizer_json, len, config_json, config_len, NULL, origin, ret, err);
}

/* Reads a whole file; *ret is NULL (and 0 returned) when it does not exist and optional. */
static int read_file(const char *path, size_t max, bool optional, char **ret, size_t *ret_len, ifd_error *err)
{
    *ret = NULL;
    *ret_len = 0;
    int r = file_read(path, max, 0, ret, ret_len, err);
    return optional && r == -ENOENT ? 0 : r;
}

int tok_load(const char *dir, tokenizer **ret, ifd_error *err)
{
    size_t dl = strlen(dir);
    char *path = malloc(dl + 32);
    if (!path)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    char *json = NULL, *cfg = NULL, *tmpl = NULL;
    size_t len, cfg_len, tmpl_len;
    int r;
    snprintf(path, dl + 32, "%s/tokenizer.json", dir);
    if ((r = read_file(path, TOK_FILE_MAX, false, &json, &len, err)) < 0)
        goto out;
    snprintf(path, dl + 32, "%s/tokenizer_config.json", dir);
    if ((r = read_file(path, TOK_CONFIG_MAX, true, &cfg, &cfg_len, err)) < 0)
        goto out;
    snprintf(path, dl + 32, "%s/chat_template.jinja", dir);
    if ((r = read_file(path, TOK_TEMPLATE_MAX, true, &tmpl, &tmpl_len, err)) < 0)
        goto out;
    if (tmpl && strlen(tmpl) != tmpl_len) {
        r = ifd_error_set(err, -EINVAL, "'%s': contains a NUL byte", path);
        goto out;
    }
    snprintf(path, dl + 32, "%s/tokenizer.json", dir);
    r = load_memory(json, len, cfg, cfg_len, tmpl, path, ret, err);
out:
    free(json);
    free(cfg);
    free(tmpl);
    free(path);
    return r;
}

/* ---------------------------------------------------------------- encode */

void tok_ids_finish(struct tok_ids *v)
{
    if (!v)
        return;
    free(v->ids);
    *v = (struct tok_ids){0};
}

static void tok_scratch_finish(struct tok_scratch *s)
{
    tok_buf_finish(&s->norm);
    tok_buf_finish(&s->norm2);
    tok_buf_finish(&s->arena);
    tok_buf_finish(&s->word);
    free(s->pa.v);
    free(s->pb.v);
    free(s->spans);
    free(s->sym);
    free(s->heap);
    free(s->cache);
    tok_buf_finish(&s->cache_bytes);
    if (s->md)
        pcre2_match_data_free(s->md);
    *s = (struct tok_scratch){0};
}

static size_t ws_before(const char *s, size_t end)
{
    /* start of the whitespace run that ends at end */
    while (end > 0) {
        size_t k = end - 1;
        while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
            k--;
        if (!tok_cp_is_whitespace(utf8_at(s + k, end - k)))
            break;
        end = k;
    }
    return end;
}

static size_t ws_after(const char *s, size_t len, size_t start)
{
    while (start < len) {
        size_t next = start;
        if (!tok_cp_is_whitespace(utf8_next(s, len, &next)))
            break;
        start = next;
    }
    return start;
}

/* single_word boundaries: HF counts letters, digits and '_' as word characters */
static bool word_before(const char *s, size_t end)
{
    if (end == 0)
        return false;
    size_t k = end - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    int32_t cp = utf8_at(s + k, end - k);
    return cp == '_' || tok_cp_is_alnum(cp);
}

static bool word_after(const char *s, size_t len, size_t start)
{
    if (start >= len)
        return false;
    int32_t cp = utf8_at(s + start, len - start);
    return cp == '_' || tok_cp_is_alnum(cp);
}

struct enc_ctx {
    const tokenizer *t;
    struct tok_scratch *s;
    struct tok_ids *out;
    ifd_error *err;
    /* Ranges of the raw text where special added tokens must not match
     * (non-special ones still do): start, end pairs, ascending
     * (tok_encode_protected). */
    const size_t *protect;
    size_t n_protect;
    const char *raw; /* the raw text, to place a raw segment in it */
    bool norm_protected; /* the segment being normalized touches a protected range */
};

/* Whether [start, end) of the raw text overlaps a protected range. */
static bool protected_overlap(const struct enc_ctx *c, size_t start, size_t end)
{
    size_t lo = 0, hi = c->n_protect;
    while (lo < hi) { /* the first range that ends after start */
        size_t mid = lo + (hi - lo) / 2;
        if (c->protect[2 * mid + 1] <= start)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < c->n_protect && c->protect[2 * lo] < end;
}

/* Model + pre-tokenizer over one normalized piece that holds no added token. */
static int encode_model(struct enc_ctx *c, const char *text, size_t len, bool first)
{
    int r = tok_pretok_run(c->t, c->s, text, len, first, c->err);
    if (r < 0)
        return r;
    /* pieces live in s->pa; the BPE model does not touch them */
    for (size_t i = 0; i < c->s->pa.n; i++) {
        const struct tok_piece *p = &c->s->pa.v[i];
        if ((r = tok_bpe_word(c->t, c->s, tok_piece_ptr(c->s, text, p), p->len, c->out)) < 0)
            return ifd_error_set(c->err, r, "encode: out of memory");
    }
    return 0;
}

/* HF AddedVocabulary::find_matches over text with one trie; plain parts go to
 * next(). */
static int split_added(struct enc_ctx *c, const struct tok_trie *tr, const char *text, size_t len, bool first,
                       int (*next)(struct enc_ctx *, const char *, size_t, bool))
{
    const tokenizer *t = c->t;
    size_t pos = 0, start_offset = 0, ms, me;
    int32_t idx;
    int r;
    while ((idx = trie_find(tr, text, len, pos, &ms, &me)) >= 0) {
        const struct tok_added *ad = &t->added[idx];
        size_t start = ms, stop = me;
        pos = me;
        if (ms < start_offset)
            continue; /* inside what an rstrip already took */
        if (ad->single_word && (word_before(text, ms) || word_after(text, len, me)))
            continue;
        /* Untrusted text: a special token's text there is text. Special
         * only: non-special added tokens (Qwen3's <tool_response>, <think>)
         * steer no turn, and templates expect users to send them (a tool
         * result as user content). Raw matches sit at their raw offsets;
         * normalized text has other offsets, so a normalized segment that
         * touches a protected range matches no special token. */
        if (ad->special && (tr == &t->trie_raw ? protected_overlap(c, ms, me) : c->norm_protected))
            continue;
        if (ad->lstrip) {
            start = ws_before(text, ms);
            if (start < start_offset)
                start = start_offset;
        }
        if (ad->rstrip)
            stop = ws_after(text, len, me);
        if (start > start_offset && (r = next(c, text + start_offset, start - start_offset, first && start_offset == 0)) < 0)
            return r;
        if ((r = tok_ids_push(c->out, ad->id)) < 0)
            return ifd_error_set(c->err, r, "encode: out of memory");
        start_offset = stop;
        if (pos < stop)
            pos = stop;
    }
    if (start_offset < len)
        return next(c, text + start_offset, len - start_offset, first && start_offset == 0);
    return 0;
}

static int encode_normalized(struct enc_ctx *c, const char *text, size_t len, bool first)
{
    return split_added(c, &c->t->trie_norm, text, len, first, encode_model);
}

/* A segment of the raw text between added tokens: normalize, then split out
 * the normalized added tokens. The normalized text stays in s->norm/norm2
 * while its pieces are encoded: only this function writes those. */
static int encode_plain(struct enc_ctx *c, const char *text, size_t len, bool first)
{
    const char *nt;
    size_t nl;
    c->norm_protected = c->n_protect && protected_overlap(c, (size_t)(text - c->raw), (size_t)(text - c->raw) + len);
    int r = tok_norm_apply(c->t->norm, c->s, text, len, &nt, &nl, c->err);
    if (r < 0)
        return r;
    return encode_normalized(c, nt, nl, first);
}

static int encode_text(const tokenizer *t, const char *text, size_t len, bool add_special, const size_t *protect,
                       size_t n_protect, struct tok_ids *out, ifd_error *err)
{
    if (len > TOK_TEXT_MAX)
        return ifd_error_set(err, -E2BIG, "encode: text of %zu bytes is over the %zu byte limit", len, TOK_TEXT_MAX);
    size_t bad = utf8_check(text, len);
    if (bad != len)
        return ifd_error_set(err, -EILSEQ, "encode: invalid UTF-8 at byte offset %zu (byte 0x%02X)", bad,
                             (unsigned char)text[bad]);
    out->n = 0;
    int r = 0;
    if (add_special)
        for (size_t i = 0; i < t->n_post_prefix && r == 0; i++)
            r = tok_ids_push(out, t->post_prefix[i]);
    struct tok_scratch s = {0};
    struct enc_ctx c = {t, &s, out, err, protect, n_protect, text, false};
    if (r == 0 && len > 0)
        r = split_added(&c, &t->trie_raw, text, len, true, encode_plain);
    tok_scratch_finish(&s);
    if (add_special)
        for (size_t i = 0; i < t->n_post_suffix && r == 0; i++)
            r = tok_ids_push(out, t->post_suffix[i]);
    if (r == -ENOMEM)
        ifd_error_set(err, r, "encode: out of memory");
    return r < 0 ? r : 0;
}

int tok_encode(const tokenizer *t, const char *text, size_t len, bool add_special, struct tok_ids *out,
               ifd_error *err)
{
    return encode_text(t, text, len, add_special, NULL, 0, out, err);
}

int tok_encode_protected(const tokenizer *t, const char *text, size_t len, bool add_special, const size_t *protect,
                         size_t n_protect, struct tok_ids *out, ifd_error *err)
{
    for (size_t i = 0; i < n_protect; i++)
        if (protect[2 * i] >= protect[2 * i + 1] || protect[2 * i + 1] > len ||
            (i && protect[2 * i] < protect[2 * i - 1]))
            return ifd_error_set(err, -EINVAL,
                                 "encode: protected range %zu [%zu, %zu) is empty, past the %zu byte text or "
                                 "out of order",
                                 i, protect[2 * i], protect[2 * i + 1], len);
    return encode_text(t, text, len, add_special, protect, n_protect, out, err);
}

/* ---------------------------------------------------------------- lookups */

int tok_vocab_size(const tokenizer *t)
{
    return t->n_ids;
}

const char *tok_id_to_token(const tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->n_ids)
        return NULL;
    return t->id_str[id];
}

int32_t tok_token_to_id(const tokenizer *t, const char *token)
{
    size_t n = strlen(token);
    int32_t id = tok_strmap_get(&t->added_map, token, n);
    return id >= 0 ? id : tok_strmap_get(&t->bpe.vocab, token, n);
}

bool tok_is_special(const tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_ids && (t->id_flags[id] & TOK_F_SPECIAL);
}

const char *tok_special_token(const tokenizer *t, const char *role)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(role, role_names[i]) == 0)
            return t->special_names[i];
    return NULL;
}

const char *tok_chat_template(const tokenizer *t)
{
    return t->chat_template;
}
