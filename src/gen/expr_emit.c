/*
 * Printing a graph: dialect C statements for kernels (zmlxi_expr_emit) and
 * the expression language itself for people (zmlxi_expr_to_string).
 *
 * Both share one plan. A live node becomes a named temporary when
 *   - it is used twice or more (so shared subexpressions are computed once),
 *   - its inline text would nest deeper than MAX_INLINE (so neither the
 *     printer's recursion nor a kernel compiler meets deep nesting: the
 *     graph itself may be a 100,000-step chain),
 *   - a consumer's C form repeats it (sign, softplus) or a root's store
 *     template does, and it is not a constant,
 *   - or (C only) it is an input or parameter: each is read once, at the top.
 * Everything else is inlined into its single consumer. Inputs, then
 * parameters, are read first (by index), then the other temporaries follow
 * in id order (a topological order), numbered as they are written, so the
 * text depends only on the graph and ctx: equal inputs, identical bytes.
 *
 * The C never names anything from the user's text: numbers are re-printed
 * from their values, inputs and parameters come from the caller's ctx text.
 */
#include "gen/expr.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INLINE 16

typedef struct printer {
  const zmlx_expr *e;
  int c_mode; /* 1: dialect C; 0: expression language */
  const zmlx_expr_emit_ctx *ctx;
  const char *prefix;
  uint8_t *live;
  int32_t *uses;
  uint8_t *is_temp;
  uint8_t *height;   /* inline nesting of the node's own text */
  int32_t *temp_no;  /* number once emitted, else -1 */
  int32_t n_temps;
} printer;

static const zmlx_enode *node_at(const printer *pr, int32_t id) { return &pr->e->nodes[id]; }

static int arity_of(const zmlx_enode *n) { return zmlxi_eop_get((zmlx_eop)n->op)->arity; }

static int is_leaf_op(int32_t op) {
  return op == ZMLX_EOP_CONST || op == ZMLX_EOP_INPUT || op == ZMLX_EOP_PARAM;
}

static int is_comparison(int32_t op) { return op >= ZMLX_EOP_LT && op <= ZMLX_EOP_NE; }

/* C forms that mention their argument twice need it to be a name. */
static int c_repeats_arg(int32_t op) { return op == ZMLX_EOP_SIGN || op == ZMLX_EOP_SOFTPLUS; }

static int count_placeholders(const char *t) {
  int n = 0;
  for (const char *s = t; (s = strstr(s, "%s")) != NULL; s += 2) n++;
  return n;
}

static void make_temp(printer *pr, int32_t id) {
  if (node_at(pr, id)->op != ZMLX_EOP_CONST) pr->is_temp[id] = 1;
}

/* Height of `id` as its consumer sees it: names and constants are flat. */
static int seen_height(const printer *pr, int32_t id) {
  return pr->is_temp[id] || is_leaf_op(node_at(pr, id)->op) ? 0 : pr->height[id];
}

static void plan_node(printer *pr, int32_t i) {
  const zmlx_enode *n = node_at(pr, i);
  if (is_leaf_op(n->op)) {
    if (pr->c_mode && n->op != ZMLX_EOP_CONST) pr->is_temp[i] = 1;
    return;
  }
  int h = 0;
  for (int k = 0; k < arity_of(n); k++) {
    if (pr->c_mode && c_repeats_arg(n->op)) make_temp(pr, n->arg[k]);
    int hk = seen_height(pr, n->arg[k]);
    if (hk > h) h = hk;
  }
  pr->height[i] = (uint8_t)(h + 1);
  if (pr->uses[i] >= 2 || h + 1 >= MAX_INLINE) pr->is_temp[i] = 1;
}

static zmlx_status plan(printer *pr) {
  const zmlx_expr *e = pr->e;
  size_t n = (size_t)(e->n_nodes ? e->n_nodes : 1);
  pr->live = malloc(n);
  pr->uses = calloc(n, sizeof *pr->uses);
  pr->is_temp = calloc(n, 1);
  pr->height = calloc(n, 1);
  pr->temp_no = malloc(n * sizeof *pr->temp_no);
  if (!pr->live || !pr->uses || !pr->is_temp || !pr->height || !pr->temp_no)
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "expression printer: out of host memory");
  zmlxi_expr_mark_live(e, pr->live);
  for (int32_t i = 0; i < e->n_nodes; i++) {
    pr->temp_no[i] = -1;
    if (!pr->live[i] || is_leaf_op(e->nodes[i].op)) continue;
    for (int k = 0; k < arity_of(&e->nodes[i]); k++) pr->uses[e->nodes[i].arg[k]]++;
  }
  for (int j = 0; j < e->n_roots; j++) {
    pr->uses[e->roots[j]]++;
    if (pr->c_mode && count_placeholders(pr->ctx->root_store[j]) > 1) make_temp(pr, e->roots[j]);
  }
  for (int32_t i = 0; i < e->n_nodes; i++)
    if (pr->live[i]) plan_node(pr, i);
  return ZMLX_OK;
}

