/* Reduction family over the last dim (issue 5): sum, mean, max, min, var,
 * std, argmax / argmin and top-k (k <= 64) values + indices, with their
 * gradients, catalog checks and benchmarks. Kernels: src/ops/kernels/
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
#include "ops/catalog.h"
#include "ops/check_util.h"
#include "runtime/internal.h"

extern const char zmlx_res_reduce_zk[];
extern const char zmlx_res_reduce_sel_zk[];
extern const char zmlx_res_reduce_bwd_zk[];

#define TOPK_MAX 64

/* ------------------------------------------------------------------ kernels */

static zmlx_kernel *k_red, *k_sel, *k_bwd;
static zmlx_status k_status = ZMLX_OK;
static char k_error[1024];
static pthread_once_t k_once = PTHREAD_ONCE_INIT;

static void k_create(void) {
  static const char *const xin[] = {"x"}, *const rout[] = {"out"};
  static const char *const rpar[] = {"rows", "cols", "root", "denom"};
  static const zmlx_dtype rdt[] = {ZMLX_I64, ZMLX_I64, ZMLX_I64, ZMLX_F32};
  static const char *const sout[] = {"vals", "idx"};
  static const char *const spar[] = {"rows", "cols", "k", "sgn"};
  static const zmlx_dtype sdt[] = {ZMLX_I64, ZMLX_I64, ZMLX_I64, ZMLX_F32};
  static const char *const bin[] = {"x", "g", "aux", "idx"}, *const bout[] = {"dx"};
  static const char *const bpar[] = {"rows", "cols", "k", "root", "denom", "scale"};
  static const zmlx_dtype bdt[] = {ZMLX_I64, ZMLX_I64, ZMLX_I64, ZMLX_I64, ZMLX_F32, ZMLX_F32};
  k_status = zmlx_opck_kernel_from_zk("zmlx_reduce", zmlx_res_reduce_zk, xin, 1, rout, 1, rpar,
                                      rdt, 4, &k_red);
  if (k_status == ZMLX_OK)
    k_status = zmlx_opck_kernel_from_zk("zmlx_reduce_select", zmlx_res_reduce_sel_zk, xin, 1,
                                        sout, 2, spar, sdt, 4, &k_sel);
  if (k_status == ZMLX_OK)
    k_status = zmlx_opck_kernel_from_zk("zmlx_reduce_bwd", zmlx_res_reduce_bwd_zk, bin, 4, bout,
                                        1, bpar, bdt, 6, &k_bwd);
  if (k_status != ZMLX_OK) snprintf(k_error, sizeof k_error, "%s", zmlx_last_error());
}

static zmlx_status kernels(void) {
  pthread_once(&k_once, k_create);
  if (k_status != ZMLX_OK) return zmlx_fail(k_status, "reduction kernels: %s", k_error);
  return ZMLX_OK;
}

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
  if (!x) return zmlx_fail(ZMLX_ERR_NULL_ARG, "%s: argument 'x' is NULL", op);
  if (x->dtype != ZMLX_F32 && x->dtype != ZMLX_F16 && x->dtype != ZMLX_BF16)
    return zmlx_fail(ZMLX_ERR_DTYPE, "%s: x has dtype %s; supported: f32, f16, bf16", op,
                     zmlx_dtype_name(x->dtype));
  if (x->ndim < 1)
    return zmlx_fail(ZMLX_ERR_SHAPE, "%s: x must have rank >= 1 (the reduction runs over the "
                     "last axis), got a scalar", op);
  if (last_dim(x) == 0)
    return zmlx_fail(ZMLX_ERR_SHAPE, "%s: the last dimension of x %s is 0: nothing to reduce",
                     op, zmlx_shape_str(s, sizeof s, x->ndim, x->shape));
  if (want_index && last_dim(x) > 0x7fffffff)
    return zmlx_fail(ZMLX_ERR_SHAPE, "%s: the last dimension of x %s does not fit the i32 "
                     "indices", op, zmlx_shape_str(s, sizeof s, x->ndim, x->shape));
  return ZMLX_OK;
}

static zmlx_status validate_k(const char *op, const zmlx_array *x, int k) {
  char s[96];
  if (k < 1 || k > TOPK_MAX)
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "%s: k = %d must be in 1..%d", op, k, TOPK_MAX);
  if (k > last_dim(x))
    return zmlx_fail(ZMLX_ERR_SHAPE, "%s: k = %d is larger than the last dimension of x %s", op,
                     k, zmlx_shape_str(s, sizeof s, x->ndim, x->shape));
  return ZMLX_OK;
}

/* Output shape: x's without its last axis, with it as `last` when keep. */
static int out_shape(const zmlx_array *x, int keep, int64_t last, int64_t *shape) {
  for (int i = 0; i < x->ndim - 1; i++) shape[i] = x->shape[i];
  if (!keep) return x->ndim - 1;
  shape[x->ndim - 1] = last;
  return x->ndim;
}

