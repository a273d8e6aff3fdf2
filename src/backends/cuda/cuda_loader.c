/* Resolve the CUDA driver API with dlopen (see cuda_loader.h). */
#include "backends/cuda/cuda_loader.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

zmlx_cu_api zmlxi_cu;

static const struct {
  const char *symbol; /* the versioned name cuda.h maps the API name to */
  size_t offset;
  int required;
} cu_symbols[] = {
#define ZMLX_CU_SYM(field, symbol, required) {symbol, offsetof(zmlx_cu_api, field), required}
    ZMLX_CU_SYM(Init, "cuInit", 1),
    ZMLX_CU_SYM(DriverGetVersion, "cuDriverGetVersion", 1),
    ZMLX_CU_SYM(GetErrorName, "cuGetErrorName", 1),
    ZMLX_CU_SYM(GetErrorString, "cuGetErrorString", 1),
    ZMLX_CU_SYM(DeviceGetCount, "cuDeviceGetCount", 1),
    ZMLX_CU_SYM(DeviceGet, "cuDeviceGet", 1),
    ZMLX_CU_SYM(DeviceGetName, "cuDeviceGetName", 1),
    ZMLX_CU_SYM(DeviceGetAttribute, "cuDeviceGetAttribute", 1),
    ZMLX_CU_SYM(DeviceTotalMem, "cuDeviceTotalMem_v2", 1),
    ZMLX_CU_SYM(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", 1),
    ZMLX_CU_SYM(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", 1),
    ZMLX_CU_SYM(CtxGetCurrent, "cuCtxGetCurrent", 1),
    ZMLX_CU_SYM(CtxSetCurrent, "cuCtxSetCurrent", 1),
    ZMLX_CU_SYM(StreamCreate, "cuStreamCreate", 1),
    ZMLX_CU_SYM(StreamDestroy, "cuStreamDestroy_v2", 1),
    ZMLX_CU_SYM(StreamSynchronize, "cuStreamSynchronize", 1),
    ZMLX_CU_SYM(MemAlloc, "cuMemAlloc_v2", 1),
    ZMLX_CU_SYM(MemFree, "cuMemFree_v2", 1),
    ZMLX_CU_SYM(MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", 1),
    ZMLX_CU_SYM(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", 1),
    ZMLX_CU_SYM(MemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2", 1),
    ZMLX_CU_SYM(ModuleLoadData, "cuModuleLoadData", 1),
    ZMLX_CU_SYM(ModuleGetFunction, "cuModuleGetFunction", 1),
    ZMLX_CU_SYM(ModuleUnload, "cuModuleUnload", 1),
    ZMLX_CU_SYM(FuncSetAttribute, "cuFuncSetAttribute", 1),
    ZMLX_CU_SYM(FuncGetAttribute, "cuFuncGetAttribute", 1),
    ZMLX_CU_SYM(LaunchKernel, "cuLaunchKernel", 1),
    ZMLX_CU_SYM(MemAllocAsync, "cuMemAllocAsync", 0),
    ZMLX_CU_SYM(MemFreeAsync, "cuMemFreeAsync", 0),
    ZMLX_CU_SYM(DeviceGetDefaultMemPool, "cuDeviceGetDefaultMemPool", 0),
    ZMLX_CU_SYM(MemPoolSetAttribute, "cuMemPoolSetAttribute", 0),
    ZMLX_CU_SYM(PointerGetAttribute, "cuPointerGetAttribute", 0),
    ZMLX_CU_SYM(FuncGetParamInfo, "cuFuncGetParamInfo", 0),
    ZMLX_CU_SYM(StreamBeginCapture, "cuStreamBeginCapture_v2", 0),
    ZMLX_CU_SYM(StreamEndCapture, "cuStreamEndCapture", 0),
    ZMLX_CU_SYM(GraphInstantiate, "cuGraphInstantiateWithFlags", 0),
    ZMLX_CU_SYM(GraphLaunch, "cuGraphLaunch", 0),
    ZMLX_CU_SYM(GraphExecDestroy, "cuGraphExecDestroy", 0),
    ZMLX_CU_SYM(GraphDestroy, "cuGraphDestroy", 0),
#undef ZMLX_CU_SYM
};

static int cu_loaded;
static pthread_once_t cu_once = PTHREAD_ONCE_INIT;

/* The pointer goes in with memcpy: C has no conversion from void * to a
 * function pointer. */
static int resolve_all(void *lib) {
  for (size_t i = 0; i < sizeof cu_symbols / sizeof cu_symbols[0]; i++) {
    void *sym = dlsym(lib, cu_symbols[i].symbol);
    if (!sym && cu_symbols[i].required) return 0;
    memcpy((char *)&zmlxi_cu + cu_symbols[i].offset, &sym, sizeof sym);
  }
  return 1;
}

static void load_once(void) {
  /* libcuda.so.1 is what the driver installs; libcuda.so is only a
   * development link (and the toolkit's stub, which cuInit rejects). */
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) lib = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return;
  if (!resolve_all(lib)) {
    memset(&zmlxi_cu, 0, sizeof zmlxi_cu);
    dlclose(lib);
    return;
  }
  /* Never closed: the driver keeps threads and state for the process. */
  cu_loaded = 1;
}

int zmlxi_cu_load(void) {
  pthread_once(&cu_once, load_once);
  return cu_loaded;
}

void zmlxi_cu_describe(CUresult r, char *buf, size_t cap) {
  const char *name = NULL, *text = NULL;
  if (!cu_loaded || zmlxi_cu.GetErrorName(r, &name) != CUDA_SUCCESS) name = NULL;
  if (!cu_loaded || zmlxi_cu.GetErrorString(r, &text) != CUDA_SUCCESS) text = NULL;
  if (name)
    snprintf(buf, cap, "%s: %s", name, text ? text : "no description");
  else
    snprintf(buf, cap, "CUDA error %d", (int)r);
}
