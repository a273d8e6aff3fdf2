/* Norms over the last dimension (issue 5): rmsnorm, layernorm (each with
 * or without weights) and the fused residual forms add_rmsnorm /
 * add_layernorm returning (normed, x + r). Differentiable: each call
 * records one autograd node whose VJP launches two dialect kernels for the
 * input gradient (norm_bwd.zk, one threadgroup per row) and, when weights
 * or biases need gradients, a per-chunk column reduction into f32 partials
 * (norm_wgrad.zk) followed by a small sum over the chunks (norm_wsum.zk):
 * no atomics. The forward saves (mean, rstd) per row for the backward. The
 * VJP kernels are opaque to autograd, so the ops are differentiable to
 * first order only. */
#include "autograd/ad.h"
#include "gen/patterns.h"
#include "kernel/kernel.h"
#include "ops/kernel_util.h"
#include "ops/norm.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char zmlxi_res_norm_fwd_zk[];
extern const char zmlxi_res_norm_bwd_zk[];
extern const char zmlxi_res_norm_wgrad_zk[];
extern const char zmlxi_res_norm_wsum_zk[];

/* ---------------------------------------------------------------- kernels */

/* Every variant is its own kernel: the forward by which of r, w, b it
 * reads (bits 0, 1, 2), the backward by w and dh (bits 0, 1), the weight
 * gradient by whether it also sums the bias. Only the forward takes the
 * 16-byte access helpers (kernels/vec_io.zk): their text would mark the
 * barrier-free kernels as ones with barriers, which constrains the grid. */
enum { K_FWD = 0, K_BWD = 8, K_WGRAD = 12, K_WSUM = 14, K_COUNT };

#define FWD_PARAMS "zrows:i64, zcols:i64, eps:f32"
#define BWD_PARAMS "zrows:i64, zcols:i64"
#define WGRAD_PARAMS "zrows:i64, zcols:i64, zchunk:i64"
static const zmlx_kernel_spec SPECS[K_COUNT] = {
    [K_FWD + 0] = ZMLX_KSPEC("zmlx_norm_fwd0", zmlxi_res_norm_fwd_zk, "x", "y, stats",
                             FWD_PARAMS, .prelude = zmlxi_res_vec_io_zk),
    [K_FWD + 1] = ZMLX_KSPEC("zmlx_norm_fwd1", zmlxi_res_norm_fwd_zk, "x, r", "y, h, stats",
                             FWD_PARAMS, .prelude = zmlxi_res_vec_io_zk),
    [K_FWD + 2] = ZMLX_KSPEC("zmlx_norm_fwd2", zmlxi_res_norm_fwd_zk, "x, w", "y, stats",
                             FWD_PARAMS, .prelude = zmlxi_res_vec_io_zk),
    [K_FWD + 3] = ZMLX_KSPEC("zmlx_norm_fwd3", zmlxi_res_norm_fwd_zk, "x, r, w", "y, h, stats",
                             FWD_PARAMS, .prelude = zmlxi_res_vec_io_zk),
    [K_FWD + 4] = ZMLX_KSPEC("zmlx_norm_fwd4", zmlxi_res_norm_fwd_zk, "x, b", "y, stats",
                             FWD_PARAMS, .prelude = zmlxi_res_vec_io_zk),
    [K_FWD + 5] = ZMLX_KSPEC("zmlx_norm_fwd5", zmlxi_res_norm_fwd_zk, "x, r, b", "y, h, stats",
                             FWD_PARAMS, .prelude = zmlxi_res_vec_io_zk),
    [K_FWD + 6] = ZMLX_KSPEC("zmlx_norm_fwd6", zmlxi_res_norm_fwd_zk, "x, w, b", "y, stats",
                             FWD_PARAMS, .prelude = zmlxi_res_vec_io_zk),
    [K_FWD + 7] = ZMLX_KSPEC("zmlx_norm_fwd7", zmlxi_res_norm_fwd_zk, "x, r, w, b", "y, h, stats",
                             FWD_PARAMS, .prelude = zmlxi_res_vec_io_zk),
    [K_BWD + 0] = ZMLX_KSPEC("zmlx_norm_bwd0", zmlxi_res_norm_bwd_zk, "h, dy, stats", "dx", BWD_PARAMS),
    [K_BWD + 1] = ZMLX_KSPEC("zmlx_norm_bwd1", zmlxi_res_norm_bwd_zk, "h, dy, w, stats", "dx", BWD_PARAMS),
    [K_BWD + 2] = ZMLX_KSPEC("zmlx_norm_bwd2", zmlxi_res_norm_bwd_zk, "h, dy, stats, dh", "dx", BWD_PARAMS),
    [K_BWD + 3] = ZMLX_KSPEC("zmlx_norm_bwd3", zmlxi_res_norm_bwd_zk, "h, dy, w, stats, dh", "dx", BWD_PARAMS),
    [K_WGRAD + 0] = ZMLX_KSPEC("zmlx_norm_wgrad0", zmlxi_res_norm_wgrad_zk, "h, dy, stats", "pw",
                               WGRAD_PARAMS),
    [K_WGRAD + 1] = ZMLX_KSPEC("zmlx_norm_wgrad1", zmlxi_res_norm_wgrad_zk, "h, dy, stats", "pw, pb",
                               WGRAD_PARAMS),
    [K_WSUM] = ZMLX_KSPEC("zmlx_norm_wsum", zmlxi_res_norm_wsum_zk, "part", "out", "zcols:i64, zchunks:i64"),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("norm", SPECS);

/* --------------------------------------------------------------- geometry */

#define MAX_CACHE 8
#define MAX_GROUPS ((int64_t)1 << 16)

static zmlx_status row_geometry(zmlx_device *dev, int64_t rows, int64_t cols, int *tg,
                                int *cache, int64_t *groups) {
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(dev, &info));
  int t = zmlxi_pattern_threads_per_row(cols, info.max_threads_per_threadgroup,
                                       info.simd_width > 0 ? info.simd_width : 32);
  if (t > 1024) t = 1024;
  *tg = t;
  int64_t per = (cols + t - 1) / t;
  *cache = per <= MAX_CACHE ? (int)per : 0;
  *groups = rows < MAX_GROUPS ? rows : MAX_GROUPS;
  return ZMLX_OK;
}

