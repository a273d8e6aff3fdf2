/* Quantization family (issue 5): int8 per-row symmetric and int4 packed
 * group-wise affine (de)quantization, dequantize optionally fused with
 * silu (include/zmlx.h, "catalog: quantization", documents the formats).
 * Kernels: src/ops/kernels/quant_dequant.zk (both formats, bandwidth
 * oriented), quant_q8.zk and quant_q4.zk (quantize), quant_vjp.zk (the
 * gradient with respect to scales and biases). Dequantize records itself
 * inside a grad call (VJP and JVP w.r.t. scales / biases); with silu it
 * then runs as dequantize -> silu expression op so the chain rule comes
 * from the engine. Quantize is not recorded. Checks and benchmarks:
 * src/check/quant_check.c. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "kernel/kernel.h"
#include "ops/kernel_util.h"
#include "runtime/internal.h"
#include "ops/quant.h"

extern const char zmlxi_res_quant_dequant_zk[];
extern const char zmlxi_res_quant_q8_zk[];
extern const char zmlxi_res_quant_q4_zk[];
extern const char zmlxi_res_quant_vjp_zk[];

/* Columns per thread of the int8 gradient's partial sums. */
#define VJP8_CHUNK 256

/* ------------------------------------------------------------ kernels */

enum { K_DQ, K_Q8, K_Q4, K_VJP4, K_VJP8 };

static const zmlx_kernel_spec SPECS[] = {
    [K_DQ] = ZMLX_KSPEC("zmlx_quant_dequant", zmlxi_res_quant_dequant_zk, "q, scales, biases", "out",
                        "n:i64, total:i64, cols:i64, gshift:i32, act:i32", .dense_inputs = 1),
    [K_Q8] = ZMLX_KSPEC("zmlx_quant_q8", zmlxi_res_quant_q8_zk, "x", "q, scales", "rows:i64, cols:i64",
                        .dense_inputs = 1),
    [K_Q4] = ZMLX_KSPEC("zmlx_quant_q4", zmlxi_res_quant_q4_zk, "x", "packed, scales, biases",
                        "n:i64, G:i32", .dense_inputs = 1),
    [K_VJP4] = ZMLX_KSPEC("zmlx_quant_vjp4", zmlxi_res_quant_vjp_zk, "q, g", "gs, gb",
                          "n:i64, cols:i64, nch:i64, G:i32", .dense_inputs = 1),
    [K_VJP8] = ZMLX_KSPEC("zmlx_quant_vjp8", zmlxi_res_quant_vjp_zk, "q, g", "gs",
                          "n:i64, cols:i64, nch:i64, G:i32", .dense_inputs = 1),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("quantization", SPECS);

/* ------------------------------------------------------------ validation */


static zmlx_status need_float(const char *op, const char *name, const zmlx_array *a) {
  if (!a) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: argument '%s' is NULL", op, name);
  if (!zmlxi_dtype_is_f32_f16_bf16(a->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: %s has dtype %s; f32, f16 or bf16 is needed", op, name,
                     zmlx_dtype_name(a->dtype));
  return ZMLX_OK;
}

static zmlx_status need_dtype_arg(const char *op, const char *name, zmlx_dtype dt) {
  if ((int)dt < 0 || dt >= ZMLX_DTYPE_COUNT || !zmlxi_dtype_is_f32_f16_bf16(dt))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: %s %s is not supported; use f32, f16 or bf16", op, name,
                     zmlx_dtype_name(dt));
  return ZMLX_OK;
}

static zmlx_status need_group(const char *op, int g) {
  if (g != 32 && g != 64 && g != 128)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: group_size %d is not supported; use 32, 64 or 128",
                     op, g);
  return ZMLX_OK;
}

static zmlx_status need_act(const char *op, zmlx_quant_act act) {
  if (act != ZMLX_QUANT_NONE && act != ZMLX_QUANT_SILU)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: act %d is not ZMLX_QUANT_NONE or ZMLX_QUANT_SILU",
                     op, (int)act);
  return ZMLX_OK;
}

