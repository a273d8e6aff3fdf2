/* Mixture of experts (issue 12): gating (kernels/moe_gate*.zk), dispatch
 * of the (token, choice) pairs to experts on the device (moe_dispatch.zk),
 * SwiGLU experts over the pairs with the weighted combine fused into the
 * down-projection (moe_up.zk, moe_down.zk), their backward (moe_bwd_*.zk),
 * and zmlx_moe, the layer. Every kernel sums in a fixed order: no atomics,
 * the same bits on every run.
 *
 * The experts run per pair (token t's j-th choice reads x[t] and its
 * expert's rows), so a token count of 1 reads each chosen expert's weights
 * once and nothing else: the decode path. Prefill runs the same kernels (a
 * grouped GEMM on tensor cores is the step after; bench/NOTES.md). The
 * weight gradients walk each expert's pairs in dispatch order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "kernel/kernel.h"
#include "kernel/kernel_set.h"
#include "nn/moe.h"
#include "ops/kernel_util.h"

extern const char zmlxi_res_moe_common_zk[];
extern const char zmlxi_res_moe_rows_zk[];
extern const char zmlxi_res_moe_gate_zk[];
extern const char zmlxi_res_moe_gate_bwd_zk[];
extern const char zmlxi_res_moe_dispatch_zk[];
extern const char zmlxi_res_moe_up_zk[];
extern const char zmlxi_res_moe_down_zk[];
extern const char zmlxi_res_moe_combine_zk[];
extern const char zmlxi_res_moe_bwd_act_zk[];
extern const char zmlxi_res_moe_bwd_weights_zk[];
extern const char zmlxi_res_moe_bwd_dx_zk[];
extern const char zmlxi_res_moe_bwd_w13_zk[];
extern const char zmlxi_res_moe_bwd_w2_zk[];
extern const char zmlxi_res_moe_gather_zk[];
extern const char zmlxi_res_moe_scatter_zk[];
extern const char zmlxi_res_moe_combine_dw_zk[];

/* ------------------------------------------------------------ kernels */

enum { K_GATE, K_GATE_BWD, K_DISPATCH, K_UP, K_DOWN, K_COMBINE, K_BWD_ACT, K_BWD_WEIGHTS, K_BWD_DX,
       K_BWD_W13, K_BWD_W2, K_GATHER, K_SCATTER, K_COMBINE_DW };

#define GATE_PARAMS "T:i64, E:i32, scaling:f32"
#define EXPERT_PARAMS "n:i64, K:i32, E:i32, H:i32, I:i32"
#define EXPERT_SPEC(name, src, in, out)                                                   \
  ZMLX_KSPEC(name, src, in, out, EXPERT_PARAMS, .prelude = zmlxi_res_moe_common_zk,       \
             .dense_inputs = 1)
