/* Streams other libraries own (PyTorch's current CUDA stream, CuPy's): zmlx
 * work runs on them through zmlx_stream_wrap + zmlx_set_current_stream, and
 * the DLPack handoff in both directions names them (the protocol's `stream`
 * argument), so no device-wide sync is needed between PyTorch and zmlx.
 *
 * Wrappers are cached per (device, native handle) for the life of the
 * process: a wrapper is a few bytes and PyTorch keeps its streams alive, so
 * a kernel call costs a table lookup, not an allocation. */
#include "core.h"

#include <dlpack/dlpack.h>

#include "stream.h"

enum { MAX_WRAPPED = 128 };

static struct {
  zmlx_device *dev;
  void *native;
  zmlx_stream *s;
} wrapped[MAX_WRAPPED];
static int n_wrapped;

/* The cached wrapper of `native` on `dev` (NULL and a Python error on failure). */
static zmlx_stream *wrapper_of(zmlx_device *dev, void *native) {
  for (int i = 0; i < n_wrapped; i++)
    if (wrapped[i].dev == dev && wrapped[i].native == native) return wrapped[i].s;
  zmlx_stream *s = NULL;
  zmlx_status st = zmlx_stream_wrap(dev, native, &s);
  if (st != ZMLX_OK) {
    zpy_raise(st);
    return NULL;
  }
  if (n_wrapped == MAX_WRAPPED) { /* recycle the oldest slot; the thread or buffers may still hold it */
    zmlx_stream_destroy(wrapped[0].s);
    memmove(wrapped, wrapped + 1, sizeof wrapped[0] * (MAX_WRAPPED - 1));
    n_wrapped--;
  }
  wrapped[n_wrapped].dev = dev;
  wrapped[n_wrapped].native = native;
  wrapped[n_wrapped].s = s;
  n_wrapped++;
  return s;
}

/* A DLPack stream number as a CUDA handle: 1 is the legacy default stream
 * (handle 0), 2 the per-thread default stream (CU_STREAM_PER_THREAD). */
static void *cuda_handle_of(long long v) {
  if (v == 1) return NULL;
  return (void *)(intptr_t)v;
}

int zpy_consumer_stream(PyObject *stream, zmlx_device *dev, zmlx_stream **out, int *ordered) {
  *out = NULL;
  *ordered = 0;
  if (stream == Py_None || zmlx_device_backend(dev) != ZMLX_BACKEND_CUDA) return 1;
  long long v = PyLong_AsLongLong(stream);
  if (v == -1 && PyErr_Occurred()) return 0;
  if (v == -1) { /* the consumer asks for no synchronisation */
    *ordered = 1;
    return 1;
  }
  if (v == 0) {
    PyErr_SetString(PyExc_ValueError, "zmlx: DLPack stream 0 is ambiguous on CUDA (use 1 or 2)");
    return 0;
  }
  *out = wrapper_of(dev, cuda_handle_of(v));
  return *out != NULL;
}

int zpy_producer_stream_arg(zmlx_device *dev, long long *out) {
  zmlx_stream *cur = NULL;
  void *native = NULL;
  zmlx_status st = zmlx_current_stream(dev, &cur);
  if (st == ZMLX_OK && cur) st = zmlx_stream_native(cur, &native);
  if (st != ZMLX_OK) {
    zpy_raise(st);
    return 0;
  }
  if (!cur) return -1; /* zmlx's own default stream: PyTorch cannot name it; ask for a sync */
  *out = native ? (long long)(intptr_t)native : 1;
  return 1;
}

static PyObject *py_set_stream(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"handle", "device", NULL};
  PyObject *handle, *devo = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwlist, &handle, &devo)) return NULL;
  if (handle == Py_None) {
    zmlx_set_current_stream(NULL);
    Py_RETURN_NONE;
  }
  zmlx_device *dev;
  if (!zpy_conv_device(devo, &dev)) return NULL;
  long long v = PyLong_AsLongLong(handle);
  if (v == -1 && PyErr_Occurred()) return NULL;
  zmlx_stream *s = wrapper_of(dev, zmlx_device_backend(dev) == ZMLX_BACKEND_CUDA
                                       ? cuda_handle_of(v) : (void *)(intptr_t)v);
  if (!s) return NULL;
  zmlx_status st = zmlx_set_current_stream(s);
  if (st != ZMLX_OK) return zpy_raise(st);
  Py_RETURN_NONE;
}

