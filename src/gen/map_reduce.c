/*
 * Expression builders, part 2 (part 1: elementwise.c; the op object they
 * return: op.c): zmlx_reduce and zmlx_map_reduce (ZMLX's
 * api.reduce / api.map_reduce) over the last dimension.
 *
 * Every small expression of a desc is parsed by the engine with its own
 * names (init: none; map: x [, r0]; update: acc, x; combine: a, b;
 * finalize: acc, n [, r0]; write: x, r0, r1, n) and never pasted into
 * source. map and update are fused into one `step` graph,
 * update(acc, map(x)), by grafting the map graph into the update's x, so
 * the simplifier and CSE see the composition.
 *
 * Pattern choice: a combine on every reduction means one threadgroup per
 * row (SIMD helpers when the combine is a + b, max or min, a threadgroup
 * memory tree otherwise); no combine means one thread per row. A
 * map-reduce with the softmax shape runs single-pass online (running max,
 * rescaled sum) unless the desc asks for two passes.
 */
#include "gen/patterns.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One parsed reduction of a desc. */
typedef struct red_parts {
  zmlx_expr *init, *map, *update, *combine, *finalize;
  zmlx_expr *step; /* update(acc, map(x)) */
} red_parts;

typedef struct red_op {
  zmlx_op base;
  int map_reduce; /* 0: zmlx_reduce (one value per row); 1: zmlx_map_reduce */
  int n_reduce;
  red_parts parts[2];
  zmlx_expr *write;
  int online;
  int per_group;              /* every reduction has a combine */
  zmlx_row_reduction rows[2]; /* views of parts for the patterns */
} red_op;

static const char *const X_R0[] = {"x", "r0"};
static const char *const ACC_X[] = {"acc", "x"};
static const char *const A_B[] = {"a", "b"};
static const char *const ACC_N_R0[] = {"acc", "n", "r0"};
static const char *const WRITE_NAMES[] = {"x", "r0", "r1", "n"};

/* ------------------------------------------------------------ graphs */

/* Copy the graph of `src` into `dst` (in id order, a topological order)
 * with src input i standing for dst node inmap[i]; the node of src's root
 * in dst. Every node goes through the simplifying constructor. */
static int32_t graft(zmlx_expr *dst, const zmlx_expr *src, const int32_t *inmap) {
  int32_t *map = malloc((size_t)src->n_nodes * sizeof *map);
  if (!map) {
    dst->failed = ZMLX_ERR_OUT_OF_MEMORY;
    return 0;
  }
  for (int32_t id = 0; id < src->n_nodes; id++) {
    const zmlx_enode *n = &src->nodes[id];
    if (n->op == ZMLX_EOP_CONST) map[id] = zmlxi_expr_const(dst, n->value);
    else if (n->op == ZMLX_EOP_INPUT) map[id] = inmap[n->arg[0]];
    else if (n->op == ZMLX_EOP_PARAM) map[id] = zmlxi_expr_param(dst, n->arg[0]);
    else
      map[id] = zmlxi_expr_op(dst, (zmlx_eop)n->op, map[n->arg[0]],
                             n->arg[1] >= 0 ? map[n->arg[1]] : -1,
                             n->arg[2] >= 0 ? map[n->arg[2]] : -1);
  }
  int32_t root = map[src->roots[0]];
  free(map);
  return root;
}

/* step(acc, x [, r0]) = update(acc, map(x [, r0])). */
static zmlx_status make_step(const red_parts *p, int with_r0, zmlx_expr **out) {
  static const char *const names[] = {"acc", "x", "r0"};
  zmlx_expr *g = NULL;
  ZMLX_CHECK(zmlxi_expr_create(names, with_r0 ? 3 : 2, NULL, 0, &g));
  int32_t xr[2] = {zmlxi_expr_input(g, 1), with_r0 ? zmlxi_expr_input(g, 2) : -1};
  int32_t m = p->map ? graft(g, p->map, xr) : xr[0];
  int32_t acc_m[2] = {zmlxi_expr_input(g, 0), m};
  int32_t root = graft(g, p->update, acc_m);
  zmlx_status st = g->failed ? zmlxi_fail(g->failed, "reduce: cannot build the step graph")
                             : zmlxi_expr_add_root(g, root);
  if (st != ZMLX_OK) {
    zmlxi_expr_free(g);
    return st;
  }
  *out = g;
  return ZMLX_OK;
}

