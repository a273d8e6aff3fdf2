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
#include "ops/catalog.h"
#include "ops/check_util.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char zmlx_res_norm_fwd_zk[];
extern const char zmlx_res_norm_bwd_zk[];
extern const char zmlx_res_norm_wgrad_zk[];
extern const char zmlx_res_norm_wsum_zk[];

/* ---------------------------------------------------------------- kernels */

/* The forward gets the 16-byte access helpers (kernels/vec_io.zk); the
 * others do not need them (and their text would mark a barrier-free kernel
 * as one with barriers, which constrains its grid). */
static zmlx_status make_kernel(const char *name, const char *file, const char *const *in,
                               int n_in, const char *const *out, int n_out,
                               const char *const *params, const zmlx_dtype *pdt, int n_params,
                               zmlx_kernel **k) {
  zmlx_kernel_desc d = {.name = name, .input_names = in, .n_inputs = n_in,
                        .output_names = out, .n_outputs = n_out, .source = file,
                        .param_names = params, .param_dtypes = pdt, .n_params = n_params};
  return file == zmlx_res_norm_fwd_zk ? zmlx_ops_kernel_from_zk(&d, k)
                                      : zmlx_kernel_create_from_zk(&d, k);
}

static pthread_mutex_t kernel_lock = PTHREAD_MUTEX_INITIALIZER;
static zmlx_kernel *fwd_kernels[8];  /* bit 0: r, bit 1: w, bit 2: b */
static zmlx_kernel *bwd_kernels[4];  /* bit 0: w, bit 1: dh */
static zmlx_kernel *wgrad_kernels[2];/* bit 0: b */
static zmlx_kernel *wsum_kernel;

static zmlx_status get_fwd(int v, zmlx_kernel **out) {
  zmlx_status st = ZMLX_OK;
  pthread_mutex_lock(&kernel_lock);
  if (!fwd_kernels[v]) {
    const char *in[4];
    int n = 0;
    in[n++] = "x";
    if (v & 1) in[n++] = "r";
    if (v & 2) in[n++] = "w";
    if (v & 4) in[n++] = "b";
    const char *outs[3];
    int no = 0;
    outs[no++] = "y";
    if (v & 1) outs[no++] = "h";
    outs[no++] = "stats";
    static const char *const params[3] = {"zrows", "zcols", "eps"};
    static const zmlx_dtype pdt[3] = {ZMLX_I64, ZMLX_I64, ZMLX_F32};
    char name[32];
    snprintf(name, sizeof name, "zmlx_norm_fwd%d", v);
    st = make_kernel(name, zmlx_res_norm_fwd_zk, in, n, outs, no, params, pdt, 3,
                     &fwd_kernels[v]);
  }
  *out = fwd_kernels[v];
  pthread_mutex_unlock(&kernel_lock);
  return st;
}

static zmlx_status get_bwd(int v, zmlx_kernel **out) {
  zmlx_status st = ZMLX_OK;
  pthread_mutex_lock(&kernel_lock);
  if (!bwd_kernels[v]) {
    const char *in[5];
    int n = 0;
    in[n++] = "h";
    in[n++] = "dy";
    if (v & 1) in[n++] = "w";
    in[n++] = "stats";
    if (v & 2) in[n++] = "dh";
    static const char *const outs[1] = {"dx"};
    static const char *const params[2] = {"zrows", "zcols"};
    static const zmlx_dtype pdt[2] = {ZMLX_I64, ZMLX_I64};
    char name[32];
    snprintf(name, sizeof name, "zmlx_norm_bwd%d", v);
    st = make_kernel(name, zmlx_res_norm_bwd_zk, in, n, outs, 1, params, pdt, 2,
                     &bwd_kernels[v]);
  }
  *out = bwd_kernels[v];
  pthread_mutex_unlock(&kernel_lock);
  return st;
}

static zmlx_status get_wgrad(int v, zmlx_kernel **out) {
  zmlx_status st = ZMLX_OK;
  pthread_mutex_lock(&kernel_lock);
  if (!wgrad_kernels[v]) {
    static const char *const in[3] = {"h", "dy", "stats"};
    static const char *const outs[2] = {"pw", "pb"};
    static const char *const params[3] = {"zrows", "zcols", "zchunk"};
    static const zmlx_dtype pdt[3] = {ZMLX_I64, ZMLX_I64, ZMLX_I64};
    char name[32];
    snprintf(name, sizeof name, "zmlx_norm_wgrad%d", v);
    st = make_kernel(name, zmlx_res_norm_wgrad_zk, in, 3, outs, v ? 2 : 1, params, pdt, 3,
                     &wgrad_kernels[v]);
  }
  *out = wgrad_kernels[v];
  pthread_mutex_unlock(&kernel_lock);
  return st;
}

static zmlx_status get_wsum(zmlx_kernel **out) {
  zmlx_status st = ZMLX_OK;
  pthread_mutex_lock(&kernel_lock);
  if (!wsum_kernel) {
    static const char *const in[1] = {"part"};
    static const char *const outs[1] = {"out"};
    static const char *const params[2] = {"zcols", "zchunks"};
    static const zmlx_dtype pdt[2] = {ZMLX_I64, ZMLX_I64};
    st = make_kernel("zmlx_norm_wsum", zmlx_res_norm_wsum_zk, in, 1, outs, 1, params, pdt, 2,
                     &wsum_kernel);
  }
  *out = wsum_kernel;
  pthread_mutex_unlock(&kernel_lock);
  return st;
}

/* --------------------------------------------------------------- geometry */

#define MAX_CACHE 8
#define MAX_GROUPS ((int64_t)1 << 16)

