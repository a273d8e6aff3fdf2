/* zmlx.kernel: the kernel object (MLX's mx.fast.metal_kernel analog) over
 * zmlx_kernel_create / zmlx_kernel_launch, with ZMLX's launch defaults:
 * outputs like input 0, one thread per element of input 0. */
#include <string.h>

#include "core.h"

#define MAX_IO 16

typedef struct zpy_kernel {
  PyObject_HEAD
  zmlx_kernel *k;
  int n_inputs, n_outputs, n_params;
} zpy_kernel;

static void kernel_dealloc(zpy_kernel *self) {
  zmlx_kernel_destroy(self->k);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

/* template={"T": "f32", "N": 4, "FAST": True} */
static int parse_templates(PyObject *d, zmlx_template_arg *t, int *n) {
  *n = 0;
  if (d == Py_None) return 1;
  if (!PyDict_Check(d)) {
    PyErr_SetString(PyExc_TypeError, "template must be a dict of name -> dtype, int or bool");
    return 0;
  }
  PyObject *key, *val;
  Py_ssize_t pos = 0;
  while (PyDict_Next(d, &pos, &key, &val)) {
    if (*n >= MAX_IO) {
      PyErr_Format(PyExc_ValueError, "at most %d template arguments", MAX_IO);
      return 0;
    }
    zmlx_template_arg *a = &t[(*n)++];
    memset(a, 0, sizeof *a);
    if (!(a->name = PyUnicode_AsUTF8(key))) return 0;
    if (PyBool_Check(val)) {
      a->kind = ZMLX_TEMPLATE_BOOL;
      a->value = val == Py_True;
    } else if (PyLong_Check(val)) {
      a->kind = ZMLX_TEMPLATE_INT;
      a->value = PyLong_AsLongLong(val);
    } else {
      a->kind = ZMLX_TEMPLATE_DTYPE;
      if (!zpy_conv_dtype(val, &a->dtype)) return 0;
    }
  }
  return 1;
}

static int parse_dim3(PyObject *o, int64_t *v, const char *what) {
  if (o == Py_None) return 1;
  zpy_shape s;
  if (!zpy_conv_shape(o, &s)) return 0;
  if (s.ndim < 1 || s.ndim > 3) {
    PyErr_Format(PyExc_ValueError, "%s has 1 to 3 entries", what);
    return 0;
  }
  for (int i = 0; i < 3; i++) v[i] = i < s.ndim ? s.dims[i] : 1;
  return 1;
}

static PyObject *kernel_call(zpy_kernel *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"inputs",   "output_shapes", "output_dtypes", "grid", "threadgroup",
                           "template", "params",        "init_value",    NULL};
  PyObject *inputs, *oshapes = Py_None, *odtypes = Py_None, *grid = Py_None, *tg = Py_None;
  PyObject *templ = Py_None, *params = Py_None, *init = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$OOOOOOO", kwlist, &inputs, &oshapes, &odtypes,
                                   &grid, &tg, &templ, &params, &init))
    return NULL;
  Py_ssize_t n = 0, np_ = 0;
  zmlx_array **in = zpy_array_list(inputs, &n, "inputs must be a sequence of zmlx.Array");
  if (!in) return NULL;
  PyObject *result = NULL;
  double *pv = zpy_double_list(params, &np_, "params must be a sequence of numbers");
  zmlx_template_arg t[MAX_IO];
  int nt = 0;
  zmlx_array *outs[MAX_IO] = {0};
  zpy_shape shapes[MAX_IO];
  const int64_t *shape_ptrs[MAX_IO];
  int ndims[MAX_IO];
  zmlx_dtype dts[MAX_IO];
  int64_t g[3] = {0, 1, 1}, tgs[3] = {0, 1, 1};
  if (PyErr_Occurred()) goto done;
  if (n != self->n_inputs || np_ != self->n_params) {
    PyErr_Format(PyExc_TypeError, "the kernel takes %d input(s) and %d param(s), %zd and %zd given",
                 self->n_inputs, self->n_params, n, np_);
    goto done;
  }
  if (!parse_templates(templ, t, &nt) || !parse_dim3(grid, g, "grid") ||
      !parse_dim3(tg, tgs, "threadgroup"))
    goto done;
  zmlx_status st;
  if (oshapes == Py_None && odtypes == Py_None && grid == Py_None && tg == Py_None && !nt &&
      init == Py_None && n > 0) {
    st = zmlx_kernel_apply(self->k, in, pv, outs); /* ZMLX's defaults */
  } else {
    /* outputs default to input 0's shape and dtype; grid to its size */
    for (int i = 0; i < self->n_outputs; i++) {
      PyObject *s = oshapes == Py_None ? NULL : PySequence_GetItem(oshapes, i);
      if (s) {
        int ok = zpy_conv_shape(s, &shapes[i]);
        Py_DECREF(s);
        if (!ok) goto done;
      } else if (PyErr_Occurred()) {
        goto done;
      } else if (n > 0) {
        shapes[i].ndim = zmlx_array_ndim(in[0]);
        memcpy(shapes[i].dims, zmlx_array_shape(in[0]), sizeof(int64_t) * (size_t)shapes[i].ndim);
      } else {
        PyErr_SetString(PyExc_TypeError, "a kernel without inputs needs output_shapes");
        goto done;
      }
      shape_ptrs[i] = shapes[i].dims;
      ndims[i] = shapes[i].ndim;
      PyObject *d = odtypes == Py_None ? NULL : PySequence_GetItem(odtypes, i);
      if (d) {
        int ok = zpy_conv_dtype(d, &dts[i]);
        Py_DECREF(d);
        if (!ok) goto done;
      } else if (PyErr_Occurred()) {
        goto done;
      } else {
        dts[i] = n > 0 ? zmlx_array_dtype(in[0]) : ZMLX_F32;
      }
    }
    if (grid == Py_None) {
      g[0] = 1;
      for (int i = 0; i < shapes[0].ndim; i++) g[0] *= shapes[0].dims[i];
      if (n > 0) g[0] = zmlx_array_size(in[0]);
    }
    if (tg == Py_None) tgs[0] = g[0] < 256 ? (g[0] > 0 ? g[0] : 1) : 256;
    zmlx_kernel_call c;
    memset(&c, 0, sizeof c);
    c.n_inputs = (int)n;
    c.n_outputs = self->n_outputs;
    c.inputs = in;
    c.outputs = outs;
    c.output_ndims = ndims;
    c.output_shapes = shape_ptrs;
    c.output_dtypes = dts;
    for (int i = 0; i < 3; i++) c.grid[i] = g[i], c.threadgroup[i] = (int)tgs[i];
    c.templates = nt ? t : NULL;
    c.n_templates = nt;
    c.params = pv;
    if (init != Py_None) {
      c.has_init_value = 1;
      c.init_value = PyFloat_AsDouble(init);
      if (PyErr_Occurred()) goto done;
    }
    st = zmlx_kernel_launch(self->k, &c);
  }
  if (st != ZMLX_OK) {
    zpy_raise(st);
    goto done;
  }
  result = PyList_New(self->n_outputs);
  for (int i = 0; i < self->n_outputs; i++) {
    PyObject *a = result ? zpy_array_wrap(outs[i]) : (zmlx_array_release(outs[i]), NULL);
    outs[i] = NULL;
    if (result && !a) Py_CLEAR(result);
    if (result) PyList_SET_ITEM(result, i, a);
  }
