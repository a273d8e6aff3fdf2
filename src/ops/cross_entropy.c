/* Softmax cross-entropy over the last dim (issue 5): ignore_index, label
 * smoothing, mean / sum reduction, fused forward + backward (the gradient is
 * written by the forward kernel, as Liger does), any vocabulary size
 * without materialising the probabilities. Kernel:
 * src/ops/kernels/cross_entropy.zk. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "gen/patterns.h"
#include "ops/kernel_util.h"
#include "runtime/internal.h"
#include "ops/cross_entropy.h"

extern const char zmlxi_res_cross_entropy_zk[];

extern const char zmlxi_res_ce_count_zk[];

enum { K_CE, K_COUNT };

static const zmlx_kernel_spec SPECS[] = {
    [K_CE] = ZMLX_KSPEC("zmlx_cross_entropy", zmlxi_res_cross_entropy_zk, "x, t, count", "loss, grad",
                        "rows:i64, cols:i64, ignore_index:i64, eps:f32", .prelude = zmlxi_res_vec_io_zk,
                        .dense_inputs = 1),
    [K_COUNT] = ZMLX_KSPEC("zmlx_ce_count", zmlxi_res_ce_count_zk, "t", "count",
                           "rows:i64, ignore_index:i64", .dense_inputs = 1),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("cross_entropy", SPECS);

const zmlx_cross_entropy_opts zmlxi_cross_entropy_defaults = {-100, 0.0, ZMLX_CE_MEAN, 0};

static zmlx_status ce_check_targets(zmlx_array *t, const zmlx_cross_entropy_opts *o, int64_t V);

/* Checks shapes, dtypes and options; with o->check_targets also the targets'
 * range, on the host. */
static zmlx_status ce_validate(zmlx_array *x, zmlx_array *t, const zmlx_cross_entropy_opts *o) {
  const char *op = "cross_entropy";
  if (!zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: logits have dtype %s; f32, f16 or bf16 is needed", op,
                     zmlx_dtype_name(x->dtype));
  if (t->dtype != ZMLX_I32 && t->dtype != ZMLX_I64)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: targets have dtype %s; i32 or i64 class indices are "
                     "needed", op, zmlx_dtype_name(t->dtype));
  if (x->ndim < 1)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: logits are a scalar; [..., vocab] is needed", op);
  int shape_ok = t->ndim == x->ndim - 1;
  for (int i = 0; shape_ok && i < t->ndim; i++) shape_ok = t->shape[i] == x->shape[i];
  if (!shape_ok) {
    char xs[96], ts[96];
    zmlxi_shape_str(xs, sizeof xs, x->ndim, x->shape);
    zmlxi_shape_str(ts, sizeof ts, t->ndim, t->shape);
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: targets shape %s must be the logits shape %s without "
                     "its last axis", op, ts, xs);
  }
  const int64_t V = x->shape[x->ndim - 1];
  if (V == 0) return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: the vocabulary (last) axis is 0", op);
  if (t->buffer->device != x->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: logits and targets are on different devices", op);
  if (!(o->label_smoothing >= 0.0 && o->label_smoothing <= 1.0))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: label_smoothing %g is outside [0, 1]", op,
                     o->label_smoothing);
  if (o->reduction != ZMLX_CE_MEAN && o->reduction != ZMLX_CE_SUM)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: unknown reduction %d (ZMLX_CE_MEAN or "
                     "ZMLX_CE_SUM)", op, (int)o->reduction);
  return o->check_targets ? ce_check_targets(t, o, V) : ZMLX_OK;
}

/* Downloads the targets (a device sync) and names the first out of range. */
static zmlx_status ce_check_targets(zmlx_array *t, const zmlx_cross_entropy_opts *o, int64_t V) {
  const char *op = "cross_entropy";
  const int64_t n = t->size;
  if (n == 0) return ZMLX_OK;
  int64_t *tv = malloc((size_t)n * sizeof *tv);
  if (!tv) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
  zmlx_status st;
  if (t->dtype == ZMLX_I64) {
    st = zmlx_array_to_host(t, tv, (size_t)n * sizeof *tv);
  } else {
    int32_t *t32 = (int32_t *)tv; /* fits: 4 of n*8 bytes, widened backwards below */
    st = zmlx_array_to_host(t, t32, (size_t)n * sizeof *t32);
    for (int64_t i = n - 1; st == ZMLX_OK && i >= 0; i--) tv[i] = t32[i];
  }
  for (int64_t i = 0; st == ZMLX_OK && i < n; i++) {
    if (tv[i] == o->ignore_index) continue;
    if (tv[i] < 0 || tv[i] >= V)
      st = zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: target %lld at row %lld is out of range [0, %lld) "
                     "and is not ignore_index %lld", op, (long long)tv[i], (long long)i,
                     (long long)V, (long long)o->ignore_index);
  }
  free(tv);
  return st;
}

