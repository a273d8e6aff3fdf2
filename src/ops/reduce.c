/* Reduction family over the last dim (issue 5): sum, mean, max, min, var,
 * std, argmax / argmin and top-k (k <= 64) values + indices, with their
 * gradients (checks and benchmarks: src/check/reduce_check.c). Kernels: src/ops/kernels/
 * reduce.zk (sum / mean / var / std), reduce_sel.zk (selection: top-k,
 * max / min, arg*) and reduce_bwd.zk (VJP / JVP helpers), each one
 * threadgroup per row with f32 accumulation. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "gen/patterns.h"
#include "kernel/kernel.h"
#include "ops/kernel_util.h"
#include "runtime/internal.h"
#include "ops/reduce.h"

extern const char zmlxi_res_reduce_zk[];
extern const char zmlxi_res_reduce_sel_zk[];
extern const char zmlxi_res_reduce_bwd_zk[];


/* ------------------------------------------------------------------ kernels */

enum { K_RED, K_SEL, K_BWD };

static const zmlx_kernel_spec SPECS[] = {
    [K_RED] = ZMLX_KSPEC("zmlx_reduce", zmlxi_res_reduce_zk, "x", "out",
                         "rows:i64, cols:i64, root:i64, denom:f32", .dense_inputs = 1),
    [K_SEL] = ZMLX_KSPEC("zmlx_reduce_select", zmlxi_res_reduce_sel_zk, "x", "vals, idx",
                         "rows:i64, cols:i64, k:i64, sgn:f32", .dense_inputs = 1),
    [K_BWD] = ZMLX_KSPEC("zmlx_reduce_bwd", zmlxi_res_reduce_bwd_zk, "x, g, aux, idx", "dx",
                         "rows:i64, cols:i64, k:i64, root:i64, denom:f32, scale:f32", .dense_inputs = 1),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("reduction", SPECS);

static const char *const KIND_NAMES[] = {"sum", "mean", "max", "min", "var", "std"};


/* 16-byte loads when every row starts 16-byte aligned (a strided x is made
 * dense, at offset 0, by the kernel object). 0: scalar loads. */
static int vec_width(const zmlx_array *x, int64_t cols) {
  const size_t es = zmlx_dtype_size(x->dtype);
  const int width = (int)(16 / es);
  const int aligned = !zmlx_array_is_contiguous(x) || ((size_t)x->offset * es) % 16 == 0;
  return cols % width == 0 && aligned ? width : 0;
}

static int64_t last_dim(const zmlx_array *x) { return x->shape[x->ndim - 1]; }
static int64_t row_count(const zmlx_array *x) { return x->size / last_dim(x); }

/* ------------------------------------------------------------------ validation */

static zmlx_status validate_x(const char *op, const zmlx_array *x, int want_index) {
  char s[96];
  if (!x) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: argument 'x' is NULL", op);
  if (!zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: x has dtype %s; supported: f32, f16, bf16", op,
                     zmlx_dtype_name(x->dtype));
  if (x->ndim < 1)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: x must have rank >= 1 (the reduction runs over the "
                     "last axis), got a scalar", op);
  if (last_dim(x) == 0)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: the last dimension of x %s is 0: nothing to reduce",
                     op, zmlxi_shape_str(s, sizeof s, x->ndim, x->shape));
  if (want_index && last_dim(x) > 0x7fffffff)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: the last dimension of x %s does not fit the i32 "
                     "indices", op, zmlxi_shape_str(s, sizeof s, x->ndim, x->shape));
  return ZMLX_OK;
}

static zmlx_status validate_k(const char *op, const zmlx_array *x, int k) {
  char s[96];
  if (k < 1 || k > TOPK_MAX)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: k = %d must be in 1..%d", op, k, TOPK_MAX);
  if (k > last_dim(x))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: k = %d is larger than the last dimension of x %s", op,
                     k, zmlxi_shape_str(s, sizeof s, x->ndim, x->shape));
  return ZMLX_OK;
}

