/*
 * zmlx — write, JIT-compile, cache, launch and differentiate ML kernels.
 *
 * Public C API. Plain C11: includable from C, C++, Zig (@cImport), Rust
 * (bindgen), Go (cgo) and Swift without a shim.
 *
 * Conventions (in the spirit of sqlite/zstd):
 *   - every entry point returns a zmlx_status; results come back through
 *     out-parameters;
 *   - on failure zmlx_last_error() returns a thread-local message that says
 *     what went wrong in words (shapes, dtypes, compiler log, source line);
 *   - handles are opaque; objects made by *_create / *_from_* are freed by
 *     the matching *_destroy / *_release;
 *   - nothing in this header needs the CUDA or OpenCL headers.
 *
 * Threads. Shared freely between threads: devices; streams (work from
 * several threads on one stream is ordered as it is enqueued); kernel
 * objects and ops (zmlx_kernel_launch / zmlx_op_call / catalog calls at
 * once, compiled once); arrays for reading (zmlx_array_retain / _release
 * are atomic). Per thread: the error message, the current stream, the grad
 * tape (each thread differentiates its own calls). zmlx_cache_clear_memory
 * may run while other threads launch: it unloads once their launches are
 * handed to the device. The caller's to serialise: writing an array while
 * another thread reads or writes it; a KV cache, a language model's
 * generation state and an AdamW object (one thread, or a lock, each);
 * zmlx_set_default_device and zmlx_shutdown (no other call at the same
 * time). tests/test_threads.c runs eight threads this way under
 * ThreadSanitizer in `make test`.
 */
#ifndef ZMLX_H
#define ZMLX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZMLX_VERSION_MAJOR 0
#define ZMLX_VERSION_MINOR 1
#define ZMLX_VERSION_PATCH 0
#define ZMLX_VERSION_NUMBER \
  (ZMLX_VERSION_MAJOR * 10000 + ZMLX_VERSION_MINOR * 100 + ZMLX_VERSION_PATCH)
#define ZMLX_VERSION_STRING "0.1.0"

#if defined(_WIN32) && defined(ZMLX_BUILD_SHARED)
#define ZMLX_API __declspec(dllexport)
#elif defined(__GNUC__)
#define ZMLX_API __attribute__((visibility("default")))
#else
#define ZMLX_API
#endif

/** Runtime version as ZMLX_VERSION_NUMBER of the linked library. */
ZMLX_API unsigned zmlx_version_number(void);
/** Runtime version string of the linked library, e.g. "0.1.0". */
ZMLX_API const char *zmlx_version_string(void);

/* ------------------------------------------------------------------ status */

typedef enum zmlx_status {
  ZMLX_OK = 0,
  ZMLX_ERR_NULL_ARG,      /* a required pointer was NULL */
  ZMLX_ERR_INVALID_ARG,   /* a value is out of range or inconsistent */
  ZMLX_ERR_SHAPE,         /* shapes do not match or are not allowed */
  ZMLX_ERR_DTYPE,         /* dtype not supported or not matching */
  ZMLX_ERR_OUT_OF_MEMORY, /* host or device allocation failed */
  ZMLX_ERR_NO_DEVICE,     /* backend or device not available */
  ZMLX_ERR_BACKEND,       /* the driver / runtime reported an error */
  ZMLX_ERR_COMPILE,       /* kernel source failed to compile */
  ZMLX_ERR_LAUNCH,        /* kernel launch rejected (grid, resources) */
  ZMLX_ERR_UNSUPPORTED,   /* valid request this build/device cannot do */
  ZMLX_ERR_IO,            /* file system error (cache) */
  ZMLX_ERR_PARSE,         /* expression text could not be parsed */
  ZMLX_ERR_INTERNAL       /* a bug in zmlx: please report */
} zmlx_status;

/** Short constant name of a status, e.g. "ZMLX_ERR_SHAPE". */
ZMLX_API const char *zmlx_status_string(zmlx_status s);
/** Message of the last failed call on this thread ("" if none). */
ZMLX_API const char *zmlx_last_error(void);
/** Forget the last error of this thread. */
ZMLX_API void zmlx_clear_error(void);

/* ------------------------------------------------------------------ dtypes */

typedef enum zmlx_dtype {
  ZMLX_BOOL = 0,
  ZMLX_U8,
  ZMLX_I8,
  ZMLX_I32,
  ZMLX_U32,
  ZMLX_I64,
  ZMLX_F16,
  ZMLX_BF16,
  ZMLX_F32,
  ZMLX_F64, /* host-side and where the device supports it */
  ZMLX_DTYPE_COUNT
} zmlx_dtype;

/** Bytes per element, 0 for an invalid dtype. */
ZMLX_API size_t zmlx_dtype_size(zmlx_dtype dt);
/** "f32", "bf16", ...; "?" for an invalid dtype. */
ZMLX_API const char *zmlx_dtype_name(zmlx_dtype dt);
/** Parse "f32", "float32", "bf16", ... into *out. */
ZMLX_API zmlx_status zmlx_dtype_from_name(const char *name, zmlx_dtype *out);

/* Host conversions used by tests and tools (round to nearest even). */
ZMLX_API uint16_t zmlx_f32_to_f16(float f);
ZMLX_API float zmlx_f16_to_f32(uint16_t h);
ZMLX_API uint16_t zmlx_f32_to_bf16(float f);
ZMLX_API float zmlx_bf16_to_f32(uint16_t b);

/* ------------------------------------------------------ backends, devices */

typedef enum zmlx_backend {
  ZMLX_BACKEND_AUTO = 0, /* CUDA if a GPU works, else OpenCL */
  ZMLX_BACKEND_CUDA,
  ZMLX_BACKEND_OPENCL,
  ZMLX_BACKEND_METAL, /* source emission only: no device, no launch */
  ZMLX_BACKEND_COUNT
} zmlx_backend;

/** "cuda", "opencl", "metal", "auto". */
ZMLX_API const char *zmlx_backend_name(zmlx_backend b);
ZMLX_API zmlx_status zmlx_backend_from_name(const char *name, zmlx_backend *out);
/** Whether a backend was compiled in and found a working device (0/1). */
ZMLX_API int zmlx_backend_available(zmlx_backend b);

typedef struct zmlx_device zmlx_device; /* owned by the library */
typedef struct zmlx_stream zmlx_stream;

#define ZMLX_MAX_DIMS 8

typedef struct zmlx_device_info {
  zmlx_backend backend;
  int index;               /* index within its backend */
  char name[256];          /* e.g. "NVIDIA H100 80GB HBM3" */
  char version[128];       /* "compute capability 9.0" / "OpenCL 3.0 PoCL" */
  char arch[64];           /* "sm_90a" / OpenCL device+driver identity */
  size_t total_memory;     /* bytes */
  size_t max_shared_memory;/* per threadgroup, bytes */
  int max_threads_per_threadgroup;
  int simd_width;          /* 32 on NVIDIA; emulated width on OpenCL */
  int native_simd;         /* 1 if SIMD helpers use hardware sub-groups */
  int compute_units;
  int has_fp16;            /* native fp16 arithmetic */
  int has_fp64;
  int64_t max_threadgroups[3]; /* threadgroups per launch along x, y, z */
  int is_cpu;              /* the device is the host's CPU (OpenCL on PoCL) */
  int has_mma;             /* warp 16x8x16 f16 / bf16 matrix products (tensor cores) */
  int has_wgmma;           /* Hopper's warpgroup 64xNx16 products (sm_90a wgmma) */
} zmlx_device_info;

/** Number of working devices of one backend (0 if unavailable). */
ZMLX_API zmlx_status zmlx_device_count(zmlx_backend b, int *count);
/** Device `index` of backend `b` (AUTO picks the default backend). */
ZMLX_API zmlx_status zmlx_device_get(zmlx_backend b, int index, zmlx_device **out);
/** Default device: $ZMLX_BACKEND / $ZMLX_DEVICE, else CUDA 0, else OpenCL 0. */
ZMLX_API zmlx_status zmlx_default_device(zmlx_device **out);
/** Make `dev` the default device of this process. */
ZMLX_API zmlx_status zmlx_set_default_device(zmlx_device *dev);
ZMLX_API zmlx_status zmlx_device_get_info(const zmlx_device *dev, zmlx_device_info *info);
ZMLX_API zmlx_backend zmlx_device_backend(const zmlx_device *dev);
/** The library behind this device's matmuls and the dtypes it takes, e.g.
 *  "CLBlast 1.5.3 (f32)" or "cuBLAS 13.0 (f32, f16, bf16)"; NULL when
 *  zmlx_matmul uses only the built-in dialect GEMM (it also does the dtypes
 *  and layouts the library does not take). */
ZMLX_API zmlx_status zmlx_device_gemm_library(const zmlx_device *dev, const char **library);

/** Streams order device work. Each device has a default stream (NULL). */
ZMLX_API zmlx_status zmlx_stream_create(zmlx_device *dev, zmlx_stream **out);
ZMLX_API zmlx_status zmlx_stream_destroy(zmlx_stream *s);
/** Block until all work queued on the stream has finished. */
ZMLX_API zmlx_status zmlx_stream_synchronize(zmlx_stream *s);
/** Block until every stream of the device has finished its work: the
 *  default stream and every live stream created or wrapped on it. */
ZMLX_API zmlx_status zmlx_device_synchronize(zmlx_device *dev);
/** Wrap a stream another library owns — a CUstream on CUDA (NULL: the legacy
 *  default stream), a cl_command_queue on OpenCL — so zmlx work can run on it
 *  (PyTorch's current stream, CuPy's). zmlx never destroys the native stream:
 *  zmlx_stream_destroy releases only the wrapper. The owner must keep the
 *  native stream alive while the wrapper and the zmlx buffers allocated on
 *  it live: buffers are freed on the stream they were allocated on, and
 *  zmlx_device_synchronize waits on every live stream. */
ZMLX_API zmlx_status zmlx_stream_wrap(zmlx_device *dev, void *native, zmlx_stream **out);
/** The backend's handle of a stream (CUstream / cl_command_queue). */
ZMLX_API zmlx_status zmlx_stream_native(const zmlx_stream *s, void **native);
/** Make `s` the calling thread's current stream of its device: work that
 *  names no stream — catalog ops, autograd, allocations, copies, DLPack
 *  export — runs on it instead of the device's default stream. NULL restores
 *  the default stream. The thread holds a reference, so `s` may be destroyed
 *  while current; it is released when another stream is made current. */
ZMLX_API zmlx_status zmlx_set_current_stream(zmlx_stream *s);
/** The calling thread's current stream on `dev` (NULL: the default device);
 *  *out is NULL when that is the device's default stream. */
ZMLX_API zmlx_status zmlx_current_stream(zmlx_device *dev, zmlx_stream **out);

/* ------------------------------------------------------------------ graphs */
/* A step of many small kernels (a decode step) costs one launch when it is
 * captured once and replayed: CUDA graphs on CUDA (stream capture), the
 * recorded launches re-issued elsewhere (OpenCL).
 *
 * Between zmlx_graph_capture_begin and _end, the device work this thread
 * queues on the device (kernel launches, catalog ops, autograd, copies,
 * library GEMMs) is captured; when _end returns it has also run once. The
 * arrays it touched keep their memory for the graph's life, so a replay
 * recomputes the same output arrays from whatever their inputs hold then:
 * write new inputs in place (zmlx_array_write_host) between replays. Host
 * reads, host writes and synchronizations on the device are refused during
 * a capture (ZMLX_ERR_UNSUPPORTED: a replay could not repeat them), as is
 * changing the current stream; ops that need them (a GEMM path reading
 * offsets back, say) fail the same way. A replay runs on the stream that
 * was current when the capture began, ordered like any launch there; it is
 * refused once zmlx_cache_clear_memory has unloaded functions after the
 * capture (capture again). One capture per thread at a time. */
