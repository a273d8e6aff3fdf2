/* `zmlx check` and `zmlx bench` cases of src/ops/reduce.c: forward against
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
#include "ops/reduce.h"

/* ================================================================ checks */

/* The check's ops: the six kinds, then argmax, argmin, topk. */
enum { OP_ARGMAX = 6, OP_ARGMIN = 7, OP_TOPK = 8 };
static const char *const OP_NAMES[] = {"sum", "mean", "max", "min", "var", "std",
                                       "argmax", "argmin", "topk"};

/* The kernels' order: (a, ia) before (b, ib)? NaN above every number. */
static int ref_better(double a, int64_t ia, double b, int64_t ib) {
  if (isnan(a) || isnan(b)) {
    if (isnan(a) && isnan(b)) return ia < ib;
    return isnan(a);
  }
  return a > b || (a == b && ia < ib);
}

/* f64 reference of one row: out[0..nout) values, idx[0..nout) indices
 * (selection ops). param: ddof or k. */
static void ref_row(int op, const double *x, int64_t cols, int param, double *out, int64_t *idx) {
  if (op == ZMLX_REDUCE_SUM || op == ZMLX_REDUCE_MEAN || op == ZMLX_REDUCE_VAR ||
      op == ZMLX_REDUCE_STD) {
    double s = 0;
    for (int64_t j = 0; j < cols; j++) s += x[j];
    double m = s / (double)cols;
    if (op == ZMLX_REDUCE_SUM) out[0] = s;
    else if (op == ZMLX_REDUCE_MEAN) out[0] = m;
    else {
      double q = 0;
      for (int64_t j = 0; j < cols; j++) q += (x[j] - m) * (x[j] - m);
      double v = cols > param ? q / (double)(cols - param) : NAN;
      out[0] = op == ZMLX_REDUCE_VAR ? v : sqrt(v);
    }
    return;
  }
  const int neg = op == ZMLX_REDUCE_MIN || op == OP_ARGMIN;
  const int k = op == OP_TOPK ? param : 1;
  double kv[TOPK_MAX];
  int64_t ki[TOPK_MAX];
  int n = 0;
  for (int64_t j = 0; j < cols; j++) {
    double v = neg ? -x[j] : x[j];
    if (n == k && !ref_better(v, j, kv[k - 1], ki[k - 1])) continue;
    int p = n < k ? n++ : k - 1;
    while (p > 0 && ref_better(v, j, kv[p - 1], ki[p - 1])) {
      kv[p] = kv[p - 1];
      ki[p] = ki[p - 1];
      p--;
    }
    kv[p] = v;
    ki[p] = j;
  }
  for (int i = 0; i < k; i++) {
    out[i] = neg ? -kv[i] : kv[i];
    idx[i] = ki[i];
  }
}

/* The size of the terms behind a sum / mean / var / std of one row, in the
 * units of zck_bound_sum: the terms' magnitudes (sum, mean: |x|; var: the
 * squares of x - mean, each off by u32 (|x| + mean|x|) before squaring: the
 * mean is a sum, off by a part of its terms' size, not of its own);
 * std = sqrt(var) halves var's relative error, and near 0 a change d of
 * var moves the root by at most sqrt(d). */
static double ref_row_terms(int op, const double *x, int64_t cols, int param, double out) {
  double s = 0, a = 0;
  for (int64_t j = 0; j < cols; j++) s += x[j], a += fabs(x[j]);
  if (op == ZMLX_REDUCE_SUM) return a;
  if (op == ZMLX_REDUCE_MEAN) return a / (double)cols;
  const double m = s / (double)cols;
  double q = 0;
  for (int64_t j = 0; j < cols; j++) q += 2 * fabs(x[j] - m) * (fabs(x[j]) + a / (double)cols);
  q = cols > param ? q / (double)(cols - param) : 0;
  if (op == ZMLX_REDUCE_VAR || !(q > 0)) return q;
  return q / (2 * fmax(fabs(out), sqrt(q * 0x1p-24))); /* std */
}

