/*
 * Codegen patterns (src/gen/patterns.c) on every available backend against
 * C references: elementwise (flat, 16-byte vector, strided/broadcast,
 * several outputs), row reductions (thread per row, threadgroup per row
 * with SIMD and with a tree combine), two-pass and online map-reduce,
 * column reduction, the threadgroup heuristic, byte-identical generated
 * source, and NVRTC compiles of every pattern's CUDA source for sm_90a.
 *
 * Edge sizes 1, 3, 31, 33, 1000, 4097; one row and many; f32, f16, bf16;
 * outputs poisoned before each launch so an unwritten element fails.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/patterns.h"
#include "test_support.h"

#ifdef ZMLX_HAVE_CUDA
#include "backends/cuda/nvrtc.h"
#endif

#define MAX_DEVS 4
#define N_COLS 6
#define N_DTS 3

static const int64_t COLS[N_COLS] = {1, 3, 31, 33, 1000, 4097};
static const zmlx_dtype DTS[N_DTS] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
static const char *const XYZ[] = {"x", "y", "z"};
static const char *const ACC_X_R0[] = {"acc", "x", "r0"};
static const char *const A_B[] = {"a", "b"};
static const char *const ACC_N_R0[] = {"acc", "n", "r0"};
static const char *const WRITE[] = {"x", "r0", "r1", "n"};

/* ------------------------------------------------------------ helpers */

static float *rnd(size_t n, float lo, float hi, uint64_t salt) {
  uint64_t st = zt_seed() ^ (salt * 0x9E3779B97F4A7C15ull);
  if (!st) st = 1;
  float *x = malloc(n * sizeof *x + 1);
  assert_non_null(x);
  zt_fill_uniform(x, n, lo, hi, &st);
  return x;
}

static zmlx_expr *parse(const char *text, const char *const *names, int n) {
  zmlx_expr *e = NULL;
  ZT_OK(zmlxi_expr_parse(text, names, n, NULL, 0, &e));
  return e;
}

static zmlx_device_info info_of(zmlx_device *dev) {
  zmlx_device_info info;
  ZT_OK(zmlx_device_get_info(dev, &info));
  return info;
}

static void run_kernel(const zmlx_pattern_kernel *pk, zmlx_array **in, zmlx_array **out,
                       const double *params, zmlx_pattern_geometry g) {
  zmlx_kernel *k = NULL;
  ZT_OK(zmlxi_pattern_kernel_create(pk, &k));
  zmlx_kernel_call c = {.n_inputs = pk->n_inputs, .n_outputs = pk->n_outputs, .inputs = in,
                        .outputs = out, .params = params};
  memcpy(c.grid, g.grid, sizeof g.grid);
  memcpy(c.threadgroup, g.threadgroup, sizeof g.threadgroup);
  ZT_OK(zmlx_kernel_launch(k, &c));
  zmlx_kernel_destroy(k);
}

static int64_t rows_for(int64_t cols) { return cols <= 33 ? 300 : 5; }

/* The row modes a device runs: one thread per row, and its threadgroup
 * mode (SIMD helpers where they are native, threadgroup memory on OpenCL).
 * Every mode's CUDA source is compiled by test_nvrtc_every_pattern. */
static zmlx_row_mode row_mode(zmlx_device *dev, int i) {
  return i == 0 ? ZMLX_ROW_PER_THREAD : zmlxi_pattern_group_mode(zmlx_device_backend(dev));
}

/* -------------------------------------------------------- elementwise */

typedef struct ew_case {
  const char *text;
  int n_inputs;
} ew_case;

static const ew_case EW_CASES[] = {
    {"tanh(x) * 2 - 1", 1},                         /* unary */
    {"x * y + 1", 2},                               /* binary */
    {"where(x > y, x * z, y - sigmoid(z))", 3},     /* n-ary */
};

/* Graph e on random inputs of dtype dt (layout given), one or more roots;
 * every root checked against the f64 interpreter on the rounded inputs. */
static void check_ew_graph(zmlx_device *dev, const zmlx_expr *e, zmlx_ew_layout layout,
                           zmlx_dtype dt, int64_t n, const char *what) {
  int ni = e->n_inputs, no = e->n_roots;
  zmlx_dtype dts[8];
  for (int i = 0; i < ni + no; i++) dts[i] = dt;
  zmlx_pattern_kernel pk;
  ZT_OK(zmlxi_pattern_elementwise(e, layout, dts, &pk));
  float *x[8];
  zmlx_array *in[8], *out[8];
  for (int i = 0; i < ni; i++) {
    x[i] = rnd((size_t)n, -2, 2, (uint64_t)(n * 8 + i));
    in[i] = zt_array(dev, dt, 1, &n, x[i]);
  }
  for (int j = 0; j < no; j++) out[j] = zt_poisoned(dev, dt, 1, &n);
  zmlx_device_info info = info_of(dev);
  int width = zmlxi_pattern_vector_width(dts, ni + no);
  double params[1] = {(double)n};
  run_kernel(&pk, in, out, params, zmlxi_pattern_elementwise_geometry(layout, n, width, &info));
  double *want = malloc((size_t)(n * no) * sizeof *want + 1), r[8], v[8];
  for (int64_t k = 0; k < n; k++) {
    for (int i = 0; i < ni; i++) v[i] = zt_round_to(dt, x[i][k]);
    ZT_OK(zmlxi_expr_eval(e, v, NULL, r));
    for (int j = 0; j < no; j++) want[j * n + k] = r[j];
  }
  for (int j = 0; j < no; j++) {
    double *got = zt_download(out[j]);
    char msg[160];
    snprintf(msg, sizeof msg, "%s %s layout %d n %lld out %d", what, zmlx_dtype_name(dt), layout,
             (long long)n, j);
    double tol = zt_tolerance(dt) + 1e-6;
    zt_assert_close(got, want + j * n, (size_t)n, tol, tol, msg);
    free(got);
    zmlx_array_release(out[j]);
  }
  for (int i = 0; i < ni; i++) zmlx_array_release(in[i]), free(x[i]);
  free(want);
  zmlxi_pattern_kernel_free(&pk);
}

