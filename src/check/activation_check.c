/* `zmlx check` and `zmlx bench` cases of src/ops/activation.c: forward against
 * an f64 reference on fresh random inputs with poisoned outputs, gradients,
 * bad input, and the LLM shapes the benchmark times. Part of the check
 * library (the CLI and the tests link it; libzmlx does not). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "autograd/ad.h"
#include "check/check_util.h"
#include "ops/activation.h"

/* ---------------------------------------------------------- f64 reference */

static double ref_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static double ref_softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }

/* f(x) and f'(x) in f64 (subgradients as the engine documents them). */
static double act_ref(act_kind k, double x, double alpha, double *d) {
  double s, t, u, y, dd;
  const double c = sqrt(2.0 / M_PI), a3 = 0.044715;
  switch (k) {
    case A_EXP: y = exp(x); dd = y; break;
    case A_LOG: y = log(x); dd = 1.0 / x; break;
    case A_TANH: y = tanh(x); dd = 1 - y * y; break;
    case A_SIGMOID: y = ref_sigmoid(x); dd = y * (1 - y); break;
    case A_RELU: y = x > 0 ? x : 0; dd = x > 0; break;
    case A_SILU: s = ref_sigmoid(x); y = x * s; dd = s + x * s * (1 - s); break;
    case A_GELU_TANH: /* 0.5 (1 + tanh(u)) = sigmoid(2u): no cancellation in f64 either */
      s = ref_sigmoid(2 * c * (x + a3 * x * x * x));
      y = x * s;
      dd = s + x * s * (1 - s) * 2 * c * (1 + 3 * a3 * x * x);
      break;
    case A_GELU: /* 0.5 (1 + erf(x / sqrt 2)) = 0.5 erfc(-x / sqrt 2) */
      y = 0.5 * x * erfc(-x / sqrt(2.0));
      dd = 0.5 * erfc(-x / sqrt(2.0)) + x * exp(-0.5 * x * x) / sqrt(2 * M_PI);
      break;
    case A_SOFTPLUS: y = ref_softplus(x); dd = ref_sigmoid(x); break;
    case A_MISH:
      t = tanh(ref_softplus(x));
      y = x * t;
      dd = t + x * (1 - t * t) * ref_sigmoid(x);
      break;
    case A_ELU:
      u = x > 0 ? 0 : expm1(x);
      y = x > 0 ? x : alpha * u;
      dd = x > 0 ? 1 : alpha * exp(x);
      break;
    default: y = dd = NAN; break;
  }
  if (d) *d = dd;
  return y;
}

/* ------------------------------------------------------------------ check */

enum { M_FWD, M_FD, M_VJP, M_JVP, M_GRAD2 };
static const char *const MODE_NAME[] = {"fwd", "grad (fd)", "grad (vjp)", "jvp", "grad2 (fd)"};

/* An input value that exercises the function: log on (0, 1100), exp on
 * [-10, 10] (finite in f16), the rest mostly on [-6, 6] with a quarter on
 * [-30, 30] (saturation, overflow of naive forms). Finite differences stay
 * off the kinks of relu and elu and where the f32 loss would lose digits. */
static double act_sample(act_kind k, int mode, uint64_t *rng) {
  double u = zck_uniform(rng, 0, 1), v = zck_uniform(rng, 0, 1);
  int fd = mode == M_FD || mode == M_GRAD2;
  if (k == A_LOG) return fd ? 0.3 + 2.7 * u : exp(-9 + 16 * u);
  if (k == A_EXP) return fd ? -2 + 4 * u : -10 + 20 * u;
  if (fd) return (v < 0.5 ? -1 : 1) * (0.05 + 2.95 * u);
  return v < 0.75 ? -6 + 12 * u : -30 + 60 * u;
}

typedef struct act_ctx {
  act_kind k;
  double alpha;
  zmlx_array *w; /* weights of the scalar loss, or NULL */
} act_ctx;

static zmlx_status act_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  act_ctx *c = ud;
  return zmlxi_activation_call(c->k, in[0], c->alpha, out);
}

