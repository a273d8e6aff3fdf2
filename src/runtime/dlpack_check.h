/* What an imported DLPack tensor claims, checked before any of its memory is
 * touched (dlpack_check.c): pure host code, shared by the import
 * (dlpack.c) and the DLPack fuzz target. */
#ifndef ZMLX_RUNTIME_DLPACK_CHECK_H
#define ZMLX_RUNTIME_DLPACK_CHECK_H

#include <dlpack/dlpack.h>

#include "runtime/internal.h"

/* kDLBool arrived in DLPack 0.8; Debian 12 ships 0.6, so spell out its code. */
#define ZMLX_DL_BOOL 6

/* The elements a strided tensor reaches, relative to data + byte_offset:
 * offsets lo .. hi (lo < 0 only with negative strides). */
typedef struct zmlxi_dl_span {
  int64_t lo, hi;
} zmlxi_dl_span;

/* The zmlx dtype of a DLPack dtype (ZMLX_ERR_DTYPE when none). */
zmlx_status zmlxi_dlpack_dtype(DLDataType t, zmlx_dtype *out);
/* dtype, shape (ndim 0..ZMLX_MAX_DIMS, no negative size, no 64-bit
 * overflow), data (NULL only when empty) and strides (every offset, and
 * every byte offset, representable in 64 bits): *dt, *size (elements) and
 * *span. An empty tensor has span {0, -1}. */
zmlx_status zmlxi_dlpack_check(const DLTensor *t, zmlx_dtype *dt, int64_t *size,
                               zmlxi_dl_span *span);
/* The elements of a checked host tensor, in C order, into dst (size x es
 * bytes); reads only offsets within its span. */
void zmlxi_dlpack_gather(const DLTensor *t, size_t es, void *dst);

#endif
