/* `zmlx bench`: time the catalog's ops at LLM shapes against the device
 * copy bandwidth measured in the same run; optional peer times from
 * bench/peer_catalog.py's JSON give the ratio column. */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "check/catalog.h"

const char zmlx_bench_usage[] =
    "usage: zmlx bench [--backend cuda|opencl] [--op GLOB] [--json FILE] [--peer FILE]\n"
    "                  [--reps N]\n\n"
    "For each op of the catalog at its LLM shapes: median time, effective\n"
    "bandwidth (bytes that must move / time) and its share of the device copy\n"
    "bandwidth measured first in the same run. --peer reads the JSON written by\n"
    "bench/peer_catalog.py (PyTorch eager and torch.compile on the same shapes)\n"
    "and adds their times and zmlx's speed-up over each.\n";

typedef struct peer_time {
  char op[64], shape[96], peer[48];
  double ms;
} peer_time;

typedef struct bench_state {
  double copy_gbs;
  FILE *json;
  int rows;
  peer_time *peers;
  int n_peers;
} bench_state;

/* The peer JSON is a list of {"op": .., "shape": .., "peer": .., "ms": ..}
 * objects, one per line, as peer_catalog.py writes it. */
static const char *json_str(const char *line, const char *key, char *out, size_t cap) {
  char pat[32];
  snprintf(pat, sizeof pat, "\"%s\": \"", key);
  const char *p = strstr(line, pat);
  if (!p) return NULL;
  p += strlen(pat);
  const char *e = strchr(p, '"');
  if (!e) return NULL;
  snprintf(out, cap, "%.*s", (int)(e - p), p);
  return out;
}

static int read_peers(const char *path, bench_state *b) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[512];
  int cap = 0;
  while (fgets(line, sizeof line, f)) {
    peer_time t;
    memset(&t, 0, sizeof t);
    const char *ms = strstr(line, "\"ms\": ");
    if (!ms || !json_str(line, "op", t.op, sizeof t.op) ||
        !json_str(line, "shape", t.shape, sizeof t.shape) ||
        !json_str(line, "peer", t.peer, sizeof t.peer))
      continue;
    t.ms = atof(ms + 6);
    if (b->n_peers == cap) {
      cap = cap ? 2 * cap : 16;
      peer_time *np = realloc(b->peers, (size_t)cap * sizeof *np);
      if (!np) break;
      b->peers = np;
    }
    b->peers[b->n_peers++] = t;
  }
  fclose(f);
  return b->n_peers;
}

static void print_row(void *ctx, const zmlx_bench_row *r) {
  bench_state *b = ctx;
  double gbs = r->bytes / r->ms * 1e-6;
  double tflops = r->flops / r->ms * 1e-9;
  printf("%-16s %-26s %-5s %10.4f %9.1f %7.1f", r->op, r->shape, zmlx_dtype_name(r->dtype), r->ms,
         gbs, 100 * gbs / b->copy_gbs);
  if (r->flops > 0) printf(" %8.2f TFLOP/s", tflops);
  for (int i = 0; i < b->n_peers; i++)
    if (!strcmp(b->peers[i].op, r->op) && !strcmp(b->peers[i].shape, r->shape))
      printf("  %s %.4f ms (%.2fx)", b->peers[i].peer, b->peers[i].ms, b->peers[i].ms / r->ms);
  printf("\n");
  fflush(stdout);
  if (b->json)
    fprintf(b->json, "%s  {\"op\": \"%s\", \"shape\": \"%s\", \"dtype\": \"%s\", \"ms\": %.6f, "
            "\"gbs\": %.2f, \"pct_copy\": %.2f, \"tflops\": %.3f}", b->rows ? ",\n" : "",
            r->op, r->shape, zmlx_dtype_name(r->dtype), r->ms, gbs, 100 * gbs / b->copy_gbs,
            tflops);
  b->rows++;
}

typedef struct copy_ctx {
  zmlx_device *dev;
  zmlx_array *src, *dst;
} copy_ctx;

/* The backend's device-to-device copy (cuMemcpyDtoDAsync / clEnqueueCopyBuffer):
 * reading + writing every byte once is the ceiling for the ops. */
static zmlx_status run_copy(void *p) {
  copy_ctx *c = p;
  zmlx_device *d = c->dev;
  return d->ops->copy(d->index, zmlxi_stream_or_default(NULL, d)->handle, c->dst->buffer->handle, 0,
                      c->src->buffer->handle, 0, zmlx_array_nbytes(c->src));
}

