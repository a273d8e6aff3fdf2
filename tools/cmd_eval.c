/*
 * `zmlx eval`: run an elementwise expression on a device and print the
 * result (and the gradients) as JSON; `zmlx functions`: the function table.
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gen/expr.h"
#include "zmlx.h"

const char zmlx_eval_usage[] =
    "usage: zmlx eval [options] EXPR|-f FILE|- --in NAME=V,V,... [--in ...] [--param NAME=V]\n"
    "\n"
    "Build the elementwise kernel of EXPR, run it on a device and print the\n"
    "result as one line of JSON. Example:\n"
    "\n"
    "  $ zmlx eval --grad 'x * sigmoid(x) * y' --in x=-1,0,2 --in y=3\n"
    "  {\"out\": [...], \"grad\": {\"x\": [...], \"y\": [...]}}\n"
    "\n"
    "Every input of EXPR is given with --in, in the order of the kernel's\n"
    "inputs; a name EXPR uses that is not an input, a --param or a local is a\n"
    "parse error. Inputs broadcast with NumPy rules.\n"
    "\n"
    "options:\n"
    "  --in NAME=V,V,...         a 1-D input of the values given\n"
    "  --in NAME[D0,D1,...]=V,.. an input of that shape (C order); a single\n"
    "                            value fills the whole shape\n"
    "  --param NAME=V            a scalar parameter (e.g. alpha in\n"
    "                            'leaky_relu(x, alpha)'), passed at call time\n"
    "  --grad                    also run the backward (VJP) kernel with an\n"
    "                            all-ones cotangent and print \"grad\": the\n"
    "                            gradient of sum(out) w.r.t. each input, summed\n"
    "                            over its broadcast axes (the input's shape)\n"
    "  --backend B               auto (default: CUDA if a GPU works, else\n"
    "                            OpenCL; $ZMLX_BACKEND overrides), cuda, opencl\n"
    "  --device N                device index within the backend (default 0)\n"
    "  -f, --file FILE           read EXPR from FILE ('-': standard input; a\n"
    "                            lone '-' as EXPR reads standard input too)\n"
    "  --dtype T                 storage dtype of inputs, output and gradients:\n"
    "                            f32 (default), f16, bf16 (computed in f32)\n"
    "  --                        end of options: what follows is EXPR (for an\n"
    "                            EXPR that starts with '-', give the options\n"
    "                            first: zmlx eval --in x=1,2 -- '-x')\n"
    "  -h, --help                show this help\n"
    "\n"
    "Values are read with strtod (1e-3, inf, -inf, nan). Output numbers are\n"
    "printed with %.9g; a multi-dimensional result is a nested list; NaN and\n"
    "infinities print as NaN, Infinity and -Infinity (as Python's json does).\n"
    "'zmlx functions' lists the functions EXPR may call.\n"
    "\n"
    "Exit status: 0 on success, 1 when EXPR does not parse (the message gives\n"
    "line, column and a caret), shapes do not broadcast, or the device fails;\n"
    "2 for a bad command line.\n";

const char zmlx_functions_usage[] =
    "usage: zmlx functions\n"
    "\n"
    "List the functions of the expression language (zmlx emit, zmlx eval,\n"
    "zmlx_elementwise) with their number of arguments and definition.\n";

/* --------------------------------------------------------------- inputs */

typedef struct eval_input {
  int ndim;
  int64_t shape[ZMLX_MAX_DIMS];
  int64_t count;  /* product of shape */
  float *values;  /* count values */
} eval_input;

/* Comma-separated numbers of `s` into a new array; *n gets the count.
 * Returns CLI_OK, CLI_USAGE (a bad value) or CLI_FAIL (out of memory: not
 * the command line's fault). */
static int parse_values(const char *s, const char *name, float **out, int64_t *n) {
  size_t cap = 1;
  for (const char *p = s; *p; p++) cap += *p == ',';
  float *v = malloc(cap * sizeof *v);
  if (!v) {
    fprintf(stderr, "%s: out of memory for %zu values\n", cli_path(), cap);
    return CLI_FAIL;
  }
  int64_t k = 0;
  for (const char *p = s;; p++) {
    char *end = NULL;
    errno = 0;
    double d = strtod(p, &end);
    while (end && end != p && (*end == ' ' || *end == '\t')) end++;
    if (end == p || (*end != ',' && *end != '\0')) {
      size_t len = strcspn(p, ",");
      free(v);
      return cli_usage_error("input '%s': '%.*s' is not a number", name,
                             (int)(len > 60 ? 60 : len), p);
    }
    v[k++] = (float)d;
    p = end;
    if (*p == '\0') break;
  }
  *out = v;
  *n = k;
  return CLI_OK;
}

