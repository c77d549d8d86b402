/* hf_cache.c - the Hugging Face cache layout and model references (see hf_cache.h). */
#include "hub/hf_cache.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* One part of a repo id (the ORG or the NAME), n bytes at s. Returns NULL when
 * valid, else the rule it breaks. */
static const char *repo_part_problem(const char *s, size_t n)
{
    if (n == 0)
        return "empty name part";
    if (n > HF_REPO_PART_MAX)
        return "name part longer than 96 characters";
    if (!is_alnum(s[0]))
        return "a name part must start with a letter or digit";
    for (size_t i = 0; i < n; i++) {
        if (!is_alnum(s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return "only letters, digits, '.', '_' and '-' are allowed";
        /* ".." could climb out of the cache; "--" is the cache's own separator
         * (models--ORG--NAME), so it would make the mapping ambiguous. */
        if (i + 1 < n && ((s[i] == '.' && s[i + 1] == '.') || (s[i] == '-' && s[i + 1] == '-')))
            return "'..' and '--' are not allowed";
    }
    return NULL;
}

static const char *revision_problem(const char *s)
{
    size_t n = strlen(s);
    if (n == 0)
        return "empty revision after '@'";
    if (n > HF_REVISION_MAX)
        return "revision longer than 255 characters";
    if (s[0] == '/' || s[n - 1] == '/')
        return "a revision cannot start or end with '/'";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == 0x7f || c == '\\' || c == '@' || c == ':' || c == '?' || c == '*' || c == '[' ||
            c == '~' || c == '^')
            return "control, space and the characters \\ @ : ? * [ ~ ^ are not allowed";
        if (c == '/' && s[i + 1] == '/')
            return "empty path component ('//')";
        if (c == '.' && s[i + 1] == '.')
            return "'..' is not allowed";
        /* A component "." would name the refs directory itself. */
        if (c == '.' && (i == 0 || s[i - 1] == '/') && (s[i + 1] == '/' || s[i + 1] == '\0'))
            return "'.' component is not allowed";
    }
    return NULL;
}

int hf_ref_parse(const char *text, struct hf_ref *ret, ifd_error *err)
{
    if (!text || !*text)
        return ifd_error_set(err, -EINVAL, "empty model reference (expected ORG/NAME[@REVISION])");
    size_t text_len = strnlen(text, 2 * HF_REPO_PART_MAX + HF_REVISION_MAX + 3);
    if (text[text_len])
        return ifd_error_set(err, -EINVAL, "model reference '%.64s...' is too long", text);
    const char *at = strchr(text, '@');
    size_t id_len = at ? (size_t)(at - text) : text_len;
    const char *slash = memchr(text, '/', id_len);
    const char *problem;
    if (slash) {
        if (memchr(slash + 1, '/', id_len - (size_t)(slash + 1 - text)))
            return ifd_error_set(err, -EINVAL, "model reference '%s': more than one '/' in the repo id (ORG/NAME)",
                                 text);
        if ((problem = repo_part_problem(text, (size_t)(slash - text))) ||
            (problem = repo_part_problem(slash + 1, id_len - (size_t)(slash + 1 - text))))
            return ifd_error_set(err, -EINVAL, "model reference '%s': %s", text, problem);
    } else if ((problem = repo_part_problem(text, id_len))) {
        return ifd_error_set(err, -EINVAL, "model reference '%s': %s", text, problem);
    }
    const char *rev = at ? at + 1 : "main";
    if ((problem = revision_problem(rev)))
        return ifd_error_set(err, -EINVAL, "model reference '%s': %s", text, problem);
    char *id = strndup(text, id_len);
    char *r = strdup(rev);
    if (!id || !r) {
        free(id);
        free(r);
        return ifd_error_set(err, -ENOMEM, "out of memory");
    }
    ret->repo_id = id;
    ret->revision = r;
    return 0;
}

void hf_ref_finish(struct hf_ref *ref)
{
    if (!ref)
        return;
    free(ref->repo_id);
    free(ref->revision);
    ref->repo_id = ref->revision = NULL;
}

bool hf_revision_is_commit(const char *rev)
{
    for (int i = 0; i < HF_COMMIT_HEX_LEN; i++)
        if (!is_hex(rev[i]))
            return false;
    return rev[HF_COMMIT_HEX_LEN] == '\0';
}

bool hf_commit_id_valid(const char *s)
{
    size_t n = 0;
    for (; s[n] && n <= HF_COMMIT_ID_MAX; n++)
        if (!is_alnum(s[n]))
            return false;
    return n >= 1 && n <= HF_COMMIT_ID_MAX;
}

int hf_filename_check(const char *name, ifd_error *err)
{
    size_t n = strnlen(name, HF_FILENAME_MAX + 1);
    if (n == 0)
        return ifd_error_set(err, -EINVAL, "empty file name");
    if (n > HF_FILENAME_MAX)
        return ifd_error_set(err, -EINVAL, "file name '%.64s...' longer than %d bytes", name, HF_FILENAME_MAX);
    if (name[0] == '/')
        return ifd_error_set(err, -EINVAL, "file name '%s' is absolute", name);
    const char *p = name;
    while (*p) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0)
            return ifd_error_set(err, -EINVAL, "file name '%s' has an empty component", name);
        if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return ifd_error_set(err, -EINVAL, "file name '%s' has a '.' or '..' component", name);
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f || p[i] == '\\')
                return ifd_error_set(err, -EINVAL, "file name '%s' has a control character or backslash", name);
        p += len;
        if (*p == '/') {
            p++;
            if (!*p)
                return ifd_error_set(err, -EINVAL, "file name '%s' ends with '/'", name);
        }
    }
    return 0;
}

