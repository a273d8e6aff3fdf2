/*
 * OpenCL runtime backend (DESIGN 4): devices, buffers, queues, program
 * build and kernel launch through the ICD loader.
 *
 * Handles: a buffer is a cl_mem, a stream is an in-order cl_command_queue,
 * a function is a ocl_function (program + kernel + lock). Devices are every
 * usable device of every platform, in enumeration order, each with its own
 * cl_context made at init.
 */
#ifdef ZMLX_HAVE_OPENCL

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/opencl/ocl.h"

/* Options for every build. Fast-math flags are left out on purpose: results
 * must match the other backends and the host references. */
#define ZMLX_CL_BUILD_OPTIONS "-cl-std=CL1.2"

/* ------------------------------------------------------------ device table */

typedef struct ocl_dev {
  cl_platform_id platform;
  cl_device_id device;
  cl_context context;
  cl_command_queue fallback_queue; /* used when a caller passes stream NULL */
  int version_major;               /* from CL_DEVICE_VERSION "OpenCL M.m ..." */
  cl_ulong global_mem;             /* CL_DEVICE_GLOBAL_MEM_SIZE */
  char *identity;                  /* cache identity (see build_identity) */
  uint64_t identity_hash;          /* stamped into binaries: load() checks it */
} ocl_dev;

static struct {
  ocl_dev *devs;
  int count;
  int initialized;
} g_cl;

static zmlx_status check_dev(int dev) {
  if (!g_cl.initialized || dev < 0 || dev >= g_cl.count)
    return zmlxi_fail(ZMLX_ERR_NO_DEVICE, "OpenCL: no device %d (%d available)", dev, g_cl.count);
  return ZMLX_OK;
}

/* A malloc'ed, NUL-terminated string property of a device or platform. The
 * size is asked first because names and extension lists have no bound. */
static zmlx_status query_device_string(cl_device_id d, cl_device_info p, char **out) {
  size_t n = 0;
  cl_int err = clGetDeviceInfo(d, p, 0, NULL, &n);
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clGetDeviceInfo");
  char *s = calloc(n + 1, 1);
  if (!s) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  err = clGetDeviceInfo(d, p, n, s, NULL);
  if (err != CL_SUCCESS) {
    free(s);
    return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clGetDeviceInfo");
  }
  *out = s;
  return ZMLX_OK;
}

static zmlx_status query_platform_string(cl_platform_id pl, cl_platform_info p, char **out) {
  size_t n = 0;
  cl_int err = clGetPlatformInfo(pl, p, 0, NULL, &n);
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clGetPlatformInfo");
  char *s = calloc(n + 1, 1);
  if (!s) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  err = clGetPlatformInfo(pl, p, n, s, NULL);
  if (err != CL_SUCCESS) {
    free(s);
    return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clGetPlatformInfo");
  }
  *out = s;
  return ZMLX_OK;
}

/* Fixed-size device properties (numbers); `what` names the query. */
static zmlx_status query_device_value(cl_device_id d, cl_device_info p, void *v, size_t size) {
  cl_int err = clGetDeviceInfo(d, p, size, v, NULL);
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clGetDeviceInfo");
  return ZMLX_OK;
}

/* Whole-token match in a space-separated extension list ("cl_khr_fp16"
 * must not match "cl_khr_fp16_foo"). */
static int has_token(const char *list, const char *token) {
  size_t n = strlen(token);
  for (const char *p = list; (p = strstr(p, token)) != NULL; p += n) {
    int starts = p == list || p[-1] == ' ';
    int ends = p[n] == '\0' || p[n] == ' ';
    if (starts && ends) return 1;
  }
  return 0;
}

/* "OpenCL 1.2 ..." -> 1; 0 if the string is not in the standard form. */
static int parse_cl_major(const char *version) {
  int major = 0, minor = 0;
  if (sscanf(version, "OpenCL %d.%d", &major, &minor) != 2) return 0;
  return major;
}

/* In-order queue. clCreateCommandQueueWithProperties is OpenCL 2.0+, and an
 * ICD for a 1.x platform may have no entry for it, so 1.x devices use the
 * older call. */
