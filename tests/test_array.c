/* Arrays: creation, host transfer, fills, arange, random, views, dtype
 * conversion, reference counting and argument checking, on every device. */
#include "test_support.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/internal.h"

#define MAX_DEVS 4

static const zmlx_dtype all_dtypes[] = {ZMLX_BOOL, ZMLX_U8,   ZMLX_I8,  ZMLX_I32, ZMLX_U32,
                                        ZMLX_I64,  ZMLX_F16,  ZMLX_BF16, ZMLX_F32, ZMLX_F64};
#define N_ALL_DTYPES ((int)(sizeof all_dtypes / sizeof all_dtypes[0]))

/* ------------------------------------------------------------------ helpers */

static int devices(zmlx_device **devs) {
  int n = zt_devices(devs, MAX_DEVS);
  if (n <= 0) fail_msg("no device available (zt_devices returned %d)", n);
  return n;
}

static zmlx_device_info info_of(zmlx_device *dev) {
  zmlx_device_info info;
  ZT_OK(zmlx_device_get_info(dev, &info));
  return info;
}

static uint64_t next_rand(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static int is_float_dtype(zmlx_dtype dt) {
  return dt == ZMLX_F16 || dt == ZMLX_BF16 || dt == ZMLX_F32 || dt == ZMLX_F64;
}

static int64_t count_of(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

/* One stored element -> double (host decoding, independent of the library). */
static double decode(zmlx_dtype dt, const void *p) {
  if (zmlx_dtype_size(dt) == 0) fail_msg("decode: bad dtype %d", (int)dt);
  return zt_decode(dt, p);
}

/* Host conversion of a value held by a `src` element into `dst`, with C cast
 * semantics (float -> int truncates toward zero, int -> unsigned wraps,
 * bool = value != 0), returned as the double the dst element holds. The
 * caller only asks for conversions C defines (see conversion_defined). */
static double convert_ref(zmlx_dtype src, zmlx_dtype dst, double v) {
  int from_int = !is_float_dtype(src);
  switch (dst) {
    case ZMLX_BOOL: return v != 0;
    case ZMLX_U8: return from_int ? (uint8_t)(int64_t)v : (uint8_t)v;
    case ZMLX_I8: return from_int ? (int8_t)(int64_t)v : (int8_t)v;
    case ZMLX_I32: return from_int ? (int32_t)(int64_t)v : (int32_t)v;
    case ZMLX_U32: return from_int ? (uint32_t)(int64_t)v : (uint32_t)v;
    case ZMLX_I64: return (double)(int64_t)v;
    case ZMLX_F16: return zmlx_f16_to_f32(zmlx_f32_to_f16((float)v));
    case ZMLX_BF16: return zmlx_bf16_to_f32(zmlx_f32_to_bf16((float)v));
    case ZMLX_F32: return (float)v;
    case ZMLX_F64: return v;
    default: fail_msg("convert_ref: bad dtype %d", (int)dst);
  }
  return 0;
}

static void int_range(zmlx_dtype dt, double *lo, double *hi) {
  switch (dt) {
    case ZMLX_U8: *lo = 0; *hi = 255; break;
    case ZMLX_I8: *lo = -128; *hi = 127; break;
    case ZMLX_I32: *lo = -2147483648.0; *hi = 2147483647.0; break;
    case ZMLX_U32: *lo = 0; *hi = 4294967295.0; break;
    default: *lo = -9223372036854775808.0; *hi = 9223372036854774784.0; break;
  }
}

/* Whether C defines converting `v` (a `src` value) to `dst`. */
static int conversion_defined(zmlx_dtype src, zmlx_dtype dst, double v) {
  if (dst == ZMLX_BOOL || is_float_dtype(dst)) return 1;
  double lo, hi;
  int_range(dst, &lo, &hi);
  if (is_float_dtype(src)) {
    if (!isfinite(v)) return 0;
    double t = trunc(v);
    return t >= lo && t <= hi;
  }
  /* int -> unsigned wraps (defined); int -> narrower signed must fit. */
  if (dst == ZMLX_U8 || dst == ZMLX_U32) return 1;
  return v >= lo && v <= hi;
}

/* Store `v` (already representable) as a dt element. */
static void encode(zmlx_dtype dt, double v, void *p) {
  switch (dt) {
    case ZMLX_BOOL:
    case ZMLX_U8: *(uint8_t *)p = (uint8_t)v; break;
    case ZMLX_I8: *(int8_t *)p = (int8_t)v; break;
    case ZMLX_I32: *(int32_t *)p = (int32_t)v; break;
    case ZMLX_U32: *(uint32_t *)p = (uint32_t)v; break;
    case ZMLX_I64: *(int64_t *)p = (int64_t)v; break;
    case ZMLX_F16: *(uint16_t *)p = zmlx_f32_to_f16((float)v); break;
    case ZMLX_BF16: *(uint16_t *)p = zmlx_f32_to_bf16((float)v); break;
    case ZMLX_F32: *(float *)p = (float)v; break;
    case ZMLX_F64: *(double *)p = v; break;
    default: fail_msg("encode: bad dtype %d", (int)dt);
  }
}

static zmlx_array *upload_values(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                                 const double *vals) {
  size_t n = (size_t)count_of(ndim, shape), es = zmlx_dtype_size(dt);
  unsigned char *buf = malloc(n * es + 1);
  assert_non_null(buf);
  for (size_t i = 0; i < n; i++) encode(dt, vals[i], buf + i * es);
  zmlx_array *a = NULL;
  ZT_OK(zmlx_array_from_host(dev, dt, ndim, shape, buf, &a));
  free(buf);
  return a;
}

static int same_value(double got, double want) {
  if (isnan(want)) return isnan(got);
  return got == want;
}

/* Exact comparison that also accepts equal infinities and NaN for NaN. */
static void assert_exact(const double *got, const double *want, size_t n, const char *what) {
  for (size_t i = 0; i < n; i++)
    if (!same_value(got[i], want[i]))
      fail_msg("%s: element %zu is %.17g, expected %.17g", what, i, got[i], want[i]);
}

static void assert_shape(zmlx_array *a, int ndim, const int64_t *shape, const char *what) {
  if (zmlx_array_ndim(a) != ndim)
    fail_msg("%s: ndim %d, expected %d", what, zmlx_array_ndim(a), ndim);
  for (int i = 0; i < ndim; i++)
    if (zmlx_array_shape(a)[i] != shape[i])
      fail_msg("%s: shape[%d] = %lld, expected %lld", what, i,
               (long long)zmlx_array_shape(a)[i], (long long)shape[i]);
  if (zmlx_array_size(a) != count_of(ndim, shape))
    fail_msg("%s: size %lld, expected %lld", what, (long long)zmlx_array_size(a),
             (long long)count_of(ndim, shape));
}

/* ------------------------------------------------ host reference ndarray */

/* A host mirror of a view: element (i0..in) lives at data[off + sum i_k*st_k]. */
typedef struct href {
  int ndim;
  int64_t shape[ZMLX_MAX_DIMS], strides[ZMLX_MAX_DIMS], off;
} href;

static href href_dense(int ndim, const int64_t *shape) {
  href h = {.ndim = ndim};
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    h.shape[i] = shape[i];
    h.strides[i] = s;
    s *= shape[i];
  }
  return h;
}

static href href_transpose(href h, const int *perm) {
  href r = h;
  for (int i = 0; i < h.ndim; i++) {
    int p = perm ? perm[i] : h.ndim - 1 - i;
    r.shape[i] = h.shape[p];
    r.strides[i] = h.strides[p];
  }
  return r;
}

/* Python's slice(start, stop, step).indices(n) for step > 0, then the
 * element count, written the way CPython does it. */
static href href_slice(href h, const int64_t *start, const int64_t *stop, const int64_t *step) {
  href r = h;
  for (int i = 0; i < h.ndim; i++) {
    int64_t n = h.shape[i], b = start[i], e = stop[i], s = step ? step[i] : 1;
    if (b < 0) {
      b += n;
      if (b < 0) b = 0;
    } else if (b > n) {
      b = n;
    }
    if (e < 0) {
      e += n;
      if (e < 0) e = 0;
    } else if (e > n) {
      e = n;
    }
    int64_t len = 0;
    for (int64_t k = b; k < e; k += s) len++;
    r.shape[i] = len;
    r.strides[i] = h.strides[i] * s;
    if (len) r.off += b * h.strides[i];
  }
  return r;
}

static int64_t href_size(const href *h) { return count_of(h->ndim, h->shape); }

/* Values of the view in C order. Caller frees. */
static double *href_values(const href *h, const double *base) {
  int64_t n = href_size(h);
  double *out = malloc((size_t)n * sizeof *out + 1);
  assert_non_null(out);
  for (int64_t i = 0; i < n; i++) {
    int64_t rem = i, off = h->off;
    for (int d = h->ndim - 1; d >= 0; d--) {
      off += (rem % h->shape[d]) * h->strides[d];
      rem /= h->shape[d];
    }
    out[i] = base[off];
  }
  return out;
}

/* The view `v` must hold exactly the values of `h` over `base`, in shape,
 * through to_host, through contiguous() and through item(). */
static void check_view(zmlx_array *v, const href *h, const double *base, const char *what) {
  char msg[256];
  assert_shape(v, h->ndim, h->shape, what);
  double *want = href_values(h, base);
  int64_t n = href_size(h);
  double *got = zt_download(v);
  snprintf(msg, sizeof msg, "%s (to_host)", what);
  assert_exact(got, want, (size_t)n, msg);
  free(got);
  zmlx_array *c = NULL;
  ZT_OK(zmlx_array_contiguous(v, &c));
  if (!zmlx_array_is_contiguous(c)) fail_msg("%s: contiguous() returned a strided array", what);
  assert_shape(c, h->ndim, h->shape, what);
  got = zt_download(c);
  snprintf(msg, sizeof msg, "%s (contiguous)", what);
  assert_exact(got, want, (size_t)n, msg);
  free(got);
  zmlx_array_release(c);
  for (int64_t i = 0; i < n; i++) {
    double x;
    ZT_OK(zmlx_array_item(v, i, &x));
    if (!same_value(x, want[i]))
      fail_msg("%s: item(%lld) = %.17g, expected %.17g", what, (long long)i, x, want[i]);
  }
  free(want);
}

/* ---------------------------------------------------------- round trips */

static void test_round_trip(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  uint64_t rng = zt_seed() | 1;
  const int64_t s8[8] = {2, 1, 3, 1, 2, 2, 1, 2};
  const int64_t s1[1] = {1}, sodd[1] = {333}, sempty[3] = {3, 0, 2}, s0len[1] = {0};
  struct { int ndim; const int64_t *shape; } shapes[] = {
      {0, NULL}, {1, s1}, {1, sodd}, {3, sempty}, {1, s0len}, {8, s8}};
  const int nshapes = (int)(sizeof shapes / sizeof shapes[0]);
  for (int d = 0; d < nd; d++) {
    zmlx_device_info info = info_of(devs[d]);
    int64_t live0 = zmlx_array_live_count();
    for (int k = 0; k < N_ALL_DTYPES; k++) {
      zmlx_dtype dt = all_dtypes[k];
      size_t es = zmlx_dtype_size(dt);
      for (int s = 0; s < nshapes; s++) {
        int ndim = shapes[s].ndim;
        const int64_t *shape = shapes[s].shape;
        size_t n = (size_t)count_of(ndim, shape), nbytes = n * es;
        unsigned char *src = malloc(nbytes + 1), *dst = malloc(nbytes + 16);
        assert_non_null(src);
        assert_non_null(dst);
        for (size_t i = 0; i < nbytes; i++) src[i] = (unsigned char)next_rand(&rng);
        if (dt == ZMLX_BOOL)
          for (size_t i = 0; i < nbytes; i++) src[i] &= 1;
        zmlx_array *a = NULL;
        if (dt == ZMLX_F64 && !info.has_fp64) {
          ZT_FAILS(zmlx_array_from_host(devs[d], dt, ndim, shape, src, &a), ZMLX_ERR_DTYPE, "f64");
          assert_null(a);
          free(src);
          free(dst);
          continue;
        }
        ZT_OK(zmlx_array_from_host(devs[d], dt, ndim, shape, src, &a));
        assert_non_null(a);
        assert_int_equal(zmlx_array_dtype(a), dt);
        assert_shape(a, ndim, shape, zmlx_dtype_name(dt));
        assert_int_equal(zmlx_array_nbytes(a), nbytes);
        assert_true(zmlx_array_is_contiguous(a));
        assert_ptr_equal(zmlx_array_device(a), devs[d]);
        assert_int_equal(zmlx_array_offset(a), 0);
        memset(dst, 0xCC, nbytes + 16);
        ZT_OK(zmlx_array_to_host(a, dst, nbytes));
        if (nbytes && memcmp(src, dst, nbytes))
          fail_msg("%s shape #%d: to_host bytes differ from from_host bytes", zmlx_dtype_name(dt), s);
        for (size_t i = nbytes; i < nbytes + 16; i++)
          if (dst[i] != 0xCC) fail_msg("%s: to_host wrote past %zu bytes", zmlx_dtype_name(dt), nbytes);
        if (n) {
          size_t probe[3] = {0, n / 2, n - 1};
          for (int p = 0; p < 3; p++) {
            double x;
            ZT_OK(zmlx_array_item(a, (int64_t)probe[p], &x));
            double want = decode(dt, src + probe[p] * es);
            if (!same_value(x, want))
              fail_msg("%s: item(%zu) = %.17g, expected %.17g", zmlx_dtype_name(dt), probe[p], x, want);
          }
        } else {
          double x;
          ZT_FAILS(zmlx_array_item(a, 0, &x), ZMLX_ERR_INVALID_ARG, "index");
        }
        zmlx_array_release(a);
        free(src);
        free(dst);
      }
    }
    assert_int_equal(zmlx_array_live_count(), live0);
  }
}

/* ------------------------------------------------------------ zeros / full */

static void test_zeros_full(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const int64_t shape[2] = {7, 13}, big[2] = {300, 257};
  struct { zmlx_dtype dt; double value, want; } cases[] = {
      {ZMLX_BOOL, 1.0, 1},         {ZMLX_BOOL, 0.0, 0},
      {ZMLX_BOOL, -3.0, 1},        {ZMLX_BOOL, 0.5, 1}, /* C: (bool)0.5 == 1 */
      {ZMLX_U8, 200, 200},         {ZMLX_U8, 0, 0},
      {ZMLX_I8, -100, -100},       {ZMLX_I8, 127, 127},
      {ZMLX_I32, -123456, -123456}, {ZMLX_I32, 2147483647.0, 2147483647.0},
      {ZMLX_I32, -2.7, -2},        {ZMLX_I32, 9.99, 9}, /* truncation toward zero */
      {ZMLX_U32, 4000000000.0, 4000000000.0},
      {ZMLX_I64, -5000000000.0, -5000000000.0},
      {ZMLX_I64, 1099511627779.0, 1099511627779.0}, /* 2^40 + 3 */
      {ZMLX_I64, 3000000000.0, 3000000000.0},
      {ZMLX_F16, -1.5, -1.5},      {ZMLX_F16, 65504, 65504},
      {ZMLX_F16, 0.1, 0},          {ZMLX_BF16, 3.140625, 3.140625},
      {ZMLX_BF16, 0.1, 0},         {ZMLX_F32, 0.1, 0},
      {ZMLX_F32, -3.0e38, 0},      {ZMLX_F64, 0.1, 0.1},
      {ZMLX_F64, -1e300, -1e300},
  };
  /* Floating expectations that are not exact: the value rounded to dt. */
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
    if (is_float_dtype(cases[c].dt) && cases[c].dt != ZMLX_F64)
      cases[c].want = zt_round_to(cases[c].dt, cases[c].value);
  for (int d = 0; d < nd; d++) {
    zmlx_device_info info = info_of(devs[d]);
    int64_t live0 = zmlx_array_live_count();
    for (int k = 0; k < N_ALL_DTYPES; k++) {
      zmlx_dtype dt = all_dtypes[k];
      if (dt == ZMLX_F64 && !info.has_fp64) continue;
      /* zeros over a poisoned allocation pattern: every byte must be 0. */
      zmlx_array *p = zt_poisoned(devs[d], dt, 2, shape);
      zmlx_array_release(p);
      zmlx_array *z = NULL;
      ZT_OK(zmlx_array_zeros(devs[d], dt, 2, shape, &z));
      assert_int_equal(zmlx_array_dtype(z), dt);
      assert_shape(z, 2, shape, "zeros");
      size_t nbytes = zmlx_array_nbytes(z);
      unsigned char *raw = malloc(nbytes), *zero = calloc(1, nbytes);
      assert_non_null(raw);
      assert_non_null(zero);
      memset(raw, 0x77, nbytes);
      ZT_OK(zmlx_array_to_host(z, raw, nbytes));
      if (memcmp(raw, zero, nbytes)) fail_msg("zeros(%s): some byte is not 0", zmlx_dtype_name(dt));
      free(raw);
      free(zero);
      zmlx_array_release(z);
      /* zeros of a 0-d and of an empty shape. */
      ZT_OK(zmlx_array_zeros(devs[d], dt, 0, NULL, &z));
      double x = -1;
      ZT_OK(zmlx_array_item(z, 0, &x));
      assert_true(x == 0);
      zmlx_array_release(z);
      const int64_t empty[2] = {0, 5};
      ZT_OK(zmlx_array_zeros(devs[d], dt, 2, empty, &z));
      assert_int_equal(zmlx_array_size(z), 0);
      zmlx_array_release(z);
    }
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
      zmlx_dtype dt = cases[c].dt;
      if (dt == ZMLX_F64 && !info.has_fp64) continue;
      zmlx_array *f = NULL;
      ZT_OK(zmlx_array_full(devs[d], dt, 2, shape, cases[c].value, &f));
      size_t n = (size_t)zmlx_array_size(f), es = zmlx_dtype_size(dt);
      unsigned char *raw = malloc(n * es);
      assert_non_null(raw);
      ZT_OK(zmlx_array_to_host(f, raw, n * es));
      for (size_t i = 0; i < n; i++) {
        double got = decode(dt, raw + i * es);
        if (!same_value(got, cases[c].want))
          fail_msg("full(%s, %.17g): element %zu is %.17g, expected %.17g", zmlx_dtype_name(dt),
                   cases[c].value, i, got, cases[c].want);
      }
      free(raw);
      zmlx_array_release(f);
    }
    /* A fill larger than one 2^16 block, for a float and a 64-bit int. */
    zmlx_dtype bigdt[2] = {ZMLX_F32, ZMLX_I64};
    double bigval[2] = {-7.25, -6000000000.0};
    for (int b = 0; b < 2; b++) {
      zmlx_array *f = NULL;
      ZT_OK(zmlx_array_full(devs[d], bigdt[b], 2, big, bigval[b], &f));
      double *got = zt_download(f);
      for (int64_t i = 0; i < zmlx_array_size(f); i++)
        if (got[i] != bigval[b])
          fail_msg("full(%s) %lld elements: element %lld is %.17g", zmlx_dtype_name(bigdt[b]),
                   (long long)zmlx_array_size(f), (long long)i, got[i]);
      free(got);
      zmlx_array_release(f);
    }
    assert_int_equal(zmlx_array_live_count(), live0);
  }
}

