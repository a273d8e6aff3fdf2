/* zmlx_array: reference-counted, strided views over shared device buffers. */
#include "runtime/graph.h"
#include "runtime/internal.h"

#include <stdlib.h>
#include <string.h>

atomic_llong zmlxi_live_arrays;

/* ------------------------------------------------------------------ buffers */

static zmlx_status buffer_create(zmlx_device *dev, zmlx_stream *s, size_t bytes,
                                 zmlx_buffer **out) {
  /* more than the device has: refused here with the sizes, whatever the
   * driver would say (some accept any size and fail at first use) */
  if (dev->info.total_memory && bytes > dev->info.total_memory)
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes on %s, which has %zu "
                     "bytes of memory", bytes, dev->info.name, dev->info.total_memory);
  zmlx_buffer *b = calloc(1, sizeof *b);
  if (!b) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  /* inside a capture: no guard zone (arming it writes from the host) and
   * no stream-ordered allocation (it would become part of a CUDA graph) */
  const int capturing = zmlxi_capture_on(dev) != NULL;
  const size_t guard = capturing ? 0 : zmlxi_guard_bytes();
  b->unordered = capturing && dev->ops->alloc_unordered;
  zmlx_status st = b->unordered ? dev->ops->alloc_unordered(dev->index, bytes, &b->handle)
                                : dev->ops->alloc(dev->index, s->handle, bytes + guard, &b->handle);
  if (st != ZMLX_OK) {
    free(b);
    return st;
  }
  if (guard && (st = zmlxi_guard_arm(dev, s->handle, b->handle, bytes)) != ZMLX_OK) {
    dev->ops->free(dev->index, s->handle, b->handle);
    free(b);
    return st;
  }
  b->guarded = guard != 0;
  if (!s->is_default) {
    zmlxi_stream_retain(s);
    b->stream = s;
  }
  atomic_init(&b->refcount, 1);
  b->device = dev;
  b->bytes = bytes;
  *out = b;
  return ZMLX_OK;
}

void zmlxi_buffer_free_now(zmlx_buffer *b) {
  if (b->release_foreign)
    b->release_foreign(b->foreign_ctx);
  else if (b->device->default_stream) { /* NULL after zmlx_shutdown(): memory went with it */
    void *stream = (b->stream ? b->stream : b->device->default_stream)->handle;
    if (b->guarded) zmlxi_guard_check(b->device, stream, b->handle, b->bytes);
    if (b->unordered)
      b->device->ops->free_unordered(b->device->index, b->handle);
    else
      b->device->ops->free(b->device->index, stream, b->handle);
  }
  zmlxi_stream_release(b->stream);
  free(b);
}

void zmlxi_buffer_release(zmlx_buffer *b) {
  if (atomic_fetch_sub(&b->refcount, 1) != 1) return;
  if (!zmlxi_capture_defer_free(b)) zmlxi_buffer_free_now(b);
}

static zmlx_array *array_new(zmlx_dtype dt, int ndim, const int64_t *shape) {
  zmlx_array *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  atomic_init(&a->refcount, 1);
  a->dtype = dt;
  a->ndim = ndim;
  a->size = 1;
  for (int i = 0; i < ndim; i++) {
    a->shape[i] = shape[i];
    a->size *= shape[i];
  }
  atomic_fetch_add(&zmlxi_live_arrays, 1);
  return a;
}

zmlx_status zmlxi_array_alloc(zmlx_device *dev, zmlx_stream *s, zmlx_dtype dt, int ndim,
                             const int64_t *shape, zmlx_array **out) {
  int64_t size = 0;
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(zmlxi_check_shape(dt, ndim, shape, &size));
  ZMLX_CHECK(zmlxi_device_resolve(dev, &dev));
  s = zmlxi_stream_or_default(s, dev);
  if (!s) /* zmlx_shutdown released the device's streams and memory */
    return zmlxi_fail(ZMLX_ERR_NO_DEVICE, "device '%s': zmlx_shutdown was called; no allocation "
                     "is possible after it", dev->info.name);
  if (dt == ZMLX_F64 && !dev->info.has_fp64)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "device '%s' has no f64 support", dev->info.name);
  zmlx_array *a = array_new(dt, ndim, shape);
  if (!a) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlxi_contiguous_strides(ndim, shape, a->strides);
  zmlx_status st = buffer_create(dev, s, (size_t)size * zmlx_dtype_size(dt), &a->buffer);
  if (st != ZMLX_OK) {
    atomic_fetch_sub(&zmlxi_live_arrays, 1);
    free(a);
    return st;
  }
  *out = a;
  return ZMLX_OK;
}

zmlx_status zmlxi_array_make_view(zmlx_array *base, int ndim, const int64_t *shape,
                                 const int64_t *strides, int64_t offset, zmlx_array **out) {
  zmlx_array *a = array_new(base->dtype, ndim, shape);
  if (!a) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int i = 0; i < ndim; i++) a->strides[i] = strides[i];
  a->offset = offset;
  a->buffer = base->buffer;
  atomic_fetch_add(&a->buffer->refcount, 1);
  *out = a;
  return ZMLX_OK;
}

