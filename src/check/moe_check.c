/* `zmlx check` and `zmlx bench` cases of src/nn/moe.c against per-token
 * loop references in f64 (moe_ref.c):
 *   moe        the layer (router matmul, gate, experts, shared expert),
 *              forward and the gradients of x, router and every weight, at
 *              1, 7, 64 and 513 tokens, 8 and 64 experts, k 1, 2, 8, both
 *              row forms; unrouted pairs in the per-pair and grouped rows;
 *   moe_quant  the experts on int8 / int4 weights against the host's
 *              dequantization, both read widths.
 * The gate's own cases are moe_route_check.c's.
 *
 * Bounds: every result is compared per element with an atol per unit of
 * the element's magnitude, computed by running the same reference on
 * absolute values with each nonlinearity replaced by a bound of its value
 * and slope (|silu(a)| <= |a|, |silu'| <= 1.1, |silu''| <= 0.5), so the
 * error a rounding anywhere upstream can cause is covered. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/check_util.h"
#include "check/moe_ref.h"
#include "nn/moe.h"

static const double U32 = 0x1p-24;

enum { L_X, L_ROUTER, L_W1, L_W3, L_W2, L_S1, L_S3, L_S2, L_COUNT };
static const char *const LAYER_NAME[L_COUNT] = {"x", "router", "w1", "w3", "w2",
                                                "shared_w1", "shared_w3", "shared_w2"};

typedef struct layer_dims {
  int64_t T, E, H, I, Is;
  int k, shared;
} layer_dims;

static int64_t layer_size(const layer_dims *d, int which) {
  switch (which) {
  case L_X: return d->T * d->H;
  case L_ROUTER: return d->E * d->H;
  case L_W1: case L_W3: case L_W2: return d->E * d->I * d->H;
  default: return d->Is * d->H;
  }
}

/* The layer's forward y and every gradient for the cotangent dy, per
 * token (mag: the magnitude network). lg: the logits, ix: the chosen
 * experts (the device's), g: the gate. v[i]: the host values of input i;
 * grads[i] (zeroed by the caller): their gradients. */
static void layer_ref(int mag, const layer_dims *d, const zck_moe_gate *g, const double *const *v,
                      const double *lg, const int *ix, const double *dy, double *y,
                      double **grads, double *tmp) {
  const int64_t H = d->H, I = d->I, E = d->E;
  const int k = d->k;
  double *dl = tmp + 4 * (I > d->Is ? I : d->Is);
  for (int64_t t = 0; t < d->T; t++) {
    const double *x = v[L_X] + t * H;
    double s[ZMLX_MOE_MAX_K], w[ZMLX_MOE_MAX_K], dw[ZMLX_MOE_MAX_K], S;
    zck_moe_chosen_scores(g, lg + t * E, ix + t * k, s, &S, w);
    for (int j = 0; j < k; j++) {
      const int64_t e = ix[t * k + j];
      zck_moe_mlp_row(mag, x, v[L_W1] + e * I * H, v[L_W3] + e * I * H, v[L_W2] + e * H * I, H, I, w[j],
              y + t * H, dy + t * H, grads[L_X] + t * H, grads[L_W1] + e * I * H,
              grads[L_W3] + e * I * H, grads[L_W2] + e * H * I, &dw[j], tmp);
    }
    if (d->shared)
      zck_moe_mlp_row(mag, x, v[L_S1], v[L_S3], v[L_S2], H, d->Is, 1.0, y + t * H, dy + t * H,
              grads[L_X] + t * H, grads[L_S1], grads[L_S3], grads[L_S2], NULL, tmp);
    zck_moe_gate_bwd(g, lg + t * E, ix + t * k, dw, mag, dl);
    for (int64_t e = 0; e < E; e++)
      for (int64_t h = 0; h < H; h++) {
        const double r = v[L_ROUTER][e * H + h];
        grads[L_X][t * H + h] += dl[e] * (mag ? fabs(r) : r);
        grads[L_ROUTER][e * H + h] += dl[e] * (mag ? fabs(x[h]) : x[h]);
      }
  }
}

typedef struct layer_fn_ctx {
  zmlx_moe_opts opts;
  int shared;
} layer_fn_ctx;

static zmlx_status layer_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  layer_fn_ctx *c = ud;
  zmlx_moe_opts o = c->opts;
  if (c->shared) o.shared_w1 = in[L_S1], o.shared_w3 = in[L_S3], o.shared_w2 = in[L_S2];
  return zmlx_moe(in[L_X], in[L_ROUTER], in[L_W1], in[L_W3], in[L_W2], &o, out);
}

typedef struct layer_case {
  int64_t T, E;
  int k, scoring, renorm, shared;
  int64_t inter; /* 0: 48 (a whole number of 16-byte chunks); 42: scalar weight reads */
  int fused;     /* w1, w3: the two halves of one [E, 2I, H] array (views read in place) */
} layer_case;

/* a[L_W1], a[L_W3] replaced by the row halves of one fused gate_up
 * [E, 2I, H] holding the same values (transformers' fused experts): views
 * whose experts lie 2I rows apart. */
