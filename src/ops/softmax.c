/* Softmax family over the last dim (issue 5): softmax, log_softmax,
 * logsumexp and scale + mask (+ causal) softmax, each differentiable, with
 * their catalog checks in src/check/softmax_check.c. Kernels:
 * src/ops/kernels/softmax.zk (forward, one threadgroup per row, single-pass
 * online stats) and softmax_bwd.zk. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "gen/patterns.h"
#include "kernel/kernel.h"
#include "ops/kernel_util.h"
#include "ops/softmax.h"
#include "runtime/internal.h"

extern const char zmlxi_res_softmax_zk[];
extern const char zmlxi_res_softmax_bwd_zk[];

/* ------------------------------------------------------------------ kernels */

enum { K_FWD, K_BWD };

static const zmlx_kernel_spec SPECS[] = {
    [K_FWD] = ZMLX_KSPEC("zmlx_softmax_fwd", zmlxi_res_softmax_zk, "x, mask", "out",
                         "rows:i64, cols:i64, mrows:i64, sq:i64, coff:i64, scale:f32",
                         .prelude = zmlxi_res_vec_io_zk, .dense_inputs = 1),
    [K_BWD] = ZMLX_KSPEC("zmlx_softmax_bwd", zmlxi_res_softmax_bwd_zk, "a, b, c", "dx",
                         "rows:i64, cols:i64, scale:f32", .dense_inputs = 1),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("softmax", SPECS);



/* Validation of the forward's arguments; names the problem. */
zmlx_status zmlxi_softmax_validate(const char *op, zmlx_array *x, const sm_args *a) {
  if (!zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: x has dtype %s; f32, f16 or bf16 is needed", op,
                     zmlx_dtype_name(x->dtype));
  if (x->ndim < 1)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: x is a scalar; it needs at least one axis (the "
                     "softmax runs over the last)", op);
  if (x->shape[x->ndim - 1] == 0)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: the last dimension of x is 0", op);
  if (a->causal && x->ndim < 2)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: causal needs x of rank >= 2 ([..., queries, keys]); "
                     "x has rank %d", op, x->ndim);
  if (!isfinite(a->scale))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: scale %g is not finite", op, a->scale);
  if (a->mask) {
    zmlx_array *m = a->mask;
    if (!zmlxi_dtype_is_f32_f16_bf16(m->dtype) && m->dtype != ZMLX_BOOL)
      return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: mask has dtype %s; an additive f32/f16/bf16 mask "
                       "or a bool mask is needed", op, zmlx_dtype_name(m->dtype));
    if (m->buffer->device != x->buffer->device)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: mask and x are on different devices", op);
    int ok = m->ndim >= 1 && m->ndim <= x->ndim && m->shape[m->ndim - 1] == x->shape[x->ndim - 1];
    for (int i = 0; ok && i < m->ndim; i++) {
      int64_t ms = m->shape[m->ndim - 1 - i], xs = x->shape[x->ndim - 1 - i];
      if (ms != xs) {
        /* only leading axes of size 1 may differ: everything before them must be 1 too */
        for (int k = 0; k < m->ndim - i; k++)
          if (m->shape[k] != 1) ok = 0;
        break;
      }
    }
    if (!ok) {
      char ms[96], xs[96];
      zmlxi_shape_str(ms, sizeof ms, m->ndim, m->shape);
      zmlxi_shape_str(xs, sizeof xs, x->ndim, x->shape);
      return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: mask shape %s must equal a trailing part of x's "
                       "shape %s (leading axes broadcast)", op, ms, xs);
    }
  }
  return ZMLX_OK;
}