static void printer_free(printer *pr) {
  free(pr->live);
  free(pr->uses);
  free(pr->is_temp);
  free(pr->height);
  free(pr->temp_no);
}

/* ------------------------------------------------------------ literals */

/* "%.<digits>g" of a finite v with '.' as the decimal point whatever the C
 * locale (printf writes the locale's radix, possibly several bytes; kernel
 * source and cache keys must not depend on it). */
static void format_g(char *out, size_t cap, double v, int digits) {
  char raw[64];
  snprintf(raw, sizeof raw, "%.*g", digits, v);
  size_t n = 0;
  for (const char *r = raw; *r && n + 1 < cap;) {
    int plain = (*r >= '0' && *r <= '9') || *r == '-' || *r == '+' || *r == 'e';
    if (plain) {
      out[n++] = *r++;
      continue;
    }
    out[n++] = '.'; /* the radix, whatever bytes it took */
    while (*r && !((*r >= '0' && *r <= '9') || *r == 'e')) r++;
  }
  out[n] = '\0';
}

/* A float literal with the value the kernel would get from (float)v. */
static void c_literal(zmlx_sb *sb, double v, int bare) {
  const char *open = bare ? "" : "(", *close = bare ? "" : ")";
  if (isnan(v)) {
    zmlxi_sb_append(sb, "ZMLX_NAN");
    return;
  }
  /* Finite doubles past FLT_MAX + half an ulp round to inf; converting them
   * with a cast would be undefined behaviour. */
  if (fabs(v) >= 0x1.ffffffp+127) {
    zmlxi_sb_printf(sb, v > 0 ? "ZMLX_INF" : "%s-ZMLX_INF%s", open, close);
    return;
  }
  float f = fabs(v) > FLT_MAX ? (v > 0 ? FLT_MAX : -FLT_MAX) : (float)v;
  char buf[64];
  format_g(buf, sizeof buf, (double)f, 9);
  const char *dot = strpbrk(buf, ".e") ? "" : ".0";
  if (signbit(f))
    zmlxi_sb_printf(sb, "%s%s%sf%s", open, buf, dot, close);
  else
    zmlxi_sb_printf(sb, "%s%sf", buf, dot);
}

/* The exact double, in a form the parser reads back. */
static void text_literal(zmlx_sb *sb, double v, int bare) {
  const char *open = bare ? "" : "(", *close = bare ? "" : ")";
  if (isnan(v))
    zmlxi_sb_append(sb, "nan");
  else if (isinf(v))
    zmlxi_sb_printf(sb, v > 0 ? "inf" : "%s-inf%s", open, close);
  else {
    char buf[64];
    format_g(buf, sizeof buf, v, 17);
    if (signbit(v))
      zmlxi_sb_printf(sb, "%s%s%s", open, buf, close);
    else
      zmlxi_sb_append(sb, buf);
  }
}

/* ------------------------------------------------------------ rendering */

static void render(printer *pr, int32_t id, zmlx_sb *sb, int bare);

static void temp_name(const printer *pr, int32_t id, zmlx_sb *sb) {
  zmlxi_sb_printf(sb, "%s%d", pr->prefix, (int)pr->temp_no[id]);
}

/* A where() condition in C: comparisons inline as the C test itself. */
static void c_condition(printer *pr, int32_t id, zmlx_sb *sb) {
  const zmlx_enode *n = node_at(pr, id);
  if (is_comparison(n->op) && pr->temp_no[id] < 0) {
    render(pr, n->arg[0], sb, 0);
    zmlxi_sb_printf(sb, " %s ", zmlxi_eop_get((zmlx_eop)n->op)->name);
    render(pr, n->arg[1], sb, 0);
  } else {
    render(pr, id, sb, 0);
    zmlxi_sb_append(sb, " != 0.0f");
  }
}

static const char *c_function(int32_t op) {
  switch (op) {
    case ZMLX_EOP_ABS: return "fabs";
    case ZMLX_EOP_MIN: return "fmin";
    case ZMLX_EOP_MAX: return "fmax";
    default: return zmlxi_eop_get((zmlx_eop)op)->name;
  }
}

/* Ops whose C form is not a plain call or infix operator. Returns 1 if
 * handled. */
