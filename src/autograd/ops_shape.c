/* Differentiable shape ops and reductions: reshape, transpose, slice (and
 * its adjoint, pad), concat, broadcast_to, astype, sum, mean.
 *
 * The forward of each is the runtime's view function or a dialect kernel;
 * the rules are written with these same differentiable ops, so they are
 * recorded when a grad of grad needs them. None keeps its input arrays:
 * shapes, axes and offsets are all a rule needs. */
#include "autograd/ad.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Record a one-input, one-output op; *out is released if that fails. */
static zmlx_status record1(const zmlx_ad_rule *rule, void *ctx, zmlx_array *in, zmlx_array **out) {
  zmlx_status st = zmlxi_ad_record(rule, ctx, &in, 1, out, 1, 0);
  if (st != ZMLX_OK) zmlxi_ad_release_all(out, 1);
  return st;
}

/* A copy of `n` bytes for a node's ctx, or NULL (then the op fails). */
static void *ctx_dup(const void *p, size_t n) {
  void *c = malloc(n);
  if (c) memcpy(c, p, n);
  return c;
}

static zmlx_status record1_ctx(const zmlx_ad_rule *rule, const void *ctx, size_t n,
                               zmlx_array *in, zmlx_array **out) {
  if (!zmlxi_ad_should_record(&in, 1)) return ZMLX_OK;
  void *c = ctx_dup(ctx, n);
  if (!c) {
    zmlxi_ad_release_all(out, 1);
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  }
  return record1(rule, c, in, out);
}

/* ---------------------------------------------------------------- reshape */

static zmlx_status reshape_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                               zmlx_array **grads) {
  (void)need;
  return zmlx_reshape(cot[0], n->in_meta[0].ndim, n->in_meta[0].shape, &grads[0]);
}

static zmlx_status reshape_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out) {
  return zmlx_reshape(tan[0], n->out_meta[0].ndim, n->out_meta[0].shape, &out[0]);
}

static const zmlx_ad_rule RESHAPE_RULE = {"reshape", reshape_vjp, reshape_jvp, NULL};

zmlx_status zmlx_reshape(zmlx_array *a, int ndim, const int64_t *shape, zmlx_array **out) {
  ZMLX_CHECK(zmlx_array_reshape(a, ndim, shape, out));
  return record1(&RESHAPE_RULE, NULL, a, out);
}

/* -------------------------------------------------------------- transpose */

typedef struct perm_ctx {
  int perm[ZMLX_MAX_DIMS];
} perm_ctx;

static zmlx_status transpose_vjp(const zmlx_ad_node *n, zmlx_array *const *cot,
                                 const uint8_t *need, zmlx_array **grads) {
  (void)need;
  const perm_ctx *c = n->ctx;
  int inv[ZMLX_MAX_DIMS];
  for (int d = 0; d < n->in_meta[0].ndim; d++) inv[c->perm[d]] = d;
  return zmlx_transpose(cot[0], inv, &grads[0]);
}

static zmlx_status transpose_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out) {
  const perm_ctx *c = n->ctx;
  return zmlx_transpose(tan[0], c->perm, &out[0]);
}

static const zmlx_ad_rule TRANSPOSE_RULE = {"transpose", transpose_vjp, transpose_jvp, free};

zmlx_status zmlx_transpose(zmlx_array *a, const int *perm, zmlx_array **out) {
  ZMLX_CHECK(zmlx_array_transpose(a, perm, out));
  perm_ctx c;
  for (int d = 0; d < a->ndim; d++) c.perm[d] = perm ? perm[d] : a->ndim - 1 - d;
  return record1_ctx(&TRANSPOSE_RULE, &c, sizeof c, a, out);
}

/* ------------------------------------------------------------ slice / pad */

/* A strided window: element i of axis d sits at start[d] + i * step[d]. */
typedef struct window_ctx {
  int64_t start[ZMLX_MAX_DIMS], step[ZMLX_MAX_DIMS];
} window_ctx;

