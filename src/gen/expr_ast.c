/*
 * Expression graphs: the node arena, hash-consing and queries.
 *
 * Every node is interned: building an identical (op, args, value) twice
 * returns the same id, which is what makes common subexpressions shared and
 * lets the emitter compute each once. Commutative operands are put in id
 * order first so `a*b` and `b*a` meet too (IEEE + and * are exactly
 * commutative, so this never changes a result).
 */
#include "gen/expr.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const zmlx_eop_info op_info[ZMLX_EOP_COUNT] = {
    [ZMLX_EOP_CONST] = {"const", 0, 0, 0},
    [ZMLX_EOP_INPUT] = {"input", 0, 0, 0},
    [ZMLX_EOP_PARAM] = {"param", 0, 0, 0},
    [ZMLX_EOP_NEG] = {"-", 1, 1, 0},
    [ZMLX_EOP_NOT] = {"!", 1, 1, 0},
    [ZMLX_EOP_EXP] = {"exp", 1, 0, 0},
    [ZMLX_EOP_EXP2] = {"exp2", 1, 0, 0},
    [ZMLX_EOP_EXPM1] = {"expm1", 1, 0, 0},
    [ZMLX_EOP_LOG] = {"log", 1, 0, 0},
    [ZMLX_EOP_LOG2] = {"log2", 1, 0, 0},
    [ZMLX_EOP_LOG1P] = {"log1p", 1, 0, 0},
    [ZMLX_EOP_SQRT] = {"sqrt", 1, 0, 0},
    [ZMLX_EOP_RSQRT] = {"rsqrt", 1, 0, 0},
    [ZMLX_EOP_ABS] = {"abs", 1, 0, 0},
    [ZMLX_EOP_SIGN] = {"sign", 1, 0, 0},
    [ZMLX_EOP_SIN] = {"sin", 1, 0, 0},
    [ZMLX_EOP_COS] = {"cos", 1, 0, 0},
    [ZMLX_EOP_TAN] = {"tan", 1, 0, 0},
    [ZMLX_EOP_TANH] = {"tanh", 1, 0, 0},
    [ZMLX_EOP_SINH] = {"sinh", 1, 0, 0},
    [ZMLX_EOP_COSH] = {"cosh", 1, 0, 0},
    [ZMLX_EOP_ASIN] = {"asin", 1, 0, 0},
    [ZMLX_EOP_ACOS] = {"acos", 1, 0, 0},
    [ZMLX_EOP_ATAN] = {"atan", 1, 0, 0},
    [ZMLX_EOP_ERF] = {"erf", 1, 0, 0},
    [ZMLX_EOP_ERFC] = {"erfc", 1, 0, 0},
    [ZMLX_EOP_FLOOR] = {"floor", 1, 0, 0},
    [ZMLX_EOP_CEIL] = {"ceil", 1, 0, 0},
    [ZMLX_EOP_ROUND] = {"round", 1, 0, 0},
    [ZMLX_EOP_SIGMOID] = {"sigmoid", 1, 0, 0},
    [ZMLX_EOP_SOFTPLUS] = {"softplus", 1, 0, 0},
    [ZMLX_EOP_RELU] = {"relu", 1, 0, 0},
    [ZMLX_EOP_ADD] = {"+", 2, 1, 1},
    [ZMLX_EOP_SUB] = {"-", 2, 1, 0},
    [ZMLX_EOP_MUL] = {"*", 2, 1, 1},
    [ZMLX_EOP_DIV] = {"/", 2, 1, 0},
    [ZMLX_EOP_POW] = {"**", 2, 1, 0},
    [ZMLX_EOP_ATAN2] = {"atan2", 2, 0, 0},
    /* fmin/fmax are symmetric in value, but the gradient goes to the first
     * argument on a tie, so the order is kept. */
    [ZMLX_EOP_MIN] = {"min", 2, 0, 0},
    [ZMLX_EOP_MAX] = {"max", 2, 0, 0},
    [ZMLX_EOP_LT] = {"<", 2, 1, 0},
    [ZMLX_EOP_LE] = {"<=", 2, 1, 0},
    [ZMLX_EOP_GT] = {">", 2, 1, 0},
    [ZMLX_EOP_GE] = {">=", 2, 1, 0},
    [ZMLX_EOP_EQ] = {"==", 2, 1, 1},
    [ZMLX_EOP_NE] = {"!=", 2, 1, 1},
    [ZMLX_EOP_AND] = {"&&", 2, 1, 1},
    [ZMLX_EOP_OR] = {"||", 2, 1, 1},
    [ZMLX_EOP_SELECT] = {"where", 3, 0, 0},
};

