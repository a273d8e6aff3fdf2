/* The verifier's shared helpers (check_util.h): host random values,
 * rounding to a dtype, upload / download through f64, error metrics, the
 * tolerance table, row emission, bad-input expectations and the poisoning
 * of the allocator's pool. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/check_util.h"
#include "runtime/internal.h"

/* --------------------------------------------------------- host values */

uint64_t zck_next(uint64_t *s) {
  uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  *s = x;
  return x;
}

double zck_uniform(uint64_t *s, double lo, double hi) {
  return lo + (hi - lo) * ((double)(zck_next(s) >> 11) / 9007199254740992.0);
}

double zck_round(zmlx_dtype dt, double v) {
  switch (dt) {
    case ZMLX_F16: return zmlx_f16_to_f32(zmlx_f32_to_f16((float)v));
    case ZMLX_BF16: return zmlx_bf16_to_f32(zmlx_f32_to_bf16((float)v));
    case ZMLX_F32: return (float)v;
    default: return v;
  }
}

/* ------------------------------------------------------ input families */

const char *zck_family_name(zck_family f) {
  static const char *const names[ZCK_FAMILIES] = {"", " offset", " tiny", " ties", " inf/nan"};
  return f >= 0 && f < ZCK_FAMILIES ? names[f] : " ?";
}

void zck_fill(zck_family f, double *v, int64_t rows, int64_t cols, double lo, double hi,
              zmlx_dtype dt, uint64_t *rng) {
  /* even rows draw from {-1, -0, +0}, odd ones from {-0, +0, 1}: the row's
   * max, or its min, is a tie of signed zeros */
  static const double ties[2][3] = {{-1.0, -0.0, 0.0}, {-0.0, 0.0, 1.0}};
  for (int64_t r = 0; r < rows; r++) {
    double offset = 0.0;
    if (f == ZCK_OFFSET)
      offset = (zck_uniform(rng, 0, 1) < 0.5 ? -1.0 : 1.0) * zck_uniform(rng, 100, 1000);
    for (int64_t j = 0; j < cols; j++) {
      double x = zck_uniform(rng, lo, hi);
      if (f == ZCK_OFFSET) x += offset;
      if (f == ZCK_TINY) x *= 1e-3;
      if (f == ZCK_TIES) x = ties[r & 1][(int)zck_uniform(rng, 0, 3) % 3];
      if (f == ZCK_SPECIAL) {
        const double u = zck_uniform(rng, 0, 1);
        if (u < 0.03) x = INFINITY;
        else if (u < 0.06) x = -INFINITY;
        else if (u < 0.09) x = NAN;
      }
      v[r * cols + j] = zck_round(dt, x);
    }
  }
}

/* ------------------------------------------------------ device arrays */

static int64_t shape_size(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

void zck_store(zmlx_dtype dt, void *buf, int64_t i, double v) {
  switch (dt) {
    case ZMLX_F32: ((float *)buf)[i] = (float)v; break;
    case ZMLX_F64: ((double *)buf)[i] = v; break;
    case ZMLX_F16: ((uint16_t *)buf)[i] = zmlx_f32_to_f16((float)v); break;
    case ZMLX_BF16: ((uint16_t *)buf)[i] = zmlx_f32_to_bf16((float)v); break;
    case ZMLX_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case ZMLX_U32: ((uint32_t *)buf)[i] = (uint32_t)v; break;
    case ZMLX_I64: ((int64_t *)buf)[i] = (int64_t)v; break;
    case ZMLX_I8: ((int8_t *)buf)[i] = (int8_t)v; break;
    case ZMLX_U8: ((uint8_t *)buf)[i] = (uint8_t)v; break;
    case ZMLX_BOOL: ((uint8_t *)buf)[i] = v != 0; break;
    default: ((float *)buf)[i] = (float)v; break;
  }
}

double zck_load(zmlx_dtype dt, const void *buf, int64_t i) {
  switch (dt) {
    case ZMLX_F32: return ((const float *)buf)[i];
    case ZMLX_F64: return ((const double *)buf)[i];
    case ZMLX_F16: return zmlx_f16_to_f32(((const uint16_t *)buf)[i]);
    case ZMLX_BF16: return zmlx_bf16_to_f32(((const uint16_t *)buf)[i]);
    case ZMLX_I32: return ((const int32_t *)buf)[i];
    case ZMLX_U32: return ((const uint32_t *)buf)[i];
    case ZMLX_I64: return (double)((const int64_t *)buf)[i];
    case ZMLX_I8: return ((const int8_t *)buf)[i];
    case ZMLX_U8: case ZMLX_BOOL: return ((const uint8_t *)buf)[i];
    default: return NAN;
  }
}

zmlx_status zck_upload(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                       const double *v, zmlx_array **out) {
  int64_t n = shape_size(ndim, shape);
  void *buf = malloc((size_t)(n > 0 ? n : 1) * zmlx_dtype_size(dt));
  if (!buf) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "check: out of host memory");
  for (int64_t i = 0; i < n; i++) zck_store(dt, buf, i, v[i]);
  zmlx_status st = zmlx_array_from_host(dev, dt, ndim, shape, buf, out);
  free(buf);
  return st;
}