static const zmlx_kernel_spec SPECS[] = {
    [K_GATE] = ZMLX_KSPEC("zmlx_moe_gate", zmlxi_res_moe_gate_zk, "logits, bias",
                          "weights, indices", GATE_PARAMS, .dense_inputs = 1),
    [K_GATE_BWD] = ZMLX_KSPEC("zmlx_moe_gate_bwd", zmlxi_res_moe_gate_bwd_zk,
                              "logits, indices, dw", "dlogits", GATE_PARAMS, .dense_inputs = 1),
    [K_DISPATCH] = ZMLX_KSPEC("zmlx_moe_dispatch", zmlxi_res_moe_dispatch_zk, "indices",
                              "cnt, base, offsets, order, slot", "P:i64, E:i32, C:i32",
                              .prelude = zmlxi_res_moe_common_zk, .dense_inputs = 1),
    [K_UP] = ZMLX_KSPEC("zmlx_moe_up", zmlxi_res_moe_up_zk, "x, indices, w1, w3, s1, b1, s3, b3, offsets, order",
                        "act, pre1, pre3", EXPERT_PARAMS, .prelude = zmlxi_res_vec_io_zk,
                        .prelude2 = zmlxi_res_moe_rows_zk, .dense_inputs = 1),
    [K_DOWN] = ZMLX_KSPEC("zmlx_moe_down", zmlxi_res_moe_down_zk,
                          "act, indices, weights, w2, s2, b2, offsets, order", "out, down",
                          EXPERT_PARAMS,
                          .prelude = zmlxi_res_vec_io_zk,
                          .prelude2 = zmlxi_res_moe_rows_zk, .dense_inputs = 1),
    [K_COMBINE] = EXPERT_SPEC("zmlx_moe_combine", zmlxi_res_moe_combine_zk, "weights, indices",
                              "out, down"),
    [K_BWD_ACT] = EXPERT_SPEC("zmlx_moe_bwd_act", zmlxi_res_moe_bwd_act_zk,
                              "dy, indices, weights, w2, pre1, pre3", "da, db"),
    [K_BWD_WEIGHTS] = EXPERT_SPEC("zmlx_moe_bwd_weights", zmlxi_res_moe_bwd_weights_zk,
                                  "dy, down", "dw"),
    [K_BWD_DX] = EXPERT_SPEC("zmlx_moe_bwd_dx", zmlxi_res_moe_bwd_dx_zk,
                             "da, db, indices, w1, w3", "dx"),
    [K_BWD_W13] = EXPERT_SPEC("zmlx_moe_bwd_w13", zmlxi_res_moe_bwd_w13_zk,
                              "da, db, x, offsets, order", "dw1, dw3"),
    [K_BWD_W2] = EXPERT_SPEC("zmlx_moe_bwd_w2", zmlxi_res_moe_bwd_w2_zk,
                             "dy, act, weights, offsets, order", "dw2"),
    [K_GATHER] = EXPERT_SPEC("zmlx_moe_gather", zmlxi_res_moe_gather_zk, "x, order, weights", "out"),
    [K_SCATTER] = EXPERT_SPEC("zmlx_moe_scatter", zmlxi_res_moe_scatter_zk, "y, slot, weights",
                              "out"),
    [K_COMBINE_DW] = EXPERT_SPEC("zmlx_moe_combine_dw", zmlxi_res_moe_combine_dw_zk, "dy, y, slot",
                                 "dw"),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("moe", SPECS);

#define DISPATCH_CHUNK 256

/* A launch of kernel `which` over n threads (the 1-D grid rule) in
 * threadgroups of `group` threads. */
static zmlx_status launch_group(int which, const double *params, const zmlx_template_arg *t,
                                int nt, int64_t n, int group, zmlx_array *const *in, int n_in,
                                zmlx_array **out, int n_out) {
  if (n == 0) return ZMLX_OK;
  zmlx_kernel *k;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, which, &k));
  zmlx_kernel_call call = {.n_inputs = n_in, .n_outputs = n_out, .inputs = in, .outputs = out,
                           .templates = t, .n_templates = nt, .params = params,
                           .device = in[0]->buffer->device};
  zmlxi_kernel_call_grid_1d(&call, n);
  call.threadgroup[0] = group;
  return zmlx_kernel_launch(k, &call);
}

static zmlx_status launch(int which, const double *params, const zmlx_template_arg *t, int nt,
                          int64_t n, zmlx_array *const *in, int n_in, zmlx_array **out,
                          int n_out) {
  return launch_group(which, params, t, nt, n, 256, in, n_in, out, n_out);
}

static zmlx_status alloc(zmlx_device *dev, zmlx_dtype dt, int64_t a, int64_t b, zmlx_array **out) {
  int64_t sh[2] = {a, b};
  return zmlxi_array_alloc(dev, NULL, dt, b < 0 ? 1 : 2, sh, out);
}

static void release_all(zmlx_array **a, int n) {
  for (int i = 0; i < n; i++) {
    zmlx_array_release(a[i]);
    a[i] = NULL;
  }
}

/* The expert kernels' parameters (EXPERT_PARAMS) for n threads. */
static void expert_params(const moe_expert_cfg *c, int64_t n, double *p) {
  p[0] = (double)n;
  p[1] = c->k;
  p[2] = (double)c->E;
  p[3] = (double)c->H;
  p[4] = (double)c->I;
}

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
  return launch(which, p, t, 4, g->T, in, n_in, out, n_out);
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
  zmlx_status st = alloc(logits->buffer->device, logits->dtype, c->g.T, c->g.E, &grads[0]);
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
  zmlx_status st = alloc(dev, ZMLX_F32, g.T, g.k, &w);
  if (st == ZMLX_OK) st = alloc(dev, ZMLX_I32, g.T, g.k, &ix);
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
  zmlx_status st = alloc(dev, ZMLX_I32, experts * C, -1, &a[0]);
  if (st == ZMLX_OK) st = alloc(dev, ZMLX_I32, experts * C, -1, &a[1]);
  if (st == ZMLX_OK) st = alloc(dev, ZMLX_I32, experts + 1, -1, &a[2]);
  const int64_t order_n = P > 0 ? P : 1; /* -1 where no pair lands (unrouted pairs) */
  if (st == ZMLX_OK) st = zmlx_array_full(dev, ZMLX_I32, 1, &order_n, -1, &a[3]);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, ZMLX_I32, 1, &P, -1, &a[4]);
  double p[3] = {(double)P, (double)experts, (double)C};
  for (int stage = 0; stage < 3 && st == ZMLX_OK; stage++) {
    zmlx_template_arg t[2] = {{"STAGE", ZMLX_TEMPLATE_INT, ZMLX_F32, stage},
                              {"CHUNK", ZMLX_TEMPLATE_INT, ZMLX_F32, DISPATCH_CHUNK}};
    st = launch(K_DISPATCH, p, t, 2, stage == 1 ? 1 : experts * C, &indices, 1, a, 5);
  }
  if (st != ZMLX_OK) {
    release_all(a, 5);
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
  double p[5];
  expert_params(&c, rows * H, p);
  zmlx_template_arg t[1] = {{"WEIGHTED", ZMLX_TEMPLATE_BOOL, ZMLX_F32, weighted}};
  zmlx_array *in[3] = {src, map, weights ? weights : map};
  return launch(which, p, t, 1, rows * H, in, 3, &out, 1);
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
  zmlx_status st = alloc(m->device, ZMLX_F32, m->shape[0], m->shape[1], &grads[0]);
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
  zmlx_status st = alloc(x->buffer->device, x->dtype, P, H, &y);
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
    st = alloc(y->buffer->device, ZMLX_F32, P, H, &grads[0]);
    if (st == ZMLX_OK) st = move_rows(K_GATHER, P, H, c->k, 1, dy, c->order, w, grads[0]);
  }
  if (st == ZMLX_OK && need[1]) {
    const moe_expert_cfg cfg = {.H = H, .k = c->k};
    double p[5];
    expert_params(&cfg, T * c->k, p);
    st = alloc(y->buffer->device, ZMLX_F32, T, c->k, &grads[1]);
    zmlx_array *in[3] = {dy, y, c->slot};
    if (st == ZMLX_OK) st = launch(K_COMBINE_DW, p, NULL, 0, T * c->k, in, 3, &grads[1], 1);
  }
  zmlx_array_release(dy);
  if (st != ZMLX_OK) release_all(grads, 2);
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
  zmlx_status st = alloc(y->buffer->device, y->dtype, T, H, &o);
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

