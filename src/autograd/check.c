/* The gradient checker: analytic VJP and JVP against central finite
 * differences computed in f64 on the host. */
#include "autograd/ad.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ host copies */

static double to_f64(zmlx_dtype dt, const unsigned char *p) {
  switch (dt) {
    case ZMLX_F16: return zmlx_f16_to_f32(*(const uint16_t *)p);
    case ZMLX_BF16: return zmlx_bf16_to_f32(*(const uint16_t *)p);
    case ZMLX_F32: return *(const float *)p;
    default: return NAN; /* only differentiable dtypes come here */
  }
}

static void from_f64(zmlx_dtype dt, double v, unsigned char *p) {
  switch (dt) {
    case ZMLX_F16: *(uint16_t *)p = zmlx_f32_to_f16((float)v); break;
    case ZMLX_BF16: *(uint16_t *)p = zmlx_f32_to_bf16((float)v); break;
    case ZMLX_F32: *(float *)p = (float)v; break;
    default: break;
  }
}

/* The value a store of v in dtype dt keeps. */
static double round_to(zmlx_dtype dt, double v) {
  unsigned char b[8];
  from_f64(dt, v, b);
  return to_f64(dt, b);
}

static zmlx_status download(zmlx_array *a, double **out) {
  size_t n = (size_t)a->size, es = zmlx_dtype_size(a->dtype);
  unsigned char *raw = malloc(n * es + 1);
  *out = malloc(n * sizeof **out + 1);
  zmlx_status st = raw && *out ? zmlx_array_to_host(a, raw, n * es)
                               : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "check_grad: out of host memory");
  for (size_t i = 0; i < n && st == ZMLX_OK; i++) (*out)[i] = to_f64(a->dtype, raw + i * es);
  free(raw);
  if (st != ZMLX_OK) {
    free(*out);
    *out = NULL;
  }
  return st;
}

static zmlx_status upload(const zmlx_array *like, const double *v, zmlx_array **out) {
  size_t n = (size_t)like->size, es = zmlx_dtype_size(like->dtype);
  unsigned char *raw = malloc(n * es + 1);
  if (!raw) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "check_grad: out of host memory");
  for (size_t i = 0; i < n; i++) from_f64(like->dtype, v[i], raw + i * es);
  zmlx_status st = zmlx_array_from_host(like->buffer->device, like->dtype, like->ndim,
                                        like->shape, raw, out);
  free(raw);
  return st;
}

/* ------------------------------------------------------------- evaluation */

typedef struct checker {
  zmlx_ad_fn fn;
  void *user_data;
  zmlx_array **args; /* the inputs, one of them swapped while perturbing */
  int n;
} checker;

static zmlx_status eval_scalar(checker *c, double *out) {
  zmlx_array *y = NULL;
  zmlx_status st = c->fn(c->user_data, c->args, c->n, &y);
  if (st == ZMLX_OK && !y) st = zmlxi_fail(ZMLX_ERR_INVALID_ARG, "check_grad: fn returned no array");
  if (st == ZMLX_OK && y->size != 1)
    st = zmlxi_fail(ZMLX_ERR_SHAPE, "check_grad: fn must return one element, not %lld",
                   (long long)y->size);
  if (st == ZMLX_OK) st = zmlx_array_item(y, 0, out);
  zmlx_array_release(y);
  return st;
}

/* fn with input i replaced by the host values x. */
static zmlx_status eval_at(checker *c, int i, const zmlx_array *like, const double *x,
                           double *out) {
  zmlx_array *p = NULL, *saved = c->args[i];
  ZMLX_CHECK(upload(like, x, &p));
  c->args[i] = p;
  zmlx_status st = eval_scalar(c, out);
  c->args[i] = saved;
  zmlx_array_release(p);
  return st;
}

/* Central difference of element j, with the step the dtype really took. */
static zmlx_status numeric_partial(checker *c, int i, double *x, int64_t j, double eps,
                                   double *out) {
  zmlx_array *like = c->args[i];
  double x0 = x[j], xp = round_to(like->dtype, x0 + eps), xm = round_to(like->dtype, x0 - eps);
  if (xp == xm)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "check_grad: eps %g vanishes at %g in %s", eps, x0,
                     zmlx_dtype_name(like->dtype));
  double fp = 0, fm = 0;
  x[j] = xp;
  zmlx_status st = eval_at(c, i, like, x, &fp);
  x[j] = xm;
  if (st == ZMLX_OK) st = eval_at(c, i, like, x, &fm);
  x[j] = x0;
  *out = (fp - fm) / (xp - xm);
  return st;
}

