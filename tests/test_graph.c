/* Graph capture and replay (zmlx_graph_*): a step of catalog ops, a library
 * GEMM and a gradient, captured once, is replayed with new inputs written
 * in place and must give what the same step computes eagerly on fresh
 * arrays; intermediates released during the capture and memory churned
 * afterwards must not disturb a replay; what a replay could not repeat is
 * refused during a capture; a replay after the kernel cache was cleared is
 * refused. On every available device (CUDA: native CUDA graphs; OpenCL:
 * recorded launches). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_support.h"

enum { R = 6, C = 40 };

static zmlx_status silu_times_x(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  zmlx_array *s = NULL, *m = NULL;
  zmlx_status st = zmlx_silu(in[0], &s);
  if (st == ZMLX_OK) st = zmlx_mul(s, in[0], &m);
  if (st == ZMLX_OK) st = zmlx_sum(m, NULL, 0, 0, out);
  zmlx_array_release(s);
  zmlx_array_release(m);
  return st;
}

/* out = softmax(silu(rmsnorm(x, g) @ w) * x) + tanh(x), dx = d/dx sum(silu(x) x):
 * eleven launches or more, one of them a library GEMM where the device has
 * one. Every intermediate is released at once (during a capture too). */
static zmlx_status step(zmlx_array *x, zmlx_array *w, zmlx_array *g, zmlx_array **out,
                        zmlx_array **dx) {
  zmlx_array *t[8] = {NULL};
  zmlx_status st = zmlx_rmsnorm(x, g, 1e-5, &t[0]);
  if (st == ZMLX_OK) st = zmlx_matmul(t[0], w, &t[1]);
  if (st == ZMLX_OK) st = zmlx_silu(t[1], &t[2]);
  if (st == ZMLX_OK) st = zmlx_mul(t[2], x, &t[3]);
  if (st == ZMLX_OK) st = zmlx_softmax(t[3], &t[4]);
  if (st == ZMLX_OK) st = zmlx_tanh(x, &t[5]);
  if (st == ZMLX_OK) st = zmlx_add(t[4], t[5], out);
  int argn = 0;
  zmlx_array *one = NULL;
  if (st == ZMLX_OK) st = zmlx_array_full(zmlx_array_device(x), ZMLX_F32, 0, NULL, 1.0, &one);
  if (st == ZMLX_OK) st = zmlx_vjp(silu_times_x, NULL, &x, 1, &argn, 1, one, &t[6], dx);
  zmlx_array_release(one);
  for (int i = 0; i < 8; i++) zmlx_array_release(t[i]);
  return st;
}

static void fill(float *v, int n, unsigned seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
  zt_fill_uniform(v, (size_t)n, -1.5f, 1.5f, &s);
}

static void expect_close(zmlx_array *a, const float *want, int n, const char *what) {
  float *got = malloc(sizeof *got * (size_t)n);
  ZT_OK(zmlx_array_to_host(a, got, sizeof *got * (size_t)n));
  for (int i = 0; i < n; i++)
    if (!(fabsf(got[i] - want[i]) <= 1e-5f + 1e-5f * fabsf(want[i])))
      fail_msg("%s: element %d is %.9g, eager %.9g", what, i, got[i], want[i]);
  free(got);
}

/* the step computed eagerly on fresh arrays from these host values */
static void eager(zmlx_device *dev, const float *xh, const float *wh, const float *gh, float *out,
                  float *dx) {
  int64_t sx[2] = {R, C}, sw[2] = {C, C}, sg[1] = {C};
  zmlx_array *x, *w, *g, *o = NULL, *d = NULL;
  ZT_OK(zmlx_array_from_host(dev, ZMLX_F32, 2, sx, xh, &x));
  ZT_OK(zmlx_array_from_host(dev, ZMLX_F32, 2, sw, wh, &w));
  ZT_OK(zmlx_array_from_host(dev, ZMLX_F32, 1, sg, gh, &g));
  ZT_OK(step(x, w, g, &o, &d));
  ZT_OK(zmlx_array_to_host(o, out, sizeof(float) * R * C));
  ZT_OK(zmlx_array_to_host(d, dx, sizeof(float) * R * C));
  zmlx_array_release(x), zmlx_array_release(w), zmlx_array_release(g);
  zmlx_array_release(o), zmlx_array_release(d);
}

