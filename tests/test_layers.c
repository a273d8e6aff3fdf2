/* The layer objects (src/nn/layer*.c) on every device: each kind's forward
 * against an f64 host reference computed from the layer's own (downloaded)
 * parameters, in f32 and bf16; each kind's gradient to every parameter and
 * to x by the gradient checker (central differences); a one-layer zmlx_lm
 * equal to its layers applied by hand with the model's arrays; bad
 * configurations and inputs refused with messages naming the values. */
#include "test_support.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------ host references */

/* y [N, M] = x [N, K] w [K, M] */
static double *ref_matmul(const double *x, const double *w, int64_t N, int64_t K, int64_t M) {
  double *y = calloc((size_t)(N * M), sizeof *y);
  for (int64_t n = 0; n < N; n++)
    for (int64_t k = 0; k < K; k++)
      for (int64_t m = 0; m < M; m++) y[n * M + m] += x[n * K + k] * w[k * M + m];
  return y;
}

static double *ref_rmsnorm(const double *x, const double *w, int64_t N, int64_t D, double eps) {
  double *y = malloc(sizeof *y * (size_t)(N * D));
  for (int64_t n = 0; n < N; n++) {
    double ss = 0;
    for (int64_t d = 0; d < D; d++) ss += x[n * D + d] * x[n * D + d];
    const double r = 1 / sqrt(ss / (double)D + eps);
    for (int64_t d = 0; d < D; d++) y[n * D + d] = x[n * D + d] * r * w[d];
  }
  return y;
}

static double silu(double g) { return g / (1 + exp(-g)); }

/* Half-split RoPE in place on rows [B S, H hd], token s of each sequence at
 * position s. */
static void ref_rope(double *x, int64_t B, int64_t S, int64_t H, int64_t hd, double base) {
  for (int64_t r = 0; r < B * S; r++)
    for (int64_t h = 0; h < H; h++) {
      double *v = x + (r * H + h) * hd;
      for (int64_t i = 0; i < hd / 2; i++) {
        const double a = (double)(r % S) * pow(base, -2.0 * (double)i / (double)hd);
        const double x1 = v[i], x2 = v[i + hd / 2];
        v[i] = x1 * cos(a) - x2 * sin(a);
        v[i + hd / 2] = x2 * cos(a) + x1 * sin(a);
      }
    }
}

typedef struct dims {
  int64_t B, S, D, H, Hkv, F;
  int E, K;
  double base, eps;
} dims;

/* Causal GQA attention of rows h [B S, D] with w = wq, wk, wv, wo. */
static double *ref_attention(const dims *d, const double *h, double *const *w) {
  const int64_t hd = d->D / d->H, N = d->B * d->S, G = d->H / d->Hkv;
  double *q = ref_matmul(h, w[0], N, d->D, d->H * hd);
  double *k = ref_matmul(h, w[1], N, d->D, d->Hkv * hd);
  double *v = ref_matmul(h, w[2], N, d->D, d->Hkv * hd);
  ref_rope(q, d->B, d->S, d->H, hd, d->base);
  ref_rope(k, d->B, d->S, d->Hkv, hd, d->base);
  double *a = calloc((size_t)(N * d->H * hd), sizeof *a), *p = malloc(sizeof *p * (size_t)d->S);
  for (int64_t b = 0; b < d->B; b++)
    for (int64_t hq = 0; hq < d->H; hq++)
      for (int64_t i = 0; i < d->S; i++) {
        const double *qi = q + ((b * d->S + i) * d->H + hq) * hd;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j <= i; j++) {
          const double *kj = k + ((b * d->S + j) * d->Hkv + hq / G) * hd;
          double s = 0;
          for (int64_t e = 0; e < hd; e++) s += qi[e] * kj[e];
          p[j] = s / sqrt((double)hd);
          mx = fmax(mx, p[j]);
        }
        for (int64_t j = 0; j <= i; j++) sum += p[j] = exp(p[j] - mx);
        double *ai = a + ((b * d->S + i) * d->H + hq) * hd;
        for (int64_t j = 0; j <= i; j++) {
          const double *vj = v + ((b * d->S + j) * d->Hkv + hq / G) * hd;
          for (int64_t e = 0; e < hd; e++) ai[e] += p[j] / sum * vj[e];
        }
      }
  double *y = ref_matmul(a, w[3], N, d->H * hd, d->D);
  free(q), free(k), free(v), free(a), free(p);
  return y;
}

