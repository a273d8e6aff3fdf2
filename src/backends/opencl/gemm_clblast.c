/* The OpenCL backend's library GEMM: CLBlast (Debian's libclblast-dev,
 * found at build time). f32 only: CLBlast's Hgemm accumulates in half
 * precision, and there is no bf16, so 16-bit matmuls stay on the dialect
 * GEMM, which accumulates in f32. Built without CLBlast, the backend has
 * no library GEMM (opencl.c leaves the table's entries NULL). */
#include "backends/opencl/ocl.h"

#ifdef ZMLX_HAVE_CLBLAST
#include <clblast_c.h>
#include <stdio.h>

const char *zmlxi_ocl_gemm_library(int dev) {
  (void)dev;
  return "CLBlast " ZMLX_CLBLAST_VERSION " (f32)";
}

unsigned zmlxi_ocl_gemm_dtypes(int dev) {
  (void)dev;
  return 1u << ZMLX_F32;
}

zmlx_status zmlxi_ocl_gemm(int dev, void *stream, const zmlx_gemm_args *g) {
  (void)dev;
  if (g->dtype != ZMLX_F32 || g->c_dtype != ZMLX_F32)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "CLBlast GEMM: f32 only (its Hgemm accumulates in "
                     "half precision), not %s", zmlx_dtype_name(g->dtype));
  cl_command_queue q = (cl_command_queue)stream;
  const CLBlastTranspose ta = g->trans_a ? CLBlastTransposeYes : CLBlastTransposeNo;
  const CLBlastTranspose tb = g->trans_b ? CLBlastTransposeYes : CLBlastTransposeNo;
  cl_mem a = (cl_mem)(uintptr_t)g->a, b = (cl_mem)(uintptr_t)g->b, c = (cl_mem)g->c;
  CLBlastStatusCode s;
  if (g->batch == 1)
    s = CLBlastSgemm(CLBlastLayoutRowMajor, ta, tb, (size_t)g->m, (size_t)g->n, (size_t)g->k, 1.0f,
                     a, (size_t)g->a_off, (size_t)g->lda, b, (size_t)g->b_off, (size_t)g->ldb, 0.0f,
                     c, (size_t)g->c_off, (size_t)g->ldc, &q, NULL);
  else
    s = CLBlastSgemmStridedBatched(CLBlastLayoutRowMajor, ta, tb, (size_t)g->m, (size_t)g->n,
                                   (size_t)g->k, 1.0f, a, (size_t)g->a_off, (size_t)g->lda,
                                   (size_t)g->a_batch, b, (size_t)g->b_off, (size_t)g->ldb,
                                   (size_t)g->b_batch, 0.0f, c, (size_t)g->c_off, (size_t)g->ldc,
                                   (size_t)g->c_batch, (size_t)g->batch, &q, NULL);
  if (s != CLBlastSuccess)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "CLBlast GEMM [%lld x %lld x %lld] x %lld failed: "
                     "status %d", (long long)g->m, (long long)g->n, (long long)g->k,
                     (long long)g->batch, (int)s);
  return ZMLX_OK;
}
#endif
