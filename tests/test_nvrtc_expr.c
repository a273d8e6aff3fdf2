/*
 * CUDA source of the expression kernels, compiled by NVRTC for sm_90a: every
 * function of the expression table (forward, VJP and JVP; f32 and bf16
 * storage) and every codegen pattern (elementwise in its dense, 16-byte
 * vector and broadcast/strided layouts; row reduction one thread per row
 * and one threadgroup per row, with SIMD and threadgroup-memory combines;
 * two-pass map-reduce; single-pass online softmax; the column sums of
 * broadcast gradients). Needs libnvrtc, not a GPU: a CUDA compile error
 * fails CI on machines that cannot run CUDA. Skips without libnvrtc. The
 * sanitizer build emits and counts every source but leaves the compiles to
 * the normal build (NVRTC under ASan's allocator doubles the time).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_support.h"

#ifdef ZMLX_HAVE_CUDA
#include "backends/cuda/nvrtc.h"
#include "gen/expr.h"
#include "gen/patterns.h"

static int n_compiled;

static int count_substr(const char *s, const char *sub) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, sub)) != NULL; p += strlen(sub)) n++;
  return n;
}

/* Compile a whole source (one or more kernels, as zmlx_op_source prints
 * them) for sm_90a; `min_kernels` kernels must be in it. */
static void compile_for_sm90a(const char *what, const char *src, int min_kernels) {
  int kernels = count_substr(src, "__global__");
  if (kernels < min_kernels)
    fail_msg("%s: %d kernels in the source, want at least %d:\n%s", what, kernels, min_kernels,
             src);
  n_compiled++;
  if (ZT_SANITIZED) return; /* the normal build compiles the same source */
  void *cubin = NULL;
  size_t size = 0;
  char *log = NULL;
  zmlx_status st = zmlxi_nvrtc_compile(src, what, "sm_90a", &cubin, &size, &log);
  if (st != ZMLX_OK) fail_msg("NVRTC sm_90a: %s: %s\n--- source:\n%s", what, zmlx_last_error(), src);
  assert_true(size > 4);
  assert_memory_equal(cubin, "\x7f" "ELF", 4); /* a cubin */
  free(cubin);
  free(log);
}

static const char *dir_name(zmlx_op_direction dir) {
  return dir == ZMLX_OP_FORWARD ? "forward" : dir == ZMLX_OP_VJP ? "vjp" : "jvp";
}

/* zmlx_op_source of `op` for CUDA, compiled. */
static void compile_op(zmlx_op *op, zmlx_op_direction dir, const zmlx_dtype *dts,
                       const char *what, int min_kernels) {
  char *src = NULL;
  zmlx_status st = zmlx_op_source(op, ZMLX_BACKEND_CUDA, dir, dts, &src);
  if (st != ZMLX_OK)
    fail_msg("zmlx_op_source(%s, %s): %s", what, dir_name(dir), zmlx_last_error());
  char name[256];
  snprintf(name, sizeof name, "%s-%s-%s.cu", what, dir_name(dir), zmlx_dtype_name(dts[0]));
  compile_for_sm90a(name, src, min_kernels);
  zmlx_free(src);
}

/* An elementwise op from `expr` over inputs x, y, z (the first n) and the
 * parameter alpha; every direction in every dtype of `dts`. */
static void compile_elementwise(const char *expr, int n_inputs, int n_params,
                                const zmlx_dtype *dtypes, int n_dtypes) {
  static const char *const inputs[] = {"x", "y", "z"};
  static const char *const params[] = {"alpha"};
  zmlx_op *op = NULL;
  zmlx_status st = zmlx_elementwise(expr, inputs, n_inputs, params, n_params, &op);
  if (st != ZMLX_OK) fail_msg("zmlx_elementwise('%s'): %s", expr, zmlx_last_error());
  for (int d = 0; d < n_dtypes; d++) {
    zmlx_dtype dts[3] = {dtypes[d], dtypes[d], dtypes[d]};
    /* Dense (vector where the dtypes allow) and broadcast layouts. */
    for (int dir = ZMLX_OP_FORWARD; dir <= ZMLX_OP_JVP; dir++)
      compile_op(op, (zmlx_op_direction)dir, dts, expr, 2);
  }
  zmlx_op_destroy(op);
}

/* -------------------------------------------------------------- functions */