/* Elements of dtype dt per 16-byte chunk when rows of `cols` are whole
 * chunks and every array (NULLs skipped) starts 16-byte aligned; else 0. */
static int chunk_width(zmlx_dtype dt, zmlx_array *const *arrays, int n, int64_t cols) {
  const int width = (int)(16 / zmlx_dtype_size(dt));
  if (cols % width != 0) return 0;
  for (int i = 0; i < n; i++)
    if (arrays[i] && ((size_t)arrays[i]->offset * zmlx_dtype_size(arrays[i]->dtype)) % 16 != 0)
      return 0;
  return width;
}

/* ------------------------------------------------------------- validation */


static zmlx_status check_param(const norm_cfg *c, const char *what, zmlx_array *p, int64_t cols) {
  if (!zmlxi_dtype_is_f32_f16_bf16(p->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: %s has dtype %s (f32, f16 or bf16 required)", c->name,
                     what, zmlx_dtype_name(p->dtype));
  if (p->ndim != 1 || p->shape[0] != cols) {
    char buf[96];
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: %s has shape %s, wanted [%lld] (the length of x's "
                     "last dim)", c->name, what, zmlxi_shape_str(buf, sizeof buf, p->ndim, p->shape),
                     (long long)cols);
  }
  return ZMLX_OK;
}

static zmlx_status validate(const norm_cfg *c, zmlx_array *x, zmlx_array *r, zmlx_array *w,
                            zmlx_array *b) {
  if (!x) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: x is NULL", c->name);
  if (c->has_r && !r) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: the residual r is NULL", c->name);
  if (!zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: x has dtype %s (f32, f16 or bf16 required)", c->name,
                     zmlx_dtype_name(x->dtype));
  if (x->ndim < 1)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: x has rank 0; the norm runs over the last dim, so x "
                     "needs rank >= 1", c->name);
  if (!(c->eps >= 0.0f) || isinf(c->eps))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: eps = %g (must be finite and >= 0)", c->name,
                     (double)c->eps);
  int64_t cols = x->shape[x->ndim - 1];
  if (c->has_r) {
    if (r->dtype != x->dtype)
      return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: the residual r has dtype %s but x has %s", c->name,
                       zmlx_dtype_name(r->dtype), zmlx_dtype_name(x->dtype));
    if (!zmlxi_ad_same_shape(r, x->ndim, x->shape)) {
      char a[96], bb[96];
      return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: the residual r has shape %s but x has %s (must "
                       "match)", c->name, zmlxi_shape_str(a, sizeof a, r->ndim, r->shape),
                       zmlxi_shape_str(bb, sizeof bb, x->ndim, x->shape));
    }
    if (r->buffer->device != x->buffer->device)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: r is on another device than x", c->name);
  }
  if (w) ZMLX_CHECK(check_param(c, c->rms ? "the weight w" : "the gain g", w, cols));
  if (b) ZMLX_CHECK(check_param(c, "the bias b", b, cols));
  if ((w && w->buffer->device != x->buffer->device) ||
      (b && b->buffer->device != x->buffer->device))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: the weights are on another device than x",
                     c->name);
  return ZMLX_OK;
}

