/*
 * The CUDA driver API, resolved with dlopen/dlsym at run time so that a
 * CUDA-enabled libzmlx needs no libcuda to link or to start. <cuda.h> is
 * used for its types and constants only.
 *
 * Fields are named without the "cu" prefix (cu.MemAllocAsync): the driver
 * header #defines many cu* names to versioned symbols, and the table
 * resolves those versioned symbols (cuMemcpyHtoDAsync_v2, ...) explicitly.
 */
#ifndef ZMLX_BACKENDS_CUDA_LOADER_H
#define ZMLX_BACKENDS_CUDA_LOADER_H

#include <cuda.h>

typedef struct zmlx_cu_api {
  /* required */
  CUresult (*Init)(unsigned int);
  CUresult (*DriverGetVersion)(int *);
  CUresult (*GetErrorName)(CUresult, const char **);
  CUresult (*GetErrorString)(CUresult, const char **);
  CUresult (*DeviceGetCount)(int *);
  CUresult (*DeviceGet)(CUdevice *, int);
  CUresult (*DeviceGetName)(char *, int, CUdevice);
  CUresult (*DeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
  CUresult (*DeviceTotalMem)(size_t *, CUdevice);
  CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*DevicePrimaryCtxRelease)(CUdevice);
  CUresult (*CtxGetCurrent)(CUcontext *);
  CUresult (*CtxSetCurrent)(CUcontext);
  CUresult (*StreamCreate)(CUstream *, unsigned int);
  CUresult (*StreamDestroy)(CUstream);
  CUresult (*StreamSynchronize)(CUstream);
  CUresult (*MemAlloc)(CUdeviceptr *, size_t);
  CUresult (*MemFree)(CUdeviceptr);
  CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
  CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
  CUresult (*MemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
  CUresult (*ModuleLoadData)(CUmodule *, const void *);
  CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
  CUresult (*ModuleUnload)(CUmodule);
  CUresult (*FuncSetAttribute)(CUfunction, CUfunction_attribute, int);
  CUresult (*FuncGetAttribute)(int *, CUfunction_attribute, CUfunction);
  CUresult (*LaunchKernel)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                           unsigned int, unsigned int, unsigned int, CUstream, void **,
                           void **);
  /* optional (NULL when the driver predates them) */
  CUresult (*MemAllocAsync)(CUdeviceptr *, size_t, CUstream);
  CUresult (*MemFreeAsync)(CUdeviceptr, CUstream);
  CUresult (*DeviceGetDefaultMemPool)(CUmemoryPool *, CUdevice);
  CUresult (*MemPoolSetAttribute)(CUmemoryPool, CUmemPool_attribute, void *);
  CUresult (*PointerGetAttribute)(void *, CUpointer_attribute, CUdeviceptr);
  CUresult (*FuncGetParamInfo)(CUfunction, size_t, size_t *, size_t *); /* driver 12.4+ */
  /* graphs (zmlx_graph_*): stream capture, instantiate, launch */
  CUresult (*StreamBeginCapture)(CUstream, CUstreamCaptureMode);
  CUresult (*StreamEndCapture)(CUstream, CUgraph *);
  CUresult (*GraphInstantiate)(CUgraphExec *, CUgraph, unsigned long long);
  CUresult (*GraphLaunch)(CUgraphExec, CUstream);
  CUresult (*GraphExecDestroy)(CUgraphExec);
  CUresult (*GraphDestroy)(CUgraph);
} zmlx_cu_api;

/* Filled by zmlxi_cu_load(); valid while it returns 1. */
extern zmlx_cu_api zmlxi_cu;

/* Open libcuda and resolve the table (once per process). 1 when every
 * required symbol was found, 0 otherwise (no driver: not an error). */
int zmlxi_cu_load(void);

/* "CUDA_ERROR_INVALID_VALUE: invalid argument" for messages. */
void zmlxi_cu_describe(CUresult r, char *buf, size_t cap);

#endif /* ZMLX_BACKENDS_CUDA_LOADER_H */