static void test_elementwise_flat_and_vector(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++)
    for (size_t c = 0; c < sizeof EW_CASES / sizeof *EW_CASES; c++) {
      zmlx_expr *e = parse(EW_CASES[c].text, XYZ, EW_CASES[c].n_inputs);
      for (int t = 0; t < N_DTS; t++)
        for (int s = 0; s < N_COLS; s++) {
          check_ew_graph(devs[d], e, ZMLX_EW_CONTIGUOUS, DTS[t], COLS[s], EW_CASES[c].text);
          check_ew_graph(devs[d], e, ZMLX_EW_VECTOR, DTS[t], COLS[s], EW_CASES[c].text);
        }
      zmlxi_expr_free(e);
    }
}

/* Several outputs: the two gradients of a VJP graph, one kernel. */
static void test_elementwise_several_outputs(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_expr *f = parse("x * y + sin(x)", XYZ, 2), *g = NULL;
  ZT_OK(zmlxi_expr_vjp(f, ZMLX_EXPR_WITH_PRIMAL, &g));
  assert_int_equal(g->n_roots, 3);
  for (int d = 0; d < nd; d++)
    for (int t = 0; t < N_DTS; t++)
      for (int s = 0; s < N_COLS; s++) {
        check_ew_graph(devs[d], g, ZMLX_EW_CONTIGUOUS, DTS[t], COLS[s], "several outputs");
        check_ew_graph(devs[d], g, ZMLX_EW_VECTOR, DTS[t], COLS[s], "several outputs");
      }
  zmlxi_expr_free(g);
  zmlxi_expr_free(f);
}

/* Mixed dtypes in the vector layout: 8 elements per chunk, the f32 array
 * moved as two 16-byte accesses. */
static void test_vector_mixed_dtypes(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_expr *e = parse("x * y", XYZ, 2);
  zmlx_dtype dts[3] = {ZMLX_BF16, ZMLX_F32, ZMLX_F16};
  assert_int_equal(zmlxi_pattern_vector_width(dts, 3), 8);
  zmlx_dtype f32s[2] = {ZMLX_F32, ZMLX_F32}, ints[2] = {ZMLX_F32, ZMLX_I32};
  assert_int_equal(zmlxi_pattern_vector_width(f32s, 2), 4);
  assert_int_equal(zmlxi_pattern_vector_width(ints, 2), 0);
  for (int d = 0; d < nd; d++) {
    int64_t n = 1003;
    zmlx_pattern_kernel pk;
    ZT_OK(zmlxi_pattern_elementwise(e, ZMLX_EW_VECTOR, dts, &pk));
    float *x = rnd((size_t)n, -3, 3, 1), *y = rnd((size_t)n, -3, 3, 2);
    zmlx_array *in[2] = {zt_array(devs[d], ZMLX_BF16, 1, &n, x), zt_array(devs[d], ZMLX_F32, 1, &n, y)};
    zmlx_array *out = zt_poisoned(devs[d], ZMLX_F16, 1, &n);
    zmlx_device_info info = info_of(devs[d]);
    double params[1] = {(double)n};
    run_kernel(&pk, in, &out, params, zmlxi_pattern_elementwise_geometry(ZMLX_EW_VECTOR, n, 8, &info));
    double *got = zt_download(out), *want = malloc((size_t)n * sizeof *want);
    for (int64_t i = 0; i < n; i++) want[i] = zt_round_to(ZMLX_BF16, x[i]) * (double)y[i];
    zt_assert_close(got, want, (size_t)n, 1e-3, 2e-3, "vector bf16 * f32 -> f16");
    free(got), free(want), free(x), free(y);
    zmlx_array_release(in[0]), zmlx_array_release(in[1]), zmlx_array_release(out);
    zmlxi_pattern_kernel_free(&pk);
  }
  zmlxi_expr_free(e);
}

/* ------------------------------------------------ broadcasting (builder) */

/* out[i] for NumPy broadcasting of dense host values. */
static int64_t bcast_index(int64_t flat, int ond, const int64_t *oshape, int nd,
                           const int64_t *shape) {
  int64_t coord[ZMLX_MAX_DIMS], idx = 0;
  for (int d = ond - 1; d >= 0; d--) {
    coord[d] = flat % oshape[d];
    flat /= oshape[d];
  }
  for (int d = 0; d < nd; d++) {
    int64_t c = shape[d] == 1 ? 0 : coord[d + ond - nd];
    idx = idx * shape[d] + c;
  }
  return idx;
}

