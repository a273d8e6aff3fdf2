/* The op catalog through its verifier: every op, every available backend,
 * f32 / f16 / bf16, the quick subset (`zmlx check --quick` runs the same).
 * Where NVRTC is installed, every kernel variant the checks launch is also
 * rebuilt as CUDA source (with NATIVE_SIMD on too, the branch CUDA takes)
 * and compiled for sm_90a: a GPU-less CI still compiles each op's CUDA. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel/kernel.h"
#include "ops/catalog.h"
#include "test_support.h"
#ifdef ZMLX_HAVE_CUDA
#include "backends/cuda/nvrtc.h"
#endif

/* Distinct CUDA sources seen at launch (linear dedupe: a few hundred). */
typedef struct cuda_sources {
  char **src;
  int n, cap, errors;
} cuda_sources;

static void add_source(cuda_sources *cs, char *src) {
  for (int i = 0; i < cs->n; i++)
    if (!strcmp(cs->src[i], src)) {
      zmlx_free(src);
      return;
    }
  if (cs->n == cs->cap) {
    int cap = cs->cap ? 2 * cs->cap : 64;
    char **grown = realloc(cs->src, (size_t)cap * sizeof *grown);
    if (!grown) {
      zmlx_free(src);
      cs->errors++;
      return;
    }
    cs->src = grown;
    cs->cap = cap;
  }
  cs->src[cs->n++] = src;
}

static void cuda_source_of(cuda_sources *cs, zmlx_kernel *k, const zmlx_kernel_call *c,
                           const zmlx_template_arg *t) {
  zmlx_kernel_call cc = *c;
  cc.templates = t;
  char *src = NULL;
  if (zmlx_kernel_source(k, ZMLX_BACKEND_CUDA, &cc, NULL, &src) != ZMLX_OK) {
    fprintf(stderr, "CUDA source of '%s': %s\n", k->name, zmlx_last_error());
    cs->errors++;
    return;
  }
  add_source(cs, src);
}

static void observe_launch(void *ctx, zmlx_kernel *k, const zmlx_kernel_call *c) {
  cuda_sources *cs = ctx;
  zmlx_template_arg t[ZMLX_KERNEL_MAX_TEMPLATES];
  memset(t, 0, sizeof t);
  int nt = c->n_templates <= ZMLX_KERNEL_MAX_TEMPLATES ? c->n_templates : 0;
  int native_at = -1;
  for (int i = 0; i < nt; i++) {
    t[i] = c->templates[i];
    if (!strcmp(t[i].name, "NATIVE_SIMD") && t[i].value == 0) native_at = i;
  }
  cuda_source_of(cs, k, c, nt ? t : NULL);
  if (native_at >= 0) {
    t[native_at].value = 1;
    cuda_source_of(cs, k, c, t);
  }
}

static void compile_all(cuda_sources *cs) {
#if defined(__SANITIZE_ADDRESS__)
  /* NVRTC compiles the same strings in the normal build; here it would only
   * add minutes under the sanitizer. */
  fprintf(stderr, "sanitizer build: %d CUDA sources left to the normal build\n", cs->n);
#elif defined(ZMLX_HAVE_CUDA)
  if (!zmlx_nvrtc_available()) {
    fprintf(stderr, "NVRTC not available: %d CUDA sources not compiled\n", cs->n);
    return;
  }
  for (int i = 0; i < cs->n; i++) {
    void *cubin = NULL;
    size_t size = 0;
    char *log = NULL;
    if (zmlx_nvrtc_compile(cs->src[i], "catalog", "sm_90a", &cubin, &size, &log) != ZMLX_OK) {
      fprintf(stderr, "NVRTC sm_90a: %s\n", zmlx_last_error());
      cs->errors++;
    }
    free(cubin);
    free(log);
  }
  fprintf(stderr, "NVRTC compiled %d distinct catalog kernel sources for sm_90a\n", cs->n);
#else
  fprintf(stderr, "built without CUDA: %d CUDA sources not compiled\n", cs->n);
#endif
}

typedef struct failures {
  int rows, failed;
} failures;

static void collect(void *ctx, const zmlx_check_row *r) {
  failures *f = ctx;
  f->rows++;
  if (!r->pass) {
    f->failed++;
    fprintf(stderr, "FAIL %s %s %s %s %s: error %.3e > tolerance %.1e\n", r->op,
            zmlx_backend_name(r->backend), zmlx_dtype_name(r->dtype), r->shape, r->what,
            r->max_err, r->tol);
  }
}

static void test_every_op_quick(void **state) {
  (void)state;
  zmlx_device *devs[4];
  int nd = zt_devices(devs, 4);
  const zmlx_catalog_op *const *ops = zmlx_catalog_ops();
  if (!nd || !ops[0]) skip();
  zmlx_dtype dts[3] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
  failures f = {0};
  int64_t live = zmlx_array_live_count();
  cuda_sources cs = {0};
  zmlx_kernel_set_launch_observer(observe_launch, &cs);
  for (int d = 0; d < nd; d++)
    for (int k = 0; k < 3; k++)
      for (int i = 0; ops[i]; i++) {
        int before = f.rows;
        zmlx_check_opts o = {.device = devs[d], .dtype = dts[k], .quick = 1,
                             .seed = zt_seed() + (uint64_t)i, .emit = collect, .ctx = &f};
        ZT_OK(ops[i]->check(&o));
        if (f.rows == before) fail_msg("%s reported no case", ops[i]->name);
      }
  zmlx_kernel_set_launch_observer(NULL, NULL);
  compile_all(&cs);
  for (int i = 0; i < cs.n; i++) zmlx_free(cs.src[i]);
  free(cs.src);
  if (f.failed) fail_msg("%d of %d catalog cases failed (see above)", f.failed, f.rows);
  if (cs.errors) fail_msg("%d catalog kernel sources failed to build for CUDA", cs.errors);
  assert_int_equal(zmlx_array_live_count(), live);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_every_op_quick)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
