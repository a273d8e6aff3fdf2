/*
 * `zmlx emit`: print the kernel source generated from an expression.
 *
 * Also holds the helpers that `zmlx eval` (tools/cmd_eval.c) shares: option
 * parsing, dtype/backend names, parse-error reporting with a caret, and
 * parsing an expression with its inputs declared or inferred.
 */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "gen/expr.h"
#include "runtime/backend.h"
#include "zmlx.h"

_Static_assert(CLI_NAME_CAP == ZMLX_EXPR_MAX_IDENT + 1, "cli_names holds identifiers");

/* ------------------------------------------------------ shared helpers */

int cli_usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", cli_path());
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nRun '%s --help' for usage.\n", cli_path());
  return CLI_USAGE;
}

int cli_option(int argc, char **argv, int *i, const char *name, const char **value) {
  const char *arg = argv[*i];
  size_t n = strlen(name);
  if (strncmp(arg, name, n) != 0) return 0;
  if (arg[n] == '=') {
    *value = arg + n + 1;
    return 1;
  }
  if (arg[n] != '\0') return 0;
  if (*i + 1 >= argc) {
    cli_usage_error("option '%s' needs a value", name);
    return -1;
  }
  *value = argv[++*i];
  return 1;
}

int cli_parse_float_dtype(const char *name, zmlx_dtype *out) {
  zmlx_dtype dt;
  if (zmlx_dtype_from_name(name, &dt) != ZMLX_OK ||
      (dt != ZMLX_F32 && dt != ZMLX_F16 && dt != ZMLX_BF16)) {
    cli_usage_error("unknown dtype '%s' (choose f32, f16 or bf16)", name);
    return 0;
  }
  *out = dt;
  return 1;
}

int cli_valid_name(const char *s, size_t n) {
  if (n == 0 || n > ZMLX_EXPR_MAX_IDENT) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && (i == 0 || c < '0' || c > '9')) return 0;
  }
  return 1;
}

int cli_add_name(cli_names *names, const char *s, size_t n, const char *what) {
  if (!cli_valid_name(s, n)) {
    cli_usage_error("%s name '%.*s' is not an identifier ([A-Za-z_][A-Za-z0-9_]*)", what,
                    (int)(n > 200 ? 200 : n), s);
    return 0;
  }
  for (int i = 0; i < names->n; i++)
    if (strlen(names->name[i]) == n && memcmp(names->name[i], s, n) == 0) {
      cli_usage_error("%s '%.*s' is given twice", what, (int)n, s);
      return 0;
    }
  if (names->n >= CLI_EXPR_MAX_NAMES) {
    cli_usage_error("too many %ss (at most %d)", what, CLI_EXPR_MAX_NAMES);
    return 0;
  }
  memcpy(names->name[names->n], s, n);
  names->name[names->n][n] = '\0';
  names->ptr[names->n] = names->name[names->n];
  names->n++;
  return 1;
}

/* "3:14: rest..." -> line 3, column 14 and a pointer to "rest...". */
static int split_location(const char *msg, unsigned long *line, unsigned long *col,
                          const char **rest) {
  char *end = NULL;
  if (msg[0] < '0' || msg[0] > '9') return 0;
  *line = strtoul(msg, &end, 10);
  if (*end != ':' || end[1] < '0' || end[1] > '9') return 0;
  *col = strtoul(end + 1, &end, 10);
  if (end[0] != ':' || end[1] != ' ') return 0;
  *rest = end + 2;
  return 1;
}

int cli_report(zmlx_status st, const char *doing) {
  const char *msg = zmlx_last_error();
  unsigned long line = 0, col = 0;
  const char *rest = NULL;
  if (st == ZMLX_ERR_PARSE && split_location(msg, &line, &col, &rest))
    /* The message's own lines follow: the source line and the caret. */
    fprintf(stderr, "%s: parse error at line %lu, column %lu: %s\n", cli_path(), line, col, rest);
  else
    fprintf(stderr, "%s: %s%s%s (%s)\n", cli_path(), doing ? doing : "", doing ? ": " : "",
            *msg ? msg : "failed", zmlx_status_string(st));
  return CLI_FAIL;
}

