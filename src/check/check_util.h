/*
 * Helpers of the catalog's verifier (`zmlx check`), shared by every
 * src/check/<family>_check.c and defined in check_util.c. Not part of
 * libzmlx: the check library that the CLI, the tests and bench/ link.
 * Prefix zck_ (zmlx check): nothing here is public API.
 *
 * A case draws host values (zck_uniform, rounded to the dtype the device
 * will hold: zck_round), uploads them (zck_upload / zck_random), runs the
 * op into poisoned outputs, downloads (zck_download), compares with an f64
 * reference under a bound derived from the dtype and the op's error
 * analysis (zck_bound_of / zck_bound_sum, zck_within*: |got - want| <=
 * atol + rtol |want|) and emits a row (zck_emit). Bad input: zck_expect.
 */
#ifndef ZMLX_CHECK_CHECK_UTIL_H
#define ZMLX_CHECK_CHECK_UTIL_H

#include "check/catalog.h"
#include "ops/kernel_util.h"

/* --------------------------------------------------------- host values */

/* xorshift64: the next raw value of `state` (0 is replaced by a constant). */
uint64_t zck_next(uint64_t *state);
/* Uniform in [lo, hi). */
double zck_uniform(uint64_t *state, double lo, double hi);
/* v as a value of dtype dt holds it (f32, f16, bf16: rounded to nearest
 * even; other dtypes unchanged). */
double zck_round(zmlx_dtype dt, double v);

/* Element i of a host buffer of dtype dt, written from / read as f64. */
void zck_store(zmlx_dtype dt, void *buf, int64_t i, double v);
double zck_load(zmlx_dtype dt, const void *buf, int64_t i);

/* ------------------------------------------------------ input families */

/* The kinds of input a case draws, rows x cols values each. What a family
 * is for: OFFSET (every row shifted by +-100..1000) catches a missing max
 * subtraction (exp overflows) and cancelling variance formulas; TINY
 * (magnitudes ~1e-3, a mean square near a norm's eps) catches eps in the
 * wrong place; TIES (rows from {-1, -0, +0} and {-0, +0, 1}: the max or the
 * min is a tie of signed zeros) catches selection order and signed-zero bugs; SPECIAL puts +-inf and NaN among finite values. */
typedef enum zck_family {
  ZCK_UNIFORM,
  ZCK_OFFSET,
  ZCK_TINY,
  ZCK_TIES,
  ZCK_SPECIAL,
  ZCK_FAMILIES
} zck_family;
/* "", " offset", " tiny", " ties", " inf/nan": appended to case names. */
const char *zck_family_name(zck_family f);
/* rows x cols values of family f over a base range [lo, hi), each rounded
 * to dt (so the reference sees what the device holds). */
void zck_fill(zck_family f, double *v, int64_t rows, int64_t cols, double lo, double hi,
              zmlx_dtype dt, uint64_t *rng);

/* ------------------------------------------------------ device arrays */

/* An array of dtype dt from f64 host values (converted like a C cast for
 * integers, rounded for floats). */
zmlx_status zck_upload(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                       const double *v, zmlx_array **out);
/* Values uniform in [lo, hi) rounded to dt, written into v (the shape's
 * size) and uploaded. */
zmlx_status zck_random(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                       double lo, double hi, uint64_t *rng, double *v, zmlx_array **out);
/* a's values (any dtype, any strides) as f64 in C order; *v is malloc'ed
 * (the caller frees it), NULL on failure. */
zmlx_status zck_download(zmlx_array *a, double **v);
/* Fill the device's pool with NaN at this size, so that the next
 * allocation of it (an output the op allocates itself) starts poisoned. */
void zck_poison_pool(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape);
/* sum(y * w): the scalar loss whose gradient the checks compare, for a
 * cotangent w of y's shape. */
zmlx_status zck_weighted_sum(zmlx_array *y, zmlx_array *w, zmlx_array **out);

/* --------------------------------------------------------- tolerances */

