/* The op catalog in Python: every fused op of zmlx.h, differentiable where
 * the C op is (they record themselves inside zmlx.grad). */
#include <string.h>

#include "core.h"

#define KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS

/* The result of a call: its outputs are read through pointers, after the
 * call (the order in which a call's arguments are evaluated is unspecified,
 * so ret1(f(&out), &out) could read out before f wrote it). */
static PyObject *ret1(zmlx_status st, zmlx_array **out) {
  if (st != ZMLX_OK) return zpy_raise(st);
  return zpy_array_wrap(*out);
}

static PyObject *ret2(zmlx_status st, zmlx_array **a, zmlx_array **b) {
  if (st != ZMLX_OK) return zpy_raise(st);
  PyObject *x = zpy_array_wrap(*a), *y = zpy_array_wrap(*b);
  if (!x || !y) {
    Py_XDECREF(x);
    Py_XDECREF(y);
    return NULL;
  }
  return Py_BuildValue("(NN)", x, y);
}

/* One-input ops: a table, one Python function each (see zpy_add_catalog). */
typedef zmlx_status (*unary_fn)(zmlx_array *, zmlx_array **);
typedef struct unary_entry {
  const char *name;
  unary_fn fn;
  const char *doc;
} unary_entry;
static const unary_entry UNARY[] = {
    {"softmax", zmlx_softmax, "softmax(x): over the last axis"},
    {"log_softmax", zmlx_log_softmax, "log_softmax(x): over the last axis"},
    {"logsumexp", zmlx_logsumexp, "logsumexp(x): over the last axis (drops it)"},
    {"exp", zmlx_exp, "exp(x)"},
    {"log", zmlx_log, "log(x)"},
    {"tanh", zmlx_tanh, "tanh(x)"},
    {"sigmoid", zmlx_sigmoid, "sigmoid(x)"},
    {"relu", zmlx_relu, "relu(x)"},
    {"silu", zmlx_silu, "silu(x) = x sigmoid(x)"},
    {"gelu", zmlx_gelu, "gelu(x) with erf"},
    {"gelu_tanh", zmlx_gelu_tanh, "gelu(x), tanh approximation"},
    {"softplus", zmlx_softplus, "softplus(x) = log(1 + exp(x))"},
    {"mish", zmlx_mish, "mish(x) = x tanh(softplus(x))"},
    {"swiglu_split", zmlx_swiglu_split, "swiglu_split(x): silu(x[..., :F]) * x[..., F:]"},
};
#define N_UNARY ((int)(sizeof UNARY / sizeof UNARY[0]))

static PyObject *unary_call(PyObject *self, PyObject *args) {
  const unary_entry *e = PyCapsule_GetPointer(self, "zmlx.unary");
  zmlx_array *x, *out = NULL;
  if (!e || !PyArg_ParseTuple(args, "O&", zpy_conv_array, &x)) return NULL;
  return ret1(e->fn(x, &out), &out);
}

typedef zmlx_status (*binary_fn)(zmlx_array *, zmlx_array *, zmlx_array **);
static PyObject *binary(PyObject *args, binary_fn fn) {
  zmlx_array *a, *b, *out = NULL;
  if (!PyArg_ParseTuple(args, "O&O&", zpy_conv_array, &a, zpy_conv_array, &b)) return NULL;
  return ret1(fn(a, b, &out), &out);
}
static PyObject *py_swiglu(PyObject *m, PyObject *a) { (void)m; return binary(a, zmlx_swiglu); }
static PyObject *py_bias_silu(PyObject *m, PyObject *a) { (void)m; return binary(a, zmlx_bias_silu); }
static PyObject *py_bias_swiglu(PyObject *m, PyObject *a) { (void)m; return binary(a, zmlx_bias_swiglu); }

static PyObject *py_geglu(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"gate", "up", "approximate", NULL};
  zmlx_array *g, *u, *out = NULL;
  int approx = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|p", kwlist, zpy_conv_array, &g, zpy_conv_array,
                                   &u, &approx))
    return NULL;
  return ret1(zmlx_geglu(g, u, approx, &out), &out);
}

