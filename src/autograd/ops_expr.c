/* Expression ops under autograd: zmlx_apply (any zmlx_elementwise op),
 * zmlx_apply_expr and the arithmetic built on it (add/sub/mul/div).
 *
 * First-order gradients use the op's own fused VJP / JVP kernels
 * (zmlx_op_vjp / zmlx_op_jvp: one launch, broadcast sums included). When
 * the backward pass is itself being recorded (grad of grad), those kernels
 * would be opaque, so the rule instead applies the engine's derivative
 * graphs as expression ops of their own — each recorded, each again
 * differentiable. That needs the expression text, which autograd keeps for
 * the ops it builds (zmlx_ad_expr, cached per text for the process). */
#include "autograd/ad.h"
#include "gen/expr.h"
#include "gen/patterns.h" /* the op head: its parameter count */

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct zmlx_ad_expr {
  char *key;          /* text, input names, parameter names */
  struct zmlx_ad_expr *next;
  zmlx_expr *graph;   /* the parsed forward, to derive from */
  zmlx_op *op;        /* the forward op */
  int n_inputs, n_params;
  pthread_mutex_t lock; /* guards the lazily built derivatives */
  int derived;
  struct zmlx_ad_expr **vjp; /* per input, over (inputs..., g); NULL: zero */
  struct zmlx_ad_expr *jvp;  /* over (inputs..., t_inputs...) */
};

/* -------------------------------------------------------------- the cache */

#define CACHE_BUCKETS 1024

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static zmlx_ad_expr *cache[CACHE_BUCKETS];

/* Names are identifiers (the parser checks), so '\x1f' and ',' cannot
 * appear in them and the key is unambiguous. */
static char *make_key(const char *text, const char *const *in, int n_in, const char *const *par,
                      int n_par) {
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  zmlxi_sb_append(&sb, text);
  zmlxi_sb_append(&sb, "\x1f");
  for (int i = 0; i < n_in; i++) zmlxi_sb_printf(&sb, "%s%s", i ? "," : "", in[i] ? in[i] : "?");
  zmlxi_sb_append(&sb, "\x1f");
  for (int i = 0; i < n_par; i++) zmlxi_sb_printf(&sb, "%s%s", i ? "," : "", par[i] ? par[i] : "?");
  char *key = NULL;
  return zmlxi_sb_finish(&sb, &key) == ZMLX_OK ? key : NULL;
}

static void expr_free(zmlx_ad_expr *e) {
  if (!e) return;
  zmlx_op_destroy(e->op);
  zmlxi_expr_free(e->graph);
  free(e->vjp);
  free(e->key);
  pthread_mutex_destroy(&e->lock);
  free(e);
}

static zmlx_status expr_new(const char *text, const char *const *in, int n_in,
                            const char *const *par, int n_par, char *key, zmlx_ad_expr **out) {
  zmlx_ad_expr *e = calloc(1, sizeof *e);
  if (!e) {
    free(key);
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  }
  e->key = key;
  e->n_inputs = n_in;
  e->n_params = n_par;
  pthread_mutex_init(&e->lock, NULL);
  zmlx_status st = zmlx_elementwise(text, in, n_in, par, n_par, &e->op);
  if (st == ZMLX_OK) st = zmlxi_expr_parse(text, in, n_in, par, n_par, &e->graph);
  if (st == ZMLX_OK && !(e->vjp = calloc((size_t)n_in, sizeof *e->vjp)))
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  if (st != ZMLX_OK) {
    expr_free(e);
    return st;
  }
  *out = e;
  return ZMLX_OK;
}

zmlx_status zmlxi_ad_expr_get(const char *text, const char *const *input_names, int n_inputs,
                             const char *const *param_names, int n_params, zmlx_ad_expr **out) {
  ZMLX_REQUIRE_ARG(text);
  ZMLX_REQUIRE_ARG(out);
  if (n_inputs > 0) ZMLX_REQUIRE_ARG(input_names);
  if (n_params > 0) ZMLX_REQUIRE_ARG(param_names);
  char *key = make_key(text, input_names, n_inputs, param_names, n_params);
  if (!key) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  uint32_t b = zmlxi_fnv1a32(key) % CACHE_BUCKETS;
  pthread_mutex_lock(&cache_lock);
  zmlx_ad_expr *e = cache[b];
  while (e && strcmp(e->key, key)) e = e->next;
  zmlx_status st = ZMLX_OK;
  if (e) free(key);
  /* Created under the lock: one op per text even under contention. */
  else if ((st = expr_new(text, input_names, n_inputs, param_names, n_params, key, &e)) == ZMLX_OK) {
    e->next = cache[b];
    cache[b] = e;
  }
  pthread_mutex_unlock(&cache_lock);
  *out = st == ZMLX_OK ? e : NULL;
  return st;
}

/* ------------------------------------------------------------ derivatives */

/* Text of root j of a multi-root graph alone (to_string parses back only
 * single-root graphs). */
