/*
 * `zmlx` — the command-line front end of libzmlx.
 *
 * This file holds the top-level command table, the generic dispatcher and
 * small helpers shared by the commands; each command lives in its own
 * tools/cmd_<name>.c.
 */
#include "cli.h"

#include <stdarg.h>
#include <string.h>

#include "zmlx.h"

/* ------------------------------------------------------------- dispatch */

static int is_help_flag(const char *arg) {
  return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0;
}

static const cli_command *find_command(const cli_group *group, const char *name) {
  for (int i = 0; i < group->n_commands; i++)
    if (strcmp(group->commands[i].name, name) == 0) return &group->commands[i];
  return NULL;
}

void cli_print_group_usage(const cli_group *group, FILE *out) {
  fprintf(out, "usage: %s <command> [options]\n\n%s\n\ncommands:\n", group->path, group->about);
  int width = 4; /* "help" */
  for (int i = 0; i < group->n_commands; i++) {
    int n = (int)strlen(group->commands[i].name);
    if (n > width) width = n;
  }
  for (int i = 0; i < group->n_commands; i++)
    fprintf(out, "  %-*s  %s\n", width, group->commands[i].name, group->commands[i].summary);
  fprintf(out, "  %-*s  %s\n", width, "help", "show help for a command");
  if (group->footer) fprintf(out, "\n%s", group->footer);
  fprintf(out, "\nRun '%s <command> --help' for details on one command.\n", group->path);
}

static void print_command_usage(const cli_command *cmd, FILE *out) {
  if (cmd->group)
    cli_print_group_usage(cmd->group, out);
  else
    fputs(cmd->usage, out);
}

static int usage_error(const cli_group *group, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int usage_error(const cli_group *group, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", group->path);
  vfprintf(stderr, fmt, ap);
  fputs("\n\n", stderr);
  va_end(ap);
  cli_print_group_usage(group, stderr);
  return CLI_USAGE;
}

/* `help` and `help <command>` for any group. */
static int group_help(const cli_group *group, int argc, char **argv) {
  if (argc < 3) {
    cli_print_group_usage(group, stdout);
    return CLI_OK;
  }
  const cli_command *cmd = find_command(group, argv[2]);
  if (!cmd) return usage_error(group, "no help for unknown command '%s'", argv[2]);
  print_command_usage(cmd, stdout);
  return CLI_OK;
}

static char current_path[256] = "zmlx";

const char *cli_path(void) { return current_path; }

/* A leaf command's -h/--help anywhere before "--". */
static int wants_help(int argc, char **argv) {
  for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
    if (is_help_flag(argv[i])) return 1;
  return 0;
}

int cli_dispatch(const cli_group *group, int argc, char **argv) {
  if (argc < 2) return usage_error(group, "missing command");
  const char *name = argv[1];
  if (is_help_flag(name)) {
    cli_print_group_usage(group, stdout);
    return CLI_OK;
  }
  if (strcmp(name, "help") == 0) return group_help(group, argc, argv);
  const cli_command *cmd = find_command(group, name);
  if (!cmd)
    return usage_error(group, name[0] == '-' ? "unknown option '%s'" : "unknown command '%s'",
                       name);
  if (cmd->group) return cli_dispatch(cmd->group, argc - 1, argv + 1);
  snprintf(current_path, sizeof current_path, "%s %s", group->path, cmd->name);
  if (wants_help(argc - 1, argv + 1)) {
    fputs(cmd->usage, stdout);
    return CLI_OK;
  }
  return cmd->handler(cmd, argc - 1, argv + 1);
}

/* -------------------------------------------------------------- helpers */

int cli_expect_no_args(const cli_command *self, int argc, char **argv) {
  if (argc <= 1) return 1;
  fprintf(stderr, "%s: unexpected argument '%s'\n\n", cli_path(), argv[1]);
  fputs(self->usage, stderr);
  return 0;
}

void cli_json_string(FILE *out, const char *s) {
  fputc('"', out);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
    else if (c < 32) fprintf(out, "\\u%04x", c);
    else fputc(c, out);
  }
  fputc('"', out);
}

const char *cli_format_bytes(double bytes, char *buf, size_t cap) {
  static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) {
    snprintf(buf, cap, "%.0f byte%s", bytes, bytes == 1 ? "" : "s");
    return buf;
  }
  int u = -1;
  while (bytes >= 1024 && u < 3) {
    bytes /= 1024;
    u++;
  }
  snprintf(buf, cap, "%.1f %s", bytes, units[u]);
  return buf;
}

/* ------------------------------------------------------------- commands */

static void print_version(void) {
  printf("zmlx %s\n", zmlx_version_string());
}

static int cmd_version(const cli_command *self, int argc, char **argv) {
  if (!cli_expect_no_args(self, argc, argv)) return CLI_USAGE;
  print_version();
  return CLI_OK;
}

static const cli_command top_commands[] = {
    {"info", "show the version, backends, devices and cache settings",
     "usage: zmlx info\n\n"
     "Print the library version; for each backend (cuda, opencl, metal) whether it\n"
     "is available and, if not, why; for each device its name, memory, compute\n"
     "capability or OpenCL version, architecture, threadgroup limits and SIMD\n"
     "width; and where compiled kernels are cached on disk.\n",
     zmlx_cmd_info, NULL},
    {"emit", "print the kernel source generated from an expression", zmlx_emit_usage,
     zmlx_cmd_emit, NULL},
    {"eval", "run an expression (and its gradient) on a device, print JSON", zmlx_eval_usage,
     zmlx_cmd_eval, NULL},
    {"functions", "list the functions of the expression language", zmlx_functions_usage,
     zmlx_cmd_functions, NULL},
    {"check", "verify every catalog op against f64 references on each backend",
     zmlx_check_usage, zmlx_cmd_check, NULL},
    {"bench", "time the catalog ops at LLM shapes against the copy bandwidth",
     zmlx_bench_usage, zmlx_cmd_bench, NULL},
    {"demo", "train a small MoE language model on this machine's licence texts, then sample",
     zmlx_demo_usage, zmlx_cmd_demo, NULL},
    {"cache", "inspect or clear the compiled-kernel cache", NULL, NULL, &zmlx_cache_group},
    {"version", "print the version",
     "usage: zmlx version\n       zmlx --version\n\nPrint the version of zmlx.\n", cmd_version,
     NULL},
};

static const cli_group top_group = {
    "zmlx",
    "Write, JIT-compile, cache and launch machine-learning kernels on CUDA and\n"
    "OpenCL devices, and emit them as Metal source.",
    "options:\n"
    "  -h, --help  show this help (also accepted after any command)\n"
    "  --version   print the version\n",
    top_commands,
    (int)(sizeof top_commands / sizeof top_commands[0]),
};

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
    print_version();
    return CLI_OK;
  }
  int rc = cli_dispatch(&top_group, argc, argv);
  /* Release devices probed by `info` (and later commands) before exit. */
  zmlx_shutdown();
  if (fflush(stdout) != 0 && rc == CLI_OK) rc = CLI_FAIL;
  return rc;
}
