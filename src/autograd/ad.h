/*
 * Autograd internals (docs/AUTOGRAD.md): the thread-local tape, the node
 * every differentiable op records, and the helpers the rules share.
 *
 * Model. Each thread owns at most one tape, created when its outermost
 * grad / vjp / jvp call starts and freed when that call returns (success or
 * failure). Nested calls on the same thread push *levels* onto the same
 * tape; a level is the range of nodes recorded since it started. A tracked
 * array carries a value id in its `grad_node` hook:
 *
 *     grad_node = (tape generation << 32) | value index (1-based)
 *
 * so an array that outlives its tape (a returned value or gradient) simply
 * carries a stale generation and reads as a constant afterwards; nothing
 * has to be cleared and no array is kept alive just to be identified. Only
 * outputs of recorded ops get ids, and those are always arrays the op has
 * just created, so no other thread can be looking at them.
 *
 * Recording happens when a level is active on this thread, recording is not
 * paused (custom functions pause it around their forward callback) and at
 * least one input of the op is tracked. Outside a grad call the cost of a
 * differentiable op is one thread-local load.
 *
 * Higher order. The backward pass of an inner level runs with recording on
 * (when an outer level exists), so the ops a VJP rule calls are recorded
 * too and the outer level differentiates through them: rules written with
 * differentiable zmlx ops are differentiable to any order. The outermost
 * backward pass pauses recording.
 */
#ifndef ZMLX_AUTOGRAD_AD_H
#define ZMLX_AUTOGRAD_AD_H

#include "runtime/internal.h"

typedef struct zmlx_ad_node zmlx_ad_node;

/* What a rule needs to know about an array it may not have kept. */
typedef struct zmlx_ad_meta {
  zmlx_dtype dtype;
  int ndim;
  int64_t shape[ZMLX_MAX_DIMS];
  zmlx_device *device;
} zmlx_ad_meta;

/* The derivative rules of one kind of op. */
typedef struct zmlx_ad_rule {
  const char *name; /* for messages: "mul", "matmul", "custom function" */
  /* Reverse mode. cot[j]: the cotangent of output j, never NULL (zeros when
   * unused), in the output's dtype. Fill grads[i] for inputs with need[i]
   * (a new reference; NULL means zero). A gradient may have the broadcast
   * shape of the op's output: the caller sums it down to the input's shape
   * and casts it to the input's dtype. */
  zmlx_status (*vjp)(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                     zmlx_array **grads);
  /* Forward mode. tan[i]: the tangent of input i or NULL (zero). Fill
   * out_tan[j] (a new reference; NULL means zero), same conventions. NULL
   * when the op has no forward-mode rule. */
  zmlx_status (*jvp)(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out_tan);
  void (*free_ctx)(void *ctx); /* NULL: ctx is not owned */
} zmlx_ad_rule;

/* Which arrays a node keeps for its rules (the rest are released when the
 * op returns; only their metadata stays). */
enum { ZMLX_AD_SAVE_INPUTS = 1u, ZMLX_AD_SAVE_OUTPUTS = 2u };

struct zmlx_ad_node {
  const zmlx_ad_rule *rule;
  void *ctx; /* per-call data of the rule (axes, shapes, parameters) */
  int n_in, n_out;
  uint32_t *in_val, *out_val; /* value index per array; 0 = not tracked */
  zmlx_ad_meta *in_meta, *out_meta;
  zmlx_array **in, **out; /* kept arrays (retained) or NULL */
};

/* ------------------------------------------------------------------ tape */

/* Is an op run now recorded (given a tracked input)? */
int zmlxi_ad_recording(void);
/* Pause / resume recording on this thread (nestable). */
void zmlxi_ad_pause(void);
void zmlxi_ad_resume(void);
/* The value index of `a` on this thread's tape, 0 when `a` is a constant
 * (no id, or an id of another tape). */
uint32_t zmlxi_ad_value_of(const zmlx_array *a);
/* Whether any of the arrays is tracked and recording is on. */
int zmlxi_ad_should_record(zmlx_array *const *in, int n_in);

/* Record one op. `in`/`out` are the op's arrays; the outputs must be arrays
 * the op created in this call (they receive value ids). Takes ownership of
 * ctx (freed through rule->free_ctx on every path, including when nothing
 * is recorded). */
zmlx_status zmlxi_ad_record(const zmlx_ad_rule *rule, void *ctx, zmlx_array *const *in, int n_in,
                           zmlx_array *const *out, int n_out, unsigned save);

/* Levels. push creates the tape on first use; pop frees it with the last
 * level. `view` arrays given to zmlxi_ad_make_leaf get value ids. */
zmlx_status zmlxi_ad_level_push(void);
void zmlxi_ad_level_pop(void);
zmlx_status zmlxi_ad_make_leaf(zmlx_array *view);
/* Whether the context around the innermost level records (an enclosing
 * level that is not paused): only then is a sweep worth recording. */
