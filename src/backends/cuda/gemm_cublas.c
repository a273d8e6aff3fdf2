/* The CUDA backend's library GEMM: cuBLAS, loaded with dlopen like libcuda
 * (a build without the toolkit still runs; a machine without cuBLAS falls
 * back to the dialect GEMM). One cublasGemmStridedBatchedEx per product:
 * f32, f16 and bf16 operands, f32 accumulation (CUBLAS_COMPUTE_32F; TF32
 * tensor cores for f32 only when ZMLX_TF32=1). Row-major C = A B is
 * computed as the column-major C^T = B^T A^T, so the operands swap. The
 * handle of each device is made on first use and bound to the stream of
 * each call. The few cuBLAS types needed are declared here (stable ABI
 * values), so no cublas header is needed to build. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/cuda_loader.h"
#include "backends/cuda/gemm_cublas.h"

enum { CB_OP_N = 0, CB_OP_T = 1 };                     /* cublasOperation_t */
enum { CB_R_32F = 0, CB_R_16F = 2, CB_R_16BF = 14 };   /* cudaDataType */
enum { CB_COMPUTE_32F = 68, CB_COMPUTE_32F_FAST_TF32 = 77 }; /* cublasComputeType_t */
enum { CB_GEMM_DEFAULT = -1 };                         /* cublasGemmAlgo_t */

typedef int (*cb_create_fn)(void **);
typedef int (*cb_destroy_fn)(void *);
typedef int (*cb_set_stream_fn)(void *, CUstream);
typedef int (*cb_property_fn)(int, int *); /* cublasGetProperty: 0 major, 1 minor */
typedef int (*cb_math_mode_fn)(void *, int);
typedef int (*cb_gemm_fn)(void *, int, int, int, int, int, const void *, const void *, int, int,
                          long long, const void *, int, int, long long, const void *, void *, int,
                          int, long long, int, int, int);

static struct {
  pthread_once_t once;
  void *lib;
  cb_create_fn create;
  cb_destroy_fn destroy;
  cb_set_stream_fn set_stream;
  cb_property_fn property;
  cb_math_mode_fn math_mode;
  cb_gemm_fn gemm;
  char name[64];
  pthread_mutex_t lock;
  void *handles[ZMLXI_CUBLAS_MAX_DEVICES];
  int rounds_once[ZMLXI_CUBLAS_MAX_DEVICES]; /* the handle took the math mode below */
} cb = {.once = PTHREAD_ONCE_INIT, .lock = PTHREAD_MUTEX_INITIALIZER};

static void load(void) {
  static const char *names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11",
                                "libcublas.so"};
  for (size_t i = 0; !cb.lib && i < sizeof names / sizeof names[0]; i++)
    cb.lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
  if (!cb.lib) return;
  cb.create = (cb_create_fn)dlsym(cb.lib, "cublasCreate_v2");
  cb.destroy = (cb_destroy_fn)dlsym(cb.lib, "cublasDestroy_v2");
  cb.set_stream = (cb_set_stream_fn)dlsym(cb.lib, "cublasSetStream_v2");
  cb.property = (cb_property_fn)dlsym(cb.lib, "cublasGetProperty");
  cb.gemm = (cb_gemm_fn)dlsym(cb.lib, "cublasGemmStridedBatchedEx");
  cb.math_mode = (cb_math_mode_fn)dlsym(cb.lib, "cublasSetMathMode");
  if (!cb.create || !cb.destroy || !cb.set_stream || !cb.gemm) {
    dlclose(cb.lib);
    cb.lib = NULL;
  }
}

static int loaded(void) {
  pthread_once(&cb.once, load);
  return cb.lib != NULL;
}

/* The device's handle (made on first use, in the device's current context). */
static zmlx_status handle_of(int dev, void **out) {
  if (dev < 0 || dev >= ZMLXI_CUBLAS_MAX_DEVICES)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "cuBLAS GEMM: device %d is past the handle table", dev);
  pthread_mutex_lock(&cb.lock);
  int r = 0;
  if (!cb.handles[dev]) {
    r = cb.create(&cb.handles[dev]);
    /* CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION:
     * a split-K sums its partials in the compute type (f32), so a 16-bit C
     * is rounded once and needs no f32 staging (autograd/kernels.c) */
    if (r == 0 && cb.handles[dev] && cb.math_mode)
      cb.rounds_once[dev] = cb.math_mode(cb.handles[dev], 16) == 0;
  }
  *out = cb.handles[dev];
  pthread_mutex_unlock(&cb.lock);
  if (r != 0 || !*out)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "cuBLAS GEMM: cublasCreate failed (status %d)", r);
  return ZMLX_OK;
}