/* `x * y - x` over two (possibly strided) arrays against host broadcasting. */
static void check_broadcast_pair(zmlx_device *dev, zmlx_array *x, zmlx_array *y,
                                 zmlx_dtype dt, const char *what) {
  static const char *const names[] = {"x", "y"};
  zmlx_op *op = NULL;
  ZT_OK(zmlx_elementwise("x * y - x", names, 2, NULL, 0, &op));
  zmlx_array *in[2] = {x, y}, *out = NULL;
  ZT_OK(zmlx_op_call(op, in, 2, NULL, NULL, &out));
  (void)dev;
  int ond = zmlx_array_ndim(out);
  const int64_t *os = zmlx_array_shape(out);
  double *hx = zt_download(x), *hy = zt_download(y), *got = zt_download(out);
  int64_t n = zmlx_array_size(out);
  double *want = malloc((size_t)n * sizeof *want + 1);
  for (int64_t i = 0; i < n; i++) {
    double a = hx[bcast_index(i, ond, os, zmlx_array_ndim(x), zmlx_array_shape(x))];
    double b = hy[bcast_index(i, ond, os, zmlx_array_ndim(y), zmlx_array_shape(y))];
    want[i] = a * b - a;
  }
  assert_int_equal(zmlx_array_dtype(out), dt);
  double tol = 2 * zt_tolerance(dt) + 1e-6;
  zt_assert_close(got, want, (size_t)n, tol, tol, what);
  free(hx), free(hy), free(got), free(want);
  zmlx_array_release(out);
  zmlx_op_destroy(op);
}

static zmlx_array *rnd_array(zmlx_device *dev, zmlx_dtype dt, int nd, const int64_t *shape,
                             uint64_t salt) {
  int64_t n = 1;
  for (int d = 0; d < nd; d++) n *= shape[d];
  float *v = rnd((size_t)n, -2, 2, salt);
  zmlx_array *a = zt_array(dev, dt, nd, shape, v);
  free(v);
  return a;
}

static void test_broadcasting(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++)
    for (int t = 0; t < N_DTS; t++) {
      zmlx_device *dev = devs[d];
      zmlx_dtype dt = DTS[t];
      struct { int na; int64_t a[3]; int nb; int64_t b[3]; const char *what; } cases[] = {
          {2, {3, 1}, 2, {1, 4}, "[3,1] x [1,4]"},
          {0, {0}, 2, {5, 7}, "scalar x [5,7]"},
          {2, {33, 1000}, 1, {1000}, "[33,1000] x [1000]"},
          {3, {2, 3, 4}, 2, {3, 1}, "[2,3,4] x [3,1]"},
          {1, {4097}, 1, {1}, "[4097] x [1]"},
      };
      for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        zmlx_array *x = rnd_array(dev, dt, cases[c].na, cases[c].a, 10 + c);
        zmlx_array *y = rnd_array(dev, dt, cases[c].nb, cases[c].b, 20 + c);
        check_broadcast_pair(dev, x, y, dt, cases[c].what);
        check_broadcast_pair(dev, y, x, dt, cases[c].what);
        zmlx_array_release(x), zmlx_array_release(y);
      }
    }
}

/* Strided view inputs: a transpose and a step-2 slice. */
static void test_strided_views(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++)
    for (int t = 0; t < N_DTS; t++) {
      int64_t s46[2] = {40, 66}, s64[2] = {66, 40};
      zmlx_array *a = rnd_array(devs[d], DTS[t], 2, s46, 31), *at = NULL;
      ZT_OK(zmlx_array_transpose(a, NULL, &at));
      zmlx_array *b = rnd_array(devs[d], DTS[t], 2, s64, 32);
      check_broadcast_pair(devs[d], at, b, DTS[t], "transposed x dense");
      int64_t start[2] = {1, 0}, stop[2] = {133, 40}, step[2] = {2, 1}, big[2] = {133, 40};
      zmlx_array *c = rnd_array(devs[d], DTS[t], 2, big, 33), *cs = NULL;
      ZT_OK(zmlx_array_slice(c, start, stop, step, &cs));
      check_broadcast_pair(devs[d], cs, at, DTS[t], "sliced x transposed");
      int64_t row[1] = {40};
      zmlx_array *r = rnd_array(devs[d], DTS[t], 1, row, 34);
      check_broadcast_pair(devs[d], cs, r, DTS[t], "sliced x broadcast row");
      zmlx_array_release(a), zmlx_array_release(at), zmlx_array_release(b);
      zmlx_array_release(c), zmlx_array_release(cs), zmlx_array_release(r);
    }
}

/* ------------------------------------------------ vector path selection */

static int has_key_prefix(const zmlx_op *op, const char *prefix) {
  for (int i = 0; i < op->n_kernels; i++)
    if (!strncmp(op->kernels[i].key, prefix, strlen(prefix))) return 1;
  return 0;
}

/* Dense aligned inputs take the vector layout; an offset that is not a
 * multiple of 16 bytes falls back to the flat one; both are right. */
