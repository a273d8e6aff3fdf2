/* Embedding (issue 14): a gather of table rows by id (kernels/embedding.zk)
 * and its gradient without atomics (kernels/embedding_bwd.zk): the ids are
 * grouped on the device by the MoE dispatch (one choice per token, V
 * "experts"), then each table row sums its tokens' cotangents in order. */
#include <stdlib.h>

#include "autograd/ad.h"
#include "nn/moe.h"
#include "ops/kernel_util.h"

extern const char zmlxi_res_embedding_zk[];
extern const char zmlxi_res_embedding_bwd_zk[];

enum { K_FWD, K_BWD };

static const zmlx_kernel_spec SPECS[] = {
    [K_FWD] = ZMLX_KSPEC("zmlx_embedding", zmlxi_res_embedding_zk, "table, ids", "out",
                         "n:i64, D:i64, V:i64", .dense_inputs = 1),
    [K_BWD] = ZMLX_KSPEC("zmlx_embedding_bwd", zmlxi_res_embedding_bwd_zk, "dy, offsets, order",
                         "dtable", "n:i64, D:i64, V:i64", .dense_inputs = 1),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("embedding", SPECS);

static zmlx_status launch(int which, int64_t n, int64_t D, int64_t V, zmlx_array *const *in,
                          zmlx_array *out) {
  if (n == 0) return ZMLX_OK;
  zmlx_kernel *k;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, which, &k));
  double p[3] = {(double)n, (double)D, (double)V};
  zmlx_kernel_call call = {.n_inputs = 2 + (which == K_BWD), .n_outputs = 1, .inputs = in,
                           .outputs = &out, .params = p, .device = in[0]->buffer->device};
  zmlxi_kernel_call_grid_1d(&call, n);
  return zmlx_kernel_launch(k, &call);
}

typedef struct emb_ctx {
  int64_t V, D;
  zmlx_array *ids; /* dense i32 [tokens, 1], retained */
} emb_ctx;

static void emb_ctx_free(void *p) {
  emb_ctx *c = p;
  if (c) zmlx_array_release(c->ids);
  free(c);
}

static zmlx_status emb_vjp(const zmlx_ad_node *node, zmlx_array *const *cot, const uint8_t *need,
                           zmlx_array **grads) {
  if (!need[0]) return ZMLX_OK;
  const emb_ctx *c = node->ctx;
  zmlx_array *offsets = NULL, *order = NULL, *slot = NULL, *dy = NULL, *dtable = NULL;
  zmlx_device *dev = cot[0]->buffer->device;
  zmlx_status st = zmlxi_moe_dispatch(c->ids, c->V, &offsets, &order, &slot);
  if (st == ZMLX_OK) st = zmlx_array_contiguous(cot[0], &dy);
  int64_t shape[2] = {c->V, c->D};
  if (st == ZMLX_OK) st = zmlxi_array_alloc(dev, NULL, cot[0]->dtype, 2, shape, &dtable);
  zmlx_array *in[3] = {dy, offsets, order};
  if (st == ZMLX_OK) st = launch(K_BWD, c->V * c->D, c->D, c->V, in, dtable);
  zmlx_array_release(offsets), zmlx_array_release(order), zmlx_array_release(slot);
  zmlx_array_release(dy);
  if (st != ZMLX_OK) {
    zmlx_array_release(dtable);
    return st;
  }
  grads[0] = dtable;
  return ZMLX_OK;
}

static const zmlx_ad_rule EMBEDDING_RULE = {"embedding", emb_vjp, NULL, emb_ctx_free};

static zmlx_status emb_validate(zmlx_array *table, zmlx_array *ids) {
  char a[96];
  ZMLX_REQUIRE_ARG_OF("zmlx_embedding", table);
  ZMLX_REQUIRE_ARG_OF("zmlx_embedding", ids);
  if (table->ndim != 2)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_embedding: table must be [V, D], got %s",
                     zmlxi_shape_str(a, sizeof a, table->ndim, table->shape));
  if (!zmlxi_dtype_is_f32_f16_bf16(table->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_embedding: table has dtype %s; f32, f16 or bf16",
                     zmlx_dtype_name(table->dtype));
  if (ids->dtype != ZMLX_I32 && ids->dtype != ZMLX_I64)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_embedding: ids have dtype %s; i32 or i64",
                     zmlx_dtype_name(ids->dtype));
  if (ids->ndim + 1 > ZMLX_MAX_DIMS)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_embedding: ids have %d dims; at most %d", ids->ndim,
                     ZMLX_MAX_DIMS - 1);
  if (table->shape[0] > INT32_MAX || ids->size > INT32_MAX)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "zmlx_embedding: more than 2^31 rows or ids");
  if (table->buffer->device != ids->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_embedding: table and ids live on different "
                     "devices");
  return ZMLX_OK;
}

/* What the backward keeps: the ids as dense i32 [tokens, 1] (the dispatch's
 * pairs with one choice each). */
static zmlx_status record(zmlx_array *table, zmlx_array *ids, zmlx_array *out) {
  emb_ctx *c = calloc(1, sizeof *c);
  if (!c) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  c->V = table->shape[0];
  c->D = table->shape[1];
  zmlx_array *i32 = NULL;
  int64_t shape[2] = {ids->size, 1};
  zmlx_status st = zmlx_array_astype(ids, ZMLX_I32, &i32);
  if (st == ZMLX_OK) st = zmlx_array_reshape(i32, 2, shape, &c->ids);
  zmlx_array_release(i32);
  if (st == ZMLX_OK) return zmlxi_ad_record(&EMBEDDING_RULE, c, &table, 1, &out, 1, 0);
  emb_ctx_free(c);
  return st;
}

zmlx_status zmlx_embedding(zmlx_array *table, zmlx_array *ids, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(emb_validate(table, ids));
  int64_t shape[ZMLX_MAX_DIMS];
  for (int i = 0; i < ids->ndim; i++) shape[i] = ids->shape[i];
  shape[ids->ndim] = table->shape[1];
  zmlx_array *y = NULL;
  ZMLX_CHECK(zmlxi_array_alloc(table->buffer->device, NULL, table->dtype, ids->ndim + 1, shape, &y));
  zmlx_array *in[2] = {table, ids};
  zmlx_status st = launch(K_FWD, ids->size * table->shape[1], table->shape[1], table->shape[0],
                          in, y);
  if (st == ZMLX_OK && zmlxi_ad_should_record(&table, 1)) st = record(table, ids, y);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  *out = y;
  return ZMLX_OK;
}
