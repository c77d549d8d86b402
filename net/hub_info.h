/* hub_info.h - the two documents a Hub server sends that decide what is
 * downloaded and where it is written: the revision info
 * (GET /api/models/{repo}/revision/{rev}?blobs=true) and a checkpoint's
 * model.safetensors.index.json. Both are untrusted: every name that becomes
 * a path and every etag that becomes a blob file name is validated here, and
 * their counts are bounded (tests/fuzz/fuzz_hub_info.c). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "hub/hf_cache.h"

#define HUB_MAX_SIBLINGS 100000
#define HUB_MAX_SHARDS 10000

struct hub_file {
    char *name;    /* rfilename, passed hf_filename_check() (owned) */
    char etag[65]; /* lowercase hex: lfs sha256 (64) or git blob sha1 (40) */
    uint64_t size; /* bytes, at most 2^53 */
    bool lfs;      /* etag is the sha256 of the content */
};

struct hub_info {
    char commit[HF_COMMIT_HEX_LEN + 1]; /* lowercase 40-hex */
    struct hub_file *files;
    size_t n_files;
};

/* Parses the revision info JSON (NUL-terminated) into *ret (free with
 * hub_info_finish). Needs "sha" and "siblings" with rfilename, size and
 * blobId, or lfs.{sha256,size}. Returns 0 or -EPROTO/-ENOMEM with a message
 * naming the field or file at fault (the caller adds the repo and URL). */
int hub_info_parse(const char *json, struct hub_info *ret, ifd_error *err);
void hub_info_finish(struct hub_info *info); /* accepts a zeroed struct */

/* The distinct shard file names a model.safetensors.index.json's weight_map
 * names (NUL-terminated json), in first-seen order: each a plain
 * "*.safetensors" name beside the index (no '/', passes hf_filename_check),
 * at most HUB_MAX_SHARDS, at least one. *ret_names is an array of owned
 * strings (free with hub_names_free). 0 or -EPROTO/-ENOMEM with a message. */
int hub_index_shards(const char *json, char ***ret_names, size_t *ret_n, ifd_error *err);
void hub_names_free(char **names, size_t n);
