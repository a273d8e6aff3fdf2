/* The reverse and forward sweeps over a level of the tape, and the
 * accumulation rules they share (ad.h). */
#include "autograd/ad.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

void zmlxi_ad_release_all(zmlx_array **a, int n) {
  for (int i = 0; i < n; i++) {
    zmlx_array_release(a[i]);
    a[i] = NULL;
  }
}

int zmlxi_ad_same_shape(const zmlx_array *a, int ndim, const int64_t *shape) {
  if (a->ndim != ndim) return 0;
  for (int d = 0; d < ndim; d++)
    if (a->shape[d] != shape[d]) return 0;
  return 1;
}

zmlx_status zmlxi_ad_zeros(const zmlx_ad_meta *m, zmlx_array **out) {
  return zmlx_array_zeros(m->device, m->dtype, m->ndim, m->shape, out);
}

zmlx_status zmlxi_ad_cast(zmlx_array *a, zmlx_dtype dt, zmlx_array **out) {
  if (a->dtype == dt) {
    zmlx_array_retain(a);
    *out = a;
    return ZMLX_OK;
  }
  return zmlx_astype(a, dt, out);
}

/* Axes of `g` to sum so that it takes m's shape: g's extra leading axes
 * and the axes where m has size 1. A g with fewer axes is read as having
 * leading 1s (a [4] gradient for a [1, 4] input only needs a reshape). */
static zmlx_status broadcast_axes(const zmlx_array *g, const zmlx_ad_meta *m, int *axes, int *n) {
  int nd = g->ndim > m->ndim ? g->ndim : m->ndim, ok = 1;
  *n = 0;
  for (int d = 0; d < nd && ok; d++) {
    int kg = d - (nd - g->ndim), km = d - (nd - m->ndim);
    int64_t sg = kg >= 0 ? g->shape[kg] : 1, sm = km >= 0 ? m->shape[km] : 1;
    if (sg == sm) continue;
    ok = sm == 1 && kg >= 0;
    if (ok) axes[(*n)++] = kg;
  }
  if (ok) return ZMLX_OK;
  char b1[200], b2[200];
  return zmlxi_fail(ZMLX_ERR_SHAPE, "gradient of shape %s does not reduce to the input's shape %s",
                   zmlxi_shape_str(b1, sizeof b1, g->ndim, g->shape),
                   zmlxi_shape_str(b2, sizeof b2, m->ndim, m->shape));
}

zmlx_status zmlxi_ad_reduce_to(zmlx_array *g, const zmlx_ad_meta *m, zmlx_dtype dt,
                              zmlx_array **out) {
  *out = NULL;
  if (zmlxi_ad_same_shape(g, m->ndim, m->shape)) return zmlxi_ad_cast(g, dt, out);
  int axes[ZMLX_MAX_DIMS], n;
  ZMLX_CHECK(broadcast_axes(g, m, axes, &n));
  zmlx_array *s = NULL, *r = NULL;
  zmlx_status st = n ? zmlx_sum(g, axes, n, 1, &s) : zmlxi_ad_cast(g, g->dtype, &s);
  if (st == ZMLX_OK) st = zmlx_reshape(s, m->ndim, m->shape, &r);
  if (st == ZMLX_OK) st = zmlxi_ad_cast(r, dt, out);
  zmlx_array_release(s);
  zmlx_array_release(r);
  return st;
}

/* Gradients of 16-bit arrays are summed in f32 and rounded once, when the
 * total is handed on (finish_cotangent). */
static zmlx_dtype accumulation_dtype(zmlx_dtype dt) {
  return dt == ZMLX_F16 || dt == ZMLX_BF16 ? ZMLX_F32 : dt;
}

/* *slot += g (g is consumed). */
static zmlx_status accumulate(zmlx_array **slot, zmlx_array *g, const zmlx_ad_meta *m) {
  zmlx_array *r = NULL, *sum = NULL;
  zmlx_status st = zmlxi_ad_reduce_to(g, m, accumulation_dtype(m->dtype), &r);
  zmlx_array_release(g);
  if (st != ZMLX_OK) return st;
  if (!*slot) {
    *slot = r;
    return ZMLX_OK;
  }
  st = zmlx_add(*slot, r, &sum);
  zmlx_array_release(r);
  if (st != ZMLX_OK) return st;
  zmlx_array_release(*slot);
  *slot = sum;
  return ZMLX_OK;
}

/* The final value of an accumulated gradient: the array's own dtype, or
 * zeros when nothing reached it. Consumes *slot. */
static zmlx_status finish_cotangent(zmlx_array **slot, const zmlx_ad_meta *m, zmlx_array **out) {
  zmlx_status st = *slot ? zmlxi_ad_cast(*slot, m->dtype, out) : zmlxi_ad_zeros(m, out);
  zmlx_array_release(*slot);
  *slot = NULL;
  return st;
}

