/* The language model (src/nn/lm.c) on every device: the loss at
 * initialisation is ln(vocab) (near-zero logits), the gradient of every
 * parameter against central finite differences along random directions
 * (a dense model and an MoE one with k = experts, so no routing choice can
 * flip under the step), 20 AdamW steps that fit a fixed batch, and bad
 * input. Each layer's op is checked against f64 references by the catalog
 * (test_catalog). Generation through the paged cache (prefill, batched
 * decode) against recomputing each whole sequence. */
#include "test_support.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static zmlx_lm_config tiny(zmlx_device *dev, int experts, int top_k) {
  zmlx_lm_config c = {.struct_size = sizeof c, .vocab = 13, .dim = 16, .layers = 2, .heads = 4,
                      .kv_heads = 2, .ffn_dim = 12, .experts = experts, .top_k = top_k,
                      .seed = zt_seed(), .device = dev};
  return c;
}

/* tokens and next-token targets [B, S] from a seeded stream of ids */
static void batch(zmlx_device *dev, int B, int S, int vocab, uint64_t seed, zmlx_array **tokens,
                  zmlx_array **targets) {
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)(B * (S + 1)));
  int32_t *tok = malloc(sizeof(int32_t) * (size_t)(B * S)), *tgt = malloc(sizeof(int32_t) * (size_t)(B * S));
  uint64_t s = seed | 1;
  for (int i = 0; i < B * (S + 1); i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    ids[i] = (int32_t)(s % (uint64_t)vocab);
  }
  for (int b = 0; b < B; b++)
    for (int t = 0; t < S; t++) {
      tok[b * S + t] = ids[b * (S + 1) + t];
      tgt[b * S + t] = ids[b * (S + 1) + t + 1];
    }
  int64_t sh[2] = {B, S};
  ZT_OK(zmlx_array_from_host(dev, ZMLX_I32, 2, sh, tok, tokens));
  ZT_OK(zmlx_array_from_host(dev, ZMLX_I32, 2, sh, tgt, targets));
  free(ids), free(tok), free(tgt);
}

static double loss_of(zmlx_lm *lm, zmlx_array *const *params, zmlx_array *tok, zmlx_array *tgt) {
  zmlx_array *loss = NULL;
  double v = NAN;
  ZT_OK(zmlx_lm_loss(lm, params, tok, tgt, &loss));
  ZT_OK(zmlx_array_item(loss, 0, &v));
  zmlx_array_release(loss);
  return v;
}

static void initial_loss(zmlx_device *dev) {
  zmlx_lm_config c = tiny(dev, 4, 2);
  zmlx_lm *lm = NULL;
  zmlx_array *tok = NULL, *tgt = NULL, *logits = NULL;
  ZT_OK(zmlx_lm_create(&c, &lm));
  batch(dev, 3, 9, c.vocab, 7, &tok, &tgt);
  double l = loss_of(lm, NULL, tok, tgt);
  if (!(fabs(l - log(13.0)) < 0.05)) fail_msg("initial loss %g, expected ln(13) = %g", l, log(13.0));
  ZT_OK(zmlx_lm_logits(lm, NULL, tok, &logits));
  assert_int_equal(zmlx_array_ndim(logits), 3);
  assert_int_equal(zmlx_array_shape(logits)[2], 13);
  zmlx_array_release(logits), zmlx_array_release(tok), zmlx_array_release(tgt);
  zmlx_lm_destroy(lm);
}

