/* layer_split.h - how `layers = auto` divides a block of layers among
 * workers: in proportion to each worker's measured speed, never more layers
 * than its memory holds. Pure arithmetic, so it is tested on its own. */
#pragma once

/* Splits n layers among k workers into counts[k] (each >= 1, summing to n):
 * counts proportional to speed[i] (> 0; equal speeds give an even split,
 * the remainder going to the earliest workers), while counts[i] <=
 * max_layers[i]; what a full worker cannot take goes to the others by speed.
 * Returns 0, -EINVAL when n < k or k < 1, or -ENOSPC when the workers'
 * max_layers together fall short of n (or one cannot hold a single layer). */
int layer_split(int n, int k, const double *speed, const int *max_layers, int *counts);