typedef struct zmlx_graph zmlx_graph;

ZMLX_API zmlx_status zmlx_graph_capture_begin(zmlx_device *dev);
/** End this thread's capture on dev: *out is the graph (destroy it with
 *  zmlx_graph_destroy). A capture that failed inside (an op's error)
 *  returns that status here too, and no graph. */
ZMLX_API zmlx_status zmlx_graph_capture_end(zmlx_device *dev, zmlx_graph **out);
ZMLX_API zmlx_status zmlx_graph_replay(zmlx_graph *g);
ZMLX_API zmlx_status zmlx_graph_destroy(zmlx_graph *g);

typedef struct zmlx_graph_info {
  size_t struct_size; /* sizeof(zmlx_graph_info) */
  int64_t operations; /* launches, copies and GEMMs captured */
  int native;         /* 1: a backend graph (CUDA graph); 0: recorded launches */
} zmlx_graph_info;
ZMLX_API zmlx_status zmlx_graph_get_info(const zmlx_graph *g, zmlx_graph_info *info);

/* ------------------------------------- arrays (never recorded by autograd) */

typedef struct zmlx_array zmlx_array;

/* Creation. `dev` NULL means the default device. Shapes are int64 sizes;
 * ndim may be 0 (a scalar). Every creator returns a new reference. */
ZMLX_API zmlx_status zmlx_array_from_host(zmlx_device *dev, zmlx_dtype dt, int ndim,
                                          const int64_t *shape, const void *data,
                                          zmlx_array **out);
ZMLX_API zmlx_status zmlx_array_empty(zmlx_device *dev, zmlx_dtype dt, int ndim,
                                      const int64_t *shape, zmlx_array **out);
ZMLX_API zmlx_status zmlx_array_zeros(zmlx_device *dev, zmlx_dtype dt, int ndim,
                                      const int64_t *shape, zmlx_array **out);
/** Every element = value (converted to dt). */
ZMLX_API zmlx_status zmlx_array_full(zmlx_device *dev, zmlx_dtype dt, int ndim,
                                     const int64_t *shape, double value, zmlx_array **out);
/** 1-D: start, start+step, ... (n elements). */
ZMLX_API zmlx_status zmlx_array_arange(zmlx_device *dev, zmlx_dtype dt, double start,
                                       double step, int64_t n, zmlx_array **out);
/* Counter-based random numbers (Philox-4x32-10). Element i depends only on
 * (seed, i): every backend gives the same bits for uniform, and normal
 * agrees to the last bits of the device's log/cos. Floating dtypes only;
 * low <= high and stddev >= 0, all finite (else ZMLX_ERR_INVALID_ARG). */
ZMLX_API zmlx_status zmlx_array_random_uniform(zmlx_device *dev, zmlx_dtype dt, int ndim,
                                               const int64_t *shape, uint64_t seed,
                                               double low, double high, zmlx_array **out);
ZMLX_API zmlx_status zmlx_array_random_normal(zmlx_device *dev, zmlx_dtype dt, int ndim,
                                              const int64_t *shape, uint64_t seed,
                                              double mean, double stddev, zmlx_array **out);

/* Reference counting. */
ZMLX_API zmlx_status zmlx_array_retain(zmlx_array *a);
/** Drop one reference; NULL is accepted. */
ZMLX_API zmlx_status zmlx_array_release(zmlx_array *a);
/** Number of live array handles in this process (leak checks). */
ZMLX_API int64_t zmlx_array_live_count(void);

/* Introspection (cheap, never fail on a valid handle). */
ZMLX_API zmlx_dtype zmlx_array_dtype(const zmlx_array *a);
ZMLX_API int zmlx_array_ndim(const zmlx_array *a);
/** Pointer to ndim sizes (valid while `a` lives). */
ZMLX_API const int64_t *zmlx_array_shape(const zmlx_array *a);
/** Pointer to ndim strides, in elements. */
ZMLX_API const int64_t *zmlx_array_strides(const zmlx_array *a);
/** Offset of element 0 from the buffer start, in elements. */
ZMLX_API int64_t zmlx_array_offset(const zmlx_array *a);
ZMLX_API int64_t zmlx_array_size(const zmlx_array *a);
ZMLX_API size_t zmlx_array_nbytes(const zmlx_array *a);
ZMLX_API zmlx_device *zmlx_array_device(const zmlx_array *a);
/** 1 if row-major contiguous (C order) from its offset. */
ZMLX_API int zmlx_array_is_contiguous(const zmlx_array *a);

/** Copy the (possibly strided) array into `dst` as a dense C-order buffer of
 *  `dst_bytes` bytes (must be exactly nbytes). Waits for pending work. */
ZMLX_API zmlx_status zmlx_array_to_host(zmlx_array *a, void *dst, size_t dst_bytes);
/** Overwrite a contiguous array's elements with src (src_bytes must equal
 *  its size in bytes), in stream order: how a captured graph's inputs get
 *  new values between replays. */
ZMLX_API zmlx_status zmlx_array_write_host(zmlx_array *a, const void *src, size_t src_bytes);
/** Read element `flat_index` (C order) converted to double. Slow; for tests. */
ZMLX_API zmlx_status zmlx_array_item(zmlx_array *a, int64_t flat_index, double *out);

/* Views share the buffer (no copy). Not recorded by autograd: inside a grad
 * call use zmlx_reshape / zmlx_transpose / zmlx_slice / zmlx_astype, which
 * are (docs/AUTOGRAD.md has the table of both families). */
/** New shape with the same element count; one entry may be -1. A view when
 *  the array is contiguous, else a contiguous copy. */
ZMLX_API zmlx_status zmlx_array_reshape(zmlx_array *a, int ndim, const int64_t *shape,
                                        zmlx_array **out);
/** perm: a permutation of 0..ndim-1 (NULL reverses the axes). */
ZMLX_API zmlx_status zmlx_array_transpose(zmlx_array *a, const int *perm, zmlx_array **out);
/** Per-axis start/stop/step (Python semantics for negative start/stop;
 *  step > 0). NULL step means 1 everywhere. */
ZMLX_API zmlx_status zmlx_array_slice(zmlx_array *a, const int64_t *start, const int64_t *stop,
                                      const int64_t *step, zmlx_array **out);
/** Dense C-order copy (a new reference to `a` itself if already dense). */
ZMLX_API zmlx_status zmlx_array_contiguous(zmlx_array *a, zmlx_array **out);
/** Elementwise dtype conversion into a new dense array. */
ZMLX_API zmlx_status zmlx_array_astype(zmlx_array *a, zmlx_dtype dt, zmlx_array **out);
/** Copy to another device (any backend pair, via the host if needed). */
ZMLX_API zmlx_status zmlx_array_to_device(zmlx_array *a, zmlx_device *dev, zmlx_array **out);

/* ------------------------------------------------------------------ DLPack */
/* Zero-copy exchange with PyTorch / CuPy / NumPy / JAX. The tensors are
 * DLManagedTensor* (dlpack.h, v0.6+); passed as void* so this header does not
 * need dlpack.h. CUDA arrays export as kDLCUDA device pointers; OpenCL
 * arrays as kDLOpenCL with data = the cl_mem handle (the DLPack convention).
 * Import of a tensor on the same device is zero-copy and keeps the
 * producer's deleter until the last view is released; kDLCPU tensors are
 * copied onto `dev`. */
ZMLX_API zmlx_status zmlx_array_to_dlpack(zmlx_array *a, void **dl_managed_tensor);
/** Export for a consumer that will read on `consumer` (the DLPack protocol's
 *  stream argument): no wait when that is the calling thread's current stream
 *  (the work that wrote `a` is ordered before the consumer's), else the
 *  current stream is synchronized first, like zmlx_array_to_dlpack. */
ZMLX_API zmlx_status zmlx_array_to_dlpack_on(zmlx_array *a, zmlx_stream *consumer,
                                             void **dl_managed_tensor);
ZMLX_API zmlx_status zmlx_array_from_dlpack(void *dl_managed_tensor, zmlx_device *dev,
                                            zmlx_array **out);

/* ------------------------------ kernel object (never recorded by autograd) */
/* The analog of MLX's mx.fast.metal_kernel: a kernel body in the portable
 * dialect (docs/DIALECT.md); zmlx generates the signature from the names,
 * compiles per backend / dtypes / template arguments, caches in memory and
 * on disk, and launches. */

typedef struct zmlx_kernel zmlx_kernel;

typedef struct zmlx_kernel_desc {
  const char *name;               /* C identifier */
  const char *const *input_names; /* n_inputs identifiers */
  int n_inputs;
  const char *const *output_names;/* n_outputs identifiers, >= 1 */
  int n_outputs;
  const char *source;             /* the body */
  const char *header;             /* optional: helpers placed before the kernel */
  int ensure_row_contiguous;      /* copy strided inputs to dense first */
  int atomic_outputs;             /* outputs are updated with zmlx_atomic_* */
  /* Scalar parameters passed by value at each call (no recompile when the
   * value changes): names, dtypes (F32, F64, I32, U32, I64). */
  const char *const *param_names;
  const zmlx_dtype *param_dtypes;
  int n_params;
} zmlx_kernel_desc;

typedef enum zmlx_template_kind {
  ZMLX_TEMPLATE_DTYPE = 0,
  ZMLX_TEMPLATE_INT,
  ZMLX_TEMPLATE_BOOL
} zmlx_template_kind;

typedef struct zmlx_template_arg {
  const char *name;
  zmlx_template_kind kind;
  zmlx_dtype dtype; /* for DTYPE */
  int64_t value;    /* for INT and BOOL */
} zmlx_template_arg;

typedef struct zmlx_kernel_call {
  int n_inputs;                   /* must equal the kernel's input count */
  int n_outputs;                  /* must equal the kernel's output count */
  zmlx_array *const *inputs;      /* n_inputs arrays */
  /* Outputs: either pass preallocated arrays in `outputs` (dense, on the
   * stream's device) or leave outputs[i] NULL and give shapes + dtypes: the
   * call then allocates and returns new references in outputs[i]. A slot
   * that is not NULL while output_shapes[i] is set is refused (so that a
   * second launch never writes silently into the first one's output). */
  zmlx_array **outputs;           /* n_outputs slots, required */
  const int *output_ndims;        /* used for outputs[i] == NULL */
  const int64_t *const *output_shapes;
  const zmlx_dtype *output_dtypes;
  int64_t grid[3];                /* total threads, as MLX counts */
  int threadgroup[3];
  const zmlx_template_arg *templates;
  int n_templates;
  int has_init_value;             /* fill outputs with init_value first */
  double init_value;
  const double *params;           /* n_params values, converted to each param's dtype */
  size_t dynamic_shared_bytes;    /* bytes behind zmlx_dynamic_shared(T) */
  zmlx_stream *stream;            /* NULL: default stream of inputs' device */
  zmlx_device *device;            /* NULL: the inputs' (or default) device */
} zmlx_kernel_call;