static zmlx_status row_geometry(zmlx_device *dev, int64_t rows, int64_t cols, int *tg,
                                int *cache, int64_t *groups) {
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(dev, &info));
  int t = zmlx_pattern_threads_per_row(cols, info.max_threads_per_threadgroup,
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

typedef struct norm_cfg {
  const char *name; /* "rmsnorm", ... */
  int rms, has_r, has_w, has_b;
  float eps;
} norm_cfg;

static int is_float16_32(zmlx_dtype dt) {
  return dt == ZMLX_F32 || dt == ZMLX_F16 || dt == ZMLX_BF16;
}

static zmlx_status check_param(const norm_cfg *c, const char *what, zmlx_array *p, int64_t cols) {
  if (!is_float16_32(p->dtype))
    return zmlx_fail(ZMLX_ERR_DTYPE, "%s: %s has dtype %s (f32, f16 or bf16 required)", c->name,
                     what, zmlx_dtype_name(p->dtype));
  if (p->ndim != 1 || p->shape[0] != cols) {
    char buf[96];
    return zmlx_fail(ZMLX_ERR_SHAPE, "%s: %s has shape %s, wanted [%lld] (the length of x's "
                     "last dim)", c->name, what, zmlx_shape_str(buf, sizeof buf, p->ndim, p->shape),
                     (long long)cols);
  }
  return ZMLX_OK;
}

static zmlx_status validate(const norm_cfg *c, zmlx_array *x, zmlx_array *r, zmlx_array *w,
                            zmlx_array *b) {
  if (!x) return zmlx_fail(ZMLX_ERR_NULL_ARG, "%s: x is NULL", c->name);
  if (c->has_r && !r) return zmlx_fail(ZMLX_ERR_NULL_ARG, "%s: the residual r is NULL", c->name);
  if (!is_float16_32(x->dtype))
    return zmlx_fail(ZMLX_ERR_DTYPE, "%s: x has dtype %s (f32, f16 or bf16 required)", c->name,
                     zmlx_dtype_name(x->dtype));
  if (x->ndim < 1)
    return zmlx_fail(ZMLX_ERR_SHAPE, "%s: x has rank 0; the norm runs over the last dim, so x "
                     "needs rank >= 1", c->name);
  if (!(c->eps >= 0.0f) || isinf(c->eps))
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "%s: eps = %g (must be finite and >= 0)", c->name,
                     (double)c->eps);
  int64_t cols = x->shape[x->ndim - 1];
  if (c->has_r) {
    if (r->dtype != x->dtype)
      return zmlx_fail(ZMLX_ERR_DTYPE, "%s: the residual r has dtype %s but x has %s", c->name,
                       zmlx_dtype_name(r->dtype), zmlx_dtype_name(x->dtype));
    if (!zmlx_ad_same_shape(r, x->ndim, x->shape)) {
      char a[96], bb[96];
      return zmlx_fail(ZMLX_ERR_SHAPE, "%s: the residual r has shape %s but x has %s (must "
                       "match)", c->name, zmlx_shape_str(a, sizeof a, r->ndim, r->shape),
                       zmlx_shape_str(bb, sizeof bb, x->ndim, x->shape));
    }
    if (r->buffer->device != x->buffer->device)
      return zmlx_fail(ZMLX_ERR_INVALID_ARG, "%s: r is on another device than x", c->name);
  }
  if (w) ZMLX_CHECK(check_param(c, c->rms ? "the weight w" : "the gain g", w, cols));
  if (b) ZMLX_CHECK(check_param(c, "the bias b", b, cols));
  if ((w && w->buffer->device != x->buffer->device) ||
      (b && b->buffer->device != x->buffer->device))
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "%s: the weights are on another device than x",
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
    if (pre->dtype != like->dtype || !zmlx_ad_same_shape(pre, like->ndim, like->shape) ||
        !zmlx_array_is_contiguous(pre))
      return zmlx_fail(ZMLX_ERR_INVALID_ARG, "norm: a preallocated output does not match x");
    zmlx_array_retain(pre);
    *out = pre;
    return ZMLX_OK;
  }
  return zmlx_array_alloc(like->buffer->device, NULL, like->dtype, like->ndim, like->shape, out);
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
    st = zmlx_array_alloc(x0->buffer->device, NULL, ZMLX_F32, 1, sshape, &stats);
  if (st == ZMLX_OK && rows > 0 && cols > 0) {
    int v = (c->has_r ? 1 : 0) | (w ? 2 : 0) | (b ? 4 : 0);
    zmlx_kernel *k = NULL;
    int tg = 0, cache = 0;
    int64_t groups = 0;
    st = get_fwd(v, &k);
    if (st == ZMLX_OK) st = row_geometry(x->buffer->device, rows, cols, &tg, &cache, &groups);
    zmlx_array *all[6] = {x, r, w, b, *y, h ? *h : NULL};
    int vec = st == ZMLX_OK ? chunk_width(x->dtype, all, 6, cols) : 0, nv = 0;
    if (vec) zmlx_ops_chunk_geometry(x->buffer->device, cols / vec, MAX_CACHE, &tg, &nv);
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
          {.name = "NATIVE_SIMD", .kind = ZMLX_TEMPLATE_BOOL, .value = zmlx_ops_native_simd(x->buffer->device)},
          {.name = "RMS", .kind = ZMLX_TEMPLATE_BOOL, .value = c->rms},
          {.name = "HAS_R", .kind = ZMLX_TEMPLATE_BOOL, .value = c->has_r},
          {.name = "HAS_W", .kind = ZMLX_TEMPLATE_BOOL, .value = w != NULL},
          {.name = "HAS_B", .kind = ZMLX_TEMPLATE_BOOL, .value = b != NULL},
          {.name = "CACHE", .kind = ZMLX_TEMPLATE_INT, .value = cache},
          {.name = "VEC", .kind = ZMLX_TEMPLATE_INT, .value = vec},
          {.name = "NV", .kind = ZMLX_TEMPLATE_INT, .value = nv},
          {.name = "XDT", .kind = ZMLX_TEMPLATE_INT, .value = zmlx_ops_xdt(x->dtype)},
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
  ZMLX_CHECK(zmlx_array_alloc(h->buffer->device, NULL, h->dtype, h->ndim, h->shape, dx));
  if (rows == 0 || cols == 0) return ZMLX_OK;
  int v = (w ? 1 : 0) | (dh ? 2 : 0);
  zmlx_kernel *k = NULL;
  int tg = 0, cache = 0;
  int64_t groups = 0;
  zmlx_status st = get_bwd(v, &k);
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
        {.name = "NATIVE_SIMD", .kind = ZMLX_TEMPLATE_BOOL, .value = zmlx_ops_native_simd(h->buffer->device)},
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
  st = get_wgrad(want_b ? 1 : 0, &kg);
  if (st == ZMLX_OK) st = get_wsum(&ks);
  if (st == ZMLX_OK) st = zmlx_array_alloc(dev, NULL, ZMLX_F32, 2, pshape, &pw);
  if (st == ZMLX_OK && want_b) st = zmlx_array_alloc(dev, NULL, ZMLX_F32, 2, pshape, &pb);
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
    st = zmlx_array_alloc(dev, NULL, i ? bdt : wdt, 1, wshape, dst);
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

static zmlx_status norm_call(const norm_cfg *c0, zmlx_array *x, zmlx_array *r, zmlx_array *w,
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
  int record = zmlx_ad_should_record(ins, n);
  zmlx_array *stats = NULL;
  ZMLX_CHECK(norm_forward(&c, x, r, w, b, record ? NULL : pre_y, record ? NULL : pre_h, y,
                          c.has_r ? h : NULL, record ? &stats : NULL));
  if (!record) return ZMLX_OK;
  norm_ctx *ctx = calloc(1, sizeof *ctx);
  zmlx_status st = ZMLX_OK;
  if (!ctx) {
    zmlx_array_release(stats);
    st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", c.name);
  } else {
    ctx->cfg = c;
    ctx->stats = stats;
    zmlx_array *outs[2] = {*y, c.has_r ? *h : NULL};
    st = zmlx_ad_record(&NORM_RULE, ctx, ins, n, outs, c.has_r ? 2 : 1,
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
  return norm_call(&c, x, NULL, w, NULL, NULL, NULL, out, NULL);
}

zmlx_status zmlx_layernorm(zmlx_array *x, zmlx_array *g, zmlx_array *b, double eps,
                           zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  norm_cfg c = {.name = "layernorm", .rms = 0, .eps = (float)eps};
  return norm_call(&c, x, NULL, g, b, NULL, NULL, out, NULL);
}

zmlx_status zmlx_add_rmsnorm(zmlx_array *x, zmlx_array *r, zmlx_array *w, double eps,
                             zmlx_array **normed, zmlx_array **sum) {
  ZMLX_REQUIRE_ARG(normed);
  ZMLX_REQUIRE_ARG(sum);
  *normed = *sum = NULL;
  norm_cfg c = {.name = "add_rmsnorm", .rms = 1, .has_r = 1, .eps = (float)eps};
  return norm_call(&c, x, r, w, NULL, NULL, NULL, normed, sum);
}

zmlx_status zmlx_add_layernorm(zmlx_array *x, zmlx_array *r, zmlx_array *g, zmlx_array *b,
                               double eps, zmlx_array **normed, zmlx_array **sum) {
  ZMLX_REQUIRE_ARG(normed);
  ZMLX_REQUIRE_ARG(sum);
  *normed = *sum = NULL;
  norm_cfg c = {.name = "add_layernorm", .rms = 0, .has_r = 1, .eps = (float)eps};
  return norm_call(&c, x, r, g, b, NULL, NULL, normed, sum);
}

/* ===================================================================== check */

/* The verifier (`zmlx check`, src/ops/catalog.h): forward against an f64
 * reference with poisoned outputs, gradients against finite differences
 * (f32) and against an f64 reference (every dtype), bad input. */

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static double urand(uint64_t *s, double lo, double hi) {
  return lo + (hi - lo) * ((double)(splitmix(s) >> 11) * (1.0 / 9007199254740992.0));
}

static double round_dt(zmlx_dtype dt, double v) {
  switch (dt) {
  case ZMLX_F16: return zmlx_f16_to_f32(zmlx_f32_to_f16((float)v));
  case ZMLX_BF16: return zmlx_bf16_to_f32(zmlx_f32_to_bf16((float)v));
  default: return (float)v;
  }
}

/* Random values rounded to dt into v[n]. */
static void fill_random(double *v, int64_t n, uint64_t *s, double lo, double hi, zmlx_dtype dt) {
  for (int64_t i = 0; i < n; i++) v[i] = round_dt(dt, urand(s, lo, hi));
}

static zmlx_status upload(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                          const double *v, int64_t n, zmlx_array **out) {
  *out = NULL;
  size_t es = zmlx_dtype_size(dt);
  unsigned char *buf = malloc((size_t)n * es + 1);
  if (!buf) return zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "norm check: out of host memory");
  for (int64_t i = 0; i < n; i++) {
    if (dt == ZMLX_F32) {
      float f = (float)v[i];
      memcpy(buf + i * 4, &f, 4);
    } else {
      uint16_t u = dt == ZMLX_F16 ? zmlx_f32_to_f16((float)v[i]) : zmlx_f32_to_bf16((float)v[i]);
      memcpy(buf + i * 2, &u, 2);
    }
  }
  zmlx_status st = zmlx_array_from_host(dev, dt, ndim, shape, buf, out);
  free(buf);
  return st;
}

static zmlx_status download(zmlx_array *a, double **out) {
  *out = NULL;
  int64_t n = zmlx_array_size(a);
  size_t nb = zmlx_array_nbytes(a);
  unsigned char *buf = malloc(nb + 1);
  double *v = malloc((size_t)n * sizeof *v + 1);
  zmlx_status st = ZMLX_OK;
  if (!buf || !v) st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "norm check: out of host memory");
  if (st == ZMLX_OK) st = zmlx_array_to_host(a, buf, nb);
  for (int64_t i = 0; st == ZMLX_OK && i < n; i++) {
    zmlx_dtype dt = zmlx_array_dtype(a);
    if (dt == ZMLX_F32) {
      float f;
      memcpy(&f, buf + i * 4, 4);
      v[i] = f;
    } else {
      uint16_t u;
      memcpy(&u, buf + i * 2, 2);
      v[i] = dt == ZMLX_F16 ? zmlx_f16_to_f32(u) : zmlx_bf16_to_f32(u);
    }
  }
  free(buf);
  if (st != ZMLX_OK) {
    free(v);
    return st;
  }
  *out = v;
  return ZMLX_OK;
}

/* max |got - want| / (1 + |want|); NaN or inf in got: inf. */
static double max_err(const double *got, const double *want, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs(got[i] - want[i]) / (1.0 + fabs(want[i]));
    if (!(e == e) || isinf(e)) return INFINITY;
    if (e > m) m = e;
  }
  return m;
}

