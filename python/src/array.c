/* zmlx.Array: a zmlx_array in Python, its creators, host copies and DLPack
 * exchange (zero copy on the same device; host tensors are copied onto the
 * device), and the converters the other parts share. */
#include <dlpack/dlpack.h>
#include <string.h>

#include "core.h"
#include "stream.h"

PyObject *zpy_error;

PyObject *zpy_raise(zmlx_status st) {
  const char *msg = zmlx_last_error();
  PyObject *exc = PyObject_CallFunction(zpy_error, "s", msg && *msg ? msg : zmlx_status_string(st));
  if (exc) {
    PyObject *name = PyUnicode_FromString(zmlx_status_string(st));
    if (name) PyObject_SetAttrString(exc, "status", name);
    Py_XDECREF(name);
    PyErr_SetObject(zpy_error, exc);
    Py_DECREF(exc);
  }
  zmlx_clear_error();
  return NULL;
}

/* ---------------------------------------------------------- converters */

int zpy_conv_dtype(PyObject *o, void *out) {
  zmlx_dtype *dt = out;
  if (o == Py_None) {
    *dt = ZMLX_F32;
    return 1;
  }
  PyObject *s = PyObject_Str(o); /* "float32", numpy dtypes and classes alike */
  if (!s) return 0;
  const char *name = PyUnicode_AsUTF8(s);
  if (name && !strncmp(name, "<class 'numpy.", 14)) name += 14; /* np.float32 */
  char buf[32];
  if (name) {
    snprintf(buf, sizeof buf, "%s", name);
    char *q = strchr(buf, '\'');
    if (q) *q = '\0';
  }
  zmlx_status st = name ? zmlx_dtype_from_name(buf, dt) : ZMLX_ERR_INVALID_ARG;
  Py_DECREF(s);
  if (st != ZMLX_OK) {
    zmlx_clear_error();
    PyErr_Format(PyExc_TypeError, "not a zmlx dtype: %R (f32, f16, bf16, f64, i32, i64, u32, u8, i8, bool)", o);
    return 0;
  }
  return 1;
}

int zpy_conv_device(PyObject *o, void *out) {
  zmlx_device **dev = out;
  zmlx_status st;
  if (o == Py_None) {
    st = zmlx_default_device(dev);
    if (st != ZMLX_OK) {
      zpy_raise(st);
      return 0;
    }
    return 1;
  }
  const char *s = PyUnicode_AsUTF8(o);
  if (!s) return 0;
  char name[32];
  snprintf(name, sizeof name, "%s", s);
  int index = 0;
  char *colon = strchr(name, ':');
  if (colon) {
    *colon = '\0';
    index = atoi(colon + 1);
  }
  zmlx_backend b;
  st = zmlx_backend_from_name(name, &b);
  if (st == ZMLX_OK) st = zmlx_device_get(b, index, dev);
  if (st != ZMLX_OK) {
    zpy_raise(st);
    return 0;
  }
  return 1;
}

