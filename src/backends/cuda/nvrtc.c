/*
 * NVRTC wrapper. libnvrtc is opened with dlopen on first use, so a
 * CUDA-enabled build links only against libdl and still runs (and falls
 * back to OpenCL) where the CUDA toolkit is absent. <nvrtc.h> is included
 * for its types only; every function comes from dlsym.
 */
#include "backends/cuda/nvrtc.h"

#include <dlfcn.h>
#include <nvrtc.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/internal.h"

/* ------------------------------------------------------------ symbol table */

typedef struct nvrtc_api {
  nvrtcResult (*Version)(int *, int *);
  const char *(*GetErrorString)(nvrtcResult);
  nvrtcResult (*CreateProgram)(nvrtcProgram *, const char *, const char *, int,
                               const char *const *, const char *const *);
  nvrtcResult (*DestroyProgram)(nvrtcProgram *);
  nvrtcResult (*CompileProgram)(nvrtcProgram, int, const char *const *);
  nvrtcResult (*GetProgramLogSize)(nvrtcProgram, size_t *);
  nvrtcResult (*GetProgramLog)(nvrtcProgram, char *);
  nvrtcResult (*GetCUBINSize)(nvrtcProgram, size_t *);
  nvrtcResult (*GetCUBIN)(nvrtcProgram, char *);
} nvrtc_api;

static const struct {
  const char *symbol;
  size_t offset;
} nvrtc_symbols[] = {
    {"nvrtcVersion", offsetof(nvrtc_api, Version)},
    {"nvrtcGetErrorString", offsetof(nvrtc_api, GetErrorString)},
    {"nvrtcCreateProgram", offsetof(nvrtc_api, CreateProgram)},
    {"nvrtcDestroyProgram", offsetof(nvrtc_api, DestroyProgram)},
    {"nvrtcCompileProgram", offsetof(nvrtc_api, CompileProgram)},
    {"nvrtcGetProgramLogSize", offsetof(nvrtc_api, GetProgramLogSize)},
    {"nvrtcGetProgramLog", offsetof(nvrtc_api, GetProgramLog)},
    {"nvrtcGetCUBINSize", offsetof(nvrtc_api, GetCUBINSize)},
    {"nvrtcGetCUBIN", offsetof(nvrtc_api, GetCUBIN)},
};

static nvrtc_api api;
static int api_ok;
static int api_major, api_minor;
static pthread_once_t api_once = PTHREAD_ONCE_INIT;

/* Resolve every symbol into `api`; all are required. The pointer goes in
 * with memcpy because C has no conversion from void * to a function
 * pointer. */
static int resolve_all(void *lib) {
  for (size_t i = 0; i < sizeof nvrtc_symbols / sizeof nvrtc_symbols[0]; i++) {
    void *sym = dlsym(lib, nvrtc_symbols[i].symbol);
    if (!sym) return 0;
    memcpy((char *)&api + nvrtc_symbols[i].offset, &sym, sizeof sym);
  }
  return 1;
}

/* The soname first (whatever the loader path finds), then the toolkit's
 * usual homes, for machines where the toolkit is not on the loader path. */
static void *open_nvrtc(void) {
  static const char *const names[] = {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"};
  const char *cuda_home = getenv("CUDA_HOME");
  const char *const dirs[] = {NULL, cuda_home, "/usr/local/cuda"};
  for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
    if (d > 0 && (!dirs[d] || !dirs[d][0])) continue;
    for (size_t n = 0; n < sizeof names / sizeof names[0]; n++) {
      char path[1024];
      if (d == 0)
        snprintf(path, sizeof path, "%s", names[n]);
      else if (snprintf(path, sizeof path, "%s/lib64/%s", dirs[d], names[n]) >= (int)sizeof path)
        continue;
      void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
      if (lib) return lib;
    }
  }
  return NULL;
}

static void load_once(void) {
  void *lib = open_nvrtc();
  if (!lib) return;
  if (!resolve_all(lib) || api.Version(&api_major, &api_minor) != NVRTC_SUCCESS) {
    memset(&api, 0, sizeof api);
    dlclose(lib);
    return;
  }
  api_ok = 1; /* the library stays open for the life of the process */
}

int zmlxi_nvrtc_available(void) {
  pthread_once(&api_once, load_once);
  return api_ok;
}

static zmlx_status require_nvrtc(void) {
  if (zmlxi_nvrtc_available()) return ZMLX_OK;
  return zmlxi_fail(ZMLX_ERR_UNSUPPORTED,
                   "NVRTC is not available: could not load libnvrtc.so, libnvrtc.so.13 or "
                   "libnvrtc.so.12 (from the loader path, $CUDA_HOME/lib64 or "
                   "/usr/local/cuda/lib64)");
}

