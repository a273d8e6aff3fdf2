/* Launch helpers the catalog families share (declared in kernel_util.h):
 * the geometry of row kernels and the template values they take. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/patterns.h"
#include "kernel/kernel.h"
#include "ops/kernel_util.h"

/* Streaming geometry of the row kernels: TILE chunks in flight per thread
 * and the threads per row. ZMLX_ROW_TILE / ZMLX_ROW_THREADS override them
 * (tuning knobs for benchmarks; bench/NOTES.md has the measurements that
 * chose the defaults). */
static int env_int(const char *name, int fallback, int lo, int hi) {
  const char *v = getenv(name);
  if (!v || !*v) return fallback;
  int x = atoi(v);
  return x >= lo && x <= hi ? x : fallback;
}

void zmlxi_ops_chunk_geometry(zmlx_device *dev, int64_t chunks, int max_per_thread, int *tg,
                             int *nv) {
  zmlx_device_info info;
  int simd = 32, max_t = 1024;
  if (zmlx_device_get_info(dev, &info) == ZMLX_OK) {
    if (info.simd_width > 0) simd = info.simd_width;
    if (info.max_threads_per_threadgroup < max_t) max_t = info.max_threads_per_threadgroup;
  }
  /* At most 256 threads: a row held in registers costs NV * VEC of them
   * per thread, and 1024 such threads do not fit an SM's register file
   * (the launch fails); longer rows stream instead. */
  if (max_t > 256) max_t = 256;
  int t = 1;
  while (t < simd && t * 2 <= max_t) t *= 2;
  const int per_thread = env_int("ZMLX_ROW_CHUNKS", 4, 1, 8);
  while ((int64_t)t * per_thread < chunks && t * 2 <= max_t) t *= 2;
  int64_t per = (chunks + t - 1) / t;
  *tg = t;
  *nv = per <= max_per_thread ? (int)per : 0;
}

void zmlxi_ops_use_chunk_geometry(zmlx_kernel_call *call, int tg, int nv) {
  if (!nv) return;
  call->grid[0] = call->grid[0] / call->threadgroup[0] * tg; /* same group count */
  call->threadgroup[0] = tg;
}

int zmlxi_ops_stream_tile(void) { return env_int("ZMLX_ROW_TILE", 1, 1, 8); }

void zmlxi_ops_use_stream_geometry(zmlx_kernel_call *call, int write_pass) {
  /* Measured on the H100 (bench/NOTES.md): a kernel that only reads its
   * rows is fastest at 256 threads per row (more rows in flight per SM);
   * one that re-reads them to write a row as long is fastest with the
   * row geometry's 1024. */
  int want = env_int("ZMLX_ROW_THREADS", write_pass ? 0 : 256, 32, 1024);
  if (!want || want > (int)call->threadgroup[0] || (want & (want - 1))) return;
  call->grid[0] = call->grid[0] / call->threadgroup[0] * want;
  call->threadgroup[0] = want;
}

/* One threadgroup per row (at most 65536 groups, each looping over rows). */
void zmlxi_ops_row_geometry(zmlx_device *dev, int64_t rows, int64_t cols, zmlx_kernel_call *call) {
  zmlx_device_info info;
  int max_threads = 256, simd = 32;
  if (zmlx_device_get_info(dev, &info) == ZMLX_OK) {
    max_threads = info.max_threads_per_threadgroup;
    simd = info.simd_width > 0 ? info.simd_width : 32;
  }
  if (max_threads > 1024) max_threads = 1024;
  int tg = zmlxi_pattern_threads_per_row(cols, max_threads, simd);
  if (tg > 1024) tg = 1024;
  /* the kernels loop over rows with a stride of the group count */
  int64_t groups = rows < 65536 ? rows : 65536;
  if (groups < 1) groups = 1;
  call->grid[0] = groups * tg;
  call->grid[1] = call->grid[2] = 1;
  call->threadgroup[0] = tg;
  call->threadgroup[1] = call->threadgroup[2] = 1;
}

int zmlxi_ops_xdt(zmlx_dtype dt) { return dt == ZMLX_F32 ? 0 : dt == ZMLX_F16 ? 1 : 2; }

int zmlxi_ops_native_simd(const zmlx_device *dev) {
  return zmlxi_pattern_group_mode(zmlx_device_backend(dev)) == ZMLX_ROW_PER_GROUP;
}

int zmlxi_ops_native_mma(const zmlx_device *dev) {
  zmlx_device_info info;
  return zmlx_device_get_info(dev, &info) == ZMLX_OK && info.has_mma;
}

int zmlxi_ops_native_wgmma(const zmlx_device *dev) {
  zmlx_device_info info;
  return zmlx_device_get_info(dev, &info) == ZMLX_OK && info.has_wgmma;
}
