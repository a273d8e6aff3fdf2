/* zmlx_layer_forward: the input and parameter checks, with messages that
 * name the shapes, then the layer's math from layer_apply.c. Inputs of any
 * leading shape are flattened to rows ([N, width]) and the result given
 * the input's leading shape back. */
#include "nn/layer_object.h"

static zmlxi_block_shape block_shape(const zmlx_layer_config *c) {
  zmlxi_block_shape s = {.dim = c->dim, .heads = c->heads, .kv_heads = c->kv_heads,
                         .experts = c->experts, .top_k = c->top_k, .rope_base = c->rope_base,
                         .norm_eps = c->norm_eps};
  return s;
}

/* params (a caller's list) has the layer's count of arrays, each shaped
 * like the layer's own. */
static zmlx_status check_params(const zmlx_layer *l, zmlx_array *const *params) {
  char a[96], b[96];
  for (int i = 0; i < l->n_params; i++) {
    const zmlx_array *p = params[i], *own = l->params[i];
    if (!p)
      return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_layer_forward: params[%d] (%s) is NULL", i,
                        l->names[i]);
    int same = p->ndim == own->ndim;
    for (int d = 0; same && d < p->ndim; d++) same = p->shape[d] == own->shape[d];
    if (!same)
      return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_layer_forward: params[%d] (%s) is %s, the %s "
                        "layer's is %s", i, l->names[i],
                        zmlxi_shape_str(a, sizeof a, p->ndim, p->shape),
                        zmlxi_layer_kind_name(l->cfg.kind),
                        zmlxi_shape_str(b, sizeof b, own->ndim, own->shape));
  }
  return ZMLX_OK;
}

/* The width the layer reads along x's last axis (0: an embedding's ids),
 * and whether it wants x as [batch, seq, width]. */
static int64_t input_width(const zmlx_layer_config *c, int *sequences) {
  *sequences = c->kind == ZMLX_LAYER_ATTENTION || c->kind == ZMLX_LAYER_BLOCK;
  if (c->kind == ZMLX_LAYER_EMBEDDING) return 0;
  return c->kind == ZMLX_LAYER_LINEAR ? c->in_features : c->dim;
}

static zmlx_status check_input(const zmlx_layer *l, const zmlx_array *x) {
  char sh[96];
  int sequences = 0;
  const int64_t width = input_width(&l->cfg, &sequences);
  if (width == 0) return ZMLX_OK; /* zmlx_embedding checks its ids */
  const char *kind = zmlxi_layer_kind_name(l->cfg.kind);
  if (!zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_layer_forward: the %s layer takes float x, got %s",
                      kind, zmlx_dtype_name(x->dtype));
  if (sequences && (x->ndim != 3 || x->shape[2] != width))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_layer_forward: the %s layer of dim %lld takes x "
                      "[batch, seq, %lld], got %s", kind, (long long)width, (long long)width,
                      zmlxi_shape_str(sh, sizeof sh, x->ndim, x->shape));
  if (x->ndim < 1 || x->shape[x->ndim - 1] != width || x->size == 0)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_layer_forward: the %s layer takes a non-empty "
                      "x [..., %lld], got %s", kind, (long long)width,
                      zmlxi_shape_str(sh, sizeof sh, x->ndim, x->shape));
  return ZMLX_OK;
}

/* The layer on rows h [N, width] (all kinds but embedding and norm). */
static zmlx_status apply_rows(const zmlx_layer_config *c, zmlx_array *const *p, int64_t B,
                              int64_t S, zmlx_array *h, zmlx_array **out) {
  const zmlxi_block_shape s = block_shape(c);
  switch (c->kind) {
  case ZMLX_LAYER_LINEAR: return zmlxi_linear_apply(h, p[0], c->bias ? p[1] : NULL, out);
  case ZMLX_LAYER_ATTENTION: return zmlxi_attention_apply(&s, p, B, S, h, out);
  case ZMLX_LAYER_MLP:
  case ZMLX_LAYER_MOE: return zmlxi_ffn_apply(&s, p, h, out);
  case ZMLX_LAYER_BLOCK: {
    zmlx_array *x = h;
    ZMLX_CHECK(zmlx_array_retain(x));
    zmlx_status st = zmlxi_block_apply(&s, p, B, S, &x);
    if (st != ZMLX_OK) {
      zmlx_array_release(x);
      return st;
    }
    *out = x;
    return ZMLX_OK;
  }
  default: return zmlxi_fail(ZMLX_ERR_INTERNAL, "zmlx_layer_forward: kind %d", (int)c->kind);
  }
}

