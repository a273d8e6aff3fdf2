/*
 * libFuzzer target for DLPack import's checks (src/runtime/dlpack_check.c):
 * the bytes become a DLTensor -- ndim (-1 .. 9), dtype code / bits / lanes,
 * shape and strides (any int64, strides present or NULL), byte_offset,
 * data NULL or not -- and go through zmlxi_dlpack_check. Crashes, leaks and
 * sanitizer reports (overflow in the checks) are failures, and so is the
 * oracle: a tensor the check accepts is gathered (zmlxi_dlpack_gather, the
 * host import's copy) from a buffer holding exactly the span the check
 * computed, so a read outside it is an ASan report.
 *
 *   make fuzz   (builds it with clang in build-fuzz and runs it)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/dlpack_check.h"

typedef struct reader {
  const uint8_t *p;
  size_t n;
} reader;

static uint64_t take(reader *r, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++) {
    v = v << 8 | (r->n ? *r->p : 0);
    if (r->n) r->p++, r->n--;
  }
  return v;
}

/* A size that is mostly small (so accepted tensors get gathered), sometimes
 * anything (so the overflow checks are reached). */
static int64_t take_extent(reader *r) {
  uint8_t kind = (uint8_t)take(r, 1);
  if (kind < 200) return (int64_t)(kind % 6);
  if (kind < 230) return -(int64_t)(kind % 4) - 1;
  return (int64_t)take(r, 8);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader r = {data, size};
  static uint8_t dummy[1];
  int64_t shape[10], strides[10];
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.ndim = (int)(take(&r, 1) % 11) - 1;
  t.dtype.code = (uint8_t)(take(&r, 1) % 8);
  static const uint8_t bits[] = {8, 16, 32, 64, 1, 7, 128, 0};
  t.dtype.bits = bits[take(&r, 1) % 8];
  t.dtype.lanes = (uint16_t)(take(&r, 1) % 8 ? 1 : take(&r, 2));
  const uint8_t flags = (uint8_t)take(&r, 1);
  for (int i = 0; i < 10; i++) shape[i] = take_extent(&r);
  for (int i = 0; i < 10; i++) {
    const int64_t v = take_extent(&r);
    strides[i] = (flags & 4) && v != INT64_MIN ? -v : v; /* (INT64_MIN stays: -v overflows) */
  }
  t.shape = (flags & 1) ? NULL : shape;
  t.strides = (flags & 2) ? strides : NULL;
  t.byte_offset = (flags & 8) ? take(&r, 8) : take(&r, 1) % 64;
  t.data = (flags & 16) ? NULL : dummy;

  zmlx_dtype dt;
  int64_t n = 0;
  zmlxi_dl_span span;
  if (zmlxi_dlpack_check(&t, &dt, &n, &span) != ZMLX_OK) {
    zmlx_clear_error();
    return 0;
  }
  const size_t es = zmlx_dtype_size(dt);
  const int64_t reach = span.hi - span.lo + 1;
  if (n == 0 || n > (1 << 16) || reach > (1 << 20) || t.byte_offset > 64) return 0;
  /* exactly the span: data + byte_offset + lo * es is the buffer's start */
  const size_t bytes = t.byte_offset + (size_t)reach * es;
  uint8_t *buf = malloc(bytes), *out = malloc((size_t)n * es);
  if (!buf || !out) abort();
  memset(buf, 0xA5, bytes);
  t.data = buf + (size_t)(-span.lo) * es;
  t.byte_offset = 0; /* the span starts at data + lo * es; keep the base there */
  zmlxi_dlpack_gather(&t, es, out);
  free(buf);
  free(out);
  return 0;
}
