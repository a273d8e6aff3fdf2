/* The layer objects of zmlx.h (issue 14): a configuration checked and
 * resolved once, the parameters it implies (names, shapes, initialisation)
 * owned by the layer. The forward is layer_forward.c; the math behind it,
 * shared with zmlx_lm, is layer_apply.c. */
#include <math.h>
#include <stdlib.h>

#include "nn/layer_object.h"

const char *zmlxi_layer_kind_name(zmlx_layer_kind k) {
  static const char *const names[] = {
      [ZMLX_LAYER_EMBEDDING] = "embedding", [ZMLX_LAYER_LINEAR] = "linear",
      [ZMLX_LAYER_RMSNORM] = "rmsnorm",     [ZMLX_LAYER_ATTENTION] = "attention",
      [ZMLX_LAYER_MLP] = "mlp",             [ZMLX_LAYER_MOE] = "moe",
      [ZMLX_LAYER_BLOCK] = "block"};
  return k >= ZMLX_LAYER_EMBEDDING && k <= ZMLX_LAYER_BLOCK ? names[k] : "unknown";
}

/* ------------------------------------------------------- configuration */

#define BAD_CONFIG(...) zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_layer_create: " __VA_ARGS__)

static zmlx_status check_attention(const zmlx_layer_config *c) {
  if (c->dim < 1 || c->heads < 1 || c->kv_heads < 1)
    return BAD_CONFIG("%s layer with dim %lld, heads %d, kv_heads %d: sizes must be positive",
                      zmlxi_layer_kind_name(c->kind), (long long)c->dim, c->heads, c->kv_heads);
  if (c->dim % c->heads || c->heads % c->kv_heads || (c->dim / c->heads) % 2)
    return BAD_CONFIG("dim %lld over %d heads (kv heads %d): heads must divide dim into an even "
                      "head_dim, kv_heads must divide heads", (long long)c->dim, c->heads,
                      c->kv_heads);
  if (c->dim / c->heads > ZMLX_ATTENTION_MAX_HEAD_DIM)
    return BAD_CONFIG("head_dim %lld > %d", (long long)(c->dim / c->heads),
                      ZMLX_ATTENTION_MAX_HEAD_DIM);
  if (!(c->rope_base > 0) || !isfinite(c->rope_base))
    return BAD_CONFIG("rope_base %g must be positive and finite", c->rope_base);
  return ZMLX_OK;
}

static zmlx_status check_ffn(const zmlx_layer_config *c, int moe) {
  if (c->dim < 1 || c->ffn_dim < 1)
    return BAD_CONFIG("%s layer with dim %lld, ffn_dim %lld: sizes must be positive",
                      zmlxi_layer_kind_name(c->kind), (long long)c->dim, (long long)c->ffn_dim);
  if (moe && (c->experts < 1 || c->top_k < 1 || c->top_k > c->experts ||
              c->top_k > ZMLX_MOE_MAX_K))
    return BAD_CONFIG("top_k %d with %d experts: 1 <= top_k <= experts and <= %d", c->top_k,
                      c->experts, ZMLX_MOE_MAX_K);
  return ZMLX_OK;
}

static zmlx_status check_norm(const zmlx_layer_config *c) {
  if (c->dim < 1) return BAD_CONFIG("rmsnorm layer with dim %lld", (long long)c->dim);
  if (!(c->norm_eps > 0) || !isfinite(c->norm_eps))
    return BAD_CONFIG("norm_eps %g must be positive and finite", c->norm_eps);
  return ZMLX_OK;
}

