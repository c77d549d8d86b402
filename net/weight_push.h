/* weight_push.h - sending a worker the tensors of its layers, and the
 * worker's content-addressed cache of them.
 *
 * Master side: a manifest lists the tensors layers [first, last) use
 * (model_tensor_names), each with its dtype, shape and content hash
 * (BLAKE2b-256 over dtype, shape and bytes). The push sends ASSIGN, reads the
 * worker's HAVE (bytes of each tensor it already holds), and streams only the
 * rest in chunks of at most NET_CHUNK_MAX bytes read straight from the
 * checkpoint's read-only mapping (zstd-compressed when that saves at least
 * 1/16), then LOAD, and waits for READY. Memory on both sides is bounded by a
 * chunk, never by the checkpoint.
 *
 * Worker side: tensors land in CACHE_DIR/<hash>.part, appended chunk by chunk
 * (a transfer interrupted on the same connection resumes from the .part's
 * size; .part files go when the worker starts and when its master leaves),
 * and become CACHE_DIR/<hash>.bin once their hash checks. A restarted worker
 * or master therefore resends nothing the worker already holds but the
 * tensor that was in flight. The cache has a quota, checked against the
 * declared sizes before anything is written. On LOAD the worker
 * assembles a safetensors image of exactly its tensors (hash-checked again
 * while copying) for model_bind(). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "conn.h"
#include "base/error.h"
#include "model/model.h"
#include "proto.h"
#include "model/safetensors.h"

/* ---- master ---- */

struct wp_manifest;

/* Lists and hashes the tensors of layers [first, last) of m (which must have
 * its checkpoint open). Reads those tensors once. */
int wp_manifest_create(const struct model *m, int first, int last, struct wp_manifest **ret, ifd_error *err);
void wp_manifest_destroy(struct wp_manifest *mf); /* accepts NULL */
uint64_t wp_manifest_bytes(const struct wp_manifest *mf);
size_t wp_manifest_count(const struct wp_manifest *mf);
/* Tensor i of the manifest (NULL past the end) and, in *ret_data (may be
 * NULL), its bytes in the checkpoint's mapping. Borrowed from mf. */
const struct net_tensor_desc *wp_manifest_tensor(const struct wp_manifest *mf, size_t i, const void **ret_data);

struct wp_push_params {
    const char *model_name;
    const char *config_json;   /* the checkpoint's config.json text */
    size_t config_len;
    int n_layers, n_seq_max, n_ctx;
    int timeout_ms;            /* per message; LOAD gets 10x */
    /* Called after each tensor (may be NULL): done/total tensors and bytes. */
    void (*progress)(void *ctx, size_t tensors_done, size_t tensors_total, uint64_t bytes_done, uint64_t bytes_total);
    void *progress_ctx;
};

struct wp_push_stats {
    size_t tensors_total, tensors_sent, tensors_cached;
    uint64_t bytes_raw;   /* tensor bytes that had to be sent */
    uint64_t bytes_wire;  /* after compression */
    double push_ms, load_ms;
    uint64_t worker_rss;  /* from READY */
};

/* Runs the whole exchange on an authenticated connection. */
int wp_push(struct net_conn *c, const struct wp_manifest *mf, const struct wp_push_params *p,
            struct wp_push_stats *ret, ifd_error *err);

/* ---- worker ---- */

struct wp_cache;

/* Opens (creating it, mode 0700) the cache directory, which must be owned by
 * this user and not writable by group or others; removes the .part files a
 * previous run left. max_bytes: quota of the cache's files (0: half of its
 * file system). Cache files are never opened through symbolic links. */
int wp_cache_open(const char *dir, uint64_t max_bytes, struct wp_cache **ret, ifd_error *err);
void wp_cache_close(struct wp_cache *c); /* accepts NULL */
/* The quota in force: the configured one, or half of the cache's file system
 * as it is now (taken at each call). */
uint64_t wp_cache_max_bytes(const struct wp_cache *c);

/* Before the transfer of an assignment: refuses one larger than the quota,
 * then removes cached tensors the assignment does not use, least recently
 * used first, until what is missing fits the quota and the free space of the
 * file system (which keeps 1/20, at most 1 GiB, for others). *ret_pruned
 * (may be NULL): files removed. */
int wp_cache_reserve(struct wp_cache *c, const struct net_assign *a, size_t *ret_pruned, ifd_error *err);

/* Removes every partial tensor (.part): called when the master that was
 * sending them is gone. Returns how many. */
size_t wp_cache_remove_partial(struct wp_cache *c);

/* Fills have[i] for every tensor of the assignment. */
void wp_cache_have(struct wp_cache *c, const struct net_assign *a, uint64_t *have);

/* Appends one received chunk (checked against the assignment). */
int wp_cache_put_chunk(struct wp_cache *c, const struct net_assign *a, const struct net_chunk *ch, ifd_error *err);

/* A worker configured with its own copy of the checkpoint: every tensor of
 * the assignment the cache lacks is looked up by name in `local`, hashed, and
 * copied into the cache only if its content hash is the one the master
 * announced (so a different or corrupt local copy is never used). Fills the
 * counts of tensors taken and of tensors present locally but different. */
int wp_cache_seed_local(struct wp_cache *c, const struct net_assign *a, const st_model *local,
                        size_t *ret_taken, size_t *ret_mismatched, ifd_error *err);

/* Assembles the image of the assignment's tensors, in an anonymous mapping
 * of *ret_len bytes: open it with st_open_image(), which takes it over (or
 * munmap() it). */
int wp_cache_build_image(struct wp_cache *c, const struct net_assign *a, void **ret_image, size_t *ret_len,
                         ifd_error *err);