static double fwd_tol(zmlx_dtype dt) {
  return dt == ZMLX_F32 ? 1e-4 : (dt == ZMLX_F16 ? 2e-3 : 1e-2);
}
static double grad_tol(zmlx_dtype dt) {
  return dt == ZMLX_F32 ? 2e-4 : (dt == ZMLX_F16 ? 4e-3 : 1.6e-2);
}

static void emit(const zmlx_check_opts *o, const char *op, const char *what, const char *shape,
                 double err, double tol, int pass) {
  zmlx_check_row row = {.op = op, .what = what, .backend = zmlx_device_backend(o->device),
                        .dtype = o->dtype, .max_err = err, .tol = tol, .pass = pass};
  snprintf(row.shape, sizeof row.shape, "%s", shape);
  if (o->emit) o->emit(o->ctx, &row);
}

/* Statistics of one row of h in f64. */
static void ref_stats(const norm_cfg *c, const double *h, int64_t cols, double eps, double *mean,
                      double *rstd) {
  double s = 0, q = 0;
  for (int64_t j = 0; j < cols; j++) s += c->rms ? h[j] * h[j] : h[j];
  if (c->rms) {
    *mean = 0;
    *rstd = 1.0 / sqrt(s / (double)cols + eps);
    return;
  }
  *mean = s / (double)cols;
  for (int64_t j = 0; j < cols; j++) q += (h[j] - *mean) * (h[j] - *mean);
  *rstd = 1.0 / sqrt(q / (double)cols + eps);
}