int hf_cache_root(char **ret, ifd_error *err)
{
    const char *env;
    char *root = NULL;
    int n = -1;
    if ((env = getenv("HF_HUB_CACHE")) && *env)
        n = asprintf(&root, "%s", env);
    else if ((env = getenv("HF_HOME")) && *env)
        n = asprintf(&root, "%s/hub", env);
    else if ((env = getenv("HOME")) && *env)
        n = asprintf(&root, "%s/.cache/huggingface/hub", env);
    else
        return ifd_error_set(err, -ENOENT, "no Hugging Face cache: none of HF_HUB_CACHE, HF_HOME, HOME is set");
    if (n < 0)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    *ret = root;
    return 0;
}

int hf_cache_repo_dir(const char *root, const char *repo_id, char **ret)
{
    const char *slash = strchr(repo_id, '/');
    char *p = NULL;
    int n = slash ? asprintf(&p, "%s/models--%.*s--%s", root, (int)(slash - repo_id), repo_id, slash + 1)
                  : asprintf(&p, "%s/models--%s", root, repo_id);
    if (n < 0)
        return -ENOMEM;
    *ret = p;
    return 0;
}

int hf_cache_repo_id_from_dir(const char *dir_name, char **ret)
{
    static const char prefix[] = "models--";
    if (strncmp(dir_name, prefix, sizeof(prefix) - 1) != 0)
        return -EINVAL;
    const char *rest = dir_name + sizeof(prefix) - 1;
    const char *sep = strstr(rest, "--");
    char *id = NULL;
    int n = sep ? asprintf(&id, "%.*s/%s", (int)(sep - rest), rest, sep + 2) : asprintf(&id, "%s", rest);
    if (n < 0)
        return -ENOMEM;
    /* Only what hf_ref_parse() accepts, so that the id can be used again. */
    struct hf_ref ref = {0};
    if (hf_ref_parse(id, &ref, NULL) < 0) {
        free(id);
        return -EINVAL;
    }
    hf_ref_finish(&ref);
    *ret = id;
    return 0;
}

int hf_cache_blob_link_target(const char *filename, const char *etag, char **ret)
{
    size_t depth = 0;
    for (const char *p = filename; *p; p++)
        depth += *p == '/';
    size_t len = (depth + 2) * 3 + strlen("blobs/") + strlen(etag) + 1;
    char *t = malloc(len);
    if (!t)
        return -ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < depth + 2; i++, o += 3)
        memcpy(t + o, "../", 3);
    snprintf(t + o, len - o, "blobs/%s", etag);
    *ret = t;
    return 0;
}

int hf_cache_read_ref(const char *repo_dir, const char *revision, char *ret, ifd_error *err)
{
    char *path = NULL;
    if (asprintf(&path, "%s/refs/%s", repo_dir, revision) < 0)
        return ifd_error_set(err, -ENOMEM, "out of memory");
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        int r = ifd_error_set(err, -e, "%s: %s", path, strerror(e));
        free(path);
        return r;
    }
    /* A ref holds a commit id, perhaps a newline: read a little more to see junk. */
    char buf[HF_COMMIT_ID_MAX + 8];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    if (!hf_commit_id_valid(buf)) {
        int r = ifd_error_set(err, -EINVAL, "%s: not a commit sha", path);
        free(path);
        return r;
    }
    free(path);
    memcpy(ret, buf, strlen(buf) + 1);
    return 0;
}

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int hf_cache_resolve(const char *root, const struct hf_ref *ref, char **ret_dir, char *ret_commit,
                     ifd_error *err)
{
    char *own_root = NULL, *repo = NULL, *snap = NULL;
    int r;
    if (!root) {
        if ((r = hf_cache_root(&own_root, err)) < 0)
            return r;
        root = own_root;
    }
    if ((r = hf_cache_repo_dir(root, ref->repo_id, &repo)) < 0) {
        r = ifd_error_set(err, r, "out of memory");
        goto out;
    }
    char commit[HF_COMMIT_ID_MAX + 1];
    if (hf_revision_is_commit(ref->revision)) {
        /* Snapshot directories are named by the lowercase sha the Hub sends. */
        for (int i = 0; i <= HF_COMMIT_HEX_LEN; i++)
            commit[i] = (char)tolower((unsigned char)ref->revision[i]);
    } else if ((r = hf_cache_read_ref(repo, ref->revision, commit, err)) < 0) {
        if (r == -ENOENT)
            r = ifd_error_set(err, -ENOENT,
                              "model '%s' revision '%s' is not in the Hugging Face cache (looked for %s/refs/%s "
                              "under %s); run 'inferctl model pull %s@%s'",
                              ref->repo_id, ref->revision, repo, ref->revision, root, ref->repo_id, ref->revision);
        goto out;
    }
    if (asprintf(&snap, "%s/snapshots/%s", repo, commit) < 0) {
        snap = NULL;
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if (!is_dir(snap)) {
        r = ifd_error_set(err, -ENOENT,
                          "model '%s' revision '%s': snapshot directory %s is missing; run 'inferctl model pull "
                          "%s@%s'",
                          ref->repo_id, ref->revision, snap, ref->repo_id, ref->revision);
        goto out;
    }
    *ret_dir = snap;
    snap = NULL;
    if (ret_commit)
        memcpy(ret_commit, commit, strlen(commit) + 1);
    r = 0;
out:
    free(own_root);
    free(repo);
    free(snap);
    return r;
}