/* ---------------------------------------------------------------- forward */

static zmlx_status dense(zmlx_array *a, zmlx_array **out) {
  *out = NULL;
  if (!a) return ZMLX_OK;
  return zmlx_array_contiguous(a, out);
}

static zmlx_status out_array(zmlx_array *pre, zmlx_array *like, zmlx_array **out) {
  if (pre) {
    if (pre->dtype != like->dtype || !zmlxi_ad_same_shape(pre, like->ndim, like->shape) ||
        !zmlx_array_is_contiguous(pre))
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "norm: a preallocated output does not match x");
    zmlx_array_retain(pre);
    *out = pre;
    return ZMLX_OK;
  }
  return zmlxi_array_alloc(like->buffer->device, NULL, like->dtype, like->ndim, like->shape, out);
}

/* y (and h when has_r) are new references; *stats too when stats != NULL. */
static zmlx_status norm_forward(const norm_cfg *c, zmlx_array *x0, zmlx_array *r0,
                                zmlx_array *w0, zmlx_array *b0, zmlx_array *pre_y,
                                zmlx_array *pre_h, zmlx_array **y, zmlx_array **h,
                                zmlx_array **stats_out) {
  *y = NULL;
  if (h) *h = NULL;
  if (stats_out) *stats_out = NULL;
  zmlx_array *x = NULL, *r = NULL, *w = NULL, *b = NULL, *stats = NULL;
  zmlx_status st = dense(x0, &x);
  if (st == ZMLX_OK && c->has_r) st = dense(r0, &r);
  if (st == ZMLX_OK) st = dense(w0, &w);
  if (st == ZMLX_OK) st = dense(b0, &b);
  if (st == ZMLX_OK) st = out_array(pre_y, x, y);
  if (st == ZMLX_OK && c->has_r) st = out_array(pre_h, x, h);
  int64_t cols = x0->shape[x0->ndim - 1];
  int64_t rows = cols ? x0->size / cols : 0;
  int64_t sshape[1] = {2 * rows};
  if (st == ZMLX_OK)
    st = zmlxi_array_alloc(x0->buffer->device, NULL, ZMLX_F32, 1, sshape, &stats);
  if (st == ZMLX_OK && rows > 0 && cols > 0) {
    int v = (c->has_r ? 1 : 0) | (w ? 2 : 0) | (b ? 4 : 0);
    zmlx_kernel *k = NULL;
    int tg = 0, cache = 0;
    int64_t groups = 0;
    st = zmlxi_kernel_set_get(&KERNELS, K_FWD + v, &k);
    if (st == ZMLX_OK) st = row_geometry(x->buffer->device, rows, cols, &tg, &cache, &groups);
    zmlx_array *all[6] = {x, r, w, b, *y, h ? *h : NULL};
    int vec = st == ZMLX_OK ? chunk_width(x->dtype, all, 6, cols) : 0, nv = 0;
    if (vec) zmlxi_ops_chunk_geometry(x->buffer->device, cols / vec, MAX_CACHE, &tg, &nv);
    if (!nv) vec = 0;
    const int wvec = vec && (!w || w->dtype == x->dtype) && (!b || b->dtype == x->dtype) &&
                     chunk_width(x->dtype, &all[2], 2, cols) == vec;
    if (st == ZMLX_OK) {
      zmlx_array *ins[4], *outs[3];
      int ni = 0, no = 0;
      ins[ni++] = x;
      if (r) ins[ni++] = r;
      if (w) ins[ni++] = w;
      if (b) ins[ni++] = b;
      outs[no++] = *y;
      if (c->has_r) outs[no++] = *h;
      outs[no++] = stats;
      zmlx_template_arg t[10] = {
          {.name = "NATIVE_SIMD", .kind = ZMLX_TEMPLATE_BOOL, .value = zmlxi_ops_native_simd(x->buffer->device)},
          {.name = "RMS", .kind = ZMLX_TEMPLATE_BOOL, .value = c->rms},
          {.name = "HAS_R", .kind = ZMLX_TEMPLATE_BOOL, .value = c->has_r},
          {.name = "HAS_W", .kind = ZMLX_TEMPLATE_BOOL, .value = w != NULL},
          {.name = "HAS_B", .kind = ZMLX_TEMPLATE_BOOL, .value = b != NULL},
          {.name = "CACHE", .kind = ZMLX_TEMPLATE_INT, .value = cache},
          {.name = "VEC", .kind = ZMLX_TEMPLATE_INT, .value = vec},
          {.name = "NV", .kind = ZMLX_TEMPLATE_INT, .value = nv},
          {.name = "XDT", .kind = ZMLX_TEMPLATE_INT, .value = zmlxi_ops_xdt(x->dtype)},
          {.name = "WVEC", .kind = ZMLX_TEMPLATE_BOOL, .value = wvec}};
      double params[3] = {(double)rows, (double)cols, (double)c->eps};
      zmlx_kernel_call call = {.n_inputs = ni, .n_outputs = no, .inputs = ins, .outputs = outs,
                               .grid = {groups * tg, 1, 1}, .threadgroup = {tg, 1, 1},
                               .templates = t, .n_templates = 10, .params = params};
      st = zmlx_kernel_launch(k, &call);
    }
  }
  zmlx_array_release(x);
  zmlx_array_release(r);
  zmlx_array_release(w);
  zmlx_array_release(b);
  if (st == ZMLX_OK && stats_out) {
    *stats_out = stats;
    stats = NULL;
  }
  zmlx_array_release(stats);
  if (st != ZMLX_OK) {
    zmlx_array_release(*y);
    *y = NULL;
    if (h) {
      zmlx_array_release(*h);
      *h = NULL;
    }
    if (stats_out) {
      zmlx_array_release(*stats_out);
      *stats_out = NULL;
    }
  }
  return st;
}

