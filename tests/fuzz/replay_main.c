/* replay_main.c - a main() for the fuzz targets that needs no libFuzzer.
 *
 * Feeds LLVMFuzzerTestOneInput every seed (those the target builds itself
 * with fuzz_seeds() and every file of the corpus paths given), then a fixed
 * number of pseudo-random mutations of them: bit flips, interesting bytes and
 * integers, deletions, insertions of dictionary tokens, duplicated ranges,
 * truncations and splices of two seeds. The mutations are a pure function of
 * --seed and the case number, so a failure seen in CI is reproduced exactly
 * (`--save-case K FILE` writes case K out for a debugger or for libFuzzer).
 * This is what `meson test --suite fuzz` runs, under every compiler and in
 * the ASan+UBSan build; the clang libFuzzer build explores far more (see
 * docs/fuzzing.md).
 *
 * Usage: replay_<target> [--iterations N] [--seed S] [--max-seconds T]
 *                        [--max-len BYTES] [--write-seeds DIR]
 *                        [--save-case K FILE] [--optional-dir DIR] [PATH...]
 * A PATH is a file or a directory (its regular files, not recursively). */
#include "fuzz.h"
#include "base/clock.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#pragma weak LLVMFuzzerInitialize
#pragma weak fuzz_seeds

/* Present only when a sanitizer runtime is linked. */
void __sanitizer_set_death_callback(void (*callback)(void));
#pragma weak __sanitizer_set_death_callback

/* The case being run, for the message printed when the process dies. */
static volatile uint64_t current_case = UINT64_MAX;
static uint64_t current_seed;

static void say_case(void)
{
    static volatile int said;
    if (said++)
        return;
    char msg[160];
    int n = snprintf(msg, sizeof(msg),
                     "replay: died on case %llu (--seed %llu); write it out with --save-case %llu FILE\n",
                     (unsigned long long)current_case, (unsigned long long)current_seed,
                     (unsigned long long)current_case);
    if (current_case != UINT64_MAX && n > 0 && write(2, msg, (size_t)n) < 0)
        return;
}

static void on_fatal_signal(int sig)
{
    say_case();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Sanitizers report through their death callback; a plain build through the
 * signal (installing handlers under ASan would hide its own report). */
static void install_death_note(void)
{
    /* abort() from a target's own check is not a sanitizer report. */
    signal(SIGABRT, on_fatal_signal);
    if (__sanitizer_set_death_callback) {
        __sanitizer_set_death_callback(say_case);
        return;
    }
    signal(SIGSEGV, on_fatal_signal);
    signal(SIGBUS, on_fatal_signal);
    signal(SIGFPE, on_fatal_signal);
}

struct seed {
    char *name;
    uint8_t *data;
    size_t len;
};

struct corpus {
    struct seed *v;
    size_t n, cap;
    bool oom;
};

static void corpus_add(void *ctx, const char *name, const void *data, size_t len)
{
    struct corpus *c = ctx;
    if (c->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 64;
        struct seed *nv = realloc(c->v, ncap * sizeof(*nv));
        if (!nv) {
            c->oom = true;
            return;
        }
        c->v = nv;
        c->cap = ncap;
    }
    struct seed *s = &c->v[c->n];
    s->name = strdup(name);
    s->data = malloc(len ? len : 1);
    if (!s->name || !s->data) {
        free(s->name);
        free(s->data);
        c->oom = true;
        return;
    }
    memcpy(s->data, data, len);
    s->len = len;
    c->n++;
}

static int seed_cmp(const void *a, const void *b)
{
    return strcmp(((const struct seed *)a)->name, ((const struct seed *)b)->name);
}

/* Adds one file, or the regular files of a directory (sorted, so that the
 * case numbering does not depend on readdir order). */
static int corpus_add_path(struct corpus *c, const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        fprintf(stderr, "replay: '%s': %s\n", path, strerror(errno));
        return -errno;
    }
    if (!S_ISDIR(st.st_mode)) {
        char *data;
        size_t len;
        int r = tu_read_file(path, &data, &len);
        if (r < 0) {
            fprintf(stderr, "replay: cannot read '%s': %s\n", path, strerror(-r));
            return r;
        }
        const char *base = strrchr(path, '/');
        corpus_add(c, base ? base + 1 : path, data, len);
        free(data);
        return 0;
    }
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "replay: cannot open directory '%s': %s\n", path, strerror(errno));
        return -errno;
    }
    size_t first = c->n;
    struct dirent *e;
    int r = 0;
    while ((e = readdir(d)) && r == 0) {
        if (e->d_name[0] == '.')
            continue;
        size_t n = strlen(path) + 1 + strlen(e->d_name) + 1;
        char *full = malloc(n);
        if (!full) {
            r = -ENOMEM;
            break;
        }
        snprintf(full, n, "%s/%s", path, e->d_name);
        if (stat(full, &st) == 0 && S_ISREG(st.st_mode))
            r = corpus_add_path(c, full);
        free(full);
    }
    closedir(d);
    qsort(c->v + first, c->n - first, sizeof(*c->v), seed_cmp);
    return r;
}

