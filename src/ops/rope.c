/* Rotary position embedding (issue 5): half-split and interleaved, partial
 * rotary dims, base and scale, per-sequence offsets or per-token positions,
 * in-kernel or tabled cos/sin, GQA through zmlx_rope_qk. One dialect kernel (kernels/rope.zk)
 * does a pass over x; the VJP is the same kernel rotating backwards (and,
 * being itself this op, is differentiable again). Checks and benchmarks:
 * src/check/rope_check.c. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "kernel/kernel.h"
#include "ops/kernel_util.h"
#include "ops/rope.h"

extern const char zmlxi_res_rope_zk[];

/* ------------------------------------------------------------ kernels */

enum { K_ROPE };

static const zmlx_kernel_spec SPECS[] = {
    [K_ROPE] = ZMLX_KSPEC("zmlx_rope", zmlxi_res_rope_zk, "x, offsets, cosv, sinv", "out",
                          "n:i64, W:i32, S:i32, H:i32, D:i32, R:i32, layout:i32, table_len:i32, sgn:f32, "
                          "log2_base:f32, scale:f32", .dense_inputs = 1),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("rope", SPECS);

/* ------------------------------------------------------------ the op */


static int64_t seq_of(const zmlx_array *x, const rope_cfg *c) {
  return c->o.layout == ZMLX_ROPE_BSHD ? x->shape[1] : x->shape[2];
}

static zmlx_status validate_positions(const zmlx_array *p, const zmlx_array *x,
                                      const zmlx_array *offsets, int64_t seq) {
  char buf[96];
  if (offsets)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG,
                     "rope: give offsets or positions, not both (positions are absolute)");
  if (p->dtype != ZMLX_I32)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "rope: positions must be i32, got %s",
                     zmlx_dtype_name(p->dtype));
  if (p->ndim != 2 || p->shape[0] != x->shape[0] || p->shape[1] != seq)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "rope: positions must be [batch, seq] = [%lld, %lld], got %s",
                     (long long)x->shape[0], (long long)seq,
                     zmlxi_shape_str(buf, sizeof buf, p->ndim, p->shape));
  if (p->buffer->device != x->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "rope: positions are on another device than x");
  return ZMLX_OK;
}

/* `arg` names x as the user's call does, e.g. "zmlx_rope_qk: argument 'q'". */
zmlx_status zmlxi_rope_validate(const char *arg, zmlx_array *x, const zmlx_rope_opts *in,
                               rope_cfg *c) {
  if (!x) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s is NULL", arg);
  memset(c, 0, sizeof *c);
  if (in) c->o = *in;
  c->sgn = 1.0f;
  char buf[96];
  if (!zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "rope: x has dtype %s; supported: f32, f16, bf16",
                     zmlx_dtype_name(x->dtype));
  if (x->ndim != 4)
    return zmlxi_fail(ZMLX_ERR_SHAPE,
                     "rope: x must have rank 4 ([batch, seq, heads, head_dim] or [batch, heads, "
                     "seq, head_dim]), got rank %d %s",
                     x->ndim, zmlxi_shape_str(buf, sizeof buf, x->ndim, x->shape));
  if (c->o.mode != ZMLX_ROPE_HALF_SPLIT && c->o.mode != ZMLX_ROPE_INTERLEAVED)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "rope: unknown mode %d", (int)c->o.mode);
  if (c->o.layout != ZMLX_ROPE_BSHD && c->o.layout != ZMLX_ROPE_BHSD)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "rope: unknown layout %d", (int)c->o.layout);
  int64_t D = x->shape[3];
  if (c->o.rotary_dims < 0)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "rope: rotary_dims %d is negative", c->o.rotary_dims);
  if (c->o.rotary_dims == 0) {
    if (D % 2 != 0)
      return zmlxi_fail(ZMLX_ERR_SHAPE,
                       "rope: head_dim %lld is odd; rotating all of it needs an even head_dim "
                       "(half-split pairs i with i + head_dim/2): give an even rotary_dims",
                       (long long)D);
    c->o.rotary_dims = (int)D;
  }
  if (c->o.rotary_dims > D)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "rope: rotary_dims %d > head_dim %lld", c->o.rotary_dims,
                     (long long)D);
  if (c->o.rotary_dims % 2 != 0)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "rope: rotary_dims %d is odd (pairs need it even)",
                     c->o.rotary_dims);
  if (c->o.base == 0) c->o.base = 10000.0;
  if (!(c->o.base > 0) || !isfinite(c->o.base))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "rope: base %g must be positive", c->o.base);
  if (c->o.scale == 0) c->o.scale = 1.0;
  if (!isfinite(c->o.scale))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "rope: scale %g is not finite", c->o.scale);
  int64_t B = x->shape[0];
  if (c->o.offsets) {
    zmlx_array *f = c->o.offsets;
    if (f->dtype != ZMLX_I32)
      return zmlxi_fail(ZMLX_ERR_DTYPE, "rope: offsets must be i32, got %s",
                       zmlx_dtype_name(f->dtype));
    if (f->ndim != 1 || f->shape[0] != B)
      return zmlxi_fail(ZMLX_ERR_SHAPE, "rope: offsets must be [batch] = [%lld], got %s",
                       (long long)B, zmlxi_shape_str(buf, sizeof buf, f->ndim, f->shape));
    if (f->buffer->device != x->buffer->device)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "rope: offsets are on another device than x");
  }
  if (c->o.positions) ZMLX_CHECK(validate_positions(c->o.positions, x, c->o.offsets, seq_of(x, c)));
  if ((c->o.cos == NULL) != (c->o.sin == NULL))
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "rope: give both cos and sin tables, or neither");
  if (c->o.cos) {
    zmlx_array *t[2] = {c->o.cos, c->o.sin};
    const char *nm[2] = {"cos", "sin"};
    for (int i = 0; i < 2; i++) {
      if (t[i]->dtype != ZMLX_F32)
        return zmlxi_fail(ZMLX_ERR_DTYPE, "rope: the %s table must be f32, got %s", nm[i],
                         zmlx_dtype_name(t[i]->dtype));
      if (t[i]->ndim != 2 || t[i]->shape[1] != c->o.rotary_dims / 2 || t[i]->shape[0] < 1)
        return zmlxi_fail(ZMLX_ERR_SHAPE,
                         "rope: the %s table must be [max_pos, rotary_dims/2 = %d], got %s",
                         nm[i], c->o.rotary_dims / 2,
                         zmlxi_shape_str(buf, sizeof buf, t[i]->ndim, t[i]->shape));
      if (t[i]->buffer->device != x->buffer->device)
        return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "rope: the %s table is on another device", nm[i]);
    }
    if (c->o.sin->shape[0] != c->o.cos->shape[0])
      return zmlxi_fail(ZMLX_ERR_SHAPE, "rope: cos and sin tables differ in length");
  }
  int64_t seq = c->o.layout == ZMLX_ROPE_BSHD ? x->shape[1] : x->shape[2];
  int64_t heads = c->o.layout == ZMLX_ROPE_BSHD ? x->shape[2] : x->shape[1];
  if (seq > INT32_MAX || heads > INT32_MAX || D > INT32_MAX)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "rope: a dimension of x exceeds 2^31");
  return ZMLX_OK;
}