static void replay_matches_eager(zmlx_device *dev) {
  static float xh[R * C], wh[C * C], gh[C], want[R * C], want_dx[R * C], junk[4096];
  fill(xh, R * C, 1), fill(wh, C * C, 2), fill(gh, C, 3);
  int64_t sx[2] = {R, C}, sw[2] = {C, C}, sg[1] = {C};
  zmlx_array *x, *w, *g, *out = NULL, *dx = NULL;
  ZT_OK(zmlx_array_from_host(dev, ZMLX_F32, 2, sx, xh, &x));
  ZT_OK(zmlx_array_from_host(dev, ZMLX_F32, 2, sw, wh, &w));
  ZT_OK(zmlx_array_from_host(dev, ZMLX_F32, 1, sg, gh, &g));
  int64_t live = zmlx_array_live_count();

  zmlx_graph *graph = NULL;
  ZT_OK(zmlx_graph_capture_begin(dev));
  ZT_OK(step(x, w, g, &out, &dx));
  ZT_OK(zmlx_graph_capture_end(dev, &graph));
  zmlx_graph_info info = {.struct_size = sizeof info};
  ZT_OK(zmlx_graph_get_info(graph, &info));
  if (info.operations < 11) fail_msg("captured %lld operations, want >= 11", (long long)info.operations);
  zmlx_device_info di;
  ZT_OK(zmlx_device_get_info(dev, &di));
  printf("[graph] %s: %lld operations captured, %s\n", di.name, (long long)info.operations,
         info.native ? "a native graph" : "recorded launches");

  /* _end leaves the step run once */
  eager(dev, xh, wh, gh, want, want_dx);
  expect_close(out, want, R * C, "after capture: out");
  expect_close(dx, want_dx, R * C, "after capture: dx");

  /* new inputs written in place, memory churned (the intermediates the
   * step released must not be handed out again), replayed */
  for (int round = 0; round < 3; round++) {
    fill(xh, R * C, 10 + (unsigned)round);
    fill(gh, C, 20 + (unsigned)round);
    ZT_OK(zmlx_array_write_host(x, xh, sizeof xh));
    ZT_OK(zmlx_array_write_host(g, gh, sizeof gh));
    zmlx_array *churn[6];
    int64_t sj[1] = {4096};
    for (int i = 0; i < 6; i++) ZT_OK(zmlx_array_full(dev, ZMLX_F32, 2, sx, 1e30, &churn[i]));
    ZT_OK(zmlx_graph_replay(graph));
    for (int i = 0; i < 6; i++) { /* the replay wrote only the graph's own memory */
      float c[R * C];
      ZT_OK(zmlx_array_to_host(churn[i], c, sizeof c));
      for (int j = 0; j < R * C; j++)
        if (c[j] != 1e30f) fail_msg("round %d: the replay overwrote a later array (%g)", round, c[j]);
      zmlx_array_release(churn[i]);
    }
    zmlx_array *big;
    ZT_OK(zmlx_array_from_host(dev, ZMLX_F32, 1, sj, junk, &big));
    zmlx_array_release(big);
    eager(dev, xh, wh, gh, want, want_dx);
    expect_close(out, want, R * C, "replay: out");
    expect_close(dx, want_dx, R * C, "replay: dx");
  }
  /* the graph holds buffers, not arrays: the array count is the caller's */
  assert_int_equal(zmlx_array_live_count(), live + 2);
  ZT_OK(zmlx_graph_destroy(graph));
  zmlx_array_release(out), zmlx_array_release(dx);
  assert_int_equal(zmlx_array_live_count(), live);
  zmlx_array_release(x), zmlx_array_release(w), zmlx_array_release(g);
}

static void test_replay_matches_eager(void **state) {
  (void)state;
  zt_for_each_device(replay_matches_eager);
}

static void refusals(zmlx_device *dev) {
  float h[C] = {0}, back[C];
  int64_t s1[1] = {C};
  zmlx_array *a, *b = NULL;
  zmlx_graph *graph = NULL;
  ZT_OK(zmlx_array_from_host(dev, ZMLX_F32, 1, s1, h, &a));
  ZT_FAILS(zmlx_graph_capture_end(dev, &graph), ZMLX_ERR_INVALID_ARG, "not capturing");
  ZT_FAILS(zmlx_graph_replay(NULL), ZMLX_ERR_NULL_ARG, NULL);
  ZT_OK(zmlx_graph_destroy(NULL));
  ZT_OK(zmlx_graph_capture_begin(dev));
  ZT_FAILS(zmlx_graph_capture_begin(dev), ZMLX_ERR_INVALID_ARG, "already capturing");
  ZT_FAILS(zmlx_array_to_host(a, back, sizeof back), ZMLX_ERR_UNSUPPORTED, "host read");
  ZT_FAILS(zmlx_array_from_host(dev, ZMLX_F32, 1, s1, h, &b), ZMLX_ERR_UNSUPPORTED, "host write");
  assert_null(b);
  ZT_FAILS(zmlx_array_write_host(a, h, sizeof h), ZMLX_ERR_UNSUPPORTED, "host write");
  ZT_FAILS(zmlx_device_synchronize(dev), ZMLX_ERR_UNSUPPORTED, "graph capture");
  ZT_FAILS(zmlx_set_current_stream(NULL), ZMLX_ERR_UNSUPPORTED, "graph capture");
  ZT_OK(zmlx_silu(a, &b)); /* work still goes on */
  ZT_OK(zmlx_graph_capture_end(dev, &graph));
  ZT_FAILS(zmlx_array_write_host(a, h, 3), ZMLX_ERR_SHAPE, "3 bytes");
  zmlx_graph_info old = {.struct_size = 8};
  ZT_FAILS(zmlx_graph_get_info(graph, &old), ZMLX_ERR_INVALID_ARG, "struct_size");
  /* a replay after the kernel cache unloaded functions is refused */
  ZT_OK(zmlx_graph_replay(graph));
  ZT_OK(zmlx_cache_clear_memory());
  ZT_FAILS(zmlx_graph_replay(graph), ZMLX_ERR_INVALID_ARG, "capture the graph again");
  ZT_OK(zmlx_graph_destroy(graph));
  ZT_OK(zmlx_array_to_host(b, back, sizeof back)); /* silu(0) = 0 */
  for (int i = 0; i < C; i++) assert_true(back[i] == 0.0f);
  zmlx_array_release(a), zmlx_array_release(b);
}

static void test_refusals(void **state) {
  (void)state;
  zt_for_each_device(refusals);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_replay_matches_eager),
      cmocka_unit_test(test_refusals),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
