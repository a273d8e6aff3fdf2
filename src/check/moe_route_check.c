/* `zmlx check` cases of src/nn/moe_route.c against f64 references:
 *   moe_gate      every scoring, renormalize, scaling and bias, ties (logits
 *                 on a small integer grid), forward and VJP; the device's
 *                 choice is checked as a valid top-k of the f64 scores
 *                 (near-ties within the scores' f32 error may go either
 *                 way; exact ties must go to the lower index), and the
 *                 weights and gradients are computed for what it chose;
 *   moe_dispatch  offsets / order / slot against a host stable counting sort;
 *   moe_permute   rows into dispatch order and back (weighted) and their
 *                 VJPs against host loops, some pairs routed nowhere. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/check_util.h"
#include "check/moe_ref.h"
#include "nn/moe.h"

static const double U32 = 0x1p-24;

/* ------------------------------------------------------------ gate check */

typedef struct gate_case {
  int64_t T, E;
  int k, scoring, renorm, bias, ties;
  double scaling;
} gate_case;

static zmlx_status gate_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  zmlx_array *ix = NULL;
  zmlx_status st = zmlx_moe_gate(in[0], ud, out, &ix);
  zmlx_array_release(ix);
  return st;
}


static void gate_case_run(const zmlx_check_opts *o, const gate_case *gc, uint64_t *rng) {
  char name[96];
  snprintf(name, sizeof name, "T%lld E%lld k%d %s%s%s%s", (long long)gc->T, (long long)gc->E,
           gc->k, zck_moe_scoring_name[gc->scoring], gc->renorm ? " renorm" : "", gc->bias ? " bias" : "",
           gc->ties ? " ties" : "");
  const int64_t T = gc->T, E = gc->E, n = T * E;
  const int k = gc->k;
  double *l = malloc(sizeof(double) * (size_t)n), *bias = malloc(sizeof(double) * (size_t)E);
  double *dw = malloc(sizeof(double) * (size_t)(T * k)), *gw = NULL, *gdl = NULL, *gix = NULL;
  double *want_w = malloc(sizeof(double) * (size_t)(T * k));
  double *want_dl = malloc(sizeof(double) * (size_t)n), *mag_dl = malloc(sizeof(double) * (size_t)n);
  zmlx_array *al = NULL, *ab = NULL, *aw = NULL, *aix = NULL, *adw = NULL, *agl = NULL;
  zmlx_status st = l && bias && dw && want_w && want_dl && mag_dl
                       ? ZMLX_OK
                       : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int64_t i = 0; st == ZMLX_OK && i < n; i++)
    l[i] = gc->ties ? floor(zck_uniform(rng, -2, 3)) : zck_round(o->dtype, zck_uniform(rng, -4, 4));
  for (int64_t e = 0; st == ZMLX_OK && e < E; e++)
    bias[e] = gc->ties ? 0.25 * floor(zck_uniform(rng, 0, 3)) : zck_round(ZMLX_F32, zck_uniform(rng, -0.5, 0.5));
  for (int64_t i = 0; st == ZMLX_OK && i < T * k; i++) dw[i] = zck_uniform(rng, -1, 1);
  int64_t lsh[2] = {T, E}, wsh[2] = {T, k};
  if (st == ZMLX_OK) st = zck_upload(o->device, o->dtype, 2, lsh, l, &al);
  if (st == ZMLX_OK && gc->bias) st = zck_upload(o->device, ZMLX_F32, 1, &E, bias, &ab);
  if (st == ZMLX_OK) st = zck_upload(o->device, ZMLX_F32, 2, wsh, dw, &adw);
  zmlx_moe_gate_opts opts = {.struct_size = sizeof opts, .k = k, .scoring = gc->scoring,
                             .renormalize = gc->renorm, .scaling = gc->scaling, .bias = ab};
  if (st == ZMLX_OK) st = zmlx_moe_gate(al, &opts, &aw, &aix);
  if (st == ZMLX_OK) st = zck_download(aw, &gw);
  if (st == ZMLX_OK) st = zck_download(aix, &gix);
  const zck_moe_gate g = {E, k, gc->scoring, gc->renorm, gc->scaling ? gc->scaling : 1,
                      gc->bias ? bias : NULL};
  int chose_ok = 1;
  double werr = -1, wtol = 1;
  if (st == ZMLX_OK) {
    for (int64_t t = 0; t < T; t++) {
      int ix[ZMLX_MOE_MAX_K];
      for (int j = 0; j < k; j++) ix[j] = (int)gix[t * k + j];
      const double tol = (double)(2 * E + 64) * U32 * 4;
      if (!zck_moe_choice_valid(&g, l + t * E, ix, tol)) chose_ok = 0;
      if (!chose_ok) break;
      double s[ZMLX_MOE_MAX_K], S;
      zck_moe_chosen_scores(&g, l + t * E, ix, s, &S, want_w + t * k);
      zck_moe_gate_bwd(&g, l + t * E, ix, dw + t * k, 0, want_dl + t * E);
      double adw_[ZMLX_MOE_MAX_K];
      for (int j = 0; j < k; j++) adw_[j] = fabs(dw[t * k + j]);
      zck_moe_gate_bwd(&g, l + t * E, ix, adw_, 1, mag_dl + t * E);
    }
    zck_emit(o, "moe_gate", "choice", o->dtype, name, chose_ok ? 0 : 1, 0, chose_ok);
  }
  if (st == ZMLX_OK && chose_ok) {
    zck_bound b = {0, zck_moe_weight_rel(&g), 0};
    int ok = zck_within(gw, want_w, T * k, b, &werr, &wtol);
    zck_emit(o, "moe_gate", "fwd", o->dtype, name, werr, wtol, ok);
  }
  if (st == ZMLX_OK && chose_ok) {
    /* the VJP: the weights' cotangent dw back to the logits */
    zmlx_array *y = NULL;
    int arg = 0;
    st = zmlx_vjp(gate_fn, &opts, &al, 1, &arg, 1, adw, &y, &agl);
    zmlx_array_release(y);
    if (st == ZMLX_OK) st = zck_download(agl, &gdl);
    if (st == ZMLX_OK) {
      /* dl: the weights' f32 error, then the sums over the k choices (and
       * the row's E scores for softmax), rounded to the logits' dtype */
      zck_bound b = zck_bound_sum(ZCK_TOL_ROW, o->dtype, E + k);
      b.atol += 2 * zck_moe_weight_rel(&g);
      double e, t;
      int ok = zck_within_scaled(gdl, want_dl, mag_dl, n, b, &e, &t);
      zck_emit(o, "moe_gate", "grad logits", o->dtype, name, e, t, ok);
    }
  }
  if (st != ZMLX_OK) zck_emit_fail(o, "moe_gate", "fwd", o->dtype, name, st);
  free(l), free(bias), free(dw), free(gw), free(gdl), free(gix), free(want_w), free(want_dl);
  free(mag_dl);
  zmlx_array *all[6] = {al, ab, aw, aix, adw, agl};
  for (int i = 0; i < 6; i++) zmlx_array_release(all[i]);
  zmlx_clear_error();
}