static zmlx_status need_same_device(const char *op, const zmlx_array *a, const char *an,
                                    const zmlx_array *b, const char *bn) {
  if (a->buffer->device != b->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: %s and %s are on different devices", op, an, bn);
  return ZMLX_OK;
}

/* a must have exactly (ndim, shape); names both shapes otherwise. */
static zmlx_status need_shape(const char *op, const char *name, const zmlx_array *a, int ndim,
                              const int64_t *shape, const char *rule, const char *ref_name,
                              const zmlx_array *ref) {
  if (a->ndim == ndim &&
      (ndim == 0 || memcmp(a->shape, shape, sizeof(int64_t) * (size_t)ndim) == 0))
    return ZMLX_OK;
  char s1[96], s2[96], s3[96];
  return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: %s has shape %s but must be %s (%s) for %s %s", op, name,
                   zmlxi_shape_str(s1, sizeof s1, a->ndim, a->shape),
                   zmlxi_shape_str(s2, sizeof s2, ndim, shape), rule, ref_name,
                   zmlxi_shape_str(s3, sizeof s3, ref->ndim, ref->shape));
}

static zmlx_status need_rank(const char *op, const char *name, const zmlx_array *a) {
  if (a->ndim < 1)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: %s must have rank >= 1 ([..., cols]), got a scalar", op,
                     name);
  return ZMLX_OK;
}

zmlx_status zmlxi_dequantize_int8_validate(const char *op, zmlx_array *q, zmlx_array *s, zmlx_dtype odt,
                                          zmlx_quant_act act) {
  if (!q) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: argument 'q' is NULL", op);
  if (q->dtype != ZMLX_I8)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: q has dtype %s; i8 is needed", op,
                     zmlx_dtype_name(q->dtype));
  ZMLX_CHECK(need_rank(op, "q", q));
  ZMLX_CHECK(need_float(op, "scales", s));
  ZMLX_CHECK(need_shape(op, "scales", s, q->ndim - 1, q->shape, "q's shape without its last axis",
                        "q", q));
  ZMLX_CHECK(need_same_device(op, q, "q", s, "scales"));
  ZMLX_CHECK(need_dtype_arg(op, "out_dtype", odt));
  return need_act(op, act);
}

/* The [..., cols / group] shape of int4 scales for [..., cols]. */
static void group_shape(const zmlx_array *a, int64_t cols, int group, int64_t *shape) {
  for (int i = 0; i < a->ndim - 1; i++) shape[i] = a->shape[i];
  shape[a->ndim - 1] = cols / group;
}

zmlx_status zmlxi_dequantize_int4_validate(const char *op, zmlx_array *p, zmlx_array *s, zmlx_array *b,
                                          int group, zmlx_dtype odt, zmlx_quant_act act) {
  char s1[96];
  if (!p) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: argument 'packed' is NULL", op);
  if (p->dtype != ZMLX_U8)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: packed has dtype %s; u8 (two int4 per byte) is needed",
                     op, zmlx_dtype_name(p->dtype));
  ZMLX_CHECK(need_rank(op, "packed", p));
  ZMLX_CHECK(need_group(op, group));
  const int64_t cols = 2 * p->shape[p->ndim - 1];
  if (cols % group != 0)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: cols = 2 x packed's last dim = %lld (packed %s) is not a "
                     "multiple of group_size %d", op, (long long)cols,
                     zmlxi_shape_str(s1, sizeof s1, p->ndim, p->shape), group);
  ZMLX_CHECK(need_float(op, "scales", s));
  ZMLX_CHECK(need_float(op, "biases", b));
  int64_t gs[ZMLX_MAX_DIMS];
  group_shape(p, cols, group, gs);
  ZMLX_CHECK(need_shape(op, "scales", s, p->ndim, gs, "[..., cols / group_size]", "packed", p));
  ZMLX_CHECK(need_shape(op, "biases", b, p->ndim, gs, "[..., cols / group_size]", "packed", p));
  ZMLX_CHECK(need_same_device(op, p, "packed", s, "scales"));
  ZMLX_CHECK(need_same_device(op, p, "packed", b, "biases"));
  ZMLX_CHECK(need_dtype_arg(op, "out_dtype", odt));
  return need_act(op, act);
}