/* ------------------------------------------------------------------ arange */

static void test_arange(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  struct { zmlx_dtype dt; double start, step; int64_t n; } cases[] = {
      {ZMLX_F32, -2.5, 0.75, 1000}, {ZMLX_F32, 0.1, 0.1, 100},  {ZMLX_F32, 0, 1, 70001},
      {ZMLX_F32, 3, -0.5, 17},      {ZMLX_F32, 1, 1, 0},        {ZMLX_I32, -10, 3, 100},
      {ZMLX_I32, 7, -2, 1},         {ZMLX_I32, 0, 1, 70001},    {ZMLX_I64, 3000000000.0, -7, 50},
      {ZMLX_I64, -5, 8589934592.0, 40}, {ZMLX_F16, -4, 0.125, 200}, {ZMLX_F16, 0.1, 0.3, 50},
      {ZMLX_F16, 1000, 3.3, 40},
  };
  for (int d = 0; d < nd; d++) {
    int64_t live0 = zmlx_array_live_count();
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
      zmlx_dtype dt = cases[c].dt;
      int64_t n = cases[c].n;
      zmlx_array *a = NULL;
      ZT_OK(zmlx_array_arange(devs[d], dt, cases[c].start, cases[c].step, n, &a));
      assert_int_equal(zmlx_array_dtype(a), dt);
      assert_shape(a, 1, &n, "arange");
      double *want = malloc((size_t)n * sizeof *want + 1);
      assert_non_null(want);
      for (int64_t i = 0; i < n; i++) {
        if (is_float_dtype(dt))
          want[i] = zt_round_to(dt, fmaf((float)i, (float)cases[c].step, (float)cases[c].start));
        else
          want[i] = convert_ref(ZMLX_I64, dt,
                                (double)((int64_t)cases[c].start + i * (int64_t)cases[c].step));
      }
      double *got = zt_download(a);
      char what[128];
      snprintf(what, sizeof what, "arange(%s, %g, %g, %lld)", zmlx_dtype_name(dt), cases[c].start,
               cases[c].step, (long long)n);
      zt_assert_close(got, want, (size_t)n, 0, 0, what);
      free(got);
      free(want);
      zmlx_array_release(a);
    }
    assert_int_equal(zmlx_array_live_count(), live0);
  }
}

