/* DLPack export/import: tensor fields, zero-copy round trips, host
 * tensors copied onto the device, deleter bookkeeping, bad tensors. */
#include "test_support.h"

#include <dlpack/dlpack.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/internal.h"

#ifdef ZMLX_HAVE_OPENCL
#include <CL/cl.h>
#endif

#define MAX_DEVS 4
#define DL_BOOL 6 /* kDLBool of DLPack 0.8; the installed header is 0.6 */

/* ------------------------------------------------------------------ helpers */

static int devices(zmlx_device **devs) {
  int n = zt_devices(devs, MAX_DEVS);
  if (n <= 0) fail_msg("no device available (zt_devices returned %d)", n);
  return n;
}

static int expected_device_type(zmlx_device *dev) {
  switch (zmlx_device_backend(dev)) {
    case ZMLX_BACKEND_CUDA: return kDLCUDA;
    case ZMLX_BACKEND_OPENCL: return kDLOpenCL;
    default: fail_msg("unexpected backend %d", (int)zmlx_device_backend(dev));
  }
  return -1;
}

static int device_index(zmlx_device *dev) {
  zmlx_device_info info;
  ZT_OK(zmlx_device_get_info(dev, &info));
  return info.index;
}

static void expect_dtype(DLDataType t, int code, int bits, const char *what) {
  if (t.code != code || t.bits != bits || t.lanes != 1)
    fail_msg("%s: DLPack dtype code %u bits %u lanes %u, expected code %d bits %d lanes 1", what,
             t.code, t.bits, t.lanes, code, bits);
}

static void dl_code_bits(zmlx_dtype dt, int *code, int *bits) {
  *bits = (int)zmlx_dtype_size(dt) * 8;
  switch (dt) {
    case ZMLX_BOOL: *code = DL_BOOL; break;
    case ZMLX_U8:
    case ZMLX_U32: *code = kDLUInt; break;
    case ZMLX_I8:
    case ZMLX_I32:
    case ZMLX_I64: *code = kDLInt; break;
    case ZMLX_BF16: *code = kDLBfloat; break;
    default: *code = kDLFloat; break;
  }
}

static double *iota(int64_t n) {
  double *v = malloc((size_t)n * sizeof *v + 1);
  assert_non_null(v);
  for (int64_t i = 0; i < n; i++) v[i] = (double)i * 0.25 - 3.0;
  return v;
}

static zmlx_array *upload_f32(zmlx_device *dev, int ndim, const int64_t *shape, const double *v) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  float *f = malloc((size_t)n * sizeof *f + 1);
  assert_non_null(f);
  for (int64_t i = 0; i < n; i++) f[i] = (float)v[i];
  zmlx_array *a = zt_array(dev, ZMLX_F32, ndim, shape, f);
  free(f);
  return a;
}

static void assert_same_values(zmlx_array *a, zmlx_array *b, const char *what) {
  if (zmlx_array_size(a) != zmlx_array_size(b))
    fail_msg("%s: sizes %lld and %lld", what, (long long)zmlx_array_size(a),
             (long long)zmlx_array_size(b));
  double *x = zt_download(a), *y = zt_download(b);
  zt_assert_close(y, x, (size_t)zmlx_array_size(a), 0, 0, what);
  free(x);
  free(y);
}

/* A consumer-side wrapper: a DLManagedTensor of our own whose deleter
 * counts calls and then forwards to the wrapped producer tensor's deleter. */
typedef struct wrapper {
  DLManagedTensor managed;
  DLManagedTensor *inner; /* NULL for host tensors we own */
  int calls;
} wrapper;

static void wrapper_deleter(DLManagedTensor *self) {
  wrapper *w = self->manager_ctx;
  w->calls++;
  if (w->inner && w->inner->deleter) w->inner->deleter(w->inner);
}

static void wrap(wrapper *w, DLManagedTensor *inner) {
  memset(w, 0, sizeof *w);
  w->inner = inner;
  w->managed.dl_tensor = inner->dl_tensor;
  w->managed.manager_ctx = w;
  w->managed.deleter = wrapper_deleter;
}

/* A host (kDLCPU) tensor over caller memory. */
static void host_tensor(wrapper *w, void *data, zmlx_dtype dt, int ndim, int64_t *shape,
                        int64_t *strides, uint64_t byte_offset) {
  memset(w, 0, sizeof *w);
  int code, bits;
  dl_code_bits(dt, &code, &bits);
  DLTensor *t = &w->managed.dl_tensor;
  t->data = data;
  t->device = (DLDevice){.device_type = kDLCPU, .device_id = 0};
  t->ndim = ndim;
  t->dtype = (DLDataType){.code = (uint8_t)code, .bits = (uint8_t)bits, .lanes = 1};
  t->shape = shape;
  t->strides = strides;
  t->byte_offset = byte_offset;
  w->managed.manager_ctx = w;
  w->managed.deleter = wrapper_deleter;
}

