/*
 * The functions of the expression language: each a primitive (one node of
 * an op) or a composition built from primitives, with its arity and the
 * one-line definition `zmlx functions` prints (docs/EXPRESSIONS.md).
 * The parser (expr_parse.c) looks names up here.
 */
#include "gen/expr.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static int32_t cst(zmlx_expr *e, double v) { return zmlxi_expr_const(e, v); }

static int32_t build_clamp(zmlx_expr *e, const int32_t *a, int n) {
  (void)n;
  int32_t lo = zmlx_expr_op2(e, ZMLX_EOP_MAX, a[0], a[1]);
  return zmlx_expr_op2(e, ZMLX_EOP_MIN, lo, a[2]);
}

static int32_t build_silu(zmlx_expr *e, const int32_t *a, int n) {
  (void)n;
  return zmlx_expr_op2(e, ZMLX_EOP_MUL, a[0], zmlx_expr_op1(e, ZMLX_EOP_SIGMOID, a[0]));
}

static int32_t build_mish(zmlx_expr *e, const int32_t *a, int n) {
  (void)n;
  int32_t sp = zmlx_expr_op1(e, ZMLX_EOP_SOFTPLUS, a[0]);
  return zmlx_expr_op2(e, ZMLX_EOP_MUL, a[0], zmlx_expr_op1(e, ZMLX_EOP_TANH, sp));
}

/* x * 0.5 * (1 + erf(x / sqrt(2))) */
static int32_t build_gelu(zmlx_expr *e, const int32_t *a, int n) {
  (void)n;
  int32_t x = a[0];
  int32_t u = zmlx_expr_op2(e, ZMLX_EOP_MUL, x, cst(e, 0.70710678118654752440));
  int32_t cdf = zmlx_expr_op2(e, ZMLX_EOP_MUL, cst(e, 0.5),
                              zmlx_expr_op2(e, ZMLX_EOP_ADD, cst(e, 1.0),
                                            zmlx_expr_op1(e, ZMLX_EOP_ERF, u)));
  return zmlx_expr_op2(e, ZMLX_EOP_MUL, x, cdf);
}

/* 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) */
static int32_t build_gelu_tanh(zmlx_expr *e, const int32_t *a, int n) {
  (void)n;
  int32_t x = a[0];
  int32_t x3 = zmlx_expr_op2(e, ZMLX_EOP_MUL, x, zmlx_expr_op2(e, ZMLX_EOP_MUL, x, x));
  int32_t poly = zmlx_expr_op2(e, ZMLX_EOP_ADD, x,
                               zmlx_expr_op2(e, ZMLX_EOP_MUL, cst(e, 0.044715), x3));
  int32_t t = zmlx_expr_op1(
      e, ZMLX_EOP_TANH, zmlx_expr_op2(e, ZMLX_EOP_MUL, cst(e, 0.79788456080286535588), poly));
  int32_t half_x = zmlx_expr_op2(e, ZMLX_EOP_MUL, cst(e, 0.5), x);
  return zmlx_expr_op2(e, ZMLX_EOP_MUL, half_x, zmlx_expr_op2(e, ZMLX_EOP_ADD, cst(e, 1.0), t));
}

/* x > 0 ? x : neg, with the strict test giving f'(0) = the negative side. */
static int32_t positive_or(zmlx_expr *e, int32_t x, int32_t neg) {
  int32_t pos = zmlx_expr_op2(e, ZMLX_EOP_GT, x, cst(e, 0.0));
  return zmlxi_expr_op(e, ZMLX_EOP_SELECT, pos, x, neg);
}

static int32_t build_leaky_relu(zmlx_expr *e, const int32_t *a, int n) {
  (void)n;
  return positive_or(e, a[0], zmlx_expr_op2(e, ZMLX_EOP_MUL, a[1], a[0]));
}

static int32_t build_elu(zmlx_expr *e, const int32_t *a, int n) {
  int32_t alpha = n > 1 ? a[1] : cst(e, 1.0);
  int32_t neg = zmlx_expr_op2(e, ZMLX_EOP_MUL, alpha, zmlx_expr_op1(e, ZMLX_EOP_EXPM1, a[0]));
  return positive_or(e, a[0], neg);
}

#define PRIM(name, n, doc, op) {{name, n, n, doc}, op, NULL}
#define MACRO(name, lo, hi, doc, fn) {{name, lo, hi, doc}, ZMLX_EOP_CONST, fn}

