/* The layers' forward math (see layer.h): each function is plain calls of
 * differentiable catalog ops on borrowed weights, so autograd records it
 * inside a grad call and the same code runs on every backend. */
#include "nn/layer.h"

zmlx_status zmlxi_linear_apply(zmlx_array *x, zmlx_array *w, zmlx_array *bias, zmlx_array **out) {
  if (!bias) return zmlx_matmul(x, w, out);
  zmlx_array *y = NULL;
  ZMLX_CHECK(zmlx_matmul(x, w, &y));
  zmlx_status st = zmlx_add(y, bias, out);
  zmlx_array_release(y);
  return st;
}

zmlx_status zmlxi_residual(zmlx_array **x, zmlx_array *y) {
  zmlx_array *sum = NULL;
  zmlx_status st = zmlx_add(*x, y, &sum);
  zmlx_array_release(y);
  if (st != ZMLX_OK) return st;
  zmlx_array_release(*x);
  *x = sum;
  return ZMLX_OK;
}

zmlx_status zmlxi_qkv_apply(zmlx_array *const *w, zmlx_array *h, zmlx_array **q,
                            zmlx_array **k, zmlx_array **v) {
  zmlx_status st = zmlx_matmul(h, w[0], q);
  if (st == ZMLX_OK) st = zmlx_matmul(h, w[1], k);
  if (st == ZMLX_OK) st = zmlx_matmul(h, w[2], v);
  return st;
}

static zmlx_status reshape4(zmlx_array *a, int64_t B, int64_t S, int64_t H, int64_t hd,
                            zmlx_array **out) {
  int64_t sh[4] = {B, S, H, hd};
  return zmlx_reshape(a, 4, sh, out);
}

zmlx_status zmlxi_attention_apply(const zmlxi_block_shape *s, zmlx_array *const *w, int64_t B,
                                  int64_t S, zmlx_array *h, zmlx_array **out) {
  const int64_t hd = s->dim / s->heads;
  zmlx_array *q = NULL, *k = NULL, *v = NULL, *q4 = NULL, *k4 = NULL, *v4 = NULL;
  zmlx_array *qr = NULL, *kr = NULL, *a = NULL, *a2 = NULL;
  int64_t flat[2] = {B * S, s->heads * hd};
  zmlx_rope_opts rope = {.layout = ZMLX_ROPE_BSHD, .base = s->rope_base};
  zmlx_attention_opts ao = {.struct_size = sizeof ao, .layout = ZMLX_ATTN_BSHD, .causal = 1};
  zmlx_status st = zmlxi_qkv_apply(w, h, &q, &k, &v);
  if (st == ZMLX_OK) st = reshape4(q, B, S, s->heads, hd, &q4);
  if (st == ZMLX_OK) st = reshape4(k, B, S, s->kv_heads, hd, &k4);
  if (st == ZMLX_OK) st = reshape4(v, B, S, s->kv_heads, hd, &v4);
  if (st == ZMLX_OK) st = zmlx_rope_qk(q4, k4, &rope, &qr, &kr);
  if (st == ZMLX_OK) st = zmlx_attention(qr, kr, v4, &ao, &a, NULL);
  if (st == ZMLX_OK) st = zmlx_reshape(a, 2, flat, &a2);
  if (st == ZMLX_OK) st = zmlx_matmul(a2, w[3], out);
  zmlx_array *tmp[] = {q, k, v, q4, k4, v4, qr, kr, a, a2};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) zmlx_array_release(tmp[i]);
  return st;
}

zmlx_status zmlxi_ffn_apply(const zmlxi_block_shape *s, zmlx_array *const *w, zmlx_array *h,
                            zmlx_array **out) {
  if (s->experts) {
    zmlx_moe_opts mo = {.struct_size = sizeof mo};
    mo.gate.k = s->top_k;
    mo.gate.scoring = ZMLX_MOE_SOFTMAX_TOPK;
    mo.gate.renormalize = 1;
    return zmlx_moe(h, w[0], w[1], w[2], w[3], &mo, out);
  }
  zmlx_array *g = NULL, *u = NULL, *a = NULL;
  zmlx_status st = zmlx_matmul(h, w[0], &g);
  if (st == ZMLX_OK) st = zmlx_matmul(h, w[1], &u);
  if (st == ZMLX_OK) st = zmlx_swiglu(g, u, &a);
  if (st == ZMLX_OK) st = zmlx_matmul(a, w[2], out);
  zmlx_array_release(g), zmlx_array_release(u), zmlx_array_release(a);
  return st;
}

zmlx_status zmlxi_block_ffn(const zmlxi_block_shape *s, zmlx_array *const *w, zmlx_array **x) {
  zmlx_array *h = NULL, *f = NULL;
  zmlx_status st = zmlx_rmsnorm(*x, w[BLOCK_FFN_NORM], s->norm_eps, &h);
  if (st == ZMLX_OK) st = zmlxi_ffn_apply(s, w + BLOCK_FFN, h, &f);
  zmlx_array_release(h);
  return st == ZMLX_OK ? zmlxi_residual(x, f) : st;
}

zmlx_status zmlxi_block_apply(const zmlxi_block_shape *s, zmlx_array *const *w, int64_t B,
                              int64_t S, zmlx_array **x) {
  zmlx_array *h = NULL, *a = NULL;
  zmlx_status st = zmlx_rmsnorm(*x, w[BLOCK_ATTN_NORM], s->norm_eps, &h);
  if (st == ZMLX_OK) st = zmlxi_attention_apply(s, w + BLOCK_WQ, B, S, h, &a);
  zmlx_array_release(h);
  if (st == ZMLX_OK) st = zmlxi_residual(x, a);
  return st == ZMLX_OK ? zmlxi_block_ffn(s, w, x) : st;
}
