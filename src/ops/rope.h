/*
 * What src/ops/rope.c shows its verifier (src/check/rope_check.c) beyond
 * the public API.
 */
#ifndef ZMLX_OPS_ROPE_H
#define ZMLX_OPS_ROPE_H

#include "runtime/internal.h"

typedef struct rope_cfg {
  zmlx_rope_opts o; /* resolved: rotary_dims, base, scale filled */
  float sgn;
} rope_cfg;

/* `arg` names x as the user's call does, e.g. "zmlx_rope_qk: argument 'q'". */
zmlx_status zmlxi_rope_validate(const char *arg, zmlx_array *x, const zmlx_rope_opts *in,
                               rope_cfg *c);

/* out (dense, preallocated, x's shape and dtype) = rope of x. */
zmlx_status zmlxi_rope_launch(zmlx_array *x, const rope_cfg *c, zmlx_array *out);

#endif
