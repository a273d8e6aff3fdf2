/*
 * CUDA backend: the driver API (through cuda_loader.c, dlopen) and NVRTC
 * (nvrtc.c, dlopen). Built when the CUDA headers are present; runs
 * anywhere: with no driver, no GPU or no NVRTC it reports 0 devices and
 * the runtime falls back to OpenCL.
 *
 * Handles: a buffer is a CUdeviceptr cast to void *, a stream a CUstream,
 * a function a cuda_function (module, entry, parameter sizes and its
 * dynamic shared-memory limit).
 *
 * Every device works in its primary context, the one the CUDA runtime
 * (PyTorch, CuPy, JAX) uses too, so DLPack pointers and streams mean the
 * same thing on both sides.
 *
 * CMake compiles this folder only when the CUDA headers were found
 * (ZMLX_HAVE_CUDA); dialect.c alone is built otherwise.
 */
#include <elf.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/cuda_loader.h"
#include "backends/cuda/gemm_cublas.h"
#include "backends/cuda/nvrtc.h"
#include "runtime/internal.h"

#define CUDA_MAX_DEVICES 64
/* Kernel parameters in one launch: the kernel object passes up to 32
 * arrays (pointer + shape + strides + ndim each), 16 scalars and the 3
 * hidden grid values, 147 in all. */
#define CUDA_MAX_ARGS 160
/* Dynamic shared memory a function gets without opting in. */
#define CUDA_DEFAULT_DYNAMIC_SHARED (48u * 1024u)

typedef struct cuda_device {
  CUdevice dev;
  int ordinal;       /* CUDA's device number */
  CUcontext ctx;     /* retained primary context */
  int use_pools;     /* cuMemAllocAsync / cuMemFreeAsync available */
  zmlx_device_info info;
} cuda_device;

typedef struct cuda_function {
  CUfunction fn;
  CUmodule mod;
  /* The kernel's parameter sizes as the cubin declares them, when the
   * driver can say (n_params -1 otherwise). cuLaunchKernel reads exactly
   * that many pointers and bytes through them: a launch that passes fewer
   * or smaller arguments must be refused here, not crash in the driver. */
  int n_params;
  uint16_t param_size[CUDA_MAX_ARGS];
  /* Largest dynamic shared size the function is allowed so far. Raised
   * under `lock` only; launches read it without the lock. */
  atomic_size_t shared_limit;
  size_t static_shared; /* CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES */
  pthread_mutex_t lock;
} cuda_function;

static cuda_device devices[CUDA_MAX_DEVICES];
static int n_devices;
static int probed;
static int driver_version;
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;

/* ------------------------------------------------------------------ errors */

static zmlx_status cu_status(CUresult r, zmlx_status otherwise) {
  return r == CUDA_ERROR_OUT_OF_MEMORY ? ZMLX_ERR_OUT_OF_MEMORY : otherwise;
}

/* "<what>: CUDA_ERROR_X: description". */
static zmlx_status cu_fail(zmlx_status s, const char *what, CUresult r) {
  char text[256];
  zmlxi_cu_describe(r, text, sizeof text);
  return zmlxi_fail(cu_status(r, s), "%s: %s", what, text);
}

static zmlx_status check_device(int dev) {
  if (dev >= 0 && dev < n_devices) return ZMLX_OK;
  return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "CUDA device %d does not exist (%d found)", dev,
                   n_devices);
}

/* Make the device's primary context current on this thread. Asked of the
 * driver each time rather than cached: code sharing the thread (PyTorch's
 * set_device, another library) may switch contexts behind our back, and
 * the query costs tens of nanoseconds. */
static zmlx_status make_current(int dev) {
  CUcontext cur = NULL;
  if (zmlxi_cu.CtxGetCurrent(&cur) == CUDA_SUCCESS && cur == devices[dev].ctx) return ZMLX_OK;
  CUresult r = zmlxi_cu.CtxSetCurrent(devices[dev].ctx);
  return r == CUDA_SUCCESS ? ZMLX_OK : cu_fail(ZMLX_ERR_BACKEND, "cuCtxSetCurrent", r);
}

