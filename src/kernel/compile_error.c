/*
 * The message of a failed compile: what was compiled and on which backend,
 * the compiler's log (capped to fit the error message), and where the
 * backend's log format (zmlx_backend_ops.error_location) places the
 * error: the line of the kernel body (or of the generated source) with a
 * caret under the column.
 */
#include "kernel/cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOG_CAP 12000       /* leaves room in the 16 KiB error message */
#define SOURCE_LINE_CAP 400 /* a quoted source line */

/* Line `n` (1-based) of `src`, without its newline. */
static int source_line(const char *src, long n, const char **text, size_t *len) {
  for (long i = 1; i < n; i++) {
    src = strchr(src, '\n');
    if (!src) return 0;
    src++;
  }
  size_t k = strcspn(src, "\n");
  if (k > 0 && src[k - 1] == '\r') k--;
  *text = src;
  *len = k;
  return 1;
}

/* Length of `s` without trailing blank lines and spaces (0 for NULL). */
static size_t trimmed_len(const char *s) {
  size_t n = s ? strlen(s) : 0;
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) n--;
  return n;
}

static void append_log(zmlx_sb *sb, const char *log) {
  size_t n = trimmed_len(log);
  if (n == 0) {
    zmlxi_sb_append(sb, "(the compiler gave no log)\n");
    return;
  }
  if (n > LOG_CAP) {
    zmlxi_sb_appendn(sb, log, LOG_CAP);
    zmlxi_sb_printf(sb, "\n... (compiler log truncated: %zu more bytes)\n", n - LOG_CAP);
    return;
  }
  zmlxi_sb_appendn(sb, log, n);
  zmlxi_sb_append(sb, "\n");
}

/* "at line L of the kernel body:" + the line + a caret under the column.
 * The caret padding copies tabs from the line so it lines up in a terminal. */
static void append_location(zmlx_sb *sb, const zmlx_compile_request *req, const char *log) {
  long line = 0, col = 0;
  const zmlx_backend_ops *ops = req->device ? req->device->ops : NULL;
  if (!req->source || !log || !ops || !ops->error_location) return;
  if (!ops->error_location(log, &line, &col) || line < 1) return;
  if (req->body_first_line > 0 && line >= req->body_first_line)
    zmlxi_sb_printf(sb, "at line %ld of the kernel body", line - req->body_first_line + 1);
  else
    zmlxi_sb_printf(sb, "at line %ld of the generated source", line);
  const char *text;
  size_t len;
  if (!source_line(req->source, line, &text, &len)) {
    zmlxi_sb_append(sb, "\n");
    return;
  }
  size_t shown = len > SOURCE_LINE_CAP ? SOURCE_LINE_CAP : len;
  zmlxi_sb_append(sb, ":\n    ");
  zmlxi_sb_appendn(sb, text, shown);
  zmlxi_sb_append(sb, shown < len ? " ...\n" : "\n");
  if (col < 1 || (size_t)(col - 1) > shown) return;
  zmlxi_sb_append(sb, "    ");
  for (long i = 0; i < col - 1; i++) zmlxi_sb_append(sb, text[i] == '\t' ? "\t" : " ");
  zmlxi_sb_append(sb, "^\n");
}

zmlx_status zmlxi_compile_error(const zmlx_compile_request *req, const char *log) {
  const char *backend = req && req->device && req->device->ops ? req->device->ops->name : "?";
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  if (req && req->what && *req->what)
    zmlxi_sb_printf(&sb, "%.200s", req->what);
  else
    zmlxi_sb_printf(&sb, "kernel '%.200s'", req && req->entry ? req->entry : "?");
  zmlxi_sb_printf(&sb, ": compilation failed (%s)\n", backend);
  append_log(&sb, log);
  if (req) append_location(&sb, req, log);
  char *msg = NULL;
  if (zmlxi_sb_finish(&sb, &msg) != ZMLX_OK)
    return zmlxi_fail(ZMLX_ERR_COMPILE, "kernel compilation failed (%s); out of memory for the log",
                     backend);
  zmlxi_fail(ZMLX_ERR_COMPILE, "%s", msg);
  free(msg);
  return ZMLX_ERR_COMPILE;
}

/* A compile failure with a log (or reported as such) becomes the
 * user-facing message; anything else (compiler library missing, ...) keeps
 * the backend's own message with context. */
zmlx_status zmlxi_compile_failure(const zmlx_compile_request *req, zmlx_status st,
                                 const char *log) {
  if (st != ZMLX_ERR_COMPILE && !(log && *log))
    return zmlxi_fail_context(st, "%s: cannot compile (%s)", req->what ? req->what : req->entry,
                             req->device->ops->name);
  /* The backend's own message can say what the log does not (a missing
   * entry point after a clean build, say): keep it after the log. */
  const char *why = zmlx_last_error();
  if (!*why || (log && strstr(log, why))) return zmlxi_compile_error(req, log);
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  size_t n = trimmed_len(log);
  zmlxi_sb_appendn(&sb, log ? log : "", n);
  if (n) zmlxi_sb_append(&sb, "\n");
  zmlxi_sb_append(&sb, why);
  char *text = NULL;
  if (zmlxi_sb_finish(&sb, &text) != ZMLX_OK) return zmlxi_compile_error(req, log);
  zmlx_status ret = zmlxi_compile_error(req, text);
  free(text);
  return ret;
}