int zmlxi_ad_enclosing_records(void);
/* Node range of the innermost level: [start, count). */
int32_t zmlxi_ad_level_start(void);
int32_t zmlxi_ad_node_count(void);
zmlx_ad_node *zmlxi_ad_node_at(int32_t i);
uint32_t zmlxi_ad_value_count(void);

/* ------------------------------------------------------------- sweeps */

/* Reverse sweep over the innermost level: cotangent `seed` for value
 * `root`; grads[l] for each leaf value (new references, the leaf's shape
 * and dtype; zeros where the root does not depend on it). */
zmlx_status zmlxi_ad_backward(uint32_t root, zmlx_array *seed, const uint32_t *leaves,
                             const zmlx_ad_meta *leaf_meta, int n_leaves, zmlx_array **grads);
/* Forward sweep over the innermost level: tangents for leaf values (NULL:
 * zero); *out_tan = the tangent of value `root` (zeros of root_meta when
 * it does not depend on any leaf). */
zmlx_status zmlxi_ad_forward(const uint32_t *leaves, zmlx_array *const *tangents, int n_leaves,
                            uint32_t root, const zmlx_ad_meta *root_meta, zmlx_array **out_tan);

/* ------------------------------------------------------------- helpers */

void zmlxi_ad_meta_of(const zmlx_array *a, zmlx_ad_meta *m);
/* Differentiable dtypes: f32, f16, bf16. */
int zmlxi_ad_is_float(zmlx_dtype dt);
/* Zeros with the metadata's shape, dtype and device. */
zmlx_status zmlxi_ad_zeros(const zmlx_ad_meta *m, zmlx_array **out);
/* Sum `g` over broadcast axes down to the metadata's shape and cast it to
 * `dt`; a new reference (possibly `g` itself). Differentiable. */
zmlx_status zmlxi_ad_reduce_to(zmlx_array *g, const zmlx_ad_meta *m, zmlx_dtype dt,
                              zmlx_array **out);
/* New reference to `a` in dtype `dt` (the same array when it already is). */
zmlx_status zmlxi_ad_cast(zmlx_array *a, zmlx_dtype dt, zmlx_array **out);
/* Release n arrays and set them to NULL. */
void zmlxi_ad_release_all(zmlx_array **a, int n);
int zmlxi_ad_same_shape(const zmlx_array *a, int ndim, const int64_t *shape);

/* ------------------------------------------------- expression ops (cached) */

/* An elementwise op whose expression text autograd knows, so its VJP and
 * JVP can be built as expression ops themselves (higher order). Cached for
 * the process by (text, input names, parameter names); never freed. */
typedef struct zmlx_ad_expr zmlx_ad_expr;
zmlx_status zmlxi_ad_expr_get(const char *text, const char *const *input_names, int n_inputs,
                             const char *const *param_names, int n_params, zmlx_ad_expr **out);
/* Differentiable call of an expression op. */
zmlx_status zmlxi_ad_expr_apply(zmlx_ad_expr *e, zmlx_array *const *inputs, int n,
                               const double *params, zmlx_array **out);
/* Shorthand for the library's own one-input ops ("x * s"; param may be
 * NULL for none, then p is ignored). */
zmlx_status zmlxi_ad_map1(const char *text, zmlx_array *x, const char *param, double p,
                         zmlx_array **out);
/* The adjoint of a strided slice (slice's VJP): new zeros with the
 * metadata's shape and src's dtype, with `src` written into the window that
 * start/step select. Recorded like any op (its VJP is the slice). */
zmlx_status zmlxi_ad_pad(zmlx_array *src, const zmlx_ad_meta *m, const int64_t *start,
                        const int64_t *step, zmlx_array **out);

/* --------------------------------------------------------- dialect kernels */

/* out (dense, new) = sum of x over the axes with axis_mask bit set. */
zmlx_status zmlxi_ad_kernel_sum(zmlx_array *x, unsigned axis_mask, zmlx_array **out);
/* Write every element of src into the strided view `window` of `dst`
 * (`window` is a view of dst's buffer with src's shape). */
zmlx_status zmlxi_ad_kernel_scatter(zmlx_array *src, zmlx_array *window, zmlx_array *dst);
/* out = a @ b for a [B..., M, K], b [B..., K, N] (same batch shape, any
 * strides) into the dense, preallocated out [B..., M, N]. */
zmlx_status zmlxi_ad_kernel_gemm(void *ctx, zmlx_array *a, zmlx_array *b, zmlx_array *out);
/* Products the device's library GEMM ran (the rest went to the dialect
 * GEMM): the verifier's path rows read it. */
extern _Thread_local long zmlxi_ad_gemm_library_runs;

#endif /* ZMLX_AUTOGRAD_AD_H */
