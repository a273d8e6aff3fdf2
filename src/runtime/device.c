/* Backend registry, devices, default-device choice and streams. */
#include "runtime/graph.h"
#include "runtime/internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct backend_slot {
  const zmlx_backend_ops *ops; /* NULL: not compiled in, or source_only */
  int source_only;             /* a dialect without a runtime (Metal) */
  pthread_mutex_t lock;        /* guards the first init */
  _Atomic int initialised;
  zmlx_status init_status;
  char init_error[512];
  int count;
  zmlx_device *devices;
} backend_slot;

/* The registry: one line per backend compiled in. The order of the enum is
 * the order of preference for the default device (CUDA, then OpenCL);
 * Metal emits source only and has no runtime table. Adding a backend: its
 * folder under src/backends, an enum value, and a line here. */
static backend_slot slots[ZMLX_BACKEND_COUNT] = {
#ifdef ZMLX_HAVE_CUDA
    [ZMLX_BACKEND_CUDA] = {.ops = &zmlxi_backend_cuda_ops, .lock = PTHREAD_MUTEX_INITIALIZER},
#endif
#ifdef ZMLX_HAVE_OPENCL
    [ZMLX_BACKEND_OPENCL] = {.ops = &zmlxi_backend_opencl_ops, .lock = PTHREAD_MUTEX_INITIALIZER},
#endif
    [ZMLX_BACKEND_METAL] = {.source_only = 1},
};

static _Atomic(zmlx_device *) default_device;

const char *zmlx_backend_name(zmlx_backend b) {
  switch (b) {
    case ZMLX_BACKEND_AUTO: return "auto";
    case ZMLX_BACKEND_CUDA: return "cuda";
    case ZMLX_BACKEND_OPENCL: return "opencl";
    case ZMLX_BACKEND_METAL: return "metal";
    default: return "?";
  }
}

zmlx_status zmlx_backend_from_name(const char *name, zmlx_backend *out) {
  ZMLX_REQUIRE_ARG(name);
  ZMLX_REQUIRE_ARG(out);
  for (int b = 0; b < ZMLX_BACKEND_COUNT; b++) {
    if (!strcmp(name, zmlx_backend_name((zmlx_backend)b))) {
      *out = (zmlx_backend)b;
      return ZMLX_OK;
    }
  }
  return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "unknown backend '%s' (expected cuda, opencl, metal or auto)",
                   name);
}

const zmlx_dialect *zmlxi_dialect_for(zmlx_backend b) {
  switch (b) {
    case ZMLX_BACKEND_CUDA: return &zmlxi_dialect_cuda;
    case ZMLX_BACKEND_OPENCL: return &zmlxi_dialect_opencl;
    case ZMLX_BACKEND_METAL: return &zmlxi_dialect_metal;
    default: return NULL;
  }
}

static zmlx_status make_device(backend_slot *slot, int index, zmlx_device *dev) {
  dev->ops = slot->ops;
  dev->index = index;
  ZMLX_CHECK(slot->ops->device_info(index, &dev->info));
  dev->info.backend = slot->ops->kind;
  /* Whether the SIMD helpers are native is the dialect's to say (the
   * prelude implements them), one fact for generators and launches. */
  dev->info.native_simd = slot->ops->dialect->native_simd;
  dev->info.index = index;
  ZMLX_CHECK(slot->ops->cache_identity(index, dev->cache_identity, sizeof dev->cache_identity));
  zmlx_stream *s = calloc(1, sizeof *s);
  if (!s) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  s->device = dev;
  s->is_default = 1;
  zmlx_status st = slot->ops->stream_create(index, &s->handle);
  if (st != ZMLX_OK) {
    free(s);
    return st;
  }
  dev->default_stream = s;
  pthread_mutex_init(&dev->streams_lock, NULL);
  return ZMLX_OK;
}

static void init_slot(backend_slot *slot) {
  int count = 0;
  slot->init_status = slot->ops->init(&count);
  if (slot->init_status == ZMLX_OK && count > 0) {
    slot->devices = calloc((size_t)count, sizeof *slot->devices);
    if (!slot->devices) slot->init_status = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  }
  for (int i = 0; slot->init_status == ZMLX_OK && i < count; i++) {
    slot->init_status = make_device(slot, i, &slot->devices[i]);
    if (slot->init_status == ZMLX_OK) slot->count = i + 1;
  }
  if (slot->init_status != ZMLX_OK)
    snprintf(slot->init_error, sizeof slot->init_error, "%s", zmlx_last_error());
}


