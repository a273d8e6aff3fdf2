/* `zmlx check`: run the op catalog's verifier on every (or one) backend,
 * print one row per case and end with "N passed, N failed". */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "cli.h"
#include "check/catalog.h"

const char zmlx_check_usage[] =
    "usage: zmlx check [--backend cuda|opencl] [--op GLOB] [--dtype f32|f16|bf16]\n"
    "                  [--quick] [--seed N] [--seeds K] [--paths] [--json]\n\n"
    "For every op of the catalog: the forward pass against an f64 C reference on\n"
    "fresh random inputs (outputs poisoned first), at edge and LLM shapes, and the\n"
    "backward pass with the gradient checker; then bad inputs. One row per case:\n"
    "op, backend, dtype, shape, case, error and bound at the element where the\n"
    "error is largest against its bound (|got - want| <= atol + rtol |want|, both\n"
    "derived from the dtype and the op: src/check/check_util.c), pass. The last line is\n"
    "\"N passed, N failed\"; the exit status is 1 when any case failed.\n\n"
    "options:\n"
    "  --backend B   only this backend (default: every available one)\n"
    "  --op GLOB     only ops whose name matches (shell pattern, e.g. 'soft*')\n"
    "  --dtype D     only this dtype (default: f32, f16 and bf16)\n"
    "  --quick       the CI subset: every op and dtype, fewer and smaller shapes\n"
    "  --seed N      fixed seed (default: a fresh one, printed first)\n"
    "  --seeds K     run the whole check K times, seeds N, N+1, ..., N+K-1, and\n"
    "                print only the failing rows, each with the seed that repeats it\n"
    "                (a tolerance sweep: kernels compile once for all K)\n"
    "  --json        one JSON object per row (op, backend, dtype, shape, case,\n"
    "                max_error, tolerance, pass, seed), then {\"passed\", \"failed\"}\n"
    "  --paths       under each row, the kernel variants the case launched (name,\n"
    "                template switches such as VEC and NV, threadgroup): which\n"
    "                case reaches which code path of the op\n";

typedef struct tally {
  int passed, failed;
  int failures_only; /* --seeds: print only failing rows, with their seed */
  int paths;         /* --paths: the variants each row's case launched */
  int json;          /* --json: rows as JSON objects */
  int progress;      /* stdout redirected, stderr a terminal: "op i/n" on stderr */
  uint64_t seed;
} tally;

static void print_json_row(const tally *t, const zmlx_check_row *r) {
  printf("{\"op\": ");
  cli_json_string(stdout, r->op);
  printf(", \"backend\": \"%s\", \"dtype\": \"%s\", \"shape\": ", zmlx_backend_name(r->backend),
         zmlx_dtype_name(r->dtype));
  cli_json_string(stdout, r->shape);
  printf(", \"case\": ");
  cli_json_string(stdout, r->what);
  printf(", \"max_error\": %.6e, \"tolerance\": %.6e, \"pass\": %s, \"seed\": %llu}\n",
         isfinite(r->max_err) ? r->max_err : 1e308, r->tol, r->pass ? "true" : "false",
         (unsigned long long)t->seed);
}

static void print_row(void *ctx, const zmlx_check_row *r) {
  tally *t = ctx;
  if (r->pass) t->passed++;
  else t->failed++;
  if (t->failures_only && r->pass) return;
  if (t->json) {
    print_json_row(t, r);
    return;
  }
  printf("%-18s %-8s %-5s %-28s %-12s %11.3e %10.1e  %s", r->op, zmlx_backend_name(r->backend),
         zmlx_dtype_name(r->dtype), r->shape, r->what, r->max_err, r->tol,
         r->pass ? "pass" : "FAIL");
  if (t->failures_only) printf("  --seed %llu", (unsigned long long)t->seed);
  printf("\n");
  if (t->paths)
    for (const char *p = zck_launches_take(), *e; *p; p = e + 1) {
      e = strchr(p, '\n');
      printf("    launched %.*s\n", (int)(e - p), p);
    }
  fflush(stdout);
}

typedef struct check_args {
  const char *backend, *op_glob, *dtype;
  int quick;
  uint64_t seed;
  int seed_given;
  long seeds;
  int paths, json;
} check_args;

static int parse_args(int argc, char **argv, check_args *a) {
  for (int i = 1; i < argc; i++) {
    const char *v = NULL;
    int r;
    if (!strcmp(argv[i], "--quick")) a->quick = 1;
    else if (!strcmp(argv[i], "--paths")) a->paths = 1;
    else if (!strcmp(argv[i], "--json")) a->json = 1;
    else if ((r = cli_option(argc, argv, &i, "--backend", &v))) { if (r < 0) return 0; a->backend = v; }
    else if ((r = cli_option(argc, argv, &i, "--op", &v))) { if (r < 0) return 0; a->op_glob = v; }
    else if ((r = cli_option(argc, argv, &i, "--dtype", &v))) { if (r < 0) return 0; a->dtype = v; }
    else if ((r = cli_option(argc, argv, &i, "--seed", &v))) {
      if (r < 0) return 0;
      a->seed = strtoull(v, NULL, 0);
      a->seed_given = 1;
    } else if ((r = cli_option(argc, argv, &i, "--seeds", &v))) {
      if (r < 0) return 0;
      char *end = NULL;
      a->seeds = strtol(v, &end, 10);
      if (*end || a->seeds < 1) {
        cli_usage_error("--seeds wants a count >= 1, not '%s'", v);
        return 0;
      }
    } else {
      cli_usage_error("unknown argument '%s'", argv[i]);
      return 0;
    }
  }
  return 1;
}