/* The kinds of result whose bounds are derived (zck_bound_of). */
typedef enum zck_tol_kind {
  ZCK_TOL_ROW,        /* a row statistic and what it normalizes (softmax, cross-entropy) */
  ZCK_TOL_ELEMENTWISE,/* pointwise ops and per-row reductions (activations, GLU, RoPE,
                       * quantization, reductions, dropout) */
  ZCK_TOL_NORM,       /* norm forwards (mean and rstd, then a scale) */
  ZCK_TOL_NORM_GRAD,  /* norm gradients (two row sums per element) */
  ZCK_TOL_KINDS
} zck_tol_kind;
/* The tolerance of zmlx_check_grad's analytic gradient against central
 * finite differences in f32 (step 1e-3): 1e-2 of the gradient's scale. The
 * difference quotient's own error, u32 |f| / h + h^2 |f^(3)| / 6, is 6e-5
 * |f| + 2e-7 |f^(3)|: the margin is for losses that sum many terms. */
double zck_fd_tol(void);

/* A derived bound |got - want| <= atol + rtol |want| + floor (check_util.c
 * says where each term comes from); atol is per unit of the values the
 * result comes from: zck_within_scaled multiplies it by each element's. */
typedef struct zck_bound {
  double atol, rtol, floor;
} zck_bound;
/* The unit roundoff of dt: 2^-24 (f32), 2^-11 (f16), 2^-8 (bf16). */
double zck_unit_roundoff(zmlx_dtype dt);
/* The bound of a result of kind `kind` stored in dtype dt. scale: the size
 * of the values it is computed from (the largest |input|, at least 1): f32
 * working error on values of that size does not shrink with the result
 * (gelu's tail, a row whose terms cancel). n: the length of the longest sum
 * behind one element (1 for pointwise results). */
zck_bound zck_bound_of(zck_tol_kind kind, zmlx_dtype dt, double scale, int64_t n);
/* The bound of a result that is a sum of n terms which may cancel (a
 * layernorm's centred row, a gradient's row sums, a reduction): its atol is
 * per unit of the terms' magnitude, which the caller passes per element to
 * zck_within_scaled; rtol is the kind's f32 steps after the sum and the
 * final rounding to dt. */
zck_bound zck_bound_sum(zck_tol_kind kind, zmlx_dtype dt, int64_t n);
/* The bound widened by `factor` (a result that goes through `factor` times
 * the roundings of its kind, named where it is used). */
zck_bound zck_bound_times(zck_bound b, double factor);
/* Compare got with want under b: *err and *tol get |got - want| and
 * atol + rtol |want| at the element where their ratio is largest (non-finite
 * values: equal is exact, NaN or inf where the reference differs is an
 * infinite error).
 * Returns 1 when every element is within. */
int zck_within(const double *got, const double *want, int64_t n, zck_bound b, double *err,
               double *tol);
/* zck_within with element i's atol times |scale[i]| (0 where it is not
 * finite): for results whose f32 error follows their own input (gelu(-30)
 * is not off by what gelu(30) may be) or the size of their own terms (a
 * gradient's row sums). */
int zck_within_scaled(const double *got, const double *want, const double *scale, int64_t n,
                      zck_bound b, double *err, double *tol);
/* zck_within (scale NULL) or zck_within_scaled, merged into a running worst (err, tol) pair: for results
 * checked in parts (q and k, two gradients). Start from *err = -1. */
int zck_within_acc(const double *got, const double *want, const double *scale, int64_t n,
                   zck_bound b, double *err, double *tol);

/* --------------------------------------------------------------- rows */

/* Emit one row (shape: the case, at most 95 characters are kept). */
void zck_emit(const zmlx_check_opts *o, const char *op, const char *what, zmlx_dtype dt,
              const char *shape, double err, double tol, int pass);
/* A failed case: the op or the check's plumbing returned `st`. */
void zck_emit_fail(const zmlx_check_opts *o, const char *op, const char *what, zmlx_dtype dt,
                   const char *shape, zmlx_status st);
/* Bad input: passes when the call returned `want` and, for a failure, its
 * message names `needle` (NULL: says anything). Releases to_release. */
void zck_expect(const zmlx_check_opts *o, const char *op, const char *what, zmlx_status got,
                zmlx_array *to_release, zmlx_status want, const char *needle);
/* "[2, 3, 4]" followed by " extra" when extra is not NULL. */
void zck_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape, const char *extra);

#endif /* ZMLX_CHECK_CHECK_UTIL_H */
