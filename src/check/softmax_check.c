/* `zmlx check` and `zmlx bench` cases of src/ops/softmax.c: forward against
 * an f64 reference on fresh random inputs with poisoned outputs, gradients,
 * bad input, and the LLM shapes the benchmark times. Part of the check
 * library (the CLI and the tests link it; libzmlx does not). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "autograd/ad.h"
#include "gen/patterns.h"
#include "kernel/kernel.h"
#include "runtime/internal.h"
#include "check/check_util.h"
#include "ops/softmax.h"

/* ------------------------------------------------------------------- checks */

/* f64 reference of one row family. v: values after scale / mask / causal
 * (-inf where masked). out: [rows, cols] or [rows] for logsumexp. */
static void ref_rows(int mode, const double *v, int64_t rows, int64_t cols, double *out) {
  for (int64_t r = 0; r < rows; r++) {
    const double *x = v + r * cols;
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < cols; j++)
      if (x[j] > m) m = x[j];
    if (m > -INFINITY)
      for (int64_t j = 0; j < cols; j++) s += exp(x[j] - m);
    double lse = s > 0 ? m + log(s) : -INFINITY;
    if (mode == SM_LOGSUMEXP) {
      out[r] = lse;
      continue;
    }
    for (int64_t j = 0; j < cols; j++)
      out[r * cols + j] = mode == SM_SOFTMAX ? (s > 0 ? exp(x[j] - lse) : 0.0) : x[j] - lse;
  }
}

/* f64 VJP reference: y from ref_rows (softmax / log_softmax), lse for
 * logsumexp (then y unused, x the input), g the cotangent. */
static void ref_vjp(int mode, const double *x, const double *y, const double *g, int64_t rows,
                    int64_t cols, double scale, double *dx) {
  for (int64_t r = 0; r < rows; r++) {
    const int64_t b = r * cols;
    if (mode == SM_LOGSUMEXP) {
      for (int64_t j = 0; j < cols; j++) dx[b + j] = g[r] * exp(x[b + j] - y[r]);
      continue;
    }
    double acc = 0;
    for (int64_t j = 0; j < cols; j++) acc += mode == SM_SOFTMAX ? g[b + j] * y[b + j] : g[b + j];
    for (int64_t j = 0; j < cols; j++)
      dx[b + j] = mode == SM_SOFTMAX ? scale * y[b + j] * (g[b + j] - acc)
                                     : g[b + j] - exp(y[b + j]) * acc;
  }
}

/* The size of the terms each dx element is summed from (softmax: y_i g_i
 * and y_i sum_j g_j y_j), per element. Rounding y (stored in the dtype) and
 * the row sum err by the dtype's epsilon times these terms, not times dx:
 * where they cancel (g_i close to sum_j g_j y_j; a causal row of one
 * element, whose dx is 0) dx is small and its relative error is not a
 * measure of the kernel. */
static void ref_vjp_terms(int mode, const double *x, const double *y, const double *g,
                          int64_t rows, int64_t cols, double scale, double *mag) {
  for (int64_t r = 0; r < rows; r++) {
    const int64_t b = r * cols;
    if (mode == SM_LOGSUMEXP) {
      /* g exp(x - lse): an error in lse (its rounding, f32's) counts
       * |lse| times in the exponent */
      for (int64_t j = 0; j < cols; j++)
        mag[b + j] = fabs(g[r]) * exp(x[b + j] - y[r]) * fmax(1, fabs(y[r]));
      continue;
    }
    /* log_softmax: exp(y) with y's error counting |y| times, as lse above */
    double acc = 0;
    for (int64_t j = 0; j < cols; j++)
      acc += mode == SM_SOFTMAX ? fabs(g[b + j]) * y[b + j] : fabs(g[b + j]);
    for (int64_t j = 0; j < cols; j++)
      mag[b + j] = mode == SM_SOFTMAX ? fabs(scale) * y[b + j] * (fabs(g[b + j]) + acc)
                                      : fabs(g[b + j]) + exp(y[b + j]) * acc * fmax(1, fabs(y[b + j]));
  }
}