static zmlx_status check_kind(const zmlx_layer_config *c) {
  switch (c->kind) {
  case ZMLX_LAYER_EMBEDDING:
    if (c->vocab < 1 || c->dim < 1)
      return BAD_CONFIG("embedding layer with vocab %lld, dim %lld: sizes must be positive",
                        (long long)c->vocab, (long long)c->dim);
    return ZMLX_OK;
  case ZMLX_LAYER_LINEAR:
    if (c->in_features < 1 || c->out_features < 1)
      return BAD_CONFIG("linear layer with in_features %lld, out_features %lld: sizes must be "
                        "positive", (long long)c->in_features, (long long)c->out_features);
    return ZMLX_OK;
  case ZMLX_LAYER_RMSNORM: return check_norm(c);
  case ZMLX_LAYER_ATTENTION: return check_attention(c);
  case ZMLX_LAYER_MLP: return check_ffn(c, 0);
  case ZMLX_LAYER_MOE: return check_ffn(c, 1);
  case ZMLX_LAYER_BLOCK:
    ZMLX_CHECK(check_attention(c));
    ZMLX_CHECK(check_norm(c));
    if (c->experts < 0) return BAD_CONFIG("experts %d", c->experts);
    return check_ffn(c, c->experts > 0);
  }
  return BAD_CONFIG("kind %d is not a zmlx_layer_kind", (int)c->kind);
}

static double default_std(const zmlx_layer_config *c) {
  if (c->kind == ZMLX_LAYER_LINEAR) return 1.0 / sqrt((double)c->in_features);
  return c->kind == ZMLX_LAYER_EMBEDDING ? 1.0 : 0.02;
}

static zmlx_status resolve_config(const zmlx_layer_config *in, zmlx_layer_config *c) {
  ZMLX_REQUIRE_ARG_OF("zmlx_layer_create", in);
  if (in->struct_size != 0 && in->struct_size != sizeof *c)
    return BAD_CONFIG("cfg->struct_size is %zu, this library's zmlx_layer_config has %zu bytes",
                      in->struct_size, sizeof *c);
  *c = *in;
  c->struct_size = sizeof *c;
  if (c->dtype == (zmlx_dtype)0) c->dtype = ZMLX_F32;
  if (!c->kv_heads) c->kv_heads = c->heads;
  if (!c->top_k && c->experts) c->top_k = 2;
  if (c->rope_base == 0) c->rope_base = 10000;
  if (c->norm_eps == 0) c->norm_eps = 1e-5;
  if (c->dtype != ZMLX_F32 && c->dtype != ZMLX_F16 && c->dtype != ZMLX_BF16)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_layer_create: weights of dtype %s; f32, f16 or bf16",
                      zmlx_dtype_name(c->dtype));
  ZMLX_CHECK(check_kind(c));
  if (!(c->init_std >= 0) || !(c->out_std >= 0) || !isfinite(c->init_std) ||
      !isfinite(c->out_std))
    return BAD_CONFIG("init_std %g and out_std %g must be finite and >= 0", c->init_std,
                      c->out_std);
  if (c->init_std == 0) c->init_std = default_std(c);
  if (c->out_std == 0) c->out_std = c->init_std;
  return ZMLX_OK;
}

/* ---------------------------------------------------------- parameters */

/* A parameter: name, shape, and normal(0, std) or (std 0) the value fill. */
typedef struct param_spec {
  const char *name;
  int ndim;
  int64_t shape[3];
  double std, fill;
} param_spec;

#define SPEC(n, s, f, ...) {n, sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), {__VA_ARGS__}, s, f}

static int attention_specs(const zmlx_layer_config *c, param_spec *p) {
  const int64_t D = c->dim, hd = c->dim / c->heads, Hq = c->heads * hd, Hkv = c->kv_heads * hd;
  const double s = c->init_std;
  param_spec list[] = {SPEC("wq", s, 0, D, Hq), SPEC("wk", s, 0, D, Hkv), SPEC("wv", s, 0, D, Hkv),
                       SPEC("wo", c->out_std, 0, Hq, D)};
  for (int i = 0; i < 4; i++) p[i] = list[i];
  return 4;
}

