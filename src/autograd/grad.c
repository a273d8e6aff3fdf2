/* Public entry points: value_and_grad, grad, vjp, jvp, stop_gradient.
 *
 * Each call runs the user's function once inside a new level of this
 * thread's tape, on fresh views of the differentiated inputs (so the same
 * array can be differentiated in two threads at once, or twice in one
 * call), then sweeps the level backwards (grad, vjp) or forwards (jvp). */
#include "autograd/ad.h"

#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------------- identity */

/* Links a leaf view to the array it views when an enclosing level tracks
 * that array, so the enclosing level's gradient flows through. */
static zmlx_status identity_vjp(const zmlx_ad_node *n, zmlx_array *const *cot,
                                const uint8_t *need, zmlx_array **grads) {
  (void)n;
  (void)need;
  zmlx_array_retain(cot[0]);
  grads[0] = cot[0];
  return ZMLX_OK;
}

static zmlx_status identity_jvp(const zmlx_ad_node *n, zmlx_array *const *tan,
                                zmlx_array **out_tan) {
  (void)n;
  if (tan[0]) zmlx_array_retain(tan[0]);
  out_tan[0] = tan[0];
  return ZMLX_OK;
}

static const zmlx_ad_rule IDENTITY_RULE = {"identity", identity_vjp, identity_jvp, NULL};

/* A new handle on the same elements: no copy, no id. */
static zmlx_status fresh_view(zmlx_array *a, zmlx_array **out) {
  return zmlxi_array_make_view(a, a->ndim, a->shape, a->strides, a->offset, out);
}

zmlx_status zmlx_stop_gradient(zmlx_array *a, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(a);
  return fresh_view(a, out);
}

int zmlx_grad_is_recording(void) { return zmlxi_ad_recording(); }

/* ------------------------------------------------------------------ trace */

typedef struct trace {
  int n_inputs;
  zmlx_array **call_in;  /* what the function sees */
  int n_leaves;
  int *leaf_input;       /* input index of each leaf */
  zmlx_array **leaf;     /* the fresh views (owned) */
  uint32_t *leaf_val;
  zmlx_ad_meta *leaf_meta;
  int pushed;
  zmlx_array *out;       /* the function's result (owned) */
  uint32_t out_val;
} trace;

static void trace_end(trace *t) {
  if (t->pushed) zmlxi_ad_level_pop();
  t->pushed = 0;
  if (t->leaf) zmlxi_ad_release_all(t->leaf, t->n_leaves);
  free(t->call_in);
  free(t->leaf_input);
  free(t->leaf);
  free(t->leaf_val);
  free(t->leaf_meta);
}

static zmlx_status check_inputs(zmlx_ad_fn fn, zmlx_array *const *inputs, int n) {
  ZMLX_REQUIRE_ARG(fn);
  if (n < 0) return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "autograd: negative input count %d", n);
  if (n && !inputs) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "autograd: inputs is NULL");
  for (int i = 0; i < n; i++)
    if (!inputs[i]) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "autograd: input %d is NULL", i);
  return ZMLX_OK;
}

/* Leaves: argnums (NULL: every input). */
static zmlx_status pick_leaves(trace *t, const int *argnums, int n_argnums,
                               zmlx_array *const *inputs) {
  int n = t->n_inputs, nl = argnums ? n_argnums : n;
  if (nl < 0 || (argnums == NULL && n_argnums > 0 && n_argnums != n))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "autograd: bad argnums count %d", n_argnums);
  t->n_leaves = nl;
  size_t cap = (size_t)(nl > 0 ? nl : 1);
  t->leaf_input = calloc(cap, sizeof *t->leaf_input);
  t->leaf = calloc(cap, sizeof *t->leaf);
  t->leaf_val = calloc(cap, sizeof *t->leaf_val);
  t->leaf_meta = calloc(cap, sizeof *t->leaf_meta);
  if (!t->leaf_input || !t->leaf || !t->leaf_val || !t->leaf_meta)
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "autograd: out of host memory");
  for (int l = 0; l < nl; l++) {
    int i = argnums ? argnums[l] : l;
    if (i < 0 || i >= n)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "autograd: argnums[%d] = %d is not an input index "
                       "(0..%d)", l, i, n - 1);
    for (int m = 0; m < l; m++)
      if (t->leaf_input[m] == i)
        return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "autograd: argnums lists input %d twice", i);
    if (!zmlxi_ad_is_float(inputs[i]->dtype))
      return zmlxi_fail(ZMLX_ERR_DTYPE, "autograd: input %d is %s; only f32, f16 and bf16 arrays "
                       "are differentiable", i, zmlx_dtype_name(inputs[i]->dtype));
    t->leaf_input[l] = i;
  }
  return ZMLX_OK;
}

/* Fresh views for the leaves, linked to an enclosing level where one tracks
 * the original; then the new level, and ids for the views not linked. */
