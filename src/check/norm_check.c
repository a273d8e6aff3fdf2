/* `zmlx check` and `zmlx bench` cases of src/ops/norm.c: forward against
 * an f64 reference on fresh random inputs with poisoned outputs, gradients,
 * bad input, and the LLM shapes the benchmark times. Part of the check
 * library (the CLI and the tests link it; libzmlx does not). */
#include "autograd/ad.h"
#include "gen/patterns.h"
#include "kernel/kernel.h"
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check/check_util.h"
#include "ops/norm.h"

/* ===================================================================== check */

/* The verifier (`zmlx check`, src/ops/catalog.h): forward against an f64
 * reference with poisoned outputs, gradients against finite differences
 * (f32) and against an f64 reference (every dtype), bad input. */

/* Statistics of one row of h in f64. */
static void ref_stats(const norm_cfg *c, const double *h, int64_t cols, double eps, double *mean,
                      double *rstd) {
  double s = 0, q = 0;
  for (int64_t j = 0; j < cols; j++) s += c->rms ? h[j] * h[j] : h[j];
  if (c->rms) {
    *mean = 0;
    *rstd = 1.0 / sqrt(s / (double)cols + eps);
    return;
  }
  *mean = s / (double)cols;
  for (int64_t j = 0; j < cols; j++) q += (h[j] - *mean) * (h[j] - *mean);
  *rstd = 1.0 / sqrt(q / (double)cols + eps);
}

/* The size of the terms behind each y of a row of h, in the units the f32
 * error counts (zck_bound_sum): y = (h - mean) rstd w + b, where mean and
 * the variance are sums over the row. Each h and the mean carry u32 |h| and
 * u32 mean|h|, which rstd scales (a row shifted far from 0 relative to its
 * spread, the offset family, is that much harder for any f32 code); rstd's
 * own error is relative and scales the normalized value. */
static void ref_forward_terms(const norm_cfg *c, const double *h, const double *w,
                              const double *b, int64_t rows, int64_t cols, double *terms) {
  for (int64_t i = 0; i < rows; i++) {
    const double *hr = h + i * cols;
    double mean, rstd, mabs = 0;
    ref_stats(c, hr, cols, c->eps, &mean, &rstd);
    for (int64_t j = 0; j < cols; j++) mabs += fabs(hr[j]) / (double)cols;
    for (int64_t j = 0; j < cols; j++) {
      double xh = fabs(hr[j] - mean) * rstd;
      double t = rstd * (fabs(hr[j]) + mabs) + xh;
      terms[i * cols + j] = t * (w ? fabs(w[j]) : 1.0) + (b ? fabs(b[j]) : 0.0);
    }
  }
}

/* h = round(x + r) (or x), y = norm(h). */
static void ref_forward(const norm_cfg *c, zmlx_dtype dt, int64_t rows, int64_t cols,
                        const double *x, const double *r, const double *w, const double *b,
                        double *h, double *y) {
  for (int64_t i = 0; i < rows * cols; i++) h[i] = r ? zck_round(dt, x[i] + r[i]) : x[i];
  for (int64_t i = 0; i < rows; i++) {
    const double *hr = h + i * cols;
    double mean, rstd;
    ref_stats(c, hr, cols, c->eps, &mean, &rstd);
    for (int64_t j = 0; j < cols; j++) {
      double v = (hr[j] - mean) * rstd;
      if (w) v *= w[j];
      if (b) v += b[j];
      y[i * cols + j] = v;
    }
  }
}

