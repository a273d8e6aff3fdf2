/* The model layer in Python: zmlx.AdamW (the optimizer object), adamw_step
 * (the functional form), and the MoE calls (moe_gate, moe_dispatch,
 * moe_experts, moe). */
#include <string.h>

#include "core.h"

/* ------------------------------------------------------------- AdamW */

typedef struct zpy_adamw {
  PyObject_HEAD
  zmlx_adamw *opt;
  PyObject *params; /* the list the optimizer updates in place (kept alive) */
} zpy_adamw;

static void adamw_dealloc(zpy_adamw *self) {
  zmlx_adamw_destroy(self->opt);
  Py_XDECREF(self->params);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_betas(PyObject *betas, zmlx_adamw_opts *o) {
  if (!betas || betas == Py_None) return 1;
  return PyArg_ParseTuple(betas, "dd", &o->beta1, &o->beta2);
}

static int adamw_init(zpy_adamw *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"params", "betas", "eps", "weight_decay", "max_grad_norm",
                           "master_weights", NULL};
  zmlx_adamw_opts o = {.struct_size = sizeof o};
  PyObject *params, *betas = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|Odddp", kwlist, &params, &betas, &o.eps,
                                   &o.weight_decay, &o.max_grad_norm, &o.master_weights) ||
      !parse_betas(betas, &o))
    return -1;
  PyObject *list = PySequence_List(params);
  if (!list) return -1;
  Py_ssize_t n = 0;
  zmlx_array **p = zpy_array_list(list, &n, "AdamW: params must be zmlx arrays");
  if (!p) {
    Py_DECREF(list);
    return -1;
  }
  zmlx_adamw_destroy(self->opt);
  self->opt = NULL;
  zmlx_status st = zmlx_adamw_create(p, (int)n, &o, &self->opt);
  PyMem_Free(p);
  if (st != ZMLX_OK) {
    Py_DECREF(list);
    zpy_raise(st);
    return -1;
  }
  Py_XSETREF(self->params, list);
  return 0;
}

static PyObject *adamw_update(zpy_adamw *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"grads", "lr", NULL};
  PyObject *grads;
  double lr;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "Od", kwlist, &grads, &lr)) return NULL;
  Py_ssize_t n = 0;
  zmlx_array **g = zpy_array_list(grads, &n, "AdamW.step: grads must be zmlx arrays");
  if (!g) return NULL;
  zmlx_array *norm = NULL;
  zmlx_status st = zmlx_adamw_update(self->opt, g, (int)n, lr, &norm);
  PyMem_Free(g);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(norm);
}

static PyObject *wrap_or_none(zmlx_array *a) {
  if (a) return zpy_array_wrap(a);
  Py_RETURN_NONE;
}

static PyObject *adamw_state(zpy_adamw *self, PyObject *args) {
  int i;
  if (!PyArg_ParseTuple(args, "i", &i)) return NULL;
  zmlx_array *m = NULL, *v = NULL, *w = NULL;
  int64_t steps = 0;
  zmlx_status st = zmlx_adamw_state(self->opt, i, &m, &v, &w, &steps);
  if (st != ZMLX_OK) return zpy_raise(st);
  return Py_BuildValue("{s:N,s:N,s:N,s:L}", "exp_avg", zpy_array_wrap(m), "exp_avg_sq",
                       zpy_array_wrap(v), "master", wrap_or_none(w), "steps", (long long)steps);
}