/* out (dense, preallocated, x's shape and dtype) = rope of x. */
zmlx_status zmlxi_rope_launch(zmlx_array *x, const rope_cfg *c, zmlx_array *out) {
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_ROPE, &k));
  if (x->size == 0) return ZMLX_OK;
  const zmlx_rope_opts *o = &c->o;
  int64_t D = x->shape[3];
  int64_t S = o->layout == ZMLX_ROPE_BSHD ? x->shape[1] : x->shape[2];
  int64_t H = o->layout == ZMLX_ROPE_BSHD ? x->shape[2] : x->shape[1];
  int64_t rows = x->size / (D * H); /* batch * seq */
  int64_t W = D - o->rotary_dims / 2;
  zmlx_array *dummy = NULL;
  /* positions ride in the offsets slot (HAS_POS reads them per token) */
  zmlx_array *in[4] = {x, o->positions ? o->positions : o->offsets, o->cos, o->sin};
  if (!in[1] || !o->cos) {
    int64_t one = 1;
    ZMLX_CHECK(zmlx_array_zeros(x->buffer->device, ZMLX_I32, 1, &one, &dummy));
    if (!in[1]) in[1] = dummy;
    if (!in[2]) in[2] = dummy;
    if (!in[3]) in[3] = dummy;
  }
  double params[11] = {(double)(rows * W), (double)W, (double)S, (double)H, (double)D,
                       (double)o->rotary_dims, (double)o->layout,
                       (double)(o->cos ? o->cos->shape[0] : 1), (double)c->sgn,
                       log2(o->base), o->scale};
  zmlx_template_arg t[5] = {
      {.name = "INTERLEAVED", .kind = ZMLX_TEMPLATE_BOOL, .value = o->mode == ZMLX_ROPE_INTERLEAVED},
      {.name = "HAS_OFF", .kind = ZMLX_TEMPLATE_BOOL, .value = o->offsets != NULL},
      {.name = "HAS_POS", .kind = ZMLX_TEMPLATE_BOOL, .value = o->positions != NULL},
      {.name = "HAS_TABLE", .kind = ZMLX_TEMPLATE_BOOL, .value = o->cos != NULL},
      {.name = "IDX32", .kind = ZMLX_TEMPLATE_BOOL, .value = rows * W < ((int64_t)1 << 31)}};
  zmlx_kernel_call call = {.n_inputs = 4, .n_outputs = 1, .inputs = in, .outputs = &out,
                           .templates = t, .n_templates = 5, .params = params,
                           .device = x->buffer->device};
  zmlxi_kernel_call_grid_1d(&call, rows * W);
  zmlx_status st = zmlx_kernel_launch(k, &call);
  zmlx_array_release(dummy);
  return st;
}

