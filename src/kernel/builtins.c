/* Built-in kernels of the runtime (copy/cast, fill, arange, random), written
 * in the dialect (the .zk files in src/kernel/kernels) and run through the same kernel
 * objects and cache as user kernels. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel/kernel.h"
#include "runtime/internal.h"

extern const char zmlx_res_copy_zk[];
extern const char zmlx_res_fill_zk[];
extern const char zmlx_res_arange_zk[];
extern const char zmlx_res_random_zk[];

enum { BUILTIN_COPY, BUILTIN_FILL, BUILTIN_ARANGE, BUILTIN_RANDOM, BUILTIN_COUNT };

typedef struct builtin_def {
  const char *name;
  const char *file;                 /* .zk text: [header] //-- body -- body */
  const char *inputs[1];
  int n_inputs;
  const char *output;
  const char *params[5];
  zmlx_dtype param_dtypes[5];
  int n_params;
} builtin_def;

static const builtin_def defs[BUILTIN_COUNT] = {
    [BUILTIN_COPY] = {"copy", zmlx_res_copy_zk, {"src"}, 1, "dst", {"n"}, {ZMLX_I64}, 1},
    [BUILTIN_FILL] = {"fill", zmlx_res_fill_zk, {NULL}, 0, "out", {"n", "value", "ivalue"},
                      {ZMLX_I64, ZMLX_F32, ZMLX_I64}, 3},
    [BUILTIN_ARANGE] = {"arange", zmlx_res_arange_zk, {NULL}, 0, "out",
                        {"n", "start", "step", "istart", "istep"},
                        {ZMLX_I64, ZMLX_F32, ZMLX_F32, ZMLX_I64, ZMLX_I64}, 5},
    [BUILTIN_RANDOM] = {"random", zmlx_res_random_zk, {NULL}, 0, "out",
                        {"n", "seed_lo", "seed_hi", "p0", "p1"},
                        {ZMLX_I64, ZMLX_U32, ZMLX_U32, ZMLX_F32, ZMLX_F32}, 5},
};

static zmlx_kernel *kernels[BUILTIN_COUNT];
static zmlx_status create_status = ZMLX_OK;
static char create_error[1024];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static zmlx_status create_builtin(const builtin_def *d, zmlx_kernel **out) {
  zmlx_kernel_desc desc = {.name = d->name, .input_names = d->inputs, .n_inputs = d->n_inputs,
                           .output_names = &d->output, .n_outputs = 1, .source = d->file,
                           .param_names = d->params, .param_dtypes = d->param_dtypes,
                           .n_params = d->n_params};
  return zmlx_kernel_create_from_zk(&desc, out);
}

static void create_all(void) {
  for (int i = 0; i < BUILTIN_COUNT && create_status == ZMLX_OK; i++) {
    create_status = create_builtin(&defs[i], &kernels[i]);
    if (create_status != ZMLX_OK) snprintf(create_error, sizeof create_error, "%s", zmlx_last_error());
  }
}

static zmlx_status get_builtin(int which, zmlx_kernel **out) {
  pthread_once(&once, create_all);
  if (create_status != ZMLX_OK) return zmlx_fail(create_status, "built-in kernels: %s", create_error);
  *out = kernels[which];
  return ZMLX_OK;
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
  zmlx_kernel_call_grid_1d(&call, out->size);
  return zmlx_kernel_launch(k, &call);
}

/* Integer dtypes take the exact integer path of fill/arange. bool does not:
 * it stores value != 0 from the float value, as a C cast to bool does. */
static int is_integer_dtype(zmlx_dtype dt) {
  return dt != ZMLX_F16 && dt != ZMLX_BF16 && dt != ZMLX_F32 && dt != ZMLX_F64 && dt != ZMLX_BOOL;
}

zmlx_status zmlx_builtin_copy(zmlx_array *src, zmlx_array *dst, zmlx_stream *s) {
  if (src->size != dst->size)
    return zmlx_fail(ZMLX_ERR_SHAPE, "copy: %lld elements into %lld", (long long)src->size,
                     (long long)dst->size);
  double n = (double)dst->size;
  return launch_elementwise(BUILTIN_COPY, src, dst, &n, NULL, 0, s);
}

/* f64 fills go through the host: an f64 kernel parameter would not compile
 * on devices without fp64, and f64 arrays are rare. */
static zmlx_status fill_f64_on_host(zmlx_array *a, double value) {
  double *tmp = malloc((size_t)a->size * sizeof *tmp);
  if (!tmp) return zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int64_t i = 0; i < a->size; i++) tmp[i] = value;
  zmlx_device *d = a->buffer->device;
  zmlx_status st = d->ops->write(d->index, d->default_stream->handle, a->buffer->handle,
                                 (size_t)a->offset * 8, tmp, (size_t)a->size * 8);
  free(tmp);
  return st;
}

zmlx_status zmlx_builtin_fill(zmlx_array *a, double value, zmlx_stream *s) {
  if (!zmlx_array_is_contiguous(a))
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "fill: the array must be contiguous");
  if (a->dtype == ZMLX_F64 && a->size) return fill_f64_on_host(a, value);
  double params[3] = {(double)a->size, value, value};
  zmlx_template_arg t = {.name = "FILL_INT", .kind = ZMLX_TEMPLATE_BOOL,
                         .value = is_integer_dtype(a->dtype)};
  return launch_elementwise(BUILTIN_FILL, NULL, a, params, &t, 1, s);
}

zmlx_status zmlx_builtin_arange(zmlx_array *a, double start, double step, zmlx_stream *s) {
  if (a->dtype == ZMLX_F64)
    return zmlx_fail(ZMLX_ERR_DTYPE, "arange: f64 is host-side only; create f32 and convert");
  double params[5] = {(double)a->size, start, step, start, step};
  zmlx_template_arg t = {.name = "FILL_INT", .kind = ZMLX_TEMPLATE_BOOL,
                         .value = is_integer_dtype(a->dtype)};
  return launch_elementwise(BUILTIN_ARANGE, NULL, a, params, &t, 1, s);
}

zmlx_status zmlx_builtin_random(zmlx_array *a, uint64_t seed, int normal, double p0, double p1,
                                zmlx_stream *s) {
  double params[5] = {(double)a->size, (double)(uint32_t)seed, (double)(uint32_t)(seed >> 32), p0, p1};
  zmlx_template_arg t = {.name = "NORMAL", .kind = ZMLX_TEMPLATE_BOOL, .value = normal};
  return launch_elementwise(BUILTIN_RANDOM, NULL, a, params, &t, 1, s);
}

int zmlx_builtin_count(void) { return BUILTIN_COUNT; }

zmlx_status zmlx_builtin_source(int which, zmlx_backend backend, zmlx_dtype dt, char **out) {
  if (which < 0 || which >= BUILTIN_COUNT)
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "no built-in kernel %d", which);
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(get_builtin(which, &k));
  zmlx_dtype dtypes[2] = {dt, dt};
  const char *tname = which == BUILTIN_RANDOM ? "NORMAL" : "FILL_INT";
  zmlx_template_arg t = {.name = tname, .kind = ZMLX_TEMPLATE_BOOL,
                         .value = which == BUILTIN_RANDOM ? 1 : is_integer_dtype(dt)};
  zmlx_kernel_call call = {.n_inputs = defs[which].n_inputs, .n_outputs = 1,
                           .output_dtypes = &dtypes[1], .templates = &t,
                           .n_templates = which == BUILTIN_COPY ? 0 : 1};
  return zmlx_kernel_source(k, backend, &call, dtypes, out);
}