ZMLX_API zmlx_status zmlx_kernel_create(const zmlx_kernel_desc *desc, zmlx_kernel **out);
ZMLX_API zmlx_status zmlx_kernel_destroy(zmlx_kernel *k);
/** Compile (or fetch from cache) and launch. */
ZMLX_API zmlx_status zmlx_kernel_launch(zmlx_kernel *k, zmlx_kernel_call *call);
/** The common case in one call: every output new, with input 0's shape and
 *  dtype; one thread per element of input 0 (grid = its size), threadgroups
 *  of ZMLX_KERNEL_APPLY_THREADS (fewer where the device allows fewer);
 *  `params` as in zmlx_kernel_call (NULL when the kernel has none). Each
 *  outputs[i] must be NULL on entry and gets a new reference. */
#define ZMLX_KERNEL_APPLY_THREADS 256
ZMLX_API zmlx_status zmlx_kernel_apply(zmlx_kernel *k, zmlx_array *const *inputs,
                                       const double *params, zmlx_array **outputs);
/** Full generated source for `backend` (CUDA, OpenCL or Metal) as the call
 *  would compile it; works with no device of that backend. Input dtypes are
 *  taken from call->inputs when given, else from `input_dtypes`. Caller
 *  frees *out with zmlx_free(). */
ZMLX_API zmlx_status zmlx_kernel_source(zmlx_kernel *k, zmlx_backend backend,
                                        const zmlx_kernel_call *call,
                                        const zmlx_dtype *input_dtypes, char **out);
/** Free memory returned by zmlx (strings). */
ZMLX_API void zmlx_free(void *p);

/* ------------------- expression builders (zmlx_op_call is never recorded;
 *                    zmlx_apply, below, runs an op and records it) */
/* Kernels generated from expressions (docs/EXPRESSIONS.md): the text is
 * parsed into a graph — never pasted into kernel source —, differentiated
 * symbolically (VJP and JVP), simplified, and emitted through the codegen
 * patterns as dialect source, cached like any kernel. */

typedef struct zmlx_op zmlx_op;

typedef enum zmlx_op_direction {
  ZMLX_OP_FORWARD = 0,
  ZMLX_OP_VJP,
  ZMLX_OP_JVP
} zmlx_op_direction;

/** Elementwise op from an expression such as "x * sigmoid(x) * y" (1 to 15
 *  inputs, at most 15 parameters). Inputs broadcast with NumPy rules and may
 *  be strided views; parameters are scalars given per call (no recompile).
 *  Everything computes in f32. Output dtype: the widest float input
 *  (bf16 < f16 < f32; f16 with bf16 gives f32), f32 when no input is a
 *  float; f64 inputs are refused. */
ZMLX_API zmlx_status zmlx_elementwise(const char *expr, const char *const *input_names,
                                      int n_inputs, const char *const *param_names,
                                      int n_params, zmlx_op **out);
ZMLX_API zmlx_status zmlx_op_destroy(zmlx_op *op);
/** Forward. *out is a new array with the broadcast shape (elementwise) or
 *  the input shape without its last dimension (reduce). */
ZMLX_API zmlx_status zmlx_op_call(zmlx_op *op, zmlx_array *const *inputs, int n_inputs,
                                  const double *params, zmlx_stream *stream, zmlx_array **out);
/** Vector-Jacobian product: grads[i] (new arrays, the shape and dtype of
 *  inputs[i]; f32 for integer inputs) for the cotangent of the output
 *  (which may broadcast into the output's shape), summed in f32 over
 *  broadcast axes. Elementwise ops only. */
ZMLX_API zmlx_status zmlx_op_vjp(zmlx_op *op, zmlx_array *const *inputs, int n_inputs,
                                 const double *params, zmlx_array *cotangent,
                                 zmlx_stream *stream, zmlx_array **grads);
/** Jacobian-vector product: the output's tangent for input tangents
 *  (tangents[i] broadcastable to inputs[i]; NULL means zero). Elementwise
 *  ops only. */
ZMLX_API zmlx_status zmlx_op_jvp(zmlx_op *op, zmlx_array *const *inputs, int n_inputs,
                                 const double *params, zmlx_array *const *tangents,
                                 zmlx_stream *stream, zmlx_array **out_tangent);
/** The generated source of one direction for a backend and input dtypes
 *  (free with zmlx_free): every kernel the direction may launch, each after
 *  a banner comment (elementwise: the dense kernel, then the broadcast /
 *  strided one). Reductions have only ZMLX_OP_FORWARD. */
ZMLX_API zmlx_status zmlx_op_source(zmlx_op *op, zmlx_backend backend, zmlx_op_direction dir,
                                    const zmlx_dtype *input_dtypes, char **out);

/** A reduction over the last dimension (ZMLX's api.reduce); the result has
 *  the input's shape without its last axis and the input's float dtype (f32
 *  for integers). With a combine, a threadgroup reduces each row and every
 *  thread starts from init, so init must be an identity of combine. */
typedef struct zmlx_reduce_desc {
  const char *init;     /* expression with no inputs: "0", "-inf" */
  const char *map;      /* expression of x applied to each element first; NULL: x */
  const char *update;   /* expression of acc and x: "acc + x" */
  const char *combine;  /* expression of a and b merging partials; NULL: one thread per row */
  const char *finalize; /* expression of acc and n (row length); NULL: acc */
} zmlx_reduce_desc;
ZMLX_API zmlx_status zmlx_reduce(const zmlx_reduce_desc *desc, zmlx_op **out);

/** How zmlx_map_reduce sweeps a row. AUTO (0) is single-pass online when
 *  the desc has the softmax shape (reduce[0] a max from -inf, reduce[1] a
 *  sum from 0 of exp(map0(x) - r0)), else two-pass. */
typedef enum zmlx_map_reduce_strategy {
  ZMLX_MAP_REDUCE_AUTO = 0,
  ZMLX_MAP_REDUCE_TWO_PASS, /* always one sweep per reduction */
  ZMLX_MAP_REDUCE_ONLINE    /* running max + rescaled sum; fails if not the softmax shape */
} zmlx_map_reduce_strategy;

/** Two-pass map-reduce over the last dimension (ZMLX's api.map_reduce; the
 *  softmax / norm shape): up to two chained reductions (the second's map may
 *  use r0, its finalize acc, n and r0), then `write`, an expression of x,
 *  r0, r1 and n, per element. The output has the input's shape. */
typedef struct zmlx_map_reduce_desc {
  zmlx_reduce_desc reduce[2];
  int n_reduce;
  const char *write;
  zmlx_map_reduce_strategy strategy;
} zmlx_map_reduce_desc;
ZMLX_API zmlx_status zmlx_map_reduce(const zmlx_map_reduce_desc *desc, zmlx_op **out);

/* ----------- autograd (the ops below record themselves inside a grad call) */
/* Reverse and forward mode in MLX's spirit (docs/AUTOGRAD.md). A function
 * to differentiate is a C callback from arrays to one array. Inside a grad
 * call, the differentiable ops below (and custom functions) record
 * themselves on a thread-local tape; everything else — zmlx_array_* views,
 * zmlx_array_astype, raw zmlx_kernel_launch, zmlx_op_call — produces
 * constants that gradients do not flow through. Outside a grad call the
 * ops record nothing and cost one thread-local check. Two threads may
 * differentiate at the same time; grad calls nest (grad of grad).
 * Differentiable dtypes are f32, f16 and bf16; a gradient has its input's
 * dtype (sums of 16-bit gradients are kept in f32 until the end).
 *
 * Callbacks get borrowed inputs and return a new reference in *out. */

typedef zmlx_status (*zmlx_ad_fn)(void *user_data, zmlx_array *const *inputs, int n_inputs,
                                  zmlx_array **out);

/** Call fn(inputs) (its output must have one element) and differentiate
 *  it with respect to inputs[argnums[0..n_argnums)] (argnums NULL: every
 *  input). *value (may be NULL) gets the output, grads[k] the gradient of
 *  input argnums[k] (new references, the input's shape and dtype). When fn
 *  fails its status comes back and no tape is left behind. */
ZMLX_API zmlx_status zmlx_value_and_grad(zmlx_ad_fn fn, void *user_data,
                                         zmlx_array *const *inputs, int n_inputs,
                                         const int *argnums, int n_argnums, zmlx_array **value,
                                         zmlx_array **grads);
/** zmlx_value_and_grad without the value. */
ZMLX_API zmlx_status zmlx_grad(zmlx_ad_fn fn, void *user_data, zmlx_array *const *inputs,
                               int n_inputs, const int *argnums, int n_argnums,
                               zmlx_array **grads);
/** Vector-Jacobian product for any output shape: *out = fn(inputs), and
 *  grads[k] = cotangent^T d out / d inputs[argnums[k]]. */
ZMLX_API zmlx_status zmlx_vjp(zmlx_ad_fn fn, void *user_data, zmlx_array *const *inputs,
                              int n_inputs, const int *argnums, int n_argnums,
                              zmlx_array *cotangent, zmlx_array **out, zmlx_array **grads);
/** Forward mode: *out = fn(primals) and *out_tangent = its directional
 *  derivative along tangents (tangents[i] NULL, or tangents NULL: zero). */
ZMLX_API zmlx_status zmlx_jvp(zmlx_ad_fn fn, void *user_data, zmlx_array *const *primals,
                              zmlx_array *const *tangents, int n, zmlx_array **out,
                              zmlx_array **out_tangent);
/** A new handle on the same elements that gradients do not flow through. */
ZMLX_API zmlx_status zmlx_stop_gradient(zmlx_array *a, zmlx_array **out);
/** 1 while differentiable ops on this thread are being recorded. */
ZMLX_API int zmlx_grad_is_recording(void);

/* Custom functions (MLX's mx.custom_function): a forward plus its VJP and
 * optional JVP, each free to launch any kernels. Inside a grad call the
 * call is recorded as one node that keeps the inputs and outputs; the
 * forward itself is not recorded. Cotangents and tangents handed to the
 * callbacks are always arrays (zeros where nothing flows). A gradient may
 * be left NULL (zero) and may have a broadcast shape of its input: it is
 * summed down and cast to the input's dtype. For grad of grad, write the
 * VJP with differentiable ops (then it is recorded like any code). */
typedef struct zmlx_custom_function zmlx_custom_function;
typedef zmlx_status (*zmlx_custom_forward_fn)(void *user_data, zmlx_array *const *inputs,
                                              int n_inputs, zmlx_array **outputs,
                                              int n_outputs);
typedef zmlx_status (*zmlx_custom_vjp_fn)(void *user_data, zmlx_array *const *inputs,
                                          int n_inputs, zmlx_array *const *outputs,
                                          zmlx_array *const *cotangents, int n_outputs,
                                          zmlx_array **grads /* n_inputs */);
typedef zmlx_status (*zmlx_custom_jvp_fn)(void *user_data, zmlx_array *const *inputs,
                                          int n_inputs, zmlx_array *const *tangents,
                                          int n_outputs, zmlx_array **out_tangents);

/** forward and vjp are required; jvp may be NULL (then zmlx_jvp through the
 *  function fails with ZMLX_ERR_UNSUPPORTED). user_data must outlive every
 *  grad call that uses the function. */
ZMLX_API zmlx_status zmlx_custom_function_create(zmlx_custom_forward_fn forward,
                                                 zmlx_custom_vjp_fn vjp, zmlx_custom_jvp_fn jvp,
                                                 void *user_data, zmlx_custom_function **out);
/** outputs[0..n_outputs) receive new references. */
ZMLX_API zmlx_status zmlx_custom_function_call(zmlx_custom_function *fn,
                                               zmlx_array *const *inputs, int n_inputs,
                                               zmlx_array **outputs, int n_outputs);
/** Safe while a grad call that recorded the function is still running. */
ZMLX_API zmlx_status zmlx_custom_function_destroy(zmlx_custom_function *fn);