typedef struct sm_case {
  int mode;
  int ndim;
  int64_t shape[4];
  int mask_kind; /* 0 none, 1 additive, 2 bool; mask shape = last two dims */
  int causal;
  double scale;
  zck_family family; /* of the logits */
} sm_case;

/* Function for the autograd paths: scalar (sum of op(x) * w) or the op. */
typedef struct sm_fn_data {
  sm_args a;
  zmlx_array *w; /* NULL: return op(x) itself */
} sm_fn_data;

static zmlx_status sm_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  sm_fn_data *d = ud;
  sm_args a = d->a;
  if (n > 1) a.mask = in[1];
  zmlx_array *y = NULL;
  ZMLX_CHECK(zmlxi_softmax_run(MODE_NAMES[a.mode], in[0], &a, &y));
  if (!d->w) {
    *out = y;
    return ZMLX_OK;
  }
  zmlx_status st = zck_weighted_sum(y, d->w, out);
  zmlx_array_release(y);
  return st;
}

/* The largest max - min of a row's finite values (masked entries are -inf). */
static double row_span(const double *v, int64_t rows, int64_t cols) {
  double span = 0;
  for (int64_t r = 0; r < rows; r++) {
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t j = 0; j < cols; j++) {
      double z = v[r * cols + j];
      if (isfinite(z)) lo = fmin(lo, z), hi = fmax(hi, z);
    }
    if (hi >= lo) span = fmax(span, hi - lo);
  }
  return span;
}

/* Runs forward (poisoned output) and the VJP against the f64 reference;
 * with `gradcheck`, also zmlx_check_grad (f32). */