int zpy_conv_shape(PyObject *o, void *out) {
  zpy_shape *sh = out;
  if (PyLong_Check(o)) {
    sh->ndim = 1;
    sh->dims[0] = PyLong_AsLongLong(o);
    return !PyErr_Occurred();
  }
  PyObject *seq = PySequence_Fast(o, "shape must be a sequence of ints");
  if (!seq) return 0;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  if (n > ZMLX_MAX_DIMS) {
    Py_DECREF(seq);
    PyErr_Format(PyExc_ValueError, "shape has %zd dimensions, at most %d", n, ZMLX_MAX_DIMS);
    return 0;
  }
  sh->ndim = (int)n;
  for (Py_ssize_t i = 0; i < n; i++) {
    sh->dims[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
    if (PyErr_Occurred()) {
      Py_DECREF(seq);
      return 0;
    }
  }
  Py_DECREF(seq);
  return 1;
}

zmlx_array *zpy_array_get(PyObject *o, const char *what) {
  if (!PyObject_TypeCheck(o, zpy_array_type)) {
    PyErr_Format(PyExc_TypeError, "%s must be a zmlx.Array (zmlx.asarray converts), not %s", what,
                 Py_TYPE(o)->tp_name);
    return NULL;
  }
  return ((zpy_array *)o)->a;
}

int zpy_conv_array(PyObject *o, void *out) {
  zmlx_array *a = zpy_array_get(o, "argument");
  if (!a) return 0;
  *(zmlx_array **)out = a;
  return 1;
}

int zpy_conv_array_opt(PyObject *o, void *out) {
  if (o == Py_None) {
    *(zmlx_array **)out = NULL;
    return 1;
  }
  return zpy_conv_array(o, out);
}

zmlx_array **zpy_array_list(PyObject *seq_in, Py_ssize_t *n, const char *what) {
  PyObject *seq = PySequence_Fast(seq_in, what);
  if (!seq) return NULL;
  *n = PySequence_Fast_GET_SIZE(seq);
  zmlx_array **v = PyMem_Calloc((size_t)(*n > 0 ? *n : 1), sizeof *v);
  if (!v) {
    Py_DECREF(seq);
    PyErr_NoMemory();
    return NULL;
  }
  for (Py_ssize_t i = 0; i < *n; i++) {
    v[i] = zpy_array_get(PySequence_Fast_GET_ITEM(seq, i), what);
    if (!v[i]) {
      PyMem_Free(v);
      Py_DECREF(seq);
      return NULL;
    }
  }
  Py_DECREF(seq); /* the items stay alive through the caller's sequence */
  return v;
}

const char **zpy_str_list(PyObject *seq_in, Py_ssize_t *n, const char *what) {
  PyObject *seq = PySequence_Fast(seq_in, what);
  if (!seq) return NULL;
  *n = PySequence_Fast_GET_SIZE(seq);
  const char **v = PyMem_Calloc((size_t)(*n > 0 ? *n : 1), sizeof *v);
  if (!v) {
    Py_DECREF(seq);
    PyErr_NoMemory();
    return NULL;
  }
  for (Py_ssize_t i = 0; i < *n; i++) {
    v[i] = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
    if (!v[i]) {
      PyMem_Free(v);
      Py_DECREF(seq);
      return NULL;
    }
  }
  Py_DECREF(seq);
  return v;
}

double *zpy_double_list(PyObject *seq_in, Py_ssize_t *n, const char *what) {
  *n = 0;
  if (!seq_in || seq_in == Py_None) return NULL;
  PyObject *seq = PySequence_Fast(seq_in, what);
  if (!seq) return NULL;
  *n = PySequence_Fast_GET_SIZE(seq);
  double *v = PyMem_Calloc((size_t)(*n > 0 ? *n : 1), sizeof *v);
  if (!v) {
    Py_DECREF(seq);
    PyErr_NoMemory();
    return NULL;
  }
  for (Py_ssize_t i = 0; i < *n; i++) {
    v[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
    if (PyErr_Occurred()) {
      PyMem_Free(v);
      Py_DECREF(seq);
      return NULL;
    }
  }
  Py_DECREF(seq);
  return v;
}

int zpy_dtype_list(PyObject *o, zmlx_dtype *out, int cap) {
  if (o == Py_None) return 1;
  PyObject *seq = PySequence_Fast(o, "dtypes must be a sequence");
  if (!seq) return 0;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq) && i < cap; i++)
    if (!zpy_conv_dtype(PySequence_Fast_GET_ITEM(seq, i), &out[i])) {
      Py_DECREF(seq);
      return 0;
    }
  Py_DECREF(seq);
  return 1;
}

PyObject *zpy_device_name(zmlx_device *dev) {
  zmlx_device_info info;
  zmlx_status st = zmlx_device_get_info(dev, &info);
  if (st != ZMLX_OK) return zpy_raise(st);
  return PyUnicode_FromFormat("%s:%d", zmlx_backend_name(info.backend), info.index);
}

/* --------------------------------------------------------------- Array */

PyObject *zpy_array_wrap(zmlx_array *a) {
  zpy_array *self = PyObject_New(zpy_array, zpy_array_type);
  if (!self) {
    zmlx_array_release(a);
    return NULL;
  }
  self->a = a;
  return (PyObject *)self;
}