/* dx (+ dh), dw, db from h and dy (any may be NULL where not wanted). */
static void ref_backward(const norm_cfg *c, int64_t rows, int64_t cols, const double *h,
                         const double *w, const double *dy, const double *dh, double *dx,
                         double *dw, double *db) {
  if (dw) memset(dw, 0, (size_t)cols * sizeof *dw);
  if (db) memset(db, 0, (size_t)cols * sizeof *db);
  for (int64_t i = 0; i < rows; i++) {
    const double *hr = h + i * cols, *dyr = dy + i * cols;
    double mean, rstd, a = 0, bb = 0;
    ref_stats(c, hr, cols, c->eps, &mean, &rstd);
    for (int64_t j = 0; j < cols; j++) {
      double xh = (hr[j] - mean) * rstd, g = dyr[j] * (w ? w[j] : 1.0);
      a += g * xh;
      bb += g;
      if (dw) dw[j] += dyr[j] * xh;
      if (db) db[j] += dyr[j];
    }
    a /= (double)cols;
    bb = c->rms ? 0.0 : bb / (double)cols;
    for (int64_t j = 0; j < cols; j++) {
      double xh = (hr[j] - mean) * rstd, g = dyr[j] * (w ? w[j] : 1.0);
      dx[i * cols + j] = rstd * (g - bb - xh * a) + (dh ? dh[i * cols + j] : 0.0);
    }
  }
}

/* The size of the terms behind each gradient, in the units of
 * zck_bound_sum: dx = rstd (g - mean(g) - xh mean(g xh)) with g = dy w,
 * whose two row means cancel, and xh carrying u32 (|h| + mean|h|) rstd from
 * the forward; dw and db sum dy xh and dy over the rows. */
static void ref_backward_terms(const norm_cfg *c, int64_t rows, int64_t cols, const double *h,
                               const double *w, const double *dy, const double *dh,
                               double *tx, double *tw, double *tb) {
  memset(tw, 0, (size_t)cols * sizeof *tw);
  memset(tb, 0, (size_t)cols * sizeof *tb);
  for (int64_t i = 0; i < rows; i++) {
    const double *hr = h + i * cols, *dyr = dy + i * cols;
    double mean, rstd, a = 0, bb = 0, mabs = 0;
    ref_stats(c, hr, cols, c->eps, &mean, &rstd);
    for (int64_t j = 0; j < cols; j++) mabs += fabs(hr[j]) / (double)cols;
    for (int64_t j = 0; j < cols; j++) {
      double xh = fabs(hr[j] - mean) * rstd + rstd * (fabs(hr[j]) + mabs);
      double g = fabs(dyr[j] * (w ? w[j] : 1.0));
      a += g * xh / (double)cols;
      bb += c->rms ? 0.0 : g / (double)cols;
      tw[j] += fabs(dyr[j]) * xh;
      tb[j] += fabs(dyr[j]);
    }
    for (int64_t j = 0; j < cols; j++) {
      double xh = fabs(hr[j] - mean) * rstd + rstd * (fabs(hr[j]) + mabs);
      double g = fabs(dyr[j] * (w ? w[j] : 1.0));
      tx[i * cols + j] = rstd * (g + bb + xh * a) + (dh ? fabs(dh[i * cols + j]) : 0.0);
    }
  }
}

/* Host inputs of one case. */
typedef struct norm_case {
  norm_cfg c;
  int ndim;
  int64_t shape[3];
  int64_t rows, cols;
  double *x, *r, *w, *b, *c1, *c2; /* c1, c2: the loss weights of y and h */
  zmlx_array *ax, *ar, *aw, *ab, *ac1, *ac2;
} norm_case;

static void case_free(norm_case *k) {
  free(k->x);
  free(k->r);
  free(k->w);
  free(k->b);
  free(k->c1);
  free(k->c2);
  zmlx_array_release(k->ax);
  zmlx_array_release(k->ar);
  zmlx_array_release(k->aw);
  zmlx_array_release(k->ab);
  zmlx_array_release(k->ac1);
  zmlx_array_release(k->ac2);
  memset(k, 0, sizeof *k);
}

