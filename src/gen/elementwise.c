/*
 * Expression builders, part 1: zmlx_elementwise (the op object it returns
 * is gen/op.c's).
 *
 * An elementwise call picks one of three layouts of the elementwise
 * pattern (patterns.h): 16-byte vectors when every array is dense, of the
 * same size, f32/f16/bf16 and 16-byte aligned; a flat index when the arrays
 * are dense but not eligible for vectors; otherwise a strided kernel over
 * broadcast views (stride 0 on broadcast axes) whose dimensions have been
 * coalesced on the host, so [N, D] x [D] runs as 2-D and a transposed view
 * as few dimensions as its strides allow.
 *
 * The VJP runs the engine's gradient graph (one root per input) as one
 * multi-output kernel. A gradient whose input was broadcast is written in
 * f32 at the output's shape and then summed over the broadcast axes into
 * the input's shape (row or column reduction patterns), so accumulation is
 * in f32 whatever the storage dtype.
 */
#include "gen/patterns.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EW_MAX_INPUTS 15 /* VJP: n inputs + cotangent + n gradients <= 32 arrays */

typedef struct ew_op {
  zmlx_op base;
  zmlx_expr *fwd; /* inputs, params; one root */
  zmlx_expr *vjp; /* inputs + g; one gradient root per input */
  zmlx_expr *jvp; /* inputs + t_<input>; one root */
  /* Bit i: the graph reads input i (computed once: launches ask often). */
  uint32_t fwd_used, vjp_used, jvp_used;
} ew_op;

static uint32_t used_mask(const zmlx_expr *e) {
  uint32_t m = 0;
  for (int i = 0; i < e->n_inputs; i++)
    if (zmlxi_expr_uses_input(e, i)) m |= 1u << i;
  return m;
}

/* Output dtype: the widest float among the inputs (bf16 < f16 < f32; f16
 * with bf16 has no common 16-bit type, so f32); f32 when no input is a float. */
static zmlx_dtype result_dtype(const zmlx_dtype *dts, int n) {
  int f32 = 0, f16 = 0, bf16 = 0;
  for (int i = 0; i < n; i++) {
    f32 |= dts[i] == ZMLX_F32;
    f16 |= dts[i] == ZMLX_F16;
    bf16 |= dts[i] == ZMLX_BF16;
  }
  if (f32 || (f16 && bf16)) return ZMLX_F32;
  return f16 ? ZMLX_F16 : bf16 ? ZMLX_BF16 : ZMLX_F32;
}

/* Gradients have the input's dtype when it is a float, else f32. */
static zmlx_dtype grad_dtype(zmlx_dtype in) {
  return in == ZMLX_F16 || in == ZMLX_BF16 || in == ZMLX_F32 ? in : ZMLX_F32;
}

static zmlx_status check_dtypes(zmlx_array *const *a, int n, const zmlx_expr *e,
                                zmlx_dtype *dts) {
  for (int i = 0; i < n; i++) {
    dts[i] = a[i]->dtype;
    if (!zmlxi_expr_dtype_ok(dts[i]))
      return zmlxi_fail(ZMLX_ERR_DTYPE, "elementwise: input '%s' is %s; expression kernels "
                       "compute in f32 and take every dtype but f64", e->input_names[i],
                       zmlx_dtype_name(dts[i]));
  }
  return ZMLX_OK;
}

/* ------------------------------------------------------------ broadcasting */

typedef struct bshape {
  int ndim;
  int64_t shape[ZMLX_MAX_DIMS];
} bshape;

/* NumPy broadcasting of `a` into *s; `who` names the arrays so far. */
static zmlx_status broadcast_into(bshape *s, const zmlx_array *a, const char *name,
                                  const char *who) {
  int nd = a->ndim > s->ndim ? a->ndim : s->ndim;
  bshape r = {.ndim = nd};
  for (int d = 0; d < nd; d++) {
    int ka = d - (nd - a->ndim), ks = d - (nd - s->ndim);
    int64_t x = ka >= 0 ? a->shape[ka] : 1, y = ks >= 0 ? s->shape[ks] : 1;
    if (x != y && x != 1 && y != 1) {
      char b1[200], b2[200];
      return zmlxi_fail(ZMLX_ERR_SHAPE, "elementwise: %s of shape %s does not broadcast with %s "
                       "(shape %s): dimension %d is %lld vs %lld", name,
                       zmlxi_shape_str(b1, sizeof b1, a->ndim, a->shape), who,
                       zmlxi_shape_str(b2, sizeof b2, s->ndim, s->shape), d - nd,
                       (long long)x, (long long)y);
    }
    r.shape[d] = x == 1 ? y : x;
  }
  *s = r;
  return ZMLX_OK;
}

