/* hub_pull.c - pulling a model from the Hugging Face Hub into the shared cache
 * (see hub_pull.h for the protocol and the order of writes). */
#include "hub_pull.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "base/file.h"
#include "hub_info.h"

/* Files inferd reads besides the weights; fetched when the repo has them. */
static const char *const extra_files[] = {
    "config.json",           "tokenizer.json",          "tokenizer_config.json", "generation_config.json",
    "special_tokens_map.json", "chat_template.jinja",    "chat_template.json",
};

#define HUB_ERROR_CODE_MAX 64
#define HUB_LOW_SPEED_BYTES 1024L
#define HUB_CONNECT_TIMEOUT_S 30L
#define HUB_HASH_CHUNK (1u << 20)

struct sibling {
    char *name;       /* rfilename, checked by hf_filename_check() */
    char etag[65];    /* lfs sha256 (64 hex) or git blob sha1 (40 hex) */
    uint64_t size;
    bool lfs;         /* etag is the sha256 of the content: verify it */
    bool wanted;
    bool fetched, was_cached; /* done in this run (the index goes first) */
};

struct pull {
    const struct hf_ref *ref;
    const struct hub_pull_options *opt;
    char *root, *repo_dir, *lock_dir;
    char commit[HF_COMMIT_HEX_LEN + 1];
    struct sibling *sib;
    size_t n_sib;
    uint64_t downloaded;
    CURL *curl;
    struct curl_slist *headers;
};

/* ------------------------------------------------------------ small helpers */

static int mkdir_p(const char *path, ifd_error *err)
{
    char *p = strdup(path);
    if (!p)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0755) < 0 && errno != EEXIST) {
                int e = errno;
                int r = ifd_error_set(err, -e, "cannot create directory %s: %s", p, strerror(e));
                free(p);
                return r;
            }
            if (!(*s = c))
                break;
        }
    }
    free(p);
    return 0;
}

/* The parent directory of path (which has a '/'), created. */
static int mkdir_parent(const char *path, ifd_error *err)
{
    char *p = strdup(path);
    if (!p)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    *strrchr(p, '/') = '\0';
    int r = mkdir_p(p, err);
    free(p);
    return r;
}

static bool path_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* Percent-encodes s for a URL path; keep_slash keeps '/' (file names) or
 * encodes it (a revision like refs/pr/1 is one path segment to the Hub). */
static char *url_escape(const char *s, bool keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(s) * 3 + 1), *o = out;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
            *p == '.' || *p == '_' || *p == '~' || (keep_slash && *p == '/')) {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

static void emit(struct pull *p, enum hub_event ev, const char *file, uint64_t done, uint64_t total,
                 const char *message)
{
    if (!p->opt->progress)
        return;
    struct hub_progress pr = {.event = ev, .file = file, .done = done, .total = total, .message = message};
    p->opt->progress(p->opt->userdata, &pr);
}

/* ------------------------------------------------------------ HTTP */

/* What one response said, captured from its headers. Reset at each status
 * line, so after redirects it describes the last response. */
struct response {
    char error_code[HUB_ERROR_CODE_MAX]; /* X-Error-Code, truncated */
    bool has_content_range;
    uint64_t range_start; /* Content-Range: bytes START-... */
};

static size_t header_cb(char *data, size_t size, size_t n, void *userdata)
{
    struct response *r = userdata;
    size_t len = size * n;
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        memset(r, 0, sizeof(*r));
        return len;
    }
    static const char ec[] = "x-error-code:", cr[] = "content-range:";
    if (len > sizeof(ec) - 1 && strncasecmp(data, ec, sizeof(ec) - 1) == 0) {
        const char *v = data + sizeof(ec) - 1;
        size_t vl = len - (sizeof(ec) - 1);
        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl >= sizeof(r->error_code))
            vl = sizeof(r->error_code) - 1;
        for (size_t i = 0; i < vl; i++) /* printable only: it ends up in messages */
            r->error_code[i] = (v[i] > ' ' && v[i] < 0x7f) ? v[i] : '?';
        r->error_code[vl] = '\0';
    } else if (len > sizeof(cr) - 1 && strncasecmp(data, cr, sizeof(cr) - 1) == 0) {
        char tmp[64];
        size_t vl = len - (sizeof(cr) - 1) < sizeof(tmp) - 1 ? len - (sizeof(cr) - 1) : sizeof(tmp) - 1;
        memcpy(tmp, data + sizeof(cr) - 1, vl);
        tmp[vl] = '\0';
        unsigned long long start;
        if (sscanf(tmp, " bytes %llu-", &start) == 1) {
            r->has_content_range = true;
            r->range_start = start;
        }
    }
    return len;
}

