/* The model layer's bad input (src/nn): fused AdamW and MoE calls that
 * must fail return a status whose message names what is wrong, and change
 * nothing (the AdamW object counts only the steps it took). The numbers
 * are the catalog's `adamw`, `moe_gate`, `moe_dispatch` and `moe` checks
 * (src/check/adamw_check.c, moe_check.c), which test_catalog runs. */
#include "test_support.h"

#include <math.h>
#include <stdlib.h>

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
  zt_for_each_device(bad_input);
}

/* MoE: k out of range, expert weights of the wrong shape, indices of the
 * wrong dtype, a shared expert with a missing matrix. */
static void moe_bad_input(zmlx_device *dev) {
  float v[64];
  for (int i = 0; i < 64; i++) v[i] = (float)(i % 7) * 0.1f;
  int64_t s_l[2] = {2, 4}, s_x[2] = {2, 3}, s_r[2] = {4, 3}, s_w13[3] = {4, 5, 3}, s_w2[3] = {4, 3, 5};
  int64_t s_bad[3] = {4, 3, 3}, s_e[1] = {4};
  zmlx_array *l = zt_array(dev, ZMLX_F32, 2, s_l, v), *x = zt_array(dev, ZMLX_F32, 2, s_x, v);
  zmlx_array *r = zt_array(dev, ZMLX_F32, 2, s_r, v), *w1 = zt_array(dev, ZMLX_F32, 3, s_w13, v);
  zmlx_array *w3 = zt_array(dev, ZMLX_F32, 3, s_w13, v), *w2 = zt_array(dev, ZMLX_F32, 3, s_w2, v);
  zmlx_array *wb = zt_array(dev, ZMLX_F32, 3, s_bad, v), *bias5 = NULL;
  zmlx_array *w = NULL, *ix = NULL, *y = NULL, *off = NULL, *ord = NULL, *slot = NULL;
  zmlx_moe_gate_opts g = {.struct_size = sizeof g, .k = 5};
  ZT_FAILS(zmlx_moe_gate(l, &g, &w, &ix), ZMLX_ERR_INVALID_ARG, "k = 5 with 4 experts");
  assert_null(w);
  g.k = 9;
  ZT_FAILS(zmlx_moe_gate(l, &g, &w, &ix), ZMLX_ERR_INVALID_ARG, "k = 9");
  g.k = 2;
  g.scoring = (zmlx_moe_scoring)7;
  ZT_FAILS(zmlx_moe_gate(l, &g, &w, &ix), ZMLX_ERR_INVALID_ARG, "unknown scoring 7");
  g.scoring = ZMLX_MOE_SIGMOID;
  int64_t s5 = 5;
  bias5 = zt_array(dev, ZMLX_F32, 1, &s5, v);
  g.bias = bias5;
  ZT_FAILS(zmlx_moe_gate(l, &g, &w, &ix), ZMLX_ERR_SHAPE, "bias [5]");
  g.bias = NULL;
  ZT_FAILS(zmlx_moe_gate(x, &(zmlx_moe_gate_opts){.struct_size = 3}, &w, &ix), ZMLX_ERR_INVALID_ARG,
           "struct_size is 3");
  ZT_OK(zmlx_moe_gate(l, &g, &w, &ix));
  /* experts: w2 of w1's shape, k > experts, indices that are not i32 */
  ZT_FAILS(zmlx_moe_experts(x, w, ix, w1, w3, w1, &y), ZMLX_ERR_SHAPE,
           "w2 is [4, 5, 3], want [experts 4, 3, 5]");
  ZT_FAILS(zmlx_moe_experts(x, w, ix, w1, wb, w2, &y), ZMLX_ERR_SHAPE, "w3 is [4, 3, 3]");
  ZT_FAILS(zmlx_moe_experts(x, w, w, w1, w3, w2, &y), ZMLX_ERR_SHAPE, "(float, i32)");
  assert_null(y);
  ZT_FAILS(zmlx_moe_dispatch(w, 4, &off, &ord, &slot), ZMLX_ERR_DTYPE, "indices have dtype f32");
  ZT_FAILS(zmlx_moe_dispatch(ix, 0, &off, &ord, &slot), ZMLX_ERR_INVALID_ARG, "0 experts");
  /* the layer: router of the wrong width, half a shared expert */
  ZT_FAILS(zmlx_moe(x, l, w1, w3, w2, NULL, &y), ZMLX_ERR_SHAPE, "router [2, 4]");
  zmlx_moe_opts mo = {.struct_size = sizeof mo, .shared_w1 = w1};
  ZT_FAILS(zmlx_moe(x, r, w1, w3, w2, &mo, &y), ZMLX_ERR_NULL_ARG, "shared_w3");
  zmlx_array *e4 = zt_array(dev, ZMLX_F32, 1, s_e, v);
  ZT_FAILS(zmlx_moe(x, r, e4, w3, w2, NULL, &y), ZMLX_ERR_SHAPE, "w1 is [4]");
  assert_null(y);
  /* permute / combine: routing arrays of the wrong size */
  ZT_OK(zmlx_moe_dispatch(ix, 4, &off, &ord, &slot));
  ZT_FAILS(zmlx_moe_permute(x, ord, slot, 3, &y), ZMLX_ERR_SHAPE, "tokens x k = 6 entries");
  ZT_FAILS(zmlx_moe_permute(x, ord, slot, 0, &y), ZMLX_ERR_INVALID_ARG, "k = 0");
  ZT_FAILS(zmlx_moe_combine(x, w, ord, slot, &y), ZMLX_ERR_SHAPE, "[tokens x k, hidden]");
  ZT_FAILS(zmlx_moe_combine(r, w, w, slot, &y), ZMLX_ERR_SHAPE, "must be i32");
  assert_null(y);
  zmlx_array_release(off), zmlx_array_release(ord), zmlx_array_release(slot);
  /* quantized experts: a bad bit width, formats that differ, a dense w */
  zmlx_moe_qweight q8 = {.q = w1, .scales = r, .bits = 5};
  ZT_FAILS(zmlx_moe_experts_quantized(x, w, ix, &q8, &q8, &q8, &y), ZMLX_ERR_INVALID_ARG,
           "w1 has bits 5");
  zmlx_moe_qweight q4 = {.q = w1, .scales = r, .bits = 4, .group_size = 32};
  q8.bits = 8;
  ZT_FAILS(zmlx_moe_experts_quantized(x, w, ix, &q8, &q4, &q8, &y), ZMLX_ERR_INVALID_ARG,
           "share one format");
  ZT_FAILS(zmlx_moe_experts_quantized(x, w, ix, &q8, &q8, &q8, &y), ZMLX_ERR_SHAPE,
           "w1.q is [4, 5, 3] f32, want [4, 5, 3] i8");
  assert_null(y);
  zmlx_array *all[] = {l, x, r, w1, w3, w2, wb, bias5, w, ix, e4};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) zmlx_array_release(all[i]);
}

static void test_moe_bad_input(void **s) {
  (void)s;
  zt_for_each_device(moe_bad_input);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_adamw_bad_input),
      cmocka_unit_test(test_moe_bad_input),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
