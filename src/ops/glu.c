/* GLU family (issue 5): swiglu, geglu (two inputs, or one split in halves),
 * bias fusions (bias+gelu, bias+silu, bias+swiglu) — elementwise
 * expression ops through zmlx_apply_expr (vector loads, engine-derived VJP
 * and JVP, any order), halves taken as strided views with zmlx_slice.
 *
 * The split forms (swiglu_split, geglu_split, bias_swiglu) have a fast path
 * outside autograd: the engine sees the halves as strided views and falls
 * back to scalar index math (43% of the copy bandwidth on an H100), so a
 * dialect kernel (kernels/glu_split.zk) reads x's rows in 16-byte chunks
 * when they allow it (see split_fast_ok). While recording for autograd the
 * engine path runs, which brings the VJP / JVP of every order with it. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "gen/patterns.h"
#include "kernel/kernel.h"
#include "ops/kernel_util.h"
#include "ops/glu.h"

extern const char zmlxi_res_glu_split_zk[];

/* ------------------------------------------------------------ validation */

static zmlx_status check_float(const char *op, const char *name, const zmlx_array *a) {
  if (!a) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: argument '%s' is NULL", op, name);
  if (!zmlxi_dtype_is_f32_f16_bf16(a->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: %s has dtype %s; supported: f32, f16, bf16", op, name,
                     zmlx_dtype_name(a->dtype));
  if (a->ndim < 1)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: %s must have rank >= 1, got a scalar", op, name);
  return ZMLX_OK;
}

static zmlx_status check_same(const char *op, const zmlx_array *a, const zmlx_array *b,
                              const char *an, const char *bn) {
  char s1[96], s2[96];
  if (a->dtype != b->dtype)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: %s is %s but %s is %s", op, an,
                     zmlx_dtype_name(a->dtype), bn, zmlx_dtype_name(b->dtype));
  if (a->ndim != b->ndim || memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) != 0)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: shapes of %s %s and %s %s do not match", op, an,
                     zmlxi_shape_str(s1, sizeof s1, a->ndim, a->shape), bn,
                     zmlxi_shape_str(s2, sizeof s2, b->ndim, b->shape));
  if (a->buffer->device != b->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: %s and %s are on different devices", op, an, bn);
  return ZMLX_OK;
}

static zmlx_status check_bias(const char *op, const zmlx_array *x, const zmlx_array *bias) {
  char s1[96], s2[96];
  ZMLX_CHECK(check_float(op, "bias", bias));
  if (bias->dtype != x->dtype)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: x is %s but bias is %s", op, zmlx_dtype_name(x->dtype),
                     zmlx_dtype_name(bias->dtype));
  if (bias->ndim != 1 || bias->shape[0] != x->shape[x->ndim - 1])
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: bias must be [last dim of x] for x %s, got bias %s", op,
                     zmlxi_shape_str(s1, sizeof s1, x->ndim, x->shape),
                     zmlxi_shape_str(s2, sizeof s2, bias->ndim, bias->shape));
  if (bias->buffer->device != x->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: x and bias are on different devices", op);
  return ZMLX_OK;
}

static zmlx_status check_even(const char *op, const zmlx_array *x) {
  char s1[96];
  int64_t d = x->shape[x->ndim - 1];
  if (d % 2 != 0 || d == 0)
    return zmlxi_fail(ZMLX_ERR_SHAPE,
                     "%s: the last dim of x %s must be even (split in halves) and non-zero", op,
                     zmlxi_shape_str(s1, sizeof s1, x->ndim, x->shape));
  return ZMLX_OK;
}

/* The two halves of the last axis of x as views (differentiable). */
static zmlx_status halves(const char *op, zmlx_array *x, zmlx_array **lo, zmlx_array **hi) {
  ZMLX_CHECK(check_even(op, x));
  int64_t d = x->shape[x->ndim - 1];
  int64_t start[ZMLX_MAX_DIMS] = {0}, stop[ZMLX_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) stop[i] = x->shape[i];
  stop[x->ndim - 1] = d / 2;
  ZMLX_CHECK(zmlx_slice(x, start, stop, NULL, lo));
  start[x->ndim - 1] = d / 2;
  stop[x->ndim - 1] = d;
  zmlx_status st = zmlx_slice(x, start, stop, NULL, hi);
  if (st != ZMLX_OK) {
    zmlx_array_release(*lo);
    *lo = NULL;
  }
  return st;
}

