/* A zmlx_lm checkpoint's contents: the model's configuration as JSON in
 * the safetensors header's __metadata__ ("zmlx.config": a string, as the
 * format requires), so a file alone rebuilds the model, and the check of a
 * whole file against that configuration (every parameter present with its
 * dtype, shape and bytes) with nothing allocated but the header. No arrays,
 * no device: tests/fuzz/fuzz_safetensors.c runs it on any bytes. */
#include <stdio.h>
#include <string.h>

#include "nn/lm_checkpoint.h"
#include "nn/lm_plan.h"

const char *zmlxi_lm_st_dtype(zmlx_dtype dt) {
  return dt == ZMLX_F16 ? "F16" : dt == ZMLX_BF16 ? "BF16" : "F32";
}

/* ------------------------------------------------------------- config */

json_t *zmlxi_lm_config_json(const zmlx_lm_config *c) {
  return json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:s}", "vocab", c->vocab,
                   "dim", c->dim, "layers", c->layers, "heads", c->heads, "kv_heads",
                   c->kv_heads, "ffn_dim", c->ffn_dim, "experts", c->experts, "top_k", c->top_k,
                   "rope_base", c->rope_base, "norm_eps", c->norm_eps, "dtype",
                   zmlx_dtype_name(c->dtype));
}

static zmlx_status config_from_json(const char *what, const char *text, zmlx_lm_config *c) {
  json_error_t err;
  json_t *j = json_loads(text, 0, &err);
  const char *dt = NULL;
  memset(c, 0, sizeof *c);
  c->struct_size = sizeof *c;
  int bad = !j || json_unpack_ex(j, &err, 0, "{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:F, s:F, s:s}",
                                 "vocab", &c->vocab, "dim", &c->dim, "layers", &c->layers, "heads",
                                 &c->heads, "kv_heads", &c->kv_heads, "ffn_dim", &c->ffn_dim,
                                 "experts", &c->experts, "top_k", &c->top_k, "rope_base",
                                 &c->rope_base, "norm_eps", &c->norm_eps, "dtype", &dt);
  zmlx_status st = ZMLX_OK;
  if (bad)
    st = zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: the zmlx.config metadata is not a model "
                   "configuration: %s", what, err.text);
  else if (zmlx_dtype_from_name(dt, &c->dtype) != ZMLX_OK)
    st = zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: unknown dtype '%.32s' in zmlx.config", what, dt);
  json_decref(j);
  return st;
}

/* A zmlxi_lm_param_fn: the file holds this parameter (dtype, shape, bytes). */
static zmlx_status expect_param(void *ud, int layer, const char *name, int ndim,
                                const int64_t *shape, double std, double fill) {
  (void)layer, (void)std, (void)fill;
  const zmlxi_checkpoint *ck = ud;
  const unsigned char *bytes;
  size_t n;
  return zmlxi_st_tensor(&ck->st, name, zmlxi_lm_st_dtype(ck->cfg.dtype), ndim, shape, &bytes, &n);
}

zmlx_status zmlxi_checkpoint_parse(const char *what, const unsigned char *bytes, size_t size,
                                   zmlxi_checkpoint *ck) {
  memset(ck, 0, sizeof *ck);
  ZMLX_CHECK(zmlxi_st_parse(what, bytes, size, &ck->st));
  const char *cfg = zmlxi_st_meta(&ck->st, "zmlx.config");
  zmlx_lm_config raw;
  zmlx_status st = cfg ? config_from_json(what, cfg, &raw)
                       : zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: no zmlx.config in the header's "
                                   "__metadata__ (not written by zmlx_lm_save)", what);
  if (st == ZMLX_OK) st = zmlxi_lm_check_config(&raw, &ck->cfg);
  if (st == ZMLX_OK) st = zmlxi_lm_plan(&ck->cfg, expect_param, ck);
  if (st != ZMLX_OK) zmlxi_st_free(&ck->st);
  return st;
}