static void parts_free(red_parts *p) {
  zmlxi_expr_free(p->init);
  zmlxi_expr_free(p->map);
  zmlxi_expr_free(p->update);
  zmlxi_expr_free(p->combine);
  zmlxi_expr_free(p->finalize);
  zmlxi_expr_free(p->step);
  memset(p, 0, sizeof *p);
}

/* Parse an optional field; the error names the field. */
static zmlx_status parse_field(const char *text, const char *const *names, int n,
                               const char *who, const char *field, zmlx_expr **out) {
  *out = NULL;
  if (!text) return ZMLX_OK;
  zmlx_status st = zmlxi_expr_parse(text, names, n, NULL, 0, out);
  return st == ZMLX_OK ? st : zmlxi_fail_context(st, "%s %s", who, field);
}

static zmlx_status parse_parts(const zmlx_reduce_desc *d, int with_r0, const char *who,
                               red_parts *p) {
  memset(p, 0, sizeof *p);
  if (!d->init || !d->update)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: init and update are required (e.g. \"0\" and "
                     "\"acc + x\")", who);
  zmlx_status st = parse_field(d->init, NULL, 0, who, "init", &p->init);
  if (st == ZMLX_OK) st = parse_field(d->map, X_R0, with_r0 ? 2 : 1, who, "map", &p->map);
  if (st == ZMLX_OK) st = parse_field(d->update, ACC_X, 2, who, "update", &p->update);
  if (st == ZMLX_OK) st = parse_field(d->combine, A_B, 2, who, "combine", &p->combine);
  if (st == ZMLX_OK)
    st = parse_field(d->finalize, ACC_N_R0, with_r0 ? 3 : 2, who, "finalize", &p->finalize);
  if (st == ZMLX_OK) st = make_step(p, with_r0, &p->step);
  if (st != ZMLX_OK) parts_free(p);
  return st;
}

/* ------------------------------------------------------------ online shape */

static int const_root(const zmlx_expr *e, double want) {
  double v;
  return e && zmlxi_expr_root_is_const(e, 0, &v) && v == want;
}

static int binary_kind(const zmlx_expr *e, const char *kind) {
  const char *k = NULL;
  return e && zmlxi_pattern_simd_combine(e, &k) && !strcmp(k, kind);
}

/* map1(x, r0) is exactly exp(map0(x) - r0)? Both are grafted into one
 * hash-consed graph, where equal structure means equal node ids. */
static int map1_is_exp_shift(const red_parts *p0, const red_parts *p1) {
  zmlx_expr *g = NULL;
  if (zmlxi_expr_create(X_R0, 2, NULL, 0, &g) != ZMLX_OK) return 0;
  int32_t xr[2] = {zmlxi_expr_input(g, 0), zmlxi_expr_input(g, 1)};
  int32_t m0 = p0->map ? graft(g, p0->map, xr) : xr[0];
  int32_t want = zmlx_expr_op1(g, ZMLX_EOP_EXP, zmlx_expr_op2(g, ZMLX_EOP_SUB, m0, xr[1]));
  int32_t got = p1->map ? graft(g, p1->map, xr) : xr[0];
  int same = !g->failed && want == got;
  zmlxi_expr_free(g);
  return same;
}

/* reduce[0]: max from -inf, result unchanged; reduce[1]: sum from 0 of
 * exp(map0(x) - r0). Combines, when given, must agree. */
static int softmax_shape(const red_parts *p) {
  return const_root(p[0].init, -INFINITY) && binary_kind(p[0].update, "max") &&
         (!p[0].combine || binary_kind(p[0].combine, "max")) && !p[0].finalize &&
         const_root(p[1].init, 0.0) && binary_kind(p[1].update, "sum") &&
         (!p[1].combine || binary_kind(p[1].combine, "sum")) && map1_is_exp_shift(&p[0], &p[1]);
}

/* ------------------------------------------------------------ launch */

typedef struct red_build_ctx {
  const red_op *op;
  zmlx_row_mode mode;
} red_build_ctx;

static zmlx_status red_build(const void *ctx, zmlx_pattern_kernel *out) {
  const red_op *o = ((const red_build_ctx *)ctx)->op;
  zmlx_row_mode mode = ((const red_build_ctx *)ctx)->mode;
  if (!o->map_reduce) return zmlxi_pattern_row_reduce(&o->rows[0], mode, out);
  if (o->online)
    return zmlxi_pattern_row_online(o->parts[0].map, o->parts[1].finalize, o->write, mode, out);
  return zmlxi_pattern_row_map_reduce(o->rows, o->n_reduce, o->write, mode, out);
}