/* The same for element j of the VJP of var / std: g 2 (x - mean) / den,
 * with x - mean off by u32 (|x| + mean|x|) (mabs: the row's mean |x|, the
 * size of the terms the mean sums; a seed with mean ~ 0 and |x| ~ 2 showed
 * |mean| is not it); other ops: 0 (rtol alone). */
static double ref_vjp_terms(int op, double x, double mabs, double den, double out, double g) {
  const double t = fabs(g) * 2 * (fabs(x) + mabs) / den;
  if (op == ZMLX_REDUCE_VAR) return t;
  if (op == ZMLX_REDUCE_STD) return out > 0 ? t / (2 * out) : 0;
  return 0;
}

/* f64 VJP reference of one row: dx[0..cols) from the cotangent g (1 or k
 * values) and the reference's out / idx. */
static void ref_vjp_row(int op, const double *x, int64_t cols, int param, const double *out,
                        const int64_t *idx, const double *g, double *dx) {
  double s = 0;
  for (int64_t j = 0; j < cols; j++) s += x[j];
  const double m = s / (double)cols, den = (double)(cols - param);
  for (int64_t j = 0; j < cols; j++) {
    switch (op) {
      case ZMLX_REDUCE_SUM: dx[j] = g[0]; break;
      case ZMLX_REDUCE_MEAN: dx[j] = g[0] / (double)cols; break;
      case ZMLX_REDUCE_VAR: dx[j] = g[0] * 2 * (x[j] - m) / den; break;
      case ZMLX_REDUCE_STD: dx[j] = out[0] > 0 ? g[0] * (x[j] - m) / (den * out[0]) : 0; break;
      default: dx[j] = 0; break;
    }
  }
  if (op == ZMLX_REDUCE_MAX || op == ZMLX_REDUCE_MIN || op == OP_TOPK) {
    int k = op == OP_TOPK ? param : 1;
    for (int i = 0; i < k; i++) dx[idx[i]] = g[i];
  }
}

static int op_is_index(int op) { return op == OP_ARGMAX || op == OP_ARGMIN; }
static int op_nout(int op, int param) { return op == OP_TOPK ? param : 1; }

/* The op as a function of x (fn data: op, param, keepdims, and w for the
 * scalar loss sum(op(x) * w), else NULL). */
typedef struct red_fn_data {
  int op, param, keepdims;
  zmlx_array *w;
} red_fn_data;

static zmlx_status run_op(int op, zmlx_array *x, int param, int keepdims, zmlx_array **vals,
                          zmlx_array **idx) {
  switch (op) {
    case OP_ARGMAX: return zmlx_argmax_last(x, keepdims, idx);
    case OP_ARGMIN: return zmlx_argmin_last(x, keepdims, idx);
    case OP_TOPK: return zmlx_topk(x, param, vals, idx);
    default: return zmlx_reduce_last(x, (zmlx_reduce_kind)op, param, keepdims, vals);
  }
}

static zmlx_status red_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  red_fn_data *d = ud;
  zmlx_array *y = NULL;
  ZMLX_CHECK(run_op(d->op, in[0], d->param, d->keepdims, &y, NULL));
  if (!d->w) {
    *out = y;
    return ZMLX_OK;
  }
  zmlx_status st = zck_weighted_sum(y, d->w, out);
  zmlx_array_release(y);
  return st;
}

/* Host copy of an i32 array. */
static zmlx_status download_i32(zmlx_array *a, int32_t **v) {
  int32_t *d = malloc(sizeof(int32_t) * (size_t)(a->size > 0 ? a->size : 1));
  if (!d) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlx_status st = zmlx_array_to_host(a, d, sizeof(int32_t) * (size_t)a->size);
  if (st != ZMLX_OK) {
    free(d);
    return st;
  }
  *v = d;
  return ZMLX_OK;
}