/* ---------------------------------------------------------- reverse sweep */

/* Which values of the level depend on its leaves: only their producers
 * need a VJP, and only inputs among them need a gradient. */
static uint8_t *mark_dependents(const uint32_t *leaves, int n_leaves, int32_t start, int32_t end,
                                uint32_t n_values) {
  uint8_t *dep = calloc((size_t)n_values + 1, 1);
  if (!dep) return NULL;
  for (int l = 0; l < n_leaves; l++) dep[leaves[l]] = 1;
  for (int32_t i = start; i < end; i++) {
    const zmlx_ad_node *n = zmlxi_ad_node_at(i);
    int any = 0;
    for (int k = 0; k < n->n_in && !any; k++) any = dep[n->in_val[k]];
    for (int j = 0; j < n->n_out && any; j++) dep[n->out_val[j]] = 1;
  }
  dep[0] = 0; /* constants never depend on anything */
  return dep;
}

typedef struct sweep {
  zmlx_array **val;  /* per value: accumulated cotangent / tangent */
  uint8_t *dep;
  zmlx_array **a, **b; /* scratch per node: arrays passed in / returned */
  uint8_t *need;
  int cap;
} sweep;

static void sweep_free(sweep *s, uint32_t n_values) {
  if (s->val) zmlxi_ad_release_all(s->val, (int)n_values + 1);
  free(s->val);
  free(s->dep);
  free(s->a);
  free(s->b);
  free(s->need);
}

/* Scratch big enough for the widest node of the range. */
static zmlx_status sweep_alloc(sweep *s, int32_t start, int32_t end, uint32_t n_values) {
  int cap = 1;
  for (int32_t i = start; i < end; i++) {
    const zmlx_ad_node *n = zmlxi_ad_node_at(i);
    if (n->n_in > cap) cap = n->n_in;
    if (n->n_out > cap) cap = n->n_out;
  }
  s->cap = cap;
  s->val = calloc((size_t)n_values + 1, sizeof *s->val);
  s->a = calloc((size_t)cap, sizeof *s->a);
  s->b = calloc((size_t)cap, sizeof *s->b);
  s->need = calloc((size_t)cap, 1);
  if (!s->val || !s->a || !s->b || !s->need)
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "autograd: out of host memory (sweep)");
  return ZMLX_OK;
}

/* The VJP of one node: cotangents of its outputs in, gradients of its
 * dependent inputs accumulated. */
static zmlx_status backward_node(sweep *s, const zmlx_ad_node *n) {
  int any_cot = 0, any_need = 0;
  for (int j = 0; j < n->n_out; j++) any_cot |= n->out_val[j] && s->val[n->out_val[j]];
  for (int k = 0; k < n->n_in; k++) any_need |= s->need[k] = s->dep[n->in_val[k]];
  zmlx_status st = ZMLX_OK;
  for (int j = 0; j < n->n_out && any_cot && any_need && st == ZMLX_OK; j++) {
    if (n->out_val[j]) st = finish_cotangent(&s->val[n->out_val[j]], &n->out_meta[j], &s->a[j]);
    else st = zmlxi_ad_zeros(&n->out_meta[j], &s->a[j]);
  }
  if (any_cot && any_need && st == ZMLX_OK) {
    st = n->rule->vjp(n, s->a, s->need, s->b);
    if (st != ZMLX_OK) zmlxi_fail_context(st, "in the VJP of '%s'", n->rule->name);
  }
  for (int k = 0; k < n->n_in; k++) {
    zmlx_array *g = s->b[k];
    s->b[k] = NULL;
    if (!g) continue;
    if (st != ZMLX_OK || !s->need[k]) {
      zmlx_array_release(g);
      continue;
    }
    st = accumulate(&s->val[n->in_val[k]], g, &n->in_meta[k]);
    if (st != ZMLX_OK) zmlxi_fail_context(st, "gradient of input %d of '%s'", k, n->rule->name);
  }
  zmlxi_ad_release_all(s->a, n->n_out);
  /* Every consumer of an output was recorded after its producer, so its
   * cotangent is complete by now and no longer needed. */
  for (int j = 0; j < n->n_out; j++)
    if (n->out_val[j]) zmlxi_ad_release_all(&s->val[n->out_val[j]], 1);
  return st;
}

