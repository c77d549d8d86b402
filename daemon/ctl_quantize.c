/* ctl_quantize.c - `inferctl model quantize SRC DST [--bits 4|8] [--group-size 64]`:
 * writes an MLX-format affine-quantized copy of a float checkpoint
 * (core/model/quant_checkpoint.h), with a progress bar when stderr is a terminal. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "model/quant.h"
#include "model/quant_checkpoint.h"
#include "base/clock.h"

static void quantize_usage(FILE *f)
{
    fprintf(f,
            "Usage: inferctl model quantize SRC_DIR DST_DIR [--bits N] [--group-size G]\n"
            "Writes an MLX-format affine-quantized checkpoint (U32 codes + scales/biases per\n"
            "group) of the F32/F16/BF16 checkpoint in SRC_DIR, loadable by inferd and MLX.\n"
            "  --bits N         2, 3, 4, 6 or 8 (default 4)\n"
            "  --group-size G   values per scale/bias pair: 32, 64 or 128 ... (default 64)\n");
}

struct bar {
    bool tty;
    int last_pct;
};

/* One line redrawn in place: [#####.....]  42%  123.4/293.0 MB  tensor */
static void draw_progress(void *ctx, uint64_t done, uint64_t total, const char *tensor)
{
    struct bar *b = ctx;
    if (!b->tty || total == 0)
        return;
    int pct = (int)(done * 100 / total);
    const int width = 30;
    int fill = (int)(done * width / total);
    char bar[32];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r\033[K[%s] %3d%%  %.1f/%.1f MB  %.60s", bar, pct, (double)done / 1e6,
            (double)total / 1e6, tensor);
    fflush(stderr);
    b->last_pct = pct;
}

static bool parse_int(const char *s, int lo, int hi, int *ret)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi)
        return false;
    *ret = (int)v;
    return true;
}

int ctl_model_quantize_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"bits", required_argument, NULL, 'b'},
        {"group-size", required_argument, NULL, 'g'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int bits = 4, gs = QUANT_DEFAULT_GROUP_SIZE, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "b:g:h", opts, NULL)) != -1) {
        switch (c) {
        case 'b':
            if (!parse_int(optarg, 1, 32, &bits)) {
                fprintf(stderr, "inferctl model quantize: bad --bits '%s'\n", optarg);
                return 2;
            }
            break;
        case 'g':
            if (!parse_int(optarg, 1, QUANT_MAX_GROUP_SIZE, &gs)) {
                fprintf(stderr, "inferctl model quantize: bad --group-size '%s' (1..%d)\n", optarg,
                        QUANT_MAX_GROUP_SIZE);
                return 2;
            }
            break;
        case 'h':
            quantize_usage(stdout);
            return 0;
        default:
            quantize_usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 2) {
        quantize_usage(stderr);
        return 2;
    }
    if (!quant_layout_supported(bits, gs)) {
        fprintf(stderr, "inferctl model quantize: %d bits with group size %d is not supported "
                        "(bits 2, 3, 4, 6 or 8; group size a multiple of 32 up to %d)\n",
                bits, gs, QUANT_MAX_GROUP_SIZE);
        return 2;
    }
    const char *src = argv[optind], *dst = argv[optind + 1];
    struct bar b = {.tty = isatty(STDERR_FILENO) == 1, .last_pct = -1};
    const double t0 = ifd_now_s();
    ifd_error err = {{0}};
    int r = quant_checkpoint_write(src, dst, bits, gs, draw_progress, &b, &err);
    if (b.tty && b.last_pct >= 0)
        fprintf(stderr, "\n");
    if (r < 0) {
        fprintf(stderr, "inferctl model quantize: %s\n", err.msg);
        return 1;
    }
    double s = ifd_now_s() - t0;
    printf("wrote %s: MLX affine %d-bit, group size %d, in %.2f s\n", dst, bits, gs, s);
    return 0;
}
