/* Expression ops (zmlx.elementwise, zmlx.reduce, zmlx.map_reduce) as the
 * Op type, and the differentiable array ops (add, sum, reshape, matmul,
 * ...): everything here records itself inside zmlx.grad. */
#include <string.h>

#include "core.h"

typedef struct zpy_op {
  PyObject_HEAD
  zmlx_op *op;
  int n_inputs, n_params, elementwise;
  PyObject *keep; /* the names and texts the op was made from (for repr) */
} zpy_op;

static void op_dealloc(zpy_op *self) {
  zmlx_op_destroy(self->op);
  Py_XDECREF(self->keep);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

/* params: None, a sequence, or a mapping in the op's parameter order */
static double *op_params(zpy_op *self, PyObject *params) {
  Py_ssize_t n = 0;
  double *v = zpy_double_list(params, &n, "params must be a sequence of numbers");
  if (PyErr_Occurred()) return NULL;
  if (n != self->n_params) {
    PyMem_Free(v);
    PyErr_Format(PyExc_TypeError, "the op takes %d parameter(s), %zd given", self->n_params, n);
    return NULL;
  }
  return v;
}

static PyObject *op_call(zpy_op *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"params", NULL};
  PyObject *params = Py_None;
  PyObject *empty = PyTuple_New(0);
  int ok = empty && PyArg_ParseTupleAndKeywords(empty, kw, "|$O", kwlist, &params);
  Py_XDECREF(empty);
  if (!ok) return NULL;
  Py_ssize_t n = 0;
  zmlx_array **in = zpy_array_list(args, &n, "inputs must be zmlx.Array");
  if (!in) return NULL;
  if (n != self->n_inputs) {
    PyMem_Free(in);
    return PyErr_Format(PyExc_TypeError, "the op takes %d input(s), %zd given", self->n_inputs, n);
  }
  double *p = op_params(self, params);
  if (PyErr_Occurred()) {
    PyMem_Free(in);
    return NULL;
  }
  zmlx_array *out = NULL;
  zmlx_status st = self->elementwise ? zmlx_apply(self->op, in, (int)n, p, &out)
                                     : zmlx_op_call(self->op, in, (int)n, p, NULL, &out);
  PyMem_Free(in);
  PyMem_Free(p);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

/* op.source(backend='cuda', direction='forward', dtypes=None) */
static PyObject *op_source(zpy_op *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"backend", "direction", "dtypes", NULL};
  const char *backend = "cuda", *direction = "forward";
  PyObject *dtypes = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|ssO", kwlist, &backend, &direction, &dtypes))
    return NULL;
  zmlx_backend b;
  zmlx_status st = zmlx_backend_from_name(backend, &b);
  if (st != ZMLX_OK) return zpy_raise(st);
  zmlx_op_direction dir = !strcmp(direction, "vjp") ? ZMLX_OP_VJP
                          : !strcmp(direction, "jvp") ? ZMLX_OP_JVP
                                                      : ZMLX_OP_FORWARD;
  zmlx_dtype dts[16];
  for (int i = 0; i < 16; i++) dts[i] = ZMLX_F32;
  if (!zpy_dtype_list(dtypes, dts, 16)) return NULL;
  char *src = NULL;
  st = zmlx_op_source(self->op, b, dir, dts, &src);
  if (st != ZMLX_OK) return zpy_raise(st);
  PyObject *s = PyUnicode_FromString(src);
  zmlx_free(src);
  return s;
}