static zmlx_status rope_apply(zmlx_array *x, const rope_cfg *c, zmlx_array **out);

static void rope_free_ctx(void *p) {
  rope_cfg *c = p;
  zmlx_array_release(c->o.offsets);
  zmlx_array_release(c->o.positions);
  zmlx_array_release(c->o.cos);
  zmlx_array_release(c->o.sin);
  free(c);
}

static zmlx_status rope_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                            zmlx_array **grads) {
  if (!need[0]) return ZMLX_OK;
  rope_cfg c = *(const rope_cfg *)n->ctx;
  c.sgn = -c.sgn;
  return rope_apply(cot[0], &c, &grads[0]);
}

static zmlx_status rope_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out_tan) {
  if (!tan[0]) return ZMLX_OK;
  return rope_apply(tan[0], (const rope_cfg *)n->ctx, &out_tan[0]);
}

static const zmlx_ad_rule ROPE_RULE = {"rope", rope_vjp, rope_jvp, rope_free_ctx};

static zmlx_status rope_apply(zmlx_array *x, const rope_cfg *c, zmlx_array **out) {
  zmlx_array *y = NULL;
  ZMLX_CHECK(zmlxi_array_alloc(x->buffer->device, NULL, x->dtype, x->ndim, x->shape, &y));
  zmlx_status st = zmlxi_rope_launch(x, c, y);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  if (zmlxi_ad_should_record(&x, 1)) {
    rope_cfg *cc = malloc(sizeof *cc);
    if (!cc) {
      zmlx_array_release(y);
      return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    *cc = *c;
    if (cc->o.offsets) zmlx_array_retain(cc->o.offsets);
    if (cc->o.positions) zmlx_array_retain(cc->o.positions);
    if (cc->o.cos) zmlx_array_retain(cc->o.cos);
    if (cc->o.sin) zmlx_array_retain(cc->o.sin);
    st = zmlxi_ad_record(&ROPE_RULE, cc, &x, 1, &y, 1, 0);
    if (st != ZMLX_OK) {
      zmlx_array_release(y);
      return st;
    }
  }
  *out = y;
  return ZMLX_OK;
}

zmlx_status zmlx_rope(zmlx_array *x, const zmlx_rope_opts *opts, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  rope_cfg c;
  ZMLX_CHECK(zmlxi_rope_validate("zmlx_rope: argument 'x'", x, opts, &c));
  return rope_apply(x, &c, out);
}

zmlx_status zmlx_rope_qk(zmlx_array *q, zmlx_array *k, const zmlx_rope_opts *opts,
                         zmlx_array **q_out, zmlx_array **k_out) {
  ZMLX_REQUIRE_ARG(q_out);
  ZMLX_REQUIRE_ARG(k_out);
  *q_out = *k_out = NULL;
  rope_cfg cq, ck;
  ZMLX_CHECK(zmlxi_rope_validate("zmlx_rope_qk: argument 'q'", q, opts, &cq));
  ZMLX_CHECK(zmlxi_rope_validate("zmlx_rope_qk: argument 'k'", k, opts, &ck));
  int lay = cq.o.layout;
  int seq_ax = lay == ZMLX_ROPE_BSHD ? 1 : 2;
  char b1[96], b2[96];
  if (q->shape[0] != k->shape[0] || q->shape[seq_ax] != k->shape[seq_ax] ||
      q->shape[3] != k->shape[3])
    return zmlxi_fail(ZMLX_ERR_SHAPE,
                     "rope_qk: q %s and k %s must agree in batch, seq and head_dim (only the "
                     "head counts may differ)",
                     zmlxi_shape_str(b1, sizeof b1, q->ndim, q->shape),
                     zmlxi_shape_str(b2, sizeof b2, k->ndim, k->shape));
  if (q->dtype != k->dtype)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "rope_qk: q is %s but k is %s", zmlx_dtype_name(q->dtype),
                     zmlx_dtype_name(k->dtype));
  if (q->buffer->device != k->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "rope_qk: q and k are on different devices");
  ZMLX_CHECK(rope_apply(q, &cq, q_out));
  zmlx_status st = rope_apply(k, &ck, k_out);
  if (st != ZMLX_OK) {
    zmlx_array_release(*q_out);
    *q_out = NULL;
  }
  return st;
}
