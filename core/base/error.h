/* error.h - how core/ reports failure to its callers.
 *
 * Functions return int: >= 0 on success, a negative errno on failure. Where the
 * caller needs to show the user *why* (a malformed file, an unsupported option),
 * the function also fills an ifd_error with a one-line human message that names
 * the file, tensor, field or position at fault. core/ never logs and never
 * exits: the daemon decides what to do with the message. */
#pragma once

#include <stddef.h>

#define IFD_ERROR_MSG_MAX 512

typedef struct ifd_error {
    char msg[IFD_ERROR_MSG_MAX]; /* NUL-terminated; truncated if longer */
} ifd_error;

/* Formats a message into err (which may be NULL) and returns code, so that a
 * failing path reads as one statement:
 *     return ifd_error_set(err, -EINVAL, "%s: tensor '%s': bad shape", path, name);
 * code must be negative. */
int ifd_error_set(ifd_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an existing message (for adding context on the way up). */
void ifd_error_prefix(ifd_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