zmlx_status zck_random(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                       double lo, double hi, uint64_t *rng, double *v, zmlx_array **out) {
  int64_t n = shape_size(ndim, shape);
  for (int64_t i = 0; i < n; i++) v[i] = zck_round(dt, zck_uniform(rng, lo, hi));
  return zck_upload(dev, dt, ndim, shape, v, out);
}

zmlx_status zck_download(zmlx_array *a, double **v) {
  *v = NULL;
  int64_t n = zmlx_array_size(a);
  zmlx_dtype dt = zmlx_array_dtype(a);
  size_t es = zmlx_dtype_size(dt);
  void *buf = malloc((size_t)(n > 0 ? n : 1) * es);
  double *d = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
  zmlx_status st = buf && d ? zmlx_array_to_host(a, buf, (size_t)n * es)
                            : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "check: out of host memory");
  for (int64_t i = 0; st == ZMLX_OK && i < n; i++) d[i] = zck_load(dt, buf, i);
  free(buf);
  if (st != ZMLX_OK) {
    free(d);
    return st;
  }
  *v = d;
  return ZMLX_OK;
}

void zck_poison_pool(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape) {
  zmlx_array *p = NULL;
  if (zmlx_array_full(dev, dt, ndim, shape, NAN, &p) == ZMLX_OK) {
    zmlx_device_synchronize(dev);
    zmlx_array_release(p);
  }
}

zmlx_status zck_weighted_sum(zmlx_array *y, zmlx_array *w, zmlx_array **out) {
  zmlx_array *m = NULL;
  zmlx_status st = zmlx_mul(y, w, &m);
  if (st == ZMLX_OK) st = zmlx_sum(m, NULL, 0, 0, out);
  zmlx_array_release(m);
  return st;
}

/* ------------------------------------------------------------- errors */

/* |got - want| where equal non-finite values count as exact. */
static double abs_err(double g, double w) {
  if (isnan(w)) return isnan(g) ? 0.0 : INFINITY;
  if (isinf(w)) return g == w ? 0.0 : INFINITY;
  if (!isfinite(g)) return INFINITY;
  return fabs(g - w);
}

/* --------------------------------------------------------- tolerances */

double zck_fd_tol(void) { return 1e-2; }

/* The derived bounds. A result stored in dtype dt is rounded once at the
 * end (inputs are exact: the reference sees the rounded values), which
 * costs u(dt) |want|, the unit roundoff: 2^-24 (f32), 2^-11 (f16), 2^-8
 * (bf16). Before that the kernel works in f32, and its error is counted in
 * units of u32 = 2^-24 from the bounds the OpenCL 1.2 full profile allows:
 * exp / log 3 ulp, tanh 5, erf 16, pow 16, sqrt 3, rsqrt 2, division 2.5,
 * + - * 0.5 (CUDA's IEEE functions are within them; its __expf in the
 * softmax family, 2 + 1.16 |x| ulp, is within ROW's K times the row span).
 * A sum of n terms adds 4 sqrt(n) u32: the probabilistic bound of Higham
 * and Mary (SIAM J. Sci. Comput. 2019), which holds with probability near
 * one for independent rounding errors (the worst case, n u32, is never
 * reached by tree or blocked sums). zck_bound_of counts it relative to the
 * result, for sums of terms of one sign (softmax's exp terms, a norm's
 * squares); zck_bound_sum counts it against the terms' size, for sums that
 * cancel. The pointwise f32 error applies to the values the result comes
 * from (scale), not to the result, so it is the absolute term. Results in
 * f16's subnormal range (below 2^-14) are off by up to half its spacing,
 * 2^-25, whatever their size: the floor.
 *   K32: f32 ulps of one element's computation, before its sums. */
static const double K32[ZCK_TOL_KINDS] = {
    [ZCK_TOL_ROW] = 8,          /* exp 3, division 2.5, the max subtraction exact */
    [ZCK_TOL_ELEMENTWISE] = 32, /* two functions of up to 16 ulp (erf, pow) */
    [ZCK_TOL_NORM] = 8,         /* rsqrt 2 or sqrt 3 + division 2.5, the scale 1 */
    [ZCK_TOL_NORM_GRAD] = 16,   /* the forward's 8 twice over (two row sums) */
};

double zck_unit_roundoff(zmlx_dtype dt) {
  return dt == ZMLX_F16 ? 0x1p-11 : dt == ZMLX_BF16 ? 0x1p-8 : 0x1p-24;
}

