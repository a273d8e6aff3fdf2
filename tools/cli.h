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

#include <stdio.h>

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

/* "1.5 GiB", "12.0 KiB", "17 bytes". */
const char *cli_format_bytes(double bytes, char *buf, size_t cap);

/* Command groups and handlers, one file each. */
extern const cli_group zmlx_cache_group; /* tools/cmd_cache.c */
int zmlx_cmd_info(const cli_command *self, int argc, char **argv); /* tools/cmd_info.c */

#endif /* ZMLX_TOOLS_CLI_H */
