/* Scaled dot-product attention (issue 10): causal or masked (additive or
 * bool), GQA / MQA, [B, H, S, D] or [B, S, H, D], head_dim up to 256,
 * f32 / f16 / bf16 with f32 statistics. Forward: a flash-style kernel
 * (kernels/attention_fwd.zk: online softmax, the scores never stored) that
 * also returns the row logsumexp. Backward: FlashAttention-2's
 * recomputation from that logsumexp (attention_bwd_dq.zk per query row,
 * attention_bwd_dkv.zk per key row, attention_bwd_dmask.zk for an additive
 * mask's gradient). f16 / bf16 at head_dims that are multiples of 16 take
 * the tiled forms (attention_*_tile.zk: matrix units where the device has
 * them, warpgroup products on Hopper). Checks and benchmarks:
 * src/check/attention_check.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "kernel/kernel.h"
#include "kernel/kernel_set.h"
#include "ops/attention.h"
#include "ops/kernel_util.h"

extern const char zmlxi_res_attention_common_zk[];
extern const char zmlxi_res_attention_fwd_zk[];
extern const char zmlxi_res_attention_fwd_tile_zk[];
extern const char zmlxi_res_attention_tile_zk[];
extern const char zmlxi_res_attention_bwd_dq_tile_zk[];
extern const char zmlxi_res_attention_bwd_dkv_tile_zk[];
extern const char zmlxi_res_attention_bwd_dq_zk[];
extern const char zmlxi_res_attention_bwd_dkv_zk[];
extern const char zmlxi_res_attention_bwd_dmask_zk[];

/* ------------------------------------------------------------ kernels */

enum { K_FWD, K_FWD_TILE, K_DQ, K_DQ_TILE, K_DKV, K_DKV_TILE, K_DMASK };

#define ATTN_PARAMS "n:i64, Hq:i32, Hkv:i32, Sq:i32, Sk:i32, layout:i32, mB:i32, mH:i32, scale:f32"
static const zmlx_kernel_spec SPECS[] = {
    [K_FWD] = ZMLX_KSPEC("zmlx_attention_fwd", zmlxi_res_attention_fwd_zk, "q, k, v, mask",
                         "out, lse", ATTN_PARAMS, .prelude = zmlxi_res_attention_common_zk,
                         .dense_inputs = 1),
    [K_FWD_TILE] = ZMLX_KSPEC("zmlx_attention_fwd_tile", zmlxi_res_attention_fwd_tile_zk,
                              "q, k, v, mask", "out, lse", ATTN_PARAMS,
                              .prelude = zmlxi_res_attention_common_zk,
                              .prelude2 = zmlxi_res_attention_tile_zk, .dense_inputs = 1),
    [K_DQ] = ZMLX_KSPEC("zmlx_attention_bwd_dq", zmlxi_res_attention_bwd_dq_zk,
                        "q, k, v, mask, o, dout, lse, glse", "dq, delta", ATTN_PARAMS,
                        .prelude = zmlxi_res_attention_common_zk, .dense_inputs = 1),
    [K_DQ_TILE] = ZMLX_KSPEC("zmlx_attention_bwd_dq_tile", zmlxi_res_attention_bwd_dq_tile_zk,
                             "q, k, v, mask, o, dout, lse, glse", "dq_out, delta", ATTN_PARAMS,
                             .prelude = zmlxi_res_attention_common_zk,
                             .prelude2 = zmlxi_res_attention_tile_zk, .dense_inputs = 1),
    [K_DKV] = ZMLX_KSPEC("zmlx_attention_bwd_dkv", zmlxi_res_attention_bwd_dkv_zk,
                         "q, k, v, mask, dout, lse, delta", "dk, dv", ATTN_PARAMS,
                         .prelude = zmlxi_res_attention_common_zk, .dense_inputs = 1),
    [K_DKV_TILE] = ZMLX_KSPEC("zmlx_attention_bwd_dkv_tile", zmlxi_res_attention_bwd_dkv_tile_zk,
                              "q, k, v, mask, dout, lse, delta", "dk_out, dv_out", ATTN_PARAMS,
                              .prelude = zmlxi_res_attention_common_zk,
                              .prelude2 = zmlxi_res_attention_tile_zk, .dense_inputs = 1),
    [K_DMASK] = ZMLX_KSPEC("zmlx_attention_bwd_dmask", zmlxi_res_attention_bwd_dmask_zk,
                           "q, k, v, mask, dout, lse, delta", "dm", ATTN_PARAMS,
                           .prelude = zmlxi_res_attention_common_zk, .dense_inputs = 1),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("attention", SPECS);

/* ---------------------------------------------------------- validation */

static zmlx_status dims(const char *what, zmlx_array *a, int layout, int64_t *B, int64_t *H,
                        int64_t *S, int64_t *D) {
  char sh[96];
  if (!a) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_attention: %s is NULL", what);
  if (a->ndim != 4)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_attention: %s must have rank 4 (%s), got %s", what,
                     layout ? "[batch, seq, heads, head_dim]" : "[batch, heads, seq, head_dim]",
                     zmlxi_shape_str(sh, sizeof sh, a->ndim, a->shape));
  *B = a->shape[0];
  *H = a->shape[layout ? 2 : 1];
  *S = a->shape[layout ? 1 : 2];
  *D = a->shape[3];
  return ZMLX_OK;
}

