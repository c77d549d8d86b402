/* rope.c - see rope.h. */
#include "model/rope.h"

#include <math.h>

void rope_inv_freq(const struct model_config *cfg, double *ret)
{
    int half = cfg->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double inv = 1.0 / pow((double)cfg->rope_theta, (double)(2 * i) / cfg->head_dim);
        if (cfg->rope_scaling == MODEL_ROPE_LLAMA3) {
            /* long wavelengths are slowed by factor, short ones kept, the
             * band between blended linearly in 1 / wavelength */
            double factor = cfg->rope_factor, lo = cfg->rope_low_freq_factor, hi = cfg->rope_high_freq_factor;
            double old = cfg->rope_original_max_pos;
            double wavelen = 2 * M_PI / inv, lo_wl = old / lo, hi_wl = old / hi;
            if (wavelen > lo_wl) {
                inv = inv / factor;
            } else if (wavelen >= hi_wl) {
                double smooth = (old / wavelen - lo) / (hi - lo);
                inv = (1 - smooth) * inv / factor + smooth * inv;
            }
        }
        ret[i] = inv;
    }
}