static zmlx_status enter(int dev) {
  ZMLX_CHECK(check_device(dev));
  return make_current(dev);
}

static CUdeviceptr dptr(const void *buffer, size_t offset) {
  return (CUdeviceptr)(uintptr_t)buffer + (CUdeviceptr)offset;
}

/* ------------------------------------------------------------------ probe */

static int attribute(CUdevice d, CUdevice_attribute a) {
  int v = 0;
  if (zmlxi_cu.DeviceGetAttribute(&v, a, d) != CUDA_SUCCESS) return 0;
  return v;
}

/* "sm_XY", with the "a" suffix from Hopper on: an arch-specific cubin may
 * use wgmma / setmaxnreg, and is compiled per device anyway. */
static void arch_name(int major, int minor, char *buf, size_t cap) {
  snprintf(buf, cap, "sm_%d%d%s", major, minor, major >= 9 ? "a" : "");
}

static void fill_info(cuda_device *d, int index) {
  zmlx_device_info *info = &d->info;
  const int major = attribute(d->dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
  const int minor = attribute(d->dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
  memset(info, 0, sizeof *info);
  info->backend = ZMLX_BACKEND_CUDA;
  info->index = index;
  if (zmlxi_cu.DeviceGetName(info->name, (int)sizeof info->name, d->dev) != CUDA_SUCCESS)
    snprintf(info->name, sizeof info->name, "CUDA device %d", d->ordinal);
  snprintf(info->version, sizeof info->version, "compute capability %d.%d", major, minor);
  arch_name(major, minor, info->arch, sizeof info->arch);
  size_t mem = 0;
  if (zmlxi_cu.DeviceTotalMem(&mem, d->dev) == CUDA_SUCCESS) info->total_memory = mem;
  int shared = attribute(d->dev, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN);
  if (shared <= 0) shared = attribute(d->dev, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK);
  info->max_shared_memory = (size_t)shared;
  info->max_threads_per_threadgroup = attribute(d->dev, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK);
  info->simd_width = 32;
  info->compute_units = attribute(d->dev, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
  info->has_fp16 = 1;
  info->has_mma = major >= 8; /* mma.sync m16n8k16 f16 / bf16, ldmatrix */
  info->has_wgmma = major == 9; /* sm_90a only: Blackwell's products are tcgen05 */
  info->has_fp64 = 1;
  info->max_threadgroups[0] = attribute(d->dev, CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X);
  info->max_threadgroups[1] = attribute(d->dev, CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y);
  info->max_threadgroups[2] = attribute(d->dev, CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z);
  info->is_cpu = 0;
}

/* The default pool's release threshold is 0: it hands its memory back to
 * the OS at every synchronization, so each allocation after a sync pays
 * for a driver allocation again. Keep it, as PyTorch's caching allocator
 * would. Best effort: a failure only costs speed. */
static void keep_pool_memory(CUdevice d) {
  CUmemoryPool pool;
  if (zmlxi_cu.DeviceGetDefaultMemPool(&pool, d) != CUDA_SUCCESS) return;
  cuuint64_t threshold = UINT64_MAX;
  (void)zmlxi_cu.MemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &threshold);
}

/* Open CUDA device `ordinal` as zmlx device `index`; 0 if it cannot work. */
static int open_device(int ordinal, int index, cuda_device *d) {
  memset(d, 0, sizeof *d);
  d->ordinal = ordinal;
  if (zmlxi_cu.DeviceGet(&d->dev, ordinal) != CUDA_SUCCESS) return 0;
  if (zmlxi_cu.DevicePrimaryCtxRetain(&d->ctx, d->dev) != CUDA_SUCCESS) return 0;
  d->use_pools = zmlxi_cu.MemAllocAsync && zmlxi_cu.MemFreeAsync &&
                 attribute(d->dev, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED);
  if (d->use_pools && zmlxi_cu.DeviceGetDefaultMemPool && zmlxi_cu.MemPoolSetAttribute)
    keep_pool_memory(d->dev);
  fill_info(d, index);
  return 1;
}

/* No driver, a failing cuInit (stub library, no GPU, driver too old) or no
 * NVRTC to compile with: CUDA is simply absent, never an error. */
static void probe(void) {
  n_devices = 0;
  if (!zmlxi_cu_load() || zmlxi_cu.Init(0) != CUDA_SUCCESS || !zmlxi_nvrtc_available()) return;
  int total = 0;
  if (zmlxi_cu.DeviceGetCount(&total) != CUDA_SUCCESS) return;
  if (zmlxi_cu.DriverGetVersion(&driver_version) != CUDA_SUCCESS) driver_version = 0;
  for (int i = 0; i < total && n_devices < CUDA_MAX_DEVICES; i++)
    if (open_device(i, n_devices, &devices[n_devices])) n_devices++;
}

static zmlx_status cuda_init(int *device_count) {
  ZMLX_REQUIRE_ARG(device_count);
  pthread_mutex_lock(&state_lock);
  if (!probed) {
    probe();
    probed = 1;
  }
  *device_count = n_devices;
  pthread_mutex_unlock(&state_lock);
  return ZMLX_OK;
}

/* Drop our references to the primary contexts (the driver destroys a
 * context when its last user lets go). libcuda stays loaded. */
static void cuda_shutdown(void) {
  zmlxi_cublas_shutdown();
  pthread_mutex_lock(&state_lock);
  for (int i = 0; i < n_devices; i++) (void)zmlxi_cu.DevicePrimaryCtxRelease(devices[i].dev);
  n_devices = 0;
  probed = 0;
  pthread_mutex_unlock(&state_lock);
}

static zmlx_status cuda_device_info(int dev, zmlx_device_info *info) {
  ZMLX_REQUIRE_ARG(info);
  ZMLX_CHECK(check_device(dev));
  *info = devices[dev].info;
  return ZMLX_OK;
}

static zmlx_status cuda_cache_identity(int dev, char *buf, size_t cap) {
  ZMLX_REQUIRE_ARG(buf);
  ZMLX_CHECK(check_device(dev));
  int major = 0, minor = 0;
  ZMLX_CHECK(zmlxi_nvrtc_version(&major, &minor));
  int n = snprintf(buf, cap, "cuda %s; driver %d; nvrtc %d.%d", devices[dev].info.arch,
                   driver_version, major, minor);
  if (n < 0 || (size_t)n >= cap)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "CUDA cache identity needs %d bytes, got %zu", n + 1,
                     cap);
  return ZMLX_OK;
}

/* ----------------------------------------------------------------- streams */

static zmlx_status cuda_stream_create(int dev, void **stream) {
  ZMLX_REQUIRE_ARG(stream);
  ZMLX_CHECK(enter(dev));
  CUstream s = NULL;
  /* Non-blocking: no implicit ordering with the legacy NULL stream that
   * other libraries in the process may be using. */
  CUresult r = zmlxi_cu.StreamCreate(&s, CU_STREAM_NON_BLOCKING);
  if (r != CUDA_SUCCESS) return cu_fail(ZMLX_ERR_BACKEND, "cuStreamCreate", r);
  *stream = s;
  return ZMLX_OK;
}

static void cuda_stream_destroy(int dev, void *stream) {
  if (!stream || enter(dev) != ZMLX_OK) return;
  (void)zmlxi_cu.StreamDestroy((CUstream)stream);
}

static zmlx_status cuda_stream_sync(int dev, void *stream) {
  ZMLX_CHECK(enter(dev));
  CUresult r = zmlxi_cu.StreamSynchronize((CUstream)stream);
  return r == CUDA_SUCCESS ? ZMLX_OK : cu_fail(ZMLX_ERR_BACKEND, "cuStreamSynchronize", r);
}

/* ------------------------------------------------------------------ memory */

static zmlx_status cuda_alloc(int dev, void *stream, size_t bytes, void **buffer) {
  ZMLX_REQUIRE_ARG(buffer);
  ZMLX_CHECK(enter(dev));
  if (bytes == 0) bytes = 1; /* a distinct, valid pointer for empty arrays */
  CUdeviceptr p = 0;
  const int pools = devices[dev].use_pools;
  CUresult r = pools ? zmlxi_cu.MemAllocAsync(&p, bytes, (CUstream)stream)
                     : zmlxi_cu.MemAlloc(&p, bytes);
  if (r != CUDA_SUCCESS) {
    char text[256];
    zmlxi_cu_describe(r, text, sizeof text);
    return zmlxi_fail(cu_status(r, ZMLX_ERR_BACKEND), "%s of %zu bytes on %s: %s",
                     pools ? "cuMemAllocAsync" : "cuMemAlloc", bytes, devices[dev].info.name,
                     text);
  }
  *buffer = (void *)(uintptr_t)p;
  return ZMLX_OK;
}

static void cuda_free(int dev, void *stream, void *buffer) {
  if (!buffer || enter(dev) != ZMLX_OK) return;
  if (devices[dev].use_pools)
    (void)zmlxi_cu.MemFreeAsync(dptr(buffer, 0), (CUstream)stream);
  else
    (void)zmlxi_cu.MemFree(dptr(buffer, 0));
}

static zmlx_status sync_after(void *stream, const char *what, CUresult r) {
  if (r != CUDA_SUCCESS) return cu_fail(ZMLX_ERR_BACKEND, what, r);
  r = zmlxi_cu.StreamSynchronize((CUstream)stream);
  return r == CUDA_SUCCESS ? ZMLX_OK : cu_fail(ZMLX_ERR_BACKEND, "cuStreamSynchronize", r);
}

/* Synchronizes before returning so the caller may reuse `src` at once. */
static zmlx_status cuda_write(int dev, void *stream, void *buffer, size_t offset, const void *src,
                              size_t bytes) {
  if (bytes == 0) return ZMLX_OK;
  ZMLX_REQUIRE_ARG(buffer);
  ZMLX_REQUIRE_ARG(src);
  ZMLX_CHECK(enter(dev));
  CUresult r = zmlxi_cu.MemcpyHtoDAsync(dptr(buffer, offset), src, bytes, (CUstream)stream);
  return sync_after(stream, "cuMemcpyHtoDAsync", r);
}

static zmlx_status cuda_read(int dev, void *stream, const void *buffer, size_t offset, void *dst,
                             size_t bytes) {
  if (bytes == 0) return ZMLX_OK;
  ZMLX_REQUIRE_ARG(buffer);
  ZMLX_REQUIRE_ARG(dst);
  ZMLX_CHECK(enter(dev));
  CUresult r = zmlxi_cu.MemcpyDtoHAsync(dst, dptr(buffer, offset), bytes, (CUstream)stream);
  return sync_after(stream, "cuMemcpyDtoHAsync", r);
}

static zmlx_status cuda_copy(int dev, void *stream, void *dst, size_t dst_offset, const void *src,
                             size_t src_offset, size_t bytes) {
  if (bytes == 0) return ZMLX_OK;
  ZMLX_REQUIRE_ARG(dst);
  ZMLX_REQUIRE_ARG(src);
  ZMLX_CHECK(enter(dev));
  CUresult r = zmlxi_cu.MemcpyDtoDAsync(dptr(dst, dst_offset), dptr(src, src_offset), bytes,
                                       (CUstream)stream);
  return r == CUDA_SUCCESS ? ZMLX_OK : cu_fail(ZMLX_ERR_BACKEND, "cuMemcpyDtoDAsync", r);
}

/* ------------------------------------------------------- compile and load */

static zmlx_status cuda_compile(int dev, const char *source, const char *entry, void **binary,
                                size_t *binary_size, char **log) {
  ZMLX_REQUIRE_ARG(entry);
  ZMLX_CHECK(check_device(dev));
  char name[256]; /* "<entry>.cu": how the kernel is named in NVRTC's log */
  snprintf(name, sizeof name, "%s.cu", entry);
  return zmlxi_nvrtc_compile(source, name, devices[dev].info.arch, binary, binary_size, log);
}

static int range_ok(uint64_t offset, uint64_t count, uint64_t each, size_t size) {
  if (each != 0 && count > UINT64_MAX / each) return 0;
  const uint64_t bytes = count * each;
  return offset <= size && bytes <= size - offset;
}

/* cuModuleLoadData takes no size: it trusts the ELF headers, and reads
 * anything that is not ELF as NUL-terminated PTX. So a cubin from disk is
 * checked first: a 64-bit little-endian CUDA ELF whose header tables and
 * sections all lie inside the bytes we have. */
static zmlx_status check_cubin(const void *binary, size_t size) {
  const unsigned char *b = binary;
  Elf64_Ehdr eh;
  if (size < sizeof eh || memcmp(b, ELFMAG, SELFMAG) != 0 || b[EI_CLASS] != ELFCLASS64 ||
      b[EI_DATA] != ELFDATA2LSB)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "not a cubin: no 64-bit ELF header (%zu bytes)", size);
  memcpy(&eh, b, sizeof eh);
  if (eh.e_machine != EM_CUDA)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "not a cubin: ELF machine %u is not CUDA",
                     (unsigned)eh.e_machine);
  if ((eh.e_shnum && eh.e_shentsize != sizeof(Elf64_Shdr)) ||
      !range_ok(eh.e_shoff, eh.e_shnum, eh.e_shentsize, size) ||
      !range_ok(eh.e_phoff, eh.e_phnum, eh.e_phentsize, size))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "corrupt cubin: header tables past its %zu bytes",
                     size);
  for (unsigned i = 0; i < eh.e_shnum; i++) {
    Elf64_Shdr sh;
    memcpy(&sh, b + eh.e_shoff + (size_t)i * sizeof sh, sizeof sh);
    if (sh.sh_type != SHT_NOBITS && !range_ok(sh.sh_offset, sh.sh_size, 1, size))
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "corrupt cubin: section %u past its %zu bytes", i,
                       size);
  }
  return ZMLX_OK;
}