/* SwiGLU MLP of rows h [N, D]: w = w1, w3 [D, F], w2 [F, D]. */
static double *ref_mlp(const dims *d, const double *h, int64_t N, double *const *w) {
  double *g = ref_matmul(h, w[0], N, d->D, d->F), *u = ref_matmul(h, w[1], N, d->D, d->F);
  for (int64_t i = 0; i < N * d->F; i++) g[i] = silu(g[i]) * u[i];
  double *y = ref_matmul(g, w[2], N, d->F, d->D);
  free(g), free(u);
  return y;
}

/* MoE of rows h [N, D]: softmax over router logits, the top K (ties to the
 * lower expert) renormalised, SwiGLU experts w1, w3 [E, F, D], w2 [E, D, F]. */
static double *ref_moe(const dims *d, const double *h, int64_t N, double *const *w) {
  const int64_t D = d->D, F = d->F;
  double *y = calloc((size_t)(N * D), sizeof *y), *pr = malloc(sizeof *pr * (size_t)d->E);
  double *a = malloc(sizeof *a * (size_t)F);
  for (int64_t n = 0; n < N; n++) {
    const double *x = h + n * D;
    double mx = -INFINITY, kept = 0;
    for (int e = 0; e < d->E; e++) {
      pr[e] = 0;
      for (int64_t i = 0; i < D; i++) pr[e] += x[i] * w[0][e * D + i];
      mx = fmax(mx, pr[e]);
    }
    /* the softmax's denominator cancels in the renormalisation */
    for (int e = 0; e < d->E; e++) pr[e] = exp(pr[e] - mx);
    int chosen[8];
    for (int j = 0; j < d->K; j++) {
      int best = -1;
      for (int e = 0; e < d->E; e++) {
        int taken = 0;
        for (int t = 0; t < j; t++) taken |= chosen[t] == e;
        if (!taken && (best < 0 || pr[e] > pr[best])) best = e;
      }
      chosen[j] = best;
      kept += pr[best];
    }
    for (int j = 0; j < d->K; j++) {
      const int e = chosen[j];
      for (int64_t f = 0; f < F; f++) {
        double g = 0, u = 0;
        for (int64_t i = 0; i < D; i++) {
          g += w[1][(e * F + f) * D + i] * x[i];
          u += w[2][(e * F + f) * D + i] * x[i];
        }
        a[f] = silu(g) * u;
      }
      for (int64_t i = 0; i < D; i++) {
        double o = 0;
        for (int64_t f = 0; f < F; f++) o += w[3][(e * D + i) * F + f] * a[f];
        y[n * D + i] += pr[e] / kept * o;
      }
    }
  }
  free(pr), free(a);
  return y;
}

static void add_into(double *x, const double *y, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

/* A pre-norm block on rows x [B S, D] (w: the block's list). */
static double *ref_block(const dims *d, const double *x, double *const *w) {
  const int64_t N = d->B * d->S, D = d->D;
  double *out = malloc(sizeof *out * (size_t)(N * D));
  memcpy(out, x, sizeof *out * (size_t)(N * D));
  double *h = ref_rmsnorm(out, w[0], N, D, d->eps), *a = ref_attention(d, h, w + 1);
  add_into(out, a, N * D);
  free(h), free(a);
  h = ref_rmsnorm(out, w[5], N, D, d->eps);
  double *f = d->E ? ref_moe(d, h, N, w + 6) : ref_mlp(d, h, N, w + 6);
  add_into(out, f, N * D);
  free(h), free(f);
  return out;
}

/* ------------------------------------------------------------- harness */

typedef struct layer_case {
  const char *what;
  zmlx_layer_kind kind;
  dims d;
  int bias;
} layer_case;

static zmlx_layer_config config_of(const layer_case *lc, zmlx_device *dev, zmlx_dtype dt) {
  const dims *d = &lc->d;
  zmlx_layer_config c = {.struct_size = sizeof c, .kind = lc->kind, .dim = d->D, .vocab = d->F,
                         .in_features = d->D, .out_features = d->F, .bias = lc->bias,
                         .heads = (int)d->H, .kv_heads = (int)d->Hkv, .ffn_dim = d->F,
                         .experts = d->E, .top_k = d->K, .rope_base = d->base,
                         .norm_eps = d->eps, .init_std = 0.5, .seed = zt_seed(), .dtype = dt,
                         .device = dev};
  return c;
}

/* The input of a case: ids for an embedding, else x [B, S, D] (B S rows). */
static zmlx_array *input_of(const layer_case *lc, zmlx_device *dev, zmlx_dtype dt, uint64_t *rng) {
  const dims *d = &lc->d;
  const int64_t n = d->B * d->S;
  if (lc->kind == ZMLX_LAYER_EMBEDDING) {
    int32_t ids[64];
    int64_t sh[2] = {d->B, d->S};
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)((i * 7 + (int64_t)(*rng % 5)) % d->F);
    zmlx_array *a = NULL;
    ZT_OK(zmlx_array_from_host(dev, ZMLX_I32, 2, sh, ids, &a));
    return a;
  }
  float *x = malloc(sizeof *x * (size_t)(n * d->D));
  zt_fill_uniform(x, (size_t)(n * d->D), -1.5f, 1.5f, rng);
  int64_t sh[3] = {d->B, d->S, d->D};
  zmlx_array *a = zt_array(dev, dt, 3, sh, x);
  free(x);
  return a;
}

