/* hub_pull.h - downloading a model from the Hugging Face Hub (or a server with
 * its URL layout) into the shared cache of core/hub/hf_cache.h, the way
 * huggingface_hub does, so either tool finds what the other pulled.
 *
 *   GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true   commit + file list
 *   GET {endpoint}/{repo}/resolve/{commit}/{file}                each file (redirects followed)
 *
 * Only what inferd loads is fetched: config.json, the tokenizer and generation
 * files, chat templates, and model.safetensors or the index plus every shard it
 * names. Files stream to blobs/<etag>.incomplete (memory bounded by curl's
 * buffer, whatever the checkpoint size), resume with Range after a failure,
 * are checked against the listed size and (LFS files) sha256, then renamed into
 * blobs/; the snapshot symlink follows and refs/<revision> is written last, so
 * a reader that finds the ref finds a complete snapshot. Two pulls of the same
 * blob serialise on a flock in ROOT/.locks/. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "hub/hf_cache.h"

/* Bounds on what the server controls before we parse it. */
#define HUB_API_MAX_BYTES (8u << 20)   /* the revision JSON */
#define HUB_INDEX_MAX_BYTES (32u << 20) /* model.safetensors.index.json */
#define HUB_MAX_REDIRECTS 5

enum hub_event {
    HUB_EVENT_START,    /* a file's download begins (done = bytes resumed) */
    HUB_EVENT_PROGRESS, /* bytes arrived (called often: rate-limit the display) */
    HUB_EVENT_DONE,     /* verified and in the cache */
    HUB_EVENT_CACHED,   /* already in blobs/, nothing downloaded */
    HUB_EVENT_RETRY,    /* a request failed and is retried after message's wait */
};

struct hub_progress {
    enum hub_event event;
    const char *file;    /* the repo file name */
    uint64_t done;       /* bytes of this file on disk, resumed prefix included */
    uint64_t total;      /* its size */
    const char *message; /* HUB_EVENT_RETRY: why, and the wait */
};

typedef void hub_progress_fn(void *userdata, const struct hub_progress *p);

struct hub_pull_options {
    const char *endpoint;  /* e.g. "https://huggingface.co", no trailing '/' needed */
    const char *token;     /* NULL or a bearer token; sent only to the endpoint's host */
    const char *cache_dir; /* NULL: hf_cache_root() */
    bool offline;          /* no network: succeed only from a complete cached snapshot */
    int retries;           /* further attempts of a failed request (network, 5xx, 408, 429) */
    double backoff_s;      /* wait before the first retry; doubles each time ... */
    double backoff_max_s;  /* ... up to this */
    long stall_s;          /* a transfer under 1 KiB/s for this long is aborted (and retried) */
    hub_progress_fn *progress;
    void *userdata;
};

struct hub_pull_result {
    char *snapshot;      /* the snapshot directory (owned) */
    char commit[HF_COMMIT_ID_MAX + 1];
    uint64_t downloaded; /* bytes received in this run */
    int files;           /* files in the snapshot */
    int cached;          /* of which already in blobs/ */
};

/* Pulls ref into the cache. Returns 0 and fills *ret (free with
 * hub_pull_result_finish), or a negative errno with a message naming the
 * repo, revision and URL or file at fault. */
int hub_pull(const struct hf_ref *ref, const struct hub_pull_options *opt, struct hub_pull_result *ret,
             ifd_error *err);
void hub_pull_result_finish(struct hub_pull_result *res); /* accepts a zeroed struct */

/* Whether dir (a snapshot) holds what inferd needs: config.json and either
 * model.safetensors or the index and every shard its weight_map names, each
 * resolvable (no dangling symlink). 0 or -ENOENT/-EINVAL with the missing
 * file in err. */
int hub_snapshot_check(const char *dir, ifd_error *err);