static void array_dealloc(zpy_array *self) {
  PyTypeObject *tp = Py_TYPE(self);
  zmlx_array_release(self->a);
  tp->tp_free((PyObject *)self);
  Py_DECREF(tp); /* instances of heap types own a reference to it */
}

static PyObject *array_shape(zpy_array *self, void *c) {
  (void)c;
  int nd = zmlx_array_ndim(self->a);
  const int64_t *sh = zmlx_array_shape(self->a);
  PyObject *t = PyTuple_New(nd);
  for (int i = 0; t && i < nd; i++) PyTuple_SET_ITEM(t, i, PyLong_FromLongLong(sh[i]));
  return t;
}

static PyObject *array_strides(zpy_array *self, void *c) {
  (void)c;
  int nd = zmlx_array_ndim(self->a);
  const int64_t *st = zmlx_array_strides(self->a);
  PyObject *t = PyTuple_New(nd);
  for (int i = 0; t && i < nd; i++) PyTuple_SET_ITEM(t, i, PyLong_FromLongLong(st[i]));
  return t;
}

static PyObject *array_dtype(zpy_array *self, void *c) {
  (void)c;
  return PyUnicode_FromString(zmlx_dtype_name(zmlx_array_dtype(self->a)));
}
static PyObject *array_ndim(zpy_array *self, void *c) {
  (void)c;
  return PyLong_FromLong(zmlx_array_ndim(self->a));
}
static PyObject *array_size(zpy_array *self, void *c) {
  (void)c;
  return PyLong_FromLongLong(zmlx_array_size(self->a));
}
static PyObject *array_nbytes(zpy_array *self, void *c) {
  (void)c;
  return PyLong_FromSize_t(zmlx_array_nbytes(self->a));
}
static PyObject *array_device(zpy_array *self, void *c) {
  (void)c;
  return zpy_device_name(zmlx_array_device(self->a));
}

/* The elements as bytes, dense in C order (a device to host copy). */
static PyObject *array_tobytes(zpy_array *self, PyObject *noargs) {
  (void)noargs;
  size_t n = zmlx_array_nbytes(self->a);
  PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
  if (!b) return NULL;
  zmlx_status st;
  Py_BEGIN_ALLOW_THREADS
  st = zmlx_array_to_host(self->a, PyBytes_AS_STRING(b), n);
  Py_END_ALLOW_THREADS
  if (st != ZMLX_OK) {
    Py_DECREF(b);
    return zpy_raise(st);
  }
  return b;
}

static PyObject *array_item(zpy_array *self, PyObject *args) {
  long long i = 0;
  if (!PyArg_ParseTuple(args, "|L", &i)) return NULL;
  double v;
  zmlx_status st = zmlx_array_item(self->a, i, &v);
  if (st != ZMLX_OK) return zpy_raise(st);
  return PyFloat_FromDouble(v);
}

/* DLPack export. The capsule holds a DLManagedTensor until a consumer
 * renames it "used_dltensor"; an unconsumed one is deleted with it. */
static void capsule_delete(PyObject *cap) {
  if (PyCapsule_IsValid(cap, "dltensor")) {
    DLManagedTensor *m = PyCapsule_GetPointer(cap, "dltensor");
    if (m && m->deleter) m->deleter(m);
  }
}

/* A host copy as a kDLCPU tensor, for consumers that ask for the CPU. */
typedef struct host_copy {
  DLManagedTensor m;
  int64_t shape[ZMLX_MAX_DIMS];
} host_copy;

static void host_copy_delete(DLManagedTensor *m) {
  PyMem_RawFree(m->dl_tensor.data);
  PyMem_RawFree(m);
}

