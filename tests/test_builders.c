/*
 * Expression builders (src/gen/elementwise.c, src/gen/reduce.c) on every
 * available backend: elementwise forward / VJP / JVP against the f64
 * interpreter and against central finite differences, parameters that
 * change per call without a recompile, gradients reduced over broadcast
 * axes, output dtype rules, reduce and map_reduce (two-pass and online),
 * and bad input.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/expr.h"
#include "test_support.h"

#define MAX_DEVS 4

static const char *const X[] = {"x"};
static const char *const XY[] = {"x", "y"};
static const char *const ALPHA[] = {"alpha"};

/* ------------------------------------------------------------ helpers */

static float *rnd(size_t n, float lo, float hi, uint64_t salt) {
  uint64_t st = zt_seed() ^ (salt * 0x9E3779B97F4A7C15ull);
  if (!st) st = 1;
  float *x = malloc(n * sizeof *x + 1);
  assert_non_null(x);
  zt_fill_uniform(x, n, lo, hi, &st);
  return x;
}

/* Keep |x| >= 0.05 so finite differences never straddle a kink. */
static void away_from_zero(float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (fabsf(x[i]) < 0.05f) x[i] = x[i] < 0 ? -0.05f - x[i] : 0.05f + x[i];
}

static int64_t count_of(int nd, const int64_t *shape) {
  int64_t n = 1;
  for (int d = 0; d < nd; d++) n *= shape[d];
  return n;
}

static zmlx_expr *parse(const char *text, const char *const *in, int n, const char *const *par,
                        int np) {
  zmlx_expr *e = NULL;
  ZT_OK(zmlxi_expr_parse(text, in, n, par, np, &e));
  return e;
}

static double eval1(const zmlx_expr *e, const double *in, const double *par) {
  double r[4];
  ZT_OK(zmlxi_expr_eval(e, in, par, r));
  return r[0];
}

/* ------------------------------------------------------------ elementwise */

typedef struct ew_case {
  const char *text;
  int n_inputs, n_params;
  double params[2];
} ew_case;

static const ew_case CASES[] = {
    {"x * tanh(log1p(exp(x)))", 1, 0, {0}},
    {"s = sigmoid(x); x * s * y", 2, 0, {0}},
    {"leaky_relu(x, alpha)", 1, 1, {0.1}},
};

/* Forward, VJP and JVP of one case on dense [33, 31] inputs (f32), each
 * against the engine's f64 graphs and against central differences of the
 * f64 forward. */
static void check_case(zmlx_device *dev, const ew_case *c) {
  const char *const *names = c->n_inputs == 1 ? X : XY;
  const char *const *pnames = c->n_params ? ALPHA : NULL;
  int ni = c->n_inputs;
  int64_t shape[2] = {33, 31};
  size_t n = 33 * 31;
  zmlx_op *op = NULL;
  ZT_OK(zmlx_elementwise(c->text, names, ni, pnames, c->n_params, &op));
  zmlx_expr *f = parse(c->text, names, ni, pnames, c->n_params), *vjp = NULL, *jvp = NULL;
  ZT_OK(zmlxi_expr_vjp(f, 0, &vjp));
  ZT_OK(zmlxi_expr_jvp(f, 0, &jvp));
  float *x[2], *g = rnd(n, -1, 1, 3), *t[2];
  zmlx_array *in[2], *tan[2], *cot = zt_array(dev, ZMLX_F32, 2, shape, g);
  for (int i = 0; i < ni; i++) {
    x[i] = rnd(n, -3, 3, 10 + i);
    away_from_zero(x[i], n);
    t[i] = rnd(n, -1, 1, 20 + i);
    in[i] = zt_array(dev, ZMLX_F32, 2, shape, x[i]);
    tan[i] = zt_array(dev, ZMLX_F32, 2, shape, t[i]);
  }
  zmlx_array *out = NULL, *grads[2] = {NULL, NULL}, *tout = NULL;
  ZT_OK(zmlx_op_call(op, in, ni, c->params, NULL, &out));
  ZT_OK(zmlx_op_vjp(op, in, ni, c->params, cot, NULL, grads));
  ZT_OK(zmlx_op_jvp(op, in, ni, c->params, tan, NULL, &tout));
  double *got = zt_download(out), *gj = zt_download(tout), *gg[2] = {NULL, NULL};
  for (int i = 0; i < ni; i++) gg[i] = zt_download(grads[i]);
  for (size_t k = 0; k < n; k++) {
    double v[4] = {x[0][k], ni > 1 ? x[1][k] : 0, 0, 0}, want = eval1(f, v, c->params);
    zt_assert_close(&got[k], &want, 1, 1e-5, 1e-5, c->text);
    /* Engine graphs in f64: VJP inputs (x.., g), JVP inputs (x.., t..). */
    double vg[3] = {v[0], ni > 1 ? v[1] : g[k], g[k]}, gr[2];
    ZT_OK(zmlxi_expr_eval(vjp, vg, c->params, gr));
    double vt[4] = {v[0], ni > 1 ? v[1] : t[0][k], t[0][k], ni > 1 ? t[1][k] : 0};
    double jt = eval1(jvp, vt, c->params), fd_jvp = 0;
    for (int i = 0; i < ni; i++) {
      double h = 1e-6 * fmax(1.0, fabs(v[i])), p[4], m[4];
      memcpy(p, v, sizeof p), memcpy(m, v, sizeof m);
      p[i] += h, m[i] -= h;
      double d = (eval1(f, p, c->params) - eval1(f, m, c->params)) / (2 * h);
      double fd = d * g[k];
      fd_jvp += d * t[i][k];
      zt_assert_close(&gg[i][k], &gr[i], 1, 1e-5, 1e-4, "VJP vs engine f64");
      zt_assert_close(&gg[i][k], &fd, 1, 1e-4, 1e-4, "VJP vs finite differences");
    }
    zt_assert_close(&gj[k], &jt, 1, 1e-5, 1e-4, "JVP vs engine f64");
    zt_assert_close(&gj[k], &fd_jvp, 1, 1e-4, 1e-4, "JVP vs finite differences");
  }
  free(got), free(gj), free(g);
  for (int i = 0; i < ni; i++) {
    free(gg[i]), free(x[i]), free(t[i]);
    zmlx_array_release(in[i]), zmlx_array_release(tan[i]), zmlx_array_release(grads[i]);
  }
  zmlx_array_release(out), zmlx_array_release(tout), zmlx_array_release(cot);
  zmlxi_expr_free(f), zmlxi_expr_free(vjp), zmlxi_expr_free(jvp);
  zmlx_op_destroy(op);
}