/* The exclusive stop that selects exactly `count` elements. */
static void window_stops(const window_ctx *w, int ndim, const int64_t *count, int64_t *stop) {
  for (int d = 0; d < ndim; d++)
    stop[d] = count[d] ? w->start[d] + (count[d] - 1) * w->step[d] + 1 : w->start[d];
}

static zmlx_status window_slice(zmlx_array *a, const window_ctx *w, const int64_t *count,
                                zmlx_array **out) {
  int64_t stop[ZMLX_MAX_DIMS];
  window_stops(w, a->ndim, count, stop);
  return zmlx_slice(a, w->start, stop, w->step, out);
}

static zmlx_status pad_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                           zmlx_array **grads) {
  (void)need;
  return window_slice(cot[0], n->ctx, n->in_meta[0].shape, &grads[0]);
}

static zmlx_status pad_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out) {
  const window_ctx *w = n->ctx;
  return zmlxi_ad_pad(tan[0], &n->out_meta[0], w->start, w->step, &out[0]);
}

static const zmlx_ad_rule PAD_RULE = {"pad", pad_vjp, pad_jvp, free};

zmlx_status zmlxi_ad_pad(zmlx_array *src, const zmlx_ad_meta *m, const int64_t *start,
                        const int64_t *step, zmlx_array **out) {
  window_ctx w;
  memcpy(w.start, start, (size_t)m->ndim * sizeof *start);
  memcpy(w.step, step, (size_t)m->ndim * sizeof *step);
  int64_t stop[ZMLX_MAX_DIMS];
  window_stops(&w, m->ndim, src->shape, stop);
  zmlx_array *win = NULL;
  ZMLX_CHECK(zmlx_array_zeros(m->device, src->dtype, m->ndim, m->shape, out));
  zmlx_status st = zmlx_array_slice(*out, w.start, stop, w.step, &win);
  if (st == ZMLX_OK && !zmlxi_ad_same_shape(win, src->ndim, src->shape))
    st = zmlxi_fail(ZMLX_ERR_INTERNAL, "pad: the window does not have the source's shape");
  if (st == ZMLX_OK) st = zmlxi_ad_kernel_scatter(src, win, *out);
  zmlx_array_release(win);
  if (st != ZMLX_OK) {
    zmlxi_ad_release_all(out, 1);
    return st;
  }
  return record1_ctx(&PAD_RULE, &w, sizeof w, src, out);
}

static zmlx_status slice_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                             zmlx_array **grads) {
  (void)need;
  const window_ctx *w = n->ctx;
  return zmlxi_ad_pad(cot[0], &n->in_meta[0], w->start, w->step, &grads[0]);
}

static zmlx_status slice_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out) {
  return window_slice(tan[0], n->ctx, n->out_meta[0].shape, &out[0]);
}

static const zmlx_ad_rule SLICE_RULE = {"slice", slice_vjp, slice_jvp, free};

/* Python's slice.indices() for step > 0, as zmlx_array_slice does. */
static int64_t clamp_start(int64_t i, int64_t n) {
  if (i < 0) i += n;
  if (i < 0) return 0;
  return i > n ? n : i;
}

zmlx_status zmlx_slice(zmlx_array *a, const int64_t *start, const int64_t *stop,
                       const int64_t *step, zmlx_array **out) {
  ZMLX_CHECK(zmlx_array_slice(a, start, stop, step, out));
  window_ctx w;
  for (int d = 0; d < a->ndim; d++) {
    w.start[d] = clamp_start(start[d], a->shape[d]);
    w.step[d] = step ? step[d] : 1;
  }
  return record1_ctx(&SLICE_RULE, &w, sizeof w, a, out);
}

/* ---------------------------------------------------------------- concat */

typedef struct concat_ctx {
  int axis;
  int64_t offset[]; /* n + 1 offsets along the axis */
} concat_ctx;

static zmlx_status concat_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                              zmlx_array **grads) {
  const concat_ctx *c = n->ctx;
  int nd = cot[0]->ndim;
  int64_t start[ZMLX_MAX_DIMS] = {0}, stop[ZMLX_MAX_DIMS];
  memcpy(stop, cot[0]->shape, (size_t)nd * sizeof *stop);
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < n->n_in && st == ZMLX_OK; i++) {
    if (!need[i]) continue;
    start[c->axis] = c->offset[i];
    stop[c->axis] = c->offset[i + 1];
    st = zmlx_slice(cot[0], start, stop, NULL, &grads[i]);
  }
  return st;
}

