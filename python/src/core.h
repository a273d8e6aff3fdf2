/* Shared declarations of the zmlx CPython extension (zmlx._core): the
 * Array type wrapping a zmlx_array, errors as Python exceptions, and the
 * argument converters every module function uses. */
#ifndef ZMLX_PY_CORE_H
#define ZMLX_PY_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "zmlx.h"

/* zmlx.Error: a RuntimeError whose message is zmlx_last_error() and whose
 * `status` attribute is the status name ("ZMLX_ERR_SHAPE"). */
extern PyObject *zpy_error;
/* Raise zmlx.Error for `st` (NULL returned for convenience). */
PyObject *zpy_raise(zmlx_status st);

typedef struct zpy_array {
  PyObject_HEAD
  zmlx_array *a; /* one reference, owned */
} zpy_array;
/* A heap type, so that the Python layer can add methods (__array__, operators). */
extern PyTypeObject *zpy_array_type;

/* A new Python Array taking over the reference `a` (released on failure). */
PyObject *zpy_array_wrap(zmlx_array *a);
/* {names[i]: Array} of parameters p[0 .. n) (new references to the same
 * arrays, in order): a model's or a layer's parameters() */
PyObject *zpy_param_dict(int n, zmlx_array *const *p, const char *const *names);
/* Borrowed zmlx_array of an Array object (NULL and TypeError otherwise). */
zmlx_array *zpy_array_get(PyObject *o, const char *what);
/* O& converters: an Array (borrowed); an Array or None. */
int zpy_conv_array(PyObject *o, void *out);
int zpy_conv_array_opt(PyObject *o, void *out);
/* A dtype name ("f32", "float32", "bf16", ...) or None (f32). */
int zpy_conv_dtype(PyObject *o, void *out);
/* A device: None (the default), "opencl", "cuda:1", ... */
int zpy_conv_device(PyObject *o, void *out);
/* A shape: a sequence of ints (at most ZMLX_MAX_DIMS). */
typedef struct zpy_shape {
  int ndim;
  int64_t dims[ZMLX_MAX_DIMS];
} zpy_shape;
int zpy_conv_shape(PyObject *o, void *out);
/* A list of Arrays: new C array of borrowed pointers (free with PyMem_Free). */
zmlx_array **zpy_array_list(PyObject *seq, Py_ssize_t *n, const char *what);
/* A list of str: new C array of borrowed UTF-8 pointers (valid while seq lives). */
const char **zpy_str_list(PyObject *seq, Py_ssize_t *n, const char *what);
/* A list of numbers as doubles (PyMem_Malloc'ed, NULL for None). */
double *zpy_double_list(PyObject *seq, Py_ssize_t *n, const char *what);

/* A sequence of dtypes into out[0..cap) (entries past it ignored); None
 * leaves out as it is. */
int zpy_dtype_list(PyObject *o, zmlx_dtype *out, int cap);

/* RoPE mode and layout names ("half_split" / "interleaved", "bshd" /
 * "bhsd"; NULL: the first of each) into o; 0 and ValueError otherwise. */
int zpy_rope_opts(PyObject *mode, PyObject *layout, zmlx_rope_opts *o);
/* A sequence of ints as a new C array of int64 (PyMem_Free it); NULL with
 * the Python error set otherwise. */
int64_t *zpy_id_list(PyObject *seq, Py_ssize_t *n, const char *what);

/* "opencl:0" of a device. */
PyObject *zpy_device_name(zmlx_device *dev);

/* Module parts, each adding its functions and types (module.c calls them). */
int zpy_add_array(PyObject *m);
int zpy_add_ops(PyObject *m);
int zpy_add_autograd(PyObject *m);
int zpy_add_kernel(PyObject *m);
int zpy_add_catalog(PyObject *m);
int zpy_add_kvcache(PyObject *m);
int zpy_add_nn(PyObject *m); /* zmlx.AdamW, adamw_step, the MoE calls */
int zpy_add_lm(PyObject *m); /* zmlx.LanguageModel */
int zpy_add_layer(PyObject *m); /* zmlx.Layer */
/* The cache of a zmlx.KVCache (borrowed; NULL and TypeError otherwise). */
zmlx_kv_cache *zpy_kv_get(PyObject *o);
int zpy_add_graph(PyObject *m); /* zmlx.capture's Graph */
extern PyMethodDef zpy_array_functions[];
extern PyMethodDef zpy_ops_functions[];
extern PyMethodDef zpy_autograd_functions[];
extern PyMethodDef zpy_kernel_functions[];
extern PyMethodDef zpy_catalog_functions[];

#endif