static PyObject *export_host_copy(zpy_array *self) {
  host_copy *h = PyMem_RawCalloc(1, sizeof *h);
  size_t n = zmlx_array_nbytes(self->a);
  void *data = PyMem_RawMalloc(n ? n : 1);
  if (!h || !data) {
    PyMem_RawFree(h);
    PyMem_RawFree(data);
    return PyErr_NoMemory();
  }
  zmlx_status st = zmlx_array_to_host(self->a, data, n);
  if (st != ZMLX_OK) {
    PyMem_RawFree(h);
    PyMem_RawFree(data);
    return zpy_raise(st);
  }
  /* dtype and shape from a device export of the same array */
  void *dm = NULL;
  st = zmlx_array_to_dlpack(self->a, &dm);
  if (st != ZMLX_OK) {
    PyMem_RawFree(h);
    PyMem_RawFree(data);
    return zpy_raise(st);
  }
  DLManagedTensor *dev_m = dm;
  int nd = dev_m->dl_tensor.ndim;
  h->m.dl_tensor.dtype = dev_m->dl_tensor.dtype;
  dev_m->deleter(dev_m);
  memcpy(h->shape, zmlx_array_shape(self->a), sizeof(int64_t) * (size_t)nd);
  h->m.dl_tensor.data = data;
  h->m.dl_tensor.device.device_type = kDLCPU;
  h->m.dl_tensor.device.device_id = 0;
  h->m.dl_tensor.ndim = nd;
  h->m.dl_tensor.shape = h->shape;
  h->m.dl_tensor.strides = NULL;
  h->m.deleter = host_copy_delete;
  return PyCapsule_New(&h->m, "dltensor", capsule_delete);
}

static PyObject *array_dlpack(zpy_array *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"stream", "max_version", "dl_device", "copy", NULL};
  PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None, *copy = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|$OOOO", kwlist, &stream, &max_version, &dl_device,
                                   &copy))
    return NULL;
  (void)max_version;
  zmlx_device *dev = zmlx_array_device(self->a);
  zmlx_device_info info;
  zmlx_status st = zmlx_device_get_info(dev, &info);
  if (st != ZMLX_OK) return zpy_raise(st);
  if (dl_device != Py_None) {
    long type = PyLong_AsLong(PyTuple_GetItem(dl_device, 0));
    if (PyErr_Occurred()) return NULL;
    /* OpenCL memory exports as kDLOpenCL even on a CPU device (PoCL): a
     * consumer that wants kDLCPU gets a host copy */
    if (type == kDLCPU) {
      if (copy == Py_False) {
        PyErr_SetString(PyExc_BufferError, "zmlx: the array is on a device; a CPU tensor needs copy");
        return NULL;
      }
      return export_host_copy(self);
    }
  }
  /* The consumer reads on the stream it names: no wait when that is the
   * stream zmlx ran on (or it asked for none), else zmlx's work is finished
   * first. */
  zmlx_stream *consumer = NULL;
  int ordered = 0;
  if (!zpy_consumer_stream(stream, dev, &consumer, &ordered)) return NULL;
  if (ordered && zmlx_current_stream(dev, &consumer) == ZMLX_OK && !consumer)
    consumer = NULL; /* zmlx's default stream: still finish its work */
  void *m = NULL;
  st = zmlx_array_to_dlpack_on(self->a, consumer, &m);
  if (st != ZMLX_OK) return zpy_raise(st);
  PyObject *cap = PyCapsule_New(m, "dltensor", capsule_delete);
  if (!cap) ((DLManagedTensor *)m)->deleter(m);
  return cap;
}

static PyObject *array_dlpack_device(zpy_array *self, PyObject *noargs) {
  (void)noargs;
  zmlx_device_info info;
  zmlx_status st = zmlx_device_get_info(zmlx_array_device(self->a), &info);
  if (st != ZMLX_OK) return zpy_raise(st);
  int type = info.backend == ZMLX_BACKEND_CUDA ? kDLCUDA : kDLOpenCL;
  return Py_BuildValue("(ii)", type, info.index);
}

static PyObject *array_repr(zpy_array *self) {
  PyObject *shape = array_shape(self, NULL);
  PyObject *dev = array_device(self, NULL);
  PyObject *r = shape && dev ? PyUnicode_FromFormat("zmlx.Array(shape=%R, dtype=%s, device=%S)", shape,
                                                    zmlx_dtype_name(zmlx_array_dtype(self->a)), dev)
                             : NULL;
  Py_XDECREF(shape);
  Py_XDECREF(dev);
  return r;
}

