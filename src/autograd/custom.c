/* Custom functions (MLX's mx.custom_function): a forward callback plus
 * user VJP / JVP callbacks, recorded as one node. The callbacks may launch
 * any kernels; autograd never looks inside the forward. */
#include "autograd/ad.h"

#include <stdlib.h>

struct zmlx_custom_function {
  atomic_int refcount; /* the user's handle + one per recorded node */
  zmlx_custom_forward_fn forward;
  zmlx_custom_vjp_fn vjp;
  zmlx_custom_jvp_fn jvp;
  void *user_data;
};

static void fn_release(zmlx_custom_function *f) {
  if (f && atomic_fetch_sub(&f->refcount, 1) == 1) free(f);
}

zmlx_status zmlx_custom_function_create(zmlx_custom_forward_fn forward, zmlx_custom_vjp_fn vjp,
                                        zmlx_custom_jvp_fn jvp, void *user_data,
                                        zmlx_custom_function **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(forward);
  ZMLX_REQUIRE_ARG(vjp);
  zmlx_custom_function *f = calloc(1, sizeof *f);
  if (!f) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "custom function: out of host memory");
  atomic_init(&f->refcount, 1);
  f->forward = forward;
  f->vjp = vjp;
  f->jvp = jvp;
  f->user_data = user_data;
  *out = f;
  return ZMLX_OK;
}

/* Nodes recorded by a grad call still running keep the function alive. */
zmlx_status zmlx_custom_function_destroy(zmlx_custom_function *fn) {
  fn_release(fn);
  return ZMLX_OK;
}

/* ------------------------------------------------------------------ rules */

static void ctx_free(void *ctx) { fn_release(ctx); }

/* Every cotangent is an array (zeros when unused) and the user gets the
 * primals and outputs the forward saw. */
static zmlx_status custom_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                              zmlx_array **grads) {
  (void)need;
  const zmlx_custom_function *f = n->ctx;
  zmlx_status st = f->vjp(f->user_data, n->in, n->n_in, n->out, cot, n->n_out, grads);
  if (st != ZMLX_OK) zmlxi_ad_release_all(grads, n->n_in);
  return st;
}

static zmlx_status custom_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out_tan) {
  const zmlx_custom_function *f = n->ctx;
  if (!f->jvp)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "this custom function was created without a JVP "
                     "callback, so forward mode cannot go through it");
  /* Zeros for the inputs without a tangent, so the callback never sees NULL. */
  zmlx_array **full = calloc((size_t)n->n_in, sizeof *full);
  if (!full) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "custom function: out of host memory");
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < n->n_in && st == ZMLX_OK; i++) {
    if (tan[i]) {
      zmlx_array_retain(tan[i]);
      full[i] = tan[i];
    } else {
      st = zmlxi_ad_zeros(&n->in_meta[i], &full[i]);
    }
  }
  if (st == ZMLX_OK) st = f->jvp(f->user_data, n->in, n->n_in, full, n->n_out, out_tan);
  if (st != ZMLX_OK) zmlxi_ad_release_all(out_tan, n->n_out);
  zmlxi_ad_release_all(full, n->n_in);
  free(full);
  return st;
}

static const zmlx_ad_rule CUSTOM_RULE = {"custom function", custom_vjp, custom_jvp, ctx_free};

/* ------------------------------------------------------------------- call */

static zmlx_status check_call(zmlx_custom_function *fn, zmlx_array *const *inputs, int n,
                              zmlx_array **outputs, int n_out) {
  ZMLX_REQUIRE_ARG_OF("zmlx_custom_function_call", fn);
  ZMLX_REQUIRE_ARG_OF("zmlx_custom_function_call", outputs);
  if (n < 0 || n_out < 1)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "custom function: %d inputs and %d outputs (need >= 0 "
                     "and >= 1)", n, n_out);
  if (n && !inputs) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "custom function: inputs is NULL");
  for (int i = 0; i < n; i++)
    if (!inputs[i]) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "custom function: input %d is NULL", i);
  for (int j = 0; j < n_out; j++) outputs[j] = NULL;
  return ZMLX_OK;
}

/* The forward may return any array (one of its inputs, a cached constant):
 * give each output a handle of its own before it receives a value id. */
static zmlx_status own_outputs(zmlx_array **outputs, int n_out) {
  for (int j = 0; j < n_out; j++) {
    zmlx_array *o = outputs[j], *v = NULL;
    ZMLX_CHECK(zmlx_stop_gradient(o, &v));
    zmlx_array_release(o);
    outputs[j] = v;
  }
  return ZMLX_OK;
}

zmlx_status zmlx_custom_function_call(zmlx_custom_function *fn, zmlx_array *const *inputs, int n,
                                      zmlx_array **outputs, int n_out) {
  ZMLX_CHECK(check_call(fn, inputs, n, outputs, n_out));
  /* The forward is opaque: whatever it runs is not recorded. */
  zmlxi_ad_pause();
  zmlx_status st = fn->forward(fn->user_data, inputs, n, outputs, n_out);
  zmlxi_ad_resume();
  for (int j = 0; j < n_out && st == ZMLX_OK; j++)
    if (!outputs[j])
      st = zmlxi_fail(ZMLX_ERR_INVALID_ARG, "custom function: the forward returned ZMLX_OK but "
                     "left output %d NULL", j);
  if (st == ZMLX_OK && zmlxi_ad_should_record(inputs, n)) {
    st = own_outputs(outputs, n_out);
    if (st == ZMLX_OK) {
      atomic_fetch_add(&fn->refcount, 1);
      st = zmlxi_ad_record(&CUSTOM_RULE, fn, inputs, n, outputs, n_out,
                          ZMLX_AD_SAVE_INPUTS | ZMLX_AD_SAVE_OUTPUTS);
    }
  }
  if (st != ZMLX_OK) zmlxi_ad_release_all(outputs, n_out);
  return st;
}
