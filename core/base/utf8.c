/* utf8.c - UTF-8 decoding, encoding and validation; see utf8.h. */
#include "base/utf8.h"

#include <errno.h>
#include <string.h>

/* Length of the well-formed prefix of the sequence at s[0..len) (len >= 1),
 * following Unicode table 3-7; *complete says whether it is a whole
 * character. For a bad lead byte the prefix is that byte alone, so a caller
 * replacing prefixes always advances. */
static size_t utf8_prefix(const unsigned char *s, size_t len, bool *complete)
{
    unsigned char b = s[0];
    *complete = true;
    if (b < 0x80)
        return 1;
    size_t need;
    /* the second byte's range narrows for E0 (no overlong), ED (no
     * surrogate), F0 (no overlong) and F4 (nothing above U+10FFFF) */
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF)
        need = 2;
    else if (b == 0xE0)
        need = 3, lo = 0xA0;
    else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF)
        need = 3;
    else if (b == 0xED)
        need = 3, hi = 0x9F;
    else if (b == 0xF0)
        need = 4, lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3)
        need = 4;
    else if (b == 0xF4)
        need = 4, hi = 0x8F;
    else {
        *complete = false;
        return 1;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= len || s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF)) {
            *complete = false;
            return i;
        }
    }
    return need;
}

size_t utf8_check(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        /* ASCII fast path, 8 bytes at a time: most text is mostly ASCII */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, u + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= len)
            break;
        bool ok;
        size_t n = utf8_prefix(u + i, len - i, &ok);
        if (!ok)
            return i;
        i += n;
    }
    return len;
}

int utf8_decode(const char *s, size_t len, int32_t *ret_cp)
{
    const unsigned char *u = (const unsigned char *)s;
    bool ok;
    size_t n = utf8_prefix(u, len, &ok);
    if (!ok)
        return -EILSEQ;
    int32_t cp;
    switch (n) {
    case 1: cp = u[0]; break;
    case 2: cp = (u[0] & 0x1F) << 6 | (u[1] & 0x3F); break;
    case 3: cp = (u[0] & 0x0F) << 12 | (u[1] & 0x3F) << 6 | (u[2] & 0x3F); break;
    default: cp = (u[0] & 0x07) << 18 | (u[1] & 0x3F) << 12 | (u[2] & 0x3F) << 6 | (u[3] & 0x3F); break;
    }
    *ret_cp = cp;
    return (int)n;
}

int32_t utf8_next(const char *s, size_t len, size_t *i)
{
    int32_t cp;
    int n = utf8_decode(s + *i, len - *i, &cp);
    if (n > 0) {
        *i += (size_t)n;
        return cp;
    }
    bool ok;
    *i += utf8_prefix((const unsigned char *)s + *i, len - *i, &ok);
    return UTF8_REPLACEMENT;
}

int32_t utf8_at(const char *s, size_t len)
{
    int32_t cp;
    return utf8_decode(s, len, &cp) > 0 ? cp : UTF8_REPLACEMENT;
}

int utf8_encode(int32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return -EINVAL;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t utf8_copy_lossy(char *out, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < len) {
        size_t good = utf8_check(s + i, len - i);
        memcpy(out + o, s + i, good);
        o += good;
        i += good;
        if (i < len) {
            bool ok;
            i += utf8_prefix(u + i, len - i, &ok);
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
        }
    }
    out[o] = '\0';
    return o;
}
