/* Launch-path and cache benchmarks, per backend:
 *   launch (given outputs)   host time per zmlx_kernel_launch on a cache hit, tiny kernel
 *   launch (alloc outputs)   the same, MLX-style, allocating the output each call
 *   memory hit               zmlxi_cache_get_function for a loaded key
 *   key + memory hit         SHA-256 key of the assembled source + lookup (new kernel object)
 *   cold compile             first launch of a never-seen kernel, disk cache off
 *   disk-warm start          first launch in a new process with the binary on disk
 * Prints a table and, with --json FILE, writes the numbers. */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernel/cache.h"
#include "kernel/kernel.h"
#include "bench_util.h"
#include "runtime/internal.h"

extern char **environ;

typedef struct row {
  char backend[16];
  char what[40];
  double value;
  const char *unit;
  const char *target;
} row;

static row rows[64];
static int n_rows;

static void add_row(zmlx_device *dev, const char *what, double v, const char *unit,
                    const char *target) {
  row *r = &rows[n_rows++];
  snprintf(r->backend, sizeof r->backend, "%s", zmlx_backend_name(dev->ops->kind));
  snprintf(r->what, sizeof r->what, "%s", what);
  r->value = v;
  r->unit = unit;
  r->target = target;
}


static zmlx_kernel *tiny_kernel(const char *tag) {
  static const char *const in[] = {"x"}, *const out[] = {"out"};
  char body[200];
  snprintf(body, sizeof body, "/* %s */\nuint i = thread_position_in_grid.x;\nout_store(i, x_load(i) * 2.0f);\n", tag);
  zmlx_kernel_desc d = {.name = "tiny", .input_names = in, .n_inputs = 1, .output_names = out,
                        .n_outputs = 1, .source = body};
  zmlx_kernel *k;
  CHECK(zmlx_kernel_create(&d, &k));
  return k;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Median over `reps` batches of `batch` launches of the host time per call.
 * The stream is drained between batches so the queue never throttles. */
static double launch_us(zmlx_kernel *k, zmlx_array *in, zmlx_array *out, int alloc, int reps,
                        int batch) {
  zmlx_device *dev = in->buffer->device;
  int64_t n = in->size;
  int ndim = 1;
  const int64_t *shapes[1] = {&n};
  zmlx_dtype dt = ZMLX_F32;
  double *t = malloc((size_t)reps * sizeof *t);
  for (int r = 0; r < reps; r++) {
    zmlx_array *outs[64];
    double t0 = zmlxi_now_ms();
    for (int i = 0; i < batch; i++) {
      zmlx_array *o = alloc ? NULL : out;
      zmlx_kernel_call c = {.n_inputs = 1, .n_outputs = 1, .inputs = &in, .outputs = &o,
                            .output_ndims = &ndim, .output_shapes = alloc ? shapes : NULL,
                            .output_dtypes = &dt, .grid = {n, 1, 1}, .threadgroup = {64, 1, 1}};
      CHECK(zmlx_kernel_launch(k, &c));
      if (alloc) outs[i % 64] = o;
      if (alloc && i % 64 == 63)
        for (int j = 0; j < 64; j++) zmlx_array_release(outs[j]);
    }
    t[r] = (zmlxi_now_ms() - t0) * 1e3 / batch;
    CHECK(zmlx_device_synchronize(dev));
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_double);
  double med = t[reps / 2];
  free(t);
  return med;
}

/* The floor under zmlx_kernel_launch: the backend's launch of the already
 * loaded function with prebuilt arguments (what a bare cuLaunchKernel /
 * clEnqueueNDRangeKernel costs plus the backend's thin wrapper). */
static double backend_launch_us(zmlx_kernel *k, zmlx_array *in, zmlx_array *out, int reps,
                                int batch) {
  zmlx_device *dev = in->buffer->device;
  void *fn = k->variants[0].function;
  uint32_t grid[3] = {(uint32_t)in->size, 1, 1}, blocks[3] = {(grid[0] + 63) / 64, 1, 1},
           threads[3] = {64, 1, 1};
  zmlx_launch_arg args[5] = {
      {.kind = ZMLX_ARG_BUFFER, .buffer = in->buffer->handle, .elem_size = 4},
      {.kind = ZMLX_ARG_BUFFER, .buffer = out->buffer->handle, .elem_size = 4},
      {.kind = ZMLX_ARG_SCALAR, .value = &grid[0], .size = 4},
      {.kind = ZMLX_ARG_SCALAR, .value = &grid[1], .size = 4},
      {.kind = ZMLX_ARG_SCALAR, .value = &grid[2], .size = 4}};
  double *t = malloc((size_t)reps * sizeof *t);
  for (int r = 0; r < reps; r++) {
    double t0 = zmlxi_now_ms();
    for (int i = 0; i < batch; i++)
      CHECK(dev->ops->launch(dev->index, dev->default_stream->handle, fn, blocks, threads, 0, args, 5));
    t[r] = (zmlxi_now_ms() - t0) * 1e3 / batch;
    CHECK(zmlx_device_synchronize(dev));
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_double);
  double med = t[reps / 2];
  free(t);
  return med;
}

static double memory_hit_us(zmlx_kernel *k, zmlx_device *dev, int with_key) {
  char *src;
  int line;
  zmlx_dtype dts[2] = {ZMLX_F32, ZMLX_F32};
  CHECK(zmlxi_kernel_assemble(k, dev->ops->dialect, dts, NULL, 0, 1, &src, &line));
  zmlx_compile_request req = {.device = dev, .entry = k->entry, .source = src, .options = "",
                              .body_first_line = line, .what = "bench"};
  zmlx_cache_key key;
  CHECK(zmlxi_cache_make_key(&req, &key));
  void *fn;
  CHECK(zmlxi_cache_get_function(&req, &key, &fn));
  const int iters = with_key ? 20000 : 1000000;
  double t0 = zmlxi_now_ms();
  for (int i = 0; i < iters; i++) {
    if (with_key) CHECK(zmlxi_cache_make_key(&req, &key));
    CHECK(zmlxi_cache_get_function(&req, &key, &fn));
  }
  double us = (zmlxi_now_ms() - t0) * 1e3 / iters;
  free(src);
  return us;
}

static double first_launch_ms(zmlx_kernel *k, zmlx_array *in, zmlx_array *out) {
  zmlx_kernel_call c = {.n_inputs = 1, .n_outputs = 1, .inputs = &in, .outputs = &out,
                        .grid = {in->size, 1, 1}, .threadgroup = {64, 1, 1}};
  double t0 = zmlxi_now_ms();
  CHECK(zmlx_kernel_launch(k, &c));
  double ms = zmlxi_now_ms() - t0;
  CHECK(zmlx_device_synchronize(in->buffer->device));
  return ms;
}

/* Child process: device already warm, kernel binary on disk: time the first launch. */
static int child(const char *backend, const char *tag) {
  zmlx_backend b;
  zmlx_device *dev;
  CHECK(zmlx_backend_from_name(backend, &b));
  CHECK(zmlx_device_get(b, 0, &dev));
  int64_t n = 1024;
  zmlx_array *in, *out;
  CHECK(zmlx_array_zeros(dev, ZMLX_F32, 1, &n, &in));
  CHECK(zmlx_array_zeros(dev, ZMLX_F32, 1, &n, &out));
  CHECK(zmlx_device_synchronize(dev));
  zmlx_kernel *k = tiny_kernel(tag);
  zmlx_cache_stats s0, s1;
  CHECK(zmlx_cache_get_stats(&s0));
  double ms = first_launch_ms(k, in, out);
  CHECK(zmlx_cache_get_stats(&s1));
  printf("%.4f %llu %llu\n", ms, (unsigned long long)(s1.disk_hits - s0.disk_hits),
         (unsigned long long)(s1.misses - s0.misses));
  return 0;
}

static double disk_warm_ms(const char *self, zmlx_device *dev, const char *tag) {
  int fds[2];
  if (pipe(fds)) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  char *argv[] = {(char *)self, "--child", (char *)zmlx_backend_name(dev->ops->kind), (char *)tag, NULL};
  pid_t pid;
  if (posix_spawn(&pid, self, &fa, NULL, argv, environ)) return -1;
  close(fds[1]);
  char buf[128] = {0};
  ssize_t got = read(fds[0], buf, sizeof buf - 1);
  close(fds[0]);
  waitpid(pid, NULL, 0);
  double ms = -1;
  unsigned long long hits = 0, misses = 0;
  if (got > 0 && sscanf(buf, "%lf %llu %llu", &ms, &hits, &misses) == 3 && (hits != 1 || misses))
    fprintf(stderr, "warning: child had %llu disk hits and %llu compiles\n", hits, misses);
  return ms;
}

static void bench_device(zmlx_device *dev, const char *self) {
  char tag[64];
  snprintf(tag, sizeof tag, "bench-%d-%s", (int)getpid(), zmlx_backend_name(dev->ops->kind));
  int64_t n = 1024;
  zmlx_array *in, *out;
  CHECK(zmlx_array_zeros(dev, ZMLX_F32, 1, &n, &in));
  CHECK(zmlx_array_zeros(dev, ZMLX_F32, 1, &n, &out));

  /* cold compile: a kernel no process has seen, disk cache off */
  int disk = zmlx_cache_disk_enabled();
  CHECK(zmlx_cache_set_disk_enabled(0));
  char cold_tag[80];
  snprintf(cold_tag, sizeof cold_tag, "%s-cold", tag);
  zmlx_kernel *cold = tiny_kernel(cold_tag);
  add_row(dev, "cold compile + first launch", first_launch_ms(cold, in, out), "ms", "reported");
  zmlx_kernel_destroy(cold);
  CHECK(zmlx_cache_set_disk_enabled(disk));

  zmlx_kernel *k = tiny_kernel(tag);
  first_launch_ms(k, in, out); /* compiles and writes to disk */
  add_row(dev, "launch, outputs given", launch_us(k, in, out, 0, 31, 64), "us", "<= 3 (CUDA)");
  add_row(dev, "launch, outputs allocated", launch_us(k, in, out, 1, 31, 64), "us", "");
  add_row(dev, "floor: backend launch only", backend_launch_us(k, in, out, 31, 64), "us", "");
  add_row(dev, "memory hit (lookup)", memory_hit_us(k, dev, 0), "us", "<= 1");
  add_row(dev, "key + memory hit", memory_hit_us(k, dev, 1), "us", "");
  if (disk) add_row(dev, "disk-warm start (new process)", disk_warm_ms(self, dev, tag), "ms", "<= 5");
  zmlx_kernel_destroy(k);
  zmlx_array_release(in), zmlx_array_release(out);
}

static void print_table(void) {
  printf("%-8s %-32s %12s %-4s %s\n", "backend", "measure", "value", "unit", "target");
  for (int i = 0; i < n_rows; i++)
    printf("%-8s %-32s %12.3f %-4s %s\n", rows[i].backend, rows[i].what, rows[i].value,
           rows[i].unit, rows[i].target);
}

static void write_json(const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) {
    perror(path);
    return;
  }
  fprintf(f, "{\"bench\": \"launch\", \"version\": \"%s\", \"rows\": [\n", zmlx_version_string());
  for (int i = 0; i < n_rows; i++)
    fprintf(f, "  {\"backend\": \"%s\", \"measure\": \"%s\", \"value\": %.6f, \"unit\": \"%s\"}%s\n",
            rows[i].backend, rows[i].what, rows[i].value, rows[i].unit, i + 1 < n_rows ? "," : "");
  fprintf(f, "]}\n");
  fclose(f);
}

int main(int argc, char **argv) {
  if (argc == 4 && !strcmp(argv[1], "--child")) return child(argv[2], argv[3]);
  const char *json = NULL, *only = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
    else if (!strcmp(argv[i], "--backend") && i + 1 < argc) only = argv[++i];
    else {
      printf("usage: bench_launch [--backend cuda|opencl] [--json FILE]\n");
      return strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
  char self[4096];
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0) return 1;
  self[len] = '\0';
  zmlx_backend bs[2] = {ZMLX_BACKEND_CUDA, ZMLX_BACKEND_OPENCL};
  for (int b = 0; b < 2; b++) {
    if (only && strcmp(only, zmlx_backend_name(bs[b]))) continue;
    zmlx_device *dev;
    if (zmlx_device_get(bs[b], 0, &dev) != ZMLX_OK) continue;
    printf("# %s: %s\n", zmlx_backend_name(bs[b]), dev->info.name);
    bench_device(dev, self);
  }
  print_table();
  if (json) write_json(json);
  return 0;
}
