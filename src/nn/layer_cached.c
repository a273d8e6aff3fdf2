/* Causal self-attention and the transformer block over the paged KV cache
 * (generation; see layer.h): prefill writes a sequence's new keys and
 * values (RoPE fused into the write) and attends over the whole cached
 * sequence with the causal flash kernel; decode writes one token a sequence
 * and runs PagedAttention over each block table. Inference calls: nothing
 * here is meant for a grad call. Shared by zmlx_layer_prefill / _decode
 * (layer_forward.c) and zmlx_lm_prefill / _decode (lm_decode.c). */
#include <stdlib.h>

#include "nn/layer.h"

static zmlx_status reshape3(zmlx_array *a, int64_t n, int64_t h, int64_t d, zmlx_array **out) {
  int64_t sh[3] = {n, h, d};
  return zmlx_reshape(a, 3, sh, out);
}

/* Rows [lo, hi) of a 2-D or 3-D array (a view). */
zmlx_status zmlxi_rows(zmlx_array *a, int64_t lo, int64_t hi, zmlx_array **out) {
  int64_t start[3] = {lo, 0, 0}, stop[3];
  for (int i = 0; i < a->ndim; i++) stop[i] = i ? a->shape[i] : hi;
  return zmlx_slice(a, start, stop, NULL, out);
}

/* q, k, v of h [n, dim]: [n, heads, hd], [n, kv_heads, hd] x 2. */
static zmlx_status qkv3(const zmlxi_block_shape *s, zmlx_array *const *w, zmlx_array *h,
                        zmlx_array **q, zmlx_array **k, zmlx_array **v) {
  const int64_t n = h->shape[0], hd = s->dim / s->heads;
  zmlx_array *q2 = NULL, *k2 = NULL, *v2 = NULL;
  zmlx_status st = zmlxi_qkv_apply(w, h, &q2, &k2, &v2);
  if (st == ZMLX_OK) st = reshape3(q2, n, s->heads, hd, q);
  if (st == ZMLX_OK) st = reshape3(k2, n, s->kv_heads, hd, k);
  if (st == ZMLX_OK) st = reshape3(v2, n, s->kv_heads, hd, v);
  zmlx_array_release(q2), zmlx_array_release(k2), zmlx_array_release(v2);
  return st;
}

/* The rotated queries qr [n, H, hd] of seq attend causally over all of its
 * cached keys and values, the new ones last (bottom-right aligned). */
static zmlx_status prefill_attention(const zmlxi_block_shape *s, zmlx_kv_cache *cache,
                                     int64_t seq, int layer, zmlx_array *qr, zmlx_array **out) {
  const int64_t n = qr->shape[0], hd = s->dim / s->heads;
  zmlx_array *k = NULL, *v = NULL, *q4 = NULL, *k4 = NULL, *v4 = NULL, *a = NULL;
  zmlx_attention_opts ao = {.struct_size = sizeof ao, .layout = ZMLX_ATTN_BSHD, .causal = 1};
  zmlx_status st = zmlx_kv_cache_read(cache, seq, layer, &k, &v);
  int64_t qs[4] = {1, n, s->heads, hd}, ks[4] = {1, k ? k->shape[0] : 0, s->kv_heads, hd};
  if (st == ZMLX_OK) st = zmlx_reshape(qr, 4, qs, &q4);
  if (st == ZMLX_OK) st = zmlx_reshape(k, 4, ks, &k4);
  if (st == ZMLX_OK) st = zmlx_reshape(v, 4, ks, &v4);
  if (st == ZMLX_OK) st = zmlx_attention(q4, k4, v4, &ao, &a, NULL);
  if (st == ZMLX_OK) st = reshape3(a, n, s->heads, hd, out);
  zmlx_array *tmp[] = {k, v, q4, k4, v4, a};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) zmlx_array_release(tmp[i]);
  return st;
}