static PyGetSetDef array_getset[] = {
    {"shape", (getter)array_shape, NULL, "tuple of sizes", NULL},
    {"strides", (getter)array_strides, NULL, "strides in elements", NULL},
    {"dtype", (getter)array_dtype, NULL, "dtype name: 'f32', 'bf16', ...", NULL},
    {"ndim", (getter)array_ndim, NULL, "number of dimensions", NULL},
    {"size", (getter)array_size, NULL, "number of elements", NULL},
    {"nbytes", (getter)array_nbytes, NULL, "bytes of the elements", NULL},
    {"device", (getter)array_device, NULL, "'cuda:0', 'opencl:0', ...", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* a.write_bytes(buffer): overwrite a's elements (C order) in place */
static PyObject *array_write_bytes(zpy_array *self, PyObject *buf) {
  Py_buffer view;
  if (PyObject_GetBuffer(buf, &view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
  zmlx_status st = zmlx_array_write_host(self->a, view.buf, (size_t)view.len);
  PyBuffer_Release(&view);
  if (st != ZMLX_OK) return zpy_raise(st);
  Py_RETURN_NONE;
}

static PyMethodDef array_methods[] = {
    {"write_bytes", (PyCFunction)array_write_bytes, METH_O,
     "Overwrite the elements in place from a buffer of exactly their bytes (C order); refused "
     "during a graph capture."},
    {"tobytes", (PyCFunction)array_tobytes, METH_NOARGS,
     "The elements as bytes, dense in C order (copied from the device)."},
    {"item", (PyCFunction)array_item, METH_VARARGS, "Element i (C order) as a float."},
    {"__dlpack__", (PyCFunction)(void (*)(void))array_dlpack, METH_VARARGS | METH_KEYWORDS,
     "DLPack capsule: the device buffer itself (zero copy), or a host copy when the consumer "
     "asks for dl_device=(kDLCPU, 0)."},
    {"__dlpack_device__", (PyCFunction)array_dlpack_device, METH_NOARGS,
     "(device type, index): kDLCUDA (2) or kDLOpenCL (4)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject *zpy_array_type;

static PyType_Slot array_slots[] = {
    {Py_tp_dealloc, (void *)array_dealloc},
    {Py_tp_repr, (void *)array_repr},
    {Py_tp_doc, "An n-dimensional array on a zmlx device (create with zmlx.asarray, zmlx.zeros, ...)."},
    {Py_tp_methods, array_methods},
    {Py_tp_getset, array_getset},
    {0, NULL},
};

static PyType_Spec array_spec = {
    .name = "zmlx._core.Array",
    .basicsize = sizeof(zpy_array),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = array_slots,
};

/* ------------------------------------------------------------ creators */

static PyObject *py_from_buffer(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"buffer", "dtype", "shape", "device", NULL};
  PyObject *buf;
  zmlx_dtype dt;
  zpy_shape sh;
  zmlx_device *dev = NULL;
  PyObject *devo = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO&O&|O", kwlist, &buf, zpy_conv_dtype, &dt,
                                   zpy_conv_shape, &sh, &devo))
    return NULL;
  if (!zpy_conv_device(devo, &dev)) return NULL;
  Py_buffer view;
  if (PyObject_GetBuffer(buf, &view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
  int64_t n = 1;
  for (int i = 0; i < sh.ndim; i++) n *= sh.dims[i];
  if ((size_t)view.len != (size_t)n * zmlx_dtype_size(dt)) {
    PyBuffer_Release(&view);
    return PyErr_Format(PyExc_ValueError, "buffer holds %zd bytes, shape and dtype %s want %lld",
                        view.len, zmlx_dtype_name(dt), (long long)((size_t)n * zmlx_dtype_size(dt)));
  }
  zmlx_array *a = NULL;
  zmlx_status st = zmlx_array_from_host(dev, dt, sh.ndim, sh.dims, view.buf, &a);
  PyBuffer_Release(&view);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(a);
}

/* x.__dlpack__(), naming the stream zmlx will read on when x is a CUDA
 * tensor and this thread runs zmlx on a stream of its own (set_stream):
 * the producer then orders its work before ours without a host wait. */
static PyObject *call_producer_dlpack(PyObject *x, zmlx_device *dev) {
  PyObject *where = PyObject_CallMethod(x, "__dlpack_device__", NULL);
  if (!where) {
    PyErr_Clear();
    return PyObject_CallMethod(x, "__dlpack__", NULL);
  }
  long type = PyTuple_Check(where) && PyTuple_GET_SIZE(where) == 2
                  ? PyLong_AsLong(PyTuple_GET_ITEM(where, 0)) : -1;
  long index = type == kDLCUDA ? PyLong_AsLong(PyTuple_GET_ITEM(where, 1)) : 0;
  Py_DECREF(where);
  if (PyErr_Occurred()) return NULL;
  long long handle = 0;
  zmlx_device *cuda = dev;
  if (type != kDLCUDA || (!cuda && zmlx_device_get(ZMLX_BACKEND_CUDA, (int)index, &cuda) != ZMLX_OK)) {
    zmlx_clear_error();
    return PyObject_CallMethod(x, "__dlpack__", NULL);
  }
  int r = zpy_producer_stream_arg(cuda, &handle);
  if (r == 0) return NULL;
  if (r < 0) return PyObject_CallMethod(x, "__dlpack__", NULL);
  PyObject *kw = Py_BuildValue("{s:L}", "stream", handle);
  PyObject *meth = kw ? PyObject_GetAttrString(x, "__dlpack__") : NULL;
  PyObject *empty = meth ? PyTuple_New(0) : NULL;
  PyObject *cap = empty ? PyObject_Call(meth, empty, kw) : NULL;
  Py_XDECREF(empty);
  Py_XDECREF(meth);
  Py_XDECREF(kw);
  return cap;
}

static PyObject *py_from_dlpack(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"x", "device", NULL};
  PyObject *x, *devo = Py_None, *cap = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwlist, &x, &devo)) return NULL;
  zmlx_device *dev = NULL;
  if (devo != Py_None && !zpy_conv_device(devo, &dev)) return NULL;
  if (PyCapsule_CheckExact(x)) {
    cap = x;
    Py_INCREF(cap);
  } else {
    cap = call_producer_dlpack(x, dev);
    if (!cap) return NULL;
  }
  DLManagedTensor *m = PyCapsule_GetPointer(cap, "dltensor");
  if (!m) {
    Py_DECREF(cap);
    return NULL;
  }
  zmlx_array *a = NULL;
  zmlx_status st = zmlx_array_from_dlpack(m, dev, &a);
  if (st == ZMLX_OK) PyCapsule_SetName(cap, "used_dltensor"); /* zmlx owns it now */
  Py_DECREF(cap);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(a);
}

static PyObject *py_full(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"shape", "value", "dtype", "device", NULL};
  zpy_shape sh;
  double v = 0;
  zmlx_dtype dt = ZMLX_F32;
  PyObject *dto = Py_None, *devo = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&d|OO", kwlist, zpy_conv_shape, &sh, &v, &dto, &devo))
    return NULL;
  zmlx_device *dev;
  if (!zpy_conv_dtype(dto, &dt) || !zpy_conv_device(devo, &dev)) return NULL;
  zmlx_array *a = NULL;
  zmlx_status st = zmlx_array_full(dev, dt, sh.ndim, sh.dims, v, &a);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(a);
}

static PyObject *py_arange(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"start", "step", "n", "dtype", "device", NULL};
  double start, step;
  long long n;
  zmlx_dtype dt = ZMLX_F32;
  PyObject *dto = Py_None, *devo = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "ddL|OO", kwlist, &start, &step, &n, &dto, &devo))
    return NULL;
  zmlx_device *dev;
  if (!zpy_conv_dtype(dto, &dt) || !zpy_conv_device(devo, &dev)) return NULL;
  zmlx_array *a = NULL;
  zmlx_status st = zmlx_array_arange(dev, dt, start, step, n, &a);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(a);
}