static zmlx_status check_moe_gate(const zmlx_check_opts *o) {
  uint64_t rng = o->seed * 2654435761u + 9203u;
  for (int sc = 0; sc < 3; sc++) {
    const gate_case cases[] = {
        {7, 8, 2, sc, 0, 0, 0, 0},
        {64, 64, 8, sc, 1, sc == 2, 0, 2.5},
        {513, 8, 2, sc, sc == 2, sc == 2, 1, 0}, /* ties */
        {1, 64, 1, sc, 0, 0, 0, 0},
        {513, 64, 8, sc, 1, 1, 0, 0},
    };
    const int n = o->quick ? 4 : 5;
    for (int i = 0; i < n; i++) gate_case_run(o, &cases[i], &rng);
  }
  return ZMLX_OK;
}

/* -------------------------------------------------------- dispatch check */

static void dispatch_case(const zmlx_check_opts *o, int64_t T, int k, int E, int out_of_range,
                          uint64_t *rng) {
  char name[96];
  snprintf(name, sizeof name, "T%lld k%d E%d%s", (long long)T, k, E,
           out_of_range ? " out-of-range indices" : "");
  const int64_t P = T * k;
  double *ix = malloc(sizeof(double) * (size_t)P);
  int64_t *cnt = calloc((size_t)E + 1, sizeof(int64_t));
  double *goff = NULL, *gord = NULL, *gslot = NULL;
  zmlx_array *aix = NULL, *off = NULL, *ord = NULL, *slot = NULL;
  zmlx_status st = ix && cnt ? ZMLX_OK : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int64_t p = 0; st == ZMLX_OK && p < P; p++) {
    ix[p] = floor(zck_uniform(rng, 0, E));
    if (out_of_range && p % 7 == 3) ix[p] = p % 2 ? -1 : E;
  }
  int64_t sh[2] = {T, k};
  if (st == ZMLX_OK) st = zck_upload(o->device, ZMLX_I32, 2, sh, ix, &aix);
  if (st == ZMLX_OK) st = zmlx_moe_dispatch(aix, E, &off, &ord, &slot);
  if (st == ZMLX_OK) st = zck_download(off, &goff);
  if (st == ZMLX_OK) st = zck_download(ord, &gord);
  if (st == ZMLX_OK) st = zck_download(slot, &gslot);
  if (st == ZMLX_OK) {
    /* a stable counting sort on the host */
    int bad = 0;
    for (int64_t p = 0; p < P; p++)
      if (ix[p] >= 0 && ix[p] < E) cnt[(int64_t)ix[p] + 1]++;
    for (int e = 0; e < E; e++) cnt[e + 1] += cnt[e];
    for (int e = 0; e <= E; e++) bad += goff[e] != (double)cnt[e];
    for (int64_t p = 0; p < P; p++) {
      int in = ix[p] >= 0 && ix[p] < E;
      int64_t pos = in ? cnt[(int64_t)ix[p]]++ : -1;
      bad += gslot[p] != (double)pos;
      if (in) bad += gord[pos] != (double)p;
    }
    zck_emit(o, "moe_dispatch", "offsets, order, slot", o->dtype, name, bad, 0, bad == 0);
  } else {
    zck_emit_fail(o, "moe_dispatch", "offsets, order, slot", o->dtype, name, st);
  }
  free(ix), free(cnt), free(goff), free(gord), free(gslot);
  zmlx_array *all[4] = {aix, off, ord, slot};
  for (int i = 0; i < 4; i++) zmlx_array_release(all[i]);
  zmlx_clear_error();
}