static zmlx_status broadcast_inputs(const zmlx_expr *e, zmlx_array *const *in, int n,
                                    bshape *out) {
  bshape s = {.ndim = 0};
  char who[256] = "";
  for (int i = 0; i < n; i++) {
    char name[160];
    snprintf(name, sizeof name, "input '%s'", e->input_names[i]);
    ZMLX_CHECK(broadcast_into(&s, in[i], name, who));
    size_t len = strlen(who);
    snprintf(who + len, sizeof who - len, "%s'%s'", i ? ", " : "input ", e->input_names[i]);
  }
  *out = s;
  return ZMLX_OK;
}

static int64_t shape_size(const bshape *s) {
  int64_t n = 1;
  for (int d = 0; d < s->ndim; d++) n *= s->shape[d];
  return n;
}

/* Does `a` broadcast into `s` without enlarging it? */
static int fits_into(const zmlx_array *a, const bshape *s) {
  bshape t = *s;
  if (broadcast_into(&t, a, "", "") != ZMLX_OK) return 0;
  if (t.ndim != s->ndim) return 0;
  for (int d = 0; d < s->ndim; d++)
    if (t.shape[d] != s->shape[d]) return 0;
  return 1;
}

static zmlx_status shape_mismatch(const char *what, const zmlx_array *a, const bshape *s) {
  char b1[200], b2[200];
  return zmlxi_fail(ZMLX_ERR_SHAPE, "elementwise: %s has shape %s, which does not broadcast to "
                   "the shape %s", what, zmlxi_shape_str(b1, sizeof b1, a->ndim, a->shape),
                   zmlxi_shape_str(b2, sizeof b2, s->ndim, s->shape));
}

/* ------------------------------------------------------------ launch plan */

/* One kernel launch of a graph over a broadcast shape: arrays as given
 * (inputs broadcast into `shape`, outputs dense with its element count). */
typedef struct ew_plan {
  const zmlx_expr *e;
  uint32_t used; /* used_mask(e) */
  char dir;      /* 'F', 'V', 'J': part of the kernel key */
  zmlx_array *const *in;
  zmlx_array *const *out;
  bshape shape;
  const double *params;
  zmlx_stream *stream;
} ew_plan;

/* Dimensions after dropping size-1 axes and merging axes that every
 * array walks contiguously (stride[d] == stride[d+1] * shape[d+1]). */
typedef struct coalesced {
  int ndim;
  int64_t shape[ZMLX_MAX_DIMS];
  int64_t strides[ZMLX_KERNEL_MAX_ARRAYS][ZMLX_MAX_DIMS]; /* per input, 0 on broadcast axes */
} coalesced;

static void broadcast_strides(const zmlx_array *a, const bshape *s, int64_t *st) {
  for (int d = 0; d < s->ndim; d++) {
    int k = d - (s->ndim - a->ndim);
    st[d] = k < 0 || a->shape[k] == 1 ? 0 : a->strides[k];
  }
}

/* Inputs the graph does not read have no say (the kernel never indexes them). */
static int mergeable(const coalesced *c, const ew_plan *p, int d, const int64_t *dense) {
  if (dense[d] != dense[d + 1] * c->shape[d + 1]) return 0;
  for (int i = 0; i < p->e->n_inputs; i++)
    if ((p->used >> i & 1u) && c->strides[i][d] != c->strides[i][d + 1] * c->shape[d + 1])
      return 0;
  return 1;
}

static void coalesce(const ew_plan *p, coalesced *c) {
  int n = p->e->n_inputs;
  int64_t full[ZMLX_KERNEL_MAX_ARRAYS][ZMLX_MAX_DIMS], dense[ZMLX_MAX_DIMS];
  for (int i = 0; i < n; i++) broadcast_strides(p->in[i], &p->shape, full[i]);
  c->ndim = 0;
  for (int d = 0; d < p->shape.ndim; d++) {
    if (p->shape.shape[d] == 1) continue;
    c->shape[c->ndim] = p->shape.shape[d];
    for (int i = 0; i < n; i++) c->strides[i][c->ndim] = full[i][d];
    c->ndim++;
  }
  /* Merge from the innermost axis outwards. */
  for (int d = c->ndim - 2; d >= 0; d--) {
    zmlxi_contiguous_strides(c->ndim, c->shape, dense);
    if (!mergeable(c, p, d, dense)) continue;
    c->shape[d] *= c->shape[d + 1];
    for (int i = 0; i < n; i++) c->strides[i][d] = c->strides[i][d + 1];
    for (int k = d + 1; k + 1 < c->ndim; k++) {
      c->shape[k] = c->shape[k + 1];
      for (int i = 0; i < n; i++) c->strides[i][k] = c->strides[i][k + 1];
    }
    c->ndim--;
  }
}