/* The name in "L:C: unknown identifier 'NAME'..." when the message is that. */
static int unknown_identifier(const char *msg, const char **name, size_t *len) {
  unsigned long line, col;
  const char *rest = NULL;
  static const char prefix[] = "unknown identifier '";
  if (!split_location(msg, &line, &col, &rest)) return 0;
  if (strncmp(rest, prefix, sizeof prefix - 1) != 0) return 0;
  *name = rest + sizeof prefix - 1;
  const char *q = strchr(*name, '\'');
  if (!q) return 0;
  *len = (size_t)(q - *name);
  return cli_valid_name(*name, *len);
}

int cli_parse_expr(const char *expr, cli_names *inputs, int infer, const cli_names *params) {
  for (;;) {
    zmlx_expr *e = NULL;
    zmlx_clear_error();
    zmlx_status st =
        zmlxi_expr_parse(expr, inputs->ptr, inputs->n, params->ptr, params->n, &e);
    if (st == ZMLX_OK) {
      zmlxi_expr_free(e);
      return CLI_OK;
    }
    const char *name = NULL;
    size_t len = 0;
    if (infer && st == ZMLX_ERR_PARSE && inputs->n < CLI_EXPR_MAX_NAMES &&
        unknown_identifier(zmlx_last_error(), &name, &len)) {
      char copy[ZMLX_EXPR_MAX_IDENT + 1];
      memcpy(copy, name, len);
      copy[len] = '\0';
      int known = 0;
      for (int i = 0; i < inputs->n; i++) known |= strcmp(inputs->name[i], copy) == 0;
      if (!known && cli_add_name(inputs, copy, len, "input")) continue;
    }
    return cli_report(st, NULL);
  }
}

/* All of `f` as a string (NULL when out of memory or unreadable). */
static char *read_all(FILE *f) {
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    n += fread(buf + n, 1, cap - 1 - n, f);
    if (ferror(f)) break;
    if (n < cap - 1) {
      buf[n] = '\0';
      return buf;
    }
    char *grown = cap > ((size_t)1 << 26) ? NULL : realloc(buf, cap * 2); /* 64 MiB of text */
    if (!grown) break;
    buf = grown;
    cap *= 2;
  }
  free(buf);
  return NULL;
}

int cli_expr_text(const char *positional, const char *file, const char **text, char **owned) {
  *owned = NULL;
  *text = NULL;
  if (positional && file)
    return cli_usage_error("give EXPR or --file, not both (EXPR is '%s')", positional);
  const char *path = file ? file : positional && !strcmp(positional, "-") ? "-" : NULL;
  if (!path) {
    if (!positional) return cli_usage_error("missing EXPR (or --file FILE, or - for stdin)");
    *text = positional;
    return CLI_OK;
  }
  FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
  if (!f) {
    fprintf(stderr, "%s: cannot open '%s': %s\n", cli_path(), path, strerror(errno));
    return CLI_FAIL;
  }
  char *buf = read_all(f);
  int read_errno = errno;
  if (f != stdin) fclose(f);
  if (!buf) {
    fprintf(stderr, "%s: cannot read '%s': %s\n", cli_path(), path,
            read_errno ? strerror(read_errno) : "too long or out of memory");
    return CLI_FAIL;
  }
  *text = *owned = buf;
  return CLI_OK;
}

/* ---------------------------------------------------------------- emit */

