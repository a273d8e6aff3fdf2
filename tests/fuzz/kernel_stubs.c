/* What fuzz_kernel_desc links in place of the runtime and the kernel cache:
 * creating a kernel object and rendering its source for a dialect must not
 * touch devices, arrays or the cache, so each of these aborts if called
 * (a finding in itself). The dialect lookup is real; the preludes are
 * stand-ins (rendering pastes them, nothing compiles them). */
#include <stdlib.h>

#include "kernel/cache.h"
#include "runtime/backend.h"
#include "runtime/graph.h"
#include "runtime/internal.h"

const char zmlxi_res_prelude_cuh[] = "/* prelude */\n";
const char zmlxi_res_prelude_cl[] = "/* prelude */\n";
const char zmlxi_res_prelude_metal[] = "/* prelude */\n";

const char *zmlx_backend_name(zmlx_backend b) {
  return b == ZMLX_BACKEND_CUDA ? "cuda" : b == ZMLX_BACKEND_OPENCL ? "opencl"
       : b == ZMLX_BACKEND_METAL ? "metal" : "?";
}

const zmlx_dialect *zmlxi_dialect_for(zmlx_backend b) {
  return b == ZMLX_BACKEND_CUDA ? &zmlxi_dialect_cuda : b == ZMLX_BACKEND_OPENCL
       ? &zmlxi_dialect_opencl : b == ZMLX_BACKEND_METAL ? &zmlxi_dialect_metal : NULL;
}

#define NEVER abort()
zmlx_status zmlx_array_contiguous(zmlx_array *a, zmlx_array **out) { (void)a, (void)out; NEVER; }
int zmlx_array_is_contiguous(const zmlx_array *a) { (void)a; NEVER; }
zmlx_status zmlx_array_release(zmlx_array *a) { (void)a; NEVER; }
zmlx_status zmlx_array_zeros(zmlx_device *d, zmlx_dtype t, int n, const int64_t *s, zmlx_array **o) {
  (void)d, (void)t, (void)n, (void)s, (void)o; NEVER;
}
zmlx_status zmlx_device_get_info(const zmlx_device *d, zmlx_device_info *i) { (void)d, (void)i; NEVER; }
zmlx_status zmlxi_array_alloc(zmlx_device *d, zmlx_stream *s, zmlx_dtype t, int n,
                              const int64_t *sh, zmlx_array **o) {
  (void)d, (void)s, (void)t, (void)n, (void)sh, (void)o; NEVER;
}
zmlx_status zmlxi_builtin_fill(zmlx_array *a, double v, zmlx_stream *s) { (void)a, (void)v, (void)s; NEVER; }
uint64_t zmlxi_cache_generation(void) { NEVER; }
zmlx_status zmlxi_cache_get_function(const zmlx_compile_request *r, const zmlx_cache_key *k, void **f) {
  (void)r, (void)k, (void)f; NEVER;
}
zmlx_status zmlxi_cache_make_key(const zmlx_compile_request *r, zmlx_cache_key *k) { (void)r, (void)k; NEVER; }
void zmlxi_cache_use_begin(void) { NEVER; }
void zmlxi_cache_use_end(void) { NEVER; }
zmlx_status zmlxi_capture_hold(zmlx_graph *g, zmlx_buffer *b) { (void)g, (void)b; NEVER; }
zmlx_graph *zmlxi_capture_on(const zmlx_device *d) { (void)d; NEVER; }
zmlx_status zmlxi_launch(zmlx_device *d, void *s, void *f, const uint32_t b[3], const uint32_t t[3],
                         size_t sh, const zmlx_launch_arg *a, int n) {
  (void)d, (void)s, (void)f, (void)b, (void)t, (void)sh, (void)a, (void)n; NEVER;
}
zmlx_status zmlxi_device_resolve(zmlx_device *d, zmlx_device **o) { (void)d, (void)o; NEVER; }
zmlx_stream *zmlxi_stream_or_default(zmlx_stream *s, zmlx_device *d) { (void)s, (void)d; NEVER; }
