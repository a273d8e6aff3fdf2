/* GLU family (issue 5): swiglu, geglu (two inputs, or one split in halves),
 * bias fusions (bias+gelu, bias+silu, bias+swiglu) — elementwise
 * expression ops through zmlx_apply_expr (vector loads, engine-derived VJP
 * and JVP, any order), halves taken as strided views with zmlx_slice — and
 * dropout, a dialect kernel (kernels/dropout.zk) on the counter-based
 * Philox RNG whose VJP is the same kernel on the cotangent.
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
#include "ops/catalog.h"
#include "ops/check_util.h"

extern const char zmlx_res_dropout_zk[];
extern const char zmlx_res_glu_split_zk[];

/* ------------------------------------------------------------ validation */

static zmlx_status check_float(const char *op, const char *name, const zmlx_array *a) {
  if (!a) return zmlx_fail(ZMLX_ERR_NULL_ARG, "%s: argument '%s' is NULL", op, name);
  if (a->dtype != ZMLX_F32 && a->dtype != ZMLX_F16 && a->dtype != ZMLX_BF16)
    return zmlx_fail(ZMLX_ERR_DTYPE, "%s: %s has dtype %s; supported: f32, f16, bf16", op, name,
                     zmlx_dtype_name(a->dtype));
  if (a->ndim < 1)
    return zmlx_fail(ZMLX_ERR_SHAPE, "%s: %s must have rank >= 1, got a scalar", op, name);
  return ZMLX_OK;
}

static zmlx_status check_same(const char *op, const zmlx_array *a, const zmlx_array *b,
                              const char *an, const char *bn) {
  char s1[96], s2[96];
  if (a->dtype != b->dtype)
    return zmlx_fail(ZMLX_ERR_DTYPE, "%s: %s is %s but %s is %s", op, an,
                     zmlx_dtype_name(a->dtype), bn, zmlx_dtype_name(b->dtype));
  if (a->ndim != b->ndim || memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) != 0)
    return zmlx_fail(ZMLX_ERR_SHAPE, "%s: shapes of %s %s and %s %s do not match", op, an,
                     zmlx_shape_str(s1, sizeof s1, a->ndim, a->shape), bn,
                     zmlx_shape_str(s2, sizeof s2, b->ndim, b->shape));
  if (a->buffer->device != b->buffer->device)
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "%s: %s and %s are on different devices", op, an, bn);
  return ZMLX_OK;
}

static zmlx_status check_bias(const char *op, const zmlx_array *x, const zmlx_array *bias) {
  char s1[96], s2[96];
  ZMLX_CHECK(check_float(op, "bias", bias));
  if (bias->dtype != x->dtype)
    return zmlx_fail(ZMLX_ERR_DTYPE, "%s: x is %s but bias is %s", op, zmlx_dtype_name(x->dtype),
                     zmlx_dtype_name(bias->dtype));
  if (bias->ndim != 1 || bias->shape[0] != x->shape[x->ndim - 1])
    return zmlx_fail(ZMLX_ERR_SHAPE, "%s: bias must be [last dim of x] for x %s, got bias %s", op,
                     zmlx_shape_str(s1, sizeof s1, x->ndim, x->shape),
                     zmlx_shape_str(s2, sizeof s2, bias->ndim, bias->shape));
  if (bias->buffer->device != x->buffer->device)
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "%s: x and bias are on different devices", op);
  return ZMLX_OK;
}

static zmlx_status check_even(const char *op, const zmlx_array *x) {
  char s1[96];
  int64_t d = x->shape[x->ndim - 1];
  if (d % 2 != 0 || d == 0)
    return zmlx_fail(ZMLX_ERR_SHAPE,
                     "%s: the last dim of x %s must be even (split in halves) and non-zero", op,
                     zmlx_shape_str(s1, sizeof s1, x->ndim, x->shape));
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

static zmlx_kernel *gs_kernel;
static zmlx_status gs_kernel_st;
static char gs_kernel_err[512];

static void gs_kernel_init(void) {
  static const char *const in[] = {"x", "bias"};
  static const char *const outs[] = {"out"};
  static const char *const pn[] = {"n", "fc", "xrs"};
  static const zmlx_dtype pd[] = {ZMLX_I64, ZMLX_I64, ZMLX_I64};
  /* not row-contiguous: x is read in place through its row stride */
  zmlx_kernel_desc d = {.name = "zmlx_glu_split", .input_names = in, .n_inputs = 2,
                        .output_names = outs, .n_outputs = 1, .source = zmlx_res_glu_split_zk,
                        .param_names = pn, .param_dtypes = pd, .n_params = 3};
  gs_kernel_st = zmlx_kernel_create_from_zk(&d, &gs_kernel);
  if (gs_kernel_st != ZMLX_OK)
    snprintf(gs_kernel_err, sizeof gs_kernel_err, "%s", zmlx_last_error());
}

/* For the checks (this thread only): launches of the fast kernel, and a cap
 * on its grid (0: none) that makes the grid-stride loop go round. */
static _Thread_local long gs_launches;
static _Thread_local int64_t gs_grid_cap;

static int gs_vec(zmlx_dtype dt) { return dt == ZMLX_F32 ? 4 : 8; }

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
  const int64_t vec = gs_vec(x->dtype), F = x->shape[x->ndim - 1] / 2;
  if (F % vec != 0 || x->offset % vec != 0) return 0;
  const int64_t rs = split_row_stride(x);
  if (rs < 0 || rs % vec != 0) return 0;
  if (bias && (bias->strides[0] != 1 || bias->offset % vec != 0)) return 0;
  return 1;
}

/* out = act(x_lo (+ bias_lo)) * (x_hi (+ bias_hi)) with the fast kernel;
 * act: 0 silu, 1 gelu (erf), 2 gelu (tanh). Requires split_fast_ok. */