/* ------------------------------------------------------------------ random */

static float *download_f32(zmlx_array *a) {
  size_t n = (size_t)zmlx_array_size(a);
  float *x = malloc(n * sizeof *x + 1);
  assert_non_null(x);
  ZT_OK(zmlx_array_to_host(a, x, n * sizeof *x));
  return x;
}

static void test_random_uniform(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const uint64_t seeds[] = {0, 1, 42, 0x0123456789ABCDEFull, 0xFFFFFFFF00000001ull, zt_seed()};
  const int64_t n = 70001; /* > 2^16 */
  for (int d = 0; d < nd; d++) {
    int64_t live0 = zmlx_array_live_count();
    for (size_t s = 0; s < sizeof seeds / sizeof seeds[0]; s++) {
      zmlx_array *a = NULL;
      ZT_OK(zmlx_array_random_uniform(devs[d], ZMLX_F32, 1, &n, seeds[s], 0.0, 1.0, &a));
      assert_shape(a, 1, &n, "random_uniform");
      float *x = download_f32(a);
      for (int64_t i = 0; i < n; i++) {
        float want = zmlxi_random_uniform_ref(seeds[s], (uint64_t)i);
        if (memcmp(&x[i], &want, sizeof want))
          fail_msg("uniform seed %llu: element %lld is %.9g, reference %.9g (bits differ)",
                   (unsigned long long)seeds[s], (long long)i, x[i], want);
        if (!(x[i] >= 0.0f && x[i] < 1.0f))
          fail_msg("uniform seed %llu: element %lld = %.9g outside [0, 1)",
                   (unsigned long long)seeds[s], (long long)i, x[i]);
      }
      free(x);
      zmlx_array_release(a);
    }
    /* A 2-D shape numbers elements in C order. */
    const int64_t shape2[2] = {300, 250};
    zmlx_array *a = NULL;
    ZT_OK(zmlx_array_random_uniform(devs[d], ZMLX_F32, 2, shape2, 7, 0.0, 1.0, &a));
    float *x = download_f32(a);
    for (int64_t i = 0; i < 300 * 250; i++) {
      float want = zmlxi_random_uniform_ref(7, (uint64_t)i);
      if (memcmp(&x[i], &want, sizeof want))
        fail_msg("uniform 2-D: element %lld is %.9g, reference %.9g", (long long)i, x[i], want);
    }
    free(x);
    zmlx_array_release(a);

    /* low/high other than 0/1: fma(u, high - low, low) in f32, inside
     * [low, high] (the rounding of the fma may reach high itself). */
    const double lh[][2] = {{-2.0, 3.0}, {10.0, 10.5}, {-1.0, -0.25}};
    for (size_t r = 0; r < sizeof lh / sizeof lh[0]; r++) {
      float lo = (float)lh[r][0], hi = (float)lh[r][1];
      ZT_OK(zmlx_array_random_uniform(devs[d], ZMLX_F32, 1, &n, 99, lh[r][0], lh[r][1], &a));
      x = download_f32(a);
      double sum = 0;
      for (int64_t i = 0; i < n; i++) {
        if (!(x[i] >= lo && x[i] <= hi))
          fail_msg("uniform [%g, %g]: element %lld = %.9g out of range", lo, hi, (long long)i, x[i]);
        float want = fmaf(zmlxi_random_uniform_ref(99, (uint64_t)i), hi - lo, lo);
        if (memcmp(&x[i], &want, sizeof want))
          fail_msg("uniform [%g, %g): element %lld = %.9g, expected %.9g", lo, hi, (long long)i,
                   x[i], want);
        sum += x[i];
      }
      double mean = sum / (double)n, mid = 0.5 * (lo + hi);
      if (fabs(mean - mid) > 0.01 * (hi - lo))
        fail_msg("uniform [%g, %g): mean %g, expected about %g", lo, hi, mean, mid);
      free(x);
      zmlx_array_release(a);
    }

    /* f16 / bf16 keep the f32 value rounded to nearest even. */
    const zmlx_dtype half[2] = {ZMLX_F16, ZMLX_BF16};
    for (int h = 0; h < 2; h++) {
      const int64_t m = 5000;
      ZT_OK(zmlx_array_random_uniform(devs[d], half[h], 1, &m, 1234, 0.0, 1.0, &a));
      double *got = zt_download(a);
      double *want = malloc((size_t)m * sizeof *want);
      assert_non_null(want);
      for (int64_t i = 0; i < m; i++)
        want[i] = zt_round_to(half[h], zmlxi_random_uniform_ref(1234, (uint64_t)i));
      zt_assert_close(got, want, (size_t)m, 0, 0, zmlx_dtype_name(half[h]));
      free(got);
      free(want);
      zmlx_array_release(a);
    }

    /* Same seed twice: identical. Different seeds: different. */
    zmlx_array *b = NULL, *c = NULL;
    ZT_OK(zmlx_array_random_uniform(devs[d], ZMLX_F32, 1, &n, 555, 0.0, 1.0, &a));
    ZT_OK(zmlx_array_random_uniform(devs[d], ZMLX_F32, 1, &n, 555, 0.0, 1.0, &b));
    ZT_OK(zmlx_array_random_uniform(devs[d], ZMLX_F32, 1, &n, 556, 0.0, 1.0, &c));
    float *xa = download_f32(a), *xb = download_f32(b), *xc = download_f32(c);
    if (memcmp(xa, xb, (size_t)n * sizeof *xa)) fail_msg("the same seed gave different numbers");
    int64_t same = 0;
    for (int64_t i = 0; i < n; i++) same += xa[i] == xc[i];
    if (same > n / 100)
      fail_msg("seeds 555 and 556 agree on %lld of %lld elements", (long long)same, (long long)n);
    free(xa);
    free(xb);
    free(xc);
    zmlx_array_release(a);
    zmlx_array_release(b);
    zmlx_array_release(c);
    assert_int_equal(zmlx_array_live_count(), live0);
  }
}

