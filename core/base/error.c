#include "base/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int ifd_error_set(ifd_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

void ifd_error_prefix(ifd_error *err, const char *fmt, ...)
{
    if (!err)
        return;
    char prefix[IFD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    char old[IFD_ERROR_MSG_MAX];
    memcpy(old, err->msg, sizeof(old));
    old[sizeof(old) - 1] = '\0';
    /* Sized for both parts in full, then cut to the message size. */
    char joined[2 * IFD_ERROR_MSG_MAX + 2];
    snprintf(joined, sizeof(joined), "%s: %s", prefix, old);
    memcpy(err->msg, joined, sizeof(err->msg) - 1);
    err->msg[sizeof(err->msg) - 1] = '\0';
}