/* Row i's key and value written at the last position of seqs[i], its
 * query rotated the same way: q [B, H, hd] -> *qr. One launch for the
 * batch. */
static zmlx_status write_step(const zmlxi_block_shape *s, zmlx_kv_cache *cache,
                              const int64_t *seqs, int layer, zmlx_array *q, zmlx_array *k,
                              zmlx_array *v, zmlx_array **qr) {
  zmlx_rope_opts rope = {.base = s->rope_base};
  return zmlx_kv_cache_write_rope_step(cache, layer, seqs, q->shape[0], k, v, q, &rope, qr);
}

/* The attention of h [n, dim] (see zmlxi_attention_cached), before wo:
 * *a [n, heads, hd]. */
static zmlx_status attend(const zmlxi_block_shape *s, zmlx_array *const *w, zmlx_kv_cache *cache,
                          int layer, const int64_t *seqs, int decode, zmlx_array *h,
                          zmlx_array **a) {
  const int64_t n = h->shape[0];
  zmlx_array *q = NULL, *k = NULL, *v = NULL, *qr = NULL;
  int64_t len = 0;
  zmlx_rope_opts rope = {.base = s->rope_base};
  zmlx_status st = qkv3(s, w, h, &q, &k, &v);
  if (st == ZMLX_OK && decode) {
    st = write_step(s, cache, seqs, layer, q, k, v, &qr);
    if (st == ZMLX_OK) st = zmlx_kv_cache_attention(cache, layer, qr, seqs, 0, a);
  } else if (st == ZMLX_OK) {
    st = zmlx_kv_cache_length(cache, seqs[0], &len);
    if (st == ZMLX_OK && len < n)
      st = zmlxi_fail(ZMLX_ERR_INVALID_ARG, "prefill: sequence %lld holds %lld tokens, fewer than "
                      "the %lld new ones: extend it first (zmlx_kv_cache_extend)",
                      (long long)seqs[0], (long long)len, (long long)n);
    if (st == ZMLX_OK)
      st = zmlx_kv_cache_write_rope(cache, seqs[0], layer, len - n, k, v, q, &rope, &qr);
    if (st == ZMLX_OK) st = prefill_attention(s, cache, seqs[0], layer, qr, a);
  }
  zmlx_array_release(q), zmlx_array_release(k), zmlx_array_release(v), zmlx_array_release(qr);
  return st;
}

zmlx_status zmlxi_attention_cached(const zmlxi_block_shape *s, zmlx_array *const *w,
                                   zmlx_kv_cache *cache, int layer, const int64_t *seqs,
                                   int decode, zmlx_array *h, zmlx_array **out) {
  zmlx_array *a = NULL, *a2 = NULL;
  int64_t sh[2] = {h->shape[0], s->dim};
  zmlx_status st = attend(s, w, cache, layer, seqs, decode, h, &a);
  if (st == ZMLX_OK) st = zmlx_reshape(a, 2, sh, &a2);
  if (st == ZMLX_OK) st = zmlx_matmul(a2, w[3], out);
  zmlx_array_release(a), zmlx_array_release(a2);
  return st;
}

zmlx_status zmlxi_block_cached(const zmlxi_block_shape *s, zmlx_array *const *w,
                               zmlx_kv_cache *cache, int layer, const int64_t *seqs, int decode,
                               zmlx_array **x) {
  zmlx_array *h = NULL, *a = NULL;
  zmlx_status st = zmlx_rmsnorm(*x, w[BLOCK_ATTN_NORM], s->norm_eps, &h);
  if (st == ZMLX_OK) st = zmlxi_attention_cached(s, w + BLOCK_WQ, cache, layer, seqs, decode, h, &a);
  zmlx_array_release(h);
  if (st == ZMLX_OK) st = zmlxi_residual(x, a);
  return st == ZMLX_OK ? zmlxi_block_ffn(s, w, x) : st;
}