static void test_vector_fallback(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  static const char *const names[] = {"x", "y"};
  for (int d = 0; d < nd; d++)
    for (int t = 0; t < N_DTS; t++) {
      zmlx_op *aligned = NULL, *misaligned = NULL;
      ZT_OK(zmlx_elementwise("x * y - x", names, 2, NULL, 0, &aligned));
      ZT_OK(zmlx_elementwise("x * y - x", names, 2, NULL, 0, &misaligned));
      int64_t n = 4097, big = 4098, start = 1, stop = 4098;
      zmlx_array *x = rnd_array(devs[d], DTS[t], 1, &n, 41), *y = rnd_array(devs[d], DTS[t], 1, &n, 42);
      zmlx_array *base = rnd_array(devs[d], DTS[t], 1, &big, 43), *xs = NULL, *out = NULL;
      ZT_OK(zmlx_array_slice(base, &start, &stop, NULL, &xs)); /* element 0 at offset 1 */
      zmlx_array_release(base);
      zmlx_array *in[2] = {x, y};
      ZT_OK(zmlx_op_call(aligned, in, 2, NULL, NULL, &out));
      zmlx_array_release(out);
      assert_true(has_key_prefix(aligned, "F|v|"));
      in[0] = xs;
      ZT_OK(zmlx_op_call(misaligned, in, 2, NULL, NULL, &out));
      zmlx_array_release(out);
      assert_true(has_key_prefix(misaligned, "F|c"));
      assert_false(has_key_prefix(misaligned, "F|v"));
      check_broadcast_pair(devs[d], x, y, DTS[t], "aligned");
      check_broadcast_pair(devs[d], xs, y, DTS[t], "offset 1 element");
      zmlx_array_release(x), zmlx_array_release(xs), zmlx_array_release(y);
      zmlx_op_destroy(aligned), zmlx_op_destroy(misaligned);
    }
}

/* ------------------------------------------------------ row reductions */

typedef struct red_case {
  const char *name, *init, *step, *combine;
  float lo, hi;
  int kind; /* 0 sum, 1 max, 2 product */
} red_case;

static const red_case RED_CASES[] = {
    {"sum", "0", "acc + x", "a + b", -2, 2, 0},           /* SIMD sum */
    {"max", "-inf", "max(acc, x)", "max(a, b)", -5, 5, 1}, /* SIMD max */
    {"product", "1", "acc * x", "a * b", 0.99f, 1.01f, 2}, /* threadgroup tree */
};

static zmlx_row_reduction parse_reduction(const red_case *rc, zmlx_expr **g) {
  g[0] = parse(rc->init, NULL, 0);
  g[1] = parse(rc->step, ACC_X_R0, 2);
  g[2] = parse(rc->combine, A_B, 2);
  zmlx_row_reduction r = {g[0], g[1], g[2], NULL};
  return r;
}

static void row_reference(const red_case *rc, const double *x, int64_t cols, double *want,
                          double *scale) {
  double acc = rc->kind == 0 ? 0 : rc->kind == 1 ? -INFINITY : 1, sa = 0;
  for (int64_t j = 0; j < cols; j++) {
    acc = rc->kind == 0 ? acc + x[j] : rc->kind == 1 ? fmax(acc, x[j]) : acc * x[j];
    sa += fabs(x[j]);
  }
  *want = acc;
  *scale = rc->kind == 0 ? sa : fabs(acc);
}

static void check_row_reduce(zmlx_device *dev, const red_case *rc, zmlx_row_mode mode,
                             zmlx_dtype dt, int64_t rows, int64_t cols) {
  zmlx_expr *g[3];
  zmlx_row_reduction r = parse_reduction(rc, g);
  zmlx_pattern_kernel pk;
  ZT_OK(zmlxi_pattern_row_reduce(&r, mode, &pk));
  int64_t shape[2] = {rows, cols};
  size_t n = (size_t)(rows * cols);
  float *x = rnd(n, rc->lo, rc->hi, (uint64_t)(cols * 3 + rc->kind));
  zmlx_array *in = zt_array(dev, dt, 2, shape, x), *out = zt_poisoned(dev, dt, 1, &rows);
  zmlx_device_info info = info_of(dev);
  double params[2] = {(double)rows, (double)cols};
  run_kernel(&pk, &in, &out, params, zmlxi_pattern_row_geometry(mode, rows, cols, &info));
  double *got = zt_download(out), *xr = malloc(n * sizeof *xr);
  for (size_t i = 0; i < n; i++) xr[i] = zt_round_to(dt, x[i]);
  for (int64_t i = 0; i < rows; i++) {
    double want, scale;
    row_reference(rc, xr + i * cols, cols, &want, &scale);
    char msg[160];
    snprintf(msg, sizeof msg, "row %s mode %d %s %lldx%lld row %lld", rc->name, mode,
             zmlx_dtype_name(dt), (long long)rows, (long long)cols, (long long)i);
    double atol = 1e-5 * scale + 1e-6 + (rc->kind == 2 ? 1e-3 * scale : 0);
    zt_assert_close(&got[i], &want, 1, atol, zt_tolerance(dt), msg);
  }
  free(got), free(xr), free(x);
  zmlx_array_release(in), zmlx_array_release(out);
  zmlxi_pattern_kernel_free(&pk);
  for (int k = 0; k < 3; k++) zmlxi_expr_free(g[k]);
}

