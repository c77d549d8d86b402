/* test_util.h - what every kind of test needs: the shared models/goldens
 * directory ($INFERD_SHARED, set by meson's test_env to ../shared) and whole
 * files. test_util.c is plain C so that the fuzz targets and benchmarks link
 * it too; test_util_cr.c adds the Criterion forms (tu_must_*), which fail the
 * running test with the reason where the plain forms return NULL or <0. */
#pragma once

#include <stdarg.h>
#include <stddef.h>

/* $INFERD_SHARED, or NULL when it is unset or empty (the tests are meant to
 * run through meson test, which sets it). */
const char *tu_shared_dir(void);

/* "$INFERD_SHARED/" followed by the printf-formatted rest, malloc'd. NULL when
 * INFERD_SHARED is unset (message on stderr) or memory runs out. */
char *tu_shared_path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same with a va_list, for wrappers; says nothing on stderr. */
char *tu_shared_vpath(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

/* Reads the whole of `path` (any size, also files that cannot seek). On
 * success *ret_data is malloc'd and NUL-terminated, the NUL not counted in
 * *ret_len (ret_len may be NULL). Returns 0 or a negative errno; the
 * out-params are written only on success. */
int tu_read_file(const char *path, char **ret_data, size_t *ret_len);

/* Whether this process may read the n bytes at p, without reading them
 * itself (a read of an inaccessible page would be a SIGSEGV, an abort under
 * ASan): write()s them into a pipe, which gets EFAULT where a read would
 * fault. Returns 0 (readable) or a negative errno (-EFAULT). */
int tu_probe_read(const void *p, size_t n);

/* Removes path and everything below it, as rm -rf does (scratch directories
 * the tests made). Returns 0 or a negative errno. */
int tu_remove_tree(const char *path);

/* Criterion suites only (test_util_cr.c): tu_shared_dir() and
 * tu_shared_path() that fail the test when INFERD_SHARED is unset. */
const char *tu_must_shared_dir(void);
char *tu_must_shared_path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Criterion suites only: tu_read_file() that fails the test, naming the file
 * and the reason, when it cannot be read. */
char *tu_must_read_file(const char *path, size_t *ret_len);
