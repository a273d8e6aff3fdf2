/* The language model's configuration rules and its parameter list (names,
 * shapes, initialisation), without arrays or a device: zmlx_lm_create
 * allocates from this list, and zmlx_lm_load checks a file against it
 * before allocating anything (so a small file claiming a huge model is
 * refused by its size, not by running out of memory). Fuzzed with the
 * safetensors reader (tests/fuzz/fuzz_safetensors.c). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn/lm_plan.h"

zmlx_status zmlxi_lm_check_config(const zmlx_lm_config *in, zmlx_lm_config *c) {
  ZMLX_REQUIRE_ARG_OF("zmlx_lm_create", in);
  if (in->struct_size != 0 && in->struct_size != sizeof *c)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_create: cfg->struct_size is %zu, this "
                     "library's zmlx_lm_config has %zu bytes", in->struct_size, sizeof *c);
  *c = *in;
  c->struct_size = sizeof *c;
  if (!c->vocab) c->vocab = 256;
  if (!c->kv_heads) c->kv_heads = c->heads;
  if (!c->top_k) c->top_k = 2;
  if (c->rope_base == 0) c->rope_base = 10000;
  if (c->norm_eps == 0) c->norm_eps = 1e-5;
  if (c->dtype == (zmlx_dtype)0) c->dtype = ZMLX_F32; /* a zeroed config means f32 */
  if (c->vocab < 1 || c->dim < 1 || c->layers < 1 || c->heads < 1 || c->ffn_dim < 1 ||
      c->experts < 0 || c->kv_heads < 1)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_create: vocab %d, dim %d, layers %d, heads "
                     "%d, kv_heads %d, ffn_dim %d, experts %d: sizes must be positive", c->vocab,
                     c->dim, c->layers, c->heads, c->kv_heads, c->ffn_dim, c->experts);
  if (c->dim % c->heads || c->heads % c->kv_heads || (c->dim / c->heads) % 2)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_create: dim %d over %d heads (kv heads %d): "
                     "heads must divide dim into an even head_dim, kv_heads must divide heads",
                     c->dim, c->heads, c->kv_heads);
  if (c->dim / c->heads > ZMLX_ATTENTION_MAX_HEAD_DIM)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_create: head_dim %d > %d", c->dim / c->heads,
                     ZMLX_ATTENTION_MAX_HEAD_DIM);
  if (c->experts && (c->top_k < 1 || c->top_k > c->experts || c->top_k > ZMLX_MOE_MAX_K))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_create: top_k %d with %d experts",
                     c->top_k, c->experts);
  if (c->dtype != ZMLX_F32 && c->dtype != ZMLX_F16 && c->dtype != ZMLX_BF16)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_lm_create: weights of dtype %s; f32, f16 or bf16",
                     zmlx_dtype_name(c->dtype));
  if (!(c->rope_base > 0) || !isfinite(c->rope_base) || !(c->norm_eps > 0) ||
      !isfinite(c->norm_eps))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_create: rope_base %g and norm_eps %g must "
                     "be positive and finite", c->rope_base, c->norm_eps);
  /* every parameter has a row per layer at most: past the list's capacity
   * the plan below refuses the model anyway, without walking 2^31 layers */
  if (c->layers > ZMLX_LM_MAX_PARAMS)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_create: %d layers; at most %d parameters",
                     c->layers, ZMLX_LM_MAX_PARAMS);
  return ZMLX_OK;
}

typedef struct plan {
  zmlxi_lm_param_fn fn;
  void *ud;
  int count;
} plan;

static zmlx_status visit(plan *p, int layer, const char *name, int ndim, const int64_t *shape,
                         double std, double fill) {
  if (p->count == ZMLX_LM_MAX_PARAMS)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_create: more than %d parameters",
                     ZMLX_LM_MAX_PARAMS);
  p->count++;
  return p->fn(p->ud, layer, name, ndim, shape, std, fill);
}

static zmlx_status layer_params(plan *p, const zmlx_lm_config *c, int l) {
  const int64_t D = c->dim, hd = c->dim / c->heads, F = c->ffn_dim, E = c->experts;
  const double std = 0.02, out_std = 0.02 / sqrt(2.0 * c->layers);
  char n[48];
  int64_t d1[1] = {D}, wq[2] = {D, c->heads * hd}, wkv[2] = {D, c->kv_heads * hd};
  int64_t wo[2] = {c->heads * hd, D};
#define P(suffix, nd, shape, s, f)                              \
  do {                                                          \
    snprintf(n, sizeof n, "layers.%d.%s", l, suffix);           \
    ZMLX_CHECK(visit(p, l, n, nd, shape, s, f));                   \
  } while (0)
  P("attn_norm", 1, d1, 0, 1);
  P("wq", 2, wq, std, 0);
  P("wk", 2, wkv, std, 0);
  P("wv", 2, wkv, std, 0);
  P("wo", 2, wo, out_std, 0);
  P("ffn_norm", 1, d1, 0, 1);
  if (E) {
    int64_t router[2] = {E, D}, w13[3] = {E, F, D}, w2[3] = {E, D, F};
    P("router", 2, router, std, 0);
    P("w1", 3, w13, std, 0);
    P("w3", 3, w13, std, 0);
    P("w2", 3, w2, out_std, 0);
  } else {
    int64_t w13[2] = {D, F}, w2[2] = {F, D};
    P("w1", 2, w13, std, 0);
    P("w3", 2, w13, std, 0);
    P("w2", 2, w2, out_std, 0);
  }
#undef P
  return ZMLX_OK;
}

zmlx_status zmlxi_lm_plan(const zmlx_lm_config *c, zmlxi_lm_param_fn fn, void *ud) {
  plan p = {fn, ud, 0};
  int64_t emb[2] = {c->vocab, c->dim}, d1[1] = {c->dim}, head[2] = {c->dim, c->vocab};
  ZMLX_CHECK(visit(&p, -1, "embed", 2, emb, 0.02, 0));
  for (int l = 0; l < c->layers; l++) ZMLX_CHECK(layer_params(&p, c, l));
  ZMLX_CHECK(visit(&p, -1, "norm", 1, d1, 0, 1));
  return visit(&p, -1, "head", 2, head, 0.02, 0);
}