static void mean_std(const double *x, int64_t n, double *mean, double *std) {
  double s = 0, s2 = 0;
  for (int64_t i = 0; i < n; i++) s += x[i];
  *mean = s / (double)n;
  for (int64_t i = 0; i < n; i++) s2 += (x[i] - *mean) * (x[i] - *mean);
  *std = sqrt(s2 / (double)(n - 1));
}

static void test_random_normal(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const int64_t n = 100000;
  struct { uint64_t seed; double mean, std; } cases[] = {
      {3, 0.0, 1.0}, {0xABCDEF0123456789ull, 0.0, 1.0}, {17, 2.0, 3.0}, {zt_seed(), -1.0, 0.5}};
  double *want = malloc((size_t)n * sizeof *want);
  assert_non_null(want);
  for (int d = 0; d < nd; d++) {
    int64_t live0 = zmlx_array_live_count();
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
      zmlx_array *a = NULL;
      ZT_OK(zmlx_array_random_normal(devs[d], ZMLX_F32, 1, &n, cases[c].seed, cases[c].mean,
                                     cases[c].std, &a));
      assert_shape(a, 1, &n, "random_normal");
      double *got = zt_download(a);
      for (int64_t i = 0; i < n; i++)
        want[i] = fmaf(zmlxi_random_normal_ref(cases[c].seed, (uint64_t)i), (float)cases[c].std,
                       (float)cases[c].mean);
      char what[96];
      snprintf(what, sizeof what, "normal seed %llu (%g, %g)", (unsigned long long)cases[c].seed,
               cases[c].mean, cases[c].std);
      /* 1e-5 on the standard normal, scaled by stddev. */
      zt_assert_close(got, want, (size_t)n, 1e-5 * cases[c].std, 1e-5, what);
      double m, s;
      mean_std(got, n, &m, &s);
      /* Standard error of the mean is std/sqrt(1e5) ~ 0.0032 std. */
      if (fabs(m - cases[c].mean) > 0.02 * cases[c].std)
        fail_msg("%s: sample mean %g", what, m);
      if (fabs(s - cases[c].std) > 0.02 * cases[c].std) fail_msg("%s: sample std %g", what, s);
      free(got);
      zmlx_array_release(a);
    }
    /* Same seed twice: identical; different seeds differ. */
    zmlx_array *a = NULL, *b = NULL, *c = NULL;
    ZT_OK(zmlx_array_random_normal(devs[d], ZMLX_F32, 1, &n, 8, 0, 1, &a));
    ZT_OK(zmlx_array_random_normal(devs[d], ZMLX_F32, 1, &n, 8, 0, 1, &b));
    ZT_OK(zmlx_array_random_normal(devs[d], ZMLX_F32, 1, &n, 9, 0, 1, &c));
    float *xa = download_f32(a), *xb = download_f32(b), *xc = download_f32(c);
    if (memcmp(xa, xb, (size_t)n * sizeof *xa)) fail_msg("normal: the same seed gave different numbers");
    int64_t same = 0;
    for (int64_t i = 0; i < n; i++) same += xa[i] == xc[i];
    if (same > n / 100) fail_msg("normal: seeds 8 and 9 agree on %lld elements", (long long)same);
    free(xa);
    free(xb);
    free(xc);
    zmlx_array_release(a);
    zmlx_array_release(b);
    zmlx_array_release(c);
    assert_int_equal(zmlx_array_live_count(), live0);
  }
  free(want);
}

/* ------------------------------------------------------------------- views */

static double *iota_values(int64_t n) {
  double *v = malloc((size_t)n * sizeof *v + 1);
  assert_non_null(v);
  for (int64_t i = 0; i < n; i++) v[i] = (double)i * 0.5 - 7.0; /* exact in f32 */
  return v;
}

static void test_reshape(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const int64_t shape[3] = {4, 5, 6};
  double *base = iota_values(120);
  for (int d = 0; d < nd; d++) {
    int64_t live0 = zmlx_array_live_count();
    zmlx_array *a = upload_values(devs[d], ZMLX_F32, 3, shape, base);
    zmlx_array *v = NULL;

    /* -1 inferred, as a view on the same buffer. */
    const int64_t r1[2] = {-1, 6}, r1w[2] = {20, 6};
    ZT_OK(zmlx_array_reshape(a, 2, r1, &v));
    href h = href_dense(2, r1w);
    check_view(v, &h, base, "reshape [-1, 6]");
    assert_ptr_equal(v->buffer, a->buffer);
    zmlx_array_release(v);

    const int64_t r2[3] = {2, -1, 3}, r2w[3] = {2, 20, 3};
    ZT_OK(zmlx_array_reshape(a, 3, r2, &v));
    h = href_dense(3, r2w);
    check_view(v, &h, base, "reshape [2, -1, 3]");
    assert_ptr_equal(v->buffer, a->buffer);
    zmlx_array_release(v);

    const int64_t r3[1] = {-1}, r3w[1] = {120};
    ZT_OK(zmlx_array_reshape(a, 1, r3, &v));
    h = href_dense(1, r3w);
    check_view(v, &h, base, "reshape [-1]");
    zmlx_array_release(v);

    /* A contiguous slice (rows 1..2 of axis 0) reshapes as a view that keeps
     * its offset. */
    const int64_t st[3] = {1, 0, 0}, sp[3] = {3, 5, 6};
    zmlx_array *rows = NULL;
    ZT_OK(zmlx_array_slice(a, st, sp, NULL, &rows));
    assert_true(zmlx_array_is_contiguous(rows));
    const int64_t r4[2] = {10, 6};
    ZT_OK(zmlx_array_reshape(rows, 2, r4, &v));
    assert_ptr_equal(v->buffer, a->buffer);
    assert_int_equal(zmlx_array_offset(v), 30);
    h = href_slice(href_dense(3, shape), st, sp, NULL);
    double *rows_vals = href_values(&h, base);
    href hv = href_dense(2, r4);
    check_view(v, &hv, rows_vals, "reshape of a contiguous slice");
    free(rows_vals);
    zmlx_array_release(v);
    zmlx_array_release(rows);

    /* Non-contiguous source (transpose): reshape must copy into C order of
     * the transposed view. */
    zmlx_array *t = NULL;
    ZT_OK(zmlx_array_transpose(a, NULL, &t));
    assert_false(zmlx_array_is_contiguous(t));
    const int64_t r5[2] = {30, -1}, r5w[2] = {30, 4};
    ZT_OK(zmlx_array_reshape(t, 2, r5, &v));
    assert_true(v->buffer != a->buffer);
    assert_true(zmlx_array_is_contiguous(v));
    href ht = href_transpose(href_dense(3, shape), NULL);
    double *tvals = href_values(&ht, base);
    hv = href_dense(2, r5w);
    check_view(v, &hv, tvals, "reshape of a transpose");
    free(tvals);
    zmlx_array_release(v);
    zmlx_array_release(t);

    /* Size-1 array to 0-d and back. */
    zmlx_array *one = NULL, *s0 = NULL, *s3 = NULL;
    const int64_t one_shape[1] = {1}, three[3] = {1, 1, 1};
    const double one_val[1] = {42.5};
    one = upload_values(devs[d], ZMLX_F32, 1, one_shape, one_val);
    ZT_OK(zmlx_array_reshape(one, 0, NULL, &s0));
    assert_int_equal(zmlx_array_ndim(s0), 0);
    assert_int_equal(zmlx_array_size(s0), 1);
    ZT_OK(zmlx_array_reshape(s0, 3, (const int64_t[3]){-1, 1, 1}, &s3));
    assert_shape(s3, 3, three, "reshape 0-d to [-1, 1, 1]");
    double x;
    ZT_OK(zmlx_array_item(s3, 0, &x));
    assert_true(x == 42.5);
    zmlx_array_release(one);
    zmlx_array_release(s0);
    zmlx_array_release(s3);

    /* Empty arrays reshape with -1 resolved to 0. */
    const int64_t es[2] = {0, 4}, er[3] = {2, -1, 2}, erw[3] = {2, 0, 2};
    zmlx_array *e = NULL;
    ZT_OK(zmlx_array_zeros(devs[d], ZMLX_F32, 2, es, &e));
    ZT_OK(zmlx_array_reshape(e, 3, er, &v));
    assert_shape(v, 3, erw, "reshape of an empty array");
    zmlx_array_release(v);
    zmlx_array_release(e);

    zmlx_array_release(a);
    assert_int_equal(zmlx_array_live_count(), live0);
  }
  free(base);
}

