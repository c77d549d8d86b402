/* ctl_template.c - `inferctl template DIR conversation.json`: render a
 * model's chat template locally, without a daemon, and tokenize the result.
 *
 * The template is DIR/chat_template.jinja, else tokenizer_config.json's
 * "chat_template" (a string, or a list of {name, template} of which
 * "default" is used), else ChatML. The context is built as transformers'
 * apply_chat_template builds it: the special tokens of tokenizer_config.json
 * (bos_token, eos_token ... as strings or {"content": ...} objects), then the
 * conversation's "special_tokens" (add or override), its "kwargs" (tools,
 * enable_thinking, date_string ...), "messages" and "add_generation_prompt".
 * Ids are encode(text, add_special_tokens=false), as
 * apply_chat_template(tokenize=True) does, except that special tokens never
 * match inside the messages' and kwargs' text (the ids the daemon makes,
 * docs/security.md); only when DIR has a tokenizer.json.
 *
 * Output: {"text":"...","ids":[...]} per conversation, or {"error":"..."}
 * with exit status 1. --jsonl reads one conversation per line on stdin and
 * writes one result per line, so a whole golden file costs one load. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "text/template/chat_template.h"
#include "base/file.h"
#include "ctl.h"
#include "text/tokenizer/tokenizer.h"

#define TEMPLATE_MAX_FILE (64u << 20) /* bytes of a conversation / config file or stdin line */

struct tmpl_ctx {
    chat_template *tmpl;
    tokenizer *tok;     /* NULL when DIR has no tokenizer.json */
    cJSON *special;     /* special tokens from tokenizer_config.json (object) */
    struct tok_ids ids; /* reused across conversations */
};

static void template_usage(FILE *f)
{
    fprintf(f,
            "Usage: inferctl template DIR CONVERSATION.json\n"
            "       inferctl template DIR --jsonl < conversations.jsonl\n"
            "\n"
            "Renders the chat template of the model directory DIR (chat_template.jinja,\n"
            "else tokenizer_config.json's chat_template, else ChatML) for a conversation\n"
            "{\"messages\":[...], \"add_generation_prompt\":true, \"kwargs\":{...},\n"
            " \"special_tokens\":{...}} and prints {\"text\":\"...\",\"ids\":[...]}\n"
            "(ids only when DIR has a tokenizer.json), or {\"error\":\"...\"} with exit\n"
            "status 1 when the template raises.\n"
            "\n"
            "  --jsonl   one conversation per line on stdin, one result per line\n");
}

/* Reads a whole file (NUL-terminated); NULL after saying why on stderr. */
static char *read_file(const char *path, size_t *ret_len)
{
    char *buf;
    ifd_error err;
    if (file_read(path, TEMPLATE_MAX_FILE, 0, &buf, ret_len, &err) < 0) {
        fprintf(stderr, "inferctl template: %s\n", err.msg);
        return NULL;
    }
    return buf;
}

static char *dir_file(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static bool file_exists(const char *dir, const char *name)
{
    char *p = dir_file(dir, name);
    struct stat st;
    bool ok = p && stat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    return ok;
}

/* DIR/NAME whole (NUL-terminated), or NULL after saying why on stderr. */
static char *read_dir_file(const char *dir, const char *name)
{
    char *path = dir_file(dir, name);
    if (!path) {
        fprintf(stderr, "inferctl template: out of memory\n");
        return NULL;
    }
    char *text = read_file(path, NULL);  /* says why itself */
    free(path);
    return text;
}

/* The special-token entries of tokenizer_config.json as plain strings. */
static cJSON *config_special_tokens(const cJSON *cfg)
{
    cJSON *out = cJSON_CreateObject();
    if (!out)
        return NULL;
    for (const cJSON *c = cfg ? cfg->child : NULL; c; c = c->next) {
        size_t n = c->string ? strlen(c->string) : 0;
        bool token = n > 6 && strcmp(c->string + n - 6, "_token") == 0;
        if (token && cJSON_IsString(c)) {
            cJSON_AddStringToObject(out, c->string, c->valuestring);
        } else if (token && cJSON_IsObject(c)) {
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(c, "content");
            if (cJSON_IsString(content))
                cJSON_AddStringToObject(out, c->string, content->valuestring);
        } else if (c->string && strcmp(c->string, "additional_special_tokens") == 0 && cJSON_IsArray(c)) {
            cJSON *list = cJSON_AddArrayToObject(out, c->string);
            for (const cJSON *e = c->child; e && list; e = e->next) {
                const cJSON *s = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "content") : e;
                if (cJSON_IsString(s))
                    cJSON_AddItemToArray(list, cJSON_CreateString(s->valuestring));
            }
        }
    }
    return out;
}