/* sum(w * f(x)) */
static zmlx_status act_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  act_ctx *c = ud;
  zmlx_array *y = NULL;
  ZMLX_CHECK(act_fn(ud, in, n, &y));
  zmlx_status st = zck_weighted_sum(y, c->w, out);
  zmlx_array_release(y);
  return st;
}

static zmlx_status act_sum(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  zmlx_array *y = NULL;
  ZMLX_CHECK(act_fn(ud, in, n, &y));
  zmlx_status st = zmlx_sum(y, NULL, 0, 0, out);
  zmlx_array_release(y);
  return st;
}

/* sum(w * f'(x)), f' by a grad recorded inside the outer one: its gradient
 * is w * f''(x), so checking it checks the engine's second derivatives. */
static zmlx_status act_loss2(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  act_ctx *c = ud;
  act_ctx inner = {c->k, c->alpha, NULL};
  zmlx_array *g = NULL;
  ZMLX_CHECK(zmlx_grad(act_sum, &inner, in, n, NULL, 0, &g));
  zmlx_status st = zck_weighted_sum(g, c->w, out);
  zmlx_array_release(g);
  return st;
}

/* x of `shape` holding v (C order); transposed: a transposed view of a
 * dense [shape[1], shape[0]] array (2-D only), so the kernel runs strided. */
static zmlx_status make_input(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                              int transposed, const double *v, zmlx_array **out) {
  if (!transposed) return zck_upload(dev, dt, ndim, shape, v, out);
  int64_t r = shape[0], c = shape[1], bs[2] = {c, r};
  double *b = malloc(sizeof(double) * (size_t)(r * c > 0 ? r * c : 1));
  if (!b) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int64_t i = 0; i < r; i++)
    for (int64_t j = 0; j < c; j++) b[j * r + i] = v[i * c + j];
  zmlx_array *base = NULL;
  zmlx_status st = zck_upload(dev, dt, 2, bs, b, &base);
  free(b);
  if (st == ZMLX_OK) st = zmlx_array_transpose(base, NULL, out);
  zmlx_array_release(base);
  return st;
}

static double pick_alpha(act_kind k, uint64_t *rng) {
  static const double alphas[] = {1.0, 0.5, 1.6732632423543772 /* SELU's */};
  return k == A_ELU ? alphas[(int)(zck_uniform(rng, 0, 1) * 3) % 3] : 0;
}

