/*
 * Graph capture inside the runtime (graph.c): which thread captures what,
 * and the hooks the layers above call so that a capture sees every device
 * operation. A capture belongs to one thread and one device; the work it
 * records is replayed on the stream that was current when it began.
 */
#ifndef ZMLX_RUNTIME_GRAPH_H
#define ZMLX_RUNTIME_GRAPH_H

#include "runtime/backend.h"
#include "runtime/internal.h"

/* 1 while this thread captures (on any device). */
int zmlxi_capture_active(void);
/* This thread's graph under capture on dev, or NULL. */
zmlx_graph *zmlxi_capture_on(const zmlx_device *dev);

/* ZMLX_ERR_UNSUPPORTED naming `what` (a host read, a host write, a
 * synchronization) when this thread is capturing on dev: it could not be
 * part of a replay. ZMLX_OK otherwise. */
zmlx_status zmlxi_capture_refuse(const zmlx_device *dev, const char *what);

/* The graph keeps b alive (and its memory where it is) as long as it lives:
 * every buffer a captured launch, copy or GEMM touches. */
zmlx_status zmlxi_capture_hold(zmlx_graph *g, zmlx_buffer *b);

/* A buffer released while this thread captures on its device: freed when
 * the capture ends (a free inside a CUDA capture would become part of the
 * graph). Returns 1 when taken. */
int zmlxi_capture_defer_free(zmlx_buffer *b);

/* The backend's launch / copy / GEMM on `stream`, recorded for replay when
 * the capture records launches itself (backends without native graphs).
 * zmlxi_copy holds its two buffers; a launch or a GEMM names only handles,
 * so its caller holds the buffers (zmlxi_capture_hold). */
zmlx_status zmlxi_launch(zmlx_device *dev, void *stream, void *fn, const uint32_t blocks[3],
                         const uint32_t threads[3], size_t shared, const zmlx_launch_arg *args,
                         int n_args);
zmlx_status zmlxi_copy(zmlx_device *dev, void *stream, zmlx_buffer *dst, size_t dst_offset,
                       zmlx_buffer *src, size_t src_offset, size_t bytes);
zmlx_status zmlxi_gemm(zmlx_device *dev, void *stream, const zmlx_gemm_args *g);

/* The cache unloads functions through this (a replay refuses to run once
 * any function was unloaded after its capture: it might be one of its). */
void zmlxi_unload_function(zmlx_device *dev, void *function);

#endif