static zmlx_status concat_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out) {
  const concat_ctx *c = n->ctx;
  zmlx_array **full = calloc((size_t)n->n_in, sizeof *full);
  if (!full) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < n->n_in && st == ZMLX_OK; i++) {
    zmlx_ad_meta m = n->in_meta[i];
    m.dtype = n->out_meta[0].dtype;
    st = tan[i] ? zmlxi_ad_cast(tan[i], m.dtype, &full[i]) : zmlxi_ad_zeros(&m, &full[i]);
  }
  if (st == ZMLX_OK) st = zmlx_concat(full, n->n_in, c->axis, &out[0]);
  zmlxi_ad_release_all(full, n->n_in);
  free(full);
  return st;
}

static const zmlx_ad_rule CONCAT_RULE = {"concat", concat_vjp, concat_jvp, free};

static zmlx_status concat_check(zmlx_array *const *arrays, int n, int *axis, int64_t *shape) {
  ZMLX_REQUIRE_ARG(arrays);
  if (n < 1) return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "concat: needs at least one array");
  for (int i = 0; i < n; i++)
    if (!arrays[i]) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "concat: array %d is NULL", i);
  const zmlx_array *a0 = arrays[0];
  int nd = a0->ndim, ax = *axis < 0 ? *axis + nd : *axis;
  if (nd == 0 || ax < 0 || ax >= nd)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "concat: axis %d is outside an array of %d dims",
                     *axis, nd);
  memcpy(shape, a0->shape, (size_t)nd * sizeof *shape);
  shape[ax] = 0;
  for (int i = 0; i < n; i++) {
    const zmlx_array *a = arrays[i];
    char b1[200], b2[200];
    int ok = a->ndim == nd && a->dtype == a0->dtype && a->buffer->device == a0->buffer->device;
    for (int d = 0; d < nd && ok; d++) ok = d == ax || a->shape[d] == a0->shape[d];
    if (!ok)
      return zmlxi_fail(ZMLX_ERR_SHAPE, "concat: array %d (%s %s) does not match array 0 (%s %s) "
                       "outside axis %d, or lives on another device", i, zmlx_dtype_name(a->dtype),
                       zmlxi_shape_str(b1, sizeof b1, a->ndim, a->shape),
                       zmlx_dtype_name(a0->dtype), zmlxi_shape_str(b2, sizeof b2, nd, a0->shape), ax);
    shape[ax] += a->shape[ax];
  }
  *axis = ax;
  return ZMLX_OK;
}

/* Scatter each input into its window of the output; offsets[i] is where
 * input i starts along the axis. */
static zmlx_status concat_fill(zmlx_array *const *arrays, int n, int axis, zmlx_array *out,
                               int64_t *offsets) {
  int64_t start[ZMLX_MAX_DIMS] = {0}, stop[ZMLX_MAX_DIMS];
  memcpy(stop, out->shape, (size_t)out->ndim * sizeof *stop);
  offsets[0] = 0;
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < n && st == ZMLX_OK; i++) {
    offsets[i + 1] = offsets[i] + arrays[i]->shape[axis];
    start[axis] = offsets[i];
    stop[axis] = offsets[i + 1];
    zmlx_array *win = NULL;
    st = zmlx_array_slice(out, start, stop, NULL, &win);
    if (st == ZMLX_OK) st = zmlxi_ad_kernel_scatter(arrays[i], win, out);
    zmlx_array_release(win);
  }
  return st;
}

