/* ctl_hub.c - `inferctl model pull|list|rm`: models in the Hugging Face cache.
 *
 *   inferctl model pull ORG/NAME[@REV] [--cache-dir DIR] [--quiet] [--retries N]
 *   inferctl model list [--cache-dir DIR] [--config PATH] [--json]
 *   inferctl model rm ORG/NAME[@REV] [--cache-dir DIR] [--config PATH] [--force]
 *
 * The cache is the one transformers and huggingface-cli use (core/hub/hf_cache.h),
 * the download is net/hub_pull.c. Environment, as huggingface_hub reads it:
 * HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, HF_HUB_CACHE, HF_HOME; and for tests
 * INFERD_HUB_BACKOFF_S (first retry wait, default 1) and INFERD_HUB_STALL_S
 * (seconds under 1 KiB/s before a transfer is retried, default 30). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/file.h"
#include "config.h"
#include "ctl.h"
#include "hub/hf_cache.h"
#include "hub_pull.h"

#define HUB_WALK_DEPTH_MAX 16
#define HUB_CONFIG_JSON_MAX (4u << 20)

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double env_double(const char *name, double def)
{
    const char *v = getenv(name);
    char *end;
    if (!v || !*v)
        return def;
    double d = strtod(v, &end);
    return (*end || d < 0 || d > 3600) ? def : d;
}

static bool env_true(const char *name)
{
    const char *v = getenv(name);
    return v && (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0 ||
                 strcasecmp(v, "on") == 0);
}

/* ------------------------------------------------------------ pull */

struct progress_view {
    bool tty, quiet;
    double file_t0, last_line;
    uint64_t start_bytes; /* resumed prefix: not counted in the rate */
};

static void fmt_eta(double s, char *out, size_t n)
{
    if (s < 0 || s > 359999)
        snprintf(out, n, "--:--");
    else if (s >= 3600)
        snprintf(out, n, "%d:%02d:%02d", (int)s / 3600, (int)s / 60 % 60, (int)s % 60);
    else
        snprintf(out, n, "%02d:%02d", (int)s / 60, (int)s % 60);
}

static void show_progress(void *userdata, const struct hub_progress *p)
{
    struct progress_view *v = userdata;
    double t = mono_s();
    if (v->quiet)
        return;
    double mb = (double)p->done / 1e6, total_mb = (double)p->total / 1e6;
    switch (p->event) {
    case HUB_EVENT_START:
        v->file_t0 = v->last_line = t;
        v->start_bytes = p->done;
        if (!v->tty) {
            if (p->done)
                fprintf(stderr, "downloading %s (%.1f MB, resuming at %.1f MB)\n", p->file, total_mb, mb);
            else
                fprintf(stderr, "downloading %s (%.1f MB)\n", p->file, total_mb);
        }
        return;
    case HUB_EVENT_PROGRESS: {
        /* A terminal gets a bar redrawn in place; a log a line every 10 s. */
        if (t - v->last_line < (v->tty ? 0.2 : 10.0))
            return;
        v->last_line = t;
        double rate = (double)(p->done - v->start_bytes) / 1e6 / (t - v->file_t0 + 1e-9);
        char eta[16];
        fmt_eta(rate > 0 ? (total_mb - mb) / rate : -1, eta, sizeof(eta));
        if (v->tty) {
            int width = 24, fill = p->total ? (int)((double)width * (double)p->done / (double)p->total) : width;
            fprintf(stderr, "\r\033[K%-32.32s [%-*.*s] %8.1f/%.1f MB %6.1f MB/s ETA %s", p->file, width, fill,
                    "########################", mb, total_mb, rate, eta);
        } else {
            fprintf(stderr, "%s: %.1f/%.1f MB, %.1f MB/s, ETA %s\n", p->file, mb, total_mb, rate, eta);
        }
        return;
    }
    case HUB_EVENT_DONE: {
        double s = t - v->file_t0;
        double rate = (double)(p->done - v->start_bytes) / 1e6 / (s + 1e-9);
        fprintf(stderr, "%s%s: %.1f MB in %.1f s (%.1f MB/s), done\n", v->tty ? "\r\033[K" : "", p->file,
                total_mb, s, rate);
        return;
    }
    case HUB_EVENT_CACHED:
        fprintf(stderr, "%s: already in the cache\n", p->file);
        return;
    case HUB_EVENT_RETRY:
        fprintf(stderr, "%s%s: %s\n", v->tty ? "\r\033[K" : "", p->file, p->message);
        return;
    }
}

