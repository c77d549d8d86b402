/* test_hf_cache.c - core/hub/hf_cache: model references accepted and refused
 * (with the reason in the message), file names from the server, the cache
 * root from the environment, repo directory names both ways, snapshot link
 * targets, refs and resolution. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hub/hf_cache.h"

#define COMMIT "0123456789abcdef0123456789abcdef01234567"

static void expect_ref(const char *text, const char *id, const char *rev)
{
    struct hf_ref ref = {0};
    ifd_error err = {{0}};
    cr_assert_eq(hf_ref_parse(text, &ref, &err), 0, "%s: %s", text, err.msg);
    cr_expect_str_eq(ref.repo_id, id, "%s", text);
    cr_expect_str_eq(ref.revision, rev, "%s", text);
    hf_ref_finish(&ref);
}

static void expect_bad_ref(const char *text, const char *why)
{
    struct hf_ref ref = {0};
    ifd_error err = {{0}};
    cr_assert_eq(hf_ref_parse(text, &ref, &err), -EINVAL, "'%s' was accepted", text);
    cr_expect(strstr(err.msg, why), "'%s': message '%s' lacks '%s'", text, err.msg, why);
    cr_expect_null(ref.repo_id);
}

Test(hf_ref, accepts)
{
    expect_ref("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "main");
    expect_ref("gpt2", "gpt2", "main");
    expect_ref("org/name@v1.0", "org/name", "v1.0");
    expect_ref("org/name@refs/pr/1", "org/name", "refs/pr/1");
    expect_ref("org/name@" COMMIT, "org/name", COMMIT);
    expect_ref("a_b/c.d-e", "a_b/c.d-e", "main");
}

Test(hf_ref, refuses)
{
    expect_bad_ref("", "empty");
    expect_bad_ref("org/../x", "more than one '/'");
    expect_bad_ref("../x", "must start with a letter or digit");
    expect_bad_ref("org/a..b", "'..'");
    expect_bad_ref("org/a--b", "'--'");
    expect_bad_ref("org/name/extra", "more than one '/'");
    expect_bad_ref("/abs", "empty name part");
    expect_bad_ref("org/", "empty name part");
    expect_bad_ref("org/na me", "only letters");
    expect_bad_ref("org/-x", "must start");
    expect_bad_ref("org/name@", "empty revision");
    expect_bad_ref("org/name@../../etc", "'..'");
    expect_bad_ref("org/name@/abs", "start or end with '/'");
    expect_bad_ref("org/name@a//b", "'//'");
    expect_bad_ref("org/name@a/./b", "'.' component");
    expect_bad_ref("org/name@a b", "not allowed");
    expect_bad_ref("org/name@x@y", "not allowed");
    char long_part[HF_REPO_PART_MAX + 10];
    memset(long_part, 'a', sizeof(long_part) - 1);
    long_part[sizeof(long_part) - 1] = '\0';
    char text[256];
    snprintf(text, sizeof(text), "org/%s", long_part);
    expect_bad_ref(text, "longer than 96");
    char long_rev[HF_REVISION_MAX + 20];
    memset(long_rev, 'r', sizeof(long_rev) - 1);
    long_rev[sizeof(long_rev) - 1] = '\0';
    char text2[600];
    snprintf(text2, sizeof(text2), "org/name@%s", long_rev);
    expect_bad_ref(text2, "longer than 255");
}

Test(hf_ref, commit)
{
    cr_expect(hf_revision_is_commit(COMMIT));
    cr_expect(hf_revision_is_commit("0123456789ABCDEF0123456789abcdef01234567"));
    cr_expect_not(hf_revision_is_commit("main"));
    cr_expect_not(hf_revision_is_commit(COMMIT "0"));
    cr_expect_not(hf_revision_is_commit("0123456789abcdef0123456789abcdef0123456g"));
    cr_expect(hf_commit_id_valid("0123abcd"));
    cr_expect(hf_commit_id_valid(COMMIT));
    cr_expect_not(hf_commit_id_valid(""));
    cr_expect_not(hf_commit_id_valid("../x"));
    cr_expect_not(hf_commit_id_valid("a/b"));
    cr_expect_not(hf_commit_id_valid(COMMIT COMMIT));
}

Test(hf_filename, check)
{
    const char *good[] = {"config.json", "model-00001-of-00002.safetensors", "sub/dir/file.txt", ".gitattributes"};
    const char *bad[] = {"", "/etc/passwd", "../x", "a/../b", "a/./b", "a//b", "a/", ".", "..", "a\\b", "a\nb"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        cr_expect_eq(hf_filename_check(good[i], NULL), 0, "%s", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ifd_error err = {{0}};
        cr_expect_eq(hf_filename_check(bad[i], &err), -EINVAL, "'%s' accepted", bad[i]);
        cr_expect(err.msg[0], "a message for '%s'", bad[i]);
    }
    char *huge = malloc(HF_FILENAME_MAX + 2);
    memset(huge, 'x', HF_FILENAME_MAX + 1);
    huge[HF_FILENAME_MAX + 1] = '\0';
    cr_expect_eq(hf_filename_check(huge, NULL), -EINVAL);
    free(huge);
}

Test(hf_cache, root_from_environment)
{
    char *root = NULL;
    setenv("HF_HUB_CACHE", "/x/hub-cache", 1);
    setenv("HF_HOME", "/y", 1);
    setenv("HOME", "/z", 1);
    cr_assert_eq(hf_cache_root(&root, NULL), 0);
    cr_expect_str_eq(root, "/x/hub-cache");
    free(root);
    unsetenv("HF_HUB_CACHE");
    cr_assert_eq(hf_cache_root(&root, NULL), 0);
    cr_expect_str_eq(root, "/y/hub");
    free(root);
    unsetenv("HF_HOME");
    cr_assert_eq(hf_cache_root(&root, NULL), 0);
    cr_expect_str_eq(root, "/z/.cache/huggingface/hub");
    free(root);
    unsetenv("HOME");
    ifd_error err = {{0}};
    cr_expect_eq(hf_cache_root(&root, &err), -ENOENT);
    cr_expect(strstr(err.msg, "HF_HOME"), "%s", err.msg);
}

Test(hf_cache, repo_dirs_and_links)
{
    char *s = NULL;
    cr_assert_eq(hf_cache_repo_dir("/c", "org/name", &s), 0);
    cr_expect_str_eq(s, "/c/models--org--name");
    free(s);
    cr_assert_eq(hf_cache_repo_dir("/c", "gpt2", &s), 0);
    cr_expect_str_eq(s, "/c/models--gpt2");
    free(s);
    cr_assert_eq(hf_cache_repo_id_from_dir("models--org--name.v2", &s), 0);
    cr_expect_str_eq(s, "org/name.v2");
    free(s);
    cr_assert_eq(hf_cache_repo_id_from_dir("models--gpt2", &s), 0);
    cr_expect_str_eq(s, "gpt2");
    free(s);
    cr_expect_eq(hf_cache_repo_id_from_dir("datasets--org--name", &s), -EINVAL);
    cr_expect_eq(hf_cache_repo_id_from_dir("models--org--..", &s), -EINVAL);
    cr_expect_eq(hf_cache_repo_id_from_dir(".locks", &s), -EINVAL);
    cr_assert_eq(hf_cache_blob_link_target("config.json", "abc", &s), 0);
    cr_expect_str_eq(s, "../../blobs/abc");
    free(s);
    cr_assert_eq(hf_cache_blob_link_target("a/b/c.json", "abc", &s), 0);
    cr_expect_str_eq(s, "../../../../blobs/abc");
    free(s);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

Test(hf_cache, resolve)
{
    char root[] = "/tmp/inferd-hfcache-XXXXXX";
    cr_assert_not_null(mkdtemp(root));
    char p[512];
    snprintf(p, sizeof(p), "%s/models--org--name", root);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/models--org--name/refs", root);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/models--org--name/snapshots", root);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/models--org--name/snapshots/" COMMIT, root);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/models--org--name/refs/main", root);
    write_file(p, COMMIT "\n");
    snprintf(p, sizeof(p), "%s/models--org--name/refs/bad", root);
    write_file(p, "../../../etc");

    struct hf_ref ref = {0};
    char *dir = NULL, commit[HF_COMMIT_ID_MAX + 1], want[600];
    ifd_error err = {{0}};
    snprintf(want, sizeof(want), "%s/models--org--name/snapshots/" COMMIT, root);

    cr_assert_eq(hf_ref_parse("org/name", &ref, NULL), 0);
    cr_assert_eq(hf_cache_resolve(root, &ref, &dir, commit, &err), 0, "%s", err.msg);
    cr_expect_str_eq(dir, want);
    cr_expect_str_eq(commit, COMMIT);
    free(dir);
    hf_ref_finish(&ref);

    cr_assert_eq(hf_ref_parse("org/name@" COMMIT, &ref, NULL), 0);
    cr_assert_eq(hf_cache_resolve(root, &ref, &dir, NULL, &err), 0, "%s", err.msg);
    cr_expect_str_eq(dir, want);
    free(dir);
    hf_ref_finish(&ref);
    cr_assert_eq(hf_ref_parse("org/name@0123456789ABCDEF0123456789abcdef01234567", &ref, NULL), 0);
    cr_assert_eq(hf_cache_resolve(root, &ref, &dir, NULL, &err), 0, "an uppercase sha: %s", err.msg);
    cr_expect_str_eq(dir, want);
    free(dir);
    hf_ref_finish(&ref);

    /* A ref whose content is not a commit is refused, not followed. */
    cr_assert_eq(hf_ref_parse("org/name@bad", &ref, NULL), 0);
    cr_expect_eq(hf_cache_resolve(root, &ref, &dir, NULL, &err), -EINVAL);
    cr_expect(strstr(err.msg, "refs/bad: not a commit sha"), "%s", err.msg);
    hf_ref_finish(&ref);

    /* Missing: the message says what, where, and how to get it. */
    cr_assert_eq(hf_ref_parse("org/other@v2", &ref, NULL), 0);
    cr_expect_eq(hf_cache_resolve(root, &ref, &dir, NULL, &err), -ENOENT);
    cr_expect(strstr(err.msg, "models--org--other/refs/v2"), "%s", err.msg);
    cr_expect(strstr(err.msg, "inferctl model pull org/other@v2"), "%s", err.msg);
    hf_ref_finish(&ref);

    /* A short commit id, as hand-made caches hold. */
    snprintf(p, sizeof(p), "%s/models--org--name/snapshots/0123abcd", root);
    cr_assert_eq(mkdir(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/models--org--name/refs/short", root);
    write_file(p, "0123abcd\n");
    cr_assert_eq(hf_ref_parse("org/name@short", &ref, NULL), 0);
    cr_assert_eq(hf_cache_resolve(root, &ref, &dir, commit, &err), 0, "%s", err.msg);
    cr_expect_str_eq(commit, "0123abcd");
    cr_expect(strstr(dir, "/snapshots/0123abcd"), "%s", dir);
    free(dir);
    hf_ref_finish(&ref);

    /* A ref to a snapshot that is gone. */
    snprintf(p, sizeof(p), "%s/models--org--name/refs/old", root);
    write_file(p, "1111111111111111111111111111111111111111");
    cr_assert_eq(hf_ref_parse("org/name@old", &ref, NULL), 0);
    cr_expect_eq(hf_cache_resolve(root, &ref, &dir, NULL, &err), -ENOENT);
    cr_expect(strstr(err.msg, "snapshot directory"), "%s", err.msg);
    hf_ref_finish(&ref);

    snprintf(p, sizeof(p), "rm -rf '%s'", root);
    cr_assert_eq(system(p), 0);
}