zmlx_status zmlxi_nvrtc_version(int *major, int *minor) {
  ZMLX_REQUIRE_ARG(major);
  ZMLX_REQUIRE_ARG(minor);
  ZMLX_CHECK(require_nvrtc());
  *major = api_major;
  *minor = api_minor;
  return ZMLX_OK;
}

/* ----------------------------------------------------------------- compile */

static zmlx_status nvrtc_status(nvrtcResult r) {
  switch (r) {
    case NVRTC_SUCCESS: return ZMLX_OK;
    case NVRTC_ERROR_OUT_OF_MEMORY: return ZMLX_ERR_OUT_OF_MEMORY;
    case NVRTC_ERROR_COMPILATION:
    case NVRTC_ERROR_INVALID_OPTION: return ZMLX_ERR_COMPILE;
    default: return ZMLX_ERR_BACKEND;
  }
}

/* The program log, malloc'ed, or NULL when NVRTC has nothing to say. */
static char *program_log(nvrtcProgram prog) {
  size_t n = 0;
  if (api.GetProgramLogSize(prog, &n) != NVRTC_SUCCESS || n <= 1) return NULL;
  char *text = malloc(n);
  if (!text) return NULL;
  if (api.GetProgramLog(prog, text) != NVRTC_SUCCESS) {
    free(text);
    return NULL;
  }
  text[n - 1] = '\0';
  return text;
}

static zmlx_status fetch_cubin(nvrtcProgram prog, void **cubin, size_t *size) {
  size_t n = 0;
  nvrtcResult r = api.GetCUBINSize(prog, &n);
  if (r != NVRTC_SUCCESS || n == 0)
    return zmlxi_fail(ZMLX_ERR_BACKEND, "nvrtcGetCUBINSize: %s", api.GetErrorString(r));
  char *bin = malloc(n);
  if (!bin) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory for a %zu-byte cubin", n);
  r = api.GetCUBIN(prog, bin);
  if (r != NVRTC_SUCCESS) {
    free(bin);
    return zmlxi_fail(ZMLX_ERR_BACKEND, "nvrtcGetCUBIN: %s", api.GetErrorString(r));
  }
  *cubin = bin;
  *size = n;
  return ZMLX_OK;
}

/* Compile an existing program; fills *text with its log either way. */
static zmlx_status compile_program(nvrtcProgram prog, const char *name, const char *arch,
                                   char **text) {
  char arch_opt[128];
  if (snprintf(arch_opt, sizeof arch_opt, "--gpu-architecture=%s", arch) >= (int)sizeof arch_opt)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "NVRTC: architecture name '%.32s...' is too long", arch);
  /* No fast math: the dialect promises IEEE float semantics on every
   * backend. -default-device lets header helpers omit __device__. */
  const char *const opts[] = {arch_opt, "-default-device", "--std=c++17", "-lineinfo"};
  nvrtcResult r = api.CompileProgram(prog, (int)(sizeof opts / sizeof opts[0]), opts);
  *text = program_log(prog);
  if (r == NVRTC_SUCCESS) return ZMLX_OK;
  return zmlxi_fail(nvrtc_status(r), "NVRTC could not compile '%s' for %s (%s):\n%s", name, arch,
                   api.GetErrorString(r), *text ? *text : "(no compiler log)");
}

zmlx_status zmlxi_nvrtc_compile(const char *source, const char *name, const char *arch,
                               void **cubin, size_t *size, char **log) {
  ZMLX_REQUIRE_ARG(source);
  ZMLX_REQUIRE_ARG(arch);
  ZMLX_REQUIRE_ARG(cubin);
  ZMLX_REQUIRE_ARG(size);
  *cubin = NULL;
  *size = 0;
  if (log) *log = NULL;
  ZMLX_CHECK(require_nvrtc());
  if (!name || !name[0]) name = "zmlx_kernel.cu";

  nvrtcProgram prog = NULL;
  nvrtcResult r = api.CreateProgram(&prog, source, name, 0, NULL, NULL);
  if (r != NVRTC_SUCCESS)
    return zmlxi_fail(nvrtc_status(r), "nvrtcCreateProgram: %s", api.GetErrorString(r));

  char *text = NULL;
  zmlx_status st = compile_program(prog, name, arch, &text);
  if (st == ZMLX_OK) st = fetch_cubin(prog, cubin, size);
  api.DestroyProgram(&prog);
  if (log)
    *log = text;
  else
    free(text);
  return st;
}
