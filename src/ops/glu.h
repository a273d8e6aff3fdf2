/*
 * What src/ops/glu.c shows its verifier (src/check/glu_check.c) beyond
 * the public API.
 */
#ifndef ZMLX_OPS_GLU_H
#define ZMLX_OPS_GLU_H

#include "runtime/internal.h"

int zmlxi_glu_split_vec(zmlx_dtype dt);

/* For the checks (this thread only): launches of the split forms' fast
 * kernel, and a cap on its grid (0: none) that makes the grid-stride loop
 * go round. */
extern _Thread_local long zmlxi_glu_split_launches;
extern _Thread_local int64_t zmlxi_glu_split_grid_cap;

#endif
