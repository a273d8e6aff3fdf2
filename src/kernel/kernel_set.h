/*
 * A family's kernels as a table (kernel_set.c). Each entry says what a
 * kernel is — name, .zk text, inputs, outputs, scalar parameters — and the
 * set creates each kernel object on first use, once per process, and
 * remembers a failure (every later use returns the same status and
 * message). Replaces the hand-written pthread_once tables each family had.
 *
 *   static const zmlx_kernel_spec SPECS[] = {
 *       [K_FWD] = ZMLX_KSPEC("zmlx_softmax_fwd", zmlxi_res_softmax_zk, "x, mask", "out",
 *                            "rows:i64, cols:i64, scale:f32", .prelude = zmlxi_res_vec_io_zk),
 *   };
 *   static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("softmax", SPECS);
 *   ...
 *   zmlx_kernel *k;
 *   ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_FWD, &k));
 */
#ifndef ZMLX_KERNEL_KERNEL_SET_H
#define ZMLX_KERNEL_KERNEL_SET_H

#include <pthread.h>
#include <stdatomic.h>

#include "kernel/kernel.h"

#define ZMLX_KERNEL_SET_MAX 16

typedef struct zmlx_kernel_spec {
  const char *name;     /* the kernel's entry name */
  const char *source;   /* .zk text: [helpers] //-- body -- body, or a body alone */
  const char *inputs;   /* "x, mask": input names, comma-separated ("" for none) */
  const char *outputs;  /* "out" or "vals, idx" */
  const char *params;   /* "rows:i64, scale:f32" (i32, u32, i64, f32, f64); NULL: none */
  const char *prelude;  /* optional text placed before source (shared helpers) */
  const char *prelude2; /* optional text placed after prelude (a second set of helpers) */
  int dense_inputs;     /* strided inputs are copied dense first (ensure_row_contiguous) */
} zmlx_kernel_spec;

/* An entry: name, source, inputs, outputs, params (NULL: none), then any
 * optional field by name (.prelude = ..., .dense_inputs = 1). */
#define ZMLX_KSPEC(name_, source_, inputs_, outputs_, ...)                      \
  {.name = (name_), .source = (source_), .inputs = (inputs_), .outputs = (outputs_), \
   .params = __VA_ARGS__}

typedef struct zmlx_kernel_set {
  const char *what; /* "softmax": messages say "softmax kernel 'name': ..." */
  const zmlx_kernel_spec *specs;
  int count;
  pthread_mutex_t lock;
  _Atomic(zmlx_kernel *) kernels[ZMLX_KERNEL_SET_MAX];
  zmlx_status failed[ZMLX_KERNEL_SET_MAX]; /* remembered creation failure */
  char *error[ZMLX_KERNEL_SET_MAX];        /* its message */
} zmlx_kernel_set;

#define ZMLX_KERNEL_SET(what_, specs_)                                   \
  {.what = (what_), .specs = (specs_),                                   \
   .count = (int)(sizeof(specs_) / sizeof((specs_)[0])),                 \
   .lock = PTHREAD_MUTEX_INITIALIZER}

/* Entry i's kernel object (owned by the set, alive until process exit). */
zmlx_status zmlxi_kernel_set_get(zmlx_kernel_set *set, int i, zmlx_kernel **out);
/* zmlx_kernel_launch of entry i. */
zmlx_status zmlxi_kernel_set_launch(zmlx_kernel_set *set, int i, zmlx_kernel_call *call);

#endif