/* ------------------------------------------------------------------ launches */

/* sum / mean / var / std of x into the dense out ([rows] elements). */
static zmlx_status red_forward_into(zmlx_array *x, zmlx_reduce_kind kind, int ddof,
                                    zmlx_array *out) {
  ZMLX_CHECK(kernels());
  const int64_t cols = last_dim(x), rows = row_count(x);
  if (rows == 0) return ZMLX_OK;
  /* sum and mean share a variant (MODE 0), var and std another (MODE 1) */
  const int mode = kind == ZMLX_REDUCE_VAR || kind == ZMLX_REDUCE_STD;
  const double denom = kind == ZMLX_REDUCE_SUM ? 1.0 : kind == ZMLX_REDUCE_MEAN ? (double)cols
                       : cols > ddof ? (double)(cols - ddof) : NAN;
  const int vec = vec_width(x, cols);
  zmlx_template_arg t[4] = {{"MODE", ZMLX_TEMPLATE_INT, ZMLX_F32, mode},
                            {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                            {"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32, zmlx_ops_xdt(x->dtype)},
                            {"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32, zmlx_ops_native_simd(x->buffer->device)}};
  double params[4] = {(double)rows, (double)cols, kind == ZMLX_REDUCE_STD ? 1.0 : 0.0, denom};
  zmlx_array *outs[1] = {out};
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &x, .outputs = outs,
                           .templates = t, .n_templates = 4, .params = params,
                           .device = x->buffer->device};
  zmlx_opck_row_geometry(x->buffer->device, rows, vec ? cols / vec : cols, &call);
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

/* Top-k selection (min: of -x) into the dense vals ([rows, k], x's dtype)
 * and idx ([rows, k] i32). One variant per (KCAP, VEC, dtype, NATIVE_SIMD):
 * k and the direction are parameters, and both outputs are always written
 * (the values or indices an op does not return are k elements per row). */
static zmlx_status sel_forward_into(zmlx_array *x, int k, int is_min, zmlx_array *vals,
                                    zmlx_array *idx) {
  ZMLX_CHECK(kernels());
  const int64_t cols = last_dim(x), rows = row_count(x);
  if (rows == 0) return ZMLX_OK;
  const int vec = vec_width(x, cols);
  const int kcap = kcap_of(k);
  const int64_t chunks = vec ? cols / vec : cols;
  int native = zmlx_ops_native_simd(x->buffer->device);
  int tg = sel_threads(x->buffer->device, native, kcap, chunks);
  if (!tg) tg = sel_threads(x->buffer->device, native = 0, kcap, chunks);
  zmlx_template_arg t[4] = {{"KCAP", ZMLX_TEMPLATE_INT, ZMLX_F32, kcap},
                            {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                            {"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32, zmlx_ops_xdt(x->dtype)},
                            {"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32, native}};
  double params[4] = {(double)rows, (double)cols, (double)k, is_min ? -1.0 : 1.0};
  zmlx_array *outs[2] = {vals, idx};
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 2, .inputs = &x, .outputs = outs,
                           .templates = t, .n_templates = 4, .params = params,
                           .device = x->buffer->device};
  /* the kernel loops over rows with a stride of the group count */
  const int64_t groups = rows < 65536 ? rows : 65536;
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
  zmlx_status st = zmlx_array_alloc(x->buffer->device, NULL, x->dtype, nd, shape, &v);
  if (st == ZMLX_OK) st = zmlx_array_alloc(x->buffer->device, NULL, ZMLX_I32, nd, shape, &i);
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
  ZMLX_CHECK(kernels());
  zmlx_array *dx = NULL;
  ZMLX_CHECK(zmlx_array_alloc(g->buffer->device, NULL, dt, ndim, shape, &dx));
  zmlx_status st = ZMLX_OK;
  if (rows > 0) {
    zmlx_array *in[4] = {x, g, aux ? aux : g, idx ? idx : g};
    zmlx_template_arg t[2] = {{"MODE", ZMLX_TEMPLATE_INT, ZMLX_F32, mode == 2 ? 1 : mode},
                              {"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32, zmlx_ops_native_simd(g->buffer->device)}};
    double params[6] = {(double)rows, (double)cols, (double)k, mode == 2 ? 1.0 : 0.0, denom,
                        scale};
    zmlx_kernel_call call = {.n_inputs = 4, .n_outputs = 1, .inputs = in, .outputs = &dx,
                             .templates = t, .n_templates = 2, .params = params,
                             .device = g->buffer->device};
    zmlx_opck_row_geometry(g->buffer->device, rows, mode == 4 ? k : cols, &call);
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

static int is_select(zmlx_reduce_kind k) { return k == ZMLX_REDUCE_MAX || k == ZMLX_REDUCE_MIN; }

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
  ZMLX_CHECK(zmlx_ad_cast(tan[0], xm->dtype, &t));
  zmlx_status st = ZMLX_OK;
  if (c->kind == ZMLX_REDUCE_SUM || c->kind == ZMLX_REDUCE_MEAN) {
    /* linear: the reduction of the tangent */
    st = zmlx_array_alloc(xm->device, NULL, ym->dtype, ym->ndim, ym->shape, &y);
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
    if (st == ZMLX_OK) st = zmlx_array_alloc(xm->device, NULL, ym->dtype, ym->ndim, ym->shape, &y);
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
  if (!c) return zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", KIND_NAMES[kind]);
  c->kind = kind;
  c->ddof = ddof;
  c->k = k;
  c->idx = idx;
  if (idx) zmlx_array_retain(idx);
  unsigned save = kind == ZMLX_REDUCE_VAR || kind == ZMLX_REDUCE_STD
                      ? ZMLX_AD_SAVE_INPUTS | ZMLX_AD_SAVE_OUTPUTS : 0;
  return zmlx_ad_record(&RED_RULE, c, &x, 1, &y, 1, save);
}

/* ------------------------------------------------------------------ public API */

zmlx_status zmlx_reduce_last(zmlx_array *x, zmlx_reduce_kind kind, int ddof, int keepdims,
                             zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  if ((int)kind < 0 || kind > ZMLX_REDUCE_STD)
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "reduce_last: kind %d is not a zmlx_reduce_kind "
                     "(sum, mean, max, min, var, std)", (int)kind);
  const char *op = KIND_NAMES[kind];
  ZMLX_CHECK(validate_x(op, x, 0));
  if (ddof < 0)
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "%s: ddof = %d must be >= 0", op, ddof);
  int64_t shape[ZMLX_MAX_DIMS];
  int nd = out_shape(x, keepdims, 1, shape);
  zmlx_array *y = NULL, *idx = NULL;
  const int rec = zmlx_ad_should_record(&x, 1);
  zmlx_status st = ZMLX_OK;
  if (is_select(kind)) {
    st = select_alloc(x, 1, kind == ZMLX_REDUCE_MIN, nd, shape, &y, &idx);
  } else {
    st = zmlx_array_alloc(x->buffer->device, NULL, x->dtype, nd, shape, &y);
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
  int nd = out_shape(x, keepdims, 1, shape);
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
    return zmlx_fail(ZMLX_ERR_NULL_ARG, "topk: values and indices are both NULL");
  if (values) *values = NULL;
  if (indices) *indices = NULL;
  ZMLX_CHECK(validate_x("topk", x, 1));
  ZMLX_CHECK(validate_k("topk", x, k));
  int64_t shape[ZMLX_MAX_DIMS];
  int nd = out_shape(x, 1, k, shape);
  zmlx_array *y = NULL, *idx = NULL;
  zmlx_status st = select_alloc(x, k, 0, nd, shape, &y, &idx);
  if (st == ZMLX_OK && zmlx_ad_should_record(&x, 1)) st = record(x, ZMLX_REDUCE_MAX, 0, k, idx, y);
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

/* ================================================================ checks */

/* The check's ops: the six kinds, then argmax, argmin, topk. */
enum { OP_ARGMAX = 6, OP_ARGMIN = 7, OP_TOPK = 8 };
static const char *const OP_NAMES[] = {"sum", "mean", "max", "min", "var", "std",
                                       "argmax", "argmin", "topk"};

/* The kernels' order: (a, ia) before (b, ib)? NaN above every number. */
static int ref_better(double a, int64_t ia, double b, int64_t ib) {
  if (isnan(a) || isnan(b)) {
    if (isnan(a) && isnan(b)) return ia < ib;
    return isnan(a);
  }
  return a > b || (a == b && ia < ib);
}

/* f64 reference of one row: out[0..nout) values, idx[0..nout) indices
 * (selection ops). param: ddof or k. */
static void ref_row(int op, const double *x, int64_t cols, int param, double *out, int64_t *idx) {
  if (op == ZMLX_REDUCE_SUM || op == ZMLX_REDUCE_MEAN || op == ZMLX_REDUCE_VAR ||
      op == ZMLX_REDUCE_STD) {
    double s = 0;
    for (int64_t j = 0; j < cols; j++) s += x[j];
    double m = s / (double)cols;
    if (op == ZMLX_REDUCE_SUM) out[0] = s;
    else if (op == ZMLX_REDUCE_MEAN) out[0] = m;
    else {
      double q = 0;
      for (int64_t j = 0; j < cols; j++) q += (x[j] - m) * (x[j] - m);
      double v = cols > param ? q / (double)(cols - param) : NAN;
      out[0] = op == ZMLX_REDUCE_VAR ? v : sqrt(v);
    }
    return;
  }
  const int neg = op == ZMLX_REDUCE_MIN || op == OP_ARGMIN;
  const int k = op == OP_TOPK ? param : 1;
  double kv[TOPK_MAX];
  int64_t ki[TOPK_MAX];
  int n = 0;
  for (int64_t j = 0; j < cols; j++) {
    double v = neg ? -x[j] : x[j];
    if (n == k && !ref_better(v, j, kv[k - 1], ki[k - 1])) continue;
    int p = n < k ? n++ : k - 1;
    while (p > 0 && ref_better(v, j, kv[p - 1], ki[p - 1])) {
      kv[p] = kv[p - 1];
      ki[p] = ki[p - 1];
      p--;
    }
    kv[p] = v;
    ki[p] = j;
  }
  for (int i = 0; i < k; i++) {
    out[i] = neg ? -kv[i] : kv[i];
    idx[i] = ki[i];
  }
}

/* f64 VJP reference of one row: dx[0..cols) from the cotangent g (1 or k
 * values) and the reference's out / idx. */
static void ref_vjp_row(int op, const double *x, int64_t cols, int param, const double *out,
                        const int64_t *idx, const double *g, double *dx) {
  double s = 0;
  for (int64_t j = 0; j < cols; j++) s += x[j];
  const double m = s / (double)cols, den = (double)(cols - param);
  for (int64_t j = 0; j < cols; j++) {
    switch (op) {
      case ZMLX_REDUCE_SUM: dx[j] = g[0]; break;
      case ZMLX_REDUCE_MEAN: dx[j] = g[0] / (double)cols; break;
      case ZMLX_REDUCE_VAR: dx[j] = g[0] * 2 * (x[j] - m) / den; break;
      case ZMLX_REDUCE_STD: dx[j] = out[0] > 0 ? g[0] * (x[j] - m) / (den * out[0]) : 0; break;
      default: dx[j] = 0; break;
    }
  }
  if (op == ZMLX_REDUCE_MAX || op == ZMLX_REDUCE_MIN || op == OP_TOPK) {
    int k = op == OP_TOPK ? param : 1;
    for (int i = 0; i < k; i++) dx[idx[i]] = g[i];
  }
}

static int op_is_index(int op) { return op == OP_ARGMAX || op == OP_ARGMIN; }
static int op_nout(int op, int param) { return op == OP_TOPK ? param : 1; }

/* The op as a function of x (fn data: op, param, keepdims, and w for the
 * scalar loss sum(op(x) * w), else NULL). */
typedef struct red_fn_data {
  int op, param, keepdims;
  zmlx_array *w;
} red_fn_data;

static zmlx_status run_op(int op, zmlx_array *x, int param, int keepdims, zmlx_array **vals,
                          zmlx_array **idx) {
  switch (op) {
    case OP_ARGMAX: return zmlx_argmax_last(x, keepdims, idx);
    case OP_ARGMIN: return zmlx_argmin_last(x, keepdims, idx);
    case OP_TOPK: return zmlx_topk(x, param, vals, idx);
    default: return zmlx_reduce_last(x, (zmlx_reduce_kind)op, param, keepdims, vals);
  }
}

static zmlx_status red_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  red_fn_data *d = ud;
  zmlx_array *y = NULL;
  ZMLX_CHECK(run_op(d->op, in[0], d->param, d->keepdims, &y, NULL));
  if (!d->w) {
    *out = y;
    return ZMLX_OK;
  }
  zmlx_status st = zmlx_opck_weighted_sum(y, d->w, out);
  zmlx_array_release(y);
  return st;
}

/* Host copy of an i32 array. */
static zmlx_status download_i32(zmlx_array *a, int32_t **v) {
  int32_t *d = malloc(sizeof(int32_t) * (size_t)(a->size > 0 ? a->size : 1));
  if (!d) return zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlx_status st = zmlx_array_to_host(a, d, sizeof(int32_t) * (size_t)a->size);
  if (st != ZMLX_OK) {
    free(d);
    return st;
  }
  *v = d;
  return ZMLX_OK;
}

typedef enum { IN_RANDOM, IN_OFFSET, IN_DISTINCT, IN_NAN } in_kind;

typedef struct red_case {
  int ndim;
  int64_t shape[4];
  int param;      /* ddof (var / std) or k (topk) */
  int keepdims;
  in_kind input;
  int strided;    /* x is a transposed view */
  int mode;       /* 0: forward; 1: VJP vs the reference; 2: finite differences (f32) */
} red_case;

/* Fills xv (size n, dtype dt) by the case's input kind. */
static void make_input(zmlx_dtype dt, in_kind kind, int64_t n, int64_t cols, uint64_t *rng,
                       double *xv) {
  if (kind == IN_DISTINCT) {
    /* a permutation of well separated values: no ties, no kink within eps */
    for (int64_t i = 0; i < n; i++) xv[i] = (double)i;
    for (int64_t i = n - 1; i > 0; i--) {
      int64_t j = (int64_t)(zmlx_rg_uniform(rng) * (double)(i + 1));
      if (j > i) j = i;
      double t = xv[i];
      xv[i] = xv[j];
      xv[j] = t;
    }
    for (int64_t i = 0; i < n; i++) xv[i] = zmlx_rg_round(dt, (xv[i] - (double)n / 2) * 0.0625);
    return;
  }
  const double off = kind == IN_OFFSET ? 1000.0 : 0.0;
  for (int64_t i = 0; i < n; i++) xv[i] = zmlx_rg_round(dt, off + 8 * zmlx_rg_uniform(rng) - 4);
  if (kind == IN_NAN && n > 3) {
    /* NaNs in some rows (ranked above every number), -inf in others: the
     * first row all -inf, the last starting with one */
    xv[n / 3] = NAN;
    xv[n - 2] = NAN;
    for (int64_t j = 0; j < cols && j < n; j++) xv[j] = -INFINITY;
    xv[n - cols] = -INFINITY;
  }
}

static void case_name(const red_case *c, int op, char *buf, size_t cap) {
  char s[64];
  zmlx_shape_str(s, sizeof s, c->ndim, c->shape);
  const char *in = c->input == IN_OFFSET ? " offset 1000" : c->input == IN_NAN ? " nan/-inf"
                   : c->input == IN_DISTINCT ? " distinct" : "";
  char p[24] = "";
  if (op == ZMLX_REDUCE_VAR || op == ZMLX_REDUCE_STD) snprintf(p, sizeof p, " ddof %d", c->param);
  if (op == OP_TOPK) snprintf(p, sizeof p, " k %d", c->param);
  snprintf(buf, cap, "%s%s%s%s%s", s, p, c->keepdims ? " keepdims" : "", in,
           c->strided ? " strided" : "");
}

static void red_case_run(const zmlx_check_opts *o, int op, const red_case *c, uint64_t *rng) {
  zmlx_device *dev = o->device;
  const zmlx_dtype dt = c->mode == 2 ? ZMLX_F32 : o->dtype;
  const char *opn = OP_NAMES[op];
  const char *what = c->mode == 0 ? "fwd" : c->mode == 1 ? "grad (vjp)" : "grad (fd)";
  char name[96];
  case_name(c, op, name, sizeof name);
  int64_t size = 1;
  for (int i = 0; i < c->ndim; i++) size *= c->shape[i];
  const int64_t cols = c->shape[c->ndim - 1], rows = size / cols;
  const int nout = op_nout(op, c->param);
  const int64_t no = rows * nout;
  double *xv = malloc(sizeof(double) * (size_t)size), *want = malloc(sizeof(double) * (size_t)no);
  int64_t *wi = malloc(sizeof(int64_t) * (size_t)no);
  double *gv = malloc(sizeof(double) * (size_t)no), *dw = malloc(sizeof(double) * (size_t)size);
  double *got = NULL;
  int32_t *gi = NULL;
  zmlx_array *xs = NULL, *x = NULL, *y = NULL, *yi = NULL, *g = NULL, *vout = NULL, *dx = NULL;
  zmlx_status st = ZMLX_OK;
  if (!xv || !want || !wi || !gv || !dw) {
    st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  make_input(dt, c->input, size, cols, rng, xv);
  for (int64_t r = 0; r < rows; r++)
    ref_row(op, xv + r * cols, cols, c->param, want + r * nout, wi + r * nout);
  if (c->strided) {
    /* upload the transpose [.., cols, rows'] and view it back: x is strided */
    int64_t ts[2] = {cols, rows};
    double *tv = malloc(sizeof(double) * (size_t)size);
    if (!tv) {
      st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
      goto done;
    }
    for (int64_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < cols; j++) tv[j * rows + r] = xv[r * cols + j];
    st = zmlx_rg_upload(dev, dt, 2, ts, tv, &xs);
    free(tv);
    const int perm[2] = {1, 0};
    if (st == ZMLX_OK) st = zmlx_array_transpose(xs, perm, &x);
  } else {
    st = zmlx_rg_upload(dev, dt, c->ndim, c->shape, xv, &x);
  }
  if (st != ZMLX_OK) goto done;
  int64_t oshape[ZMLX_MAX_DIMS];
  const int ond = out_shape(x, op == OP_TOPK || c->keepdims, nout, oshape);
  const double tol = zmlx_rg_tol(dt);

  if (c->mode == 0) {
    /* forward into poisoned outputs (the op allocates: poison the pool) */
    zmlx_rg_poison_pool(dev, dt, ond, oshape);
    zmlx_rg_poison_pool(dev, ZMLX_F32, ond, oshape); /* i32 indices: NaN bits */
    st = run_op(op, x, c->param, c->keepdims, op_is_index(op) ? NULL : &y,
                op_is_index(op) || op == OP_TOPK ? &yi : NULL);
    if (st == ZMLX_OK && y) st = zmlx_rg_download(y, &got);
    if (st == ZMLX_OK && yi) st = download_i32(yi, &gi);
    if (st != ZMLX_OK) goto done;
    if (op <= ZMLX_REDUCE_STD && !is_select((zmlx_reduce_kind)op)) {
      double e = 0;
      for (int64_t i = 0; i < no; i++) {
        double d = isnan(want[i]) ? (isnan(got[i]) ? 0 : INFINITY)
                                  : fabs(got[i] - want[i]) / (1 + fabs(want[i]));
        if (!(d <= e)) e = d;
      }
      zmlx_rg_emit(o, opn, what, dt, name, e, tol, e <= tol);
    } else {
      /* selection is exact: values (ties and NaN included) and indices must
       * match the reference's order; the error is the mismatch count */
      int64_t bad = 0;
      for (int64_t i = 0; i < no; i++) {
        if (got) {
          int same = isnan(want[i]) ? isnan(got[i]) : got[i] == want[i];
          bad += !same;
        }
        if (gi) bad += (int64_t)gi[i] != wi[i];
      }
      zmlx_rg_emit(o, opn, what, dt, name, (double)bad, 0, bad == 0);
    }
  } else if (c->mode == 1) {
    st = zmlx_rg_random(dev, dt, ond, oshape, -1, 1, rng, gv, &g);
    if (st != ZMLX_OK) goto done;
    red_fn_data fd = {op, c->param, c->keepdims, NULL};
    int argn = 0;
    st = zmlx_vjp(red_fn, &fd, &x, 1, &argn, 1, g, &vout, &dx);
    if (st == ZMLX_OK) st = zmlx_rg_download(dx, &got);
    if (st != ZMLX_OK) goto done;
    for (int64_t r = 0; r < rows; r++)
      ref_vjp_row(op, xv + r * cols, cols, c->param, want + r * nout, wi + r * nout,
                  gv + r * nout, dw + r * cols);
    double e = zmlx_rg_err(got, dw, size);
    /* var / std: the device starts from its rounded output and mean */
    double vt = op == ZMLX_REDUCE_VAR || op == ZMLX_REDUCE_STD ? 2 * tol : tol;
    zmlx_rg_emit(o, opn, what, dt, name, e, vt, e <= vt);
  } else {
    st = zmlx_rg_random(dev, ZMLX_F32, ond, oshape, -1, 1, rng, gv, &g);
    if (st != ZMLX_OK) goto done;
    red_fn_data fd = {op, c->param, c->keepdims, g};
    zmlx_grad_check_report rep;
    st = zmlx_check_grad(red_fn, &fd, &x, 1, 1e-3, 1e-2, &rep);
    if (st != ZMLX_OK) goto done;
    double e = rep.inputs[0].max_abs_err;
    if (rep.jvp_checked) e = fmax(e, rep.jvp_abs_err);
    char nm[112];
    snprintf(nm, sizeof nm, "%s%s", name, rep.jvp_checked ? " +jvp" : "");
    zmlx_rg_emit(o, opn, what, dt, nm, e, 1e-2, rep.passed);
  }
done:
  if (st != ZMLX_OK) zmlx_rg_emit_fail(o, opn, what, dt, name, st);
  free(xv);
  free(want);
  free(wi);
  free(gv);
  free(dw);
  free(got);
  free(gi);
  zmlx_array_release(xs);
  zmlx_array_release(x);
  zmlx_array_release(y);
  zmlx_array_release(yi);
  zmlx_array_release(g);
  zmlx_array_release(vout);
  zmlx_array_release(dx);
  zmlx_clear_error();
}

static void red_bad(const zmlx_check_opts *o, int op) {
  zmlx_device *dev = o->device;
  const char *opn = OP_NAMES[op];
  zmlx_array *a = NULL, *ai = NULL, *s = NULL, *e = NULL, *y = NULL, *yi = NULL;
  int64_t sa[2] = {3, 5}, se[2] = {3, 0};
  if (zmlx_array_zeros(dev, o->dtype, 2, sa, &a) || zmlx_array_zeros(dev, ZMLX_I32, 2, sa, &ai) ||
      zmlx_array_zeros(dev, o->dtype, 0, NULL, &s) ||
      zmlx_array_zeros(dev, o->dtype, 2, se, &e)) {
    zmlx_rg_emit_fail(o, opn, "bad input", o->dtype, "setup", ZMLX_ERR_BACKEND);
    goto done;
  }
  const int p = op == OP_TOPK ? 2 : 0;
#define EXPECT(what, call, want, needle)                                  \
  do {                                                                    \
    zmlx_status st_ = (call);                                             \
    zmlx_array_release(yi);                                               \
    yi = NULL;                                                            \
    zmlx_rg_expect(o, opn, what, st_, y, want, needle);                   \
    y = NULL;                                                             \
  } while (0)
  EXPECT("bad: NULL x", run_op(op, NULL, p, 0, &y, &yi), ZMLX_ERR_NULL_ARG, "'x'");
  EXPECT("bad: dtype i32", run_op(op, ai, p, 0, &y, &yi), ZMLX_ERR_DTYPE, "i32");
  EXPECT("bad: scalar x", run_op(op, s, p, 0, &y, &yi), ZMLX_ERR_SHAPE, "rank");
  EXPECT("bad: last dim 0", run_op(op, e, p, 0, &y, &yi), ZMLX_ERR_SHAPE, "[3, 0]");
  if (op == OP_TOPK) {
    EXPECT("bad: k = 65", run_op(op, a, 65, 0, &y, &yi), ZMLX_ERR_INVALID_ARG, "k = 65");
    EXPECT("bad: k = 0", run_op(op, a, 0, 0, &y, &yi), ZMLX_ERR_INVALID_ARG, "k = 0");
    EXPECT("bad: k > last dim", run_op(op, a, 6, 0, &y, &yi), ZMLX_ERR_SHAPE, "k = 6");
    EXPECT("bad: no outputs", zmlx_topk(a, 2, NULL, NULL), ZMLX_ERR_NULL_ARG, "NULL");
  }
  if (op == ZMLX_REDUCE_VAR || op == ZMLX_REDUCE_STD)
    EXPECT("bad: ddof -1", run_op(op, a, -1, 0, &y, &yi), ZMLX_ERR_INVALID_ARG, "ddof");
  if (op == ZMLX_REDUCE_SUM)
    EXPECT("bad: kind 9", zmlx_reduce_last(a, (zmlx_reduce_kind)9, 0, 0, &y),
           ZMLX_ERR_INVALID_ARG, "kind 9");
#undef EXPECT
done:
  zmlx_array_release(a);
  zmlx_array_release(ai);
  zmlx_array_release(s);
  zmlx_array_release(e);
}

static const int64_t QUICK_COLS[] = {1, 7, 64, 1000, 4097};
static const int64_t FULL_COLS[] = {1, 7, 64, 1000, 4097, 32768};

static zmlx_status red_check_op(const zmlx_check_opts *o, int op) {
  ZMLX_REQUIRE_ARG(o);
  ZMLX_REQUIRE_ARG(o->device);
  uint64_t rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x726564ULL + (uint64_t)op * 7919u;
  if (!rng) rng = 1;
  const int isvar = op == ZMLX_REDUCE_VAR || op == ZMLX_REDUCE_STD;
  const int64_t *cols = o->quick ? QUICK_COLS : FULL_COLS;
  const int ncols = o->quick ? 5 : 6;
  const int64_t rows_list[] = {1, 5};
  for (int ri = 0; ri < 2; ri++)
    for (int ci = 0; ci < ncols; ci++) {
      const int64_t cc = cols[ci];
      int param = 0;
      if (isvar) param = cc > 1 ? (ci + ri) % 2 : 0;
      if (op == OP_TOPK) {
        static const int ks[] = {1, 5, 64, 8}; /* KCAP 1, 8, 64 */
        param = ks[(ci + ri) % 4];
        if (param > cc) param = (int)cc;
      }
      red_case c = {2, {rows_list[ri], cc}, param, 0, IN_RANDOM, 0, 0};
      red_case_run(o, op, &c, &rng);
    }
  /* rank 3 with keepdims; a strided view; numerically hard var / NaN input */
  red_case c3 = {3, {2, 3, 9}, op == OP_TOPK ? 6 : isvar ? 1 : 0, 1, IN_RANDOM, 0, 0};
  red_case_run(o, op, &c3, &rng);
  red_case cs = {2, {5, 7}, op == OP_TOPK ? 5 : 0, 0, IN_RANDOM, 1, 0};
  red_case_run(o, op, &cs, &rng);
  if (isvar) {
    red_case cv = {2, {3, o->quick ? 1000 : 4097}, 1, 0, IN_OFFSET, 0, 0};
    red_case_run(o, op, &cv, &rng);
  }
  if (op == ZMLX_REDUCE_MAX || op == ZMLX_REDUCE_MIN || op_is_index(op) || op == OP_TOPK) {
    red_case cn = {2, {3, 37}, op == OP_TOPK ? 5 : 0, 0, IN_NAN, 0, 0};
    red_case_run(o, op, &cn, &rng);
  }
  if (!op_is_index(op)) {
    /* VJP against the f64 reference (ties allowed: both pick the first) */
    red_case v1 = {2, {5, 7}, op == OP_TOPK ? 7 : isvar ? 1 : 0, 0, IN_RANDOM, 0, 1};
    red_case_run(o, op, &v1, &rng);
    red_case v2 = {3, {2, 3, o->quick ? 1000 : 4097}, op == OP_TOPK ? 8 : 0, 1, IN_RANDOM, 0, 1};
    red_case_run(o, op, &v2, &rng);
    if (o->dtype == ZMLX_F32) {
      red_case fd = {3, {2, 3, 7}, op == OP_TOPK ? 5 : isvar ? 1 : 0, 0, IN_DISTINCT, 0, 2};
      red_case_run(o, op, &fd, &rng);
    }
  }
  red_bad(o, op);
  return ZMLX_OK;
}

static zmlx_status check_sum(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_SUM); }
static zmlx_status check_mean(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_MEAN); }
static zmlx_status check_max(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_MAX); }
static zmlx_status check_min(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_MIN); }
static zmlx_status check_var(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_VAR); }
static zmlx_status check_std(const zmlx_check_opts *o) { return red_check_op(o, ZMLX_REDUCE_STD); }
static zmlx_status check_argmax(const zmlx_check_opts *o) {
  ZMLX_CHECK(red_check_op(o, OP_ARGMAX));
  return red_check_op(o, OP_ARGMIN);
}
static zmlx_status check_topk(const zmlx_check_opts *o) { return red_check_op(o, OP_TOPK); }

const zmlx_catalog_op zmlx_catalog_reduce_ops[] = {
    {"sum", check_sum},   {"mean", check_mean},     {"max", check_max},
    {"min", check_min},   {"var", check_var},       {"std", check_std},
    {"argmax", check_argmax}, {"topk", check_topk}, {0},
};

/* ================================================================ benchmarks */

typedef struct red_bench {
  int op, param;
  zmlx_array *x;
} red_bench;

static zmlx_status red_bench_run(void *p) {
  red_bench *b = p;
  zmlx_array *y = NULL, *yi = NULL;
  zmlx_status st = run_op(b->op, b->x, b->param, 0, op_is_index(b->op) ? NULL : &y,
                          op_is_index(b->op) || b->op == OP_TOPK ? &yi : NULL);
  zmlx_array_release(y);
  zmlx_array_release(yi);
  return st;
}

/* bf16 [rows, cols]; bytes = x read + values (bf16) and / or indices (i32)
 * written. */
static zmlx_status red_bench_case(const zmlx_bench_opts *o, int op, int param, int64_t rows,
                                  int64_t cols) {
  int64_t shape[2] = {zmlx_bench_rows(o, rows), cols};
  red_bench b = {op, param, NULL};
  zmlx_status st = zmlx_bench_random(o->device, ZMLX_BF16, 2, shape, 31 + (uint64_t)op, &b.x);
  const double n = (double)shape[0] * (double)shape[1];
  const double nout = (double)shape[0] * op_nout(op, param);
  double bytes = 2.0 * n + (op_is_index(op) ? 4.0 : op == OP_TOPK ? 6.0 : 2.0) * nout;
  if (st == ZMLX_OK)
    st = zmlx_bench_time_emit(o, OP_NAMES[op], ZMLX_BF16, 2, shape, bytes, red_bench_run, &b);
  zmlx_array_release(b.x);
  return st;
}

static zmlx_status bench_sum(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_SUM, 0, 16384, 4096);
}
static zmlx_status bench_mean(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_MEAN, 0, 16384, 4096);
}
static zmlx_status bench_max(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_MAX, 0, 16384, 4096);
}
static zmlx_status bench_min(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_MIN, 0, 16384, 4096);
}
static zmlx_status bench_var(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_VAR, 0, 16384, 4096);
}
static zmlx_status bench_std(const zmlx_bench_opts *o) {
  return red_bench_case(o, ZMLX_REDUCE_STD, 0, 16384, 4096);
}
static zmlx_status bench_argmax(const zmlx_bench_opts *o) {
  ZMLX_CHECK(red_bench_case(o, OP_ARGMAX, 0, 16384, 4096));
  return red_bench_case(o, OP_ARGMAX, 0, 8192, 128256); /* greedy sampling */
}
static zmlx_status bench_topk(const zmlx_bench_opts *o) {
  /* a sampler's top-k = 8 over the vocabulary */
  ZMLX_CHECK(red_bench_case(o, OP_TOPK, 8, 8192, 32000));
  return red_bench_case(o, OP_TOPK, 8, 8192, 128256);
}

const zmlx_catalog_bench zmlx_catalog_reduce_bench[] = {
    {"sum", bench_sum},   {"mean", bench_mean},     {"max", bench_max},
    {"min", bench_min},   {"var", bench_var},       {"std", bench_std},
    {"argmax", bench_argmax}, {"topk", bench_topk}, {0},
};