static void pull_usage(FILE *f)
{
    fprintf(f, "Usage: inferctl model pull ORG/NAME[@REVISION] [--cache-dir DIR] [--quiet] [--retries N]\n\n"
               "Downloads what inferd needs of a Hugging Face model (config, tokenizer, safetensors weights)\n"
               "into the Hugging Face cache ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub) and\n"
               "prints the snapshot directory. Interrupted downloads resume; files are verified.\n\n"
               "  --cache-dir DIR   cache root instead of the environment's\n"
               "  --quiet           no progress, only errors and the snapshot path\n"
               "  --retries N       retries of a failed request (default 5; backoff 1 s, 2 s, 4 s ... 30 s)\n\n"
               "Environment: HF_ENDPOINT (default https://huggingface.co), HF_TOKEN (private and gated\n"
               "repositories), HF_HUB_OFFLINE=1 (no network: only check the cache).\n");
}

static int pull_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"cache-dir", required_argument, NULL, 'c'},
        {"quiet", no_argument, NULL, 'q'},
        {"retries", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *endpoint = getenv("HF_ENDPOINT");
    struct hub_pull_options opt = {
        .endpoint = endpoint && *endpoint ? endpoint : "https://huggingface.co",
        .token = getenv("HF_TOKEN"),
        .offline = env_true("HF_HUB_OFFLINE"),
        .retries = 5,
        .backoff_s = env_double("INFERD_HUB_BACKOFF_S", 1.0),
        .backoff_max_s = 30.0,
        .stall_s = (long)env_double("INFERD_HUB_STALL_S", 30.0),
    };
    struct progress_view view = {.tty = isatty(STDERR_FILENO)};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "hq", longopts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'c':
            opt.cache_dir = optarg;
            break;
        case 'q':
            view.quiet = true;
            break;
        case 'r': {
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 0 || v > 100) {
                fprintf(stderr, "inferctl model pull: bad --retries '%s' (0..100)\n", optarg);
                return 2;
            }
            opt.retries = (int)v;
            break;
        }
        case 'h':
            pull_usage(stdout);
            return 0;
        default:
            pull_usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        pull_usage(stderr);
        return 2;
    }
    /* The endpoint ends up in URLs: a trailing '/' would double. */
    char *ep = strdup(opt.endpoint);
    if (!ep)
        return 1;
    for (size_t n = strlen(ep); n > 0 && ep[n - 1] == '/'; n--)
        ep[n - 1] = '\0';
    opt.endpoint = ep;
    opt.progress = show_progress;
    opt.userdata = &view;
    struct hf_ref ref = {0};
    ifd_error err = {{0}};
    struct hub_pull_result res = {0};
    const double t0 = mono_s();
    int r = hf_ref_parse(argv[optind], &ref, &err);
    if (r >= 0)
        r = hub_pull(&ref, &opt, &res, &err);
    if (r < 0) {
        fprintf(stderr, "inferctl model pull: %s\n", err.msg);
    } else {
        double s = mono_s() - t0;
        if (!view.quiet && !opt.offline)
            fprintf(stderr, "%s@%s (commit %s): %d files, %d already cached, %.1f MB downloaded in %.1f s\n",
                    ref.repo_id, ref.revision, res.commit, res.files, res.cached, (double)res.downloaded / 1e6, s);
        printf("%s\n", res.snapshot);
    }
    hub_pull_result_finish(&res);
    hf_ref_finish(&ref);
    free(ep);
    return r < 0 ? 1 : 0;
}

