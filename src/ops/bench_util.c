/* Timing helper shared by the catalog's bench functions. */
#include <stdlib.h>

#include "ops/catalog.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

zmlx_status zmlx_bench_median_ms(zmlx_device *dev, zmlx_status (*run)(void *ctx), void *ctx,
                                 int reps, int inner, double *ms) {
  if (reps < 1 || inner < 1) return zmlx_fail(ZMLX_ERR_INVALID_ARG, "bench: reps and inner must be >= 1");
  double *t = malloc((size_t)reps * sizeof *t);
  if (!t) return zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlx_status st = run(ctx); /* warm-up: compile, allocator pools */
  if (st == ZMLX_OK) st = zmlx_device_synchronize(dev);
  for (int r = 0; r < reps && st == ZMLX_OK; r++) {
    double t0 = zmlx_now_ms();
    for (int i = 0; i < inner && st == ZMLX_OK; i++) st = run(ctx);
    if (st == ZMLX_OK) st = zmlx_device_synchronize(dev);
    t[r] = (zmlx_now_ms() - t0) / inner;
  }
  if (st == ZMLX_OK) {
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    *ms = t[reps / 2];
  }
  free(t);
  return st;
}