static void test_forward_vjp_jvp(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++)
    for (size_t c = 0; c < sizeof CASES / sizeof *CASES; c++) check_case(devs[d], &CASES[c]);
}

/* 16-bit storage: outputs and gradients keep the input dtype, values
 * computed in f32 from the stored inputs. */
static void test_half_dtypes(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_dtype dts[2] = {ZMLX_F16, ZMLX_BF16};
  zmlx_op *op = NULL;
  ZT_OK(zmlx_elementwise("s = sigmoid(x); x * s * y", XY, 2, NULL, 0, &op));
  zmlx_expr *f = parse("s = sigmoid(x); x * s * y", XY, 2, NULL, 0), *vjp = NULL;
  ZT_OK(zmlxi_expr_vjp(f, 0, &vjp));
  for (int d = 0; d < nd; d++)
    for (int t = 0; t < 2; t++) {
      int64_t n = 4097;
      float *x = rnd((size_t)n, -4, 4, 1), *y = rnd((size_t)n, -4, 4, 2), *g = rnd((size_t)n, -1, 1, 3);
      zmlx_array *in[2] = {zt_array(devs[d], dts[t], 1, &n, x), zt_array(devs[d], dts[t], 1, &n, y)};
      zmlx_array *cot = zt_array(devs[d], dts[t], 1, &n, g), *out = NULL, *grads[2];
      ZT_OK(zmlx_op_call(op, in, 2, NULL, NULL, &out));
      ZT_OK(zmlx_op_vjp(op, in, 2, NULL, cot, NULL, grads));
      assert_int_equal(zmlx_array_dtype(out), dts[t]);
      assert_int_equal(zmlx_array_dtype(grads[0]), dts[t]);
      double *o = zt_download(out), *g0 = zt_download(grads[0]), *g1 = zt_download(grads[1]);
      double tol = 2 * zt_tolerance(dts[t]);
      for (int64_t i = 0; i < n; i++) {
        double v[3] = {zt_round_to(dts[t], x[i]), zt_round_to(dts[t], y[i]), zt_round_to(dts[t], g[i])};
        double want = eval1(f, v, NULL), gr[2];
        ZT_OK(zmlxi_expr_eval(vjp, v, NULL, gr));
        zt_assert_close(&o[i], &want, 1, tol, tol, "16-bit forward");
        zt_assert_close(&g0[i], &gr[0], 1, tol, tol, "16-bit grad x");
        zt_assert_close(&g1[i], &gr[1], 1, tol, tol, "16-bit grad y");
      }
      free(o), free(g0), free(g1), free(x), free(y), free(g);
      zmlx_array_release(in[0]), zmlx_array_release(in[1]), zmlx_array_release(cot);
      zmlx_array_release(out), zmlx_array_release(grads[0]), zmlx_array_release(grads[1]);
    }
  zmlxi_expr_free(f), zmlxi_expr_free(vjp);
  zmlx_op_destroy(op);
}

