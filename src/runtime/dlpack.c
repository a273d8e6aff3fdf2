/* DLPack import/export: zero-copy exchange with PyTorch, CuPy, NumPy, JAX.
 * CUDA arrays travel as kDLCUDA device pointers; OpenCL arrays as kDLOpenCL
 * with `data` = the cl_mem handle (the DLPack convention for OpenCL). */
#include <dlpack/dlpack.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/dlpack_check.h"
#include "runtime/internal.h"

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
static zmlx_status import_from_host(DLManagedTensor *m, zmlx_dtype dt, int64_t n, zmlx_device *dev,
                                    zmlx_array **out) {
  const DLTensor *t = &m->dl_tensor;
  size_t es = zmlx_dtype_size(dt);
  unsigned char *dense = malloc(n ? (size_t)n * es : 1);
  if (!dense) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  if (n) zmlxi_dlpack_gather(t, es, dense);
  zmlx_status st = zmlx_array_from_host(dev, dt, t->ndim, t->shape, dense, out);
  free(dense);
  if (st == ZMLX_OK) call_deleter(m);
  return st;
}

static zmlx_status import_zero_copy(DLManagedTensor *m, zmlx_dtype dt, const zmlxi_dl_span *span,
                                    zmlx_device *dev, zmlx_array **out) {
  const DLTensor *t = &m->dl_tensor;
  size_t es = zmlx_dtype_size(dt);
  if (span->lo < 0) return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "DLPack: negative strides are not supported");
  const int64_t extent = span->hi + 1;
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
  zmlxi_dl_span span;
  ZMLX_CHECK(zmlxi_dlpack_check(t, &dt, &size, &span));
  ZMLX_CHECK(device_for_dl(&t->device, dev, &dev));
  if (t->device.device_type == kDLCPU || t->device.device_type == kDLCUDAHost)
    return import_from_host(m, dt, size, dev, out);
  if ((int)t->device.device_type != dev->ops->dlpack_device_type || t->device.device_id != dev->index)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "DLPack: tensor lives on device type %d id %d, not on "
                     "%s device %d", (int)t->device.device_type, t->device.device_id,
                     zmlx_backend_name(dev->ops->kind), dev->index);
  return import_zero_copy(m, dt, &span, dev, out);
}