/* splitmix64: a tiny PRNG whose whole state is one number, so each case can
 * be derived from (seed, case) alone. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t rng_below(uint64_t *s, size_t n)
{
    return n ? (size_t)(rng_next(s) % n) : 0;
}

/* A mutable byte string with a hard size cap. */
struct bytes {
    uint8_t *p;
    size_t len, cap;
};

static void bytes_insert(struct bytes *b, size_t at, const void *src, size_t n)
{
    if (n > b->cap - b->len)
        n = b->cap - b->len;
    memmove(b->p + at + n, b->p + at, b->len - at);
    memcpy(b->p + at, src, n);
    b->len += n;
}

static void bytes_delete(struct bytes *b, size_t at, size_t n)
{
    memmove(b->p + at, b->p + at + n, b->len - at - n);
    b->len -= n;
}

/* Tokens that matter to the parsers under test: JSON and Jinja syntax,
 * escapes that decode to NUL or surrogates, invalid UTF-8, numbers at type
 * boundaries, special-token markup. */
static const char *const dict[] = {
    "\"", "\\", "{", "}", "[", "]", ",", ":", "null", "true", "false", "{}", "[]", "\"\"",
    "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "|", ".", "(", ")", "~", "+", "*", "/",
    "if ", "for ", "in ", "endfor", "endif", "set ", "macro ", "endmacro", "loop.index",
    "messages", "message['content']", "range(", "raise_exception(", "namespace(",
    "\\u0000", "\\ud800", "\\udfff", "\\uffff", "\\n", "\x00", "\xff", "\xc0\x80", "\xed\xa0\x80",
    "\xf4\x90\x80\x80", "\xe2\x96\x81", "\xc4\xa0", "\xef\xbb\xbf",
    "0", "-1", "-0", "1e999", "-1e999", "NaN", "Infinity", "2147483647", "2147483648", "-2147483649",
    "4294967295", "4294967296", "9223372036854775807", "18446744073709551616", "0.5", "1e-400",
    "\"F32\"", "\"F16\"", "\"BF16\"", "\"I8\"", "\"U32\"", "\"dtype\"", "\"shape\"", "\"data_offsets\"",
    "\"__metadata__\"", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<|endoftext|>",
};

static const uint64_t interesting[] = {
    0, 1, 2, 7, 8, 16, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000,
    0x7fffffff, 0x80000000, 0xffffffff, 0x100000000ull, 0x7fffffffffffffffull,
    0x8000000000000000ull, 0xffffffffffffffffull, 20, 24, 32, 48, 56, 64, 72,
};

