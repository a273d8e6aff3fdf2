/* The op catalog through its verifier: every op, every available backend,
 * f32 / f16 / bf16, the quick subset (`zmlx check --quick` runs the same). */
#include <stdio.h>
#include <string.h>

#include "ops/catalog.h"
#include "test_support.h"

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
  for (int d = 0; d < nd; d++)
    for (int k = 0; k < 3; k++)
      for (int i = 0; ops[i]; i++) {
        int before = f.rows;
        zmlx_check_opts o = {.device = devs[d], .dtype = dts[k], .quick = 1,
                             .seed = zt_seed() + (uint64_t)i, .emit = collect, .ctx = &f};
        ZT_OK(ops[i]->check(&o));
        if (f.rows == before) fail_msg("%s reported no case", ops[i]->name);
      }
  if (f.failed) fail_msg("%d of %d catalog cases failed (see above)", f.failed, f.rows);
  assert_int_equal(zmlx_array_live_count(), live);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_every_op_quick)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
