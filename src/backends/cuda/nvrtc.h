/*
 * NVRTC (CUDA C++ -> cubin) loaded at run time with dlopen. Needs no GPU and
 * no driver: the test suite uses it to compile every kernel's CUDA source
 * on machines that only have the CUDA toolkit.
 */
#ifndef ZMLX_BACKENDS_CUDA_NVRTC_H
#define ZMLX_BACKENDS_CUDA_NVRTC_H

#include "zmlx.h"

#include <stddef.h>

/* 1 if libnvrtc could be loaded (tried once, then remembered). */
int zmlxi_nvrtc_available(void);

/* Version of the loaded NVRTC, e.g. 13.0. */
zmlx_status zmlxi_nvrtc_version(int *major, int *minor);

/* Compile `source` for `arch` (a real architecture such as "sm_90a") into a
 * cubin. `name` names the program in the log ("softmax.cu"; NULL gives a
 * default). On success *cubin / *size get a malloc'ed binary. *log (when
 * `log` is not NULL) gets the compiler log, malloc'ed, or NULL when empty,
 * on success and on failure. A compile error returns ZMLX_ERR_COMPILE with
 * the log in the message. */
zmlx_status zmlxi_nvrtc_compile(const char *source, const char *name, const char *arch,
                               void **cubin, size_t *size, char **log);

#endif /* ZMLX_BACKENDS_CUDA_NVRTC_H */