static zmlx_status make_queue(const ocl_dev *d, cl_command_queue *out) {
  cl_int err = CL_SUCCESS;
  cl_command_queue q = NULL;
#if CL_TARGET_OPENCL_VERSION >= 200
  if (d->version_major >= 2)
    q = clCreateCommandQueueWithProperties(d->context, d->device, NULL, &err);
  else
#endif
    q = clCreateCommandQueue(d->context, d->device, 0, &err);
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clCreateCommandQueue");
  *out = q;
  return ZMLX_OK;
}

/* A device is usable if it is available, can compile source (every kernel
 * is JIT-built) and gets a context and a queue. */
static int device_usable(cl_device_id d) {
  cl_bool available = CL_FALSE, compiler = CL_FALSE;
  if (query_device_value(d, CL_DEVICE_AVAILABLE, &available, sizeof available) != ZMLX_OK)
    return 0;
  if (query_device_value(d, CL_DEVICE_COMPILER_AVAILABLE, &compiler, sizeof compiler) != ZMLX_OK)
    return 0;
  return available && compiler;
}

/* Everything that changes a program binary: platform (name + version:
 * the compiler), device name, driver, device and OpenCL C versions. */
static zmlx_status build_identity(cl_platform_id pl, cl_device_id d, zmlx_sb *sb) {
  static const cl_device_info dparams[] = {CL_DEVICE_NAME, CL_DEVICE_VENDOR, CL_DRIVER_VERSION,
                                           CL_DEVICE_VERSION, CL_DEVICE_OPENCL_C_VERSION};
  static const cl_platform_info pparams[] = {CL_PLATFORM_NAME, CL_PLATFORM_VERSION};
  zmlxi_sb_append(sb, "opencl|opts=" ZMLX_CL_BUILD_OPTIONS);
  for (size_t i = 0; i < sizeof pparams / sizeof pparams[0]; i++) {
    char *s = NULL;
    ZMLX_CHECK(query_platform_string(pl, pparams[i], &s));
    zmlxi_sb_printf(sb, "|%s", s);
    free(s);
  }
  for (size_t i = 0; i < sizeof dparams / sizeof dparams[0]; i++) {
    char *s = NULL;
    ZMLX_CHECK(query_device_string(d, dparams[i], &s));
    zmlxi_sb_printf(sb, "|%s", s);
    free(s);
  }
  return ZMLX_OK;
}

/* The identity as one malloc'ed string (NULL on failure). */
static char *identity_string(cl_platform_id pl, cl_device_id d) {
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  char *s = NULL;
  if (build_identity(pl, d, &sb) != ZMLX_OK || zmlxi_sb_finish(&sb, &s) != ZMLX_OK) {
    zmlxi_sb_free(&sb);
    return NULL;
  }
  return s;
}

/* Context + fallback queue for one device; 0 on success. A device that
 * fails here is left out of the table rather than failing init. */
static int open_device(cl_platform_id pl, cl_device_id d, ocl_dev *out) {
  if (!device_usable(d)) return -1;
  char *version = NULL;
  if (query_device_string(d, CL_DEVICE_VERSION, &version) != ZMLX_OK) return -1;
  memset(out, 0, sizeof *out);
  out->platform = pl;
  out->device = d;
  out->version_major = parse_cl_major(version);
  free(version);
  if (query_device_value(d, CL_DEVICE_GLOBAL_MEM_SIZE, &out->global_mem, sizeof out->global_mem) !=
      ZMLX_OK)
    return -1;
  out->identity = identity_string(pl, d);
  if (!out->identity) return -1;
  out->identity_hash = zmlxi_fnv1a64(out->identity, strlen(out->identity));
  cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)pl, 0};
  cl_int err = CL_SUCCESS;
  out->context = clCreateContext(props, 1, &d, NULL, NULL, &err);
  if (err == CL_SUCCESS && make_queue(out, &out->fallback_queue) == ZMLX_OK) return 0;
  if (err == CL_SUCCESS) clReleaseContext(out->context);
  free(out->identity);
  return -1;
}

/* Append the usable devices of one platform to the table. A platform that
 * reports no devices, or fails to list them, contributes none. */
