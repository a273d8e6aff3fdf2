/* The safetensors format (Hugging Face's checkpoint files: an 8-byte
 * little-endian header length, a JSON header naming each tensor's dtype,
 * shape and byte range, then the raw little-endian data), read from bytes
 * in memory and trusting none of them, and the header's entries written.
 * Fuzzed by tests/fuzz/fuzz_safetensors.c. */
#ifndef ZMLX_NN_SAFETENSORS_H
#define ZMLX_NN_SAFETENSORS_H

#include <jansson.h>

#include "runtime/internal.h"

#define ZMLXI_ST_MAX_HEADER_BYTES (64u << 20)

typedef struct zmlxi_st {
  const char *what;          /* messages start with it, e.g. "zmlx_lm_load: PATH" */
  const unsigned char *data; /* the first byte after the header */
  size_t data_size;
  json_t *header;            /* an object */
} zmlxi_st;

/* bytes[0, size) as a safetensors file: the length and the JSON header
 * checked; st->data points into bytes (which must outlive st). */
zmlx_status zmlxi_st_parse(const char *what, const unsigned char *bytes, size_t size,
                           zmlxi_st *st);
void zmlxi_st_free(zmlxi_st *st);

/* The string value of __metadata__[key], or NULL. */
const char *zmlxi_st_meta(const zmlxi_st *st, const char *key);

/* Bytes per element of a safetensors dtype name ("F32", "BF16", ...); 0 for
 * a name this reader does not know. */
size_t zmlxi_st_dtype_size(const char *dtype);

/* Tensor `name`: its entry must say dtype `dtype` and shape[0, ndim), and
 * its byte range must lie in the data and hold exactly that many elements;
 * then *bytes points at them and *nbytes is their size. */
zmlx_status zmlxi_st_tensor(const zmlxi_st *st, const char *name, const char *dtype, int ndim,
                            const int64_t *shape, const unsigned char **bytes, size_t *nbytes);

/* header[name] = {dtype, shape, data_offsets [*offset, *offset + size)};
 * *offset advances past it. 0 on success, -1 when out of memory or when the
 * size overflows. */
int zmlxi_st_add(json_t *header, const char *name, const char *dtype, int ndim,
                 const int64_t *shape, size_t *offset);

#endif
