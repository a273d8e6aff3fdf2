/* Graph capture and replay (zmlx.h "graphs"; graph.h for the hooks).
 *
 * A backend with native graphs (ops->capture_begin, CUDA stream capture)
 * captures the stream's work itself: launches queued during the capture do
 * not run until _end instantiates the graph and launches it once. Other
 * backends run each operation as usual and record it (function, geometry,
 * arguments with their scalar bytes copied; copies; GEMM descriptions);
 * a replay issues the records again in order on the capture's stream.
 *
 * Either way the graph holds every buffer its operations touch (their
 * addresses are baked in), allocations during a capture are not
 * stream-ordered (a CUDA capture would turn them into graph nodes), and
 * buffers released during a capture are freed after it ends. */
#include <stdlib.h>
#include <string.h>

#include "runtime/graph.h"

typedef enum { REC_LAUNCH, REC_COPY, REC_GEMM } rec_kind;

typedef struct rec {
  rec_kind kind;
  void *fn;
  uint32_t blocks[3], threads[3];
  size_t shared;
  zmlx_launch_arg *args; /* scalar values point into `scalars` */
  int n_args;
  unsigned char *scalars;
  void *dst, *src;
  size_t dst_offset, src_offset, bytes;
  zmlx_gemm_args gemm;
} rec;

struct zmlx_graph {
  zmlx_device *dev;
  zmlx_stream *stream; /* held unless the device's default */
  void *native;        /* the backend's executable graph, or NULL (records) */
  rec *recs;
  int n_recs, cap_recs;
  int64_t operations;
  zmlx_buffer **held;
  int n_held, cap_held;
  zmlx_buffer **deferred; /* released during the capture: freed at its end */
  int n_deferred, cap_deferred;
  zmlx_status failure; /* the first error inside the capture */
  uint64_t unloads;    /* zmlxi_unload_function count at the end of capture */
  pthread_mutex_t replay_lock;
};

static _Thread_local zmlx_graph *tls_capture;
static atomic_ullong g_unloads;

void zmlxi_unload_function(zmlx_device *dev, void *function) {
  atomic_fetch_add(&g_unloads, 1);
  dev->ops->unload(dev->index, function);
}

int zmlxi_capture_active(void) { return tls_capture != NULL; }

zmlx_graph *zmlxi_capture_on(const zmlx_device *dev) {
  return tls_capture && tls_capture->dev == dev ? tls_capture : NULL;
}

zmlx_status zmlxi_capture_refuse(const zmlx_device *dev, const char *what) {
  if (!zmlxi_capture_on(dev)) return ZMLX_OK;
  return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "%s during a graph capture on %s: a replay could not "
                   "repeat it (do it before zmlx_graph_capture_begin or after _end)",
                   what, dev->info.name);
}

/* grow *items (of `size` bytes each) to hold one more */
static int grow(void **items, int *cap, int n, size_t size) {
  if (n < *cap) return 1;
  int c = *cap ? 2 * *cap : 16;
  void *p = realloc(*items, (size_t)c * size);
  if (!p) return 0;
  *items = p;
  *cap = c;
  return 1;
}

zmlx_status zmlxi_capture_hold(zmlx_graph *g, zmlx_buffer *b) {
  for (int i = g->n_held - 1; i >= 0 && i >= g->n_held - 8; i--)
    if (g->held[i] == b) return ZMLX_OK; /* the common repeat: the last few */
  if (!grow((void **)&g->held, &g->cap_held, g->n_held, sizeof *g->held))
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  atomic_fetch_add(&b->refcount, 1);
  g->held[g->n_held++] = b;
  return ZMLX_OK;
}

int zmlxi_capture_defer_free(zmlx_buffer *b) {
  zmlx_graph *g = zmlxi_capture_on(b->device);
  if (!g || !grow((void **)&g->deferred, &g->cap_deferred, g->n_deferred, sizeof *g->deferred))
    return 0;
  g->deferred[g->n_deferred++] = b;
  return 1;
}

/* A failure inside the capture is kept: _end reports it. */
static zmlx_status noted(zmlx_graph *g, zmlx_status st) {
  if (g && st != ZMLX_OK && g->failure == ZMLX_OK) g->failure = st;
  return st;
}

static rec *new_rec(zmlx_graph *g, rec_kind kind) {
  if (!grow((void **)&g->recs, &g->cap_recs, g->n_recs, sizeof *g->recs)) return NULL;
  rec *r = &g->recs[g->n_recs++];
  memset(r, 0, sizeof *r);
  r->kind = kind;
  return r;
}

