/*
 * The f64 interpreter: the reference semantics of every op. The emitter
 * (expr_emit.c) writes the same formulas in f32, and the constant folder
 * uses zmlxi_expr_apply, so a folded constant is what the kernel would have
 * computed (up to f32 rounding).
 */
#include "gen/expr.h"

#include <math.h>
#include <stdlib.h>

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* max(x, 0) + log1p(exp(-|x|)): no overflow for large |x|. */
static double softplus(double x) { return fmax(x, 0.0) + log1p(exp(-fabs(x))); }

static double sign(double x) { return x > 0.0 ? 1.0 : (x < 0.0 ? -1.0 : 0.0); }

static double truth(int b) { return b ? 1.0 : 0.0; }

static double apply_unary(zmlx_eop op, double a) {
  switch (op) {
    case ZMLX_EOP_NEG: return -a;
    case ZMLX_EOP_NOT: return truth(a == 0.0);
    case ZMLX_EOP_EXP: return exp(a);
    case ZMLX_EOP_EXP2: return exp2(a);
    case ZMLX_EOP_EXPM1: return expm1(a);
    case ZMLX_EOP_LOG: return log(a);
    case ZMLX_EOP_LOG2: return log2(a);
    case ZMLX_EOP_LOG1P: return log1p(a);
    case ZMLX_EOP_SQRT: return sqrt(a);
    case ZMLX_EOP_RSQRT: return 1.0 / sqrt(a);
    case ZMLX_EOP_ABS: return fabs(a);
    case ZMLX_EOP_SIGN: return sign(a);
    case ZMLX_EOP_SIN: return sin(a);
    case ZMLX_EOP_COS: return cos(a);
    case ZMLX_EOP_TAN: return tan(a);
    case ZMLX_EOP_TANH: return tanh(a);
    case ZMLX_EOP_SINH: return sinh(a);
    case ZMLX_EOP_COSH: return cosh(a);
    case ZMLX_EOP_ASIN: return asin(a);
    case ZMLX_EOP_ACOS: return acos(a);
    case ZMLX_EOP_ATAN: return atan(a);
    case ZMLX_EOP_ERF: return erf(a);
    case ZMLX_EOP_ERFC: return erfc(a);
    case ZMLX_EOP_FLOOR: return floor(a);
    case ZMLX_EOP_CEIL: return ceil(a);
    case ZMLX_EOP_ROUND: return round(a);
    case ZMLX_EOP_SIGMOID: return sigmoid(a);
    case ZMLX_EOP_SOFTPLUS: return softplus(a);
    case ZMLX_EOP_RELU: return fmax(a, 0.0);
    default: return NAN;
  }
}

static double apply_binary(zmlx_eop op, double a, double b) {
  switch (op) {
    case ZMLX_EOP_ADD: return a + b;
    case ZMLX_EOP_SUB: return a - b;
    case ZMLX_EOP_MUL: return a * b;
    case ZMLX_EOP_DIV: return a / b;
    case ZMLX_EOP_POW: return pow(a, b);
    case ZMLX_EOP_ATAN2: return atan2(a, b);
    case ZMLX_EOP_MIN: return fmin(a, b);
    case ZMLX_EOP_MAX: return fmax(a, b);
    case ZMLX_EOP_LT: return truth(a < b);
    case ZMLX_EOP_LE: return truth(a <= b);
    case ZMLX_EOP_GT: return truth(a > b);
    case ZMLX_EOP_GE: return truth(a >= b);
    case ZMLX_EOP_EQ: return truth(a == b);
    case ZMLX_EOP_NE: return truth(a != b);
    case ZMLX_EOP_AND: return truth(a != 0.0 && b != 0.0);
    case ZMLX_EOP_OR: return truth(a != 0.0 || b != 0.0);
    default: return NAN;
  }
}

double zmlxi_expr_apply(zmlx_eop op, double a, double b, double c) {
  const zmlx_eop_info *info = zmlxi_eop_get(op);
  if (!info) return NAN;
  if (op == ZMLX_EOP_SELECT) return a != 0.0 ? b : c;
  if (info->arity == 1) return apply_unary(op, a);
  if (info->arity == 2) return apply_binary(op, a, b);
  return NAN;
}

zmlx_status zmlxi_expr_eval(const zmlx_expr *e, const double *inputs, const double *params,
                           double *out) {
  ZMLX_REQUIRE_ARG(e);
  ZMLX_REQUIRE_ARG(out);
  if ((e->n_inputs && !inputs) || (e->n_params && !params))
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlxi_expr_eval: input or parameter values are NULL");
  if (e->failed) return zmlxi_fail(e->failed, "zmlxi_expr_eval: the expression failed to build");
  /* Only ids up to the largest root matter; children precede parents. */
  int32_t top = -1;
  for (int j = 0; j < e->n_roots; j++)
    if (e->roots[j] > top) top = e->roots[j];
  double *v = malloc(sizeof *v * (size_t)(top + 1 > 0 ? top + 1 : 1));
  if (!v) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlxi_expr_eval: out of host memory");
  for (int32_t i = 0; i <= top; i++) {
    const zmlx_enode *n = &e->nodes[i];
    switch (n->op) {
      case ZMLX_EOP_CONST: v[i] = n->value; break;
      case ZMLX_EOP_INPUT: v[i] = inputs[n->arg[0]]; break;
      case ZMLX_EOP_PARAM: v[i] = params[n->arg[0]]; break;
      default: {
        int arity = zmlxi_eop_get((zmlx_eop)n->op)->arity;
        double a = v[n->arg[0]];
        double b = arity > 1 ? v[n->arg[1]] : 0.0;
        double c = arity > 2 ? v[n->arg[2]] : 0.0;
        v[i] = zmlxi_expr_apply((zmlx_eop)n->op, a, b, c);
      }
    }
  }
  for (int j = 0; j < e->n_roots; j++) out[j] = v[e->roots[j]];
  free(v);
  return ZMLX_OK;
}