/* The driver parses the image in place; a cubin read from a cache file may
 * sit at any offset in its buffer, so misaligned images are copied. */
static CUresult load_module(CUmodule *mod, const void *binary, size_t size) {
  if (((uintptr_t)binary & 15u) == 0) return zmlxi_cu.ModuleLoadData(mod, binary);
  void *copy = aligned_alloc(16, (size + 15u) & ~(size_t)15u);
  if (!copy) return CUDA_ERROR_OUT_OF_MEMORY;
  memcpy(copy, binary, size);
  CUresult r = zmlxi_cu.ModuleLoadData(mod, copy);
  free(copy);
  return r;
}

/* The driver can report each parameter's size (cuFuncGetParamInfo), but the
 * only way to learn the count is to ask past the end and get an error, which
 * compute-sanitizer reports as an API error on every load. Launch arguments
 * are built from the same spec that rendered the signature, so the check is
 * left to that single place (src/kernel/kernel.c) and skipped here. */
static void read_param_sizes(cuda_function *f) { f->n_params = -1; }

static zmlx_status new_function(CUmodule mod, CUfunction fn, void **function) {
  cuda_function *f = malloc(sizeof *f);
  if (!f) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  f->fn = fn;
  f->mod = mod;
  read_param_sizes(f);
  int static_bytes = 0;
  if (zmlxi_cu.FuncGetAttribute(&static_bytes, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, fn) != CUDA_SUCCESS)
    static_bytes = 0;
  f->static_shared = static_bytes > 0 ? (size_t)static_bytes : 0;
  atomic_init(&f->shared_limit, CUDA_DEFAULT_DYNAMIC_SHARED);
  pthread_mutex_init(&f->lock, NULL);
  *function = f;
  return ZMLX_OK;
}