static zmlx_status split_fast(int act, zmlx_array *x, zmlx_array *bias, zmlx_array **out) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, gs_kernel_init);
  if (gs_kernel_st != ZMLX_OK) return zmlx_fail(gs_kernel_st, "glu split: %s", gs_kernel_err);
  zmlx_device *dev = x->buffer->device;
  const int vec = gs_vec(x->dtype);
  const int64_t F = x->shape[x->ndim - 1] / 2;
  const int64_t rows = x->size / (2 * F), fc = F / vec, n = rows * fc;
  int64_t shape[ZMLX_MAX_DIMS];
  memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
  shape[x->ndim - 1] = F;
  zmlx_array *y = NULL;
  ZMLX_CHECK(zmlx_array_alloc(dev, NULL, x->dtype, x->ndim, shape, &y));
  zmlx_device_info info;
  zmlx_status st = zmlx_device_get_info(dev, &info);
  if (st == ZMLX_OK) {
    const int xdt = zmlx_ops_xdt(x->dtype);
    zmlx_template_arg t[4] = {{"ACT", ZMLX_TEMPLATE_INT, ZMLX_F32, act},
                              {"BIAS", ZMLX_TEMPLATE_BOOL, ZMLX_F32, bias ? 1 : 0},
                              {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                              {"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32, xdt}};
    double params[3] = {(double)n, (double)fc, (double)(split_row_stride(x) / vec)};
    zmlx_array *in[2] = {x, bias ? bias : x};
    /* one chunk per thread up to the engine's cap (sixteen waves), then
     * the grid-stride loop */
    zmlx_pattern_geometry g = zmlx_pattern_elementwise_geometry(ZMLX_EW_CONTIGUOUS, n, 0, &info);
    if (gs_grid_cap > 0 && g.grid[0] > gs_grid_cap) g.grid[0] = gs_grid_cap;
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
  gs_launches++;
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
  if (split_fast_ok(x, NULL) && !zmlx_ad_should_record(&x, 1))
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
  if (split_fast_ok(x, bias) && !zmlx_ad_should_record(xb, 2))
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

/* -------------------------------------------------------------- dropout */

static zmlx_kernel *drop_kernel;
static zmlx_status drop_kernel_st;
static char drop_kernel_err[512];

static void drop_kernel_init(void) {
  static const char *const in[] = {"x"};
  static const char *const pn[] = {"n", "seed_lo", "seed_hi", "thresh", "scale"};
  static const zmlx_dtype pd[] = {ZMLX_I64, ZMLX_U32, ZMLX_U32, ZMLX_U32, ZMLX_F32};
  drop_kernel_st = zmlx_rg_kernel_from_zk("zmlx_dropout", zmlx_res_dropout_zk, in, 1, pn, pd, 5,
                                          &drop_kernel);
  if (drop_kernel_st != ZMLX_OK)
    snprintf(drop_kernel_err, sizeof drop_kernel_err, "%s", zmlx_last_error());
}

typedef struct drop_cfg {
  double p;
  uint64_t seed;
} drop_cfg;

static uint32_t drop_thresh(double p) { return (uint32_t)llround(p * 16777216.0); }

static zmlx_status drop_launch(zmlx_array *x, const drop_cfg *c, zmlx_array *out) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, drop_kernel_init);
  if (drop_kernel_st != ZMLX_OK) return zmlx_fail(drop_kernel_st, "dropout: %s", drop_kernel_err);
  if (x->size == 0) return ZMLX_OK;
  double params[5] = {(double)x->size, (double)(uint32_t)c->seed,
                      (double)(uint32_t)(c->seed >> 32), (double)drop_thresh(c->p),
                      1.0 / (1.0 - c->p)};
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &x, .outputs = &out,
                           .params = params, .device = x->buffer->device};
  zmlx_rg_grid(&call, (x->size + 3) / 4);
  return zmlx_kernel_launch(drop_kernel, &call);
}

static zmlx_status drop_apply(zmlx_array *x, const drop_cfg *c, zmlx_array **out);

static zmlx_status drop_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                            zmlx_array **grads) {
  if (!need[0]) return ZMLX_OK;
  return drop_apply(cot[0], (const drop_cfg *)n->ctx, &grads[0]);
}

static zmlx_status drop_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out_tan) {
  if (!tan[0]) return ZMLX_OK;
  return drop_apply(tan[0], (const drop_cfg *)n->ctx, &out_tan[0]);
}

static const zmlx_ad_rule DROPOUT_RULE = {"dropout", drop_vjp, drop_jvp, free};

static zmlx_status drop_apply(zmlx_array *x, const drop_cfg *c, zmlx_array **out) {
  zmlx_array *y = NULL;
  ZMLX_CHECK(zmlx_array_alloc(x->buffer->device, NULL, x->dtype, x->ndim, x->shape, &y));
  zmlx_status st = drop_launch(x, c, y);
  if (st == ZMLX_OK && zmlx_ad_should_record(&x, 1)) {
    drop_cfg *cc = malloc(sizeof *cc);
    if (!cc) st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    else {
      *cc = *c;
      st = zmlx_ad_record(&DROPOUT_RULE, cc, &x, 1, &y, 1, 0);
    }
  }
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  *out = y;
  return ZMLX_OK;
}

static zmlx_status drop_validate(zmlx_array *x, double p) {
  ZMLX_CHECK(check_float("dropout", "x", x));
  if (!(p >= 0 && p < 1))
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "dropout: p = %g must be in [0, 1)", p);
  return ZMLX_OK;
}

zmlx_status zmlx_dropout(zmlx_array *x, double p, uint64_t seed, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(drop_validate(x, p));
  drop_cfg c = {p, seed};
  return drop_apply(x, &c, out);
}

/* ================================================================ checks */

