/* Autograd (src/autograd): value_and_grad over an MLP-like chain against a
 * hand derivation in f64 and the gradient checker; custom functions whose
 * VJP / JVP are hand-written dialect kernels; forward mode; accumulation
 * and broadcast reduction of gradients; grad of grad (tanh, sigmoid, x**3);
 * the differentiable shape ops and matmul through the checker; two threads
 * differentiating at once; failing callbacks; and 10,000 grad steps with a
 * flat live-array count. Every test runs on every available device. */
#include "test_support.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/internal.h" /* zmlxi_fail for the failing callbacks */

#define MAX_DEVS 4

/* ------------------------------------------------------------------ helpers */

static const char *const X[] = {"x"};

static float *rnd(size_t n, float lo, float hi, uint64_t salt) {
  uint64_t st = zt_seed() ^ (salt * 0x9E3779B97F4A7C15ull);
  if (!st) st = 1;
  float *x = malloc(n * sizeof *x + 1);
  assert_non_null(x);
  zt_fill_uniform(x, n, lo, hi, &st);
  return x;
}

static size_t count(int ndim, const int64_t *shape) {
  size_t n = 1;
  for (int d = 0; d < ndim; d++) n *= (size_t)shape[d];
  return n;
}

/* A random f32 array and (optionally) its host values. */
static zmlx_array *rand_array(zmlx_device *dev, int ndim, const int64_t *shape, float lo,
                              float hi, uint64_t salt, float **host) {
  float *v = rnd(count(ndim, shape), lo, hi, salt);
  zmlx_array *a = zt_array(dev, ZMLX_F32, ndim, shape, v);
  if (host) *host = v;
  else free(v);
  return a;
}

static void assert_shape(const zmlx_array *a, int ndim, const int64_t *shape, const char *what) {
  if (zmlx_array_ndim(a) != ndim) fail_msg("%s: ndim %d, expected %d", what, zmlx_array_ndim(a), ndim);
  for (int d = 0; d < ndim; d++)
    if (zmlx_array_shape(a)[d] != shape[d])
      fail_msg("%s: dim %d is %lld, expected %lld", what, d, (long long)zmlx_array_shape(a)[d],
               (long long)shape[d]);
}

static void check_array(zmlx_array *a, const double *want, double atol, double rtol,
                        const char *what) {
  double *got = zt_download(a);
  zt_assert_close(got, want, (size_t)zmlx_array_size(a), atol, rtol, what);
  free(got);
}

static double item(zmlx_array *a) {
  double v = NAN;
  ZT_OK(zmlx_array_item(a, 0, &v));
  return v;
}

static void check_report(const zmlx_grad_check_report *r, int want_jvp, const char *what) {
  for (int i = 0; i < r->n_inputs; i++) {
    const zmlx_grad_check_input *in = &r->inputs[i];
    if (in->checked && !in->passed)
      fail_msg("%s: input %d fails the gradient check: element %lld analytic %.9g numeric %.9g "
               "(max abs %g, max rel %g)", what, i, (long long)in->worst_index, in->analytic,
               in->numeric, in->max_abs_err, in->max_rel_err);
  }
  if (want_jvp && !r->jvp_checked) fail_msg("%s: the JVP was not checked", what);
  if (r->jvp_checked && !r->jvp_passed)
    fail_msg("%s: JVP %.9g vs numeric %.9g", what, r->jvp_analytic, r->jvp_numeric);
  assert_true(r->passed);
}

static zmlx_status apply1(const char *expr, zmlx_array *x, zmlx_array **out) {
  return zmlx_apply_expr(expr, X, &x, 1, NULL, NULL, 0, out);
}

#define TRY(expr)                          \
  do {                                     \
    st = (expr);                           \
    if (st != ZMLX_OK) goto done;          \
  } while (0)

/* ------------------------------------------------ MLP-like chain (issue 4) */

/* L = sum(tanh(X @ W + b) * v) + mean(A * A), A = X @ W + b.
 * inputs: X [B, D], W [D, H], b [H] (broadcast add), v [H] (broadcast mul). */
static zmlx_status mlp_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud;
  (void)n;
  zmlx_array *z = NULL, *a = NULL, *h = NULL, *p = NULL, *s1 = NULL, *sq = NULL, *s2 = NULL;
  zmlx_status st;
  TRY(zmlx_matmul(in[0], in[1], &z));
  TRY(zmlx_add(z, in[2], &a));
  TRY(apply1("tanh(x)", a, &h));
  TRY(zmlx_mul(h, in[3], &p));
  TRY(zmlx_sum(p, NULL, 0, 0, &s1));
  TRY(zmlx_mul(a, a, &sq));
  TRY(zmlx_mean(sq, NULL, 0, 0, &s2));
  TRY(zmlx_add(s1, s2, out));
done:
  zmlx_array_release(z), zmlx_array_release(a), zmlx_array_release(h), zmlx_array_release(p);
  zmlx_array_release(s1), zmlx_array_release(sq), zmlx_array_release(s2);
  return st;
}

/* The same loss and its gradients in f64 on the host. */
static double mlp_reference(const float *x, const float *w, const float *b, const float *v,
                            int B, int D, int H, double *gx, double *gw, double *gb, double *gv) {
  double loss = 0, *da = calloc((size_t)(B * H), sizeof *da);
  assert_non_null(da);
  memset(gb, 0, (size_t)H * sizeof *gb);
  memset(gv, 0, (size_t)H * sizeof *gv);
  for (int i = 0; i < B; i++)
    for (int j = 0; j < H; j++) {
      double a = b[j];
      for (int k = 0; k < D; k++) a += (double)x[i * D + k] * w[k * H + j];
      double h = tanh(a);
      loss += h * v[j] + a * a / (B * H);
      da[i * H + j] = (1 - h * h) * v[j] + 2 * a / (B * H);
      gb[j] += da[i * H + j];
      gv[j] += h;
    }
  for (int i = 0; i < B; i++)
    for (int k = 0; k < D; k++) {
      gx[i * D + k] = 0;
      for (int j = 0; j < H; j++) gx[i * D + k] += da[i * H + j] * w[k * H + j];
    }
  for (int k = 0; k < D; k++)
    for (int j = 0; j < H; j++) {
      gw[k * H + j] = 0;
      for (int i = 0; i < B; i++) gw[k * H + j] += x[i * D + k] * da[i * H + j];
    }
  free(da);
  return loss;
}

static void mlp_on(zmlx_device *dev, int B, int D, int H) {
  int64_t sx[2] = {B, D}, sw[2] = {D, H}, sb[1] = {H};
  float *x, *w, *b, *v;
  zmlx_array *in[4] = {rand_array(dev, 2, sx, -1, 1, 1, &x), rand_array(dev, 2, sw, -1, 1, 2, &w),
                       rand_array(dev, 1, sb, -0.5f, 0.5f, 3, &b),
                       rand_array(dev, 1, sb, -1, 1, 4, &v)};
  double *gx = malloc(sizeof(double) * (size_t)(B * D)), *gw = malloc(sizeof(double) * (size_t)(D * H));
  double gb[64], gv[64];
  double want = mlp_reference(x, w, b, v, B, D, H, gx, gw, gb, gv);
  zmlx_array *value = NULL, *grads[4] = {0};
  int64_t live = zmlx_array_live_count();
  ZT_OK(zmlx_value_and_grad(mlp_loss, NULL, in, 4, NULL, 0, &value, grads));
  assert_false(zmlx_grad_is_recording());
  zt_assert_close((double[]){item(value)}, &want, 1, 1e-4, 1e-4, "MLP loss");
  const double *wants[4] = {gx, gw, gb, gv};
  const char *names[4] = {"dL/dX", "dL/dW", "dL/db (broadcast add)", "dL/dv (broadcast mul)"};
  for (int i = 0; i < 4; i++) {
    assert_shape(grads[i], zmlx_array_ndim(in[i]), zmlx_array_shape(in[i]), names[i]);
    assert_int_equal(zmlx_array_dtype(grads[i]), ZMLX_F32);
    check_array(grads[i], wants[i], 1e-4, 1e-4, names[i]);
  }
  zmlx_array_release(value);
  for (int i = 0; i < 4; i++) zmlx_array_release(grads[i]);
  assert_int_equal(zmlx_array_live_count(), live);
  zmlx_grad_check_report r;
  ZT_OK(zmlx_check_grad(mlp_loss, NULL, in, 4, 1e-3, 1e-2, &r));
  check_report(&r, 1, "MLP chain");
  for (int i = 0; i < 4; i++) zmlx_array_release(in[i]);
  free(x), free(w), free(b), free(v), free(gx), free(gw);
}

