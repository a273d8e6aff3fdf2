/* Expression-kernel bandwidth: an elementwise op built from text, timed
 * against the device-to-device copy bandwidth measured in the same run.
 *
 *   bench_elementwise [--backend cuda|opencl] [--rows R] [--cols C]
 *                     [--dtype bf16|f16|f32] [--expr TEXT] [--json FILE]
 *                     [--peer FILE]
 *
 * Bytes that must move = every input read once + the output written once.
 * Effective GB/s = bytes / median time. The copy moves 2 x its size (read +
 * write) and gives the ceiling. Defaults: x * sigmoid(x) * y on 16384 x 14336
 * bf16 (the SwiGLU-shaped product of issue 3). --peer reads the JSON that
 * bench/peer_elementwise.py wrote for the same shape (PyTorch eager,
 * torch.compile, CuPy) and adds their times and zmlx's speed-up over each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "runtime/internal.h"


static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Median wall time of `reps` samples; each sample runs `inner` launches and
 * drains the stream, so per-launch host gaps are amortised. */
typedef void (*work_fn)(void *ctx);

static double median_ms(zmlx_device *dev, work_fn fn, void *ctx, int reps, int inner) {
  double *t = malloc((size_t)reps * sizeof *t);
  fn(ctx); /* warm-up: compile, allocator */
  CHECK(zmlx_device_synchronize(dev));
  for (int r = 0; r < reps; r++) {
    double t0 = zmlxi_now_ms();
    for (int i = 0; i < inner; i++) fn(ctx);
    CHECK(zmlx_device_synchronize(dev));
    t[r] = (zmlxi_now_ms() - t0) / inner;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_double);
  double m = t[reps / 2];
  free(t);
  return m;
}

/* Peers from peer_elementwise.py's JSON: {"peer": "...", "ms": x, ...} rows.
 * A tiny scanner is enough for the file that script writes. */
typedef struct peer_row {
  char name[64];
  double ms;
} peer_row;

static int read_peers(const char *path, peer_row *rows, int cap) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  static char text[1 << 16];
  size_t len = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[len] = '\0';
  int n = 0;
  for (char *p = strstr(text, "\"peer\": \""); p && n < cap; p = strstr(p + 1, "\"peer\": \"")) {
    char *name = p + 9, *end = strchr(name, '"'), *ms = strstr(p, "\"ms\": ");
    if (!end || !ms) break;
    snprintf(rows[n].name, sizeof rows[n].name, "%.*s", (int)(end - name), name);
    rows[n].ms = atof(ms + 6);
    n++;
  }
  return n;
}

typedef struct copy_ctx {
  zmlx_device *dev;
  zmlx_array *src, *dst;
} copy_ctx;

static void run_copy(void *p) {
  copy_ctx *c = p;
  zmlx_device *d = c->dev;
  CHECK(d->ops->copy(d->index, d->default_stream->handle, c->dst->buffer->handle, 0,
                     c->src->buffer->handle, 0, zmlx_array_nbytes(c->src)));
}

typedef struct op_ctx {
  zmlx_op *op;
  zmlx_array *inputs[4];
  int n_inputs;
} op_ctx;

static void run_op(void *p) {
  op_ctx *c = p;
  zmlx_array *out = NULL;
  CHECK(zmlx_op_call(c->op, c->inputs, c->n_inputs, NULL, NULL, &out));
  zmlx_array_release(out); /* stream-ordered free: no sync */
}