static zmlx_status check_mask(zmlx_array *m, attn_cfg *c) {
  char sh[96];
  if (m->dtype == ZMLX_BOOL) c->mask_kind = 2;
  else if (zmlxi_dtype_is_f32_f16_bf16(m->dtype)) c->mask_kind = 1;
  else
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_attention: mask has dtype %s; additive f32 / f16 / "
                     "bf16 or bool (nonzero keeps)", zmlx_dtype_name(m->dtype));
  if (m->ndim < 2 || m->ndim > 4 || m->shape[m->ndim - 2] != c->Sq || m->shape[m->ndim - 1] != c->Sk)
    goto bad;
  c->mB = m->ndim == 4 ? m->shape[0] : 1;
  c->mH = m->ndim >= 3 ? m->shape[m->ndim - 3] : 1;
  if ((c->mB != 1 && c->mB != c->B) || (c->mH != 1 && c->mH != c->Hq)) goto bad;
  return ZMLX_OK;
bad:
  return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_attention: mask %s does not broadcast to [batch %lld, "
                   "heads %lld, q_len %lld, kv_len %lld] (its last two axes must be [%lld, %lld])",
                   zmlxi_shape_str(sh, sizeof sh, m->ndim, m->shape), (long long)c->B,
                   (long long)c->Hq, (long long)c->Sq, (long long)c->Sk, (long long)c->Sq,
                   (long long)c->Sk);
}