static zmlx_status fuse_w13(const zmlx_check_opts *o, const layer_dims *d, double *const *v,
                            zmlx_array **a) {
  const int64_t rows = d->I * d->H, sh[3] = {d->E, 2 * d->I, d->H};
  double *f = malloc(sizeof(double) * (size_t)(2 * d->E * rows));
  if (!f) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int64_t e = 0; e < d->E; e++) {
    memcpy(f + 2 * e * rows, v[L_W1] + e * rows, sizeof(double) * (size_t)rows);
    memcpy(f + (2 * e + 1) * rows, v[L_W3] + e * rows, sizeof(double) * (size_t)rows);
  }
  zmlx_array *fused = NULL;
  zmlx_status st = zck_upload(o->device, o->dtype, 3, sh, f, &fused);
  free(f);
  for (int half = 0; half < 2 && st == ZMLX_OK; half++) {
    const int64_t lo[3] = {0, half * d->I, 0}, hi[3] = {d->E, (half + 1) * d->I, d->H};
    zmlx_array **dst = &a[half ? L_W3 : L_W1];
    zmlx_array_release(*dst);
    *dst = NULL;
    st = zmlx_array_slice(fused, lo, hi, NULL, dst);
  }
  zmlx_array_release(fused);
  return st;
}

/* Host values and device arrays of the layer's inputs. */
static zmlx_status layer_inputs(const zmlx_check_opts *o, const layer_dims *d, uint64_t *rng,
                                double **v, zmlx_array **a) {
  const int64_t shapes[L_COUNT][3] = {{d->T, d->H}, {d->E, d->H}, {d->E, d->I, d->H},
                                      {d->E, d->I, d->H}, {d->E, d->H, d->I}, {d->Is, d->H},
                                      {d->Is, d->H}, {d->H, d->Is}};
  const int ndim[L_COUNT] = {2, 2, 3, 3, 3, 2, 2, 2};
  const double range[L_COUNT] = {1, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3};
  for (int i = 0; i < L_COUNT; i++) {
    if (i >= L_S1 && !d->shared) continue;
    v[i] = malloc(sizeof(double) * (size_t)layer_size(d, i));
    if (!v[i]) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    ZMLX_CHECK(zck_random(o->device, o->dtype, ndim[i], shapes[i], -range[i], range[i], rng, v[i],
                          &a[i]));
  }
  return ZMLX_OK;
}

/* The device's logits (the same matmul the layer runs) and its choice. */
static zmlx_status device_routing(zmlx_array *x, zmlx_array *router, const zmlx_moe_gate_opts *go,
                                  double **lg, double **ixd) {
  zmlx_array *rt = NULL, *logits = NULL, *w = NULL, *ix = NULL;
  zmlx_status st = zmlx_array_transpose(router, NULL, &rt);
  if (st == ZMLX_OK) st = zmlx_matmul(x, rt, &logits);
  if (st == ZMLX_OK) st = zmlx_moe_gate(logits, go, &w, &ix);
  if (st == ZMLX_OK) st = zck_download(logits, lg);
  if (st == ZMLX_OK) st = zck_download(ix, ixd);
  zmlx_array *all[4] = {rt, logits, w, ix};
  for (int i = 0; i < 4; i++) zmlx_array_release(all[i]);
  return st;
}