static zmlx_status trace_begin(trace *t, zmlx_array *const *inputs, int n, const int *argnums,
                               int n_argnums) {
  memset(t, 0, sizeof *t);
  t->n_inputs = n;
  t->call_in = calloc((size_t)(n > 0 ? n : 1), sizeof *t->call_in);
  if (!t->call_in) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "autograd: out of host memory");
  ZMLX_CHECK(pick_leaves(t, argnums, n_argnums, inputs));
  for (int i = 0; i < n; i++) t->call_in[i] = inputs[i];
  for (int l = 0; l < t->n_leaves; l++) {
    zmlx_array *src = inputs[t->leaf_input[l]];
    ZMLX_CHECK(fresh_view(src, &t->leaf[l]));
    ZMLX_CHECK(zmlxi_ad_record(&IDENTITY_RULE, NULL, &src, 1, &t->leaf[l], 1, 0));
    t->call_in[t->leaf_input[l]] = t->leaf[l];
    zmlxi_ad_meta_of(src, &t->leaf_meta[l]);
  }
  ZMLX_CHECK(zmlxi_ad_level_push());
  t->pushed = 1;
  for (int l = 0; l < t->n_leaves; l++) {
    if (!zmlxi_ad_value_of(t->leaf[l])) ZMLX_CHECK(zmlxi_ad_make_leaf(t->leaf[l]));
    t->leaf_val[l] = zmlxi_ad_value_of(t->leaf[l]);
  }
  return ZMLX_OK;
}

static zmlx_status trace_run(trace *t, zmlx_ad_fn fn, void *user_data) {
  zmlx_array *out = NULL;
  zmlx_status st = fn(user_data, t->call_in, t->n_inputs, &out);
  if (st != ZMLX_OK) {
    zmlx_array_release(out);
    return st;
  }
  if (!out)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "autograd: the function returned ZMLX_OK but no array");
  t->out = out;
  t->out_val = zmlxi_ad_value_of(out);
  return ZMLX_OK;
}

/* ---------------------------------------------------------- reverse mode */

/* Run a sweep with recording on only when an enclosing level will read
 * what it records (grad of grad); the outermost sweep records nothing. */
static int sweep_begin(void) {
  int pause = !zmlxi_ad_enclosing_records();
  if (pause) zmlxi_ad_pause();
  return pause;
}

static void sweep_end(int paused) {
  if (paused) zmlxi_ad_resume();
}

/* The cotangent that starts the sweep: ones for a scalar, else the
 * caller's (same shape as the output), in the output's dtype. */
static zmlx_status make_seed(const trace *t, zmlx_array *cotangent, zmlx_array **seed) {
  zmlx_array *y = t->out;
  char b1[200], b2[200];
  if (!cotangent) {
    if (y->size != 1)
      return zmlxi_fail(ZMLX_ERR_SHAPE, "grad: the function must return a scalar (one element); "
                       "it returned shape %s (use zmlx_vjp with a cotangent)",
                       zmlxi_shape_str(b1, sizeof b1, y->ndim, y->shape));
    if (!zmlxi_ad_is_float(y->dtype))
      return zmlxi_fail(ZMLX_ERR_DTYPE, "grad: the function returned %s, not f32, f16 or bf16",
                       zmlx_dtype_name(y->dtype));
    return zmlx_array_full(y->buffer->device, y->dtype, y->ndim, y->shape, 1.0, seed);
  }
  if (!zmlxi_ad_same_shape(cotangent, y->ndim, y->shape))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "vjp: the cotangent has shape %s, the output %s",
                     zmlxi_shape_str(b1, sizeof b1, cotangent->ndim, cotangent->shape),
                     zmlxi_shape_str(b2, sizeof b2, y->ndim, y->shape));
  if (!zmlxi_ad_is_float(y->dtype) || !zmlxi_ad_is_float(cotangent->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "vjp: output %s and cotangent %s must be f32, f16 or bf16",
                     zmlx_dtype_name(y->dtype), zmlx_dtype_name(cotangent->dtype));
  return zmlxi_ad_cast(cotangent, y->dtype, seed);
}

static zmlx_status check_grads_arg(int n_leaves, zmlx_array **grads) {
  if (n_leaves > 0 && !grads) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "autograd: grads is NULL");
  for (int l = 0; l < n_leaves; l++) grads[l] = NULL;
  return ZMLX_OK;
}

/* value_and_grad, grad and vjp: cotangent NULL means "scalar output". */
static zmlx_status run_reverse(zmlx_ad_fn fn, void *user_data, zmlx_array *const *inputs, int n,
                               const int *argnums, int n_argnums, zmlx_array *cotangent,
                               zmlx_array **out, zmlx_array **grads) {
  if (out) *out = NULL;
  ZMLX_CHECK(check_inputs(fn, inputs, n));
  if (argnums && n_argnums < 0)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "autograd: negative argnums count %d", n_argnums);
  ZMLX_CHECK(check_grads_arg(argnums ? n_argnums : n, grads));
  trace t;
  zmlx_array *seed = NULL;
  zmlx_status st = trace_begin(&t, inputs, n, argnums, n_argnums);
  if (st == ZMLX_OK) st = trace_run(&t, fn, user_data);
  if (st == ZMLX_OK) st = make_seed(&t, cotangent, &seed);
  if (st == ZMLX_OK) {
    int paused = sweep_begin();
    st = zmlxi_ad_backward(t.out_val, seed, t.leaf_val, t.leaf_meta, t.n_leaves, grads);
    sweep_end(paused);
  }
  zmlx_array_release(seed);
  trace_end(&t);
  if (st == ZMLX_OK && out) *out = t.out;
  else zmlx_array_release(t.out);
  return st;
}

