/* The language model's configuration rules and parameter list (lm_plan.c):
 * no arrays, no device. */
#ifndef ZMLX_NN_LM_PLAN_H
#define ZMLX_NN_LM_PLAN_H

#include "runtime/internal.h"

#define ZMLX_LM_MAX_PARAMS 1024

/* *c = *in with defaults filled in, or an error naming what is wrong. The
 * device is left as given (lm.c resolves it). */
zmlx_status zmlxi_lm_check_config(const zmlx_lm_config *in, zmlx_lm_config *c);

/* One parameter: its layer (-1: embed, norm, head), name, shape, and
 * initialisation (normal(0, std), or the constant fill when std is 0). */
typedef zmlx_status (*zmlxi_lm_param_fn)(void *ud, int layer, const char *name, int ndim,
                                         const int64_t *shape, double std, double fill);

/* fn for each parameter of the (checked) configuration c, in the model's
 * order: embed, each layer's (lm.h's LM_ATTN_NORM ..), norm, head. Stops at
 * the first error, and refuses more than ZMLX_LM_MAX_PARAMS. */
zmlx_status zmlxi_lm_plan(const zmlx_lm_config *c, zmlxi_lm_param_fn fn, void *ud);

#endif
