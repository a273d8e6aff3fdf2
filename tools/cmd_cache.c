/* `zmlx cache dir|stats|clear`: the on-disk compiled-kernel cache. */
#include "cli.h"

#include <inttypes.h>

#include "zmlx.h"

static int cache_dir(const cli_command *self, int argc, char **argv) {
  if (!cli_expect_no_args(self, argc, argv)) return CLI_USAGE;
  const char *dir = zmlx_cache_dir();
  if (!*dir) {
    fprintf(stderr, "%s: no cache directory: set ZMLX_CACHE_DIR or HOME\n", cli_path());
    return CLI_FAIL;
  }
  printf("%s\n", dir);
  return CLI_OK;
}

static int cache_stats(const cli_command *self, int argc, char **argv) {
  if (!cli_expect_no_args(self, argc, argv)) return CLI_USAGE;
  int64_t entries = 0, bytes = 0;
  if (zmlx_cache_disk_usage(&entries, &bytes) != ZMLX_OK) {
    fprintf(stderr, "%s: %s\n", cli_path(), zmlx_last_error());
    return CLI_FAIL;
  }
  char size[32];
  printf("directory  %s\n", zmlx_cache_dir());
  const char *problem = zmlx_cache_disk_problem();
  printf("disk       %s%s%s\n", zmlx_cache_disk_enabled() ? "on" : "off", problem ? ": " : "",
         problem ? problem : "");
  printf("entries    %" PRId64 "\n", entries);
  printf("size       %s", cli_format_bytes((double)bytes, size, sizeof size));
  printf(bytes >= 1024 ? " (%" PRId64 " bytes)\n" : "\n", bytes);
  /* Hits and misses are counted inside the process that launches kernels;
   * this process has launched none, so printing its counters would mislead. */
  printf("\nHit, miss and compile-time counters are kept per process: read them with\n"
         "zmlx_cache_get_stats() in the program that runs the kernels.\n");
  return CLI_OK;
}

static int cache_clear(const cli_command *self, int argc, char **argv) {
  if (!cli_expect_no_args(self, argc, argv)) return CLI_USAGE;
  int64_t removed = 0;
  if (zmlx_cache_clear_disk(&removed) != ZMLX_OK) {
    fprintf(stderr, "%s: %s\n", cli_path(), zmlx_last_error());
    return CLI_FAIL;
  }
  printf("removed %" PRId64 " entr%s from %s\n", removed, removed == 1 ? "y" : "ies",
         zmlx_cache_dir());
  return CLI_OK;
}

static const cli_command cache_commands[] = {
    {"dir", "print the cache directory",
     "usage: zmlx cache dir\n\n"
     "Print the directory that holds compiled kernels: $ZMLX_CACHE_DIR, else\n"
     "$XDG_CACHE_HOME/zmlx, else ~/.cache/zmlx.\n",
     cache_dir, NULL},
    {"stats", "show how many compiled kernels are on disk and their size",
     "usage: zmlx cache stats\n\n"
     "Print the cache directory, whether disk caching is on, and the number and\n"
     "total size of compiled kernels stored there. Hit and miss counters exist\n"
     "only inside the process that runs kernels (zmlx_cache_get_stats).\n",
     cache_stats, NULL},
    {"clear", "remove every compiled kernel from the disk cache",
     "usage: zmlx cache clear\n\n"
     "Delete the compiled kernels in the cache directory (files named\n"
     "<64 hex digits>.bin, and temporary files left by interrupted writes).\n"
     "Nothing else in the directory is touched. Kernels recompile on next use.\n",
     cache_clear, NULL},
};

const cli_group zmlx_cache_group = {
    "zmlx cache",
    "Compiled kernels are kept on disk so that later processes skip compilation.\n"
    "Set ZMLX_CACHE=0 to turn disk caching off, ZMLX_CACHE_DIR to move it.",
    NULL,
    cache_commands,
    (int)(sizeof cache_commands / sizeof cache_commands[0]),
};