typedef enum { IN_RANDOM, IN_OFFSET, IN_DISTINCT, IN_NAN, IN_TIES } in_kind;

typedef struct red_case {
  int ndim;
  int64_t shape[4];
  int param;      /* ddof (var / std) or k (topk) */
  int keepdims;
  in_kind input;
  int strided;    /* x is a transposed view */
  int mode;       /* 0: forward; 1: VJP vs the reference; 2: finite differences (f32) */
  const char *variant; /* a kernel form the environment asked for (named), or NULL */
} red_case;

/* Fills xv (size n, dtype dt) by the case's input kind. */
static void make_input(zmlx_dtype dt, in_kind kind, int64_t n, int64_t cols, uint64_t *rng,
                       double *xv) {
  if (kind == IN_DISTINCT) {
    /* a permutation of well separated values: no ties, no kink within eps */
    for (int64_t i = 0; i < n; i++) xv[i] = (double)i;
    for (int64_t i = n - 1; i > 0; i--) {
      int64_t j = (int64_t)(zck_uniform(rng, 0, 1) * (double)(i + 1));
      if (j > i) j = i;
      double t = xv[i];
      xv[i] = xv[j];
      xv[j] = t;
    }
    for (int64_t i = 0; i < n; i++) xv[i] = zck_round(dt, (xv[i] - (double)n / 2) * 0.0625);
    return;
  }
  if (kind == IN_TIES) { /* exact ties, signed zeros among them */
    zck_fill(ZCK_TIES, xv, n / cols, cols, -1, 1, dt, rng);
    return;
  }
  const double off = kind == IN_OFFSET ? 1000.0 : 0.0;
  for (int64_t i = 0; i < n; i++) xv[i] = zck_round(dt, off + 8 * zck_uniform(rng, 0, 1) - 4);
  if (kind == IN_NAN && n > 3) {
    /* NaNs in some rows (ranked above every number), -inf in others: the
     * first row all -inf, the last starting with one */
    xv[n / 3] = NAN;
    xv[n - 2] = NAN;
    for (int64_t j = 0; j < cols && j < n; j++) xv[j] = -INFINITY;
    xv[n - cols] = -INFINITY;
  }
}

static void case_name(const red_case *c, int op, char *buf, size_t cap) {
  char s[64];
  zmlxi_shape_str(s, sizeof s, c->ndim, c->shape);
  const char *in = c->input == IN_OFFSET ? " offset 1000" : c->input == IN_NAN ? " nan/-inf"
                   : c->input == IN_DISTINCT ? " distinct" : c->input == IN_TIES ? " ties +-0" : "";
  char p[24] = "";
  if (op == ZMLX_REDUCE_VAR || op == ZMLX_REDUCE_STD) snprintf(p, sizeof p, " ddof %d", c->param);
  if (op == OP_TOPK) snprintf(p, sizeof p, " k %d", c->param);
  snprintf(buf, cap, "%s%s%s%s%s%s%s", s, p, c->keepdims ? " keepdims" : "", in,
           c->strided ? " strided" : "", c->variant ? " " : "", c->variant ? c->variant : "");
}