zmlx_status zmlxi_attention_validate(zmlx_array *q, zmlx_array *k, zmlx_array *v,
                                    const zmlx_attention_opts *opts, attn_cfg *c) {
  memset(c, 0, sizeof *c);
  zmlx_attention_opts o = {0};
  if (opts) {
    if (opts->struct_size != 0 && opts->struct_size != sizeof o)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_attention: opts->struct_size is %zu, this "
                       "library's zmlx_attention_opts has %zu bytes (built against another zmlx.h?)",
                       opts->struct_size, sizeof o);
    o = *opts;
  }
  if (o.layout != ZMLX_ATTN_BHSD && o.layout != ZMLX_ATTN_BSHD)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_attention: unknown layout %d", (int)o.layout);
  c->layout = o.layout;
  c->causal = o.causal != 0;
  int64_t Bk, Sv, Dv, Bv, Hv;
  ZMLX_CHECK(dims("q", q, c->layout, &c->B, &c->Hq, &c->Sq, &c->D));
  ZMLX_CHECK(dims("k", k, c->layout, &Bk, &c->Hkv, &c->Sk, &Dv));
  char a[96], b[96];
  if (Bk != c->B || Dv != c->D)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_attention: q %s and k %s differ in batch or head_dim",
                     zmlxi_shape_str(a, sizeof a, 4, q->shape), zmlxi_shape_str(b, sizeof b, 4, k->shape));
  ZMLX_CHECK(dims("v", v, c->layout, &Bv, &Hv, &Sv, &Dv));
  if (memcmp(v->shape, k->shape, sizeof(int64_t) * 4) != 0)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_attention: v %s must have k's shape %s (v's head_dim "
                     "equal to q's)", zmlxi_shape_str(a, sizeof a, 4, v->shape),
                     zmlxi_shape_str(b, sizeof b, 4, k->shape));
  if (c->Hkv < 1 || c->Hq % c->Hkv != 0)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_attention: kv heads %lld do not divide q heads %lld "
                     "(q %s, k %s)", (long long)c->Hkv, (long long)c->Hq,
                     zmlxi_shape_str(a, sizeof a, 4, q->shape), zmlxi_shape_str(b, sizeof b, 4, k->shape));
  if (c->D < 1 || c->D > ZMLX_ATTENTION_MAX_HEAD_DIM)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "zmlx_attention: head_dim %lld is not supported "
                     "(1 to %d)", (long long)c->D, ZMLX_ATTENTION_MAX_HEAD_DIM);
  if (q->dtype != k->dtype || q->dtype != v->dtype || !zmlxi_dtype_is_f32_f16_bf16(q->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_attention: q, k, v have dtypes %s, %s, %s; one of "
                     "f32, f16, bf16 for all three", zmlx_dtype_name(q->dtype),
                     zmlx_dtype_name(k->dtype), zmlx_dtype_name(v->dtype));
  if (q->buffer->device != k->buffer->device || q->buffer->device != v->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_attention: q, k, v live on different devices");
  if (c->B * c->Hq * c->Sq > INT32_MAX || c->Sq > INT32_MAX || c->Sk > INT32_MAX)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "zmlx_attention: more than 2^31 query rows");
  c->scale = o.scale != 0 ? o.scale : 1.0 / sqrt((double)c->D);
  if (!isfinite(c->scale))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_attention: scale %g is not finite", o.scale);
  c->mB = c->mH = 1;
  if (o.mask) {
    c->mask = o.mask;
    ZMLX_CHECK(check_mask(o.mask, c));
    if (o.mask->buffer->device != q->buffer->device)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_attention: the mask lives on another device");
  }
  return ZMLX_OK;
}

/* -------------------------------------------------------------- launch */

static void set_params(const attn_cfg *c, int64_t n, double p[9]) {
  const double v[9] = {(double)n, (double)c->Hq, (double)c->Hkv, (double)c->Sq, (double)c->Sk,
                       (double)c->layout, (double)c->mB, (double)c->mH, c->scale};
  memcpy(p, v, sizeof v);
}

/* The scalar kernels: a thread per row (of queries, keys or scores). */
static zmlx_status launch(int which, const attn_cfg *c, int64_t n, zmlx_array **in, int n_in,
                          zmlx_array **out, int n_out) {
  if (n == 0) return ZMLX_OK;
  zmlx_kernel *k;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, which, &k));
  double p[9];
  set_params(c, n, p);
  zmlx_template_arg t[3] = {{"HD", ZMLX_TEMPLATE_INT, ZMLX_F32, c->D},
                            {"MASK", ZMLX_TEMPLATE_INT, ZMLX_F32, c->mask_kind},
                            {"CAUSAL", ZMLX_TEMPLATE_BOOL, ZMLX_F32, c->causal}};
  zmlx_kernel_call call = {.n_inputs = n_in, .n_outputs = n_out, .inputs = in, .outputs = out,
                           .templates = t, .n_templates = 3, .params = p,
                           .device = in[0]->buffer->device};
  zmlxi_kernel_call_grid_1d(&call, n);
  return zmlx_kernel_launch(k, &call);
}