static void test_row_reduce(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++)
    for (size_t c = 0; c < sizeof RED_CASES / sizeof *RED_CASES; c++)
      for (int t = 0; t < N_DTS; t++)
        for (int s = 0; s < N_COLS; s++)
          for (int m = 0; m < 2; m++) {
            zmlx_row_mode mode = row_mode(devs[d], m);
            check_row_reduce(devs[d], &RED_CASES[c], mode, DTS[t], 1, COLS[s]);
            check_row_reduce(devs[d], &RED_CASES[c], mode, DTS[t], rows_for(COLS[s]), COLS[s]);
          }
}

/* Sum over the leading axis, one thread per column. */
static void test_col_reduce(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_expr *g[3];
  zmlx_row_reduction r = parse_reduction(&RED_CASES[0], g);
  zmlx_pattern_kernel pk;
  ZT_OK(zmlxi_pattern_col_reduce(&r, &pk));
  for (int d = 0; d < nd; d++)
    for (int t = 0; t < N_DTS; t++)
      for (int s = 0; s < N_COLS; s++) {
        int64_t cols = COLS[s], rows = rows_for(cols) + 1, shape[2] = {rows, cols};
        size_t n = (size_t)(rows * cols);
        float *x = rnd(n, -2, 2, (uint64_t)cols);
        zmlx_array *in = zt_array(devs[d], DTS[t], 2, shape, x);
        zmlx_array *out = zt_poisoned(devs[d], DTS[t], 1, &cols);
        zmlx_device_info info = info_of(devs[d]);
        double params[2] = {(double)rows, (double)cols};
        run_kernel(&pk, &in, &out, params, zmlxi_pattern_col_geometry(cols, &info));
        double *got = zt_download(out);
        for (int64_t j = 0; j < cols; j++) {
          double want = 0, sa = 0;
          for (int64_t i = 0; i < rows; i++) {
            double v = zt_round_to(DTS[t], x[i * cols + j]);
            want += v, sa += fabs(v);
          }
          zt_assert_close(&got[j], &want, 1, 1e-5 * sa + 1e-6, zt_tolerance(DTS[t]), "col sum");
        }
        free(got), free(x);
        zmlx_array_release(in), zmlx_array_release(out);
      }
  zmlxi_pattern_kernel_free(&pk);
  for (int k = 0; k < 3; k++) zmlxi_expr_free(g[k]);
}

/* ------------------------------------------------------ map-reduce */

typedef enum { MR_SOFTMAX, MR_ONLINE, MR_LAYERNORM, MR_RMSNORM } mr_kind;

typedef struct mr_graphs {
  zmlx_expr *g[10];
  int n;
  zmlx_row_reduction r[2];
  zmlx_expr *write;
} mr_graphs;

static zmlx_expr *keep(mr_graphs *m, zmlx_expr *e) { return m->g[m->n++] = e; }

static void mr_build(mr_graphs *m, mr_kind kind, int *n_reduce) {
  memset(m, 0, sizeof *m);
  zmlx_expr *sum = keep(m, parse("a + b", A_B, 2)), *zero = keep(m, parse("0", NULL, 0));
  zmlx_expr *mean = keep(m, parse("acc / n", ACC_N_R0, 2));
  if (kind == MR_SOFTMAX || kind == MR_ONLINE) {
    m->r[0] = (zmlx_row_reduction){keep(m, parse("-inf", NULL, 0)),
                                   keep(m, parse("max(acc, x)", ACC_X_R0, 2)),
                                   keep(m, parse("max(a, b)", A_B, 2)), NULL};
    m->r[1] = (zmlx_row_reduction){zero, keep(m, parse("acc + exp(x - r0)", ACC_X_R0, 3)), sum,
                                   NULL};
    m->write = keep(m, parse("exp(x - r0) / r1", WRITE, 4));
    *n_reduce = 2;
  } else if (kind == MR_LAYERNORM) {
    m->r[0] = (zmlx_row_reduction){zero, keep(m, parse("acc + x", ACC_X_R0, 2)), sum, mean};
    m->r[1] = (zmlx_row_reduction){zero, keep(m, parse("acc + (x - r0) * (x - r0)", ACC_X_R0, 3)),
                                   sum, mean};
    m->write = keep(m, parse("(x - r0) * rsqrt(r1 + 1e-5)", WRITE, 4));
    *n_reduce = 2;
  } else {
    m->r[0] = (zmlx_row_reduction){zero, keep(m, parse("acc + x * x", ACC_X_R0, 2)), sum, mean};
    m->write = keep(m, parse("x * rsqrt(r0 + 1e-6)", WRITE, 4));
    *n_reduce = 1;
  }
}

static void mr_free(mr_graphs *m) {
  for (int i = 0; i < m->n; i++) zmlxi_expr_free(m->g[i]);
}

