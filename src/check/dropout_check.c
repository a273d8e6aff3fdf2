/* `zmlx check` cases of src/ops/dropout.c: the mask against a host Philox,
 * the keep rate, the forward against the mask, gradients, bad input. Part
 * of the check library (the CLI and the tests link it; libzmlx does not). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "autograd/ad.h"
#include "gen/patterns.h"
#include "kernel/kernel.h"
#include "check/check_util.h"
#include "ops/dropout.h"


static int host_keep(uint64_t seed, uint64_t i, uint32_t thresh) {
  uint64_t grp = i / 4;
  uint32_t c[4] = {(uint32_t)grp, (uint32_t)(grp >> 32), 0, 0};
  uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  uint32_t w[4];
  zmlxi_philox4x32(c, key, w);
  return (w[i % 4] >> 8) >= thresh;
}

typedef struct drop_gctx {
  double p;
  uint64_t seed;
  zmlx_array *w;
} drop_gctx;

static zmlx_status drop_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  drop_gctx *g = ud;
  return zmlx_dropout(in[0], g->p, g->seed, out);
}

static zmlx_status drop_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  drop_gctx *g = ud;
  zmlx_array *y = NULL;
  ZMLX_CHECK(drop_fn(ud, in, n, &y));
  zmlx_status st = zck_weighted_sum(y, g->w, out);
  zmlx_array_release(y);
  return st;
}

static void drop_case(const zmlx_check_opts *o, int64_t rows, int64_t D, double p, int mode,
                      uint64_t *rng) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = mode == 1 ? ZMLX_F32 : o->dtype;
  const char *what = mode == 0 ? "fwd" : mode == 1 ? "grad (fd)" : "grad (vjp)";
  char name[96];
  snprintf(name, sizeof name, "[%lld, %lld] p=%g", (long long)rows, (long long)D, p);
  int64_t sh[2] = {rows, D}, n = rows * D;
  uint64_t seed = (uint64_t)(zck_uniform(rng, 0, 1) * 4294967296.0) |
                  ((uint64_t)(zck_uniform(rng, 0, 1) * 4294967296.0) << 32);
  double *x = malloc(sizeof(double) * (size_t)n), *g = malloc(sizeof(double) * (size_t)n);
  double *got = NULL;
  zmlx_array *ax = NULL, *y = NULL, *w = NULL, *grad = NULL;
  zmlx_status st = ZMLX_OK;
  uint32_t th = zmlxi_dropout_threshold(p);
  double scale = (float)(1.0 / (1.0 - p));
  if (!x || !g) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  st = zck_random(dev, dt, 2, sh, 0.5, 2, rng, x, &ax); /* never 0: a 0 marks a drop */
  if (st != ZMLX_OK) goto done;
  if (mode == 0) {
    drop_cfg c = {p, seed};
    st = zmlx_array_full(dev, dt, 2, sh, NAN, &y);
    if (st == ZMLX_OK) st = zmlxi_dropout_launch(ax, &c, y);
    if (st == ZMLX_OK) st = zck_download(y, &got);
    if (st != ZMLX_OK) goto done;
    int64_t mism = 0, kept = 0;
    double *want = g; /* g is the cotangent of the other modes */
    for (int64_t i = 0; i < n; i++) {
      int keep = host_keep(seed, (uint64_t)i, th);
      kept += keep;
      if (isnan(got[i]) || keep != (got[i] != 0)) mism++;
      want[i] = keep ? x[i] * scale : 0;
    }
    /* one f32 product, rounded to the dtype */
    double e, tol;
    int ok = zck_within(got, want, n, zck_bound_of(ZCK_TOL_ELEMENTWISE, dt, 0, 1), &e, &tol);
    zck_emit(o, "dropout", "fwd", dt, name, e, tol, ok);
    zck_emit(o, "dropout", "mask = host philox", dt, name, (double)mism, 0, mism == 0);
    double rate = (double)kept / (double)n, sd = sqrt(p * (1 - p) / (double)n);
    double dev_ = fabs(rate - (1 - p));
    double lim = 5 * sd + 1.0 / (double)n;
    zck_emit(o, "dropout", "keep rate", dt, name, dev_, lim, dev_ <= lim);
  } else if (mode == 1) {
    st = zck_random(dev, dt, 2, sh, -1, 1, rng, g, &w);
    if (st != ZMLX_OK) goto done;
    drop_gctx gc = {p, seed, w};
    zmlx_grad_check_report rep;
    st = zmlx_check_grad(drop_loss, &gc, &ax, 1, 1e-3, zck_fd_tol(), &rep);
    if (st != ZMLX_OK) goto done;
    double e = rep.inputs[0].max_abs_err;
    if (rep.jvp_checked) e = fmax(e, rep.jvp_abs_err);
    zck_emit(o, "dropout", what, dt, name, e, zck_fd_tol(), rep.passed);
  } else {
    st = zck_random(dev, dt, 2, sh, -1, 1, rng, g, &w);
    if (st != ZMLX_OK) goto done;
    drop_gctx gc = {p, seed, NULL};
    int argn = 0;
    st = zmlx_vjp(drop_fn, &gc, &ax, 1, &argn, 1, w, &y, &grad);
    if (st == ZMLX_OK) st = zck_download(grad, &got);
    if (st != ZMLX_OK) goto done;
    for (int64_t i = 0; i < n; i++) /* x is read: it holds the reference */
      x[i] = host_keep(seed, (uint64_t)i, th) ? g[i] * scale : 0;
    double e, tol;
    int ok = zck_within(got, x, n, zck_bound_of(ZCK_TOL_ELEMENTWISE, dt, 0, 1), &e, &tol);
    zck_emit(o, "dropout", what, dt, name, e, tol, ok);
  }