static PyObject *py_geglu_split(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "approximate", NULL};
  zmlx_array *x, *out = NULL;
  int approx = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|p", kwlist, zpy_conv_array, &x, &approx))
    return NULL;
  return ret1(zmlx_geglu_split(x, approx, &out), &out);
}

static PyObject *py_bias_gelu(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "bias", "approximate", NULL};
  zmlx_array *x, *b, *out = NULL;
  int approx = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|p", kwlist, zpy_conv_array, &x, zpy_conv_array,
                                   &b, &approx))
    return NULL;
  return ret1(zmlx_bias_gelu(x, b, approx, &out), &out);
}

static PyObject *py_elu(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "alpha", NULL};
  zmlx_array *x, *out = NULL;
  double alpha = 1.0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|d", kwlist, zpy_conv_array, &x, &alpha)) return NULL;
  return ret1(zmlx_elu(x, alpha, &out), &out);
}

static PyObject *py_dropout(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "p", "seed", NULL};
  zmlx_array *x, *out = NULL;
  double p;
  unsigned long long seed = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&d|K", kwlist, zpy_conv_array, &x, &p, &seed))
    return NULL;
  return ret1(zmlx_dropout(x, p, seed, &out), &out);
}

static PyObject *py_rmsnorm(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "weight", "eps", NULL};
  zmlx_array *x, *w = NULL, *out = NULL;
  double eps = 1e-6;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O&d", kwlist, zpy_conv_array, &x,
                                   zpy_conv_array_opt, &w, &eps))
    return NULL;
  return ret1(zmlx_rmsnorm(x, w, eps, &out), &out);
}

static PyObject *py_layernorm(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "weight", "bias", "eps", NULL};
  zmlx_array *x, *g = NULL, *b = NULL, *out = NULL;
  double eps = 1e-5;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O&O&d", kwlist, zpy_conv_array, &x,
                                   zpy_conv_array_opt, &g, zpy_conv_array_opt, &b, &eps))
    return NULL;
  return ret1(zmlx_layernorm(x, g, b, eps, &out), &out);
}

static PyObject *py_add_rmsnorm(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "residual", "weight", "eps", NULL};
  zmlx_array *x, *r, *w = NULL, *y = NULL, *h = NULL;
  double eps = 1e-6;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|O&d", kwlist, zpy_conv_array, &x, zpy_conv_array,
                                   &r, zpy_conv_array_opt, &w, &eps))
    return NULL;
  return ret2(zmlx_add_rmsnorm(x, r, w, eps, &y, &h), &y, &h);
}

static PyObject *py_add_layernorm(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "residual", "weight", "bias", "eps", NULL};
  zmlx_array *x, *r, *g = NULL, *b = NULL, *y = NULL, *h = NULL;
  double eps = 1e-5;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|O&O&d", kwlist, zpy_conv_array, &x,
                                   zpy_conv_array, &r, zpy_conv_array_opt, &g, zpy_conv_array_opt,
                                   &b, &eps))
    return NULL;
  return ret2(zmlx_add_layernorm(x, r, g, b, eps, &y, &h), &y, &h);
}

static PyObject *py_softmax_masked(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "mask", "scale", "causal", NULL};
  zmlx_array *x, *mask = NULL, *out = NULL;
  double scale = 1.0;
  int causal = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O&dp", kwlist, zpy_conv_array, &x,
                                   zpy_conv_array_opt, &mask, &scale, &causal))
    return NULL;
  return ret1(zmlx_softmax_masked(x, mask, scale, causal, &out), &out);
}