static void test_transpose(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const int64_t s3[3] = {4, 5, 6}, s4[4] = {2, 3, 4, 5};
  double *base = iota_values(120);
  for (int d = 0; d < nd; d++) {
    int64_t live0 = zmlx_array_live_count();
    zmlx_array *a3 = upload_values(devs[d], ZMLX_F32, 3, s3, base);
    zmlx_array *a4 = upload_values(devs[d], ZMLX_F32, 4, s4, base);
    zmlx_array *v = NULL;

    ZT_OK(zmlx_array_transpose(a3, NULL, &v));
    const int64_t rev[3] = {6, 5, 4}, rev_strides[3] = {1, 6, 30};
    assert_shape(v, 3, rev, "transpose NULL");
    for (int i = 0; i < 3; i++) assert_int_equal(zmlx_array_strides(v)[i], rev_strides[i]);
    assert_ptr_equal(v->buffer, a3->buffer);
    href h = href_transpose(href_dense(3, s3), NULL);
    check_view(v, &h, base, "transpose 3-d NULL");
    /* Transposing twice is the identity and dense again. */
    zmlx_array *vv = NULL;
    ZT_OK(zmlx_array_transpose(v, NULL, &vv));
    assert_true(zmlx_array_is_contiguous(vv));
    h = href_dense(3, s3);
    check_view(vv, &h, base, "transpose twice");
    zmlx_array_release(vv);
    zmlx_array_release(v);

    const int p3[3] = {1, 0, 2};
    ZT_OK(zmlx_array_transpose(a3, p3, &v));
    const int64_t p3w[3] = {5, 4, 6};
    assert_shape(v, 3, p3w, "transpose [1, 0, 2]");
    h = href_transpose(href_dense(3, s3), p3);
    check_view(v, &h, base, "transpose 3-d [1, 0, 2]");
    zmlx_array_release(v);

    const int p4[4] = {2, 0, 3, 1};
    ZT_OK(zmlx_array_transpose(a4, p4, &v));
    const int64_t p4w[4] = {4, 2, 5, 3};
    assert_shape(v, 4, p4w, "transpose [2, 0, 3, 1]");
    h = href_transpose(href_dense(4, s4), p4);
    check_view(v, &h, base, "transpose 4-d [2, 0, 3, 1]");
    zmlx_array_release(v);

    ZT_OK(zmlx_array_transpose(a4, NULL, &v));
    h = href_transpose(href_dense(4, s4), NULL);
    check_view(v, &h, base, "transpose 4-d NULL");
    zmlx_array_release(v);

    /* 0-d and 1-d transposes are identities. */
    const double sv[1] = {3.5};
    zmlx_array *s0 = upload_values(devs[d], ZMLX_F32, 0, NULL, sv);
    ZT_OK(zmlx_array_transpose(s0, NULL, &v));
    assert_int_equal(zmlx_array_ndim(v), 0);
    double x;
    ZT_OK(zmlx_array_item(v, 0, &x));
    assert_true(x == 3.5);
    zmlx_array_release(v);
    zmlx_array_release(s0);

    zmlx_array_release(a3);
    zmlx_array_release(a4);
    assert_int_equal(zmlx_array_live_count(), live0);
  }
  free(base);
}

static void test_slice(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const int64_t s1[1] = {10}, s2[2] = {7, 9}, s3[3] = {4, 5, 6};
  double *base = iota_values(120);
  struct {
    int ndim;
    const int64_t *shape;
    int64_t start[3], stop[3], step[3];
    int64_t want[3]; /* expected shape, written out by hand */
    const char *what;
  } cases[] = {
      {1, s1, {-3}, {10}, {1}, {3}, "[-3:10]"},
      {1, s1, {2}, {-1}, {3}, {3}, "[2:-1:3]"},
      {1, s1, {-100}, {100}, {2}, {5}, "[-100:100:2]"},
      {1, s1, {1}, {10}, {2}, {5}, "[1:10:2]"},
      {1, s1, {0}, {10}, {3}, {4}, "[0:10:3]"},
      {1, s1, {5}, {2}, {1}, {0}, "[5:2] (empty)"},
      {1, s1, {-1}, {-5}, {1}, {0}, "[-1:-5] (empty)"},
      {1, s1, {10}, {20}, {1}, {0}, "[10:20] (empty)"},
      {1, s1, {-2}, {-1}, {1}, {1}, "[-2:-1]"},
      {2, s2, {1, -4}, {-1, 9}, {2, 3}, {3, 2}, "[1:-1:2, -4:9:3]"},
      {2, s2, {0, 0}, {7, 9}, {3, 2}, {3, 5}, "[::3, ::2]"},
      {2, s2, {-5, 3}, {-2, 3}, {1, 1}, {3, 0}, "[-5:-2, 3:3] (empty)"},
      {3, s3, {1, -4, 1}, {4, -1, 6}, {2, 1, 3}, {2, 3, 2}, "[1:4:2, -4:-1, 1:6:3]"},
  };
  for (int d = 0; d < nd; d++) {
    int64_t live0 = zmlx_array_live_count();
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
      zmlx_array *a = upload_values(devs[d], ZMLX_F32, cases[c].ndim, cases[c].shape, base);
      zmlx_array *v = NULL;
      ZT_OK(zmlx_array_slice(a, cases[c].start, cases[c].stop, cases[c].step, &v));
      assert_shape(v, cases[c].ndim, cases[c].want, cases[c].what);
      href h = href_slice(href_dense(cases[c].ndim, cases[c].shape), cases[c].start, cases[c].stop,
                          cases[c].step);
      assert_shape(v, h.ndim, h.shape, cases[c].what);
      if (zmlx_array_size(v)) assert_ptr_equal(v->buffer, a->buffer);
      check_view(v, &h, base, cases[c].what);
      zmlx_array_release(v);
      zmlx_array_release(a);
    }
    /* NULL step means 1. */
    zmlx_array *a = upload_values(devs[d], ZMLX_F32, 2, s2, base), *v = NULL;
    const int64_t b0[2] = {2, 1}, e0[2] = {5, 8};
    ZT_OK(zmlx_array_slice(a, b0, e0, NULL, &v));
    href h = href_slice(href_dense(2, s2), b0, e0, NULL);
    check_view(v, &h, base, "slice with NULL step");
    zmlx_array_release(v);
    zmlx_array_release(a);
    assert_int_equal(zmlx_array_live_count(), live0);
  }
  free(base);
}

static void test_composed_views(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const int64_t s3[3] = {4, 5, 6};
  double *base = iota_values(120);
  for (int d = 0; d < nd; d++) {
    int64_t live0 = zmlx_array_live_count();
    zmlx_array *a = upload_values(devs[d], ZMLX_F32, 3, s3, base);

    /* slice of transpose */
    zmlx_array *t = NULL, *st = NULL;
    ZT_OK(zmlx_array_transpose(a, NULL, &t)); /* [6, 5, 4] */
    const int64_t b1[3] = {1, -3, 0}, e1[3] = {6, 5, 4}, p1[3] = {2, 1, 3};
    ZT_OK(zmlx_array_slice(t, b1, e1, p1, &st));
    href h = href_slice(href_transpose(href_dense(3, s3), NULL), b1, e1, p1);
    const int64_t w1[3] = {3, 3, 2};
    assert_shape(st, 3, w1, "slice of transpose");
    check_view(st, &h, base, "slice of transpose");

    /* transpose of that, then a slice with negative bounds again */
    zmlx_array *tst = NULL, *stst = NULL;
    const int perm[3] = {2, 0, 1};
    ZT_OK(zmlx_array_transpose(st, perm, &tst));
    href h2 = href_transpose(h, perm);
    check_view(tst, &h2, base, "transpose of slice of transpose");
    const int64_t b2[3] = {-1, 0, -2}, e2[3] = {2, 3, 3}, p2[3] = {1, 2, 1};
    ZT_OK(zmlx_array_slice(tst, b2, e2, p2, &stst));
    href h3 = href_slice(h2, b2, e2, p2);
    check_view(stst, &h3, base, "slice of transpose of slice of transpose");

    /* astype and contiguous of a composed view keep the view's element order */
    zmlx_array *c = NULL;
    ZT_OK(zmlx_array_astype(st, ZMLX_I32, &c));
    assert_true(zmlx_array_is_contiguous(c));
    double *want = href_values(&h, base), *got = zt_download(c);
    for (int64_t i = 0; i < href_size(&h); i++) want[i] = (int32_t)want[i];
    assert_exact(got, want, (size_t)href_size(&h), "astype i32 of a composed view");
    free(want);
    free(got);
    zmlx_array_release(c);

    /* contiguous() of a dense array is the array itself */
    ZT_OK(zmlx_array_contiguous(a, &c));
    assert_ptr_equal(c, a);
    zmlx_array_release(c);

    /* item() at strided positions of a view with a nonzero offset */
    const int64_t b4[3] = {1, 2, 1}, e4[3] = {4, 5, 6}, p4[3] = {2, 2, 2};
    zmlx_array *s4 = NULL;
    ZT_OK(zmlx_array_slice(a, b4, e4, p4, &s4));
    assert_false(zmlx_array_is_contiguous(s4));
    assert_int_equal(zmlx_array_offset(s4), 30 + 12 + 1);
    double x;
    ZT_OK(zmlx_array_item(s4, 0, &x));
    assert_true(x == base[43]);
    ZT_OK(zmlx_array_item(s4, zmlx_array_size(s4) - 1, &x));
    assert_true(x == base[3 * 30 + 4 * 6 + 5]);
    href h4 = href_slice(href_dense(3, s3), b4, e4, p4);
    check_view(s4, &h4, base, "stepped slice with offset");

    zmlx_array_release(s4);
    zmlx_array_release(stst);
    zmlx_array_release(tst);
    zmlx_array_release(st);
    zmlx_array_release(t);
    zmlx_array_release(a);
    assert_int_equal(zmlx_array_live_count(), live0);
  }
  free(base);
}