/* ------------------------------------------------------------ experts */

static zmlx_status expert_weight(const char *name, zmlx_array *w, int64_t E, int64_t a, int64_t b,
                                 zmlx_array *x) {
  char sh[96];
  if (!w) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_moe_experts: %s is NULL", name);
  if (w->ndim != 3 || w->shape[0] != E || w->shape[1] != a || w->shape[2] != b)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts: %s is %s, want [experts %lld, %lld, "
                     "%lld]", name, zmlxi_shape_str(sh, sizeof sh, w->ndim, w->shape),
                     (long long)E, (long long)a, (long long)b);
  if (!zmlxi_dtype_is_f32_f16_bf16(w->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_moe_experts: %s has dtype %s", name,
                     zmlx_dtype_name(w->dtype));
  if (w->buffer->device != x->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts: %s and x live on different "
                     "devices", name);
  return ZMLX_OK;
}

zmlx_status zmlxi_moe_experts_validate(zmlx_array *x, zmlx_array *weights, zmlx_array *indices,
                                      zmlx_array *w1, zmlx_array *w3, zmlx_array *w2,
                                      moe_expert_cfg *c) {
  char a[96], b[96];
  memset(c, 0, sizeof *c);
  ZMLX_REQUIRE_ARG_OF("zmlx_moe_experts", x);
  ZMLX_REQUIRE_ARG_OF("zmlx_moe_experts", weights);
  ZMLX_REQUIRE_ARG_OF("zmlx_moe_experts", indices);
  ZMLX_REQUIRE_ARG_OF("zmlx_moe_experts", w1);
  if (x->ndim != 2 || !zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts: x must be [tokens, hidden] of f32, f16 "
                     "or bf16, got %s %s", zmlxi_shape_str(a, sizeof a, x->ndim, x->shape),
                     zmlx_dtype_name(x->dtype));
  c->T = x->shape[0];
  c->H = x->shape[1];
  if (indices->ndim != 2 || indices->shape[0] != c->T || indices->dtype != ZMLX_I32 ||
      weights->ndim != 2 || weights->shape[0] != c->T || weights->shape[1] != indices->shape[1] ||
      !zmlxi_dtype_is_f32_f16_bf16(weights->dtype))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts: weights %s %s and indices %s %s must be "
                     "[tokens %lld, k] (float, i32)", zmlxi_shape_str(a, sizeof a, weights->ndim,
                     weights->shape), zmlx_dtype_name(weights->dtype),
                     zmlxi_shape_str(b, sizeof b, indices->ndim, indices->shape),
                     zmlx_dtype_name(indices->dtype), (long long)c->T);
  c->k = (int)indices->shape[1];
  if (c->k < 1 || c->k > ZMLX_MOE_MAX_K)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts: k = %d (1 to %d)", c->k,
                     ZMLX_MOE_MAX_K);
  if (w1->ndim != 3)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts: w1 is %s, want [experts, inter, hidden "
                     "%lld]", zmlxi_shape_str(a, sizeof a, w1->ndim, w1->shape), (long long)c->H);
  c->E = w1->shape[0];
  c->I = w1->shape[1];
  ZMLX_CHECK(expert_weight("w1", w1, c->E, c->I, c->H, x));
  ZMLX_CHECK(expert_weight("w3", w3, c->E, c->I, c->H, x));
  ZMLX_CHECK(expert_weight("w2", w2, c->E, c->H, c->I, x));
  if (c->k > c->E)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts: k = %d with %lld experts", c->k,
                     (long long)c->E);
  if (weights->buffer->device != x->buffer->device || indices->buffer->device != x->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts: weights, indices and x live on "
                     "different devices");
  if (c->T * c->k * (c->I > c->H ? c->I : c->H) > INT64_MAX / 4 || c->H > INT32_MAX ||
      c->I > INT32_MAX || c->E > INT32_MAX)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "zmlx_moe_experts: sizes too large");
  return ZMLX_OK;
}