/* NAME=V,... or NAME[D0,...]=V,... Returns a CLI_* code as parse_values. */
static int parse_input(const char *spec, cli_names *names, eval_input *in) {
  size_t n = strcspn(spec, "[=");
  if (spec[n] == '\0')
    return cli_usage_error("--in '%s': expected NAME=V,V,... or NAME[D0,D1]=V,...", spec);
  if (!cli_add_name(names, spec, n, "input")) return CLI_USAGE;
  const char *name = names->name[names->n - 1];
  const char *p = spec + n;
  in->ndim = 1;
  int shaped = 0;
  if (*p == '[') {
    shaped = 1;
    in->ndim = 0;
    p++;
    for (;;) {
      char *end = NULL;
      if (*p < '0' || *p > '9') break;
      errno = 0;
      long long d = strtoll(p, &end, 10);
      if (errno || d < 1 || d > ((int64_t)1 << 40) || in->ndim >= ZMLX_MAX_DIMS) {
        p = "";
        break;
      }
      in->shape[in->ndim++] = d;
      p = end;
      if (*p != ',') break;
      p++;
    }
    if (*p != ']' || p[1] != '=' || in->ndim == 0)
      return cli_usage_error("input '%s': bad shape (want 1 to %d sizes >= 1, as "
                             "NAME[2,3]=...)",
                             name, ZMLX_MAX_DIMS);
    p++;
  }
  p++; /* '=' */
  int64_t count = 0;
  int rc = parse_values(p, name, &in->values, &count);
  if (rc != CLI_OK) return rc;
  if (!shaped) {
    in->shape[0] = count;
    in->count = count;
    return CLI_OK;
  }
  in->count = 1;
  for (int d = 0; d < in->ndim; d++) {
    if (in->count > ((int64_t)1 << 40) / in->shape[d])
      return cli_usage_error("input '%s': shape too large", name);
    in->count *= in->shape[d];
  }
  if (count == in->count) return CLI_OK;
  if (count == 1) { /* one value fills the shape */
    float *all = malloc((size_t)in->count * sizeof *all);
    if (!all) {
      fprintf(stderr, "%s: out of memory for input '%s' (%lld values)\n", cli_path(), name,
              (long long)in->count);
      return CLI_FAIL;
    }
    for (int64_t i = 0; i < in->count; i++) all[i] = in->values[0];
    free(in->values);
    in->values = all;
    return CLI_OK;
  }
  return cli_usage_error("input '%s': shape holds %lld values, %lld given", name,
                         (long long)in->count, (long long)count);
}

/* NAME=V */
static int parse_param(const char *spec, cli_names *names, double *values) {
  size_t n = strcspn(spec, "=");
  if (spec[n] != '=')
    return cli_usage_error("--param '%s': expected NAME=VALUE", spec), 0;
  if (!cli_add_name(names, spec, n, "parameter")) return 0;
  char *end = NULL;
  double v = strtod(spec + n + 1, &end);
  if (end == spec + n + 1 || *end != '\0')
    return cli_usage_error("parameter '%.*s': '%s' is not a number", (int)n, spec,
                           spec + n + 1),
           0;
  values[names->n - 1] = v;
  return 1;
}

/* --------------------------------------------------------------- output */

static void print_number(double v) {
  if (isnan(v))
    fputs("NaN", stdout);
  else if (isinf(v))
    fputs(v > 0 ? "Infinity" : "-Infinity", stdout);
  else
    printf("%.9g", v);
}

/* Nested JSON lists of `v` (C order) for the shape; a number for ndim 0. */
static const float *print_nested(const float *v, int ndim, const int64_t *shape) {
  if (ndim == 0) {
    print_number(*v);
    return v + 1;
  }
  putchar('[');
  for (int64_t i = 0; i < shape[0]; i++) {
    if (i) fputs(", ", stdout);
    v = print_nested(v, ndim - 1, shape + 1);
  }
  putchar(']');
  return v;
}

