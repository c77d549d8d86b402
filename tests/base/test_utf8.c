/* test_utf8.c - the UTF-8 codec against Unicode table 3-7: every malformed
 * form (overlongs, surrogates, above U+10FFFF, truncation, stray
 * continuation bytes) is refused where it starts, and replaced by maximal
 * subparts (Unicode 3.9, table 3-8's example). */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "base/utf8.h"

#define S(lit) lit, sizeof(lit) - 1

Test(utf8, check_accepts_well_formed)
{
    const char *ok[] = {"", "plain ascii, longer than eight bytes", "\xC2\x80", "\xDF\xBF", "\xE0\xA0\x80",
                        "\xED\x9F\xBF", "\xEE\x80\x80", "\xEF\xBF\xBF", "\xF0\x90\x80\x80", "\xF4\x8F\xBF\xBF",
                        "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        cr_assert_eq(utf8_check(ok[i], strlen(ok[i])), strlen(ok[i]), "case %zu", i);
}

Test(utf8, check_reports_first_bad_byte)
{
    static const struct {
        const char *s;
        size_t len, bad;
        const char *what;
    } cases[] = {
        {S("ab\xC0\x80"), 2, "overlong 2-byte NUL"},
        {S("\xC1\xBF"), 0, "overlong 2-byte"},
        {S("x\xE0\x80\x80"), 1, "overlong 3-byte"},
        {S("\xE0\x9F\xBF"), 0, "overlong 3-byte, top"},
        {S("\xF0\x80\x80\x80"), 0, "overlong 4-byte"},
        {S("\xF0\x8F\xBF\xBF"), 0, "overlong 4-byte, top"},
        {S("ok\xED\xA0\x80"), 2, "high surrogate U+D800"},
        {S("\xED\xBF\xBF"), 0, "low surrogate U+DFFF"},
        {S("\xF4\x90\x80\x80"), 0, "U+110000"},
        {S("\xF5\x80\x80\x80"), 0, "lead F5"},
        {S("\xFF"), 0, "lead FF"},
        {S("abc\x80"), 3, "stray continuation"},
        {S("\xE2\x82"), 0, "truncated 3-byte"},
        {S("\xF0\x9F\x98"), 0, "truncated 4-byte"},
        {S("\xC3"), 0, "truncated 2-byte at the end"},
        {S("\xC3x"), 0, "lead then ASCII"},
        {S("0123456789abcdef\x80"), 16, "after the 8-byte ASCII fast path"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cr_assert_eq(utf8_check(cases[i].s, cases[i].len), cases[i].bad, "%s", cases[i].what);
        int32_t cp = 7;
        cr_assert_eq(utf8_decode(cases[i].s + cases[i].bad, cases[i].len - cases[i].bad, &cp), -EILSEQ, "%s",
                     cases[i].what);
        cr_assert_eq(cp, 7, "%s: nothing written on failure", cases[i].what);
    }
}

Test(utf8, decode_encode_round_trip_at_the_boundaries)
{
    const int32_t cps[] = {0, 0x7F, 0x80, 0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFD, 0xFFFF, 0x10000, 0x10FFFF};
    const int lens[] = {1, 1, 2, 2, 3, 3, 3, 3, 3, 4, 4};
    for (size_t i = 0; i < sizeof(cps) / sizeof(cps[0]); i++) {
        char b[UTF8_MAX_BYTES];
        cr_assert_eq(utf8_encode(cps[i], b), lens[i], "U+%04X", cps[i]);
        int32_t cp;
        cr_assert_eq(utf8_decode(b, (size_t)lens[i], &cp), lens[i], "U+%04X", cps[i]);
        cr_assert_eq(cp, cps[i]);
        cr_assert_eq(utf8_check(b, (size_t)lens[i]), (size_t)lens[i]);
    }
}

Test(utf8, encode_refuses_what_is_not_a_scalar_value)
{
    char b[UTF8_MAX_BYTES] = {'x', 'x', 'x', 'x'};
    cr_assert_eq(utf8_encode(0xD800, b), -EINVAL);
    cr_assert_eq(utf8_encode(0xDFFF, b), -EINVAL);
    cr_assert_eq(utf8_encode(0x110000, b), -EINVAL);
    cr_assert_eq(utf8_encode(-1, b), -EINVAL);
    cr_assert_eq(memcmp(b, "xxxx", 4), 0, "nothing written");
}

/* Each maximal well-formed prefix of a malformed sequence is one U+FFFD;
 * a byte that cannot start or continue one is one U+FFFD of its own. */
Test(utf8, next_substitutes_maximal_subparts)
{
    static const struct {
        const char *s;
        size_t len;
        int n_cps;
        int32_t cps[6];
    } cases[] = {
        {S("\xE2\x82"), 1, {0xFFFD}},
        {S("\xF0\x9F\x98!"), 2, {0xFFFD, '!'}},
        {S("\xC0\x80"), 2, {0xFFFD, 0xFFFD}},
        {S("\xED\xA0\x80"), 3, {0xFFFD, 0xFFFD, 0xFFFD}},
        {S("a\xE2\x82\xAC"), 2, {'a', 0x20AC}},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        size_t i = 0;
        int n = 0;
        while (i < cases[c].len) {
            int32_t cp = utf8_next(cases[c].s, cases[c].len, &i);
            cr_assert_lt(n, cases[c].n_cps, "case %zu: too many code points", c);
            cr_assert_eq(cp, cases[c].cps[n], "case %zu, code point %d: U+%04X", c, n, cp);
            n++;
        }
        cr_assert_eq(n, cases[c].n_cps, "case %zu", c);
        cr_assert_eq(i, cases[c].len);
    }
    cr_assert_eq(utf8_at(S("\xF4\x90\x80\x80")), 0xFFFD);
    cr_assert_eq(utf8_at(S("\xC3\xA9")), 0xE9);
}

/* The example of Unicode 3.9, table 3-8 (U+FFFD for maximal subparts). */
Test(utf8, copy_lossy_unicode_example)
{
    const char in[] = "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64";
    const char want[] = "a\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" "b\xEF\xBF\xBD" "c\xEF\xBF\xBD\xEF\xBF\xBD" "d";
    char out[3 * sizeof(in) + 1];
    size_t n = utf8_copy_lossy(out, in, sizeof(in) - 1);
    cr_assert_eq(n, sizeof(want) - 1);
    cr_assert_str_eq(out, want);
    cr_assert_eq(utf8_copy_lossy(out, "", 0), 0);
    cr_assert_str_eq(out, "");
}