/* Forward into a preallocated dense output (the check poisons it first). */
zmlx_status zmlxi_softmax_forward_into(zmlx_array *x, const sm_args *a, zmlx_array *out) {
  zmlx_kernel *k_fwd;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_FWD, &k_fwd));
  const int64_t cols = x->shape[x->ndim - 1];
  const int64_t rows = cols ? x->size / cols : 0;
  if (rows == 0) return ZMLX_OK;
  int64_t mrows = 1;
  int mask_kind = 0;
  if (a->mask) {
    mask_kind = a->mask->dtype == ZMLX_BOOL ? 2 : 1;
    mrows = a->mask->size / cols;
    if (mrows < 1) mrows = 1;
  }
  int64_t sq = 1, coff = 0;
  if (a->causal) {
    sq = x->shape[x->ndim - 2];
    coff = cols - sq;
    if (sq < 1) sq = 1;
  }
  zmlx_array *in[2] = {x, a->mask ? a->mask : x};
  zmlx_array *outs[1] = {out};
  double params[6] = {(double)rows, (double)cols, (double)mrows, (double)sq, (double)coff,
                      a->scale};
  /* 16-byte accesses when every row starts 16-byte aligned (a strided x is
   * made dense, at offset 0, by the kernel object) */
  const size_t es = zmlx_dtype_size(x->dtype);
  const int width = (int)(16 / es);
  const int aligned = !zmlx_array_is_contiguous(x) || ((size_t)x->offset * es) % 16 == 0;
  const int vec = !a->mask && !a->causal && cols % width == 0 && aligned &&
                  ((size_t)out->offset * es) % 16 == 0 ? width : 0;
  const int xdt = zmlxi_ops_xdt(x->dtype);
  int tg = 0, nv = 0;
  if (vec) zmlxi_ops_chunk_geometry(x->buffer->device, cols / vec, 8, &tg, &nv);
  const int native = zmlxi_ops_native_simd(x->buffer->device);
  zmlx_template_arg t[8] = {{"MODE", ZMLX_TEMPLATE_INT, ZMLX_F32, a->mode},
                            {"MASK", ZMLX_TEMPLATE_INT, ZMLX_F32, mask_kind},
                            {"CAUSAL", ZMLX_TEMPLATE_BOOL, ZMLX_F32, a->causal ? 1 : 0},
                            {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                            {"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32, xdt},
                            {"NV", ZMLX_TEMPLATE_INT, ZMLX_F32, nv},
                            {"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32, native},
                            {"TILE", ZMLX_TEMPLATE_INT, ZMLX_F32, zmlxi_ops_stream_tile()}};
  zmlx_kernel_call call = {.n_inputs = 2, .n_outputs = 1, .inputs = in, .outputs = outs,
                           .templates = t, .n_templates = 8, .params = params,
                           .device = x->buffer->device};
  zmlxi_ops_row_geometry(x->buffer->device, rows, vec ? cols / vec : cols, &call);
  if (nv) zmlxi_ops_use_chunk_geometry(&call, tg, nv);
  else if (vec) zmlxi_ops_use_stream_geometry(&call, a->mode != SM_LOGSUMEXP);
  return zmlx_kernel_launch(k_fwd, &call);
}

static zmlx_status sm_alloc_out(zmlx_array *x, int mode, zmlx_array **out) {
  int nd = mode == SM_LOGSUMEXP ? x->ndim - 1 : x->ndim;
  return zmlxi_array_alloc(x->buffer->device, NULL, x->dtype, nd, x->shape, out);
}

/* dx of the softmax-shaped rows: kernel MODE 0, 1 or 3 (a, b [rows, cols]),
 * or 2 (a = x, b = g [rows], c = lse [rows]). */
static zmlx_status sm_bwd(int kmode, zmlx_array *a, zmlx_array *b, zmlx_array *c, double scale,
                          zmlx_dtype out_dt, zmlx_array **out) {
  zmlx_kernel *k_bwd;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_BWD, &k_bwd));
  ZMLX_CHECK(zmlxi_array_alloc(a->buffer->device, NULL, out_dt, a->ndim, a->shape, out));
  const int64_t cols = a->shape[a->ndim - 1];
  const int64_t rows = cols ? a->size / cols : 0;
  if (rows == 0) return ZMLX_OK;
  zmlx_array *in[3] = {a, b, c ? c : b};
  double params[3] = {(double)rows, (double)cols, scale};
  zmlx_template_arg t[1] = {{"MODE", ZMLX_TEMPLATE_INT, ZMLX_F32, kmode}};
  zmlx_kernel_call call = {.n_inputs = 3, .n_outputs = 1, .inputs = in, .outputs = out,
                           .templates = t, .n_templates = 1, .params = params,
                           .device = a->buffer->device};
  zmlxi_ops_row_geometry(a->buffer->device, rows, cols, &call);
  zmlx_status st = zmlx_kernel_launch(k_bwd, &call);
  if (st != ZMLX_OK) {
    zmlx_array_release(*out);
    *out = NULL;
  }
  return st;
}