static int c_special(printer *pr, const zmlx_enode *n, zmlx_sb *sb, const char *o,
                     const char *c) {
  int32_t a = n->arg[0];
  switch (n->op) {
    case ZMLX_EOP_NOT:
      zmlxi_sb_append(sb, "(");
      render(pr, a, sb, 0);
      zmlxi_sb_append(sb, " == 0.0f ? 1.0f : 0.0f)");
      return 1;
    case ZMLX_EOP_SIGN:
      zmlxi_sb_append(sb, "(");
      render(pr, a, sb, 0);
      zmlxi_sb_append(sb, " > 0.0f ? 1.0f : (");
      render(pr, a, sb, 0);
      zmlxi_sb_append(sb, " < 0.0f ? -1.0f : 0.0f))");
      return 1;
    case ZMLX_EOP_SIGMOID:
      zmlxi_sb_printf(sb, "%s1.0f / (1.0f + exp(-", o);
      render(pr, a, sb, 0);
      zmlxi_sb_printf(sb, "))%s", c);
      return 1;
    case ZMLX_EOP_SOFTPLUS: /* max(x, 0) + log1p(exp(-|x|)): never overflows */
      zmlxi_sb_printf(sb, "%sfmax(", o);
      render(pr, a, sb, 0);
      zmlxi_sb_append(sb, ", 0.0f) + log1p(exp(-fabs(");
      render(pr, a, sb, 0);
      zmlxi_sb_printf(sb, ")))%s", c);
      return 1;
    case ZMLX_EOP_RELU:
      zmlxi_sb_append(sb, "fmax(");
      render(pr, a, sb, 1);
      zmlxi_sb_append(sb, ", 0.0f)");
      return 1;
    case ZMLX_EOP_POW:
      zmlxi_sb_append(sb, "pow(");
      render(pr, a, sb, 1);
      zmlxi_sb_append(sb, ", ");
      render(pr, n->arg[1], sb, 1);
      zmlxi_sb_append(sb, ")");
      return 1;
    case ZMLX_EOP_AND:
    case ZMLX_EOP_OR:
      zmlxi_sb_append(sb, "(");
      render(pr, a, sb, 0);
      zmlxi_sb_printf(sb, " != 0.0f %s ", n->op == ZMLX_EOP_AND ? "&&" : "||");
      render(pr, n->arg[1], sb, 0);
      zmlxi_sb_append(sb, " != 0.0f ? 1.0f : 0.0f)");
      return 1;
    case ZMLX_EOP_SELECT:
      zmlxi_sb_printf(sb, "%s", o);
      c_condition(pr, a, sb);
      zmlxi_sb_append(sb, " ? ");
      render(pr, n->arg[1], sb, 0);
      zmlxi_sb_append(sb, " : ");
      render(pr, n->arg[2], sb, 0);
      zmlxi_sb_printf(sb, "%s", c);
      return 1;
    default: return 0;
  }
}

static void render_op(printer *pr, const zmlx_enode *n, zmlx_sb *sb, int bare) {
  const zmlx_eop_info *info = zmlxi_eop_get((zmlx_eop)n->op);
  const char *o = bare ? "" : "(", *c = bare ? "" : ")";
  if (pr->c_mode && c_special(pr, n, sb, o, c)) return;
  if (pr->c_mode && is_comparison(n->op)) {
    zmlxi_sb_append(sb, "(");
    render(pr, n->arg[0], sb, 0);
    zmlxi_sb_printf(sb, " %s ", info->name);
    render(pr, n->arg[1], sb, 0);
    zmlxi_sb_append(sb, " ? 1.0f : 0.0f)");
    return;
  }
  if (info->is_operator && info->arity == 1) {
    zmlxi_sb_printf(sb, "%s%s", o, info->name);
    render(pr, n->arg[0], sb, 0);
    zmlxi_sb_append(sb, c);
    return;
  }
  if (info->is_operator) {
    zmlxi_sb_append(sb, o);
    render(pr, n->arg[0], sb, 0);
    zmlxi_sb_printf(sb, " %s ", info->name);
    render(pr, n->arg[1], sb, 0);
    zmlxi_sb_append(sb, c);
    return;
  }
  zmlxi_sb_printf(sb, "%s(", pr->c_mode ? c_function(n->op) : info->name);
  for (int k = 0; k < info->arity; k++) { /* commas delimit: no parentheses needed */
    if (k) zmlxi_sb_append(sb, ", ");
    render(pr, n->arg[k], sb, 1);
  }
  zmlxi_sb_append(sb, ")");
}