const char zmlx_emit_usage[] =
    "usage: zmlx emit [options] [--] EXPR | -f FILE | -\n"
    "\n"
    "Print the complete kernel source that zmlx generates for the elementwise\n"
    "expression EXPR (the same text zmlx_op_source returns), without needing a\n"
    "device of that backend. Example:\n"
    "\n"
    "  zmlx emit --backend metal --grad 'x * sigmoid(x) * y'\n"
    "\n"
    "EXPR is in the zmlx expression language: statements 'name = expr' separated\n"
    "by ';' or newlines, the last one being the result; numbers, + - * / **,\n"
    "comparisons, && || !, c ? a : b, and functions such as exp, log1p, tanh,\n"
    "sigmoid, silu, gelu, softplus, clamp, where ('zmlx functions' lists them).\n"
    "\n"
    "Inputs: the arrays the kernel reads. Declare them with --in (in that order;\n"
    "any other name is then an error), or leave --in out and every free name of\n"
    "EXPR that is not a local, a --param or a function becomes an input, in the\n"
    "order of first appearance.\n"
    "\n"
    "options:\n"
    "  --backend B      auto (default: the backend zmlx runs on here, as for\n"
    "                   zmlx eval: CUDA with a GPU, else OpenCL; CUDA when no\n"
    "                   device works), cuda, opencl or metal\n"
    "  --body           only the kernel(s), without the backend's prelude\n"
    "  -f, --file FILE  read EXPR from FILE ('-': standard input; a lone '-' as\n"
    "                   EXPR reads standard input too)\n"
    "  --grad, --vjp    the backward (VJP) kernel: gradients of every input\n"
    "  --jvp            the forward-mode (JVP) kernel: the output's tangent\n"
    "  --dtype T        storage dtype of the inputs: f32 (default), f16, bf16\n"
    "                   (f16 and bf16 are computed in f32)\n"
    "  --in NAME        declare an input (repeatable; NAME,NAME,... also works)\n"
    "  --param NAME     declare a scalar parameter passed at call time, e.g.\n"
    "                   alpha in 'leaky_relu(x, alpha)' (repeatable; a value\n"
    "                   given as NAME=V is accepted and ignored)\n"
    "  --               end of options: what follows is EXPR (for an EXPR that\n"
    "                   starts with '-': zmlx emit -- '-x * y')\n"
    "  -h, --help       show this help\n"
    "\n"
    "Exit status: 0 on success, 1 when EXPR does not parse (the message gives\n"
    "line, column and a caret) or the source cannot be generated, 2 for a bad\n"
    "command line.\n";

/* "x", "x,y": names into `names`; `keep_value` accepts and drops "=V". */
static int add_name_list(cli_names *names, const char *list, const char *what,
                         int keep_value) {
  const char *p = list;
  for (;;) {
    size_t n = strcspn(p, keep_value ? ",=" : ",");
    if (!cli_add_name(names, p, n, what)) return 0;
    p += n;
    if (*p == '=') return 1; /* NAME=V: the value is ignored */
    if (*p == '\0') return 1;
    p++;
  }
}

/* auto: the default device's backend, as zmlx eval picks it; CUDA when no
 * device works (emitting needs none). */
static zmlx_backend resolve_backend(zmlx_backend b) {
  if (b != ZMLX_BACKEND_AUTO) return b;
  zmlx_device *dev = NULL;
  if (zmlx_default_device(&dev) != ZMLX_OK) {
    zmlx_clear_error();
    return ZMLX_BACKEND_CUDA;
  }
  return zmlx_device_backend(dev);
}

/* Print `src` without the copies of the dialect prelude that stand in front
 * of each of its kernels (a source may hold several: dense, vector and
 * broadcast layouts). */
static void print_kernels_only(const char *src, zmlx_backend backend) {
  const zmlx_dialect *d = zmlxi_dialect_for(backend);
  const char *prelude = d ? d->prelude : NULL;
  size_t plen = prelude ? strlen(prelude) : 0;
  const char *p = src;
  for (const char *at; plen && (at = strstr(p, prelude)) != NULL;) {
    fwrite(p, 1, (size_t)(at - p), stdout);
    p = at + plen;
    p += strspn(p, "\n");
  }
  fputs(p, stdout);
}

