/* clock.h - the monotonic clock, for durations and deadlines: never the wall
 * clock, which NTP and the administrator move. One reading, three units; and
 * the one place the wall clock is read, for pthread_cond_timedwait(). */
#pragma once

#include <stdint.h>
#include <time.h>

/* Nanoseconds since an arbitrary start (boot), for deadlines in integers. */
static inline uint64_t ifd_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The same instant in milliseconds, for timings people read. */
static inline double ifd_now_ms(void)
{
    return (double)ifd_now_ns() * 1e-6;
}

/* The same instant in seconds. */
static inline double ifd_now_s(void)
{
    return (double)ifd_now_ns() * 1e-9;
}

/* The wall-clock instant ms (>= 0) milliseconds from now: the absolute time
 * pthread_cond_timedwait() wants on a condition variable of the default
 * clock (CLOCK_REALTIME). Only for such waits, each bounded and followed by
 * a check of the caller's own condition, so a clock step costs at most one
 * early or late wake-up. */
static inline struct timespec ifd_realtime_after_ms(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}