/* Recursion is bounded: a node deeper than MAX_INLINE is a temporary. */
static void render(printer *pr, int32_t id, zmlx_sb *sb, int bare) {
  const zmlx_enode *n = node_at(pr, id);
  if (pr->temp_no[id] >= 0) {
    temp_name(pr, id, sb);
  } else if (n->op == ZMLX_EOP_CONST) {
    if (pr->c_mode)
      c_literal(sb, n->value, bare);
    else
      text_literal(sb, n->value, bare);
  } else if (n->op == ZMLX_EOP_INPUT) {
    zmlxi_sb_append(sb, pr->e->input_names[n->arg[0]]);
  } else if (n->op == ZMLX_EOP_PARAM) {
    zmlxi_sb_append(sb, pr->e->param_names[n->arg[0]]);
  } else {
    render_op(pr, n, sb, bare);
  }
}

/* ------------------------------------------------------------ emission */

static void store_root(zmlx_sb *sb, const char *tmpl, const char *value) {
  for (const char *s = tmpl; *s;) {
    const char *hit = strstr(s, "%s");
    size_t n = hit ? (size_t)(hit - s) : strlen(s);
    zmlxi_sb_appendn(sb, s, n);
    if (!hit) break;
    zmlxi_sb_append(sb, value);
    s = hit + 2;
  }
}

/* The node id of each input (or parameter) leaf the roots use, else -1. */
static void leaf_nodes(const printer *pr, zmlx_eop op, int32_t *ids, int count) {
  for (int i = 0; i < count; i++) ids[i] = -1;
  for (int32_t id = 0; id < pr->e->n_nodes; id++)
    if (pr->live[id] && pr->e->nodes[id].op == (int32_t)op) ids[pr->e->nodes[id].arg[0]] = id;
}

static zmlx_status check_ctx(const printer *pr, const int32_t *in_ids, const int32_t *par_ids) {
  const zmlx_expr *e = pr->e;
  const zmlx_expr_emit_ctx *ctx = pr->ctx;
  for (int i = 0; i < e->n_inputs; i++)
    if (in_ids[i] >= 0 && (!ctx->input_text || !ctx->input_text[i]))
      return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlxi_expr_emit: no text for input %d ('%s')", i,
                       e->input_names[i]);
  for (int i = 0; i < e->n_params; i++)
    if (par_ids[i] >= 0 && (!ctx->param_text || !ctx->param_text[i]))
      return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlxi_expr_emit: no text for parameter %d ('%s')", i,
                       e->param_names[i]);
  return ZMLX_OK;
}

static void emit_leaves(printer *pr, const int32_t *ids, int count,
                        const char *const *text, zmlx_sb *sb, const char *indent) {
  for (int i = 0; i < count; i++) {
    if (ids[i] < 0) continue;
    pr->temp_no[ids[i]] = pr->n_temps++;
    zmlxi_sb_printf(sb, "%sfloat ", indent);
    temp_name(pr, ids[i], sb);
    zmlxi_sb_printf(sb, " = %s;\n", text[i]);
  }
}

/* "name = <text>" for every planned temporary, in id order. The number is
 * assigned after the right-hand side is printed so it never names itself. */
static void emit_temps(printer *pr, zmlx_sb *sb, const char *indent, const char *decl,
                       const char *end) {
  for (int32_t id = 0; id < pr->e->n_nodes; id++) {
    const zmlx_enode *n = node_at(pr, id);
    if (!pr->live[id] || !pr->is_temp[id] || is_leaf_op(n->op)) continue;
    zmlxi_sb_printf(sb, "%s%s%s%d = ", indent, decl, pr->prefix, (int)pr->n_temps);
    render_op(pr, n, sb, 1);
    zmlxi_sb_append(sb, end);
    pr->temp_no[id] = pr->n_temps++;
  }
}

static zmlx_status emit_roots(printer *pr, zmlx_sb *sb, const char *indent) {
  for (int j = 0; j < pr->e->n_roots; j++) {
    zmlx_sb value;
    zmlxi_sb_init(&value);
    /* Parenthesized: the store text may be a macro that does not wrap its
     * argument. */
    render(pr, pr->e->roots[j], &value, 0);
    if (value.oom) {
      zmlxi_sb_free(&value);
      return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlxi_expr_emit: out of host memory");
    }
    zmlxi_sb_append(sb, indent);
    store_root(sb, pr->ctx->root_store[j], value.data);
    zmlxi_sb_append(sb, ";\n");
    zmlxi_sb_free(&value);
  }
  return ZMLX_OK;
}