/* d loss along direction d: analytic (grads . d) vs central differences. */
static void directional_check(zmlx_device *dev, int experts, int top_k) {
  zmlx_lm_config c = tiny(dev, experts, top_k);
  zmlx_lm *lm = NULL;
  zmlx_array *tok = NULL, *tgt = NULL, *loss = NULL;
  ZT_OK(zmlx_lm_create(&c, &lm));
  batch(dev, 2, 7, c.vocab, 11, &tok, &tgt);
  int n = 0;
  zmlx_array *const *params = NULL;
  ZT_OK(zmlx_lm_parameters(lm, &n, &params, NULL));
  zmlx_array **grads = calloc((size_t)n, sizeof *grads), **plus = calloc((size_t)n, sizeof *plus);
  zmlx_array **minus = calloc((size_t)n, sizeof *minus);
  ZT_OK(zmlx_lm_value_and_grad(lm, tok, tgt, &loss, grads));
  uint64_t rng = zt_seed() ^ 0xD1CEu;
  for (int dir = 0; dir < 3; dir++) {
    double analytic = 0;
    double **p = calloc((size_t)n, sizeof *p);
    float **d = calloc((size_t)n, sizeof *d);
    for (int i = 0; i < n; i++) {
      double *g = zt_download(grads[i]);
      int64_t m = zmlx_array_size(params[i]);
      p[i] = zt_download(params[i]);
      d[i] = malloc(sizeof(float) * (size_t)m);
      zt_fill_uniform(d[i], (size_t)m, -1, 1, &rng);
      for (int64_t j = 0; j < m; j++) analytic += g[j] * d[i][j];
      free(g);
    }
    /* central differences at h and h/2, Richardson-extrapolated: the h^2
     * truncation cancels, leaving O(h^4) and f32 rounding u32 |L| / h */
    double D[2];
    for (int k = 0; k < 2; k++) {
      const double h = k ? 1e-3 : 2e-3;
      for (int i = 0; i < n; i++) {
        int64_t m = zmlx_array_size(params[i]);
        float *pp = malloc(sizeof(float) * (size_t)m), *pm = malloc(sizeof(float) * (size_t)m);
        for (int64_t j = 0; j < m; j++) {
          pp[j] = (float)(p[i][j] + h * d[i][j]);
          pm[j] = (float)(p[i][j] - h * d[i][j]);
        }
        plus[i] = zt_array(dev, ZMLX_F32, zmlx_array_ndim(params[i]), zmlx_array_shape(params[i]), pp);
        minus[i] = zt_array(dev, ZMLX_F32, zmlx_array_ndim(params[i]), zmlx_array_shape(params[i]), pm);
        free(pp), free(pm);
      }
      D[k] = (loss_of(lm, plus, tok, tgt) - loss_of(lm, minus, tok, tgt)) / (2 * h);
      for (int i = 0; i < n; i++) zmlx_array_release(plus[i]), zmlx_array_release(minus[i]);
    }
    double numeric = (4 * D[1] - D[0]) / 3;
    double tol = 1e-3 * (1 + fabs(numeric));
    if (getenv("ZMLX_LM_DEBUG"))
      print_message("experts %d dir %d: %.7g vs %.7g (h: %.7g)\n", experts, dir, analytic, numeric, D[1]);
    if (!(fabs(analytic - numeric) <= tol))
      fail_msg("experts %d: direction %d: analytic %.6g vs finite differences %.6g (tol %.2g)",
               experts, dir, analytic, numeric, tol);
    for (int i = 0; i < n; i++) free(p[i]), free(d[i]);
    free(p), free(d);
  }
  for (int i = 0; i < n; i++) zmlx_array_release(grads[i]);
  free(grads), free(plus), free(minus);
  zmlx_array_release(loss), zmlx_array_release(tok), zmlx_array_release(tgt);
  zmlx_lm_destroy(lm);
}

static void gradients_dense(zmlx_device *dev) { directional_check(dev, 0, 0); }
static void gradients_moe(zmlx_device *dev) { directional_check(dev, 3, 3); }

static void fits_a_batch(zmlx_device *dev) {
  zmlx_lm_config c = tiny(dev, 4, 2);
  zmlx_lm *lm = NULL;
  zmlx_adamw *opt = NULL;
  zmlx_array *tok = NULL, *tgt = NULL;
  ZT_OK(zmlx_lm_create(&c, &lm));
  batch(dev, 4, 12, c.vocab, 5, &tok, &tgt);
  int n = 0;
  zmlx_array *const *params = NULL;
  ZT_OK(zmlx_lm_parameters(lm, &n, &params, NULL));
  ZT_OK(zmlx_adamw_create(params, n, NULL, &opt));
  zmlx_array **grads = calloc((size_t)n, sizeof *grads);
  double first = 0, last = 0;
  for (int step = 0; step < 20; step++) {
    zmlx_array *loss = NULL;
    ZT_OK(zmlx_lm_value_and_grad(lm, tok, tgt, &loss, grads));
    double v;
    ZT_OK(zmlx_array_item(loss, 0, &v));
    if (step == 0) first = v;
    last = v;
    ZT_OK(zmlx_adamw_update(opt, grads, n, 1e-2, NULL));
    for (int i = 0; i < n; i++) zmlx_array_release(grads[i]);
    zmlx_array_release(loss);
  }
  if (!(last < 0.7 * first)) fail_msg("20 steps on one batch: loss %g -> %g", first, last);
  free(grads);
  zmlx_adamw_destroy(opt);
  zmlx_array_release(tok), zmlx_array_release(tgt);
  zmlx_lm_destroy(lm);
}

