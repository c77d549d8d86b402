/* test_log.c - the logger of net/ and daemon/: one record per line, peer text
 * cannot forge a line or a priority. */
#include "log.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* Runs one log call with stderr redirected to a pipe; returns what it wrote. */
static size_t capture(char *out, size_t cap, int level, const char *peer_text)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    int saved = dup(STDERR_FILENO);
    dup2(fds[1], STDERR_FILENO);
    log_msg(level, "peer says: %s", peer_text);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n < cap - 1 && (r = read(fds[0], out + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    close(fds[0]);
    out[n] = '\0';
    return n;
}

Test(log, control_bytes_are_escaped)
{
    char out[512];
    log_level_set(LOG_LEVEL_DEBUG);
    size_t n = capture(out, sizeof(out), LOG_LEVEL_ERR, "bad\n<0>forged\r\x1b[2Jend");
    cr_assert_str_eq(out, "<3>peer says: bad\\x0a<0>forged\\x0d\\x1b[2Jend\n");
    cr_assert_eq(memchr(out, '\n', n), out + n - 1, "exactly one line");
}

Test(log, level_filters)
{
    char out[256];
    log_level_set(LOG_LEVEL_WARNING);
    cr_assert_eq(capture(out, sizeof(out), LOG_LEVEL_INFO, "x"), 0);
    cr_assert_gt(capture(out, sizeof(out), LOG_LEVEL_WARNING, "x"), 0);
}

Test(log, long_message_is_cut_to_one_line)
{
    static char big[8192], out[16384];
    memset(big, '\n', sizeof(big) - 1);
    log_level_set(LOG_LEVEL_INFO);
    size_t n = capture(out, sizeof(out), LOG_LEVEL_INFO, big);
    cr_assert_gt(n, 2000);
    cr_assert_eq(memchr(out, '\n', n), out + n - 1, "exactly one line");
}
