/*
 * The zmlx expression language (DESIGN 3.5): text -> DAG -> derivatives ->
 * dialect statements. Backend independent and pure (no devices, no globals).
 *
 *   s = sigmoid(x); x * s * y          two statements, inputs x and y
 *   leaky_relu(x, alpha)               alpha: a scalar parameter per call
 *
 * Pipeline and guarantees:
 *   - zmlxi_expr_parse builds a hash-consed DAG directly (the DAG is the AST).
 *     Every node is created through the simplifying constructor
 *     (expr_simplify.c), so constant folding, algebraic identities and common
 *     subexpression sharing happen as the graph is built.
 *   - Children always have smaller node ids than their parents, so id order is
 *     a topological order. Every pass (eval, diff, emit, to_string) loops over
 *     ids instead of recursing over the graph: a 100,000-statement chain cannot
 *     overflow the stack. The parser's own recursion is bounded by
 *     ZMLX_EXPR_MAX_NESTING.
 *   - The user's text never reaches kernel source. The emitter prints only
 *     from the graph: numbers are re-printed from doubles, inputs and
 *     parameters through C text the caller supplies, temporaries under a
 *     caller-chosen prefix. User identifiers are not printed at all.
 *   - Kernels compute in f32; zmlxi_expr_eval is the f64 reference.
 *
 * Errors go through zmlxi_fail(): ZMLX_ERR_PARSE for bad text (message
 * "LINE:COL: what\n  <source line>\n  <caret>"), ZMLX_ERR_INVALID_ARG /
 * ZMLX_ERR_NULL_ARG for bad calls, ZMLX_ERR_OUT_OF_MEMORY when the graph
 * cannot grow (also when it would exceed ZMLX_EXPR_MAX_NODES).
 */
#ifndef ZMLX_GEN_EXPR_H
#define ZMLX_GEN_EXPR_H

#include "runtime/internal.h"

/* Open constructs (parentheses, call arguments, unary operators, right
 * operands of binary operators and `**`, ternary branches) the parser
 * accepts at once. At the limit the parser's recursion uses about 80 KB of
 * stack (measured, -O2, x86-64); no other pass recurses over the graph. */
#define ZMLX_EXPR_MAX_NESTING 256
/* Longest identifier (input, parameter, local name). */
#define ZMLX_EXPR_MAX_IDENT 128
/* Graph size limit: keeps ids in int32 and memory bounded for hostile text. */
#define ZMLX_EXPR_MAX_NODES (1 << 22)

/* ------------------------------------------------------------------ graph */

/* Node operations. Booleans are floats: comparisons, `!`, `&&`, `||` give
 * 1.0 or 0.0, and a condition is true when it is != 0 (NaN is true, as in C).
 * User-level functions that are compositions (silu, gelu, clamp, ...) are
 * expanded by the parser into these; see the function table. */
typedef enum zmlx_eop {
  /* leaves */
  ZMLX_EOP_CONST, /* value */
  ZMLX_EOP_INPUT, /* arg[0] = input index */
  ZMLX_EOP_PARAM, /* arg[0] = parameter index */
  /* unary */
  ZMLX_EOP_NEG,
  ZMLX_EOP_NOT,
  ZMLX_EOP_EXP,
  ZMLX_EOP_EXP2,
  ZMLX_EOP_EXPM1,
  ZMLX_EOP_LOG,
  ZMLX_EOP_LOG2,
  ZMLX_EOP_LOG1P,
  ZMLX_EOP_SQRT,
  ZMLX_EOP_RSQRT,
  ZMLX_EOP_ABS,
  ZMLX_EOP_SIGN,
  ZMLX_EOP_SIN,
  ZMLX_EOP_COS,
  ZMLX_EOP_TAN,
  ZMLX_EOP_TANH,
  ZMLX_EOP_SINH,
  ZMLX_EOP_COSH,
  ZMLX_EOP_ASIN,
  ZMLX_EOP_ACOS,
  ZMLX_EOP_ATAN,
  ZMLX_EOP_ERF,
  ZMLX_EOP_ERFC,
  ZMLX_EOP_FLOOR,
  ZMLX_EOP_CEIL,
  ZMLX_EOP_ROUND, /* half away from zero, as C round() */
  ZMLX_EOP_SIGMOID,
  ZMLX_EOP_SOFTPLUS,
  ZMLX_EOP_RELU,
  /* binary */
  ZMLX_EOP_ADD,
  ZMLX_EOP_SUB,
  ZMLX_EOP_MUL,
  ZMLX_EOP_DIV,
  ZMLX_EOP_POW,
  ZMLX_EOP_ATAN2, /* atan2(y, x) */
  ZMLX_EOP_MIN,   /* fmin */
  ZMLX_EOP_MAX,   /* fmax */
  ZMLX_EOP_LT,
  ZMLX_EOP_LE,
  ZMLX_EOP_GT,
  ZMLX_EOP_GE,
  ZMLX_EOP_EQ,
  ZMLX_EOP_NE,
  ZMLX_EOP_AND,
  ZMLX_EOP_OR,
  /* ternary */
  ZMLX_EOP_SELECT, /* arg[0] != 0 ? arg[1] : arg[2] */
  ZMLX_EOP_COUNT
} zmlx_eop;

