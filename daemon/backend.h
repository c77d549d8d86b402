/* backend.h - where a node runs its local layers: the one place that turns
 * `[node] backend` / `device` into a stage, for a single node, for the
 * master's own layers beside its workers, and for a worker's range. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "base/error.h"
#include "model/model.h"
#include "model/stage.h"

struct thread_pool;

/* Creates the local stage over layers [first, last) of m on `backend`:
 *   cpu     the cpu stage;
 *   vulkan  the Vulkan stage on Vulkan device index `device`; no device (or a build
 *           without Vulkan) is an error;
 *   auto    the Vulkan stage when a hardware GPU is present, else the cpu
 *           stage, saying why in the log (a software device such as lavapipe
 *           is slower than the cpu stage).
 * Scratch is sized for batches of n_batch_max tokens. *ret_name receives
 * "cpu" or "vulkan" (a static string). */
int backend_stage_create(enum inferd_backend backend, int device, const struct model *m, int first, int last,
                         int n_seq_max, int n_ctx, int n_batch_max, struct thread_pool *pool,
                         struct stage **ret, const char **ret_name, ifd_error *err);

/* True when backend_stage_create() runs layers on the CPU whatever happens:
 * backend cpu, or auto without a hardware Vulkan device (or without Vulkan
 * in this build). The model is then loaded in the CPU's layout. */
bool backend_runs_on_cpu(enum inferd_backend backend);

/* What this node may place in memory now: MemAvailable of /proc/meminfo, in
 * bytes (0 when unknown). A worker reports it in its HELLO; a master weighs
 * the layers of a failed worker against it. */
uint64_t backend_mem_available(void);
