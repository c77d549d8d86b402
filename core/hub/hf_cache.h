/* hf_cache.h - the Hugging Face hub cache layout, shared by transformers,
 * huggingface-cli and vLLM, so that a model pulled by any of them is found by
 * inferd and the other way round.
 *
 *   ROOT/models--ORG--NAME/
 *       blobs/<etag>                  file contents; etag = sha256 for LFS files,
 *                                     git blob sha1 otherwise
 *       snapshots/<commit>/<filename> relative symlink ../../blobs/<etag>
 *                                     (one more ../ per directory in filename)
 *       refs/<revision>               the commit sha the revision pointed at
 *
 * ROOT is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.
 *
 * Model references are ORG/NAME[@REVISION] (or a legacy single NAME). Every
 * part is validated before it becomes a path, because references come from
 * configuration files, command lines and (for file names) from the network.
 * libc only: no JSON, no network. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "base/error.h"

/* The Hub's own limit on a repo name part is 96 characters. */
#define HF_REPO_PART_MAX 96
/* Longer than any branch or tag anyone uses; bounds what becomes a path. */
#define HF_REVISION_MAX 255
/* Repo file names (rfilename) from the server: bounded before use. */
#define HF_FILENAME_MAX 1024
#define HF_COMMIT_HEX_LEN 40
/* A commit id read from refs/ or a snapshot directory name: the Hub writes
 * 40 hex digits; caches made by hand or by other tools may hold shorter ids,
 * and a future hash may be longer. Letters and digits only, so it is always
 * one safe path component. */
#define HF_COMMIT_ID_MAX 64

struct hf_ref {
    char *repo_id;  /* "ORG/NAME" or "NAME" (owned) */
    char *revision; /* as written after '@', or "main" (owned) */
};

/* Parses and validates text = ORG/NAME[@REVISION] into *ret (caller frees
 * with hf_ref_finish). Repo parts: [A-Za-z0-9][A-Za-z0-9._-]*, at most
 * HF_REPO_PART_MAX, no "..", no "--" (the cache's separator). Revision: a
 * branch, tag or commit, may contain '/' (refs/pr/1) but not "..", not a
 * leading or trailing '/', no empty component, no control or space
 * characters, at most HF_REVISION_MAX. Returns 0 or -EINVAL with a message
 * naming the reference and the rule it breaks. */
int hf_ref_parse(const char *text, struct hf_ref *ret, ifd_error *err);
void hf_ref_finish(struct hf_ref *ref); /* accepts a zeroed struct */

/* True when rev is a full 40-hex commit sha (lowercase or not). */
bool hf_revision_is_commit(const char *rev);

/* True when s is 1..HF_COMMIT_ID_MAX letters and digits (see above). */
bool hf_commit_id_valid(const char *s);

/* Checks that name (a file name inside a repo, from the server) is a safe
 * relative path: not empty, at most HF_FILENAME_MAX, not absolute, no ".."
 * or "." component, no empty component, no backslash or control character.
 * Returns 0 or -EINVAL with a message naming it. */
int hf_filename_check(const char *name, ifd_error *err);

/* The cache root from the environment (see above), malloc'd into *ret.
 * -ENOENT with a message when none of HF_HUB_CACHE, HF_HOME, HOME is set. */
int hf_cache_root(char **ret, ifd_error *err);

/* ROOT/models--ORG--NAME for a validated repo id, malloc'd into *ret.
 * Returns 0 or -ENOMEM. */
int hf_cache_repo_dir(const char *root, const char *repo_id, char **ret);

/* The repo id back from a cache directory name ("models--org--name" ->
 * "org/name"), malloc'd into *ret; -EINVAL when it is not one. */
int hf_cache_repo_id_from_dir(const char *dir_name, char **ret);

/* The snapshot symlink's target for a file: "../../blobs/<etag>" with one
 * more "../" per '/' in filename. malloc'd into *ret; 0 or -ENOMEM. */
int hf_cache_blob_link_target(const char *filename, const char *etag, char **ret);

/* Reads REPO_DIR/refs/<revision>: a commit id (hf_commit_id_valid), copied
 * into ret (HF_COMMIT_ID_MAX + 1 bytes). -ENOENT when the ref is absent,
 * -EINVAL when its content is not a commit id (message names the file). */
int hf_cache_read_ref(const char *repo_dir, const char *revision, char *ret, ifd_error *err);

/* Resolves a reference to its snapshot directory in root (NULL: from the
 * environment): the revision if it is a commit sha, else the commit in
 * refs/<revision>. *ret_dir (malloc'd) and, if ret_commit is non-NULL, the
 * commit (HF_COMMIT_ID_MAX + 1 bytes) are written on success. -ENOENT with a
 * message that says what was looked for and where, and suggests
 * `inferctl model pull`. */
int hf_cache_resolve(const char *root, const struct hf_ref *ref, char **ret_dir, char *ret_commit,
                     ifd_error *err);
