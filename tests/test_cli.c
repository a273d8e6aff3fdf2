/*
 * The `zmlx emit` and `zmlx eval` commands, run as subprocesses of the built
 * binary (its path comes from CMake: ZMLX_CLI_PATH): results and gradients
 * against hand-computed values, broadcasting, parameters, parse errors with
 * a caret at the right column, rejected injection text, backend sources,
 * --help and usage errors. `eval` runs on every available backend (or only
 * $ZMLX_TEST_BACKEND); without a device those tests skip.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_support.h"

extern char **environ;

#ifndef ZMLX_CLI_PATH
#define ZMLX_CLI_PATH ""
#endif

static char cli_path[4096]; /* the zmlx binary that runs (see cli_built) */

/* ------------------------------------------------------------ subprocess */

typedef struct cli_run {
  int status; /* exit status; 128 + signal when killed */
  char *out, *err;
} cli_run;

/* Buffers of runs not freed yet: a failing check longjmps out of the test,
 * and the teardown frees what it left. */
static char *pending[256];

static void own(char *p) {
  for (size_t i = 0; i < sizeof pending / sizeof pending[0]; i++)
    if (!pending[i]) {
      pending[i] = p;
      return;
    }
}

static void release(char *p) {
  for (size_t i = 0; i < sizeof pending / sizeof pending[0]; i++)
    if (pending[i] == p) pending[i] = NULL;
  free(p);
}

static int free_pending(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof pending / sizeof pending[0]; i++) {
    free(pending[i]);
    pending[i] = NULL;
  }
  return 0;
}

static void run_free(cli_run *r) {
  release(r->out);
  release(r->err);
  r->out = r->err = NULL;
}

typedef struct growbuf {
  char *data;
  size_t len, cap;
} growbuf;

static void growbuf_read(growbuf *b, int fd, int *open_fd) {
  if (b->cap - b->len < 4097) {
    b->cap = b->cap * 2 + 8192;
    b->data = realloc(b->data, b->cap);
    assert_non_null(b->data);
  }
  ssize_t n = read(fd, b->data + b->len, b->cap - b->len - 1);
  if (n > 0)
    b->len += (size_t)n;
  else if (n == 0 || errno != EINTR)
    *open_fd = 0;
  b->data[b->len] = '\0';
}

