/* utf8.h - the one UTF-8 codec of the tree (tokenizer, chat templates, HTTP
 * API).
 *
 * Well-formed means Unicode table 3-7: no overlong forms, no surrogates
 * (U+D800..U+DFFF), nothing above U+10FFFF, no truncated sequence. Every
 * function takes a pointer and a length; none needs NUL termination. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest encoding of one code point. */
#define UTF8_MAX_BYTES 4
/* U+FFFD REPLACEMENT CHARACTER, what malformed bytes become. */
#define UTF8_REPLACEMENT 0xFFFD

/* Offset of the first byte of s[0..len) that does not start a well-formed
 * sequence, or len when all of it is well-formed. */
size_t utf8_check(const char *s, size_t len);

/* Decodes the code point that starts s (len >= 1). Returns its length in
 * bytes (1 to 4) and writes *ret_cp; or, when s does not start with a
 * well-formed sequence, returns -EILSEQ and writes nothing. */
int utf8_decode(const char *s, size_t len, int32_t *ret_cp);

/* Decodes the code point at s[*i] and advances *i past it. A malformed
 * sequence yields U+FFFD and advances by its maximal well-formed prefix (at
 * least one byte), the "substitution of maximal subparts" of Unicode 3.9 and
 * the WHATWG decoder: each malformed run becomes one U+FFFD. *i < len. */
int32_t utf8_next(const char *s, size_t len, size_t *i);

/* The code point that starts s[0..len) (len >= 1), U+FFFD when malformed:
 * for looking at a character without moving past it. */
int32_t utf8_at(const char *s, size_t len);

/* Writes the encoding of cp to out (room for UTF8_MAX_BYTES) and returns its
 * length; -EINVAL (nothing written) for a surrogate, a negative value or one
 * above U+10FFFF. */
int utf8_encode(int32_t cp, char *out);

/* Copies s[0..len) to out, each malformed run replaced by U+FFFD as
 * utf8_next() does, and NUL-terminates it; out must have room for 3 * len + 1
 * bytes (a malformed byte becomes 3). Returns the length written, without the
 * NUL. */
size_t utf8_copy_lossy(char *out, const char *s, size_t len);
