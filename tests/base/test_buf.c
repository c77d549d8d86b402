/* test_buf.c - buf_grow(): capacity, geometric growth, contents kept,
 * overflow refused with the array left intact. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>

#include "base/buf.h"

Test(buf, first_growth_and_doubling)
{
    size_t cap = 0;
    int32_t *v = buf_grow(NULL, &cap, 1, sizeof(*v));
    cr_assert_not_null(v);
    cr_assert_eq(cap, 16, "a first allocation holds a few items, got %zu", cap);
    for (int i = 0; i < 16; i++)
        v[i] = i;
    cr_assert_eq(buf_grow(v, &cap, 16, sizeof(*v)), v, "no move while it fits");
    v = buf_grow(v, &cap, 17, sizeof(*v));
    cr_assert_not_null(v);
    cr_assert_eq(cap, 32, "one more item doubles, got %zu", cap);
    for (int i = 0; i < 16; i++)
        cr_assert_eq(v[i], i, "item %d kept", i);
    v = buf_grow(v, &cap, 1000, sizeof(*v));
    cr_assert_eq(cap, 1000, "a need beyond double is taken as is, got %zu", cap);
    free(v);
}

/* Appending one at a time costs O(log n) reallocations, not n. */
Test(buf, appends_reallocate_logarithmically)
{
    size_t cap = 0, n_grow = 0, last_cap = 0;
    char *p = NULL;
    for (size_t n = 1; n <= 1000000; n++) {
        p = buf_grow(p, &cap, n, 1);
        cr_assert_not_null(p);
        if (cap != last_cap)
            n_grow++, last_cap = cap;
        p[n - 1] = (char)n;
    }
    cr_assert_leq(n_grow, 20, "%zu growths for 1e6 appends", n_grow);
    free(p);
}

Test(buf, overflow_refused_array_kept)
{
    size_t cap = 0;
    uint64_t *v = buf_grow(NULL, &cap, 4, sizeof(*v));
    cr_assert_not_null(v);
    v[0] = 42;
    size_t before = cap;
    cr_assert_null(buf_grow(v, &cap, SIZE_MAX / sizeof(*v) + 1, sizeof(*v)));
    cr_assert_eq(cap, before);
    cr_assert_eq(v[0], 42);
    free(v);
}

/* Where doubling the capacity would overflow size_t, the exact need is asked
 * for instead (and a huge elem gets no 16-item minimum it cannot hold). */
Test(buf, doubling_overflow_takes_exact_need)
{
    size_t cap = 0;
    const size_t elem = SIZE_MAX / 8; /* at most 8 items fit in size_t */
    size_t k = 3;
    /* 16 items of elem would wrap around to a small size that realloc
     * grants; the right size (3 * elem, most of the address space) is
     * refused by malloc */
    cr_assert_null(buf_grow(NULL, &cap, k, elem));
    cr_assert_eq(cap, 0);
}