/* The tiled kernels (kernels/attention_*_tile.zk, helpers in
 * attention_tile.zk): threadgroups of 128 threads own 64 or 128 rows (of
 * queries, or of keys for dK / dV) and step over the other side a tile at a
 * time.
 * They take f16 / bf16 with head_dim a multiple of 16 whose rows start
 * 16-byte aligned, on a device with 32-wide SIMD groups and room for the
 * staged tiles; elsewhere the scalar kernels run. */
enum { TILE_ROWS = 64, TILE_THREADS = 128 };

/* Hopper's warpgroup products (attention_tile.zk's ZT_WG), forward and
 * backward: head_dim 64 or 128 on a device with has_wgmma (WGMMA_BY_DEFAULT:
 * measured faster on the H100, bench/NOTES.md). ZMLX_ATTENTION_WG=0 turns it
 * off, "RB,BN" picks the forward's tile; ZMLX_ATTENTION_WG_BWD=0 turns it off
 * for the backward only, 64 / 128 picks the backward's step: to compare
 * (H100, causal bf16 4x32x4096x128 forward + backward: 14.19 ms warp
 * products, 11.05 ms at 64, 17.23 ms at 128). */
enum { WGMMA_BY_DEFAULT = 1, WGMMA_BWD_STEP = 64 };

static int wgmma_bwd_step(void) {
  const char *e = getenv("ZMLX_ATTENTION_WG_BWD");
  const int n = e && *e ? atoi(e) : WGMMA_BWD_STEP;
  return n == 64 || n == 128 ? n : 0;
}

static int tile_wgmma(const attn_cfg *c, int which, zmlx_device *dev) {
  const char *e = getenv("ZMLX_ATTENTION_WG");
  const int wanted = e && *e ? strcmp(e, "0") != 0 : WGMMA_BY_DEFAULT;
  return (c->D == 64 || c->D == 128) && wanted && (which == K_FWD_TILE || wgmma_bwd_step()) &&
         zmlxi_ops_native_wgmma(dev);
}

/* The warpgroup forward's row blocks and keys a step: ZMLX_ATTENTION_WG="RB,BN"
 * (RB 1 or 2, BN 64 or 128) overrides them, to measure. */
static void wgmma_tile(int *rb, int *bn) {
  *rb = 2; /* measured on the H100: 1.85 ms; 1 row block 1.86, 1 x 128 keys 3.16 */
  *bn = 64;
  const char *e = getenv("ZMLX_ATTENTION_WG");
  int r = 0, n = 0;
  if (e && sscanf(e, "%d,%d", &r, &n) == 2 && (r == 1 || r == 2) && (n == 64 || n == 128)) {
    *rb = r;
    *bn = n;
  }
}

/* Keys a step of the forward and of dQ; queries a step of dK / dV (fewer at
 * head_dim 256: the accumulators take the registers). */
static int tile_step(const attn_cfg *c, int which, int mma, int wg) {
  if (wg && which == K_FWD_TILE) {
    int rb, bn;
    wgmma_tile(&rb, &bn);
    return bn;
  }
  if (wg) return wgmma_bwd_step();
  if (which == K_FWD_TILE || which == K_DKV_TILE) return c->D <= 128 ? 64 : 32;
  /* dQ: 32 keys a step on the warp products (measured: bench/NOTES.md); the
   * scalar tiles (no matrix units: PoCL) take the warpgroup form's 64, so that
   * CI's NVRTC compile of the launched kernels with their NATIVE* switches
   * flipped on covers that form too */
  return !mma && c->D <= 128 ? 64 : 32;
}