/* h = round(x + r) (or x), y = norm(h). */
static void ref_forward(const norm_cfg *c, zmlx_dtype dt, int64_t rows, int64_t cols,
                        const double *x, const double *r, const double *w, const double *b,
                        double *h, double *y) {
  for (int64_t i = 0; i < rows * cols; i++) h[i] = r ? round_dt(dt, x[i] + r[i]) : x[i];
  for (int64_t i = 0; i < rows; i++) {
    const double *hr = h + i * cols;
    double mean, rstd;
    ref_stats(c, hr, cols, c->eps, &mean, &rstd);
    for (int64_t j = 0; j < cols; j++) {
      double v = (hr[j] - mean) * rstd;
      if (w) v *= w[j];
      if (b) v += b[j];
      y[i * cols + j] = v;
    }
  }
}

/* dx (+ dh), dw, db from h and dy (any may be NULL where not wanted). */
static void ref_backward(const norm_cfg *c, int64_t rows, int64_t cols, const double *h,
                         const double *w, const double *dy, const double *dh, double *dx,
                         double *dw, double *db) {
  if (dw) memset(dw, 0, (size_t)cols * sizeof *dw);
  if (db) memset(db, 0, (size_t)cols * sizeof *db);
  for (int64_t i = 0; i < rows; i++) {
    const double *hr = h + i * cols, *dyr = dy + i * cols;
    double mean, rstd, a = 0, bb = 0;
    ref_stats(c, hr, cols, c->eps, &mean, &rstd);
    for (int64_t j = 0; j < cols; j++) {
      double xh = (hr[j] - mean) * rstd, g = dyr[j] * (w ? w[j] : 1.0);
      a += g * xh;
      bb += g;
      if (dw) dw[j] += dyr[j] * xh;
      if (db) db[j] += dyr[j];
    }
    a /= (double)cols;
    bb = c->rms ? 0.0 : bb / (double)cols;
    for (int64_t j = 0; j < cols; j++) {
      double xh = (hr[j] - mean) * rstd, g = dyr[j] * (w ? w[j] : 1.0);
      dx[i * cols + j] = rstd * (g - bb - xh * a) + (dh ? dh[i * cols + j] : 0.0);
    }
  }
}

/* Host inputs of one case. */
typedef struct norm_case {
  norm_cfg c;
  int ndim;
  int64_t shape[3];
  int64_t rows, cols;
  double *x, *r, *w, *b, *c1, *c2; /* c1, c2: the loss weights of y and h */
  zmlx_array *ax, *ar, *aw, *ab, *ac1, *ac2;
} norm_case;

static void case_free(norm_case *k) {
  free(k->x);
  free(k->r);
  free(k->w);
  free(k->b);
  free(k->c1);
  free(k->c2);
  zmlx_array_release(k->ax);
  zmlx_array_release(k->ar);
  zmlx_array_release(k->aw);
  zmlx_array_release(k->ab);
  zmlx_array_release(k->ac1);
  zmlx_array_release(k->ac2);
  memset(k, 0, sizeof *k);
}