static zmlx_status measure_copy(zmlx_device *dev, int reps, double *gbs) {
  int64_t n = (int64_t)1 << 28; /* 512 MiB of bf16 */
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(dev, &info));
  if (info.backend == ZMLX_BACKEND_OPENCL) n = (int64_t)1 << 24; /* CPUs: 32 MiB */
  copy_ctx c = {.dev = dev};
  ZMLX_CHECK(zmlx_array_random_uniform(dev, ZMLX_BF16, 1, &n, 5, -1, 1, &c.src)); /* never time zeros */
  zmlx_status st = zmlx_array_empty(dev, ZMLX_BF16, 1, &n, &c.dst);
  double ms = 0;
  if (st == ZMLX_OK) st = zck_bench_median_ms(dev, run_copy, &c, reps, 5, &ms);
  zmlx_array_release(c.src);
  zmlx_array_release(c.dst);
  if (st == ZMLX_OK) *gbs = 2.0 * (double)n * 2.0 / ms * 1e-6;
  return st;
}

int zmlx_cmd_bench(const cli_command *self, int argc, char **argv) {
  (void)self;
  const char *backend = NULL, *glob = NULL, *json = NULL, *peer = NULL, *v = NULL;
  int reps = 21;
  for (int i = 1; i < argc; i++) {
    int r;
    if ((r = cli_option(argc, argv, &i, "--backend", &v))) { if (r < 0) return CLI_USAGE; backend = v; }
    else if ((r = cli_option(argc, argv, &i, "--op", &v))) { if (r < 0) return CLI_USAGE; glob = v; }
    else if ((r = cli_option(argc, argv, &i, "--json", &v))) { if (r < 0) return CLI_USAGE; json = v; }
    else if ((r = cli_option(argc, argv, &i, "--peer", &v))) { if (r < 0) return CLI_USAGE; peer = v; }
    else if ((r = cli_option(argc, argv, &i, "--reps", &v))) {
      if (r < 0) return CLI_USAGE;
      reps = atoi(v);
      if (reps < 1) return cli_usage_error("--reps must be >= 1");
    } else return cli_usage_error("unknown argument '%s'", argv[i]);
  }
  zmlx_device *dev = NULL;
  zmlx_status st;
  if (backend) {
    zmlx_backend b;
    if (zmlx_backend_from_name(backend, &b) != ZMLX_OK) return cli_usage_error("unknown backend '%s'", backend);
    st = zmlx_device_get(b, 0, &dev);
  } else {
    st = zmlx_default_device(&dev);
  }
  if (st != ZMLX_OK) return cli_report(st, "choosing a device");
  bench_state b = {0};
  if (peer && !read_peers(peer, &b)) fprintf(stderr, "%s: no peer rows in %s\n", cli_path(), peer);
  st = measure_copy(dev, reps, &b.copy_gbs);
  if (st != ZMLX_OK) return cli_report(st, "measuring the copy bandwidth");
  zmlx_device_info info;
  zmlx_device_get_info(dev, &info);
  printf("# zmlx %s bench on %s: %s; device copy %.1f GB/s (read + write)\n",
         zmlx_version_string(), zmlx_backend_name(info.backend), info.name, b.copy_gbs);
  printf("%-16s %-26s %-5s %10s %9s %7s  %s\n", "op", "shape", "dtype", "ms", "GB/s", "% copy",
         "peers");
  if (json && !(b.json = fopen(json, "w"))) return cli_report(ZMLX_ERR_IO, "opening the JSON file");
  if (b.json)
    fprintf(b.json, "{\"device\": \"%s\", \"copy_gbs\": %.2f, \"rows\": [\n", info.name, b.copy_gbs);
  const zmlx_catalog_bench *const *benches = zck_catalog_benches();
  int failed = 0, total = 0, done = 0;
  for (int i = 0; benches[i]; i++) total += !(glob && fnmatch(glob, benches[i]->name, 0));
  /* stdout redirected (a table going to a file), stderr a terminal: say
   * which benchmark runs, as `zmlx check` does */
  const int progress = !isatty(1) && isatty(2);
  for (int i = 0; benches[i]; i++) {
    if (glob && fnmatch(glob, benches[i]->name, 0)) continue;
    if (progress) fprintf(stderr, "\r[%d/%d] %-24s", ++done, total, benches[i]->name);
    zmlx_bench_opts o = {.device = dev, .reps = reps, .emit = print_row, .ctx = &b};
    if ((st = benches[i]->bench(&o)) != ZMLX_OK) {
      failed = 1;
      cli_report(st, benches[i]->name);
    }
  }
  if (progress) fprintf(stderr, "\r%-40s\r", "");
  if (b.json) {
    fprintf(b.json, "\n]}\n");
    fclose(b.json);
  }
  if (!b.rows) fprintf(stderr, "%s: no benchmark matched\n", cli_path());
  free(b.peers);
  return failed || !b.rows ? CLI_FAIL : CLI_OK;
}