/* Blocks of 16 rows a SIMD group: the forward's two (128 query rows a
 * threadgroup) read K and V from threadgroup memory once for both; the
 * backward's accumulators leave registers for one. */
static int tile_row_blocks(const attn_cfg *c, int which, int wg) {
  if (wg && which == K_FWD_TILE) {
    int rb, bn;
    wgmma_tile(&rb, &bn);
    return rb;
  }
  return which == K_FWD_TILE && c->D <= 128 ? 2 : 1;
}

static size_t tile_shared_bytes(const attn_cfg *c, int which, int mma, int wg) {
  /* the warpgroup form's tiles are swizzled rows without padding, the first
   * aligned to 1024 bytes */
  const size_t ld = (size_t)c->D + (wg ? 0 : 8), n = (size_t)tile_step(c, which, mma, wg);
  const size_t align = wg ? 1024 : 0;
  const size_t rows = (size_t)TILE_ROWS * tile_row_blocks(c, which, wg);
  const size_t scratch = mma ? 0 : rows * n; /* P through memory without the matrix units */
  switch (which) {
  /* Q, K, V; the warpgroup form double-buffers K and V */
  case K_FWD_TILE: return 2 * ((rows + (wg ? 4 : 2) * n) * ld + scratch) + align;
  /* dQ and dK / dV double-buffer the tiles they step over */
  case K_DQ_TILE: return 2 * ((2 * rows + 4 * n) * ld + scratch) + 4 * rows + align;
  default: return 2 * ((2 * rows + 4 * n) * ld + scratch) + 16 * n + align;
  }
}

static int rows_aligned(const zmlx_array *a) {
  return !zmlx_array_is_contiguous(a) || ((size_t)a->offset * 2) % 16 == 0;
}

static int tile_applies(zmlx_array *const *qkv, const attn_cfg *c, int which) {
  zmlx_device_info info;
  if (qkv[0]->dtype == ZMLX_F32 || c->D % 16 != 0) return 0;
  if (zmlx_device_get_info(qkv[0]->buffer->device, &info) != ZMLX_OK || info.simd_width != 32)
    return 0;
  if (getenv("ZMLX_ATTENTION_SCALAR")) return 0; /* the one-thread-a-row kernels, to compare */
  const int dout = which == K_DQ_TILE ? 5 : which == K_DKV_TILE ? 4 : 0; /* staged too */
  const int wg = tile_wgmma(c, which, qkv[0]->buffer->device);
  return rows_aligned(qkv[0]) && rows_aligned(qkv[1]) && rows_aligned(qkv[2]) &&
         rows_aligned(qkv[dout]) &&
         tile_shared_bytes(c, which, info.has_mma, wg) <= info.max_shared_memory;
}

