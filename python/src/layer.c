/* zmlx.Layer: the C library's layer objects (zmlx_layer) from Python:
 * Layer("linear", in_features=8, out_features=4, bias=True), called on an
 * Array with its own parameters or a list given (the arrays a
 * zmlx.value_and_grad differentiates), parameters by name, the resolved
 * configuration, and prefill / decode over a zmlx.KVCache. */
#include "core.h"

typedef struct zpy_layer {
  PyObject_HEAD
  zmlx_layer *l;
} zpy_layer;

static PyTypeObject layer_type;

static const char *const KINDS[] = {NULL,  "embedding", "linear", "rmsnorm", "attention",
                                    "mlp", "moe",       "block"};
enum { N_KINDS = (int)(sizeof KINDS / sizeof KINDS[0]) };

static void layer_dealloc(zpy_layer *self) {
  zmlx_layer_destroy(self->l);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_kind(const char *name, zmlx_layer_kind *out) {
  for (int k = 1; k < N_KINDS; k++)
    if (!strcmp(name, KINDS[k])) {
      *out = (zmlx_layer_kind)k;
      return 1;
    }
  PyErr_Format(PyExc_ValueError, "zmlx.Layer: unknown kind '%s' (embedding, linear, rmsnorm, "
               "attention, mlp, moe or block)", name);
  return 0;
}

static int layer_init(zpy_layer *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"kind",     "dim",       "vocab",     "in_features", "out_features",
                           "bias",     "heads",     "kv_heads",  "ffn_dim",     "experts",
                           "top_k",    "rope_base", "norm_eps",  "init_std",    "out_std",
                           "seed",     "dtype",     "device",    NULL};
  zmlx_layer_config c = {.struct_size = sizeof c};
  const char *kind;
  long long dim = 0, vocab = 0, in = 0, out = 0, ffn = 0;
  unsigned long long seed = 0;
  int bias = 0;
  PyObject *dto = Py_None, *devo = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "s|$LLLLpiiLiiddddKOO", kwlist, &kind, &dim, &vocab,
                                   &in, &out, &bias, &c.heads, &c.kv_heads, &ffn, &c.experts,
                                   &c.top_k, &c.rope_base, &c.norm_eps, &c.init_std, &c.out_std,
                                   &seed, &dto, &devo))
    return -1;
  if (!parse_kind(kind, &c.kind)) return -1;
  c.dim = dim, c.vocab = vocab, c.in_features = in, c.out_features = out, c.ffn_dim = ffn;
  c.bias = bias, c.seed = seed;
  if (!zpy_conv_dtype(dto, &c.dtype) || !zpy_conv_device(devo, &c.device)) return -1;
  zmlx_layer_destroy(self->l);
  self->l = NULL;
  zmlx_status st = zmlx_layer_create(&c, &self->l);
  if (st != ZMLX_OK) {
    zpy_raise(st);
    return -1;
  }
  return 0;
}

static int layer_ready(zpy_layer *self) {
  if (self->l) return 1;
  PyErr_SetString(PyExc_ValueError, "zmlx.Layer: not initialised");
  return 0;
}

static PyObject *layer_parameters(zpy_layer *self, PyObject *noargs) {
  (void)noargs;
  if (!layer_ready(self)) return NULL;
  int n = 0;
  zmlx_array *const *p = NULL;
  const char *const *names = NULL;
  zmlx_status st = zmlx_layer_parameters(self->l, &n, &p, &names);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_param_dict(n, p, names);
}

static PyObject *layer_config(zpy_layer *self, void *closure) {
  (void)closure;
  if (!layer_ready(self)) return NULL;
  zmlx_layer_config c;
  zmlx_status st = zmlx_layer_get_config(self->l, &c);
  if (st != ZMLX_OK) return zpy_raise(st);
  return Py_BuildValue(
      "{s:s,s:L,s:L,s:L,s:L,s:O,s:i,s:i,s:L,s:i,s:i,s:d,s:d,s:d,s:d,s:K,s:s}", "kind",
      KINDS[c.kind], "dim", (long long)c.dim, "vocab", (long long)c.vocab, "in_features",
      (long long)c.in_features, "out_features", (long long)c.out_features, "bias",
      c.bias ? Py_True : Py_False, "heads", c.heads, "kv_heads", c.kv_heads, "ffn_dim",
      (long long)c.ffn_dim, "experts", c.experts, "top_k", c.top_k, "rope_base", c.rope_base,
      "norm_eps", c.norm_eps, "init_std", c.init_std, "out_std", c.out_std, "seed",
      (unsigned long long)c.seed, "dtype", zmlx_dtype_name(c.dtype));
}