static void test_every_function(void **state) {
  (void)state;
  if (!zmlxi_nvrtc_available()) skip();
  const zmlx_dtype dts[] = {ZMLX_F32, ZMLX_BF16};
  static const char *const args[] = {"x", "x, y", "x, y, z"};
  int n_fn = zmlxi_expr_function_count();
  assert_true(n_fn >= 39);
  int before = n_compiled;
  for (int i = 0; i < n_fn; i++) {
    const zmlx_expr_function *f = zmlxi_expr_function_at(i);
    assert_true(f->min_args >= 1 && f->max_args <= 3 && f->min_args <= f->max_args);
    for (int n = f->min_args; n <= f->max_args; n++) {
      char expr[96];
      snprintf(expr, sizeof expr, "%s(%s)", f->name, args[n - 1]);
      compile_elementwise(expr, n, 0, dts, 2);
    }
  }
  /* Every function at least once: forward, VJP and JVP in both dtypes. */
  assert_true(n_compiled - before >= n_fn * 2 * 3);
}

/* Operators, statements, parameters, constants and a wide program. */
static void test_language_constructs(void **state) {
  (void)state;
  if (!zmlxi_nvrtc_available()) skip();
  const zmlx_dtype dts[] = {ZMLX_F32, ZMLX_BF16};
  static const char *const programs[] = {
      "x * sigmoid(x) * y",
      "s = sigmoid(x); x * s * y",
      "x ** 3 - 2 ** y + x ** y + -x / (y * y + 1)",
      "x < y && y <= z || !(x >= z) || x == y || x != z",
      "x > 0 ? y : z",
      "where(x > alpha, x * alpha, inf) + nan * 0 + 1e-6",
      "leaky_relu(x, alpha) * elu(y, alpha)",
      "a = x + 1\nb = a * a\nb - a + y * z",
      "x * tanh(log1p(exp(x)))",
      "2.5",
  };
  for (size_t i = 0; i < sizeof programs / sizeof programs[0]; i++)
    compile_elementwise(programs[i], 3, 1, dts, 2);
}

/* --------------------------------------------------------------- patterns */

/* Elementwise layouts through zmlx_op_source: dense 16-byte vectors (f32,
 * f16, bf16, and mixed), plain dense (an i32 input has no vector path),
 * and the broadcast / strided kernel printed with each. */
static void test_elementwise_layouts(void **state) {
  (void)state;
  if (!zmlxi_nvrtc_available()) skip();
  static const char *const xy[] = {"x", "y"};
  zmlx_op *op = NULL;
  ZT_OK(zmlx_elementwise("x * sigmoid(x) * y", xy, 2, NULL, 0, &op));
  const zmlx_dtype cases[][2] = {{ZMLX_F32, ZMLX_F32}, {ZMLX_F16, ZMLX_F16},
                                 {ZMLX_BF16, ZMLX_BF16}, {ZMLX_F16, ZMLX_F32},
                                 {ZMLX_BF16, ZMLX_F16},  {ZMLX_I32, ZMLX_F32}};
  char *vec_src = NULL;
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
    for (int dir = ZMLX_OP_FORWARD; dir <= ZMLX_OP_JVP; dir++) {
      char *src = NULL;
      ZT_OK(zmlx_op_source(op, ZMLX_BACKEND_CUDA, (zmlx_op_direction)dir, cases[c], &src));
      char what[96];
      snprintf(what, sizeof what, "silu-mul-%s-%s-%s.cu", dir_name((zmlx_op_direction)dir),
               zmlx_dtype_name(cases[c][0]), zmlx_dtype_name(cases[c][1]));
      compile_for_sm90a(what, src, 2);
      if (c == 0 && dir == ZMLX_OP_FORWARD) {
        vec_src = src;
        continue;
      }
      if (c == 5 && dir == ZMLX_OP_FORWARD) /* i32: the dense kernel is not the vector one */
        assert_true(strcmp(src, vec_src) != 0);
      zmlx_free(src);
    }
  zmlx_free(vec_src);
  zmlx_op_destroy(op);

  /* Every layout straight from the pattern generator, with a broadcast
   * input, several outputs (the VJP graph) and 16-bit storage. */
  static const char *const xyz[] = {"x", "y", "z"};
  zmlx_expr *e = NULL, *vjp = NULL;
  ZT_OK(zmlxi_expr_parse("x * sigmoid(y) + z", xyz, 3, NULL, 0, &e));
  ZT_OK(zmlxi_expr_vjp(e, ZMLX_EXPR_WITH_PRIMAL, &vjp));
  const zmlx_expr *graphs[] = {e, vjp};
  const zmlx_ew_layout layouts[] = {ZMLX_EW_CONTIGUOUS, ZMLX_EW_STRIDED, ZMLX_EW_VECTOR};
  const zmlx_dtype storage[] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
  for (int g = 0; g < 2; g++)
    for (int l = 0; l < 3; l++)
      for (int d = 0; d < 3; d++) {
        zmlx_dtype dts[ZMLX_KERNEL_MAX_ARRAYS];
        int n_arrays = graphs[g]->n_inputs + graphs[g]->n_roots;
        for (int i = 0; i < n_arrays; i++) dts[i] = storage[(d + i) % 3];
        zmlx_pattern_kernel pk;
        ZT_OK(zmlxi_pattern_elementwise(graphs[g], layouts[l], dts, &pk));
        zmlx_sb sb;
        zmlxi_sb_init(&sb);
        ZT_OK(zmlxi_pattern_append_source(&pk, ZMLX_BACKEND_CUDA, dts, "pattern", &sb));
        char *src = NULL;
        ZT_OK(zmlxi_sb_finish(&sb, &src));
        char what[96];
        snprintf(what, sizeof what, "elementwise-%s-layout%d-%d.cu", g ? "vjp" : "fwd", l, d);
        compile_for_sm90a(what, src, 1);
        free(src);
        zmlxi_pattern_kernel_free(&pk);
      }
  zmlxi_expr_free(vjp);
  zmlxi_expr_free(e);
}

