/* test_log.c - the logger of net/ and daemon/: one record per line, peer text
 * cannot forge a line or a priority. */
#include "log.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* Runs fn with stderr redirected to a pipe; returns what was written. */
static size_t capture_fn(char *out, size_t cap, void (*fn)(void *), void *arg)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);
    int saved = dup(STDERR_FILENO);
    dup2(fds[1], STDERR_FILENO);
    fn(arg);
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

struct one_log {
    int level;
    const char *peer_text;
};

static void log_one(void *p)
{
    const struct one_log *l = p;
    log_msg(l->level, "peer says: %s", l->peer_text);
}

/* Runs one log call with stderr redirected to a pipe; returns what it wrote. */
static size_t capture(char *out, size_t cap, int level, const char *peer_text)
{
    struct one_log l = {level, peer_text};
    return capture_fn(out, cap, log_one, &l);
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

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void flood(void *arg)
{
    struct log_ratelimit *rl = arg;
    for (int i = 0; i < 1000; i++)
        log_ratelimited(rl, LOG_LEVEL_WARNING, "refused connection %d", i);
}

static void one_more(void *arg)
{
    log_ratelimited(arg, LOG_LEVEL_WARNING, "refused connection late");
}

/* A peer that makes a message repeat 1000 times in a burst gets 5 lines, and
 * the next interval says how many were dropped. */
Test(log, ratelimited_burst_then_suppressed_count)
{
    static char out[1 << 17];
    log_level_set(LOG_LEVEL_INFO);
    struct log_ratelimit rl = LOG_RATELIMIT_INIT(400, 5);
    capture_fn(out, sizeof(out), flood, &rl);
    cr_assert_eq(count_lines(out), 5, "lines written:\n%s", out);
    cr_assert(strstr(out, "<4>refused connection 0\n") && strstr(out, "<4>refused connection 4\n"), "%s", out);
    cr_assert_null(strstr(out, "refused connection 5\n"), "%s", out);
    usleep(450 * 1000);
    capture_fn(out, sizeof(out), one_more, &rl);
    cr_assert_str_eq(out, "<4>995 similar messages suppressed\n<4>refused connection late\n");
}
