/* sd.c - see sd.h. Thin wrappers over libsystemd's sd-daemon. */
#include "sd.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>

#include "log.h"

void sdn_status(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    sd_notifyf(0, "STATUS=%s", buf);
}

void sdn_ready(const char *status)
{
    sd_notifyf(0, "READY=1\nSTATUS=%s", status);
}

void sdn_stopping(const char *status)
{
    sd_notifyf(0, "STOPPING=1\nSTATUS=%s", status);
}

void sdn_reloading(bool begin)
{
    if (begin)
        sd_notify(0, "RELOADING=1\nSTATUS=Reloading configuration");
    else
        sd_notify(0, "READY=1\nSTATUS=Serving");
}

void sdn_watchdog_ping(void)
{
    sd_notify(0, "WATCHDOG=1");
}

uint64_t sdn_watchdog_usec(void)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0)
        return usec;
    return 0;
}

int sdn_listen_fd(void)
{
    int n = sd_listen_fds(1);
    if (n < 0) {
        log_err("Failed to read passed sockets (LISTEN_FDS): %s", strerror(-n));
        return -1;
    }
    if (n == 0)
        return -1;
    if (n > 1) {
        log_err("Socket activation passed %d sockets; inferd serves one HTTP address", n);
        return -EINVAL;
    }
    int fd = SD_LISTEN_FDS_START;
    if (sd_is_socket(fd, 0, SOCK_STREAM, 1) <= 0) {
        log_err("Passed file descriptor %d is not a listening stream socket", fd);
        return -EINVAL;
    }
    return fd;
}