static PyObject *py_random(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"kind", "shape", "seed", "a", "b", "dtype", "device", NULL};
  const char *kind;
  zpy_shape sh;
  unsigned long long seed;
  double pa, pb;
  zmlx_dtype dt = ZMLX_F32;
  PyObject *dto = Py_None, *devo = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "sO&Kdd|OO", kwlist, &kind, zpy_conv_shape, &sh, &seed,
                                   &pa, &pb, &dto, &devo))
    return NULL;
  zmlx_device *dev;
  if (!zpy_conv_dtype(dto, &dt) || !zpy_conv_device(devo, &dev)) return NULL;
  zmlx_array *a = NULL;
  zmlx_status st = !strcmp(kind, "normal")
                       ? zmlx_array_random_normal(dev, dt, sh.ndim, sh.dims, seed, pa, pb, &a)
                       : zmlx_array_random_uniform(dev, dt, sh.ndim, sh.dims, seed, pa, pb, &a);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(a);
}

static PyObject *py_live_arrays(PyObject *mod, PyObject *noargs) {
  (void)mod;
  (void)noargs;
  return PyLong_FromLongLong(zmlx_array_live_count());
}

static PyObject *py_default_device(PyObject *mod, PyObject *noargs) {
  (void)mod;
  (void)noargs;
  zmlx_device *dev;
  zmlx_status st = zmlx_default_device(&dev);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_device_name(dev);
}

