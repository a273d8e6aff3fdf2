/*
 * The `zmlx` command-line tool: command tables and shared helpers.
 *
 * Every command is one row {name, summary, usage, handler}; a command with
 * subcommands (`cache`) points at a nested group instead of a handler. The
 * dispatcher answers -h/--help for every row and `help <command>` for every
 * group, so a handler only parses its own arguments. Adding a command means
 * writing its handler (tools/cmd_<name>.c) and adding a row to a table.
 */
#ifndef ZMLX_TOOLS_CLI_H
#define ZMLX_TOOLS_CLI_H

#include <stddef.h>
#include <stdio.h>

#include "zmlx.h"

/* Exit statuses. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

typedef struct cli_command cli_command;
typedef struct cli_group cli_group;

/* argv[0] is the command's own name; argc >= 1. */
typedef int (*cli_handler)(const cli_command *self, int argc, char **argv);

struct cli_command {
  const char *name;
  const char *summary;    /* one line, shown in the group's command list */
  const char *usage;      /* full --help text (leaf commands) */
  cli_handler handler;    /* leaf commands */
  const cli_group *group; /* commands with subcommands: instead of handler */
};

struct cli_group {
  const char *path;       /* "zmlx", "zmlx cache": how the user types it */
  const char *about;      /* paragraph under the usage line */
  const char *footer;     /* options or notes after the command list (may be NULL) */
  const cli_command *commands;
  int n_commands;
};

/* Run argv[1] of `group` (argv[0] is the group's own name). */
int cli_dispatch(const cli_group *group, int argc, char **argv);
void cli_print_group_usage(const cli_group *group, FILE *out);

/* "zmlx cache clear": how the user typed the running command, for messages. */
const char *cli_path(void);

/* For handlers that take no arguments: returns 1 if argv has none, else
 * prints an error and the usage to stderr and returns 0. */
int cli_expect_no_args(const cli_command *self, int argc, char **argv);

/* s as a JSON string literal (quotes, escapes) on out. */
void cli_json_string(FILE *out, const char *s);

/* "1.5 GiB", "12.0 KiB", "17 bytes". */
const char *cli_format_bytes(double bytes, char *buf, size_t cap);

/* Command groups and handlers, one file each. */
extern const cli_group zmlx_cache_group; /* tools/cmd_cache.c */
int zmlx_cmd_info(const cli_command *self, int argc, char **argv); /* tools/cmd_info.c */
int zmlx_cmd_emit(const cli_command *self, int argc, char **argv); /* tools/cmd_emit.c */
int zmlx_cmd_eval(const cli_command *self, int argc, char **argv); /* tools/cmd_eval.c */
int zmlx_cmd_functions(const cli_command *self, int argc, char **argv); /* tools/cmd_eval.c */
int zmlx_cmd_check(const cli_command *self, int argc, char **argv); /* tools/cmd_check.c */
extern const char zmlx_check_usage[];
int zmlx_cmd_bench(const cli_command *self, int argc, char **argv); /* tools/cmd_bench.c */
extern const char zmlx_bench_usage[];
int zmlx_cmd_demo(const cli_command *self, int argc, char **argv); /* tools/cmd_demo.c */
extern const char zmlx_demo_usage[];
extern const char zmlx_emit_usage[];
extern const char zmlx_eval_usage[];
extern const char zmlx_functions_usage[];

/* ------------------------------------------------ expression commands
 * Helpers shared by `emit` and `eval` (defined in tools/cmd_emit.c). */

#define CLI_EXPR_MAX_NAMES 64 /* inputs, and parameters, per expression */
#define CLI_NAME_CAP 129      /* ZMLX_EXPR_MAX_IDENT + 1 */

/* Input or parameter names; ptr[i] points at name[i] (for the C API). */
typedef struct cli_names {
  int n;
  char name[CLI_EXPR_MAX_NAMES][CLI_NAME_CAP];
  const char *ptr[CLI_EXPR_MAX_NAMES];
} cli_names;

/* "<path>: <message>" and a hint to --help on stderr; returns CLI_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Option `name` at argv[*i], as "--name VALUE" or "--name=VALUE": 0 when
 * argv[*i] is not that option; 1 with *value set (*i moved past a separate
 * value); -1 after reporting a missing value. */
int cli_option(int argc, char **argv, int *i, const char *name, const char **value);
/* f32, f16 or bf16 (and their long names); else reports a usage error, 0. */
int cli_parse_float_dtype(const char *name, zmlx_dtype *out);
/* 1 if s[0..n) is an identifier the expression language accepts. */
int cli_valid_name(const char *s, size_t n);
/* Append a name (reports bad, duplicate or too many names; returns 0). */
int cli_add_name(cli_names *names, const char *s, size_t n, const char *what);
/* Print the library's last error for status `st` on stderr; a parse error
 * shows as "parse error at line L, column C: ..." then the source line and
 * a caret under the column. Returns CLI_FAIL. */
int cli_report(zmlx_status st, const char *doing);
/* Check that `expr` parses with `inputs` and `params`. With `infer`, every
 * unknown identifier is appended to `inputs` (in order of first use) and
 * the parse is retried. Reports the error and returns CLI_FAIL otherwise. */
int cli_parse_expr(const char *expr, cli_names *inputs, int infer, const cli_names *params);
/* EXPR from where the command line says: `-f FILE` / `--file FILE` (FILE
 * "-" is standard input), or the positional EXPR "-" (standard input), else
 * the positional text itself. *text gets the expression; *owned what to
 * free (NULL when it is argv's). Reports and returns CLI_USAGE / CLI_FAIL. */
int cli_expr_text(const char *positional, const char *file, const char **text, char **owned);

#endif /* ZMLX_TOOLS_CLI_H */