static void red_case_run(const zmlx_check_opts *o, int op, const red_case *c, uint64_t *rng) {
  zmlx_device *dev = o->device;
  const zmlx_dtype dt = c->mode == 2 ? ZMLX_F32 : o->dtype;
  const char *opn = OP_NAMES[op];
  const char *what = c->mode == 0 ? "fwd" : c->mode == 1 ? "grad (vjp)" : "grad (fd)";
  char name[128];
  case_name(c, op, name, sizeof name);
  int64_t size = 1;
  for (int i = 0; i < c->ndim; i++) size *= c->shape[i];
  const int64_t cols = c->shape[c->ndim - 1], rows = size / cols;
  const int nout = op_nout(op, c->param);
  const int64_t no = rows * nout;
  double *xv = malloc(sizeof(double) * (size_t)size), *want = malloc(sizeof(double) * (size_t)no);
  int64_t *wi = malloc(sizeof(int64_t) * (size_t)no);
  double *gv = malloc(sizeof(double) * (size_t)no), *dw = malloc(sizeof(double) * (size_t)size);
  double *got = NULL;
  int32_t *gi = NULL;
  zmlx_array *xs = NULL, *x = NULL, *y = NULL, *yi = NULL, *g = NULL, *vout = NULL, *dx = NULL;
  zmlx_status st = ZMLX_OK;
  if (!xv || !want || !wi || !gv || !dw) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  make_input(dt, c->input, size, cols, rng, xv);
  for (int64_t r = 0; r < rows; r++)
    ref_row(op, xv + r * cols, cols, c->param, want + r * nout, wi + r * nout);
  if (c->strided) {
    /* upload the transpose [.., cols, rows'] and view it back: x is strided */
    int64_t ts[2] = {cols, rows};
    double *tv = malloc(sizeof(double) * (size_t)size);
    if (!tv) {
      st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
      goto done;
    }
    for (int64_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < cols; j++) tv[j * rows + r] = xv[r * cols + j];
    st = zck_upload(dev, dt, 2, ts, tv, &xs);
    free(tv);
    const int perm[2] = {1, 0};
    if (st == ZMLX_OK) st = zmlx_array_transpose(xs, perm, &x);
  } else {
    st = zck_upload(dev, dt, c->ndim, c->shape, xv, &x);
  }
  if (st != ZMLX_OK) goto done;
  int64_t oshape[ZMLX_MAX_DIMS];
  const int ond = zmlxi_reduce_out_shape(x, op == OP_TOPK || c->keepdims, nout, oshape);

  if (c->mode == 0) {
    /* forward into poisoned outputs (the op allocates: poison the pool) */
    zck_poison_pool(dev, dt, ond, oshape);
    zck_poison_pool(dev, ZMLX_F32, ond, oshape); /* i32 indices: NaN bits */
    st = run_op(op, x, c->param, c->keepdims, op_is_index(op) ? NULL : &y,
                op_is_index(op) || op == OP_TOPK ? &yi : NULL);
    if (st == ZMLX_OK && y) st = zck_download(y, &got);
    if (st == ZMLX_OK && yi) st = download_i32(yi, &gi);
    if (st != ZMLX_OK) goto done;
    if (op <= ZMLX_REDUCE_STD && !zmlxi_reduce_is_select((zmlx_reduce_kind)op)) {
      double e, t;
      for (int64_t r = 0; r < rows; r++) /* gv is free until the VJP */
        gv[r] = ref_row_terms(op, xv + r * cols, cols, c->param, want[r]);
      int ok = zck_within_scaled(got, want, gv, no, zck_bound_sum(ZCK_TOL_ELEMENTWISE, dt, cols), &e, &t);
      zck_emit(o, opn, what, dt, name, e, t, ok);
    } else {
      /* selection is exact: values (ties and NaN included) and indices must
       * match the reference's order; the error is the mismatch count */
      int64_t bad = 0;
      for (int64_t i = 0; i < no; i++) {
        if (got) {
          int same = isnan(want[i]) ? isnan(got[i]) : got[i] == want[i];
          bad += !same;
        }
        if (gi) bad += (int64_t)gi[i] != wi[i];
      }
      zck_emit(o, opn, what, dt, name, (double)bad, 0, bad == 0);
    }
  } else if (c->mode == 1) {
    st = zck_random(dev, dt, ond, oshape, -1, 1, rng, gv, &g);
    if (st != ZMLX_OK) goto done;
    red_fn_data fd = {op, c->param, c->keepdims, NULL};
    int argn = 0;
    st = zmlx_vjp(red_fn, &fd, &x, 1, &argn, 1, g, &vout, &dx);
    if (st == ZMLX_OK) st = zck_download(dx, &got);
    if (st != ZMLX_OK) goto done;
    for (int64_t r = 0; r < rows; r++)
      ref_vjp_row(op, xv + r * cols, cols, c->param, want + r * nout, wi + r * nout,
                  gv + r * nout, dw + r * cols);
    double *terms = malloc(sizeof(double) * (size_t)size), e, t;
    if (!terms) {
      st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
      goto done;
    }
    for (int64_t r = 0; r < rows; r++) {
      double m = 0; /* mean |x| */
      for (int64_t j = 0; j < cols; j++) m += fabs(xv[r * cols + j]) / (double)cols;
      for (int64_t j = 0; j < cols; j++)
        terms[r * cols + j] = ref_vjp_terms(op, xv[r * cols + j], m, (double)(cols - c->param),
                                            want[r * nout], gv[r * nout]);
    }
    /* var / std: the device starts from its rounded output and mean, two
     * roundings to the dtype */
    zck_bound b = zck_bound_sum(ZCK_TOL_ELEMENTWISE, dt, cols);
    if (op == ZMLX_REDUCE_VAR || op == ZMLX_REDUCE_STD) b = zck_bound_times(b, 2);
    int ok = zck_within_scaled(got, dw, terms, size, b, &e, &t);
    free(terms);
    zck_emit(o, opn, what, dt, name, e, t, ok);
  } else {
    st = zck_random(dev, ZMLX_F32, ond, oshape, -1, 1, rng, gv, &g);
    if (st != ZMLX_OK) goto done;
    red_fn_data fd = {op, c->param, c->keepdims, g};
    zmlx_grad_check_report rep;
    st = zmlx_check_grad(red_fn, &fd, &x, 1, 1e-3, zck_fd_tol(), &rep);
    if (st != ZMLX_OK) goto done;
    double e = rep.inputs[0].max_abs_err;
    if (rep.jvp_checked) e = fmax(e, rep.jvp_abs_err);
    char nm[144];
    snprintf(nm, sizeof nm, "%s%s", name, rep.jvp_checked ? " +jvp" : "");
    zck_emit(o, opn, what, dt, nm, e, zck_fd_tol(), rep.passed);
  }
done:
  if (st != ZMLX_OK) zck_emit_fail(o, opn, what, dt, name, st);
  free(xv);
  free(want);
  free(wi);
  free(gv);
  free(dw);
  free(got);
  free(gi);
  zmlx_array_release(xs);
  zmlx_array_release(x);
  zmlx_array_release(y);
  zmlx_array_release(yi);
  zmlx_array_release(g);
  zmlx_array_release(vout);
  zmlx_array_release(dx);
  zmlx_clear_error();
}