static int is_flat(const ew_plan *p, const coalesced *c) {
  if (c->ndim == 0) return 1;
  if (c->ndim > 1) return 0;
  for (int i = 0; i < p->e->n_inputs; i++)
    if ((p->used >> i & 1u) && c->strides[i][0] != 1) return 0;
  return 1;
}

/* 16-byte alignment of element 0. Opaque buffers (OpenCL's) start at least
 * at CL_DEVICE_MEM_BASE_ADDR_ALIGN (128 bytes for full profiles), so only
 * the offset matters there; device addresses (CUDA's, possibly imported
 * through DLPack) are checked themselves. */
static int aligned16(const zmlx_array *a) {
  size_t off = (size_t)a->offset * zmlx_dtype_size(a->dtype);
  if (off % 16) return 0;
  if (a->buffer->device->ops->buffer_is_address) return (uintptr_t)a->buffer->handle % 16 == 0;
  return 1;
}

/* Dtypes of the arrays the vector body touches (used inputs, outputs). */
static int touched_dtypes(const zmlx_expr *e, uint32_t used, const zmlx_dtype *all,
                          zmlx_dtype *out) {
  int n = 0;
  for (int i = 0; i < e->n_inputs; i++)
    if (used >> i & 1u) out[n++] = all[i];
  for (int j = 0; j < e->n_roots; j++) out[n++] = all[e->n_inputs + j];
  return n;
}

static int vector_width_for(const ew_plan *p, const zmlx_dtype *dts, int64_t n) {
  zmlx_dtype used[ZMLX_KERNEL_MAX_ARRAYS];
  int w = zmlxi_pattern_vector_width(used, touched_dtypes(p->e, p->used, dts, used));
  if (w == 0 || n < w) return 0;
  for (int i = 0; i < p->e->n_inputs; i++)
    if ((p->used >> i & 1u) && !aligned16(p->in[i])) return 0;
  for (int j = 0; j < p->e->n_roots; j++)
    if (!aligned16(p->out[j])) return 0;
  return w;
}

typedef struct ew_build_ctx {
  const zmlx_expr *e;
  zmlx_ew_layout layout;
  const zmlx_dtype *dtypes;
} ew_build_ctx;

static zmlx_status ew_build(const void *ctx, zmlx_pattern_kernel *out) {
  const ew_build_ctx *c = ctx;
  return zmlxi_pattern_elementwise(c->e, c->layout, c->dtypes, out);
}

/* "F|v|f32,bf16>bf16": what the body depends on. Contiguous and strided
 * bodies do not depend on dtypes (the accessors do); vector bodies do. */
static void kernel_key(char *key, size_t cap, const ew_plan *p, zmlx_ew_layout layout,
                       const zmlx_dtype *dts) {
  static const char layout_tag[] = {'c', 's', 'v'};
  int n = snprintf(key, cap, "%c|%c", p->dir, layout_tag[layout]);
  if (layout != ZMLX_EW_VECTOR) return;
  zmlx_dtype used[ZMLX_KERNEL_MAX_ARRAYS];
  int nu = touched_dtypes(p->e, p->used, dts, used);
  for (int i = 0; i < nu && n > 0 && (size_t)n < cap; i++)
    n += snprintf(key + n, cap - (size_t)n, "%c%s", i ? ',' : '|', zmlx_dtype_name(used[i]));
}

static zmlx_status get_ew_kernel(zmlx_op *op, const ew_plan *p, zmlx_ew_layout layout,
                                 const zmlx_dtype *dts, zmlx_kernel **k) {
  char key[160];
  kernel_key(key, sizeof key, p, layout, dts);
  ew_build_ctx ctx = {p->e, layout, dts};
  return zmlxi_op_kernel(op, key, ew_build, &ctx, k);
}