static zmlx_status launch_tile(int which, const attn_cfg *c, zmlx_array **in, int n_in,
                               zmlx_array **out) {
  zmlx_device *dev = in[0]->buffer->device;
  const int wg = tile_wgmma(c, which, dev);
  const int64_t rows = which == K_DKV_TILE ? c->Sk : c->Sq;
  const int rb = tile_row_blocks(c, which, wg), tile_rows = TILE_ROWS * rb;
  const int64_t groups = (rows + tile_rows - 1) / tile_rows * c->B *
                         (which == K_DKV_TILE ? c->Hkv : c->Hq);
  if (groups == 0) return ZMLX_OK;
  zmlx_kernel *k;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, which, &k));
  const int mma = zmlxi_ops_native_mma(dev);
  double p[9];
  set_params(c, groups, p);
  zmlx_template_arg t[9] = {{"T", ZMLX_TEMPLATE_DTYPE, in[0]->dtype, 0},
                            {"HD", ZMLX_TEMPLATE_INT, ZMLX_F32, c->D},
                            {"RB", ZMLX_TEMPLATE_INT, ZMLX_F32, rb},
                            {which == K_DKV_TILE ? "BQ" : "BN", ZMLX_TEMPLATE_INT, ZMLX_F32,
                             tile_step(c, which, mma, wg)},
                            {"MASK", ZMLX_TEMPLATE_INT, ZMLX_F32, c->mask_kind},
                            {"CAUSAL", ZMLX_TEMPLATE_BOOL, ZMLX_F32, c->causal},
                            {"NATIVE_MMA", ZMLX_TEMPLATE_BOOL, ZMLX_F32, mma},
                            {"BF16", ZMLX_TEMPLATE_BOOL, ZMLX_F32, in[0]->dtype == ZMLX_BF16},
                            {"NATIVE_WGMMA", ZMLX_TEMPLATE_BOOL, ZMLX_F32, wg}};
  zmlx_kernel_call call = {.n_inputs = n_in, .n_outputs = 2, .inputs = in, .outputs = out,
                           .grid = {groups * TILE_THREADS, 1, 1},
                           .threadgroup = {TILE_THREADS, 1, 1}, .templates = t,
                           .n_templates = 9, .params = p,
                           .dynamic_shared_bytes = tile_shared_bytes(c, which, mma, wg),
                           .device = dev};
  return zmlx_kernel_launch(k, &call);
}

/* A scalar kernel, or its tiled form where that applies. */
static zmlx_status launch_either(int which, const attn_cfg *c, int64_t n, zmlx_array **in,
                                 int n_in, zmlx_array **out, int n_out) {
  const int tiled = which == K_FWD ? K_FWD_TILE : which == K_DQ ? K_DQ_TILE : K_DKV_TILE;
  if (tile_applies(in, c, tiled)) return launch_tile(tiled, c, in, n_in, out);
  return launch(which, c, n, in, n_in, out, n_out);
}

zmlx_status zmlxi_attention_forward_into(zmlx_array *q, zmlx_array *k, zmlx_array *v,
                                        const attn_cfg *c, zmlx_array *out, zmlx_array *lse) {
  zmlx_array *in[4] = {q, k, v, c->mask ? c->mask : q};
  zmlx_array *outs[2] = {out, lse};
  return launch_either(K_FWD, c, c->B * c->Hq * c->Sq, in, 4, outs, 2);
}

/* ------------------------------------------------------------ autograd */

typedef struct attn_ctx {
  attn_cfg c; /* c.mask: a bool mask (a constant, not a recorded input), retained */
} attn_ctx;

static void attn_ctx_free(void *p) {
  attn_ctx *x = p;
  if (x) zmlx_array_release(x->c.mask);
  free(x);
}

/* dq, dk, dv (and the additive mask's gradient) for cotangents g of out and
 * glse of lse. */
