/* fuzz_tokenizer_encode.c - tok_encode() of arbitrary bytes with real
 * tokenizers (qwen3-tiny-random: byte-level BPE with NFC and a PCRE2
 * pre-tokenizer; tinystories-656k: SentencePiece-style BPE with byte
 * fallback), loaded once from $INFERD_SHARED.
 *
 * Input: byte 0 picks the tokenizer (bit 0), add_special (bit 1) and
 * skip_special for decoding (bit 2); the rest is the text. Checked: encode
 * fails exactly when the text is not valid UTF-8, and then with a message;
 * every id is in the vocabulary; decode succeeds; streaming decode (one id at
 * a time, then flush) gives the same text as decoding all at once. */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "text/tokenizer/tokenizer.h"

static const char *const tokenizer_dirs[2] = {"models/qwen3-tiny-random", "models/tinystories-656k"};
static tokenizer *toks[2];
static struct tok_ids ids; /* reused across inputs, as the daemon reuses it */

/* Strict UTF-8 (no overlongs, surrogates, or code points above U+10FFFF). */
static bool utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i <= k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    for (int i = 0; i < 2; i++) {
        char *dir = tu_shared_path("%s", tokenizer_dirs[i]);
        ifd_error err;
        if (!dir || tok_load(dir, &toks[i], &err) < 0) {
            fprintf(stderr, "fuzz_tokenizer_encode: cannot load the tokenizer of %s: %s\n",
                    dir ? dir : tokenizer_dirs[i], dir ? err.msg : "INFERD_SHARED not set");
            exit(1);
        }
        free(dir);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const tokenizer *t = toks[data[0] & 1];
    bool add_special = data[0] & 2, skip_special = data[0] & 4;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    ifd_error err = {{0}};
    int r = tok_encode(t, text, len, add_special, &ids, &err);
    bool valid = utf8_valid((const uint8_t *)text, len);
    if (r < 0) {
        if (valid || !err.msg[0]) {
            fprintf(stderr, "fuzz_tokenizer_encode: encode of %zu bytes (valid UTF-8: %d) failed: %s\n", len,
                    valid, err.msg);
            abort();
        }
        return 0;
    }
    if (!valid) {
        fprintf(stderr, "fuzz_tokenizer_encode: invalid UTF-8 was accepted\n");
        abort();
    }
    for (size_t i = 0; i < ids.n; i++)
        if (ids.ids[i] < 0 || !tok_id_to_token(t, ids.ids[i]))
            abort();

    char *whole = NULL;
    size_t whole_len = 0;
    if (tok_decode(t, ids.ids, ids.n, skip_special, &whole, &whole_len, &err) < 0) {
        fprintf(stderr, "fuzz_tokenizer_encode: decode of encoded ids failed: %s\n", err.msg);
        abort();
    }
    struct tok_stream *s = tok_stream_create(t, skip_special);
    if (!s)
        abort();
    char *out = NULL;
    size_t out_len = 0, out_cap = 0;
    for (size_t i = 0; i < ids.n; i++)
        if (tok_stream_push(s, ids.ids[i], &out, &out_len, &out_cap) < 0)
            abort();
    if (tok_stream_flush(s, &out, &out_len, &out_cap) < 0)
        abort();
    if (out_len != whole_len || (whole_len && memcmp(out, whole, whole_len) != 0)) {
        fprintf(stderr, "fuzz_tokenizer_encode: streaming decode (%zu bytes) differs from decode (%zu bytes)\n",
                out_len, whole_len);
        abort();
    }
    tok_stream_destroy(s);
    free(out);
    free(whole);
    return 0;
}

/* Seeds: the texts of the tokenizer goldens (prose, code, CJK, emoji, NFD,
 * special-token text ...), each under two selector bytes. */
struct golden_texts {
    fuzz_seed_fn add;
    void *ctx;
    const char *family;
    uint8_t sel;
};

static void add_golden_text(void *ctx, size_t line, cJSON *o)
{
    const struct golden_texts *g = ctx;
    const cJSON *txt = cJSON_GetObjectItemCaseSensitive(o, "text");
    if (!cJSON_IsString(txt))
        return;
    size_t n = strlen(txt->valuestring);
    uint8_t *buf = malloc(n + 1);
    if (buf) {
        char name[96];
        buf[0] = (uint8_t)(g->sel | (line & 6)); /* vary add/skip special */
        memcpy(buf + 1, txt->valuestring, n);
        snprintf(name, sizeof(name), "golden-%s-%04zu", g->family, line);
        g->add(g->ctx, name, buf, n + 1);
        free(buf);
    }
}

static void add_golden_texts(fuzz_seed_fn add, void *ctx, const char *family, uint8_t sel)
{
    char rel[128];
    snprintf(rel, sizeof(rel), "golden/tokenizer/%s.jsonl", family);
    struct golden_texts g = {add, ctx, family, sel};
    if (fuzz_shared_jsonl(rel, add_golden_text, &g) < 0)
        fprintf(stderr, "fuzz_tokenizer_encode: no seeds from %s\n", rel);
}

void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    add_golden_texts(add, ctx, "qwen3", 0);
    add_golden_texts(add, ctx, "tinystories", 1);
}