typedef enum glu_kind {
  K_SWIGLU, K_GEGLU, K_GEGLU_TANH, K_SWIGLU_SPLIT, K_GEGLU_SPLIT, K_BIAS_GELU, K_BIAS_GELU_TANH,
  K_BIAS_SILU, K_BIAS_SWIGLU, K_GEGLU_TANH_SPLIT
} glu_kind;

static const char *kind_name(glu_kind k) {
  static const char *n[] = {"swiglu", "geglu", "geglu(tanh)", "swiglu_split", "geglu_split",
                            "bias_gelu", "bias_gelu(tanh)", "bias_silu", "bias_swiglu",
                            "geglu_split(tanh)"};
  return n[k];
}

/* act and its derivative: 0 silu, 1 gelu erf, 2 gelu tanh. */
static double act(int f, double x, double *dx) {
  if (f == 0) {
    double s = 1 / (1 + exp(-x));
    *dx = s * (1 + x * (1 - s));
    return x * s;
  }
  if (f == 1) {
    double cdf = 0.5 * (1 + erf(x / sqrt(2.0)));
    *dx = cdf + x * exp(-0.5 * x * x) / sqrt(2 * M_PI);
    return x * cdf;
  }
  double k = sqrt(2 / M_PI), u = k * (x + 0.044715 * x * x * x);
  double t = tanh(u);
  *dx = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x);
  return 0.5 * x * (1 + t);
}

static int kind_act(glu_kind k) {
  switch (k) {
    case K_SWIGLU: case K_SWIGLU_SPLIT: case K_BIAS_SILU: case K_BIAS_SWIGLU: return 0;
    case K_GEGLU: case K_GEGLU_SPLIT: case K_BIAS_GELU: return 1;
    default: return 2;
  }
}

/* Number of inputs and their shapes for rows x F (F = output last dim). */
static int kind_inputs(glu_kind k, int64_t rows, int64_t F, int64_t sh[2][2], int nd[2]) {
  nd[0] = 2;
  sh[0][0] = rows;
  switch (k) {
    case K_SWIGLU: case K_GEGLU: case K_GEGLU_TANH:
      sh[0][1] = F;
      nd[1] = 2;
      sh[1][0] = rows;
      sh[1][1] = F;
      return 2;
    case K_SWIGLU_SPLIT: case K_GEGLU_SPLIT: case K_GEGLU_TANH_SPLIT:
      sh[0][1] = 2 * F;
      return 1;
    case K_BIAS_GELU: case K_BIAS_GELU_TANH: case K_BIAS_SILU:
      sh[0][1] = F;
      nd[1] = 1;
      sh[1][0] = F;
      return 2;
    default:
      sh[0][1] = 2 * F;
      nd[1] = 1;
      sh[1][0] = 2 * F;
      return 2;
  }
}

static zmlx_status kind_call(glu_kind k, zmlx_array *const *in, zmlx_array **out) {
  switch (k) {
    case K_SWIGLU: return zmlx_swiglu(in[0], in[1], out);
    case K_GEGLU: return zmlx_geglu(in[0], in[1], 0, out);
    case K_GEGLU_TANH: return zmlx_geglu(in[0], in[1], 1, out);
    case K_SWIGLU_SPLIT: return zmlx_swiglu_split(in[0], out);
    case K_GEGLU_SPLIT: return zmlx_geglu_split(in[0], 0, out);
    case K_GEGLU_TANH_SPLIT: return zmlx_geglu_split(in[0], 1, out);
    case K_BIAS_GELU: return zmlx_bias_gelu(in[0], in[1], 0, out);
    case K_BIAS_GELU_TANH: return zmlx_bias_gelu(in[0], in[1], 1, out);
    case K_BIAS_SILU: return zmlx_bias_silu(in[0], in[1], out);
    default: return zmlx_bias_swiglu(in[0], in[1], out);
  }
}

/* Host reference: out [rows, F] and, for cotangent g, grads of the inputs
 * (g0 like in0, g1 like in1; may be NULL). */
static void kind_ref(glu_kind k, int64_t rows, int64_t F, const double *x0, const double *x1,
                     const double *g, double *out, double *g0, double *g1) {
  int f = kind_act(k);
  if (g0) memset(g0, 0, sizeof(double) * (size_t)(rows * 2 * F));
  if (g1) memset(g1, 0, sizeof(double) * (size_t)(2 * F * (rows > 0 ? rows : 1)));
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < F; j++) {
      int64_t o = r * F + j;
      double a, b = 1, da;
      int has_b = 1;
      switch (k) {
        case K_SWIGLU: case K_GEGLU: case K_GEGLU_TANH:
          a = x0[o]; b = x1[o]; break;
        case K_SWIGLU_SPLIT: case K_GEGLU_SPLIT: case K_GEGLU_TANH_SPLIT:
          a = x0[r * 2 * F + j]; b = x0[r * 2 * F + F + j]; break;
        case K_BIAS_SWIGLU:
          a = x0[r * 2 * F + j] + x1[j]; b = x0[r * 2 * F + F + j] + x1[F + j]; break;
        default:
          a = x0[o] + x1[j]; has_b = 0; break;
      }
      double y = act(f, a, &da);
      out[o] = y * b;
      if (!g) continue;
      double ga = g[o] * da * b, gb = g[o] * y;
      switch (k) {
        case K_SWIGLU: case K_GEGLU: case K_GEGLU_TANH:
          g0[o] = ga; g1[o] = gb; break;
        case K_SWIGLU_SPLIT: case K_GEGLU_SPLIT: case K_GEGLU_TANH_SPLIT:
          g0[r * 2 * F + j] = ga; g0[r * 2 * F + F + j] = gb; break;
        case K_BIAS_SWIGLU:
          g0[r * 2 * F + j] = ga; g0[r * 2 * F + F + j] = gb;
          g1[j] += ga; g1[F + j] += gb; break;
        default:
          (void)has_b;
          g0[o] = ga; g1[j] += ga; break;
      }
    }
}

