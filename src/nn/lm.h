/*
 * What the language model's files (lm.c: parameters, forward, loss;
 * lm_decode.c: generation through the paged KV cache) share, beyond the
 * public API.
 */
#ifndef ZMLX_NN_LM_H
#define ZMLX_NN_LM_H

#include "nn/lm_plan.h"
#include "runtime/internal.h"

/* A layer's parameters, in order from its first (zmlx_lm.layer_first[l]).
 * A dense layer has no router: its w1, w3, w2 sit at LM_ROUTER .. + 2. */
enum { LM_ATTN_NORM, LM_WQ, LM_WK, LM_WV, LM_WO, LM_FFN_NORM, LM_ROUTER, LM_W1, LM_W3, LM_W2 };
enum { LM_EMBED = 0 }; /* the first parameter; the final norm and head are last */

struct zmlx_lm {
  zmlx_lm_config cfg; /* resolved */
  int n_params;
  zmlx_array *params[ZMLX_LM_MAX_PARAMS];
  const char *names[ZMLX_LM_MAX_PARAMS];
  char names_buf[ZMLX_LM_MAX_PARAMS][48];
  int *layer_first; /* [layers]: index of each layer's first parameter */
  int final_norm;   /* index of "norm"; "head" follows */
};

/* *x = *x + y: *x replaced by the sum, y released (also on failure). */
zmlx_status zmlxi_lm_residual(zmlx_array **x, zmlx_array *y);
/* Layer l's RMSNorm and q, k, v projections of x [N, dim]: *q [N, heads
 * hd], *k and *v [N, kv_heads hd]. */
zmlx_status zmlxi_lm_project_qkv(zmlx_lm *lm, zmlx_array *const *p, int l, zmlx_array *x,
                                 zmlx_array **q, zmlx_array **k, zmlx_array **v);
/* Layer l's attention branch (RMSNorm, q k v, RoPE, causal attention, wo)
 * of x [B S, dim] for B sequences of S tokens: *out [B S, dim]. */
zmlx_status zmlxi_lm_attention_block(zmlx_lm *lm, zmlx_array *const *p, int l, int64_t B,
                                     int64_t S, zmlx_array *x, zmlx_array **out);
/* Layer l's feed-forward branch (RMSNorm, MoE or SwiGLU MLP) of x [N, dim]. */
zmlx_status zmlxi_lm_ffn_block(zmlx_lm *lm, zmlx_array *const *p, int l, zmlx_array *x,
                               zmlx_array **out);
/* Final RMSNorm and output projection: logits [N, vocab]. */
zmlx_status zmlxi_lm_head(zmlx_lm *lm, zmlx_array *const *p, zmlx_array *x, zmlx_array **logits);

#endif
