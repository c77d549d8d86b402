/* inferctl - the operator's command line.
 *
 * Local commands work on a model directory with no daemon (run, tokenize,
 * detokenize, template, model); client commands talk to a running inferd over
 * its HTTP API (status, models, chat). */
#include <stdio.h>
#include <string.h>

#include "ctl.h"
#include "inferd-build-config.h"

struct ctl_command {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *summary;
};

static const struct ctl_command commands[] = {
    /* Entries are added here as their subcommand files land. */
    {"model", ctl_model_main, "generate, quantize or describe (info) checkpoints"},
    {"run", ctl_run_main, "generate locally, without a daemon"},
    {"template", ctl_template_main, "render a chat template"},
    {"tokenize", ctl_tokenize_main, "text to token ids, locally (tokenizer.json)"},
    {"detokenize", ctl_detokenize_main, "token ids to text, locally (tokenizer.json)"},
    {"status", ctl_status_main, "what a running inferd is doing (--json for scripts)"},
    {"models", ctl_models_main, "the models a running inferd serves"},
    {"chat", ctl_chat_main, "an interactive, streaming conversation with a running inferd"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: inferctl COMMAND [ARGS...]\n\nCommands:\n");
    for (const struct ctl_command *c = commands; c->name; c++)
        fprintf(f, "  %-12s %s\n", c->name, c->summary);
    fprintf(f, "\nRun 'inferctl COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("inferctl %s\n", INFERD_VERSION);
        return 0;
    }
    for (const struct ctl_command *c = commands; c->name; c++)
        if (strcmp(argv[1], c->name) == 0)
            return c->main(argc - 1, argv + 1);
    fprintf(stderr, "inferctl: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