static void test_mlp_chain(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++) {
    mlp_on(devs[d], 5, 7, 3);
    mlp_on(devs[d], 1, 1, 1);
  }
}

/* ------------------------------- custom function: dialect-kernel VJP / JVP */

/* y = alpha * x^2 with hand-written kernels for y, its VJP and its JVP. */
typedef struct sq_fn {
  zmlx_kernel *fwd, *vjp, *jvp;
  double alpha;
  int vjp_calls, jvp_calls;
  zmlx_custom_function *fn;
} sq_fn;

static zmlx_kernel *sq_kernel(const char *name, int n_in, const char *out, const char *body) {
  static const char *const in_x[] = {"x"}, *const in_xg[] = {"x", "g"};
  static const char *const alpha[] = {"alpha"};
  static const zmlx_dtype alpha_dt[] = {ZMLX_F32};
  const char *outs[1] = {out};
  zmlx_kernel_desc d = {.name = name, .input_names = n_in == 1 ? in_x : in_xg, .n_inputs = n_in,
                        .output_names = outs, .n_outputs = 1, .source = body,
                        .ensure_row_contiguous = 1, .param_names = alpha,
                        .param_dtypes = alpha_dt, .n_params = 1};
  zmlx_kernel *k = NULL;
  ZT_OK(zmlx_kernel_create(&d, &k));
  return k;
}

/* Launch k with one thread per element of in[0] into a new f32 array. */
static zmlx_status launch_like(zmlx_kernel *k, zmlx_array *const *in, int n_in, double alpha,
                               zmlx_array **out) {
  int ndim = zmlx_array_ndim(in[0]);
  const int64_t *shapes[1] = {zmlx_array_shape(in[0])};
  zmlx_dtype dt = ZMLX_F32;
  *out = NULL;
  zmlx_kernel_call c = {.n_inputs = n_in, .n_outputs = 1, .inputs = in, .outputs = out,
                        .output_ndims = &ndim, .output_shapes = shapes, .output_dtypes = &dt,
                        .grid = {zmlx_array_size(in[0]), 1, 1}, .threadgroup = {64, 1, 1},
                        .params = &alpha};
  return zmlx_kernel_launch(k, &c);
}

static zmlx_status sq_forward(void *ud, zmlx_array *const *in, int n, zmlx_array **out, int n_out) {
  sq_fn *f = ud;
  if (n != 1 || n_out != 1) return ZMLX_ERR_INVALID_ARG;
  return launch_like(f->fwd, in, 1, f->alpha, &out[0]);
}

static zmlx_status sq_vjp(void *ud, zmlx_array *const *in, int n, zmlx_array *const *outs,
                          zmlx_array *const *cot, int n_out, zmlx_array **grads) {
  (void)n, (void)outs, (void)n_out;
  sq_fn *f = ud;
  f->vjp_calls++;
  zmlx_array *args[2] = {in[0], cot[0]};
  return launch_like(f->vjp, args, 2, f->alpha, &grads[0]);
}

static zmlx_status sq_jvp(void *ud, zmlx_array *const *in, int n, zmlx_array *const *tan,
                          int n_out, zmlx_array **out_tan) {
  (void)n, (void)n_out;
  sq_fn *f = ud;
  f->jvp_calls++;
  zmlx_array *args[2] = {in[0], tan[0]};
  return launch_like(f->jvp, args, 2, f->alpha, &out_tan[0]);
}

/* wrong_vjp / wrong_jvp: a VJP / JVP kernel missing its factor 2, for the
 * checker to catch. */
static void sq_init_ex(sq_fn *f, double alpha, int with_jvp, int wrong_vjp, int wrong_jvp) {
  memset(f, 0, sizeof *f);
  f->alpha = alpha;
  f->fwd = sq_kernel("sq_fwd", 1, "y",
                     "uint i = thread_position_in_grid.x;\n"
                     "float v = x_load(i);\n"
                     "y_store(i, alpha * v * v);\n");
  f->vjp = sq_kernel(wrong_vjp ? "sq_vjp_wrong" : "sq_vjp", 2, "dx",
                     wrong_vjp ? "uint i = thread_position_in_grid.x;\n"
                                 "dx_store(i, alpha * x_load(i) * g_load(i));\n"
                               : "uint i = thread_position_in_grid.x;\n"
                                 "dx_store(i, 2.0f * alpha * x_load(i) * g_load(i));\n");
  f->jvp = sq_kernel(wrong_jvp ? "sq_jvp_wrong" : "sq_jvp", 2, "dy",
                     wrong_jvp ? "uint i = thread_position_in_grid.x;\n"
                                 "dy_store(i, alpha * x_load(i) * g_load(i));\n"
                               : "uint i = thread_position_in_grid.x;\n"
                                 "dy_store(i, 2.0f * alpha * x_load(i) * g_load(i));\n");
  ZT_OK(zmlx_custom_function_create(sq_forward, sq_vjp, with_jvp ? sq_jvp : NULL, f, &f->fn));
}

static void sq_init(sq_fn *f, double alpha, int with_jvp) { sq_init_ex(f, alpha, with_jvp, 0, 0); }

static void sq_fini(sq_fn *f) {
  zmlx_custom_function_destroy(f->fn);
  zmlx_kernel_destroy(f->fwd), zmlx_kernel_destroy(f->vjp), zmlx_kernel_destroy(f->jvp);
}

/* L = sum(sq(x) * w) */
static zmlx_status sq_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  sq_fn *f = ud;
  zmlx_array *y = NULL, *p = NULL;
  zmlx_status st;
  TRY(zmlx_custom_function_call(f->fn, in, 1, &y, 1));
  TRY(zmlx_mul(y, in[1], &p));
  TRY(zmlx_sum(p, NULL, 0, 0, out));
done:
  zmlx_array_release(y), zmlx_array_release(p);
  return st;
}

/* The custom function alone (non-scalar output). */
static zmlx_status sq_only(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  sq_fn *f = ud;
  return zmlx_custom_function_call(f->fn, in, n, out, 1);
}