static zmlx_status record_launch(zmlx_graph *g, void *fn, const uint32_t blocks[3],
                                 const uint32_t threads[3], size_t shared,
                                 const zmlx_launch_arg *args, int n_args) {
  size_t scalar_bytes = 0;
  for (int i = 0; i < n_args; i++)
    if (args[i].kind == ZMLX_ARG_SCALAR) scalar_bytes += (args[i].size + 15) & ~(size_t)15;
  rec *r = new_rec(g, REC_LAUNCH);
  if (!r) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  r->args = malloc(sizeof *r->args * (size_t)(n_args ? n_args : 1));
  r->scalars = malloc(scalar_bytes ? scalar_bytes : 1);
  if (!r->args || !r->scalars) {
    free(r->args), free(r->scalars);
    g->n_recs--;
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  }
  size_t at = 0;
  for (int i = 0; i < n_args; i++) {
    r->args[i] = args[i];
    if (args[i].kind != ZMLX_ARG_SCALAR) continue;
    memcpy(r->scalars + at, args[i].value, args[i].size);
    r->args[i].value = r->scalars + at;
    at += (args[i].size + 15) & ~(size_t)15;
  }
  r->n_args = n_args;
  r->fn = fn;
  memcpy(r->blocks, blocks, sizeof r->blocks);
  memcpy(r->threads, threads, sizeof r->threads);
  r->shared = shared;
  return ZMLX_OK;
}

zmlx_status zmlxi_launch(zmlx_device *dev, void *stream, void *fn, const uint32_t blocks[3],
                         const uint32_t threads[3], size_t shared, const zmlx_launch_arg *args,
                         int n_args) {
  zmlx_graph *g = zmlxi_capture_on(dev);
  zmlx_status st = dev->ops->launch(dev->index, stream, fn, blocks, threads, shared, args, n_args);
  if (g) {
    if (st == ZMLX_OK && !g->native) st = record_launch(g, fn, blocks, threads, shared, args, n_args);
    if (st == ZMLX_OK) g->operations++;
  }
  return noted(g, st);
}

zmlx_status zmlxi_copy(zmlx_device *dev, void *stream, zmlx_buffer *dst, size_t dst_offset,
                       zmlx_buffer *src, size_t src_offset, size_t bytes) {
  zmlx_graph *g = zmlxi_capture_on(dev);
  zmlx_status st = ZMLX_OK;
  if (g && (st = zmlxi_capture_hold(g, dst)) == ZMLX_OK) st = zmlxi_capture_hold(g, src);
  if (st == ZMLX_OK)
    st = dev->ops->copy(dev->index, stream, dst->handle, dst_offset, src->handle, src_offset, bytes);
  if (g && st == ZMLX_OK && !g->native) {
    rec *r = new_rec(g, REC_COPY);
    if (r) {
      r->dst = dst->handle, r->dst_offset = dst_offset;
      r->src = src->handle, r->src_offset = src_offset;
      r->bytes = bytes;
    } else {
      st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    }
  }
  if (g && st == ZMLX_OK) g->operations++;
  return noted(g, st);
}

zmlx_status zmlxi_gemm(zmlx_device *dev, void *stream, const zmlx_gemm_args *args) {
  zmlx_graph *g = zmlxi_capture_on(dev);
  zmlx_status st = dev->ops->gemm(dev->index, stream, args);
  /* UNSUPPORTED is an answer (the caller uses the dialect GEMM), not a failure */
  if (!g || st == ZMLX_ERR_UNSUPPORTED) return st;
  if (st == ZMLX_OK && !g->native) {
    rec *r = new_rec(g, REC_GEMM);
    if (r) r->gemm = *args;
    else st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  }
  if (st == ZMLX_OK) g->operations++;
  return noted(g, st);
}

/* ------------------------------------------------------------ the API */

zmlx_status zmlx_graph_capture_begin(zmlx_device *dev) {
  ZMLX_CHECK(zmlxi_device_resolve(dev, &dev));
  if (!dev->default_stream)
    return zmlxi_fail(ZMLX_ERR_NO_DEVICE, "zmlx_graph_capture_begin: zmlx_shutdown was called");
  if (tls_capture)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_graph_capture_begin: this thread is already "
                     "capturing on %s (end that capture first)", tls_capture->dev->info.name);
  zmlx_graph *g = calloc(1, sizeof *g);
  if (!g) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  g->dev = dev;
  g->stream = zmlxi_stream_or_default(NULL, dev);
  zmlxi_stream_retain(g->stream);
  pthread_mutex_init(&g->replay_lock, NULL);
  if (dev->ops->capture_begin) {
    zmlx_status st = dev->ops->capture_begin(dev->index, g->stream->handle);
    if (st == ZMLX_OK) {
      g->native = (void *)1; /* capturing natively; the real handle comes at _end */
    } else if (st == ZMLX_ERR_UNSUPPORTED) {
      zmlx_clear_error(); /* (an old driver) record instead */
    } else {
      zmlxi_stream_release(g->stream);
      pthread_mutex_destroy(&g->replay_lock);
      free(g);
      return st;
    }
  }
  tls_capture = g;
  return ZMLX_OK;
}