/* alpha changes between calls: same kernels, no compile. */
static void test_params_without_recompile(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++) {
    zmlx_op *op = NULL;
    ZT_OK(zmlx_elementwise("leaky_relu(x, alpha)", X, 1, ALPHA, 1, &op));
    int64_t n = 1000;
    float *x = rnd((size_t)n, -2, 2, 5);
    zmlx_array *in = zt_array(devs[d], ZMLX_F32, 1, &n, x), *ones = NULL;
    ZT_OK(zmlx_array_full(devs[d], ZMLX_F32, 0, NULL, 1.0, &ones));
    double alpha = 0.1;
    zmlx_array *out = NULL, *grad = NULL;
    ZT_OK(zmlx_op_call(op, &in, 1, &alpha, NULL, &out)); /* first calls compile */
    ZT_OK(zmlx_op_vjp(op, &in, 1, &alpha, ones, NULL, &grad));
    zmlx_array_release(out), zmlx_array_release(grad);
    zmlx_cache_stats before, after;
    ZT_OK(zmlx_cache_get_stats(&before));
    for (int k = 0; k < 3; k++) {
      alpha = 0.05 + 0.2 * k;
      ZT_OK(zmlx_op_call(op, &in, 1, &alpha, NULL, &out));
      ZT_OK(zmlx_op_vjp(op, &in, 1, &alpha, ones, NULL, &grad));
      double *o = zt_download(out), *g = zt_download(grad);
      for (int64_t i = 0; i < n; i++) {
        double want = x[i] > 0 ? x[i] : alpha * x[i], wg = x[i] > 0 ? 1.0 : alpha;
        zt_assert_close(&o[i], &want, 1, 1e-6, 1e-6, "leaky_relu");
        zt_assert_close(&g[i], &wg, 1, 1e-6, 1e-6, "leaky_relu'");
      }
      free(o), free(g);
      zmlx_array_release(out), zmlx_array_release(grad);
    }
    ZT_OK(zmlx_cache_get_stats(&after));
    assert_int_equal(after.misses, before.misses);
    assert_int_equal(after.disk_hits, before.disk_hits);
    free(x);
    zmlx_array_release(in), zmlx_array_release(ones);
    zmlx_op_destroy(op);
  }
}

/* ------------------------------------------------ IEEE edge values */

/* Functions at the values where their definitions branch (±0, ±inf, NaN,
 * the tails), run on each device and compared with hand-written results,
 * not with the engine's interpreter (which shares the parser and the
 * simplifier with the kernels). */
static void test_edge_values(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  static const float xs[] = {0.0f, -0.0f, 2.5f, -3.0f, INFINITY, -INFINITY, -30.0f, 30.0f};
  enum { N = sizeof xs / sizeof xs[0] };
  static const struct {
    const char *expr;
    double want[N];
    double rtol;
  } cases[] = {
      {"sign(x)", {0, 0, 1, -1, 1, -1, -1, 1}, 0},
      {"relu(x)", {0, 0, 2.5, 0, INFINITY, 0, 0, 30}, 0},
      {"abs(x)", {0, 0, 2.5, 3, INFINITY, INFINITY, 30, 30}, 0},
      /* softplus(-30) = log1p(e^-30): its tail is 9.4e-14, not 0 */
      {"softplus(x)", {0.6931471805599453, 0.6931471805599453, 2.578889734292549,
                       0.04858735157374206, INFINITY, 0, 9.357622968840175e-14, 30}, 1e-5},
      {"sigmoid(x)", {0.5, 0.5, 0.9241418199787566, 0.04742587317756678, 1, 0,
                      9.357622968839299e-14, 1}, 1e-5},
  };
  int64_t n = N;
  for (int d = 0; d < nd; d++) {
    zmlx_array *in = zt_array(devs[d], ZMLX_F32, 1, &n, xs);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
      zmlx_op *op = NULL;
      zmlx_array *out = NULL;
      ZT_OK(zmlx_elementwise(cases[c].expr, X, 1, NULL, 0, &op));
      ZT_OK(zmlx_op_call(op, &in, 1, NULL, NULL, &out));
      double *got = zt_download(out);
      for (int i = 0; i < N; i++) {
        double w = cases[c].want[i], g = got[i];
        int ok = isinf(w) ? g == w : fabs(g - w) <= cases[c].rtol * fabs(w);
        if (!ok)
          fail_msg("%s at x = %g: got %.9g, want %.9g", cases[c].expr, (double)xs[i], g, w);
      }
      free(got);
      zmlx_array_release(out);
      zmlx_op_destroy(op);
    }
    zmlx_array_release(in);
  }
}

/* ------------------------------------------------ broadcast gradients */