/* Differentiable ops. Each returns a new array and records itself inside a
 * grad call. Binary ops broadcast with NumPy rules; gradients are summed
 * back over broadcast axes. */

/** A zmlx_elementwise op, differentiably (its engine-derived VJP / JVP, to
 *  any order). The op must outlive the grad call. */
ZMLX_API zmlx_status zmlx_apply(zmlx_op *op, zmlx_array *const *inputs, int n_inputs,
                                const double *params, zmlx_array **out);
/** Elementwise expression applied differentiably to any order, e.g.
 *  zmlx_apply_expr("tanh(x) * y", names, inputs, 2, NULL, NULL, 0, &out).
 *  The op is compiled once per (text, names) and cached for the process. */
ZMLX_API zmlx_status zmlx_apply_expr(const char *expr, const char *const *input_names,
                                     zmlx_array *const *inputs, int n_inputs,
                                     const char *const *param_names, const double *params,
                                     int n_params, zmlx_array **out);
ZMLX_API zmlx_status zmlx_add(zmlx_array *a, zmlx_array *b, zmlx_array **out);
ZMLX_API zmlx_status zmlx_sub(zmlx_array *a, zmlx_array *b, zmlx_array **out);
ZMLX_API zmlx_status zmlx_mul(zmlx_array *a, zmlx_array *b, zmlx_array **out);
ZMLX_API zmlx_status zmlx_div(zmlx_array *a, zmlx_array *b, zmlx_array **out);
/** Sum over axes (negative counts from the end; axes NULL: all axes),
 *  keeping them as size 1 when keepdims. f32 accumulation. */
ZMLX_API zmlx_status zmlx_sum(zmlx_array *a, const int *axes, int n_axes, int keepdims,
                              zmlx_array **out);
ZMLX_API zmlx_status zmlx_mean(zmlx_array *a, const int *axes, int n_axes, int keepdims,
                               zmlx_array **out);
/* Shape ops with the semantics of the zmlx_array_* functions, recorded. */
ZMLX_API zmlx_status zmlx_reshape(zmlx_array *a, int ndim, const int64_t *shape,
                                  zmlx_array **out);
ZMLX_API zmlx_status zmlx_transpose(zmlx_array *a, const int *perm, zmlx_array **out);
ZMLX_API zmlx_status zmlx_slice(zmlx_array *a, const int64_t *start, const int64_t *stop,
                                const int64_t *step, zmlx_array **out);
/** Join arrays of equal shape but along `axis` (negative from the end). */
ZMLX_API zmlx_status zmlx_concat(zmlx_array *const *arrays, int n, int axis, zmlx_array **out);
/** Materialised NumPy broadcast of `a` to `shape`. */
ZMLX_API zmlx_status zmlx_broadcast_to(zmlx_array *a, int ndim, const int64_t *shape,
                                       zmlx_array **out);
/** Dtype conversion (the gradient converts back). */
ZMLX_API zmlx_status zmlx_astype(zmlx_array *a, zmlx_dtype dt, zmlx_array **out);
/** a [..., M, K] @ b [..., K, N] -> [..., M, N]; batch axes broadcast. */
ZMLX_API zmlx_status zmlx_matmul(zmlx_array *a, zmlx_array *b, zmlx_array **out);

/** The GEMM behind zmlx_matmul and its gradients: out = a @ b for a
 *  [B..., M, K] and b [B..., K, N] with the same batch shape (any strides,
 *  including transposed views and stride-0 batch axes), into the dense,
 *  preallocated out [B..., M, N] of out's dtype, on out's device, in
 *  stream order of the default stream. */
typedef zmlx_status (*zmlx_gemm_fn)(void *ctx, zmlx_array *a, zmlx_array *b, zmlx_array *out);
/** Route every matmul through `fn` (NULL: the built-in dialect kernel). */
ZMLX_API zmlx_status zmlx_set_gemm(zmlx_gemm_fn fn, void *ctx);

/* Gradient checker: the analytic VJP (every float input) and JVP (one
 * random direction) against central finite differences in f64 on the host.
 * fn must return one element. Each input element x is perturbed to x ± eps
 * (rounded to the input's dtype; the actual step is used), uploaded, and fn
 * evaluated. An element passes when |analytic - numeric| <= tol * max(1,
 * |numeric|). Costs 2 evaluations per element: for small inputs. */
#define ZMLX_GRAD_CHECK_MAX_INPUTS 16

typedef struct zmlx_grad_check_input {
  int checked;          /* 0 for non-float inputs (not differentiable) */
  double max_abs_err;   /* max |analytic - numeric| */
  double max_rel_err;   /* max |analytic - numeric| / max(|numeric|, 1e-12) */
  int64_t worst_index;  /* flat index of the largest scaled error */
  double analytic, numeric; /* the two values there */
  int passed;
} zmlx_grad_check_input;

typedef struct zmlx_grad_check_report {
  int n_inputs;
  zmlx_grad_check_input inputs[ZMLX_GRAD_CHECK_MAX_INPUTS];
  int jvp_checked;      /* 0 when some op on the path has no forward rule */
  /* the JVP along a fixed direction v; the finite-difference gradients'
   * directional derivative; |JVP - the analytic gradients' one| */
  double jvp_analytic, jvp_numeric, jvp_abs_err;
  int jvp_passed;       /* both within bounds (src/autograd/check.c says which) */
  int passed;           /* every checked input and the JVP */
} zmlx_grad_check_report;

/** ZMLX_OK when the check ran (read report->passed); an error when fn or
 *  the differentiation failed. eps <= 0 picks 1e-3; tol <= 0 picks 1e-2. */
ZMLX_API zmlx_status zmlx_check_grad(zmlx_ad_fn fn, void *user_data, zmlx_array *const *inputs,
                                     int n_inputs, double eps, double tol,
                                     zmlx_grad_check_report *report);

/* ------------------------------------------------------ catalog: RoPE and GLU */
/* Differentiable (recorded inside a grad call, gradients to any order);
 * f32, f16 and bf16; each returns a new array of its input's dtype. */

typedef enum zmlx_rope_mode {
  ZMLX_ROPE_HALF_SPLIT = 0, /* NeoX / Llama: pairs (i, i + R/2) */
  ZMLX_ROPE_INTERLEAVED = 1 /* GPT-J / "traditional": pairs (2i, 2i + 1) */
} zmlx_rope_mode;

typedef enum zmlx_rope_layout {
  ZMLX_ROPE_BSHD = 0, /* [batch, seq, heads, head_dim] */
  ZMLX_ROPE_BHSD = 1  /* [batch, heads, seq, head_dim] */
} zmlx_rope_layout;

typedef struct zmlx_rope_opts {
  zmlx_rope_mode mode;
  zmlx_rope_layout layout;
  int rotary_dims;   /* R: even, <= head_dim; 0 = head_dim. Dims R.. pass through */
  double base;       /* 0: 10000 */
  double scale;      /* positions are multiplied by it; 0: 1 */
  /* NULL, or i32 [batch]: the position of sequence index 0 per sequence. */
  zmlx_array *offsets;
  /* Both NULL (angles computed in-kernel: position * scale * base^(-2i/R)),
   * or both f32 [max_pos, R/2] tables indexed by position (base and scale
   * are then unused; positions past the table clamp to its last row).
   * Tables are constants: no gradient flows into them. */
  zmlx_array *cos, *sin;
  /* NULL, or i32 [batch, seq]: each token's own position (Hugging Face's
   * position_ids: left padding, packed sequences), in place of offsets
   * (give one or neither). */
  zmlx_array *positions;
} zmlx_rope_opts;

/** Rotary embedding of x (4-D, opts->layout). opts NULL: half-split, full
 *  head_dim, base 10000, BSHD. The VJP is the inverse rotation. */
ZMLX_API zmlx_status zmlx_rope(zmlx_array *x, const zmlx_rope_opts *opts, zmlx_array **out);
/** q and k with the same batch, seq and head_dim but any head counts (GQA),
 *  rotated with the same positions in one call. */
ZMLX_API zmlx_status zmlx_rope_qk(zmlx_array *q, zmlx_array *k, const zmlx_rope_opts *opts,
                                  zmlx_array **q_out, zmlx_array **k_out);

/** silu(gate) * up / gelu(gate) * up (approximate != 0: gelu_tanh); same shapes. */
ZMLX_API zmlx_status zmlx_swiglu(zmlx_array *gate, zmlx_array *up, zmlx_array **out);
ZMLX_API zmlx_status zmlx_geglu(zmlx_array *gate, zmlx_array *up, int approximate,
                                zmlx_array **out);
/** One input [..., 2F] split in halves along the last dim: gate = first
 *  half, up = second half; out [..., F]. */
ZMLX_API zmlx_status zmlx_swiglu_split(zmlx_array *x, zmlx_array **out);
ZMLX_API zmlx_status zmlx_geglu_split(zmlx_array *x, int approximate, zmlx_array **out);
/** gelu(x + bias) / silu(x + bias), bias [last dim of x]. */
ZMLX_API zmlx_status zmlx_bias_gelu(zmlx_array *x, zmlx_array *bias, int approximate,
                                    zmlx_array **out);
ZMLX_API zmlx_status zmlx_bias_silu(zmlx_array *x, zmlx_array *bias, zmlx_array **out);
/** x [..., 2F], bias [2F]: silu(x1 + b1) * (x2 + b2) over the halves; out [..., F]. */
ZMLX_API zmlx_status zmlx_bias_swiglu(zmlx_array *x, zmlx_array *bias, zmlx_array **out);
/** Inverted dropout: element i (C order) is zeroed with probability p, else
 *  scaled by 1 / (1 - p). The mask is Philox-4x32-10 (the RNG of
 *  zmlx_array_random_uniform) with key seed and counter (i / 4, 0):
 *  element i is kept when the top 24 bits of word i % 4 are >=
 *  round(p * 2^24) — so it is the same on every backend. 0 <= p < 1. The
 *  gradient is the same mask, scaled. */
ZMLX_API zmlx_status zmlx_dropout(zmlx_array *x, double p, uint64_t seed, zmlx_array **out);

/* ---------------------------------------------------------- catalog: norms */
/* Normalization over the last dimension of x (any rank >= 1; f32, f16 or
 * bf16), one threadgroup per row with f32 accumulation; the result has x's
 * shape and dtype. Weights are 1-D of the last dim's length, f32/f16/bf16
 * (they need not match x's dtype); NULL means none. Differentiable (first
 * order; no forward mode) with respect to x, r and the weights: weight and
 * bias gradients are column sums done in two stages, without atomics.
 *   rmsnorm:   y = x * rsqrt(mean(x^2) + eps) [* w]
 *   layernorm: y = (x - mean(x)) * rsqrt(var(x) + eps) [* g] [+ b]
 * The fused residual forms compute h = x + r (r: x's shape and dtype; h
 * rounded to the dtype, as an unfused add would store it) and return
 * (normed = norm(h), sum = h). */
ZMLX_API zmlx_status zmlx_rmsnorm(zmlx_array *x, zmlx_array *w, double eps, zmlx_array **out);
ZMLX_API zmlx_status zmlx_layernorm(zmlx_array *x, zmlx_array *g, zmlx_array *b, double eps,
                                    zmlx_array **out);
ZMLX_API zmlx_status zmlx_add_rmsnorm(zmlx_array *x, zmlx_array *r, zmlx_array *w, double eps,
                                      zmlx_array **normed, zmlx_array **sum);