typedef struct glu_gctx {
  glu_kind k;
  zmlx_array *w;
} glu_gctx;

static zmlx_status glu_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  return kind_call(((glu_gctx *)ud)->k, in, out);
}

static zmlx_status glu_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  glu_gctx *g = ud;
  zmlx_array *y = NULL;
  ZMLX_CHECK(glu_fn(ud, in, n, &y));
  zmlx_status st = zmlx_opck_weighted_sum(y, g->w, out);
  zmlx_array_release(y);
  return st;
}

static int kind_split(glu_kind k) {
  return k == K_SWIGLU_SPLIT || k == K_GEGLU_SPLIT || k == K_GEGLU_TANH_SPLIT ||
         k == K_BIAS_SWIGLU;
}

/* A row on which path a split form took since gs_launches was `before`:
 * the 16-byte kernel (want) or the engine. */
static void emit_path(const zmlx_check_opts *o, const char *op, zmlx_dtype dt, const char *name,
                      long before, int want) {
  int got = gs_launches != before;
  zmlx_rg_emit(o, op, want ? "path: 16-byte kernel" : "path: engine", dt, name, got != want, 0,
               got == want);
}

/* mode 0: forward; 1: f32 finite differences; 2: VJP vs the f64 reference.
 * Split forms also report their path: the fast kernel in a forward with F
 * a multiple of the vector width, the engine while recording for the VJP. */
static void glu_case(const zmlx_check_opts *o, glu_kind k, int64_t rows, int64_t F, int mode,
                     uint64_t *rng) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = mode == 1 ? ZMLX_F32 : o->dtype;
  const char *op = kind_name(k);
  char name[96];
  int64_t sh[2][2] = {{0, 0}, {0, 0}};
  int nd[2] = {0, 0};
  int nin = kind_inputs(k, rows, F, sh, nd);
  snprintf(name, sizeof name, "[%lld, %lld] -> [%lld, %lld]", (long long)sh[0][0],
           (long long)sh[0][1], (long long)rows, (long long)F);
  if (gs_grid_cap > 0) {
    size_t l = strlen(name);
    snprintf(name + l, sizeof name - l, " grid %lld", (long long)gs_grid_cap);
  }
  const char *what = mode == 0 ? "fwd" : mode == 1 ? "grad (fd)" : "grad (vjp)";
  long launches = gs_launches;
  int64_t n0 = sh[0][0] * sh[0][1], n1 = nin > 1 ? (nd[1] == 2 ? sh[1][0] * sh[1][1] : sh[1][0]) : 1;
  int64_t no = rows * F;
  double *x0 = malloc(sizeof(double) * (size_t)n0), *x1 = malloc(sizeof(double) * (size_t)n1);
  double *g = malloc(sizeof(double) * (size_t)no), *want = malloc(sizeof(double) * (size_t)no);
  double *w0 = malloc(sizeof(double) * (size_t)(rows * 2 * F));
  double *w1 = malloc(sizeof(double) * (size_t)(2 * F * rows));
  double *got = NULL, *got1 = NULL;
  zmlx_array *in[2] = {NULL, NULL}, *y = NULL, *w = NULL, *grads[2] = {NULL, NULL};
  int64_t osh[2] = {rows, F};
  zmlx_status st = ZMLX_OK;
  if (!x0 || !x1 || !g || !want || !w0 || !w1) {
    st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  st = zmlx_rg_random(dev, dt, nd[0], sh[0], -3, 3, rng, x0, &in[0]);
  if (st == ZMLX_OK && nin > 1) st = zmlx_rg_random(dev, dt, nd[1], sh[1], -1, 1, rng, x1, &in[1]);
  if (st != ZMLX_OK) goto done;
  double tol = zmlx_rg_tol(dt);
  if (mode == 0) {
    zmlx_rg_poison_pool(dev, dt, 2, osh);
    st = kind_call(k, in, &y);
    if (st == ZMLX_OK) st = zmlx_rg_download(y, &got);
    if (st != ZMLX_OK) goto done;
    kind_ref(k, rows, F, x0, x1, NULL, want, NULL, NULL);
    double e = zmlx_rg_err(got, want, no);
    zmlx_rg_emit(o, op, what, dt, name, e, tol, e <= tol);
    if (kind_split(k)) emit_path(o, op, dt, name, launches, F % gs_vec(dt) == 0);
  } else if (mode == 1) {
    st = zmlx_rg_random(dev, dt, 2, osh, -1, 1, rng, g, &w);
    if (st != ZMLX_OK) goto done;
    glu_gctx gc = {k, w};
    zmlx_grad_check_report rep;
    st = zmlx_check_grad(glu_loss, &gc, in, nin, 1e-3, 1e-2, &rep);
    if (st != ZMLX_OK) goto done;
    double e = 0;
    for (int i = 0; i < nin; i++) e = fmax(e, rep.inputs[i].max_abs_err);
    if (rep.jvp_checked) e = fmax(e, rep.jvp_abs_err);
    zmlx_rg_emit(o, op, what, dt, name, e, 1e-2, rep.passed);
  } else {
    st = zmlx_rg_random(dev, dt, 2, osh, -1, 1, rng, g, &w);
    if (st != ZMLX_OK) goto done;
    glu_gctx gc = {k, NULL};
    int argn[2] = {0, 1};
    st = zmlx_vjp(glu_fn, &gc, in, nin, argn, nin, w, &y, grads);
    if (st == ZMLX_OK) st = zmlx_rg_download(grads[0], &got);
    if (st == ZMLX_OK && nin > 1) st = zmlx_rg_download(grads[1], &got1);
    if (st != ZMLX_OK) goto done;
    kind_ref(k, rows, F, x0, x1, g, want, w0, w1);
    if (kind_split(k)) emit_path(o, op, dt, name, launches, 0);
    double e = zmlx_rg_err(got, w0, n0);
    /* Bias gradients sum `rows` terms: scale the tolerance by that count. */
    int is_bias = nin > 1 && nd[1] == 1;
    if (nin > 1) {
      double e1 = zmlx_rg_err(got1, w1, n1);
      if (is_bias) e1 /= sqrt((double)rows);
      e = fmax(e, e1);
    }
    zmlx_rg_emit(o, op, what, dt, name, e, tol, e <= tol);
  }
done:
  if (st != ZMLX_OK) zmlx_rg_emit_fail(o, op, what, dt, name, st);
  free(x0); free(x1); free(g); free(want); free(w0); free(w1); free(got); free(got1);
  zmlx_array_release(in[0]); zmlx_array_release(in[1]); zmlx_array_release(y);
  zmlx_array_release(w); zmlx_array_release(grads[0]); zmlx_array_release(grads[1]);
  zmlx_clear_error();
}