int main(int argc, char **argv) {
  const char *backend = NULL, *json = NULL, *peer = NULL, *expr = "x * sigmoid(x) * y";
  int64_t rows = 16384, cols = 14336;
  zmlx_dtype dt = ZMLX_BF16;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--backend") && v) backend = v, i++;
    else if (!strcmp(a, "--json") && v) json = v, i++;
    else if (!strcmp(a, "--expr") && v) expr = v, i++;
    else if (!strcmp(a, "--peer") && v) peer = v, i++;
    else if (!strcmp(a, "--rows") && v) rows = atoll(v), i++;
    else if (!strcmp(a, "--cols") && v) cols = atoll(v), i++;
    else if (!strcmp(a, "--dtype") && v) { CHECK(zmlx_dtype_from_name(v, &dt)); i++; }
    else {
      printf("usage: bench_elementwise [--backend cuda|opencl] [--rows R] [--cols C] "
             "[--dtype bf16|f16|f32] [--expr TEXT] [--json FILE] [--peer FILE]\n");
      return strcmp(a, "--help") ? 2 : 0;
    }
  }
  zmlx_device *dev;
  if (backend) {
    zmlx_backend b;
    CHECK(zmlx_backend_from_name(backend, &b));
    CHECK(zmlx_device_get(b, 0, &dev));
  } else {
    CHECK(zmlx_default_device(&dev));
  }
  const char *names[2] = {"x", "y"};
  int n_inputs = strstr(expr, "y") ? 2 : 1;
  zmlx_op *op;
  CHECK(zmlx_elementwise(expr, names, n_inputs, NULL, 0, &op));

  int64_t shape[2] = {rows, cols};
  op_ctx oc = {.op = op, .n_inputs = n_inputs};
  for (int i = 0; i < n_inputs; i++)
    CHECK(zmlx_array_random_normal(dev, dt, 2, shape, 100 + (uint64_t)i, 0, 1, &oc.inputs[i]));
  copy_ctx cc = {.dev = dev, .src = oc.inputs[0]};
  CHECK(zmlx_array_empty(dev, dt, 2, shape, &cc.dst));

  int heavy = rows * cols > (1 << 24);
  int reps = heavy ? 21 : 7, inner = heavy ? 10 : 3;
  double copy_ms = median_ms(dev, run_copy, &cc, reps, inner);
  double op_ms = median_ms(dev, run_op, &oc, reps, inner);
  double es = (double)zmlx_dtype_size(dt), n = (double)rows * (double)cols;
  double copy_gbs = 2 * n * es / copy_ms * 1e-6;
  double op_bytes = (n_inputs + 1) * n * es;
  double op_gbs = op_bytes / op_ms * 1e-6;

  printf("# %s: %s\n", zmlx_backend_name(dev->ops->kind), dev->info.name);
  printf("%-28s %-16s %-5s %10s %10s %8s\n", "op", "shape", "dtype", "ms", "GB/s", "% copy");
  printf("%-28s %6lldx%-9lld %-5s %10.4f %10.1f %8.1f\n", "device copy", (long long)rows,
         (long long)cols, zmlx_dtype_name(dt), copy_ms, copy_gbs, 100.0);
  printf("%-28s %6lldx%-9lld %-5s %10.4f %10.1f %8.1f\n", expr, (long long)rows, (long long)cols,
         zmlx_dtype_name(dt), op_ms, op_gbs, 100 * op_gbs / copy_gbs);
  peer_row peers[8];
  int n_peers = peer ? read_peers(peer, peers, 8) : 0;
  if (n_peers) printf("\n%-28s %10s %18s\n", "peer (same shape)", "ms", "zmlx speed-up");
  for (int i = 0; i < n_peers; i++)
    printf("%-28s %10.4f %17.2fx\n", peers[i].name, peers[i].ms, peers[i].ms / op_ms);
  if (json) {
    FILE *f = fopen(json, "w");
    if (f) {
      fprintf(f, "{\"device\": \"%s\", \"backend\": \"%s\", \"expr\": \"%s\", \"rows\": %lld, "
              "\"cols\": %lld, \"dtype\": \"%s\", \"copy_ms\": %.6f, \"copy_gbs\": %.2f, "
              "\"op_ms\": %.6f, \"op_gbs\": %.2f, \"pct_copy\": %.2f}\n",
              dev->info.name, zmlx_backend_name(dev->ops->kind), expr, (long long)rows,
              (long long)cols, zmlx_dtype_name(dt), copy_ms, copy_gbs, op_ms, op_gbs,
              100 * op_gbs / copy_gbs);
      fclose(f);
    }
  }
  for (int i = 0; i < n_inputs; i++) zmlx_array_release(oc.inputs[i]);
  zmlx_array_release(cc.dst);
  zmlx_op_destroy(op);
  return 0;
}
