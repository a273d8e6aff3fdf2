/* Status names and the thread-local last-error message. */
#include "runtime/internal.h"

#include <stdio.h>
#include <string.h>

#define ZMLX_ERROR_CAP 16384

static _Thread_local char last_error[ZMLX_ERROR_CAP];

const char *zmlx_status_string(zmlx_status s) {
  switch (s) {
    case ZMLX_OK: return "ZMLX_OK";
    case ZMLX_ERR_NULL_ARG: return "ZMLX_ERR_NULL_ARG";
    case ZMLX_ERR_INVALID_ARG: return "ZMLX_ERR_INVALID_ARG";
    case ZMLX_ERR_SHAPE: return "ZMLX_ERR_SHAPE";
    case ZMLX_ERR_DTYPE: return "ZMLX_ERR_DTYPE";
    case ZMLX_ERR_OUT_OF_MEMORY: return "ZMLX_ERR_OUT_OF_MEMORY";
    case ZMLX_ERR_NO_DEVICE: return "ZMLX_ERR_NO_DEVICE";
    case ZMLX_ERR_BACKEND: return "ZMLX_ERR_BACKEND";
    case ZMLX_ERR_COMPILE: return "ZMLX_ERR_COMPILE";
    case ZMLX_ERR_LAUNCH: return "ZMLX_ERR_LAUNCH";
    case ZMLX_ERR_UNSUPPORTED: return "ZMLX_ERR_UNSUPPORTED";
    case ZMLX_ERR_IO: return "ZMLX_ERR_IO";
    case ZMLX_ERR_PARSE: return "ZMLX_ERR_PARSE";
    case ZMLX_ERR_INTERNAL: return "ZMLX_ERR_INTERNAL";
  }
  return "ZMLX_ERR_UNKNOWN";
}

const char *zmlx_last_error(void) { return last_error; }

void zmlx_clear_error(void) { last_error[0] = '\0'; }

zmlx_status zmlxi_fail(zmlx_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return s;
}

zmlx_status zmlxi_fail_context(zmlx_status s, const char *fmt, ...) {
  char prefix[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  size_t plen = strlen(prefix);
  size_t old = strnlen(last_error, sizeof last_error - 1);
  if (plen + 2 >= sizeof last_error) return s;
  size_t keep = old;
  if (plen + 2 + keep >= sizeof last_error) keep = sizeof last_error - plen - 3;
  memmove(last_error + plen + 2, last_error, keep);
  memcpy(last_error, prefix, plen);
  last_error[plen] = ':';
  last_error[plen + 1] = ' ';
  last_error[plen + 2 + keep] = '\0';
  return s;
}

const char *zmlxi_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
  size_t n = 0;
  if (cap == 0) return buf;
  buf[0] = '\0';
  n += (size_t)snprintf(buf + n, cap - n, "[");
  for (int i = 0; i < ndim && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (n < cap) snprintf(buf + n, cap - n, "]");
  return buf;
}