#ifdef ZMLX_HAVE_OPENCL
static cl_uint cl_refcount(void *mem) {
  cl_uint rc = 0;
  cl_int err = clGetMemObjectInfo((cl_mem)mem, CL_MEM_REFERENCE_COUNT, sizeof rc, &rc, NULL);
  if (err != CL_SUCCESS) fail_msg("clGetMemObjectInfo(CL_MEM_REFERENCE_COUNT) -> %d", (int)err);
  return rc;
}
#endif

/* ------------------------------------------------------------------ export */

static void test_export_dense(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  for (int d = 0; d < nd; d++) {
    zmlx_device *dev = devs[d];
    int64_t live0 = zmlx_array_live_count();
    const int64_t shape[2] = {3, 4};
    double *vals = iota(12);
    zmlx_array *a = upload_f32(dev, 2, shape, vals);
    void *p = NULL;
    ZT_OK(zmlx_array_to_dlpack(a, &p));
    assert_non_null(p);
    DLManagedTensor *m = p;
    const DLTensor *t = &m->dl_tensor;
    assert_non_null(m->deleter);
    assert_int_equal(t->device.device_type, expected_device_type(dev));
    assert_int_equal(t->device.device_id, device_index(dev));
    assert_int_equal(t->ndim, 2);
    assert_non_null(t->shape);
    assert_int_equal(t->shape[0], 3);
    assert_int_equal(t->shape[1], 4);
    assert_non_null(t->strides);
    assert_int_equal(t->strides[0], 4);
    assert_int_equal(t->strides[1], 1);
    expect_dtype(t->dtype, kDLFloat, 32, "f32 export");
    assert_int_equal(t->byte_offset, 0);
    assert_ptr_equal(t->data, dev->ops->dlpack_data(a->buffer->handle));

    /* The exported tensor keeps the array alive after our release. */
    zmlx_array_release(a);
    assert_int_equal(zmlx_array_live_count(), live0 + 1);

    /* Import back: zero-copy onto the same buffer, same geometry. */
    zmlx_array *b = NULL;
    ZT_OK(zmlx_array_from_dlpack(m, NULL, &b));
    assert_ptr_equal(zmlx_array_device(b), dev);
    assert_int_equal(zmlx_array_dtype(b), ZMLX_F32);
    assert_int_equal(zmlx_array_ndim(b), 2);
    assert_int_equal(zmlx_array_shape(b)[0], 3);
    assert_int_equal(zmlx_array_shape(b)[1], 4);
    assert_int_equal(zmlx_array_strides(b)[0], 4);
    assert_int_equal(zmlx_array_strides(b)[1], 1);
    assert_int_equal(zmlx_array_offset(b), 0);
    assert_true(zmlx_array_is_contiguous(b));
    assert_ptr_equal(dev->ops->dlpack_data(b->buffer->handle), t->data);
    double *got = zt_download(b);
    zt_assert_close(got, vals, 12, 0, 0, "dense DLPack round trip");
    free(got);
    zmlx_array_release(b); /* runs the exporter's deleter: the array goes */
    assert_int_equal(zmlx_array_live_count(), live0);
    free(vals);

    /* An empty array travels too. */
    const int64_t eshape[2] = {0, 3};
    ZT_OK(zmlx_array_zeros(dev, ZMLX_I32, 2, eshape, &a));
    ZT_OK(zmlx_array_to_dlpack(a, &p));
    m = p;
    assert_int_equal(m->dl_tensor.ndim, 2);
    assert_int_equal(m->dl_tensor.shape[0], 0);
    assert_int_equal(m->dl_tensor.shape[1], 3);
    expect_dtype(m->dl_tensor.dtype, kDLInt, 32, "i32 export");
    zmlx_array_release(a);
    ZT_OK(zmlx_array_from_dlpack(m, dev, &b));
    assert_int_equal(zmlx_array_size(b), 0);
    assert_int_equal(zmlx_array_dtype(b), ZMLX_I32);
    int32_t none[1];
    ZT_OK(zmlx_array_to_host(b, none, 0));
    zmlx_array_release(b);
    assert_int_equal(zmlx_array_live_count(), live0);
  }
}

