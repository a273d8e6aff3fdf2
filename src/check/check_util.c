/* Check helpers the catalog families share (declared in check_util.h):
 * host random values, rounding to a dtype, upload / download through f64,
 * error metrics, tolerances, row emission, bad-input expectations and the
 * poisoning of the allocator's pool. Two sets remain (zmlx_opck_*, first
 * written for softmax, and zmlx_rg_*, for RoPE); they live here together
 * so that a merge can happen in one file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/check_util.h"
#include "runtime/internal.h"

/* |got - want| where equal non-finite values count as exact. */
static double abs_err(double g, double w) {
  if (isnan(w)) return isnan(g) ? 0.0 : INFINITY;
  if (isinf(w)) return g == w ? 0.0 : INFINITY;
  if (!isfinite(g)) return INFINITY;
  return fabs(g - w);
}

uint64_t zmlx_opck_next(uint64_t *s) {
  uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  *s = x;
  return x;
}

double zmlx_opck_uniform(uint64_t *s, double lo, double hi) {
  return lo + (hi - lo) * ((double)(zmlx_opck_next(s) >> 11) / 9007199254740992.0);
}

double zmlx_opck_round(zmlx_dtype dt, double v) {
  switch (dt) {
    case ZMLX_F16: return zmlx_f16_to_f32(zmlx_f32_to_f16((float)v));
    case ZMLX_BF16: return zmlx_bf16_to_f32(zmlx_f32_to_bf16((float)v));
    case ZMLX_F32: return (float)v;
    default: return v;
  }
}

zmlx_status zmlx_opck_upload(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                             const double *v, zmlx_array **out) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  size_t es = zmlx_dtype_size(dt);
  void *buf = malloc((size_t)(n ? n : 1) * es);
  if (!buf) return zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "check: out of host memory");
  for (int64_t i = 0; i < n; i++) {
    switch (dt) {
      case ZMLX_F32: ((float *)buf)[i] = (float)v[i]; break;
      case ZMLX_F16: ((uint16_t *)buf)[i] = zmlx_f32_to_f16((float)v[i]); break;
      case ZMLX_BF16: ((uint16_t *)buf)[i] = zmlx_f32_to_bf16((float)v[i]); break;
      case ZMLX_I32: ((int32_t *)buf)[i] = (int32_t)v[i]; break;
      case ZMLX_I64: ((int64_t *)buf)[i] = (int64_t)v[i]; break;
      case ZMLX_BOOL: ((uint8_t *)buf)[i] = v[i] != 0; break;
      default: ((float *)buf)[i] = (float)v[i]; break;
    }
  }
  zmlx_status st = zmlx_array_from_host(dev, dt, ndim, shape, buf, out);
  free(buf);
  return st;
}

/* Device array -> f64 host values (through f32: every float dtype the ops
 * use is exact in f32). Caller frees; NULL on failure. */
double *zmlx_opck_download(zmlx_array *a) {
  zmlx_array *f32 = NULL;
  if (zmlx_array_astype(a, ZMLX_F32, &f32) != ZMLX_OK) return NULL;
  int64_t n = zmlx_array_size(f32);
  float *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
  double *d = malloc((size_t)(n ? n : 1) * sizeof *d);
  if (tmp && d && zmlx_array_to_host(f32, tmp, (size_t)n * sizeof *tmp) == ZMLX_OK) {
    for (int64_t i = 0; i < n; i++) d[i] = tmp[i];
  } else {
    free(d);
    d = NULL;
  }
  free(tmp);
  zmlx_array_release(f32);
  return d;
}

/* max |got - want| / (1 + |want|); NaN / inf where want is finite fail. */
double zmlx_opck_err_rel1(const double *got, const double *want, int64_t n) {
  double e = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = abs_err(got[i], want[i]);
    if (isfinite(want[i])) d /= 1.0 + fabs(want[i]);
    if (!(d <= e)) e = d;
  }
  return e;
}

/* max |got - want| / max(max terms, 1e-6): for a result summed from terms
 * that may cancel, measured against the size of the terms (the scale its
 * rounding error has) rather than against the result. */