static zmlx_status case_make(const zmlx_check_opts *o, const norm_cfg *c, int64_t rows,
                             int64_t cols, uint64_t seed, int with_loss, norm_case *k) {
  memset(k, 0, sizeof *k);
  k->c = *c;
  k->rows = rows;
  k->cols = cols;
  if (rows % 2 == 0 && rows > 2) {
    k->ndim = 3;
    k->shape[0] = 2;
    k->shape[1] = rows / 2;
    k->shape[2] = cols;
  } else {
    k->ndim = 2;
    k->shape[0] = rows;
    k->shape[1] = cols;
  }
  int64_t n = rows * cols;
  zmlx_dtype dt = o->dtype;
  uint64_t s = seed;
  size_t nb = (size_t)n * sizeof(double) + 1, cb = (size_t)cols * sizeof(double) + 1;
  k->x = malloc(nb);
  if (c->has_r) k->r = malloc(nb);
  if (c->has_w) k->w = malloc(cb);
  if (c->has_b) k->b = malloc(cb);
  if (with_loss) k->c1 = malloc(nb);
  if (with_loss && c->has_r) k->c2 = malloc(nb);
  if (!k->x || (c->has_r && !k->r) || (c->has_w && !k->w) || (c->has_b && !k->b) ||
      (with_loss && !k->c1) || (with_loss && c->has_r && !k->c2))
    return zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "norm check: out of host memory");
  /* An offset makes the mean matter for layernorm. */
  fill_random(k->x, n, &s, -1.5, 2.5, dt);
  if (k->r) fill_random(k->r, n, &s, -1.0, 1.0, dt);
  if (k->w) fill_random(k->w, cols, &s, 0.5, 1.5, dt);
  if (k->b) fill_random(k->b, cols, &s, -0.5, 0.5, dt);
  if (k->c1) fill_random(k->c1, n, &s, -1.0, 1.0, dt);
  if (k->c2) fill_random(k->c2, n, &s, -1.0, 1.0, dt);
  zmlx_device *dev = o->device;
  int64_t wshape[1] = {cols};
  ZMLX_CHECK(upload(dev, dt, k->ndim, k->shape, k->x, n, &k->ax));
  if (k->r) ZMLX_CHECK(upload(dev, dt, k->ndim, k->shape, k->r, n, &k->ar));
  if (k->w) ZMLX_CHECK(upload(dev, dt, 1, wshape, k->w, cols, &k->aw));
  if (k->b) ZMLX_CHECK(upload(dev, dt, 1, wshape, k->b, cols, &k->ab));
  if (k->c1) ZMLX_CHECK(upload(dev, dt, k->ndim, k->shape, k->c1, n, &k->ac1));
  if (k->c2) ZMLX_CHECK(upload(dev, dt, k->ndim, k->shape, k->c2, n, &k->ac2));
  return ZMLX_OK;
}

static const char *case_shape(const norm_case *k, char *buf, size_t cap) {
  return zmlx_shape_str(buf, cap, k->ndim, k->shape);
}

static const char *variant_what(const norm_cfg *c, const char *base, char *buf, size_t cap) {
  const char *v = "";
  if (c->rms) v = c->has_w ? "" : " (no w)";
  else if (!c->has_w && !c->has_b) v = " (no g, b)";
  else if (!c->has_b) v = " (no b)";
  snprintf(buf, cap, "%s%s", base, v);
  return buf;
}

static zmlx_status fwd_case(const zmlx_check_opts *o, const norm_cfg *c, int64_t rows,
                            int64_t cols, uint64_t seed) {
  norm_case k;
  zmlx_status st = case_make(o, c, rows, cols, seed, 0, &k);
  zmlx_array *py = NULL, *ph = NULL, *y = NULL, *h = NULL;
  double *want_y = NULL, *want_h = NULL, *got_y = NULL, *got_h = NULL;
  int64_t n = rows * cols;
  char shape[96], what[64];
  case_shape(&k, shape, sizeof shape);
  variant_what(c, "fwd", what, sizeof what);
  if (st == ZMLX_OK) st = zmlx_array_full(o->device, o->dtype, k.ndim, k.shape, NAN, &py);
  if (st == ZMLX_OK && c->has_r)
    st = zmlx_array_full(o->device, o->dtype, k.ndim, k.shape, NAN, &ph);
  if (st == ZMLX_OK) {
    want_y = malloc((size_t)n * sizeof *want_y + 1);
    want_h = malloc((size_t)n * sizeof *want_h + 1);
    if (!want_y || !want_h) st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "norm check: out of memory");
  }
  if (st == ZMLX_OK) {
    ref_forward(c, o->dtype, rows, cols, k.x, k.r, k.w, k.b, want_h, want_y);
    zmlx_status op = norm_call(c, k.ax, k.ar, k.aw, k.ab, py, ph, &y, &h);
    double err = INFINITY;
    if (op == ZMLX_OK) st = download(y, &got_y);
    if (op == ZMLX_OK && st == ZMLX_OK) err = max_err(got_y, want_y, n);
    if (op == ZMLX_OK && st == ZMLX_OK && c->has_r) {
      st = download(h, &got_h);
      if (st == ZMLX_OK) {
        double eh = max_err(got_h, want_h, n);
        if (!(eh <= err)) err = eh;
      }
    }
    if (st == ZMLX_OK) {
      double tol = fwd_tol(o->dtype);
      emit(o, c->name, what, shape, err, tol, op == ZMLX_OK && err <= tol);
    }
  }
  free(want_y);
  free(want_h);
  free(got_y);
  free(got_h);
  zmlx_array_release(py);
  zmlx_array_release(ph);
  zmlx_array_release(y);
  zmlx_array_release(h);
  case_free(&k);
  return st;
}

