/* `zmlx demo`'s text generation through the paged KV cache: the prompt
 * prefilled, then one byte at a time sampled (temperature 0.8, top-k 40,
 * seeded) from the decode step's logits. Also the loss-curve points. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "demo.h"

void demo_curve_add(demo_run *r, int step, double loss, double val) {
  if (r->n_curve == r->cap_curve) {
    int cap = r->cap_curve ? 2 * r->cap_curve : 256;
    demo_point *p = realloc(r->curve, sizeof *p * (size_t)cap);
    if (!p) return;
    r->curve = p;
    r->cap_curve = cap;
  }
  r->curve[r->n_curve++] = (demo_point){step, loss, val};
}

static double uniform01(uint64_t *s) { return (double)(demo_next_u64(s) >> 11) * 0x1.0p-53; }

/* A byte from logits[256]: softmax(logits / temperature) over the top k. */
static int sample_byte(const float *logits, double temperature, int k, uint64_t *rng) {
  int idx[256];
  for (int i = 0; i < 256; i++) idx[i] = i;
  for (int i = 0; i < k; i++) /* partial selection sort: the top k first */
    for (int j = i + 1; j < 256; j++)
      if (logits[idx[j]] > logits[idx[i]]) {
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
      }
  double w[256], sum = 0;
  for (int i = 0; i < k; i++) sum += w[i] = exp((logits[idx[i]] - logits[idx[0]]) / temperature);
  double u = uniform01(rng) * sum;
  for (int i = 0; i < k; i++)
    if ((u -= w[i]) <= 0) return idx[i];
  return idx[k - 1];
}

static double seconds_since(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0->tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0->tv_nsec);
}

/* The next byte from logits [1, 256] on the device. */
static zmlx_status sample_from(zmlx_array *logits, uint64_t *rng, int *b) {
  float host[256];
  DEMO_TRY(zmlx_array_to_host(logits, host, sizeof host));
  *b = sample_byte(host, 0.8, 40, rng);
  return ZMLX_OK;
}

/* Prefill ctx[from, to) into a fresh sequence of the cache (the previous
 * one, if any, freed): its keys and values at positions 0 .. to - from. */
static zmlx_status refill(demo_run *r, zmlx_kv_cache *cache, int64_t *seq, const int32_t *ctx,
                          int from, int to, zmlx_array **logits) {
  zmlx_array *tok = NULL;
  int64_t n = to - from;
  if (*seq >= 0) DEMO_TRY(zmlx_kv_cache_free_sequence(cache, *seq));
  DEMO_TRY(zmlx_kv_cache_add_sequence(cache, seq));
  DEMO_TRY(zmlx_array_from_host(r->dev, ZMLX_I32, 1, &n, ctx + from, &tok));
  zmlx_status st = zmlx_lm_prefill(r->lm, cache, *seq, tok, logits);
  zmlx_array_release(tok);
  return st;
}

/* The prompt through zmlx_lm_prefill (keys and values into the paged cache),
 * then one byte at a time through zmlx_lm_decode (PagedAttention, the MoE
 * decode path). The model was trained on windows of cfg->seq bytes, so
 * positions stay below that: when the context fills the window its last
 * half is prefilled into a fresh sequence and decoding goes on from there. */
zmlx_status demo_generate(demo_run *r) {
  const int n_new = r->cfg->sample_bytes, window = r->cfg->seq, block = 16;
  size_t plen = strlen(r->prompt);
  if (plen == 0) return ZMLX_ERR_INVALID_ARG;
  if (plen > (size_t)window / 2) plen = (size_t)window / 2; /* the prompt's first bytes */
  r->prompt_used = (int)plen;
  int32_t *ctx = malloc(sizeof(int32_t) * (plen + (size_t)n_new + 1));
  r->sample = calloc((size_t)n_new + 1, 1);
  if (!ctx || !r->sample) {
    free(ctx);
    return ZMLX_ERR_OUT_OF_MEMORY;
  }
  for (size_t i = 0; i < plen; i++) ctx[i] = (unsigned char)r->prompt[i];
  zmlx_kv_cache *cache = NULL;
  zmlx_array *tok = NULL, *logits = NULL;
  int64_t seq = -1;
  int len = (int)plen, start = 0, b = 0; /* the cache holds ctx[start, len) */
  uint64_t rng = r->seed * 0x2545F4914F6CDD1DULL + 7;
  struct timespec t0;
  zmlx_status st = zmlx_lm_kv_cache_create(r->lm, window / block + 2, block, &cache);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (st == ZMLX_OK) st = refill(r, cache, &seq, ctx, 0, len, &logits);
  if (st == ZMLX_OK) st = sample_from(logits, &rng, &b);
  r->prefill_tokens_per_s = (double)plen / seconds_since(&t0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int step = 0; step < n_new && st == ZMLX_OK; step++) {
    r->sample[step] = (char)(b >= 32 && b < 127 ? b : b == '\n' ? '\n' : '?');
    ctx[len++] = b;
    if (step + 1 == n_new) break;
    zmlx_array_release(logits);
    logits = NULL;
    if (len - start > window - 1) { /* the window is full: keep its last half */
      start = len - window / 2;
      st = refill(r, cache, &seq, ctx, start, len, &logits);
    } else {
      int64_t one = 1;
      int32_t last = b;
      zmlx_array_release(tok);
      tok = NULL;
      st = zmlx_array_from_host(r->dev, ZMLX_I32, 1, &one, &last, &tok);
      if (st == ZMLX_OK) st = zmlx_lm_decode(r->lm, cache, &seq, tok, &logits);
    }
    if (st == ZMLX_OK) st = sample_from(logits, &rng, &b);
  }
  double s = seconds_since(&t0);
  r->decode_tokens_per_s = s > 0 ? (n_new - 1) / s : 0;
  zmlx_array_release(tok), zmlx_array_release(logits);
  zmlx_kv_cache_destroy(cache);
  free(ctx);
  return st;
}
