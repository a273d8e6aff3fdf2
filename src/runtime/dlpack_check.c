/* DLPack import's checks (dlpack_check.h): everything a producer's tensor
 * claims is checked here before zmlx reads it, so a malformed
 * DLManagedTensor is a status, never an overflow or a wild read. The DLPack
 * fuzz target (tests/fuzz/fuzz_dlpack.c) runs this file alone. */
#include "runtime/dlpack_check.h"

#include <string.h>

zmlx_status zmlxi_dlpack_dtype(DLDataType t, zmlx_dtype *out) {
  if (t.lanes != 1)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "DLPack: vector dtypes (lanes=%u) are not supported", t.lanes);
  static const struct { int code, bits; zmlx_dtype dt; } map[] = {
      {ZMLX_DL_BOOL, 8, ZMLX_BOOL}, {kDLUInt, 8, ZMLX_U8},   {kDLInt, 8, ZMLX_I8},
      {kDLInt, 32, ZMLX_I32},       {kDLUInt, 32, ZMLX_U32}, {kDLInt, 64, ZMLX_I64},
      {kDLFloat, 16, ZMLX_F16},     {kDLBfloat, 16, ZMLX_BF16}, {kDLFloat, 32, ZMLX_F32},
      {kDLFloat, 64, ZMLX_F64},
  };
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
    if (map[i].code == t.code && map[i].bits == t.bits) {
      *out = map[i].dt;
      return ZMLX_OK;
    }
  return zmlxi_fail(ZMLX_ERR_DTYPE, "DLPack: dtype code %u with %u bits has no zmlx dtype", t.code,
                   t.bits);
}

/* a + b, or 0 when it leaves int64 */
static int add_ok(int64_t a, int64_t b, int64_t *out) {
  if ((b > 0 && a > INT64_MAX - b) || (b < 0 && a < INT64_MIN - b)) return 0;
  *out = a + b;
  return 1;
}

/* The span of a non-empty tensor's strides; 0 when an offset overflows. */
static int strides_span(const DLTensor *t, zmlxi_dl_span *span) {
  int64_t expect = 1;
  span->lo = span->hi = 0;
  for (int i = t->ndim - 1; i >= 0; i--) {
    const int64_t n = t->shape[i], stride = t->strides ? t->strides[i] : expect;
    if (n > 1) {
      /* (n - 1) * stride, checked: |stride| <= INT64_MAX / (n - 1) */
      if (stride == INT64_MIN || (stride < 0 ? -stride : stride) > INT64_MAX / (n - 1)) return 0;
      const int64_t reach = (n - 1) * stride;
      if (!add_ok(stride < 0 ? span->lo : span->hi, reach, stride < 0 ? &span->lo : &span->hi))
        return 0;
    }
    expect *= n; /* no overflow: the shape's product fits (zmlxi_check_shape) */
  }
  return 1;
}

zmlx_status zmlxi_dlpack_check(const DLTensor *t, zmlx_dtype *dt, int64_t *size,
                               zmlxi_dl_span *span) {
  ZMLX_CHECK(zmlxi_dlpack_dtype(t->dtype, dt));
  ZMLX_CHECK(zmlxi_check_shape(*dt, t->ndim, t->shape, size));
  *span = (zmlxi_dl_span){0, -1};
  if (*size == 0) return ZMLX_OK;
  if (!t->data) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "DLPack: tensor data is NULL");
  if (!strides_span(t, span))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "DLPack: the strides reach offsets that overflow "
                     "64-bit sizes");
  /* every byte offset, byte_offset + offset * element size, fits too */
  const int64_t es = (int64_t)zmlx_dtype_size(*dt);
  const uint64_t reach = (uint64_t)(span->hi > -span->lo ? span->hi : -span->lo);
  if (t->byte_offset > (uint64_t)INT64_MAX / 2 || reach > (uint64_t)(INT64_MAX / 2 / es))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "DLPack: byte_offset %llu and strides reach past "
                     "64-bit byte offsets", (unsigned long long)t->byte_offset);
  return ZMLX_OK;
}

void zmlxi_dlpack_gather(const DLTensor *t, size_t es, void *dst) {
  int64_t strides[ZMLX_MAX_DIMS], n = 1;
  if (t->strides) memcpy(strides, t->strides, (size_t)t->ndim * sizeof *strides);
  else zmlxi_contiguous_strides(t->ndim, t->shape, strides);
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  const unsigned char *base = (const unsigned char *)t->data + t->byte_offset;
  for (int64_t i = 0; i < n; i++) {
    int64_t rem = i, off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
      off += (rem % t->shape[d]) * strides[d];
      rem /= t->shape[d];
    }
    memcpy((unsigned char *)dst + (size_t)i * es, base + off * (int64_t)es, es);
  }
}
