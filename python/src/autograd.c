/* Autograd over Python functions: zmlx's grad calls with a C trampoline
 * that calls the Python function on Arrays. A Python exception inside the
 * function stops the grad call and is raised as it was. */
#include "core.h"

typedef struct callback {
  PyObject *fn;
  int raised; /* the Python function raised: its exception is pending */
} callback;

static zmlx_status trampoline(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  callback *cb = ud;
  if (cb->raised) return ZMLX_ERR_INVALID_ARG;
  PyObject *args = PyTuple_New(n);
  for (int i = 0; args && i < n; i++) {
    zmlx_array_retain(in[i]);
    PyObject *a = zpy_array_wrap(in[i]);
    if (!a) {
      Py_CLEAR(args);
      break;
    }
    PyTuple_SET_ITEM(args, i, a);
  }
  PyObject *r = args ? PyObject_CallObject(cb->fn, args) : NULL;
  Py_XDECREF(args);
  if (r && !PyObject_TypeCheck(r, zpy_array_type)) {
    PyErr_Format(PyExc_TypeError, "the function must return a zmlx.Array, not %s",
                 Py_TYPE(r)->tp_name);
    Py_CLEAR(r);
  }
  if (!r) {
    cb->raised = 1;
    return ZMLX_ERR_INVALID_ARG;
  }
  *out = ((zpy_array *)r)->a;
  zmlx_array_retain(*out);
  Py_DECREF(r);
  return ZMLX_OK;
}

/* The status of a grad call: the Python exception if the function raised. */
static PyObject *fail(const callback *cb, zmlx_status st) {
  if (cb->raised) {
    zmlx_clear_error();
    return NULL;
  }
  return zpy_raise(st);
}

static int parse_argnums(PyObject *o, Py_ssize_t n_inputs, int *argnums, int *n) {
  if (o == Py_None) {
    *n = (int)n_inputs;
    for (int i = 0; i < *n; i++) argnums[i] = i;
    return 1;
  }
  zpy_shape s;
  if (!zpy_conv_shape(o, &s)) return 0;
  *n = s.ndim;
  for (int i = 0; i < s.ndim; i++) {
    if (s.dims[i] < 0 || s.dims[i] >= n_inputs) {
      PyErr_Format(PyExc_ValueError, "argnums[%d] = %lld is not an input index (0..%zd)", i,
                   (long long)s.dims[i], n_inputs - 1);
      return 0;
    }
    argnums[i] = (int)s.dims[i];
  }
  return 1;
}

static PyObject *grads_list(zmlx_array **g, int n) {
  PyObject *l = PyList_New(n);
  for (int i = 0; i < n; i++) {
    if (!l) {
      zmlx_array_release(g[i]);
      continue;
    }
    PyObject *a = zpy_array_wrap(g[i]);
    if (!a) Py_CLEAR(l);
    else PyList_SET_ITEM(l, i, a);
  }
  return l;
}

/* inputs (a sequence of Arrays) and argnums (None: all) of a grad call;
 * *in is PyMem_Malloc'ed. 0 with a Python exception set on bad input. */
static int grad_inputs(PyObject *inputs, PyObject *argo, zmlx_array ***in, Py_ssize_t *n,
                       int *argnums, int *na) {
  *in = zpy_array_list(inputs, n, "inputs must be zmlx.Array");
  if (!*in) return 0;
  if (*n > ZMLX_MAX_DIMS || !parse_argnums(argo, *n, argnums, na)) {
    PyMem_Free(*in);
    *in = NULL;
    if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "at most %d inputs", ZMLX_MAX_DIMS);
    return 0;
  }
  return 1;
}

/* (value, [grads]) taking over the references. */
static PyObject *value_and_grads(zmlx_array *value, zmlx_array **grads, int na) {
  PyObject *v = zpy_array_wrap(value), *g = grads_list(grads, na);
  if (!v || !g) {
    Py_XDECREF(v);
    Py_XDECREF(g);
    return NULL;
  }
  return Py_BuildValue("(NN)", v, g);
}