static zmlx_status case_make(const zmlx_check_opts *o, const norm_cfg *c, int64_t rows,
                             int64_t cols, uint64_t seed, int with_loss, zck_family family,
                             norm_case *k) {
  memset(k, 0, sizeof *k);
  k->c = *c;
  k->rows = rows;
  k->cols = cols;
  if (rows % 2 == 0 && rows > 2) {
    k->ndim = 3;
    k->shape[0] = 2;
    k->shape[1] = rows / 2;
    k->shape[2] = cols;
  } else {
    k->ndim = 2;
    k->shape[0] = rows;
    k->shape[1] = cols;
  }
  int64_t n = rows * cols;
  zmlx_dtype dt = o->dtype;
  uint64_t s = seed;
  size_t nb = (size_t)n * sizeof(double) + 1, cb = (size_t)cols * sizeof(double) + 1;
  k->x = malloc(nb);
  if (c->has_r) k->r = malloc(nb);
  if (c->has_w) k->w = malloc(cb);
  if (c->has_b) k->b = malloc(cb);
  if (with_loss) k->c1 = malloc(nb);
  if (with_loss && c->has_r) k->c2 = malloc(nb);
  if (!k->x || (c->has_r && !k->r) || (c->has_w && !k->w) || (c->has_b && !k->b) ||
      (with_loss && !k->c1) || (with_loss && c->has_r && !k->c2))
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "norm check: out of host memory");
  /* An offset makes the mean matter for layernorm. */
  zck_fill(family, k->x, rows, cols, -1.5, 2.5, dt, &s);
  if (k->r) zck_fill(family, k->r, rows, cols, -1.0, 1.0, dt, &s);
  if (k->w) zck_fill(ZCK_UNIFORM, k->w, 1, cols, 0.5, 1.5, dt, &s);
  if (k->b) zck_fill(ZCK_UNIFORM, k->b, 1, cols, -0.5, 0.5, dt, &s);
  if (k->c1) zck_fill(ZCK_UNIFORM, k->c1, 1, n, -1.0, 1.0, dt, &s);
  if (k->c2) zck_fill(ZCK_UNIFORM, k->c2, 1, n, -1.0, 1.0, dt, &s);
  zmlx_device *dev = o->device;
  int64_t wshape[1] = {cols};
  ZMLX_CHECK(zck_upload(dev, dt, k->ndim, k->shape, k->x, &k->ax));
  if (k->r) ZMLX_CHECK(zck_upload(dev, dt, k->ndim, k->shape, k->r, &k->ar));
  if (k->w) ZMLX_CHECK(zck_upload(dev, dt, 1, wshape, k->w, &k->aw));
  if (k->b) ZMLX_CHECK(zck_upload(dev, dt, 1, wshape, k->b, &k->ab));
  if (k->c1) ZMLX_CHECK(zck_upload(dev, dt, k->ndim, k->shape, k->c1, &k->ac1));
  if (k->c2) ZMLX_CHECK(zck_upload(dev, dt, k->ndim, k->shape, k->c2, &k->ac2));
  return ZMLX_OK;
}

static const char *case_shape(const norm_case *k, char *buf, size_t cap) {
  return zmlxi_shape_str(buf, cap, k->ndim, k->shape);
}

static const char *variant_what(const norm_cfg *c, const char *base, char *buf, size_t cap) {
  const char *v = "";
  if (c->rms) v = c->has_w ? "" : " (no w)";
  else if (!c->has_w && !c->has_b) v = " (no g, b)";
  else if (!c->has_b) v = " (no b)";
  snprintf(buf, cap, "%s%s", base, v);
  return buf;
}