/* The mean's divisor, counted on the device (one threadgroup). */
static zmlx_status ce_count(zmlx_array *t, const zmlx_cross_entropy_opts *o, zmlx_array *count) {
  double params[2] = {(double)t->size, (double)o->ignore_index};
  zmlx_array *outs[1] = {count};
  zmlx_kernel *k_count;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_COUNT, &k_count));
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &t, .outputs = outs,
                           .params = params, .device = t->buffer->device,
                           .grid = {256, 1, 1}, .threadgroup = {256, 1, 1}};
  return zmlx_kernel_launch(k_count, &call);
}

/* The fused kernel: loss rows (f32, scaled) and optionally the gradient. */
static zmlx_status ce_launch(zmlx_array *x, zmlx_array *t, const zmlx_cross_entropy_opts *o,
                             zmlx_array *loss_rows, zmlx_array *grad) {
  zmlx_kernel *k_ce;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_CE, &k_ce));
  const int64_t cols = x->shape[x->ndim - 1];
  const int64_t rows = x->size / cols;
  if (rows == 0) return ZMLX_OK;
  const int mean = o->reduction == ZMLX_CE_MEAN;
  zmlx_array *dummy = NULL, *count = NULL;
  int64_t one = 1;
  zmlx_status st = ZMLX_OK;
  if (!grad) st = zmlxi_array_alloc(x->buffer->device, NULL, x->dtype, 1, &one, &dummy);
  if (st == ZMLX_OK && mean)
    st = zmlxi_array_alloc(x->buffer->device, NULL, ZMLX_I32, 1, &one, &count);
  if (st == ZMLX_OK && mean) st = ce_count(t, o, count);
  if (st != ZMLX_OK) {
    zmlx_array_release(dummy);
    zmlx_array_release(count);
    return st;
  }
  zmlx_array *in[3] = {x, t, mean ? count : t}; /* without MEAN, count is not read */
  zmlx_array *outs[2] = {loss_rows, grad ? grad : dummy};
  double params[4] = {(double)rows, (double)cols, (double)o->ignore_index, o->label_smoothing};
  /* 16-byte accesses when every row starts 16-byte aligned (a strided x is
   * made dense, at offset 0, by the kernel object) */
  const size_t es = zmlx_dtype_size(x->dtype);
  const int width = (int)(16 / es);
  const int aligned = (!zmlx_array_is_contiguous(x) || ((size_t)x->offset * es) % 16 == 0) &&
                      (!grad || ((size_t)grad->offset * es) % 16 == 0);
  const int vec = cols % width == 0 && aligned ? width : 0;
  const int xdt = zmlxi_ops_xdt(x->dtype);
  int tg = 0, nv = 0;
  if (vec) zmlxi_ops_chunk_geometry(x->buffer->device, cols / vec, 8, &tg, &nv);
  const int native = zmlxi_ops_native_simd(x->buffer->device);
  zmlx_template_arg tmpl[7] = {{"WG", ZMLX_TEMPLATE_BOOL, ZMLX_F32, grad ? 1 : 0},
                               {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                               {"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32, xdt},
                               {"MEAN", ZMLX_TEMPLATE_BOOL, ZMLX_F32, mean},
                               {"NV", ZMLX_TEMPLATE_INT, ZMLX_F32, nv},
                               {"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32, native},
                               {"TILE", ZMLX_TEMPLATE_INT, ZMLX_F32, zmlxi_ops_stream_tile()}};
  zmlx_kernel_call call = {.n_inputs = 3, .n_outputs = 2, .inputs = in, .outputs = outs,
                           .templates = tmpl, .n_templates = 7, .params = params,
                           .device = x->buffer->device};
  zmlxi_ops_row_geometry(x->buffer->device, rows, vec ? cols / vec : cols, &call);
  if (nv) zmlxi_ops_use_chunk_geometry(&call, tg, nv);
  else if (vec) zmlxi_ops_use_stream_geometry(&call, grad != NULL);
  st = zmlx_kernel_launch(k_ce, &call);
  zmlx_array_release(dummy);
  zmlx_array_release(count);
  return st;
}

/* ------------------------------------------------------------------ autograd */

typedef struct ce_ctx {
  zmlx_array *grad; /* d loss / d logits for a cotangent of 1 */
} ce_ctx;

static void ce_ctx_free(void *p) {
  ce_ctx *c = p;
  if (c) zmlx_array_release(c->grad);
  free(c);
}

static zmlx_status ce_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                          zmlx_array **grads) {
  const ce_ctx *c = n->ctx;
  if (!need[0]) return ZMLX_OK;
  return zmlx_mul(c->grad, cot[0], &grads[0]);
}

static zmlx_status ce_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out_tan) {
  const ce_ctx *c = n->ctx;
  if (!tan[0]) return ZMLX_OK;
  zmlx_array *p = NULL;
  ZMLX_CHECK(zmlx_mul(c->grad, tan[0], &p));
  zmlx_array *s = NULL;
  zmlx_status st = zmlx_sum(p, NULL, 0, 0, &s);
  zmlx_array_release(p);
  if (st == ZMLX_OK) st = zmlxi_ad_cast(s, ZMLX_F32, &out_tan[0]);
  zmlx_array_release(s);
  return st;
}

