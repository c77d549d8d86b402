/* test_file.c - file_read(): contents NUL-terminated, and every refusal (missing,
 * not a regular file, over the limit, a secret others can read or another
 * user owns) an error code with a message that names the file. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"

static char dir[64];

static void make_dir(void)
{
    strcpy(dir, "/tmp/inferd-filetest-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(file, .init = make_dir, .fini = remove_dir);

/* Writes len bytes of s to dir/name with mode; returns the path (static). */
static const char *put(const char *name, const char *s, size_t len, mode_t mode)
{
    static char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(s, 1, len, f), len);
    fclose(f);
    cr_assert_eq(chmod(path, mode), 0);
    return path;
}

Test(file, reads_whole_file_nul_terminated)
{
    const char *p = put("a.json", "{\"x\":\0 1}", 9, 0644);
    char *buf = NULL;
    size_t len = 0;
    ifd_error err;
    cr_assert_eq(file_read(p, 9, 0, &buf, &len, &err), 0, "%s", err.msg);
    cr_assert_eq(len, 9, "exactly at the limit is allowed; embedded NULs kept");
    cr_assert_eq(memcmp(buf, "{\"x\":\0 1}", 9), 0);
    cr_assert_eq(buf[9], '\0');
    free(buf);
    p = put("empty", "", 0, 0644);
    cr_assert_eq(file_read(p, 0, 0, &buf, NULL, &err), 0, "%s", err.msg);
    cr_assert_str_eq(buf, "");
    free(buf);
}

Test(file, refusals_name_the_file)
{
    char *buf = (char *)0x1;
    size_t len = 77;
    ifd_error err;
    char missing[128];
    snprintf(missing, sizeof(missing), "%s/missing.json", dir);
    cr_assert_eq(file_read(missing, 100, 0, &buf, &len, &err), -ENOENT);
    cr_assert(strstr(err.msg, missing), "%s", err.msg);

    cr_assert_eq(file_read(dir, 100, 0, &buf, &len, &err), -EINVAL);
    cr_assert(strstr(err.msg, dir) && strstr(err.msg, "not a regular file"), "%s", err.msg);
    cr_assert_eq(file_read("/dev/null", 100, 0, &buf, &len, &err), -EINVAL);
    cr_assert(strstr(err.msg, "/dev/null") && strstr(err.msg, "not a regular file"), "%s", err.msg);

    const char *p = put("big", "0123456789", 10, 0644);
    cr_assert_eq(file_read(p, 9, 0, &buf, &len, &err), -EFBIG);
    cr_assert(strstr(err.msg, p) && strstr(err.msg, "10 bytes") && strstr(err.msg, "9 byte limit"), "%s", err.msg);
    cr_assert_eq(buf, (char *)0x1, "ret untouched on failure");
    cr_assert_eq(len, 77, "ret_len untouched on failure");
}

Test(file, secret_refuses_what_others_can_read)
{
    char *buf;
    ifd_error err;
    const char *p = put("key", "s3cret-s3cret-s3cret\n", 21, 0644);
    cr_assert_eq(file_read(p, 100, FILE_READ_SECRET, &buf, NULL, &err), -EPERM);
    cr_assert(strstr(err.msg, p) && strstr(err.msg, "readable by others") && strstr(err.msg, "0644"), "%s",
              err.msg);
    cr_assert_eq(chmod(p, 0604), 0);
    cr_assert_eq(file_read(p, 100, FILE_READ_SECRET, &buf, NULL, &err), -EPERM, "any access by others");
    cr_assert_eq(chmod(p, 0640), 0);
    cr_assert_eq(file_read(p, 100, FILE_READ_SECRET, &buf, NULL, &err), 0, "the service's group may read: %s",
                 err.msg);
    free(buf);
    cr_assert_eq(chmod(p, 0600), 0);
    cr_assert_eq(file_read(p, 100, FILE_READ_SECRET, &buf, NULL, &err), 0, "%s", err.msg);
    cr_assert_str_eq(buf, "s3cret-s3cret-s3cret\n");
    free(buf);
    cr_assert_eq(file_read(p, 100, 0, &buf, NULL, &err), 0, "without the flag the mode does not matter");
    free(buf);
}

Test(file, secret_refuses_another_owner)
{
    char *buf;
    ifd_error err;
    const char *p = put("key2", "s3cret-s3cret-s3cret\n", 21, 0600);
    /* a file of another user: only root can make one */
    if (geteuid() != 0) {
        fprintf(stderr, "skipped: not root: cannot chown a file to another user; owner check not exercised\n");
        return;
    }
    cr_assert_eq(chown(p, 4242, 4242), 0);
    cr_assert_eq(file_read(p, 100, FILE_READ_SECRET, &buf, NULL, &err), -EPERM);
    cr_assert(strstr(err.msg, p) && strstr(err.msg, "owned by another user") && strstr(err.msg, "4242"), "%s",
              err.msg);
    cr_assert_eq(chown(p, 0, 0), 0);
    cr_assert_eq(file_read(p, 100, FILE_READ_SECRET, &buf, NULL, &err), 0, "root's file: %s", err.msg);
    free(buf);
}
