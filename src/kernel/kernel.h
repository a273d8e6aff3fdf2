/* Kernel object internals shared by kernel.c (launch) and source.c
 * (assembly of the full source for a backend). */
#ifndef ZMLX_KERNEL_KERNEL_H
#define ZMLX_KERNEL_KERNEL_H

#include <pthread.h>

#include "kernel/cache.h"
#include "runtime/internal.h"

#define ZMLX_KERNEL_MAX_ARRAYS 32
#define ZMLX_KERNEL_MAX_PARAMS 16
#define ZMLX_KERNEL_MAX_TEMPLATES 16

/* One compiled specialisation: a device and the dtypes / template values a
 * call used. Looked up on every launch, so comparing it must be cheap. */
typedef struct zmlx_kernel_variant {
  zmlx_device *device;
  zmlx_dtype dtypes[ZMLX_KERNEL_MAX_ARRAYS]; /* inputs then outputs */
  int n_templates;
  zmlx_template_arg templates[ZMLX_KERNEL_MAX_TEMPLATES]; /* names owned */
  void *function;
  uint64_t generation; /* zmlxi_cache_generation() when `function` was fetched */
} zmlx_kernel_variant;

struct zmlx_kernel {
  char *name;
  char *entry;     /* function name in generated source */
  char **names;    /* inputs then outputs */
  int n_inputs, n_outputs;
  char **param_names;
  zmlx_dtype *param_dtypes;
  int n_params;
  char *body;
  char *header;
  int ensure_row_contiguous;
  int atomic_outputs;
  /* What the body (or header) references, found by scanning identifiers. */
  unsigned char want_shape[ZMLX_KERNEL_MAX_ARRAYS];
  unsigned char want_strides[ZMLX_KERNEL_MAX_ARRAYS];
  unsigned char want_ndim[ZMLX_KERNEL_MAX_ARRAYS];
  int uses_barrier, uses_simd, uses_dynamic_shared;

  pthread_mutex_t lock; /* guards variants */
  zmlx_kernel_variant *variants;
  int n_variants, cap_variants;
};

/* Assemble the full source of `k` for dialect `d`. `dtypes` holds the
 * n_inputs + n_outputs array dtypes. *body_first_line gets the 1-based line
 * where the user body starts (for compile-error mapping). */
zmlx_status zmlxi_kernel_assemble(const zmlx_kernel *k, const zmlx_dialect *d,
                                 const zmlx_dtype *dtypes, const zmlx_template_arg *templates,
                                 int n_templates, int guard_grid, char **source,
                                 int *body_first_line);

/* Create a kernel from a dialect file (.zk): `desc->source` is the file's
 * text — optional helper functions, a line "//-- body --", then the body
 * (a file without the line is all body). desc->header must be NULL. */
zmlx_status zmlxi_kernel_create_from_zk(const zmlx_kernel_desc *desc, zmlx_kernel **out);

/* Fill with a value, write arange, random: built-in kernels (kernel/builtins.c). */
zmlx_status zmlxi_builtin_fill(zmlx_array *a, double value, zmlx_stream *s);
zmlx_status zmlxi_builtin_copy(zmlx_array *src, zmlx_array *dst, zmlx_stream *s);
zmlx_status zmlxi_builtin_arange(zmlx_array *a, double start, double step, zmlx_stream *s);
zmlx_status zmlxi_builtin_random(zmlx_array *a, uint64_t seed, int normal, double p0,
                                double p1, zmlx_stream *s);

/* The built-in kernels' sources for a backend and dtype (tests compile the
 * CUDA ones with NVRTC on machines without a GPU). */
int zmlxi_builtin_count(void);
zmlx_status zmlxi_builtin_source(int which, zmlx_backend backend, zmlx_dtype dt, char **out);

/* Grid of a launch over n work items (at least 1), threadgroups of 256: 1-D,
 * or 2-D past 2^30 items, since grid dimensions stop at 2^31 - 1 on some
 * backends; the kernel computes its item as y * grid_size.x + x. */
void zmlxi_kernel_call_grid_1d(zmlx_kernel_call *c, int64_t n);

/* Whether identifier `ident` occurs as a whole token in `text`. */
int zmlxi_mentions_identifier(const char *text, const char *ident);

/* A test hook: `fn` sees every launch's kernel and call (inputs and outputs
 * resolved) before the backend compiles or runs it, so a test can rebuild
 * the source of each variant the catalog uses for another backend (CI
 * compiles them for CUDA with NVRTC on machines without a GPU). NULL
 * removes it. Process-wide; set it while no launch runs. */
typedef void (*zmlx_launch_observer)(void *ctx, zmlx_kernel *k, const zmlx_kernel_call *c);
void zmlxi_kernel_set_launch_observer(zmlx_launch_observer fn, void *ctx);

#endif /* ZMLX_KERNEL_KERNEL_H */