zmlx_status zmlx_value_and_grad(zmlx_ad_fn fn, void *user_data, zmlx_array *const *inputs,
                                int n_inputs, const int *argnums, int n_argnums,
                                zmlx_array **value, zmlx_array **grads) {
  return run_reverse(fn, user_data, inputs, n_inputs, argnums, n_argnums, NULL, value, grads);
}

zmlx_status zmlx_grad(zmlx_ad_fn fn, void *user_data, zmlx_array *const *inputs, int n_inputs,
                      const int *argnums, int n_argnums, zmlx_array **grads) {
  return run_reverse(fn, user_data, inputs, n_inputs, argnums, n_argnums, NULL, NULL, grads);
}

zmlx_status zmlx_vjp(zmlx_ad_fn fn, void *user_data, zmlx_array *const *inputs, int n_inputs,
                     const int *argnums, int n_argnums, zmlx_array *cotangent, zmlx_array **out,
                     zmlx_array **grads) {
  ZMLX_REQUIRE_ARG(cotangent);
  return run_reverse(fn, user_data, inputs, n_inputs, argnums, n_argnums, cotangent, out, grads);
}

/* ---------------------------------------------------------- forward mode */

static zmlx_status check_tangents(zmlx_array *const *primals, zmlx_array *const *tangents, int n) {
  for (int i = 0; tangents && i < n; i++) {
    zmlx_array *tg = tangents[i];
    if (!tg) continue;
    char b1[200], b2[200];
    if (!zmlxi_ad_same_shape(tg, primals[i]->ndim, primals[i]->shape))
      return zmlxi_fail(ZMLX_ERR_SHAPE, "jvp: tangent %d has shape %s, its primal %s", i,
                       zmlxi_shape_str(b1, sizeof b1, tg->ndim, tg->shape),
                       zmlxi_shape_str(b2, sizeof b2, primals[i]->ndim, primals[i]->shape));
    if (!zmlxi_ad_is_float(tg->dtype))
      return zmlxi_fail(ZMLX_ERR_DTYPE, "jvp: tangent %d is %s", i, zmlx_dtype_name(tg->dtype));
  }
  return ZMLX_OK;
}

/* Primals with a tangent are the leaves; the others are constants. */
static zmlx_status jvp_leaves(zmlx_array *const *primals, zmlx_array *const *tangents, int n,
                              int **argnums, int *n_leaves, zmlx_array ***leaf_tan) {
  *argnums = calloc((size_t)(n > 0 ? n : 1), sizeof **argnums);
  *leaf_tan = calloc((size_t)(n > 0 ? n : 1), sizeof **leaf_tan);
  if (!*argnums || !*leaf_tan) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "jvp: out of host memory");
  *n_leaves = 0;
  for (int i = 0; i < n; i++) {
    if (!tangents || !tangents[i]) continue;
    (*argnums)[*n_leaves] = i;
    ZMLX_CHECK(zmlxi_ad_cast(tangents[i], primals[i]->dtype, &(*leaf_tan)[*n_leaves]));
    (*n_leaves)++;
  }
  return ZMLX_OK;
}

zmlx_status zmlx_jvp(zmlx_ad_fn fn, void *user_data, zmlx_array *const *primals,
                     zmlx_array *const *tangents, int n, zmlx_array **out,
                     zmlx_array **out_tangent) {
  ZMLX_REQUIRE_ARG(out);
  ZMLX_REQUIRE_ARG(out_tangent);
  *out = *out_tangent = NULL;
  ZMLX_CHECK(check_inputs(fn, primals, n));
  ZMLX_CHECK(check_tangents(primals, tangents, n));
  int *argnums = NULL, n_leaves = 0;
  zmlx_array **leaf_tan = NULL;
  trace t = {0};
  zmlx_status st = jvp_leaves(primals, tangents, n, &argnums, &n_leaves, &leaf_tan);
  if (st == ZMLX_OK) st = trace_begin(&t, primals, n, argnums, n_leaves);
  if (st == ZMLX_OK) st = trace_run(&t, fn, user_data);
  if (st == ZMLX_OK) {
    zmlx_ad_meta m;
    zmlxi_ad_meta_of(t.out, &m);
    int paused = sweep_begin();
    st = zmlxi_ad_forward(t.leaf_val, leaf_tan, n_leaves, t.out_val, &m, out_tangent);
    sweep_end(paused);
  }
  trace_end(&t);
  if (leaf_tan) zmlxi_ad_release_all(leaf_tan, n_leaves);
  free(leaf_tan);
  free(argnums);
  if (st == ZMLX_OK) *out = t.out;
  else zmlx_array_release(t.out);
  return st;
}
