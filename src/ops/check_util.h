/*
 * Helpers the catalog families share for their kernels and `zmlx check`
 * cases, declared once here instead of by hand in each user.
 *
 * Kernel helpers are defined in kernel_util.c, check helpers in
 * check_util.c. Two naming sets remain because two families were written
 * side by side: zmlx_opck_* (first for softmax) and zmlx_rg_* (first for
 * RoPE); every family uses one or both. They overlap (upload/download,
 * tolerances, row emission); folding them into one set is a rename across
 * the families, left for a quiet moment.
 */
#ifndef ZMLX_OPS_CHECK_UTIL_H
#define ZMLX_OPS_CHECK_UTIL_H

#include "ops/catalog.h"

/* A kernel from a .zk file with kernels/vec_io.zk's 16-byte access helpers
 * (ZV_LOAD, ZV_STORE, ZV_ROUND, ZV_GROUP_REDUCE) in front of it (kernel_util.c).
 * Only for kernels that use them: the helpers' text mentions barriers, so
 * the kernel object treats the kernel as one with barriers (its grid must
 * then be whole threadgroups). */
zmlx_status zmlx_ops_kernel_from_zk(const zmlx_kernel_desc *desc, zmlx_kernel **out);
/* Geometry of a row kernel that holds its row in registers, `chunks`
 * 16-byte chunks per row: the fewest threads (a power of two, at least a
 * SIMD group, at most 256) that hold the row in <= 4 chunks each, so many
 * rows are in flight per SM; *nv = chunks per thread, or 0 when a row would
 * need more than max_per_thread (the kernel's streaming form runs then). */
void zmlx_ops_chunk_geometry(zmlx_device *dev, int64_t chunks, int max_per_thread, int *tg,
                             int *nv);
/* With nv > 0: `call` (set up by zmlx_opck_row_geometry) keeps its group
 * count but runs tg threads per group. */
void zmlx_ops_use_chunk_geometry(zmlx_kernel_call *call, int tg, int nv);
/* The XDT template of kernels/vec_io.zk for a float dtype: 0 f32, 1 f16,
 * 2 bf16. */
int zmlx_ops_xdt(zmlx_dtype dt);
/* Whether the device's SIMD helpers are native (CUDA, Metal) rather than
 * emulated in threadgroup memory (OpenCL on CPUs): the NATIVE_SIMD template. */
int zmlx_ops_native_simd(const zmlx_device *dev);
/* The streaming form's TILE template (16-byte loads in flight per thread)
 * and its threads per row: zmlx_opck_row_geometry's for a kernel with a
 * write pass over the row, at most 256 for one that only reads it.
 * ZMLX_ROW_TILE, ZMLX_ROW_THREADS and ZMLX_ROW_CHUNKS (the register form's
 * chunks per thread) override the defaults, for tuning sweeps
 * (bench/sweep_rows.sh). */
int zmlx_ops_stream_tile(void);
void zmlx_ops_use_stream_geometry(zmlx_kernel_call *call, int write_pass);

/* ---------------- the zmlx_opck_* set (kernel_util.c, check_util.c) */

zmlx_status zmlx_opck_kernel_from_zk(const char *name, const char *zk, const char *const *inputs,
                                     int n_inputs, const char *const *outputs, int n_outputs,
                                     const char *const *params, const zmlx_dtype *param_dtypes,
                                     int n_params, zmlx_kernel **out);
/* The same with kernels/vec_io.zk's helpers in front (zmlx_ops_kernel_from_zk). */
zmlx_status zmlx_opck_vec_kernel_from_zk(const char *name, const char *zk,
                                         const char *const *inputs, int n_inputs,
                                         const char *const *outputs, int n_outputs,
                                         const char *const *params,
                                         const zmlx_dtype *param_dtypes, int n_params,
                                         zmlx_kernel **out);
void zmlx_opck_row_geometry(zmlx_device *dev, int64_t rows, int64_t cols, zmlx_kernel_call *call);
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

zmlx_status zmlx_rg_kernel_from_zk(const char *name, const char *file, const char *const *inputs,
                                   int n_inputs, const char *const *params,
                                   const zmlx_dtype *param_dtypes, int n_params,
                                   zmlx_kernel **out);
void zmlx_rg_grid(zmlx_kernel_call *c, int64_t n);
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

#endif /* ZMLX_OPS_CHECK_UTIL_H */