static void test_custom_function_kernels(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++) {
    sq_fn f;
    sq_init(&f, 1.5, 1);
    int64_t n = 37;
    float *x, *w, *t;
    zmlx_array *in[2] = {rand_array(devs[d], 1, &n, -2, 2, 11, &x),
                         rand_array(devs[d], 1, &n, -1, 1, 12, &w)};
    zmlx_array *tx = rand_array(devs[d], 1, &n, -1, 1, 13, &t);
    double want_v = 0, gx[37], gw[37], want_t = 0, dy[37];
    for (int i = 0; i < 37; i++) {
      want_v += 1.5 * x[i] * x[i] * w[i];
      gx[i] = 3.0 * x[i] * w[i];
      gw[i] = 1.5 * x[i] * x[i];
      want_t += 3.0 * x[i] * t[i] * w[i];
      dy[i] = 3.0 * x[i] * t[i];
    }
    /* reverse mode through the VJP kernel */
    zmlx_array *value = NULL, *grads[2] = {0};
    ZT_OK(zmlx_value_and_grad(sq_loss, &f, in, 2, NULL, 0, &value, grads));
    assert_true(f.vjp_calls == 1);
    zt_assert_close((double[]){item(value)}, &want_v, 1, 1e-4, 1e-5, "custom value");
    check_array(grads[0], gx, 1e-5, 1e-5, "custom dL/dx (VJP kernel)");
    check_array(grads[1], gw, 1e-5, 1e-5, "custom dL/dw");
    zmlx_array_release(value), zmlx_array_release(grads[0]), zmlx_array_release(grads[1]);
    /* forward mode through the JVP kernel, scalar and elementwise */
    zmlx_array *tans[2] = {tx, NULL}, *out = NULL, *out_t = NULL;
    ZT_OK(zmlx_jvp(sq_loss, &f, in, tans, 2, &out, &out_t));
    assert_true(f.jvp_calls == 1);
    zt_assert_close((double[]){item(out_t)}, &want_t, 1, 1e-4, 1e-5, "custom JVP (scalar)");
    zmlx_array_release(out), zmlx_array_release(out_t);
    ZT_OK(zmlx_jvp(sq_only, &f, in, tans, 1, &out, &out_t));
    check_array(out_t, dy, 1e-5, 1e-5, "custom JVP (elementwise)");
    zmlx_array_release(out), zmlx_array_release(out_t);
    /* non-scalar reverse mode: the cotangent is t */
    zmlx_array *g = NULL;
    ZT_OK(zmlx_vjp(sq_only, &f, in, 1, NULL, 0, tx, &out, &g));
    check_array(g, dy, 1e-5, 1e-5, "custom VJP with a cotangent");
    zmlx_array_release(out), zmlx_array_release(g);
    /* the checker agrees, JVP included */
    zmlx_grad_check_report r;
    ZT_OK(zmlx_check_grad(sq_loss, &f, in, 2, 1e-3, 1e-2, &r));
    check_report(&r, 1, "custom function");
    /* without a JVP callback forward mode says so */
    sq_fn nojvp;
    sq_init(&nojvp, 1.5, 0);
    ZT_FAILS(zmlx_jvp(sq_loss, &nojvp, in, tans, 2, &out, &out_t), ZMLX_ERR_UNSUPPORTED,
             "without a JVP");
    assert_null(out);
    ZT_OK(zmlx_check_grad(sq_loss, &nojvp, in, 2, 1e-3, 1e-2, &r));
    assert_false(r.jvp_checked);
    assert_true(r.passed);
    sq_fini(&nojvp);
    /* a wrong VJP fails the check, at input 0 only, and the JVP still agrees */
    sq_fn wrong;
    sq_init_ex(&wrong, 1.5, 1, 1, 0);
    ZT_OK(zmlx_check_grad(sq_loss, &wrong, in, 2, 1e-3, 1e-2, &r));
    assert_false(r.passed);
    assert_false(r.inputs[0].passed);
    assert_true(r.inputs[1].passed);
    assert_true(r.jvp_checked && r.jvp_passed);
    assert_true(fabs(r.inputs[0].analytic - 0.5 * r.inputs[0].numeric) <= 1e-3 * (1 + fabs(r.inputs[0].numeric)));
    sq_fini(&wrong);
    /* a wrong JVP fails the check's JVP only */
    sq_init_ex(&wrong, 1.5, 1, 0, 1);
    ZT_OK(zmlx_check_grad(sq_loss, &wrong, in, 2, 1e-3, 1e-2, &r));
    assert_true(r.inputs[0].passed && r.inputs[1].passed);
    assert_true(r.jvp_checked);
    assert_false(r.jvp_passed);
    assert_false(r.passed);
    sq_fini(&wrong);
    zmlx_array_release(in[0]), zmlx_array_release(in[1]), zmlx_array_release(tx);
    free(x), free(w), free(t);
    sq_fini(&f);
  }
}

/* ----------------------------------------------------------- accumulation */

/* L = sum(x * x + x): x feeds one op twice and another once: 2x + 1. */
static zmlx_status twice_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  zmlx_array *a = NULL, *b = NULL;
  zmlx_status st;
  TRY(zmlx_mul(in[0], in[0], &a));
  TRY(zmlx_add(a, in[0], &b));
  TRY(zmlx_sum(b, NULL, 0, 0, out));
done:
  zmlx_array_release(a), zmlx_array_release(b);
  return st;
}

/* L = sum(a * b) */
static zmlx_status dot_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  zmlx_array *p = NULL;
  zmlx_status st = zmlx_mul(in[0], in[1], &p);
  if (st == ZMLX_OK) st = zmlx_sum(p, NULL, 0, 0, out);
  zmlx_array_release(p);
  return st;
}

static void test_accumulation(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++) {
    int64_t shape[2] = {3, 5};
    float *x;
    zmlx_array *xa = rand_array(devs[d], 2, shape, -2, 2, 21, &x), *g = NULL;
    double want[15];
    for (int i = 0; i < 15; i++) want[i] = 2.0 * x[i] + 1.0;
    ZT_OK(zmlx_grad(twice_loss, NULL, &xa, 1, NULL, 0, &g));
    check_array(g, want, 1e-5, 1e-5, "gradient of x used three times");
    zmlx_array_release(g);
    /* The same array passed twice is two independent inputs. */
    zmlx_array *both[2] = {xa, xa}, *gs[2] = {0};
    for (int i = 0; i < 15; i++) want[i] = x[i];
    ZT_OK(zmlx_grad(dot_loss, NULL, both, 2, NULL, 0, gs));
    check_array(gs[0], want, 0, 0, "d sum(a*b)/da with a = b = x");
    check_array(gs[1], want, 0, 0, "d sum(a*b)/db with a = b = x");
    zmlx_array_release(gs[0]), zmlx_array_release(gs[1]);
    /* argnums picks the second: d sum(a*b)/db = a = x */
    int second = 1;
    ZT_OK(zmlx_grad(dot_loss, NULL, both, 2, &second, 1, gs));
    check_array(gs[0], want, 0, 0, "argnums {1}");
    zmlx_array_release(gs[0]);
    zmlx_array_release(xa);
    free(x);
  }
}

/* ----------------------------------------------------- broadcast reduction */

/* L = sum(a * b + c), a [3,1,4], b [5,4], c [] */
static zmlx_status bcast_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  zmlx_array *p = NULL, *q = NULL;
  zmlx_status st;
  TRY(zmlx_mul(in[0], in[1], &p));
  TRY(zmlx_add(p, in[2], &q));
  TRY(zmlx_sum(q, NULL, 0, 0, out));
done:
  zmlx_array_release(p), zmlx_array_release(q);
  return st;
}

static void test_broadcast_reduction(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++) {
    int64_t sa[3] = {3, 1, 4}, sb[2] = {5, 4};
    float *a, *b, c = 0.25f;
    zmlx_array *in[3] = {rand_array(devs[d], 3, sa, -1, 1, 31, &a),
                         rand_array(devs[d], 2, sb, -1, 1, 32, &b),
                         zt_array(devs[d], ZMLX_F32, 0, NULL, &c)};
    zmlx_array *g[3] = {0};
    ZT_OK(zmlx_grad(bcast_loss, NULL, in, 3, NULL, 0, g));
    double ga[12] = {0}, gb[20] = {0}, gc = 60;
    for (int i = 0; i < 3; i++)
      for (int j = 0; j < 5; j++)
        for (int k = 0; k < 4; k++) {
          ga[i * 4 + k] += b[j * 4 + k];
          gb[j * 4 + k] += a[i * 4 + k];
        }
    assert_shape(g[0], 3, sa, "grad a");
    assert_shape(g[1], 2, sb, "grad b");
    assert_shape(g[2], 0, NULL, "grad c");
    check_array(g[0], ga, 1e-5, 1e-5, "gradient summed over the broadcast axes of a");
    check_array(g[1], gb, 1e-5, 1e-5, "gradient summed over the leading axis of b");
    check_array(g[2], &gc, 1e-4, 1e-6, "gradient of a 0-d input");
    zmlx_grad_check_report r;
    ZT_OK(zmlx_check_grad(bcast_loss, NULL, in, 3, 1e-3, 1e-2, &r));
    check_report(&r, 1, "broadcast mul/add");
    for (int i = 0; i < 3; i++) zmlx_array_release(g[i]), zmlx_array_release(in[i]);
    free(a), free(b);
  }
}

