/* ctl_model.c - `inferctl model generate|quantize|info|pull|list|rm`: make and
 * describe checkpoints, and manage the Hugging Face cache (pull, list, rm:
 * ctl_hub.c).
 *
 *   inferctl model generate --preset NAME [--dtype bf16|f16|f32] [--seed N]
 *                           [--layers N] [--shards N] [--tokenizer-from DIR] OUT_DIR
 *
 * writes a random-weight checkpoint with the shapes of a real model (see
 * core/model/model_gen.h), for speed measurements. `quantize` is implemented in
 * ctl_quantize.c, `info` in ctl_model_info.c. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "model/model_gen.h"
#include "base/clock.h"

static void generate_usage(FILE *f)
{
    fprintf(f,
            "Usage: inferctl model generate --preset NAME [OPTIONS] OUT_DIR\n\n"
            "Writes config.json and model.safetensors with random weights shaped like NAME.\n\n"
            "  --preset NAME         model shape (see the list below)\n"
            "  --dtype bf16|f16|f32  stored weight type (default bf16)\n"
            "  --seed N              PRNG seed (default 0); same seed, same bytes\n"
            "  --layers N            override the preset's layer count\n"
            "  --shards N            write N shards model-0000k-of-0000N.safetensors and\n"
            "                        model.safetensors.index.json instead of model.safetensors\n"
            "  --tokenizer-from DIR  copy tokenizer.json and tokenizer_config.json from DIR\n\n"
            "Presets:");
    for (size_t i = 0; model_gen_preset_name(i); i++)
        fprintf(f, " %s", model_gen_preset_name(i));
    fprintf(f, "\n");
}

static int parse_u64(const char *s, uint64_t *ret)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || *s == '-')
        return -EINVAL;
    *ret = v;
    return 0;
}

static int generate_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"preset", required_argument, NULL, 'p'},
        {"dtype", required_argument, NULL, 'd'},
        {"seed", required_argument, NULL, 's'},
        {"layers", required_argument, NULL, 'l'},
        {"shards", required_argument, NULL, 'S'},
        {"tokenizer-from", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct model_gen_options opt = {.dtype = IFD_DTYPE_BF16};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        uint64_t v;
        switch (c) {
        case 'p':
            opt.preset = optarg;
            break;
        case 'd':
            if (strcasecmp(optarg, "bf16") == 0)
                opt.dtype = IFD_DTYPE_BF16;
            else if (strcasecmp(optarg, "f16") == 0)
                opt.dtype = IFD_DTYPE_F16;
            else if (strcasecmp(optarg, "f32") == 0)
                opt.dtype = IFD_DTYPE_F32;
            else {
                fprintf(stderr, "inferctl model generate: unknown dtype '%s' (bf16, f16 or f32)\n", optarg);
                return 2;
            }
            break;
        case 's':
            if (parse_u64(optarg, &opt.seed) < 0) {
                fprintf(stderr, "inferctl model generate: bad seed '%s'\n", optarg);
                return 2;
            }
            break;
        case 'l':
            if (parse_u64(optarg, &v) < 0 || v < 1 || v > 1024) {
                fprintf(stderr, "inferctl model generate: bad layer count '%s' (1..1024)\n", optarg);
                return 2;
            }
            opt.n_layers = (int)v;
            break;
        case 'S':
            if (parse_u64(optarg, &v) < 0 || v < 1 || v > MODEL_GEN_MAX_SHARDS) {
                fprintf(stderr, "inferctl model generate: bad shard count '%s' (1..%d)\n", optarg,
                        MODEL_GEN_MAX_SHARDS);
                return 2;
            }
            opt.n_shards = (int)v;
            break;
        case 't':
            opt.tokenizer_from = optarg;
            break;
        case 'h':
            generate_usage(stdout);
            return 0;
        default:
            generate_usage(stderr);
            return 2;
        }
    }
    if (!opt.preset || optind != argc - 1) {
        generate_usage(stderr);
        return 2;
    }
    const char *out = argv[optind];
    const double t0 = ifd_now_s();
    ifd_error err = {{0}};
    uint64_t bytes = 0;
    int r = model_gen_write(out, &opt, &bytes, &err);
    if (r < 0) {
        fprintf(stderr, "inferctl model generate: %s\n", err.msg);
        return 1;
    }
    double s = ifd_now_s() - t0;
    printf("wrote %s: preset %s, %s, seed %llu, %.1f MB of weights", out, opt.preset, ifd_dtype_name(opt.dtype),
           (unsigned long long)opt.seed, (double)bytes / 1e6);
    if (opt.n_shards > 1)
        printf(" in %d shards", opt.n_shards);
    printf(" in %.2f s\n", s);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: inferctl model generate ...   random-weight checkpoint of a known shape\n"
               "       inferctl model quantize SRC DST   MLX 4/8-bit copy of a checkpoint\n"
               "       inferctl model info NAME          shape, parameters, bytes per token, memory per node\n"
               "       inferctl model pull ORG/NAME[@REV]   download into the Hugging Face cache\n"
               "       inferctl model list               models in the Hugging Face cache\n"
               "       inferctl model rm ORG/NAME[@REV]  remove one from the cache\n"
               "Run 'inferctl model SUBCOMMAND --help' for the options.\n");
}

int ctl_model_main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "generate") == 0)
        return generate_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "quantize") == 0)
        return ctl_model_quantize_main(argc - 1, argv + 1); /* ctl_quantize.c */
    if (strcmp(argv[1], "info") == 0)
        return ctl_model_info_main(argc - 1, argv + 1); /* ctl_model_info.c */
    if (strcmp(argv[1], "pull") == 0 || strcmp(argv[1], "list") == 0 || strcmp(argv[1], "rm") == 0)
        return ctl_model_hub_main(argc - 1, argv + 1); /* ctl_hub.c */
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "inferctl model: unknown subcommand '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
