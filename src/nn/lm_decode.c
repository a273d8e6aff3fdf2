/* Generation with zmlx_lm through the paged KV cache (issue 14): prefill
 * writes a sequence's keys and values (RoPE fused into the write) and
 * attends over the cache with the causal flash kernel; each decode step
 * appends one token per sequence and runs PagedAttention over the block
 * tables, the MoE on its decode path (a few tokens read only their chosen
 * experts' rows). No autograd: these are inference calls. */
#include <stdlib.h>
#include <string.h>

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

static zmlx_status reshape3(zmlx_array *a, int64_t n, int64_t h, int64_t d, zmlx_array **out) {
  int64_t sh[3] = {n, h, d};
  return zmlx_reshape(a, 3, sh, out);
}

/* Rows [lo, hi) of a 2-D or 3-D array (a view). */
static zmlx_status rows(zmlx_array *a, int64_t lo, int64_t hi, zmlx_array **out) {
  int64_t start[3] = {lo, 0, 0}, stop[3];
  for (int i = 0; i < a->ndim; i++) stop[i] = i ? a->shape[i] : hi;
  return zmlx_slice(a, start, stop, NULL, out);
}

/* q, k, v of layer l for x [n, dim]: [n, heads, hd], [n, kv_heads, hd] x 2. */
static zmlx_status project_qkv(zmlx_lm *lm, int l, zmlx_array *x, zmlx_array **q,
                               zmlx_array **k, zmlx_array **v) {
  const zmlx_lm_config *c = &lm->cfg;
  const int64_t n = x->shape[0], hd = c->dim / c->heads;
  zmlx_array *q2 = NULL, *k2 = NULL, *v2 = NULL;
  const zmlxi_block_shape bs = zmlxi_lm_block_shape(c);
  zmlx_status st = zmlxi_block_qkv(&bs, lm->params + lm->layer_first[l], x, &q2, &k2, &v2);
  if (st == ZMLX_OK) st = reshape3(q2, n, c->heads, hd, q);
  if (st == ZMLX_OK) st = reshape3(k2, n, c->kv_heads, hd, k);
  if (st == ZMLX_OK) st = reshape3(v2, n, c->kv_heads, hd, v);
  zmlx_array_release(q2), zmlx_array_release(k2), zmlx_array_release(v2);
  return st;
}

/* x += a wo for the attention output a [n, heads, hd]. */
static zmlx_status attention_out(zmlx_lm *lm, int l, zmlx_array *a, zmlx_array **x) {
  zmlx_array *const *w = lm->params + lm->layer_first[l];
  int64_t sh[2] = {a->shape[0], a->shape[1] * a->shape[2]};
  zmlx_array *a2 = NULL, *o = NULL;
  zmlx_status st = zmlx_reshape(a, 2, sh, &a2);
  if (st == ZMLX_OK) st = zmlx_matmul(a2, w[BLOCK_WO], &o);
  zmlx_array_release(a2);
  return st == ZMLX_OK ? zmlxi_residual(x, o) : st;
}

static zmlx_status ffn(zmlx_lm *lm, int l, zmlx_array **x) {
  const zmlxi_block_shape bs = zmlxi_lm_block_shape(&lm->cfg);
  return zmlxi_block_ffn(&bs, lm->params + lm->layer_first[l], x);
}

/* Keys and values of seq in layer l: rotated q [n, H, hd] attends causally
 * over all of them, the new ones last (bottom-right aligned). */
static zmlx_status prefill_attention(zmlx_lm *lm, zmlx_kv_cache *cache, int64_t seq, int l,
                                     zmlx_array *q, zmlx_array **out) {
  const zmlx_lm_config *c = &lm->cfg;
  const int64_t n = q->shape[0], hd = c->dim / c->heads;
  zmlx_array *k = NULL, *v = NULL, *q4 = NULL, *k4 = NULL, *v4 = NULL, *a = NULL;
  zmlx_attention_opts ao = {.struct_size = sizeof ao, .layout = ZMLX_ATTN_BSHD, .causal = 1};
  zmlx_status st = zmlx_kv_cache_read(cache, seq, l, &k, &v);
  int64_t qs[4] = {1, n, c->heads, hd}, ks[4] = {1, k ? k->shape[0] : 0, c->kv_heads, hd};
  if (st == ZMLX_OK) st = zmlx_reshape(q, 4, qs, &q4);
  if (st == ZMLX_OK) st = zmlx_reshape(k, 4, ks, &k4);
  if (st == ZMLX_OK) st = zmlx_reshape(v, 4, ks, &v4);
  if (st == ZMLX_OK) st = zmlx_attention(q4, k4, v4, &ao, &a, NULL);
  if (st == ZMLX_OK) st = reshape3(a, n, c->heads, hd, out);
  zmlx_array *tmp[] = {k, v, q4, k4, v4, a};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) zmlx_array_release(tmp[i]);
  return st;
}