static zmlx_status cuda_load(int dev, const void *binary, size_t binary_size, const char *entry,
                             void **function) {
  ZMLX_REQUIRE_ARG(binary);
  ZMLX_REQUIRE_ARG(entry);
  ZMLX_REQUIRE_ARG(function);
  ZMLX_CHECK(check_cubin(binary, binary_size));
  ZMLX_CHECK(enter(dev));
  CUmodule mod = NULL;
  CUresult r = load_module(&mod, binary, binary_size);
  if (r != CUDA_SUCCESS) return cu_fail(ZMLX_ERR_BACKEND, "cuModuleLoadData", r);
  CUfunction fn = NULL;
  r = zmlxi_cu.ModuleGetFunction(&fn, mod, entry);
  if (r != CUDA_SUCCESS) {
    (void)zmlxi_cu.ModuleUnload(mod);
    char what[320];
    snprintf(what, sizeof what, "cuModuleGetFunction('%s')", entry);
    return cu_fail(ZMLX_ERR_BACKEND, what, r);
  }
  zmlx_status st = new_function(mod, fn, function);
  if (st != ZMLX_OK) (void)zmlxi_cu.ModuleUnload(mod);
  return st;
}

static size_t cuda_static_shared(int dev, void *function) {
  (void)dev;
  return function ? ((cuda_function *)function)->static_shared : 0;
}