/* --------------------------------------------------------------- backward */

typedef struct norm_ctx {
  norm_cfg cfg;
  zmlx_array *stats;
} norm_ctx;

static void ctx_free(void *p) {
  norm_ctx *c = p;
  if (!c) return;
  zmlx_array_release(c->stats);
  free(c);
}

/* dx = d norm(h) / d h applied to dy (+ dh). All dense, on one device. */
static zmlx_status launch_bwd(const norm_cfg *c, zmlx_array *h, zmlx_array *dy, zmlx_array *w,
                              zmlx_array *stats, zmlx_array *dh, zmlx_array **dx) {
  *dx = NULL;
  int64_t cols = h->shape[h->ndim - 1];
  int64_t rows = cols ? h->size / cols : 0;
  ZMLX_CHECK(zmlxi_array_alloc(h->buffer->device, NULL, h->dtype, h->ndim, h->shape, dx));
  if (rows == 0 || cols == 0) return ZMLX_OK;
  int v = (w ? 1 : 0) | (dh ? 2 : 0);
  zmlx_kernel *k = NULL;
  int tg = 0, cache = 0;
  int64_t groups = 0;
  zmlx_status st = zmlxi_kernel_set_get(&KERNELS, K_BWD + v, &k);
  if (st == ZMLX_OK) st = row_geometry(h->buffer->device, rows, cols, &tg, &cache, &groups);
  if (st == ZMLX_OK) {
    zmlx_array *ins[5];
    int ni = 0;
    ins[ni++] = h;
    ins[ni++] = dy;
    if (w) ins[ni++] = w;
    ins[ni++] = stats;
    if (dh) ins[ni++] = dh;
    zmlx_template_arg t[5] = {
        {.name = "NATIVE_SIMD", .kind = ZMLX_TEMPLATE_BOOL, .value = zmlxi_ops_native_simd(h->buffer->device)},
        {.name = "RMS", .kind = ZMLX_TEMPLATE_BOOL, .value = c->rms},
        {.name = "HAS_W", .kind = ZMLX_TEMPLATE_BOOL, .value = w != NULL},
        {.name = "HAS_DH", .kind = ZMLX_TEMPLATE_BOOL, .value = dh != NULL},
        {.name = "CACHE", .kind = ZMLX_TEMPLATE_INT, .value = cache}};
    double params[2] = {(double)rows, (double)cols};
    zmlx_kernel_call call = {.n_inputs = ni, .n_outputs = 1, .inputs = ins, .outputs = dx,
                             .grid = {groups * tg, 1, 1}, .threadgroup = {tg, 1, 1},
                             .templates = t, .n_templates = 5, .params = params};
    st = zmlx_kernel_launch(k, &call);
  }
  if (st != ZMLX_OK) {
    zmlx_array_release(*dx);
    *dx = NULL;
  }
  return st;
}