static void layer_case_run(const zmlx_check_opts *o, const layer_case *lc, uint64_t *rng,
                           const char *form) {
  const layer_dims d = {lc->T, lc->E, 32, lc->inter ? lc->inter : 48, 40, lc->k, lc->shared};
  char name[96];
  snprintf(name, sizeof name, "T%lld E%lld k%d H%lld I%lld %s%s%s%s", (long long)d.T,
           (long long)d.E, d.k, (long long)d.H, (long long)d.I, zck_moe_scoring_name[lc->scoring],
           lc->renorm ? " renorm" : "", d.shared ? " shared" : "", form ? form : "");
  double *v[L_COUNT] = {0}, *want[L_COUNT] = {0}, *magn[L_COUNT] = {0}, *got[L_COUNT] = {0};
  zmlx_array *a[L_COUNT] = {0}, *ga[L_COUNT] = {0}, *ady = NULL, *ay = NULL;
  double *dy = NULL, *lg = NULL, *ixd = NULL, *gy = NULL;
  const int64_t TH = d.T * d.H;
  double *y = calloc((size_t)TH, sizeof(double)), *ymag = calloc((size_t)TH, sizeof(double));
  double *tmp = malloc(sizeof(double) * (size_t)(4 * (d.I > d.Is ? d.I : d.Is) + d.E));
  int *ix = malloc(sizeof(int) * (size_t)(d.T * d.k));
  dy = malloc(sizeof(double) * (size_t)TH);
  zmlx_status st = y && ymag && tmp && ix && dy ? ZMLX_OK
                                                : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of memory");
  const int n_in = d.shared ? L_COUNT : L_S1;
  for (int i = 0; st == ZMLX_OK && i < n_in; i++) {
    want[i] = calloc((size_t)layer_size(&d, i), sizeof(double));
    magn[i] = calloc((size_t)layer_size(&d, i), sizeof(double));
    if (!want[i] || !magn[i]) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  }
  if (st == ZMLX_OK) st = layer_inputs(o, &d, rng, v, a);
  if (st == ZMLX_OK && lc->fused) st = fuse_w13(o, &d, v, a);
  int64_t ysh[2] = {d.T, d.H};
  if (st == ZMLX_OK) st = zck_random(o->device, o->dtype, 2, ysh, -1, 1, rng, dy, &ady);
  layer_fn_ctx fc;
  memset(&fc, 0, sizeof fc);
  fc.opts.struct_size = sizeof fc.opts;
  fc.opts.gate = (zmlx_moe_gate_opts){.struct_size = sizeof fc.opts.gate, .k = d.k,
                                      .scoring = lc->scoring, .renormalize = lc->renorm};
  fc.shared = d.shared;
  if (st == ZMLX_OK) st = device_routing(a[L_X], a[L_ROUTER], &fc.opts.gate, &lg, &ixd);
  int argn[L_COUNT] = {0, 1, 2, 3, 4, 5, 6, 7};
  if (st == ZMLX_OK) st = zmlx_vjp(layer_fn, &fc, a, n_in, argn, n_in, ady, &ay, ga);
  if (st == ZMLX_OK) st = zck_download(ay, &gy);
  for (int i = 0; st == ZMLX_OK && i < n_in; i++) st = zck_download(ga[i], &got[i]);
  if (st != ZMLX_OK) {
    zck_emit_fail(o, "moe", "fwd", o->dtype, name, st);
    goto done;
  }
  const zck_moe_gate g = {d.E, d.k, lc->scoring, lc->renorm, 1, NULL};
  int chose_ok = 1;
  for (int64_t t = 0; t < d.T * d.k; t++) ix[t] = (int)ixd[t];
  for (int64_t t = 0; t < d.T && chose_ok; t++)
    chose_ok = zck_moe_choice_valid(&g, lg + t * d.E, ix + t * d.k, (double)(2 * d.E + 64) * U32 * 4);
  zck_emit(o, "moe", "choice", o->dtype, name, chose_ok ? 0 : 1, 0, chose_ok);
  if (!chose_ok) goto done;
  layer_ref(0, &d, &g, (const double *const *)v, lg, ix, dy, y, want, tmp);
  layer_ref(1, &d, &g, (const double *const *)v, lg, ix, dy, ymag, magn, tmp);
  /* per unit of magnitude: the longest chain of sums (H into a, I into
   * the output, E into the router's softmax) three times over (the up,
   * down and gate steps), the gate's weights, and for 16-bit dtypes the
   * roundings of the values the layer stores between ops (logits, the
   * shared expert's products) */
  zck_bound b = zck_bound_times(zck_bound_sum(ZCK_TOL_ROW, o->dtype, d.H + d.I + d.E), 3);
  b.atol += zck_moe_weight_rel(&g) + (o->dtype == ZMLX_F32 ? 0 : 8 * zck_unit_roundoff(o->dtype));
  double e, tol;
  int ok = zck_within_scaled(gy, y, ymag, TH, b, &e, &tol);
  zck_emit(o, "moe", "fwd", o->dtype, name, e, tol, ok);
  for (int i = 0; i < n_in; i++) {
    char what[32];
    snprintf(what, sizeof what, "grad %s", LAYER_NAME[i]);
    /* gradients sum over tokens too (T more terms) */
    zck_bound bg = b;
    bg.atol += 4 * sqrt((double)d.T) * U32 * 3;
    ok = zck_within_scaled(got[i], want[i], magn[i], layer_size(&d, i), bg, &e, &tol);
    zck_emit(o, "moe", what, o->dtype, name, e, tol, ok);
  }
done:
  for (int i = 0; i < L_COUNT; i++) {
    free(v[i]), free(want[i]), free(magn[i]), free(got[i]);
    zmlx_array_release(a[i]);
    zmlx_array_release(ga[i]);
  }
  free(y), free(ymag), free(tmp), free(ix), free(dy), free(lg), free(ixd), free(gy);
  zmlx_array_release(ady);
  zmlx_array_release(ay);
  zmlx_clear_error();
}

/* zmlx_moe_experts with no gradient recorded (the inference forms), in
 * one of the forms: pair rows, grouped rows, the library products, the
 * grouped tile products. unrouted: indices -1 and E among the pairs (such
 * a pair is routed nowhere and adds nothing); fused: w1 and w3 the halves of
 * one [E, 2I, H] gate_up, read in place. */
enum { FORM_PAIR_ROWS, FORM_GROUPED_ROWS, FORM_LIBRARY, FORM_TILE, FORM_TILE_INFLIGHT };
static const char *const FORM_NAME[] = {"pair rows", "grouped rows", "library gemm",
                                        "tile products", "tile products, batch in flight"};
typedef struct direct_dims {
  int64_t T, E, H, I;
  int k, unrouted, fused;
} direct_dims;

/* Host values and device arrays of w1 and w3 (as the halves of a fused
 * gate_up with d->fused). */