static void cuda_unload(int dev, void *function) {
  cuda_function *f = function;
  if (!f) return;
  if (enter(dev) == ZMLX_OK) (void)zmlxi_cu.ModuleUnload(f->mod);
  pthread_mutex_destroy(&f->lock);
  free(f);
}

/* ------------------------------------------------------------------ launch */

/* Past 48 KiB a function must opt in to more dynamic shared memory. The
 * limit only grows, and only under the lock, so a launch that reads a
 * limit >= its need knows the attribute is already set that high. */
static zmlx_status raise_shared_limit(cuda_function *f, size_t bytes, int dev) {
  zmlx_status st = ZMLX_OK;
  pthread_mutex_lock(&f->lock);
  if (bytes > atomic_load_explicit(&f->shared_limit, memory_order_relaxed)) {
    CUresult r = bytes > (size_t)INT32_MAX
                     ? CUDA_ERROR_INVALID_VALUE
                     : zmlxi_cu.FuncSetAttribute(f->fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                                (int)bytes);
    if (r == CUDA_SUCCESS) {
      atomic_store_explicit(&f->shared_limit, bytes, memory_order_release);
    } else {
      char text[256];
      zmlxi_cu_describe(r, text, sizeof text);
      st = zmlxi_fail(ZMLX_ERR_LAUNCH,
                     "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES = %zu): %s (%s allows %zu "
                     "bytes per threadgroup)",
                     bytes, text, devices[dev].info.name, devices[dev].info.max_shared_memory);
    }
  }
  pthread_mutex_unlock(&f->lock);
  return st;
}