static PyObject *py_synchronize(PyObject *mod, PyObject *args) {
  (void)mod;
  PyObject *devo = Py_None;
  if (!PyArg_ParseTuple(args, "|O", &devo)) return NULL;
  zmlx_device *dev;
  if (!zpy_conv_device(devo, &dev)) return NULL;
  zmlx_status st;
  Py_BEGIN_ALLOW_THREADS
  st = zmlx_device_synchronize(dev);
  Py_END_ALLOW_THREADS
  if (st != ZMLX_OK) return zpy_raise(st);
  Py_RETURN_NONE;
}

#define KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS
PyMethodDef zpy_array_functions[] = {
    {"from_buffer", KW(py_from_buffer), "from_buffer(buffer, dtype, shape, device=None): copy a "
     "C-contiguous host buffer onto the device."},
    {"from_dlpack", KW(py_from_dlpack), "from_dlpack(x, device=None): an Array over x's memory "
     "(anything with __dlpack__, or a capsule); zero copy on the same device, host tensors copied."},
    {"full", KW(py_full), "full(shape, value, dtype='f32', device=None)"},
    {"arange", KW(py_arange), "arange(start, step, n, dtype='f32', device=None)"},
    {"_random", KW(py_random), "_random(kind, shape, seed, a, b, dtype, device)"},
    {"live_arrays", py_live_arrays, METH_NOARGS, "Number of live zmlx arrays (leak checks)."},
    {"default_device", py_default_device, METH_NOARGS, "The default device's name."},
    {"synchronize", py_synchronize, METH_VARARGS, "synchronize(device=None): wait for its work."},
    {NULL, NULL, 0, NULL},
};

int zpy_add_array(PyObject *m) {
  zpy_array_type = (PyTypeObject *)PyType_FromSpec(&array_spec);
  if (!zpy_array_type) return -1;
  Py_INCREF(zpy_array_type);
  if (PyModule_AddObject(m, "Array", (PyObject *)zpy_array_type) < 0) return -1;
  zpy_error = PyErr_NewExceptionWithDoc("zmlx._core.Error",
                                        "A zmlx call failed: the message says what went wrong, "
                                        "`status` names the status (e.g. 'ZMLX_ERR_SHAPE').",
                                        PyExc_RuntimeError, NULL);
  if (!zpy_error) return -1;
  Py_INCREF(zpy_error);
  return PyModule_AddObject(m, "Error", zpy_error);
}

PyObject *zpy_param_dict(int n, zmlx_array *const *p, const char *const *names) {
  PyObject *d = PyDict_New();
  for (int i = 0; d && i < n; i++) {
    zmlx_array_retain(p[i]);
    PyObject *a = zpy_array_wrap(p[i]);
    if (!a || PyDict_SetItemString(d, names[i], a) < 0) {
      Py_XDECREF(a);
      Py_DECREF(d);
      return NULL;
    }
    Py_DECREF(a);
  }
  return d;
}
