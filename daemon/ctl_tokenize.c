/* ctl_tokenize.c - `inferctl tokenize` and `inferctl detokenize`: the model
 * directory's tokenizer, locally, with no daemon.
 *
 *   inferctl tokenize DIR "text"        -> {"ids":[...],"tokens":[...]}
 *   inferctl tokenize DIR --file PATH   (the file's bytes, unchanged)
 *   inferctl detokenize DIR ID...       -> {"text":"..."}
 *   --jsonl: one JSON object per stdin line ({"text":...} / {"ids":[...]}),
 *            one result (or {"error":"..."}) per stdout line.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api.h"
#include "base/file.h"
#include "ctl.h"
#include "text/tokenizer/tokenizer.h"

#define CTL_TEXT_MAX ((size_t)256 << 20) /* --file and --jsonl line bytes */
#define CTL_IDS_MAX ((size_t)1 << 24)    /* ids in one detokenize request */

/* Writes s as a JSON string: UTF-8 passes through, quotes, backslashes and
 * control characters (NUL included) are escaped. */
static void json_put_str(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (c < 0x20 || c == 0x7F)
                fprintf(f, "\\u%04x", c);
            else
                fputc(c, f);
        }
    }
    fputc('"', f);
}

static void json_put_error(FILE *f, const char *msg)
{
    fputs("{\"error\":", f);
    json_put_str(f, msg, strlen(msg));
    fputs("}\n", f);
}

static void print_encoding(const tokenizer *t, const struct tok_ids *v)
{
    fputs("{\"ids\":[", stdout);
    for (size_t i = 0; i < v->n; i++)
        printf("%s%d", i ? "," : "", v->ids[i]);
    fputs("],\"tokens\":[", stdout);
    for (size_t i = 0; i < v->n; i++) {
        const char *tk = tok_id_to_token(t, v->ids[i]);
        if (i)
            fputc(',', stdout);
        if (tk)
            json_put_str(stdout, tk, strlen(tk));
        else
            fputs("null", stdout);
    }
    fputs("]}\n", stdout);
}

static int read_file_bytes(const char *path, char **ret, size_t *ret_len)
{
    ifd_error err;
    int r = file_read(path, CTL_TEXT_MAX, 0, ret, ret_len, &err);
    if (r < 0)
        fprintf(stderr, "inferctl tokenize: %s\n", err.msg);
    return r;
}

/* Reads stdin line by line, calling fn on each non-empty line; returns the
 * number of lines that failed. */
static int each_stdin_line(const tokenizer *t, bool flag, int (*fn)(const tokenizer *, bool, const char *, size_t))
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int failed = 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        if ((size_t)n > CTL_TEXT_MAX) {
            json_put_error(stdout, "line is over the size limit");
            failed++;
            continue;
        }
        if (fn(t, flag, line, (size_t)n) < 0)
            failed++;
        fflush(stdout);
    }
    free(line);
    return failed;
}

static int tokenize_line(const tokenizer *t, bool add_special, const char *line, size_t len)
{
    /* \u0000 in the text: api_json_parse carries it past cJSON's C strings */
    uint32_t nul = 0;
    cJSON *j = api_json_parse(line, len, NULL, &nul);
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
    int r = -EINVAL;
    size_t tlen = 0;
    char *bytes = cJSON_IsString(text) ? api_json_string(text, nul, &tlen) : NULL;
    if (!cJSON_IsString(text)) {
        json_put_error(stdout, j ? "expected {\"text\": \"...\"}" : "malformed JSON");
    } else if (!bytes) {
        json_put_error(stdout, "out of memory");
    } else {
        struct tok_ids v = {0};
        ifd_error err = {0};
        r = tok_encode(t, bytes, tlen, add_special, &v, &err);
        if (r < 0)
            json_put_error(stdout, err.msg);
        else
            print_encoding(t, &v);
        tok_ids_finish(&v);
    }
    free(bytes);
    cJSON_Delete(j);
    return r;
}

static void tokenize_usage(FILE *f)
{
    fprintf(f, "Usage: inferctl tokenize [--no-special] DIR TEXT\n"
               "       inferctl tokenize [--no-special] DIR --file PATH\n"
               "       inferctl tokenize [--no-special] DIR --jsonl   < lines of {\"text\": ...}\n"
               "Prints {\"ids\":[...],\"tokens\":[...]}. Special tokens are added as Hugging Face's\n"
               "add_special_tokens=true does unless --no-special is given.\n");
}