static PyObject *op_vjp(zpy_op *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"inputs", "cotangent", "params", NULL};
  PyObject *inputs, *params = Py_None;
  zmlx_array *ct;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO&|O", kwlist, &inputs, zpy_conv_array, &ct, &params))
    return NULL;
  Py_ssize_t n = 0;
  zmlx_array **in = zpy_array_list(inputs, &n, "inputs must be zmlx.Array");
  if (!in) return NULL;
  if (n != self->n_inputs) {
    PyMem_Free(in);
    return PyErr_Format(PyExc_TypeError, "the op takes %d input(s), %zd given", self->n_inputs, n);
  }
  double *p = op_params(self, params);
  zmlx_array *grads[16] = {0};
  zmlx_status st = PyErr_Occurred() ? ZMLX_OK : zmlx_op_vjp(self->op, in, (int)n, p, ct, NULL, grads);
  PyMem_Free(in);
  PyMem_Free(p);
  if (PyErr_Occurred()) return NULL;
  if (st != ZMLX_OK) return zpy_raise(st);
  PyObject *t = PyTuple_New(n);
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *g = t ? zpy_array_wrap(grads[i]) : (zmlx_array_release(grads[i]), NULL);
    if (t) PyTuple_SET_ITEM(t, i, g);
  }
  return t;
}

static PyMethodDef op_methods[] = {
    {"source", (PyCFunction)(void (*)(void))op_source, METH_VARARGS | METH_KEYWORDS,
     "source(backend='cuda', direction='forward'|'vjp'|'jvp', dtypes=None): generated kernel "
     "source."},
    {"vjp", (PyCFunction)(void (*)(void))op_vjp, METH_VARARGS | METH_KEYWORDS,
     "vjp(inputs, cotangent, params=None): the gradients of every input (elementwise ops)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject op_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zmlx._core.Op",
    .tp_basicsize = sizeof(zpy_op),
    .tp_dealloc = (destructor)op_dealloc,
    .tp_call = (ternaryfunc)op_call,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A kernel generated from an expression; call it on Arrays (params=[...]).",
    .tp_methods = op_methods,
};

static PyObject *op_wrap(zmlx_op *op, int n_inputs, int n_params, int elementwise) {
  zpy_op *self = PyObject_New(zpy_op, &op_type);
  if (!self) {
    zmlx_op_destroy(op);
    return NULL;
  }
  self->op = op;
  self->n_inputs = n_inputs;
  self->n_params = n_params;
  self->elementwise = elementwise;
  self->keep = NULL;
  return (PyObject *)self;
}

static PyObject *py_elementwise(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"expr", "inputs", "params", NULL};
  const char *expr;
  PyObject *inputs, *params = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "sO|O", kwlist, &expr, &inputs, &params)) return NULL;
  Py_ssize_t ni = 0, np_ = 0;
  const char **in = zpy_str_list(inputs, &ni, "inputs must be a sequence of names");
  if (!in) return NULL;
  const char **pn = NULL;
  if (params != Py_None && !(pn = zpy_str_list(params, &np_, "params must be a sequence of names"))) {
    PyMem_Free(in);
    return NULL;
  }
  zmlx_op *op = NULL;
  zmlx_status st = zmlx_elementwise(expr, in, (int)ni, pn, (int)np_, &op);
  PyMem_Free(in);
  PyMem_Free(pn);
  if (st != ZMLX_OK) return zpy_raise(st);
  return op_wrap(op, (int)ni, (int)np_, 1);
}

/* A reduce description from a dict of expressions. */
static int reduce_desc(PyObject *d, zmlx_reduce_desc *r) {
  memset(r, 0, sizeof *r);
  if (!PyDict_Check(d)) {
    PyErr_SetString(PyExc_TypeError, "a reduction is a dict: init, update, and optionally map, "
                                     "combine, finalize");
    return 0;
  }
  const char **slots[5] = {&r->init, &r->map, &r->update, &r->combine, &r->finalize};
  const char *keys[5] = {"init", "map", "update", "combine", "finalize"};
  for (int i = 0; i < 5; i++) {
    PyObject *v = PyDict_GetItemString(d, keys[i]);
    if (v && v != Py_None && !(*slots[i] = PyUnicode_AsUTF8(v))) return 0;
  }
  return 1;
}