double zmlx_opck_err_terms(const double *got, const double *want, const double *terms,
                           int64_t n) {
  double mt = 1e-6, e = 0;
  for (int64_t i = 0; i < n; i++)
    if (isfinite(terms[i]) && fabs(terms[i]) > mt) mt = fabs(terms[i]);
  for (int64_t i = 0; i < n; i++) {
    double d = abs_err(got[i], want[i]) / mt;
    if (!(d <= e)) e = d;
  }
  return e;
}

/* max |got - want| / max(max |want|, 1e-6): for gradients, whose entries
 * may all be small. */
double zmlx_opck_err_relmax(const double *got, const double *want, int64_t n) {
  return zmlx_opck_err_terms(got, want, want, n);
}

double zmlx_opck_tol(zmlx_dtype dt) {
  switch (dt) {
    case ZMLX_F16: return 4e-3;
    case ZMLX_BF16: return 2e-2;
    default: return 5e-5;
  }
}

void zmlx_opck_emit(const zmlx_check_opts *o, const char *op, const char *what, zmlx_dtype dt,
                    const char *shape, double err, double tol, int pass) {
  zmlx_check_row r;
  memset(&r, 0, sizeof r);
  r.op = op;
  r.what = what;
  r.backend = zmlx_device_backend(o->device);
  r.dtype = dt;
  snprintf(r.shape, sizeof r.shape, "%s", shape);
  r.max_err = err;
  r.tol = tol;
  r.pass = pass;
  if (o->emit) o->emit(o->ctx, &r);
}

void zmlx_opck_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape, const char *extra) {
  size_t k = 0;
  int w = snprintf(buf, cap, "[");
  k = w > 0 ? (size_t)w : 0;
  for (int i = 0; i < ndim && k < cap; i++) {
    w = snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (w > 0) k += (size_t)w;
  }
  if (k < cap) {
    w = snprintf(buf + k, cap - k, "]%s%s", extra ? " " : "", extra ? extra : "");
    (void)w;
  }
}

void zmlx_opck_bad(const zmlx_check_opts *o, const char *op, const char *what, zmlx_status got,
                   zmlx_status want) {
  zmlx_check_row r;
  memset(&r, 0, sizeof r);
  r.op = op;
  r.what = "bad input";
  r.backend = zmlx_device_backend(o->device);
  r.dtype = o->dtype;
  snprintf(r.shape, sizeof r.shape, "%s -> %s", what, zmlx_status_string(got));
  r.max_err = got == want ? 0.0 : 1.0;
  r.tol = 0.0;
  r.pass = got == want && (got == ZMLX_OK || zmlx_last_error()[0] != '\0');
  zmlx_clear_error();
  if (o->emit) o->emit(o->ctx, &r);
}

double zmlx_rg_uniform(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) * (1.0 / 9007199254740992.0);
}

double zmlx_rg_round(zmlx_dtype dt, double v) {
  if (dt == ZMLX_F16) return zmlx_f16_to_f32(zmlx_f32_to_f16((float)v));
  if (dt == ZMLX_BF16) return zmlx_bf16_to_f32(zmlx_f32_to_bf16((float)v));
  return (float)v;
}

/* Random values in [lo, hi) rounded to dt (written into v) and uploaded. */
zmlx_status zmlx_rg_random(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                           double lo, double hi, uint64_t *rng, double *v, zmlx_array **out) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  for (int64_t i = 0; i < n; i++) v[i] = zmlx_rg_round(dt, lo + (hi - lo) * zmlx_rg_uniform(rng));
  return zmlx_rg_upload(dev, dt, ndim, shape, v, out);
}

zmlx_status zmlx_rg_upload(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                           const double *v, zmlx_array **out) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  size_t es = zmlx_dtype_size(dt);
  void *buf = malloc((size_t)(n > 0 ? n : 1) * es);
  if (!buf) return zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int64_t i = 0; i < n; i++) {
    if (dt == ZMLX_F32) ((float *)buf)[i] = (float)v[i];
    else if (dt == ZMLX_F16) ((uint16_t *)buf)[i] = zmlx_f32_to_f16((float)v[i]);
    else if (dt == ZMLX_BF16) ((uint16_t *)buf)[i] = zmlx_f32_to_bf16((float)v[i]);
    else if (dt == ZMLX_I32) ((int32_t *)buf)[i] = (int32_t)v[i];
  }
  zmlx_status st = zmlx_array_from_host(dev, dt, ndim, shape, buf, out);
  free(buf);
  return st;
}

