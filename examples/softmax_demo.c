/* zmlx demo: a row softmax written by hand in the portable kernel dialect
 * (threadgroup memory + barriers), run on the default backend (CUDA when a
 * GPU works, else OpenCL), checked against a C reference in double. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "zmlx.h"

static const char *softmax_body =
    "threadgroup float red[256];\n"
    "uint row = threadgroup_position_in_grid.x, tid = thread_position_in_threadgroup.x;\n"
    "int D = x_shape[1];\n"
    "zmlx_i64 base = (zmlx_i64)row * D;\n"
    "float m = -ZMLX_INF;\n"
    "for (int j = (int)tid; j < D; j += 256) m = fmax(m, x_load(base + j));\n"
    "red[tid] = m;\n"
    "zmlx_barrier();\n"
    "for (uint s = 128; s > 0; s >>= 1) {\n"
    "  if (tid < s) red[tid] = fmax(red[tid], red[tid + s]);\n"
    "  zmlx_barrier();\n"
    "}\n"
    "m = red[0];\n"
    "zmlx_barrier();\n"
    "float sum = 0.0f;\n"
    "for (int j = (int)tid; j < D; j += 256) sum += exp(x_load(base + j) - m);\n"
    "red[tid] = sum;\n"
    "zmlx_barrier();\n"
    "for (uint s = 128; s > 0; s >>= 1) {\n"
    "  if (tid < s) red[tid] += red[tid + s];\n"
    "  zmlx_barrier();\n"
    "}\n"
    "for (int j = (int)tid; j < D; j += 256) out_store(base + j, exp(x_load(base + j) - m) / red[0]);\n";

#define CHECK(call)                                                                       \
  do {                                                                                    \
    zmlx_status st_ = (call);                                                             \
    if (st_ != ZMLX_OK) {                                                                 \
      fprintf(stderr, "%s failed: %s\n%s\n", #call, zmlx_status_string(st_), zmlx_last_error()); \
      return 1;                                                                           \
    }                                                                                     \
  } while (0)

int main(void) {
  const int64_t rows = 64, cols = 1000, shape[2] = {rows, cols};
  zmlx_device *dev;
  zmlx_device_info info;
  CHECK(zmlx_default_device(&dev));
  CHECK(zmlx_device_get_info(dev, &info));
  printf("zmlx %s demo on %s device %d: %s\n", zmlx_version_string(),
         zmlx_backend_name(info.backend), info.index, info.name);

  zmlx_array *x, *y = NULL;
  CHECK(zmlx_array_random_normal(dev, ZMLX_F32, 2, shape, 42, 0.0, 3.0, &x));

  const char *in[] = {"x"}, *out[] = {"out"};
  zmlx_kernel_desc desc = {.name = "row_softmax", .input_names = in, .n_inputs = 1,
                           .output_names = out, .n_outputs = 1, .source = softmax_body};
  zmlx_kernel *k;
  CHECK(zmlx_kernel_create(&desc, &k));
  int ndim = 2;
  const int64_t *shapes[1] = {shape};
  zmlx_dtype dt = ZMLX_F32;
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &x, .outputs = &y,
                           .output_ndims = &ndim, .output_shapes = shapes, .output_dtypes = &dt,
                           .grid = {rows * 256, 1, 1}, .threadgroup = {256, 1, 1}};
  CHECK(zmlx_kernel_launch(k, &call));

  float *hx = malloc(sizeof(float) * rows * cols), *hy = malloc(sizeof(float) * rows * cols);
  CHECK(zmlx_array_to_host(x, hx, sizeof(float) * rows * cols));
  CHECK(zmlx_array_to_host(y, hy, sizeof(float) * rows * cols));
  double max_err = 0;
  for (int64_t r = 0; r < rows; r++) {
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < cols; j++) m = fmax(m, hx[r * cols + j]);
    for (int64_t j = 0; j < cols; j++) s += exp(hx[r * cols + j] - m);
    for (int64_t j = 0; j < cols; j++)
      max_err = fmax(max_err, fabs(hy[r * cols + j] - exp(hx[r * cols + j] - m) / s));
  }
  zmlx_cache_stats cs;
  CHECK(zmlx_cache_get_stats(&cs));
  printf("softmax %lldx%lld: max |error| vs f64 reference = %.3g -> %s\n", (long long)rows,
         (long long)cols, max_err, max_err < 1e-6 ? "OK" : "FAIL");
  printf("kernel cache: %llu compiled (%.1f ms), %llu loaded from disk (%s)\n",
         (unsigned long long)cs.misses, cs.compile_ms, (unsigned long long)cs.disk_hits,
         zmlx_cache_dir());
  free(hx), free(hy);
  zmlx_array_release(x), zmlx_array_release(y);
  zmlx_kernel_destroy(k);
  zmlx_shutdown();
  return max_err < 1e-6 ? 0 : 1;
}