/* ------------------------------------------------------------ cache walks */

/* Names (basenames of link targets under blobs/) of the blobs a snapshot
 * links to, plus the bytes they take (each once). */
struct blob_set {
    char **names;
    size_t n, cap;
    uint64_t bytes;
};

static bool blob_set_has(const struct blob_set *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->names[i], name) == 0)
            return true;
    return false;
}

static int blob_set_add(struct blob_set *s, const char *name)
{
    if (blob_set_has(s, name))
        return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        char **n = realloc(s->names, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        s->names = n;
        s->cap = cap;
    }
    if (!(s->names[s->n] = strdup(name)))
        return -ENOMEM;
    s->n++;
    return 1;
}

static void blob_set_finish(struct blob_set *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->names[i]);
    free(s->names);
    memset(s, 0, sizeof(*s));
}

/* Walks a snapshot directory: every symlink's target basename goes into set
 * (sizes of the targets summed once); with remove, unlinks the links and
 * removes the directories on the way back. Depth-bounded. */
static int walk_snapshot(const char *dir, int depth, bool remove, struct blob_set *set)
{
    if (depth > HUB_WALK_DEPTH_MAX)
        return -ELOOP;
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    struct dirent *e;
    int r = 0;
    while ((e = readdir(d)) && r >= 0) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *path = NULL;
        if (asprintf(&path, "%s/%s", dir, e->d_name) < 0) {
            r = -ENOMEM;
            break;
        }
        struct stat st;
        if (lstat(path, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                r = walk_snapshot(path, depth + 1, remove, set);
                if (r >= 0 && remove && rmdir(path) < 0)
                    r = -errno;
            } else {
                if (S_ISLNK(st.st_mode)) {
                    char target[PATH_MAX];
                    ssize_t n = readlink(path, target, sizeof(target) - 1);
                    if (n > 0) {
                        target[n] = '\0';
                        const char *base = strrchr(target, '/');
                        int added = blob_set_add(set, base ? base + 1 : target);
                        struct stat ts;
                        if (added < 0)
                            r = added;
                        else if (added && stat(path, &ts) == 0)
                            set->bytes += (uint64_t)ts.st_blocks * 512;
                    }
                } else {
                    set->bytes += (uint64_t)st.st_blocks * 512; /* a real file someone put there */
                }
                if (remove && unlink(path) < 0)
                    r = -errno;
            }
        }
        free(path);
    }
    closedir(d);
    return r;
}

/* Calls fn for each ref file under repo_dir/refs whose content is commit,
 * with its name relative to refs/ (main, refs/pr/1) and its path. */
static void refs_for_commit(const char *repo_dir, const char *rel, int depth, const char *commit,
                            void (*fn)(void *, const char *, const char *), void *userdata)
{
    if (depth > HUB_WALK_DEPTH_MAX)
        return;
    char *dir = NULL;
    if (asprintf(&dir, "%s/refs%s%s", repo_dir, *rel ? "/" : "", rel) < 0)
        return;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char *name = NULL, *path = NULL;
        if (asprintf(&name, "%s%s%s", rel, *rel ? "/" : "", e->d_name) >= 0 &&
            asprintf(&path, "%s/%s", dir, e->d_name) >= 0) {
            struct stat st;
            char sha[HF_COMMIT_ID_MAX + 1];
            if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
                refs_for_commit(repo_dir, name, depth + 1, commit, fn, userdata);
            } else if (S_ISREG(st.st_mode) && hf_cache_read_ref(repo_dir, name, sha, NULL) >= 0 &&
                       strcmp(sha, commit) == 0) {
                fn(userdata, name, path);
            }
        }
        free(name);
        free(path);
    }
    if (d)
        closedir(d);
    free(dir);
}

