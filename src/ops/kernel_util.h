/*
 * Kernel helpers the op families share (defined in kernel_util.c): kernels
 * from .zk text (with or without the 16-byte access helpers of
 * kernels/vec_io.zk in front), and the geometry of row and elementwise
 * launches.
 */
#ifndef ZMLX_OPS_KERNEL_UTIL_H
#define ZMLX_OPS_KERNEL_UTIL_H

#include "kernel/kernel.h"
#include "runtime/internal.h"

/* A kernel from a .zk file with kernels/vec_io.zk's 16-byte access helpers
 * (ZV_LOAD, ZV_STORE, ZV_ROUND, ZV_GROUP_REDUCE) in front of it (kernel_util.c).
 * Only for kernels that use them: the helpers' text mentions barriers, so
 * the kernel object treats the kernel as one with barriers (its grid must
 * then be whole threadgroups). */
zmlx_status zmlx_ops_vec_kernel_from_desc(const zmlx_kernel_desc *desc, zmlx_kernel **out);
/* Geometry of a row kernel that holds its row in registers, `chunks`
 * 16-byte chunks per row: the fewest threads (a power of two, at least a
 * SIMD group, at most 256) that hold the row in <= 4 chunks each, so many
 * rows are in flight per SM; *nv = chunks per thread, or 0 when a row would
 * need more than max_per_thread (the kernel's streaming form runs then). */
void zmlx_ops_chunk_geometry(zmlx_device *dev, int64_t chunks, int max_per_thread, int *tg,
                             int *nv);
/* With nv > 0: `call` (set up by zmlx_ops_row_geometry) keeps its group
 * count but runs tg threads per group. */
void zmlx_ops_use_chunk_geometry(zmlx_kernel_call *call, int tg, int nv);
/* The XDT template of kernels/vec_io.zk for a float dtype: 0 f32, 1 f16,
 * 2 bf16. */
int zmlx_ops_xdt(zmlx_dtype dt);
/* Whether the device's SIMD helpers are native (CUDA, Metal) rather than
 * emulated in threadgroup memory (OpenCL on CPUs): the NATIVE_SIMD template. */
int zmlx_ops_native_simd(const zmlx_device *dev);
/* The streaming form's TILE template (16-byte loads in flight per thread)
 * and its threads per row: zmlx_ops_row_geometry's for a kernel with a
 * write pass over the row, at most 256 for one that only reads it.
 * ZMLX_ROW_TILE, ZMLX_ROW_THREADS and ZMLX_ROW_CHUNKS (the register form's
 * chunks per thread) override the defaults, for tuning sweeps
 * (bench/sweep_rows.sh). */
int zmlx_ops_stream_tile(void);
void zmlx_ops_use_stream_geometry(zmlx_kernel_call *call, int write_pass);

/* A kernel from .zk text with row-contiguous inputs (strided views are
 * made dense by the kernel object). */
zmlx_status zmlx_ops_kernel(const char *name, const char *zk, const char *const *inputs,
                            int n_inputs, const char *const *outputs, int n_outputs,
                            const char *const *params, const zmlx_dtype *param_dtypes,
                            int n_params, zmlx_kernel **out);
/* The same with kernels/vec_io.zk's helpers in front (zmlx_ops_vec_kernel_from_desc). */
zmlx_status zmlx_ops_vec_kernel(const char *name, const char *zk,
                                const char *const *inputs, int n_inputs,
                                const char *const *outputs, int n_outputs,
                                const char *const *params,
                                const zmlx_dtype *param_dtypes, int n_params,
                                zmlx_kernel **out);
/* The same with one output named "out". */
zmlx_status zmlx_ops_kernel_one_out(const char *name, const char *file, const char *const *inputs,
                                    int n_inputs, const char *const *params,
                                    const zmlx_dtype *param_dtypes, int n_params,
                                    zmlx_kernel **out);
/* One threadgroup per row (at most 65536 groups, each looping over rows). */
void zmlx_ops_row_geometry(zmlx_device *dev, int64_t rows, int64_t cols, zmlx_kernel_call *call);

#endif /* ZMLX_OPS_KERNEL_UTIL_H */