ZMLX_API zmlx_status zmlx_add_layernorm(zmlx_array *x, zmlx_array *r, zmlx_array *g,
                                        zmlx_array *b, double eps, zmlx_array **normed,
                                        zmlx_array **sum);

/* ------------------------------- catalog: softmax family and cross-entropy */
/* Over the last dimension, one threadgroup per row, f32 accumulation.
 * Inputs are f32, f16 or bf16 (strided views are made dense first); the
 * result has x's dtype. Each op is differentiable (VJP; JVP where noted)
 * and records itself inside a grad call like the ops above. Errors:
 * ZMLX_ERR_DTYPE (dtype), ZMLX_ERR_SHAPE (rank 0, last dim 0, mask shape),
 * ZMLX_ERR_INVALID_ARG (values), each with a message naming the problem. */

/** softmax(x) over the last axis (VJP and JVP). */
ZMLX_API zmlx_status zmlx_softmax(zmlx_array *x, zmlx_array **out);
/** log_softmax(x) over the last axis (VJP and JVP). */
ZMLX_API zmlx_status zmlx_log_softmax(zmlx_array *x, zmlx_array **out);
/** log(sum(exp(x))) over the last axis: x's shape without its last axis
 *  (VJP and JVP). */
ZMLX_API zmlx_status zmlx_logsumexp(zmlx_array *x, zmlx_array **out);
/** softmax(scale * x + mask) over the last axis. mask (NULL: none) is an
 *  additive f32/f16/bf16 mask (-inf drops an element; differentiable) or a
 *  bool mask (0 drops an element); its shape is a trailing part of x's
 *  (e.g. [queries, keys] for x [batch, heads, queries, keys]; leading
 *  axes of size 1 broadcast). causal (x of rank >= 2, [..., Sq, Sk]) also
 *  drops key k > q + (Sk - Sq) for query q (bottom-right aligned: the
 *  lower triangle when Sq == Sk). A row with every element dropped is 0.
 *  VJP and JVP in x and in an additive mask. */
ZMLX_API zmlx_status zmlx_softmax_masked(zmlx_array *x, zmlx_array *mask, double scale,
                                         int causal, zmlx_array **out);

typedef enum zmlx_ce_reduction {
  ZMLX_CE_MEAN = 0, /* sum over rows / number of rows not ignored (0 if none) */
  ZMLX_CE_SUM
} zmlx_ce_reduction;

typedef struct zmlx_cross_entropy_opts {
  int64_t ignore_index;   /* rows with this target add 0 (PyTorch: -100) */
  double label_smoothing; /* in [0, 1]: target = (1 - s) onehot + s / vocab */
  zmlx_ce_reduction reduction;
  /* 0 (default): targets are not read on the host, so the call never waits
   * for the device; a target outside [0, vocab) that is not ignore_index
   * makes the loss NaN (and its gradient row NaN). 1: the targets are
   * downloaded and checked first (a device sync), and such a target is
   * ZMLX_ERR_INVALID_ARG naming its row. */
  int check_targets;
} zmlx_cross_entropy_opts;

/** Softmax cross-entropy of logits [..., vocab] (f32/f16/bf16) against
 *  targets [...] (i32 or i64 class indices; see check_targets).
 *  opts NULL: ignore_index -100, no smoothing, mean, unchecked targets.
 *  *loss: an f32 scalar; the mean's divisor (targets not ignored) is
 *  counted on the device.
 *  Fused forward + backward: with grad_logits non-NULL (or inside a grad
 *  call) the same kernel also writes d loss / d logits (logits' dtype),
 *  so backward costs no second pass; probabilities are never stored, so
 *  any vocabulary size works. Differentiable in logits (VJP and JVP). */
ZMLX_API zmlx_status zmlx_cross_entropy(zmlx_array *logits, zmlx_array *targets,
                                        const zmlx_cross_entropy_opts *opts, zmlx_array **loss,
                                        zmlx_array **grad_logits);

/* ------------------------------------------------------ catalog: attention */
/* Scaled dot-product attention, softmax(scale q k^T + mask) v, per batch
 * and query head, without storing the [q_len, kv_len] scores (a flash-style
 * kernel with an online softmax; f32 statistics). GQA / MQA: kv heads must
 * divide q heads, query head h reads kv head h / (q_heads / kv_heads).
 * Differentiable in q, k, v and an additive mask (first order: the
 * backward recomputes the scores from the row logsumexp, as
 * FlashAttention-2 does). A fully masked query row gives 0 and lse -inf. */
typedef enum zmlx_attention_layout {
  ZMLX_ATTN_BHSD = 0, /* [batch, heads, seq, head_dim] */
  ZMLX_ATTN_BSHD = 1  /* [batch, seq, heads, head_dim] */
} zmlx_attention_layout;

#define ZMLX_ATTENTION_MAX_HEAD_DIM 256

typedef struct zmlx_attention_opts {
  size_t struct_size;           /* sizeof(zmlx_attention_opts), or 0 (this header's size) */
  zmlx_attention_layout layout; /* of q, k, v and the output */
  int causal;                   /* key j is visible to query i when j <= i + kv_len - q_len */
  double scale;                 /* 0: 1 / sqrt(head_dim) */
  /* NULL, or added to the scores (f32 / f16 / bf16; -inf drops a key) or
   * bool (nonzero keeps a key): [q_len, kv_len], [heads or 1, q_len,
   * kv_len] or [batch or 1, heads or 1, q_len, kv_len]. */
  zmlx_array *mask;
} zmlx_attention_opts;

/** q [B, Hq, Sq, D], k and v [B, Hkv, Sk, D] (or the BSHD layout), one
 *  dtype (f32, f16, bf16), D <= ZMLX_ATTENTION_MAX_HEAD_DIM. opts NULL:
 *  BHSD, no mask, not causal, scale 1/sqrt(D). *out: q's shape and dtype;
 *  *lse (may be NULL): [B, Hq, Sq] f32, the log-sum-exp of each row's
 *  scaled, masked scores (differentiable too). */
ZMLX_API zmlx_status zmlx_attention(zmlx_array *q, zmlx_array *k, zmlx_array *v,
                                    const zmlx_attention_opts *opts, zmlx_array **out,
                                    zmlx_array **lse);

/* ---------------------------------------------------------- KV block cache */
/* Keys and values of every layer in fixed-size blocks (vLLM's layout:
 * [layers, blocks, block_size, kv_heads, head_dim] each), a free list of
 * blocks, a block table per sequence, fork with reference counts and
 * copy-on-write. Extending, writing and forking either succeed or change
 * nothing (out of blocks: ZMLX_ERR_OUT_OF_MEMORY). Not thread-safe: one
 * thread (or a lock) per cache. */
typedef struct zmlx_kv_cache zmlx_kv_cache;

typedef struct zmlx_kv_cache_desc {
  size_t struct_size;   /* sizeof(zmlx_kv_cache_desc), or 0 (this header's size) */
  int layers, kv_heads, head_dim;
  int block_size;       /* tokens per block: 8, 16 or 32 */
  int64_t num_blocks;   /* blocks in the pool, shared by every sequence */
  zmlx_dtype dtype;     /* f32, f16 or bf16 */
  zmlx_device *device;  /* NULL: the default device */
} zmlx_kv_cache_desc;

ZMLX_API zmlx_status zmlx_kv_cache_create(const zmlx_kv_cache_desc *desc, zmlx_kv_cache **out);
/** NULL is accepted. */
ZMLX_API zmlx_status zmlx_kv_cache_destroy(zmlx_kv_cache *cache);
/** A new empty sequence; *seq is its id (ids are never reused). */
ZMLX_API zmlx_status zmlx_kv_cache_add_sequence(zmlx_kv_cache *cache, int64_t *seq);
/** Room for n more tokens of seq in every layer (positions len .. len + n
 *  - 1, written next with zmlx_kv_cache_write). */
ZMLX_API zmlx_status zmlx_kv_cache_extend(zmlx_kv_cache *cache, int64_t seq, int64_t n);
/** k and v [n, kv_heads, head_dim] (f32 / f16 / bf16, converted) written
 *  at positions [start, start + n) of seq in `layer`; a block the sequence
 *  shares with a fork is copied first (copy-on-write). */
ZMLX_API zmlx_status zmlx_kv_cache_write(zmlx_kv_cache *cache, int64_t seq, int layer,
                                         int64_t start, zmlx_array *k, zmlx_array *v);
/** A new sequence sharing every block of seq (its prefix) until either
 *  writes into a shared block. */
ZMLX_API zmlx_status zmlx_kv_cache_fork(zmlx_kv_cache *cache, int64_t seq, int64_t *child);
/** Drop seq: its blocks return to the free list when no fork holds them. */
ZMLX_API zmlx_status zmlx_kv_cache_free_sequence(zmlx_kv_cache *cache, int64_t seq);
/** seq's keys and values in `layer`, gathered through its block table into
 *  new dense arrays [len, kv_heads, head_dim] of the cache's dtype. */
ZMLX_API zmlx_status zmlx_kv_cache_read(zmlx_kv_cache *cache, int64_t seq, int layer,
                                        zmlx_array **k, zmlx_array **v);
ZMLX_API zmlx_status zmlx_kv_cache_length(const zmlx_kv_cache *cache, int64_t seq, int64_t *len);
/** zmlx_kv_cache_write with RoPE fused in (one kernel): k is rotated at
 *  positions start .. start + n - 1 of seq before it is written, and the
 *  step's queries q [n, q_heads, head_dim] come back rotated the same way
 *  in *q_out (a new array of q's dtype). rope: mode, rotary_dims, base,
 *  scale as for zmlx_rope (NULL: half-split over the whole head_dim, base
 *  10000); the positions come from `start`, so offsets and tables are not
 *  taken. */
ZMLX_API zmlx_status zmlx_kv_cache_write_rope(zmlx_kv_cache *cache, int64_t seq, int layer,
                                              int64_t start, zmlx_array *k, zmlx_array *v,
                                              zmlx_array *q, const zmlx_rope_opts *rope,
                                              zmlx_array **q_out);
/** A decode step's fused RoPE + cache write for a batch, in one launch: row
 *  i of k, v [batch, kv_heads, head_dim] and q [batch, q_heads, head_dim]
 *  is sequence seqs[i]'s new token, at that sequence's last position (its
 *  length - 1: zmlx_kv_cache_extend it by one first). Each k row is rotated
 *  at its own position and written with its v row to `layer`; *q_out gets
 *  q rotated the same way (q's shape and dtype). What zmlx_kv_cache_write_rope
 *  of each row would do, without a call (and a block-table upload) per
 *  sequence. The sequences must be distinct and non-empty; rope as there. */
ZMLX_API zmlx_status zmlx_kv_cache_write_rope_step(zmlx_kv_cache *cache, int layer,
                                                   const int64_t *seqs, int64_t batch,
                                                   zmlx_array *k, zmlx_array *v, zmlx_array *q,
                                                   const zmlx_rope_opts *rope,
                                                   zmlx_array **q_out);
/** PagedAttention decode: one query token per sequence, q [batch, q_heads,
 *  head_dim] (q_heads a multiple of the cache's kv_heads; f32 / f16 /
 *  bf16), against the whole context of sequence seqs[i] in `layer`, read
 *  through its block table; scale 0 means 1 / sqrt(head_dim). Or several:
 *  q [batch, T, q_heads, head_dim] holds each sequence's last T tokens
 *  (already written; speculative decoding, chunked prefill), token t
 *  attending causally to the first length - (T - 1 - t) positions. *out:
 *  q's shape and dtype (0 for a token with no context). */