/* The reference output of case lc for input x and parameters p (host). */
static double *reference(const layer_case *lc, zmlx_array *x, double *const *p) {
  const dims *d = &lc->d;
  const int64_t N = d->B * d->S;
  double *h = zt_download(x), *y = NULL;
  switch (lc->kind) {
  case ZMLX_LAYER_EMBEDDING:
    y = malloc(sizeof *y * (size_t)(N * d->D));
    for (int64_t i = 0; i < N; i++) memcpy(y + i * d->D, p[0] + (int64_t)h[i] * d->D, sizeof *y * (size_t)d->D);
    break;
  case ZMLX_LAYER_LINEAR:
    y = ref_matmul(h, p[0], N, d->D, d->F);
    for (int64_t i = 0; lc->bias && i < N * d->F; i++) y[i] += p[1][i % d->F];
    break;
  case ZMLX_LAYER_RMSNORM: y = ref_rmsnorm(h, p[0], N, d->D, d->eps); break;
  case ZMLX_LAYER_ATTENTION: y = ref_attention(d, h, p); break;
  case ZMLX_LAYER_MLP: y = ref_mlp(d, h, N, p); break;
  case ZMLX_LAYER_MOE: y = ref_moe(d, h, N, p); break;
  case ZMLX_LAYER_BLOCK: y = ref_block(d, h, p); break;
  }
  free(h);
  return y;
}

static const layer_case CASES[] = {
    {"embedding", ZMLX_LAYER_EMBEDDING, {.B = 2, .S = 5, .D = 6, .F = 11}, 0},
    {"linear", ZMLX_LAYER_LINEAR, {.B = 2, .S = 3, .D = 7, .F = 5}, 0},
    {"linear + bias", ZMLX_LAYER_LINEAR, {.B = 1, .S = 4, .D = 9, .F = 3}, 1},
    {"rmsnorm", ZMLX_LAYER_RMSNORM, {.B = 3, .S = 2, .D = 10, .eps = 1e-5}, 0},
    {"attention (GQA)", ZMLX_LAYER_ATTENTION, {.B = 2, .S = 5, .D = 16, .H = 4, .Hkv = 2, .base = 100}, 0},
    {"attention (MHA)", ZMLX_LAYER_ATTENTION, {.B = 1, .S = 7, .D = 8, .H = 2, .Hkv = 2, .base = 10000}, 0},
    {"mlp", ZMLX_LAYER_MLP, {.B = 2, .S = 3, .D = 6, .F = 10}, 0},
    {"moe top-2 of 4", ZMLX_LAYER_MOE, {.B = 2, .S = 4, .D = 8, .F = 6, .E = 4, .K = 2}, 0},
    {"block, mlp", ZMLX_LAYER_BLOCK, {.B = 2, .S = 4, .D = 8, .H = 2, .Hkv = 1, .F = 12, .base = 10000, .eps = 1e-5}, 0},
    {"block, moe", ZMLX_LAYER_BLOCK, {.B = 1, .S = 6, .D = 8, .H = 2, .Hkv = 2, .F = 6, .E = 3, .K = 2, .base = 500, .eps = 1e-5}, 0},
};
#define N_CASES ((int)(sizeof CASES / sizeof CASES[0]))

