#include "test_support.h"

#include "check/check_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int skipped_cases;

void zt_note_skip(void) { skipped_cases++; }

int zt_finish(int failed, int total) {
  int skipped = skipped_cases;
  int passed = total - failed - skipped;
  if (passed < 0) passed = 0;
  fprintf(stderr, "[zmlx test] %d passed, %d failed, %d skipped\n", passed, failed, skipped);
  if (failed) return 1;
  return skipped && skipped == total ? 77 : 0;
}

int zt_devices(zmlx_device **devs, int cap) {
  const char *only = getenv("ZMLX_TEST_BACKEND");
  zmlx_backend order[2] = {ZMLX_BACKEND_CUDA, ZMLX_BACKEND_OPENCL};
  int n = 0;
  for (int i = 0; i < 2 && n < cap; i++) {
    if (only && *only && strcmp(only, zmlx_backend_name(order[i]))) continue;
    int count = 0;
    if (zmlx_device_count(order[i], &count) == ZMLX_OK && count > 0 &&
        zmlx_device_get(order[i], 0, &devs[n]) == ZMLX_OK)
      n++;
  }
  return n;
}

void zt_for_each_device(void (*fn)(zmlx_device *)) {
  zmlx_device *devs[4];
  int nd = zt_devices(devs, 4);
  if (nd == 0) skip();
  for (int d = 0; d < nd; d++) fn(devs[d]);
}

void zt_expect_failure(zmlx_status got, zmlx_status want, const char *needle, const char *what) {
  if (got != want)
    fail_msg("%s: expected %s, got %s (%s)", what, zmlx_status_string(want),
             zmlx_status_string(got), zmlx_last_error());
  if (needle && !strstr(zmlx_last_error(), needle))
    fail_msg("%s: message '%s' does not mention '%s'", what, zmlx_last_error(), needle);
}

uint64_t zt_seed(void) {
  static uint64_t seed;
  if (!seed) {
    const char *env = getenv("ZMLX_TEST_SEED");
    seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    if (!seed) seed = 1;
    fprintf(stderr, "[zmlx test] random seed %llu (set ZMLX_TEST_SEED to repeat)\n",
            (unsigned long long)seed);
  }
  return seed;
}

void zt_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t *state) {
  for (size_t i = 0; i < n; i++) {
    x[i] = (float)zck_uniform(state, lo, hi);
  }
}

void *zt_pack(zmlx_dtype dt, const float *src, size_t n) {
  unsigned char *out = malloc(n * zmlx_dtype_size(dt) + 1);
  assert_non_null(out);
  for (size_t i = 0; i < n; i++) zck_store(dt, out, (int64_t)i, src[i]);
  return out;
}

double zt_decode(zmlx_dtype dt, const void *vp) { return zck_load(dt, vp, 0); }

double *zt_download(zmlx_array *a) {
  double *out = NULL;
  ZT_OK(zck_download(a, &out));
  return out;
}

zmlx_array *zt_array(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                     const float *values) {
  size_t n = 1;
  for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
  void *packed = zt_pack(dt, values, n);
  zmlx_array *a = NULL;
  ZT_OK(zmlx_array_from_host(dev, dt, ndim, shape, packed, &a));
  free(packed);
  return a;
}

zmlx_array *zt_poisoned(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape) {
  size_t n = 1, es = zmlx_dtype_size(dt);
  for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
  unsigned char *buf = malloc(n * es + 1);
  assert_non_null(buf);
  if (dt == ZMLX_F32) for (size_t i = 0; i < n; i++) ((float *)buf)[i] = NAN;
  else if (dt == ZMLX_F64) for (size_t i = 0; i < n; i++) ((double *)buf)[i] = NAN;
  else if (dt == ZMLX_F16) for (size_t i = 0; i < n; i++) ((uint16_t *)buf)[i] = 0x7e00;
  else if (dt == ZMLX_BF16) for (size_t i = 0; i < n; i++) ((uint16_t *)buf)[i] = 0x7fc0;
  else memset(buf, 0x5A, n * es);
  zmlx_array *a = NULL;
  ZT_OK(zmlx_array_from_host(dev, dt, ndim, shape, buf, &a));
  free(buf);
  return a;
}

double zt_tolerance(zmlx_dtype dt) {
  switch (dt) {
    case ZMLX_F16: return 2e-3;
    case ZMLX_BF16: return 1.6e-2;
    case ZMLX_F32: return 2e-5;
    case ZMLX_F64: return 1e-12;
    default: return 0;
  }
}

void zt_assert_close(const double *got, const double *want, size_t n, double atol, double rtol,
                     const char *what) {
  for (size_t i = 0; i < n; i++) {
    int ok = isnan(want[i]) ? isnan(got[i]) : fabs(got[i] - want[i]) <= atol + rtol * fabs(want[i]);
    if (!ok)
      fail_msg("%s: element %zu is %.9g, expected %.9g (atol %g, rtol %g)", what, i, got[i],
               want[i], atol, rtol);
  }
}

double zt_round_to(zmlx_dtype dt, double v) { return zck_round(dt, v); }