/* 16-bit inputs: gradients keep the dtype; sums happen in f32. */
static void test_half_dtypes(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_dtype dts[2] = {ZMLX_F16, ZMLX_BF16};
  for (int d = 0; d < nd; d++)
    for (int t = 0; t < 2; t++) {
      int64_t sx[2] = {64, 3}, sy[1] = {3};
      float *x = rnd(192, -1, 1, 41), *y = rnd(3, -1, 1, 42);
      zmlx_array *in[2] = {zt_array(devs[d], dts[t], 2, sx, x), zt_array(devs[d], dts[t], 1, sy, y)};
      zmlx_array *g[2] = {0};
      ZT_OK(zmlx_grad(dot_loss, NULL, in, 2, NULL, 0, g));
      assert_int_equal(zmlx_array_dtype(g[0]), dts[t]);
      assert_int_equal(zmlx_array_dtype(g[1]), dts[t]);
      double gy[3] = {0}, gx[192];
      for (int i = 0; i < 64; i++)
        for (int j = 0; j < 3; j++) {
          gy[j] += zt_round_to(dts[t], x[i * 3 + j]);
          gx[i * 3 + j] = zt_round_to(dts[t], y[j]);
        }
      double tol = zt_tolerance(dts[t]);
      check_array(g[0], gx, 0, 0, "16-bit gradient (broadcast operand)");
      check_array(g[1], gy, 2 * tol, 2 * tol, "16-bit gradient summed over 64 rows");
      for (int i = 0; i < 2; i++) zmlx_array_release(g[i]), zmlx_array_release(in[i]);
      free(x), free(y);
    }
}

/* ---------------------------------------------------------- grad of grad */

typedef struct nested {
  const char *expr;
  int order; /* 1: sum(f(x)); k: sum of the (k-1)-th derivative */
} nested;

/* sum(f^(order-1)(x)): each level differentiates the one below it. */
static zmlx_status nested_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  const nested *c = ud;
  zmlx_array *y = NULL;
  zmlx_status st;
  if (c->order == 1) {
    st = apply1(c->expr, in[0], &y);
  } else {
    nested below = {c->expr, c->order - 1};
    st = zmlx_grad(nested_loss, &below, in, 1, NULL, 0, &y);
  }
  if (st == ZMLX_OK) st = zmlx_sum(y, NULL, 0, 0, out);
  zmlx_array_release(y);
  return st;
}

/* The gradient itself (an array): for forward-over-reverse. */
static zmlx_status grad_of(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  return zmlx_grad(nested_loss, ud, in, n, NULL, 0, out);
}

static double second_derivative(int which, double x) {
  double t = tanh(x), s = 1 / (1 + exp(-x));
  switch (which) {
    case 0: return -2 * t * (1 - t * t);
    case 1: return s * (1 - s) * (1 - 2 * s);
    default: return 6 * x;
  }
}

static void test_grad_of_grad(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  const char *exprs[3] = {"tanh(x)", "sigmoid(x)", "x ** 3"};
  for (int d = 0; d < nd; d++) {
    int64_t n = 19;
    float *x;
    zmlx_array *xa = rand_array(devs[d], 1, &n, -2, 2, 51, &x);
    int64_t live = zmlx_array_live_count();
    for (int e = 0; e < 3; e++) {
      nested c = {exprs[e], 2};
      zmlx_array *value = NULL, *g = NULL;
      ZT_OK(zmlx_value_and_grad(nested_loss, &c, &xa, 1, NULL, 0, &value, &g));
      double want[19], want_v = 0;
      for (int i = 0; i < 19; i++) {
        want[i] = second_derivative(e, x[i]);
        double t = tanh(x[i]), s = 1 / (1 + exp(-x[i]));
        want_v += e == 0 ? 1 - t * t : e == 1 ? s * (1 - s) : 3.0 * x[i] * x[i];
      }
      char what[64];
      snprintf(what, sizeof what, "d2/dx2 %s", exprs[e]);
      check_array(g, want, 2e-5, 1e-4, what);
      zt_assert_close((double[]){item(value)}, &want_v, 1, 1e-4, 1e-5, "sum of first derivatives");
      zmlx_array_release(value), zmlx_array_release(g);
      /* The checker differentiates the first derivative (VJP and JVP of a VJP). */
      zmlx_grad_check_report r;
      ZT_OK(zmlx_check_grad(nested_loss, &c, &xa, 1, 1e-3, 1e-2, &r));
      check_report(&r, 1, what);
    }
    /* Third order: (x^3)''' = 6. */
    nested c3 = {"x ** 3", 3};
    zmlx_array *g3 = NULL;
    ZT_OK(zmlx_grad(nested_loss, &c3, &xa, 1, NULL, 0, &g3));
    double six[19];
    for (int i = 0; i < 19; i++) six[i] = 6;
    check_array(g3, six, 1e-4, 1e-5, "d3/dx3 x**3");
    zmlx_array_release(g3);
    /* Forward over reverse (a Hessian-vector product): jvp of the gradient
     * of sum(x**3) along t is 6 x t. */
    float *t;
    zmlx_array *ta = rand_array(devs[d], 1, &n, -1, 1, 52, &t), *o = NULL, *ot = NULL;
    nested first = {"x ** 3", 1};
    ZT_OK(zmlx_jvp(grad_of, &first, &xa, &ta, 1, &o, &ot));
    double hvp[19];
    for (int i = 0; i < 19; i++) hvp[i] = 6.0 * x[i] * t[i];
    check_array(ot, hvp, 1e-4, 1e-4, "jvp of grad (Hessian-vector product)");
    zmlx_array_release(o), zmlx_array_release(ot), zmlx_array_release(ta);
    free(t);
    assert_int_equal(zmlx_array_live_count(), live);
    zmlx_array_release(xa);
    free(x);
  }
}

/* A custom function whose VJP is made of differentiable ops is itself
 * differentiable: softplus with VJP g * sigmoid(x) has second derivative
 * sigmoid'(x). */
static zmlx_status softplus_fwd(void *ud, zmlx_array *const *in, int n, zmlx_array **out, int n_out) {
  (void)ud, (void)n, (void)n_out;
  return apply1("softplus(x)", in[0], &out[0]);
}

static zmlx_status softplus_vjp(void *ud, zmlx_array *const *in, int n, zmlx_array *const *outs,
                                zmlx_array *const *cot, int n_out, zmlx_array **grads) {
  (void)ud, (void)n, (void)outs, (void)n_out;
  zmlx_array *s = NULL;
  zmlx_status st = apply1("sigmoid(x)", in[0], &s);
  if (st == ZMLX_OK) st = zmlx_mul(cot[0], s, &grads[0]);
  zmlx_array_release(s);
  return st;
}

static zmlx_status softplus_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  zmlx_array *y = NULL;
  zmlx_status st = zmlx_custom_function_call(ud, in, 1, &y, 1);
  if (st == ZMLX_OK) st = zmlx_sum(y, NULL, 0, 0, out);
  zmlx_array_release(y);
  return st;
}

static zmlx_status softplus_grad_sum(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  zmlx_array *g = NULL;
  zmlx_status st = zmlx_grad(softplus_loss, ud, in, n, NULL, 0, &g);
  if (st == ZMLX_OK) st = zmlx_sum(g, NULL, 0, 0, out);
  zmlx_array_release(g);
  return st;
}

static void test_custom_function_second_order(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_custom_function *fn = NULL;
  ZT_OK(zmlx_custom_function_create(softplus_fwd, softplus_vjp, NULL, NULL, &fn));
  for (int d = 0; d < nd; d++) {
    int64_t n = 23;
    float *x;
    zmlx_array *xa = rand_array(devs[d], 1, &n, -3, 3, 56, &x), *g = NULL;
    ZT_OK(zmlx_grad(softplus_grad_sum, fn, &xa, 1, NULL, 0, &g));
    double want[23];
    for (int i = 0; i < 23; i++) {
      double s = 1 / (1 + exp(-x[i]));
      want[i] = s * (1 - s);
    }
    check_array(g, want, 1e-5, 1e-4, "second derivative through a custom VJP");
    zmlx_array_release(g), zmlx_array_release(xa);
    free(x);
  }
  zmlx_custom_function_destroy(fn);
}

/* Grad of grad through the library's own rules (mul, sum, matmul, shapes):
 * d/dW of sum(d/dX sum((X @ W) * (X @ W))). */