const char *zmlxi_cublas_library(int dev) {
  (void)dev;
  if (!loaded()) return NULL;
  pthread_mutex_lock(&cb.lock);
  if (!cb.name[0]) {
    int major = 0, minor = 0;
    if (cb.property) {
      cb.property(0, &major);
      cb.property(1, &minor);
    }
    snprintf(cb.name, sizeof cb.name, "cuBLAS %d.%d (f32, f16, bf16)", major, minor);
  }
  pthread_mutex_unlock(&cb.lock);
  return cb.name;
}

int zmlxi_cublas_rounds_once(int dev) {
  void *h = NULL;
  if (!loaded() || handle_of(dev, &h) != ZMLX_OK) {
    zmlx_clear_error();
    return 0;
  }
  pthread_mutex_lock(&cb.lock);
  const int r = cb.rounds_once[dev];
  pthread_mutex_unlock(&cb.lock);
  return r;
}

unsigned zmlxi_cublas_dtypes(int dev) {
  (void)dev;
  return loaded() ? 1u << ZMLX_F32 | 1u << ZMLX_F16 | 1u << ZMLX_BF16 : 0;
}

zmlx_status zmlxi_cublas_gemm(int dev, void *stream, const zmlx_gemm_args *g) {
  if (!loaded()) return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "cuBLAS is not loaded");
  int type;
  size_t es;
  switch (g->dtype) {
    case ZMLX_F32: type = CB_R_32F, es = 4; break;
    case ZMLX_F16: type = CB_R_16F, es = 2; break;
    case ZMLX_BF16: type = CB_R_16BF, es = 2; break;
    default:
      return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "cuBLAS GEMM: dtype %s", zmlx_dtype_name(g->dtype));
  }
  const int ctype = g->c_dtype == ZMLX_F32 ? CB_R_32F : type;
  const size_t ces = g->c_dtype == ZMLX_F32 ? 4 : es;
  void *h = NULL;
  ZMLX_CHECK(handle_of(dev, &h));
  const char *tf32 = getenv("ZMLX_TF32");
  const int compute = g->dtype == ZMLX_F32 && tf32 && !strcmp(tf32, "1") ? CB_COMPUTE_32F_FAST_TF32
                                                                         : CB_COMPUTE_32F;
  const float one = 1.0f, zero = 0.0f;
  const char *a = (const char *)g->a + g->a_off * (int64_t)es;
  const char *b = (const char *)g->b + g->b_off * (int64_t)es;
  char *c = (char *)g->c + g->c_off * (int64_t)ces;
  /* column-major C^T [n x m] = B^T [n x k] A^T [k x m]: B first */
  pthread_mutex_lock(&cb.lock); /* a handle's stream binding is per call */
  int r = cb.set_stream(h, (CUstream)stream);
  if (r == 0)
    r = cb.gemm(h, g->trans_b ? CB_OP_T : CB_OP_N, g->trans_a ? CB_OP_T : CB_OP_N, (int)g->n,
                (int)g->m, (int)g->k, &one, b, type, (int)g->ldb, (long long)g->b_batch, a, type,
                (int)g->lda, (long long)g->a_batch, &zero, c, ctype, (int)g->ldc,
                (long long)g->c_batch, (int)g->batch, compute, CB_GEMM_DEFAULT);
  pthread_mutex_unlock(&cb.lock);
  if (r != 0)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "cuBLAS GEMM [%lld x %lld x %lld] x %lld failed: "
                     "status %d", (long long)g->m, (long long)g->n, (long long)g->k,
                     (long long)g->batch, r);
  return ZMLX_OK;
}

void zmlxi_cublas_shutdown(void) {
  if (!cb.lib) return;
  pthread_mutex_lock(&cb.lock);
  for (int i = 0; i < ZMLXI_CUBLAS_MAX_DEVICES; i++)
    if (cb.handles[i]) {
      cb.destroy(cb.handles[i]);
      cb.handles[i] = NULL;
    }
  pthread_mutex_unlock(&cb.lock);
}