static zmlx_status direct_w13(const zmlx_check_opts *o, const direct_dims *d, uint64_t *rng,
                              double *h1, double *h3, zmlx_array **a1, zmlx_array **a3) {
  const int64_t rows = d->I * d->H, s13[3] = {d->E, d->I, d->H};
  if (!d->fused) {
    ZMLX_CHECK(zck_random(o->device, o->dtype, 3, s13, -0.3, 0.3, rng, h1, a1));
    return zck_random(o->device, o->dtype, 3, s13, -0.3, 0.3, rng, h3, a3);
  }
  const int64_t sf[3] = {d->E, 2 * d->I, d->H};
  double *f = malloc(sizeof(double) * (size_t)(2 * d->E * rows));
  zmlx_array *fused = NULL;
  zmlx_status st = f ? zck_random(o->device, o->dtype, 3, sf, -0.3, 0.3, rng, f, &fused)
                     : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int64_t e = 0; st == ZMLX_OK && e < d->E; e++) {
    memcpy(h1 + e * rows, f + 2 * e * rows, sizeof(double) * (size_t)rows);
    memcpy(h3 + e * rows, f + (2 * e + 1) * rows, sizeof(double) * (size_t)rows);
  }
  const int64_t lo1[3] = {0, 0, 0}, hi1[3] = {d->E, d->I, d->H};
  const int64_t lo3[3] = {0, d->I, 0}, hi3[3] = {d->E, 2 * d->I, d->H};
  if (st == ZMLX_OK) st = zmlx_array_slice(fused, lo1, hi1, NULL, a1);
  if (st == ZMLX_OK) st = zmlx_array_slice(fused, lo3, hi3, NULL, a3);
  zmlx_array_release(fused);
  free(f);
  return st;
}

static void direct_case(const zmlx_check_opts *o, int form, const direct_dims *d, uint64_t *rng) {
  const int64_t T = d->T, E = d->E, H = d->H, I = d->I, P = d->T * d->k;
  char name[128];
  snprintf(name, sizeof name, "T%lld E%lld k%d H%lld I%lld%s%s, %s", (long long)T, (long long)E,
           d->k, (long long)H, (long long)I, d->unrouted ? ", indices -1 and E" : "",
           d->fused ? ", fused gate_up" : "", FORM_NAME[form]);
  const char *what = d->unrouted ? "unrouted pairs" : "fwd, no grad";
  double *hx = malloc(sizeof(double) * (size_t)(T * H)), *h1 = malloc(sizeof(double) * (size_t)(E * I * H));
  double *h3 = malloc(sizeof(double) * (size_t)(E * I * H)), *h2 = malloc(sizeof(double) * (size_t)(E * H * I));
  double *want = calloc((size_t)(T * H), sizeof(double)), *mag = calloc((size_t)(T * H), sizeof(double));
  double *tmp = malloc(sizeof(double) * (size_t)(4 * I)), *got = NULL;
  double *ix = malloc(sizeof(double) * (size_t)P), *w = malloc(sizeof(double) * (size_t)P);
  zmlx_array *ax = NULL, *a1 = NULL, *a3 = NULL, *a2 = NULL, *aix = NULL, *aw = NULL, *y = NULL;
  zmlx_status st = hx && h1 && h3 && h2 && want && mag && tmp && ix && w
                       ? ZMLX_OK : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  int64_t xs[2] = {T, H}, s2[3] = {E, H, I}, ps[2] = {T, d->k};
  for (int64_t p = 0; st == ZMLX_OK && p < P; p++) {
    ix[p] = d->unrouted && p % 5 == 1   ? -1
            : d->unrouted && p % 5 == 3 ? (double)E
                                        : floor(zck_uniform(rng, 0, (double)E));
    w[p] = zck_uniform(rng, 0.1, 1);
  }
  if (st == ZMLX_OK) st = zck_random(o->device, o->dtype, 2, xs, -1, 1, rng, hx, &ax);
  if (st == ZMLX_OK) st = direct_w13(o, d, rng, h1, h3, &a1, &a3);
  if (st == ZMLX_OK) st = zck_random(o->device, o->dtype, 3, s2, -0.3, 0.3, rng, h2, &a2);
  if (st == ZMLX_OK) st = zck_upload(o->device, ZMLX_I32, 2, ps, ix, &aix);
  if (st == ZMLX_OK) st = zck_upload(o->device, ZMLX_F32, 2, ps, w, &aw);
  setenv("ZMLX_MOE_GROUPED", form == FORM_PAIR_ROWS ? "0" : "1", 1);
  setenv("ZMLX_MOE_GEMM", form == FORM_LIBRARY ? "1" : "0", 1);
  setenv("ZMLX_MOE_TILE", form >= FORM_TILE ? "1" : "0", 1);
  setenv("ZMLX_MOE_TILE_INFLIGHT", form == FORM_TILE_INFLIGHT ? "1" : "0", 1);
  if (st == ZMLX_OK) st = zmlx_moe_experts(ax, aw, aix, a1, a3, a2, &y);
  unsetenv("ZMLX_MOE_GROUPED");
  unsetenv("ZMLX_MOE_GEMM");
  unsetenv("ZMLX_MOE_TILE");
  unsetenv("ZMLX_MOE_TILE_INFLIGHT");
  if (st == ZMLX_OK) st = zck_download(y, &got);
  /* the 16-bit library and tile forms round as zck_moe_rounded_row models */
  const int rounded = o->dtype == ZMLX_F32 ? 0
                      : form == FORM_LIBRARY ? ZCK_MOE_LIBRARY16
                      : form >= FORM_TILE    ? ZCK_MOE_TILE16
                                             : 0;
  if (st == ZMLX_OK) {
    for (int64_t p = 0; p < P; p++) {
      if (ix[p] < 0 || ix[p] >= E) continue;
      const int64_t e = (int64_t)ix[p], t = p / d->k;
      for (int m = 0; m < 2; m++)
        if (m || !rounded)
          zck_moe_mlp_row(m, hx + t * H, h1 + e * I * H, h3 + e * I * H, h2 + e * H * I, H, I,
                          w[p], (m ? mag : want) + t * H, NULL, NULL, NULL, NULL, NULL, NULL, tmp);
        else
          zck_moe_rounded_row(o->dtype, rounded, hx + t * H, h1 + e * I * H, h3 + e * I * H,
                              h2 + e * H * I, H, I, w[p], want + t * H, tmp);
    }
    zck_bound b = zck_bound_times(zck_bound_sum(ZCK_TOL_ROW, o->dtype, H + I), 3);
    double err, tol;
    int ok = zck_within_scaled(got, want, mag, T * H, b, &err, &tol);
    zck_emit(o, "moe", what, o->dtype, name, err, tol, ok);
  } else {
    zck_emit_fail(o, "moe", what, o->dtype, name, st);
  }
  free(hx), free(h1), free(h3), free(h2), free(want), free(mag), free(tmp), free(got);
  free(ix), free(w);
  zmlx_array *all[7] = {ax, a1, a3, a2, aix, aw, y};
  for (int i = 0; i < 7; i++) zmlx_array_release(all[i]);
  zmlx_clear_error();
}