const zmlx_eop_info *zmlxi_eop_get(zmlx_eop op) {
  if ((int)op < 0 || op >= ZMLX_EOP_COUNT) return NULL;
  return &op_info[op];
}

/* ------------------------------------------------------------ hashing */

static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

static uint64_t double_bits(double v) {
  uint64_t u;
  memcpy(&u, &v, sizeof u);
  return u;
}

static uint64_t node_hash(const zmlx_enode *n) {
  uint64_t h = mix64((uint64_t)(uint32_t)n->op + 0x9e3779b97f4a7c15ULL);
  for (int k = 0; k < 3; k++) h = mix64(h ^ (uint64_t)(uint32_t)n->arg[k]);
  if (n->op == ZMLX_EOP_CONST) h = mix64(h ^ double_bits(n->value));
  return h;
}

static int node_equal(const zmlx_enode *a, const zmlx_enode *b) {
  if (a->op != b->op) return 0;
  for (int k = 0; k < 3; k++)
    if (a->arg[k] != b->arg[k]) return 0;
  /* Bitwise, so 0.0 and -0.0 stay apart and NaN meets itself. */
  return a->op != ZMLX_EOP_CONST || double_bits(a->value) == double_bits(b->value);
}

static zmlx_status set_failed(zmlx_expr *e, zmlx_status s) {
  if (e->failed == ZMLX_OK) e->failed = s;
  return s;
}

static int grow_table(zmlx_expr *e) {
  uint32_t cap = e->table_cap ? e->table_cap * 2 : 64;
  int32_t *t = malloc(sizeof *t * cap);
  if (!t) return 0;
  for (uint32_t i = 0; i < cap; i++) t[i] = -1;
  for (int32_t id = 0; id < e->n_nodes; id++) {
    uint32_t i = (uint32_t)node_hash(&e->nodes[id]) & (cap - 1);
    while (t[i] >= 0) i = (i + 1) & (cap - 1);
    t[i] = id;
  }
  free(e->table);
  e->table = t;
  e->table_cap = cap;
  return 1;
}

static int grow_nodes(zmlx_expr *e) {
  if (e->n_nodes >= ZMLX_EXPR_MAX_NODES) return 0;
  int32_t cap = e->cap_nodes ? e->cap_nodes * 2 : 64;
  zmlx_enode *n = realloc(e->nodes, sizeof *n * (size_t)cap);
  if (!n) return 0;
  e->nodes = n;
  e->cap_nodes = cap;
  return 1;
}

int32_t zmlxi_expr_intern(zmlx_expr *e, const zmlx_enode *n) {
  if (e->failed) return 0;
  /* Keep the load factor under 1/2 so probes stay short. */
  if ((uint64_t)(e->n_nodes + 1) * 2 > e->table_cap && !grow_table(e)) {
    set_failed(e, ZMLX_ERR_OUT_OF_MEMORY);
    return 0;
  }
  uint32_t mask = e->table_cap - 1;
  uint32_t i = (uint32_t)node_hash(n) & mask;
  for (; e->table[i] >= 0; i = (i + 1) & mask)
    if (node_equal(&e->nodes[e->table[i]], n)) return e->table[i];
  if (e->n_nodes == e->cap_nodes && !grow_nodes(e)) {
    set_failed(e, ZMLX_ERR_OUT_OF_MEMORY);
    return 0;
  }
  int32_t id = e->n_nodes++;
  e->nodes[id] = *n;
  e->table[i] = id;
  return id;
}

/* ------------------------------------------------------------ constructors */

int32_t zmlxi_expr_const(zmlx_expr *e, double v) {
  zmlx_enode n = {ZMLX_EOP_CONST, {-1, -1, -1}, isnan(v) ? NAN : v};
  return zmlxi_expr_intern(e, &n);
}

