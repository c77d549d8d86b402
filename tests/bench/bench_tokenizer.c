/* bench_tokenizer.c - encode throughput of the tokenizer on a mixed corpus.
 *
 *   bench_tokenizer --write-corpus PATH [MIN_BYTES]
 *       builds the corpus from the golden tokenizer corpus texts
 *       ($INFERD_SHARED/golden/tokenizer/qwen3.jsonl: prose, code, numbers,
 *       CJK, Arabic, emoji ...), repeated in a fixed shuffled order until it
 *       holds MIN_BYTES (default 2 MiB), and writes it to PATH;
 *   bench_tokenizer TOKENIZER_DIR CORPUS [SECONDS] [whole|lines]
 *       encodes the whole corpus as one string (or each line as its own
 *       string: many short calls, as a server sees them), single thread,
 *       repeatedly for about SECONDS (default 3) and prints one JSON line
 *       with MB/s.
 * bench_tokenizer.sh runs it beside the npm `tokenizers` package. */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "common/test_util.h"
#include "text/tokenizer/tokenizer.h"

static int write_corpus(const char *out, size_t min_bytes)
{
    char *path = tu_shared_path("golden/tokenizer/qwen3.jsonl");
    if (!path)
        return 1;
    char *data;
    int r = tu_read_file(path, &data, NULL);
    if (r < 0) {
        fprintf(stderr, "bench_tokenizer: cannot read %s: %s\n", path, strerror(-r));
        free(path);
        return 1;
    }
    free(path);
    size_t n = 0, cap = 1024;
    char **texts = malloc(cap * sizeof(*texts));
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *t = cJSON_GetObjectItem(j, "text");
        if (cJSON_IsString(t) && *t->valuestring) {
            if (n == cap)
                texts = realloc(texts, (cap *= 2) * sizeof(*texts));
            texts[n++] = strdup(t->valuestring);
        }
        cJSON_Delete(j);
    }
    FILE *f = fopen(out, "wb");
    if (!f || n == 0) {
        fprintf(stderr, "bench_tokenizer: cannot write %s\n", out);
        return 1;
    }
    /* fixed-seed shuffle per round, so every run measures the same bytes */
    uint64_t seed = 0x2545F4914F6CDD1Dull;
    size_t written = 0;
    while (written < min_bytes) {
        for (size_t i = n - 1; i > 0; i--) {
            seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
            size_t k = (size_t)(seed % (i + 1));
            char *tmp = texts[i];
            texts[i] = texts[k];
            texts[k] = tmp;
        }
        for (size_t i = 0; i < n; i++) {
            written += fwrite(texts[i], 1, strlen(texts[i]), f);
            written += fwrite("\n", 1, 1, f);
        }
    }
    fclose(f);
    for (size_t i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    free(data);
    fprintf(stderr, "bench_tokenizer: wrote %zu bytes (%zu corpus texts, repeated) to %s\n", written, n, out);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "--write-corpus") == 0)
        return write_corpus(argv[2], argc > 3 ? (size_t)strtoull(argv[3], NULL, 10) : (size_t)2 << 20);
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tokenizer TOKENIZER_DIR CORPUS [SECONDS]\n"
                        "       bench_tokenizer --write-corpus PATH [MIN_BYTES]\n");
        return 2;
    }
    double seconds = argc > 3 ? atof(argv[3]) : 3.0;
    bool lines = argc > 4 && strcmp(argv[4], "lines") == 0;
    size_t len;
    char *text;
    int r = tu_read_file(argv[2], &text, &len);
    if (r < 0) {
        fprintf(stderr, "bench_tokenizer: cannot read %s: %s\n", argv[2], strerror(-r));
        return 1;
    }
    tokenizer *t = NULL;
    ifd_error err = {0};
    double t0 = ifd_now_s();
    if (tok_load(argv[1], &t, &err) < 0) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
        return 1;
    }
    double load_s = ifd_now_s() - t0;
    struct tok_ids ids = {0};
    int iters = 0;
    double best = 1e30, total = 0;
    size_t tokens = 0;
    while (total < seconds || iters < 3) {
        double a = ifd_now_s();
        size_t n_tokens = 0;
        for (size_t off = 0; off < len;) {
            size_t n = len - off;
            if (lines) {
                const char *nl = memchr(text + off, '\n', n);
                n = nl ? (size_t)(nl - (text + off)) + 1 : n;
            }
            if (tok_encode(t, text + off, n, false, &ids, &err) < 0) {
                fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
                return 1;
            }
            n_tokens += ids.n;
            off += n;
        }
        double d = ifd_now_s() - a;
        total += d;
        best = d < best ? d : best;
        iters++;
        tokens = n_tokens;
    }
    printf("{\"impl\":\"inferd\",\"mode\":\"%s\",\"tokenizer\":\"%s\",\"bytes\":%zu,\"tokens\":%zu,\"iters\":%d,"
           "\"mean_mb_s\":%.2f,\"best_mb_s\":%.2f,\"load_s\":%.3f}\n",
           lines ? "lines" : "whole", argv[1], len, tokens, iters, len / 1e6 / (total / iters), len / 1e6 / best, load_s);
    tok_ids_finish(&ids);
    tok_destroy(t);
    free(text);
    return 0;
}