/* Views with the coalesced geometry for the strided layout: inputs get
 * their broadcast strides, out0 its shape (the kernel reads out0_shape). */
static zmlx_status strided_views(const ew_plan *p, const coalesced *c, zmlx_array **views) {
  int n = p->e->n_inputs;
  int64_t dense[ZMLX_MAX_DIMS];
  zmlxi_contiguous_strides(c->ndim, c->shape, dense);
  for (int d = 1; d < c->ndim; d++)
    if (c->shape[d] > INT32_MAX)
      return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "elementwise: a broadcast dimension of %lld elements "
                       "exceeds the kernels' 32-bit shape entries", (long long)c->shape[d]);
  for (int i = 0; i < n; i++)
    ZMLX_CHECK(zmlxi_array_make_view(p->in[i], c->ndim, c->shape, c->strides[i], p->in[i]->offset,
                                    &views[i]));
  return zmlxi_array_make_view(p->out[0], c->ndim, c->shape, dense, p->out[0]->offset, &views[n]);
}

static zmlx_status launch_plan(zmlx_kernel *k, const ew_plan *p, zmlx_array **arrays,
                               zmlx_ew_layout layout, int width, int64_t n) {
  const zmlx_expr *e = p->e;
  double params[ZMLX_KERNEL_MAX_PARAMS];
  for (int i = 0; i < e->n_params; i++) params[i] = p->params[i];
  params[e->n_params] = (double)n;
  zmlx_device *dev = p->out[0]->buffer->device;
  zmlx_pattern_geometry g = zmlxi_pattern_elementwise_geometry(layout, n, width, &dev->info);
  zmlx_kernel_call call = {.n_inputs = e->n_inputs, .n_outputs = e->n_roots,
                           .inputs = arrays, .outputs = arrays + e->n_inputs,
                           .params = params, .stream = p->stream, .device = dev};
  memcpy(call.grid, g.grid, sizeof g.grid);
  memcpy(call.threadgroup, g.threadgroup, sizeof g.threadgroup);
  return zmlx_kernel_launch(k, &call);
}

static zmlx_status run_plan(zmlx_op *op, const ew_plan *p) {
  const zmlx_expr *e = p->e;
  int64_t n = shape_size(&p->shape);
  if (n == 0) return ZMLX_OK;
  zmlx_dtype dts[ZMLX_KERNEL_MAX_ARRAYS];
  for (int i = 0; i < e->n_inputs; i++) dts[i] = p->in[i]->dtype;
  for (int j = 0; j < e->n_roots; j++) dts[e->n_inputs + j] = p->out[j]->dtype;
  coalesced c;
  coalesce(p, &c);
  int flat = is_flat(p, &c), width = flat ? vector_width_for(p, dts, n) : 0;
  zmlx_ew_layout layout = !flat ? ZMLX_EW_STRIDED : width ? ZMLX_EW_VECTOR : ZMLX_EW_CONTIGUOUS;
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(get_ew_kernel(op, p, layout, dts, &k));
  zmlx_array *arrays[ZMLX_KERNEL_MAX_ARRAYS] = {0}, *views[ZMLX_KERNEL_MAX_ARRAYS] = {0};
  for (int i = 0; i < e->n_inputs; i++) arrays[i] = p->in[i];
  for (int j = 0; j < e->n_roots; j++) arrays[e->n_inputs + j] = p->out[j];
  zmlx_status st = ZMLX_OK;
  if (layout == ZMLX_EW_STRIDED) {
    st = strided_views(p, &c, views);
    for (int i = 0; i <= e->n_inputs && st == ZMLX_OK; i++) arrays[i] = views[i];
  }
  if (st == ZMLX_OK) st = launch_plan(k, p, arrays, layout, width, n);
  for (int i = 0; i <= e->n_inputs; i++) zmlx_array_release(views[i]);
  return st;
}

/* ------------------------------------------------------------ forward */

static zmlx_status alloc_like(zmlx_array *ref, zmlx_stream *s, zmlx_dtype dt, const bshape *shape,
                              zmlx_array **out) {
  return zmlxi_array_alloc(ref->buffer->device, s, dt, shape->ndim, shape->shape, out);
}