static void mr_reference(mr_kind kind, const double *x, int64_t cols, double *out) {
  double a = 0, b = 0;
  if (kind == MR_SOFTMAX || kind == MR_ONLINE) {
    a = -INFINITY;
    for (int64_t j = 0; j < cols; j++) a = fmax(a, x[j]);
    for (int64_t j = 0; j < cols; j++) b += exp(x[j] - a);
    for (int64_t j = 0; j < cols; j++) out[j] = exp(x[j] - a) / b;
  } else if (kind == MR_LAYERNORM) {
    for (int64_t j = 0; j < cols; j++) a += x[j];
    a /= (double)cols;
    for (int64_t j = 0; j < cols; j++) b += (x[j] - a) * (x[j] - a);
    b /= (double)cols;
    for (int64_t j = 0; j < cols; j++) out[j] = (x[j] - a) / sqrt(b + 1e-5);
  } else {
    for (int64_t j = 0; j < cols; j++) a += x[j] * x[j];
    a /= (double)cols;
    for (int64_t j = 0; j < cols; j++) out[j] = x[j] / sqrt(a + 1e-6);
  }
}

static void check_map_reduce(zmlx_device *dev, mr_kind kind, zmlx_row_mode mode, zmlx_dtype dt,
                             int64_t rows, int64_t cols) {
  mr_graphs m;
  int n_reduce = 0;
  mr_build(&m, kind, &n_reduce);
  zmlx_pattern_kernel pk;
  if (kind == MR_ONLINE)
    ZT_OK(zmlxi_pattern_row_online(NULL, NULL, m.write, mode, &pk));
  else
    ZT_OK(zmlxi_pattern_row_map_reduce(m.r, n_reduce, m.write, mode, &pk));
  int64_t shape[2] = {rows, cols};
  size_t n = (size_t)(rows * cols);
  float *x = rnd(n, -6, 6, (uint64_t)(cols * 7 + kind));
  zmlx_array *in = zt_array(dev, dt, 2, shape, x), *out = zt_poisoned(dev, dt, 2, shape);
  zmlx_device_info info = info_of(dev);
  double params[2] = {(double)rows, (double)cols};
  run_kernel(&pk, &in, &out, params, zmlxi_pattern_row_geometry(mode, rows, cols, &info));
  double *got = zt_download(out), *xr = malloc(n * sizeof *xr), *want = malloc(n * sizeof *want);
  for (size_t i = 0; i < n; i++) xr[i] = zt_round_to(dt, x[i]);
  for (int64_t i = 0; i < rows; i++) mr_reference(kind, xr + i * cols, cols, want + i * cols);
  char msg[160];
  snprintf(msg, sizeof msg, "map-reduce %d mode %d %s %lldx%lld", kind, mode, zmlx_dtype_name(dt),
           (long long)rows, (long long)cols);
  double rtol = 2 * zt_tolerance(dt) + 1e-5;
  zt_assert_close(got, want, n, kind == MR_SOFTMAX || kind == MR_ONLINE ? 1e-6 : 1e-4, rtol, msg);
  free(got), free(xr), free(want), free(x);
  zmlx_array_release(in), zmlx_array_release(out);
  zmlxi_pattern_kernel_free(&pk);
  mr_free(&m);
}

static void test_map_reduce(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  for (int d = 0; d < nd; d++)
    for (int kind = MR_SOFTMAX; kind <= MR_RMSNORM; kind++)
      for (int t = 0; t < N_DTS; t++)
        for (int s = 0; s < N_COLS; s++)
          for (int m = 0; m < 2; m++) {
            zmlx_row_mode mode = row_mode(devs[d], m);
            check_map_reduce(devs[d], (mr_kind)kind, mode, DTS[t], 1, COLS[s]);
            check_map_reduce(devs[d], (mr_kind)kind, mode, DTS[t], rows_for(COLS[s]), COLS[s]);
          }
}

/* The online sweep keeps -inf (masked) entries and NaN as two-pass does. */
static void test_online_special_values(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  mr_graphs g;
  int n_reduce;
  mr_build(&g, MR_ONLINE, &n_reduce);
  float x[4][40];
  for (int j = 0; j < 40; j++) {
    x[0][j] = j < 20 ? -INFINITY : (float)(j % 7) - 3; /* masked prefix */
    x[1][j] = j % 3 ? -INFINITY : 0.5f;                 /* scattered mask */
    x[2][j] = -INFINITY;                                /* all masked: NaN, as two-pass */
    x[3][j] = j == 33 ? NAN : 1.0f;                     /* NaN propagates */
  }
  for (int d = 0; d < nd; d++)
    for (int m = 0; m < 2; m++) {
      zmlx_row_mode mode = row_mode(devs[d], m);
      zmlx_pattern_kernel on, two;
      ZT_OK(zmlxi_pattern_row_online(NULL, NULL, g.write, mode, &on));
      ZT_OK(zmlxi_pattern_row_map_reduce(g.r, 2, g.write, mode, &two));
      int64_t shape[2] = {4, 40};
      zmlx_array *in = zt_array(devs[d], ZMLX_F32, 2, shape, &x[0][0]);
      zmlx_array *o1 = zt_poisoned(devs[d], ZMLX_F32, 2, shape), *o2 = zt_poisoned(devs[d], ZMLX_F32, 2, shape);
      zmlx_device_info info = info_of(devs[d]);
      double params[2] = {4, 40};
      zmlx_pattern_geometry geo = zmlxi_pattern_row_geometry(mode, 4, 40, &info);
      run_kernel(&on, &in, &o1, params, geo);
      run_kernel(&two, &in, &o2, params, geo);
      double *a = zt_download(o1), *b = zt_download(o2);
      char msg[64];
      snprintf(msg, sizeof msg, "online vs two-pass with -inf and NaN, mode %d", mode);
      zt_assert_close(a, b, 160, 1e-7, 1e-6, msg);
      assert_true(isnan(a[80]) && isnan(a[120]));
      assert_true(a[0] == 0.0 && a[1] == 0.0);
      free(a), free(b);
      zmlx_array_release(in), zmlx_array_release(o1), zmlx_array_release(o2);
      zmlxi_pattern_kernel_free(&on), zmlxi_pattern_kernel_free(&two);
    }
  mr_free(&g);
}