zmlx_status zmlxi_ad_backward(uint32_t root, zmlx_array *seed, const uint32_t *leaves,
                             const zmlx_ad_meta *leaf_meta, int n_leaves, zmlx_array **grads) {
  int32_t start = zmlxi_ad_level_start(), end = zmlxi_ad_node_count();
  uint32_t n_values = zmlxi_ad_value_count();
  sweep s = {0};
  zmlx_status st = sweep_alloc(&s, start, end, n_values);
  if (st == ZMLX_OK && !(s.dep = mark_dependents(leaves, n_leaves, start, end, n_values)))
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "autograd: out of host memory (sweep)");
  if (st == ZMLX_OK && root && s.dep[root]) {
    zmlx_array_retain(seed);
    s.val[root] = seed;
  }
  /* Nodes the VJPs record (for an enclosing level) land past `end`. */
  for (int32_t i = end - 1; i >= start && st == ZMLX_OK; i--)
    st = backward_node(&s, zmlxi_ad_node_at(i));
  for (int l = 0; l < n_leaves; l++) grads[l] = NULL;
  for (int l = 0; l < n_leaves && st == ZMLX_OK; l++) {
    /* The same value may be a leaf twice only if it is one array; give
     * each slot its own reference. */
    zmlx_array *acc = s.val[leaves[l]];
    if (acc) zmlx_array_retain(acc);
    st = finish_cotangent(&acc, &leaf_meta[l], &grads[l]);
  }
  if (st != ZMLX_OK) zmlxi_ad_release_all(grads, n_leaves);
  sweep_free(&s, n_values);
  return st;
}

/* ---------------------------------------------------------- forward sweep */

static zmlx_status forward_node(sweep *s, const zmlx_ad_node *n) {
  int any = 0;
  for (int k = 0; k < n->n_in; k++) {
    s->a[k] = n->in_val[k] ? s->val[n->in_val[k]] : NULL;
    any |= s->a[k] != NULL;
  }
  if (!any) return ZMLX_OK;
  if (!n->rule->jvp)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "forward mode: '%s' has no JVP rule", n->rule->name);
  zmlx_status st = n->rule->jvp(n, s->a, s->b);
  if (st != ZMLX_OK) zmlxi_fail_context(st, "in the JVP of '%s'", n->rule->name);
  for (int j = 0; j < n->n_out; j++) {
    zmlx_array *t = s->b[j];
    s->b[j] = NULL;
    if (!t) continue;
    if (st != ZMLX_OK || !n->out_val[j]) {
      zmlx_array_release(t);
      continue;
    }
    st = zmlxi_ad_reduce_to(t, &n->out_meta[j], n->out_meta[j].dtype, &s->val[n->out_val[j]]);
    zmlx_array_release(t);
    if (st != ZMLX_OK) zmlxi_fail_context(st, "tangent of output %d of '%s'", j, n->rule->name);
  }
  return st;
}

/* For each value: the last node of the range that reads it, so tangents
 * are released as soon as nothing needs them. */
static int32_t *last_uses(int32_t start, int32_t end, uint32_t n_values) {
  int32_t *last = calloc((size_t)n_values + 1, sizeof *last);
  if (!last) return NULL;
  for (int32_t i = start; i < end; i++) {
    const zmlx_ad_node *n = zmlxi_ad_node_at(i);
    for (int k = 0; k < n->n_in; k++) last[n->in_val[k]] = i;
  }
  return last;
}

static void release_dead(sweep *s, const zmlx_ad_node *n, const int32_t *last, int32_t i,
                         uint32_t keep) {
  for (int k = 0; k < n->n_in; k++) {
    uint32_t v = n->in_val[k];
    if (v && v != keep && last[v] == i) zmlxi_ad_release_all(&s->val[v], 1);
  }
}

zmlx_status zmlxi_ad_forward(const uint32_t *leaves, zmlx_array *const *tangents, int n_leaves,
                            uint32_t root, const zmlx_ad_meta *root_meta, zmlx_array **out_tan) {
  int32_t start = zmlxi_ad_level_start(), end = zmlxi_ad_node_count();
  uint32_t n_values = zmlxi_ad_value_count();
  sweep s = {0};
  int32_t *last = NULL;
  *out_tan = NULL;
  zmlx_status st = sweep_alloc(&s, start, end, n_values);
  if (st == ZMLX_OK && !(last = last_uses(start, end, n_values)))
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "autograd: out of host memory (sweep)");
  for (int l = 0; l < n_leaves && st == ZMLX_OK; l++)
    if (tangents[l] && leaves[l]) {
      zmlx_array_retain(tangents[l]);
      s.val[leaves[l]] = tangents[l];
    }
  for (int32_t i = start; i < end && st == ZMLX_OK; i++) {
    const zmlx_ad_node *n = zmlxi_ad_node_at(i);
    st = forward_node(&s, n);
    release_dead(&s, n, last, i, root);
  }
  if (st == ZMLX_OK) {
    zmlx_array *t = root ? s.val[root] : NULL;
    if (t) zmlx_array_retain(t);
    st = finish_cotangent(&t, root_meta, out_tan);
  }
  free(last);
  sweep_free(&s, n_values);
  return st;
}