/* grad of `x * y + sin(y)` for broadcast shapes, against host sums. */
static void check_broadcast_grad(zmlx_device *dev, zmlx_dtype dt, int nx, const int64_t *sx,
                                 int ny, const int64_t *sy, const char *what) {
  zmlx_op *op = NULL;
  ZT_OK(zmlx_elementwise("x * y + sin(y)", XY, 2, NULL, 0, &op));
  int64_t cx = count_of(nx, sx), cy = count_of(ny, sy);
  float *hx = rnd((size_t)cx, -2, 2, 7), *hy = rnd((size_t)cy, -2, 2, 8);
  zmlx_array *in[2] = {zt_array(dev, dt, nx, sx, hx), zt_array(dev, dt, ny, sy, hy)};
  zmlx_array *out = NULL, *grads[2];
  ZT_OK(zmlx_op_call(op, in, 2, NULL, NULL, &out));
  int ond = zmlx_array_ndim(out);
  int64_t os[ZMLX_MAX_DIMS], no = zmlx_array_size(out);
  memcpy(os, zmlx_array_shape(out), (size_t)ond * sizeof *os);
  float *hg = rnd((size_t)no, -1, 1, 9);
  zmlx_array *cot = zt_array(dev, ZMLX_F32, ond, os, hg);
  ZT_OK(zmlx_op_vjp(op, in, 2, NULL, cot, NULL, grads));
  assert_int_equal(zmlx_array_ndim(grads[1]), ny);
  assert_int_equal(zmlx_array_dtype(grads[1]), dt);
  double *wx = calloc((size_t)cx, sizeof *wx), *wy = calloc((size_t)cy, sizeof *wy);
  double *sa = calloc((size_t)cy, sizeof *sa);
  for (int64_t i = 0; i < no; i++) {
    int64_t rem = i, ix = 0, iy = 0, stx = 1, sty = 1;
    for (int d = ond - 1; d >= 0; d--) {
      int64_t c = rem % os[d];
      rem /= os[d];
      int kx = d - (ond - nx), ky = d - (ond - ny);
      if (kx >= 0) ix += (sx[kx] == 1 ? 0 : c) * stx, stx *= sx[kx];
      if (ky >= 0) iy += (sy[ky] == 1 ? 0 : c) * sty, sty *= sy[ky];
    }
    double a = zt_round_to(dt, hx[ix]), b = zt_round_to(dt, hy[iy]);
    wx[ix] += hg[i] * b;
    wy[iy] += hg[i] * (a + cos(b));
    sa[iy] += fabs(hg[i] * (a + cos(b)));
  }
  double *gx = zt_download(grads[0]), *gy = zt_download(grads[1]);
  double tol = zt_tolerance(dt);
  char msg[160];
  snprintf(msg, sizeof msg, "%s %s grad x", what, zmlx_dtype_name(dt));
  for (int64_t i = 0; i < cx; i++) zt_assert_close(&gx[i], &wx[i], 1, 1e-5 + tol * 4, tol, msg);
  snprintf(msg, sizeof msg, "%s %s grad y", what, zmlx_dtype_name(dt));
  for (int64_t i = 0; i < cy; i++)
    zt_assert_close(&gy[i], &wy[i], 1, 1e-5 * sa[i] + 1e-6, tol, msg);
  free(hx), free(hy), free(hg), free(wx), free(wy), free(sa), free(gx), free(gy);
  zmlx_array_release(in[0]), zmlx_array_release(in[1]), zmlx_array_release(out);
  zmlx_array_release(cot), zmlx_array_release(grads[0]), zmlx_array_release(grads[1]);
  zmlx_op_destroy(op);
}

static void test_broadcast_gradients(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_dtype dts[3] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
  for (int d = 0; d < nd; d++)
    for (int t = 0; t < 3; t++) {
      int64_t nd_[2] = {300, 1000}, dd[1] = {1000};
      check_broadcast_grad(devs[d], dts[t], 2, nd_, 1, dd, "[N,D] x [D]");
      int64_t n1[2] = {33, 1}, d1[2] = {1, 31};
      check_broadcast_grad(devs[d], dts[t], 2, n1, 2, d1, "[N,1] x [1,D]");
      int64_t a3[3] = {4, 5, 6}, b3[3] = {4, 1, 6};
      check_broadcast_grad(devs[d], dts[t], 3, a3, 3, b3, "[4,5,6] x [4,1,6]");
      int64_t m[2] = {7, 9};
      check_broadcast_grad(devs[d], dts[t], 2, m, 0, NULL, "[7,9] x scalar");
      int64_t big[1] = {4097}, one[1] = {1};
      check_broadcast_grad(devs[d], dts[t], 1, big, 1, one, "[4097] x [1]");
    }
}

/* Integer inputs compute in f32 and give f32; a float input sets the dtype. */
static void test_dtype_rules(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_op *op = NULL;
  ZT_OK(zmlx_elementwise("x / y", XY, 2, NULL, 0, &op));
  struct { zmlx_dtype a, b, want; } rules[] = {
      {ZMLX_I32, ZMLX_I32, ZMLX_F32}, {ZMLX_I32, ZMLX_BF16, ZMLX_BF16},
      {ZMLX_BF16, ZMLX_F16, ZMLX_F32}, {ZMLX_F16, ZMLX_F16, ZMLX_F16},
      {ZMLX_BF16, ZMLX_F32, ZMLX_F32}, {ZMLX_U8, ZMLX_F16, ZMLX_F16}};
  float a[5] = {7, -3, 10, 1, 0}, b[5] = {2, 4, -8, 3, 5};
  for (int d = 0; d < nd; d++)
    for (size_t r = 0; r < sizeof rules / sizeof *rules; r++) {
      int64_t n = 5;
      float au[5] = {7, 3, 10, 1, 0};
      zmlx_array *in[2] = {zt_array(devs[d], rules[r].a, 1, &n, rules[r].a == ZMLX_U8 ? au : a),
                           zt_array(devs[d], rules[r].b, 1, &n, b)};
      zmlx_array *out = NULL;
      ZT_OK(zmlx_op_call(op, in, 2, NULL, NULL, &out));
      assert_int_equal(zmlx_array_dtype(out), rules[r].want);
      double *o = zt_download(out);
      for (int i = 0; i < 5; i++) {
        double want = (rules[r].a == ZMLX_U8 ? au[i] : a[i]) / (double)b[i];
        zt_assert_close(&o[i], &want, 1, 1e-6, 2 * zt_tolerance(rules[r].want), "dtype rule");
      }
      free(o);
      zmlx_array_release(in[0]), zmlx_array_release(in[1]), zmlx_array_release(out);
    }
  zmlx_op_destroy(op);
}

/* ------------------------------------------------------------ reduce */

typedef struct reduce_case {
  const char *name;
  zmlx_reduce_desc desc;
  int kind; /* 0 sum, 1 max, 2 mean, 3 sum of squares */
} reduce_case;