/* Compare one input's analytic gradient element by element; *numeric
 * gets the finite-difference gradient and *analytic the analytic one (for
 * the JVP check). */
static zmlx_status check_input(checker *c, int i, zmlx_array *grad, double eps, double tol,
                               zmlx_grad_check_input *r, double **numeric, double **analytic) {
  double *x = NULL, *g = NULL, worst = -1;
  zmlx_status st = download(c->args[i], &x);
  if (st == ZMLX_OK) st = download(grad, &g);
  *analytic = g;
  if (st == ZMLX_OK && !(*numeric = calloc((size_t)c->args[i]->size + 1, sizeof **numeric)))
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "check_grad: out of host memory");
  r->checked = 1;
  for (int64_t j = 0; j < c->args[i]->size && st == ZMLX_OK; j++) {
    double num = 0;
    st = numeric_partial(c, i, x, j, eps, &num);
    (*numeric)[j] = num;
    double err = fabs(g[j] - num), scaled = err / fmax(1.0, fabs(num));
    if (!(err <= r->max_abs_err)) r->max_abs_err = err; /* NaN propagates */
    r->max_rel_err = fmax(r->max_rel_err, err / fmax(fabs(num), 1e-12));
    if (!(scaled <= worst)) {
      worst = scaled;
      r->worst_index = j;
      r->analytic = g[j];
      r->numeric = num;
    }
  }
  r->passed = st == ZMLX_OK && worst <= tol;
  free(x);
  return st;
}

/* ------------------------------------------------------------------- JVP */

/* A fixed pseudo-random direction in [-1, 1], rounded to the input dtype. */
static void direction(const zmlx_array *a, uint64_t *state, double *v) {
  for (int64_t j = 0; j < a->size; j++) {
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    v[j] = round_to(a->dtype, (double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  }
}

/* Unit roundoff of a float dtype. */
static double unit_roundoff(zmlx_dtype dt) {
  return dt == ZMLX_BF16 ? 0x1p-8 : dt == ZMLX_F16 ? 0x1p-11 : 0x1p-24;
}

/* Directional derivatives along v of the gradients checked: from the
 * analytic (VJP) ones, their terms' magnitude, from the finite-difference
 * ones, and how far the element checks let the latter be off. */
typedef struct jvp_wants {
  double analytic, analytic_terms, numeric, numeric_slack, roundoff;
} jvp_wants;

static void jvp_accumulate(jvp_wants *w, const double *g, const double *num, const double *v,
                           int64_t n, double tol, zmlx_dtype dt) {
  for (int64_t j = 0; j < n; j++) {
    w->analytic += g[j] * v[j];
    w->analytic_terms += fabs(g[j] * v[j]);
    w->numeric += num[j] * v[j];
    w->numeric_slack += tol * fmax(1.0, fabs(num[j])) * fabs(v[j]);
  }
  w->roundoff = fmax(w->roundoff, unit_roundoff(dt));
}

/* The JVP along a direction v. When every gradient passed its element
 * check, against the analytic gradients' directional derivative (sum_ij
 * g_ij v_ij: tight, both being exact up to rounding) and against the
 * finite-difference one within the slack the element checks allowed
 * (sum_ij tol max(1, |numeric_ij|) |v_ij|); else (a wrong VJP) against the
 * latter alone, so the report still says whether the JVP is right. The
 * finite-difference sum alone within tol max(1, |sum|) failed where the
 * terms cancel and each carries its difference noise (x^3's second
 * derivative at some seeds). */
static zmlx_status check_jvp(checker *c, double **numeric, double **analytic, double tol,
                             int grads_passed, zmlx_grad_check_report *r) {
  zmlx_array *tan[ZMLX_GRAD_CHECK_MAX_INPUTS] = {0}, *y = NULL, *t = NULL;
  uint64_t state = 0x9E3779B97F4A7C15ull;
  jvp_wants w = {0};
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < c->n && st == ZMLX_OK; i++) {
    if (!numeric[i] || !analytic[i]) continue;
    double *v = malloc((size_t)c->args[i]->size * sizeof *v + 1);
    if (!v) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "check_grad: out of host memory");
    if (st == ZMLX_OK) direction(c->args[i], &state, v);
    if (st == ZMLX_OK)
      jvp_accumulate(&w, analytic[i], numeric[i], v, c->args[i]->size, tol, c->args[i]->dtype);
    if (st == ZMLX_OK) st = upload(c->args[i], v, &tan[i]);
    free(v);
  }
  if (st == ZMLX_OK) st = zmlx_jvp(c->fn, c->user_data, c->args, tan, c->n, &y, &t);
  if (st == ZMLX_OK) st = zmlx_array_item(t, 0, &r->jvp_analytic);
  if (st == ZMLX_OK) {
    r->jvp_checked = 1;
    r->jvp_numeric = w.numeric;
    const double num_err = fabs(r->jvp_analytic - w.numeric);
    const double num_bound = tol * fmax(1.0, fabs(w.numeric)) + w.numeric_slack;
    if (grads_passed) {
      r->jvp_abs_err = fabs(r->jvp_analytic - w.analytic);
      const double tight = tol * fmax(1.0, fabs(w.analytic)) + 8 * w.roundoff * w.analytic_terms;
      r->jvp_passed = r->jvp_abs_err <= tight && num_err <= num_bound;
    } else {
      r->jvp_abs_err = num_err;
      r->jvp_passed = num_err <= num_bound;
    }
  } else if (st == ZMLX_ERR_UNSUPPORTED) {
    st = ZMLX_OK; /* some op has no forward rule: reported as not checked */
  }
  zmlxi_ad_release_all(tan, c->n);
  zmlx_array_release(y);
  zmlx_array_release(t);
  return st;
}

