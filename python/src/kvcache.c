/* zmlx.KVCache: the KV block cache (zmlx_kv_cache) with PagedAttention
 * decode, for serving loops written in Python. */
#include "core.h"

typedef struct zpy_kv {
  PyObject_HEAD
  zmlx_kv_cache *c;
} zpy_kv;

static void kv_dealloc(zpy_kv *self) {
  zmlx_kv_cache_destroy(self->c);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static int kv_init(zpy_kv *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"layers", "kv_heads", "head_dim", "num_blocks", "block_size", "dtype",
                           "device", NULL};
  zmlx_kv_cache_desc d = {.struct_size = sizeof d, .block_size = 16, .dtype = ZMLX_F32};
  long long nb = 0;
  PyObject *dto = Py_None, *devo = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiL|iOO", kwlist, &d.layers, &d.kv_heads,
                                   &d.head_dim, &nb, &d.block_size, &dto, &devo))
    return -1;
  d.num_blocks = nb;
  if (!zpy_conv_dtype(dto, &d.dtype) || !zpy_conv_device(devo, &d.device)) return -1;
  zmlx_kv_cache_destroy(self->c);
  self->c = NULL;
  zmlx_status st = zmlx_kv_cache_create(&d, &self->c);
  if (st != ZMLX_OK) {
    zpy_raise(st);
    return -1;
  }
  return 0;
}

static PyObject *kv_ok(zmlx_status st) {
  if (st != ZMLX_OK) return zpy_raise(st);
  Py_RETURN_NONE;
}

static PyObject *kv_add(zpy_kv *self, PyObject *noargs) {
  (void)noargs;
  int64_t id;
  zmlx_status st = zmlx_kv_cache_add_sequence(self->c, &id);
  if (st != ZMLX_OK) return zpy_raise(st);
  return PyLong_FromLongLong(id);
}

static PyObject *kv_extend(zpy_kv *self, PyObject *args) {
  long long seq, n;
  if (!PyArg_ParseTuple(args, "LL", &seq, &n)) return NULL;
  return kv_ok(zmlx_kv_cache_extend(self->c, seq, n));
}

static PyObject *kv_write(zpy_kv *self, PyObject *args) {
  long long seq, start;
  int layer;
  zmlx_array *k, *v;
  if (!PyArg_ParseTuple(args, "LiLO&O&", &seq, &layer, &start, zpy_conv_array, &k, zpy_conv_array, &v))
    return NULL;
  return kv_ok(zmlx_kv_cache_write(self->c, seq, layer, start, k, v));
}

static PyObject *kv_fork(zpy_kv *self, PyObject *args) {
  long long seq;
  int64_t child;
  if (!PyArg_ParseTuple(args, "L", &seq)) return NULL;
  zmlx_status st = zmlx_kv_cache_fork(self->c, seq, &child);
  if (st != ZMLX_OK) return zpy_raise(st);
  return PyLong_FromLongLong(child);
}

static PyObject *kv_free(zpy_kv *self, PyObject *args) {
  long long seq;
  if (!PyArg_ParseTuple(args, "L", &seq)) return NULL;
  return kv_ok(zmlx_kv_cache_free_sequence(self->c, seq));
}

static PyObject *kv_read(zpy_kv *self, PyObject *args) {
  long long seq;
  int layer;
  if (!PyArg_ParseTuple(args, "Li", &seq, &layer)) return NULL;
  zmlx_array *k = NULL, *v = NULL;
  zmlx_status st = zmlx_kv_cache_read(self->c, seq, layer, &k, &v);
  if (st != ZMLX_OK) return zpy_raise(st);
  PyObject *a = zpy_array_wrap(k), *b = zpy_array_wrap(v);
  if (!a || !b) {
    Py_XDECREF(a);
    Py_XDECREF(b);
    return NULL;
  }
  return Py_BuildValue("(NN)", a, b);
}