/* ------------------------------------------------------------------ astype */

static const double float_source_values[] = {
    0.0,      -0.0,     0.5,       -0.5,      1.0,        -1.0,         1.75,      -1.75,
    2.5,      -2.5,     3.99,      -3.99,     7.0,        100.25,       200.9,     255.0,
    255.5,    256.0,    -129.5,    127.9,     -128.9,     1e-3,         6e-5,      1e-8,
    65504.0,  65520.0,  70000.0,   -70000.0,  1000000.5,  -123456.75,   2147483520.0,
    3e9,      -3e9,     1e20,      INFINITY,  -INFINITY,  NAN};
static const double int_source_values[] = {
    0,   1,     -1,    2,     -7,       127,       128,         -128,        255,
    256, 300,   -300,  65504, 65505,    2049,      16777217,    123456789,   -2147483647,
    2147483647, 3000000000.0, -5000000000.0, 4503599627370497.0 /* 2^52 + 1 */};
static const double u8_source_values[] = {0, 1, 2, 7, 127, 128, 200, 255};
static const double bool_source_values[] = {0, 1, 1, 0};

/* Values a src element can hold, for the astype table. */
static size_t source_values(zmlx_dtype src, double *out, size_t cap) {
  const double *v;
  size_t n;
  switch (src) {
    case ZMLX_BOOL: v = bool_source_values; n = sizeof bool_source_values / sizeof *v; break;
    case ZMLX_U8: v = u8_source_values; n = sizeof u8_source_values / sizeof *v; break;
    case ZMLX_I32:
    case ZMLX_I64: v = int_source_values; n = sizeof int_source_values / sizeof *v; break;
    default: v = float_source_values; n = sizeof float_source_values / sizeof *v; break;
  }
  size_t k = 0;
  for (size_t i = 0; i < n && k < cap; i++) {
    double x = v[i];
    if (src == ZMLX_I32 && (x < -2147483648.0 || x > 2147483647.0)) continue;
    if (is_float_dtype(src)) x = zt_round_to(src, x);
    out[k++] = x;
  }
  return k;
}

static void test_astype(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const zmlx_dtype types[] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16, ZMLX_I32, ZMLX_I64, ZMLX_U8, ZMLX_BOOL};
  const int nt = (int)(sizeof types / sizeof types[0]);
  double vals[64], keep[64], buf[128], want[128];
  for (int d = 0; d < nd; d++) {
    int64_t live0 = zmlx_array_live_count();
    for (int si = 0; si < nt; si++) {
      zmlx_dtype src = types[si];
      size_t nv = source_values(src, vals, 64);
      for (int di = 0; di < nt; di++) {
        zmlx_dtype dst = types[di];
        /* Keep the values whose conversion C defines. */
        size_t n = 0;
        for (size_t i = 0; i < nv; i++)
          if (conversion_defined(src, dst, vals[i])) keep[n++] = vals[i];
        assert_true(n >= 4);
        /* Interleave: even positions hold keep[i], odd ones keep[n-1-i], so
         * a stride-2 slice is a strided source for the same values. */
        for (size_t i = 0; i < n; i++) {
          buf[2 * i] = keep[i];
          buf[2 * i + 1] = keep[n - 1 - i];
        }
        int64_t len = (int64_t)(2 * n);
        zmlx_array *a = upload_values(devs[d], src, 1, &len, buf);
        char what[96];

        zmlx_array *c = NULL;
        ZT_OK(zmlx_array_astype(a, dst, &c));
        assert_int_equal(zmlx_array_dtype(c), dst);
        assert_shape(c, 1, &len, "astype");
        for (size_t i = 0; i < 2 * n; i++) want[i] = convert_ref(src, dst, buf[i]);
        double *got = zt_download(c);
        for (size_t i = 0; i < 2 * n; i++)
          if (!same_value(got[i], want[i]))
            fail_msg("astype %s -> %s: %.17g became %.17g, host conversion (C casts) gives %.17g", zmlx_dtype_name(src),
                     zmlx_dtype_name(dst), buf[i], got[i], want[i]);
        free(got);
        zmlx_array_release(c);

        const int64_t b0 = 0, e0 = len, s0 = 2;
        zmlx_array *v = NULL;
        ZT_OK(zmlx_array_slice(a, &b0, &e0, &s0, &v));
        ZT_OK(zmlx_array_astype(v, dst, &c));
        assert_true(zmlx_array_is_contiguous(c));
        got = zt_download(c);
        snprintf(what, sizeof what, "astype %s -> %s of a stride-2 view", zmlx_dtype_name(src),
                 zmlx_dtype_name(dst));
        for (size_t i = 0; i < n; i++) want[i] = convert_ref(src, dst, keep[i]);
        assert_exact(got, want, n, what);
        free(got);
        zmlx_array_release(c);
        zmlx_array_release(v);
        zmlx_array_release(a);
      }
    }
    /* 0-d and empty conversions. */
    const double one[1] = {-2.75};
    zmlx_array *s = upload_values(devs[d], ZMLX_F32, 0, NULL, one), *c = NULL;
    ZT_OK(zmlx_array_astype(s, ZMLX_I64, &c));
    double x;
    ZT_OK(zmlx_array_item(c, 0, &x));
    assert_true(x == -2);
    zmlx_array_release(c);
    zmlx_array_release(s);
    const int64_t eshape[2] = {3, 0};
    ZT_OK(zmlx_array_zeros(devs[d], ZMLX_F32, 2, eshape, &s));
    ZT_OK(zmlx_array_astype(s, ZMLX_F16, &c));
    assert_shape(c, 2, eshape, "astype of an empty array");
    assert_int_equal(zmlx_array_dtype(c), ZMLX_F16);
    zmlx_array_release(c);
    zmlx_array_release(s);
    assert_int_equal(zmlx_array_live_count(), live0);
  }
}

/* --------------------------------------------------------------- to_device */

static void test_to_device(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const int64_t shape[2] = {6, 7};
  double *base = iota_values(42);
  int64_t live0 = zmlx_array_live_count();
  /* Same device: a strided view comes back dense with the view's values. */
  for (int d = 0; d < nd; d++) {
    zmlx_array *a = upload_values(devs[d], ZMLX_F32, 2, shape, base), *t = NULL, *c = NULL;
    ZT_OK(zmlx_array_transpose(a, NULL, &t));
    ZT_OK(zmlx_array_to_device(t, devs[d], &c));
    assert_ptr_equal(zmlx_array_device(c), devs[d]);
    assert_true(zmlx_array_is_contiguous(c));
    href h = href_transpose(href_dense(2, shape), NULL);
    check_view(c, &h, base, "to_device on the same device");
    zmlx_array_release(c);
    zmlx_array_release(t);
    zmlx_array_release(a);
  }
  assert_int_equal(zmlx_array_live_count(), live0);
  if (nd < 2) {
    free(base);
    skip();
  }
  /* Across devices (and backends), for a dense array and a strided view,
   * there and back. */
  const zmlx_dtype dts[3] = {ZMLX_F32, ZMLX_I64, ZMLX_BF16};
  double vals[42];
  for (int k = 0; k < 3; k++) {
    /* The base values as dts[k] holds them. */
    for (int i = 0; i < 42; i++) vals[i] = convert_ref(ZMLX_F64, dts[k], base[i]);
    for (int from = 0; from < nd; from++) {
      int to = (from + 1) % nd;
      zmlx_array *a = upload_values(devs[from], dts[k], 2, shape, vals), *b = NULL, *back = NULL;
      ZT_OK(zmlx_array_to_device(a, devs[to], &b));
      assert_ptr_equal(zmlx_array_device(b), devs[to]);
      assert_int_equal(zmlx_array_dtype(b), dts[k]);
      href h = href_dense(2, shape);
      check_view(b, &h, vals, "to_device");
      ZT_OK(zmlx_array_to_device(b, devs[from], &back));
      assert_ptr_equal(zmlx_array_device(back), devs[from]);
      check_view(back, &h, vals, "to_device and back");
      zmlx_array_release(back);
      zmlx_array_release(b);

      const int64_t b0[2] = {1, -6}, e0[2] = {6, 7}, s0[2] = {2, 3};
      zmlx_array *v = NULL;
      ZT_OK(zmlx_array_slice(a, b0, e0, s0, &v));
      ZT_OK(zmlx_array_to_device(v, devs[to], &b));
      assert_ptr_equal(zmlx_array_device(b), devs[to]);
      h = href_slice(href_dense(2, shape), b0, e0, s0);
      check_view(b, &h, vals, "to_device of a strided view");
      zmlx_array_release(b);
      zmlx_array_release(v);
      zmlx_array_release(a);
    }
  }
  assert_int_equal(zmlx_array_live_count(), live0);
  free(base);
}

/* ---------------------------------------------------------------- refcount */

