/* zmlx.LanguageModel: the C library's decoder-only transformer (zmlx_lm)
 * from Python: create, parameters by name, loss and logits, safetensors
 * save / load. */
#include "core.h"

typedef struct zpy_lm {
  PyObject_HEAD
  zmlx_lm *lm;
} zpy_lm;

static PyTypeObject lm_type;

static void lm_dealloc(zpy_lm *self) {
  zmlx_lm_destroy(self->lm);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static int lm_init(zpy_lm *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"dim",   "layers", "heads", "ffn_dim", "kv_heads", "experts", "top_k",
                           "vocab", "seed",   "dtype", "device",  NULL};
  zmlx_lm_config c = {.struct_size = sizeof c};
  unsigned long long seed = 0;
  PyObject *dto = Py_None, *devo = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "iiii|iiiiKOO", kwlist, &c.dim, &c.layers, &c.heads,
                                   &c.ffn_dim, &c.kv_heads, &c.experts, &c.top_k, &c.vocab, &seed,
                                   &dto, &devo))
    return -1;
  c.seed = seed;
  if (!zpy_conv_dtype(dto, &c.dtype) || !zpy_conv_device(devo, &c.device)) return -1;
  zmlx_lm_destroy(self->lm);
  self->lm = NULL;
  zmlx_status st = zmlx_lm_create(&c, &self->lm);
  if (st != ZMLX_OK) {
    zpy_raise(st);
    return -1;
  }
  return 0;
}

static int lm_ready(zpy_lm *self) {
  if (self->lm) return 1;
  PyErr_SetString(PyExc_ValueError, "zmlx.LanguageModel: not initialised");
  return 0;
}

static PyObject *lm_parameters(zpy_lm *self, PyObject *noargs) {
  (void)noargs;
  if (!lm_ready(self)) return NULL;
  int n = 0;
  zmlx_array *const *p = NULL;
  const char *const *names = NULL;
  zmlx_status st = zmlx_lm_parameters(self->lm, &n, &p, &names);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_param_dict(n, p, names);
}

static PyObject *lm_loss(zpy_lm *self, PyObject *args) {
  zmlx_array *tok, *tgt, *loss = NULL;
  if (!lm_ready(self) ||
      !PyArg_ParseTuple(args, "O&O&", zpy_conv_array, &tok, zpy_conv_array, &tgt))
    return NULL;
  zmlx_status st = zmlx_lm_loss(self->lm, NULL, tok, tgt, &loss);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(loss);
}

static PyObject *lm_logits(zpy_lm *self, PyObject *args) {
  zmlx_array *tok, *out = NULL;
  if (!lm_ready(self) || !PyArg_ParseTuple(args, "O&", zpy_conv_array, &tok)) return NULL;
  zmlx_status st = zmlx_lm_logits(self->lm, NULL, tok, &out);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

static PyObject *lm_save(zpy_lm *self, PyObject *args) {
  const char *path;
  if (!lm_ready(self) || !PyArg_ParseTuple(args, "s", &path)) return NULL;
  zmlx_status st = zmlx_lm_save(self->lm, path);
  if (st != ZMLX_OK) return zpy_raise(st);
  Py_RETURN_NONE;
}

static PyObject *lm_load(PyObject *cls, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"path", "device", NULL};
  const char *path;
  PyObject *devo = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "s|O", kwlist, &path, &devo)) return NULL;
  zmlx_device *dev = NULL;
  if (!zpy_conv_device(devo, &dev)) return NULL;
  zpy_lm *self = (zpy_lm *)((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
  if (!self) return NULL;
  zmlx_status st = zmlx_lm_load(path, dev, &self->lm);
  if (st != ZMLX_OK) {
    Py_DECREF(self);
    return zpy_raise(st);
  }
  return (PyObject *)self;
}

static PyMethodDef lm_methods[] = {
    {"parameters", (PyCFunction)lm_parameters, METH_NOARGS,
     "{name: Array}: the parameters (shared with the model, in its fixed order)."},
    {"loss", (PyCFunction)lm_loss, METH_VARARGS,
     "loss(tokens, targets): mean next-token cross-entropy; both [batch, seq] i32."},
    {"logits", (PyCFunction)lm_logits, METH_VARARGS, "logits(tokens [batch, seq] i32) -> [batch, seq, vocab]"},
    {"save", (PyCFunction)lm_save, METH_VARARGS,
     "save(path): a safetensors file (the configuration in its __metadata__)."},
    {"load", (PyCFunction)(void (*)(void))lm_load, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "LanguageModel.load(path, device=None): a model from a file save() wrote."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject lm_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zmlx._core.LanguageModel",
    .tp_basicsize = sizeof(zpy_lm),
    .tp_dealloc = (destructor)lm_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "LanguageModel(dim, layers, heads, ffn_dim, kv_heads=0, experts=0, top_k=2, "
              "vocab=256, seed=0, dtype='f32', device=None): zmlx's decoder-only transformer "
              "(RMSNorm, RoPE, causal flash attention, MoE or SwiGLU).",
    .tp_methods = lm_methods,
    .tp_init = (initproc)lm_init,
    .tp_new = PyType_GenericNew,
};

int zpy_add_lm(PyObject *m) {
  if (PyType_Ready(&lm_type) < 0) return -1;
  Py_INCREF(&lm_type);
  return PyModule_AddObject(m, "LanguageModel", (PyObject *)&lm_type);
}
