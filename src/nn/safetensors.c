/* safetensors reading and header writing (see safetensors.h). Every size,
 * offset, dtype and shape in a file is checked before a byte is used:
 * a file may come from anywhere. */
#include <string.h>

#include "nn/safetensors.h"

zmlx_status zmlxi_st_parse(const char *what, const unsigned char *bytes, size_t size,
                           zmlxi_st *st) {
  memset(st, 0, sizeof *st);
  st->what = what;
  if (size < 8)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: %zu bytes, too short for a safetensors file",
                     what, size);
  uint64_t len = 0;
  for (int i = 7; i >= 0; i--) len = len << 8 | bytes[i];
  if (len > size - 8 || len > ZMLXI_ST_MAX_HEADER_BYTES)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: the header claims %llu bytes, the file has %zu "
                     "after the length (truncated or not safetensors)", what,
                     (unsigned long long)len, size - 8);
  json_error_t err;
  json_t *h = json_loadb((const char *)bytes + 8, (size_t)len, 0, &err);
  if (!h || !json_is_object(h)) {
    json_decref(h);
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: bad JSON header at line %d, column %d: %s", what,
                     err.line, err.column, h ? "not an object" : err.text);
  }
  st->header = h;
  st->data = bytes + 8 + len;
  st->data_size = size - 8 - (size_t)len;
  return ZMLX_OK;
}

void zmlxi_st_free(zmlxi_st *st) {
  json_decref(st->header);
  st->header = NULL;
}

const char *zmlxi_st_meta(const zmlxi_st *st, const char *key) {
  json_t *meta = json_object_get(st->header, "__metadata__");
  return json_string_value(json_object_get(meta, key));
}

size_t zmlxi_st_dtype_size(const char *dtype) {
  static const struct {
    const char *name;
    size_t size;
  } known[] = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
               {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"U32", 4}, {"U16", 2}};
  for (size_t i = 0; dtype && i < sizeof known / sizeof known[0]; i++)
    if (!strcmp(dtype, known[i].name)) return known[i].size;
  return 0;
}

/* n * shape[0] * ... in *out; 0 when it overflows size_t. */
static int checked_bytes(size_t n, int ndim, const int64_t *shape, size_t *out) {
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 0) return 0;
    if (shape[d] && n > SIZE_MAX / (uint64_t)shape[d]) return 0;
    n *= (size_t)shape[d];
  }
  *out = n;
  return 1;
}

/* the entry's shape equals shape[0, ndim) (integers only: a string or a
 * float in a shape never passes as a number) */
static int same_shape(json_t *js, int ndim, const int64_t *shape) {
  if (!json_is_array(js) || json_array_size(js) != (size_t)ndim) return 0;
  for (int d = 0; d < ndim; d++) {
    json_t *v = json_array_get(js, (size_t)d);
    if (!json_is_integer(v) || json_integer_value(v) != shape[d]) return 0;
  }
  return 1;
}

zmlx_status zmlxi_st_tensor(const zmlxi_st *st, const char *name, const char *dtype, int ndim,
                            const int64_t *shape, const unsigned char **bytes, size_t *nbytes) {
  json_t *e = json_object_get(st->header, name), *js = NULL;
  const char *dt = NULL;
  json_int_t lo = -1, hi = -1;
  json_error_t err;
  if (!e || json_unpack_ex(e, &err, 0, "{s:s, s:o, s:[I, I]}", "dtype", &dt, "shape", &js,
                           "data_offsets", &lo, &hi))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: tensor '%s' %s", st->what, name,
                     e ? err.text : "is missing");
  char want[96];
  size_t n = 0;
  if (!same_shape(js, ndim, shape) || strcmp(dt, dtype))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: tensor '%s' is %.16s of another shape than the "
                     "expected %s %s", st->what, name, dt,
                     zmlxi_shape_str(want, sizeof want, ndim, shape), dtype);
  if (!checked_bytes(zmlxi_st_dtype_size(dtype), ndim, shape, &n))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: tensor '%s' of shape %s is too large", st->what, name,
                     zmlxi_shape_str(want, sizeof want, ndim, shape));
  if (lo < 0 || hi < lo || (uint64_t)hi > st->data_size || (uint64_t)(hi - lo) != n)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: tensor '%s' spans bytes [%lld, %lld) of %zu "
                     "data bytes; it needs %zu (truncated or corrupt)", st->what, name,
                     (long long)lo, (long long)hi, st->data_size, n);
  *bytes = st->data + lo;
  *nbytes = n;
  return ZMLX_OK;
}

int zmlxi_st_add(json_t *header, const char *name, const char *dtype, int ndim,
                 const int64_t *shape, size_t *offset) {
  size_t n = 0;
  if (!checked_bytes(zmlxi_st_dtype_size(dtype), ndim, shape, &n) || *offset > SIZE_MAX - n)
    return -1;
  json_t *js = json_array();
  for (int d = 0; js && d < ndim; d++)
    if (json_array_append_new(js, json_integer(shape[d]))) {
      json_decref(js);
      return -1;
    }
  json_t *e = js ? json_pack("{s:s, s:o, s:[I, I]}", "dtype", dtype, "shape", js, "data_offsets",
                             (json_int_t)*offset, (json_int_t)(*offset + n))
                 : NULL;
  if (!e || json_object_set_new(header, name, e)) return -1;
  *offset += n;
  return 0;
}