static zmlx_status add_platform_devices(cl_platform_id pl) {
  cl_uint n = 0;
  cl_int err = clGetDeviceIDs(pl, CL_DEVICE_TYPE_ALL, 0, NULL, &n);
  if (err != CL_SUCCESS || n == 0) return ZMLX_OK;
  cl_device_id *ids = calloc(n, sizeof *ids);
  ocl_dev *grown = realloc(g_cl.devs, sizeof *grown * ((size_t)g_cl.count + n));
  if (!ids || !grown) {
    free(ids);
    if (grown) g_cl.devs = grown;
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  }
  g_cl.devs = grown;
  if (clGetDeviceIDs(pl, CL_DEVICE_TYPE_ALL, n, ids, NULL) == CL_SUCCESS) {
    for (cl_uint i = 0; i < n; i++)
      if (open_device(pl, ids[i], &g_cl.devs[g_cl.count]) == 0) g_cl.count++;
  }
  free(ids);
  return ZMLX_OK;
}

static void ocl_shutdown(void) {
  for (int i = 0; i < g_cl.count; i++) {
    if (g_cl.devs[i].fallback_queue) clReleaseCommandQueue(g_cl.devs[i].fallback_queue);
    if (g_cl.devs[i].context) clReleaseContext(g_cl.devs[i].context);
    free(g_cl.devs[i].identity);
  }
  free(g_cl.devs);
  memset(&g_cl, 0, sizeof g_cl);
}

/* Probe every platform's devices once. No ICD installed
 * (CL_PLATFORM_NOT_FOUND_KHR) or no platform at all means 0 devices. */
static zmlx_status ocl_init(int *device_count) {
  ZMLX_REQUIRE_ARG(device_count);
  if (g_cl.initialized) {
    *device_count = g_cl.count;
    return ZMLX_OK;
  }
  cl_uint np = 0;
  cl_int err = clGetPlatformIDs(0, NULL, &np);
  if (err == CL_PLATFORM_NOT_FOUND_KHR || (err == CL_SUCCESS && np == 0)) {
    g_cl.initialized = 1;
    *device_count = 0;
    return ZMLX_OK;
  }
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clGetPlatformIDs");
  cl_platform_id *pls = calloc(np, sizeof *pls);
  if (!pls) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  err = clGetPlatformIDs(np, pls, NULL);
  zmlx_status st = err == CL_SUCCESS ? ZMLX_OK : zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clGetPlatformIDs");
  for (cl_uint i = 0; st == ZMLX_OK && i < np; i++) st = add_platform_devices(pls[i]);
  free(pls);
  if (st != ZMLX_OK) {
    ocl_shutdown();
    return st;
  }
  g_cl.initialized = 1;
  *device_count = g_cl.count;
  return ZMLX_OK;
}

/* ------------------------------------------------------------ device info */

/* Copy with truncation, always NUL-terminated. */
static void copy_str(char *dst, size_t cap, const char *src) {
  snprintf(dst, cap, "%s", src ? src : "");
}

/* The string-valued fields: name, version (+ driver), identity (arch). */
static zmlx_status fill_info_strings(const ocl_dev *d, zmlx_device_info *info) {
  char *name = NULL, *version = NULL, *driver = NULL, *vendor = NULL;
  zmlx_status st = query_device_string(d->device, CL_DEVICE_NAME, &name);
  if (st == ZMLX_OK) st = query_device_string(d->device, CL_DEVICE_VERSION, &version);
  if (st == ZMLX_OK) st = query_device_string(d->device, CL_DRIVER_VERSION, &driver);
  if (st == ZMLX_OK) st = query_device_string(d->device, CL_DEVICE_VENDOR, &vendor);
  if (st == ZMLX_OK) {
    copy_str(info->name, sizeof info->name, name);
    snprintf(info->version, sizeof info->version, "%s (driver %s)", version, driver);
    snprintf(info->arch, sizeof info->arch, "%s/%s/%s", vendor, name, driver);
  }
  free(name);
  free(version);
  free(driver);
  free(vendor);
  return st;
}