static zmlx_status check_moe(const zmlx_check_opts *o) {
  uint64_t rng = o->seed * 2654435761u + 9409u;
  const layer_case cases[] = {
      {1, 8, 2, ZMLX_MOE_SOFTMAX_TOPK, 0, 0, 0, 0},
      {7, 64, 8, ZMLX_MOE_TOPK_SOFTMAX, 0, 1, 0, 0},
      {64, 8, 1, ZMLX_MOE_SIGMOID, 1, 0, 42, 0},
      {513, 64, 8, ZMLX_MOE_SOFTMAX_TOPK, 1, 1, 0, 0},
      {513, 8, 2, ZMLX_MOE_SIGMOID, 1, 0, 0, 0},
      {64, 64, 2, ZMLX_MOE_SOFTMAX_TOPK, 0, 1, 0, 0},
  };
  const int n = o->quick ? 4 : 6;
  for (int i = 0; i < n; i++) layer_case_run(o, &cases[i], &rng, NULL);
  /* the forward's other row form (a SIMD group per row on a CPU, a thread
   * per row on a GPU) */
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(o->device, &info));
  const char *other = info.native_simd ? "0" : "1";
  setenv("ZMLX_MOE_SIMD_ROWS", other, 1);
  layer_case_run(o, &cases[1], &rng, info.native_simd ? " thread rows" : " simd rows");
  layer_case_run(o, &cases[3], &rng, info.native_simd ? " thread rows" : " simd rows");
  unsetenv("ZMLX_MOE_SIMD_ROWS");
  /* w1 / w3 as halves of a fused gate_up: pair rows, grouped rows, and
   * scalar reads (inter 42) */
  for (int i = 1; i <= 3; i++) {
    layer_case fc = cases[i];
    fc.fused = 1;
    layer_case_run(o, &fc, &rng, " fused gate_up");
  }
  /* batches go through the GEMM library where the device has one for the
   * dtype (the dialect's GEMM where it has none, when forced): the fused
   * kernels' grouped rows on the same case, and the library on cases with
   * few and many experts */
  setenv("ZMLX_MOE_GEMM", "0", 1);
  layer_case_run(o, &cases[4], &rng, " kernel rows");
  setenv("ZMLX_MOE_GEMM", "1", 1);
  layer_case_run(o, &cases[2], &rng, " library gemm");
  layer_case fc = cases[2];
  fc.fused = 1;
  layer_case_run(o, &fc, &rng, " library gemm, fused gate_up");
  if (!o->quick) layer_case_run(o, &cases[5], &rng, " library gemm");
  unsetenv("ZMLX_MOE_GEMM");
  const direct_dims unrouted = {7, 8, 32, 48, 2, 1, 0};
  for (int form = FORM_PAIR_ROWS; form <= FORM_LIBRARY; form++)
    direct_case(o, form, &unrouted, &rng);
  /* pair rows with the down projection a row per token summing its pairs
   * (the default is a row per pair, then the combine) */
  setenv("ZMLX_MOE_DOWN_PAIRS", "0", 1);
  layer_case_run(o, &cases[1], &rng, " down rows per token");
  direct_case(o, FORM_PAIR_ROWS, &unrouted, &rng);
  unsetenv("ZMLX_MOE_DOWN_PAIRS");
  /* the grouped tile products (16-bit dtypes): pairs routed nowhere; several
   * row tiles an expert, reductions and columns that end inside a chunk or
   * a tile; the halves of a fused gate_up; many experts */
  if (o->dtype == ZMLX_F32) return ZMLX_OK;
  const direct_dims tiled[] = {
      {7, 8, 32, 48, 2, 1, 0},    {600, 4, 72, 136, 2, 0, 0}, {97, 8, 64, 200, 3, 0, 1},
      {513, 64, 128, 64, 8, 0, 0},
  };
  for (int i = 0; i < (o->quick ? 3 : 4); i++) direct_case(o, FORM_TILE, &tiled[i], &rng);
  /* the warpgroup form with a batch of products in flight (on a device
   * without warpgroup products the same tiles; the variant is launched, so
   * test_catalog's NVRTC compile covers it) */
  direct_case(o, FORM_TILE_INFLIGHT, &tiled[1], &rng);
  return ZMLX_OK;
}


