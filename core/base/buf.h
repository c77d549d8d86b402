/* buf.h - growing an array geometrically, the one way core/, net/ and daemon/
 * do it (the idea of systemd's GREEDY_REALLOC).
 *
 * Appending n items one at a time with realloc(n + 1) is quadratic, and every
 * hand-written "cap = cap ? cap * 2 : 16" is a place to forget the overflow
 * check of cap * elem. buf_grow() does both once. */
#pragma once

#include <stddef.h>

/* Makes room for at least `need` items of `elem` bytes in the heap array p
 * (NULL when none yet), whose capacity in items is *cap. When *cap < need the
 * array is reallocated to max(need, 2 * *cap, 16) items (or to exactly need
 * when doubling would overflow) and *cap updated; items beyond the old
 * capacity are uninitialized.
 *
 * Returns the (possibly moved) array, which the caller stores back in place
 * of p; or NULL when need * elem overflows size_t or memory runs out, in
 * which case p is still valid, still owned by the caller, and *cap unchanged.
 * elem must be > 0. */
void *buf_grow(void *p, size_t *cap, size_t need, size_t elem);

/* A buffer for a large array read as a stream (weights), freed with free():
 * from 2 MiB up aligned to 2 MiB and advised into huge pages (MADV_HUGEPAGE),
 * so that streaming it misses the TLB once per 2 MiB instead of per 4 KiB;
 * smaller ones 64-byte aligned. NULL when memory runs out. */
void *buf_alloc_stream(size_t bytes);