/* Every dtype exports with its DLPack code and imports back as itself. */
static void test_export_dtypes(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const zmlx_dtype dts[] = {ZMLX_BOOL, ZMLX_U8,  ZMLX_I8,  ZMLX_I32, ZMLX_U32,
                            ZMLX_I64,  ZMLX_F16, ZMLX_BF16, ZMLX_F32, ZMLX_F64};
  for (int d = 0; d < nd; d++) {
    zmlx_device *dev = devs[d];
    zmlx_device_info info;
    ZT_OK(zmlx_device_get_info(dev, &info));
    int64_t live0 = zmlx_array_live_count();
    for (size_t k = 0; k < sizeof dts / sizeof dts[0]; k++) {
      zmlx_dtype dt = dts[k];
      if (dt == ZMLX_F64 && !info.has_fp64) continue;
      const int64_t shape[3] = {2, 3, 5};
      float v[30];
      for (int i = 0; i < 30; i++) v[i] = (dt == ZMLX_BOOL) ? (float)(i % 3 == 0) : (float)(i * 3 % 17);
      zmlx_array *a = zt_array(dev, dt, 3, shape, v), *s = NULL;
      /* A 0-d view: the single element (1, 0, 2), at offset 17. */
      const int64_t st[3] = {1, 0, 2}, sp[3] = {2, 1, 3};
      zmlx_array *one = NULL;
      ZT_OK(zmlx_array_slice(a, st, sp, NULL, &one));
      ZT_OK(zmlx_array_reshape(one, 0, NULL, &s));
      assert_int_equal(zmlx_array_offset(s), 17);
      int code, bits;
      dl_code_bits(dt, &code, &bits);
      void *p = NULL;
      ZT_OK(zmlx_array_to_dlpack(a, &p));
      DLManagedTensor *m = p;
      expect_dtype(m->dl_tensor.dtype, code, bits, zmlx_dtype_name(dt));
      assert_int_equal(m->dl_tensor.ndim, 3);
      zmlx_array *b = NULL;
      ZT_OK(zmlx_array_from_dlpack(m, dev, &b));
      assert_int_equal(zmlx_array_dtype(b), dt);
      assert_same_values(a, b, zmlx_dtype_name(dt));
      zmlx_array_release(b);

      ZT_OK(zmlx_array_to_dlpack(s, &p));
      m = p;
      assert_int_equal(m->dl_tensor.ndim, 0);
      expect_dtype(m->dl_tensor.dtype, code, bits, zmlx_dtype_name(dt));
      ZT_OK(zmlx_array_from_dlpack(m, dev, &b));
      assert_int_equal(zmlx_array_ndim(b), 0);
      assert_int_equal(zmlx_array_dtype(b), dt);
      double x, y;
      ZT_OK(zmlx_array_item(b, 0, &x));
      ZT_OK(zmlx_array_item(a, 17, &y));
      if (x != y) fail_msg("0-d %s DLPack round trip: %g, expected %g", zmlx_dtype_name(dt), x, y);
      zmlx_array_release(b);
      zmlx_array_release(s);
      zmlx_array_release(one);
      zmlx_array_release(a);
    }
    assert_int_equal(zmlx_array_live_count(), live0);
  }
}

static void test_export_strided(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  for (int d = 0; d < nd; d++) {
    zmlx_device *dev = devs[d];
    int64_t live0 = zmlx_array_live_count();
    const int64_t shape[2] = {4, 6};
    double *vals = iota(24);
    zmlx_array *base = upload_f32(dev, 2, shape, vals), *s = NULL, *v = NULL;
    /* rows 1..3, columns 1, 3, 5 -> strides {6, 2}, offset 7; transposed. */
    const int64_t b0[2] = {1, 1}, e0[2] = {4, 6}, st[2] = {1, 2};
    ZT_OK(zmlx_array_slice(base, b0, e0, st, &s));
    ZT_OK(zmlx_array_transpose(s, NULL, &v));
    assert_int_equal(zmlx_array_offset(v), 7);
    void *p = NULL;
    ZT_OK(zmlx_array_to_dlpack(v, &p));
    DLManagedTensor *m = p;
    const DLTensor *t = &m->dl_tensor;
    assert_int_equal(t->device.device_type, expected_device_type(dev));
    assert_int_equal(t->device.device_id, device_index(dev));
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 3);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->strides[0], 2);
    assert_int_equal(t->strides[1], 6);
    expect_dtype(t->dtype, kDLFloat, 32, "strided f32 export");
    char *handle_data = dev->ops->dlpack_data(base->buffer->handle);
    if (zmlx_device_backend(dev) == ZMLX_BACKEND_CUDA) {
      /* CUDA folds the offset into the pointer. */
      assert_int_equal(t->byte_offset, 0);
      assert_ptr_equal(t->data, handle_data + 7 * sizeof(float));
    } else {
      assert_int_equal(t->byte_offset, 7 * sizeof(float));
      assert_ptr_equal(t->data, handle_data);
    }

    zmlx_array *b = NULL;
    ZT_OK(zmlx_array_from_dlpack(m, NULL, &b));
    assert_ptr_equal(zmlx_array_device(b), dev);
    assert_int_equal(zmlx_array_ndim(b), 2);
    for (int i = 0; i < 2; i++) {
      assert_int_equal(zmlx_array_shape(b)[i], zmlx_array_shape(v)[i]);
      assert_int_equal(zmlx_array_strides(b)[i], zmlx_array_strides(v)[i]);
    }
    if (zmlx_device_backend(dev) == ZMLX_BACKEND_OPENCL) {
      assert_int_equal(zmlx_array_offset(b), zmlx_array_offset(v));
      assert_ptr_equal(b->buffer->handle, base->buffer->handle);
    }
    assert_false(zmlx_array_is_contiguous(b));
    assert_same_values(v, b, "strided DLPack round trip");

    /* Zero-copy: a kernel-free write into the base buffer shows through
     * the imported array. Element (2, 1) of v is base[2][5] = flat 17. */
    float nv = 1234.5f;
    ZT_OK(dev->ops->write(dev->index, dev->default_stream->handle, base->buffer->handle,
                          17 * sizeof(float), &nv, sizeof nv));
    double x;
    ZT_OK(zmlx_array_item(b, 2 * 3 + 1, &x));
    if (x != 1234.5) fail_msg("write through the exporter's buffer not seen by the import: %g", x);
    ZT_OK(zmlx_array_item(v, 2 * 3 + 1, &x));
    assert_true(x == 1234.5);

    zmlx_array_release(b);
    zmlx_array_release(v);
    zmlx_array_release(s);
    zmlx_array_release(base);
    assert_int_equal(zmlx_array_live_count(), live0);
    free(vals);
  }
}