/* Column sums over rows: dw = sum dy * xh (when want_w), db = sum dy (when
 * want_b), in the dtypes wdt / bdt. */
static zmlx_status launch_wgrad(zmlx_array *h, zmlx_array *dy, zmlx_array *stats, int want_w,
                                zmlx_dtype wdt, int want_b, zmlx_dtype bdt, zmlx_array **dw,
                                zmlx_array **db) {
  *dw = *db = NULL;
  int64_t cols = h->shape[h->ndim - 1];
  int64_t rows = cols ? h->size / cols : 0;
  zmlx_device *dev = h->buffer->device;
  int64_t wshape[1] = {cols};
  zmlx_status st = ZMLX_OK;
  if (rows == 0 || cols == 0) {
    if (want_w) st = zmlx_array_zeros(dev, wdt, 1, wshape, dw);
    if (st == ZMLX_OK && want_b) st = zmlx_array_zeros(dev, bdt, 1, wshape, db);
    return st;
  }
  /* Enough chunks to fill the device (~64k threads), each of >= 8 rows. */
  int64_t chunks = (65536 + cols - 1) / cols;
  int64_t max_chunks = (rows + 7) / 8;
  if (chunks > max_chunks) chunks = max_chunks;
  if (chunks < 1) chunks = 1;
  int64_t chunk = (rows + chunks - 1) / chunks;
  chunks = (rows + chunk - 1) / chunk;
  zmlx_array *pw = NULL, *pb = NULL;
  int64_t pshape[2] = {chunks, cols};
  zmlx_kernel *kg = NULL, *ks = NULL;
  st = zmlxi_kernel_set_get(&KERNELS, K_WGRAD + (want_b ? 1 : 0), &kg);
  if (st == ZMLX_OK) st = zmlxi_kernel_set_get(&KERNELS, K_WSUM, &ks);
  if (st == ZMLX_OK) st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 2, pshape, &pw);
  if (st == ZMLX_OK && want_b) st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 2, pshape, &pb);
  if (st == ZMLX_OK) {
    zmlx_array *ins[3] = {h, dy, stats};
    zmlx_array *outs[2] = {pw, pb};
    zmlx_template_arg t = {.name = "HAS_B", .kind = ZMLX_TEMPLATE_BOOL, .value = want_b};
    double params[3] = {(double)rows, (double)cols, (double)chunk};
    int tgx = cols >= 256 ? 256 : (cols >= 64 ? 64 : 32);
    zmlx_kernel_call call = {.n_inputs = 3, .n_outputs = want_b ? 2 : 1, .inputs = ins,
                             .outputs = outs, .grid = {cols, chunks, 1},
                             .threadgroup = {tgx, 1, 1}, .templates = &t, .n_templates = 1,
                             .params = params};
    st = zmlx_kernel_launch(kg, &call);
  }
  for (int i = 0; i < 2 && st == ZMLX_OK; i++) {
    if (i == 0 && !want_w) continue;
    if (i == 1 && !want_b) continue;
    zmlx_array **dst = i ? db : dw;
    st = zmlxi_array_alloc(dev, NULL, i ? bdt : wdt, 1, wshape, dst);
    if (st != ZMLX_OK) break;
    zmlx_array *in = i ? pb : pw;
    double params[2] = {(double)cols, (double)chunks};
    int tgx = cols >= 256 ? 256 : 32;
    zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &in, .outputs = dst,
                             .grid = {cols, 1, 1}, .threadgroup = {tgx, 1, 1},
                             .params = params};
    st = zmlx_kernel_launch(ks, &call);
  }
  zmlx_array_release(pw);
  zmlx_array_release(pb);
  if (st != ZMLX_OK) {
    zmlx_array_release(*dw);
    zmlx_array_release(*db);
    *dw = *db = NULL;
  }
  return st;
}