static void test_refcount(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  for (int d = 0; d < nd; d++) {
    int64_t live0 = zmlx_array_live_count();
    const int64_t shape[2] = {8, 16};
    for (int it = 0; it < 40; it++) {
      zmlx_array *a = NULL, *r = NULL, *t = NULL, *s = NULL, *c = NULL, *y = NULL;
      ZT_OK(zmlx_array_full(devs[d], ZMLX_F32, 2, shape, (double)it, &a));
      assert_int_equal(zmlx_array_live_count(), live0 + 1);
      const int64_t rs[3] = {4, -1, 8};
      ZT_OK(zmlx_array_reshape(a, 3, rs, &r));
      ZT_OK(zmlx_array_transpose(r, NULL, &t));
      const int64_t b0[3] = {1, 0, 0}, e0[3] = {8, 4, 4}, s0[3] = {2, 1, 3};
      ZT_OK(zmlx_array_slice(t, b0, e0, s0, &s));
      ZT_OK(zmlx_array_contiguous(s, &c));
      ZT_OK(zmlx_array_astype(c, ZMLX_F16, &y));
      assert_int_equal(zmlx_array_live_count(), live0 + 6);
      ZT_OK(zmlx_array_retain(s));
      zmlx_array_release(s);
      assert_int_equal(zmlx_array_live_count(), live0 + 6);
      double x;
      ZT_OK(zmlx_array_item(y, zmlx_array_size(y) - 1, &x));
      assert_true(x == (double)it);
      /* Release in an order that leaves views outliving their bases. */
      zmlx_array_release(a);
      zmlx_array_release(r);
      ZT_OK(zmlx_array_item(s, 0, &x));
      assert_true(x == (double)it);
      zmlx_array_release(t);
      zmlx_array_release(y);
      zmlx_array_release(c);
      zmlx_array_release(s);
      assert_int_equal(zmlx_array_live_count(), live0);
    }
    ZT_OK(zmlx_array_release(NULL));

    /* A view keeps the data valid after its base is released, even while
     * new allocations of the same size come and go. */
    const int64_t n = 1000;
    double *vals = iota_values(n);
    zmlx_array *a = upload_values(devs[d], ZMLX_F32, 1, &n, vals), *v = NULL;
    const int64_t b0 = 10, e0 = 900, s0 = 7;
    ZT_OK(zmlx_array_slice(a, &b0, &e0, &s0, &v));
    zmlx_array_release(a);
    assert_int_equal(zmlx_array_live_count(), live0 + 1);
    for (int k = 0; k < 4; k++) {
      zmlx_array *junk = NULL;
      ZT_OK(zmlx_array_full(devs[d], ZMLX_F32, 1, &n, 1234.5, &junk));
      zmlx_array_release(junk);
    }
    zmlx_array *junk2 = NULL;
    ZT_OK(zmlx_array_full(devs[d], ZMLX_F32, 1, &n, -1.0, &junk2));
    href h = href_slice(href_dense(1, &n), &b0, &e0, &s0);
    check_view(v, &h, vals, "view after its base was released");
    zmlx_array_release(junk2);
    zmlx_array_release(v);
    free(vals);
    assert_int_equal(zmlx_array_live_count(), live0);
  }
}

/* -------------------------------------------------------------- bad inputs */

/* More memory than a device has is ZMLX_ERR_OUT_OF_MEMORY with the sizes,
 * and the library keeps working (issue 16): one absurd request on every
 * device; on a GPU also its memory filled a chunk at a time until the driver
 * refuses (not on a CPU device: there the "device memory" is the host's, and
 * filling it would only make the machine swap). Afterwards a fill and a sum
 * on the same device give the right value. */
static void test_device_memory_exhaustion(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  for (int d = 0; d < nd; d++) {
    zmlx_device *dev = devs[d];
    const zmlx_device_info info = info_of(dev);
    zmlx_array *a = NULL;
    const int64_t absurd[1] = {(int64_t)1 << 46}; /* 256 TiB of f32 */
    ZT_FAILS(zmlx_array_empty(dev, ZMLX_F32, 1, absurd, &a), ZMLX_ERR_OUT_OF_MEMORY, "bytes");
    assert_null(a);
    if (!info.is_cpu && info.total_memory > 0) {
      enum { MAX_CHUNKS = 40 };
      zmlx_array *chunks[MAX_CHUNKS] = {0};
      const int64_t chunk[1] = {(int64_t)(info.total_memory / 16)}; /* u8: bytes */
      zmlx_status st = ZMLX_OK;
      int n = 0;
      while (n < MAX_CHUNKS && (st = zmlx_array_empty(dev, ZMLX_U8, 1, chunk, &chunks[n])) == ZMLX_OK)
        n++;
      fprintf(stderr, "%s: %d chunks of %lld bytes, then %s: %s\n", info.name, n,
              (long long)chunk[0], zmlx_status_string(st), zmlx_last_error());
      assert_int_equal(st, ZMLX_ERR_OUT_OF_MEMORY);
      assert_true(n >= 1 && n <= 16);
      for (int i = 0; i < n; i++) zmlx_array_release(chunks[i]);
      ZT_OK(zmlx_device_synchronize(dev));
    }
    const int64_t shape[1] = {1 << 20};
    zmlx_array *ones = NULL, *sum = NULL;
    ZT_OK(zmlx_array_full(dev, ZMLX_F32, 1, shape, 0.5, &ones));
    ZT_OK(zmlx_sum(ones, NULL, 0, 0, &sum));
    double total = 0;
    ZT_OK(zmlx_array_item(sum, 0, &total));
    assert_true(total == 0.5 * (1 << 20));
    zmlx_array_release(sum);
    zmlx_array_release(ones);
  }
}