static zmlx_status sm_case_run(const zmlx_check_opts *o, const char *op, const sm_case *c,
                               int gradcheck, uint64_t *rng) {
  zmlx_dtype dt = o->dtype;
  const int64_t cols = c->shape[c->ndim - 1];
  int64_t size = 1;
  for (int i = 0; i < c->ndim; i++) size *= c->shape[i];
  const int64_t rows = size / cols;
  const int64_t sq = c->ndim >= 2 ? c->shape[c->ndim - 2] : 1;
  const int64_t mrows = c->mask_kind ? sq : 1;
  char shp[96];
  char extra[48] = "";
  if (c->mask_kind || c->causal || c->scale != 1.0)
    snprintf(extra, sizeof extra, "%s%s scale %g", c->mask_kind == 1 ? "add-mask " :
             c->mask_kind == 2 ? "bool-mask " : "", c->causal ? "causal" : "", c->scale);
  else if (c->family != ZCK_UNIFORM)
    snprintf(extra, sizeof extra, "%s", zck_family_name(c->family) + 1);
  zck_shape_str(shp, sizeof shp, c->ndim, c->shape, extra[0] ? extra : NULL);

  zmlx_status st = ZMLX_OK;
  double *xv = malloc((size_t)size * sizeof *xv), *v = malloc((size_t)size * sizeof *v);
  double *mv = malloc((size_t)(mrows * cols) * sizeof *mv);
  double *want = malloc((size_t)size * sizeof *want), *gv = malloc((size_t)size * sizeof *gv);
  double *dwant = malloc((size_t)size * sizeof *dwant), *dmag = malloc((size_t)size * sizeof *dmag);
  double *got = NULL, *dgot = NULL;
  zmlx_array *x = NULL, *mask = NULL, *out = NULL, *g = NULL, *vout = NULL, *dx = NULL;
  if (!xv || !v || !mv || !want || !gv || !dwant || !dmag) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "check: out of host memory");
    goto done;
  }
  zck_fill(c->family, xv, rows, cols, -4, 4, dt, rng);
  for (int64_t i = 0; i < mrows * cols; i++) {
    double u = zck_uniform(rng, 0, 1);
    if (c->mask_kind == 1) mv[i] = u < 0.2 && !gradcheck ? -INFINITY : zck_round(dt, u * 2 - 1);
    else mv[i] = u < 0.75 ? 1 : 0;
  }
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < cols; j++) {
      int64_t i = r * cols + j;
      double z = (double)(float)((float)xv[i] * (float)c->scale);
      if (c->mask_kind == 1) z = (double)((float)z + (float)mv[(r % mrows) * cols + j]);
      if (c->mask_kind == 2 && mv[(r % mrows) * cols + j] == 0) z = -INFINITY;
      if (c->causal && j > (r % sq) + cols - sq) z = -INFINITY;
      v[i] = z;
    }
  ref_rows(c->mode, v, rows, cols, want);

  ZMLX_CHECK(zck_upload(o->device, dt, c->ndim, c->shape, xv, &x));
  if (c->mask_kind) {
    int64_t ms[2] = {sq, cols};
    st = zck_upload(o->device, c->mask_kind == 2 ? ZMLX_BOOL : dt, 2, ms, mv, &mask);
    if (st != ZMLX_OK) goto done;
  }
  sm_args a = {c->mode, mask, c->scale, c->causal};
  int ond = c->mode == SM_LOGSUMEXP ? c->ndim - 1 : c->ndim;
  const int64_t nout = c->mode == SM_LOGSUMEXP ? rows : size;
  st = zmlx_array_full(o->device, dt, ond, c->shape, NAN, &out);
  if (st == ZMLX_OK) st = zmlxi_softmax_validate(op, x, &a);
  if (st == ZMLX_OK) st = zmlxi_softmax_forward_into(x, &a, out);
  if (st != ZMLX_OK) goto done;
  zck_download(out, &got);
  if (!got) {
    st = zmlxi_fail(ZMLX_ERR_BACKEND, "check: download failed");
    goto done;
  }
  {
    /* softmax: exp(x - max) / sum, relative errors (the sum's among them)
     * that stay relative; x - max carries u32 of the row's span.
     * log_softmax = (x - max) - log(sum) and logsumexp = max + log(sum):
     * the sum's relative error becomes an absolute one through the log,
     * and only the final subtraction / addition is relative. */
    double e, t, span = row_span(v, rows, cols);
    zck_bound b = zck_bound_of(ZCK_TOL_ROW, dt, span, cols);
    if (c->mode != SM_SOFTMAX) {
      b = zck_bound_sum(ZCK_TOL_ROW, dt, cols); /* (K + 4 sqrt(n)) u32 absolute */
      b.atol += 0x1p-24 * span;
      b.rtol = zck_unit_roundoff(dt) + 0x1p-24;
    }
    int ok = zck_within(got, want, nout, b, &e, &t);
    zck_emit(o, op, "fwd", dt, shp, e, t, ok);
  }

  /* logsumexp's VJP, g exp(x - lse), reads the stored lse: in f16 / bf16 at
   * |lse| ~ 1000 that output is off by up to 0.25 / 2 (half an ulp), which
   * exp turns into a 28% / 640% error of dx in any implementation that
   * saves its output. Offset rows check that VJP in f32 only. */
  if (c->family == ZCK_OFFSET && c->mode == SM_LOGSUMEXP && dt != ZMLX_F32) goto done;
  /* VJP through autograd against the f64 reference: an error against the
   * size of the terms g y and y sum(g y) that cancel in it */
  double e, tol;
  for (int64_t i = 0; i < nout; i++) gv[i] = zck_round(dt, zck_uniform(rng, -1, 1));
  st = zck_upload(o->device, dt, ond, c->shape, gv, &g);
  if (st != ZMLX_OK) goto done;
  ref_vjp(c->mode, xv, want, gv, rows, cols, c->scale, dwant);
  {
    sm_fn_data fd = {a, NULL};
    zmlx_array *ins[2] = {x, mask};
    int argn = 0;
    zmlx_status vs = zmlx_vjp(sm_fn, &fd, ins, mask ? 2 : 1, &argn, 1, g, &vout, &dx);
    if (vs != ZMLX_OK) {
      zck_emit(o, op, "vjp x", dt, shp, INFINITY, 0, 0);
      zmlx_clear_error();
    } else {
      zck_download(dx, &dgot);
      ref_vjp_terms(c->mode, xv, want, gv, rows, cols, c->scale, dmag);
      /* the device starts from its own stored y (lse), off by u(dt) of
       * itself, and y enters twice: as the factor of y_j (g_j - sum(g y))
       * and inside the sum, u(dt) y_j (|g_j| + 2 sum|g y|) <= 2 u(dt) terms */
      zck_bound b = zck_bound_sum(ZCK_TOL_ROW, dt, cols);
      b.atol += 2 * zck_unit_roundoff(dt);
      b.floor *= 3; /* the final rounding, and a subnormal f16 y times |g - sum(g y)| <= 2 */
      int ok = 0;
      if (dgot) ok = zck_within_scaled(dgot, dwant, dmag, size, b, &e, &tol);
      else e = INFINITY, tol = 0;
      zck_emit(o, op, "vjp x", dt, shp, e, tol, ok);
    }
  }
  if (gradcheck) {
    /* finite differences (f32), through sum(op(x) * w) */
    double *wv = malloc((size_t)nout * sizeof *wv);
    zmlx_array *w = NULL;
    if (!wv) {
      st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "check: out of host memory");
      goto done;
    }
    for (int64_t i = 0; i < nout; i++) wv[i] = zck_uniform(rng, -1, 1);
    st = zck_upload(o->device, ZMLX_F32, ond, c->shape, wv, &w);
    free(wv);
    if (st != ZMLX_OK) goto done;
    sm_fn_data fd = {a, w};
    zmlx_array *ins[2] = {x, mask};
    zmlx_grad_check_report rep;
    memset(&rep, 0, sizeof rep);
    zmlx_status gs = zmlx_check_grad(sm_fn, &fd, ins, mask ? 2 : 1, 1e-3, zck_fd_tol(), &rep);
    int pass = gs == ZMLX_OK && rep.passed;
    double ge = gs == ZMLX_OK ? rep.inputs[0].max_abs_err : INFINITY;
    if (gs == ZMLX_OK && mask && rep.inputs[1].checked && rep.inputs[1].max_abs_err > ge)
      ge = rep.inputs[1].max_abs_err;
    if (gs != ZMLX_OK) zmlx_clear_error();
    zck_emit(o, op, "grad (finite diff)", dt, shp, ge, zck_fd_tol(), pass);
    zmlx_array_release(w);
  }