/* ------------------------------------------------------ heuristic */

static void test_threads_per_row(void **state) {
  (void)state;
  assert_int_equal(zmlxi_pattern_threads_per_row(1, 1024, 32), 32);
  assert_int_equal(zmlxi_pattern_threads_per_row(100, 1024, 32), 32);
  assert_int_equal(zmlxi_pattern_threads_per_row(129, 1024, 32), 64);
  assert_int_equal(zmlxi_pattern_threads_per_row(1000, 1024, 32), 256);
  assert_int_equal(zmlxi_pattern_threads_per_row(4097, 1024, 32), 1024);
  assert_int_equal(zmlxi_pattern_threads_per_row(1 << 20, 4096, 32), 1024); /* capped at 1024 */
  assert_int_equal(zmlxi_pattern_threads_per_row(4097, 256, 32), 256);      /* device limit */
  assert_int_equal(zmlxi_pattern_threads_per_row(4097, 600, 32), 512);      /* power of two */
  assert_int_equal(zmlxi_pattern_threads_per_row(4097, 16, 32), 16);        /* tiny device */
  assert_int_equal(zmlxi_pattern_threads_per_row(8, 1024, 64), 64);         /* wider SIMD */
  zmlx_device_info info = {.max_threads_per_threadgroup = 1024, .simd_width = 32,
                           .compute_units = 4};
  zmlx_pattern_geometry g = zmlxi_pattern_row_geometry(ZMLX_ROW_PER_GROUP, 10, 4097, &info);
  assert_int_equal(g.threadgroup[0], 1024);
  assert_int_equal(g.grid[0], 10 * 1024);
  g = zmlxi_pattern_elementwise_geometry(ZMLX_EW_VECTOR, 8 * 100 + 5, 8, &info);
  assert_int_equal(g.grid[0], 100);
  g = zmlxi_pattern_elementwise_geometry(ZMLX_EW_VECTOR, 5, 8, &info); /* tail only */
  assert_int_equal(g.grid[0], 5);
  g = zmlxi_pattern_elementwise_geometry(ZMLX_EW_CONTIGUOUS, (int64_t)1 << 40, 0, &info);
  assert_int_equal(g.grid[0], 4 * 2048 * 16); /* grid-stride: the grid is capped */
}

/* ------------------------------------------------------ generated source */

static char *source_of(zmlx_op *op, zmlx_backend b, zmlx_op_direction dir, const zmlx_dtype *dts) {
  char *s = NULL;
  ZT_OK(zmlx_op_source(op, b, dir, dts, &s));
  return s;
}

static zmlx_op *make_softmax_op(zmlx_map_reduce_strategy strategy) {
  zmlx_map_reduce_desc d = {
      .reduce = {{.init = "-inf", .update = "max(acc, x)", .combine = "max(a, b)"},
                 {.init = "0", .map = "exp(x - r0)", .update = "acc + x", .combine = "a + b"}},
      .n_reduce = 2, .write = "exp(x - r0) / r1", .strategy = strategy};
  zmlx_op *op = NULL;
  ZT_OK(zmlx_map_reduce(&d, &op));
  return op;
}

/* Same inputs, byte-identical text: twice from one op and across ops. */
static void test_source_determinism(void **state) {
  (void)state;
  static const char *const names[] = {"x", "y"}, *const params[] = {"alpha"};
  zmlx_op *a = NULL, *b = NULL;
  const char *text = "s = sigmoid(x); leaky_relu(x * s * y, alpha)";
  ZT_OK(zmlx_elementwise(text, names, 2, params, 1, &a));
  ZT_OK(zmlx_elementwise(text, names, 2, params, 1, &b));
  zmlx_backend bs[3] = {ZMLX_BACKEND_CUDA, ZMLX_BACKEND_OPENCL, ZMLX_BACKEND_METAL};
  zmlx_dtype dts[2] = {ZMLX_BF16, ZMLX_F32};
  for (int i = 0; i < 3; i++)
    for (int dir = 0; dir < 3; dir++) {
      char *s1 = source_of(a, bs[i], (zmlx_op_direction)dir, dts);
      char *s2 = source_of(a, bs[i], (zmlx_op_direction)dir, dts);
      char *s3 = source_of(b, bs[i], (zmlx_op_direction)dir, dts);
      assert_string_equal(s1, s2);
      assert_string_equal(s1, s3);
      assert_null(strstr(s1, "alpha")); /* user names never reach source */
      zmlx_free(s1), zmlx_free(s2), zmlx_free(s3);
    }
  char *m = source_of(a, ZMLX_BACKEND_METAL, ZMLX_OP_FORWARD, dts);
  assert_non_null(strstr(m, "[[kernel]]"));
  zmlx_free(m);
  zmlx_op *r1 = make_softmax_op(ZMLX_MAP_REDUCE_AUTO), *r2 = make_softmax_op(ZMLX_MAP_REDUCE_AUTO);
  for (int i = 0; i < 3; i++) {
    char *s1 = source_of(r1, bs[i], ZMLX_OP_FORWARD, dts), *s2 = source_of(r2, bs[i], ZMLX_OP_FORWARD, dts);
    assert_string_equal(s1, s2);
    zmlx_free(s1), zmlx_free(s2);
  }
  zmlx_op_destroy(a), zmlx_op_destroy(b), zmlx_op_destroy(r1), zmlx_op_destroy(r2);
}

