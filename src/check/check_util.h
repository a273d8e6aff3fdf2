/*
 * Helpers of the catalog's verifier (`zmlx check`) and benchmarks, defined
 * in check_util.c. Not part of libzmlx: the check library that the CLI and
 * the tests link.
 *
 * Two naming sets remain because two families were written side by side:
 * zmlx_opck_* (first for softmax) and zmlx_rg_* (first for RoPE); every
 * family uses one or both. They overlap (upload/download, tolerances, row
 * emission).
 */
#ifndef ZMLX_CHECK_CHECK_UTIL_H
#define ZMLX_CHECK_CHECK_UTIL_H

#include "check/catalog.h"
#include "ops/kernel_util.h"

/* ---------------- the zmlx_opck_* set (kernel_util.c, check_util.c) */

uint64_t zmlx_opck_next(uint64_t *state);
double zmlx_opck_uniform(uint64_t *state, double lo, double hi);
double zmlx_opck_round(zmlx_dtype dt, double v);
zmlx_status zmlx_opck_upload(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                             const double *v, zmlx_array **out);
double *zmlx_opck_download(zmlx_array *a);
double zmlx_opck_err_rel1(const double *got, const double *want, int64_t n);
double zmlx_opck_err_relmax(const double *got, const double *want, int64_t n);
/* max |got - want| / max |terms|: the error of a sum whose terms may cancel,
 * against the size of its terms (`terms`: per element, from the reference). */
double zmlx_opck_err_terms(const double *got, const double *want, const double *terms,
                           int64_t n);
double zmlx_opck_tol(zmlx_dtype dt);
void zmlx_opck_emit(const zmlx_check_opts *o, const char *op, const char *what, zmlx_dtype dt,
                    const char *shape, double err, double tol, int pass);
void zmlx_opck_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape, const char *extra);
/* sum(y * w): the scalar loss whose gradient the checks compare, for a
 * cotangent w of y's shape. */
zmlx_status zmlx_opck_weighted_sum(zmlx_array *y, zmlx_array *w, zmlx_array **out);
void zmlx_opck_bad(const zmlx_check_opts *o, const char *op, const char *what, zmlx_status got,
                   zmlx_status want);

/* ------------------ the zmlx_rg_* set (kernel_util.c, check_util.c) */

double zmlx_rg_uniform(uint64_t *s);
double zmlx_rg_round(zmlx_dtype dt, double v);
zmlx_status zmlx_rg_upload(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                           const double *v, zmlx_array **out);
zmlx_status zmlx_rg_random(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                           double lo, double hi, uint64_t *rng, double *v, zmlx_array **out);
zmlx_status zmlx_rg_download(zmlx_array *a, double **v);
double zmlx_rg_err(const double *got, const double *want, int64_t n);
void zmlx_rg_emit(const zmlx_check_opts *o, const char *op, const char *what, zmlx_dtype dt,
                  const char *shape, double err, double tol, int pass);
void zmlx_rg_emit_fail(const zmlx_check_opts *o, const char *op, const char *what, zmlx_dtype dt,
                       const char *shape, zmlx_status st);
void zmlx_rg_expect(const zmlx_check_opts *o, const char *op, const char *what, zmlx_status got,
                    zmlx_array *to_release, zmlx_status want, const char *needle);
double zmlx_rg_tol(zmlx_dtype dt);
void zmlx_rg_poison_pool(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape);

#endif /* ZMLX_CHECK_CHECK_UTIL_H */
