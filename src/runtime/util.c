/* Small helpers: growable strings, clocks, versions. */
#include "runtime/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

unsigned zmlx_version_number(void) { return ZMLX_VERSION_NUMBER; }
const char *zmlx_version_string(void) { return ZMLX_VERSION_STRING; }

void zmlx_free(void *p) { free(p); }

char *zmlxi_strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

double zmlxi_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

void zmlxi_sb_init(zmlx_sb *sb) { memset(sb, 0, sizeof *sb); }

void zmlxi_sb_free(zmlx_sb *sb) {
  free(sb->data);
  zmlxi_sb_init(sb);
}

static bool sb_reserve(zmlx_sb *sb, size_t extra) {
  if (sb->oom) return false;
  if (sb->len + extra + 1 <= sb->cap) return true;
  size_t cap = sb->cap ? sb->cap : 256;
  while (cap < sb->len + extra + 1) cap *= 2;
  char *d = realloc(sb->data, cap);
  if (!d) {
    sb->oom = true;
    return false;
  }
  sb->data = d;
  sb->cap = cap;
  return true;
}

void zmlxi_sb_appendn(zmlx_sb *sb, const char *s, size_t n) {
  if (!sb_reserve(sb, n)) return;
  memcpy(sb->data + sb->len, s, n);
  sb->len += n;
  sb->data[sb->len] = '\0';
}

void zmlxi_sb_append(zmlx_sb *sb, const char *s) { zmlxi_sb_appendn(sb, s, strlen(s)); }

void zmlxi_sb_printf(zmlx_sb *sb, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n >= 0 && sb_reserve(sb, (size_t)n)) {
    vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap2);
    sb->len += (size_t)n;
  }
  va_end(ap2);
}

zmlx_status zmlxi_sb_finish(zmlx_sb *sb, char **out) {
  if (sb->oom) {
    zmlxi_sb_free(sb);
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory while building a string");
  }
  if (!sb->data) {
    sb->data = zmlxi_strdup("");
    if (!sb->data) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  }
  *out = sb->data;
  zmlxi_sb_init(sb);
  return ZMLX_OK;
}

bool zmlxi_dtype_is_f32_f16_bf16(zmlx_dtype dt) {
  return dt == ZMLX_F32 || dt == ZMLX_F16 || dt == ZMLX_BF16;
}

uint32_t zmlxi_fnv1a32(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
  return h;
}

uint64_t zmlxi_fnv1a64(const void *data, size_t n) {
  const unsigned char *p = data;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
