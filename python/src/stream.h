/* Streams in the DLPack handoff (stream.c). */
#ifndef ZMLX_PY_STREAM_H
#define ZMLX_PY_STREAM_H

#include "core.h"

/* The consumer stream a DLPack `stream` argument names on dev: *out NULL
 * when it names none (None, or a backend without stream numbers): export
 * then synchronises; *ordered when the consumer asked for no
 * synchronisation (-1). 0 and a Python error on a bad value. */
int zpy_consumer_stream(PyObject *stream, zmlx_device *dev, zmlx_stream **out, int *ordered);
/* The `stream` to pass to a CUDA producer's __dlpack__ so that its data is
 * ready on the stream zmlx will use on dev: *out = the thread's current
 * stream (1 for the legacy default). Returns -1 when zmlx uses its own
 * default stream (pass nothing: the producer synchronises), 1 when *out is
 * set, 0 with a Python error. */
int zpy_producer_stream_arg(zmlx_device *dev, long long *out);

extern PyMethodDef zpy_stream_functions[];

#endif
