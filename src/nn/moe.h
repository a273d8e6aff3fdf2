/*
 * What the MoE files (moe_kernels.c, moe_route.c, moe.c) share with each
 * other and with their verifiers (src/check/moe*_check.c) beyond the public
 * API.
 */
#ifndef ZMLX_NN_MOE_H
#define ZMLX_NN_MOE_H

#include "runtime/internal.h"

/* ------------------------------------------------ kernels (moe_kernels.c) */

/* The MoE kernels, entries of one kernel set. */
enum { K_GATE, K_GATE_BWD, K_DISPATCH, K_UP, K_DOWN, K_COMBINE, K_BWD_ACT, K_BWD_WEIGHTS, K_BWD_DX,
       K_BWD_W13, K_BWD_W2, K_GATHER, K_SCATTER, K_COMBINE_DW, K_GEMM_TILE };

/* Kernel `which` of the set (for a launch of the caller's own shape). */
zmlx_status zmlxi_moe_kernel(int which, zmlx_kernel **k);

/* Kernel `which` over n threads (the 1-D grid rule) in threadgroups of
 * `group` threads (zmlxi_moe_launch: 256); nothing for n == 0. */
zmlx_status zmlxi_moe_launch_group(int which, const double *params, const zmlx_template_arg *t,
                                   int nt, int64_t n, int group, zmlx_array *const *in, int n_in,
                                   zmlx_array **out, int n_out);
zmlx_status zmlxi_moe_launch(int which, const double *params, const zmlx_template_arg *t, int nt,
                             int64_t n, zmlx_array *const *in, int n_in, zmlx_array **out,
                             int n_out);
/* A dense [a, b] array (b < 0: [a]). */
zmlx_status zmlxi_moe_alloc(zmlx_device *dev, zmlx_dtype dt, int64_t a, int64_t b, zmlx_array **out);
/* Release n arrays and clear their slots. */
void zmlxi_moe_release(zmlx_array **a, int n);

typedef struct moe_gate_cfg {
  int64_t T, E;
  int k, scoring, renormalize;
  double scaling;   /* resolved: 1 when the caller gave 0 */
  zmlx_array *bias; /* borrowed */
} moe_gate_cfg;

typedef struct moe_expert_cfg {
  int64_t T, H, I, E;
  /* rows between experts in w1 / w3 as the kernels read them: I when
   * dense, 2I for the halves of a fused gate_up [E, 2I, H] read in place */
  int64_t ES;
  int k;
} moe_expert_cfg;

/* The expert kernels' parameters (n:i64, K, E, H, I, ES) for n threads. */
#define MOE_EXPERT_NPARAMS 6
void zmlxi_moe_params(const moe_expert_cfg *c, int64_t n, double *p);

/* What the experts' forward keeps for the backward (f32): act, pre1, pre3
 * [pairs, inter], down [pairs, hidden]; all but act NULL without save. */
typedef struct moe_saved {
  zmlx_array *act, *pre1, *pre3, *down;
} moe_saved;

/* An expert weight as the kernels read it: dense (bits 0: w alone), int8
 * per row (w i8, scales) or int4 per group (w packed u8, scales, biases,
 * group). */
typedef struct moe_w {
  zmlx_array *w, *scales, *biases;
  int bits, group;
} moe_w;

/* The pairs of dense i32 indices grouped by expert: offsets [experts + 1],
 * order [pairs] (pair index at each grouped position), slot [pairs] (the
 * inverse; -1 for an index outside [0, experts)). */
zmlx_status zmlxi_moe_dispatch(zmlx_array *indices, int64_t experts, zmlx_array **offsets,
                              zmlx_array **order, zmlx_array **slot);
zmlx_status zmlxi_moe_experts_validate(zmlx_array *x, zmlx_array *weights, zmlx_array *indices,
                                      zmlx_array *w1, zmlx_array *w3, zmlx_array *w2,
                                      moe_expert_cfg *c);
/* The experts' forward alone (no autograd) on dense arrays. */
zmlx_status zmlxi_moe_experts_forward(const moe_expert_cfg *c, zmlx_array *x, zmlx_array *weights,
                                     zmlx_array *indices, const moe_w *w1, const moe_w *w3,
                                     const moe_w *w2, int save, moe_saved *s, zmlx_array **out);
void zmlxi_moe_saved_free(moe_saved *s);

/* moe_gemm.c: the experts for many tokens through the device's GEMM
 * library (the dtypes it takes; few experts when a gradient is recorded
 * for `tracked`; ZMLX_MOE_GEMM=0/1 overrides the rule), built from
 * recorded ops (dispatch, permute, per-expert products, combine).
 * tracked: x, weights, w1, w3, w2 (the inputs a gradient may follow). */
int zmlxi_moe_use_gemm(const moe_expert_cfg *c, zmlx_array *x, zmlx_array *const *tracked,
                       int n_tracked);
zmlx_status zmlxi_moe_experts_gemm(const moe_expert_cfg *c, zmlx_array *x, zmlx_array *weights,
                                   zmlx_array *indices, zmlx_array *w1, zmlx_array *w3,
                                   zmlx_array *w2, zmlx_array **out);

/* moe_tile.c: the experts of many tokens in 16-bit dtypes as two grouped
 * products on the matrix units, one launch each, the group sizes never read
 * on the host (forward only: inference and prefill). */
int zmlxi_moe_tile_applies(const moe_expert_cfg *c, zmlx_array *x, zmlx_array *w1,
                           zmlx_array *w3, zmlx_array *w2);
/* On dense x, weights, indices and w2; w1 / w3 rows c->ES apart. */
zmlx_status zmlxi_moe_experts_tile(const moe_expert_cfg *c, zmlx_array *x, zmlx_array *weights,
                                   zmlx_array *indices, zmlx_array *w1, zmlx_array *w3,
                                   zmlx_array *w2, zmlx_array **out);

#endif