static const zmlx_ad_rule CE_RULE = {"cross_entropy", ce_vjp, ce_jvp, ce_ctx_free};

/* Everything but recording: loss (f32 scalar) and, when grad_out, the
 * gradient in the logits' dtype. `grad_into`: a preallocated gradient
 * (the check's poisoned array) instead of a new one. */
zmlx_status zmlxi_cross_entropy_compute(zmlx_array *x, zmlx_array *t, const zmlx_cross_entropy_opts *o,
                                       zmlx_array *loss_rows_into, zmlx_array **loss, zmlx_array **grad_out,
                                       zmlx_array *grad_into) {
  ZMLX_CHECK(ce_validate(x, t, o));
  zmlx_array *rows = loss_rows_into, *grad = grad_into;
  zmlx_status st = ZMLX_OK;
  if (!rows) st = zmlxi_array_alloc(x->buffer->device, NULL, ZMLX_F32, t->ndim, t->shape, &rows);
  else zmlx_array_retain(rows);
  if (st == ZMLX_OK && grad_out && !grad)
    st = zmlxi_array_alloc(x->buffer->device, NULL, x->dtype, x->ndim, x->shape, &grad);
  else if (grad)
    zmlx_array_retain(grad);
  if (st == ZMLX_OK) st = ce_launch(x, t, o, rows, grad_out ? grad : NULL);
  if (st == ZMLX_OK) {
    if (rows->size == 0) st = zmlx_array_zeros(x->buffer->device, ZMLX_F32, 0, NULL, loss);
    else st = zmlx_sum(rows, NULL, 0, 0, loss);
  }
  zmlx_array_release(rows);
  if (st == ZMLX_OK && grad_out) {
    *grad_out = grad;
    grad = NULL;
  }
  zmlx_array_release(grad);
  return st;
}

zmlx_status zmlx_cross_entropy(zmlx_array *logits, zmlx_array *targets,
                               const zmlx_cross_entropy_opts *opts, zmlx_array **loss,
                               zmlx_array **grad_logits) {
  ZMLX_REQUIRE_ARG(loss);
  *loss = NULL;
  if (grad_logits) *grad_logits = NULL;
  ZMLX_REQUIRE_ARG(logits);
  ZMLX_REQUIRE_ARG(targets);
  const zmlx_cross_entropy_opts *o = opts ? opts : &zmlxi_cross_entropy_defaults;
  zmlx_array *in[2] = {logits, targets};
  const int record = zmlxi_ad_should_record(in, 2);
  zmlx_array *l = NULL, *g = NULL;
  zmlx_status st;
  /* the forward is opaque to autograd: its internal sum is not recorded */
  zmlxi_ad_pause();
  st = zmlxi_cross_entropy_compute(logits, targets, o, NULL, &l, (record || grad_logits) ? &g : NULL, NULL);
  zmlxi_ad_resume();
  if (st != ZMLX_OK) return st;
  if (record) {
    ce_ctx *c = malloc(sizeof *c);
    if (!c) {
      st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "cross_entropy: out of host memory");
    } else {
      zmlx_array_retain(g);
      c->grad = g;
      st = zmlxi_ad_record(&CE_RULE, c, in, 2, &l, 1, 0);
    }
  }
  if (st != ZMLX_OK) {
    zmlx_array_release(l);
    zmlx_array_release(g);
    return st;
  }
  *loss = l;
  if (grad_logits) *grad_logits = g;
  else zmlx_array_release(g);
  return ZMLX_OK;
}