/* Output shape: x's without its last axis, with it as `last` when keep. */
int zmlxi_reduce_out_shape(const zmlx_array *x, int keep, int64_t last, int64_t *shape) {
  for (int i = 0; i < x->ndim - 1; i++) shape[i] = x->shape[i];
  if (!keep) return x->ndim - 1;
  shape[x->ndim - 1] = last;
  return x->ndim;
}

/* ------------------------------------------------------------------ launches */

/* sum / mean / var / std of x into the dense out ([rows] elements). */
static zmlx_status red_forward_into(zmlx_array *x, zmlx_reduce_kind kind, int ddof,
                                    zmlx_array *out) {
  zmlx_kernel *k_red;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_RED, &k_red));
  const int64_t cols = last_dim(x), rows = row_count(x);
  if (rows == 0) return ZMLX_OK;
  /* sum and mean share a variant (MODE 0), var and std another (MODE 1) */
  const int mode = kind == ZMLX_REDUCE_VAR || kind == ZMLX_REDUCE_STD;
  const double denom = kind == ZMLX_REDUCE_SUM ? 1.0 : kind == ZMLX_REDUCE_MEAN ? (double)cols
                       : cols > ddof ? (double)(cols - ddof) : NAN;
  const int vec = vec_width(x, cols);
  zmlx_template_arg t[4] = {{"MODE", ZMLX_TEMPLATE_INT, ZMLX_F32, mode},
                            {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                            {"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32, zmlxi_ops_xdt(x->dtype)},
                            {"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32, zmlxi_ops_native_simd(x->buffer->device)}};
  double params[4] = {(double)rows, (double)cols, kind == ZMLX_REDUCE_STD ? 1.0 : 0.0, denom};
  zmlx_array *outs[1] = {out};
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &x, .outputs = outs,
                           .templates = t, .n_templates = 4, .params = params,
                           .device = x->buffer->device};
  zmlxi_ops_row_geometry(x->buffer->device, rows, vec ? cols / vec : cols, &call);
  return zmlx_kernel_launch(k_red, &call);
}

static int kcap_of(int k) {
  int c = 1;
  while (c < k) c *= 2;
  return c;
}

/* Threads per row of the selection kernel (a power of two), or 0 where the
 * warp path cannot run. NATIVE_SIMD (CUDA): whole warps, at least about 32
 * chunks (loads) per lane, fewer threads for longer lists (2 * KCAP
 * registers each; the merge costs k shuffle rounds per warp). Else (the
 * lists go through threadgroup memory: at most 2048 / KCAP threads) about
 * 1024 chunks per thread from 8 threads up: PoCL runs a group's work-items
 * in one CPU thread, where more lists only add merging (measured on PoCL,
 * 128 x 32000 bf16, k = 8: 2.8 ms at 8 threads, 3.3 at 32, 8.5 at 256). */
static int sel_threads(zmlx_device *dev, int native, int kcap, int64_t chunks) {
  zmlx_device_info info;
  int max_threads = 256;
  if (zmlx_device_get_info(dev, &info) == ZMLX_OK) max_threads = info.max_threads_per_threadgroup;
  int cap = native ? (kcap <= 16 ? 256 : kcap == 32 ? 128 : 64)
                   : (kcap <= 2 ? 1024 : 2048 / kcap);
  if (cap > 256 && kcap > 1) cap = 256;
  while (cap > max_threads && cap > 1) cap /= 2;
  /* chunks per thread to aim for; ZMLX_SEL_CHUNKS overrides it (a tuning
   * knob for bench sweeps) */
  const char *env = getenv("ZMLX_SEL_CHUNKS");
  const int64_t per = env && atoi(env) > 0 ? atoi(env) : native ? 32 : 1024;
  int t = native ? 32 : 8;
  if (t > cap) t = cap;
  while (t * 2 <= cap && (int64_t)t * 2 * per <= chunks) t *= 2;
  return native && t < 32 ? 0 : t;
}

/* Whether a k = 1 selection runs a warp per row (the kernel's WARP_ROWS):
 * where whole warps run (native) and a row is one warp's work (tg 32), 8
 * warps a group then take 8 rows at once instead of a group of one warp
 * each. ZMLX_SEL_WARP_ROWS=1 / 0 overrides SEL_WARP_ROWS, which stays 0
 * until the H100 has measured the two forms (max / min / argmax over
 * 16384 x 4096 bf16: 87 % of copy with a group per row). */
enum { SEL_WARP_ROWS = 0, SEL_WARP_ROWS_GROUP = 256 };
static int sel_warp_rows(int native, int kcap, int tg) {
  const char *env = getenv("ZMLX_SEL_WARP_ROWS");
  const int on = env && *env ? atoi(env) != 0 : SEL_WARP_ROWS;
  return on && native && kcap == 1 && tg == 32;
}

/* Top-k selection (min: of -x) into the dense vals ([rows, k], x's dtype)
 * and idx ([rows, k] i32). One variant per (KCAP, VEC, dtype, NATIVE_SIMD):
 * k and the direction are parameters, and both outputs are always written
 * (the values or indices an op does not return are k elements per row). */
static zmlx_status sel_forward_into(zmlx_array *x, int k, int is_min, zmlx_array *vals,
                                    zmlx_array *idx) {
  zmlx_kernel *k_sel;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_SEL, &k_sel));
  const int64_t cols = last_dim(x), rows = row_count(x);
  if (rows == 0) return ZMLX_OK;
  const int vec = vec_width(x, cols);
  const int kcap = kcap_of(k);
  const int64_t chunks = vec ? cols / vec : cols;
  /* ZMLX_SEL_NATIVE=1 runs the warp code where SIMD groups are emulated
   * (OpenCL: slowly, through threadgroup memory), so a CPU checks its logic */
  int native = zmlxi_ops_native_simd(x->buffer->device) || getenv("ZMLX_SEL_NATIVE");
  int tg = sel_threads(x->buffer->device, native, kcap, chunks);
  if (!tg) tg = sel_threads(x->buffer->device, native = 0, kcap, chunks);
  const int warp_rows = sel_warp_rows(native, kcap, tg);
  if (warp_rows) tg = SEL_WARP_ROWS_GROUP;
  zmlx_template_arg t[5] = {{"KCAP", ZMLX_TEMPLATE_INT, ZMLX_F32, kcap},
                            {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                            {"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32, zmlxi_ops_xdt(x->dtype)},
                            {"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32, native},
                            {"WARP_ROWS", ZMLX_TEMPLATE_BOOL, ZMLX_F32, warp_rows}};
  double params[4] = {(double)rows, (double)cols, (double)k, is_min ? -1.0 : 1.0};
  zmlx_array *outs[2] = {vals, idx};
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 2, .inputs = &x, .outputs = outs,
                           .templates = t, .n_templates = 5, .params = params,
                           .device = x->buffer->device};
  /* the kernel loops over rows with a stride of the group count (times the
   * rows a group takes at once) */
  const int64_t at_once = warp_rows ? tg / 32 : 1, need = (rows + at_once - 1) / at_once;
  const int64_t groups = need < 65536 ? need : 65536;
  call.grid[0] = groups * tg;
  call.grid[1] = call.grid[2] = 1;
  call.threadgroup[0] = tg;
  call.threadgroup[1] = call.threadgroup[2] = 1;
  return zmlx_kernel_launch(k_sel, &call);
}

/* Allocates (*vals unless vals is NULL: a scratch array) and *idx, [.., k]
 * of `nd`/`shape`, and runs the selection. */
static zmlx_status select_alloc(zmlx_array *x, int k, int is_min, int nd, const int64_t *shape,
                                zmlx_array **vals, zmlx_array **idx) {
  zmlx_array *v = NULL, *i = NULL;
  zmlx_status st = zmlxi_array_alloc(x->buffer->device, NULL, x->dtype, nd, shape, &v);
  if (st == ZMLX_OK) st = zmlxi_array_alloc(x->buffer->device, NULL, ZMLX_I32, nd, shape, &i);
  if (st == ZMLX_OK) st = sel_forward_into(x, k, is_min, v, i);
  if (st != ZMLX_OK || !vals) zmlx_array_release(v);
  if (st != ZMLX_OK || !idx) zmlx_array_release(i);
  if (st != ZMLX_OK) return st;
  if (vals) *vals = v;
  if (idx) *idx = i;
  return ZMLX_OK;
}

/* reduce_bwd.zk: out (allocated here) of `ndim`/`shape`, dtype dt. Mode 2
 * is std: kernel MODE 1 with root. */
static zmlx_status bwd_launch(int mode, zmlx_array *x, zmlx_array *g, zmlx_array *aux,
                              zmlx_array *idx, int64_t rows, int64_t cols, int64_t k, double denom,
                              double scale, zmlx_dtype dt, int ndim, const int64_t *shape,
                              zmlx_array **out) {
  zmlx_kernel *k_bwd;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_BWD, &k_bwd));
  zmlx_array *dx = NULL;
  ZMLX_CHECK(zmlxi_array_alloc(g->buffer->device, NULL, dt, ndim, shape, &dx));
  zmlx_status st = ZMLX_OK;
  if (rows > 0) {
    zmlx_array *in[4] = {x, g, aux ? aux : g, idx ? idx : g};
    zmlx_template_arg t[2] = {{"MODE", ZMLX_TEMPLATE_INT, ZMLX_F32, mode == 2 ? 1 : mode},
                              {"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32, zmlxi_ops_native_simd(g->buffer->device)}};
    double params[6] = {(double)rows, (double)cols, (double)k, mode == 2 ? 1.0 : 0.0, denom,
                        scale};
    zmlx_kernel_call call = {.n_inputs = 4, .n_outputs = 1, .inputs = in, .outputs = &dx,
                             .templates = t, .n_templates = 2, .params = params,
                             .device = g->buffer->device};
    zmlxi_ops_row_geometry(g->buffer->device, rows, mode == 4 ? k : cols, &call);
    st = zmlx_kernel_launch(k_bwd, &call);
  }
  if (st != ZMLX_OK) {
    zmlx_array_release(dx);
    return st;
  }
  *out = dx;
  return ZMLX_OK;
}

/* ------------------------------------------------------------------ autograd */

typedef struct red_ctx {
  zmlx_reduce_kind kind; /* SUM..STD; MAX also stands for top-k values */
  int ddof;
  int64_t k;        /* selected per row (1 for max / min) */
  zmlx_array *idx;  /* max / min / top-k: the selected indices [rows, k] */
} red_ctx;

static void red_ctx_free(void *p) {
  red_ctx *c = p;
  if (!c) return;
  zmlx_array_release(c->idx);
  free(c);
}

int zmlxi_reduce_is_select(zmlx_reduce_kind k) { return k == ZMLX_REDUCE_MAX || k == ZMLX_REDUCE_MIN; }

static double var_denom(int64_t cols, int ddof) {
  return cols > ddof ? (double)(cols - ddof) : NAN;
}

static zmlx_status red_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                           zmlx_array **grads) {
  if (!need[0]) return ZMLX_OK;
  const red_ctx *c = n->ctx;
  const zmlx_ad_meta *xm = &n->in_meta[0];
  const int64_t cols = xm->shape[xm->ndim - 1];
  int64_t size = 1;
  for (int i = 0; i < xm->ndim; i++) size *= xm->shape[i];
  const int64_t rows = size / cols;
  zmlx_array *g = cot[0];
  switch (c->kind) {
    case ZMLX_REDUCE_SUM:
    case ZMLX_REDUCE_MEAN:
      return bwd_launch(0, g, g, NULL, NULL, rows, cols, 1, 1.0,
                        c->kind == ZMLX_REDUCE_MEAN ? 1.0 / (double)cols : 1.0, xm->dtype,
                        xm->ndim, xm->shape, &grads[0]);
    case ZMLX_REDUCE_VAR:
    case ZMLX_REDUCE_STD:
      return bwd_launch(c->kind == ZMLX_REDUCE_VAR ? 1 : 2, n->in[0], g, n->out[0], NULL, rows,
                        cols, 1, var_denom(cols, c->ddof), 1.0, xm->dtype, xm->ndim, xm->shape,
                        &grads[0]);
    default:
      return bwd_launch(3, g, g, NULL, c->idx, rows, cols, c->k, 1.0, 1.0, xm->dtype, xm->ndim,
                        xm->shape, &grads[0]);
  }
}

static zmlx_status red_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out_tan) {
  if (!tan[0]) return ZMLX_OK;
  const red_ctx *c = n->ctx;
  const zmlx_ad_meta *xm = &n->in_meta[0], *ym = &n->out_meta[0];
  const int64_t cols = xm->shape[xm->ndim - 1];
  int64_t size = 1;
  for (int i = 0; i < xm->ndim; i++) size *= xm->shape[i];
  const int64_t rows = size / cols;
  zmlx_array *t = NULL, *y = NULL;
  ZMLX_CHECK(zmlxi_ad_cast(tan[0], xm->dtype, &t));
  zmlx_status st = ZMLX_OK;
  if (c->kind == ZMLX_REDUCE_SUM || c->kind == ZMLX_REDUCE_MEAN) {
    /* linear: the reduction of the tangent */
    st = zmlxi_array_alloc(xm->device, NULL, ym->dtype, ym->ndim, ym->shape, &y);
    if (st == ZMLX_OK) st = red_forward_into(t, c->kind, 0, y);
  } else if (c->kind == ZMLX_REDUCE_VAR || c->kind == ZMLX_REDUCE_STD) {
    /* <d out / d x, t> per row: the VJP with a cotangent of ones, times t,
     * summed over the row */
    zmlx_array *ones = NULL, *d = NULL, *p = NULL;
    st = zmlx_array_full(xm->device, ym->dtype, ym->ndim, ym->shape, 1.0, &ones);
    if (st == ZMLX_OK)
      st = bwd_launch(c->kind == ZMLX_REDUCE_VAR ? 1 : 2, n->in[0], ones, n->out[0], NULL, rows,
                      cols, 1, var_denom(cols, c->ddof), 1.0, xm->dtype, xm->ndim, xm->shape, &d);
    if (st == ZMLX_OK) st = zmlx_mul(d, t, &p);
    if (st == ZMLX_OK) st = zmlxi_array_alloc(xm->device, NULL, ym->dtype, ym->ndim, ym->shape, &y);
    if (st == ZMLX_OK) st = red_forward_into(p, ZMLX_REDUCE_SUM, 0, y);
    zmlx_array_release(ones);
    zmlx_array_release(d);
    zmlx_array_release(p);
  } else {
    /* gather of the tangent at the selected indices */
    st = bwd_launch(4, t, t, NULL, c->idx, rows, cols, c->k, 1.0, 1.0, ym->dtype, ym->ndim,
                    ym->shape, &y);
  }
  zmlx_array_release(t);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  out_tan[0] = y;
  return ZMLX_OK;
}