/* Static facts about an operation. */
typedef struct zmlx_eop_info {
  const char *name;  /* function name ("exp") or operator text ("+") */
  int arity;         /* 0 for leaves */
  int is_operator;   /* printed infix/prefix rather than as a call */
  int commutative;   /* exact IEEE commutativity: args are put in id order */
} zmlx_eop_info;

const zmlx_eop_info *zmlxi_eop_get(zmlx_eop op);

typedef struct zmlx_enode {
  int32_t op;     /* zmlx_eop */
  int32_t arg[3]; /* child ids (or the index of an INPUT / PARAM); -1 unused */
  double value;   /* CONST only; NaN stored with one canonical bit pattern */
} zmlx_enode;

/* A graph plus its roots (outputs). Opaque to everything but src/gen. */
typedef struct zmlx_expr {
  zmlx_enode *nodes;
  int32_t n_nodes, cap_nodes;
  int32_t *table; /* hash-consing: open addressing over node ids, -1 empty */
  uint32_t table_cap;
  /* Sticky failure of a constructor (OOM or too many nodes): constructors
   * then return node 0 so callers can finish a pass and check once. */
  zmlx_status failed;
  int rewrite_depth; /* bounds nested rewrites in the simplifier */
  int n_inputs;
  char **input_names;
  int n_params;
  char **param_names;
  int n_roots;
  int32_t *roots;
} zmlx_expr;

/* ------------------------------------------------------------ constructors
 * (expr_ast.c). All return a node id; on failure they set e->failed and
 * return 0 (node 0 is always the constant 0). */

/* An empty graph with the given symbol names (copied; not validated here). */
zmlx_status zmlxi_expr_create(const char *const *input_names, int n_inputs,
                             const char *const *param_names, int n_params, zmlx_expr **out);
/* Deep copy; extra_inputs more inputs are appended, named by extra_names. */
zmlx_status zmlxi_expr_clone(const zmlx_expr *e, const char *const *extra_names,
                            int extra_inputs, zmlx_expr **out);
void zmlxi_expr_free(zmlx_expr *e);

int32_t zmlxi_expr_const(zmlx_expr *e, double v);
int32_t zmlxi_expr_input(zmlx_expr *e, int index);
int32_t zmlxi_expr_param(zmlx_expr *e, int index);
/* Simplifying constructor for every non-leaf op (unused args: -1). */
int32_t zmlxi_expr_op(zmlx_expr *e, zmlx_eop op, int32_t a, int32_t b, int32_t c);
static inline int32_t zmlx_expr_op1(zmlx_expr *e, zmlx_eop op, int32_t a) {
  return zmlxi_expr_op(e, op, a, -1, -1);
}
static inline int32_t zmlx_expr_op2(zmlx_expr *e, zmlx_eop op, int32_t a, int32_t b) {
  return zmlxi_expr_op(e, op, a, b, -1);
}
/* Hash-cons a node exactly as given (no simplification). */
int32_t zmlxi_expr_intern(zmlx_expr *e, const zmlx_enode *n);
/* Append a root. */
zmlx_status zmlxi_expr_add_root(zmlx_expr *e, int32_t node);

/* The rewrite rules (expr_simplify.c): the id of an equivalent existing or
 * simpler node, or -1 when `op(a, b, c)` should be interned as it is. */
int32_t zmlxi_expr_simplify_node(zmlx_expr *e, zmlx_eop op, int32_t a, int32_t b, int32_t c);

/* Mark, in `live` (n_nodes bytes), every node reachable from the roots. */
void zmlxi_expr_mark_live(const zmlx_expr *e, uint8_t *live);

/* ----------------------------------------------------------------- parsing */

/* Parse `text` with the given inputs and scalar parameters. Names must be
 * identifiers ([A-Za-z_][A-Za-z0-9_]*, at most ZMLX_EXPR_MAX_IDENT bytes),
 * distinct, and neither a function name nor `inf` / `nan`. The result has
 * one root. Caller frees with zmlxi_expr_free. */
zmlx_status zmlxi_expr_parse(const char *text, const char *const *input_names, int n_inputs,
                            const char *const *param_names, int n_params, zmlx_expr **out);
/* Same for `len` bytes that need not be NUL-terminated (a NUL byte inside is
 * a parse error). */
zmlx_status zmlxi_expr_parse_n(const char *text, size_t len, const char *const *input_names,
                              int n_inputs, const char *const *param_names, int n_params,
                              zmlx_expr **out);