static void compile_reduce_op(zmlx_op *op, const char *what) {
  const zmlx_dtype dts[] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
  for (int d = 0; d < 3; d++) compile_op(op, ZMLX_OP_FORWARD, &dts[d], what, 1);
}

static void test_reductions(void **state) {
  (void)state;
  if (!zmlxi_nvrtc_available()) skip();
  const struct {
    const char *what;
    zmlx_reduce_desc d;
  } cases[] = {
      /* one threadgroup per row, SIMD sum / max / min */
      {"sum-group", {"0", NULL, "acc + x", "a + b", NULL}},
      {"max-group", {"-inf", "abs(x)", "max(acc, x)", "max(a, b)", NULL}},
      {"min-group", {"inf", NULL, "min(acc, x)", "min(a, b)", NULL}},
      /* one threadgroup per row, threadgroup-memory tree (not a SIMD op) */
      {"prod-group", {"1", NULL, "acc * x", "a * b", NULL}},
      /* mean and RMS with a finalize of acc and n */
      {"mean-group", {"0", NULL, "acc + x", "a + b", "acc / n"}},
      {"rms-group", {"0", "x * x", "acc + x", "a + b", "sqrt(acc / n + 1e-6)"}},
      /* one thread per row */
      {"sum-thread", {"0", NULL, "acc + x", NULL, NULL}},
      {"logsumexp-thread", {"0", "exp(x)", "acc + x", NULL, "log(acc)"}},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    zmlx_op *op = NULL;
    zmlx_status st = zmlx_reduce(&cases[i].d, &op);
    if (st != ZMLX_OK) fail_msg("zmlx_reduce(%s): %s", cases[i].what, zmlx_last_error());
    compile_reduce_op(op, cases[i].what);
    zmlx_op_destroy(op);
  }
}

