/* buf.c - geometric growth of heap arrays; see buf.h. */
#include "base/buf.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

/* Smallest capacity handed out: appending the first few items costs one
 * allocation, not four. */
#define BUF_MIN_ITEMS 16

void *buf_grow(void *p, size_t *cap, size_t need, size_t elem)
{
    assert(cap && elem > 0);
    if (p && need <= *cap)
        return p;
    const size_t max_items = SIZE_MAX / elem;
    if (need > max_items)
        return NULL;
    size_t n = need < BUF_MIN_ITEMS ? BUF_MIN_ITEMS : need;
    if (p && *cap <= max_items / 2 && 2 * *cap > n)
        n = 2 * *cap;
    if (n > max_items) /* only BUF_MIN_ITEMS can get here, for huge elem */
        n = need;
    void *np = realloc(p, n * elem);
    if (!np)
        return NULL;
    *cap = n;
    return np;
}

void *buf_alloc_stream(size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    void *p = NULL;
    if (posix_memalign(&p, bytes >= huge ? huge : 64, bytes ? bytes : 1) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (bytes >= huge)
        (void)madvise(p, bytes, MADV_HUGEPAGE); /* advice: without THP, 4 KiB pages */
#endif
    return p;
}