static zmlx_status launch_failed(CUresult r, const uint32_t blocks[3], const uint32_t threads[3],
                                 size_t shared) {
  char text[256];
  zmlxi_cu_describe(r, text, sizeof text);
  return zmlxi_fail(cu_status(r, ZMLX_ERR_LAUNCH),
                   "cuLaunchKernel: %s (%u x %u x %u threadgroups of %u x %u x %u threads, %zu "
                   "bytes of dynamic shared memory)",
                   text, blocks[0], blocks[1], blocks[2], threads[0], threads[1], threads[2],
                   shared);
}

static zmlx_status bad_arguments(const cuda_function *f, int n_args, int i, size_t given) {
  if (i < 0)
    return zmlxi_fail(ZMLX_ERR_LAUNCH, "CUDA launch: the kernel takes %d parameters, %d were passed",
                     f->n_params, n_args);
  return zmlxi_fail(ZMLX_ERR_LAUNCH,
                   "CUDA launch: parameter %d of the kernel has %u bytes, the argument %zu", i,
                   (unsigned)f->param_size[i], given);
}

/* The hot path (target: a few microseconds of host time end to end):
 * parameters are laid out on the stack, nothing is allocated. */
static zmlx_status cuda_launch(int dev, void *stream, void *function, const uint32_t blocks[3],
                               const uint32_t threads[3], size_t dynamic_shared,
                               const zmlx_launch_arg *args, int n_args) {
  cuda_function *f = function;
  if (!f || (n_args > 0 && !args) || n_args < 0 || n_args > CUDA_MAX_ARGS)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "CUDA launch: bad function or %d arguments (max %d)",
                     n_args, CUDA_MAX_ARGS);
  const int checked = f->n_params >= 0;
  if (checked && n_args != f->n_params) return bad_arguments(f, n_args, -1, 0);
  void *params[CUDA_MAX_ARGS];
  CUdeviceptr pointers[CUDA_MAX_ARGS];
  for (int i = 0; i < n_args; i++) {
    const size_t size = args[i].kind == ZMLX_ARG_BUFFER ? sizeof(CUdeviceptr) : args[i].size;
    if (checked && size != f->param_size[i]) return bad_arguments(f, n_args, i, size);
    if (args[i].kind == ZMLX_ARG_BUFFER) {
      pointers[i] = dptr(args[i].buffer, args[i].byte_offset);
      params[i] = &pointers[i];
    } else if (args[i].value) {
      params[i] = (void *)args[i].value; /* the driver only reads it */
    } else {
      return zmlxi_fail(ZMLX_ERR_NULL_ARG, "CUDA launch: scalar argument %d has no value", i);
    }
  }
  ZMLX_CHECK(enter(dev));
  if (dynamic_shared > atomic_load_explicit(&f->shared_limit, memory_order_acquire))
    ZMLX_CHECK(raise_shared_limit(f, dynamic_shared, dev));
  CUresult r = zmlxi_cu.LaunchKernel(f->fn, blocks[0], blocks[1], blocks[2], threads[0], threads[1],
                                    threads[2], (unsigned int)dynamic_shared, (CUstream)stream,
                                    params, NULL);
  return r == CUDA_SUCCESS ? ZMLX_OK : launch_failed(r, blocks, threads, dynamic_shared);
}

