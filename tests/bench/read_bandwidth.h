/* read_bandwidth.h - the memory read bandwidth a decode can hope for, for the
 * benchmarks' "bound" (bench_engine, bench_membw for bench_quant.sh): every
 * thread of the pool streams its share of a 1 GiB buffer, far larger than
 * the caches, as decode reads the weights once per token; the best of 5
 * passes. */
#pragma once

#include "base/thread_pool.h"

/* GB/s (10^9 bytes per second), or 0 if the buffer cannot be allocated. */
double read_bandwidth(struct thread_pool *pool);
