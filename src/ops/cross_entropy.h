/*
 * What src/ops/cross_entropy.c shows its verifier (src/check/cross_entropy_check.c) beyond
 * the public API.
 */
#ifndef ZMLX_OPS_CROSS_ENTROPY_H
#define ZMLX_OPS_CROSS_ENTROPY_H

#include "runtime/internal.h"

/* Everything but recording: loss (f32 scalar) and, when grad_out, the
 * gradient in the logits' dtype. `grad_into`: a preallocated gradient
 * (the check's poisoned array) instead of a new one. */
zmlx_status zmlxi_cross_entropy_compute(zmlx_array *x, zmlx_array *t, const zmlx_cross_entropy_opts *o,
                                       zmlx_array *loss_rows_into, zmlx_array **loss, zmlx_array **grad_out,
                                       zmlx_array *grad_into);

/* What opts = NULL means: ignore_index -100, no smoothing, mean. */
extern const zmlx_cross_entropy_opts zmlxi_cross_entropy_defaults;

#endif