/* The import owns the producer's tensor: its deleter runs exactly once,
 * when the last view of the import goes, and not before. */
static void test_deleter_chain(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  for (int d = 0; d < nd; d++) {
    zmlx_device *dev = devs[d];
    int64_t live0 = zmlx_array_live_count();
    const int64_t shape[1] = {50};
    double *vals = iota(50);
    zmlx_array *a = upload_f32(dev, 1, shape, vals);
    void *p = NULL;
    ZT_OK(zmlx_array_to_dlpack(a, &p));
#ifdef ZMLX_HAVE_OPENCL
    /* Queued commands hold references of their own, so only an increase
     * over this count (taken after the export's synchronize) is a leak. */
    int is_cl = zmlx_device_backend(dev) == ZMLX_BACKEND_OPENCL;
    ZT_OK(zmlx_device_synchronize(dev));
    cl_uint rc0 = is_cl ? cl_refcount(a->buffer->handle) : 0;
#endif
    wrapper w;
    wrap(&w, p);

    zmlx_array *b = NULL, *view = NULL;
    ZT_OK(zmlx_array_from_dlpack(&w.managed, NULL, &b));
    assert_int_equal(w.calls, 0);
    assert_int_equal(zmlx_array_live_count(), live0 + 2); /* a and b */
    const int64_t s0 = 5, e0 = 45, st = 4;
    ZT_OK(zmlx_array_slice(b, &s0, &e0, &st, &view));
    zmlx_array_release(b);
    assert_int_equal(w.calls, 0); /* the view still uses the memory */
    double x;
    ZT_OK(zmlx_array_item(view, 1, &x));
    assert_true(x == vals[9]);
    zmlx_array_release(view);
    assert_int_equal(w.calls, 1);
    /* The exporter's reference went with it: `a` is ours alone again. */
    assert_int_equal(zmlx_array_live_count(), live0 + 1);
#ifdef ZMLX_HAVE_OPENCL
    if (is_cl) {
      cl_uint rc1 = cl_refcount(a->buffer->handle);
      if (rc1 > rc0)
        fail_msg("cl_mem reference count is %u after the DLPack import was released, was %u before "
                 "(a reference taken by the import is never dropped)", rc1, rc0);
    }
#endif
    double *got = zt_download(a);
    zt_assert_close(got, vals, 50, 0, 0, "exported array after the import was released");
    free(got);
    zmlx_array_release(a);
    assert_int_equal(w.calls, 1);
    assert_int_equal(zmlx_array_live_count(), live0);

    /* Releasing the original first: the import keeps the memory alive. */
    a = upload_f32(dev, 1, shape, vals);
    ZT_OK(zmlx_array_to_dlpack(a, &p));
    wrap(&w, p);
    ZT_OK(zmlx_array_from_dlpack(&w.managed, dev, &b));
    zmlx_array_release(a);
    for (int k = 0; k < 3; k++) {
      zmlx_array *junk = NULL;
      ZT_OK(zmlx_array_full(dev, ZMLX_F32, 1, shape, -9.0, &junk));
      zmlx_array_release(junk);
    }
    got = zt_download(b);
    zt_assert_close(got, vals, 50, 0, 0, "import after the exporter released its array");
    free(got);
    assert_int_equal(w.calls, 0);
    zmlx_array_release(b);
    assert_int_equal(w.calls, 1);
    assert_int_equal(zmlx_array_live_count(), live0);
    free(vals);
  }
}