static void red_bad(const zmlx_check_opts *o, int op) {
  zmlx_device *dev = o->device;
  const char *opn = OP_NAMES[op];
  zmlx_array *a = NULL, *ai = NULL, *s = NULL, *e = NULL, *y = NULL, *yi = NULL;
  int64_t sa[2] = {3, 5}, se[2] = {3, 0};
  if (zmlx_array_zeros(dev, o->dtype, 2, sa, &a) || zmlx_array_zeros(dev, ZMLX_I32, 2, sa, &ai) ||
      zmlx_array_zeros(dev, o->dtype, 0, NULL, &s) ||
      zmlx_array_zeros(dev, o->dtype, 2, se, &e)) {
    zck_emit_fail(o, opn, "bad input", o->dtype, "setup", ZMLX_ERR_BACKEND);
    goto done;
  }
  const int p = op == OP_TOPK ? 2 : 0;
#define EXPECT(what, call, want, needle)                                  \
  do {                                                                    \
    zmlx_status st_ = (call);                                             \
    zmlx_array_release(yi);                                               \
    yi = NULL;                                                            \
    zck_expect(o, opn, what, st_, y, want, needle);                   \
    y = NULL;                                                             \
  } while (0)
  EXPECT("bad: NULL x", run_op(op, NULL, p, 0, &y, &yi), ZMLX_ERR_NULL_ARG, "'x'");
  EXPECT("bad: dtype i32", run_op(op, ai, p, 0, &y, &yi), ZMLX_ERR_DTYPE, "i32");
  EXPECT("bad: scalar x", run_op(op, s, p, 0, &y, &yi), ZMLX_ERR_SHAPE, "rank");
  EXPECT("bad: last dim 0", run_op(op, e, p, 0, &y, &yi), ZMLX_ERR_SHAPE, "[3, 0]");
  if (op == OP_TOPK) {
    EXPECT("bad: k = 65", run_op(op, a, 65, 0, &y, &yi), ZMLX_ERR_INVALID_ARG, "k = 65");
    EXPECT("bad: k = 0", run_op(op, a, 0, 0, &y, &yi), ZMLX_ERR_INVALID_ARG, "k = 0");
    EXPECT("bad: k > last dim", run_op(op, a, 6, 0, &y, &yi), ZMLX_ERR_SHAPE, "k = 6");
    EXPECT("bad: no outputs", zmlx_topk(a, 2, NULL, NULL), ZMLX_ERR_NULL_ARG, "NULL");
  }
  if (op == ZMLX_REDUCE_VAR || op == ZMLX_REDUCE_STD)
    EXPECT("bad: ddof -1", run_op(op, a, -1, 0, &y, &yi), ZMLX_ERR_INVALID_ARG, "ddof");
  if (op == ZMLX_REDUCE_SUM)
    EXPECT("bad: kind 9", zmlx_reduce_last(a, (zmlx_reduce_kind)9, 0, 0, &y),
           ZMLX_ERR_INVALID_ARG, "kind 9");
#undef EXPECT
done:
  zmlx_array_release(a);
  zmlx_array_release(ai);
  zmlx_array_release(s);
  zmlx_array_release(e);
}

