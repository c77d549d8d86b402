/* log.c - see log.h. */
#include "log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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

int log_level_get(void)
{
    return atomic_load(&log_current_level);
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

void log_msgv(int level, const char *fmt, va_list ap)
{
    if (level > atomic_load(&log_current_level))
        return;
    /* Lines are short; a longer one is cut rather than allocated for. */
    char line[2048];
    int n = snprintf(line, sizeof(line), "<%d>", level);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    /* Keep one record per line: a newline inside a message would start a
     * line without a priority prefix. */
    for (size_t i = (size_t)n; i < len; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
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