static zmlx_status ew_call(zmlx_op *op, zmlx_array *const *inputs, const double *params,
                           zmlx_stream *s, zmlx_array **out) {
  ew_op *o = (ew_op *)op;
  zmlx_dtype dts[EW_MAX_INPUTS];
  ZMLX_CHECK(check_dtypes(inputs, op->n_inputs, o->fwd, dts));
  ew_plan p = {.e = o->fwd, .used = o->fwd_used, .dir = 'F', .in = inputs, .params = params, .stream = s};
  ZMLX_CHECK(broadcast_inputs(o->fwd, inputs, op->n_inputs, &p.shape));
  ZMLX_CHECK(alloc_like(inputs[0], s, result_dtype(dts, op->n_inputs), &p.shape, out));
  p.out = out;
  zmlx_status st = run_plan(op, &p);
  if (st != ZMLX_OK) {
    zmlx_array_release(*out);
    *out = NULL;
  }
  return st;
}

/* ------------------------------------------------------------ VJP */

/* Every built-in sum kernel of a gradient: init 0, acc + x, a + b. */
typedef struct sum_graphs {
  zmlx_expr *init, *step, *combine;
} sum_graphs;

static const char *const ACC_X[] = {"acc", "x"};
static const char *const A_B[] = {"a", "b"};

static void sum_graphs_free(sum_graphs *g) {
  zmlxi_expr_free(g->init);
  zmlxi_expr_free(g->step);
  zmlxi_expr_free(g->combine);
}

static zmlx_status sum_graphs_parse(sum_graphs *g) {
  memset(g, 0, sizeof *g);
  zmlx_status st = zmlxi_expr_parse("0", NULL, 0, NULL, 0, &g->init);
  if (st == ZMLX_OK) st = zmlxi_expr_parse("acc + x", ACC_X, 2, NULL, 0, &g->step);
  if (st == ZMLX_OK) st = zmlxi_expr_parse("a + b", A_B, 2, NULL, 0, &g->combine);
  if (st != ZMLX_OK) sum_graphs_free(g);
  return st;
}

/* ctx: the row mode, or -1 for the column (leading axis) reduction. */
static zmlx_status sum_build(const void *ctx, zmlx_pattern_kernel *out) {
  int mode = *(const int *)ctx;
  sum_graphs g;
  ZMLX_CHECK(sum_graphs_parse(&g));
  zmlx_row_reduction r = {g.init, g.step, g.combine, NULL};
  zmlx_status st = mode < 0 ? zmlxi_pattern_col_reduce(&r, out)
                            : zmlxi_pattern_row_reduce(&r, (zmlx_row_mode)mode, out);
  sum_graphs_free(&g);
  return st;
}

/* Sum the dense f32 [rows, cols] `src` over rows (columns = 1) or over
 * columns into the dense `dst` ([cols] or [rows] elements). */
static zmlx_status sum_2d(zmlx_op *op, zmlx_array *src, int64_t rows, int64_t cols, int columns,
                          zmlx_array *dst, zmlx_stream *s) {
  zmlx_device *dev = src->buffer->device;
  int mode = columns ? -1 : (int)zmlxi_pattern_group_mode(dev->ops->kind);
  char key[32];
  snprintf(key, sizeof key, "sum|%d", mode);
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(zmlxi_op_kernel(op, key, sum_build, &mode, &k));
  int64_t shape2[2] = {rows, cols}, strides2[2] = {cols, 1};
  int64_t dn = columns ? cols : rows, one = 1;
  zmlx_array *in = NULL, *outv = NULL;
  zmlx_status st = zmlxi_array_make_view(src, 2, shape2, strides2, src->offset, &in);
  if (st == ZMLX_OK) st = zmlxi_array_make_view(dst, 1, &dn, &one, dst->offset, &outv);
  if (st == ZMLX_OK) {
    zmlx_pattern_geometry g = columns ? zmlxi_pattern_col_geometry(cols, &dev->info)
                                      : zmlxi_pattern_row_geometry((zmlx_row_mode)mode, rows, cols,
                                                                  &dev->info);
    double params[2] = {(double)rows, (double)cols};
    zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &in, .outputs = &outv,
                             .params = params, .stream = s, .device = dev};
    memcpy(call.grid, g.grid, sizeof g.grid);
    memcpy(call.threadgroup, g.threadgroup, sizeof g.threadgroup);
    st = zmlx_kernel_launch(k, &call);
  }
  zmlx_array_release(in);
  zmlx_array_release(outv);
  return st;
}

