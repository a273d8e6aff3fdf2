/*
 * The backend interface: one table of function pointers per backend, in the
 * spirit of ggml's ggml_backend_i. Adding a backend means adding a folder
 * under src/backends/ that fills in these two tables:
 *
 *   zmlx_dialect      — how kernel source is rendered for the backend (its
 *                       prelude and kernel signature). Available even when
 *                       the backend cannot run here (Metal is emit-only; the
 *                       CUDA dialect renders on machines with no GPU).
 *   zmlx_backend_ops  — devices, memory, streams, compile, load, launch.
 *
 * Devices are numbered per backend. Buffers and streams are opaque `void *`
 * handles owned by the backend. All functions return a zmlx_status and set
 * the thread's error message (zmlxi_fail) on failure.
 */
#ifndef ZMLX_RUNTIME_BACKEND_H
#define ZMLX_RUNTIME_BACKEND_H

#include "zmlx.h"

#include <stddef.h>
#include <stdint.h>

struct zmlx_sb;

/* ------------------------------------------------------------ launch args */

typedef enum zmlx_arg_kind {
  ZMLX_ARG_BUFFER = 0, /* device buffer + byte offset of element 0 */
  ZMLX_ARG_SCALAR      /* `size` bytes passed by value (ints, structs) */
} zmlx_arg_kind;

typedef struct zmlx_launch_arg {
  zmlx_arg_kind kind;
  void *buffer;        /* ZMLX_ARG_BUFFER: backend buffer handle */
  size_t byte_offset;  /* ZMLX_ARG_BUFFER: start of the data */
  size_t elem_size;    /* ZMLX_ARG_BUFFER: element size (offset in elements for OpenCL) */
  const void *value;   /* ZMLX_ARG_SCALAR */
  size_t size;         /* ZMLX_ARG_SCALAR */
} zmlx_launch_arg;

/* Geometry structs passed by value to kernels that reference
 * <name>_shape / <name>_strides (same layout on every backend). */
typedef struct zmlx_kshape { int32_t v[ZMLX_MAX_DIMS]; } zmlx_kshape;
typedef struct zmlx_kstrides { int64_t v[ZMLX_MAX_DIMS]; } zmlx_kstrides;

/* ------------------------------------------------------------ kernel spec */

/* Everything a dialect needs to render one kernel. Built by the kernel
 * object (src/kernel/source.c). */
typedef struct zmlx_kparam {
  const char *name;
  zmlx_dtype dtype;
  int is_output;
  int is_scalar;   /* a by-value scalar parameter (after all arrays) */
  int want_shape, want_strides, want_ndim; /* body references them */
} zmlx_kparam;

typedef struct zmlx_kspec {
  const char *entry;         /* kernel function name in the source */
  const zmlx_kparam *params; /* inputs, then outputs, then scalars */
  int n_params;
  int guard_grid;            /* emit "return if outside the grid" */
  int uses_simd;             /* body calls simd helpers (OpenCL fallback scratch) */
  int uses_dynamic_shared;   /* body uses `threadgroup_dynamic` */
} zmlx_kspec;

/* Hidden trailing kernel parameters, in this order, for every backend:
 *   uint zmlx_grid_x, zmlx_grid_y, zmlx_grid_z   (threads, as the user asked)
 * They give `grid_size` and the out-of-grid guard. */
#define ZMLX_HIDDEN_GRID_ARGS 3