/* ------------------------------------------------------------------ DLPack */

static void *cuda_dlpack_data(void *buffer) { return buffer; }

/* A DLPack kDLCUDA pointer is used as is (not owned). When the driver can
 * tell, the pointer must be CUDA memory of this very device. */
/* cuBLAS in the device's context. */
static zmlx_status cuda_gemm(int dev, void *stream, const zmlx_gemm_args *g) {
  ZMLX_CHECK(enter(dev));
  return zmlxi_cublas_gemm(dev, stream, g);
}

static zmlx_status cuda_wrap_foreign(int dev, void *data, size_t bytes, void **buffer) {
  ZMLX_REQUIRE_ARG(buffer);
  ZMLX_CHECK(enter(dev));
  if (!data && bytes > 0)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "DLPack tensor of %zu bytes has a NULL data pointer", bytes);
  if (data && zmlxi_cu.PointerGetAttribute) {
    int ordinal = -1;
    CUresult r = zmlxi_cu.PointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                             dptr(data, 0));
    if (r != CUDA_SUCCESS) return cu_fail(ZMLX_ERR_INVALID_ARG, "DLPack pointer is not CUDA memory", r);
    if (ordinal != devices[dev].ordinal)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG,
                       "DLPack pointer lives on CUDA device %d, not on device %d (%s)", ordinal,
                       devices[dev].ordinal, devices[dev].info.name);
  }
  *buffer = data;
  return ZMLX_OK;
}

/* ------------------------------------------------------------ graphs */

static zmlx_status cuda_alloc_unordered(int dev, size_t bytes, void **buffer) {
  ZMLX_REQUIRE_ARG(buffer);
  ZMLX_CHECK(enter(dev));
  CUdeviceptr p = 0;
  CUresult r = zmlxi_cu.MemAlloc(&p, bytes ? bytes : 1);
  if (r != CUDA_SUCCESS) {
    char text[256];
    zmlxi_cu_describe(r, text, sizeof text);
    return zmlxi_fail(cu_status(r, ZMLX_ERR_BACKEND), "cuMemAlloc of %zu bytes on %s: %s", bytes,
                     devices[dev].info.name, text);
  }
  *buffer = (void *)(uintptr_t)p;
  return ZMLX_OK;
}

static void cuda_free_unordered(int dev, void *buffer) {
  if (!buffer || enter(dev) != ZMLX_OK) return;
  (void)zmlxi_cu.MemFree(dptr(buffer, 0));
}