static zmlx_status mm_sq_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  zmlx_array *z = NULL, *sq = NULL;
  zmlx_status st;
  TRY(zmlx_matmul(in[0], in[1], &z));
  TRY(zmlx_mul(z, z, &sq));
  TRY(zmlx_sum(sq, NULL, 0, 0, out));
done:
  zmlx_array_release(z), zmlx_array_release(sq);
  return st;
}

static zmlx_status mm_grad_sum(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud;
  zmlx_array *g = NULL;
  int first = 0;
  zmlx_status st = zmlx_grad(mm_sq_loss, NULL, in, n, &first, 1, &g);
  if (st == ZMLX_OK) st = zmlx_apply_expr("sin(x)", X, &g, 1, NULL, NULL, 0, out);
  zmlx_array *s = *out;
  *out = NULL;
  if (st == ZMLX_OK) st = zmlx_sum(s, NULL, 0, 0, out);
  zmlx_array_release(s);
  zmlx_array_release(g);
  return st;
}

static void test_grad_of_grad_matmul(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++) {
    int64_t sx[2] = {3, 4}, sw[2] = {4, 2};
    zmlx_array *in[2] = {rand_array(devs[d], 2, sx, -1, 1, 61, NULL),
                         rand_array(devs[d], 2, sw, -1, 1, 62, NULL)};
    zmlx_grad_check_report r;
    ZT_OK(zmlx_check_grad(mm_grad_sum, NULL, in, 2, 1e-3, 1e-2, &r));
    check_report(&r, 1, "grad of grad through matmul");
    zmlx_array_release(in[0]), zmlx_array_release(in[1]);
  }
}

/* ------------------------------------------------------------- shape ops */

enum { S_RESHAPE_T, S_CYCLE_T, S_SLICE, S_CONCAT, S_BROADCAST, S_SUM_AXES, S_MATMUL_BATCH, S_DIV_SUB,
       S_COUNT };

/* Each case ends in a nonlinearity so a wrong gradient cannot hide. */
static zmlx_status shape_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  int which = *(const int *)ud;
  zmlx_array *a = NULL, *b = NULL, *c = NULL;
  zmlx_status st = ZMLX_OK;
  switch (which) {
    case S_RESHAPE_T: { /* x [2,6] -> [3,4] -> transposed [4,3] times w [4,3] */
      int64_t s[2] = {3, 4};
      TRY(zmlx_reshape(in[0], 2, s, &a));
      TRY(zmlx_transpose(a, NULL, &b));
      TRY(zmlx_mul(b, in[1], &c));
      break;
    }
    case S_CYCLE_T: { /* x [2,3,4] transposed by (1, 2, 0) -> [3,4,2] times w: a
                       * permutation that is not its own inverse */
      int perm[3] = {1, 2, 0};
      TRY(zmlx_transpose(in[0], perm, &a));
      TRY(zmlx_mul(a, in[1], &b));
      TRY(apply1("x * x * x", b, &c));
      break;
    }
    case S_SLICE: { /* x [6,5][1::2, ::2], then a slice of a slice */
      int64_t s0[2] = {1, 0}, e0[2] = {6, 5}, st0[2] = {2, 2};
      int64_t s1[2] = {-2, 1}, e1[2] = {3, 3};
      TRY(zmlx_slice(in[0], s0, e0, st0, &a));
      TRY(zmlx_slice(a, s1, e1, NULL, &b));
      TRY(apply1("x * x * x", b, &c));
      break;
    }
    case S_CONCAT: { /* [a [2,3]; b [1,3]] * w [3,3] */
      zmlx_array *parts[2] = {in[0], in[1]};
      TRY(zmlx_concat(parts, 2, -2, &a));
      TRY(zmlx_mul(a, in[2], &b));
      TRY(apply1("sin(x)", b, &c));
      break;
    }
    case S_BROADCAST: { /* x [3,1] -> [2,3,4] times w */
      int64_t s[3] = {2, 3, 4};
      TRY(zmlx_broadcast_to(in[0], 3, s, &a));
      TRY(zmlx_mul(a, in[1], &b));
      TRY(apply1("tanh(x)", b, &c));
      break;
    }
    case S_SUM_AXES: { /* tanh(sum_{axis 1, keepdims}(x) * x) + mean over axes {0, 2} */
      int ax1 = 1, ax02[2] = {0, -1};
      TRY(zmlx_sum(in[0], &ax1, 1, 1, &a));
      TRY(zmlx_mul(a, in[0], &b));
      zmlx_array *t = b;
      b = NULL;
      st = apply1("tanh(x)", t, &b);
      zmlx_array_release(t);
      if (st != ZMLX_OK) goto done;
      TRY(zmlx_mean(b, ax02, 2, 0, &c));
      break;
    }
    case S_MATMUL_BATCH: { /* a [2,3,4] @ b [4,5] (b broadcast over the batch) */
      TRY(zmlx_matmul(in[0], in[1], &a));
      TRY(apply1("tanh(x)", a, &c));
      break;
    }
    default: { /* (x - y) / (y * y + 1) */
      zmlx_array *one = NULL;
      TRY(zmlx_sub(in[0], in[1], &a));
      TRY(zmlx_mul(in[1], in[1], &b));
      float v = 1;
      TRY(zmlx_array_from_host(zmlx_array_device(in[0]), ZMLX_F32, 0, NULL, &v, &one));
      zmlx_array *den = NULL;
      st = zmlx_add(b, one, &den);
      zmlx_array_release(one);
      if (st == ZMLX_OK) st = zmlx_div(a, den, &c);
      zmlx_array_release(den);
      if (st != ZMLX_OK) goto done;
      break;
    }
  }
  TRY(zmlx_sum(c, NULL, 0, 0, out));
done:
  zmlx_array_release(a), zmlx_array_release(b), zmlx_array_release(c);
  return st;
}

static void test_shape_ops(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  struct { int n; int ndim[3]; int64_t shape[3][3]; const char *name; } cases[S_COUNT] = {
      [S_RESHAPE_T] = {2, {2, 2}, {{2, 6}, {4, 3}}, "reshape + transpose"},
      [S_CYCLE_T] = {2, {3, 3}, {{2, 3, 4}, {3, 4, 2}}, "transpose by a 3-cycle"},
      [S_SLICE] = {1, {2}, {{6, 5}}, "strided slices"},
      [S_CONCAT] = {3, {2, 2, 2}, {{2, 3}, {1, 3}, {3, 3}}, "concat"},
      [S_BROADCAST] = {2, {2, 3}, {{3, 1}, {2, 3, 4}}, "broadcast_to"},
      [S_SUM_AXES] = {1, {3}, {{2, 3, 4}}, "sum over an axis + mean over two"},
      [S_MATMUL_BATCH] = {2, {3, 2}, {{2, 3, 4}, {4, 5}}, "batched matmul"},
      [S_DIV_SUB] = {2, {2, 1}, {{4, 3}, {3}}, "sub / div with broadcasting"},
  };
  for (int d = 0; d < nd; d++)
    for (int k = 0; k < S_COUNT; k++) {
      zmlx_array *in[3] = {0};
      for (int i = 0; i < cases[k].n; i++)
        in[i] = rand_array(devs[d], cases[k].ndim[i], cases[k].shape[i], -1, 1,
                           (uint64_t)(100 + 10 * k + i), NULL);
      zmlx_grad_check_report r;
      ZT_OK(zmlx_check_grad(shape_loss, &k, in, cases[k].n, 1e-3, 1e-2, &r));
      check_report(&r, 1, cases[k].name);
      for (int i = 0; i < cases[k].n; i++) zmlx_array_release(in[i]);
    }
}

