/* MoE routing (issue 12): the gate (kernels/moe_gate*.zk: scores, top-k,
 * weights and their VJP), the dispatch of the (token, choice) pairs to
 * experts on the device (moe_dispatch.zk: stable, no atomics, no host
 * sync), and rows moved into dispatch order and back (moe_gather.zk,
 * moe_scatter.zk, moe_combine_dw.zk) for experts computed by other means.
 * Kernels and launch helpers: moe_kernels.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "nn/moe.h"

#define DISPATCH_CHUNK 256

/* ------------------------------------------------------------- gating */

static zmlx_status gate_validate(zmlx_array *logits, const zmlx_moe_gate_opts *opts,
                                 moe_gate_cfg *g) {
  char sh[96];
  memset(g, 0, sizeof *g);
  ZMLX_REQUIRE_ARG_OF("zmlx_moe_gate", logits);
  zmlx_moe_gate_opts o = {0};
  if (opts) {
    if (opts->struct_size != 0 && opts->struct_size != sizeof o)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_gate: opts->struct_size is %zu, this "
                       "library's zmlx_moe_gate_opts has %zu bytes", opts->struct_size, sizeof o);
    o = *opts;
  }
  if (logits->ndim != 2)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_gate: logits must be [tokens, experts], got %s",
                     zmlxi_shape_str(sh, sizeof sh, logits->ndim, logits->shape));
  if (!zmlxi_dtype_is_f32_f16_bf16(logits->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_moe_gate: logits have dtype %s; f32, f16 or bf16",
                     zmlx_dtype_name(logits->dtype));
  g->T = logits->shape[0];
  g->E = logits->shape[1];
  g->k = o.k ? o.k : 2;
  if (g->E < 1 || g->E > INT32_MAX)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_gate: %lld experts", (long long)g->E);
  if (g->k < 1 || g->k > ZMLX_MOE_MAX_K || g->k > g->E)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_gate: k = %d with %lld experts (1 <= k <= "
                     "min(experts, %d))", g->k, (long long)g->E, ZMLX_MOE_MAX_K);
  if (o.scoring != ZMLX_MOE_SOFTMAX_TOPK && o.scoring != ZMLX_MOE_TOPK_SOFTMAX &&
      o.scoring != ZMLX_MOE_SIGMOID)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_gate: unknown scoring %d", (int)o.scoring);
  g->scoring = (int)o.scoring;
  g->renormalize = o.renormalize != 0;
  g->scaling = o.scaling != 0 ? o.scaling : 1.0;
  if (!isfinite(g->scaling))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_gate: scaling %g", o.scaling);
  if (o.bias) {
    if (o.bias->ndim != 1 || o.bias->shape[0] != g->E || !zmlxi_dtype_is_f32_f16_bf16(o.bias->dtype))
      return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_gate: bias %s %s must be [experts = %lld] of a "
                       "float dtype", zmlxi_shape_str(sh, sizeof sh, o.bias->ndim, o.bias->shape),
                       zmlx_dtype_name(o.bias->dtype), (long long)g->E);
    if (o.bias->buffer->device != logits->buffer->device)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_gate: bias and logits live on different "
                       "devices");
    g->bias = o.bias;
  }
  return ZMLX_OK;
}

static zmlx_status gate_launch(int which, const moe_gate_cfg *g, zmlx_array *const *in, int n_in,
                               zmlx_array **out, int n_out) {
  double p[3] = {(double)g->T, (double)g->E, g->scaling};
  zmlx_template_arg t[4] = {{"K", ZMLX_TEMPLATE_INT, ZMLX_F32, g->k},
                            {"SCORING", ZMLX_TEMPLATE_INT, ZMLX_F32, g->scoring},
                            {"RENORM", ZMLX_TEMPLATE_BOOL, ZMLX_F32, g->renormalize},
                            {"HAS_BIAS", ZMLX_TEMPLATE_BOOL, ZMLX_F32, g->bias != NULL}};
  return zmlxi_moe_launch(which, p, t, 4, g->T, in, n_in, out, n_out);
}

typedef struct gate_ctx {
  moe_gate_cfg g;
  zmlx_array *indices; /* retained */
} gate_ctx;

static void gate_ctx_free(void *p) {
  gate_ctx *c = p;
  if (c) zmlx_array_release(c->indices);
  free(c);
}