/* Axes of the broadcast shape: kept (the input has them) or summed. */
typedef struct axis_split {
  int n_kept, n_summed;
  int kept[ZMLX_MAX_DIMS], summed[ZMLX_MAX_DIMS];
  int64_t k_size, r_size;
  int leading_sum; /* every summed axis comes before every kept one */
  int trailing_sum; /* every summed axis comes after every kept one */
} axis_split;

static void split_axes(const zmlx_array *in, const bshape *s, axis_split *a) {
  memset(a, 0, sizeof *a);
  a->k_size = a->r_size = 1;
  a->leading_sum = a->trailing_sum = 1;
  for (int d = 0; d < s->ndim; d++) {
    if (s->shape[d] == 1) continue;
    int k = d - (s->ndim - in->ndim);
    if (k >= 0 && in->shape[k] != 1) {
      a->kept[a->n_kept++] = d;
      a->k_size *= s->shape[d];
      a->trailing_sum &= a->n_summed == 0;
    } else {
      a->summed[a->n_summed++] = d;
      a->r_size *= s->shape[d];
      a->leading_sum &= a->n_kept == 0;
    }
  }
}

/* Kept axes first, summed axes last, as a dense copy. */
static zmlx_status kept_then_summed(zmlx_array *src, const axis_split *a, zmlx_array **out) {
  int perm[ZMLX_MAX_DIMS], np = 0;
  for (int i = 0; i < a->n_kept; i++) perm[np++] = a->kept[i];
  for (int i = 0; i < a->n_summed; i++) perm[np++] = a->summed[i];
  for (int d = 0; d < src->ndim; d++)
    if (src->shape[d] == 1) perm[np++] = d;
  zmlx_array *t = NULL;
  ZMLX_CHECK(zmlx_array_transpose(src, perm, &t));
  zmlx_status st = zmlx_array_contiguous(t, out);
  zmlx_array_release(t);
  return st;
}

/* Sum the f32 gradient `full` (broadcast shape) into `grad` (the input's
 * shape and gradient dtype). */
static zmlx_status reduce_to_input(zmlx_op *op, zmlx_array *full, const zmlx_array *in,
                                   const bshape *s, zmlx_array *grad, zmlx_stream *st) {
  axis_split a;
  split_axes(in, s, &a);
  if (a.leading_sum && a.n_kept)
    return sum_2d(op, full, a.r_size, a.k_size, 1, grad, st);
  if (a.trailing_sum) return sum_2d(op, full, a.k_size, a.r_size, 0, grad, st);
  zmlx_array *dense = NULL;
  ZMLX_CHECK(kept_then_summed(full, &a, &dense));
  zmlx_status r = sum_2d(op, dense, a.k_size, a.r_size, 0, grad, st);
  zmlx_array_release(dense);
  return r;
}

static void release_all(zmlx_array **a, int n) {
  for (int i = 0; i < n; i++) {
    zmlx_array_release(a[i]);
    a[i] = NULL;
  }
}

/* Kernel outputs of the VJP: the gradient itself (as a view with the
 * broadcast shape) when the input was not broadcast, else an f32 array
 * of the broadcast shape to be summed. */
static zmlx_status vjp_outputs(zmlx_array *const *inputs, int n, const bshape *s, zmlx_stream *st,
                               zmlx_array **grads, zmlx_array **kout, int *summed) {
  int64_t total = shape_size(s), dense[ZMLX_MAX_DIMS];
  zmlxi_contiguous_strides(s->ndim, s->shape, dense);
  for (int i = 0; i < n; i++) {
    zmlx_array *in = inputs[i];
    ZMLX_CHECK(zmlxi_array_alloc(in->buffer->device, st, grad_dtype(in->dtype), in->ndim, in->shape,
                                &grads[i]));
    summed[i] = in->size != total;
    if (summed[i])
      ZMLX_CHECK(alloc_like(in, st, ZMLX_F32, s, &kout[i]));
    else
      ZMLX_CHECK(zmlxi_array_make_view(grads[i], s->ndim, s->shape, dense, 0, &kout[i]));
  }
  return ZMLX_OK;
}