static int64_t out_width(const layer_case *lc) {
  return lc->kind == ZMLX_LAYER_LINEAR ? lc->d.F : lc->d.D;
}

static void forward_case(zmlx_device *dev, const layer_case *lc, int salt, zmlx_dtype dt) {
  zmlx_layer_config c = config_of(lc, dev, dt);
  zmlx_layer *l = NULL;
  ZT_OK(zmlx_layer_create(&c, &l));
  int n = 0;
  zmlx_array *const *params = NULL;
  ZT_OK(zmlx_layer_parameters(l, &n, &params, NULL));
  double *p[16];
  for (int i = 0; i < n; i++) p[i] = zt_download(params[i]);
  uint64_t rng = zt_seed() ^ (uint64_t)salt * 977u;
  zmlx_array *x = input_of(lc, dev, dt, &rng), *y = NULL;
  ZT_OK(zmlx_layer_forward(l, NULL, x, &y));
  const int64_t N = lc->d.B * lc->d.S, W = out_width(lc);
  assert_int_equal(zmlx_array_ndim(y), zmlx_array_ndim(x) + (lc->kind == ZMLX_LAYER_EMBEDDING));
  assert_int_equal(zmlx_array_size(y), N * W);
  assert_int_equal(zmlx_array_dtype(y), dt);
  double *got = zt_download(y), *want = reference(lc, x, p), scale = 0;
  for (int64_t i = 0; i < N * W; i++) scale = fmax(scale, fabs(want[i]));
  /* f32: rounding of sums of a few terms; bf16: every op's output rounded */
  const double tol = dt == ZMLX_F32 ? 2e-5 : 4e-2;
  char what[96];
  snprintf(what, sizeof what, "%s (%s)", lc->what, zmlx_dtype_name(dt));
  zt_assert_close(got, want, (size_t)(N * W), tol * fmax(scale, 1), tol, what);
  free(got), free(want);
  for (int i = 0; i < n; i++) free(p[i]);
  zmlx_array_release(x), zmlx_array_release(y);
  zmlx_layer_destroy(l);
}

static void forward_all(zmlx_device *dev) {
  for (int i = 0; i < N_CASES; i++) forward_case(dev, &CASES[i], i, ZMLX_F32);
}

static void forward_bf16(zmlx_device *dev) {
  for (int i = 0; i < N_CASES; i++) {
    layer_case lc = CASES[i];
    /* bf16 router logits can tie where f64 does not: every expert chosen */
    if (lc.d.E) lc.d.K = lc.d.E;
    forward_case(dev, &lc, i, ZMLX_BF16);
  }
}

/* sum(layer(params, x) * cotangent): the checker's scalar */
typedef struct grad_ctx {
  zmlx_layer *layer;
  int n_params;
  zmlx_array *cot;
} grad_ctx;

static zmlx_status weighted_sum(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  grad_ctx *g = ud;
  zmlx_array *y = NULL, *yc = NULL;
  zmlx_status st = zmlx_layer_forward(g->layer, in, in[g->n_params], &y);
  if (st == ZMLX_OK) st = zmlx_mul(y, g->cot, &yc);
  if (st == ZMLX_OK) st = zmlx_sum(yc, NULL, 0, 0, out);
  zmlx_array_release(y), zmlx_array_release(yc);
  return st;
}

static void gradient_case(zmlx_device *dev, const layer_case *lc, int salt) {
  zmlx_layer_config c = config_of(lc, dev, ZMLX_F32);
  zmlx_layer *l = NULL;
  ZT_OK(zmlx_layer_create(&c, &l));
  int n = 0;
  zmlx_array *const *params = NULL;
  ZT_OK(zmlx_layer_parameters(l, &n, &params, NULL));
  uint64_t rng = zt_seed() ^ 0x9E37u ^ (uint64_t)salt;
  zmlx_array *in[16];
  memcpy(in, params, sizeof *in * (size_t)n);
  in[n] = input_of(lc, dev, ZMLX_F32, &rng);
  const int64_t N = lc->d.B * lc->d.S, W = out_width(lc);
  float *cv = malloc(sizeof *cv * (size_t)(N * W));
  zt_fill_uniform(cv, (size_t)(N * W), -1, 1, &rng);
  int64_t cs[3] = {lc->d.B, lc->d.S, W};
  grad_ctx g = {l, n, zt_array(dev, ZMLX_F32, 3, cs, cv)};
  zmlx_grad_check_report r;
  ZT_OK(zmlx_check_grad(weighted_sum, &g, in, n + 1, 1e-3, 1e-2, &r));
  const char *const *names = NULL;
  ZT_OK(zmlx_layer_parameters(l, NULL, NULL, &names));
  for (int i = 0; i <= n; i++)
    if (r.inputs[i].checked && !r.inputs[i].passed)
      fail_msg("%s: gradient of %s: element %lld analytic %.6g vs numeric %.6g", lc->what,
               i < n ? names[i] : "x", (long long)r.inputs[i].worst_index, r.inputs[i].analytic,
               r.inputs[i].numeric);
  if (r.jvp_checked && !r.jvp_passed)
    fail_msg("%s: JVP %.6g vs numeric %.6g", lc->what, r.jvp_analytic, r.jvp_numeric);
  assert_true(r.passed);
  assert_int_equal(r.inputs[n].checked, lc->kind != ZMLX_LAYER_EMBEDDING);
  free(cv);
  zmlx_array_release(in[n]), zmlx_array_release(g.cot);
  zmlx_layer_destroy(l);
}

