/* zmlx._core: the CPython extension behind the zmlx package. Each part
 * (array.c, ops.c, autograd.c, kernel.c, catalog.c, kvcache.c, nn.c, lm.c,
 * layer.c, graph.c) has its functions and types; this file joins them into
 * the module. A C extension rather than
 * ctypes or cffi: a kernel call from Python is one C function call with
 * its arguments converted in C (python/README.md has the measurement). */
#include "core.h"
#include "stream.h"

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "zmlx._core",
    "zmlx's C library in Python: arrays, expression ops, kernels, autograd, the catalog.", -1, NULL,
    NULL, NULL, NULL, NULL};

static int add_functions(PyObject *m, PyMethodDef *defs) {
  return PyModule_AddFunctions(m, defs);
}

PyMODINIT_FUNC PyInit__core(void) {
  PyObject *m = PyModule_Create(&module_def);
  if (!m) return NULL;
  if (zpy_add_array(m) < 0 || zpy_add_ops(m) < 0 || zpy_add_autograd(m) < 0 ||
      zpy_add_kernel(m) < 0 || zpy_add_catalog(m) < 0 || zpy_add_kvcache(m) < 0 ||
      zpy_add_nn(m) < 0 || zpy_add_lm(m) < 0 || zpy_add_layer(m) < 0 || zpy_add_graph(m) < 0 ||
      add_functions(m, zpy_array_functions) < 0 || add_functions(m, zpy_ops_functions) < 0 ||
      add_functions(m, zpy_autograd_functions) < 0 || add_functions(m, zpy_kernel_functions) < 0 ||
      add_functions(m, zpy_catalog_functions) < 0 || add_functions(m, zpy_stream_functions) < 0 ||
      PyModule_AddStringConstant(m, "__version__", zmlx_version_string()) < 0) {
    Py_DECREF(m);
    return NULL;
  }
  return m;
}
