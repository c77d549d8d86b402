/* worker.h - inferd --role worker: serves a layer range to a master.
 *
 * The worker needs no model on disk. It listens on cfg->worker_listen,
 * authenticates the master (and the previous worker of a chain) with the
 * cluster key, receives its assignment and only the tensors it does not
 * already hold in cfg->cache_dir, binds them as a model of just its layers,
 * builds a cpu stage, and serves forwards until SIGTERM/SIGINT. */
#pragma once

#include "config.h"

/* Runs the worker; returns the process exit status. */
int worker_role_main(const struct inferd_config *cfg);