/* Picks the template source; *ret_src is malloc'd. */
static int template_source(const char *dir, const cJSON *cfg, char **ret_src, const char **ret_origin)
{
    if (file_exists(dir, "chat_template.jinja")) {
        char *src = read_dir_file(dir, "chat_template.jinja");
        if (!src)
            return -EIO;
        *ret_src = src;
        *ret_origin = "chat_template.jinja";
        return 0;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    if (cJSON_IsString(t)) {
        *ret_src = strdup(t->valuestring);
        *ret_origin = "tokenizer_config.json";
        return *ret_src ? 0 : -ENOMEM;
    }
    if (cJSON_IsArray(t)) {
        for (const cJSON *e = t->child; e; e = e->next) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
            const cJSON *src = cJSON_GetObjectItemCaseSensitive(e, "template");
            if (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0 && cJSON_IsString(src)) {
                *ret_src = strdup(src->valuestring);
                *ret_origin = "tokenizer_config.json (default)";
                return *ret_src ? 0 : -ENOMEM;
            }
        }
        fprintf(stderr, "inferctl template: %s/tokenizer_config.json: chat_template list has no 'default'\n", dir);
        return -EINVAL;
    }
    *ret_src = strdup(chat_template_chatml);
    *ret_origin = "ChatML (the directory has no chat template)";
    return *ret_src ? 0 : -ENOMEM;
}

static int tmpl_ctx_load(struct tmpl_ctx *c, const char *dir)
{
    cJSON *cfg = NULL;
    if (file_exists(dir, "tokenizer_config.json")) {
        char *text = read_dir_file(dir, "tokenizer_config.json");
        if (!text)
            return -EIO;
        cfg = cJSON_Parse(text);
        free(text);
        if (!cfg || !cJSON_IsObject(cfg)) {
            fprintf(stderr, "inferctl template: '%s/tokenizer_config.json' is not a JSON object\n", dir);
            cJSON_Delete(cfg);
            return -EINVAL;
        }
    }
    char *src = NULL;
    const char *origin = NULL;
    int rc = template_source(dir, cfg, &src, &origin);
    if (rc == 0) {
        ifd_error err = {{0}};
        rc = chat_template_compile(src, strlen(src), &c->tmpl, &err);
        if (rc < 0)
            fprintf(stderr, "inferctl template: %s/%s: %s\n", dir, origin, err.msg);
    }
    free(src);
    if (rc == 0 && !(c->special = config_special_tokens(cfg)))
        rc = -ENOMEM;
    cJSON_Delete(cfg);
    if (rc == 0 && file_exists(dir, "tokenizer.json")) {
        ifd_error err = {{0}};
        rc = tok_load(dir, &c->tok, &err);
        if (rc < 0)
            fprintf(stderr, "inferctl template: %s\n", err.msg);
    }
    return rc;
}

static void tmpl_ctx_finish(struct tmpl_ctx *c)
{
    chat_template_destroy(c->tmpl);
    tok_destroy(c->tok);
    cJSON_Delete(c->special);
    tok_ids_finish(&c->ids);
}

/* Renders one conversation (JSON text) into a result object ({"text","ids"}
 * or {"error"}). Returns 0 on success, 1 when the result is an error. */