static zmlx_status gate_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                            zmlx_array **grads) {
  if (!need[0]) return ZMLX_OK;
  const gate_ctx *c = n->ctx;
  zmlx_array *logits = n->in[0], *dw = NULL;
  ZMLX_CHECK(zmlxi_ad_cast(cot[0], ZMLX_F32, &dw));
  zmlx_status st = zmlxi_moe_alloc(logits->buffer->device, logits->dtype, c->g.T, c->g.E, &grads[0]);
  zmlx_array *in[3] = {logits, c->indices, dw};
  if (st == ZMLX_OK) st = gate_launch(K_GATE_BWD, &c->g, in, 3, &grads[0], 1);
  zmlx_array_release(dw);
  return st;
}

static const zmlx_ad_rule GATE_RULE = {"moe_gate", gate_vjp, NULL, gate_ctx_free};

zmlx_status zmlx_moe_gate(zmlx_array *logits, const zmlx_moe_gate_opts *opts,
                          zmlx_array **weights, zmlx_array **indices) {
  ZMLX_REQUIRE_ARG(weights);
  ZMLX_REQUIRE_ARG(indices);
  *weights = *indices = NULL;
  moe_gate_cfg g;
  ZMLX_CHECK(gate_validate(logits, opts, &g));
  zmlx_device *dev = logits->buffer->device;
  zmlx_array *w = NULL, *ix = NULL;
  zmlx_status st = zmlxi_moe_alloc(dev, ZMLX_F32, g.T, g.k, &w);
  if (st == ZMLX_OK) st = zmlxi_moe_alloc(dev, ZMLX_I32, g.T, g.k, &ix);
  zmlx_array *in[2] = {logits, g.bias ? g.bias : logits}, *out[2] = {w, ix};
  if (st == ZMLX_OK) st = gate_launch(K_GATE, &g, in, 2, out, 2);
  gate_ctx *c = st == ZMLX_OK ? malloc(sizeof *c) : NULL;
  if (st == ZMLX_OK && !c) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_moe_gate: out of memory");
  if (st == ZMLX_OK) {
    c->g = g;
    c->g.bias = NULL; /* selection only: the backward never reads it */
    c->indices = ix;
    zmlx_array_retain(ix);
    st = zmlxi_ad_record(&GATE_RULE, c, &logits, 1, &w, 1, ZMLX_AD_SAVE_INPUTS);
  }
  if (st != ZMLX_OK) {
    zmlx_array_release(w);
    zmlx_array_release(ix);
    return st;
  }
  *weights = w;
  *indices = ix;
  return ZMLX_OK;
}

/* ----------------------------------------------------------- dispatch */

zmlx_status zmlxi_moe_dispatch(zmlx_array *indices, int64_t experts, zmlx_array **offsets,
                              zmlx_array **order, zmlx_array **slot) {
  *offsets = *order = *slot = NULL;
  zmlx_device *dev = indices->buffer->device;
  const int64_t P = indices->size, C = P > 0 ? (P + DISPATCH_CHUNK - 1) / DISPATCH_CHUNK : 1;
  zmlx_array *a[5] = {0}; /* cnt, base, offsets, order, slot */
  zmlx_status st = zmlxi_moe_alloc(dev, ZMLX_I32, experts * C, -1, &a[0]);
  if (st == ZMLX_OK) st = zmlxi_moe_alloc(dev, ZMLX_I32, experts * C, -1, &a[1]);
  if (st == ZMLX_OK) st = zmlxi_moe_alloc(dev, ZMLX_I32, experts + 1, -1, &a[2]);
  const int64_t order_n = P > 0 ? P : 1; /* -1 where no pair lands (unrouted pairs) */
  if (st == ZMLX_OK) st = zmlx_array_full(dev, ZMLX_I32, 1, &order_n, -1, &a[3]);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, ZMLX_I32, 1, &P, -1, &a[4]);
  double p[3] = {(double)P, (double)experts, (double)C};
  for (int stage = 0; stage < 3 && st == ZMLX_OK; stage++) {
    zmlx_template_arg t[2] = {{"STAGE", ZMLX_TEMPLATE_INT, ZMLX_F32, stage},
                              {"CHUNK", ZMLX_TEMPLATE_INT, ZMLX_F32, DISPATCH_CHUNK}};
    st = zmlxi_moe_launch(K_DISPATCH, p, t, 2, stage == 1 ? 1 : experts * C, &indices, 1, a, 5);
  }
  if (st != ZMLX_OK) {
    zmlxi_moe_release(a, 5);
    return st;
  }
  zmlx_array_release(a[0]);
  zmlx_array_release(a[1]);
  *offsets = a[2];
  *order = a[3];
  *slot = a[4];
  return ZMLX_OK;
}

