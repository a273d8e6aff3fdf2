/*
 * Catching what a driver prints to the process's stderr while it works.
 *
 * PoCL compiles OpenCL C with an in-process clang whose diagnostics printer
 * writes "N errors generated." straight to file descriptor 2, beside the
 * build log it also returns. A library must not talk on its user's
 * terminal, so the backend wraps the driver call: file descriptor 2 points
 * at a temporary file while the call runs, and the text then goes where
 * the caller decides (into the error message of a failed build, back to
 * stderr otherwise).
 *
 * File descriptor 2 belongs to the whole process: one capture at a time
 * (a process-wide lock), and text another thread writes to stderr during
 * the call lands in the capture too. It is not lost: zmlxi_stderr_release
 * writes it back to stderr, which is what callers do unless the driver
 * call failed.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/internal.h"

static pthread_mutex_t g_capture_lock = PTHREAD_MUTEX_INITIALIZER;

/* ZMLX_DRIVER_STDERR=1 leaves the driver's output on the terminal (for
 * debugging a driver that crashes while captured). */
static bool capture_disabled(void) {
  const char *e = getenv("ZMLX_DRIVER_STDERR");
  return e && *e && strcmp(e, "0") != 0;
}

void zmlxi_stderr_capture_begin(zmlx_stderr_capture *c) {
  memset(c, 0, sizeof *c);
  c->saved_fd = -1;
  if (capture_disabled()) return;
  pthread_mutex_lock(&g_capture_lock);
  c->locked = true;
  fflush(stderr);
  c->file = tmpfile();
  if (!c->file) return;
  c->saved_fd = dup(STDERR_FILENO);
  if (c->saved_fd < 0 || dup2(fileno(c->file), STDERR_FILENO) < 0) {
    if (c->saved_fd >= 0) close(c->saved_fd);
    c->saved_fd = -1;
    fclose(c->file);
    c->file = NULL;
  }
}

/* Restore descriptor 2 and read what was written, NUL-terminated. */
static char *finish(zmlx_stderr_capture *c) {
  char *text = NULL;
  if (c->saved_fd >= 0) {
    fflush(stderr);
    dup2(c->saved_fd, STDERR_FILENO);
    close(c->saved_fd);
    c->saved_fd = -1;
    long n = fseek(c->file, 0, SEEK_END) == 0 ? ftell(c->file) : -1;
    if (n > 0 && fseek(c->file, 0, SEEK_SET) == 0 && (text = malloc((size_t)n + 1))) {
      size_t got = fread(text, 1, (size_t)n, c->file);
      text[got] = '\0';
    }
  }
  if (c->file) fclose(c->file);
  c->file = NULL;
  if (c->locked) pthread_mutex_unlock(&g_capture_lock);
  c->locked = false;
  return text;
}

char *zmlxi_stderr_capture_end(zmlx_stderr_capture *c) {
  char *text = finish(c);
  if (text && strspn(text, " \t\r\n") == strlen(text)) {
    free(text);
    text = NULL;
  }
  return text;
}

void zmlxi_stderr_release(char *text) {
  if (!text) return;
  fputs(text, stderr);
  fflush(stderr);
  free(text);
}

char *zmlxi_stderr_append(char *log, char *captured) {
  if (!captured) return log;
  if (!log) return captured;
  size_t a = strlen(log), b = strlen(captured);
  char *s = malloc(a + b + 2);
  if (s) {
    memcpy(s, log, a);
    size_t k = a;
    if (a && log[a - 1] != '\n') s[k++] = '\n';
    memcpy(s + k, captured, b + 1);
  }
  free(log);
  free(captured);
  return s;
}
