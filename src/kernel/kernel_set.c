/* Kernel tables created on first use (kernel_set.h). */
#include "kernel/kernel_set.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAMES 32

/* Split "a, b:i64" into names (and, with types, dtypes) inside buf. */
typedef struct name_list {
  char buf[512];
  const char *names[MAX_NAMES];
  zmlx_dtype dtypes[MAX_NAMES];
  int n;
} name_list;

static int dtype_of(const char *t, zmlx_dtype *dt) {
  static const struct { const char *name; zmlx_dtype dt; } types[] = {
      {"i32", ZMLX_I32}, {"u32", ZMLX_U32}, {"i64", ZMLX_I64}, {"f32", ZMLX_F32}, {"f64", ZMLX_F64}};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    if (strcmp(t, types[i].name) == 0) {
      *dt = types[i].dt;
      return 1;
    }
  return 0;
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
  return s;
}

static zmlx_status split_names(const char *kernel, const char *text, int typed, name_list *l) {
  l->n = 0;
  if (!text || !*text) return ZMLX_OK;
  if (strlen(text) >= sizeof l->buf)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': name list too long", kernel);
  strcpy(l->buf, text);
  for (char *save = NULL, *tok = strtok_r(l->buf, ",", &save); tok;
       tok = strtok_r(NULL, ",", &save)) {
    if (l->n == MAX_NAMES)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': more than %d names", kernel, MAX_NAMES);
    char *type = typed ? strchr(tok, ':') : NULL;
    if (type) *type++ = '\0';
    if (typed && (!type || !dtype_of(trim(type), &l->dtypes[l->n])))
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': parameter '%s' needs a type "
                       "(name:i32, u32, i64, f32 or f64)", kernel, trim(tok));
    l->names[l->n++] = trim(tok);
  }
  return ZMLX_OK;
}

static zmlx_status create(const zmlx_kernel_spec *s, zmlx_kernel **out) {
  name_list in, outs, params;
  ZMLX_CHECK(split_names(s->name, s->inputs, 0, &in));
  ZMLX_CHECK(split_names(s->name, s->outputs, 0, &outs));
  ZMLX_CHECK(split_names(s->name, s->params, 1, &params));
  char *joined = NULL;
  const char *source = s->source;
  if (s->prelude || s->prelude2) {
    /* prelude, prelude2 and the source, a newline after each part */
    const char *parts[3] = {s->prelude ? s->prelude : "", s->prelude2 ? s->prelude2 : "", s->source};
    size_t len[3], total = 3;
    for (int i = 0; i < 3; i++) total += len[i] = strlen(parts[i]);
    joined = malloc(total);
    if (!joined) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    size_t at = 0;
    for (int i = 0; i < 3; i++) {
      memcpy(joined + at, parts[i], len[i]);
      at += len[i];
      joined[at++] = i < 2 ? '\n' : '\0';
    }
    source = joined;
  }
  zmlx_kernel_desc d = {.name = s->name, .input_names = in.names, .n_inputs = in.n,
                        .output_names = outs.names, .n_outputs = outs.n, .source = source,
                        .ensure_row_contiguous = s->dense_inputs, .param_names = params.names,
                        .param_dtypes = params.dtypes, .n_params = params.n};
  zmlx_status st = zmlxi_kernel_create_from_zk(&d, out);
  free(joined);
  return st;
}

zmlx_status zmlxi_kernel_set_get(zmlx_kernel_set *set, int i, zmlx_kernel **out) {
  if (i < 0 || i >= set->count || i >= ZMLX_KERNEL_SET_MAX)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s kernels: no entry %d", set->what, i);
  zmlx_kernel *k = atomic_load_explicit(&set->kernels[i], memory_order_acquire);
  if (k) {
    *out = k;
    return ZMLX_OK;
  }
  pthread_mutex_lock(&set->lock);
  k = atomic_load_explicit(&set->kernels[i], memory_order_relaxed);
  if (!k && set->failed[i] == ZMLX_OK) {
    zmlx_status st = create(&set->specs[i], &k);
    if (st == ZMLX_OK) {
      atomic_store_explicit(&set->kernels[i], k, memory_order_release);
    } else {
      set->failed[i] = st;
      set->error[i] = zmlxi_strdup(zmlx_last_error());
    }
  }
  zmlx_status failed = set->failed[i];
  pthread_mutex_unlock(&set->lock);
  if (failed != ZMLX_OK)
    return zmlxi_fail(failed, "%s kernels: %s", set->what,
                     set->error[i] ? set->error[i] : "(no message)");
  *out = k;
  return ZMLX_OK;
}

zmlx_status zmlxi_kernel_set_launch(zmlx_kernel_set *set, int i, zmlx_kernel_call *call) {
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(zmlxi_kernel_set_get(set, i, &k));
  return zmlx_kernel_launch(k, call);
}