static PyObject *layer_call(zpy_layer *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"x", "params", NULL};
  zmlx_array *x, *out = NULL, **params = NULL;
  PyObject *po = Py_None;
  if (!layer_ready(self) ||
      !PyArg_ParseTupleAndKeywords(args, kw, "O&|O", kwlist, zpy_conv_array, &x, &po))
    return NULL;
  if (po != Py_None) {
    int want = 0;
    Py_ssize_t n = 0;
    zmlx_layer_parameters(self->l, &want, NULL, NULL);
    params = zpy_array_list(po, &n, "params");
    if (!params) return NULL;
    if (n != want) {
      PyMem_Free(params);
      return PyErr_Format(PyExc_ValueError, "zmlx.Layer: params has %zd arrays, the layer "
                          "takes %d", n, want);
    }
  }
  zmlx_status st = zmlx_layer_forward(self->l, params, x, &out);
  PyMem_Free(params);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

static PyObject *layer_prefill(zpy_layer *self, PyObject *args) {
  PyObject *co;
  int cache_layer;
  long long seq;
  zmlx_array *x, *out = NULL;
  if (!layer_ready(self) ||
      !PyArg_ParseTuple(args, "OiLO&", &co, &cache_layer, &seq, zpy_conv_array, &x))
    return NULL;
  zmlx_kv_cache *c = zpy_kv_get(co);
  if (!c) return NULL;
  zmlx_status st = zmlx_layer_prefill(self->l, c, cache_layer, seq, x, &out);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

static PyObject *layer_decode(zpy_layer *self, PyObject *args) {
  PyObject *co, *so;
  int cache_layer;
  zmlx_array *x, *out = NULL;
  if (!layer_ready(self) ||
      !PyArg_ParseTuple(args, "OiOO&", &co, &cache_layer, &so, zpy_conv_array, &x))
    return NULL;
  zmlx_kv_cache *c = zpy_kv_get(co);
  PyObject *seq = c ? PySequence_Fast(so, "seqs: a sequence of ints") : NULL;
  if (!seq) return NULL;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  if (zmlx_array_ndim(x) != 2 || n != zmlx_array_shape(x)[0]) {
    Py_DECREF(seq);
    return PyErr_Format(PyExc_ValueError, "zmlx.Layer.decode: %zd sequences for x of %lld rows "
                        "(one new token a sequence)", n, (long long)zmlx_array_shape(x)[0]);
  }
  int64_t *ids = PyMem_Malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
  for (Py_ssize_t i = 0; ids && i < n; i++)
    ids[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
  Py_DECREF(seq);
  if (!ids || PyErr_Occurred()) {
    PyMem_Free(ids);
    return ids ? NULL : PyErr_NoMemory();
  }
  zmlx_status st = zmlx_layer_decode(self->l, c, cache_layer, ids, x, &out);
  PyMem_Free(ids);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

static PyMethodDef layer_methods[] = {
    {"parameters", (PyCFunction)layer_parameters, METH_NOARGS,
     "{name: Array}: the parameters (shared with the layer), in the order __call__'s params "
     "takes them."},
    {"prefill", (PyCFunction)layer_prefill, METH_VARARGS,
     "prefill(cache, cache_layer, seq, x [n, dim]): attention / block over a KVCache: the newest "
     "n tokens of seq (extended beforehand) attend over the cached sequence."},
    {"decode", (PyCFunction)layer_decode, METH_VARARGS,
     "decode(cache, cache_layer, seqs, x [n, dim]): one new token of each sequence (extended "
     "beforehand), PagedAttention over the block tables."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef layer_getset[] = {
    {"config", (getter)layer_config, NULL, "the resolved configuration (defaults filled in)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject layer_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zmlx._core.Layer",
    .tp_basicsize = sizeof(zpy_layer),
    .tp_dealloc = (destructor)layer_dealloc,
    .tp_call = (ternaryfunc)layer_call,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Layer(kind, *, dim, vocab, in_features, out_features, bias, heads, kv_heads, "
              "ffn_dim, experts, top_k, rope_base, norm_eps, init_std, out_std, seed, dtype, "
              "device): an embedding, linear, rmsnorm, attention, mlp, moe or block layer "
              "(zmlx_layer); layer(x, params=None) applies it.",
    .tp_methods = layer_methods,
    .tp_getset = layer_getset,
    .tp_init = (initproc)layer_init,
    .tp_new = PyType_GenericNew,
};

int zpy_add_layer(PyObject *m) {
  if (PyType_Ready(&layer_type) < 0) return -1;
  Py_INCREF(&layer_type);
  return PyModule_AddObject(m, "Layer", (PyObject *)&layer_type);
}