/* The user-visible function table (for tests, docs and the CLI). */
typedef struct zmlx_expr_function {
  const char *name;
  int min_args, max_args;
  const char *doc; /* one line: the definition, e.g. "x * sigmoid(x)" */
} zmlx_expr_function;

int zmlxi_expr_function_count(void);
const zmlx_expr_function *zmlxi_expr_function_at(int i);

/* A function as the parser sees it (expr_functions.c): a primitive op or a
 * builder that composes primitives from the argument nodes. */
typedef struct zmlx_expr_fn_entry {
  zmlx_expr_function pub;
  zmlx_eop op;                                             /* a primitive: one node of this op */
  int32_t (*build)(zmlx_expr *e, const int32_t *a, int n); /* a composition (op unused) */
} zmlx_expr_fn_entry;
/* The function named by the len bytes at s, or NULL. */
const zmlx_expr_fn_entry *zmlxi_expr_find_function(const char *s, size_t len);

/* ------------------------------------------------------------ derivatives
 * (expr_diff.c). Both return a new graph; `e` is unchanged. Gradients are
 * taken w.r.t. inputs only, never parameters.
 *
 * VJP: inputs = e's inputs, then one cotangent per root of e, named "g" (one
 * root) or "g0", "g1", ... (underscores appended on a name clash). Roots =
 * [e's roots when ZMLX_EXPR_WITH_PRIMAL] + one gradient per input of e
 * (the constant 0 for an input the roots do not depend on).
 *
 * JVP: inputs = e's inputs, then one tangent per input, named "t_<name>".
 * Roots = [e's roots when ZMLX_EXPR_WITH_PRIMAL] + one tangent per root. */
#define ZMLX_EXPR_WITH_PRIMAL 1u

zmlx_status zmlxi_expr_vjp(const zmlx_expr *e, unsigned flags, zmlx_expr **out);
zmlx_status zmlxi_expr_jvp(const zmlx_expr *e, unsigned flags, zmlx_expr **out);

/* ---------------------------------------------------------- interpretation */

/* Evaluate every root in f64: inputs[n_inputs], params[n_params] (either may
 * be NULL when its count is 0), out[n_roots]. */
zmlx_status zmlxi_expr_eval(const zmlx_expr *e, const double *inputs, const double *params,
                           double *out);
/* The f64 semantics of one op (also used for constant folding). */
double zmlxi_expr_apply(zmlx_eop op, double a, double b, double c);

/* ---------------------------------------------------------------- emission */

/* How generated statements reach the surrounding kernel. */
typedef struct zmlx_expr_emit_ctx {
  /* C expression reading input i, e.g. "x_load(idx)"; required for every
   * input a root depends on (others may be NULL). */
  const char *const *input_text;
  /* C expression giving parameter i, e.g. "alpha"; same rule. */
  const char *const *param_text;
  /* Per root: a statement template where each "%s" is replaced by the
   * root's value, e.g. "out_store(idx, %s)". The emitter adds ";\n". Only
   * "%s" is special. */
  const char *const *root_store;
  const char *temp_prefix; /* temporaries are <prefix>0, <prefix>1...; NULL: "t" */
  const char *indent;      /* before every line; NULL: "  " */
} zmlx_expr_emit_ctx;

/* Append statements computing every root of `e` and storing it:
 *   float t0 = x_load(idx);
 *   float t1 = (1.0f / (1.0f + exp(-t0)));
 *   out_store(idx, (t0 * t1));
 * Every used input / parameter is read once into a temporary; a node used
 * twice or more is computed once into a temporary; single-use nodes are
 * inlined (up to a fixed depth). Only `float` math functions of the dialect
 * are used (exp, log1p, fmax, ...; no zmlx_* activation helpers): sigmoid,
 * softplus etc. are written out in their stable forms. The output is a pure
 * function of the graph and ctx, so equal inputs give byte-identical text. */
zmlx_status zmlxi_expr_emit(const zmlx_expr *e, const zmlx_expr_emit_ctx *ctx, zmlx_sb *sb);

/* Human-readable program in the expression language itself: shared nodes as
 * "tN = ...;" statements, then the root. With one root the text parses back
 * (same inputs and parameters) to an equivalent graph; several roots are
 * printed as a final "[r0, r1, ...]" line. Caller frees *out with free(). */
zmlx_status zmlxi_expr_to_string(const zmlx_expr *e, char **out);

/* ----------------------------------------------------------------- queries */

/* 1 if root j is a constant (value in *value when non-NULL), else 0. */
int zmlxi_expr_root_is_const(const zmlx_expr *e, int j, double *value);
/* 1 if some root depends on input i. */
int zmlxi_expr_uses_input(const zmlx_expr *e, int i);
/* 1 if some root depends on parameter i. */
int zmlxi_expr_uses_param(const zmlx_expr *e, int i);
/* Number of nodes reachable from the roots (shared nodes count once). */
int32_t zmlxi_expr_live_count(const zmlx_expr *e);

#endif /* ZMLX_GEN_EXPR_H */