static PyObject *py_reduce(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"init", "update", "map", "combine", "finalize", NULL};
  zmlx_reduce_desc r;
  memset(&r, 0, sizeof r);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "ss|zzz", kwlist, &r.init, &r.update, &r.map,
                                   &r.combine, &r.finalize))
    return NULL;
  zmlx_op *op = NULL;
  zmlx_status st = zmlx_reduce(&r, &op);
  if (st != ZMLX_OK) return zpy_raise(st);
  return op_wrap(op, 1, 0, 0);
}

static PyObject *py_map_reduce(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"reductions", "write", "strategy", NULL};
  PyObject *reds;
  zmlx_map_reduce_desc d;
  memset(&d, 0, sizeof d);
  const char *strategy = "auto";
  if (!PyArg_ParseTupleAndKeywords(args, kw, "Os|s", kwlist, &reds, &d.write, &strategy)) return NULL;
  PyObject *seq = PySequence_Fast(reds, "reductions must be a sequence of dicts");
  if (!seq) return NULL;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  if (n < 1 || n > 2) {
    Py_DECREF(seq);
    return PyErr_Format(PyExc_ValueError, "map_reduce takes 1 or 2 reductions, not %zd", n);
  }
  for (Py_ssize_t i = 0; i < n; i++)
    if (!reduce_desc(PySequence_Fast_GET_ITEM(seq, i), &d.reduce[i])) {
      Py_DECREF(seq);
      return NULL;
    }
  d.n_reduce = (int)n;
  d.strategy = !strcmp(strategy, "online")     ? ZMLX_MAP_REDUCE_ONLINE
               : !strcmp(strategy, "two_pass") ? ZMLX_MAP_REDUCE_TWO_PASS
                                               : ZMLX_MAP_REDUCE_AUTO;
  zmlx_op *op = NULL;
  zmlx_status st = zmlx_map_reduce(&d, &op);
  Py_DECREF(seq); /* the texts were copied by zmlx_map_reduce */
  if (st != ZMLX_OK) return zpy_raise(st);
  return op_wrap(op, 1, 0, 0);
}

/* ------------------------------------------------- differentiable ops */

typedef zmlx_status (*binary_fn)(zmlx_array *, zmlx_array *, zmlx_array **);