/* The array's values as f32 on the host (caller frees). */
static zmlx_status download(zmlx_array *a, float **out) {
  *out = NULL;
  zmlx_array *f = NULL;
  zmlx_status st;
  if (zmlx_array_dtype(a) == ZMLX_F32) {
    f = a;
    st = zmlx_array_retain(f);
  } else {
    st = zmlx_array_astype(a, ZMLX_F32, &f);
  }
  if (st != ZMLX_OK) return st;
  size_t n = (size_t)zmlx_array_size(f);
  float *buf = malloc((n ? n : 1) * sizeof *buf);
  if (!buf) {
    zmlx_array_release(f);
    return ZMLX_ERR_OUT_OF_MEMORY;
  }
  st = zmlx_array_to_host(f, buf, n * sizeof *buf);
  zmlx_array_release(f);
  if (st != ZMLX_OK) {
    free(buf);
    return st;
  }
  *out = buf;
  return ZMLX_OK;
}

static zmlx_status print_array(zmlx_array *a) {
  float *v = NULL;
  zmlx_status st = download(a, &v);
  if (st != ZMLX_OK) return st;
  print_nested(v, zmlx_array_ndim(a), zmlx_array_shape(a));
  free(v);
  return ZMLX_OK;
}

static void print_json_string(const char *s) {
  /* Names are identifiers: nothing to escape. */
  printf("\"%s\"", s);
}

/* ----------------------------------------------------------------- eval */

typedef struct eval_args {
  const char *expr, *file;
  char *owned_expr; /* EXPR read from a file or stdin */
  zmlx_backend backend;
  int device; /* -1: the default device */
  zmlx_dtype dtype;
  int grad;
  cli_names inputs, params;
  eval_input in[CLI_EXPR_MAX_NAMES];
  double param_values[CLI_EXPR_MAX_NAMES];
} eval_args;

static int parse_args(int argc, char **argv, eval_args *a) {
  int positional_only = 0;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i], *v = NULL;
    int r;
    if (positional_only || arg[0] != '-' || arg[1] == '\0') {
      if (a->expr)
        return cli_usage_error("unexpected argument '%s' (EXPR is already '%s': quote the "
                               "whole expression)",
                               arg, a->expr);
      a->expr = arg;
    } else if (strcmp(arg, "--") == 0) {
      positional_only = 1;
    } else if (strcmp(arg, "--grad") == 0) {
      a->grad = 1;
    } else if ((r = cli_option(argc, argv, &i, "--backend", &v)) != 0) {
      if (r < 0) return CLI_USAGE;
      if (zmlx_backend_from_name(v, &a->backend) != ZMLX_OK)
        return cli_usage_error("unknown backend '%s' (choose auto, cuda or opencl)", v);
    } else if ((r = cli_option(argc, argv, &i, "--file", &v)) != 0 ||
               (r = cli_option(argc, argv, &i, "-f", &v)) != 0) {
      if (r < 0) return CLI_USAGE;
      a->file = v;
    } else if ((r = cli_option(argc, argv, &i, "--device", &v)) != 0) {
      char *end = NULL;
      if (r < 0) return CLI_USAGE;
      long d = strtol(v, &end, 10);
      if (end == v || *end || d < 0 || d > 1024)
        return cli_usage_error("bad device index '%s'", v);
      a->device = (int)d;
    } else if ((r = cli_option(argc, argv, &i, "--dtype", &v)) != 0) {
      if (r < 0 || !cli_parse_float_dtype(v, &a->dtype)) return CLI_USAGE;
    } else if ((r = cli_option(argc, argv, &i, "--in", &v)) != 0) {
      if (r < 0) return CLI_USAGE;
      int pr = parse_input(v, &a->inputs, &a->in[a->inputs.n]);
      if (pr != CLI_OK) return pr;
    } else if ((r = cli_option(argc, argv, &i, "--param", &v)) != 0) {
      if (r < 0 || !parse_param(v, &a->params, a->param_values)) return CLI_USAGE;
    } else {
      return cli_usage_error("unknown option '%s'", arg);
    }
  }
  return cli_expr_text(a->expr, a->file, &a->expr, &a->owned_expr);
}

static zmlx_status get_device(const eval_args *a, zmlx_device **dev) {
  if (a->backend == ZMLX_BACKEND_METAL)
    return ZMLX_ERR_UNSUPPORTED; /* reported by the caller */
  if (a->backend == ZMLX_BACKEND_AUTO && a->device < 0) return zmlx_default_device(dev);
  return zmlx_device_get(a->backend, a->device < 0 ? 0 : a->device, dev);
}