static zmlx_status root_text(const zmlx_expr *g, int j, char **out) {
  zmlx_expr *c = NULL;
  ZMLX_CHECK(zmlxi_expr_clone(g, NULL, 0, &c));
  c->roots[0] = c->roots[j];
  c->n_roots = 1;
  zmlx_status st = zmlxi_expr_to_string(c, out);
  zmlxi_expr_free(c);
  return st;
}

static zmlx_status derived_op(const zmlx_expr *g, int root, zmlx_ad_expr **out) {
  char *text = NULL;
  ZMLX_CHECK(root_text(g, root, &text));
  zmlx_status st = zmlxi_ad_expr_get(text, (const char *const *)g->input_names, g->n_inputs,
                                    (const char *const *)g->param_names, g->n_params, out);
  free(text);
  return st;
}

static zmlx_status derive(zmlx_ad_expr *e) {
  zmlx_expr *v = NULL, *j = NULL;
  zmlx_status st = zmlxi_expr_vjp(e->graph, 0, &v);
  for (int i = 0; i < e->n_inputs && st == ZMLX_OK; i++) {
    double c;
    if (zmlxi_expr_root_is_const(v, i, &c) && c == 0.0) continue; /* no path from input i */
    st = derived_op(v, i, &e->vjp[i]);
  }
  if (st == ZMLX_OK) st = zmlxi_expr_jvp(e->graph, 0, &j);
  if (st == ZMLX_OK) st = derived_op(j, 0, &e->jvp);
  zmlxi_expr_free(v);
  zmlxi_expr_free(j);
  return st;
}

static zmlx_status ensure_derived(zmlx_ad_expr *e) {
  pthread_mutex_lock(&e->lock);
  zmlx_status st = e->derived ? ZMLX_OK : derive(e);
  if (st == ZMLX_OK) e->derived = 1;
  pthread_mutex_unlock(&e->lock);
  if (st != ZMLX_OK) zmlxi_fail_context(st, "building the derivative ops of '%s'", e->key);
  return st;
}

/* ------------------------------------------------------------- the rule */

typedef struct apply_ctx {
  zmlx_op *op;
  zmlx_ad_expr *expr; /* NULL for a bare zmlx_op */
  int n_params;
  double params[];
} apply_ctx;

static zmlx_status ctx_new(zmlx_op *op, zmlx_ad_expr *e, const double *params, int n_params,
                           apply_ctx **out) {
  apply_ctx *c = malloc(sizeof *c + (size_t)(n_params > 0 ? n_params : 1) * sizeof(double));
  if (!c) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  c->op = op;
  c->expr = e;
  c->n_params = n_params;
  if (n_params > 0) memcpy(c->params, params, (size_t)n_params * sizeof(double));
  *out = c;
  return ZMLX_OK;
}

/* Does differentiating through this rule need recorded (expression) ops? */
static int higher_order(const zmlx_ad_node *n, zmlx_array *const *extra, int n_extra) {
  return zmlxi_ad_should_record(n->in, n->n_in) || zmlxi_ad_should_record(extra, n_extra);
}

static zmlx_status need_expr(const apply_ctx *c, const char *what) {
  if (c->expr) return ensure_derived(c->expr);
  return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "%s of an op called through zmlx_apply needs its "
                   "expression text: use zmlx_apply_expr for ops differentiated twice", what);
}

static zmlx_status apply_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                             zmlx_array **grads) {
  const apply_ctx *c = n->ctx;
  const double *p = c->params;
  if (!higher_order(n, cot, 1))
    return zmlx_op_vjp(c->op, n->in, n->n_in, p, cot[0], NULL, grads);
  ZMLX_CHECK(need_expr(c, "grad of grad"));
  zmlx_array **args = calloc((size_t)n->n_in + 1, sizeof *args);
  if (!args) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  memcpy(args, n->in, (size_t)n->n_in * sizeof *args);
  args[n->n_in] = cot[0];
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < n->n_in && st == ZMLX_OK; i++)
    if (need[i] && c->expr->vjp[i])
      st = zmlxi_ad_expr_apply(c->expr->vjp[i], args, n->n_in + 1, p, &grads[i]);
  free(args);
  return st;
}

static zmlx_status apply_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out_tan) {
  const apply_ctx *c = n->ctx;
  if (!higher_order(n, tan, n->n_in))
    return zmlx_op_jvp(c->op, n->in, n->n_in, c->params, tan, NULL, &out_tan[0]);
  ZMLX_CHECK(need_expr(c, "differentiating a JVP"));
  int m = n->n_in;
  zmlx_array **args = calloc((size_t)(2 * m), sizeof *args), *zero = NULL;
  if (!args) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < m && st == ZMLX_OK; i++) {
    args[i] = n->in[i];
    args[m + i] = tan[i];
    /* A missing tangent is a zero scalar: it broadcasts like the input. */
    if (!tan[i] && !zero) st = zmlx_array_zeros(n->in_meta[0].device, ZMLX_F32, 0, NULL, &zero);
    if (!tan[i]) args[m + i] = zero;
  }
  if (st == ZMLX_OK) st = zmlxi_ad_expr_apply(c->expr->jvp, args, 2 * m, c->params, &out_tan[0]);
  zmlx_array_release(zero);
  free(args);
  return st;
}

