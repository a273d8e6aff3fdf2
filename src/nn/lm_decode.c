/* Generation with zmlx_lm through the paged KV cache (issue 14): prefill
 * writes a sequence's keys and values (RoPE fused into the write) and
 * attends over the cache with the causal flash kernel; each decode step
 * appends one token per sequence and runs PagedAttention over the block
 * tables, the MoE on its decode path (a few tokens read only their chosen
 * experts' rows). Each layer is layer_cached.c's block. No autograd:
 * these are inference calls. */

#include "nn/lm.h"

zmlx_status zmlx_lm_kv_cache_create(const zmlx_lm *lm, int64_t num_blocks, int block_size,
                                    zmlx_kv_cache **out) {
  ZMLX_REQUIRE_ARG(lm);
  ZMLX_REQUIRE_ARG(out);
  const zmlx_lm_config *c = &lm->cfg;
  zmlx_kv_cache_desc d = {.struct_size = sizeof d, .layers = c->layers, .kv_heads = c->kv_heads,
                          .head_dim = c->dim / c->heads, .block_size = block_size,
                          .num_blocks = num_blocks, .dtype = c->dtype, .device = c->device};
  return zmlx_kv_cache_create(&d, out);
}

/* Logits [rows, vocab] of the last hidden row(s): x [n, dim], rows from lo. */
static zmlx_status logits_of(zmlx_lm *lm, zmlx_array *x, int64_t lo, zmlx_array **logits) {
  zmlx_array *last = NULL;
  zmlx_status st = zmlxi_rows(x, lo, x->shape[0], &last);
  if (st == ZMLX_OK) st = zmlxi_lm_head(lm, lm->params, last, logits);
  zmlx_array_release(last);
  return st;
}

static zmlx_status embed(zmlx_lm *lm, zmlx_array *tokens, zmlx_array **x) {
  char sh[96];
  if (!tokens || tokens->ndim != 1 || tokens->dtype != ZMLX_I32 || tokens->size < 1)
    return zmlxi_fail(tokens ? ZMLX_ERR_SHAPE : ZMLX_ERR_NULL_ARG, "zmlx_lm: tokens must be a "
                     "non-empty [n] i32 array, got %s %s", tokens ? zmlxi_shape_str(sh, sizeof sh,
                     tokens->ndim, tokens->shape) : "NULL", tokens ? zmlx_dtype_name(tokens->dtype) : "");
  return zmlx_embedding(lm->params[LM_EMBED], tokens, x);
}

zmlx_status zmlx_lm_prefill(zmlx_lm *lm, zmlx_kv_cache *cache, int64_t seq, zmlx_array *tokens,
                            zmlx_array **logits) {
  ZMLX_REQUIRE_ARG(logits);
  *logits = NULL;
  ZMLX_REQUIRE_ARG(lm);
  ZMLX_REQUIRE_ARG(cache);
  zmlx_array *x = NULL;
  ZMLX_CHECK(embed(lm, tokens, &x));
  zmlx_status st = zmlx_kv_cache_extend(cache, seq, tokens->size);
  const zmlxi_block_shape bs = zmlxi_lm_block_shape(&lm->cfg);
  for (int l = 0; l < lm->cfg.layers && st == ZMLX_OK; l++)
    st = zmlxi_block_cached(&bs, lm->params + lm->layer_first[l], cache, l, &seq, 0, &x);
  if (st == ZMLX_OK) st = logits_of(lm, x, x->shape[0] - 1, logits);
  zmlx_array_release(x);
  return st;
}

/* Room for one more token in every sequence, each known and named once.
 * On failure the sequences already extended are not shrunk back (the
 * cache has no truncate): the caller frees them. */
static zmlx_status extend_all(zmlx_kv_cache *cache, const int64_t *seqs, int B) {
  for (int i = 0; i < B; i++) {
    int64_t len = 0;
    ZMLX_CHECK(zmlx_kv_cache_length(cache, seqs[i], &len));
    for (int j = 0; j < i; j++)
      if (seqs[j] == seqs[i])
        return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_decode: sequence %lld appears twice",
                         (long long)seqs[i]);
  }
  for (int i = 0; i < B; i++) ZMLX_CHECK(zmlx_kv_cache_extend(cache, seqs[i], 1));
  return ZMLX_OK;
}

zmlx_status zmlx_lm_decode(zmlx_lm *lm, zmlx_kv_cache *cache, const int64_t *seqs,
                           zmlx_array *tokens, zmlx_array **logits) {
  ZMLX_REQUIRE_ARG(logits);
  *logits = NULL;
  ZMLX_REQUIRE_ARG(lm);
  ZMLX_REQUIRE_ARG(cache);
  ZMLX_REQUIRE_ARG(seqs);
  zmlx_array *x = NULL;
  ZMLX_CHECK(embed(lm, tokens, &x));
  zmlx_status st = extend_all(cache, seqs, (int)tokens->size);
  const zmlxi_block_shape bs = zmlxi_lm_block_shape(&lm->cfg);
  for (int l = 0; l < lm->cfg.layers && st == ZMLX_OK; l++)
    st = zmlxi_block_cached(&bs, lm->params + lm->layer_first[l], cache, l, seqs, 1, &x);
  if (st == ZMLX_OK) st = logits_of(lm, x, 0, logits);
  zmlx_array_release(x);
  return st;
}