/* Initialise one backend on first use; the result is remembered. */
static zmlx_status backend_init(zmlx_backend b, backend_slot **out) {
  if ((unsigned)b >= ZMLX_BACKEND_COUNT || b == ZMLX_BACKEND_AUTO)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "invalid backend %d", (int)b);
  backend_slot *slot = &slots[b];
  if (slot->source_only)
    return zmlxi_fail(ZMLX_ERR_NO_DEVICE, "the %s backend emits source only (zmlx_kernel_source); "
                     "it has no devices", zmlx_backend_name(b));
  if (!slot->ops)
    return zmlxi_fail(ZMLX_ERR_NO_DEVICE, "the %s backend was not compiled into this build",
                     zmlx_backend_name(b));
  if (!atomic_load(&slot->initialised)) {
    pthread_mutex_lock(&slot->lock);
    if (!atomic_load(&slot->initialised)) {
      init_slot(slot);
      atomic_store(&slot->initialised, 1);
    }
    pthread_mutex_unlock(&slot->lock);
  }
  if (slot->init_status != ZMLX_OK)
    return zmlxi_fail(slot->init_status, "%s", slot->init_error);
  *out = slot;
  return ZMLX_OK;
}

zmlx_status zmlx_device_count(zmlx_backend b, int *count) {
  ZMLX_REQUIRE_ARG(count);
  *count = 0;
  if (b == ZMLX_BACKEND_AUTO) {
    zmlx_device *d = NULL;
    ZMLX_CHECK(zmlx_default_device(&d));
    return zmlx_device_count(d->ops->kind, count);
  }
  backend_slot *slot = NULL;
  ZMLX_CHECK(backend_init(b, &slot));
  *count = slot->count;
  return ZMLX_OK;
}

zmlx_backend zmlxi_backend_for_dlpack(int device_type) {
  for (int b = 0; b < ZMLX_BACKEND_COUNT; b++)
    if (slots[b].ops && slots[b].ops->dlpack_device_type == device_type) return (zmlx_backend)b;
  return ZMLX_BACKEND_AUTO;
}

int zmlx_backend_available(zmlx_backend b) {
  int n = 0;
  if (b == ZMLX_BACKEND_AUTO) { /* any backend with a device */
    zmlx_device *d = NULL;
    int ok = zmlx_default_device(&d) == ZMLX_OK;
    if (!ok) zmlx_clear_error();
    return ok;
  }
  if (zmlx_device_count(b, &n) != ZMLX_OK) return 0;
  return n > 0;
}

zmlx_status zmlx_device_get(zmlx_backend b, int index, zmlx_device **out) {
  ZMLX_REQUIRE_ARG(out);
  if (b == ZMLX_BACKEND_AUTO) {
    zmlx_device *d = NULL;
    ZMLX_CHECK(zmlx_default_device(&d));
    b = d->ops->kind;
  }
  backend_slot *slot = NULL;
  ZMLX_CHECK(backend_init(b, &slot));
  if (index < 0 || index >= slot->count)
    return zmlxi_fail(ZMLX_ERR_NO_DEVICE, "%s device %d does not exist (%d available)",
                     zmlx_backend_name(b), index, slot->count);
  *out = &slot->devices[index];
  return ZMLX_OK;
}

/* $ZMLX_BACKEND / $ZMLX_DEVICE, else CUDA 0, else OpenCL 0. */
static zmlx_status choose_default(zmlx_device **out) {
  const char *env_b = getenv("ZMLX_BACKEND");
  const char *env_d = getenv("ZMLX_DEVICE");
  int index = 0;
  if (env_d && *env_d) {
    char *end;
    long v = strtol(env_d, &end, 10);
    if (*end || v < 0 || v > 1 << 20)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "ZMLX_DEVICE='%s' is not a device index", env_d);
    index = (int)v;
  }
  if (env_b && *env_b && strcmp(env_b, "auto")) {
    zmlx_backend b;
    ZMLX_CHECK(zmlx_backend_from_name(env_b, &b));
    zmlx_status st = zmlx_device_get(b, index, out);
    if (st != ZMLX_OK) return zmlxi_fail_context(st, "ZMLX_BACKEND=%s", env_b);
    return ZMLX_OK;
  }
  /* The first backend of the registry with a device. */
  for (int b = 0; b < ZMLX_BACKEND_COUNT; b++) {
    int n = 0;
    if (!slots[b].ops) continue;
    if (zmlx_device_count((zmlx_backend)b, &n) == ZMLX_OK && n > 0)
      return zmlx_device_get((zmlx_backend)b, index, out);
  }
  return zmlxi_fail(ZMLX_ERR_NO_DEVICE, "no CUDA GPU and no OpenCL device found (install an "
                                       "OpenCL driver such as pocl-opencl-icd)");
}

