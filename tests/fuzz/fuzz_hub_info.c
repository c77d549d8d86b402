/* fuzz_hub_info.c - hub_info_parse() and hub_index_shards() (net/hub_info.c)
 * on arbitrary bytes: what a Hub server, or anything posing as one, sends.
 *
 * A refusal must carry a message and leave nothing allocated (ASan and LSan
 * see the rest). An acceptance must only hold what is safe to turn into
 * paths: every file name passes hf_filename_check(), every etag and the
 * commit are lowercase hex of the right length, shard names are plain
 * *.safetensors names, distinct, and within the bounds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "hub_info.h"

static void check_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        abort();
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Both parsers take NUL-terminated text, as the pull reads it. */
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    struct hub_info info;
    ifd_error err = {{0}};
    if (hub_info_parse(text, &info, &err) < 0) {
        if (!err.msg[0])
            abort();
    } else {
        check_hex(info.commit, HF_COMMIT_HEX_LEN);
        if (info.n_files > HUB_MAX_SIBLINGS)
            abort();
        for (size_t i = 0; i < info.n_files; i++) {
            const struct hub_file *f = &info.files[i];
            if (hf_filename_check(f->name, NULL) < 0 || f->size > (1ull << 53))
                abort();
            check_hex(f->etag, f->lfs ? 64 : 40);
        }
        hub_info_finish(&info);
    }

    char **names = NULL;
    size_t n = 0;
    err.msg[0] = '\0';
    if (hub_index_shards(text, &names, &n, &err) < 0) {
        if (!err.msg[0])
            abort();
    } else {
        if (n == 0 || n > HUB_MAX_SHARDS)
            abort();
        for (size_t i = 0; i < n; i++) {
            size_t len = strlen(names[i]);
            if (strchr(names[i], '/') || hf_filename_check(names[i], NULL) < 0 || len <= 12 ||
                strcmp(names[i] + len - 12, ".safetensors") != 0)
                abort();
            for (size_t k = 0; k < i; k++)
                if (strcmp(names[i], names[k]) == 0)
                    abort();
        }
        hub_names_free(names, n);
    }
    free(text);
    return 0;
}

/* Seeds: a revision info as the Hub answers it, and the sharded test model's
 * real index from $INFERD_SHARED. */
void fuzz_seeds(fuzz_seed_fn add, void *ctx)
{
    static const char info[] =
        "{\"_id\":\"x\",\"id\":\"org/name\",\"sha\":\"0123456789abcdef0123456789abcdef01234567\","
        "\"siblings\":[{\"rfilename\":\"config.json\",\"blobId\":\"89abcdef0123456789abcdef0123456789abcdef\","
        "\"size\":649},{\"rfilename\":\"model-00001-of-00002.safetensors\","
        "\"blobId\":\"0123456789abcdef0123456789abcdef01234567\",\"size\":836848,\"lfs\":{\"sha256\":"
        "\"e6faecd4e62b71bd264464f871b8243ec1d4a350cccef9fa42cc130aef885647\",\"size\":836848,"
        "\"pointerSize\":134}},{\"rfilename\":\"sub/dir/notes.txt\","
        "\"blobId\":\"fedcba9876543210fedcba9876543210fedcba98\",\"size\":0}]}";
    add(ctx, "revision-info", info, sizeof(info) - 1);
    static const char index[] = "{\"metadata\":{\"total_size\":10},\"weight_map\":{\"a.weight\":"
                                "\"model-00001-of-00002.safetensors\",\"b.weight\":\"model-00002-of-00002.safetensors\","
                                "\"c.weight\":\"model-00001-of-00002.safetensors\"}}";
    add(ctx, "index", index, sizeof(index) - 1);
    fuzz_seed_shared(add, ctx, "shared-index", "models/tinystories-656k-bf16-sharded/model.safetensors.index.json",
                     1u << 20);
}