ZMLX_API zmlx_status zmlx_kv_cache_attention(zmlx_kv_cache *cache, int layer, zmlx_array *q,
                                             const int64_t *seqs, double scale, zmlx_array **out);
/** Blocks free and held (either may be NULL). */
ZMLX_API zmlx_status zmlx_kv_cache_stats(const zmlx_kv_cache *cache, int64_t *free_blocks,
                                         int64_t *used_blocks);

/* ------------------------------------------------------------- embedding */
/** Rows of a table: *out [..., D] = table[ids[...]] for table [V, D] (f32,
 *  f16, bf16) and ids of any shape (i32 or i64). An id outside [0, V)
 *  gives a zero row and no gradient (ids are not read on the host, so the
 *  call never waits for the device). Differentiable in table: the gradient
 *  groups the tokens by id on the device and sums each row's cotangents in
 *  token order (no atomics: the same bits on every run). (src/nn/embedding.c) */
ZMLX_API zmlx_status zmlx_embedding(zmlx_array *table, zmlx_array *ids, zmlx_array **out);

/* ----------------------------------------------------- mixture of experts */
/* Gating, dispatch and SwiGLU experts (src/nn/moe.c). Pairs: token t's
 * j-th choice is pair t k + j. Every kernel sums in a fixed order (no
 * atomics): results are the same bits on every run. */
#define ZMLX_MOE_MAX_K 8

typedef enum zmlx_moe_scoring {
  ZMLX_MOE_SOFTMAX_TOPK = 0, /* softmax over all experts, keep the top k probabilities */
  ZMLX_MOE_TOPK_SOFTMAX = 1, /* top k logits, softmax over those k (Mixtral) */
  ZMLX_MOE_SIGMOID = 2       /* sigmoid scores (DeepSeek-V3; with bias and renormalize) */
} zmlx_moe_scoring;

typedef struct zmlx_moe_gate_opts {
  size_t struct_size;        /* sizeof(zmlx_moe_gate_opts), or 0 (this header's size) */
  int k;                     /* experts per token, 1 .. ZMLX_MOE_MAX_K; 0: 2 */
  zmlx_moe_scoring scoring;
  int renormalize;           /* divide the chosen weights by their sum */
  double scaling;            /* weights times this (routed_scaling_factor); 0: 1 */
  /* NULL or [experts] (float): added to the scores to choose the experts,
   * never to the weights (DeepSeek-V3's e_score_correction_bias). */
  zmlx_array *bias;
} zmlx_moe_gate_opts;

/** logits [tokens, experts] (f32 / f16 / bf16) -> *weights [tokens, k]
 *  f32 and *indices [tokens, k] i32, the chosen experts by descending
 *  score; ties go to the lower expert index, a NaN score is never chosen
 *  before a number. One kernel. Differentiable in logits (through the
 *  weights; the choice itself is piecewise constant). */
ZMLX_API zmlx_status zmlx_moe_gate(zmlx_array *logits, const zmlx_moe_gate_opts *opts,
                                   zmlx_array **weights, zmlx_array **indices);
/** Groups the pairs of indices [tokens, k] (i32) by expert on the device,
 *  stably (pairs of an expert keep their order), with no host sync:
 *  *offsets [experts + 1] i32 (expert e's pairs sit at [offsets[e],
 *  offsets[e + 1]) of the grouping), *order [pairs] i32 (the pair at each
 *  grouped position), *slot [pairs] i32 (each pair's position; -1 for an
 *  index outside [0, experts), which no expert takes). */
ZMLX_API zmlx_status zmlx_moe_dispatch(zmlx_array *indices, int experts, zmlx_array **offsets,
                                       zmlx_array **order, zmlx_array **slot);
/** x [tokens, hidden] (float) gathered into dispatch order: *out [tokens
 *  x k, hidden], row q = x[order[q] / k] (0 where no pair lands). order and
 *  slot: zmlx_moe_dispatch's (slot serves the backward). Differentiable in
 *  x. With zmlx_moe_combine, for experts computed by other means (a library
 *  GEMM per expert over offsets). */
ZMLX_API zmlx_status zmlx_moe_permute(zmlx_array *x, zmlx_array *order, zmlx_array *slot, int k,
                                      zmlx_array **out);
/** Rows y [tokens x k, hidden] in dispatch order back to token order,
 *  weighted: out[t] = sum_j weights[t, j] y[slot[t k + j]] ([tokens,
 *  hidden], y's dtype; a slot of -1 adds nothing). Differentiable in y and
 *  weights. */
ZMLX_API zmlx_status zmlx_moe_combine(zmlx_array *y, zmlx_array *weights, zmlx_array *order,
                                      zmlx_array *slot, zmlx_array **out);
/** SwiGLU experts over the routed pairs, combined back per token:
 *  out[t] = sum_j weights[t, j] w2[e] (silu(w1[e] x[t]) * (w3[e] x[t])),
 *  e = indices[t, j]. x [tokens, hidden]; weights [tokens, k] (float),
 *  indices [tokens, k] i32 (zmlx_moe_gate's); w1, w3 [experts, inter,
 *  hidden], w2 [experts, hidden, inter]; *out: x's shape and dtype. Each
 *  pair reads its expert's rows once (the decode path: a few tokens read
 *  only their chosen experts' weights), f32 accumulation. Differentiable
 *  in x, weights, w1, w3, w2 (the weight gradients sum each expert's pairs
 *  in dispatch order). */
ZMLX_API zmlx_status zmlx_moe_experts(zmlx_array *x, zmlx_array *weights, zmlx_array *indices,
                                      zmlx_array *w1, zmlx_array *w3, zmlx_array *w2,
                                      zmlx_array **out);

/* An expert weight in one of the catalog's quantized formats (see
 * "catalog: quantization"), over its last axis (cols). */
typedef struct zmlx_moe_qweight {
  zmlx_array *q;      /* int8: i8 [experts, rows, cols]; int4: u8 [experts, rows, cols / 2] */
  zmlx_array *scales; /* int8: [experts, rows]; int4: [experts, rows, cols / group_size] */
  zmlx_array *biases; /* int4: scales' shape; int8: NULL */
  int bits;           /* 8 or 4 */
  int group_size;     /* int4: 32, 64 or 128 */
} zmlx_moe_qweight;

/** zmlx_moe_experts on quantized expert weights (w1, w3: rows inter, cols
 *  hidden; w2: rows hidden, cols inter; one format for the three),
 *  dequantized in the kernels as they are read (each chosen weight byte
 *  read once per pair: the quantized decode path). Inference only: inside
 *  a grad call with x or weights tracked it returns ZMLX_ERR_UNSUPPORTED. */
ZMLX_API zmlx_status zmlx_moe_experts_quantized(zmlx_array *x, zmlx_array *weights,
                                                zmlx_array *indices, const zmlx_moe_qweight *w1,
                                                const zmlx_moe_qweight *w3,
                                                const zmlx_moe_qweight *w2, zmlx_array **out);

typedef struct zmlx_moe_opts {
  size_t struct_size;       /* sizeof(zmlx_moe_opts), or 0 (this header's size) */
  zmlx_moe_gate_opts gate;
  /* Optional shared expert, all three or none: shared_w1, shared_w3
   * [inter_s, hidden], shared_w2 [hidden, inter_s]. */
  zmlx_array *shared_w1, *shared_w3, *shared_w2;
} zmlx_moe_opts;

/** The MoE layer: logits = x router^T (router [experts, hidden]), gate,
 *  experts, + the shared expert's SwiGLU MLP. Differentiable in x, router
 *  and every weight. */
ZMLX_API zmlx_status zmlx_moe(zmlx_array *x, zmlx_array *router, zmlx_array *w1, zmlx_array *w3,
                              zmlx_array *w2, const zmlx_moe_opts *opts, zmlx_array **out);

/* ---------------------------------------------------------------- layers */
/* The building blocks of a model as objects that own their parameters
 * (src/nn/layer.c), in the functional style of autograd: a layer's forward
 * takes the parameter arrays to use (NULL: its own; inside a grad call pass
 * the arrays being differentiated), so zmlx_value_and_grad over a layer's
 * parameters trains it. zmlx_lm is these blocks stacked, and runs the same
 * code. Weights multiply from the right (y = x @ w, w [in, out]); a kind
 * reads only the config fields its comment names. */
typedef enum zmlx_layer_kind {
  ZMLX_LAYER_EMBEDDING = 1, /* vocab, dim: ids (i32 / i64, any shape) -> [..., dim] */
  ZMLX_LAYER_LINEAR = 2,    /* in_features, out_features, bias: [..., in] -> [..., out] */
  ZMLX_LAYER_RMSNORM = 3,   /* dim, norm_eps: [..., dim] -> [..., dim] */
  /* dim, heads, kv_heads, rope_base: x [batch, seq, dim] -> [batch, seq,
   * dim]; q, k, v projections, RoPE (half-split, positions 0 ..), causal
   * GQA flash attention (scale 1 / sqrt(head_dim)), output projection */
  ZMLX_LAYER_ATTENTION = 4,
  ZMLX_LAYER_MLP = 5,       /* dim, ffn_dim: SwiGLU, w2 (silu(x w1) * (x w3)), [..., dim] */
  /* dim, ffn_dim, experts, top_k: softmax top-k gating (renormalised) over
   * SwiGLU experts (zmlx_moe), [..., dim] -> [..., dim] */
  ZMLX_LAYER_MOE = 6,
  /* a pre-norm transformer block, x [batch, seq, dim]: x + attention(
   * rmsnorm(x)), then + feed-forward(rmsnorm(.)), the feed-forward an MoE
   * when experts > 0, else an MLP */
  ZMLX_LAYER_BLOCK = 7
} zmlx_layer_kind;

typedef struct zmlx_layer_config {
  size_t struct_size;       /* sizeof(zmlx_layer_config), or 0 (this header's size) */
  zmlx_layer_kind kind;
  int64_t dim;              /* model width (embedding: the vector size) */
  int64_t vocab;            /* embedding rows */
  int64_t in_features, out_features;
  int bias;                 /* linear: add a bias [out_features] (initialised to 0) */
  int heads, kv_heads;      /* kv_heads divides heads (0: heads); head_dim = dim / heads, even */
  int64_t ffn_dim;          /* the MLP's (each expert's) inner width */
  int experts, top_k;       /* top_k 0: 2 */
  double rope_base;         /* 0: 10000 */
  double norm_eps;          /* 0: 1e-5 */
  /* weights ~ normal(0, init_std); 0: 1 / sqrt(in_features) for a linear
   * layer, 1 for an embedding, 0.02 otherwise. out_std (0: init_std) for
   * the projections that end a residual branch (wo, w2). Norms start at 1. */
  double init_std, out_std;
  uint64_t seed;            /* of the initial weights */
  zmlx_dtype dtype;         /* f32, f16 or bf16; 0 (a zeroed config): f32 */
  zmlx_device *device;      /* NULL: the default device */
} zmlx_layer_config;

typedef struct zmlx_layer zmlx_layer;
/** A layer of cfg->kind with freshly initialised parameters. A config
 *  that cannot make the layer (sizes, heads not dividing dim, top_k >
 *  experts, ...) is refused with a message naming the values. */
