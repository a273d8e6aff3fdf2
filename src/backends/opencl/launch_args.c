/* The OpenCL backend's launch: a kernel's parameters from zmlx's launch
 * args (a buffer is a cl_mem plus an element offset, a scalar one
 * parameter, then the dynamic __local buffer and the hidden grid) and the
 * NDRange enqueue. opencl.c's ocl_launch holds the function's lock around
 * both. */
#ifdef ZMLX_HAVE_OPENCL

#include "backends/opencl/ocl.h"

/* Kernel parameters the launch args fill: a buffer is (cl_mem, ulong
 * element offset), a scalar is one parameter. */
static cl_uint count_cl_args(const zmlx_launch_arg *args, int n_args) {
  cl_uint n = 0;
  for (int i = 0; i < n_args; i++) n += args[i].kind == ZMLX_ARG_BUFFER ? 2u : 1u;
  return n;
}

static zmlx_status set_arg(cl_kernel k, cl_uint idx, size_t size, const void *value, int which) {
  cl_int err = clSetKernelArg(k, idx, size, value);
  if (err != CL_SUCCESS)
    return zmlxi_fail(zmlxi_ocl_status(err, ZMLX_ERR_LAUNCH),
                     "OpenCL: clSetKernelArg(%u) for launch argument %d (%zu bytes) failed: %s (%d)",
                     (unsigned)idx, which, size, zmlxi_ocl_error_name(err), (int)err);
  return ZMLX_OK;
}

/* One launch arg at kernel parameter *idx; advances *idx. */
static zmlx_status set_launch_arg(cl_kernel k, cl_uint *idx, const zmlx_launch_arg *a, int which) {
  if (a->kind == ZMLX_ARG_SCALAR) {
    ZMLX_CHECK(set_arg(k, (*idx)++, a->size, a->value, which));
    return ZMLX_OK;
  }
  if (a->elem_size == 0 || a->byte_offset % a->elem_size != 0)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG,
                     "OpenCL: launch argument %d: byte offset %zu is not a multiple of the "
                     "element size %zu",
                     which, a->byte_offset, a->elem_size);
  cl_mem m = (cl_mem)a->buffer;
  cl_ulong off = (cl_ulong)(a->byte_offset / a->elem_size);
  ZMLX_CHECK(set_arg(k, (*idx)++, sizeof m, &m, which));
  ZMLX_CHECK(set_arg(k, (*idx)++, sizeof off, &off, which));
  return ZMLX_OK;
}

/* Set every parameter: user args, then (if the kernel declares it) the
 * dynamic __local buffer, then the last 3 args (the hidden grid). Whether
 * the kernel takes the __local parameter is read from its parameter count,
 * which the signature fixes; OpenCL rejects a 0-byte __local arg, so an
 * unsized one gets 1 byte. Extra dynamic bytes for a kernel that does not
 * use them are ignored, as CUDA would allocate and ignore them. */
zmlx_status zmlxi_ocl_set_args(ocl_function *f, size_t dynamic_shared,
                               const zmlx_launch_arg *args, int n_args) {
  cl_uint supplied = count_cl_args(args, n_args);
  int has_dyn = f->num_args == supplied + 1;
  if (n_args < ZMLX_HIDDEN_GRID_ARGS || (f->num_args != supplied && !has_dyn))
    return zmlxi_fail(ZMLX_ERR_INTERNAL,
                     "OpenCL: kernel takes %u parameters, the launch supplies %u (from %d args)",
                     (unsigned)f->num_args, (unsigned)supplied, n_args);
  cl_uint idx = 0;
  int first_hidden = n_args - ZMLX_HIDDEN_GRID_ARGS;
  for (int i = 0; i < n_args; i++) {
    if (i == first_hidden && has_dyn)
      ZMLX_CHECK(set_arg(f->kernel, idx++, dynamic_shared ? dynamic_shared : 1, NULL, -1));
    ZMLX_CHECK(set_launch_arg(f->kernel, &idx, &args[i], i));
  }
  return ZMLX_OK;
}

zmlx_status zmlxi_ocl_enqueue(cl_command_queue q, ocl_function *f, const uint32_t blocks[3],
                              const uint32_t threads[3]) {
  size_t global[3], local[3];
  for (int i = 0; i < 3; i++) {
    global[i] = (size_t)blocks[i] * threads[i];
    local[i] = threads[i];
  }
  cl_int err = clEnqueueNDRangeKernel(q, f->kernel, 3, NULL, global, local, 0, NULL, NULL);
  if (err != CL_SUCCESS)
    return zmlxi_fail(zmlxi_ocl_status(err, ZMLX_ERR_LAUNCH),
                     "OpenCL: kernel launch of %ux%ux%u work-groups of %ux%ux%u failed: %s (%d)",
                     blocks[0], blocks[1], blocks[2], threads[0], threads[1], threads[2],
                     zmlxi_ocl_error_name(err), (int)err);
  return ZMLX_OK;
}

#endif