done:
  if (st != ZMLX_OK) zck_emit_fail(o, "dropout", what, dt, name, st);
  free(x); free(g); free(got);
  zmlx_array_release(ax); zmlx_array_release(y); zmlx_array_release(w);
  zmlx_array_release(grad);
  zmlx_clear_error();
}

static zmlx_status check_dropout(const zmlx_check_opts *o) {
  ZMLX_REQUIRE_ARG(o);
  ZMLX_REQUIRE_ARG(o->device);
  uint64_t rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x64726F70ULL;
  if (!rng) rng = 1;
  drop_case(o, 1, 1, 0.5, 0, &rng);
  drop_case(o, 3, 7, 0.0, 0, &rng);
  drop_case(o, 64, 1000, 0.1, 0, &rng);
  drop_case(o, 16, 4097, 0.5, 0, &rng);
  if (!o->quick) {
    drop_case(o, 256, 4097, 0.3, 0, &rng);
    drop_case(o, 1, 100000, 0.9, 0, &rng);
  }
  if (o->dtype == ZMLX_F32) drop_case(o, 3, 5, 0.4, 1, &rng);
  drop_case(o, 7, 33, 0.25, 2, &rng);
  zmlx_array *a = NULL, *ai = NULL, *y = NULL;
  int64_t sh[2] = {2, 3};
  if (zmlx_array_zeros(o->device, o->dtype, 2, sh, &a) == ZMLX_OK &&
      zmlx_array_zeros(o->device, ZMLX_I32, 2, sh, &ai) == ZMLX_OK) {
    zck_expect(o, "dropout", "bad: p = 1", zmlx_dropout(a, 1.0, 1, &y), y,
                   ZMLX_ERR_INVALID_ARG, "p = ");
    y = NULL;
    zck_expect(o, "dropout", "bad: p < 0", zmlx_dropout(a, -0.1, 1, &y), y,
                   ZMLX_ERR_INVALID_ARG, "p = ");
    y = NULL;
    zck_expect(o, "dropout", "bad: dtype i32", zmlx_dropout(ai, 0.5, 1, &y), y,
                   ZMLX_ERR_DTYPE, "dtype");
  } else {
    zck_emit_fail(o, "dropout", "bad input", o->dtype, "setup", ZMLX_ERR_BACKEND);
  }
  zmlx_array_release(a);
  zmlx_array_release(ai);
  return ZMLX_OK;
}

const zmlx_catalog_op zck_catalog_dropout_ops[] = {
    {"dropout", check_dropout},
    {0},
};