static void gradients_all(zmlx_device *dev) {
  for (int i = 0; i < N_CASES; i++) {
    layer_case lc = CASES[i];
    /* every expert chosen: no routing choice flips under the step */
    if (lc.d.E) lc.d.K = lc.d.E;
    gradient_case(dev, &lc, i);
  }
}


/* Row r of layer(x) for x = the first len rows of seq (full recomputation,
 * the causal forward over [1, len, dim]): out[0 .. dim). */
static void recompute_row(zmlx_layer *l, zmlx_device *dev, const float *seq, int64_t len,
                          int64_t dim, int64_t r, double *out) {
  int64_t sh[3] = {1, len, dim};
  zmlx_array *x = zt_array(dev, ZMLX_F32, 3, sh, seq), *y = NULL;
  ZT_OK(zmlx_layer_forward(l, NULL, x, &y));
  double *all = zt_download(y);
  memcpy(out, all + r * dim, sizeof *out * (size_t)dim);
  free(all);
  zmlx_array_release(x), zmlx_array_release(y);
}

/* Two sequences through an attention or block layer and the paged cache
 * (cache layer 1 of 2): prefills of 5 and 3 tokens, then 4 decode steps of
 * both; every output row equal to the row of the full causal forward. */
static void cached_case(zmlx_device *dev, const layer_case *lc, int salt) {
  const dims *d = &lc->d;
  zmlx_layer_config c = config_of(lc, dev, ZMLX_F32);
  zmlx_layer *l = NULL;
  zmlx_kv_cache *cache = NULL;
  ZT_OK(zmlx_layer_create(&c, &l));
  zmlx_kv_cache_desc kd = {.struct_size = sizeof kd, .layers = 2, .kv_heads = (int)d->Hkv,
                           .head_dim = (int)(d->D / d->H), .block_size = 8, .num_blocks = 8,
                           .dtype = ZMLX_F32, .device = dev};
  ZT_OK(zmlx_kv_cache_create(&kd, &cache));
  enum { STEPS = 4, MAXLEN = 5 + STEPS };
  const int64_t D = d->D, prompt[2] = {5, 3};
  int64_t seq[2], len[2] = {0, 0};
  float *tok[2];
  uint64_t rng = zt_seed() ^ 0xCAC4Eu ^ (uint64_t)salt;
  double *want = malloc(sizeof *want * (size_t)D);
  for (int s = 0; s < 2; s++) {
    tok[s] = malloc(sizeof(float) * (size_t)(MAXLEN * D));
    zt_fill_uniform(tok[s], (size_t)(MAXLEN * D), -1.5f, 1.5f, &rng);
    ZT_OK(zmlx_kv_cache_add_sequence(cache, &seq[s]));
    int64_t sh[2] = {prompt[s], D};
    zmlx_array *x = zt_array(dev, ZMLX_F32, 2, sh, tok[s]), *y = NULL;
    ZT_OK(zmlx_kv_cache_extend(cache, seq[s], prompt[s]));
    ZT_OK(zmlx_layer_prefill(l, cache, 1, seq[s], x, &y));
    len[s] = prompt[s];
    double *got = zt_download(y);
    for (int64_t r = 0; r < prompt[s]; r++) {
      recompute_row(l, dev, tok[s], len[s], D, r, want);
      zt_assert_close(got + r * D, want, (size_t)D, 2e-5, 2e-5, "prefill vs recompute");
    }
    free(got);
    zmlx_array_release(x), zmlx_array_release(y);
  }
  for (int step = 0; step < STEPS; step++) {
    float rows[2 * 64];
    for (int s = 0; s < 2; s++) {
      memcpy(rows + s * D, tok[s] + len[s] * D, sizeof(float) * (size_t)D);
      ZT_OK(zmlx_kv_cache_extend(cache, seq[s], 1));
      len[s]++;
    }
    int64_t sh[2] = {2, D};
    zmlx_array *x = zt_array(dev, ZMLX_F32, 2, sh, rows), *y = NULL;
    ZT_OK(zmlx_layer_decode(l, cache, 1, seq, x, &y));
    double *got = zt_download(y);
    for (int s = 0; s < 2; s++) {
      recompute_row(l, dev, tok[s], len[s], D, len[s] - 1, want);
      zt_assert_close(got + s * D, want, (size_t)D, 2e-5, 2e-5, "decode vs recompute");
    }
    free(got);
    zmlx_array_release(x), zmlx_array_release(y);
  }
  free(tok[0]), free(tok[1]), free(want);
  zmlx_kv_cache_destroy(cache);
  zmlx_layer_destroy(l);
}