/* Forward values of the ops against host references. */
static void test_forward_values(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++) {
    /* matmul with odd sizes and a transposed operand */
    int64_t sa[2] = {17, 33}, sb[2] = {5, 33};
    float *a, *b;
    zmlx_array *aa = rand_array(devs[d], 2, sa, -1, 1, 71, &a), *ba = rand_array(devs[d], 2, sb, -1, 1, 72, &b);
    zmlx_array *bt = NULL, *c = NULL;
    ZT_OK(zmlx_transpose(ba, NULL, &bt));
    ZT_OK(zmlx_matmul(aa, bt, &c));
    double *want = malloc(17 * 5 * sizeof *want);
    for (int i = 0; i < 17; i++)
      for (int j = 0; j < 5; j++) {
        want[i * 5 + j] = 0;
        for (int k = 0; k < 33; k++) want[i * 5 + j] += (double)a[i * 33 + k] * b[j * 33 + k];
      }
    check_array(c, want, 1e-4, 1e-4, "matmul 17x33 @ (5x33)^T");
    /* sum over axis 0 and mean over all */
    int ax0 = 0;
    zmlx_array *s = NULL, *m = NULL;
    ZT_OK(zmlx_sum(aa, &ax0, 1, 0, &s));
    ZT_OK(zmlx_mean(aa, NULL, 0, 1, &m));
    int64_t s33[1] = {33}, m11[2] = {1, 1};
    assert_shape(s, 1, s33, "sum axis 0");
    assert_shape(m, 2, m11, "mean keepdims");
    double ws[33] = {0}, wm = 0;
    for (int i = 0; i < 17 * 33; i++) ws[i % 33] += a[i], wm += a[i] / (17.0 * 33.0);
    check_array(s, ws, 1e-5, 1e-5, "sum over axis 0");
    check_array(m, &wm, 1e-6, 1e-5, "mean");
    /* concat along the last axis */
    zmlx_array *parts[2] = {aa, aa}, *cat = NULL;
    ZT_OK(zmlx_concat(parts, 2, 1, &cat));
    double *wc = malloc(17 * 66 * sizeof *wc);
    for (int i = 0; i < 17; i++)
      for (int j = 0; j < 66; j++) wc[i * 66 + j] = a[i * 33 + j % 33];
    check_array(cat, wc, 0, 0, "concat axis 1");
    free(wc), free(want), free(a), free(b);
    zmlx_array *arrs[7] = {aa, ba, bt, c, s, m, cat};
    for (int i = 0; i < 7; i++) zmlx_array_release(arrs[i]);
  }
}

/* ------------------------------------------------------------- GEMM hook */

typedef struct test_gemm {
  zmlx_kernel *k;
  int calls;
} test_gemm;

/* A naive strided GEMM in the dialect: what a library GEMM plugs in as. */
static zmlx_status naive_gemm(void *ctx, zmlx_array *a, zmlx_array *b, zmlx_array *out) {
  test_gemm *g = ctx;
  g->calls++;
  int nd = zmlx_array_ndim(a);
  int64_t m = zmlx_array_shape(a)[nd - 2], n = zmlx_array_shape(b)[nd - 1];
  zmlx_array *in[2] = {a, b};
  zmlx_kernel_call c = {.n_inputs = 2, .n_outputs = 1, .inputs = in, .outputs = &out,
                        .grid = {n, m, zmlx_array_size(out) / (m * n)}, .threadgroup = {8, 8, 1}};
  return zmlx_kernel_launch(g->k, &c);
}

static void test_gemm_hook(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  static const char *const ab[] = {"a", "b"}, *const o[] = {"out"};
  zmlx_kernel_desc desc = {
      .name = "naive_gemm", .input_names = ab, .n_inputs = 2, .output_names = o, .n_outputs = 1,
      .source = "uint col = thread_position_in_grid.x, row = thread_position_in_grid.y;\n"
                "zmlx_i64 z = thread_position_in_grid.z;\n"
                "int nd = a_ndim, M = a_shape[nd - 2], K = a_shape[nd - 1], N = b_shape[nd - 1];\n"
                "zmlx_i64 ab = 0, bb = 0, rem = z;\n"
                "for (int d = nd - 3; d >= 0; d--) {\n"
                "  ab += (rem % a_shape[d]) * a_strides[d];\n"
                "  bb += (rem % a_shape[d]) * b_strides[d];\n"
                "  rem /= a_shape[d];\n"
                "}\n"
                "float acc = 0.0f;\n"
                "for (int k = 0; k < K; k++)\n"
                "  acc += a_load(ab + row * a_strides[nd - 2] + k * a_strides[nd - 1]) *\n"
                "         b_load(bb + k * b_strides[nd - 2] + col * b_strides[nd - 1]);\n"
                "out_store((z * M + row) * N + col, acc);\n"};
  test_gemm g = {0};
  ZT_OK(zmlx_kernel_create(&desc, &g.k));
  ZT_OK(zmlx_set_gemm(naive_gemm, &g));
  for (int d = 0; d < nd; d++) {
    int k = S_MATMUL_BATCH;
    int64_t sa[3] = {2, 3, 4}, sb[2] = {4, 5};
    zmlx_array *in[2] = {rand_array(devs[d], 3, sa, -1, 1, 81, NULL),
                         rand_array(devs[d], 2, sb, -1, 1, 82, NULL)};
    int before = g.calls;
    zmlx_grad_check_report r;
    ZT_OK(zmlx_check_grad(shape_loss, &k, in, 2, 1e-3, 1e-2, &r));
    check_report(&r, 1, "matmul through a plugged-in GEMM");
    assert_true(g.calls - before >= 4); /* forward, dA, dB, JVP terms, evaluations */
    zmlx_array_release(in[0]), zmlx_array_release(in[1]);
  }
  ZT_OK(zmlx_set_gemm(NULL, NULL));
  zmlx_kernel_destroy(g.k);
}

/* ------------------------------------------------------------ two threads */

typedef struct worker {
  zmlx_device *dev;
  zmlx_array *x;     /* shared by both threads: the same handle */
  const float *xh;
  int kind;          /* 0: d/dx sum(tanh(x) * x); 1: d2/dx2 sum(sigmoid(x)) */
  int iterations;
  zmlx_status status;
  char error[512];
  double worst;      /* largest scaled error seen */
} worker;

static zmlx_status tanh_x_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  zmlx_array *t = NULL, *p = NULL;
  zmlx_status st;
  TRY(apply1("tanh(x)", in[0], &t));
  TRY(zmlx_mul(t, in[0], &p));
  TRY(zmlx_sum(p, NULL, 0, 0, out));
done:
  zmlx_array_release(t), zmlx_array_release(p);
  return st;
}

static void *worker_main(void *arg) {
  worker *w = arg;
  nested sig = {"sigmoid(x)", 2};
  int64_t n = zmlx_array_size(w->x);
  for (int it = 0; it < w->iterations && w->status == ZMLX_OK; it++) {
    zmlx_array *g = NULL;
    w->status = w->kind ? zmlx_grad(nested_loss, &sig, &w->x, 1, NULL, 0, &g)
                        : zmlx_grad(tanh_x_loss, NULL, &w->x, 1, NULL, 0, &g);
    if (w->status != ZMLX_OK) {
      snprintf(w->error, sizeof w->error, "%s", zmlx_last_error());
      break;
    }
    double *got = zt_download(g);
    for (int64_t i = 0; i < n; i++) {
      double x = w->xh[i], t = tanh(x), want = w->kind ? second_derivative(1, x) : t + x * (1 - t * t);
      double err = fabs(got[i] - want) / (1e-4 + 1e-4 * fabs(want));
      if (!(err <= w->worst)) w->worst = err;
    }
    free(got);
    zmlx_array_release(g);
  }
  return NULL;
}

static void test_two_threads(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++) {
    int64_t n = 33;
    float *xh;
    zmlx_array *x = rand_array(devs[d], 1, &n, -2, 2, 91, &xh);
    int64_t live = zmlx_array_live_count();
    worker w[2] = {{devs[d], x, xh, 0, 40, ZMLX_OK, "", 0}, {devs[d], x, xh, 1, 40, ZMLX_OK, "", 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
      if (w[i].status != ZMLX_OK) fail_msg("thread %d: %s: %s", i, zmlx_status_string(w[i].status), w[i].error);
      if (!(w[i].worst <= 1.0)) fail_msg("thread %d: gradient off by %g tolerances", i, w[i].worst);
    }
    assert_int_equal(zmlx_array_live_count(), live);
    zmlx_array_release(x);
    free(xh);
  }
}

/* -------------------------------------------------------------- failures */