zmlx_status zmlxi_quantize_validate(const char *op, int mode, zmlx_array *x, int group,
                                   zmlx_dtype sdt) {
  char s1[96];
  ZMLX_CHECK(need_float(op, "x", x));
  ZMLX_CHECK(need_rank(op, "x", x));
  const int64_t cols = x->shape[x->ndim - 1];
  if (cols == 0)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: the last dim of x %s is 0", op,
                     zmlxi_shape_str(s1, sizeof s1, x->ndim, x->shape));
  if (mode == 4) {
    ZMLX_CHECK(need_group(op, group));
    if (cols % group != 0)
      return zmlxi_fail(ZMLX_ERR_SHAPE,
                       "%s: the last dim of x %s is not a multiple of group_size %d", op,
                       zmlxi_shape_str(s1, sizeof s1, x->ndim, x->shape), group);
  }
  return need_dtype_arg(op, "scale_dtype", sdt);
}

/* ------------------------------------------------------------ launches */

/* Whether a dense array's first element is `align`-byte aligned (a strided
 * one is copied to a fresh buffer by the kernel object). */
static int aligned(const zmlx_array *a, size_t align) {
  if (!zmlx_array_is_contiguous(a)) return 1;
  return ((size_t)a->offset * zmlx_dtype_size(a->dtype)) % align == 0;
}

/* out (dense, offset 0, [..., cols]) = act(dequantize). mode 8: b unused. */
zmlx_status zmlxi_dequantize_launch(int mode, zmlx_array *q, zmlx_array *s, zmlx_array *b, int group,
                                   zmlx_quant_act act, zmlx_array *out) {
  const int64_t total = out->size;
  if (total == 0) return ZMLX_OK;
  const int64_t cols = out->shape[out->ndim - 1];
  int vec;
  int64_t n;
  if (mode == 4) {
    vec = aligned(q, 8);
    n = total / 16;
  } else {
    vec = 0;
    for (int v = 16; v >= 4 && !vec; v /= 2)
      if (cols % v == 0 && aligned(q, (size_t)v)) vec = v;
    n = vec ? total / vec : (total + 3) / 4;
  }
  zmlx_array *in[3] = {q, s, b ? b : s};
  zmlx_array *outs[1] = {out};
  int gshift = 0;
  while (mode == 4 && (1 << gshift) < group) gshift++;
  double params[5] = {(double)n, (double)total, (double)cols, (double)gshift, (double)act};
  zmlx_template_arg t[4] = {{"MODE", ZMLX_TEMPLATE_INT, ZMLX_F32, mode},
                            {"ODT", ZMLX_TEMPLATE_INT, ZMLX_F32, zmlxi_ops_xdt(out->dtype)},
                            {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                            {"IDX32", ZMLX_TEMPLATE_BOOL, ZMLX_F32, total < ((int64_t)1 << 31)}};
  zmlx_kernel_call call = {.n_inputs = 3, .n_outputs = 1, .inputs = in, .outputs = outs,
                           .templates = t, .n_templates = 4, .params = params,
                           .device = q->buffer->device};
  zmlxi_kernel_call_grid_1d(&call, n);
  return zmlxi_kernel_set_launch(&KERNELS, K_DQ, &call);
}

/* Quantize into preallocated dense outputs (b: int4 only). */
zmlx_status zmlxi_quantize_launch(int mode, zmlx_array *x, int group, zmlx_array *q, zmlx_array *s,
                                 zmlx_array *b) {
  const int64_t cols = x->shape[x->ndim - 1];
  const int64_t rows = x->size / cols;
  if (rows == 0) return ZMLX_OK;
  zmlx_template_arg t[1] = {{"SDT", ZMLX_TEMPLATE_INT, ZMLX_F32, zmlxi_ops_xdt(s->dtype)}};
  if (mode == 8) {
    zmlx_array *outs[2] = {q, s};
    double params[2] = {(double)rows, (double)cols};
    zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 2, .inputs = &x, .outputs = outs,
                             .templates = t, .n_templates = 1, .params = params,
                             .device = x->buffer->device};
    zmlx_device_info info;
    int max_tg = 256;
    if (zmlx_device_get_info(x->buffer->device, &info) == ZMLX_OK &&
        info.max_threads_per_threadgroup < max_tg)
      max_tg = info.max_threads_per_threadgroup;
    int tg = 1; /* a power of two (the tree), no larger than the row needs */
    while (tg * 2 <= max_tg && tg < cols) tg *= 2;
    int64_t groups = rows < 65536 ? rows : 65536;
    call.grid[0] = groups * tg;
    call.grid[1] = call.grid[2] = 1;
    call.threadgroup[0] = tg;
    call.threadgroup[1] = call.threadgroup[2] = 1;
    return zmlxi_kernel_set_launch(&KERNELS, K_Q8, &call);
  }
  zmlx_array *outs[3] = {q, s, b};
  const int64_t n = x->size / group;
  double params[2] = {(double)n, (double)group};
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 3, .inputs = &x, .outputs = outs,
                           .templates = t, .n_templates = 1, .params = params,
                           .device = x->buffer->device};
  zmlxi_kernel_call_grid_1d(&call, n);
  call.threadgroup[0] = 64;
  return zmlxi_kernel_set_launch(&KERNELS, K_Q4, &call);
}