/* ------------------------------------------------------------------ autograd */

typedef struct sm_ctx {
  int mode;
  double scale;
} sm_ctx;

static zmlx_status sm_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                          zmlx_array **grads) {
  const sm_ctx *c = n->ctx;
  zmlx_array *y = n->out[0];
  zmlx_status st = ZMLX_OK;
  if (c->mode == SM_LOGSUMEXP) {
    if (need[0]) st = sm_bwd(2, n->in[0], cot[0], y, 1.0, n->in_meta[0].dtype, &grads[0]);
    return st;
  }
  if (c->mode == SM_LOG_SOFTMAX) {
    if (need[0]) st = sm_bwd(1, y, cot[0], NULL, 1.0, n->in_meta[0].dtype, &grads[0]);
    return st;
  }
  /* softmax of z = scale * x + mask: dz = y (g - sum(g y)); dx = scale dz. */
  if (need[0]) st = sm_bwd(0, y, cot[0], NULL, c->scale, n->in_meta[0].dtype, &grads[0]);
  if (st == ZMLX_OK && n->n_in > 1 && need[1] && zmlxi_ad_is_float(n->in_meta[1].dtype)) {
    /* the mask's gradient is dz, with x's shape: the caller sums it down */
    st = sm_bwd(0, y, cot[0], NULL, 1.0, ZMLX_F32, &grads[1]);
  }
  return st;
}

/* JVP of logsumexp: d lse = sum(softmax(x) * t) over the last axis, with
 * softmax(x) = exp(x - lse) from the backward kernel (MODE 2, g = 1). */
static zmlx_status lse_jvp(const zmlx_ad_node *n, zmlx_array *t, zmlx_array **out) {
  zmlx_array *x = n->in[0], *lse = n->out[0], *ones = NULL, *p = NULL, *pt = NULL, *s = NULL;
  const int axis = -1;
  zmlx_status st = zmlx_array_full(x->buffer->device, ZMLX_F32, lse->ndim, lse->shape, 1.0, &ones);
  if (st == ZMLX_OK) st = sm_bwd(2, x, ones, lse, 1.0, ZMLX_F32, &p);
  if (st == ZMLX_OK) st = zmlx_mul(p, t, &pt);
  if (st == ZMLX_OK) st = zmlx_sum(pt, &axis, 1, 0, &s);
  if (st == ZMLX_OK) st = zmlxi_ad_cast(s, lse->dtype, out);
  zmlx_array_release(ones);
  zmlx_array_release(p);
  zmlx_array_release(pt);
  zmlx_array_release(s);
  return st;
}

/* JVP of softmax(scale * x + mask): with dz = scale * tx + tmask (the mask's
 * tangent broadcast to x's shape), dy = y (dz - sum(y dz)) — linear in dz,
 * so each part runs the backward kernel (MODE 0) and the two are added. */
