/* Dropout (issue 5): y = x * keep / (1 - p), keep drawn per element from
 * the counter-based Philox RNG (the runtime's zmlxi_philox4x32, 4 elements
 * per draw) by a dialect kernel (kernels/dropout.zk). The same seed gives
 * the same mask on every backend and for every call, so the VJP and JVP
 * are the same kernel applied to the cotangent / tangent. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "kernel/kernel.h"
#include "ops/dropout.h"
#include "ops/kernel_util.h"

extern const char zmlxi_res_dropout_zk[];

enum { K_DROPOUT };

static const zmlx_kernel_spec SPECS[] = {
    [K_DROPOUT] = ZMLX_KSPEC("zmlx_dropout", zmlxi_res_dropout_zk, "x", "out",
                             "n:i64, seed_lo:u32, seed_hi:u32, thresh:u32, scale:f32", .dense_inputs = 1),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("dropout", SPECS);


uint32_t zmlxi_dropout_threshold(double p) { return (uint32_t)llround(p * 16777216.0); }

zmlx_status zmlxi_dropout_launch(zmlx_array *x, const drop_cfg *c, zmlx_array *out) {
  zmlx_kernel *drop_kernel;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_DROPOUT, &drop_kernel));
  if (x->size == 0) return ZMLX_OK;
  double params[5] = {(double)x->size, (double)(uint32_t)c->seed,
                      (double)(uint32_t)(c->seed >> 32), (double)zmlxi_dropout_threshold(c->p),
                      1.0 / (1.0 - c->p)};
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &x, .outputs = &out,
                           .params = params, .device = x->buffer->device};
  zmlxi_kernel_call_grid_1d(&call, (x->size + 3) / 4);
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
  ZMLX_CHECK(zmlxi_array_alloc(x->buffer->device, NULL, x->dtype, x->ndim, x->shape, &y));
  zmlx_status st = zmlxi_dropout_launch(x, c, y);
  if (st == ZMLX_OK && zmlxi_ad_should_record(&x, 1)) {
    drop_cfg *cc = malloc(sizeof *cc);
    if (!cc) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    else {
      *cc = *c;
      st = zmlxi_ad_record(&DROPOUT_RULE, cc, &x, 1, &y, 1, 0);
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
  ZMLX_REQUIRE_ARG_OF("zmlx_dropout", x);
  if (!zmlxi_ad_is_float(x->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "dropout: x has dtype %s; supported: f32, f16, bf16",
                     zmlx_dtype_name(x->dtype));
  if (!(p >= 0 && p < 1))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "dropout: p = %g must be in [0, 1)", p);
  return ZMLX_OK;
}

zmlx_status zmlx_dropout(zmlx_array *x, double p, uint64_t seed, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(drop_validate(x, p));
  drop_cfg c = {p, seed};
  return drop_apply(x, &c, out);
}
