/* netlog.h - logging for net/: one "<N>message" line to stderr per call,
 * written with a single write() so that lines of concurrent threads never
 * interleave (journald reads <N> as the priority). The daemon's log level
 * applies through net_log_level_set(). */
#pragma once

#define NET_LOG_ERR 3
#define NET_LOG_WARNING 4
#define NET_LOG_NOTICE 5
#define NET_LOG_INFO 6
#define NET_LOG_DEBUG 7

void net_log_level_set(int level);
void net_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