static const zmlx_expr_fn_entry functions[] = {
    PRIM("exp", 1, "e^x", ZMLX_EOP_EXP),
    PRIM("exp2", 1, "2^x", ZMLX_EOP_EXP2),
    PRIM("expm1", 1, "e^x - 1, accurate near 0", ZMLX_EOP_EXPM1),
    PRIM("log", 1, "natural logarithm", ZMLX_EOP_LOG),
    PRIM("log2", 1, "base-2 logarithm", ZMLX_EOP_LOG2),
    PRIM("log1p", 1, "log(1 + x), accurate near 0", ZMLX_EOP_LOG1P),
    PRIM("sqrt", 1, "square root", ZMLX_EOP_SQRT),
    PRIM("rsqrt", 1, "1 / sqrt(x)", ZMLX_EOP_RSQRT),
    PRIM("abs", 1, "|x|", ZMLX_EOP_ABS),
    PRIM("sign", 1, "-1, 0 or 1", ZMLX_EOP_SIGN),
    PRIM("sin", 1, "sine", ZMLX_EOP_SIN),
    PRIM("cos", 1, "cosine", ZMLX_EOP_COS),
    PRIM("tan", 1, "tangent", ZMLX_EOP_TAN),
    PRIM("tanh", 1, "hyperbolic tangent", ZMLX_EOP_TANH),
    PRIM("sinh", 1, "hyperbolic sine", ZMLX_EOP_SINH),
    PRIM("cosh", 1, "hyperbolic cosine", ZMLX_EOP_COSH),
    PRIM("asin", 1, "arc sine", ZMLX_EOP_ASIN),
    PRIM("acos", 1, "arc cosine", ZMLX_EOP_ACOS),
    PRIM("atan", 1, "arc tangent", ZMLX_EOP_ATAN),
    PRIM("atan2", 2, "atan2(y, x): angle of the point (x, y)", ZMLX_EOP_ATAN2),
    PRIM("erf", 1, "error function", ZMLX_EOP_ERF),
    PRIM("erfc", 1, "1 - erf(x), accurate for large x", ZMLX_EOP_ERFC),
    PRIM("floor", 1, "largest integer <= x", ZMLX_EOP_FLOOR),
    PRIM("ceil", 1, "smallest integer >= x", ZMLX_EOP_CEIL),
    PRIM("round", 1, "nearest integer, halves away from zero", ZMLX_EOP_ROUND),
    PRIM("min", 2, "the smaller argument (a NaN argument loses)", ZMLX_EOP_MIN),
    PRIM("max", 2, "the larger argument (a NaN argument loses)", ZMLX_EOP_MAX),
    MACRO("clamp", 3, 3, "clamp(x, lo, hi) = min(max(x, lo), hi)", build_clamp),
    PRIM("pow", 2, "pow(x, y) = x ** y", ZMLX_EOP_POW),
    PRIM("where", 3, "where(c, a, b) = c != 0 ? a : b", ZMLX_EOP_SELECT),
    PRIM("sigmoid", 1, "1 / (1 + exp(-x))", ZMLX_EOP_SIGMOID),
    MACRO("silu", 1, 1, "x * sigmoid(x)", build_silu),
    MACRO("gelu", 1, 1, "x * 0.5 * (1 + erf(x / sqrt(2)))", build_gelu),
    MACRO("gelu_tanh", 1, 1, "0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))",
          build_gelu_tanh),
    PRIM("softplus", 1, "log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))", ZMLX_EOP_SOFTPLUS),
    PRIM("relu", 1, "max(x, 0)", ZMLX_EOP_RELU),
    MACRO("leaky_relu", 2, 2, "leaky_relu(x, alpha) = x > 0 ? x : alpha * x", build_leaky_relu),
    MACRO("elu", 1, 2, "elu(x, alpha = 1) = x > 0 ? x : alpha * expm1(x)", build_elu),
    MACRO("mish", 1, 1, "x * tanh(softplus(x))", build_mish),
};

#define N_FUNCTIONS ((int)(sizeof functions / sizeof functions[0]))

int zmlxi_expr_function_count(void) { return N_FUNCTIONS; }

const zmlx_expr_function *zmlxi_expr_function_at(int i) {
  return i >= 0 && i < N_FUNCTIONS ? &functions[i].pub : NULL;
}

static int name_is(const char *s, size_t len, const char *name) {
  return strlen(name) == len && memcmp(s, name, len) == 0;
}

const zmlx_expr_fn_entry *zmlxi_expr_find_function(const char *s, size_t len) {
  for (int i = 0; i < N_FUNCTIONS; i++)
    if (name_is(s, len, functions[i].pub.name)) return &functions[i];
  return NULL;
}