static PyObject *py_cross_entropy(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"logits",    "targets",       "ignore_index", "label_smoothing",
                           "reduction", "check_targets", "with_grad",    NULL};
  zmlx_array *x, *t, *loss = NULL, *grad = NULL;
  long long ignore = -100;
  double smoothing = 0;
  const char *reduction = "mean";
  int check = 0, with_grad = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|Ldspp", kwlist, zpy_conv_array, &x,
                                   zpy_conv_array, &t, &ignore, &smoothing, &reduction, &check,
                                   &with_grad))
    return NULL;
  if (strcmp(reduction, "mean") && strcmp(reduction, "sum"))
    return PyErr_Format(PyExc_ValueError, "reduction is 'mean' or 'sum', not '%s'", reduction);
  zmlx_cross_entropy_opts o = {.ignore_index = ignore,
                               .label_smoothing = smoothing,
                               .reduction = strcmp(reduction, "sum") ? ZMLX_CE_MEAN : ZMLX_CE_SUM,
                               .check_targets = check};
  zmlx_status st = zmlx_cross_entropy(x, t, &o, &loss, with_grad ? &grad : NULL);
  if (with_grad) return ret2(st, &loss, &grad);
  return ret1(st, &loss);
}

int zpy_rope_opts(PyObject *kw_mode, PyObject *kw_layout, zmlx_rope_opts *o) {
  const char *mode = kw_mode ? PyUnicode_AsUTF8(kw_mode) : "half_split";
  const char *layout = kw_layout ? PyUnicode_AsUTF8(kw_layout) : "bshd";
  if (!mode || !layout) return 0;
  if (!strcmp(mode, "half_split")) o->mode = ZMLX_ROPE_HALF_SPLIT;
  else if (!strcmp(mode, "interleaved")) o->mode = ZMLX_ROPE_INTERLEAVED;
  else {
    PyErr_Format(PyExc_ValueError, "mode is 'half_split' or 'interleaved', not '%s'", mode);
    return 0;
  }
  if (!strcmp(layout, "bshd")) o->layout = ZMLX_ROPE_BSHD;
  else if (!strcmp(layout, "bhsd")) o->layout = ZMLX_ROPE_BHSD;
  else {
    PyErr_Format(PyExc_ValueError, "layout is 'bshd' or 'bhsd', not '%s'", layout);
    return 0;
  }
  return 1;
}

static PyObject *py_rope(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x",     "mode",    "layout", "rotary_dims", "base",
                           "scale", "offsets", "cos",    "sin",         "positions", NULL};
  zmlx_array *x, *out = NULL;
  PyObject *mode = NULL, *layout = NULL;
  zmlx_rope_opts o;
  memset(&o, 0, sizeof o);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|UUiddO&O&O&O&", kwlist, zpy_conv_array, &x,
                                   &mode, &layout, &o.rotary_dims, &o.base, &o.scale,
                                   zpy_conv_array_opt, &o.offsets, zpy_conv_array_opt, &o.cos,
                                   zpy_conv_array_opt, &o.sin, zpy_conv_array_opt, &o.positions))
    return NULL;
  if (!zpy_rope_opts(mode, layout, &o)) return NULL;
  return ret1(zmlx_rope(x, &o, &out), &out);
}

static PyObject *py_attention(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"q", "k", "v", "mask", "causal", "scale", "layout", "with_lse", NULL};
  zmlx_array *q, *k, *v, *out = NULL, *lse = NULL;
  zmlx_attention_opts o = {.struct_size = sizeof o};
  const char *layout = "bhsd";
  int with_lse = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&|O&pdsp", kwlist, zpy_conv_array, &q,
                                   zpy_conv_array, &k, zpy_conv_array, &v, zpy_conv_array_opt,
                                   &o.mask, &o.causal, &o.scale, &layout, &with_lse))
    return NULL;
  if (!strcmp(layout, "bshd")) o.layout = ZMLX_ATTN_BSHD;
  else if (strcmp(layout, "bhsd"))
    return PyErr_Format(PyExc_ValueError, "layout is 'bhsd' or 'bshd', not '%s'", layout);
  zmlx_status st = zmlx_attention(q, k, v, &o, &out, with_lse ? &lse : NULL);
  if (with_lse) return ret2(st, &out, &lse);
  return ret1(st, &out);
}