/* ----------------------------------------------------------------- creation */

zmlx_status zmlx_array_empty(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                             zmlx_array **out) {
  return zmlxi_array_alloc(dev, NULL, dt, ndim, shape, out);
}

zmlx_status zmlx_array_from_host(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                                 const void *data, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(data);
  ZMLX_CHECK(zmlxi_device_resolve(dev, &dev));
  ZMLX_CHECK(zmlxi_capture_refuse(dev, "zmlx_array_from_host (a host write)"));
  ZMLX_CHECK(zmlxi_array_alloc(dev, NULL, dt, ndim, shape, out));
  zmlx_array *a = *out;
  zmlx_device *d = a->buffer->device;
  size_t bytes = (size_t)a->size * zmlx_dtype_size(dt);
  zmlx_status st = bytes ? d->ops->write(d->index, zmlxi_stream_or_default(NULL, d)->handle, a->buffer->handle,
                                         0, data, bytes)
                         : ZMLX_OK;
  if (st != ZMLX_OK) {
    zmlx_array_release(a);
    *out = NULL;
  }
  return st;
}

/* ------------------------------------------------------- reference counting */

zmlx_status zmlx_array_retain(zmlx_array *a) {
  ZMLX_REQUIRE_ARG(a);
  atomic_fetch_add(&a->refcount, 1);
  return ZMLX_OK;
}

zmlx_status zmlx_array_release(zmlx_array *a) {
  if (!a) return ZMLX_OK;
  if (atomic_fetch_sub(&a->refcount, 1) != 1) return ZMLX_OK;
  zmlxi_buffer_release(a->buffer);
  atomic_fetch_sub(&zmlxi_live_arrays, 1);
  free(a);
  return ZMLX_OK;
}

int64_t zmlx_array_live_count(void) { return atomic_load(&zmlxi_live_arrays); }

/* ------------------------------------------------------------ introspection */

zmlx_dtype zmlx_array_dtype(const zmlx_array *a) { return a->dtype; }
int zmlx_array_ndim(const zmlx_array *a) { return a->ndim; }
const int64_t *zmlx_array_shape(const zmlx_array *a) { return a->shape; }
const int64_t *zmlx_array_strides(const zmlx_array *a) { return a->strides; }
int64_t zmlx_array_offset(const zmlx_array *a) { return a->offset; }
int64_t zmlx_array_size(const zmlx_array *a) { return a->size; }
size_t zmlx_array_nbytes(const zmlx_array *a) {
  return (size_t)a->size * zmlx_dtype_size(a->dtype);
}
zmlx_device *zmlx_array_device(const zmlx_array *a) { return a->buffer->device; }

int zmlx_array_is_contiguous(const zmlx_array *a) {
  int64_t expect = 1;
  for (int i = a->ndim - 1; i >= 0; i--) {
    if (a->shape[i] != 1 && a->strides[i] != expect) return a->size == 0;
    expect *= a->shape[i];
  }
  return 1;
}

/* --------------------------------------------------------------- host access */

static double element_to_double(zmlx_dtype dt, const void *p) {
  switch (dt) {
    case ZMLX_BOOL:
    case ZMLX_U8: return *(const uint8_t *)p;
    case ZMLX_I8: return *(const int8_t *)p;
    case ZMLX_I32: return *(const int32_t *)p;
    case ZMLX_U32: return *(const uint32_t *)p;
    case ZMLX_I64: return (double)*(const int64_t *)p;
    case ZMLX_F16: return zmlx_f16_to_f32(*(const uint16_t *)p);
    case ZMLX_BF16: return zmlx_bf16_to_f32(*(const uint16_t *)p);
    case ZMLX_F32: return *(const float *)p;
    case ZMLX_F64: return *(const double *)p;
    default: return 0;
  }
}

zmlx_status zmlx_array_item(zmlx_array *a, int64_t flat_index, double *out) {
  ZMLX_REQUIRE_ARG(a);
  ZMLX_REQUIRE_ARG(out);
  if (flat_index < 0 || flat_index >= a->size)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "item: index %lld outside an array of %lld elements",
                     (long long)flat_index, (long long)a->size);
  int64_t off = a->offset, rem = flat_index;
  for (int i = a->ndim - 1; i >= 0; i--) {
    off += (rem % a->shape[i]) * a->strides[i];
    rem /= a->shape[i];
  }
  unsigned char tmp[8];
  zmlx_device *d = a->buffer->device;
  ZMLX_CHECK(zmlxi_capture_refuse(d, "zmlx_array_item (a host read)"));
  size_t es = zmlx_dtype_size(a->dtype);
  ZMLX_CHECK(d->ops->read(d->index, zmlxi_stream_or_default(NULL, d)->handle, a->buffer->handle,
                          (size_t)off * es, tmp, es));
  *out = element_to_double(a->dtype, tmp);
  return ZMLX_OK;
}