typedef struct zmlx_dialect {
  zmlx_backend kind;
  const char *name;          /* "cuda", "opencl", "metal" */
  const char *language;      /* what the source is written in: "CUDA C++", ... */
  /* 1 where the prelude's SIMD helpers are the hardware's (CUDA warps,
   * Metal SIMD groups), 0 where they are emulated in threadgroup memory
   * (OpenCL C 1.2 has no sub-groups): generators pick reductions by it. */
  int native_simd;
  const char *prelude;       /* the dialect vocabulary (src/backends/<b>/prelude.*) */
  /* Storage type name of a dtype in generated source, e.g. "float",
   * "zmlx_half" (ushort storage), "zmlx_i64". */
  const char *(*type_name)(zmlx_dtype dt);
  /* Render "kernel signature {" plus the index prologue (thread_position_in_grid,
   * ..., simd scratch) for `spec`. Arrays are pointers named like the params;
   * <name>_shape etc. follow the array when wanted; the hidden grid args last. */
  void (*emit_kernel_begin)(const zmlx_kspec *spec, struct zmlx_sb *sb);
  /* Close the kernel ("}\n" and anything the prologue opened). */
  void (*emit_kernel_end)(const zmlx_kspec *spec, struct zmlx_sb *sb);
  /* The language's reserved words and predefined names beyond C11's
   * (NULL-terminated): a kernel's array or parameter may not be named so,
   * since every kernel must compile on every backend. */
  const char *const *reserved_words;
} zmlx_dialect;

/* ------------------------------------------------------------ runtime ops */

/* One strided-batched GEMM for a backend's library: C = A @ B, row-major,
 * batch entries `*_batch` elements apart (0: the entry is shared). */
typedef struct zmlx_gemm_args {
  zmlx_dtype dtype;            /* of A and B (and C unless c_dtype says otherwise) */
  zmlx_dtype c_dtype;          /* of C: dtype, or f32 for 16-bit A and B (one rounding later) */
  int trans_a, trans_b;        /* 1: stored transposed (A as [K, M], B as [N, K]) */
  int64_t m, n, k, batch;
  const void *a, *b;           /* buffer handles */
  void *c;
  int64_t a_off, b_off, c_off; /* element offsets into the buffers */
  int64_t lda, ldb, ldc;       /* row-major leading dimensions, in elements */
  int64_t a_batch, b_batch, c_batch;
} zmlx_gemm_args;