zmlx_status zmlx_moe_dispatch(zmlx_array *indices, int experts, zmlx_array **offsets,
                              zmlx_array **order, zmlx_array **slot) {
  ZMLX_REQUIRE_ARG(offsets);
  ZMLX_REQUIRE_ARG(order);
  ZMLX_REQUIRE_ARG(slot);
  *offsets = *order = *slot = NULL;
  ZMLX_REQUIRE_ARG(indices);
  if (indices->dtype != ZMLX_I32)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_moe_dispatch: indices have dtype %s; i32 (what "
                     "zmlx_moe_gate returns)", zmlx_dtype_name(indices->dtype));
  if (experts < 1)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_dispatch: %d experts", experts);
  if (indices->size > INT32_MAX)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "zmlx_moe_dispatch: more than 2^31 pairs");
  zmlx_array *dense = NULL;
  ZMLX_CHECK(zmlx_array_contiguous(indices, &dense));
  zmlx_status st = zmlxi_moe_dispatch(dense, experts, offsets, order, slot);
  zmlx_array_release(dense);
  return st;
}

/* ---------------------------------------------------- permute, combine */

/* Launch of the gather or scatter kernel: rows x H threads. */
static zmlx_status move_rows(int which, int64_t rows, int64_t H, int k, int weighted,
                             zmlx_array *src, zmlx_array *map, zmlx_array *weights,
                             zmlx_array *out) {
  const moe_expert_cfg c = {.H = H, .k = k};
  double p[MOE_EXPERT_NPARAMS];
  zmlxi_moe_params(&c, rows * H, p);
  zmlx_template_arg t[1] = {{"WEIGHTED", ZMLX_TEMPLATE_BOOL, ZMLX_F32, weighted}};
  zmlx_array *in[3] = {src, map, weights ? weights : map};
  return zmlxi_moe_launch(which, p, t, 1, rows * H, in, 3, &out, 1);
}

typedef struct route_ctx {
  int k;
  zmlx_array *order, *slot; /* retained */
} route_ctx;

static void route_ctx_free(void *p) {
  route_ctx *c = p;
  if (c) zmlx_array_release(c->order), zmlx_array_release(c->slot);
  free(c);
}

static route_ctx *route_ctx_new(int k, zmlx_array *order, zmlx_array *slot) {
  route_ctx *c = malloc(sizeof *c);
  if (!c) return NULL;
  c->k = k;
  c->order = order, c->slot = slot;
  zmlx_array_retain(order), zmlx_array_retain(slot);
  return c;
}

static zmlx_status permute_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                               zmlx_array **grads) {
  if (!need[0]) return ZMLX_OK;
  const route_ctx *c = n->ctx;
  const zmlx_ad_meta *m = &n->in_meta[0];
  zmlx_array *g = NULL;
  ZMLX_CHECK(zmlx_array_contiguous(cot[0], &g));
  zmlx_status st = zmlxi_moe_alloc(m->device, ZMLX_F32, m->shape[0], m->shape[1], &grads[0]);
  if (st == ZMLX_OK)
    st = move_rows(K_SCATTER, m->shape[0], m->shape[1], c->k, 0, g, c->slot, NULL, grads[0]);
  zmlx_array_release(g);
  return st;
}

static const zmlx_ad_rule PERMUTE_RULE = {"moe_permute", permute_vjp, NULL, route_ctx_free};

/* order, slot: i32 of pairs = tokens x k entries (zmlx_moe_dispatch's). */
static zmlx_status check_route(const char *fn, zmlx_array *order, zmlx_array *slot, int64_t pairs) {
  char a[96], b[96];
  if (!order || !slot) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: order and slot are required", fn);
  if (order->dtype != ZMLX_I32 || slot->dtype != ZMLX_I32 || order->size != pairs ||
      slot->size != pairs)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: order %s %s and slot %s %s must be i32 of tokens x k = "
                     "%lld entries (zmlx_moe_dispatch's)", fn,
                     zmlxi_shape_str(a, sizeof a, order->ndim, order->shape),
                     zmlx_dtype_name(order->dtype), zmlxi_shape_str(b, sizeof b, slot->ndim, slot->shape),
                     zmlx_dtype_name(slot->dtype), (long long)pairs);
  return ZMLX_OK;
}