zmlx_status zmlx_default_device(zmlx_device **out) {
  ZMLX_REQUIRE_ARG(out);
  zmlx_device *d = atomic_load(&default_device);
  if (!d) {
    ZMLX_CHECK(choose_default(&d));
    zmlx_device *expected = NULL;
    if (!atomic_compare_exchange_strong(&default_device, &expected, d)) d = expected;
  }
  *out = d;
  return ZMLX_OK;
}

zmlx_status zmlx_set_default_device(zmlx_device *dev) {
  ZMLX_REQUIRE_ARG(dev);
  atomic_store(&default_device, dev);
  return ZMLX_OK;
}

zmlx_status zmlxi_device_resolve(zmlx_device *dev, zmlx_device **out) {
  if (dev) {
    *out = dev;
    return ZMLX_OK;
  }
  return zmlx_default_device(out);
}

zmlx_status zmlx_device_get_info(const zmlx_device *dev, zmlx_device_info *info) {
  ZMLX_REQUIRE_ARG(dev);
  ZMLX_REQUIRE_ARG(info);
  *info = dev->info;
  return ZMLX_OK;
}

zmlx_backend zmlx_device_backend(const zmlx_device *dev) {
  return dev ? dev->ops->kind : ZMLX_BACKEND_AUTO;
}

zmlx_status zmlx_device_gemm_library(const zmlx_device *dev, const char **library) {
  ZMLX_REQUIRE_ARG(dev);
  ZMLX_REQUIRE_ARG(library);
  *library = dev->ops->gemm && dev->ops->gemm_library ? dev->ops->gemm_library(dev->index) : NULL;
  return ZMLX_OK;
}

int zmlxi_device_gemm_takes(const zmlx_device *dev, zmlx_dtype dt) {
  return dev->ops->gemm && dev->ops->gemm_dtypes && (dev->ops->gemm_dtypes(dev->index) >> dt & 1u);
}

/* ----------------------------------------------------------------- streams */

/* The calling thread's current stream (held), set by zmlx_set_current_stream. */
static _Thread_local zmlx_stream *current_stream;

zmlx_stream *zmlxi_stream_or_default(zmlx_stream *s, zmlx_device *dev) {
  if (s) return s;
  if (current_stream && current_stream->device == dev) return current_stream;
  return dev->default_stream;
}

void zmlxi_stream_retain(zmlx_stream *s) {
  if (s && !s->is_default) atomic_fetch_add(&s->refs, 1);
}

static void stream_unlist(zmlx_stream *s) {
  zmlx_device *d = s->device;
  pthread_mutex_lock(&d->streams_lock);
  for (zmlx_stream **p = &d->streams; *p; p = &(*p)->next)
    if (*p == s) {
      *p = s->next;
      break;
    }
  pthread_mutex_unlock(&d->streams_lock);
}

void zmlxi_stream_release(zmlx_stream *s) {
  if (!s || s->is_default || atomic_fetch_sub(&s->refs, 1) != 1) return;
  stream_unlist(s);
  /* After zmlx_shutdown the backend is gone, and its streams with it. */
  if (!s->borrowed && s->device->default_stream)
    s->device->ops->stream_destroy(s->device->index, s->handle);
  free(s);
}

static zmlx_status stream_new(zmlx_device *dev, void *handle, int borrowed, zmlx_stream **out) {
  zmlx_stream *s = calloc(1, sizeof *s);
  if (!s) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  s->device = dev;
  s->borrowed = borrowed;
  atomic_init(&s->refs, 1);
  if (borrowed) {
    s->handle = handle;
  } else {
    zmlx_status st = dev->ops->stream_create(dev->index, &s->handle);
    if (st != ZMLX_OK) {
      free(s);
      return st;
    }
  }
  pthread_mutex_lock(&dev->streams_lock);
  s->next = dev->streams;
  dev->streams = s;
  pthread_mutex_unlock(&dev->streams_lock);
  *out = s;
  return ZMLX_OK;
}