/* loss = sum(norm(x[, r]) * c1) [+ sum(h * c2)]. */
static zmlx_status loss_fn(void *ud, zmlx_array *const *in, int n_in, zmlx_array **out) {
  const norm_case *k = ud;
  int i = 1;
  zmlx_array *r = k->c.has_r ? in[i++] : NULL;
  zmlx_array *w = k->c.has_w ? in[i++] : NULL;
  zmlx_array *b = k->c.has_b ? in[i++] : NULL;
  (void)n_in;
  zmlx_array *y = NULL, *h = NULL, *m = NULL, *s = NULL, *m2 = NULL, *s2 = NULL;
  zmlx_status st = norm_call(&k->c, in[0], r, w, b, NULL, NULL, &y, &h);
  if (st == ZMLX_OK) st = zmlx_mul(y, k->ac1, &m);
  if (st == ZMLX_OK) st = zmlx_sum(m, NULL, 0, 0, &s);
  if (st == ZMLX_OK && k->c.has_r) {
    st = zmlx_mul(h, k->ac2, &m2);
    if (st == ZMLX_OK) st = zmlx_sum(m2, NULL, 0, 0, &s2);
    if (st == ZMLX_OK) st = zmlx_add(s, s2, out);
  } else if (st == ZMLX_OK) {
    zmlx_array_retain(s);
    *out = s;
  }
  zmlx_array_release(y);
  zmlx_array_release(h);
  zmlx_array_release(m);
  zmlx_array_release(s);
  zmlx_array_release(m2);
  zmlx_array_release(s2);
  return st;
}

static int case_inputs(norm_case *k, zmlx_array **ins, const char **names) {
  int n = 0;
  names[n] = "x";
  ins[n++] = k->ax;
  if (k->c.has_r) {
    names[n] = "r";
    ins[n++] = k->ar;
  }
  if (k->c.has_w) {
    names[n] = k->c.rms ? "w" : "g";
    ins[n++] = k->aw;
  }
  if (k->c.has_b) {
    names[n] = "b";
    ins[n++] = k->ab;
  }
  return n;
}

/* Finite differences (f32 only). */
static zmlx_status fd_case(const zmlx_check_opts *o, const norm_cfg *c, int64_t rows,
                           int64_t cols, uint64_t seed) {
  norm_case k;
  zmlx_status st = case_make(o, c, rows, cols, seed, 1, &k);
  char shape[96], what[64], base[32];
  case_shape(&k, shape, sizeof shape);
  if (st == ZMLX_OK) {
    zmlx_array *ins[4];
    const char *names[4];
    int n = case_inputs(&k, ins, names);
    zmlx_grad_check_report rep;
    const double tol = 1e-2;
    zmlx_status op = zmlx_check_grad(loss_fn, &k, ins, n, 1e-3, tol, &rep);
    for (int i = 0; i < n; i++) {
      snprintf(base, sizeof base, "grad %s (fd)", names[i]);
      variant_what(c, base, what, sizeof what);
      int pass = op == ZMLX_OK && rep.inputs[i].checked && rep.inputs[i].passed;
      double err = op == ZMLX_OK ? rep.inputs[i].max_abs_err : INFINITY;
      emit(o, c->name, what, shape, err, tol, pass);
    }
  }
  case_free(&k);
  return st;
}

/* Analytic gradients against the f64 reference (every dtype). */
static zmlx_status ref_grad_case(const zmlx_check_opts *o, const norm_cfg *c, int64_t rows,
                                 int64_t cols, uint64_t seed) {
  norm_case k;
  zmlx_status st = case_make(o, c, rows, cols, seed, 1, &k);
  char shape[96], what[64], base[32];
  case_shape(&k, shape, sizeof shape);
  int64_t n = rows * cols;
  double *h = malloc((size_t)n * sizeof *h + 1), *y = malloc((size_t)n * sizeof *y + 1);
  double *dx = malloc((size_t)n * sizeof *dx + 1);
  double *dw = malloc((size_t)cols * sizeof *dw + 1), *db = malloc((size_t)cols * sizeof *db + 1);
  if (st == ZMLX_OK && (!h || !y || !dx || !dw || !db))
    st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "norm check: out of host memory");
  if (st == ZMLX_OK) {
    zmlx_array *ins[4], *grads[4] = {0};
    const char *names[4];
    int ni = case_inputs(&k, ins, names);
    ref_forward(c, o->dtype, rows, cols, k.x, k.r, k.w, k.b, h, y);
    ref_backward(c, rows, cols, h, k.w, k.c1, k.c2, dx, c->has_w ? dw : NULL,
                 c->has_b ? db : NULL);
    zmlx_status op = zmlx_grad(loss_fn, &k, ins, ni, NULL, 0, grads);
    double tol = grad_tol(o->dtype);
    for (int i = 0; i < ni && st == ZMLX_OK; i++) {
      const double *want = dx;
      int64_t m = n;
      if ((c->has_w && i == (c->has_r ? 2 : 1))) want = dw, m = cols;
      if (c->has_b && i == ni - 1) want = db, m = cols;
      double err = INFINITY, *got = NULL;
      if (op == ZMLX_OK) st = download(grads[i], &got);
      if (op == ZMLX_OK && st == ZMLX_OK) err = max_err(got, want, m);
      free(got);
      snprintf(base, sizeof base, "grad %s", names[i]);
      variant_what(c, base, what, sizeof what);
      if (st == ZMLX_OK) emit(o, c->name, what, shape, err, tol, op == ZMLX_OK && err <= tol);
    }
    zmlx_ad_release_all(grads, 4);
  }
  free(h);
  free(y);
  free(dx);
  free(dw);
  free(db);
  case_free(&k);
  return st;
}