done:
  free(xv);
  free(v);
  free(mv);
  free(want);
  free(gv);
  free(dwant);
  free(dmag);
  free(got);
  free(dgot);
  zmlx_array_release(x);
  zmlx_array_release(mask);
  zmlx_array_release(out);
  zmlx_array_release(g);
  zmlx_array_release(vout);
  zmlx_array_release(dx);
  return st;
}

static void sm_bad_inputs(const zmlx_check_opts *o, const char *op, int mode, int masked) {
  zmlx_array *s = NULL, *xi = NULL, *x = NULL, *m = NULL, *mi = NULL, *x1 = NULL, *out = NULL;
  int64_t sh[2] = {3, 5}, msh[2] = {3, 4}, one[1] = {5};
  zmlx_array_full(o->device, ZMLX_F32, 0, NULL, 1.0, &s);
  zmlx_array_zeros(o->device, ZMLX_I32, 2, sh, &xi);
  zmlx_array_zeros(o->device, o->dtype, 2, sh, &x);
  zmlx_array_zeros(o->device, o->dtype, 1, one, &x1);
  zmlx_array_zeros(o->device, o->dtype, 2, msh, &m);
  zmlx_array_zeros(o->device, ZMLX_I32, 2, sh, &mi);
  sm_args a = {mode, NULL, 1.0, 0};
  zck_expect(o, op, "NULL x", zmlxi_softmax_run(op, NULL, &a, &out), NULL, ZMLX_ERR_NULL_ARG, NULL);
  zck_expect(o, op, "rank-0 x", zmlxi_softmax_run(op, s, &a, &out), NULL, ZMLX_ERR_SHAPE, NULL);
  zck_expect(o, op, "i32 x", zmlxi_softmax_run(op, xi, &a, &out), NULL, ZMLX_ERR_DTYPE, NULL);
  if (masked) {
    sm_args b = {mode, m, 1.0, 0};
    zck_expect(o, op, "mask [3, 4] for x [3, 5]", zmlxi_softmax_run(op, x, &b, &out), NULL,
               ZMLX_ERR_SHAPE, NULL);
    sm_args c = {mode, mi, 1.0, 0};
    zck_expect(o, op, "i32 mask", zmlxi_softmax_run(op, x, &c, &out), NULL, ZMLX_ERR_DTYPE, NULL);
    sm_args d = {mode, NULL, 1.0, 1};
    zck_expect(o, op, "causal on rank-1 x", zmlxi_softmax_run(op, x1, &d, &out), NULL, ZMLX_ERR_SHAPE, NULL);
    sm_args e = {mode, NULL, INFINITY, 0};
    zck_expect(o, op, "scale inf", zmlxi_softmax_run(op, x, &e, &out), NULL, ZMLX_ERR_INVALID_ARG, NULL);
  }
  zmlx_array_release(out);
  zmlx_array_release(s);
  zmlx_array_release(xi);
  zmlx_array_release(x);
  zmlx_array_release(x1);
  zmlx_array_release(m);
  zmlx_array_release(mi);
}

