/* CUDA source of every test kernel and every built-in kernel, compiled by
 * NVRTC for sm_90a. Needs the CUDA toolkit's libnvrtc, not a GPU: a CUDA
 * compile error fails CI on machines that cannot run CUDA. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_kernels.h"
#include "test_support.h"

#ifdef ZMLX_HAVE_CUDA
#include "backends/cuda/nvrtc.h"
#include "kernel/kernel.h"
#include "runtime/internal.h"

static void compile_for_sm90a(const char *what, const char *src) {
  void *cubin = NULL;
  size_t size = 0;
  char *log = NULL;
  zmlx_status st = zmlxi_nvrtc_compile(src, what, "sm_90a", &cubin, &size, &log);
  if (st != ZMLX_OK) fail_msg("NVRTC sm_90a: %s: %s", what, zmlx_last_error());
  assert_true(size > 0);
  /* an ELF cubin */
  assert_memory_equal(cubin, "\x7f" "ELF", 4);
  free(cubin);
  free(log);
}

static void test_test_kernels_compile(void **state) {
  (void)state;
  if (!zmlxi_nvrtc_available()) skip();
  for (int i = 0; i < ZT_K_COUNT; i++) {
    const zt_kernel_def *def = &zt_kernels[i];
    zmlx_kernel *k = NULL;
    ZT_OK(zmlx_kernel_create(&def->desc, &k));
    zmlx_kernel_call c = {.n_inputs = def->desc.n_inputs, .n_outputs = def->desc.n_outputs,
                          .output_dtypes = def->dtypes + def->desc.n_inputs,
                          .templates = def->templates, .n_templates = def->n_templates};
    char *src = NULL;
    ZT_OK(zmlx_kernel_source(k, ZMLX_BACKEND_CUDA, &c, def->dtypes, &src));
    compile_for_sm90a(def->desc.name, src);
    zmlx_free(src);
    zmlx_kernel_destroy(k);
  }
}

static void test_builtin_kernels_compile(void **state) {
  (void)state;
  if (!zmlxi_nvrtc_available()) skip();
  zmlx_dtype dts[] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16, ZMLX_I32, ZMLX_I64, ZMLX_U8, ZMLX_BOOL};
  for (int b = 0; b < zmlxi_builtin_count(); b++)
    for (size_t d = 0; d < sizeof dts / sizeof *dts; d++) {
      char *src = NULL, what[64];
      ZT_OK(zmlxi_builtin_source(b, ZMLX_BACKEND_CUDA, dts[d], &src));
      snprintf(what, sizeof what, "builtin-%d-%s", b, zmlx_dtype_name(dts[d]));
      compile_for_sm90a(what, src);
      zmlx_free(src);
    }
}

static void test_compile_error_is_reported(void **state) {
  (void)state;
  if (!zmlxi_nvrtc_available()) skip();
  void *cubin = NULL;
  size_t size = 0;
  char *log = NULL;
  zmlx_status st = zmlxi_nvrtc_compile("extern \"C\" __global__ void k() { undefined_name = 1; }",
                                      "broken.cu", "sm_90a", &cubin, &size, &log);
  assert_int_equal(st, ZMLX_ERR_COMPILE);
  assert_non_null(strstr(zmlx_last_error(), "undefined_name"));
  free(log);
}

int main(void) {
  if (!zmlxi_nvrtc_available())
    fprintf(stderr, "[test_nvrtc] libnvrtc not found: the NVRTC checks are skipped\n");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_test_kernels_compile),
      cmocka_unit_test(test_builtin_kernels_compile),
      cmocka_unit_test(test_compile_error_is_reported),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
#else
static void test_cuda_not_built(void **state) {
  (void)state;
  skip();
}
int main(void) {
  fprintf(stderr, "[test_nvrtc] built without CUDA headers: skipped\n");
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_cuda_not_built)};
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
#endif
