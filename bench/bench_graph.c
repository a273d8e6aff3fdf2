/* Graph replay against launching (issue 16): a step of 20 small kernels
 * (catalog ops on a [1, 4096] f32 row, each allocating its output, as a
 * decode step's glue does) run STEPS times, per backend:
 *   launched   the ops called one by one every step
 *   replayed   the step captured once (zmlx_graph_*), then replayed
 * Time per step = wall time of STEPS steps and one synchronize, best of 5.
 * Prints a table and, with --json FILE, writes the numbers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "runtime/internal.h"

enum { KERNELS = 20, STEPS = 200, REPS = 5 };


/* KERNELS launches: silu, mul, add, tanh in turn; *out is the last result */
static void step(zmlx_array *x, zmlx_array **out) {
  zmlx_array *y = x;
  zmlx_array_retain(y);
  for (int i = 0; i < KERNELS; i++) {
    zmlx_array *z = NULL;
    switch (i % 4) {
    case 0: CHECK(zmlx_silu(y, &z)); break;
    case 1: CHECK(zmlx_mul(y, x, &z)); break;
    case 2: CHECK(zmlx_add(y, x, &z)); break;
    default: CHECK(zmlx_tanh(y, &z)); break;
    }
    zmlx_array_release(y);
    y = z;
  }
  *out = y;
}

typedef struct row {
  char backend[16], what[32];
  double step_us;
} row;
static row rows[8];
static int n_rows;

static double best_step_us(zmlx_device *dev, zmlx_array *x, zmlx_graph *g) {
  double best = 1e30;
  for (int r = 0; r < REPS; r++) {
    double t0 = zmlxi_now_ms();
    for (int s = 0; s < STEPS; s++) {
      if (g) {
        CHECK(zmlx_graph_replay(g));
      } else {
        zmlx_array *y = NULL;
        step(x, &y);
        zmlx_array_release(y);
      }
    }
    CHECK(zmlx_device_synchronize(dev));
    double us = (zmlxi_now_ms() - t0) * 1000.0 / STEPS;
    if (us < best) best = us;
  }
  return best;
}

static void bench_device(zmlx_device *dev) {
  int64_t shape[2] = {1, 4096};
  zmlx_array *x = NULL, *y = NULL;
  CHECK(zmlx_array_full(dev, ZMLX_F32, 2, shape, 0.5, &x));
  step(x, &y); /* compile every kernel first */
  zmlx_array_release(y);
  zmlx_graph *g = NULL;
  CHECK(zmlx_graph_capture_begin(dev));
  step(x, &y);
  CHECK(zmlx_graph_capture_end(dev, &g));
  zmlx_graph_info info = {.struct_size = sizeof info};
  CHECK(zmlx_graph_get_info(g, &info));
  const char *name = zmlx_backend_name(dev->ops->kind);
  row *a = &rows[n_rows++], *b = &rows[n_rows++];
  snprintf(a->backend, sizeof a->backend, "%s", name);
  snprintf(b->backend, sizeof b->backend, "%s", name);
  snprintf(a->what, sizeof a->what, "launched");
  snprintf(b->what, sizeof b->what, "replayed (%s)", info.native ? "native" : "recorded");
  a->step_us = best_step_us(dev, x, NULL);
  b->step_us = best_step_us(dev, x, g);
  CHECK(zmlx_graph_destroy(g));
  zmlx_array_release(y);
  zmlx_array_release(x);
}

int main(int argc, char **argv) {
  const char *json = NULL, *only = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
    else if (!strcmp(argv[i], "--backend") && i + 1 < argc) only = argv[++i];
    else {
      printf("usage: bench_graph [--backend cuda|opencl] [--json FILE]\n");
      return strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
  zmlx_backend bs[2] = {ZMLX_BACKEND_CUDA, ZMLX_BACKEND_OPENCL};
  for (int b = 0; b < 2; b++) {
    zmlx_device *dev;
    if (only && strcmp(only, zmlx_backend_name(bs[b]))) continue;
    if (zmlx_device_get(bs[b], 0, &dev) != ZMLX_OK) continue;
    printf("# %s: %s\n", zmlx_backend_name(bs[b]), dev->info.name);
    bench_device(dev);
  }
  printf("%-8s %-22s %12s %12s %8s\n", "backend", "step of 20 kernels", "us/step", "us/kernel",
         "speedup");
  for (int i = 0; i < n_rows; i++) {
    double base = rows[i - i % 2].step_us;
    printf("%-8s %-22s %12.2f %12.2f %7.2fx\n", rows[i].backend, rows[i].what, rows[i].step_us,
           rows[i].step_us / KERNELS, base / rows[i].step_us);
  }
  if (json) {
    FILE *f = fopen(json, "w");
    if (!f) return 1;
    fprintf(f, "{\"bench\": \"graph\", \"kernels\": %d, \"steps\": %d, \"rows\": [\n", KERNELS,
            STEPS);
    for (int i = 0; i < n_rows; i++)
      fprintf(f, "  {\"backend\": \"%s\", \"what\": \"%s\", \"us_per_step\": %.3f}%s\n",
              rows[i].backend, rows[i].what, rows[i].step_us, i + 1 < n_rows ? "," : "");
    fprintf(f, "]}\n");
    fclose(f);
  }
  return 0;
}