/* The numeric fields and capability flags. */
static zmlx_status fill_info_numbers(const ocl_dev *d, zmlx_device_info *info) {
  cl_ulong global_mem = 0, local_mem = 0;
  size_t max_wg = 0;
  cl_uint units = 0;
  char *ext = NULL;
  ZMLX_CHECK(query_device_value(d->device, CL_DEVICE_GLOBAL_MEM_SIZE, &global_mem,
                                sizeof global_mem));
  ZMLX_CHECK(query_device_value(d->device, CL_DEVICE_LOCAL_MEM_SIZE, &local_mem,
                                sizeof local_mem));
  ZMLX_CHECK(query_device_value(d->device, CL_DEVICE_MAX_WORK_GROUP_SIZE, &max_wg,
                                sizeof max_wg));
  ZMLX_CHECK(query_device_value(d->device, CL_DEVICE_MAX_COMPUTE_UNITS, &units, sizeof units));
  ZMLX_CHECK(query_device_string(d->device, CL_DEVICE_EXTENSIONS, &ext));
  info->total_memory = (size_t)global_mem;
  info->max_shared_memory = (size_t)local_mem;
  info->max_threads_per_threadgroup = max_wg > INT_MAX ? INT_MAX : (int)max_wg;
  info->compute_units = units > INT_MAX ? INT_MAX : (int)units;
  info->has_fp16 = has_token(ext, "cl_khr_fp16");
  info->has_fp64 = has_token(ext, "cl_khr_fp64");
  free(ext);
  /* The prelude always emulates a 32-wide SIMD group in __local memory:
   * kernels build as OpenCL C 1.2, where sub-group builtins do not exist
   * (native_simd comes from the dialect). */
  info->simd_width = 32;
  /* OpenCL bounds the work-items (size_t), not the groups; zmlx's launch
   * arguments carry 32-bit counts. */
  for (int i = 0; i < 3; i++) info->max_threadgroups[i] = UINT32_MAX;
  cl_device_type type = 0;
  info->is_cpu = query_device_value(d->device, CL_DEVICE_TYPE, &type, sizeof type) == ZMLX_OK &&
                 (type & CL_DEVICE_TYPE_CPU);
  return ZMLX_OK;
}

static zmlx_status ocl_device_info(int dev, zmlx_device_info *info) {
  ZMLX_REQUIRE_ARG(info);
  ZMLX_CHECK(check_dev(dev));
  memset(info, 0, sizeof *info);
  info->backend = ZMLX_BACKEND_OPENCL;
  info->index = dev;
  ZMLX_CHECK(fill_info_strings(&g_cl.devs[dev], info));
  return fill_info_numbers(&g_cl.devs[dev], info);
}

static zmlx_status ocl_cache_identity(int dev, char *buf, size_t cap) {
  ZMLX_REQUIRE_ARG(buf);
  ZMLX_CHECK(check_dev(dev));
  if (cap < 32) return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "cache identity buffer too small");
  const char *s = g_cl.devs[dev].identity;
  size_t n = strlen(s);
  if (n < cap) {
    memcpy(buf, s, n + 1);
  } else {
    /* Truncated prefix + hash of the whole: never collides by truncation. */
    int keep = (int)(cap - 18);
    snprintf(buf, cap, "%.*s#%016llx", keep, s, (unsigned long long)g_cl.devs[dev].identity_hash);
  }
  return ZMLX_OK;
}

/* ------------------------------------------------------------ streams */

/* Queue for a call: the caller's stream, else the device's own queue. */
static cl_command_queue queue_of(int dev, void *stream) {
  return stream ? (cl_command_queue)stream : g_cl.devs[dev].fallback_queue;
}

static zmlx_status ocl_stream_create(int dev, void **stream) {
  ZMLX_REQUIRE_ARG(stream);
  ZMLX_CHECK(check_dev(dev));
  cl_command_queue q = NULL;
  ZMLX_CHECK(make_queue(&g_cl.devs[dev], &q));
  *stream = q;
  return ZMLX_OK;
}

/* Releasing flushes the queue; queued work still completes. */
static void ocl_stream_destroy(int dev, void *stream) {
  (void)dev;
  if (stream) clReleaseCommandQueue((cl_command_queue)stream);
}

static zmlx_status ocl_stream_sync(int dev, void *stream) {
  ZMLX_CHECK(check_dev(dev));
  cl_int err = clFinish(queue_of(dev, stream));
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clFinish");
  return ZMLX_OK;
}

