/* The op catalog through its verifier: every op, every available backend,
 * f32 / f16 / bf16, the quick subset (`zmlx check --quick` runs the same).
 * Where NVRTC is installed, every kernel variant the checks launch is also
 * rebuilt as CUDA source (with its NATIVE* switches on too, the branch CUDA
 * takes) and compiled for sm_90a: a GPU-less CI still compiles each op's CUDA.
 *
 *   test_catalog [--shard I/N]
 * runs only the ops whose catalog index is I modulo N (all of them without
 * the flag). ctest registers the catalog as N such programs so that no one
 * of them runs for long and `ctest -j` spreads them over the cores: cold,
 * the whole catalog is about ten minutes of PoCL compilation on two cores. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel/kernel.h"
#include "check/catalog.h"
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
  int flipped = 0;
  for (int i = 0; i < nt; i++) {
    t[i] = c->templates[i];
    /* Every NATIVE* switch is a branch OpenCL on a CPU never takes. */
    if (!strncmp(t[i].name, "NATIVE", 6) && t[i].kind == ZMLX_TEMPLATE_BOOL && !t[i].value) {
      t[i].value = 1;
      flipped = 1;
    }
  }
  cuda_source_of(cs, k, c, nt ? c->templates : NULL);
  if (flipped) cuda_source_of(cs, k, c, t);
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

static int shard_index, shard_count = 1;
static cuda_sources launched; /* filled by the checks, compiled by the next test */

static int in_shard(int op_index) { return op_index % shard_count == shard_index; }

static void test_shard_checks(void **state) {
  (void)state;
  zmlx_device *devs[4];
  int nd = zt_devices(devs, 4);
  const zmlx_catalog_op *const *ops = zck_catalog_ops();
  if (!nd || !ops[0]) skip();
  zmlx_dtype dts[3] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
  failures f = {0};
  int64_t live = zmlx_array_live_count();
  zmlxi_kernel_set_launch_observer(observe_launch, &launched);
  int checked = 0;
  for (int i = 0; ops[i]; i++) {
    if (!in_shard(i)) continue;
    checked++;
    for (int d = 0; d < nd; d++)
      for (int k = 0; k < 3; k++) {
        int before = f.rows;
        zmlx_check_opts o = {.device = devs[d], .dtype = dts[k], .quick = 1,
                             .seed = zt_seed() + (uint64_t)i, .emit = collect, .ctx = &f};
        ZT_OK(ops[i]->check(&o));
        if (f.rows == before) fail_msg("%s reported no case", ops[i]->name);
      }
    fprintf(stderr, "checked %s\n", ops[i]->name);
  }
  zmlxi_kernel_set_launch_observer(NULL, NULL);
  fprintf(stderr, "shard %d/%d: %d ops, %d check cases, %d failed\n", shard_index, shard_count,
          checked, f.rows, f.failed);
  if (!checked) fail_msg("shard %d/%d holds no op", shard_index, shard_count);
  if (f.failed)
    fail_msg("%d of %d catalog cases failed (see above); to repeat: ZMLX_TEST_SEED=%llu %s "
             "--shard %d/%d",
             f.failed, f.rows, (unsigned long long)zt_seed(), "test_catalog", shard_index,
             shard_count);
  if (launched.errors) fail_msg("%d kernel sources failed to build for CUDA", launched.errors);
  assert_int_equal(zmlx_array_live_count(), live);
}

static void test_shard_compiles_for_sm90a(void **state) {
  (void)state;
#if ZT_SANITIZED || !defined(ZMLX_HAVE_CUDA)
  /* Under the sanitizer NVRTC would compile the same strings as the normal
   * build, only minutes slower; without CUDA there is no NVRTC to call. */
  skip();
#else
  if (!zmlxi_nvrtc_available() || !launched.n) skip();
  int errors = 0;
  for (int i = 0; i < launched.n; i++) {
    void *cubin = NULL;
    size_t size = 0;
    char *log = NULL;
    if (zmlxi_nvrtc_compile(launched.src[i], "catalog", "sm_90a", &cubin, &size, &log) != ZMLX_OK) {
      fprintf(stderr, "NVRTC sm_90a: %s\n", zmlx_last_error());
      errors++;
    }
    free(cubin);
    free(log);
  }
  fprintf(stderr, "NVRTC compiled %d distinct kernel sources for sm_90a\n", launched.n);
  if (errors) fail_msg("%d of %d kernel sources failed NVRTC", errors, launched.n);
#endif
}

static int parse_shard(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--shard") || i + 1 == argc) {
      fprintf(stderr, "usage: %s [--shard I/N]\n", argv[0]);
      return 0;
    }
    char slash = 0;
    if (sscanf(argv[++i], "%d%c%d", &shard_index, &slash, &shard_count) != 3 || slash != '/' ||
        shard_count < 1 || shard_index < 0 || shard_index >= shard_count) {
      fprintf(stderr, "--shard wants I/N with 0 <= I < N, got '%s'\n", argv[i]);
      return 0;
    }
  }
  return 1;
}

int main(int argc, char **argv) {
  if (!parse_shard(argc, argv)) return 2;
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_shard_checks),
                                     cmocka_unit_test(test_shard_compiles_for_sm90a)};
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  for (int i = 0; i < launched.n; i++) zmlx_free(launched.src[i]);
  free(launched.src);
  return zt_finish(failed, ZT_COUNT(tests));
}
