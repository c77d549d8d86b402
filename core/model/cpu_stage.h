/* cpu_stage.h - a stage that runs its layers on the CPU (kernels.h). */
#pragma once

#include "base/error.h"
#include "model/model.h"
#include "model/stage.h"

struct thread_pool;

/* Creates a cpu stage over layers [first, last) of `m`, which must bind them.
 * The KV cache of those layers for n_seq_max slots of n_ctx positions (f32)
 * is allocated here, once. `pool` is borrowed (it must outlive the stage);
 * NULL runs single-threaded. Neither m nor pool is owned. The activation
 * scratch grows to the largest batch seen; stage_reserve_batch() sizes it
 * up front, so that forward never allocates for batches up to that size. */
int cpu_stage_create(const struct model *m, int first, int last, int n_seq_max, int n_ctx,
                     struct thread_pool *pool, struct stage **ret, ifd_error *err);