static void cached_all(zmlx_device *dev) {
  for (int i = 0; i < N_CASES; i++)
    if (CASES[i].kind == ZMLX_LAYER_ATTENTION || CASES[i].kind == ZMLX_LAYER_BLOCK)
      cached_case(dev, &CASES[i], i);
}

/* zmlx_lm is its layers stacked: a two-layer MoE model's logits equal the
 * embedding, two blocks, the norm and a linear head applied by hand to the
 * model's own arrays. */
static void lm_is_its_layers(zmlx_device *dev) {
  zmlx_lm_config mc = {.struct_size = sizeof mc, .vocab = 13, .dim = 16, .layers = 2, .heads = 4,
                       .kv_heads = 2, .ffn_dim = 12, .experts = 3, .top_k = 2,
                       .seed = zt_seed(), .device = dev};
  zmlx_lm *lm = NULL;
  ZT_OK(zmlx_lm_create(&mc, &lm));
  int n = 0;
  zmlx_array *const *p = NULL;
  ZT_OK(zmlx_lm_parameters(lm, &n, &p, NULL));
  zmlx_layer_config base = {.struct_size = sizeof base, .dim = 16, .vocab = 13, .heads = 4,
                            .kv_heads = 2, .ffn_dim = 12, .experts = 3, .top_k = 2,
                            .in_features = 16, .out_features = 13, .device = dev};
  zmlx_layer *layer[4] = {NULL};
  const zmlx_layer_kind kinds[4] = {ZMLX_LAYER_EMBEDDING, ZMLX_LAYER_BLOCK, ZMLX_LAYER_RMSNORM,
                                    ZMLX_LAYER_LINEAR};
  for (int i = 0; i < 4; i++) {
    zmlx_layer_config c = base;
    c.kind = kinds[i];
    ZT_OK(zmlx_layer_create(&c, &layer[i]));
  }
  int per_block = 0;
  ZT_OK(zmlx_layer_parameters(layer[1], &per_block, NULL, NULL));
  assert_int_equal(n, 1 + 2 * per_block + 2);
  int32_t ids[2 * 5];
  for (int i = 0; i < 10; i++) ids[i] = (i * 5 + 3) % 13;
  int64_t sh[2] = {2, 5};
  zmlx_array *tok = NULL, *want = NULL, *x = NULL, *y = NULL, *logits = NULL;
  ZT_OK(zmlx_array_from_host(dev, ZMLX_I32, 2, sh, ids, &tok));
  ZT_OK(zmlx_lm_logits(lm, NULL, tok, &want));
  ZT_OK(zmlx_layer_forward(layer[0], p, tok, &x));
  for (int b = 0; b < 2; b++) {
    ZT_OK(zmlx_layer_forward(layer[1], p + 1 + b * per_block, x, &y));
    zmlx_array_release(x), x = y, y = NULL;
  }
  ZT_OK(zmlx_layer_forward(layer[2], p + n - 2, x, &y));
  ZT_OK(zmlx_layer_forward(layer[3], p + n - 1, y, &logits));
  double *g = zt_download(logits), *w = zt_download(want);
  assert_int_equal(zmlx_array_size(logits), zmlx_array_size(want));
  zt_assert_close(g, w, (size_t)zmlx_array_size(want), 1e-6, 1e-5, "lm logits vs its layers");
  free(g), free(w);
  zmlx_array *tmp[] = {tok, want, x, y, logits};
  for (int i = 0; i < 5; i++) zmlx_array_release(tmp[i]);
  for (int i = 0; i < 4; i++) zmlx_layer_destroy(layer[i]);
  zmlx_lm_destroy(lm);
}

