/* file.h - reading a whole small file (a config, an index, a template, a key)
 * with a size limit, the one way the tree does it.
 *
 * The file must be a regular file no larger than the caller's limit; both are
 * checked with fstat() on the open descriptor before anything is allocated,
 * so a FIFO, a device or a multi-gigabyte file named by mistake is refused
 * with a message instead of being read. Descriptors are opened O_CLOEXEC: the
 * daemon starts no children, but a reader must not leak one into any that a
 * later change adds. */
#pragma once

#include <stddef.h>

#include "base/error.h"

enum {
    /* The file holds a secret (a cluster key): refuse it unless it is owned
     * by the calling user or root and gives others no access (mode & 0007):
     * ssh's rule for private keys (the cluster key's first reader checked
     * only the mode). Group access stays allowed, for a key owned by root
     * and readable by the service's group. The buffer is wiped on every failure path; the
     * caller wipes it (explicit_bzero) before freeing it. */
    FILE_READ_SECRET = 1u << 0,
};

/* Reads the regular file at path, at most max_bytes long, into a new
 * NUL-terminated heap buffer (*ret, freed by the caller; *ret_len excludes
 * the NUL; ret_len may be NULL). flags: FILE_READ_*.
 *
 * Returns 0, or a negative errno with a message in err that names the path:
 * -ENOENT and the other errors of open(2) as they come, -EINVAL when it is
 * not a regular file, -EFBIG when it is over max_bytes, -EPERM when
 * FILE_READ_SECRET refuses it, -EIO when it shrinks while read, -ENOMEM.
 * Writes *ret and *ret_len only on success. */
int file_read(const char *path, size_t max_bytes, unsigned flags, char **ret, size_t *ret_len, ifd_error *err);
