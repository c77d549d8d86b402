/* log.h - the one logger of net/ and daemon/: stderr lines with <N>
 * syslog-level prefixes.
 *
 * journald reads the "<N>" prefix of each line as the priority, so levels
 * survive when inferd runs under systemd; on a terminal they stay readable.
 * It lives in net/, the lowest layer that logs (core/ never does), so the
 * level the daemon sets applies to the protocol code too. Messages often
 * carry peer-supplied text: every control byte is escaped, so no peer can
 * start a forged line. The level is the one global besides configuration
 * (STYLE.md). */
#pragma once

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

enum log_level {
    LOG_LEVEL_ERR = 3,
    LOG_LEVEL_WARNING = 4,
    LOG_LEVEL_NOTICE = 5,
    LOG_LEVEL_INFO = 6,
    LOG_LEVEL_DEBUG = 7,
};

/* Messages above this level are dropped. Default LOG_LEVEL_INFO. */
void log_level_set(int level);

/* "err", "warning", "notice", "info", "debug" (also "error", "warn") or a
 * digit 0-7. Returns the level or -EINVAL. */
int log_level_parse(const char *name);
const char *log_level_name(int level);

/* One line "<N>message\n" written with a single write() so concurrent lines
 * never interleave. Control bytes of the message (newlines included) are
 * written as \xNN; a message longer than a line's buffer is cut. */
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...) log_msg(LOG_LEVEL_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_LEVEL_NOTICE, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

/* Rate limit for messages a remote peer can trigger at will (refused
 * connections, failed handshakes): at most `burst` lines per `interval_ms`,
 * then silence until the interval ends, when one line says how many were
 * suppressed (journald's and the kernel's printk_ratelimit policy). One
 * state per kind of message; thread-safe. */
struct log_ratelimit {
    pthread_mutex_t lock;
    uint64_t interval_ns;
    unsigned burst;
    uint64_t begin_ns;   /* start of the current interval */
    unsigned printed;    /* lines in the current interval */
    unsigned long long suppressed;
};
#define LOG_RATELIMIT_INIT(interval_ms, burst_lines) \
    {PTHREAD_MUTEX_INITIALIZER, (uint64_t)(interval_ms) * 1000000ull, (burst_lines), 0, 0, 0}

/* log_msg under rl. Returns true if the line was written (or dropped by the
 * level filter), false if it was suppressed. */
bool log_ratelimited(struct log_ratelimit *rl, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