static PyMethodDef adamw_methods[] = {
    {"step", (PyCFunction)(void (*)(void))adamw_update, METH_VARARGS | METH_KEYWORDS,
     "step(grads, lr) -> the gradients' global L2 norm (f32 scalar); updates the params in place"},
    {"state", (PyCFunction)adamw_state, METH_VARARGS,
     "state(i) -> {'exp_avg', 'exp_avg_sq', 'master' (or None), 'steps'}"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject adamw_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zmlx.AdamW",
    .tp_basicsize = sizeof(zpy_adamw),
    .tp_dealloc = (destructor)adamw_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "AdamW(params, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, max_grad_norm=0, "
              "master_weights=False): fused multi-tensor AdamW over zmlx arrays (updated in place).",
    .tp_methods = adamw_methods,
    .tp_init = (initproc)adamw_init,
    .tp_new = PyType_GenericNew,
};

/* adamw_step(params, grads, exp_avg, exp_avg_sq, lr, step, master=None, ...) */
static PyObject *py_adamw_step(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"params", "grads", "exp_avg", "exp_avg_sq", "lr", "step", "master",
                           "betas", "eps", "weight_decay", "max_grad_norm", NULL};
  PyObject *lists[5] = {NULL, NULL, NULL, NULL, Py_None}, *betas = NULL;
  double lr;
  long long step;
  zmlx_adamw_opts o = {.struct_size = sizeof o};
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOdL|OOddd", kwlist, &lists[0], &lists[1],
                                   &lists[2], &lists[3], &lr, &step, &lists[4], &betas, &o.eps,
                                   &o.weight_decay, &o.max_grad_norm) ||
      !parse_betas(betas, &o))
    return NULL;
  static const char *what[5] = {"params", "grads", "exp_avg", "exp_avg_sq", "master"};
  zmlx_array **a[5] = {0};
  Py_ssize_t n[5] = {0};
  PyObject *ret = NULL;
  for (int i = 0; i < 5; i++) {
    if (i == 4 && lists[4] == Py_None) break;
    a[i] = zpy_array_list(lists[i], &n[i], what[i]);
    if (!a[i]) goto done;
    if (n[i] != n[0]) {
      PyErr_Format(PyExc_ValueError, "adamw_step: %s has %zd arrays, params %zd", what[i], n[i],
                   n[0]);
      goto done;
    }
  }
  zmlx_array *norm = NULL;
  zmlx_status st = zmlx_adamw_step(&o, lr, step, (int)n[0], a[0], a[1], a[2], a[3], a[4], &norm);
  ret = st == ZMLX_OK ? zpy_array_wrap(norm) : zpy_raise(st);
done:
  for (int i = 0; i < 5; i++) PyMem_Free(a[i]);
  return ret;
}

/* --------------------------------------------------------------- MoE */

static int parse_scoring(const char *s, zmlx_moe_scoring *out) {
  static const char *names[] = {"softmax_topk", "topk_softmax", "sigmoid"};
  for (int i = 0; i < 3; i++)
    if (!strcmp(s, names[i])) {
      *out = (zmlx_moe_scoring)i;
      return 1;
    }
  PyErr_Format(PyExc_ValueError, "scoring is 'softmax_topk', 'topk_softmax' or 'sigmoid', not '%s'",
               s);
  return 0;
}

/* One array, or a tuple of n. */
static PyObject *ret_n(zmlx_status st, zmlx_array **a, int n) {
  if (st != ZMLX_OK) return zpy_raise(st);
  if (n == 1) return zpy_array_wrap(a[0]);
  PyObject *t = PyTuple_New(n);
  for (int i = 0; t && i < n; i++) {
    PyObject *x = zpy_array_wrap(a[i]);
    if (!x) {
      for (int j = i + 1; j < n; j++) zmlx_array_release(a[j]);
      Py_DECREF(t);
      return NULL;
    }
    PyTuple_SET_ITEM(t, i, x);
  }
  return t;
}

static PyObject *py_moe_gate(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"logits", "k", "scoring", "renormalize", "scaling", "bias", NULL};
  zmlx_array *logits, *out[2] = {0};
  zmlx_moe_gate_opts o = {.struct_size = sizeof o, .k = 2};
  const char *scoring = "softmax_topk";
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|ispdO&", kwlist, zpy_conv_array, &logits, &o.k,
                                   &scoring, &o.renormalize, &o.scaling, zpy_conv_array_opt,
                                   &o.bias) ||
      !parse_scoring(scoring, &o.scoring))
    return NULL;
  return ret_n(zmlx_moe_gate(logits, &o, &out[0], &out[1]), out, 2);
}

static PyObject *py_moe_dispatch(PyObject *m, PyObject *args) {
  (void)m;
  zmlx_array *ix, *out[3] = {0};
  int experts;
  if (!PyArg_ParseTuple(args, "O&i", zpy_conv_array, &ix, &experts)) return NULL;
  return ret_n(zmlx_moe_dispatch(ix, experts, &out[0], &out[1], &out[2]), out, 3);
}

