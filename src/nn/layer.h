/*
 * The layers' math (layer_apply.c) shared by the public layer objects
 * (layer.c) and the language model (lm.c, lm_decode.c): plain functions of
 * a shape and borrowed weight arrays, built from differentiable ops, so one
 * copy of each forward serves training, checks and generation.
 */
#ifndef ZMLX_NN_LAYER_H
#define ZMLX_NN_LAYER_H

#include "runtime/internal.h"

/* A block's parameters, in order; a dense block has no router: its w1,
 * w3, w2 sit at BLOCK_ROUTER .. + 2. The attention's four start at
 * BLOCK_WQ, the feed-forward's at BLOCK_FFN. */
enum {
  BLOCK_ATTN_NORM, BLOCK_WQ, BLOCK_WK, BLOCK_WV, BLOCK_WO, BLOCK_FFN_NORM, BLOCK_ROUTER,
  BLOCK_W1, BLOCK_W3, BLOCK_W2
};
enum { BLOCK_FFN = BLOCK_ROUTER, BLOCK_MAX_PARAMS = BLOCK_W2 + 1 };

/* What a block's (or its parts') forward needs of the configuration. */
typedef struct zmlxi_block_shape {
  int64_t dim;
  int heads, kv_heads;
  int experts, top_k; /* experts 0: a dense SwiGLU MLP */
  double rope_base, norm_eps;
} zmlxi_block_shape;

/* x [..., in] @ w [in, out] (+ bias [out] when not NULL). */
zmlx_status zmlxi_linear_apply(zmlx_array *x, zmlx_array *w, zmlx_array *bias, zmlx_array **out);
/* *x = *x + y: *x replaced by the sum, y released (also on failure). */
zmlx_status zmlxi_residual(zmlx_array **x, zmlx_array *y);
/* q [N, heads hd], k and v [N, kv_heads hd] of h [N, dim]: w = wq, wk, wv. */
zmlx_status zmlxi_qkv_apply(zmlx_array *const *w, zmlx_array *h, zmlx_array **q,
                            zmlx_array **k, zmlx_array **v);
/* Causal self-attention of h [B S, dim] (B sequences of S tokens): q k v,
 * RoPE, GQA flash attention, output projection; w = wq, wk, wv, wo. */
zmlx_status zmlxi_attention_apply(const zmlxi_block_shape *s, zmlx_array *const *w, int64_t B,
                                  int64_t S, zmlx_array *h, zmlx_array **out);
/* The feed-forward of h [N, dim]: an MoE (w = router, w1, w3, w2) when
 * s->experts, else a SwiGLU MLP (w = w1, w3, w2). */
zmlx_status zmlxi_ffn_apply(const zmlxi_block_shape *s, zmlx_array *const *w, zmlx_array *h,
                            zmlx_array **out);
/* x [B S, dim] + its feed-forward branch (RMSNorm, MoE or MLP), in place. */
zmlx_status zmlxi_block_ffn(const zmlxi_block_shape *s, zmlx_array *const *w, zmlx_array **x);
/* A whole block on x [B S, dim]: *x replaced by the block's output. */
zmlx_status zmlxi_block_apply(const zmlxi_block_shape *s, zmlx_array *const *w, int64_t B,
                              int64_t S, zmlx_array **x);


/* Over the paged KV cache (layer_cached.c; inference). h [n, dim] holds
 * new tokens: with decode 0, the last n tokens of sequence seqs[0], which
 * attend causally over the whole cached sequence (the flash kernel); with
 * decode 1, one token of each sequence seqs[0 .. n) (PagedAttention). The
 * caller has extended the sequences (zmlx_kv_cache_extend) by these
 * tokens; their keys (rotated) and values are written into cache layer
 * `layer` at the sequences' last positions. */
zmlx_status zmlxi_attention_cached(const zmlxi_block_shape *s, zmlx_array *const *w,
                                   zmlx_kv_cache *cache, int layer, const int64_t *seqs,
                                   int decode, zmlx_array *h, zmlx_array **out);
/* A whole block that way on x [n, dim]: *x replaced by its output. */
zmlx_status zmlxi_block_cached(const zmlxi_block_shape *s, zmlx_array *const *w,
                               zmlx_kv_cache *cache, int layer, const int64_t *seqs, int decode,
                               zmlx_array **x);
/* Rows [lo, hi) of a 2-D or 3-D array (a view). */
zmlx_status zmlxi_rows(zmlx_array *a, int64_t lo, int64_t hi, zmlx_array **out);

#endif