/* ------------------------------------------------------------- host import */

static void encode_host(zmlx_dtype dt, double v, unsigned char *p) {
  switch (dt) {
    case ZMLX_BOOL:
    case ZMLX_U8: *p = (uint8_t)v; break;
    case ZMLX_I8: *(int8_t *)p = (int8_t)v; break;
    case ZMLX_I32: { int32_t x = (int32_t)v; memcpy(p, &x, 4); break; }
    case ZMLX_U32: { uint32_t x = (uint32_t)v; memcpy(p, &x, 4); break; }
    case ZMLX_I64: { int64_t x = (int64_t)v; memcpy(p, &x, 8); break; }
    case ZMLX_F16: { uint16_t x = zmlx_f32_to_f16((float)v); memcpy(p, &x, 2); break; }
    case ZMLX_BF16: { uint16_t x = zmlx_f32_to_bf16((float)v); memcpy(p, &x, 2); break; }
    case ZMLX_F32: { float x = (float)v; memcpy(p, &x, 4); break; }
    case ZMLX_F64: memcpy(p, &v, 8); break;
    default: fail_msg("bad dtype");
  }
}

static double host_value(zmlx_dtype dt, int64_t i) {
  if (dt == ZMLX_BOOL) return (double)(i % 3 == 1);
  if (dt == ZMLX_U8) return (double)((i * 7) % 256);
  if (dt == ZMLX_I8) return (double)((i * 5) % 200 - 100);
  if (dt == ZMLX_U32) return 4000000000.0 - (double)i;
  if (dt == ZMLX_I64) return -5000000000.0 + (double)i * 3;
  if (dt == ZMLX_I32) return (double)(i * 1000 - 7777);
  return zt_round_to(dt, (double)i * 0.375 - 9.0);
}

