/*
 * Local rewrite rules, applied by zmlxi_expr_op to every node as it is built
 * (so parsed text, gradients and tangents are all simplified, and a rule
 * never has to revisit a finished graph).
 *
 * Rules (a, b: any nodes; c: a condition):
 *   constant folding of any op whose arguments are all constants, with the
 *     interpreter's f64 semantics (zmlxi_expr_apply);
 *   where(const, a, b) -> a or b; where(c, a, a) -> a; min(a,a), max(a,a) -> a
 *   --a -> a;  a + 0, 0 + a, a - 0 -> a;  0 - a -> -a;  a - a -> 0
 *   a + (-b) -> a - b;  a - (-b) -> a + b;  (-a) * (-b) -> a * b
 *   a * 1, 1 * a, a / 1, a ** 1 -> a;  a * -1, a / -1 -> -a
 *   a * 0, 0 * a, 0 / a -> 0;  a ** 0 -> 1;  1 ** a -> 1;  a ** 2 -> a * a
 *   a * (1 / b) -> a / b
 *   where(c, a1, b1) + where(c, a2, b2) -> where(c, a1 + a2, b1 + b2)
 *   where(c, a, 0) * b -> where(c, a * b, 0)    (also / b, unary minus, and
 *     with the zero in the other branch)
 *
 * What the rules ignore, on purpose: a * 0 -> 0, 0 / a -> 0 and a - a -> 0
 * drop the NaN or inf that a non-finite `a` would have produced, and
 * a + 0 -> a keeps the sign of a zero `a`. The where() distribution rule is
 * the same trade: a gradient masked to 0 by where() stays 0 even where the
 * other branch's derivative is infinite (the classic NaN-through-where
 * problem), which is the answer users want. The f64 interpreter evaluates
 * the simplified graph, so reference and kernels agree.
 *
 * Rules that build new nodes recurse into the constructor; rewrite_depth
 * bounds that recursion so deeply nested where() masks cannot blow up the
 * stack or the graph.
 */
#include "gen/expr.h"

#define MAX_REWRITE_DEPTH 4

static const zmlx_enode *node(const zmlx_expr *e, int32_t id) { return &e->nodes[id]; }

static int is_op(const zmlx_expr *e, int32_t id, zmlx_eop op) {
  return node(e, id)->op == (int32_t)op;
}

static int is_value(const zmlx_expr *e, int32_t id, double v) {
  return is_op(e, id, ZMLX_EOP_CONST) && node(e, id)->value == v;
}

/* 0.0 and -0.0 both. */
static int is_zero(const zmlx_expr *e, int32_t id) { return is_value(e, id, 0.0); }

static int can_rewrite(const zmlx_expr *e) { return e->rewrite_depth < MAX_REWRITE_DEPTH; }

static int32_t build(zmlx_expr *e, zmlx_eop op, int32_t a, int32_t b, int32_t c) {
  e->rewrite_depth++;
  int32_t r = zmlxi_expr_op(e, op, a, b, c);
  e->rewrite_depth--;
  return r;
}

static int32_t fold(zmlx_expr *e, zmlx_eop op, const int32_t *args, int arity) {
  double v[3] = {0.0, 0.0, 0.0};
  for (int k = 0; k < arity; k++) {
    if (!is_op(e, args[k], ZMLX_EOP_CONST)) return -1;
    v[k] = node(e, args[k])->value;
  }
  return zmlxi_expr_const(e, zmlxi_expr_apply(op, v[0], v[1], v[2]));
}

/* `m` is where(c, x, 0) or where(c, 0, x): push op(., other) into the
 * non-zero branch. `m_first` says whether m is the left operand. */
static int32_t distribute_mask(zmlx_expr *e, zmlx_eop op, int32_t m, int32_t other,
                               int m_first) {
  if (!can_rewrite(e) || !is_op(e, m, ZMLX_EOP_SELECT)) return -1;
  const zmlx_enode *s = node(e, m);
  int32_t cond = s->arg[0], t = s->arg[1], f = s->arg[2];
  int zero_f = is_zero(e, f), zero_t = is_zero(e, t);
  if (zero_f == zero_t) return -1;
  int32_t x = zero_f ? t : f;
  int32_t y = m_first ? build(e, op, x, other, -1) : build(e, op, other, x, -1);
  int32_t zero = zero_f ? f : t;
  return zero_f ? build(e, ZMLX_EOP_SELECT, cond, y, zero)
                : build(e, ZMLX_EOP_SELECT, cond, zero, y);
}

static int32_t neg_of(zmlx_expr *e, int32_t a) { return build(e, ZMLX_EOP_NEG, a, -1, -1); }

static int32_t simplify_neg(zmlx_expr *e, int32_t a) {
  if (is_op(e, a, ZMLX_EOP_NEG)) return node(e, a)->arg[0];
  if (!can_rewrite(e) || !is_op(e, a, ZMLX_EOP_SELECT)) return -1;
  /* -where(c, x, 0) -> where(c, -x, 0): keeps masks outermost. */
  const zmlx_enode *s = node(e, a);
  int32_t cond = s->arg[0], t = s->arg[1], f = s->arg[2];
  if (is_zero(e, f) && !is_zero(e, t)) return build(e, ZMLX_EOP_SELECT, cond, neg_of(e, t), f);
  if (is_zero(e, t) && !is_zero(e, f)) return build(e, ZMLX_EOP_SELECT, cond, t, neg_of(e, f));
  return -1;
}