static int ffn_specs(const zmlx_layer_config *c, int moe, param_spec *p) {
  const int64_t D = c->dim, F = c->ffn_dim, E = c->experts;
  const double s = c->init_std, so = c->out_std;
  if (!moe) {
    param_spec list[] = {SPEC("w1", s, 0, D, F), SPEC("w3", s, 0, D, F), SPEC("w2", so, 0, F, D)};
    for (int i = 0; i < 3; i++) p[i] = list[i];
    return 3;
  }
  param_spec list[] = {SPEC("router", s, 0, E, D), SPEC("w1", s, 0, E, F, D),
                       SPEC("w3", s, 0, E, F, D), SPEC("w2", so, 0, E, D, F)};
  for (int i = 0; i < 4; i++) p[i] = list[i];
  return 4;
}

/* The parameters of the (resolved) configuration c, in the order of
 * zmlx_layer_parameters; their number. */
static int param_specs(const zmlx_layer_config *c, param_spec *p) {
  const double s = c->init_std;
  switch (c->kind) {
  case ZMLX_LAYER_EMBEDDING: p[0] = (param_spec)SPEC("weight", s, 0, c->vocab, c->dim); return 1;
  case ZMLX_LAYER_LINEAR:
    p[0] = (param_spec)SPEC("weight", s, 0, c->in_features, c->out_features);
    p[1] = (param_spec)SPEC("bias", 0, 0, c->out_features);
    return c->bias ? 2 : 1;
  case ZMLX_LAYER_RMSNORM: p[0] = (param_spec)SPEC("weight", 0, 1, c->dim); return 1;
  case ZMLX_LAYER_ATTENTION: return attention_specs(c, p);
  case ZMLX_LAYER_MLP: return ffn_specs(c, 0, p);
  case ZMLX_LAYER_MOE: return ffn_specs(c, 1, p);
  case ZMLX_LAYER_BLOCK:
    p[BLOCK_ATTN_NORM] = (param_spec)SPEC("attn_norm", 0, 1, c->dim);
    attention_specs(c, p + BLOCK_WQ);
    p[BLOCK_FFN_NORM] = (param_spec)SPEC("ffn_norm", 0, 1, c->dim);
    return BLOCK_FFN + ffn_specs(c, c->experts > 0, p + BLOCK_FFN);
  }
  return 0;
}

zmlx_status zmlx_layer_create(const zmlx_layer_config *cfg, zmlx_layer **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  zmlx_layer_config c;
  ZMLX_CHECK(resolve_config(cfg, &c));
  ZMLX_CHECK(zmlxi_device_resolve(c.device, &c.device));
  zmlx_layer *l = calloc(1, sizeof *l);
  if (!l) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  l->cfg = c;
  param_spec spec[BLOCK_MAX_PARAMS];
  const int n = param_specs(&c, spec);
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < n && st == ZMLX_OK; i++) {
    const param_spec *s = &spec[i];
    st = s->std > 0 ? zmlx_array_random_normal(c.device, c.dtype, s->ndim, s->shape,
                                               c.seed * 1000003u + (uint64_t)i, 0, s->std,
                                               &l->params[i])
                    : zmlx_array_full(c.device, c.dtype, s->ndim, s->shape, s->fill,
                                      &l->params[i]);
    l->names[i] = s->name;
    if (st == ZMLX_OK) l->n_params++;
  }
  if (st != ZMLX_OK) {
    zmlx_layer_destroy(l);
    return st;
  }
  *out = l;
  return ZMLX_OK;
}

zmlx_status zmlx_layer_destroy(zmlx_layer *layer) {
  if (!layer) return ZMLX_OK;
  for (int i = 0; i < layer->n_params; i++) zmlx_array_release(layer->params[i]);
  free(layer);
  return ZMLX_OK;
}

zmlx_status zmlx_layer_get_config(const zmlx_layer *layer, zmlx_layer_config *out) {
  ZMLX_REQUIRE_ARG(layer);
  ZMLX_REQUIRE_ARG(out);
  *out = layer->cfg;
  return ZMLX_OK;
}

zmlx_status zmlx_layer_parameters(const zmlx_layer *layer, int *n, zmlx_array *const **params,
                                  const char *const **names) {
  ZMLX_REQUIRE_ARG(layer);
  if (n) *n = layer->n_params;
  if (params) *params = layer->params;
  if (names) *names = layer->names;
  return ZMLX_OK;
}