static const zmlx_ad_rule APPLY_RULE = {"expression op", apply_vjp, apply_jvp, free};

/* ----------------------------------------------------------- entry points */

static zmlx_status apply_op(zmlx_op *op, zmlx_ad_expr *e, zmlx_array *const *inputs, int n,
                            const double *params, int n_params, zmlx_array **out) {
  ZMLX_CHECK(zmlx_op_call(op, inputs, n, params, NULL, out));
  if (!zmlxi_ad_should_record(inputs, n)) return ZMLX_OK;
  apply_ctx *c = NULL;
  zmlx_status st = ctx_new(op, e, params, n_params, &c);
  if (st == ZMLX_OK)
    st = zmlxi_ad_record(&APPLY_RULE, c, inputs, n, out, 1, ZMLX_AD_SAVE_INPUTS);
  if (st != ZMLX_OK) zmlxi_ad_release_all(out, 1);
  return st;
}

zmlx_status zmlxi_ad_expr_apply(zmlx_ad_expr *e, zmlx_array *const *inputs, int n,
                               const double *params, zmlx_array **out) {
  return apply_op(e->op, e, inputs, n, params, e->n_params, out);
}

/* The node keeps a copy of the parameters; their count is in the op head. */
zmlx_status zmlx_apply(zmlx_op *op, zmlx_array *const *inputs, int n_inputs,
                       const double *params, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(op);
  /* An elementwise op carries its graph: its text (printed back in the
   * expression language) names the shared derivative ops, so the op can be
   * differentiated more than once. First-order kernels stay the op's own. */
  zmlx_ad_expr *e = NULL;
  const zmlx_expr *g = zmlxi_op_forward_expr(op);
  if (g) {
    char *text = NULL;
    ZMLX_CHECK(zmlxi_expr_to_string(g, &text));
    zmlx_status st = zmlxi_ad_expr_get(text, (const char *const *)g->input_names, g->n_inputs,
                                      (const char *const *)g->param_names, g->n_params, &e);
    free(text);
    ZMLX_CHECK(st);
  }
  return apply_op(op, e, inputs, n_inputs, params, op->n_params, out);
}

zmlx_status zmlx_apply_expr(const char *expr, const char *const *input_names,
                            zmlx_array *const *inputs, int n_inputs,
                            const char *const *param_names, const double *params, int n_params,
                            zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  if (n_params > 0) ZMLX_REQUIRE_ARG(params);
  zmlx_ad_expr *e = NULL;
  ZMLX_CHECK(zmlxi_ad_expr_get(expr, input_names, n_inputs, param_names, n_params, &e));
  return zmlxi_ad_expr_apply(e, inputs, n_inputs, params, out);
}

/* ------------------------------------------------------------ arithmetic */

/* The library's own expressions, looked up once per call site. */
static zmlx_status cached(_Atomic(zmlx_ad_expr *) *slot, const char *text,
                          const char *const *in, int n_in, const char *const *par, int n_par,
                          zmlx_ad_expr **out) {
  *out = atomic_load(slot);
  if (*out) return ZMLX_OK;
  ZMLX_CHECK(zmlxi_ad_expr_get(text, in, n_in, par, n_par, out));
  atomic_store(slot, *out);
  return ZMLX_OK;
}

static zmlx_status binary(_Atomic(zmlx_ad_expr *) *slot, const char *text, zmlx_array *a,
                          zmlx_array *b, zmlx_array **out) {
  static const char *const AB[] = {"a", "b"};
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(a);
  ZMLX_REQUIRE_ARG(b);
  zmlx_ad_expr *e = NULL;
  ZMLX_CHECK(cached(slot, text, AB, 2, NULL, 0, &e));
  zmlx_array *in[2] = {a, b};
  return zmlxi_ad_expr_apply(e, in, 2, NULL, out);
}

zmlx_status zmlx_add(zmlx_array *a, zmlx_array *b, zmlx_array **out) {
  static _Atomic(zmlx_ad_expr *) slot;
  return binary(&slot, "a + b", a, b, out);
}

zmlx_status zmlx_sub(zmlx_array *a, zmlx_array *b, zmlx_array **out) {
  static _Atomic(zmlx_ad_expr *) slot;
  return binary(&slot, "a - b", a, b, out);
}

zmlx_status zmlx_mul(zmlx_array *a, zmlx_array *b, zmlx_array **out) {
  static _Atomic(zmlx_ad_expr *) slot;
  return binary(&slot, "a * b", a, b, out);
}

zmlx_status zmlx_div(zmlx_array *a, zmlx_array *b, zmlx_array **out) {
  static _Atomic(zmlx_ad_expr *) slot;
  return binary(&slot, "a / b", a, b, out);
}

zmlx_status zmlxi_ad_map1(const char *text, zmlx_array *x, const char *param, double p,
                         zmlx_array **out) {
  static const char *const X[] = {"x"};
  const char *par[1] = {param};
  zmlx_ad_expr *e = NULL;
  ZMLX_CHECK(zmlxi_ad_expr_get(text, X, 1, par, param ? 1 : 0, &e));
  return zmlxi_ad_expr_apply(e, &x, 1, &p, out);
}
