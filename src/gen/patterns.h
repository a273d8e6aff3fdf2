/*
 * Codegen patterns (DESIGN 3.3): pure functions that turn expression graphs
 * (gen/expr.h) into dialect kernel *bodies* (docs/DIALECT.md) plus the
 * launch geometry to run them. The kernel object (src/kernel) adds the
 * signature, compiles and caches; the builders (elementwise.c, map_reduce.c)
 * pick a pattern per call and launch it.
 *
 * Every generator is a pure function of its arguments: equal graphs and
 * options give byte-identical bodies (and kernel names, which are derived
 * from the body), so the kernel cache hits across op objects and processes.
 *
 * Naming contract of the generated kernels, shared with the launchers:
 *   arrays   in0, in1, ... (inputs)   out0, out1, ... (outputs)
 *   scalars  p0, p1, ... (the expression's parameters, f32), then the
 *            pattern's own (i64): elementwise "zn" (element count); row
 *            patterns "zrows", "zcols".
 * Generated locals start with `z` and expression temporaries with `t`, so
 * they never meet the prelude (zmlx_*, ZMLX_*) or the signature.
 *
 * Graph input conventions of the row patterns (input index: meaning):
 *   init      no inputs                     the accumulator's start value
 *   step      0 acc, 1 x, 2 r0              update(acc, map(x)) for one element
 *   combine   0 a, 1 b                      merge two partial accumulators
 *   finalize  0 acc, 1 n, 2 r0              the row's result from its accumulator
 *   write     0 x, 1 r0, 2 r1, 3 n          one output element (map-reduce)
 * (n is the row length as a float; r0 is the first reduction's result.)
 */
#ifndef ZMLX_GEN_PATTERNS_H
#define ZMLX_GEN_PATTERNS_H

#include <pthread.h>

#include "gen/expr.h"
#include "kernel/kernel.h"

/* ------------------------------------------------------- generated kernels */

/* Everything zmlx_kernel_create needs, with the naming contract above. */
typedef struct zmlx_pattern_kernel {
  char name[48];
  int n_inputs, n_outputs;
  int n_params;
  const char *param_names[ZMLX_KERNEL_MAX_PARAMS]; /* static strings */
  zmlx_dtype param_dtypes[ZMLX_KERNEL_MAX_PARAMS];
  int ensure_row_contiguous;
  char *body; /* malloc'ed */
} zmlx_pattern_kernel;

void zmlxi_pattern_kernel_free(zmlx_pattern_kernel *pk);
/* A kernel object for a generated kernel. */
zmlx_status zmlxi_pattern_kernel_create(const zmlx_pattern_kernel *pk, zmlx_kernel **out);

/* Grid (threads, as the kernel object counts) and threadgroup of a launch. */
typedef struct zmlx_pattern_geometry {
  int64_t grid[3];
  int threadgroup[3];
} zmlx_pattern_geometry;

/* Threads per threadgroup for a row of `cols` elements: a power of two,
 * at least the SIMD width (so SIMD helpers see whole groups), at most
 * min(max_threads, 1024), growing until each thread has about 4 elements. */
int zmlxi_pattern_threads_per_row(int64_t cols, int max_threads, int simd_width);

/* ------------------------------------------------------------ elementwise */

typedef enum zmlx_ew_layout {
  /* Every array is dense with the output's element count: flat index. */
  ZMLX_EW_CONTIGUOUS = 0,
  /* Inputs are views with the output's (coalesced) shape; broadcast axes
   * have stride 0. Offsets come from out0_shape and in<i>_strides. */
  ZMLX_EW_STRIDED,
  /* As CONTIGUOUS, every array f32/f16/bf16 and 16-byte aligned: each
   * thread moves 16-byte chunks (uint4 / float4 accesses), then a scalar
   * tail. */
  ZMLX_EW_VECTOR
} zmlx_ew_layout;

/* Elements per chunk of the vector layout for these array dtypes (inputs
 * the graph reads, then outputs): 16 / the smallest element size, or 0
 * when some dtype is not f32/f16/bf16. */
int zmlxi_pattern_vector_width(const zmlx_dtype *dtypes, int n);

/* An n-ary elementwise kernel: graph inputs are the kernel's inputs, graph
 * roots its outputs, graph parameters its f32 scalars; then "zn" (i64).
 * `dtypes` (inputs then outputs) is read only by the vector layout. */
zmlx_status zmlxi_pattern_elementwise(const zmlx_expr *e, zmlx_ew_layout layout,
                                     const zmlx_dtype *dtypes, zmlx_pattern_kernel *out);
/* Geometry for n elements (`width`: zmlxi_pattern_vector_width, vector only):
 * a grid-stride loop over at most a few waves of threads. */
zmlx_pattern_geometry zmlxi_pattern_elementwise_geometry(zmlx_ew_layout layout, int64_t n,
                                                        int width,
                                                        const zmlx_device_info *info);

/* ------------------------------------------------------------- row patterns */

/* One reduction over a row; graphs follow the input conventions above. */
typedef struct zmlx_row_reduction {
  const zmlx_expr *init;
  const zmlx_expr *step;
  const zmlx_expr *combine;  /* needed by ZMLX_ROW_PER_GROUP */
  const zmlx_expr *finalize; /* NULL: acc */
} zmlx_row_reduction;