ZMLX_API zmlx_status zmlx_layer_create(const zmlx_layer_config *cfg, zmlx_layer **out);
/** NULL is accepted. */
ZMLX_API zmlx_status zmlx_layer_destroy(zmlx_layer *layer);
/** The resolved configuration (defaults filled in). */
ZMLX_API zmlx_status zmlx_layer_get_config(const zmlx_layer *layer, zmlx_layer_config *out);
/** The parameters (borrowed, updated in place by an optimizer) and their
 *  names, in a fixed order; either pointer may be NULL. Embedding, linear,
 *  norm: "weight" (+ "bias"); attention: wq, wk, wv, wo; MLP: w1, w3, w2
 *  (w1, w3 [dim, ffn_dim], w2 [ffn_dim, dim]); MoE: router [experts, dim],
 *  w1, w3 [experts, ffn_dim, dim], w2 [experts, dim, ffn_dim]; block:
 *  attn_norm, wq, wk, wv, wo, ffn_norm, then the feed-forward's (zmlx_lm's
 *  "layers.N." names). */
ZMLX_API zmlx_status zmlx_layer_parameters(const zmlx_layer *layer, int *n,
                                           zmlx_array *const **params, const char *const **names);
/** *out = the layer applied to x with params (NULL: the layer's own; else
 *  as many arrays as zmlx_layer_parameters gives, of the same shapes).
 *  Differentiable in x (a float input) and in every parameter. */
ZMLX_API zmlx_status zmlx_layer_forward(zmlx_layer *layer, zmlx_array *const *params,
                                        zmlx_array *x, zmlx_array **out);
/** An attention or block layer over a paged KV cache (generation; not
 *  recorded by autograd), its own parameters. x [n, dim]: the newest n
 *  tokens of sequence seq, which attend causally over the whole cached
 *  sequence (the flash kernel). The caller makes room for them first
 *  (zmlx_kv_cache_extend, once for all layers of a step); the layer writes
 *  their keys (rotated at their positions) and values into cache layer
 *  cache_layer. The cache's kv_heads and head_dim are the layer's. */
ZMLX_API zmlx_status zmlx_layer_prefill(zmlx_layer *layer, zmlx_kv_cache *cache, int cache_layer,
                                        int64_t seq, zmlx_array *x, zmlx_array **out);
/** One decode step the same way: row i of x [n, dim] is one new token of
 *  sequence seqs[i] (n distinct sequences, each already extended by it),
 *  attending through the sequence's block table (PagedAttention). */
ZMLX_API zmlx_status zmlx_layer_decode(zmlx_layer *layer, zmlx_kv_cache *cache, int cache_layer,
                                       const int64_t *seqs, zmlx_array *x, zmlx_array **out);

/* ------------------------------------------------------ language model */
/* A decoder-only transformer built from the catalog (src/nn/lm.c):
 * embedding -> layers of [RMSNorm -> causal attention (RoPE, GQA, flash
 * kernel) -> residual, RMSNorm -> MoE (top-k SwiGLU experts) or a dense
 * SwiGLU MLP -> residual] -> RMSNorm -> output projection. Training goes
 * through autograd (every op is recorded); generation through the paged KV
 * cache (zmlx_lm_prefill / zmlx_lm_decode). */
typedef struct zmlx_lm_config {
  size_t struct_size; /* sizeof(zmlx_lm_config), or 0 (this header's size) */
  int vocab;          /* 0: 256 (bytes) */
  int dim;            /* model width, a multiple of heads */
  int layers;
  int heads, kv_heads; /* kv_heads divides heads (0: heads); head_dim = dim / heads */
  int ffn_dim;        /* each expert's (or the dense MLP's) inner width */
  int experts;        /* 0: a dense SwiGLU MLP in every layer */
  int top_k;          /* experts per token (0: 2) */
  double rope_base;   /* 0: 10000 */
  double norm_eps;    /* 0: 1e-5 */
  uint64_t seed;      /* of the initial weights */
  zmlx_dtype dtype;   /* of the weights: f32, f16 or bf16; 0 (a zeroed config): f32 */
  zmlx_device *device; /* NULL: the default device */
} zmlx_lm_config;

typedef struct zmlx_lm zmlx_lm;
/** A model with freshly initialised weights (normal, std 0.02; the output
 *  projections of each residual branch scaled by 1 / sqrt(2 layers); norms 1). */
ZMLX_API zmlx_status zmlx_lm_create(const zmlx_lm_config *cfg, zmlx_lm **out);
/** NULL is accepted. */
ZMLX_API zmlx_status zmlx_lm_destroy(zmlx_lm *lm);
/** The resolved configuration (defaults filled in). */
ZMLX_API zmlx_status zmlx_lm_get_config(const zmlx_lm *lm, zmlx_lm_config *out);
/** The parameters (borrowed, updated in place by an optimizer) and their
 *  names ("layers.0.wq", ...), in a fixed order; either pointer may be NULL. */
ZMLX_API zmlx_status zmlx_lm_parameters(const zmlx_lm *lm, int *n, zmlx_array *const **params,
                                        const char *const **names);
/** Logits [batch, seq, vocab] (f32) of tokens [batch, seq] (i32) with the
 *  given parameters (NULL: the model's own; inside a grad call pass the
 *  arrays being differentiated). */
ZMLX_API zmlx_status zmlx_lm_logits(zmlx_lm *lm, zmlx_array *const *params, zmlx_array *tokens,
                                    zmlx_array **logits);
/** Mean next-token cross-entropy (an f32 scalar) of tokens [batch, seq]
 *  against targets [batch, seq] (i32; -100 ignored). */
ZMLX_API zmlx_status zmlx_lm_loss(zmlx_lm *lm, zmlx_array *const *params, zmlx_array *tokens,
                                  zmlx_array *targets, zmlx_array **loss);
/** The loss and its gradient to every parameter (grads: as many slots as
 *  zmlx_lm_parameters gives, new references). */
ZMLX_API zmlx_status zmlx_lm_value_and_grad(zmlx_lm *lm, zmlx_array *tokens, zmlx_array *targets,
                                            zmlx_array **loss, zmlx_array **grads);

/** A KV cache shaped for the model (layers, kv heads, head_dim, its dtype):
 *  num_blocks blocks of block_size (8, 16 or 32) tokens. */
ZMLX_API zmlx_status zmlx_lm_kv_cache_create(const zmlx_lm *lm, int64_t num_blocks,
                                             int block_size, zmlx_kv_cache **out);
/** Run tokens [n] (i32) of sequence seq through the model after what the
 *  cache already holds for it: each layer's keys (rotated) and values are
 *  written into the cache and the queries attend causally over the whole
 *  sequence. *logits: [1, vocab] of the last token. */
ZMLX_API zmlx_status zmlx_lm_prefill(zmlx_lm *lm, zmlx_kv_cache *cache, int64_t seq,
                                     zmlx_array *tokens, zmlx_array **logits);
/** One decode step for distinct sequences seqs[0 .. n) with one new token
 *  each (tokens [n] i32): their keys and values are appended and
 *  PagedAttention reads each context through its block table; the MoE runs
 *  its decode path. *logits: [n, vocab]. */
ZMLX_API zmlx_status zmlx_lm_decode(zmlx_lm *lm, zmlx_kv_cache *cache, const int64_t *seqs,
                                    zmlx_array *tokens, zmlx_array **logits);

/** The parameters as a safetensors file (Hugging Face's format; readable by
 *  Python's `safetensors`), with the configuration in its __metadata__
 *  ("zmlx.config"). Written to PATH.tmp and renamed: never half a file. */
ZMLX_API zmlx_status zmlx_lm_save(const zmlx_lm *lm, const char *path);
/** A model from a file zmlx_lm_save wrote, on dev (NULL: the default
 *  device). A truncated or corrupt file, or one whose tensors do not match
 *  its configuration, is refused with a message naming what is wrong. */
ZMLX_API zmlx_status zmlx_lm_load(const char *path, zmlx_device *dev, zmlx_lm **out);

/* ------------------------------------------------------------- AdamW */
/* Fused AdamW (PyTorch's torch.optim.AdamW semantics: decoupled weight
 * decay, bias correction; no amsgrad, no maximize): per element
 *   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
 * in one kernel that reads g, p, m, v once and writes p, m, v once, for up
 * to ZMLX_ADAMW_TENSORS_PER_LAUNCH tensors of any sizes per launch (a
 * longer list takes more launches). lr and step are arguments of each call
 * (no recompile). Optional clipping of the gradients by their global L2
 * norm, computed on the device (the host never waits). */
#define ZMLX_ADAMW_TENSORS_PER_LAUNCH 6

typedef struct zmlx_adamw_opts {
  size_t struct_size;  /* sizeof(zmlx_adamw_opts), or 0 (this header's size) */
  double beta1, beta2; /* 0 and 0: PyTorch's 0.9 and 0.999 */
  double eps;          /* 0: 1e-8 */
  double weight_decay; /* decoupled (0 is no decay; PyTorch's default is 0.01) */
  /* > 0: scale every gradient by min(1, max_grad_norm / (norm + 1e-6)),
   * norm the L2 norm of all of them together (clip_grad_norm_). */
  double max_grad_norm;
  /* zmlx_adamw_create only: keep f32 master copies of f16 / bf16 params
   * (the update runs on the master, the param receives its rounding). */
  int master_weights;
} zmlx_adamw_opts;

/** One step over n tensors, updated in place: params[i] (dense; f32, f16
 *  or bf16), grads[i] (params[i]'s shape, f32 / f16 / bf16, any layout),
 *  exp_avg[i] and exp_avg_sq[i] (dense f32 of params[i]'s shape), and
 *  master (NULL, or n dense f32 master copies: the update runs on
 *  master[i] and params[i] receives its rounding). step >= 1 is the
 *  count including this step. grad_norm (may be NULL): a new f32 scalar
 *  array, the global L2 norm of the gradients before clipping. A list
 *  whose arrays do not match is refused before anything is written. */
ZMLX_API zmlx_status zmlx_adamw_step(const zmlx_adamw_opts *opts, double lr, int64_t step, int n,
                                     zmlx_array *const *params, zmlx_array *const *grads,
                                     zmlx_array *const *exp_avg, zmlx_array *const *exp_avg_sq,
                                     zmlx_array *const *master, zmlx_array **grad_norm);

/* The optimizer as an object: it holds exp_avg, exp_avg_sq (zeros at
 * creation), the step count and, with master_weights, the f32 masters. */
typedef struct zmlx_adamw zmlx_adamw;
/** params: n arrays, retained (updated in place by each step). */
ZMLX_API zmlx_status zmlx_adamw_create(zmlx_array *const *params, int n,
                                       const zmlx_adamw_opts *opts, zmlx_adamw **out);
/** NULL is accepted. */
ZMLX_API zmlx_status zmlx_adamw_destroy(zmlx_adamw *opt);
/** Step count + 1, then zmlx_adamw_step with the held state; grads: one
 *  per param, in the order of creation. */
ZMLX_API zmlx_status zmlx_adamw_update(zmlx_adamw *opt, zmlx_array *const *grads, int n,
                                       double lr, zmlx_array **grad_norm);
/** Tensor i's state: new references to its exp_avg and exp_avg_sq (and
 *  its master copy, NULL without one); any pointer may be NULL. *step
 *  (may be NULL): steps taken. */
ZMLX_API zmlx_status zmlx_adamw_state(const zmlx_adamw *opt, int i, zmlx_array **exp_avg,
                                      zmlx_array **exp_avg_sq, zmlx_array **master,
                                      int64_t *step);