/* Host values of a view of a dense array whose values are `base`. */
static void view_values(const zmlx_array *v, const double *base, double *out) {
  int64_t idx[ZMLX_MAX_DIMS] = {0};
  for (int64_t e = 0; e < v->size; e++) {
    int64_t at = v->offset;
    for (int d = 0; d < v->ndim; d++) at += idx[d] * v->strides[d];
    out[e] = base[at];
    for (int d = v->ndim - 1; d >= 0; d--) {
      if (++idx[d] < v->shape[d]) break;
      idx[d] = 0;
    }
  }
}

/* A split form's forward on x (or bias) as a view of a larger array, and
 * the path it took: the fast kernel reads aligned views in place (a row
 * offset; padded rows, also with leading axes that fold into one row
 * stride), the engine takes the rest (a misaligned start; leading axes
 * that do not fold; a misaligned bias). */
enum { V_ROW_OFFSET, V_PADDED, V_PADDED_3D, V_MISALIGNED, V_OFFSET_3D, V_BIAS_MISALIGNED };

static void glu_view_case(const zmlx_check_opts *o, glu_kind k, int64_t rows, int64_t F,
                          int layout, uint64_t *rng) {
  static const char *const lname[] = {"row offset", "padded rows", "padded rows, 3-d",
                                      "misaligned", "row offset, 3-d", "misaligned bias"};
  static const int lfast[] = {1, 1, 1, 0, 0, 0};
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  const char *op = kind_name(k);
  const int has_bias = k == K_BIAS_SWIGLU;
  const int nd = layout == V_PADDED_3D || layout == V_OFFSET_3D ? 3 : 2;
  const int64_t D = 2 * F, lead = nd == 3 ? 2 : 1, R = lead * rows, no = R * F;
  const int64_t roff = layout == V_ROW_OFFSET || layout == V_OFFSET_3D ? 1 : 0;
  const int64_t pad = layout == V_PADDED || layout == V_PADDED_3D ? 8 : layout == V_MISALIGNED;
  int64_t bsh[3] = {0}, start[3] = {0}, stop[3] = {0};
  if (nd == 3) bsh[0] = stop[0] = lead;
  bsh[nd - 2] = rows + roff;
  start[nd - 2] = roff;
  stop[nd - 2] = rows + roff;
  bsh[nd - 1] = D + pad;
  start[nd - 1] = pad;
  stop[nd - 1] = D + pad;
  int64_t nb = bsh[nd - 1] * bsh[nd - 2] * (nd == 3 ? lead : 1);
  int64_t bbsh[1] = {D + (layout == V_BIAS_MISALIGNED)}, bstart[1] = {bbsh[0] - D},
          bstop[1] = {bbsh[0]};
  char name[128];
  snprintf(name, sizeof name, "[%lld, %lld] -> [%lld, %lld] %s", (long long)R, (long long)D,
           (long long)R, (long long)F, lname[layout]);
  double *bv = malloc(sizeof(double) * (size_t)nb), *x0 = malloc(sizeof(double) * (size_t)(R * D));
  double *bbv = malloc(sizeof(double) * (size_t)(D + 1)), *x1 = malloc(sizeof(double) * (size_t)D);
  double *want = malloc(sizeof(double) * (size_t)no), *got = NULL;
  zmlx_array *base = NULL, *bbase = NULL, *in[2] = {NULL, NULL}, *y = NULL;
  zmlx_status st = ZMLX_OK;
  if (!bv || !x0 || !bbv || !x1 || !want) {
    st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  st = zmlx_rg_random(dev, dt, nd, bsh, -3, 3, rng, bv, &base);
  if (st == ZMLX_OK) st = zmlx_slice(base, start, stop, NULL, &in[0]);
  if (st == ZMLX_OK && has_bias) st = zmlx_rg_random(dev, dt, 1, bbsh, -1, 1, rng, bbv, &bbase);
  if (st == ZMLX_OK && has_bias) st = zmlx_slice(bbase, bstart, bstop, NULL, &in[1]);
  if (st != ZMLX_OK) goto done;
  view_values(in[0], bv, x0);
  if (has_bias) view_values(in[1], bbv, x1);
  int64_t osh[2] = {R, F};
  zmlx_rg_poison_pool(dev, dt, 2, osh);
  long launches = gs_launches;
  st = kind_call(k, in, &y);
  if (st == ZMLX_OK) st = zmlx_rg_download(y, &got);
  if (st != ZMLX_OK) goto done;
  kind_ref(k, R, F, x0, x1, NULL, want, NULL, NULL);
  double e = zmlx_rg_err(got, want, no), tol = zmlx_rg_tol(dt);
  zmlx_rg_emit(o, op, "fwd (view)", dt, name, e, tol, e <= tol);
  emit_path(o, op, dt, name, launches, lfast[layout] && F % gs_vec(dt) == 0);
done:
  if (st != ZMLX_OK) zmlx_rg_emit_fail(o, op, "fwd (view)", dt, name, st);
  free(bv); free(x0); free(bbv); free(x1); free(want); free(got);
  zmlx_array_release(base); zmlx_array_release(bbase); zmlx_array_release(in[0]);
  zmlx_array_release(in[1]); zmlx_array_release(y);
  zmlx_clear_error();
}

static void glu_bad(const zmlx_check_opts *o, glu_kind k) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  const char *op = kind_name(k);
  zmlx_array *a = NULL, *b = NULL, *c = NULL, *ai = NULL, *s = NULL, *y = NULL;
  int64_t sa[2] = {3, 6}, sb[2] = {3, 5}, sc[1] = {5};
  if (zmlx_array_zeros(dev, dt, 2, sa, &a) || zmlx_array_zeros(dev, dt, 2, sb, &b) ||
      zmlx_array_zeros(dev, dt, 1, sc, &c) || zmlx_array_zeros(dev, ZMLX_I32, 2, sa, &ai) ||
      zmlx_array_zeros(dev, dt, 0, NULL, &s)) {
    zmlx_rg_emit_fail(o, op, "bad input", dt, "setup", ZMLX_ERR_BACKEND);
    goto done;
  }
  switch (k) {
    case K_SWIGLU:
      zmlx_rg_expect(o, op, "bad: shape mismatch", zmlx_swiglu(a, b, &y), y, ZMLX_ERR_SHAPE,
                     "do not match");
      y = NULL;
      zmlx_rg_expect(o, op, "bad: dtype i32", zmlx_swiglu(ai, ai, &y), y, ZMLX_ERR_DTYPE,
                     "dtype");
      y = NULL;
      zmlx_rg_expect(o, op, "bad: scalar", zmlx_swiglu(s, s, &y), y, ZMLX_ERR_SHAPE, "rank");
      break;
    case K_GEGLU:
      zmlx_rg_expect(o, op, "bad: shape mismatch", zmlx_geglu(a, b, 0, &y), y, ZMLX_ERR_SHAPE,
                     "do not match");
      y = NULL;
      zmlx_rg_expect(o, op, "bad: dtype mismatch", zmlx_geglu(a, ai, 0, &y), y, ZMLX_ERR_DTYPE,
                     "dtype");
      break;
    case K_SWIGLU_SPLIT:
      zmlx_rg_expect(o, op, "bad: odd last dim", zmlx_swiglu_split(b, &y), y, ZMLX_ERR_SHAPE,
                     "even");
      break;
    case K_GEGLU_SPLIT:
      zmlx_rg_expect(o, op, "bad: odd last dim", zmlx_geglu_split(b, 0, &y), y, ZMLX_ERR_SHAPE,
                     "even");
      break;
    case K_BIAS_GELU:
      zmlx_rg_expect(o, op, "bad: bias length", zmlx_bias_gelu(a, c, 0, &y), y, ZMLX_ERR_SHAPE,
                     "bias");
      break;
    case K_BIAS_SILU:
      zmlx_rg_expect(o, op, "bad: bias rank", zmlx_bias_silu(b, b, &y), y, ZMLX_ERR_SHAPE,
                     "bias");
      break;
    case K_BIAS_SWIGLU:
      zmlx_rg_expect(o, op, "bad: odd last dim", zmlx_bias_swiglu(b, c, &y), y, ZMLX_ERR_SHAPE,
                     "even");
      y = NULL;
      zmlx_rg_expect(o, op, "bad: bias length", zmlx_bias_swiglu(a, c, &y), y, ZMLX_ERR_SHAPE,
                     "bias");
      break;
    default:
      break;
  }
done:
  zmlx_array_release(a); zmlx_array_release(b); zmlx_array_release(c);
  zmlx_array_release(ai); zmlx_array_release(s);
}

