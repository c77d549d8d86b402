/* config.h - inferd configuration: /etc/inferd/inferd.conf (INI, libinih)
 * overridden by command-line flags.
 *
 * Loading is all-or-nothing: a bad value anywhere is a message in err naming
 * the file, line, section and key (or the flag), and the struct is untouched.
 * Documented for operators in conf/inferd.conf and inferd.conf(5). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "base/error.h"

#define INFERD_DEFAULT_CONFIG "/etc/inferd/inferd.conf"
#define INFERD_DEFAULT_LISTEN "127.0.0.1:8080"
#define INFERD_DEFAULT_WORKER_PORT 10128
#define INFERD_DEFAULT_CACHE_DIR "/var/cache/inferd"
/* ctx_len 0: the model's context, at most this many positions. */
#define INFERD_DEFAULT_CONTEXT_CAP 4096

/* Limits on what a config file may ask for: sanity bounds, not tuning. */
#define INFERD_MAX_API_KEYS 256
#define INFERD_MAX_WORKERS 64
#define INFERD_MAX_MICRO_BATCHES 16 /* = REMOTE_STAGE_MAX_INFLIGHT */
#define INFERD_MAX_KEY_LEN 512
#define INFERD_MAX_MODELS 64
#define INFERD_MAX_CORS_ORIGINS 64
#define INFERD_MAX_ORIGIN_LEN 256
#define INFERD_MAX_MODEL_NAME 128
#define INFERD_DEFAULT_IDLE_UNLOAD_S 300

enum inferd_role {
    INFERD_ROLE_MASTER = 0,
    INFERD_ROLE_WORKER,
};

enum inferd_backend {
    INFERD_BACKEND_AUTO = 0,
    INFERD_BACKEND_CPU,
    INFERD_BACKEND_VULKAN,
};

/* One [worker.NAME] section or --worker flag: a remote layer range. */
struct inferd_worker_cfg {
    char *name;          /* section suffix ("gpu1"), or "flagN" for --worker */
    char *address;       /* "host:port" as written */
    int layer_first;     /* [layer_first, layer_last): the file says FIRST-LAST inclusive */
    int layer_last;
    bool auto_layers;    /* layers = auto: the master assigns a range at start */
    bool standby;        /* standby = true: connected at start, holds no layers until a failover */
};

/* One [model.NAME] section: a further model this master serves beside the
 * [model] one, on this node only, loaded on first use (or at start with
 * preload) and unloaded after idle_unload_s without requests. */
struct inferd_model_cfg {
    char *name;               /* the section suffix: the "model" id clients send */
    char *path;               /* checkpoint dir or Hugging Face cache name org/name */
    char *chat_template_path; /* Jinja file overriding the tokenizer's template */
    int quantize_bits;        /* 0, 4 or 8, as [model] quantize */
    int quantize_group_size;
    int reasoning;            /* enum tools_reasoning (tools.h): reasoning = auto | none | think */
    bool preload;             /* load at start instead of on the first request */
    bool pool_mean;           /* /v1/embeddings: mean of the positions, else the last one */
    int idle_unload_s;        /* unload after this long unused; 0 = never */
};

struct inferd_config {
    char *config_path;        /* the file read, NULL when none */

    /* [server] */
    char *listen;             /* "host:port"; "[v6]:port" accepted */
    char **api_keys;          /* [n_api_keys]: inline keys and the key file's lines */
    int n_api_keys;
    char *api_key_file;       /* one key per line, '#' comments */
    size_t max_body_bytes;    /* request bodies larger than this get 413 */
    int queue_depth;          /* requests waiting for a sequence slot; beyond: 429 */
    int max_seqs;             /* sequences decoded together (engine n_seq_max) */
    int ctx_len;              /* positions per sequence; 0 = model's, capped at 4096 */
    int prefill_chunk;        /* prompt tokens per step beside running streams */
    bool prefix_cache;        /* free slots keep their KV cache for prompts that begin the same way */
    int drain_timeout_s;      /* SIGTERM: how long running streams may finish */
    int max_connections;      /* open HTTP connections at once (see http.h) */
    int max_connections_per_ip; /* per client address (IPv6: per /64); 0 = no per-address limit */
    int request_timeout_s;    /* to receive one request's headers and body, trickled or not */
    size_t parse_memory;      /* memory for parsing + tokenizing bodies at once (see http.h) */
    size_t max_tokenize_bytes; /* /tokenize text longer than this gets 413 */
    int log_level;            /* syslog level 0-7 */
    char *served_model_name;  /* the "model" name clients use; default: model dir name */
    char **cors_origins;      /* [n_cors_origins]: browser origins allowed ("*": any); none: no CORS */
    int n_cors_origins;