/* Records a few ops (the tape keeps arrays), then fails. */
static zmlx_status failing_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n, (void)out;
  zmlx_array *a = NULL, *b = NULL;
  zmlx_status st;
  TRY(zmlx_mul(in[0], in[0], &a));
  TRY(apply1("exp(x)", a, &b));
  st = zmlxi_fail(ZMLX_ERR_INVALID_ARG, "deliberate failure in the callback");
done:
  zmlx_array_release(a), zmlx_array_release(b);
  return st;
}

static zmlx_status nonscalar_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  return apply1("x * 2", in[0], out);
}

static zmlx_status silent_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)in, (void)n, (void)out;
  return ZMLX_OK;
}

static zmlx_status bad_vjp(void *ud, zmlx_array *const *in, int n, zmlx_array *const *outs,
                           zmlx_array *const *cot, int n_out, zmlx_array **grads) {
  (void)ud, (void)in, (void)n, (void)outs, (void)cot, (void)n_out, (void)grads;
  return zmlxi_fail(ZMLX_ERR_BACKEND, "deliberate VJP failure");
}

static zmlx_status identity_forward(void *ud, zmlx_array *const *in, int n, zmlx_array **out,
                                    int n_out) {
  (void)ud, (void)n, (void)n_out;
  zmlx_array_retain(in[0]); /* returns its input: autograd must not confuse the two */
  out[0] = in[0];
  return ZMLX_OK;
}

typedef struct fn_holder {
  zmlx_custom_function *fn;
} fn_holder;

static zmlx_status custom_sum_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  fn_holder *h = ud;
  zmlx_array *y = NULL, *p = NULL;
  zmlx_status st;
  TRY(zmlx_custom_function_call(h->fn, in, 1, &y, 1));
  TRY(zmlx_mul(y, in[0], &p));
  TRY(zmlx_sum(p, NULL, 0, 0, out));
done:
  zmlx_array_release(y), zmlx_array_release(p);
  return st;
}

static zmlx_status pass_vjp(void *ud, zmlx_array *const *in, int n, zmlx_array *const *outs,
                            zmlx_array *const *cot, int n_out, zmlx_array **grads) {
  (void)ud, (void)in, (void)n, (void)outs, (void)n_out;
  zmlx_array_retain(cot[0]);
  grads[0] = cot[0];
  return ZMLX_OK;
}

static void test_failures_leave_no_tape(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++) {
    int64_t n = 8;
    float *xh;
    zmlx_array *x = rand_array(devs[d], 1, &n, -1, 1, 95, &xh), *g = NULL, *v = NULL;
    int64_t live = zmlx_array_live_count();
    ZT_FAILS(zmlx_value_and_grad(failing_loss, NULL, &x, 1, NULL, 0, &v, &g),
             ZMLX_ERR_INVALID_ARG, "deliberate failure");
    assert_null(g);
    assert_null(v);
    assert_false(zmlx_grad_is_recording());
    assert_int_equal(zmlx_array_live_count(), live);
    ZT_FAILS(zmlx_grad(nonscalar_fn, NULL, &x, 1, NULL, 0, &g), ZMLX_ERR_SHAPE, "scalar");
    ZT_FAILS(zmlx_grad(silent_fn, NULL, &x, 1, NULL, 0, &g), ZMLX_ERR_INVALID_ARG, "no array");
    /* a failing custom VJP: its status comes back, with the op named */
    fn_holder h = {NULL};
    ZT_OK(zmlx_custom_function_create(identity_forward, bad_vjp, NULL, NULL, &h.fn));
    ZT_FAILS(zmlx_grad(custom_sum_loss, &h, &x, 1, NULL, 0, &g), ZMLX_ERR_BACKEND,
             "deliberate VJP failure");
    assert_true(strstr(zmlx_last_error(), "custom function") != NULL);
    zmlx_custom_function_destroy(h.fn);
    assert_int_equal(zmlx_array_live_count(), live);
    /* a forward that returns its own input: d/dx sum(x * x) = 2x */
    ZT_OK(zmlx_custom_function_create(identity_forward, pass_vjp, NULL, NULL, &h.fn));
    ZT_OK(zmlx_grad(custom_sum_loss, &h, &x, 1, NULL, 0, &g));
    zmlx_custom_function_destroy(h.fn); /* nothing records it any more */
    double want[8];
    for (int i = 0; i < 8; i++) want[i] = 2.0 * xh[i];
    check_array(g, want, 1e-6, 1e-6, "custom identity forward");
    zmlx_array_release(g);
    /* the next grad call works */
    ZT_OK(zmlx_grad(twice_loss, NULL, &x, 1, NULL, 0, &g));
    for (int i = 0; i < 8; i++) want[i] = 2.0 * xh[i] + 1.0;
    check_array(g, want, 1e-5, 1e-5, "grad after failures");
    zmlx_array_release(g);
    assert_int_equal(zmlx_array_live_count(), live);
    zmlx_array_release(x);
    free(xh);
  }
}

static void test_bad_arguments(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  int64_t n = 4;
  zmlx_array *x = rand_array(devs[0], 1, &n, -1, 1, 97, NULL), *g = NULL, *o = NULL;
  int32_t iv[4] = {1, 2, 3, 4};
  zmlx_array *xi = NULL;
  ZT_OK(zmlx_array_from_host(devs[0], ZMLX_I32, 1, &n, iv, &xi));
  ZT_FAILS(zmlx_grad(NULL, NULL, &x, 1, NULL, 0, &g), ZMLX_ERR_NULL_ARG, "fn");
  int bad = 3;
  ZT_FAILS(zmlx_grad(twice_loss, NULL, &x, 1, &bad, 1, &g), ZMLX_ERR_INVALID_ARG, "argnums");
  ZT_FAILS(zmlx_grad(twice_loss, NULL, &xi, 1, NULL, 0, &g), ZMLX_ERR_DTYPE, "differentiable");
  ZT_FAILS(zmlx_grad(twice_loss, NULL, &x, 1, NULL, 0, NULL), ZMLX_ERR_NULL_ARG, "grads");
  int64_t three = 3;
  zmlx_array *c3 = rand_array(devs[0], 1, &three, -1, 1, 98, NULL);
  ZT_FAILS(zmlx_vjp(nonscalar_fn, NULL, &x, 1, NULL, 0, c3, &o, &g), ZMLX_ERR_SHAPE, "cotangent");
  ZT_FAILS(zmlx_jvp(nonscalar_fn, NULL, &x, &c3, 1, &o, &g), ZMLX_ERR_SHAPE, "tangent");
  int64_t s2[2] = {2, 3};
  zmlx_array *m = rand_array(devs[0], 2, s2, -1, 1, 99, NULL);
  ZT_FAILS(zmlx_matmul(m, m, &o), ZMLX_ERR_SHAPE, "matmul");
  int ax = 2;
  ZT_FAILS(zmlx_sum(m, &ax, 1, 0, &o), ZMLX_ERR_INVALID_ARG, "axis 2");
  ZT_FAILS(zmlx_broadcast_to(m, 1, &three, &o), ZMLX_ERR_SHAPE, "broadcast");
  zmlx_array *parts[2] = {m, x};
  ZT_FAILS(zmlx_concat(parts, 2, 0, &o), ZMLX_ERR_SHAPE, "concat");
  ZT_FAILS(zmlx_custom_function_create(identity_forward, NULL, NULL, NULL, NULL), ZMLX_ERR_NULL_ARG, NULL);
  zmlx_array_release(x), zmlx_array_release(xi), zmlx_array_release(c3), zmlx_array_release(m);
}

/* stop_gradient and vjp with a cotangent. */
static zmlx_status stop_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  zmlx_array *s = NULL, *p = NULL;
  zmlx_status st;
  TRY(zmlx_stop_gradient(in[0], &s));
  TRY(zmlx_mul(in[0], s, &p));
  TRY(zmlx_sum(p, NULL, 0, 0, out));
done:
  zmlx_array_release(s), zmlx_array_release(p);
  return st;
}

static zmlx_status tanh_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  return apply1("tanh(x)", in[0], out);
}