zmlx_status zmlx_moe_permute(zmlx_array *x, zmlx_array *order, zmlx_array *slot, int k,
                             zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(x);
  char a[96];
  if (x->ndim != 2 || !zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_permute: x must be [tokens, hidden] of a float "
                     "dtype, got %s %s", zmlxi_shape_str(a, sizeof a, x->ndim, x->shape),
                     zmlx_dtype_name(x->dtype));
  if (k < 1 || k > ZMLX_MOE_MAX_K)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_permute: k = %d (1 to %d)", k, ZMLX_MOE_MAX_K);
  const int64_t T = x->shape[0], H = x->shape[1], P = T * k;
  ZMLX_CHECK(check_route("zmlx_moe_permute", order, slot, P));
  zmlx_array *y = NULL;
  zmlx_status st = zmlxi_moe_alloc(x->buffer->device, x->dtype, P, H, &y);
  if (st == ZMLX_OK) st = move_rows(K_GATHER, P, H, k, 0, x, order, NULL, y);
  route_ctx *c = st == ZMLX_OK ? route_ctx_new(k, order, slot) : NULL;
  if (st == ZMLX_OK && !c) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_moe_permute: out of memory");
  if (st == ZMLX_OK) st = zmlxi_ad_record(&PERMUTE_RULE, c, &x, 1, &y, 1, 0);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  *out = y;
  return ZMLX_OK;
}

/* Inputs of the node: y, weights. */
static zmlx_status combine_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                               zmlx_array **grads) {
  const route_ctx *c = n->ctx;
  zmlx_array *y = n->in[0], *w = n->in[1], *dy = NULL;
  const int64_t P = y->shape[0], H = y->shape[1], T = P / c->k;
  zmlx_status st = zmlx_array_contiguous(cot[0], &dy);
  if (st == ZMLX_OK && need[0]) {
    st = zmlxi_moe_alloc(y->buffer->device, ZMLX_F32, P, H, &grads[0]);
    if (st == ZMLX_OK) st = move_rows(K_GATHER, P, H, c->k, 1, dy, c->order, w, grads[0]);
  }
  if (st == ZMLX_OK && need[1]) {
    const moe_expert_cfg cfg = {.H = H, .k = c->k};
    double p[MOE_EXPERT_NPARAMS];
    zmlxi_moe_params(&cfg, T * c->k, p);
    st = zmlxi_moe_alloc(y->buffer->device, ZMLX_F32, T, c->k, &grads[1]);
    zmlx_array *in[3] = {dy, y, c->slot};
    if (st == ZMLX_OK) st = zmlxi_moe_launch(K_COMBINE_DW, p, NULL, 0, T * c->k, in, 3, &grads[1], 1);
  }
  zmlx_array_release(dy);
  if (st != ZMLX_OK) zmlxi_moe_release(grads, 2);
  return st;
}

static const zmlx_ad_rule COMBINE_RULE = {"moe_combine", combine_vjp, NULL, route_ctx_free};

zmlx_status zmlx_moe_combine(zmlx_array *y, zmlx_array *weights, zmlx_array *order,
                             zmlx_array *slot, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(y);
  ZMLX_REQUIRE_ARG(weights);
  char a[96], b[96];
  if (y->ndim != 2 || weights->ndim != 2 || !zmlxi_dtype_is_f32_f16_bf16(y->dtype) ||
      !zmlxi_dtype_is_f32_f16_bf16(weights->dtype) ||
      y->shape[0] != weights->shape[0] * weights->shape[1])
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_combine: y %s must be [tokens x k, hidden] for "
                     "weights %s [tokens, k] (float dtypes)",
                     zmlxi_shape_str(a, sizeof a, y->ndim, y->shape),
                     zmlxi_shape_str(b, sizeof b, weights->ndim, weights->shape));
  const int k = (int)weights->shape[1];
  if (k < 1 || k > ZMLX_MOE_MAX_K)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_combine: k = %d (1 to %d)", k, ZMLX_MOE_MAX_K);
  const int64_t T = weights->shape[0], H = y->shape[1];
  ZMLX_CHECK(check_route("zmlx_moe_combine", order, slot, T * k));
  zmlx_array *o = NULL;
  zmlx_status st = zmlxi_moe_alloc(y->buffer->device, y->dtype, T, H, &o);
  if (st == ZMLX_OK) st = move_rows(K_SCATTER, T, H, k, 1, y, slot, weights, o);
  route_ctx *c = st == ZMLX_OK ? route_ctx_new(k, order, slot) : NULL;
  if (st == ZMLX_OK && !c) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_moe_combine: out of memory");
  zmlx_array *in[2] = {y, weights};
  if (st == ZMLX_OK) st = zmlxi_ad_record(&COMBINE_RULE, c, in, 2, &o, 1, ZMLX_AD_SAVE_INPUTS);
  if (st != ZMLX_OK) {
    zmlx_array_release(o);
    return st;
  }
  *out = o;
  return ZMLX_OK;
}