static int32_t leaf(zmlx_expr *e, zmlx_eop op, int index, int count) {
  if (index < 0 || index >= count) {
    set_failed(e, ZMLX_ERR_INTERNAL);
    return 0;
  }
  zmlx_enode n = {op, {index, -1, -1}, 0.0};
  return zmlxi_expr_intern(e, &n);
}

int32_t zmlxi_expr_input(zmlx_expr *e, int index) {
  return leaf(e, ZMLX_EOP_INPUT, index, e->n_inputs);
}

int32_t zmlxi_expr_param(zmlx_expr *e, int index) {
  return leaf(e, ZMLX_EOP_PARAM, index, e->n_params);
}

/* Internal callers only, but a wrong id must fail, not read out of bounds. */
static int args_valid(const zmlx_expr *e, zmlx_eop op, const int32_t *args) {
  const zmlx_eop_info *info = zmlxi_eop_get(op);
  if (!info || info->arity == 0) return 0;
  for (int k = 0; k < 3; k++) {
    int used = k < info->arity;
    if (used && (args[k] < 0 || args[k] >= e->n_nodes)) return 0;
    if (!used && args[k] != -1) return 0;
  }
  return 1;
}

int32_t zmlxi_expr_op(zmlx_expr *e, zmlx_eop op, int32_t a, int32_t b, int32_t c) {
  if (e->failed) return 0;
  int32_t args[3] = {a, b, c};
  if (!args_valid(e, op, args)) {
    set_failed(e, ZMLX_ERR_INTERNAL);
    return 0;
  }
  if (op_info[op].commutative && args[0] > args[1]) {
    args[0] = b;
    args[1] = a;
  }
  int32_t r = zmlxi_expr_simplify_node(e, op, args[0], args[1], args[2]);
  if (r >= 0 || e->failed) return e->failed ? 0 : r;
  zmlx_enode n = {op, {args[0], args[1], args[2]}, 0.0};
  return zmlxi_expr_intern(e, &n);
}

zmlx_status zmlxi_expr_add_root(zmlx_expr *e, int32_t node) {
  if (e->failed) return e->failed;
  if (node < 0 || node >= e->n_nodes) return set_failed(e, ZMLX_ERR_INTERNAL);
  int32_t *r = realloc(e->roots, sizeof *r * (size_t)(e->n_roots + 1));
  if (!r) return set_failed(e, ZMLX_ERR_OUT_OF_MEMORY);
  e->roots = r;
  e->roots[e->n_roots++] = node;
  return ZMLX_OK;
}

/* ------------------------------------------------------------ lifetime */

static char **copy_names(const char *const *names, int n, int extra, const char *const *more) {
  char **out = calloc((size_t)(n + extra) + 1, sizeof *out);
  if (!out) return NULL;
  for (int i = 0; i < n + extra; i++) {
    const char *s = i < n ? names[i] : more[i - n];
    out[i] = zmlxi_strdup(s ? s : "");
    if (!out[i]) {
      for (int j = 0; j < i; j++) free(out[j]);
      free(out);
      return NULL;
    }
  }
  return out;
}

static void free_names(char **names, int n) {
  if (!names) return;
  for (int i = 0; i < n; i++) free(names[i]);
  free(names);
}

void zmlxi_expr_free(zmlx_expr *e) {
  if (!e) return;
  free(e->nodes);
  free(e->table);
  free_names(e->input_names, e->n_inputs);
  free_names(e->param_names, e->n_params);
  free(e->roots);
  free(e);
}

zmlx_status zmlxi_expr_create(const char *const *input_names, int n_inputs,
                             const char *const *param_names, int n_params, zmlx_expr **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  if (n_inputs < 0 || n_params < 0 || (n_inputs && !input_names) || (n_params && !param_names))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "expression: bad input/parameter name lists");
  zmlx_expr *e = calloc(1, sizeof *e);
  if (!e) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "expression: out of host memory");
  e->input_names = copy_names(input_names, n_inputs, 0, NULL);
  e->param_names = copy_names(param_names, n_params, 0, NULL);
  e->n_inputs = e->input_names ? n_inputs : 0;
  e->n_params = e->param_names ? n_params : 0;
  /* Node 0 is the constant 0: what failed constructors hand back. */
  if (!e->input_names || !e->param_names || zmlxi_expr_const(e, 0.0) != 0) {
    zmlxi_expr_free(e);
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "expression: out of host memory");
  }
  *out = e;
  return ZMLX_OK;
}