static PyObject *py_reduce_last(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "kind", "ddof", "keepdims", NULL};
  zmlx_array *x, *out = NULL;
  const char *kind;
  int ddof = 0, keepdims = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&s|ip", kwlist, zpy_conv_array, &x, &kind, &ddof,
                                   &keepdims))
    return NULL;
  static const char *names[] = {"sum", "mean", "max", "min", "var", "std"};
  for (int i = 0; i < 6; i++)
    if (!strcmp(kind, names[i]))
      return ret1(zmlx_reduce_last(x, (zmlx_reduce_kind)i, ddof, keepdims, &out), &out);
  return PyErr_Format(PyExc_ValueError, "kind is sum, mean, max, min, var or std, not '%s'", kind);
}

static PyObject *arg_last(PyObject *args, PyObject *kw, int max) {
  static char *kwlist[] = {"x", "keepdims", NULL};
  zmlx_array *x, *out = NULL;
  int keepdims = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|p", kwlist, zpy_conv_array, &x, &keepdims))
    return NULL;
  return ret1(max ? zmlx_argmax_last(x, keepdims, &out) : zmlx_argmin_last(x, keepdims, &out), &out);
}
static PyObject *py_argmax(PyObject *m, PyObject *a, PyObject *k) { (void)m; return arg_last(a, k, 1); }
static PyObject *py_argmin(PyObject *m, PyObject *a, PyObject *k) { (void)m; return arg_last(a, k, 0); }

static PyObject *py_topk(PyObject *m, PyObject *args) {
  (void)m;
  zmlx_array *x, *v = NULL, *i = NULL;
  int k;
  if (!PyArg_ParseTuple(args, "O&i", zpy_conv_array, &x, &k)) return NULL;
  return ret2(zmlx_topk(x, k, &v, &i), &v, &i);
}

static PyObject *py_quantize_int8(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"x", "scale_dtype", NULL};
  zmlx_array *x, *q = NULL, *s = NULL;
  zmlx_dtype sdt = ZMLX_F32;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O&", kwlist, zpy_conv_array, &x, zpy_conv_dtype, &sdt))
    return NULL;
  return ret2(zmlx_quantize_int8_rows(x, sdt, &q, &s), &q, &s);
}

static PyObject *py_dequantize_int8(PyObject *m, PyObject *args, PyObject *kw) {
  (void)m;
  static char *kwlist[] = {"q", "scales", "dtype", "silu", NULL};
  zmlx_array *q, *s, *out = NULL;
  zmlx_dtype dt = ZMLX_F32;
  int silu = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&|O&p", kwlist, zpy_conv_array, &q, zpy_conv_array,
                                   &s, zpy_conv_dtype, &dt, &silu))
    return NULL;
  return ret1(zmlx_dequantize_int8_rows(q, s, dt, silu ? ZMLX_QUANT_SILU : ZMLX_QUANT_NONE, &out), &out);
}

static PyObject *py_cache_stats(PyObject *m, PyObject *noargs) {
  (void)m;
  (void)noargs;
  zmlx_cache_stats s;
  zmlx_status st = zmlx_cache_get_stats(&s);
  if (st != ZMLX_OK) return zpy_raise(st);
  return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:d,s:d,s:K,s:s,s:O}", "memory_hits",
                       (unsigned long long)s.memory_hits, "disk_hits", (unsigned long long)s.disk_hits,
                       "misses", (unsigned long long)s.misses, "disk_rejects",
                       (unsigned long long)s.disk_rejects, "disk_writes",
                       (unsigned long long)s.disk_writes, "compile_ms", s.compile_ms,
                       "disk_load_ms", s.disk_load_ms, "entries", (unsigned long long)s.entries,
                       "dir", zmlx_cache_dir(), "disk_enabled",
                       zmlx_cache_disk_enabled() ? Py_True : Py_False);
}