static zmlx_status fwd_case(const zmlx_check_opts *o, const norm_cfg *c, int64_t rows,
                            int64_t cols, uint64_t seed, zck_family family) {
  norm_case k;
  zmlx_status st = case_make(o, c, rows, cols, seed, 0, family, &k);
  zmlx_array *py = NULL, *ph = NULL, *y = NULL, *h = NULL;
  double *want_y = NULL, *want_h = NULL, *got_y = NULL, *got_h = NULL;
  int64_t n = rows * cols;
  char shape[96], what[64];
  case_shape(&k, shape, sizeof shape);
  snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s", zck_family_name(family));
  variant_what(c, "fwd", what, sizeof what);
  if (st == ZMLX_OK) st = zmlx_array_full(o->device, o->dtype, k.ndim, k.shape, NAN, &py);
  if (st == ZMLX_OK && c->has_r)
    st = zmlx_array_full(o->device, o->dtype, k.ndim, k.shape, NAN, &ph);
  if (st == ZMLX_OK) {
    want_y = malloc((size_t)n * sizeof *want_y + 1);
    want_h = malloc((size_t)n * sizeof *want_h + 1);
    if (!want_y || !want_h) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "norm check: out of memory");
  }
  if (st == ZMLX_OK) {
    ref_forward(c, o->dtype, rows, cols, k.x, k.r, k.w, k.b, want_h, want_y);
    zmlx_status op = zmlxi_norm_call(c, k.ax, k.ar, k.aw, k.ab, py, ph, &y, &h);
    double err = INFINITY, tol = 0;
    if (op == ZMLX_OK) st = zck_download(y, &got_y);
    if (op == ZMLX_OK && st == ZMLX_OK) {
      double *terms = malloc((size_t)n * sizeof *terms + 1);
      if (!terms) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "norm check: out of memory");
      else ref_forward_terms(c, want_h, k.w, k.b, rows, cols, terms);
      if (terms)
        zck_within_scaled(got_y, want_y, terms, n, zck_bound_sum(ZCK_TOL_NORM, o->dtype, cols), &err,
                          &tol);
      free(terms);
    }
    if (op == ZMLX_OK && st == ZMLX_OK && c->has_r) {
      /* h = x + r, once rounded to the dtype */
      st = zck_download(h, &got_h);
      if (st == ZMLX_OK) zck_within_acc(got_h, want_h, NULL, n, zck_bound_of(ZCK_TOL_ELEMENTWISE, o->dtype, 0, 1), &err, &tol);
    }
    if (st == ZMLX_OK) {
      zck_emit(o, c->name, what, o->dtype, shape, err, tol, op == ZMLX_OK && err <= tol);
    }
  }
  free(want_y);
  free(want_h);
  free(got_y);
  free(got_h);
  zmlx_array_release(py);
  zmlx_array_release(ph);
  zmlx_array_release(y);
  zmlx_array_release(h);
  case_free(&k);
  return st;
}

/* loss = sum(norm(x[, r]) * c1) [+ sum(h * c2)]. */
static zmlx_status loss_fn(void *ud, zmlx_array *const *in, int n_in, zmlx_array **out) {
  const norm_case *k = ud;
  int i = 1;
  zmlx_array *r = k->c.has_r ? in[i++] : NULL;
  zmlx_array *w = k->c.has_w ? in[i++] : NULL;
  zmlx_array *b = k->c.has_b ? in[i++] : NULL;
  (void)n_in;
  zmlx_array *y = NULL, *h = NULL, *m = NULL, *s = NULL, *m2 = NULL, *s2 = NULL;
  zmlx_status st = zmlxi_norm_call(&k->c, in[0], r, w, b, NULL, NULL, &y, &h);
  if (st == ZMLX_OK) st = zmlx_mul(y, k->ac1, &m);
  if (st == ZMLX_OK) st = zmlx_sum(m, NULL, 0, 0, &s);
  if (st == ZMLX_OK && k->c.has_r) {
    st = zmlx_mul(h, k->ac2, &m2);
    if (st == ZMLX_OK) st = zmlx_sum(m2, NULL, 0, 0, &s2);
    if (st == ZMLX_OK) st = zmlx_add(s, s2, out);
  } else if (st == ZMLX_OK) {
    zmlx_array_retain(s);
    *out = s;
  }
  zmlx_array_release(y);
  zmlx_array_release(h);
  zmlx_array_release(m);
  zmlx_array_release(s);
  zmlx_array_release(m2);
  zmlx_array_release(s2);
  return st;
}

static int case_inputs(norm_case *k, zmlx_array **ins, const char **names) {
  int n = 0;
  names[n] = "x";
  ins[n++] = k->ax;
  if (k->c.has_r) {
    names[n] = "r";
    ins[n++] = k->ar;
  }
  if (k->c.has_w) {
    names[n] = k->c.rms ? "w" : "g";
    ins[n++] = k->aw;
  }
  if (k->c.has_b) {
    names[n] = "b";
    ins[n++] = k->ab;
  }
  return n;
}