static zmlx_status attn_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                            zmlx_array **grads) {
  const attn_ctx *x = n->ctx;
  attn_cfg c = x->c;
  zmlx_array *q = n->in[0], *k = n->in[1], *v = n->in[2];
  if (n->n_in > 3) c.mask = n->in[3]; /* an additive mask is an input; a bool one stays in c */
  zmlx_array *o = n->out[0], *lse = n->out[1], *mask = c.mask ? c.mask : q;
  zmlx_device *dev = q->buffer->device;
  zmlx_array *g = NULL, *glse = NULL, *dq = NULL, *delta = NULL, *dk = NULL, *dv = NULL;
  int64_t rows_shape[3] = {c.B, c.Hq, c.Sq};
  zmlx_status st = zmlxi_ad_cast(cot[0], q->dtype, &g);
  if (st == ZMLX_OK) st = zmlxi_ad_cast(cot[1], ZMLX_F32, &glse);
  if (st == ZMLX_OK) st = zmlxi_array_alloc(dev, NULL, q->dtype, 4, q->shape, &dq);
  if (st == ZMLX_OK) st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 3, rows_shape, &delta);
  if (st == ZMLX_OK) {
    zmlx_array *in[8] = {q, k, v, mask, o, g, lse, glse};
    zmlx_array *out[2] = {dq, delta};
    st = launch_either(K_DQ, &c, c.B * c.Hq * c.Sq, in, 8, out, 2);
  }
  if (st == ZMLX_OK && (need[1] || need[2])) {
    st = zmlxi_array_alloc(dev, NULL, k->dtype, 4, k->shape, &dk);
    if (st == ZMLX_OK) st = zmlxi_array_alloc(dev, NULL, v->dtype, 4, v->shape, &dv);
    if (st == ZMLX_OK) {
      zmlx_array *in[7] = {q, k, v, mask, g, lse, delta};
      zmlx_array *out[2] = {dk, dv};
      st = launch_either(K_DKV, &c, c.B * c.Hkv * c.Sk, in, 7, out, 2);
    }
  }
  if (st == ZMLX_OK && n->n_in > 3 && need[3] && c.mask_kind == 1) {
    /* ds over [B, Hq, Sq, Sk]: the caller sums it down to the mask's shape */
    int64_t full[4] = {c.B, c.Hq, c.Sq, c.Sk};
    st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 4, full, &grads[3]);
    if (st == ZMLX_OK) {
      zmlx_array *in[7] = {q, k, v, mask, g, lse, delta};
      st = launch(K_DMASK, &c, c.B * c.Hq * c.Sq * c.Sk, in, 7, &grads[3], 1);
    }
  }
  if (st == ZMLX_OK) {
    if (need[0]) grads[0] = dq, dq = NULL;
    if (need[1]) grads[1] = dk, dk = NULL;
    if (need[2]) grads[2] = dv, dv = NULL;
  }
  zmlx_array_release(g);
  zmlx_array_release(glse);
  zmlx_array_release(dq);
  zmlx_array_release(delta);
  zmlx_array_release(dk);
  zmlx_array_release(dv);
  return st;
}

static const zmlx_ad_rule ATTN_RULE = {"attention", attn_vjp, NULL, attn_ctx_free};

zmlx_status zmlx_attention(zmlx_array *q, zmlx_array *k, zmlx_array *v,
                           const zmlx_attention_opts *opts, zmlx_array **out, zmlx_array **lse) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  if (lse) *lse = NULL;
  attn_cfg c;
  ZMLX_CHECK(zmlxi_attention_validate(q, k, v, opts, &c));
  zmlx_device *dev = q->buffer->device;
  zmlx_array *y = NULL, *l = NULL;
  int64_t rows_shape[3] = {c.B, c.Hq, c.Sq};
  zmlx_status st = zmlxi_array_alloc(dev, NULL, q->dtype, 4, q->shape, &y);
  if (st == ZMLX_OK) st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 3, rows_shape, &l);
  if (st == ZMLX_OK) st = zmlxi_attention_forward_into(q, k, v, &c, y, l);
  attn_ctx *x = st == ZMLX_OK ? malloc(sizeof *x) : NULL;
  if (st == ZMLX_OK && !x) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_attention: out of host memory");
  if (st == ZMLX_OK) {
    /* an additive mask is differentiable: a recorded input; a bool one is
     * a constant the context keeps */
    const int additive = c.mask_kind == 1;
    x->c = c;
    x->c.mask = additive ? NULL : c.mask;
    if (x->c.mask) zmlx_array_retain(x->c.mask);
    zmlx_array *in[4] = {q, k, v, c.mask};
    zmlx_array *outs[2] = {y, l};
    st = zmlxi_ad_record(&ATTN_RULE, x, in, additive ? 4 : 3, outs, 2,
                        ZMLX_AD_SAVE_INPUTS | ZMLX_AD_SAVE_OUTPUTS);
  }
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    zmlx_array_release(l);
    return st;
  }
  *out = y;
  if (lse) *lse = l;
  else zmlx_array_release(l);
  return ZMLX_OK;
}