static void test_import_host(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  const zmlx_dtype dts[] = {ZMLX_F32, ZMLX_I32, ZMLX_U8, ZMLX_F16, ZMLX_BF16,
                            ZMLX_BOOL, ZMLX_I64, ZMLX_I8, ZMLX_U32};
  for (int d = 0; d < nd; d++) {
    zmlx_device *dev = devs[d];
    int64_t live0 = zmlx_array_live_count();
    for (size_t k = 0; k < sizeof dts / sizeof dts[0]; k++) {
      zmlx_dtype dt = dts[k];
      size_t es = zmlx_dtype_size(dt);
      /* A 6 x 8 host matrix, element (r, c) = host_value(r * 8 + c). */
      unsigned char *mem = malloc(48 * es);
      assert_non_null(mem);
      for (int64_t i = 0; i < 48; i++) encode_host(dt, host_value(dt, i), mem + i * es);
      char what[96];

      /* Dense, strides NULL, 3-d view of all 48. */
      int64_t shape3[3] = {2, 3, 8};
      wrapper w;
      host_tensor(&w, mem, dt, 3, shape3, NULL, 0);
      zmlx_array *b = NULL;
      ZT_OK(zmlx_array_from_dlpack(&w.managed, dev, &b));
      assert_int_equal(w.calls, 1); /* copied: the producer is free at once */
      assert_ptr_equal(zmlx_array_device(b), dev);
      assert_int_equal(zmlx_array_dtype(b), dt);
      assert_int_equal(zmlx_array_ndim(b), 3);
      for (int i = 0; i < 3; i++) assert_int_equal(zmlx_array_shape(b)[i], shape3[i]);
      unsigned char *back = malloc(48 * es);
      assert_non_null(back);
      ZT_OK(zmlx_array_to_host(b, back, 48 * es));
      snprintf(what, sizeof what, "dense kDLCPU %s import", zmlx_dtype_name(dt));
      if (memcmp(back, mem, 48 * es)) fail_msg("%s: bytes differ", what);
      /* The copy does not alias the host memory. */
      encode_host(dt, host_value(dt, 5), mem);
      ZT_OK(zmlx_array_to_host(b, back, 48 * es));
      double x;
      ZT_OK(zmlx_array_item(b, 0, &x));
      if (x != host_value(dt, 0)) fail_msg("%s: device copy changed with host memory", what);
      encode_host(dt, host_value(dt, 0), mem);
      zmlx_array_release(b);
      assert_int_equal(w.calls, 1);

      /* Explicit dense strides, dev NULL (the default device). */
      int64_t shape2[2] = {6, 8}, dense2[2] = {8, 1};
      host_tensor(&w, mem, dt, 2, shape2, dense2, 0);
      ZT_OK(zmlx_array_from_dlpack(&w.managed, NULL, &b));
      assert_int_equal(w.calls, 1);
      ZT_OK(zmlx_array_to_host(b, back, 48 * es));
      if (memcmp(back, mem, 48 * es)) fail_msg("%s: explicit strides: bytes differ", what);
      zmlx_array_release(b);

      /* Strided: rows 1, 3, 5 and columns 1, 3, 5, 7 via byte_offset + strides. */
      int64_t sshape[2] = {3, 4}, sstrides[2] = {16, 2};
      host_tensor(&w, mem, dt, 2, sshape, sstrides, 9 * es);
      ZT_OK(zmlx_array_from_dlpack(&w.managed, dev, &b));
      assert_int_equal(w.calls, 1);
      assert_true(zmlx_array_is_contiguous(b));
      double *got = zt_download(b), want[12];
      for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) want[r * 4 + c] = host_value(dt, (1 + 2 * r) * 8 + 1 + 2 * c);
      snprintf(what, sizeof what, "strided kDLCPU %s import", zmlx_dtype_name(dt));
      zt_assert_close(got, want, 12, 0, 0, what);
      free(got);
      zmlx_array_release(b);

      /* Transposed (column-major) strides. */
      int64_t tshape[2] = {8, 6}, tstrides[2] = {1, 8};
      host_tensor(&w, mem, dt, 2, tshape, tstrides, 0);
      ZT_OK(zmlx_array_from_dlpack(&w.managed, dev, &b));
      assert_int_equal(w.calls, 1);
      got = zt_download(b);
      double twant[48];
      for (int r = 0; r < 8; r++)
        for (int c = 0; c < 6; c++) twant[r * 6 + c] = host_value(dt, c * 8 + r);
      snprintf(what, sizeof what, "transposed kDLCPU %s import", zmlx_dtype_name(dt));
      zt_assert_close(got, twant, 48, 0, 0, what);
      free(got);
      zmlx_array_release(b);

      /* 0-d (shape NULL) and empty tensors. */
      host_tensor(&w, mem + 3 * es, dt, 0, NULL, NULL, 0);
      ZT_OK(zmlx_array_from_dlpack(&w.managed, dev, &b));
      assert_int_equal(w.calls, 1);
      assert_int_equal(zmlx_array_ndim(b), 0);
      ZT_OK(zmlx_array_item(b, 0, &x));
      if (x != host_value(dt, 3)) fail_msg("0-d kDLCPU %s import: %g", zmlx_dtype_name(dt), x);
      zmlx_array_release(b);
      int64_t eshape[2] = {0, 3};
      host_tensor(&w, mem, dt, 2, eshape, NULL, 0);
      ZT_OK(zmlx_array_from_dlpack(&w.managed, dev, &b));
      assert_int_equal(w.calls, 1);
      assert_int_equal(zmlx_array_size(b), 0);
      zmlx_array_release(b);

      free(back);
      free(mem);
    }
    assert_int_equal(zmlx_array_live_count(), live0);
  }
}

/* -------------------------------------------------------------- bad inputs */