/* Gradients of every input from the cotangents of y (and h). grads in the
 * input order x, [r], [w], [b]. */
static zmlx_status norm_backward(const norm_cfg *c, zmlx_array *h0, zmlx_array *w0,
                                 zmlx_array *stats, zmlx_array *dy0, zmlx_array *dh0,
                                 int need_x, int need_w, int need_b, zmlx_dtype wdt,
                                 zmlx_dtype bdt, zmlx_array **dx, zmlx_array **dw,
                                 zmlx_array **db) {
  *dx = *dw = *db = NULL;
  zmlx_array *h = NULL, *w = NULL, *dy = NULL, *dh = NULL;
  zmlx_status st = dense(h0, &h);
  if (st == ZMLX_OK) st = dense(w0, &w);
  if (st == ZMLX_OK) st = dense(dy0, &dy);
  if (st == ZMLX_OK) st = dense(dh0, &dh);
  if (st == ZMLX_OK && need_x) st = launch_bwd(c, h, dy, w, stats, dh, dx);
  if (st == ZMLX_OK && (need_w || need_b))
    st = launch_wgrad(h, dy, stats, need_w, wdt, need_b, bdt, dw, db);
  zmlx_array_release(h);
  zmlx_array_release(w);
  zmlx_array_release(dy);
  zmlx_array_release(dh);
  if (st != ZMLX_OK) {
    zmlx_array_release(*dx);
    zmlx_array_release(*dw);
    zmlx_array_release(*db);
    *dx = *dw = *db = NULL;
  }
  return st;
}

static zmlx_status norm_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                            zmlx_array **grads) {
  const norm_ctx *ctx = n->ctx;
  const norm_cfg *c = &ctx->cfg;
  int iw = -1, ib = -1, k = c->has_r ? 2 : 1;
  if (c->has_w) iw = k++;
  if (c->has_b) ib = k++;
  zmlx_array *h = c->has_r ? n->out[1] : n->in[0];
  zmlx_array *w = iw >= 0 ? n->in[iw] : NULL;
  int need_x = need[0] || (c->has_r && need[1]);
  int need_w = iw >= 0 && need[iw];
  int need_b = ib >= 0 && need[ib];
  zmlx_array *dx = NULL, *dw = NULL, *db = NULL;
  zmlx_status st = norm_backward(c, h, w, ctx->stats, cot[0], c->has_r ? cot[1] : NULL, need_x,
                                 need_w, need_b, w ? w->dtype : ZMLX_F32,
                                 ib >= 0 ? n->in_meta[ib].dtype : ZMLX_F32, &dx, &dw, &db);
  if (st != ZMLX_OK) return st;
  if (need[0]) {
    zmlx_array_retain(dx);
    grads[0] = dx;
  }
  if (c->has_r && need[1]) {
    zmlx_array_retain(dx);
    grads[1] = dx;
  }
  zmlx_array_release(dx);
  if (iw >= 0) grads[iw] = dw;
  else zmlx_array_release(dw);
  if (ib >= 0) grads[ib] = db;
  else zmlx_array_release(db);
  return ZMLX_OK;
}