/* Finite differences (f32 only). */
static zmlx_status fd_case(const zmlx_check_opts *o, const norm_cfg *c, int64_t rows,
                           int64_t cols, uint64_t seed) {
  norm_case k;
  zmlx_status st = case_make(o, c, rows, cols, seed, 1, ZCK_UNIFORM, &k);
  char shape[96], what[64], base[32];
  case_shape(&k, shape, sizeof shape);
  if (st == ZMLX_OK) {
    zmlx_array *ins[4];
    const char *names[4];
    int n = case_inputs(&k, ins, names);
    zmlx_grad_check_report rep;
    const double tol = zck_fd_tol();
    zmlx_status op = zmlx_check_grad(loss_fn, &k, ins, n, 1e-3, tol, &rep);
    for (int i = 0; i < n; i++) {
      snprintf(base, sizeof base, "grad %s (fd)", names[i]);
      variant_what(c, base, what, sizeof what);
      int pass = op == ZMLX_OK && rep.inputs[i].checked && rep.inputs[i].passed;
      double err = op == ZMLX_OK ? rep.inputs[i].max_abs_err : INFINITY;
      zck_emit(o, c->name, what, o->dtype, shape, err, tol, pass);
    }
  }
  case_free(&k);
  return st;
}

/* Analytic gradients against the f64 reference (every dtype). */
static zmlx_status ref_grad_case(const zmlx_check_opts *o, const norm_cfg *c, int64_t rows,
                                 int64_t cols, uint64_t seed) {
  norm_case k;
  zmlx_status st = case_make(o, c, rows, cols, seed, 1, ZCK_UNIFORM, &k);
  char shape[96], what[64], base[32];
  case_shape(&k, shape, sizeof shape);
  int64_t n = rows * cols;
  double *h = malloc((size_t)n * sizeof *h + 1), *y = malloc((size_t)n * sizeof *y + 1);
  double *dx = malloc((size_t)n * sizeof *dx + 1);
  double *dw = malloc((size_t)cols * sizeof *dw + 1), *db = malloc((size_t)cols * sizeof *db + 1);
  double *tx = malloc((size_t)n * sizeof *tx + 1), *tw = malloc((size_t)cols * sizeof *tw + 1);
  double *tb = malloc((size_t)cols * sizeof *tb + 1);
  if (st == ZMLX_OK && (!h || !y || !dx || !dw || !db || !tx || !tw || !tb))
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "norm check: out of host memory");
  if (st == ZMLX_OK) {
    zmlx_array *ins[4], *grads[4] = {0};
    const char *names[4];
    int ni = case_inputs(&k, ins, names);
    ref_forward(c, o->dtype, rows, cols, k.x, k.r, k.w, k.b, h, y);
    ref_backward(c, rows, cols, h, k.w, k.c1, k.c2, dx, c->has_w ? dw : NULL,
                 c->has_b ? db : NULL);
    ref_backward_terms(c, rows, cols, h, k.w, k.c1, k.c2, tx, tw, tb);
    zmlx_status op = zmlx_grad(loss_fn, &k, ins, ni, NULL, 0, grads);
    for (int i = 0; i < ni && st == ZMLX_OK; i++) {
      const double *want = dx, *terms = tx;
      int64_t m = n, sum_len = cols;
      if ((c->has_w && i == (c->has_r ? 2 : 1))) want = dw, terms = tw, m = cols, sum_len = rows;
      if (c->has_b && i == ni - 1) want = db, terms = tb, m = cols, sum_len = rows;
      double err = INFINITY, tol = 0, *got = NULL;
      if (op == ZMLX_OK) st = zck_download(grads[i], &got);
      if (op == ZMLX_OK && st == ZMLX_OK)
        zck_within_scaled(got, want, terms, m, zck_bound_sum(ZCK_TOL_NORM_GRAD, o->dtype, sum_len),
                          &err, &tol);
      free(got);
      snprintf(base, sizeof base, "grad %s", names[i]);
      variant_what(c, base, what, sizeof what);
      if (st == ZMLX_OK) zck_emit(o, c->name, what, o->dtype, shape, err, tol, op == ZMLX_OK && err <= tol);
    }
    zmlxi_ad_release_all(grads, 4);
  }
  free(h);
  free(y);
  free(dx);
  free(dw);
  free(db);
  free(tx);
  free(tw);
  free(tb);
  case_free(&k);
  return st;
}