static void bad_input(zmlx_device *dev) {
  zmlx_layer *l = NULL;
  zmlx_layer_config c = {.struct_size = sizeof c, .kind = ZMLX_LAYER_ATTENTION, .dim = 30,
                         .heads = 4, .device = dev};
  ZT_FAILS(zmlx_layer_create(&c, &l), ZMLX_ERR_INVALID_ARG, "dim 30 over 4 heads");
  c.dim = 32, c.kv_heads = 3;
  ZT_FAILS(zmlx_layer_create(&c, &l), ZMLX_ERR_INVALID_ARG, "kv heads 3");
  c.kind = ZMLX_LAYER_MOE, c.ffn_dim = 8, c.experts = 2, c.top_k = 3;
  ZT_FAILS(zmlx_layer_create(&c, &l), ZMLX_ERR_INVALID_ARG, "top_k 3 with 2 experts");
  c.kind = (zmlx_layer_kind)99;
  ZT_FAILS(zmlx_layer_create(&c, &l), ZMLX_ERR_INVALID_ARG, "kind 99");
  c.kind = ZMLX_LAYER_LINEAR, c.in_features = 0, c.out_features = 4;
  ZT_FAILS(zmlx_layer_create(&c, &l), ZMLX_ERR_INVALID_ARG, "in_features 0");
  c.in_features = 6, c.dtype = ZMLX_I32;
  ZT_FAILS(zmlx_layer_create(&c, &l), ZMLX_ERR_DTYPE, "i32");
  c.dtype = ZMLX_F32, c.struct_size = 3;
  ZT_FAILS(zmlx_layer_create(&c, &l), ZMLX_ERR_INVALID_ARG, "struct_size is 3");
  c.struct_size = sizeof c, c.init_std = -1;
  ZT_FAILS(zmlx_layer_create(&c, &l), ZMLX_ERR_INVALID_ARG, "init_std -1");
  c.init_std = 0;
  ZT_FAILS(zmlx_layer_create(NULL, &l), ZMLX_ERR_NULL_ARG, "in");
  ZT_FAILS(zmlx_layer_create(&c, NULL), ZMLX_ERR_NULL_ARG, "out");
  ZT_OK(zmlx_layer_destroy(NULL));

  ZT_OK(zmlx_layer_create(&c, &l)); /* linear 6 -> 4 */
  zmlx_array *x = NULL, *y = NULL, *w = NULL;
  int64_t xs[2] = {3, 5}, ws[2] = {4, 6};
  ZT_OK(zmlx_array_full(dev, ZMLX_F32, 2, xs, 1, &x));
  ZT_FAILS(zmlx_layer_forward(l, NULL, x, &y), ZMLX_ERR_SHAPE, "x [..., 6], got [3, 5]");
  assert_null(y);
  zmlx_array_release(x);
  ZT_OK(zmlx_array_full(dev, ZMLX_I32, 2, ws, 1, &x));
  ZT_FAILS(zmlx_layer_forward(l, NULL, x, &y), ZMLX_ERR_DTYPE, "float x, got i32");
  zmlx_array_release(x);
  ZT_OK(zmlx_array_full(dev, ZMLX_F32, 2, ws, 1, &w)); /* [4, 6]: the transpose */
  zmlx_array *ps[1] = {w};
  int64_t x6[2] = {2, 6};
  ZT_OK(zmlx_array_full(dev, ZMLX_F32, 2, x6, 1, &x));
  ZT_FAILS(zmlx_layer_forward(l, ps, x, &y), ZMLX_ERR_SHAPE, "params[0] (weight) is [4, 6], the linear layer's is [6, 4]");
  ps[0] = NULL;
  ZT_FAILS(zmlx_layer_forward(l, ps, x, &y), ZMLX_ERR_NULL_ARG, "params[0] (weight) is NULL");
  ZT_FAILS(zmlx_layer_forward(NULL, NULL, x, &y), ZMLX_ERR_NULL_ARG, "layer");
  ZT_FAILS(zmlx_layer_forward(l, NULL, NULL, &y), ZMLX_ERR_NULL_ARG, "x");
  ZT_FAILS(zmlx_layer_forward(l, NULL, x, NULL), ZMLX_ERR_NULL_ARG, "out");
  ZT_OK(zmlx_layer_forward(l, NULL, x, &y)); /* the right shape works */
  assert_int_equal(zmlx_array_shape(y)[1], 4);
  zmlx_kv_cache *cache = NULL;
  zmlx_kv_cache_desc kd = {.struct_size = sizeof kd, .layers = 1, .kv_heads = 2, .head_dim = 4,
                           .block_size = 8, .num_blocks = 2, .dtype = ZMLX_F32, .device = dev};
  ZT_OK(zmlx_kv_cache_create(&kd, &cache));
  int64_t seqs[2];
  ZT_OK(zmlx_kv_cache_add_sequence(cache, &seqs[0]));
  seqs[1] = seqs[0];
  zmlx_array *y2 = NULL;
  ZT_FAILS(zmlx_layer_prefill(l, cache, 0, seqs[0], x, &y2), ZMLX_ERR_INVALID_ARG,
           "a linear layer has no KV cache");
  zmlx_array_release(y), zmlx_array_release(x), zmlx_array_release(w);
  zmlx_layer_destroy(l);

  zmlx_layer_config a = {.kind = ZMLX_LAYER_BLOCK, .dim = 8, .heads = 2, .ffn_dim = 4, .device = dev};
  ZT_OK(zmlx_layer_create(&a, &l));
  ZT_OK(zmlx_array_full(dev, ZMLX_F32, 2, (int64_t[]){4, 8}, 0.5, &x));
  ZT_FAILS(zmlx_layer_forward(l, NULL, x, &y), ZMLX_ERR_SHAPE, "takes x [batch, seq, 8], got [4, 8]");
  ZT_FAILS(zmlx_layer_prefill(l, cache, 0, seqs[0], x, &y), ZMLX_ERR_INVALID_ARG,
           "holds 0 tokens, fewer than the 4 new ones");
  ZT_FAILS(zmlx_layer_decode(l, cache, 0, seqs, x, &y), ZMLX_ERR_INVALID_ARG, "appears twice");
  ZT_FAILS(zmlx_layer_decode(l, cache, 0, NULL, x, &y), ZMLX_ERR_NULL_ARG, "seqs");
  ZT_FAILS(zmlx_layer_prefill(l, NULL, 0, seqs[0], x, &y), ZMLX_ERR_NULL_ARG, "cache");
  zmlx_array_release(x);
  ZT_OK(zmlx_array_full(dev, ZMLX_F32, 3, (int64_t[]){1, 4, 8}, 0.5, &x));
  ZT_FAILS(zmlx_layer_prefill(l, cache, 0, seqs[0], x, &y), ZMLX_ERR_SHAPE,
           "takes float rows x [n, 8] (n >= 1), got [1, 4, 8] f32");
  zmlx_kv_cache_destroy(cache);
  zmlx_layer_config got;
  ZT_OK(zmlx_layer_get_config(l, &got));
  assert_int_equal(got.kv_heads, 2);
  assert_true(got.norm_eps == 1e-5 && got.init_std == 0.02 && got.dtype == ZMLX_F32);
  zmlx_array_release(x);
  zmlx_layer_destroy(l);
}

static void test_forward_f32(void **s) { (void)s; zt_for_each_device(forward_all); }
static void test_forward_bf16(void **s) { (void)s; zt_for_each_device(forward_bf16); }
static void test_gradients(void **s) { (void)s; zt_for_each_device(gradients_all); }
static void test_cached(void **s) { (void)s; zt_for_each_device(cached_all); }
static void test_lm_is_its_layers(void **s) { (void)s; zt_for_each_device(lm_is_its_layers); }
static void test_bad_input(void **s) { (void)s; zt_for_each_device(bad_input); }

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_f32),      cmocka_unit_test(test_forward_bf16),
      cmocka_unit_test(test_gradients),        cmocka_unit_test(test_lm_is_its_layers),
      cmocka_unit_test(test_cached),           cmocka_unit_test(test_bad_input),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