static PyObject *kv_length(zpy_kv *self, PyObject *args) {
  long long seq;
  int64_t len;
  if (!PyArg_ParseTuple(args, "L", &seq)) return NULL;
  zmlx_status st = zmlx_kv_cache_length(self->c, seq, &len);
  if (st != ZMLX_OK) return zpy_raise(st);
  return PyLong_FromLongLong(len);
}

static PyObject *kv_stats(zpy_kv *self, PyObject *noargs) {
  (void)noargs;
  int64_t f, u;
  zmlx_status st = zmlx_kv_cache_stats(self->c, &f, &u);
  if (st != ZMLX_OK) return zpy_raise(st);
  return Py_BuildValue("{s:L,s:L}", "free_blocks", (long long)f, "used_blocks", (long long)u);
}

static PyObject *kv_attention(zpy_kv *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"layer", "q", "seqs", "scale", NULL};
  int layer;
  zmlx_array *q;
  PyObject *seqo;
  double scale = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "iO&O|d", kwlist, &layer, zpy_conv_array, &q, &seqo,
                                   &scale))
    return NULL;
  Py_ssize_t n = 0;
  int64_t *ids = zpy_id_list(seqo, &n, "seqs");
  if (!ids) return NULL;
  if (zmlx_array_ndim(q) >= 1 && zmlx_array_shape(q)[0] != n) {
    PyMem_Free(ids);
    return PyErr_Format(PyExc_ValueError, "q has %lld rows, %zd sequence ids given",
                        (long long)zmlx_array_shape(q)[0], n);
  }
  zmlx_array *out = NULL;
  zmlx_status st = zmlx_kv_cache_attention(self->c, layer, q, ids, scale, &out);
  PyMem_Free(ids);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

int64_t *zpy_id_list(PyObject *seqo, Py_ssize_t *n, const char *what) {
  PyObject *seq = PySequence_Fast(seqo, "expected a sequence of ints");
  if (!seq) return NULL;
  *n = PySequence_Fast_GET_SIZE(seq);
  int64_t *ids = PyMem_Calloc((size_t)(*n > 0 ? *n : 1), sizeof *ids);
  for (Py_ssize_t i = 0; ids && i < *n; i++) ids[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
  Py_DECREF(seq);
  if (!ids) return (int64_t *)PyErr_NoMemory();
  if (PyErr_Occurred()) {
    PyMem_Free(ids);
    PyErr_Format(PyExc_TypeError, "%s must be a sequence of ints", what);
    return NULL;
  }
  return ids;
}

/* The rope keywords of the fused writes into o. */
#define KV_ROPE_KW "mode", "rotary_dims", "base", "scale"

static PyObject *kv_write_rope(zpy_kv *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"seq", "layer", "start", "k", "v", "q", KV_ROPE_KW, NULL};
  long long seq, start;
  int layer;
  zmlx_array *k, *v, *q, *out = NULL;
  PyObject *mode = NULL;
  zmlx_rope_opts o;
  memset(&o, 0, sizeof o);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "LiLO&O&O&|Uidd", kwlist, &seq, &layer, &start,
                                   zpy_conv_array, &k, zpy_conv_array, &v, zpy_conv_array, &q,
                                   &mode, &o.rotary_dims, &o.base, &o.scale) ||
      !zpy_rope_opts(mode, NULL, &o))
    return NULL;
  zmlx_status st = zmlx_kv_cache_write_rope(self->c, seq, layer, start, k, v, q, &o, &out);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

