/* layer_split.c - see layer_split.h. Water-filling: a worker whose
 * proportional share exceeds its memory is fixed at its maximum and the rest
 * is shared again among the others, until every share fits; shares are then
 * rounded by largest remainder. */
#include "layer_split.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

int layer_split(int n, int k, const double *speed, const int *max_layers, int *counts)
{
    if (k < 1 || n < k)
        return -EINVAL;
    long long capacity = 0;
    for (int i = 0; i < k; i++) {
        if (max_layers[i] < 1)
            return -ENOSPC;
        capacity += max_layers[i] < n ? max_layers[i] : n;
    }
    if (capacity < n)
        return -ENOSPC;
    bool *fixed = calloc((size_t)k, sizeof(bool));
    double *share = calloc((size_t)k, sizeof(double));
    if (!fixed || !share) {
        free(fixed);
        free(share);
        return -ENOMEM;
    }
    /* Fix the workers whose share does not fit, until none is left over. */
    int left;
    double total;
    for (bool changed = true; changed;) {
        changed = false;
        left = n;
        total = 0;
        for (int i = 0; i < k; i++)
            if (fixed[i])
                left -= counts[i];
            else
                total += speed[i];
        for (int i = 0; i < k; i++) {
            if (fixed[i])
                continue;
            share[i] = left * speed[i] / total;
            if (share[i] > max_layers[i]) {
                counts[i] = max_layers[i];
                share[i] = max_layers[i];
                fixed[i] = true;
                changed = true;
            }
        }
    }
    int assigned = 0;
    for (int i = 0; i < k; i++) {
        if (!fixed[i]) {
            counts[i] = (int)floor(share[i]);
            if (counts[i] < 1)
                counts[i] = 1;
        }
        assigned += counts[i];
    }
    /* Largest remainder: give to the worker furthest under its share (the
     * earliest on a tie), take from the one furthest over it. */
    while (assigned < n) {
        int best = -1;
        for (int i = 0; i < k; i++)
            if (counts[i] < max_layers[i] && (best < 0 || share[i] - counts[i] > share[best] - counts[best]))
                best = i;
        counts[best]++; /* exists: capacity >= n */
        assigned++;
    }
    while (assigned > n) {
        int best = -1;
        for (int i = 0; i < k; i++)
            if (counts[i] > 1 && (best < 0 || counts[i] - share[i] > counts[best] - share[best]))
                best = i;
        counts[best]--; /* exists: n >= k */
        assigned--;
    }
    free(fixed);
    free(share);
    return 0;
}
