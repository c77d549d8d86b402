/* chat_template.c - the public chat_template API: compile a template,
 * render it over a cJSON context or a conversation given as JSON text. The
 * interpreter behind it is described in jinja-internal.h. */
#include "text/template/chat_template.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "jinja-internal.h"

#define TEMPLATE_MAX_SOURCE (4u << 20)     /* bytes of template source */

const char chat_template_chatml[] =
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

struct chat_template {
    struct jtemplate t;
};

/* ---- API ---- */

int chat_template_compile(const char *source, size_t len, chat_template **ret, ifd_error *err)
{
    if (!source)
        return ifd_error_set(err, -EINVAL, "template: no source");
    if (len > TEMPLATE_MAX_SOURCE)
        return ifd_error_set(err, -EFBIG, "template: %zu bytes exceeds the %u byte limit", len, TEMPLATE_MAX_SOURCE);
    if (memchr(source, '\0', len))
        return ifd_error_set(err, -EINVAL, "template: contains a NUL byte");
    chat_template *t = calloc(1, sizeof(*t));
    if (!t)
        return ifd_error_set(err, -ENOMEM, "template: out of memory");
    /* Compile memory: the AST is a small multiple of the source. */
    t->t.arena = jarena_create((size_t)64 * len + (1u << 20));
    char *src = t->t.arena ? jarena_alloc(t->t.arena, len + 1) : NULL;
    if (!src) {
        chat_template_destroy(t);
        return ifd_error_set(err, -ENOMEM, "template: out of memory");
    }
    /* Jinja2 first turns "\r\n" and "\r" into "\n" in the whole source; line
     * numbers stay the same. */
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (source[i] == '\r') {
            src[k++] = '\n';
            if (i + 1 < len && source[i + 1] == '\n')
                i++;
        } else {
            src[k++] = source[i];
        }
    }
    src[k] = '\0';
    t->t.src = src;
    t->t.len = k;
    char msg[IFD_ERROR_MSG_MAX];
    msg[0] = '\0';
    int rc = jinja_parse(&t->t, msg, sizeof(msg));
    if (rc < 0) {
        chat_template_destroy(t);
        return ifd_error_set(err, rc, "%s", msg);
    }
    *ret = t;
    return 0;
}

void chat_template_destroy(chat_template *t)
{
    if (!t)
        return;
    jarena_destroy(t->t.arena);
    free(t);
}

/* Runs the template over `globals` and hands the text out; destroys the
 * render's arena in every case. */
static int render_finish(const chat_template *t, struct render *r, char **ret_text, size_t *ret_len,
                         size_t **ret_spans, size_t *ret_n_spans)
{
    /* The template's own top level is a scope above the context, so `set`
     * at top level shadows a context variable, as in Jinja2. */
    struct frame *top = jr_frame_new(r, r->globals);
    struct jbuf *out = &r->text;
    int rc = top ? jr_exec_body(r, t->t.root, top) : -ENOMEM;
    if (rc < 0) {
        if (!r->err_set)
            jr_fail(r, NULL, rc);
        jarena_destroy(r->arena);
        return rc == -EFBIG || rc == -ENOMEM ? rc : -EINVAL;
    }
    char *text = malloc(out->n + 1);
    size_t ns = out->taint.n;
    size_t *spans = ret_spans && ns ? malloc(2 * ns * sizeof(*spans)) : NULL;
    if (!text || (ret_spans && ns && !spans)) {
        free(text);
        free(spans);
        jarena_destroy(r->arena);
        return ifd_error_set(r->err, -ENOMEM, "template: out of memory");
    }
    if (out->n)
        memcpy(text, out->p, out->n);
    text[out->n] = '\0';
    if (spans)
        memcpy(spans, out->taint.v, 2 * ns * sizeof(*spans));
    size_t n = out->n;
    jarena_destroy(r->arena);
    *ret_text = text;
    if (ret_len)
        *ret_len = n;
    if (ret_spans) {
        *ret_spans = spans;
        *ret_n_spans = ns;
    }
    return 0;
}

static int render_begin(const chat_template *t, struct render *r, ifd_error *err)
{
    r->t = &t->t;
    r->err = err;
    r->arena = jarena_create(RENDER_MAX_ARENA);
    if (!r->arena)
        return ifd_error_set(err, -ENOMEM, "template: out of memory");
    r->text = jr_buf(r);
    r->out = &r->text;
    r->globals = jr_frame_new(r, NULL);
    if (!r->globals) {
        jarena_destroy(r->arena);
        return ifd_error_set(err, -ENOMEM, "template: out of memory");
    }
    return 0;
}

/* Sets each member of a JSON object as a global variable. */
static int set_json_globals(struct render *r, const cJSON *obj)
{
    int rc = 0;
    for (const cJSON *c = obj ? obj->child : NULL; c && rc == 0; c = c->next) {
        struct jv v;
        if (c->string && (rc = jv_from_json(r->arena, c, &v)) == 0)
            rc = jr_frame_set(r, r->globals, (struct jstr){c->string, strlen(c->string)}, v);
    }
    return rc;
}

int chat_template_render(const chat_template *t, const cJSON *context, char **ret_text, size_t *ret_len, ifd_error *err)
{
    return chat_template_render_untrusted(t, context, NULL, ret_text, ret_len, NULL, NULL, err);
}