/* A quantized weight's scales and biases, or (dense, or int8 without
 * biases) its own array as an input the kernel never reads. */
#define MOE_S(m) ((m)->scales ? (m)->scales : (m)->w)
#define MOE_B(m) ((m)->biases ? (m)->biases : (m)->w)


/* The forward: act (and with save the pre-activations and per-choice
 * outputs in s) and out. */
/* SIMD group per row (coalesced loads) where the device has native SIMD
 * groups, else a thread per row; ZMLX_MOE_SIMD_ROWS=0/1 overrides (the
 * check runs the SIMD form on CPUs too, through the emulation). */
static int simd_rows(zmlx_device *dev) {
  const char *env = getenv("ZMLX_MOE_SIMD_ROWS");
  if (env && (env[0] == '0' || env[0] == '1')) return env[0] == '1';
  zmlx_device_info info;
  return zmlx_device_get_info(dev, &info) == ZMLX_OK && info.native_simd;
}

/* Rows per (expert, row) looping over the expert's pairs once the batch
 * has more pairs than experts (a weight row then serves several pairs from
 * cache), else rows per pair; ZMLX_MOE_GROUPED=0/1 overrides. */
static int grouped_rows(const moe_expert_cfg *c) {
  const char *env = getenv("ZMLX_MOE_GROUPED");
  if (env && (env[0] == '0' || env[0] == '1')) return env[0] == '1';
  return c->T * c->k > c->E;
}

/* The 16-byte read of ZM_ROW_DOT (moe_rows.zk), elements a chunk, or 0 for
 * column reads: dense weights of one float dtype with rows a whole number
 * of chunks (4 f32, 8 f16 / bf16 elements), every start 16-byte aligned.
 * Quantized weights read by columns: on the H100 the chunked forms (16 int8
 * or 32 int4 a lane, serial decode) measured slower at one token (int8
 * 105 vs 79 us, int4 195 vs 137 us; bench/NOTES.md). ZMLX_MOE_VEC=0 turns
 * chunks off, =1 turns them on for quantized weights too (the check runs
 * both). */
static int weight_vec(const moe_expert_cfg *c, const moe_w *w1, const moe_w *w3, const moe_w *w2) {
  const char *env = getenv("ZMLX_MOE_VEC");
  if (env && env[0] == '0') return 0;
  const moe_w *all[3] = {w1, w3, w2};
  for (int i = 0; i < 3; i++)
    if (((size_t)all[i]->w->offset * zmlx_dtype_size(all[i]->w->dtype)) % 16) return 0;
  if (w1->bits && !(env && env[0] == '1')) return 0;
  if (w1->bits == 8) return c->H % 16 == 0 && c->I % 16 == 0 ? 16 : 0;
  if (w1->bits == 4) return 32;
  const zmlx_dtype dt = w1->w->dtype;
  if (dt != w3->w->dtype || dt != w2->w->dtype) return 0;
  const int vec = dt == ZMLX_F32 ? 4 : 8;
  return c->H % vec == 0 && c->I % vec == 0 ? vec : 0;
}

/* A row kernel's launch: rows threads, times the SIMD width in the SIMD
 * form, in whole threadgroups (the kernels' text names SIMD helpers, so
 * the launch checks ask for whole groups in either form). A group is 256
 * threads, or one SIMD group where SIMD is emulated (in threadgroup memory,
 * behind barriers that every thread of the group must reach equally often:
 * the grouped rows' pair loops differ from one SIMD group to the next). */
static zmlx_status launch_rows(int which, const double *params, const zmlx_template_arg *t, int nt,
                               int simd, int64_t rows, zmlx_array *const *in, int n_in,
                               zmlx_array **out, int n_out) {
  if (rows == 0) return ZMLX_OK;
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(in[0]->buffer->device, &info));
  const int group = simd && !info.native_simd ? info.simd_width : 256;
  const int64_t threads = (rows * (simd ? info.simd_width : 1) + group - 1) / group * group;
  return launch_group(which, params, t, nt, threads, group, in, n_in, out, n_out);
}

