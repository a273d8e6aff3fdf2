/*
 * Symbolic derivatives: reverse mode (VJP) and forward mode (JVP) over the
 * expression DAG. Both build into a copy of the forward graph, so derivative
 * terms share nodes with the forward computation (sigmoid' reuses the
 * sigmoid node, tanh' the tanh node, ...) and with each other; the emitter
 * then computes every shared node once.
 *
 * Derivative conventions (the exact formulas; r is the node's own value,
 * u its argument):
 *
 *   Smooth functions, written to reuse the forward value and stay stable:
 *     exp' = r          exp2' = r ln 2         expm1' = exp(u)
 *     log' = 1/u        log2' = 1/(u ln 2)     log1p' = 1/(1+u)
 *     sqrt' = 0.5/r     rsqrt' = -0.5 r/u
 *     sin' = cos(u)     cos' = -sin(u)         tan' = 1 + r*r
 *     tanh' = 1 - r*r   sinh' = cosh(u)        cosh' = sinh(u)
 *     asin' = rsqrt(1-u*u)   acos' = -rsqrt(1-u*u)   atan' = 1/(1+u*u)
 *     atan2(y,x): d/dy = x/(x*x+y*y), d/dx = -y/(x*x+y*y)
 *     erf' = 2/sqrt(pi) exp(-u*u)   erfc' = -erf'
 *     sigmoid' = r (1 - r)          softplus' = sigmoid(u)
 *     a/b: d/da = 1/b, d/db = -(r/b)     (no b*b, which overflows first)
 *     pow(x, y): d/dx = y pow(x, y-1), d/dy = log(x) r   (the d/dy term is
 *       built only when y depends on an input, so pow(x, 3) of a negative x
 *       has a finite gradient)
 *     silu, gelu, gelu_tanh, mish, elu, leaky_relu, clamp are compositions
 *     (see the function table) and are differentiated exactly through them.
 *
 *   Non-smooth points (subgradients):
 *     abs'(0) = 0 (abs' = sign(u));  sign' = floor' = ceil' = round' = 0;
 *     relu'(0) = 0: relu' = (u > 0);  leaky_relu'(0) = alpha and
 *     elu'(0) = alpha: the x > 0 test is strict, so 0 takes the negative side;
 *     min(a, b): the gradient goes to a when a <= b, else to b; max(a, b): to
 *     a when a >= b, else to b (ties go to the first argument);
 *     clamp(x, lo, hi) = min(max(x, lo), hi): x gets it when lo <= x <= hi.
 *
 *   Piecewise-constant parts get no gradient: comparisons, !, &&, || and the
 *     condition of where() / ?: have derivative 0. where(c, a, b) routes the
 *     gradient to a where c != 0 and to b elsewhere, and the mask is kept
 *     outside the chain-rule products (see expr_simplify.c), so the branch
 *     not taken contributes exactly 0 even where its derivative is inf/NaN.
 *
 *   Scalar parameters are constants to differentiation: no gradient is built
 *   for them, and terms that only feed them are never built.
 */
#include "gen/expr.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LN2 0.69314718055994530942
#define TWO_OVER_SQRT_PI 1.12837916709551257390

static int32_t C(zmlx_expr *e, double v) { return zmlxi_expr_const(e, v); }
static int32_t op1(zmlx_expr *e, zmlx_eop op, int32_t a) { return zmlx_expr_op1(e, op, a); }
static int32_t op2(zmlx_expr *e, zmlx_eop op, int32_t a, int32_t b) {
  return zmlx_expr_op2(e, op, a, b);
}
static int32_t add(zmlx_expr *e, int32_t a, int32_t b) { return op2(e, ZMLX_EOP_ADD, a, b); }
static int32_t sub(zmlx_expr *e, int32_t a, int32_t b) { return op2(e, ZMLX_EOP_SUB, a, b); }
static int32_t mul(zmlx_expr *e, int32_t a, int32_t b) { return op2(e, ZMLX_EOP_MUL, a, b); }
static int32_t dvd(zmlx_expr *e, int32_t a, int32_t b) { return op2(e, ZMLX_EOP_DIV, a, b); }
static int32_t neg(zmlx_expr *e, int32_t a) { return op1(e, ZMLX_EOP_NEG, a); }

/* 1 where `cond` holds, else 0 (or the reverse): a gradient mask. */
static int32_t mask(zmlx_expr *e, int32_t cond, int when_true) {
  return zmlxi_expr_op(e, ZMLX_EOP_SELECT, cond, C(e, when_true ? 1.0 : 0.0),
                      C(e, when_true ? 0.0 : 1.0));
}

static int32_t one_minus_square(zmlx_expr *e, int32_t u) {
  return sub(e, C(e, 1.0), mul(e, u, u));
}