static PyObject *kv_write_rope_step(zpy_kv *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"layer", "seqs", "k", "v", "q", KV_ROPE_KW, NULL};
  int layer;
  PyObject *seqo, *mode = NULL;
  zmlx_array *k, *v, *q, *out = NULL;
  zmlx_rope_opts o;
  memset(&o, 0, sizeof o);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "iOO&O&O&|Uidd", kwlist, &layer, &seqo,
                                   zpy_conv_array, &k, zpy_conv_array, &v, zpy_conv_array, &q,
                                   &mode, &o.rotary_dims, &o.base, &o.scale) ||
      !zpy_rope_opts(mode, NULL, &o))
    return NULL;
  Py_ssize_t n = 0;
  int64_t *ids = zpy_id_list(seqo, &n, "seqs");
  if (!ids) return NULL;
  zmlx_status st = zmlx_kv_cache_write_rope_step(self->c, layer, ids, n, k, v, q, &o, &out);
  PyMem_Free(ids);
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(out);
}

static PyMethodDef kv_methods[] = {
    {"add_sequence", (PyCFunction)kv_add, METH_NOARGS, "A new empty sequence; returns its id."},
    {"extend", (PyCFunction)kv_extend, METH_VARARGS, "extend(seq, n): room for n more tokens."},
    {"write", (PyCFunction)kv_write, METH_VARARGS,
     "write(seq, layer, start, k, v): k, v [n, kv_heads, head_dim] at positions start.."},
    {"fork", (PyCFunction)kv_fork, METH_VARARGS, "fork(seq): a sequence sharing seq's blocks."},
    {"free_sequence", (PyCFunction)kv_free, METH_VARARGS, "free_sequence(seq)"},
    {"read", (PyCFunction)kv_read, METH_VARARGS, "read(seq, layer) -> (k, v) [len, kv_heads, head_dim]"},
    {"length", (PyCFunction)kv_length, METH_VARARGS, "length(seq)"},
    {"stats", (PyCFunction)kv_stats, METH_NOARGS, "{'free_blocks': .., 'used_blocks': ..}"},
    {"write_rope", (PyCFunction)(void (*)(void))kv_write_rope, METH_VARARGS | METH_KEYWORDS,
     "write_rope(seq, layer, start, k, v, q, mode='half_split', rotary_dims=0, base=10000, "
     "scale=1) -> q rotated: k rotated at positions start.. and written with v; q [n, q_heads, "
     "head_dim] rotated the same way."},
    {"write_rope_step", (PyCFunction)(void (*)(void))kv_write_rope_step,
     METH_VARARGS | METH_KEYWORDS,
     "write_rope_step(layer, seqs, k, v, q, mode='half_split', rotary_dims=0, base=10000, "
     "scale=1) -> q rotated: a decode step, row i of k, v [batch, kv_heads, head_dim] and q "
     "[batch, q_heads, head_dim] at the last position of seqs[i] (extend each first); one "
     "launch."},
    {"attention", (PyCFunction)(void (*)(void))kv_attention, METH_VARARGS | METH_KEYWORDS,
     "attention(layer, q [batch, q_heads, head_dim] or [batch, tokens, q_heads, head_dim], "
     "seqs, scale=0): PagedAttention decode (several tokens: each sequence's last ones, "
     "causal among them)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject kv_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zmlx._core.KVCache",
    .tp_basicsize = sizeof(zpy_kv),
    .tp_dealloc = (destructor)kv_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "KVCache(layers, kv_heads, head_dim, num_blocks, block_size=16, dtype='f32', "
              "device=None): a KV block cache with PagedAttention decode.",
    .tp_methods = kv_methods,
    .tp_init = (initproc)kv_init,
    .tp_new = PyType_GenericNew,
};

zmlx_kv_cache *zpy_kv_get(PyObject *o) {
  if (!PyObject_TypeCheck(o, &kv_type) || !((zpy_kv *)o)->c) {
    PyErr_Format(PyExc_TypeError, "expected an initialised zmlx.KVCache, got %s",
                 Py_TYPE(o)->tp_name);
    return NULL;
  }
  return ((zpy_kv *)o)->c;
}

int zpy_add_kvcache(PyObject *m) {
  if (PyType_Ready(&kv_type) < 0) return -1;
  Py_INCREF(&kv_type);
  return PyModule_AddObject(m, "KVCache", (PyObject *)&kv_type);
}