static zmlx_status check_moe_dispatch(const zmlx_check_opts *o) {
  uint64_t rng = o->seed * 2654435761u + 9301u;
  dispatch_case(o, 1, 2, 8, 0, &rng);
  dispatch_case(o, 7, 8, 64, 0, &rng);
  dispatch_case(o, 513, 8, 64, 0, &rng); /* 17 chunks of 256 pairs */
  dispatch_case(o, 64, 1, 8, 1, &rng);
  if (!o->quick) dispatch_case(o, 4096, 8, 64, 0, &rng);
  return ZMLX_OK;
}

/* ------------------------------------------------- permute and combine */

typedef struct route_arrays {
  zmlx_array *order, *slot;
  int k;
} route_arrays;

static zmlx_status permute_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  const route_arrays *r = ud;
  return zmlx_moe_permute(in[0], r->order, r->slot, r->k, out);
}

static zmlx_status combine_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  const route_arrays *r = ud;
  return zmlx_moe_combine(in[0], in[1], r->order, r->slot, out);
}

/* zmlx_moe_permute and zmlx_moe_combine and their VJPs against host loops,
 * some pairs routed nowhere (index -1 or E). */
static void permute_case(const zmlx_check_opts *o, int64_t T, int k, int E, uint64_t *rng) {
  const int64_t H = 24, P = T * k;
  char name[96];
  snprintf(name, sizeof name, "T%lld k%d E%d H%lld", (long long)T, k, E, (long long)H);
  double *ix = malloc(sizeof(double) * (size_t)P), *w = malloc(sizeof(double) * (size_t)P);
  double *x = malloc(sizeof(double) * (size_t)(T * H)), *y = malloc(sizeof(double) * (size_t)(P * H));
  double *g = malloc(sizeof(double) * (size_t)(P * H)), *dy = malloc(sizeof(double) * (size_t)(T * H));
  double *hord = NULL, *hslot = NULL, *got[5] = {0};
  zmlx_array *aix = NULL, *aw = NULL, *ax = NULL, *ay = NULL, *ag = NULL, *ady = NULL;
  zmlx_array *off = NULL, *res[5] = {0};
  route_arrays route = {NULL, NULL, k};
  zmlx_status st = ix && w && x && y && g && dy ? ZMLX_OK
                                                : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of memory");
  for (int64_t p = 0; p < P; p++) {
    ix[p] = p % 11 == 5 ? -1 : p % 13 == 7 ? E : floor(zck_uniform(rng, 0, E));
    w[p] = zck_uniform(rng, 0, 1);
  }
  int64_t ps[2] = {T, k}, xs[2] = {T, H}, ys[2] = {P, H};
  if (st == ZMLX_OK) st = zck_upload(o->device, ZMLX_I32, 2, ps, ix, &aix);
  if (st == ZMLX_OK) st = zck_upload(o->device, ZMLX_F32, 2, ps, w, &aw);
  if (st == ZMLX_OK) st = zck_random(o->device, o->dtype, 2, xs, -1, 1, rng, x, &ax);
  if (st == ZMLX_OK) st = zck_random(o->device, o->dtype, 2, ys, -1, 1, rng, y, &ay);
  if (st == ZMLX_OK) st = zck_random(o->device, ZMLX_F32, 2, ys, -1, 1, rng, g, &ag);
  if (st == ZMLX_OK) st = zck_random(o->device, ZMLX_F32, 2, xs, -1, 1, rng, dy, &ady);
  if (st == ZMLX_OK) st = zmlx_moe_dispatch(aix, E, &off, &route.order, &route.slot);
  if (st == ZMLX_OK) st = zck_download(route.order, &hord);
  if (st == ZMLX_OK) st = zck_download(route.slot, &hslot);
  int arg0 = 0, args[2] = {0, 1};
  /* res: permute's output and x's gradient, combine's output and the
   * gradients of y and the weights */
  if (st == ZMLX_OK) st = zmlx_vjp(permute_fn, &route, &ax, 1, &arg0, 1, ag, &res[0], &res[1]);
  zmlx_array *cin[2] = {ay, aw};
  if (st == ZMLX_OK) st = zmlx_vjp(combine_fn, &route, cin, 2, args, 2, ady, &res[2], &res[3]);
  for (int i = 0; st == ZMLX_OK && i < 5; i++) st = zck_download(res[i], &got[i]);
  if (st == ZMLX_OK) {
    double *want = calloc((size_t)(P * H), sizeof(double)), *mag = calloc((size_t)(P * H), sizeof(double));
    const char *what[5] = {"permute", "grad x", "combine", "grad y", "grad weights"};
    const int64_t count[5] = {P * H, T * H, T * H, P * H, P};
    for (int c = 0; c < 5 && want && mag; c++) {
      memset(want, 0, sizeof(double) * (size_t)(P * H));
      memset(mag, 0, sizeof(double) * (size_t)(P * H));
      if (c == 0) /* permute */
        for (int64_t q = 0; q < P; q++)
          for (int64_t h = 0; h < H && hord[q] >= 0; h++)
            want[q * H + h] = x[(int64_t)hord[q] / k * H + h], mag[q * H + h] = 1;
      if (c == 1 || c == 2) /* permute's VJP, the combine */
        for (int64_t p = 0; p < P; p++)
          for (int64_t h = 0; h < H && hslot[p] >= 0; h++) {
            const double v = (c == 1 ? g : y)[(int64_t)hslot[p] * H + h] * (c == 2 ? w[p] : 1);
            want[p / k * H + h] += v, mag[p / k * H + h] += fabs(v);
          }
      if (c == 3) /* combine's VJP in y */
        for (int64_t q = 0; q < P; q++)
          for (int64_t h = 0; h < H && hord[q] >= 0; h++) {
            const int64_t p = (int64_t)hord[q];
            want[q * H + h] = w[p] * dy[p / k * H + h], mag[q * H + h] = fabs(want[q * H + h]);
          }
      if (c == 4) /* combine's VJP in the weights */
        for (int64_t p = 0; p < P; p++)
          for (int64_t h = 0; h < H && hslot[p] >= 0; h++) {
            const double v = dy[p / k * H + h] * y[(int64_t)hslot[p] * H + h];
            want[p] += v, mag[p] += fabs(v);
          }
      /* sums of k (or H) terms stored in the dtype; a gradient's terms
       * carry the cotangent, rounded to the output's dtype first */
      zck_bound b = zck_bound_sum(ZCK_TOL_ELEMENTWISE, o->dtype, c == 4 ? H : k);
      if (c == 1 || c == 3 || c == 4) {
        b.atol += zck_unit_roundoff(o->dtype);
        /* each cotangent term's rounding into f16's subnormals (|y|, w <= 1) */
        b.floor *= (double)(c == 4 ? H + 1 : k + 1);
      }
      double e, tol;
      int ok = zck_within_scaled(got[c], want, mag, count[c], b, &e, &tol);
      zck_emit(o, "moe_permute", what[c], o->dtype, name, e, tol, ok);
    }
    free(want), free(mag);
  }
  if (st != ZMLX_OK) zck_emit_fail(o, "moe_permute", "permute", o->dtype, name, st);
  free(ix), free(w), free(x), free(y), free(g), free(dy), free(hord), free(hslot);
  for (int i = 0; i < 5; i++) free(got[i]), zmlx_array_release(res[i]);
  zmlx_array *all[9] = {aix, aw, ax, ay, ag, ady, off, route.order, route.slot};
  for (int i = 0; i < 9; i++) zmlx_array_release(all[i]);
  zmlx_clear_error();
}

static zmlx_status check_moe_permute(const zmlx_check_opts *o) {
  uint64_t rng = o->seed * 2654435761u + 9601u;
  permute_case(o, 1, 2, 8, &rng);
  permute_case(o, 7, 8, 64, &rng);
  permute_case(o, 513, 2, 8, &rng);
  return ZMLX_OK;
}

const zmlx_catalog_op zck_catalog_moe_route_ops[] = {
    {"moe_gate", check_moe_gate},
    {"moe_dispatch", check_moe_dispatch},
    {"moe_permute", check_moe_permute},
    {0},
};