static zmlx_status glu_check_kinds(const zmlx_check_opts *o, const glu_kind *kinds, int nk) {
  ZMLX_REQUIRE_ARG(o);
  ZMLX_REQUIRE_ARG(o->device);
  uint64_t rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x676C75ULL + (uint64_t)kinds[0] * 7919;
  if (!rng) rng = 1;
  static const int64_t quick[][2] = {{1, 1}, {3, 7}, {4, 64}, {2, 1000}, {3, 4096}};
  static const int64_t full[][2] = {{1, 1}, {5, 1}, {3, 7}, {17, 64}, {9, 1000},
                                    {3, 4097}, {64, 333}, {2, 14336}, {3, 4096}};
  for (int ki = 0; ki < nk; ki++) {
    glu_kind k = kinds[ki];
    int n = o->quick ? 5 : 9;
    for (int i = 0; i < n; i++) {
      const int64_t *s = o->quick ? quick[i] : full[i];
      glu_case(o, k, s[0], s[1], 0, &rng);
    }
    if (kind_split(k)) {
      /* the fast kernel's grid-stride loop, going round: more threads than
       * a row's chunks (the row carries), then fewer */
      gs_grid_cap = 100;
      glu_case(o, k, 17, 64, 0, &rng);
      gs_grid_cap = 5;
      glu_case(o, k, 3, 64, 0, &rng);
      gs_grid_cap = 0;
      for (int l = V_ROW_OFFSET; l <= V_OFFSET_3D; l++) glu_view_case(o, k, 3, 64, l, &rng);
      if (k == K_BIAS_SWIGLU) glu_view_case(o, k, 3, 64, V_BIAS_MISALIGNED, &rng);
      /* gradients where the forward alone would take the fast kernel: the
       * finite differences run it, the recorded VJP / JVP the engine */
      if (o->dtype == ZMLX_F32) glu_case(o, k, 3, 8, 1, &rng);
      glu_case(o, k, 4, 64, 2, &rng);
    }
    if (o->dtype == ZMLX_F32) glu_case(o, k, 3, 5, 1, &rng);
    glu_case(o, k, 3, 7, 2, &rng);
    if (!o->quick) glu_case(o, k, 33, 130, 2, &rng);
    glu_bad(o, k);
  }
  return ZMLX_OK;
}