static int32_t partial_unary(zmlx_expr *e, zmlx_eop op, int32_t r, int32_t u) {
  switch (op) {
    case ZMLX_EOP_NEG: return C(e, -1.0);
    case ZMLX_EOP_EXP: return r;
    case ZMLX_EOP_EXP2: return mul(e, r, C(e, LN2));
    case ZMLX_EOP_EXPM1: return op1(e, ZMLX_EOP_EXP, u);
    case ZMLX_EOP_LOG: return dvd(e, C(e, 1.0), u);
    case ZMLX_EOP_LOG2: return dvd(e, C(e, 1.0 / LN2), u);
    case ZMLX_EOP_LOG1P: return dvd(e, C(e, 1.0), add(e, C(e, 1.0), u));
    case ZMLX_EOP_SQRT: return dvd(e, C(e, 0.5), r);
    case ZMLX_EOP_RSQRT: return dvd(e, mul(e, C(e, -0.5), r), u);
    case ZMLX_EOP_ABS: return op1(e, ZMLX_EOP_SIGN, u);
    case ZMLX_EOP_SIN: return op1(e, ZMLX_EOP_COS, u);
    case ZMLX_EOP_COS: return neg(e, op1(e, ZMLX_EOP_SIN, u));
    case ZMLX_EOP_TAN: return add(e, C(e, 1.0), mul(e, r, r));
    case ZMLX_EOP_TANH: return one_minus_square(e, r);
    case ZMLX_EOP_SINH: return op1(e, ZMLX_EOP_COSH, u);
    case ZMLX_EOP_COSH: return op1(e, ZMLX_EOP_SINH, u);
    case ZMLX_EOP_ASIN: return op1(e, ZMLX_EOP_RSQRT, one_minus_square(e, u));
    case ZMLX_EOP_ACOS: return neg(e, op1(e, ZMLX_EOP_RSQRT, one_minus_square(e, u)));
    case ZMLX_EOP_ATAN: return dvd(e, C(e, 1.0), add(e, C(e, 1.0), mul(e, u, u)));
    case ZMLX_EOP_ERF:
    case ZMLX_EOP_ERFC: {
      int32_t d = mul(e, C(e, TWO_OVER_SQRT_PI), op1(e, ZMLX_EOP_EXP, neg(e, mul(e, u, u))));
      return op == ZMLX_EOP_ERF ? d : neg(e, d);
    }
    case ZMLX_EOP_SIGMOID: return mul(e, r, sub(e, C(e, 1.0), r));
    case ZMLX_EOP_SOFTPLUS: return op1(e, ZMLX_EOP_SIGMOID, u);
    case ZMLX_EOP_RELU: return mask(e, op2(e, ZMLX_EOP_GT, u, C(e, 0.0)), 1);
    default: return C(e, 0.0); /* NOT, SIGN, FLOOR, CEIL, ROUND */
  }
}

static int32_t partial_binary(zmlx_expr *e, zmlx_eop op, int32_t r, int32_t a, int32_t b, int k) {
  switch (op) {
    case ZMLX_EOP_ADD: return C(e, 1.0);
    case ZMLX_EOP_SUB: return C(e, k == 0 ? 1.0 : -1.0);
    case ZMLX_EOP_MUL: return k == 0 ? b : a;
    case ZMLX_EOP_DIV: return k == 0 ? dvd(e, C(e, 1.0), b) : neg(e, dvd(e, r, b));
    case ZMLX_EOP_POW:
      if (k == 0) return mul(e, b, op2(e, ZMLX_EOP_POW, a, sub(e, b, C(e, 1.0))));
      return mul(e, op1(e, ZMLX_EOP_LOG, a), r);
    case ZMLX_EOP_ATAN2: { /* atan2(y = a, x = b) */
      int32_t den = add(e, mul(e, a, a), mul(e, b, b));
      return k == 0 ? dvd(e, b, den) : neg(e, dvd(e, a, den));
    }
    case ZMLX_EOP_MIN: return mask(e, op2(e, ZMLX_EOP_LE, a, b), k == 0);
    case ZMLX_EOP_MAX: return mask(e, op2(e, ZMLX_EOP_GE, a, b), k == 0);
    default: return C(e, 0.0); /* comparisons and logic */
  }
}

/* d node / d (its k-th argument), built in e. */
static int32_t partial(zmlx_expr *e, int32_t id, int k) {
  zmlx_enode n = e->nodes[id]; /* a copy: building may move the arena */
  zmlx_eop op = (zmlx_eop)n.op;
  if (op == ZMLX_EOP_SELECT) return k == 0 ? C(e, 0.0) : mask(e, n.arg[0], k == 1);
  if (zmlxi_eop_get(op)->arity == 1) return partial_unary(e, op, id, n.arg[0]);
  return partial_binary(e, op, id, n.arg[0], n.arg[1], k);
}

