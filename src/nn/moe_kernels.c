/* The MoE kernels' table (src/nn/kernels/moe_*.zk) and the launch helpers
 * that moe_route.c (gating, dispatch, permute / combine) and moe.c
 * (experts, the layer) share; moe.h declares them. */
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
extern const char zmlxi_res_moe_gemm_tile_zk[];
extern const char zmlxi_res_attention_tile_zk[];

#define GATE_PARAMS "T:i64, E:i32, scaling:f32"
#define EXPERT_PARAMS "n:i64, K:i32, E:i32, H:i32, I:i32, ES:i32"
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
    /* w1, w3 read in place (rows ES apart, moe.c's w13_rows): the callers
     * pass every other input dense */
    [K_UP] = ZMLX_KSPEC("zmlx_moe_up", zmlxi_res_moe_up_zk,
                        "x, indices, w1, w3, s1, b1, s3, b3, offsets, order", "act, pre1, pre3",
                        EXPERT_PARAMS, .prelude = zmlxi_res_vec_io_zk,
                        .prelude2 = zmlxi_res_moe_rows_zk),
    [K_DOWN] = ZMLX_KSPEC("zmlx_moe_down", zmlxi_res_moe_down_zk,
                          "act, indices, weights, w2, s2, b2, offsets, order", "out, down",
                          EXPERT_PARAMS, .prelude = zmlxi_res_vec_io_zk,
                          .prelude2 = zmlxi_res_moe_rows_zk, .dense_inputs = 1),
    [K_COMBINE] = EXPERT_SPEC("zmlx_moe_combine", zmlxi_res_moe_combine_zk, "weights, indices",
                              "out, down"),
    [K_BWD_ACT] = EXPERT_SPEC("zmlx_moe_bwd_act", zmlxi_res_moe_bwd_act_zk,
                              "dy, indices, weights, w2, pre1, pre3", "da, db"),
    [K_BWD_WEIGHTS] = EXPERT_SPEC("zmlx_moe_bwd_weights", zmlxi_res_moe_bwd_weights_zk,
                                  "dy, down", "dw"),
    [K_BWD_DX] = ZMLX_KSPEC("zmlx_moe_bwd_dx", zmlxi_res_moe_bwd_dx_zk, "da, db, indices, w1, w3",
                            "dx", EXPERT_PARAMS, .prelude = zmlxi_res_moe_common_zk),
    [K_BWD_W13] = EXPERT_SPEC("zmlx_moe_bwd_w13", zmlxi_res_moe_bwd_w13_zk,
                              "da, db, x, offsets, order", "dw1, dw3"),
    [K_BWD_W2] = EXPERT_SPEC("zmlx_moe_bwd_w2", zmlxi_res_moe_bwd_w2_zk,
                             "dy, act, weights, offsets, order", "dw2"),
    [K_GATHER] = EXPERT_SPEC("zmlx_moe_gather", zmlxi_res_moe_gather_zk, "x, order, weights", "out"),
    [K_SCATTER] = EXPERT_SPEC("zmlx_moe_scatter", zmlxi_res_moe_scatter_zk, "y, slot, weights",
                              "out"),
    [K_COMBINE_DW] = EXPERT_SPEC("zmlx_moe_combine_dw", zmlxi_res_moe_combine_dw_zk, "dy, y, slot",
                                 "dw"),
    /* w1, w3 read in place as for K_UP; the tile helpers are attention's */
    [K_GEMM_TILE] = ZMLX_KSPEC("zmlx_moe_gemm_tile", zmlxi_res_moe_gemm_tile_zk,
                               "a, w1, w3, offsets, order", "c",
                               "n:i64, P:i32, N:i32, K:i32, E:i32, ES:i32, KT:i32, NTN:i32",
                               .prelude = zmlxi_res_attention_tile_zk),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("moe", SPECS);

zmlx_status zmlxi_moe_kernel(int which, zmlx_kernel **k) {
  return zmlxi_kernel_set_get(&KERNELS, which, k);
}

zmlx_status zmlxi_moe_launch_group(int which, const double *params, const zmlx_template_arg *t,
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

zmlx_status zmlxi_moe_launch(int which, const double *params, const zmlx_template_arg *t, int nt,
                          int64_t n, zmlx_array *const *in, int n_in, zmlx_array **out,
                          int n_out) {
  return zmlxi_moe_launch_group(which, params, t, nt, n, 256, in, n_in, out, n_out);
}

zmlx_status zmlxi_moe_alloc(zmlx_device *dev, zmlx_dtype dt, int64_t a, int64_t b, zmlx_array **out) {
  int64_t sh[2] = {a, b};
  return zmlxi_array_alloc(dev, NULL, dt, b < 0 ? 1 : 2, sh, out);
}

void zmlxi_moe_release(zmlx_array **a, int n) {
  for (int i = 0; i < n; i++) {
    zmlx_array_release(a[i]);
    a[i] = NULL;
  }
}

void zmlxi_moe_params(const moe_expert_cfg *c, int64_t n, double *p) {
  p[0] = (double)n;
  p[1] = c->k;
  p[2] = (double)c->E;
  p[3] = (double)c->H;
  p[4] = (double)c->I;
  p[5] = (double)(c->ES ? c->ES : c->I);
}
