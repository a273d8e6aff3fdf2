/* Activation family (issue 5): exp, log, tanh, sigmoid, relu, silu,
 * gelu_tanh, gelu (erf), softplus, mish, elu — each one function of the
 * expression engine applied through autograd's expression ops (the
 * machinery of zmlx_apply_expr, with the parsed op looked up once per
 * activation instead of per call): one elementwise kernel (16-byte vectors
 * when dense, strided otherwise), engine-derived VJP and JVP, any order.
 * Each is the engine function of the same name except gelu_tanh, written
 * as x * sigmoid(2u) for accurate derivatives in the tails (see ACT).
 * Its `zmlx check` cases (src/check/activation_check.c) compare against
 * f64 <math.h> formulas, never against the engine's own interpreter. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "ops/kernel_util.h"
#include "ops/activation.h"


static const struct {
  const char *name;
  const char *expr; /* of x; elu also of the parameter alpha */
} ACT[A_COUNT] = {
    [A_EXP] = {"exp", "exp(x)"},
    [A_LOG] = {"log", "log(x)"},
    [A_TANH] = {"tanh", "tanh(x)"},
    [A_SIGMOID] = {"sigmoid", "sigmoid(x)"},
    [A_RELU] = {"relu", "relu(x)"},
    [A_SILU] = {"silu", "silu(x)"},
    /* gelu_tanh in the form of the dialect prelude's zmlx_gelu_tanh,
     * 0.5 x (1 + tanh(u)) = x sigmoid(2u), instead of the engine's textbook
     * gelu_tanh: the engine's tanh' is 1 - r*r, and where the device's tanh
     * stops 1 ulp short of +-1 (PoCL) the textbook derivative is off by
     * 1.7e-4 at x = +-30 and 6e-3 at x = -100 (the forward also keeps no
     * digits below x = -5). sigmoid saturates exactly (exp over/underflows),
     * so this form's derivative is exact in the tails. Same function. */
    [A_GELU_TANH] = {"gelu_tanh", "x * sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))"},
    /* The engine's textbook 0.5 x (1 + erf(x / sqrt 2)), as PyTorch: its
     * derivative is accurate everywhere; the erfc form 0.5 x erfc(-x / sqrt 2)
     * would also keep relative digits of the forward below x = -5 (values
     * under 1e-6) but costs an erfc, 1.6x an erf on PoCL. */
    [A_GELU] = {"gelu", "gelu(x)"},
    [A_SOFTPLUS] = {"softplus", "softplus(x)"},
    [A_MISH] = {"mish", "mish(x)"},
    [A_ELU] = {"elu", "elu(x, alpha)"},
};

/* ------------------------------------------------------------------ ops */

const char *zmlxi_activation_name(act_kind k) { return ACT[k].name; }

static _Atomic(zmlx_ad_expr *) act_slot[A_COUNT];

zmlx_status zmlxi_activation_call(act_kind k, zmlx_array *x, double alpha, zmlx_array **out) {
  static const char *const in_names[] = {"x"};
  static const char *const par_names[] = {"alpha"};
  const char *op = ACT[k].name;
  if (!out) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: argument 'out' is NULL", op);
  *out = NULL;
  if (!x) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: argument 'x' is NULL", op);
  if (!zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: x has dtype %s; supported: f32, f16, bf16", op,
                     zmlx_dtype_name(x->dtype));
  int n_par = k == A_ELU;
  if (n_par && !isfinite(alpha))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: alpha = %g must be finite", op, alpha);
  zmlx_ad_expr *e = atomic_load(&act_slot[k]);
  if (!e) {
    /* Racing first calls get the same object: the expression cache is keyed by text. */
    ZMLX_CHECK(zmlxi_ad_expr_get(ACT[k].expr, in_names, 1, par_names, n_par, &e));
    atomic_store(&act_slot[k], e);
  }
  return zmlxi_ad_expr_apply(e, &x, 1, n_par ? &alpha : NULL, out);
}

zmlx_status zmlx_exp(zmlx_array *x, zmlx_array **out) { return zmlxi_activation_call(A_EXP, x, 0, out); }
zmlx_status zmlx_log(zmlx_array *x, zmlx_array **out) { return zmlxi_activation_call(A_LOG, x, 0, out); }
zmlx_status zmlx_tanh(zmlx_array *x, zmlx_array **out) { return zmlxi_activation_call(A_TANH, x, 0, out); }
zmlx_status zmlx_sigmoid(zmlx_array *x, zmlx_array **out) {
  return zmlxi_activation_call(A_SIGMOID, x, 0, out);
}
zmlx_status zmlx_relu(zmlx_array *x, zmlx_array **out) { return zmlxi_activation_call(A_RELU, x, 0, out); }
zmlx_status zmlx_silu(zmlx_array *x, zmlx_array **out) { return zmlxi_activation_call(A_SILU, x, 0, out); }
zmlx_status zmlx_gelu_tanh(zmlx_array *x, zmlx_array **out) {
  return zmlxi_activation_call(A_GELU_TANH, x, 0, out);
}
zmlx_status zmlx_gelu(zmlx_array *x, zmlx_array **out) { return zmlxi_activation_call(A_GELU, x, 0, out); }
zmlx_status zmlx_softplus(zmlx_array *x, zmlx_array **out) {
  return zmlxi_activation_call(A_SOFTPLUS, x, 0, out);
}
zmlx_status zmlx_mish(zmlx_array *x, zmlx_array **out) { return zmlxi_activation_call(A_MISH, x, 0, out); }
zmlx_status zmlx_elu(zmlx_array *x, double alpha, zmlx_array **out) {
  return zmlxi_activation_call(A_ELU, x, alpha, out);
}