static zmlx_status check_swiglu(const zmlx_check_opts *o) {
  const glu_kind k[] = {K_SWIGLU, K_SWIGLU_SPLIT};
  return glu_check_kinds(o, k, 2);
}
static zmlx_status check_geglu(const zmlx_check_opts *o) {
  const glu_kind k[] = {K_GEGLU, K_GEGLU_TANH, K_GEGLU_SPLIT, K_GEGLU_TANH_SPLIT};
  return glu_check_kinds(o, k, 4);
}
static zmlx_status check_bias_gelu(const zmlx_check_opts *o) {
  const glu_kind k[] = {K_BIAS_GELU, K_BIAS_GELU_TANH};
  return glu_check_kinds(o, k, 2);
}
static zmlx_status check_bias_silu(const zmlx_check_opts *o) {
  const glu_kind k[] = {K_BIAS_SILU};
  return glu_check_kinds(o, k, 1);
}
static zmlx_status check_bias_swiglu(const zmlx_check_opts *o) {
  const glu_kind k[] = {K_BIAS_SWIGLU};
  return glu_check_kinds(o, k, 1);
}

/* ------------------------------------------------------- dropout check */

static int host_keep(uint64_t seed, uint64_t i, uint32_t thresh) {
  uint64_t grp = i / 4;
  uint32_t c[4] = {(uint32_t)grp, (uint32_t)(grp >> 32), 0, 0};
  uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  uint32_t w[4];
  zmlx_philox4x32(c, key, w);
  return (w[i % 4] >> 8) >= thresh;
}

typedef struct drop_gctx {
  double p;
  uint64_t seed;
  zmlx_array *w;
} drop_gctx;

static zmlx_status drop_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  drop_gctx *g = ud;
  return zmlx_dropout(in[0], g->p, g->seed, out);
}

static zmlx_status drop_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  drop_gctx *g = ud;
  zmlx_array *y = NULL;
  ZMLX_CHECK(drop_fn(ud, in, n, &y));
  zmlx_status st = zmlx_opck_weighted_sum(y, g->w, out);
  zmlx_array_release(y);
  return st;
}

static void drop_case(const zmlx_check_opts *o, int64_t rows, int64_t D, double p, int mode,
                      uint64_t *rng) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = mode == 1 ? ZMLX_F32 : o->dtype;
  const char *what = mode == 0 ? "fwd" : mode == 1 ? "grad (fd)" : "grad (vjp)";
  char name[96];
  snprintf(name, sizeof name, "[%lld, %lld] p=%g", (long long)rows, (long long)D, p);
  int64_t sh[2] = {rows, D}, n = rows * D;
  uint64_t seed = (uint64_t)(zmlx_rg_uniform(rng) * 4294967296.0) |
                  ((uint64_t)(zmlx_rg_uniform(rng) * 4294967296.0) << 32);
  double *x = malloc(sizeof(double) * (size_t)n), *g = malloc(sizeof(double) * (size_t)n);
  double *got = NULL;
  zmlx_array *ax = NULL, *y = NULL, *w = NULL, *grad = NULL;
  zmlx_status st = ZMLX_OK;
  uint32_t th = drop_thresh(p);
  double scale = (float)(1.0 / (1.0 - p));
  double tol = zmlx_rg_tol(dt);
  if (!x || !g) {
    st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  st = zmlx_rg_random(dev, dt, 2, sh, 0.5, 2, rng, x, &ax); /* never 0: a 0 marks a drop */
  if (st != ZMLX_OK) goto done;
  if (mode == 0) {
    drop_cfg c = {p, seed};
    st = zmlx_array_full(dev, dt, 2, sh, NAN, &y);
    if (st == ZMLX_OK) st = drop_launch(ax, &c, y);
    if (st == ZMLX_OK) st = zmlx_rg_download(y, &got);
    if (st != ZMLX_OK) goto done;
    int64_t mism = 0, kept = 0;
    double e = 0;
    for (int64_t i = 0; i < n; i++) {
      int keep = host_keep(seed, (uint64_t)i, th);
      kept += keep;
      if (isnan(got[i]) || keep != (got[i] != 0)) mism++;
      double want = keep ? x[i] * scale : 0;
      double ei = fabs(got[i] - want) / (1 + fabs(want));
      if (isnan(ei)) ei = INFINITY;
      e = fmax(e, ei);
    }
    zmlx_rg_emit(o, "dropout", "fwd", dt, name, e, tol, e <= tol);
    zmlx_rg_emit(o, "dropout", "mask = host philox", dt, name, (double)mism, 0, mism == 0);
    double rate = (double)kept / (double)n, sd = sqrt(p * (1 - p) / (double)n);
    double dev_ = fabs(rate - (1 - p));
    double lim = 5 * sd + 1.0 / (double)n;
    zmlx_rg_emit(o, "dropout", "keep rate", dt, name, dev_, lim, dev_ <= lim);
  } else if (mode == 1) {
    st = zmlx_rg_random(dev, dt, 2, sh, -1, 1, rng, g, &w);
    if (st != ZMLX_OK) goto done;
    drop_gctx gc = {p, seed, w};
    zmlx_grad_check_report rep;
    st = zmlx_check_grad(drop_loss, &gc, &ax, 1, 1e-3, 1e-2, &rep);
    if (st != ZMLX_OK) goto done;
    double e = rep.inputs[0].max_abs_err;
    if (rep.jvp_checked) e = fmax(e, rep.jvp_abs_err);
    zmlx_rg_emit(o, "dropout", what, dt, name, e, 1e-2, rep.passed);
  } else {
    st = zmlx_rg_random(dev, dt, 2, sh, -1, 1, rng, g, &w);
    if (st != ZMLX_OK) goto done;
    drop_gctx gc = {p, seed, NULL};
    int argn = 0;
    st = zmlx_vjp(drop_fn, &gc, &ax, 1, &argn, 1, w, &y, &grad);
    if (st == ZMLX_OK) st = zmlx_rg_download(grad, &got);
    if (st != ZMLX_OK) goto done;
    double e = 0;
    for (int64_t i = 0; i < n; i++) {
      double want = host_keep(seed, (uint64_t)i, th) ? g[i] * scale : 0;
      double ei = fabs(got[i] - want) / (1 + fabs(want));
      if (isnan(ei)) ei = INFINITY;
      e = fmax(e, ei);
    }
    zmlx_rg_emit(o, "dropout", what, dt, name, e, tol, e <= tol);
  }
done:
  if (st != ZMLX_OK) zmlx_rg_emit_fail(o, "dropout", what, dt, name, st);
  free(x); free(g); free(got);
  zmlx_array_release(ax); zmlx_array_release(y); zmlx_array_release(w);
  zmlx_array_release(grad);
  zmlx_clear_error();
}