/* The snapshots the inferd configuration serves: [model] and every
 * [model.NAME], each realpath'd, with "FILE [SECTION]" naming it. */
struct config_uses {
    int n;
    char **snapshot;   /* [n] */
    char **who;        /* [n]: "/etc/inferd/inferd.conf [model.small]" */
};

static void config_uses_finish(struct config_uses *u)
{
    for (int i = 0; i < u->n; i++) {
        free(u->snapshot[i]);
        free(u->who[i]);
    }
    free(u->snapshot);
    free(u->who);
    memset(u, 0, sizeof(*u));
}

/* Which configuration section serves the snapshot whose realpath is real; NULL: none. */
static const char *config_user(const struct config_uses *u, const char *real)
{
    for (int i = 0; real && i < u->n; i++)
        if (strcmp(u->snapshot[i], real) == 0)
            return u->who[i];
    return NULL;
}

/* One model path of the configuration: a directory, or a Hub reference
 * looked up in root, the cache being listed (the daemon's cache, under
 * systemd /var/lib/inferd/huggingface/hub, is usually not the caller's).
 * A path that is neither is skipped: it uses nothing in this cache. */
static int config_use_add(struct config_uses *u, const char *file, const char *section, const char *model_path,
                          const char *root)
{
    struct stat st;
    struct hf_ref ref = {0};
    char *dir = NULL;
    if (!model_path)
        return 0;
    if (stat(model_path, &st) == 0 && S_ISDIR(st.st_mode))
        dir = strdup(model_path);
    else if (hf_ref_parse(model_path, &ref, NULL) >= 0)
        hf_cache_resolve(root, &ref, &dir, NULL, NULL);
    hf_ref_finish(&ref);
    char *real = dir ? realpath(dir, NULL) : NULL;
    free(dir);
    if (!real)
        return 0;
    char **ns = realloc(u->snapshot, sizeof(*ns) * (size_t)(u->n + 1));
    if (ns)
        u->snapshot = ns;
    char **nw = realloc(u->who, sizeof(*nw) * (size_t)(u->n + 1));
    if (nw)
        u->who = nw;
    if (!ns || !nw || asprintf(&u->who[u->n], "%s [%s]", file, section) < 0) {
        free(real);
        return -ENOMEM;
    }
    u->snapshot[u->n++] = real;
    return 0;
}

/* config_path NULL: the default file when it exists. */
static int config_uses_load(const char *config_path, const char *root, struct config_uses *ret, ifd_error *err)
{
    memset(ret, 0, sizeof(*ret));
    const char *path = config_path ? config_path : INFERD_DEFAULT_CONFIG;
    if (!config_path && access(path, F_OK) != 0)
        return 0;
    struct inferd_config c;
    char *text = NULL;
    int r = inferd_config_init(&c);
    if (r < 0)
        return ifd_error_set(err, r, "out of memory");
    if ((r = file_read(path, 1u << 20, 0, &text, NULL, err)) < 0 ||
        (r = inferd_config_parse_string(&c, text, path, err)) < 0)
        goto out;
    r = config_use_add(ret, path, "model", c.model_path, root);
    for (int i = 0; r >= 0 && i < c.n_models; i++) {
        char section[INFERD_MAX_MODEL_NAME + 8];
        snprintf(section, sizeof(section), "model.%s", c.models[i].name);
        r = config_use_add(ret, path, section, c.models[i].path, root);
    }
    if (r < 0)
        ifd_error_set(err, r, "out of memory");
out:
    free(text);
    inferd_config_finish(&c);
    return r;
}