static int emit(const char *expr, zmlx_backend backend, zmlx_dtype dtype, zmlx_op_direction dir,
                int body_only, cli_names *inputs, cli_names *params) {
  int rc = cli_parse_expr(expr, inputs, inputs->n == 0, params);
  if (rc != CLI_OK) return rc;
  backend = resolve_backend(backend);
  zmlx_op *op = NULL;
  zmlx_status st = zmlx_elementwise(expr, inputs->ptr, inputs->n, params->ptr, params->n, &op);
  if (st != ZMLX_OK) return cli_report(st, NULL);
  zmlx_dtype dtypes[CLI_EXPR_MAX_NAMES];
  for (int i = 0; i < inputs->n; i++) dtypes[i] = dtype;
  char *src = NULL;
  st = zmlx_op_source(op, backend, dir, dtypes, &src);
  zmlx_op_destroy(op);
  if (st != ZMLX_OK) return cli_report(st, "source generation");
  if (body_only) print_kernels_only(src, backend);
  else fputs(src, stdout);
  size_t n = strlen(src);
  if (n == 0 || src[n - 1] != '\n') fputc('\n', stdout);
  zmlx_free(src);
  return CLI_OK;
}

int zmlx_cmd_emit(const cli_command *self, int argc, char **argv) {
  (void)self;
  zmlx_backend backend = ZMLX_BACKEND_AUTO;
  zmlx_dtype dtype = ZMLX_F32;
  zmlx_op_direction dir = ZMLX_OP_FORWARD;
  int dir_flags = 0, body_only = 0;
  const char *expr = NULL, *file = NULL;
  cli_names inputs = {0}, params = {0};
  int positional_only = 0;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i], *v = NULL;
    int r;
    if (positional_only || arg[0] != '-' || arg[1] == '\0') {
      if (expr)
        return cli_usage_error("unexpected argument '%s' (EXPR is already '%s': quote the "
                               "whole expression)",
                               arg, expr);
      expr = arg;
    } else if (strcmp(arg, "--") == 0) {
      positional_only = 1;
    } else if (strcmp(arg, "--grad") == 0 || strcmp(arg, "--vjp") == 0) {
      dir = ZMLX_OP_VJP;
      dir_flags++;
    } else if (strcmp(arg, "--jvp") == 0) {
      dir = ZMLX_OP_JVP;
      dir_flags++;
    } else if (strcmp(arg, "--body") == 0) {
      body_only = 1;
    } else if ((r = cli_option(argc, argv, &i, "--file", &v)) != 0 ||
               (r = cli_option(argc, argv, &i, "-f", &v)) != 0) {
      if (r < 0) return CLI_USAGE;
      file = v;
    } else if ((r = cli_option(argc, argv, &i, "--backend", &v)) != 0) {
      if (r < 0) return CLI_USAGE;
      if (zmlx_backend_from_name(v, &backend) != ZMLX_OK)
        return cli_usage_error("unknown backend '%s' (choose auto, cuda, opencl or metal)", v);
    } else if ((r = cli_option(argc, argv, &i, "--dtype", &v)) != 0) {
      if (r < 0 || !cli_parse_float_dtype(v, &dtype)) return CLI_USAGE;
    } else if ((r = cli_option(argc, argv, &i, "--in", &v)) != 0) {
      if (r < 0 || !add_name_list(&inputs, v, "input", 0)) return CLI_USAGE;
    } else if ((r = cli_option(argc, argv, &i, "--param", &v)) != 0) {
      if (r < 0 || !add_name_list(&params, v, "parameter", 1)) return CLI_USAGE;
    } else {
      return cli_usage_error("unknown option '%s'", arg);
    }
  }
  if (dir_flags > 1) return cli_usage_error("give at most one of --grad and --jvp");
  char *owned = NULL;
  int rc = cli_expr_text(expr, file, &expr, &owned);
  if (rc == CLI_OK) rc = emit(expr, backend, dtype, dir, body_only, &inputs, &params);
  free(owned);
  return rc;
}