static const zmlx_ad_rule RED_RULE = {"reduction (last axis)", red_vjp, red_jvp, red_ctx_free};

static zmlx_status record(zmlx_array *x, zmlx_reduce_kind kind, int ddof, int64_t k,
                          zmlx_array *idx, zmlx_array *y) {
  red_ctx *c = malloc(sizeof *c);
  if (!c) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", KIND_NAMES[kind]);
  c->kind = kind;
  c->ddof = ddof;
  c->k = k;
  c->idx = idx;
  if (idx) zmlx_array_retain(idx);
  unsigned save = kind == ZMLX_REDUCE_VAR || kind == ZMLX_REDUCE_STD
                      ? ZMLX_AD_SAVE_INPUTS | ZMLX_AD_SAVE_OUTPUTS : 0;
  return zmlxi_ad_record(&RED_RULE, c, &x, 1, &y, 1, save);
}

/* ------------------------------------------------------------------ public API */

zmlx_status zmlx_reduce_last(zmlx_array *x, zmlx_reduce_kind kind, int ddof, int keepdims,
                             zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  if ((int)kind < 0 || kind > ZMLX_REDUCE_STD)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "reduce_last: kind %d is not a zmlx_reduce_kind "
                     "(sum, mean, max, min, var, std)", (int)kind);
  const char *op = KIND_NAMES[kind];
  ZMLX_CHECK(validate_x(op, x, 0));
  if (ddof < 0)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: ddof = %d must be >= 0", op, ddof);
  int64_t shape[ZMLX_MAX_DIMS];
  int nd = zmlxi_reduce_out_shape(x, keepdims, 1, shape);
  zmlx_array *y = NULL, *idx = NULL;
  const int rec = zmlxi_ad_should_record(&x, 1);
  zmlx_status st = ZMLX_OK;
  if (zmlxi_reduce_is_select(kind)) {
    st = select_alloc(x, 1, kind == ZMLX_REDUCE_MIN, nd, shape, &y, &idx);
  } else {
    st = zmlxi_array_alloc(x->buffer->device, NULL, x->dtype, nd, shape, &y);
    if (st == ZMLX_OK) st = red_forward_into(x, kind, ddof, y);
  }
  if (st == ZMLX_OK && rec) st = record(x, kind, ddof, 1, idx, y);
  zmlx_array_release(idx);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  *out = y;
  return ZMLX_OK;
}