static zmlx_status check_emit_args(const zmlx_expr *e, const zmlx_expr_emit_ctx *ctx,
                                   const zmlx_sb *sb) {
  ZMLX_REQUIRE_ARG(e);
  ZMLX_REQUIRE_ARG(ctx);
  ZMLX_REQUIRE_ARG(sb);
  if (e->failed) return zmlxi_fail(e->failed, "zmlxi_expr_emit: the expression failed to build");
  if (e->n_roots && !ctx->root_store)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlxi_expr_emit: ctx->root_store is NULL");
  for (int j = 0; j < e->n_roots; j++)
    if (!ctx->root_store[j] || count_placeholders(ctx->root_store[j]) == 0)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG,
                       "zmlxi_expr_emit: store template of root %d must contain %%s", j);
  return ZMLX_OK;
}

zmlx_status zmlxi_expr_emit(const zmlx_expr *e, const zmlx_expr_emit_ctx *ctx, zmlx_sb *sb) {
  ZMLX_CHECK(check_emit_args(e, ctx, sb));
  printer pr = {.e = e, .c_mode = 1, .ctx = ctx};
  pr.prefix = ctx->temp_prefix ? ctx->temp_prefix : "t";
  const char *indent = ctx->indent ? ctx->indent : "  ";
  int32_t *in_ids = malloc(sizeof *in_ids * (size_t)(e->n_inputs + 1));
  int32_t *par_ids = malloc(sizeof *par_ids * (size_t)(e->n_params + 1));
  zmlx_status st = in_ids && par_ids ? plan(&pr)
                                     : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY,
                                                 "zmlxi_expr_emit: out of host memory");
  if (st == ZMLX_OK) {
    leaf_nodes(&pr, ZMLX_EOP_INPUT, in_ids, e->n_inputs);
    leaf_nodes(&pr, ZMLX_EOP_PARAM, par_ids, e->n_params);
    st = check_ctx(&pr, in_ids, par_ids);
  }
  if (st == ZMLX_OK) {
    emit_leaves(&pr, in_ids, e->n_inputs, ctx->input_text, sb, indent);
    emit_leaves(&pr, par_ids, e->n_params, ctx->param_text, sb, indent);
    emit_temps(&pr, sb, indent, "float ", ";\n");
    st = emit_roots(&pr, sb, indent);
  }
  if (st == ZMLX_OK && sb->oom)
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlxi_expr_emit: out of host memory");
  free(in_ids);
  free(par_ids);
  printer_free(&pr);
  return st;
}

/* ------------------------------------------------------------ to_string */

/* Does some symbol look like <prefix><digits>? Then temporaries would
 * shadow it when the text is parsed back. */
static int prefix_clashes(const zmlx_expr *e, const char *prefix) {
  size_t n = strlen(prefix);
  for (int i = 0; i < e->n_inputs + e->n_params; i++) {
    const char *s = i < e->n_inputs ? e->input_names[i] : e->param_names[i - e->n_inputs];
    if (strncmp(s, prefix, n) != 0 || !s[n]) continue;
    if (strspn(s + n, "0123456789") == strlen(s + n)) return 1;
  }
  return 0;
}

zmlx_status zmlxi_expr_to_string(const zmlx_expr *e, char **out) {
  ZMLX_REQUIRE_ARG(e);
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  if (e->failed) return zmlxi_fail(e->failed, "zmlxi_expr_to_string: the expression failed to build");
  zmlx_sb prefix, sb;
  zmlxi_sb_init(&prefix);
  zmlxi_sb_init(&sb);
  zmlxi_sb_append(&prefix, "t");
  while (!prefix.oom && prefix_clashes(e, prefix.data)) zmlxi_sb_append(&prefix, "t");
  printer pr = {.e = e, .c_mode = 0, .prefix = prefix.oom ? "t" : prefix.data};
  zmlx_status st = plan(&pr);
  if (st == ZMLX_OK) {
    emit_temps(&pr, &sb, "", "", "; ");
    if (e->n_roots != 1) zmlxi_sb_append(&sb, "[");
    for (int j = 0; j < e->n_roots; j++) {
      if (j) zmlxi_sb_append(&sb, ", ");
      render(&pr, e->roots[j], &sb, e->n_roots == 1);
    }
    if (e->n_roots != 1) zmlxi_sb_append(&sb, "]");
  }
  printer_free(&pr);
  if (prefix.oom) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlxi_expr_to_string: out of memory");
  zmlxi_sb_free(&prefix);
  if (st != ZMLX_OK) {
    zmlxi_sb_free(&sb);
    return st;
  }
  return zmlxi_sb_finish(&sb, out);
}