static void mutate_one(struct bytes *b, const struct corpus *c, uint64_t *rng)
{
    switch (rng_below(rng, 10)) {
    case 0: /* flip a bit */
        if (b->len)
            b->p[rng_below(rng, b->len)] ^= (uint8_t)(1u << rng_below(rng, 8));
        break;
    case 1: /* an interesting or random byte */
        if (b->len)
            b->p[rng_below(rng, b->len)] = rng_below(rng, 2) ? (uint8_t)interesting[rng_below(rng, 9)]
                                                              : (uint8_t)rng_next(rng);
        break;
    case 2: { /* an interesting little-endian integer of 2, 4 or 8 bytes */
        size_t w = (size_t)2 << rng_below(rng, 3);
        if (b->len >= w) {
            uint64_t v = interesting[rng_below(rng, sizeof(interesting) / sizeof(interesting[0]))];
            if (rng_below(rng, 4) == 0)
                v = ~v + 1; /* its negation */
            size_t at = rng_below(rng, b->len - w + 1);
            for (size_t i = 0; i < w; i++)
                b->p[at + i] = (uint8_t)(v >> (8 * i));
        }
        break;
    }
    case 3: /* delete a range */
        if (b->len) {
            size_t at = rng_below(rng, b->len);
            size_t n = 1 + rng_below(rng, b->len - at < 64 ? b->len - at : 64);
            bytes_delete(b, at, n);
        }
        break;
    case 4:
    case 5: { /* insert a dictionary token */
        const char *t = dict[rng_below(rng, sizeof(dict) / sizeof(dict[0]))];
        size_t n = t[0] ? strlen(t) : 1; /* "\x00" is one NUL byte */
        bytes_insert(b, rng_below(rng, b->len + 1), t, n);
        break;
    }
    case 6: /* duplicate a range (repetition finds size and nesting limits) */
        if (b->len) {
            size_t at = rng_below(rng, b->len);
            size_t n = 1 + rng_below(rng, b->len - at < 256 ? b->len - at : 256);
            uint8_t tmp[256];
            memcpy(tmp, b->p + at, n);
            size_t times = 1 + rng_below(rng, 8);
            for (size_t i = 0; i < times; i++)
                bytes_insert(b, at, tmp, n);
        }
        break;
    case 7: /* truncate */
        if (b->len)
            b->len = rng_below(rng, b->len);
        break;
    case 8: { /* splice: this input's head, another seed's tail */
        const struct seed *o = &c->v[rng_below(rng, c->n)];
        size_t head = rng_below(rng, b->len + 1);
        size_t from = rng_below(rng, o->len + 1);
        b->len = head;
        bytes_insert(b, head, o->data + from, o->len - from);
        break;
    }
    default: /* random bytes */
        {
            uint8_t tmp[16];
            size_t n = 1 + rng_below(rng, sizeof(tmp));
            for (size_t i = 0; i < n; i++)
                tmp[i] = (uint8_t)rng_next(rng);
            bytes_insert(b, rng_below(rng, b->len + 1), tmp, n);
        }
        break;
    }
}

/* Builds case k (k >= n_seeds: a mutation) into b. */
static void make_case(const struct corpus *c, uint64_t seed, uint64_t k, struct bytes *b)
{
    if (k < c->n) {
        size_t n = c->v[k].len < b->cap ? c->v[k].len : b->cap;
        memcpy(b->p, c->v[k].data, n);
        b->len = n;
        return;
    }
    uint64_t rng = seed ^ (k * 0xd1b54a32d192ed03ull);
    const struct seed *base = &c->v[rng_below(&rng, c->n)];
    b->len = base->len < b->cap ? base->len : b->cap;
    memcpy(b->p, base->data, b->len);
    size_t n_mut = 1 + rng_below(&rng, 4);
    for (size_t i = 0; i < n_mut; i++)
        mutate_one(b, c, &rng);
}

/* Runs one input from an exactly sized heap copy, as libFuzzer does, so that
 * reading one byte past the end is an ASan report. */
static void run_one(const uint8_t *p, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) {
        fprintf(stderr, "replay: out of memory\n");
        exit(2);
    }
    memcpy(copy, p, len);
    LLVMFuzzerTestOneInput(copy, len);
    free(copy);
}