static zmlx_status error_cases(const zmlx_check_opts *o, const norm_cfg *c0) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  norm_cfg c = *c0;
  zmlx_array *x = NULL, *r = NULL, *bad_r = NULL, *w = NULL, *bad_w = NULL, *scalar = NULL,
             *xi = NULL, *ri = NULL, *y = NULL, *h = NULL;
  int64_t shape[2] = {3, 8}, rshape[2] = {3, 9}, wshape[1] = {8}, bwshape[1] = {7};
  zmlx_status st = zmlx_array_full(dev, dt, 2, shape, 1.0, &x);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 2, shape, 0.5, &r);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 2, rshape, 0.5, &bad_r);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 1, wshape, 1.0, &w);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 1, bwshape, 1.0, &bad_w);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 0, NULL, 1.0, &scalar);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, ZMLX_I32, 2, shape, 1.0, &xi);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, ZMLX_I32, 2, shape, 1.0, &ri);
  if (st == ZMLX_OK) {
    zmlx_array *rr = c.has_r ? r : NULL;
    c.has_w = 1;
    c.has_b = 0;
    zck_expect(o, c.name, "error: x rank 0",
              zmlxi_norm_call(&c, scalar, c.has_r ? scalar : NULL, w, NULL, NULL, NULL, &y, &h), NULL,
              ZMLX_ERR_SHAPE, "rank");
    zck_expect(o, c.name, "error: weight of the wrong length",
              zmlxi_norm_call(&c, x, rr, bad_w, NULL, NULL, NULL, &y, &h), NULL, ZMLX_ERR_SHAPE, "[7]");
    if (!c.rms)
      zck_expect(o, c.name, "error: bias of the wrong length",
                zmlxi_norm_call(&c, x, rr, w, bad_w, NULL, NULL, &y, &h), NULL, ZMLX_ERR_SHAPE, "bias");
    zck_expect(o, c.name, "error: x of dtype i32",
              zmlxi_norm_call(&c, xi, c.has_r ? ri : NULL, w, NULL, NULL, NULL, &y, &h), NULL, ZMLX_ERR_DTYPE,
              "i32");
    zck_expect(o, c.name, "error: weight of dtype i32",
              zmlxi_norm_call(&c, x, rr, ri, NULL, NULL, NULL, &y, &h), NULL, ZMLX_ERR_DTYPE, "i32");
    if (c.has_r) {
      zck_expect(o, c.name, "error: r of another shape",
                zmlxi_norm_call(&c, x, bad_r, w, NULL, NULL, NULL, &y, &h), NULL, ZMLX_ERR_SHAPE, "residual");
      zck_expect(o, c.name, "error: r NULL", zmlxi_norm_call(&c, x, NULL, w, NULL, NULL, NULL, &y, &h), NULL,
                ZMLX_ERR_NULL_ARG, "residual");
    }
    zmlx_array_release(y);
    zmlx_array_release(h);
  }
  zmlx_array *all[] = {x, r, bad_r, w, bad_w, scalar, xi, ri};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) zmlx_array_release(all[i]);
  return st;
}

/* Every case of one op: the weighted forms at every shape, the weightless
 * ones at a few, gradients, bad input. */