/* The row paths (`zmlx check --paths` shows each case's): 1 and 7 the
 * scalar stream, 64 and 1000 the row held in registers with 16-byte
 * accesses, 4097 (no multiple of the vector width) the scalar stream with
 * 1024 threads, 16392 (a multiple of 8 past 2048 chunks of 4 or 8) the
 * 16-byte stream for every dtype. */
static const int64_t QUICK_COLS[] = {1, 7, 64, 1000, 4097, 16392};
static const int64_t FULL_COLS[] = {1, 7, 64, 1000, 4097, 16392, 32768};
#define N_QUICK_COLS ((int)(sizeof QUICK_COLS / sizeof QUICK_COLS[0]))
#define N_FULL_COLS ((int)(sizeof FULL_COLS / sizeof FULL_COLS[0]))

static zmlx_status sm_check_mode(const zmlx_check_opts *o, int mode) {
  const char *op = MODE_NAMES[mode];
  uint64_t rng = o->seed * 2654435761u + 17u + (uint64_t)mode;
  const int64_t *cols = o->quick ? QUICK_COLS : FULL_COLS;
  int ncols = o->quick ? N_QUICK_COLS : N_FULL_COLS;
  const int64_t rows_list[] = {1, 5};
  for (int ri = 0; ri < 2; ri++)
    for (int ci = 0; ci < ncols; ci++) {
      sm_case c = {mode, 2, {rows_list[ri], cols[ci]}, 0, 0, 1.0, ZCK_UNIFORM};
      ZMLX_CHECK(sm_case_run(o, op, &c, 0, &rng));
    }
  /* Logits shifted by +-100..1000 per row: without the max subtraction
   * exp overflows. Widths reach each path: 7 the scalar one, 1000 the row
   * in registers, 16392 the streamed 16-byte one (every dtype). */
  static const int64_t OFFSET_COLS[] = {7, 1000, 16392};
  for (int ci = 0; ci < 3; ci++) {
    /* 4 rows: a log-sum-exp rounded at the offset's magnitude is off by
     * a random part of its half-ulp per row, each row a fresh draw */
    sm_case c = {mode, 2, {4, OFFSET_COLS[ci]}, 0, 0, 1.0, ZCK_OFFSET};
    ZMLX_CHECK(sm_case_run(o, op, &c, 0, &rng));
  }
  /* rank 3 and finite differences at small shapes (f32) */
  sm_case c3 = {mode, 3, {2, 3, 7}, 0, 0, 1.0, ZCK_UNIFORM};
  ZMLX_CHECK(sm_case_run(o, op, &c3, o->dtype == ZMLX_F32, &rng));
  if (o->dtype == ZMLX_F32) {
    sm_case c1 = {mode, 1, {9}, 0, 0, 1.0, ZCK_UNIFORM};
    ZMLX_CHECK(sm_case_run(o, op, &c1, 1, &rng));
  }
  sm_bad_inputs(o, op, mode, 0);
  return ZMLX_OK;
}

static zmlx_status check_softmax(const zmlx_check_opts *o) { return sm_check_mode(o, SM_SOFTMAX); }
static zmlx_status check_log_softmax(const zmlx_check_opts *o) {
  return sm_check_mode(o, SM_LOG_SOFTMAX);
}
static zmlx_status check_logsumexp(const zmlx_check_opts *o) {
  return sm_check_mode(o, SM_LOGSUMEXP);
}