/* where(c, a1, b1) + where(c, a2, b2) -> where(c, a1 + a2, b1 + b2): merges
 * the adjoints that where() routes to its two branches. */
static int32_t add_selects(zmlx_expr *e, int32_t a, int32_t b) {
  if (!is_op(e, a, ZMLX_EOP_SELECT) || !is_op(e, b, ZMLX_EOP_SELECT)) return -1;
  zmlx_enode s = *node(e, a), t = *node(e, b); /* copies: building moves the arena */
  if (s.arg[0] != t.arg[0]) return -1;
  int32_t yes = build(e, ZMLX_EOP_ADD, s.arg[1], t.arg[1], -1);
  int32_t no = build(e, ZMLX_EOP_ADD, s.arg[2], t.arg[2], -1);
  return build(e, ZMLX_EOP_SELECT, s.arg[0], yes, no);
}

static int32_t simplify_add(zmlx_expr *e, int32_t a, int32_t b) {
  if (is_zero(e, b)) return a;
  if (is_zero(e, a)) return b;
  if (!can_rewrite(e)) return -1;
  int32_t r = add_selects(e, a, b);
  if (r >= 0) return r;
  if (is_op(e, b, ZMLX_EOP_NEG)) return build(e, ZMLX_EOP_SUB, a, node(e, b)->arg[0], -1);
  if (is_op(e, a, ZMLX_EOP_NEG)) return build(e, ZMLX_EOP_SUB, b, node(e, a)->arg[0], -1);
  return -1;
}

static int32_t simplify_sub(zmlx_expr *e, int32_t a, int32_t b) {
  if (is_zero(e, b)) return a;
  if (a == b) return zmlxi_expr_const(e, 0.0);
  if (!can_rewrite(e)) return -1;
  if (is_zero(e, a)) return neg_of(e, b);
  if (is_op(e, b, ZMLX_EOP_NEG)) return build(e, ZMLX_EOP_ADD, a, node(e, b)->arg[0], -1);
  return -1;
}

/* a * (1 / b) -> a / b; `d` is the candidate 1 / b. */
static int32_t mul_by_reciprocal(zmlx_expr *e, int32_t a, int32_t d) {
  if (!is_op(e, d, ZMLX_EOP_DIV) || !is_value(e, node(e, d)->arg[0], 1.0)) return -1;
  return build(e, ZMLX_EOP_DIV, a, node(e, d)->arg[1], -1);
}

static int32_t simplify_mul(zmlx_expr *e, int32_t a, int32_t b) {
  if (is_value(e, b, 1.0)) return a;
  if (is_value(e, a, 1.0)) return b;
  if (is_zero(e, b)) return b;
  if (is_zero(e, a)) return a;
  if (!can_rewrite(e)) return -1;
  if (is_value(e, b, -1.0)) return neg_of(e, a);
  if (is_value(e, a, -1.0)) return neg_of(e, b);
  if (is_op(e, a, ZMLX_EOP_NEG) && is_op(e, b, ZMLX_EOP_NEG))
    return build(e, ZMLX_EOP_MUL, node(e, a)->arg[0], node(e, b)->arg[0], -1);
  int32_t r = mul_by_reciprocal(e, a, b);
  if (r < 0) r = mul_by_reciprocal(e, b, a);
  if (r < 0) r = distribute_mask(e, ZMLX_EOP_MUL, a, b, 1);
  if (r < 0) r = distribute_mask(e, ZMLX_EOP_MUL, b, a, 0);
  return r;
}

static int32_t simplify_div(zmlx_expr *e, int32_t a, int32_t b) {
  if (is_value(e, b, 1.0)) return a;
  if (is_zero(e, a)) return a;
  if (!can_rewrite(e)) return -1;
  if (is_value(e, b, -1.0)) return neg_of(e, a);
  return distribute_mask(e, ZMLX_EOP_DIV, a, b, 1);
}

static int32_t simplify_pow(zmlx_expr *e, int32_t a, int32_t b) {
  if (is_value(e, b, 1.0)) return a;
  if (is_zero(e, b) || is_value(e, a, 1.0)) return zmlxi_expr_const(e, 1.0);
  if (is_value(e, b, 2.0) && can_rewrite(e)) return build(e, ZMLX_EOP_MUL, a, a, -1);
  return -1;
}

static int32_t simplify_select(zmlx_expr *e, int32_t c, int32_t a, int32_t b) {
  if (is_op(e, c, ZMLX_EOP_CONST)) return node(e, c)->value != 0.0 ? a : b;
  if (a == b) return a;
  return -1;
}

int32_t zmlxi_expr_simplify_node(zmlx_expr *e, zmlx_eop op, int32_t a, int32_t b, int32_t c) {
  int32_t args[3] = {a, b, c};
  int32_t r = fold(e, op, args, zmlxi_eop_get(op)->arity);
  if (r >= 0) return r;
  switch (op) {
    case ZMLX_EOP_NEG: return simplify_neg(e, a);
    case ZMLX_EOP_ADD: return simplify_add(e, a, b);
    case ZMLX_EOP_SUB: return simplify_sub(e, a, b);
    case ZMLX_EOP_MUL: return simplify_mul(e, a, b);
    case ZMLX_EOP_DIV: return simplify_div(e, a, b);
    case ZMLX_EOP_POW: return simplify_pow(e, a, b);
    case ZMLX_EOP_SELECT: return simplify_select(e, a, b, c);
    case ZMLX_EOP_MIN:
    case ZMLX_EOP_MAX: return a == b ? a : -1;
    default: return -1;
  }
}