static void test_bad_inputs(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  for (int d = 0; d < nd; d++) {
    zmlx_device *dev = devs[d];
    int64_t live0 = zmlx_array_live_count();
    const int64_t shape[2] = {2, 3};
    const float data[6] = {1, 2, 3, 4, 5, 6};
    zmlx_array *a = NULL, *out = NULL;
    ZT_OK(zmlx_array_from_host(dev, ZMLX_F32, 2, shape, data, &a));
    double x;

    /* NULL out pointers */
    ZT_FAILS(zmlx_array_from_host(dev, ZMLX_F32, 2, shape, data, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_from_host(dev, ZMLX_F32, 2, shape, NULL, &out), ZMLX_ERR_NULL_ARG, "data");
    ZT_FAILS(zmlx_array_empty(dev, ZMLX_F32, 2, shape, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_zeros(dev, ZMLX_F32, 2, shape, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_full(dev, ZMLX_F32, 2, shape, 1.0, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_arange(dev, ZMLX_F32, 0, 1, 4, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_random_uniform(dev, ZMLX_F32, 2, shape, 1, 0, 1, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_random_normal(dev, ZMLX_F32, 2, shape, 1, 0, 1, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_reshape(a, 1, (const int64_t[1]){6}, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_transpose(a, NULL, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_slice(a, (const int64_t[2]){0, 0}, (const int64_t[2]){1, 1}, NULL, NULL),
             ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_contiguous(a, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_astype(a, ZMLX_I32, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_to_device(a, dev, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_item(a, 0, NULL), ZMLX_ERR_NULL_ARG, "out");
    ZT_FAILS(zmlx_array_to_host(a, NULL, 24), ZMLX_ERR_NULL_ARG, "dst");
    ZT_FAILS(zmlx_array_retain(NULL), ZMLX_ERR_NULL_ARG, NULL);
    /* NULL arrays */
    ZT_FAILS(zmlx_array_reshape(NULL, 1, (const int64_t[1]){6}, &out), ZMLX_ERR_NULL_ARG, "a");
    ZT_FAILS(zmlx_array_transpose(NULL, NULL, &out), ZMLX_ERR_NULL_ARG, "a");
    ZT_FAILS(zmlx_array_contiguous(NULL, &out), ZMLX_ERR_NULL_ARG, "a");
    ZT_FAILS(zmlx_array_astype(NULL, ZMLX_F32, &out), ZMLX_ERR_NULL_ARG, "a");
    ZT_FAILS(zmlx_array_item(NULL, 0, &x), ZMLX_ERR_NULL_ARG, "a");
    float host[6];
    ZT_FAILS(zmlx_array_to_host(NULL, host, sizeof host), ZMLX_ERR_NULL_ARG, "a");
    assert_null(out);

    /* Shapes */
    ZT_FAILS(zmlx_array_zeros(dev, ZMLX_F32, 2, NULL, &out), ZMLX_ERR_NULL_ARG, "shape");
    ZT_FAILS(zmlx_array_from_host(dev, ZMLX_F32, 3, NULL, data, &out), ZMLX_ERR_NULL_ARG, "shape");
    const int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    ZT_FAILS(zmlx_array_zeros(dev, ZMLX_F32, 9, nine, &out), ZMLX_ERR_SHAPE, "9");
    ZT_FAILS(zmlx_array_from_host(dev, ZMLX_F32, 9, nine, data, &out), ZMLX_ERR_SHAPE, "ndim 9");
    ZT_FAILS(zmlx_array_empty(dev, ZMLX_F32, -1, shape, &out), ZMLX_ERR_SHAPE, "ndim");
    const int64_t neg[2] = {2, -3};
    ZT_FAILS(zmlx_array_zeros(dev, ZMLX_F32, 2, neg, &out), ZMLX_ERR_SHAPE, "negative");
    ZT_FAILS(zmlx_array_from_host(dev, ZMLX_F32, 2, neg, data, &out), ZMLX_ERR_SHAPE, "-3");
    ZT_FAILS(zmlx_array_arange(dev, ZMLX_F32, 0, 1, -4, &out), ZMLX_ERR_SHAPE, "negative");
    ZT_FAILS(zmlx_array_random_uniform(dev, ZMLX_F32, 2, neg, 1, 0, 1, &out), ZMLX_ERR_SHAPE, "negative");

    /* dtypes */
    ZT_FAILS(zmlx_array_zeros(dev, (zmlx_dtype)99, 2, shape, &out), ZMLX_ERR_DTYPE, "99");
    ZT_FAILS(zmlx_array_from_host(dev, (zmlx_dtype)99, 2, shape, data, &out), ZMLX_ERR_DTYPE, "dtype");
    ZT_FAILS(zmlx_array_astype(a, (zmlx_dtype)99, &out), ZMLX_ERR_DTYPE, "99");
    ZT_FAILS(zmlx_array_full(dev, (zmlx_dtype)-1, 2, shape, 0, &out), ZMLX_ERR_DTYPE, "dtype");
    const zmlx_dtype int_types[4] = {ZMLX_I32, ZMLX_U8, ZMLX_I64, ZMLX_BOOL};
    for (int k = 0; k < 4; k++) {
      ZT_FAILS(zmlx_array_random_uniform(dev, int_types[k], 2, shape, 1, 0, 1, &out),
               ZMLX_ERR_DTYPE, zmlx_dtype_name(int_types[k]));
      ZT_FAILS(zmlx_array_random_normal(dev, int_types[k], 2, shape, 1, 0, 1, &out),
               ZMLX_ERR_DTYPE, "floating");
    }
    assert_null(out);

    /* reshape to a mismatched count names both shapes */
    const int64_t bad[2] = {4, 2};
    ZT_FAILS(zmlx_array_reshape(a, 2, bad, &out), ZMLX_ERR_SHAPE, "[2, 3]");
    ZT_FAILS(zmlx_array_reshape(a, 2, bad, &out), ZMLX_ERR_SHAPE, "[4, 2]");
    const int64_t bad2[2] = {4, -1};
    ZT_FAILS(zmlx_array_reshape(a, 2, bad2, &out), ZMLX_ERR_SHAPE, "[2, 3]");
    const int64_t two_infer[3] = {-1, -1, 6};
    ZT_FAILS(zmlx_array_reshape(a, 3, two_infer, &out), ZMLX_ERR_SHAPE, NULL);
    const int64_t negr[2] = {-2, -3};
    ZT_FAILS(zmlx_array_reshape(a, 2, negr, &out), ZMLX_ERR_SHAPE, NULL);
    ZT_FAILS(zmlx_array_reshape(a, 9, nine, &out), ZMLX_ERR_SHAPE, "9");
    ZT_FAILS(zmlx_array_reshape(a, 2, NULL, &out), ZMLX_ERR_NULL_ARG, NULL);

    /* transpose with a non-permutation */
    ZT_FAILS(zmlx_array_transpose(a, (const int[2]){0, 0}, &out), ZMLX_ERR_INVALID_ARG, "permutation");
    ZT_FAILS(zmlx_array_transpose(a, (const int[2]){0, 2}, &out), ZMLX_ERR_INVALID_ARG, "permutation");
    ZT_FAILS(zmlx_array_transpose(a, (const int[2]){-1, 0}, &out), ZMLX_ERR_INVALID_ARG, "permutation");

    /* slice */
    const int64_t b0[2] = {0, 0}, e0[2] = {2, 3};
    ZT_FAILS(zmlx_array_slice(a, b0, e0, (const int64_t[2]){1, 0}, &out), ZMLX_ERR_INVALID_ARG, "step");
    ZT_FAILS(zmlx_array_slice(a, b0, e0, (const int64_t[2]){-1, 1}, &out), ZMLX_ERR_INVALID_ARG, "step");
    ZT_FAILS(zmlx_array_slice(a, NULL, e0, NULL, &out), ZMLX_ERR_NULL_ARG, NULL);
    ZT_FAILS(zmlx_array_slice(a, b0, NULL, NULL, &out), ZMLX_ERR_NULL_ARG, NULL);

    /* to_host with the wrong byte count */
    ZT_FAILS(zmlx_array_to_host(a, host, sizeof host - 4), ZMLX_ERR_INVALID_ARG, "24");
    ZT_FAILS(zmlx_array_to_host(a, host, sizeof host + 4), ZMLX_ERR_INVALID_ARG, "bytes");
    ZT_FAILS(zmlx_array_to_host(a, host, 0), ZMLX_ERR_INVALID_ARG, "bytes");

    /* item out of range */
    ZT_FAILS(zmlx_array_item(a, 6, &x), ZMLX_ERR_INVALID_ARG, "6");
    ZT_FAILS(zmlx_array_item(a, -1, &x), ZMLX_ERR_INVALID_ARG, "index");
    ZT_FAILS(zmlx_array_item(a, INT64_MAX, &x), ZMLX_ERR_INVALID_ARG, "index");

    assert_null(out);
    /* The array is intact after all of that. */
    float back[6];
    ZT_OK(zmlx_array_to_host(a, back, sizeof back));
    assert_memory_equal(back, data, sizeof data);
    zmlx_array_release(a);
    assert_int_equal(zmlx_array_live_count(), live0);
  }
}

/* A failed reshape leaves *out NULL, like every other call (it used to be
 * left as it was). */
static void test_reshape_failure_clears_out(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  devices(devs);
  int64_t sh[2] = {2, 3}, bad[2] = {4, 4};
  zmlx_array *a = NULL, *out = (zmlx_array *)&sh; /* stale, non-NULL */
  ZT_OK(zmlx_array_zeros(devs[0], ZMLX_F32, 2, sh, &a));
  ZT_FAILS(zmlx_array_reshape(a, 2, bad, &out), ZMLX_ERR_SHAPE, NULL);
  assert_null(out);
  out = (zmlx_array *)&sh;
  ZT_FAILS(zmlx_array_reshape(NULL, 2, bad, &out), ZMLX_ERR_NULL_ARG, NULL);
  assert_null(out);
  zmlx_array_release(a);
}

/* zmlx_device_synchronize waits for every stream of the device: work
 * queued on a stream the caller created is finished when it returns, so a
 * read on the default stream sees it. */
static void test_device_synchronize_waits_on_every_stream(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const char *names[1] = {"x"};
  zmlx_op *op = NULL;
  ZT_OK(zmlx_elementwise("x * 2 + 1", names, 1, NULL, 0, &op));
  for (int d = 0; d < nd; d++) {
    enum { N = 1 << 22 };
    int64_t n = N;
    float *h = malloc(sizeof(float) * N), *back = malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) h[i] = (float)(i % 1000);
    zmlx_stream *s = NULL;
    zmlx_array *x = NULL, *y = NULL;
    ZT_OK(zmlx_stream_create(devs[d], &s));
    ZT_OK(zmlx_array_from_host(devs[d], ZMLX_F32, 1, &n, h, &x));
    ZT_OK(zmlx_op_call(op, &x, 1, NULL, s, &y));
    ZT_OK(zmlx_device_synchronize(devs[d]));
    ZT_OK(zmlx_array_to_host(y, back, sizeof(float) * N));
    for (int i = 0; i < N; i++)
      if (back[i] != h[i] * 2 + 1) fail_msg("element %d: %g after device sync, want %g", i, back[i], h[i] * 2 + 1);
    zmlx_array_release(x), zmlx_array_release(y);
    ZT_OK(zmlx_stream_destroy(s));
    free(h), free(back);
  }
  zmlx_op_destroy(op);
}

/* After zmlx_shutdown an allocation is a status, never a crash (the
 * device's default stream is gone). Runs last: nothing works after it. */
static void test_allocation_after_shutdown(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  devices(devs);
  zmlx_shutdown();
  int64_t sh[1] = {4};
  zmlx_array *a = NULL;
  ZT_FAILS(zmlx_array_zeros(devs[0], ZMLX_F32, 1, sh, &a), ZMLX_ERR_NO_DEVICE, "zmlx_shutdown");
  assert_null(a);
  ZT_FAILS(zmlx_device_synchronize(devs[0]), ZMLX_ERR_NO_DEVICE, "zmlx_shutdown");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_zeros_full),
      cmocka_unit_test(test_arange),
      cmocka_unit_test(test_random_uniform),
      cmocka_unit_test(test_random_normal),
      cmocka_unit_test(test_reshape),
      cmocka_unit_test(test_transpose),
      cmocka_unit_test(test_slice),
      cmocka_unit_test(test_composed_views),
      cmocka_unit_test(test_astype),
      cmocka_unit_test(test_to_device),
      cmocka_unit_test(test_refcount),
      cmocka_unit_test(test_bad_inputs),
      cmocka_unit_test(test_reshape_failure_clears_out),
      cmocka_unit_test(test_device_memory_exhaustion),
      cmocka_unit_test(test_device_synchronize_waits_on_every_stream),
      cmocka_unit_test(test_allocation_after_shutdown), /* last */
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
