/* sampler.c - logits to the next token.
 *
 * Order, as in Hugging Face generate(): penalties (repetition over prompt and
 * output, presence/frequency over the output), then greedy argmax when
 * temperature is 0, else temperature, top-k, top-p, min-p and a draw from
 * xoshiro256** seeded through splitmix64. Every buffer is allocated at
 * create; sampling allocates nothing. */
#include "model/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct cand {
    int32_t id;
    float logit;  /* after penalties and temperature */
};

struct sampler {
    struct sampler_params p;
    int n_vocab;
    uint32_t *prompt_seen;    /* [n_vocab] times seen in the prompt */
    uint32_t *gen_count;      /* [n_vocab] times generated */
    int32_t *seen_ids;        /* [n_vocab] distinct ids seen, in first-seen order */
    int n_seen;
    struct cand *cand;        /* [n_vocab] scratch */
    uint64_t rng[4];          /* xoshiro256** state */
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* uniform in [0, 1) with 53 bits */
static double rng_uniform(sampler *s)
{
    return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53;
}

struct sampler_params sampler_params_default(void)
{
    return (struct sampler_params){
        .temperature = 0.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repetition_penalty = 1.0f,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .seed = 0,
    };
}

sampler *sampler_create(const struct sampler_params *p, int n_vocab)
{
    if (n_vocab <= 0)
        return NULL;
    sampler *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->prompt_seen = calloc((size_t)n_vocab, sizeof(*s->prompt_seen));
    s->gen_count = calloc((size_t)n_vocab, sizeof(*s->gen_count));
    s->seen_ids = calloc((size_t)n_vocab, sizeof(*s->seen_ids));
    s->cand = calloc((size_t)n_vocab, sizeof(*s->cand));
    if (!s->prompt_seen || !s->gen_count || !s->seen_ids || !s->cand) {
        sampler_destroy(s);
        return NULL;
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    return s;
}

void sampler_destroy(sampler *s)
{
    if (!s)
        return;
    free(s->prompt_seen);
    free(s->gen_count);
    free(s->seen_ids);
    free(s->cand);
    free(s);
}

void sampler_accept(sampler *s, int32_t token, bool generated)
{
    if (token < 0 || token >= s->n_vocab)
        return;
    if (s->prompt_seen[token] == 0 && s->gen_count[token] == 0)
        s->seen_ids[s->n_seen++] = token;
    if (generated)
        s->gen_count[token]++;
    else
        s->prompt_seen[token]++;
}

static void apply_penalties(sampler *s, float *logits)
{
    const struct sampler_params *p = &s->p;
    bool rep = p->repetition_penalty != 1.0f && p->repetition_penalty > 0.0f;
    bool pres = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    if (!rep && !pres)
        return;
    for (int i = 0; i < s->n_seen; i++) {
        int32_t t = s->seen_ids[i];
        float l = logits[t];
        if (rep) /* CTRL / HF: shrink toward zero whichever side it is on */
            l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
        uint32_t c = s->gen_count[t];
        if (pres && c > 0) /* OpenAI: on generated tokens only */
            l -= p->presence_penalty + p->frequency_penalty * (float)c;
        logits[t] = l;
    }
}

static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Total order: higher logit first, then lower id. */
static inline bool cand_before(const struct cand *a, const struct cand *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb)
{
    const struct cand *a = pa, *b = pb;
    return cand_before(a, b) ? -1 : cand_before(b, a) ? 1 : 0;
}

/* Moves c[j] down the heap c[0..k) whose root is the worst kept candidate,
 * until neither child is worse than it. */
static inline void heap_sift_down(struct cand *c, int k, int j)
{
    for (;;) {
        int l = 2 * j + 1, r = l + 1, w = j;
        if (l < k && cand_before(&c[w], &c[l]))
            w = l;
        if (r < k && cand_before(&c[w], &c[r]))
            w = r;
        if (w == j)
            return;
        struct cand t = c[j]; c[j] = c[w]; c[w] = t;
        j = w;
    }
}

/* Keeps the k best of c[0..n) in c[0..k), sorted best first: a min-heap of the
 * k best so far, O(n log k). */
static void top_k_select(struct cand *c, int n, int k)
{
    /* heap in c[0..k): root is the worst of the kept */
    for (int i = k / 2 - 1; i >= 0; i--)
        heap_sift_down(c, k, i);
    for (int i = k; i < n; i++) {
        if (!cand_before(&c[i], &c[0]))
            continue;
        c[0] = c[i];
        heap_sift_down(c, k, 0);
    }
    qsort(c, (size_t)k, sizeof(*c), cand_cmp);
}

int32_t sampler_sample(sampler *s, float *logits)
{
    const struct sampler_params *p = &s->p;
    int n = s->n_vocab;
    apply_penalties(s, logits);
    if (!(p->temperature > 0.0f))
        return argmax(logits, n);

    struct cand *c = s->cand;
    float inv_t = 1.0f / p->temperature;
    for (int i = 0; i < n; i++)
        c[i] = (struct cand){i, logits[i] * inv_t};
    bool sorted = false;
    if (p->top_k > 0 && p->top_k < n) {
        top_k_select(c, n, p->top_k);
        n = p->top_k;
        sorted = true;
    }

    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        mx = c[i].logit > mx ? c[i].logit : mx;
    /* c[i].logit becomes the unnormalised probability from here on */
    double sum = 0;
    for (int i = 0; i < n; i++) {
        c[i].logit = expf(c[i].logit - mx);
        sum += c[i].logit;
    }

    if (p->top_p < 1.0f && p->top_p > 0.0f) {
        if (!sorted) {
            /* The nucleus is a prefix of the sorted order, so if the tokens
             * above a small threshold already hold top_p of the mass, sorting
             * them alone finds it; otherwise sort everything. */
            float thr = (float)(sum * 1e-5);
            int m = 0;
            double kept = 0;
            for (int i = 0; i < n; i++) {
                if (c[i].logit >= thr) {
                    kept += c[i].logit;
                    struct cand t = c[m]; c[m] = c[i]; c[i] = t;
                    m++;
                }
            }
            if (kept >= p->top_p * sum)
                n = m;
            qsort(c, (size_t)n, sizeof(*c), cand_cmp);
            sorted = true;
        }
        double cum = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += c[i].logit;
            if (cum >= p->top_p * sum) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }

    if (p->min_p > 0.0f) {
        /* relative to the best token, whose unnormalised probability is 1 */
        int m = 0;
        for (int i = 0; i < n; i++)
            if (c[i].logit >= p->min_p)
                c[m++] = c[i];
        n = m > 0 ? m : 1;
    }

    double total = 0;
    for (int i = 0; i < n; i++)
        total += c[i].logit;
    double r = rng_uniform(s) * total, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += c[i].logit;
        if (r < acc)
            return c[i].id;
    }
    return c[n - 1].id;
}

float sampler_logprob(const float *logits, int n_vocab, int32_t token, int n_top, int32_t *ret_top_ids,
                      float *ret_top_logprobs)
{
    float mx = -INFINITY;
    for (int i = 0; i < n_vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < n_vocab; i++)
        sum += exp((double)logits[i] - mx);
    float lse = mx + (float)log(sum);

    if (n_top > n_vocab)
        n_top = n_vocab;
    /* selection by repeated scan, each pass taking the best token ordered
     * after the previous pick (logit descending, id ascending): n_top is
     * small (OpenAI allows at most 20) */
    for (int k = 0; k < n_top; k++) {
        int32_t best = -1;
        for (int i = 0; i < n_vocab; i++) {
            if (k > 0) {
                int32_t prev = ret_top_ids[k - 1];
                if (!(logits[i] < logits[prev] || (logits[i] == logits[prev] && i > prev)))
                    continue;
            }
            if (best < 0 || logits[i] > logits[best])
                best = i;
        }
        if (best < 0) {
            n_top = k;
            break;
        }
        ret_top_ids[k] = best;
        ret_top_logprobs[k] = logits[best] - lse;
    }
    if (token < 0 || token >= n_vocab)
        return -INFINITY;
    return logits[token] - lse;
}
