/* DLPack import/export: zero-copy exchange with PyTorch, CuPy, NumPy, JAX.
 * CUDA arrays travel as kDLCUDA device pointers; OpenCL arrays as kDLOpenCL
 * with `data` = the cl_mem handle (the DLPack convention for OpenCL). */
#include <dlpack/dlpack.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/internal.h"

/* kDLBool arrived in DLPack 0.8; Debian 12 ships 0.6, so spell out its code. */
#define ZMLX_DL_BOOL 6

/* ------------------------------------------------------------------ dtypes */

static DLDataType dl_dtype(zmlx_dtype dt) {
  DLDataType t = {.lanes = 1, .bits = (uint8_t)(zmlx_dtype_size(dt) * 8)};
  switch (dt) {
    case ZMLX_BOOL: t.code = ZMLX_DL_BOOL; break;
    case ZMLX_U8:
    case ZMLX_U32: t.code = kDLUInt; break;
    case ZMLX_I8:
    case ZMLX_I32:
    case ZMLX_I64: t.code = kDLInt; break;
    case ZMLX_BF16: t.code = kDLBfloat; break;
    default: t.code = kDLFloat; break;
  }
  return t;
}

static zmlx_status from_dl_dtype(DLDataType t, zmlx_dtype *out) {
  if (t.lanes != 1)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "DLPack: vector dtypes (lanes=%u) are not supported", t.lanes);
  struct { int code, bits; zmlx_dtype dt; } map[] = {
      {ZMLX_DL_BOOL, 8, ZMLX_BOOL}, {kDLUInt, 8, ZMLX_U8},   {kDLInt, 8, ZMLX_I8},
      {kDLInt, 32, ZMLX_I32},       {kDLUInt, 32, ZMLX_U32}, {kDLInt, 64, ZMLX_I64},
      {kDLFloat, 16, ZMLX_F16},     {kDLBfloat, 16, ZMLX_BF16}, {kDLFloat, 32, ZMLX_F32},
      {kDLFloat, 64, ZMLX_F64},
  };
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
    if (map[i].code == t.code && map[i].bits == t.bits) {
      *out = map[i].dt;
      return ZMLX_OK;
    }
  return zmlxi_fail(ZMLX_ERR_DTYPE, "DLPack: dtype code %u with %u bits has no zmlx dtype", t.code,
                   t.bits);
}

/* ------------------------------------------------------------------ export */

typedef struct export_ctx {
  DLManagedTensor managed;
  int64_t shape[ZMLX_MAX_DIMS];
  int64_t strides[ZMLX_MAX_DIMS];
  zmlx_array *array; /* keeps the buffer alive until the consumer is done */
} export_ctx;

static void export_deleter(DLManagedTensor *self) {
  export_ctx *ctx = self->manager_ctx;
  zmlx_array_release(ctx->array);
  free(ctx);
}

zmlx_status zmlx_array_to_dlpack(zmlx_array *a, void **dl_managed_tensor) {
  return zmlx_array_to_dlpack_on(a, NULL, dl_managed_tensor);
}

/* Whether a consumer reading on `consumer` is already ordered after the work
 * zmlx queued for `dev` (the thread's current stream). */
static int consumer_is_ordered(zmlx_stream *consumer, zmlx_device *dev) {
  zmlx_stream *cur = zmlxi_stream_or_default(NULL, dev);
  return consumer && consumer->device == dev && consumer->handle == cur->handle;
}

zmlx_status zmlx_array_to_dlpack_on(zmlx_array *a, zmlx_stream *consumer,
                                    void **dl_managed_tensor) {
  ZMLX_REQUIRE_ARG(a);
  ZMLX_REQUIRE_ARG(dl_managed_tensor);
  *dl_managed_tensor = NULL;
  zmlx_device *dev = a->buffer->device;
  if (!dev->ops->dlpack_data)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "DLPack export is not supported on %s",
                     zmlx_backend_name(dev->ops->kind));
  /* Consumers must not see work that is still queued on our stream. */
  if (!consumer_is_ordered(consumer, dev))
    ZMLX_CHECK(zmlx_stream_synchronize(zmlxi_stream_or_default(NULL, dev)));
  export_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  memcpy(ctx->shape, a->shape, sizeof ctx->shape);
  memcpy(ctx->strides, a->strides, sizeof ctx->strides);
  zmlx_array_retain(a);
  ctx->array = a;
  DLTensor *t = &ctx->managed.dl_tensor;
  size_t byte_offset = (size_t)a->offset * zmlx_dtype_size(a->dtype);
  void *data = dev->ops->dlpack_data(a->buffer->handle);
  if (dev->ops->buffer_is_address) {
    /* Fold the offset into the pointer: some consumers ignore byte_offset. */
    data = (char *)data + byte_offset;
    byte_offset = 0;
  }
  t->data = data;
  t->byte_offset = byte_offset;
  t->device = (DLDevice){.device_type = (DLDeviceType)dev->ops->dlpack_device_type,
                         .device_id = dev->index};
  t->ndim = a->ndim;
  t->dtype = dl_dtype(a->dtype);
  t->shape = ctx->shape;
  t->strides = ctx->strides;
  ctx->managed.manager_ctx = ctx;
  ctx->managed.deleter = export_deleter;
  *dl_managed_tensor = &ctx->managed;
  return ZMLX_OK;
}

/* ------------------------------------------------------------------ import */