done:
  for (int i = 0; i < MAX_IO; i++) zmlx_array_release(outs[i]);
  PyMem_Free(in);
  PyMem_Free(pv);
  return result;
}

/* source(backend, dtypes=[inputs..., outputs...] (default f32), template=None) */
static PyObject *kernel_source(zpy_kernel *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"backend", "dtypes", "template", NULL};
  const char *backend = "cuda";
  PyObject *dtypes = Py_None, *templ = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|sOO", kwlist, &backend, &dtypes, &templ)) return NULL;
  zmlx_template_arg t[MAX_IO];
  int nt = 0;
  if (!parse_templates(templ, t, &nt)) return NULL;
  zmlx_backend b;
  zmlx_status st = zmlx_backend_from_name(backend, &b);
  if (st != ZMLX_OK) return zpy_raise(st);
  zmlx_dtype dts[MAX_IO];
  for (int i = 0; i < MAX_IO; i++) dts[i] = ZMLX_F32;
  if (!zpy_dtype_list(dtypes, dts, MAX_IO)) return NULL;
  zmlx_kernel_call c;
  memset(&c, 0, sizeof c);
  c.n_inputs = self->n_inputs;
  c.n_outputs = self->n_outputs;
  c.output_dtypes = dts + self->n_inputs;
  c.templates = nt ? t : NULL;
  c.n_templates = nt;
  char *src = NULL;
  st = zmlx_kernel_source(self->k, b, &c, dts, &src);
  if (st != ZMLX_OK) return zpy_raise(st);
  PyObject *s = PyUnicode_FromString(src);
  zmlx_free(src);
  return s;
}