static const int64_t QUICK_COLS[] = {1, 7, 64, 1000, 4097};
static const int64_t FULL_COLS[] = {1, 7, 64, 1000, 4097, 32768};

/* The k = 1 selection's warp forms: a warp per row, 8 rows a group
 * (ZMLX_SEL_WARP_ROWS; 13 rows leave a group's last warps past the end),
 * and where SIMD groups are emulated (OpenCL) also the group-per-row warp
 * code (ZMLX_SEL_NATIVE), which otherwise runs only on a GPU. Not when the
 * caller's environment already picks the form. */
static void warp_cases(const zmlx_check_opts *o, int op, uint64_t *rng) {
  zmlx_device_info info;
  if (getenv("ZMLX_SEL_WARP_ROWS") || getenv("ZMLX_SEL_NATIVE") ||
      zmlx_device_get_info(o->device, &info) != ZMLX_OK)
    return;
  const int emulate = !info.native_simd;
  if (emulate) setenv("ZMLX_SEL_NATIVE", "1", 1);
  for (int w = emulate ? 0 : 1; w < 2; w++) {
    const char *variant = w ? "warp rows" : "warp code";
    if (w) setenv("ZMLX_SEL_WARP_ROWS", "1", 1);
    const red_case cases[] = {
        {2, {13, 7}, 0, 0, IN_RANDOM, 0, 0, variant},  {2, {13, 64}, 0, 0, IN_RANDOM, 0, 0, variant},
        {2, {1, 1000}, 0, 0, IN_RANDOM, 0, 0, variant}, {2, {5, 4097}, 0, 0, IN_RANDOM, 0, 0, variant},
        {2, {3, 37}, 0, 0, IN_NAN, 0, 0, variant},      {2, {9, 64}, 0, 0, IN_TIES, 0, 0, variant}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) red_case_run(o, op, &cases[i], rng);
  }
  unsetenv("ZMLX_SEL_WARP_ROWS");
  unsetenv("ZMLX_SEL_NATIVE");
}