/* Run `zmlx ARGS...` once, capturing stdout and stderr. */
static cli_run run_once(const char *const *args) {
  char *argv[64];
  int argc = 0;
  argv[argc++] = cli_path;
  for (; args[argc - 1]; argc++) {
    assert_true(argc < 63);
    argv[argc] = (char *)args[argc - 1];
  }
  argv[argc] = NULL;

  int out_pipe[2], err_pipe[2];
  assert_int_equal(pipe(out_pipe), 0);
  assert_int_equal(pipe(err_pipe), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  posix_spawn_file_actions_addclose(&fa, out_pipe[0]);
  posix_spawn_file_actions_addclose(&fa, err_pipe[0]);
  pid_t pid;
  int rc = posix_spawn(&pid, cli_path, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) fail_msg("posix_spawn %s: %s", cli_path, strerror(rc));

  growbuf out = {0}, err = {0};
  int out_open = 1, err_open = 1;
  while (out_open || err_open) {
    struct pollfd fds[2] = {{out_open ? out_pipe[0] : -1, POLLIN, 0},
                            {err_open ? err_pipe[0] : -1, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      fail_msg("poll: %s", strerror(errno));
    }
    if (out_open && (fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
      growbuf_read(&out, out_pipe[0], &out_open);
    if (err_open && (fds[1].revents & (POLLIN | POLLHUP | POLLERR)))
      growbuf_read(&err, err_pipe[0], &err_open);
  }
  close(out_pipe[0]);
  close(err_pipe[0]);
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0) assert_int_equal(errno, EINTR);
  cli_run r = {WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws), out.data, err.data};
  if (!r.out) r.out = calloc(1, 1);
  if (!r.err) r.err = calloc(1, 1);
  assert_true(r.out && r.err);
  own(r.out);
  own(r.err);
  return r;
}

/* Run `zmlx ARGS...` (NULL-terminated), capturing stdout and stderr. In the
 * sanitizer build, LeakSanitizer's stop-the-world tracer itself sometimes
 * crashes at exit in a process with driver threads (google/sanitizers#1353:
 * "Tracer caught signal 11"; no leak report): such a run is repeated. */
static cli_run run_cli_argv(const char *const *args) {
  for (int attempt = 1;; attempt++) {
    cli_run r = run_once(args);
    if (attempt == 3 || !strstr(r.err, "LeakSanitizer has encountered a fatal error")) return r;
    fprintf(stderr, "[test_cli] LeakSanitizer's tracer crashed (not a leak): run %d again\n",
            attempt);
    run_free(&r);
  }
}

#define RUN(...) run_cli_argv((const char *const[]){__VA_ARGS__, NULL})

static void expect_status(const cli_run *r, int want, const char *what) {
  if (r->status != want)
    fail_msg("%s: exit status %d, want %d\n--- stdout:\n%s\n--- stderr:\n%s", what, r->status,
             want, r->out, r->err);
}

static void expect_contains(const char *text, const char *needle, const char *what) {
  if (!strstr(text, needle)) fail_msg("%s: no '%s' in:\n%s", what, needle, text);
}

/* The binary: CMake's path to it, else (a build tree moved elsewhere) the
 * same layout next to this test: <build>/tests/test_cli, <build>/zmlx. */

static int cli_built(void) {
  if (cli_path[0]) return 1;
  if (ZMLX_CLI_PATH[0] && access(ZMLX_CLI_PATH, X_OK) == 0) {
    snprintf(cli_path, sizeof cli_path, "%s", ZMLX_CLI_PATH);
    return 1;
  }
  char self[4096];
  ssize_t n = ZMLX_CLI_PATH[0] ? readlink("/proc/self/exe", self, sizeof self - 1) : -1;
  if (n > 0) {
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    const char *base = strrchr(ZMLX_CLI_PATH, '/');
    if (slash && base) {
      *slash = '\0';
      snprintf(cli_path, sizeof cli_path, "%.3000s/../%.900s", self, base + 1);
      if (access(cli_path, X_OK) == 0) return 1;
    }
  }
  cli_path[0] = '\0';
  fprintf(stderr, "[test_cli] zmlx binary not built (ZMLX_BUILD_TOOLS=OFF?): skipped\n");
  return 0;
}

/* ---------------------------------------------------------- JSON reading */

/* The numbers of the JSON value after `"key": ` (a number or nested list),
 * in order, flattened. Returns the count. */
static int json_numbers(const char *json, const char *key, double *out, int cap) {
  char pat[96];
  snprintf(pat, sizeof pat, "\"%s\": ", key);
  const char *p = strstr(json, pat);
  if (!p) fail_msg("no %s in JSON:\n%s", pat, json);
  p += strlen(pat);
  int depth = 0, n = 0;
  do {
    if (*p == '[') {
      depth++;
      p++;
    } else if (*p == ']') {
      depth--;
      p++;
    } else if (*p == ',' || *p == ' ') {
      p++;
    } else {
      char *end = NULL;
      double v;
      if (!strncmp(p, "NaN", 3)) {
        v = NAN;
        end = (char *)p + 3;
      } else if (!strncmp(p, "Infinity", 8) || !strncmp(p, "-Infinity", 9)) {
        v = *p == '-' ? -INFINITY : INFINITY;
        end = (char *)p + (*p == '-' ? 9 : 8);
      } else {
        v = strtod(p, &end);
      }
      if (end == p) fail_msg("bad number at '%.20s' in JSON:\n%s", p, json);
      assert_true(n < cap);
      out[n++] = v;
      p = end;
    }
  } while (depth > 0);
  return n;
}

static void expect_values(const char *json, const char *key, const double *want, int n,
                          double tol) {
  double got[64];
  int m = json_numbers(json, key, got, 64);
  if (m != n) fail_msg("%s: %d values, want %d, in:\n%s", key, m, n, json);
  for (int i = 0; i < n; i++)
    if (!(fabs(got[i] - want[i]) <= tol * (1.0 + fabs(want[i]))))
      fail_msg("%s[%d] = %.9g, want %.9g (tolerance %g) in:\n%s", key, i, got[i], want[i], tol,
               json);
}

/* ------------------------------------------------------------- backends */

/* Backends eval runs on: available ones, or only $ZMLX_TEST_BACKEND. */
static int eval_backends(const char **names, int cap) {
  zmlx_device *devs[4];
  int n = zt_devices(devs, cap < 4 ? cap : 4);
  for (int i = 0; i < n; i++) names[i] = zmlx_backend_name(zmlx_device_backend(devs[i]));
  return n;
}

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* ----------------------------------------------------------------- tests */

static void test_help_and_usage_errors(void **state) {
  (void)state;
  if (!cli_built()) skip();
  cli_run r = RUN("emit", "--help");
  expect_status(&r, 0, "emit --help");
  expect_contains(r.out, "usage: zmlx emit", "emit --help");
  expect_contains(r.out, "--backend", "emit --help");
  run_free(&r);
  r = RUN("eval", "--help");
  expect_status(&r, 0, "eval --help");
  expect_contains(r.out, "usage: zmlx eval", "eval --help");
  expect_contains(r.out, "--in NAME=V", "eval --help");
  run_free(&r);
  r = RUN("help", "eval");
  expect_status(&r, 0, "help eval");
  expect_contains(r.out, "usage: zmlx eval", "help eval");
  run_free(&r);
  r = RUN("--help");
  expect_status(&r, 0, "--help");
  expect_contains(r.out, "emit", "--help");
  expect_contains(r.out, "eval", "--help");
  run_free(&r);
  r = RUN("functions");
  expect_status(&r, 0, "functions");
  expect_contains(r.out, "leaky_relu", "functions");
  expect_contains(r.out, "gelu_tanh", "functions");
  run_free(&r);

  /* Usage errors: exit 2, a message on stderr, nothing on stdout. */
  const char *const *bad[] = {
      (const char *const[]){"emit", "--bogus", "x", NULL},
      (const char *const[]){"eval", "--bogus", "x", "--in", "x=1", NULL},
      (const char *const[]){"emit", NULL},
      (const char *const[]){"eval", "--in", "x=1", NULL},
      (const char *const[]){"emit", "--grad", "--jvp", "x", NULL},
      (const char *const[]){"emit", "--backend", "vulkan", "x", NULL},
      (const char *const[]){"emit", "--dtype", "i32", "x", NULL},
      (const char *const[]){"emit", "x", "y", NULL},
      (const char *const[]){"emit", "--in", NULL},
      (const char *const[]){"emit", "--in", "1x", "x", NULL},
      (const char *const[]){"eval", "x", "--in", "x=1,abc", NULL},
      (const char *const[]){"eval", "x", "--in", "x=", NULL},
      (const char *const[]){"eval", "x", "--in", "x", NULL},
      (const char *const[]){"eval", "x", "--in", "x[2,2]=1,2,3", NULL},
      (const char *const[]){"eval", "x", "--in", "x[0]=1", NULL},
      (const char *const[]){"eval", "x", "--in", "x=1", "--in", "x=2", NULL},
      (const char *const[]){"eval", "x * a", "--in", "x=1", "--param", "a", NULL},
      (const char *const[]){"eval", "x * a", "--in", "x=1", "--param", "a=z", NULL},
      (const char *const[]){"eval", "x", "--in", "x=1", "--device", "-1", NULL},
      (const char *const[]){"bogus", NULL},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    r = run_cli_argv(bad[i]);
    char what[160] = "zmlx";
    for (const char *const *a = bad[i]; *a; a++)
      snprintf(what + strlen(what), sizeof what - strlen(what), " %s", *a);
    expect_status(&r, 2, what);
    if (!r.err[0]) fail_msg("%s: no message on stderr", what);
    if (r.out[0]) fail_msg("%s: unexpected stdout:\n%s", what, r.out);
    run_free(&r);
  }
}

static void test_emit_backends(void **state) {
  (void)state;
  if (!cli_built()) skip();
  cli_run r = RUN("emit", "--backend", "metal", "x * sigmoid(x) * y");
  expect_status(&r, 0, "emit metal");
  expect_contains(r.out, "[[kernel]]", "emit metal");
  run_free(&r);
  r = RUN("emit", "--backend", "cuda", "x * sigmoid(x) * y");
  expect_status(&r, 0, "emit cuda");
  expect_contains(r.out, "__global__", "emit cuda");
  /* Deterministic: the same command prints the same bytes. */
  cli_run again = RUN("emit", "--backend=cuda", "x * sigmoid(x) * y");
  expect_status(&again, 0, "emit cuda again");
  assert_string_equal(r.out, again.out);
  run_free(&again);
  /* Inputs declared explicitly in the inferred order: the same kernel. */
  again = RUN("emit", "--backend", "cuda", "--in", "x,y", "x * sigmoid(x) * y");
  expect_status(&again, 0, "emit --in x,y");
  assert_string_equal(r.out, again.out);
  run_free(&again);
  /* Another input order is another kernel. */
  again = RUN("emit", "--backend", "cuda", "--in", "y", "--in", "x", "x * sigmoid(x) * y");
  expect_status(&again, 0, "emit --in y --in x");
  assert_true(strcmp(r.out, again.out) != 0);
  run_free(&again);
  run_free(&r);

  r = RUN("emit", "--backend", "opencl", "--dtype", "bf16", "x * y");
  expect_status(&r, 0, "emit opencl bf16");
  expect_contains(r.out, "__kernel", "emit opencl");
  run_free(&r);

  /* The three directions are different kernels. */
  cli_run fwd = RUN("emit", "--param", "alpha", "leaky_relu(x, alpha) * y");
  cli_run vjp = RUN("emit", "--grad", "--param", "alpha", "leaky_relu(x, alpha) * y");
  cli_run jvp = RUN("emit", "--jvp", "--param", "alpha=0.2", "leaky_relu(x, alpha) * y");
  expect_status(&fwd, 0, "emit forward");
  expect_status(&vjp, 0, "emit --grad");
  expect_status(&jvp, 0, "emit --jvp");
  assert_true(strcmp(fwd.out, vjp.out) != 0);
  assert_true(strcmp(fwd.out, jvp.out) != 0);
  assert_true(strcmp(vjp.out, jvp.out) != 0);
  run_free(&fwd);
  run_free(&vjp);
  run_free(&jvp);

  /* With --in given, an undeclared name is an error. */
  r = RUN("emit", "--in", "a", "a * b");
  expect_status(&r, 1, "emit --in a 'a * b'");
  expect_contains(r.err, "unknown identifier 'b'", "emit --in a 'a * b'");
  run_free(&r);
  /* An expression that starts with '-' after "--". */
  r = RUN("emit", "--", "-x");
  expect_status(&r, 0, "emit -- -x");
  run_free(&r);
}

/* Line and caret of a parse error: the caret is under `col` of the source
 * line printed above it (both indented by two spaces). */
static void expect_caret(const cli_run *r, int line, int col, const char *src_line) {
  char where[64];
  snprintf(where, sizeof where, "line %d, column %d", line, col);
  expect_contains(r->err, where, "parse error location");
  char want_src[256];
  snprintf(want_src, sizeof want_src, "\n  %s\n", src_line);
  const char *s = strstr(r->err, want_src);
  if (!s) fail_msg("no source line '%s' in:\n%s", src_line, r->err);
  const char *caret_line = s + strlen(want_src);
  const char *caret = strchr(caret_line, '^');
  if (!caret) fail_msg("no caret in:\n%s", r->err);
  int caret_col = (int)(caret - caret_line) - 2 + 1;
  if (caret_col != col) fail_msg("caret at column %d, want %d:\n%s", caret_col, col, r->err);
  for (const char *p = caret_line; p < caret; p++) assert_int_equal(*p, ' ');
}

static void test_parse_errors(void **state) {
  (void)state;
  if (!cli_built()) skip();
  /* ')' where an operand should be: column 10. */
  cli_run r = RUN("eval", "x * (y + )", "--in", "x=1", "--in", "y=2");
  expect_status(&r, 1, "eval parse error");
  expect_caret(&r, 1, 10, "x * (y + )");
  assert_string_equal(r.out, "");
  run_free(&r);
  r = RUN("emit", "x * (y + )");
  expect_status(&r, 1, "emit parse error");
  expect_caret(&r, 1, 10, "x * (y + )");
  assert_string_equal(r.out, "");
  run_free(&r);
  /* Second line of a program. */
  r = RUN("emit", "s = sigmoid(x)\nx * s $ y");
  expect_status(&r, 1, "emit parse error on line 2");
  expect_caret(&r, 2, 7, "x * s $ y");
  run_free(&r);
  /* A name that is not an input. */
  r = RUN("eval", "x + q", "--in", "x=1");
  expect_status(&r, 1, "eval unknown identifier");
  expect_caret(&r, 1, 5, "x + q");
  expect_contains(r.err, "unknown identifier 'q'", "eval unknown identifier");
  run_free(&r);
  /* Unknown function. */
  r = RUN("emit", "x * system(x)");
  expect_status(&r, 1, "emit unknown function");
  expect_contains(r.err, "unknown function 'system'", "emit unknown function");
  run_free(&r);

  /* Injection: rejected at the ')' (column 2); nothing reaches a kernel. */
  const char *evil = "x); } __kernel void evil(";
  r = RUN("eval", evil, "--in", "x=1");
  expect_status(&r, 1, "eval injection");
  expect_caret(&r, 1, 2, evil);
  assert_string_equal(r.out, "");
  run_free(&r);
  const char *const backends[] = {"cuda", "opencl", "metal"};
  for (int b = 0; b < 3; b++) {
    r = RUN("emit", "--backend", backends[b], evil);
    expect_status(&r, 1, "emit injection");
    assert_null(strstr(r.out, "evil"));
    run_free(&r);
    r = RUN("emit", "--backend", backends[b], "x /* */");
    expect_status(&r, 1, "emit comment");
    assert_null(strstr(r.out, "/*"));
    run_free(&r);
  }
}

static void test_eval_silu_mul(void **state) {
  (void)state;
  if (!cli_built()) skip();
  const char *backends[4];
  int nb = eval_backends(backends, 4);
  if (nb == 0) skip();
  const double x[] = {-2.0, -0.5, 0.0, 0.75, 3.0};
  const double y[] = {1.5, -2.0, 4.0, 0.5, -1.0};
  double out[5], gx[5], gy[5];
  for (int i = 0; i < 5; i++) {
    double s = sigmoid(x[i]);
    out[i] = x[i] * s * y[i];
    gx[i] = y[i] * (s + x[i] * s * (1.0 - s));
    gy[i] = x[i] * s;
  }
  for (int b = 0; b < nb; b++) {
    cli_run r = RUN("eval", "--backend", backends[b], "--grad", "x * sigmoid(x) * y", "--in",
                    "x=-2,-0.5,0,0.75,3", "--in", "y=1.5,-2,4,0.5,-1");
    expect_status(&r, 0, "eval --grad");
    expect_contains(r.out, "{\"out\": [", "eval JSON");
    expect_values(r.out, "out", out, 5, 1e-5);
    expect_values(r.out, "x", gx, 5, 1e-5);
    expect_values(r.out, "y", gy, 5, 1e-5);
    run_free(&r);
    /* Without --grad: no "grad" key. */
    r = RUN("eval", "--backend", backends[b], "x * sigmoid(x) * y", "--in", "x=-2,-0.5,0,0.75,3",
            "--in", "y=1.5,-2,4,0.5,-1");
    expect_status(&r, 0, "eval");
    expect_values(r.out, "out", out, 5, 1e-5);
    assert_null(strstr(r.out, "grad"));
    run_free(&r);
    /* bf16 storage: the same values to bf16 precision. */
    r = RUN("eval", "--backend", backends[b], "--dtype", "bf16", "--grad", "x * sigmoid(x) * y",
            "--in", "x=-2,-0.5,0,0.75,3", "--in", "y=1.5,-2,4,0.5,-1");
    expect_status(&r, 0, "eval bf16");
    expect_values(r.out, "out", out, 5, 2e-2);
    expect_values(r.out, "x", gx, 5, 2e-2);
    expect_values(r.out, "y", gy, 5, 2e-2);
    run_free(&r);
  }
}

/* `zmlx check --paths` names the kernel variant each case launched: the
 * softmax cases reach its three row paths (16-byte accesses held in
 * registers, 16-byte streaming, scalar streaming), each under a row. */
static void test_check_paths(void **state) {
  (void)state;
  if (!cli_built()) skip();
  const char *backends[4];
  if (eval_backends(backends, 4) == 0) skip();
  cli_run r = RUN("check", "--backend", backends[0], "--quick", "--op", "softmax", "--dtype", "f32",
                  "--seed", "1", "--paths");
  expect_status(&r, 0, "check --paths");
  expect_contains(r.out, "pass\n    launched ", "a variant under a row");
  expect_contains(r.out, "zmlx_softmax_fwd[MODE=0 MASK=0 CAUSAL=0 VEC=4 XDT=0 NV=4", "register path");
  expect_contains(r.out, "zmlx_softmax_fwd[MODE=0 MASK=0 CAUSAL=0 VEC=4 XDT=0 NV=0", "vector stream");
  expect_contains(r.out, "zmlx_softmax_fwd[MODE=0 MASK=0 CAUSAL=0 VEC=0 XDT=0 NV=0", "scalar stream");
  run_free(&r);
  /* --json: one object per row, then the tally */
  r = RUN("check", "--backend", backends[0], "--quick", "--op", "dropout", "--dtype", "f32",
          "--seed", "1", "--json");
  expect_status(&r, 0, "check --json");
  int rows = 0;
  for (const char *line = r.out; *line; line = strchr(line, '\n') + 1) {
    if (line[0] != '{') fail_msg("check --json: a line that is not an object:\n%s", line);
    rows++;
    if (!strchr(line, '\n')) break;
  }
  if (rows < 5) fail_msg("check --json: %d lines", rows);
  expect_contains(r.out, "\"op\": \"dropout\", \"backend\": ", "a row object");
  expect_contains(r.out, "\"pass\": true", "a passing row");
  expect_contains(r.out, "{\"passed\": ", "the tally object");
  run_free(&r);
  /* without --paths: rows only */
  r = RUN("check", "--backend", backends[0], "--quick", "--op", "softmax", "--dtype", "f32",
          "--seed", "1");
  expect_status(&r, 0, "check");
  assert_null(strstr(r.out, "launched"));
  run_free(&r);
}

static void test_eval_broadcast_grad(void **state) {
  (void)state;
  if (!cli_built()) skip();
  const char *backends[4];
  int nb = eval_backends(backends, 4);
  if (nb == 0) skip();
  for (int b = 0; b < nb; b++) {
    /* x of 3 values, y of 1: dy = sum over the broadcast axis. */
    cli_run r = RUN("eval", "--backend", backends[b], "--grad", "x * y + y * y", "--in",
                    "x=1,2,4", "--in", "y=0.5");
    expect_status(&r, 0, "eval broadcast");
    const double out[] = {1 * 0.5 + 0.25, 2 * 0.5 + 0.25, 4 * 0.5 + 0.25};
    const double gx[] = {0.5, 0.5, 0.5};
    const double gy[] = {(1 + 1.0) + (2 + 1.0) + (4 + 1.0)}; /* sum of x + 2y */
    expect_values(r.out, "out", out, 3, 1e-6);
    expect_values(r.out, "x", gx, 3, 1e-6);
    expect_values(r.out, "y", gy, 1, 1e-6);
    expect_contains(r.out, "\"y\": [", "grad of y keeps y's shape [1]");
    run_free(&r);
    /* Shapes [2,3] and [3]: a nested result and per-column sums. */
    r = RUN("eval", "--backend", backends[b], "--grad", "x * y", "--in", "x[2,3]=1,2,3,4,5,6",
            "--in", "y=10,20,30");
    expect_status(&r, 0, "eval [2,3] x [3]");
    expect_contains(r.out, "{\"out\": [[10, 40, 90], [40, 100, 180]]", "nested output");
    const double gx2[] = {10, 20, 30, 10, 20, 30}, gy2[] = {5, 7, 9};
    expect_values(r.out, "x", gx2, 6, 1e-6);
    expect_values(r.out, "y", gy2, 3, 1e-6);
    run_free(&r);
    /* One value fills a given shape. */
    r = RUN("eval", "--backend", backends[b], "x + 1", "--in", "x[2,2]=3");
    expect_status(&r, 0, "eval fill");
    expect_contains(r.out, "{\"out\": [[4, 4], [4, 4]]}", "fill");
    run_free(&r);
    /* Shapes that do not broadcast: a user error. */
    r = RUN("eval", "--backend", backends[b], "x * y", "--in", "x=1,2,3", "--in", "y=1,2");
    expect_status(&r, 1, "eval shapes [3] and [2]");
    assert_string_equal(r.out, "");
    run_free(&r);
  }
}

static void test_eval_params(void **state) {
  (void)state;
  if (!cli_built()) skip();
  const char *backends[4];
  int nb = eval_backends(backends, 4);
  if (nb == 0) skip();
  for (int b = 0; b < nb; b++) {
    cli_run r = RUN("eval", "--backend", backends[b], "--grad", "leaky_relu(x, alpha)", "--in",
                    "x=-2,3", "--param", "alpha=0.125");
    expect_status(&r, 0, "eval leaky_relu alpha=0.125");
    const double out[] = {-0.25, 3}, gx[] = {0.125, 1};
    expect_values(r.out, "out", out, 2, 1e-6);
    expect_values(r.out, "x", gx, 2, 1e-6);
    run_free(&r);
    /* Another value: the same kernel, another result. */
    r = RUN("eval", "--backend", backends[b], "leaky_relu(x, alpha) + beta", "--in", "x=-2,3",
            "--param", "alpha=0.5", "--param=beta=1");
    expect_status(&r, 0, "eval leaky_relu alpha=0.5");
    const double out2[] = {0.0, 4};
    expect_values(r.out, "out", out2, 2, 1e-6);
    run_free(&r);
    /* A parameter that is not declared is an unknown identifier. */
    r = RUN("eval", "--backend", backends[b], "leaky_relu(x, alpha)", "--in", "x=1");
    expect_status(&r, 1, "eval undeclared param");
    expect_contains(r.err, "unknown identifier 'alpha'", "eval undeclared param");
    run_free(&r);
    /* Special values print as Python's json writes them. */
    r = RUN("eval", "--backend", backends[b], "x / y", "--in", "x=1,-1,0", "--in", "y=0");
    expect_status(&r, 0, "eval x / 0");
    expect_contains(r.out, "[Infinity, -Infinity, NaN]", "eval x / 0");
    run_free(&r);
  }
}

/* emit's conveniences: --body drops the prelude, EXPR from a file, and the
 * default backend is the one eval runs on. */
static void test_emit_body_file_default(void **state) {
  (void)state;
  if (!cli_built()) skip();
  cli_run full = RUN("emit", "--backend", "cuda", "x * sigmoid(x)");
  cli_run body = RUN("emit", "--backend", "cuda", "--body", "x * sigmoid(x)");
  expect_status(&full, 0, "emit");
  expect_status(&body, 0, "emit --body");
  expect_contains(body.out, "__global__", "emit --body");
  /* the prelude's banner and its helpers are gone, the kernels stay */
  expect_contains(full.out, "zmlx CUDA prelude", "emit");
  if (strstr(body.out, "zmlx CUDA prelude") || strstr(body.out, "ZMLX_FN float zmlx_sigmoid(float"))
    fail_msg("emit --body still prints the prelude:\n%.2000s", body.out);
  if (strlen(body.out) * 3 > strlen(full.out))
    fail_msg("emit --body printed %zu of %zu bytes", strlen(body.out), strlen(full.out));

  char path[] = "/tmp/zmlx-test-expr-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  const char *text = "s = sigmoid(x)\nx * s\n";
  assert_int_equal(write(fd, text, strlen(text)), (int)strlen(text));
  close(fd);
  cli_run from_file = RUN("emit", "--backend", "cuda", "--body", "-f", path);
  expect_status(&from_file, 0, "emit -f FILE");
  expect_contains(from_file.out, "__global__", "emit -f FILE");
  cli_run ev = RUN("eval", "--file", path, "--in", "x=0,2");
  expect_status(&ev, 0, "eval --file FILE");
  expect_contains(ev.out, "[0, 1.76159", "eval --file FILE"); /* 2 * sigmoid(2) */
  cli_run both = RUN("emit", "-f", path, "x");
  expect_status(&both, 2, "emit -f FILE EXPR");
  unlink(path);
  cli_run missing = RUN("emit", "-f", "/nonexistent/zmlx-expr");
  expect_status(&missing, 1, "emit -f missing");
  expect_contains(missing.err, "cannot open", "emit -f missing");

  /* the default backend: what eval (and zmlx_default_device) picks here */
  zmlx_device *dev = NULL;
  if (zmlx_default_device(&dev) == ZMLX_OK) {
    const char *name = zmlx_backend_name(zmlx_device_backend(dev));
    cli_run dflt = RUN("emit", "x * 2");
    cli_run named = RUN("emit", "--backend", name, "x * 2");
    expect_status(&dflt, 0, "emit (auto)");
    assert_string_equal(dflt.out, named.out);
  }
  zmlx_clear_error();
}

/* Out of host memory is a failure (1), not a bad command line (2). The
 * child gets a 16 GiB address-space limit so that malloc of 4 TiB fails
 * whatever the machine's overcommit policy (with overcommit on, it would
 * succeed and the fill be killed); under ASan its allocator refuses sizes
 * over 1 TiB itself (allocator_may_return_null=1) and needs its large
 * shadow mappings, so no limit is set there. */
static void test_eval_out_of_memory(void **state) {
  (void)state;
  if (!cli_built()) skip();
  struct rlimit was;
  assert_int_equal(getrlimit(RLIMIT_AS, &was), 0);
  if (!ZT_SANITIZED) {
    /* 16 GiB above what this process maps already: a process that loaded
     * the CUDA driver maps tens of GiB, and a cap below that makes the
     * spawn itself fail (ENOMEM) instead of the child's 4 TiB allocation */
    struct rlimit lim = was;
    unsigned long long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
      if (fscanf(f, "%llu", &pages) != 1) pages = 0;
      fclose(f);
    }
    rlim_t cap = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + ((rlim_t)16 << 30);
    if (lim.rlim_cur == RLIM_INFINITY || lim.rlim_cur > cap) lim.rlim_cur = cap;
    assert_int_equal(setrlimit(RLIMIT_AS, &lim), 0);
  }
  cli_run r = RUN("eval", "x * 2", "--in", "x[1048576,1048576]=1"); /* 4 TiB of f32 */
  assert_int_equal(setrlimit(RLIMIT_AS, &was), 0);
  expect_status(&r, 1, "zmlx eval with a 2^40-element input");
  expect_contains(r.err, "out of memory", "zmlx eval with a 2^40-element input");
}

/* An unusable cache directory is said, and the disk cache reported off
 * (it used to read "disk on" while every process compiled again). */
static void test_unusable_cache_dir(void **state) {
  (void)state;
  if (!cli_built()) skip();
  const char *was = getenv("ZMLX_CACHE_DIR");
  char saved[4096] = "";
  if (was) snprintf(saved, sizeof saved, "%s", was);
  setenv("ZMLX_CACHE_DIR", "/proc/zmlx-cache-test/kernels", 1);
  cli_run stats = RUN("cache", "stats");
  cli_run info = RUN("info");
  if (was) setenv("ZMLX_CACHE_DIR", saved, 1);
  else unsetenv("ZMLX_CACHE_DIR");
  expect_status(&stats, 0, "zmlx cache stats");
  expect_contains(stats.out, "disk       off: cannot create the cache directory "
                  "/proc/zmlx-cache-test/kernels", "zmlx cache stats");
  expect_status(&info, 0, "zmlx info");
  expect_contains(info.out, "disk       off: cannot create the cache directory", "zmlx info");
}

/* `zmlx demo` end to end at the tiny config: it trains (the validation loss
 * falls), writes its checkpoint and loss plot, samples the requested bytes
 * and prints its JSON summary; bad options are usage errors, a missing
 * corpus a failure that says so. */
static void test_demo_tiny(void **state) {
  (void)state;
  if (!cli_built()) skip();
  const char *backends[4];
  if (eval_backends(backends, 4) == 0) skip();
  char out[128], file[192];
  snprintf(out, sizeof out, "/tmp/zmlx_test_cli_demo_%d", (int)getpid());
  cli_run r = RUN("demo", "--backend", backends[0], "--config", "tiny", "--steps", "20", "--json",
                  "--seed", "3", "--out", out);
  expect_status(&r, 0, "demo --config tiny");
  const char *files[2] = {"model.safetensors", "loss.png"};
  /* a build without cairo draws no plot and says so in the summary */
  const int n_files = strstr(r.out, "\"plot\": \"\"") ? 1 : 2;
  for (int i = 0; i < n_files; i++) {
    snprintf(file, sizeof file, "%s/%s", out, files[i]);
    struct stat sb;
    if (stat(file, &sb) != 0 || sb.st_size < 100) fail_msg("demo wrote no %s", file);
    remove(file);
  }
  rmdir(out);
  const char *v = strstr(r.out, "\"val_loss\": [");
  if (!v) fail_msg("no val_loss in:\n%s", r.out);
  double first = 0, last = 0;
  assert_int_equal(sscanf(v, "\"val_loss\": [%lf, %lf]", &first, &last), 2);
  if (!(first > 5.0 && last < first - 0.5))
    fail_msg("validation loss %g -> %g: not falling\n%s", first, last, r.err);
  expect_contains(r.out, "\"sample\": \"", "the generated text");
  expect_contains(r.err, "step 20/20", "progress lines when stderr is not a TTY");
  run_free(&r);
  r = RUN("demo", "--config", "nope");
  expect_status(&r, 2, "demo --config nope");
  expect_contains(r.err, "unknown config 'nope'", "the bad config named");
  run_free(&r);
  r = RUN("demo", "--backend", backends[0], "--config", "tiny", "--corpus", "/nonexistent-zmlx");
  expect_status(&r, 1, "demo --corpus missing");
  expect_contains(r.err, "/nonexistent-zmlx", "the corpus named");
  run_free(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_help_and_usage_errors, free_pending),
      cmocka_unit_test_teardown(test_emit_backends, free_pending),
      cmocka_unit_test_teardown(test_parse_errors, free_pending),
      cmocka_unit_test_teardown(test_eval_silu_mul, free_pending),
      cmocka_unit_test_teardown(test_eval_broadcast_grad, free_pending),
      cmocka_unit_test_teardown(test_eval_params, free_pending),
      cmocka_unit_test_teardown(test_unusable_cache_dir, free_pending),
      cmocka_unit_test_teardown(test_eval_out_of_memory, free_pending),
      cmocka_unit_test_teardown(test_emit_body_file_default, free_pending),
      cmocka_unit_test_teardown(test_check_paths, free_pending),
      cmocka_unit_test_teardown(test_demo_tiny, free_pending),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