static const reduce_case REDUCES[] = {
    {"sum", {.init = "0", .update = "acc + x", .combine = "a + b"}, 0},
    {"sum, thread per row", {.init = "0", .update = "acc + x"}, 0},
    {"max", {.init = "-inf", .update = "max(acc, x)", .combine = "max(a, b)"}, 1},
    {"mean", {.init = "0", .update = "acc + x", .combine = "a + b", .finalize = "acc / n"}, 2},
    {"sum of squares", {.init = "0", .map = "x * x", .update = "acc + x", .combine = "a + b"}, 3},
};

static double reduce_ref(int kind, const double *x, int64_t n, double *scale) {
  double acc = kind == 1 ? -INFINITY : 0;
  *scale = 0;
  for (int64_t j = 0; j < n; j++) {
    double v = kind == 3 ? x[j] * x[j] : x[j];
    acc = kind == 1 ? fmax(acc, v) : acc + v;
    *scale += fabs(v);
  }
  if (kind == 2) acc /= (double)n, *scale /= (double)n;
  if (kind == 1) *scale = fabs(acc);
  return acc;
}

static void check_reduce(zmlx_device *dev, const reduce_case *rc, zmlx_dtype dt, int nd,
                         const int64_t *shape) {
  zmlx_op *op = NULL;
  ZT_OK(zmlx_reduce(&rc->desc, &op));
  int64_t n = count_of(nd, shape), cols = shape[nd - 1], rows = n / cols;
  float *x = rnd((size_t)n, -2, 2, (uint64_t)cols);
  zmlx_array *in = zt_array(dev, dt, nd, shape, x), *out = NULL;
  ZT_OK(zmlx_op_call(op, &in, 1, NULL, NULL, &out));
  assert_int_equal(zmlx_array_ndim(out), nd - 1);
  assert_int_equal(zmlx_array_dtype(out), dt);
  double *got = zt_download(out), *xr = malloc((size_t)n * sizeof *xr);
  for (int64_t i = 0; i < n; i++) xr[i] = zt_round_to(dt, x[i]);
  for (int64_t r = 0; r < rows; r++) {
    double scale, want = reduce_ref(rc->kind, xr + r * cols, cols, &scale);
    char msg[128];
    snprintf(msg, sizeof msg, "%s %s row %lld of %lld", rc->name, zmlx_dtype_name(dt), (long long)r,
             (long long)rows);
    zt_assert_close(&got[r], &want, 1, 1e-5 * scale + 1e-6, zt_tolerance(dt), msg);
  }
  free(got), free(xr), free(x);
  zmlx_array_release(in), zmlx_array_release(out);
  zmlx_op_destroy(op);
}

static void test_reduce(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_dtype dts[3] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
  int64_t s2[2] = {7, 1000}, s3[3] = {2, 3, 33}, s1[1] = {4097};
  for (int d = 0; d < nd; d++)
    for (size_t c = 0; c < sizeof REDUCES / sizeof *REDUCES; c++)
      for (int t = 0; t < 3; t++) {
        check_reduce(devs[d], &REDUCES[c], dts[t], 2, s2);
        check_reduce(devs[d], &REDUCES[c], dts[t], 3, s3);
        check_reduce(devs[d], &REDUCES[c], dts[t], 1, s1);
      }
}

/* Rows of length 0 reduce to finalize(init, 0); no kernel reads them. */
static void test_reduce_empty_rows(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++) {
    zmlx_op *sum = NULL, *mean = NULL;
    ZT_OK(zmlx_reduce(&REDUCES[0].desc, &sum));
    ZT_OK(zmlx_reduce(&REDUCES[3].desc, &mean));
    int64_t shape[2] = {3, 0};
    zmlx_array *in = NULL, *o1 = NULL, *o2 = NULL;
    ZT_OK(zmlx_array_zeros(devs[d], ZMLX_F32, 2, shape, &in));
    ZT_OK(zmlx_op_call(sum, &in, 1, NULL, NULL, &o1));
    ZT_OK(zmlx_op_call(mean, &in, 1, NULL, NULL, &o2));
    double *a = zt_download(o1), *b = zt_download(o2);
    for (int i = 0; i < 3; i++) {
      assert_true(a[i] == 0.0);
      assert_true(isnan(b[i])); /* 0 / 0 */
    }
    free(a), free(b);
    zmlx_array_release(in), zmlx_array_release(o1), zmlx_array_release(o2);
    zmlx_op_destroy(sum), zmlx_op_destroy(mean);
  }
}

/* ------------------------------------------------------------ map_reduce */

static zmlx_map_reduce_desc softmax_desc(zmlx_map_reduce_strategy strategy, const char *write) {
  zmlx_map_reduce_desc d = {
      .reduce = {{.init = "-inf", .update = "max(acc, x)", .combine = "max(a, b)"},
                 {.init = "0", .map = "exp(x - r0)", .update = "acc + x", .combine = "a + b"}},
      .n_reduce = 2, .write = write, .strategy = strategy};
  return d;
}

static int source_mentions(zmlx_op *op, zmlx_backend b, const char *needle) {
  zmlx_dtype dt = ZMLX_F32;
  char *s = NULL;
  ZT_OK(zmlx_op_source(op, b, ZMLX_OP_FORWARD, &dt, &s));
  int found = strstr(s, needle) != NULL;
  zmlx_free(s);
  return found;
}