static zmlx_status red_check_op(const zmlx_check_opts *o, int op) {
  ZMLX_REQUIRE_ARG(o);
  ZMLX_REQUIRE_ARG(o->device);
  uint64_t rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x726564ULL + (uint64_t)op * 7919u;
  if (!rng) rng = 1;
  const int isvar = op == ZMLX_REDUCE_VAR || op == ZMLX_REDUCE_STD;
  const int64_t *cols = o->quick ? QUICK_COLS : FULL_COLS;
  const int ncols = o->quick ? 5 : 6;
  const int64_t rows_list[] = {1, 5};
  for (int ri = 0; ri < 2; ri++)
    for (int ci = 0; ci < ncols; ci++) {
      const int64_t cc = cols[ci];
      int param = 0;
      if (isvar) param = cc > 1 ? (ci + ri) % 2 : 0;
      if (op == OP_TOPK) {
        static const int ks[] = {1, 5, 64, 8}; /* KCAP 1, 8, 64 */
        param = ks[(ci + ri) % 4];
        if (param > cc) param = (int)cc;
      }
      red_case c = {2, {rows_list[ri], cc}, param, 0, IN_RANDOM, 0, 0, NULL};
      red_case_run(o, op, &c, &rng);
    }
  /* rank 3 with keepdims; a strided view; numerically hard var / NaN input */
  red_case c3 = {3, {2, 3, 9}, op == OP_TOPK ? 6 : isvar ? 1 : 0, 1, IN_RANDOM, 0, 0, NULL};
  red_case_run(o, op, &c3, &rng);
  red_case cs = {2, {5, 7}, op == OP_TOPK ? 5 : 0, 0, IN_RANDOM, 1, 0, NULL};
  red_case_run(o, op, &cs, &rng);
  if (isvar) {
    red_case cv = {2, {3, o->quick ? 1000 : 4097}, 1, 0, IN_OFFSET, 0, 0, NULL};
    red_case_run(o, op, &cv, &rng);
  }
  if (op == ZMLX_REDUCE_MAX || op == ZMLX_REDUCE_MIN || op_is_index(op) || op == OP_TOPK) {
    red_case cn = {2, {3, 37}, op == OP_TOPK ? 5 : 0, 0, IN_NAN, 0, 0, NULL};
    red_case_run(o, op, &cn, &rng);
    /* ties everywhere (-0 = +0): the first index wins, values and indices
     * exact; 37 columns reach the scalar path, 64 the 16-byte one */
    red_case ct = {2, {4, 37}, op == OP_TOPK ? 5 : 0, 0, IN_TIES, 0, 0, NULL};
    red_case_run(o, op, &ct, &rng);
    red_case cv = {2, {4, 64}, op == OP_TOPK ? 8 : 0, 0, IN_TIES, 0, 0, NULL};
    red_case_run(o, op, &cv, &rng);
    if (op != OP_TOPK) warp_cases(o, op, &rng);
  }
  if (!op_is_index(op)) {
    /* VJP against the f64 reference (ties allowed: both pick the first) */
    red_case v1 = {2, {5, 7}, op == OP_TOPK ? 7 : isvar ? 1 : 0, 0, IN_RANDOM, 0, 1, NULL};
    red_case_run(o, op, &v1, &rng);
    red_case v2 = {3, {2, 3, o->quick ? 1000 : 4097}, op == OP_TOPK ? 8 : 0, 1, IN_RANDOM, 0, 1, NULL};
    red_case_run(o, op, &v2, &rng);
    if (o->dtype == ZMLX_F32) {
      red_case fd = {3, {2, 3, 7}, op == OP_TOPK ? 5 : isvar ? 1 : 0, 0, IN_DISTINCT, 0, 2, NULL};
      red_case_run(o, op, &fd, &rng);
    }
  }
  red_bad(o, op);
  return ZMLX_OK;
}