/* Where a response body goes: a bounded memory buffer (the API JSON) or a file. */
struct sink {
    CURL *curl;
    /* memory */
    char *buf;
    size_t len, cap, max;
    bool overflow;
    /* file */
    int fd;
    uint64_t offset;   /* bytes already in the file when this request started */
    uint64_t written;  /* bytes written by this request */
    uint64_t expected; /* the file's full size: more than this is refused */
    crypto_hash_sha256_state sha;
    bool body_started;
    bool restarted;    /* a 200 answered our Range: the file was truncated */
    int write_errno;
    /* progress */
    struct pull *pull;
    const char *file;
    double last_emit;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t mem_write_cb(char *data, size_t size, size_t n, void *userdata)
{
    struct sink *s = userdata;
    size_t len = size * n;
    if (len > s->max - s->len) {
        s->overflow = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (s->len + len + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 16384;
        while (cap < s->len + len + 1)
            cap *= 2;
        char *b = realloc(s->buf, cap);
        if (!b) {
            s->write_errno = ENOMEM;
            return 0;
        }
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    s->buf[s->len] = '\0';
    return len;
}

static size_t file_write_cb(char *data, size_t size, size_t n, void *userdata)
{
    struct sink *s = userdata;
    size_t len = size * n;
    if (!s->body_started) {
        s->body_started = true;
        long code = 0;
        curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &code);
        if (code != 200 && code != 206)
            s->fd = -1; /* an error page: discard it, the status says what went wrong */
        else if (code == 200 && s->offset > 0) {
            /* The server ignored our Range: start the file over. */
            if (ftruncate(s->fd, 0) < 0 || lseek(s->fd, 0, SEEK_SET) < 0) {
                s->write_errno = errno;
                return 0;
            }
            crypto_hash_sha256_init(&s->sha);
            s->offset = 0;
            s->restarted = true;
        }
    }
    if (s->fd < 0)
        return len;
    if (len > s->expected - s->offset - s->written) {
        s->write_errno = EFBIG; /* longer than the size the API listed */
        return 0;
    }
    for (size_t o = 0; o < len;) {
        ssize_t w = write(s->fd, data + o, len - o);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            s->write_errno = errno;
            return 0;
        }
        o += (size_t)w;
    }
    crypto_hash_sha256_update(&s->sha, (const unsigned char *)data, len);
    s->written += len;
    s->pull->downloaded += len;
    return len;
}

static int xferinfo_cb(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    struct sink *s = userdata;
    if (s->file) {
        double t = now_s();
        if (t - s->last_emit >= 0.1) {
            s->last_emit = t;
            emit(s->pull, HUB_EVENT_PROGRESS, s->file, s->offset + s->written, s->expected, NULL);
        }
    }
    return 0;
}

/* Curl errors worth another try: the network, not our side or the request. */
static bool curl_retryable(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return true;
    default:
        return false;
    }
}

static bool status_retryable(long code)
{
    return code >= 500 || code == 429 || code == 408;
}

/* One GET of url into sink (its write callback already chosen by the caller
 * through write_cb). range_from > 0 asks for the bytes from there on.
 * Returns the curl code; *ret_status is the final HTTP status. */
static CURLcode http_get(struct pull *p, const char *url, curl_write_callback write_cb, struct sink *sink,
                         uint64_t range_from, struct response *resp, long *ret_status)
{
    CURL *c = p->curl;
    curl_easy_reset(c);
    char range[48];
    memset(resp, 0, sizeof(*resp));
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, (long)HUB_MAX_REDIRECTS);
    /* Redirects may go to a CDN, never to file:// or other schemes. curl
     * drops a custom Authorization header when a redirect changes host
     * (CURLOPT_UNRESTRICTED_AUTH stays 0), so the token is not leaked to it. */
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, p->headers);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "inferd/" "hub_pull");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, HUB_CONNECT_TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, HUB_LOW_SPEED_BYTES);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, p->opt->stall_s > 0 ? p->opt->stall_s : 30L);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, resp);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, sink);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, xferinfo_cb);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, sink);
    if (range_from > 0) {
        snprintf(range, sizeof(range), "%" PRIu64 "-", range_from);
        curl_easy_setopt(c, CURLOPT_RANGE, range);
    }
    sink->curl = c;
    CURLcode rc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    *ret_status = code;
    return rc;
}

