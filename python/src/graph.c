/* zmlx graphs from Python (zmlx_graph_*): _core.graph_capture_begin /
 * graph_capture_end and the Graph object (replay, info); zmlx.capture in
 * __init__.py is the context manager users write. */
#include "core.h"

typedef struct zpy_graph {
  PyObject_HEAD
  zmlx_graph *g;
} zpy_graph;

static void graph_dealloc(zpy_graph *self) {
  zmlx_graph_destroy(self->g);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *graph_replay(zpy_graph *self, PyObject *noargs) {
  (void)noargs;
  zmlx_status st = zmlx_graph_replay(self->g);
  if (st != ZMLX_OK) return zpy_raise(st);
  Py_RETURN_NONE;
}

static PyObject *graph_info(zpy_graph *self, PyObject *noargs) {
  (void)noargs;
  zmlx_graph_info info = {.struct_size = sizeof info};
  zmlx_status st = zmlx_graph_get_info(self->g, &info);
  if (st != ZMLX_OK) return zpy_raise(st);
  return Py_BuildValue("{s:L,s:O}", "operations", (long long)info.operations, "native",
                       info.native ? Py_True : Py_False);
}

static PyMethodDef graph_methods[] = {
    {"replay", (PyCFunction)graph_replay, METH_NOARGS,
     "Run the captured work again (on the stream that was current at capture)."},
    {"info", (PyCFunction)graph_info, METH_NOARGS,
     "{'operations': launches, copies and GEMMs captured, 'native': a CUDA graph or recorded}"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject graph_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zmlx._core.Graph",
    .tp_basicsize = sizeof(zpy_graph),
    .tp_dealloc = (destructor)graph_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A captured graph (zmlx.capture makes one): replay() runs it again.",
    .tp_methods = graph_methods,
};

static PyObject *py_capture_begin(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *devo = Py_None;
  zmlx_device *dev = NULL;
  if (!PyArg_ParseTuple(args, "|O", &devo) || !zpy_conv_device(devo, &dev)) return NULL;
  zmlx_status st = zmlx_graph_capture_begin(dev);
  if (st != ZMLX_OK) return zpy_raise(st);
  Py_RETURN_NONE;
}

static PyObject *py_capture_end(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *devo = Py_None;
  zmlx_device *dev = NULL;
  if (!PyArg_ParseTuple(args, "|O", &devo) || !zpy_conv_device(devo, &dev)) return NULL;
  zmlx_graph *g = NULL;
  zmlx_status st = zmlx_graph_capture_end(dev, &g);
  if (st != ZMLX_OK) return zpy_raise(st);
  zpy_graph *o = PyObject_New(zpy_graph, &graph_type);
  if (!o) {
    zmlx_graph_destroy(g);
    return NULL;
  }
  o->g = g;
  return (PyObject *)o;
}

static PyMethodDef graph_functions[] = {
    {"graph_capture_begin", py_capture_begin, METH_VARARGS,
     "graph_capture_begin(device=None): capture this thread's work on the device."},
    {"graph_capture_end", py_capture_end, METH_VARARGS,
     "graph_capture_end(device=None) -> Graph (the captured work has run once)."},
    {NULL, NULL, 0, NULL},
};

int zpy_add_graph(PyObject *m) {
  if (PyType_Ready(&graph_type) < 0) return -1;
  Py_INCREF(&graph_type);
  if (PyModule_AddObject(m, "Graph", (PyObject *)&graph_type) < 0) return -1;
  return PyModule_AddFunctions(m, graph_functions);
}