typedef struct zmlx_backend_ops {
  zmlx_backend kind;
  const char *name;
  const zmlx_dialect *dialect;

  /* Probe once: load drivers, count working devices (0 is not an error). */
  zmlx_status (*init)(int *device_count);
  void (*shutdown)(void);
  zmlx_status (*device_info)(int dev, zmlx_device_info *info);
  /* Identity folded into cache keys: device arch + compiler and driver
   * versions, so a binary is never loaded on a device it was not built for. */
  zmlx_status (*cache_identity)(int dev, char *buf, size_t cap);

  zmlx_status (*stream_create)(int dev, void **stream);
  void (*stream_destroy)(int dev, void *stream);
  zmlx_status (*stream_sync)(int dev, void *stream);

  /* Stream-ordered where the backend can (cuMemAllocAsync / cuMemFreeAsync). */
  zmlx_status (*alloc)(int dev, void *stream, size_t bytes, void **buffer);
  void (*free)(int dev, void *stream, void *buffer);
  /* Host -> device; returns once `src` may be reused. */
  zmlx_status (*write)(int dev, void *stream, void *buffer, size_t offset, const void *src,
                       size_t bytes);
  /* Device -> host; waits for prior work on the stream and for the copy. */
  zmlx_status (*read)(int dev, void *stream, const void *buffer, size_t offset, void *dst,
                      size_t bytes);
  /* Device -> device, stream-ordered. */
  zmlx_status (*copy)(int dev, void *stream, void *dst, size_t dst_offset, const void *src,
                      size_t src_offset, size_t bytes);

  /* Source -> binary (cubin / OpenCL program binary). *log gets the
   * compiler log (malloc'ed, may be NULL) on success and on failure. */
  zmlx_status (*compile)(int dev, const char *source, const char *entry, void **binary,
                         size_t *binary_size, char **log);
  /* Binary -> launchable function. Fails cleanly on a foreign binary. */
  zmlx_status (*load)(int dev, const void *binary, size_t binary_size, const char *entry,
                      void **function);
  void (*unload)(int dev, void *function);
  /* Where the compiler's log puts its first error: 1 with the source line
   * (and column, 0 when unknown), else 0. One of zmlx_log_location_*. */
  int (*error_location)(const char *log, long *line, long *col);
  /* Threadgroup memory a loaded function declares itself (static
   * `threadgroup` arrays), in bytes: a launch adds its dynamic bytes to it
   * and is refused when the sum exceeds info.max_shared_memory. */
  size_t (*static_shared)(int dev, void *function);
  /* Launch `blocks` threadgroups of `threads` each. */
  zmlx_status (*launch)(int dev, void *stream, void *function, const uint32_t blocks[3],
                        const uint32_t threads[3], size_t dynamic_shared,
                        const zmlx_launch_arg *args, int n_args);

  /* C = A @ B through the platform's BLAS (row-major, f32 accumulation),
   * or ZMLX_ERR_UNSUPPORTED for what it does not take (a dtype, a layout):
   * the caller then uses the dialect GEMM. NULL: no library GEMM. */
  zmlx_status (*gemm)(int dev, void *stream, const zmlx_gemm_args *g);
  /* The library behind gemm and the dtypes it takes, for `zmlx info`
   * ("CLBlast 1.5 (f32)"); NULL when none is loaded on this device. */
  const char *(*gemm_library)(int dev);
  /* The dtypes of A and B gemm takes on this device, a bit per zmlx_dtype
   * (0 when its library is not loaded). */
  unsigned (*gemm_dtypes)(int dev);
  /* 1 when a 16-bit C is rounded once from f32 sums (a split-K's partials
   * kept in f32); else 16-bit products go through an f32 C. NULL: 0. */
  int (*gemm_rounds_once)(int dev);

  /* 1 when a buffer handle is a device address (CUDA): an offset can be
   * folded into it and its alignment checked; 0 for opaque objects
   * (cl_mem), which only take offsets as launch arguments. */
  int buffer_is_address;
  /* DLPack: device type code (kDLCUDA=2, kDLOpenCL=4) and the `data` value
   * for a buffer (device pointer, or cl_mem handle). */
  int dlpack_device_type;
  void *(*dlpack_data)(void *buffer);
  /* Wrap foreign memory described by DLPack `data` (+ byte offset) as a
   * buffer handle without copying; NULL if unsupported. */
  zmlx_status (*wrap_foreign)(int dev, void *data, size_t bytes, void **buffer);

  /* Allocation outside any stream's order (NULL: alloc / free serve):
   * what a graph capture allocates, since a stream-ordered allocation on a
   * capturing stream would become part of the graph (CUDA). */
  zmlx_status (*alloc_unordered)(int dev, size_t bytes, void **buffer);
  void (*free_unordered)(int dev, void *buffer);
  /* Native graphs (NULL: the runtime records launches and replays them,
   * runtime/graph.c). capture_begin starts capturing the stream's work
   * (queued, not run); capture_end stops, and when `keep` gives the
   * executable graph in *graph (keep 0: a failed capture, discarded);
   * graph_launch runs it on a stream. */
  zmlx_status (*capture_begin)(int dev, void *stream);
  zmlx_status (*capture_end)(int dev, void *stream, int keep, void **graph);
  zmlx_status (*graph_launch)(int dev, void *stream, void *graph);
  void (*graph_destroy)(int dev, void *graph);
} zmlx_backend_ops;

/* Tables defined by each backend folder. An ops table is NULL when the
 * backend was not compiled in. */
extern const zmlx_dialect zmlxi_dialect_cuda;
extern const zmlx_dialect zmlxi_dialect_opencl;
extern const zmlx_dialect zmlxi_dialect_metal;
extern const zmlx_backend_ops zmlxi_backend_cuda_ops;
extern const zmlx_backend_ops zmlxi_backend_opencl_ops;

/* Compiler-log formats (runtime/compile_log.c): clang's
 * "file:LINE:COL: error" and PoCL's "error: file:LINE:COL:", and NVRTC's
 * "file(LINE): error". */
int zmlxi_log_location_clang(const char *log, long *line, long *col);
int zmlxi_log_location_nvrtc(const char *log, long *line, long *col);

/* Registry (runtime/device.c). */
const zmlx_dialect *zmlxi_dialect_for(zmlx_backend b);
/* The backend whose buffers DLPack calls `device_type`, or AUTO for none. */
zmlx_backend zmlxi_backend_for_dlpack(int device_type);

#endif /* ZMLX_RUNTIME_BACKEND_H */
