/* What the C benchmark programs share. */
#ifndef ZMLX_BENCH_UTIL_H
#define ZMLX_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>

#include "zmlx.h"

/* A benchmark stops at the first failure, with zmlx's message. */
#define CHECK(call)                                                                       \
  do {                                                                                    \
    zmlx_status st_ = (call);                                                             \
    if (st_ != ZMLX_OK) {                                                                 \
      fprintf(stderr, "%s: %s\n%s\n", #call, zmlx_status_string(st_), zmlx_last_error()); \
      exit(1);                                                                            \
    }                                                                                     \
  } while (0)

#endif