static zmlx_status masked_jvp(const zmlx_ad_node *n, const sm_ctx *c, zmlx_array *const *tan,
                              zmlx_array **out) {
  zmlx_array *y = n->out[0], *tx = NULL, *tm = NULL, *dx = NULL, *dm = NULL;
  zmlx_status st = ZMLX_OK;
  if (tan[0]) {
    st = zmlxi_ad_cast(tan[0], y->dtype, &tx);
    if (st == ZMLX_OK) st = sm_bwd(0, y, tx, NULL, c->scale, y->dtype, &dx);
  }
  if (st == ZMLX_OK && n->n_in > 1 && tan[1]) {
    zmlx_array *b = NULL;
    st = zmlx_broadcast_to(tan[1], y->ndim, y->shape, &b);
    if (st == ZMLX_OK) st = zmlxi_ad_cast(b, y->dtype, &tm);
    zmlx_array_release(b);
    if (st == ZMLX_OK) st = sm_bwd(0, y, tm, NULL, 1.0, y->dtype, &dm);
  }
  if (st == ZMLX_OK) {
    if (dx && dm) st = zmlx_add(dx, dm, out);
    else if (dx || dm) zmlx_array_retain(*out = dx ? dx : dm);
  }
  zmlx_array_release(tx);
  zmlx_array_release(tm);
  zmlx_array_release(dx);
  zmlx_array_release(dm);
  return st;
}

static zmlx_status sm_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out_tan) {
  const sm_ctx *c = n->ctx;
  zmlx_array *y = n->out[0];
  if (c->mode == SM_LOGSUMEXP) return tan[0] ? lse_jvp(n, tan[0], &out_tan[0]) : ZMLX_OK;
  if (c->mode == SM_SOFTMAX) return masked_jvp(n, c, tan, &out_tan[0]);
  if (!tan[0]) return ZMLX_OK;
  zmlx_array *t = NULL;
  ZMLX_CHECK(zmlxi_ad_cast(tan[0], y->dtype, &t));
  zmlx_status st = sm_bwd(3, y, t, NULL, 1.0, y->dtype, &out_tan[0]);
  zmlx_array_release(t);
  return st;
}

static const zmlx_ad_rule SM_RULE = {"softmax family", sm_vjp, sm_jvp, free};

zmlx_status zmlxi_softmax_run(const char *op, zmlx_array *x, const sm_args *a, zmlx_array **out) {
  char call[48];
  snprintf(call, sizeof call, "zmlx_%s", op);
  ZMLX_REQUIRE_ARG_OF(call, out);
  *out = NULL;
  ZMLX_REQUIRE_ARG_OF(call, x);
  ZMLX_CHECK(zmlxi_softmax_validate(op, x, a));
  zmlx_array *y = NULL;
  ZMLX_CHECK(sm_alloc_out(x, a->mode, &y));
  zmlx_status st = zmlxi_softmax_forward_into(x, a, y);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  sm_ctx *c = malloc(sizeof *c);
  if (!c) {
    zmlx_array_release(y);
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
  }
  c->mode = a->mode;
  c->scale = a->scale;
  zmlx_array *in[2] = {x, a->mask};
  st = zmlxi_ad_record(&SM_RULE, c, in, a->mask ? 2 : 1, &y, 1,
                      ZMLX_AD_SAVE_INPUTS | ZMLX_AD_SAVE_OUTPUTS);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  *out = y;
  return ZMLX_OK;
}

zmlx_status zmlx_softmax(zmlx_array *x, zmlx_array **out) {
  sm_args a = {SM_SOFTMAX, NULL, 1.0, 0};
  return zmlxi_softmax_run("softmax", x, &a, out);
}

zmlx_status zmlx_log_softmax(zmlx_array *x, zmlx_array **out) {
  sm_args a = {SM_LOG_SOFTMAX, NULL, 1.0, 0};
  return zmlxi_softmax_run("log_softmax", x, &a, out);
}

zmlx_status zmlx_logsumexp(zmlx_array *x, zmlx_array **out) {
  sm_args a = {SM_LOGSUMEXP, NULL, 1.0, 0};
  return zmlxi_softmax_run("logsumexp", x, &a, out);
}

zmlx_status zmlx_softmax_masked(zmlx_array *x, zmlx_array *mask, double scale, int causal,
                                zmlx_array **out) {
  sm_args a = {SM_SOFTMAX, mask, scale, causal};
  return zmlxi_softmax_run("softmax_masked", x, &a, out);
}
