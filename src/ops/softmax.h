/*
 * What src/ops/softmax.c shows its verifier (src/check/softmax_check.c) beyond
 * the public API.
 */
#ifndef ZMLX_OPS_SOFTMAX_H
#define ZMLX_OPS_SOFTMAX_H

#include "runtime/internal.h"

enum { SM_SOFTMAX = 0, SM_LOG_SOFTMAX = 1, SM_LOGSUMEXP = 2 };
static const char *const MODE_NAMES[] = {"softmax", "log_softmax", "logsumexp"};

typedef struct sm_args {
  int mode;
  zmlx_array *mask; /* NULL: none */
  double scale;
  int causal;
} sm_args;

/* Validation of the forward's arguments; names the problem. */
zmlx_status zmlxi_softmax_validate(const char *op, zmlx_array *x, const sm_args *a);

/* Forward into a preallocated dense output (the check poisons it first). */
zmlx_status zmlxi_softmax_forward_into(zmlx_array *x, const sm_args *a, zmlx_array *out);

zmlx_status zmlxi_softmax_run(const char *op, zmlx_array *x, const sm_args *a, zmlx_array **out);

#endif