static zmlx_status ew_vjp(zmlx_op *op, zmlx_array *const *inputs, const double *params,
                          zmlx_array *cot, zmlx_stream *s, zmlx_array **grads) {
  ew_op *o = (ew_op *)op;
  int n = op->n_inputs;
  zmlx_dtype dts[EW_MAX_INPUTS];
  ZMLX_CHECK(check_dtypes(inputs, n, o->fwd, dts));
  if (!zmlxi_expr_dtype_ok(cot->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "elementwise VJP: the cotangent is %s", zmlx_dtype_name(cot->dtype));
  ew_plan p = {.e = o->vjp, .used = o->vjp_used, .dir = 'V', .params = params, .stream = s};
  ZMLX_CHECK(broadcast_inputs(o->fwd, inputs, n, &p.shape));
  if (!fits_into(cot, &p.shape)) return shape_mismatch("the cotangent", cot, &p.shape);
  zmlx_array *kin[ZMLX_KERNEL_MAX_ARRAYS], *kout[EW_MAX_INPUTS] = {0};
  int summed[EW_MAX_INPUTS];
  for (int i = 0; i < n; i++) kin[i] = inputs[i];
  kin[n] = cot;
  p.in = kin;
  p.out = kout;
  zmlx_status st = vjp_outputs(inputs, n, &p.shape, s, grads, kout, summed);
  if (st == ZMLX_OK) st = run_plan(op, &p);
  for (int i = 0; i < n && st == ZMLX_OK; i++)
    if (summed[i]) st = reduce_to_input(op, kout[i], inputs[i], &p.shape, grads[i], s);
  release_all(kout, n);
  if (st != ZMLX_OK) release_all(grads, n);
  return st;
}

/* ------------------------------------------------------------ JVP */

static zmlx_status jvp_tangents(ew_op *o, zmlx_array *const *inputs, zmlx_array *const *tangents,
                                zmlx_array **kin, zmlx_array **zeros) {
  int n = o->base.n_inputs;
  for (int i = 0; i < n; i++) {
    kin[i] = inputs[i];
    kin[n + i] = tangents[i];
    if (tangents[i]) {
      bshape si = {.ndim = inputs[i]->ndim};
      memcpy(si.shape, inputs[i]->shape, sizeof si.shape);
      char what[200];
      snprintf(what, sizeof what, "the tangent of input '%s'", o->fwd->input_names[i]);
      if (!fits_into(tangents[i], &si)) return shape_mismatch(what, tangents[i], &si);
      if (!zmlxi_expr_dtype_ok(tangents[i]->dtype))
        return zmlxi_fail(ZMLX_ERR_DTYPE, "elementwise JVP: %s is f64", what);
      continue;
    }
    /* No tangent: a zero scalar broadcast over the input. */
    ZMLX_CHECK(zmlx_array_zeros(inputs[i]->buffer->device, ZMLX_F32, 0, NULL, &zeros[i]));
    kin[n + i] = zeros[i];
  }
  return ZMLX_OK;
}

static zmlx_status ew_jvp(zmlx_op *op, zmlx_array *const *inputs, const double *params,
                          zmlx_array *const *tangents, zmlx_stream *s, zmlx_array **out) {
  ew_op *o = (ew_op *)op;
  int n = op->n_inputs;
  zmlx_dtype dts[EW_MAX_INPUTS];
  ZMLX_CHECK(check_dtypes(inputs, n, o->fwd, dts));
  zmlx_array *kin[ZMLX_KERNEL_MAX_ARRAYS], *zeros[EW_MAX_INPUTS] = {0};
  ew_plan p = {.e = o->jvp, .used = o->jvp_used, .dir = 'J', .in = kin, .params = params, .stream = s};
  zmlx_status st = broadcast_inputs(o->fwd, inputs, n, &p.shape);
  if (st == ZMLX_OK) st = jvp_tangents(o, inputs, tangents, kin, zeros);
  if (st == ZMLX_OK) st = alloc_like(inputs[0], s, result_dtype(dts, n), &p.shape, out);
  p.out = out;
  if (st == ZMLX_OK) st = run_plan(op, &p);
  release_all(zeros, n);
  if (st != ZMLX_OK) release_all(out, 1);
  return st;
}

/* ------------------------------------------------------------ source */

/* The kernels a direction may launch for dense inputs of these dtypes
 * (vector or flat-index layout), then its broadcast/strided kernel. */
static zmlx_status ew_source_of(const zmlx_expr *e, zmlx_backend b, const zmlx_dtype *dts,
                                const char *dir, zmlx_sb *sb) {
  zmlx_dtype used[ZMLX_KERNEL_MAX_ARRAYS];
  int vec = zmlxi_pattern_vector_width(used, touched_dtypes(e, used_mask(e), dts, used)) > 0;
  zmlx_ew_layout layouts[2] = {vec ? ZMLX_EW_VECTOR : ZMLX_EW_CONTIGUOUS, ZMLX_EW_STRIDED};
  static const char *const what[] = {"dense inputs", "broadcast or strided inputs",
                                     "dense inputs, 16-byte vectors"};
  for (int i = 0; i < 2; i++) {
    zmlx_pattern_kernel pk;
    ZMLX_CHECK(zmlxi_pattern_elementwise(e, layouts[i], dts, &pk));
    char banner[128];
    snprintf(banner, sizeof banner, "%s, %s", dir, what[layouts[i]]);
    if (i) zmlxi_sb_append(sb, "\n");
    zmlx_status st = zmlxi_pattern_append_source(&pk, b, dts, banner, sb);
    zmlxi_pattern_kernel_free(&pk);
    ZMLX_CHECK(st);
  }
  return ZMLX_OK;
}

static zmlx_status ew_source(zmlx_op *op, zmlx_backend b, zmlx_op_direction dir,
                             const zmlx_dtype *in_dts, zmlx_sb *sb) {
  ew_op *o = (ew_op *)op;
  int n = op->n_inputs;
  zmlx_dtype out_dt = result_dtype(in_dts, n);
  zmlx_dtype dts[ZMLX_KERNEL_MAX_ARRAYS];
  memcpy(dts, in_dts, (size_t)n * sizeof *dts);
  if (dir == ZMLX_OP_FORWARD) {
    dts[n] = out_dt;
    return ew_source_of(o->fwd, b, dts, "forward", sb);
  }
  if (dir == ZMLX_OP_VJP) {
    dts[n] = out_dt; /* the cotangent */
    for (int i = 0; i < n; i++) dts[n + 1 + i] = grad_dtype(in_dts[i]);
    return ew_source_of(o->vjp, b, dts, "vjp", sb);
  }
  memcpy(dts + n, in_dts, (size_t)n * sizeof *dts); /* tangents */
  dts[2 * n] = out_dt;
  return ew_source_of(o->jvp, b, dts, "jvp", sb);
}

/* ------------------------------------------------------------ create */

static void ew_destroy(zmlx_op *op) {
  ew_op *o = (ew_op *)op;
  zmlxi_op_fini(op);
  zmlxi_expr_free(o->fwd);
  zmlxi_expr_free(o->vjp);
  zmlxi_expr_free(o->jvp);
  free(o);
}

static const zmlx_op_vtable EW_VTABLE = {
    .kind = "elementwise", .call = ew_call, .vjp = ew_vjp, .jvp = ew_jvp,
    .source = ew_source, .destroy = ew_destroy};

zmlx_status zmlx_elementwise(const char *expr, const char *const *input_names, int n_inputs,
                             const char *const *param_names, int n_params, zmlx_op **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(expr);
  if (n_inputs < 1 || n_inputs > EW_MAX_INPUTS)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_elementwise: %d inputs (1 to %d: the VJP kernel "
                     "holds every input, the cotangent and every gradient)", n_inputs,
                     EW_MAX_INPUTS);
  if (n_params < 0 || n_params > ZMLX_KERNEL_MAX_PARAMS - 1)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_elementwise: %d parameters (at most %d)",
                     n_params, ZMLX_KERNEL_MAX_PARAMS - 1);
  ew_op *o = calloc(1, sizeof *o);
  if (!o) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlx_status st = zmlxi_expr_parse(expr, input_names, n_inputs, param_names, n_params, &o->fwd);
  if (st == ZMLX_OK) st = zmlxi_expr_vjp(o->fwd, 0, &o->vjp);
  if (st == ZMLX_OK) st = zmlxi_expr_jvp(o->fwd, 0, &o->jvp);
  if (st == ZMLX_OK) st = zmlxi_op_init(&o->base, &EW_VTABLE, n_inputs, n_params);
  if (st != ZMLX_OK) {
    zmlxi_expr_free(o->fwd);
    zmlxi_expr_free(o->vjp);
    zmlxi_expr_free(o->jvp);
    free(o);
    return st;
  }
  o->fwd_used = used_mask(o->fwd);
  o->vjp_used = used_mask(o->vjp);
  o->jvp_used = used_mask(o->jvp);
  *out = &o->base;
  return ZMLX_OK;
}

const zmlx_expr *zmlxi_op_forward_expr(const zmlx_op *op) {
  if (!op || op->vt != &EW_VTABLE) return NULL;
  return ((const ew_op *)op)->fwd;
}
