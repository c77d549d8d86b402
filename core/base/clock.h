/* clock.h - the monotonic clock, for durations and deadlines: never the wall
 * clock, which NTP and the administrator move. One reading, three units. */
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