/* The row mode on a backend: per thread, or the backend's group mode. */
static zmlx_row_mode mode_for(const red_op *o, zmlx_backend b) {
  return o->per_group ? zmlxi_pattern_group_mode(b) : ZMLX_ROW_PER_THREAD;
}

static zmlx_dtype out_dtype(zmlx_dtype in) {
  return in == ZMLX_F16 || in == ZMLX_BF16 || in == ZMLX_F32 ? in : ZMLX_F32;
}

/* Rows of length 0: every result is finalize(init, n = 0), computed here
 * with the f64 interpreter (a reduction reads nothing). */
static zmlx_status fill_empty_rows(const red_op *o, zmlx_array *out, zmlx_stream *s) {
  const red_parts *p = &o->parts[0];
  double acc = 0, res;
  ZMLX_CHECK(zmlxi_expr_eval(p->init, NULL, NULL, &acc));
  double in[3] = {acc, 0.0, 0.0};
  res = acc;
  if (p->finalize) ZMLX_CHECK(zmlxi_expr_eval(p->finalize, in, NULL, &res));
  return zmlxi_builtin_fill(out, res, s);
}

static zmlx_status check_input(const red_op *o, const zmlx_array *x) {
  if (!zmlxi_expr_dtype_ok(x->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: input is %s; expression kernels compute in f32 and take "
                     "every dtype but f64", o->base.vt->kind, zmlx_dtype_name(x->dtype));
  if (x->ndim < 1)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: reduces the last dimension, but the input is a 0-d "
                     "scalar", o->base.vt->kind);
  return ZMLX_OK;
}

static zmlx_status launch_rows(red_op *o, zmlx_array *x, zmlx_array *out, zmlx_stream *s,
                               int64_t rows, int64_t cols) {
  zmlx_device *dev = x->buffer->device;
  red_build_ctx ctx = {o, mode_for(o, dev->ops->kind)};
  char key[16];
  snprintf(key, sizeof key, "R|%d", (int)ctx.mode);
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(zmlxi_op_kernel(&o->base, key, red_build, &ctx, &k));
  zmlx_pattern_geometry g = zmlxi_pattern_row_geometry(ctx.mode, rows, cols, &dev->info);
  double params[2] = {(double)rows, (double)cols};
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &x, .outputs = &out,
                           .params = params, .stream = s, .device = dev};
  memcpy(call.grid, g.grid, sizeof g.grid);
  memcpy(call.threadgroup, g.threadgroup, sizeof g.threadgroup);
  return zmlx_kernel_launch(k, &call);
}

static zmlx_status red_call(zmlx_op *op, zmlx_array *const *inputs, const double *params,
                            zmlx_stream *s, zmlx_array **out) {
  (void)params;
  red_op *o = (red_op *)op;
  zmlx_array *x = inputs[0];
  ZMLX_CHECK(check_input(o, x));
  int64_t cols = x->shape[x->ndim - 1], rows = 1;
  for (int d = 0; d + 1 < x->ndim; d++) rows *= x->shape[d];
  int out_ndim = o->map_reduce ? x->ndim : x->ndim - 1;
  ZMLX_CHECK(zmlxi_array_alloc(x->buffer->device, s, out_dtype(x->dtype), out_ndim, x->shape, out));
  zmlx_status st = ZMLX_OK;
  if (rows > 0 && cols == 0 && !o->map_reduce) st = fill_empty_rows(o, *out, s);
  else if (rows > 0 && cols > 0) st = launch_rows(o, x, *out, s, rows, cols);
  if (st != ZMLX_OK) {
    zmlx_array_release(*out);
    *out = NULL;
  }
  return st;
}

static zmlx_status red_source(zmlx_op *op, zmlx_backend b, zmlx_op_direction dir,
                              const zmlx_dtype *in_dts, zmlx_sb *sb) {
  red_op *o = (red_op *)op;
  if (dir != ZMLX_OP_FORWARD)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "%s ops have only a forward kernel", op->vt->kind);
  red_build_ctx ctx = {o, mode_for(o, b)};
  zmlx_pattern_kernel pk;
  ZMLX_CHECK(red_build(&ctx, &pk));
  zmlx_dtype dts[2] = {in_dts[0], out_dtype(in_dts[0])};
  const char *what = o->online ? (o->per_group ? "forward, single-pass online, one threadgroup per row"
                                               : "forward, single-pass online, one thread per row")
                     : o->per_group ? "forward, one threadgroup per row"
                                    : "forward, one thread per row";
  zmlx_status st = zmlxi_pattern_append_source(&pk, b, dts, what, sb);
  zmlxi_pattern_kernel_free(&pk);
  return st;
}