static zmlx_status check_family(const zmlx_check_opts *o, const norm_cfg *c0) {
  if (!o || !o->device) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "norm check: no device");
  if (!zmlxi_ad_is_float(o->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "norm check: dtype %s (f32, f16 or bf16)",
                     zmlx_dtype_name(o->dtype));
  /* 1, 7: scalar; 64, 1000: the row in registers, 16-byte accesses; 4097:
   * scalar streaming; 16392: 16-byte streaming for every dtype (`zmlx check
   * --paths` shows each case's kernel variant) */
  static const int64_t quick_cols[] = {1, 7, 64, 1000, 4097, 16392};
  static const int64_t full_rows[][2] = {{2, 32768}, {256, 4096}, {37, 640}};
  uint64_t seed = o->seed ^ (uint64_t)(c0->rms * 2 + c0->has_r) * 0x51ED27ull;
  int idx = 0;
  norm_cfg c = *c0;
  c.eps = 1e-5f;
  c.has_w = 1;
  c.has_b = !c.rms;
  /* Weighted forward. */
  for (int rr = 0; rr < 2; rr++)
    for (size_t j = 0; j < sizeof quick_cols / sizeof quick_cols[0]; j++)
      ZMLX_CHECK(fwd_case(o, &c, rr ? 6 : 1, quick_cols[j], seed + (uint64_t)idx++, ZCK_UNIFORM));
  if (!o->quick)
    for (size_t j = 0; j < sizeof full_rows / sizeof full_rows[0]; j++)
      ZMLX_CHECK(fwd_case(o, &c, full_rows[j][0], full_rows[j][1], seed + (uint64_t)idx++, ZCK_UNIFORM));
  /* A mean square near eps (eps in the wrong place shows) and rows shifted
   * by +-100..1000 (a variance that cancels shows), at widths that reach
   * the row in registers (64, 1000) and the streamed form (4097). */
  static const int64_t family_cols[] = {64, 1000, 4097};
  for (size_t j = 0; j < sizeof family_cols / sizeof family_cols[0]; j++) {
    ZMLX_CHECK(fwd_case(o, &c, 3, family_cols[j], seed + (uint64_t)idx++, ZCK_TINY));
    ZMLX_CHECK(fwd_case(o, &c, 3, family_cols[j], seed + (uint64_t)idx++, ZCK_OFFSET));
  }
  /* Without weights (and layernorm with g only). */
  norm_cfg nw = c;
  nw.has_w = nw.has_b = 0;
  ZMLX_CHECK(fwd_case(o, &nw, 5, 7, seed + (uint64_t)idx++, ZCK_UNIFORM));
  ZMLX_CHECK(fwd_case(o, &nw, 3, 4097, seed + (uint64_t)idx++, ZCK_UNIFORM));
  if (!o->quick) ZMLX_CHECK(fwd_case(o, &nw, 2, 32768, seed + (uint64_t)idx++, ZCK_UNIFORM));
  norm_cfg go = c;
  go.has_b = 0;
  if (!c.rms) ZMLX_CHECK(fwd_case(o, &go, 4, 1000, seed + (uint64_t)idx++, ZCK_UNIFORM));
  /* Gradients. */
  if (o->dtype == ZMLX_F32) {
    ZMLX_CHECK(fd_case(o, &c, 3, 7, seed + (uint64_t)idx++));
    ZMLX_CHECK(fd_case(o, &nw, 2, 9, seed + (uint64_t)idx++));
    if (!o->quick) ZMLX_CHECK(fd_case(o, &c, 2, 40, seed + (uint64_t)idx++));
  }
  ZMLX_CHECK(ref_grad_case(o, &c, 4, 64, seed + (uint64_t)idx++));
  ZMLX_CHECK(ref_grad_case(o, &c, 3, 1000, seed + (uint64_t)idx++));
  ZMLX_CHECK(ref_grad_case(o, &nw, 5, 33, seed + (uint64_t)idx++));
  if (!o->quick) {
    ZMLX_CHECK(ref_grad_case(o, &c, 2, 4097, seed + (uint64_t)idx++));
    ZMLX_CHECK(ref_grad_case(o, &c, 300, 256, seed + (uint64_t)idx++));
    ZMLX_CHECK(ref_grad_case(o, &c, 2, 32768, seed + (uint64_t)idx++));
  }
  return error_cases(o, &c);
}

static zmlx_status check_rmsnorm(const zmlx_check_opts *o) {
  norm_cfg c = {.name = "rmsnorm", .rms = 1};
  return check_family(o, &c);
}
static zmlx_status check_layernorm(const zmlx_check_opts *o) {
  norm_cfg c = {.name = "layernorm", .rms = 0};
  return check_family(o, &c);
}
static zmlx_status check_add_rmsnorm(const zmlx_check_opts *o) {
  norm_cfg c = {.name = "add_rmsnorm", .rms = 1, .has_r = 1};
  return check_family(o, &c);
}
static zmlx_status check_add_layernorm(const zmlx_check_opts *o) {
  norm_cfg c = {.name = "add_layernorm", .rms = 0, .has_r = 1};
  return check_family(o, &c);
}