typedef enum { SOFTMAX, LSE, RMSNORM, SCALED } mr_kind;

static void mr_ref(mr_kind kind, const double *x, int64_t n, double *out) {
  double m = -INFINITY, s = 0, scale = kind == SCALED ? 0.5 : 1.0;
  if (kind == RMSNORM) {
    for (int64_t j = 0; j < n; j++) s += x[j] * x[j];
    for (int64_t j = 0; j < n; j++) out[j] = x[j] / sqrt(s / (double)n + 1e-6);
    return;
  }
  for (int64_t j = 0; j < n; j++) m = fmax(m, scale * x[j]);
  for (int64_t j = 0; j < n; j++) s += exp(scale * x[j] - m);
  for (int64_t j = 0; j < n; j++) out[j] = kind == LSE ? m + log(s) : exp(scale * x[j] - m) / s;
}

static void check_map_reduce(zmlx_device *dev, zmlx_op *op, mr_kind kind, zmlx_dtype dt,
                             int64_t rows, int64_t cols, const char *what) {
  int64_t shape[2] = {rows, cols}, n = rows * cols;
  float *x = rnd((size_t)n, -5, 5, (uint64_t)(cols + kind));
  zmlx_array *in = zt_array(dev, dt, 2, shape, x), *out = NULL;
  ZT_OK(zmlx_op_call(op, &in, 1, NULL, NULL, &out));
  assert_int_equal(zmlx_array_ndim(out), 2);
  double *got = zt_download(out), *xr = malloc((size_t)n * sizeof *xr), *want = malloc((size_t)n * sizeof *want);
  for (int64_t i = 0; i < n; i++) xr[i] = zt_round_to(dt, x[i]);
  for (int64_t r = 0; r < rows; r++) mr_ref(kind, xr + r * cols, cols, want + r * cols);
  char msg[128];
  snprintf(msg, sizeof msg, "%s %s %lldx%lld", what, zmlx_dtype_name(dt), (long long)rows, (long long)cols);
  zt_assert_close(got, want, (size_t)n, kind == SOFTMAX || kind == SCALED ? 1e-6 : 1e-4,
                  2 * zt_tolerance(dt) + 1e-5, msg);
  free(got), free(xr), free(want), free(x);
  zmlx_array_release(in), zmlx_array_release(out);
}

static void test_map_reduce(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_map_reduce_desc two = softmax_desc(ZMLX_MAP_REDUCE_TWO_PASS, "exp(x - r0) / r1");
  zmlx_map_reduce_desc online = softmax_desc(ZMLX_MAP_REDUCE_AUTO, "exp(x - r0) / r1");
  zmlx_map_reduce_desc lse = softmax_desc(ZMLX_MAP_REDUCE_AUTO, "r0 + log(r1)");
  zmlx_map_reduce_desc scaled = softmax_desc(ZMLX_MAP_REDUCE_AUTO, "exp(x * 0.5 - r0) / r1");
  scaled.reduce[0].map = "x * 0.5";
  scaled.reduce[1].map = "exp(x * 0.5 - r0)";
  zmlx_map_reduce_desc rms = {
      .reduce = {{.init = "0", .map = "x * x", .update = "acc + x", .combine = "a + b",
                  .finalize = "acc / n"}},
      .n_reduce = 1, .write = "x * rsqrt(r0 + 1e-6)"};
  struct { zmlx_map_reduce_desc *d; mr_kind kind; const char *what; int online; } cases[] = {
      {&two, SOFTMAX, "softmax two-pass", 0}, {&online, SOFTMAX, "softmax online", 1},
      {&lse, LSE, "logsumexp (online)", 1},   {&scaled, SCALED, "scaled softmax online", 1},
      {&rms, RMSNORM, "rmsnorm", 0}};
  zmlx_dtype dts[3] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
  int64_t cols[4] = {1, 33, 1000, 4097};
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    zmlx_op *op = NULL;
    ZT_OK(zmlx_map_reduce(cases[c].d, &op));
    assert_int_equal(source_mentions(op, ZMLX_BACKEND_CUDA, "online"), cases[c].online);
    for (int d = 0; d < nd; d++)
      for (int t = 0; t < 3; t++)
        for (int k = 0; k < 4; k++)
          check_map_reduce(devs[d], op, cases[c].kind, dts[t], cols[k] < 100 ? 67 : 3, cols[k],
                           cases[c].what);
    zmlx_op_destroy(op);
  }
}

/* Thread per row (no combines), and the online form of it. */
static void test_map_reduce_thread_per_row(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int s = 0; s < 2; s++) {
    zmlx_map_reduce_desc d = softmax_desc(s ? ZMLX_MAP_REDUCE_ONLINE : ZMLX_MAP_REDUCE_TWO_PASS,
                                          "exp(x - r0) / r1");
    d.reduce[0].combine = d.reduce[1].combine = NULL;
    zmlx_op *op = NULL;
    ZT_OK(zmlx_map_reduce(&d, &op));
    assert_true(source_mentions(op, ZMLX_BACKEND_OPENCL, "one thread per row"));
    for (int i = 0; i < nd; i++) check_map_reduce(devs[i], op, SOFTMAX, ZMLX_F32, 300, 31, "per thread");
    zmlx_op_destroy(op);
  }
}

