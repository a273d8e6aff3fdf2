/* A decoder-only transformer from the catalog's ops (issue 14): the model
 * holds its parameters in one list (names, shapes, init) and its forward
 * is plain calls of differentiable ops, so autograd trains it and the same
 * code runs on every backend; each layer is a transformer block of
 * layer_apply.c, the code behind zmlx_layer. Generation through the paged KV cache lives
 * in lm_decode.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/lm.h"

/* ------------------------------------------------------------ parameters */

/* Add parameter `name` of the given shape (a zmlxi_lm_param_fn over the
 * model): normal(0, std), or `fill` when std is 0; notes where each layer's
 * parameters and the final norm are. */
static zmlx_status add_param(void *ud, int layer, const char *name, int ndim,
                             const int64_t *shape, double std, double fill) {
  zmlx_lm *lm = ud;
  int i = lm->n_params;
  snprintf(lm->names_buf[i], sizeof lm->names_buf[i], "%s", name);
  lm->names[i] = lm->names_buf[i];
  if (layer >= 0 && lm->layer_first[layer] == 0) lm->layer_first[layer] = i; /* 0 is embed's */
  if (layer < 0 && !strcmp(name, "norm")) lm->final_norm = i;
  const zmlx_lm_config *c = &lm->cfg;
  zmlx_status st = std > 0 ? zmlx_array_random_normal(c->device, c->dtype, ndim, shape,
                                                      c->seed * 1000003u + (uint64_t)i, 0, std,
                                                      &lm->params[i])
                           : zmlx_array_full(c->device, c->dtype, ndim, shape, fill, &lm->params[i]);
  if (st == ZMLX_OK) lm->n_params++;
  return st;
}

zmlx_status zmlx_lm_create(const zmlx_lm_config *cfg, zmlx_lm **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  zmlx_lm_config c;
  ZMLX_CHECK(zmlxi_lm_check_config(cfg, &c));
  ZMLX_CHECK(zmlxi_device_resolve(c.device, &c.device));
  zmlx_lm *lm = calloc(1, sizeof *lm);
  int *first = calloc((size_t)c.layers, sizeof *first);
  if (!lm || !first) {
    free(lm), free(first);
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  }
  lm->cfg = c;
  lm->layer_first = first;
  zmlx_status st = zmlxi_lm_plan(&lm->cfg, add_param, lm);
  if (st != ZMLX_OK) {
    zmlx_lm_destroy(lm);
    return st;
  }
  *out = lm;
  return ZMLX_OK;
}

zmlx_status zmlx_lm_destroy(zmlx_lm *lm) {
  if (!lm) return ZMLX_OK;
  for (int i = 0; i < lm->n_params; i++) zmlx_array_release(lm->params[i]);
  free(lm->layer_first);
  free(lm);
  return ZMLX_OK;
}

zmlx_status zmlx_lm_get_config(const zmlx_lm *lm, zmlx_lm_config *out) {
  ZMLX_REQUIRE_ARG(lm);
  ZMLX_REQUIRE_ARG(out);
  *out = lm->cfg;
  return ZMLX_OK;
}

zmlx_status zmlx_lm_parameters(const zmlx_lm *lm, int *n, zmlx_array *const **params,
                               const char *const **names) {
  ZMLX_REQUIRE_ARG(lm);
  if (n) *n = lm->n_params;
  if (params) *params = lm->params;
  if (names) *names = lm->names;
  return ZMLX_OK;
}

/* --------------------------------------------------------------- forward */

/* Hidden states [B S, dim] after every layer, before the final norm. */
static zmlx_status hidden(zmlx_lm *lm, zmlx_array *const *p, zmlx_array *tokens,
                          zmlx_array **out) {
  char sh[96];
  if (!tokens || tokens->ndim != 2 || tokens->dtype != ZMLX_I32)
    return zmlxi_fail(tokens ? ZMLX_ERR_SHAPE : ZMLX_ERR_NULL_ARG, "zmlx_lm: tokens must be "
                     "[batch, seq] i32, got %s %s", tokens ? zmlxi_shape_str(sh, sizeof sh,
                     tokens->ndim, tokens->shape) : "NULL", tokens ? zmlx_dtype_name(tokens->dtype) : "");
  const int64_t B = tokens->shape[0], S = tokens->shape[1];
  int64_t flat[2] = {B * S, lm->cfg.dim};
  zmlx_array *e = NULL, *x = NULL;
  zmlx_status st = zmlx_embedding(p[LM_EMBED], tokens, &e);
  if (st == ZMLX_OK) st = zmlx_reshape(e, 2, flat, &x);
  zmlx_array_release(e);
  const zmlxi_block_shape bs = zmlxi_lm_block_shape(&lm->cfg);
  for (int l = 0; l < lm->cfg.layers && st == ZMLX_OK; l++)
    st = zmlxi_block_apply(&bs, p + lm->layer_first[l], B, S, &x);
  if (st != ZMLX_OK) {
    zmlx_array_release(x);
    return st;
  }
  *out = x;
  return ZMLX_OK;
}

