/* Which kernel variant each check case reached: while recording, every
 * launch's kernel name, template arguments and threadgroup size are noted
 * (once per distinct variant) until the case's row takes them. This is how
 * `zmlx check --paths` says which case reaches which code path of an op
 * (register or streaming rows, 16-byte or scalar accesses, table or
 * computed angles): the paths are the variants' switches (VEC, NV, ...). */
#include <stdio.h>
#include <string.h>

#include "check/catalog.h"
#include "kernel/kernel.h"

static char pending[2048];
static size_t pending_len;

static void describe(char *buf, size_t cap, const zmlx_kernel *k, const zmlx_kernel_call *c) {
  size_t n = (size_t)snprintf(buf, cap, "%s[", k->name);
  for (int i = 0; i < c->n_templates && n < cap; i++) {
    const zmlx_template_arg *t = &c->templates[i];
    const char *sep = i ? " " : "";
    if (t->kind == ZMLX_TEMPLATE_DTYPE)
      n += (size_t)snprintf(buf + n, cap - n, "%s%s=%s", sep, t->name, zmlx_dtype_name(t->dtype));
    else
      n += (size_t)snprintf(buf + n, cap - n, "%s%s=%lld", sep, t->name, (long long)t->value);
  }
  if (n < cap) snprintf(buf + n, cap - n, "] tg %d", c->threadgroup[0]);
}

static void note_launch(void *ctx, zmlx_kernel *k, const zmlx_kernel_call *c) {
  (void)ctx;
  char line[256];
  describe(line, sizeof line, k, c);
  /* once per distinct variant: look for the whole line in the list */
  for (const char *p = pending; (p = strstr(p, line)) != NULL; p++)
    if ((p == pending || p[-1] == '\n') && p[strlen(line)] == '\n') return;
  if (pending_len + strlen(line) + 2 > sizeof pending) return; /* full: the rest is left out */
  pending_len += (size_t)snprintf(pending + pending_len, sizeof pending - pending_len, "%s\n", line);
}

void zck_launches_record(int on) {
  pending_len = 0;
  pending[0] = '\0';
  zmlxi_kernel_set_launch_observer(on ? note_launch : NULL, NULL);
}

const char *zck_launches_take(void) {
  static char taken[sizeof pending];
  memcpy(taken, pending, pending_len + 1);
  pending_len = 0;
  pending[0] = '\0';
  return taken;
}