/* ------------------------------------------------------------ memory */

/* Zero-byte arrays still get a real cl_mem (OpenCL rejects size 0), so
 * every array has a valid handle to pass to kernels. More than the device
 * has never gets here: the runtime refuses it (NVIDIA's driver accepts any
 * size and only fails at first use). Sizes between
 * CL_DEVICE_MAX_MEM_ALLOC_SIZE and the memory size are left to the driver,
 * which may allow them (NVIDIA does). */
static zmlx_status ocl_alloc(int dev, void *stream, size_t bytes, void **buffer) {
  (void)stream;
  ZMLX_REQUIRE_ARG(buffer);
  ZMLX_CHECK(check_dev(dev));
  cl_int err = CL_SUCCESS;
  cl_mem m = clCreateBuffer(g_cl.devs[dev].context, CL_MEM_READ_WRITE, bytes ? bytes : 1, NULL,
                            &err);
  if (err != CL_SUCCESS) {
    zmlx_status st = err == CL_INVALID_BUFFER_SIZE ? ZMLX_ERR_OUT_OF_MEMORY : ZMLX_ERR_BACKEND;
    return zmlxi_fail(zmlxi_ocl_status(err, st), "OpenCL: clCreateBuffer of %zu bytes failed: %s (%d)",
                     bytes, zmlxi_ocl_error_name(err), (int)err);
  }
  *buffer = m;
  return ZMLX_OK;
}

/* Commands already queued keep their own reference to the cl_mem, so this
 * is stream-ordered without waiting. */
static void ocl_free(int dev, void *stream, void *buffer) {
  (void)dev;
  (void)stream;
  if (buffer) clReleaseMemObject((cl_mem)buffer);
}

static zmlx_status ocl_write(int dev, void *stream, void *buffer, size_t offset, const void *src,
                            size_t bytes) {
  ZMLX_CHECK(check_dev(dev));
  if (bytes == 0) return ZMLX_OK; /* OpenCL rejects empty transfers */
  ZMLX_REQUIRE_ARG(buffer);
  ZMLX_REQUIRE_ARG(src);
  cl_int err = clEnqueueWriteBuffer(queue_of(dev, stream), (cl_mem)buffer, CL_TRUE, offset,
                                    bytes, src, 0, NULL, NULL);
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clEnqueueWriteBuffer");
  return ZMLX_OK;
}

/* Blocking read on an in-order queue: prior work finishes first. */
static zmlx_status ocl_read(int dev, void *stream, const void *buffer, size_t offset, void *dst,
                           size_t bytes) {
  ZMLX_CHECK(check_dev(dev));
  if (bytes == 0) return ZMLX_OK;
  ZMLX_REQUIRE_ARG(buffer);
  ZMLX_REQUIRE_ARG(dst);
  cl_int err = clEnqueueReadBuffer(queue_of(dev, stream), (cl_mem)(uintptr_t)buffer, CL_TRUE,
                                   offset, bytes, dst, 0, NULL, NULL);
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clEnqueueReadBuffer");
  return ZMLX_OK;
}

static zmlx_status ocl_copy(int dev, void *stream, void *dst, size_t dst_offset, const void *src,
                           size_t src_offset, size_t bytes) {
  ZMLX_CHECK(check_dev(dev));
  if (bytes == 0) return ZMLX_OK;
  ZMLX_REQUIRE_ARG(dst);
  ZMLX_REQUIRE_ARG(src);
  cl_int err = clEnqueueCopyBuffer(queue_of(dev, stream), (cl_mem)(uintptr_t)src, (cl_mem)dst,
                                   src_offset, dst_offset, bytes, 0, NULL, NULL);
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clEnqueueCopyBuffer");
  return ZMLX_OK;
}

/* ------------------------------------------------------------ programs */

/* The build log of `prog` on `d` (malloc'ed), or NULL when it is empty:
 * drivers often return "\n" for a clean build. */