/* ------------------------------------------------------------ bad input */

static void test_bad_inputs(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  int64_t live = zmlx_array_live_count();
  zmlx_op *op = NULL, *red = NULL;
  ZT_FAILS(zmlx_elementwise("x * (y + ", XY, 2, NULL, 0, &op), ZMLX_ERR_PARSE, "1:10: expected an expression");
  assert_non_null(strstr(zmlx_last_error(), "^"));
  assert_null(op);
  ZT_FAILS(zmlx_elementwise("s = x\ns * zz", XY, 2, NULL, 0, &op), ZMLX_ERR_PARSE, "2:5:");
  ZT_FAILS(zmlx_elementwise("x", XY, 0, NULL, 0, &op), ZMLX_ERR_INVALID_ARG, "inputs");
  ZT_FAILS(zmlx_elementwise(NULL, XY, 2, NULL, 0, &op), ZMLX_ERR_NULL_ARG, "expr");
  zmlx_reduce_desc bad = {.init = "0", .update = "acc + y"};
  ZT_FAILS(zmlx_reduce(&bad, &red), ZMLX_ERR_PARSE, "reduce update");
  zmlx_reduce_desc noinit = {.update = "acc + x"};
  ZT_FAILS(zmlx_reduce(&noinit, &red), ZMLX_ERR_NULL_ARG, "init");
  zmlx_map_reduce_desc three = softmax_desc(ZMLX_MAP_REDUCE_AUTO, "x");
  three.n_reduce = 3;
  ZT_FAILS(zmlx_map_reduce(&three, &red), ZMLX_ERR_INVALID_ARG, "n_reduce");
  zmlx_map_reduce_desc r1 = {.reduce = {{.init = "0", .update = "acc + x"}}, .n_reduce = 1,
                             .write = "x / r1"};
  ZT_FAILS(zmlx_map_reduce(&r1, &red), ZMLX_ERR_INVALID_ARG, "r1");
  zmlx_map_reduce_desc forced = {.reduce = {{.init = "0", .update = "acc + x"},
                                            {.init = "0", .update = "acc + x"}},
                                 .n_reduce = 2, .write = "x", .strategy = ZMLX_MAP_REDUCE_ONLINE};
  ZT_FAILS(zmlx_map_reduce(&forced, &red), ZMLX_ERR_INVALID_ARG, "softmax shape");
  ZT_OK(zmlx_elementwise("x * y", XY, 2, NULL, 0, &op));
  ZT_OK(zmlx_reduce(&REDUCES[0].desc, &red));
  zmlx_dtype dts[2] = {ZMLX_F32, ZMLX_F32};
  char *src = NULL;
  ZT_FAILS(zmlx_op_source(red, ZMLX_BACKEND_CUDA, ZMLX_OP_VJP, dts, &src), ZMLX_ERR_UNSUPPORTED,
           "forward");
  ZT_FAILS(zmlx_op_source(op, ZMLX_BACKEND_AUTO, ZMLX_OP_FORWARD, dts, &src), ZMLX_ERR_INVALID_ARG,
           "backend");
  for (int d = 0; d < nd; d++) {
    int64_t s34[2] = {3, 4}, s5[1] = {5}, s0 = 0;
    zmlx_array *a = NULL, *b = NULL, *out = NULL, *f64 = NULL, *scalar = NULL, *grads[2];
    ZT_OK(zmlx_array_zeros(devs[d], ZMLX_F32, 2, s34, &a));
    ZT_OK(zmlx_array_zeros(devs[d], ZMLX_F32, 1, s5, &b));
    zmlx_array *in[2] = {a, b};
    ZT_FAILS(zmlx_op_call(op, in, 1, NULL, NULL, &out), ZMLX_ERR_INVALID_ARG, "takes 2 inputs");
    ZT_FAILS(zmlx_op_call(op, in, 2, NULL, NULL, &out), ZMLX_ERR_SHAPE, "[3, 4]");
    assert_non_null(strstr(zmlx_last_error(), "[5]"));
    assert_null(out);
    zmlx_array *aa[2] = {a, a};
    ZT_FAILS(zmlx_op_vjp(op, aa, 2, NULL, b, NULL, grads), ZMLX_ERR_SHAPE, "cotangent");
    ZT_FAILS(zmlx_op_vjp(red, &a, 1, NULL, a, NULL, grads), ZMLX_ERR_UNSUPPORTED, "VJP");
    zmlx_array *nul[2] = {a, NULL};
    ZT_FAILS(zmlx_op_call(op, nul, 2, NULL, NULL, &out), ZMLX_ERR_NULL_ARG, "input 1");
    if (zmlx_array_zeros(devs[d], ZMLX_F64, 1, s5, &f64) == ZMLX_OK) {
      zmlx_array *ff[2] = {f64, f64};
      ZT_FAILS(zmlx_op_call(op, ff, 2, NULL, NULL, &out), ZMLX_ERR_DTYPE, "f64");
      zmlx_array_release(f64);
    }
    ZT_OK(zmlx_array_zeros(devs[d], ZMLX_F32, 0, &s0, &scalar));
    ZT_FAILS(zmlx_op_call(red, &scalar, 1, NULL, NULL, &out), ZMLX_ERR_SHAPE, "0-d");
    zmlx_array_release(a), zmlx_array_release(b), zmlx_array_release(scalar);
  }
  zmlx_op *lr = NULL;
  ZT_OK(zmlx_elementwise("leaky_relu(x, alpha)", X, 1, ALPHA, 1, &lr));
  for (int d = 0; d < nd; d++) {
    int64_t s5 = 5;
    zmlx_array *a = NULL, *out = NULL;
    ZT_OK(zmlx_array_zeros(devs[d], ZMLX_F32, 1, &s5, &a));
    ZT_FAILS(zmlx_op_call(lr, &a, 1, NULL, NULL, &out), ZMLX_ERR_NULL_ARG, "params");
    zmlx_array_release(a);
  }
  zmlx_op_destroy(op), zmlx_op_destroy(red), zmlx_op_destroy(lr);
  assert_int_equal(zmlx_array_live_count(), live);
}