zmlx_status zmlx_concat(zmlx_array *const *arrays, int n, int axis, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  int64_t shape[ZMLX_MAX_DIMS];
  ZMLX_CHECK(concat_check(arrays, n, &axis, shape));
  concat_ctx *c = malloc(sizeof *c + (size_t)(n + 1) * sizeof(int64_t));
  if (!c) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  c->axis = axis;
  zmlx_status st = zmlxi_array_alloc(arrays[0]->buffer->device, NULL, arrays[0]->dtype,
                                    arrays[0]->ndim, shape, out);
  if (st == ZMLX_OK) st = concat_fill(arrays, n, axis, *out, c->offset);
  if (st == ZMLX_OK) st = zmlxi_ad_record(&CONCAT_RULE, c, arrays, n, out, 1, 0);
  else free(c);
  if (st != ZMLX_OK) zmlxi_ad_release_all(out, 1);
  return st;
}

/* ----------------------------------------------------------- broadcast_to */

static zmlx_status broadcast_vjp(const zmlx_ad_node *n, zmlx_array *const *cot,
                                 const uint8_t *need, zmlx_array **grads) {
  (void)need;
  return zmlxi_ad_reduce_to(cot[0], &n->in_meta[0], cot[0]->dtype, &grads[0]);
}

static zmlx_status broadcast_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out) {
  return zmlx_broadcast_to(tan[0], n->out_meta[0].ndim, n->out_meta[0].shape, &out[0]);
}

static const zmlx_ad_rule BROADCAST_RULE = {"broadcast_to", broadcast_vjp, broadcast_jvp, NULL};

/* Strides of `a` seen with `shape` (0 on broadcast axes). */
static zmlx_status broadcast_strides(const zmlx_array *a, int ndim, const int64_t *shape,
                                     int64_t *strides) {
  int lead = ndim - a->ndim;
  for (int d = 0; d < ndim; d++) {
    int k = d - lead;
    if (k >= 0 && a->shape[k] == shape[d]) {
      strides[d] = a->strides[k];
    } else if (k < 0 || a->shape[k] == 1) {
      strides[d] = 0;
    } else {
      char b1[200], b2[200];
      return zmlxi_fail(ZMLX_ERR_SHAPE, "broadcast_to: shape %s does not broadcast to %s",
                       zmlxi_shape_str(b1, sizeof b1, a->ndim, a->shape),
                       zmlxi_shape_str(b2, sizeof b2, ndim, shape));
    }
  }
  return ZMLX_OK;
}

zmlx_status zmlx_broadcast_to(zmlx_array *a, int ndim, const int64_t *shape, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(a);
  if (ndim < a->ndim || ndim > ZMLX_MAX_DIMS || (ndim && !shape))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "broadcast_to: %d target dims for an array of %d", ndim,
                     a->ndim);
  int64_t strides[ZMLX_MAX_DIMS], size;
  ZMLX_CHECK(zmlxi_check_shape(a->dtype, ndim, shape, &size));
  ZMLX_CHECK(broadcast_strides(a, ndim, shape, strides));
  zmlx_array *view = NULL;
  ZMLX_CHECK(zmlxi_array_make_view(a, ndim, shape, strides, a->offset, &view));
  zmlx_status st = zmlx_array_astype(view, a->dtype, out); /* always a new dense array */
  zmlx_array_release(view);
  if (st != ZMLX_OK) return st;
  return record1(&BROADCAST_RULE, NULL, a, out);
}

/* ---------------------------------------------------------------- astype */

static zmlx_status astype_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                              zmlx_array **grads) {
  (void)need;
  return zmlxi_ad_cast(cot[0], n->in_meta[0].dtype, &grads[0]);
}

static zmlx_status astype_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out) {
  return zmlxi_ad_cast(tan[0], n->out_meta[0].dtype, &out[0]);
}

static const zmlx_ad_rule ASTYPE_RULE = {"astype", astype_vjp, astype_jvp, NULL};

zmlx_status zmlx_astype(zmlx_array *a, zmlx_dtype dt, zmlx_array **out) {
  ZMLX_CHECK(zmlx_array_astype(a, dt, out));
  /* Casting to an integer type ends the gradient (the output gets no id). */
  return record1(&ASTYPE_RULE, NULL, a, out);
}

/* ------------------------------------------------------------- sum / mean */

typedef struct sum_ctx {
  unsigned mask;
  int keepdims;
} sum_ctx;