static char *build_log(cl_program prog, cl_device_id d) {
  size_t n = 0;
  if (clGetProgramBuildInfo(prog, d, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) != CL_SUCCESS || n == 0)
    return NULL;
  char *s = calloc(n + 1, 1);
  if (!s) return NULL;
  if (clGetProgramBuildInfo(prog, d, CL_PROGRAM_BUILD_LOG, n, s, NULL) != CL_SUCCESS) {
    free(s);
    return NULL;
  }
  if (strspn(s, " \t\r\n") == strlen(s)) {
    free(s);
    return NULL;
  }
  return s;
}

/* The one device binary of a program built for a single device, in its
 * envelope (envelope.c). */
static zmlx_status program_binary(const ocl_dev *d, cl_program prog, void **binary,
                                  size_t *binary_size) {
  size_t size = 0;
  cl_int err = clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL);
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clGetProgramInfo(BINARY_SIZES)");
  if (size == 0)
    return zmlxi_fail(ZMLX_ERR_BACKEND, "OpenCL: the driver returned an empty program binary");
  unsigned char *env = zmlxi_ocl_envelope_alloc(size);
  if (!env) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  unsigned char *payload = env + OCL_ENVELOPE_HEADER;
  err = clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof payload, &payload, NULL);
  if (err != CL_SUCCESS) {
    free(env);
    return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clGetProgramInfo(BINARIES)");
  }
  zmlxi_ocl_envelope_seal(env, size, d->identity_hash);
  *binary = env;
  *binary_size = OCL_ENVELOPE_HEADER + size;
  return ZMLX_OK;
}

/* The program must define `entry`; checking at compile time keeps a bad
 * name from being cached as a good binary. */
static zmlx_status check_entry(cl_program prog, const char *entry) {
  cl_int err = CL_SUCCESS;
  cl_kernel k = clCreateKernel(prog, entry, &err);
  if (err != CL_SUCCESS)
    return zmlxi_fail(zmlxi_ocl_status(err, ZMLX_ERR_COMPILE),
                     "OpenCL: program has no usable kernel '%s': %s (%d)", entry,
                     zmlxi_ocl_error_name(err), (int)err);
  clReleaseKernel(k);
  return ZMLX_OK;
}

static zmlx_status ocl_compile(int dev, const char *source, const char *entry, void **binary,
                              size_t *binary_size, char **log) {
  ZMLX_REQUIRE_ARG(source);
  ZMLX_REQUIRE_ARG(entry);
  ZMLX_REQUIRE_ARG(binary);
  ZMLX_REQUIRE_ARG(binary_size);
  if (log) *log = NULL;
  ZMLX_CHECK(check_dev(dev));
  const ocl_dev *d = &g_cl.devs[dev];
  cl_int err = CL_SUCCESS;
  cl_program prog = clCreateProgramWithSource(d->context, 1, &source, NULL, &err);
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clCreateProgramWithSource");
  zmlx_stderr_capture capture;
  zmlxi_stderr_capture_begin(&capture);
  err = clBuildProgram(prog, 1, &d->device, ZMLX_CL_BUILD_OPTIONS, NULL, NULL);
  char *chatter = zmlxi_stderr_capture_end(&capture);
  if (log) *log = build_log(prog, d->device);
  zmlx_status st;
  if (err != CL_SUCCESS) {
    if (log) *log = zmlxi_stderr_append(*log, chatter);
    else free(chatter);
    st = zmlxi_fail(zmlxi_ocl_status(err, ZMLX_ERR_COMPILE), "OpenCL build failed (%s, %d)",
                   zmlxi_ocl_error_name(err), (int)err);
  } else {
    zmlxi_stderr_release(chatter);
    st = check_entry(prog, entry);
  }
  if (st == ZMLX_OK) st = program_binary(d, prog, binary, binary_size);
  clReleaseProgram(prog);
  return st;
}


/* Program from an enveloped binary. The envelope catches damage and other
 * devices' binaries; whatever the driver still refuses fails in
 * clCreateProgramWithBinary or clBuildProgram with a status. */