/* "mlx 4-bit g64", "bf16" ... from a snapshot's config.json; "?" when unknown. */
static void model_format(const char *snap, char *out, size_t n)
{
    char *path = NULL, *text = NULL;
    snprintf(out, n, "?");
    if (asprintf(&path, "%s/config.json", snap) < 0)
        return;
    if (file_read(path, HUB_CONFIG_JSON_MAX, 0, &text, NULL, NULL) >= 0) {
        cJSON *j = cJSON_Parse(text);
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "quantization");
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "torch_dtype");
        if (cJSON_IsObject(q)) {
            const cJSON *bits = cJSON_GetObjectItemCaseSensitive(q, "bits");
            const cJSON *gs = cJSON_GetObjectItemCaseSensitive(q, "group_size");
            snprintf(out, n, "mlx %d-bit g%d", cJSON_IsNumber(bits) ? bits->valueint : 0,
                     cJSON_IsNumber(gs) ? gs->valueint : 0);
        } else if (cJSON_IsString(dt)) {
            static const char *const names[][2] = {
                {"bfloat16", "bf16"}, {"float16", "f16"}, {"float32", "f32"}};
            snprintf(out, n, "%.32s", dt->valuestring);
            for (size_t i = 0; i < 3; i++)
                if (strcmp(dt->valuestring, names[i][0]) == 0)
                    snprintf(out, n, "%s", names[i][1]);
        }
        cJSON_Delete(j);
    }
    free(text);
    free(path);
}

/* ------------------------------------------------------------ list */

struct ref_names {
    char buf[512];
};

static void add_ref_name(void *userdata, const char *name, const char *path)
{
    struct ref_names *rn = userdata;
    size_t o = strlen(rn->buf);
    snprintf(rn->buf + o, sizeof(rn->buf) - o, "%s%s", o ? "," : "", name);
}

static int list_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"cache-dir", required_argument, NULL, 'c'},
        {"config", required_argument, NULL, 'C'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cache_dir = NULL, *config_path = NULL;
    bool json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cache_dir = optarg;
            break;
        case 'C':
            config_path = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'h':
            printf("Usage: inferctl model list [--cache-dir DIR] [--config PATH] [--json]\n\n"
                   "One row per snapshot in the Hugging Face cache: name, revision, size on disk, format,\n"
                   "whether it is complete, and whether the inferd configuration (--config, default\n" INFERD_DEFAULT_CONFIG
                   ") serves it.\n");
            return 0;
        default:
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "Usage: inferctl model list [--cache-dir DIR] [--config PATH] [--json]\n");
        return 2;
    }
    ifd_error err = {{0}};
    char *root = NULL;
    struct config_uses uses = {0};
    if (cache_dir ? !(root = strdup(cache_dir)) : hf_cache_root(&root, &err) < 0) {
        fprintf(stderr, "inferctl model list: %s\n", err.msg);
        return 1;
    }
    if (config_uses_load(config_path, root, &uses, &err) < 0) {
        fprintf(stderr, "inferctl model list: %s\n", err.msg);
        free(root);
        return 1;
    }
    cJSON *rows = cJSON_CreateArray();
    if (!json)
        printf("%-40s %-14s %10s  %-14s %-8s %s\n", "NAME", "REVISION", "SIZE", "FORMAT", "COMPLETE", "USED BY");
    DIR *d = opendir(root);
    struct dirent *e;
    if (!d)
        fprintf(stderr, "inferctl model list: no Hugging Face cache at %s: %s\n", root, strerror(errno));
    while (d && (e = readdir(d))) {
        char *id = NULL, *snaps = NULL;
        if (hf_cache_repo_id_from_dir(e->d_name, &id) < 0)
            continue;
        if (asprintf(&snaps, "%s/%s/snapshots", root, e->d_name) < 0) {
            free(id);
            continue;
        }
        DIR *sd = opendir(snaps);
        struct dirent *se;
        while (sd && (se = readdir(sd))) {
            if (!hf_commit_id_valid(se->d_name))
                continue;
            char *snap = NULL, *repo = NULL;
            if (asprintf(&snap, "%s/%s", snaps, se->d_name) < 0)
                continue;
            if (asprintf(&repo, "%s/%s", root, e->d_name) < 0) {
                free(snap);
                continue;
            }
            struct ref_names rn = {""};
            refs_for_commit(repo, "", 0, se->d_name, add_ref_name, &rn);
            if (!rn.buf[0])
                snprintf(rn.buf, sizeof(rn.buf), "%.12s", se->d_name);
            struct blob_set set = {0};
            walk_snapshot(snap, 0, false, &set);
            char fmt[64];
            model_format(snap, fmt, sizeof(fmt));
            bool complete = hub_snapshot_check(snap, NULL) >= 0;
            char *real = realpath(snap, NULL);
            const char *used = config_user(&uses, real);
            if (json) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "name", id);
                cJSON_AddStringToObject(o, "revision", rn.buf);
                cJSON_AddStringToObject(o, "commit", se->d_name);
                cJSON_AddNumberToObject(o, "size_bytes", (double)set.bytes);
                cJSON_AddStringToObject(o, "format", fmt);
                cJSON_AddBoolToObject(o, "complete", complete);
                cJSON_AddStringToObject(o, "path", snap);
                if (used)
                    cJSON_AddStringToObject(o, "used_by", used);
                else
                    cJSON_AddNullToObject(o, "used_by");
                cJSON_AddItemToArray(rows, o);
            } else {
                printf("%-40s %-14s %7.1f MB  %-14s %-8s %s\n", id, rn.buf, (double)set.bytes / 1e6, fmt,
                       complete ? "yes" : "no", used ? used : "-");
            }
            free(real);
            blob_set_finish(&set);
            free(snap);
            free(repo);
        }
        if (sd)
            closedir(sd);
        free(snaps);
        free(id);
    }
    if (d)
        closedir(d);
    if (json) {
        char *s = cJSON_Print(rows);
        if (s)
            printf("%s\n", s);
        free(s);
    }
    cJSON_Delete(rows);
    config_uses_finish(&uses);
    free(root);
    return 0;
}

