/*
 * What src/ops/attention.c shows its verifier (src/check/attention_check.c)
 * beyond the public API.
 */
#ifndef ZMLX_OPS_ATTENTION_H
#define ZMLX_OPS_ATTENTION_H

#include "runtime/internal.h"

typedef struct attn_cfg {
  int64_t B, Hq, Hkv, Sq, Sk, D;
  int layout, causal;
  double scale;       /* resolved: 1 / sqrt(D) when the caller gave 0 */
  zmlx_array *mask;   /* borrowed */
  int mask_kind;      /* 0 none, 1 additive, 2 bool */
  int64_t mB, mH;     /* the mask's batch and head extents (1 = broadcast) */
} attn_cfg;

/* Shapes, dtypes and options of a call; the message names the shapes. */
zmlx_status zmlxi_attention_validate(zmlx_array *q, zmlx_array *k, zmlx_array *v,
                                    const zmlx_attention_opts *opts, attn_cfg *c);
/* out (q's shape and dtype) and lse ([B, Hq, Sq] f32), both dense and
 * preallocated: the forward kernel alone (no autograd). */
zmlx_status zmlxi_attention_forward_into(zmlx_array *q, zmlx_array *k, zmlx_array *v,
                                        const attn_cfg *c, zmlx_array *out, zmlx_array *lse);

#endif