static zmlx_status program_from_binary(const ocl_dev *d, const void *binary, size_t env_size,
                                       cl_program *out) {
  const unsigned char *bin = NULL;
  size_t size = 0;
  ZMLX_CHECK(zmlxi_ocl_envelope_open(d->identity_hash, binary, env_size, &bin, &size));
  cl_int bin_status = CL_SUCCESS, err = CL_SUCCESS;
  cl_program prog = clCreateProgramWithBinary(d->context, 1, &d->device, &size, &bin,
                                              &bin_status, &err);
  if (err == CL_SUCCESS && bin_status != CL_SUCCESS) err = bin_status;
  if (err != CL_SUCCESS) {
    if (prog) clReleaseProgram(prog);
    return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clCreateProgramWithBinary");
  }
  err = clBuildProgram(prog, 1, &d->device, ZMLX_CL_BUILD_OPTIONS, NULL, NULL);
  if (err != CL_SUCCESS) {
    clReleaseProgram(prog);
    return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clBuildProgram from binary");
  }
  *out = prog;
  return ZMLX_OK;
}

/* Kernel object + its parameter count (launch checks the args against it
 * and learns from it whether the kernel takes dynamic local memory). */
static zmlx_status make_kernel(cl_program prog, cl_device_id device, const char *entry,
                               ocl_function *f) {
  cl_int err = CL_SUCCESS;
  f->kernel = clCreateKernel(prog, entry, &err);
  if (err != CL_SUCCESS)
    return zmlxi_fail(zmlxi_ocl_status(err, ZMLX_ERR_BACKEND), "OpenCL: clCreateKernel('%s') failed: %s (%d)",
                     entry, zmlxi_ocl_error_name(err), (int)err);
  err = clGetKernelInfo(f->kernel, CL_KERNEL_NUM_ARGS, sizeof f->num_args, &f->num_args, NULL);
  if (err != CL_SUCCESS) {
    clReleaseKernel(f->kernel);
    return zmlxi_ocl_fail(err, ZMLX_ERR_BACKEND, "clGetKernelInfo(NUM_ARGS)");
  }
  cl_ulong local = 0;
  err = clGetKernelWorkGroupInfo(f->kernel, device, CL_KERNEL_LOCAL_MEM_SIZE, sizeof local, &local,
                                 NULL);
  f->static_local = err == CL_SUCCESS ? (size_t)local : 0;
  return ZMLX_OK;
}

static zmlx_status ocl_load(int dev, const void *binary, size_t binary_size, const char *entry,
                           void **function) {
  ZMLX_REQUIRE_ARG(binary);
  ZMLX_REQUIRE_ARG(entry);
  ZMLX_REQUIRE_ARG(function);
  ZMLX_CHECK(check_dev(dev));
  ocl_function *f = calloc(1, sizeof *f);
  if (!f) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlx_status st = program_from_binary(&g_cl.devs[dev], binary, binary_size, &f->program);
  if (st == ZMLX_OK) {
    st = make_kernel(f->program, g_cl.devs[dev].device, entry, f);
    if (st != ZMLX_OK) clReleaseProgram(f->program);
  }
  if (st == ZMLX_OK && pthread_mutex_init(&f->lock, NULL) != 0) {
    clReleaseKernel(f->kernel);
    clReleaseProgram(f->program);
    st = zmlxi_fail(ZMLX_ERR_INTERNAL, "OpenCL: pthread_mutex_init failed");
  }
  if (st != ZMLX_OK) {
    free(f);
    return st;
  }
  *function = f;
  return ZMLX_OK;
}

static size_t ocl_static_shared(int dev, void *function) {
  (void)dev;
  return function ? ((ocl_function *)function)->static_local : 0;
}

static void ocl_unload(int dev, void *function) {
  (void)dev;
  ocl_function *f = function;
  if (!f) return;
  clReleaseKernel(f->kernel);
  clReleaseProgram(f->program);
  pthread_mutex_destroy(&f->lock);
  free(f);
}

/* ------------------------------------------------------------ launch */