/* Logits of the last position of ctx[0 .. len) by recomputing the whole
 * sequence (zmlx_lm_logits): the reference generation is checked against. */
static void recompute_last(zmlx_lm *lm, zmlx_device *dev, const int32_t *ctx, int len, float *out,
                           int vocab) {
  int64_t sh[2] = {1, len};
  zmlx_array *tok = NULL, *logits = NULL;
  ZT_OK(zmlx_array_from_host(dev, ZMLX_I32, 2, sh, ctx, &tok));
  ZT_OK(zmlx_lm_logits(lm, NULL, tok, &logits));
  float *all = malloc(sizeof(float) * (size_t)(len * vocab));
  ZT_OK(zmlx_array_to_host(logits, all, sizeof(float) * (size_t)(len * vocab)));
  memcpy(out, all + (size_t)(len - 1) * (size_t)vocab, sizeof(float) * (size_t)vocab);
  free(all);
  zmlx_array_release(tok), zmlx_array_release(logits);
}

static int argmax(const float *v, int n) {
  int b = 0;
  for (int i = 1; i < n; i++)
    if (v[i] > v[b]) b = i;
  return b;
}

static void expect_logits(const float *got, const float *want, int n, const char *what, int step) {
  double scale = 0;
  for (int i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
  for (int i = 0; i < n; i++)
    if (!(fabs(got[i] - want[i]) <= 2e-5 + 1e-4 * scale))
      fail_msg("%s step %d: logit %d %.7g, recomputed %.7g", what, step, i, got[i], want[i]);
}

/* Greedy generation through the paged cache (prefill + batched decode of
 * two sequences of different lengths, across block boundaries) gives the
 * logits, and so the tokens, of recomputing each whole sequence. */
static void decode_matches_recompute(zmlx_device *dev) {
  zmlx_lm_config c = tiny(dev, 4, 2);
  c.layers = 2;
  zmlx_lm *lm = NULL;
  zmlx_kv_cache *cache = NULL;
  zmlx_adamw *opt = NULL;
  zmlx_array *tok = NULL, *tgt = NULL;
  ZT_OK(zmlx_lm_create(&c, &lm));
  /* a few steps, so the logits are not all near zero */
  int n = 0;
  zmlx_array *const *params = NULL;
  ZT_OK(zmlx_lm_parameters(lm, &n, &params, NULL));
  ZT_OK(zmlx_adamw_create(params, n, NULL, &opt));
  zmlx_array **grads = calloc((size_t)n, sizeof *grads);
  batch(dev, 4, 12, c.vocab, 9, &tok, &tgt);
  for (int step = 0; step < 8; step++) {
    zmlx_array *loss = NULL;
    ZT_OK(zmlx_lm_value_and_grad(lm, tok, tgt, &loss, grads));
    ZT_OK(zmlx_adamw_update(opt, grads, n, 3e-2, NULL));
    for (int i = 0; i < n; i++) zmlx_array_release(grads[i]);
    zmlx_array_release(loss);
  }
  free(grads);
  zmlx_adamw_destroy(opt);
  zmlx_array_release(tok), zmlx_array_release(tgt);

  ZT_OK(zmlx_lm_kv_cache_create(lm, 16, 8, &cache));
  enum { STEPS = 12, V = 13 };
  int32_t ctx[2][64];
  int len[2] = {5, 11};
  int64_t seqs[2];
  float got[2 * V], want[V];
  uint64_t s = zt_seed() | 1;
  for (int q = 0; q < 2; q++) {
    for (int t = 0; t < len[q]; t++) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      ctx[q][t] = (int32_t)(s % V);
    }
    int64_t sh = len[q];
    zmlx_array *p = NULL, *logits = NULL;
    ZT_OK(zmlx_kv_cache_add_sequence(cache, &seqs[q]));
    ZT_OK(zmlx_array_from_host(dev, ZMLX_I32, 1, &sh, ctx[q], &p));
    ZT_OK(zmlx_lm_prefill(lm, cache, seqs[q], p, &logits));
    ZT_OK(zmlx_array_to_host(logits, got, sizeof(float) * V));
    recompute_last(lm, dev, ctx[q], len[q], want, V);
    expect_logits(got, want, V, "prefill", q);
    ctx[q][len[q]++] = argmax(got, V);
    zmlx_array_release(p), zmlx_array_release(logits);
  }
  for (int step = 0; step < STEPS; step++) {
    int32_t last[2] = {ctx[0][len[0] - 1], ctx[1][len[1] - 1]};
    int64_t two = 2;
    zmlx_array *t = NULL, *logits = NULL;
    ZT_OK(zmlx_array_from_host(dev, ZMLX_I32, 1, &two, last, &t));
    ZT_OK(zmlx_lm_decode(lm, cache, seqs, t, &logits));
    ZT_OK(zmlx_array_to_host(logits, got, sizeof(float) * 2 * V));
    for (int q = 0; q < 2; q++) {
      recompute_last(lm, dev, ctx[q], len[q], want, V);
      expect_logits(got + q * V, want, V, q ? "decode (seq 1)" : "decode (seq 0)", step);
      if (argmax(got + q * V, V) != argmax(want, V))
        fail_msg("decode step %d seq %d: greedy token %d, recomputed %d", step, q,
                 argmax(got + q * V, V), argmax(want, V));
      ctx[q][len[q]++] = argmax(got + q * V, V);
    }
    zmlx_array_release(t), zmlx_array_release(logits);
  }
  int64_t l0 = 0;
  ZT_OK(zmlx_kv_cache_length(cache, seqs[0], &l0));
  assert_int_equal(l0, len[0] - 1); /* the last sampled token is not in the cache yet */
  /* bad input: the same sequence twice, tokens of the wrong dtype */
  int64_t dup[2] = {seqs[0], seqs[0]}, two = 2;
  float ft[2] = {1, 2};
  zmlx_array *t = NULL, *tf = NULL, *logits = NULL;
  ZT_OK(zmlx_array_from_host(dev, ZMLX_I32, 1, &two, ctx[0], &t));
  ZT_OK(zmlx_array_from_host(dev, ZMLX_F32, 1, &two, ft, &tf));
  ZT_FAILS(zmlx_lm_decode(lm, cache, dup, t, &logits), ZMLX_ERR_INVALID_ARG, "appears twice");
  ZT_FAILS(zmlx_lm_decode(lm, cache, seqs, tf, &logits), ZMLX_ERR_SHAPE, "[n] i32");
  assert_null(logits);
  zmlx_array_release(t), zmlx_array_release(tf);
  zmlx_kv_cache_destroy(cache);
  zmlx_lm_destroy(lm);
}