zmlx_status zmlx_array_write_host(zmlx_array *a, const void *src, size_t src_bytes) {
  ZMLX_REQUIRE_ARG(a);
  const size_t bytes = (size_t)a->size * zmlx_dtype_size(a->dtype);
  if (bytes) ZMLX_REQUIRE_ARG(src);
  if (!zmlx_array_is_contiguous(a))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_array_write_host: the array is a strided view "
                     "(write into a contiguous array)");
  if (src_bytes != bytes)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_array_write_host: %zu bytes for an array of %zu "
                     "bytes (%lld x %s)", src_bytes, bytes, (long long)a->size,
                     zmlx_dtype_name(a->dtype));
  zmlx_device *d = a->buffer->device;
  ZMLX_CHECK(zmlxi_capture_refuse(d, "zmlx_array_write_host (a host write)"));
  if (!bytes) return ZMLX_OK;
  return d->ops->write(d->index, zmlxi_stream_or_default(NULL, d)->handle, a->buffer->handle,
                       (size_t)a->offset * zmlx_dtype_size(a->dtype), src, bytes);
}

/* -------------------------------------------------------------------- views */

/* Checks a reshape of a to (ndim, shape) and resolves its -1 into resolved. */
zmlx_status zmlxi_reshape_resolve(const zmlx_array *a, int ndim, const int64_t *shape,
                                  int64_t *resolved) {
  if (ndim && !shape) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "reshape: shape is NULL with ndim %d", ndim);
  if (ndim < 0 || ndim > ZMLX_MAX_DIMS)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "reshape: ndim %d is outside 0..%d", ndim, ZMLX_MAX_DIMS);
  int64_t known = 1;
  int infer = -1;
  for (int i = 0; i < ndim; i++) {
    resolved[i] = shape[i];
    if (shape[i] == -1 && infer < 0) {
      infer = i;
      continue;
    }
    if (shape[i] < 0) return zmlxi_fail(ZMLX_ERR_SHAPE, "reshape: invalid size %lld", (long long)shape[i]);
    known *= shape[i];
  }
  if (infer >= 0) resolved[infer] = known ? a->size / known : 0;
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= resolved[i];
  if (n != a->size) {
    char b1[200], b2[200];
    return zmlxi_fail(ZMLX_ERR_SHAPE, "reshape: cannot view shape %s (%lld elements) as %s",
                     zmlxi_shape_str(b1, sizeof b1, a->ndim, a->shape), (long long)a->size,
                     zmlxi_shape_str(b2, sizeof b2, ndim, shape));
  }
  return ZMLX_OK;
}

zmlx_status zmlx_array_transpose(zmlx_array *a, const int *perm, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(a);
  ZMLX_REQUIRE_ARG(out);
  int p[ZMLX_MAX_DIMS], seen[ZMLX_MAX_DIMS] = {0};
  for (int i = 0; i < a->ndim; i++) {
    p[i] = perm ? perm[i] : a->ndim - 1 - i;
    if (p[i] < 0 || p[i] >= a->ndim || seen[p[i]]++)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "transpose: axis list is not a permutation of 0..%d",
                       a->ndim - 1);
  }
  int64_t shape[ZMLX_MAX_DIMS], strides[ZMLX_MAX_DIMS];
  for (int i = 0; i < a->ndim; i++) {
    shape[i] = a->shape[p[i]];
    strides[i] = a->strides[p[i]];
  }
  return zmlxi_array_make_view(a, a->ndim, shape, strides, a->offset, out);
}

/* Python's slice.indices() for step > 0. */
static int64_t clamp_index(int64_t i, int64_t n) {
  if (i < 0) i += n;
  if (i < 0) return 0;
  return i > n ? n : i;
}

zmlx_status zmlx_array_slice(zmlx_array *a, const int64_t *start, const int64_t *stop,
                             const int64_t *step, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(a);
  ZMLX_REQUIRE_ARG(out);
  if (a->ndim && (!start || !stop))
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "slice: start and stop are required");
  int64_t shape[ZMLX_MAX_DIMS], strides[ZMLX_MAX_DIMS], offset = a->offset;
  for (int i = 0; i < a->ndim; i++) {
    int64_t st = step ? step[i] : 1;
    if (st <= 0) return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "slice: step %lld on axis %d must be > 0",
                                  (long long)st, i);
    int64_t b = clamp_index(start[i], a->shape[i]), e = clamp_index(stop[i], a->shape[i]);
    shape[i] = e > b ? (e - b + st - 1) / st : 0;
    strides[i] = a->strides[i] * st;
    if (shape[i]) offset += b * a->strides[i];
  }
  return zmlxi_array_make_view(a, a->ndim, shape, strides, offset, out);
}

