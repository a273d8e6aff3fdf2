/*
 * What the language model's files (lm.c: parameters, forward, loss;
 * lm_decode.c: generation through the paged KV cache) share, beyond the
 * public API.
 */
#ifndef ZMLX_NN_LM_H
#define ZMLX_NN_LM_H

#include "nn/layer.h"
#include "nn/lm_plan.h"
#include "runtime/internal.h"

/* Layer l's parameters are a block's (layer.h's BLOCK_ATTN_NORM ..), from
 * zmlx_lm.layer_first[l]. */
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

/* What the blocks' code needs of the model's configuration. */
static inline zmlxi_block_shape zmlxi_lm_block_shape(const zmlx_lm_config *c) {
  zmlxi_block_shape s = {.dim = c->dim, .heads = c->heads, .kv_heads = c->kv_heads,
                         .experts = c->experts, .top_k = c->top_k, .rope_base = c->rope_base,
                         .norm_eps = c->norm_eps};
  return s;
}
/* Final RMSNorm and output projection: logits [N, vocab]. */
zmlx_status zmlxi_lm_head(zmlx_lm *lm, zmlx_array *const *p, zmlx_array *x, zmlx_array **logits);

#endif