zmlx_status zmlxi_moe_experts_forward(const moe_expert_cfg *c, zmlx_array *x, zmlx_array *weights,
                                     zmlx_array *indices, const moe_w *w1, const moe_w *w3,
                                     const moe_w *w2, int save, moe_saved *s, zmlx_array **out) {
  zmlx_device *dev = x->buffer->device;
  const int64_t P = c->T * c->k;
  memset(s, 0, sizeof *s);
  double p[5];
  const int simd = simd_rows(dev), vec = weight_vec(c, w1, w3, w2);
  zmlx_template_arg t[7] = {{"SAVE", ZMLX_TEMPLATE_BOOL, ZMLX_F32, save},
                            {"QBITS", ZMLX_TEMPLATE_INT, ZMLX_F32, w1->bits},
                            {"GROUP", ZMLX_TEMPLATE_INT, ZMLX_F32, w1->group},
                            {"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32, simd},
                            {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                            {"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32,
                             vec && !w1->bits ? zmlxi_ops_xdt(w1->w->dtype) : 0}};
  zmlx_status st = alloc(dev, ZMLX_F32, P, c->I, &s->act);
  if (st == ZMLX_OK && save) st = alloc(dev, ZMLX_F32, P, c->I, &s->pre1);
  if (st == ZMLX_OK && save) st = alloc(dev, ZMLX_F32, P, c->I, &s->pre3);
  if (st == ZMLX_OK && save) st = alloc(dev, ZMLX_F32, P, c->H, &s->down);
  const int grouped = grouped_rows(c);
  zmlx_array *offsets = NULL, *order = NULL, *slot = NULL;
  if (st == ZMLX_OK && grouped && !save) st = alloc(dev, ZMLX_F32, P, c->H, &s->down);
  if (st == ZMLX_OK) st = alloc(dev, x->dtype, c->T, c->H, out);
  if (st == ZMLX_OK && grouped) st = zmlxi_moe_dispatch(indices, c->E, &offsets, &order, &slot);
  zmlx_array *grp[2] = {offsets ? offsets : indices, order ? order : indices};
  t[6] = (zmlx_template_arg){"GROUPED", ZMLX_TEMPLATE_BOOL, ZMLX_F32, grouped};
  if (st == ZMLX_OK) {
    const int64_t rows = grouped ? c->E * c->I : P * c->I;
    expert_params(c, rows, p);
    zmlx_array *in[10] = {x, indices, w1->w, w3->w, MOE_S(w1), MOE_B(w1), MOE_S(w3), MOE_B(w3),
                          grp[0], grp[1]};
    zmlx_array *o[3] = {s->act, save ? s->pre1 : s->act, save ? s->pre3 : s->act};
    st = launch_rows(K_UP, p, t, 7, simd, rows, in, 10, o, 3);
  }
  if (st == ZMLX_OK) {
    const int64_t rows = grouped ? c->E * c->H : c->T * c->H;
    expert_params(c, rows, p);
    zmlx_array *in[8] = {s->act, indices, weights, w2->w, MOE_S(w2), MOE_B(w2), grp[0], grp[1]};
    zmlx_array *o[2] = {*out, s->down ? s->down : *out};
    st = launch_rows(K_DOWN, p, t, 7, simd, rows, in, 8, o, 2);
  }
  if (st == ZMLX_OK && grouped) {
    expert_params(c, c->T * c->H, p);
    zmlx_array *in[2] = {weights, indices}, *o[2] = {*out, s->down};
    st = launch(K_COMBINE, p, NULL, 0, c->T * c->H, in, 2, o, 2);
  }
  zmlx_array_release(offsets);
  zmlx_array_release(order);
  zmlx_array_release(slot);
  if (st == ZMLX_OK && grouped && !save) {
    zmlx_array_release(s->down);
    s->down = NULL;
  }
  if (st != ZMLX_OK) {
    zmlxi_moe_saved_free(s);
    zmlx_array_release(*out);
    *out = NULL;
  }
  return st;
}

void zmlxi_moe_saved_free(moe_saved *s) {
  zmlx_array *a[4] = {s->act, s->pre1, s->pre3, s->down};
  release_all(a, 4);
  memset(s, 0, sizeof *s);
}

typedef struct experts_ctx {
  moe_expert_cfg c;
  moe_saved s;
} experts_ctx;

static void experts_ctx_free(void *p) {
  experts_ctx *x = p;
  if (x) zmlxi_moe_saved_free(&x->s);
  free(x);
}

/* Inputs of the node: x, weights, w1, w3, w2 (indices: a constant, kept
 * as input 5 but never differentiated). */
static zmlx_status experts_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                               zmlx_array **grads) {
  const experts_ctx *x = n->ctx;
  const moe_expert_cfg *c = &x->c;
  zmlx_array *xs = n->in[0], *weights = n->in[1], *w1 = n->in[2], *w3 = n->in[3], *w2 = n->in[4];
  zmlx_array *indices = n->in[5];
  zmlx_device *dev = xs->buffer->device;
  const int64_t P = c->T * c->k;
  zmlx_array *dy = NULL, *da = NULL, *db = NULL, *offsets = NULL, *order = NULL, *slot = NULL;
  double p[5];
  zmlx_status st = zmlxi_ad_cast(cot[0], ZMLX_F32, &dy);
  if (st == ZMLX_OK && need[1]) {
    st = alloc(dev, ZMLX_F32, c->T, c->k, &grads[1]);
    expert_params(c, P, p);
    zmlx_array *in[2] = {dy, x->s.down};
    if (st == ZMLX_OK) st = launch(K_BWD_WEIGHTS, p, NULL, 0, P, in, 2, &grads[1], 1);
  }
  const int need_act = need[0] || need[2] || need[3];
  if (st == ZMLX_OK && need_act) {
    st = alloc(dev, ZMLX_F32, P, c->I, &da);
    if (st == ZMLX_OK) st = alloc(dev, ZMLX_F32, P, c->I, &db);
    expert_params(c, P * c->I, p);
    zmlx_array *in[6] = {dy, indices, weights, w2, x->s.pre1, x->s.pre3}, *o[2] = {da, db};
    if (st == ZMLX_OK) st = launch(K_BWD_ACT, p, NULL, 0, P * c->I, in, 6, o, 2);
  }
  if (st == ZMLX_OK && need[0]) {
    st = alloc(dev, ZMLX_F32, c->T, c->H, &grads[0]);
    expert_params(c, c->T * c->H, p);
    zmlx_array *in[5] = {da, db, indices, w1, w3};
    if (st == ZMLX_OK) st = launch(K_BWD_DX, p, NULL, 0, c->T * c->H, in, 5, &grads[0], 1);
  }
  if (st == ZMLX_OK && (need[2] || need[3] || need[4]))
    st = zmlxi_moe_dispatch(indices, c->E, &offsets, &order, &slot);
  if (st == ZMLX_OK && (need[2] || need[3])) {
    int64_t sh[3] = {c->E, c->I, c->H};
    st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 3, sh, &grads[2]);
    if (st == ZMLX_OK) st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 3, sh, &grads[3]);
    expert_params(c, c->E * c->I * c->H, p);
    zmlx_array *in[5] = {da, db, xs, offsets, order}, *o[2] = {grads[2], grads[3]};
    if (st == ZMLX_OK) st = launch(K_BWD_W13, p, NULL, 0, c->E * c->I * c->H, in, 5, o, 2);
  }
  if (st == ZMLX_OK && need[4]) {
    int64_t sh[3] = {c->E, c->H, c->I};
    st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 3, sh, &grads[4]);
    expert_params(c, c->E * c->H * c->I, p);
    zmlx_array *in[5] = {dy, x->s.act, weights, offsets, order};
    if (st == ZMLX_OK) st = launch(K_BWD_W2, p, NULL, 0, c->E * c->H * c->I, in, 5, &grads[4], 1);
  }
  zmlx_array *tmp[6] = {dy, da, db, offsets, order, slot};
  release_all(tmp, 6);
  if (st != ZMLX_OK) release_all(grads, 5);
  return st;
}