zck_bound zck_bound_of(zck_tol_kind kind, zmlx_dtype dt, double scale, int64_t n) {
  const double u32 = 0x1p-24;
  double k = kind >= 0 && kind < ZCK_TOL_KINDS ? K32[kind] : 0;
  zck_bound b;
  b.rtol = zck_unit_roundoff(dt) + (k + 4 * sqrt((double)(n > 1 ? n : 1))) * u32;
  b.atol = k * u32 * (scale > 1 ? scale : 1);
  b.floor = dt == ZMLX_F16 ? 0x1p-25 : 0;
  return b;
}

zck_bound zck_bound_sum(zck_tol_kind kind, zmlx_dtype dt, int64_t n) {
  const double u32 = 0x1p-24, k = kind >= 0 && kind < ZCK_TOL_KINDS ? K32[kind] : 0;
  zck_bound b;
  b.atol = (k + 4 * sqrt((double)(n > 1 ? n : 1))) * u32; /* per unit of the terms */
  b.rtol = zck_unit_roundoff(dt) + k * u32; /* the last f32 steps, the rounding to dt */
  b.floor = dt == ZMLX_F16 ? 0x1p-25 : 0;
  return b;
}

zck_bound zck_bound_times(zck_bound b, double factor) {
  b.atol *= factor;
  b.rtol *= factor;
  b.floor *= factor;
  return b;
}

/* err / tol, with 0 / 0 = 0 (an exact result where nothing is allowed). */
static double ratio(double err, double tol) {
  if (err == 0) return 0;
  return tol > 0 ? err / tol : INFINITY;
}

static int within(const double *got, const double *want, const double *scale, int64_t n,
                  zck_bound b, double *err, double *tol) {
  for (int64_t i = 0; i < n; i++) {
    double d = abs_err(got[i], want[i]);
    double s = !scale ? 1 : isfinite(scale[i]) ? fabs(scale[i]) : 0;
    double t = b.atol * s + b.rtol * (isfinite(want[i]) ? fabs(want[i]) : 0) + b.floor;
    if (*err < 0 || ratio(d, t) > ratio(*err, *tol)) { /* the first, or a worse one */
      *err = d;
      *tol = t;
    }
  }
  if (*err < 0) *err = *tol = 0; /* no elements */
  return *err <= *tol;
}

int zck_within_acc(const double *got, const double *want, const double *scale, int64_t n,
                   zck_bound b, double *err, double *tol) {
  return within(got, want, scale, n, b, err, tol);
}

int zck_within(const double *got, const double *want, int64_t n, zck_bound b, double *err,
               double *tol) {
  *err = -1;
  return within(got, want, NULL, n, b, err, tol);
}

int zck_within_scaled(const double *got, const double *want, const double *scale, int64_t n,
                      zck_bound b, double *err, double *tol) {
  *err = -1;
  return within(got, want, scale, n, b, err, tol);
}

/* --------------------------------------------------------------- rows */

void zck_emit(const zmlx_check_opts *o, const char *op, const char *what, zmlx_dtype dt,
              const char *shape, double err, double tol, int pass) {
  zmlx_check_row r;
  memset(&r, 0, sizeof r);
  r.op = op;
  r.what = what;
  r.backend = zmlx_device_backend(o->device);
  r.dtype = dt;
  snprintf(r.shape, sizeof r.shape, "%.95s", shape);
  r.max_err = err;
  r.tol = tol;
  r.pass = pass;
  if (o->emit) o->emit(o->ctx, &r);
}

void zck_emit_fail(const zmlx_check_opts *o, const char *op, const char *what, zmlx_dtype dt,
                   const char *shape, zmlx_status st) {
  char s[256];
  snprintf(s, sizeof s, "%.60s: %s %.60s", shape, zmlx_status_string(st), zmlx_last_error());
  zck_emit(o, op, what, dt, s, INFINITY, 0, 0);
}

void zck_expect(const zmlx_check_opts *o, const char *op, const char *what, zmlx_status got,
                zmlx_array *to_release, zmlx_status want, const char *needle) {
  const char *msg = zmlx_last_error();
  int said = got == ZMLX_OK || (needle ? strstr(msg, needle) != NULL : msg[0] != '\0');
  int pass = got == want && said;
  zmlx_array_release(to_release);
  char s[96];
  snprintf(s, sizeof s, "-> %s", zmlx_status_string(got));
  zck_emit(o, op, what, o->dtype, s, pass ? 0 : 1, 0, pass);
  zmlx_clear_error();
}

void zck_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape, const char *extra) {
  size_t k = 0;
  int w = snprintf(buf, cap, "[");
  k = w > 0 ? (size_t)w : 0;
  for (int i = 0; i < ndim && k < cap; i++) {
    w = snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (w > 0) k += (size_t)w;
  }
  if (k < cap) snprintf(buf + k, cap - k, "]%s%s", extra ? " " : "", extra ? extra : "");
}
