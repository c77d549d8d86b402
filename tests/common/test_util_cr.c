/* test_util_cr.c - the Criterion forms of test_util.h: a missing shared
 * directory or an unreadable file fails the running test with the reason,
 * instead of every suite checking the NULL itself. */
#include "test_util.h"

#include <criterion/criterion.h>
#include <stdarg.h>
#include <string.h>

#define NO_SHARED_DIR                                                                                         \
    "INFERD_SHARED is not set: it must name the shared models/goldens directory (run the tests through meson test)"

const char *tu_must_shared_dir(void)
{
    const char *s = tu_shared_dir();
    cr_assert_not_null(s, NO_SHARED_DIR);
    return s;
}

char *tu_must_shared_path(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = tu_shared_vpath(fmt, ap);
    va_end(ap);
    cr_assert_not_null(p, NO_SHARED_DIR);
    return p;
}

char *tu_must_read_file(const char *path, size_t *ret_len)
{
    char *data;
    int r = tu_read_file(path, &data, ret_len);
    cr_assert_eq(r, 0, "cannot read '%s': %s", path, strerror(-r));
    return data;
}