static const zmlx_ad_rule EXPERTS_RULE = {"moe_experts", experts_vjp, NULL, experts_ctx_free};

zmlx_status zmlx_moe_experts(zmlx_array *x, zmlx_array *weights, zmlx_array *indices,
                             zmlx_array *w1, zmlx_array *w3, zmlx_array *w2, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  moe_expert_cfg c;
  ZMLX_CHECK(zmlxi_moe_experts_validate(x, weights, indices, w1, w3, w2, &c));
  zmlx_array *in[6] = {x, weights, w1, w3, w2, indices};
  zmlx_array *dense[6] = {0};
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < 6 && st == ZMLX_OK; i++) st = zmlx_array_contiguous(in[i], &dense[i]);
  const int save = st == ZMLX_OK && zmlxi_ad_should_record(in, 5);
  moe_saved s;
  memset(&s, 0, sizeof s);
  zmlx_array *y = NULL;
  const moe_w m1 = {dense[2], NULL, NULL, 0, 0}, m3 = {dense[3], NULL, NULL, 0, 0},
              m2 = {dense[4], NULL, NULL, 0, 0};
  if (st == ZMLX_OK)
    st = zmlxi_moe_experts_forward(&c, dense[0], dense[1], dense[5], &m1, &m3, &m2, save, &s, &y);
  experts_ctx *ctx = NULL;
  if (st == ZMLX_OK && save) {
    ctx = malloc(sizeof *ctx);
    if (!ctx) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_moe_experts: out of memory");
  }
  if (st == ZMLX_OK && save) {
    ctx->c = c;
    ctx->s = s;
    memset(&s, 0, sizeof s);
    /* the node's inputs are the caller's arrays (their gradients), its
     * kept copies the dense ones the kernels read */
    st = zmlxi_ad_record(&EXPERTS_RULE, ctx, in, 6, &y, 1, ZMLX_AD_SAVE_INPUTS);
  }
  zmlxi_moe_saved_free(&s);
  release_all(dense, 6);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  *out = y;
  return ZMLX_OK;
}

