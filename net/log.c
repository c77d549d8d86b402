/* log.c - see log.h. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_current_level = LOG_LEVEL_INFO;

void log_level_set(int level)
{
    if (level < 0)
        level = 0;
    if (level > LOG_LEVEL_DEBUG)
        level = LOG_LEVEL_DEBUG;
    atomic_store(&log_current_level, level);
}

static const struct {
    const char *name;
    int level;
} log_names[] = {
    {"emerg", 0}, {"alert", 1}, {"crit", 2}, {"err", 3}, {"error", 3}, {"warning", 4},
    {"warn", 4}, {"notice", 5}, {"info", 6}, {"debug", 7},
};

int log_level_parse(const char *name)
{
    if (!name)
        return -EINVAL;
    if (name[0] >= '0' && name[0] <= '7' && name[1] == '\0')
        return name[0] - '0';
    for (size_t i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++)
        if (strcasecmp(name, log_names[i].name) == 0)
            return log_names[i].level;
    return -EINVAL;
}

const char *log_level_name(int level)
{
    for (size_t i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++)
        if (log_names[i].level == level)
            return log_names[i].name;
    return "info";
}

static void log_msgv(int level, const char *fmt, va_list ap)
{
    if (level > atomic_load(&log_current_level))
        return;
    /* Lines are short; a longer one is cut rather than allocated for. */
    char text[2048];
    int m = vsnprintf(text, sizeof(text), fmt, ap);
    if (m < 0)
        return;
    size_t text_len = (size_t)m < sizeof(text) ? (size_t)m : sizeof(text) - 1;

    /* Escaped, a byte takes at most 4; the prefix and newline fit in 8. */
    char line[8 + 4 * sizeof(text)];
    size_t len = (size_t)snprintf(line, sizeof(line), "<%d>", level);
    for (size_t i = 0; i < text_len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 || c == 0x7f) {
            static const char hex[] = "0123456789abcdef";
            line[len++] = '\\';
            line[len++] = 'x';
            line[len++] = hex[c >> 4];
            line[len++] = hex[c & 15];
        } else {
            line[len++] = (char)c;
        }
    }
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void log_msg(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_msgv(level, fmt, ap);
    va_end(ap);
}

bool log_ratelimited(struct log_ratelimit *rl, int level, const char *fmt, ...)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    unsigned long long dropped = 0;
    bool print;
    pthread_mutex_lock(&rl->lock);
    if (rl->begin_ns == 0 || now - rl->begin_ns >= rl->interval_ns) {
        dropped = rl->suppressed;
        rl->suppressed = 0;
        rl->begin_ns = now;
        rl->printed = 0;
    }
    print = rl->printed < rl->burst;
    if (print)
        rl->printed++;
    else
        rl->suppressed++;
    pthread_mutex_unlock(&rl->lock);
    if (dropped)
        log_msg(level, "%llu similar messages suppressed", dropped);
    if (print) {
        va_list ap;
        va_start(ap, fmt);
        log_msgv(level, fmt, ap);
        va_end(ap);
    }
    return print;
}