zmlx_status zmlx_layer_forward(zmlx_layer *layer, zmlx_array *const *params, zmlx_array *x,
                               zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(layer);
  ZMLX_REQUIRE_ARG(x);
  if (params) ZMLX_CHECK(check_params(layer, params));
  ZMLX_CHECK(check_input(layer, x));
  zmlx_array *const *p = params ? params : layer->params;
  const zmlx_layer_config *c = &layer->cfg;
  if (c->kind == ZMLX_LAYER_EMBEDDING) return zmlx_embedding(p[0], x, out);
  if (c->kind == ZMLX_LAYER_RMSNORM) return zmlx_rmsnorm(x, p[0], c->norm_eps, out);
  /* rows [N, width], then x's leading shape back with the output's width */
  const int64_t width = x->shape[x->ndim - 1], N = x->size / width;
  const int64_t B = x->ndim == 3 ? x->shape[0] : 1, S = N / B;
  int64_t rows[2] = {N, width}, shape[ZMLX_MAX_DIMS];
  zmlx_array *h = NULL, *y = NULL;
  ZMLX_CHECK(zmlx_reshape(x, 2, rows, &h));
  zmlx_status st = apply_rows(c, p, B, S, h, &y);
  zmlx_array_release(h);
  if (st != ZMLX_OK) return st;
  for (int d = 0; d < x->ndim; d++) shape[d] = x->shape[d];
  shape[x->ndim - 1] = y->shape[1];
  st = zmlx_reshape(y, x->ndim, shape, out);
  zmlx_array_release(y);
  return st;
}

/* ------------------------------------------------ over a paged KV cache */

static zmlx_status cached(const char *call, zmlx_layer *layer, zmlx_kv_cache *cache,
                          int cache_layer, const int64_t *seqs, int decode, zmlx_array *x,
                          zmlx_array **out) {
  char sh[96];
  const zmlx_layer_config *c = &layer->cfg;
  if (c->kind != ZMLX_LAYER_ATTENTION && c->kind != ZMLX_LAYER_BLOCK)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: a %s layer has no KV cache (attention and "
                      "block layers do)", call, zmlxi_layer_kind_name(c->kind));
  if (x->ndim != 2 || x->shape[1] != c->dim || x->shape[0] < 1 ||
      !zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: the %s layer takes float rows x [n, %lld] (n >= 1), "
                      "got %s %s", call, zmlxi_layer_kind_name(c->kind), (long long)c->dim,
                      zmlxi_shape_str(sh, sizeof sh, x->ndim, x->shape),
                      zmlx_dtype_name(x->dtype));
  for (int64_t i = 0; decode && i < x->shape[0]; i++)
    for (int64_t j = 0; j < i; j++)
      if (seqs[i] == seqs[j])
        return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: sequence %lld appears twice", call,
                          (long long)seqs[i]);
  const zmlxi_block_shape s = block_shape(c);
  if (c->kind == ZMLX_LAYER_ATTENTION)
    return zmlxi_attention_cached(&s, layer->params, cache, cache_layer, seqs, decode, x, out);
  zmlx_array *y = x;
  ZMLX_CHECK(zmlx_array_retain(y));
  zmlx_status st = zmlxi_block_cached(&s, layer->params, cache, cache_layer, seqs, decode, &y);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  *out = y;
  return ZMLX_OK;
}

zmlx_status zmlx_layer_prefill(zmlx_layer *layer, zmlx_kv_cache *cache, int cache_layer,
                               int64_t seq, zmlx_array *x, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(layer);
  ZMLX_REQUIRE_ARG(cache);
  ZMLX_REQUIRE_ARG(x);
  return cached(__func__, layer, cache, cache_layer, &seq, 0, x, out);
}

zmlx_status zmlx_layer_decode(zmlx_layer *layer, zmlx_kv_cache *cache, int cache_layer,
                              const int64_t *seqs, zmlx_array *x, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(layer);
  ZMLX_REQUIRE_ARG(cache);
  ZMLX_REQUIRE_ARG(seqs);
  ZMLX_REQUIRE_ARG(x);
  return cached(__func__, layer, cache, cache_layer, seqs, 1, x, out);
}