static int is_zero_const(const zmlx_expr *e, int32_t id) {
  return e->nodes[id].op == ZMLX_EOP_CONST && e->nodes[id].value == 0.0;
}

/* active[i]: node i depends on some input (parameters and constants do not). */
static uint8_t *depends_on_inputs(const zmlx_expr *e) {
  uint8_t *active = calloc((size_t)e->n_nodes, 1);
  if (!active) return NULL;
  for (int32_t i = 0; i < e->n_nodes; i++) {
    const zmlx_enode *n = &e->nodes[i];
    int arity = zmlxi_eop_get((zmlx_eop)n->op)->arity;
    active[i] = n->op == ZMLX_EOP_INPUT;
    for (int k = 0; k < arity; k++) active[i] |= active[n->arg[k]];
  }
  return active;
}

/* ------------------------------------------------------------ naming */

static int name_taken(const zmlx_expr *e, char *const *extra, int n_extra, const char *s) {
  for (int i = 0; i < e->n_inputs; i++)
    if (!strcmp(e->input_names[i], s)) return 1;
  for (int i = 0; i < e->n_params; i++)
    if (!strcmp(e->param_names[i], s)) return 1;
  for (int i = 0; i < n_extra; i++)
    if (extra[i] && !strcmp(extra[i], s)) return 1;
  return 0;
}

/* `base`, with '_' appended until it clashes with no existing name. */
static char *unique_name(const zmlx_expr *e, char *const *extra, int n_extra, const char *base) {
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  zmlxi_sb_append(&sb, base);
  while (!sb.oom && name_taken(e, extra, n_extra, sb.data)) zmlxi_sb_append(&sb, "_");
  char *s = NULL;
  if (zmlxi_sb_finish(&sb, &s) != ZMLX_OK) return NULL;
  return s;
}

static void free_names(char **names, int n) {
  if (!names) return;
  for (int i = 0; i < n; i++) free(names[i]);
  free(names);
}

/* Names of the appended inputs: cotangents (vjp) or tangents (jvp). */
static char **derivative_names(const zmlx_expr *e, int vjp) {
  int n = vjp ? e->n_roots : e->n_inputs;
  char **names = calloc((size_t)(n ? n : 1), sizeof *names);
  if (!names) return NULL;
  for (int i = 0; i < n; i++) {
    char base[ZMLX_EXPR_MAX_IDENT + 16];
    if (vjp)
      snprintf(base, sizeof base, n == 1 ? "g" : "g%d", i);
    else
      snprintf(base, sizeof base, "t_%s", e->input_names[i]);
    names[i] = unique_name(e, names, i, base);
    if (!names[i]) {
      free_names(names, i);
      return NULL;
    }
  }
  return names;
}

/* ------------------------------------------------------------ passes */

/* The derivative graph: a clone of `e` with the appended inputs, and the
 * per-node scratch both passes need. */
typedef struct pass {
  zmlx_expr *g;
  int32_t n0;      /* nodes of the forward graph; ids below are shared */
  uint8_t *active; /* n0 */
  int32_t *d;      /* n0: adjoint (vjp) or tangent (jvp) id, -1 = zero */
} pass;

static zmlx_status pass_begin(const zmlx_expr *e, int vjp, pass *ps, const char *what) {
  memset(ps, 0, sizeof *ps);
  if (!e) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: expression is NULL", what);
  if (e->failed) return zmlxi_fail(e->failed, "%s: the expression failed to build", what);
  char **names = derivative_names(e, vjp);
  int n_extra = vjp ? e->n_roots : e->n_inputs;
  zmlx_status st = names ? zmlxi_expr_clone(e, (const char *const *)names, n_extra, &ps->g)
                         : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", what);
  free_names(names, n_extra);
  if (st != ZMLX_OK) return st;
  ps->n0 = e->n_nodes;
  ps->active = depends_on_inputs(e);
  ps->d = malloc(sizeof *ps->d * (size_t)(ps->n0 ? ps->n0 : 1));
  if (!ps->active || !ps->d) {
    free(ps->active);
    free(ps->d);
    zmlxi_expr_free(ps->g);
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", what);
  }
  for (int32_t i = 0; i < ps->n0; i++) ps->d[i] = -1;
  return ZMLX_OK;
}

static void accumulate(zmlx_expr *g, int32_t *slot, int32_t term) {
  if (is_zero_const(g, term)) return;
  *slot = *slot < 0 ? term : add(g, *slot, term);
}

/* Replace the roots: [old roots if with_primal] + derivs[0..n). */
static zmlx_status set_roots(pass *ps, int with_primal, const int32_t *derivs, int n) {
  zmlx_expr *g = ps->g;
  int n_old = g->n_roots;
  int32_t *old = g->roots;
  g->roots = NULL;
  g->n_roots = 0;
  for (int j = 0; with_primal && j < n_old; j++) zmlxi_expr_add_root(g, old[j]);
  free(old);
  for (int j = 0; j < n; j++) zmlxi_expr_add_root(g, derivs[j] >= 0 ? derivs[j] : 0);
  return g->failed;
}

