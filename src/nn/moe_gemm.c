/* MoE experts for many tokens through the device's GEMM library (CLBlast,
 * cuBLAS): the pairs are grouped by expert on the device (the dispatch),
 * moved into that order (zmlx_moe_permute), and each expert's rows go
 * through three library products around a SwiGLU; the outputs are combined
 * back per token with the routing weights (zmlx_moe_combine). Every step is
 * a recorded op, so autograd differentiates it with no rule of its own.
 *
 * The per-expert loop needs the group sizes on the host: one read of E + 1
 * offsets per call (a device sync), which batches amortise; the decode path
 * (few tokens) stays on the fused kernels, which never sync. The weight
 * gradients come through slices of the stacked weights, each a full-size
 * array summed per expert, so the path is kept to few experts. */
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "nn/moe.h"

#define MOE_GEMM_MAX_EXPERTS_GRAD 16
#define MOE_GEMM_MIN_PAIRS_PER_EXPERT 16

/* Batches of at least 16 pairs an expert whose dtype the device's library
 * multiplies (cuBLAS: f32 / f16 / bf16, CLBlast: f32). When a gradient is
 * recorded: f32 with at most 16 experts (each expert's weight gradient is
 * a full-size array); otherwise (inference, prefill) any number of experts
 * and 16-bit dtypes too, whose products round h1, h3, the SwiGLU and each
 * expert's output row to the dtype (as a framework's per-expert loop does;
 * the fused kernels keep them in f32). ZMLX_MOE_GEMM=1 / 0 forces it (any
 * float dtype: the dialect's GEMM runs what the library does not) / turns
 * it off. */
int zmlxi_moe_use_gemm(const moe_expert_cfg *c, zmlx_array *x, zmlx_array *const *tracked,
                       int n_tracked) {
  const char *env = getenv("ZMLX_MOE_GEMM");
  if (env && (env[0] == '0' || env[0] == '1'))
    return env[0] == '1' && zmlxi_dtype_is_f32_f16_bf16(x->dtype);
  if (!zmlxi_device_gemm_takes(x->buffer->device, x->dtype)) return 0;
  const int record = zmlxi_ad_should_record(tracked, n_tracked);
  if (record && (x->dtype != ZMLX_F32 || c->E > MOE_GEMM_MAX_EXPERTS_GRAD)) return 0;
  /* the grouped tile products (moe_tile.c) where they apply: no host sync,
   * two launches whatever the experts */
  if (!record && zmlxi_moe_tile_applies(c, x, tracked[2], tracked[3], tracked[4])) return 0;
  return c->T * c->k >= MOE_GEMM_MIN_PAIRS_PER_EXPERT * c->E;
}

/* Expert e's matrix of w [E, R, C], transposed: [C, R] (a recorded view). */
static zmlx_status expert_matrix_t(zmlx_array *w, int64_t e, zmlx_array **out) {
  const int64_t R = w->shape[1], C = w->shape[2];
  int64_t lo[3] = {e, 0, 0}, hi[3] = {e + 1, R, C}, sh[2] = {R, C};
  int perm[2] = {1, 0};
  zmlx_array *s = NULL, *m = NULL;
  zmlx_status st = zmlx_slice(w, lo, hi, NULL, &s);
  if (st == ZMLX_OK) st = zmlx_reshape(s, 2, sh, &m);
  if (st == ZMLX_OK) st = zmlx_transpose(m, perm, out);
  zmlx_array_release(s), zmlx_array_release(m);
  return st;
}

/* y_e = swiglu(rows w1[e]^T, rows w3[e]^T) w2[e]^T for rows [n, H]. */
static zmlx_status expert_mlp(zmlx_array *rows, int64_t e, zmlx_array *w1, zmlx_array *w3,
                              zmlx_array *w2, zmlx_array **out) {
  zmlx_array *t1 = NULL, *t3 = NULL, *t2 = NULL, *h1 = NULL, *h3 = NULL, *a = NULL;
  zmlx_status st = expert_matrix_t(w1, e, &t1);
  if (st == ZMLX_OK) st = expert_matrix_t(w3, e, &t3);
  if (st == ZMLX_OK) st = expert_matrix_t(w2, e, &t2);
  if (st == ZMLX_OK) st = zmlx_matmul(rows, t1, &h1);
  if (st == ZMLX_OK) st = zmlx_matmul(rows, t3, &h3);
  if (st == ZMLX_OK) st = zmlx_swiglu(h1, h3, &a);
  if (st == ZMLX_OK) st = zmlx_matmul(a, t2, out);
  zmlx_array *tmp[] = {t1, t3, t2, h1, h3, a};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) zmlx_array_release(tmp[i]);
  return st;
}

/* The experts' outputs [P, H] in dispatch order: each expert's group, then
 * zero rows for pairs routed nowhere (an index outside [0, E)). */
static zmlx_status grouped_outputs(const moe_expert_cfg *c, zmlx_array *xp, const int32_t *off,
                                   zmlx_array *w1, zmlx_array *w3, zmlx_array *w2,
                                   zmlx_array **y) {
  const int64_t P = c->T * c->k;
  zmlx_array **pieces = calloc((size_t)c->E + 1, sizeof *pieces);
  if (!pieces) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  int n = 0;
  zmlx_status st = ZMLX_OK;
  for (int64_t e = 0; e < c->E && st == ZMLX_OK; e++) {
    if (off[e + 1] == off[e]) continue;
    int64_t lo[2] = {off[e], 0}, hi[2] = {off[e + 1], c->H};
    zmlx_array *rows = NULL;
    st = zmlx_slice(xp, lo, hi, NULL, &rows);
    if (st == ZMLX_OK) st = expert_mlp(rows, e, w1, w3, w2, &pieces[n++]);
    zmlx_array_release(rows);
  }
  if (st == ZMLX_OK && off[c->E] < P) {
    int64_t sh[2] = {P - off[c->E], c->H};
    st = zmlx_array_zeros(xp->buffer->device, xp->dtype, 2, sh, &pieces[n++]);
  }
  if (st == ZMLX_OK) st = zmlx_concat(pieces, n, 0, y);
  for (int i = 0; i < n; i++) zmlx_array_release(pieces[i]);
  free(pieces);
  return st;
}

zmlx_status zmlxi_moe_experts_gemm(const moe_expert_cfg *c, zmlx_array *x, zmlx_array *weights,
                                   zmlx_array *indices, zmlx_array *w1, zmlx_array *w3,
                                   zmlx_array *w2, zmlx_array **out) {
  zmlx_array *idx = NULL, *offsets = NULL, *order = NULL, *slot = NULL, *xp = NULL, *y = NULL;
  int32_t *off = malloc(sizeof(int32_t) * (size_t)(c->E + 1));
  zmlx_status st = off ? zmlx_array_contiguous(indices, &idx)
                       : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  if (st == ZMLX_OK) st = zmlxi_moe_dispatch(idx, c->E, &offsets, &order, &slot);
  if (st == ZMLX_OK)
    st = zmlx_array_to_host(offsets, off, sizeof(int32_t) * (size_t)(c->E + 1));
  if (st == ZMLX_OK) st = zmlx_moe_permute(x, order, slot, c->k, &xp);
  if (st == ZMLX_OK) st = grouped_outputs(c, xp, off, w1, w3, w2, &y);
  if (st == ZMLX_OK) st = zmlx_moe_combine(y, weights, order, slot, out);
  zmlx_array *tmp[] = {idx, offsets, order, slot, xp, y};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) zmlx_array_release(tmp[i]);
  free(off);
  return st;
}
