/* The zmlx_layer object, shared by layer.c (create, parameters) and
 * layer_forward.c. */
#ifndef ZMLX_NN_LAYER_OBJECT_H
#define ZMLX_NN_LAYER_OBJECT_H

#include "nn/layer.h"

struct zmlx_layer {
  zmlx_layer_config cfg; /* resolved */
  int n_params;
  zmlx_array *params[BLOCK_MAX_PARAMS];
  const char *names[BLOCK_MAX_PARAMS];
};

/* "linear", "attention", ... for messages. */
const char *zmlxi_layer_kind_name(zmlx_layer_kind k);

#endif