static zmlx_status pass_end(pass *ps, zmlx_status st, zmlx_expr **out, const char *what) {
  free(ps->active);
  free(ps->d);
  if (st == ZMLX_OK && ps->g->failed)
    st = zmlxi_fail(ps->g->failed, "%s: derivative graph too large (more than %d nodes) or out "
                   "of memory", what, ZMLX_EXPR_MAX_NODES);
  if (st != ZMLX_OK) {
    zmlxi_expr_free(ps->g);
    return st;
  }
  *out = ps->g;
  return ZMLX_OK;
}

/* Reverse sweep: ids descend, so a node's adjoint is complete before it is
 * pushed to its arguments. */
static void backpropagate(pass *ps) {
  zmlx_expr *g = ps->g;
  for (int32_t i = ps->n0 - 1; i >= 0 && !g->failed; i--) {
    if (ps->d[i] < 0) continue;
    zmlx_enode n = g->nodes[i];
    int arity = zmlxi_eop_get((zmlx_eop)n.op)->arity;
    for (int k = 0; k < arity; k++) {
      if (!ps->active[n.arg[k]]) continue;
      int32_t p = partial(g, i, k);
      if (!is_zero_const(g, p)) accumulate(g, &ps->d[n.arg[k]], mul(g, ps->d[i], p));
    }
  }
}

zmlx_status zmlxi_expr_vjp(const zmlx_expr *e, unsigned flags, zmlx_expr **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  pass ps;
  ZMLX_CHECK(pass_begin(e, 1, &ps, "zmlxi_expr_vjp"));
  zmlx_expr *g = ps.g;
  for (int j = 0; j < e->n_roots; j++)
    if (ps.active[e->roots[j]])
      accumulate(g, &ps.d[e->roots[j]], zmlxi_expr_input(g, e->n_inputs + j));
  backpropagate(&ps);
  int32_t *grads = malloc(sizeof *grads * (size_t)(e->n_inputs ? e->n_inputs : 1));
  zmlx_status st = ZMLX_OK;
  if (!grads) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlxi_expr_vjp: out of host memory");
  } else {
    for (int i = 0; i < e->n_inputs; i++) grads[i] = -1;
    for (int32_t i = 0; i < ps.n0; i++)
      if (g->nodes[i].op == ZMLX_EOP_INPUT && g->nodes[i].arg[0] < e->n_inputs)
        grads[g->nodes[i].arg[0]] = ps.d[i];
    set_roots(&ps, flags & ZMLX_EXPR_WITH_PRIMAL, grads, e->n_inputs);
    free(grads);
  }
  return pass_end(&ps, st, out, "zmlxi_expr_vjp");
}

/* Forward sweep over the nodes the roots need. */
static void propagate_tangents(pass *ps, const uint8_t *live, int n_inputs) {
  zmlx_expr *g = ps->g;
  for (int32_t i = 0; i < ps->n0 && !g->failed; i++) {
    if (!live[i] || !ps->active[i]) continue;
    zmlx_enode n = g->nodes[i];
    if (n.op == ZMLX_EOP_INPUT) {
      ps->d[i] = zmlxi_expr_input(g, n_inputs + n.arg[0]);
      continue;
    }
    int arity = zmlxi_eop_get((zmlx_eop)n.op)->arity;
    for (int k = 0; k < arity; k++) {
      int32_t t = ps->d[n.arg[k]];
      if (t < 0) continue;
      int32_t p = partial(g, i, k);
      if (!is_zero_const(g, p)) accumulate(g, &ps->d[i], mul(g, p, t));
    }
  }
}

zmlx_status zmlxi_expr_jvp(const zmlx_expr *e, unsigned flags, zmlx_expr **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  pass ps;
  ZMLX_CHECK(pass_begin(e, 0, &ps, "zmlxi_expr_jvp"));
  uint8_t *live = malloc((size_t)(ps.n0 ? ps.n0 : 1));
  int32_t *tangents = malloc(sizeof *tangents * (size_t)(e->n_roots ? e->n_roots : 1));
  zmlx_status st = ZMLX_OK;
  if (!live || !tangents) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlxi_expr_jvp: out of host memory");
  } else {
    zmlxi_expr_mark_live(e, live);
    propagate_tangents(&ps, live, e->n_inputs);
    for (int j = 0; j < e->n_roots; j++) tangents[j] = ps.d[e->roots[j]];
    set_roots(&ps, flags & ZMLX_EXPR_WITH_PRIMAL, tangents, e->n_roots);
  }
  free(live);
  free(tangents);
  return pass_end(&ps, st, out, "zmlxi_expr_jvp");
}