static void test_bad_inputs(void **state) {
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  for (int d = 0; d < nd; d++) {
    zmlx_device *dev = devs[d];
    int64_t live0 = zmlx_array_live_count();
    float mem[12] = {0};
    int64_t shape[2] = {3, 4};
    wrapper w;
    zmlx_array *b = NULL;
    void *p = NULL;

    ZT_FAILS(zmlx_array_from_dlpack(NULL, dev, &b), ZMLX_ERR_NULL_ARG, NULL);
    host_tensor(&w, mem, ZMLX_F32, 2, shape, NULL, 0);
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, NULL), ZMLX_ERR_NULL_ARG, "out");
    assert_int_equal(w.calls, 0);
    zmlx_array *a = NULL;
    ZT_FAILS(zmlx_array_to_dlpack(NULL, &p), ZMLX_ERR_NULL_ARG, NULL);
    ZT_OK(zmlx_array_zeros(dev, ZMLX_F32, 2, shape, &a));
    ZT_FAILS(zmlx_array_to_dlpack(a, NULL), ZMLX_ERR_NULL_ARG, NULL);

    /* lanes = 2 */
    host_tensor(&w, mem, ZMLX_F32, 2, shape, NULL, 0);
    w.managed.dl_tensor.dtype.lanes = 2;
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_DTYPE, "lanes");
    assert_int_equal(w.calls, 0);
    assert_null(b);

    /* Unknown dtype codes / bit widths. */
    host_tensor(&w, mem, ZMLX_F32, 2, shape, NULL, 0);
    w.managed.dl_tensor.dtype.code = kDLComplex;
    w.managed.dl_tensor.dtype.bits = 64;
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_DTYPE, "code");
    w.managed.dl_tensor.dtype = (DLDataType){.code = 42, .bits = 32, .lanes = 1};
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_DTYPE, "42");
    w.managed.dl_tensor.dtype = (DLDataType){.code = kDLFloat, .bits = 8, .lanes = 1};
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_DTYPE, "8 bits");
    w.managed.dl_tensor.dtype = (DLDataType){.code = kDLInt, .bits = 16, .lanes = 1};
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_DTYPE, NULL);
    assert_int_equal(w.calls, 0);

    /* Bad shapes and data. */
    host_tensor(&w, mem, ZMLX_F32, 9, shape, NULL, 0);
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_SHAPE, "ndim");
    host_tensor(&w, mem, ZMLX_F32, 2, NULL, NULL, 0);
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_NULL_ARG, "shape");
    int64_t neg[2] = {3, -4};
    host_tensor(&w, mem, ZMLX_F32, 2, neg, NULL, 0);
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_SHAPE, "negative");
    host_tensor(&w, NULL, ZMLX_F32, 2, shape, NULL, 0);
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_NULL_ARG, "data");
    assert_int_equal(w.calls, 0);

    /* Strides whose offsets leave int64 (a wild read before the check),
     * and a byte_offset past 64-bit byte offsets: refused untouched. */
    int64_t huge[2] = {INT64_MAX / 2, 1}, minus[2] = {INT64_MIN, 1}, big[2] = {1, INT64_MAX / 8};
    host_tensor(&w, mem, ZMLX_F32, 2, shape, huge, 0);
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_INVALID_ARG, "overflow");
    host_tensor(&w, mem, ZMLX_F32, 2, shape, minus, 0);
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_INVALID_ARG, "overflow");
    host_tensor(&w, mem, ZMLX_F32, 2, shape, big, 0);
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_INVALID_ARG, "64-bit");
    host_tensor(&w, mem, ZMLX_F32, 2, shape, NULL, 0);
    w.managed.dl_tensor.byte_offset = UINT64_MAX - 8;
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_INVALID_ARG, "byte_offset");
    assert_int_equal(w.calls, 0);
    assert_null(b);

    /* Device type mismatch: a tensor that claims to live on the other GPU
     * API is refused and stays the caller's. */
    host_tensor(&w, mem, ZMLX_F32, 2, shape, NULL, 0);
    int other = zmlx_device_backend(dev) == ZMLX_BACKEND_OPENCL ? kDLCUDA : kDLOpenCL;
    w.managed.dl_tensor.device = (DLDevice){.device_type = (DLDeviceType)other, .device_id = 0};
    char needle[32];
    snprintf(needle, sizeof needle, "device type %d", other);
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_INVALID_ARG, needle);
    assert_int_equal(w.calls, 0);
    assert_null(b);
    /* Same backend, wrong device id. */
    w.managed.dl_tensor.device = (DLDevice){.device_type = (DLDeviceType)expected_device_type(dev),
                                            .device_id = device_index(dev) + 7};
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_INVALID_ARG, "id");
    assert_int_equal(w.calls, 0);
    /* A device type zmlx does not know, with no device given, on a backend
     * that is not there: an error, never the CPU copy path. */
    if (!zmlx_backend_available(ZMLX_BACKEND_CUDA)) {
      w.managed.dl_tensor.device = (DLDevice){.device_type = kDLCUDA, .device_id = 0};
      zmlx_status st = zmlx_array_from_dlpack(&w.managed, NULL, &b);
      if (st == ZMLX_OK) fail_msg("a kDLCUDA tensor was imported with no CUDA device");
      assert_int_equal(w.calls, 0);
      assert_null(b);
    }

    /* byte_offset that is not a multiple of the element size, on a real
     * device tensor: refused, the deleter not called. */
    ZT_OK(zmlx_array_to_dlpack(a, &p));
    DLManagedTensor *m = p;
    wrap(&w, m);
    w.managed.dl_tensor.byte_offset += 2;
    ZT_FAILS(zmlx_array_from_dlpack(&w.managed, dev, &b), ZMLX_ERR_INVALID_ARG, "byte_offset");
    assert_int_equal(w.calls, 0);
    /* Negative strides on a device tensor are refused too. */
    int64_t nstrides[2] = {4, -1};
    wrap(&w, m);
    w.managed.dl_tensor.strides = nstrides;
    w.managed.dl_tensor.byte_offset = 3 * sizeof(float);
    zmlx_status st = zmlx_array_from_dlpack(&w.managed, dev, &b);
    if (st == ZMLX_OK) fail_msg("negative strides were accepted for a device tensor");
    assert_int_equal(w.calls, 0);
    assert_null(b);
    /* The tensor is still ours: give it back through its own deleter. */
    m->deleter(m);

    zmlx_array_release(a);
    assert_int_equal(zmlx_array_live_count(), live0);
  }
}