static void act_case(const zmlx_check_opts *o, act_kind k, int ndim, const int64_t *shape,
                     int transposed, int mode, uint64_t *rng) {
  zmlx_device *dev = o->device;
  int fd = mode == M_FD || mode == M_GRAD2;
  zmlx_dtype dt = fd ? ZMLX_F32 : o->dtype;
  const char *op = zmlxi_activation_name(k), *what = MODE_NAME[mode];
  double alpha = pick_alpha(k, rng);
  char name[96], sh[64];
  zmlxi_shape_str(sh, sizeof sh, ndim, shape);
  if (k == A_ELU) snprintf(name, sizeof name, "%s%s alpha=%.4g", sh, transposed ? "^T" : "", alpha);
  else snprintf(name, sizeof name, "%s%s", sh, transposed ? "^T view" : "");
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  size_t cap = (size_t)(n > 0 ? n : 1);
  double *x = malloc(sizeof(double) * cap), *g = malloc(sizeof(double) * cap);
  double *want = malloc(sizeof(double) * cap), *got = NULL;
  zmlx_array *ax = NULL, *aw = NULL, *y = NULL, *r = NULL;
  zmlx_status st = ZMLX_OK;
  if (!x || !g || !want) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  for (int64_t i = 0; i < n; i++) x[i] = act_sample(k, mode, rng);
  if (!fd && k != A_EXP && k != A_LOG) { /* the tails, and the kink where it is defined */
    if (n >= 2) x[0] = -30, x[1] = 30;
    if (n >= 3 && mode != M_FWD) x[2] = 0;
  }
  for (int64_t i = 0; i < n; i++) x[i] = zck_round(dt, x[i]);
  for (int64_t i = 0; i < n; i++) g[i] = zck_round(dt, 2 * zck_uniform(rng, 0, 1) - 1);
  st = make_input(dev, dt, ndim, shape, transposed, x, &ax);
  if (st == ZMLX_OK && mode != M_FWD) st = zck_upload(dev, dt, ndim, shape, g, &aw);
  if (st != ZMLX_OK) goto done;
  act_ctx c = {k, alpha, NULL};
  if (mode == M_FWD) {
    zck_poison_pool(dev, dt, ndim, shape);
    st = zmlxi_activation_call(k, ax, alpha, &y);
    if (st == ZMLX_OK && (y->dtype != dt || y->ndim != ndim ||
                          memcmp(y->shape, shape, sizeof(int64_t) * (size_t)ndim) != 0))
      st = zmlxi_fail(ZMLX_ERR_INTERNAL, "result has dtype %s and a different shape or rank",
                     zmlx_dtype_name(y->dtype));
    if (st == ZMLX_OK) st = zck_download(y, &got);
    if (st != ZMLX_OK) goto done;
    for (int64_t i = 0; i < n; i++) want[i] = act_ref(k, x[i], alpha, NULL);
  } else if (fd) {
    c.w = aw;
    zmlx_grad_check_report rep;
    st = zmlx_check_grad(mode == M_FD ? act_loss : act_loss2, &c, &ax, 1, 1e-3, zck_fd_tol(), &rep);
    if (st != ZMLX_OK) goto done;
    double e = rep.inputs[0].max_abs_err;
    if (rep.jvp_checked) e = fmax(e, rep.jvp_abs_err);
    zck_emit(o, op, what, dt, name, e, zck_fd_tol(), rep.passed);
    goto done;
  } else {
    int argn = 0;
    if (mode == M_VJP) st = zmlx_vjp(act_fn, &c, &ax, 1, &argn, 1, aw, &y, &r);
    else st = zmlx_jvp(act_fn, &c, &ax, &aw, 1, &y, &r);
    if (st == ZMLX_OK) st = zck_download(r, &got);
    if (st != ZMLX_OK) goto done;
    for (int64_t i = 0; i < n; i++) {
      double d;
      act_ref(k, x[i], alpha, &d);
      want[i] = g[i] * d;
    }
  }
  {
    /* pointwise: the f32 error follows each element's own input */
    double e, t;
    int ok = zck_within_scaled(got, want, x, n, zck_bound_of(ZCK_TOL_ELEMENTWISE, dt, 1, 1), &e, &t);
    zck_emit(o, op, what, dt, name, e, t, ok);
  }
done:
  if (st != ZMLX_OK) zck_emit_fail(o, op, what, dt, name, st);
  free(x); free(g); free(want); free(got);
  zmlx_array_release(ax); zmlx_array_release(aw); zmlx_array_release(y);
  zmlx_array_release(r);
  zmlx_clear_error();
}

/* Non-finite and extreme inputs: NaN in gives NaN out (relu: 0, C's
 * fmax), infinities and overflow as the f64 formula rounded to the dtype. */
static void act_specials(const zmlx_check_opts *o, act_kind k) {
  static const double common[] = {NAN, INFINITY, 200, -200, 1, -1, 0};
  static const double logv[] = {NAN, -1, 0, -0.0, INFINITY, 1, 1e-4};
  static const double expv[] = {NAN, -INFINITY, INFINITY, 100, -200, 0};
  const double *v = k == A_LOG ? logv : k == A_EXP ? expv : common;
  int64_t n = k == A_LOG ? 7 : k == A_EXP ? 6 : 7;
  double xs[8];
  memcpy(xs, v, sizeof(double) * (size_t)n);
  if (k == A_TANH || k == A_SIGMOID || k == A_RELU || k == A_SOFTPLUS || k == A_ELU)
    xs[n++] = -INFINITY; /* a clear limit; for silu, gelu, mish -inf * 0 is NaN */
  zmlx_dtype dt = o->dtype;
  const char *op = zmlxi_activation_name(k);
  zmlx_array *ax = NULL, *y = NULL;
  double *got = NULL, alpha = 1.0, e = 0;
  zmlx_status st = zck_upload(o->device, dt, 1, &n, xs, &ax);
  if (st == ZMLX_OK) st = zmlxi_activation_call(k, ax, alpha, &y);
  if (st == ZMLX_OK) st = zck_download(y, &got);
  if (st == ZMLX_OK) {
    double want[8], t;
    for (int64_t i = 0; i < n; i++) {
      xs[i] = zck_round(dt, xs[i]);
      want[i] = zck_round(dt, act_ref(k, xs[i], alpha, NULL));
      if (k == A_RELU && isnan(xs[i])) want[i] = 0;
    }
    int ok = zck_within_scaled(got, want, xs, n, zck_bound_of(ZCK_TOL_ELEMENTWISE, dt, 1, 1), &e, &t);
    char label[96];
    size_t len = 0;
    for (int64_t i = 0; i < n && len < sizeof label; i++)
      len += (size_t)snprintf(label + len, sizeof label - len, "%s%g", i ? " " : "", xs[i]);
    zck_emit(o, op, "specials", dt, label, e, t, ok);
  } else {
    zck_emit_fail(o, op, "specials", dt, "specials", st);
  }
  free(got);
  zmlx_array_release(ax);
  zmlx_array_release(y);
  zmlx_clear_error();
}

