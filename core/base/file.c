/* file.c - bounded whole-file reading; see file.h. */
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Why a secret file is refused, or NULL when it may be read. */
static const char *secret_refusal(const struct stat *st)
{
    if (st->st_uid != geteuid() && st->st_uid != 0)
        return "owned by another user";
    if (st->st_mode & 0007)
        return "readable by others";
    return NULL;
}

int file_read(const char *path, size_t max_bytes, unsigned flags, char **ret, size_t *ret_len, ifd_error *err)
{
    const bool secret = flags & FILE_READ_SECRET;
    /* Blocking open on purpose: a FIFO then waits for its writer and is
     * refused by the check below, as before this helper existed. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return ifd_error_set(err, -errno, "Failed to open '%s': %s", path, strerror(errno));
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int r;
    if (fstat(fd, &st) < 0) {
        r = ifd_error_set(err, -errno, "Failed to stat '%s': %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        r = ifd_error_set(err, -EINVAL, "'%s': not a regular file", path);
        goto fail;
    }
    const char *why = secret ? secret_refusal(&st) : NULL;
    if (why) {
        r = ifd_error_set(err, -EPERM, "'%s': %s (owner uid %u, mode %04o); chown it to this user and chmod 600 it",
                          path, why, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
        goto fail;
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > max_bytes) {
        r = ifd_error_set(err, -EFBIG, "'%s': %lld bytes, over the %zu byte limit", path, (long long)st.st_size,
                          max_bytes);
        goto fail;
    }
    len = (size_t)st.st_size;
    if (!(buf = malloc(len + 1))) {
        r = ifd_error_set(err, -ENOMEM, "'%s': out of memory for %zu bytes", path, len);
        goto fail;
    }
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = ifd_error_set(err, -errno, "Failed to read '%s': %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0) {
            r = ifd_error_set(err, -EIO, "Failed to read '%s': it shrank to %zu bytes while read", path, got);
            goto fail;
        }
        got += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    *ret = buf;
    if (ret_len)
        *ret_len = len;
    return 0;
fail:
    if (buf && secret)
        explicit_bzero(buf, len + 1);
    free(buf);
    close(fd);
    return r;
}