/* ------------------------------------------------------------ autograd */

typedef struct dq_ctx {
  int mode, group;
} dq_ctx;

/* Gradient of act-free dequantize w.r.t. scales / biases: f32 arrays of the
 * scales' shape (NULL where not needed). */
static zmlx_status dq_grads(const dq_ctx *c, zmlx_array *q, zmlx_array *g,
                            const zmlx_ad_meta *sm, int want_s, int want_b, zmlx_array **gs,
                            zmlx_array **gb) {
  const int64_t cols = g->shape[g->ndim - 1];
  const int64_t rows = cols ? g->size / cols : 0;
  if (rows == 0 || cols == 0) return ZMLX_OK; /* NULL: zero */
  zmlx_device *dev = g->buffer->device;
  zmlx_array *s_out = NULL, *b_out = NULL;
  zmlx_status st;
  if (c->mode == 4) {
    const int64_t n = g->size / c->group;
    st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, sm->ndim, sm->shape, &s_out);
    if (st == ZMLX_OK) st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, sm->ndim, sm->shape, &b_out);
    if (st == ZMLX_OK) {
      zmlx_array *in[2] = {q, g}, *outs[2] = {s_out, b_out};
      double params[4] = {(double)n, (double)cols, 1, (double)c->group};
      zmlx_template_arg t[2] = {{"MODE", ZMLX_TEMPLATE_INT, ZMLX_F32, 4},
                                {"CH", ZMLX_TEMPLATE_INT, ZMLX_F32, 0}};
      zmlx_kernel_call call = {.n_inputs = 2, .n_outputs = 2, .inputs = in, .outputs = outs,
                               .templates = t, .n_templates = 2, .params = params, .device = dev};
      zmlxi_kernel_call_grid_1d(&call, n);
      call.threadgroup[0] = 64;
      st = zmlxi_kernel_set_launch(&KERNELS, K_VJP4, &call);
    }
  } else {
    const int64_t nch = (cols + VJP8_CHUNK - 1) / VJP8_CHUNK;
    const int64_t n = rows * nch;
    zmlx_array *part = NULL;
    int64_t psh[2] = {rows, nch};
    st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 2, psh, &part);
    if (st == ZMLX_OK) {
      zmlx_array *in[2] = {q, g}, *outs[1] = {part};
      double params[4] = {(double)n, (double)cols, (double)nch, 0};
      zmlx_template_arg t[2] = {{"MODE", ZMLX_TEMPLATE_INT, ZMLX_F32, 8},
                                {"CH", ZMLX_TEMPLATE_INT, ZMLX_F32, VJP8_CHUNK}};
      zmlx_kernel_call call = {.n_inputs = 2, .n_outputs = 1, .inputs = in, .outputs = outs,
                               .templates = t, .n_templates = 2, .params = params, .device = dev};
      zmlxi_kernel_call_grid_1d(&call, n);
      call.threadgroup[0] = 64;
      st = zmlxi_kernel_set_launch(&KERNELS, K_VJP8, &call);
    }
    zmlx_array *sum = NULL;
    if (st == ZMLX_OK && nch > 1) {
      int ax = 1;
      st = zmlx_sum(part, &ax, 1, 0, &sum);
    } else if (st == ZMLX_OK) {
      sum = part;
      part = NULL;
    }
    if (st == ZMLX_OK) st = zmlx_array_reshape(sum, sm->ndim, sm->shape, &s_out);
    zmlx_array_release(part);
    zmlx_array_release(sum);
  }
  if (st != ZMLX_OK) {
    zmlx_array_release(s_out);
    zmlx_array_release(b_out);
    return st;
  }
  if (want_s) *gs = s_out;
  else zmlx_array_release(s_out);
  if (want_b) *gb = b_out;
  else zmlx_array_release(b_out);
  return ZMLX_OK;
}