/* Work ordered on a caller's stream (forward, VJP with a broadcast sum). */
static void test_explicit_stream(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_op *op = NULL;
  ZT_OK(zmlx_elementwise("x * y", XY, 2, NULL, 0, &op));
  for (int d = 0; d < nd; d++) {
    zmlx_stream *s = NULL;
    ZT_OK(zmlx_stream_create(devs[d], &s));
    int64_t sx[2] = {64, 100}, sy[1] = {100};
    float *hx = rnd(6400, -1, 1, 51), *hy = rnd(100, -1, 1, 52);
    zmlx_array *in[2] = {zt_array(devs[d], ZMLX_F32, 2, sx, hx), zt_array(devs[d], ZMLX_F32, 1, sy, hy)};
    zmlx_array *out = NULL, *ones = NULL, *grads[2];
    ZT_OK(zmlx_array_full(devs[d], ZMLX_F32, 0, NULL, 1.0, &ones));
    ZT_OK(zmlx_op_call(op, in, 2, NULL, s, &out));
    ZT_OK(zmlx_op_vjp(op, in, 2, NULL, ones, s, grads));
    ZT_OK(zmlx_stream_synchronize(s));
    double *o = zt_download(out), *gy = zt_download(grads[1]);
    for (int i = 0; i < 6400; i++) {
      double want = (double)hx[i] * hy[i % 100];
      zt_assert_close(&o[i], &want, 1, 1e-6, 1e-6, "stream forward");
    }
    for (int j = 0; j < 100; j++) {
      double want = 0;
      for (int i = 0; i < 64; i++) want += hx[i * 100 + j];
      zt_assert_close(&gy[j], &want, 1, 1e-5, 1e-5, "stream grad");
    }
    free(o), free(gy), free(hx), free(hy);
    zmlx_array_release(in[0]), zmlx_array_release(in[1]), zmlx_array_release(out);
    zmlx_array_release(ones), zmlx_array_release(grads[0]), zmlx_array_release(grads[1]);
    ZT_OK(zmlx_stream_destroy(s));
  }
  zmlx_op_destroy(op);
}

/* Empty arrays: nothing to launch, empty results. */
static void test_empty(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_op *op = NULL;
  ZT_OK(zmlx_elementwise("x * y", XY, 2, NULL, 0, &op));
  for (int d = 0; d < nd; d++) {
    int64_t s[2] = {0, 4}, r[1] = {4};
    zmlx_array *a = NULL, *b = NULL, *out = NULL, *grads[2], *ones = NULL;
    ZT_OK(zmlx_array_zeros(devs[d], ZMLX_F32, 2, s, &a));
    ZT_OK(zmlx_array_full(devs[d], ZMLX_F32, 1, r, 2.0, &b));
    ZT_OK(zmlx_array_full(devs[d], ZMLX_F32, 0, NULL, 1.0, &ones));
    zmlx_array *in[2] = {a, b};
    ZT_OK(zmlx_op_call(op, in, 2, NULL, NULL, &out));
    assert_int_equal(zmlx_array_size(out), 0);
    ZT_OK(zmlx_op_vjp(op, in, 2, NULL, ones, NULL, grads));
    double *gb = zt_download(grads[1]);
    for (int i = 0; i < 4; i++) assert_true(gb[i] == 0.0); /* sum over no rows */
    free(gb);
    zmlx_array_release(a), zmlx_array_release(b), zmlx_array_release(out), zmlx_array_release(ones);
    zmlx_array_release(grads[0]), zmlx_array_release(grads[1]);
  }
  zmlx_op_destroy(op);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forward_vjp_jvp),
      cmocka_unit_test(test_half_dtypes),
      cmocka_unit_test(test_params_without_recompile),
      cmocka_unit_test(test_edge_values),
      cmocka_unit_test(test_broadcast_gradients),
      cmocka_unit_test(test_dtype_rules),
      cmocka_unit_test(test_reduce),
      cmocka_unit_test(test_reduce_empty_rows),
      cmocka_unit_test(test_map_reduce),
      cmocka_unit_test(test_map_reduce_thread_per_row),
      cmocka_unit_test(test_bad_inputs),
      cmocka_unit_test(test_explicit_stream),
      cmocka_unit_test(test_empty),
  };
  int rc = zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
  zmlx_shutdown();
  return rc;
}