/* ---------------------------------------------------------------- benchmarks */

typedef struct moe_bench {
  zmlx_array *x, *w, *ix, *w1, *w3, *w2, *router;
  zmlx_moe_opts o;
} moe_bench;

static zmlx_status moe_experts_run(void *p) {
  moe_bench *b = p;
  zmlx_array *y = NULL;
  zmlx_status st = zmlx_moe_experts(b->x, b->w, b->ix, b->w1, b->w3, b->w2, &y);
  zmlx_array_release(y);
  return st;
}

static zmlx_status moe_layer_run(void *p) {
  moe_bench *b = p;
  zmlx_array *y = NULL;
  zmlx_status st = zmlx_moe(b->x, b->router, b->w1, b->w3, b->w2, &b->o, &y);
  zmlx_array_release(y);
  return st;
}

static void qweight_release(zmlx_moe_qweight *w) {
  zmlx_array_release(w->q), zmlx_array_release(w->scales), zmlx_array_release(w->biases);
  memset(w, 0, sizeof *w);
}

typedef struct qdecode_bench {
  moe_bench *b;
  zmlx_moe_qweight *q; /* w1, w3, w2 */
} qdecode_bench;

static zmlx_status moe_quant_run(void *p) {
  qdecode_bench *c = p;
  zmlx_array *y = NULL;
  zmlx_status st = zmlx_moe_experts_quantized(c->b->x, c->b->w, c->b->ix, &c->q[0], &c->q[1],
                                              &c->q[2], &y);
  zmlx_array_release(y);
  return st;
}

static void moe_bench_free(moe_bench *b) {
  zmlx_array *all[7] = {b->x, b->w, b->ix, b->w1, b->w3, b->w2, b->router};
  for (int i = 0; i < 7; i++) zmlx_array_release(all[i]);
  memset(b, 0, sizeof *b);
}

/* Routing of T tokens, k distinct random experts each; returns how many
 * distinct experts the batch reads. */
static zmlx_status bench_routing(zmlx_device *dev, int64_t T, int k, int64_t E, uint64_t *rng,
                                 moe_bench *b, int64_t *distinct) {
  double *ix = malloc(sizeof(double) * (size_t)(T * k)), *w = malloc(sizeof(double) * (size_t)(T * k));
  char *used = calloc((size_t)E, 1);
  zmlx_status st = ix && w && used ? ZMLX_OK : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of memory");
  *distinct = 0;
  for (int64_t t = 0; st == ZMLX_OK && t < T; t++)
    for (int j = 0; j < k; j++) {
      int64_t e;
      int again;
      do {
        e = (int64_t)floor(zck_uniform(rng, 0, (double)E));
        again = 0;
        for (int m = 0; m < j; m++) again |= ix[t * k + m] == (double)e;
      } while (again);
      ix[t * k + j] = (double)e;
      w[t * k + j] = 1.0 / k;
      if (!used[e]) used[e] = 1, ++*distinct;
    }
  int64_t sh[2] = {T, k};
  if (st == ZMLX_OK) st = zck_upload(dev, ZMLX_I32, 2, sh, ix, &b->ix);
  if (st == ZMLX_OK) st = zck_upload(dev, ZMLX_F32, 2, sh, w, &b->w);
  free(ix), free(w), free(used);
  return st;
}

/* The shapes: 64 experts, top-8, hidden 2048, expert dim 1408,
 * bf16 (hidden 512, expert dim 352 on a CPU device). Decode (1, 8, 64
 * tokens, the experts alone on a fixed routing): bytes are the distinct
 * chosen experts' weights (what must be read). Prefill (4096 tokens, 256
 * on a CPU device; the whole layer): FLOPs 6 T k H I of the experts. */