zmlx_status zmlxi_expr_clone(const zmlx_expr *e, const char *const *extra_names,
                            int extra_inputs, zmlx_expr **out) {
  ZMLX_REQUIRE_ARG(e);
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  zmlx_expr *c = calloc(1, sizeof *c);
  if (!c) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "expression: out of host memory");
  c->nodes = malloc(sizeof *c->nodes * (size_t)e->cap_nodes);
  c->table = malloc(sizeof *c->table * (size_t)e->table_cap);
  c->roots = malloc(sizeof *c->roots * (size_t)(e->n_roots ? e->n_roots : 1));
  c->input_names =
      copy_names((const char *const *)e->input_names, e->n_inputs, extra_inputs, extra_names);
  c->param_names = copy_names((const char *const *)e->param_names, e->n_params, 0, NULL);
  c->n_inputs = c->input_names ? e->n_inputs + extra_inputs : 0;
  c->n_params = c->param_names ? e->n_params : 0;
  if (!c->nodes || !c->table || !c->roots || !c->input_names || !c->param_names) {
    zmlxi_expr_free(c);
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "expression: out of host memory");
  }
  memcpy(c->nodes, e->nodes, sizeof *c->nodes * (size_t)e->n_nodes);
  memcpy(c->table, e->table, sizeof *c->table * (size_t)e->table_cap);
  memcpy(c->roots, e->roots, sizeof *c->roots * (size_t)e->n_roots);
  c->n_nodes = e->n_nodes;
  c->cap_nodes = e->cap_nodes;
  c->table_cap = e->table_cap;
  c->n_roots = e->n_roots;
  c->failed = e->failed;
  *out = c;
  return ZMLX_OK;
}

/* ------------------------------------------------------------ queries */

void zmlxi_expr_mark_live(const zmlx_expr *e, uint8_t *live) {
  memset(live, 0, (size_t)e->n_nodes);
  for (int j = 0; j < e->n_roots; j++) live[e->roots[j]] = 1;
  /* Children have smaller ids, so one downward sweep reaches everything. */
  for (int32_t i = e->n_nodes - 1; i >= 0; i--) {
    const zmlx_enode *n = &e->nodes[i];
    if (!live[i]) continue;
    int arity = op_info[n->op].arity;
    for (int k = 0; k < arity; k++) live[n->arg[k]] = 1;
  }
}

int zmlxi_expr_root_is_const(const zmlx_expr *e, int j, double *value) {
  if (!e || j < 0 || j >= e->n_roots) return 0;
  const zmlx_enode *n = &e->nodes[e->roots[j]];
  if (n->op != ZMLX_EOP_CONST) return 0;
  if (value) *value = n->value;
  return 1;
}

static int uses_leaf(const zmlx_expr *e, zmlx_eop op, int index) {
  if (!e || e->n_nodes == 0) return 0;
  uint8_t *live = malloc((size_t)e->n_nodes);
  /* Without memory, answer "used": the conservative choice for callers. */
  if (!live) return 1;
  zmlxi_expr_mark_live(e, live);
  int used = 0;
  for (int32_t i = 0; i < e->n_nodes && !used; i++)
    used = live[i] && e->nodes[i].op == (int32_t)op && e->nodes[i].arg[0] == index;
  free(live);
  return used;
}

int zmlxi_expr_uses_input(const zmlx_expr *e, int i) { return uses_leaf(e, ZMLX_EOP_INPUT, i); }

int zmlxi_expr_uses_param(const zmlx_expr *e, int i) { return uses_leaf(e, ZMLX_EOP_PARAM, i); }

int32_t zmlxi_expr_live_count(const zmlx_expr *e) {
  if (!e || e->n_nodes == 0) return 0;
  uint8_t *live = malloc((size_t)e->n_nodes);
  if (!live) return -1;
  zmlxi_expr_mark_live(e, live);
  int32_t count = 0;
  for (int32_t i = 0; i < e->n_nodes; i++) count += live[i];
  free(live);
  return count;
}
