/*
 * What src/ops/reduce.c shows its verifier (src/check/reduce_check.c) beyond
 * the public API.
 */
#ifndef ZMLX_OPS_REDUCE_H
#define ZMLX_OPS_REDUCE_H

#include "runtime/internal.h"

/* The largest k zmlx_topk takes. */
#define TOPK_MAX 64

/* Output shape: x's without its last axis, with it as `last` when keep. */
int zmlxi_reduce_out_shape(const zmlx_array *x, int keep, int64_t last, int64_t *shape);

/* max and min (their gradient goes to the selected element). */
int zmlxi_reduce_is_select(zmlx_reduce_kind k);

#endif