zmlx_status zmlx_stream_create(zmlx_device *dev, zmlx_stream **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(zmlxi_device_resolve(dev, &dev));
  return stream_new(dev, NULL, 0, out);
}

zmlx_status zmlx_stream_wrap(zmlx_device *dev, void *native, zmlx_stream **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(zmlxi_device_resolve(dev, &dev));
  return stream_new(dev, native, 1, out);
}

zmlx_status zmlx_stream_native(const zmlx_stream *s, void **native) {
  ZMLX_REQUIRE_ARG(s);
  ZMLX_REQUIRE_ARG(native);
  *native = s->handle;
  return ZMLX_OK;
}

zmlx_status zmlx_stream_destroy(zmlx_stream *s) {
  if (!s) return ZMLX_OK;
  if (s->is_default)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "the default stream of a device cannot be destroyed");
  /* Our own streams finish their work first; a borrowed one is its owner's. */
  zmlx_status st = s->borrowed ? ZMLX_OK : s->device->ops->stream_sync(s->device->index, s->handle);
  zmlxi_stream_release(s);
  return st;
}

zmlx_status zmlx_stream_synchronize(zmlx_stream *s) {
  ZMLX_REQUIRE_ARG(s);
  ZMLX_CHECK(zmlxi_capture_refuse(s->device, "zmlx_stream_synchronize"));
  return s->device->ops->stream_sync(s->device->index, s->handle);
}

zmlx_status zmlx_set_current_stream(zmlx_stream *s) {
  if (zmlxi_capture_active())
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "zmlx_set_current_stream during a graph capture: the "
                     "capture records the stream that was current when it began");
  if (s && s->is_default) s = NULL;
  zmlxi_stream_retain(s);
  zmlxi_stream_release(current_stream);
  current_stream = s;
  return ZMLX_OK;
}

zmlx_status zmlx_current_stream(zmlx_device *dev, zmlx_stream **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(zmlxi_device_resolve(dev, &dev));
  if (current_stream && current_stream->device == dev) *out = current_stream;
  return ZMLX_OK;
}

zmlx_status zmlx_device_synchronize(zmlx_device *dev) {
  ZMLX_CHECK(zmlxi_device_resolve(dev, &dev));
  if (!dev->default_stream)
    return zmlxi_fail(ZMLX_ERR_NO_DEVICE, "zmlx_device_synchronize: zmlx_shutdown was called");
  ZMLX_CHECK(zmlxi_capture_refuse(dev, "zmlx_device_synchronize"));
  /* every live stream of the device (created, wrapped, current), then the
   * default one; the list lock is held so none is destroyed meanwhile */
  zmlx_status st = ZMLX_OK;
  pthread_mutex_lock(&dev->streams_lock);
  for (zmlx_stream *s = dev->streams; s && st == ZMLX_OK; s = s->next)
    st = dev->ops->stream_sync(dev->index, s->handle);
  pthread_mutex_unlock(&dev->streams_lock);
  if (st != ZMLX_OK) return st;
  return zmlx_stream_synchronize(dev->default_stream);
}

/* ---------------------------------------------------------------- shutdown */

void zmlxi_runtime_shutdown(void) {
  for (int b = 0; b < ZMLX_BACKEND_COUNT; b++) {
    backend_slot *slot = &slots[b];
    if (!slot->ops || slot->count == 0) continue;
    for (int i = 0; i < slot->count; i++) {
      zmlx_device *d = &slot->devices[i];
      if (d->default_stream) {
        slot->ops->stream_sync(i, d->default_stream->handle);
        slot->ops->stream_destroy(i, d->default_stream->handle);
        free(d->default_stream);
        d->default_stream = NULL;
      }
    }
  }
  /* Devices stay allocated (handles may still be referenced) but their
   * backends are shut down; the process is expected to exit. */
  for (int b = 0; b < ZMLX_BACKEND_COUNT; b++)
    if (slots[b].ops && slots[b].count > 0 && slots[b].ops->shutdown) slots[b].ops->shutdown();
}
