/*
 * The op object every expression builder returns (zmlx_elementwise in
 * gen/elementwise.c, zmlx_reduce / zmlx_map_reduce in gen/map_reduce.c):
 * the public zmlx_op_* entry points check their arguments here and
 * dispatch through the builder's vtable; kernels are compiled once per
 * key and kept on the op.
 */
#include "gen/patterns.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

zmlx_status zmlxi_op_init(zmlx_op *op, const zmlx_op_vtable *vt, int n_inputs, int n_params) {
  op->vt = vt;
  op->n_inputs = n_inputs;
  op->n_params = n_params;
  op->kernels = NULL;
  op->n_kernels = op->cap_kernels = 0;
  if (pthread_mutex_init(&op->lock, NULL) != 0)
    return zmlxi_fail(ZMLX_ERR_INTERNAL, "op: cannot create a mutex");
  return ZMLX_OK;
}

void zmlxi_op_fini(zmlx_op *op) {
  for (int i = 0; i < op->n_kernels; i++) zmlx_kernel_destroy(op->kernels[i].kernel);
  free(op->kernels);
  pthread_mutex_destroy(&op->lock);
}

static zmlx_status add_kernel(zmlx_op *op, const char *key, zmlx_kernel *k) {
  if (op->n_kernels == op->cap_kernels) {
    int cap = op->cap_kernels ? 2 * op->cap_kernels : 4;
    zmlx_op_kernel_entry *t = realloc(op->kernels, (size_t)cap * sizeof *t);
    if (!t) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    op->kernels = t;
    op->cap_kernels = cap;
  }
  zmlx_op_kernel_entry *e = &op->kernels[op->n_kernels++];
  snprintf(e->key, sizeof e->key, "%s", key);
  e->kernel = k;
  return ZMLX_OK;
}

static zmlx_status make_kernel(zmlx_op_build_fn build, const void *ctx, zmlx_kernel **out) {
  zmlx_pattern_kernel pk;
  ZMLX_CHECK(build(ctx, &pk));
  zmlx_status st = zmlxi_pattern_kernel_create(&pk, out);
  zmlxi_pattern_kernel_free(&pk);
  return st;
}

zmlx_status zmlxi_op_kernel(zmlx_op *op, const char *key, zmlx_op_build_fn build,
                           const void *ctx, zmlx_kernel **out) {
  pthread_mutex_lock(&op->lock);
  for (int i = 0; i < op->n_kernels; i++)
    if (!strcmp(op->kernels[i].key, key)) {
      *out = op->kernels[i].kernel;
      pthread_mutex_unlock(&op->lock);
      return ZMLX_OK;
    }
  zmlx_kernel *k = NULL;
  zmlx_status st = make_kernel(build, ctx, &k);
  if (st == ZMLX_OK) st = add_kernel(op, key, k);
  if (st != ZMLX_OK) zmlx_kernel_destroy(k);
  else *out = k;
  pthread_mutex_unlock(&op->lock);
  return st;
}

int zmlxi_expr_dtype_ok(zmlx_dtype dt) { return dt != ZMLX_F64 && zmlx_dtype_size(dt) != 0; }

/* ------------------------------------------------------------ public API */

static zmlx_status check_call(const char *call, zmlx_op *op, zmlx_array *const *inputs,
                              int n_inputs, const double *params) {
  ZMLX_REQUIRE_ARG_OF(call, op);
  if (n_inputs != op->n_inputs)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s op takes %d input%s; the call gives %d",
                     op->vt->kind, op->n_inputs, op->n_inputs == 1 ? "" : "s", n_inputs);
  if (n_inputs && !inputs)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s op: inputs is NULL", op->vt->kind);
  for (int i = 0; i < n_inputs; i++)
    if (!inputs[i]) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s op: input %d is NULL", op->vt->kind, i);
  if (op->n_params && !params)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s op takes %d parameter%s; params is NULL",
                     op->vt->kind, op->n_params, op->n_params == 1 ? "" : "s");
  return ZMLX_OK;
}