static zmlx_status ocl_launch(int dev, void *stream, void *function, const uint32_t blocks[3],
                             const uint32_t threads[3], size_t dynamic_shared,
                             const zmlx_launch_arg *args, int n_args) {
  ZMLX_REQUIRE_ARG(function);
  ZMLX_REQUIRE_ARG(blocks);
  ZMLX_REQUIRE_ARG(threads);
  if (n_args > 0) ZMLX_REQUIRE_ARG(args);
  ZMLX_CHECK(check_dev(dev));
  if (threads[0] == 0 || threads[1] == 0 || threads[2] == 0)
    return zmlxi_fail(ZMLX_ERR_LAUNCH, "OpenCL: threadgroup %ux%ux%u has a zero dimension",
                     threads[0], threads[1], threads[2]);
  /* An empty grid is a successful no-op (OpenCL 1.2 rejects it). */
  if (blocks[0] == 0 || blocks[1] == 0 || blocks[2] == 0) return ZMLX_OK;
  ocl_function *f = function;
  pthread_mutex_lock(&f->lock);
  zmlx_status st = zmlxi_ocl_set_args(f, dynamic_shared, args, n_args);
  if (st == ZMLX_OK) st = zmlxi_ocl_enqueue(queue_of(dev, stream), f, blocks, threads);
  pthread_mutex_unlock(&f->lock);
  return st;
}

/* ------------------------------------------------------------ DLPack */

static void *ocl_dlpack_data(void *buffer) { return buffer; }

/* A foreign cl_mem is usable only in this device's context (our queues
 * live there) and must hold `bytes`. No reference is taken: the runtime
 * keeps the producer's DLManagedTensor (and so its cl_mem) alive until the
 * last view goes, then calls the producer's deleter instead of ops->free
 * (runtime/array.c), so a retain here would never be released. Commands
 * already queued hold their own references to the cl_mem. */
static zmlx_status ocl_wrap_foreign(int dev, void *data, size_t bytes, void **buffer) {
  ZMLX_REQUIRE_ARG(data);
  ZMLX_REQUIRE_ARG(buffer);
  ZMLX_CHECK(check_dev(dev));
  cl_mem m = (cl_mem)data;
  cl_context ctx = NULL;
  size_t size = 0;
  cl_int err = clGetMemObjectInfo(m, CL_MEM_CONTEXT, sizeof ctx, &ctx, NULL);
  if (err == CL_SUCCESS) err = clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof size, &size, NULL);
  if (err != CL_SUCCESS) return zmlxi_ocl_fail(err, ZMLX_ERR_INVALID_ARG, "clGetMemObjectInfo");
  if (ctx != g_cl.devs[dev].context)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED,
                     "OpenCL: the foreign cl_mem belongs to another cl_context than device %d's",
                     dev);
  if (size < bytes)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "OpenCL: foreign cl_mem has %zu bytes, %zu needed",
                     size, bytes);
  *buffer = m;
  return ZMLX_OK;
}

/* ------------------------------------------------------------ table */

const zmlx_backend_ops zmlxi_backend_opencl_ops = {
    .kind = ZMLX_BACKEND_OPENCL,
    .name = "opencl",
    .dialect = &zmlxi_dialect_opencl,
    .init = ocl_init,
    .shutdown = ocl_shutdown,
    .device_info = ocl_device_info,
    .cache_identity = ocl_cache_identity,
    .stream_create = ocl_stream_create,
    .stream_destroy = ocl_stream_destroy,
    .stream_sync = ocl_stream_sync,
    .alloc = ocl_alloc,
    .free = ocl_free,
    .write = ocl_write,
    .read = ocl_read,
    .copy = ocl_copy,
    .compile = ocl_compile,
    .load = ocl_load,
    .unload = ocl_unload,
    .static_shared = ocl_static_shared,
    .error_location = zmlxi_log_location_clang,
#ifdef ZMLX_HAVE_CLBLAST
    .gemm = zmlxi_ocl_gemm,
    .gemm_library = zmlxi_ocl_gemm_library,
    .gemm_dtypes = zmlxi_ocl_gemm_dtypes,
#endif
    .launch = ocl_launch,
    .buffer_is_address = 0,
    .dlpack_device_type = 4, /* kDLOpenCL */
    .dlpack_data = ocl_dlpack_data,
    .wrap_foreign = ocl_wrap_foreign,
};

#else
/* Built without OpenCL: only the dialect (dialect.c) is compiled in. ISO C
 * wants at least one declaration per translation unit. */
typedef int zmlx_opencl_backend_disabled;
#endif /* ZMLX_HAVE_OPENCL */
