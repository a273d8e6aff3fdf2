/*
 * What src/ops/activation.c shows its verifier (src/check/activation_check.c) beyond
 * the public API.
 */
#ifndef ZMLX_OPS_ACTIVATION_H
#define ZMLX_OPS_ACTIVATION_H

#include "runtime/internal.h"

typedef enum act_kind {
  A_EXP,
  A_LOG,
  A_TANH,
  A_SIGMOID,
  A_RELU,
  A_SILU,
  A_GELU_TANH,
  A_GELU,
  A_SOFTPLUS,
  A_MISH,
  A_ELU,
  A_COUNT
} act_kind;

zmlx_status zmlxi_activation_call(act_kind k, zmlx_array *x, double alpha, zmlx_array **out);

/* The op's name, e.g. "gelu_tanh". */
const char *zmlxi_activation_name(act_kind k);

#endif