/* ----------------------------------------------------------------- entry */

static zmlx_status check_args(zmlx_ad_fn fn, zmlx_array *const *inputs, int n,
                              zmlx_grad_check_report *report) {
  ZMLX_REQUIRE_ARG(fn);
  ZMLX_REQUIRE_ARG(report);
  memset(report, 0, sizeof *report);
  if (n < 1 || n > ZMLX_GRAD_CHECK_MAX_INPUTS)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "check_grad: %d inputs (1 to %d)", n,
                     ZMLX_GRAD_CHECK_MAX_INPUTS);
  ZMLX_REQUIRE_ARG(inputs);
  for (int i = 0; i < n; i++)
    if (!inputs[i]) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "check_grad: input %d is NULL", i);
  report->n_inputs = n;
  return ZMLX_OK;
}

zmlx_status zmlx_check_grad(zmlx_ad_fn fn, void *user_data, zmlx_array *const *inputs,
                            int n_inputs, double eps, double tol,
                            zmlx_grad_check_report *report) {
  ZMLX_CHECK(check_args(fn, inputs, n_inputs, report));
  if (!(eps > 0)) eps = 1e-3;
  if (!(tol > 0)) tol = 1e-2;
  zmlx_array *args[ZMLX_GRAD_CHECK_MAX_INPUTS], *grads[ZMLX_GRAD_CHECK_MAX_INPUTS] = {0};
  double *numeric[ZMLX_GRAD_CHECK_MAX_INPUTS] = {0}, *analytic[ZMLX_GRAD_CHECK_MAX_INPUTS] = {0};
  int argnums[ZMLX_GRAD_CHECK_MAX_INPUTS], nf = 0;
  for (int i = 0; i < n_inputs; i++) {
    args[i] = inputs[i];
    if (zmlxi_ad_is_float(inputs[i]->dtype)) argnums[nf++] = i;
  }
  checker c = {fn, user_data, args, n_inputs};
  zmlx_status st = zmlx_grad(fn, user_data, inputs, n_inputs, argnums, nf, grads);
  for (int k = 0; k < nf && st == ZMLX_OK; k++)
    st = check_input(&c, argnums[k], grads[k], eps, tol, &report->inputs[argnums[k]],
                     &numeric[argnums[k]], &analytic[argnums[k]]);
  int grads_passed = 1;
  for (int k = 0; k < nf; k++) grads_passed &= report->inputs[argnums[k]].passed;
  if (st == ZMLX_OK) st = check_jvp(&c, numeric, analytic, tol, grads_passed, report);
  report->passed = st == ZMLX_OK && (!report->jvp_checked || report->jvp_passed);
  for (int k = 0; k < nf; k++) report->passed &= report->inputs[argnums[k]].passed;
  zmlxi_ad_release_all(grads, nf);
  for (int i = 0; i < n_inputs; i++) free(numeric[i]), free(analytic[i]);
  return st;
}