static void act_bad(const zmlx_check_opts *o, act_kind k) {
  zmlx_array *a = NULL, *ai = NULL, *y = NULL;
  int64_t sh[2] = {2, 3};
  const char *op = zmlxi_activation_name(k);
  if (zmlx_array_zeros(o->device, o->dtype, 2, sh, &a) != ZMLX_OK ||
      zmlx_array_zeros(o->device, ZMLX_I32, 2, sh, &ai) != ZMLX_OK) {
    zck_emit_fail(o, op, "bad input", o->dtype, "setup", ZMLX_ERR_BACKEND);
    goto done;
  }
  zck_expect(o, op, "bad: dtype i32", zmlxi_activation_call(k, ai, 1.0, &y), y, ZMLX_ERR_DTYPE, "i32");
  y = NULL;
  zck_expect(o, op, "bad: x NULL", zmlxi_activation_call(k, NULL, 1.0, &y), y, ZMLX_ERR_NULL_ARG, "'x'");
  y = NULL;
  zck_expect(o, op, "bad: out NULL", zmlxi_activation_call(k, a, 1.0, NULL), NULL, ZMLX_ERR_NULL_ARG,
                 "'out'");
  if (k == A_ELU) {
    zck_expect(o, op, "bad: alpha nan", zmlx_elu(a, NAN, &y), y, ZMLX_ERR_INVALID_ARG,
                   "alpha");
    y = NULL;
  }
done:
  zmlx_array_release(a);
  zmlx_array_release(ai);
}

typedef struct act_shape {
  int ndim;
  int64_t s[4];
  int transposed;
} act_shape;

static zmlx_status act_check(const zmlx_check_opts *o, act_kind k) {
  ZMLX_REQUIRE_ARG(o);
  ZMLX_REQUIRE_ARG(o->device);
  uint64_t rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x616374ULL + (uint64_t)k * 104729;
  if (!rng) rng = 1;
  /* Time goes to compiling (PoCL: ~0.3-1 s a kernel), not to sizes: quick
   * compiles the flat, vector and VJP kernels of each op and dtype; the
   * strided kernels (views) and the JVP and second-order ones are full only. */
  static const act_shape quick[] = {{2, {1, 1}, 0}, {2, {3, 7}, 0}, {2, {1, 1000}, 0},
                                    {2, {2, 4097}, 0}};
  static const act_shape full[] = {
      {2, {1, 1}, 0},   {2, {1, 7}, 0},       {2, {5, 7}, 0},        {2, {1, 64}, 0},
      {2, {33, 64}, 0}, {2, {1, 1000}, 0},    {2, {16, 1000}, 0},    {2, {3, 4097}, 0},
      {2, {1, 32768}, 0}, {2, {8, 32768}, 0}, {2, {64, 77}, 1},      {4, {2, 3, 5, 7}, 0},
      {0, {0}, 0},      {2, {0, 5}, 0}};
  const act_shape *s = o->quick ? quick : full;
  int ns = o->quick ? (int)(sizeof quick / sizeof *quick) : (int)(sizeof full / sizeof *full);
  for (int i = 0; i < ns; i++) act_case(o, k, s[i].ndim, s[i].s, s[i].transposed, M_FWD, &rng);
  act_specials(o, k);
  static const int64_t small[2] = {3, 5}, mid[2] = {3, 7}, big[2] = {33, 130};
  if (o->dtype == ZMLX_F32) act_case(o, k, 2, small, 0, M_FD, &rng);
  act_case(o, k, 2, mid, 0, M_VJP, &rng);
  if (!o->quick) {
    act_case(o, k, 2, big, 0, M_VJP, &rng);
    act_case(o, k, 2, big, 1, M_VJP, &rng);
    act_case(o, k, 2, big, 0, M_JVP, &rng);
    if (o->dtype == ZMLX_F32) act_case(o, k, 2, small, 0, M_GRAD2, &rng);
  }
  act_bad(o, k);
  return ZMLX_OK;
}