zmlx_status zmlxi_lm_head(zmlx_lm *lm, zmlx_array *const *p, zmlx_array *x, zmlx_array **logits) {
  zmlx_array *h = NULL;
  zmlx_status st = zmlx_rmsnorm(x, p[lm->final_norm], lm->cfg.norm_eps, &h);
  if (st == ZMLX_OK) st = zmlx_matmul(h, p[lm->final_norm + 1], logits);
  zmlx_array_release(h);
  return st;
}

zmlx_status zmlx_lm_logits(zmlx_lm *lm, zmlx_array *const *params, zmlx_array *tokens,
                           zmlx_array **logits) {
  ZMLX_REQUIRE_ARG(logits);
  *logits = NULL;
  ZMLX_REQUIRE_ARG(lm);
  zmlx_array *const *p = params ? params : lm->params;
  zmlx_array *x = NULL, *flat = NULL;
  ZMLX_CHECK(hidden(lm, p, tokens, &x));
  zmlx_status st = zmlxi_lm_head(lm, p, x, &flat);
  int64_t sh[3] = {tokens->shape[0], tokens->shape[1], lm->cfg.vocab};
  if (st == ZMLX_OK) st = zmlx_reshape(flat, 3, sh, logits);
  zmlx_array_release(x), zmlx_array_release(flat);
  return st;
}

zmlx_status zmlx_lm_loss(zmlx_lm *lm, zmlx_array *const *params, zmlx_array *tokens,
                         zmlx_array *targets, zmlx_array **loss) {
  char a[96], b[96];
  ZMLX_REQUIRE_ARG(loss);
  *loss = NULL;
  ZMLX_REQUIRE_ARG(lm);
  ZMLX_REQUIRE_ARG(tokens);
  ZMLX_REQUIRE_ARG(targets);
  if (targets->ndim != tokens->ndim || targets->size != tokens->size)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_lm_loss: targets %s do not match tokens %s",
                     zmlxi_shape_str(a, sizeof a, targets->ndim, targets->shape),
                     zmlxi_shape_str(b, sizeof b, tokens->ndim, tokens->shape));
  zmlx_array *const *p = params ? params : lm->params;
  zmlx_array *x = NULL, *logits = NULL, *t = NULL;
  ZMLX_CHECK(hidden(lm, p, tokens, &x));
  int64_t n = targets->size;
  zmlx_status st = zmlxi_lm_head(lm, p, x, &logits);
  if (st == ZMLX_OK) st = zmlx_array_reshape(targets, 1, &n, &t);
  if (st == ZMLX_OK) st = zmlx_cross_entropy(logits, t, NULL, loss, NULL);
  zmlx_array_release(x), zmlx_array_release(logits), zmlx_array_release(t);
  return st;
}

typedef struct loss_ctx {
  zmlx_lm *lm;
  zmlx_array *tokens, *targets;
} loss_ctx;

static zmlx_status loss_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  loss_ctx *c = ud;
  return zmlx_lm_loss(c->lm, in, c->tokens, c->targets, out);
}

zmlx_status zmlx_lm_value_and_grad(zmlx_lm *lm, zmlx_array *tokens, zmlx_array *targets,
                                   zmlx_array **loss, zmlx_array **grads) {
  ZMLX_REQUIRE_ARG(lm);
  ZMLX_REQUIRE_ARG(grads);
  loss_ctx c = {lm, tokens, targets};
  return zmlx_value_and_grad(loss_fn, &c, lm->params, lm->n_params, NULL, 0, loss, grads);
}
