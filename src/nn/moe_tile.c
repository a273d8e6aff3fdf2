/* MoE experts for many tokens as two grouped matrix products
 * (kernels/moe_gemm_tile.zk): the dispatch groups the pairs by expert on
 * the device; one launch computes every expert's SwiGLU rows (act, in the
 * dtype, grouped order), one more every expert's down rows (f32, pair
 * order); moe_combine.zk sums them per token. Unlike moe_gemm.c's loop of
 * library products, nothing is read back to the host (no sync) and the
 * launch count does not grow with the experts.
 *
 * Forward only, f16 / bf16 with dense weights: the path for inference and
 * prefill (zmlx_moe_experts with no gradient recorded). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel/kernel.h"
#include "nn/moe.h"
#include "ops/kernel_util.h"

enum { TILE_THREADS = 128, TILE_K = 64 };

/* The tile: blocks of 64 rows (RB), output columns (BN; the SwiGLU step
 * holds two accumulators, so 64 there) and the chunks of the reduction in
 * flight (STAGES). ZMLX_MOE_TILE_SHAPE="RB,BN_UP,BN_DOWN[,STAGES]" (RB 1 or
 * 2, BN 64 or 128, STAGES 2 or 3) overrides it, to measure;
 * ZMLX_MOE_TILE_INFLIGHT=1 keeps a batch of warpgroup products in flight
 * across the steps (the kernel's INFLIGHT: built, not yet measured). */
typedef struct tile_shape {
  int rb, bn_up, bn_down, stages;
} tile_shape;

static tile_shape shape(void) {
  tile_shape t = {2, 64, 128, 2};
  const char *e = getenv("ZMLX_MOE_TILE_SHAPE");
  int r, u, d, s = 2;
  if (e && sscanf(e, "%d,%d,%d,%d", &r, &u, &d, &s) >= 3 && (r == 1 || r == 2) &&
      (u == 64 || u == 128) && (d == 64 || d == 128) && (s == 2 || s == 3))
    t = (tile_shape){r, u, d, s};
  return t;
}

static size_t tile_shared_bytes(tile_shape t, int up, int wg) {
  const size_t ld = TILE_K + (wg ? 0 : 8), bm = 64 * (size_t)t.rb;
  const size_t bn = (size_t)(up ? t.bn_up : t.bn_down);
  return (size_t)t.stages * (bm + (size_t)(up ? 2 : 1) * bn) * ld * 2 + (wg ? 1024 : 0);
}

static int aligned16(const zmlx_array *a) { return ((size_t)a->offset * 2) % 16 == 0; }

/* Batches of at least one pair an expert on average, on a device with the
 * warp matrix products; below that the fused rows kernels, which read each
 * chosen weight row once with no tile to fill, are the decode path
 * (measured on the H100, 64 experts top-8, bf16: 1 token 75 us fused vs 111
 * us tiled, 8 tokens 447 vs 302 us, 64 tokens 3.26 ms vs 0.47 ms,
 * bench/NOTES.md). ZMLX_MOE_TILE=0 / 1 overrides the rule (not the
 * requirements: 16-bit x and weights, hidden and inter multiples of 8,
 * 16-byte aligned rows, 32-wide SIMD groups). */
int zmlxi_moe_tile_applies(const moe_expert_cfg *c, zmlx_array *x, zmlx_array *w1,
                           zmlx_array *w3, zmlx_array *w2) {
  zmlx_device *dev = x->buffer->device;
  zmlx_device_info info;
  if (x->dtype == ZMLX_F32 || w1->dtype != x->dtype || w3->dtype != x->dtype ||
      w2->dtype != x->dtype || c->H % 8 || c->I % 8 || !aligned16(w1) || !aligned16(w3) ||
      !aligned16(w2) || c->T * c->k > INT32_MAX / 2)
    return 0;
  if (zmlx_device_get_info(dev, &info) != ZMLX_OK || info.simd_width != 32 ||
      tile_shared_bytes(shape(), 1, 0) > info.max_shared_memory ||
      tile_shared_bytes(shape(), 0, 0) > info.max_shared_memory)
    return 0;
  const char *env = getenv("ZMLX_MOE_TILE");
  if (env && (env[0] == '0' || env[0] == '1')) return env[0] == '1';
  return zmlxi_ops_native_mma(dev) && c->T * c->k >= c->E;
}

/* One grouped product: UP (a = x by token, b = w1 / w3) or down (a = act,
 * b = w2) into out. */