static zmlx_status axes_mask(const zmlx_array *a, const int *axes, int n, unsigned *mask) {
  *mask = 0;
  if (!axes) {
    *mask = (1u << a->ndim) - 1u;
    return ZMLX_OK;
  }
  if (n < 0 || n > a->ndim)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "sum: %d axes for an array of %d dims", n, a->ndim);
  for (int i = 0; i < n; i++) {
    int ax = axes[i] < 0 ? axes[i] + a->ndim : axes[i];
    if (ax < 0 || ax >= a->ndim || (*mask >> ax & 1u))
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "sum: axis %d is out of range or repeated for an "
                       "array of %d dims", axes[i], a->ndim);
    *mask |= 1u << ax;
  }
  return ZMLX_OK;
}

/* The input's shape with the summed axes set to 1. */
static void kept_shape(const zmlx_ad_meta *m, unsigned mask, int64_t *shape) {
  for (int d = 0; d < m->ndim; d++) shape[d] = mask >> d & 1u ? 1 : m->shape[d];
}

static zmlx_status sum_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                           zmlx_array **grads) {
  (void)need;
  const sum_ctx *c = n->ctx;
  const zmlx_ad_meta *m = &n->in_meta[0];
  int64_t shape[ZMLX_MAX_DIMS];
  kept_shape(m, c->mask, shape);
  zmlx_array *r = NULL;
  ZMLX_CHECK(zmlx_reshape(cot[0], m->ndim, shape, &r));
  zmlx_status st = zmlx_broadcast_to(r, m->ndim, m->shape, &grads[0]);
  zmlx_array_release(r);
  return st;
}

static zmlx_status sum_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out) {
  const sum_ctx *c = n->ctx;
  int axes[ZMLX_MAX_DIMS], na = 0;
  for (int d = 0; d < n->in_meta[0].ndim; d++)
    if (c->mask >> d & 1u) axes[na++] = d;
  return zmlx_sum(tan[0], axes, na, c->keepdims, &out[0]);
}

static const zmlx_ad_rule SUM_RULE = {"sum", sum_vjp, sum_jvp, free};

static zmlx_status sum_forward(zmlx_array *a, unsigned mask, int keepdims, zmlx_array **out) {
  zmlx_array *s = NULL;
  ZMLX_CHECK(zmlxi_ad_kernel_sum(a, mask, &s));
  if (!keepdims) {
    *out = s;
    return ZMLX_OK;
  }
  zmlx_ad_meta m;
  zmlxi_ad_meta_of(a, &m);
  int64_t shape[ZMLX_MAX_DIMS];
  kept_shape(&m, mask, shape);
  zmlx_status st = zmlx_array_reshape(s, a->ndim, shape, out);
  zmlx_array_release(s);
  return st;
}

zmlx_status zmlx_sum(zmlx_array *a, const int *axes, int n_axes, int keepdims, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(a);
  if (a->dtype == ZMLX_F64 || a->dtype == ZMLX_BOOL)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "sum: %s arrays are not supported",
                     zmlx_dtype_name(a->dtype));
  sum_ctx c = {.keepdims = keepdims != 0};
  ZMLX_CHECK(axes_mask(a, axes, n_axes, &c.mask));
  ZMLX_CHECK(sum_forward(a, c.mask, c.keepdims, out));
  return record1_ctx(&SUM_RULE, &c, sizeof c, a, out);
}

zmlx_status zmlx_mean(zmlx_array *a, const int *axes, int n_axes, int keepdims, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(a);
  unsigned mask;
  ZMLX_CHECK(axes_mask(a, axes, n_axes, &mask));
  int64_t count = 1;
  for (int d = 0; d < a->ndim; d++)
    if (mask >> d & 1u) count *= a->shape[d];
  zmlx_array *s = NULL;
  ZMLX_CHECK(zmlx_sum(a, axes, n_axes, keepdims, &s));
  /* An empty mean is 0/0 = NaN, as in NumPy. */
  zmlx_status st = zmlxi_ad_map1("x * s", s, "s", count ? 1.0 / (double)count : NAN, out);
  zmlx_array_release(s);
  return st;
}