static zmlx_status bench_moe(const zmlx_bench_opts *o) {
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(o->device, &info));
  const int64_t E = 64, H = info.is_cpu ? 512 : 2048, I = info.is_cpu ? 352 : 1408;
  const int k = 8;
  uint64_t rng = 1234567;
  moe_bench b;
  memset(&b, 0, sizeof b);
  int64_t s13[3] = {E, I, H}, s2[3] = {E, H, I}, sr[2] = {E, H};
  zmlx_status st = zck_bench_random(o->device, ZMLX_BF16, 3, s13, 81, &b.w1);
  if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_BF16, 3, s13, 82, &b.w3);
  if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_BF16, 3, s2, 83, &b.w2);
  if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_BF16, 2, sr, 84, &b.router);
  const int64_t decode_tokens[3] = {1, 8, 64};
  for (int i = 0; i < 3 && st == ZMLX_OK; i++) {
    const int64_t T = decode_tokens[i];
    int64_t distinct = 0, xs[2] = {T, H};
    st = bench_routing(o->device, T, k, E, &rng, &b, &distinct);
    if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_BF16, 2, xs, 85, &b.x);
    const double bytes = (double)distinct * 3.0 * (double)(I * H) * 2.0;
    if (st == ZMLX_OK)
      st = zck_bench_time_emit(o, "moe_decode", ZMLX_BF16, 2, xs, bytes, moe_experts_run, &b);
    /* the same step replayed from a graph (its launches at once) */
    if (st == ZMLX_OK && T == 1)
      st = zck_bench_time_emit_graph(o, "moe_decode_graph", ZMLX_BF16, 2, xs, bytes,
                                     moe_experts_run, &b);
    zmlx_array_release(b.x), zmlx_array_release(b.w), zmlx_array_release(b.ix);
    b.x = b.w = b.ix = NULL;
  }
  /* the quantized decode path at 1 token: bytes of the chosen experts'
   * packed weights, scales and biases */
  for (int bits = 8; bits >= 4 && st == ZMLX_OK; bits -= 4) {
    zmlx_moe_qweight q[3];
    memset(q, 0, sizeof q);
    zmlx_array *src[3] = {b.w1, b.w3, b.w2};
    for (int m = 0; m < 3 && st == ZMLX_OK; m++) {
      q[m].bits = bits, q[m].group_size = bits == 4 ? 32 : 0;
      st = bits == 8 ? zmlx_quantize_int8_rows(src[m], ZMLX_BF16, &q[m].q, &q[m].scales)
                     : zmlx_quantize_int4(src[m], 32, ZMLX_BF16, &q[m].q, &q[m].scales, &q[m].biases);
    }
    int64_t distinct = 0, xs[2] = {1, H};
    if (st == ZMLX_OK) st = bench_routing(o->device, 1, k, E, &rng, &b, &distinct);
    if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_BF16, 2, xs, 87, &b.x);
    const double per_weight = bits == 8 ? 1.0 + 2.0 / (double)H : 0.5 + 4.0 / 32; /* + scales, biases */
    const double bytes = (double)distinct * 3.0 * (double)(I * H) * per_weight;
    qdecode_bench qb = {&b, q};
    if (st == ZMLX_OK)
      st = zck_bench_time_emit(o, bits == 8 ? "moe_decode_int8" : "moe_decode_int4", ZMLX_BF16, 2,
                               xs, bytes, moe_quant_run, &qb);
    for (int m = 0; m < 3; m++) qweight_release(&q[m]);
    zmlx_array_release(b.x), zmlx_array_release(b.w), zmlx_array_release(b.ix);
    b.x = b.w = b.ix = NULL;
  }
  const int64_t T = info.is_cpu ? 256 : 4096;
  int64_t xs[2] = {T, H};
  if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_BF16, 2, xs, 86, &b.x);
  b.o.struct_size = sizeof b.o;
  b.o.gate = (zmlx_moe_gate_opts){.struct_size = sizeof b.o.gate, .k = k, .renormalize = 1};
  const double flops = 6.0 * (double)T * k * (double)(H * I);
  const double bytes = 3.0 * (double)(E * I * H) * 2.0 + 2.0 * (double)(T * H) * 2.0;
  if (st == ZMLX_OK)
    st = zck_bench_time_emit_flops(o, "moe_prefill", ZMLX_BF16, 2, xs, bytes, flops, moe_layer_run, &b);
  moe_bench_free(&b);
  return st;
}

const zmlx_catalog_bench zck_catalog_moe_bench[] = {
    {"moe", bench_moe},
    {0},
};

/* ---------------------------------------------------- quantized experts */

/* Host values of a quantized weight [E, rows, cols], dequantized in f64. */
static zmlx_status host_dequant(const zmlx_moe_qweight *w, int64_t E, int64_t rows, int64_t cols,
                                double *out) {
  double *q = NULL, *sc = NULL, *bi = NULL;
  zmlx_status st = zck_download(w->q, &q);
  if (st == ZMLX_OK) st = zck_download(w->scales, &sc);
  if (st == ZMLX_OK && w->bits == 4) st = zck_download(w->biases, &bi);
  for (int64_t r = 0; st == ZMLX_OK && r < E * rows; r++)
    for (int64_t c = 0; c < cols; c++) {
      if (w->bits == 8) {
        out[r * cols + c] = q[r * cols + c] * sc[r];
      } else {
        const int byte = (int)q[(r * cols + c) / 2], nib = c % 2 ? byte >> 4 : byte & 15;
        const int64_t g = r * (cols / w->group_size) + c / w->group_size;
        out[r * cols + c] = nib * sc[g] + bi[g];
      }
    }
  free(q), free(sc), free(bi);
  return st;
}

/* A random weight [E, rows, cols] quantized on the device, and its
 * dequantized host values. */
static zmlx_status make_qweight(const zmlx_check_opts *o, int bits, int group, int64_t E,
                                int64_t rows, int64_t cols, uint64_t *rng, zmlx_moe_qweight *w,
                                double *deq) {
  int64_t sh[3] = {E, rows, cols};
  zmlx_array *dense = NULL;
  zmlx_status st = zck_random(o->device, ZMLX_F32, 3, sh, -0.3, 0.3, rng, deq, &dense);
  memset(w, 0, sizeof *w);
  w->bits = bits;
  w->group_size = group;
  if (st == ZMLX_OK && bits == 8) st = zmlx_quantize_int8_rows(dense, o->dtype, &w->q, &w->scales);
  if (st == ZMLX_OK && bits == 4)
    st = zmlx_quantize_int4(dense, group, o->dtype, &w->q, &w->scales, &w->biases);
  zmlx_array_release(dense);
  if (st == ZMLX_OK) st = host_dequant(w, E, rows, cols, deq);
  return st;
}