/* Results are allocated on the first input's device, stream-ordered on
 * `s`: a stream of another device is refused before anything is made. */
static zmlx_status check_stream(const zmlx_op *op, zmlx_array *const *inputs, const zmlx_stream *s) {
  if (!s || !op->n_inputs || s->device == inputs[0]->buffer->device) return ZMLX_OK;
  return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s op: the stream belongs to %s device %d, the inputs "
                   "to %s device %d", op->vt->kind, zmlx_backend_name(s->device->ops->kind),
                   s->device->index, zmlx_backend_name(inputs[0]->buffer->device->ops->kind),
                   inputs[0]->buffer->device->index);
}

zmlx_status zmlx_op_destroy(zmlx_op *op) {
  if (op) op->vt->destroy(op);
  return ZMLX_OK;
}

zmlx_status zmlx_op_call(zmlx_op *op, zmlx_array *const *inputs, int n_inputs,
                         const double *params, zmlx_stream *stream, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(check_call("zmlx_op_call", op, inputs, n_inputs, params));
  ZMLX_CHECK(check_stream(op, inputs, stream));
  return op->vt->call(op, inputs, params, stream, out);
}

zmlx_status zmlx_op_vjp(zmlx_op *op, zmlx_array *const *inputs, int n_inputs,
                        const double *params, zmlx_array *cotangent, zmlx_stream *stream,
                        zmlx_array **grads) {
  ZMLX_REQUIRE_ARG(grads);
  ZMLX_CHECK(check_call("zmlx_op_vjp", op, inputs, n_inputs, params));
  for (int i = 0; i < n_inputs; i++) grads[i] = NULL;
  ZMLX_REQUIRE_ARG(cotangent);
  ZMLX_CHECK(check_stream(op, inputs, stream));
  if (!op->vt->vjp)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "%s ops have no VJP (only elementwise ops do)",
                     op->vt->kind);
  return op->vt->vjp(op, inputs, params, cotangent, stream, grads);
}

zmlx_status zmlx_op_jvp(zmlx_op *op, zmlx_array *const *inputs, int n_inputs,
                        const double *params, zmlx_array *const *tangents, zmlx_stream *stream,
                        zmlx_array **out_tangent) {
  ZMLX_REQUIRE_ARG(out_tangent);
  *out_tangent = NULL;
  ZMLX_CHECK(check_call("zmlx_op_jvp", op, inputs, n_inputs, params));
  ZMLX_REQUIRE_ARG(tangents);
  ZMLX_CHECK(check_stream(op, inputs, stream));
  if (!op->vt->jvp)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "%s ops have no JVP (only elementwise ops do)",
                     op->vt->kind);
  return op->vt->jvp(op, inputs, params, tangents, stream, out_tangent);
}

zmlx_status zmlx_op_source(zmlx_op *op, zmlx_backend backend, zmlx_op_direction dir,
                           const zmlx_dtype *input_dtypes, char **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(op);
  if (op->n_inputs) ZMLX_REQUIRE_ARG(input_dtypes);
  if (dir != ZMLX_OP_FORWARD && dir != ZMLX_OP_VJP && dir != ZMLX_OP_JVP)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_op_source: unknown direction %d", (int)dir);
  if (!zmlxi_dialect_for(backend))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_op_source: backend must be cuda, opencl or "
                     "metal, not %s", zmlx_backend_name(backend));
  for (int i = 0; i < op->n_inputs; i++)
    if (!zmlxi_expr_dtype_ok(input_dtypes[i]))
      return zmlxi_fail(ZMLX_ERR_DTYPE, "%s op: input %d has dtype %s (expression kernels compute "
                       "in f32 and take every dtype but f64)", op->vt->kind, i,
                       zmlx_dtype_name(input_dtypes[i]));
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  zmlx_status st = op->vt->source(op, backend, dir, input_dtypes, &sb);
  if (st != ZMLX_OK) {
    zmlxi_sb_free(&sb);
    return st;
  }
  return zmlxi_sb_finish(&sb, out);
}