static zmlx_status launch_product(const moe_expert_cfg *c, int up, zmlx_array *a, zmlx_array *b1,
                                  zmlx_array *b3, zmlx_array *offsets, zmlx_array *order,
                                  zmlx_array *out) {
  zmlx_device *dev = a->buffer->device;
  const tile_shape ts = shape();
  const int bn = up ? ts.bn_up : ts.bn_down, bm = 64 * ts.rb;
  const int64_t P = c->T * c->k, N = up ? c->I : c->H, K = up ? c->H : c->I;
  const int64_t ntn = (N + bn - 1) / bn, mtiles = (P + bm - 1) / bm + c->E;
  const int64_t groups = mtiles * ntn;
  if (P == 0) return ZMLX_OK;
  const int wg = zmlxi_ops_native_wgmma(dev), mma = zmlxi_ops_native_mma(dev);
  zmlx_kernel *k;
  ZMLX_CHECK(zmlxi_moe_kernel(K_GEMM_TILE, &k));
  double p[8] = {(double)groups, (double)P, (double)N, (double)K, (double)c->E,
                 (double)(up ? c->ES : c->H), (double)c->k, (double)ntn};
  const char *inflight = getenv("ZMLX_MOE_TILE_INFLIGHT");
  zmlx_template_arg t[10] = {{"T", ZMLX_TEMPLATE_DTYPE, a->dtype, 0},
                            {"HD", ZMLX_TEMPLATE_INT, ZMLX_F32, TILE_K},
                            {"RB", ZMLX_TEMPLATE_INT, ZMLX_F32, ts.rb},
                            {"BN", ZMLX_TEMPLATE_INT, ZMLX_F32, bn},
                            {"NATIVE_MMA", ZMLX_TEMPLATE_BOOL, ZMLX_F32, mma},
                            {"BF16", ZMLX_TEMPLATE_BOOL, ZMLX_F32, a->dtype == ZMLX_BF16},
                            {"NATIVE_WGMMA", ZMLX_TEMPLATE_BOOL, ZMLX_F32, wg},
                            {"UP", ZMLX_TEMPLATE_BOOL, ZMLX_F32, up},
                            {"STAGES", ZMLX_TEMPLATE_INT, ZMLX_F32, ts.stages},
                            {"INFLIGHT", ZMLX_TEMPLATE_BOOL, ZMLX_F32,
                             inflight && inflight[0] == '1'}};
  zmlx_array *in[5] = {a, b1, b3, offsets, order};
  zmlx_kernel_call call = {.n_inputs = 5, .n_outputs = 1, .inputs = in, .outputs = &out,
                           .grid = {groups * TILE_THREADS, 1, 1},
                           .threadgroup = {TILE_THREADS, 1, 1}, .templates = t,
                           .n_templates = 10, .params = p,
                           .dynamic_shared_bytes = tile_shared_bytes(ts, up, wg),
                           .device = dev};
  return zmlx_kernel_launch(k, &call);
}

zmlx_status zmlxi_moe_experts_tile(const moe_expert_cfg *c, zmlx_array *x, zmlx_array *weights,
                                   zmlx_array *indices, zmlx_array *w1, zmlx_array *w3,
                                   zmlx_array *w2, zmlx_array **out) {
  zmlx_device *dev = x->buffer->device;
  const int64_t P = c->T * c->k;
  zmlx_array *offsets = NULL, *order = NULL, *slot = NULL, *act = NULL, *down = NULL;
  zmlx_status st = zmlxi_moe_dispatch(indices, c->E, &offsets, &order, &slot);
  if (st == ZMLX_OK) st = zmlxi_moe_alloc(dev, x->dtype, P, c->I, &act);
  if (st == ZMLX_OK) st = zmlxi_moe_alloc(dev, ZMLX_F32, P, c->H, &down);
  if (st == ZMLX_OK) st = zmlxi_moe_alloc(dev, x->dtype, c->T, c->H, out);
  if (st == ZMLX_OK) st = launch_product(c, 1, x, w1, w3, offsets, order, act);
  if (st == ZMLX_OK) st = launch_product(c, 0, act, w2, w2, offsets, order, down);
  if (st == ZMLX_OK) {
    double p[MOE_EXPERT_NPARAMS];
    zmlxi_moe_params(c, c->T * c->H, p);
    zmlx_array *in[2] = {weights, indices}, *o[2] = {*out, down};
    st = zmlxi_moe_launch(K_COMBINE, p, NULL, 0, c->T * c->H, in, 2, o, 2);
  }
  zmlx_array *tmp[5] = {offsets, order, slot, act, down};
  zmlxi_moe_release(tmp, 5);
  if (st != ZMLX_OK) {
    zmlx_array_release(*out);
    *out = NULL;
  }
  return st;
}
