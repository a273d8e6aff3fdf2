/*
 * The array calls of zmlx.h that launch kernels (the built-ins of
 * builtins.c): fill, arange, random, copies and casts, and what needs a
 * dense copy first (reading a strided array to the host, reshaping one).
 * They live above the runtime, which only allocates, views and transfers,
 * so that the runtime never calls up into the kernel layer.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/graph.h"
#include "kernel/kernel.h"
#include "runtime/internal.h"

zmlx_status zmlx_array_full(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                            double value, zmlx_array **out) {
  ZMLX_CHECK(zmlxi_array_alloc(dev, NULL, dt, ndim, shape, out));
  zmlx_status st = zmlxi_builtin_fill(*out, value, NULL);
  if (st != ZMLX_OK) {
    zmlx_array_release(*out);
    *out = NULL;
  }
  return st;
}

zmlx_status zmlx_array_zeros(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                             zmlx_array **out) {
  return zmlx_array_full(dev, dt, ndim, shape, 0.0, out);
}

zmlx_status zmlx_array_arange(zmlx_device *dev, zmlx_dtype dt, double start, double step,
                              int64_t n, zmlx_array **out) {
  if (n < 0) return zmlxi_fail(ZMLX_ERR_SHAPE, "arange: negative length %lld", (long long)n);
  ZMLX_CHECK(zmlxi_array_alloc(dev, NULL, dt, 1, &n, out));
  zmlx_status st = zmlxi_builtin_arange(*out, start, step, NULL);
  if (st != ZMLX_OK) {
    zmlx_array_release(*out);
    *out = NULL;
  }
  return st;
}

static zmlx_status random_array(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                                uint64_t seed, int normal, double p0, double p1,
                                zmlx_array **out) {
  if (dt != ZMLX_F32 && dt != ZMLX_F16 && dt != ZMLX_BF16 && dt != ZMLX_F64)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "random arrays must be floating point, not %s",
                     zmlx_dtype_name(dt));
  if (normal && !(isfinite(p0) && isfinite(p1) && p1 >= 0))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "random_normal: mean %g and stddev %g must be finite, "
                     "stddev >= 0", p0, p1);
  if (!normal && !(isfinite(p0) && isfinite(p1) && p0 <= p1))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "random_uniform: low %g and high %g must be finite, "
                     "low <= high", p0, p1);
  ZMLX_CHECK(zmlxi_array_alloc(dev, NULL, dt, ndim, shape, out));
  zmlx_status st = zmlxi_builtin_random(*out, seed, normal, p0, p1, NULL);
  if (st != ZMLX_OK) {
    zmlx_array_release(*out);
    *out = NULL;
  }
  return st;
}

zmlx_status zmlx_array_random_uniform(zmlx_device *dev, zmlx_dtype dt, int ndim,
                                      const int64_t *shape, uint64_t seed, double low,
                                      double high, zmlx_array **out) {
  return random_array(dev, dt, ndim, shape, seed, 0, low, high, out);
}

zmlx_status zmlx_array_random_normal(zmlx_device *dev, zmlx_dtype dt, int ndim,
                                     const int64_t *shape, uint64_t seed, double mean,
                                     double stddev, zmlx_array **out) {
  return random_array(dev, dt, ndim, shape, seed, 1, mean, stddev, out);
}

zmlx_status zmlx_array_to_host(zmlx_array *a, void *dst, size_t dst_bytes) {
  ZMLX_REQUIRE_ARG(a);
  ZMLX_REQUIRE_ARG(dst);
  size_t bytes = zmlx_array_nbytes(a);
  if (dst_bytes != bytes)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "to_host: destination has %zu bytes, array has %zu",
                     dst_bytes, bytes);
  if (bytes == 0) return ZMLX_OK;
  ZMLX_CHECK(zmlxi_capture_refuse(a->buffer->device, "zmlx_array_to_host (a host read)"));
  zmlx_array *dense = NULL;
  ZMLX_CHECK(zmlx_array_contiguous(a, &dense));
  zmlx_device *d = dense->buffer->device;
  zmlx_status st =
      d->ops->read(d->index, zmlxi_stream_or_default(NULL, d)->handle, dense->buffer->handle,
                   (size_t)dense->offset * zmlx_dtype_size(dense->dtype), dst, bytes);
  zmlx_array_release(dense);
  return st;
}

zmlx_status zmlx_array_contiguous(zmlx_array *a, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(a);
  ZMLX_REQUIRE_ARG(out);
  if (zmlx_array_is_contiguous(a)) {
    atomic_fetch_add(&a->refcount, 1);
    *out = a;
    return ZMLX_OK;
  }
  return zmlx_array_astype(a, a->dtype, out);
}

zmlx_status zmlx_array_astype(zmlx_array *a, zmlx_dtype dt, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(a);
  ZMLX_REQUIRE_ARG(out);
  ZMLX_CHECK(zmlxi_array_alloc(a->buffer->device, NULL, dt, a->ndim, a->shape, out));
  zmlx_status st = a->size ? zmlxi_builtin_copy(a, *out, NULL) : ZMLX_OK;
  if (st != ZMLX_OK) {
    zmlx_array_release(*out);
    *out = NULL;
  }
  return st;
}

zmlx_status zmlx_array_to_device(zmlx_array *a, zmlx_device *dev, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(a);
  ZMLX_REQUIRE_ARG(out);
  ZMLX_CHECK(zmlxi_device_resolve(dev, &dev));
  if (dev == a->buffer->device) return zmlx_array_contiguous(a, out);
  size_t bytes = zmlx_array_nbytes(a);
  void *tmp = malloc(bytes ? bytes : 1);
  if (!tmp) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory (%zu bytes)", bytes);
  zmlx_status st = zmlx_array_to_host(a, tmp, bytes);
  if (st == ZMLX_OK) st = zmlx_array_from_host(dev, a->dtype, a->ndim, a->shape, tmp, out);
  free(tmp);
  return st;
}

zmlx_status zmlx_array_reshape(zmlx_array *a, int ndim, const int64_t *shape, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL; /* like every other call: a failure leaves no stale handle */
  ZMLX_REQUIRE_ARG(a);
  int64_t resolved[ZMLX_MAX_DIMS];
  ZMLX_CHECK(zmlxi_reshape_resolve(a, ndim, shape, resolved));
  zmlx_array *src = NULL;
  ZMLX_CHECK(zmlx_array_contiguous(a, &src));
  int64_t strides[ZMLX_MAX_DIMS];
  zmlxi_contiguous_strides(ndim, resolved, strides);
  zmlx_status st = zmlxi_array_make_view(src, ndim, resolved, strides, src->offset, out);
  zmlx_array_release(src);
  return st;
}
