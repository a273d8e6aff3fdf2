/*
 * The op catalog's verifier interface (issue 5: `zmlx check`). Every op file
 * in src/ops exports a NULL-terminated table of zmlx_catalog_op; catalog.c
 * lists the tables. An op's `check` runs its cases on one device and dtype
 * — forward against an f64 C reference on fresh random inputs with
 * poisoned outputs, backward with the gradient checker — and reports one
 * row per case through `emit`.
 */
#ifndef ZMLX_OPS_CATALOG_H
#define ZMLX_OPS_CATALOG_H

#include "runtime/internal.h"

typedef struct zmlx_check_row {
  const char *op;      /* "softmax" */
  const char *what;    /* "fwd", "grad x", "grad w" ... */
  zmlx_backend backend;
  zmlx_dtype dtype;
  char shape[96];      /* "[4096, 32768]" or a short case description */
  double max_err;      /* max |got - want| / (1 + |want|) or the case's own metric */
  double tol;
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

typedef struct zmlx_catalog_op {
  const char *name;
  /* Runs every case, emitting a row per case. Returns non-OK only when the
   * check itself could not run (the failure of a case is a row with pass 0). */
  zmlx_status (*check)(const zmlx_check_opts *o);
} zmlx_catalog_op;

/* All ops, in catalog order; NULL-terminated. */
const zmlx_catalog_op *const *zmlx_catalog_ops(void);

#endif