/* ---------------------------------------------------- quantized experts */

/* A quantized weight of `rows` x `cols` per expert (E experts). */
static zmlx_status qweight_check(const char *name, const zmlx_moe_qweight *w, int64_t E,
                                 int64_t rows, int64_t cols, zmlx_array *x, moe_w *m) {
  char a[96], b[96];
  if (!w || !w->q || !w->scales)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_moe_experts_quantized: %s needs q and scales", name);
  const int four = w->bits == 4;
  if (w->bits != 8 && !four)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts_quantized: %s has bits %d (8 or 4)",
                     name, w->bits);
  if (four && w->group_size != 32 && w->group_size != 64 && w->group_size != 128)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts_quantized: %s has group_size %d "
                     "(32, 64 or 128)", name, w->group_size);
  if (four && (cols % w->group_size || !w->biases))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts_quantized: %s: int4 needs biases and cols "
                     "%lld a multiple of group_size %d", name, (long long)cols, w->group_size);
  const int64_t qs[3] = {E, rows, four ? cols / 2 : cols};
  const int64_t ss[3] = {E, rows, four ? cols / w->group_size : 1};
  const zmlx_array *q = w->q, *sc = w->scales;
  if (q->ndim != 3 || memcmp(q->shape, qs, sizeof qs) || q->dtype != (four ? ZMLX_U8 : ZMLX_I8))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts_quantized: %s.q is %s %s, want %s %s", name,
                     zmlxi_shape_str(a, sizeof a, q->ndim, q->shape), zmlx_dtype_name(q->dtype),
                     zmlxi_shape_str(b, sizeof b, 3, qs), four ? "u8" : "i8");
  const int sn = four ? 3 : 2;
  for (const zmlx_array *v = sc; v; v = v == sc && four ? w->biases : NULL)
    if (v->ndim != sn || memcmp(v->shape, ss, sizeof(int64_t) * (size_t)sn) ||
        !zmlxi_dtype_is_f32_f16_bf16(v->dtype))
      return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts_quantized: %s's scales / biases %s %s, "
                       "want %s (float)", name, zmlxi_shape_str(a, sizeof a, v->ndim, v->shape),
                       zmlx_dtype_name(v->dtype), zmlxi_shape_str(b, sizeof b, sn, ss));
  if (q->buffer->device != x->buffer->device || sc->buffer->device != x->buffer->device ||
      (four && w->biases->buffer->device != x->buffer->device))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts_quantized: %s and x live on "
                     "different devices", name);
  *m = (moe_w){w->q, w->scales, four ? w->biases : NULL, w->bits, four ? w->group_size : 0};
  return ZMLX_OK;
}