static PyObject *py_current_stream(PyObject *mod, PyObject *args) {
  (void)mod;
  PyObject *devo = Py_None;
  if (!PyArg_ParseTuple(args, "|O", &devo)) return NULL;
  zmlx_device *dev;
  if (!zpy_conv_device(devo, &dev)) return NULL;
  zmlx_stream *cur = NULL;
  void *native = NULL;
  zmlx_status st = zmlx_current_stream(dev, &cur);
  if (st == ZMLX_OK && cur) st = zmlx_stream_native(cur, &native);
  if (st != ZMLX_OK) return zpy_raise(st);
  if (!cur) Py_RETURN_NONE;
  return PyLong_FromLongLong((long long)(intptr_t)native);
}

/* The thread's stream on dev back to `native` (a handle current_stream gave;
 * NULL: zmlx's default stream). The wrapper is looked up again rather than
 * kept, since making another stream current may release it. */
static int restore_stream(zmlx_device *dev, int had, void *native) {
  if (!had) return zmlx_set_current_stream(NULL) == ZMLX_OK;
  zmlx_stream *s = wrapper_of(dev, native);
  return s && zmlx_set_current_stream(s) == ZMLX_OK;
}

/* on_stream(handle, index, fn, *args): fn(*args) with this thread's zmlx
 * work on CUDA device `index` running on the raw CUstream `handle` (0: the
 * legacy default stream), the previous stream restored after, also when fn
 * raises. One C call instead of a Python context manager: zmlx.torch runs
 * every op through it, so it is on the per-call path. */
static PyObject *py_on_stream(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
  (void)mod;
  if (nargs < 3) {
    PyErr_SetString(PyExc_TypeError, "on_stream(handle, index, fn, *args)");
    return NULL;
  }
  long long handle = PyLong_AsLongLong(args[0]);
  long index = PyLong_AsLong(args[1]);
  if (PyErr_Occurred()) return NULL;
  zmlx_device *dev = NULL;
  zmlx_status st = zmlx_device_get(ZMLX_BACKEND_CUDA, (int)index, &dev);
  if (st != ZMLX_OK) return zpy_raise(st);
  zmlx_stream *prev = NULL;
  void *prev_native = NULL;
  st = zmlx_current_stream(dev, &prev);
  if (st == ZMLX_OK && prev) st = zmlx_stream_native(prev, &prev_native);
  if (st != ZMLX_OK) return zpy_raise(st);
  int had = prev != NULL;
  zmlx_stream *s = wrapper_of(dev, (void *)(intptr_t)handle);
  if (!s) return NULL;
  if (s != prev && (st = zmlx_set_current_stream(s)) != ZMLX_OK) return zpy_raise(st);
  PyObject *r = PyObject_Vectorcall(args[2], args + 3, (size_t)(nargs - 3), NULL);
  if (s != prev && !restore_stream(dev, had, prev_native)) {
    Py_XDECREF(r);
    return PyErr_Occurred() ? NULL : zpy_raise(ZMLX_ERR_INTERNAL);
  }
  return r;
}

PyMethodDef zpy_stream_functions[] = {
    {"set_stream", (PyCFunction)(void (*)(void))py_set_stream, METH_VARARGS | METH_KEYWORDS,
     "set_stream(handle, device=None): run this thread's zmlx work on another library's stream "
     "(an int: CUstream pointer, 1 = the legacy default stream; torch.cuda.current_stream()"
     ".cuda_stream); None: back to zmlx's default stream."},
    {"current_stream", py_current_stream, METH_VARARGS,
     "current_stream(device=None): the handle set_stream gave this thread, or None."},
    {"on_stream", (PyCFunction)(void (*)(void))py_on_stream, METH_FASTCALL,
     "on_stream(handle, index, fn, *args): fn(*args) with zmlx on CUDA device index running on "
     "the raw CUstream handle (torch.cuda.current_stream().cuda_stream; 0: legacy default), the "
     "thread's previous stream restored after."},
    {NULL, NULL, 0, NULL},
};
