/* Threads sharing what zmlx.h says may be shared (issue 16): eight threads
 * at once launch one kernel object, call one elementwise op, run catalog
 * ops and take gradients, all reading one shared input array, while one of
 * them clears the in-memory kernel cache now and then. Every result is
 * checked against a host reference. The ThreadSanitizer build (`make
 * test-tsan`, clang) runs this program to find data races; the normal and
 * ASan builds run it too. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_support.h"

enum { THREADS = 8, ITERATIONS = 12, N = 96, ROWS = 4, COLS = 24 };

typedef struct shared {
  zmlx_device *dev;
  zmlx_kernel *kernel; /* out = x + 1 */
  zmlx_op *op;         /* x * y + 1 */
  zmlx_array *x;       /* [ROWS, COLS], read by every thread */
  float xh[N];
} shared;

typedef struct worker {
  shared *s;
  int id;
  char error[256]; /* the first thing that went wrong, or "" */
} worker;

static zmlx_status silu_sum(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  zmlx_array *y = NULL;
  zmlx_status st = zmlx_silu(in[0], &y);
  if (st == ZMLX_OK) st = zmlx_sum(y, NULL, 0, 0, out);
  zmlx_array_release(y);
  return st;
}

/* got[i] vs want(i) within 1e-5 relative + absolute; a message on failure. */
static int mismatch(worker *w, const char *what, zmlx_array *a, double (*want)(const shared *, int),
                    const shared *s) {
  float got[N];
  if (zmlx_array_to_host(a, got, sizeof got) != ZMLX_OK) {
    snprintf(w->error, sizeof w->error, "%s: download: %s", what, zmlx_last_error());
    return 1;
  }
  for (int i = 0; i < N; i++) {
    double e = want(s, i);
    if (!(fabs(got[i] - e) <= 1e-5 + 1e-5 * fabs(e))) {
      snprintf(w->error, sizeof w->error, "%s: element %d is %g, want %g", what, i, got[i], e);
      return 1;
    }
  }
  return 0;
}

static double want_plus_one(const shared *s, int i) { return s->xh[i] + 1.0; }
static double want_square_plus_one(const shared *s, int i) {
  return (double)s->xh[i] * s->xh[i] + 1.0;
}
static double want_softmax(const shared *s, int i) {
  const int r = i / COLS;
  double m = -INFINITY, sum = 0;
  for (int j = 0; j < COLS; j++) m = fmax(m, s->xh[r * COLS + j]);
  for (int j = 0; j < COLS; j++) sum += exp(s->xh[r * COLS + j] - m);
  return exp(s->xh[i] - m) / sum;
}
static double want_silu_grad(const shared *s, int i) {
  double x = s->xh[i], sg = 1 / (1 + exp(-x));
  return sg * (1 + x * (1 - sg));
}

#define FAIL_IF(cond, what)                                                                   \
  if (cond) {                                                                                 \
    if (!w->error[0]) snprintf(w->error, sizeof w->error, "%s: %s", what, zmlx_last_error()); \
    break;                                                                                    \
  }

static void *worker_main(void *arg) {
  worker *w = arg;
  shared *s = w->s;
  const int64_t shape[2] = {ROWS, COLS};
  const int ndim = 2;
  const int64_t *shapes[1] = {shape};
  const zmlx_dtype f32 = ZMLX_F32;
  for (int it = 0; it < ITERATIONS && !w->error[0]; it++) {
    zmlx_array *k_out = NULL, *op_out = NULL, *sm = NULL, *g = NULL;
    zmlx_kernel_call c = {.n_inputs = 1, .n_outputs = 1, .inputs = &s->x, .outputs = &k_out,
                          .output_ndims = &ndim, .output_shapes = shapes, .output_dtypes = &f32,
                          .grid = {N, 1, 1}, .threadgroup = {32, 1, 1}};
    do {
      FAIL_IF(zmlx_kernel_launch(s->kernel, &c) != ZMLX_OK, "kernel launch");
      if (mismatch(w, "shared kernel", k_out, want_plus_one, s)) break;
      zmlx_array *in2[2] = {s->x, s->x};
      FAIL_IF(zmlx_op_call(s->op, in2, 2, NULL, NULL, &op_out) != ZMLX_OK, "op call");
      if (mismatch(w, "shared op", op_out, want_square_plus_one, s)) break;
      FAIL_IF(zmlx_softmax(s->x, &sm) != ZMLX_OK, "softmax");
      if (mismatch(w, "softmax", sm, want_softmax, s)) break;
      FAIL_IF(zmlx_grad(silu_sum, NULL, &s->x, 1, NULL, 0, &g) != ZMLX_OK, "grad");
      if (mismatch(w, "grad of sum(silu)", g, want_silu_grad, s)) break;
      /* one thread drops every compiled function now and then: the others'
       * launches in flight keep theirs (the cache's own guarantee) */
      if (w->id == 0 && it % 3 == 2) FAIL_IF(zmlx_cache_clear_memory() != ZMLX_OK, "clear");
    } while (0);
    zmlx_array_release(k_out), zmlx_array_release(op_out), zmlx_array_release(sm);
    zmlx_array_release(g);
  }
  return NULL;
}

static void test_eight_threads_share_kernels_ops_and_arrays(void **state) {
  (void)state;
  shared s;
  memset(&s, 0, sizeof s);
  zmlx_device *devs[2];
  if (!zt_devices(devs, 2)) skip();
  s.dev = devs[0];
  uint64_t rng = zt_seed() ^ 0x7417;
  zt_fill_uniform(s.xh, N, -3, 3, &rng);
  const int64_t shape[2] = {ROWS, COLS};
  ZT_OK(zmlx_array_from_host(s.dev, ZMLX_F32, 2, shape, s.xh, &s.x));
  static const char *const in[] = {"x"}, *const out[] = {"out"}, *const xy[] = {"x", "y"};
  zmlx_kernel_desc d = {.name = "plus_one", .input_names = in, .n_inputs = 1, .output_names = out,
                        .n_outputs = 1,
                        .source = "uint i = thread_position_in_grid.x;\n"
                                  "if (i < 96) out_store(i, x_load(i) + 1.0f);\n"};
  ZT_OK(zmlx_kernel_create(&d, &s.kernel));
  ZT_OK(zmlx_elementwise("x * y + 1", xy, 2, NULL, 0, &s.op));
  int64_t live = zmlx_array_live_count();
  pthread_t th[THREADS];
  worker w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i] = (worker){.s = &s, .id = i};
    assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < THREADS; i++)
    if (w[i].error[0]) fail_msg("thread %d: %s", i, w[i].error);
  assert_int_equal(zmlx_array_live_count(), live);
  zmlx_kernel_destroy(s.kernel);
  zmlx_op_destroy(s.op);
  zmlx_array_release(s.x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_eight_threads_share_kernels_ops_and_arrays),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