static void test_stop_gradient_and_vjp(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++) {
    int64_t s[2] = {4, 5};
    float *x, *c;
    zmlx_array *xa = rand_array(devs[d], 2, s, -2, 2, 111, &x), *ca = rand_array(devs[d], 2, s, -1, 1, 112, &c);
    zmlx_array *g = NULL, *o = NULL;
    double want[20];
    ZT_OK(zmlx_grad(stop_loss, NULL, &xa, 1, NULL, 0, &g));
    for (int i = 0; i < 20; i++) want[i] = x[i];
    check_array(g, want, 1e-6, 1e-6, "stop_gradient blocks one factor");
    zmlx_array_release(g);
    ZT_OK(zmlx_vjp(tanh_fn, NULL, &xa, 1, NULL, 0, ca, &o, &g));
    for (int i = 0; i < 20; i++) want[i] = c[i] * (1 - tanh(x[i]) * tanh(x[i]));
    check_array(g, want, 1e-5, 1e-5, "vjp of tanh with a cotangent");
    for (int i = 0; i < 20; i++) want[i] = tanh(x[i]);
    check_array(o, want, 1e-5, 1e-5, "vjp output");
    zmlx_array_release(g), zmlx_array_release(o);
    zmlx_array *t = NULL;
    ZT_OK(zmlx_jvp(tanh_fn, NULL, &xa, &ca, 1, &o, &t));
    for (int i = 0; i < 20; i++) want[i] = c[i] * (1 - tanh(x[i]) * tanh(x[i]));
    check_array(t, want, 1e-5, 1e-5, "jvp of tanh");
    zmlx_array_release(t), zmlx_array_release(o);
    zmlx_array_release(xa), zmlx_array_release(ca);
    free(x), free(c);
  }
}

/* ------------------------------------------------- zmlx_apply of user ops */

/* L = sum(op(x, y; alpha)) for a zmlx_elementwise op made by the caller. */
static zmlx_status user_op_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  zmlx_op *op = ud;
  double alpha = 0.75;
  zmlx_array *y = NULL;
  zmlx_status st = zmlx_apply(op, in, n, &alpha, &y);
  if (st == ZMLX_OK) st = zmlx_sum(y, NULL, 0, 0, out);
  zmlx_array_release(y);
  return st;
}

static zmlx_status user_op_grad_sum(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  zmlx_array *g[2] = {0};
  zmlx_status st = zmlx_grad(user_op_loss, ud, in, n, NULL, 0, g);
  if (st == ZMLX_OK) st = zmlx_sum(g[0], NULL, 0, 0, out);
  zmlx_array_release(g[0]), zmlx_array_release(g[1]);
  return st;
}

static void test_apply_user_op(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  static const char *const xy[] = {"x", "y"}, *const alpha[] = {"alpha"};
  zmlx_op *op = NULL;
  ZT_OK(zmlx_elementwise("x * sigmoid(alpha * y) + y * y", xy, 2, alpha, 1, &op));
  for (int d = 0; d < nd; d++) {
    int64_t sx[2] = {3, 4}, sy[1] = {4};
    float *x, *y;
    zmlx_array *in[2] = {rand_array(devs[d], 2, sx, -1, 1, 131, &x),
                         rand_array(devs[d], 1, sy, -1, 1, 132, &y)};
    zmlx_array *g[2] = {0};
    ZT_OK(zmlx_grad(user_op_loss, op, in, 2, NULL, 0, g));
    double gx[12], gy[4] = {0};
    for (int i = 0; i < 3; i++)
      for (int j = 0; j < 4; j++) {
        double s = 1 / (1 + exp(-0.75 * y[j]));
        gx[i * 4 + j] = s;
        gy[j] += x[i * 4 + j] * 0.75 * s * (1 - s) + 2.0 * y[j];
      }
    check_array(g[0], gx, 1e-5, 1e-5, "zmlx_apply: d/dx");
    check_array(g[1], gy, 1e-5, 1e-5, "zmlx_apply: d/dy (broadcast, summed)");
    zmlx_array_release(g[0]), zmlx_array_release(g[1]);
    zmlx_grad_check_report r;
    ZT_OK(zmlx_check_grad(user_op_loss, op, in, 2, 1e-3, 1e-2, &r));
    check_report(&r, 1, "zmlx_apply of a user op");
    /* Grad of grad: sum(dL/dx) = sum_ij sigmoid(0.75 y_j), whose gradient is
     * 0 for x and 3 * 0.75 s_j (1 - s_j) for y_j. */
    ZT_OK(zmlx_grad(user_op_grad_sum, op, in, 2, NULL, 0, g));
    double g2x[12] = {0}, g2y[4];
    for (int j = 0; j < 4; j++) {
      double s = 1 / (1 + exp(-0.75 * y[j]));
      g2y[j] = 3 * 0.75 * s * (1 - s);
    }
    check_array(g[0], g2x, 1e-6, 0, "zmlx_apply: second derivative in x");
    check_array(g[1], g2y, 1e-5, 1e-4, "zmlx_apply: second derivative in y");
    zmlx_array_release(g[0]), zmlx_array_release(g[1]);
    zmlx_array_release(in[0]), zmlx_array_release(in[1]);
    free(x), free(y);
  }
  zmlx_op_destroy(op);
}

/* ------------------------------------------------------------------ leaks */

/* L = sum(tanh(x * w + b)) */
static zmlx_status small_chain(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  zmlx_array *a = NULL, *b = NULL, *t = NULL;
  zmlx_status st;
  TRY(zmlx_mul(in[0], in[1], &a));
  TRY(zmlx_add(a, in[2], &b));
  TRY(apply1("tanh(x)", b, &t));
  TRY(zmlx_sum(t, NULL, 0, 0, out));
done:
  zmlx_array_release(a), zmlx_array_release(b), zmlx_array_release(t);
  return st;
}

static void test_no_leak_10000_steps(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  const char *env = getenv("ZMLX_AD_LEAK_STEPS");
  int steps = env && *env ? atoi(env) : 10000;
  int64_t n = 4;
  zmlx_array *in[3] = {rand_array(devs[0], 1, &n, -1, 1, 121, NULL),
                       rand_array(devs[0], 1, &n, -1, 1, 122, NULL),
                       rand_array(devs[0], 1, &n, -1, 1, 123, NULL)};
  zmlx_array *v = NULL, *g[3] = {0};
  ZT_OK(zmlx_value_and_grad(small_chain, NULL, in, 3, NULL, 0, &v, g)); /* warm the caches */
  double first = item(g[0]);
  zmlx_array_release(v);
  for (int i = 0; i < 3; i++) zmlx_array_release(g[i]);
  int64_t live = zmlx_array_live_count();
  for (int s = 0; s < steps; s++) {
    ZT_OK(zmlx_value_and_grad(small_chain, NULL, in, 3, NULL, 0, &v, g));
    if (s == steps - 1) assert_true(item(g[0]) == first); /* deterministic */
    zmlx_array_release(v);
    for (int i = 0; i < 3; i++) zmlx_array_release(g[i]);
    if (zmlx_array_live_count() != live)
      fail_msg("step %d: %lld live arrays, %lld at the start", s,
               (long long)zmlx_array_live_count(), (long long)live);
  }
  for (int i = 0; i < 3; i++) zmlx_array_release(in[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mlp_chain),
      cmocka_unit_test(test_custom_function_kernels),
      cmocka_unit_test(test_accumulation),
      cmocka_unit_test(test_broadcast_reduction),
      cmocka_unit_test(test_half_dtypes),
      cmocka_unit_test(test_grad_of_grad),
      cmocka_unit_test(test_grad_of_grad_matmul),
      cmocka_unit_test(test_custom_function_second_order),
      cmocka_unit_test(test_shape_ops),
      cmocka_unit_test(test_forward_values),
      cmocka_unit_test(test_gemm_hook),
      cmocka_unit_test(test_two_threads),
      cmocka_unit_test(test_failures_leave_no_tape),
      cmocka_unit_test(test_bad_arguments),
      cmocka_unit_test(test_stop_gradient_and_vjp),
      cmocka_unit_test(test_apply_user_op),
      cmocka_unit_test(test_no_leak_10000_steps),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
