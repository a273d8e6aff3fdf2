/* Where a compiler log puts its first error, in the formats the backends'
 * compilers write: each backend's table names its own
 * (zmlx_backend_ops.error_location), and kernel/cache.c quotes that line of
 * the source with a caret. */
#include <string.h>

#include "runtime/backend.h"

/* After a location: ": error", ": fatal error" (clang) or
 * ": catastrophic error" (NVRTC). */
static int is_error_tail(const char *s, const char *end) {
  static const char *const words[] = {"error", "fatal error", "catastrophic error"};
  if (s >= end || *s != ':') return 0;
  s++;
  while (s < end && *s == ' ') s++;
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
    size_t n = strlen(words[i]);
    if ((size_t)(end - s) >= n && strncmp(s, words[i], n) == 0) return 1;
  }
  return 0;
}

static const char *parse_number(const char *s, const char *end, long *v) {
  const char *p = s;
  long n = 0;
  while (p < end && *p >= '0' && *p <= '9' && n < 100000000) n = n * 10 + (*p++ - '0');
  if (p == s) return NULL;
  *v = n;
  return p;
}

/* PoCL puts the severity first: "error: path/file.cl:LINE:COL: message". */
static int parse_severity_first(const char *s, const char *end, long *line, long *col) {
  while (s < end && *s == ' ') s++;
  static const char *const heads[] = {"error:", "fatal error:"};
  size_t n = 0;
  for (size_t i = 0; i < sizeof heads / sizeof heads[0] && !n; i++)
    if ((size_t)(end - s) >= strlen(heads[i]) && strncmp(s, heads[i], strlen(heads[i])) == 0)
      n = strlen(heads[i]);
  if (!n) return 0;
  for (const char *p = s + n; p < end; p++) {
    long ln = 0, c = 0;
    const char *q, *r;
    if (*p != ':' || !(q = parse_number(p + 1, end, &ln)) || q >= end || *q != ':') continue;
    *line = ln;
    *col = (r = parse_number(q + 1, end, &c)) && r < end && *r == ':' ? c : 0;
    return 1;
  }
  return 0;
}

/* A clang log line: "name:LINE:COL: error ..." (also "name:LINE: error"),
 * or PoCL's severity-first form. */
static int clang_error_line(const char *s, const char *end, long *line, long *col) {
  if (parse_severity_first(s, end, line, col)) return 1;
  for (const char *p = s; p < end; p++) {
    long ln = 0, c = 0;
    const char *q;
    if (*p != ':' || !(q = parse_number(p + 1, end, &ln))) continue;
    const char *r;
    if (q < end && *q == ':' && (r = parse_number(q + 1, end, &c)) && is_error_tail(r, end)) {
      *line = ln;
      *col = c;
      return 1;
    }
    if (is_error_tail(q, end)) {
      *line = ln;
      *col = 0;
      return 1;
    }
  }
  return 0;
}

typedef int (*line_parser)(const char *s, const char *end, long *line, long *col);

/* The first error location in the log (line >= 1; col 0 when unknown). */
static int first_location(const char *log, line_parser parse, long *line, long *col) {
  if (!log) return 0;
  for (const char *s = log; *s;) {
    const char *end = strchr(s, '\n');
    if (!end) end = s + strlen(s);
    if (parse(s, end, line, col) && *line >= 1) return 1;
    s = *end ? end + 1 : end;
  }
  return 0;
}

/* An NVRTC log line: "name(LINE): error ..." (or "catastrophic error"). */
static int nvrtc_error_line(const char *s, const char *end, long *line, long *col) {
  for (const char *p = s; p < end; p++) {
    long ln = 0;
    const char *q;
    if (*p == '(' && (q = parse_number(p + 1, end, &ln)) && q < end && *q == ')' &&
        is_error_tail(q + 1, end)) {
      *line = ln;
      *col = 0;
      return 1;
    }
  }
  return 0;
}

int zmlxi_log_location_clang(const char *log, long *line, long *col) {
  return first_location(log, clang_error_line, line, col);
}

int zmlxi_log_location_nvrtc(const char *log, long *line, long *col) {
  return first_location(log, nvrtc_error_line, line, col);
}