    /* [model] */
    char *model_path;         /* checkpoint dir or Hugging Face cache name org/name */
    char *chat_template_path; /* Jinja file overriding the tokenizer's template */
    int quantize_bits;        /* 0, 4 or 8: quantize float weights to MLX affine while loading */
    int quantize_group_size;  /* elements per scale/bias pair (default 64) */
    bool pool_mean;           /* /v1/embeddings pooling: mean of the positions, else the last (default) */
    int reasoning;            /* enum tools_reasoning (tools.h): reasoning = auto | none | think */

    /* [model.NAME] sections, in file order */
    struct inferd_model_cfg *models;
    int n_models;
    size_t models_memory;     /* [server] models_memory: budget of the models loaded at once; 0 = none */

    /* [node] */
    enum inferd_role role;
    enum inferd_backend backend;
    int device;               /* Vulkan device index in vk_device_list() order (discrete first) */
    int threads;              /* 0 = every online CPU */
    int simd;                 /* enum cpu_simd the kernels use, or -1: the best this CPU has */
    char *worker_listen;      /* role=worker: "host:port", default 0.0.0.0:10128 */
    char *cache_dir;          /* worker tensor cache */
    size_t cache_max_bytes;   /* worker: cache quota; 0 = half of the cache's file system */
    size_t memory_max_bytes;  /* worker: most memory its layers (weights + KV cache) may take; 0 = what is available */

    /* [cluster] and [worker.NAME] */
    char *cluster_key_file;       /* shared secret for master<->worker authentication */
    bool allow_insecure_cluster;  /* allow non-loopback workers without a key */
    int cluster_io_timeout_s;     /* a started frame must be whole within this (default 30) */
    int cluster_failover_timeout_s; /* longest a failover may hold requests before they get 503 (default 30) */
    /* Most memory the master gives the layers it takes over from a failed
     * worker (weights + KV cache); -1 = its available memory, 0 = it never
     * takes any. */
    int64_t cluster_failover_memory;
    int micro_batches;            /* master: batches in flight on the workers at once; 0 = auto
                                   * (workers in the chain + 1, or 1 without workers), else
                                   * 1..INFERD_MAX_MICRO_BATCHES; 1 = one synchronous batch */
    char **next_hops;             /* worker: FORWARD next hops allowed ("host:port", "host", "*") */
    int n_next_hops;              /* 0: loopback next hops only */
    struct inferd_worker_cfg *workers; /* [n_workers], in file then flag order */
    int n_workers;
};

/* What the command line asked for besides configuration. */
struct inferd_cli {
    bool check_config;  /* --check-config: validate, print a summary, exit */
    bool help;
    bool version;
};

/* Fills defaults (no allocation except the default strings). */
int inferd_config_init(struct inferd_config *c);
void inferd_config_finish(struct inferd_config *c); /* accepts a zeroed struct */

/* Parses INI text into c (on top of what is there). `origin` names it in
 * messages. Unknown sections or keys are errors: a typo must not be ignored. */
int inferd_config_parse_string(struct inferd_config *c, const char *text, const char *origin,
                               ifd_error *err);

/* The whole load: defaults, the file (--config PATH, else
 * /etc/inferd/inferd.conf when it exists), flags on top, the key file, then
 * inferd_config_validate(). *ret is written only on success. */
int inferd_config_load(int argc, char **argv, struct inferd_config *ret, struct inferd_cli *ret_cli,
                       ifd_error *err);

/* Whether a and b have the same [model.NAME] sections and models_memory
 * (what a reload cannot change). */
bool inferd_config_models_equal(const struct inferd_config *a, const struct inferd_config *b);

/* Checks everything that does not need the model. */
int inferd_config_validate(const struct inferd_config *c, ifd_error *err);

/* Checks the worker layer assignments against the model's layer count:
 * in range, not overlapping. */
int inferd_config_validate_layers(const struct inferd_config *c, int n_layers, ifd_error *err);

/* Resolves model_path: an existing directory as is, otherwise a Hugging Face
 * reference ORG/NAME[@REVISION] looked up in $HF_HUB_CACHE, $HF_HOME/hub or
 * ~/.cache/huggingface/hub (core/hub/hf_cache.h: snapshots/<refs/REVISION>,
 * revision main by default). *ret is malloc'd. */
int inferd_config_resolve_model(const char *model_path, char **ret, ifd_error *err);

/* The positions per sequence the engine gets: ctx_len when set, else the
 * model's max_position_embeddings capped at INFERD_DEFAULT_CONTEXT_CAP (the
 * cap itself when the model states none). */
int inferd_config_context_length(const struct inferd_config *c, int max_position_embeddings);

/* Splits "host:port" / "[v6]:port" / "port". *ret_host is malloc'd. */
int inferd_config_split_hostport(const char *s, int default_port, char **ret_host, int *ret_port,
                                 ifd_error *err);

/* Prints the usage text of inferd. */
void inferd_config_usage(FILE *f);