/* A file's bytes, and writing bytes back. */
static unsigned char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  *n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(*n);
  assert_int_equal(fread(b, 1, *n, f), *n);
  fclose(f);
  return b;
}

static void spit(const char *path, const unsigned char *b, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, n, f), n);
  fclose(f);
}

/* zmlx_lm_save then zmlx_lm_load: the same configuration, every parameter
 * bit for bit, the same logits; truncated and corrupted files refused with
 * a message naming the problem. */
static void checkpoint_round_trip(zmlx_device *dev) {
  zmlx_lm_config c = tiny(dev, 4, 2);
  zmlx_lm *lm = NULL, *back = NULL;
  ZT_OK(zmlx_lm_create(&c, &lm));
  char path[256], bad[256];
  snprintf(path, sizeof path, "/tmp/zmlx_test_lm_%d.safetensors", (int)getpid());
  snprintf(bad, sizeof bad, "/tmp/zmlx_test_lm_%d_bad.safetensors", (int)getpid());
  ZT_OK(zmlx_lm_save(lm, path));
  ZT_OK(zmlx_lm_load(path, dev, &back));
  zmlx_lm_config c2;
  ZT_OK(zmlx_lm_get_config(back, &c2));
  assert_int_equal(c2.dim, c.dim);
  assert_int_equal(c2.experts, c.experts);
  assert_int_equal(c2.kv_heads, c.kv_heads);
  int n = 0, n2 = 0;
  zmlx_array *const *pa = NULL, *const *pb = NULL;
  const char *const *names = NULL;
  ZT_OK(zmlx_lm_parameters(lm, &n, &pa, &names));
  ZT_OK(zmlx_lm_parameters(back, &n2, &pb, NULL));
  assert_int_equal(n, n2);
  for (int i = 0; i < n; i++) {
    size_t bytes = zmlx_array_nbytes(pa[i]);
    assert_int_equal(bytes, zmlx_array_nbytes(pb[i]));
    unsigned char *x = malloc(bytes), *y = malloc(bytes);
    ZT_OK(zmlx_array_to_host(pa[i], x, bytes));
    ZT_OK(zmlx_array_to_host(pb[i], y, bytes));
    if (memcmp(x, y, bytes)) fail_msg("parameter %s differs after the round trip", names[i]);
    free(x), free(y);
  }
  zmlx_lm_destroy(back);
  back = NULL;

  size_t len = 0;
  unsigned char *file = slurp(path, &len);
  /* truncated data */
  spit(bad, file, len - 100);
  ZT_FAILS(zmlx_lm_load(bad, dev, &back), ZMLX_ERR_INVALID_ARG, "truncated or corrupt");
  /* truncated inside the header */
  spit(bad, file, 40);
  ZT_FAILS(zmlx_lm_load(bad, dev, &back), ZMLX_ERR_INVALID_ARG, "the header claims");
  /* not JSON */
  unsigned char *copy = malloc(len);
  memcpy(copy, file, len);
  copy[8] = '[';
  copy[9] = '}';
  spit(bad, copy, len);
  ZT_FAILS(zmlx_lm_load(bad, dev, &back), ZMLX_ERR_INVALID_ARG, "bad JSON header");
  /* a tensor of another shape than the configuration's */
  memcpy(copy, file, len);
  char *hit = strstr((char *)copy + 8, "\"embed\":{\"dtype\":\"F32\",\"shape\":[13,");
  assert_non_null(hit);
  hit[strlen("\"embed\":{\"dtype\":\"F32\",\"shape\":[") + 1] = '2'; /* 13 -> 12 */
  spit(bad, copy, len);
  ZT_FAILS(zmlx_lm_load(bad, dev, &back), ZMLX_ERR_SHAPE, "tensor 'embed'");
  /* a huge header length */
  memcpy(copy, file, len);
  copy[6] = 0x7f;
  spit(bad, copy, len);
  ZT_FAILS(zmlx_lm_load(bad, dev, &back), ZMLX_ERR_INVALID_ARG, "the header claims");
  /* a shape entry that is a string, not a number */
  memcpy(copy, file, len);
  hit = strstr((char *)copy + 8, "\"embed\":{\"dtype\":\"F32\",\"shape\":[13,");
  assert_non_null(hit);
  memcpy(hit + strlen("\"embed\":{\"dtype\":\"F32\",\"shape\":["), "\"\"", 2); /* 13 -> "" */
  spit(bad, copy, len);
  ZT_FAILS(zmlx_lm_load(bad, dev, &back), ZMLX_ERR_SHAPE, "tensor 'embed'");
  /* a 300-byte file whose configuration claims a 4-trillion-parameter model:
   * refused by its contents before anything of that size is allocated */
  const char *huge = "{\"__metadata__\":{\"zmlx.config\":\"{\\\"vocab\\\": 1000000000, "
                     "\\\"dim\\\": 4096, \\\"layers\\\": 100, \\\"heads\\\": 32, "
                     "\\\"kv_heads\\\": 8, \\\"ffn_dim\\\": 1000000, \\\"experts\\\": 0, "
                     "\\\"top_k\\\": 2, \\\"rope_base\\\": 10000.0, \\\"norm_eps\\\": 1e-5, "
                     "\\\"dtype\\\": \\\"bf16\\\"}\"}}";
  size_t hl = strlen(huge);
  unsigned char *small = calloc(1, 8 + hl);
  for (int i = 0; i < 8; i++) small[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  memcpy(small + 8, huge, hl);
  spit(bad, small, 8 + hl);
  ZT_FAILS(zmlx_lm_load(bad, dev, &back), ZMLX_ERR_INVALID_ARG, "tensor 'embed' is missing");
  free(small);
  ZT_FAILS(zmlx_lm_load("/nonexistent/zmlx.safetensors", dev, &back), ZMLX_ERR_IO, "cannot open");
  assert_null(back);
  free(copy), free(file);
  remove(path), remove(bad);
  zmlx_lm_destroy(lm);
}

static void bad_input(zmlx_device *dev) {
  zmlx_lm *lm = NULL;
  zmlx_lm_config c = tiny(dev, 4, 2);
  c.heads = 3;
  ZT_FAILS(zmlx_lm_create(&c, &lm), ZMLX_ERR_INVALID_ARG, "heads must divide dim");
  assert_null(lm);
  c = tiny(dev, 4, 5);
  ZT_FAILS(zmlx_lm_create(&c, &lm), ZMLX_ERR_INVALID_ARG, "top_k 5 with 4 experts");
  c = tiny(dev, 4, 2);
  c.struct_size = 3;
  ZT_FAILS(zmlx_lm_create(&c, &lm), ZMLX_ERR_INVALID_ARG, "struct_size");
  ZT_FAILS(zmlx_lm_create(NULL, &lm), ZMLX_ERR_NULL_ARG, NULL);
  c = tiny(dev, 4, 2);
  ZT_OK(zmlx_lm_create(&c, &lm));
  zmlx_array *tok = NULL, *tgt = NULL, *loss = NULL, *f = NULL, *short_tgt = NULL;
  batch(dev, 2, 5, c.vocab, 3, &tok, &tgt);
  int64_t sh[2] = {2, 5}, sh4[2] = {2, 4};
  ZT_OK(zmlx_array_zeros(dev, ZMLX_F32, 2, sh, &f));
  ZT_OK(zmlx_array_zeros(dev, ZMLX_I32, 2, sh4, &short_tgt));
  ZT_FAILS(zmlx_lm_loss(lm, NULL, f, tgt, &loss), ZMLX_ERR_SHAPE, "tokens must be [batch, seq] i32");
  ZT_FAILS(zmlx_lm_loss(lm, NULL, tok, short_tgt, &loss), ZMLX_ERR_SHAPE, "[2, 4]");
  assert_null(loss);
  zmlx_array_release(tok), zmlx_array_release(tgt), zmlx_array_release(f);
  zmlx_array_release(short_tgt);
  ZT_OK(zmlx_lm_destroy(lm));
  ZT_OK(zmlx_lm_destroy(NULL));
}

static void test_initial_loss(void **s) { (void)s; zt_for_each_device(initial_loss); }
static void test_gradients_dense(void **s) { (void)s; zt_for_each_device(gradients_dense); }
static void test_gradients_moe(void **s) { (void)s; zt_for_each_device(gradients_moe); }
static void test_fits_a_batch(void **s) { (void)s; zt_for_each_device(fits_a_batch); }
static void test_bad_input(void **s) { (void)s; zt_for_each_device(bad_input); }
static void test_checkpoint_round_trip(void **s) {
  (void)s;
  zt_for_each_device(checkpoint_round_trip);
}
static void test_decode_matches_recompute(void **s) {
  (void)s;
  zt_for_each_device(decode_matches_recompute);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_initial_loss),    cmocka_unit_test(test_gradients_dense),
      cmocka_unit_test(test_gradients_moe),   cmocka_unit_test(test_fits_a_batch),
      cmocka_unit_test(test_bad_input),       cmocka_unit_test(test_decode_matches_recompute),
      cmocka_unit_test(test_checkpoint_round_trip),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