PyMethodDef zpy_catalog_functions[] = {
    {"swiglu", py_swiglu, METH_VARARGS, "swiglu(gate, up) = silu(gate) * up"},
    {"bias_silu", py_bias_silu, METH_VARARGS, "bias_silu(x, bias) = silu(x + bias)"},
    {"bias_swiglu", py_bias_swiglu, METH_VARARGS, "bias_swiglu(x, bias): swiglu_split(x + bias)"},
    {"geglu", KW(py_geglu), "geglu(gate, up, approximate=False) = gelu(gate) * up"},
    {"geglu_split", KW(py_geglu_split), "geglu_split(x, approximate=False)"},
    {"bias_gelu", KW(py_bias_gelu), "bias_gelu(x, bias, approximate=False) = gelu(x + bias)"},
    {"elu", KW(py_elu), "elu(x, alpha=1.0)"},
    {"dropout", KW(py_dropout), "dropout(x, p, seed=0): counter-based, the same mask on every backend"},
    {"rmsnorm", KW(py_rmsnorm), "rmsnorm(x, weight=None, eps=1e-6)"},
    {"layernorm", KW(py_layernorm), "layernorm(x, weight=None, bias=None, eps=1e-5)"},
    {"add_rmsnorm", KW(py_add_rmsnorm), "add_rmsnorm(x, residual, weight=None, eps=1e-6) -> (normed, x + residual)"},
    {"add_layernorm", KW(py_add_layernorm), "add_layernorm(x, residual, weight=None, bias=None, eps=1e-5) -> (normed, x + residual)"},
    {"softmax_masked", KW(py_softmax_masked), "softmax_masked(x, mask=None, scale=1.0, causal=False)"},
    {"cross_entropy", KW(py_cross_entropy), "cross_entropy(logits, targets, ignore_index=-100, "
     "label_smoothing=0.0, reduction='mean', check_targets=False, with_grad=False)"},
    {"rope", KW(py_rope), "rope(x, mode='half_split', layout='bshd', rotary_dims=0, base=10000, "
     "scale=1, offsets=None, cos=None, sin=None, positions=None): positions i32 [batch, seq], "
     "each token's own (not with offsets)"},
    {"attention", KW(py_attention), "attention(q, k, v, mask=None, causal=False, scale=0 "
     "(1/sqrt(D)), layout='bhsd', with_lse=False) -> out (or (out, lse))"},
    {"reduce_last", KW(py_reduce_last), "reduce_last(x, kind, ddof=0, keepdims=False)"},
    {"argmax", KW(py_argmax), "argmax(x, keepdims=False): over the last axis (i32)"},
    {"argmin", KW(py_argmin), "argmin(x, keepdims=False): over the last axis (i32)"},
    {"topk", py_topk, METH_VARARGS, "topk(x, k) -> (values, indices) over the last axis"},
    {"quantize_int8", KW(py_quantize_int8), "quantize_int8(x, scale_dtype='f32') -> (q, scales)"},
    {"dequantize_int8", KW(py_dequantize_int8), "dequantize_int8(q, scales, dtype='f32', silu=False)"},
    {"cache_stats", py_cache_stats, METH_NOARGS, "The kernel cache's counters and directory."},
    {NULL, NULL, 0, NULL},
};

int zpy_add_catalog(PyObject *m) {
  static PyMethodDef defs[N_UNARY];
  for (int i = 0; i < N_UNARY; i++) {
    defs[i].ml_name = UNARY[i].name;
    defs[i].ml_meth = unary_call;
    defs[i].ml_flags = METH_VARARGS;
    defs[i].ml_doc = UNARY[i].doc;
    PyObject *cap = PyCapsule_New((void *)&UNARY[i], "zmlx.unary", NULL);
    PyObject *f = cap ? PyCFunction_New(&defs[i], cap) : NULL;
    Py_XDECREF(cap);
    if (!f || PyModule_AddObject(m, UNARY[i].name, f) < 0) {
      Py_XDECREF(f);
      return -1;
    }
  }
  return 0;
}