static PyMethodDef kernel_methods[] = {
    {"source", (PyCFunction)(void (*)(void))kernel_source, METH_VARARGS | METH_KEYWORDS,
     "source(backend='cuda', dtypes=None, template=None): the full generated source for the "
     "dtypes of the inputs then the outputs (f32 where not given)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject kernel_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zmlx._core.Kernel",
    .tp_basicsize = sizeof(zpy_kernel),
    .tp_dealloc = (destructor)kernel_dealloc,
    .tp_call = (ternaryfunc)kernel_call,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A dialect kernel; call k(inputs, output_shapes=..., grid=..., template=...) -> "
              "[outputs].",
    .tp_methods = kernel_methods,
};

static PyObject *py_kernel(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"name",   "input_names",           "output_names",   "source",
                           "header", "ensure_row_contiguous", "atomic_outputs", "params", NULL};
  const char *name, *source, *header = NULL;
  PyObject *inames, *onames, *params = Py_None;
  int erc = 1, atomic = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "sOOs|zppO", kwlist, &name, &inames, &onames, &source,
                                   &header, &erc, &atomic, &params))
    return NULL;
  Py_ssize_t ni = 0, no = 0, np_ = 0;
  const char **in = zpy_str_list(inames, &ni, "input_names must be a sequence of str");
  const char **on = in ? zpy_str_list(onames, &no, "output_names must be a sequence of str") : NULL;
  const char *pn[MAX_IO];
  zmlx_dtype pd[MAX_IO];
  PyObject *pseq = NULL, *result = NULL;
  if (!in || !on) goto done;
  if (params != Py_None) {
    /* params=[("scale", "f32"), ...] */
    pseq = PySequence_Fast(params, "params must be a sequence of (name, dtype)");
    if (!pseq) goto done;
    np_ = PySequence_Fast_GET_SIZE(pseq);
    if (np_ > MAX_IO) {
      PyErr_Format(PyExc_ValueError, "at most %d params", MAX_IO);
      goto done;
    }
    for (Py_ssize_t i = 0; i < np_; i++)
      if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(pseq, i), "sO&", &pn[i], zpy_conv_dtype, &pd[i]))
        goto done;
  }
  zmlx_kernel_desc d;
  memset(&d, 0, sizeof d);
  d.name = name;
  d.input_names = in;
  d.n_inputs = (int)ni;
  d.output_names = on;
  d.n_outputs = (int)no;
  d.source = source;
  d.header = header;
  d.ensure_row_contiguous = erc;
  d.atomic_outputs = atomic;
  d.param_names = np_ ? pn : NULL;
  d.param_dtypes = np_ ? pd : NULL;
  d.n_params = (int)np_;
  zmlx_kernel *k = NULL;
  zmlx_status st = zmlx_kernel_create(&d, &k);
  if (st != ZMLX_OK) {
    zpy_raise(st);
    goto done;
  }
  zpy_kernel *self = PyObject_New(zpy_kernel, &kernel_type);
  if (!self) {
    zmlx_kernel_destroy(k);
    goto done;
  }
  self->k = k;
  self->n_inputs = (int)ni;
  self->n_outputs = (int)no;
  self->n_params = (int)np_;
  result = (PyObject *)self;
done:
  Py_XDECREF(pseq);
  PyMem_Free(in);
  PyMem_Free(on);
  return result;
}

PyMethodDef zpy_kernel_functions[] = {
    {"kernel", (PyCFunction)(void (*)(void))py_kernel, METH_VARARGS | METH_KEYWORDS,
     "kernel(name, input_names, output_names, source, header=None, ensure_row_contiguous=True, "
     "atomic_outputs=False, params=None): a kernel object from a dialect body."},
    {NULL, NULL, 0, NULL},
};

int zpy_add_kernel(PyObject *m) {
  if (PyType_Ready(&kernel_type) < 0) return -1;
  Py_INCREF(&kernel_type);
  return PyModule_AddObject(m, "Kernel", (PyObject *)&kernel_type);
}
