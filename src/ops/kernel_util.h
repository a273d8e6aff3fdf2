/*
 * What the op families share for their kernels: the kernel-set tables
 * (kernel/kernel_set.h), the 16-byte access helpers of kernels/vec_io.zk
 * (a spec's prelude), and the geometry of row launches (kernel_util.c).
 */
#ifndef ZMLX_OPS_KERNEL_UTIL_H
#define ZMLX_OPS_KERNEL_UTIL_H

#include "kernel/kernel.h"
#include "kernel/kernel_set.h"
#include "runtime/internal.h"

/* kernels/vec_io.zk: the 16-byte access helpers, a kernel_spec prelude. */
extern const char zmlxi_res_vec_io_zk[];

/* Geometry of a row kernel that holds its row in registers, `chunks`
 * 16-byte chunks per row: the fewest threads (a power of two, at least a
 * SIMD group, at most 256) that hold the row in <= 4 chunks each, so many
 * rows are in flight per SM; *nv = chunks per thread, or 0 when a row would
 * need more than max_per_thread (the kernel's streaming form runs then). */
void zmlxi_ops_chunk_geometry(zmlx_device *dev, int64_t chunks, int max_per_thread, int *tg,
                             int *nv);
/* With nv > 0: `call` (set up by zmlxi_ops_row_geometry) keeps its group
 * count but runs tg threads per group. */
void zmlxi_ops_use_chunk_geometry(zmlx_kernel_call *call, int tg, int nv);
/* The XDT template of kernels/vec_io.zk for a float dtype: 0 f32, 1 f16,
 * 2 bf16. */
int zmlxi_ops_xdt(zmlx_dtype dt);
/* Whether the device's SIMD helpers are native (CUDA, Metal) rather than
 * emulated in threadgroup memory (OpenCL on CPUs): the NATIVE_SIMD template. */
int zmlxi_ops_native_simd(const zmlx_device *dev);
/* Whether the device has the dialect's warp matrix products (zmlx_mma_*,
 * zmlx_ldsm_*): the NATIVE_MMA template. */
int zmlxi_ops_native_mma(const zmlx_device *dev);
/* Hopper's warpgroup products (the NATIVE_WGMMA branch of a kernel). */
int zmlxi_ops_native_wgmma(const zmlx_device *dev);
/* The streaming form's TILE template (16-byte loads in flight per thread)
 * and its threads per row: zmlxi_ops_row_geometry's for a kernel with a
 * write pass over the row, at most 256 for one that only reads it.
 * ZMLX_ROW_TILE, ZMLX_ROW_THREADS and ZMLX_ROW_CHUNKS (the register form's
 * chunks per thread) override the defaults, for tuning sweeps
 * (bench/sweep_rows.sh). */
int zmlxi_ops_stream_tile(void);
void zmlxi_ops_use_stream_geometry(zmlx_kernel_call *call, int write_pass);

/* One threadgroup per row (at most 65536 groups, each looping over rows). */
void zmlxi_ops_row_geometry(zmlx_device *dev, int64_t rows, int64_t cols, zmlx_kernel_call *call);

#endif /* ZMLX_OPS_KERNEL_UTIL_H */
