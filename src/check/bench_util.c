/* Timing helpers shared by the catalog's bench functions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/catalog.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

zmlx_status zck_bench_median_ms(zmlx_device *dev, zmlx_status (*run)(void *ctx), void *ctx,
                                 int reps, int inner, double *ms) {
  if (reps < 1 || inner < 1) return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "bench: reps and inner must be >= 1");
  double *t = malloc((size_t)reps * sizeof *t);
  if (!t) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  zmlx_status st = run(ctx); /* warm-up: compile, allocator pools */
  if (st == ZMLX_OK) st = zmlx_device_synchronize(dev);
  for (int r = 0; r < reps && st == ZMLX_OK; r++) {
    double t0 = zmlxi_now_ms();
    for (int i = 0; i < inner && st == ZMLX_OK; i++) st = run(ctx);
    if (st == ZMLX_OK) st = zmlx_device_synchronize(dev);
    t[r] = (zmlxi_now_ms() - t0) / inner;
  }
  if (st == ZMLX_OK) {
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    *ms = t[reps / 2];
  }
  free(t);
  return st;
}

int64_t zck_bench_rows(const zmlx_bench_opts *o, int64_t rows) {
  zmlx_device_info info;
  if (zmlx_device_get_info(o->device, &info) != ZMLX_OK || !info.is_cpu) return rows;
  return rows / 64 > 0 ? rows / 64 : 1;
}

zmlx_status zck_bench_random(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                              uint64_t seed, zmlx_array **out) {
  return zmlx_array_random_uniform(dev, dt, ndim, shape, seed, -1.0, 1.0, out);
}

/* Fewer calls per sample for slow (large) cases so a sample stays ~ms long
 * but the whole row stays under a second or two. */
static int inner_calls(double bytes) { return bytes > 1e9 ? 3 : bytes > 1e8 ? 10 : 50; }

zmlx_status zck_bench_time_emit(const zmlx_bench_opts *o, const char *op, zmlx_dtype dt,
                                 int ndim, const int64_t *shape, double bytes,
                                 zmlx_status (*run)(void *ctx), void *ctx) {
  return zck_bench_time_emit_flops(o, op, dt, ndim, shape, bytes, 0, run, ctx);
}

zmlx_status zck_bench_time_emit_flops(const zmlx_bench_opts *o, const char *op, zmlx_dtype dt,
                                       int ndim, const int64_t *shape, double bytes, double flops,
                                       zmlx_status (*run)(void *ctx), void *ctx) {
  zmlx_bench_row row;
  memset(&row, 0, sizeof row);
  row.op = op;
  row.dtype = dt;
  row.bytes = bytes;
  row.flops = flops;
  size_t len = 0;
  for (int i = 0; i < ndim && len < sizeof row.shape; i++)
    len += (size_t)snprintf(row.shape + len, sizeof row.shape - len, "%s%lld", i ? "x" : "",
                            (long long)shape[i]);
  zmlx_status st = zck_bench_median_ms(o->device, run, ctx, o->reps > 0 ? o->reps : 21,
                                        inner_calls(bytes), &row.ms);
  if (st == ZMLX_OK) o->emit(o->ctx, &row);
  return st;
}

static zmlx_status replay_run(void *g) { return zmlx_graph_replay(g); }

zmlx_status zck_bench_time_emit_graph(const zmlx_bench_opts *o, const char *op, zmlx_dtype dt,
                                      int ndim, const int64_t *shape, double bytes,
                                      zmlx_status (*run)(void *ctx), void *ctx) {
  ZMLX_CHECK(run(ctx)); /* compiled before the capture */
  zmlx_graph *g = NULL;
  ZMLX_CHECK(zmlx_graph_capture_begin(o->device));
  zmlx_status st = run(ctx), end = zmlx_graph_capture_end(o->device, &g);
  if (st == ZMLX_OK) st = end;
  if (st == ZMLX_ERR_UNSUPPORTED) {
    /* a path that cannot be captured (a host read inside): said, no row,
     * and the op's other rows still run */
    fprintf(stderr, "zmlx bench: %s: no graph row: %s\n", op, zmlx_last_error());
    zmlx_clear_error();
    zmlx_graph_destroy(g);
    return ZMLX_OK;
  }
  if (st == ZMLX_OK) st = zck_bench_time_emit(o, op, dt, ndim, shape, bytes, replay_run, g);
  zmlx_graph_destroy(g);
  return st;
}
