/* `zmlx demo`'s text generation: the prompt's bytes, then one byte at a
 * time sampled (temperature, top-k, seeded) from the model's last-position
 * logits, by recomputing the whole window each step. */
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

static double uniform01(uint64_t *s) {
  *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
  return (double)(*s >> 11) * 0x1.0p-53;
}

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

zmlx_status demo_generate(demo_run *r) {
  const int window = r->cfg->seq, n_new = r->cfg->sample_bytes;
  const size_t plen = strlen(r->prompt);
  int32_t *ctx = malloc(sizeof(int32_t) * (plen + (size_t)n_new + 1));
  float *logits = malloc(sizeof(float) * 256 * (size_t)window);
  r->sample = calloc((size_t)n_new + 1, 1);
  if (!ctx || !logits || !r->sample) {
    free(ctx), free(logits);
    return ZMLX_ERR_OUT_OF_MEMORY;
  }
  for (size_t i = 0; i < plen; i++) ctx[i] = (unsigned char)r->prompt[i];
  int len = (int)plen;
  uint64_t rng = r->seed * 0x2545F4914F6CDD1DULL + 7;
  zmlx_status st = ZMLX_OK;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int step = 0; step < n_new && st == ZMLX_OK; step++) {
    int start = len > window ? len - window : 0, S = len - start;
    int64_t sh[2] = {1, S};
    zmlx_array *tok = NULL, *out = NULL;
    st = zmlx_array_from_host(r->dev, ZMLX_I32, 2, sh, ctx + start, &tok);
    if (st == ZMLX_OK) st = zmlx_lm_logits(r->lm, NULL, tok, &out);
    if (st == ZMLX_OK) st = zmlx_array_to_host(out, logits, sizeof(float) * 256 * (size_t)S);
    zmlx_array_release(tok), zmlx_array_release(out);
    if (st != ZMLX_OK) break;
    int b = sample_byte(logits + 256 * (size_t)(S - 1), 0.8, 40, &rng);
    ctx[len++] = b;
    r->sample[step] = (char)(b >= 32 && b < 127 ? b : b == '\n' ? '\n' : '?');
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
  r->decode_tokens_per_s = s > 0 ? n_new / s : 0;
  free(ctx), free(logits);
  return st;
}