/* Marks the global `name` untrusted, all of it. */
static int taint_global(struct render *r, const char *name)
{
    struct jv *v = jr_frame_get(r->globals, (struct jstr){name, strlen(name)});
    r->untrusted = true;
    if (!v)
        return 0;
    return strcmp(name, "messages") == 0 ? jv_taint_messages(v) : jv_taint_all(v);
}

int chat_template_render_untrusted(const chat_template *t, const cJSON *context, const char *const *untrusted,
                                   char **ret_text, size_t *ret_len, size_t **ret_spans, size_t *ret_n_spans,
                                   ifd_error *err)
{
    if (!t || !context || !cJSON_IsObject(context))
        return ifd_error_set(err, -EINVAL, "template: context must be a JSON object");
    struct render r = {.stack_base = __builtin_frame_address(0)};
    int rc = render_begin(t, &r, err);
    if (rc < 0)
        return rc;
    rc = set_json_globals(&r, context);
    for (size_t i = 0; untrusted && untrusted[i] && rc == 0; i++)
        rc = taint_global(&r, untrusted[i]);
    if (rc < 0) {
        jarena_destroy(r.arena);
        return ifd_error_set(err, rc, "template: context too large for the render memory limit");
    }
    return render_finish(t, &r, ret_text, ret_len, ret_spans, ret_n_spans);
}

/* A special token given as "text" or {"content": "text"}. */
static struct jv special_token_value(struct jv v)
{
    if (v.kind == JV_DICT) {
        struct jv *c = jdict_get(v.d, "content", 7);
        if (c)
            return *c;
    }
    return v;
}

int chat_template_render_conversation(const chat_template *t, const char *json, size_t len, const cJSON *defaults,
                                      char **ret_text, size_t *ret_len, ifd_error *err)
{
    return chat_template_render_conversation_untrusted(t, json, len, defaults, ret_text, ret_len, NULL, NULL, err);
}

int chat_template_render_conversation_untrusted(const chat_template *t, const char *json, size_t len,
                                                const cJSON *defaults, char **ret_text, size_t *ret_len,
                                                size_t **ret_spans, size_t *ret_n_spans, ifd_error *err)
{
    if (!t || !json)
        return ifd_error_set(err, -EINVAL, "conversation: no template or no text");
    if (defaults && !cJSON_IsObject(defaults))
        return ifd_error_set(err, -EINVAL, "conversation: defaults must be a JSON object");
    struct render r = {.stack_base = __builtin_frame_address(0)};
    int rc = render_begin(t, &r, err);
    if (rc < 0)
        return rc;
    struct jv conv;
    size_t off = 0;
    const char *what = NULL;
    const char *problem = NULL;
    rc = jv_parse_json(r.arena, json, len, &conv, &off, &what);
    if (rc == -EINVAL) {
        jarena_destroy(r.arena);
        return ifd_error_set(err, -EINVAL, "conversation: invalid JSON at byte %zu: %s", off, what);
    }
    struct jv *messages = NULL, *agp = NULL, *kwargs = NULL, *special = NULL;
    if (rc == 0 && conv.kind != JV_DICT) {
        problem = "must be a JSON object";
    } else if (rc == 0) {
        messages = jdict_get(conv.d, "messages", 8);
        agp = jdict_get(conv.d, "add_generation_prompt", 21);
        kwargs = jdict_get(conv.d, "kwargs", 6);
        special = jdict_get(conv.d, "special_tokens", 14);
        if (!messages || messages->kind != JV_LIST)
            problem = "needs a \"messages\" array";
        else if (agp && agp->kind != JV_BOOL)
            problem = "\"add_generation_prompt\" must be true or false";
        else if (kwargs && kwargs->kind != JV_DICT)
            problem = "\"kwargs\" must be an object";
        else if (special && special->kind != JV_DICT)
            problem = "\"special_tokens\" must be an object";
    }
    if (problem) {
        jarena_destroy(r.arena);
        return ifd_error_set(err, -EINVAL, "conversation: %s", problem);
    }
    /* Context order as apply_chat_template: special tokens, then kwargs, then
     * messages and add_generation_prompt. */
    if (rc == 0)
        rc = set_json_globals(&r, defaults);
    for (size_t i = 0; special && i < special->d->n && rc == 0; i++)
        rc = jr_frame_set(&r, r.globals, special->d->keys[i], special_token_value(special->d->vals[i]));
    /* The request's text is untrusted: the messages and the kwargs (tools,
     * documents: what a client sends beside them); the special tokens are
     * the model's. Taint is tracked only when the caller asks for the ranges:
     * it never changes the text. */
    r.untrusted = ret_spans != NULL;
    if (r.untrusted && rc == 0)
        rc = jv_taint_messages(messages);
    if (r.untrusted && kwargs && rc == 0)
        rc = jv_taint_all(kwargs);
    for (size_t i = 0; kwargs && i < kwargs->d->n && rc == 0; i++)
        rc = jr_frame_set(&r, r.globals, kwargs->d->keys[i], kwargs->d->vals[i]);
    if (rc == 0)
        rc = jr_frame_set(&r, r.globals, (struct jstr){"messages", 8}, *messages);
    if (rc == 0)
        rc = jr_frame_set(&r, r.globals, (struct jstr){"add_generation_prompt", 21}, agp ? *agp : jv_bool(false));
    if (rc < 0) {
        jarena_destroy(r.arena);
        return ifd_error_set(err, rc, "conversation: too large for the render memory limit");
    }
    return render_finish(t, &r, ret_text, ret_len, ret_spans, ret_n_spans);
}