/* Sleeps before retry `attempt` (0-based) and reports why. */
static void backoff(struct pull *p, int attempt, const char *file, const char *why)
{
    double wait = p->opt->backoff_s * pow(2.0, attempt);
    if (wait > p->opt->backoff_max_s)
        wait = p->opt->backoff_max_s;
    char msg[320];
    snprintf(msg, sizeof(msg), "%s; retry %d of %d in %.1f s", why, attempt + 1, p->opt->retries, wait);
    emit(p, HUB_EVENT_RETRY, file, 0, 0, msg);
    struct timespec ts = {(time_t)wait, (long)((wait - floor(wait)) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* The message for a failed API call, by status (huggingface_hub's wording). */
static int api_error(struct pull *p, long code, const struct response *resp, const char *url, ifd_error *err)
{
    const char *id = p->ref->repo_id, *rev = p->ref->revision;
    if (code == 401)
        return ifd_error_set(err, -EACCES, "%s@%s: repository not found or needs a token (set HF_TOKEN) (%s)", id,
                             rev, url);
    if (code == 403)
        return ifd_error_set(err, -EACCES, "%s@%s: gated: accept the license on the Hub and set HF_TOKEN (%s)", id,
                             rev, url);
    if (code == 404 && strcmp(resp->error_code, "RevisionNotFound") == 0)
        return ifd_error_set(err, -ENOENT, "%s: revision '%s' not found (%s)", id, rev, url);
    if (code == 404)
        return ifd_error_set(err, -ENOENT, "%s: repository not found (%s)", id, url);
    return ifd_error_set(err, -EPROTO, "%s@%s: HTTP %ld from %s", id, rev, code, url);
}

/* ------------------------------------------------------------ the file list */

static struct sibling *find_sibling(struct pull *p, const char *name)
{
    for (size_t i = 0; i < p->n_sib; i++)
        if (strcmp(p->sib[i].name, name) == 0)
            return &p->sib[i];
    return NULL;
}

/* The revision info, validated by hub_info_parse(), into p->sib. */
static int parse_info(struct pull *p, const char *json, const char *url, ifd_error *err)
{
    struct hub_info info;
    int r = hub_info_parse(json, &info, err);
    if (r < 0) {
        ifd_error_prefix(err, "%s@%s, %s", p->ref->repo_id, p->ref->revision, url);
        return r;
    }
    memcpy(p->commit, info.commit, sizeof(p->commit));
    if (!(p->sib = calloc(info.n_files + 1, sizeof(*p->sib)))) {
        hub_info_finish(&info);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < info.n_files; i++) {
        struct sibling *d = &p->sib[i];
        d->name = info.files[i].name; /* ownership moves */
        info.files[i].name = NULL;
        memcpy(d->etag, info.files[i].etag, sizeof(d->etag));
        d->size = info.files[i].size;
        d->lfs = info.files[i].lfs;
    }
    p->n_sib = info.n_files;
    hub_info_finish(&info);
    return 0;
}

/* ------------------------------------------------------------ one file */

static char *blob_path(struct pull *p, const char *etag, const char *suffix)
{
    char *s = NULL;
    if (asprintf(&s, "%s/blobs/%s%s", p->repo_dir, etag, suffix) < 0)
        return NULL;
    return s;
}

/* Re-reads the first n bytes of fd into the hash state (a resumed download). */
static int hash_prefix(int fd, uint64_t n, crypto_hash_sha256_state *st, const char *path, ifd_error *err)
{
    unsigned char *buf = malloc(HUB_HASH_CHUNK);
    if (!buf)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    uint64_t off = 0;
    int r = 0;
    while (off < n) {
        size_t want = n - off < HUB_HASH_CHUNK ? (size_t)(n - off) : HUB_HASH_CHUNK;
        ssize_t got = pread(fd, buf, want, (off_t)off);
        if (got <= 0) {
            r = ifd_error_set(err, -EIO, "%s: read failed: %s", path, got < 0 ? strerror(errno) : "short file");
            break;
        }
        crypto_hash_sha256_update(st, buf, (size_t)got);
        off += (uint64_t)got;
    }
    free(buf);
    return r;
}

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Downloads one sibling into blobs/<etag> (called with its lock held and the
 * blob absent). Resumes from blobs/<etag>.incomplete; retries as configured. */
static int download_blob(struct pull *p, const struct sibling *s, const char *url, ifd_error *err)
{
    char *part = blob_path(p, s->etag, ".incomplete"), *blob = blob_path(p, s->etag, "");
    int fd = -1, r = 0;
    if (!part || !blob) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        r = ifd_error_set(err, -errno, "cannot create %s: %s", part, strerror(errno));
        goto out;
    }
    bool announced = false;
    for (int attempt = 0;; attempt++) {
        struct stat st;
        if (fstat(fd, &st) < 0) {
            r = ifd_error_set(err, -errno, "%s: %s", part, strerror(errno));
            goto out;
        }
        uint64_t have = (uint64_t)st.st_size;
        if (have > s->size) { /* not this file's prefix */
            if (ftruncate(fd, 0) < 0) {
                r = ifd_error_set(err, -errno, "%s: %s", part, strerror(errno));
                goto out;
            }
            have = 0;
        }
        struct sink sink = {.fd = fd, .offset = have, .expected = s->size, .pull = p, .file = s->name};
        crypto_hash_sha256_init(&sink.sha);
        if (s->lfs && (r = hash_prefix(fd, have, &sink.sha, part, err)) < 0)
            goto out;
        if (lseek(fd, (off_t)have, SEEK_SET) < 0) {
            r = ifd_error_set(err, -errno, "%s: %s", part, strerror(errno));
            goto out;
        }
        if (!announced) {
            emit(p, HUB_EVENT_START, s->name, have, s->size, NULL);
            announced = true;
        }
        long code = 0;
        struct response resp;
        CURLcode rc = CURLE_OK;
        if (have < s->size || s->size == 0)
            rc = http_get(p, url, file_write_cb, &sink, have, &resp, &code);
        else
            code = 206; /* everything is on disk already: only verify */
        char why[256] = "";
        if (rc == CURLE_WRITE_ERROR && sink.write_errno) {
            r = sink.write_errno == EFBIG
                    ? ifd_error_set(err, -EPROTO, "%s: %s sent more than its listed size %" PRIu64 " (%s)",
                                    p->ref->repo_id, s->name, s->size, url)
                    : ifd_error_set(err, -sink.write_errno, "writing %s: %s", part, strerror(sink.write_errno));
            goto out;
        }
        if (rc != CURLE_OK && !curl_retryable(rc)) {
            r = ifd_error_set(err, -EIO, "%s: downloading %s: %s (%s)", p->ref->repo_id, s->name,
                              curl_easy_strerror(rc), url);
            goto out;
        }
        if (rc == CURLE_OK && code == 416 && have > 0) {
            /* Our prefix does not fit the file the server has: start over. */
            if (ftruncate(fd, 0) < 0) {
                r = ifd_error_set(err, -errno, "%s: %s", part, strerror(errno));
                goto out;
            }
            snprintf(why, sizeof(why), "HTTP 416 for a resumed range, restarting");
        } else if (rc == CURLE_OK && code != 200 && code != 206) {
            if (!status_retryable(code)) {
                r = ifd_error_set(err, -EPROTO, "%s@%s: HTTP %ld for %s (%s)", p->ref->repo_id, p->ref->revision,
                                  code, s->name, url);
                goto out;
            }
            snprintf(why, sizeof(why), "HTTP %ld", code);
        } else if (rc == CURLE_OK && code == 206 && have > 0 && have < s->size &&
                   (!resp.has_content_range || resp.range_start != have)) {
            r = ifd_error_set(err, -EPROTO, "%s: %s: the server answered a range from %" PRIu64
                              " with another range (%s)", p->ref->repo_id, s->name, have, url);
            unlink(part);
            goto out;
        } else if (rc != CURLE_OK) {
            snprintf(why, sizeof(why), "%s", curl_easy_strerror(rc));
        } else if (sink.offset + sink.written != s->size) {
            snprintf(why, sizeof(why), "got %" PRIu64 " of %" PRIu64 " bytes", sink.offset + sink.written, s->size);
        } else {
            /* Complete: check it, then publish it. */
            if (s->lfs) {
                unsigned char dig[crypto_hash_sha256_BYTES];
                char got[65];
                crypto_hash_sha256_final(&sink.sha, dig);
                hex_encode(dig, sizeof(dig), got);
                if (strcmp(got, s->etag) != 0) {
                    unlink(part);
                    r = ifd_error_set(err, -EBADMSG, "sha256 mismatch in %s: expected %s, got %s (%s)", s->name,
                                      s->etag, got, url);
                    goto out;
                }
            }
            if (fsync(fd) < 0 || rename(part, blob) < 0) {
                r = ifd_error_set(err, -errno, "publishing %s: %s", blob, strerror(errno));
                goto out;
            }
            emit(p, HUB_EVENT_DONE, s->name, s->size, s->size, NULL);
            goto out;
        }
        if (attempt >= p->opt->retries) {
            r = ifd_error_set(err, -EIO, "%s: downloading %s failed after %d attempts: %s (%s)", p->ref->repo_id,
                              s->name, attempt + 1, why, url);
            goto out;
        }
        backoff(p, attempt, s->name, why);
    }
out:
    if (fd >= 0)
        close(fd);
    free(part);
    free(blob);
    return r;
}

/* Makes snapshots/<commit>/<name> point at blobs/<etag> (replacing whatever
 * was there: a re-pull repairs a broken link). */
static int link_snapshot(struct pull *p, const struct sibling *s, ifd_error *err)
{
    char *link = NULL, *tmp = NULL, *target = NULL;
    int r = 0;
    if (asprintf(&link, "%s/snapshots/%s/%s", p->repo_dir, p->commit, s->name) < 0 ||
        asprintf(&tmp, "%s.tmp-%d", link, (int)getpid()) < 0 || hf_cache_blob_link_target(s->name, s->etag, &target) < 0) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if ((r = mkdir_parent(link, err)) < 0)
        goto out;
    unlink(tmp);
    if (symlink(target, tmp) < 0 || rename(tmp, link) < 0) {
        r = ifd_error_set(err, -errno, "cannot create the symlink %s: %s", link, strerror(errno));
        unlink(tmp);
    }
out:
    free(link);
    free(tmp);
    free(target);
    return r;
}

/* Locks, downloads if absent, links. *ret_cached tells whether it was there. */
static int fetch_sibling(struct pull *p, struct sibling *s, bool *ret_cached, ifd_error *err)
{
    char *blob = blob_path(p, s->etag, ""), *lock = NULL, *url = NULL, *name_enc = url_escape(s->name, true);
    int lock_fd = -1, r = 0;
    if (s->fetched) {
        *ret_cached = s->was_cached;
        goto out;
    }
    if (!blob || !name_enc || asprintf(&lock, "%s/%s.lock", p->lock_dir, s->etag) < 0 ||
        asprintf(&url, "%s/%s/resolve/%s/%s", p->opt->endpoint, p->ref->repo_id, p->commit, name_enc) < 0) {
        lock = url = NULL;
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    /* Another pull (this or another revision, another process) may be writing
     * the same blob: one writer per blob, the others wait and then find it. */
    lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX) < 0) {
        r = ifd_error_set(err, -errno, "cannot lock %s: %s", lock, strerror(errno));
        goto out;
    }
    struct stat st;
    *ret_cached = stat(blob, &st) == 0 && (uint64_t)st.st_size == s->size;
    if (*ret_cached)
        emit(p, HUB_EVENT_CACHED, s->name, s->size, s->size, NULL);
    else if ((r = download_blob(p, s, url, err)) < 0)
        goto out;
    if ((r = link_snapshot(p, s, err)) >= 0) {
        s->fetched = true;
        s->was_cached = *ret_cached;
    }
out:
    if (lock_fd >= 0)
        close(lock_fd); /* releases the flock */
    free(blob);
    free(lock);
    free(url);
    free(name_enc);
    return r;
}

/* ------------------------------------------------------------ selection */

/* The shards an index file names (hub_index_shards() validates them), each
 * one the repository has, marked wanted. */
static int select_shards(struct pull *p, const char *index_path, ifd_error *err)
{
    char *text = NULL, **names = NULL;
    size_t n = 0;
    int r = file_read(index_path, HUB_INDEX_MAX_BYTES, 0, &text, NULL, err);
    if (r < 0)
        return r;
    r = hub_index_shards(text, &names, &n, err);
    free(text);
    if (r < 0) {
        ifd_error_prefix(err, "%s@%s", p->ref->repo_id, p->ref->revision);
        return r;
    }
    for (size_t i = 0; i < n && r >= 0; i++) {
        struct sibling *s = find_sibling(p, names[i]);
        if (s)
            s->wanted = true;
        else
            r = ifd_error_set(err, -EPROTO, "%s@%s: index names shard '%s' that the repository does not have",
                              p->ref->repo_id, p->ref->revision, names[i]);
    }
    hub_names_free(names, n);
    return r;
}

static int check_space(struct pull *p, ifd_error *err)
{
    uint64_t need = 0;
    for (size_t i = 0; i < p->n_sib; i++) {
        const struct sibling *s = &p->sib[i];
        if (!s->wanted)
            continue;
        char *blob = blob_path(p, s->etag, ""), *part = blob_path(p, s->etag, ".incomplete");
        struct stat st;
        if (!blob || !part) {
            free(blob);
            free(part);
            return ifd_error_set(err, -ENOMEM, "out of memory");
        }
        if (stat(blob, &st) != 0) {
            uint64_t have = stat(part, &st) == 0 && (uint64_t)st.st_size <= s->size ? (uint64_t)st.st_size : 0;
            need += s->size - have;
        }
        free(blob);
        free(part);
    }
    char *blobs = NULL;
    if (asprintf(&blobs, "%s/blobs", p->repo_dir) < 0)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    struct statvfs vfs;
    int r = 0;
    if (statvfs(blobs, &vfs) < 0) {
        r = ifd_error_set(err, -errno, "statvfs %s: %s", blobs, strerror(errno));
    } else {
        uint64_t avail = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
        if (need > avail)
            r = ifd_error_set(err, -ENOSPC,
                              "not enough space in %s for %s@%s: %.1f MB still needed, %.1f MB free", blobs,
                              p->ref->repo_id, p->ref->revision, (double)need / 1e6, (double)avail / 1e6);
    }
    free(blobs);
    return r;
}

/* ------------------------------------------------------------ the whole pull */

static int write_ref(struct pull *p, ifd_error *err)
{
    char *path = NULL, *tmp = NULL;
    int r = 0;
    if (asprintf(&path, "%s/refs/%s", p->repo_dir, p->ref->revision) < 0 ||
        asprintf(&tmp, "%s.tmp-%d", path, (int)getpid()) < 0) {
        free(path);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    if ((r = mkdir_parent(path, err)) < 0)
        goto out;
    FILE *f = fopen(tmp, "we");
    if (!f || fputs(p->commit, f) == EOF || fclose(f) != 0 || rename(tmp, path) < 0) {
        r = ifd_error_set(err, -errno, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
    }
out:
    free(path);
    free(tmp);
    return r;
}

static int pull_offline(struct pull *p, struct hub_pull_result *ret, ifd_error *err)
{
    char *dir = NULL;
    int r = hf_cache_resolve(p->root, p->ref, &dir, ret->commit, err);
    if (r < 0) {
        ifd_error_prefix(err, "HF_HUB_OFFLINE is set and");
        return r;
    }
    if ((r = hub_snapshot_check(dir, err)) < 0) {
        ifd_error_prefix(err, "HF_HUB_OFFLINE is set and the cached snapshot of %s@%s is incomplete",
                         p->ref->repo_id, p->ref->revision);
        free(dir);
        return r;
    }
    ret->snapshot = dir;
    return 0;
}

static int fetch_info(struct pull *p, ifd_error *err)
{
    char *rev = url_escape(p->ref->revision, false), *url = NULL;
    int r = 0;
    if (!rev || asprintf(&url, "%s/api/models/%s/revision/%s?blobs=true", p->opt->endpoint, p->ref->repo_id, rev) < 0) {
        free(rev);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    struct sink sink = {.max = HUB_API_MAX_BYTES, .pull = p};
    for (int attempt = 0;; attempt++) {
        struct response resp;
        long code = 0;
        sink.len = 0;
        CURLcode rc = http_get(p, url, mem_write_cb, &sink, 0, &resp, &code);
        char why[256];
        if (sink.overflow) {
            r = ifd_error_set(err, -EFBIG, "%s: the revision info is over %u bytes (%s)", p->ref->repo_id,
                              HUB_API_MAX_BYTES, url);
            break;
        }
        if (rc == CURLE_OK && code == 200) {
            r = parse_info(p, sink.buf ? sink.buf : "", url, err);
            break;
        }
        if (rc == CURLE_OK && !status_retryable(code)) {
            r = api_error(p, code, &resp, url, err);
            break;
        }
        if (rc != CURLE_OK && !curl_retryable(rc)) {
            r = ifd_error_set(err, -EIO, "%s@%s: %s (%s)", p->ref->repo_id, p->ref->revision, curl_easy_strerror(rc),
                              url);
            break;
        }
        if (rc != CURLE_OK)
            snprintf(why, sizeof(why), "%s", curl_easy_strerror(rc));
        else
            snprintf(why, sizeof(why), "HTTP %ld", code);
        if (attempt >= p->opt->retries) {
            r = ifd_error_set(err, -EIO, "%s@%s: the revision info failed after %d attempts: %s (%s)",
                              p->ref->repo_id, p->ref->revision, attempt + 1, why, url);
            break;
        }
        backoff(p, attempt, "revision info", why);
    }
    free(sink.buf);
    free(rev);
    free(url);
    return r;
}

static int pull_online(struct pull *p, struct hub_pull_result *ret, ifd_error *err)
{
    int r;
    char *blobs = NULL;
    if ((r = fetch_info(p, err)) < 0)
        return r;
    if (!find_sibling(p, "config.json"))
        return ifd_error_set(err, -ENOENT, "%s@%s: the repository has no config.json", p->ref->repo_id,
                             p->ref->revision);
    for (size_t i = 0; i < sizeof(extra_files) / sizeof(extra_files[0]); i++) {
        struct sibling *s = find_sibling(p, extra_files[i]);
        if (s)
            s->wanted = true;
    }
    if (asprintf(&blobs, "%s/blobs", p->repo_dir) < 0)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    r = mkdir_p(blobs, err);
    free(blobs);
    if (r < 0 || (r = mkdir_p(p->lock_dir, err)) < 0)
        return r;
    struct sibling *single = find_sibling(p, "model.safetensors");
    struct sibling *index = find_sibling(p, "model.safetensors.index.json");
    bool cached;
    if (single) {
        single->wanted = true;
    } else if (index) {
        /* The index decides which shards are needed: fetch it first. */
        index->wanted = true;
        if ((r = fetch_sibling(p, index, &cached, err)) < 0)
            return r;
        char *path = blob_path(p, index->etag, "");
        if (!path)
            return ifd_error_set(err, -ENOMEM, "out of memory");
        r = select_shards(p, path, err);
        free(path);
        if (r < 0)
            return r;
    } else {
        char others[256] = "";
        size_t o = 0;
        for (size_t i = 0; i < p->n_sib && o < sizeof(others) - 64; i++) {
            const char *n = p->sib[i].name, *dot = strrchr(n, '.');
            if (dot && (strcmp(dot, ".bin") == 0 || strcmp(dot, ".gguf") == 0 || strcmp(dot, ".pth") == 0 ||
                        strcmp(dot, ".safetensors") == 0))
                o += (size_t)snprintf(others + o, sizeof(others) - o, " %.60s", n);
        }
        return ifd_error_set(err, -ENOENT,
                             "%s@%s: no model.safetensors or model.safetensors.index.json; inferd loads safetensors "
                             "only (weight files here:%s)",
                             p->ref->repo_id, p->ref->revision, o ? others : " none");
    }
    if ((r = check_space(p, err)) < 0)
        return r;
    for (size_t i = 0; i < p->n_sib; i++) {
        if (!p->sib[i].wanted)
            continue;
        if ((r = fetch_sibling(p, &p->sib[i], &cached, err)) < 0)
            return r;
        ret->files++;
        ret->cached += cached;
    }
    if (!hf_revision_is_commit(p->ref->revision) && (r = write_ref(p, err)) < 0)
        return r;
    if (asprintf(&ret->snapshot, "%s/snapshots/%s", p->repo_dir, p->commit) < 0) {
        ret->snapshot = NULL;
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    snprintf(ret->commit, sizeof(ret->commit), "%s", p->commit);
    return 0;
}

int hub_pull(const struct hf_ref *ref, const struct hub_pull_options *opt, struct hub_pull_result *ret,
             ifd_error *err)
{
    struct pull p = {.ref = ref, .opt = opt};
    struct hub_pull_result res = {0};
    bool curl_inited = false;
    int r;
    if (opt->cache_dir) {
        if (!(p.root = strdup(opt->cache_dir)))
            return ifd_error_set(err, -ENOMEM, "out of memory");
    } else if ((r = hf_cache_root(&p.root, err)) < 0) {
        return r;
    }
    const char *slash = strchr(ref->repo_id, '/');
    if (hf_cache_repo_dir(p.root, ref->repo_id, &p.repo_dir) < 0 ||
        (slash ? asprintf(&p.lock_dir, "%s/.locks/models--%.*s--%s", p.root, (int)(slash - ref->repo_id),
                          ref->repo_id, slash + 1)
               : asprintf(&p.lock_dir, "%s/.locks/models--%s", p.root, ref->repo_id)) < 0) {
        p.lock_dir = NULL;
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if (opt->offline) {
        r = pull_offline(&p, &res, err);
        goto out;
    }
    if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        r = ifd_error_set(err, -ENOMEM, "cannot initialise libcurl or libsodium");
        goto out;
    }
    curl_inited = true;
    if (!(p.curl = curl_easy_init())) {
        r = ifd_error_set(err, -ENOMEM, "cannot initialise libcurl");
        goto out;
    }
    if (opt->token && *opt->token) {
        char *h = NULL;
        if (asprintf(&h, "Authorization: Bearer %s", opt->token) < 0) {
            r = ifd_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        p.headers = curl_slist_append(NULL, h);
        sodium_memzero(h, strlen(h));
        free(h);
        if (!p.headers) {
            r = ifd_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
    }
    r = pull_online(&p, &res, err);
out:
    if (r >= 0) {
        res.downloaded = p.downloaded;
        *ret = res;
    } else {
        hub_pull_result_finish(&res);
    }
    curl_slist_free_all(p.headers);
    if (p.curl)
        curl_easy_cleanup(p.curl);
    if (curl_inited)
        curl_global_cleanup(); /* curl counts init/cleanup pairs */
    for (size_t i = 0; i < p.n_sib; i++)
        free(p.sib[i].name);
    free(p.sib);
    free(p.root);
    free(p.repo_dir);
    free(p.lock_dir);
    return r;
}

void hub_pull_result_finish(struct hub_pull_result *res)
{
    if (!res)
        return;
    free(res->snapshot);
    res->snapshot = NULL;
}

/* ------------------------------------------------------------ completeness */

static int need_file(const char *dir, const char *name, ifd_error *err)
{
    char *path = NULL;
    if (asprintf(&path, "%s/%s", dir, name) < 0)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    int r = path_exists(path) ? 0 : ifd_error_set(err, -ENOENT, "%s is missing", path);
    free(path);
    return r;
}

int hub_snapshot_check(const char *dir, ifd_error *err)
{
    int r;
    if ((r = need_file(dir, "config.json", err)) < 0)
        return r;
    if (need_file(dir, "model.safetensors", NULL) == 0)
        return 0;
    char *index = NULL, *text = NULL, **names = NULL;
    size_t n = 0;
    if (asprintf(&index, "%s/model.safetensors.index.json", dir) < 0)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    if (!path_exists(index)) {
        r = ifd_error_set(err, -ENOENT, "%s has neither model.safetensors nor model.safetensors.index.json", dir);
        free(index);
        return r;
    }
    r = file_read(index, HUB_INDEX_MAX_BYTES, 0, &text, NULL, err);
    if (r >= 0 && (r = hub_index_shards(text, &names, &n, err)) < 0)
        ifd_error_prefix(err, "%s", index);
    free(index);
    free(text);
    for (size_t i = 0; i < n && r >= 0; i++)
        r = need_file(dir, names[i], err);
    hub_names_free(names, n);
    return r;
}
