/*
 * The op catalog's verifier interface (issue 5: `zmlx check`). Every
 * src/check/<family>_check.c exports a NULL-terminated table of
 * zmlx_catalog_op; catalog.c lists the tables. An op's `check` runs its cases on one device and dtype
 * — forward against an f64 C reference on fresh random inputs with
 * poisoned outputs, backward with the gradient checker — and reports one
 * row per case through `emit`.
 */
#ifndef ZMLX_CHECK_CATALOG_H
#define ZMLX_CHECK_CATALOG_H

#include "runtime/internal.h"

typedef struct zmlx_check_row {
  const char *op;      /* "softmax" */
  const char *what;    /* "fwd", "grad x", "grad w" ... */
  zmlx_backend backend;
  zmlx_dtype dtype;
  char shape[96];      /* "[4096, 32768]" or a short case description */
  double max_err;      /* |got - want| where it is largest against its bound, or the case's own metric */
  double tol;          /* that element's bound, atol + rtol |want| (check_util.h) */
  int pass;
} zmlx_check_row;

typedef struct zmlx_check_opts {
  zmlx_device *device;
  zmlx_dtype dtype;  /* F32, F16 or BF16 */
  int quick;         /* CI subset: still every op and dtype, fewer/smaller shapes */
  uint64_t seed;     /* fresh per run unless fixed by the user */
  void (*emit)(void *ctx, const zmlx_check_row *row);
  void *ctx;
} zmlx_check_opts;

/* One row of `zmlx bench`: an op at one shape. `bytes` is what must move
 * (every input read once, every output written once). */
typedef struct zmlx_bench_row {
  const char *op;
  char shape[96];
  zmlx_dtype dtype;
  double bytes;
  double flops; /* floating-point operations of one call, 0 for memory-bound ops */
  double ms;    /* median */
} zmlx_bench_row;

typedef struct zmlx_bench_opts {
  zmlx_device *device;
  int reps; /* samples for the median */
  void (*emit)(void *ctx, const zmlx_bench_row *row);
  void *ctx;
} zmlx_bench_opts;

typedef struct zmlx_catalog_op {
  const char *name;
  /* Runs every case, emitting a row per case. Returns non-OK only when the
   * check itself could not run (the failure of a case is a row with pass 0). */
  zmlx_status (*check)(const zmlx_check_opts *o);
} zmlx_catalog_op;

/* `zmlx bench` cases live beside the checks in a table of their own (so a
 * family's check table does not change shape when its benchmarks land). */
typedef struct zmlx_catalog_bench {
  const char *name;
  /* Times the op at its LLM shapes, a row per shape. */
  zmlx_status (*bench)(const zmlx_bench_opts *o);
} zmlx_catalog_bench;

/* Median milliseconds of `run(ctx)` on `dev`: a warm-up, then `reps`
 * samples of `inner` calls each with the device drained per sample. */
zmlx_status zck_bench_median_ms(zmlx_device *dev, zmlx_status (*run)(void *ctx), void *ctx,
                                 int reps, int inner, double *ms);

/* The rows to time an LLM shape of `rows` rows at: all of them on a GPU;
 * on a CPU backend (OpenCL) a 64th (at least 1), so a run takes seconds. */
int64_t zck_bench_rows(const zmlx_bench_opts *o, int64_t rows);
/* A device array of uniform random values in [-1, 1) (benchmarks never time
 * zeros: some kernels and caches shortcut them). */
zmlx_status zck_bench_random(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                              uint64_t seed, zmlx_array **out);
/* Times `run` (the median of o->reps samples) and emits the row with the
 * shape written as "AxBxC", the form bench/peer_catalog.py uses. */
zmlx_status zck_bench_time_emit(const zmlx_bench_opts *o, const char *op, zmlx_dtype dt,
                                 int ndim, const int64_t *shape, double bytes,
                                 zmlx_status (*run)(void *ctx), void *ctx);

/* zck_bench_time_emit for a compute-bound op: the row carries its FLOPs
 * (the table shows TFLOP/s). */
zmlx_status zck_bench_time_emit_flops(const zmlx_bench_opts *o, const char *op, zmlx_dtype dt,
                                       int ndim, const int64_t *shape, double bytes, double flops,
                                       zmlx_status (*run)(void *ctx), void *ctx);
/* The same row for run captured once as a graph (zmlx_graph_*) and
 * replayed: what a decode loop pays per step when it replays its steps. */
zmlx_status zck_bench_time_emit_graph(const zmlx_bench_opts *o, const char *op, zmlx_dtype dt,
                                      int ndim, const int64_t *shape, double bytes,
                                      zmlx_status (*run)(void *ctx), void *ctx);

/* All ops, in catalog order; NULL-terminated. */
const zmlx_catalog_op *const *zck_catalog_ops(void);

/* Kernel variants launched since the last take ("softmax[MODE=0 VEC=4 NV=2]
 * tg 64", a line each, once per distinct variant), recorded while on
 * (launch_log.c; it uses the kernel layer's one launch observer). */
void zck_launches_record(int on);
const char *zck_launches_take(void);
/* All benchmark cases, in catalog order; NULL-terminated. */
const zmlx_catalog_bench *const *zck_catalog_benches(void);

#endif