static zmlx_status dq_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                          zmlx_array **grads) {
  const dq_ctx *c = n->ctx;
  int want_s = need[1], want_b = c->mode == 4 && need[2];
  if (!want_s && !want_b) return ZMLX_OK;
  return dq_grads(c, n->in[0], cot[0], &n->in_meta[1], want_s, want_b, &grads[1],
                  c->mode == 4 ? &grads[2] : NULL);
}

/* Linear in (scales, biases): the tangent is the dequantize of the tangents. */
static zmlx_status dq_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out_tan) {
  const dq_ctx *c = n->ctx;
  zmlx_array *ts = tan[1], *tb = c->mode == 4 ? tan[2] : NULL;
  if (!ts && !tb) return ZMLX_OK;
  zmlx_array *zs = NULL, *zb = NULL, *y = NULL;
  zmlx_status st = ZMLX_OK;
  if (!ts) st = zmlxi_ad_zeros(&n->in_meta[1], &zs);
  if (st == ZMLX_OK && c->mode == 4 && !tb) st = zmlxi_ad_zeros(&n->in_meta[2], &zb);
  const zmlx_ad_meta *om = &n->out_meta[0];
  if (st == ZMLX_OK) st = zmlxi_array_alloc(om->device, NULL, om->dtype, om->ndim, om->shape, &y);
  if (st == ZMLX_OK)
    st = zmlxi_dequantize_launch(c->mode, n->in[0], ts ? ts : zs, c->mode == 4 ? (tb ? tb : zb) : NULL, c->group,
                   ZMLX_QUANT_NONE, y);
  zmlx_array_release(zs);
  zmlx_array_release(zb);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  out_tan[0] = y;
  return ZMLX_OK;
}

static const zmlx_ad_rule DQ_RULE = {"dequantize", dq_vjp, dq_jvp, free};

/* ------------------------------------------------------------ the ops */

/* Dequantize after validation: allocate, launch, record. */
static zmlx_status dq_run(const char *op, int mode, zmlx_array *q, zmlx_array *s, zmlx_array *b,
                          int group, zmlx_dtype odt, zmlx_quant_act act, zmlx_array **out) {
  zmlx_array *in[3] = {q, s, b};
  const int n_in = mode == 4 ? 3 : 2;
  const int record = zmlxi_ad_should_record(in, n_in);
  if (record && act == ZMLX_QUANT_SILU) {
    /* Differentiated: dequantize (recorded) then silu as an expression op,
     * so the chain rule (silu') is the engine's; same f32 arithmetic. */
    static const char *const names[] = {"w"};
    zmlx_array *w = NULL, *y = NULL;
    zmlx_status st = dq_run(op, mode, q, s, b, group, ZMLX_F32, ZMLX_QUANT_NONE, &w);
    if (st == ZMLX_OK) st = zmlx_apply_expr("silu(w)", names, &w, 1, NULL, NULL, 0, &y);
    zmlx_array_release(w);
    if (st == ZMLX_OK && odt != y->dtype) {
      st = zmlx_astype(y, odt, out);
      zmlx_array_release(y);
    } else if (st == ZMLX_OK) {
      *out = y;
    } else {
      zmlx_array_release(y);
    }
    return st;
  }
  int64_t shape[ZMLX_MAX_DIMS];
  for (int i = 0; i < q->ndim; i++) shape[i] = q->shape[i];
  if (mode == 4) shape[q->ndim - 1] *= 2; /* two int4 per byte */
  zmlx_array *y = NULL;
  ZMLX_CHECK(zmlxi_array_alloc(q->buffer->device, NULL, odt, q->ndim, shape, &y));
  zmlx_status st = zmlxi_dequantize_launch(mode, q, s, b, group, act, y);
  if (st == ZMLX_OK && record) {
    dq_ctx *c = malloc(sizeof *c);
    if (!c) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    else {
      c->mode = mode;
      c->group = group;
      st = zmlxi_ad_record(&DQ_RULE, c, in, n_in, &y, 1, ZMLX_AD_SAVE_INPUTS);
    }
  }
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  *out = y;
  return ZMLX_OK;
}