static PyObject *py_value_and_grad(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"fn", "inputs", "argnums", NULL};
  PyObject *fn, *inputs, *argo = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &fn, &inputs, &argo)) return NULL;
  Py_ssize_t n = 0;
  zmlx_array **in = NULL;
  int argnums[ZMLX_MAX_DIMS], na = 0;
  if (!grad_inputs(inputs, argo, &in, &n, argnums, &na)) return NULL;
  callback cb = {fn, 0};
  zmlx_array *value = NULL, *grads[ZMLX_MAX_DIMS] = {0};
  zmlx_status st = zmlx_value_and_grad(trampoline, &cb, in, (int)n, argnums, na, &value, grads);
  PyMem_Free(in);
  if (st != ZMLX_OK) return fail(&cb, st);
  return value_and_grads(value, grads, na);
}

static PyObject *py_vjp(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"fn", "inputs", "cotangent", "argnums", NULL};
  PyObject *fn, *inputs, *argo = Py_None;
  zmlx_array *ct;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO&|O", kwlist, &fn, &inputs, zpy_conv_array, &ct,
                                   &argo))
    return NULL;
  Py_ssize_t n = 0;
  zmlx_array **in = NULL;
  int argnums[ZMLX_MAX_DIMS], na = 0;
  if (!grad_inputs(inputs, argo, &in, &n, argnums, &na)) return NULL;
  callback cb = {fn, 0};
  zmlx_array *out = NULL, *grads[ZMLX_MAX_DIMS] = {0};
  zmlx_status st = zmlx_vjp(trampoline, &cb, in, (int)n, argnums, na, ct, &out, grads);
  PyMem_Free(in);
  if (st != ZMLX_OK) return fail(&cb, st);
  return value_and_grads(out, grads, na);
}

static PyObject *py_jvp(PyObject *mod, PyObject *args, PyObject *kw) {
  (void)mod;
  static char *kwlist[] = {"fn", "primals", "tangents", NULL};
  PyObject *fn, *primals, *tangents;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO", kwlist, &fn, &primals, &tangents)) return NULL;
  Py_ssize_t n = 0, nt = 0;
  zmlx_array **p = zpy_array_list(primals, &n, "primals must be zmlx.Array");
  if (!p) return NULL;
  zmlx_array **t = zpy_array_list(tangents, &nt, "tangents must be zmlx.Array");
  if (!t || nt != n) {
    PyMem_Free(p);
    PyMem_Free(t);
    if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "%zd primals but %zd tangents", n, nt);
    return NULL;
  }
  callback cb = {fn, 0};
  zmlx_array *out = NULL, *tan = NULL;
  zmlx_status st = zmlx_jvp(trampoline, &cb, p, t, (int)n, &out, &tan);
  PyMem_Free(p);
  PyMem_Free(t);
  if (st != ZMLX_OK) return fail(&cb, st);
  PyObject *v = zpy_array_wrap(out), *w = zpy_array_wrap(tan);
  if (!v || !w) {
    Py_XDECREF(v);
    Py_XDECREF(w);
    return NULL;
  }
  return Py_BuildValue("(NN)", v, w);
}

static PyObject *py_is_recording(PyObject *mod, PyObject *noargs) {
  (void)mod;
  (void)noargs;
  return PyBool_FromLong(zmlx_grad_is_recording());
}

#define KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS
PyMethodDef zpy_autograd_functions[] = {
    {"_value_and_grad", KW(py_value_and_grad),
     "_value_and_grad(fn, inputs, argnums=None) -> (value, [grads])"},
    {"_vjp", KW(py_vjp), "_vjp(fn, inputs, cotangent, argnums=None) -> (out, [grads])"},
    {"_jvp", KW(py_jvp), "_jvp(fn, primals, tangents) -> (out, tangent)"},
    {"grad_is_recording", py_is_recording, METH_NOARGS, "True inside a grad call."},
    {NULL, NULL, 0, NULL},
};

int zpy_add_autograd(PyObject *m) {
  (void)m;
  return 0;
}