/* ------------------------------------------------- streams owned by others */

/* Softmax of each row of a [rows, cols] host matrix, in f64. */
static void softmax_rows(const float *x, int rows, int cols, double *out) {
  for (int r = 0; r < rows; r++) {
    double mx = -INFINITY, sum = 0;
    for (int c = 0; c < cols; c++) mx = fmax(mx, x[r * cols + c]);
    for (int c = 0; c < cols; c++) sum += exp(x[r * cols + c] - mx);
    for (int c = 0; c < cols; c++) out[r * cols + c] = exp(x[r * cols + c] - mx) / sum;
  }
}

/* A stream another library owns (here one zmlx made, seen only through its
 * native handle) wrapped and made current: catalog ops, allocations, reads
 * and the DLPack handoff run on it; the wrapper may go while the thread and
 * the buffers allocated on it still hold it; the owner's stream outlives
 * them all. ASan checks the reference counting. */
static void test_wrapped_current_stream(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = devices(devs);
  for (int d = 0; d < nd; d++) {
    zmlx_device *dev = devs[d];
    int64_t live0 = zmlx_array_live_count();
    zmlx_stream *owner = NULL, *wrapped = NULL, *cur = NULL;
    void *native = NULL, *seen = NULL;
    ZT_OK(zmlx_stream_create(dev, &owner));
    ZT_OK(zmlx_stream_native(owner, &native));
    ZT_OK(zmlx_stream_wrap(dev, native, &wrapped));
    ZT_OK(zmlx_stream_native(wrapped, &seen));
    assert_ptr_equal(seen, native);
    ZT_OK(zmlx_current_stream(dev, &cur));
    assert_null(cur);
    ZT_OK(zmlx_set_current_stream(wrapped));
    ZT_OK(zmlx_current_stream(dev, &cur));
    assert_ptr_equal(cur, wrapped);

    enum { ROWS = 7, COLS = 300 };
    int64_t shape[2] = {ROWS, COLS};
    float host[ROWS * COLS];
    uint64_t rng = zt_seed();
    zt_fill_uniform(host, ROWS * COLS, -4, 4, &rng);
    zmlx_array *x = zt_array(dev, ZMLX_F32, 2, shape, host), *y = NULL;
    ZT_OK(zmlx_softmax(x, &y));
    /* The wrapper goes while current and while y's buffer was allocated on it. */
    ZT_OK(zmlx_stream_destroy(wrapped));
    double want[ROWS * COLS], *got = zt_download(y);
    softmax_rows(host, ROWS, COLS, want);
    zt_assert_close(got, want, ROWS * COLS, 1e-6, 1e-5, "softmax on a wrapped current stream");
    free(got);

    /* Handoff to a consumer on the current stream (no wait) and to one
     * elsewhere (a wait): both see the same memory. */
    void *p1 = NULL, *p2 = NULL;
    ZT_OK(zmlx_current_stream(dev, &cur));
    ZT_OK(zmlx_array_to_dlpack_on(y, cur, &p1));
    ZT_OK(zmlx_array_to_dlpack_on(y, owner, &p2));
    DLManagedTensor *m1 = p1, *m2 = p2;
    assert_ptr_equal(m1->dl_tensor.data, m2->dl_tensor.data);
    m1->deleter(m1);
    m2->deleter(m2);
    ZT_OK(zmlx_device_synchronize(dev));

    ZT_OK(zmlx_set_current_stream(NULL));
    ZT_OK(zmlx_current_stream(dev, &cur));
    assert_null(cur);
    zmlx_array_release(x);
    zmlx_array_release(y); /* freed on the owner's stream, still alive */
    ZT_OK(zmlx_stream_destroy(owner));
    assert_int_equal(zmlx_array_live_count(), live0);

    /* Bad arguments are statuses. */
    ZT_FAILS(zmlx_stream_native(NULL, &seen), ZMLX_ERR_NULL_ARG, NULL);
    ZT_FAILS(zmlx_stream_wrap(dev, native, NULL), ZMLX_ERR_NULL_ARG, NULL);
    ZT_FAILS(zmlx_current_stream(dev, NULL), ZMLX_ERR_NULL_ARG, NULL);
    ZT_FAILS(zmlx_array_to_dlpack_on(NULL, NULL, &p1), ZMLX_ERR_NULL_ARG, NULL);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_export_dense),
      cmocka_unit_test(test_export_dtypes),
      cmocka_unit_test(test_export_strided),
      cmocka_unit_test(test_deleter_chain),
      cmocka_unit_test(test_import_host),
      cmocka_unit_test(test_bad_inputs),
      cmocka_unit_test(test_wrapped_current_stream),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