extern const zmlx_catalog_op zck_catalog_norm_ops[];
const zmlx_catalog_op zck_catalog_norm_ops[] = {
    {"rmsnorm", check_rmsnorm},
    {"layernorm", check_layernorm},
    {"add_rmsnorm", check_add_rmsnorm},
    {"add_layernorm", check_add_layernorm},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef enum nb_kind { NB_RMS, NB_LAYER, NB_ADD_RMS, NB_ADD_LAYER } nb_kind;

typedef struct norm_bench {
  nb_kind kind;
  zmlx_array *x, *r, *w, *b;
} norm_bench;

static zmlx_status norm_bench_run(void *p) {
  norm_bench *c = p;
  zmlx_array *y = NULL, *h = NULL;
  zmlx_status st;
  switch (c->kind) {
    case NB_RMS: st = zmlx_rmsnorm(c->x, c->w, 1e-6, &y); break;
    case NB_LAYER: st = zmlx_layernorm(c->x, c->w, c->b, 1e-5, &y); break;
    case NB_ADD_RMS: st = zmlx_add_rmsnorm(c->x, c->r, c->w, 1e-6, &y, &h); break;
    default: st = zmlx_add_layernorm(c->x, c->r, c->w, c->b, 1e-5, &y, &h); break;
  }
  zmlx_array_release(y);
  zmlx_array_release(h);
  return st;
}

/* bf16 [16384, 4096] with bf16 weights: bytes = x (+ r) read, y (+ h) written,
 * weights read once. */
static zmlx_status norm_bench_case(const zmlx_bench_opts *o, const char *op, nb_kind kind) {
  int64_t shape[2] = {zck_bench_rows(o, 16384), 4096}, wl = shape[1];
  const int residual = kind == NB_ADD_RMS || kind == NB_ADD_LAYER;
  const int bias = kind == NB_LAYER || kind == NB_ADD_LAYER;
  norm_bench c = {kind, NULL, NULL, NULL, NULL};
  zmlx_status st = zck_bench_random(o->device, ZMLX_BF16, 2, shape, 21, &c.x);
  if (st == ZMLX_OK && residual) st = zck_bench_random(o->device, ZMLX_BF16, 2, shape, 22, &c.r);
  if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_BF16, 1, &wl, 23, &c.w);
  if (st == ZMLX_OK && bias) st = zck_bench_random(o->device, ZMLX_BF16, 1, &wl, 24, &c.b);
  double n = (double)shape[0] * (double)shape[1];
  double bytes = 2.0 * n * (residual ? 4 : 2) + 2.0 * (double)wl * (bias ? 2 : 1);
  if (st == ZMLX_OK)
    st = zck_bench_time_emit(o, op, ZMLX_BF16, 2, shape, bytes, norm_bench_run, &c);
  zmlx_array_release(c.x);
  zmlx_array_release(c.r);
  zmlx_array_release(c.w);
  zmlx_array_release(c.b);
  return st;
}

static zmlx_status bench_rmsnorm(const zmlx_bench_opts *o) {
  return norm_bench_case(o, "rmsnorm", NB_RMS);
}
static zmlx_status bench_layernorm(const zmlx_bench_opts *o) {
  return norm_bench_case(o, "layernorm", NB_LAYER);
}
static zmlx_status bench_add_rmsnorm(const zmlx_bench_opts *o) {
  return norm_bench_case(o, "add_rmsnorm", NB_ADD_RMS);
}
static zmlx_status bench_add_layernorm(const zmlx_bench_opts *o) {
  return norm_bench_case(o, "add_layernorm", NB_ADD_LAYER);
}

extern const zmlx_catalog_bench zck_catalog_norm_bench[];
const zmlx_catalog_bench zck_catalog_norm_bench[] = {
    {"rmsnorm", bench_rmsnorm},
    {"layernorm", bench_layernorm},
    {"add_rmsnorm", bench_add_rmsnorm},
    {"add_layernorm", bench_add_layernorm},
    {0},
};
