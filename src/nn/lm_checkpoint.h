/* A zmlx_lm checkpoint's configuration and its check (lm_checkpoint.c). */
#ifndef ZMLX_NN_LM_CHECKPOINT_H
#define ZMLX_NN_LM_CHECKPOINT_H

#include "nn/safetensors.h"

typedef struct zmlxi_checkpoint {
  zmlxi_st st;
  zmlx_lm_config cfg; /* checked, defaults filled in; device NULL */
} zmlxi_checkpoint;

/* The safetensors dtype name of a model dtype (F32, F16, BF16). */
const char *zmlxi_lm_st_dtype(zmlx_dtype dt);
/* The configuration as the JSON object zmlx.config holds. */
json_t *zmlxi_lm_config_json(const zmlx_lm_config *c);

/* bytes[0, size) as a checkpoint: the safetensors header, its zmlx.config
 * (a valid model configuration), and every parameter that configuration
 * has, present with the right dtype, shape and byte range. On success
 * ck->st must be freed (zmlxi_st_free) and bytes outlive it. */
zmlx_status zmlxi_checkpoint_parse(const char *what, const unsigned char *bytes, size_t size,
                                   zmlxi_checkpoint *ck);

#endif