/* Build, run and print; every array made here is released before return. */
static int run(eval_args *a) {
  zmlx_device *dev = NULL;
  zmlx_status st = get_device(a, &dev);
  if (st != ZMLX_OK) {
    if (a->backend == ZMLX_BACKEND_METAL) {
      fprintf(stderr, "%s: the metal backend only emits source: try 'zmlx emit --backend "
                      "metal'\n",
              cli_path());
      return CLI_FAIL;
    }
    return cli_report(st, "no device");
  }
  int n = a->inputs.n, rc = CLI_FAIL;
  zmlx_array *inputs[CLI_EXPR_MAX_NAMES] = {0}, *grads[CLI_EXPR_MAX_NAMES] = {0};
  zmlx_array *out = NULL, *cot = NULL;
  zmlx_op *op = NULL;
  const char *doing = "creating the inputs";
  for (int i = 0; i < n && st == ZMLX_OK; i++) {
    zmlx_array *f = NULL;
    st = zmlx_array_from_host(dev, ZMLX_F32, a->in[i].ndim, a->in[i].shape, a->in[i].values, &f);
    if (st == ZMLX_OK && a->dtype != ZMLX_F32) {
      st = zmlx_array_astype(f, a->dtype, &inputs[i]);
      zmlx_array_release(f);
    } else {
      inputs[i] = f;
    }
  }
  if (st == ZMLX_OK) {
    doing = "building the kernel";
    st = zmlx_elementwise(a->expr, a->inputs.ptr, n, a->params.ptr, a->params.n, &op);
  }
  if (st == ZMLX_OK) {
    doing = "running the kernel";
    st = zmlx_op_call(op, inputs, n, a->param_values, NULL, &out);
  }
  if (st == ZMLX_OK && a->grad) {
    doing = "running the backward kernel";
    st = zmlx_array_full(dev, zmlx_array_dtype(out), zmlx_array_ndim(out), zmlx_array_shape(out),
                         1.0, &cot);
    if (st == ZMLX_OK) st = zmlx_op_vjp(op, inputs, n, a->param_values, cot, NULL, grads);
  }
  if (st == ZMLX_OK) {
    doing = "reading the results";
    fputs("{\"out\": ", stdout);
    st = print_array(out);
    if (st == ZMLX_OK && a->grad) {
      fputs(", \"grad\": {", stdout);
      for (int i = 0; i < n && st == ZMLX_OK; i++) {
        if (i) fputs(", ", stdout);
        print_json_string(a->inputs.name[i]);
        fputs(": ", stdout);
        st = print_array(grads[i]);
      }
      fputs("}", stdout);
    }
    fputs(st == ZMLX_OK ? "}\n" : "\n", stdout);
  }
  if (st == ZMLX_OK)
    rc = CLI_OK;
  else
    cli_report(st, doing);
  for (int i = 0; i < n; i++) {
    zmlx_array_release(inputs[i]);
    zmlx_array_release(grads[i]);
  }
  zmlx_array_release(out);
  zmlx_array_release(cot);
  if (op) zmlx_op_destroy(op);
  return rc;
}

int zmlx_cmd_eval(const cli_command *self, int argc, char **argv) {
  (void)self;
  eval_args *a = calloc(1, sizeof *a);
  if (!a) {
    fprintf(stderr, "%s: out of memory\n", cli_path());
    return CLI_FAIL;
  }
  a->backend = ZMLX_BACKEND_AUTO;
  a->device = -1;
  a->dtype = ZMLX_F32;
  int rc = parse_args(argc, argv, a);
  /* The expression is checked before any device is touched: a parse error
   * is reported with its caret even on a machine without devices. */
  if (rc == CLI_OK) rc = cli_parse_expr(a->expr, &a->inputs, 0, &a->params);
  if (rc == CLI_OK) rc = run(a);
  for (int i = 0; i < a->inputs.n; i++) free(a->in[i].values);
  free(a->owned_expr);
  free(a);
  return rc;
}

/* ------------------------------------------------------------ functions */

int zmlx_cmd_functions(const cli_command *self, int argc, char **argv) {
  if (!cli_expect_no_args(self, argc, argv)) return CLI_USAGE;
  printf("%-11s %-5s %s\n", "function", "args", "definition");
  for (int i = 0; i < zmlxi_expr_function_count(); i++) {
    const zmlx_expr_function *f = zmlxi_expr_function_at(i);
    char args[16];
    if (f->min_args == f->max_args)
      snprintf(args, sizeof args, "%d", f->min_args);
    else
      snprintf(args, sizeof args, "%d-%d", f->min_args, f->max_args);
    printf("%-11s %-5s %s\n", f->name, args, f->doc);
  }
  printf("\nAlso: + - * / ** (power), unary - and !, < <= > >= == !=, && ||, c ? a : b,\n"
         "numbers (1, 2.5, 1e-6, inf, nan), and statements 'name = expr' separated by\n"
         "';' or newlines, the last one being the result.\n");
  return CLI_OK;
}