static PyObject *py_moe_experts(PyObject *m, PyObject *args) {
  (void)m;
  zmlx_array *x, *w, *ix, *w1, *w3, *w2, *out = NULL;
  if (!PyArg_ParseTuple(args, "O&O&O&O&O&O&", zpy_conv_array, &x, zpy_conv_array, &w,
                        zpy_conv_array, &ix, zpy_conv_array, &w1, zpy_conv_array, &w3,
                        zpy_conv_array, &w2))
    return NULL;
  return ret_n(zmlx_moe_experts(x, w, ix, w1, w3, w2, &out), &out, 1);
}

static PyObject *py_embedding(PyObject *m, PyObject *args) {
  (void)m;
  zmlx_array *table, *ids, *out = NULL;
  if (!PyArg_ParseTuple(args, "O&O&", zpy_conv_array, &table, zpy_conv_array, &ids)) return NULL;
  return ret_n(zmlx_embedding(table, ids, &out), &out, 1);
}

static PyObject *py_moe(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "router", "w1", "w3", "w2", "k", "scoring", "renormalize",
                           "scaling", "bias", "shared", NULL};
  zmlx_array *x, *router, *w1, *w3, *w2, *out = NULL;
  zmlx_moe_opts o = {.struct_size = sizeof o};
  o.gate = (zmlx_moe_gate_opts){.struct_size = sizeof o.gate, .k = 2};
  const char *scoring = "softmax_topk";
  PyObject *shared = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&O&O&|ispdO&O", kwlist, zpy_conv_array, &x,
                                   zpy_conv_array, &router, zpy_conv_array, &w1, zpy_conv_array,
                                   &w3, zpy_conv_array, &w2, &o.gate.k, &scoring,
                                   &o.gate.renormalize, &o.gate.scaling, zpy_conv_array_opt,
                                   &o.gate.bias, &shared) ||
      !parse_scoring(scoring, &o.gate.scoring))
    return NULL;
  if (shared != Py_None &&
      !PyArg_ParseTuple(shared, "O&O&O&", zpy_conv_array, &o.shared_w1, zpy_conv_array,
                        &o.shared_w3, zpy_conv_array, &o.shared_w2))
    return NULL;
  return ret_n(zmlx_moe(x, router, w1, w3, w2, &o, &out), &out, 1);
}

#define KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS
PyMethodDef zpy_nn_functions[] = {
    {"adamw_step", KW(py_adamw_step),
     "adamw_step(params, grads, exp_avg, exp_avg_sq, lr, step, master=None, betas=(0.9, 0.999), "
     "eps=1e-8, weight_decay=0, max_grad_norm=0) -> grad norm; one fused AdamW step in place"},
    {"moe_gate", KW(py_moe_gate),
     "moe_gate(logits, k=2, scoring='softmax_topk', renormalize=False, scaling=0, bias=None) "
     "-> (weights f32, indices i32)"},
    {"moe_dispatch", py_moe_dispatch, METH_VARARGS,
     "moe_dispatch(indices, experts) -> (offsets, order, slot)"},
    {"embedding", py_embedding, METH_VARARGS,
     "embedding(table, ids): table [V, D] rows by ids (i32/i64, any shape); an id outside "
     "[0, V) is a zero row. Differentiable in table."},
    {"moe_experts", py_moe_experts, METH_VARARGS,
     "moe_experts(x, weights, indices, w1, w3, w2): SwiGLU experts over the routed pairs, combined"},
    {"moe", KW(py_moe),
     "moe(x, router, w1, w3, w2, k=2, scoring='softmax_topk', renormalize=False, scaling=0, "
     "bias=None, shared=None or (w1, w3, w2)): the MoE layer"},
    {NULL, NULL, 0, NULL},
};

int zpy_add_nn(PyObject *m) {
  if (PyType_Ready(&adamw_type) < 0) return -1;
  Py_INCREF(&adamw_type);
  if (PyModule_AddObject(m, "AdamW", (PyObject *)&adamw_type) < 0) return -1;
  return PyModule_AddFunctions(m, zpy_nn_functions);
}