/* ------------------------------------------------------------ create */

static void red_destroy(zmlx_op *op) {
  red_op *o = (red_op *)op;
  zmlxi_op_fini(op);
  for (int k = 0; k < 2; k++) parts_free(&o->parts[k]);
  zmlxi_expr_free(o->write);
  free(o);
}

static const zmlx_op_vtable REDUCE_VTABLE = {
    .kind = "reduce", .call = red_call, .source = red_source, .destroy = red_destroy};
static const zmlx_op_vtable MAP_REDUCE_VTABLE = {
    .kind = "map_reduce", .call = red_call, .source = red_source, .destroy = red_destroy};

/* Pattern views of the parsed parts; the mode every combine allows. */
static void finish_setup(red_op *o) {
  int all_combine = 1;
  for (int k = 0; k < o->n_reduce; k++) {
    red_parts *p = &o->parts[k];
    o->rows[k] = (zmlx_row_reduction){p->init, p->step, p->combine, p->finalize};
    all_combine &= p->combine != NULL;
  }
  o->per_group = all_combine;
}

static zmlx_status red_new(const zmlx_op_vtable *vt, red_op **out) {
  red_op *o = calloc(1, sizeof *o);
  if (!o) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlx_status st = zmlxi_op_init(&o->base, vt, 1, 0);
  if (st != ZMLX_OK) {
    free(o);
    return st;
  }
  *out = o;
  return ZMLX_OK;
}

zmlx_status zmlx_reduce(const zmlx_reduce_desc *desc, zmlx_op **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(desc);
  red_op *o = NULL;
  ZMLX_CHECK(red_new(&REDUCE_VTABLE, &o));
  o->n_reduce = 1;
  zmlx_status st = parse_parts(desc, 0, "reduce", &o->parts[0]);
  if (st != ZMLX_OK) {
    red_destroy(&o->base);
    return st;
  }
  finish_setup(o);
  *out = &o->base;
  return ZMLX_OK;
}

static zmlx_status choose_strategy(red_op *o, zmlx_map_reduce_strategy strategy) {
  if (strategy != ZMLX_MAP_REDUCE_AUTO && strategy != ZMLX_MAP_REDUCE_TWO_PASS &&
      strategy != ZMLX_MAP_REDUCE_ONLINE)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "map_reduce: unknown strategy %d", (int)strategy);
  int shape = o->n_reduce == 2 && softmax_shape(o->parts);
  if (strategy == ZMLX_MAP_REDUCE_ONLINE && !shape)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "map_reduce: the online strategy needs the softmax "
                     "shape: reduce[0] = {init \"-inf\", update \"max(acc, x)\", no finalize}, "
                     "reduce[1] = {init \"0\", map \"exp(x - r0)\" (x: reduce[0]'s map), update "
                     "\"acc + x\"}");
  o->online = shape && strategy != ZMLX_MAP_REDUCE_TWO_PASS;
  return ZMLX_OK;
}

static zmlx_status map_reduce_parse(red_op *o, const zmlx_map_reduce_desc *d) {
  static const char *const who[2] = {"map_reduce reduce[0]", "map_reduce reduce[1]"};
  for (int k = 0; k < o->n_reduce; k++)
    ZMLX_CHECK(parse_parts(&d->reduce[k], k == 1, who[k], &o->parts[k]));
  ZMLX_CHECK(parse_field(d->write, WRITE_NAMES, 4, "map_reduce", "write", &o->write));
  if (o->n_reduce == 1 && zmlxi_expr_uses_input(o->write, 2))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "map_reduce write: r1 is used but there is only one "
                     "reduction (n_reduce = 1)");
  return ZMLX_OK;
}

zmlx_status zmlx_map_reduce(const zmlx_map_reduce_desc *desc, zmlx_op **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(desc);
  if (desc->n_reduce < 1 || desc->n_reduce > 2)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "map_reduce: n_reduce is %d (1 or 2)", desc->n_reduce);
  if (!desc->write)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "map_reduce: write is required (e.g. \"exp(x - r0) / r1\")");
  red_op *o = NULL;
  ZMLX_CHECK(red_new(&MAP_REDUCE_VTABLE, &o));
  o->map_reduce = 1;
  o->n_reduce = desc->n_reduce;
  zmlx_status st = map_reduce_parse(o, desc);
  if (st == ZMLX_OK) st = choose_strategy(o, desc->strategy);
  if (st != ZMLX_OK) {
    red_destroy(&o->base);
    return st;
  }
  finish_setup(o);
  *out = &o->base;
  return ZMLX_OK;
}
