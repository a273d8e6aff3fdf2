/*
 * What src/ops/dropout.c shows its verifier (src/check/dropout_check.c)
 * beyond the public API.
 */
#ifndef ZMLX_OPS_DROPOUT_H
#define ZMLX_OPS_DROPOUT_H

#include "runtime/internal.h"

typedef struct drop_cfg {
  double p;
  uint64_t seed;
} drop_cfg;

/* p as the kernel's 24-bit threshold: an element is kept when the top 24
 * bits of its Philox word are >= it. */
uint32_t zmlxi_dropout_threshold(double p);

/* out (dense, x's shape and dtype) = dropout of x; no autograd record. */
zmlx_status zmlxi_dropout_launch(zmlx_array *x, const drop_cfg *c, zmlx_array *out);

#endif