static zmlx_status apply2(const char *expr, zmlx_array *a, zmlx_array *b, zmlx_array **out) {
  static const char *const names[] = {"a", "b"};
  zmlx_array *in[2] = {a, b};
  return zmlx_apply_expr(expr, names, in, 2, NULL, NULL, 0, out);
}

static zmlx_status apply4(const char *expr, zmlx_array *a, zmlx_array *b, zmlx_array *c,
                          zmlx_array *d, zmlx_array **out) {
  static const char *const names[] = {"a", "b", "c", "d"};
  zmlx_array *in[4] = {a, b, c, d};
  return zmlx_apply_expr(expr, names, in, 4, NULL, NULL, 0, out);
}

/* ------------------------------------------------ split forms: fast path */

enum { K_SPLIT };

/* Not dense_inputs: x is read in place through its row stride. */
static const zmlx_kernel_spec SPECS[] = {
    [K_SPLIT] = ZMLX_KSPEC("zmlx_glu_split", zmlxi_res_glu_split_zk, "x, bias", "out",
                           "n:i64, fc:i64, xrs:i64"),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("glu", SPECS);

/* For the checks (this thread only): launches of the fast kernel, and a cap
 * on its grid (0: none) that makes the grid-stride loop go round. */
_Thread_local long zmlxi_glu_split_launches;
_Thread_local int64_t zmlxi_glu_split_grid_cap;

int zmlxi_glu_split_vec(zmlx_dtype dt) { return dt == ZMLX_F32 ? 4 : 8; }

/* x [..., 2F] as rows of its last axis: the row stride in elements when
 * the last axis is dense and the leading axes fold into one stride (2F for
 * a single row), else -1. */
static int64_t split_row_stride(const zmlx_array *x) {
  const int64_t d = x->shape[x->ndim - 1];
  if (x->strides[x->ndim - 1] != 1) return -1;
  int64_t rs = d, next = 0;
  int seen = 0;
  for (int i = x->ndim - 2; i >= 0; i--) {
    if (x->shape[i] == 1) continue;
    if (!seen) rs = x->strides[i];
    else if (x->strides[i] != next) return -1;
    seen = 1;
    next = x->strides[i] * x->shape[i];
  }
  return rs;
}

/* Whether the fast kernel takes x (validated: float, last dim 2F even) and
 * bias (NULL, or [2F] of x's dtype): F a multiple of the 16-byte vector
 * width, x's rows 16 bytes apart from a 16-byte aligned start (device
 * buffers are 16-byte aligned), bias dense and aligned likewise. */
static int split_fast_ok(const zmlx_array *x, const zmlx_array *bias) {
  if (x->size == 0) return 0;
  const int64_t vec = zmlxi_glu_split_vec(x->dtype), F = x->shape[x->ndim - 1] / 2;
  if (F % vec != 0 || x->offset % vec != 0) return 0;
  const int64_t rs = split_row_stride(x);
  if (rs < 0 || rs % vec != 0) return 0;
  if (bias && (bias->strides[0] != 1 || bias->offset % vec != 0)) return 0;
  return 1;
}

/* out = act(x_lo (+ bias_lo)) * (x_hi (+ bias_hi)) with the fast kernel;
 * act: 0 silu, 1 gelu (erf), 2 gelu (tanh). Requires split_fast_ok. */
static zmlx_status split_fast(int act, zmlx_array *x, zmlx_array *bias, zmlx_array **out) {
  zmlx_kernel *gs_kernel;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_SPLIT, &gs_kernel));
  zmlx_device *dev = x->buffer->device;
  const int vec = zmlxi_glu_split_vec(x->dtype);
  const int64_t F = x->shape[x->ndim - 1] / 2;
  const int64_t rows = x->size / (2 * F), fc = F / vec, n = rows * fc;
  int64_t shape[ZMLX_MAX_DIMS];
  memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
  shape[x->ndim - 1] = F;
  zmlx_array *y = NULL;
  ZMLX_CHECK(zmlxi_array_alloc(dev, NULL, x->dtype, x->ndim, shape, &y));
  zmlx_device_info info;
  zmlx_status st = zmlx_device_get_info(dev, &info);
  if (st == ZMLX_OK) {
    const int xdt = zmlxi_ops_xdt(x->dtype);
    zmlx_template_arg t[4] = {{"ACT", ZMLX_TEMPLATE_INT, ZMLX_F32, act},
                              {"BIAS", ZMLX_TEMPLATE_BOOL, ZMLX_F32, bias ? 1 : 0},
                              {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                              {"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32, xdt}};
    double params[3] = {(double)n, (double)fc, (double)(split_row_stride(x) / vec)};
    zmlx_array *in[2] = {x, bias ? bias : x};
    /* one chunk per thread up to the engine's cap (sixteen waves), then
     * the grid-stride loop */
    zmlx_pattern_geometry g = zmlxi_pattern_elementwise_geometry(ZMLX_EW_CONTIGUOUS, n, 0, &info);
    if (zmlxi_glu_split_grid_cap > 0 && g.grid[0] > zmlxi_glu_split_grid_cap) g.grid[0] = zmlxi_glu_split_grid_cap;
    zmlx_kernel_call call = {.n_inputs = 2, .n_outputs = 1, .inputs = in, .outputs = &y,
                             .templates = t, .n_templates = 4, .params = params,
                             .device = dev};
    memcpy(call.grid, g.grid, sizeof call.grid);
    memcpy(call.threadgroup, g.threadgroup, sizeof call.threadgroup);
    st = zmlx_kernel_launch(gs_kernel, &call);
  }
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  zmlxi_glu_split_launches++;
  *out = y;
  return ZMLX_OK;
}

/* ------------------------------------------------------------------ ops */

zmlx_status zmlx_swiglu(zmlx_array *gate, zmlx_array *up, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(check_float("swiglu", "gate", gate));
  ZMLX_CHECK(check_float("swiglu", "up", up));
  ZMLX_CHECK(check_same("swiglu", gate, up, "gate", "up"));
  return apply2("silu(a) * b", gate, up, out);
}

zmlx_status zmlx_geglu(zmlx_array *gate, zmlx_array *up, int approximate, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(check_float("geglu", "gate", gate));
  ZMLX_CHECK(check_float("geglu", "up", up));
  ZMLX_CHECK(check_same("geglu", gate, up, "gate", "up"));
  return apply2(approximate ? "gelu_tanh(a) * b" : "gelu(a) * b", gate, up, out);
}

static zmlx_status split_glu(const char *op, int act, const char *expr, zmlx_array *x,
                             zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(check_float(op, "x", x));
  ZMLX_CHECK(check_even(op, x));
  if (split_fast_ok(x, NULL) && !zmlxi_ad_should_record(&x, 1))
    return split_fast(act, x, NULL, out);
  zmlx_array *a = NULL, *b = NULL;
  ZMLX_CHECK(halves(op, x, &a, &b));
  zmlx_status st = apply2(expr, a, b, out);
  zmlx_array_release(a);
  zmlx_array_release(b);
  return st;
}

zmlx_status zmlx_swiglu_split(zmlx_array *x, zmlx_array **out) {
  return split_glu("swiglu_split", 0, "silu(a) * b", x, out);
}

zmlx_status zmlx_geglu_split(zmlx_array *x, int approximate, zmlx_array **out) {
  return split_glu("geglu_split", approximate ? 2 : 1,
                   approximate ? "gelu_tanh(a) * b" : "gelu(a) * b", x, out);
}

zmlx_status zmlx_bias_gelu(zmlx_array *x, zmlx_array *bias, int approximate, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(check_float("bias_gelu", "x", x));
  ZMLX_CHECK(check_bias("bias_gelu", x, bias));
  return apply2(approximate ? "gelu_tanh(a + b)" : "gelu(a + b)", x, bias, out);
}

zmlx_status zmlx_bias_silu(zmlx_array *x, zmlx_array *bias, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(check_float("bias_silu", "x", x));
  ZMLX_CHECK(check_bias("bias_silu", x, bias));
  return apply2("silu(a + b)", x, bias, out);
}

zmlx_status zmlx_bias_swiglu(zmlx_array *x, zmlx_array *bias, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(check_float("bias_swiglu", "x", x));
  ZMLX_CHECK(check_bias("bias_swiglu", x, bias));
  ZMLX_CHECK(check_even("bias_swiglu", x));
  zmlx_array *xb[2] = {x, bias};
  if (split_fast_ok(x, bias) && !zmlxi_ad_should_record(xb, 2))
    return split_fast(0, x, bias, out);
  zmlx_array *a = NULL, *b = NULL, *c = NULL, *d = NULL;
  ZMLX_CHECK(halves("bias_swiglu", x, &a, &b));
  zmlx_status st = halves("bias_swiglu", bias, &c, &d);
  if (st == ZMLX_OK) st = apply4("silu(a + c) * (b + d)", a, b, c, d, out);
  zmlx_array_release(a);
  zmlx_array_release(b);
  zmlx_array_release(c);
  zmlx_array_release(d);
  return st;
}