zmlx_status zmlx_dequantize_int8_rows(zmlx_array *q, zmlx_array *scales, zmlx_dtype out_dtype,
                                      zmlx_quant_act act, zmlx_array **out) {
  static const char op[] = "dequantize_int8_rows";
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(zmlxi_dequantize_int8_validate(op, q, scales, out_dtype, act));
  return dq_run(op, 8, q, scales, NULL, 0, out_dtype, act, out);
}

zmlx_status zmlx_dequantize_int4(zmlx_array *packed, zmlx_array *scales, zmlx_array *biases,
                                 int group_size, zmlx_dtype out_dtype, zmlx_quant_act act,
                                 zmlx_array **out) {
  static const char op[] = "dequantize_int4";
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(zmlxi_dequantize_int4_validate(op, packed, scales, biases, group_size, out_dtype, act));
  return dq_run(op, 4, packed, scales, biases, group_size, out_dtype, act, out);
}

/* Outputs of quantize, allocated (q: i8 [..., cols] or u8 [..., cols/2]). */
static zmlx_status q_alloc(int mode, zmlx_array *x, int group, zmlx_dtype sdt, zmlx_array **q,
                           zmlx_array **s, zmlx_array **b) {
  zmlx_device *dev = x->buffer->device;
  const int64_t cols = x->shape[x->ndim - 1];
  int64_t shape[ZMLX_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
  if (mode == 8) {
    ZMLX_CHECK(zmlxi_array_alloc(dev, NULL, ZMLX_I8, x->ndim, shape, q));
    return zmlxi_array_alloc(dev, NULL, sdt, x->ndim - 1, shape, s);
  }
  shape[x->ndim - 1] = cols / 2;
  ZMLX_CHECK(zmlxi_array_alloc(dev, NULL, ZMLX_U8, x->ndim, shape, q));
  shape[x->ndim - 1] = cols / group;
  ZMLX_CHECK(zmlxi_array_alloc(dev, NULL, sdt, x->ndim, shape, s));
  return zmlxi_array_alloc(dev, NULL, sdt, x->ndim, shape, b);
}

static zmlx_status q_run(const char *op, int mode, zmlx_array *x, int group, zmlx_dtype sdt,
                         zmlx_array **q, zmlx_array **s, zmlx_array **b) {
  ZMLX_CHECK(zmlxi_quantize_validate(op, mode, x, group, sdt));
  zmlx_array *aq = NULL, *as = NULL, *ab = NULL;
  zmlx_status st = q_alloc(mode, x, group, sdt, &aq, &as, &ab);
  if (st == ZMLX_OK) st = zmlxi_quantize_launch(mode, x, group, aq, as, ab);
  if (st != ZMLX_OK) {
    zmlx_array_release(aq);
    zmlx_array_release(as);
    zmlx_array_release(ab);
    return st;
  }
  *q = aq;
  *s = as;
  if (b) *b = ab;
  return ZMLX_OK;
}

zmlx_status zmlx_quantize_int8_rows(zmlx_array *x, zmlx_dtype scale_dtype, zmlx_array **q,
                                    zmlx_array **scales) {
  ZMLX_REQUIRE_ARG(q);
  ZMLX_REQUIRE_ARG(scales);
  *q = *scales = NULL;
  return q_run("quantize_int8_rows", 8, x, 0, scale_dtype, q, scales, NULL);
}

zmlx_status zmlx_quantize_int4(zmlx_array *x, int group_size, zmlx_dtype scale_dtype,
                               zmlx_array **packed, zmlx_array **scales, zmlx_array **biases) {
  ZMLX_REQUIRE_ARG(packed);
  ZMLX_REQUIRE_ARG(scales);
  ZMLX_REQUIRE_ARG(biases);
  *packed = *scales = *biases = NULL;
  return q_run("quantize_int4", 4, x, group_size, scale_dtype, packed, scales, biases);
}
