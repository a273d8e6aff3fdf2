/* Fused AdamW (src/nn/adamw.c): bad input is a status, names what is
 * wrong and changes nothing; the object counts only the steps it took.
 * The numbers (every dtype, lists, clipping, masters, 10 steps against
 * f64) are the catalog's `adamw` check (src/check/adamw_check.c), which
 * test_catalog runs. */
#include "test_support.h"

#include <math.h>
#include <stdlib.h>

#define MAX_DEVS 4

static void for_each_device(void (*fn)(zmlx_device *)) {
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (nd == 0) skip();
  for (int d = 0; d < nd; d++) fn(devs[d]);
}

/* Every bad call fails with its status and changes no param. */
static void bad_input(zmlx_device *dev) {
  int64_t s3 = 3, s4 = 4;
  float one[6] = {1, 1, 1, 1, 1, 1};
  zmlx_array *p = zt_array(dev, ZMLX_F32, 1, &s3, one), *g = zt_array(dev, ZMLX_F32, 1, &s3, one);
  zmlx_array *m = zt_array(dev, ZMLX_F32, 1, &s3, one), *v = zt_array(dev, ZMLX_F32, 1, &s3, one);
  zmlx_array *g4 = zt_array(dev, ZMLX_F32, 1, &s4, one), *m16 = zt_array(dev, ZMLX_BF16, 1, &s3, one);
  zmlx_array *i32 = zt_array(dev, ZMLX_I32, 1, &s3, one);
  zmlx_array *pl[2] = {p, p}, *gl[2] = {g, g4}, *ml[2] = {m, m}, *vl[2] = {v, v};
  ZT_FAILS(zmlx_adamw_step(NULL, 1e-3, 1, 2, pl, gl, ml, vl, NULL, NULL), ZMLX_ERR_SHAPE,
           "grads[1] has shape [4], params[1] [3]");
  zmlx_array *ml16[1] = {m16};
  ZT_FAILS(zmlx_adamw_step(NULL, 1e-3, 1, 1, pl, gl, ml16, vl, NULL, NULL), ZMLX_ERR_DTYPE,
           "exp_avg[0] has dtype bf16");
  zmlx_array *il[1] = {i32};
  ZT_FAILS(zmlx_adamw_step(NULL, 1e-3, 1, 1, il, gl, ml, vl, NULL, NULL), ZMLX_ERR_DTYPE,
           "params[0] has dtype i32");
  zmlx_array *nl[2] = {p, NULL}, *gg[2] = {g, g};
  ZT_FAILS(zmlx_adamw_step(NULL, 1e-3, 1, 2, pl, gg, nl, vl, NULL, NULL), ZMLX_ERR_NULL_ARG,
           "exp_avg[1] is NULL");
  ZT_FAILS(zmlx_adamw_step(NULL, 1e-3, 1, 1, pl, NULL, ml, vl, NULL, NULL), ZMLX_ERR_NULL_ARG,
           "list of 1 arrays");
  ZT_FAILS(zmlx_adamw_step(NULL, 1e-3, 0, 1, pl, gl, ml, vl, NULL, NULL), ZMLX_ERR_INVALID_ARG,
           "step is 0");
  ZT_FAILS(zmlx_adamw_step(NULL, NAN, 1, 1, pl, gl, ml, vl, NULL, NULL), ZMLX_ERR_INVALID_ARG,
           "lr nan");
  zmlx_adamw_opts bad = {.struct_size = sizeof bad, .beta1 = 1.0, .beta2 = 0.9};
  ZT_FAILS(zmlx_adamw_step(&bad, 1e-3, 1, 1, pl, gl, ml, vl, NULL, NULL), ZMLX_ERR_INVALID_ARG,
           "betas (1, 0.9)");
  zmlx_adamw_opts old = {.struct_size = 8};
  ZT_FAILS(zmlx_adamw_step(&old, 1e-3, 1, 1, pl, gl, ml, vl, NULL, NULL), ZMLX_ERR_INVALID_ARG,
           "struct_size is 8");
  zmlx_array *t = NULL;
  int64_t s23[2] = {2, 3};
  zmlx_array *p23 = zt_array(dev, ZMLX_F32, 2, s23, one), *tr = NULL;
  ZT_OK(zmlx_array_transpose(p23, NULL, &tr));
  zmlx_array *trl[1] = {tr};
  ZT_FAILS(zmlx_adamw_step(NULL, 1e-3, 1, 1, trl, gl, ml, vl, NULL, NULL), ZMLX_ERR_INVALID_ARG,
           "params[0] is a strided view");
  zmlx_adamw *opt = NULL;
  ZT_FAILS(zmlx_adamw_create(il, 1, NULL, &opt), ZMLX_ERR_INVALID_ARG, "params[0] (i32)");
  assert_null(opt);
  ZT_OK(zmlx_adamw_create(pl, 1, NULL, &opt));
  ZT_FAILS(zmlx_adamw_update(opt, gl, 2, 1e-3, NULL), ZMLX_ERR_INVALID_ARG, "2 gradients for 1 params");
  zmlx_array *g4l[1] = {g4};
  ZT_FAILS(zmlx_adamw_update(opt, g4l, 1, 1e-3, NULL), ZMLX_ERR_SHAPE, "grads[0] has shape [4]");
  int64_t taken = -1;
  ZT_OK(zmlx_adamw_state(opt, 0, NULL, NULL, &t, &taken));
  assert_null(t);
  assert_int_equal(taken, 0); /* the failed updates took no step */
  ZT_FAILS(zmlx_adamw_state(opt, 1, NULL, NULL, NULL, NULL), ZMLX_ERR_INVALID_ARG, "tensor 1 of 1");
  double *after = zt_download(p);
  for (int e = 0; e < 3; e++) assert_true(after[e] == 1.0);
  free(after);
  /* an empty list is a no-op whose norm is 0 */
  zmlx_array *norm = NULL;
  ZT_OK(zmlx_adamw_step(NULL, 1e-3, 1, 0, NULL, NULL, NULL, NULL, NULL, &norm));
  double *nz = zt_download(norm);
  assert_true(nz[0] == 0.0);
  free(nz);
  zmlx_array_release(norm);
  assert_int_equal(zmlx_adamw_destroy(NULL), ZMLX_OK);
  zmlx_adamw_destroy(opt);
  zmlx_array *all[] = {p, g, m, v, g4, m16, i32, p23, tr};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) zmlx_array_release(all[i]);
}

static void test_adamw_bad_input(void **s) {
  (void)s;
  for_each_device(bad_input);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_adamw_bad_input),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