static void free_deferred(zmlx_graph *g) {
  for (int i = 0; i < g->n_deferred; i++) zmlxi_buffer_free_now(g->deferred[i]);
  free(g->deferred);
  g->deferred = NULL;
  g->n_deferred = g->cap_deferred = 0;
}

zmlx_status zmlx_graph_capture_end(zmlx_device *dev, zmlx_graph **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(zmlxi_device_resolve(dev, &dev));
  zmlx_graph *g = zmlxi_capture_on(dev);
  if (!g)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_graph_capture_end: this thread is not capturing "
                     "on %s", dev->info.name);
  tls_capture = NULL;
  zmlx_status st = ZMLX_OK;
  if (g->native) {
    void *exec = NULL;
    st = dev->ops->capture_end(dev->index, g->stream->handle, g->failure == ZMLX_OK, &exec);
    g->native = exec;
    /* run once, as a recording backend did during the capture */
    if (st == ZMLX_OK && g->failure == ZMLX_OK)
      st = dev->ops->graph_launch(dev->index, g->stream->handle, exec);
  }
  free_deferred(g);
  g->unloads = atomic_load(&g_unloads);
  if (g->failure != ZMLX_OK) {
    zmlx_status why = g->failure;
    zmlx_graph_destroy(g);
    return zmlxi_fail(why, "zmlx_graph_capture_end: an operation inside the capture failed "
                     "(%s): no graph", zmlx_status_string(why));
  }
  if (st != ZMLX_OK) {
    zmlx_graph_destroy(g);
    return st;
  }
  *out = g;
  return ZMLX_OK;
}

static zmlx_status replay_recs(zmlx_graph *g) {
  zmlx_device *dev = g->dev;
  void *stream = g->stream->handle;
  zmlx_status st = ZMLX_OK;
  for (int i = 0; st == ZMLX_OK && i < g->n_recs; i++) {
    const rec *r = &g->recs[i];
    if (r->kind == REC_LAUNCH)
      st = dev->ops->launch(dev->index, stream, r->fn, r->blocks, r->threads, r->shared, r->args,
                            r->n_args);
    else if (r->kind == REC_COPY)
      st = dev->ops->copy(dev->index, stream, r->dst, r->dst_offset, r->src, r->src_offset,
                          r->bytes);
    else
      st = dev->ops->gemm(dev->index, stream, &r->gemm);
  }
  return st;
}

zmlx_status zmlx_graph_replay(zmlx_graph *g) {
  ZMLX_REQUIRE_ARG(g);
  if (!g->dev->default_stream)
    return zmlxi_fail(ZMLX_ERR_NO_DEVICE, "zmlx_graph_replay: zmlx_shutdown was called");
  if (zmlxi_capture_on(g->dev))
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "zmlx_graph_replay: inside a capture on the same "
                     "device (graphs do not nest)");
  if (atomic_load(&g_unloads) != g->unloads)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_graph_replay: kernels were unloaded since the "
                     "capture (zmlx_cache_clear_memory); capture the graph again");
  pthread_mutex_lock(&g->replay_lock);
  zmlx_status st = g->native ? g->dev->ops->graph_launch(g->dev->index, g->stream->handle, g->native)
                             : replay_recs(g);
  pthread_mutex_unlock(&g->replay_lock);
  return st;
}

zmlx_status zmlx_graph_destroy(zmlx_graph *g) {
  if (!g) return ZMLX_OK;
  if (tls_capture == g)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_graph_destroy: the graph is still being "
                     "captured (end the capture first)");
  if (g->native && g->dev->ops->graph_destroy) g->dev->ops->graph_destroy(g->dev->index, g->native);
  for (int i = 0; i < g->n_recs; i++) {
    free(g->recs[i].args);
    free(g->recs[i].scalars);
  }
  free(g->recs);
  free_deferred(g);
  for (int i = 0; i < g->n_held; i++) zmlxi_buffer_release(g->held[i]);
  free(g->held);
  zmlxi_stream_release(g->stream);
  pthread_mutex_destroy(&g->replay_lock);
  free(g);
  return ZMLX_OK;
}

zmlx_status zmlx_graph_get_info(const zmlx_graph *g, zmlx_graph_info *info) {
  ZMLX_REQUIRE_ARG(g);
  ZMLX_REQUIRE_ARG(info);
  if (info->struct_size != sizeof *info)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_graph_get_info: info->struct_size is %zu, this "
                     "library's zmlx_graph_info has %zu bytes", info->struct_size, sizeof *info);
  info->operations = g->operations;
  info->native = g->native != NULL;
  return ZMLX_OK;
}