zmlx_status zmlx_moe_experts_quantized(zmlx_array *x, zmlx_array *weights, zmlx_array *indices,
                                       const zmlx_moe_qweight *w1, const zmlx_moe_qweight *w3,
                                       const zmlx_moe_qweight *w2, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(w1);
  ZMLX_REQUIRE_ARG(w3);
  ZMLX_REQUIRE_ARG(w2);
  if (!w1->q || !w1->q->ndim)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_moe_experts_quantized: w1.q must be [experts, "
                     "inter, hidden%s]", w1->bits == 4 ? " / 2" : "");
  if (w3->bits != w1->bits || w2->bits != w1->bits || w3->group_size != w1->group_size ||
      w2->group_size != w1->group_size)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts_quantized: w1, w3, w2 must share one "
                     "format (bits %d / %d / %d, group_size %d / %d / %d)", w1->bits, w3->bits,
                     w2->bits, w1->group_size, w3->group_size, w2->group_size);
  /* the dense checks on stand-ins of the dequantized shapes */
  moe_expert_cfg c;
  memset(&c, 0, sizeof c);
  ZMLX_REQUIRE_ARG(x);
  ZMLX_REQUIRE_ARG(weights);
  ZMLX_REQUIRE_ARG(indices);
  if (x->ndim != 2 || w1->q->ndim != 3)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts_quantized: x must be [tokens, hidden] "
                     "and w1.q [experts, inter, ...]");
  c.T = x->shape[0], c.H = x->shape[1], c.E = w1->q->shape[0], c.I = w1->q->shape[1];
  moe_w m1, m3, m2;
  ZMLX_CHECK(qweight_check("w1", w1, c.E, c.I, c.H, x, &m1));
  ZMLX_CHECK(qweight_check("w3", w3, c.E, c.I, c.H, x, &m3));
  ZMLX_CHECK(qweight_check("w2", w2, c.E, c.H, c.I, x, &m2));
  if (!zmlxi_dtype_is_f32_f16_bf16(x->dtype) || indices->ndim != 2 || indices->shape[0] != c.T ||
      indices->dtype != ZMLX_I32 || weights->ndim != 2 || weights->shape[0] != c.T ||
      weights->shape[1] != indices->shape[1] || !zmlxi_dtype_is_f32_f16_bf16(weights->dtype))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts_quantized: x (float), weights and indices "
                     "[tokens %lld, k] (float, i32)", (long long)c.T);
  c.k = (int)indices->shape[1];
  if (c.k < 1 || c.k > ZMLX_MOE_MAX_K || c.k > c.E)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts_quantized: k = %d with %lld experts",
                     c.k, (long long)c.E);
  zmlx_array *tracked[2] = {x, weights};
  if (zmlxi_ad_should_record(tracked, 2))
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "zmlx_moe_experts_quantized: not differentiable "
                     "(inference only); use zmlx_moe_experts on dequantized weights for gradients");
  moe_saved s;
  zmlx_status st = zmlxi_moe_experts_forward(&c, x, weights, indices, &m1, &m3, &m2, 0, &s, out);
  zmlxi_moe_saved_free(&s);
  return st;
}

/* --------------------------------------------------------------- layer */

static zmlx_status shared_expert(zmlx_array *x, const zmlx_moe_opts *o, zmlx_array **out) {
  zmlx_array *t1 = NULL, *t3 = NULL, *t2 = NULL, *a = NULL, *b = NULL, *h = NULL;
  zmlx_status st = zmlx_transpose(o->shared_w1, NULL, &t1);
  if (st == ZMLX_OK) st = zmlx_transpose(o->shared_w3, NULL, &t3);
  if (st == ZMLX_OK) st = zmlx_transpose(o->shared_w2, NULL, &t2);
  if (st == ZMLX_OK) st = zmlx_matmul(x, t1, &a);
  if (st == ZMLX_OK) st = zmlx_matmul(x, t3, &b);
  if (st == ZMLX_OK) st = zmlx_swiglu(a, b, &h);
  if (st == ZMLX_OK) st = zmlx_matmul(h, t2, out);
  zmlx_array *tmp[6] = {t1, t3, t2, a, b, h};
  release_all(tmp, 6);
  return st;
}

zmlx_status zmlx_moe(zmlx_array *x, zmlx_array *router, zmlx_array *w1, zmlx_array *w3,
                     zmlx_array *w2, const zmlx_moe_opts *opts, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(x);
  ZMLX_REQUIRE_ARG(router);
  char a[96], b[96];
  zmlx_moe_opts o = {0};
  if (opts) {
    if (opts->struct_size != 0 && opts->struct_size != sizeof o)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe: opts->struct_size is %zu, this "
                       "library's zmlx_moe_opts has %zu bytes", opts->struct_size, sizeof o);
    o = *opts;
  }
  if (x->ndim != 2 || router->ndim != 2 || router->shape[1] != x->shape[1])
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe: x %s must be [tokens, hidden] and router %s "
                     "[experts, hidden]", zmlxi_shape_str(a, sizeof a, x->ndim, x->shape),
                     zmlxi_shape_str(b, sizeof b, router->ndim, router->shape));
  const int shared = o.shared_w1 || o.shared_w3 || o.shared_w2;
  if (shared && (!o.shared_w1 || !o.shared_w3 || !o.shared_w2))
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_moe: a shared expert needs shared_w1, shared_w3 "
                     "and shared_w2");
  zmlx_array *rt = NULL, *logits = NULL, *w = NULL, *ix = NULL, *y = NULL, *s = NULL;
  zmlx_status st = zmlx_transpose(router, NULL, &rt); /* recorded: router gets its gradient */
  if (st == ZMLX_OK) st = zmlx_matmul(x, rt, &logits);
  if (st == ZMLX_OK) st = zmlx_moe_gate(logits, &o.gate, &w, &ix);
  if (st == ZMLX_OK) st = zmlx_moe_experts(x, w, ix, w1, w3, w2, &y);
  if (st == ZMLX_OK && shared) st = shared_expert(x, &o, &s);
  if (st == ZMLX_OK && shared) st = zmlx_add(y, s, out);
  else if (st == ZMLX_OK) *out = y, y = NULL;
  zmlx_array *tmp[6] = {rt, logits, w, ix, y, s};
  release_all(tmp, 6);
  return st;
}
