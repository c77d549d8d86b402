/* sd.h - the systemd side of inferd: readiness notification, status lines,
 * watchdog keep-alive and socket activation. Every call is a no-op when
 * inferd was not started by systemd (no NOTIFY_SOCKET / LISTEN_FDS), so the
 * same binary runs in a terminal. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* STATUS=... (printf-style), shown by `systemctl status`. */
void sdn_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* READY=1 plus a STATUS line: only once the model is loaded and the socket serves. */
void sdn_ready(const char *status);
/* STOPPING=1 plus a STATUS line, at the start of a graceful shutdown. */
void sdn_stopping(const char *status);
/* RELOADING=1 / READY=1 around a SIGHUP reload. */
void sdn_reloading(bool begin);
/* WATCHDOG=1. */
void sdn_watchdog_ping(void);

/* Watchdog interval in microseconds from WATCHDOG_USEC (0 when off). Ping at
 * half of it. */
uint64_t sdn_watchdog_usec(void);

/* The listening socket passed by socket activation (the first of LISTEN_FDS),
 * or -1 when there is none. More than one passed socket is an error (-EINVAL):
 * inferd serves one HTTP address. */
int sdn_listen_fd(void);