static const zmlx_ad_rule NORM_RULE = {"norm", norm_vjp, NULL, ctx_free};

/* ------------------------------------------------------------- entry point */

zmlx_status zmlxi_norm_call(const norm_cfg *c0, zmlx_array *x, zmlx_array *r, zmlx_array *w,
                           zmlx_array *b, zmlx_array *pre_y, zmlx_array *pre_h,
                           zmlx_array **y, zmlx_array **h) {
  norm_cfg c = *c0;
  c.has_w = w != NULL;
  c.has_b = b != NULL;
  ZMLX_CHECK(validate(&c, x, r, w, b));
  zmlx_array *ins[4];
  int n = 0;
  ins[n++] = x;
  if (c.has_r) ins[n++] = r;
  if (w) ins[n++] = w;
  if (b) ins[n++] = b;
  int record = zmlxi_ad_should_record(ins, n);
  zmlx_array *stats = NULL;
  ZMLX_CHECK(norm_forward(&c, x, r, w, b, record ? NULL : pre_y, record ? NULL : pre_h, y,
                          c.has_r ? h : NULL, record ? &stats : NULL));
  if (!record) return ZMLX_OK;
  norm_ctx *ctx = calloc(1, sizeof *ctx);
  zmlx_status st = ZMLX_OK;
  if (!ctx) {
    zmlx_array_release(stats);
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", c.name);
  } else {
    ctx->cfg = c;
    ctx->stats = stats;
    zmlx_array *outs[2] = {*y, c.has_r ? *h : NULL};
    st = zmlxi_ad_record(&NORM_RULE, ctx, ins, n, outs, c.has_r ? 2 : 1,
                        ZMLX_AD_SAVE_INPUTS | ZMLX_AD_SAVE_OUTPUTS);
  }
  if (st != ZMLX_OK) {
    zmlx_array_release(*y);
    *y = NULL;
    if (c.has_r) {
      zmlx_array_release(*h);
      *h = NULL;
    }
  }
  return st;
}

zmlx_status zmlx_rmsnorm(zmlx_array *x, zmlx_array *w, double eps, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  norm_cfg c = {.name = "rmsnorm", .rms = 1, .eps = (float)eps};
  return zmlxi_norm_call(&c, x, NULL, w, NULL, NULL, NULL, out, NULL);
}

zmlx_status zmlx_layernorm(zmlx_array *x, zmlx_array *g, zmlx_array *b, double eps,
                           zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  norm_cfg c = {.name = "layernorm", .rms = 0, .eps = (float)eps};
  return zmlxi_norm_call(&c, x, NULL, g, b, NULL, NULL, out, NULL);
}

zmlx_status zmlx_add_rmsnorm(zmlx_array *x, zmlx_array *r, zmlx_array *w, double eps,
                             zmlx_array **normed, zmlx_array **sum) {
  ZMLX_REQUIRE_ARG(normed);
  ZMLX_REQUIRE_ARG(sum);
  *normed = *sum = NULL;
  norm_cfg c = {.name = "add_rmsnorm", .rms = 1, .has_r = 1, .eps = (float)eps};
  return zmlxi_norm_call(&c, x, r, w, NULL, NULL, NULL, normed, sum);
}

zmlx_status zmlx_add_layernorm(zmlx_array *x, zmlx_array *r, zmlx_array *g, zmlx_array *b,
                               double eps, zmlx_array **normed, zmlx_array **sum) {
  ZMLX_REQUIRE_ARG(normed);
  ZMLX_REQUIRE_ARG(sum);
  *normed = *sum = NULL;
  norm_cfg c = {.name = "add_layernorm", .rms = 0, .has_r = 1, .eps = (float)eps};
  return zmlxi_norm_call(&c, x, r, g, b, NULL, NULL, normed, sum);
}