static void test_map_reductions(void **state) {
  (void)state;
  if (!zmlxi_nvrtc_available()) skip();
  const zmlx_reduce_desc max_g = {"-inf", NULL, "max(acc, x)", "max(a, b)", NULL};
  const zmlx_reduce_desc sum_exp_g = {"0", "exp(x - r0)", "acc + x", "a + b", NULL};
  const zmlx_reduce_desc max_t = {"-inf", NULL, "max(acc, x)", NULL, NULL};
  const zmlx_reduce_desc sum_exp_t = {"0", "exp(x - r0)", "acc + x", NULL, NULL};
  const zmlx_reduce_desc ms = {"0", "x * x", "acc + x", "a + b", "rsqrt(acc / n + 1e-6)"};
  const zmlx_reduce_desc mean = {"0", NULL, "acc + x", "a + b", "acc / n"};
  const zmlx_reduce_desc var = {"0", "(x - r0) * (x - r0)", "acc + x", "a + b",
                                "rsqrt(acc / n + 1e-5)"};
  const struct {
    const char *what;
    zmlx_map_reduce_desc d;
    const char *banner;
  } cases[] = {
      {"softmax-two-pass-group", {{max_g, sum_exp_g}, 2, "exp(x - r0) / r1",
                                  ZMLX_MAP_REDUCE_TWO_PASS}, "threadgroup per row"},
      {"softmax-two-pass-thread", {{max_t, sum_exp_t}, 2, "exp(x - r0) / r1",
                                   ZMLX_MAP_REDUCE_TWO_PASS}, "thread per row"},
      {"softmax-online-group", {{max_g, sum_exp_g}, 2, "exp(x - r0) / r1",
                                ZMLX_MAP_REDUCE_ONLINE}, "online"},
      {"softmax-online-thread", {{max_t, sum_exp_t}, 2, "exp(x - r0) / r1",
                                 ZMLX_MAP_REDUCE_ONLINE}, "online"},
      {"softmax-auto", {{max_g, sum_exp_g}, 2, "exp(x - r0) / r1", ZMLX_MAP_REDUCE_AUTO},
       "online"},
      {"rmsnorm", {{ms, {0}}, 1, "x * r0", ZMLX_MAP_REDUCE_AUTO}, "threadgroup per row"},
      {"layernorm", {{mean, var}, 2, "(x - r0) * r1", ZMLX_MAP_REDUCE_AUTO},
       "threadgroup per row"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    zmlx_op *op = NULL;
    zmlx_status st = zmlx_map_reduce(&cases[i].d, &op);
    if (st != ZMLX_OK) fail_msg("zmlx_map_reduce(%s): %s", cases[i].what, zmlx_last_error());
    /* The pattern this case is meant to reach. */
    zmlx_dtype f32 = ZMLX_F32;
    char *src = NULL;
    ZT_OK(zmlx_op_source(op, ZMLX_BACKEND_CUDA, ZMLX_OP_FORWARD, &f32, &src));
    const char *nl = strchr(src, '\n');
    size_t first = nl ? (size_t)(nl - src) : strlen(src);
    char banner[256];
    snprintf(banner, sizeof banner, "%.*s", (int)(first < 255 ? first : 255), src);
    if (!strstr(banner, cases[i].banner))
      fail_msg("%s: banner '%s' does not say '%s'", cases[i].what, banner, cases[i].banner);
    zmlx_free(src);
    compile_reduce_op(op, cases[i].what);
    zmlx_op_destroy(op);
  }
}

/* The sums of broadcast gradients: a row reduction per threadgroup and the
 * column (leading-axis) reduction, which only run inside zmlx_op_vjp. */
static void test_gradient_sum_patterns(void **state) {
  (void)state;
  if (!zmlxi_nvrtc_available()) skip();
  static const char *const acc_x[] = {"acc", "x"}, *const a_b[] = {"a", "b"};
  zmlx_expr *init = NULL, *step = NULL, *combine = NULL;
  ZT_OK(zmlxi_expr_parse("0", NULL, 0, NULL, 0, &init));
  ZT_OK(zmlxi_expr_parse("acc + x", acc_x, 2, NULL, 0, &step));
  ZT_OK(zmlxi_expr_parse("a + b", a_b, 2, NULL, 0, &combine));
  zmlx_row_reduction r = {init, step, combine, NULL};
  const zmlx_dtype storage[] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
  for (int kind = 0; kind < 3; kind++)
    for (int d = 0; d < 3; d++) {
      zmlx_pattern_kernel pk;
      if (kind == 0) ZT_OK(zmlxi_pattern_col_reduce(&r, &pk));
      if (kind == 1) ZT_OK(zmlxi_pattern_row_reduce(&r, ZMLX_ROW_PER_GROUP, &pk));
      if (kind == 2) ZT_OK(zmlxi_pattern_row_reduce(&r, ZMLX_ROW_PER_THREAD, &pk));
      zmlx_dtype dts[2] = {storage[d], storage[d]};
      zmlx_sb sb;
      zmlxi_sb_init(&sb);
      ZT_OK(zmlxi_pattern_append_source(&pk, ZMLX_BACKEND_CUDA, dts, "pattern", &sb));
      char *src = NULL;
      ZT_OK(zmlxi_sb_finish(&sb, &src));
      char what[64];
      snprintf(what, sizeof what, "sum-%s-%s.cu", kind == 0 ? "cols" : kind == 1 ? "group" : "thread",
               zmlx_dtype_name(storage[d]));
      compile_for_sm90a(what, src, 1);
      free(src);
      zmlxi_pattern_kernel_free(&pk);
    }
  zmlxi_expr_free(init);
  zmlxi_expr_free(step);
  zmlxi_expr_free(combine);
}

static int report(void **state) {
  (void)state;
  fprintf(stderr, "[test_nvrtc_expr] %d CUDA sources %s for sm_90a\n", n_compiled,
          ZT_SANITIZED ? "emitted (the normal build compiles them)" : "compiled");
  return 0;
}

int main(void) {
  if (!zmlxi_nvrtc_available())
    fprintf(stderr, "[test_nvrtc_expr] libnvrtc not found: the NVRTC checks are skipped\n");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_function),
      cmocka_unit_test(test_language_constructs),
      cmocka_unit_test(test_elementwise_layouts),
      cmocka_unit_test(test_reductions),
      cmocka_unit_test(test_map_reductions),
      cmocka_unit_test(test_gradient_sum_patterns),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, report), ZT_COUNT(tests));
}
#else
static void test_cuda_not_built(void **state) {
  (void)state;
  skip();
}
int main(void) {
  fprintf(stderr, "[test_nvrtc_expr] built without CUDA headers: skipped\n");
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_cuda_not_built)};
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
#endif