/* Bad input: a status and a message naming the problem. */
static void error_row(const zmlx_check_opts *o, const char *op, const char *what, zmlx_status got,
                      zmlx_status want, const char *needle) {
  const char *msg = zmlx_last_error();
  int pass = got == want && strstr(msg, needle) != NULL;
  emit(o, op, what, "bad input", pass ? 0.0 : 1.0, 0.0, pass);
  zmlx_clear_error();
}

static zmlx_status error_cases(const zmlx_check_opts *o, const norm_cfg *c0) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  norm_cfg c = *c0;
  zmlx_array *x = NULL, *r = NULL, *bad_r = NULL, *w = NULL, *bad_w = NULL, *scalar = NULL,
             *xi = NULL, *ri = NULL, *y = NULL, *h = NULL;
  int64_t shape[2] = {3, 8}, rshape[2] = {3, 9}, wshape[1] = {8}, bwshape[1] = {7};
  zmlx_status st = zmlx_array_full(dev, dt, 2, shape, 1.0, &x);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 2, shape, 0.5, &r);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 2, rshape, 0.5, &bad_r);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 1, wshape, 1.0, &w);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 1, bwshape, 1.0, &bad_w);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 0, NULL, 1.0, &scalar);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, ZMLX_I32, 2, shape, 1.0, &xi);
  if (st == ZMLX_OK) st = zmlx_array_full(dev, ZMLX_I32, 2, shape, 1.0, &ri);
  if (st == ZMLX_OK) {
    zmlx_array *rr = c.has_r ? r : NULL;
    c.has_w = 1;
    c.has_b = 0;
    error_row(o, c.name, "error: x rank 0",
              norm_call(&c, scalar, c.has_r ? scalar : NULL, w, NULL, NULL, NULL, &y, &h),
              ZMLX_ERR_SHAPE, "rank");
    error_row(o, c.name, "error: weight of the wrong length",
              norm_call(&c, x, rr, bad_w, NULL, NULL, NULL, &y, &h), ZMLX_ERR_SHAPE, "[7]");
    if (!c.rms)
      error_row(o, c.name, "error: bias of the wrong length",
                norm_call(&c, x, rr, w, bad_w, NULL, NULL, &y, &h), ZMLX_ERR_SHAPE, "bias");
    error_row(o, c.name, "error: x of dtype i32",
              norm_call(&c, xi, c.has_r ? ri : NULL, w, NULL, NULL, NULL, &y, &h), ZMLX_ERR_DTYPE,
              "i32");
    error_row(o, c.name, "error: weight of dtype i32",
              norm_call(&c, x, rr, ri, NULL, NULL, NULL, &y, &h), ZMLX_ERR_DTYPE, "i32");
    if (c.has_r) {
      error_row(o, c.name, "error: r of another shape",
                norm_call(&c, x, bad_r, w, NULL, NULL, NULL, &y, &h), ZMLX_ERR_SHAPE, "residual");
      error_row(o, c.name, "error: r NULL", norm_call(&c, x, NULL, w, NULL, NULL, NULL, &y, &h),
                ZMLX_ERR_NULL_ARG, "residual");
    }
    zmlx_array_release(y);
    zmlx_array_release(h);
  }
  zmlx_array *all[] = {x, r, bad_r, w, bad_w, scalar, xi, ri};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) zmlx_array_release(all[i]);
  return st;
}

/* Every case of one op: the weighted forms at every shape, the weightless
 * ones at a few, gradients, bad input. */
static zmlx_status check_family(const zmlx_check_opts *o, const norm_cfg *c0) {
  if (!o || !o->device) return zmlx_fail(ZMLX_ERR_NULL_ARG, "norm check: no device");
  if (!is_float16_32(o->dtype))
    return zmlx_fail(ZMLX_ERR_DTYPE, "norm check: dtype %s (f32, f16 or bf16)",
                     zmlx_dtype_name(o->dtype));
  static const int64_t quick_cols[] = {1, 7, 64, 1000, 4097};
  static const int64_t full_rows[][2] = {{2, 32768}, {256, 4096}, {37, 640}};
  uint64_t seed = o->seed ^ (uint64_t)(c0->rms * 2 + c0->has_r) * 0x51ED27ull;
  int idx = 0;
  norm_cfg c = *c0;
  c.eps = 1e-5f;
  c.has_w = 1;
  c.has_b = !c.rms;
  /* Weighted forward. */
  for (int rr = 0; rr < 2; rr++)
    for (size_t j = 0; j < sizeof quick_cols / sizeof quick_cols[0]; j++)
      ZMLX_CHECK(fwd_case(o, &c, rr ? 6 : 1, quick_cols[j], seed + (uint64_t)idx++));
  if (!o->quick)
    for (size_t j = 0; j < sizeof full_rows / sizeof full_rows[0]; j++)
      ZMLX_CHECK(fwd_case(o, &c, full_rows[j][0], full_rows[j][1], seed + (uint64_t)idx++));
  /* Without weights (and layernorm with g only). */
  norm_cfg nw = c;
  nw.has_w = nw.has_b = 0;
  ZMLX_CHECK(fwd_case(o, &nw, 5, 7, seed + (uint64_t)idx++));
  ZMLX_CHECK(fwd_case(o, &nw, 3, 4097, seed + (uint64_t)idx++));
  if (!o->quick) ZMLX_CHECK(fwd_case(o, &nw, 2, 32768, seed + (uint64_t)idx++));
  norm_cfg go = c;
  go.has_b = 0;
  if (!c.rms) ZMLX_CHECK(fwd_case(o, &go, 4, 1000, seed + (uint64_t)idx++));
  /* Gradients. */
  if (o->dtype == ZMLX_F32) {
    ZMLX_CHECK(fd_case(o, &c, 3, 7, seed + (uint64_t)idx++));
    ZMLX_CHECK(fd_case(o, &nw, 2, 9, seed + (uint64_t)idx++));
    if (!o->quick) ZMLX_CHECK(fd_case(o, &c, 2, 40, seed + (uint64_t)idx++));
  }
  ZMLX_CHECK(ref_grad_case(o, &c, 4, 64, seed + (uint64_t)idx++));
  ZMLX_CHECK(ref_grad_case(o, &c, 3, 1000, seed + (uint64_t)idx++));
  ZMLX_CHECK(ref_grad_case(o, &nw, 5, 33, seed + (uint64_t)idx++));
  if (!o->quick) {
    ZMLX_CHECK(ref_grad_case(o, &c, 2, 4097, seed + (uint64_t)idx++));
    ZMLX_CHECK(ref_grad_case(o, &c, 300, 256, seed + (uint64_t)idx++));
    ZMLX_CHECK(ref_grad_case(o, &c, 2, 32768, seed + (uint64_t)idx++));
  }
  return error_cases(o, &c);
}