/* ------------------------------------------------------------ rm */

static void unlink_ref(void *userdata, const char *name, const char *path)
{
    if (unlink(path) == 0)
        printf("removed ref %s\n", name);
}

static int remove_tree(const char *path, int depth)
{
    struct stat st;
    if (depth > HUB_WALK_DEPTH_MAX)
        return -ELOOP;
    if (lstat(path, &st) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode))
        return unlink(path) < 0 ? -errno : 0;
    DIR *d = opendir(path);
    if (!d)
        return -errno;
    struct dirent *e;
    int r = 0;
    while ((e = readdir(d)) && r >= 0) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *p = NULL;
        if (asprintf(&p, "%s/%s", path, e->d_name) < 0)
            r = -ENOMEM;
        else
            r = remove_tree(p, depth + 1);
        free(p);
    }
    closedir(d);
    return r < 0 ? r : (rmdir(path) < 0 ? -errno : 0);
}

static int rm_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"cache-dir", required_argument, NULL, 'c'},
        {"config", required_argument, NULL, 'C'},
        {"force", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cache_dir = NULL, *config_path = NULL;
    bool force = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "hf", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cache_dir = optarg;
            break;
        case 'C':
            config_path = optarg;
            break;
        case 'f':
            force = true;
            break;
        case 'h':
            printf("Usage: inferctl model rm ORG/NAME[@REVISION] [--cache-dir DIR] [--config PATH] [--force]\n\n"
                   "Removes a snapshot from the Hugging Face cache, the refs that point at it, and the\n"
                   "blobs no other snapshot uses. Refuses when the inferd configuration serves it,\n"
                   "unless --force.\n");
            return 0;
        default:
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "Usage: inferctl model rm ORG/NAME[@REVISION] [--cache-dir DIR] [--config PATH] [--force]\n");
        return 2;
    }
    ifd_error err = {{0}};
    struct hf_ref ref = {0};
    char *root = NULL, *repo = NULL, *snap = NULL, *real = NULL;
    struct config_uses uses = {0};
    char *snaps_dir = NULL, *locks = NULL;
    char commit[HF_COMMIT_ID_MAX + 1];
    struct blob_set mine = {0}, others = {0};
    int rc = 1, r;
    if ((r = hf_ref_parse(argv[optind], &ref, &err)) < 0 ||
        (cache_dir ? ((root = strdup(cache_dir)) ? 0 : -ENOMEM) : hf_cache_root(&root, &err)) < 0 ||
        (r = hf_cache_resolve(root, &ref, &snap, commit, &err)) < 0 ||
        (r = config_uses_load(config_path, root, &uses, &err)) < 0) {
        fprintf(stderr, "inferctl model rm: %s\n", err.msg);
        goto out;
    }
    real = realpath(snap, NULL);
    const char *used = config_user(&uses, real);
    if (used && !force) {
        fprintf(stderr, "inferctl model rm: %s@%s is the model of %s (its path); change that first or use --force\n",
                ref.repo_id, ref.revision, used);
        goto out;
    }
    if (hf_cache_repo_dir(root, ref.repo_id, &repo) < 0 || asprintf(&snaps_dir, "%s/snapshots", repo) < 0) {
        fprintf(stderr, "inferctl model rm: out of memory\n");
        goto out;
    }
    /* The blobs of every other snapshot stay. */
    DIR *d = opendir(snaps_dir);
    struct dirent *e;
    int n_others = 0;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, commit) == 0)
            continue;
        char *p = NULL;
        if (asprintf(&p, "%s/%s", snaps_dir, e->d_name) >= 0) {
            walk_snapshot(p, 0, false, &others);
            n_others++;
        }
        free(p);
    }
    if (d)
        closedir(d);
    if ((r = walk_snapshot(snap, 0, true, &mine)) < 0 || rmdir(snap) < 0) {
        fprintf(stderr, "inferctl model rm: removing %s: %s\n", snap, strerror(r < 0 ? -r : errno));
        goto out;
    }
    printf("removed snapshot %s\n", snap);
    refs_for_commit(repo, "", 0, commit, unlink_ref, NULL);
    uint64_t freed = 0;
    for (size_t i = 0; i < mine.n; i++) {
        if (blob_set_has(&others, mine.names[i]))
            continue;
        char *b = NULL;
        struct stat st;
        /* Only a plain blob name (the walk takes basenames of link targets). */
        if (asprintf(&b, "%s/blobs/%s", repo, mine.names[i]) >= 0 && lstat(b, &st) == 0 && S_ISREG(st.st_mode) &&
            unlink(b) == 0)
            freed += (uint64_t)st.st_blocks * 512;
        free(b);
    }
    if (n_others == 0) {
        /* Nothing left: the whole repository directory (partial downloads, refs) and its locks. */
        struct stat st;
        if (asprintf(&locks, "%s/.locks/%s", root, strrchr(repo, '/') + 1) < 0)
            locks = NULL;
        if (remove_tree(repo, 0) < 0)
            fprintf(stderr, "inferctl model rm: could not remove all of %s\n", repo);
        else
            printf("removed %s\n", repo);
        if (locks && lstat(locks, &st) == 0)
            remove_tree(locks, 0);
    }
    printf("freed %.1f MB\n", (double)freed / 1e6);
    rc = 0;
out:
    blob_set_finish(&mine);
    blob_set_finish(&others);
    hf_ref_finish(&ref);
    free(root);
    free(repo);
    free(snap);
    free(real);
    config_uses_finish(&uses);
    free(snaps_dir);
    free(locks);
    return rc;
}

int ctl_model_hub_main(int argc, char **argv)
{
    if (strcmp(argv[0], "pull") == 0)
        return pull_main(argc, argv);
    if (strcmp(argv[0], "list") == 0)
        return list_main(argc, argv);
    if (strcmp(argv[0], "rm") == 0)
        return rm_main(argc, argv);
    fprintf(stderr, "inferctl model: unknown subcommand '%s'\n", argv[0]);
    return 2;
}