static zmlx_status check_softmax_masked(const zmlx_check_opts *o) {
  const char *op = "softmax_masked";
  uint64_t rng = o->seed * 2654435761u + 101u;
  const int64_t *cols = o->quick ? QUICK_COLS : FULL_COLS;
  int ncols = o->quick ? N_QUICK_COLS : N_FULL_COLS;
  for (int ci = 0; ci < ncols; ci++)
    for (int kind = 0; kind < 5; kind++) {
      /* kind 0: additive; 1: bool; 2: causal; 3: additive + causal; 4: scale
       * alone (the 16-byte path) */
      sm_case c = {SM_SOFTMAX, 3, {2, 3, cols[ci]}, kind == 0 || kind == 3 ? 1 : kind == 1 ? 2 : 0,
                   kind == 2 || kind == 3, kind == 1 ? 1.0 : 0.125, ZCK_UNIFORM};
      ZMLX_CHECK(sm_case_run(o, op, &c, 0, &rng));
    }
  {
    sm_case c = {SM_SOFTMAX, 3, {1, 4, 4}, 0, 1, 1.0, ZCK_UNIFORM}; /* square causal: tril */
    ZMLX_CHECK(sm_case_run(o, op, &c, 0, &rng));
  }
  if (o->dtype == ZMLX_F32) {
    sm_case c = {SM_SOFTMAX, 3, {2, 3, 6}, 1, 1, 0.5, ZCK_UNIFORM};
    ZMLX_CHECK(sm_case_run(o, op, &c, 1, &rng));
    sm_case d = {SM_SOFTMAX, 3, {2, 3, 5}, 2, 0, 0.7, ZCK_UNIFORM};
    ZMLX_CHECK(sm_case_run(o, op, &d, 1, &rng));
  }
  sm_bad_inputs(o, op, SM_SOFTMAX, 1);
  return ZMLX_OK;
}

const zmlx_catalog_op zck_catalog_softmax_ops[] = {
    {"softmax", check_softmax},
    {"log_softmax", check_log_softmax},
    {"logsumexp", check_logsumexp},
    {"softmax_masked", check_softmax_masked},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef struct sm_bench {
  zmlx_status (*fn)(zmlx_array *x, zmlx_array **out);
  zmlx_array *x;
} sm_bench;

static zmlx_status sm_bench_run(void *p) {
  sm_bench *b = p;
  zmlx_array *y = NULL;
  zmlx_status st = b->fn(b->x, &y);
  zmlx_array_release(y);
  return st;
}

/* bf16 rows x cols: read x, write y (logsumexp writes one value per row). */
static zmlx_status sm_bench_case(const zmlx_bench_opts *o, const char *op,
                                 zmlx_status (*fn)(zmlx_array *, zmlx_array **), int64_t rows,
                                 int64_t cols, int row_output) {
  int64_t shape[2] = {zck_bench_rows(o, rows), cols};
  sm_bench b = {fn, NULL};
  ZMLX_CHECK(zck_bench_random(o->device, ZMLX_BF16, 2, shape, 11, &b.x));
  double n = (double)shape[0] * (double)cols;
  double bytes = 2.0 * n + (row_output ? 2.0 * (double)shape[0] : 2.0 * n);
  zmlx_status st = zck_bench_time_emit(o, op, ZMLX_BF16, 2, shape, bytes, sm_bench_run, &b);
  zmlx_array_release(b.x);
  return st;
}

static zmlx_status bench_softmax(const zmlx_bench_opts *o) {
  ZMLX_CHECK(sm_bench_case(o, "softmax", zmlx_softmax, 4096, 32768, 0));
  return sm_bench_case(o, "softmax", zmlx_softmax, 32768, 4096, 0);
}

static zmlx_status bench_log_softmax(const zmlx_bench_opts *o) {
  return sm_bench_case(o, "log_softmax", zmlx_log_softmax, 4096, 32768, 0);
}

static zmlx_status bench_logsumexp(const zmlx_bench_opts *o) {
  return sm_bench_case(o, "logsumexp", zmlx_logsumexp, 4096, 32768, 1);
}

const zmlx_catalog_bench zck_catalog_softmax_bench[] = {
    {"softmax", bench_softmax},
    {"log_softmax", bench_log_softmax},
    {"logsumexp", bench_logsumexp},
    {0},
};