#define ACT_CHECK(fn, kind) \
  static zmlx_status fn(const zmlx_check_opts *o) { return act_check(o, kind); }
ACT_CHECK(check_exp, A_EXP)
ACT_CHECK(check_log, A_LOG)
ACT_CHECK(check_tanh, A_TANH)
ACT_CHECK(check_sigmoid, A_SIGMOID)
ACT_CHECK(check_relu, A_RELU)
ACT_CHECK(check_silu, A_SILU)
ACT_CHECK(check_gelu_tanh, A_GELU_TANH)
ACT_CHECK(check_gelu, A_GELU)
ACT_CHECK(check_softplus, A_SOFTPLUS)
ACT_CHECK(check_mish, A_MISH)
ACT_CHECK(check_elu, A_ELU)
#undef ACT_CHECK

const zmlx_catalog_op zck_catalog_activation_ops[] = {
    {"exp", check_exp},         {"log", check_log},
    {"tanh", check_tanh},       {"sigmoid", check_sigmoid},
    {"relu", check_relu},       {"silu", check_silu},
    {"gelu_tanh", check_gelu_tanh}, {"gelu", check_gelu},
    {"softplus", check_softplus}, {"mish", check_mish},
    {"elu", check_elu},         {0},
};

/* ------------------------------------------------------------------ bench */

/* bf16 [16384, 14336] (an MLP's hidden activations: 16k tokens of a 14336
 * FFN), read once and written once; a CPU device (OpenCL) times a 64th of
 * the rows (zck_bench_rows). */
typedef struct act_bench {
  act_kind k;
  zmlx_array *x;
} act_bench;

static zmlx_status act_bench_run(void *p) {
  act_bench *b = p;
  zmlx_array *y = NULL;
  zmlx_status st = zmlxi_activation_call(b->k, b->x, 1.0, &y);
  zmlx_array_release(y);
  return st;
}

static zmlx_status act_bench_case(const zmlx_bench_opts *o, act_kind k) {
  ZMLX_REQUIRE_ARG(o);
  int64_t shape[2] = {zck_bench_rows(o, 16384), 14336};
  act_bench b = {k, NULL};
  double bytes = 2.0 * 2.0 * (double)shape[0] * (double)shape[1];
  zmlx_status st = zck_bench_random(o->device, ZMLX_BF16, 2, shape, 41 + (uint64_t)k, &b.x);
  if (st == ZMLX_OK)
    st = zck_bench_time_emit(o, zmlxi_activation_name(k), ZMLX_BF16, 2, shape, bytes, act_bench_run, &b);
  zmlx_array_release(b.x);
  return st;
}

static zmlx_status bench_silu(const zmlx_bench_opts *o) { return act_bench_case(o, A_SILU); }
static zmlx_status bench_gelu_tanh(const zmlx_bench_opts *o) {
  return act_bench_case(o, A_GELU_TANH);
}
static zmlx_status bench_gelu(const zmlx_bench_opts *o) { return act_bench_case(o, A_GELU); }
static zmlx_status bench_exp(const zmlx_bench_opts *o) { return act_bench_case(o, A_EXP); }

const zmlx_catalog_bench zck_catalog_activation_bench[] = {
    {"silu", bench_silu},
    {"gelu_tanh", bench_gelu_tanh},
    {"gelu", bench_gelu},
    {"exp", bench_exp},
    {0},
};