static void call_deleter(void *ctx) {
  DLManagedTensor *m = ctx;
  if (m->deleter) m->deleter(m);
}

/* Span of elements a strided tensor touches, and whether it is dense. */
static int64_t extent_elements(const DLTensor *t, int *dense) {
  int64_t expect = 1, hi = 0;
  *dense = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    int64_t stride = t->strides ? t->strides[i] : expect;
    if (t->shape[i] == 0) return 0;
    if (t->shape[i] != 1 && stride != expect) *dense = 0;
    if (stride < 0) *dense = -1;
    hi += (t->shape[i] - 1) * stride;
    expect *= t->shape[i];
  }
  return hi + 1;
}

static zmlx_status device_for_dl(const DLDevice *d, zmlx_device *dev, zmlx_device **out) {
  if (dev) {
    *out = dev;
    return ZMLX_OK;
  }
  zmlx_backend b = zmlxi_backend_for_dlpack((int)d->device_type);
  if (b != ZMLX_BACKEND_AUTO) return zmlx_device_get(b, d->device_id, out);
  return zmlx_default_device(out);
}

/* kDLCPU tensors: gather into a dense host copy, upload, then free theirs. */
static zmlx_status import_from_host(DLManagedTensor *m, zmlx_dtype dt, zmlx_device *dev,
                                    zmlx_array **out) {
  const DLTensor *t = &m->dl_tensor;
  size_t es = zmlx_dtype_size(dt);
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  unsigned char *dense = malloc(n ? (size_t)n * es : 1);
  if (!dense) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  const unsigned char *base = (const unsigned char *)t->data + t->byte_offset;
  int64_t strides[ZMLX_MAX_DIMS];
  if (t->strides) memcpy(strides, t->strides, (size_t)t->ndim * sizeof *strides);
  else zmlxi_contiguous_strides(t->ndim, t->shape, strides);
  for (int64_t i = 0; i < n; i++) {
    int64_t rem = i, off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
      off += (rem % t->shape[d]) * strides[d];
      rem /= t->shape[d];
    }
    memcpy(dense + (size_t)i * es, base + off * (int64_t)es, es);
  }
  zmlx_status st = zmlx_array_from_host(dev, dt, t->ndim, t->shape, dense, out);
  free(dense);
  if (st == ZMLX_OK) call_deleter(m);
  return st;
}

static zmlx_status import_zero_copy(DLManagedTensor *m, zmlx_dtype dt, zmlx_device *dev,
                                    zmlx_array **out) {
  const DLTensor *t = &m->dl_tensor;
  size_t es = zmlx_dtype_size(dt);
  int dense;
  int64_t extent = extent_elements(t, &dense);
  if (dense < 0) return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "DLPack: negative strides are not supported");
  if (t->byte_offset % es)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "DLPack: byte_offset %llu is not a multiple of the "
                     "element size %zu", (unsigned long long)t->byte_offset, es);
  if (!dev->ops->wrap_foreign)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "DLPack import is not supported on %s",
                     zmlx_backend_name(dev->ops->kind));
  zmlx_buffer *b = calloc(1, sizeof *b);
  zmlx_array *a = NULL;
  int64_t strides[ZMLX_MAX_DIMS];
  if (!b) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlx_status st = dev->ops->wrap_foreign(dev->index, t->data, (size_t)extent * es + t->byte_offset,
                                          &b->handle);
  if (st != ZMLX_OK) {
    free(b);
    return st;
  }
  atomic_init(&b->refcount, 1);
  b->device = dev;
  b->bytes = (size_t)extent * es + t->byte_offset;
  b->release_foreign = call_deleter;
  b->foreign_ctx = m;
  if (t->strides) memcpy(strides, t->strides, (size_t)t->ndim * sizeof *strides);
  else zmlxi_contiguous_strides(t->ndim, t->shape, strides);
  /* A temporary owner so make_view can take its buffer reference. */
  zmlx_array owner = {.dtype = dt, .buffer = b};
  st = zmlxi_array_make_view(&owner, t->ndim, t->shape, strides, (int64_t)(t->byte_offset / es), &a);
  atomic_fetch_sub(&b->refcount, 1); /* drop the temporary owner's reference */
  if (st != ZMLX_OK) {
    call_deleter(m);
    free(b);
    return st;
  }
  *out = a;
  return ZMLX_OK;
}

zmlx_status zmlx_array_from_dlpack(void *dl_managed_tensor, zmlx_device *dev, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(dl_managed_tensor);
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  DLManagedTensor *m = dl_managed_tensor;
  const DLTensor *t = &m->dl_tensor;
  zmlx_dtype dt = ZMLX_F32;
  int64_t size = 0;
  ZMLX_CHECK(from_dl_dtype(t->dtype, &dt));
  ZMLX_CHECK(zmlxi_check_shape(dt, t->ndim, t->shape, &size));
  if (!t->data && size)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "DLPack: tensor data is NULL");
  ZMLX_CHECK(device_for_dl(&t->device, dev, &dev));
  if (t->device.device_type == kDLCPU || t->device.device_type == kDLCUDAHost)
    return import_from_host(m, dt, dev, out);
  if ((int)t->device.device_type != dev->ops->dlpack_device_type || t->device.device_id != dev->index)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "DLPack: tensor lives on device type %d id %d, not on "
                     "%s device %d", (int)t->device.device_type, t->device.device_id,
                     zmlx_backend_name(dev->ops->kind), dev->index);
  return import_zero_copy(m, dt, dev, out);
}