static zmlx_status check_sum(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_SUM); }
static zmlx_status check_mean(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_MEAN); }
static zmlx_status check_max(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_MAX); }
static zmlx_status check_min(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_MIN); }
static zmlx_status check_var(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_VAR); }
static zmlx_status check_std(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_STD); }
static zmlx_status check_argmax(const zmlx_check_opts *o) {
  ZMLX_CHECK(red_check_op(o, OP_ARGMAX));
  return red_check_op(o, OP_ARGMIN);
}
static zmlx_status check_topk(const zmlx_check_opts *o) { return red_check_op(o, OP_TOPK); }

const zmlx_catalog_op zck_catalog_reduce_ops[] = {
    {"sum", check_sum},   {"mean", check_mean},     {"max", check_max},
    {"min", check_min},   {"var", check_var},       {"std", check_std},
    {"argmax", check_argmax}, {"topk", check_topk}, {0},
};

/* ================================================================ benchmarks */

typedef struct red_bench {
  int op, param;
  zmlx_array *x;
} red_bench;

static zmlx_status red_bench_run(void *p) {
  red_bench *b = p;
  zmlx_array *y = NULL, *yi = NULL;
  zmlx_status st = run_op(b->op, b->x, b->param, 0, op_is_index(b->op) ? NULL : &y,
                          op_is_index(b->op) || b->op == OP_TOPK ? &yi : NULL);
  zmlx_array_release(y);
  zmlx_array_release(yi);
  return st;
}

/* bf16 [rows, cols]; bytes = x read + values (bf16) and / or indices (i32)
 * written. */
static zmlx_status red_bench_case(const zmlx_bench_opts *o, int op, int param, int64_t rows,
                                  int64_t cols) {
  int64_t shape[2] = {zck_bench_rows(o, rows), cols};
  red_bench b = {op, param, NULL};
  zmlx_status st = zck_bench_random(o->device, ZMLX_BF16, 2, shape, 31 + (uint64_t)op, &b.x);
  const double n = (double)shape[0] * (double)shape[1];
  const double nout = (double)shape[0] * op_nout(op, param);
  double bytes = 2.0 * n + (op_is_index(op) ? 4.0 : op == OP_TOPK ? 6.0 : 2.0) * nout;
  if (st == ZMLX_OK)
    st = zck_bench_time_emit(o, OP_NAMES[op], ZMLX_BF16, 2, shape, bytes, red_bench_run, &b);
  zmlx_array_release(b.x);
  return st;
}

static zmlx_status bench_sum(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_SUM, 0, 16384, 4096);
}
static zmlx_status bench_mean(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_MEAN, 0, 16384, 4096);
}
static zmlx_status bench_max(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_MAX, 0, 16384, 4096);
}
static zmlx_status bench_min(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_MIN, 0, 16384, 4096);
}
static zmlx_status bench_var(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_VAR, 0, 16384, 4096);
}
static zmlx_status bench_std(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_STD, 0, 16384, 4096);
}
static zmlx_status bench_argmax(const zmlx_bench_opts *o) {
  ZMLX_CHECK(red_bench_case(o, OP_ARGMAX, 0, 16384, 4096));
  return red_bench_case(o, OP_ARGMAX, 0, 8192, 128256); /* greedy sampling */
}
static zmlx_status bench_topk(const zmlx_bench_opts *o) {
  /* a sampler's top-k = 8 over the vocabulary */
  ZMLX_CHECK(red_bench_case(o, OP_TOPK, 8, 8192, 32000));
  return red_bench_case(o, OP_TOPK, 8, 8192, 128256);
}

const zmlx_catalog_bench zck_catalog_reduce_bench[] = {
    {"sum", bench_sum},   {"mean", bench_mean},     {"max", bench_max},
    {"min", bench_min},   {"var", bench_var},       {"std", bench_std},
    {"argmax", bench_argmax}, {"topk", bench_topk}, {0},
};
