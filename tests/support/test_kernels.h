/* The dialect kernels the test suite runs on every backend (test_kernel.c)
 * and compiles with NVRTC for sm_90a (test_nvrtc.c). */
#ifndef ZMLX_TEST_KERNELS_H
#define ZMLX_TEST_KERNELS_H

#include "zmlx.h"

typedef struct zt_kernel_def {
  zmlx_kernel_desc desc;
  /* Representative dtypes (inputs then outputs) and templates for emitting
   * source without running. */
  zmlx_dtype dtypes[8];
  zmlx_template_arg templates[4];
  int n_templates;
} zt_kernel_def;

enum {
  ZT_K_AXPB,        /* elementwise, grid guard */
  ZT_K_SOFTMAX,     /* threadgroup memory + barriers, x_shape */
  ZT_K_SIMD_SUM,    /* SIMD sum + max across simdgroups */
  ZT_K_MIXED16,     /* f16 and bf16 storage */
  ZT_K_ATOMIC,      /* atomic f32 and i32 outputs */
  ZT_K_TEMPLATE,    /* dtype / int / bool templates */
  ZT_K_STRIDED,     /* reads x through x_shape / x_strides / x_ndim */
  ZT_K_DENSE2X,     /* assumes dense input: used with ensure_row_contiguous */
  ZT_K_PARAMS,      /* scalar params f32 + i32 */
  ZT_K_DYNSHARED,   /* dynamic threadgroup memory */
  ZT_K_EVEN_ONLY,   /* writes even elements only: init_value fills the rest */
  ZT_K_SIMD_CHAIN,  /* one SIMD helper's result feeds the next */
  ZT_K_SHUFFLE,     /* SIMD shuffle-xor / broadcast, bit casts, ctz, unroll */
  ZT_K_COUNT
};

extern const zt_kernel_def zt_kernels[ZT_K_COUNT];

#endif