static int render_one(struct tmpl_ctx *c, const char *json, size_t json_len, cJSON **ret)
{
    char msg[IFD_ERROR_MSG_MAX + 16];
    const char *problem = NULL;
    char *text = NULL;
    size_t len = 0, *untrusted = NULL, n_untrusted = 0;
    ifd_error err = {{0}};
    /* The conversation goes to core as text, not cJSON, so that numbers keep
     * Python's int/float split (a tool schema's 1.0 stays 1.0). Its messages
     * are untrusted: ids as the daemon makes them (docs/security.md). */
    if (chat_template_render_conversation_untrusted(c->tmpl, json, json_len, c->special, &text, &len, &untrusted,
                                                    &n_untrusted, &err) < 0) {
        snprintf(msg, sizeof(msg), "%s", err.msg);
        problem = msg;
    } else if (c->tok && tok_encode_protected(c->tok, text, len, false, untrusted, n_untrusted, &c->ids, &err) < 0) {
        snprintf(msg, sizeof(msg), "tokenize: %s", err.msg);
        problem = msg;
    }
    free(untrusted);
    cJSON *out = cJSON_CreateObject();
    if (!out) {
        free(text);
        *ret = NULL;
        return 1;
    }
    if (problem) {
        free(text);
        cJSON_AddStringToObject(out, "error", problem);
        *ret = out;
        return 1;
    }
    cJSON_AddItemToObject(out, "text", cJSON_CreateString(text));
    free(text);
    if (c->tok) {
        cJSON *ids = cJSON_AddArrayToObject(out, "ids");
        for (size_t i = 0; i < c->ids.n; i++)
            cJSON_AddItemToArray(ids, cJSON_CreateNumber(c->ids.ids[i]));
    }
    *ret = out;
    return 0;
}

static int print_result(cJSON *res)
{
    char *s = res ? cJSON_PrintUnformatted(res) : NULL;
    if (!s) {
        printf("{\"error\":\"out of memory\"}\n");
        return 1;
    }
    printf("%s\n", s);
    free(s);
    return 0;
}

static int run_jsonl(struct tmpl_ctx *c)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int failed = 0;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        cJSON *res = NULL;
        if ((size_t)n > TEMPLATE_MAX_FILE) {
            res = cJSON_CreateObject();
            cJSON_AddStringToObject(res, "error", "line too long");
            failed = 1;
        } else {
            size_t k = (size_t)n;
            while (k > 0 && (line[k - 1] == '\n' || line[k - 1] == '\r' || line[k - 1] == ' '))
                k--;
            if (k == 0)
                continue;
            failed |= render_one(c, line, k, &res);
        }
        failed |= print_result(res);
        cJSON_Delete(res);
        fflush(stdout);
    }
    free(line);
    return failed;
}

int ctl_template_main(int argc, char **argv)
{
    const char *dir = NULL, *conv_path = NULL;
    bool jsonl = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            template_usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--jsonl") == 0) {
            jsonl = true;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "inferctl template: unknown option '%s'\n", argv[i]);
            template_usage(stderr);
            return 2;
        } else if (!dir) {
            dir = argv[i];
        } else if (!conv_path) {
            conv_path = argv[i];
        } else {
            template_usage(stderr);
            return 2;
        }
    }
    if (!dir || (jsonl == (conv_path != NULL))) {
        template_usage(stderr);
        return 2;
    }
    struct tmpl_ctx c = {0};
    if (tmpl_ctx_load(&c, dir) < 0) {
        tmpl_ctx_finish(&c);
        return 1;
    }
    int status;
    if (jsonl) {
        status = run_jsonl(&c);
    } else {
        size_t len = 0;
        char *text = read_file(conv_path, &len);
        if (!text) {
            tmpl_ctx_finish(&c);
            return 1;
        }
        cJSON *res = NULL;
        status = render_one(&c, text, len, &res);
        free(text);
        status |= print_result(res);
        cJSON_Delete(res);
    }
    tmpl_ctx_finish(&c);
    return status;
}
