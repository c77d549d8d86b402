/* fuzz.h - what every fuzz target and the replay driver share.
 *
 * A target is one fuzz_<parser>.c defining LLVMFuzzerTestOneInput (the
 * libFuzzer entry point). It is linked either with libFuzzer (clang,
 * -Dfuzz=enabled) or with replay_main.c, a plain main() that feeds it the
 * seed corpus and deterministic mutations of it (any compiler, run by
 * `meson test --suite fuzz`). A target may also define:
 *   LLVMFuzzerInitialize - one-time setup (loading a real tokenizer);
 *   fuzz_seeds           - seeds built at run time (with the project's own
 *                          encoders and writers, or read from
 *                          $INFERD_SHARED), so that no binary seed and no
 *                          copy of a shared file lives in the repository. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "common/test_util.h"

struct cJSON;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Receives one seed; `name` is a short file name for it (no slashes). */
typedef void (*fuzz_seed_fn)(void *ctx, const char *name, const void *data, size_t len);
void fuzz_seeds(fuzz_seed_fn add, void *ctx);

/* The shared-data lookup and file reads are tests/common/test_util.h's
 * (tu_shared_path, tu_read_file), as for every other test. */

/* Hands every line of $INFERD_SHARED/rel that parses as JSON to fn, with its
 * line number from 0 (the object is deleted after the call). Returns 0, or a
 * negative errno when the file cannot be read (the caller says so or not). */
int fuzz_shared_jsonl(const char *rel, void (*fn)(void *ctx, size_t line, struct cJSON *o), void *ctx);

/* Hands $INFERD_SHARED/rel to `add` as seed `name`, if the file exists and
 * is at most max_len bytes (a missing shared dir only costs the seed). */
void fuzz_seed_shared(fuzz_seed_fn add, void *ctx, const char *name, const char *rel, size_t max_len);

/* Reads little-endian integers from a byte string (no alignment needed). */
static inline uint32_t fuzz_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Marks a value as used so the compiler keeps the read that produced it:
 * the targets touch every byte a decoder hands back, so that a view that
 * points outside the input is an ASan report, not a silent bug. */
static inline void fuzz_use(uint64_t v)
{
    __asm__ volatile("" : : "r"(v) : "memory");
}

/* The chat template of a golden tokenizer family ("qwen3", "llama3.1" ...):
 * $INFERD_SHARED/golden/tokenizers/FAMILY/chat_template.jinja, else the
 * "chat_template" string of its tokenizer_config.json. malloc'd; NULL when
 * there is none. */
char *fuzz_shared_template(const char *family);

/* The golden families that have a chat template, NULL-terminated. */
extern const char *const fuzz_template_families[];
