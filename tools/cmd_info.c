/* `zmlx info`: version, backends, devices and cache settings. */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

#include "zmlx.h"

static const zmlx_backend info_backends[] = {ZMLX_BACKEND_CUDA, ZMLX_BACKEND_OPENCL,
                                             ZMLX_BACKEND_METAL};

/* The library's own words for a backend without devices: zmlx_device_count
 * fails with the reason (not compiled in, driver missing, emit-only); a
 * backend that initialised but found nothing just has no devices. */
static const char *unavailable_reason(zmlx_status count_status) {
  const char *why = zmlx_last_error();
  if (count_status == ZMLX_OK || !why || !*why) return "no devices found";
  return why;
}

static void print_device(const zmlx_device *dev, const zmlx_device_info *info) {
  char shared[32];
  printf("    [%d] %s\n", info->index, info->name);
  double gib = (double)info->total_memory / (1024.0 * 1024.0 * 1024.0);
  printf("        memory            %.1f GiB\n", gib);
  printf("        version           %s\n", info->version);
  printf("        arch              %s\n", info->arch);
  printf("        max threadgroup   %d threads, %s shared memory\n",
         info->max_threads_per_threadgroup,
         cli_format_bytes((double)info->max_shared_memory, shared, sizeof shared));
  printf("        SIMD width        %d (%s)\n", info->simd_width,
         info->native_simd ? "native" : "emulated through shared memory");
  printf("        compute units     %d\n", info->compute_units);
  const char *gemm = NULL;
  (void)zmlx_device_gemm_library(dev, &gemm);
  printf("        matmul            %s%s\n", gemm ? gemm : "dialect GEMM only",
         gemm ? "; dialect GEMM otherwise" : " (no library GEMM loaded)");
  printf("        fp16 / fp64       %s / %s\n", info->has_fp16 ? "yes" : "no",
         info->has_fp64 ? "yes" : "no");
  printf("        matrix units      %s\n",
         info->has_wgmma ? "yes, warpgroup products too (attention's forward on wgmma)"
         : info->has_mma ? "yes (attention's tensor-core tiles)"
                         : "no (scalar tiles)");
}

static void print_backend(zmlx_backend b) {
  int count = 0;
  zmlx_clear_error();
  zmlx_status st = zmlx_device_count(b, &count);
  if (st != ZMLX_OK || count <= 0) {
    printf("  %s: not available: %s\n", zmlx_backend_name(b), unavailable_reason(st));
    return;
  }
  printf("  %s: available, %d device%s\n", zmlx_backend_name(b), count, count == 1 ? "" : "s");
  for (int i = 0; i < count; i++) {
    zmlx_device *dev = NULL;
    zmlx_device_info info;
    if (zmlx_device_get(b, i, &dev) != ZMLX_OK || zmlx_device_get_info(dev, &info) != ZMLX_OK) {
      printf("    [%d] error: %s\n", i, zmlx_last_error());
      continue;
    }
    print_device(dev, &info);
  }
}

static void print_default_device(void) {
  zmlx_device *dev = NULL;
  zmlx_device_info info;
  if (zmlx_default_device(&dev) != ZMLX_OK || zmlx_device_get_info(dev, &info) != ZMLX_OK) {
    printf("default device: none: %s\n", zmlx_last_error());
    return;
  }
  printf("default device: %s %d (%s)\n", zmlx_backend_name(info.backend), info.index, info.name);
}

static void print_cache(void) {
  const char *dir = zmlx_cache_dir();
  const char *env = getenv("ZMLX_CACHE");
  printf("kernel cache:\n");
  printf("  directory  %s\n", *dir ? dir : "(none: set ZMLX_CACHE_DIR or HOME)");
  const char *problem = zmlx_cache_disk_problem();
  if (zmlx_cache_disk_enabled())
    printf("  disk       on\n");
  else if (problem)
    printf("  disk       off: %s (every process compiles its kernels again)\n", problem);
  else
    printf("  disk       off%s\n", env ? " (ZMLX_CACHE is set)" : "");
}

int zmlx_cmd_info(const cli_command *self, int argc, char **argv) {
  if (!cli_expect_no_args(self, argc, argv)) return CLI_USAGE;
  printf("zmlx %s\n\nbackends:\n", zmlx_version_string());
  for (size_t i = 0; i < sizeof info_backends / sizeof info_backends[0]; i++)
    print_backend(info_backends[i]);
  printf("\n");
  print_default_device();
  printf("\n");
  print_cache();
  return CLI_OK;
}