/* a -> f64 host values (n = its size); caller frees *v. */
zmlx_status zmlx_rg_download(zmlx_array *a, double **v) {
  int64_t n = a->size;
  size_t es = zmlx_dtype_size(a->dtype);
  void *buf = malloc((size_t)(n > 0 ? n : 1) * es);
  double *d = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
  if (!buf || !d) {
    free(buf);
    free(d);
    return zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  }
  zmlx_status st = zmlx_array_to_host(a, buf, (size_t)n * es);
  for (int64_t i = 0; st == ZMLX_OK && i < n; i++) {
    if (a->dtype == ZMLX_F32) d[i] = ((float *)buf)[i];
    else if (a->dtype == ZMLX_F16) d[i] = zmlx_f16_to_f32(((uint16_t *)buf)[i]);
    else if (a->dtype == ZMLX_BF16) d[i] = zmlx_bf16_to_f32(((uint16_t *)buf)[i]);
    else d[i] = NAN;
  }
  free(buf);
  if (st != ZMLX_OK) {
    free(d);
    return st;
  }
  *v = d;
  return ZMLX_OK;
}

/* max |got - want| / (1 + |want|); NaN in got gives +inf. */
double zmlx_rg_err(const double *got, const double *want, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs(got[i] - want[i]) / (1 + fabs(want[i]));
    if (isnan(e)) return INFINITY;
    if (e > m) m = e;
  }
  return m;
}

void zmlx_rg_emit(const zmlx_check_opts *o, const char *op, const char *what, zmlx_dtype dt,
                  const char *shape, double err, double tol, int pass) {
  zmlx_check_row r;
  memset(&r, 0, sizeof r);
  r.op = op;
  r.what = what;
  r.backend = zmlx_device_backend(o->device);
  r.dtype = dt;
  snprintf(r.shape, sizeof r.shape, "%.95s", shape); /* rows keep 95 chars of a case name */
  r.max_err = err;
  r.tol = tol;
  r.pass = pass;
  if (o->emit) o->emit(o->ctx, &r);
}

/* A failed case (the op or the check's plumbing returned an error). */
void zmlx_rg_emit_fail(const zmlx_check_opts *o, const char *op, const char *what, zmlx_dtype dt,
                       const char *shape, zmlx_status st) {
  char s[256];
  snprintf(s, sizeof s, "%.60s: %s %.60s", shape, zmlx_status_string(st), zmlx_last_error());
  zmlx_rg_emit(o, op, what, dt, s, INFINITY, 0, 0);
}

/* Bad-input case: pass when the call returned `want` and the message names `needle`. */
void zmlx_rg_expect(const zmlx_check_opts *o, const char *op, const char *what, zmlx_status got,
                    zmlx_array *to_release, zmlx_status want, const char *needle) {
  int pass = got == want && strstr(zmlx_last_error(), needle) != NULL;
  zmlx_array_release(to_release);
  char s[96];
  snprintf(s, sizeof s, "-> %s", zmlx_status_string(got));
  zmlx_rg_emit(o, op, what, o->dtype, s, pass ? 0 : 1, 0, pass);
  zmlx_clear_error();
}

double zmlx_rg_tol(zmlx_dtype dt) {
  return dt == ZMLX_F32 ? 1e-4 : dt == ZMLX_F16 ? 3e-3 : 2e-2;
}

/* Poison `n` elements of device memory so the next allocation of that size
 * probably starts as NaN (for ops whose output the op allocates). */
void zmlx_rg_poison_pool(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape) {
  zmlx_array *p = NULL;
  if (zmlx_array_full(dev, dt, ndim, shape, NAN, &p) == ZMLX_OK) {
    zmlx_device_synchronize(dev);
    zmlx_array_release(p);
  }
}

zmlx_status zmlx_opck_weighted_sum(zmlx_array *y, zmlx_array *w, zmlx_array **out) {
  zmlx_array *m = NULL;
  zmlx_status st = zmlx_mul(y, w, &m);
  if (st == ZMLX_OK) st = zmlx_sum(m, NULL, 0, 0, out);
  zmlx_array_release(m);
  return st;
}