static PyObject *binary(PyObject *args, binary_fn fn) {
  zmlx_array *a, *b, *out = NULL;
  if (!PyArg_ParseTuple(args, "O&O&", zpy_conv_array, &a, zpy_conv_array, &b)) return NULL;
  zmlx_status st = fn(a, b, &out);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

static PyObject *py_add(PyObject *m, PyObject *a) { (void)m; return binary(a, zmlx_add); }
static PyObject *py_sub(PyObject *m, PyObject *a) { (void)m; return binary(a, zmlx_sub); }
static PyObject *py_mul(PyObject *m, PyObject *a) { (void)m; return binary(a, zmlx_mul); }
static PyObject *py_div(PyObject *m, PyObject *a) { (void)m; return binary(a, zmlx_div); }
static PyObject *py_matmul(PyObject *m, PyObject *a) { (void)m; return binary(a, zmlx_matmul); }

typedef zmlx_status (*axes_fn)(zmlx_array *, const int *, int, int, zmlx_array **);

static PyObject *axes_op(PyObject *args, PyObject *kw, axes_fn fn) {
  static char *kwlist[] = {"x", "axes", "keepdims", NULL};
  zmlx_array *x, *out = NULL;
  PyObject *axes = Py_None;
  int keepdims = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|Op", kwlist, zpy_conv_array, &x, &axes, &keepdims))
    return NULL;
  int ax[ZMLX_MAX_DIMS], nax = 0;
  if (axes != Py_None) {
    zpy_shape s;
    if (!zpy_conv_shape(axes, &s)) return NULL;
    nax = s.ndim;
    for (int i = 0; i < nax; i++) ax[i] = (int)s.dims[i];
  }
  zmlx_status st = fn(x, axes == Py_None ? NULL : ax, nax, keepdims, &out);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

static PyObject *py_sum(PyObject *m, PyObject *a, PyObject *k) { (void)m; return axes_op(a, k, zmlx_sum); }
static PyObject *py_mean(PyObject *m, PyObject *a, PyObject *k) { (void)m; return axes_op(a, k, zmlx_mean); }

static PyObject *py_reshape(PyObject *mod, PyObject *args) {
  (void)mod;
  zmlx_array *x, *out = NULL;
  zpy_shape s;
  if (!PyArg_ParseTuple(args, "O&O&", zpy_conv_array, &x, zpy_conv_shape, &s)) return NULL;
  zmlx_status st = zmlx_reshape(x, s.ndim, s.dims, &out);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

static PyObject *py_transpose(PyObject *mod, PyObject *args) {
  (void)mod;
  zmlx_array *x, *out = NULL;
  PyObject *perm = Py_None;
  if (!PyArg_ParseTuple(args, "O&|O", zpy_conv_array, &x, &perm)) return NULL;
  int p[ZMLX_MAX_DIMS];
  if (perm != Py_None) {
    zpy_shape s;
    if (!zpy_conv_shape(perm, &s)) return NULL;
    if (s.ndim != zmlx_array_ndim(x))
      return PyErr_Format(PyExc_ValueError, "perm has %d axes, the array %d", s.ndim,
                          zmlx_array_ndim(x));
    for (int i = 0; i < s.ndim; i++) p[i] = (int)s.dims[i];
  }
  zmlx_status st = zmlx_transpose(x, perm == Py_None ? NULL : p, &out);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

static PyObject *py_astype(PyObject *mod, PyObject *args) {
  (void)mod;
  zmlx_array *x, *out = NULL;
  zmlx_dtype dt;
  if (!PyArg_ParseTuple(args, "O&O&", zpy_conv_array, &x, zpy_conv_dtype, &dt)) return NULL;
  zmlx_status st = zmlx_astype(x, dt, &out);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

static PyObject *py_stop_gradient(PyObject *mod, PyObject *args) {
  (void)mod;
  zmlx_array *x, *out = NULL;
  if (!PyArg_ParseTuple(args, "O&", zpy_conv_array, &x)) return NULL;
  zmlx_status st = zmlx_stop_gradient(x, &out);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

#define KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS
PyMethodDef zpy_ops_functions[] = {
    {"elementwise", KW(py_elementwise),
     "elementwise(expr, inputs, params=None): an Op from an expression such as "
     "'x * sigmoid(x) * y' (differentiable to any order)."},
    {"reduce", KW(py_reduce), "reduce(init, update, map=None, combine=None, finalize=None): a "
     "reduction over the last axis."},
    {"map_reduce", KW(py_map_reduce), "map_reduce(reductions, write, strategy='auto')"},
    {"add", py_add, METH_VARARGS, "a + b (broadcasting)"},
    {"subtract", py_sub, METH_VARARGS, "a - b (broadcasting)"},
    {"multiply", py_mul, METH_VARARGS, "a * b (broadcasting)"},
    {"divide", py_div, METH_VARARGS, "a / b (broadcasting)"},
    {"matmul", py_matmul, METH_VARARGS, "a @ b over the last two axes, batch axes broadcast"},
    {"sum", KW(py_sum), "sum(x, axes=None, keepdims=False)"},
    {"mean", KW(py_mean), "mean(x, axes=None, keepdims=False)"},
    {"reshape", py_reshape, METH_VARARGS, "reshape(x, shape)"},
    {"transpose", py_transpose, METH_VARARGS, "transpose(x, perm=None)"},
    {"astype", py_astype, METH_VARARGS, "astype(x, dtype)"},
    {"stop_gradient", py_stop_gradient, METH_VARARGS, "stop_gradient(x)"},
    {NULL, NULL, 0, NULL},
};

int zpy_add_ops(PyObject *m) {
  if (PyType_Ready(&op_type) < 0) return -1;
  Py_INCREF(&op_type);
  return PyModule_AddObject(m, "Op", (PyObject *)&op_type);
}