/* Devices to check: the named backend's device 0, else each available one. */
static int pick_devices(const char *backend, zmlx_device **devs) {
  zmlx_backend order[2] = {ZMLX_BACKEND_CUDA, ZMLX_BACKEND_OPENCL};
  int n = 0;
  for (int i = 0; i < 2; i++) {
    if (backend && strcmp(backend, zmlx_backend_name(order[i]))) continue;
    int count = 0;
    if (zmlx_device_count(order[i], &count) == ZMLX_OK && count > 0 &&
        zmlx_device_get(order[i], 0, &devs[n]) == ZMLX_OK)
      n++;
  }
  return n;
}

static int run_checks(const check_args *a, uint64_t seed, zmlx_device *const *devs, int n_devs,
                      const zmlx_dtype *dts, int n_dts, tally *t) {
  const zmlx_catalog_op *const *ops = zck_catalog_ops();
  int ran = 0;
  for (int d = 0; d < n_devs; d++)
    for (int k = 0; k < n_dts; k++)
      for (int i = 0; ops[i]; i++) {
        if (a->op_glob && fnmatch(a->op_glob, ops[i]->name, 0)) continue;
        if (t->progress)
          fprintf(stderr, "\r[%d/%d] %-18s %-6s %-5s  %d passed, %d failed ", d * n_dts + k + 1,
                  n_devs * n_dts, ops[i]->name, zmlx_backend_name(zmlx_device_backend(devs[d])),
                  zmlx_dtype_name(dts[k]), t->passed, t->failed);
        zmlx_check_opts o = {.device = devs[d], .dtype = dts[k], .quick = a->quick,
                             .seed = seed + (uint64_t)i * 7919u, .emit = print_row, .ctx = t};
        zmlx_status st = ops[i]->check(&o);
        ran++;
        if (st != ZMLX_OK) {
          t->failed++;
          printf("%-18s %-8s %-5s could not run: %s: %s\n", ops[i]->name,
                 zmlx_backend_name(zmlx_device_backend(devs[d])), zmlx_dtype_name(dts[k]),
                 zmlx_status_string(st), zmlx_last_error());
        }
      }
  return ran;
}

int zmlx_cmd_check(const cli_command *self, int argc, char **argv) {
  (void)self;
  check_args a = {0};
  if (!parse_args(argc, argv, &a)) return CLI_USAGE;
  zmlx_dtype dts[3] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
  int n_dts = 3;
  if (a.dtype) {
    if (!cli_parse_float_dtype(a.dtype, &dts[0])) return CLI_USAGE;
    n_dts = 1;
  }
  if (a.backend && strcmp(a.backend, "cuda") && strcmp(a.backend, "opencl"))
    return cli_usage_error("--backend must be cuda or opencl, not '%s'", a.backend);
  zmlx_device *devs[2];
  int n_devs = pick_devices(a.backend, devs);
  if (!n_devs) {
    fprintf(stderr, "%s: no %s device available\n", cli_path(), a.backend ? a.backend : "CUDA or OpenCL");
    return CLI_FAIL;
  }
  if (!a.seed_given) a.seed = (uint64_t)time(NULL) * 2654435761u;
  if (!a.json) {
    printf("# zmlx %s check, seed %llu (--seed to repeat)%s\n", zmlx_version_string(),
           (unsigned long long)a.seed, a.quick ? ", quick" : "");
    if (a.seeds > 1)
      printf("# %ld seeds from %llu: failing rows only\n", a.seeds, (unsigned long long)a.seed);
    printf("%-18s %-8s %-5s %-28s %-12s %11s %10s  %s\n", "op", "backend", "dtype", "shape",
           "case", "max error", "tolerance", "result");
  }
  if (!a.seeds) a.seeds = 1;
  tally t = {.failures_only = a.seeds > 1, .paths = a.paths && !a.json, .json = a.json,
             .progress = !isatty(1) && isatty(2)};
  if (a.paths) zck_launches_record(1);
  int ran = 0;
  for (long s = 0; s < a.seeds; s++) {
    t.seed = a.seed + (uint64_t)s;
    ran = run_checks(&a, t.seed, devs, n_devs, dts, n_dts, &t);
  }
  if (!ran) fprintf(stderr, "%s: no op matches '%s'\n", cli_path(), a.op_glob ? a.op_glob : "*");
  if (a.paths) zck_launches_record(0);
  if (t.progress) fprintf(stderr, "\r%-60s\r", "");
  if (a.json) printf("{\"passed\": %d, \"failed\": %d, \"seed\": %llu}\n", t.passed, t.failed,
                     (unsigned long long)a.seed);
  else printf("%d passed, %d failed\n", t.passed, t.failed);
  return t.failed || !ran ? CLI_FAIL : CLI_OK;
}