static void quant_case(const zmlx_check_opts *o, int bits, int group, int64_t T, int64_t E, int k,
                       uint64_t *rng) {
  const int64_t H = 128, I = 128; /* both multiples of every group size */
  char name[96];
  const char *env = getenv("ZMLX_MOE_VEC");
  snprintf(name, sizeof name, "int%d%s%.0d T%lld E%lld k%d H%lld I%lld%s", bits,
           bits == 4 ? " group " : "", bits == 4 ? group : 0, (long long)T, (long long)E, k,
           (long long)H, (long long)I, env && env[0] == '1' ? " 16-byte reads" : "");
  zmlx_moe_qweight q1, q3, q2;
  memset(&q1, 0, sizeof q1), memset(&q3, 0, sizeof q3), memset(&q2, 0, sizeof q2);
  const int64_t nw = E * I * H;
  double *d1 = malloc(sizeof(double) * (size_t)nw), *d3 = malloc(sizeof(double) * (size_t)nw);
  double *d2 = malloc(sizeof(double) * (size_t)nw), *xh = malloc(sizeof(double) * (size_t)(T * H));
  double *want = calloc((size_t)(T * H), sizeof(double)), *mag = calloc((size_t)(T * H), sizeof(double));
  double *tmp = malloc(sizeof(double) * (size_t)(4 * I)), *got = NULL;
  moe_bench b;
  memset(&b, 0, sizeof b);
  zmlx_array *y = NULL;
  zmlx_status st = d1 && d2 && d3 && xh && want && mag && tmp
                       ? ZMLX_OK : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  if (st == ZMLX_OK) st = make_qweight(o, bits, group, E, I, H, rng, &q1, d1);
  if (st == ZMLX_OK) st = make_qweight(o, bits, group, E, I, H, rng, &q3, d3);
  if (st == ZMLX_OK) st = make_qweight(o, bits, group, E, H, I, rng, &q2, d2);
  int64_t distinct, xs[2] = {T, H};
  if (st == ZMLX_OK) st = bench_routing(o->device, T, k, E, rng, &b, &distinct);
  if (st == ZMLX_OK) st = zck_random(o->device, o->dtype, 2, xs, -1, 1, rng, xh, &b.x);
  if (st == ZMLX_OK) st = zmlx_moe_experts_quantized(b.x, b.w, b.ix, &q1, &q3, &q2, &y);
  if (st == ZMLX_OK) st = zck_download(y, &got);
  double *ix = NULL;
  if (st == ZMLX_OK) st = zck_download(b.ix, &ix);
  if (st == ZMLX_OK) {
    for (int64_t t = 0; t < T; t++)
      for (int j = 0; j < k; j++) {
        const int64_t e = (int64_t)ix[t * k + j];
        for (int m = 0; m < 2; m++)
          zck_moe_mlp_row(m, xh + t * H, d1 + e * I * H, d3 + e * I * H, d2 + e * H * I, H, I, 1.0 / k,
                  (m ? mag : want) + t * H, NULL, NULL, NULL, NULL, NULL, NULL, tmp);
      }
    /* the dequantized weights are exact in f32 (q times a stored scale,
     * plus a stored bias, one rounding each: 2 u32 on the weight) */
    zck_bound bd = zck_bound_times(zck_bound_sum(ZCK_TOL_ROW, o->dtype, H + I), 3);
    bd.atol += 4 * U32;
    double e, tol;
    int ok = zck_within_scaled(got, want, mag, T * H, bd, &e, &tol);
    zck_emit(o, "moe_quant", "fwd", o->dtype, name, e, tol, ok);
  } else {
    zck_emit_fail(o, "moe_quant", "fwd", o->dtype, name, st);
  }
  free(d1), free(d2), free(d3), free(xh), free(want), free(mag), free(tmp), free(got), free(ix);
  qweight_release(&q1), qweight_release(&q3), qweight_release(&q2);
  moe_bench_free(&b);
  zmlx_array_release(y);
  zmlx_clear_error();
}

static zmlx_status check_moe_quant(const zmlx_check_opts *o) {
  uint64_t rng = o->seed * 2654435761u + 9511u;
  quant_case(o, 8, 0, 1, 8, 2, &rng);
  /* the 16-byte chunked reads (off by default for quantized weights) */
  setenv("ZMLX_MOE_VEC", "1", 1);
  quant_case(o, 8, 0, 7, 8, 2, &rng);
  quant_case(o, 4, 32, 7, 8, 2, &rng);
  unsetenv("ZMLX_MOE_VEC");
  quant_case(o, 4, 32, 1, 64, 8, &rng);
  quant_case(o, 4, 64, 7, 8, 2, &rng);
  quant_case(o, 8, 0, 64, 64, 8, &rng);
  if (!o->quick) quant_case(o, 4, 128, 64, 64, 8, &rng);
  return ZMLX_OK;
}

const zmlx_catalog_op zck_catalog_moe_ops[] = {
    {"moe", check_moe},
    {"moe_quant", check_moe_quant},
    {0},
};