static int write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "replay: cannot create '%s': %s\n", path, strerror(errno));
        return -1;
    }
    size_t put = fwrite(data, 1, len, f);
    if (fclose(f) != 0 || put != len) {
        fprintf(stderr, "replay: cannot write '%s'\n", path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t iterations = 2000, seed = 1;
    double max_seconds = 0;
    size_t max_len = 1u << 20;
    const char *write_dir = NULL, *save_file = NULL;
    uint64_t save_case = 0;
    struct corpus c = {0};
    int n_paths = 0;
    const char *paths[256];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "--iterations") && has)
            iterations = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(a, "--seed") && has)
            seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(a, "--max-seconds") && has)
            max_seconds = strtod(argv[++i], NULL);
        else if (!strcmp(a, "--max-len") && has)
            max_len = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(a, "--optional-dir") && has) {
            /* The target's committed corpus directory, which may not exist yet. */
            struct stat st;
            const char *d = argv[++i];
            if (stat(d, &st) == 0 && n_paths < (int)(sizeof(paths) / sizeof(paths[0])))
                paths[n_paths++] = d;
        } else if (!strcmp(a, "--write-seeds") && has)
            write_dir = argv[++i];
        else if (!strcmp(a, "--save-case") && i + 2 < argc) {
            save_case = strtoull(argv[++i], NULL, 0);
            save_file = argv[++i];
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "replay: unknown option '%s' (see tests/fuzz/replay_main.c)\n", a);
            return 2;
        } else if (n_paths < (int)(sizeof(paths) / sizeof(paths[0]))) {
            paths[n_paths++] = a;
        } else {
            fprintf(stderr, "replay: too many corpus paths\n");
            return 2;
        }
    }
    if (max_len == 0)
        max_len = 1;

    if (LLVMFuzzerInitialize && !write_dir)
        LLVMFuzzerInitialize(&argc, &argv);
    if (fuzz_seeds)
        fuzz_seeds(corpus_add, &c);
    size_t n_built = c.n;
    for (int i = 0; i < n_paths; i++)
        if (corpus_add_path(&c, paths[i]) < 0)
            return 2;
    if (c.oom) {
        fprintf(stderr, "replay: out of memory loading the corpus\n");
        return 2;
    }

    if (write_dir) {
        /* Only the built seeds: corpus files are already files. */
        for (size_t i = 0; i < n_built; i++) {
            size_t n = strlen(write_dir) + 1 + strlen(c.v[i].name) + 1;
            char *p = malloc(n);
            if (!p)
                return 2;
            snprintf(p, n, "%s/%s", write_dir, c.v[i].name);
            int r = write_file(p, c.v[i].data, c.v[i].len);
            free(p);
            if (r < 0)
                return 1;
        }
        printf("replay: wrote %zu built seeds to %s\n", n_built, write_dir);
        return 0;
    }
    if (c.n == 0) {
        /* Mutating nothing would test nothing: refuse rather than pass. */
        fprintf(stderr, "replay: no seeds (give a corpus directory; is INFERD_SHARED set?)\n");
        return 1;
    }

    struct bytes b = {.p = malloc(max_len), .cap = max_len};
    if (!b.p) {
        fprintf(stderr, "replay: out of memory\n");
        return 2;
    }
    int rc = 0;
    if (save_file) {
        make_case(&c, seed, save_case, &b);
        if (write_file(save_file, b.p, b.len) == 0)
            printf("replay: case %llu (%zu bytes) written to %s\n", (unsigned long long)save_case, b.len, save_file);
        else
            rc = 1;
        goto out;
    }

    install_death_note();
    current_seed = seed;
    double t0 = ifd_now_s();
    uint64_t total = c.n + iterations, done = 0;
    for (uint64_t k = 0; k < total; k++) {
        /* The seeds always run; the time cap only shortens the mutations. */
        if (k >= c.n && max_seconds > 0 && (k & 15) == 0 && ifd_now_s() - t0 > max_seconds)
            break;
        make_case(&c, seed, k, &b);
        current_case = k;
        run_one(b.p, b.len);
        done++;
    }
    current_case = UINT64_MAX;
    printf("replay: %zu seeds (%zu built), %llu mutations, seed %llu, %.1f s%s\n", c.n, n_built,
           (unsigned long long)(done - c.n), (unsigned long long)seed, ifd_now_s() - t0,
           done < total ? " (stopped at --max-seconds)" : "");
out:
    free(b.p);
    for (size_t i = 0; i < c.n; i++) {
        free(c.v[i].name);
        free(c.v[i].data);
    }
    free(c.v);
    return rc;
}