static zmlx_status check_rmsnorm(const zmlx_check_opts *o) {
  norm_cfg c = {.name = "rmsnorm", .rms = 1};
  return check_family(o, &c);
}
static zmlx_status check_layernorm(const zmlx_check_opts *o) {
  norm_cfg c = {.name = "layernorm", .rms = 0};
  return check_family(o, &c);
}
static zmlx_status check_add_rmsnorm(const zmlx_check_opts *o) {
  norm_cfg c = {.name = "add_rmsnorm", .rms = 1, .has_r = 1};
  return check_family(o, &c);
}
static zmlx_status check_add_layernorm(const zmlx_check_opts *o) {
  norm_cfg c = {.name = "add_layernorm", .rms = 0, .has_r = 1};
  return check_family(o, &c);
}

extern const zmlx_catalog_op zmlx_catalog_norm_ops[];
const zmlx_catalog_op zmlx_catalog_norm_ops[] = {
    {"rmsnorm", check_rmsnorm},
    {"layernorm", check_layernorm},
    {"add_rmsnorm", check_add_rmsnorm},
    {"add_layernorm", check_add_layernorm},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef enum nb_kind { NB_RMS, NB_LAYER, NB_ADD_RMS, NB_ADD_LAYER } nb_kind;

typedef struct norm_bench {
  nb_kind kind;
  zmlx_array *x, *r, *w, *b;
} norm_bench;

static zmlx_status norm_bench_run(void *p) {
  norm_bench *c = p;
  zmlx_array *y = NULL, *h = NULL;
  zmlx_status st;
  switch (c->kind) {
    case NB_RMS: st = zmlx_rmsnorm(c->x, c->w, 1e-6, &y); break;
    case NB_LAYER: st = zmlx_layernorm(c->x, c->w, c->b, 1e-5, &y); break;
    case NB_ADD_RMS: st = zmlx_add_rmsnorm(c->x, c->r, c->w, 1e-6, &y, &h); break;
    default: st = zmlx_add_layernorm(c->x, c->r, c->w, c->b, 1e-5, &y, &h); break;
  }
  zmlx_array_release(y);
  zmlx_array_release(h);
  return st;
}

/* bf16 [16384, 4096] with bf16 weights: bytes = x (+ r) read, y (+ h) written,
 * weights read once. */
static zmlx_status norm_bench_case(const zmlx_bench_opts *o, const char *op, nb_kind kind) {
  int64_t shape[2] = {zmlx_bench_rows(o, 16384), 4096}, wl = shape[1];
  const int residual = kind == NB_ADD_RMS || kind == NB_ADD_LAYER;
  const int bias = kind == NB_LAYER || kind == NB_ADD_LAYER;
  norm_bench c = {kind, NULL, NULL, NULL, NULL};
  zmlx_status st = zmlx_bench_random(o->device, ZMLX_BF16, 2, shape, 21, &c.x);
  if (st == ZMLX_OK && residual) st = zmlx_bench_random(o->device, ZMLX_BF16, 2, shape, 22, &c.r);
  if (st == ZMLX_OK) st = zmlx_bench_random(o->device, ZMLX_BF16, 1, &wl, 23, &c.w);
  if (st == ZMLX_OK && bias) st = zmlx_bench_random(o->device, ZMLX_BF16, 1, &wl, 24, &c.b);
  double n = (double)shape[0] * (double)shape[1];
  double bytes = 2.0 * n * (residual ? 4 : 2) + 2.0 * (double)wl * (bias ? 2 : 1);
  if (st == ZMLX_OK)
    st = zmlx_bench_time_emit(o, op, ZMLX_BF16, 2, shape, bytes, norm_bench_run, &c);
  zmlx_array_release(c.x);
  zmlx_array_release(c.r);
  zmlx_array_release(c.w);
  zmlx_array_release(c.b);
  return st;
}

static zmlx_status bench_rmsnorm(const zmlx_bench_opts *o) {
  return norm_bench_case(o, "rmsnorm", NB_RMS);
}
static zmlx_status bench_layernorm(const zmlx_bench_opts *o) {
  return norm_bench_case(o, "layernorm", NB_LAYER);
}
static zmlx_status bench_add_rmsnorm(const zmlx_bench_opts *o) {
  return norm_bench_case(o, "add_rmsnorm", NB_ADD_RMS);
}
static zmlx_status bench_add_layernorm(const zmlx_bench_opts *o) {
  return norm_bench_case(o, "add_layernorm", NB_ADD_LAYER);
}

extern const zmlx_catalog_bench zmlx_catalog_norm_bench[];
const zmlx_catalog_bench zmlx_catalog_norm_bench[] = {
    {"rmsnorm", bench_rmsnorm},
    {"layernorm", bench_layernorm},
    {"add_rmsnorm", bench_add_rmsnorm},
    {"add_layernorm", bench_add_layernorm},
    {0},
};
