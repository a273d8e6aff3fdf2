/*
 * What the OpenCL backend's files share (not installed, not used above
 * src/backends/opencl): the CL headers at the version zmlx targets, the
 * translation of CL error codes into statuses and messages (errors.c), the
 * envelope of cached program binaries (envelope.c), a loaded function and
 * its launch (launch_args.c), and the library GEMM (gemm_clblast.c).
 */
#ifndef ZMLX_BACKENDS_OPENCL_OCL_H
#define ZMLX_BACKENDS_OPENCL_OCL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 300
#endif
/* clCreateCommandQueue is still needed for OpenCL 1.x devices. */
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS

#ifdef __APPLE__
#include <OpenCL/cl.h>
#else
#include <CL/cl.h>
#endif

#include <pthread.h>

#include "runtime/internal.h"

#ifndef CL_PLATFORM_NOT_FOUND_KHR
#define CL_PLATFORM_NOT_FOUND_KHR -1001
#endif

/* A loaded kernel. clSetKernelArg is not thread-safe on one cl_kernel, so
 * argument setting and the enqueue that captures them share a lock. */
typedef struct ocl_function {
  cl_program program;
  cl_kernel kernel;
  cl_uint num_args;
  /* CL_KERNEL_LOCAL_MEM_SIZE before any argument is set: the kernel's own
   * __local arrays. PoCL aborts the process on a launch past the device's
   * local memory instead of failing it, so launches check first. */
  size_t static_local;
  pthread_mutex_t lock;
} ocl_function;

/* launch_args.c: set every kernel parameter of a launch (the function's
 * lock held), then enqueue it on q. */
zmlx_status zmlxi_ocl_set_args(ocl_function *f, size_t dynamic_shared,
                               const zmlx_launch_arg *args, int n_args);
zmlx_status zmlxi_ocl_enqueue(cl_command_queue q, ocl_function *f, const uint32_t blocks[3],
                              const uint32_t threads[3]);

/* The library GEMM (gemm_clblast.c; only with CLBlast). */
#ifdef ZMLX_HAVE_CLBLAST
zmlx_status zmlxi_ocl_gemm(int dev, void *stream, const zmlx_gemm_args *g);
const char *zmlxi_ocl_gemm_library(int dev);
unsigned zmlxi_ocl_gemm_dtypes(int dev);
#endif

/* The CL_* name of an error code ("CL_UNKNOWN_ERROR" when not known). */
const char *zmlxi_ocl_error_name(cl_int err);
/* Allocation-type failures become ZMLX_ERR_OUT_OF_MEMORY whatever the
 * call; anything else gets the caller's category. */
zmlx_status zmlxi_ocl_status(cl_int err, zmlx_status otherwise);
/* "OpenCL: <what> failed: CL_XXX (-n)" as the thread's error. */
zmlx_status zmlxi_ocl_fail(cl_int err, zmlx_status otherwise, const char *what);

/* Program binaries in the disk cache travel in an envelope (envelope.c)
 * that is verified before the driver sees a byte: OCL_ENVELOPE_HEADER
 * bytes (magic, payload size, checksum, device identity), then the
 * driver's binary. alloc: room for a payload (written at env +
 * OCL_ENVELOPE_HEADER); seal: write the header in front of it; open: the
 * payload of a verified envelope, or ZMLX_ERR_INVALID_ARG saying what is
 * wrong. */
#define OCL_ENVELOPE_HEADER 32u
unsigned char *zmlxi_ocl_envelope_alloc(size_t payload_size);
void zmlxi_ocl_envelope_seal(unsigned char *env, size_t payload_size, uint64_t identity_hash);
zmlx_status zmlxi_ocl_envelope_open(uint64_t identity_hash, const void *binary, size_t size,
                              const unsigned char **payload, size_t *payload_size);

#endif