static zmlx_status check_dropout(const zmlx_check_opts *o) {
  ZMLX_REQUIRE_ARG(o);
  ZMLX_REQUIRE_ARG(o->device);
  uint64_t rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x64726F70ULL;
  if (!rng) rng = 1;
  drop_case(o, 1, 1, 0.5, 0, &rng);
  drop_case(o, 3, 7, 0.0, 0, &rng);
  drop_case(o, 64, 1000, 0.1, 0, &rng);
  drop_case(o, 16, 4097, 0.5, 0, &rng);
  if (!o->quick) {
    drop_case(o, 256, 4097, 0.3, 0, &rng);
    drop_case(o, 1, 100000, 0.9, 0, &rng);
  }
  if (o->dtype == ZMLX_F32) drop_case(o, 3, 5, 0.4, 1, &rng);
  drop_case(o, 7, 33, 0.25, 2, &rng);
  zmlx_array *a = NULL, *ai = NULL, *y = NULL;
  int64_t sh[2] = {2, 3};
  if (zmlx_array_zeros(o->device, o->dtype, 2, sh, &a) == ZMLX_OK &&
      zmlx_array_zeros(o->device, ZMLX_I32, 2, sh, &ai) == ZMLX_OK) {
    zmlx_rg_expect(o, "dropout", "bad: p = 1", zmlx_dropout(a, 1.0, 1, &y), y,
                   ZMLX_ERR_INVALID_ARG, "p = ");
    y = NULL;
    zmlx_rg_expect(o, "dropout", "bad: p < 0", zmlx_dropout(a, -0.1, 1, &y), y,
                   ZMLX_ERR_INVALID_ARG, "p = ");
    y = NULL;
    zmlx_rg_expect(o, "dropout", "bad: dtype i32", zmlx_dropout(ai, 0.5, 1, &y), y,
                   ZMLX_ERR_DTYPE, "dtype");
  } else {
    zmlx_rg_emit_fail(o, "dropout", "bad input", o->dtype, "setup", ZMLX_ERR_BACKEND);
  }
  zmlx_array_release(a);
  zmlx_array_release(ai);
  return ZMLX_OK;
}

const zmlx_catalog_op zmlx_catalog_glu_ops[] = {
    {"swiglu", check_swiglu},
    {"geglu", check_geglu},
    {"bias_gelu", check_bias_gelu},
    {"bias_silu", check_bias_silu},
    {"bias_swiglu", check_bias_swiglu},
    {"dropout", check_dropout},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef struct glu_bench {
  int split;
  zmlx_array *a, *b;
} glu_bench;

static zmlx_status glu_bench_run(void *p) {
  glu_bench *c = p;
  zmlx_array *y = NULL;
  zmlx_status st = c->split ? zmlx_swiglu_split(c->a, &y) : zmlx_swiglu(c->a, c->b, &y);
  zmlx_array_release(y);
  return st;
}

/* bf16 gate and up [16384, 14336] (or one [16384, 28672] split): read both,
 * write the product. */
static zmlx_status glu_bench_case(const zmlx_bench_opts *o, const char *op, int split) {
  int64_t shape[2] = {zmlx_bench_rows(o, 16384), 14336}, xshape[2] = {shape[0], 2 * shape[1]};
  glu_bench c = {split, NULL, NULL};
  zmlx_status st = split ? zmlx_bench_random(o->device, ZMLX_BF16, 2, xshape, 41, &c.a)
                         : zmlx_bench_random(o->device, ZMLX_BF16, 2, shape, 41, &c.a);
  if (st == ZMLX_OK && !split) st = zmlx_bench_random(o->device, ZMLX_BF16, 2, shape, 42, &c.b);
  double bytes = 3.0 * 2.0 * (double)shape[0] * (double)shape[1];
  if (st == ZMLX_OK)
    st = zmlx_bench_time_emit(o, op, ZMLX_BF16, 2, shape, bytes, glu_bench_run, &c);
  zmlx_array_release(c.a);
  zmlx_array_release(c.b);
  return st;
}

static zmlx_status bench_swiglu(const zmlx_bench_opts *o) {
  ZMLX_CHECK(glu_bench_case(o, "swiglu", 0));
  return glu_bench_case(o, "swiglu_split", 1);
}

const zmlx_catalog_bench zmlx_catalog_glu_bench[] = {
    {"swiglu", bench_swiglu},
    {0},
};
