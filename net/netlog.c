#include "netlog.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

/* The log level is configuration (STYLE.md allows it as a global). */
static int net_log_level = NET_LOG_INFO;

void net_log_level_set(int level)
{
    net_log_level = level;
}

void net_log(int level, const char *fmt, ...)
{
    if (level > net_log_level)
        return;
    char line[1024];
    int n = snprintf(line, sizeof(line), "<%d>", level);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