/* ------------------------------------------------------ NVRTC */

#ifdef ZMLX_HAVE_CUDA
static void nvrtc_compile(const zmlx_pattern_kernel *pk, const zmlx_dtype *dts) {
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  ZT_OK(zmlxi_pattern_append_source(pk, ZMLX_BACKEND_CUDA, dts, "nvrtc", &sb));
  char *src = NULL;
  ZT_OK(zmlxi_sb_finish(&sb, &src));
  void *cubin = NULL;
  size_t size = 0;
  char *log = NULL;
  zmlx_status st = zmlxi_nvrtc_compile(src, pk->name, "sm_90a", &cubin, &size, &log);
  if (st != ZMLX_OK) fail_msg("NVRTC sm_90a: %s: %s", pk->name, zmlx_last_error());
  assert_memory_equal(cubin, "\x7f" "ELF", 4);
  free(cubin), free(log), free(src);
}

static void nvrtc_ew(const char *text, int n_inputs) {
  zmlx_expr *e = parse(text, XYZ, n_inputs);
  for (int t = 0; t < N_DTS; t++)
    for (int layout = 0; layout < 3; layout++) {
      zmlx_dtype dts[8];
      for (int i = 0; i < 8; i++) dts[i] = DTS[t];
      zmlx_pattern_kernel pk;
      ZT_OK(zmlxi_pattern_elementwise(e, (zmlx_ew_layout)layout, dts, &pk));
      nvrtc_compile(&pk, dts);
      zmlxi_pattern_kernel_free(&pk);
    }
  zmlxi_expr_free(e);
}

static void nvrtc_rows(zmlx_dtype dt) {
  zmlx_dtype dts[2] = {dt, dt};
  zmlx_pattern_kernel pk;
  for (size_t c = 0; c < sizeof RED_CASES / sizeof *RED_CASES; c++)
    for (int mode = 0; mode < 3; mode++) {
      zmlx_expr *g[3];
      zmlx_row_reduction r = parse_reduction(&RED_CASES[c], g);
      ZT_OK(zmlxi_pattern_row_reduce(&r, (zmlx_row_mode)mode, &pk));
      nvrtc_compile(&pk, dts);
      zmlxi_pattern_kernel_free(&pk);
      if (mode == 0) {
        ZT_OK(zmlxi_pattern_col_reduce(&r, &pk));
        nvrtc_compile(&pk, dts);
        zmlxi_pattern_kernel_free(&pk);
      }
      for (int k = 0; k < 3; k++) zmlxi_expr_free(g[k]);
    }
  for (int kind = MR_SOFTMAX; kind <= MR_RMSNORM; kind++)
    for (int mode = 0; mode < 3; mode++) {
      mr_graphs m;
      int n_reduce;
      mr_build(&m, (mr_kind)kind, &n_reduce);
      if (kind == MR_ONLINE)
        ZT_OK(zmlxi_pattern_row_online(NULL, NULL, m.write, (zmlx_row_mode)mode, &pk));
      else
        ZT_OK(zmlxi_pattern_row_map_reduce(m.r, n_reduce, m.write, (zmlx_row_mode)mode, &pk));
      nvrtc_compile(&pk, dts);
      zmlxi_pattern_kernel_free(&pk);
      mr_free(&m);
    }
}
#endif

static void test_nvrtc_every_pattern(void **state) {
  (void)state;
#ifdef ZMLX_HAVE_CUDA
  if (!zmlxi_nvrtc_available()) skip();
  for (size_t c = 0; c < sizeof EW_CASES / sizeof *EW_CASES; c++)
    nvrtc_ew(EW_CASES[c].text, EW_CASES[c].n_inputs);
  for (int t = 0; t < N_DTS; t++) nvrtc_rows(DTS[t]);
#else
  skip();
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_threads_per_row),
      cmocka_unit_test(test_source_determinism),
      cmocka_unit_test(test_nvrtc_every_pattern),
      cmocka_unit_test(test_elementwise_flat_and_vector),
      cmocka_unit_test(test_elementwise_several_outputs),
      cmocka_unit_test(test_vector_mixed_dtypes),
      cmocka_unit_test(test_broadcasting),
      cmocka_unit_test(test_strided_views),
      cmocka_unit_test(test_vector_fallback),
      cmocka_unit_test(test_row_reduce),
      cmocka_unit_test(test_col_reduce),
      cmocka_unit_test(test_map_reduce),
      cmocka_unit_test(test_online_special_values),
  };
  int rc = zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
  zmlx_shutdown();
  return rc;
}