int ctl_tokenize_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"no-special", no_argument, NULL, 'n'},
        {"file", required_argument, NULL, 'f'},
        {"jsonl", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool add_special = true, jsonl = false;
    const char *file = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "nf:jh", opts, NULL)) != -1) {
        switch (c) {
        case 'n': add_special = false; break;
        case 'f': file = optarg; break;
        case 'j': jsonl = true; break;
        case 'h': tokenize_usage(stdout); return 0;
        default: tokenize_usage(stderr); return 2;
        }
    }
    int want_args = (file || jsonl) ? 1 : 2;
    if (argc - optind != want_args || (file && jsonl)) {
        tokenize_usage(stderr);
        return 2;
    }
    tokenizer *t = NULL;
    ifd_error err = {0};
    if (tok_load(argv[optind], &t, &err) < 0) {
        fprintf(stderr, "inferctl tokenize: %s\n", err.msg);
        return 1;
    }
    int rc = 0;
    if (jsonl) {
        rc = each_stdin_line(t, add_special, tokenize_line) ? 1 : 0;
    } else {
        char *buf = NULL;
        const char *text;
        size_t len = 0;
        if (file) {
            if (read_file_bytes(file, &buf, &len) < 0) {
                tok_destroy(t);
                return 1;
            }
            text = buf;
        } else {
            text = argv[optind + 1];
            len = strlen(text);
        }
        struct tok_ids v = {0};
        if (tok_encode(t, text, len, add_special, &v, &err) < 0) {
            fprintf(stderr, "inferctl tokenize: %s\n", err.msg);
            rc = 1;
        } else {
            print_encoding(t, &v);
        }
        tok_ids_finish(&v);
        free(buf);
    }
    tok_destroy(t);
    return rc;
}

/* ------------------------------------------------------------ detokenize */

static int print_decoded(const tokenizer *t, bool skip_special, const int32_t *ids, size_t n)
{
    char *text = NULL;
    size_t len = 0;
    ifd_error err = {0};
    int r = tok_decode(t, ids, n, skip_special, &text, &len, &err);
    if (r < 0) {
        json_put_error(stdout, err.msg);
        return r;
    }
    fputs("{\"text\":", stdout);
    json_put_str(stdout, text, len);
    fputs("}\n", stdout);
    free(text);
    return 0;
}

static bool id_in_range(double d)
{
    return d >= 0 && d <= INT32_MAX && d == (double)(int32_t)d;
}

static int detokenize_line(const tokenizer *t, bool skip_special, const char *line, size_t len)
{
    cJSON *j = cJSON_ParseWithLength(line, len);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "ids"), *it;
    int r = -EINVAL;
    if (!cJSON_IsArray(ids) || (size_t)cJSON_GetArraySize(ids) > CTL_IDS_MAX) {
        json_put_error(stdout, j ? "expected {\"ids\": [...]}" : "malformed JSON");
        cJSON_Delete(j);
        return r;
    }
    size_t n = (size_t)cJSON_GetArraySize(ids), k = 0;
    int32_t *v = malloc((n + 1) * sizeof(*v));
    if (!v) {
        json_put_error(stdout, "out of memory");
        cJSON_Delete(j);
        return -ENOMEM;
    }
    cJSON_ArrayForEach(it, ids)
    {
        if (!cJSON_IsNumber(it) || !id_in_range(it->valuedouble))
            break;
        v[k++] = (int32_t)it->valuedouble;
    }
    if (k != n)
        json_put_error(stdout, "ids must be non-negative integers");
    else
        r = print_decoded(t, skip_special, v, n);
    free(v);
    cJSON_Delete(j);
    return r;
}

static void detokenize_usage(FILE *f)
{
    fprintf(f, "Usage: inferctl detokenize [--skip-special] DIR ID...\n"
               "       inferctl detokenize [--skip-special] DIR --jsonl   < lines of {\"ids\": [...]}\n"
               "Prints {\"text\":\"...\"}. IDs may also be given comma-separated.\n");
}

int ctl_detokenize_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"skip-special", no_argument, NULL, 's'},
        {"jsonl", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool skip_special = false, jsonl = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "sjh", opts, NULL)) != -1) {
        switch (c) {
        case 's': skip_special = true; break;
        case 'j': jsonl = true; break;
        case 'h': detokenize_usage(stdout); return 0;
        default: detokenize_usage(stderr); return 2;
        }
    }
    if (argc - optind < 1 || (jsonl && argc - optind != 1)) {
        detokenize_usage(stderr);
        return 2;
    }
    /* parse the ids before loading, so a typo costs nothing */
    size_t n = 0, cap = 16;
    int32_t *ids = malloc(cap * sizeof(*ids));
    if (!ids)
        return 1;
    for (int i = optind + 1; i < argc; i++) {
        for (char *p = argv[i]; *p;) {
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
                fprintf(stderr, "inferctl detokenize: bad id '%s'\n", argv[i]);
                free(ids);
                return 2;
            }
            if (n == cap) {
                int32_t *nv = n < CTL_IDS_MAX ? realloc(ids, (cap *= 2) * sizeof(*ids)) : NULL;
                if (!nv) {
                    fprintf(stderr, "inferctl detokenize: too many ids\n");
                    free(ids);
                    return 1;
                }
                ids = nv;
            }
            ids[n++] = (int32_t)v;
            p = *end ? end + 1 : end;
        }
    }
    tokenizer *t = NULL;
    ifd_error err = {0};
    if (tok_load(argv[optind], &t, &err) < 0) {
        fprintf(stderr, "inferctl detokenize: %s\n", err.msg);
        free(ids);
        return 1;
    }
    int rc;
    if (jsonl)
        rc = each_stdin_line(t, skip_special, detokenize_line) ? 1 : 0;
    else
        rc = print_decoded(t, skip_special, ids, n) < 0 ? 1 : 0;
    free(ids);
    tok_destroy(t);
    return rc;
}
