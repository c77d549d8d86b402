/* test_util.c - the shared-data lookup and whole-file reads of every test
 * (Criterion suites, fuzz targets, benchmarks); see test_util.h. */
#include "test_util.h"

#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *tu_shared_dir(void)
{
    const char *s = getenv("INFERD_SHARED");
    return s && *s ? s : NULL;
}

char *tu_shared_vpath(const char *fmt, va_list ap)
{
    const char *dir = tu_shared_dir();
    if (!dir)
        return NULL;
    char *rel = NULL, *path = NULL;
    if (vasprintf(&rel, fmt, ap) < 0)
        return NULL;
    if (asprintf(&path, "%s/%s", dir, rel) < 0)
        path = NULL;
    free(rel);
    return path;
}

char *tu_shared_path(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = tu_shared_vpath(fmt, ap);
    va_end(ap);
    if (!p && !tu_shared_dir())
        fprintf(stderr, "INFERD_SHARED is not set: it names the shared models/goldens directory "
                        "(run the tests through meson test, which sets it)\n");
    return p;
}

int tu_read_file(const char *path, char **ret_data, size_t *ret_len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        /* Always one byte spare for the NUL. */
        if (cap - len < 2) {
            size_t ncap = cap ? cap * 2 : 4096;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                return -ENOMEM;
            }
            buf = nb;
            cap = ncap;
        }
        size_t k = fread(buf + len, 1, cap - len - 1, f);
        len += k;
        if (k == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return -EIO;
    }
    buf[len] = '\0';
    *ret_data = buf;
    if (ret_len)
        *ret_len = len;
    return 0;
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return (type == FTW_DP ? rmdir(path) : unlink(path)) < 0 ? -errno : 0;
}

int tu_probe_read(const void *p, size_t n)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -errno;
    const ssize_t w = write(fds[1], p, n);
    const int r = w == (ssize_t)n ? 0 : w < 0 ? -errno : -EIO;
    close(fds[0]);
    close(fds[1]);
    return r;
}

int tu_remove_tree(const char *path)
{
    /* Depth first (a directory after what it holds), links not followed. */
    int r = nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
    return r < 0 ? -errno : r;
}
