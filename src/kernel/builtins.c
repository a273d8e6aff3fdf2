/* Built-in kernels of the runtime (copy/cast, fill, arange, random), written
 * in the dialect (the .zk files in src/kernel/kernels) and run through the same kernel
 * objects and cache as user kernels. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/graph.h"
#include "kernel/kernel.h"
#include "kernel/kernel_set.h"
#include "runtime/internal.h"

extern const char zmlxi_res_copy_zk[];
extern const char zmlxi_res_fill_zk[];
extern const char zmlxi_res_arange_zk[];
extern const char zmlxi_res_random_zk[];

enum { BUILTIN_COPY, BUILTIN_FILL, BUILTIN_ARANGE, BUILTIN_RANDOM, BUILTIN_COUNT };

static const zmlx_kernel_spec SPECS[BUILTIN_COUNT] = {
    [BUILTIN_COPY] = ZMLX_KSPEC("copy", zmlxi_res_copy_zk, "src", "dst", "n:i64"),
    [BUILTIN_FILL] = ZMLX_KSPEC("fill", zmlxi_res_fill_zk, "", "out", "n:i64, value:f32, ivalue:i64"),
    [BUILTIN_ARANGE] = ZMLX_KSPEC("arange", zmlxi_res_arange_zk, "", "out",
                                  "n:i64, start:f32, step:f32, istart:i64, istep:i64"),
    [BUILTIN_RANDOM] = ZMLX_KSPEC("random", zmlxi_res_random_zk, "", "out",
                                  "n:i64, seed_lo:u32, seed_hi:u32, p0:f32, p1:f32"),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("built-in", SPECS);

static zmlx_status get_builtin(int which, zmlx_kernel **out) {
  return zmlxi_kernel_set_get(&KERNELS, which, out);
}

/* Launch one thread per element of a dense output, 2-D past 2^30 threads. */
static zmlx_status launch_elementwise(int which, zmlx_array *in, zmlx_array *out,
                                      const double *params, const zmlx_template_arg *t, int nt,
                                      zmlx_stream *s) {
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(get_builtin(which, &k));
  if (out->size == 0) return ZMLX_OK;
  zmlx_kernel_call call = {.n_inputs = in ? 1 : 0, .n_outputs = 1,
                           .inputs = in ? &in : NULL, .outputs = &out, .params = params,
                           .templates = t, .n_templates = nt, .stream = s,
                           .device = out->buffer->device};
  zmlxi_kernel_call_grid_1d(&call, out->size);
  return zmlx_kernel_launch(k, &call);
}

/* Integer dtypes take the exact integer path of fill/arange. bool does not:
 * it stores value != 0 from the float value, as a C cast to bool does. */
static int is_integer_dtype(zmlx_dtype dt) {
  return dt != ZMLX_F16 && dt != ZMLX_BF16 && dt != ZMLX_F32 && dt != ZMLX_F64 && dt != ZMLX_BOOL;
}

zmlx_status zmlxi_builtin_copy(zmlx_array *src, zmlx_array *dst, zmlx_stream *s) {
  if (src->size != dst->size)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "copy: %lld elements into %lld", (long long)src->size,
                     (long long)dst->size);
  double n = (double)dst->size;
  return launch_elementwise(BUILTIN_COPY, src, dst, &n, NULL, 0, s);
}

/* f64 fills go through the host: an f64 kernel parameter would not compile
 * on devices without fp64, and f64 arrays are rare. */
static zmlx_status fill_f64_on_host(zmlx_array *a, double value) {
  zmlx_device *d = a->buffer->device;
  ZMLX_CHECK(zmlxi_capture_refuse(d, "an f64 fill (a host write)"));
  double *tmp = malloc((size_t)a->size * sizeof *tmp);
  if (!tmp) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int64_t i = 0; i < a->size; i++) tmp[i] = value;
  zmlx_status st = d->ops->write(d->index, zmlxi_stream_or_default(NULL, d)->handle, a->buffer->handle,
                                 (size_t)a->offset * 8, tmp, (size_t)a->size * 8);
  free(tmp);
  return st;
}

zmlx_status zmlxi_builtin_fill(zmlx_array *a, double value, zmlx_stream *s) {
  if (!zmlx_array_is_contiguous(a))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "fill: the array must be contiguous");
  if (a->dtype == ZMLX_F64 && a->size) return fill_f64_on_host(a, value);
  double params[3] = {(double)a->size, value, value};
  zmlx_template_arg t = {.name = "FILL_INT", .kind = ZMLX_TEMPLATE_BOOL,
                         .value = is_integer_dtype(a->dtype)};
  return launch_elementwise(BUILTIN_FILL, NULL, a, params, &t, 1, s);
}

zmlx_status zmlxi_builtin_arange(zmlx_array *a, double start, double step, zmlx_stream *s) {
  if (a->dtype == ZMLX_F64)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "arange: f64 is host-side only; create f32 and convert");
  double params[5] = {(double)a->size, start, step, start, step};
  zmlx_template_arg t = {.name = "FILL_INT", .kind = ZMLX_TEMPLATE_BOOL,
                         .value = is_integer_dtype(a->dtype)};
  return launch_elementwise(BUILTIN_ARANGE, NULL, a, params, &t, 1, s);
}

zmlx_status zmlxi_builtin_random(zmlx_array *a, uint64_t seed, int normal, double p0, double p1,
                                zmlx_stream *s) {
  double params[5] = {(double)a->size, (double)(uint32_t)seed, (double)(uint32_t)(seed >> 32), p0, p1};
  zmlx_template_arg t = {.name = "NORMAL", .kind = ZMLX_TEMPLATE_BOOL, .value = normal};
  return launch_elementwise(BUILTIN_RANDOM, NULL, a, params, &t, 1, s);
}

int zmlxi_builtin_count(void) { return BUILTIN_COUNT; }

zmlx_status zmlxi_builtin_source(int which, zmlx_backend backend, zmlx_dtype dt, char **out) {
  if (which < 0 || which >= BUILTIN_COUNT)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "no built-in kernel %d", which);
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(get_builtin(which, &k));
  zmlx_dtype dtypes[2] = {dt, dt};
  const char *tname = which == BUILTIN_RANDOM ? "NORMAL" : "FILL_INT";
  zmlx_template_arg t = {.name = tname, .kind = ZMLX_TEMPLATE_BOOL,
                         .value = which == BUILTIN_RANDOM ? 1 : is_integer_dtype(dt)};
  zmlx_kernel_call call = {.n_inputs = which == BUILTIN_COPY ? 1 : 0, .n_outputs = 1,
                           .output_dtypes = &dtypes[1], .templates = &t,
                           .n_templates = which == BUILTIN_COPY ? 0 : 1};
  return zmlx_kernel_source(k, backend, &call, dtypes, out);
}