static zmlx_status arg_last(const char *op, zmlx_array *x, int is_min, int keepdims,
                            zmlx_array **indices) {
  ZMLX_REQUIRE_ARG(indices);
  *indices = NULL;
  ZMLX_CHECK(validate_x(op, x, 1));
  int64_t shape[ZMLX_MAX_DIMS];
  int nd = zmlxi_reduce_out_shape(x, keepdims, 1, shape);
  return select_alloc(x, 1, is_min, nd, shape, NULL, indices);
}

zmlx_status zmlx_argmax_last(zmlx_array *x, int keepdims, zmlx_array **indices) {
  return arg_last("argmax", x, 0, keepdims, indices);
}

zmlx_status zmlx_argmin_last(zmlx_array *x, int keepdims, zmlx_array **indices) {
  return arg_last("argmin", x, 1, keepdims, indices);
}

zmlx_status zmlx_topk(zmlx_array *x, int k, zmlx_array **values, zmlx_array **indices) {
  if (!values && !indices)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "topk: values and indices are both NULL");
  if (values) *values = NULL;
  if (indices) *indices = NULL;
  ZMLX_CHECK(validate_x("topk", x, 1));
  ZMLX_CHECK(validate_k("topk", x, k));
  int64_t shape[ZMLX_MAX_DIMS];
  int nd = zmlxi_reduce_out_shape(x, 1, k, shape);
  zmlx_array *y = NULL, *idx = NULL;
  zmlx_status st = select_alloc(x, k, 0, nd, shape, &y, &idx);
  if (st == ZMLX_OK && zmlxi_ad_should_record(&x, 1)) st = record(x, ZMLX_REDUCE_MAX, 0, k, idx, y);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    zmlx_array_release(idx);
    return st;
  }
  if (values) *values = y;
  else zmlx_array_release(y);
  if (indices) *indices = idx;
  else zmlx_array_release(idx);
  return ZMLX_OK;
}