/* Logits [rows, vocab] of the last hidden row(s): x [n, dim], rows from lo. */
static zmlx_status logits_of(zmlx_lm *lm, zmlx_array *x, int64_t lo, zmlx_array **logits) {
  zmlx_array *last = NULL;
  zmlx_status st = rows(x, lo, x->shape[0], &last);
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
  int64_t start = 0;
  zmlx_array *x = NULL;
  ZMLX_CHECK(embed(lm, tokens, &x));
  zmlx_status st = zmlx_kv_cache_length(cache, seq, &start);
  if (st == ZMLX_OK) st = zmlx_kv_cache_extend(cache, seq, tokens->size);
  zmlx_rope_opts rope = {.base = lm->cfg.rope_base};
  for (int l = 0; l < lm->cfg.layers && st == ZMLX_OK; l++) {
    zmlx_array *q = NULL, *k = NULL, *v = NULL, *qr = NULL, *a = NULL;
    st = project_qkv(lm, l, x, &q, &k, &v);
    if (st == ZMLX_OK) st = zmlx_kv_cache_write_rope(cache, seq, l, start, k, v, q, &rope, &qr);
    if (st == ZMLX_OK) st = prefill_attention(lm, cache, seq, l, qr, &a);
    if (st == ZMLX_OK) st = attention_out(lm, l, a, &x);
    if (st == ZMLX_OK) st = ffn(lm, l, &x);
    zmlx_array_release(q), zmlx_array_release(k), zmlx_array_release(v);
    zmlx_array_release(qr), zmlx_array_release(a);
  }
  if (st == ZMLX_OK) st = logits_of(lm, x, x->shape[0] - 1, logits);
  zmlx_array_release(x);
  return st;
}

/* Each sequence's new key and value written at its position, its query
 * rotated the same way: q [B, H, hd] -> *qr. */
static zmlx_status write_step(zmlx_lm *lm, zmlx_kv_cache *cache, const int64_t *seqs,
                              const int64_t *pos, int l, zmlx_array *q, zmlx_array *k,
                              zmlx_array *v, zmlx_array **qr) {
  const int B = (int)q->shape[0];
  zmlx_rope_opts rope = {.base = lm->cfg.rope_base};
  zmlx_array **parts = calloc((size_t)B, sizeof *parts);
  if (!parts) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < B && st == ZMLX_OK; i++) {
    zmlx_array *qi = NULL, *ki = NULL, *vi = NULL;
    st = rows(q, i, i + 1, &qi);
    if (st == ZMLX_OK) st = rows(k, i, i + 1, &ki);
    if (st == ZMLX_OK) st = rows(v, i, i + 1, &vi);
    if (st == ZMLX_OK) st = zmlx_kv_cache_write_rope(cache, seqs[i], l, pos[i], ki, vi, qi, &rope,
                                                     &parts[i]);
    zmlx_array_release(qi), zmlx_array_release(ki), zmlx_array_release(vi);
  }
  if (st == ZMLX_OK) {
    if (B == 1) {
      *qr = parts[0];
      parts[0] = NULL;
    } else {
      st = zmlx_concat(parts, B, 0, qr);
    }
  }
  for (int i = 0; i < B; i++) zmlx_array_release(parts[i]);
  free(parts);
  return st;
}

/* Room for one more token in every sequence; pos[i] its position. On
 * failure the sequences already extended are not shrunk back (the cache
 * has no truncate): the caller frees them. */
static zmlx_status extend_all(zmlx_kv_cache *cache, const int64_t *seqs, int B, int64_t *pos) {
  for (int i = 0; i < B; i++) {
    ZMLX_CHECK(zmlx_kv_cache_length(cache, seqs[i], &pos[i]));
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
  const int B = (int)tokens->size;
  int64_t *pos = malloc(sizeof(int64_t) * (size_t)B);
  zmlx_status st = pos ? extend_all(cache, seqs, B, pos)
                       : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int l = 0; l < lm->cfg.layers && st == ZMLX_OK; l++) {
    zmlx_array *q = NULL, *k = NULL, *v = NULL, *qr = NULL, *a = NULL;
    st = project_qkv(lm, l, x, &q, &k, &v);
    if (st == ZMLX_OK) st = write_step(lm, cache, seqs, pos, l, q, k, v, &qr);
    if (st == ZMLX_OK) st = zmlx_kv_cache_attention(cache, l, qr, seqs, 0, &a);
    if (st == ZMLX_OK) st = attention_out(lm, l, a, &x);
    if (st == ZMLX_OK) st = ffn(lm, l, &x);
    zmlx_array_release(q), zmlx_array_release(k), zmlx_array_release(v);
    zmlx_array_release(qr), zmlx_array_release(a);
  }
  if (st == ZMLX_OK) st = logits_of(lm, x, 0, logits);
  zmlx_array_release(x);
  free(pos);
  return st;
}
