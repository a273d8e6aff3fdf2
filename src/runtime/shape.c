/* Shapes and strides: the checks and layouts every array path shares. Pure
 * host code (no device, no allocation), so the DLPack fuzz target can link
 * it alone. */
#include <stdint.h>

#include "runtime/internal.h"

void zmlxi_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i] > 0 ? shape[i] : 1;
  }
}

zmlx_status zmlxi_check_shape(zmlx_dtype dt, int ndim, const int64_t *shape, int64_t *size) {
  if (zmlx_dtype_size(dt) == 0) return zmlxi_fail(ZMLX_ERR_DTYPE, "invalid dtype %d", (int)dt);
  if (ndim < 0 || ndim > ZMLX_MAX_DIMS)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "ndim %d is outside 0..%d", ndim, ZMLX_MAX_DIMS);
  if (ndim > 0 && !shape) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "shape is NULL with ndim %d", ndim);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) {
      char b[200];
      return zmlxi_fail(ZMLX_ERR_SHAPE, "negative size in shape %s", zmlxi_shape_str(b, sizeof b, ndim, shape));
    }
    if (shape[i] && n > INT64_MAX / 16 / shape[i])
      return zmlxi_fail(ZMLX_ERR_SHAPE, "shape is too large (overflows 64-bit sizes)");
    n *= shape[i];
  }
  *size = n;
  return ZMLX_OK;
}
