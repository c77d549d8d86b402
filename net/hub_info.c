/* hub_info.c - validating what a Hub server says about a revision (see hub_info.h). */
#include "hub_info.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return s[n] == '\0';
}

static bool json_u64(const cJSON *v, uint64_t *ret)
{
    /* Sizes travel as JSON numbers (doubles): whole, non-negative, exact. */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > 9007199254740992.0 ||
        v->valuedouble != floor(v->valuedouble))
        return false;
    *ret = (uint64_t)v->valuedouble;
    return true;
}

static int parse_file(const cJSON *s, struct hub_file *d, ifd_error *err)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(s, "rfilename");
    if (!cJSON_IsString(name))
        return ifd_error_set(err, -EPROTO, "unsafe file list: a sibling without rfilename");
    if (hf_filename_check(name->valuestring, err) < 0) {
        ifd_error_prefix(err, "unsafe file list");
        return -EPROTO;
    }
    const cJSON *lfs = cJSON_GetObjectItemCaseSensitive(s, "lfs");
    const cJSON *h;
    bool ok;
    d->lfs = cJSON_IsObject(lfs);
    if (d->lfs) {
        h = cJSON_GetObjectItemCaseSensitive(lfs, "sha256");
        ok = cJSON_IsString(h) && lower_hex(h->valuestring, 64) &&
             json_u64(cJSON_GetObjectItemCaseSensitive(lfs, "size"), &d->size);
    } else {
        h = cJSON_GetObjectItemCaseSensitive(s, "blobId");
        ok = cJSON_IsString(h) && lower_hex(h->valuestring, 40) &&
             json_u64(cJSON_GetObjectItemCaseSensitive(s, "size"), &d->size);
    }
    /* The etag becomes a file name in blobs/: only lowercase hex passes. */
    if (!ok)
        return ifd_error_set(err, -EPROTO, "file '%s' has no valid size and %s", name->valuestring,
                             d->lfs ? "lfs.sha256" : "blobId");
    snprintf(d->etag, sizeof(d->etag), "%s", h->valuestring);
    if (!(d->name = strdup(name->valuestring)))
        return ifd_error_set(err, -ENOMEM, "out of memory");
    return 0;
}

int hub_info_parse(const char *json, struct hub_info *ret, ifd_error *err)
{
    struct hub_info info;
    memset(&info, 0, sizeof(info));
    cJSON *root = cJSON_Parse(json);
    int r = 0;
    if (!root)
        return ifd_error_set(err, -EPROTO, "the revision info is not JSON");
    const cJSON *sha = cJSON_GetObjectItemCaseSensitive(root, "sha");
    const cJSON *sibs = cJSON_GetObjectItemCaseSensitive(root, "siblings");
    if (!cJSON_IsString(sha) || !lower_hex(sha->valuestring, HF_COMMIT_HEX_LEN)) {
        r = ifd_error_set(err, -EPROTO, "the revision info has no commit sha");
        goto out;
    }
    memcpy(info.commit, sha->valuestring, sizeof(info.commit));
    int n = cJSON_GetArraySize(sibs);
    if (!cJSON_IsArray(sibs) || n > HUB_MAX_SIBLINGS) {
        r = ifd_error_set(err, -EPROTO, "the revision info has no siblings list, or over %d files",
                          HUB_MAX_SIBLINGS);
        goto out;
    }
    if (!(info.files = calloc((size_t)n + 1, sizeof(*info.files)))) {
        r = ifd_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    const cJSON *s;
    cJSON_ArrayForEach(s, sibs)
    {
        if ((r = parse_file(s, &info.files[info.n_files], err)) < 0)
            goto out;
        info.n_files++;
    }
out:
    cJSON_Delete(root);
    if (r < 0)
        hub_info_finish(&info);
    else
        *ret = info;
    return r;
}

void hub_info_finish(struct hub_info *info)
{
    if (!info)
        return;
    for (size_t i = 0; i < info->n_files; i++)
        free(info->files[i].name);
    free(info->files);
    info->files = NULL;
    info->n_files = 0;
}

void hub_names_free(char **names, size_t n)
{
    for (size_t i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
}

static bool is_plain_shard(const char *name)
{
    static const char ext[] = ".safetensors";
    size_t n = strlen(name);
    return n > sizeof(ext) - 1 && strcmp(name + n - (sizeof(ext) - 1), ext) == 0 && !strchr(name, '/') &&
           hf_filename_check(name, NULL) == 0;
}

int hub_index_shards(const char *json, char ***ret_names, size_t *ret_n, ifd_error *err)
{
    cJSON *root = cJSON_Parse(json);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    char **names = NULL;
    size_t n = 0;
    int r = 0;
    if (!cJSON_IsObject(map)) {
        r = ifd_error_set(err, -EPROTO, "model.safetensors.index.json has no weight_map object");
        goto out;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, map)
    {
        const char *name = cJSON_IsString(e) ? e->valuestring : "";
        /* A plain file beside the index: no directories, no escaping. */
        if (!is_plain_shard(name)) {
            r = ifd_error_set(err, -EPROTO, "index maps '%.200s' to an invalid shard name '%.200s'",
                              e->string ? e->string : "?", name);
            goto out;
        }
        bool seen = false;
        /* Linear: shards are few (HUB_MAX_SHARDS bounds the worst case). */
        for (size_t i = 0; i < n && !seen; i++)
            seen = strcmp(names[i], name) == 0;
        if (seen)
            continue;
        if (n == HUB_MAX_SHARDS) {
            r = ifd_error_set(err, -EPROTO, "index names over %d shards", HUB_MAX_SHARDS);
            goto out;
        }
        char **grown = realloc(names, (n + 1) * sizeof(*names));
        if (!grown || !(grown[n] = strdup(name))) {
            names = grown ? grown : names;
            r = ifd_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        names = grown;
        n++;
    }
    if (n == 0)
        r = ifd_error_set(err, -EPROTO, "model.safetensors.index.json names no shards");
out:
    cJSON_Delete(root);
    if (r < 0) {
        hub_names_free(names, n);
        return r;
    }
    *ret_names = names;
    *ret_n = n;
    return 0;
}