/* ---------------------------------------------------- catalog: activations */
/* Elementwise activations (src/ops/activation.c), one function each. x is
 * f32, f16 or bf16 of any rank and layout (strided views and 0-d arrays
 * included); *out is a new dense array of x's shape and dtype, computed in
 * f32 by one expression-engine kernel (16-byte vector loads when x is
 * dense). Differentiable in x to any order (VJP and JVP are the engine's
 * symbolic derivatives; docs/EXPRESSIONS.md). Domain errors are values, as
 * in C: log(-1) = NaN, log(0) = -inf, exp(100) = inf in f32. relu is C's
 * fmax(x, 0), so relu(NaN) = 0; every other activation propagates NaN.
 * At the kinks: relu'(0) = 0, elu'(0) = alpha. Errors: ZMLX_ERR_NULL_ARG,
 * ZMLX_ERR_DTYPE (any other dtype), ZMLX_ERR_INVALID_ARG (elu: alpha not
 * finite), each with a message naming the op. */
ZMLX_API zmlx_status zmlx_exp(zmlx_array *x, zmlx_array **out);
/** Natural logarithm. */
ZMLX_API zmlx_status zmlx_log(zmlx_array *x, zmlx_array **out);
ZMLX_API zmlx_status zmlx_tanh(zmlx_array *x, zmlx_array **out);
/** 1 / (1 + exp(-x)). */
ZMLX_API zmlx_status zmlx_sigmoid(zmlx_array *x, zmlx_array **out);
/** max(x, 0). */
ZMLX_API zmlx_status zmlx_relu(zmlx_array *x, zmlx_array **out);
/** x * sigmoid(x) (swish). */
ZMLX_API zmlx_status zmlx_silu(zmlx_array *x, zmlx_array **out);
/** 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (GELU, tanh approximation). */
ZMLX_API zmlx_status zmlx_gelu_tanh(zmlx_array *x, zmlx_array **out);
/** 0.5 x (1 + erf(x / sqrt(2))) (exact GELU). */
ZMLX_API zmlx_status zmlx_gelu(zmlx_array *x, zmlx_array **out);
/** log(1 + exp(x)), as max(x, 0) + log1p(exp(-|x|)): no overflow. */
ZMLX_API zmlx_status zmlx_softplus(zmlx_array *x, zmlx_array **out);
/** x * tanh(softplus(x)). */
ZMLX_API zmlx_status zmlx_mish(zmlx_array *x, zmlx_array **out);
/** x > 0 ? x : alpha * expm1(x) (alpha = 1: the usual ELU; alpha is a
 *  kernel parameter, so changing it compiles nothing). */
ZMLX_API zmlx_status zmlx_elu(zmlx_array *x, double alpha, zmlx_array **out);

/* ----------------------------------------------------- catalog: reductions */
/* Reductions over the last dimension of x (src/ops/reduce.c): any rank >=
 * 1, f32 / f16 / bf16 (strided views are made dense first), one threadgroup
 * per row with f32 accumulation; values come back in x's dtype, indices as
 * i32. Order for max / min / argmax / top-k: ties go to the lower index and
 * NaN ranks above every number (max, min and argmax propagate / point at
 * the first NaN). Errors: ZMLX_ERR_NULL_ARG, ZMLX_ERR_DTYPE, ZMLX_ERR_SHAPE
 * (rank 0, last dim 0, last dim >= 2^31 for index results),
 * ZMLX_ERR_INVALID_ARG (kind, ddof, k), each with a message naming it. */

typedef enum zmlx_reduce_kind {
  ZMLX_REDUCE_SUM = 0,
  ZMLX_REDUCE_MEAN,
  ZMLX_REDUCE_MAX,
  ZMLX_REDUCE_MIN,
  ZMLX_REDUCE_VAR, /* sum((x - mean)^2) / (n - ddof), NaN when n <= ddof */
  ZMLX_REDUCE_STD  /* sqrt of VAR */
} zmlx_reduce_kind;

/** `kind` of x over its last axis: x's shape without the last axis, or with
 *  it as 1 when keepdims. ddof (>= 0) is used by VAR and STD only. var /
 *  std are computed with per-thread Welford and an exact parallel merge
 *  (no E[x^2] - E[x]^2). Differentiable (VJP and JVP): max / min send the
 *  gradient to the first index of the extremum; std's gradient is 0 where
 *  std is 0. */
ZMLX_API zmlx_status zmlx_reduce_last(zmlx_array *x, zmlx_reduce_kind kind, int ddof,
                                      int keepdims, zmlx_array **out);
/** Index (i32) of the first maximum / minimum over the last axis. No
 *  gradient. */
ZMLX_API zmlx_status zmlx_argmax_last(zmlx_array *x, int keepdims, zmlx_array **indices);
ZMLX_API zmlx_status zmlx_argmin_last(zmlx_array *x, int keepdims, zmlx_array **indices);
/** The k largest elements over the last axis (1 <= k <= 64 and k <= last
 *  dim), sorted descending, ties by the lower index: values [..., k] in x's
 *  dtype and indices [..., k] i32 (either out-param may be NULL, not both).
 *  Differentiable in values (the cotangent is scattered to the indices). */
ZMLX_API zmlx_status zmlx_topk(zmlx_array *x, int k, zmlx_array **values, zmlx_array **indices);

/* --------------------------------------------------- catalog: quantization */
/* Weight quantization (src/ops/quant.c). Two formats, both over the last
 * axis of a [..., cols] array ("rows" = every leading index):
 *
 *   int8, per row, symmetric: q i8 [..., cols], scales [...] (q's shape
 *     without its last axis); w = scales[row] * q.
 *   int4, per group, affine (MLX's / GPTQ-style layout): packed u8
 *     [..., cols / 2] holding two unsigned 4-bit values per byte — element
 *     2j in the LOW nibble of byte j, 2j + 1 in the high nibble (so MLX's
 *     uint32 words, read as bytes, are the same layout); groups of
 *     group_size (32, 64 or 128; cols % group_size == 0) consecutive
 *     elements of a row share scales and biases [..., cols / group_size]:
 *     w = scales[g] * q + biases[g], q in [0, 15].
 *
 * Scales and biases are f32, f16 or bf16; outputs are f32, f16 or bf16
 * (out_dtype), computed in f32 and rounded to nearest even. Dequantize
 * optionally fuses an activation (act = ZMLX_QUANT_SILU: out = silu(w)) in
 * the same memory-bound pass (one wide load of packed integers per thread,
 * 8/16-byte stores). Inputs may be strided views (made dense first).
 *
 * Gradients: dequantize is differentiable with respect to scales and
 * biases (VJP: row / group sums of g * q (and of g), times silu'(w) with
 * ACT SILU; JVP too), first order only; q is an integer array and gets no
 * gradient (integer inputs are constants to autograd). Quantize is not
 * recorded: its outputs are constants to autograd.
 *
 * Errors: ZMLX_ERR_NULL_ARG, ZMLX_ERR_DTYPE (q not i8 / packed not u8,
 * non-float x, scales, biases or out_dtype), ZMLX_ERR_SHAPE (rank 0, scale
 * or bias shapes that do not match, cols not a multiple of group_size, an
 * empty last axis for quantize), ZMLX_ERR_INVALID_ARG (group_size, act,
 * arrays on different devices); messages name the problem and the shapes. */

typedef enum zmlx_quant_act {
  ZMLX_QUANT_NONE = 0, /* out = w */
  ZMLX_QUANT_SILU = 1  /* out = silu(w) = w * sigmoid(w) */
} zmlx_quant_act;

/** int8 symmetric per-row quantization of x [..., cols] (f32/f16/bf16,
 *  cols > 0): scale = max|x_row| / 127, rounded to scale_dtype (f32, f16 or
 *  bf16) and used as stored; q = clamp(round(x / scale), -127, 127), round
 *  to nearest with ties away from zero (a zero row: scale 0, q 0). So
 *  |x - scale * q| <= scale / 2 per element. *q: i8 [..., cols];
 *  *scales: [...] of scale_dtype. */
ZMLX_API zmlx_status zmlx_quantize_int8_rows(zmlx_array *x, zmlx_dtype scale_dtype,
                                             zmlx_array **q, zmlx_array **scales);
/** out = act(scales[row] * q) for q i8 [..., cols], scales [...]; *out is
 *  [..., cols] of out_dtype. */
ZMLX_API zmlx_status zmlx_dequantize_int8_rows(zmlx_array *q, zmlx_array *scales,
                                               zmlx_dtype out_dtype, zmlx_quant_act act,
                                               zmlx_array **out);
/** int4 affine group quantization of x [..., cols] (cols % group_size ==
 *  0): per group, bias = min rounded to scale_dtype, scale = max(max -
 *  bias, 0) / 15 rounded to scale_dtype, q = clamp(round((x - bias) /
 *  scale), 0, 15) (ties away from zero; 0 where scale is 0), so |x - (scale
 *  * q + bias)| <= scale / 2 up to the rounding of bias to scale_dtype.
 *  *packed: u8 [..., cols / 2]; *scales, *biases: [..., cols / group_size]
 *  of scale_dtype. */
ZMLX_API zmlx_status zmlx_quantize_int4(zmlx_array *x, int group_size, zmlx_dtype scale_dtype,
                                        zmlx_array **packed, zmlx_array **scales,
                                        zmlx_array **biases);
/** out = act(scales[g] * q + biases[g]) for packed u8 [..., cols / 2] and
 *  scales, biases [..., cols / group_size] (each f32, f16 or bf16); *out
 *  is [..., cols] of out_dtype. */
ZMLX_API zmlx_status zmlx_dequantize_int4(zmlx_array *packed, zmlx_array *scales,
                                          zmlx_array *biases, int group_size,
                                          zmlx_dtype out_dtype, zmlx_quant_act act,
                                          zmlx_array **out);

/* ------------------------------------------------------------------ cache */

typedef struct zmlx_cache_stats {
  uint64_t memory_hits;   /* found loaded in the in-memory table */
  uint64_t disk_hits;     /* loaded from a binary on disk */
  uint64_t misses;        /* compiled */
  uint64_t disk_rejects;  /* corrupt / foreign entries recompiled */
  uint64_t disk_writes;
  double compile_ms;      /* total compile time */
  double disk_load_ms;    /* total time spent loading from disk */
  uint64_t entries;       /* loaded functions in memory */
} zmlx_cache_stats;

ZMLX_API zmlx_status zmlx_cache_get_stats(zmlx_cache_stats *out);
ZMLX_API zmlx_status zmlx_cache_reset_stats(void);
/** Directory of the disk cache ($ZMLX_CACHE_DIR, $XDG_CACHE_HOME/zmlx,
 *  ~/.cache/zmlx). Valid until the next call. */
ZMLX_API const char *zmlx_cache_dir(void);
/** 1 unless ZMLX_CACHE=0, zmlx_cache_set_disk_enabled(0), or the directory
 *  cannot be created or written (then zmlx_cache_disk_problem says why, and
 *  every process compiles its kernels again). */
ZMLX_API int zmlx_cache_disk_enabled(void);
/** Why the disk cache is off although wanted (an unusable directory), or
 *  NULL. Checked once per process, on first use. */
ZMLX_API const char *zmlx_cache_disk_problem(void);
ZMLX_API zmlx_status zmlx_cache_set_disk_enabled(int enabled);
/** Remove every entry from the disk cache; *removed gets the count. */
ZMLX_API zmlx_status zmlx_cache_clear_disk(int64_t *removed);
/** Unload every in-memory entry (kernels reload on next use). */
ZMLX_API zmlx_status zmlx_cache_clear_memory(void);
/** Number of entries and bytes on disk. */
ZMLX_API zmlx_status zmlx_cache_disk_usage(int64_t *entries, int64_t *bytes);

/** Release every device, stream and cached function. Optional at exit. */
ZMLX_API void zmlx_shutdown(void);

#ifdef __cplusplus
}
#endif
#endif /* ZMLX_H */
