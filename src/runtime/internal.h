/*
 * Internal runtime definitions shared by every layer below the public API.
 * Nothing here is installed; frontends use include/zmlx.h only.
 */
#ifndef ZMLX_RUNTIME_INTERNAL_H
#define ZMLX_RUNTIME_INTERNAL_H

#include "zmlx.h"

#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/backend.h"

/* ------------------------------------------------------------------ errors */

/* Record a message for zmlx_last_error() on this thread and return `s`, so
 * that failing paths read `return zmlxi_fail(ZMLX_ERR_SHAPE, "...", ...);`. */
zmlx_status zmlxi_fail(zmlx_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefix the current message with context: "while X: <previous message>". */
zmlx_status zmlxi_fail_context(zmlx_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define ZMLX_CHECK(expr)                 \
  do {                                   \
    zmlx_status zmlx_st_ = (expr);       \
    if (zmlx_st_ != ZMLX_OK) return zmlx_st_; \
  } while (0)

/* Return ZMLX_ERR_NULL_ARG, naming `call` (the public function the user
 * called, e.g. "zmlx_softmax", when a helper below it checks) and `p`. */
#define ZMLX_REQUIRE_ARG_OF(call, p)                                     \
  do {                                                                   \
    if ((p) == NULL)                                                     \
      return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: argument '%s' is NULL",   \
                       (call), #p);                                      \
  } while (0)

/* The same in the public function itself. */
#define ZMLX_REQUIRE_ARG(p) ZMLX_REQUIRE_ARG_OF(__func__, p)

/* Format a shape as "[2, 3, 4]" into buf (always NUL-terminated). */
const char *zmlxi_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

/* f32, f16 or bf16: the dtypes the float ops compute in (and autograd
 * differentiates). */
bool zmlxi_dtype_is_f32_f16_bf16(zmlx_dtype dt);

/* FNV-1a: 32-bit of a string (names, hash buckets), 64-bit of bytes
 * (checksums). Not for anything an attacker controls. */
uint32_t zmlxi_fnv1a32(const char *s);
uint64_t zmlxi_fnv1a64(const void *data, size_t n);

/* ------------------------------------------------------- stderr capture */

/* While a driver call runs, what it prints on stderr goes to a temporary
 * file instead of the user's terminal (stderr_capture.c says why and what
 * it costs). Pair begin with end; end returns the text (malloc'ed) or NULL
 * when nothing but white space was written. ZMLX_DRIVER_STDERR=1 turns the
 * capture off. */
typedef struct zmlx_stderr_capture {
  void *file; /* FILE * of the temporary file */
  int saved_fd;
  bool locked;
} zmlx_stderr_capture;

void zmlxi_stderr_capture_begin(zmlx_stderr_capture *c);
char *zmlxi_stderr_capture_end(zmlx_stderr_capture *c);
/* Write captured text back to stderr and free it (NULL: nothing). */
void zmlxi_stderr_release(char *text);
/* A failed build's log followed by what the driver printed meanwhile
 * (PoCL: "1 error generated."), so that both reach the error message.
 * Takes both (either may be NULL); returns the joined text (malloc'ed). */
char *zmlxi_stderr_append(char *log, char *captured);

/* ---------------------------------------------------------- devices/streams */

struct zmlx_device {
  const zmlx_backend_ops *ops;
  int index;                 /* index within the backend */
  zmlx_device_info info;     /* filled once at init */
  char cache_identity[512];  /* arch + compiler + driver, for cache keys */
  struct zmlx_stream *default_stream; /* NULL after zmlx_shutdown */
  /* Live non-default streams (created or wrapped), for
   * zmlx_device_synchronize; guarded by streams_lock. */
  pthread_mutex_t streams_lock;
  struct zmlx_stream *streams;
};

struct zmlx_stream {
  zmlx_device *device;
  void *handle;              /* backend stream (CUstream / cl_command_queue) */
  int is_default;
  int borrowed;              /* zmlx_stream_wrap: the handle is not ours to destroy */
  atomic_int refs;           /* the user's, a thread's current, each buffer allocated on it */
  struct zmlx_stream *next;  /* the device's list of live streams */
};

/* The stream to use: `s` if given, else the calling thread's current stream
 * on dev (zmlx_set_current_stream), else the device's default. */
zmlx_stream *zmlxi_stream_or_default(zmlx_stream *s, zmlx_device *dev);
/* References held by buffers and threads on non-default streams; the last
 * release destroys the native stream (unless borrowed) and the wrapper. */
void zmlxi_stream_retain(zmlx_stream *s);
void zmlxi_stream_release(zmlx_stream *s);
/* Whether the device's library GEMM takes operands of dtype dt. */
int zmlxi_device_gemm_takes(const zmlx_device *dev, zmlx_dtype dt);
/* Resolve a possibly-NULL device to the default device. */
zmlx_status zmlxi_device_resolve(zmlx_device *dev, zmlx_device **out);

/* ------------------------------------------------------------------ arrays */

/* A device allocation shared by an array and its views. */
typedef struct zmlx_buffer {
  atomic_int refcount;
  zmlx_device *device;
  void *handle;              /* backend buffer (cl_mem / CUdeviceptr) */
  size_t bytes;
  /* Foreign memory (DLPack import): called instead of ops->free. */
  void (*release_foreign)(void *ctx);
  void *foreign_ctx;
  bool guarded; /* a red zone follows the bytes (guard.c) */
  /* The non-default stream it was allocated on (held): freed there, so the
   * free is ordered after that stream's work. NULL: the default stream. */
  zmlx_stream *stream;
  /* Allocated during a graph capture (ops->alloc_unordered): freed so too. */
  bool unordered;
} zmlx_buffer;

/* Drop a reference to b; the last one frees it (deferred to the end of a
 * capture running on its device in this thread: runtime/graph.c). */
void zmlxi_buffer_release(zmlx_buffer *b);
/* Free b now (its last reference is gone). */
void zmlxi_buffer_free_now(zmlx_buffer *b);

/* Red zones (guard.c): the bytes each allocation gets beyond its size (0
 * unless ZMLX_GUARD=1), filling them, and checking them at free (abort
 * with a message when a kernel wrote there). */
size_t zmlxi_guard_bytes(void);
zmlx_status zmlxi_guard_arm(zmlx_device *dev, void *stream, void *handle, size_t bytes);
void zmlxi_guard_check(zmlx_device *dev, void *stream, void *handle, size_t bytes);

struct zmlx_array {
  atomic_int refcount;
  zmlx_dtype dtype;
  int ndim;
  int64_t shape[ZMLX_MAX_DIMS];
  int64_t strides[ZMLX_MAX_DIMS]; /* elements */
  int64_t offset;                 /* elements */
  int64_t size;                   /* product of shape */
  zmlx_buffer *buffer;
  /* Hook for autograd (later layers); NULL in the runtime. */
  void *grad_node;
};

/* Allocate an uninitialised dense array on `dev` (stream-ordered on `s`). */
zmlx_status zmlxi_array_alloc(zmlx_device *dev, zmlx_stream *s, zmlx_dtype dt, int ndim,
                             const int64_t *shape, zmlx_array **out);
/* A view of `base`'s buffer with new geometry (takes a buffer reference). */
zmlx_status zmlxi_array_make_view(zmlx_array *base, int ndim, const int64_t *shape,
                                 const int64_t *strides, int64_t offset, zmlx_array **out);
/* Validate dtype/ndim/shape; compute element count into *size. */
zmlx_status zmlxi_check_shape(zmlx_dtype dt, int ndim, const int64_t *shape, int64_t *size);
void zmlxi_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides);

/* Checks a reshape of a to (ndim, shape): sizes, one -1 inferred into
 * resolved, the element count kept. */
zmlx_status zmlxi_reshape_resolve(const zmlx_array *a, int ndim, const int64_t *shape,
                                 int64_t *resolved);
/* Syncs and frees the devices' default streams and shuts the backends down
 * (the second half of zmlx_shutdown, after the kernel layer's). */
void zmlxi_runtime_shutdown(void);

/* Host reference for the counter-based RNG (tests compare against it). */
void zmlxi_philox4x32(uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);
float zmlxi_random_uniform_ref(uint64_t seed, uint64_t index);
float zmlxi_random_normal_ref(uint64_t seed, uint64_t index);

/* ---------------------------------------------------------------- utility */

/* Growable string used by source generators. Never fails: on OOM it sets
 * `oom` and later zmlxi_sb_finish() reports it. */
typedef struct zmlx_sb {
  char *data;
  size_t len, cap;
  bool oom;
} zmlx_sb;

void zmlxi_sb_init(zmlx_sb *sb);
void zmlxi_sb_free(zmlx_sb *sb);
void zmlxi_sb_append(zmlx_sb *sb, const char *s);
void zmlxi_sb_appendn(zmlx_sb *sb, const char *s, size_t n);
void zmlxi_sb_printf(zmlx_sb *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hand the string to the caller (free with free()), or ZMLX_ERR_OUT_OF_MEMORY. */
zmlx_status zmlxi_sb_finish(zmlx_sb *sb, char **out);

char *zmlxi_strdup(const char *s);
double zmlxi_now_ms(void); /* monotonic clock */

/* Global counters for leak checks. */
extern atomic_llong zmlxi_live_arrays;

#endif /* ZMLX_RUNTIME_INTERNAL_H */
