/*
 * What src/ops/norm.c shows its verifier (src/check/norm_check.c) beyond
 * the public API.
 */
#ifndef ZMLX_OPS_NORM_H
#define ZMLX_OPS_NORM_H

#include "runtime/internal.h"

typedef struct norm_cfg {
  const char *name; /* "rmsnorm", ... */
  int rms, has_r, has_w, has_b;
  float eps;
} norm_cfg;

/* Every norm: validates, runs the forward into pre_y / pre_h when given
 * (the check's poisoned outputs) or new arrays, records the autograd node. */
zmlx_status zmlxi_norm_call(const norm_cfg *c0, zmlx_array *x, zmlx_array *r, zmlx_array *w,
                           zmlx_array *b, zmlx_array *pre_y, zmlx_array *pre_h,
                           zmlx_array **y, zmlx_array **h);

#endif
