/*
 * libFuzzer target for kernel descriptors (src/kernel/kernel.c, source.c,
 * the dialects): names, input / output / parameter lists, bodies, headers
 * and template arguments from the input, then zmlx_kernel_create and the
 * source rendered for CUDA, OpenCL and Metal (kernel_stubs.c aborts if
 * either touches a device, an array or the cache). Oracles: no crash,
 * leak or sanitizer report; an accepted kernel's names (kernel, inputs,
 * outputs, parameters) are C identifiers, pairwise distinct; a rendered
 * source names the kernel, and defines every template argument, which must
 * be an identifier too (anything else would be pasted into the source).
 *
 *   make fuzz   (builds it with clang in build-fuzz and runs it)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zmlx.h"

enum { MAX_LIST = 5 };

typedef struct reader {
  const uint8_t *p;
  size_t left;
} reader;

static uint8_t byte(reader *r) {
  if (!r->left) return 0;
  r->left--;
  return *r->p++;
}

/* the next string: up to a NUL (or the end), copied and terminated */
static char *text(reader *r) {
  size_t n = 0;
  while (n < r->left && r->p[n]) n++;
  char *s = malloc(n + 1);
  if (!s) abort();
  memcpy(s, r->p, n);
  s[n] = '\0';
  r->p += n < r->left ? n + 1 : n;
  r->left -= n < r->left ? n + 1 : n;
  return s;
}

static int identifier(const char *s) {
  if (!s || !(*s == '_' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z'))) return 0;
  for (; *s; s++)
    if (!(*s == '_' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9')))
      return 0;
  return 1;
}

static void check_accepted(const zmlx_kernel_desc *d) {
  const char *names[1 + 3 * MAX_LIST];
  int n = 0;
  names[n++] = d->name;
  for (int i = 0; i < d->n_inputs; i++) names[n++] = d->input_names[i];
  for (int i = 0; i < d->n_outputs; i++) names[n++] = d->output_names[i];
  for (int i = 0; i < d->n_params; i++) names[n++] = d->param_names[i];
  for (int i = 0; i < n; i++) {
    if (!identifier(names[i])) abort();
    for (int j = 1; j < i; j++) /* the kernel's own name may repeat an argument's */
      if (!strcmp(names[i], names[j])) abort();
  }
}

static void render(zmlx_kernel *k, const zmlx_kernel_desc *d, const zmlx_template_arg *t, int nt,
                   const zmlx_dtype *dtypes) {
  static const zmlx_backend backends[3] = {ZMLX_BACKEND_CUDA, ZMLX_BACKEND_OPENCL,
                                           ZMLX_BACKEND_METAL};
  zmlx_kernel_call c = {.n_inputs = d->n_inputs, .n_outputs = d->n_outputs,
                        .output_dtypes = dtypes + d->n_inputs, .templates = t,
                        .n_templates = nt};
  for (int b = 0; b < 3; b++) {
    char *src = NULL;
    if (zmlx_kernel_source(k, backends[b], &c, dtypes, &src) != ZMLX_OK) {
      if (src) abort();
      continue;
    }
    if (!src || !strstr(src, d->name)) abort();
    for (int i = 0; i < nt; i++)
      if (!identifier(t[i].name) || !strstr(src, t[i].name)) abort();
    zmlx_free(src);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const zmlx_dtype array_dtypes[] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16, ZMLX_I32, ZMLX_U8,
                                            ZMLX_I64, ZMLX_F64, ZMLX_BOOL, (zmlx_dtype)99};
  static const zmlx_dtype param_dtypes[] = {ZMLX_F32, ZMLX_F64, ZMLX_I32, ZMLX_U32, ZMLX_I64,
                                            ZMLX_F16, (zmlx_dtype)-1};
  reader r = {data, size};
  const int n_in = byte(&r) % (MAX_LIST + 1), n_out = byte(&r) % (MAX_LIST + 1);
  const int n_par = byte(&r) % (MAX_LIST + 1), n_tpl = byte(&r) % (MAX_LIST + 1);
  const uint8_t flags = byte(&r);
  zmlx_dtype dtypes[2 * MAX_LIST], pdt[MAX_LIST];
  zmlx_template_arg tpl[MAX_LIST];
  for (int i = 0; i < n_in + n_out; i++) dtypes[i] = array_dtypes[byte(&r) % 9];
  for (int i = 0; i < n_par; i++) pdt[i] = param_dtypes[byte(&r) % 7];
  for (int i = 0; i < n_tpl; i++) {
    tpl[i].kind = (zmlx_template_kind)(byte(&r) % 4);
    tpl[i].dtype = array_dtypes[byte(&r) % 9];
    tpl[i].value = (int64_t)(int8_t)byte(&r) * 1000003;
  }
  char *strings[1 + 4 * MAX_LIST + 2];
  int ns = 0;
  char *name = strings[ns++] = text(&r);
  const char *ins[MAX_LIST], *outs[MAX_LIST], *pars[MAX_LIST];
  for (int i = 0; i < n_in; i++) ins[i] = strings[ns++] = text(&r);
  for (int i = 0; i < n_out; i++) outs[i] = strings[ns++] = text(&r);
  for (int i = 0; i < n_par; i++) pars[i] = strings[ns++] = text(&r);
  for (int i = 0; i < n_tpl; i++) tpl[i].name = strings[ns++] = text(&r);
  char *header = strings[ns++] = text(&r);
  char *body = strings[ns++] = text(&r);
  zmlx_kernel_desc d = {.name = name, .input_names = ins, .n_inputs = n_in, .output_names = outs,
                        .n_outputs = n_out, .source = body, .header = *header ? header : NULL,
                        .ensure_row_contiguous = flags & 1, .atomic_outputs = (flags >> 1) & 1,
                        .param_names = pars, .param_dtypes = pdt, .n_params = n_par};
  zmlx_kernel *k = NULL;
  if (zmlx_kernel_create(&d, &k) == ZMLX_OK) {
    check_accepted(&d);
    render(k, &d, tpl, n_tpl, dtypes);
    zmlx_kernel_destroy(k);
  } else if (k) {
    abort();
  }
  for (int i = 0; i < ns; i++) free(strings[i]);
  return 0;
}