static int have_graphs(void) {
  return zmlxi_cu.StreamBeginCapture && zmlxi_cu.StreamEndCapture && zmlxi_cu.GraphInstantiate &&
         zmlxi_cu.GraphLaunch && zmlxi_cu.GraphExecDestroy && zmlxi_cu.GraphDestroy;
}

/* Relaxed mode: allocations (cuMemAlloc, outside the stream's order) stay
 * allowed while the stream captures. */
static zmlx_status cuda_capture_begin(int dev, void *stream) {
  if (!have_graphs())
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "this CUDA driver has no stream capture");
  ZMLX_CHECK(enter(dev));
  CUresult r = zmlxi_cu.StreamBeginCapture((CUstream)stream, CU_STREAM_CAPTURE_MODE_RELAXED);
  return r == CUDA_SUCCESS ? ZMLX_OK : cu_fail(ZMLX_ERR_BACKEND, "cuStreamBeginCapture", r);
}

static zmlx_status cuda_capture_end(int dev, void *stream, int keep, void **graph) {
  *graph = NULL;
  ZMLX_CHECK(enter(dev));
  CUgraph g = NULL;
  CUresult r = zmlxi_cu.StreamEndCapture((CUstream)stream, &g);
  if (r != CUDA_SUCCESS) {
    if (g) zmlxi_cu.GraphDestroy(g);
    return keep ? cu_fail(ZMLX_ERR_BACKEND, "cuStreamEndCapture", r) : ZMLX_OK;
  }
  if (!keep) {
    zmlxi_cu.GraphDestroy(g);
    return ZMLX_OK;
  }
  CUgraphExec exec = NULL;
  r = zmlxi_cu.GraphInstantiate(&exec, g, 0);
  zmlxi_cu.GraphDestroy(g);
  if (r != CUDA_SUCCESS) return cu_fail(ZMLX_ERR_BACKEND, "cuGraphInstantiate", r);
  *graph = exec;
  return ZMLX_OK;
}

static zmlx_status cuda_graph_launch(int dev, void *stream, void *graph) {
  ZMLX_CHECK(enter(dev));
  CUresult r = zmlxi_cu.GraphLaunch((CUgraphExec)graph, (CUstream)stream);
  return r == CUDA_SUCCESS ? ZMLX_OK : cu_fail(ZMLX_ERR_BACKEND, "cuGraphLaunch", r);
}

static void cuda_graph_destroy(int dev, void *graph) {
  if (!graph || enter(dev) != ZMLX_OK) return;
  zmlxi_cu.GraphExecDestroy((CUgraphExec)graph);
}

const zmlx_backend_ops zmlxi_backend_cuda_ops = {
    .kind = ZMLX_BACKEND_CUDA,
    .name = "cuda",
    .dialect = &zmlxi_dialect_cuda,
    .init = cuda_init,
    .shutdown = cuda_shutdown,
    .device_info = cuda_device_info,
    .cache_identity = cuda_cache_identity,
    .stream_create = cuda_stream_create,
    .stream_destroy = cuda_stream_destroy,
    .stream_sync = cuda_stream_sync,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .write = cuda_write,
    .read = cuda_read,
    .copy = cuda_copy,
    .compile = cuda_compile,
    .load = cuda_load,
    .unload = cuda_unload,
    .static_shared = cuda_static_shared,
    .error_location = zmlxi_log_location_nvrtc,
    .launch = cuda_launch,
    .buffer_is_address = 1,
    .dlpack_device_type = 2, /* kDLCUDA */
    .dlpack_data = cuda_dlpack_data,
    .wrap_foreign = cuda_wrap_foreign,
    .gemm = cuda_gemm,
    .gemm_library = zmlxi_cublas_library,
    .gemm_dtypes = zmlxi_cublas_dtypes,
    .gemm_rounds_once = zmlxi_cublas_rounds_once,
    .alloc_unordered = cuda_alloc_unordered,
    .free_unordered = cuda_free_unordered,
    .capture_begin = cuda_capture_begin,
    .capture_end = cuda_capture_end,
    .graph_launch = cuda_graph_launch,
    .graph_destroy = cuda_graph_destroy,
};