typedef enum zmlx_row_mode {
  ZMLX_ROW_PER_THREAD = 0, /* one thread walks a whole row */
  /* One threadgroup per row; partials merge through the SIMD helpers (for
   * a + b, max, min combines), then across SIMD groups in threadgroup
   * memory. For backends whose SIMD helpers are native (CUDA, Metal). */
  ZMLX_ROW_PER_GROUP,
  /* One threadgroup per row; partials merge in a threadgroup memory tree
   * only. For OpenCL, whose SIMD helpers are themselves a threadgroup
   * memory emulation (see zmlxi_pattern_group_mode). */
  ZMLX_ROW_PER_GROUP_SHARED
} zmlx_row_mode;

/* The threadgroup-per-row mode for a backend: PER_GROUP where its dialect's
 * SIMD helpers are native, PER_GROUP_SHARED where they are emulated. */
zmlx_row_mode zmlxi_pattern_group_mode(zmlx_backend b);

/* in0 [zrows, zcols] (row-contiguous) -> out0 [zrows]. */
zmlx_status zmlxi_pattern_row_reduce(const zmlx_row_reduction *r, zmlx_row_mode mode,
                                    zmlx_pattern_kernel *out);
/* Two-pass map-reduce: n_reduce (1 or 2) chained reductions, then `write`
 * for every element. in0 [zrows, zcols] -> out0 [zrows, zcols]. */
zmlx_status zmlxi_pattern_row_map_reduce(const zmlx_row_reduction *r, int n_reduce,
                                        const zmlx_expr *write, zmlx_row_mode mode,
                                        zmlx_pattern_kernel *out);
/* Single-pass online softmax shape: r0 = max of map0(x) and r1 =
 * finalize1(sum of exp(map0(x) - r0), n, r0) in one sweep (running max and
 * rescaled sum), then `write`. map0 (input 0: x) and finalize1 may be NULL. */
zmlx_status zmlxi_pattern_row_online(const zmlx_expr *map0, const zmlx_expr *finalize1,
                                    const zmlx_expr *write, zmlx_row_mode mode,
                                    zmlx_pattern_kernel *out);
/* Reduction over the leading axis, one thread per column:
 * in0 [zrows, zcols] -> out0 [zcols]. */
zmlx_status zmlxi_pattern_col_reduce(const zmlx_row_reduction *r, zmlx_pattern_kernel *out);

zmlx_pattern_geometry zmlxi_pattern_row_geometry(zmlx_row_mode mode, int64_t rows, int64_t cols,
                                                const zmlx_device_info *info);
zmlx_pattern_geometry zmlxi_pattern_col_geometry(int64_t cols, const zmlx_device_info *info);

/* 1 if `combine` is exactly a + b, max(a, b) or min(a, b) (then the SIMD
 * helpers do the work); *kind gets "sum", "max" or "min". */
int zmlxi_pattern_simd_combine(const zmlx_expr *combine, const char **kind);

/* ------------------------------------------------ builder internals
 * Shared by op.c (the public zmlx_op_* entry points), elementwise.c and
 * map_reduce.c. */

typedef struct zmlx_op_vtable {
  const char *kind; /* "elementwise", "reduce", "map_reduce" */
  zmlx_status (*call)(zmlx_op *op, zmlx_array *const *inputs, const double *params,
                      zmlx_stream *s, zmlx_array **out);
  zmlx_status (*vjp)(zmlx_op *op, zmlx_array *const *inputs, const double *params,
                     zmlx_array *cotangent, zmlx_stream *s, zmlx_array **grads);
  zmlx_status (*jvp)(zmlx_op *op, zmlx_array *const *inputs, const double *params,
                     zmlx_array *const *tangents, zmlx_stream *s, zmlx_array **out);
  zmlx_status (*source)(zmlx_op *op, zmlx_backend b, zmlx_op_direction dir,
                        const zmlx_dtype *input_dtypes, zmlx_sb *sb);
  void (*destroy)(zmlx_op *op);
} zmlx_op_vtable;

typedef struct zmlx_op_kernel_entry {
  char key[160];
  zmlx_kernel *kernel;
} zmlx_op_kernel_entry;

/* The common head of every op object. */
struct zmlx_op {
  const zmlx_op_vtable *vt;
  int n_inputs, n_params;
  pthread_mutex_t lock; /* guards the kernel table */
  zmlx_op_kernel_entry *kernels;
  int n_kernels, cap_kernels;
};

zmlx_status zmlxi_op_init(zmlx_op *op, const zmlx_op_vtable *vt, int n_inputs, int n_params);
/* The forward graph of an elementwise op (NULL for other ops): autograd
 * rebuilds its derivatives as recordable ops for higher-order gradients. */
const zmlx_expr *zmlxi_op_forward_expr(const zmlx_op *op);
void zmlxi_op_fini(zmlx_op *op);

/* The op's kernel object for `key`, generated by `build` on first use. */
typedef zmlx_status (*zmlx_op_build_fn)(const void *ctx, zmlx_pattern_kernel *out);
zmlx_status zmlxi_op_kernel(zmlx_op *op, const char *key, zmlx_op_build_fn build,
                           const void *ctx, zmlx_kernel **out);

/* Append the full source of a generated kernel for backend `b` (with a
 * banner naming it) to sb. `dtypes`: inputs then outputs. */
zmlx_status zmlxi_pattern_append_source(const zmlx_pattern_kernel *pk, zmlx_backend b,
                                       const zmlx_dtype *dtypes, const char *banner,
                                       zmlx_sb *sb);

/* Compute / output dtype of expression kernels: f32, f16 and bf16 are
 * kept; everything else computes and stores as f32. 0 for f64 (refused). */
int zmlxi_expr_dtype_ok(zmlx_dtype dt);

#endif /* ZMLX_GEN_PATTERNS_H */
